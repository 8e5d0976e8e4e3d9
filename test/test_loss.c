// test/test_loss.c: the Mask2Former set loss: the Hungarian solver against brute force,
// the loss against an independent computation on a tiny case, and its gradients w.r.t.
// class and mask logits against finite differences (points fixed by re-seeding).
#include "test.h"

// brute force over all injective maps rows -> columns
static double brute(const double* c, int n, int m, int row, int* used) {
    if (row == n) return 0.0;
    double best = INFINITY;
    for (int j = 0; j < m; j++) {
        if (used[j]) continue;
        used[j] = 1;
        double v = c[row * m + j] + brute(c, n, m, row + 1, used);
        used[j] = 0;
        if (v < best) best = v;
    }
    return best;
}

typedef struct { SetLossConfig cfg; float *cls, *msk; int L, B, Q, K, Hm, Wm, H, W; unsigned char* lab; } LossCase;
static double set_loss_fn(void* p) {
    LossCase* t = p; Rng r; rng_seed(&r, 1);
    return (double)set_loss(&t->cfg, t->cls, t->msk, t->L, t->B, t->Q, t->K, t->Hm, t->Wm, t->lab, t->H, t->W, NULL, NULL, &r, NULL);
}

int main(void) {
    Rng rng; rng_seed(&rng, 21);
    // known optimum: the anti-diagonal
    double c3[9] = {9, 9, 1, 9, 1, 9, 1, 9, 9};
    int col[8];
    double v = hungarian_assign(c3, 3, 3, col);
    CHECK(v == 3.0 && col[0] == 2 && col[1] == 1 && col[2] == 0, "3x3 known case: cost %g cols %d %d %d", v, col[0], col[1], col[2]);
    // random rectangular cases vs brute force
    int shapes[4][2] = {{3, 5}, {4, 7}, {5, 5}, {2, 6}};
    for (int s = 0; s < 4; s++) {
        for (int rep = 0; rep < 5; rep++) {
            int n = shapes[s][0], m = shapes[s][1];
            double c[64]; for (int i = 0; i < n * m; i++) c[i] = rng_uniform(&rng) * 10 - 3;
            int used[16] = {0};
            double want = brute(c, n, m, 0, used), got = hungarian_assign(c, n, m, col);
            double recomputed = 0; int distinct = 1;
            for (int i = 0; i < n; i++) { recomputed += c[i * m + col[i]]; for (int k = 0; k < i; k++) distinct &= col[k] != col[i]; }
            CHECK(fabs(got - want) < 1e-9 && fabs(recomputed - want) < 1e-9 && distinct,
                  "hungarian %dx%d: got %g (recomputed %g), brute force %g", n, m, got, recomputed, want);
        }
    }
    printf("ok   hungarian vs brute force on 20 random rectangular cases\n");

    // more targets than queries: 3 classes present, 2 queries; must finish and stay finite
    {
        SetLossConfig c = set_loss_config_default(); c.all_pixels = 1;
        unsigned char lab[6] = {0, 1, 2, 0, 1, 2};
        float* cls = random_tensor(&rng, 2 * 4, -1, 1), *msk = random_tensor(&rng, 2 * 6, -1, 1);
        float* dm = calloc(12, 4);
        Rng r; rng_seed(&r, 2);
        float l = set_loss(&c, cls, msk, 1, 1, 2, 3, 2, 3, lab, 2, 3, NULL, dm, &r, NULL);
        CHECK(isfinite(l) && l > 0, "set loss with more targets than queries: %g", l);
        free(cls); free(msk); free(dm);
    }

    // tiny case by hand: L=1, B=1, Q=3, K=2, mask map = label map 2x3, all pixels
    {
        LossCase t; t.cfg = set_loss_config_default(); t.cfg.all_pixels = 1;
        t.L = 1; t.B = 1; t.Q = 3; t.K = 2; t.Hm = t.H = 2; t.Wm = t.W = 3;
        unsigned char lab[6] = {0, 0, 1, 255, 0, 1};
        t.lab = lab;
        t.cls = random_tensor(&rng, 3 * 3, -2, 2); t.msk = random_tensor(&rng, 3 * 6, -3, 3);
        float got = (float)set_loss_fn(&t);
        // independent: targets class 0 mask {1,1,0,0,1,0}, class 1 {0,0,1,0,0,1}; try all
        // assignments of the two targets to distinct queries, keep the cheapest by the
        // matching cost, then evaluate the loss for it
        float tm[2][6] = {{1, 1, 0, 0, 1, 0}, {0, 0, 1, 0, 0, 1}};
        double best_cost = INFINITY, best_loss = 0;
        for (int q0 = 0; q0 < 3; q0++) for (int q1 = 0; q1 < 3; q1++) {
            if (q0 == q1) continue;
            int qs[2] = {q0, q1};
            double cost = 0, bce_sum = 0, dice_sum = 0;
            for (int tt = 0; tt < 2; tt++) {
                const float* x = t.msk + qs[tt] * 6;
                double z = 0; for (int c = 0; c < 3; c++) z += exp(t.cls[qs[tt] * 3 + c]);
                double prob = exp(t.cls[qs[tt] * 3 + tt]) / z;
                double bce = 0, st = 0, ss = 0, sy = 0;
                for (int p = 0; p < 6; p++) {
                    double s = 1 / (1 + exp(-x[p])), y = tm[tt][p];
                    bce += -(y * log(s) + (1 - y) * log(1 - s)) / 6;
                    st += s * y; ss += s; sy += y;
                }
                double dice = 1 - (2 * st + 1) / (ss + sy + 1);
                cost += 2 * -prob + 5 * bce + 5 * dice;
                bce_sum += bce; dice_sum += dice;
            }
            // class CE over the three queries, weights 1, 1, 0.1 (no object)
            double num = 0, den = 0;
            for (int q = 0; q < 3; q++) {
                int target = q == q0 ? 0 : q == q1 ? 1 : 2;
                double w = target == 2 ? 0.1 : 1.0, z = 0;
                for (int c = 0; c < 3; c++) z += exp(t.cls[q * 3 + c]);
                num += w * -(t.cls[q * 3 + target] - log(z)); den += w;
            }
            double loss = 2 * num / den + 5 * bce_sum / 2 + 5 * dice_sum / 2;
            if (cost < best_cost) { best_cost = cost; best_loss = loss; }
        }
        float want = (float)best_loss;
        check_close("set loss tiny case vs independent computation", &got, &want, 1, 1e-5);
        free(t.cls); free(t.msk);
    }

    // gradients: L=2 predictions, B=2 images, Q=4, K=3, mask map 5x6, labels 9x11
    for (int mode = 0; mode < 2; mode++) {
        LossCase t; t.cfg = set_loss_config_default(); t.cfg.all_pixels = mode == 0;
        t.cfg.num_points = 40;
        // importance sampling picks points by the logits themselves (no gradient through the
        // choice, as in Mask2Former), so finite differences see jumps; check with random points
        t.cfg.importance = 0.0f;
        t.L = 2; t.B = 2; t.Q = 4; t.K = 3; t.Hm = 5; t.Wm = 6; t.H = 9; t.W = 11;
        size_t nc = (size_t)t.L * t.B * t.Q * (t.K + 1), nm = (size_t)t.L * t.B * t.Q * t.Hm * t.Wm;
        t.cls = random_tensor(&rng, nc, -2, 2); t.msk = random_tensor(&rng, nm, -3, 3);
        t.lab = malloc(t.B * t.H * t.W);
        for (int i = 0; i < t.B * t.H * t.W; i++) t.lab[i] = (i / 7 + i / 23) % 3;
        for (int i = 0; i < t.H * t.W; i += 13) t.lab[i] = 255;
        float* dc = calloc(nc, 4), *dm = calloc(nm, 4);
        Rng r; rng_seed(&r, 1);
        float parts[3];
        float loss = set_loss(&t.cfg, t.cls, t.msk, t.L, t.B, t.Q, t.K, t.Hm, t.Wm, t.lab, t.H, t.W, dc, dm, &r, parts);
        CHECK(isfinite(loss) && fabsf(parts[0] + parts[1] + parts[2] - loss) < 1e-4f * fabsf(loss), "parts do not sum to the loss");
        grad_check(mode == 0 ? "set loss d class (all pixels)" : "set loss d class (points)", t.cls, nc, dc, set_loss_fn, &t, 1e-3f, 2e-2, 200);
        grad_check(mode == 0 ? "set loss d masks (all pixels)" : "set loss d masks (points)", t.msk, nm, dm, set_loss_fn, &t, 1e-2f, 2e-2, 300);
        free(t.cls); free(t.msk); free(t.lab); free(dc); free(dm);
    }
    return test_summary("test_loss");
}
