// test/gpu_ops.c: every CUDA op against its CPU reference, in one process.
// Fresh random non-zero inputs of odd sizes (plus a few realistic Swin / Mask2Former
// sizes) are copied to both devices. Forward outputs on the GPU are poisoned with NaN
// first, so an element the kernel never writes fails the check. Gradient buffers are
// pre-filled with the same random values on both sides and the INCREMENTS are compared,
// which checks the accumulate (+=) contract; gradients that an op WRITES (ttt.h: linear_backward_write's
// dinp, window_reverse_residual_backward, scale_rows_add_backward) start as NaN on both sides and
// are compared whole. Error: max |gpu - cpu| / max |cpu|.
// Bounds: 1e-5 for plain float32 ops, 1e-4 for the flash attention kernels (float32 online
// softmax over thousands of keys), 3e-3 where cuBLAS TF32 matrix products are used; the
// linear ops run in every precision (fp32, tf32, bf16: relative L2 bounds at test_linear), the
// rest at tf32 whatever TTT_PRECISION says, but for the real bf16 operands of conv2d and linear
// (test_conv2d_bf16, test_linear_bf16: relative L2 bounds there) and the flash attention kernels on
// the tensor cores (test_flash_attention_tc: bf16, relative L2 bounds there).
// Prints the worst error per op at the end.
#include "test/test.h"

#define TOL_FP32 1e-5
#define TOL_TF32 3e-3

static Rng rng;

// ----------------------------------------------------------------------------
// helpers: device buffers (freed per test), comparisons, worst error per op

static void* dev_allocs[512];
static int n_dev_allocs = 0;

static void* dev_alloc(size_t bytes) {
    if (n_dev_allocs == 512) ttt_die("gpu_ops: too many device buffers");
    void* p = ttt_malloc(bytes);
    dev_allocs[n_dev_allocs++] = p;
    return p;
}
static void dev_free_all(void) {
    for (int i = 0; i < n_dev_allocs; i++) ttt_free(dev_allocs[i]);
    n_dev_allocs = 0;
}
// 1 while a test runs with every device float buffer starting 1 float past an aligned address
// (4-byte alignment only: the kernels' scalar paths instead of their float4 ones)
static int dev_misalign = 0;
// device copy of a host array
static float* dev_copy(const float* h, size_t n) {
    float* d = (float*)dev_alloc((n + dev_misalign) * sizeof(float)) + dev_misalign;
    ttt_to_device(d, h, n * sizeof(float));
    return d;
}
static int* dev_copy_int(const int* h, size_t n) {
    int* d = (int*)dev_alloc(n * sizeof(int));
    ttt_to_device(d, h, n * sizeof(int));
    return d;
}
// device buffer full of NaN: catches elements a forward kernel never writes
static float* dev_poison(size_t n) {
    float* h = (float*)mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = NAN;
    float* d = dev_copy(h, n);
    free(h);
    return d;
}
// host buffer full of NaN: the CPU side of a gradient that the op WRITES
static float* host_poison(size_t n) {
    float* h = (float*)mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = NAN;
    return h;
}
static float* host_copy(const float* h, size_t n) {
    float* c = (float*)mallocCheck(n * sizeof(float));
    memcpy(c, h, n * sizeof(float));
    return c;
}
#define MAX_OPS 160
static char op_names[MAX_OPS][48];
static double op_worst[MAX_OPS], op_tol[MAX_OPS];
static int n_ops = 0;
static void record(const char* op, double err, double tol) {
    int i = 0;
    while (i < n_ops && strcmp(op_names[i], op) != 0) i++;
    if (i == n_ops) {
        if (n_ops == MAX_OPS) return;
        snprintf(op_names[i], sizeof(op_names[i]), "%s", op);
        op_worst[i] = 0.0; op_tol[i] = tol; n_ops++;
    }
    if (!(err <= op_worst[i])) op_worst[i] = err;   // NaN sticks
    if (tol > op_tol[i]) op_tol[i] = tol;
}

// GPU tensor d_got vs host reference ref
static void cmp(const char* op, const char* what, const float* d_got, const float* ref, size_t n, double tol) {
    float* got = host_copy_of(d_got, n);
    char name[128];
    snprintf(name, sizeof(name), "%s %s", op, what);
    check_close(name, got, ref, n, tol);
    record(op, max_rel_error(got, ref, n), tol);
    free(got);
}

// accumulated gradient: compare (gpu - init) with (cpu - init)
static void cmp_grad(const char* op, const char* what, const float* d_got, const float* ref, const float* init,
                     size_t n, double tol) {
    float* got = host_copy_of(d_got, n);
    float* ref_inc = (float*)mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) { got[i] -= init[i]; ref_inc[i] = ref[i] - init[i]; }
    char name[128];
    snprintf(name, sizeof(name), "%s %s (+=)", op, what);
    check_close(name, got, ref_inc, n, tol);
    record(op, max_rel_error(got, ref_inc, n), tol);
    free(got); free(ref_inc);
}

static float* rnd(size_t n) { return random_tensor(&rng, n, -1.0f, 1.0f); }

// a gradient buffer pair: host reference pre-filled, device copy of the same values.
// The pre-fill is uniform in [-scale, scale]; pick scale near the size of the
// increments, else rounding (init + inc) on each side swamps the comparison of increments.
typedef struct { float* init; float* cpu; float* gpu; size_t n; } Grad;
static Grad grad_new_scaled(size_t n, float scale) {
    Grad g; g.n = n; g.init = random_tensor(&rng, n, -scale, scale);
    g.cpu = host_copy(g.init, n); g.gpu = dev_copy(g.init, n);
    return g;
}
static Grad grad_new(size_t n) { return grad_new_scaled(n, 1.0f); }
static void grad_cmp(const char* op, const char* what, Grad* g, double tol) {
    cmp_grad(op, what, g->gpu, g->cpu, g->init, g->n, tol);
    free(g->init); free(g->cpu);
}

// ----------------------------------------------------------------------------
// elementwise and activations

static void test_elementwise(size_t N) {
    float *a = rnd(N), *b = rnd(N);
    float *da = dev_copy(a, N), *db = dev_copy(b, N);
    float* ref = (float*)mallocCheck(N * sizeof(float));
    float* out = dev_poison(N);
    add_forward_cpu(ref, a, b, N);
    add_forward_cuda(out, da, db, N);
    cmp("add_forward", "out", out, ref, N, TOL_FP32);
    add_inplace_cpu(a, b, N);
    add_inplace_cuda(da, db, N);
    cmp("add_inplace", "a", da, a, N, TOL_FP32);
    scale_inplace_cpu(a, -0.37f, N);
    scale_inplace_cuda(da, -0.37f, N);
    cmp("scale_inplace", "x", da, a, N, TOL_FP32);
    free(a); free(b); free(ref);
    dev_free_all();
}

// per-sample row scaling (drop-path) with dropped (0), kept (1/(1-p)) and arbitrary scales
static void test_scale_rows(int B, size_t N) {
    size_t n = (size_t)B * N;
    float* x = rnd(n);
    float* dy = rnd(n);
    float* scale = rnd(B);
    for (int b = 0; b < B; b += 3) scale[b] = 0.0f;
    if (B > 1) scale[1] = 1.0f / (1.0f - 0.3f);
    float* ref = (float*)mallocCheck(n * sizeof(float));
    float *dx_ = dev_copy(x, n), *ddy = dev_copy(dy, n), *dscale = dev_copy(scale, B);
    float* out = dev_poison(n);
    scale_rows_forward_cpu(ref, x, scale, B, N);
    scale_rows_forward_cuda(out, dx_, dscale, B, N);
    cmp("scale_rows_forward", "out", out, ref, n, TOL_FP32);
    scale_rows_forward_cuda(dx_, dx_, dscale, B, N);   // in place
    cmp("scale_rows_forward", "in place", dx_, ref, n, TOL_FP32);
    Grad g = grad_new(n);
    scale_rows_backward_cpu(g.cpu, dy, scale, B, N);
    scale_rows_backward_cuda(g.gpu, ddy, dscale, B, N);
    grad_cmp("scale_rows_backward", "dinp", &g, TOL_FP32);
    free(x); free(dy); free(scale); free(ref);
    dev_free_all();
}

static void test_activations(size_t N) {
    float* x = random_tensor(&rng, N, -4.0f, 4.0f);
    float* dy = rnd(N);
    float* dx_ = dev_copy(x, N);
    float* ddy = dev_copy(dy, N);
    float* ref = (float*)mallocCheck(N * sizeof(float));
    const char* names[3] = {"gelu", "relu", "sigmoid"};
    for (int k = 0; k < 3; k++) {
        char fw[32], bw[32];
        snprintf(fw, sizeof(fw), "%s_forward", names[k]);
        snprintf(bw, sizeof(bw), "%s_backward", names[k]);
        float* out = dev_poison(N);
        if (k == 0) { gelu_forward_cpu(ref, x, N); gelu_forward_cuda(out, dx_, N); }
        if (k == 1) { relu_forward_cpu(ref, x, N); relu_forward_cuda(out, dx_, N); }
        if (k == 2) { sigmoid_forward_cpu(ref, x, N); sigmoid_forward_cuda(out, dx_, N); }
        cmp(fw, "out", out, ref, N, TOL_FP32);
        // backward: gelu reads the input, relu/sigmoid read the forward output (the CPU's)
        float* dref = dev_copy(ref, N);
        Grad g = grad_new(N);
        if (k == 0) { gelu_backward_cpu(g.cpu, x, dy, N); gelu_backward_cuda(g.gpu, dx_, ddy, N); }
        if (k == 1) { relu_backward_cpu(g.cpu, ref, dy, N); relu_backward_cuda(g.gpu, dref, ddy, N); }
        if (k == 2) { sigmoid_backward_cpu(g.cpu, ref, dy, N); sigmoid_backward_cuda(g.gpu, dref, ddy, N); }
        grad_cmp(bw, "dinp", &g, TOL_FP32);
    }
    free(x); free(dy); free(ref);
    dev_free_all();
}

// ----------------------------------------------------------------------------
// linear

// Every precision of the matrix products (ttt.h: TTT_PRECISION) against the float32 CPU reference,
// relative L2 error, tolerance per precision: fp32 1e-5 (float32 products, only the order of the
// sums differs), tf32 2e-3 (inputs rounded to 10-bit mantissas, ~2.5e-4 relative each), bf16 1e-2
// (7-bit mantissas, ~2e-3 relative each). The linear ops take cuBLASLt with bias epilogues when
// C and OC are multiples of 4 and cuBLASLt offers an algorithm; `lt` says what the case expects:
// 1 the forward must take it (the bias epilogue; in fp32 and tf32, printed in bf16), 0 nothing may
// take it (the fallback: cuBLAS
// GEMM + bias / column-sum kernels), -1 cuBLASLt's heuristic decides (misaligned pointers). Which
// path the dweight + dbias GEMM (BGRADB epilogue) took is printed. With misalign, every device
// buffer starts 1 float past an aligned address (4-byte alignment only). dbias accumulates onto
// a random non-zero buffer (as every gradient here).
static const double linear_tol[3] = {1e-5, 2e-3, 1e-2};   // PRECISION_FP32, _TF32, _BF16

static float* dev_copy_shifted(const float* h, size_t n, int shift) {
    float* d = (float*)dev_alloc((n + 1) * sizeof(float)) + shift;
    ttt_to_device(d, h, n * sizeof(float));
    return d;
}

// the GPU's increments (gpu - init) against the CPU's (cpu - init), relative L2
static void grad_cmp_l2(const char* op, const char* what, Grad* g, double tol) {
    float* got = host_copy_of(g->gpu, g->n);
    float* ref_inc = (float*)mallocCheck(g->n * sizeof(float));
    for (size_t i = 0; i < g->n; i++) { got[i] -= g->init[i]; ref_inc[i] = g->cpu[i] - g->init[i]; }
    char name[128];
    snprintf(name, sizeof(name), "%s %s (+=)", op, what);
    check_l2(name, got, ref_inc, g->n, tol);
    record(op, l2_rel_error(got, ref_inc, g->n), tol);
    free(got); free(ref_inc); free(g->init); free(g->cpu);
}

// a device result (n) against the CPU's by relative L2, recorded under op
static void dev_cmp_l2(const char* op, const char* what, const float* dev, const float* ref, size_t n, double tol) {
    float* got = host_copy_of(dev, n);
    check_l2(what, got, ref, n, tol);
    record(op, l2_rel_error(got, ref, n), tol);
    free(got);
}

static void test_linear(int precision, int N, int C, int OC, int with_bias, int misalign, int lt) {
    ttt_cuda_set_precision(precision);
    double tol = linear_tol[precision];
    const char* pname = precision_name(precision);
    int sh = misalign ? 1 : 0;
    printf("linear %s: N %d, C %d, OC %d%s%s\n", pname, N, C, OC, with_bias ? ", bias" : "", misalign ? ", misaligned" : "");
    float *x = rnd((size_t)N * C), *w = rnd((size_t)OC * C), *b = with_bias ? rnd(OC) : NULL;
    float* dy = rnd((size_t)N * OC);
    float* ref = (float*)mallocCheck((size_t)N * OC * sizeof(float));
    float *dx_ = dev_copy_shifted(x, (size_t)N * C, sh), *dw_ = dev_copy_shifted(w, (size_t)OC * C, sh);
    float* db_ = b ? dev_copy_shifted(b, OC, sh) : NULL;
    float* out = dev_poison((size_t)N * OC + 1) + sh;
    char op_fw[48], op_bw[48];
    snprintf(op_fw, sizeof(op_fw), "linear_forward %s", pname);
    snprintf(op_bw, sizeof(op_bw), "linear_backward %s", pname);
    long lt_fw = ttt_cuda_linear_lt_calls(0), lt_bw = ttt_cuda_linear_lt_calls(1);
    linear_forward_cpu(ref, x, w, b, N, C, OC);
    linear_forward_cuda(out, dx_, dw_, db_, N, C, OC);
    float* got = host_copy_of(out, (size_t)N * OC);
    char name[96];
    snprintf(name, sizeof(name), "%s out", op_fw);
    check_l2(name, got, ref, (size_t)N * OC, tol);
    record(op_fw, l2_rel_error(got, ref, (size_t)N * OC), tol);
    free(got);
    float* ddy = dev_copy_shifted(dy, (size_t)N * OC, sh);
    // pre-fill near the size of the increments (sums over OC or N terms of products in [-1, 1])
    Grad gx = grad_new_scaled((size_t)N * C, 4.0f), gw = grad_new_scaled((size_t)OC * C, 8.0f);
    Grad gb = grad_new_scaled(OC, 8.0f);
    if (misalign) {   // the gradients shifted too
        float* d;
        d = dev_copy_shifted(gx.init, gx.n, 1); gx.gpu = d;
        d = dev_copy_shifted(gw.init, gw.n, 1); gw.gpu = d;
        d = dev_copy_shifted(gb.init, gb.n, 1); gb.gpu = d;
    }
    linear_backward_cpu(gx.cpu, gw.cpu, with_bias ? gb.cpu : NULL, dy, x, w, N, C, OC);
    linear_backward_cuda(gx.gpu, gw.gpu, with_bias ? gb.gpu : NULL, ddy, dx_, dw_, N, C, OC);
    grad_cmp_l2(op_bw, "dinp", &gx, tol);
    grad_cmp_l2(op_bw, "dweight", &gw, tol);
    if (with_bias) grad_cmp_l2(op_bw, "dbias", &gb, tol);
    else { free(gb.init); free(gb.cpu); }
    long took_fw = ttt_cuda_linear_lt_calls(0) - lt_fw, took_bw = ttt_cuda_linear_lt_calls(1) - lt_bw;
    printf("     cuBLASLt: forward + bias %s, dweight + dbias (BGRADB) %s\n", took_fw ? "taken" : "not taken",
           took_bw ? "taken" : "not taken");
    // fp32 and tf32 bias epilogues are what PyTorch's addmm uses (cuBLASLt has them); that cuBLASLt
    // offers them with CUBLAS_COMPUTE_32F_FAST_16BF on float32 storage is printed, not assumed
    if (lt == 1 && with_bias && precision != PRECISION_BF16)
        CHECK(took_fw == 1, "linear %s N %d C %d OC %d: the forward did not take cuBLASLt", pname, N, C, OC);
    if (lt == 0) CHECK(took_fw == 0 && took_bw == 0, "linear %s N %d C %d OC %d: took cuBLASLt where the fallback was due", pname, N, C, OC);
    // linear_backward_write: dinp WRITTEN over NaN on both sides (beta 0 in every path: a NaN read
    // or left behind fails), dweight and dbias still accumulating onto a random start
    {
        char op_bww[48];
        snprintf(op_bww, sizeof(op_bww), "linear_backward_write %s", pname);
        size_t ni = (size_t)N * C;
        float* di_cpu = host_poison(ni);
        float* di_gpu = dev_poison(ni + 1) + sh;
        Grad gw2 = grad_new_scaled((size_t)OC * C, 8.0f), gb2 = grad_new_scaled(OC, 8.0f);
        if (misalign) { gw2.gpu = dev_copy_shifted(gw2.init, gw2.n, 1); gb2.gpu = dev_copy_shifted(gb2.init, gb2.n, 1); }
        linear_backward_write_cpu(di_cpu, gw2.cpu, with_bias ? gb2.cpu : NULL, dy, x, w, N, C, OC);
        linear_backward_write_cuda(di_gpu, gw2.gpu, with_bias ? gb2.gpu : NULL, ddy, dx_, dw_, N, C, OC);
        float* got_di = host_copy_of(di_gpu, ni);
        snprintf(name, sizeof(name), "%s dinp (=, over NaN)", op_bww);
        check_l2(name, got_di, di_cpu, ni, tol);
        record(op_bww, l2_rel_error(got_di, di_cpu, ni), tol);
        grad_cmp_l2(op_bww, "dweight", &gw2, tol);
        if (with_bias) grad_cmp_l2(op_bww, "dbias", &gb2, tol);
        else { free(gb2.init); free(gb2.cpu); }
        free(di_cpu); free(got_di);
    }
    free(x); free(w); free(b); free(dy); free(ref);
    dev_free_all();
}

// ----------------------------------------------------------------------------
// layernorm, groupnorm

// the gradients a norm backward was asked for (mask bit 0: dinp, 1: dweight, 2: dbias) against the
// CPU's; the others' host buffers freed unchecked
static void norm_grads_check(const char* op, Grad* gx, Grad* gw, Grad* gb, int mask) {
    const char* names[3] = {"dinp", "dweight", "dbias"};
    Grad* gs[3] = {gx, gw, gb};
    for (int k = 0; k < 3; k++) {
        if (mask & (1 << k)) {
            char what[64];
            snprintf(what, sizeof(what), "%s (gradients asked: %d)", names[k], mask);
            grad_cmp(op, what, gs[k], TOL_FP32);
        } else {
            free(gs[k]->init); free(gs[k]->cpu);
        }
    }
}

static void test_layernorm(int N, int C) {
    float *x = random_tensor(&rng, (size_t)N * C, -2.0f, 3.0f), *w = rnd(C), *b = rnd(C), *dy = rnd((size_t)N * C);
    float* ref = (float*)mallocCheck((size_t)N * C * sizeof(float));
    float *mref = (float*)mallocCheck(N * sizeof(float)), *rref = (float*)mallocCheck(N * sizeof(float));
    float *dx_ = dev_copy(x, (size_t)N * C), *dw_ = dev_copy(w, C), *db_ = dev_copy(b, C), *ddy = dev_copy(dy, (size_t)N * C);
    float *out = dev_poison((size_t)N * C), *mean = dev_poison(N), *rstd = dev_poison(N);
    layernorm_forward_cpu(ref, mref, rref, x, w, b, N, C);
    layernorm_forward_cuda(out, mean, rstd, dx_, dw_, db_, N, C);
    cmp("layernorm_forward", "out", out, ref, (size_t)N * C, TOL_FP32);
    cmp("layernorm_forward", "mean", mean, mref, N, TOL_FP32);
    cmp("layernorm_forward", "rstd", rstd, rref, N, TOL_FP32);
    // backward from the CPU's statistics on both sides
    float *dm = dev_copy(mref, N), *dr = dev_copy(rref, N);
    Grad gx = grad_new((size_t)N * C), gw = grad_new(C), gb = grad_new(C);
    layernorm_backward_cpu(gx.cpu, gw.cpu, gb.cpu, dy, x, w, mref, rref, N, C);
    layernorm_backward_cuda(gx.gpu, gw.gpu, gb.gpu, ddy, dx_, dw_, dm, dr, N, C);
    grad_cmp("layernorm_backward", "dinp", &gx, TOL_FP32);
    grad_cmp("layernorm_backward", "dweight", &gw, TOL_FP32);
    grad_cmp("layernorm_backward", "dbias", &gb, TOL_FP32);
    free(x); free(w); free(b); free(dy); free(ref); free(mref); free(rref);
    dev_free_all();
}

static void test_groupnorm(int B, int HW, int C, int G) {
    size_t n = (size_t)B * HW * C;
    float *x = random_tensor(&rng, n, -2.0f, 3.0f), *w = rnd(C), *b = rnd(C), *dy = rnd(n);
    float* ref = (float*)mallocCheck(n * sizeof(float));
    float *mref = (float*)mallocCheck(B * G * sizeof(float)), *rref = (float*)mallocCheck(B * G * sizeof(float));
    float *dx_ = dev_copy(x, n), *dw_ = dev_copy(w, C), *db_ = dev_copy(b, C), *ddy = dev_copy(dy, n);
    float *out = dev_poison(n), *mean = dev_poison(B * G), *rstd = dev_poison(B * G);
    groupnorm_forward_cpu(ref, mref, rref, x, w, b, B, HW, C, G);
    groupnorm_forward_cuda(out, mean, rstd, dx_, dw_, db_, B, HW, C, G);
    cmp("groupnorm_forward", "out", out, ref, n, TOL_FP32);
    cmp("groupnorm_forward", "mean", mean, mref, B * G, TOL_FP32);
    cmp("groupnorm_forward", "rstd", rstd, rref, B * G, TOL_FP32);
    float *dm = dev_copy(mref, B * G), *dr = dev_copy(rref, B * G);
    for (int mask = 7; mask >= 1; mask--) {   // all three gradients, then each combination with NULLs
        Grad gx = grad_new(n), gw = grad_new(C), gb = grad_new(C);
        groupnorm_backward_cpu(mask & 1 ? gx.cpu : NULL, mask & 2 ? gw.cpu : NULL, mask & 4 ? gb.cpu : NULL, dy, x,
                               w, mref, rref, B, HW, C, G);
        groupnorm_backward_cuda(mask & 1 ? gx.gpu : NULL, mask & 2 ? gw.gpu : NULL, mask & 4 ? gb.gpu : NULL, ddy,
                                dx_, dw_, dm, dr, B, HW, C, G);
        norm_grads_check("groupnorm_backward", &gx, &gw, &gb, mask);
    }
    free(x); free(w); free(b); free(dy); free(ref); free(mref); free(rref);
    dev_free_all();
}

// The paths of the LayerNorm row kernels (ttt_kernels.cu, "LayerNorm rows in registers"): float4
// rows (C % 4 == 0, aligned), scalar rows (C % 4 != 0, or the row buffers only 4-byte aligned), float4
// rows with the parameters only 4-byte aligned, the warp-per-row fallback (rows longer than the lanes
// hold: C 1000 backward, C 1540, scalar C 257), N not a multiple of a block's rows, and each of the 7
// combinations of NULL gradients of the backward (which fuses dweight, dbias). rows_off / params_off
// 1: inp, out, dout, dinp / weight, bias, dweight, dbias start 1 float past an aligned address.
// layernorm_apply on the same buffers.
static void test_layernorm_paths(const char* label, int N, int C, int rows_off, int params_off) {
    printf("layernorm paths, %s: N %d, C %d%s%s\n", label, N, C, rows_off ? ", rows 4-byte aligned" : "",
           params_off ? ", parameters 4-byte aligned" : "");
    size_t n = (size_t)N * C;
    float *x = random_tensor(&rng, n, -2.0f, 3.0f), *w = rnd(C), *b = rnd(C), *dy = rnd(n);
    float* ref = (float*)mallocCheck(n * sizeof(float));
    float *mref = (float*)mallocCheck(N * sizeof(float)), *rref = (float*)mallocCheck(N * sizeof(float));
    float *d_x = dev_copy_shifted(x, n, rows_off), *d_dy = dev_copy_shifted(dy, n, rows_off);
    float *d_w = dev_copy_shifted(w, C, params_off), *d_b = dev_copy_shifted(b, C, params_off);
    float *out = dev_poison(n + 1) + rows_off, *mean = dev_poison(N), *rstd = dev_poison(N);
    layernorm_forward_cpu(ref, mref, rref, x, w, b, N, C);
    layernorm_forward_cuda(out, mean, rstd, d_x, d_w, d_b, N, C);
    cmp("layernorm_forward", "out", out, ref, n, TOL_FP32);
    cmp("layernorm_forward", "mean", mean, mref, N, TOL_FP32);
    cmp("layernorm_forward", "rstd", rstd, rref, N, TOL_FP32);
    float *d_m = dev_copy(mref, N), *d_r = dev_copy(rref, N);
    float* aout = dev_poison(n + 1) + rows_off;
    layernorm_apply_cpu(ref, x, mref, rref, w, b, N, C);
    layernorm_apply_cuda(aout, d_x, d_m, d_r, d_w, d_b, N, C);
    cmp("layernorm_apply", "out", aout, ref, n, TOL_FP32);
    for (int mask = 1; mask < 8; mask++) {   // bit 0: dinp, 1: dweight, 2: dbias
        Grad gx = grad_new(n), gw = grad_new(C), gb = grad_new(C);
        gx.gpu = dev_copy_shifted(gx.init, n, rows_off);
        gw.gpu = dev_copy_shifted(gw.init, C, params_off);
        gb.gpu = dev_copy_shifted(gb.init, C, params_off);
        layernorm_backward_cpu(mask & 1 ? gx.cpu : NULL, mask & 2 ? gw.cpu : NULL, mask & 4 ? gb.cpu : NULL, dy, x,
                               w, mref, rref, N, C);
        layernorm_backward_cuda(mask & 1 ? gx.gpu : NULL, mask & 2 ? gw.gpu : NULL, mask & 4 ? gb.gpu : NULL, d_dy,
                                d_x, d_w, d_m, d_r, N, C);
        norm_grads_check("layernorm_backward", &gx, &gw, &gb, mask);
    }
    free(x); free(w); free(b); free(dy); free(ref); free(mref); free(rref);
    dev_free_all();
}

// ----------------------------------------------------------------------------
// softmax (with some -inf entries and one all -inf row)

static void test_softmax(int N, int C) {
    size_t n = (size_t)N * C;
    float *x = random_tensor(&rng, n, -5.0f, 5.0f), *dy = rnd(n);
    for (size_t i = 0; i < n; i += 7) x[i] = -INFINITY;
    for (int c = 0; c < C; c++) x[(size_t)(N / 2) * C + c] = -INFINITY;
    float* ref = (float*)mallocCheck(n * sizeof(float));
    float *dx_ = dev_copy(x, n), *ddy = dev_copy(dy, n), *out = dev_poison(n);
    softmax_forward_cpu(ref, x, N, C);
    softmax_forward_cuda(out, dx_, N, C);
    cmp("softmax_forward", "out", out, ref, n, TOL_FP32);
    float* dref = dev_copy(ref, n);
    Grad g = grad_new(n);
    softmax_backward_cpu(g.cpu, ref, dy, N, C);
    softmax_backward_cuda(g.gpu, dref, ddy, N, C);
    grad_cmp("softmax_backward", "dinp", &g, TOL_FP32);
    free(x); free(dy); free(ref);
    dev_free_all();
}

// ----------------------------------------------------------------------------
// attention. layout: 0 = fused qkv (B, T, 3C) rows, 1 = q (B, Tq, q_stride) and a
// kv buffer (B, Tk, 2C) with k = kv, v = kv + C. mask_kind: 0 none, 1 Swin-like
// (0 / -100), 2 Mask2Former-like (-inf on about half, one position always open).

// the inputs of an attention check on the host and as device copies: q, k, v in the layout
// above, the bias, the mask (mask_kind 3, for the window op: kind 2 with row 1 of mask 0 all
// -inf); then (attn_grads) its gradients pre-filled, laid out like q, k, v
typedef struct {
    int layout, with_bias, C, q_stride, kv_stride;
    size_t nq, nkv, nbias, nmask;
    float *qb, *kvb, *bias, *mask;            // host buffers
    const float *q, *k, *v;                   // host views
    const float *dq, *dk, *dv;                // device views
    float *dbias, *dmask;                     // device copies
    Grad gq, gkv, gb;                         // gradients
    float *cq, *ck, *cv, *gq_, *gk_, *gv_;    // their q, k, v views (CPU, GPU)
} AttnCase;

static AttnCase attn_case(int B, int Tq, int Tk, int NH, int HS, int layout, int with_bias, int mask_kind,
                          int n_mask) {
    AttnCase c;
    memset(&c, 0, sizeof(c));
    c.layout = layout; c.with_bias = with_bias; c.C = NH * HS;
    int C = c.C;
    if (layout == 0) { c.q_stride = c.kv_stride = 3 * C; c.nq = 0; c.nkv = (size_t)B * Tq * 3 * C; }
    else { c.q_stride = C + 5; c.kv_stride = 2 * C; c.nq = (size_t)B * Tq * c.q_stride; c.nkv = (size_t)B * Tk * c.kv_stride; }
    c.qb = layout == 0 ? NULL : rnd(c.nq);
    c.kvb = random_tensor(&rng, c.nkv, -1.0f, 1.0f);
    if (layout == 0) { c.q = c.kvb; c.k = c.kvb + C; c.v = c.kvb + 2 * C; }
    else { c.q = c.qb; c.k = c.kvb; c.v = c.kvb + C; }
    c.nbias = (size_t)NH * Tq * Tk; c.nmask = (size_t)n_mask * Tq * Tk;
    c.bias = with_bias ? random_tensor(&rng, c.nbias, -2.0f, 2.0f) : NULL;
    if (mask_kind) {
        c.mask = (float*)mallocCheck(c.nmask * sizeof(float));
        for (size_t i = 0; i < c.nmask; i++) {
            float u = rng_uniform(&rng);
            c.mask[i] = mask_kind == 1 ? (u < 0.3f ? -100.0f : 0.0f) : (u < 0.5f ? -INFINITY : 0.0f);
        }
        if (mask_kind >= 2) for (size_t r = 0; r < (size_t)n_mask * Tq; r++) c.mask[r * Tk + rng_int(&rng, Tk)] = 0.0f;
        if (mask_kind == 3) for (int j = 0; j < Tk; j++) c.mask[(size_t)1 * Tk + j] = -INFINITY;
    }
    float* dqb = layout == 0 ? NULL : dev_copy(c.qb, c.nq);
    float* dkvb = dev_copy(c.kvb, c.nkv);
    if (layout == 0) { c.dq = dkvb; c.dk = dkvb + C; c.dv = dkvb + 2 * C; }
    else { c.dq = dqb; c.dk = dkvb; c.dv = dkvb + C; }
    c.dbias = c.bias ? dev_copy(c.bias, c.nbias) : NULL;
    c.dmask = c.mask ? dev_copy(c.mask, c.nmask) : NULL;
    return c;
}

static void attn_grads(AttnCase* c) {
    int C = c->C;
    c->gq = grad_new(c->layout == 0 ? 1 : c->nq); c->gkv = grad_new(c->nkv); c->gb = grad_new(c->with_bias ? c->nbias : 1);
    if (c->layout == 0) {
        c->cq = c->gkv.cpu; c->ck = c->gkv.cpu + C; c->cv = c->gkv.cpu + 2 * C;
        c->gq_ = c->gkv.gpu; c->gk_ = c->gkv.gpu + C; c->gv_ = c->gkv.gpu + 2 * C;
    } else {
        c->cq = c->gq.cpu; c->ck = c->gkv.cpu; c->cv = c->gkv.cpu + C;
        c->gq_ = c->gq.gpu; c->gk_ = c->gkv.gpu; c->gv_ = c->gkv.gpu + C;
    }
}

// the host inputs of a case
static void attn_case_free_host(AttnCase* c) { free(c->qb); free(c->kvb); free(c->bias); free(c->mask); }

// the host buffers of a case's gradients (attn_grads) and its host inputs
static void attn_case_free_all_host(AttnCase* c) {
    free(c->gq.init); free(c->gq.cpu); free(c->gkv.init); free(c->gkv.cpu); free(c->gb.init); free(c->gb.cpu);
    attn_case_free_host(c);
}

// the forward run again without lse (no backward follows) must give the same out bit for bit:
// got (the first run's out on the host) against out2 (the second run's, on the device)
static void check_same_without_lse(const char* op, const char* label, const float* got, const float* out2, size_t n) {
    float* got2 = host_copy_of(out2, n);
    CHECK(memcmp(got, got2, n * sizeof(float)) == 0, "%s [%s]: out differs with lse = NULL", op, label);
    free(got2);
}

// the gradients of both sides compared (grad_cmp frees them), the host inputs freed
static void attn_grads_check_free(AttnCase* c, const char* op, const char* label, double tol) {
    char what[128];
    if (c->layout == 0) {
        // padding columns of the fused buffer do not exist: every column is q, k or v
        snprintf(what, sizeof(what), "dqkv [%s]", label); grad_cmp(op, what, &c->gkv, tol);
        free(c->gq.init); free(c->gq.cpu);
    } else {
        // q rows have 5 padding floats that no gradient may touch: checked as part of dq
        snprintf(what, sizeof(what), "dq [%s]", label); grad_cmp(op, what, &c->gq, tol);
        snprintf(what, sizeof(what), "dk,dv [%s]", label); grad_cmp(op, what, &c->gkv, tol);
    }
    if (c->with_bias) { snprintf(what, sizeof(what), "drel_bias [%s]", label); grad_cmp(op, what, &c->gb, tol); }
    else { free(c->gb.init); free(c->gb.cpu); }
    attn_case_free_host(c);
}

static void test_attention(const char* label, int B, int Tq, int Tk, int NH, int HS, int layout,
                           int with_bias, int mask_kind, int n_mask) {
    AttnCase c = attn_case(B, Tq, Tk, NH, HS, layout, with_bias, mask_kind, n_mask);
    size_t nout = (size_t)B * Tq * c.C, natt = (size_t)B * NH * Tq * Tk;
    float* dy = rnd(nout);
    float *ref = (float*)mallocCheck(nout * sizeof(float)), *aref = (float*)mallocCheck(natt * sizeof(float));
    attention_forward_cpu(ref, aref, c.q, c.k, c.v, c.bias, c.mask, n_mask, B, Tq, Tk, NH, HS, c.q_stride, c.kv_stride);
    float *out = dev_poison(nout), *att = dev_poison(natt);
    attention_forward_cuda(out, att, c.dq, c.dk, c.dv, c.dbias, c.dmask, n_mask, B, Tq, Tk, NH, HS, c.q_stride,
                           c.kv_stride);
    const char* op = "attention_forward";
    char what[96];
    snprintf(what, sizeof(what), "out [%s]", label); cmp(op, what, out, ref, nout, TOL_TF32);
    snprintf(what, sizeof(what), "att [%s]", label); cmp(op, what, att, aref, natt, TOL_TF32);
    // backward: each side from its own att
    float* ddy = dev_copy(dy, nout);
    attn_grads(&c);
    attention_backward_cpu(c.cq, c.ck, c.cv, with_bias ? c.gb.cpu : NULL, dy, aref, c.q, c.k, c.v, B, Tq, Tk, NH, HS,
                           c.q_stride, c.kv_stride);
    attention_backward_cuda(c.gq_, c.gk_, c.gv_, with_bias ? c.gb.gpu : NULL, ddy, att, c.dq, c.dk, c.dv, B, Tq, Tk,
                            NH, HS, c.q_stride, c.kv_stride);
    attn_grads_check_free(&c, "attention_backward", label, TOL_TF32);
    free(dy); free(ref); free(aref);
    dev_free_all();
}

// ----------------------------------------------------------------------------
// window attention without a stored attention map (window_attention_*): the CUDA kernels
// recompute P = exp(s - lse) and use D = dout . out where the CPU reference normalises its
// softmax and sums dP * P, so the backward gets its own bound: 5e-5 (float32 throughout; a
// wrong index or a lost window gives errors of order 1). The old path (T > 64, or fused
// kernels off) runs cuBLAS TF32: TOL_TF32. layout and mask_kind as test_attention, plus
// mask_kind 3: mask_kind 2 with row 1 of mask 0 all -inf (a row without any finite score).
#define TOL_WATT_BWD 5e-5

// lse (device) against the CPU's: -inf exactly on the rows without a finite score (mask_kind 3
// must have some), the rest compared
static void cmp_lse(const char* op, const char* label, const float* d_lse, const float* lse_ref, size_t nlse,
                    int mask_kind, double tol) {
    float* lse_got = host_copy_of(d_lse, nlse);
    float* lse_cmp = host_copy(lse_ref, nlse);
    int inf_match = 1, inf_rows = 0;
    for (size_t r = 0; r < nlse; r++) {
        if (lse_cmp[r] == -INFINITY) {
            inf_rows++;
            inf_match &= lse_got[r] == -INFINITY;
            lse_got[r] = lse_cmp[r] = 0.0f;
        }
    }
    CHECK(inf_match, "%s lse [%s]: not -inf on an all -inf row", op, label);
    if (mask_kind == 3) CHECK(inf_rows > 0, "%s [%s]: no all -inf row in the case", op, label);
    char name[192];
    snprintf(name, sizeof(name), "%s lse [%s]", op, label);
    check_close(name, lse_got, lse_cmp, nlse, tol);
    record(op, max_rel_error(lse_got, lse_cmp, nlse), tol);
    free(lse_got); free(lse_cmp);
}

static void test_window_attention(const char* label, int B, int T, int NH, int HS, int layout,
                                  int with_bias, int mask_kind, int n_mask, double tol_fwd, double tol_bwd) {
    AttnCase c = attn_case(B, T, T, NH, HS, layout, with_bias, mask_kind, n_mask);
    size_t nout = (size_t)B * T * c.C, nlse = (size_t)B * NH * T;
    float* dy = rnd(nout);
    float *ref = (float*)mallocCheck(nout * sizeof(float)), *lse_ref = (float*)mallocCheck(nlse * sizeof(float));
    window_attention_forward_cpu(ref, lse_ref, c.q, c.k, c.v, c.bias, c.mask, n_mask, B, T, NH, HS, c.q_stride,
                                 c.kv_stride);
    float *out = dev_poison(nout), *lse = dev_poison(nlse);
    window_attention_forward_cuda(out, lse, c.dq, c.dk, c.dv, c.dbias, c.dmask, n_mask, B, T, NH, HS, c.q_stride,
                                  c.kv_stride);
    const char* op = "window_attention_forward";
    char what[128];
    snprintf(what, sizeof(what), "out [%s]", label); cmp(op, what, out, ref, nout, tol_fwd);
    cmp_lse(op, label, lse, lse_ref, nlse, mask_kind, tol_fwd);
    // backward: each side from its own forward (out, lse)
    float* ddy = dev_copy(dy, nout);
    attn_grads(&c);
    window_attention_backward_cpu(c.cq, c.ck, c.cv, with_bias ? c.gb.cpu : NULL, dy, ref, lse_ref, c.q, c.k, c.v,
                                  c.bias, c.mask, n_mask, B, T, NH, HS, c.q_stride, c.kv_stride);
    window_attention_backward_cuda(c.gq_, c.gk_, c.gv_, with_bias ? c.gb.gpu : NULL, ddy, out, lse, c.dq, c.dk, c.dv,
                                   c.dbias, c.dmask, n_mask, B, T, NH, HS, c.q_stride, c.kv_stride);
    attn_grads_check_free(&c, "window_attention_backward", label, tol_bwd);
    free(dy); free(ref); free(lse_ref);
    dev_free_all();
}

// ----------------------------------------------------------------------------
// multi-head attention without a stored attention map, general Tq, Tk (flash_attention_*):
// the CUDA kernels run an online softmax in float32 (the CPU reference: attention_forward_cpu's
// softmax), so forward and backward are held to TOL_FLASH; the old path (HS > 64, or fused
// kernels off) runs cuBLAS TF32: TOL_TF32. layout and mask_kind as test_window_attention
// (layout 0 needs Tq = Tk; no rel_bias).
#define TOL_FLASH 1e-4

static void test_flash_attention(const char* label, int B, int Tq, int Tk, int NH, int HS, int layout,
                                 int mask_kind, int n_mask, double tol) {
    AttnCase c = attn_case(B, Tq, Tk, NH, HS, layout, 0, mask_kind, n_mask);
    size_t nout = (size_t)B * Tq * c.C, nlse = (size_t)B * NH * Tq;
    float* dy = rnd(nout);
    float *ref = (float*)mallocCheck(nout * sizeof(float)), *lse_ref = (float*)mallocCheck(nlse * sizeof(float));
    flash_attention_forward_cpu(ref, lse_ref, c.q, c.k, c.v, c.mask, n_mask, B, Tq, Tk, NH, HS, c.q_stride,
                                c.kv_stride);
    float *out = dev_poison(nout), *lse = dev_poison(nlse);
    flash_attention_forward_cuda(out, lse, c.dq, c.dk, c.dv, c.dmask, n_mask, B, Tq, Tk, NH, HS, c.q_stride,
                                 c.kv_stride);
    const char* op = "flash_attention_forward";
    char what[128];
    snprintf(what, sizeof(what), "out [%s]", label); cmp(op, what, out, ref, nout, tol);
    cmp_lse(op, label, lse, lse_ref, nlse, mask_kind, tol);
    // lse = NULL (no backward follows): the same out
    float* out2 = dev_poison(nout);
    flash_attention_forward_cuda(out2, NULL, c.dq, c.dk, c.dv, c.dmask, n_mask, B, Tq, Tk, NH, HS, c.q_stride,
                                 c.kv_stride);
    snprintf(what, sizeof(what), "out, lse = NULL [%s]", label); cmp(op, what, out2, ref, nout, tol);
    // backward: each side from its own forward (out, lse)
    float* ddy = dev_copy(dy, nout);
    attn_grads(&c);
    flash_attention_backward_cpu(c.cq, c.ck, c.cv, dy, ref, lse_ref, c.q, c.k, c.v, c.mask, n_mask, B, Tq, Tk, NH,
                                 HS, c.q_stride, c.kv_stride);
    flash_attention_backward_cuda(c.gq_, c.gk_, c.gv_, ddy, out, lse, c.dq, c.dk, c.dv, c.dmask, n_mask, B, Tq, Tk,
                                  NH, HS, c.q_stride, c.kv_stride);
    attn_grads_check_free(&c, "flash_attention_backward", label, tol);
    free(dy); free(ref); free(lse_ref);
    dev_free_all();
}

// ----------------------------------------------------------------------------
// flash attention on the tensor cores (bf16 precision, HS 16, 32, 48 or 64; ttt_kernels.cu, "flash
// attention on the tensor cores"): bf16 operands (8 significant bits: each off by up to 2^-9
// relatively) and float32 sums and softmax, against the float32 CPU reference in relative L2:
// out below TOL_FATT_TC_OUT = 2e-2 (about 5e-3 expected), each gradient's increments (dq, dk, dv
// apart) below TOL_FATT_TC_GRAD = 3e-2 (about 1e-2 expected); lse (max error over max |lse|)
// below TOL_FATT_TC_LSE = 5e-3 (score errors of about 1e-3 against lse of about log Tk). The
// forward without lse must give the same out bit for bit (no atomics). The counter asserts that the
// tensor-core kernels ran (3 calls: forward, forward without lse, backward). grads: the gradients
// the backward asks for (1 dq, 2 dk, 4 dv); the others are NULL on both sides and the GPU's
// buffers must keep their pre-fill exactly. layout and mask_kind as test_flash_attention.
#define TOL_FATT_TC_OUT 2e-2
#define TOL_FATT_TC_GRAD 3e-2
#define TOL_FATT_TC_LSE 5e-3

// one gradient of a case: columns col0 .. col0 + C - 1 of `rows` rows `stride` floats apart in g
// (got: the GPU's buffer on the host); asked: its increments against the CPU's in relative L2
// below tol (recorded as op), else the GPU's values must equal the pre-fill
static void tc_grad_check(const char* what, const Grad* g, const float* got, size_t rows, int stride, int col0,
                          int C, int asked, double tol, const char* op) {
    size_t n = rows * C, k = 0, changed = 0;
    float* inc = (float*)mallocCheck(n * sizeof(float));
    float* ref = (float*)mallocCheck(n * sizeof(float));
    for (size_t r = 0; r < rows; r++) for (int c = 0; c < C; c++, k++) {
        size_t e = r * stride + col0 + c;
        inc[k] = got[e] - g->init[e];
        ref[k] = g->cpu[e] - g->init[e];
        changed += got[e] != g->init[e];
    }
    if (asked) {
        check_l2(what, inc, ref, n, tol);
        record(op, l2_rel_error(inc, ref, n), tol);
    } else {
        CHECK(changed == 0, "%s: %zu elements of a NULL gradient changed", what, changed);
    }
    free(inc); free(ref);
}
static void fatt_tc_grad_check(const char* what, const Grad* g, const float* got, size_t rows, int stride, int col0,
                               int C, int asked) {
    tc_grad_check(what, g, got, rows, stride, col0, C, asked, TOL_FATT_TC_GRAD, "flash_attention_backward tc (L2)");
}

static void test_flash_attention_tc(const char* label, int B, int Tq, int Tk, int NH, int HS, int layout,
                                    int mask_kind, int n_mask, int grads) {
    ttt_cuda_set_precision(PRECISION_BF16);
    ttt_cuda_set_fatt_tc(1);
    AttnCase c = attn_case(B, Tq, Tk, NH, HS, layout, 0, mask_kind, n_mask);
    int C = c.C;
    size_t nout = (size_t)B * Tq * C, nlse = (size_t)B * NH * Tq;
    float* dy = rnd(nout);
    float *ref = (float*)mallocCheck(nout * sizeof(float)), *lse_ref = (float*)mallocCheck(nlse * sizeof(float));
    flash_attention_forward_cpu(ref, lse_ref, c.q, c.k, c.v, c.mask, n_mask, B, Tq, Tk, NH, HS, c.q_stride,
                                c.kv_stride);
    long calls = ttt_cuda_fatt_tc_calls();
    float *out = dev_poison(nout), *lse = dev_poison(nlse);
    flash_attention_forward_cuda(out, lse, c.dq, c.dk, c.dv, c.dmask, n_mask, B, Tq, Tk, NH, HS, c.q_stride,
                                 c.kv_stride);
    char what[192];
    float* got = host_copy_of(out, nout);
    snprintf(what, sizeof(what), "flash_attention_forward tc out [%s]", label);
    check_l2(what, got, ref, nout, TOL_FATT_TC_OUT);
    record("flash_attention_forward tc (L2)", l2_rel_error(got, ref, nout), TOL_FATT_TC_OUT);
    cmp_lse("flash_attention_forward tc", label, lse, lse_ref, nlse, mask_kind, TOL_FATT_TC_LSE);
    // lse = NULL (no backward follows): the same out, bit for bit
    float* out2 = dev_poison(nout);
    flash_attention_forward_cuda(out2, NULL, c.dq, c.dk, c.dv, c.dmask, n_mask, B, Tq, Tk, NH, HS, c.q_stride,
                                 c.kv_stride);
    check_same_without_lse("flash_attention_forward tc", label, got, out2, nout);
    // backward: each side from its own forward (out, lse); the gradients not asked for are NULL
    float* ddy = dev_copy(dy, nout);
    attn_grads(&c);
    int wq = grads & 1, wk = grads & 2, wv = grads & 4;
    flash_attention_backward_cpu(wq ? c.cq : NULL, wk ? c.ck : NULL, wv ? c.cv : NULL, dy, ref, lse_ref, c.q, c.k,
                                 c.v, c.mask, n_mask, B, Tq, Tk, NH, HS, c.q_stride, c.kv_stride);
    flash_attention_backward_cuda(wq ? c.gq_ : NULL, wk ? c.gk_ : NULL, wv ? c.gv_ : NULL, ddy, out, lse, c.dq, c.dk,
                                  c.dv, c.dmask, n_mask, B, Tq, Tk, NH, HS, c.q_stride, c.kv_stride);
    CHECK(ttt_cuda_fatt_tc_calls() - calls == 3, "flash attention tc [%s]: %ld of 3 calls ran the tensor-core kernels",
          label, ttt_cuda_fatt_tc_calls() - calls);
    float* gkv = host_copy_of(c.gkv.gpu, c.gkv.n);
    float* gq = layout == 0 ? NULL : host_copy_of(c.gq.gpu, c.gq.n);
    size_t rq = (size_t)B * Tq, rk = (size_t)B * Tk;
    const char* names[3] = {"dq", "dk", "dv"};
    for (int t = 0; t < 3; t++) {
        snprintf(what, sizeof(what), "flash_attention_backward tc %s%s (+=) [%s]", names[t],
                 (grads >> t) & 1 ? "" : " = NULL", label);
        if (layout == 0) fatt_tc_grad_check(what, &c.gkv, gkv, rq, 3 * C, t * C, C, (grads >> t) & 1);
        else if (t == 0) fatt_tc_grad_check(what, &c.gq, gq, rq, c.q_stride, 0, C, wq);
        else fatt_tc_grad_check(what, &c.gkv, gkv, rk, 2 * C, (t - 1) * C, C, (grads >> t) & 1);
    }
    free(gkv); free(gq);
    attn_case_free_all_host(&c);
    free(dy); free(ref); free(lse_ref); free(got);
    dev_free_all();
    ttt_cuda_set_fatt_tc(-1);
    ttt_cuda_set_precision(PRECISION_TF32);
}

// ----------------------------------------------------------------------------
// window attention on the tensor cores (bf16 precision, T <= 64, HS 16, 32, 48 or 64; ttt_kernels.cu,
// "window attention on the tensor cores with mma.sync"): bf16 operands (q, k, v, dout, P, dS) and
// float32 sums, softmax, lse, D and drel, against the float32 CPU reference: out in relative L2
// below TOL_WATT_TC_OUT = 1e-2, lse (max error over max |lse|) below TOL_WATT_TC_LSE = 1e-2, each
// gradient's increments (dq, dk, dv, drel_bias apart) in relative L2 below TOL_WATT_TC_GRAD = 1.5e-2
// (the WMMA attempt measured about 2.3e-3 on out and 3e-3 .. 4e-3 on the gradients). The forward
// without lse must give the same out bit for bit. The counter asserts that the tensor-core kernels
// ran (forward twice, backward once). grads: the gradients the backward asks for (1 dq, 2 dk, 4 dv,
// 8 drel_bias); the others are NULL on both sides and the GPU's buffers must keep their pre-fill
// exactly. layout and mask_kind as test_window_attention.
#define TOL_WATT_TC_OUT 1e-2
#define TOL_WATT_TC_LSE 1e-2
#define TOL_WATT_TC_GRAD 1.5e-2

// tc_grad_check with the window op's bound and record name
static void watt_tc_grad_check(const char* what, const Grad* g, const float* got, size_t rows, int stride, int col0,
                               int C, int asked) {
    tc_grad_check(what, g, got, rows, stride, col0, C, asked, TOL_WATT_TC_GRAD, "window_attention_backward tc (L2)");
}

static void test_window_attention_tc(const char* label, int B, int T, int NH, int HS, int layout, int with_bias,
                                     int mask_kind, int n_mask, int grads) {
    ttt_cuda_set_precision(PRECISION_BF16);
    ttt_cuda_set_watt_tc(1);
    AttnCase c = attn_case(B, T, T, NH, HS, layout, with_bias, mask_kind, n_mask);
    int C = c.C;
    size_t nout = (size_t)B * T * C, nlse = (size_t)B * NH * T;
    float* dy = rnd(nout);
    float *ref = (float*)mallocCheck(nout * sizeof(float)), *lse_ref = (float*)mallocCheck(nlse * sizeof(float));
    window_attention_forward_cpu(ref, lse_ref, c.q, c.k, c.v, c.bias, c.mask, n_mask, B, T, NH, HS, c.q_stride,
                                 c.kv_stride);
    long fwd_calls = ttt_cuda_watt_tc_calls(0), bwd_calls = ttt_cuda_watt_tc_calls(1);
    float *out = dev_poison(nout), *lse = dev_poison(nlse);
    window_attention_forward_cuda(out, lse, c.dq, c.dk, c.dv, c.dbias, c.dmask, n_mask, B, T, NH, HS, c.q_stride,
                                  c.kv_stride);
    char what[192];
    float* got = host_copy_of(out, nout);
    snprintf(what, sizeof(what), "window_attention_forward tc out [%s]", label);
    check_l2(what, got, ref, nout, TOL_WATT_TC_OUT);
    record("window_attention_forward tc (L2)", l2_rel_error(got, ref, nout), TOL_WATT_TC_OUT);
    cmp_lse("window_attention_forward tc", label, lse, lse_ref, nlse, mask_kind, TOL_WATT_TC_LSE);
    // lse = NULL (no backward follows): the same out, bit for bit
    float* out2 = dev_poison(nout);
    window_attention_forward_cuda(out2, NULL, c.dq, c.dk, c.dv, c.dbias, c.dmask, n_mask, B, T, NH, HS, c.q_stride,
                                  c.kv_stride);
    check_same_without_lse("window_attention_forward tc", label, got, out2, nout);
    // backward: each side from its own forward (out, lse); the gradients not asked for are NULL
    float* ddy = dev_copy(dy, nout);
    attn_grads(&c);
    int wq = grads & 1, wk = grads & 2, wv = grads & 4, wb = (grads & 8) && with_bias;
    window_attention_backward_cpu(wq ? c.cq : NULL, wk ? c.ck : NULL, wv ? c.cv : NULL, wb ? c.gb.cpu : NULL, dy,
                                  ref, lse_ref, c.q, c.k, c.v, c.bias, c.mask, n_mask, B, T, NH, HS, c.q_stride,
                                  c.kv_stride);
    window_attention_backward_cuda(wq ? c.gq_ : NULL, wk ? c.gk_ : NULL, wv ? c.gv_ : NULL, wb ? c.gb.gpu : NULL,
                                   ddy, out, lse, c.dq, c.dk, c.dv, c.dbias, c.dmask, n_mask, B, T, NH, HS,
                                   c.q_stride, c.kv_stride);
    CHECK(ttt_cuda_watt_tc_calls(0) - fwd_calls == 2 && ttt_cuda_watt_tc_calls(1) - bwd_calls == 1,
          "window attention tc [%s]: %ld of 2 forward, %ld of 1 backward calls ran the tensor-core kernels", label,
          ttt_cuda_watt_tc_calls(0) - fwd_calls, ttt_cuda_watt_tc_calls(1) - bwd_calls);
    float* gkv = host_copy_of(c.gkv.gpu, c.gkv.n);
    float* gq = layout == 0 ? NULL : host_copy_of(c.gq.gpu, c.gq.n);
    size_t rows = (size_t)B * T;
    const char* names[3] = {"dq", "dk", "dv"};
    for (int t = 0; t < 3; t++) {
        snprintf(what, sizeof(what), "window_attention_backward tc %s%s (+=) [%s]", names[t],
                 (grads >> t) & 1 ? "" : " = NULL", label);
        if (layout == 0) watt_tc_grad_check(what, &c.gkv, gkv, rows, 3 * C, t * C, C, (grads >> t) & 1);
        else if (t == 0) watt_tc_grad_check(what, &c.gq, gq, rows, c.q_stride, 0, C, wq);
        else watt_tc_grad_check(what, &c.gkv, gkv, rows, 2 * C, (t - 1) * C, C, (grads >> t) & 1);
    }
    if (layout == 1) {   // the 5 padding floats of each q row: never touched
        snprintf(what, sizeof(what), "window_attention_backward tc dq padding [%s]", label);
        watt_tc_grad_check(what, &c.gq, gq, rows, c.q_stride, C, c.q_stride - C, 0);
    }
    if (with_bias) {   // drel_bias (NH, T, T): one row of NH * T * T
        float* gb = host_copy_of(c.gb.gpu, c.gb.n);
        snprintf(what, sizeof(what), "window_attention_backward tc drel_bias%s (+=) [%s]", wb ? "" : " = NULL", label);
        watt_tc_grad_check(what, &c.gb, gb, 1, (int)c.nbias, 0, (int)c.nbias, wb);
        free(gb);
    }
    free(gkv); free(gq);
    attn_case_free_all_host(&c);
    free(dy); free(ref); free(lse_ref); free(got);
    dev_free_all();
    ttt_cuda_set_watt_tc(-1);
    ttt_cuda_set_precision(PRECISION_TF32);
}

// qkv_window_attention (Swin's qkv linear and window attention as one op) against the CPU op.
// mode 1: bf16 precision; path 1: the bf16 path must be taken (qkv kept in bf16 without its bias, the bias added by the
// tensor-core kernels as they load, dqkv written in bf16: the dqkv scratch starts NaN-filled, so
// an element read before it is written shows); mode 0: TF32, the float32 linear and kernels in
// turn (the op zeroes its scratch itself, also NaN-filled here), as must bf16 precision where the
// tensor-core kernels do not apply (path 0). x random in [-1, 1], weights in
// [-0.25, 0.25] (scores of a few units), rel_bias and a -100 shift-style mask on odd windows.
// dx is written (NaN-filled), dw, db and drel_bias accumulate from random values.
static void test_qkv_window_attention(int B, int T, int NH, int HS, int n_mask, int mode, int path) {
    ttt_cuda_set_precision(mode ? PRECISION_BF16 : PRECISION_TF32);
    ttt_cuda_set_watt_tc(-1);
    ttt_cuda_set_bf16_linear(-1);
    int C = NH * HS, N = B * T;
    double tol_out = path ? TOL_WATT_TC_OUT : 2e-3, tol_grad = path ? TOL_WATT_TC_GRAD : 2e-3;
    printf("qkv_window_attention %s: %d windows of %d, %d heads of %d, %d masks\n", mode ? "bf16" : "tf32", B, T,
           NH, HS, n_mask);
    size_t nx = (size_t)N * C, nqkv = (size_t)N * 3 * C, nw = (size_t)3 * C * C, nrel = (size_t)NH * T * T;
    size_t nmask = (size_t)n_mask * T * T, nlse = (size_t)B * NH * T;
    float *x = rnd(nx), *w = random_tensor(&rng, nw, -0.25f, 0.25f), *b = rnd(3 * C), *rel = rnd(nrel);
    float *mask = (float*)mallocCheck(nmask * sizeof(float)), *dy = rnd(nx);
    for (int m = 0; m < n_mask; m++)   // odd masks: key groups (j < T / 2 vs the rest) may not meet
        for (int i = 0; i < T; i++)
            for (int j = 0; j < T; j++)
                mask[((size_t)m * T + i) * T + j] = (m % 2 == 1 && (i < T / 2) != (j < T / 2)) ? -100.0f : 0.0f;
    float *ref = (float*)mallocCheck(nx * sizeof(float)), *lse_ref = (float*)mallocCheck(nlse * sizeof(float));
    float *qkv_ref = (float*)mallocCheck(nqkv * sizeof(float)), *dqkv_ref = (float*)mallocCheck(nqkv * sizeof(float));
    float* dx_ref = (float*)mallocCheck(nx * sizeof(float));
    qkv_window_attention_forward_cpu(ref, lse_ref, qkv_ref, x, w, b, rel, mask, n_mask, B, T, NH, HS);
    float *x_ = dev_copy(x, nx), *w_ = dev_copy(w, nw), *b_ = dev_copy(b, 3 * C), *rel_ = dev_copy(rel, nrel);
    float *mask_ = dev_copy(mask, nmask), *dy_ = dev_copy(dy, nx);
    float *out = dev_poison(nx), *lse = dev_poison(nlse), *qkv = dev_poison(nqkv);
    long tc0 = ttt_cuda_watt_tc_calls(0), tc1 = ttt_cuda_watt_tc_calls(1), lin = ttt_cuda_bf16_calls(0);
    qkv_window_attention_forward_cuda(out, lse, qkv, x_, w_, b_, rel_, mask_, n_mask, B, T, NH, HS);
    dev_cmp_l2("qkv_window_attention_forward", "qkv_window_attention_forward out", out, ref, nx, tol_out);
    Grad gw = grad_new_scaled(nw, 4.0f), gb = grad_new_scaled(3 * C, 4.0f), grel = grad_new_scaled(nrel, 4.0f);
    float *dx = dev_poison(nx), *dqkv = dev_poison(nqkv);
    qkv_window_attention_backward_cpu(dx_ref, gw.cpu, gb.cpu, grel.cpu, dqkv_ref, dy, ref, lse_ref, qkv_ref, x, w, b,
                                      rel, mask, n_mask, B, T, NH, HS);
    qkv_window_attention_backward_cuda(dx, gw.gpu, gb.gpu, grel.gpu, dqkv, dy_, out, lse, qkv, x_, w_, b_, rel_,
                                       mask_, n_mask, B, T, NH, HS);
    dev_cmp_l2("qkv_window_attention_backward", "qkv_window_attention_backward dx (written over NaN)", dx, dx_ref, nx,
               tol_grad);
    grad_cmp_l2("qkv_window_attention_backward", "dw", &gw, tol_grad);
    grad_cmp_l2("qkv_window_attention_backward", "db", &gb, tol_grad);
    grad_cmp_l2("qkv_window_attention_backward", "drel_bias", &grel, tol_grad);
    long took_tc = (ttt_cuda_watt_tc_calls(0) - tc0) + (ttt_cuda_watt_tc_calls(1) - tc1);
    long took_lin = ttt_cuda_bf16_calls(0) - lin;
    CHECK(took_tc == 2 * path && took_lin == 2 * path,
          "qkv_window_attention mode %d: %ld tensor-core attention calls, %ld bf16 linear passes (expected %d, %d)",
          mode, took_tc, took_lin, 2 * path, 2 * path);
    free(x); free(w); free(b); free(rel); free(mask); free(dy);
    free(ref); free(lse_ref); free(qkv_ref); free(dqkv_ref); free(dx_ref);
    dev_free_all();
    ttt_cuda_set_precision(PRECISION_TF32);
}

// ----------------------------------------------------------------------------
// relative position bias gather (Swin: table (169, NH), index (49*49))

static void test_bias_gather(int ws, int NH) {
    int R = (2 * ws - 1) * (2 * ws - 1), N = ws * ws * ws * ws;
    float *table = rnd((size_t)R * NH), *dy = rnd((size_t)N * NH);
    int* index = (int*)mallocCheck(N * sizeof(int));
    for (int i = 0; i < ws * ws; i++) for (int j = 0; j < ws * ws; j++) {
        int dy_ = i / ws - j / ws + ws - 1, dx = i % ws - j % ws + ws - 1;
        index[i * ws * ws + j] = dy_ * (2 * ws - 1) + dx;
    }
    float *dtable = dev_copy(table, (size_t)R * NH), *ddy = dev_copy(dy, (size_t)N * NH);
    int* dindex = dev_copy_int(index, N);
    float* ref = (float*)mallocCheck((size_t)N * NH * sizeof(float));
    float* out = dev_poison((size_t)N * NH);
    bias_gather_forward_cpu(ref, table, index, N, NH);
    bias_gather_forward_cuda(out, dtable, dindex, N, NH);
    cmp("bias_gather_forward", "out", out, ref, (size_t)N * NH, TOL_FP32);
    Grad g = grad_new((size_t)R * NH);
    bias_gather_backward_cpu(g.cpu, dy, index, N, NH);
    bias_gather_backward_cuda(g.gpu, ddy, dindex, N, NH);
    grad_cmp("bias_gather_backward", "dtable", &g, TOL_FP32);
    free(table); free(dy); free(index); free(ref);
    dev_free_all();
}

// ----------------------------------------------------------------------------
// windows, patch merge

static void test_windows(int B, int H, int W, int C, int ws, int shift) {
    int nW = ((H + ws - 1) / ws) * ((W + ws - 1) / ws);
    size_t nimg = (size_t)B * H * W * C, nwin = (size_t)B * nW * ws * ws * C;
    float *img = rnd(nimg), *win = rnd(nwin);
    float *dimg = dev_copy(img, nimg), *dwin = dev_copy(win, nwin);
    float* ref = (float*)mallocCheck(nwin * sizeof(float));
    float* out = dev_poison(nwin);
    window_partition_forward_cpu(ref, img, B, H, W, C, ws, shift);
    window_partition_forward_cuda(out, dimg, B, H, W, C, ws, shift);
    cmp("window_partition_forward", "out", out, ref, nwin, TOL_FP32);
    Grad g = grad_new(nimg);
    window_partition_backward_cpu(g.cpu, win, B, H, W, C, ws, shift);
    window_partition_backward_cuda(g.gpu, dwin, B, H, W, C, ws, shift);
    grad_cmp("window_partition_backward", "dinp", &g, TOL_FP32);
    // reverse: the forward writes only the pixels; pre-fill them all the same
    float* ref2 = host_copy(img, nimg);
    float* out2 = dev_poison(nimg);
    window_reverse_forward_cpu(ref2, win, B, H, W, C, ws, shift);
    window_reverse_forward_cuda(out2, dwin, B, H, W, C, ws, shift);
    cmp("window_reverse_forward", "out", out2, ref2, nimg, TOL_FP32);
    Grad g2 = grad_new(nwin);
    window_reverse_backward_cpu(g2.cpu, img, B, H, W, C, ws, shift);
    window_reverse_backward_cuda(g2.gpu, dimg, B, H, W, C, ws, shift);
    grad_cmp("window_reverse_backward", "dinp", &g2, TOL_FP32);
    free(img); free(win); free(ref); free(ref2);
    dev_free_all();
}

// Swin block fusions: layernorm_partition, layernorm_apply, window_reverse_residual and
// scale_rows_add against their CPU references (with and without a drop-path scale row)
static void test_swin_fusions(int B, int H, int W, int C, int ws, int shift) {
    int nW = ((H + ws - 1) / ws) * ((W + ws - 1) / ws), N = B * H * W;
    size_t nimg = (size_t)N * C, nwin = (size_t)B * nW * ws * ws * C, per = (size_t)H * W * C;
    float *x = random_tensor(&rng, nimg, -2.0f, 3.0f), *w = rnd(C), *b = rnd(C);
    float *win = rnd(nwin), *res = rnd(nimg), *dwin = rnd(nwin), *dimg = rnd(nimg), *scale = rnd(B);
    scale[0] = 0.0f;                                   // a dropped sample
    if (B > 1) scale[1] = 1.0f / (1.0f - 0.3f);       // a kept one
    float *d_x = dev_copy(x, nimg), *d_w = dev_copy(w, C), *d_b = dev_copy(b, C), *d_win = dev_copy(win, nwin);
    float *d_res = dev_copy(res, nimg), *d_dwin = dev_copy(dwin, nwin), *d_dimg = dev_copy(dimg, nimg);
    float* d_scale = dev_copy(scale, B);
    // layernorm_partition: forward with and without the statistics, backward from the CPU's
    float *ref = (float*)mallocCheck(nwin * sizeof(float)), *mref = (float*)mallocCheck(N * sizeof(float));
    float* rref = (float*)mallocCheck(N * sizeof(float));
    float *out = dev_poison(nwin), *mean = dev_poison(N), *rstd = dev_poison(N), *out2 = dev_poison(nwin);
    layernorm_partition_forward_cpu(ref, mref, rref, x, w, b, B, H, W, C, ws, shift);
    layernorm_partition_forward_cuda(out, mean, rstd, d_x, d_w, d_b, B, H, W, C, ws, shift);
    cmp("layernorm_partition_forward", "out", out, ref, nwin, TOL_FP32);
    cmp("layernorm_partition_forward", "mean", mean, mref, N, TOL_FP32);
    cmp("layernorm_partition_forward", "rstd", rstd, rref, N, TOL_FP32);
    layernorm_partition_forward_cuda(out2, NULL, NULL, d_x, d_w, d_b, B, H, W, C, ws, shift);
    cmp("layernorm_partition_forward", "out (no mean, rstd)", out2, ref, nwin, TOL_FP32);
    float *d_m = dev_copy(mref, N), *d_r = dev_copy(rref, N);
    Grad gx = grad_new(nimg), gw = grad_new(C), gb = grad_new(C);
    layernorm_partition_backward_cpu(gx.cpu, gw.cpu, gb.cpu, dwin, x, w, mref, rref, B, H, W, C, ws, shift);
    layernorm_partition_backward_cuda(gx.gpu, gw.gpu, gb.gpu, d_dwin, d_x, d_w, d_m, d_r, B, H, W, C, ws, shift);
    grad_cmp("layernorm_partition_backward", "dinp", &gx, TOL_FP32);
    grad_cmp("layernorm_partition_backward", "dweight", &gw, TOL_FP32);
    grad_cmp("layernorm_partition_backward", "dbias", &gb, TOL_FP32);
    // layernorm_apply with the CPU's statistics
    float* aref = (float*)mallocCheck(nimg * sizeof(float));
    float* aout = dev_poison(nimg);
    layernorm_apply_cpu(aref, x, mref, rref, w, b, N, C);
    layernorm_apply_cuda(aout, d_x, d_m, d_r, d_w, d_b, N, C);
    cmp("layernorm_apply", "out", aout, aref, nimg, TOL_FP32);
    // window_reverse_residual and scale_rows_add, scale 1 (NULL) and a scale row (with a bias
    // per channel for window_reverse_residual)
    float* ref2 = (float*)mallocCheck(nimg * sizeof(float));
    for (int k = 0; k < 2; k++) {
        const float* sc = k ? scale : NULL;
        const float* d_sc = k ? d_scale : NULL;
        const char* what = k ? "out (scaled, bias)" : "out";
        float* out3 = dev_poison(nimg);
        window_reverse_residual_forward_cpu(ref2, win, k ? b : NULL, res, sc, B, H, W, C, ws, shift);
        window_reverse_residual_forward_cuda(out3, d_win, k ? d_b : NULL, d_res, d_sc, B, H, W, C, ws, shift);
        cmp("window_reverse_residual_forward", what, out3, ref2, nimg, TOL_FP32);
        // the backward WRITES both (padding tokens of dinp: 0), over NaN on both sides
        float *gr_cpu = host_poison(nimg), *gi_cpu = host_poison(nwin);
        float *gr_gpu = dev_poison(nimg), *gi_gpu = dev_poison(nwin);
        window_reverse_residual_backward_cpu(gr_cpu, gi_cpu, dimg, sc, B, H, W, C, ws, shift);
        window_reverse_residual_backward_cuda(gr_gpu, gi_gpu, d_dimg, d_sc, B, H, W, C, ws, shift);
        cmp("window_reverse_residual_backward", k ? "dresidual (=, scaled)" : "dresidual (=)", gr_gpu, gr_cpu, nimg,
            TOL_FP32);
        cmp("window_reverse_residual_backward", k ? "dinp (=, scaled)" : "dinp (=)", gi_gpu, gi_cpu, nwin, TOL_FP32);
        free(gr_cpu); free(gi_cpu);
        float* out4 = dev_poison(nimg);
        float* d_inp = dev_copy(x, nimg);
        scale_rows_add_forward_cpu(ref2, x, res, sc, B, per);
        scale_rows_add_forward_cuda(out4, d_inp, d_res, d_sc, B, per);
        cmp("scale_rows_add_forward", what, out4, ref2, nimg, TOL_FP32);
        scale_rows_add_forward_cuda(d_inp, d_inp, d_res, d_sc, B, per);   // in place
        cmp("scale_rows_add_forward", k ? "in place (scaled)" : "in place", d_inp, ref2, nimg, TOL_FP32);
        float *ga_cpu = host_poison(nimg), *gc_cpu = host_poison(nimg);   // written too, over NaN
        float *ga_gpu = dev_poison(nimg), *gc_gpu = dev_poison(nimg);
        scale_rows_add_backward_cpu(ga_cpu, gc_cpu, dimg, sc, B, per);
        scale_rows_add_backward_cuda(ga_gpu, gc_gpu, d_dimg, d_sc, B, per);
        cmp("scale_rows_add_backward", k ? "dinp (=, scaled)" : "dinp (=)", ga_gpu, ga_cpu, nimg, TOL_FP32);
        cmp("scale_rows_add_backward", k ? "dresidual (=, scaled)" : "dresidual (=)", gc_gpu, gc_cpu, nimg, TOL_FP32);
        free(ga_cpu); free(gc_cpu);
    }
    free(x); free(w); free(b); free(win); free(res); free(dwin); free(dimg); free(scale);
    free(ref); free(mref); free(rref); free(aref); free(ref2);
    dev_free_all();
}

// The window-order LayerNorm (layernorm_partition) on the row kernels' paths as test_layernorm_paths
// (padding tokens: H, W not multiples of ws; shift > 0), the backward with each of the 7
// combinations of NULL gradients; window_reverse_residual_backward and scale_rows_add_backward with
// one gradient NULL. rows_off / params_off as in test_layernorm_paths.
static void test_swin_paths(const char* label, int B, int H, int W, int C, int ws, int shift, int rows_off,
                            int params_off) {
    printf("swin fusion paths, %s: B %d, %dx%d, C %d, ws %d, shift %d%s%s\n", label, B, H, W, C, ws, shift,
           rows_off ? ", rows 4-byte aligned" : "", params_off ? ", parameters 4-byte aligned" : "");
    int nW = ((H + ws - 1) / ws) * ((W + ws - 1) / ws), N = B * H * W;
    size_t nimg = (size_t)N * C, nwin = (size_t)B * nW * ws * ws * C, per = (size_t)H * W * C;
    float *x = random_tensor(&rng, nimg, -2.0f, 3.0f), *w = rnd(C), *b = rnd(C), *dwin = rnd(nwin);
    float *dimg = rnd(nimg), *scale = rnd(B);
    float *d_x = dev_copy_shifted(x, nimg, rows_off), *d_dwin = dev_copy_shifted(dwin, nwin, rows_off);
    float *d_dimg = dev_copy_shifted(dimg, nimg, rows_off), *d_scale = dev_copy(scale, B);
    float *d_w = dev_copy_shifted(w, C, params_off), *d_b = dev_copy_shifted(b, C, params_off);
    float *ref = (float*)mallocCheck(nwin * sizeof(float)), *mref = (float*)mallocCheck(N * sizeof(float));
    float* rref = (float*)mallocCheck(N * sizeof(float));
    float *out = dev_poison(nwin + 1) + rows_off, *mean = dev_poison(N), *rstd = dev_poison(N);
    layernorm_partition_forward_cpu(ref, mref, rref, x, w, b, B, H, W, C, ws, shift);
    layernorm_partition_forward_cuda(out, mean, rstd, d_x, d_w, d_b, B, H, W, C, ws, shift);
    cmp("layernorm_partition_forward", "out", out, ref, nwin, TOL_FP32);
    cmp("layernorm_partition_forward", "mean", mean, mref, N, TOL_FP32);
    cmp("layernorm_partition_forward", "rstd", rstd, rref, N, TOL_FP32);
    float* out2 = dev_poison(nwin + 1) + rows_off;
    layernorm_partition_forward_cuda(out2, NULL, NULL, d_x, d_w, d_b, B, H, W, C, ws, shift);
    cmp("layernorm_partition_forward", "out (no mean, rstd)", out2, ref, nwin, TOL_FP32);
    float *d_m = dev_copy(mref, N), *d_r = dev_copy(rref, N);
    for (int mask = 1; mask < 8; mask++) {   // bit 0: dinp, 1: dweight, 2: dbias
        Grad gx = grad_new(nimg), gw = grad_new(C), gb = grad_new(C);
        gx.gpu = dev_copy_shifted(gx.init, nimg, rows_off);
        gw.gpu = dev_copy_shifted(gw.init, C, params_off);
        gb.gpu = dev_copy_shifted(gb.init, C, params_off);
        layernorm_partition_backward_cpu(mask & 1 ? gx.cpu : NULL, mask & 2 ? gw.cpu : NULL, mask & 4 ? gb.cpu : NULL,
                                         dwin, x, w, mref, rref, B, H, W, C, ws, shift);
        layernorm_partition_backward_cuda(mask & 1 ? gx.gpu : NULL, mask & 2 ? gw.gpu : NULL,
                                          mask & 4 ? gb.gpu : NULL, d_dwin, d_x, d_w, d_m, d_r, B, H, W, C, ws, shift);
        char what[64];
        const char* names[3] = {"dinp", "dweight", "dbias"};
        Grad* gs[3] = {&gx, &gw, &gb};
        for (int k = 0; k < 3; k++) {
            if (mask & (1 << k)) {
                snprintf(what, sizeof(what), "%s (gradients asked: %d)", names[k], mask);
                grad_cmp("layernorm_partition_backward", what, gs[k], TOL_FP32);
            } else {
                free(gs[k]->init); free(gs[k]->cpu);
            }
        }
    }
    // one gradient NULL: window_reverse_residual_backward (dimg in image order -> the window tokens)
    // and scale_rows_add_backward, with the scale row
    // (both ops WRITE their gradients: over NaN on both sides)
    for (int k = 0; k < 2; k++) {
        size_t n = k ? nwin : nimg;
        float* g_cpu = host_poison(n);
        float* g_gpu = dev_poison(n + 1) + rows_off;
        window_reverse_residual_backward_cpu(k ? NULL : g_cpu, k ? g_cpu : NULL, dimg, scale, B, H, W, C, ws, shift);
        window_reverse_residual_backward_cuda(k ? NULL : g_gpu, k ? g_gpu : NULL, d_dimg, d_scale, B, H, W, C, ws,
                                              shift);
        cmp("window_reverse_residual_backward", k ? "dinp (=, dresidual NULL)" : "dresidual (=, dinp NULL)", g_gpu,
            g_cpu, n, TOL_FP32);
        free(g_cpu);
        float* ga_cpu = host_poison(nimg);
        float* ga_gpu = dev_poison(nimg + 1) + rows_off;
        scale_rows_add_backward_cpu(k ? ga_cpu : NULL, k ? NULL : ga_cpu, dimg, scale, B, per);
        scale_rows_add_backward_cuda(k ? ga_gpu : NULL, k ? NULL : ga_gpu, d_dimg, d_scale, B, per);
        cmp("scale_rows_add_backward", k ? "dinp (=, dresidual NULL)" : "dresidual (=, dinp NULL)", ga_gpu, ga_cpu,
            nimg, TOL_FP32);
        free(ga_cpu);
    }
    free(x); free(w); free(b); free(dwin); free(dimg); free(scale); free(ref); free(mref); free(rref);
    dev_free_all();
}

static void test_patch_merge(int B, int H, int W, int C) {
    int Ho = (H + 1) / 2, Wo = (W + 1) / 2;
    size_t nin = (size_t)B * H * W * C, nout = (size_t)B * Ho * Wo * 4 * C;
    float *x = rnd(nin), *dy = rnd(nout);
    float *dx_ = dev_copy(x, nin), *ddy = dev_copy(dy, nout);
    float* ref = (float*)mallocCheck(nout * sizeof(float));
    float* out = dev_poison(nout);
    patch_merge_forward_cpu(ref, x, B, H, W, C);
    patch_merge_forward_cuda(out, dx_, B, H, W, C);
    cmp("patch_merge_forward", "out", out, ref, nout, TOL_FP32);
    Grad g = grad_new(nin);
    patch_merge_backward_cpu(g.cpu, dy, B, H, W, C);
    patch_merge_backward_cuda(g.gpu, ddy, B, H, W, C);
    grad_cmp("patch_merge_backward", "dinp", &g, TOL_FP32);
    free(x); free(dy); free(ref);
    dev_free_all();
}

// ----------------------------------------------------------------------------
// conv2d

// path: "im2col" forces the im2col path for same-size 3x3 convs, "shifted" / "chunked"
// the shifted GEMMs, "default" leaves the dispatch as built (1x1 is always linear, every
// other shape im2col).
static void test_conv2d_path(const char* path, int B, int H, int W, int C, int OC, int K, int stride, int pad,
                             int Ho, int Wo, int with_bias) {
    ttt_cuda_set_conv_im2col(strcmp(path, "im2col") == 0 ? 1 : strcmp(path, "default") == 0 ? -1 : 0);
    size_t nin = (size_t)B * H * W * C, nw = (size_t)OC * K * K * C, nout = (size_t)B * Ho * Wo * OC;
    float *x = rnd(nin), *w = rnd(nw), *b = with_bias ? rnd(OC) : NULL, *dy = rnd(nout);
    float *dx_ = dev_copy(x, nin), *dw_ = dev_copy(w, nw), *db_ = b ? dev_copy(b, OC) : NULL, *ddy = dev_copy(dy, nout);
    float* ref = (float*)mallocCheck(nout * sizeof(float));
    float* out = dev_poison(nout);
    conv2d_forward_cpu(ref, x, w, b, B, H, W, C, OC, K, stride, pad, Ho, Wo);
    conv2d_forward_cuda(out, dx_, dw_, db_, B, H, W, C, OC, K, stride, pad, Ho, Wo);
    char what[96];
    snprintf(what, sizeof(what), "out [%s B%d %dx%d K%d s%d p%d C%d OC%d]", path, B, H, W, K, stride, pad, C, OC);
    char fwd[48], bwd[48];   // worst errors listed per path
    snprintf(fwd, sizeof(fwd), "conv2d_forward %s", path);
    snprintf(bwd, sizeof(bwd), "conv2d_backward %s", path);
    cmp(fwd, what, out, ref, nout, TOL_TF32);
    Grad gx = grad_new(nin), gw = grad_new(nw), gb = grad_new(OC);
    conv2d_backward_cpu(gx.cpu, gw.cpu, gb.cpu, dy, x, w, B, H, W, C, OC, K, stride, pad, Ho, Wo);
    conv2d_backward_cuda(gx.gpu, gw.gpu, gb.gpu, ddy, dx_, dw_, B, H, W, C, OC, K, stride, pad, Ho, Wo);
    grad_cmp(bwd, "dinp", &gx, TOL_TF32);
    grad_cmp(bwd, "dweight", &gw, TOL_TF32);
    grad_cmp(bwd, "dbias", &gb, TOL_FP32);
    free(x); free(w); free(b); free(dy); free(ref);
    dev_free_all();
    ttt_cuda_set_conv_im2col(-1);
}
static void test_conv2d(int B, int H, int W, int C, int OC, int K, int stride, int pad, int Ho, int Wo, int with_bias) {
    test_conv2d_path("default", B, H, W, C, OC, K, stride, pad, Ho, Wo, with_bias);
}

// ----------------------------------------------------------------------------
// real bf16 operands (TTT_PRECISION=bf16, ttt_kernels.cu BF16 OPERANDS): conv2d by a bf16 im2col
// and one bf16 GEMM per chunk, its dinp by the transposed im2col; linear on bf16 copies. Against
// the float32 CPU reference, relative L2 error: conv2d out, dinp, dweight below TOL_BF16_L2 = 2e-2
// (bf16 keeps 8 significant bits: each operand off by up to 2^-9 relative, ~3e-3 expected on
// these sums); dbias is float32 column sums (TOL_FP32, max error); linear: linear_tol[BF16].
// Each case asserts that the bf16 path was taken (ttt_cuda_bf16_calls). With misalign the weight
// and its gradient start 4 bytes past an aligned address (parameters in the packed buffer).
#define TOL_BF16_L2 2e-2

// implicit: ttt_cuda_set_conv_implicit's setting for the case (0: the im2col path); expect_fwd,
// expect_dinp: whether the forward and the dinp must run the implicit kernel (asserted with
// ttt_cuda_conv_implicit_calls, both ways).
static void test_conv2d_bf16_path(const char* label, int implicit, int expect_fwd, int expect_dinp, int B, int H,
                                  int W, int C, int OC, int K, int stride, int pad, int Ho, int Wo, int with_bias,
                                  int misalign) {
    ttt_cuda_set_precision(PRECISION_BF16);
    ttt_cuda_set_bf16_conv(1);
    ttt_cuda_set_conv_implicit(implicit);
    long implicit_fwd = ttt_cuda_conv_implicit_calls(0), implicit_dinp = ttt_cuda_conv_implicit_calls(1);
    size_t nin = (size_t)B * H * W * C, nw = (size_t)OC * K * K * C, nout = (size_t)B * Ho * Wo * OC;
    float *x = rnd(nin), *w = rnd(nw), *b = with_bias ? rnd(OC) : NULL, *dy = rnd(nout);
    float *dx_ = dev_copy(x, nin), *dw_ = dev_copy_shifted(w, nw, misalign ? 1 : 0);
    float *db_ = b ? dev_copy(b, OC) : NULL, *ddy = dev_copy(dy, nout);
    float* ref = (float*)mallocCheck(nout * sizeof(float));
    float* out = dev_poison(nout);
    long calls = ttt_cuda_bf16_calls(1);
    conv2d_forward_cpu(ref, x, w, b, B, H, W, C, OC, K, stride, pad, Ho, Wo);
    conv2d_forward_cuda(out, dx_, dw_, db_, B, H, W, C, OC, K, stride, pad, Ho, Wo);
    char what[160];
    snprintf(what, sizeof(what), "conv2d_forward bf16 out [%s: B%d %dx%d K%d s%d p%d C%d OC%d%s]", label, B, H, W, K,
             stride, pad, C, OC, misalign ? ", misaligned" : "");
    float* got = host_copy_of(out, nout);
    check_l2(what, got, ref, nout, TOL_BF16_L2);
    record(expect_fwd ? "conv2d_forward bf16 implicit (L2)" : "conv2d_forward bf16 (L2)", l2_rel_error(got, ref, nout),
           TOL_BF16_L2);
    free(got);
    // pre-fill near the size of the increments (sums of K*K*OC or B*Ho*Wo products in [-1, 1])
    Grad gx = grad_new_scaled(nin, 4.0f), gw = grad_new_scaled(nw, 8.0f), gb = grad_new(OC);
    if (misalign) gw.gpu = dev_copy_shifted(gw.init, nw, 1);
    conv2d_backward_cpu(gx.cpu, gw.cpu, gb.cpu, dy, x, w, B, H, W, C, OC, K, stride, pad, Ho, Wo);
    conv2d_backward_cuda(gx.gpu, gw.gpu, gb.gpu, ddy, dx_, dw_, B, H, W, C, OC, K, stride, pad, Ho, Wo);
    snprintf(what, sizeof(what), "dinp [%s]", label);
    grad_cmp_l2(expect_dinp ? "conv2d_backward bf16 implicit dinp (L2)" : "conv2d_backward bf16 (L2)", what, &gx,
                TOL_BF16_L2);
    snprintf(what, sizeof(what), "dweight [%s]", label);
    grad_cmp_l2("conv2d_backward bf16 (L2)", what, &gw, TOL_BF16_L2);
    grad_cmp("conv2d_backward bf16 dbias", label, &gb, TOL_FP32);
    CHECK(ttt_cuda_bf16_calls(1) - calls == 2, "conv2d bf16 [%s]: %ld of 2 calls took the bf16 path", label,
          ttt_cuda_bf16_calls(1) - calls);
    long ran_fwd = ttt_cuda_conv_implicit_calls(0) - implicit_fwd, ran_dinp = ttt_cuda_conv_implicit_calls(1) - implicit_dinp;
    CHECK(ran_fwd == expect_fwd && ran_dinp == expect_dinp,
          "conv2d bf16 [%s]: implicit kernel ran forward %ld, dinp %ld times; expected %d, %d", label, ran_fwd,
          ran_dinp, expect_fwd, expect_dinp);
    free(x); free(w); free(b); free(dy); free(ref);
    dev_free_all();
    ttt_cuda_set_conv_implicit(-1);
    ttt_cuda_set_bf16_conv(-1);
    ttt_cuda_set_precision(PRECISION_TF32);
}
// the im2col bf16 path (implicit kernel off)
static void test_conv2d_bf16(const char* label, int B, int H, int W, int C, int OC, int K, int stride, int pad,
                             int Ho, int Wo, int with_bias, int misalign) {
    test_conv2d_bf16_path(label, 0, 0, 0, B, H, W, C, OC, K, stride, pad, Ho, Wo, with_bias, misalign);
}
// a same-size 3x3 conv with the implicit kernel on (ttt_cuda_set_conv_implicit(1))
static void test_conv2d_implicit(const char* label, int expect_fwd, int expect_dinp, int B, int H, int W, int C,
                                 int OC, int with_bias) {
    test_conv2d_bf16_path(label, 1, expect_fwd, expect_dinp, B, H, W, C, OC, 3, 1, 1, H, W, with_bias, 0);
}

// a linear that must take the bf16 operands (ttt_cuda_set_bf16_linear(2) around it)
static void test_linear_bf16(int N, int C, int OC, int with_bias, int misalign) {
    long calls = ttt_cuda_bf16_calls(0);
    test_linear(PRECISION_BF16, N, C, OC, with_bias, misalign, 0);   // 0: cuBLASLt never taken
    // forward, backward, backward_write
    CHECK(ttt_cuda_bf16_calls(0) - calls == 3, "linear bf16 N %d C %d OC %d: %ld of 3 calls took the bf16 path",
          N, C, OC, ttt_cuda_bf16_calls(0) - calls);
    ttt_cuda_set_precision(PRECISION_TF32);
}

// mlp (Swin's fc2(gelu(fc1(x)))) against the CPU. mode: the bf16 linear mode (2: every mlp on
// the bf16 path: pre kept in bf16, gelu(pre + b1) rounded straight into fc2's operand, dhidden
// written in bf16 and gelu's slope applied in place; 1: bf16 precision and the default size rules;
// 0: TF32 and float32 gelu passes); bf16_linears: how many of the four linear passes must take
// bf16 operands. dx and dhidden are written, so they start NaN-filled on the GPU; the parameter
// gradients accumulate from random values
static void test_mlp(int N, int C, int Ch, int mode, int bf16_linears) {
    ttt_cuda_set_precision(mode ? PRECISION_BF16 : PRECISION_TF32);
    ttt_cuda_set_bf16_linear(mode == 1 ? -1 : mode);
    double tol = linear_tol[mode ? PRECISION_BF16 : PRECISION_TF32];
    printf("mlp %s: N %d, C %d, Ch %d\n", mode == 2 ? "bf16 operands" : mode == 1 ? "bf16 default rules" : "tf32", N, C,
           Ch);
    size_t nx = (size_t)N * C, nh = (size_t)N * Ch, nw = (size_t)Ch * C;
    float *x = rnd(nx), *w1 = rnd(nw), *b1 = rnd(Ch), *w2 = rnd(nw), *b2 = rnd(C), *dy = rnd(nx);
    float *ref = (float*)mallocCheck(nx * sizeof(float)), *pre = (float*)mallocCheck(nh * sizeof(float));
    float *hid = (float*)mallocCheck(nh * sizeof(float)), *dh = (float*)mallocCheck(nh * sizeof(float));
    float *dx_ref = (float*)mallocCheck(nx * sizeof(float));
    float *x_ = dev_copy(x, nx), *w1_ = dev_copy(w1, nw), *b1_ = dev_copy(b1, Ch), *w2_ = dev_copy(w2, nw);
    float *b2_ = dev_copy(b2, C), *dy_ = dev_copy(dy, nx);
    float *out = dev_poison(nx), *pre_ = dev_poison(nh), *hid_ = dev_poison(nh);
    long calls = ttt_cuda_bf16_calls(0);
    mlp_forward_cpu(ref, pre, hid, x, w1, b1, w2, b2, N, C, Ch);
    mlp_forward_cuda(out, pre_, hid_, x_, w1_, b1_, w2_, b2_, N, C, Ch);
    dev_cmp_l2("mlp_forward", "mlp_forward out", out, ref, nx, tol);
    // the float32 paths: the backward from the CPU's pre (both sides see the same pre). In bf16
    // precision pre_ is the op's own storage (bf16 on the bf16 mlp path): the forward's is kept
    if (mode == 0) ttt_to_device(pre_, pre, nh * sizeof(float));
    Grad gw1 = grad_new_scaled(nw, 8.0f), gb1 = grad_new_scaled(Ch, 8.0f);
    Grad gw2 = grad_new_scaled(nw, 8.0f), gb2 = grad_new_scaled(C, 8.0f);
    float *dx_ = dev_poison(nx), *dh_ = dev_poison(nh);
    mlp_backward_cpu(dx_ref, gw1.cpu, gb1.cpu, gw2.cpu, gb2.cpu, dh, hid, dy, pre, x, w1, b1, w2, N, C, Ch);
    mlp_backward_cuda(dx_, gw1.gpu, gb1.gpu, gw2.gpu, gb2.gpu, dh_, hid_, dy_, pre_, x_, w1_, b1_, w2_, N, C, Ch);
    dev_cmp_l2("mlp_backward", "mlp_backward dx (written over NaN)", dx_, dx_ref, nx, tol);
    grad_cmp_l2("mlp_backward", "dw1", &gw1, tol);
    grad_cmp_l2("mlp_backward", "db1", &gb1, tol);
    grad_cmp_l2("mlp_backward", "dw2", &gw2, tol);
    grad_cmp_l2("mlp_backward", "db2", &gb2, tol);
    long took = ttt_cuda_bf16_calls(0) - calls;
    CHECK(took == bf16_linears, "mlp mode %d N %d C %d Ch %d: %ld linear passes on bf16 operands (expected %d)",
          mode, N, C, Ch, took, bf16_linears);
    free(x); free(w1); free(b1); free(w2); free(b2); free(dy);
    free(ref); free(pre); free(hid); free(dh); free(dx_ref);
    dev_free_all();
    ttt_cuda_set_bf16_linear(-1);
    ttt_cuda_set_precision(PRECISION_TF32);
}

// the size rule, the switch, and the precision gate of the bf16 linear (no products run)
static void test_bf16_linear_rule(void) {
    ttt_cuda_set_precision(PRECISION_BF16);
    ttt_cuda_set_bf16_linear(1);
    CHECK(ttt_cuda_bf16_linear_taken(4096, 256, 1024) == 1, "bf16 rule: 4096 x 256 x 1024 (2^30 products) not taken");
    CHECK(ttt_cuda_bf16_linear_taken(4095, 256, 1024) == 0, "bf16 rule: below 2^30 products taken");
    CHECK(ttt_cuda_bf16_linear_taken(1 << 20, 96, 1024) == 0, "bf16 rule: C 96 < 192 taken");
    CHECK(ttt_cuda_bf16_linear_taken(1 << 20, 1024, 96) == 0, "bf16 rule: OC 96 < 192 taken");
    CHECK(ttt_cuda_bf16_linear_taken(239616, 384, 1536) == 1, "bf16 rule: Swin-S stage 1 MLP at B 8 not taken");
    CHECK(ttt_cuda_bf16_linear_taken(800, 256, 2048) == 0, "bf16 rule: a 100-query decoder FFN at B 8 taken");
    ttt_cuda_set_bf16_linear(2);
    CHECK(ttt_cuda_bf16_linear_taken(3, 5, 7) == 1, "bf16 linear mode 2: a tiny linear not taken");
    ttt_cuda_set_bf16_linear(0);
    CHECK(ttt_cuda_bf16_linear_taken(4096, 1024, 1024) == 0, "bf16 linear off: taken");
    ttt_cuda_set_bf16_linear(2);
    ttt_cuda_set_precision(PRECISION_TF32);
    CHECK(ttt_cuda_bf16_linear_taken(4096, 1024, 1024) == 0, "tf32 precision: the bf16 linear taken");
    ttt_cuda_set_precision(PRECISION_FP32);
    CHECK(ttt_cuda_bf16_linear_taken(4096, 1024, 1024) == 0, "fp32 precision: the bf16 linear taken");
    ttt_cuda_set_bf16_linear(-1);
    ttt_cuda_set_precision(PRECISION_TF32);
}

// ----------------------------------------------------------------------------
// resizing, point sampling, position encoding

static void test_upsample(int B, int H, int W, int C, int Ho, int Wo) {
    size_t nin = (size_t)B * H * W * C, nout = (size_t)B * Ho * Wo * C;
    float *x = rnd(nin), *dy = rnd(nout);
    float *dx_ = dev_copy(x, nin), *ddy = dev_copy(dy, nout);
    float* ref = (float*)mallocCheck(nout * sizeof(float));
    for (int mode = 0; mode < 2; mode++) {
        float* out = dev_poison(nout);
        Grad g = grad_new(nin);
        if (mode == 0) {
            upsample_nearest_forward_cpu(ref, x, B, H, W, C, Ho, Wo);
            upsample_nearest_forward_cuda(out, dx_, B, H, W, C, Ho, Wo);
            upsample_nearest_backward_cpu(g.cpu, dy, B, H, W, C, Ho, Wo);
            upsample_nearest_backward_cuda(g.gpu, ddy, B, H, W, C, Ho, Wo);
        } else {
            upsample_bilinear_forward_cpu(ref, x, B, H, W, C, Ho, Wo);
            upsample_bilinear_forward_cuda(out, dx_, B, H, W, C, Ho, Wo);
            upsample_bilinear_backward_cpu(g.cpu, dy, B, H, W, C, Ho, Wo);
            upsample_bilinear_backward_cuda(g.gpu, ddy, B, H, W, C, Ho, Wo);
        }
        char what[64];
        snprintf(what, sizeof(what), "out [%dx%d -> %dx%d]", H, W, Ho, Wo);
        cmp(mode == 0 ? "upsample_nearest_forward" : "upsample_bilinear_forward", what, out, ref, nout, TOL_FP32);
        grad_cmp(mode == 0 ? "upsample_nearest_backward" : "upsample_bilinear_backward", "dinp", &g, TOL_FP32);
    }
    free(x); free(dy); free(ref);
    dev_free_all();
}

static void test_point_sample(int M, int H, int W, int P) {
    size_t nin = (size_t)M * H * W, nout = (size_t)M * P;
    float *x = rnd(nin), *dy = rnd(nout), *co = random_tensor(&rng, nout * 2, 0.0f, 1.0f);
    co[0] = 0.0f; co[1] = 1.0f; co[2] = 1.0f; co[3] = 0.0f;   // corners
    float *dx_ = dev_copy(x, nin), *ddy = dev_copy(dy, nout), *dco = dev_copy(co, nout * 2);
    float* ref = (float*)mallocCheck(nout * sizeof(float));
    float* out = dev_poison(nout);
    point_sample_forward_cpu(ref, x, co, M, H, W, P);
    point_sample_forward_cuda(out, dx_, dco, M, H, W, P);
    cmp("point_sample_forward", "out", out, ref, nout, TOL_FP32);
    Grad g = grad_new(nin);
    point_sample_backward_cpu(g.cpu, dy, co, M, H, W, P);
    point_sample_backward_cuda(g.gpu, ddy, dco, M, H, W, P);
    grad_cmp("point_sample_backward", "dinp", &g, TOL_FP32);
    free(x); free(dy); free(co); free(ref);
    dev_free_all();
}

static void test_sine(int H, int W, int C) {
    size_t n = (size_t)H * W * C;
    float* ref = (float*)mallocCheck(n * sizeof(float));
    float* out = dev_poison(n);
    sine_position_encoding_cpu(ref, H, W, C);
    sine_position_encoding_cuda(out, H, W, C);
    cmp("sine_position_encoding", "out", out, ref, n, TOL_FP32);
    free(ref);
    dev_free_all();
}

// multi-scale deformable attention: locations uniform in [-0.25, 1.25) (points inside, partly
// and wholly outside their maps), positive weights, pre-filled gradients; then the encoder's
// sampling locations (queries = the tokens of the same levels), which must match exactly
static void test_ms_deform(int B, int Lq, int NH, int HD, int L, int P, const int* shapes) {
    int start[MSDA_MAX_LEVELS];
    int S = ms_deform_level_starts(shapes, L, start);
    size_t nv = (size_t)B * S * NH * HD, na = (size_t)B * Lq * NH * L * P, nl = 2 * na, no = (size_t)B * Lq * NH * HD;
    float *v = rnd(nv), *dy = rnd(no);
    float* loc = random_tensor(&rng, nl, -0.25f, 1.25f);
    float* aw = random_tensor(&rng, na, 0.05f, 1.0f);
    float *d_v = dev_copy(v, nv), *d_loc = dev_copy(loc, nl), *d_aw = dev_copy(aw, na), *d_dy = dev_copy(dy, no);
    float* ref = (float*)mallocCheck(no * sizeof(float));
    float* out = dev_poison(no);
    ms_deform_attn_forward_cpu(ref, v, shapes, loc, aw, B, S, Lq, NH, HD, L, P);
    ms_deform_attn_forward_cuda(out, d_v, shapes, d_loc, d_aw, B, S, Lq, NH, HD, L, P);
    cmp("ms_deform_attn_forward", "out", out, ref, no, TOL_FP32);
    Grad gv = grad_new(nv), gl = grad_new(nl), ga = grad_new(na);
    ms_deform_attn_backward_cpu(gv.cpu, gl.cpu, ga.cpu, dy, v, shapes, loc, aw, B, S, Lq, NH, HD, L, P);
    ms_deform_attn_backward_cuda(gv.gpu, gl.gpu, ga.gpu, d_dy, d_v, shapes, d_loc, d_aw, B, S, Lq, NH, HD, L, P);
    grad_cmp("ms_deform_attn_backward", "dvalue", &gv, TOL_FP32);
    grad_cmp("ms_deform_attn_backward", "dloc", &gl, TOL_FP32);
    grad_cmp("ms_deform_attn_backward", "daw", &ga, TOL_FP32);
    // NULL gradients: daw alone
    Grad ga2 = grad_new(na);
    ms_deform_attn_backward_cpu(NULL, NULL, ga2.cpu, dy, v, shapes, loc, aw, B, S, Lq, NH, HD, L, P);
    ms_deform_attn_backward_cuda(NULL, NULL, ga2.gpu, d_dy, d_v, shapes, d_loc, d_aw, B, S, Lq, NH, HD, L, P);
    grad_cmp("ms_deform_attn_backward", "daw alone", &ga2, TOL_FP32);
    // sampling locations of the encoder (Lq = S): forward in place, backward accumulated
    size_t ne = (size_t)B * S * NH * L * P * 2;
    float* off = random_tensor(&rng, ne, -4.0f, 4.0f);
    float* lref = (float*)mallocCheck(ne * sizeof(float));
    float* d_off = dev_copy(off, ne);
    ms_deform_locations_forward_cpu(lref, off, shapes, B, L, NH, P);
    ms_deform_locations_forward_cuda(d_off, d_off, shapes, B, L, NH, P);
    cmp("ms_deform_locations_forward", "loc (in place)", d_off, lref, ne, 0.0);
    float* dloc = rnd(ne);
    float* d_dloc = dev_copy(dloc, ne);
    Grad go = grad_new(ne);
    ms_deform_locations_backward_cpu(go.cpu, dloc, shapes, B, L, NH, P);
    ms_deform_locations_backward_cuda(go.gpu, d_dloc, shapes, B, L, NH, P);
    grad_cmp("ms_deform_locations_backward", "doff", &go, TOL_FP32);
    free(v); free(dy); free(loc); free(aw); free(ref); free(off); free(lref); free(dloc);
    dev_free_all();
}

// ----------------------------------------------------------------------------
// losses

static void test_masked_mse(int N, int C) {
    size_t n = (size_t)N * C;
    float *p = rnd(n), *t = rnd(n), *m = (float*)mallocCheck(N * sizeof(float));
    for (int i = 0; i < N; i++) m[i] = rng_uniform(&rng) < 0.75f ? 1.0f : 0.0f;
    float *dp = dev_copy(p, n), *dt = dev_copy(t, n), *dm = dev_copy(m, N);
    float ref;
    float* loss = dev_poison(1);
    masked_mse_forward_cpu(&ref, p, t, m, N, C);
    masked_mse_forward_cuda(loss, dp, dt, dm, N, C);
    cmp("masked_mse_forward", "loss", loss, &ref, 1, TOL_FP32);
    Grad g = grad_new_scaled(n, 1e-4f);   // increments are about 2 / (0.75 N C)
    masked_mse_backward_cpu(g.cpu, 0.7f, p, t, m, N, C);
    masked_mse_backward_cuda(g.gpu, 0.7f, dp, dt, dm, N, C);
    grad_cmp("masked_mse_backward", "dpred", &g, TOL_FP32);
    free(p); free(t); free(m);
    dev_free_all();
}

static void test_cross_entropy(int N, int C, int weighted) {
    size_t n = (size_t)N * C;
    float *x = random_tensor(&rng, n, -4.0f, 4.0f), *cw = weighted ? random_tensor(&rng, C, 0.1f, 2.0f) : NULL;
    int* t = (int*)mallocCheck(N * sizeof(int));
    for (int i = 0; i < N; i++) t[i] = rng_uniform(&rng) < 0.1f ? 255 : rng_int(&rng, C);
    float *dx_ = dev_copy(x, n), *dcw = cw ? dev_copy(cw, C) : NULL;
    int* dt = dev_copy_int(t, N);
    float ref;
    float* loss = dev_poison(1);
    cross_entropy_forward_cpu(&ref, x, t, cw, N, C, 255);
    cross_entropy_forward_cuda(loss, dx_, dt, dcw, N, C, 255);
    cmp("cross_entropy_forward", weighted ? "loss (weighted)" : "loss", loss, &ref, 1, TOL_FP32);
    Grad g = grad_new_scaled(n, 1e-2f);   // increments are about 1 / N
    cross_entropy_backward_cpu(g.cpu, 1.3f, x, t, cw, N, C, 255);
    cross_entropy_backward_cuda(g.gpu, 1.3f, dx_, dt, dcw, N, C, 255);
    grad_cmp("cross_entropy_backward", "dlogits", &g, TOL_FP32);
    free(x); free(cw); free(t);
    dev_free_all();
}

static void test_mask_losses(int M, int P) {
    size_t n = (size_t)M * P;
    float *x = random_tensor(&rng, n, -5.0f, 5.0f), *t = random_tensor(&rng, n, 0.0f, 1.0f), *dl = rnd(M);
    for (size_t i = 0; i < n; i += 2) t[i] = t[i] < 0.5f ? 0.0f : 1.0f;   // half binary
    float *dx_ = dev_copy(x, n), *dt = dev_copy(t, n), *ddl = dev_copy(dl, M);
    float* ref = (float*)mallocCheck(M * sizeof(float));
    for (int k = 0; k < 2; k++) {
        float* out = dev_poison(M);
        Grad g = grad_new_scaled(n, k == 0 ? 1e-3f : 1e-2f);   // bce increments are about 1 / P
        if (k == 0) {
            sigmoid_bce_forward_cpu(ref, x, t, M, P); sigmoid_bce_forward_cuda(out, dx_, dt, M, P);
            sigmoid_bce_backward_cpu(g.cpu, dl, x, t, M, P); sigmoid_bce_backward_cuda(g.gpu, ddl, dx_, dt, M, P);
        } else {
            dice_loss_forward_cpu(ref, x, t, M, P); dice_loss_forward_cuda(out, dx_, dt, M, P);
            dice_loss_backward_cpu(g.cpu, dl, x, t, M, P); dice_loss_backward_cuda(g.gpu, ddl, dx_, dt, M, P);
        }
        cmp(k == 0 ? "sigmoid_bce_forward" : "dice_loss_forward", "losses", out, ref, M, TOL_FP32);
        grad_cmp(k == 0 ? "sigmoid_bce_backward" : "dice_loss_backward", "dlogits", &g, TOL_FP32);
    }
    free(x); free(t); free(dl); free(ref);
    dev_free_all();
}

// ----------------------------------------------------------------------------
// ops of the model files: Mask2Former attention mask, MAE input preparation

static void test_attn_mask(int B, int Q, int T) {
    size_t n = (size_t)B * Q * T;
    float* x = random_tensor(&rng, n, -3.0f, 1.0f);
    for (int t = 0; t < T; t++) x[t] = -1.0f - t;   // row 0 fully blocked: reopened
    float* dx_ = dev_copy(x, n);
    float* ref = (float*)mallocCheck(n * sizeof(float));
    float* out = dev_poison(n);
    attn_mask_from_logits_cpu(ref, x, B, Q, T);
    attn_mask_from_logits_cuda(out, dx_, B, Q, T);
    // -inf entries: compare as 1 / 0 flags (inf - inf is NaN)
    float* got = host_copy_of(out, n);
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) if (got[i] != ref[i]) diff++;
    printf("%-4s %-48s %zu of %zu differ\n", diff == 0 ? "ok" : "FAIL", "attn_mask_from_logits mask_add", diff, n);
    CHECK(diff == 0, "attn_mask_from_logits: %zu elements differ", diff);
    record("attn_mask_from_logits", diff == 0 ? 0.0 : 1.0, 0.0);
    free(x); free(ref); free(got);
    dev_free_all();
}

static void test_mae_prepare(int B, int H, int W, int Hp, int Wp, int ps) {
    size_t nrgb = (size_t)B * H * W * 3, nin = (size_t)B * Hp * Wp * 4, nt = (size_t)B * 48 * (Hp / 4) * (Wp / 4);
    size_t nm = (size_t)B * (Hp / ps) * (Wp / ps);
    float* rgb = random_tensor(&rng, nrgb, 0.0f, 1.0f);
    unsigned char* pm = (unsigned char*)mallocCheck(nm);
    for (size_t i = 0; i < nm; i++) pm[i] = rng_uniform(&rng) < 0.8f;
    float* drgb = dev_copy(rgb, nrgb);
    unsigned char* dpm = (unsigned char*)dev_alloc(nm);
    ttt_to_device(dpm, pm, nm);
    float *ri = (float*)mallocCheck(nin * sizeof(float)), *rt = (float*)mallocCheck(nt * sizeof(float)), *rm = (float*)mallocCheck(nt * sizeof(float));
    float *gi = dev_poison(nin), *gt = dev_poison(nt), *gm = dev_poison(nt);
    for (int all_pixels = 0; all_pixels <= 1; all_pixels++) {   // loss over masked / all pixels
        mae_prepare_input_cpu(ri, rt, rm, rgb, pm, B, H, W, Hp, Wp, ps, all_pixels);
        mae_prepare_input_cuda(gi, gt, gm, drgb, dpm, B, H, W, Hp, Wp, ps, all_pixels);
        cmp("mae_prepare_input", "inp4", gi, ri, nin, TOL_FP32);
        cmp("mae_prepare_input", "target", gt, rt, nt, TOL_FP32);
        cmp("mae_prepare_input", all_pixels ? "target_mask (all pixels)" : "target_mask", gm, rm, nt, TOL_FP32);
    }
    // the main task's input (no mask): indicator 1 everywhere
    mae_prepare_input_cpu(ri, NULL, NULL, rgb, NULL, B, H, W, Hp, Wp, ps, 0);
    mae_prepare_input_cuda(gi, NULL, NULL, drgb, NULL, B, H, W, Hp, Wp, ps, 0);
    cmp("mae_prepare_input", "inp4 (no mask)", gi, ri, nin, TOL_FP32);
    free(rgb); free(pm); free(ri); free(rt); free(rm);
    dev_free_all();
}

// ----------------------------------------------------------------------------
// optimizer, sum of squares

static void test_adamw(size_t N) {
    float *p = rnd(N), *g = rnd(N), *m = rnd(N), *v = random_tensor(&rng, N, 0.0f, 1.0f);
    float *dp = dev_copy(p, N), *dg = dev_copy(g, N), *dm = dev_copy(m, N), *dv = dev_copy(v, N);
    for (int t = 1; t <= 3; t++) {
        adamw_update_cpu(p, g, m, v, N, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.05f, t);
        adamw_update_cuda(dp, dg, dm, dv, N, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.05f, t);
    }
    cmp("adamw_update", "params", dp, p, N, TOL_FP32);
    cmp("adamw_update", "m", dm, m, N, TOL_FP32);
    cmp("adamw_update", "v", dv, v, N, TOL_FP32);
    free(p); free(g); free(m); free(v);
    dev_free_all();
}

static void test_sum_squares(size_t N) {
    float* x = rnd(N);
    float* dx_ = dev_copy(x, N);
    float ref;
    float* out = dev_poison(1);
    sum_squares_cpu(&ref, x, N);
    sum_squares_cuda(out, dx_, N);
    cmp("sum_squares", "out", out, &ref, 1, TOL_FP32);
    free(x);
    dev_free_all();
}

// semantic inference: class ids from class and mask logits. ids are discrete, so the
// measure is the fraction of pixels that agree (1 - that is recorded as the error);
// with one class clearly ahead everywhere they must agree exactly.
// H x W crop of the x4 maps, scored at Ho x Wo (the released code's resize back to the original size)
static void test_semantic_inference(int Q, int K, int H4, int W4, int H, int W, int Ho, int Wo, int separated) {
    size_t ncls = (size_t)Q * (K + 1), nmask = (size_t)Q * H4 * W4;
    float* cls = random_tensor(&rng, ncls, -3.0f, 3.0f);
    float* msk = random_tensor(&rng, nmask, -4.0f, 4.0f);
    if (separated)   // query q votes for class q % K with a large margin, masks in blocks
        for (int q = 0; q < Q; q++) {
            for (int k = 0; k <= K; k++) cls[(size_t)q * (K + 1) + k] = (k == q % K) ? 8.0f : -8.0f;
            for (int p = 0; p < H4 * W4; p++)
                msk[(size_t)q * H4 * W4 + p] = ((p % W4) * Q / W4 == q) ? 9.0f : -9.0f;
        }
    float* work = (float*)mallocCheck(m2f_semantic_work_size(Q, K, H4, W4) * sizeof(float));
    unsigned char* ref = (unsigned char*)mallocCheck((size_t)Ho * Wo);
    unsigned char* got = (unsigned char*)mallocCheck((size_t)Ho * Wo);
    m2f_semantic_inference(ref, cls, msk, Q, K, H4, W4, H, W, Ho, Wo, work);
    float* dcls = dev_copy(cls, ncls);
    float* dmsk = dev_copy(msk, nmask);
    float* dwork = (float*)dev_alloc(m2f_semantic_work_size(Q, K, H4, W4) * sizeof(float));
    unsigned char* dids = (unsigned char*)dev_alloc((size_t)Ho * Wo);
    semantic_inference_cuda(dids, dcls, dmsk, Q, K, H4, W4, H, W, Ho, Wo, dwork);
    ttt_to_host(got, dids, (size_t)Ho * Wo);
    size_t agree = 0;
    for (size_t i = 0; i < (size_t)Ho * Wo; i++) agree += got[i] == ref[i];
    double frac = (double)agree / ((double)Ho * Wo), tol = separated ? 0.0 : 1e-3;
    int ok = 1.0 - frac <= tol;
    printf("%-4s semantic_inference Q%d K%d %dx%d -> %dx%d -> %dx%d%s: ids agree on %.5f of pixels\n", ok ? "ok" : "FAIL",
           Q, K, H4, W4, H, W, Ho, Wo, separated ? " (separated)" : "", frac);
    if (ok) tests_passed++; else tests_failed++;
    record("semantic_inference (1-agree)", 1.0 - frac, 1e-3);
    free(cls); free(msk); free(work); free(ref); free(got);
    dev_free_all();
}

// ----------------------------------------------------------------------------

int main(void) {
    if (!ttt_cuda_available()) {
        printf("no CUDA device: skipped\n");
        return test_summary("gpu_ops");
    }
    ttt_set_device(DEVICE_CUDA);
    ttt_cuda_set_precision(PRECISION_TF32);   // the tolerances below are TF32's (TTT_PRECISION aside)
    rng_seed(&rng, 20261122);
    CHECK(ttt_cuda_device_count() > 0, "device count");

    test_elementwise(1000003);
    test_scale_rows(7, 10007);
    test_scale_rows(8, (size_t)56 * 56 * 96);   // Swin-S stage 1 rows of 224x224 images
    test_activations(100003);
    // linear in each precision: cuBLASLt's epilogues (off by default, TTT_LINEAR_LT=1) where the
    // shapes allow, the fallback where not
    ttt_cuda_set_linear_lt(1);
    for (int p = PRECISION_FP32; p <= PRECISION_BF16; p++) {
        test_linear(p, 257, 132, 96, 1, 0, 1);     // rows of multiples of 4: cuBLASLt
        test_linear(p, 3136, 96, 288, 1, 0, 1);    // Swin-S stage 1 qkv on a 56x56 map
        test_linear(p, 100, 256, 20, 1, 0, 1);     // Mask2Former class head, 100 queries
        test_linear(p, 257, 131, 97, 1, 0, 0);     // odd rows: the fallback
        test_linear(p, 61, 37, 29, 0, 0, 0);       // no bias: a plain GEMM
        test_linear(p, 255, 64, 128, 1, 1, -1);    // 4-byte aligned: cuBLASLt's heuristic decides
    }
    ttt_cuda_set_linear_lt(0);                     // the default: cuBLAS GEMM + bias kernels
    test_linear(PRECISION_TF32, 257, 132, 96, 1, 0, 0);
    test_linear(PRECISION_BF16, 3136, 96, 288, 1, 0, 0);
    ttt_cuda_set_precision(PRECISION_TF32);        // the rest at the default precision
    test_layernorm(1001, 97);
    test_layernorm(3136, 96);
    test_layernorm_paths("float4, 8 lanes a row", 1001, 96, 0, 0);
    test_layernorm_paths("float4, 4 units a lane, many rows a block", 20011, 100, 0, 0);
    test_layernorm_paths("float4, parameters misaligned", 3001, 192, 0, 1);
    test_layernorm_paths("float4, Swin stage 3", 2999, 384, 0, 0);
    test_layernorm_paths("float4, 6 units a lane", 3001, 768, 0, 0);
    test_layernorm_paths("float4, 6 units a lane, parameters misaligned", 50, 768, 0, 1);
    test_layernorm_paths("scalar, C 50", 1001, 50, 0, 0);
    test_layernorm_paths("scalar, rows misaligned", 777, 96, 1, 0);
    test_layernorm_paths("scalar, 8 units a lane, all misaligned", 333, 256, 1, 1);
    test_layernorm_paths("scalar, C 5", 37, 5, 0, 1);
    test_layernorm_paths("one row", 1, 16, 0, 0);
    test_layernorm_paths("forward 8 units a lane, backward fallback", 301, 1000, 0, 0);
    test_layernorm_paths("forward 12 units a lane (patch merge 4 x 384)", 101, 1536, 0, 1);
    test_layernorm_paths("fallback, C 1540", 67, 1540, 0, 0);
    test_layernorm_paths("scalar fallback, C 257", 101, 257, 0, 0);
    test_layernorm_paths("scalar fallback, C 1000 misaligned", 45, 1000, 1, 1);
    test_groupnorm(3, 257, 64, 32);
    test_groupnorm(2, 1000, 256, 32);
    test_groupnorm(1, 4099, 320, 32);   // C above the block's threads, many chunks at B = 1
    test_groupnorm(3, 7488, 256, 32);   // 1/8 of 384x1248: 351 (b, chunk) rows of parameter sums
    test_softmax(333, 77);
    test_softmax(101, 1000);
    test_attention("generic", 3, 17, 23, 3, 8, 1, 1, 2, 3);
    test_attention("fused qkv, bias, no mask", 5, 19, 19, 2, 12, 0, 1, 0, 1);
    test_attention("Swin-S stage 1 shifted windows", 128, 49, 49, 3, 32, 0, 1, 1, 64);
    test_attention("Swin-S stage 3 windows, 12 heads", 10, 49, 49, 12, 32, 0, 1, 0, 1);
    test_attention("window, -inf mask, padded q", 6, 49, 49, 3, 32, 1, 1, 2, 3);
    ttt_cuda_set_fused_attention(0);   // the same cases through the cuBLAS path
    test_attention("cuBLAS path: fused qkv, bias, no mask", 5, 19, 19, 2, 12, 0, 1, 0, 1);
    test_attention("cuBLAS path: Swin-S stage 1 shifted windows", 128, 49, 49, 3, 32, 0, 1, 1, 64);
    ttt_cuda_set_fused_attention(1);
    test_attention("Mask2Former masked cross-attn", 2, 100, 468, 8, 32, 1, 0, 2, 2);
    // window attention without the attention map: B*nW windows like Swin-S's (T = 49, HS = 32),
    // 3 and 12 heads, with and without the shift mask; odd sizes for every head-size tile (DC = 1..4)
    long watt_tc_before = ttt_cuda_watt_tc_calls(0) + ttt_cuda_watt_tc_calls(1);   // tf32: float32 kernels only
    test_window_attention("odd, separate q, -inf mask + all -inf row", 7, 13, 3, 5, 1, 1, 3, 3, TOL_FP32, TOL_WATT_BWD);
    test_window_attention("Swin-S stage 1 shifted, 203 windows", 203, 49, 3, 32, 0, 1, 1, 7, TOL_FP32, TOL_WATT_BWD);
    test_window_attention("Swin-S stage 1, 203 windows, no mask", 203, 49, 3, 32, 0, 1, 0, 1, TOL_FP32, TOL_WATT_BWD);
    test_window_attention("Swin-S stage 3, 12 heads, 203 windows", 203, 49, 12, 32, 0, 1, 0, 1, TOL_FP32, TOL_WATT_BWD);
    test_window_attention("Swin-S stage 3 shifted, 12 heads, 200 windows", 200, 49, 12, 32, 0, 1, 1, 4, TOL_FP32, TOL_WATT_BWD);
    test_window_attention("12 heads, 1000 windows (5 per block)", 1000, 49, 12, 32, 0, 1, 1, 10, TOL_FP32, TOL_WATT_BWD);
    test_window_attention("6 heads, no rel_bias", 50, 49, 6, 32, 0, 0, 1, 5, TOL_FP32, TOL_WATT_BWD);
    test_window_attention("T 33, HS 40, -inf mask", 11, 33, 2, 40, 1, 1, 3, 2, TOL_FP32, TOL_WATT_BWD);
    test_window_attention("T 64, HS 64 (over 48 KiB shared)", 9, 64, 2, 64, 1, 1, 3, 3, TOL_FP32, TOL_WATT_BWD);
    test_window_attention("T 1 (no rel_bias: its gradient is 0)", 5, 1, 2, 16, 0, 0, 0, 1, TOL_FP32, TOL_WATT_BWD);
    test_window_attention("old path: T 70 > 64", 6, 70, 2, 16, 1, 1, 3, 2, TOL_TF32, TOL_TF32);
    ttt_cuda_set_fused_attention(0);
    test_window_attention("old path: fused off, Swin-S stage 1 shifted", 40, 49, 3, 32, 0, 1, 1, 8, TOL_TF32, TOL_TF32);
    ttt_cuda_set_fused_attention(1);
    CHECK(ttt_cuda_watt_tc_calls(0) + ttt_cuda_watt_tc_calls(1) == watt_tc_before,
          "tf32 window attention ran the tensor-core kernels");
    // the tensor cores in bf16 (bounds at test_window_attention_tc): Swin-S stages 1, 3 and 4
    // (T 49, HS 32, 3 / 12 / 24 heads) shifted and not, 1000 windows (6 per backward block), no
    // rel_bias, T 33 (padded keys), T 64 (no padding), T 16, 13 and 2 (warps without rows), HS 16,
    // 48, 64, packed qkv and separate q, -inf masks with an all -inf row, NULL gradient combinations
    test_window_attention_tc("Swin-S stage 1 shifted, 203 windows", 203, 49, 3, 32, 0, 1, 1, 7, 15);
    test_window_attention_tc("Swin-S stage 1, 203 windows, no mask", 203, 49, 3, 32, 0, 1, 0, 1, 15);
    test_window_attention_tc("Swin-S stage 3, 12 heads, 203 windows", 203, 49, 12, 32, 0, 1, 0, 1, 15);
    test_window_attention_tc("Swin-S stage 3 shifted, 12 heads, 200 windows", 200, 49, 12, 32, 0, 1, 1, 4, 15);
    test_window_attention_tc("Swin-S stage 4, 24 heads, 24 windows", 24, 49, 24, 32, 0, 1, 0, 1, 15);
    test_window_attention_tc("12 heads, 1000 windows (6 per block)", 1000, 49, 12, 32, 0, 1, 1, 10, 15);
    test_window_attention_tc("6 heads, no rel_bias", 50, 49, 6, 32, 0, 0, 1, 5, 7);
    test_window_attention_tc("T 49, separate q, -inf mask + all -inf row", 20, 49, 3, 32, 1, 1, 3, 3, 15);
    test_window_attention_tc("T 33, HS 48, -inf mask + all -inf row", 11, 33, 2, 48, 1, 1, 3, 2, 15);
    test_window_attention_tc("T 64, HS 64, -inf mask + all -inf row", 9, 64, 2, 64, 1, 1, 3, 3, 15);
    test_window_attention_tc("T 64, HS 32, packed qkv, -100 mask", 30, 64, 4, 32, 0, 1, 1, 3, 15);
    test_window_attention_tc("T 16, HS 16", 40, 16, 2, 16, 0, 1, 0, 1, 15);
    test_window_attention_tc("T 49, HS 64, packed qkv, shift mask", 20, 49, 4, 64, 0, 1, 1, 5, 15);
    test_window_attention_tc("T 2, HS 16, separate q, no rel_bias", 13, 2, 2, 16, 1, 0, 0, 1, 7);
    test_window_attention_tc("T 13, HS 16, separate q, -inf mask + all -inf row", 7, 13, 3, 16, 1, 1, 3, 3, 15);
    test_window_attention_tc("dq NULL", 50, 49, 3, 32, 1, 1, 1, 5, 14);
    test_window_attention_tc("dk NULL", 50, 49, 3, 32, 1, 1, 1, 5, 13);
    test_window_attention_tc("dv NULL", 50, 49, 3, 32, 1, 1, 1, 5, 11);
    test_window_attention_tc("drel_bias NULL", 50, 49, 3, 32, 0, 1, 1, 5, 7);
    test_window_attention_tc("drel_bias only", 50, 49, 3, 32, 0, 1, 1, 5, 8);
    test_window_attention_tc("dq only, packed qkv", 50, 49, 3, 32, 0, 1, 0, 1, 1);
    // bf16 with the tensor cores switched off, or a head size they do not take: the float32 kernels
    {
        ttt_cuda_set_precision(PRECISION_BF16);
        long before = ttt_cuda_watt_tc_calls(0) + ttt_cuda_watt_tc_calls(1);
        ttt_cuda_set_watt_tc(0);
        test_window_attention("bf16, tensor cores off: Swin-S stage 1 shifted", 40, 49, 3, 32, 0, 1, 1, 8, TOL_FP32,
                              TOL_WATT_BWD);
        ttt_cuda_set_watt_tc(1);
        test_window_attention("bf16, HS 40: float32 kernels", 11, 33, 2, 40, 1, 1, 3, 2, TOL_FP32, TOL_WATT_BWD);
        CHECK(ttt_cuda_watt_tc_calls(0) + ttt_cuda_watt_tc_calls(1) == before,
              "bf16 window attention: the tensor-core kernels ran while off or at HS 40");
        ttt_cuda_set_watt_tc(-1);
        ttt_cuda_set_precision(PRECISION_TF32);
    }
    // flash attention (Mask2Former's decoder): g's 48 and h's 100 queries over memory levels of
    // 37, 512 and 2000 tokens, 8 heads of 32, -inf masks (mask_kind 3: with a query whose every
    // key is blocked); self-attention; head sizes 16, 64 and odd ones (zero-padded tiles)
    long fatt_tc_before = ttt_cuda_fatt_tc_calls();   // tf32 below: the float32 kernels only
    {
        const int Tqs[2] = {48, 100}, Tks[3] = {37, 512, 2000};
        for (int a = 0; a < 2; a++) for (int t = 0; t < 3; t++) {
            char label[96];
            snprintf(label, sizeof(label), "Tq %d, Tk %d, -inf mask + all -inf row", Tqs[a], Tks[t]);
            test_flash_attention(label, 2, Tqs[a], Tks[t], 8, 32, 1, 3, 2, TOL_FLASH);
        }
    }
    // the key splits (ttt_kernels.cu: about 1024 blocks): the cases above run 1 (Tk 37), 2 (Tk 512)
    // and 8 (Tk 2000) splits; 7 splits with a short last one; 1344 blocks: no split over 5 key tiles
    test_flash_attention("Tq 100, Tk 2000, one mask for 3 batches", 3, 100, 2000, 8, 32, 1, 2, 1, TOL_FLASH);
    test_flash_attention("B 24, Tq 100, Tk 300: no key split", 24, 100, 300, 8, 32, 1, 3, 5, TOL_FLASH);
    test_flash_attention("self-attention 100 queries, fused qkv, no mask", 2, 100, 100, 8, 32, 0, 0, 1, TOL_FLASH);
    test_flash_attention("self-attention 48 queries, B 32", 32, 48, 48, 8, 32, 1, 0, 1, TOL_FLASH);
    test_flash_attention("HS 16, Tq 20, Tk 300", 2, 20, 300, 4, 16, 1, 3, 2, TOL_FLASH);
    test_flash_attention("HS 64, Tq 100, Tk 512", 2, 100, 512, 4, 64, 1, 3, 2, TOL_FLASH);
    test_flash_attention("HS 5, Tq 7, Tk 13", 3, 7, 13, 2, 5, 1, 3, 3, TOL_FLASH);
    // one query over two keys (with ONE key, dq is exactly 0 on the CPU and a few 1e-8 of rounding
    // on the GPU: a relative error against zero, so that case is not a useful check)
    test_flash_attention("HS 40, Tq 1, Tk 2", 2, 1, 2, 3, 40, 1, 0, 1, TOL_FLASH);
    test_flash_attention("old path: HS 72 > 64", 2, 33, 150, 2, 72, 1, 3, 2, TOL_TF32);
    ttt_cuda_set_fused_attention(0);
    test_flash_attention("old path: fused off, Tq 100, Tk 512", 2, 100, 512, 8, 32, 1, 3, 2, TOL_TF32);
    ttt_cuda_set_fused_attention(1);
    CHECK(ttt_cuda_fatt_tc_calls() == fatt_tc_before, "tf32 flash attention ran the tensor-core kernels");
    // the tensor cores in bf16 (bounds at test_flash_attention_tc): h's 100 and g's 48 queries over
    // memory levels at 384x1248 (468, 1872 and 7488 keys at B 1 with 30 key splits), self-attention on
    // packed q, k, v, head sizes 16, 48, 64, odd Tq and Tk (partial query and key tiles, query tiles
    // with idle warps), key splits with a short last split (Tk 1872: 8 splits, the last of 2 tiles,
    // its last tile of 16 keys) and without (Tk <= 256), NULL gradients
    test_flash_attention_tc("h: Tq 100, Tk 1872, -inf mask + all -inf row", 2, 100, 1872, 8, 32, 1, 3, 2, 7);
    test_flash_attention_tc("h at B 8: Tq 100, Tk 1872", 8, 100, 1872, 8, 32, 1, 2, 8, 7);
    test_flash_attention_tc("g: Tq 48, Tk 468, -inf mask + all -inf row", 2, 48, 468, 8, 32, 1, 3, 2, 7);
    test_flash_attention_tc("Tq 48, Tk 37: one partial key tile", 2, 48, 37, 8, 32, 1, 3, 2, 7);
    test_flash_attention_tc("self-attention 100, packed qkv, no mask", 2, 100, 100, 8, 32, 0, 0, 1, 7);
    test_flash_attention_tc("self-attention 48, packed qkv, B 8", 8, 48, 48, 8, 32, 0, 0, 1, 7);
    test_flash_attention_tc("B 1, Tq 100, Tk 7488: 30 key splits", 1, 100, 7488, 8, 32, 1, 2, 1, 7);
    test_flash_attention_tc("B 1, Tq 48, Tk 1872: 8 key splits", 1, 48, 1872, 8, 32, 1, 3, 1, 7);
    test_flash_attention_tc("HS 16, Tq 20, Tk 300", 2, 20, 300, 4, 16, 1, 3, 2, 7);
    test_flash_attention_tc("HS 48, Tq 37, Tk 129", 3, 37, 129, 2, 48, 1, 1, 3, 7);
    test_flash_attention_tc("HS 64, Tq 100, Tk 512", 2, 100, 512, 4, 64, 1, 3, 2, 7);
    test_flash_attention_tc("HS 64, self-attention 37, packed qkv", 2, 37, 37, 4, 64, 0, 3, 1, 7);
    test_flash_attention_tc("Tq 37, Tk 129, -100 mask", 3, 37, 129, 8, 32, 1, 1, 3, 7);
    test_flash_attention_tc("Tq 129, Tk 37: 3 query tiles", 2, 129, 37, 4, 32, 1, 3, 2, 7);
    test_flash_attention_tc("dq NULL", 2, 100, 300, 8, 32, 1, 3, 2, 6);
    test_flash_attention_tc("dk NULL", 2, 100, 300, 8, 32, 1, 3, 2, 5);
    test_flash_attention_tc("dv NULL", 2, 100, 300, 8, 32, 1, 3, 2, 3);
    test_flash_attention_tc("dq only, packed qkv", 2, 100, 100, 8, 32, 0, 2, 2, 1);
    test_flash_attention_tc("dk, dv only, B 1, key splits", 1, 100, 1872, 8, 32, 1, 3, 1, 6);
    // bf16 with the tensor cores switched off, or a head size they do not take: the float32 kernels
    {
        ttt_cuda_set_precision(PRECISION_BF16);
        long before = ttt_cuda_fatt_tc_calls();
        ttt_cuda_set_fatt_tc(0);
        test_flash_attention("bf16, tensor cores off: Tq 100, Tk 512", 2, 100, 512, 8, 32, 1, 3, 2, TOL_FLASH);
        ttt_cuda_set_fatt_tc(1);
        test_flash_attention("bf16, HS 40: float32 kernels", 2, 33, 150, 2, 40, 1, 3, 2, TOL_FLASH);
        CHECK(ttt_cuda_fatt_tc_calls() == before, "bf16 flash attention: the tensor-core kernels ran while off or at HS 40");
        ttt_cuda_set_fatt_tc(-1);
        ttt_cuda_set_precision(PRECISION_TF32);
    }
    test_bias_gather(7, 3);
    test_bias_gather(3, 5);
    test_windows(2, 13, 17, 5, 7, 3);
    test_windows(2, 13, 17, 5, 7, 0);
    test_windows(1, 96, 312, 96, 7, 3);     // Swin-S stage 1 at 384x1248
    test_swin_fusions(2, 13, 17, 5, 7, 3);
    test_swin_fusions(3, 13, 17, 5, 7, 0);
    test_swin_fusions(2, 5, 3, 33, 7, 3);    // one window per image, mostly padding
    test_swin_fusions(1, 96, 312, 96, 7, 3); // Swin-S stage 1 at 384x1248
    test_swin_fusions(2, 13, 17, 100, 7, 3); // float4 rows, 4 units a lane
    test_swin_fusions(1, 24, 78, 768, 7, 3); // Swin-S stage 4 rows at 1/32 of 768x2496
    test_swin_fusions(2, 13, 17, 1000, 7, 3);// LayerNorm backward fallback
    dev_misalign = 1;                        // every buffer 4-byte aligned only: the scalar paths
    test_swin_fusions(2, 13, 17, 96, 7, 3);
    test_swin_fusions(1, 96, 312, 96, 7, 3);
    test_elementwise(1000003);
    test_activations(100003);
    dev_misalign = 0;
    test_swin_paths("float4", 2, 13, 17, 96, 7, 3, 0, 0);
    test_swin_paths("float4, no shift", 3, 13, 17, 96, 7, 0, 0, 0);
    test_swin_paths("float4, parameters misaligned", 2, 13, 17, 192, 7, 3, 0, 1);
    test_swin_paths("float4, 6 units a lane", 1, 20, 23, 768, 7, 3, 0, 0);
    test_swin_paths("scalar, C 50", 2, 13, 17, 50, 7, 3, 0, 0);
    test_swin_paths("scalar, rows misaligned", 2, 13, 17, 96, 7, 3, 1, 0);
    test_swin_paths("fallback, C 1000", 1, 13, 17, 1000, 7, 3, 0, 0);
    test_swin_paths("Swin-S stage 1 at 384x1248", 1, 96, 312, 96, 7, 3, 0, 0);
    test_patch_merge(2, 13, 17, 7);
    test_patch_merge(1, 56, 56, 96);
    test_conv2d(2, 13, 11, 5, 7, 3, 1, 1, 13, 11, 1);     // same-size 3x3
    test_conv2d(2, 30, 37, 4, 96, 4, 4, 0, 8, 10, 1);     // Swin patch embed, ragged edge
    test_conv2d(2, 9, 7, 33, 17, 1, 1, 0, 9, 7, 1);       // 1x1 (linear path)
    test_conv2d(1, 15, 13, 6, 9, 3, 2, 1, 8, 7, 0);       // strided, no bias
    test_conv2d(1, 24, 78, 256, 256, 3, 1, 1, 24, 78, 0); // FPN 3x3 at 1/16 of 384x1248
    // same-size 3x3 by shifted GEMMs: odd sizes, tiny maps, C != OC both ways, C ~ 256
    test_conv2d_path("shifted", 2, 13, 11, 5, 7, 3, 1, 1, 13, 11, 1);
    test_conv2d_path("shifted", 3, 7, 9, 7, 5, 3, 1, 1, 7, 9, 0);
    test_conv2d_path("shifted", 3, 1, 1, 5, 7, 3, 1, 1, 1, 1, 1);   // 1x1 map: only the centre tap
    test_conv2d_path("shifted", 2, 2, 17, 3, 33, 3, 1, 1, 2, 17, 1);
    test_conv2d_path("shifted", 2, 5, 6, 255, 257, 3, 1, 1, 5, 6, 1);
    test_conv2d_path("shifted", 1, 24, 78, 256, 256, 3, 1, 1, 24, 78, 0);
    ttt_cuda_set_conv_scratch_floats(4000);               // force chunks: 2+1 and 3+2 images
    test_conv2d_path("chunked", 3, 11, 13, 9, 6, 3, 1, 1, 11, 13, 1);
    test_conv2d_path("chunked", 5, 4, 3, 31, 29, 3, 1, 1, 4, 3, 0);
    ttt_cuda_set_conv_scratch_floats(0);
    // the same-size 3x3 cases through the im2col path (TTT_CONV_IM2COL=1)
    test_conv2d_path("im2col", 2, 13, 11, 5, 7, 3, 1, 1, 13, 11, 1);
    test_conv2d_path("im2col", 2, 5, 6, 255, 257, 3, 1, 1, 5, 6, 1);
    test_conv2d_path("im2col", 1, 24, 78, 256, 256, 3, 1, 1, 24, 78, 0);
    // real bf16 operands: same-size 3x3 (C = 3, 5, 32, 96, 256; H, W not multiples of 8), strided,
    // the patch embed (K 4, s 4, ragged edge), misaligned weights, and chunks forced small
    test_conv2d_bf16("3x3 odd", 2, 13, 11, 5, 7, 3, 1, 1, 13, 11, 1, 0);
    test_conv2d_bf16("3x3 C 3", 2, 9, 7, 3, 32, 3, 1, 1, 9, 7, 1, 0);
    test_conv2d_bf16("3x3 C 32 -> 96", 1, 13, 21, 32, 96, 3, 1, 1, 13, 21, 0, 0);
    test_conv2d_bf16("3x3 C 96 -> 256", 1, 11, 19, 96, 256, 3, 1, 1, 11, 19, 1, 0);
    test_conv2d_bf16("3x3 1x1 map", 3, 1, 1, 5, 7, 3, 1, 1, 1, 1, 1, 0);
    test_conv2d_bf16("FPN 3x3 at 1/16", 1, 24, 78, 256, 256, 3, 1, 1, 24, 78, 0, 0);
    test_conv2d_bf16("strided", 1, 15, 13, 6, 9, 3, 2, 1, 8, 7, 0, 0);
    test_conv2d_bf16("strided C 8", 1, 16, 17, 8, 12, 3, 2, 1, 8, 9, 1, 0);
    test_conv2d_bf16("patch embed", 2, 30, 37, 4, 96, 4, 4, 0, 8, 10, 1, 0);
    test_conv2d_bf16("misaligned weight", 2, 5, 6, 32, 16, 3, 1, 1, 5, 6, 1, 1);
    test_conv2d_bf16("misaligned, odd", 2, 7, 5, 5, 7, 3, 1, 1, 7, 5, 1, 1);
    ttt_cuda_set_bf16_scratch(4000);   // chunks: 9 forward, 11 dweight, 6 dinp
    test_conv2d_bf16("chunked", 3, 11, 13, 9, 6, 3, 1, 1, 11, 13, 1, 0);
    test_conv2d_bf16("chunked C 31", 5, 4, 3, 31, 29, 3, 1, 1, 4, 3, 0, 0);
    ttt_cuda_set_bf16_scratch(100);    // less than a row: one pixel per chunk
    test_conv2d_bf16("one pixel per chunk", 2, 5, 6, 32, 16, 3, 1, 1, 5, 6, 1, 0);
    ttt_cuda_set_bf16_scratch(300);
    test_conv2d_bf16("chunked strided", 1, 7, 9, 8, 12, 3, 2, 1, 4, 5, 1, 0);
    ttt_cuda_set_bf16_scratch((size_t)1 << 20);   // 3 chunks of 448 pixels at C 256
    test_conv2d_bf16("chunked C 256", 2, 12, 39, 256, 256, 3, 1, 1, 12, 39, 1, 0);
    ttt_cuda_set_bf16_scratch(0);
    // same-size 3x3 by the implicit GEMM on the tensor cores (conv3x3_implicit_bf16_kernel): forward
    // (Cin = C) and dinp (Cin = OC) each taken when Cin % 32 == 0 and its output channels % 8 == 0
    // (8 x 16 pixel tiles of one image: 12 x 39 is 2 x 3 tiles, the last ones partial)
    test_conv2d_implicit("implicit C 256, partial tiles", 1, 1, 2, 12, 39, 256, 256, 1);
    test_conv2d_implicit("implicit C 256, no bias", 1, 1, 1, 24, 78, 256, 256, 0);
    test_conv2d_implicit("implicit C 64 -> 256", 1, 1, 2, 7, 19, 64, 256, 1);               // dinp: BN 64
    test_conv2d_implicit("implicit C 256 -> 64", 1, 1, 2, 9, 13, 256, 64, 0);               // forward: BN 64
    test_conv2d_implicit("implicit one row", 1, 1, 3, 1, 37, 32, 96, 1);                    // N 96, 32: partial N tiles
    test_conv2d_implicit("implicit one column", 1, 1, 2, 21, 1, 32, 32, 1);
    test_conv2d_implicit("implicit 1x1 map", 1, 1, 5, 1, 1, 64, 128, 1);                    // centre tap only
    test_conv2d_implicit("implicit C 128 -> 384", 1, 1, 1, 17, 23, 128, 384, 1);            // N 384: 3 tiles of 128
    test_conv2d_implicit("implicit exact tiles", 1, 1, 2, 16, 32, 64, 128, 1);              // 2 x 2 full tiles
    test_conv2d_implicit("implicit one past exact tiles", 1, 1, 2, 17, 33, 32, 64, 1);      // 3 x 3, 1-pixel edges
    test_conv2d_implicit("implicit many small images", 1, 1, 4, 9, 17, 32, 128, 0);         // 2 x 2 tiles each
    test_conv2d_implicit("implicit C 96, odd chunk count", 1, 1, 2, 10, 20, 96, 96, 1);     // 3 halo chunks
    test_conv2d_implicit("implicit forward only, OC 40", 1, 0, 2, 6, 11, 32, 40, 1);        // dinp: Cin 40
    test_conv2d_implicit("implicit dinp only, C 48", 0, 1, 2, 6, 11, 48, 64, 1);            // forward: Cin 48
    test_conv2d_implicit("implicit not taken, C 48 -> 36", 0, 0, 2, 6, 11, 48, 36, 0);
    dev_misalign = 1;   // activations 4 bytes past an aligned address: the im2col path
    test_conv2d_implicit("implicit not taken, misaligned", 0, 0, 2, 6, 11, 64, 64, 1);
    dev_misalign = 0;
    ttt_cuda_set_bf16_scratch(4000);   // the dweight pass chunked while dinp runs the implicit kernel
    test_conv2d_implicit("implicit, dweight chunked", 1, 1, 2, 5, 7, 32, 64, 1);
    ttt_cuda_set_bf16_scratch(0);
    test_conv2d_bf16_path("implicit off, strided", 1, 0, 0, 1, 15, 13, 32, 64, 3, 2, 1, 8, 7, 1, 0);
    test_bf16_linear_rule();
    ttt_cuda_set_bf16_linear(2);       // every linear: odd, small and misaligned shapes too
    test_linear_bf16(257, 131, 97, 1, 0);
    test_linear_bf16(61, 37, 29, 0, 0);
    test_linear_bf16(255, 64, 128, 1, 1);
    test_linear_bf16(3136, 96, 288, 1, 0);
    test_linear_bf16(1000, 384, 384, 1, 0);
    test_linear_bf16(200, 768, 256, 0, 1);
    ttt_cuda_set_bf16_scratch(3000);   // chunks of rows: 16 forward, 8 backward
    test_linear_bf16(257, 131, 97, 1, 0);
    test_linear_bf16(100, 256, 200, 1, 1);
    ttt_cuda_set_bf16_scratch(0);
    ttt_cuda_set_bf16_linear(-1);
    test_qkv_window_attention(12, 49, 3, 32, 4, 1, 1);   // Swin-S stage 1: 49-token windows, heads of 32
    test_qkv_window_attention(6, 49, 2, 64, 2, 1, 1);    // heads of 64
    test_qkv_window_attention(5, 30, 3, 16, 1, 1, 1);    // T 30: padded rows and keys; one mask (none odd)
    test_qkv_window_attention(12, 49, 3, 32, 4, 0, 0);   // TF32: the two ops in turn
    test_qkv_window_attention(4, 49, 3, 20, 2, 1, 0);    // HS 20: no tensor-core kernel, the two ops in turn
    test_mlp(1001, 96, 384, 2, 4);      // Swin-S stage 1 widths, every linear pass on bf16 operands
    test_mlp(29200, 96, 384, 1, 4);     // the default rules there: the bf16 mlp (>= 2^30, hidden 384; C 96 too)
    test_mlp(2000, 96, 96, 1, 0);       // hidden 96 < 192: the float32 gelu passes and TF32 linears
    test_mlp(2000, 384, 1536, 1, 4);    // Swin-S stage 3 by the default rules: all four
    test_mlp(257, 37, 131, 2, 4);       // odd widths: scalar conversions
    test_mlp(257, 37, 131, 0, 0);       // TF32 and the float32 gelu passes
    ttt_cuda_set_bf16_scratch(3000);    // chunks of rows in every pass
    test_mlp(100, 64, 256, 2, 4);
    ttt_cuda_set_bf16_scratch(0);
    test_upsample(2, 7, 9, 5, 23, 29);
    test_upsample(2, 13, 11, 3, 4, 5);
    test_upsample(2, 7, 9, 8, 23, 29);      // float4 channel groups, non-integer scale
    test_upsample(3, 13, 11, 12, 4, 5);     // float4, downsampling (some inputs unused)
    test_upsample(1, 24, 78, 64, 48, 156);
    test_point_sample(7, 13, 17, 101);
    test_sine(13, 17, 64);
    test_sine(12, 39, 256);
    {
        int odd[6] = {3, 5, 4, 2, 1, 3}, tiny4[8] = {5, 7, 3, 4, 2, 2, 1, 1};
        int swin_s[6] = {12, 39, 24, 78, 48, 156};   // 1/32, 1/16, 1/8 of 384x1248
        test_ms_deform(2, 7, 3, 5, 3, 2, odd);        // head dim 5: no shuffle reduction
        test_ms_deform(2, 29, 2, 8, 4, 3, tiny4);     // head dim 8: groups of 8 lanes
        test_ms_deform(1, 33, 2, 64, 3, 4, odd);      // head dim 64: two warps per head
        test_ms_deform(1, 9828, 8, 32, 3, 4, swin_s); // the published encoder on a KITTI frame
    }
    test_masked_mse(1001, 48);
    test_cross_entropy(333, 21, 1);
    test_cross_entropy(333, 21, 0);
    test_mask_losses(13, 1001);
    test_attn_mask(2, 13, 301);
    test_mae_prepare(2, 70, 101, 96, 128, 16);
    test_semantic_inference(7, 5, 9, 13, 35, 50, 35, 50, 0);
    test_semantic_inference(100, 19, 96, 312, 384, 1248, 384, 1248, 0);   // Swin-S at 384x1248
    test_semantic_inference(100, 19, 160, 512, 618, 2048, 375, 1242, 0);  // KITTI: 618x2048 scored at 375x1242
    test_semantic_inference(6, 4, 8, 12, 31, 45, 31, 45, 1);
    test_semantic_inference(6, 4, 8, 12, 31, 45, 17, 70, 1);
    test_adamw(100003);
    test_sum_squares(1000003);

    printf("\nworst relative error per op (GPU vs CPU):\n");
    for (int i = 0; i < n_ops; i++)
        printf("  %-28s %.3e  (tol %.0e)\n", op_names[i], op_worst[i], op_tol[i]);
    return test_summary("gpu_ops");
}
