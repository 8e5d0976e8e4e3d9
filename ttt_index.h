// ttt_index.h: the index math of the gathers and resizes, written once for both backends:
// which input element an output element reads. ttt.h includes it, so ttt.c, the model files
// and ttt_kernels.cu all call these same functions. TTT_HD compiles a function for the host
// and the GPU under nvcc (__host__ __device__) and is empty in C.
#ifndef TTT_INDEX_H
#define TTT_INDEX_H
#include <math.h>

#ifdef __CUDACC__
#define TTT_HD __host__ __device__
#else
#define TTT_HD
#endif

// Swin windows (window_partition / window_reverse): the source pixel of token t (row-major
// inside its window) of window w (row-major over the padded grid, nWw windows per row) in
// image b, as an index into (B, H, W); -1 when the token is padding. The grid is padded to
// Hp x Wp (multiples of ws) and rolled by -shift: rolled (py, px) holds padded
// ((py + shift) % Hp, (px + shift) % Wp).
static inline TTT_HD long window_source(int b, int w, int t, int H, int W, int ws, int shift, int nWw) {
    int Hp = (H + ws - 1) / ws * ws, Wp = (W + ws - 1) / ws * ws;
    int py = (w / nWw) * ws + t / ws, px = (w % nWw) * ws + t % ws;  // position in rolled grid
    int iy = (py + shift) % Hp, ix = (px + shift) % Wp;                // position in padded grid
    if (iy >= H || ix >= W) return -1;
    return ((long)b * H + iy) * W + ix;
}

// Swin patch merging: quarter q (0..3) of output pixel (y, x) reads input pixel (iy, ix) with row
// offset q % 2 and column offset q / 2: (0,0), (1,0), (0,1), (1,1); outside the input (odd H or W)
// it is zero padding
static inline TTT_HD void patch_merge_source(int y, int x, int q, int* iy, int* ix) {
    *iy = 2 * y + q % 2;
    *ix = 2 * x + q / 2;
}

// nearest resize in -> out (F.interpolate mode="nearest"): src = floor(dst * (in / out)),
// the scale computed in float as PyTorch does, clamped to in - 1
static inline TTT_HD int nearest_source(int dst, int in, int out) {
    float scale = (float)in / (float)out;
    int s = (int)floorf(dst * scale);
    return s < in - 1 ? s : in - 1;
}

// bilinear resize in -> out, align_corners=False: src = max((dst + 0.5) * in/out - 0.5, 0);
// the two source taps i0 = floor(src) (at most in - 1), i1 = min(i0 + 1, in - 1) and the
// weight of i1, l1 = src - i0. Used by the resize ops and by semantic inference.
static inline TTT_HD void bilinear_source(int dst, int in, int out, int* i0, int* i1, float* l1) {
    float scale = (float)in / (float)out;
    float s = (dst + 0.5f) * scale - 0.5f;
    if (s < 0.0f) s = 0.0f;
    int a = (int)s;
    if (a > in - 1) a = in - 1;
    *i0 = a;
    *i1 = a < in - 1 ? a + 1 : a;
    *l1 = s - a;
}

// grid_sample (bilinear, zero padding) at pixel coordinate (px, py) of an H x W map:
// x0 = floor(px), lx = px - x0 (y likewise); the taps (y0, x0), (y0, x0+1), (y0+1, x0),
// (y0+1, x0+1) get index y * W + x, or -1 outside the map (their value is 0)
static inline TTT_HD void bilinear_taps(float px, float py, int H, int W, int idx[4], float* lx, float* ly) {
    int x0 = (int)floorf(px), y0 = (int)floorf(py);
    *lx = px - x0;
    *ly = py - y0;
    for (int t = 0; t < 4; t++) {
        int xs = x0 + (t & 1), ys = y0 + (t >> 1);
        idx[t] = (xs >= 0 && xs < W && ys >= 0 && ys < H) ? ys * W + xs : -1;
    }
}

// the weights of those four taps
static inline TTT_HD void bilinear_weights(float lx, float ly, float wt[4]) {
    wt[0] = (1 - lx) * (1 - ly);
    wt[1] = lx * (1 - ly);
    wt[2] = (1 - lx) * ly;
    wt[3] = lx * ly;
}

// point_sample (align_corners=False) of point (x, y) in [0, 1] on an H x W map: the taps and
// weights at pixel coordinate (x W - 0.5, y H - 0.5)
static inline TTT_HD void point_taps(float x, float y, int H, int W, int idx[4], float wt[4]) {
    float lx, ly;
    bilinear_taps(x * W - 0.5f, y * H - 0.5f, H, W, idx, &lx, &ly);
    bilinear_weights(lx, ly, wt);
}

// class score k at pixel (y, x) of the x4-resized class maps seg (H4*W4, K): the x4 bilinear
// resize (align_corners=False) read at one pixel
static inline TTT_HD float seg_x4_at(const float* seg, int K, int H4, int W4, int y, int x, int k) {
    int y0, y1, x0, x1; float ly, lx;
    bilinear_source(y, H4, 4 * H4, &y0, &y1, &ly);
    bilinear_source(x, W4, 4 * W4, &x0, &x1, &lx);
    return (1.0f - ly) * ((1.0f - lx) * seg[((size_t)y0 * W4 + x0) * K + k] + lx * seg[((size_t)y0 * W4 + x1) * K + k]) +
           ly * ((1.0f - lx) * seg[((size_t)y1 * W4 + x0) * K + k] + lx * seg[((size_t)y1 * W4 + x1) * K + k]);
}

#endif // TTT_INDEX_H
