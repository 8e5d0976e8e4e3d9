// test/test_m2f_model_ref.c: the whole Y (f, h, g with the msdeform pixel decoder) loaded from
// checkpoints that dev/convert_mask2former.py converted from Hugging Face Mask2Former-with-Swin
// weights, against Hugging Face's own outputs (transformers, float64). The files are written
// by dev/m2f_model_reference.py (format documented there):
//   m2f_model_hf.bin   from hf3 (3-channel backbone, safetensors, runtime names): f and h, g absent
//   m2f_model_d2.bin   from hf4 + hfg renamed to the released code's detectron2 names: f, h, g
//   m2f_model_ref.bin  the input x (B, H, W, 4) and, for hf3, hf4 and g, the class and mask logits
//                      of every prediction and the attention masks every decoder layer used
// Checks, each within 1e-4 of the largest reference value:
//   - hf3 through the Hugging Face path, with the 4th channel all ones (the main task): its
//     weights are 0, so this is Hugging Face's 3-channel function
//   - hf4 through the detectron2 path on x, whose 4th channel is a 0/1 visibility pattern
//   - g (recon_head) on x: the mask logits of its last prediction
// The decoders are fed the reference's attention masks (teacher forcing: a mask bit decided by
// sigmoid(logit) < 0.5 flips on float noise); without them the masks the C model makes itself
// must agree with the reference's on 98% of the keys or more. Also: the two converted
// checkpoints hold the same f and h (but the 4th input channel), g's class head is zero, and a
// checkpoint without g gets g exactly as model_init_random(seed) makes it.
//
// usage: test/test_m2f_model_ref [DIR] [--device cpu|cuda]   (DIR default test/data; the
// Swin-S-size reference: python3 dev/m2f_model_reference.py --size swin-s, then DIR =
// test/tmp/m2f_swin_s). On cuda the matrix products run in float32 (TF32 off).
#include "test/test.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define TOL 1e-4

typedef struct {
    int B, H, W, H4, W4, L, Q, K, QG, T[3];
    float* x;                          // (B, H, W, 4)
    float *cls[2], *mask[2], *att[2];  // hf3, hf4: (L, B, Q, K+1), (L, B, Q, H4, W4), masks 1 = blocked
    float *g_att, *g_mask;             // g: masks, last prediction's mask logits (B, QG, H4, W4)
} Reference;

static size_t mask_floats(const Reference* r, int Q) {
    size_t n = 0;
    for (int i = 0; i < r->L - 1; i++) n += (size_t)r->B * Q * r->T[i % 3];
    return n;
}

static Reference reference_load(const char* path) {
    Reference r;
    FILE* fp = fopenCheck(path, "rb");
    int h[32];
    freadCheck(h, sizeof(int), 32, fp);
    if (h[0] != 0x4D32464D || h[1] != 1) ttt_die("%s: not a whole-model reference (magic/version)", path);
    r.B = h[2]; r.H = h[3]; r.W = h[4]; r.H4 = h[5]; r.W4 = h[6]; r.L = h[7]; r.Q = h[8]; r.K = h[9];
    r.QG = h[10];
    for (int m = 0; m < 3; m++) r.T[m] = h[11 + m];
    r.x = read_floats(fp, (size_t)r.B * r.H * r.W * 4);
    for (int k = 0; k < 2; k++) {
        r.cls[k] = read_floats(fp, (size_t)r.L * r.B * r.Q * (r.K + 1));
        r.mask[k] = read_floats(fp, (size_t)r.L * r.B * r.Q * r.H4 * r.W4);
        r.att[k] = read_floats(fp, mask_floats(&r, r.Q));
    }
    r.g_att = read_floats(fp, mask_floats(&r, r.QG));
    r.g_mask = read_floats(fp, (size_t)r.B * r.QG * r.H4 * r.W4);
    char extra;
    if (fread(&extra, 1, 1, fp) != 0) ttt_die("%s: longer than its header says", path);
    fcloseCheck(fp);
    return r;
}

// 1 = blocked -> the additive masks m2f_forward takes (on ttt_device)
static float* teacher_masks(const float* blocked, size_t n) {
    float* add = (float*)mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) add[i] = blocked[i] > 0.5f ? -INFINITY : 0.0f;
    float* d = device_copy_of(add, n);
    free(add);
    return d;
}

// f and then h (part 1) or g (part 2) of params (host [f | h | g]) on inp (B, H, W, 4) host;
// returns the malloc'd host class logits (NULL for g) and mask logits of every prediction; with
// teacher (host, 1 = blocked) NULL the model makes its own masks, copied to *own_masks if set
static void forward_head(const ModelConfig* mc, const float* params, int part, const float* inp,
                         const Reference* r, const float* teacher, float** cls, float** mask,
                         float** own_masks) {
    const SwinConfig* sc = &mc->swin;
    const M2FConfig* hc = part == 1 ? &mc->m2f : &mc->mae;
    size_t n_f = swin_num_params(sc), n_h = m2f_num_params(&mc->m2f), n_head = m2f_num_params(hc);
    float* f_dev = device_copy_of(params, n_f);
    float* h_dev = device_copy_of(params + n_f + (part == 2 ? n_h : 0), n_head);
    SwinParams sp;
    swin_point_params(&sp, f_dev, sc);
    M2FParams hp;
    m2f_point_params(&hp, h_dev, hc);
    SwinActs sa;
    size_t na = swin_point_acts(&sa, NULL, sc, r->B, r->H, r->W);
    float* sacts = (float*)ttt_malloc(na * sizeof(float));
    swin_point_acts(&sa, sacts, sc, r->B, r->H, r->W);
    swin_init_acts(&sa, sc);
    int* rel = swin_make_rel_index(sc);
    float* inp_dev = device_copy_of(inp, (size_t)r->B * r->H * r->W * 4);
    swin_forward(sc, &sp, &sa, rel, inp_dev, r->B);
    CHECK(sa.Hs[0] == r->H4 && sa.Ws[0] == r->W4, "1/4 map %dx%d, reference %dx%d", sa.Hs[0], sa.Ws[0], r->H4, r->W4);
    M2FActs ma;
    size_t nm = m2f_num_acts(hc, r->B, r->H4, r->W4);
    float* macts = (float*)ttt_malloc(nm * sizeof(float));
    ttt_zero(macts, nm * sizeof(float));
    m2f_point_acts(&ma, macts, hc, r->B, r->H4, r->W4);
    for (int m = 0; m < 3; m++) CHECK(ma.T[m] == r->T[m], "memory level %d: %d tokens, reference %d", m, ma.T[m], r->T[m]);
    const float* feats[4] = {sa.out[0], sa.out[1], sa.out[2], sa.out[3]};
    int Q = hc->num_queries;
    size_t nt = mask_floats(r, Q);
    float* teach = teacher ? teacher_masks(teacher, nt) : NULL;
    m2f_forward(hc, &hp, &ma, feats, r->B, teach);
    int L = hc->dec_layers + 1;
    *cls = part == 1 ? host_copy_of(ma.class_logits, (size_t)L * r->B * Q * (hc->num_classes + 1)) : NULL;
    *mask = host_copy_of(ma.mask_logits, (size_t)L * r->B * Q * r->H4 * r->W4);
    if (own_masks) {
        *own_masks = (float*)mallocCheck(nt * sizeof(float));
        size_t off = 0;
        for (int i = 0; i < L - 1; i++) {
            size_t n = (size_t)r->B * Q * ma.T[i % 3];
            ttt_to_host(*own_masks + off, ma.attn_mask[i], n * sizeof(float));
            off += n;
        }
    }
    if (teach) ttt_free(teach);
    ttt_free(inp_dev); ttt_free(rel); ttt_free(sacts); ttt_free(macts); ttt_free(f_dev); ttt_free(h_dev);
}

// the model's own masks (additive, 0 / -inf) against the reference's (1 = blocked)
static void check_own_masks(const char* name, const float* own, const float* ref, size_t n) {
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) differ += (own[i] < 0.0f) != (ref[i] > 0.5f);
    printf("     (%s: own attention masks differ from the reference's at %zu of %zu keys)\n", name, differ, n);
    CHECK(differ * 50 <= n, "%s: own masks differ at %zu of %zu keys", name, differ, n);
}

// h of a converted checkpoint on inp against reference run k (0 = hf3, 1 = hf4)
static void check_h(const char* tag, const ModelConfig* mc, const float* params, const float* inp,
                    const Reference* r, int k) {
    float *cls, *mask, *own;
    forward_head(mc, params, 1, inp, r, r->att[k], &cls, &mask, NULL);
    size_t nc = (size_t)r->B * r->Q * (r->K + 1), nm = (size_t)r->B * r->Q * r->H4 * r->W4;
    char name[96];
    for (int j = 0; j < r->L; j++) {
        snprintf(name, sizeof(name), "%s class logits, prediction %d", tag, j);
        check_close(name, cls + j * nc, r->cls[k] + j * nc, nc, TOL);
        snprintf(name, sizeof(name), "%s mask logits, prediction %d", tag, j);
        check_close(name, mask + j * nm, r->mask[k] + j * nm, nm, TOL);
    }
    free(cls); free(mask);
    forward_head(mc, params, 1, inp, r, NULL, &cls, &mask, &own);
    check_own_masks(tag, own, r->att[k], mask_floats(r, r->Q));
    free(cls); free(mask); free(own);
}

static void check_config(const char* path, const ModelConfig* mc, const Reference* r) {
    CHECK(mc->m2f.pixel_decoder == PIXEL_DECODER_MSDEFORM && mc->mae.pixel_decoder == PIXEL_DECODER_MSDEFORM,
          "%s: pixel decoders %d, %d (expected msdeform)", path, mc->m2f.pixel_decoder, mc->mae.pixel_decoder);
    CHECK(mc->swin.in_chans == 4 && mc->m2f.num_queries == r->Q && mc->m2f.num_classes == r->K &&
          mc->m2f.dec_layers + 1 == r->L && mc->mae.num_queries == r->QG && mc->mae.num_classes == 1,
          "%s: config (in_chans %d, Q %d, K %d, layers %d, g queries %d) differs from the reference's", path,
          mc->swin.in_chans, mc->m2f.num_queries, mc->m2f.num_classes, mc->m2f.dec_layers, mc->mae.num_queries);
}

int main(int argc, char** argv) {
    const char* dir = "test/data";
    const char* device = "cpu";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) device = argv[++i];
        else if (argv[i][0] != '-') dir = argv[i];
        else ttt_die("usage: %s [DIR] [--device cpu|cuda]", argv[0]);
    }
    ttt_set_device(ttt_parse_device(device));
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) ttt_cuda_set_tf32(0);
#endif
#ifdef _OPENMP
    if (!strcmp(dir, "test/data")) omp_set_num_threads(1);   // tiny: thread start-up would dominate
#endif
    char path[4096];
    snprintf(path, sizeof(path), "%s/m2f_model_ref.bin", dir);
    Reference r = reference_load(path);
    printf("reference %s: B %d, %dx%d, %d predictions, %d queries, %d classes, g %d queries, device %s\n",
           dir, r.B, r.H, r.W, r.L, r.Q, r.K, r.QG, ttt_device_name(ttt_device));
    size_t npix = (size_t)r.B * r.H * r.W;

    // ---- the Hugging Face path: hf3 with the 4th channel all ones
    char hf_path[4200], d2_path[4200];
    snprintf(hf_path, sizeof(hf_path), "%s/m2f_model_hf.bin", dir);
    snprintf(d2_path, sizeof(d2_path), "%s/m2f_model_d2.bin", dir);
    Model* mh = model_load(hf_path, 1, 32, 32);
    ModelConfig mc = *model_config(mh);
    check_config(hf_path, &mc, &r);
    size_t n_f = model_num_params(mh, 0), n_h = model_num_params(mh, 1), n_g = model_num_params(mh, 2);
    float* ph = model_params_host(mh);
    model_free(mh);
    float* ones_in = (float*)mallocCheck(npix * 4 * sizeof(float));
    for (size_t p = 0; p < npix; p++) {
        memcpy(ones_in + 4 * p, r.x + 4 * p, 3 * sizeof(float));
        ones_in[4 * p + 3] = 1.0f;
    }
    check_h("hf3", &mc, ph, ones_in, &r, 0);
    // g was absent: model_load made it as model_init_random(1) does
    Model* fresh = model_create(&mc, 1, 32, 32);
    model_init_random(fresh, 1);
    float* pf = model_params_host(fresh);
    model_free(fresh);
    CHECK(!memcmp(ph + n_f + n_h, pf + n_f + n_h, n_g * sizeof(float)), "g of %s is not model_init_random(1)'s", hf_path);
    group_line("g of the Hugging Face checkpoint is model_init_random(seed 1)'s (%zu floats)", n_g);
    // the 4th channel's patch weights are 0
    SwinParams sp;
    swin_point_params(&sp, ph, &mc.swin);
    int zero4 = 1;
    for (size_t k = 0; k < (size_t)mc.swin.embed_dim * 16; k++) zero4 &= sp.patch_w[4 * k + 3] == 0.0f;
    CHECK(zero4, "the 4th input channel of a 3-channel backbone has non-zero weights");

    // ---- the detectron2 path: hf4 (h) and hfg (g) on x
    Model* md = model_load(d2_path, 1, 32, 32);
    ModelConfig mcd = *model_config(md);
    check_config(d2_path, &mcd, &r);
    CHECK(model_num_params(md, 0) == n_f && model_num_params(md, 1) == n_h && model_num_params(md, 2) == n_g,
          "the two converted checkpoints differ in size");
    float* pd = model_params_host(md);
    model_free(md);
    // same f but the 4th channel's patch weights, same h
    size_t differ_f = 0;
    for (size_t i = 0; i < n_f; i++) {
        int fourth = i < (size_t)mc.swin.embed_dim * 16 * 4 && i % 4 == 3;
        differ_f += !fourth && ph[i] != pd[i];
    }
    CHECK(differ_f == 0, "f of the two checkpoints differs at %zu places besides the 4th channel", differ_f);
    CHECK(!memcmp(ph + n_f, pd + n_f, n_h * sizeof(float)), "h of the two checkpoints differs");
    M2FParams gp;
    m2f_point_params(&gp, pd + n_f + n_h, &mcd.mae);
    int zero_class = 1;
    for (int k = 0; k < 2 * (mcd.mae.hidden_dim + 1); k++) zero_class &= gp.class_w[k] == 0.0f;   // class_b follows class_w
    CHECK(zero_class, "g's class head (absent in the released MAE head) is not zero");
    group_line("both checkpoints: same f (but the 4th channel) and h; g's class head zero");
    check_h("hf4 (detectron2 names)", &mcd, pd, r.x, &r, 1);
    float *gcls, *gmask, *gown;
    forward_head(&mcd, pd, 2, r.x, &r, r.g_att, &gcls, &gmask, NULL);
    size_t ngm = (size_t)r.B * r.QG * r.H4 * r.W4;
    check_close("g (recon_head) mask logits, last prediction", gmask + (size_t)(r.L - 1) * ngm, r.g_mask, ngm, TOL);
    free(gmask);
    forward_head(&mcd, pd, 2, r.x, &r, NULL, &gcls, &gmask, &gown);
    check_own_masks("g", gown, r.g_att, mask_floats(&r, r.QG));
    free(gmask); free(gown);

    free(ph); free(pd); free(pf); free(ones_in);
    free(r.x); free(r.g_att); free(r.g_mask);
    for (int k = 0; k < 2; k++) { free(r.cls[k]); free(r.mask[k]); free(r.att[k]); }
    return test_summary("test_m2f_model_ref");
}
