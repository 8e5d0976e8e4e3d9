// color.c: video colorization, the paper's fourth application (Table 3), after Zhang, Isola and
// Efros, "Colorful Image Colorization" (ECCV 2016). The Y model sees the gray frame (its
// lightness L as a gray sRGB image, replicated to R, G, B) and h predicts, per pixel of its
// 1/4-resolution map, a distribution over the 313 in-gamut ab bins of grid 10 through
// Mask2Former's semantic path (the bins are h's classes). Everything here runs on the host.
//
//   sRGB <-> CIE Lab      D65, 2 degree observer, skimage.color's constants and formulas
//   313 ab bins           Zhang's pts_in_hull table (below; see the comment above it)
//   soft encoding         the 5 nearest bins of a pixel's ab, Gaussian weights sigma 5, sum 1
//   rebalancing           w = 1 / ((1 - lambda) p~ + lambda / Q), E_p~[w] = 1, lambda 0.5,
//                         p~ the empirical bin distribution of the training images smoothed
//                         with a Gaussian of sigma 5 over the ab plane
//   distribution of h     scores_k = sum_q softmax(class_q)_k sigmoid(mask_q), k < 313 (the
//                         semantic scores); p_k = (scores_k + eps) / (sum_k scores_k + Q eps)
//   loss                  -v(z) sum_k z_k log p_k per pixel, v(z) = w of z's most likely bin
//   decoding              the annealed mean, T = 0.38: f_T(p) = p^(1/T) / sum p^(1/T),
//                         ab = sum_k f_T(p)_k centre_k, bilinearly upsampled x4 to the frame,
//                         with the frame's own L, back to sRGB
//   scores                PSNR and SSIM (Wang et al. 2004) on the 8-bit RGB frames, as
//                         skimage.metrics computes them (see color_ssim)
#include "ttt.h"

// ----------------------------------------------------------------------------
// the 313 ab bins
//
// Zhang et al.'s resources/pts_in_hull.npy (richzhang/colorization), as (a / 10, b / 10).
// The rule "the 10 x 10 cells [a-5, a+5) x [b-5, b+5) that hold the ab of some 8-bit sRGB
// colour" (color_gamut_cells) gives 261 cells, every one of them in this table; the table
// holds 52 more cells along the gamut's boundary (each within 14 ab units of an in-gamut
// colour). No distance or cell rule over the sRGB gamut gives exactly these 313 (the
// counts jump 311 -> 314 around a distance of 13.5 and 310 -> 314 for the Chebyshev
// distance), so the table is embedded as Zhang published it; dev/color_reference.py
// re-derives the 261 and checks them against it.
const signed char color_bin_table[COLOR_BINS][2] = {
    {-9,5},{-9,6},{-9,7},{-9,8},{-9,9},{-8,2},{-8,3},{-8,4},{-8,5},{-8,6},{-8,7},{-8,8},{-8,9},
    {-7,0},{-7,1},{-7,2},{-7,3},{-7,4},{-7,5},{-7,6},{-7,7},{-7,8},{-7,9},{-6,-2},{-6,-1},{-6,0},
    {-6,1},{-6,2},{-6,3},{-6,4},{-6,5},{-6,6},{-6,7},{-6,8},{-6,9},{-5,-3},{-5,-2},{-5,-1},{-5,0},
    {-5,1},{-5,2},{-5,3},{-5,4},{-5,5},{-5,6},{-5,7},{-5,8},{-5,9},{-5,10},{-4,-4},{-4,-3},{-4,-2},
    {-4,-1},{-4,0},{-4,1},{-4,2},{-4,3},{-4,4},{-4,5},{-4,6},{-4,7},{-4,8},{-4,9},{-4,10},{-3,-5},
    {-3,-4},{-3,-3},{-3,-2},{-3,-1},{-3,0},{-3,1},{-3,2},{-3,3},{-3,4},{-3,5},{-3,6},{-3,7},{-3,8},
    {-3,9},{-3,10},{-2,-5},{-2,-4},{-2,-3},{-2,-2},{-2,-1},{-2,0},{-2,1},{-2,2},{-2,3},{-2,4},
    {-2,5},{-2,6},{-2,7},{-2,8},{-2,9},{-2,10},{-1,-6},{-1,-5},{-1,-4},{-1,-3},{-1,-2},{-1,-1},
    {-1,0},{-1,1},{-1,2},{-1,3},{-1,4},{-1,5},{-1,6},{-1,7},{-1,8},{-1,9},{-1,10},{0,-7},{0,-6},
    {0,-5},{0,-4},{0,-3},{0,-2},{0,-1},{0,0},{0,1},{0,2},{0,3},{0,4},{0,5},{0,6},{0,7},{0,8},{0,9},
    {0,10},{1,-8},{1,-7},{1,-6},{1,-5},{1,-4},{1,-3},{1,-2},{1,-1},{1,0},{1,1},{1,2},{1,3},{1,4},
    {1,5},{1,6},{1,7},{1,8},{1,9},{2,-8},{2,-7},{2,-6},{2,-5},{2,-4},{2,-3},{2,-2},{2,-1},{2,0},
    {2,1},{2,2},{2,3},{2,4},{2,5},{2,6},{2,7},{2,8},{2,9},{3,-9},{3,-8},{3,-7},{3,-6},{3,-5},{3,-4},
    {3,-3},{3,-2},{3,-1},{3,0},{3,1},{3,2},{3,3},{3,4},{3,5},{3,6},{3,7},{3,8},{3,9},{4,-10},{4,-9},
    {4,-8},{4,-7},{4,-6},{4,-5},{4,-4},{4,-3},{4,-2},{4,-1},{4,0},{4,1},{4,2},{4,3},{4,4},{4,5},
    {4,6},{4,7},{4,8},{4,9},{5,-10},{5,-9},{5,-8},{5,-7},{5,-6},{5,-5},{5,-4},{5,-3},{5,-2},{5,-1},
    {5,0},{5,1},{5,2},{5,3},{5,4},{5,5},{5,6},{5,7},{5,8},{6,-11},{6,-10},{6,-9},{6,-8},{6,-7},
    {6,-6},{6,-5},{6,-4},{6,-3},{6,-2},{6,-1},{6,0},{6,1},{6,2},{6,3},{6,4},{6,5},{6,6},{6,7},{6,8},
    {7,-11},{7,-10},{7,-9},{7,-8},{7,-7},{7,-6},{7,-5},{7,-4},{7,-3},{7,-2},{7,-1},{7,0},{7,1},
    {7,2},{7,3},{7,4},{7,5},{7,6},{7,7},{7,8},{8,-11},{8,-10},{8,-9},{8,-8},{8,-7},{8,-6},{8,-5},
    {8,-4},{8,-3},{8,-2},{8,-1},{8,0},{8,1},{8,2},{8,3},{8,4},{8,5},{8,6},{8,7},{9,-11},{9,-10},
    {9,-9},{9,-8},{9,-7},{9,-6},{9,-5},{9,-4},{9,-3},{9,-2},{9,-1},{9,0},{9,1},{9,2},{9,3},{9,4},
    {9,5},{9,6},{9,7},{10,-9},{10,-8},{10,-7},{10,-6},{10,-5},{10,-4},{10,-3},{10,-2},{10,-1},
    {10,0},
};

void color_bin_centre(int k, float* a, float* b) {
    *a = 10.0f * color_bin_table[k][0];
    *b = 10.0f * color_bin_table[k][1];
}

// ----------------------------------------------------------------------------
// sRGB <-> CIE Lab (skimage.color.rgb2lab / lab2rgb: D65 white (0.95047, 1, 1.08883),
// sRGB companding, the xyz_from_rgb matrix below and its inverse)

static const double xyz_from_rgb[3][3] = {{0.412453, 0.357580, 0.180423},
                                          {0.212671, 0.715160, 0.072169},
                                          {0.019334, 0.119193, 0.950227}};
static const double d65_white[3] = {0.95047, 1.0, 1.08883};

static double srgb_to_linear(double c) { return c > 0.04045 ? pow((c + 0.055) / 1.055, 2.4) : c / 12.92; }
static double linear_to_srgb(double c) { return c > 0.0031308 ? 1.055 * pow(c, 1.0 / 2.4) - 0.055 : 12.92 * c; }
static double lab_f(double t) { return t > 0.008856 ? cbrt(t) : 7.787 * t + 16.0 / 116.0; }
static double lab_f_inv(double f) { return f > 0.2068966 ? f * f * f : (f - 16.0 / 116.0) / 7.787; }

// rgb_from_xyz: the inverse of xyz_from_rgb (numpy.linalg.inv in skimage), by cofactors
static void rgb_from_xyz(double inv[3][3]) {
    const double (*m)[3] = xyz_from_rgb;
    double det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
                 m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            int r0 = (j + 1) % 3, r1 = (j + 2) % 3, c0 = (i + 1) % 3, c1 = (i + 2) % 3;
            inv[i][j] = (m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]) / det;
        }
}

// rgb (n, 3) in [0, 1] -> lab (n, 3): L in [0, 100], a, b about [-110, 110]
void srgb_to_lab(float* lab, const float* rgb, size_t n) {
    #pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        double lin[3], f[3];
        for (int c = 0; c < 3; c++) lin[c] = srgb_to_linear(rgb[i * 3 + c]);
        for (int r = 0; r < 3; r++) {
            double x = xyz_from_rgb[r][0] * lin[0] + xyz_from_rgb[r][1] * lin[1] + xyz_from_rgb[r][2] * lin[2];
            f[r] = lab_f(x / d65_white[r]);
        }
        lab[i * 3 + 0] = (float)(116.0 * f[1] - 16.0);
        lab[i * 3 + 1] = (float)(500.0 * (f[0] - f[1]));
        lab[i * 3 + 2] = (float)(200.0 * (f[1] - f[2]));
    }
}

// lab (n, 3) -> rgb (n, 3), clipped to [0, 1] as skimage does (z < 0 clipped to 0 first)
void lab_to_srgb(float* rgb, const float* lab, size_t n) {
    double inv[3][3];
    rgb_from_xyz(inv);
    #pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        double fy = (lab[i * 3] + 16.0) / 116.0, fx = lab[i * 3 + 1] / 500.0 + fy, fz = fy - lab[i * 3 + 2] / 200.0;
        if (fz < 0.0) fz = 0.0;
        double xyz[3] = {lab_f_inv(fx) * d65_white[0], lab_f_inv(fy) * d65_white[1], lab_f_inv(fz) * d65_white[2]};
        for (int c = 0; c < 3; c++) {
            double v = linear_to_srgb(inv[c][0] * xyz[0] + inv[c][1] * xyz[1] + inv[c][2] * xyz[2]);
            rgb[i * 3 + c] = (float)(v < 0.0 ? 0.0 : v > 1.0 ? 1.0 : v);
        }
    }
}

// the gray frame the model sees: the sRGB colour of (L, 0, 0) for each pixel's L, so R = G = B
// (the L channel replicated to three channels, as a gray image of the same lightness)
void color_gray_frame(float* gray, const float* rgb, size_t n) {
    float* lab = (float*)mallocCheck(n * 3 * sizeof(float));
    srgb_to_lab(lab, rgb, n);
    for (size_t i = 0; i < n; i++) lab[i * 3 + 1] = lab[i * 3 + 2] = 0.0f;
    lab_to_srgb(gray, lab, n);
    for (size_t i = 0; i < n; i++) {   // equal up to rounding; made exactly equal
        float v = (gray[i * 3] + gray[i * 3 + 1] + gray[i * 3 + 2]) / 3.0f;
        gray[i * 3] = gray[i * 3 + 1] = gray[i * 3 + 2] = v;
    }
    free(lab);
}

// The cells of the ab grid (centres 10 i, 10 j, i, j in [-11, 11]) that hold the ab of some
// 8-bit sRGB colour (rounded to the nearest centre); in_gamut (23 x 23, [i + 11][j + 11]) or NULL.
// Returns their number (261; see the table above). 2^24 conversions: about a second.
int color_gamut_cells(unsigned char* in_gamut) {
    unsigned char cells[23 * 23];
    memset(cells, 0, sizeof(cells));
    float* rgb = (float*)mallocCheck(256 * 256 * 3 * sizeof(float));
    float* lab = (float*)mallocCheck(256 * 256 * 3 * sizeof(float));
    for (int r = 0; r < 256; r++) {
        for (int g = 0; g < 256; g++)
            for (int b = 0; b < 256; b++) {
                float* p = rgb + ((size_t)g * 256 + b) * 3;
                p[0] = r / 255.0f; p[1] = g / 255.0f; p[2] = b / 255.0f;
            }
        srgb_to_lab(lab, rgb, 256 * 256);
        for (size_t i = 0; i < 256 * 256; i++) {
            int ia = (int)lrint(lab[i * 3 + 1] / 10.0), ib = (int)lrint(lab[i * 3 + 2] / 10.0);
            if (ia >= -11 && ia <= 11 && ib >= -11 && ib <= 11) cells[(ia + 11) * 23 + ib + 11] = 1;
        }
    }
    free(rgb); free(lab);
    int n = 0;
    for (int i = 0; i < 23 * 23; i++) n += cells[i];
    if (in_gamut) memcpy(in_gamut, cells, sizeof(cells));
    return n;
}

// ----------------------------------------------------------------------------
// quantisation and soft encoding

static float bin_dist2(int k, float a, float b) {
    float da = a - 10.0f * color_bin_table[k][0], db = b - 10.0f * color_bin_table[k][1];
    return da * da + db * db;
}

// the nearest bin (Euclidean in ab; the lower index on a tie)
int color_bin_nearest(float a, float b) {
    int best = 0;
    float bd = bin_dist2(0, a, b);
    for (int k = 1; k < COLOR_BINS; k++) {
        float d = bin_dist2(k, a, b);
        if (d < bd) { bd = d; best = k; }
    }
    return best;
}

// Zhang's soft encoding: ids (5) the COLOR_NEIGHBOURS nearest bins, nearest first (the lower
// index on a tie), w (5) = exp(-d^2 / (2 sigma^2)) normalised to sum 1, sigma COLOR_SIGMA
void color_soft_encode(int* ids, float* w, float a, float b) {
    float d[COLOR_NEIGHBOURS];
    int n = 0;
    for (int k = 0; k < COLOR_BINS; k++) {   // insertion into the sorted short list
        float dk = bin_dist2(k, a, b);
        if (n == COLOR_NEIGHBOURS && dk >= d[n - 1]) continue;
        int j = n < COLOR_NEIGHBOURS ? n++ : n - 1;
        while (j > 0 && d[j - 1] > dk) { d[j] = d[j - 1]; ids[j] = ids[j - 1]; j--; }
        d[j] = dk; ids[j] = k;
    }
    double sum = 0.0, e[COLOR_NEIGHBOURS];
    for (int j = 0; j < COLOR_NEIGHBOURS; j++) { e[j] = exp(-(d[j] - d[0]) / (2.0 * COLOR_SIGMA * COLOR_SIGMA)); sum += e[j]; }
    for (int j = 0; j < COLOR_NEIGHBOURS; j++) w[j] = (float)(e[j] / sum);
}

// The training targets of one image at h's resolution: the mean ab of each 4 x 4 block of the
// frame (pixels inside H x W) soft-encoded. rgb (H, W, 3) in [0, 1]; ids, w (H4, W4, 5); pixels
// of the map outside the frame (padding: y >= ceil(H / 4) or x >= ceil(W / 4)) get w = 0 and
// ids 0 (no loss).
void color_targets(int* ids, float* w, const float* rgb, int H, int W, int H4, int W4) {
    size_t n = (size_t)H * W;
    float* lab = (float*)mallocCheck(n * 3 * sizeof(float));
    srgb_to_lab(lab, rgb, n);
    const int NB = COLOR_NEIGHBOURS;
    for (int y = 0; y < H4; y++)
        for (int x = 0; x < W4; x++) {
            size_t o = ((size_t)y * W4 + x) * NB;
            double sa = 0.0, sb = 0.0;
            int cnt = 0;
            for (int dy = 0; dy < 4; dy++)
                for (int dx = 0; dx < 4; dx++) {
                    int yy = 4 * y + dy, xx = 4 * x + dx;
                    if (yy >= H || xx >= W) continue;
                    sa += lab[((size_t)yy * W + xx) * 3 + 1];
                    sb += lab[((size_t)yy * W + xx) * 3 + 2];
                    cnt++;
                }
            if (cnt == 0) {
                for (int j = 0; j < NB; j++) { ids[o + j] = 0; w[o + j] = 0.0f; }
                continue;
            }
            color_soft_encode(ids + o, w + o, (float)(sa / cnt), (float)(sb / cnt));
        }
    free(lab);
}

// ----------------------------------------------------------------------------
// class rebalancing

// hist (COLOR_BINS) += the nearest-bin counts of n pixels rgb (n, 3)
void color_hist_add(double* hist, const float* rgb, size_t n) {
    float* lab = (float*)mallocCheck(n * 3 * sizeof(float));
    srgb_to_lab(lab, rgb, n);
    for (size_t i = 0; i < n; i++) hist[color_bin_nearest(lab[i * 3 + 1], lab[i * 3 + 2])] += 1.0;
    free(lab);
}

// Zhang's weights from bin counts hist (COLOR_BINS, not all 0):
//   p = hist / sum; p~_q = sum_r p_r G(c_q - c_r) / sum_s G(c_s - c_r)   (each bin's mass spread
//   over the bins by a Gaussian of sigma 5 in the ab plane, mass kept);
//   w_q = 1 / ((1 - lambda) p~_q + lambda / Q), lambda 0.5, scaled so that sum_q p~_q w_q = 1
void color_rebalance_weights(float* w, const double* hist) {
    const int K = COLOR_BINS;
    double total = 0.0;
    for (int k = 0; k < K; k++) total += hist[k];
    if (!(total > 0.0)) ttt_die("colour rebalancing: no pixels counted");
    double* ps = (double*)callocCheck(K, sizeof(double));
    for (int r = 0; r < K; r++) {
        if (hist[r] == 0.0) continue;
        double z = 0.0;
        for (int s = 0; s < K; s++) z += exp(-bin_dist2(s, 10.0f * color_bin_table[r][0], 10.0f * color_bin_table[r][1]) / (2.0 * COLOR_SIGMA * COLOR_SIGMA));
        for (int q = 0; q < K; q++)
            ps[q] += hist[r] / total * exp(-bin_dist2(q, 10.0f * color_bin_table[r][0], 10.0f * color_bin_table[r][1]) / (2.0 * COLOR_SIGMA * COLOR_SIGMA)) / z;
    }
    double e = 0.0;
    double* wd = (double*)mallocCheck(K * sizeof(double));
    for (int q = 0; q < K; q++) { wd[q] = 1.0 / ((1.0 - COLOR_LAMBDA) * ps[q] + COLOR_LAMBDA / K); e += ps[q] * wd[q]; }
    for (int q = 0; q < K; q++) w[q] = (float)(wd[q] / e);
    free(ps); free(wd);
}

// ----------------------------------------------------------------------------
// the distribution of h and the loss

#define COLOR_EPS 1e-6   // keeps log p finite where every query's mask is off

// softmax of one class row (K + 1 logits) into a (double)
static void class_softmax(double* a, const float* logits, int K1) {
    double mx = logits[0], s = 0.0;
    for (int k = 1; k < K1; k++) if (logits[k] > mx) mx = logits[k];
    for (int k = 0; k < K1; k++) { a[k] = exp(logits[k] - mx); s += a[k]; }
    for (int k = 0; k < K1; k++) a[k] /= s;
}

static double sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }

// p (N, COLOR_BINS): the distribution of each of the N pixels of one image's maps.
// class_logits (Q, COLOR_BINS + 1), mask_logits (Q, N).
void color_distribution(float* p, const float* class_logits, const float* mask_logits, int Q, int N) {
    const int K = COLOR_BINS, K1 = K + 1;
    double* a = (double*)mallocCheck((size_t)Q * K1 * sizeof(double));
    for (int q = 0; q < Q; q++) class_softmax(a + (size_t)q * K1, class_logits + (size_t)q * K1, K1);
    #pragma omp parallel
    {
        double* sc = (double*)mallocCheck(K * sizeof(double));
        #pragma omp for
        for (int i = 0; i < N; i++) {
            for (int k = 0; k < K; k++) sc[k] = 0.0;
            for (int q = 0; q < Q; q++) {
                double s = sigmoid_d(mask_logits[(size_t)q * N + i]);
                const double* aq = a + (size_t)q * K1;
                for (int k = 0; k < K; k++) sc[k] += aq[k] * s;
            }
            double S = 0.0;
            for (int k = 0; k < K; k++) S += sc[k];
            for (int k = 0; k < K; k++) p[(size_t)i * K + k] = (float)((sc[k] + COLOR_EPS) / (S + K * COLOR_EPS));
        }
        free(sc);
    }
    free(a);
}

// The rebalanced multinomial cross-entropy of B images over the L decoder layers of h:
//   loss = sum_l 1/N_l sum_(b, p valid) v_p * -sum_j z_pj log p_l[b, p, k_pj]
// z (ids, w) from color_targets, (B, H4, W4, 5); a pixel is valid when its weights are not all
// 0 (N_l: their number, the same in every layer); v_p = rebal[k_p0] (the nearest bin: Zhang's
// v(z) = w of z's most likely bin). class_logits (L, B, Q, COLOR_BINS + 1), mask_logits
// (L, B, Q, H4, W4). dcls / dmask (same layouts) ACCUMULATE the gradient, or NULL.
// Backward, per pixel, with a = softmax(class), s = sigmoid(mask), S = sum_q (1 - a_qK) s_q,
// s_k = sum_q a_qk s_q, D = S + K eps:  dloss/dscore_k = v (1/D - [k = k_j] z_j / (s_kj + eps));
//   dmask_q += s_q (1 - s_q) v ((1 - a_qK) / D - sum_j z_j a_q,kj / (s_kj + eps));
//   da_qk = sum_p s_q dloss/dscore_k;  dclass_qi += a_qi (da_qi - sum_k a_qk da_qk), da_qK = 0.
float color_loss(const float* class_logits, const float* mask_logits, int L, int B, int Q, int H4, int W4,
                 const int* ids, const float* w, const float* rebal, float* dcls, float* dmask) {
    const int K = COLOR_BINS, K1 = K + 1, NB = COLOR_NEIGHBOURS;
    size_t P = (size_t)H4 * W4;
    int n_valid = 0;
    for (size_t i = 0; i < (size_t)B * P; i++) n_valid += w[i * NB] > 0.0f;
    if (n_valid == 0) return 0.0f;
    double total = 0.0;
    double* a = (double*)mallocCheck((size_t)Q * K1 * sizeof(double));
    double* da = (double*)mallocCheck((size_t)Q * K1 * sizeof(double));
    double* s = (double*)mallocCheck((size_t)Q * P * sizeof(double));
    for (int l = 0; l < L; l++)
        for (int b = 0; b < B; b++) {
            const float* cl = class_logits + ((size_t)l * B + b) * Q * K1;
            const float* ml = mask_logits + ((size_t)l * B + b) * Q * P;
            const int* idb = ids + (size_t)b * P * NB;
            const float* wb = w + (size_t)b * P * NB;
            for (int q = 0; q < Q; q++) class_softmax(a + (size_t)q * K1, cl + (size_t)q * K1, K1);
            for (size_t i = 0; i < (size_t)Q * P; i++) s[i] = sigmoid_d(ml[i]);
            memset(da, 0, (size_t)Q * K1 * sizeof(double));
            double lsum = 0.0;
            for (size_t p = 0; p < P; p++) {
                const int* id = idb + p * NB;
                const float* z = wb + p * NB;
                if (!(z[0] > 0.0f)) continue;
                double S = 0.0, sk[COLOR_NEIGHBOURS] = {0};
                for (int q = 0; q < Q; q++) {
                    double sq = s[(size_t)q * P + p];
                    const double* aq = a + (size_t)q * K1;
                    S += (1.0 - aq[K]) * sq;
                    for (int j = 0; j < NB; j++) sk[j] += aq[id[j]] * sq;
                }
                double D = S + K * COLOR_EPS, v = rebal[id[0]], lp = 0.0;
                for (int j = 0; j < NB; j++) lp -= z[j] * log((sk[j] + COLOR_EPS) / D);
                lsum += v * lp;
                if (!dcls && !dmask) continue;
                double c = v / D / n_valid, e[COLOR_NEIGHBOURS];   // d(loss_l) / d score
                for (int j = 0; j < NB; j++) e[j] = v * z[j] / (sk[j] + COLOR_EPS) / n_valid;
                for (int q = 0; q < Q; q++) {
                    double sq = s[(size_t)q * P + p];
                    double* aq = a + (size_t)q * K1;
                    double* dq = da + (size_t)q * K1;
                    double g = c * (1.0 - aq[K]);
                    for (int j = 0; j < NB; j++) { g -= e[j] * aq[id[j]]; dq[id[j]] -= e[j] * sq; }
                    dq[K] += c * sq;   // the dense part c s_q for every k < K, added below
                    if (dmask) dmask[((size_t)l * B + b) * Q * P + (size_t)q * P + p] += (float)(sq * (1.0 - sq) * g);
                }
            }
            total += lsum / n_valid;
            if (!dcls) continue;
            for (int q = 0; q < Q; q++) {
                double* aq = a + (size_t)q * K1;
                double* dq = da + (size_t)q * K1;
                double dense = dq[K];
                dq[K] = 0.0;
                double dot = 0.0;
                for (int k = 0; k < K; k++) { dq[k] += dense; dot += aq[k] * dq[k]; }
                float* dc = dcls + (((size_t)l * B + b) * Q + q) * K1;
                for (int k = 0; k < K1; k++) dc[k] += (float)(aq[k] * (dq[k] - dot));
            }
        }
    free(a); free(da); free(s);
    return (float)total;
}

// ----------------------------------------------------------------------------
// decoding

// ab (N, 2) = the annealed mean of p (N, COLOR_BINS): f_T(p)_k = exp(log p_k / T) / sum, then
// sum_k f_T(p)_k centre_k. T = 1: the mean; T -> 0: the mode.
void color_annealed_mean(float* ab, const float* p, int N, float T) {
    const int K = COLOR_BINS;
    #pragma omp parallel for if (N > 1024)
    for (int i = 0; i < N; i++) {
        const float* pi = p + (size_t)i * K;
        double mx = -INFINITY;
        for (int k = 0; k < K; k++) { double lk = log(pi[k] > 1e-30f ? pi[k] : 1e-30f) / T; if (lk > mx) mx = lk; }
        double z = 0.0, sa = 0.0, sb = 0.0;
        for (int k = 0; k < K; k++) {
            double f = exp(log(pi[k] > 1e-30f ? pi[k] : 1e-30f) / T - mx);
            z += f; sa += f * 10.0 * color_bin_table[k][0]; sb += f * 10.0 * color_bin_table[k][1];
        }
        ab[(size_t)i * 2] = (float)(sa / z);
        ab[(size_t)i * 2 + 1] = (float)(sb / z);
    }
}

// The colourised frame rgb (H, W, 3) in [0, 1]: L of frame (H, W, 3) (the gray input: any
// frame with that lightness), ab the annealed mean (T) of h's distribution on its H4 x W4 map
// (class_logits (Q, COLOR_BINS + 1), mask_logits (Q, H4, W4): the last decoder layer, of the
// padded frame), upsampled bilinearly x4 (pixel centres: map coordinate (y + 0.5) / 4 - 0.5,
// clamped at the edges).
void color_decode(float* rgb, const float* frame, const float* class_logits, const float* mask_logits,
                  int Q, int H4, int W4, int H, int W, float T) {
    size_t N4 = (size_t)H4 * W4, n = (size_t)H * W;
    float* p = (float*)mallocCheck(N4 * COLOR_BINS * sizeof(float));
    float* ab4 = (float*)mallocCheck(N4 * 2 * sizeof(float));
    color_distribution(p, class_logits, mask_logits, Q, (int)N4);
    color_annealed_mean(ab4, p, (int)N4, T);
    free(p);
    float* lab = (float*)mallocCheck(n * 3 * sizeof(float));
    srgb_to_lab(lab, frame, n);
    for (int y = 0; y < H; y++) {
        float fy = (y + 0.5f) / 4.0f - 0.5f;
        if (fy < 0.0f) fy = 0.0f;
        int y0 = (int)fy, y1 = y0 + 1 < H4 ? y0 + 1 : H4 - 1;
        float ly = fy - y0;
        for (int x = 0; x < W; x++) {
            float fx = (x + 0.5f) / 4.0f - 0.5f;
            if (fx < 0.0f) fx = 0.0f;
            int x0 = (int)fx, x1 = x0 + 1 < W4 ? x0 + 1 : W4 - 1;
            float lx = fx - x0;
            for (int c = 0; c < 2; c++) {
                float v00 = ab4[((size_t)y0 * W4 + x0) * 2 + c], v01 = ab4[((size_t)y0 * W4 + x1) * 2 + c];
                float v10 = ab4[((size_t)y1 * W4 + x0) * 2 + c], v11 = ab4[((size_t)y1 * W4 + x1) * 2 + c];
                lab[((size_t)y * W + x) * 3 + 1 + c] = (1 - ly) * ((1 - lx) * v00 + lx * v01) + ly * ((1 - lx) * v10 + lx * v11);
            }
        }
    }
    lab_to_srgb(rgb, lab, n);
    free(lab); free(ab4);
}

// ----------------------------------------------------------------------------
// scores on 8-bit images

// PSNR in dB of n bytes b against the reference a (skimage.metrics.peak_signal_noise_ratio,
// data_range 255): 10 log10(255^2 / MSE); +inf when equal
double color_psnr(const unsigned char* a, const unsigned char* b, size_t n) {
    double se = 0.0;
    for (size_t i = 0; i < n; i++) { double d = (double)a[i] - (double)b[i]; se += d * d; }
    if (se == 0.0) return INFINITY;
    return 10.0 * log10(255.0 * 255.0 / (se / n));
}

// scipy.ndimage's 'reflect' boundary (d c b a | a b c d | d c b a) of index i in [0, n)
static int reflect_index(int i, int n) {
    while (i < 0 || i >= n) i = i < 0 ? -i - 1 : 2 * n - i - 1;
    return i;
}

// Gaussian filter (sigma 1.5, truncate 3.5: radius 5, the 11 x 11 window) of one (H, W) plane,
// separable, 'reflect' boundary: scipy.ndimage.gaussian_filter as skimage's SSIM calls it
static void gauss_filter(double* out, const double* in, double* tmp, int H, int W) {
    const int R = 5;
    double k[11], s = 0.0;
    for (int i = -R; i <= R; i++) { k[i + R] = exp(-0.5 * i * i / (1.5 * 1.5)); s += k[i + R]; }
    for (int i = 0; i < 2 * R + 1; i++) k[i] /= s;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            double v = 0.0;
            for (int i = -R; i <= R; i++) v += k[i + R] * in[(size_t)y * W + reflect_index(x + i, W)];
            tmp[(size_t)y * W + x] = v;
        }
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            double v = 0.0;
            for (int i = -R; i <= R; i++) v += k[i + R] * tmp[(size_t)reflect_index(y + i, H) * W + x];
            out[(size_t)y * W + x] = v;
        }
}

// SSIM (Wang et al. 2004) of b against a, (H, W, C) bytes, as skimage.metrics.structural_similarity
// with gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255 (and
// channel_axis for C > 1): per channel the SSIM map from Gaussian-weighted means, variances and
// covariance, C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, averaged over the pixels at least 5 from
// every border; the mean over the channels. H and W must be at least 11 (skimage's window).
double color_ssim(const unsigned char* a, const unsigned char* b, int H, int W, int C) {
    if (H < 11 || W < 11) ttt_die("SSIM needs images of at least 11 x 11 pixels (its Gaussian window), got %dx%d", W, H);
    size_t n = (size_t)H * W;
    double* buf = (double*)mallocCheck(n * 12 * sizeof(double));
    double *x = buf, *y = buf + n, *xx = buf + 2 * n, *yy = buf + 3 * n, *xy = buf + 4 * n, *tmp = buf + 5 * n;
    double *ux = buf + 6 * n, *uy = buf + 7 * n, *uxx = buf + 8 * n, *uyy = buf + 9 * n, *uxy = buf + 10 * n;
    const double C1 = (0.01 * 255) * (0.01 * 255), C2 = (0.03 * 255) * (0.03 * 255);
    double total = 0.0;
    for (int c = 0; c < C; c++) {
        for (size_t i = 0; i < n; i++) {
            x[i] = a[i * C + c]; y[i] = b[i * C + c];
            xx[i] = x[i] * x[i]; yy[i] = y[i] * y[i]; xy[i] = x[i] * y[i];
        }
        gauss_filter(ux, x, tmp, H, W); gauss_filter(uy, y, tmp, H, W);
        gauss_filter(uxx, xx, tmp, H, W); gauss_filter(uyy, yy, tmp, H, W); gauss_filter(uxy, xy, tmp, H, W);
        double sum = 0.0;
        int cnt = 0;
        for (int r = 5; r < H - 5; r++)
            for (int q = 5; q < W - 5; q++) {
                size_t i = (size_t)r * W + q;
                double vx = uxx[i] - ux[i] * ux[i], vy = uyy[i] - uy[i] * uy[i], vxy = uxy[i] - ux[i] * uy[i];
                sum += ((2 * ux[i] * uy[i] + C1) * (2 * vxy + C2)) / ((ux[i] * ux[i] + uy[i] * uy[i] + C1) * (vx + vy + C2));
                cnt++;
            }
        total += sum / cnt;
    }
    free(buf);
    return total / C;
}
