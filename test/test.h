// test/test.h: the tiny test harness every test binary includes.
// A check prints one line with its measured error and counts as passed or failed;
// test_summary() prints "name: N passed, N failed" last and gives the exit code.
#ifndef TEST_H
#define TEST_H
#include "ttt.h"
#include <sys/wait.h>
#include <stdarg.h>
#include <unistd.h>

static int tests_passed = 0, tests_failed = 0;

// a plain assertion
#define CHECK(cond, ...) do { \
    if (cond) { tests_passed++; } \
    else { tests_failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } \
} while (0)

// The line that names a group of checks (those since the previous group line): "ok   <what>"
// when none of them failed, else "FAIL <what>". Not a check itself (the counts are the checks').
static int group_mark = 0;   // tests_failed at the previous group line
static void group_line(const char* fmt, ...) {
    printf("%-4s ", tests_failed == group_mark ? "ok" : "FAIL");
    group_mark = tests_failed;
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

// max_i |a - b| / (max |b| + tiny): one relative figure for a whole tensor
static double max_rel_error(const float* a, const float* b, size_t n) {
    double maxdiff = 0.0, maxref = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= maxdiff)) maxdiff = d;   // NaN propagates as failure
        if (fabs((double)b[i]) > maxref) maxref = fabs((double)b[i]);
    }
    return maxdiff / (maxref + 1e-30);
}

// compare a tensor with a reference, print the relative error, count pass/fail
static int check_close(const char* name, const float* got, const float* ref, size_t n, double tol) {
    double err = max_rel_error(got, ref, n);
    int ok = err <= tol;   // false for NaN
    printf("%-4s %-48s rel err %.3e (tol %.0e, n=%zu)\n", ok ? "ok" : "FAIL", name, err, tol, n);
    if (ok) tests_passed++; else tests_failed++;
    return ok;
}

// Finite-difference gradient check. loss(ctx) runs the forward pass and returns a
// scalar accumulated in double (typically sum(out * fixed random weights)).
// For each checked index i of x, the central difference
//   (loss(x + eps e_i) - loss(x - eps e_i)) / (2 eps)
// is compared with analytic[i]. Checks every index when n <= max_checks, else a
// deterministic spread of max_checks indices. Error = ||num - ana|| / ||num||
// over the checked indices (plus a floor so all-zero gradients compare sanely).
typedef double (*loss_fn)(void* ctx);
static int grad_check(const char* name, float* x, size_t n, const float* analytic,
                      loss_fn loss, void* ctx, float eps, double tol, size_t max_checks) {
    size_t step = (n <= max_checks) ? 1 : n / max_checks;
    double num2 = 0.0, diff2 = 0.0;
    for (size_t i = 0; i < n; i += step) {
        float orig = x[i];
        x[i] = orig + eps; double lp = loss(ctx);
        x[i] = orig - eps; double lm = loss(ctx);
        x[i] = orig;
        double num = (lp - lm) / (2.0 * eps);
        double d = num - (double)analytic[i];
        num2 += num * num; diff2 += d * d;
    }
    double err = sqrt(diff2) / (sqrt(num2) + 1e-12);
    int ok = err <= tol;
    printf("%-4s grad %-43s rel err %.3e (tol %.0e, n=%zu)\n", ok ? "ok" : "FAIL", name, err, tol, n);
    if (ok) tests_passed++; else tests_failed++;
    return ok;
}

// Finite differences through a network full of ReLUs (or bilinear sampling, whose slope jumps
// where a point crosses a pixel): a perturbation that moves some unit across its kink spoils
// the central difference. Per index this check takes central
// differences at eps and 2 eps and the one-sided differences at eps; a kink within 2 eps shows
// as disagreement between the two central ones, a kink within eps (even one the central
// differences straddle symmetrically) as a jump between the forward and backward ones. Indices
// where either pair disagrees by more than 1% plus a float-noise floor of 2e-3 are skipped;
// the rest are compared like grad_check. Fails if more than half were skipped.
static int grad_check_kinks(const char* name, float* x, size_t n, const float* analytic,
                            loss_fn loss, void* ctx, float eps, double tol, size_t max_checks) {
    size_t step = (n <= max_checks) ? 1 : n / max_checks;
    double num2 = 0.0, diff2 = 0.0;
    int checked = 0, skipped = 0;
    double l0 = loss(ctx);
    for (size_t i = 0; i < n; i += step) {
        float orig = x[i];
        double lp[2], lm[2];
        for (int r = 0; r < 2; r++) {
            float e = eps * (float)(r + 1);
            x[i] = orig + e; lp[r] = loss(ctx);
            x[i] = orig - e; lm[r] = loss(ctx);
        }
        x[i] = orig;
        double central1 = (lp[0] - lm[0]) / (2.0 * eps), central2 = (lp[1] - lm[1]) / (4.0 * eps);
        double forward = (lp[0] - l0) / eps, backward = (l0 - lm[0]) / eps;
        double floor = 0.01 * (fabs(central1) + fabs(central2) + 1e-2) + 2e-3;
        if (fabs(central1 - central2) > floor || fabs(forward - backward) > 2.0 * floor) {
            skipped++;
            continue;
        }
        double d = central1 - (double)analytic[i];
        num2 += central1 * central1; diff2 += d * d; checked++;
    }
    double err = sqrt(diff2) / (sqrt(num2) + 1e-12);
    int ok = err <= tol && skipped * 2 <= checked + skipped;
    printf("%-4s grad %-43s rel err %.3e (tol %.0e, n=%zu, %d kinks skipped)\n",
           ok ? "ok" : "FAIL", name, err, tol, n, skipped);
    if (ok) tests_passed++; else tests_failed++;
    return ok;
}

// random host tensor in [lo, hi)
static float* random_tensor(Rng* rng, size_t n, float lo, float hi) {
    float* x = (float*)mallocCheck(n * sizeof(float));
    rng_fill_uniform(rng, x, n, lo, hi);
    return x;
}

// sum(out * w) in double: the scalar loss used by gradient checks
static double dot_double(const float* out, const float* w, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)out[i] * (double)w[i];
    return s;
}

// ||a - b|| / ||b|| over n elements, in double (NaN propagates as failure)
static double l2_rel_error(const float* a, const float* b, size_t n) {
    double d2 = 0.0, r2 = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        d2 += d * d; r2 += (double)b[i] * b[i];
    }
    return sqrt(d2) / (sqrt(r2) + 1e-30);
}

// check_close in the L2 norm, for tensors where single elements may legitimately move
// (TF32 products, float atomics, flipped attention masks); the max error is printed beside
static int check_l2(const char* name, const float* got, const float* ref, size_t n, double tol) {
    double err = l2_rel_error(got, ref, n);
    int ok = err <= tol;   // false for NaN
    printf("%-4s %-48s rel L2 err %.3e, max rel %.3e (tol %.0e, n=%zu)\n", ok ? "ok" : "FAIL", name, err,
           max_rel_error(got, ref, n), tol, n);
    if (ok) tests_passed++; else tests_failed++;
    return ok;
}

// n floats from a reference file
static float* read_floats(FILE* fp, size_t n) {
    float* x = (float*)mallocCheck(n * sizeof(float));
    freadCheck(x, sizeof(float), n, fp);
    return x;
}

// The Swin reference file test/data/swin_ref.bin (format in dev/swin_reference.py): the
// config, parameters, input, the four stage outputs of Hugging Face's SwinBackbone, the
// weights R_s of loss = sum_s sum(out_s * R_s), and that loss's gradients w.r.t. the input
// and the parameters; all on the host. params_match = 0 when our parameter count differs
// from the file's (the rest is then not read); trailing_bytes = 1 when the file goes on
// after the last tensor. A file that is not a reference at all dies.
typedef struct {
    SwinConfig cfg;
    int B, H, W, params_match, trailing_bytes;
    size_t n_params, n_inp, n_out[4];
    float *params, *inp, *out[4], *R[4], *dinp, *dparams;
} SwinReference;

static SwinReference swin_reference_load(const char* path) {
    SwinReference r;
    memset(&r, 0, sizeof(r));
    FILE* fp = fopenCheck(path, "rb");
    int hdr[32];
    freadCheck(hdr, sizeof(int), 32, fp);
    if (hdr[0] != 0x4E495753 || hdr[1] != 1) ttt_die("%s: bad magic/version", path);
    r.B = hdr[2]; r.H = hdr[3]; r.W = hdr[4];
    r.cfg.in_chans = hdr[5]; r.cfg.embed_dim = hdr[6];
    for (int s = 0; s < 4; s++) { r.cfg.depths[s] = hdr[7 + s]; r.cfg.num_heads[s] = hdr[11 + s]; }
    r.cfg.window = hdr[15]; r.cfg.mlp_ratio = hdr[16];
    r.n_params = swin_num_params(&r.cfg);
    r.params_match = r.n_params == (size_t)hdr[17];
    if (!r.params_match) { fcloseCheck(fp); return r; }
    r.n_inp = (size_t)r.B * r.H * r.W * r.cfg.in_chans;
    SwinActs a;   // only for the stage sizes
    swin_point_acts(&a, NULL, &r.cfg, r.B, r.H, r.W);
    for (int s = 0; s < 4; s++) r.n_out[s] = (size_t)r.B * a.Hs[s] * a.Ws[s] * a.C[s];
    r.params = read_floats(fp, r.n_params);
    r.inp = read_floats(fp, r.n_inp);
    for (int s = 0; s < 4; s++) r.out[s] = read_floats(fp, r.n_out[s]);
    for (int s = 0; s < 4; s++) r.R[s] = read_floats(fp, r.n_out[s]);
    r.dinp = read_floats(fp, r.n_inp);
    r.dparams = read_floats(fp, r.n_params);
    char extra;
    r.trailing_bytes = fread(&extra, 1, 1, fp) != 0;
    fcloseCheck(fp);
    return r;
}

static void swin_reference_free(SwinReference* r) {
    free(r->params); free(r->inp); free(r->dinp); free(r->dparams);
    for (int s = 0; s < 4; s++) { free(r->out[s]); free(r->R[s]); }
}

// copies between the host and ttt_device (new buffers: free / ttt_free them)
static float* device_copy_of(const float* host, size_t n) {
    float* d = (float*)ttt_malloc(n * sizeof(float));
    ttt_to_device(d, host, n * sizeof(float));
    return d;
}
static float* host_copy_of(const float* dev, size_t n) {
    float* h = (float*)mallocCheck(n * sizeof(float));
    ttt_to_host(h, dev, n * sizeof(float));
    return h;
}
// a new ttt_device buffer full of NaN: catches elements a forward never writes
static float* device_nan_buffer(size_t n) {
    float* h = (float*)mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = NAN;
    float* d = device_copy_of(h, n);
    free(h);
    return d;
}

// fn(ctx) in a child process with its stderr on a pipe, for checks that bad input dies with one
// clear line: what the child printed there (at most cap - 1 bytes, NUL-terminated) in text, its
// wait status in *status; a child that returns from fn exits 0. Returns 0 when the pipe, fork or
// wait failed (text empty, *status 0), else 1.
static int run_in_child(void (*fn)(void*), void* ctx, char* text, size_t cap, int* status) {
    int fds[2];
    text[0] = 0;
    *status = 0;
    if (pipe(fds) != 0) return 0;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        if (dup2(fds[1], 2) < 0) _exit(2);
        fn(ctx);
        _exit(0);
    }
    close(fds[1]);
    size_t got = 0;
    ssize_t r;
    while (pid > 0 && got < cap - 1 && (r = read(fds[0], text + got, cap - 1 - got)) > 0) got += r;
    close(fds[0]);
    text[got] = 0;
    return pid > 0 && waitpid(pid, status, 0) == pid;
}

// run_in_child for a function of one path (a loader that must die on a bad file)
typedef struct { void (*fn)(const char*); const char* path; } PathCall;
static void path_call(void* p) { PathCall* c = (PathCall*)p; c->fn(c->path); }
static int run_path_in_child(void (*fn)(const char*), const char* path, char* text, size_t cap, int* status) {
    PathCall c = {fn, path};
    return run_in_child(path_call, &c, text, cap, status);
}

static int test_summary(const char* name) {
    printf("%s: %d passed, %d failed\n", name, tests_passed, tests_failed);
    return tests_failed == 0 ? 0 : 1;
}

// a 16-bit grayscale PNG (stb cannot write one): zlib stored blocks, CRCs by hand
static uint32_t crc32_png(const unsigned char* p, size_t n, uint32_t c) {
    c = ~c;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

static void put32(unsigned char* p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }

static void png_chunk(FILE* fp, const char* type, const unsigned char* data, uint32_t n) {
    unsigned char b[4];
    put32(b, n); fwrite(b, 1, 4, fp);
    unsigned char* t = (unsigned char*)mallocCheck(n + 4);
    memcpy(t, type, 4); if (n) memcpy(t + 4, data, n);
    fwrite(t, 1, n + 4, fp);
    put32(b, crc32_png(t, n + 4, 0)); fwrite(b, 1, 4, fp);
    free(t);
}

static void write_png16(const char* path, int H, int W, int value) {
    size_t raw_n = (size_t)H * (1 + 2 * W);
    unsigned char* raw = (unsigned char*)callocCheck(raw_n, 1);
    for (int y = 0; y < H; y++) for (int x = 0; x < W; x++) raw[y * (1 + 2 * W) + 1 + 2 * x + 1] = (unsigned char)value;
    size_t z_n = 2 + 5 + raw_n + 4;   // one stored block (raw_n < 65536)
    unsigned char* z = (unsigned char*)mallocCheck(z_n);
    z[0] = 0x78; z[1] = 0x01; z[2] = 1;
    z[3] = raw_n & 255; z[4] = raw_n >> 8; z[5] = ~raw_n & 255; z[6] = (~raw_n >> 8) & 255;
    memcpy(z + 7, raw, raw_n);
    uint32_t a = 1, b = 0;
    for (size_t i = 0; i < raw_n; i++) { a = (a + raw[i]) % 65521; b = (b + a) % 65521; }
    put32(z + 7 + raw_n, (b << 16) | a);
    FILE* fp = fopenCheck(path, "wb");
    static const unsigned char sig[8] = {137, 80, 78, 71, 13, 10, 26, 10};
    fwrite(sig, 1, 8, fp);
    unsigned char ihdr[13] = {0};
    put32(ihdr, W); put32(ihdr + 4, H);
    ihdr[8] = 16; ihdr[9] = 0;   // 16 bits, grayscale
    png_chunk(fp, "IHDR", ihdr, 13);
    png_chunk(fp, "IDAT", z, (uint32_t)z_n);
    png_chunk(fp, "IEND", NULL, 0);
    fcloseCheck(fp);
    free(raw); free(z);
}

// ----------------------------------------------------------------------------
// helpers of the tests that run the programs and look at what they wrote

// a shell command's exit status (-1 when it did not exit); stdout is flushed first so that the
// test's lines and the command's stay in order
static int run(const char* cmd) {
    fflush(stdout);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// an empty directory at dir (removed first if it exists); 0 on success
static int fresh_dir(const char* dir) {
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", dir, dir);
    return run(cmd);
}

// a whole file, NUL-terminated (malloc'd; *len = its size unless len is NULL); "" (len 0) when it
// cannot be read, so a missing output fails the checks that look into it
static char* read_file(const char* path, size_t* len) {
    if (len) *len = 0;
    FILE* fp = fopen(path, "rb");
    if (fp == NULL) return strdup("");
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char* s = (char*)callocCheck((size_t)(n > 0 ? n : 0) + 1, 1);
    if (n < 0 || fread(s, 1, (size_t)n, fp) != (size_t)n) n = 0;
    s[n] = 0;
    fclose(fp);
    if (len) *len = (size_t)n;
    return s;
}
static char* read_text(const char* path) { return read_file(path, NULL); }

// n bytes to path (dies when it cannot)
static void write_file(const char* path, const void* data, size_t n) {
    FILE* fp = fopenCheck(path, "wb");
    if (n) fwriteCheck(data, 1, n, fp);
    fcloseCheck(fp);
}

// 1 when the files a and b both exist and hold the same bytes
static int same_bytes(const char* a, const char* b) {
    FILE* fa = fopen(a, "rb");
    FILE* fb = fopen(b, "rb");
    int same = fa && fb;
    if (same) {
        int ca, cb;
        do { ca = fgetc(fa); cb = fgetc(fb); } while (ca == cb && ca != EOF);
        same = ca == cb;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

// occurrences of sub in s (overlapping ones too)
static int count_substr(const char* s, const char* sub) {
    int n = 0;
    for (const char* p = strstr(s, sub); p; p = strstr(p + 1, sub)) n++;
    return n;
}

// lines of s that contain sub
static int count_lines_with(const char* s, const char* sub) {
    int n = 0;
    size_t m = strlen(sub);
    for (const char* line = s; *line;) {
        const char* end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        for (size_t i = 0; i + m <= len; i++)
            if (strncmp(line + i, sub, m) == 0) { n++; break; }
        if (!end) break;
        line = end + 1;
    }
    return n;
}

// ./stream ARGS with its stdout and stderr written to the file log; the exit status
static int stream_to_log(const char* args, const char* log) {
    char cmd[8192];
    snprintf(cmd, sizeof(cmd), "./stream %s >'%s' 2>&1", args, log);
    return run(cmd);
}


#endif
