// dev/bench.c: times the Y model on the current device.
//   predict: one frame (batch 1) through f and h, class ids back on the host.
//   MAE forward: masked batch of B through f and g + the loss.
//   TTT step: MAE forward + backward through g and f + AdamW on f and g, batch B (in
//   micro-batches of M when --micro-batch M < B: same step, gradients accumulated).
// Times: CUDA events around each call after warm-up (host clock on the CPU), median of
// --iters. Then a second pass with stage timing (CUDA graphs off, events at the stage
// marks in mae.c) splits predict and the TTT step by stage. GEMM FLOPs are counted as
// cuBLAS is called (2 M N K per product); the rate printed is those FLOPs over the time, and
// its fraction of the card's dense bf16 peak, measured first in the same run (--peak N: N^3 bf16
// GEMMs, float32 sums, 3 warm-up then 10 timed; --peak 0 skips it).
// --precision bf16|tf32|fp32: the matrix products' precision (TTT_PRECISION; default bf16).
// Device memory in use is read at the end (CUDA context, parameters, activations,
// workspaces; nothing is freed during a run, so it is the peak).
// usage: ./bench [--config swin_s|default|tiny] [--pixel-decoder fpn|msdeform] [--batch B]
//                [--micro-batch M] [--height H] [--width W] [--iters N] [--warmup N]
//                [--device cuda|cpu] [--recipe demo|paper] [--predict HxW] [--score HxW]
//                [--precision bf16|tf32|fp32] [--peak N] [--gpus N]
// --recipe paper: the released code's step (model_recipe_paper: drop-path, clipping, param
// groups; a fresh AdamW before every step) on B images of H x W (the TTT crops, 512 x 1024 in
// the paper), and the prediction on a frame of --predict size (KITTI resized: 618 x 2048,
// padded to 640 x 2048) scored at --score size (KITTI's 375 x 1242): the paper's sizes are
//   ./bench --recipe paper --batch 32 --height 512 --width 1024 --predict 618x2048 --score 375x1242
// and "frame" = TTT step + prediction, the time per frame of the stream. One configuration per
// invocation; issue 14's two, each in every precision (P = bf16, tf32, fp32):
//   ./bench --batch 8 --height 384 --width 1248 --precision P
//   ./bench --recipe paper --batch 32 --height 512 --width 1024 --predict 618x2048 --score 375x1242 --precision P
// (B = 32 runs in micro-batches when it does not fit: the "micro-batch" in the first line says.)
// With --pixel-decoder msdeform, h and g use the MSDeformAttn pixel decoder; the stage split
// then shows its deformable encoder ("msdeform encoder forward/backward") inside the g and h
// stages, and TTT_PROFILE=1 the ms_deform_attn kernels alone.
// --gpus N: the TTT step data parallel over N GPUs (dist.c: one process per GPU, the batch split,
// gradients summed with NCCL); every rank runs the same calls, rank 0 prints. The step's split
// then shows the wait for the others in "all-reduce (gradients)".
// The last line is a summary row for BENCHMARKS.md.
#include "ttt.h"

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return x < y ? -1 : x > y;
}
static double median(double* x, int n) {
    qsort(x, n, sizeof(double), cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}
static double bf16_peak_tflops = 0.0;   // measured at start (0: not measured)
// "  12.3% of bf16 peak" after a rate, when the peak was measured
static const char* peak_fraction(double tflops) {
    static char buf[64];
    buf[0] = '\0';
    if (bf16_peak_tflops > 0.0) snprintf(buf, sizeof(buf), "  %5.1f%% of bf16 peak", 100.0 * tflops / bf16_peak_tflops);
    return buf;
}
static double gemm_flops(void) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) return ttt_cuda_gemm_flops();
#endif
    return 0.0;
}

// what is timed: 0 predict, 1 MAE forward, 2 TTT step
typedef struct {
    Model* m;            // the TTT model (H x W)
    Model* mp;           // the prediction's (the --predict size; m itself by default)
    float* frames; float* frame_pred; unsigned char* pred; int B; OptConfig opt; Rng rng; float loss;
    int restart;         // a fresh AdamW before every step (the paper's --restart_optimizer)
} Bench;
static void run_once(Bench* b, int what) {
    if (what == 0) model_predict(b->mp, b->frame_pred, b->pred);
    else if (what == 1) b->loss = model_mae_loss(b->m, b->frames, b->B, &b->rng);
    else {
        if (b->restart) model_restart_optimizer(b->m);
        b->loss = model_ttt_step(b->m, b->frames, b->B, &b->opt, &b->rng);
    }
}

// median ms over iters after warmup calls; FLOPs per call through *flop
// TTT_PROFILE: leave the warm-up calls (first-use costs: module loading, workspaces) untimed
static void profile_pause(int paused) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) ttt_cuda_profile_pause(paused);
#else
    (void)paused;
#endif
}

static double time_calls(Bench* b, int what, int warmup, int iters, double* flop) {
    double* t = (double*)mallocCheck(iters * sizeof(double));
    profile_pause(1);
    for (int i = 0; i < warmup; i++) run_once(b, what);
    profile_pause(0);
    double f0 = gemm_flops();
    for (int i = 0; i < iters; i++) {
        ttt_synchronize();
        device_timer_start();
        run_once(b, what);
        t[i] = device_timer_stop_ms();
    }
    *flop = (gemm_flops() - f0) / iters;
    double ms = median(t, iters);
    free(t);
    return ms;
}

// per-stage device time of `iters` calls (stage timing on, graphs off), printed as ms per call
static void print_split(Bench* b, int what, int iters, const char* title, double ms_total) {
    stage_timing_enable(1);
    profile_pause(1);
    run_once(b, what);   // the first call without graphs may differ: not counted
    profile_pause(0);
    const char* names[MAX_STAGES];
    double ms[MAX_STAGES];
    stage_timing_collect(names, ms, MAX_STAGES);
    for (int i = 0; i < iters; i++) run_once(b, what);
    int n = stage_timing_collect(names, ms, MAX_STAGES);
    stage_timing_enable(0);
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += ms[i] / iters;
    printf("  split of %s (stage timing, graphs off; %.2f ms in stages, %.2f ms timed above):\n", title, sum, ms_total);
    for (int i = 0; i < n; i++)
        printf("    %-28s %9.2f ms  %5.1f%%\n", names[i], ms[i] / iters, 100.0 * ms[i] / iters / (sum > 0 ? sum : 1));
}

int main(int argc, char** argv) {
    const char* config = "swin_s";
    int pixel_decoder = PIXEL_DECODER_FPN;
    const char* device = "auto";
    int B = 1, M = 0, H = 384, W = 1248, iters = 5, warmup = 2;
    int PH = 0, PW = 0, SH = 0, SW = 0;   // predict and score sizes (0: H x W)
    const char* recipe = "demo";
    int gpus = 1;
    int precision = -1, peak_n = 8192;
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc) ttt_die("missing value after %s", argv[i]);
        const char* o = argv[i];
        const char* v = argv[i + 1];
        if (!strcmp(o, "--config")) config = v;
        else if (!strcmp(o, "--pixel-decoder")) pixel_decoder = pixel_decoder_parse(o, v);
        else if (!strcmp(o, "--batch")) B = parse_int_arg(o, v, 1);
        else if (!strcmp(o, "--micro-batch")) M = parse_int_arg(o, v, 0);
        else if (!strcmp(o, "--height")) H = parse_int_arg(o, v, 32);
        else if (!strcmp(o, "--width")) W = parse_int_arg(o, v, 32);
        else if (!strcmp(o, "--iters")) iters = parse_int_arg(o, v, 1);
        else if (!strcmp(o, "--warmup")) warmup = parse_int_arg(o, v, 0);
        else if (!strcmp(o, "--device")) device = v;
        else if (!strcmp(o, "--recipe")) recipe = v;
        else if (!strcmp(o, "--gpus")) gpus = parse_int_arg(o, v, 1);
        else if (!strcmp(o, "--peak")) peak_n = parse_int_arg(o, v, 0);
        else if (!strcmp(o, "--precision")) {
            precision = precision_parse(v);
            if (precision < 0) ttt_die("--precision: expected bf16, tf32 or fp32, got '%s'", v);
        }
        else if (!strcmp(o, "--predict") || !strcmp(o, "--score")) {
            int h, w;
            if (sscanf(v, "%dx%d", &h, &w) != 2 || h < 32 || w < 32) ttt_die("%s: expected HxW, got '%s'", o, v);
            if (!strcmp(o, "--predict")) { PH = h; PW = w; } else { SH = h; SW = w; }
        }
        else ttt_die("unknown option %s", o);
    }
    if (iters > 1000) ttt_die("--iters: at most 1000, got %d", iters);
    if (strcmp(recipe, "demo") && strcmp(recipe, "paper")) ttt_die("--recipe: demo or paper, got '%s'", recipe);
    if (PH == 0) { PH = H; PW = W; }
    if (SH == 0) { SH = PH; SW = PW; }
    if (B < gpus) ttt_die("--batch %d over --gpus %d: every GPU needs at least one image", B, gpus);
    if (peak_n > 65536) ttt_die("--peak: at most 65536, got %d", peak_n);
    if (precision >= 0) ttt_cuda_set_precision(precision);   // over TTT_PRECISION
    else ttt_cuda_precision();   // a bad TTT_PRECISION dies here
    dist_launch(gpus, device);   // --gpus N: one process per GPU from here on
    ttt_set_device(ttt_parse_device(device));
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA && peak_n > 0) {
        bf16_peak_tflops = ttt_cuda_bf16_peak_tflops(peak_n, 3, 10);
        if (is_main_rank())
            printf("bf16 dense peak (measured: %d^3 bf16 GEMMs, float32 sums, cublasGemmEx) %.1f TFLOP/s\n",
                   peak_n, bf16_peak_tflops);
    }
#endif
    int K = 19;
    ModelConfig cfg;
    if (!strcmp(config, "swin_s")) cfg = model_config_swin_s(K);
    else if (!strcmp(config, "default")) cfg = model_config_default(K);
    else if (!strcmp(config, "tiny")) cfg = model_config_tiny(K);
    else { ttt_die("unknown config '%s' (swin_s, default, tiny)", config); return 1; }
    model_config_set_pixel_decoder(&cfg, pixel_decoder);
    // the prediction model of another size is allocated after the TTT model: leave it room
    size_t reserve = (PH != H || PW != W) ? model_predict_bytes(&cfg, PH, PW) : 0;
    int per_gpu = (B + gpus - 1) / gpus;   // a GPU's share of the batch
    if (M == 0) M = model_auto_micro_batch(&cfg, per_gpu, H, W, reserve, 0);
    if (M > per_gpu) M = per_gpu;

    Bench b;
    b.m = model_create_planned(&cfg, M, 1, H, W);   // h only predicts: planned for one frame
    model_init_random(b.m, 1);
    model_snapshot_ttt(b.m);
    b.restart = !strcmp(recipe, "paper");
    if (b.restart) { ModelRecipe r = model_recipe_paper(); model_set_recipe(b.m, &r); }
    dist_attach(b.m);
    b.mp = (PH == H && PW == W) ? b.m : model_create_sharing(b.m, 1, PH, PW);
    model_set_predict_size(b.mp, SH, SW);
    printf("bench: config %s, pixel decoder %s, device %s x %d, batch %d (micro-batch %d), %d x %d, params f %.2fM h %.2fM g %.2fM\n",
           config, pixel_decoder_name(pixel_decoder), ttt_device_name(ttt_device), gpus, B, M, H, W, model_num_params(b.m, 0) / 1e6,
           model_num_params(b.m, 1) / 1e6, model_num_params(b.m, 2) / 1e6);
    rng_seed(&b.rng, 2);
    b.B = B;
    b.frames = (float*)mallocCheck((size_t)B * H * W * 3 * sizeof(float));
    rng_fill_uniform(&b.rng, b.frames, (size_t)B * H * W * 3, 0.0f, 1.0f);
    b.frame_pred = (float*)mallocCheck((size_t)PH * PW * 3 * sizeof(float));
    rng_fill_uniform(&b.rng, b.frame_pred, (size_t)PH * PW * 3, 0.0f, 1.0f);
    b.pred = (unsigned char*)mallocCheck((size_t)SH * SW);
    printf("recipe %s; TTT images %d x %d; prediction on %d x %d scored at %d x %d; matrix products %s\n",
           recipe, H, W, PH, PW, SH, SW, matmul_precision_name());
    b.opt = opt_config_ttt();
    b.loss = 0.0f;

    double flop_predict, flop_fwd, flop_step;
    double ms_predict = time_calls(&b, 0, warmup, iters, &flop_predict);
    double rate_predict = flop_predict / (ms_predict * 1e-3) / 1e12;
    printf("predict (B=1)        %9.2f ms   GEMM %7.1f GFLOP  %6.1f TFLOP/s%s\n", ms_predict,
           flop_predict / 1e9, rate_predict, peak_fraction(rate_predict));
    double ms_fwd = time_calls(&b, 1, warmup, iters, &flop_fwd);
    double rate_fwd = flop_fwd / (ms_fwd * 1e-3) / 1e12;
    printf("MAE forward (B=%d)   %9.2f ms   GEMM %7.1f GFLOP  %6.1f TFLOP/s%s\n", B, ms_fwd,
           flop_fwd / 1e9, rate_fwd, peak_fraction(rate_fwd));
    double ms_step = time_calls(&b, 2, warmup, iters, &flop_step);
    double rate_step = flop_step / (ms_step * 1e-3) / 1e12;
    printf("TTT step (B=%d)      %9.2f ms   GEMM %7.1f GFLOP  %6.1f TFLOP/s%s  (loss %.4f); per image %.2f ms\n",
           B, ms_step, flop_step / 1e9, rate_step, peak_fraction(rate_step), b.loss, ms_step / B);
    double rate_frame = (flop_step + flop_predict) / ((ms_step + ms_predict) * 1e-3) / 1e12;
    printf("frame (TTT step + predict) %9.2f ms  (%.2f frames/s; the paper's code: 4100 ms on an A100)  GEMM %6.1f TFLOP/s%s\n",
           ms_step + ms_predict, 1e3 / (ms_step + ms_predict), rate_frame, peak_fraction(rate_frame));

    double used_gib = 0.0, total_gib = 0.0;
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) {
        size_t used, total;
        ttt_cuda_memory_info(&used, &total);
        used_gib = used / 1073741824.0; total_gib = total / 1073741824.0;
        printf("device memory in use %.2f GiB of %.2f GiB (context, parameters, activations for %d, workspaces)\n",
               used_gib, total_gib, M);
        printf("linear layers by cuBLASLt with bias epilogues: %ld forward, %ld dweight+dbias calls issued from the host "
               "(graph replays not counted; default: none, TTT_LINEAR_LT=1: cuBLASLt where it can)\n", ttt_cuda_linear_lt_calls(0), ttt_cuda_linear_lt_calls(1));
    }
#endif
    int split_iters = iters < 3 ? iters : 3;
    print_split(&b, 0, split_iters, "predict", ms_predict);
    print_split(&b, 2, split_iters, "the TTT step", ms_step);
    printf("| %s%s %s | %d | %d | %dx%d | %.2f | %.2f | %.2f | %.2f | %.1f | %.2f |\n", config,
           pixel_decoder == PIXEL_DECODER_MSDEFORM ? " msdeform" : "", matmul_precision_name(), B, M, H, W, ms_predict,
           ms_fwd, ms_step, ms_step / B, rate_step, used_gib);
    if (gpus > 1)   // the scaling row: TTT step of the whole batch over the GPUs
        printf("| %s | %d GPUs | batch %d | micro-batch %d per GPU | %dx%d | TTT step %.2f ms | %.2f ms per image |\n",
               config, gpus, B, M, H, W, ms_step, ms_step / B);
    free(b.frames); free(b.frame_pred); free(b.pred);
    if (b.mp != b.m) model_free(b.mp);
    model_free(b.m);
    return 0;
}
