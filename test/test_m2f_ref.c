// test/test_m2f_ref.c: the masked-attention transformer decoder against Hugging Face's
// Mask2FormerTransformerModule (transformers 5.17, float64). test/data/m2f_ref.bin is written
// by dev/m2f_reference.py (format documented there): noised tiny decoder parameters, random
// memory features and mask features, the attention masks HF used in every layer (fed in here:
// teacher forcing), and HF's class and mask logits after the queries and after every layer.
#include "test/test.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define REF_PATH "test/data/m2f_ref.bin"

int main(void) {
#ifdef _OPENMP
    omp_set_num_threads(1);   // tiny sizes: thread start-up would dominate, most of all on a busy machine
#endif
    ttt_set_device(DEVICE_CPU);
    FILE* fp = fopenCheck(REF_PATH, "rb");
    int h[32];
    freadCheck(h, sizeof(int), 32, fp);
    if (h[0] != 0x4D324652 || h[1] != 1) ttt_die("%s: bad magic/version", REF_PATH);
    int B = h[2], D = h[3], Q = h[4], NH = h[5], FF = h[6], NL = h[7], K = h[8], MD = h[9];
    int H4 = h[10], W4 = h[11], n_ref_params = h[18];
    int in_dims[4] = {5, 6, 7, 8};   // the pixel decoder is not used here
    M2FConfig cfg = m2f_config_tiny(in_dims, K);
    cfg.conv_dim = cfg.hidden_dim = D;
    cfg.num_groups = 4;
    cfg.num_queries = Q;
    cfg.num_heads = NH;
    cfg.ffn_dim = FF;
    cfg.dec_layers = NL;
    cfg.mask_dim = MD;
    m2f_config_check(&cfg);
    size_t np = m2f_num_params(&cfg), na = m2f_num_acts(&cfg, B, H4, W4);
    float* params = (float*)callocCheck(np, sizeof(float));
    float* acts = (float*)callocCheck(na, sizeof(float));
    M2FParams p; M2FActs a;
    m2f_point_params(&p, params, &cfg);
    m2f_point_acts(&a, acts, &cfg, B, H4, W4);
    for (int m = 0; m < 3; m++) {
        CHECK(a.Hs[3 - m] == h[12 + m] && a.Ws[3 - m] == h[15 + m], "level %d size %dx%d vs ref %dx%d",
              m, a.Hs[3 - m], a.Ws[3 - m], h[12 + m], h[15 + m]);
    }
    // decoder parameters follow the pixel decoder block
    size_t pd_n = pixel_decoder_num_params(&cfg);
    CHECK(np - pd_n == (size_t)n_ref_params, "decoder params %zu vs ref %d", np - pd_n, n_ref_params);
    freadCheck(params + pd_n, sizeof(float), np - pd_n, fp);
    // memory features into the FPN outputs 3, 2, 1; mask features
    for (int m = 0; m < 3; m++) freadCheck(a.pd.out[3 - m], sizeof(float), (size_t)B * a.T[m] * D, fp);
    freadCheck(a.pd.mask_features, sizeof(float), (size_t)B * H4 * W4 * MD, fp);
    // HF's masks (1 = blocked) -> additive
    size_t nt = 0;
    for (int i = 0; i < NL; i++) nt += (size_t)B * Q * a.T[i % 3];
    float* teacher = (float*)mallocCheck(nt * sizeof(float));
    freadCheck(teacher, sizeof(float), nt, fp);
    size_t blocked = 0;
    for (size_t i = 0; i < nt; i++) { blocked += teacher[i] > 0.5f; teacher[i] = teacher[i] > 0.5f ? -INFINITY : 0.0f; }
    printf("     (reference masks: %zu of %zu keys blocked)\n", blocked, nt);
    int L = NL + 1;
    size_t n_class = (size_t)L * B * Q * (K + 1), n_mask = (size_t)L * B * Q * H4 * W4;
    float* ref_class = (float*)mallocCheck(n_class * sizeof(float));
    float* ref_mask = (float*)mallocCheck(n_mask * sizeof(float));
    freadCheck(ref_class, sizeof(float), n_class, fp);
    freadCheck(ref_mask, sizeof(float), n_mask, fp);
    fcloseCheck(fp);

    m2f_decoder_forward(&cfg, &p, &a, B, teacher);
    char name[64];
    for (int j = 0; j < L; j++) {
        size_t nc = (size_t)B * Q * (K + 1), nm = (size_t)B * Q * H4 * W4;
        snprintf(name, sizeof(name), "HF class logits, prediction %d", j);
        check_close(name, a.class_logits + j * nc, ref_class + j * nc, nc, 1e-4);
        snprintf(name, sizeof(name), "HF mask logits, prediction %d", j);
        check_close(name, a.mask_logits + j * nm, ref_mask + j * nm, nm, 1e-4);
    }
    // without teacher forcing the C model must make HF's masks from its own logits, except
    // where a resized logit sits within float noise of 0: count disagreements
    m2f_decoder_forward(&cfg, &p, &a, B, NULL);
    size_t off = 0, differ = 0;
    for (int i = 0; i < NL; i++) {
        size_t n = (size_t)B * Q * a.T[i % 3];
        for (size_t k = 0; k < n; k++) differ += (a.attn_mask[i][k] < 0) != (teacher[off + k] < 0);
        off += n;
    }
    printf("     (own masks differ from HF's at %zu of %zu keys)\n", differ, nt);
    CHECK(differ * 100 <= nt, "own masks differ from HF's at %zu of %zu keys", differ, nt);
    free(teacher); free(ref_class); free(ref_mask); free(params); free(acts);
    return test_summary("test_m2f_ref");
}
