// test/test_loss.c: the Mask2Former set loss: the Hungarian solver against brute force,
// targets from hand-made label / segment maps, the loss against an independent
// straightforward computation (all assignments enumerated), and its gradients w.r.t. class
// and mask logits against finite differences (points fixed by re-seeding the RNG).
#include "test.h"
#include <sys/wait.h>
#include <unistd.h>

// brute force: minimum over all injective maps of the rows of an n x m matrix (n <= m)
// to columns
static double brute_rows(const double* c, int n, int m, int row, int* used) {
    if (row == n) return 0.0;
    double best = INFINITY;
    for (int j = 0; j < m; j++) {
        if (used[j]) continue;
        used[j] = 1;
        double v = c[row * m + j] + brute_rows(c, n, m, row + 1, used);
        used[j] = 0;
        if (v < best) best = v;
    }
    return best;
}
// any n, m: the smaller side is matched completely
static double brute(const double* c, int n, int m) {
    int used[16] = {0};
    if (n <= m) return brute_rows(c, n, m, 0, used);
    double ct[64];
    for (int i = 0; i < n; i++) for (int j = 0; j < m; j++) ct[j * n + i] = c[i * m + j];
    return brute_rows(ct, m, n, 0, used);
}

typedef struct {
    SetLossConfig cfg; float *cls, *msk; int L, B, Q, K, Hm, Wm, H, W; unsigned char* lab;
} LossCase;
static double set_loss_fn(void* p) {
    LossCase* t = p; Rng r; rng_seed(&r, 1);   // same points every evaluation
    return (double)set_loss(&t->cfg, t->cls, t->msk, t->L, t->B, t->Q, t->K, t->Hm, t->Wm,
                            t->lab, t->H, t->W, NULL, NULL, &r, NULL);
}

// Independent straightforward reference of the whole loss. Random points replay set_loss's
// documented draw order from rng_seed(1): per prediction j and image b with targets, the
// matching points (x, y pairs), then oversample*num_points candidates for each matched pair
// (pairs in target order), then each pair's uniform fill-up points. Per image and prediction
// it enumerates every assignment of min(T, Q) targets to distinct queries, keeps the cheapest
// by the matching cost, and evaluates Mask2Former's criterion for it.

// grid_sample of one (H, W) map at (x, y) in [0, 1]: bilinear, align_corners=False, zeros outside
static double sample_map(const float* map, int H, int W, double x, double y) {
    double ix = x * W - 0.5, iy = y * H - 0.5;
    int x0 = (int)floor(ix), y0 = (int)floor(iy);
    double fx = ix - x0, fy = iy - y0, v = 0;
    for (int dy = 0; dy < 2; dy++) for (int dx = 0; dx < 2; dx++) {
        int xx = x0 + dx, yy = y0 + dy;
        if (xx < 0 || xx >= W || yy < 0 || yy >= H) continue;
        v += (dx ? fx : 1 - fx) * (dy ? fy : 1 - fy) * map[yy * W + xx];
    }
    return v;
}

// pairwise terms of logits x and targets y on P points
static void pair_terms(const double* x, const double* y, int P, double* bce, double* dice) {
    double b = 0, st = 0, ss = 0, sy = 0;
    for (int p = 0; p < P; p++) {
        double s = 1 / (1 + exp(-x[p]));
        b += -(y[p] * log(s) + (1 - y[p]) * log(1 - s)) / P;
        st += s * y[p]; ss += s; sy += y[p];
    }
    *bce = b; *dice = 1 - (2 * st + 1) / (ss + sy + 1);
}

#define REF_MAXP 128
// enumerate assignments target ti.. -> distinct queries (or none, while enough remain)
static void best_assign(const LossCase* t, const float* cls, double x[][REF_MAXP],
                        double y[][REF_MAXP], int P, const int* tc, int T, int ti, int* used,
                        int* qa, int assigned, double* best, int* best_qa) {
    int C = t->K + 1, need = T < t->Q ? T : t->Q;
    if (ti == T) {
        if (assigned != need) return;
        double cost = 0;
        for (int k = 0; k < T; k++) {
            int q = qa[k];
            if (q < 0) continue;
            double z = 0, bce, dice;
            for (int c = 0; c < C; c++) z += exp(cls[q * C + c]);
            pair_terms(x[q], y[k], P, &bce, &dice);
            cost += t->cfg.w_class * -exp(cls[q * C + tc[k]]) / z + t->cfg.w_mask * bce + t->cfg.w_dice * dice;
        }
        if (cost < *best) { *best = cost; memcpy(best_qa, qa, T * sizeof(int)); }
        return;
    }
    qa[ti] = -1;
    best_assign(t, cls, x, y, P, tc, T, ti + 1, used, qa, assigned, best, best_qa);
    for (int q = 0; q < t->Q; q++) {
        if (used[q]) continue;
        used[q] = 1; qa[ti] = q;
        best_assign(t, cls, x, y, P, tc, T, ti + 1, used, qa, assigned + 1, best, best_qa);
        used[q] = 0;
    }
}

static double reference_loss(const LossCase* t, double parts[3]) {
    int C = t->K + 1, Q = t->Q, HW = t->H * t->W, HWm = t->Hm * t->Wm;
    int all = t->cfg.all_pixels;
    int P = all ? HWm : t->cfg.num_points;
    int P_over = (int)(t->cfg.oversample * P), P_imp = (int)(t->cfg.importance * P);
    Rng rng; rng_seed(&rng, 1);
    int num_masks = 0;
    for (int b = 0; b < t->B; b++) {
        int present[256] = {0};
        for (int p = 0; p < HW; p++) present[t->lab[b * HW + p]] = 1;
        for (int k = 0; k < t->K; k++) num_masks += present[k];
    }
    double norm = num_masks > 0 ? num_masks : 1;
    static double x[16][REF_MAXP], y[8][REF_MAXP], px[2 * REF_MAXP], cand[16][8 * REF_MAXP], unc[8 * REF_MAXP];
    static float tm[8][1024];
    parts[0] = parts[1] = parts[2] = 0;
    for (int j = 0; j < t->L; j++) {
        double ce_num = 0, ce_den = 0;
        for (int b = 0; b < t->B; b++) {
            const unsigned char* lab = t->lab + b * HW;
            const float* cls = t->cls + ((size_t)j * t->B + b) * Q * C;
            const float* msk = t->msk + ((size_t)j * t->B + b) * Q * HWm;
            int tc[8], T = 0;
            for (int k = 0; k < t->K; k++) {
                int any = 0;
                for (int p = 0; p < HW; p++) { tm[T][p] = lab[p] == k; any |= lab[p] == k; }
                if (any) tc[T++] = k;
            }
            int target_of_query[16];
            for (int q = 0; q < Q; q++) target_of_query[q] = t->K;
            if (T > 0) {
                for (int p = 0; p < P; p++) {
                    if (all) { px[2 * p] = (p % t->Wm + 0.5) / t->Wm; px[2 * p + 1] = (p / t->Wm + 0.5) / t->Hm; }
                    else { px[2 * p] = rng_uniform(&rng); px[2 * p + 1] = rng_uniform(&rng); }
                }
                for (int q = 0; q < Q; q++) for (int p = 0; p < P; p++)
                    x[q][p] = sample_map(msk + q * HWm, t->Hm, t->Wm, px[2 * p], px[2 * p + 1]);
                for (int k = 0; k < T; k++) for (int p = 0; p < P; p++)
                    y[k][p] = sample_map(tm[k], t->H, t->W, px[2 * p], px[2 * p + 1]);
                int used[16] = {0}, qa[8], best_qa[8];
                double best = INFINITY;
                best_assign(t, cls, x, y, P, tc, T, 0, used, qa, 0, &best, best_qa);
                int pq[8], pt[8], M = 0;
                for (int k = 0; k < T; k++) if (best_qa[k] >= 0) { pq[M] = best_qa[k]; pt[M] = k; M++; }
                if (!all) for (int i = 0; i < M; i++) for (int c = 0; c < 2 * P_over; c++) cand[i][c] = rng_uniform(&rng);
                for (int i = 0; i < M; i++) {
                    int q = pq[i], k = pt[i];
                    target_of_query[q] = tc[k];
                    double sel[2 * REF_MAXP];
                    if (all) {
                        memcpy(sel, px, 2 * P * sizeof(double));
                    } else {
                        // the P_imp most uncertain candidates (largest -|logit|, first index on ties)
                        for (int c = 0; c < P_over; c++)
                            unc[c] = -fabs(sample_map(msk + q * HWm, t->Hm, t->Wm, cand[i][2 * c], cand[i][2 * c + 1]));
                        for (int n = 0; n < P_imp; n++) {
                            int arg = -1;
                            for (int c = 0; c < P_over; c++) if (unc[c] > -INFINITY && (arg < 0 || unc[c] > unc[arg])) arg = c;
                            sel[2 * n] = cand[i][2 * arg]; sel[2 * n + 1] = cand[i][2 * arg + 1];
                            unc[arg] = -INFINITY;
                        }
                    }
                    double xs[REF_MAXP], ys[REF_MAXP], bce, dice;
                    // uniform fill-up points are drawn pair after pair, after all candidates
                    if (!all) {
                        static double fill[8][2 * REF_MAXP];
                        if (i == 0) for (int i2 = 0; i2 < M; i2++) for (int c = 0; c < 2 * (P - P_imp); c++) fill[i2][c] = rng_uniform(&rng);
                        for (int p = P_imp; p < P; p++) { sel[2 * p] = fill[i][2 * (p - P_imp)]; sel[2 * p + 1] = fill[i][2 * (p - P_imp) + 1]; }
                    }
                    for (int p = 0; p < P; p++) {
                        xs[p] = sample_map(msk + q * HWm, t->Hm, t->Wm, sel[2 * p], sel[2 * p + 1]);
                        ys[p] = sample_map(tm[k], t->H, t->W, sel[2 * p], sel[2 * p + 1]);
                    }
                    pair_terms(xs, ys, P, &bce, &dice);
                    parts[1] += t->cfg.w_mask * bce / norm;
                    parts[2] += t->cfg.w_dice * dice / norm;
                }
            }
            for (int q = 0; q < Q; q++) {
                int yq = target_of_query[q];
                double w = yq == t->K ? t->cfg.no_object_weight : 1.0, z = 0;
                for (int c = 0; c < C; c++) z += exp(cls[q * C + c]);
                ce_num += w * (log(z) - cls[q * C + yq]); ce_den += w;
            }
        }
        parts[0] += t->cfg.w_class * ce_num / ce_den;
    }
    return parts[0] + parts[1] + parts[2];
}

// grad_check that tolerates jumps: the matching is piecewise constant in the logits and can
// flip, and importance sampling chooses its points by the logits themselves (no gradient
// through the choice, as in Mask2Former), so a perturbation may make the loss jump. Per index the forward and
// backward one-sided differences are compared; where they disagree by more than 5% plus a
// float-noise floor the index is skipped (a wrong analytic gradient does not make them
// disagree); the rest are compared like grad_check. Fails if more than 10% were skipped.
static int grad_check_jumps(const char* name, float* x, size_t n, const float* analytic,
                            loss_fn loss, void* ctx, float eps, double tol) {
    double num2 = 0.0, diff2 = 0.0;
    int skipped = 0;
    for (size_t i = 0; i < n; i++) {
        float orig = x[i];
        double l0 = loss(ctx);
        x[i] = orig + eps; double lp = loss(ctx);
        x[i] = orig - eps; double lm = loss(ctx);
        x[i] = orig;
        double fwd = (lp - l0) / eps, bwd = (l0 - lm) / eps;
        if (fabs(fwd - bwd) > 0.05 * fmax(fabs(fwd), fabs(bwd)) + 5e-3) { skipped++; continue; }
        double num = (lp - lm) / (2.0 * eps), d = num - (double)analytic[i];
        num2 += num * num; diff2 += d * d;
    }
    double err = sqrt(diff2) / (sqrt(num2) + 1e-12);
    int ok = err <= tol && skipped <= 0.1 * n;
    printf("%-4s grad %-43s rel err %.3e (tol %.0e, n=%zu, %d jumps skipped)\n",
           ok ? "ok" : "FAIL", name, err, tol, n, skipped);
    if (ok) tests_passed++; else tests_failed++;
    return ok;
}

// run fn() in a child with stderr on a pipe; check it exits 1 with one "error:" line (a child
// that returns normally exits 0 and fails the check)
typedef struct { void (*fn)(void); } BadInput;
static void run_bad_input(void* p) { ((BadInput*)p)->fn(); }
static void expect_error(const char* what, void (*fn)(void)) {
    BadInput bad = {fn};
    char buf[512];
    int status = 0;
    if (!run_in_child(run_bad_input, &bad, buf, sizeof(buf), &status)) { CHECK(0, "pipe"); return; }
    buf[strcspn(buf, "\n")] = 0;
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 1 && strncmp(buf, "error:", 6) == 0;
    printf("%-4s bad input: %-30s -> %s\n", ok ? "ok" : "FAIL", what, buf);
    if (ok) tests_passed++; else tests_failed++;
}
static void bad_label(void) {
    unsigned char lab[4] = {0, 1, 7, 255}; int cls[4];
    set_loss_targets_semantic(cls, NULL, lab, 2, 2, 4);
}
static void bad_segment_id(void) {
    int seg[4] = {0, 1, 3, 1}, seg_class[2] = {0, 1}, cls[2];
    set_loss_targets_panoptic(cls, NULL, seg, 2, 2, seg_class, 2, 4);
}
static void bad_segment_class(void) {
    int seg[4] = {0, 1, 2, 1}, seg_class[2] = {0, 4}, cls[2];
    set_loss_targets_panoptic(cls, NULL, seg, 2, 2, seg_class, 2, 4);
}
static void bad_sizes(void) {
    SetLossConfig cfg = set_loss_config_default();
    unsigned char lab[4] = {0, 1, 1, 0}; float cls[3] = {0}, msk[4] = {0}; Rng r; rng_seed(&r, 1);
    set_loss(&cfg, cls, msk, 1, 1, 0, 2, 2, 2, lab, 2, 2, NULL, NULL, &r, NULL);
}

int main(void) {
    Rng rng; rng_seed(&rng, 21);

    // ---- Hungarian ----
    double c3[9] = {9, 9, 1, 9, 1, 9, 1, 9, 9};   // known optimum: the anti-diagonal
    int col[8];
    double v = hungarian_assign(c3, 3, 3, col);
    CHECK(v == 3.0 && col[0] == 2 && col[1] == 1 && col[2] == 0,
          "3x3 known case: cost %g cols %d %d %d", v, col[0], col[1], col[2]);
    double c3b[9] = {4, 1, 3, 2, 0, 5, 3, 2, 2};   // classic example: optimum 1 + 2 + 2 = 5
    v = hungarian_assign(c3b, 3, 3, col);
    CHECK(v == 5.0 && col[0] == 1 && col[1] == 0 && col[2] == 2,
          "3x3 classic case: cost %g cols %d %d %d", v, col[0], col[1], col[2]);
    // random rectangular cases (queries x targets and targets x queries) vs brute force
    int shapes[8][2] = {{5, 3}, {7, 4}, {3, 5}, {4, 7}, {5, 5}, {2, 6}, {6, 2}, {1, 4}};
    int bad = 0; double worst = 0;
    for (int s = 0; s < 8; s++) {
        for (int rep = 0; rep < 10; rep++) {
            int n = shapes[s][0], m = shapes[s][1];
            double c[64];
            for (int i = 0; i < n * m; i++) c[i] = rng_uniform(&rng) * 10 - 3;
            if (rep == 0) for (int i = 0; i < n * m; i++) c[i] = (double)rng_int(&rng, 3);  // ties
            double want = brute(c, n, m), got = hungarian_assign(c, n, m, col);
            double recomputed = 0; int distinct = 1, matched = 0;
            for (int i = 0; i < n; i++) {
                if (col[i] < 0) continue;
                matched++; recomputed += c[i * m + col[i]];
                for (int k = 0; k < i; k++) distinct &= col[k] != col[i];
            }
            double err = fabs(got - want) + fabs(recomputed - want);
            if (err > worst) worst = err;
            if (!(err < 1e-9 && distinct && matched == (n < m ? n : m))) {
                bad++;
                printf("FAIL hungarian %dx%d: got %g (recomputed %g), brute force %g\n", n, m, got, recomputed, want);
            }
        }
    }
    CHECK(bad == 0, "hungarian: %d of 80 random cases wrong", bad);
    group_line("hungarian vs brute force on 80 random rectangular cases (max err %.1e)", worst);
    double cn[6] = {1, NAN, 2, INFINITY, 0, -INFINITY};   // must terminate with a valid assignment
    hungarian_assign(cn, 2, 3, col);
    CHECK(col[0] >= 0 && col[1] >= 0 && col[0] != col[1] && col[0] < 3 && col[1] < 3,
          "hungarian with non-finite costs: cols %d %d", col[0], col[1]);

    // ---- targets ----
    {
        unsigned char lab[12] = {0, 0, 2, 2,
                                 255, 0, 2, 255,
                                 0, 0, 0, 2};
        int cls[4]; float masks[4 * 12];
        int T = set_loss_targets_semantic(cls, masks, lab, 3, 4, 4);
        float want[2][12] = {{1, 1, 0, 0, 0, 1, 0, 0, 1, 1, 1, 0},
                             {0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1}};
        CHECK(T == 2 && cls[0] == 0 && cls[1] == 2, "semantic targets: T %d classes %d %d", T, cls[0], cls[1]);
        CHECK(memcmp(masks, want, sizeof(want)) == 0, "semantic target masks differ");
        CHECK(set_loss_targets_semantic(cls, NULL, lab, 3, 4, 4) == 2, "semantic count only");
        int seg[12] = {1, 1, 2, 2,
                       0, 1, 2, 3,
                       3, 3, 4, 4};
        int seg_class[4] = {5, 1, -1, 5};   // segment 3 is crowd; segments 1 and 4 share class 5
        int pcls[4]; float pmasks[4 * 12];
        T = set_loss_targets_panoptic(pcls, pmasks, seg, 3, 4, seg_class, 4, 6);
        float pwant[3][12] = {{1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0},
                              {0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0},
                              {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1}};
        CHECK(T == 3 && pcls[0] == 5 && pcls[1] == 1 && pcls[2] == 5,
              "panoptic targets: T %d classes %d %d %d", T, pcls[0], pcls[1], pcls[2]);
        CHECK(memcmp(pmasks, pwant, sizeof(pwant)) == 0, "panoptic target masks differ");
        group_line("targets from hand-made semantic and panoptic maps");
        expect_error("label outside [0, K)", bad_label);
        expect_error("segment id out of range", bad_segment_id);
        expect_error("segment class outside [0, K)", bad_segment_class);
        expect_error("zero queries", bad_sizes);
    }

    // ---- loss values vs the independent computation ----
    {
        // {L, B, Q, K}. Mask map 3x4. 0-4: all pixels with labels 3x4 too (the points read
        // pixels exactly): the brief's tiny case, deep supervision + batch (second image has no
        // targets), T > Q, and two cases where the matching can only be decided by the class
        // term (all queries share one mask) or by the mask terms (all share one class row).
        // 5-8: labels 5x7: all pixels (soft targets); 100 points with importance sampling;
        // 20 points with importance sampling and T > Q; 20 uniform points (importance 0).
        int cases[9][4] = {{1, 1, 3, 2}, {2, 2, 4, 3}, {2, 1, 2, 4}, {2, 2, 4, 3}, {2, 2, 4, 3},
                           {2, 2, 4, 3}, {2, 2, 4, 3}, {2, 1, 2, 4}, {2, 2, 3, 3}};
        const char* what[9] = {"tiny", "no-target image", "T>Q", "class decides", "masks decide",
                               "labels 5x7", "points", "points T>Q", "uniform points"};
        for (int s = 0; s < 9; s++) {
            LossCase t; t.cfg = set_loss_config_default(); t.cfg.all_pixels = s <= 5;
            t.cfg.num_points = 20;
            if (s == 8) t.cfg.importance = 0.0f;
            if (s == 6) t.cfg.num_points = 100;   // 300 candidates, 75 most uncertain kept
            t.L = cases[s][0]; t.B = cases[s][1]; t.Q = cases[s][2]; t.K = cases[s][3];
            t.Hm = 3; t.Wm = 4;
            t.H = s <= 4 ? 3 : 5; t.W = s <= 4 ? 4 : 7;
            int P = t.H * t.W, Pm = t.Hm * t.Wm, C = t.K + 1;
            t.lab = malloc(t.B * P);
            for (int i = 0; i < t.B * P; i++) t.lab[i] = (unsigned char)rng_int(&rng, t.K);
            t.lab[5] = 255;
            if (s == 1) for (int i = 0; i < P; i++) t.lab[P + i] = 255;   // second image: no targets
            if (s == 0) { unsigned char l0[12] = {0, 0, 1, 1, 255, 0, 1, 1, 0, 0, 0, 1}; memcpy(t.lab, l0, 12); }
            t.cls = random_tensor(&rng, (size_t)t.L * t.B * t.Q * C, -2, 2);
            t.msk = random_tensor(&rng, (size_t)t.L * t.B * t.Q * Pm, -3, 3);
            for (int lb = 0; lb < t.L * t.B; lb++) {
                for (int q = 1; q < t.Q; q++) {
                    if (s == 3) memcpy(t.msk + ((size_t)lb * t.Q + q) * Pm, t.msk + (size_t)lb * t.Q * Pm, Pm * sizeof(float));
                    if (s == 4) memcpy(t.cls + ((size_t)lb * t.Q + q) * C, t.cls + (size_t)lb * t.Q * C, C * sizeof(float));
                }
            }
            Rng r; rng_seed(&r, 1);
            float parts[3];
            float got = set_loss(&t.cfg, t.cls, t.msk, t.L, t.B, t.Q, t.K, t.Hm, t.Wm, t.lab, t.H, t.W,
                                 NULL, NULL, &r, parts);
            double rp[3];
            float want = (float)reference_loss(&t, rp);
            float wparts[3] = {(float)rp[0], (float)rp[1], (float)rp[2]};
            char name[96];
            snprintf(name, sizeof(name), "loss vs reference L%d B%d Q%d K%d %s", t.L, t.B, t.Q, t.K, what[s]);
            check_close(name, &got, &want, 1, 1e-6);
            snprintf(name, sizeof(name), "loss parts vs reference (%s)", what[s]);
            check_close(name, parts, wparts, 3, 1e-6);
            free(t.cls); free(t.msk); free(t.lab);
        }
    }

    // ---- panoptic targets through set_loss_from_targets: segments that mirror a semantic map
    // (segment k+1 = class k, every class present) give exactly set_loss on that map ----
    {
        SetLossConfig cfg = set_loss_config_default(); cfg.num_points = 25;
        int L = 2, B = 2, Q = 4, K = 3, Hm = 4, Wm = 5, H = 7, W = 9, HW = 63;
        size_t nc = (size_t)L * B * Q * (K + 1), nm = (size_t)L * B * Q * Hm * Wm;
        float* cls = random_tensor(&rng, nc, -2, 2), *msk = random_tensor(&rng, nm, -3, 3);
        unsigned char lab[2 * 63]; int seg[2 * 63], seg_class[3] = {0, 1, 2};
        for (int i = 0; i < B * HW; i++) lab[i] = i % 11 == 0 ? 255 : (unsigned char)((i / 5) % 3);
        for (int i = 0; i < B * HW; i++) seg[i] = lab[i] == 255 ? 0 : lab[i] + 1;
        int num_t[2], tcls[6]; float* tm = malloc(6 * HW * sizeof(float));
        num_t[0] = set_loss_targets_panoptic(tcls, tm, seg, H, W, seg_class, 3, K);
        num_t[1] = set_loss_targets_panoptic(tcls + num_t[0], tm + num_t[0] * HW, seg + HW, H, W, seg_class, 3, K);
        float* dc1 = calloc(nc, 4), *dm1 = calloc(nm, 4), *dc2 = calloc(nc, 4), *dm2 = calloc(nm, 4);
        Rng r; rng_seed(&r, 1);
        float a = set_loss(&cfg, cls, msk, L, B, Q, K, Hm, Wm, lab, H, W, dc1, dm1, &r, NULL);
        rng_seed(&r, 1);
        float b = set_loss_from_targets(&cfg, cls, msk, L, B, Q, K, Hm, Wm, num_t, tcls, tm, H, W, dc2, dm2, &r, NULL);
        CHECK(num_t[0] == 3 && num_t[1] == 3 && a == b && memcmp(dc1, dc2, nc * 4) == 0 && memcmp(dm1, dm2, nm * 4) == 0,
              "panoptic mirror of a semantic map: T %d %d, loss %g vs %g", num_t[0], num_t[1], b, a);
        group_line("panoptic targets mirroring a semantic map: same loss and gradients");
        free(cls); free(msk); free(tm); free(dc1); free(dm1); free(dc2); free(dm2);
    }

    // ---- non-finite logits (a diverged step) must come back, with a non-finite loss ----
    {
        SetLossConfig cfg = set_loss_config_default(); cfg.num_points = 30;
        int Q = 3, K = 2, Hm = 4, Wm = 4, H = 6, W = 6;
        float* cls = random_tensor(&rng, Q * (K + 1), -2, 2), *msk = random_tensor(&rng, Q * Hm * Wm, -3, 3);
        unsigned char lab[36];
        for (int i = 0; i < 36; i++) lab[i] = (unsigned char)(i % 3 == 0);
        for (int i = 0; i < Q * Hm * Wm; i += 3) msk[i] = NAN;
        cls[4] = NAN;
        float* dc = calloc(Q * (K + 1), 4), *dm = calloc(Q * Hm * Wm, 4);
        Rng r; rng_seed(&r, 1);
        float loss = set_loss(&cfg, cls, msk, 1, 1, Q, K, Hm, Wm, lab, H, W, dc, dm, &r, NULL);
        CHECK(!isfinite(loss), "NaN logits gave a finite loss %g", loss);
        group_line("NaN logits: set loss returns (loss %g)", loss);
        free(cls); free(msk); free(dc); free(dm);
    }

    // ---- gradients ----
    // L=2 predictions, B=2 images, mask map 5x6, labels 9x11; modes:
    // 0 all pixels; 1 uniform points (importance 0); 2 default importance sampling;
    // 3 importance sampling with T > Q (Q=2, 3 classes present)
    for (int mode = 0; mode < 4; mode++) {
        LossCase t; t.cfg = set_loss_config_default(); t.cfg.all_pixels = mode == 0;
        t.cfg.num_points = 40;
        if (mode == 1) t.cfg.importance = 0.0f;
        t.L = 2; t.B = 2; t.Q = mode == 3 ? 2 : 4; t.K = 3; t.Hm = 5; t.Wm = 6; t.H = 9; t.W = 11;
        size_t nc = (size_t)t.L * t.B * t.Q * (t.K + 1), nm = (size_t)t.L * t.B * t.Q * t.Hm * t.Wm;
        t.cls = random_tensor(&rng, nc, -2, 2); t.msk = random_tensor(&rng, nm, -3, 3);
        t.lab = malloc(t.B * t.H * t.W);
        for (int i = 0; i < t.B * t.H * t.W; i++) t.lab[i] = (i / 7 + i / 23) % 3;
        for (int i = 0; i < t.H * t.W; i += 13) t.lab[i] = 255;
        float* dc = calloc(nc, 4), *dm = calloc(nm, 4);
        Rng r; rng_seed(&r, 1);
        float parts[3];
        float loss = set_loss(&t.cfg, t.cls, t.msk, t.L, t.B, t.Q, t.K, t.Hm, t.Wm, t.lab, t.H, t.W,
                              dc, dm, &r, parts);
        CHECK(isfinite(loss) && fabsf(parts[0] + parts[1] + parts[2] - loss) < 1e-5f * fabsf(loss),
              "parts do not sum to the loss");
        CHECK((float)set_loss_fn(&t) == loss, "loss without gradients differs (%g vs %g)", set_loss_fn(&t), loss);
        const char* names[4] = {"all pixels", "uniform points", "importance points", "importance, T > Q"};
        char name[96];
        snprintf(name, sizeof(name), "set loss d class (%s)", names[mode]);
        grad_check_jumps(name, t.cls, nc, dc, set_loss_fn, &t, 1e-3f, 1e-2);
        snprintf(name, sizeof(name), "set loss d masks (%s)", names[mode]);
        grad_check_jumps(name, t.msk, nm, dm, set_loss_fn, &t, 1e-2f, 1e-2);
        // gradients accumulate
        float* dc2 = malloc(nc * 4), *dm2 = malloc(nm * 4);
        memcpy(dc2, dc, nc * 4); memcpy(dm2, dm, nm * 4);
        rng_seed(&r, 1);
        set_loss(&t.cfg, t.cls, t.msk, t.L, t.B, t.Q, t.K, t.Hm, t.Wm, t.lab, t.H, t.W, dc2, dm2, &r, NULL);
        for (size_t i = 0; i < nc; i++) dc[i] *= 2;
        for (size_t i = 0; i < nm; i++) dm[i] *= 2;
        snprintf(name, sizeof(name), "set loss accumulates (%s)", names[mode]);
        check_close(name, dm2, dm, nm, 1e-6);
        free(dc2); free(dm2);
        free(t.cls); free(t.msk); free(t.lab); free(dc); free(dm);
    }
    return test_summary("test_loss");
}
