// test/test_color.c: colorization's pieces (color.c) against scikit-image reference values
// (test/data/color_ref.txt, written by dev/color_reference.py): the 313-bin table and the gamut
// cells, sRGB -> Lab and Lab -> sRGB, the sRGB round trip, bin quantisation and soft encoding,
// the rebalancing weights, PSNR and SSIM; the annealed mean on constructed distributions; the
// colour loss against a dense recomputation and its gradient against finite differences; the
// model side: a colorization checkpoint keeps its task and weights, a step lowers the loss.
#include "test.h"

#define REF "test/data/color_ref.txt"

typedef struct { char name[16]; int H, W, C; unsigned char* px; } RefImage;

static RefImage images[8];
static int n_images = 0;

static RefImage* find_image(const char* name) {
    for (int i = 0; i < n_images; i++) if (!strcmp(images[i].name, name)) return &images[i];
    return NULL;
}

static void test_reference(void) {
    FILE* fp = fopen(REF, "r");
    CHECK(fp != NULL, "cannot open %s", REF);
    if (!fp) return;
    char key[32];
    int n_table = 0, table_ok = 1, n_lab = 0, n_rgb = 0, n_bin = 0, nearest_ok = 0, ids_ok = 0, gamut_ref = -1;
    double lab_err = 0.0, rgb_err = 0.0, w_err = 0.0;
    double* hist = (double*)callocCheck(COLOR_BINS, sizeof(double));
    float* wref = (float*)callocCheck(COLOR_BINS, sizeof(float));
    int have_rebal = 0;
    while (fscanf(fp, "%31s", key) == 1) {
        if (!strcmp(key, "table")) {
            int k, a, b;
            if (fscanf(fp, "%d %d %d", &k, &a, &b) != 3) break;
            table_ok &= k == n_table && k < COLOR_BINS && color_bin_table[k][0] * 10 == a && color_bin_table[k][1] * 10 == b;
            n_table++;
        } else if (!strcmp(key, "gamut_cells")) {
            if (fscanf(fp, "%d", &gamut_ref) != 1) break;
        } else if (!strcmp(key, "gamut_outside")) {
            int o;
            if (fscanf(fp, "%d", &o) != 1) break;
            CHECK(o == 0, "reference: %d gamut cells outside the table", o);
        } else if (!strcmp(key, "lab")) {
            int r, g, b;
            double L, A, B;
            if (fscanf(fp, "%d %d %d %lf %lf %lf", &r, &g, &b, &L, &A, &B) != 6) break;
            float rgb[3] = {r / 255.0f, g / 255.0f, b / 255.0f}, lab[3];
            srgb_to_lab(lab, rgb, 1);
            double e = fmax(fabs(lab[0] - L), fmax(fabs(lab[1] - A), fabs(lab[2] - B)));
            if (e > lab_err) lab_err = e;
            n_lab++;
        } else if (!strcmp(key, "rgb")) {
            double L, A, B, R, G, Bl;
            if (fscanf(fp, "%lf %lf %lf %lf %lf %lf", &L, &A, &B, &R, &G, &Bl) != 6) break;
            float lab[3] = {(float)L, (float)A, (float)B}, rgb[3];
            lab_to_srgb(rgb, lab, 1);
            double e = fmax(fabs(rgb[0] - R), fmax(fabs(rgb[1] - G), fabs(rgb[2] - Bl)));
            if (e > rgb_err) rgb_err = e;
            n_rgb++;
        } else if (!strcmp(key, "bin")) {
            double a, b, w[5];
            int nearest, id[5];
            if (fscanf(fp, "%lf %lf %d", &a, &b, &nearest) != 3) break;
            for (int j = 0; j < 5; j++) if (fscanf(fp, "%d", &id[j]) != 1) break;
            for (int j = 0; j < 5; j++) if (fscanf(fp, "%lf", &w[j]) != 1) break;
            int gid[5];
            float gw[5];
            color_soft_encode(gid, gw, (float)a, (float)b);
            nearest_ok += color_bin_nearest((float)a, (float)b) == nearest;
            int same = 1;
            for (int j = 0; j < 5; j++) { same &= gid[j] == id[j]; w_err = fmax(w_err, fabs(gw[j] - w[j])); }
            ids_ok += same;
            n_bin++;
        } else if (!strcmp(key, "rebal_hist")) {
            for (int k = 0; k < COLOR_BINS; k++) if (fscanf(fp, "%lf", &hist[k]) != 1) break;
        } else if (!strcmp(key, "rebal_w")) {
            for (int k = 0; k < COLOR_BINS; k++) if (fscanf(fp, "%f", &wref[k]) != 1) break;
            have_rebal = 1;
        } else if (!strcmp(key, "image")) {
            RefImage* im = &images[n_images++];
            if (fscanf(fp, "%15s %d %d %d", im->name, &im->H, &im->W, &im->C) != 4) break;
            size_t n = (size_t)im->H * im->W * im->C;
            im->px = (unsigned char*)mallocCheck(n);
            for (size_t i = 0; i < n; i++) { int v; if (fscanf(fp, "%d", &v) != 1) break; im->px[i] = (unsigned char)v; }
        } else if (!strcmp(key, "psnr") || !strcmp(key, "ssim")) {
            char a[16], b[16];
            double ref;
            if (fscanf(fp, "%15s %15s %lf", a, b, &ref) != 3) break;
            RefImage *A = find_image(a), *B = find_image(b);
            CHECK(A && B, "reference images %s, %s", a, b);
            if (!A || !B) continue;
            double got = !strcmp(key, "psnr") ? color_psnr(A->px, B->px, (size_t)A->H * A->W * A->C)
                                              : color_ssim(A->px, B->px, A->H, A->W, A->C);
            int ok = fabs(got - ref) <= 1e-6 * fmax(1.0, fabs(ref));
            printf("%-4s %s %s vs %s: %.9f (skimage %.9f)\n", ok ? "ok" : "FAIL", key, b, a, got, ref);
            CHECK(ok, "%s %s %s", key, a, b);
        } else {
            CHECK(0, "unknown reference line '%s'", key);
            break;
        }
    }
    fclose(fp);
    CHECK(n_table == COLOR_BINS && table_ok, "the 313-bin table differs from pts_in_hull (%d rows)", n_table);
    printf("%-4s table of %d bins equals the reference\n", n_table == COLOR_BINS && table_ok ? "ok" : "FAIL", n_table);
    printf("%-4s sRGB -> Lab on %d colours: max abs err %.2e\n", lab_err < 2e-4 ? "ok" : "FAIL", n_lab, lab_err);
    CHECK(n_lab >= 40 && lab_err < 2e-4, "lab err %g", lab_err);
    printf("%-4s Lab -> sRGB on %d values (clipped): max abs err %.2e\n", rgb_err < 1e-5 ? "ok" : "FAIL", n_rgb, rgb_err);
    CHECK(n_rgb >= 10 && rgb_err < 1e-5, "rgb err %g", rgb_err);
    printf("%-4s bins of %d ab points: nearest %d, 5 nearest %d same, weight err %.2e\n",
           nearest_ok == n_bin && ids_ok == n_bin && w_err < 1e-5 ? "ok" : "FAIL", n_bin, nearest_ok, ids_ok, w_err);
    CHECK(n_bin >= 70 && nearest_ok == n_bin && ids_ok == n_bin && w_err < 1e-5, "bins");
    CHECK(have_rebal, "no rebalancing reference");
    if (have_rebal) {
        float w[COLOR_BINS];
        color_rebalance_weights(w, hist);
        check_close("rebalancing weights vs numpy", w, wref, COLOR_BINS, 1e-5);
    }
    // the gamut's cells, computed here from our own conversion
    unsigned char cells[23 * 23];
    int n_cells = color_gamut_cells(cells), inside = 0;
    for (int k = 0; k < COLOR_BINS; k++) inside += cells[(color_bin_table[k][0] + 11) * 23 + color_bin_table[k][1] + 11];
    printf("%-4s gamut cells %d (skimage %d), %d of them in the table\n", n_cells == gamut_ref && inside == n_cells ? "ok" : "FAIL",
           n_cells, gamut_ref, inside);
    CHECK(n_cells == gamut_ref && inside == n_cells, "gamut cells");
    free(hist); free(wref);
    for (int i = 0; i < n_images; i++) free(images[i].px);
}

// every 8-bit colour of a sampled set survives sRGB -> Lab -> sRGB to the byte, within 1e-4
static void test_round_trip(void) {
    size_t n = 64 * 64 * 64;
    float* rgb = (float*)mallocCheck(n * 3 * sizeof(float));
    float* lab = (float*)mallocCheck(n * 3 * sizeof(float));
    float* back = (float*)mallocCheck(n * 3 * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        int r = (int)(i >> 12) * 4 + 1, g = (int)((i >> 6) & 63) * 4 + 2, b = (int)(i & 63) * 4 + 3;
        if (i == 0) r = g = b = 0;
        if (i == n - 1) r = g = b = 255;
        rgb[i * 3] = r / 255.0f; rgb[i * 3 + 1] = g / 255.0f; rgb[i * 3 + 2] = b / 255.0f;
    }
    srgb_to_lab(lab, rgb, n);
    lab_to_srgb(back, lab, n);
    double err = 0.0;
    int bytes_ok = 1;
    for (size_t i = 0; i < n * 3; i++) {
        err = fmax(err, fabs(back[i] - rgb[i]));
        bytes_ok &= lrintf(back[i] * 255.0f) == lrintf(rgb[i] * 255.0f);
    }
    printf("%-4s sRGB -> Lab -> sRGB round trip on %zu colours: max abs err %.2e, bytes equal %d\n",
           err < 1e-4 && bytes_ok ? "ok" : "FAIL", n, err, bytes_ok);
    CHECK(err < 1e-4 && bytes_ok, "round trip");
    // the gray frame keeps L and has a = b = 0 (to 0.01: skimage's D65 white is not the matrix's row sums)
    float gray[6], lg[6];
    float src[6] = {0.9f, 0.2f, 0.1f, 0.1f, 0.5f, 0.8f};
    color_gray_frame(gray, src, 2);
    srgb_to_lab(lab, src, 2);
    srgb_to_lab(lg, gray, 2);
    int gray_ok = 1;
    for (int i = 0; i < 2; i++)
        gray_ok &= fabsf(lg[i * 3] - lab[i * 3]) < 1e-3f && fabsf(lg[i * 3 + 1]) < 1e-2f && fabsf(lg[i * 3 + 2]) < 1e-2f &&
                   gray[i * 3] == gray[i * 3 + 1] && gray[i * 3] == gray[i * 3 + 2];
    CHECK(gray_ok, "gray frame: L kept, R = G = B");
    free(rgb); free(lab); free(back);
}

// annealed mean on constructed distributions
static void test_annealed_mean(void) {
    const int K = COLOR_BINS;
    float* p = (float*)callocCheck((size_t)3 * K, sizeof(float));
    // pixel 0: all mass on bin 40; pixel 1: 0.6 on bin 10, 0.4 on bin 200; pixel 2: uniform
    p[40] = 1.0f;
    p[K + 10] = 0.6f; p[K + 200] = 0.4f;
    for (int k = 0; k < K; k++) p[2 * K + k] = 1.0f / K;
    float ab[6], ab1[6];
    color_annealed_mean(ab, p, 3, COLOR_TEMPERATURE);
    color_annealed_mean(ab1, p, 3, 1.0f);
    float a40, b40, a10, b10, a200, b200;
    color_bin_centre(40, &a40, &b40); color_bin_centre(10, &a10, &b10); color_bin_centre(200, &a200, &b200);
    double f1 = pow(0.6, 1.0 / COLOR_TEMPERATURE), f2 = pow(0.4, 1.0 / COLOR_TEMPERATURE);
    double ea = (f1 * a10 + f2 * a200) / (f1 + f2), eb = (f1 * b10 + f2 * b200) / (f1 + f2);
    double ma = 0.0, mb = 0.0;
    for (int k = 0; k < K; k++) { float a, b; color_bin_centre(k, &a, &b); ma += a / K; mb += b / K; }
    float got[8] = {ab[0], ab[1], ab[2], ab[3], ab[4], ab[5], ab1[2], ab1[3]};
    float want[8] = {a40, b40, (float)ea, (float)eb, (float)ma, (float)mb, 0.6f * a10 + 0.4f * a200, 0.6f * b10 + 0.4f * b200};
    check_close("annealed mean (one bin, two bins T=0.38, uniform, T=1)", got, want, 8, 1e-5);
    // T = 0.38 lies between the mean (T = 1) and the mode: closer to bin 10 than the mean is
    CHECK(fabs(ab[2] - a10) < fabs(ab1[2] - a10) || a10 == a200, "annealing moves towards the mode");
    free(p);
}

// ---- the loss ----
typedef struct { int L, B, Q, H4, W4; float *cls, *msk; int* ids; float *w, *rebal; } LossCase;

static double color_loss_value(void* ctx) {
    LossCase* c = (LossCase*)ctx;
    return color_loss(c->cls, c->msk, c->L, c->B, c->Q, c->H4, c->W4, c->ids, c->w, c->rebal, NULL, NULL);
}

static void test_loss(void) {
    Rng rng;
    rng_seed(&rng, 7);
    LossCase c = {2, 2, 3, 3, 5, NULL, NULL, NULL, NULL, NULL};
    const int K1 = COLOR_BINS + 1, NB = COLOR_NEIGHBOURS;
    size_t ncls = (size_t)c.L * c.B * c.Q * K1, P = (size_t)c.H4 * c.W4, nmsk = (size_t)c.L * c.B * c.Q * P;
    c.cls = random_tensor(&rng, ncls, -2.0f, 2.0f);
    c.msk = random_tensor(&rng, nmsk, -3.0f, 3.0f);
    // targets of two random colour images of 10 x 14 (map 3 x 5: the last column is padding)
    int H = 10, W = 14;
    c.ids = (int*)mallocCheck((size_t)c.B * P * NB * sizeof(int));
    c.w = (float*)mallocCheck((size_t)c.B * P * NB * sizeof(float));
    for (int b = 0; b < c.B; b++) {
        float* img = random_tensor(&rng, (size_t)H * W * 3, 0.0f, 1.0f);
        color_targets(c.ids + (size_t)b * P * NB, c.w + (size_t)b * P * NB, img, H, W, c.H4, c.W4);
        free(img);
    }
    int pad_zero = 1, valid = 0;
    for (int b = 0; b < c.B; b++)
        for (size_t p = 0; p < P; p++) {
            int x = (int)(p % c.W4), y = (int)(p / c.W4);
            int inside = 4 * y < H && 4 * x < W;
            float wsum = 0.0f;
            for (int j = 0; j < NB; j++) wsum += c.w[((size_t)b * P + p) * NB + j];
            pad_zero &= inside ? fabsf(wsum - 1.0f) < 1e-5f : wsum == 0.0f;
            valid += inside;
        }
    CHECK(pad_zero && valid == c.B * 3 * 4, "targets: weights sum to 1 inside, 0 on the padding");
    c.rebal = random_tensor(&rng, COLOR_BINS, 0.5f, 2.0f);
    // dense recomputation through color_distribution
    double ref = 0.0;
    float* p = (float*)mallocCheck(P * COLOR_BINS * sizeof(float));
    for (int l = 0; l < c.L; l++) {
        double s = 0.0;
        int nv = 0;
        for (int b = 0; b < c.B; b++) {
            color_distribution(p, c.cls + ((size_t)l * c.B + b) * c.Q * K1, c.msk + ((size_t)l * c.B + b) * c.Q * P, c.Q, (int)P);
            for (size_t q = 0; q < P; q++) {
                const int* id = c.ids + ((size_t)b * P + q) * NB;
                const float* z = c.w + ((size_t)b * P + q) * NB;
                if (!(z[0] > 0.0f)) continue;
                double lp = 0.0;
                for (int j = 0; j < NB; j++) lp -= z[j] * log(p[q * COLOR_BINS + id[j]]);
                s += c.rebal[id[0]] * lp;
                nv++;
            }
        }
        ref += s / nv;
    }
    free(p);
    float got = (float)color_loss_value(&c), reff = (float)ref;
    check_close("colour loss vs dense distribution", &got, &reff, 1, 1e-5);
    float* dcls = (float*)callocCheck(ncls, sizeof(float));
    float* dmsk = (float*)callocCheck(nmsk, sizeof(float));
    color_loss(c.cls, c.msk, c.L, c.B, c.Q, c.H4, c.W4, c.ids, c.w, c.rebal, dcls, dmsk);
    grad_check("colour loss / class logits", c.cls, ncls, dcls, color_loss_value, &c, 3e-2f, 2e-2, 400);
    grad_check("colour loss / mask logits", c.msk, nmsk, dmsk, color_loss_value, &c, 3e-2f, 2e-2, 400);
    // accumulation: a second backward doubles the gradient
    float* d2 = (float*)mallocCheck(nmsk * sizeof(float));
    memcpy(d2, dmsk, nmsk * sizeof(float));
    color_loss(c.cls, c.msk, c.L, c.B, c.Q, c.H4, c.W4, c.ids, c.w, c.rebal, NULL, dmsk);
    for (size_t i = 0; i < nmsk; i++) d2[i] *= 2.0f;
    check_close("colour loss backward accumulates", dmsk, d2, nmsk, 1e-6);
    free(d2); free(dcls); free(dmsk);
    free(c.cls); free(c.msk); free(c.ids); free(c.w); free(c.rebal);
}

// the model side: checkpoint round trip of a tiny colorization model, and a few steps on one
// image lower its colour loss
static void test_model(void) {
    ModelConfig cfg = model_config_tiny(COLOR_BINS);
    cfg.colorize = 1;
    int B = 2, H = 32, W = 32;
    Model* m = model_create(&cfg, B, H, W);
    model_init_random(m, 3);
    float w[COLOR_BINS], w2[COLOR_BINS];
    for (int k = 0; k < COLOR_BINS; k++) w[k] = 0.5f + (k % 7) * 0.25f;
    model_set_color_weights(m, w);
    system("mkdir -p test/tmp");
    model_save(m, "test/tmp/color_tiny.bin");
    ModelConfig rc = model_read_config("test/tmp/color_tiny.bin");
    CHECK(rc.colorize == 1 && rc.num_classes == COLOR_BINS, "checkpoint keeps the colorization task (%d, %d)", rc.colorize, rc.num_classes);
    Model* m2 = model_load("test/tmp/color_tiny.bin", B, H, W);
    model_color_weights(m2, w2);
    CHECK(memcmp(w, w2, sizeof(w)) == 0 && model_param_hash(m, 1) == model_param_hash(m2, 1), "checkpoint keeps the weights and h");
    model_free(m2);
    // two colour images: a red left half and a blue right half, and the reverse
    Rng rng;
    rng_seed(&rng, 5);
    float* img = (float*)mallocCheck((size_t)B * H * W * 3 * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                float* px = img + (((size_t)b * H + y) * W + x) * 3;
                int left = (x < W / 2) ^ b;
                px[0] = left ? 0.8f : 0.1f; px[1] = 0.2f + 0.3f * y / H; px[2] = left ? 0.1f : 0.8f;
            }
    float* gray = (float*)mallocCheck((size_t)B * H * W * 3 * sizeof(float));
    color_gray_frame(gray, img, (size_t)B * H * W);
    int Q, K, H4, W4, Hm, Wm;
    model_prediction_sizes(m, &Q, &K, &H4, &W4, &Hm, &Wm);
    int* ids = (int*)mallocCheck((size_t)B * H4 * W4 * COLOR_NEIGHBOURS * sizeof(int));
    float* tw = (float*)mallocCheck((size_t)B * H4 * W4 * COLOR_NEIGHBOURS * sizeof(float));
    for (int b = 0; b < B; b++)
        color_targets(ids + (size_t)b * H4 * W4 * COLOR_NEIGHBOURS, tw + (size_t)b * H4 * W4 * COLOR_NEIGHBOURS,
                      img + (size_t)b * H * W * 3, H, W, H4, W4);
    OptConfig opt = opt_config_ttt();
    opt.lr = 3e-3f;
    float first = 0.0f, last = 0.0f, lm, ls;
    for (int s = 0; s < 20; s++) {
        model_train_step_colorize(m, gray, ids, tw, B, &opt, 1.0f, &rng, &lm, &ls);
        if (s == 0) first = lm;
        last = lm;
    }
    printf("%-4s 20 colorization steps: colour loss %.4f -> %.4f, mae %.4f\n", last < 0.85f * first ? "ok" : "FAIL", first, last, ls);
    CHECK(isfinite(last) && last < 0.85f * first, "training lowers the colour loss");
    // prediction: the logits decode to a frame
    float* out = (float*)mallocCheck((size_t)H * W * 3 * sizeof(float));
    float* cls = (float*)mallocCheck((size_t)Q * (K + 1) * sizeof(float));
    float* msk = (float*)mallocCheck((size_t)Q * H4 * W4 * sizeof(float));
    model_predict_logits(m, gray);
    model_last_logits(m, cls, msk);
    color_decode(out, gray, cls, msk, Q, H4, W4, H, W, COLOR_TEMPERATURE);
    CHECK(is_finite_array(out, (size_t)H * W * 3), "decoded frame finite");
    free(out); free(cls); free(msk);
    free(img); free(gray); free(ids); free(tw);
    model_free(m);
}

int main(void) {
    test_reference();
    test_round_trip();
    test_annealed_mean();
    test_loss();
    test_model();
    return test_summary("test_color");
}
