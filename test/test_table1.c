// test/test_table1.c: the other test-time techniques of the paper's Table 1 (mae.c, last
// section). Ops: semantic_scores + class_argmax give semantic inference's ids exactly, the
// confidence threshold, flip_width, majority_vote with ties, layernorm_adapt_forward against
// its formula, Tent's entropy against a direct computation and finite differences. Model:
// Tent's gradient of f and h against finite differences, a Tent step changes the norm
// parameters of f and h and nothing else; pseudo-labels (threshold 0 = the prediction, 1 =
// nothing), the self-training loss's gradient against finite differences, a self-training
// step changes f and h and not g; a main-task-only step leaves g alone and lowers its loss;
// the class-balance rule on constructed counts; the Predictor: smoothing 1 and TTA 1 give
// model_predict's ids exactly, TTA 2 too (a tie keeps view 0), smoothing over a repeated
// frame changes nothing, LN Adapt changes no parameter and with a ring of one frame
// predicts as the plain model.
#include "test.h"

static size_t n_all(const Model* m) { return model_num_params(m, 0) + model_num_params(m, 1) + model_num_params(m, 2); }

static Model* tiny_model(int K, int B, int H, int W, uint64_t seed) {
    ModelConfig cfg = model_config_tiny(K);
    Model* m = model_create(&cfg, B, H, W);
    model_init_random(m, seed);
    Rng r; rng_seed(&r, seed + 1);
    float* P = model_params_device(m);   // CPU build of the tests: host memory
    for (size_t i = 0; i < n_all(m); i++) P[i] += 0.05f * (rng_uniform(&r) - 0.5f);
    model_snapshot_ttt(m);
    return m;
}

// ---- ops ----

static void test_scores_and_argmax(Rng* rng) {
    int cases[3][8] = {{5, 4, 8, 10, 30, 37, 30, 37}, {7, 6, 9, 13, 35, 50, 35, 50}, {6, 5, 8, 12, 31, 45, 17, 70}};
    for (int c = 0; c < 3; c++) {
        int Q = cases[c][0], K = cases[c][1], H4 = cases[c][2], W4 = cases[c][3], H = cases[c][4], W = cases[c][5];
        int Ho = cases[c][6], Wo = cases[c][7];
        float* cls = random_tensor(rng, (size_t)Q * (K + 1), -3, 3);
        float* msk = random_tensor(rng, (size_t)Q * H4 * W4, -4, 4);
        float* work = mallocCheck(m2f_semantic_work_size(Q, K, H4, W4) * sizeof(float));
        unsigned char* ref = mallocCheck((size_t)Ho * Wo);
        unsigned char* got = mallocCheck((size_t)Ho * Wo);
        float* sc = mallocCheck((size_t)Ho * Wo * K * sizeof(float));
        m2f_semantic_inference(ref, cls, msk, Q, K, H4, W4, H, W, Ho, Wo, work);
        semantic_scores_cpu(sc, cls, msk, Q, K, H4, W4, H, W, Ho, Wo, work);
        class_argmax_cpu(got, sc, Ho * Wo, K, 0.0f);
        CHECK(memcmp(got, ref, (size_t)Ho * Wo) == 0, "argmax of semantic_scores differs from semantic inference (%dx%d -> %dx%d)", H, W, Ho, Wo);
        // the scores themselves: seg at a 1/4 pixel centre, by hand, matches the x4 map at (4y+1.5, 4x+1.5)
        // is not exact; instead check one output pixel against a direct evaluation of the formula
        int y = Ho / 2, x = Wo / 3, ya, yb, xa, xb; float ly, lx;
        bilinear_source(y, H, Ho, &ya, &yb, &ly);
        bilinear_source(x, W, Wo, &xa, &xb, &lx);
        double worst = 0.0;
        for (int k = 0; k < K; k++) {
            double v = 0.0;
            int yy[2] = {ya, yb}, xx[2] = {xa, xb};
            double wy[2] = {1 - ly, ly}, wx[2] = {1 - lx, lx};
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++) {   // the x4 map at (yy[i], xx[j]): bilinear of the 1/4 maps
                    int y0, y1, x0, x1; float l_y, l_x;
                    bilinear_source(yy[i], H4, 4 * H4, &y0, &y1, &l_y);
                    bilinear_source(xx[j], W4, 4 * W4, &x0, &x1, &l_x);
                    int ys[2] = {y0, y1}, xs[2] = {x0, x1};
                    double vy[2] = {1 - l_y, l_y}, vx[2] = {1 - l_x, l_x};
                    for (int a = 0; a < 2; a++)
                        for (int b = 0; b < 2; b++) {
                            double seg = 0.0;
                            for (int q = 0; q < Q; q++) {
                                double mx = -1e30, z = 0.0;
                                for (int t = 0; t <= K; t++) mx = fmax(mx, cls[q * (K + 1) + t]);
                                for (int t = 0; t <= K; t++) z += exp(cls[q * (K + 1) + t] - mx);
                                double pk = exp(cls[q * (K + 1) + k] - mx) / z;
                                seg += pk / (1.0 + exp(-msk[((size_t)q * H4 + ys[a]) * W4 + xs[b]]));
                            }
                            v += wy[i] * wx[j] * vy[a] * vx[b] * seg;
                        }
                }
            worst = fmax(worst, fabs(v - sc[((size_t)y * Wo + x) * K + k]) / (fabs(v) + 1e-6));
        }
        CHECK(worst < 1e-5, "semantic_scores at (%d, %d) off the formula by %g", y, x, worst);
        free(cls); free(msk); free(work); free(ref); free(got); free(sc);
    }
    group_line("semantic_scores + class_argmax = semantic inference's ids (3 sizes, one with a resize)");

    // confidence: row 0 max 0.6 of 1 -> kept at 0.5, ignored at 0.6 (not above); ties -> first
    float s[4 * 3] = {0.1f, 0.6f, 0.3f,  0.2f, 0.2f, 0.2f,  0.0f, 0.0f, 0.0f,  0.9f, 0.05f, 0.05f};
    unsigned char id[4];
    class_argmax_cpu(id, s, 4, 3, 0.0f);
    CHECK(id[0] == 1 && id[1] == 0 && id[2] == 0 && id[3] == 0, "argmax %d %d %d %d", id[0], id[1], id[2], id[3]);
    class_argmax_cpu(id, s, 4, 3, 0.5f);
    CHECK(id[0] == 1 && id[1] == 255 && id[2] == 255 && id[3] == 0, "threshold 0.5: %d %d %d %d", id[0], id[1], id[2], id[3]);
    class_argmax_cpu(id, s, 4, 3, 0.6f);
    CHECK(id[0] == 255 && id[3] == 0, "threshold 0.6: %d %d", id[0], id[3]);
}

static void test_flip_vote(Rng* rng) {
    int B = 2, H = 3, W = 5, C = 4;
    size_t n = (size_t)B * H * W * C;
    float* x = random_tensor(rng, n, -1, 1), *y = mallocCheck(n * 4), *z = mallocCheck(n * 4);
    flip_width_cpu(y, x, B, H, W, C);
    flip_width_cpu(z, y, B, H, W, C);
    CHECK(memcmp(z, x, n * 4) == 0, "flipping twice is not the identity");
    CHECK(y[((1 * H + 2) * W + 0) * C + 3] == x[((1 * H + 2) * W + 4) * C + 3], "flip_width moves the wrong pixel");
    free(x); free(y); free(z);
    // 5 views of 6 pixels: clear majority, 2-2-1 tie (earliest of the tied), all different (view 0),
    // two-way tie where view 0 is not among the tied, 255 counts like any id, unanimity
    unsigned char votes[5 * 6] = {
        1, 1, 3, 7, 255, 2,
        2, 4, 4, 5, 255, 2,
        2, 1, 5, 5, 0,   2,
        2, 4, 6, 6, 0,   2,
        0, 9, 8, 6, 0,   2};
    unsigned char want[6] = {2, 1, 3, 5, 0, 2}, got[6];
    majority_vote_cpu(got, votes, 5, 6);
    CHECK(memcmp(got, want, 6) == 0, "majority vote %d %d %d %d %d %d", got[0], got[1], got[2], got[3], got[4], got[5]);
    majority_vote_cpu(got, votes, 1, 6);
    CHECK(memcmp(got, votes, 6) == 0, "a vote of one view is that view");
    group_line("flip_width, majority_vote (ties keep the earliest view's id)");
}

static void test_ln_adapt_op(Rng* rng) {
    int N = 7, C = 19, cap = 3;
    float prior = 2.5f;
    float* x = random_tensor(rng, (size_t)N * C, -2, 3);
    float* w = random_tensor(rng, C, 0.5f, 1.5f), *b = random_tensor(rng, C, -0.5f, 0.5f);
    float* hm = random_tensor(rng, (size_t)cap * N, -1, 1), *hv = random_tensor(rng, (size_t)cap * N, 0.1f, 2);
    float* out = mallocCheck((size_t)N * C * 4), *mean = mallocCheck(N * 4), *rstd = mallocCheck(N * 4);
    int state[3] = {1, 3, 1};   // this frame is entry 1 of 3
    layernorm_adapt_forward_cpu(out, mean, rstd, hm, hv, state, x, w, b, N, C, cap, prior);
    double worst = 0.0;
    int recorded = 1;
    for (int i = 0; i < N; i++) {
        double m = 0, v = 0;
        for (int c = 0; c < C; c++) m += x[i * C + c];
        m /= C;
        for (int c = 0; c < C; c++) v += (x[i * C + c] - m) * (x[i * C + c] - m);
        v /= C;
        recorded &= fabs(hm[N + i] - m) < 1e-6 && fabs(hv[N + i] - v) < 1e-5;
        double mm = (prior * m + hm[i] + hm[N + i] + hm[2 * N + i]) / (prior + 3);
        double vv = (prior * v + hv[i] + hv[N + i] + hv[2 * N + i]) / (prior + 3);
        for (int c = 0; c < C; c++) {
            double want = (x[i * C + c] - mm) / sqrt(vv + LN_EPS) * w[c] + b[c];
            worst = fmax(worst, fabs(want - out[i * C + c]));
        }
    }
    CHECK(recorded, "the frame's statistics were not written to its ring entry");
    CHECK(worst < 1e-5, "layernorm_adapt_forward off its formula by %g", worst);
    // reading without recording leaves the ring alone; one frame in the ring = LayerNorm up to rounding
    float* hm0 = mallocCheck((size_t)cap * N * 4);
    memcpy(hm0, hm, (size_t)cap * N * 4);
    int st2[3] = {0, 2, 0};
    layernorm_adapt_forward_cpu(out, mean, rstd, hm, hv, st2, x, w, b, N, C, cap, prior);
    CHECK(memcmp(hm0, hm, (size_t)cap * N * 4) == 0, "a reading call changed the ring");
    int st3[3] = {2, 1, 1};
    float* ref = mallocCheck((size_t)N * C * 4), *rm = mallocCheck(N * 4), *rr = mallocCheck(N * 4);
    float* h1 = mallocCheck((size_t)cap * N * 4), *v1 = mallocCheck((size_t)cap * N * 4);
    memcpy(h1, hm, (size_t)cap * N * 4); memcpy(v1, hv, (size_t)cap * N * 4);
    // entry 0 must hold this frame for n = 1: record at entry 0
    st3[0] = 0;
    layernorm_adapt_forward_cpu(out, mean, rstd, h1, v1, st3, x, w, b, N, C, cap, prior);
    layernorm_forward_cpu(ref, rm, rr, x, w, b, N, C);
    check_close("LN Adapt with one frame = LayerNorm", out, ref, (size_t)N * C, 1e-5);
    free(x); free(w); free(b); free(hm); free(hv); free(out); free(mean); free(rstd); free(hm0);
    free(ref); free(rm); free(rr); free(h1); free(v1);
}

typedef struct { float *cls, *msk; int B, Q, K, H4, W4, Hv, Wv; float* work; } EntCase;
// the entropy loss straight from its definition, in double (finite differences need the precision)
static double ent_direct(void* ctx) {
    EntCase* t = ctx;
    double sum = 0.0;
    int P = t->H4 * t->W4;
    for (int b = 0; b < t->B; b++)
        for (int y = 0; y < t->Hv; y++)
            for (int x = 0; x < t->Wv; x++) {
                double seg[16] = {0}, mx = -1e30, z = 0, H = 0;
                for (int q = 0; q < t->Q; q++) {
                    const float* c = t->cls + ((size_t)b * t->Q + q) * (t->K + 1);
                    double cm = -1e30, cz = 0;
                    for (int k = 0; k <= t->K; k++) cm = fmax(cm, c[k]);
                    for (int k = 0; k <= t->K; k++) cz += exp(c[k] - cm);
                    double s = 1.0 / (1.0 + exp(-(double)t->msk[((size_t)b * t->Q + q) * P + y * t->W4 + x]));
                    for (int k = 0; k < t->K; k++) seg[k] += exp(c[k] - cm) / cz * s;
                }
                for (int k = 0; k < t->K; k++) mx = fmax(mx, seg[k]);
                for (int k = 0; k < t->K; k++) z += exp(seg[k] - mx);
                for (int k = 0; k < t->K; k++) { double p = exp(seg[k] - mx) / z; H -= p * log(p); }
                sum += H;
            }
    return sum / (t->B * t->Hv * t->Wv);
}

static void test_entropy_op(Rng* rng) {
    EntCase t = {NULL, NULL, 2, 5, 4, 6, 7, 5, 6, NULL};
    size_t nc = (size_t)t.B * t.Q * (t.K + 1), nm = (size_t)t.B * t.Q * t.H4 * t.W4;
    int P = t.H4 * t.W4;
    t.cls = random_tensor(rng, nc, -2, 2);
    t.msk = random_tensor(rng, nm, -3, 3);
    t.work = mallocCheck(semantic_entropy_work_size(t.B, t.Q, t.K, t.H4, t.W4) * sizeof(float));
    float got;
    semantic_entropy_forward_cpu(&got, t.cls, t.msk, t.B, t.Q, t.K, t.H4, t.W4, t.Hv, t.Wv, t.work);
    double want = ent_direct(&t);
    CHECK(fabs(got - want) < 1e-6 * want, "entropy %.9g, direct %.9g", got, want);
    // backward: increments on pre-filled buffers against finite differences (dloss 1)
    float* dc = random_tensor(rng, nc, -1, 1), *dm = random_tensor(rng, nm, -1, 1);
    float* dc0 = mallocCheck(nc * 4), *dm0 = mallocCheck(nm * 4);
    memcpy(dc0, dc, nc * 4); memcpy(dm0, dm, nm * 4);
    semantic_entropy_backward_cpu(dc, dm, 1.0f, t.cls, t.msk, t.B, t.Q, t.K, t.H4, t.W4, t.Hv, t.Wv, t.work);
    for (size_t i = 0; i < nc; i++) dc[i] -= dc0[i];
    for (size_t i = 0; i < nm; i++) dm[i] -= dm0[i];
    grad_check("semantic entropy d class_logits", t.cls, nc, dc, ent_direct, &t, 1e-3f, 1e-3, 200);
    grad_check("semantic entropy d mask_logits", t.msk, nm, dm, ent_direct, &t, 1e-3f, 1e-3, 200);
    // no gradient on the padding columns x >= Wv, nor on the no-object logit
    double pad = 0.0, noobj = 0.0;
    for (int bq = 0; bq < t.B * t.Q; bq++) {
        for (int y = 0; y < t.H4; y++)
            for (int x = t.Wv; x < t.W4; x++) pad += fabs(dm[(size_t)bq * P + y * t.W4 + x]);
        noobj += fabs(dc[(size_t)bq * (t.K + 1) + t.K]);
    }
    CHECK(pad == 0.0, "entropy gradient on the padding: %g", pad);
    CHECK(noobj > 0.0, "the no-object logit gets no gradient through the softmax");   // it moves the others' share
    free(t.cls); free(t.msk); free(t.work); free(dc); free(dm); free(dc0); free(dm0);
}

// ---- model: Tent ----

typedef struct { Model* m; float* frames; int B; uint64_t seed; const unsigned char* labels; float ratio; } ModelCase;
static double tent_loss_fn(void* ctx) { ModelCase* t = ctx; Rng r; rng_seed(&r, t->seed); return model_tent_loss(t->m, t->frames, t->B, &r); }
static double st_loss_fn(void* ctx) {
    ModelCase* t = ctx; Rng r; rng_seed(&r, t->seed);
    return model_self_train_loss(t->m, t->frames, t->labels, t->B, t->ratio, &r);
}

// directional derivative of loss_fn along random directions of f and of h against the gradient
static void directional_checks(const char* what, ModelCase* t, loss_fn fn, float eps, Rng* rng) {
    Model* m = t->m;
    size_t nf = model_num_params(m, 0), nh = model_num_params(m, 1);
    float* G = model_grads_host(m);
    float* P = model_params_device(m);
    const char* names[2] = {"f", "h"};
    size_t offs[2] = {0, nf}, cnts[2] = {nf, nh};
    for (int part = 0; part < 2; part++) {
        size_t off = offs[part], cnt = cnts[part];
        // direction: a random unit vector plus the gradient's own direction, so that the
        // derivative stands well above the float noise of the loss whatever the draw
        float* d = random_tensor(rng, cnt, -1, 1);
        double rn = 0, gn = 0;
        for (size_t i = 0; i < cnt; i++) { rn += (double)d[i] * d[i]; gn += (double)G[off + i] * G[off + i]; }
        rn = sqrt(rn); gn = sqrt(gn) + 1e-30;
        for (size_t i = 0; i < cnt; i++) d[i] = (float)(d[i] / rn + G[off + i] / gn);
        double ana = 0;
        for (size_t i = 0; i < cnt; i++) ana += (double)G[off + i] * d[i];
        float* saved = mallocCheck(cnt * sizeof(float));
        memcpy(saved, P + off, cnt * sizeof(float));
        for (size_t i = 0; i < cnt; i++) P[off + i] = saved[i] + eps * d[i];
        double lp = fn(t);
        for (size_t i = 0; i < cnt; i++) P[off + i] = saved[i] - eps * d[i];
        double lm = fn(t);
        memcpy(P + off, saved, cnt * sizeof(float));
        double fd = (lp - lm) / (2 * eps), err = fabs(fd - ana) / (fabs(ana) + 1e-12);
        int ok = err < 1e-2;
        printf("%-4s grad %s along a random direction of %s: ana %.5e fd %.5e rel err %.2e\n", ok ? "ok" : "FAIL",
               what, names[part], ana, fd, err);
        if (ok) tests_passed++; else tests_failed++;
        free(d); free(saved);
    }
    free(G);
}

static void test_tent(Rng* rng) {
    int K = 4, B = 2, H = 40, W = 36;
    Model* m = tiny_model(K, B, H, W, 31);
    ModelCase t = {m, random_tensor(rng, (size_t)B * H * W * 3, 0, 1), B, 7, NULL, 0};
    Rng r; rng_seed(&r, t.seed);
    float loss = model_tent_forward_backward(m, t.frames, B, &r);
    rng_seed(&r, t.seed);
    float again = model_tent_loss(m, t.frames, B, &r);
    CHECK(isfinite(loss) && loss > 0 && loss <= logf((float)K) + 1e-5f, "Tent loss %g (log K = %g)", loss, logf((float)K));
    CHECK(again == loss, "forward-only Tent loss %.9g differs from forward-backward %.9g", again, loss);
    float* G = model_grads_host(m);
    size_t nf = model_num_params(m, 0), nh = model_num_params(m, 1), n = n_all(m);
    double g_g = 0.0;
    for (size_t i = nf + nh; i < n; i++) g_g += fabs(G[i]);
    CHECK(g_g == 0.0, "Tent's gradient reaches g (%g)", g_g);
    free(G);
    model_freeze_main_masks(m, B, 1);
    directional_checks("Tent entropy", &t, tent_loss_fn, 5e-5f, rng);
    model_freeze_main_masks(m, B, 0);

    // a step: only the norm parameters of f and h move, and some of them in each
    unsigned char* mask = model_norm_param_mask(m);
    size_t n_norm_f = 0, n_norm_h = 0;
    for (size_t i = 0; i < n; i++) { n_norm_f += mask[i] && i < nf; n_norm_h += mask[i] && i >= nf && i < nf + nh; }
    CHECK(n_norm_f > 0 && n_norm_h > 0 && n_norm_f < nf / 4 && n_norm_h < nh / 4, "norm parameters: %zu of f, %zu of h",
          n_norm_f, n_norm_h);
    float* before = model_params_host(m);
    OptConfig opt = opt_config_ttt();
    opt.lr = 1e-2f;
    float first = 0;
    for (int s = 0; s < 4; s++) {
        rng_seed(&r, t.seed);
        float l = model_tent_step(m, t.frames, B, &opt, &r);
        if (s == 0) first = l;
    }
    float* after = model_params_host(m);
    size_t moved_outside = 0, moved_f = 0, moved_h = 0;
    for (size_t i = 0; i < n; i++) {
        if (after[i] == before[i]) continue;
        if (!mask[i]) moved_outside++;
        else if (i < nf) moved_f++;
        else moved_h++;
    }
    printf("Tent steps moved %zu of %zu norm parameters of f, %zu of %zu of h, %zu outside the norms\n",
           moved_f, n_norm_f, moved_h, n_norm_h, moved_outside);
    CHECK(moved_outside == 0, "Tent changed %zu parameters outside the norms", moved_outside);
    CHECK(moved_f > n_norm_f / 2 && moved_h > n_norm_h / 2, "Tent moved too few norm parameters (%zu f, %zu h)", moved_f, moved_h);
    rng_seed(&r, t.seed);
    float last = model_tent_loss(m, t.frames, B, &r);
    CHECK(last < first, "4 Tent steps did not lower the entropy: %g -> %g", first, last);
    group_line("Tent: entropy %.5f -> %.5f after 4 steps on the same frames", first, last);
    // a batch above the planned one runs in chunks: the same loss up to rounding
    Model* m1 = model_create(model_config(m), 1, H, W);
    model_copy_params(m1, m);
    rng_seed(&r, 3);
    float l2 = model_tent_loss(m, t.frames, B, &r);
    rng_seed(&r, 3);
    float l1 = model_tent_loss(m1, t.frames, B, &r);
    CHECK(fabsf(l1 - l2) <= 1e-6f * l2, "Tent loss in chunks of 1: %.9g, whole batch: %.9g", l1, l2);
    model_free(m1);
    free(mask); free(before); free(after); free(t.frames);
    model_free(m);
}

// ---- model: Self-Train ----

static void test_self_train(Rng* rng) {
    int K = 4, B = 2, H = 40, W = 36;
    Model* m = tiny_model(K, B, H, W, 41);
    size_t HW = (size_t)H * W, n = n_all(m), nf = model_num_params(m, 0), nh = model_num_params(m, 1);
    float* frames = random_tensor(rng, (size_t)B * HW * 3, 0, 1);
    unsigned char* lab = mallocCheck(B * HW), *pred = mallocCheck(HW);
    model_pseudo_labels(m, frames, B, 0.0f, lab);
    int same = 1;
    for (int b = 0; b < B; b++) { model_predict(m, frames + b * HW * 3, pred); same &= memcmp(pred, lab + b * HW, HW) == 0; }
    CHECK(same, "pseudo-labels at threshold 0 differ from the prediction");
    model_pseudo_labels(m, frames, B, 1.0f, lab);
    size_t kept = 0;
    for (size_t i = 0; i < B * HW; i++) kept += lab[i] != 255;
    CHECK(kept == 0, "threshold 1 kept %zu pseudo-labels (confidence is at most 1)", kept);
    // the loss against fixed labels: a blocky map with an ignored band
    for (int b = 0; b < B; b++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                lab[b * HW + y * W + x] = y % 13 == 5 ? 255 : (unsigned char)((y / 10 + x / 12 + b) % K);
    ModelCase t = {m, frames, B, 11, lab, 0.8f};
    Rng r; rng_seed(&r, t.seed);
    float loss = model_self_train_forward_backward(m, frames, lab, B, t.ratio, &r);
    rng_seed(&r, t.seed);
    float again = model_self_train_loss(m, frames, lab, B, t.ratio, &r);
    CHECK(isfinite(loss) && loss > 0 && again == loss, "self-training loss %.9g, forward only %.9g", loss, again);
    rng_seed(&r, 12);
    float other_masks = model_self_train_loss(m, frames, lab, B, t.ratio, &r);
    rng_seed(&r, t.seed);
    float unmasked = model_self_train_loss(m, frames, lab, B, 0.0f, &r);
    CHECK(other_masks != loss && unmasked != loss, "the loss does not depend on the masks (%g %g %g)", loss, other_masks, unmasked);
    float* G = model_grads_host(m);
    double g_g = 0.0;
    for (size_t i = nf + nh; i < n; i++) g_g += fabs(G[i]);
    CHECK(g_g == 0.0, "self-training gradient reaches g (%g)", g_g);
    free(G);
    rng_seed(&r, t.seed);   // the gradient again: the masks to hold are those of this forward
    model_self_train_forward_backward(m, frames, lab, B, t.ratio, &r);
    model_freeze_main_masks(m, B, 1);
    directional_checks("self-training loss (80% masked)", &t, st_loss_fn, 2e-5f, rng);
    model_freeze_main_masks(m, B, 0);
    // a step from the model's own pseudo-labels moves f and h, not g
    uint64_t hf = model_param_hash(m, 0), hh = model_param_hash(m, 1), hg = model_param_hash(m, 2);
    OptConfig opt = opt_config_ttt();
    float frac = -1;
    rng_seed(&r, 5);
    float l = model_self_train_step(m, frames, B, &opt, 0.0f, 0.8f, &r, &frac);
    CHECK(isfinite(l) && frac == 1.0f, "self-training step loss %g, kept %g", l, frac);
    CHECK(model_param_hash(m, 0) != hf && model_param_hash(m, 1) != hh && model_param_hash(m, 2) == hg,
          "a self-training step must move f and h and leave g");
    // nothing confident: no step at all
    hf = model_param_hash(m, 0);
    rng_seed(&r, 5);
    l = model_self_train_step(m, frames, B, &opt, 1.0f, 0.8f, &r, &frac);
    CHECK(l == 0.0f && frac == 0.0f && model_param_hash(m, 0) == hf, "a step without pseudo-labels changed the model");
    group_line("self-training: pseudo-labels, loss %.4f, a step moves f and h only", loss);
    free(frames); free(lab); free(pred);
    model_free(m);
}

static void test_main_only(Rng* rng) {
    int K = 4, B = 2, H = 40, W = 36;
    Model* m = tiny_model(K, B, H, W, 51);
    size_t HW = (size_t)H * W;
    float* images = random_tensor(rng, (size_t)B * HW * 3, 0, 1);
    unsigned char* lab = mallocCheck(B * HW);
    for (size_t i = 0; i < B * HW; i++) lab[i] = (unsigned char)(((i % W) / 9 + (i / W) / 11) % K);
    uint64_t hg = model_param_hash(m, 2), hf = model_param_hash(m, 0), hh = model_param_hash(m, 1);
    OptConfig opt = opt_config_ttt();
    opt.lr = 1e-3f;
    float first = 0, last = 0;
    for (int s = 0; s < 6; s++) {
        Rng r; rng_seed(&r, 3);
        model_train_step_main_only(m, images, lab, B, &opt, 1.0f, &r, s == 0 ? &first : &last);
    }
    CHECK(model_param_hash(m, 2) == hg, "main-task-only training changed g");
    CHECK(model_param_hash(m, 0) != hf && model_param_hash(m, 1) != hh, "main-task-only training left f or h");
    CHECK(isfinite(first) && last < first, "main-task loss did not fall: %g -> %g", first, last);
    group_line("main task only: set loss %.4f -> %.4f in 6 steps, g untouched", first, last);
    // in chunks of one image: the same step as the whole batch (up to rounding)
    Model* a = tiny_model(K, B, H, W, 52), *b = tiny_model(K, 1, H, W, 52);
    Rng ra, rb; rng_seed(&ra, 9); rng_seed(&rb, 9);
    float la, lb;
    model_train_step_main_only(a, images, lab, B, &opt, 1.0f, &ra, &la);
    model_train_step_main_only(b, images, lab, B, &opt, 1.0f, &rb, &lb);
    float* pa = model_params_host(a), *pb = model_params_host(b);
    CHECK(fabsf(la - lb) < 1e-5f * la, "chunked main-task loss %g vs %g", lb, la);
    check_close("main-only step in chunks of 1 vs whole batch", pb, pa, n_all(a), 1e-4);
    free(pa); free(pb); model_free(a); model_free(b);
    free(images); free(lab);
    model_free(m);
}

static void test_class_balance(void) {
    unsigned char ids[12] = {0, 0, 3, 3, 255, 7, 7, 7, 255, 3, 0, 1};
    CHECK(count_classes(ids, 12) == 4, "count_classes %d, want 4 (0, 1, 3, 7; 255 is no class)", count_classes(ids, 12));
    CHECK(count_classes(ids, 0) == 0, "no pixels, no classes");
    CHECK(!class_balance_reset(4, 5, 1) && !class_balance_reset(5, 4, 1), "a difference of 1 with threshold 1 resets");
    CHECK(class_balance_reset(3, 5, 1) && class_balance_reset(7, 5, 1), "a difference of 2 with threshold 1 does not reset");
    CHECK(!class_balance_reset(5, 5, 0) && class_balance_reset(5, 6, 0), "threshold 0");
    CHECK(class_balance_reset(5, 5, -1), "threshold -1 resets every frame");
    group_line("class balance: counts and the reset rule");
}

// ---- the Predictor ----

static void test_predictor(Rng* rng) {
    int K = 4, H = 40, W = 36;
    Model* m = tiny_model(K, 1, H, W, 61);
    size_t HW = (size_t)H * W;
    float* a = random_tensor(rng, HW * 3, 0, 1), *b = random_tensor(rng, HW * 3, 0, 1);
    unsigned char *pa = mallocCheck(HW), *pb = mallocCheck(HW), *got = mallocCheck(HW), *plain = mallocCheck(HW);
    model_predict(m, a, pa);
    model_predict(m, b, pb);
    PredictConfig c = {1, 1, 0, 0, 1, 16.0f};
    Predictor* p = predictor_create(m, &c);
    predictor_run(p, a, 1, 0, got, plain);
    CHECK(memcmp(got, pa, HW) == 0 && memcmp(plain, pa, HW) == 0, "smoothing 1 / TTA 1 differ from model_predict");
    predictor_run(p, b, 2, 0, got, NULL);
    CHECK(memcmp(got, pb, HW) == 0, "smoothing 1 / TTA 1 differ from model_predict (second frame)");
    predictor_free(p);
    // TTA 2 with colour: two voters, ties keep view 0: the plain prediction
    PredictConfig c2 = {1, 2, 1, 0, 1, 16.0f};
    p = predictor_create(m, &c2);
    predictor_run(p, a, 3, 0, got, plain);
    CHECK(memcmp(got, pa, HW) == 0 && memcmp(plain, pa, HW) == 0, "TTA 2 differs from the plain prediction");
    predictor_free(p);
    // TTA 5: deterministic for a seed, ids in range, mostly the plain prediction
    PredictConfig c5 = {1, 5, 1, 0, 1, 16.0f};
    p = predictor_create(m, &c5);
    unsigned char* again = mallocCheck(HW);
    predictor_run(p, a, 4, 0, got, NULL);
    predictor_run(p, a, 4, 0, again, NULL);
    size_t bad = 0;
    for (size_t i = 0; i < HW; i++) bad += got[i] >= K;
    CHECK(memcmp(got, again, HW) == 0 && bad == 0, "TTA 5: not reproducible or ids out of range");
    predictor_free(p);
    // smoothing 3: a repeated frame changes nothing; predicting a frame again replaces it
    PredictConfig c3 = {3, 1, 0, 0, 1, 16.0f};
    p = predictor_create(m, &c3);
    predictor_run(p, a, 5, 0, got, NULL);
    predictor_run(p, a, 6, 0, got, NULL);
    CHECK(memcmp(got, pa, HW) == 0, "smoothing over a repeated frame changed the prediction");
    predictor_reset(p);
    predictor_run(p, a, 7, 0, got, NULL);
    predictor_run(p, b, 7, 1, got, plain);
    CHECK(memcmp(got, pb, HW) == 0 && memcmp(plain, pb, HW) == 0, "a frame predicted again does not replace the first");
    predictor_run(p, a, 8, 0, got, plain);
    CHECK(memcmp(plain, pa, HW) == 0, "plain ids are smoothed");
    // the mean is symmetric: (b, a) and (a, b) end in the same ids, bit for bit
    predictor_reset(p);
    predictor_run(p, a, 8, 0, again, NULL);
    predictor_run(p, b, 8, 0, again, NULL);
    CHECK(memcmp(got, again, HW) == 0, "smoothing over (b, a) differs from smoothing over (a, b)");
    predictor_free(p);
    // LN Adapt: no parameter changes; a ring of one frame predicts as the plain model
    uint64_t h0 = model_param_hash(m, 0), h1 = model_param_hash(m, 1), h2 = model_param_hash(m, 2);
    PredictConfig cl1 = {1, 1, 0, 1, 1, 16.0f};
    p = predictor_create(m, &cl1);
    predictor_run(p, a, 9, 0, got, NULL);
    size_t agree = 0;
    for (size_t i = 0; i < HW; i++) agree += got[i] == pa[i];
    CHECK(agree >= HW * 99 / 100, "LN Adapt with a ring of one frame agrees with the plain model on %zu of %zu", agree, HW);
    predictor_free(p);
    PredictConfig cl = {2, 3, 1, 1, 4, 0.5f};   // with smoothing and TTA on top
    p = predictor_create(m, &cl);
    for (int t = 0; t < 6; t++) predictor_run(p, t % 2 ? a : b, 10 + t, 0, got, plain);
    predictor_run(p, a, 20, 1, got, plain);
    CHECK(model_param_hash(m, 0) == h0 && model_param_hash(m, 1) == h1 && model_param_hash(m, 2) == h2,
          "LN Adapt changed a parameter");
    agree = 0;
    for (size_t i = 0; i < HW; i++) agree += plain[i] == pa[i];
    printf("LN Adapt (window 4, prior 0.5) on a after a, b, a, b...: %zu of %zu pixels as the plain model\n", agree, HW);
    CHECK(agree < HW, "LN Adapt over different frames changed no prediction");
    predictor_free(p);
    CHECK(layernorm_forward_hook == NULL, "the LayerNorm hook was left set");
    group_line("predictor: plain, TTA, smoothing, LN Adapt");
    free(a); free(b); free(pa); free(pb); free(got); free(plain); free(again);
    model_free(m);
}

int main(void) {
    Rng rng;
    rng_seed(&rng, 17);
    test_scores_and_argmax(&rng);
    test_flip_vote(&rng);
    test_ln_adapt_op(&rng);
    test_entropy_op(&rng);
    test_tent(&rng);
    test_self_train(&rng);
    test_main_only(&rng);
    test_class_balance();
    test_predictor(&rng);
    return test_summary("test_table1");
}
