// dispatch.c: where the work runs. One dispatcher per op of ttt.h: `name` calls `name_cuda`
// (ttt_kernels.cu) when the device is the GPU, else `name_cpu` (ttt.c); the device switch and
// the memory helpers, CUDA graphs and timers on the same pattern. Nothing here computes.
#include "ttt.h"

Device ttt_device = DEVICE_CPU;

// 1 when ops run on the GPU. A build without CUDA has no _cuda twins (ttt.h declares them weak
// there): it never takes the GPU branch.
#ifdef TTT_CUDA
static int on_gpu(void) { return ttt_device == DEVICE_CUDA; }
#else
static int on_gpu(void) { return 0; }
#endif

// ----------------------------------------------------------------------------
// device switch and memory helpers

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
    if (on_gpu()) return ttt_cuda_malloc(bytes);
    return mallocCheck(bytes);
}

void ttt_free(void* p) {
    if (p == NULL) return;
    if (on_gpu()) ttt_cuda_free(p);
    else free(p);
}

void ttt_zero(void* p, size_t bytes) {
    if (on_gpu()) ttt_cuda_zero(p, bytes);
    else memset(p, 0, bytes);
}

void ttt_copy(void* dst, const void* src, size_t bytes) {
    if (on_gpu()) ttt_cuda_copy(dst, src, bytes, 0);
    else memmove(dst, src, bytes);
}

void ttt_to_device(void* dst, const void* src, size_t bytes) {
    if (on_gpu()) ttt_cuda_copy(dst, src, bytes, 1);
    else memmove(dst, src, bytes);
}

void ttt_to_host(void* dst, const void* src, size_t bytes) {
    if (on_gpu()) ttt_cuda_copy(dst, src, bytes, 2);
    else memmove(dst, src, bytes);
}

void ttt_synchronize(void) {
    if (on_gpu()) ttt_cuda_synchronize();
}

int device_graph_replay(DeviceGraph* g) {
    if (on_gpu()) return ttt_cuda_graph_replay(g);
    return 0;
}

void device_graph_begin(DeviceGraph* g) {
    if (on_gpu()) ttt_cuda_graph_begin(g);
}

void device_graph_end(DeviceGraph* g) {
    if (on_gpu()) ttt_cuda_graph_end(g);
}

void device_graph_free(DeviceGraph* g) {
    if (g->exec) ttt_cuda_graph_free(g);   // only ever set on the GPU
    memset(g, 0, sizeof(*g));
}

// ----------------------------------------------------------------------------
// stage timing: each mark closes the open interval and opens one for the next name; the
// intervals are folded into per-name totals when collected (one event pair per interval)
static int stage_on = 0;
static const char* stage_names[MAX_STAGES];
static double stage_ms[MAX_STAGES];
static int stage_n = 0;
static int stage_open = -1;                 // pending slot of the open interval, or -1
static int stage_pending_name[STAGE_MAX_PENDING];
static double stage_host_start[STAGE_MAX_PENDING], stage_host_ms[STAGE_MAX_PENDING];
static int stage_npending = 0;

void stage_timing_enable(int on) { stage_on = on != 0; }
int stage_timing_enabled(void) { return stage_on; }

static void stage_fold(void) {
    for (int i = 0; i < stage_npending; i++) {
        double ms = stage_host_ms[i];
        if (on_gpu()) ms = ttt_cuda_stage_elapsed(i);
        stage_ms[stage_pending_name[i]] += ms;
    }
    stage_npending = 0;
}

static void stage_end_open(void) {
    if (stage_open < 0) return;
    if (on_gpu()) ttt_cuda_stage_record(stage_open, 1);
    stage_host_ms[stage_open] = (time_now_seconds() - stage_host_start[stage_open]) * 1e3;
    stage_open = -1;
}

void stage_begin(const char* name) {
    if (!stage_on) return;
    stage_end_open();
    if (name == NULL) return;
    int k = 0;
    while (k < stage_n && strcmp(stage_names[k], name) != 0) k++;
    if (k == stage_n) {
        if (stage_n == MAX_STAGES) ttt_die("stage timing: more than %d stage names", MAX_STAGES);
        stage_names[stage_n] = name;
        stage_ms[stage_n++] = 0.0;
    }
    if (stage_npending == STAGE_MAX_PENDING) stage_fold();
    int slot = stage_npending++;
    stage_pending_name[slot] = k;
    if (on_gpu()) ttt_cuda_stage_record(slot, 0);
    stage_host_start[slot] = time_now_seconds();
    stage_open = slot;
}

const char* stage_current(void) {
    return (stage_on && stage_open >= 0) ? stage_names[stage_pending_name[stage_open]] : NULL;
}

static double device_timer_t0;
void device_timer_start(void) {
    if (on_gpu()) ttt_cuda_timer_start();
    else device_timer_t0 = time_now_seconds();
}
double device_timer_stop_ms(void) {
    if (on_gpu()) return ttt_cuda_timer_stop_ms();
    return (time_now_seconds() - device_timer_t0) * 1e3;
}

int stage_timing_collect(const char** names, double* ms, int max) {
    stage_end_open();
    stage_fold();
    int n = stage_n < max ? stage_n : max;
    for (int i = 0; i < n; i++) { names[i] = stage_names[i]; ms[i] = stage_ms[i]; }
    stage_n = 0;
    return n;
}

// ----------------------------------------------------------------------------
// dispatchers: one per op, run the _cuda twin when ttt_device is DEVICE_CUDA

void add_forward(float* out, const float* a, const float* b, size_t N) {
    if (on_gpu()) add_forward_cuda(out, a, b, N);
    else add_forward_cpu(out, a, b, N);
}

void add_inplace(float* a, const float* b, size_t N) {
    if (on_gpu()) add_inplace_cuda(a, b, N);
    else add_inplace_cpu(a, b, N);
}

void scale_inplace(float* x, float s, size_t N) {
    if (on_gpu()) scale_inplace_cuda(x, s, N);
    else scale_inplace_cpu(x, s, N);
}

void scale_rows_forward(float* out, const float* inp, const float* scale, int B, size_t N) {
    if (on_gpu()) scale_rows_forward_cuda(out, inp, scale, B, N);
    else scale_rows_forward_cpu(out, inp, scale, B, N);
}

void scale_rows_backward(float* dinp, const float* dout, const float* scale, int B, size_t N) {
    if (on_gpu()) scale_rows_backward_cuda(dinp, dout, scale, B, N);
    else scale_rows_backward_cpu(dinp, dout, scale, B, N);
}

void linear_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC) {
    if (on_gpu()) linear_forward_cuda(out, inp, weight, bias, N, C, OC);
    else linear_forward_cpu(out, inp, weight, bias, N, C, OC);
}

void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, int N, int C, int OC) {
    if (on_gpu()) linear_backward_cuda(dinp, dweight, dbias, dout, inp, weight, N, C, OC);
    else linear_backward_cpu(dinp, dweight, dbias, dout, inp, weight, N, C, OC);
}

void linear_backward_write(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, int N, int C, int OC) {
    if (on_gpu()) linear_backward_write_cuda(dinp, dweight, dbias, dout, inp, weight, N, C, OC);
    else linear_backward_write_cpu(dinp, dweight, dbias, dout, inp, weight, N, C, OC);
}

void mlp_forward(float* out, float* pre, float* hidden, const float* x, const float* w1, const float* b1,
                 const float* w2, const float* b2, int N, int C, int Ch) {
    if (on_gpu()) mlp_forward_cuda(out, pre, hidden, x, w1, b1, w2, b2, N, C, Ch);
    else mlp_forward_cpu(out, pre, hidden, x, w1, b1, w2, b2, N, C, Ch);
}

void mlp_backward(float* dx, float* dw1, float* db1, float* dw2, float* db2, float* dhidden, float* hidden,
                  const float* dout, const float* pre, const float* x, const float* w1, const float* b1,
                  const float* w2, int N, int C, int Ch) {
    if (on_gpu()) mlp_backward_cuda(dx, dw1, db1, dw2, db2, dhidden, hidden, dout, pre, x, w1, b1, w2, N, C, Ch);
    else mlp_backward_cpu(dx, dw1, db1, dw2, db2, dhidden, hidden, dout, pre, x, w1, b1, w2, N, C, Ch);
}

void qkv_window_attention_forward(float* out, float* lse, float* qkv, const float* x, const float* w,
                                  const float* b, const float* rel_bias, const float* mask, int n_mask,
                                  int B, int T, int NH, int HS) {
    if (on_gpu()) qkv_window_attention_forward_cuda(out, lse, qkv, x, w, b, rel_bias, mask, n_mask, B, T, NH, HS);
    else qkv_window_attention_forward_cpu(out, lse, qkv, x, w, b, rel_bias, mask, n_mask, B, T, NH, HS);
}

void qkv_window_attention_backward(float* dx, float* dw, float* db, float* drel_bias, float* dqkv,
                                   const float* dout, const float* out, const float* lse, const float* qkv,
                                   const float* x, const float* w, const float* b, const float* rel_bias,
                                   const float* mask, int n_mask, int B, int T, int NH, int HS) {
    if (on_gpu())
        qkv_window_attention_backward_cuda(dx, dw, db, drel_bias, dqkv, dout, out, lse, qkv, x, w, b, rel_bias,
                                           mask, n_mask, B, T, NH, HS);
    else
        qkv_window_attention_backward_cpu(dx, dw, db, drel_bias, dqkv, dout, out, lse, qkv, x, w, b, rel_bias,
                                          mask, n_mask, B, T, NH, HS);
}

// LN Adapt (mae.c): while a hook is set, it runs every LayerNorm in place of the op
LayerNormHook layernorm_forward_hook = NULL;
void* layernorm_forward_hook_ctx = NULL;

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias, int N, int C) {
    if (layernorm_forward_hook) { layernorm_forward_hook(layernorm_forward_hook_ctx, out, mean, rstd, inp, weight, bias, N, C); return; }
    if (on_gpu()) layernorm_forward_cuda(out, mean, rstd, inp, weight, bias, N, C);
    else layernorm_forward_cpu(out, mean, rstd, inp, weight, bias, N, C);
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, const float* mean, const float* rstd, int N, int C) {
    if (on_gpu()) layernorm_backward_cuda(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
    else layernorm_backward_cpu(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
}

void groupnorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias, int B, int HW, int C, int G) {
    if (on_gpu()) groupnorm_forward_cuda(out, mean, rstd, inp, weight, bias, B, HW, C, G);
    else groupnorm_forward_cpu(out, mean, rstd, inp, weight, bias, B, HW, C, G);
}

void groupnorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, const float* mean, const float* rstd, int B, int HW, int C, int G) {
    if (on_gpu()) groupnorm_backward_cuda(dinp, dweight, dbias, dout, inp, weight, mean, rstd, B, HW, C, G);
    else groupnorm_backward_cpu(dinp, dweight, dbias, dout, inp, weight, mean, rstd, B, HW, C, G);
}

void gelu_forward(float* out, const float* inp, size_t N) {
    if (on_gpu()) gelu_forward_cuda(out, inp, N);
    else gelu_forward_cpu(out, inp, N);
}

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t N) {
    if (on_gpu()) gelu_backward_cuda(dinp, inp, dout, N);
    else gelu_backward_cpu(dinp, inp, dout, N);
}

void relu_forward(float* out, const float* inp, size_t N) {
    if (on_gpu()) relu_forward_cuda(out, inp, N);
    else relu_forward_cpu(out, inp, N);
}

void relu_backward(float* dinp, const float* out, const float* dout, size_t N) {
    if (on_gpu()) relu_backward_cuda(dinp, out, dout, N);
    else relu_backward_cpu(dinp, out, dout, N);
}

void sigmoid_forward(float* out, const float* inp, size_t N) {
    if (on_gpu()) sigmoid_forward_cuda(out, inp, N);
    else sigmoid_forward_cpu(out, inp, N);
}

void sigmoid_backward(float* dinp, const float* out, const float* dout, size_t N) {
    if (on_gpu()) sigmoid_backward_cuda(dinp, out, dout, N);
    else sigmoid_backward_cpu(dinp, out, dout, N);
}

void softmax_forward(float* out, const float* inp, int N, int C) {
    if (on_gpu()) softmax_forward_cuda(out, inp, N, C);
    else softmax_forward_cpu(out, inp, N, C);
}

void softmax_backward(float* dinp, const float* out, const float* dout, int N, int C) {
    if (on_gpu()) softmax_backward_cuda(dinp, out, dout, N, C);
    else softmax_backward_cpu(dinp, out, dout, N, C);
}

void attention_forward(float* out, float* att, const float* q, const float* k, const float* v, const float* rel_bias, const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride) {
    if (on_gpu()) attention_forward_cuda(out, att, q, k, v, rel_bias, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride);
    else attention_forward_cpu(out, att, q, k, v, rel_bias, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride);
}

void attention_backward(float* dq, float* dk, float* dv, float* drel_bias, const float* dout, const float* att, const float* q, const float* k, const float* v, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride) {
    if (on_gpu()) attention_backward_cuda(dq, dk, dv, drel_bias, dout, att, q, k, v, B, Tq, Tk, NH, HS, q_stride, kv_stride);
    else attention_backward_cpu(dq, dk, dv, drel_bias, dout, att, q, k, v, B, Tq, Tk, NH, HS, q_stride, kv_stride);
}

void window_attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, const float* rel_bias, const float* mask, int n_mask, int B, int T, int NH, int HS, int q_stride, int kv_stride) {
    if (on_gpu()) window_attention_forward_cuda(out, lse, q, k, v, rel_bias, mask, n_mask, B, T, NH, HS, q_stride, kv_stride);
    else window_attention_forward_cpu(out, lse, q, k, v, rel_bias, mask, n_mask, B, T, NH, HS, q_stride, kv_stride);
}

void window_attention_backward(float* dq, float* dk, float* dv, float* drel_bias, const float* dout, const float* out, const float* lse, const float* q, const float* k, const float* v, const float* rel_bias, const float* mask, int n_mask, int B, int T, int NH, int HS, int q_stride, int kv_stride) {
    if (on_gpu()) window_attention_backward_cuda(dq, dk, dv, drel_bias, dout, out, lse, q, k, v, rel_bias, mask, n_mask, B, T, NH, HS, q_stride, kv_stride);
    else window_attention_backward_cpu(dq, dk, dv, drel_bias, dout, out, lse, q, k, v, rel_bias, mask, n_mask, B, T, NH, HS, q_stride, kv_stride);
}

void flash_attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride) {
    if (on_gpu()) flash_attention_forward_cuda(out, lse, q, k, v, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride);
    else flash_attention_forward_cpu(out, lse, q, k, v, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride);
}

void flash_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse, const float* q, const float* k, const float* v, const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride) {
    if (on_gpu()) flash_attention_backward_cuda(dq, dk, dv, dout, out, lse, q, k, v, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride);
    else flash_attention_backward_cpu(dq, dk, dv, dout, out, lse, q, k, v, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride);
}

void bias_gather_forward(float* out, const float* table, const int* index, int N, int NH) {
    if (on_gpu()) bias_gather_forward_cuda(out, table, index, N, NH);
    else bias_gather_forward_cpu(out, table, index, N, NH);
}

void bias_gather_backward(float* dtable, const float* dout, const int* index, int N, int NH) {
    if (on_gpu()) bias_gather_backward_cuda(dtable, dout, index, N, NH);
    else bias_gather_backward_cpu(dtable, dout, index, N, NH);
}

void window_partition_forward(float* out, const float* inp, int B, int H, int W, int C, int ws, int shift) {
    if (on_gpu()) window_partition_forward_cuda(out, inp, B, H, W, C, ws, shift);
    else window_partition_forward_cpu(out, inp, B, H, W, C, ws, shift);
}

void window_partition_backward(float* dinp, const float* dout, int B, int H, int W, int C, int ws, int shift) {
    if (on_gpu()) window_partition_backward_cuda(dinp, dout, B, H, W, C, ws, shift);
    else window_partition_backward_cpu(dinp, dout, B, H, W, C, ws, shift);
}

void window_reverse_forward(float* out, const float* inp, int B, int H, int W, int C, int ws, int shift) {
    if (on_gpu()) window_reverse_forward_cuda(out, inp, B, H, W, C, ws, shift);
    else window_reverse_forward_cpu(out, inp, B, H, W, C, ws, shift);
}

void window_reverse_backward(float* dinp, const float* dout, int B, int H, int W, int C, int ws, int shift) {
    if (on_gpu()) window_reverse_backward_cuda(dinp, dout, B, H, W, C, ws, shift);
    else window_reverse_backward_cpu(dinp, dout, B, H, W, C, ws, shift);
}

// Swin block fusions
void layernorm_partition_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias, int B, int H, int W, int C, int ws, int shift) {
    if (on_gpu()) layernorm_partition_forward_cuda(out, mean, rstd, inp, weight, bias, B, H, W, C, ws, shift);
    else layernorm_partition_forward_cpu(out, mean, rstd, inp, weight, bias, B, H, W, C, ws, shift);
}

void layernorm_partition_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, const float* mean, const float* rstd, int B, int H, int W, int C, int ws, int shift) {
    if (on_gpu()) layernorm_partition_backward_cuda(dinp, dweight, dbias, dout, inp, weight, mean, rstd, B, H, W, C, ws, shift);
    else layernorm_partition_backward_cpu(dinp, dweight, dbias, dout, inp, weight, mean, rstd, B, H, W, C, ws, shift);
}

void window_reverse_residual_forward(float* out, const float* inp, const float* bias, const float* residual, const float* scale, int B, int H, int W, int C, int ws, int shift) {
    if (on_gpu()) window_reverse_residual_forward_cuda(out, inp, bias, residual, scale, B, H, W, C, ws, shift);
    else window_reverse_residual_forward_cpu(out, inp, bias, residual, scale, B, H, W, C, ws, shift);
}

void window_reverse_residual_backward(float* dresidual, float* dinp, const float* dout, const float* scale, int B, int H, int W, int C, int ws, int shift) {
    if (on_gpu()) window_reverse_residual_backward_cuda(dresidual, dinp, dout, scale, B, H, W, C, ws, shift);
    else window_reverse_residual_backward_cpu(dresidual, dinp, dout, scale, B, H, W, C, ws, shift);
}

void layernorm_apply(float* out, const float* inp, const float* mean, const float* rstd, const float* weight, const float* bias, int N, int C) {
    if (on_gpu()) layernorm_apply_cuda(out, inp, mean, rstd, weight, bias, N, C);
    else layernorm_apply_cpu(out, inp, mean, rstd, weight, bias, N, C);
}

void scale_rows_add_forward(float* out, const float* inp, const float* residual, const float* scale, int B, size_t N) {
    if (on_gpu()) scale_rows_add_forward_cuda(out, inp, residual, scale, B, N);
    else scale_rows_add_forward_cpu(out, inp, residual, scale, B, N);
}

void scale_rows_add_backward(float* dinp, float* dresidual, const float* dout, const float* scale, int B, size_t N) {
    if (on_gpu()) scale_rows_add_backward_cuda(dinp, dresidual, dout, scale, B, N);
    else scale_rows_add_backward_cpu(dinp, dresidual, dout, scale, B, N);
}

void patch_merge_forward(float* out, const float* inp, int B, int H, int W, int C) {
    if (on_gpu()) patch_merge_forward_cuda(out, inp, B, H, W, C);
    else patch_merge_forward_cpu(out, inp, B, H, W, C);
}

void patch_merge_backward(float* dinp, const float* dout, int B, int H, int W, int C) {
    if (on_gpu()) patch_merge_backward_cuda(dinp, dout, B, H, W, C);
    else patch_merge_backward_cpu(dinp, dout, B, H, W, C);
}

void conv2d_forward(float* out, const float* inp, const float* weight, const float* bias, int B, int H, int W, int C, int OC, int K, int stride, int pad, int Ho, int Wo) {
    if (on_gpu()) conv2d_forward_cuda(out, inp, weight, bias, B, H, W, C, OC, K, stride, pad, Ho, Wo);
    else conv2d_forward_cpu(out, inp, weight, bias, B, H, W, C, OC, K, stride, pad, Ho, Wo);
}

void conv2d_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, int B, int H, int W, int C, int OC, int K, int stride, int pad, int Ho, int Wo) {
    if (on_gpu()) conv2d_backward_cuda(dinp, dweight, dbias, dout, inp, weight, B, H, W, C, OC, K, stride, pad, Ho, Wo);
    else conv2d_backward_cpu(dinp, dweight, dbias, dout, inp, weight, B, H, W, C, OC, K, stride, pad, Ho, Wo);
}

void upsample_nearest_forward(float* out, const float* inp, int B, int H, int W, int C, int Ho, int Wo) {
    if (on_gpu()) upsample_nearest_forward_cuda(out, inp, B, H, W, C, Ho, Wo);
    else upsample_nearest_forward_cpu(out, inp, B, H, W, C, Ho, Wo);
}

void upsample_nearest_backward(float* dinp, const float* dout, int B, int H, int W, int C, int Ho, int Wo) {
    if (on_gpu()) upsample_nearest_backward_cuda(dinp, dout, B, H, W, C, Ho, Wo);
    else upsample_nearest_backward_cpu(dinp, dout, B, H, W, C, Ho, Wo);
}

void upsample_bilinear_forward(float* out, const float* inp, int B, int H, int W, int C, int Ho, int Wo) {
    if (on_gpu()) upsample_bilinear_forward_cuda(out, inp, B, H, W, C, Ho, Wo);
    else upsample_bilinear_forward_cpu(out, inp, B, H, W, C, Ho, Wo);
}

void upsample_bilinear_backward(float* dinp, const float* dout, int B, int H, int W, int C, int Ho, int Wo) {
    if (on_gpu()) upsample_bilinear_backward_cuda(dinp, dout, B, H, W, C, Ho, Wo);
    else upsample_bilinear_backward_cpu(dinp, dout, B, H, W, C, Ho, Wo);
}

void point_sample_forward(float* out, const float* inp, const float* coords, int M, int H, int W, int P) {
    if (on_gpu()) point_sample_forward_cuda(out, inp, coords, M, H, W, P);
    else point_sample_forward_cpu(out, inp, coords, M, H, W, P);
}

void point_sample_backward(float* dinp, const float* dout, const float* coords, int M, int H, int W, int P) {
    if (on_gpu()) point_sample_backward_cuda(dinp, dout, coords, M, H, W, P);
    else point_sample_backward_cpu(dinp, dout, coords, M, H, W, P);
}

void sine_position_encoding(float* out, int H, int W, int C) {
    if (on_gpu()) sine_position_encoding_cuda(out, H, W, C);
    else sine_position_encoding_cpu(out, H, W, C);
}

void ms_deform_attn_forward(float* out, const float* value, const int* shapes, const float* loc, const float* aw, int B, int S, int Lq, int NH, int HD, int L, int P) {
    if (on_gpu()) ms_deform_attn_forward_cuda(out, value, shapes, loc, aw, B, S, Lq, NH, HD, L, P);
    else ms_deform_attn_forward_cpu(out, value, shapes, loc, aw, B, S, Lq, NH, HD, L, P);
}

void ms_deform_attn_backward(float* dvalue, float* dloc, float* daw, const float* dout, const float* value, const int* shapes, const float* loc, const float* aw, int B, int S, int Lq, int NH, int HD, int L, int P) {
    if (on_gpu()) ms_deform_attn_backward_cuda(dvalue, dloc, daw, dout, value, shapes, loc, aw, B, S, Lq, NH, HD, L, P);
    else ms_deform_attn_backward_cpu(dvalue, dloc, daw, dout, value, shapes, loc, aw, B, S, Lq, NH, HD, L, P);
}

void ms_deform_locations_forward(float* loc, const float* off, const int* shapes, int B, int L, int NH, int P) {
    if (on_gpu()) ms_deform_locations_forward_cuda(loc, off, shapes, B, L, NH, P);
    else ms_deform_locations_forward_cpu(loc, off, shapes, B, L, NH, P);
}

void ms_deform_locations_backward(float* doff, const float* dloc, const int* shapes, int B, int L, int NH, int P) {
    if (on_gpu()) ms_deform_locations_backward_cuda(doff, dloc, shapes, B, L, NH, P);
    else ms_deform_locations_backward_cpu(doff, dloc, shapes, B, L, NH, P);
}

void masked_mse_forward(float* loss, const float* pred, const float* target, const float* mask, int N, int C) {
    if (on_gpu()) masked_mse_forward_cuda(loss, pred, target, mask, N, C);
    else masked_mse_forward_cpu(loss, pred, target, mask, N, C);
}

void masked_mse_backward(float* dpred, float dloss, const float* pred, const float* target, const float* mask, int N, int C) {
    if (on_gpu()) masked_mse_backward_cuda(dpred, dloss, pred, target, mask, N, C);
    else masked_mse_backward_cpu(dpred, dloss, pred, target, mask, N, C);
}

void cross_entropy_forward(float* loss, const float* logits, const int* targets, const float* class_weight, int N, int C, int ignore_index) {
    if (on_gpu()) cross_entropy_forward_cuda(loss, logits, targets, class_weight, N, C, ignore_index);
    else cross_entropy_forward_cpu(loss, logits, targets, class_weight, N, C, ignore_index);
}

void cross_entropy_backward(float* dlogits, float dloss, const float* logits, const int* targets, const float* class_weight, int N, int C, int ignore_index) {
    if (on_gpu()) cross_entropy_backward_cuda(dlogits, dloss, logits, targets, class_weight, N, C, ignore_index);
    else cross_entropy_backward_cpu(dlogits, dloss, logits, targets, class_weight, N, C, ignore_index);
}

void sigmoid_bce_forward(float* losses, const float* logits, const float* targets, int M, int P) {
    if (on_gpu()) sigmoid_bce_forward_cuda(losses, logits, targets, M, P);
    else sigmoid_bce_forward_cpu(losses, logits, targets, M, P);
}

void sigmoid_bce_backward(float* dlogits, const float* dlosses, const float* logits, const float* targets, int M, int P) {
    if (on_gpu()) sigmoid_bce_backward_cuda(dlogits, dlosses, logits, targets, M, P);
    else sigmoid_bce_backward_cpu(dlogits, dlosses, logits, targets, M, P);
}

void dice_loss_forward(float* losses, const float* logits, const float* targets, int M, int P) {
    if (on_gpu()) dice_loss_forward_cuda(losses, logits, targets, M, P);
    else dice_loss_forward_cpu(losses, logits, targets, M, P);
}

void dice_loss_backward(float* dlogits, const float* dlosses, const float* logits, const float* targets, int M, int P) {
    if (on_gpu()) dice_loss_backward_cuda(dlogits, dlosses, logits, targets, M, P);
    else dice_loss_backward_cpu(dlogits, dlosses, logits, targets, M, P);
}

void adamw_update(float* params, const float* grads, float* m, float* v, size_t N, float lr, float beta1, float beta2, float eps, float weight_decay, int t) {
    if (on_gpu()) adamw_update_cuda(params, grads, m, v, N, lr, beta1, beta2, eps, weight_decay, t);
    else adamw_update_cpu(params, grads, m, v, N, lr, beta1, beta2, eps, weight_decay, t);
}

void sum_squares(float* out, const float* x, size_t N) {
    if (on_gpu()) sum_squares_cuda(out, x, N);
    else sum_squares_cpu(out, x, N);
}

void mae_prepare_input(float* inp4, float* target, float* target_mask, const float* rgb,
                       const unsigned char* patch_mask, int B, int H, int W, int Hp, int Wp, int ps,
                       int all_pixels) {
    if (on_gpu()) mae_prepare_input_cuda(inp4, target, target_mask, rgb, patch_mask, B, H, W, Hp, Wp, ps, all_pixels);
    else mae_prepare_input_cpu(inp4, target, target_mask, rgb, patch_mask, B, H, W, Hp, Wp, ps, all_pixels);
}
