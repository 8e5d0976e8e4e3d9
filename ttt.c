// ttt.c: CPU reference ops, device switch, memory helpers, RNG, image IO, checkpoints.
// Every op's math is documented once, in ttt.h; this file is its CPU reference.
#include "ttt.h"
#include <stdarg.h>
#include <time.h>
#include <errno.h>
#include <sys/stat.h>
#ifdef _OPENMP
#include <omp.h>
#endif

// ----------------------------------------------------------------------------
// error checking

void ttt_die(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

FILE* fopen_check(const char* path, const char* mode, const char* file, int line) {
    FILE* fp = fopen(path, mode);
    if (fp == NULL) {
        fprintf(stderr, "error: cannot open '%s' (mode %s): %s  [%s:%d]\n",
                path, mode, strerror(errno), file, line);
        exit(1);
    }
    return fp;
}

void fread_check(void* ptr, size_t size, size_t nmemb, FILE* stream, const char* file, int line) {
    size_t got = fread(ptr, size, nmemb, stream);
    if (got != nmemb) {
        fprintf(stderr, "error: short read: wanted %zu items of %zu bytes, got %zu (%s)  [%s:%d]\n",
                nmemb, size, got, feof(stream) ? "end of file" : "read error", file, line);
        exit(1);
    }
}

void fwrite_check(const void* ptr, size_t size, size_t nmemb, FILE* stream, const char* file, int line) {
    size_t put = fwrite(ptr, size, nmemb, stream);
    if (put != nmemb) {
        fprintf(stderr, "error: short write: wanted %zu items of %zu bytes, wrote %zu: %s  [%s:%d]\n",
                nmemb, size, put, strerror(errno), file, line);
        exit(1);
    }
}

void fclose_check(FILE* fp, const char* file, int line) {
    if (fclose(fp) != 0) {
        fprintf(stderr, "error: close failed: %s  [%s:%d]\n", strerror(errno), file, line);
        exit(1);
    }
}

void* malloc_check(size_t size, const char* file, int line) {
    void* p = malloc(size > 0 ? size : 1);
    if (p == NULL) {
        fprintf(stderr, "error: out of host memory allocating %zu bytes (%.2f GiB)  [%s:%d]\n",
                size, size / 1073741824.0, file, line);
        exit(1);
    }
    return p;
}

void* calloc_check(size_t nmemb, size_t size, const char* file, int line) {
    void* p = calloc(nmemb > 0 ? nmemb : 1, size > 0 ? size : 1);
    if (p == NULL) {
        fprintf(stderr, "error: out of host memory allocating %zu x %zu bytes  [%s:%d]\n",
                nmemb, size, file, line);
        exit(1);
    }
    return p;
}

// ----------------------------------------------------------------------------
// device switch and memory helpers

Device ttt_device = DEVICE_CPU;

int ttt_cuda_available(void) {
#ifdef TTT_CUDA
    return ttt_cuda_device_count() > 0;
#else
    return 0;
#endif
}

void ttt_set_device(Device d) {
    if (d == DEVICE_CUDA && !ttt_cuda_available()) {
#ifdef TTT_CUDA
        ttt_die("--device cuda: no CUDA GPU found");
#else
        ttt_die("--device cuda: this build has no CUDA backend (nvcc was not found by make)");
#endif
    }
    ttt_device = d;
}

Device ttt_parse_device(const char* s) {
    if (strcmp(s, "cpu") == 0) return DEVICE_CPU;
    if (strcmp(s, "cuda") == 0) return DEVICE_CUDA;
    if (strcmp(s, "auto") == 0) return ttt_cuda_available() ? DEVICE_CUDA : DEVICE_CPU;
    ttt_die("unknown device '%s' (use cpu, cuda or auto)", s);
    return DEVICE_CPU;
}

const char* ttt_device_name(Device d) { return d == DEVICE_CUDA ? "cuda" : "cpu"; }

void* ttt_malloc(size_t bytes) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) return ttt_cuda_malloc(bytes);
#endif
    return mallocCheck(bytes);
}

void ttt_free(void* p) {
    if (p == NULL) return;
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { ttt_cuda_free(p); return; }
#endif
    free(p);
}

void ttt_zero(void* p, size_t bytes) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { ttt_cuda_zero(p, bytes); return; }
#endif
    memset(p, 0, bytes);
}

void ttt_copy(void* dst, const void* src, size_t bytes) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { ttt_cuda_copy(dst, src, bytes, 0); return; }
#endif
    memmove(dst, src, bytes);
}

void ttt_to_device(void* dst, const void* src, size_t bytes) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { ttt_cuda_copy(dst, src, bytes, 1); return; }
#endif
    memmove(dst, src, bytes);
}

void ttt_to_host(void* dst, const void* src, size_t bytes) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { ttt_cuda_copy(dst, src, bytes, 2); return; }
#endif
    memmove(dst, src, bytes);
}

void ttt_synchronize(void) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) ttt_cuda_synchronize();
#endif
}

// ----------------------------------------------------------------------------
// random numbers: xorshift64* (Vigna), seeded through splitmix64

void rng_seed(Rng* rng, uint64_t seed) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z = z ^ (z >> 31);
    rng->state = z ? z : 0x2545F4914F6CDD1DULL;
}

uint32_t rng_u32(Rng* rng) {
    rng->state ^= rng->state >> 12;
    rng->state ^= rng->state << 25;
    rng->state ^= rng->state >> 27;
    return (uint32_t)((rng->state * 0x2545F4914F6CDD1DULL) >> 32);
}

float rng_uniform(Rng* rng) { return (rng_u32(rng) >> 8) / 16777216.0f; }

float rng_normal(Rng* rng) {
    float u1 = rng_uniform(rng), u2 = rng_uniform(rng);
    if (u1 < 1e-7f) u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307179586f * u2);
}

int rng_int(Rng* rng, int n) { return (int)(rng_u32(rng) % (uint32_t)n); }

void rng_fill_uniform(Rng* rng, float* x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * rng_uniform(rng);
}

void rng_fill_normal(Rng* rng, float* x, size_t n, float mean, float std) {
    for (size_t i = 0; i < n; i++) x[i] = mean + std * rng_normal(rng);
}

// ----------------------------------------------------------------------------
// small utilities

double time_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int is_finite_array(const float* x, size_t n) {
    for (size_t i = 0; i < n; i++) if (!isfinite(x[i])) return 0;
    return 1;
}

// ============================================================================
// OPS PART A: elementwise, linear, layernorm, groupnorm, activations, softmax,
// attention, conv2d  (CPU references)
// ============================================================================

// (part A goes here)

// ============================================================================
// end of OPS PART A
// ============================================================================


// ============================================================================
// OPS PART B: window partition/reverse, patch merge, upsampling, point sample,
// sine position encoding, losses, AdamW, sum of squares  (CPU references)
// ============================================================================

// (part B goes here)

// ============================================================================
// end of OPS PART B
// ============================================================================


// ============================================================================
// OPS PART C: ops of the MAE head and the Y model (patch masking, input
// normalisation, ...)  (CPU references)
// ============================================================================

// (part C goes here)

// ============================================================================
// end of OPS PART C
// ============================================================================


// ============================================================================
// IMAGE IO
// ============================================================================

// (image IO goes here)

// ============================================================================
// end of IMAGE IO
// ============================================================================


// ============================================================================
// CHECKPOINTS
// ============================================================================

// (checkpoints go here)

// ============================================================================
// end of CHECKPOINTS
// ============================================================================


// ----------------------------------------------------------------------------
// dispatchers: one per op, run the _cuda twin when ttt_device is DEVICE_CUDA

void add_forward(float* out, const float* a, const float* b, size_t N) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { add_forward_cuda(out, a, b, N); return; }
#endif
    add_forward_cpu(out, a, b, N);
}

void add_inplace(float* a, const float* b, size_t N) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { add_inplace_cuda(a, b, N); return; }
#endif
    add_inplace_cpu(a, b, N);
}

void scale_inplace(float* x, float s, size_t N) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { scale_inplace_cuda(x, s, N); return; }
#endif
    scale_inplace_cpu(x, s, N);
}

void linear_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { linear_forward_cuda(out, inp, weight, bias, N, C, OC); return; }
#endif
    linear_forward_cpu(out, inp, weight, bias, N, C, OC);
}

void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, int N, int C, int OC) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { linear_backward_cuda(dinp, dweight, dbias, dout, inp, weight, N, C, OC); return; }
#endif
    linear_backward_cpu(dinp, dweight, dbias, dout, inp, weight, N, C, OC);
}

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias, int N, int C) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { layernorm_forward_cuda(out, mean, rstd, inp, weight, bias, N, C); return; }
#endif
    layernorm_forward_cpu(out, mean, rstd, inp, weight, bias, N, C);
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, const float* mean, const float* rstd, int N, int C) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { layernorm_backward_cuda(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C); return; }
#endif
    layernorm_backward_cpu(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
}

void groupnorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias, int B, int HW, int C, int G) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { groupnorm_forward_cuda(out, mean, rstd, inp, weight, bias, B, HW, C, G); return; }
#endif
    groupnorm_forward_cpu(out, mean, rstd, inp, weight, bias, B, HW, C, G);
}

void groupnorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, const float* mean, const float* rstd, int B, int HW, int C, int G) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { groupnorm_backward_cuda(dinp, dweight, dbias, dout, inp, weight, mean, rstd, B, HW, C, G); return; }
#endif
    groupnorm_backward_cpu(dinp, dweight, dbias, dout, inp, weight, mean, rstd, B, HW, C, G);
}

void gelu_forward(float* out, const float* inp, size_t N) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { gelu_forward_cuda(out, inp, N); return; }
#endif
    gelu_forward_cpu(out, inp, N);
}

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t N) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { gelu_backward_cuda(dinp, inp, dout, N); return; }
#endif
    gelu_backward_cpu(dinp, inp, dout, N);
}

void relu_forward(float* out, const float* inp, size_t N) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { relu_forward_cuda(out, inp, N); return; }
#endif
    relu_forward_cpu(out, inp, N);
}

void relu_backward(float* dinp, const float* out, const float* dout, size_t N) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { relu_backward_cuda(dinp, out, dout, N); return; }
#endif
    relu_backward_cpu(dinp, out, dout, N);
}

void sigmoid_forward(float* out, const float* inp, size_t N) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { sigmoid_forward_cuda(out, inp, N); return; }
#endif
    sigmoid_forward_cpu(out, inp, N);
}

void sigmoid_backward(float* dinp, const float* out, const float* dout, size_t N) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { sigmoid_backward_cuda(dinp, out, dout, N); return; }
#endif
    sigmoid_backward_cpu(dinp, out, dout, N);
}

void softmax_forward(float* out, const float* inp, int N, int C) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { softmax_forward_cuda(out, inp, N, C); return; }
#endif
    softmax_forward_cpu(out, inp, N, C);
}

void softmax_backward(float* dinp, const float* out, const float* dout, int N, int C) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { softmax_backward_cuda(dinp, out, dout, N, C); return; }
#endif
    softmax_backward_cpu(dinp, out, dout, N, C);
}

void attention_forward(float* out, float* att, const float* q, const float* k, const float* v, const float* rel_bias, const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { attention_forward_cuda(out, att, q, k, v, rel_bias, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride); return; }
#endif
    attention_forward_cpu(out, att, q, k, v, rel_bias, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride);
}

void attention_backward(float* dq, float* dk, float* dv, float* drel_bias, const float* dout, const float* att, const float* q, const float* k, const float* v, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { attention_backward_cuda(dq, dk, dv, drel_bias, dout, att, q, k, v, B, Tq, Tk, NH, HS, q_stride, kv_stride); return; }
#endif
    attention_backward_cpu(dq, dk, dv, drel_bias, dout, att, q, k, v, B, Tq, Tk, NH, HS, q_stride, kv_stride);
}

void window_partition_forward(float* out, const float* inp, int B, int H, int W, int C, int ws, int shift) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { window_partition_forward_cuda(out, inp, B, H, W, C, ws, shift); return; }
#endif
    window_partition_forward_cpu(out, inp, B, H, W, C, ws, shift);
}

void window_partition_backward(float* dinp, const float* dout, int B, int H, int W, int C, int ws, int shift) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { window_partition_backward_cuda(dinp, dout, B, H, W, C, ws, shift); return; }
#endif
    window_partition_backward_cpu(dinp, dout, B, H, W, C, ws, shift);
}

void window_reverse_forward(float* out, const float* inp, int B, int H, int W, int C, int ws, int shift) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { window_reverse_forward_cuda(out, inp, B, H, W, C, ws, shift); return; }
#endif
    window_reverse_forward_cpu(out, inp, B, H, W, C, ws, shift);
}

void window_reverse_backward(float* dinp, const float* dout, int B, int H, int W, int C, int ws, int shift) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { window_reverse_backward_cuda(dinp, dout, B, H, W, C, ws, shift); return; }
#endif
    window_reverse_backward_cpu(dinp, dout, B, H, W, C, ws, shift);
}

void patch_merge_forward(float* out, const float* inp, int B, int H, int W, int C) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { patch_merge_forward_cuda(out, inp, B, H, W, C); return; }
#endif
    patch_merge_forward_cpu(out, inp, B, H, W, C);
}

void patch_merge_backward(float* dinp, const float* dout, int B, int H, int W, int C) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { patch_merge_backward_cuda(dinp, dout, B, H, W, C); return; }
#endif
    patch_merge_backward_cpu(dinp, dout, B, H, W, C);
}

void conv2d_forward(float* out, const float* inp, const float* weight, const float* bias, int B, int H, int W, int C, int OC, int K, int stride, int pad, int Ho, int Wo) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { conv2d_forward_cuda(out, inp, weight, bias, B, H, W, C, OC, K, stride, pad, Ho, Wo); return; }
#endif
    conv2d_forward_cpu(out, inp, weight, bias, B, H, W, C, OC, K, stride, pad, Ho, Wo);
}

void conv2d_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, int B, int H, int W, int C, int OC, int K, int stride, int pad, int Ho, int Wo) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { conv2d_backward_cuda(dinp, dweight, dbias, dout, inp, weight, B, H, W, C, OC, K, stride, pad, Ho, Wo); return; }
#endif
    conv2d_backward_cpu(dinp, dweight, dbias, dout, inp, weight, B, H, W, C, OC, K, stride, pad, Ho, Wo);
}

void upsample_nearest_forward(float* out, const float* inp, int B, int H, int W, int C, int Ho, int Wo) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { upsample_nearest_forward_cuda(out, inp, B, H, W, C, Ho, Wo); return; }
#endif
    upsample_nearest_forward_cpu(out, inp, B, H, W, C, Ho, Wo);
}

void upsample_nearest_backward(float* dinp, const float* dout, int B, int H, int W, int C, int Ho, int Wo) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { upsample_nearest_backward_cuda(dinp, dout, B, H, W, C, Ho, Wo); return; }
#endif
    upsample_nearest_backward_cpu(dinp, dout, B, H, W, C, Ho, Wo);
}

void upsample_bilinear_forward(float* out, const float* inp, int B, int H, int W, int C, int Ho, int Wo) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { upsample_bilinear_forward_cuda(out, inp, B, H, W, C, Ho, Wo); return; }
#endif
    upsample_bilinear_forward_cpu(out, inp, B, H, W, C, Ho, Wo);
}

void upsample_bilinear_backward(float* dinp, const float* dout, int B, int H, int W, int C, int Ho, int Wo) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { upsample_bilinear_backward_cuda(dinp, dout, B, H, W, C, Ho, Wo); return; }
#endif
    upsample_bilinear_backward_cpu(dinp, dout, B, H, W, C, Ho, Wo);
}

void point_sample_forward(float* out, const float* inp, const float* coords, int M, int H, int W, int P) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { point_sample_forward_cuda(out, inp, coords, M, H, W, P); return; }
#endif
    point_sample_forward_cpu(out, inp, coords, M, H, W, P);
}

void point_sample_backward(float* dinp, const float* dout, const float* coords, int M, int H, int W, int P) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { point_sample_backward_cuda(dinp, dout, coords, M, H, W, P); return; }
#endif
    point_sample_backward_cpu(dinp, dout, coords, M, H, W, P);
}

void sine_position_encoding(float* out, int H, int W, int C) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { sine_position_encoding_cuda(out, H, W, C); return; }
#endif
    sine_position_encoding_cpu(out, H, W, C);
}

void masked_mse_forward(float* loss, const float* pred, const float* target, const float* mask, int N, int C) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { masked_mse_forward_cuda(loss, pred, target, mask, N, C); return; }
#endif
    masked_mse_forward_cpu(loss, pred, target, mask, N, C);
}

void masked_mse_backward(float* dpred, float dloss, const float* pred, const float* target, const float* mask, int N, int C) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { masked_mse_backward_cuda(dpred, dloss, pred, target, mask, N, C); return; }
#endif
    masked_mse_backward_cpu(dpred, dloss, pred, target, mask, N, C);
}

void cross_entropy_forward(float* loss, const float* logits, const int* targets, const float* class_weight, int N, int C, int ignore_index) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { cross_entropy_forward_cuda(loss, logits, targets, class_weight, N, C, ignore_index); return; }
#endif
    cross_entropy_forward_cpu(loss, logits, targets, class_weight, N, C, ignore_index);
}

void cross_entropy_backward(float* dlogits, float dloss, const float* logits, const int* targets, const float* class_weight, int N, int C, int ignore_index) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { cross_entropy_backward_cuda(dlogits, dloss, logits, targets, class_weight, N, C, ignore_index); return; }
#endif
    cross_entropy_backward_cpu(dlogits, dloss, logits, targets, class_weight, N, C, ignore_index);
}

void sigmoid_bce_forward(float* losses, const float* logits, const float* targets, int M, int P) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { sigmoid_bce_forward_cuda(losses, logits, targets, M, P); return; }
#endif
    sigmoid_bce_forward_cpu(losses, logits, targets, M, P);
}

void sigmoid_bce_backward(float* dlogits, const float* dlosses, const float* logits, const float* targets, int M, int P) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { sigmoid_bce_backward_cuda(dlogits, dlosses, logits, targets, M, P); return; }
#endif
    sigmoid_bce_backward_cpu(dlogits, dlosses, logits, targets, M, P);
}

void dice_loss_forward(float* losses, const float* logits, const float* targets, int M, int P) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { dice_loss_forward_cuda(losses, logits, targets, M, P); return; }
#endif
    dice_loss_forward_cpu(losses, logits, targets, M, P);
}

void dice_loss_backward(float* dlogits, const float* dlosses, const float* logits, const float* targets, int M, int P) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { dice_loss_backward_cuda(dlogits, dlosses, logits, targets, M, P); return; }
#endif
    dice_loss_backward_cpu(dlogits, dlosses, logits, targets, M, P);
}

void adamw_update(float* params, const float* grads, float* m, float* v, size_t N, float lr, float beta1, float beta2, float eps, float weight_decay, int t) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { adamw_update_cuda(params, grads, m, v, N, lr, beta1, beta2, eps, weight_decay, t); return; }
#endif
    adamw_update_cpu(params, grads, m, v, N, lr, beta1, beta2, eps, weight_decay, t);
}

void sum_squares(float* out, const float* x, size_t N) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { sum_squares_cuda(out, x, N); return; }
#endif
    sum_squares_cpu(out, x, N);
}
