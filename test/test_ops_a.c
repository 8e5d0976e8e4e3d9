// test/test_ops_a.c: ops part A (elementwise, linear, layernorm, groupnorm, activations,
// softmax, attention, conv2d) on the sizes the model meets at its edges: odd sizes,
// cross-attention Tq != Tk with strided q/k/v, a learnable bias AND a mask holding -100
// and -INFINITY, a mask shared over the batch (n_mask < B), every conv2d geometry the
// model uses (3x3 same, 3x3 stride 2, 1x1, 4x4/4 patch embedding with a ragged edge).
// Forward against naive double formulas, backward against central finite differences
// of L = sum(out * R), and one check that backward accumulates (+=).
#include "test.h"

static Rng rng;
#define EPS 1e-2f      // finite-difference step
#define TOL 1e-2       // gradient relative error bound
#define MAXC 300       // checked elements per tensor

static float* zeros(size_t n) { return (float*)callocCheck(n, sizeof(float)); }

// ----------------------------------------------------------------------------
// elementwise

static void test_elementwise(void) {
    size_t n = 1001;
    float *a = random_tensor(&rng, n, -2, 2), *b = random_tensor(&rng, n, -2, 2);
    float *out = zeros(n), *ref = zeros(n), *x = zeros(n);
    add_forward_cpu(out, a, b, n);
    for (size_t i = 0; i < n; i++) ref[i] = a[i] + b[i];
    check_close("add_forward", out, ref, n, 0);
    memcpy(x, a, n * sizeof(float));
    add_inplace_cpu(x, b, n);
    check_close("add_inplace", x, ref, n, 0);
    scale_inplace_cpu(x, -0.75f, n);
    for (size_t i = 0; i < n; i++) ref[i] *= -0.75f;
    check_close("scale_inplace", x, ref, n, 0);
    free(a); free(b); free(out); free(ref); free(x);
}

// ----------------------------------------------------------------------------
// per-sample row scaling (drop-path): out[b, i] = inp[b, i] * scale[b]

typedef struct { float *out, *inp, *scale, *R; int B; size_t N; } ScaleRowsCase;
static double scale_rows_loss(void* p) {
    ScaleRowsCase* t = p;
    scale_rows_forward_cpu(t->out, t->inp, t->scale, t->B, t->N);
    return dot_double(t->out, t->R, (size_t)t->B * t->N);
}
static void test_scale_rows(void) {
    ScaleRowsCase t;
    t.B = 5; t.N = 37;
    size_t n = (size_t)t.B * t.N;
    float scale[5] = {0.0f, 1.0f / (1.0f - 0.3f), -0.6f, 1.0f, 0.0f};   // dropped, kept, any value
    t.scale = scale;
    t.inp = random_tensor(&rng, n, -2, 2); t.R = random_tensor(&rng, n, -1, 1); t.out = zeros(n);
    scale_rows_loss(&t);
    float* ref = zeros(n);
    for (int b = 0; b < t.B; b++)
        for (size_t i = 0; i < t.N; i++) ref[b * t.N + i] = t.inp[b * t.N + i] * scale[b];
    check_close("scale_rows_forward vs naive", t.out, ref, n, 0);
    float* x = zeros(n);   // in place: out == inp
    memcpy(x, t.inp, n * sizeof(float));
    scale_rows_forward_cpu(x, x, scale, t.B, t.N);
    check_close("scale_rows_forward in place", x, ref, n, 0);
    // backward from a non-zero start: the increment is the gradient (+=)
    float* dinp = random_tensor(&rng, n, -1, 1);
    float* init = zeros(n);
    memcpy(init, dinp, n * sizeof(float));
    scale_rows_backward_cpu(dinp, t.R, scale, t.B, t.N);
    for (size_t i = 0; i < n; i++) dinp[i] -= init[i];
    grad_check("scale_rows dinp (+= from a non-zero start)", t.inp, n, dinp, scale_rows_loss, &t, EPS, TOL, MAXC);
    int zero_rows_zero = 1;
    for (size_t i = 0; i < t.N; i++) zero_rows_zero &= dinp[i] == 0.0f && dinp[4 * t.N + i] == 0.0f;
    CHECK(zero_rows_zero, "scale_rows_backward: rows scaled by 0 get a non-zero gradient");
    free(t.inp); free(t.R); free(t.out); free(ref); free(x); free(dinp); free(init);
}

// ----------------------------------------------------------------------------
// linear

typedef struct { float *out, *inp, *w, *b, *R; int N, C, OC; } LinearCase;
static double linear_loss(void* p) {
    LinearCase* t = p;
    linear_forward_cpu(t->out, t->inp, t->w, t->b, t->N, t->C, t->OC);
    return dot_double(t->out, t->R, (size_t)t->N * t->OC);
}
static void test_linear_case(int N, int C, int OC, int use_bias) {
    LinearCase t = {0}; t.N = N; t.C = C; t.OC = OC;
    t.inp = random_tensor(&rng, (size_t)N * C, -1, 1); t.w = random_tensor(&rng, (size_t)OC * C, -1, 1);
    t.b = use_bias ? random_tensor(&rng, OC, -1, 1) : NULL;
    t.R = random_tensor(&rng, (size_t)N * OC, -1, 1); t.out = zeros((size_t)N * OC);
    linear_loss(&t);
    float* ref = zeros((size_t)N * OC);
    for (int n = 0; n < N; n++) for (int o = 0; o < OC; o++) {
        double s = t.b ? t.b[o] : 0.0;
        for (int c = 0; c < C; c++) s += (double)t.inp[n * C + c] * t.w[o * C + c];
        ref[n * OC + o] = (float)s;
    }
    char label[96];
    snprintf(label, sizeof(label), "linear %dx%d->%d%s forward vs naive", N, C, OC, use_bias ? "" : " (no bias)");
    check_close(label, t.out, ref, (size_t)N * OC, 1e-5);
    float *di = zeros((size_t)N * C), *dw = zeros((size_t)OC * C), *db = zeros(OC);
    linear_backward_cpu(di, dw, t.b ? db : NULL, t.R, t.inp, t.w, N, C, OC);
    snprintf(label, sizeof(label), "linear %dx%d->%d dinp", N, C, OC);
    grad_check(label, t.inp, (size_t)N * C, di, linear_loss, &t, EPS, TOL, MAXC);
    snprintf(label, sizeof(label), "linear %dx%d->%d dweight", N, C, OC);
    grad_check(label, t.w, (size_t)OC * C, dw, linear_loss, &t, EPS, TOL, MAXC);
    if (t.b) {
        snprintf(label, sizeof(label), "linear %dx%d->%d dbias", N, C, OC);
        grad_check(label, t.b, OC, db, linear_loss, &t, EPS, TOL, MAXC);
        // accumulation: a second backward into the same buffers doubles them
        float *di2 = zeros((size_t)N * C), *dw2 = zeros((size_t)OC * C), *db2 = zeros(OC);
        memcpy(di2, di, (size_t)N * C * 4); memcpy(dw2, dw, (size_t)OC * C * 4); memcpy(db2, db, OC * 4);
        linear_backward_cpu(di, dw, db, t.R, t.inp, t.w, N, C, OC);
        for (size_t i = 0; i < (size_t)N * C; i++) di2[i] *= 2;
        for (size_t i = 0; i < (size_t)OC * C; i++) dw2[i] *= 2;
        for (int i = 0; i < OC; i++) db2[i] *= 2;
        check_close("linear backward accumulates: dinp doubles", di, di2, (size_t)N * C, 1e-6);
        check_close("linear backward accumulates: dweight doubles", dw, dw2, (size_t)OC * C, 1e-6);
        check_close("linear backward accumulates: dbias doubles", db, db2, OC, 1e-6);
        free(di2); free(dw2); free(db2);
    }
    free(t.inp); free(t.w); free(t.b); free(t.R); free(t.out); free(ref); free(di); free(dw); free(db);
}

// a size that crosses every tile boundary of the CPU matmul (row tasks, column blocks,
// K chunks): forward and all three gradients against naive double sums
static void test_linear_large(void) {
    int N = 301, C = 271, OC = 37;
    float *inp = random_tensor(&rng, (size_t)N * C, -1, 1), *w = random_tensor(&rng, (size_t)OC * C, -1, 1);
    float *b = random_tensor(&rng, OC, -1, 1), *dout = random_tensor(&rng, (size_t)N * OC, -1, 1);
    float *out = zeros((size_t)N * OC), *di = zeros((size_t)N * C), *dw = zeros((size_t)OC * C), *db = zeros(OC);
    float *ref = zeros((size_t)N * OC), *rdi = zeros((size_t)N * C), *rdw = zeros((size_t)OC * C), *rdb = zeros(OC);
    linear_forward_cpu(out, inp, w, b, N, C, OC);
    linear_backward_cpu(di, dw, db, dout, inp, w, N, C, OC);
    for (int n = 0; n < N; n++) for (int o = 0; o < OC; o++) {
        double s = b[o];
        for (int c = 0; c < C; c++) s += (double)inp[n * C + c] * w[o * C + c];
        ref[n * OC + o] = (float)s;
    }
    for (int n = 0; n < N; n++) for (int c = 0; c < C; c++) {
        double s = 0;
        for (int o = 0; o < OC; o++) s += (double)dout[n * OC + o] * w[o * C + c];
        rdi[n * C + c] = (float)s;
    }
    for (int o = 0; o < OC; o++) {
        double sb = 0;
        for (int n = 0; n < N; n++) sb += dout[n * OC + o];
        rdb[o] = (float)sb;
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int n = 0; n < N; n++) s += (double)dout[n * OC + o] * inp[n * C + c];
            rdw[o * C + c] = (float)s;
        }
    }
    check_close("linear 301x271->37 forward vs naive", out, ref, (size_t)N * OC, 1e-5);
    check_close("linear 301x271->37 dinp vs naive", di, rdi, (size_t)N * C, 1e-5);
    check_close("linear 301x271->37 dweight vs naive", dw, rdw, (size_t)OC * C, 1e-5);
    check_close("linear 301x271->37 dbias vs naive", db, rdb, OC, 1e-5);
    free(inp); free(w); free(b); free(dout); free(out); free(di); free(dw); free(db);
    free(ref); free(rdi); free(rdw); free(rdb);
}

// linear_backward_write: dinp WRITTEN (into NaN, then into 1e30 twice) equals linear_backward into
// zeros bit for bit; dweight and dbias still accumulate onto a non-zero start, as linear_backward's;
// with OC 0 (an empty product) dinp is written as zeros
static void test_linear_write(int N, int C, int OC) {
    size_t ni = (size_t)N * C, nw = (size_t)OC * C;
    float *inp = random_tensor(&rng, ni, -1, 1), *w = random_tensor(&rng, nw, -1, 1);
    float* dout = random_tensor(&rng, (size_t)N * OC, -1, 1);
    float *dw_init = random_tensor(&rng, nw, -1, 1), *db_init = random_tensor(&rng, OC, -1, 1);
    float *di_ref = zeros(ni), *dw_ref = zeros(nw), *db_ref = zeros(OC);
    memcpy(dw_ref, dw_init, nw * sizeof(float)); memcpy(db_ref, db_init, OC * sizeof(float));
    linear_backward_cpu(di_ref, dw_ref, db_ref, dout, inp, w, N, C, OC);
    float *di = mallocCheck(ni * sizeof(float)), *dw = zeros(nw), *db = zeros(OC);
    char label[96];
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < ni; i++) di[i] = k ? 1e30f : NAN;
        memcpy(dw, dw_init, nw * sizeof(float)); memcpy(db, db_init, OC * sizeof(float));
        linear_backward_write_cpu(di, dw, db, dout, inp, w, N, C, OC);
        if (k) linear_backward_write_cpu(di, NULL, NULL, dout, inp, w, N, C, OC);   // twice: still written
        snprintf(label, sizeof(label), "linear_backward_write %dx%d->%d dinp over %s", N, C, OC, k ? "1e30, twice" : "NaN");
        CHECK(memcmp(di, di_ref, ni * sizeof(float)) == 0, "%s: not linear_backward into zeros", label);
        check_close(label, di, di_ref, ni, 0.0);
        snprintf(label, sizeof(label), "linear_backward_write %dx%d->%d dweight (+=)", N, C, OC);
        check_close(label, dw, dw_ref, nw, 0.0);
        snprintf(label, sizeof(label), "linear_backward_write %dx%d->%d dbias (+=)", N, C, OC);
        check_close(label, db, db_ref, OC, 0.0);
    }
    // OC 0: dinp = the empty sum, zeros
    for (size_t i = 0; i < ni; i++) di[i] = NAN;
    linear_backward_write_cpu(di, NULL, NULL, dout, inp, w, N, C, 0);
    int all_zero = 1;
    for (size_t i = 0; i < ni; i++) all_zero &= di[i] == 0.0f;
    CHECK(all_zero, "linear_backward_write %dx%d->0: dinp not written as zeros", N, C);
    free(inp); free(w); free(dout); free(dw_init); free(db_init); free(di_ref); free(dw_ref); free(db_ref);
    free(di); free(dw); free(db);
}

// mlp (Swin's fc2(gelu(fc1(x)))): the forward equals linear (pre: without b1), gelu of pre + b1,
// linear, bit for bit (pre and hidden too); the gradients against finite differences; dx is written (a NaN-filled dx is fully
// overwritten, and so is a NaN-filled dhidden scratch), the parameter gradients accumulate
typedef struct { float *out, *pre, *hidden, *x, *w1, *b1, *w2, *b2, *R; int N, C, Ch; } MlpCase;
static double mlp_loss(void* p) {
    MlpCase* t = p;
    mlp_forward_cpu(t->out, t->pre, t->hidden, t->x, t->w1, t->b1, t->w2, t->b2, t->N, t->C, t->Ch);
    return dot_double(t->out, t->R, (size_t)t->N * t->C);
}
static void test_mlp(int N, int C, int Ch) {
    MlpCase t = {0}; t.N = N; t.C = C; t.Ch = Ch;
    size_t nx = (size_t)N * C, nh = (size_t)N * Ch, nw = (size_t)Ch * C;
    t.x = random_tensor(&rng, nx, -1, 1); t.w1 = random_tensor(&rng, nw, -1, 1); t.b1 = random_tensor(&rng, Ch, -1, 1);
    t.w2 = random_tensor(&rng, nw, -1, 1); t.b2 = random_tensor(&rng, C, -1, 1); t.R = random_tensor(&rng, nx, -1, 1);
    t.out = zeros(nx); t.pre = zeros(nh); t.hidden = zeros(nh);
    mlp_loss(&t);
    float *pre = zeros(nh), *g = zeros(nh), *ref = zeros(nx);
    linear_forward_cpu(pre, t.x, t.w1, NULL, N, C, Ch);   // pre: fc1 without its bias
    check_close("mlp forward: pre = fc1 without b1", t.pre, pre, nh, 0);
    for (int r = 0; r < N; r++) for (int c = 0; c < Ch; c++) pre[r * Ch + c] += t.b1[c];
    gelu_forward_cpu(g, pre, nh);
    linear_forward_cpu(ref, g, t.w2, t.b2, N, Ch, C);
    check_close("mlp forward == linear, gelu, linear", t.out, ref, nx, 0);
    check_close("mlp forward: hidden = gelu(pre + b1)", t.hidden, g, nh, 0);
    float *dx = zeros(nx), *dh = zeros(nh);
    float* dparam[4];
    float* dinit[4];
    size_t np[4] = {nw, (size_t)Ch, nw, (size_t)C};
    for (int k = 0; k < 4; k++) {
        dparam[k] = random_tensor(&rng, np[k], -1, 1);
        dinit[k] = zeros(np[k]);
        memcpy(dinit[k], dparam[k], np[k] * sizeof(float));
    }
    for (size_t i = 0; i < nx; i++) dx[i] = NAN;   // written, so never read
    for (size_t i = 0; i < nh; i++) dh[i] = NAN;
    mlp_backward_cpu(dx, dparam[0], dparam[1], dparam[2], dparam[3], dh, t.hidden, t.R, t.pre, t.x, t.w1, t.b1,
                     t.w2, N, C, Ch);
    for (int k = 0; k < 4; k++)
        for (size_t i = 0; i < np[k]; i++) dparam[k][i] -= dinit[k][i];   // the increments (+=)
    char label[96];
    snprintf(label, sizeof(label), "mlp %dx%d->%d dx (written over NaN)", N, C, Ch);
    grad_check(label, t.x, nx, dx, mlp_loss, &t, EPS, TOL, MAXC);
    float* params[4] = {t.w1, t.b1, t.w2, t.b2};
    const char* names[4] = {"dw1", "db1", "dw2", "db2"};
    for (int k = 0; k < 4; k++) {
        snprintf(label, sizeof(label), "mlp %dx%d->%d %s (+=)", N, C, Ch, names[k]);
        grad_check(label, params[k], np[k], dparam[k], mlp_loss, &t, EPS, TOL, MAXC);
        free(dparam[k]); free(dinit[k]);
    }
    free(t.out); free(t.pre); free(t.hidden); free(t.x); free(t.w1); free(t.b1); free(t.w2); free(t.b2); free(t.R);
    free(pre); free(g); free(ref); free(dx); free(dh);
}

// ----------------------------------------------------------------------------
// layernorm and groupnorm

typedef struct { float *out, *mean, *rstd, *inp, *w, *b, *R; int N, C, B, HW, G; } NormCase;
static double layernorm_loss(void* p) {
    NormCase* t = p;
    layernorm_forward_cpu(t->out, t->mean, t->rstd, t->inp, t->w, t->b, t->N, t->C);
    return dot_double(t->out, t->R, (size_t)t->N * t->C);
}
static double groupnorm_loss(void* p) {
    NormCase* t = p;
    groupnorm_forward_cpu(t->out, t->mean, t->rstd, t->inp, t->w, t->b, t->B, t->HW, t->C, t->G);
    return dot_double(t->out, t->R, (size_t)t->B * t->HW * t->C);
}
static void test_layernorm(int N, int C) {
    NormCase t = {0}; t.N = N; t.C = C;
    size_t n = (size_t)t.N * t.C;
    t.inp = random_tensor(&rng, n, -2, 3); t.w = random_tensor(&rng, t.C, 0.5, 1.5);
    t.b = random_tensor(&rng, t.C, -1, 1); t.R = random_tensor(&rng, n, -1, 1);
    t.out = zeros(n); t.mean = zeros(t.N); t.rstd = zeros(t.N);
    layernorm_loss(&t);
    float* ref = zeros(n);
    for (int r = 0; r < t.N; r++) {
        double m = 0, v = 0;
        for (int c = 0; c < t.C; c++) m += t.inp[r * t.C + c];
        m /= t.C;
        for (int c = 0; c < t.C; c++) v += (t.inp[r * t.C + c] - m) * (t.inp[r * t.C + c] - m);
        v /= t.C;
        for (int c = 0; c < t.C; c++)
            ref[r * t.C + c] = (float)((t.inp[r * t.C + c] - m) / sqrt(v + 1e-5) * t.w[c] + t.b[c]);
    }
    char label[80];
    snprintf(label, sizeof(label), "layernorm %dx%d forward vs naive", N, C);
    check_close(label, t.out, ref, n, 1e-5);
    float *di = zeros(n), *dw = zeros(t.C), *db = zeros(t.C);
    layernorm_backward_cpu(di, dw, db, t.R, t.inp, t.w, t.mean, t.rstd, t.N, t.C);
    snprintf(label, sizeof(label), "layernorm %dx%d dinp", N, C);
    grad_check(label, t.inp, n, di, layernorm_loss, &t, EPS, TOL, MAXC);
    snprintf(label, sizeof(label), "layernorm %dx%d dweight", N, C);
    grad_check(label, t.w, t.C, dw, layernorm_loss, &t, EPS, TOL, MAXC);
    snprintf(label, sizeof(label), "layernorm %dx%d dbias", N, C);
    grad_check(label, t.b, t.C, db, layernorm_loss, &t, EPS, TOL, MAXC);
    free(t.inp); free(t.w); free(t.b); free(t.R); free(t.out); free(t.mean); free(t.rstd);
    free(ref); free(di); free(dw); free(db);
}
static void test_groupnorm(int B, int HW, int C, int G) {
    NormCase t = {0}; t.B = B; t.HW = HW; t.C = C; t.G = G;
    size_t n = (size_t)t.B * t.HW * t.C;
    int Cg = t.C / t.G;
    t.inp = random_tensor(&rng, n, -2, 3); t.w = random_tensor(&rng, t.C, 0.5, 1.5);
    t.b = random_tensor(&rng, t.C, -1, 1); t.R = random_tensor(&rng, n, -1, 1);
    t.out = zeros(n); t.mean = zeros(t.B * t.G); t.rstd = zeros(t.B * t.G);
    groupnorm_loss(&t);
    float* ref = zeros(n);
    for (int b = 0; b < t.B; b++) for (int g = 0; g < t.G; g++) {
        double m = 0, v = 0, cnt = (double)t.HW * Cg;
        for (int p = 0; p < t.HW; p++) for (int c = g * Cg; c < (g + 1) * Cg; c++) m += t.inp[(b * t.HW + p) * t.C + c];
        m /= cnt;
        for (int p = 0; p < t.HW; p++) for (int c = g * Cg; c < (g + 1) * Cg; c++) {
            double d = t.inp[(b * t.HW + p) * t.C + c] - m; v += d * d;
        }
        v /= cnt;
        for (int p = 0; p < t.HW; p++) for (int c = g * Cg; c < (g + 1) * Cg; c++) {
            size_t i = (size_t)(b * t.HW + p) * t.C + c;
            ref[i] = (float)((t.inp[i] - m) / sqrt(v + 1e-5) * t.w[c] + t.b[c]);
        }
    }
    char label[80];
    snprintf(label, sizeof(label), "groupnorm B%d HW%d C%d G%d forward vs naive", B, HW, C, G);
    check_close(label, t.out, ref, n, 1e-5);
    float *di = zeros(n), *dw = zeros(t.C), *db = zeros(t.C);
    groupnorm_backward_cpu(di, dw, db, t.R, t.inp, t.w, t.mean, t.rstd, t.B, t.HW, t.C, t.G);
    snprintf(label, sizeof(label), "groupnorm B%d HW%d C%d G%d dinp", B, HW, C, G);
    grad_check(label, t.inp, n, di, groupnorm_loss, &t, EPS, TOL, MAXC);
    snprintf(label, sizeof(label), "groupnorm B%d HW%d C%d G%d dweight", B, HW, C, G);
    grad_check(label, t.w, t.C, dw, groupnorm_loss, &t, EPS, TOL, MAXC);
    snprintf(label, sizeof(label), "groupnorm B%d HW%d C%d G%d dbias", B, HW, C, G);
    grad_check(label, t.b, t.C, db, groupnorm_loss, &t, EPS, TOL, MAXC);
    free(t.inp); free(t.w); free(t.b); free(t.R); free(t.out); free(t.mean); free(t.rstd);
    free(ref); free(di); free(dw); free(db);
}

// ----------------------------------------------------------------------------
// activations and softmax (softmax rows with -INFINITY entries included)

typedef struct { float *out, *inp, *R; int kind, N, C; } ActCase;
static const char* act_names[4] = {"gelu", "relu", "sigmoid", "softmax"};
static double act_loss(void* p) {
    ActCase* t = p; size_t n = (size_t)t->N * t->C;
    if (t->kind == 0) gelu_forward_cpu(t->out, t->inp, n);
    if (t->kind == 1) relu_forward_cpu(t->out, t->inp, n);
    if (t->kind == 2) sigmoid_forward_cpu(t->out, t->inp, n);
    if (t->kind == 3) softmax_forward_cpu(t->out, t->inp, t->N, t->C);
    return dot_double(t->out, t->R, n);
}
static void test_activations(void) {
    for (int kind = 0; kind < 4; kind++) {
        ActCase t = {0}; t.kind = kind; t.N = 7; t.C = 13;
        size_t n = (size_t)t.N * t.C;
        t.inp = random_tensor(&rng, n, -4, 4); t.R = random_tensor(&rng, n, -1, 1); t.out = zeros(n);
        if (kind == 1) for (size_t i = 0; i < n; i++) if (fabsf(t.inp[i]) < 0.05f) t.inp[i] = 0.3f;
        if (kind == 3) for (int r = 0; r < t.N; r++) t.inp[r * t.C + (r * 5) % t.C] = -INFINITY;
        act_loss(&t);
        float* ref = zeros(n);
        for (size_t i = 0; i < n; i++) {
            double x = t.inp[i];
            if (kind == 0) ref[i] = (float)(0.5 * x * (1 + erf(x / sqrt(2.0))));
            if (kind == 1) ref[i] = (float)(x > 0 ? x : 0);
            if (kind == 2) ref[i] = (float)(1 / (1 + exp(-x)));
        }
        if (kind == 3) for (int r = 0; r < t.N; r++) {
            double mx = -INFINITY, s = 0;
            for (int c = 0; c < t.C; c++) if (t.inp[r * t.C + c] > mx) mx = t.inp[r * t.C + c];
            for (int c = 0; c < t.C; c++) s += exp(t.inp[r * t.C + c] - mx);
            for (int c = 0; c < t.C; c++) ref[r * t.C + c] = (float)(exp(t.inp[r * t.C + c] - mx) / s);
        }
        char label[80];
        snprintf(label, sizeof(label), "%s 7x13 forward vs naive%s", act_names[kind], kind == 3 ? " (-inf)" : "");
        check_close(label, t.out, ref, n, 1e-5);
        float* di = zeros(n);
        if (kind == 0) gelu_backward_cpu(di, t.inp, t.R, n);
        if (kind == 1) relu_backward_cpu(di, t.out, t.R, n);
        if (kind == 2) sigmoid_backward_cpu(di, t.out, t.R, n);
        if (kind == 3) softmax_backward_cpu(di, t.out, t.R, t.N, t.C);
        // finite differences cannot step through -inf: check those entries separately
        if (kind == 3) {
            int finite = 1;
            for (int r = 0; r < t.N; r++) finite &= di[r * t.C + (r * 5) % t.C] == 0.0f;
            CHECK(finite, "softmax gradient at -inf inputs must be exactly 0");
            for (int r = 0; r < t.N; r++) t.inp[r * t.C + (r * 5) % t.C] = -1e4f;   // same softmax, finite
        }
        snprintf(label, sizeof(label), "%s dinp", act_names[kind]);
        grad_check(label, t.inp, n, di, act_loss, &t, 1e-3f, TOL, MAXC);
        free(t.inp); free(t.R); free(t.out); free(ref); free(di);
    }
}

// ----------------------------------------------------------------------------
// attention: q from one fused buffer (B, Tq, 3C) (stride 3C), k and v from another
// (B, Tk, 2C) (stride 2C), Tq != Tk, rel_bias (NH, Tq, Tk), mask (n_mask, Tq, Tk)
// with -100 and -INFINITY, n_mask < B

typedef struct { float *out, *att, *qbuf, *kvbuf, *bias, *mask, *R; int B, Tq, Tk, NH, HS, n_mask; } AttCase;
static double attention_loss(void* p) {
    AttCase* t = p; int C = t->NH * t->HS;
    attention_forward_cpu(t->out, t->att, t->qbuf + C, t->kvbuf, t->kvbuf + C, t->bias, t->mask,
                          t->n_mask, t->B, t->Tq, t->Tk, t->NH, t->HS, 3 * C, 2 * C);
    return dot_double(t->out, t->R, (size_t)t->B * t->Tq * C);
}
static void test_attention(void) {
    AttCase t = {0}; t.B = 3; t.Tq = 7; t.Tk = 9; t.NH = 2; t.HS = 5; t.n_mask = 3;
    int C = t.NH * t.HS, Tq = t.Tq, Tk = t.Tk;
    size_t nq = (size_t)t.B * Tq * 3 * C, nkv = (size_t)t.B * Tk * 2 * C, nout = (size_t)t.B * Tq * C;
    size_t nbias = (size_t)t.NH * Tq * Tk;
    t.qbuf = random_tensor(&rng, nq, -1.5, 1.5); t.kvbuf = random_tensor(&rng, nkv, -1.5, 1.5);
    t.bias = random_tensor(&rng, nbias, -1, 1); t.R = random_tensor(&rng, nout, -1, 1);
    t.mask = zeros((size_t)t.n_mask * Tq * Tk);
    int ninf = 0;
    for (int m = 0; m < t.n_mask; m++) for (int i = 0; i < Tq; i++) for (int j = 0; j < Tk; j++) {
        float v = 0.0f;
        if ((i + 2 * j + m) % 4 == 1) v = -100.0f;
        if ((2 * i + j + m) % 5 == 3 && j != (i + m) % Tk) { v = -INFINITY; ninf++; }  // never the whole row
        t.mask[((size_t)m * Tq + i) * Tk + j] = v;
    }
    CHECK(ninf > 0, "mask has -inf entries");
    t.out = zeros(nout); t.att = zeros((size_t)t.B * t.NH * Tq * Tk);
    // n_mask = 3 with B = 3 first (one mask per batch element), then n_mask = 1 shared
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) t.n_mask = 1;
        attention_loss(&t);
        float* ref = zeros(nout);
        float* aref = zeros((size_t)t.B * t.NH * Tq * Tk);
        for (int b = 0; b < t.B; b++) for (int h = 0; h < t.NH; h++) for (int i = 0; i < Tq; i++) {
            double s[64], mx = -INFINITY, sum = 0;
            for (int j = 0; j < Tk; j++) {
                double d = 0;
                for (int e = 0; e < t.HS; e++)
                    d += (double)t.qbuf[(b * Tq + i) * 3 * C + C + h * t.HS + e] * t.kvbuf[(b * Tk + j) * 2 * C + h * t.HS + e];
                s[j] = d / sqrt(t.HS) + t.bias[(h * Tq + i) * Tk + j] + t.mask[((b % t.n_mask) * Tq + i) * Tk + j];
                if (s[j] > mx) mx = s[j];
            }
            for (int j = 0; j < Tk; j++) { s[j] = exp(s[j] - mx); sum += s[j]; }
            for (int j = 0; j < Tk; j++) aref[((b * t.NH + h) * Tq + i) * Tk + j] = (float)(s[j] / sum);
            for (int e = 0; e < t.HS; e++) {
                double o = 0;
                for (int j = 0; j < Tk; j++) o += s[j] / sum * t.kvbuf[(b * Tk + j) * 2 * C + C + h * t.HS + e];
                ref[(b * Tq + i) * C + h * t.HS + e] = (float)o;
            }
        }
        char label[96];
        snprintf(label, sizeof(label), "attention forward vs naive (n_mask %d)", t.n_mask);
        check_close(label, t.out, ref, nout, 1e-5);
        snprintf(label, sizeof(label), "attention probs vs naive (n_mask %d)", t.n_mask);
        check_close(label, t.att, aref, (size_t)t.B * t.NH * Tq * Tk, 1e-5);
        free(ref); free(aref);
        float *dq = zeros(nq), *dkv = zeros(nkv), *dbias = zeros(nbias);
        attention_backward_cpu(dq + C, dkv, dkv + C, dbias, t.R, t.att, t.qbuf + C, t.kvbuf, t.kvbuf + C,
                               t.B, Tq, Tk, t.NH, t.HS, 3 * C, 2 * C);
        // the gradient must stay inside the q columns of the fused buffer
        int outside = 0;
        for (size_t r = 0; r < (size_t)t.B * Tq; r++)
            for (int c = 0; c < 3 * C; c++) if ((c < C || c >= 2 * C) && dq[r * 3 * C + c] != 0.0f) outside++;
        CHECK(outside == 0, "attention dq wrote %d values outside its strided columns", outside);
        snprintf(label, sizeof(label), "attention dq (stride 3C, n_mask %d)", t.n_mask);
        grad_check(label, t.qbuf, nq, dq, attention_loss, &t, EPS, TOL, MAXC);
        snprintf(label, sizeof(label), "attention dk dv (stride 2C, n_mask %d)", t.n_mask);
        grad_check(label, t.kvbuf, nkv, dkv, attention_loss, &t, EPS, TOL, MAXC);
        snprintf(label, sizeof(label), "attention drel_bias (n_mask %d)", t.n_mask);
        grad_check(label, t.bias, nbias, dbias, attention_loss, &t, EPS, TOL, MAXC);
        free(dq); free(dkv); free(dbias);
    }
    free(t.qbuf); free(t.kvbuf); free(t.bias); free(t.mask); free(t.R); free(t.out); free(t.att);
}

// a size that crosses the tiles of the CPU attention (HS over 16 columns, Tk over one
// K chunk): forward and every gradient against naive double sums. q, k, v are separate
// buffers with row strides larger than NH*HS.
static void test_attention_large(void) {
    int B = 2, NH = 2, HS = 20, Tq = 9, Tk = 300, C = NH * HS, qs = C + 3, kvs = C + 5;
    double scale = 1.0 / sqrt(HS);
    size_t nq = (size_t)B * Tq * qs, nkv = (size_t)B * Tk * kvs, nout = (size_t)B * Tq * C;
    size_t nbias = (size_t)NH * Tq * Tk, natt = (size_t)B * NH * Tq * Tk;
    float *q = random_tensor(&rng, nq, -1, 1), *k = random_tensor(&rng, nkv, -1, 1);
    float *v = random_tensor(&rng, nkv, -1, 1), *bias = random_tensor(&rng, nbias, -1, 1);
    float *dout = random_tensor(&rng, nout, -1, 1), *mask = zeros((size_t)Tq * Tk);
    for (int i = 0; i < Tq; i++) for (int j = 0; j < Tk; j++) {
        if ((i + j) % 7 == 3) mask[i * Tk + j] = -100.0f;
        if ((3 * i + j) % 11 == 5) mask[i * Tk + j] = -INFINITY;
    }
    float *out = zeros(nout), *att = zeros(natt);
    float *dq = zeros(nq), *dk = zeros(nkv), *dv = zeros(nkv), *db = zeros(nbias);
    attention_forward_cpu(out, att, q, k, v, bias, mask, 1, B, Tq, Tk, NH, HS, qs, kvs);
    attention_backward_cpu(dq, dk, dv, db, dout, att, q, k, v, B, Tq, Tk, NH, HS, qs, kvs);
    double *rout = callocCheck(nout, sizeof(double)), *rdq = callocCheck(nq, sizeof(double));
    double *rdk = callocCheck(nkv, sizeof(double)), *rdv = callocCheck(nkv, sizeof(double));
    double *rdb = callocCheck(nbias, sizeof(double)), *P = callocCheck(Tk, sizeof(double));
    double *dP = callocCheck(Tk, sizeof(double));
    for (int b = 0; b < B; b++) for (int h = 0; h < NH; h++) for (int i = 0; i < Tq; i++) {
        const float* qi = q + (size_t)(b * Tq + i) * qs + h * HS;
        const float* doi = dout + (size_t)(b * Tq + i) * C + h * HS;
        double mx = -INFINITY, sum = 0, pdp = 0;
        for (int j = 0; j < Tk; j++) {
            const float* kj = k + (size_t)(b * Tk + j) * kvs + h * HS;
            double d = 0;
            for (int e = 0; e < HS; e++) d += (double)qi[e] * kj[e];
            P[j] = d * scale + bias[(h * Tq + i) * Tk + j] + mask[i * Tk + j];
            if (P[j] > mx) mx = P[j];
        }
        for (int j = 0; j < Tk; j++) { P[j] = exp(P[j] - mx); sum += P[j]; }
        for (int j = 0; j < Tk; j++) {
            P[j] /= sum;
            const float* vj = v + (size_t)(b * Tk + j) * kvs + h * HS;
            double d = 0;
            for (int e = 0; e < HS; e++) {
                rout[(size_t)(b * Tq + i) * C + h * HS + e] += P[j] * vj[e];
                rdv[(size_t)(b * Tk + j) * kvs + h * HS + e] += P[j] * doi[e];
                d += (double)doi[e] * vj[e];
            }
            dP[j] = d; pdp += P[j] * d;
        }
        for (int j = 0; j < Tk; j++) {
            double ds = P[j] * (dP[j] - pdp);
            const float* kj = k + (size_t)(b * Tk + j) * kvs + h * HS;
            rdb[(h * Tq + i) * Tk + j] += ds;
            for (int e = 0; e < HS; e++) {
                rdq[(size_t)(b * Tq + i) * qs + h * HS + e] += ds * scale * kj[e];
                rdk[(size_t)(b * Tk + j) * kvs + h * HS + e] += ds * scale * qi[e];
            }
        }
    }
    float *f = zeros(nkv > nq ? (nkv > nbias ? nkv : nbias) : nq);
    for (size_t i = 0; i < nout; i++) f[i] = (float)rout[i];
    check_close("attention 9x300 HS20 forward vs naive", out, f, nout, 1e-5);
    for (size_t i = 0; i < nq; i++) f[i] = (float)rdq[i];
    check_close("attention 9x300 HS20 dq vs naive", dq, f, nq, 1e-5);
    for (size_t i = 0; i < nkv; i++) f[i] = (float)rdk[i];
    check_close("attention 9x300 HS20 dk vs naive", dk, f, nkv, 1e-5);
    for (size_t i = 0; i < nkv; i++) f[i] = (float)rdv[i];
    check_close("attention 9x300 HS20 dv vs naive", dv, f, nkv, 1e-5);
    for (size_t i = 0; i < nbias; i++) f[i] = (float)rdb[i];
    check_close("attention 9x300 HS20 drel_bias vs naive", db, f, nbias, 1e-5);
    free(q); free(k); free(v); free(bias); free(dout); free(mask); free(out); free(att);
    free(dq); free(dk); free(dv); free(db); free(rout); free(rdq); free(rdk); free(rdv); free(rdb);
    free(P); free(dP); free(f);
}

// ----------------------------------------------------------------------------
// conv2d

typedef struct { float *out, *inp, *w, *b, *R; int B, H, W, C, OC, K, S, P, Ho, Wo; } ConvCase;
static double conv_loss(void* p) {
    ConvCase* t = p;
    conv2d_forward_cpu(t->out, t->inp, t->w, t->b, t->B, t->H, t->W, t->C, t->OC, t->K, t->S, t->P, t->Ho, t->Wo);
    return dot_double(t->out, t->R, (size_t)t->B * t->Ho * t->Wo * t->OC);
}
static void test_conv_case(int K, int S, int P, int H, int W, int C, int OC) {
    // the usual floor formula, except the patch embedding takes ceil(H / 4) (ragged edge)
    int Ho = (H + 2 * P - K) / S + 1, Wo = (W + 2 * P - K) / S + 1;
    if (P == 0 && K == S) { Ho = (H + S - 1) / S; Wo = (W + S - 1) / S; }
    ConvCase t = {0}; t.B = 2; t.H = H; t.W = W; t.C = C; t.OC = OC; t.K = K; t.S = S; t.P = P; t.Ho = Ho; t.Wo = Wo;
    size_t ni = (size_t)t.B * H * W * C, nw = (size_t)OC * K * K * C, no = (size_t)t.B * Ho * Wo * OC;
    t.inp = random_tensor(&rng, ni, -1, 1); t.w = random_tensor(&rng, nw, -1, 1);
    t.b = random_tensor(&rng, OC, -1, 1); t.R = random_tensor(&rng, no, -1, 1); t.out = zeros(no);
    conv_loss(&t);
    float* ref = zeros(no);
    for (int b = 0; b < t.B; b++) for (int y = 0; y < Ho; y++) for (int x = 0; x < Wo; x++) for (int o = 0; o < OC; o++) {
        double s = t.b[o];
        for (int ky = 0; ky < K; ky++) for (int kx = 0; kx < K; kx++) for (int c = 0; c < C; c++) {
            int iy = y * S - P + ky, ix = x * S - P + kx;
            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
            s += (double)t.w[((o * K + ky) * K + kx) * C + c] * t.inp[((b * H + iy) * W + ix) * C + c];
        }
        ref[((b * Ho + y) * Wo + x) * OC + o] = (float)s;
    }
    char label[96];
    snprintf(label, sizeof(label), "conv2d K%d S%d P%d %dx%dx%d->%dx%dx%d forward", K, S, P, H, W, C, Ho, Wo, OC);
    check_close(label, t.out, ref, no, 1e-5);
    float *di = zeros(ni), *dw = zeros(nw), *db = zeros(OC);
    conv2d_backward_cpu(di, dw, db, t.R, t.inp, t.w, t.B, H, W, C, OC, K, S, P, Ho, Wo);
    snprintf(label, sizeof(label), "conv2d K%d S%d P%d dinp", K, S, P);
    grad_check(label, t.inp, ni, di, conv_loss, &t, EPS, TOL, MAXC);
    snprintf(label, sizeof(label), "conv2d K%d S%d P%d dweight", K, S, P);
    grad_check(label, t.w, nw, dw, conv_loss, &t, EPS, TOL, MAXC);
    snprintf(label, sizeof(label), "conv2d K%d S%d P%d dbias", K, S, P);
    grad_check(label, t.b, OC, db, conv_loss, &t, EPS, TOL, MAXC);
    // accumulation: backward again doubles every gradient
    float *di2 = zeros(ni), *dw2 = zeros(nw), *db2 = zeros(OC);
    for (size_t i = 0; i < ni; i++) di2[i] = 2 * di[i];
    for (size_t i = 0; i < nw; i++) dw2[i] = 2 * dw[i];
    for (int i = 0; i < OC; i++) db2[i] = 2 * db[i];
    conv2d_backward_cpu(di, dw, db, t.R, t.inp, t.w, t.B, H, W, C, OC, K, S, P, Ho, Wo);
    int doubled = max_rel_error(di, di2, ni) < 1e-6 && max_rel_error(dw, dw2, nw) < 1e-6 &&
                  max_rel_error(db, db2, OC) < 1e-6;
    CHECK(doubled, "conv2d K%d S%d P%d backward must accumulate", K, S, P);
    free(di2); free(dw2); free(db2);
    free(t.inp); free(t.w); free(t.b); free(t.R); free(t.out); free(ref); free(di); free(dw); free(db);
}

// sizes that cross every chunk of the CPU conv (C and OC over 256, more than 256 output
// pixels, partial and full column blocks): forward and all gradients vs naive double sums
static void test_conv_large(int B, int H, int W, int C, int OC, int K, int S, int P) {
    int Ho = (H + 2 * P - K) / S + 1, Wo = (W + 2 * P - K) / S + 1;
    size_t ni = (size_t)B * H * W * C, nw = (size_t)OC * K * K * C, no = (size_t)B * Ho * Wo * OC;
    float *inp = random_tensor(&rng, ni, -1, 1), *w = random_tensor(&rng, nw, -1, 1);
    float *bias = random_tensor(&rng, OC, -1, 1), *dout = random_tensor(&rng, no, -1, 1);
    float *out = zeros(no), *di = zeros(ni), *dw = zeros(nw), *db = zeros(OC);
    double *rout = callocCheck(no, sizeof(double)), *rdi = callocCheck(ni, sizeof(double));
    double *rdw = callocCheck(nw, sizeof(double)), *rdb = callocCheck(OC, sizeof(double));
    conv2d_forward_cpu(out, inp, w, bias, B, H, W, C, OC, K, S, P, Ho, Wo);
    conv2d_backward_cpu(di, dw, db, dout, inp, w, B, H, W, C, OC, K, S, P, Ho, Wo);
    for (int b = 0; b < B; b++) for (int y = 0; y < Ho; y++) for (int x = 0; x < Wo; x++) {
        size_t op = ((size_t)(b * Ho + y) * Wo + x) * OC;
        for (int o = 0; o < OC; o++) { rout[op + o] = bias[o]; rdb[o] += dout[op + o]; }
        for (int ky = 0; ky < K; ky++) for (int kx = 0; kx < K; kx++) {
            int iy = y * S - P + ky, ix = x * S - P + kx;
            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
            size_t ip = ((size_t)(b * H + iy) * W + ix) * C;
            for (int o = 0; o < OC; o++) {
                size_t wp = ((size_t)(o * K + ky) * K + kx) * C;
                double acc = 0, d = dout[op + o];
                for (int c = 0; c < C; c++) {
                    acc += (double)w[wp + c] * inp[ip + c];
                    rdi[ip + c] += d * w[wp + c];
                    rdw[wp + c] += d * inp[ip + c];
                }
                rout[op + o] += acc;
            }
        }
    }
    float *fo = zeros(no), *fdi = zeros(ni), *fdw = zeros(nw), *fdb = zeros(OC);
    for (size_t i = 0; i < no; i++) fo[i] = (float)rout[i];
    for (size_t i = 0; i < ni; i++) fdi[i] = (float)rdi[i];
    for (size_t i = 0; i < nw; i++) fdw[i] = (float)rdw[i];
    for (int i = 0; i < OC; i++) fdb[i] = (float)rdb[i];
    char label[96];
    snprintf(label, sizeof(label), "conv2d K%d S%d %dx%dx%dx%d->%d forward vs naive", K, S, B, H, W, C, OC);
    check_close(label, out, fo, no, 1e-5);
    snprintf(label, sizeof(label), "conv2d K%d S%d %dx%dx%dx%d->%d dinp vs naive", K, S, B, H, W, C, OC);
    check_close(label, di, fdi, ni, 1e-5);
    snprintf(label, sizeof(label), "conv2d K%d S%d %dx%dx%dx%d->%d dweight vs naive", K, S, B, H, W, C, OC);
    check_close(label, dw, fdw, nw, 1e-5);
    snprintf(label, sizeof(label), "conv2d K%d S%d %dx%dx%dx%d->%d dbias vs naive", K, S, B, H, W, C, OC);
    check_close(label, db, fdb, OC, 1e-5);
    free(inp); free(w); free(bias); free(dout); free(out); free(di); free(dw); free(db);
    free(rout); free(rdi); free(rdw); free(rdb); free(fo); free(fdi); free(fdw); free(fdb);
}

int main(void) {
    rng_seed(&rng, 20261122);
    test_elementwise();
    test_scale_rows();
    test_linear_case(7, 13, 11, 1);
    test_linear_case(9, 37, 5, 0);
    test_linear_large();
    test_linear_write(7, 13, 11);
    test_linear_write(301, 271, 37);   // every tile boundary of the CPU matmul
    test_mlp(7, 5, 20);
    test_layernorm(7, 13);
    test_layernorm(9, 70);
    test_groupnorm(2, 15, 12, 3);
    test_groupnorm(3, 5, 70, 5);
    test_activations();
    test_attention();
    test_attention_large();
    test_conv_case(3, 1, 1, 7, 6, 5, 11);
    test_conv_case(3, 2, 1, 7, 8, 5, 11);
    test_conv_case(1, 1, 0, 5, 7, 13, 11);
    test_conv_case(4, 4, 0, 10, 10, 4, 7);
    test_conv_large(2, 13, 14, 21, 19, 3, 1, 1);
    test_conv_large(1, 5, 6, 260, 270, 3, 2, 1);
    test_conv_large(2, 9, 11, 13, 17, 1, 1, 0);
    test_conv_large(1, 4, 12, 130, 20, 3, 1, 1);
    return test_summary("test_ops_a");
}
