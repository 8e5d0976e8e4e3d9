// test/test_swin_ref.c: the Swin encoder f against Hugging Face's SwinBackbone
// (transformers 5.17, float64), file test/data/swin_ref.bin written by dev/swin_reference.py
// (format documented there): the four LayerNorm'd stage outputs, the gradient of
// loss = sum_s sum(out_s * R_s) with respect to the input and every parameter tensor.
#include "test.h"

#define REF_PATH "test/data/swin_ref.bin"
#define TOL 1e-4

int main(void) {
    SwinReference ref = swin_reference_load(REF_PATH);
    SwinConfig cfg = ref.cfg;
    int B = ref.B, H = ref.H, W = ref.W;
    size_t np = ref.n_params, nin = ref.n_inp;
    CHECK(ref.params_match, "parameter count: ours %zu differs from the reference's", np);
    if (!ref.params_match) return test_summary("test_swin_ref");
    CHECK(!ref.trailing_bytes, "%s has trailing bytes", REF_PATH);
    printf("reference: B=%d %dx%dx%d, embed %d, depths %d %d %d %d, heads %d %d %d %d, %zu params\n",
           B, cfg.in_chans, H, W, cfg.embed_dim, cfg.depths[0], cfg.depths[1], cfg.depths[2],
           cfg.depths[3], cfg.num_heads[0], cfg.num_heads[1], cfg.num_heads[2], cfg.num_heads[3], np);
    float *params = ref.params, *inp = ref.inp, *ref_dinp = ref.dinp, *ref_dparams = ref.dparams;
    size_t* nout = ref.n_out;
    float** ref_out = ref.out;
    float** R = ref.R;
    SwinActs a, da;
    size_t na = swin_point_acts(&a, NULL, &cfg, B, H, W);
    float* acts = (float*)mallocCheck(na * sizeof(float));
    float* dacts = (float*)mallocCheck(swin_point_grad_acts(&da, NULL, &cfg, B, H, W) * sizeof(float));
    swin_point_acts(&a, acts, &cfg, B, H, W);
    swin_point_grad_acts(&da, dacts, &cfg, B, H, W);
    swin_init_acts(&a, &cfg);

    SwinParams p, g;
    swin_point_params(&p, params, &cfg);
    float* grads = (float*)callocCheck(np, sizeof(float));
    float* dinp = (float*)callocCheck(nin, sizeof(float));
    swin_point_params(&g, grads, &cfg);
    int* rel_index = swin_make_rel_index(&cfg);

    double t0 = time_now_seconds();
    swin_forward(&cfg, &p, &a, rel_index, inp, B);
    swin_backward(&cfg, &p, &g, &a, &da, rel_index, inp, R, dinp, B);
    printf("forward + backward %.2f s\n", time_now_seconds() - t0);

    double worst = 0.0;
    const char* worst_name = "";
    char name[96];
    for (int s = 0; s < 4; s++) {
        snprintf(name, sizeof(name), "out[%d] (%d, %d, %d, %d)", s, B, a.Hs[s], a.Ws[s], a.C[s]);
        check_close(name, a.out[s], ref_out[s], nout[s], TOL);
        double e = max_rel_error(a.out[s], ref_out[s], nout[s]);
        if (!(e <= worst)) { worst = e; worst_name = "an output"; }
    }
    check_close("dinput", dinp, ref_dinp, nin, TOL);
    {
        double e = max_rel_error(dinp, ref_dinp, nin);
        if (!(e <= worst)) { worst = e; worst_name = "dinput"; }
    }

    // every parameter tensor: the struct's pointers in layout order give the boundaries
    float* starts[1024];
    char names[1024][96];
    int nt = 0;
    #define ADD(label, ptr) do { starts[nt] = (ptr); snprintf(names[nt], 96, "%s", label); nt++; } while (0)
    ADD("patch_w", p.patch_w); ADD("patch_b", p.patch_b);
    ADD("patch_norm_w", p.patch_norm_w); ADD("patch_norm_b", p.patch_norm_b);
    int blk = 0;
    for (int s = 0; s < 4; s++) {
        for (int i = 0; i < cfg.depths[s]; i++, blk++) {
            SwinBlockParams* b = &p.block[blk];
            char l[96];
            #define ADDB(field) do { snprintf(l, 96, "s%d.b%d." #field, s, i); ADD(l, b->field); } while (0)
            ADDB(norm1_w); ADDB(norm1_b); ADDB(qkv_w); ADDB(qkv_b); ADDB(rel_table);
            ADDB(proj_w); ADDB(proj_b); ADDB(norm2_w); ADDB(norm2_b);
            ADDB(fc1_w); ADDB(fc1_b); ADDB(fc2_w); ADDB(fc2_b);
            #undef ADDB
        }
        snprintf(name, sizeof(name), "s%d.out_norm_w", s); ADD(name, p.out_norm_w[s]);
        snprintf(name, sizeof(name), "s%d.out_norm_b", s); ADD(name, p.out_norm_b[s]);
        if (s < 3) {
            snprintf(name, sizeof(name), "s%d.merge_norm_w", s); ADD(name, p.merge_norm_w[s]);
            snprintf(name, sizeof(name), "s%d.merge_norm_b", s); ADD(name, p.merge_norm_b[s]);
            snprintf(name, sizeof(name), "s%d.merge_w", s); ADD(name, p.merge_w[s]);
        }
    }
    #undef ADD
    int all_ok = 1;
    double worst_param = 0.0;
    const char* worst_param_name = "";
    for (int k = 0; k < nt; k++) {
        size_t off = (size_t)(starts[k] - params);
        size_t n = (k + 1 < nt ? (size_t)(starts[k + 1] - params) : np) - off;
        double e = max_rel_error(grads + off, ref_dparams + off, n);
        if (!(e <= worst_param)) { worst_param = e; worst_param_name = names[k]; }
        if (!(e <= TOL)) {
            all_ok = 0;
            printf("FAIL d%-40s rel err %.3e (n=%zu)\n", names[k], e, n);
        }
    }
    CHECK(all_ok, "some parameter gradients differ from the reference by more than %.0e", TOL);
    printf("%-4s d(every one of %d parameter tensors): worst rel err %.3e (d%s), tol %.0e\n",
           all_ok ? "ok" : "FAIL", nt, worst_param, worst_param_name, TOL);
    printf("worst of outputs/dinput: %.3e (%s)\n", worst, worst_name);

    free(acts); free(dacts); free(grads); free(dinp);
    swin_reference_free(&ref);
    ttt_free(rel_index);
    return test_summary("test_swin_ref");
}
