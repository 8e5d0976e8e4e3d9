// ttt.c: CPU reference ops, RNG, image IO, checkpoints (dispatch.c: the device switch and the
// dispatchers that call these ops or their CUDA twins).
// Every op's math is documented once, in ttt.h; this file is its CPU reference.
#include "ttt.h"
#include <ctype.h>
#include <stdarg.h>
#include <time.h>
#include <errno.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

// ----------------------------------------------------------------------------
// error checking

void ttt_die(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);   // what was printed before comes before the error line
    fprintf(stderr, "error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

FILE* fopen_check(const char* path, const char* mode, const char* file, int line) {
    FILE* fp = fopen(path, mode);
    if (fp == NULL) {
        fprintf(stderr, "error: cannot open '%s' (mode %s): %s  [%s:%d]\n",
                path, mode, strerror(errno), file, line);
        exit(1);
    }
    return fp;
}

void fread_check(void* ptr, size_t size, size_t nmemb, FILE* stream, const char* file, int line) {
    size_t got = fread(ptr, size, nmemb, stream);
    if (got != nmemb) {
        fprintf(stderr, "error: short read: wanted %zu items of %zu bytes, got %zu (%s)  [%s:%d]\n",
                nmemb, size, got, feof(stream) ? "end of file" : "read error", file, line);
        exit(1);
    }
}

void fwrite_check(const void* ptr, size_t size, size_t nmemb, FILE* stream, const char* file, int line) {
    size_t put = fwrite(ptr, size, nmemb, stream);
    if (put != nmemb) {
        fprintf(stderr, "error: short write: wanted %zu items of %zu bytes, wrote %zu: %s  [%s:%d]\n",
                nmemb, size, put, strerror(errno), file, line);
        exit(1);
    }
}

void fclose_check(FILE* fp, const char* file, int line) {
    if (fclose(fp) != 0) {
        fprintf(stderr, "error: close failed: %s  [%s:%d]\n", strerror(errno), file, line);
        exit(1);
    }
}

void* malloc_check(size_t size, const char* file, int line) {
    void* p = malloc(size > 0 ? size : 1);
    if (p == NULL) {
        fprintf(stderr, "error: out of host memory allocating %zu bytes (%.2f GiB)  [%s:%d]\n",
                size, size / 1073741824.0, file, line);
        exit(1);
    }
    return p;
}

void* calloc_check(size_t nmemb, size_t size, const char* file, int line) {
    void* p = calloc(nmemb > 0 ? nmemb : 1, size > 0 ? size : 1);
    if (p == NULL) {
        fprintf(stderr, "error: out of host memory allocating %zu x %zu bytes  [%s:%d]\n",
                nmemb, size, file, line);
        exit(1);
    }
    return p;
}

// ----------------------------------------------------------------------------
// random numbers: xorshift64* (Vigna), seeded through splitmix64

void rng_seed(Rng* rng, uint64_t seed) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z = z ^ (z >> 31);
    rng->state = z ? z : 0x2545F4914F6CDD1DULL;
}

uint32_t rng_u32(Rng* rng) {
    rng->state ^= rng->state >> 12;
    rng->state ^= rng->state << 25;
    rng->state ^= rng->state >> 27;
    return (uint32_t)((rng->state * 0x2545F4914F6CDD1DULL) >> 32);
}

float rng_uniform(Rng* rng) { return (rng_u32(rng) >> 8) / 16777216.0f; }

float rng_normal(Rng* rng) {
    float u1 = rng_uniform(rng), u2 = rng_uniform(rng);
    if (u1 < 1e-7f) u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307179586f * u2);
}

int rng_int(Rng* rng, int n) { return (int)(rng_u32(rng) % (uint32_t)n); }

void rng_fill_uniform(Rng* rng, float* x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * rng_uniform(rng);
}

void rng_fill_normal(Rng* rng, float* x, size_t n, float mean, float std) {
    for (size_t i = 0; i < n; i++) x[i] = mean + std * rng_normal(rng);
}

// ----------------------------------------------------------------------------
// small utilities

double time_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int parse_int_arg(const char* opt, const char* s, int lo) {
    char* end;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || v < lo || v > 1000000000L) ttt_die("%s: expected an integer >= %d, got '%s'", opt, lo, s);
    return (int)v;
}

float parse_float_arg(const char* opt, const char* s, float lo) {
    char* end;
    float v = strtof(s, &end);
    if (*s == 0 || *end != 0 || !isfinite(v) || v < lo) ttt_die("%s: expected a number >= %g, got '%s'", opt, lo, s);
    return v;
}

int is_finite_array(const float* x, size_t n) {
    for (size_t i = 0; i < n; i++) if (!isfinite(x[i])) return 0;
    return 1;
}

// one pixel of an RGB image (H, W, 3) in [0, 1]; outside the image: nothing
void image_put_pixel(float* img, int H, int W, int x, int y, const float* rgb) {
    if (x < 0 || y < 0 || x >= W || y >= H) return;
    memcpy(img + 3 * ((size_t)y * W + x), rgb, 3 * sizeof(float));
}

// text in a 3x5 pixel font (digits, capitals, . - = / ( ) and space; lower case is drawn as
// upper case, other characters are skipped), each font pixel a scale x scale square, top-left
// at (x, y), 4 * scale pixels per character
void image_draw_text(float* img, int H, int W, int x, int y, const char* s, int scale, const float* rgb) {
    static const char chars[] = "0123456789.-LOSMIUFRAEKNTCPHW=/ GDBJQVXYZ()";
    static const unsigned short glyphs[] = {   // 5 rows of 3 bits, top row in the high bits
        075557, 026227, 071747, 071717, 055711, 074717, 074757, 071111, 075757, 075717, 000002, 000700,
        044447, 075557, 074717, 057755, 072227, 055557, 074744, 065655, 025755, 074747, 055655, 065555,
        072222, 074447, 075744, 055755, 055575, 007070, 011244, 000000, 074557, 065556, 065656, 011152,
        025563, 055552, 055255, 055222, 071247, 012221, 042224};
    for (; *s; s++, x += 4 * scale) {
        const char* p = strchr(chars, toupper((unsigned char)*s));
        if (p == NULL) continue;
        unsigned g = glyphs[p - chars];
        for (int r = 0; r < 5; r++) for (int c = 0; c < 3; c++)
            if (g >> (3 * (4 - r) + (2 - c)) & 1)
                for (int i = 0; i < scale; i++) for (int j = 0; j < scale; j++)
                    image_put_pixel(img, H, W, x + c * scale + j, y + r * scale + i, rgb);
    }
}

void confusion_update(int64_t* conf, const unsigned char* pred, const unsigned char* label, size_t n, int K) {
    for (size_t i = 0; i < n; i++) {
        if (label[i] == 255 || label[i] >= K) continue;
        int p = pred[i] < K ? pred[i] : K - 1;
        conf[label[i] * K + p]++;
    }
}

// the one IoU of the project: intersection over union of pixel counts, NAN when the union is empty
double class_iou(int64_t inter, int64_t uni) { return uni > 0 ? (double)inter / uni : NAN; }

double mean_iou_counts(const int64_t* inter, const int64_t* uni, int K, double* iou) {
    double sum = 0.0; int n = 0;
    for (int k = 0; k < K; k++) {
        double v = class_iou(inter[k], uni[k]);
        if (iou) iou[k] = v;
        if (!isnan(v)) { sum += v; n++; }
    }
    return n ? sum / n : NAN;
}

// from the confusion matrix: inter = TP, union = TP + FP + FN of each class
double mean_iou(const int64_t* conf, int K, double* iou) {
    int64_t* inter = (int64_t*)mallocCheck(2 * (size_t)K * sizeof(int64_t));
    int64_t* uni = inter + K;
    for (int k = 0; k < K; k++) {
        int64_t tp = conf[k * K + k], fp = 0, fn = 0;
        for (int j = 0; j < K; j++) { if (j != k) { fn += conf[k * K + j]; fp += conf[j * K + k]; } }
        inter[k] = tp;
        uni[k] = tp + fp + fn;
    }
    double miou = mean_iou_counts(inter, uni, K, iou);
    free(inter);
    return miou;
}

// ============================================================================
// OPS PART A: elementwise, linear, layernorm, groupnorm, activations, softmax,
// attention, conv2d  (CPU references)
// ============================================================================

// ----------------------------------------------------------------------------
// elementwise

void add_forward_cpu(float* out, const float* a, const float* b, size_t N) {
    #pragma omp parallel for if (N > 65536)
    for (size_t i = 0; i < N; i++) out[i] = a[i] + b[i];
}

void add_inplace_cpu(float* a, const float* b, size_t N) {
    #pragma omp parallel for if (N > 65536)
    for (size_t i = 0; i < N; i++) a[i] += b[i];
}

void scale_inplace_cpu(float* x, float s, size_t N) {
    #pragma omp parallel for if (N > 65536)
    for (size_t i = 0; i < N; i++) x[i] *= s;
}

void scale_rows_forward_cpu(float* out, const float* inp, const float* scale, int B, size_t N) {
    for (int b = 0; b < B; b++) {
        float s = scale[b];
        const float* x = inp + (size_t)b * N;
        float* y = out + (size_t)b * N;
        #pragma omp parallel for if (N > 65536)
        for (size_t i = 0; i < N; i++) y[i] = x[i] * s;
    }
}

void scale_rows_backward_cpu(float* dinp, const float* dout, const float* scale, int B, size_t N) {
    for (int b = 0; b < B; b++) {
        float s = scale[b];
        const float* dy = dout + (size_t)b * N;
        float* dx = dinp + (size_t)b * N;
        #pragma omp parallel for if (N > 65536)
        for (size_t i = 0; i < N; i++) dx[i] += dy[i] * s;
    }
}

// ----------------------------------------------------------------------------
// linear: out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias

// The algorithmic references: the three loops of the formula, accumulated in double, one
// thread. They are slow and exist to be read and to check the fast code below against
// (test/test_naive.c); nothing else calls them.
// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC)
void linear_forward_naive(float* out, const float* inp, const float* weight, const float* bias,
                          int N, int C, int OC) {
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++) {
            double s = bias ? bias[o] : 0.0;
            for (int c = 0; c < C; c++) s += (double)inp[(size_t)n * C + c] * weight[(size_t)o * C + c];
            out[(size_t)n * OC + o] = (float)s;
        }
    }
}

// dinp (N, C) += dout @ weight; dweight (OC, C) += dout^T @ inp; dbias (OC) += column sums of dout
void linear_backward_naive(float* dinp, float* dweight, float* dbias, const float* dout,
                           const float* inp, const float* weight, int N, int C, int OC) {
    if (dinp) {
        for (int n = 0; n < N; n++) {
            for (int c = 0; c < C; c++) {
                double s = 0.0;
                for (int o = 0; o < OC; o++) s += (double)dout[(size_t)n * OC + o] * weight[(size_t)o * C + c];
                dinp[(size_t)n * C + c] += (float)s;
            }
        }
    }
    if (dweight) {
        for (int o = 0; o < OC; o++) {
            for (int c = 0; c < C; c++) {
                double s = 0.0;
                for (int n = 0; n < N; n++) s += (double)dout[(size_t)n * OC + o] * inp[(size_t)n * C + c];
                dweight[(size_t)o * C + c] += (float)s;
            }
        }
    }
    if (dbias) {
        for (int o = 0; o < OC; o++) {
            double s = 0.0;
            for (int n = 0; n < N; n++) s += dout[(size_t)n * OC + o];
            dbias[o] += (float)s;
        }
    }
}

// The fast version: the same products through a packed register tile.
//
// out (M, NC) (row stride ldo) += A (M, K) @ Bm (K, NC), with A[m][k] = A[m * a_m + k * a_k]
// and Bm[k][j] = B[k * b_k + j * b_j], so one kernel serves all three products of linear:
//   forward  out = inp @ weight^T      (A = inp,    B = weight read transposed)
//   dinp    += dout @ weight           (A = dout,   B = weight)
//   dweight += dout^T @ inp            (A = dout read transposed, B = inp)
// Work is split into tasks of MM_MB rows x MM_NR columns, each owned by one thread (no
// races). A task walks K in chunks of MM_KC: it packs that chunk of its MM_NR columns of B
// contiguously (zero-padded past NC) on the stack, then sweeps its rows MM_MR at a time
// with a MM_MR x MM_NR register tile. Partial sums per chunk stay in float registers and
// are added to out after each chunk (two-level summation keeps float error small).
#define MM_MR 4      // rows per register tile
#define MM_NR 16     // columns per register tile (and per task)
#define MM_KC 256    // K chunk packed at a time
#define MM_MB 64     // rows per task

// the register tile: o[r][j] += sum_{k < kc} a[r][k * a_k] * packed[k * MM_NR + j]
// for r < MM_MR with o[r] != NULL and j < nj. packed holds kc rows of MM_NR floats.
static inline void mm_tile(float* const o[MM_MR], int nj, const float* const a[MM_MR], size_t a_k,
                           const float* packed, int kc) {
    float acc[MM_MR][MM_NR] = {{0.0f}};
    for (int k = 0; k < kc; k++) {
        const float* bk = packed + k * MM_NR;
        for (int r = 0; r < MM_MR; r++) {
            float ark = a[r][(size_t)k * a_k];
            for (int j = 0; j < MM_NR; j++) acc[r][j] += ark * bk[j];
        }
    }
    for (int r = 0; r < MM_MR; r++) {
        if (o[r] == NULL) continue;
        for (int j = 0; j < nj; j++) o[r][j] += acc[r][j];
    }
}

// one task of the product below: rows [m0, m1) x columns [j0, j0 + nj) (nj <= MM_NR), with
// B scaled by b_scale while it is packed
static void matmul_task(float* out, int ldo, const float* A, size_t a_m, size_t a_k,
                        const float* B, size_t b_k, size_t b_j, float b_scale,
                        int m0, int m1, int j0, int nj, int K) {
    float packed[MM_KC * MM_NR];  // (kc, MM_NR) slice of B
    for (int k0 = 0; k0 < K; k0 += MM_KC) {
        int kc = K - k0 < MM_KC ? K - k0 : MM_KC;
        for (int k = 0; k < kc; k++) {
            for (int j = 0; j < MM_NR; j++) {
                packed[k * MM_NR + j] = j < nj ? b_scale * B[(size_t)(k0 + k) * b_k + (size_t)(j0 + j) * b_j] : 0.0f;
            }
        }
        for (int m = m0; m < m1; m += MM_MR) {
            // rows past the end repeat the last row; their results are not stored
            const float* a[MM_MR];
            float* o[MM_MR];
            for (int r = 0; r < MM_MR; r++) {
                int mr = m + r < m1 ? m + r : m1 - 1;
                a[r] = A + (size_t)mr * a_m + (size_t)k0 * a_k;
                o[r] = m + r < m1 ? out + (size_t)(m + r) * ldo + j0 : NULL;
            }
            mm_tile(o, nj, a, a_k, packed, kc);
        }
    }
}

// out (M, NC) += b_scale * A (M, K) @ Bm (K, NC) on the calling thread (used inside
// parallel loops, e.g. one attention head per thread)
static void matmul_acc_serial(float* out, int ldo, const float* A, size_t a_m, size_t a_k,
                              const float* B, size_t b_k, size_t b_j, float b_scale,
                              int M, int K, int NC) {
    for (int j0 = 0; j0 < NC; j0 += MM_NR) {
        int nj = NC - j0 < MM_NR ? NC - j0 : MM_NR;
        matmul_task(out, ldo, A, a_m, a_k, B, b_k, b_j, b_scale, 0, M, j0, nj, K);
    }
}

static void matmul_acc_cpu(float* out, int ldo, const float* A, size_t a_m, size_t a_k,
                           const float* B, size_t b_k, size_t b_j, int M, int K, int NC) {
    int mtasks = (M + MM_MB - 1) / MM_MB, ntasks = (NC + MM_NR - 1) / MM_NR;
    #pragma omp parallel for collapse(2) schedule(static) if ((double)M * K * NC > 65536.0)
    for (int jt = 0; jt < ntasks; jt++) {
        for (int mt = 0; mt < mtasks; mt++) {
            int j0 = jt * MM_NR, nj = NC - j0 < MM_NR ? NC - j0 : MM_NR;
            int m0 = mt * MM_MB, m1 = m0 + MM_MB < M ? m0 + MM_MB : M;
            matmul_task(out, ldo, A, a_m, a_k, B, b_k, b_j, 1.0f, m0, m1, j0, nj, K);
        }
    }
}

void linear_forward_cpu(float* out, const float* inp, const float* weight, const float* bias,
                        int N, int C, int OC) {
    #pragma omp parallel for schedule(static) if ((size_t)N * OC > 65536)
    for (int n = 0; n < N; n++) {
        float* o = out + (size_t)n * OC;
        for (int j = 0; j < OC; j++) o[j] = bias ? bias[j] : 0.0f;
    }
    matmul_acc_cpu(out, OC, inp, C, 1, weight, 1, C, N, C, OC);
}

// linear_backward_cpu (write_dinp 0) and linear_backward_write_cpu (1: dinp zeroed first, so the
// product is written; the same bits as accumulating into zeros)
static void linear_backward_cpu_impl(float* dinp, float* dweight, float* dbias, const float* dout,
                                     const float* inp, const float* weight, int N, int C, int OC,
                                     int write_dinp) {
    if (dinp && write_dinp && N > 0 && C > 0) memset(dinp, 0, (size_t)N * C * sizeof(float));
    // dinp (N, C) += dout (N, OC) @ weight (OC, C)
    if (dinp) matmul_acc_cpu(dinp, C, dout, OC, 1, weight, C, 1, N, OC, C);
    // dweight (OC, C) += dout^T (OC, N) @ inp (N, C)
    if (dweight) matmul_acc_cpu(dweight, C, dout, 1, OC, inp, C, 1, OC, N, C);
    // dbias (OC) += column sums of dout, in double; threads own blocks of 64 columns
    if (dbias) {
        int nblocks = (OC + 63) / 64;
        #pragma omp parallel for schedule(static) if ((size_t)N * OC > 65536)
        for (int ob = 0; ob < nblocks; ob++) {
            int o0 = ob * 64, no = OC - o0 < 64 ? OC - o0 : 64;
            double sum[64] = {0.0};
            for (int n = 0; n < N; n++) {
                const float* d = dout + (size_t)n * OC + o0;
                for (int j = 0; j < no; j++) sum[j] += d[j];
            }
            for (int j = 0; j < no; j++) dbias[o0 + j] += (float)sum[j];
        }
    }
}

void linear_backward_cpu(float* dinp, float* dweight, float* dbias, const float* dout,
                         const float* inp, const float* weight, int N, int C, int OC) {
    linear_backward_cpu_impl(dinp, dweight, dbias, dout, inp, weight, N, C, OC, 0);
}

void linear_backward_write_cpu(float* dinp, float* dweight, float* dbias, const float* dout,
                               const float* inp, const float* weight, int N, int C, int OC) {
    linear_backward_cpu_impl(dinp, dweight, dbias, dout, inp, weight, N, C, OC, 1);
}

// ----------------------------------------------------------------------------
// layernorm over the last dim

// one row x (C) -> y (C), its mean and rstd (shared with layernorm_partition_forward_cpu)
static void layernorm_row(float* y, float* mean, float* rstd, const float* x, const float* weight,
                          const float* bias, int C) {
    double m = 0.0, v = 0.0;
    for (int c = 0; c < C; c++) m += x[c];
    m /= C;
    for (int c = 0; c < C; c++) { double d = x[c] - m; v += d * d; }
    v /= C;
    float s = (float)(1.0 / sqrt(v + LN_EPS));
    for (int c = 0; c < C; c++) y[c] = ((float)(x[c] - m)) * s * weight[c] + bias[c];
    *mean = (float)m;
    *rstd = s;
}

void layernorm_forward_cpu(float* out, float* mean, float* rstd, const float* inp,
                           const float* weight, const float* bias, int N, int C) {
    #pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
    for (int n = 0; n < N; n++)
        layernorm_row(out + (size_t)n * C, &mean[n], &rstd[n], inp + (size_t)n * C, weight, bias, C);
}

void layernorm_backward_cpu(float* dinp, float* dweight, float* dbias, const float* dout,
                            const float* inp, const float* weight, const float* mean,
                            const float* rstd, int N, int C) {
    // dx = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), dnorm = dout * weight
    if (dinp) {
        #pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
        for (int n = 0; n < N; n++) {
            const float* x = inp + (size_t)n * C;
            const float* dy = dout + (size_t)n * C;
            double a = 0.0, b = 0.0;
            for (int c = 0; c < C; c++) {
                double norm = (x[c] - mean[n]) * rstd[n];
                double dn = (double)dy[c] * weight[c];
                a += dn; b += dn * norm;
            }
            a /= C; b /= C;
            float* dx = dinp + (size_t)n * C;
            for (int c = 0; c < C; c++) {
                double norm = (x[c] - mean[n]) * rstd[n];
                double dn = (double)dy[c] * weight[c];
                dx[c] += (float)((dn - a - norm * b) * rstd[n]);
            }
        }
    }
    // parameter gradients sum over rows: a thread owns a block of 32 channels and walks the
    // rows, so the inner loop runs over contiguous channels
    if (dweight || dbias) {
        int nblocks = (C + 31) / 32;
        #pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
        for (int cb = 0; cb < nblocks; cb++) {
            int c0 = cb * 32, nc = C - c0 < 32 ? C - c0 : 32;
            double sw[32] = {0.0}, sb[32] = {0.0};
            for (int n = 0; n < N; n++) {
                const float* x = inp + (size_t)n * C + c0;
                const float* dy = dout + (size_t)n * C + c0;
                double m = mean[n], r = rstd[n];
                for (int j = 0; j < nc; j++) {
                    sw[j] += (double)dy[j] * ((x[j] - m) * r);
                    sb[j] += dy[j];
                }
            }
            for (int j = 0; j < nc; j++) {
                if (dweight) dweight[c0 + j] += (float)sw[j];
                if (dbias) dbias[c0 + j] += (float)sb[j];
            }
        }
    }
}

// ----------------------------------------------------------------------------
// groupnorm on (B, HW, C), G groups of C/G consecutive channels

void groupnorm_forward_cpu(float* out, float* mean, float* rstd, const float* inp,
                           const float* weight, const float* bias, int B, int HW, int C, int G) {
    int Cg = C / G;
    #pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * HW * C > 65536)
    for (int b = 0; b < B; b++) {
        for (int g = 0; g < G; g++) {
            const float* x = inp + (size_t)b * HW * C + g * Cg;
            double m = 0.0, v = 0.0;
            for (int p = 0; p < HW; p++) for (int c = 0; c < Cg; c++) m += x[(size_t)p * C + c];
            m /= (double)HW * Cg;
            for (int p = 0; p < HW; p++) for (int c = 0; c < Cg; c++) {
                double d = x[(size_t)p * C + c] - m; v += d * d;
            }
            v /= (double)HW * Cg;
            float s = (float)(1.0 / sqrt(v + LN_EPS));
            float* y = out + (size_t)b * HW * C + g * Cg;
            for (int p = 0; p < HW; p++) for (int c = 0; c < Cg; c++) {
                int ch = g * Cg + c;
                y[(size_t)p * C + c] = (float)(x[(size_t)p * C + c] - m) * s * weight[ch] + bias[ch];
            }
            mean[b * G + g] = (float)m;
            rstd[b * G + g] = s;
        }
    }
}

void groupnorm_backward_cpu(float* dinp, float* dweight, float* dbias, const float* dout,
                            const float* inp, const float* weight, const float* mean,
                            const float* rstd, int B, int HW, int C, int G) {
    int Cg = C / G;
    double cnt = (double)HW * Cg;
    if (dinp) {
        #pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * HW * C > 65536)
        for (int b = 0; b < B; b++) {
            for (int g = 0; g < G; g++) {
                size_t base = (size_t)b * HW * C + g * Cg;
                double m = mean[b * G + g], s = rstd[b * G + g];
                double a = 0.0, bb = 0.0;   // mean(dnorm), mean(dnorm * norm)
                for (int p = 0; p < HW; p++) for (int c = 0; c < Cg; c++) {
                    size_t i = base + (size_t)p * C + c;
                    double dn = (double)dout[i] * weight[g * Cg + c];
                    a += dn; bb += dn * (inp[i] - m) * s;
                }
                a /= cnt; bb /= cnt;
                for (int p = 0; p < HW; p++) for (int c = 0; c < Cg; c++) {
                    size_t i = base + (size_t)p * C + c;
                    double norm = (inp[i] - m) * s;
                    double dn = (double)dout[i] * weight[g * Cg + c];
                    dinp[i] += (float)((dn - a - norm * bb) * s);
                }
            }
        }
    }
    // parameter gradients: a thread owns a block of 32 channels and walks every pixel
    if (dweight || dbias) {
        int nblocks = (C + 31) / 32;
        #pragma omp parallel for schedule(static) if ((size_t)B * HW * C > 65536)
        for (int cb = 0; cb < nblocks; cb++) {
            int c0 = cb * 32, nc = C - c0 < 32 ? C - c0 : 32;
            double sw[32] = {0.0}, sb[32] = {0.0}, m[32], s[32];
            for (int b = 0; b < B; b++) {
                for (int j = 0; j < nc; j++) {
                    int g = (c0 + j) / Cg;
                    m[j] = mean[b * G + g]; s[j] = rstd[b * G + g];
                }
                for (int p = 0; p < HW; p++) {
                    const float* x = inp + ((size_t)b * HW + p) * C + c0;
                    const float* dy = dout + ((size_t)b * HW + p) * C + c0;
                    for (int j = 0; j < nc; j++) {
                        sw[j] += (double)dy[j] * ((x[j] - m[j]) * s[j]);
                        sb[j] += dy[j];
                    }
                }
            }
            for (int j = 0; j < nc; j++) {
                if (dweight) dweight[c0 + j] += (float)sw[j];
                if (dbias) dbias[c0 + j] += (float)sb[j];
            }
        }
    }
}

// ----------------------------------------------------------------------------
// activations

// x Phi(x), the exact erf form
static float gelu_value(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

void gelu_forward_cpu(float* out, const float* inp, size_t N) {
    #pragma omp parallel for if (N > 65536)
    for (size_t i = 0; i < N; i++) out[i] = gelu_value(inp[i]);
}

// d/dx [x Phi(x)] = Phi(x) + x phi(x)
static float gelu_slope(float x) {
    float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

void gelu_backward_cpu(float* dinp, const float* inp, const float* dout, size_t N) {
    #pragma omp parallel for if (N > 65536)
    for (size_t i = 0; i < N; i++) dinp[i] += dout[i] * gelu_slope(inp[i]);
}

// mlp: fc1 without its bias, gelu(pre + b1) into hidden, fc2 (forward); the backward of each in
// turn, dhidden and dx written
static void mlp_gelu_cpu(float* hidden, const float* pre, const float* b1, int N, int Ch) {
    #pragma omp parallel for if ((size_t)N * Ch > 65536)
    for (int r = 0; r < N; r++)
        for (int c = 0; c < Ch; c++)
            hidden[(size_t)r * Ch + c] = gelu_value(pre[(size_t)r * Ch + c] + (b1 ? b1[c] : 0.0f));
}

void mlp_forward_cpu(float* out, float* pre, float* hidden, const float* x, const float* w1, const float* b1,
                     const float* w2, const float* b2, int N, int C, int Ch) {
    linear_forward_cpu(pre, x, w1, NULL, N, C, Ch);
    mlp_gelu_cpu(hidden, pre, b1, N, Ch);
    linear_forward_cpu(out, hidden, w2, b2, N, Ch, C);
}

void mlp_backward_cpu(float* dx, float* dw1, float* db1, float* dw2, float* db2, float* dhidden, float* hidden,
                      const float* dout, const float* pre, const float* x, const float* w1, const float* b1,
                      const float* w2, int N, int C, int Ch) {
    mlp_gelu_cpu(hidden, pre, b1, N, Ch);
    linear_backward_write_cpu(dhidden, dw2, db2, dout, hidden, w2, N, Ch, C);
    // dpre = dhidden * gelu'(pre + b1), in place
    #pragma omp parallel for if ((size_t)N * Ch > 65536)
    for (int r = 0; r < N; r++)
        for (int c = 0; c < Ch; c++)
            dhidden[(size_t)r * Ch + c] *= gelu_slope(pre[(size_t)r * Ch + c] + (b1 ? b1[c] : 0.0f));
    linear_backward_write_cpu(dx, dw1, db1, dhidden, x, w1, N, C, Ch);
}

void relu_forward_cpu(float* out, const float* inp, size_t N) {
    #pragma omp parallel for if (N > 65536)
    for (size_t i = 0; i < N; i++) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

void relu_backward_cpu(float* dinp, const float* out, const float* dout, size_t N) {
    #pragma omp parallel for if (N > 65536)
    for (size_t i = 0; i < N; i++) if (out[i] > 0.0f) dinp[i] += dout[i];
}

void sigmoid_forward_cpu(float* out, const float* inp, size_t N) {
    #pragma omp parallel for if (N > 65536)
    for (size_t i = 0; i < N; i++) out[i] = 1.0f / (1.0f + expf(-inp[i]));
}

void sigmoid_backward_cpu(float* dinp, const float* out, const float* dout, size_t N) {
    #pragma omp parallel for if (N > 65536)
    for (size_t i = 0; i < N; i++) dinp[i] += dout[i] * out[i] * (1.0f - out[i]);
}

// ----------------------------------------------------------------------------
// softmax over the last dim

// one row: y = exp(x - max) / sum; a row of all -inf gives zeros rather than NaN
static void softmax_row(float* y, const float* x, int C) {
    float mx = -INFINITY;
    for (int c = 0; c < C; c++) if (x[c] > mx) mx = x[c];
    if (mx == -INFINITY) { for (int c = 0; c < C; c++) y[c] = 0.0f; return; }
    double sum = 0.0;
    for (int c = 0; c < C; c++) { y[c] = expf(x[c] - mx); sum += y[c]; }
    float inv = (float)(1.0 / sum);
    for (int c = 0; c < C; c++) y[c] *= inv;
}

void softmax_forward_cpu(float* out, const float* inp, int N, int C) {
    #pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
    for (int n = 0; n < N; n++) softmax_row(out + (size_t)n * C, inp + (size_t)n * C, C);
}

void softmax_backward_cpu(float* dinp, const float* out, const float* dout, int N, int C) {
    // dx = y * (dy - sum(dy * y))
    #pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
    for (int n = 0; n < N; n++) {
        const float* y = out + (size_t)n * C;
        const float* dy = dout + (size_t)n * C;
        double s = 0.0;
        for (int c = 0; c < C; c++) s += (double)dy[c] * y[c];
        float* dx = dinp + (size_t)n * C;
        for (int c = 0; c < C; c++) dx[c] += y[c] * (dy[c] - (float)s);
    }
}

// ----------------------------------------------------------------------------
// multi-head attention: att = softmax(q k^T / sqrt(HS) + rel_bias + mask), out = att v

// The algorithmic reference (see linear_forward_naive): for each (b, h, i),
//   s_j = q_i . k_j / sqrt(HS) + rel_bias[h,i,j] + mask[b % n_mask, i, j]
//   att_ij = exp(s_j - max s) / sum_j' exp(s_j' - max s);  out_i = sum_j att_ij v_j
void attention_forward_naive(float* out, float* att, const float* q, const float* k, const float* v,
                             const float* rel_bias, const float* mask, int n_mask,
                             int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride) {
    int C = NH * HS;
    double scale = 1.0 / sqrt((double)HS);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int i = 0; i < Tq; i++) {
                const float* qi = q + ((size_t)b * Tq + i) * q_stride + h * HS;
                float* a = att + (((size_t)b * NH + h) * Tq + i) * Tk;   // (Tk)
                double maxs = -INFINITY;
                for (int j = 0; j < Tk; j++) {
                    const float* kj = k + ((size_t)b * Tk + j) * kv_stride + h * HS;
                    double s = 0.0;
                    for (int d = 0; d < HS; d++) s += (double)qi[d] * kj[d];
                    s *= scale;
                    if (rel_bias) s += rel_bias[((size_t)h * Tq + i) * Tk + j];
                    if (mask) s += mask[((size_t)(b % n_mask) * Tq + i) * Tk + j];
                    a[j] = (float)s;
                    if (s > maxs) maxs = s;
                }
                double sum = 0.0;
                for (int j = 0; j < Tk; j++) sum += exp((double)a[j] - maxs);
                for (int j = 0; j < Tk; j++) a[j] = (float)(exp((double)a[j] - maxs) / sum);
                float* oi = out + ((size_t)b * Tq + i) * C + h * HS;
                for (int d = 0; d < HS; d++) {
                    double o = 0.0;
                    for (int j = 0; j < Tk; j++) o += (double)a[j] * v[((size_t)b * Tk + j) * kv_stride + h * HS + d];
                    oi[d] = (float)o;
                }
            }
        }
    }
}

// With P = att and dO = dout, per (b, h, i):
//   dv_j += P_ij dO_i;  dP_ij = dO_i . v_j;  dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij');
//   drel_bias[h,i,j] += dS_ij;  dq_i += sum_j dS_ij k_j / sqrt(HS);  dk_j += dS_ij q_i / sqrt(HS)
void attention_backward_naive(float* dq, float* dk, float* dv, float* drel_bias, const float* dout,
                              const float* att, const float* q, const float* k, const float* v,
                              int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride) {
    int C = NH * HS;
    double scale = 1.0 / sqrt((double)HS);
    double* dS = (double*)mallocCheck((size_t)Tk * sizeof(double));
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int i = 0; i < Tq; i++) {
                const float* P = att + (((size_t)b * NH + h) * Tq + i) * Tk;
                const float* dOi = dout + ((size_t)b * Tq + i) * C + h * HS;
                const float* qi = q + ((size_t)b * Tq + i) * q_stride + h * HS;
                double rowsum = 0.0;
                for (int j = 0; j < Tk; j++) {
                    const float* vj = v + ((size_t)b * Tk + j) * kv_stride + h * HS;
                    double dP = 0.0;
                    for (int d = 0; d < HS; d++) dP += (double)dOi[d] * vj[d];
                    dS[j] = dP;
                    rowsum += dP * P[j];
                    if (dv) {
                        float* dvj = dv + ((size_t)b * Tk + j) * kv_stride + h * HS;
                        for (int d = 0; d < HS; d++) dvj[d] += P[j] * dOi[d];
                    }
                }
                for (int j = 0; j < Tk; j++) dS[j] = P[j] * (dS[j] - rowsum);
                for (int j = 0; j < Tk; j++) {
                    const float* kj = k + ((size_t)b * Tk + j) * kv_stride + h * HS;
                    if (drel_bias) drel_bias[((size_t)h * Tq + i) * Tk + j] += (float)dS[j];
                    if (dq) {
                        float* dqi = dq + ((size_t)b * Tq + i) * q_stride + h * HS;
                        for (int d = 0; d < HS; d++) dqi[d] += (float)(dS[j] * scale * kj[d]);
                    }
                    if (dk) {
                        float* dkj = dk + ((size_t)b * Tk + j) * kv_stride + h * HS;
                        for (int d = 0; d < HS; d++) dkj[d] += (float)(dS[j] * scale * qi[d]);
                    }
                }
            }
        }
    }
    free(dS);
}

// The fast version:
//
// Each (b, h) is a few small matrix products through the packed register tile:
//   scores (Tq, Tk) = rel_bias + mask + (q / sqrt(HS)) k^T, att = softmax rows, out = att v.
// Threads own whole heads (b, h), so every write is race-free.
void attention_forward_cpu(float* out, float* att, const float* q, const float* k, const float* v,
                           const float* rel_bias, const float* mask, int n_mask,
                           int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride) {
    int C = NH * HS;
    float scale = 1.0f / sqrtf((float)HS);
    double work = (double)B * NH * Tq * Tk * HS;   // run small problems on one thread
    #pragma omp parallel for collapse(2) schedule(static) if (work > 65536.0)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            float* s = att + ((size_t)b * NH + h) * Tq * Tk;   // (Tq, Tk)
            const float* rb = rel_bias ? rel_bias + (size_t)h * Tq * Tk : NULL;
            const float* mk = mask ? mask + (size_t)(b % n_mask) * Tq * Tk : NULL;
            for (size_t e = 0; e < (size_t)Tq * Tk; e++) s[e] = (rb ? rb[e] : 0.0f) + (mk ? mk[e] : 0.0f);
            const float* qb = q + (size_t)b * Tq * q_stride + h * HS;
            const float* kb = k + (size_t)b * Tk * kv_stride + h * HS;
            const float* vb = v + (size_t)b * Tk * kv_stride + h * HS;
            // s += q (Tq, HS) @ (scale k)^T (HS, Tk); a -inf mask entry stays -inf
            matmul_acc_serial(s, Tk, qb, q_stride, 1, kb, 1, kv_stride, scale, Tq, HS, Tk);
            for (int i = 0; i < Tq; i++) softmax_row(s + (size_t)i * Tk, s + (size_t)i * Tk, Tk);
            float* ob = out + (size_t)b * Tq * C + h * HS;
            for (int i = 0; i < Tq; i++) memset(ob + (size_t)i * C, 0, HS * sizeof(float));
            // out (Tq, HS) = att (Tq, Tk) @ v (Tk, HS)
            matmul_acc_serial(ob, C, s, Tk, 1, vb, kv_stride, 1, 1.0f, Tq, Tk, HS);
        }
    }
}

// one growable host buffer for CPU ops that need a temporary; ops run one at a time
static float* cpu_scratch_buf = NULL;
static size_t cpu_scratch_cap = 0;
static float* cpu_scratch(size_t n) {
    if (n > cpu_scratch_cap) {
        free(cpu_scratch_buf);
        cpu_scratch_buf = (float*)mallocCheck(n * sizeof(float));
        cpu_scratch_cap = n;
    }
    return cpu_scratch_buf;
}

// One head (b, h) of the attention backward from its softmax P (Tq, Tk), dO = dout:
// dv += P^T dO; then, with need_ds, dP = dO v^T into dS (Tq, Tk) and dS = P * (dP - rowsum(dP * P))
// in place (a blocked entry has P = 0, so dS = 0), dq += dS (k / sqrt(HS)), dk += dS^T (q / sqrt(HS)).
// Serial: callers run heads in parallel.
static void attention_backward_head(float* dq, float* dk, float* dv, float* dS, int need_ds, const float* P,
                                    const float* dout, const float* q, const float* k, const float* v,
                                    int b, int h, int Tq, int Tk, int C, int HS, int q_stride, int kv_stride,
                                    float scale) {
    const float* dob = dout + (size_t)b * Tq * C + h * HS;
    const float* qb = q + (size_t)b * Tq * q_stride + h * HS;
    const float* kb = k + (size_t)b * Tk * kv_stride + h * HS;
    const float* vb = v + (size_t)b * Tk * kv_stride + h * HS;
    // dv (Tk, HS) += P^T (Tk, Tq) @ dO (Tq, HS)
    if (dv) matmul_acc_serial(dv + (size_t)b * Tk * kv_stride + h * HS, kv_stride,
                              P, 1, Tk, dob, C, 1, 1.0f, Tk, Tq, HS);
    if (!need_ds) return;
    // dP (Tq, Tk) = dO (Tq, HS) @ v^T (HS, Tk), then dS in place
    memset(dS, 0, (size_t)Tq * Tk * sizeof(float));
    matmul_acc_serial(dS, Tk, dob, C, 1, vb, 1, kv_stride, 1.0f, Tq, HS, Tk);
    for (int i = 0; i < Tq; i++) {
        const float* p = P + (size_t)i * Tk;
        float* d = dS + (size_t)i * Tk;
        double sum = 0.0;
        for (int j = 0; j < Tk; j++) sum += (double)d[j] * p[j];
        for (int j = 0; j < Tk; j++) d[j] = p[j] * (d[j] - (float)sum);
    }
    // dq (Tq, HS) += dS (Tq, Tk) @ (scale k) (Tk, HS)
    if (dq) matmul_acc_serial(dq + (size_t)b * Tq * q_stride + h * HS, q_stride,
                              dS, Tk, 1, kb, kv_stride, 1, scale, Tq, Tk, HS);
    // dk (Tk, HS) += dS^T (Tk, Tq) @ (scale q) (Tq, HS)
    if (dk) matmul_acc_serial(dk + (size_t)b * Tk * kv_stride + h * HS, kv_stride,
                              dS, 1, Tk, qb, q_stride, 1, scale, Tk, Tq, HS);
}

// drel_bias (NH, Tq, Tk) += dS_all (B, NH, Tq, Tk) summed over b in order, rows owned by threads
static void sum_dS_over_batch(float* drel_bias, const float* dS_all, int B, int NH, int Tq, int Tk, double work) {
    #pragma omp parallel for schedule(static) if (work > 65536.0)
    for (int row = 0; row < NH * Tq; row++) {
        int h = row / Tq, i = row % Tq;
        float* db = drel_bias + (size_t)row * Tk;
        for (int b = 0; b < B; b++) {
            const float* d = dS_all + (((size_t)b * NH + h) * Tq + i) * Tk;
            for (int j = 0; j < Tk; j++) db[j] += d[j];
        }
    }
}

// Per head (b, h), with P = att: attention_backward_head, keeping dS (B, NH, Tq, Tk) in a
// scratch buffer (pass 1, heads in parallel); then drel_bias += dS summed over b (pass 2).
void attention_backward_cpu(float* dq, float* dk, float* dv, float* drel_bias, const float* dout,
                            const float* att, const float* q, const float* k, const float* v,
                            int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride) {
    int C = NH * HS;
    float scale = 1.0f / sqrtf((float)HS);
    double work = (double)B * NH * Tq * Tk * HS;   // run small problems on one thread
    float* dS_all = cpu_scratch((size_t)B * NH * Tq * Tk);
    #pragma omp parallel for collapse(2) schedule(static) if (work > 65536.0)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            attention_backward_head(dq, dk, dv, dS_all + ((size_t)b * NH + h) * Tq * Tk, dq || dk || drel_bias,
                                    att + ((size_t)b * NH + h) * Tq * Tk, dout, q, k, v, b, h, Tq, Tk, C, HS,
                                    q_stride, kv_stride, scale);
    if (drel_bias) sum_dS_over_batch(drel_bias, dS_all, B, NH, Tq, Tk, work);
}

// ----------------------------------------------------------------------------
// window attention without a stored attention map (math in ttt.h)

// scores of head (b, h) into s (Tq, Tk): rel_bias + mask + (q / sqrt(HS)) k^T, the operations of
// attention_forward_cpu in the same order, so the softmax of s equals its att bit for bit
// (used by the window op, Tq = Tk = T, and the flash op, rel_bias NULL)
static void head_scores_cpu(float* s, const float* q, const float* k, const float* rel_bias,
                            const float* mask, int n_mask, int b, int h, int Tq, int Tk, int HS,
                            int q_stride, int kv_stride) {
    float scale = 1.0f / sqrtf((float)HS);
    const float* rb = rel_bias ? rel_bias + (size_t)h * Tq * Tk : NULL;
    const float* mk = mask ? mask + (size_t)(b % n_mask) * Tq * Tk : NULL;
    for (size_t e = 0; e < (size_t)Tq * Tk; e++) s[e] = (rb ? rb[e] : 0.0f) + (mk ? mk[e] : 0.0f);
    matmul_acc_serial(s, Tk, q + (size_t)b * Tq * q_stride + h * HS, q_stride, 1,
                      k + (size_t)b * Tk * kv_stride + h * HS, 1, kv_stride, scale, Tq, HS, Tk);
}

// log sum_j exp(x_j) of one score row (in double); -INFINITY when every x_j is -inf
static float row_logsumexp(const float* x, int C) {
    float mx = -INFINITY;
    for (int c = 0; c < C; c++) if (x[c] > mx) mx = x[c];
    if (mx == -INFINITY) return -INFINITY;
    double sum = 0.0;
    for (int c = 0; c < C; c++) sum += exp((double)x[c] - mx);
    return (float)(mx + log(sum));
}

// The two ops that keep one log-sum-exp per score row instead of the (Tq, Tk) map (Swin's window
// attention, with a relative position bias and Tq = Tk; Mask2Former's decoder attention without
// one) share this reference. Threads own whole heads (b, h), each with its own (Tq, Tk) score
// buffer: the scores, lse and softmax of attention_forward_cpu in the same order, so out equals
// its out bit for bit.
static void lse_attention_forward_cpu(float* out, float* lse, const float* q, const float* k, const float* v,
                                      const float* rel_bias, const float* mask, int n_mask, int B, int Tq,
                                      int Tk, int NH, int HS, int q_stride, int kv_stride) {
    if (B <= 0 || Tq <= 0 || Tk <= 0 || NH <= 0) return;
    if (n_mask <= 0) n_mask = 1;
    int C = NH * HS;
    double work = (double)B * NH * Tq * Tk * HS;   // run small problems on one thread
    #pragma omp parallel if (work > 65536.0)
    {
        float* s = (float*)mallocCheck((size_t)Tq * Tk * sizeof(float));   // (Tq, Tk) scores, then P
        #pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < NH; h++) {
                head_scores_cpu(s, q, k, rel_bias, mask, n_mask, b, h, Tq, Tk, HS, q_stride, kv_stride);
                for (int i = 0; i < Tq; i++) {
                    float* row = s + (size_t)i * Tk;
                    if (lse) lse[((size_t)b * NH + h) * Tq + i] = row_logsumexp(row, Tk);
                    softmax_row(row, row, Tk);
                }
                float* ob = out + (size_t)b * Tq * C + h * HS;
                for (int i = 0; i < Tq; i++) memset(ob + (size_t)i * C, 0, HS * sizeof(float));
                // out (Tq, HS) = P (Tq, Tk) @ v (Tk, HS)
                matmul_acc_serial(ob, C, s, Tk, 1, v + (size_t)b * Tk * kv_stride + h * HS, kv_stride, 1,
                                  1.0f, Tq, Tk, HS);
            }
        }
        free(s);
    }
}

// Per head: P recomputed as the forward did, then the steps of attention_backward_cpu in the
// same order (so the same numbers): dv += P^T dO; dS = P * (dO v^T - rowsum(dO v^T * P));
// dq += dS (k / sqrt(HS)); dk += dS^T (q / sqrt(HS)); drel_bias += dS summed over b in order.
static void lse_attention_backward_cpu(const char* op, float* dq, float* dk, float* dv, float* drel_bias,
                                       const float* dout, const float* out, const float* lse, const float* q,
                                       const float* k, const float* v, const float* rel_bias,
                                       const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS,
                                       int q_stride, int kv_stride) {
    if (!out || !lse) ttt_die("%s: the forward's out and lse are required", op);
    if (B <= 0 || Tq <= 0 || Tk <= 0 || NH <= 0) return;
    if (!dq && !dk && !dv && !drel_bias) return;
    if (n_mask <= 0) n_mask = 1;
    int C = NH * HS;
    float scale = 1.0f / sqrtf((float)HS);
    double work = (double)B * NH * Tq * Tk * HS;   // run small problems on one thread
    float* dS_all = drel_bias ? cpu_scratch((size_t)B * NH * Tq * Tk) : NULL;   // summed over b below
    #pragma omp parallel if (work > 65536.0)
    {
        float* P = (float*)mallocCheck((size_t)Tq * Tk * sizeof(float));
        float* dS_own = (float*)mallocCheck((size_t)Tq * Tk * sizeof(float));
        #pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < NH; h++) {
                head_scores_cpu(P, q, k, rel_bias, mask, n_mask, b, h, Tq, Tk, HS, q_stride, kv_stride);
                for (int i = 0; i < Tq; i++) softmax_row(P + (size_t)i * Tk, P + (size_t)i * Tk, Tk);
                float* dS = dS_all ? dS_all + ((size_t)b * NH + h) * Tq * Tk : dS_own;
                attention_backward_head(dq, dk, dv, dS, dq || dk || drel_bias, P, dout, q, k, v, b, h, Tq, Tk,
                                        C, HS, q_stride, kv_stride, scale);
            }
        }
        free(P);
        free(dS_own);
    }
    if (drel_bias) sum_dS_over_batch(drel_bias, dS_all, B, NH, Tq, Tk, work);
}

void window_attention_forward_cpu(float* out, float* lse, const float* q, const float* k, const float* v,
                                  const float* rel_bias, const float* mask, int n_mask,
                                  int B, int T, int NH, int HS, int q_stride, int kv_stride) {
    lse_attention_forward_cpu(out, lse, q, k, v, rel_bias, mask, n_mask, B, T, T, NH, HS, q_stride, kv_stride);
}

void window_attention_backward_cpu(float* dq, float* dk, float* dv, float* drel_bias, const float* dout,
                                   const float* out, const float* lse, const float* q, const float* k,
                                   const float* v, const float* rel_bias, const float* mask, int n_mask,
                                   int B, int T, int NH, int HS, int q_stride, int kv_stride) {
    lse_attention_backward_cpu("window_attention_backward", dq, dk, dv, drel_bias, dout, out, lse, q, k, v,
                               rel_bias, mask, n_mask, B, T, T, NH, HS, q_stride, kv_stride);
}

// Swin's qkv linear and window attention (ttt.h): the two ops in turn, qkv kept in float32
void qkv_window_attention_forward_cpu(float* out, float* lse, float* qkv, const float* x, const float* w,
                                      const float* b, const float* rel_bias, const float* mask, int n_mask,
                                      int B, int T, int NH, int HS) {
    int C = NH * HS;
    linear_forward_cpu(qkv, x, w, b, B * T, C, 3 * C);
    window_attention_forward_cpu(out, lse, qkv, qkv + C, qkv + 2 * C, rel_bias, mask, n_mask, B, T, NH, HS,
                                 3 * C, 3 * C);
}

void qkv_window_attention_backward_cpu(float* dx, float* dw, float* db, float* drel_bias, float* dqkv,
                                       const float* dout, const float* out, const float* lse, const float* qkv,
                                       const float* x, const float* w, const float* b, const float* rel_bias,
                                       const float* mask, int n_mask, int B, int T, int NH, int HS) {
    (void)b;   // the bias is inside qkv
    int C = NH * HS;
    memset(dqkv, 0, (size_t)B * T * 3 * C * sizeof(float));   // window_attention_backward accumulates
    window_attention_backward_cpu(dqkv, dqkv + C, dqkv + 2 * C, drel_bias, dout, out, lse, qkv, qkv + C,
                                  qkv + 2 * C, rel_bias, mask, n_mask, B, T, NH, HS, 3 * C, 3 * C);
    linear_backward_write_cpu(dx, dw, db, dqkv, x, w, B * T, C, 3 * C);
}

// ----------------------------------------------------------------------------
// multi-head attention without a stored attention map, general Tq, Tk (math in ttt.h)

void flash_attention_forward_cpu(float* out, float* lse, const float* q, const float* k, const float* v,
                                 const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS,
                                 int q_stride, int kv_stride) {
    lse_attention_forward_cpu(out, lse, q, k, v, NULL, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride);
}

void flash_attention_backward_cpu(float* dq, float* dk, float* dv, const float* dout, const float* out,
                                  const float* lse, const float* q, const float* k, const float* v,
                                  const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS,
                                  int q_stride, int kv_stride) {
    lse_attention_backward_cpu("flash_attention_backward", dq, dk, dv, NULL, dout, out, lse, q, k, v, NULL,
                               mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride);
}

// ----------------------------------------------------------------------------
// conv2d, NHWC, weight (OC, K, K, C)

// The algorithmic reference (see linear_forward_naive), the formula of ttt.h as written:
// out[b,y,x,o] = bias[o] + sum_{ky,kx,c} weight[o,ky,kx,c] * inp[b, y*stride-pad+ky, x*stride-pad+kx, c]
void conv2d_forward_naive(float* out, const float* inp, const float* weight, const float* bias,
                          int B, int H, int W, int C, int OC, int K, int stride, int pad,
                          int Ho, int Wo) {
    for (int b = 0; b < B; b++)
    for (int y = 0; y < Ho; y++)
    for (int x = 0; x < Wo; x++)
    for (int o = 0; o < OC; o++) {
        double s = bias ? bias[o] : 0.0;
        for (int ky = 0; ky < K; ky++)
        for (int kx = 0; kx < K; kx++) {
            int iy = y * stride - pad + ky, ix = x * stride - pad + kx;
            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;   // zero padding
            for (int c = 0; c < C; c++) {
                s += (double)weight[(((size_t)o * K + ky) * K + kx) * C + c] *
                     inp[(((size_t)b * H + iy) * W + ix) * C + c];
            }
        }
        out[(((size_t)b * Ho + y) * Wo + x) * OC + o] = (float)s;
    }
}

// the same loops, each product's two factors receiving dout times the other:
// dinp[b,iy,ix,c] += weight[o,ky,kx,c] * dout[b,y,x,o]; dweight[o,ky,kx,c] += inp[b,iy,ix,c] * dout[b,y,x,o];
// dbias[o] += dout[b,y,x,o]
void conv2d_backward_naive(float* dinp, float* dweight, float* dbias, const float* dout,
                           const float* inp, const float* weight,
                           int B, int H, int W, int C, int OC, int K, int stride, int pad,
                           int Ho, int Wo) {
    for (int b = 0; b < B; b++)
    for (int y = 0; y < Ho; y++)
    for (int x = 0; x < Wo; x++)
    for (int o = 0; o < OC; o++) {
        float d = dout[(((size_t)b * Ho + y) * Wo + x) * OC + o];
        if (dbias) dbias[o] += d;
        for (int ky = 0; ky < K; ky++)
        for (int kx = 0; kx < K; kx++) {
            int iy = y * stride - pad + ky, ix = x * stride - pad + kx;
            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
            for (int c = 0; c < C; c++) {
                size_t wi = (((size_t)o * K + ky) * K + kx) * C + c;
                size_t ii = (((size_t)b * H + iy) * W + ix) * C + c;
                if (dinp) dinp[ii] += weight[wi] * d;
                if (dweight) dweight[wi] += inp[ii] * d;
            }
        }
    }
}

// The fast version:
//
// No im2col matrix: a conv is a sum over the K*K taps (ky, kx) of small matrix products
// whose rows are pixels, and each product runs through the same packed register tile as
// linear (mm_tile). For a tap, the input pixel of output pixel (y, x) is
// (y*stride - pad + ky, x*stride - pad + kx); a pixel outside the input contributes zero,
// so its tile row is simply not stored (forward, dinp) or packed as zeros (dweight).

void conv2d_forward_cpu(float* out, const float* inp, const float* weight, const float* bias,
                        int B, int H, int W, int C, int OC, int K, int stride, int pad,
                        int Ho, int Wo) {
    // task = one output row (b, y) x MM_NR output channels; out[b,y,:,o-block] += for each
    // kernel row ky: input spans (Wo, K*C) @ packed weight[o-block, ky] (K*C, MM_NR)
    int ntasks_o = (OC + MM_NR - 1) / MM_NR, KC = K * C;
    size_t KKC = (size_t)K * K * C;
    double work = (double)B * Ho * Wo * OC * KKC;   // run small problems on one thread
    #pragma omp parallel for collapse(3) schedule(static) if (work > 65536.0)
    for (int b = 0; b < B; b++) {
        for (int y = 0; y < Ho; y++) {
            for (int ot = 0; ot < ntasks_o; ot++) {
                float packed[MM_KC * MM_NR];
                int o0 = ot * MM_NR, no = OC - o0 < MM_NR ? OC - o0 : MM_NR;
                float* out_row = out + ((size_t)b * Ho + y) * Wo * OC + o0;
                for (int x = 0; x < Wo; x++) {
                    for (int j = 0; j < no; j++) out_row[(size_t)x * OC + j] = bias ? bias[o0 + j] : 0.0f;
                }
                for (int ky = 0; ky < K; ky++) {
                    int iy = y * stride - pad + ky;
                    if (iy < 0 || iy >= H) continue;
                    const float* inp_row = inp + ((size_t)b * H + iy) * W * C;
                    // the K taps of this kernel row read one contiguous span (kx, c) of K*C
                    // floats in the input row and in weight[o, ky]: walk it in chunks
                    for (int s0 = 0; s0 < KC; s0 += MM_KC) {
                        int kc = KC - s0 < MM_KC ? KC - s0 : MM_KC;
                        // packed[s][j] = weight[o0 + j, ky, span s0 + s]
                        for (int j = 0; j < MM_NR; j++) {
                            const float* w = weight + (size_t)(o0 + j) * KKC + (size_t)ky * KC + s0;
                            for (int e = 0; e < kc; e++) packed[e * MM_NR + j] = j < no ? w[e] : 0.0f;
                        }
                        for (int x = 0; x < Wo; x += MM_MR) {
                            const float* a[MM_MR];
                            float* o[MM_MR];
                            int inside = 1;   // every row's whole span lies in the input
                            for (int r = 0; r < MM_MR; r++) {
                                int ix0 = (x + r) * stride - pad;
                                if (x + r < Wo && (ix0 < 0 || ix0 + K > W)) inside = 0;
                            }
                            if (inside) {
                                for (int r = 0; r < MM_MR; r++) {
                                    int ok = x + r < Wo;
                                    int ix0 = (ok ? x + r : x) * stride - pad;
                                    a[r] = inp_row + (ptrdiff_t)ix0 * C + s0;
                                    o[r] = ok ? out_row + (size_t)(x + r) * OC : NULL;
                                }
                                mm_tile(o, no, a, 1, packed, kc);
                                continue;
                            }
                            // at the border: one tap (one kx) of the chunk at a time
                            for (int kx = s0 / C; kx * C < s0 + kc; kx++) {
                                int e0 = kx * C > s0 ? kx * C : s0;
                                int e1 = (kx + 1) * C < s0 + kc ? (kx + 1) * C : s0 + kc;
                                for (int r = 0; r < MM_MR; r++) {
                                    int ix = (x + r) * stride - pad + kx;
                                    int ok = x + r < Wo && ix >= 0 && ix < W;
                                    a[r] = ok ? inp_row + (size_t)ix * C + (e0 - kx * C) : inp_row;
                                    o[r] = ok ? out_row + (size_t)(x + r) * OC : NULL;
                                }
                                mm_tile(o, no, a, 1, packed + (size_t)(e0 - s0) * MM_NR, e1 - e0);
                            }
                        }
                    }
                }
            }
        }
    }
}

void conv2d_backward_cpu(float* dinp, float* dweight, float* dbias, const float* dout,
                         const float* inp, const float* weight,
                         int B, int H, int W, int C, int OC, int K, int stride, int pad,
                         int Ho, int Wo) {
    size_t KKC = (size_t)K * K * C;
    double work = (double)B * Ho * Wo * OC * KKC;   // run small problems on one thread
    // dinp: task = one input row (b, iy) x MM_NR input channels, so every task owns its
    // outputs. For each tap (ky, kx) whose output row y = (iy + pad - ky) / stride exists:
    // dinp[b, iy, ix, c-block] += dout[b, y, x, :] @ weight[:, ky, kx, c-block] over x.
    if (dinp) {
        int ntasks_c = (C + MM_NR - 1) / MM_NR;
        #pragma omp parallel for collapse(3) schedule(static) if (work > 65536.0)
        for (int b = 0; b < B; b++) {
            for (int iy = 0; iy < H; iy++) {
                for (int ct = 0; ct < ntasks_c; ct++) {
                    float packed[MM_KC * MM_NR];
                    int c0 = ct * MM_NR, nc = C - c0 < MM_NR ? C - c0 : MM_NR;
                    float* dinp_row = dinp + ((size_t)b * H + iy) * W * C + c0;
                    for (int ky = 0; ky < K; ky++) {
                        int ty = iy + pad - ky;
                        if (ty < 0 || ty % stride != 0 || ty / stride >= Ho) continue;
                        const float* dout_row = dout + ((size_t)b * Ho + ty / stride) * Wo * OC;
                        for (int kx = 0; kx < K; kx++) {
                            for (int o0 = 0; o0 < OC; o0 += MM_KC) {
                                int kc = OC - o0 < MM_KC ? OC - o0 : MM_KC;
                                // packed[o][j] = weight[o0 + o, ky, kx, c0 + j]
                                for (int o = 0; o < kc; o++) {
                                    const float* w = weight + (size_t)(o0 + o) * KKC + ((size_t)ky * K + kx) * C + c0;
                                    for (int j = 0; j < MM_NR; j++) packed[o * MM_NR + j] = j < nc ? w[j] : 0.0f;
                                }
                                for (int x = 0; x < Wo; x += MM_MR) {
                                    const float* a[MM_MR];
                                    float* d[MM_MR];
                                    for (int r = 0; r < MM_MR; r++) {
                                        int ix = (x + r) * stride - pad + kx;
                                        int ok = x + r < Wo && ix >= 0 && ix < W;
                                        a[r] = ok ? dout_row + (size_t)(x + r) * OC + o0 : dout_row + o0;
                                        d[r] = ok ? dinp_row + (size_t)ix * C : NULL;
                                    }
                                    mm_tile(d, nc, a, 1, packed, kc);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // dweight: for a kernel row ky, dweight[o, ky, :, :] is a contiguous (K*C) row and so is
    // the input span (kx, c) under the K taps of one output pixel. Task = up to 256 output
    // channels x ky x MM_NR columns of that (K*C) row:
    // dweight[o-block, ky, cols] += dout^T (o, pixels) @ input spans (pixels, cols),
    // walking all B*Ho*Wo output pixels in chunks of MM_KC (taps outside the input packed as 0).
    if (dweight) {
        int KC = K * C;
        const int OB = 256;   // output channels per task: one packed chunk serves them all
        int ntasks_o = (OC + OB - 1) / OB, ntasks_j = (KC + MM_NR - 1) / MM_NR;
        int npix = B * Ho * Wo;
        #pragma omp parallel for collapse(3) schedule(static) if (work > 65536.0)
        for (int ot = 0; ot < ntasks_o; ot++) {
            for (int ky = 0; ky < K; ky++) {
                for (int jt = 0; jt < ntasks_j; jt++) {
                    float packed[MM_KC * MM_NR];
                    int o0 = ot * OB, o1 = o0 + OB < OC ? o0 + OB : OC;
                    int j0 = jt * MM_NR, nj = KC - j0 < MM_NR ? KC - j0 : MM_NR;
                    int kx_of[MM_NR];   // tap column of each packed column
                    for (int j = 0; j < MM_NR; j++) kx_of[j] = (j0 + (j < nj ? j : 0)) / C;
                    int b = 0, y = 0, x = 0;   // output pixel p0 + p, advanced incrementally
                    for (int p0 = 0; p0 < npix; p0 += MM_KC) {
                        int kc = npix - p0 < MM_KC ? npix - p0 : MM_KC;
                        for (int p = 0; p < kc; p++) {
                            int iy = y * stride - pad + ky, ix0 = x * stride - pad;
                            float* dst = packed + p * MM_NR;
                            if (iy < 0 || iy >= H) {
                                for (int j = 0; j < MM_NR; j++) dst[j] = 0.0f;
                            } else {
                                // span[j] = inp[b, iy, ix0 + kx_of[j], (j0 + j) % C]
                                const float* span = inp + ((size_t)b * H + iy) * W * C + (ptrdiff_t)ix0 * C + j0;
                                if (nj == MM_NR && ix0 >= 0 && ix0 + K <= W) {
                                    for (int j = 0; j < MM_NR; j++) dst[j] = span[j];
                                } else {
                                    for (int j = 0; j < MM_NR; j++) {
                                        int ix = ix0 + kx_of[j];
                                        dst[j] = j < nj && ix >= 0 && ix < W ? span[j] : 0.0f;
                                    }
                                }
                            }
                            if (++x == Wo) { x = 0; if (++y == Ho) { y = 0; b++; } }
                        }
                        for (int o = o0; o < o1; o += MM_MR) {
                            const float* a[MM_MR];
                            float* d[MM_MR];
                            for (int r = 0; r < MM_MR; r++) {
                                int orow = o + r < o1 ? o + r : o1 - 1;
                                a[r] = dout + (size_t)p0 * OC + orow;
                                d[r] = o + r < o1 ? dweight + (size_t)(o + r) * KKC + (size_t)ky * KC + j0 : NULL;
                            }
                            mm_tile(d, nj, a, OC, packed, kc);
                        }
                    }
                }
            }
        }
    }
    // dbias (OC) += sums of dout over all output pixels, in double
    if (dbias) {
        int npix = B * Ho * Wo, nblocks = (OC + 63) / 64;
        #pragma omp parallel for schedule(static) if (work > 65536.0)
        for (int ob = 0; ob < nblocks; ob++) {
            int o0 = ob * 64, no = OC - o0 < 64 ? OC - o0 : 64;
            double sum[64] = {0.0};
            for (int p = 0; p < npix; p++) {
                const float* d = dout + (size_t)p * OC + o0;
                for (int j = 0; j < no; j++) sum[j] += d[j];
            }
            for (int j = 0; j < no; j++) dbias[o0 + j] += (float)sum[j];
        }
    }
}

// ============================================================================
// end of OPS PART A
// ============================================================================


// ============================================================================
// OPS PART B: window partition/reverse, patch merge, upsampling, point sample,
// sine position encoding, losses, AdamW, sum of squares  (CPU references)
// ============================================================================

// ----------------------------------------------------------------------------
// table gather (Swin relative position bias)

void bias_gather_forward_cpu(float* out, const float* table, const int* index, int N, int NH) {
    for (int h = 0; h < NH; h++)
        for (int n = 0; n < N; n++) out[(size_t)h * N + n] = table[(size_t)index[n] * NH + h];
}

void bias_gather_backward_cpu(float* dtable, const float* dout, const int* index, int N, int NH) {
    for (int h = 0; h < NH; h++)
        for (int n = 0; n < N; n++) dtable[(size_t)index[n] * NH + h] += dout[(size_t)h * N + n];
}

// ----------------------------------------------------------------------------
// Swin windows: pad bottom/right, roll by -shift, cut into ws x ws windows
// (window_source, the pixel of a window token: ttt_index.h)

void window_partition_forward_cpu(float* out, const float* inp, int B, int H, int W, int C,
                                  int ws, int shift) {
    int nWh = (H + ws - 1) / ws, nWw = (W + ws - 1) / ws, T = ws * ws;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int w = 0; w < nWh * nWw; w++) {
            for (int t = 0; t < T; t++) {
                float* o = out + (((size_t)b * nWh * nWw + w) * T + t) * C;
                long src = window_source(b, w, t, H, W, ws, shift, nWw);
                if (src < 0) memset(o, 0, C * sizeof(float));
                else memcpy(o, inp + (size_t)src * C, C * sizeof(float));
            }
        }
    }
}

void window_partition_backward_cpu(float* dinp, const float* dout, int B, int H, int W, int C,
                                   int ws, int shift) {
    // each input pixel appears exactly once among the windows, so the scatter is race-free
    int nWh = (H + ws - 1) / ws, nWw = (W + ws - 1) / ws, T = ws * ws;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int w = 0; w < nWh * nWw; w++) {
            for (int t = 0; t < T; t++) {
                long src = window_source(b, w, t, H, W, ws, shift, nWw);
                if (src < 0) continue;
                {
                    const float* d = dout + (((size_t)b * nWh * nWw + w) * T + t) * C;
                    float* di = dinp + (size_t)src * C;
                    for (int c = 0; c < C; c++) di[c] += d[c];
                }
            }
        }
    }
}

void window_reverse_forward_cpu(float* out, const float* inp, int B, int H, int W, int C,
                                int ws, int shift) {
    int nWh = (H + ws - 1) / ws, nWw = (W + ws - 1) / ws, T = ws * ws;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int w = 0; w < nWh * nWw; w++) {
            for (int t = 0; t < T; t++) {
                long dst = window_source(b, w, t, H, W, ws, shift, nWw);
                if (dst < 0) continue;   // padding is cropped away
                memcpy(out + (size_t)dst * C, inp + (((size_t)b * nWh * nWw + w) * T + t) * C,
                       C * sizeof(float));
            }
        }
    }
}

void window_reverse_backward_cpu(float* dinp, const float* dout, int B, int H, int W, int C,
                                 int ws, int shift) {
    int nWh = (H + ws - 1) / ws, nWw = (W + ws - 1) / ws, T = ws * ws;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int w = 0; w < nWh * nWw; w++) {
            for (int t = 0; t < T; t++) {
                long src = window_source(b, w, t, H, W, ws, shift, nWw);
                if (src < 0) continue;   // cropped tokens get no gradient
                float* di = dinp + (((size_t)b * nWh * nWw + w) * T + t) * C;
                const float* d = dout + (size_t)src * C;
                for (int c = 0; c < C; c++) di[c] += d[c];
            }
        }
    }
}

// ----------------------------------------------------------------------------
// Swin block fusions: the window ops above fused with the LayerNorm, residual and drop-path
// around them. Same float operations as the unfused chain (bit for bit), except
// layernorm_apply, which starts from the stored float mean instead of the double one.

void layernorm_partition_forward_cpu(float* out, float* mean, float* rstd, const float* inp,
                                     const float* weight, const float* bias, int B, int H, int W, int C,
                                     int ws, int shift) {
    int nWh = (H + ws - 1) / ws, nWw = (W + ws - 1) / ws, T = ws * ws;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int w = 0; w < nWh * nWw; w++) {
            for (int t = 0; t < T; t++) {
                float* o = out + (((size_t)b * nWh * nWw + w) * T + t) * C;
                long src = window_source(b, w, t, H, W, ws, shift, nWw);
                if (src < 0) { memset(o, 0, C * sizeof(float)); continue; }   // padding after the LN
                float m, r;
                layernorm_row(o, &m, &r, inp + (size_t)src * C, weight, bias, C);
                if (mean) mean[src] = m;
                if (rstd) rstd[src] = r;
            }
        }
    }
}

void layernorm_partition_backward_cpu(float* dinp, float* dweight, float* dbias, const float* dout,
                                      const float* inp, const float* weight, const float* mean,
                                      const float* rstd, int B, int H, int W, int C, int ws, int shift) {
    // the reference composes the two ops through a (B, H, W, C) temporary
    size_t n = (size_t)B * H * W * C;
    float* dln = (float*)callocCheck(n ? n : 1, sizeof(float));
    window_partition_backward_cpu(dln, dout, B, H, W, C, ws, shift);
    layernorm_backward_cpu(dinp, dweight, dbias, dln, inp, weight, mean, rstd, B * H * W, C);
    free(dln);
}

void window_reverse_residual_forward_cpu(float* out, const float* inp, const float* bias, const float* residual,
                                         const float* scale, int B, int H, int W, int C, int ws, int shift) {
    int nWh = (H + ws - 1) / ws, nWw = (W + ws - 1) / ws, T = ws * ws;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int w = 0; w < nWh * nWw; w++) {
            float s = scale ? scale[b] : 1.0f;
            for (int t = 0; t < T; t++) {
                long dst = window_source(b, w, t, H, W, ws, shift, nWw);
                if (dst < 0) continue;   // padding is cropped away
                const float* x = inp + (((size_t)b * nWh * nWw + w) * T + t) * C;
                const float* r = residual + (size_t)dst * C;
                float* y = out + (size_t)dst * C;
                for (int c = 0; c < C; c++) y[c] = (bias ? x[c] + bias[c] : x[c]) * s + r[c];
            }
        }
    }
}

void window_reverse_residual_backward_cpu(float* dresidual, float* dinp, const float* dout,
                                          const float* scale, int B, int H, int W, int C, int ws, int shift) {
    // WRITES both (ttt.h); each pixel is one window token, so both scatters are race-free
    int nWh = (H + ws - 1) / ws, nWw = (W + ws - 1) / ws, T = ws * ws;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int w = 0; w < nWh * nWw; w++) {
            float s = scale ? scale[b] : 1.0f;
            for (int t = 0; t < T; t++) {
                long src = window_source(b, w, t, H, W, ws, shift, nWw);
                float* di = dinp ? dinp + (((size_t)b * nWh * nWw + w) * T + t) * C : NULL;
                if (src < 0) {   // cropped tokens get no gradient: 0
                    if (di) memset(di, 0, C * sizeof(float));
                    continue;
                }
                const float* d = dout + (size_t)src * C;
                if (di) {
                    for (int c = 0; c < C; c++) di[c] = d[c] * s;
                }
                if (dresidual) {
                    float* dr = dresidual + (size_t)src * C;
                    for (int c = 0; c < C; c++) dr[c] = d[c];
                }
            }
        }
    }
}

void layernorm_apply_cpu(float* out, const float* inp, const float* mean, const float* rstd,
                         const float* weight, const float* bias, int N, int C) {
    #pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        float* y = out + (size_t)n * C;
        for (int c = 0; c < C; c++) y[c] = ((float)(x[c] - (double)mean[n])) * rstd[n] * weight[c] + bias[c];
    }
}

void scale_rows_add_forward_cpu(float* out, const float* inp, const float* residual, const float* scale,
                                int B, size_t N) {
    for (int b = 0; b < B; b++) {
        float s = scale ? scale[b] : 1.0f;
        const float* x = inp + (size_t)b * N;
        const float* r = residual + (size_t)b * N;
        float* y = out + (size_t)b * N;
        #pragma omp parallel for if (N > 65536)
        for (size_t i = 0; i < N; i++) y[i] = x[i] * s + r[i];
    }
}

void scale_rows_add_backward_cpu(float* dinp, float* dresidual, const float* dout, const float* scale,
                                 int B, size_t N) {
    for (int b = 0; b < B; b++) {
        float s = scale ? scale[b] : 1.0f;
        const float* dy = dout + (size_t)b * N;
        #pragma omp parallel for if (N > 65536)
        for (size_t i = 0; i < N; i++) {   // WRITES both (ttt.h)
            if (dinp) dinp[(size_t)b * N + i] = dy[i] * s;
            if (dresidual) dresidual[(size_t)b * N + i] = dy[i];
        }
    }
}

// ----------------------------------------------------------------------------
// patch merging gather: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 4C)

void patch_merge_forward_cpu(float* out, const float* inp, int B, int H, int W, int C) {
    int Ho = (H + 1) / 2, Wo = (W + 1) / 2;
    // quarter q of (y, x) reads patch_merge_source (ttt_index.h): (0,0), (1,0), (0,1), (1,1)
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int y = 0; y < Ho; y++) {
            for (int x = 0; x < Wo; x++) {
                float* o = out + (((size_t)b * Ho + y) * Wo + x) * 4 * C;
                for (int q = 0; q < 4; q++) {
                    int iy, ix;
                    patch_merge_source(y, x, q, &iy, &ix);
                    if (iy >= H || ix >= W) memset(o + q * C, 0, C * sizeof(float));
                    else memcpy(o + q * C, inp + (((size_t)b * H + iy) * W + ix) * C, C * sizeof(float));
                }
            }
        }
    }
}

void patch_merge_backward_cpu(float* dinp, const float* dout, int B, int H, int W, int C) {
    int Ho = (H + 1) / 2, Wo = (W + 1) / 2;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int y = 0; y < Ho; y++) {
            for (int x = 0; x < Wo; x++) {
                const float* d = dout + (((size_t)b * Ho + y) * Wo + x) * 4 * C;
                for (int q = 0; q < 4; q++) {
                    int iy, ix;
                    patch_merge_source(y, x, q, &iy, &ix);
                    if (iy >= H || ix >= W) continue;
                    float* di = dinp + (((size_t)b * H + iy) * W + ix) * C;
                    for (int c = 0; c < C; c++) di[c] += d[q * C + c];
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------
// resizing, PyTorch F.interpolate semantics (nearest_source, bilinear_source: ttt_index.h)

void upsample_nearest_forward_cpu(float* out, const float* inp, int B, int H, int W, int C,
                                  int Ho, int Wo) {
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int y = 0; y < Ho; y++) {
            int sy = nearest_source(y, H, Ho);
            for (int x = 0; x < Wo; x++) {
                int sx = nearest_source(x, W, Wo);
                memcpy(out + (((size_t)b * Ho + y) * Wo + x) * C,
                       inp + (((size_t)b * H + sy) * W + sx) * C, C * sizeof(float));
            }
        }
    }
}

void upsample_nearest_backward_cpu(float* dinp, const float* dout, int B, int H, int W, int C,
                                   int Ho, int Wo) {
    // gather form, race-free: each (b, input row iy) is owned by one thread and collects
    // the output rows whose source row is iy (a scatter over output rows would collide)
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int iy = 0; iy < H; iy++) {
            for (int y = 0; y < Ho; y++) {
                if (nearest_source(y, H, Ho) != iy) continue;
                for (int x = 0; x < Wo; x++) {
                    int sx = nearest_source(x, W, Wo);
                    float* di = dinp + (((size_t)b * H + iy) * W + sx) * C;
                    const float* d = dout + (((size_t)b * Ho + y) * Wo + x) * C;
                    for (int c = 0; c < C; c++) di[c] += d[c];
                }
            }
        }
    }
}


void upsample_bilinear_forward_cpu(float* out, const float* inp, int B, int H, int W, int C,
                                   int Ho, int Wo) {
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int y = 0; y < Ho; y++) {
            int y0, y1; float ly;
            bilinear_source(y, H, Ho, &y0, &y1, &ly);
            for (int x = 0; x < Wo; x++) {
                int x0, x1; float lx;
                bilinear_source(x, W, Wo, &x0, &x1, &lx);
                const float* p00 = inp + (((size_t)b * H + y0) * W + x0) * C;
                const float* p01 = inp + (((size_t)b * H + y0) * W + x1) * C;
                const float* p10 = inp + (((size_t)b * H + y1) * W + x0) * C;
                const float* p11 = inp + (((size_t)b * H + y1) * W + x1) * C;
                float* o = out + (((size_t)b * Ho + y) * Wo + x) * C;
                for (int c = 0; c < C; c++)
                    o[c] = (1.0f - ly) * ((1.0f - lx) * p00[c] + lx * p01[c])
                         + ly * ((1.0f - lx) * p10[c] + lx * p11[c]);
            }
        }
    }
}

void upsample_bilinear_backward_cpu(float* dinp, const float* dout, int B, int H, int W, int C,
                                    int Ho, int Wo) {
    // gather form, race-free: each (b, input row iy) is owned by one thread. Output row y
    // reaches input row iy with weight wy = (1 - ly)[y0 == iy] + ly [y1 == iy]; along x the
    // scatter stays inside the owned row, so no two threads write the same element.
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int iy = 0; iy < H; iy++) {
            for (int y = 0; y < Ho; y++) {
                int y0, y1; float ly;
                bilinear_source(y, H, Ho, &y0, &y1, &ly);
                if (y0 != iy && y1 != iy) continue;
                float wy = (y0 == iy ? 1.0f - ly : 0.0f) + (y1 == iy ? ly : 0.0f);
                float* drow = dinp + ((size_t)b * H + iy) * W * C;
                for (int x = 0; x < Wo; x++) {
                    int x0, x1; float lx;
                    bilinear_source(x, W, Wo, &x0, &x1, &lx);
                    const float* d = dout + (((size_t)b * Ho + y) * Wo + x) * C;
                    float* p0 = drow + (size_t)x0 * C;
                    float* p1 = drow + (size_t)x1 * C;
                    float w0 = wy * (1.0f - lx), w1 = wy * lx;
                    for (int c = 0; c < C; c++) { p0[c] += w0 * d[c]; p1[c] += w1 * d[c]; }
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------
// point sampling: grid_sample(bilinear, align_corners=False, zeros) at (x, y) in [0, 1]
// (point_taps: ttt_index.h)

void point_sample_forward_cpu(float* out, const float* inp, const float* coords,
                              int M, int H, int W, int P) {
    #pragma omp parallel for schedule(static) if ((long)M * P > 4096)
    for (int m = 0; m < M; m++) {
        const float* map = inp + (size_t)m * H * W;
        for (int p = 0; p < P; p++) {
            const float* c = coords + ((size_t)m * P + p) * 2;
            int idx[4]; float wt[4];
            point_taps(c[0], c[1], H, W, idx, wt);
            float s = 0.0f;
            for (int t = 0; t < 4; t++) if (idx[t] >= 0) s += wt[t] * map[idx[t]];
            out[(size_t)m * P + p] = s;
        }
    }
}

void point_sample_backward_cpu(float* dinp, const float* dout, const float* coords,
                               int M, int H, int W, int P) {
    #pragma omp parallel for schedule(static) if ((long)M * P > 4096)
    for (int m = 0; m < M; m++) {
        float* dmap = dinp + (size_t)m * H * W;
        for (int p = 0; p < P; p++) {
            const float* c = coords + ((size_t)m * P + p) * 2;
            int idx[4]; float wt[4];
            point_taps(c[0], c[1], H, W, idx, wt);
            float d = dout[(size_t)m * P + p];
            for (int t = 0; t < 4; t++) if (idx[t] >= 0) dmap[idx[t]] += wt[t] * d;
        }
    }
}

// ----------------------------------------------------------------------------
// sine position encoding (DETR / Mask2Former PositionEmbeddingSine, normalize=True)

void sine_position_encoding_cpu(float* out, int H, int W, int C) {
    int F = C / 2;   // features per axis
    const double scale = 2.0 * M_PI, eps = 1e-6;
    for (int y = 0; y < H; y++) {
        for (int x = 0; x < W; x++) {
            // cumulative sums of an all-ones mask are row+1 and col+1, normalised by the last
            double ye = (y + 1) / (H + eps) * scale, xe = (x + 1) / (W + eps) * scale;
            float* o = out + ((size_t)y * W + x) * C;
            for (int k = 0; k < F; k++) {
                double dim_t = pow(10000.0, 2.0 * (k / 2) / F);
                double py = ye / dim_t, px = xe / dim_t;
                o[k] = (float)(k % 2 == 0 ? sin(py) : cos(py));
                o[F + k] = (float)(k % 2 == 0 ? sin(px) : cos(px));
            }
        }
    }
}

// ----------------------------------------------------------------------------
// multi-scale deformable attention (math in ttt.h)

int ms_deform_level_starts(const int* shapes, int L, int* start) {
    if (L < 1 || L > MSDA_MAX_LEVELS) ttt_die("ms_deform_attn: %d levels outside [1, %d]", L, MSDA_MAX_LEVELS);
    int S = 0;
    for (int l = 0; l < L; l++) {
        if (shapes[2 * l] < 1 || shapes[2 * l + 1] < 1)
            ttt_die("ms_deform_attn: level %d has size %d x %d", l, shapes[2 * l], shapes[2 * l + 1]);
        start[l] = S;
        S += shapes[2 * l] * shapes[2 * l + 1];
    }
    return S;
}

static void msda_check(const int* shapes, int L, int S, int* start) {
    int total = ms_deform_level_starts(shapes, L, start);
    if (total != S) ttt_die("ms_deform_attn: the levels hold %d tokens, value has %d", total, S);
}

void ms_deform_attn_forward_cpu(float* out, const float* value, const int* shapes, const float* loc,
                                const float* aw, int B, int S, int Lq, int NH, int HD, int L, int P) {
    int start[MSDA_MAX_LEVELS];
    msda_check(shapes, L, S, start);
    size_t D = (size_t)NH * HD;
    #pragma omp parallel for collapse(2) schedule(static) if ((long)B * Lq * NH * L * P * HD > 65536)
    for (int b = 0; b < B; b++) {
        for (int q = 0; q < Lq; q++) {
            double acc[HD];
            for (int h = 0; h < NH; h++) {
                for (int c = 0; c < HD; c++) acc[c] = 0.0;
                size_t bqh = ((size_t)b * Lq + q) * NH + h;
                for (int l = 0; l < L; l++) {
                    int H = shapes[2 * l], W = shapes[2 * l + 1];
                    const float* v = value + ((size_t)b * S + start[l]) * D + (size_t)h * HD;
                    for (int p = 0; p < P; p++) {
                        size_t k = (bqh * L + l) * P + p;
                        int idx[4]; float wt[4];
                        point_taps(loc[2 * k], loc[2 * k + 1], H, W, idx, wt);
                        for (int t = 0; t < 4; t++) {
                            if (idx[t] < 0) continue;
                            double w = (double)aw[k] * wt[t];
                            const float* vt = v + (size_t)idx[t] * D;
                            for (int c = 0; c < HD; c++) acc[c] += w * vt[c];
                        }
                    }
                }
                float* o = out + bqh * HD;
                for (int c = 0; c < HD; c++) o[c] = (float)acc[c];
            }
        }
    }
}

// parallel over (b, h): every write to dvalue[b, ., h, .] comes from one thread
void ms_deform_attn_backward_cpu(float* dvalue, float* dloc, float* daw, const float* dout,
                                 const float* value, const int* shapes, const float* loc, const float* aw,
                                 int B, int S, int Lq, int NH, int HD, int L, int P) {
    int start[MSDA_MAX_LEVELS];
    msda_check(shapes, L, S, start);
    size_t D = (size_t)NH * HD;
    #pragma omp parallel for collapse(2) schedule(static) if ((long)B * Lq * NH * L * P * HD > 65536)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int q = 0; q < Lq; q++) {
                size_t bqh = ((size_t)b * Lq + q) * NH + h;
                const float* g = dout + bqh * HD;
                for (int l = 0; l < L; l++) {
                    int H = shapes[2 * l], W = shapes[2 * l + 1];
                    size_t row0 = (size_t)b * S + start[l];
                    const float* v = value + row0 * D + (size_t)h * HD;
                    for (int p = 0; p < P; p++) {
                        size_t k = (bqh * L + l) * P + p;
                        // taps 0..3 = (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1); -1 outside
                        int idx[4]; float lx, ly, wt[4];
                        bilinear_taps(loc[2 * k] * W - 0.5f, loc[2 * k + 1] * H - 0.5f, H, W, idx, &lx, &ly);
                        bilinear_weights(lx, ly, wt);
                        double gs = 0.0, gx = 0.0, gy = 0.0;
                        for (int c = 0; c < HD; c++) {
                            float t[4];
                            for (int j = 0; j < 4; j++) t[j] = idx[j] >= 0 ? v[(size_t)idx[j] * D + c] : 0.0f;
                            double s = wt[0] * t[0] + wt[1] * t[1] + wt[2] * t[2] + wt[3] * t[3];
                            double sx = (1.0 - ly) * (t[1] - t[0]) + ly * (t[3] - t[2]);
                            double sy = (1.0 - lx) * (t[2] - t[0]) + lx * (t[3] - t[1]);
                            gs += g[c] * s; gx += g[c] * sx; gy += g[c] * sy;
                        }
                        if (dvalue) {
                            float* dv = dvalue + row0 * D + (size_t)h * HD;
                            for (int j = 0; j < 4; j++) {
                                if (idx[j] < 0) continue;
                                float w = aw[k] * wt[j];
                                float* dvt = dv + (size_t)idx[j] * D;
                                for (int c = 0; c < HD; c++) dvt[c] += w * g[c];
                            }
                        }
                        if (daw) daw[k] += (float)gs;
                        if (dloc) {
                            dloc[2 * k] += (float)(aw[k] * gx * W);
                            dloc[2 * k + 1] += (float)(aw[k] * gy * H);
                        }
                    }
                }
            }
        }
    }
}

// level, column and row of token q
static void msda_token(int q, const int* shapes, const int* start, int L, int* lq, int* x, int* y) {
    int l = L - 1;
    while (l > 0 && q < start[l]) l--;
    int r = q - start[l];
    *lq = l; *y = r / shapes[2 * l + 1]; *x = r % shapes[2 * l + 1];
}

void ms_deform_locations_forward_cpu(float* loc, const float* off, const int* shapes, int B, int L,
                                     int NH, int P) {
    int start[MSDA_MAX_LEVELS];
    int S = ms_deform_level_starts(shapes, L, start);
    size_t per_q = (size_t)NH * L * P;
    #pragma omp parallel for collapse(2) schedule(static) if ((long)B * S * NH * L * P > 65536)
    for (int b = 0; b < B; b++) {
        for (int q = 0; q < S; q++) {
            int lq, x, y;
            msda_token(q, shapes, start, L, &lq, &x, &y);
            float rx = (x + 0.5f) / (float)shapes[2 * lq + 1], ry = (y + 0.5f) / (float)shapes[2 * lq];
            size_t k0 = ((size_t)b * S + q) * per_q;
            for (size_t j = 0; j < per_q; j++) {
                int l = (int)((j / P) % L);
                size_t k = k0 + j;
                loc[2 * k] = rx + off[2 * k] / (float)shapes[2 * l + 1];
                loc[2 * k + 1] = ry + off[2 * k + 1] / (float)shapes[2 * l];
            }
        }
    }
}

void ms_deform_locations_backward_cpu(float* doff, const float* dloc, const int* shapes, int B, int L,
                                      int NH, int P) {
    int start[MSDA_MAX_LEVELS];
    int S = ms_deform_level_starts(shapes, L, start);
    size_t n = (size_t)B * S * NH * L * P;
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t k = 0; k < n; k++) {
        int l = (int)((k / P) % L);
        doff[2 * k] += dloc[2 * k] / (float)shapes[2 * l + 1];
        doff[2 * k + 1] += dloc[2 * k + 1] / (float)shapes[2 * l];
    }
}

// ----------------------------------------------------------------------------
// losses

void masked_mse_forward_cpu(float* loss, const float* pred, const float* target,
                            const float* mask, int N, int C) {
    double num = 0.0, den = 0.0;
    #pragma omp parallel for reduction(+:num, den) schedule(static) if (N > 256)
    for (int n = 0; n < N; n++) {
        if (mask[n] == 0.0f) continue;
        double s = 0.0;
        for (int c = 0; c < C; c++) { double d = (double)pred[(size_t)n * C + c] - target[(size_t)n * C + c]; s += d * d; }
        num += mask[n] * s / C;
        den += mask[n];
    }
    *loss = den > 0.0 ? (float)(num / den) : 0.0f;
}

void masked_mse_backward_cpu(float* dpred, float dloss, const float* pred, const float* target,
                             const float* mask, int N, int C) {
    double den = 0.0;
    for (int n = 0; n < N; n++) den += mask[n];
    if (den <= 0.0) return;
    float k = (float)(2.0 * dloss / (den * C));
    #pragma omp parallel for schedule(static) if (N > 256)
    for (int n = 0; n < N; n++) {
        if (mask[n] == 0.0f) continue;
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)n * C + c;
            dpred[i] += k * mask[n] * (pred[i] - target[i]);
        }
    }
}

// log-sum-exp of one row
static double logsumexp_row(const float* x, int C) {
    float mx = -INFINITY;
    for (int c = 0; c < C; c++) if (x[c] > mx) mx = x[c];
    double s = 0.0;
    for (int c = 0; c < C; c++) s += exp((double)x[c] - mx);
    return mx + log(s);
}

void cross_entropy_forward_cpu(float* loss, const float* logits, const int* targets,
                               const float* class_weight, int N, int C, int ignore_index) {
    double num = 0.0, den = 0.0;
    for (int n = 0; n < N; n++) {
        int t = targets[n];
        if (t == ignore_index) continue;
        double w = class_weight ? class_weight[t] : 1.0;
        const float* x = logits + (size_t)n * C;
        num += w * (logsumexp_row(x, C) - x[t]);
        den += w;
    }
    *loss = den > 0.0 ? (float)(num / den) : 0.0f;
}

void cross_entropy_backward_cpu(float* dlogits, float dloss, const float* logits,
                                const int* targets, const float* class_weight,
                                int N, int C, int ignore_index) {
    // d/dx_c = w_t (softmax_c - [c == t]) / sum w
    double den = 0.0;
    for (int n = 0; n < N; n++) {
        int t = targets[n];
        if (t != ignore_index) den += class_weight ? class_weight[t] : 1.0;
    }
    if (den <= 0.0) return;
    for (int n = 0; n < N; n++) {
        int t = targets[n];
        if (t == ignore_index) continue;
        double w = class_weight ? class_weight[t] : 1.0;
        const float* x = logits + (size_t)n * C;
        double lse = logsumexp_row(x, C);
        float* dx = dlogits + (size_t)n * C;
        for (int c = 0; c < C; c++) {
            double p = exp((double)x[c] - lse);
            dx[c] += (float)(dloss * w * (p - (c == t)) / den);
        }
    }
}

// stable BCE with logits: max(x, 0) - x t + log(1 + exp(-|x|))
void sigmoid_bce_forward_cpu(float* losses, const float* logits, const float* targets, int M, int P) {
    #pragma omp parallel for schedule(static) if ((long)M * P > 16384)
    for (int m = 0; m < M; m++) {
        double s = 0.0;
        for (int p = 0; p < P; p++) {
            double x = logits[(size_t)m * P + p], t = targets[(size_t)m * P + p];
            s += (x > 0 ? x : 0) - x * t + log1p(exp(-fabs(x)));
        }
        losses[m] = (float)(s / P);
    }
}

void sigmoid_bce_backward_cpu(float* dlogits, const float* dlosses, const float* logits,
                              const float* targets, int M, int P) {
    #pragma omp parallel for schedule(static) if ((long)M * P > 16384)
    for (int m = 0; m < M; m++) {
        float k = dlosses[m] / P;
        for (int p = 0; p < P; p++) {
            size_t i = (size_t)m * P + p;
            float s = 1.0f / (1.0f + expf(-logits[i]));
            dlogits[i] += k * (s - targets[i]);
        }
    }
}

void dice_loss_forward_cpu(float* losses, const float* logits, const float* targets, int M, int P) {
    #pragma omp parallel for schedule(static) if ((long)M * P > 16384)
    for (int m = 0; m < M; m++) {
        double st = 0.0, ss = 0.0, stt = 0.0;
        for (int p = 0; p < P; p++) {
            size_t i = (size_t)m * P + p;
            double s = 1.0 / (1.0 + exp(-(double)logits[i]));
            st += s * targets[i]; ss += s; stt += targets[i];
        }
        losses[m] = (float)(1.0 - (2.0 * st + 1.0) / (ss + stt + 1.0));
    }
}

void dice_loss_backward_cpu(float* dlogits, const float* dlosses, const float* logits,
                            const float* targets, int M, int P) {
    // loss = 1 - num/den, num = 2 sum(s t) + 1, den = sum s + sum t + 1;
    // dloss/ds_p = -(2 t_p den - num) / den^2, ds/dx = s (1 - s)
    #pragma omp parallel for schedule(static) if ((long)M * P > 16384)
    for (int m = 0; m < M; m++) {
        double st = 0.0, ss = 0.0, stt = 0.0;
        for (int p = 0; p < P; p++) {
            size_t i = (size_t)m * P + p;
            double s = 1.0 / (1.0 + exp(-(double)logits[i]));
            st += s * targets[i]; ss += s; stt += targets[i];
        }
        double num = 2.0 * st + 1.0, den = ss + stt + 1.0;
        for (int p = 0; p < P; p++) {
            size_t i = (size_t)m * P + p;
            double s = 1.0 / (1.0 + exp(-(double)logits[i]));
            double g = -(2.0 * targets[i] * den - num) / (den * den);
            dlogits[i] += (float)(dlosses[m] * g * s * (1.0 - s));
        }
    }
}

// ----------------------------------------------------------------------------
// optimizer

void adamw_update_cpu(float* params, const float* grads, float* m, float* v, size_t N,
                      float lr, float beta1, float beta2, float eps, float weight_decay, int t) {
    // bias corrections in double: 1 - beta^t loses digits in float for small t
    float c1 = (float)(1.0 - pow((double)beta1, t)), c2 = (float)(1.0 - pow((double)beta2, t));
    #pragma omp parallel for schedule(static) if (N > 65536)
    for (size_t i = 0; i < N; i++) {
        float g = grads[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi; v[i] = vi;
        float mhat = mi / c1, vhat = vi / c2;
        params[i] -= lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * params[i]);
    }
}

void sum_squares_cpu(float* out, const float* x, size_t N) {
    double s = 0.0;
    #pragma omp parallel for reduction(+:s) schedule(static) if (N > 65536)
    for (size_t i = 0; i < N; i++) s += (double)x[i] * x[i];
    *out = (float)s;
}

// ============================================================================
// end of OPS PART B
// ============================================================================


// ============================================================================
// OPS PART C: ops of the MAE head and the Y model (patch masking, input
// normalisation, ...)  (CPU references)
// ============================================================================

static const float IMAGENET_MEAN[3] = {0.485f, 0.456f, 0.406f};   // 123.675 / 255 ...
static const float IMAGENET_STD[3] = {0.229f, 0.224f, 0.225f};     // 58.395 / 255 ...

void mae_prepare_input_cpu(float* inp4, float* target, float* target_mask, const float* rgb,
                           const unsigned char* patch_mask, int B, int H, int W, int Hp, int Wp, int ps,
                           int all_pixels) {
    int nPw = Wp / ps, nPh = Hp / ps, H4 = Hp / 4, W4 = Wp / 4;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int y = 0; y < Hp; y++) {
            for (int x = 0; x < Wp; x++) {
                int inside = y < H && x < W;
                int masked = patch_mask ? patch_mask[((size_t)b * nPh + y / ps) * nPw + x / ps] : 0;
                float* o = inp4 ? inp4 + (((size_t)b * Hp + y) * Wp + x) * 4 : NULL;
                for (int c = 0; c < 3; c++) {
                    float v = inside ? (rgb[(((size_t)b * H + y) * W + x) * 3 + c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c] : 0.0f;
                    if (o) o[c] = masked ? 0.0f : v;
                    if (target || target_mask) {
                        int q = c * 16 + (y % 4) * 4 + (x % 4);
                        size_t i = (((size_t)b * 48 + q) * H4 + y / 4) * W4 + x / 4;
                        if (target) target[i] = v;
                        if (target_mask) target_mask[i] = (inside && (masked || all_pixels)) ? 1.0f : 0.0f;
                    }
                }
                if (o) o[3] = patch_mask == NULL ? 1.0f : (inside && !masked) ? 1.0f : 0.0f;
            }
        }
    }
}

// ============================================================================
// end of OPS PART C
// ============================================================================


// ============================================================================
// IMAGE IO
// ============================================================================

#include "stb_image.h"         // the implementations are in vendor/stb_impl.c
#include "stb_image_write.h"

// 8-bit RGB (H, W, 3) of an image file, malloc'd; NULL with one line in err (image_try_load
// is the same as floats in [0, 1])
unsigned char* image_try_load_u8(const char* path, int* H, int* W, char* err, size_t errlen) {
    int w, h, n;
    unsigned char* px = stbi_load(path, &w, &h, &n, 3);
    if (px == NULL) {
        snprintf(err, errlen, "cannot read image '%s': %s", path,
                 access(path, R_OK) != 0 ? strerror(errno) : stbi_failure_reason());
        return NULL;
    }
    unsigned char* out = (unsigned char*)mallocCheck((size_t)w * h * 3);   // one allocator for callers
    memcpy(out, px, (size_t)w * h * 3);
    stbi_image_free(px);
    *H = h; *W = w;
    return out;
}

float* image_try_load(const char* path, int* H, int* W, char* err, size_t errlen) {
    unsigned char* px = image_try_load_u8(path, H, W, err, errlen);
    if (px == NULL) return NULL;
    size_t n = (size_t)*H * *W * 3;
    float* rgb = (float*)mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) rgb[i] = px[i] / 255.0f;
    free(px);
    return rgb;
}

float* image_load(const char* path, int* H, int* W) {
    char err[1024];
    float* rgb = image_try_load(path, H, W, err, sizeof(err));
    if (rgb == NULL) ttt_die("%s", err);
    return rgb;
}

// write bytes through stb to path.tmp, then rename over path
void png_write_atomic(const char* path, const unsigned char* px, int H, int W, int comp) {
    size_t n = strlen(path) + 8;
    char* tmp = (char*)mallocCheck(n);
    snprintf(tmp, n, "%s.tmp", path);
    int e = 0;   // errno of the failure (the name is freed before dying: nothing leaks at exit)
    if (!stbi_write_png(tmp, W, H, comp, px, W * comp)) e = errno ? errno : EIO;
    else if (rename(tmp, path) != 0) e = errno;
    if (e) remove(tmp);
    free(tmp);
    if (e) ttt_die("cannot write PNG '%s': %s", path, strerror(e));
}

void image_save_png(const char* path, const float* rgb, int H, int W) {
    unsigned char* px = (unsigned char*)mallocCheck((size_t)H * W * 3);
    for (size_t i = 0; i < (size_t)H * W * 3; i++) {
        float v = rgb[i] * 255.0f + 0.5f;
        px[i] = (unsigned char)(v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v);
    }
    png_write_atomic(path, px, H, W, 3);
    free(px);
}

unsigned char* label_load(const char* path, int expect_H, int expect_W, int* H, int* W) {
    int w, h, n;
    if (!stbi_info(path, &w, &h, &n)) {
        ttt_die("cannot read label '%s': %s", path,
                access(path, R_OK) != 0 ? strerror(errno) : stbi_failure_reason());
    }
    if (n != 1) ttt_die("label '%s' has %d channels; expected an 8-bit single-channel PNG of class ids", path, n);
    if (stbi_is_16_bit(path)) ttt_die("label '%s' is a 16-bit PNG; expected an 8-bit single-channel PNG of class ids", path);
    unsigned char* ids = stbi_load(path, &w, &h, &n, 1);
    if (ids == NULL) ttt_die("cannot read label '%s': %s", path, stbi_failure_reason());
    if (expect_H > 0 && (h != expect_H || w != expect_W)) {
        stbi_image_free(ids);
        ttt_die("label '%s' is %dx%d but its image is %dx%d (W x H)", path, w, h, expect_W, expect_H);
    }
    unsigned char* out = (unsigned char*)mallocCheck((size_t)w * h);
    memcpy(out, ids, (size_t)w * h);
    stbi_image_free(ids);
    if (H) *H = h;
    if (W) *W = w;
    return out;
}

void label_save_png(const char* path, const unsigned char* ids, int H, int W) {
    png_write_atomic(path, ids, H, W, 1);
}

// ============================================================================
// end of IMAGE IO
// ============================================================================


// ============================================================================
// CHECKPOINTS
// ============================================================================

void checkpoint_write(const char* path, const int* header, const float* data, size_t n) {
    size_t len = strlen(path) + 8;
    char* tmp = (char*)mallocCheck(len);
    snprintf(tmp, len, "%s.tmp", path);
    FILE* fp = fopen(tmp, "wb");
    if (fp == NULL) ttt_die("cannot write checkpoint '%s': %s", path, strerror(errno));
    int hdr[CKPT_HEADER_INTS];
    memcpy(hdr, header, sizeof(hdr));
    hdr[0] = CKPT_MAGIC;
    hdr[1] = CKPT_VERSION;
    int ok = fwrite(hdr, sizeof(int), CKPT_HEADER_INTS, fp) == CKPT_HEADER_INTS
          && fwrite(data, sizeof(float), n, fp) == n;
    ok = (fclose(fp) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        ttt_die("cannot write checkpoint '%s': %s", path, strerror(e ? e : EIO));
    }
    free(tmp);
}

void checkpoint_read_header(const char* path, int* header) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        ttt_die("checkpoint '%s' is a directory; give the checkpoint file inside it", path);
    FILE* fp = fopen(path, "rb");
    if (fp == NULL) ttt_die("cannot open checkpoint '%s': %s", path, strerror(errno));
    size_t got = fread(header, sizeof(int), CKPT_HEADER_INTS, fp);
    fclose(fp);
    if (got != CKPT_HEADER_INTS)
        ttt_die("checkpoint '%s' is truncated: %zu bytes of header, expected %zu",
                path, got * sizeof(int), CKPT_HEADER_INTS * sizeof(int));
    if (header[0] != CKPT_MAGIC)
        ttt_die("'%s' is not a ttt checkpoint (magic %d, expected %d)", path, header[0], CKPT_MAGIC);
    if (header[1] < CKPT_MIN_VERSION || header[1] > CKPT_VERSION)
        ttt_die("checkpoint '%s' has version %d; this build reads versions %d to %d", path, header[1],
                CKPT_MIN_VERSION, CKPT_VERSION);
}

void checkpoint_check_size(const char* path, size_t n) {
    struct stat st;
    if (stat(path, &st) != 0) ttt_die("cannot open checkpoint '%s': %s", path, strerror(errno));
    // n comes from a header: compare without overflowing (n floats must fit after the header)
    size_t head = CKPT_HEADER_INTS * sizeof(int), size = (size_t)st.st_size;
    if (n > (SIZE_MAX - head) / sizeof(float) || size != head + n * sizeof(float))
        ttt_die("checkpoint '%s' has %lld bytes, expected %.0f for %zu parameters (%s)", path,
                (long long)st.st_size, (double)head + 4.0 * (double)n, n,
                (double)size < (double)head + 4.0 * (double)n ? "truncated" : "too long");
}

void checkpoint_read_data(const char* path, float* data, size_t n) {
    checkpoint_check_size(path, n);
    FILE* fp = fopenCheck(path, "rb");
    fseek(fp, CKPT_HEADER_INTS * sizeof(int), SEEK_SET);
    freadCheck(data, sizeof(float), n, fp);
    fcloseCheck(fp);
}

// ============================================================================
// end of CHECKPOINTS
// ============================================================================
// ----------------------------------------------------------------------------
// matrix-product precision (ttt.h, MATRIX-PRODUCT PRECISION): the parser and the process-wide
// setting, in plain C so the CPU tests reach them; ttt_kernels.cu maps it to cuBLAS compute types

int precision_parse(const char* s) {
    if (s == NULL) return -1;
    if (strcmp(s, "fp32") == 0) return PRECISION_FP32;
    if (strcmp(s, "tf32") == 0) return PRECISION_TF32;
    if (strcmp(s, "bf16") == 0) return PRECISION_BF16;
    return -1;
}

const char* precision_name(int p) {
    return p == PRECISION_FP32 ? "fp32" : p == PRECISION_TF32 ? "tf32" : p == PRECISION_BF16 ? "bf16" : "?";
}

int precision_from_env_values(const char* precision, const char* tf32, char* err, size_t err_bytes) {
    int tf32_off = tf32 != NULL && tf32[0] == '0';   // TTT_TF32=0: float32
    int tf32_on = tf32 != NULL && tf32[0] == '1';    // TTT_TF32=1: tf32 (any other value: no effect)
    if (precision == NULL || precision[0] == '\0')
        return tf32_off ? PRECISION_FP32 : tf32_on ? PRECISION_TF32 : PRECISION_DEFAULT;
    int p = precision_parse(precision);
    if (p < 0) {
        snprintf(err, err_bytes, "TTT_PRECISION: expected bf16, tf32 or fp32, got '%s'", precision);
        return -1;
    }
    if (tf32_off && p != PRECISION_FP32) {
        snprintf(err, err_bytes, "TTT_TF32=0 (float32) and TTT_PRECISION=%s disagree: set one of them", precision);
        return -1;
    }
    return p;
}

static int matmul_precision = -1;   // PRECISION_*; -1 until set or read from the environment

void ttt_cuda_set_precision(int p) {
    if (p != PRECISION_FP32 && p != PRECISION_TF32 && p != PRECISION_BF16)
        ttt_die("internal: ttt_cuda_set_precision(%d): expected PRECISION_FP32, _TF32 or _BF16", p);
    matmul_precision = p;
}

int ttt_cuda_precision(void) {
    if (matmul_precision < 0) {
        char err[256];
        int p = precision_from_env_values(getenv("TTT_PRECISION"), getenv("TTT_TF32"), err, sizeof(err));
        if (p < 0) ttt_die("%s", err);
        matmul_precision = p;
    }
    return matmul_precision;
}

const char* matmul_precision_name(void) {
    int p = ttt_cuda_precision();   // also on the CPU: a bad TTT_PRECISION is an error everywhere
    return ttt_device == DEVICE_CUDA ? precision_name(p) : "fp32";
}

// ----------------------------------------------------------------------------
// file names

int has_image_ext(const char* name) {
    const char* dot = strrchr(name, '.');
    return dot && (!strcasecmp(dot, ".png") || !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".bmp"));
}

// natural order: runs of digits compare by value, everything else bytewise
int natural_cmp(const char* a, const char* b) {
    while (*a && *b) {
        if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
            while (*a == '0') a++;
            while (*b == '0') b++;
            size_t na = 0, nb = 0;
            while (isdigit((unsigned char)a[na])) na++;
            while (isdigit((unsigned char)b[nb])) nb++;
            if (na != nb) return na < nb ? -1 : 1;
            int c = strncmp(a, b, na);
            if (c != 0) return c;
            a += na; b += nb;
        } else {
            if (*a != *b) return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
            a++; b++;
        }
    }
    return (*a != 0) - (*b != 0);
}
