// test/test_lse_attention.c: the two attention ops that keep no attention map, only one
// log-sum-exp per score row, on the CPU:
//   window_attention_forward/backward: Swin's window attention, Tq = Tk = T, relative position
//     bias, Swin's 0 / -100 shift masks;
//   qkv_window_attention_forward/backward: Swin's qkv linear and window attention as one op;
//   flash_attention_forward/backward: Mask2Former's masked cross-attention and self-attention,
//     general Tq, Tk, no bias, 0 / -inf masks.
// Every test function takes the op and the general sizes (Tq, Tk) and checks:
// - equal bit for bit to attention_forward_cpu / attention_backward_cpu (out, and every gradient
//   from the map the old op saved), with fused qkv and with separate q and kv buffers;
// - lse against a log-sum-exp of the scores computed in double (-inf exactly on all -inf rows,
//   whose output rows are zero);
// - backward against central finite differences of L = sum(out * R), with -inf entries and a
//   row whose scores are all -inf (no gradient for its query);
// - the accumulate (+=) contract, NULL gradients, lse = NULL in the forward, and a backward
//   without lse dies with one error line and exit status 1.
#include "test.h"
#include <sys/wait.h>
#include <unistd.h>

static Rng rng;
#define EPS 1e-2f      // finite-difference step
#define TOL 1e-2       // relative error bound for gradients
#define MAXC 400       // checked elements per tensor

enum { WINDOW, FLASH };   // the op under test
static const char* op_name(int op) { return op == WINDOW ? "window" : "flash"; }

// out (B, Tq, C) and lse (B, NH, Tq) of the op; window takes Tq = Tk and rel_bias, flash no bias
static void lse_attention_forward(int op, float* out, float* lse, const float* q, const float* k, const float* v,
                                  const float* rel_bias, const float* mask, int n_mask, int B, int Tq, int Tk,
                                  int NH, int HS, int q_stride, int kv_stride) {
    if (op == WINDOW)
        window_attention_forward_cpu(out, lse, q, k, v, rel_bias, mask, n_mask, B, Tq, NH, HS, q_stride, kv_stride);
    else
        flash_attention_forward_cpu(out, lse, q, k, v, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride);
}
static void lse_attention_backward(int op, float* dq, float* dk, float* dv, float* drel_bias, const float* dout,
                                   const float* out, const float* lse, const float* q, const float* k,
                                   const float* v, const float* rel_bias, const float* mask, int n_mask, int B,
                                   int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride) {
    if (op == WINDOW)
        window_attention_backward_cpu(dq, dk, dv, drel_bias, dout, out, lse, q, k, v, rel_bias, mask, n_mask, B, Tq,
                                      NH, HS, q_stride, kv_stride);
    else
        flash_attention_backward_cpu(dq, dk, dv, dout, out, lse, q, k, v, mask, n_mask, B, Tq, Tk, NH, HS, q_stride,
                                     kv_stride);
}

// a test case the op cannot take is a mistake in this file
static void check_case(int op, int Tq, int Tk, int with_bias, int separate_q) {
    if (op == WINDOW && Tq != Tk) ttt_die("test: window attention needs Tq = Tk");
    if (op == FLASH && with_bias) ttt_die("test: flash attention takes no rel_bias");
    if (!separate_q && Tq != Tk) ttt_die("test: fused qkv needs Tq = Tk");
}

// mask (n_mask, Tq, Tk), by kind:
//   0 none (NULL);
//   1 Swin-like: -100 on about 30%, the rest 0;
//   2 as 1, plus -inf entries (never on the diagonal) and, in mask 0, row 1 all -inf;
//   3 Mask2Former-like: -inf on about half, the rest 0, one key always open per row, except
//     row 1 of mask 0 (all -inf: a query without any key).
// With kinds 2 and 3 every batch b with b % n_mask == 0 has a row without any finite score.
static const char* mask_name(int kind) {
    return kind == 1 ? " -100 mask" : kind == 2 ? " -100/-inf mask" : kind == 3 ? " 0/-inf mask" : "";
}
static float* make_mask(int n_mask, int Tq, int Tk, int kind) {
    if (kind == 0) return NULL;
    if (kind < 0 || kind > 3) ttt_die("test: unknown mask kind %d", kind);
    float* m = (float*)mallocCheck((size_t)n_mask * Tq * Tk * sizeof(float));
    for (int n = 0; n < n_mask; n++) for (int i = 0; i < Tq; i++) {
        float* row = m + ((size_t)n * Tq + i) * Tk;
        if (kind == 3) {
            for (int j = 0; j < Tk; j++) row[j] = rng_uniform(&rng) < 0.5f ? -INFINITY : 0.0f;
            row[rng_int(&rng, Tk)] = 0.0f;
        } else {
            for (int j = 0; j < Tk; j++) {
                float u = rng_uniform(&rng);
                row[j] = u < 0.3f ? -100.0f : 0.0f;
                if (kind == 2 && u > 0.8f && i != j) row[j] = -INFINITY;
            }
        }
        if (kind >= 2 && n == 0 && i == 1 && Tq > 1) for (int j = 0; j < Tk; j++) row[j] = -INFINITY;
    }
    return m;
}

// q (B, Tq, q_stride) and k, v (B, Tk, kv_stride): fused qkv (B, T, 3C) rows when not separate
// (Tq = Tk), else q rows of C + 3 floats (3 of padding) and kv rows (k, v) of 2C
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
// the writable gradient pointers of a buffer pair laid out like x (gq unused when fused)
static void grad_pointers(const Qkv* x, float* gq, float* gkv, int C, float** dq, float** dk, float** dv) {
    if (x->qb) { *dq = gq; *dk = gkv; *dv = gkv + C; }
    else { *dq = gkv; *dk = gkv + C; *dv = gkv + 2 * C; }
}

// the op against the old attention_forward/backward on random inputs: identical numbers
static void test_equal_to_attention(int op, int B, int Tq, int Tk, int NH, int HS, int with_bias, int mask_kind,
                                    int n_mask, int separate_q) {
    check_case(op, Tq, Tk, with_bias, separate_q);
    int C = NH * HS;
    char tag[128];
    snprintf(tag, sizeof(tag), "%s B%d Tq%d Tk%d NH%d HS%d%s%s%s", op_name(op), B, Tq, Tk, NH, HS,
             with_bias ? " bias" : "", mask_name(mask_kind), separate_q ? " separate q" : " fused qkv");
    Qkv x = make_qkv(B, Tq, Tk, C, separate_q);
    float* bias = with_bias ? random_tensor(&rng, (size_t)NH * Tq * Tk, -2, 2) : NULL;
    float* mask = make_mask(n_mask, Tq, Tk, mask_kind);
    size_t nout = (size_t)B * Tq * C, natt = (size_t)B * NH * Tq * Tk, nlse = (size_t)B * NH * Tq;
    float *out0 = calloc(nout, 4), *att = calloc(natt, 4), *out1 = calloc(nout, 4), *lse = calloc(nlse, 4);
    float* out2 = calloc(nout, 4);
    attention_forward_cpu(out0, att, x.q, x.k, x.v, bias, mask, n_mask, B, Tq, Tk, NH, HS, x.q_stride, x.kv_stride);
    lse_attention_forward(op, out1, lse, x.q, x.k, x.v, bias, mask, n_mask, B, Tq, Tk, NH, HS, x.q_stride,
                          x.kv_stride);
    lse_attention_forward(op, out2, NULL, x.q, x.k, x.v, bias, mask, n_mask, B, Tq, Tk, NH, HS, x.q_stride,
                          x.kv_stride);
    char name[192];
    snprintf(name, sizeof(name), "out == attention_forward [%s]", tag);
    check_close(name, out1, out0, nout, 0.0);
    CHECK(memcmp(out1, out2, nout * sizeof(float)) == 0, "forward with lse = NULL gives another out [%s]", tag);
    // lse against double precision; -inf exactly where every score is -inf, and a zero output row there
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
            s[j] = d * scale + (bias ? bias[((size_t)h * Tq + i) * Tk + j] : 0.0) +
                   (mask ? mask[((size_t)(b % n_mask) * Tq + i) * Tk + j] : 0.0);
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
    if (mask_kind >= 2) CHECK(inf_rows > 0, "the -inf mask case has no all -inf row [%s]", tag);
    // backward: both from the same pre-filled random gradients (checks += too)
    float* R = random_tensor(&rng, nout, -1, 1);
    float *gq0 = NULL, *gq1 = NULL, *gb0 = NULL, *gb1 = NULL;
    float* gkv0 = random_tensor(&rng, x.nkv, -1, 1);
    float* gkv1 = mallocCheck(x.nkv * 4); memcpy(gkv1, gkv0, x.nkv * 4);
    if (separate_q) { gq0 = random_tensor(&rng, x.nq, -1, 1); gq1 = mallocCheck(x.nq * 4); memcpy(gq1, gq0, x.nq * 4); }
    size_t nb = (size_t)NH * Tq * Tk;
    if (op == WINDOW) {   // without a bias: drel_bias = NULL must leave these as they are
        gb0 = random_tensor(&rng, nb, -1, 1);
        gb1 = mallocCheck(nb * 4); memcpy(gb1, gb0, nb * 4);
    }
    float *dq0, *dk0, *dv0, *dq1, *dk1, *dv1;
    grad_pointers(&x, gq0, gkv0, C, &dq0, &dk0, &dv0);
    grad_pointers(&x, gq1, gkv1, C, &dq1, &dk1, &dv1);
    attention_backward_cpu(dq0, dk0, dv0, with_bias ? gb0 : NULL, R, att, x.q, x.k, x.v, B, Tq, Tk, NH, HS,
                           x.q_stride, x.kv_stride);
    lse_attention_backward(op, dq1, dk1, dv1, with_bias ? gb1 : NULL, R, out1, lse, x.q, x.k, x.v, bias, mask,
                           n_mask, B, Tq, Tk, NH, HS, x.q_stride, x.kv_stride);
    snprintf(name, sizeof(name), "dq,dk,dv == attention_backward [%s]", tag);
    if (separate_q) check_close(name, gq1, gq0, x.nq, 0.0);
    check_close(name, gkv1, gkv0, x.nkv, 0.0);
    if (op == WINDOW) {
        snprintf(name, sizeof(name), "drel_bias == attention_backward [%s]", tag);
        check_close(name, gb1, gb0, nb, 0.0);
    }
    free(x.qb); free(x.kvb); free(bias); free(mask); free(out0); free(att); free(out1); free(out2); free(lse);
    free(lse_ref); free(lse_fin); free(R); free(gq0); free(gq1); free(gkv0); free(gkv1); free(gb0); free(gb1);
}

// finite differences of L = sum(out * R)
typedef struct { int op; Qkv x; float *out, *lse, *bias, *mask, *R; int B, Tq, Tk, NH, HS, n_mask; } LseCase;
static double lse_loss(void* p) {
    LseCase* t = p;
    lse_attention_forward(t->op, t->out, t->lse, t->x.q, t->x.k, t->x.v, t->bias, t->mask, t->n_mask, t->B, t->Tq,
                          t->Tk, t->NH, t->HS, t->x.q_stride, t->x.kv_stride);
    return dot_double(t->out, t->R, (size_t)t->B * t->Tq * t->NH * t->HS);
}
// the backward of case t into dq, dk, dv (laid out like t's q, k, v buffers) and drel_bias
static void lse_case_backward(LseCase* t, float* dqb, float* dkvb, float* dbias, const float* out, const float* lse) {
    int C = t->NH * t->HS;
    float *dq, *dk, *dv;
    grad_pointers(&t->x, dqb, dkvb, C, &dq, &dk, &dv);
    lse_attention_backward(t->op, dq, dk, dv, dbias, t->R, out, lse, t->x.q, t->x.k, t->x.v, t->bias, t->mask,
                           t->n_mask, t->B, t->Tq, t->Tk, t->NH, t->HS, t->x.q_stride, t->x.kv_stride);
}
static void test_gradients(int op, int B, int Tq, int Tk, int NH, int HS, int with_bias, int mask_kind, int n_mask,
                           int separate_q) {
    check_case(op, Tq, Tk, with_bias, separate_q);
    if (mask_kind < 2) ttt_die("test: the gradient check wants a mask with an all -inf row");
    LseCase t = {0};
    t.op = op; t.B = B; t.Tq = Tq; t.Tk = Tk; t.NH = NH; t.HS = HS; t.n_mask = n_mask;
    int C = NH * HS;
    char tag[128], name[192];
    snprintf(tag, sizeof(tag), "%s attention", op_name(op));
    t.x = make_qkv(B, Tq, Tk, C, separate_q);
    size_t nq = t.x.nq, nkv = t.x.nkv, nout = (size_t)B * Tq * C, nlse = (size_t)B * NH * Tq;
    size_t nb = (size_t)NH * Tq * Tk;
    if (with_bias) t.bias = random_tensor(&rng, nb, -1, 1);
    t.R = random_tensor(&rng, nout, -1, 1);
    t.mask = make_mask(n_mask, Tq, Tk, mask_kind);
    t.out = calloc(nout, 4); t.lse = calloc(nlse, 4);
    lse_loss(&t);
    // batch 0 query 1 has no finite score: its output row is zero and its lse -inf (every head)
    int zero_row = 1, inf_lse = 1;
    for (int c = 0; c < C; c++) zero_row &= t.out[(size_t)1 * C + c] == 0.0f;
    for (int h = 0; h < NH; h++) inf_lse &= t.lse[(size_t)h * Tq + 1] == -INFINITY;
    CHECK(zero_row && inf_lse, "%s: all -inf row: output not zero or lse not -inf", tag);
    float *dqb = separate_q ? calloc(nq, 4) : NULL, *dkvb = calloc(nkv, 4), *dbias = with_bias ? calloc(nb, 4) : NULL;
    lse_case_backward(&t, dqb, dkvb, dbias, t.out, t.lse);
    // copies: the loss calls below overwrite out and lse
    float *out = mallocCheck(nout * 4), *lse = mallocCheck(nlse * 4);
    memcpy(out, t.out, nout * 4); memcpy(lse, t.lse, nlse * 4);
    if (separate_q) {
        snprintf(name, sizeof(name), "%s dq (%s, all -inf row)", tag, mask_name(mask_kind) + 1);
        grad_check(name, t.x.qb, nq, dqb, lse_loss, &t, EPS, TOL, MAXC);
        snprintf(name, sizeof(name), "%s dk, dv", tag);
        grad_check(name, t.x.kvb, nkv, dkvb, lse_loss, &t, EPS, TOL, MAXC);
    } else {
        snprintf(name, sizeof(name), "%s dqkv (%s, all -inf row)", tag, mask_name(mask_kind) + 1);
        grad_check(name, t.x.kvb, nkv, dkvb, lse_loss, &t, EPS, TOL, MAXC);
    }
    if (with_bias) {
        snprintf(name, sizeof(name), "%s drel_bias", tag);
        grad_check(name, t.bias, nb, dbias, lse_loss, &t, EPS, TOL, MAXC);
    }
    // the all -inf row's query gets no gradient; q's padding none
    const float* dq_rows = separate_q ? dqb : dkvb;
    int zero_grad = 1;
    for (int c = 0; c < C; c++) zero_grad &= dq_rows[(size_t)1 * t.x.q_stride + c] == 0.0f;
    CHECK(zero_grad, "%s: all -inf row: dq not zero", tag);
    if (separate_q) {
        int pad_zero = 1;
        for (int r = 0; r < B * Tq; r++) for (int c = C; c < t.x.q_stride; c++) pad_zero &= dqb[(size_t)r * t.x.q_stride + c] == 0.0f;
        CHECK(pad_zero, "%s: the padding columns of q got a gradient", tag);
    }
    // accumulate: a second call adds the same again
    float *dqb2 = separate_q ? mallocCheck(nq * 4) : NULL, *dkvb2 = mallocCheck(nkv * 4);
    float* dbias2 = with_bias ? mallocCheck(nb * 4) : NULL;
    for (size_t i = 0; i < nq; i++) dqb2[i] = 2.0f * dqb[i];
    for (size_t i = 0; i < nkv; i++) dkvb2[i] = 2.0f * dkvb[i];
    if (with_bias) for (size_t i = 0; i < nb; i++) dbias2[i] = 2.0f * dbias[i];
    lse_case_backward(&t, dqb, dkvb, dbias, out, lse);
    if (separate_q) {
        snprintf(name, sizeof(name), "%s backward accumulates (dq)", tag);
        check_close(name, dqb, dqb2, nq, 1e-6);
        snprintf(name, sizeof(name), "%s backward accumulates (dk, dv)", tag);
        check_close(name, dkvb, dkvb2, nkv, 1e-6);
    } else {
        snprintf(name, sizeof(name), "%s backward accumulates (dqkv)", tag);
        check_close(name, dkvb, dkvb2, nkv, 1e-6);
    }
    if (with_bias) {
        snprintf(name, sizeof(name), "%s backward accumulates (drel_bias)", tag);
        check_close(name, dbias, dbias2, nb, 1e-6);
    }
    // NULL gradients: dv alone (dq = dk = drel_bias = NULL) is the same dv, and nothing else of
    // the kv rows is written
    float* dv_only = calloc(nkv, 4);
    int v_col = separate_q ? C : 2 * C;   // where v starts in a kv row
    lse_attention_backward(op, NULL, NULL, dv_only + v_col, NULL, t.R, out, lse, t.x.q, t.x.k, t.x.v, t.bias, t.mask,
                           n_mask, B, Tq, Tk, NH, HS, t.x.q_stride, t.x.kv_stride);
    int dv_same = 1, others_untouched = 1;
    for (int r = 0; r < B * Tk; r++) for (int c = 0; c < t.x.kv_stride; c++) {
        size_t i = (size_t)r * t.x.kv_stride + c;
        if (c >= v_col) dv_same &= dv_only[i] * 2.0f == dkvb2[i];
        else others_untouched &= dv_only[i] == 0.0f;
    }
    CHECK(dv_same && others_untouched, "%s: backward with dq = dk = NULL: dv differs or dq/dk written", tag);
    free(t.x.qb); free(t.x.kvb); free(t.bias); free(t.R); free(t.mask); free(t.out); free(t.lse); free(dqb);
    free(dkvb); free(dbias); free(out); free(lse); free(dqb2); free(dkvb2); free(dbias2); free(dv_only);
}

// a backward without the forward's lse: exit status 1 and one error line on stderr (in a child
// process); q, k, v fused (Tq = Tk) or separate with q_stride C, on small fixed nonzero inputs
typedef struct { int op, Tq, Tk, separate_q; } MissingLse;
static void backward_without_lse(void* p) {   // in the child: must exit 1 before returning
    const MissingLse* m = p;
    int op = m->op, Tq = m->Tq, Tk = m->Tk, separate_q = m->separate_q;
    int B = 1, NH = 1, HS = 2, C = 2;
    float buf[64], dbuf[64] = {0}, out[16], dout[16];
    for (int i = 0; i < 64; i++) buf[i] = (float)((i + 1) / 10.0);
    for (int i = 0; i < 16; i++) dout[i] = 1.0f;
    int q_stride = separate_q ? C : 3 * C, kv_stride = separate_q ? 2 * C : 3 * C;
    float *q = buf, *kv = separate_q ? buf + Tq * C : buf, *k = separate_q ? kv : kv + C, *v = k + C;
    float *dq = dbuf, *dkv = separate_q ? dbuf + Tq * C : dbuf, *dk = separate_q ? dkv : dkv + C, *dv = dk + C;
    lse_attention_forward(op, out, NULL, q, k, v, NULL, NULL, 1, B, Tq, Tk, NH, HS, q_stride, kv_stride);
    lse_attention_backward(op, dq, dk, dv, NULL, dout, out, NULL, q, k, v, NULL, NULL, 1, B, Tq, Tk, NH, HS,
                           q_stride, kv_stride);
}
static void test_missing_lse_dies(int op, int Tq, int Tk, int separate_q) {
    check_case(op, Tq, Tk, 0, separate_q);
    MissingLse m = {op, Tq, Tk, separate_q};
    char text[512];
    int status = 0;
    int ran = run_in_child(backward_without_lse, &m, text, sizeof(text), &status);
    size_t got = strlen(text);
    CHECK(ran, "%s: pipe/fork/wait failed", op_name(op));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1,
          "%s: a backward without lse did not exit with status 1 (status %d)", op_name(op), status);
    char* nl = strchr(text, '\n');
    CHECK(got > 1 && nl == text + got - 1 && strncmp(text, "error: ", 7) == 0,
          "%s: a backward without lse did not print exactly one error line: '%s'", op_name(op), text);
}

// qkv_window_attention (Swin's qkv linear and window attention as one op): the forward equals
// linear_forward then window_attention_forward bit for bit (qkv too); the backward against
// central finite differences of L = sum(out * R) for x, w, b and rel_bias; dx is written (a
// NaN-filled dx and a NaN-filled dqkv scratch are fully overwritten), dw, db, drel_bias accumulate
typedef struct { float *out, *lse, *qkv, *x, *w, *b, *rel, *mask, *R; int B, T, NH, HS, n_mask; } QkvCase;
static double qkv_loss(void* p) {
    QkvCase* t = p;
    qkv_window_attention_forward_cpu(t->out, t->lse, t->qkv, t->x, t->w, t->b, t->rel, t->mask, t->n_mask, t->B,
                                     t->T, t->NH, t->HS);
    return dot_double(t->out, t->R, (size_t)t->B * t->T * t->NH * t->HS);
}
static void test_qkv_window_attention(int B, int T, int NH, int HS, int n_mask) {
    QkvCase t = {0};
    t.B = B; t.T = T; t.NH = NH; t.HS = HS; t.n_mask = n_mask;
    int C = NH * HS, N = B * T;
    size_t nx = (size_t)N * C, nqkv = (size_t)N * 3 * C, nw = (size_t)3 * C * C, nrel = (size_t)NH * T * T;
    t.x = random_tensor(&rng, nx, -1, 1); t.w = random_tensor(&rng, nw, -0.5, 0.5);
    t.b = random_tensor(&rng, 3 * C, -1, 1); t.rel = random_tensor(&rng, nrel, -1, 1);
    t.mask = make_mask(n_mask, T, T, 1); t.R = random_tensor(&rng, nx, -1, 1);
    t.out = calloc(nx, 4); t.lse = calloc((size_t)B * NH * T, 4); t.qkv = calloc(nqkv, 4);
    qkv_loss(&t);
    float *qkv = calloc(nqkv, 4), *out = calloc(nx, 4), *lse = calloc((size_t)B * NH * T, 4);
    linear_forward_cpu(qkv, t.x, t.w, t.b, N, C, 3 * C);
    window_attention_forward_cpu(out, lse, qkv, qkv + C, qkv + 2 * C, t.rel, t.mask, n_mask, B, T, NH, HS, 3 * C,
                                 3 * C);
    check_close("qkv_window_attention forward: qkv == linear", t.qkv, qkv, nqkv, 0);
    check_close("qkv_window_attention forward == linear, window_attention", t.out, out, nx, 0);
    float *dx = malloc(nx * 4), *dqkv = malloc(nqkv * 4);
    for (size_t i = 0; i < nx; i++) dx[i] = NAN;   // written, so never read
    for (size_t i = 0; i < nqkv; i++) dqkv[i] = NAN;
    size_t np[3] = {nw, (size_t)3 * C, nrel};
    float *dparam[3], *dinit[3];
    for (int k = 0; k < 3; k++) {
        dparam[k] = random_tensor(&rng, np[k], -1, 1);
        dinit[k] = malloc(np[k] * 4);
        memcpy(dinit[k], dparam[k], np[k] * 4);
    }
    qkv_window_attention_backward_cpu(dx, dparam[0], dparam[1], dparam[2], dqkv, t.R, t.out, t.lse, t.qkv, t.x, t.w,
                                      t.b, t.rel, t.mask, n_mask, B, T, NH, HS);
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < np[k]; i++) dparam[k][i] -= dinit[k][i];   // the increments (+=)
    char label[96];
    snprintf(label, sizeof(label), "qkv_window_attention %dx%d, %d heads dx (written over NaN)", B, T, NH);
    grad_check(label, t.x, nx, dx, qkv_loss, &t, EPS, TOL, MAXC);
    float* params[3] = {t.w, t.b, t.rel};
    const char* names[3] = {"dw", "db", "drel_bias"};
    for (int k = 0; k < 3; k++) {
        snprintf(label, sizeof(label), "qkv_window_attention %dx%d, %d heads %s (+=)", B, T, NH, names[k]);
        grad_check(label, params[k], np[k], dparam[k], qkv_loss, &t, EPS, TOL, MAXC);
        free(dparam[k]); free(dinit[k]);
    }
    free(t.out); free(t.lse); free(t.qkv); free(t.x); free(t.w); free(t.b); free(t.rel); free(t.mask); free(t.R);
    free(qkv); free(out); free(lse); free(dx); free(dqkv);
}

int main(void) {
    // first: no OpenMP threads exist yet when they fork
    test_missing_lse_dies(WINDOW, 3, 3, 0);
    test_missing_lse_dies(FLASH, 2, 3, 1);
    // window: Tq = Tk = T, rel_bias, Swin's masks (each op's cases from seed 14, as before)
    //          op      B   Tq   Tk   NH  HS bias mask n_mask separate_q
    rng_seed(&rng, 14);
    test_equal_to_attention(WINDOW, 4, 7, 7, 2, 5, 1, 2, 2, 0);       // tiny, -inf mask with an all -inf row
    test_equal_to_attention(WINDOW, 3, 16, 16, 1, 8, 0, 0, 1, 1);     // no bias, no mask, separate q
    test_equal_to_attention(WINDOW, 6, 49, 49, 3, 32, 1, 1, 3, 0);    // Swin-S stage 1 shifted windows
    test_equal_to_attention(WINDOW, 5, 49, 49, 12, 32, 1, 2, 2, 1);   // 12 heads, -inf mask, separate q
    test_gradients(WINDOW, 4, 7, 7, 2, 5, 1, 2, 2, 0);                // -100, -inf, all -inf row, fused qkv
    test_qkv_window_attention(3, 9, 2, 4, 2);                         // the qkv linear and window attention op
    // flash: general Tq, Tk, no bias, Mask2Former's 0 / -inf masks
    rng_seed(&rng, 14);
    test_equal_to_attention(FLASH, 2, 7, 13, 2, 5, 0, 3, 2, 1);       // tiny, Tq < Tk, -inf mask, all -inf row
    test_equal_to_attention(FLASH, 3, 11, 11, 3, 8, 0, 0, 1, 0);      // self-attention, fused qkv, no mask
    test_equal_to_attention(FLASH, 2, 9, 4, 2, 6, 0, 3, 1, 1);        // Tq > Tk, one mask for both batches
    test_equal_to_attention(FLASH, 2, 48, 300, 8, 32, 0, 3, 2, 1);    // g's masked cross-attention, 8 heads
    test_equal_to_attention(FLASH, 1, 100, 468, 8, 32, 0, 3, 1, 1);   // h's cross-attention at 1/32 of 384x1248
    test_equal_to_attention(FLASH, 2, 100, 100, 8, 32, 0, 0, 1, 1);   // h's self-attention
    test_gradients(FLASH, 3, 5, 9, 2, 4, 0, 3, 3, 1);                 // Tq < Tk, separate q with padding
    return test_summary("test_lse_attention");
}
