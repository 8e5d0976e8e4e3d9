// test/test_naive.c: the fast CPU ops (the packed register-tile GEMM behind linear and
// attention, the tap-wise conv2d) equal their algorithmic references in ttt.c
// (linear_forward_naive, attention_forward_naive, conv2d_forward_naive and their backwards),
// forward and backward, on random inputs of odd sizes that straddle the tile sizes
// (MM_MR 4, MM_NR 16, MM_KC 256, MM_MB 64). Relative errors are printed.
#include "test.h"

static Rng rng;
#define TOL 1e-5   // fast (float, two-level sums) vs naive (double)

// backward ops accumulate, so both start from the same random gradient
static float* copy_of(const float* x, size_t n) {
    float* y = (float*)mallocCheck(n * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    return y;
}

static void test_linear(int N, int C, int OC, int with_bias) {
    char label[96];
    float* inp = random_tensor(&rng, (size_t)N * C, -1, 1);
    float* w = random_tensor(&rng, (size_t)OC * C, -1, 1);
    float* b = with_bias ? random_tensor(&rng, OC, -1, 1) : NULL;
    float* dout = random_tensor(&rng, (size_t)N * OC, -1, 1);
    float* out = random_tensor(&rng, (size_t)N * OC, -1, 1);
    float* ref = random_tensor(&rng, (size_t)N * OC, -1, 1);
    linear_forward_cpu(out, inp, w, b, N, C, OC);
    linear_forward_naive(ref, inp, w, b, N, C, OC);
    snprintf(label, sizeof(label), "linear fwd N=%d C=%d OC=%d%s", N, C, OC, b ? "" : " nobias");
    check_close(label, out, ref, (size_t)N * OC, TOL);
    float* di = random_tensor(&rng, (size_t)N * C, -1, 1), *di_ref = copy_of(di, (size_t)N * C);
    float* dw = random_tensor(&rng, (size_t)OC * C, -1, 1), *dw_ref = copy_of(dw, (size_t)OC * C);
    float* db = random_tensor(&rng, OC, -1, 1), *db_ref = copy_of(db, OC);
    linear_backward_cpu(di, dw, db, dout, inp, w, N, C, OC);
    linear_backward_naive(di_ref, dw_ref, db_ref, dout, inp, w, N, C, OC);
    snprintf(label, sizeof(label), "linear dinp N=%d C=%d OC=%d", N, C, OC);
    check_close(label, di, di_ref, (size_t)N * C, TOL);
    snprintf(label, sizeof(label), "linear dweight N=%d C=%d OC=%d", N, C, OC);
    check_close(label, dw, dw_ref, (size_t)OC * C, TOL);
    snprintf(label, sizeof(label), "linear dbias N=%d C=%d OC=%d", N, C, OC);
    check_close(label, db, db_ref, OC, TOL);
    free(inp); free(w); free(b); free(dout); free(out); free(ref);
    free(di); free(di_ref); free(dw); free(dw_ref); free(db); free(db_ref);
}

// fused qkv (strides 3C) when fused, else separate q (stride C) and k, v (stride C)
static void test_attention(int B, int Tq, int Tk, int NH, int HS, int fused, int use_bias, int use_mask) {
    char label[112];
    int C = NH * HS;
    if (fused) Tk = Tq;
    int qs = fused ? 3 * C : C, kvs = fused ? 3 * C : C;
    size_t nq = fused ? (size_t)B * Tq * 3 * C : (size_t)B * Tq * C;
    size_t nkv = fused ? nq : (size_t)B * Tk * C;
    float* q = random_tensor(&rng, nq, -1, 1);
    float* kvbuf = fused ? q : random_tensor(&rng, 2 * nkv, -1, 1);
    const float* k = fused ? q + C : kvbuf;
    const float* v = fused ? q + 2 * C : kvbuf + nkv;
    float* rel = use_bias ? random_tensor(&rng, (size_t)NH * Tq * Tk, -1, 1) : NULL;
    int n_mask = 2;
    float* mask = NULL;
    if (use_mask) {   // -100 (Swin) and -inf (Mask2Former) entries, one finite score kept per row
        mask = random_tensor(&rng, (size_t)n_mask * Tq * Tk, -1, 1);
        for (size_t e = 0; e < (size_t)n_mask * Tq * Tk; e++) {
            if (e % Tk == 0) continue;
            if (e % 5 == 1) mask[e] = -INFINITY; else if (e % 7 == 2) mask[e] = -100.0f;
        }
    }
    size_t nout = (size_t)B * Tq * C, natt = (size_t)B * NH * Tq * Tk;
    float* out = random_tensor(&rng, nout, -1, 1), *ref = random_tensor(&rng, nout, -1, 1);
    float* att = random_tensor(&rng, natt, -1, 1), *att_ref = random_tensor(&rng, natt, -1, 1);
    attention_forward_cpu(out, att, q, k, v, rel, mask, n_mask, B, Tq, Tk, NH, HS, qs, kvs);
    attention_forward_naive(ref, att_ref, q, k, v, rel, mask, n_mask, B, Tq, Tk, NH, HS, qs, kvs);
    snprintf(label, sizeof(label), "attention fwd B=%d Tq=%d Tk=%d NH=%d HS=%d%s%s%s", B, Tq, Tk, NH, HS,
             fused ? " qkv" : "", use_bias ? " bias" : "", use_mask ? " mask" : "");
    check_close(label, out, ref, nout, TOL);
    check_close("  att", att, att_ref, natt, TOL);
    // backward from the same att
    float* dout = random_tensor(&rng, nout, -1, 1);
    float* dq = random_tensor(&rng, nq, -1, 1), *dq_ref = copy_of(dq, nq);
    size_t ndkv = fused ? nq : 2 * nkv;
    float* dkv = fused ? dq : random_tensor(&rng, ndkv, -1, 1);
    float* dkv_ref = fused ? dq_ref : copy_of(dkv, ndkv);
    float* dk = fused ? dq + C : dkv, *dk_ref = fused ? dq_ref + C : dkv_ref;
    float* dv = fused ? dq + 2 * C : dkv + nkv, *dv_ref = fused ? dq_ref + 2 * C : dkv_ref + nkv;
    float* drel = use_bias ? random_tensor(&rng, (size_t)NH * Tq * Tk, -1, 1) : NULL;
    float* drel_ref = use_bias ? copy_of(drel, (size_t)NH * Tq * Tk) : NULL;
    attention_backward_cpu(dq, dk, dv, drel, dout, att, q, k, v, B, Tq, Tk, NH, HS, qs, kvs);
    attention_backward_naive(dq_ref, dk_ref, dv_ref, drel_ref, dout, att, q, k, v, B, Tq, Tk, NH, HS, qs, kvs);
    check_close(fused ? "  dqkv" : "  dq", dq, dq_ref, nq, TOL);
    if (!fused) check_close("  dk, dv", dkv, dkv_ref, ndkv, TOL);
    if (use_bias) check_close("  drel_bias", drel, drel_ref, (size_t)NH * Tq * Tk, TOL);
    free(q); if (!fused) { free(kvbuf); free(dkv); free(dkv_ref); }
    free(rel); free(mask); free(out); free(ref); free(att); free(att_ref); free(dout);
    free(dq); free(dq_ref); free(drel); free(drel_ref);
}

static void test_conv2d(int B, int H, int W, int C, int OC, int K, int stride, int pad, int with_bias) {
    char label[112];
    int Ho = (H + 2 * pad - K) / stride + 1, Wo = (W + 2 * pad - K) / stride + 1;
    if (pad == 0 && stride == K) { Ho = (H + K - 1) / K; Wo = (W + K - 1) / K; }   // patch embed: pad bottom/right
    size_t ni = (size_t)B * H * W * C, nw = (size_t)OC * K * K * C, no = (size_t)B * Ho * Wo * OC;
    float* inp = random_tensor(&rng, ni, -1, 1);
    float* w = random_tensor(&rng, nw, -1, 1);
    float* b = with_bias ? random_tensor(&rng, OC, -1, 1) : NULL;
    float* out = random_tensor(&rng, no, -1, 1), *ref = random_tensor(&rng, no, -1, 1);
    conv2d_forward_cpu(out, inp, w, b, B, H, W, C, OC, K, stride, pad, Ho, Wo);
    conv2d_forward_naive(ref, inp, w, b, B, H, W, C, OC, K, stride, pad, Ho, Wo);
    snprintf(label, sizeof(label), "conv2d fwd B=%d %dx%dx%d OC=%d K=%d s=%d p=%d -> %dx%d", B, H, W, C, OC,
             K, stride, pad, Ho, Wo);
    check_close(label, out, ref, no, TOL);
    float* dout = random_tensor(&rng, no, -1, 1);
    float* di = random_tensor(&rng, ni, -1, 1), *di_ref = copy_of(di, ni);
    float* dw = random_tensor(&rng, nw, -1, 1), *dw_ref = copy_of(dw, nw);
    float* db = random_tensor(&rng, OC, -1, 1), *db_ref = copy_of(db, OC);
    conv2d_backward_cpu(di, dw, db, dout, inp, w, B, H, W, C, OC, K, stride, pad, Ho, Wo);
    conv2d_backward_naive(di_ref, dw_ref, db_ref, dout, inp, w, B, H, W, C, OC, K, stride, pad, Ho, Wo);
    check_close("  dinp", di, di_ref, ni, TOL);
    check_close("  dweight", dw, dw_ref, nw, TOL);
    check_close("  dbias", db, db_ref, OC, TOL);
    free(inp); free(w); free(b); free(out); free(ref); free(dout);
    free(di); free(di_ref); free(dw); free(dw_ref); free(db); free(db_ref);
}

int main(void) {
    rng_seed(&rng, 2718);
    // linear: tiny, odd around the 4x16 tile, past one 64-row task, and K past one 256 chunk
    test_linear(1, 1, 1, 1);
    test_linear(7, 13, 11, 1);
    test_linear(67, 37, 33, 0);
    test_linear(131, 301, 47, 1);
    test_linear(5, 259, 17, 1);
    // attention: Swin-like fused qkv with bias and shift mask; cross-attention with -inf mask
    test_attention(3, 7, 7, 2, 5, 1, 1, 1);
    test_attention(2, 5, 19, 3, 7, 0, 0, 1);
    test_attention(2, 9, 13, 1, 17, 0, 1, 0);
    test_attention(2, 49, 49, 3, 32, 1, 1, 1);   // Swin's 7x7 window, large enough to run threaded
    // conv2d: same-size 3x3, strided, 1x1, patch embedding (K=4, stride 4, odd size), and a
    // wide input (K*C past one 256 chunk) with fewer channels than a tile
    test_conv2d(2, 7, 9, 5, 19, 3, 1, 1, 1);
    test_conv2d(1, 11, 10, 3, 17, 3, 2, 1, 0);
    test_conv2d(2, 5, 6, 13, 7, 1, 1, 0, 1);
    test_conv2d(1, 9, 11, 3, 21, 4, 4, 0, 1);
    test_conv2d(1, 6, 5, 90, 5, 3, 1, 1, 1);
    test_conv2d(1, 5, 7, 3, 261, 3, 1, 1, 1);   // more than 256 output channels (two dweight tasks)
    // the check can fail: a perturbed fast output is caught
    {
        int N = 5, C = 7, OC = 9;
        float* inp = random_tensor(&rng, N * C, -1, 1), *w = random_tensor(&rng, OC * C, -1, 1);
        float* out = malloc(N * OC * 4), *ref = malloc(N * OC * 4);
        linear_forward_cpu(out, inp, w, NULL, N, C, OC);
        linear_forward_naive(ref, inp, w, NULL, N, C, OC);
        out[3] += 1e-3f * (fabsf(out[3]) + 1.0f);
        CHECK(max_rel_error(out, ref, N * OC) > TOL, "a perturbed output passes the naive check");
        free(inp); free(w); free(out); free(ref);
    }
    return test_summary("test_naive");
}
