// test/test_msdeform.c: multi-scale deformable attention and the MSDeformAttn pixel decoder
// (ops ms_deform_attn / ms_deform_locations, msdeform_* in mask2former.c, the Y model with
// pixel_decoder = msdeform):
// - the op against a literal grid_sample re-computation (double), on odd sizes with points
//   inside, partly outside and wholly outside the maps; finite-difference gradients of value,
//   locations and weights; the accumulate (+=) contract and NULL gradients
// - the sampling locations (reference points) by hand, in place, and their gradient
// - the pixel decoder against a direct re-computation from its definition (double), B = 2 vs
//   two B = 1 runs, and finite-difference gradients of every parameter tensor and input map
// - the whole Y (h and g msdeform) on a tiny config: MAE and joint gradients along random
//   directions, TTT and training steps, checkpoint header round trip, old (fpn) checkpoints
//   still reading as fpn, and a checkpoint of one kind refusing to load into the other
#include "test/test.h"
#include <sys/wait.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static Rng rng;

// ----------------------------------------------------------------------------
// the op

// grid_sample(bilinear, zeros, align_corners=False) as PyTorch writes it, in double:
// grid g = 2 loc - 1, ix = ((g + 1) W - 1) / 2; the four neighbours, out-of-range ones 0
static double grid_sample_ref(const float* map, size_t stride, int H, int W, double lx, double ly) {
    double gx = 2.0 * lx - 1.0, gy = 2.0 * ly - 1.0;
    double ix = ((gx + 1.0) * W - 1.0) / 2.0, iy = ((gy + 1.0) * H - 1.0) / 2.0;
    double fx = floor(ix), fy = floor(iy);
    double s = 0.0;
    for (int dy = 0; dy <= 1; dy++) for (int dx = 0; dx <= 1; dx++) {
        int x = (int)fx + dx, y = (int)fy + dy;
        if (x < 0 || x >= W || y < 0 || y >= H) continue;
        double w = (dx ? ix - fx : 1.0 - (ix - fx)) * (dy ? iy - fy : 1.0 - (iy - fy));
        s += w * map[(size_t)(y * W + x) * stride];
    }
    return s;
}

typedef struct {
    int B, S, Lq, NH, HD, L, P;
    int shapes[2 * MSDA_MAX_LEVELS], start[MSDA_MAX_LEVELS];
    float *value, *loc, *aw, *out, *w;   // w: fixed weights of the scalar loss sum(out * w)
    size_t n_value, n_loc, n_aw, n_out;
} OpCase;

static void op_case_init(OpCase* t, int B, int Lq, int NH, int HD, int L, int P, const int* shapes) {
    t->B = B; t->Lq = Lq; t->NH = NH; t->HD = HD; t->L = L; t->P = P;
    memcpy(t->shapes, shapes, 2 * L * sizeof(int));
    t->S = ms_deform_level_starts(shapes, L, t->start);
    t->n_value = (size_t)B * t->S * NH * HD;
    t->n_aw = (size_t)B * Lq * NH * L * P;
    t->n_loc = 2 * t->n_aw;
    t->n_out = (size_t)B * Lq * NH * HD;
    t->value = random_tensor(&rng, t->n_value, -1.0f, 1.0f);
    // locations in [-0.25, 1.25): some points partly or wholly outside their map
    t->loc = random_tensor(&rng, t->n_loc, -0.25f, 1.25f);
    t->aw = random_tensor(&rng, t->n_aw, 0.05f, 1.0f);
    t->w = random_tensor(&rng, t->n_out, -1.0f, 1.0f);
    t->out = (float*)mallocCheck(t->n_out * sizeof(float));
}
static void op_case_free(OpCase* t) { free(t->value); free(t->loc); free(t->aw); free(t->w); free(t->out); }

static double op_loss(void* ctx) {
    OpCase* t = (OpCase*)ctx;
    ms_deform_attn_forward_cpu(t->out, t->value, t->shapes, t->loc, t->aw, t->B, t->S, t->Lq, t->NH, t->HD, t->L, t->P);
    return dot_double(t->out, t->w, t->n_out);
}

static void test_op(void) {
    int shapes[6] = {3, 5, 4, 2, 1, 3};   // 3x5, 4x2, 1x3
    OpCase t;
    op_case_init(&t, 2, 7, 3, 5, 3, 2, shapes);
    // count the kinds of points: inside, partly outside (some taps), wholly outside
    int inside = 0, partly = 0, outside = 0;
    for (size_t k = 0; k < t.n_aw; k++) {
        int l = (int)((k / t.P) % t.L), H = shapes[2 * l], W = shapes[2 * l + 1];
        double px = t.loc[2 * k] * W - 0.5, py = t.loc[2 * k + 1] * H - 0.5;
        int in = 0;
        for (int dy = 0; dy <= 1; dy++) for (int dx = 0; dx <= 1; dx++) {
            int x = (int)floor(px) + dx, y = (int)floor(py) + dy;
            in += x >= 0 && x < W && y >= 0 && y < H;
        }
        if (in == 4) inside++; else if (in > 0) partly++; else outside++;
    }
    printf("     (points: %d inside, %d partly outside, %d wholly outside their map)\n", inside, partly, outside);
    CHECK(inside > 0 && partly > 0 && outside > 0, "the case needs all three kinds of points");

    // forward against the literal grid_sample formula
    op_loss(&t);
    float* ref = (float*)mallocCheck(t.n_out * sizeof(float));
    int D = t.NH * t.HD;
    for (int b = 0; b < t.B; b++) for (int q = 0; q < t.Lq; q++) for (int h = 0; h < t.NH; h++)
        for (int c = 0; c < t.HD; c++) {
            double s = 0.0;
            for (int l = 0; l < t.L; l++) {
                const float* map = t.value + ((size_t)b * t.S + t.start[l]) * D + h * t.HD + c;
                for (int p = 0; p < t.P; p++) {
                    size_t k = ((((size_t)b * t.Lq + q) * t.NH + h) * t.L + l) * t.P + p;
                    s += t.aw[k] * grid_sample_ref(map, D, shapes[2 * l], shapes[2 * l + 1], t.loc[2 * k], t.loc[2 * k + 1]);
                }
            }
            ref[(((size_t)b * t.Lq + q) * t.NH + h) * t.HD + c] = (float)s;
        }
    check_close("ms_deform_attn forward vs grid_sample formula", t.out, ref, t.n_out, 1e-6);

    // gradients: pre-filled buffers (the increment is what counts), then finite differences
    float* dvalue = random_tensor(&rng, t.n_value, -1, 1);
    float* dloc = random_tensor(&rng, t.n_loc, -1, 1);
    float* daw = random_tensor(&rng, t.n_aw, -1, 1);
    float* dvalue0 = (float*)mallocCheck(t.n_value * sizeof(float)); memcpy(dvalue0, dvalue, t.n_value * sizeof(float));
    float* dloc0 = (float*)mallocCheck(t.n_loc * sizeof(float)); memcpy(dloc0, dloc, t.n_loc * sizeof(float));
    float* daw0 = (float*)mallocCheck(t.n_aw * sizeof(float)); memcpy(daw0, daw, t.n_aw * sizeof(float));
    ms_deform_attn_backward_cpu(dvalue, dloc, daw, t.w, t.value, shapes, t.loc, t.aw, t.B, t.S, t.Lq, t.NH, t.HD, t.L, t.P);
    for (size_t i = 0; i < t.n_value; i++) dvalue[i] -= dvalue0[i];
    for (size_t i = 0; i < t.n_loc; i++) dloc[i] -= dloc0[i];
    for (size_t i = 0; i < t.n_aw; i++) daw[i] -= daw0[i];
    grad_check("ms_deform_attn dvalue", t.value, t.n_value, dvalue, op_loss, &t, 1e-2f, 1e-4, 400);
    grad_check("ms_deform_attn daw", t.aw, t.n_aw, daw, op_loss, &t, 1e-2f, 1e-4, 400);
    grad_check_kinks("ms_deform_attn dloc", t.loc, t.n_loc, dloc, op_loss, &t, 1e-4f, 1e-3, 400);
    // gradient of value: zero for rows no point reaches? at least every level gets some
    for (int l = 0; l < t.L; l++) {
        double s = 0.0;
        for (int b = 0; b < t.B; b++)
            for (int r = 0; r < shapes[2 * l] * shapes[2 * l + 1]; r++)
                for (int c = 0; c < D; c++) s += fabs(dvalue[((size_t)b * t.S + t.start[l] + r) * D + c]);
        CHECK(s > 0.0, "level %d of value got no gradient", l);
    }
    // NULL gradients: the others are unchanged
    float* daw_only = (float*)callocCheck(t.n_aw, sizeof(float));
    ms_deform_attn_backward_cpu(NULL, NULL, daw_only, t.w, t.value, shapes, t.loc, t.aw, t.B, t.S, t.Lq, t.NH, t.HD, t.L, t.P);
    check_close("ms_deform_attn daw alone (other gradients NULL)", daw_only, daw, t.n_aw, 1e-6);
    // a point exactly on pixel centres samples the pixel itself
    {
        int sh[2] = {3, 4};
        float v[12], one_loc[2] = {(2 + 0.5f) / 4, (1 + 0.5f) / 3}, one_aw = 1.0f, o;
        for (int i = 0; i < 12; i++) v[i] = (float)i;
        ms_deform_attn_forward_cpu(&o, v, sh, one_loc, &one_aw, 1, 12, 1, 1, 1, 1, 1);
        CHECK(fabsf(o - 6.0f) < 1e-5f, "a pixel-centre sample reads %g, want 6", o);
        float far_loc[2] = {1.2f, 0.5f};   // px = 4.3: wholly outside
        ms_deform_attn_forward_cpu(&o, v, sh, far_loc, &one_aw, 1, 12, 1, 1, 1, 1, 1);
        CHECK(o == 0.0f, "a point beyond the map reads %g, want 0", o);
    }
    free(ref); free(dvalue); free(dloc); free(daw); free(dvalue0); free(dloc0); free(daw0); free(daw_only);
    op_case_free(&t);
}

typedef struct { int shapes[6]; int B, NH, P; float *off, *loc, *w; size_t n; } LocCase;
static double loc_loss(void* ctx) {
    LocCase* t = (LocCase*)ctx;
    ms_deform_locations_forward_cpu(t->loc, t->off, t->shapes, t->B, 3, t->NH, t->P);
    return dot_double(t->loc, t->w, t->n);
}

static void test_locations(void) {
    LocCase t = {{2, 3, 4, 5, 3, 1}, 2, 2, 3, NULL, NULL, NULL, 0};
    int start[3];
    int S = ms_deform_level_starts(t.shapes, 3, start);
    CHECK(S == 6 + 20 + 3 && start[1] == 6 && start[2] == 26, "level starts %d %d, S %d", start[1], start[2], S);
    t.n = (size_t)t.B * S * t.NH * 3 * t.P * 2;
    t.off = random_tensor(&rng, t.n, -3, 3);
    t.loc = (float*)mallocCheck(t.n * sizeof(float));
    t.w = random_tensor(&rng, t.n, -1, 1);
    loc_loss(&t);
    // by hand: image 1, token 26 + 2 = level 2 (3 x 1) pixel (y 2, x 0), head 1, level 1 (4 x 5), point 2
    size_t k = ((((size_t)1 * S + 28) * t.NH + 1) * 3 + 1) * t.P + 2;
    float want_x = 0.5f / 1 + t.off[2 * k] / 5, want_y = 2.5f / 3 + t.off[2 * k + 1] / 4;
    CHECK(t.loc[2 * k] == want_x && t.loc[2 * k + 1] == want_y, "location (%g, %g), want (%g, %g)",
          t.loc[2 * k], t.loc[2 * k + 1], want_x, want_y);
    // in place gives the same
    float* inplace = (float*)mallocCheck(t.n * sizeof(float));
    memcpy(inplace, t.off, t.n * sizeof(float));
    ms_deform_locations_forward_cpu(inplace, inplace, t.shapes, t.B, 3, t.NH, t.P);
    check_close("ms_deform_locations in place", inplace, t.loc, t.n, 0.0);
    float* doff = (float*)callocCheck(t.n, sizeof(float));
    ms_deform_locations_backward_cpu(doff, t.w, t.shapes, t.B, 3, t.NH, t.P);
    grad_check("ms_deform_locations doff", t.off, t.n, doff, loc_loss, &t, 1e-2f, 1e-4, 300);
    free(t.off); free(t.loc); free(t.w); free(inplace); free(doff);
}

// ----------------------------------------------------------------------------
// the pixel decoder on its own

typedef struct {
    M2FConfig cfg;
    int B, H4, W4;
    float *params, *grads, *acts, *dacts;
    MSDeformParams p, g;
    PixelDecoderActs a, da;
    float* feats[4]; float* dfeats[4]; size_t feat_n[4];
    float* w_out[4]; size_t n_out[4];   // loss weights of out[1..3] (w_out[0] unused)
    float* w_mask; size_t n_mask;
} PD;

static M2FConfig pd_config(void) {
    int in_dims[4] = {3, 4, 5, 6};
    M2FConfig c = m2f_config_tiny(in_dims, 2);   // conv 16, GN 4, 2 heads
    m2f_config_set_pixel_decoder(&c, PIXEL_DECODER_MSDEFORM);
    c.enc_layers = 2; c.enc_ffn = 12; c.n_points = 2;
    m2f_config_check(&c);
    return c;
}

static void pd_init(PD* f, int B, int H4, int W4, uint64_t seed) {
    Rng r; rng_seed(&r, seed);
    f->cfg = pd_config(); f->B = B; f->H4 = H4; f->W4 = W4;
    size_t np = msdeform_num_params(&f->cfg), na = pixel_decoder_num_acts(&f->cfg, B, H4, W4);
    CHECK(np == pixel_decoder_num_params(&f->cfg), "pixel_decoder_num_params disagrees for msdeform");
    f->params = (float*)mallocCheck(np * sizeof(float));
    f->grads = (float*)callocCheck(np, sizeof(float));
    f->acts = (float*)callocCheck(na, sizeof(float));
    f->dacts = (float*)callocCheck(na, sizeof(float));
    msdeform_init_params(f->params, &f->cfg, &r);
    for (size_t i = 0; i < np; i++) f->params[i] += 0.1f * rng_normal(&r);   // nothing trivial
    msdeform_point_params(&f->p, f->params, &f->cfg);
    msdeform_point_params(&f->g, f->grads, &f->cfg);
    pixel_decoder_point_acts(&f->a, f->acts, &f->cfg, B, H4, W4);
    pixel_decoder_point_acts(&f->da, f->dacts, &f->cfg, B, H4, W4);
    for (int l = 0; l < 4; l++) {
        f->feat_n[l] = (size_t)B * f->a.Hs[l] * f->a.Ws[l] * f->cfg.in_dims[l];
        f->feats[l] = random_tensor(&r, f->feat_n[l], -1, 1);
        f->dfeats[l] = (float*)callocCheck(f->feat_n[l], sizeof(float));
        f->n_out[l] = (size_t)B * f->a.Hs[l] * f->a.Ws[l] * f->cfg.conv_dim;
        f->w_out[l] = random_tensor(&r, f->n_out[l], -1, 1);
    }
    f->n_mask = (size_t)B * H4 * W4 * f->cfg.mask_dim;
    f->w_mask = random_tensor(&r, f->n_mask, -1, 1);
}

static void pd_free(PD* f) {
    free(f->params); free(f->grads); free(f->acts); free(f->dacts); free(f->w_mask);
    for (int l = 0; l < 4; l++) { free(f->feats[l]); free(f->dfeats[l]); free(f->w_out[l]); }
}

static double pd_loss(void* ctx) {
    PD* f = (PD*)ctx;
    msdeform_forward(&f->cfg, &f->p, &f->a, (const float* const*)f->feats, f->B);
    double s = dot_double(f->a.mask_features, f->w_mask, f->n_mask);
    for (int l = 1; l < 4; l++) s += dot_double(f->a.out[l], f->w_out[l], f->n_out[l]);
    return s;
}

// --- direct re-computation from the definition, in double, plain loops ---

// y (N, OC) = x (N, C) W^T + b
static void ref_linear(double* y, const double* x, const float* W, const float* b, int N, int C, int OC) {
    for (int n = 0; n < N; n++) for (int o = 0; o < OC; o++) {
        double s = b ? b[o] : 0.0;
        for (int c = 0; c < C; c++) s += (double)W[(size_t)o * C + c] * x[(size_t)n * C + c];
        y[(size_t)n * OC + o] = s;
    }
}
static void ref_layernorm(double* x, const float* w, const float* b, int N, int C) {
    for (int n = 0; n < N; n++) {
        double* r = x + (size_t)n * C, m = 0, v = 0;
        for (int c = 0; c < C; c++) m += r[c];
        m /= C;
        for (int c = 0; c < C; c++) v += (r[c] - m) * (r[c] - m);
        double rs = 1.0 / sqrt(v / C + LN_EPS);
        for (int c = 0; c < C; c++) r[c] = (r[c] - m) * rs * w[c] + b[c];
    }
}
static void ref_groupnorm(double* x, const float* w, const float* b, int B, int HW, int C, int G, int relu) {
    int cg = C / G;
    for (int bb = 0; bb < B; bb++) for (int g = 0; g < G; g++) {
        double m = 0, v = 0, n = (double)HW * cg;
        for (int p = 0; p < HW; p++) for (int c = g * cg; c < (g + 1) * cg; c++) m += x[((size_t)bb * HW + p) * C + c];
        m /= n;
        for (int p = 0; p < HW; p++) for (int c = g * cg; c < (g + 1) * cg; c++) {
            double d = x[((size_t)bb * HW + p) * C + c] - m; v += d * d;
        }
        double rs = 1.0 / sqrt(v / n + LN_EPS);
        for (int p = 0; p < HW; p++) for (int c = g * cg; c < (g + 1) * cg; c++) {
            double* e = &x[((size_t)bb * HW + p) * C + c];
            *e = (*e - m) * rs * w[c] + b[c];
            if (relu && *e < 0) *e = 0;
        }
    }
}
// same-size K x K conv (pad K/2), weight (OC, K, K, C)
static void ref_conv(double* out, const double* in, const float* w, const float* bias, int B, int H, int W,
                     int C, int OC, int K) {
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
// PyTorch bilinear resize, align_corners=False: src = max((dst + 0.5) in / out - 0.5, 0)
static void ref_resize_taps(int dst, int in, int out, int* i0, int* i1, double* l1) {
    double src = (dst + 0.5) * in / out - 0.5;
    if (src < 0) src = 0;
    *i0 = (int)floor(src);
    if (*i0 > in - 1) *i0 = in - 1;
    *i1 = *i0 + 1 < in ? *i0 + 1 : in - 1;
    *l1 = src - *i0;
}

static double* ref_from_float(const float* x, size_t n) {
    double* d = (double*)mallocCheck(n * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}
static void check_double(const char* name, const float* got, const double* ref, size_t n, double tol) {
    float* r = (float*)mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) r[i] = (float)ref[i];
    check_close(name, got, r, n, tol);
    free(r);
}

static void test_pd_reference(void) {
    PD f; pd_init(&f, 2, 7, 9, 31);   // levels 7x9, 4x5, 2x3, 1x2
    pd_loss(&f);
    const M2FConfig* c = &f.cfg;
    const MSDeformParams* p = &f.p;
    int B = f.B, D = c->conv_dim, G = c->num_groups, NH = c->num_heads, HD = D / NH, P = c->n_points;
    int NE = c->enc_layers, FE = c->enc_ffn, L = MSD_LEVELS, E = NH * L * P;
    const int* Hs = f.a.Hs; const int* Ws = f.a.Ws;
    int He[3], We[3], Te[3], st[3], S = 0;
    for (int e = 0; e < 3; e++) { He[e] = Hs[3 - e]; We[e] = Ws[3 - e]; Te[e] = He[e] * We[e]; st[e] = S; S += Te[e]; }
    double* x = (double*)mallocCheck(sizeof(double) * B * S * D);
    // input projections, concatenated
    for (int e = 0; e < 3; e++) {
        int l = 3 - e;
        double* in = ref_from_float(f.feats[l], f.feat_n[l]);
        double* pr = (double*)mallocCheck(sizeof(double) * B * Te[e] * D);
        ref_linear(pr, in, p->input_w[e], p->input_b[e], B * Te[e], c->in_dims[l], D);
        ref_groupnorm(pr, p->input_gn_w[e], p->input_gn_b[e], B, Te[e], D, G, 0);
        for (int b = 0; b < B; b++)
            memcpy(x + ((size_t)b * S + st[e]) * D, pr + (size_t)b * Te[e] * D, sizeof(double) * Te[e] * D);
        free(in); free(pr);
    }
    // positions
    double* pos = (double*)mallocCheck(sizeof(double) * S * D);
    for (int e = 0; e < 3; e++) {
        float* sine = (float*)mallocCheck(sizeof(float) * Te[e] * D);
        sine_position_encoding_cpu(sine, He[e], We[e], D);
        for (int t = 0; t < Te[e]; t++) for (int d = 0; d < D; d++)
            pos[(size_t)(st[e] + t) * D + d] = sine[(size_t)t * D + d] + p->level_embed[e * D + d];
        free(sine);
    }
    size_t n = (size_t)B * S;
    double* q = (double*)mallocCheck(sizeof(double) * n * D);
    double* v = (double*)mallocCheck(sizeof(double) * n * D);
    double* off = (double*)mallocCheck(sizeof(double) * n * 2 * E);
    double* aw = (double*)mallocCheck(sizeof(double) * n * E);
    double* att = (double*)mallocCheck(sizeof(double) * n * D);
    double* y = (double*)mallocCheck(sizeof(double) * n * D);
    double* hid = (double*)mallocCheck(sizeof(double) * n * FE);
    float* vmap = (float*)mallocCheck(sizeof(float) * S);   // one channel of value, as float for grid_sample_ref
    for (int i = 0; i < NE; i++) {
        for (size_t r = 0; r < n; r++) for (int d = 0; d < D; d++) q[r * D + d] = x[r * D + d] + pos[(r % S) * D + d];
        ref_linear(v, x, p->value_w + (size_t)i * D * D, p->value_b + (size_t)i * D, n, D, D);
        ref_linear(off, q, p->off_w + (size_t)i * 2 * E * D, p->off_b + (size_t)i * 2 * E, n, D, 2 * E);
        ref_linear(aw, q, p->aw_w + (size_t)i * E * D, p->aw_b + (size_t)i * E, n, D, E);
        for (size_t r = 0; r < n * NH; r++) {   // softmax over the L * P of each head
            double* a = aw + r * L * P, mx = a[0], z = 0;
            for (int j = 1; j < L * P; j++) if (a[j] > mx) mx = a[j];
            for (int j = 0; j < L * P; j++) { a[j] = exp(a[j] - mx); z += a[j]; }
            for (int j = 0; j < L * P; j++) a[j] /= z;
        }
        for (int b = 0; b < B; b++) for (int s = 0; s < S; s++) {
            int lq = s >= st[2] ? 2 : s >= st[1] ? 1 : 0, r = s - st[lq];
            double rx = (r % We[lq] + 0.5) / We[lq], ry = (r / We[lq] + 0.5) / He[lq];   // pixel centre
            for (int h = 0; h < NH; h++) for (int cc = 0; cc < HD; cc++) {
                double acc = 0;
                for (int l = 0; l < L; l++) {
                    for (int t = 0; t < Te[l]; t++)
                        vmap[t] = (float)v[((size_t)b * S + st[l] + t) * D + h * HD + cc];
                    for (int pt = 0; pt < P; pt++) {
                        size_t j = ((((size_t)b * S + s) * NH + h) * L + l) * P + pt;
                        double lx = rx + off[2 * j] / We[l], ly = ry + off[2 * j + 1] / He[l];
                        acc += aw[j] * grid_sample_ref(vmap, 1, He[l], We[l], lx, ly);
                    }
                }
                att[((size_t)b * S + s) * D + h * HD + cc] = acc;
            }
        }
        ref_linear(y, att, p->out_w + (size_t)i * D * D, p->out_b + (size_t)i * D, n, D, D);
        for (size_t r = 0; r < n * D; r++) x[r] += y[r];
        ref_layernorm(x, p->ln1_w + (size_t)i * D, p->ln1_b + (size_t)i * D, n, D);
        ref_linear(hid, x, p->fc1_w + (size_t)i * FE * D, p->fc1_b + (size_t)i * FE, n, D, FE);
        for (size_t r = 0; r < n * FE; r++) if (hid[r] < 0) hid[r] = 0;
        ref_linear(y, hid, p->fc2_w + (size_t)i * D * FE, p->fc2_b + (size_t)i * D, n, FE, D);
        for (size_t r = 0; r < n * D; r++) x[r] += y[r];
        ref_layernorm(x, p->ln2_w + (size_t)i * D, p->ln2_b + (size_t)i * D, n, D);
    }
    char name[96];
    double* lev[4];
    for (int e = 0; e < 3; e++) {
        lev[3 - e] = (double*)mallocCheck(sizeof(double) * B * Te[e] * D);
        for (int b = 0; b < B; b++)
            memcpy(lev[3 - e] + (size_t)b * Te[e] * D, x + ((size_t)b * S + st[e]) * D, sizeof(double) * Te[e] * D);
        snprintf(name, sizeof(name), "msdeform out[%d] (encoder level %d) vs direct computation", 3 - e, e);
        check_double(name, f.a.out[3 - e], lev[3 - e], f.n_out[3 - e], 1e-4);
    }
    // FPN step: lateral + bilinear up of the 1/8 map, conv3x3 + GN + ReLU, mask conv1x1
    int H = Hs[0], W = Ws[0], Hc = Hs[1], Wc = Ws[1];
    double* in0 = ref_from_float(f.feats[0], f.feat_n[0]);
    double* fused = (double*)mallocCheck(sizeof(double) * B * H * W * D);
    ref_linear(fused, in0, p->lateral_w, NULL, B * H * W, c->in_dims[0], D);
    ref_groupnorm(fused, p->lateral_gn_w, p->lateral_gn_b, B, H * W, D, G, 0);
    for (int b = 0; b < B; b++) for (int yy = 0; yy < H; yy++) for (int xx = 0; xx < W; xx++) {
        int y0, y1, x0, x1; double ly, lx;
        ref_resize_taps(yy, Hc, H, &y0, &y1, &ly);
        ref_resize_taps(xx, Wc, W, &x0, &x1, &lx);
        for (int d = 0; d < D; d++) {
            const double* m = lev[1] + (size_t)b * Hc * Wc * D + d;
            double up = (1 - ly) * ((1 - lx) * m[(y0 * Wc + x0) * D] + lx * m[(y0 * Wc + x1) * D]) +
                        ly * ((1 - lx) * m[(y1 * Wc + x0) * D] + lx * m[(y1 * Wc + x1) * D]);
            fused[(((size_t)b * H + yy) * W + xx) * D + d] += up;
        }
    }
    double* out0 = (double*)mallocCheck(sizeof(double) * B * H * W * D);
    ref_conv(out0, fused, p->output_w, NULL, B, H, W, D, D, 3);
    ref_groupnorm(out0, p->output_gn_w, p->output_gn_b, B, H * W, D, G, 1);
    check_double("msdeform out[0] (1/4) vs direct computation", f.a.out[0], out0, f.n_out[0], 1e-4);
    double* mf = (double*)mallocCheck(sizeof(double) * f.n_mask);
    ref_linear(mf, out0, p->mask_w, p->mask_b, B * H * W, D, c->mask_dim);
    check_double("msdeform mask_features vs direct computation", f.a.mask_features, mf, f.n_mask, 1e-4);
    free(x); free(pos); free(q); free(v); free(off); free(aw); free(att); free(y); free(hid); free(vmap);
    for (int l = 1; l < 4; l++) free(lev[l]);
    free(in0); free(fused); free(out0); free(mf);
    pd_free(&f);
}

// B = 2 equals two B = 1 runs (per-image copies into and out of the token axis)
static void test_pd_batch(void) {
    PD f; pd_init(&f, 2, 6, 5, 41);
    pd_loss(&f);
    float* mf2 = host_copy_of(f.a.mask_features, f.n_mask);
    float* o2[4];
    for (int l = 1; l < 4; l++) o2[l] = host_copy_of(f.a.out[l], f.n_out[l]);
    float* mf1 = (float*)mallocCheck(f.n_mask * sizeof(float));
    float* o1[4];
    for (int l = 1; l < 4; l++) o1[l] = (float*)mallocCheck(f.n_out[l] * sizeof(float));
    for (int b = 0; b < 2; b++) {
        const float* fb[4];
        for (int l = 0; l < 4; l++) fb[l] = f.feats[l] + f.feat_n[l] / 2 * b;
        msdeform_forward(&f.cfg, &f.p, &f.a, fb, 1);
        memcpy(mf1 + f.n_mask / 2 * b, f.a.mask_features, f.n_mask / 2 * sizeof(float));
        for (int l = 1; l < 4; l++) memcpy(o1[l] + f.n_out[l] / 2 * b, f.a.out[l], f.n_out[l] / 2 * sizeof(float));
    }
    check_close("msdeform B=2 vs two B=1 runs: mask_features", mf1, mf2, f.n_mask, 1e-6);
    for (int l = 1; l < 4; l++) {
        char name[64]; snprintf(name, sizeof(name), "msdeform B=2 vs two B=1 runs: out[%d]", l);
        check_close(name, o1[l], o2[l], f.n_out[l], 1e-6);
        free(o1[l]); free(o2[l]);
    }
    free(mf1); free(mf2);
    pd_free(&f);
}

static const char* msd_names[MSD_NUM_TENSORS] = {
    "input_w[0]", "input_w[1]", "input_w[2]", "input_b[0]", "input_b[1]", "input_b[2]",
    "input_gn_w[0]", "input_gn_w[1]", "input_gn_w[2]", "input_gn_b[0]", "input_gn_b[1]", "input_gn_b[2]",
    "level_embed", "value_w", "value_b", "off_w", "off_b", "aw_w", "aw_b", "out_w", "out_b",
    "ln1_w", "ln1_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b", "ln2_w", "ln2_b",
    "lateral_w", "lateral_gn_w", "lateral_gn_b", "output_w", "output_gn_w", "output_gn_b",
    "mask_w", "mask_b",
};

static void test_pd_gradients(void) {
    PD f; pd_init(&f, 2, 7, 5, 51);   // levels 7x5, 4x3, 2x2, 1x1
    pd_loss(&f);
    size_t na = pixel_decoder_num_acts(&f.cfg, f.B, f.H4, f.W4);
    for (size_t i = 0; i < na; i++) f.dacts[i] = 12345.0f;   // scratch must be zeroed by backward
    memcpy(f.da.mask_features, f.w_mask, f.n_mask * sizeof(float));
    for (int l = 1; l < 4; l++) memcpy(f.da.out[l], f.w_out[l], f.n_out[l] * sizeof(float));
    msdeform_backward(&f.cfg, &f.p, &f.g, &f.a, &f.da, (const float* const*)f.feats, f.dfeats, f.B);
    // the params struct is MSD_NUM_TENSORS consecutive pointers in memory order
    size_t np = msdeform_num_params(&f.cfg);
    float** pp = (float**)&f.p;
    CHECK(pp[0] == f.params, "first tensor at the block start");
    char name[96];
    for (int t = 0; t < MSD_NUM_TENSORS; t++) {
        size_t start = (size_t)(pp[t] - f.params);
        size_t end = (t + 1 < MSD_NUM_TENSORS) ? (size_t)(pp[t + 1] - f.params) : np;
        snprintf(name, sizeof(name), "msdeform %s", msd_names[t]);
        grad_check_kinks(name, f.params + start, end - start, f.grads + start, pd_loss, &f, 1e-3f, 2e-2, 10);
    }
    for (int l = 0; l < 4; l++) {
        snprintf(name, sizeof(name), "msdeform feats[%d]", l);
        grad_check_kinks(name, f.feats[l], f.feat_n[l], f.dfeats[l], pd_loss, &f, 1e-3f, 2e-2, 12);
    }
    pd_free(&f);
}

// the published sizes: parameter count of h's pixel decoder with Swin-S inputs
static void test_published_size(void) {
    ModelConfig cfg = model_config_swin_s(133);
    model_config_set_pixel_decoder(&cfg, PIXEL_DECODER_MSDEFORM);
    CHECK(cfg.m2f.enc_layers == 6 && cfg.m2f.enc_ffn == 1024 && cfg.m2f.n_points == 4 && cfg.mae.enc_layers == 6,
          "published encoder sizes");
    size_t n = msdeform_num_params(&cfg.m2f);
    printf("     (msdeform pixel decoder, Swin-S inputs: %zu parameters; Hugging Face: 5.42M)\n", n);
    CHECK(n > 5400000 && n < 5440000, "msdeform pixel decoder has %zu parameters, HF 5.42M", n);
    ModelConfig fpn = model_config_swin_s(133);
    CHECK(fpn.m2f.pixel_decoder == PIXEL_DECODER_FPN && fpn.mae.pixel_decoder == PIXEL_DECODER_FPN,
          "configs default to the fpn");
}

// ----------------------------------------------------------------------------
// the Y with msdeform h and g

static void do_load(const char* path) { model_load(path, 1, 40, 40); }
static Model* load_into;
static void do_load_f_h(const char* path) { model_load_f_h(load_into, path); }

// runs fn(path) in a child; 1 if it exited with status 1 (one clear error), else 0
static int dies_cleanly(void (*fn)(const char*), const char* path) {
    char err[512];
    int status;
    run_path_in_child(fn, path, err, sizeof(err), &status);
    return WIFEXITED(status) && WEXITSTATUS(status) == 1;
}

typedef struct { Model* m; float* frames; unsigned char* labels; int B; uint64_t seed; } YCase;
static double mae_loss_fn(void* ctx) {
    YCase* t = ctx; Rng r; rng_seed(&r, t->seed);
    return model_mae_loss(t->m, t->frames, t->B, &r);
}
static double joint_loss_fn(void* ctx) {
    YCase* t = ctx; Rng r; rng_seed(&r, t->seed);
    return model_train_loss(t->m, t->frames, t->labels, t->B, &r);
}

// (L(p + eps d) - L(p - eps d)) / 2 eps against grad . d over params [off, off + cnt)
static void directional(const char* what, YCase* t, double (*loss)(void*), const float* G, size_t off, size_t cnt, double tol) {
    float* P = model_params_device(t->m);
    float* d = random_tensor(&rng, cnt, -1, 1);
    double ana = 0; for (size_t i = 0; i < cnt; i++) ana += (double)G[off + i] * d[i];
    float* saved = (float*)mallocCheck(cnt * sizeof(float)); memcpy(saved, P + off, cnt * sizeof(float));
    float eps = 2e-5f;
    for (size_t i = 0; i < cnt; i++) P[off + i] = saved[i] + eps * d[i];
    double lp = loss(t);
    for (size_t i = 0; i < cnt; i++) P[off + i] = saved[i] - eps * d[i];
    double lm = loss(t);
    memcpy(P + off, saved, cnt * sizeof(float));
    double fd = (lp - lm) / (2 * eps), err = fabs(fd - ana) / (fabs(ana) + 1e-12);
    int ok = err < tol;
    printf("%-4s grad %s: ana %.5e fd %.5e rel err %.2e\n", ok ? "ok" : "FAIL", what, ana, fd, err);
    if (ok) tests_passed++; else tests_failed++;
    free(d); free(saved);
}

static void test_model(void) {
    int K = 3, B = 2, H = 45, W = 37;
    ModelConfig cfg = model_config_tiny(K);
    model_config_set_pixel_decoder(&cfg, PIXEL_DECODER_MSDEFORM);
    Model* m = model_create(&cfg, B, H, W);
    model_init_random(m, 11);
    size_t nf = model_num_params(m, 0), nh = model_num_params(m, 1), ng = model_num_params(m, 2);
    float* P = model_params_device(m);
    for (size_t i = 0; i < nf + nh + ng; i++) P[i] += 0.05f * (rng_uniform(&rng) - 0.5f);
    model_snapshot_ttt(m);
    YCase t = {m, random_tensor(&rng, (size_t)B * H * W * 3, 0, 1), (unsigned char*)mallocCheck((size_t)B * H * W), B, 77};
    for (int b = 0; b < B; b++) for (int y = 0; y < H; y++) for (int x = 0; x < W; x++)
        t.labels[((size_t)b * H + y) * W + x] = (y * 7 + x * 3 + b * 11) % 23 == 0 ? 255 : (unsigned char)(((y / 9) + (x / 11) + b) % K);

    // MAE loss: gradients of f and g along random directions (g's masks held fixed)
    Rng r; rng_seed(&r, t.seed);
    float loss = model_mae_forward_backward(m, t.frames, B, &r);
    CHECK(isfinite(loss) && loss > 0.0f, "MAE loss %g", loss);
    float* G = model_grads_host(m);
    double hsum = 0; for (size_t i = nf; i < nf + nh; i++) hsum += fabs(G[i]);
    CHECK(hsum == 0.0, "the MAE loss produced a gradient in h (%g)", hsum);
    double gpd = 0; for (size_t i = nf + nh; i < nf + nh + msdeform_num_params(&cfg.mae); i++) gpd += fabs(G[i]);
    CHECK(gpd > 0.0, "g's msdeform pixel decoder got no gradient");
    model_freeze_mae_masks(m, B, 1);
    directional("MAE loss along a random direction of f (msdeform g)", &t, mae_loss_fn, G, 0, nf, 3e-2);
    directional("MAE loss along a random direction of g (msdeform)", &t, mae_loss_fn, G, nf + nh, ng, 3e-2);
    directional("MAE loss along a random direction of g's pixel decoder", &t, mae_loss_fn, G, nf + nh,
                msdeform_num_params(&cfg.mae), 3e-2);
    model_freeze_mae_masks(m, B, 0);
    free(G);

    // joint loss: h's gradient (set loss on all pixels, masks held)
    SetLossConfig sl = set_loss_config_default();
    sl.all_pixels = 1;
    model_set_loss_config(m, &sl);
    rng_seed(&r, t.seed);
    float lmain = 0, lmae = 0;
    float total = model_train_forward_backward(m, t.frames, t.labels, B, &r, &lmain, &lmae);
    CHECK(isfinite(total) && lmain > 0 && lmae > 0, "joint losses %g %g", lmain, lmae);
    G = model_grads_host(m);
    model_freeze_main_masks(m, B, 1);
    model_freeze_mae_masks(m, B, 1);
    directional("joint loss along a random direction of h (msdeform)", &t, joint_loss_fn, G, nf, nh, 1e-2);
    directional("joint loss along a random direction of h's pixel decoder", &t, joint_loss_fn, G, nf,
                msdeform_num_params(&cfg.m2f), 1e-2);
    model_freeze_main_masks(m, B, 0);
    model_freeze_mae_masks(m, B, 0);
    free(G);

    // TTT steps lower the loss; f and g move, h does not
    uint64_t hf = model_param_hash(m, 0), hh = model_param_hash(m, 1), hg = model_param_hash(m, 2);
    OptConfig opt = opt_config_ttt(); opt.lr = 1e-3f;
    float l0 = 0, l1 = 0;
    for (int step = 0; step < 5; step++) { Rng rs; rng_seed(&rs, 3); l1 = model_ttt_step(m, t.frames, B, &opt, &rs); if (step == 0) l0 = l1; }
    { Rng rs; rng_seed(&rs, 3); l1 = model_mae_loss(m, t.frames, B, &rs); }
    printf("%-4s msdeform TTT: loss %.4f -> %.4f after 5 steps\n", l1 < l0 ? "ok" : "FAIL", l0, l1);
    CHECK(isfinite(l1) && l1 < l0, "5 TTT steps did not lower the loss: %g -> %g", l0, l1);
    CHECK(model_param_hash(m, 0) != hf && model_param_hash(m, 2) != hg, "TTT did not change f and g");
    CHECK(model_param_hash(m, 1) == hh, "h changed during TTT");
    // a joint training step moves h too
    { Rng rs; rng_seed(&rs, 4); model_train_step(m, t.frames, t.labels, B, &opt, 1.0f, &rs, NULL, NULL); }
    CHECK(model_param_hash(m, 1) != hh, "a joint step did not change h");

    // checkpoint: the header records msdeform; a round trip keeps weights and predictions
    if (system("mkdir -p test/tmp") != 0) { CHECK(0, "mkdir test/tmp"); return; }
    unsigned char* pred = (unsigned char*)mallocCheck((size_t)H * W);
    unsigned char* pred2 = (unsigned char*)mallocCheck((size_t)H * W);
    model_predict(m, t.frames, pred);
    model_save(m, "test/tmp/msdeform.bin");
    ModelConfig rc = model_read_config("test/tmp/msdeform.bin");
    CHECK(rc.m2f.pixel_decoder == PIXEL_DECODER_MSDEFORM && rc.mae.pixel_decoder == PIXEL_DECODER_MSDEFORM &&
          rc.m2f.enc_layers == cfg.m2f.enc_layers && rc.m2f.enc_ffn == cfg.m2f.enc_ffn &&
          rc.m2f.n_points == cfg.m2f.n_points && rc.mae.enc_layers == cfg.mae.enc_layers,
          "header config: kind %d/%d, enc_layers %d, enc_ffn %d, n_points %d", rc.m2f.pixel_decoder,
          rc.mae.pixel_decoder, rc.m2f.enc_layers, rc.m2f.enc_ffn, rc.m2f.n_points);
    Model* m2 = model_load("test/tmp/msdeform.bin", 1, H, W);
    CHECK(model_param_hash(m2, 0) == model_param_hash(m, 0) && model_param_hash(m2, 1) == model_param_hash(m, 1) &&
          model_param_hash(m2, 2) == model_param_hash(m, 2), "msdeform checkpoint round trip changed the parameters");
    model_predict(m2, t.frames, pred2);
    CHECK(memcmp(pred, pred2, (size_t)H * W) == 0, "the loaded msdeform model predicts differently");
    group_line("msdeform checkpoint: header kind %s, round trip equal", pixel_decoder_name(rc.m2f.pixel_decoder));

    // old checkpoints (no pixel decoder block) read as fpn
    ModelConfig old = model_read_config("data/model.bin");
    CHECK(old.m2f.pixel_decoder == PIXEL_DECODER_FPN && old.mae.pixel_decoder == PIXEL_DECODER_FPN &&
          old.m2f.enc_layers == 0, "data/model.bin does not read as fpn");
    // one kind refuses to load into the other
    ModelConfig fcfg = model_config_tiny(K);
    Model* mf = model_create(&fcfg, 1, H, W);
    model_init_random(mf, 5);
    model_save(mf, "test/tmp/fpn.bin");
    load_into = m;
    CHECK(dies_cleanly(do_load_f_h, "test/tmp/fpn.bin"), "an fpn checkpoint loaded into the msdeform model");
    load_into = mf;
    CHECK(dies_cleanly(do_load_f_h, "test/tmp/msdeform.bin"), "an msdeform checkpoint loaded into the fpn model");
    // headers whose pixel-decoder block is inconsistent: unknown kind, fpn with encoder sizes,
    // msdeform without, and a data size that does not match the declared decoder
    {
        FILE* fp = fopenCheck("test/tmp/msdeform.bin", "rb");
        int hdr[CKPT_HEADER_INTS]; freadCheck(hdr, sizeof(int), CKPT_HEADER_INTS, fp); fcloseCheck(fp);
        int at = -1;
        for (int i = 32; i + 3 < CKPT_HEADER_INTS; i++)
            if (hdr[i] == PIXEL_DECODER_MSDEFORM && hdr[i + 1] == cfg.m2f.enc_layers && hdr[i + 2] == cfg.m2f.enc_ffn &&
                hdr[i + 3] == cfg.m2f.n_points) { at = i; break; }
        CHECK(at >= 160, "pixel decoder block found at %d", at);
        float dummy = 0;
        int save = hdr[at];
        hdr[at] = 7; checkpoint_write("test/tmp/bad_kind.bin", hdr, &dummy, 1);
        hdr[at] = PIXEL_DECODER_FPN; checkpoint_write("test/tmp/bad_fpn.bin", hdr, &dummy, 1);
        hdr[at] = save; hdr[at + 1] = 0; checkpoint_write("test/tmp/bad_msd.bin", hdr, &dummy, 1);
        hdr[at + 1] = cfg.m2f.enc_layers + 1; checkpoint_write("test/tmp/bad_size.bin", hdr, &dummy, 1);
        const char* bads[4] = {"test/tmp/bad_kind.bin", "test/tmp/bad_fpn.bin", "test/tmp/bad_msd.bin", "test/tmp/bad_size.bin"};
        for (int k = 0; k < 4; k++) CHECK(dies_cleanly(do_load, bads[k]), "loading %s did not fail cleanly", bads[k]);
    }
    model_free(m); model_free(m2); model_free(mf);
    free(pred); free(pred2); free(t.frames); free(t.labels);
}

int main(void) {
#ifdef _OPENMP
    omp_set_num_threads(1);   // tiny sizes: thread start-up would dominate
#endif
    ttt_set_device(DEVICE_CPU);
    rng_seed(&rng, 13);
    test_op();
    test_locations();
    test_pd_reference();
    test_pd_batch();
    test_pd_gradients();
    test_published_size();
    test_model();
    return test_summary("test_msdeform");
}
