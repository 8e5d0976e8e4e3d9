// test/test_ops.c: every CPU op of ttt.h, forward against independent naive formulas
// where one is short, and backward against central finite differences of the scalar
// loss L = sum(out * R) for a fixed random R, on odd sizes.
#include "test.h"

static Rng rng;
#define EPS 1e-2f      // finite-difference step (float32 ops)
#define TOL 1e-2       // relative error bound for gradients
#define MAXC 400       // checked elements per tensor

// ----------------------------------------------------------------------------
// linear

typedef struct { float *out, *inp, *w, *b, *R; int N, C, OC; } LinearCase;
static double linear_loss(void* p) {
    LinearCase* t = p;
    linear_forward_cpu(t->out, t->inp, t->w, t->b, t->N, t->C, t->OC);
    return dot_double(t->out, t->R, (size_t)t->N * t->OC);
}
static void test_linear(void) {
    LinearCase t = {0}; t.N = 7; t.C = 13; t.OC = 11;
    t.inp = random_tensor(&rng, t.N * t.C, -1, 1); t.w = random_tensor(&rng, t.OC * t.C, -1, 1);
    t.b = random_tensor(&rng, t.OC, -1, 1); t.R = random_tensor(&rng, t.N * t.OC, -1, 1);
    t.out = calloc(t.N * t.OC, 4);
    linear_loss(&t);
    float* ref = calloc(t.N * t.OC, 4);
    for (int n = 0; n < t.N; n++) for (int o = 0; o < t.OC; o++) {
        double s = t.b[o];
        for (int c = 0; c < t.C; c++) s += (double)t.inp[n * t.C + c] * t.w[o * t.C + c];
        ref[n * t.OC + o] = (float)s;
    }
    check_close("linear forward vs naive", t.out, ref, t.N * t.OC, 1e-5);
    float *di = calloc(t.N * t.C, 4), *dw = calloc(t.OC * t.C, 4), *db = calloc(t.OC, 4);
    linear_backward_cpu(di, dw, db, t.R, t.inp, t.w, t.N, t.C, t.OC);
    grad_check("linear dinp", t.inp, t.N * t.C, di, linear_loss, &t, EPS, TOL, MAXC);
    grad_check("linear dweight", t.w, t.OC * t.C, dw, linear_loss, &t, EPS, TOL, MAXC);
    grad_check("linear dbias", t.b, t.OC, db, linear_loss, &t, EPS, TOL, MAXC);
    // backward accumulates: a second call doubles the gradient
    float* db2 = malloc(t.OC * 4); memcpy(db2, db, t.OC * 4);
    for (int o = 0; o < t.OC; o++) db2[o] *= 2;
    linear_backward_cpu(NULL, NULL, db, t.R, t.inp, t.w, t.N, t.C, t.OC);
    check_close("linear backward accumulates", db, db2, t.OC, 1e-6);
    free(t.inp); free(t.w); free(t.b); free(t.R); free(t.out); free(ref); free(di); free(dw); free(db); free(db2);
}

// ----------------------------------------------------------------------------
// layernorm, groupnorm

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
static void test_norms(void) {
    NormCase t = {0}; t.N = 9; t.C = 13;
    size_t n = t.N * t.C;
    t.inp = random_tensor(&rng, n, -2, 2); t.w = random_tensor(&rng, t.C, 0.5, 1.5);
    t.b = random_tensor(&rng, t.C, -1, 1); t.R = random_tensor(&rng, n, -1, 1);
    t.out = calloc(n, 4); t.mean = calloc(t.N, 4); t.rstd = calloc(t.N, 4);
    layernorm_loss(&t);
    float* ref = calloc(n, 4);
    for (int r = 0; r < t.N; r++) {
        double m = 0, v = 0;
        for (int c = 0; c < t.C; c++) m += t.inp[r * t.C + c];
        m /= t.C;
        for (int c = 0; c < t.C; c++) v += pow(t.inp[r * t.C + c] - m, 2);
        v /= t.C;
        for (int c = 0; c < t.C; c++) ref[r * t.C + c] = (float)((t.inp[r * t.C + c] - m) / sqrt(v + 1e-5) * t.w[c] + t.b[c]);
    }
    check_close("layernorm forward vs naive", t.out, ref, n, 1e-5);
    float *di = calloc(n, 4), *dw = calloc(t.C, 4), *db = calloc(t.C, 4);
    layernorm_backward_cpu(di, dw, db, t.R, t.inp, t.w, t.mean, t.rstd, t.N, t.C);
    grad_check("layernorm dinp", t.inp, n, di, layernorm_loss, &t, EPS, TOL, MAXC);
    grad_check("layernorm dweight", t.w, t.C, dw, layernorm_loss, &t, EPS, TOL, MAXC);
    grad_check("layernorm dbias", t.b, t.C, db, layernorm_loss, &t, EPS, TOL, MAXC);
    free(t.inp); free(t.w); free(t.b); free(t.R); free(t.out); free(t.mean); free(t.rstd); free(ref); free(di); free(dw); free(db);

    NormCase g = {0}; g.B = 2; g.HW = 15; g.C = 12; g.G = 3;
    n = (size_t)g.B * g.HW * g.C;
    g.inp = random_tensor(&rng, n, -2, 2); g.w = random_tensor(&rng, g.C, 0.5, 1.5);
    g.b = random_tensor(&rng, g.C, -1, 1); g.R = random_tensor(&rng, n, -1, 1);
    g.out = calloc(n, 4); g.mean = calloc(g.B * g.G, 4); g.rstd = calloc(g.B * g.G, 4);
    groupnorm_loss(&g);
    // groupnorm with G = C groups of one channel per position equals per-(b,c) stats; check
    // instead that G=1 on a (1, HW, C) map equals layernorm of the flattened map
    float* ln_out = calloc(g.HW * g.C, 4), *ln_w = calloc(g.HW * g.C, 4), *ln_b = calloc(g.HW * g.C, 4);
    float *gn_out = calloc(g.HW * g.C, 4), m1, r1, m2, r2;
    for (int i = 0; i < g.HW * g.C; i++) { ln_w[i] = g.w[i % g.C]; ln_b[i] = g.b[i % g.C]; }
    layernorm_forward_cpu(ln_out, &m1, &r1, g.inp, ln_w, ln_b, 1, g.HW * g.C);
    groupnorm_forward_cpu(gn_out, &m2, &r2, g.inp, g.w, g.b, 1, g.HW, g.C, 1);
    check_close("groupnorm(G=1) == layernorm of whole map", gn_out, ln_out, g.HW * g.C, 1e-5);
    di = calloc(n, 4); dw = calloc(g.C, 4); db = calloc(g.C, 4);
    groupnorm_backward_cpu(di, dw, db, g.R, g.inp, g.w, g.mean, g.rstd, g.B, g.HW, g.C, g.G);
    grad_check("groupnorm dinp", g.inp, n, di, groupnorm_loss, &g, EPS, TOL, MAXC);
    grad_check("groupnorm dweight", g.w, g.C, dw, groupnorm_loss, &g, EPS, TOL, MAXC);
    grad_check("groupnorm dbias", g.b, g.C, db, groupnorm_loss, &g, EPS, TOL, MAXC);
    free(g.inp); free(g.w); free(g.b); free(g.R); free(g.out); free(g.mean); free(g.rstd);
    free(ln_out); free(ln_w); free(ln_b); free(gn_out); free(di); free(dw); free(db);
}

// ----------------------------------------------------------------------------
// activations and softmax

typedef struct { float *out, *inp, *R; int kind; int N, C; } ActCase;
static void act_forward(ActCase* t) {
    size_t n = (size_t)t->N * t->C;
    if (t->kind == 0) gelu_forward_cpu(t->out, t->inp, n);
    if (t->kind == 1) relu_forward_cpu(t->out, t->inp, n);
    if (t->kind == 2) sigmoid_forward_cpu(t->out, t->inp, n);
    if (t->kind == 3) softmax_forward_cpu(t->out, t->inp, t->N, t->C);
}
static double act_loss(void* p) {
    ActCase* t = p; act_forward(t);
    return dot_double(t->out, t->R, (size_t)t->N * t->C);
}
static void test_activations(void) {
    const char* names[4] = {"gelu", "relu", "sigmoid", "softmax"};
    for (int kind = 0; kind < 4; kind++) {
        ActCase t = {0}; t.kind = kind; t.N = 5; t.C = 17;
        size_t n = (size_t)t.N * t.C;
        t.inp = random_tensor(&rng, n, -3, 3); t.R = random_tensor(&rng, n, -1, 1); t.out = calloc(n, 4);
        if (kind == 1) for (size_t i = 0; i < n; i++) if (fabsf(t.inp[i]) < 0.05f) t.inp[i] = 0.5f; // away from the kink
        act_forward(&t);
        float* ref = calloc(n, 4);
        for (size_t i = 0; i < n; i++) {
            double x = t.inp[i];
            if (kind == 0) ref[i] = (float)(0.5 * x * (1 + erf(x / sqrt(2.0))));
            if (kind == 1) ref[i] = (float)(x > 0 ? x : 0);
            if (kind == 2) ref[i] = (float)(1 / (1 + exp(-x)));
        }
        if (kind == 3) for (int r = 0; r < t.N; r++) {
            double s = 0;
            for (int c = 0; c < t.C; c++) s += exp(t.inp[r * t.C + c]);
            for (int c = 0; c < t.C; c++) ref[r * t.C + c] = (float)(exp(t.inp[r * t.C + c]) / s);
        }
        char label[64];
        snprintf(label, sizeof(label), "%s forward vs naive", names[kind]);
        check_close(label, t.out, ref, n, 1e-5);
        float* di = calloc(n, 4);
        if (kind == 0) gelu_backward_cpu(di, t.inp, t.R, n);
        if (kind == 1) relu_backward_cpu(di, t.out, t.R, n);
        if (kind == 2) sigmoid_backward_cpu(di, t.out, t.R, n);
        if (kind == 3) softmax_backward_cpu(di, t.out, t.R, t.N, t.C);
        snprintf(label, sizeof(label), "%s dinp", names[kind]);
        grad_check(label, t.inp, n, di, act_loss, &t, 1e-3f, TOL, MAXC);
        free(t.inp); free(t.R); free(t.out); free(ref); free(di);
    }
}

// ----------------------------------------------------------------------------
// attention with strided fused qkv, relative bias and a mask with -100 and -inf

typedef struct { float *out, *att, *qkv, *bias, *mask, *R; int B, Tq, NH, HS, n_mask; } AttCase;
static double attention_loss(void* p) {
    AttCase* t = p; int C = t->NH * t->HS;
    attention_forward_cpu(t->out, t->att, t->qkv, t->qkv + C, t->qkv + 2 * C, t->bias, t->mask,
                          t->n_mask, t->B, t->Tq, t->Tq, t->NH, t->HS, 3 * C, 3 * C);
    return dot_double(t->out, t->R, (size_t)t->B * t->Tq * C);
}
// cross-attention case: separate q (B, Tq, C) and kv (B, Tk, 2C)
typedef struct { float *out, *att, *q, *kv, *R; int B, Tq, Tk, NH, HS; } CrossCase;
static double cross_loss(void* p) {
    CrossCase* t = p; int C = t->NH * t->HS;
    attention_forward_cpu(t->out, t->att, t->q, t->kv, t->kv + C, NULL, NULL, 1,
                          t->B, t->Tq, t->Tk, t->NH, t->HS, C, 2 * C);
    return dot_double(t->out, t->R, (size_t)t->B * t->Tq * C);
}
static void test_attention(void) {
    AttCase t = {0}; t.B = 4; t.Tq = 7; t.NH = 2; t.HS = 5; t.n_mask = 2;
    int C = t.NH * t.HS, T = t.Tq;
    size_t nqkv = (size_t)t.B * T * 3 * C, nout = (size_t)t.B * T * C;
    t.qkv = random_tensor(&rng, nqkv, -1, 1); t.bias = random_tensor(&rng, t.NH * T * T, -1, 1);
    t.R = random_tensor(&rng, nout, -1, 1);
    t.mask = calloc(t.n_mask * T * T, 4);
    for (int m = 0; m < t.n_mask; m++) for (int i = 0; i < T; i++) for (int j = 0; j < T; j++) {
        float v = 0.0f;
        if ((i + j + m) % 5 == 1) v = -100.0f;
        if ((i * 3 + j + m) % 7 == 2 && j != i) v = -INFINITY;   // never the diagonal
        t.mask[(m * T + i) * T + j] = v;
    }
    t.out = calloc(nout, 4); t.att = calloc((size_t)t.B * t.NH * T * T, 4);
    attention_loss(&t);
    // naive reference
    float* ref = calloc(nout, 4);
    for (int b = 0; b < t.B; b++) for (int h = 0; h < t.NH; h++) for (int i = 0; i < T; i++) {
        double s[64], mx = -INFINITY, sum = 0;
        for (int j = 0; j < T; j++) {
            double d = 0;
            for (int e = 0; e < t.HS; e++) d += (double)t.qkv[(b * T + i) * 3 * C + h * t.HS + e] * t.qkv[(b * T + j) * 3 * C + C + h * t.HS + e];
            s[j] = d / sqrt(t.HS) + t.bias[(h * T + i) * T + j] + t.mask[((b % t.n_mask) * T + i) * T + j];
            if (s[j] > mx) mx = s[j];
        }
        for (int j = 0; j < T; j++) { s[j] = exp(s[j] - mx); sum += s[j]; }
        for (int e = 0; e < t.HS; e++) {
            double o = 0;
            for (int j = 0; j < T; j++) o += s[j] / sum * t.qkv[(b * T + j) * 3 * C + 2 * C + h * t.HS + e];
            ref[(b * T + i) * C + h * t.HS + e] = (float)o;
        }
    }
    check_close("attention forward vs naive (bias, mask, -inf)", t.out, ref, nout, 1e-5);
    float* dqkv = calloc(nqkv, 4), *dbias = calloc(t.NH * T * T, 4);
    attention_backward_cpu(dqkv, dqkv + C, dqkv + 2 * C, dbias, t.R, t.att, t.qkv, t.qkv + C, t.qkv + 2 * C,
                           t.B, T, T, t.NH, t.HS, 3 * C, 3 * C);
    grad_check("attention dqkv (strided)", t.qkv, nqkv, dqkv, attention_loss, &t, EPS, TOL, MAXC);
    grad_check("attention drel_bias", t.bias, t.NH * T * T, dbias, attention_loss, &t, EPS, TOL, MAXC);
    free(t.qkv); free(t.bias); free(t.R); free(t.mask); free(t.out); free(t.att); free(ref); free(dqkv); free(dbias);

    CrossCase x = {0}; x.B = 3; x.Tq = 5; x.Tk = 9; x.NH = 2; x.HS = 3;
    C = x.NH * x.HS;
    x.q = random_tensor(&rng, x.B * x.Tq * C, -1, 1); x.kv = random_tensor(&rng, x.B * x.Tk * 2 * C, -1, 1);
    x.R = random_tensor(&rng, x.B * x.Tq * C, -1, 1);
    x.out = calloc(x.B * x.Tq * C, 4); x.att = calloc(x.B * x.NH * x.Tq * x.Tk, 4);
    cross_loss(&x);
    float *dq = calloc(x.B * x.Tq * C, 4), *dkv = calloc(x.B * x.Tk * 2 * C, 4);
    attention_backward_cpu(dq, dkv, dkv + C, NULL, x.R, x.att, x.q, x.kv, x.kv + C, x.B, x.Tq, x.Tk, x.NH, x.HS, C, 2 * C);
    grad_check("cross-attention dq", x.q, x.B * x.Tq * C, dq, cross_loss, &x, EPS, TOL, MAXC);
    grad_check("cross-attention dk dv", x.kv, x.B * x.Tk * 2 * C, dkv, cross_loss, &x, EPS, TOL, MAXC);
    free(x.q); free(x.kv); free(x.R); free(x.out); free(x.att); free(dq); free(dkv);
}

// ----------------------------------------------------------------------------
// conv2d

typedef struct { float *out, *inp, *w, *b, *R; int B, H, W, C, OC, K, S, P, Ho, Wo; } ConvCase;
static double conv_loss(void* p) {
    ConvCase* t = p;
    conv2d_forward_cpu(t->out, t->inp, t->w, t->b, t->B, t->H, t->W, t->C, t->OC, t->K, t->S, t->P, t->Ho, t->Wo);
    return dot_double(t->out, t->R, (size_t)t->B * t->Ho * t->Wo * t->OC);
}
static void test_conv_case(int K, int S, int P, int H, int W, int Ho, int Wo) {
    ConvCase t = {0}; t.B = 2; t.H = H; t.W = W; t.C = 3; t.OC = 5; t.K = K; t.S = S; t.P = P; t.Ho = Ho; t.Wo = Wo;
    size_t ni = (size_t)t.B * H * W * t.C, nw = (size_t)t.OC * K * K * t.C, no = (size_t)t.B * Ho * Wo * t.OC;
    t.inp = random_tensor(&rng, ni, -1, 1); t.w = random_tensor(&rng, nw, -1, 1);
    t.b = random_tensor(&rng, t.OC, -1, 1); t.R = random_tensor(&rng, no, -1, 1); t.out = calloc(no, 4);
    conv_loss(&t);
    float* ref = calloc(no, 4);
    for (int b = 0; b < t.B; b++) for (int y = 0; y < Ho; y++) for (int x = 0; x < Wo; x++) for (int o = 0; o < t.OC; o++) {
        double s = t.b[o];
        for (int ky = 0; ky < K; ky++) for (int kx = 0; kx < K; kx++) for (int c = 0; c < t.C; c++) {
            int iy = y * S - P + ky, ix = x * S - P + kx;
            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
            s += (double)t.w[((o * K + ky) * K + kx) * t.C + c] * t.inp[((b * H + iy) * W + ix) * t.C + c];
        }
        ref[((b * Ho + y) * Wo + x) * t.OC + o] = (float)s;
    }
    char label[80];
    snprintf(label, sizeof(label), "conv2d K%d S%d P%d %dx%d->%dx%d forward", K, S, P, H, W, Ho, Wo);
    check_close(label, t.out, ref, no, 1e-5);
    float *di = calloc(ni, 4), *dw = calloc(nw, 4), *db = calloc(t.OC, 4);
    conv2d_backward_cpu(di, dw, db, t.R, t.inp, t.w, t.B, H, W, t.C, t.OC, K, S, P, Ho, Wo);
    snprintf(label, sizeof(label), "conv2d K%d S%d P%d dinp", K, S, P);
    grad_check(label, t.inp, ni, di, conv_loss, &t, EPS, TOL, MAXC);
    snprintf(label, sizeof(label), "conv2d K%d S%d P%d dweight", K, S, P);
    grad_check(label, t.w, nw, dw, conv_loss, &t, EPS, TOL, MAXC);
    snprintf(label, sizeof(label), "conv2d K%d S%d P%d dbias", K, S, P);
    grad_check(label, t.b, t.OC, db, conv_loss, &t, EPS, TOL, MAXC);
    free(t.inp); free(t.w); free(t.b); free(t.R); free(t.out); free(ref); free(di); free(dw); free(db);
}

// ----------------------------------------------------------------------------
// spatial ops: windows, patch merge, resizing, point sampling

typedef struct { float *out, *inp, *coords, *R; int kind, B, H, W, C, ws, shift, Ho, Wo, M, P; size_t nout; } SpatialCase;
static void spatial_forward(SpatialCase* t) {
    switch (t->kind) {
    case 0: window_partition_forward_cpu(t->out, t->inp, t->B, t->H, t->W, t->C, t->ws, t->shift); break;
    case 1: window_reverse_forward_cpu(t->out, t->inp, t->B, t->H, t->W, t->C, t->ws, t->shift); break;
    case 2: patch_merge_forward_cpu(t->out, t->inp, t->B, t->H, t->W, t->C); break;
    case 3: upsample_nearest_forward_cpu(t->out, t->inp, t->B, t->H, t->W, t->C, t->Ho, t->Wo); break;
    case 4: upsample_bilinear_forward_cpu(t->out, t->inp, t->B, t->H, t->W, t->C, t->Ho, t->Wo); break;
    case 5: point_sample_forward_cpu(t->out, t->inp, t->coords, t->M, t->H, t->W, t->P); break;
    }
}
static void spatial_backward(SpatialCase* t, float* din) {
    switch (t->kind) {
    case 0: window_partition_backward_cpu(din, t->R, t->B, t->H, t->W, t->C, t->ws, t->shift); break;
    case 1: window_reverse_backward_cpu(din, t->R, t->B, t->H, t->W, t->C, t->ws, t->shift); break;
    case 2: patch_merge_backward_cpu(din, t->R, t->B, t->H, t->W, t->C); break;
    case 3: upsample_nearest_backward_cpu(din, t->R, t->B, t->H, t->W, t->C, t->Ho, t->Wo); break;
    case 4: upsample_bilinear_backward_cpu(din, t->R, t->B, t->H, t->W, t->C, t->Ho, t->Wo); break;
    case 5: point_sample_backward_cpu(din, t->R, t->coords, t->M, t->H, t->W, t->P); break;
    }
}
static double spatial_loss(void* p) { SpatialCase* t = p; spatial_forward(t); return dot_double(t->out, t->R, t->nout); }
static void spatial_grad(const char* name, SpatialCase* t, size_t nin) {
    t->inp = random_tensor(&rng, nin, -1, 1);
    t->R = random_tensor(&rng, t->nout, -1, 1);
    t->out = calloc(t->nout, 4);
    float* din = calloc(nin, 4);
    spatial_forward(t);
    spatial_backward(t, din);
    grad_check(name, t->inp, nin, din, spatial_loss, t, EPS, TOL, MAXC);
    free(t->inp); free(t->R); free(t->out); free(din);
}

static void test_spatial(void) {
    // window partition then reverse is the identity, for several shapes and shifts
    int shapes[4][4] = {{11, 9, 4, 2}, {11, 9, 4, 0}, {7, 14, 7, 3}, {5, 3, 7, 0}};
    for (int s = 0; s < 4; s++) {
        int B = 2, H = shapes[s][0], W = shapes[s][1], C = 5, ws = shapes[s][2], sh = shapes[s][3];
        int nW = ((H + ws - 1) / ws) * ((W + ws - 1) / ws);
        float* x = random_tensor(&rng, (size_t)B * H * W * C, -1, 1);
        float* win = calloc((size_t)B * nW * ws * ws * C, 4);
        float* back = calloc((size_t)B * H * W * C, 4);
        window_partition_forward_cpu(win, x, B, H, W, C, ws, sh);
        window_reverse_forward_cpu(back, win, B, H, W, C, ws, sh);
        CHECK(memcmp(back, x, (size_t)B * H * W * C * 4) == 0, "window reverse(partition(x)) != x for %dx%d ws%d shift%d", H, W, ws, sh);
        free(x); free(win); free(back);
    }
    // where one element lands: H=W=5, ws=3 -> padded 6x6, shift 1: padded (1,1) -> rolled (0,0),
    // so window 0 token 0 holds input (1,1); padded (0,0) -> rolled (5,5): window 3, token 8
    {
        float x[25], win[4 * 9];
        for (int i = 0; i < 25; i++) x[i] = (float)(i + 1);
        window_partition_forward_cpu(win, x, 1, 5, 5, 1, 3, 1);
        CHECK(win[0] == x[1 * 5 + 1], "window roll: token 0 is %g, expected %g", win[0], x[6]);
        CHECK(win[3 * 9 + 8] == x[0], "window roll: window 3 token 8 is %g, expected %g", win[35], x[0]);
        // rolled (0,5) -> padded (1,0): window 1 token 2 holds input (1,0); rolled (4,0) ->
        // padded (5,1), a pad row: window 2 token 3 is zero
        CHECK(win[1 * 9 + 2] == x[5], "window roll: window 1 token 2 is %g, expected %g", win[11], x[5]);
        CHECK(win[2 * 9 + 3] == 0.0f, "window roll: window 2 token 3 is %g, expected padding 0", win[21]);
    }
    // patch merge order on a 2x2 single-channel map [[a,b],[c,d]] -> [a, c, b, d]
    {
        float x[4] = {1, 2, 3, 4}, o[4];
        patch_merge_forward_cpu(o, x, 1, 2, 2, 1);
        CHECK(o[0] == 1 && o[1] == 3 && o[2] == 2 && o[3] == 4, "patch merge order: got %g %g %g %g, want 1 3 2 4", o[0], o[1], o[2], o[3]);
    }
    // bilinear 2x2 -> 4x4, align_corners=False: first row is 1, 1.25, 1.75, 2 (PyTorch)
    {
        float x[4] = {1, 2, 3, 4}, o[16];
        float want[4] = {1.0f, 1.25f, 1.75f, 2.0f};
        upsample_bilinear_forward_cpu(o, x, 1, 2, 2, 1, 4, 4);
        check_close("bilinear 2x2->4x4 first row (PyTorch values)", o, want, 4, 1e-7);
        float nearest_want[4] = {1, 1, 2, 2};
        upsample_nearest_forward_cpu(o, x, 1, 2, 2, 1, 4, 4);
        check_close("nearest 2x2->4x4 first row", o, nearest_want, 4, 0);
    }
    // point sample at pixel centres returns the pixel, beyond the border decays to zero
    {
        float map[6] = {1, 2, 3, 4, 5, 6}, c[6] = {0.5f / 3, 0.5f / 2, 2.5f / 3, 1.5f / 2, 0.0f, 0.0f}, o[3];
        point_sample_forward_cpu(o, map, c, 1, 2, 3, 3);
        float want[3] = {1.0f, 6.0f, 0.25f};   // corner (0,0): one tap of weight 1/4 on pixel 1
        check_close("point sample at centres and corner", o, want, 3, 1e-6);
    }

    SpatialCase t;
    t = (SpatialCase){.kind = 0, .B = 2, .H = 11, .W = 9, .C = 5, .ws = 4, .shift = 2};
    t.nout = (size_t)2 * 3 * 3 * 16 * 5;
    spatial_grad("window_partition (shift 2)", &t, (size_t)2 * 11 * 9 * 5);
    t = (SpatialCase){.kind = 1, .B = 2, .H = 11, .W = 9, .C = 5, .ws = 4, .shift = 2};
    t.nout = (size_t)2 * 11 * 9 * 5;
    spatial_grad("window_reverse (shift 2)", &t, (size_t)2 * 3 * 3 * 16 * 5);
    t = (SpatialCase){.kind = 2, .B = 2, .H = 7, .W = 5, .C = 3};
    t.nout = (size_t)2 * 4 * 3 * 12;
    spatial_grad("patch_merge (odd H, W)", &t, (size_t)2 * 7 * 5 * 3);
    t = (SpatialCase){.kind = 3, .B = 2, .H = 5, .W = 7, .C = 3, .Ho = 11, .Wo = 13};
    t.nout = (size_t)2 * 11 * 13 * 3;
    spatial_grad("upsample_nearest 5x7->11x13", &t, (size_t)2 * 5 * 7 * 3);
    t = (SpatialCase){.kind = 4, .B = 2, .H = 5, .W = 7, .C = 3, .Ho = 11, .Wo = 13};
    t.nout = (size_t)2 * 11 * 13 * 3;
    spatial_grad("upsample_bilinear 5x7->11x13", &t, (size_t)2 * 5 * 7 * 3);
    t = (SpatialCase){.kind = 4, .B = 2, .H = 11, .W = 13, .C = 3, .Ho = 4, .Wo = 5};
    t.nout = (size_t)2 * 4 * 5 * 3;
    spatial_grad("upsample_bilinear 11x13->4x5 (down)", &t, (size_t)2 * 11 * 13 * 3);
    t = (SpatialCase){.kind = 5, .M = 3, .H = 6, .W = 7, .P = 23};
    t.coords = random_tensor(&rng, 3 * 23 * 2, -0.05f, 1.05f);   // some points near / past the border
    t.nout = (size_t)3 * 23;
    spatial_grad("point_sample", &t, (size_t)3 * 6 * 7);
    free(t.coords);
}

// ----------------------------------------------------------------------------
// sine position encoding spot values

static void test_sine(void) {
    int H = 3, W = 5, C = 8;
    float* pe = calloc(H * W * C, 4);
    sine_position_encoding_cpu(pe, H, W, C);
    // pixel (y=1, x=4), channel 2 (y axis, k=2: sin, dim_t = 10000^(2/4)=100) and channel 4+1
    // (x axis, k=1: cos, dim_t = 10000^0 = 1)
    double ye = 2.0 / (3 + 1e-6) * 2 * M_PI, xe = 5.0 / (5 + 1e-6) * 2 * M_PI;
    float got[2] = {pe[(1 * W + 4) * C + 2], pe[(1 * W + 4) * C + 5]};
    float want[2] = {(float)sin(ye / 100.0), (float)cos(xe / 1.0)};
    check_close("sine position encoding spot values", got, want, 2, 1e-6);
    free(pe);
}

// ----------------------------------------------------------------------------
// losses

typedef struct { float *pred, *target, *mask, *losses, *dl, *cw; int *tg; int kind, N, C; } LossCase;
static double loss_value(void* p) {
    LossCase* t = p; float l = 0.0f; double s = 0.0;
    switch (t->kind) {
    case 0: masked_mse_forward_cpu(&l, t->pred, t->target, t->mask, t->N, t->C); return l;
    case 1: cross_entropy_forward_cpu(&l, t->pred, t->tg, t->cw, t->N, t->C, 255); return l;
    case 2: sigmoid_bce_forward_cpu(t->losses, t->pred, t->target, t->N, t->C); break;
    case 3: dice_loss_forward_cpu(t->losses, t->pred, t->target, t->N, t->C); break;
    }
    for (int n = 0; n < t->N; n++) s += (double)t->losses[n] * t->dl[n];
    return s;
}
static void test_losses(void) {
    const char* names[4] = {"masked_mse", "cross_entropy (weights, ignore)", "sigmoid_bce", "dice"};
    for (int kind = 0; kind < 4; kind++) {
        LossCase t = {0}; t.kind = kind; t.N = 6; t.C = 11;
        size_t n = (size_t)t.N * t.C;
        t.pred = random_tensor(&rng, n, -2, 2); t.target = random_tensor(&rng, n, 0, 1);
        if (kind >= 2) for (size_t i = 0; i < n; i++) t.target[i] = t.target[i] > 0.5f;
        t.mask = calloc(t.N, 4); for (int i = 0; i < t.N; i++) t.mask[i] = (i % 3 != 1);
        t.losses = calloc(t.N, 4); t.dl = random_tensor(&rng, t.N, 0.5, 1.5);
        t.cw = random_tensor(&rng, t.C, 0.1, 1.0);
        t.tg = calloc(t.N, sizeof(int)); for (int i = 0; i < t.N; i++) t.tg[i] = (i == 2) ? 255 : rng_int(&rng, t.C);
        // forward vs independent formulas
        double ref = 0.0, got = loss_value(&t);
        if (kind == 0) {
            double num = 0, den = 0;
            for (int i = 0; i < t.N; i++) { if (!t.mask[i]) continue; for (int c = 0; c < t.C; c++) num += pow(t.pred[i * t.C + c] - t.target[i * t.C + c], 2) / t.C; den += 1; }
            ref = num / den;
        } else if (kind == 1) {
            double num = 0, den = 0;
            for (int i = 0; i < t.N; i++) {
                if (t.tg[i] == 255) continue;
                double z = 0; for (int c = 0; c < t.C; c++) z += exp(t.pred[i * t.C + c]);
                num += t.cw[t.tg[i]] * -log(exp(t.pred[i * t.C + t.tg[i]]) / z); den += t.cw[t.tg[i]];
            }
            ref = num / den;
        } else {
            for (int i = 0; i < t.N; i++) {
                double l = 0, st = 0, ss = 0, stt = 0;
                for (int c = 0; c < t.C; c++) {
                    double x = t.pred[i * t.C + c], y = t.target[i * t.C + c], s = 1 / (1 + exp(-x));
                    l += -(y * log(s) + (1 - y) * log(1 - s)) / t.C;
                    st += s * y; ss += s; stt += y;
                }
                if (kind == 3) l = 1 - (2 * st + 1) / (ss + stt + 1);
                ref += l * t.dl[i];
            }
        }
        float g32 = (float)got, r32 = (float)ref;
        char label[80];
        snprintf(label, sizeof(label), "%s forward vs naive", names[kind]);
        check_close(label, &g32, &r32, 1, 1e-5);
        float* dp = calloc(n, 4);
        if (kind == 0) masked_mse_backward_cpu(dp, 1.0f, t.pred, t.target, t.mask, t.N, t.C);
        if (kind == 1) cross_entropy_backward_cpu(dp, 1.0f, t.pred, t.tg, t.cw, t.N, t.C, 255);
        if (kind == 2) sigmoid_bce_backward_cpu(dp, t.dl, t.pred, t.target, t.N, t.C);
        if (kind == 3) dice_loss_backward_cpu(dp, t.dl, t.pred, t.target, t.N, t.C);
        snprintf(label, sizeof(label), "%s", names[kind]);
        grad_check(label, t.pred, n, dp, loss_value, &t, 1e-3f, TOL, MAXC);
        free(t.pred); free(t.target); free(t.mask); free(t.losses); free(t.dl); free(t.cw); free(t.tg); free(dp);
    }
}

// ----------------------------------------------------------------------------
// AdamW against hand-computed values; sum of squares

static void test_adamw(void) {
    float p[2] = {1.0f, -2.0f}, g[2] = {0.5f, -1.0f}, m[2] = {0.1f, 0.0f}, v[2] = {0.01f, 0.0f};
    float lr = 0.1f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.05f; int t = 2;
    float want[2];
    for (int i = 0; i < 2; i++) {
        double mi = b1 * m[i] + (1 - b1) * g[i], vi = b2 * v[i] + (1 - b2) * g[i] * g[i];
        double mh = mi / (1 - pow(b1, t)), vh = vi / (1 - pow(b2, t));
        want[i] = (float)(p[i] - lr * (mh / (sqrt(vh) + eps) + wd * p[i]));
    }
    adamw_update_cpu(p, g, m, v, 2, lr, b1, b2, eps, wd, t);
    check_close("adamw one step vs hand-computed", p, want, 2, 1e-6);
    float x[5] = {1, -2, 3, 0.5f, -0.25f}, s, s_want = 1 + 4 + 9 + 0.25f + 0.0625f;
    sum_squares_cpu(&s, x, 5);
    check_close("sum_squares", &s, &s_want, 1, 1e-7);
}

int main(void) {
    rng_seed(&rng, 1234);
    test_linear();
    test_norms();
    test_activations();
    test_attention();
    test_conv_case(3, 1, 1, 7, 9, 7, 9);
    test_conv_case(3, 2, 1, 7, 9, 4, 5);
    test_conv_case(1, 1, 0, 5, 7, 5, 7);
    test_conv_case(4, 4, 0, 10, 10, 3, 3);   // Swin patch embedding: pad bottom/right to 12
    test_spatial();
    test_sine();
    test_losses();
    test_adamw();
    return test_summary("test_ops");
}
