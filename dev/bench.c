// dev/bench.c: times the Y model on the current device.
//   per-frame prediction h(f(x)) (batch 1) and one TTT step (MAE forward + backward of f, g
//   + AdamW) at batch B, after warm-up; median over --iters runs. Split of the TTT step:
//   forward of f and g (model_mae_loss) and the rest (backward + AdamW = step - forward).
//   GEMM FLOPs are counted exactly as cuBLAS is called (2 M N K per product); the rate
//   printed is those FLOPs over the measured time. Device memory in use is read at the end
//   (it includes the CUDA context; buffers are never freed during a run, so it is the peak).
// usage: ./bench [--config swin_s|default|tiny] [--batch B] [--height H] [--width W]
//                [--iters N] [--warmup N] [--device cuda|cpu]
// One line per measurement; the last line is a summary row for BENCHMARKS.md.
#include "ttt.h"

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return x < y ? -1 : x > y;
}
static double median(double* x, int n) {
    qsort(x, n, sizeof(double), cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}
static double gemm_flops(void) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) return ttt_cuda_gemm_flops();
#endif
    return 0.0;
}

int main(int argc, char** argv) {
    const char* config = "swin_s";
    const char* device = "auto";
    int B = 1, H = 384, W = 1248, iters = 5, warmup = 2;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) ttt_die("missing value after %s", argv[i]);
        if (!strcmp(argv[i], "--config")) config = argv[++i];
        else if (!strcmp(argv[i], "--batch")) B = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--height")) H = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--width")) W = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--iters")) iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warmup")) warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--device")) device = argv[++i];
        else ttt_die("unknown option %s", argv[i]);
    }
    if (B < 1 || H < 32 || W < 32 || iters < 1 || iters > 1000 || warmup < 0)
        ttt_die("bad sizes: batch %d, %d x %d, iters %d, warmup %d", B, H, W, iters, warmup);
    ttt_set_device(ttt_parse_device(device));
    int K = 19;
    ModelConfig cfg;
    if (!strcmp(config, "swin_s")) cfg = model_config_swin_s(K);
    else if (!strcmp(config, "default")) cfg = model_config_default(K);
    else if (!strcmp(config, "tiny")) cfg = model_config_tiny(K);
    else { ttt_die("unknown config '%s' (swin_s, default, tiny)", config); return 1; }

    Model* m = model_create(&cfg, B, H, W);
    model_init_random(m, 1);
    model_snapshot_ttt(m);
    printf("bench: config %s, device %s, batch %d, %d x %d, params f %.2fM h %.2fM g %.2fM\n",
           config, ttt_device_name(ttt_device), B, H, W, model_num_params(m, 0) / 1e6,
           model_num_params(m, 1) / 1e6, model_num_params(m, 2) / 1e6);
    Rng rng; rng_seed(&rng, 2);
    float* frames = (float*)mallocCheck((size_t)B * H * W * 3 * sizeof(float));
    rng_fill_uniform(&rng, frames, (size_t)B * H * W * 3, 0.0f, 1.0f);
    unsigned char* pred = (unsigned char*)mallocCheck((size_t)H * W);
    OptConfig opt = opt_config_ttt();
    double* t = (double*)mallocCheck(iters * sizeof(double));

    // prediction, batch 1 (returns class ids on the host, so it ends synchronised)
    for (int i = 0; i < warmup; i++) model_predict(m, frames, pred);
    double f0 = gemm_flops();
    for (int i = 0; i < iters; i++) {
        ttt_synchronize();
        double s = time_now_seconds();
        model_predict(m, frames, pred);
        ttt_synchronize();
        t[i] = time_now_seconds() - s;
    }
    double flop_predict = (gemm_flops() - f0) / iters;
    double ms_predict = median(t, iters) * 1e3;
    printf("predict (B=1)        %9.2f ms   GEMM %7.1f GFLOP  %6.1f TFLOP/s\n", ms_predict,
           flop_predict / 1e9, flop_predict / (ms_predict * 1e-3) / 1e12);

    // MAE forward only (f and g), batch B
    for (int i = 0; i < warmup; i++) model_mae_loss(m, frames, B, &rng);
    f0 = gemm_flops();
    for (int i = 0; i < iters; i++) {
        ttt_synchronize();
        double s = time_now_seconds();
        model_mae_loss(m, frames, B, &rng);
        ttt_synchronize();
        t[i] = time_now_seconds() - s;
    }
    double flop_fwd = (gemm_flops() - f0) / iters;
    double ms_fwd = median(t, iters) * 1e3;
    printf("MAE forward (B=%d)   %9.2f ms   GEMM %7.1f GFLOP  %6.1f TFLOP/s\n", B, ms_fwd,
           flop_fwd / 1e9, flop_fwd / (ms_fwd * 1e-3) / 1e12);

    // one TTT step: forward + backward + AdamW on f and g
    float loss = 0.0f;
    for (int i = 0; i < warmup; i++) loss = model_ttt_step(m, frames, B, &opt, &rng);
    f0 = gemm_flops();
    for (int i = 0; i < iters; i++) {
        ttt_synchronize();
        double s = time_now_seconds();
        loss = model_ttt_step(m, frames, B, &opt, &rng);
        ttt_synchronize();
        t[i] = time_now_seconds() - s;
    }
    double flop_step = (gemm_flops() - f0) / iters;
    double ms_step = median(t, iters) * 1e3;
    printf("TTT step (B=%d)      %9.2f ms   GEMM %7.1f GFLOP  %6.1f TFLOP/s  (loss %.4f)\n", B, ms_step,
           flop_step / 1e9, flop_step / (ms_step * 1e-3) / 1e12, loss);
    printf("  split: forward f+g %.2f ms, backward + AdamW %.2f ms; per frame %.2f ms\n",
           ms_fwd, ms_step - ms_fwd, ms_step / B);

    double used_gib = 0.0, total_gib = 0.0;
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) {
        size_t used, total;
        ttt_cuda_memory_info(&used, &total);
        used_gib = used / 1073741824.0; total_gib = total / 1073741824.0;
        printf("device memory in use %.2f GiB of %.2f GiB\n", used_gib, total_gib);
    }
#endif
    printf("| %s | %d | %dx%d | %.2f | %.2f | %.2f | %.2f | %.1f | %.2f |\n", config, B, H, W, ms_predict, ms_fwd,
           ms_step, ms_step / B, flop_step / (ms_step * 1e-3) / 1e12, used_gib);
    free(t); free(frames); free(pred);
    model_free(m);
    return 0;
}
