// test/gpu_swin.c: the Swin encoder f on CUDA against Hugging Face's SwinBackbone (the
// float64 reference test/data/swin_ref.bin, format in dev/swin_reference.py): the four
// outputs, the input gradient and every parameter gradient, with the default TF32 matrix
// products (so L2-relative tolerances of a few 1e-3), then the time of one Swin-S forward +
// backward at 2 x 512 x 512.
#include "test/test.h"

#define REF_PATH "test/data/swin_ref.bin"

static void reference_check(void) {
    SwinReference ref = swin_reference_load(REF_PATH);
    CHECK(ref.params_match && !ref.trailing_bytes, "%s does not match our Swin", REF_PATH);
    if (!ref.params_match) return;
    SwinConfig cfg = ref.cfg;
    int B = ref.B, H = ref.H, W = ref.W;
    size_t np = ref.n_params, nin = ref.n_inp;
    size_t* nout = ref.n_out;
    SwinActs a, da;
    size_t na = swin_point_acts(&a, NULL, &cfg, B, H, W);
    float* acts = (float*)ttt_malloc(na * sizeof(float));
    float* dacts = (float*)ttt_malloc(na * sizeof(float));
    swin_point_acts(&a, acts, &cfg, B, H, W);
    swin_point_acts(&da, dacts, &cfg, B, H, W);
    swin_init_acts(&a, &cfg);
    float* dR[4];
    for (int s = 0; s < 4; s++) dR[s] = device_copy_of(ref.R[s], nout[s]);

    float* d_params = device_copy_of(ref.params, np);
    float* d_inp = device_copy_of(ref.inp, nin);
    float* d_grads = (float*)ttt_malloc(np * sizeof(float));
    float* d_dinp = (float*)ttt_malloc(nin * sizeof(float));
    ttt_zero(d_grads, np * sizeof(float));
    ttt_zero(d_dinp, nin * sizeof(float));
    SwinParams p, g;
    swin_point_params(&p, d_params, &cfg);
    swin_point_params(&g, d_grads, &cfg);
    int* rel_index = swin_make_rel_index(&cfg);
    swin_forward(&cfg, &p, &a, rel_index, d_inp, B);
    swin_backward(&cfg, &p, &g, &a, &da, rel_index, d_inp, dR, d_dinp, B);
    ttt_synchronize();
    char name[64];
    for (int s = 0; s < 4; s++) {
        float* out = host_copy_of(a.out[s], nout[s]);
        snprintf(name, sizeof(name), "cuda out[%d] vs HF", s);
        check_close(name, out, ref.out[s], nout[s], 5e-3);
        free(out);
    }
    float* dinp = host_copy_of(d_dinp, nin);
    check_l2("cuda dinput vs HF", dinp, ref.dinp, nin, 1e-2);
    float* grads = host_copy_of(d_grads, np);
    check_l2("cuda d(all parameters) vs HF", grads, ref.dparams, np, 1e-2);
    free(dinp); free(grads);
    for (int s = 0; s < 4; s++) ttt_free(dR[s]);
    swin_reference_free(&ref);
    ttt_free(acts); ttt_free(dacts); ttt_free(d_params); ttt_free(d_inp); ttt_free(d_grads);
    ttt_free(d_dinp); ttt_free(rel_index);
}

// Swin-S forward + backward time at 2 x 4 x 512 x 512
static void timing(void) {
    SwinConfig cfg = swin_config_small();
    int B = 2, H = 512, W = 512;
    size_t np = swin_num_params(&cfg), nin = (size_t)B * H * W * cfg.in_chans;
    float* host = (float*)mallocCheck(np * sizeof(float));
    Rng rng; rng_seed(&rng, 1);
    swin_init_params(host, &cfg, &rng);
    float* d_params = device_copy_of(host, np);
    float* d_grads = (float*)ttt_malloc(np * sizeof(float));
    float* hin = (float*)mallocCheck(nin * sizeof(float));
    rng_fill_uniform(&rng, hin, nin, -1, 1);
    float* d_inp = device_copy_of(hin, nin);
    SwinActs a, da;
    size_t na = swin_point_acts(&a, NULL, &cfg, B, H, W);
    float* acts = (float*)ttt_malloc(na * sizeof(float));
    float* dacts = (float*)ttt_malloc(na * sizeof(float));
    swin_point_acts(&a, acts, &cfg, B, H, W);
    swin_point_acts(&da, dacts, &cfg, B, H, W);
    swin_init_acts(&a, &cfg);
    float* dout[4];
    for (int s = 0; s < 4; s++) {
        size_t n = (size_t)B * a.Hs[s] * a.Ws[s] * a.C[s];
        dout[s] = (float*)ttt_malloc(n * sizeof(float));
        ttt_zero(dout[s], n * sizeof(float));
    }
    SwinParams p, g;
    swin_point_params(&p, d_params, &cfg);
    swin_point_params(&g, d_grads, &cfg);
    int* rel_index = swin_make_rel_index(&cfg);
    double tf = 0, tb = 0;
    for (int it = 0; it < 4; it++) {
        ttt_synchronize();
        double t0 = time_now_seconds();
        swin_forward(&cfg, &p, &a, rel_index, d_inp, B);
        ttt_synchronize();
        double t1 = time_now_seconds();
        ttt_zero(d_grads, np * sizeof(float));
        swin_backward(&cfg, &p, &g, &a, &da, rel_index, d_inp, dout, NULL, B);
        ttt_synchronize();
        double t2 = time_now_seconds();
        if (it > 0) { tf += (t1 - t0) / 3; tb += (t2 - t1) / 3; }
    }
    printf("Swin-S %d x %d x %d: forward %.1f ms, backward %.1f ms, activations %.2f GiB x 2\n",
           B, H, W, tf * 1e3, tb * 1e3, na * 4.0 / 1073741824.0);
    CHECK(tf > 0 && tb > 0, "timing");
    free(host); free(hin);
    for (int s = 0; s < 4; s++) ttt_free(dout[s]);
    ttt_free(d_params); ttt_free(d_grads); ttt_free(d_inp); ttt_free(acts); ttt_free(dacts);
    ttt_free(rel_index);
}

int main(void) {
    if (!ttt_cuda_available()) {
        printf("no CUDA device; skipping\n");
        return test_summary("gpu_swin");
    }
    ttt_set_device(DEVICE_CUDA);
    reference_check();
    timing();
    return test_summary("gpu_swin");
}
