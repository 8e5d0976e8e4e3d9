// test/test_flash_attention.c: flash_attention_forward/backward, multi-head attention with
// general Tq, Tk that keeps no (Tq, Tk) attention map (Mask2Former's masked cross-attention
// and self-attention), on the CPU:
// - equal bit for bit to attention_forward_cpu / attention_backward_cpu (out, and dq, dk, dv
//   from the map the old op saved), with Tq < Tk, Tq > Tk, Tq = Tk, fused qkv and separate q and
//   kv buffers, Mask2Former's 0 / -inf masks with rows whose every key is blocked;
// - lse against a log-sum-exp of the scores computed in double (-inf exactly on all -inf rows);
// - backward against central finite differences of L = sum(out * R) with such a mask;
// - an all -inf row: zero output row, lse -inf, no gradient for its query;
// - the accumulate (+=) contract, NULL gradients, lse = NULL in the forward, and a backward
//   without lse dies with one error line and exit status 1.
#include "test.h"
#include <sys/wait.h>
#include <unistd.h>

static Rng rng;
#define EPS 1e-2f      // finite-difference step
#define TOL 1e-2       // relative error bound for gradients
#define MAXC 400       // checked elements per tensor

// mask (n_mask, Tq, Tk): kind 0 none (NULL); 1 Mask2Former-like: -inf on about half, the rest
// 0, one key always open per row, except row 1 of mask 0 (all -inf: a query without any key)
static float* make_mask(int n_mask, int Tq, int Tk, int kind) {
    if (kind == 0) return NULL;
    float* m = (float*)mallocCheck((size_t)n_mask * Tq * Tk * sizeof(float));
    for (int n = 0; n < n_mask; n++) for (int i = 0; i < Tq; i++) {
        float* row = m + ((size_t)n * Tq + i) * Tk;
        for (int j = 0; j < Tk; j++) row[j] = rng_uniform(&rng) < 0.5f ? -INFINITY : 0.0f;
        row[rng_int(&rng, Tk)] = 0.0f;
        if (n == 0 && i == 1 && Tq > 1) for (int j = 0; j < Tk; j++) row[j] = -INFINITY;
    }
    return m;
}

// q (B, Tq, q_stride) and k, v (B, Tk, kv_stride): fused qkv (B, T, 3C) when Tq = Tk and not
// separate, else q rows of C + 3 floats and kv rows (k, v) of 2C
typedef struct {
    float *qb, *kvb;          // buffers (qb NULL when fused)
    const float *q, *k, *v;
    int q_stride, kv_stride;
    size_t nq, nkv;
} Qkv;
static Qkv make_qkv(int B, int Tq, int Tk, int C, int separate_q) {
    Qkv x = {0};
    if (!separate_q) {
        x.q_stride = x.kv_stride = 3 * C; x.nkv = (size_t)B * Tk * 3 * C;
        x.kvb = random_tensor(&rng, x.nkv, -1, 1);
        x.q = x.kvb; x.k = x.kvb + C; x.v = x.kvb + 2 * C;
    } else {
        x.q_stride = C + 3; x.kv_stride = 2 * C;
        x.nq = (size_t)B * Tq * x.q_stride; x.nkv = (size_t)B * Tk * 2 * C;
        x.qb = random_tensor(&rng, x.nq, -1, 1); x.kvb = random_tensor(&rng, x.nkv, -1, 1);
        x.q = x.qb; x.k = x.kvb; x.v = x.kvb + C;
    }
    return x;
}

// the new op against the old one on random inputs: identical numbers
static void test_equal_to_attention(int B, int Tq, int Tk, int NH, int HS, int mask_kind, int n_mask,
                                    int separate_q) {
    if (!separate_q && Tq != Tk) ttt_die("test: fused qkv needs Tq = Tk");
    int C = NH * HS;
    char tag[96];
    snprintf(tag, sizeof(tag), "B%d Tq%d Tk%d NH%d HS%d%s%s", B, Tq, Tk, NH, HS,
             mask_kind ? " -inf mask" : "", separate_q ? " separate q" : " fused qkv");
    Qkv x = make_qkv(B, Tq, Tk, C, separate_q);
    float* mask = make_mask(n_mask, Tq, Tk, mask_kind);
    size_t nout = (size_t)B * Tq * C, natt = (size_t)B * NH * Tq * Tk, nlse = (size_t)B * NH * Tq;
    float *out0 = calloc(nout, 4), *att = calloc(natt, 4), *out1 = calloc(nout, 4), *lse = calloc(nlse, 4);
    float* out2 = calloc(nout, 4);
    attention_forward_cpu(out0, att, x.q, x.k, x.v, NULL, mask, n_mask, B, Tq, Tk, NH, HS, x.q_stride, x.kv_stride);
    flash_attention_forward_cpu(out1, lse, x.q, x.k, x.v, mask, n_mask, B, Tq, Tk, NH, HS, x.q_stride, x.kv_stride);
    flash_attention_forward_cpu(out2, NULL, x.q, x.k, x.v, mask, n_mask, B, Tq, Tk, NH, HS, x.q_stride, x.kv_stride);
    char name[160];
    snprintf(name, sizeof(name), "out == attention_forward [%s]", tag);
    check_close(name, out1, out0, nout, 0.0);
    CHECK(memcmp(out1, out2, nout * sizeof(float)) == 0, "forward with lse = NULL gives another out [%s]", tag);
    // lse against double precision; -inf exactly where every score is -inf
    double scale = 1.0 / sqrt((double)HS);
    float *lse_ref = calloc(nlse, 4), *lse_fin = calloc(nlse, 4);
    double* s = (double*)mallocCheck((size_t)Tk * sizeof(double));
    int inf_rows = 0, inf_match = 1, zero_rows = 1;
    for (int b = 0; b < B; b++) for (int h = 0; h < NH; h++) for (int i = 0; i < Tq; i++) {
        double mx = -INFINITY;
        for (int j = 0; j < Tk; j++) {
            double d = 0.0;
            for (int e = 0; e < HS; e++)
                d += (double)x.q[((size_t)b * Tq + i) * x.q_stride + h * HS + e] * x.k[((size_t)b * Tk + j) * x.kv_stride + h * HS + e];
            s[j] = d * scale + (mask ? mask[((size_t)(b % n_mask) * Tq + i) * Tk + j] : 0.0);
            if (s[j] > mx) mx = s[j];
        }
        size_t r = ((size_t)b * NH + h) * Tq + i;
        if (mx == -INFINITY) {
            inf_rows++;
            inf_match &= lse[r] == -INFINITY;
            for (int e = 0; e < HS; e++) zero_rows &= out1[((size_t)b * Tq + i) * C + h * HS + e] == 0.0f;
            lse_ref[r] = lse_fin[r] = 0.0f;   // compared above
            continue;
        }
        double sum = 0.0;
        for (int j = 0; j < Tk; j++) sum += exp(s[j] - mx);
        lse_ref[r] = (float)(mx + log(sum));
        lse_fin[r] = lse[r];
    }
    free(s);
    snprintf(name, sizeof(name), "lse vs double [%s]", tag);
    check_close(name, lse_fin, lse_ref, nlse, 1e-6);
    CHECK(inf_match, "lse is not -inf on an all -inf row [%s]", tag);
    CHECK(zero_rows, "an all -inf row has a non-zero output [%s]", tag);
    if (mask_kind) CHECK(inf_rows > 0, "the -inf mask case has no all -inf row [%s]", tag);
    // backward: both from the same pre-filled random gradients (checks += too)
    float* R = random_tensor(&rng, nout, -1, 1);
    float *gq0 = NULL, *gq1 = NULL;
    float* gkv0 = random_tensor(&rng, x.nkv, -1, 1);
    float* gkv1 = malloc(x.nkv * 4); memcpy(gkv1, gkv0, x.nkv * 4);
    if (separate_q) { gq0 = random_tensor(&rng, x.nq, -1, 1); gq1 = malloc(x.nq * 4); memcpy(gq1, gq0, x.nq * 4); }
    float *dq0, *dk0, *dv0, *dq1, *dk1, *dv1;
    if (separate_q) { dq0 = gq0; dk0 = gkv0; dv0 = gkv0 + C; dq1 = gq1; dk1 = gkv1; dv1 = gkv1 + C; }
    else { dq0 = gkv0; dk0 = gkv0 + C; dv0 = gkv0 + 2 * C; dq1 = gkv1; dk1 = gkv1 + C; dv1 = gkv1 + 2 * C; }
    attention_backward_cpu(dq0, dk0, dv0, NULL, R, att, x.q, x.k, x.v, B, Tq, Tk, NH, HS, x.q_stride, x.kv_stride);
    flash_attention_backward_cpu(dq1, dk1, dv1, R, out1, lse, x.q, x.k, x.v, mask, n_mask, B, Tq, Tk, NH, HS,
                                 x.q_stride, x.kv_stride);
    snprintf(name, sizeof(name), "dq,dk,dv == attention_backward [%s]", tag);
    if (separate_q) {
        check_close(name, gq1, gq0, x.nq, 0.0);
        check_close(name, gkv1, gkv0, x.nkv, 0.0);
    } else {
        check_close(name, gkv1, gkv0, x.nkv, 0.0);
    }
    free(x.qb); free(x.kvb); free(mask); free(out0); free(att); free(out1); free(out2); free(lse);
    free(lse_ref); free(lse_fin); free(R); free(gq0); free(gq1); free(gkv0); free(gkv1);
}

// finite differences of L = sum(out * R); q (B, Tq, C + 3) rows, kv (B, Tk, 2C) rows
typedef struct { float *out, *lse, *qb, *kvb, *mask, *R; int B, Tq, Tk, NH, HS, n_mask; } FlashCase;
static double flash_loss(void* p) {
    FlashCase* t = p; int C = t->NH * t->HS;
    flash_attention_forward_cpu(t->out, t->lse, t->qb, t->kvb, t->kvb + C, t->mask, t->n_mask, t->B, t->Tq, t->Tk,
                                t->NH, t->HS, C + 3, 2 * C);
    return dot_double(t->out, t->R, (size_t)t->B * t->Tq * C);
}
static void test_gradients(void) {
    FlashCase t = {0}; t.B = 3; t.Tq = 5; t.Tk = 9; t.NH = 2; t.HS = 4; t.n_mask = 3;
    int C = t.NH * t.HS;
    size_t nq = (size_t)t.B * t.Tq * (C + 3), nkv = (size_t)t.B * t.Tk * 2 * C, nout = (size_t)t.B * t.Tq * C;
    size_t nlse = (size_t)t.B * t.NH * t.Tq;
    t.qb = random_tensor(&rng, nq, -1, 1); t.kvb = random_tensor(&rng, nkv, -1, 1);
    t.R = random_tensor(&rng, nout, -1, 1);
    t.mask = make_mask(t.n_mask, t.Tq, t.Tk, 1);
    t.out = calloc(nout, 4); t.lse = calloc(nlse, 4);
    flash_loss(&t);
    // batch 0 query 1 has no open key: its output row is zero and its lse -inf (both heads)
    int zero_row = 1;
    for (int c = 0; c < C; c++) zero_row &= t.out[(size_t)1 * C + c] == 0.0f;
    CHECK(zero_row && t.lse[1] == -INFINITY && t.lse[t.Tq + 1] == -INFINITY,
          "all -inf row: output not zero or lse not -inf");
    float *dqb = calloc(nq, 4), *dkvb = calloc(nkv, 4);
    flash_attention_backward_cpu(dqb, dkvb, dkvb + C, t.R, t.out, t.lse, t.qb, t.kvb, t.kvb + C, t.mask, t.n_mask,
                                 t.B, t.Tq, t.Tk, t.NH, t.HS, C + 3, 2 * C);
    // copies: the loss calls below overwrite out and lse
    float *out = malloc(nout * 4), *lse = malloc(nlse * 4);
    memcpy(out, t.out, nout * 4); memcpy(lse, t.lse, nlse * 4);
    grad_check("flash attention dq (-inf mask, all -inf row)", t.qb, nq, dqb, flash_loss, &t, EPS, TOL, MAXC);
    grad_check("flash attention dk, dv", t.kvb, nkv, dkvb, flash_loss, &t, EPS, TOL, MAXC);
    int zero_grad = 1, pad_zero = 1;   // the all -inf row's query gets no gradient; q's padding none
    for (int c = 0; c < C; c++) zero_grad &= dqb[(size_t)1 * (C + 3) + c] == 0.0f;
    for (int r = 0; r < t.B * t.Tq; r++) for (int c = C; c < C + 3; c++) pad_zero &= dqb[(size_t)r * (C + 3) + c] == 0.0f;
    CHECK(zero_grad, "all -inf row: dq not zero");
    CHECK(pad_zero, "the padding columns of q got a gradient");
    // accumulate: a second call adds the same again; NULL gradients leave the others as they were
    float *dqb2 = malloc(nq * 4), *dkvb2 = malloc(nkv * 4);
    for (size_t i = 0; i < nq; i++) dqb2[i] = 2.0f * dqb[i];
    for (size_t i = 0; i < nkv; i++) dkvb2[i] = 2.0f * dkvb[i];
    flash_attention_backward_cpu(dqb, dkvb, dkvb + C, t.R, out, lse, t.qb, t.kvb, t.kvb + C, t.mask, t.n_mask,
                                 t.B, t.Tq, t.Tk, t.NH, t.HS, C + 3, 2 * C);
    check_close("flash attention backward accumulates (dq)", dqb, dqb2, nq, 1e-6);
    check_close("flash attention backward accumulates (dk, dv)", dkvb, dkvb2, nkv, 1e-6);
    float* dv_only = calloc(nkv, 4);
    flash_attention_backward_cpu(NULL, NULL, dv_only + C, t.R, out, lse, t.qb, t.kvb, t.kvb + C, t.mask, t.n_mask,
                                 t.B, t.Tq, t.Tk, t.NH, t.HS, C + 3, 2 * C);
    int dv_same = 1, dk_untouched = 1;
    for (int r = 0; r < t.B * t.Tk; r++) for (int c = 0; c < C; c++) {
        dv_same &= dv_only[(size_t)r * 2 * C + C + c] * 2.0f == dkvb2[(size_t)r * 2 * C + C + c];
        dk_untouched &= dv_only[(size_t)r * 2 * C + c] == 0.0f;
    }
    CHECK(dv_same && dk_untouched, "backward with dq = dk = NULL: dv differs or dk written");
    free(t.qb); free(t.kvb); free(t.R); free(t.mask); free(t.out); free(t.lse); free(dqb); free(dkvb);
    free(out); free(lse); free(dqb2); free(dkvb2); free(dv_only);
}

// a backward without the forward's lse: one error line, exit status 1 (in a child process)
static void test_missing_lse_dies(void) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(2);
        int B = 1, Tq = 2, Tk = 3, NH = 1, HS = 2;
        float q[4] = {0.1f, 0.2f, 0.3f, 0.4f}, kv[12] = {0.5f, 0.6f, 0.7f, 0.8f, 0.9f, 1.0f,
                                                        1.1f, 1.2f, 1.3f, 1.4f, 1.5f, 1.6f};
        float out[4], dout[4] = {1, 1, 1, 1}, dq[4] = {0}, dkv[12] = {0};
        flash_attention_forward_cpu(out, NULL, q, kv, kv + 2, NULL, 1, B, Tq, Tk, NH, HS, 2, 4);
        flash_attention_backward_cpu(dq, dkv, dkv + 2, dout, out, NULL, q, kv, kv + 2, NULL, 1, B, Tq, Tk, NH, HS, 2, 4);
        _exit(0);   // not reached when the check works
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait failed");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1,
          "a backward without lse did not exit with status 1 (status %d)", status);
}

int main(void) {
    rng_seed(&rng, 14);
    test_missing_lse_dies();   // first: no OpenMP threads exist yet when it forks
    test_equal_to_attention(2, 7, 13, 2, 5, 1, 2, 1);      // tiny, Tq < Tk, -inf mask, all -inf row
    test_equal_to_attention(3, 11, 11, 3, 8, 0, 1, 0);     // self-attention, fused qkv, no mask
    test_equal_to_attention(2, 9, 4, 2, 6, 1, 1, 1);       // Tq > Tk, one mask for both batches
    test_equal_to_attention(2, 48, 300, 8, 32, 1, 2, 1);   // g's masked cross-attention, 8 heads
    test_equal_to_attention(1, 100, 468, 8, 32, 1, 1, 1);  // h's cross-attention at 1/32 of 384x1248
    test_equal_to_attention(2, 100, 100, 8, 32, 0, 1, 1);  // h's self-attention
    test_gradients();
    return test_summary("test_flash_attention");
}
