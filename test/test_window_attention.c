// test/test_window_attention.c: window_attention_forward/backward, Swin's window attention that
// keeps no (T, T) attention map, on the CPU:
// - equal bit for bit to attention_forward_cpu / attention_backward_cpu (out, and every gradient
//   from the map the old op saved), with fused qkv and with separate q and kv buffers;
// - lse against a log-sum-exp of the scores computed in double (-inf exactly on all -inf rows);
// - backward against central finite differences of L = sum(out * R), with the relative position
//   bias, Swin's -100 shift mask, -inf entries and a row whose scores are all -inf;
// - the accumulate (+=) contract, lse = NULL in the forward, and a backward without lse dies
//   with one error line and exit status 1.
#include "test.h"
#include <sys/wait.h>
#include <unistd.h>

static Rng rng;
#define EPS 1e-2f      // finite-difference step
#define TOL 1e-2       // relative error bound for gradients
#define MAXC 400       // checked elements per tensor

// mask (n_mask, T, T): kind 0 none (NULL), 1 Swin-like 0 / -100, 2 also -inf entries (never on
// the diagonal) and, in mask 0, row 1 all -inf (every window b with b % n_mask == 0 has a row
// without any finite score)
static float* make_mask(int n_mask, int T, int kind) {
    if (kind == 0) return NULL;
    float* m = (float*)mallocCheck((size_t)n_mask * T * T * sizeof(float));
    for (int k = 0; k < n_mask; k++) for (int i = 0; i < T; i++) for (int j = 0; j < T; j++) {
        float u = rng_uniform(&rng), v = u < 0.3f ? -100.0f : 0.0f;
        if (kind == 2 && u > 0.8f && i != j) v = -INFINITY;
        if (kind == 2 && k == 0 && i == 1 && T > 1) v = -INFINITY;
        m[((size_t)k * T + i) * T + j] = v;
    }
    return m;
}

// q, k, v of B windows: fused (B, T, 3C) rows, or q (B, T, C + 3) rows and kv (B, T, 2C) rows
typedef struct {
    float *qb, *kvb;          // buffers (qb NULL when fused)
    const float *q, *k, *v;
    int q_stride, kv_stride;
    size_t nq, nkv;
} Qkv;
static Qkv make_qkv(int B, int T, int C, int separate_q) {
    Qkv x = {0};
    if (!separate_q) {
        x.q_stride = x.kv_stride = 3 * C; x.nkv = (size_t)B * T * 3 * C;
        x.kvb = random_tensor(&rng, x.nkv, -1, 1);
        x.q = x.kvb; x.k = x.kvb + C; x.v = x.kvb + 2 * C;
    } else {
        x.q_stride = C + 3; x.kv_stride = 2 * C;
        x.nq = (size_t)B * T * x.q_stride; x.nkv = (size_t)B * T * 2 * C;
        x.qb = random_tensor(&rng, x.nq, -1, 1); x.kvb = random_tensor(&rng, x.nkv, -1, 1);
        x.q = x.qb; x.k = x.kvb; x.v = x.kvb + C;
    }
    return x;
}

// the new op against the old one on random inputs: identical numbers
static void test_equal_to_attention(int B, int T, int NH, int HS, int with_bias, int mask_kind, int n_mask,
                                    int separate_q) {
    int C = NH * HS;
    char tag[96];
    snprintf(tag, sizeof(tag), "B%d T%d NH%d HS%d%s%s%s", B, T, NH, HS, with_bias ? " bias" : "",
             mask_kind == 1 ? " -100 mask" : mask_kind == 2 ? " -100/-inf mask" : "", separate_q ? " separate q" : "");
    Qkv x = make_qkv(B, T, C, separate_q);
    float* bias = with_bias ? random_tensor(&rng, (size_t)NH * T * T, -2, 2) : NULL;
    float* mask = make_mask(n_mask, T, mask_kind);
    size_t nout = (size_t)B * T * C, natt = (size_t)B * NH * T * T, nlse = (size_t)B * NH * T;
    float *out0 = calloc(nout, 4), *att = calloc(natt, 4), *out1 = calloc(nout, 4), *lse = calloc(nlse, 4);
    float* out2 = calloc(nout, 4);
    attention_forward_cpu(out0, att, x.q, x.k, x.v, bias, mask, n_mask, B, T, T, NH, HS, x.q_stride, x.kv_stride);
    window_attention_forward_cpu(out1, lse, x.q, x.k, x.v, bias, mask, n_mask, B, T, NH, HS, x.q_stride, x.kv_stride);
    window_attention_forward_cpu(out2, NULL, x.q, x.k, x.v, bias, mask, n_mask, B, T, NH, HS, x.q_stride, x.kv_stride);
    char name[160];
    snprintf(name, sizeof(name), "out == attention_forward [%s]", tag);
    check_close(name, out1, out0, nout, 0.0);
    CHECK(memcmp(out1, out2, nout * sizeof(float)) == 0, "forward with lse = NULL gives another out [%s]", tag);
    // lse against double precision; -inf exactly where every score is -inf
    double scale = 1.0 / sqrt((double)HS);
    float* lse_ref = calloc(nlse, 4);
    float *lse_fin = calloc(nlse, 4);
    int inf_rows = 0, inf_match = 1;
    for (int b = 0; b < B; b++) for (int h = 0; h < NH; h++) for (int i = 0; i < T; i++) {
        double s[64], mx = -INFINITY;
        for (int j = 0; j < T; j++) {
            double d = 0.0;
            for (int e = 0; e < HS; e++)
                d += (double)x.q[((size_t)b * T + i) * x.q_stride + h * HS + e] * x.k[((size_t)b * T + j) * x.kv_stride + h * HS + e];
            s[j] = d * scale + (bias ? bias[((size_t)h * T + i) * T + j] : 0.0) +
                   (mask ? mask[((size_t)(b % n_mask) * T + i) * T + j] : 0.0);
            if (s[j] > mx) mx = s[j];
        }
        size_t r = ((size_t)b * NH + h) * T + i;
        if (mx == -INFINITY) {
            inf_rows++;
            inf_match &= lse[r] == -INFINITY;
            lse_ref[r] = lse_fin[r] = 0.0f;   // compared above
            continue;
        }
        double sum = 0.0;
        for (int j = 0; j < T; j++) sum += exp(s[j] - mx);
        lse_ref[r] = (float)(mx + log(sum));
        lse_fin[r] = lse[r];
    }
    snprintf(name, sizeof(name), "lse vs double [%s]", tag);
    check_close(name, lse_fin, lse_ref, nlse, 1e-6);
    CHECK(inf_match, "lse is not -inf on an all -inf row [%s]", tag);
    if (mask_kind == 2) CHECK(inf_rows > 0, "the -inf mask case has no all -inf row [%s]", tag);
    // backward: both from the same pre-filled random gradients (checks += too)
    float* R = random_tensor(&rng, nout, -1, 1);
    float *gq0 = NULL, *gq1 = NULL;
    float* gkv0 = random_tensor(&rng, x.nkv, -1, 1);
    float* gkv1 = malloc(x.nkv * 4); memcpy(gkv1, gkv0, x.nkv * 4);
    if (separate_q) { gq0 = random_tensor(&rng, x.nq, -1, 1); gq1 = malloc(x.nq * 4); memcpy(gq1, gq0, x.nq * 4); }
    float* gb0 = random_tensor(&rng, (size_t)NH * T * T, -1, 1);
    float* gb1 = malloc((size_t)NH * T * T * 4); memcpy(gb1, gb0, (size_t)NH * T * T * 4);
    float *dq0, *dk0, *dv0, *dq1, *dk1, *dv1;
    if (separate_q) { dq0 = gq0; dk0 = gkv0; dv0 = gkv0 + C; dq1 = gq1; dk1 = gkv1; dv1 = gkv1 + C; }
    else { dq0 = gkv0; dk0 = gkv0 + C; dv0 = gkv0 + 2 * C; dq1 = gkv1; dk1 = gkv1 + C; dv1 = gkv1 + 2 * C; }
    attention_backward_cpu(dq0, dk0, dv0, with_bias ? gb0 : NULL, R, att, x.q, x.k, x.v, B, T, T, NH, HS,
                           x.q_stride, x.kv_stride);
    window_attention_backward_cpu(dq1, dk1, dv1, with_bias ? gb1 : NULL, R, out1, lse, x.q, x.k, x.v, bias, mask,
                                  n_mask, B, T, NH, HS, x.q_stride, x.kv_stride);
    snprintf(name, sizeof(name), "dq,dk,dv == attention_backward [%s]", tag);
    if (separate_q) {
        check_close(name, gq1, gq0, x.nq, 0.0);
        check_close(name, gkv1, gkv0, x.nkv, 0.0);
    } else {
        check_close(name, gkv1, gkv0, x.nkv, 0.0);
    }
    snprintf(name, sizeof(name), "drel_bias == attention_backward [%s]", tag);
    check_close(name, gb1, gb0, (size_t)NH * T * T, 0.0);
    free(x.qb); free(x.kvb); free(bias); free(mask); free(out0); free(att); free(out1); free(out2); free(lse);
    free(lse_ref); free(lse_fin); free(R); free(gq0); free(gq1); free(gkv0); free(gkv1); free(gb0); free(gb1);
}

// finite differences of L = sum(out * R)
typedef struct { float *out, *lse, *qkv, *bias, *mask, *R; int B, T, NH, HS, n_mask; } WinCase;
static double win_loss(void* p) {
    WinCase* t = p; int C = t->NH * t->HS;
    window_attention_forward_cpu(t->out, t->lse, t->qkv, t->qkv + C, t->qkv + 2 * C, t->bias, t->mask,
                                 t->n_mask, t->B, t->T, t->NH, t->HS, 3 * C, 3 * C);
    return dot_double(t->out, t->R, (size_t)t->B * t->T * C);
}
static void test_gradients(void) {
    WinCase t = {0}; t.B = 4; t.T = 7; t.NH = 2; t.HS = 5; t.n_mask = 2;
    int C = t.NH * t.HS, T = t.T;
    size_t nqkv = (size_t)t.B * T * 3 * C, nout = (size_t)t.B * T * C, nb = (size_t)t.NH * T * T;
    t.qkv = random_tensor(&rng, nqkv, -1, 1); t.bias = random_tensor(&rng, nb, -1, 1);
    t.R = random_tensor(&rng, nout, -1, 1);
    t.mask = make_mask(t.n_mask, T, 2);
    t.out = calloc(nout, 4); t.lse = calloc((size_t)t.B * t.NH * T, 4);
    win_loss(&t);
    // window 0 row 1 has no finite score: its output row is zero and its lse -inf
    int zero_row = 1;
    for (int c = 0; c < C; c++) zero_row &= t.out[(size_t)1 * C + c] == 0.0f;
    CHECK(zero_row && t.lse[1] == -INFINITY, "all -inf row: output not zero or lse not -inf");
    float *dqkv = calloc(nqkv, 4), *dbias = calloc(nb, 4);
    window_attention_backward_cpu(dqkv, dqkv + C, dqkv + 2 * C, dbias, t.R, t.out, t.lse, t.qkv, t.qkv + C,
                                  t.qkv + 2 * C, t.bias, t.mask, t.n_mask, t.B, T, t.NH, t.HS, 3 * C, 3 * C);
    // copies: the loss calls below overwrite out and lse
    float *out = malloc(nout * 4), *lse = malloc((size_t)t.B * t.NH * T * 4);
    memcpy(out, t.out, nout * 4); memcpy(lse, t.lse, (size_t)t.B * t.NH * T * 4);
    grad_check("window attention dqkv (-100, -inf, all -inf row)", t.qkv, nqkv, dqkv, win_loss, &t, EPS, TOL, MAXC);
    grad_check("window attention drel_bias", t.bias, nb, dbias, win_loss, &t, EPS, TOL, MAXC);
    int zero_grad = 1;   // the all -inf row's query gets no gradient
    for (int c = 0; c < C; c++) zero_grad &= dqkv[(size_t)1 * 3 * C + c] == 0.0f;
    CHECK(zero_grad, "all -inf row: dq not zero");
    // accumulate: a second call adds the same again
    float *dqkv2 = malloc(nqkv * 4), *dbias2 = malloc(nb * 4);
    for (size_t i = 0; i < nqkv; i++) dqkv2[i] = 2.0f * dqkv[i];
    for (size_t i = 0; i < nb; i++) dbias2[i] = 2.0f * dbias[i];
    window_attention_backward_cpu(dqkv, dqkv + C, dqkv + 2 * C, dbias, t.R, out, lse, t.qkv, t.qkv + C,
                                  t.qkv + 2 * C, t.bias, t.mask, t.n_mask, t.B, T, t.NH, t.HS, 3 * C, 3 * C);
    check_close("window attention backward accumulates (dqkv)", dqkv, dqkv2, nqkv, 1e-6);
    check_close("window attention backward accumulates (drel_bias)", dbias, dbias2, nb, 1e-6);
    free(t.qkv); free(t.bias); free(t.R); free(t.mask); free(t.out); free(t.lse); free(dqkv); free(dbias);
    free(out); free(lse); free(dqkv2); free(dbias2);
}

// a backward without the forward's lse: one error line, exit status 1 (in a child process)
static void test_missing_lse_dies(void) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(2);
        int B = 1, T = 3, NH = 1, HS = 2, C = 2;
        float qkv[18] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f, 0.9f, 1.0f, 1.1f, 1.2f,
                         1.3f, 1.4f, 1.5f, 1.6f, 1.7f, 1.8f};
        float out[6], dout[6] = {1, 1, 1, 1, 1, 1}, dqkv[18] = {0};
        window_attention_forward_cpu(out, NULL, qkv, qkv + C, qkv + 2 * C, NULL, NULL, 1, B, T, NH, HS, 3 * C, 3 * C);
        window_attention_backward_cpu(dqkv, dqkv + C, dqkv + 2 * C, NULL, dout, out, NULL, qkv, qkv + C, qkv + 2 * C,
                                      NULL, NULL, 1, B, T, NH, HS, 3 * C, 3 * C);
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
    test_equal_to_attention(4, 7, 2, 5, 1, 2, 2, 0);      // tiny, -inf mask with an all -inf row
    test_equal_to_attention(3, 16, 1, 8, 0, 0, 1, 1);     // no bias, no mask, separate q
    test_equal_to_attention(6, 49, 3, 32, 1, 1, 3, 0);    // Swin-S stage 1 shifted windows
    test_equal_to_attention(5, 49, 12, 32, 1, 2, 2, 1);   // 12 heads, -inf mask, separate q
    test_gradients();
    return test_summary("test_window_attention");
}
