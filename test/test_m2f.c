// test/test_m2f.c: Mask2Former head h: the attention-mask op, the FPN pixel decoder against a
// direct re-computation, batch consistency, teacher-forced masks, finite-difference gradients of
// every parameter tensor and of the encoder features, semantic and panoptic inference.
#include "test/test.h"
#ifdef _OPENMP
#include <omp.h>
#endif

// ----------------------------------------------------------------------------
// a model on the host (CPU device): config, params, grads, acts, dacts, features

typedef struct {
    M2FConfig cfg;
    int B, H4, W4;
    float* params; float* grads; float* acts; float* dacts;
    M2FParams p, g;
    M2FActs a, da;
    float* feats[4]; float* dfeats[4];
    size_t feat_n[4];
    float* teacher;         // packed additive masks (or NULL)
    float* w_class; float* w_mask;   // fixed random weights of the scalar loss
    size_t n_class, n_mask;
} Fixture;

static void fixture_init(Fixture* f, M2FConfig cfg, int B, int H4, int W4, uint64_t seed) {
    Rng rng; rng_seed(&rng, seed);
    f->cfg = cfg; f->B = B; f->H4 = H4; f->W4 = W4;
    m2f_config_check(&cfg);
    size_t np = m2f_num_params(&cfg), na = m2f_num_acts(&cfg, B, H4, W4);
    f->params = (float*)mallocCheck(np * sizeof(float));
    f->grads = (float*)callocCheck(np, sizeof(float));
    f->acts = (float*)callocCheck(na, sizeof(float));
    f->dacts = (float*)callocCheck(na, sizeof(float));
    m2f_init_params(f->params, &cfg, &rng);
    // noise every parameter so no tensor is trivial (GN/LN weights 1, biases 0)
    for (size_t i = 0; i < np; i++) f->params[i] += 0.1f * rng_normal(&rng);
    m2f_point_params(&f->p, f->params, &cfg);
    m2f_point_params(&f->g, f->grads, &cfg);
    m2f_point_acts(&f->a, f->acts, &cfg, B, H4, W4);
    m2f_point_acts(&f->da, f->dacts, &cfg, B, H4, W4);
    for (int l = 0; l < 4; l++) {
        f->feat_n[l] = (size_t)B * f->a.Hs[l] * f->a.Ws[l] * cfg.in_dims[l];
        f->feats[l] = random_tensor(&rng, f->feat_n[l], -1.0f, 1.0f);
        f->dfeats[l] = (float*)callocCheck(f->feat_n[l], sizeof(float));
    }
    int L = cfg.dec_layers + 1;
    f->n_class = (size_t)L * B * cfg.num_queries * (cfg.num_classes + 1);
    f->n_mask = (size_t)L * B * cfg.num_queries * H4 * W4;
    f->w_class = random_tensor(&rng, f->n_class, -1.0f, 1.0f);
    f->w_mask = random_tensor(&rng, f->n_mask, -1.0f, 1.0f);
    // fixed random attention masks: about 40% blocked, and every row keeps one open key
    size_t nt = 0;
    for (int i = 0; i < cfg.dec_layers; i++) nt += (size_t)B * cfg.num_queries * f->a.T[i % 3];
    f->teacher = (float*)mallocCheck(nt * sizeof(float));
    size_t off = 0;
    for (int i = 0; i < cfg.dec_layers; i++) {
        int T = f->a.T[i % 3];
        for (int r = 0; r < B * cfg.num_queries; r++) {
            int keep = rng_int(&rng, T);
            for (int t = 0; t < T; t++) {
                f->teacher[off + (size_t)r * T + t] = (t != keep && rng_uniform(&rng) < 0.4f) ? -INFINITY : 0.0f;
            }
        }
        off += (size_t)B * cfg.num_queries * T;
    }
}

static void fixture_free(Fixture* f) {
    free(f->params); free(f->grads); free(f->acts); free(f->dacts);
    for (int l = 0; l < 4; l++) { free(f->feats[l]); free(f->dfeats[l]); }
    free(f->teacher); free(f->w_class); free(f->w_mask);
}

static double fixture_loss(void* ctx) {
    Fixture* f = (Fixture*)ctx;
    m2f_forward(&f->cfg, &f->p, &f->a, (const float* const*)f->feats, f->B, f->teacher);
    return dot_double(f->a.class_logits, f->w_class, f->n_class) +
           dot_double(f->a.mask_logits, f->w_mask, f->n_mask);
}

static void fixture_backward(Fixture* f) {
    fixture_loss(f);
    memset(f->grads, 0, m2f_num_params(&f->cfg) * sizeof(float));
    for (int l = 0; l < 4; l++) memset(f->dfeats[l], 0, f->feat_n[l] * sizeof(float));
    memcpy(f->da.class_logits, f->w_class, f->n_class * sizeof(float));
    memcpy(f->da.mask_logits, f->w_mask, f->n_mask * sizeof(float));
    m2f_backward(&f->cfg, &f->p, &f->g, &f->a, &f->da, (const float* const*)f->feats, f->dfeats, f->B);
}


// ----------------------------------------------------------------------------

static void test_attn_mask_op(void) {
    // rows: mixed, all blocked (reopened), exact zero and tiny negatives
    float logits[3 * 4] = { 1.0f, -2.0f, 0.5f, -0.1f,
                            -1.0f, -3.0f, -0.2f, -9.0f,
                            0.0f, -1e-9f, -1e-3f, 20.0f };
    float expect[3 * 4] = { 0, -INFINITY, 0, -INFINITY,
                            0, 0, 0, 0,
                            0, 0, -INFINITY, 0 };   // sigmoid(-1e-9f) rounds to 0.5: open
    float got[12];
    attn_mask_from_logits(got, logits, 1, 3, 4);
    int ok = 1;
    for (int i = 0; i < 12; i++) ok &= (got[i] == expect[i]);
    CHECK(ok, "attn_mask_from_logits hand example");
    printf("%-4s attn_mask_from_logits hand example\n", ok ? "ok" : "FAIL");
}

// direct re-computation of the FPN from its definition, in double
static void ref_conv(double* out, const double* in, const float* w, const float* bias, int B, int H,
                     int W, int C, int OC, int K) {
    int pad = K / 2;
    for (int b = 0; b < B; b++) for (int y = 0; y < H; y++) for (int x = 0; x < W; x++)
        for (int o = 0; o < OC; o++) {
            double s = bias ? bias[o] : 0.0;
            for (int ky = 0; ky < K; ky++) for (int kx = 0; kx < K; kx++) {
                int iy = y - pad + ky, ix = x - pad + kx;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                for (int c = 0; c < C; c++)
                    s += w[((o * K + ky) * K + kx) * C + c] * in[(((size_t)b * H + iy) * W + ix) * C + c];
            }
            out[(((size_t)b * H + y) * W + x) * OC + o] = s;
        }
}
static void ref_gn(double* x, const float* w, const float* bias, int B, int HW, int C, int G, int relu) {
    int cg = C / G;
    for (int b = 0; b < B; b++) for (int g = 0; g < G; g++) {
        double m = 0, v = 0, n = (double)HW * cg;
        for (int p = 0; p < HW; p++) for (int c = g * cg; c < (g + 1) * cg; c++) m += x[((size_t)b * HW + p) * C + c];
        m /= n;
        for (int p = 0; p < HW; p++) for (int c = g * cg; c < (g + 1) * cg; c++) {
            double d = x[((size_t)b * HW + p) * C + c] - m; v += d * d;
        }
        double r = 1.0 / sqrt(v / n + LN_EPS);
        for (int p = 0; p < HW; p++) for (int c = g * cg; c < (g + 1) * cg; c++) {
            double* e = &x[((size_t)b * HW + p) * C + c];
            *e = (*e - m) * r * w[c] + bias[c];
            if (relu && *e < 0) *e = 0;
        }
    }
}

static void test_fpn_reference(void) {
    int in_dims[4] = {3, 5, 6, 7};
    M2FConfig cfg = m2f_config_tiny(in_dims, 3);
    Fixture f; fixture_init(&f, cfg, 2, 7, 5, 11);
    PixelDecoderActs* a = &f.a.pd;
    pixel_decoder_forward(&cfg, &f.p.pd, a, (const float* const*)f.feats, f.B);
    int CD = cfg.conv_dim, G = cfg.num_groups, B = f.B;
    double* y[4];
    for (int l = 0; l < 4; l++) y[l] = (double*)mallocCheck(sizeof(double) * B * a->Hs[l] * a->Ws[l] * CD);
    double* tmp = (double*)mallocCheck(sizeof(double) * B * a->Hs[0] * a->Ws[0] * 64);
    double* lat = (double*)mallocCheck(sizeof(double) * B * a->Hs[0] * a->Ws[0] * 64);
    // level 3
    {
        size_t n = f.feat_n[3];
        for (size_t i = 0; i < n; i++) tmp[i] = f.feats[3][i];
        ref_conv(y[3], tmp, f.p.pd.output_w[3], NULL, B, a->Hs[3], a->Ws[3], in_dims[3], CD, 3);
        ref_gn(y[3], f.p.pd.output_gn_w[3], f.p.pd.output_gn_b[3], B, a->Hs[3] * a->Ws[3], CD, G, 1);
    }
    for (int l = 2; l >= 0; l--) {
        int H = a->Hs[l], W = a->Ws[l], Hc = a->Hs[l + 1], Wc = a->Ws[l + 1];
        for (size_t i = 0; i < f.feat_n[l]; i++) tmp[i] = f.feats[l][i];
        ref_conv(lat, tmp, f.p.pd.lateral_w[l], NULL, B, H, W, in_dims[l], CD, 1);
        ref_gn(lat, f.p.pd.lateral_gn_w[l], f.p.pd.lateral_gn_b[l], B, H * W, CD, G, 0);
        for (int b = 0; b < B; b++) for (int yy = 0; yy < H; yy++) for (int xx = 0; xx < W; xx++) {
            int sy = yy * Hc / H, sx = xx * Wc / W;   // nearest: floor(dst * in / out)
            for (int c = 0; c < CD; c++)
                lat[(((size_t)b * H + yy) * W + xx) * CD + c] += y[l + 1][(((size_t)b * Hc + sy) * Wc + sx) * CD + c];
        }
        ref_conv(y[l], lat, f.p.pd.output_w[l], NULL, B, H, W, CD, CD, 3);
        ref_gn(y[l], f.p.pd.output_gn_w[l], f.p.pd.output_gn_b[l], B, H * W, CD, G, 1);
    }
    char name[64];
    for (int l = 0; l < 4; l++) {
        size_t n = (size_t)B * a->Hs[l] * a->Ws[l] * CD;
        float* yf = (float*)mallocCheck(n * sizeof(float));
        for (size_t i = 0; i < n; i++) yf[i] = (float)y[l][i];
        snprintf(name, sizeof(name), "fpn out[%d] vs direct computation", l);
        check_close(name, a->out[l], yf, n, 1e-5);
        free(yf);
    }
    size_t nm = (size_t)B * a->H4 * a->W4 * cfg.mask_dim;
    double* mf = (double*)mallocCheck(nm * sizeof(double));
    ref_conv(mf, y[0], f.p.pd.mask_w, f.p.pd.mask_b, B, a->H4, a->W4, CD, cfg.mask_dim, 3);
    float* mff = (float*)mallocCheck(nm * sizeof(float));
    for (size_t i = 0; i < nm; i++) mff[i] = (float)mf[i];
    check_close("fpn mask_features vs direct computation", a->mask_features, mff, nm, 1e-5);
    free(mf); free(mff); free(tmp); free(lat);
    for (int l = 0; l < 4; l++) free(y[l]);
    fixture_free(&f);
}

// B = 2 must equal two runs with B = 1 (broadcasts, per-image products, masks per image);
// teacher-forcing with the masks the model made itself must reproduce its outputs
static void test_batch_and_teacher(void) {
    int in_dims[4] = {4, 6, 8, 10};
    M2FConfig cfg = m2f_config_tiny(in_dims, 4);
    cfg.dec_layers = 4;
    Fixture f; fixture_init(&f, cfg, 2, 9, 6, 21);
    int L = cfg.dec_layers + 1, Q = cfg.num_queries, K1 = cfg.num_classes + 1, HW = 9 * 6;
    m2f_forward(&cfg, &f.p, &f.a, (const float* const*)f.feats, 2, NULL);
    float* cls2 = (float*)mallocCheck(f.n_class * sizeof(float));
    float* msk2 = (float*)mallocCheck(f.n_mask * sizeof(float));
    memcpy(cls2, f.a.class_logits, f.n_class * sizeof(float));
    memcpy(msk2, f.a.mask_logits, f.n_mask * sizeof(float));
    // the masks it made, packed
    size_t nt = 0;
    for (int i = 0; i < cfg.dec_layers; i++) nt += (size_t)2 * Q * f.a.T[i % 3];
    float* made = (float*)mallocCheck(nt * sizeof(float));
    size_t off = 0; int blocked = 0, total = 0;
    for (int i = 0; i < cfg.dec_layers; i++) {
        size_t n = (size_t)2 * Q * f.a.T[i % 3];
        memcpy(made + off, f.a.attn_mask[i], n * sizeof(float));
        for (size_t k = 0; k < n; k++) { blocked += (made[off + k] < 0); total++; }
        off += n;
    }
    printf("     (model-made masks: %d of %d keys blocked)\n", blocked, total);
    CHECK(blocked > 0 && blocked < total, "made masks are neither empty nor full (%d/%d)", blocked, total);
    m2f_forward(&cfg, &f.p, &f.a, (const float* const*)f.feats, 2, made);
    check_close("teacher-forced with own masks: class logits", f.a.class_logits, cls2, f.n_class, 0.0);
    check_close("teacher-forced with own masks: mask logits", f.a.mask_logits, msk2, f.n_mask, 0.0);
    // B = 1 runs on each image (features of image b are contiguous slices)
    float* one_cls = (float*)mallocCheck(f.n_class * sizeof(float));
    float* one_msk = (float*)mallocCheck(f.n_mask * sizeof(float));
    for (int b = 0; b < 2; b++) {
        const float* fb[4];
        for (int l = 0; l < 4; l++) fb[l] = f.feats[l] + f.feat_n[l] / 2 * b;
        m2f_forward(&cfg, &f.p, &f.a, fb, 1, NULL);
        for (int j = 0; j < L; j++) {
            memcpy(one_cls + ((size_t)j * 2 + b) * Q * K1, f.a.class_logits + (size_t)j * Q * K1, sizeof(float) * Q * K1);
            memcpy(one_msk + ((size_t)j * 2 + b) * Q * HW, f.a.mask_logits + (size_t)j * Q * HW, sizeof(float) * Q * HW);
        }
    }
    check_close("B=2 vs two B=1 runs: class logits", one_cls, cls2, f.n_class, 1e-5);
    check_close("B=2 vs two B=1 runs: mask logits", one_msk, msk2, f.n_mask, 1e-5);
    free(cls2); free(msk2); free(made); free(one_cls); free(one_msk);
    fixture_free(&f);
}

static const char* param_names[M2F_NUM_TENSORS] = {
    "pd.lateral_w[0]", "pd.lateral_w[1]", "pd.lateral_w[2]",
    "pd.lateral_gn_w[0]", "pd.lateral_gn_w[1]", "pd.lateral_gn_w[2]",
    "pd.lateral_gn_b[0]", "pd.lateral_gn_b[1]", "pd.lateral_gn_b[2]",
    "pd.output_w[0]", "pd.output_w[1]", "pd.output_w[2]", "pd.output_w[3]",
    "pd.output_gn_w[0]", "pd.output_gn_w[1]", "pd.output_gn_w[2]", "pd.output_gn_w[3]",
    "pd.output_gn_b[0]", "pd.output_gn_b[1]", "pd.output_gn_b[2]", "pd.output_gn_b[3]",
    "pd.mask_w", "pd.mask_b",
    "query_feat", "query_embed", "level_embed",
    "ca_in_w", "ca_in_b", "ca_out_w", "ca_out_b", "ca_ln_w", "ca_ln_b",
    "sa_in_w", "sa_in_b", "sa_out_w", "sa_out_b", "sa_ln_w", "sa_ln_b",
    "fc1_w", "fc1_b", "fc2_w", "fc2_b", "ffn_ln_w", "ffn_ln_b",
    "dec_ln_w", "dec_ln_b", "class_w", "class_b",
    "me1_w", "me1_b", "me2_w", "me2_b", "me3_w", "me3_b",
};

static void test_gradients(void) {
    int in_dims[4] = {3, 5, 6, 7};
    M2FConfig cfg = m2f_config_tiny(in_dims, 3);
    cfg.dec_layers = 4;     // wraps around the three memory levels
    cfg.mask_dim = 12;      // != hidden_dim
    Fixture f; fixture_init(&f, cfg, 2, 7, 5, 7);
    fixture_backward(&f);
    // the params struct is M2F_NUM_TENSORS consecutive pointers into one block
    float** ptrs = (float**)&f.p;
    size_t np = m2f_num_params(&cfg);
    char name[96];
    for (int t = 0; t < M2F_NUM_TENSORS; t++) {
        size_t start = (size_t)(ptrs[t] - f.params);
        size_t end = (t + 1 < M2F_NUM_TENSORS) ? (size_t)(ptrs[t + 1] - f.params) : np;
        snprintf(name, sizeof(name), "%s", param_names[t]);
        grad_check_kinks(name, f.params + start, end - start, f.grads + start, fixture_loss, &f,
                         1e-3f, 2e-2, 12);
    }
    for (int l = 0; l < 4; l++) {
        snprintf(name, sizeof(name), "feats[%d]", l);
        grad_check_kinks(name, f.feats[l], f.feat_n[l], f.dfeats[l], fixture_loss, &f, 1e-3f, 2e-2, 12);
    }
    fixture_free(&f);
}

// pixel decoder alone (the MAE head reuses it): gradient of a loss on mask_features + out[1..3]
typedef struct { M2FConfig cfg; PixelDecoderParams p; PixelDecoderActs a; float* feats[4];
                 float* w_mask; float* w_out[4]; size_t n_mask, n_out[4]; } PDFixture;
static double pd_loss(void* ctx) {
    PDFixture* f = (PDFixture*)ctx;
    pixel_decoder_forward(&f->cfg, &f->p, &f->a, (const float* const*)f->feats, 2);
    double s = dot_double(f->a.mask_features, f->w_mask, f->n_mask);
    for (int l = 1; l < 4; l++) s += dot_double(f->a.out[l], f->w_out[l], f->n_out[l]);
    return s;
}
static void test_pixel_decoder_alone(void) {
    int in_dims[4] = {3, 4, 5, 6};
    PDFixture f; Rng rng; rng_seed(&rng, 3);
    f.cfg = m2f_config_tiny(in_dims, 2);
    int B = 2, H4 = 6, W4 = 9;
    size_t np = pixel_decoder_num_params(&f.cfg), na = pixel_decoder_num_acts(&f.cfg, B, H4, W4);
    float* params = (float*)mallocCheck(np * sizeof(float));
    float* grads = (float*)callocCheck(np, sizeof(float));
    float* acts = (float*)callocCheck(na, sizeof(float));
    float* dacts = (float*)callocCheck(na, sizeof(float));
    pixel_decoder_init_params(params, &f.cfg, &rng);
    for (size_t i = 0; i < np; i++) params[i] += 0.1f * rng_normal(&rng);
    PixelDecoderParams g; PixelDecoderActs da;
    pixel_decoder_point_params(&f.p, params, &f.cfg);
    pixel_decoder_point_params(&g, grads, &f.cfg);
    pixel_decoder_point_acts(&f.a, acts, &f.cfg, B, H4, W4);
    pixel_decoder_point_acts(&da, dacts, &f.cfg, B, H4, W4);
    float* dfeats[4];
    size_t nf[4];
    for (int l = 0; l < 4; l++) {
        nf[l] = (size_t)B * f.a.Hs[l] * f.a.Ws[l] * in_dims[l];
        f.feats[l] = random_tensor(&rng, nf[l], -1, 1);
        dfeats[l] = (float*)callocCheck(nf[l], sizeof(float));
        f.n_out[l] = (size_t)B * f.a.Hs[l] * f.a.Ws[l] * f.cfg.conv_dim;
        f.w_out[l] = random_tensor(&rng, f.n_out[l], -1, 1);
    }
    f.n_mask = (size_t)B * H4 * W4 * f.cfg.mask_dim;
    f.w_mask = random_tensor(&rng, f.n_mask, -1, 1);
    pd_loss(&f);
    for (size_t i = 0; i < na; i++) dacts[i] = 12345.0f;   // scratch must be zeroed by backward
    memcpy(da.mask_features, f.w_mask, f.n_mask * sizeof(float));
    for (int l = 1; l < 4; l++) memcpy(da.out[l], f.w_out[l], f.n_out[l] * sizeof(float));
    pixel_decoder_backward(&f.cfg, &f.p, &g, &f.a, &da, (const float* const*)f.feats, dfeats, B);
    grad_check_kinks("pixel decoder alone: all params", params, np, grads, pd_loss, &f, 1e-3f, 2e-2, 60);
    for (int l = 0; l < 4; l++) {
        char name[64]; snprintf(name, sizeof(name), "pixel decoder alone: feats[%d]", l);
        grad_check_kinks(name, f.feats[l], nf[l], dfeats[l], pd_loss, &f, 1e-3f, 2e-2, 12);
    }
    for (int l = 0; l < 4; l++) { free(f.feats[l]); free(dfeats[l]); free(f.w_out[l]); }
    free(f.w_mask); free(params); free(grads); free(acts); free(dacts);
}

// ----------------------------------------------------------------------------
// inference on hand-made logits

static void test_inference(void) {
    // 3 queries, K = 2 classes, 2x2 map at 1/4, image 8 x 7 (cropped from 8 x 8)
    int Q = 3, K = 2, H4 = 2, W4 = 2, H = 8, W = 7;
    float cls[3 * 3] = { 8, 0, 0,      // query 0: class 0, confident
                         0, 8, 0,      // query 1: class 1, confident
                         0, 0, 8 };    // query 2: no object
    float msk[3 * 4] = { 6, -6, 6, -6,     // query 0: left column
                         -6, 6, -6, 6,     // query 1: right column
                         6, 6, 6, 6 };     // query 2: everywhere (but no object)
    unsigned char ids[8 * 7];
    float* work = (float*)mallocCheck(m2f_semantic_work_size(Q, K, H4, W4) * sizeof(float));
    m2f_semantic_inference(ids, cls, msk, Q, K, H4, W4, H, W, H, W, work);
    int ok = 1;
    for (int y = 0; y < H; y++) for (int x = 0; x < W; x++) ok &= ids[y * W + x] == (x < 4 ? 0 : 1);
    CHECK(ok, "semantic inference: left half class 0, right half class 1");
    printf("%-4s semantic inference hand example\n", ok ? "ok" : "FAIL");
    // scored at twice the crop's size (the resize back to an original frame): the boundary
    // between the halves moves to x = 8 of 16, and nothing else changes
    unsigned char big[16 * 14];
    m2f_semantic_inference(big, cls, msk, Q, K, H4, W4, H, W, 2 * H, 2 * W, work);
    ok = 1;
    for (int y = 0; y < 2 * H; y++) for (int x = 0; x < 2 * W; x++) ok &= big[y * 2 * W + x] == (x < 8 ? 0 : 1);
    CHECK(ok, "semantic inference resized to 16x14: left half class 0, right half class 1");
    // the second resize at the same size is the identity: equal ids for random logits
    {
        Rng r; rng_seed(&r, 5);
        int q2 = 4, k2 = 3, h4 = 3, w4 = 5, h = 11, w = 17;
        float c2[4 * 4], m2[4 * 15];
        rng_fill_uniform(&r, c2, 16, -2.0f, 2.0f); rng_fill_uniform(&r, m2, 60, -3.0f, 3.0f);
        float* wk = (float*)mallocCheck(m2f_semantic_work_size(q2, k2, h4, w4) * sizeof(float));
        unsigned char a[11 * 17], b[11 * 17];
        m2f_semantic_inference(a, c2, m2, q2, k2, h4, w4, h, w, h, w, wk);
        // reference: the x4 maps by the upsample op, then argmax
        float* seg = (float*)mallocCheck((size_t)h4 * w4 * k2 * sizeof(float)), *up = (float*)mallocCheck((size_t)16 * h4 * w4 * k2 * sizeof(float));
        float pr[4 * 4];
        for (int q = 0; q < q2; q++) { double z = 0; float mx = c2[q * 4]; for (int k = 1; k < 4; k++) mx = fmaxf(mx, c2[q * 4 + k]);
            for (int k = 0; k < 4; k++) { pr[q * 4 + k] = expf(c2[q * 4 + k] - mx); z += pr[q * 4 + k]; }
            for (int k = 0; k < 4; k++) pr[q * 4 + k] = (float)(pr[q * 4 + k] / z); }
        for (int p = 0; p < h4 * w4; p++) for (int k = 0; k < k2; k++) {
            float acc = 0.0f;
            for (int q = 0; q < q2; q++) acc += pr[q * 4 + k] / (1.0f + expf(-m2[q * 15 + p]));
            seg[p * k2 + k] = acc;
        }
        upsample_bilinear_forward_cpu(up, seg, 1, h4, w4, k2, 4 * h4, 4 * w4);
        for (int y = 0; y < h; y++) for (int x = 0; x < w; x++) {
            const float* v = up + ((size_t)y * 4 * w4 + x) * k2;
            int best = 0; for (int k = 1; k < k2; k++) if (v[k] > v[best]) best = k;
            b[y * w + x] = (unsigned char)best;
        }
        int same = 0;
        for (int i = 0; i < h * w; i++) same += a[i] == b[i];
        CHECK(same >= h * w - 2, "semantic inference vs upsample + argmax: %d of %d ids agree", same, h * w);
        printf("%-4s semantic inference vs upsample_bilinear + argmax: %d of %d ids agree\n", same >= h * w - 2 ? "ok" : "FAIL", same, h * w);
        free(wk); free(seg); free(up);
    }
    free(work);

    int seg[8 * 7];
    PanopticSegment segs[8];
    float* pwork = (float*)mallocCheck(m2f_panoptic_work_size(Q, H, W) * sizeof(float));
    int n = m2f_panoptic_inference(seg, segs, 8, cls, msk, Q, K, H4, W4, H, W, NULL, 0.8f, 0.8f, pwork);
    ok = (n == 2);
    for (int y = 0; y < H && ok; y++) for (int x = 0; x < W; x++) ok &= seg[y * W + x] == (x < 4 ? 1 : 2);
    ok = ok && segs[0].class_id == 0 && segs[1].class_id == 1 && segs[0].area == 32 && segs[1].area == 24;
    CHECK(ok, "panoptic inference: two segments (n = %d)", n);
    printf("%-4s panoptic inference hand example (n = %d)\n", ok ? "ok" : "FAIL", n);
    // both queries the same stuff class: merged into one segment; a query below threshold dropped
    float cls2[3 * 3] = { 8, 0, 0,  8, 0, 0,  0, 1, 0.5f };
    unsigned char is_thing[2] = {0, 1};
    n = m2f_panoptic_inference(seg, segs, 8, cls2, msk, Q, K, H4, W4, H, W, is_thing, 0.8f, 0.8f, pwork);
    ok = (n == 1) && segs[0].class_id == 0 && segs[0].area == H * W;
    for (int i = 0; i < H * W && ok; i++) ok &= seg[i] == 1;
    CHECK(ok, "panoptic inference: stuff merge (n = %d)", n);
    printf("%-4s panoptic stuff merge (n = %d)\n", ok ? "ok" : "FAIL", n);
    free(pwork);
}

// ----------------------------------------------------------------------------
// the gradient layout m2f_point_grad_acts (shared spans, no buffer for tensors without a
// gradient) against the full mirror m2f_point_acts: bit-identical gradients of every parameter
// and of the features, with every scratch buffer of both starting at 12345 (the backward must
// zero what it accumulates into). Returns whether the decoder's scratch went inside the FPN's
// out[0] buffer (both placements must be covered).

static size_t count_unequal(const float* x, const float* y, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !(x[i] == y[i]);
    return bad;
}

static int msd_proj_inside, msd_proj_apart;   // msdeform_layout_grads' two placements, counted

static int grad_layout_case(const char* name, M2FConfig cfg, int max_B, int B, int H4, int W4, int last_only) {
    Rng rng; rng_seed(&rng, 404);
    m2f_config_check(&cfg);
    size_t np = m2f_num_params(&cfg), na = m2f_num_acts(&cfg, max_B, H4, W4);
    size_t ng = m2f_num_grad_acts(&cfg, max_B, H4, W4, last_only);
    float* params = (float*)mallocCheck(np * sizeof(float));
    float* acts = (float*)callocCheck(na, sizeof(float));
    m2f_init_params(params, &cfg, &rng);
    for (size_t i = 0; i < np; i++) params[i] += 0.1f * rng_normal(&rng);
    M2FParams p; M2FActs a;
    m2f_point_params(&p, params, &cfg);
    m2f_point_acts(&a, acts, &cfg, max_B, H4, W4);
    float* feats[4];
    size_t nf[4], nf_all = 0;
    for (int l = 0; l < 4; l++) {
        nf[l] = (size_t)B * a.Hs[l] * a.Ws[l] * cfg.in_dims[l];
        nf_all += nf[l];
        feats[l] = random_tensor(&rng, nf[l], -1.0f, 1.0f);
    }
    m2f_forward(&cfg, &p, &a, (const float* const*)feats, B, NULL);
    // upstream gradients of every prediction (last_only: of the last, the others zero)
    int L = cfg.dec_layers + 1;
    size_t ncls = (size_t)B * cfg.num_queries * (cfg.num_classes + 1), nmask = (size_t)B * cfg.num_queries * H4 * W4;
    float* up_cls = random_tensor(&rng, L * ncls, -1.0f, 1.0f);
    float* up_mask = random_tensor(&rng, L * nmask, -1.0f, 1.0f);
    if (last_only) {
        memset(up_cls, 0, (L - 1) * ncls * sizeof(float));
        memset(up_mask, 0, (L - 1) * nmask * sizeof(float));
    }
    float* grads[2]; float* dfeats[2][4]; int fits = 0;
    for (int k = 0; k < 2; k++) {   // 0: mirror, 1: gradient layout
        size_t n = k == 0 ? na : ng;
        float* dacts = (float*)mallocCheck(n * sizeof(float));
        for (size_t i = 0; i < n; i++) dacts[i] = 12345.0f;
        M2FActs da; M2FParams g;
        if (k == 0) m2f_point_acts(&da, dacts, &cfg, max_B, H4, W4);
        else m2f_point_grad_acts(&da, dacts, &cfg, max_B, H4, W4, last_only);
        int first = (k == 1 && last_only) ? L - 1 : 0;   // the predictions da holds
        memcpy(da.class_logits, up_cls + first * ncls, (L - first) * ncls * sizeof(float));
        memcpy(da.mask_logits, up_mask + first * nmask, (L - first) * nmask * sizeof(float));
        grads[k] = (float*)callocCheck(np, sizeof(float));
        m2f_point_params(&g, grads[k], &cfg);
        for (int l = 0; l < 4; l++) dfeats[k][l] = (float*)callocCheck(nf[l], sizeof(float));
        m2f_backward(&cfg, &p, &g, &a, &da, (const float* const*)feats, dfeats[k], B);
        if (k == 1) {
            size_t n_out0 = (size_t)max_B * H4 * W4 * (cfg.mask_dim > cfg.conv_dim ? cfg.mask_dim : cfg.conv_dim);
            fits = da.ca_k[0] >= da.pd.out[0] && da.ca_k[0] < da.pd.out[0] + n_out0;
            if (cfg.pixel_decoder == PIXEL_DECODER_MSDEFORM) {   // input projections inside mask_features' buffer?
                int in = da.pd.msd.proj[0] >= da.pd.mask_features && da.pd.msd.proj[0] < da.pd.mask_features + n_out0;
                msd_proj_inside += in; msd_proj_apart += !in;
            }
            CHECK(ng < na, "%s: the gradient layout (%zu floats) is not smaller than the mirror (%zu)", name, ng, na);
        }
        free(dacts);
    }
    size_t bad = count_unequal(grads[0], grads[1], np), bad_f = 0;
    for (int l = 0; l < 4; l++) bad_f += count_unequal(dfeats[0][l], dfeats[1][l], nf[l]);
    CHECK(bad == 0 && bad_f == 0, "%s: %zu of %zu parameter and %zu of %zu feature gradients differ from the mirror's",
          name, bad, np, bad_f, nf_all);
    double gsum = 0; for (size_t i = 0; i < np; i++) gsum += fabs(grads[1][i]);
    CHECK(gsum > 0 && isfinite(gsum), "%s: gradient sum %g", name, gsum);
    for (int k = 0; k < 2; k++) { free(grads[k]); for (int l = 0; l < 4; l++) free(dfeats[k][l]); }
    for (int l = 0; l < 4; l++) free(feats[l]);
    free(params); free(acts); free(up_cls); free(up_mask);
    return fits;
}

static void test_grad_layout(void) {
    int in_dims[4] = {8, 16, 32, 64};
    M2FConfig tiny = m2f_config_tiny(in_dims, 3), small = m2f_config_small(in_dims, 3);
    M2FConfig msd = tiny;
    m2f_config_set_pixel_decoder(&msd, PIXEL_DECODER_MSDEFORM);
    // (name, config, planned batch, batch, H4, W4)
    struct { const char* name; const M2FConfig* cfg; int max_B, B, H4, W4; } cases[] = {
        {"fpn tiny 6x9", &tiny, 2, 2, 6, 9},
        {"fpn tiny 16x24 B 1 of 2", &tiny, 2, 1, 16, 24},
        {"fpn small 12x20", &small, 2, 2, 12, 20},
        {"msdeform tiny 8x12", &msd, 2, 2, 8, 12},
        {"msdeform tiny 16x24 B 1 of 2", &msd, 2, 1, 16, 24},
        {"msdeform tiny 2x3", &msd, 2, 2, 2, 3},
    };
    int fits = 0, apart = 0;
    for (int last_only = 0; last_only < 2; last_only++) {
        for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
            char name[96];
            snprintf(name, sizeof(name), "grad layout %s last_only %d", cases[k].name, last_only);
            int r = grad_layout_case(name, *cases[k].cfg, cases[k].max_B, cases[k].B, cases[k].H4, cases[k].W4,
                                     last_only);
            fits += r; apart += !r;
        }
    }
    CHECK(fits > 0 && apart > 0, "grad layout: decoder scratch inside out[0] in %d cases, apart in %d: both must be covered",
          fits, apart);
    CHECK(msd_proj_inside > 0 && msd_proj_apart > 0, "grad layout: msdeform input projections inside in %d cases, apart in %d",
          msd_proj_inside, msd_proj_apart);
}

int main(void) {
#ifdef _OPENMP
    omp_set_num_threads(1);   // tiny sizes: thread start-up would dominate, most of all on a busy machine
#endif
    ttt_set_device(DEVICE_CPU);
    test_attn_mask_op();
    test_fpn_reference();
    test_batch_and_teacher();
    test_pixel_decoder_alone();
    test_gradients();
    test_grad_layout();
    test_inference();
    return test_summary("test_m2f");
}
