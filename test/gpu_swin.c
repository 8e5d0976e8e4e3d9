// test/gpu_swin.c: the Swin encoder f on CUDA against Hugging Face's SwinBackbone (the
// float64 reference test/data/swin_ref.bin, format in dev/swin_reference.py): the four
// outputs, the input gradient and every parameter gradient, with TF32 matrix
// products (so L2-relative tolerances of a few 1e-3); the same case with a drop-path table
// (swin_drop_path_scales at rate 0.6, with dropped branches) on CUDA against the CPU (both with
// the gradient arena filled with NaN first: fill_nan); then the
// time of one Swin-S forward + backward at 2 x 512 x 512.
#include "test/test.h"

#define REF_PATH "test/data/swin_ref.bin"

// the gradient arena filled with NaN before the backward: swin_backward zeroes only what it
// accumulates into, every other buffer must be written by its first op (swin.c); an element read
// before it is written makes the gradients NaN (fresh device memory is often zeros, which hides it)
static void fill_nan(float* d, size_t n) {
    float* h = (float*)mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = NAN;
    ttt_to_device(d, h, n * sizeof(float));
    free(h);
}

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
    size_t nda = swin_point_grad_acts(&da, NULL, &cfg, B, H, W);
    float* dacts = (float*)ttt_malloc(nda * sizeof(float));
    fill_nan(dacts, nda);
    swin_point_acts(&a, acts, &cfg, B, H, W);
    swin_point_grad_acts(&da, dacts, &cfg, B, H, W);
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

// forward + backward of the reference case on ttt_device with the drop-path table host_table
// (2 * blocks, B) on the host: host copies of the four outputs, dinp and the parameter gradients
static void run_with_drop_path(const SwinReference* ref, const float* host_table, size_t ntab,
                               float* out[4], float** dinp, float** grads) {
    SwinConfig cfg = ref->cfg;
    int B = ref->B, H = ref->H, W = ref->W;
    size_t np = ref->n_params, nin = ref->n_inp;
    SwinActs a, da;
    size_t na = swin_point_acts(&a, NULL, &cfg, B, H, W);
    float* acts = (float*)ttt_malloc(na * sizeof(float));
    size_t nda = swin_point_grad_acts(&da, NULL, &cfg, B, H, W);
    float* dacts = (float*)ttt_malloc(nda * sizeof(float));
    fill_nan(dacts, nda);
    swin_point_acts(&a, acts, &cfg, B, H, W);
    swin_point_grad_acts(&da, dacts, &cfg, B, H, W);
    swin_init_acts(&a, &cfg);
    float* d_table = device_copy_of(host_table, ntab);
    a.drop_scale = d_table;
    float* dR[4];
    for (int s = 0; s < 4; s++) dR[s] = device_copy_of(ref->R[s], ref->n_out[s]);
    float* d_params = device_copy_of(ref->params, np);
    float* d_inp = device_copy_of(ref->inp, nin);
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
    for (int s = 0; s < 4; s++) out[s] = host_copy_of(a.out[s], ref->n_out[s]);
    *dinp = host_copy_of(d_dinp, nin);
    *grads = host_copy_of(d_grads, np);
    for (int s = 0; s < 4; s++) ttt_free(dR[s]);
    ttt_free(acts); ttt_free(dacts); ttt_free(d_table); ttt_free(d_params); ttt_free(d_inp);
    ttt_free(d_grads); ttt_free(d_dinp); ttt_free(rel_index);
}

// drop-path on CUDA against the CPU: the reference case (B = 2) with a random table
static void drop_path_check(void) {
    SwinReference ref = swin_reference_load(REF_PATH);
    CHECK(ref.params_match && !ref.trailing_bytes, "%s does not match our Swin", REF_PATH);
    if (!ref.params_match) return;
    int nblocks = ref.cfg.depths[0] + ref.cfg.depths[1] + ref.cfg.depths[2] + ref.cfg.depths[3];
    size_t ntab = (size_t)2 * nblocks * ref.B;
    float* table = (float*)mallocCheck(ntab * sizeof(float));
    Rng rng; rng_seed(&rng, 3);
    swin_drop_path_scales(table, &ref.cfg, ref.B, 0.6f, &rng);   // more drops than 0.3 in 8 blocks
    int dropped = 0, scaled = 0;
    for (size_t k = 0; k < ntab; k++) { dropped += table[k] == 0.0f; scaled += table[k] > 1.0f; }
    printf("drop-path table: %d of %zu branches dropped, %d scaled by 1/(1-p)\n", dropped, ntab, scaled);
    CHECK(dropped > 0 && scaled > 0, "drop-path table without dropped or scaled branches");
    float *out[2][4], *dinp[2], *grads[2];
    for (int d = 0; d < 2; d++) {
        ttt_set_device(d == 0 ? DEVICE_CPU : DEVICE_CUDA);
        run_with_drop_path(&ref, table, ntab, out[d], &dinp[d], &grads[d]);
    }
    char name[64];
    for (int s = 0; s < 4; s++) {
        snprintf(name, sizeof(name), "drop-path cuda out[%d] vs cpu", s);
        check_close(name, out[1][s], out[0][s], ref.n_out[s], 5e-3);
    }
    check_l2("drop-path cuda dinput vs cpu", dinp[1], dinp[0], ref.n_inp, 1e-2);
    check_l2("drop-path cuda d(all parameters) vs cpu", grads[1], grads[0], ref.n_params, 1e-2);
    // the table matters: the CPU outputs differ from the reference's (no drop-path)
    double moved = l2_rel_error(out[0][3], ref.out[3], ref.n_out[3]);
    CHECK(moved > 1e-2, "drop-path table barely changes out[3]: %.3e", moved);
    for (int d = 0; d < 2; d++) {
        for (int s = 0; s < 4; s++) free(out[d][s]);
        free(dinp[d]); free(grads[d]);
    }
    free(table);
    swin_reference_free(&ref);
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
    float* dacts = (float*)ttt_malloc(swin_point_grad_acts(&da, NULL, &cfg, B, H, W) * sizeof(float));
    swin_point_acts(&a, acts, &cfg, B, H, W);
    swin_point_grad_acts(&da, dacts, &cfg, B, H, W);
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
    ttt_cuda_set_precision(PRECISION_TF32);   // the bounds below are TF32's (the default is bf16)
    reference_check();
    drop_path_check();   // leaves ttt_device on CUDA
    timing();
    return test_summary("gpu_swin");
}
