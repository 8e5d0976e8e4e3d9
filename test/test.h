// test/test.h: the tiny test harness every test binary includes.
// A check prints one line with its measured error and counts as passed or failed;
// test_summary() prints "name: N passed, N failed" last and gives the exit code.
#ifndef TEST_H
#define TEST_H
#include "ttt.h"

static int tests_passed = 0, tests_failed = 0;

// a plain assertion
#define CHECK(cond, ...) do { \
    if (cond) { tests_passed++; } \
    else { tests_failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } \
} while (0)

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

static int test_summary(const char* name) {
    printf("%s: %d passed, %d failed\n", name, tests_passed, tests_failed);
    return tests_failed == 0 ? 0 : 1;
}

#endif
