// test/test_ops_b.c: CPU ops of part B (windows, patch merge, resizing, point sampling,
// sine position encoding, losses, AdamW, sum of squares).
// Forwards are compared with independent references written the way the PyTorch /
// Swin / Mask2Former code computes them (explicit pad + roll + view, separable weight
// matrices, grid_sample's unnormalise, cumsum-based position encoding, naive loss
// formulas) and with hand-computed values. Backwards are checked against central finite
// differences of L = sum(out * R) on odd sizes, and for accumulation (+=).
#include "test.h"

static Rng rng;
#define EPS 1e-2f      // finite-difference step; all spatial ops are linear in the input
#define TOL 1e-2       // relative error bound for gradients
#define MAXC 400       // checked elements per tensor

// backward ACCUMULATES: starting from a buffer of 0.25, two calls give 0.25 + 2 g
typedef void (*backward_fn)(float* din, void* ctx);
static void check_accumulates(const char* name, backward_fn bwd, void* ctx, const float* g, size_t n) {
    float* twice = mallocCheck(n * sizeof(float));
    float* want = mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) { twice[i] = 0.25f; want[i] = 0.25f + 2.0f * g[i]; }
    bwd(twice, ctx); bwd(twice, ctx);
    char label[96];
    snprintf(label, sizeof(label), "%s accumulates (+=)", name);
    check_close(label, twice, want, n, 1e-6);
    free(twice); free(want);
}

// the WRITE (=) contract of window_reverse_residual_backward and scale_rows_add_backward (ttt.h):
// into a buffer of NaN and into one of 1e30, once and twice, the result is g (the gradient computed
// into zeros), exactly: nothing old is read and every element is written
static void check_writes(const char* name, backward_fn bwd, void* ctx, const float* g, size_t n) {
    float* buf = mallocCheck(n * sizeof(float));
    const float fills[2] = {NAN, 1e30f};
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < n; i++) buf[i] = fills[k];
        bwd(buf, ctx);
        if (k == 1) bwd(buf, ctx);   // a second call overwrites, does not add
        char label[128];
        snprintf(label, sizeof(label), "%s writes (=) over %s%s", name, k ? "1e30" : "NaN", k ? ", twice" : "");
        check_close(label, buf, g, n, 0.0);
    }
    free(buf);
}

// equal values (not bits: 0 * negative is -0 where the unfused chain adds it to +0)
static int same_values(const float* a, const float* b, size_t n) {
    for (size_t i = 0; i < n; i++) if (!(a[i] == b[i])) return 0;
    return 1;
}

// ----------------------------------------------------------------------------
// spatial ops: one case struct, forward / backward by kind

enum { WIN_PART, WIN_REV, MERGE, NEAREST, BILINEAR, POINT };
typedef struct {
    int kind, B, H, W, C, ws, shift, Ho, Wo, M, P;
    float *inp, *out, *R, *coords;
    size_t nin, nout;
} Spatial;

static void spatial_forward(Spatial* t) {
    switch (t->kind) {
    case WIN_PART: window_partition_forward_cpu(t->out, t->inp, t->B, t->H, t->W, t->C, t->ws, t->shift); break;
    case WIN_REV:  window_reverse_forward_cpu(t->out, t->inp, t->B, t->H, t->W, t->C, t->ws, t->shift); break;
    case MERGE:    patch_merge_forward_cpu(t->out, t->inp, t->B, t->H, t->W, t->C); break;
    case NEAREST:  upsample_nearest_forward_cpu(t->out, t->inp, t->B, t->H, t->W, t->C, t->Ho, t->Wo); break;
    case BILINEAR: upsample_bilinear_forward_cpu(t->out, t->inp, t->B, t->H, t->W, t->C, t->Ho, t->Wo); break;
    case POINT:    point_sample_forward_cpu(t->out, t->inp, t->coords, t->M, t->H, t->W, t->P); break;
    }
}
static void spatial_backward(float* din, void* ctx) {
    Spatial* t = ctx;
    switch (t->kind) {
    case WIN_PART: window_partition_backward_cpu(din, t->R, t->B, t->H, t->W, t->C, t->ws, t->shift); break;
    case WIN_REV:  window_reverse_backward_cpu(din, t->R, t->B, t->H, t->W, t->C, t->ws, t->shift); break;
    case MERGE:    patch_merge_backward_cpu(din, t->R, t->B, t->H, t->W, t->C); break;
    case NEAREST:  upsample_nearest_backward_cpu(din, t->R, t->B, t->H, t->W, t->C, t->Ho, t->Wo); break;
    case BILINEAR: upsample_bilinear_backward_cpu(din, t->R, t->B, t->H, t->W, t->C, t->Ho, t->Wo); break;
    case POINT:    point_sample_backward_cpu(din, t->R, t->coords, t->M, t->H, t->W, t->P); break;
    }
}
static double spatial_loss(void* ctx) {
    Spatial* t = ctx;
    spatial_forward(t);
    return dot_double(t->out, t->R, t->nout);
}

// sizes of input and output for a case
static void spatial_sizes(Spatial* t) {
    int nW = ((t->H + t->ws - 1) / (t->ws ? t->ws : 1)) * ((t->W + t->ws - 1) / (t->ws ? t->ws : 1));
    size_t img = (size_t)t->B * t->H * t->W * t->C;
    size_t win = (size_t)t->B * nW * t->ws * t->ws * t->C;
    switch (t->kind) {
    case WIN_PART: t->nin = img; t->nout = win; break;
    case WIN_REV:  t->nin = win; t->nout = img; break;
    case MERGE:    t->nin = img; t->nout = (size_t)t->B * ((t->H + 1) / 2) * ((t->W + 1) / 2) * 4 * t->C; break;
    case NEAREST: case BILINEAR:
        t->nin = img; t->nout = (size_t)t->B * t->Ho * t->Wo * t->C; break;
    case POINT:    t->nin = (size_t)t->M * t->H * t->W; t->nout = (size_t)t->M * t->P; break;
    }
}

// random input and R, analytic gradient, finite-difference check, accumulation check
static void spatial_grad(const char* name, Spatial t) {
    spatial_sizes(&t);
    t.inp = random_tensor(&rng, t.nin, -1, 1);
    t.R = random_tensor(&rng, t.nout, -1, 1);
    t.out = callocCheck(t.nout, sizeof(float));
    float* din = callocCheck(t.nin, sizeof(float));
    spatial_backward(din, &t);
    grad_check(name, t.inp, t.nin, din, spatial_loss, &t, EPS, TOL, MAXC);
    check_accumulates(name, spatial_backward, &t, din, t.nin);
    free(t.inp); free(t.R); free(t.out); free(din);
}

// ----------------------------------------------------------------------------
// windows

// Swin's own recipe: F.pad bottom/right, torch.roll(x, (-s, -s), (1, 2)), then
// view(B, Hp/ws, ws, Wp/ws, ws, C).permute(0, 1, 3, 2, 4, 5)
static void window_partition_reference(float* out, const float* x, int B, int H, int W, int C, int ws, int s) {
    int Hp = (H + ws - 1) / ws * ws, Wp = (W + ws - 1) / ws * ws;
    float* padded = callocCheck((size_t)B * Hp * Wp * C, sizeof(float));
    float* rolled = callocCheck((size_t)B * Hp * Wp * C, sizeof(float));
    for (int b = 0; b < B; b++) for (int i = 0; i < H; i++) for (int j = 0; j < W; j++)
        memcpy(padded + (((size_t)b * Hp + i) * Wp + j) * C, x + (((size_t)b * H + i) * W + j) * C, C * sizeof(float));
    // torch.roll by -s: rolled[i] = padded[(i + s) mod Hp]
    for (int b = 0; b < B; b++) for (int i = 0; i < Hp; i++) for (int j = 0; j < Wp; j++)
        memcpy(rolled + (((size_t)b * Hp + i) * Wp + j) * C,
               padded + (((size_t)b * Hp + (i + s) % Hp) * Wp + (j + s) % Wp) * C, C * sizeof(float));
    int nh = Hp / ws, nw = Wp / ws;
    size_t o = 0;
    for (int b = 0; b < B; b++) for (int wy = 0; wy < nh; wy++) for (int wx = 0; wx < nw; wx++)
        for (int ty = 0; ty < ws; ty++) for (int tx = 0; tx < ws; tx++, o++)
            memcpy(out + o * C, rolled + (((size_t)b * Hp + wy * ws + ty) * Wp + wx * ws + tx) * C, C * sizeof(float));
    free(padded); free(rolled);
}

static void test_windows(void) {
    // forward vs the pad/roll/view reference (bitwise), and reverse(partition(x)) == x (bitwise)
    int shapes[][5] = {  // B, H, W, ws, shift
        {2, 11, 9, 4, 2}, {2, 11, 9, 4, 0}, {1, 7, 14, 7, 3}, {1, 5, 3, 7, 0}, {3, 8, 8, 4, 2},
        {1, 13, 6, 3, 1}, {2, 1, 1, 2, 1},
    };
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int B = shapes[s][0], H = shapes[s][1], W = shapes[s][2], C = 5, ws = shapes[s][3], sh = shapes[s][4];
        int nW = ((H + ws - 1) / ws) * ((W + ws - 1) / ws);
        size_t nimg = (size_t)B * H * W * C, nwin = (size_t)B * nW * ws * ws * C;
        float* x = random_tensor(&rng, nimg, -1, 1);
        float* win = mallocCheck(nwin * sizeof(float));
        float* ref = mallocCheck(nwin * sizeof(float));
        float* back = mallocCheck(nimg * sizeof(float));
        for (size_t i = 0; i < nwin; i++) win[i] = NAN;   // every slot must be written
        window_partition_forward_cpu(win, x, B, H, W, C, ws, sh);
        window_partition_reference(ref, x, B, H, W, C, ws, sh);
        CHECK(memcmp(win, ref, nwin * sizeof(float)) == 0,
              "window_partition != pad/roll/view reference for B%d %dx%d ws%d shift%d", B, H, W, ws, sh);
        window_reverse_forward_cpu(back, win, B, H, W, C, ws, sh);
        CHECK(memcmp(back, x, nimg * sizeof(float)) == 0,
              "window_reverse(window_partition(x)) != x for B%d %dx%d ws%d shift%d", B, H, W, ws, sh);
        free(x); free(win); free(ref); free(back);
    }
    // where one element lands, by hand: H=W=5, ws=3, shift=2, values 1..25 (one channel).
    // padded 6x6; rolled(i, j) = padded((i+2)%6, (j+2)%6).
    //  window 0 token 0 = rolled(0,0) = padded(2,2) = input (2,2) = 13
    //  window 0 token 4 = rolled(1,1) = padded(3,3) = 19
    //  window 1 token 0 = rolled(0,3) = padded(2,5): a pad column -> 0
    //  window 3 token 8 = rolled(5,5) = padded(1,1) = 7
    //  window 2 token 7 = rolled(5,1) = padded(1,3) = 9;  window 1 token 2 = rolled(0,5) = padded(2,1) = 12
    {
        float x[25], win[4 * 9];
        for (int i = 0; i < 25; i++) x[i] = (float)(i + 1);
        window_partition_forward_cpu(win, x, 1, 5, 5, 1, 3, 2);
        float got[6] = {win[0], win[4], win[9], win[3 * 9 + 8], win[2 * 9 + 7], win[9 + 2]};
        float want[6] = {13, 19, 0, 7, 9, 12};
        check_close("window_partition shift 2: hand-placed elements", got, want, 6, 0.0);
    }
    // gradients: odd sizes, shift and no shift, both directions
    spatial_grad("window_partition B2 11x9 C5 ws4 shift2", (Spatial){.kind = WIN_PART, .B = 2, .H = 11, .W = 9, .C = 5, .ws = 4, .shift = 2});
    spatial_grad("window_partition B2 11x9 C5 ws4 shift0", (Spatial){.kind = WIN_PART, .B = 2, .H = 11, .W = 9, .C = 5, .ws = 4, .shift = 0});
    spatial_grad("window_reverse B2 11x9 C5 ws4 shift2", (Spatial){.kind = WIN_REV, .B = 2, .H = 11, .W = 9, .C = 5, .ws = 4, .shift = 2});
    spatial_grad("window_reverse B2 11x9 C5 ws4 shift0", (Spatial){.kind = WIN_REV, .B = 2, .H = 11, .W = 9, .C = 5, .ws = 4, .shift = 0});
}

// ----------------------------------------------------------------------------
// Swin block fusions: each fused op against the chain of ops it replaces (bitwise, except
// layernorm_apply; equal values for the backwards that write), and its backward against finite
// differences and for accumulation (layernorm_partition) or writing (window_reverse_residual,
// scale_rows_add: ttt.h)

typedef struct {
    int B, H, W, C, ws, shift;
    size_t nimg, nwin;
    float *x, *w, *b, *mean, *rstd, *win, *img, *res, *scale, *R;
    int kind;   // 0 layernorm_partition (x, w, b -> win), 1 window_reverse_residual (win, b, res -> img)
} Fusion;

static double fusion_loss(void* ctx) {
    Fusion* t = ctx;
    if (t->kind == 0) {
        layernorm_partition_forward_cpu(t->win, t->mean, t->rstd, t->x, t->w, t->b, t->B, t->H, t->W, t->C,
                                        t->ws, t->shift);
        return dot_double(t->win, t->R, t->nwin);
    }
    window_reverse_residual_forward_cpu(t->img, t->win, t->b, t->res, t->scale, t->B, t->H, t->W, t->C, t->ws,
                                        t->shift);
    return dot_double(t->img, t->R, t->nimg);
}
static void layernorm_partition_dinp(float* din, void* ctx) {
    Fusion* t = ctx;
    layernorm_partition_backward_cpu(din, NULL, NULL, t->R, t->x, t->w, t->mean, t->rstd, t->B, t->H, t->W, t->C,
                                     t->ws, t->shift);
}
static void reverse_residual_dwin(float* din, void* ctx) {
    Fusion* t = ctx;
    window_reverse_residual_backward_cpu(NULL, din, t->R, t->scale, t->B, t->H, t->W, t->C, t->ws, t->shift);
}
static void reverse_residual_dres(float* din, void* ctx) {
    Fusion* t = ctx;
    window_reverse_residual_backward_cpu(din, NULL, t->R, t->scale, t->B, t->H, t->W, t->C, t->ws, t->shift);
}

static int same_bits(const float* a, const float* b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

static void test_layernorm_partition(int B, int H, int W, int C, int ws, int shift) {
    Fusion t = {.B = B, .H = H, .W = W, .C = C, .ws = ws, .shift = shift, .kind = 0};
    int nW = ((H + ws - 1) / ws) * ((W + ws - 1) / ws), N = B * H * W;
    t.nimg = (size_t)N * C; t.nwin = (size_t)B * nW * ws * ws * C;
    t.x = random_tensor(&rng, t.nimg, -2, 3); t.w = random_tensor(&rng, C, 0.5f, 1.5f);
    t.b = random_tensor(&rng, C, -1, 1); t.R = random_tensor(&rng, t.nwin, -1, 1);
    t.mean = mallocCheck(N * sizeof(float)); t.rstd = mallocCheck(N * sizeof(float));
    t.win = mallocCheck(t.nwin * sizeof(float));
    // forward: the chain layernorm -> window_partition, bit for bit; every slot written
    float *ln = mallocCheck(t.nimg * sizeof(float)), *ref = mallocCheck(t.nwin * sizeof(float));
    float *mref = mallocCheck(N * sizeof(float)), *rref = mallocCheck(N * sizeof(float));
    layernorm_forward_cpu(ln, mref, rref, t.x, t.w, t.b, N, C);
    window_partition_forward_cpu(ref, ln, B, H, W, C, ws, shift);
    for (size_t i = 0; i < t.nwin; i++) t.win[i] = NAN;
    for (int i = 0; i < N; i++) t.mean[i] = t.rstd[i] = NAN;
    fusion_loss(&t);
    CHECK(same_bits(t.win, ref, t.nwin) && same_bits(t.mean, mref, N) && same_bits(t.rstd, rref, N),
          "layernorm_partition_forward != window_partition(layernorm) for B%d %dx%d C%d ws%d shift%d",
          B, H, W, C, ws, shift);
    for (size_t i = 0; i < t.nwin; i++) t.win[i] = NAN;
    layernorm_partition_forward_cpu(t.win, NULL, NULL, t.x, t.w, t.b, B, H, W, C, ws, shift);
    CHECK(same_bits(t.win, ref, t.nwin), "layernorm_partition_forward without mean/rstd gives other windows");
    // backward: the chain window_partition_backward -> layernorm_backward, bit for bit
    float *dx = callocCheck(t.nimg, sizeof(float)), *dw = callocCheck(C, sizeof(float)), *db = callocCheck(C, sizeof(float));
    float *dxr = callocCheck(t.nimg, sizeof(float)), *dwr = callocCheck(C, sizeof(float)), *dbr = callocCheck(C, sizeof(float));
    float* dln = callocCheck(t.nimg, sizeof(float));
    layernorm_partition_backward_cpu(dx, dw, db, t.R, t.x, t.w, t.mean, t.rstd, B, H, W, C, ws, shift);
    window_partition_backward_cpu(dln, t.R, B, H, W, C, ws, shift);
    layernorm_backward_cpu(dxr, dwr, dbr, dln, t.x, t.w, mref, rref, N, C);
    CHECK(same_bits(dx, dxr, t.nimg) && same_bits(dw, dwr, C) && same_bits(db, dbr, C),
          "layernorm_partition_backward != layernorm_backward(window_partition_backward) for B%d %dx%d ws%d shift%d",
          B, H, W, ws, shift);
    char label[96];
    snprintf(label, sizeof(label), "layernorm_partition B%d %dx%d C%d ws%d sh%d dinp", B, H, W, C, ws, shift);
    grad_check(label, t.x, t.nimg, dx, fusion_loss, &t, 1e-3f, TOL, MAXC);
    snprintf(label, sizeof(label), "layernorm_partition B%d %dx%d C%d ws%d sh%d dweight", B, H, W, C, ws, shift);
    grad_check(label, t.w, C, dw, fusion_loss, &t, 1e-3f, TOL, MAXC);
    snprintf(label, sizeof(label), "layernorm_partition B%d %dx%d C%d ws%d sh%d dbias", B, H, W, C, ws, shift);
    grad_check(label, t.b, C, db, fusion_loss, &t, 1e-3f, TOL, MAXC);
    fusion_loss(&t);   // the statistics of the unperturbed input again
    check_accumulates("layernorm_partition dinp", layernorm_partition_dinp, &t, dx, t.nimg);
    // layernorm_apply with the saved statistics reproduces layernorm_forward's output
    float* app = mallocCheck(t.nimg * sizeof(float));
    layernorm_apply_cpu(app, t.x, t.mean, t.rstd, t.w, t.b, N, C);
    snprintf(label, sizeof(label), "layernorm_apply vs layernorm_forward %dx%d", N, C);
    check_close(label, app, ln, t.nimg, 1e-6);
    free(t.x); free(t.w); free(t.b); free(t.R); free(t.mean); free(t.rstd); free(t.win);
    free(ln); free(ref); free(mref); free(rref); free(dx); free(dw); free(db); free(dxr); free(dwr); free(dbr);
    free(dln); free(app);
}

// with_bias: a bias per channel added to every window token (Swin's proj bias)
static void test_reverse_residual(int B, int H, int W, int C, int ws, int shift, int with_scale, int with_bias) {
    Fusion t = {.B = B, .H = H, .W = W, .C = C, .ws = ws, .shift = shift, .kind = 1};
    int nW = ((H + ws - 1) / ws) * ((W + ws - 1) / ws);
    size_t per = (size_t)H * W * C;
    t.nimg = (size_t)B * per; t.nwin = (size_t)B * nW * ws * ws * C;
    t.win = random_tensor(&rng, t.nwin, -1, 1); t.res = random_tensor(&rng, t.nimg, -1, 1);
    t.R = random_tensor(&rng, t.nimg, -1, 1);
    t.img = mallocCheck(t.nimg * sizeof(float));
    if (with_scale) {   // dropped (0), kept (1 / (1 - p)) and arbitrary samples
        t.scale = random_tensor(&rng, B, 0.5f, 2.0f);
        t.scale[0] = 0.0f;
        if (B > 1) t.scale[1] = 1.0f / (1.0f - 0.3f);
    }
    if (with_bias) t.b = random_tensor(&rng, C, -1, 1);
    // forward: (bias added per token), window_reverse -> scale_rows -> add_inplace, bit for bit;
    // every pixel written
    float* ref = mallocCheck(t.nimg * sizeof(float));
    float* winb = mallocCheck(t.nwin * sizeof(float));
    for (size_t i = 0; i < t.nwin; i++) winb[i] = t.b ? t.win[i] + t.b[i % C] : t.win[i];
    window_reverse_forward_cpu(ref, winb, B, H, W, C, ws, shift);
    if (t.scale) scale_rows_forward_cpu(ref, ref, t.scale, B, per);
    add_inplace_cpu(ref, t.res, t.nimg);
    for (size_t i = 0; i < t.nimg; i++) t.img[i] = NAN;
    fusion_loss(&t);
    CHECK(same_bits(t.img, ref, t.nimg), "window_reverse_residual_forward != add(scale_rows(window_reverse)) "
          "for B%d %dx%d ws%d shift%d scale %d bias %d", B, H, W, ws, shift, with_scale, with_bias);
    // backward (written, into NaN): add_inplace + scale_rows_backward -> window_reverse_backward
    // into zeros, the same values (padding tokens 0)
    float *dres = mallocCheck(t.nimg * sizeof(float)), *dwin = mallocCheck(t.nwin * sizeof(float));
    for (size_t i = 0; i < t.nimg; i++) dres[i] = NAN;
    for (size_t i = 0; i < t.nwin; i++) dwin[i] = NAN;
    float *dresr = callocCheck(t.nimg, sizeof(float)), *dwinr = callocCheck(t.nwin, sizeof(float));
    float* dbranch = callocCheck(t.nimg, sizeof(float));
    window_reverse_residual_backward_cpu(dres, dwin, t.R, t.scale, B, H, W, C, ws, shift);
    add_inplace_cpu(dresr, t.R, t.nimg);
    if (t.scale) scale_rows_backward_cpu(dbranch, t.R, t.scale, B, per);
    window_reverse_backward_cpu(dwinr, t.scale ? dbranch : t.R, B, H, W, C, ws, shift);
    CHECK(same_values(dres, dresr, t.nimg) && same_values(dwin, dwinr, t.nwin),
          "window_reverse_residual_backward != the unfused chain for B%d %dx%d ws%d shift%d scale %d",
          B, H, W, ws, shift, with_scale);
    char label[96];
    snprintf(label, sizeof(label), "window_reverse_residual %dx%d ws%d sh%d scale%d dinp", H, W, ws, shift, with_scale);
    grad_check(label, t.win, t.nwin, dwin, fusion_loss, &t, EPS, TOL, MAXC);
    check_writes(label, reverse_residual_dwin, &t, dwin, t.nwin);
    snprintf(label, sizeof(label), "window_reverse_residual %dx%d ws%d sh%d scale%d dres", H, W, ws, shift, with_scale);
    grad_check(label, t.res, t.nimg, dres, fusion_loss, &t, EPS, TOL, MAXC);
    check_writes(label, reverse_residual_dres, &t, dres, t.nimg);
    free(t.win); free(t.res); free(t.R); free(t.img); free(t.scale); free(t.b);
    free(ref); free(winb); free(dres); free(dwin); free(dresr); free(dwinr); free(dbranch);
}

typedef struct { int B; size_t N; float *inp, *res, *scale, *out, *R; } ScaleAdd;
static double scale_add_loss(void* ctx) {
    ScaleAdd* t = ctx;
    scale_rows_add_forward_cpu(t->out, t->inp, t->res, t->scale, t->B, t->N);
    return dot_double(t->out, t->R, (size_t)t->B * t->N);
}
static void scale_add_dinp(float* d, void* ctx) {
    ScaleAdd* t = ctx;
    scale_rows_add_backward_cpu(d, NULL, t->R, t->scale, t->B, t->N);
}
static void scale_add_dres(float* d, void* ctx) {
    ScaleAdd* t = ctx;
    scale_rows_add_backward_cpu(NULL, d, t->R, t->scale, t->B, t->N);
}

static void test_scale_rows_add(int with_scale) {
    ScaleAdd t = {.B = 3, .N = 37};
    size_t n = (size_t)t.B * t.N;
    t.inp = random_tensor(&rng, n, -1, 1); t.res = random_tensor(&rng, n, -1, 1); t.R = random_tensor(&rng, n, -1, 1);
    t.out = mallocCheck(n * sizeof(float));
    if (with_scale) { t.scale = random_tensor(&rng, t.B, 0.5f, 2.0f); t.scale[1] = 0.0f; }
    // forward: scale_rows -> add_inplace, bit for bit, also in place (out = inp)
    float* ref = mallocCheck(n * sizeof(float));
    if (t.scale) scale_rows_forward_cpu(ref, t.inp, t.scale, t.B, t.N);
    else memcpy(ref, t.inp, n * sizeof(float));
    add_inplace_cpu(ref, t.res, n);
    scale_add_loss(&t);
    float* inplace = mallocCheck(n * sizeof(float));
    memcpy(inplace, t.inp, n * sizeof(float));
    scale_rows_add_forward_cpu(inplace, inplace, t.res, t.scale, t.B, t.N);
    CHECK(same_bits(t.out, ref, n) && same_bits(inplace, ref, n),
          "scale_rows_add_forward != add_inplace(scale_rows_forward) (scale %d)", with_scale);
    // backward (written, into NaN) against scale_rows_backward and add_inplace into zeros
    float *dinp = mallocCheck(n * sizeof(float)), *dres = mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) dinp[i] = dres[i] = NAN;
    scale_rows_add_backward_cpu(dinp, dres, t.R, t.scale, t.B, t.N);
    float *dinpr = callocCheck(n, sizeof(float)), *dresr = callocCheck(n, sizeof(float));
    if (t.scale) scale_rows_backward_cpu(dinpr, t.R, t.scale, t.B, t.N);
    else add_inplace_cpu(dinpr, t.R, n);
    add_inplace_cpu(dresr, t.R, n);
    CHECK(same_values(dinp, dinpr, n) && same_values(dres, dresr, n),
          "scale_rows_add_backward != scale_rows_backward, add_inplace into zeros (scale %d)", with_scale);
    free(dinpr); free(dresr);
    char label[96];
    snprintf(label, sizeof(label), "scale_rows_add (scale %d) dinp", with_scale);
    grad_check(label, t.inp, n, dinp, scale_add_loss, &t, EPS, TOL, MAXC);
    check_writes(label, scale_add_dinp, &t, dinp, n);
    snprintf(label, sizeof(label), "scale_rows_add (scale %d) dres", with_scale);
    grad_check(label, t.res, n, dres, scale_add_loss, &t, EPS, TOL, MAXC);
    check_writes(label, scale_add_dres, &t, dres, n);
    free(t.inp); free(t.res); free(t.R); free(t.out); free(t.scale); free(ref); free(inplace); free(dinp); free(dres);
}

static void test_swin_fusions(void) {
    test_layernorm_partition(2, 11, 9, 5, 4, 2);
    test_layernorm_partition(2, 11, 9, 5, 4, 0);
    test_layernorm_partition(1, 7, 14, 6, 7, 3);
    test_layernorm_partition(1, 5, 3, 4, 7, 0);    // one window, mostly padding
    test_reverse_residual(3, 11, 9, 5, 4, 2, 1, 1);
    test_reverse_residual(2, 11, 9, 5, 4, 0, 0, 0);
    test_reverse_residual(2, 13, 6, 3, 3, 1, 1, 0);
    test_reverse_residual(2, 13, 6, 3, 3, 1, 0, 1);
    test_scale_rows_add(1);
    test_scale_rows_add(0);
    group_line("Swin block fusions (layernorm_partition, window_reverse_residual, layernorm_apply, scale_rows_add)");
}

// ----------------------------------------------------------------------------
// patch merge

static void test_patch_merge(void) {
    // 3x3 map, two channels (value v and 10 v), padded to 4x4:
    //   1 2 3
    //   4 5 6      out (2, 2, 8) = [x(2y,2x), x(2y+1,2x), x(2y,2x+1), x(2y+1,2x+1)] per channel pair
    //   7 8 9
    float x[18], o[2 * 2 * 8];
    for (int i = 0; i < 9; i++) { x[2 * i] = (float)(i + 1); x[2 * i + 1] = 10.0f * (i + 1); }
    patch_merge_forward_cpu(o, x, 1, 3, 3, 2);
    float want[32] = {
        1, 10, 4, 40, 2, 20, 5, 50,   // (0,0): x(0,0) x(1,0) x(0,1) x(1,1)
        3, 30, 6, 60, 0, 0, 0, 0,     // (0,1): x(0,2) x(1,2) pad pad
        7, 70, 0, 0, 8, 80, 0, 0,     // (1,0): x(2,0) pad x(2,1) pad
        9, 90, 0, 0, 0, 0, 0, 0,      // (1,1): x(2,2) pad pad pad
    };
    check_close("patch_merge 3x3 hand-computed order and padding", o, want, 32, 0.0);
    spatial_grad("patch_merge B2 7x5 C3 (odd H, W)", (Spatial){.kind = MERGE, .B = 2, .H = 7, .W = 5, .C = 3});
    spatial_grad("patch_merge B1 6x9 C4", (Spatial){.kind = MERGE, .B = 1, .H = 6, .W = 9, .C = 4});
}

// ----------------------------------------------------------------------------
// resizing

// PyTorch's nearest source index: float scale = in / out, floorf(dst * scale), clamped
static int nearest_reference(int dst, int in, int out) {
    float scale = (float)in / (float)out;
    float pos = (float)dst * scale;
    int s = (int)floorf(pos);
    return s > in - 1 ? in - 1 : s;
}

// PyTorch's bilinear (align_corners=False) as a dense (out x in) weight matrix for one axis:
// src = max(scale (dst + 0.5) - 0.5, 0); i0 = min(floor(src), in-1); i1 = i0 + (i0 < in-1);
// lambda1 = clamp(src - i0, 0, 1)
static void bilinear_axis_matrix(double* Wm, int in, int out) {
    float scale = (float)in / (float)out;
    memset(Wm, 0, (size_t)out * in * sizeof(double));
    for (int d = 0; d < out; d++) {
        float src = scale * ((float)d + 0.5f) - 0.5f;
        if (src < 0) src = 0;
        int i0 = (int)floorf(src); if (i0 > in - 1) i0 = in - 1;
        int i1 = i0 + (i0 < in - 1 ? 1 : 0);
        float l1 = src - i0; if (l1 < 0) l1 = 0; if (l1 > 1) l1 = 1;
        Wm[(size_t)d * in + i0] += 1.0 - l1;
        Wm[(size_t)d * in + i1] += l1;
    }
}

static void bilinear_reference(float* out, const float* x, int B, int H, int W, int C, int Ho, int Wo) {
    double* Wy = mallocCheck((size_t)Ho * H * sizeof(double));
    double* Wx = mallocCheck((size_t)Wo * W * sizeof(double));
    bilinear_axis_matrix(Wy, H, Ho);
    bilinear_axis_matrix(Wx, W, Wo);
    for (int b = 0; b < B; b++) for (int y = 0; y < Ho; y++) for (int xo = 0; xo < Wo; xo++) for (int c = 0; c < C; c++) {
        double s = 0.0;
        for (int i = 0; i < H; i++) for (int j = 0; j < W; j++)
            s += Wy[(size_t)y * H + i] * Wx[(size_t)xo * W + j] * x[(((size_t)b * H + i) * W + j) * C + c];
        out[(((size_t)b * Ho + y) * Wo + xo) * C + c] = (float)s;
    }
    free(Wy); free(Wx);
}

static void test_resize(void) {
    // nearest, hand-computed: 3 -> 5 takes rows 0 0 1 1 2; 5 -> 3 takes 0 1 3
    {
        float x[5] = {10, 11, 12, 13, 14}, o[5];
        upsample_nearest_forward_cpu(o, x, 1, 1, 3, 1, 1, 5);
        float want35[5] = {10, 10, 11, 11, 12};
        check_close("nearest 3->5 hand-computed", o, want35, 5, 0.0);
        upsample_nearest_forward_cpu(o, x, 1, 5, 1, 1, 3, 1);
        float want53[3] = {10, 11, 13};
        check_close("nearest 5->3 hand-computed", o, want53, 3, 0.0);
    }
    // PyTorch computes the nearest source in float: 26 -> 22 at dst 11 is
    // floorf(11 * 1.1818181f) = floorf(12.999999) = 12, not the exact rational 13
    {
        float x[26], o[22];
        for (int i = 0; i < 26; i++) x[i] = (float)i;
        upsample_nearest_forward_cpu(o, x, 1, 1, 26, 1, 1, 22);
        CHECK(o[11] == 12.0f, "nearest 26->22 dst 11: got source %g, PyTorch (float scale) takes 12", o[11]);
    }
    // nearest vs reference on odd sizes, up and down
    int cases[][4] = {{5, 7, 11, 13}, {11, 13, 4, 5}, {6, 6, 12, 12}, {7, 9, 7, 9}, {9, 26, 4, 22}};
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        int B = 2, H = cases[k][0], W = cases[k][1], Ho = cases[k][2], Wo = cases[k][3], C = 3;
        float* x = random_tensor(&rng, (size_t)B * H * W * C, -1, 1);
        float* o = mallocCheck((size_t)B * Ho * Wo * C * sizeof(float));
        float* ref = mallocCheck((size_t)B * Ho * Wo * C * sizeof(float));
        upsample_nearest_forward_cpu(o, x, B, H, W, C, Ho, Wo);
        for (int b = 0; b < B; b++) for (int y = 0; y < Ho; y++) for (int xo = 0; xo < Wo; xo++) for (int c = 0; c < C; c++)
            ref[(((size_t)b * Ho + y) * Wo + xo) * C + c] =
                x[(((size_t)b * H + nearest_reference(y, H, Ho)) * W + nearest_reference(xo, W, Wo)) * C + c];
        char label[96];
        snprintf(label, sizeof(label), "nearest %dx%d->%dx%d vs reference", H, W, Ho, Wo);
        check_close(label, o, ref, (size_t)B * Ho * Wo * C, 0.0);
        free(x); free(o); free(ref);
    }
    // bilinear, hand-computed PyTorch values
    {
        float x[4] = {1, 2, 3, 4}, o[16];
        upsample_bilinear_forward_cpu(o, x, 1, 2, 2, 1, 4, 4);
        float want[16] = {1.0f, 1.25f, 1.75f, 2.0f,  1.5f, 1.75f, 2.25f, 2.5f,
                          2.5f, 2.75f, 3.25f, 3.5f,  3.0f, 3.25f, 3.75f, 4.0f};
        check_close("bilinear 2x2->4x4 (PyTorch values)", o, want, 16, 1e-7);
        // down 4 -> 2: sources 0.5 and 2.5, averages of neighbours
        float r[4] = {1, 2, 3, 5}, d[2];
        upsample_bilinear_forward_cpu(d, r, 1, 1, 4, 1, 1, 2);
        float wantd[2] = {1.5f, 4.0f};
        check_close("bilinear 4->2 (down) hand-computed", d, wantd, 2, 1e-7);
        // down 3 -> 2: scale 1.5, sources 0.25 and 1.75
        float r3[3] = {1, 2, 4}, d3[2];
        upsample_bilinear_forward_cpu(d3, r3, 1, 1, 3, 1, 1, 2);
        float want3[2] = {0.75f * 1 + 0.25f * 2, 0.25f * 2 + 0.75f * 4};
        check_close("bilinear 3->2 (down) hand-computed", d3, want3, 2, 1e-7);
        // up 2 -> 5: scale 0.4, sources 0 (clamped from -0.3), 0.1, 0.5, 0.9, 1.3 (-> last index)
        float r2[2] = {2, 7}, u[5];
        upsample_bilinear_forward_cpu(u, r2, 1, 1, 2, 1, 1, 5);
        float want25[5] = {2.0f, 2.5f, 4.5f, 6.5f, 7.0f};
        check_close("bilinear 2->5 incl. both border clamps", u, want25, 5, 1e-6);
    }
    // bilinear vs separable weight-matrix reference, up, down, mixed
    int bcases[][4] = {{5, 7, 11, 13}, {11, 13, 4, 5}, {6, 6, 3, 3}, {3, 8, 10, 3}, {7, 9, 7, 9}};
    for (size_t k = 0; k < sizeof(bcases) / sizeof(bcases[0]); k++) {
        int B = 2, H = bcases[k][0], W = bcases[k][1], Ho = bcases[k][2], Wo = bcases[k][3], C = 3;
        float* x = random_tensor(&rng, (size_t)B * H * W * C, -1, 1);
        float* o = mallocCheck((size_t)B * Ho * Wo * C * sizeof(float));
        float* ref = mallocCheck((size_t)B * Ho * Wo * C * sizeof(float));
        upsample_bilinear_forward_cpu(o, x, B, H, W, C, Ho, Wo);
        bilinear_reference(ref, x, B, H, W, C, Ho, Wo);
        char label[96];
        snprintf(label, sizeof(label), "bilinear %dx%d->%dx%d vs weight-matrix reference", H, W, Ho, Wo);
        check_close(label, o, ref, (size_t)B * Ho * Wo * C, 1e-6);
        free(x); free(o); free(ref);
    }
    spatial_grad("upsample_nearest B2 5x7->11x13 C3", (Spatial){.kind = NEAREST, .B = 2, .H = 5, .W = 7, .C = 3, .Ho = 11, .Wo = 13});
    spatial_grad("upsample_nearest B2 11x13->4x5 C3 (down)", (Spatial){.kind = NEAREST, .B = 2, .H = 11, .W = 13, .C = 3, .Ho = 4, .Wo = 5});
    spatial_grad("upsample_bilinear B2 5x7->11x13 C3", (Spatial){.kind = BILINEAR, .B = 2, .H = 5, .W = 7, .C = 3, .Ho = 11, .Wo = 13});
    spatial_grad("upsample_bilinear B2 11x13->4x5 C3 (down)", (Spatial){.kind = BILINEAR, .B = 2, .H = 11, .W = 13, .C = 3, .Ho = 4, .Wo = 5});
    spatial_grad("upsample_bilinear B1 3x8->10x3 C5 (mixed)", (Spatial){.kind = BILINEAR, .B = 1, .H = 3, .W = 8, .C = 5, .Ho = 10, .Wo = 3});
    // a map large enough that several threads share the rows of one image
    spatial_grad("upsample_bilinear B1 9x11->37x41 C2", (Spatial){.kind = BILINEAR, .B = 1, .H = 9, .W = 11, .C = 2, .Ho = 37, .Wo = 41});
}

// ----------------------------------------------------------------------------
// point sampling

// grid_sample(bilinear, align_corners=False, zeros) exactly as PyTorch unnormalises:
// g = 2c - 1, ix = ((g + 1) W - 1) / 2; taps nw/ne/sw/se weighted by the opposite areas
static float point_reference(const float* map, int H, int W, float cx, float cy) {
    float gx = 2.0f * cx - 1.0f, gy = 2.0f * cy - 1.0f;
    double ix = ((gx + 1.0) * W - 1.0) / 2.0, iy = ((gy + 1.0) * H - 1.0) / 2.0;
    double x0 = floor(ix), y0 = floor(iy), x1 = x0 + 1, y1 = y0 + 1;
    double xs[4] = {x0, x1, x0, x1}, ys[4] = {y0, y0, y1, y1};
    double wt[4] = {(x1 - ix) * (y1 - iy), (ix - x0) * (y1 - iy), (x1 - ix) * (iy - y0), (ix - x0) * (iy - y0)};
    double s = 0.0;
    for (int t = 0; t < 4; t++)
        if (xs[t] >= 0 && xs[t] < W && ys[t] >= 0 && ys[t] < H) s += wt[t] * map[(int)ys[t] * W + (int)xs[t]];
    return (float)s;
}

static void test_point_sample(void) {
    int M = 3, H = 6, W = 7, P = 40;
    float* maps = random_tensor(&rng, (size_t)M * H * W, -1, 1);
    float* coords = random_tensor(&rng, (size_t)M * P * 2, 0, 1);
    // a few points exactly on and just inside / outside the borders, and at pixel centres
    float special[][2] = {{0, 0}, {1, 1}, {0, 1}, {1, 0}, {0.01f, 0.5f}, {0.99f, 0.2f},
                          {0.5f, 0.005f}, {0.3f, 0.995f}, {-0.03f, 0.4f}, {0.6f, 1.04f},
                          {0.5f / 7, 0.5f / 6}, {6.5f / 7, 5.5f / 6}};
    for (int i = 0; i < 12; i++) { coords[2 * i] = special[i][0]; coords[2 * i + 1] = special[i][1]; }
    float* o = mallocCheck((size_t)M * P * sizeof(float));
    float* ref = mallocCheck((size_t)M * P * sizeof(float));
    point_sample_forward_cpu(o, maps, coords, M, H, W, P);
    for (int m = 0; m < M; m++) for (int p = 0; p < P; p++)
        ref[m * P + p] = point_reference(maps + (size_t)m * H * W, H, W, coords[(m * P + p) * 2], coords[(m * P + p) * 2 + 1]);
    check_close("point_sample vs grid_sample reference (incl. borders)", o, ref, (size_t)M * P, 1e-6);
    // hand values on a 2x2 map [[1,2],[3,4]]: the centre (0.5, 0.5) is the mean 2.5; the
    // top-left corner (0,0) sits at pixel (-0.5,-0.5): one tap of weight 1/4 -> 0.25;
    // (0.25, 0.75) is the centre of pixel (x=0, y=1) -> 3
    {
        float map[4] = {1, 2, 3, 4}, c[6] = {0.5f, 0.5f, 0.0f, 0.0f, 0.25f, 0.75f}, v[3];
        point_sample_forward_cpu(v, map, c, 1, 2, 2, 3);
        float want[3] = {2.5f, 0.25f, 3.0f};
        check_close("point_sample 2x2 hand-computed (centre, corner, pixel)", v, want, 3, 1e-6);
    }
    free(maps); free(o); free(ref);
    Spatial t = {.kind = POINT, .M = M, .H = H, .W = W, .P = P, .coords = coords};
    spatial_grad("point_sample M3 6x7 P40 (border points)", t);
    free(coords);
}

// ----------------------------------------------------------------------------
// sine position encoding

// PositionEmbeddingSine(num_pos_feats = C/2, temperature 10000, normalize=True, scale 2 pi)
// step by step as the Python computes it: cumsum of an all-ones mask, divide by the last
// entry + eps, times scale; dim_t = T^(2 floor(k/2) / F); stack(sin(p[0::2]), cos(p[1::2]),
// dim=4).flatten(3) interleaves them; cat(pos_y, pos_x)
static void sine_reference(float* out, int H, int W, int C) {
    int F = C / 2;
    double* y_embed = mallocCheck((size_t)H * sizeof(double));
    double* x_embed = mallocCheck((size_t)W * sizeof(double));
    double acc = 0.0;
    for (int i = 0; i < H; i++) { acc += 1.0; y_embed[i] = acc; }
    acc = 0.0;
    for (int j = 0; j < W; j++) { acc += 1.0; x_embed[j] = acc; }
    double ylast = y_embed[H - 1], xlast = x_embed[W - 1];
    for (int i = 0; i < H; i++) y_embed[i] = y_embed[i] / (ylast + 1e-6) * (2.0 * M_PI);
    for (int j = 0; j < W; j++) x_embed[j] = x_embed[j] / (xlast + 1e-6) * (2.0 * M_PI);
    for (int i = 0; i < H; i++) for (int j = 0; j < W; j++) {
        float* o = out + ((size_t)i * W + j) * C;
        for (int pair = 0; 2 * pair < F; pair++) {
            int k0 = 2 * pair, k1 = 2 * pair + 1;   // dim_t[k0] == dim_t[k1]
            double dt = exp(log(10000.0) * (double)(2 * pair) / F);
            o[k0] = (float)sin(y_embed[i] / dt);
            o[F + k0] = (float)sin(x_embed[j] / dt);
            if (k1 < F) { o[k1] = (float)cos(y_embed[i] / dt); o[F + k1] = (float)cos(x_embed[j] / dt); }
        }
    }
    free(y_embed); free(x_embed);
}

static void test_sine(void) {
    int sizes[][3] = {{3, 5, 8}, {7, 4, 16}, {5, 5, 6}, {2, 9, 32}};
    for (int k = 0; k < 4; k++) {
        int H = sizes[k][0], W = sizes[k][1], C = sizes[k][2];
        float* pe = mallocCheck((size_t)H * W * C * sizeof(float));
        float* ref = mallocCheck((size_t)H * W * C * sizeof(float));
        sine_position_encoding_cpu(pe, H, W, C);
        sine_reference(ref, H, W, C);
        char label[96];
        snprintf(label, sizeof(label), "sine encoding %dx%d C%d vs step-by-step reference", H, W, C);
        check_close(label, pe, ref, (size_t)H * W * C, 1e-6);
        free(pe); free(ref);
    }
    // hand values, H = W = 2, C = 4 (F = 2, dim_t = [1, 1]): pixel (0,0) has y = x = pi
    // (to 1e-6): [sin, cos, sin, cos] = [0, -1, 0, -1]; pixel (1,1) has 2 pi: [0, 1, 0, 1];
    // pixel (0,1): y = pi, x = 2 pi: [0, -1, 0, 1]
    {
        float pe[16];
        sine_position_encoding_cpu(pe, 2, 2, 4);
        float got[12] = {pe[0], pe[1], pe[2], pe[3], pe[12], pe[13], pe[14], pe[15], pe[4], pe[5], pe[6], pe[7]};
        float want[12] = {0, -1, 0, -1, 0, 1, 0, 1, 0, -1, 0, 1};
        check_close("sine encoding 2x2 C4 hand values", got, want, 12, 1e-5);
        // channel 2 at pixel (0,0) of a 1x1 map with C = 8: F = 4, dim_t[2] = 10000^(2/4) = 100,
        // y = 1/(1+1e-6) 2 pi -> sin(2 pi / 100)
        float pe8[8];
        sine_position_encoding_cpu(pe8, 1, 1, 8);
        float g2 = pe8[2], w2 = (float)sin(2.0 * M_PI / (1.0 + 1e-6) / 100.0);
        float g7 = pe8[7], w7 = (float)cos(2.0 * M_PI / (1.0 + 1e-6) / 100.0);
        check_close("sine encoding C8 channel 2 (y, dim_t 100, sin)", &g2, &w2, 1, 1e-6);
        check_close("sine encoding C8 channel 7 (x, dim_t 100, cos)", &g7, &w7, 1, 1e-6);
    }
}

// ----------------------------------------------------------------------------
// losses

enum { L_MSE, L_CE, L_BCE, L_DICE };
typedef struct {
    int kind, N, C, ignore;
    float *pred, *target, *mask, *cw, *losses, *dl;
    int* tg;
    float dloss;   // upstream gradient of the scalar losses (mse, ce)
} LossCase;

static double loss_value(void* ctx) {
    LossCase* t = ctx;
    float l = 0.0f;
    switch (t->kind) {
    case L_MSE: masked_mse_forward_cpu(&l, t->pred, t->target, t->mask, t->N, t->C); return (double)l * t->dloss;
    case L_CE: cross_entropy_forward_cpu(&l, t->pred, t->tg, t->cw, t->N, t->C, t->ignore); return (double)l * t->dloss;
    case L_BCE: sigmoid_bce_forward_cpu(t->losses, t->pred, t->target, t->N, t->C); break;
    case L_DICE: dice_loss_forward_cpu(t->losses, t->pred, t->target, t->N, t->C); break;
    }
    double s = 0.0;
    for (int n = 0; n < t->N; n++) s += (double)t->losses[n] * t->dl[n];
    return s;
}
static void loss_backward(float* d, void* ctx) {
    LossCase* t = ctx;
    switch (t->kind) {
    case L_MSE: masked_mse_backward_cpu(d, t->dloss, t->pred, t->target, t->mask, t->N, t->C); break;
    case L_CE: cross_entropy_backward_cpu(d, t->dloss, t->pred, t->tg, t->cw, t->N, t->C, t->ignore); break;
    case L_BCE: sigmoid_bce_backward_cpu(d, t->dl, t->pred, t->target, t->N, t->C); break;
    case L_DICE: dice_loss_backward_cpu(d, t->dl, t->pred, t->target, t->N, t->C); break;
    }
}
static void loss_grad(const char* name, LossCase* t) {
    size_t n = (size_t)t->N * t->C;
    float* d = callocCheck(n, sizeof(float));
    loss_backward(d, t);
    // float32 forwards: a smaller step keeps the curvature error low, double sums keep noise low
    grad_check(name, t->pred, n, d, loss_value, t, 1e-3f, TOL, MAXC);
    check_accumulates(name, loss_backward, t, d, n);
    free(d);
}

static void test_masked_mse(void) {
    LossCase t = {.kind = L_MSE, .N = 9, .C = 7, .dloss = 0.7f};
    size_t n = (size_t)t.N * t.C;
    t.pred = random_tensor(&rng, n, -1, 1); t.target = random_tensor(&rng, n, -1, 1);
    t.mask = callocCheck(t.N, sizeof(float));
    for (int i = 0; i < t.N; i++) t.mask[i] = (i % 3 == 1) ? 0.0f : 1.0f;   // 6 of 9 masked in
    double num = 0.0, den = 0.0;
    for (int i = 0; i < t.N; i++) {
        double s = 0.0;
        for (int c = 0; c < t.C; c++) { double e = t.pred[i * t.C + c] - t.target[i * t.C + c]; s += e * e; }
        num += t.mask[i] * s / t.C; den += t.mask[i];
    }
    float got, want = (float)(num / den);
    masked_mse_forward_cpu(&got, t.pred, t.target, t.mask, t.N, t.C);
    check_close("masked_mse vs formula", &got, &want, 1, 1e-6);
    // hand: one pixel of 2 channels, error (1, 3) -> (1 + 9) / 2 = 5; unmasked pixel ignored
    {
        float p[4] = {1, 3, 100, 100}, g[4] = {0, 0, 0, 0}, m[2] = {1, 0}, l, w = 5.0f;
        masked_mse_forward_cpu(&l, p, g, m, 2, 2);
        check_close("masked_mse hand-computed", &l, &w, 1, 0.0);
    }
    loss_grad("masked_mse (0/1 mask, dloss 0.7)", &t);
    // unmasked rows get exactly zero gradient
    float* d = callocCheck(n, sizeof(float));
    masked_mse_backward_cpu(d, 1.0f, t.pred, t.target, t.mask, t.N, t.C);
    int zero = 1;
    for (int i = 0; i < t.N; i++) if (!t.mask[i]) for (int c = 0; c < t.C; c++) zero &= d[i * t.C + c] == 0.0f;
    CHECK(zero, "masked_mse: rows with mask 0 got a gradient");
    free(d); free(t.pred); free(t.target); free(t.mask);
}

static void test_cross_entropy(void) {
    LossCase t = {.kind = L_CE, .N = 11, .C = 7, .ignore = 255, .dloss = 1.3f};
    size_t n = (size_t)t.N * t.C;
    t.pred = random_tensor(&rng, n, -3, 3);
    t.cw = random_tensor(&rng, t.C, 0.2f, 2.0f);
    t.tg = callocCheck(t.N, sizeof(int));
    for (int i = 0; i < t.N; i++) t.tg[i] = (i % 4 == 2) ? 255 : rng_int(&rng, t.C);
    // independent: softmax by plain exponentials in double
    double num = 0.0, den = 0.0;
    for (int i = 0; i < t.N; i++) {
        if (t.tg[i] == 255) continue;
        double z = 0.0;
        for (int c = 0; c < t.C; c++) z += exp((double)t.pred[i * t.C + c]);
        double w = t.cw[t.tg[i]];
        num += -w * log(exp((double)t.pred[i * t.C + t.tg[i]]) / z);
        den += w;
    }
    float got, want = (float)(num / den);
    cross_entropy_forward_cpu(&got, t.pred, t.tg, t.cw, t.N, t.C, 255);
    check_close("cross_entropy (weights, ignore) vs formula", &got, &want, 1, 1e-6);
    // hand: two classes, logits (0, 0), target 1 -> log 2; a second row ignored (-1)
    {
        float lg[4] = {0, 0, 5, -5}, l, w = (float)log(2.0);
        int tg[2] = {1, -1};
        cross_entropy_forward_cpu(&l, lg, tg, NULL, 2, 2, -1);
        check_close("cross_entropy hand-computed log 2 (ignore_index -1)", &l, &w, 1, 1e-7);
        // huge logits stay finite: (1000, 0) target 1 -> 1000
        float big[2] = {1000, 0}, lb, wb = 1000.0f;
        int tb[1] = {1};
        cross_entropy_forward_cpu(&lb, big, tb, NULL, 1, 2, -1);
        check_close("cross_entropy logits 1000: stable", &lb, &wb, 1, 1e-6);
    }
    loss_grad("cross_entropy (class weights, ignore rows, dloss 1.3)", &t);
    // unweighted too
    float* cw = t.cw; t.cw = NULL;
    loss_grad("cross_entropy (no weights)", &t);
    t.cw = cw;
    // ignored rows get exactly zero gradient; all rows ignored -> loss 0, no gradient, no NaN
    float* d = callocCheck(n, sizeof(float));
    cross_entropy_backward_cpu(d, 1.0f, t.pred, t.tg, t.cw, t.N, t.C, 255);
    int zero = 1;
    for (int i = 0; i < t.N; i++) if (t.tg[i] == 255) for (int c = 0; c < t.C; c++) zero &= d[i * t.C + c] == 0.0f;
    CHECK(zero, "cross_entropy: ignored rows got a gradient");
    for (int i = 0; i < t.N; i++) t.tg[i] = 255;
    float l0 = -1.0f;
    memset(d, 0, n * sizeof(float));
    cross_entropy_forward_cpu(&l0, t.pred, t.tg, t.cw, t.N, t.C, 255);
    cross_entropy_backward_cpu(d, 1.0f, t.pred, t.tg, t.cw, t.N, t.C, 255);
    int clean = l0 == 0.0f;
    for (size_t i = 0; i < n; i++) clean &= d[i] == 0.0f;
    CHECK(clean, "cross_entropy with every row ignored: loss %g (want 0) or a non-zero gradient", l0);
    free(d); free(t.pred); free(t.cw); free(t.tg);
}

static void test_bce_dice(void) {
    int M = 5, P = 13;
    size_t n = (size_t)M * P;
    LossCase t = {.N = M, .C = P};
    t.pred = random_tensor(&rng, n, -4, 4);
    t.target = random_tensor(&rng, n, 0, 1);
    for (size_t i = 0; i < n; i++) t.target[i] = t.target[i] > 0.5f ? 1.0f : 0.0f;
    t.losses = callocCheck(M, sizeof(float));
    t.dl = random_tensor(&rng, M, 0.3f, 1.7f);
    // independent formulas in double
    float* want_bce = mallocCheck(M * sizeof(float));
    float* want_dice = mallocCheck(M * sizeof(float));
    for (int m = 0; m < M; m++) {
        double b = 0.0, st = 0.0, ss = 0.0, stt = 0.0;
        for (int p = 0; p < P; p++) {
            double x = t.pred[m * P + p], y = t.target[m * P + p], s = 1.0 / (1.0 + exp(-x));
            b += -(y * log(s) + (1.0 - y) * log(1.0 - s));
            st += s * y; ss += s; stt += y;
        }
        want_bce[m] = (float)(b / P);
        want_dice[m] = (float)(1.0 - (2.0 * st + 1.0) / (ss + stt + 1.0));
    }
    sigmoid_bce_forward_cpu(t.losses, t.pred, t.target, M, P);
    check_close("sigmoid_bce vs -[t log s + (1-t) log(1-s)]", t.losses, want_bce, M, 1e-6);
    dice_loss_forward_cpu(t.losses, t.pred, t.target, M, P);
    check_close("dice vs 1 - (2 sum st + 1)/(sum s + sum t + 1)", t.losses, want_dice, M, 1e-6);
    // BCE stays finite for huge logits: x = 100, t = 0 costs 100; x = -100, t = 1 costs 100;
    // x = 100, t = 1 costs ~0 -> mean over 4 points (with x = 0, t = 1: log 2)
    {
        float x[4] = {100, -100, 100, 0}, y[4] = {0, 1, 1, 1}, l, w = (float)((200.0 + log(2.0)) / 4);
        sigmoid_bce_forward_cpu(&l, x, y, 1, 4);
        check_close("sigmoid_bce logits +-100: stable", &l, &w, 1, 1e-6);
        // dice by hand: logits 0 -> s = 1/2 each, targets (1, 0): (2 * 0.5 + 1) / (1 + 1 + 1) -> 1/3
        float x2[2] = {0, 0}, y2[2] = {1, 0}, d, wd = 1.0f / 3.0f;
        dice_loss_forward_cpu(&d, x2, y2, 1, 2);
        check_close("dice hand-computed 1/3", &d, &wd, 1, 1e-6);
    }
    t.kind = L_BCE; loss_grad("sigmoid_bce (targets 0/1, per-row dlosses)", &t);
    t.kind = L_DICE; loss_grad("dice (targets 0/1, per-row dlosses)", &t);
    free(t.pred); free(t.target); free(t.losses); free(t.dl); free(want_bce); free(want_dice);
}

// ----------------------------------------------------------------------------
// AdamW, sum of squares

static void test_adamw(void) {
    // step 1 by hand: p = 0.5, g = 0.2, lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01:
    //   m = 0.02, v = 4e-5, mhat = 0.2, vhat = 0.04, mhat / (sqrt vhat + eps) = 0.2 / 0.20000001
    //   p = 0.5 - 0.1 (0.99999995 + 0.005) = 0.3995000005
    // second element: g = 0, p = 2: the update is pure decoupled decay: 2 - 0.1 * 0.01 * 2 = 1.998
    {
        float p[2] = {0.5f, 2.0f}, g[2] = {0.2f, 0.0f}, m[2] = {0, 0}, v[2] = {0, 0};
        adamw_update_cpu(p, g, m, v, 2, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 1);
        // v: beta2 arrives as the float 0.999f, so 1 - beta2 = 0.00099998713 (not 0.001):
        // v = 3.99995e-5, 1.3e-5 relative below PyTorch's double-precision 1 - 0.999
        float want_p[2] = {0.3995000005f, 1.998f}, want_m[2] = {0.02f, 0.0f};
        float want_v[2] = {(float)((1.0 - (double)0.999f) * 0.2f * 0.2f), 0.0f};
        check_close("adamw step 1 params (hand-computed)", p, want_p, 2, 1e-6);
        check_close("adamw step 1 first moment", m, want_m, 2, 1e-6);
        check_close("adamw step 1 second moment", v, want_v, 2, 1e-6);
        // step 2, g = -0.1 on the first element: m = 0.9 * 0.02 - 0.01 = 0.008, v = 0.999 * 4e-5
        // + 0.001 * 0.01 = 4.996e-5; mhat = 0.008 / 0.19 = 0.042105263, vhat = 4.996e-5 / 0.001999
        // = 0.024992496, sqrt = 0.15809 -> ratio 0.26633; p = 0.3995 - 0.1 (0.26633 + 0.003995)
        double mh = 0.008 / 0.19, vh = 4.996e-5 / (1.0 - 0.999 * 0.999);
        float want2 = (float)(0.3995000005 - 0.1 * (mh / (sqrt(vh) + 1e-8) + 0.01 * 0.3995000005));
        float g2[2] = {-0.1f, 0.0f};
        adamw_update_cpu(p, g2, m, v, 2, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 2);
        check_close("adamw step 2 (bias correction t=2)", p, &want2, 1, 1e-6);
    }
    // many elements (the OpenMP path) against the scalar formula
    {
        size_t N = 70001;
        float *p = random_tensor(&rng, N, -1, 1), *g = random_tensor(&rng, N, -1, 1);
        float *m = random_tensor(&rng, N, -0.1f, 0.1f), *v = random_tensor(&rng, N, 0, 0.01f);
        float* want = mallocCheck(N * sizeof(float));
        int t = 7; double b1 = 0.9, b2 = 0.95, lr = 3e-4, eps = 1e-6, wd = 0.05;
        for (size_t i = 0; i < N; i++) {
            double mi = b1 * (double)m[i] + (1 - b1) * g[i], vi = b2 * (double)v[i] + (1 - b2) * (double)g[i] * g[i];
            double mh = mi / (1 - pow(b1, t)), vh = vi / (1 - pow(b2, t));
            want[i] = (float)(p[i] - lr * (mh / (sqrt(vh) + eps) + wd * p[i]));
        }
        adamw_update_cpu(p, g, m, v, N, (float)lr, (float)b1, (float)b2, (float)eps, (float)wd, t);
        check_close("adamw 70001 elements vs double formula", p, want, N, 1e-6);
        free(p); free(g); free(m); free(v); free(want);
    }
}

static void test_sum_squares(void) {
    float x[4] = {1, 2, 3, -4}, s, w = 30.0f;
    sum_squares_cpu(&s, x, 4);
    check_close("sum_squares hand-computed 30", &s, &w, 1, 0.0);
    size_t N = 100003;
    float* big = random_tensor(&rng, N, -1, 1);
    double ref = 0.0;
    for (size_t i = 0; i < N; i++) ref += (double)big[i] * big[i];
    float want = (float)ref;
    sum_squares_cpu(&s, big, N);
    check_close("sum_squares 100003 elements vs double", &s, &want, 1, 1e-7);
    free(big);
}

int main(void) {
    rng_seed(&rng, 20261122);
    test_windows();
    test_swin_fusions();
    test_patch_merge();
    test_resize();
    test_point_sample();
    test_sine();
    test_masked_mse();
    test_cross_entropy();
    test_bce_dice();
    test_adamw();
    test_sum_squares();
    return test_summary("test_ops_b");
}
