// test/test_stream.c: ./stream end to end (built by make before the tests) on a tiny
// generated video with a tiny random model: every mode runs and writes outputs that
// parse; fixed mode ignores the TTT options; nomem equals a fresh run on each frame
// alone; online TTT changes f between frames while h stays bit-identical; a NaN loss
// resets and continues; --kstar prints finite positive sigma^2, beta, eta, k*, its eta
// matches an independent computation and identical frames give exactly no gradient change
// (the same mask for both frames); bad input ends in one "error:" line, exit 1, no output.
#include "test.h"
#include <sys/wait.h>
#include <unistd.h>

#define TMP "test/tmp"
#define VID TMP "/st_video"
#define LAB TMP "/st_video_labels"
#define MODEL TMP "/st_tiny.bin"
#define NF 4            // frames
#define FW 40           // frame size
#define FH 32
#define COMMON "--model " MODEL " --device cpu --batch 2 --window 2 --lr 1e-2 --offline-steps 3"

// run ./stream ARGS with stdout and stderr into TMP/st_log.txt; return the exit status
static int stream(const char* args) { return stream_to_log(args, TMP "/st_log.txt"); }

// whole log of the last stream() into a malloc'd string
static char* read_log(void) { return read_text(TMP "/st_log.txt"); }

// the number after the last '=' on the line that starts with prefix (prefix begins with a
// newline); NAN when absent
static double line_value(const char* log, const char* prefix) {
    const char* p = strstr(log, prefix);
    if (p == NULL) return NAN;
    p += strlen(prefix);
    const char* end = strchr(p, '\n');
    if (end == NULL) end = p + strlen(p);
    const char* v = NULL;
    for (const char* q = p; q < end; q++) if (*q == '=') v = q + 1;
    return v ? atof(v) : NAN;
}

// the predictions of run directory `dir` for every frame equal those of `ref`
static int same_predictions(const char* dir, const char* ref) {
    int same = 1;
    for (int t = 1; t <= NF; t++) {
        char a[512], b[512];
        snprintf(a, sizeof(a), "%s/frame%06d.png", dir, t);
        snprintf(b, sizeof(b), "%s/frame%06d.png", ref, t);
        same &= same_bytes(a, b);
    }
    return same;
}

// outputs of one run exist and parse: predictions are HxW label maps, overlays are
// HxW images, metrics.json is balanced and lists every frame, metrics.png loads
static int outputs_ok(const char* dir) {
    int ok = 1;
    for (int t = 1; t <= NF; t++) {
        char p[512];
        int H, W;
        snprintf(p, sizeof(p), "%s/frame%06d.png", dir, t);
        if (access(p, R_OK) != 0) return 0;
        unsigned char* lab = label_load(p, FH, FW, &H, &W);
        free(lab);
        snprintf(p, sizeof(p), "%s/frame%06d_overlay.png", dir, t);
        if (access(p, R_OK) != 0) return 0;
        float* img = image_load(p, &H, &W);
        ok &= H == FH && W == FW;
        free(img);
    }
    char p[512];
    snprintf(p, sizeof(p), "%s/metrics.json", dir);
    FILE* fp = fopen(p, "rb");
    if (fp == NULL) return 0;
    char* js = (char*)calloc(1 << 20, 1);
    size_t n = fread(js, 1, (1 << 20) - 1, fp);
    fclose(fp);
    int depth = 0, min_depth = 0;
    for (size_t i = 0; i < n; i++) {
        if (js[i] == '{' || js[i] == '[') depth++;
        if (js[i] == '}' || js[i] == ']') depth--;
        if (depth < min_depth) min_depth = depth;
    }
    ok &= depth == 0 && min_depth == 0 && js[0] == '{';
    ok &= count_substr(js, "\"index\":") == NF && count_substr(js, "\"miou\":") >= NF + 1;
    ok &= strstr(js, "nan") == NULL && strstr(js, "inf") == NULL;
    // values JSON cannot read as numbers are strings (the crop "0x0" once came out bare)
    ok &= strstr(js, "\"crop\": \"") != NULL && strstr(js, "\"crop\": 0") == NULL;
    free(js);
    snprintf(p, sizeof(p), "%s/metrics.png", dir);
    if (access(p, R_OK) != 0) return 0;
    int H, W;
    float* img = image_load(p, &H, &W);
    free(img);
    return ok;
}

// per-frame "hash NAME f=.. g=.. h=.." lines of a --hash run
static int read_hashes(const char* log, unsigned long long f[NF], unsigned long long h[NF]) {
    int n = 0;
    for (const char* p = strstr(log, "hash "); p && n < NF; p = strstr(p + 1, "hash ")) {
        char name[256];
        unsigned long long g;
        if (sscanf(p, "hash %255s f=%llx g=%llx h=%llx", name, &f[n], &g, &h[n]) == 4) n++;
    }
    return n;
}

// the "kstar_values sigma2=.. beta=.. eta=.. beta2eta2=.. kstar=.." line of a --kstar run into
// v[0..4]; returns how many values were read (NAN for the others)
static int parse_kstar(const char* log, double v[5]) {
    for (int i = 0; i < 5; i++) v[i] = NAN;
    const char* p = strstr(log, "kstar_values sigma2=");
    if (p == NULL) return 0;
    return sscanf(p, "kstar_values sigma2=%lf beta=%lf eta=%lf beta2eta2=%lf kstar=%lf", &v[0], &v[1], &v[2], &v[3], &v[4]);
}

static void expect_error(const char* what, const char* args, const char* out_dir) {
    int rc = stream(args);
    char* log = read_log();
    char* line = strstr(log, "error:");
    char first[256] = {0};
    if (line) { snprintf(first, sizeof(first), "%s", line); first[strcspn(first, "\n")] = 0; }
    int ok = rc == 1 && line != NULL && (out_dir == NULL || access(out_dir, F_OK) != 0);
    printf("%-4s bad input: %-28s -> %s\n", ok ? "ok" : "FAIL", what, first);
    if (ok) tests_passed++; else tests_failed++;
    free(log);
}

int main(void) {
    if (run("mkdir -p " TMP " && rm -rf " TMP "/st_*") != 0) return 1;
    char args[2048];
    char* log0;

    // a tiny video, its labels and a tiny random model
    CHECK(run("./gen video " VID " --frames 4 --size 40x32 --seed 3 >/dev/null") == 0, "gen failed");
    ModelConfig cfg = model_config_tiny(8);
    Model* m = model_create(&cfg, 2, FH, FW);
    model_init_random(m, 1);
    model_save(m, MODEL);
    model_free(m);

    // every mode runs and writes outputs that parse
    const char* modes[] = {"fixed", "nomem", "implicit", "explicit", "online", "offline"};
    for (int i = 0; i < 6; i++) {
        snprintf(args, sizeof(args), VID " --labels " LAB " " COMMON " --mode %s --out " TMP "/st_%s", modes[i], modes[i]);
        int rc = stream(args);
        char dir[256];
        snprintf(dir, sizeof(dir), TMP "/st_%s", modes[i]);
        int ok = rc == 0 && outputs_ok(dir);
        printf("%-4s mode %-9s runs, outputs parse (exit %d)\n", ok ? "ok" : "FAIL", modes[i], rc);
        if (ok) tests_passed++; else tests_failed++;
        if (rc != 0) { char* log = read_log(); printf("%s\n", log); free(log); }
    }

    // --kstar: the bias-variance estimate prints finite positive parts, and its eta is the
    // mean distance between consecutive frames computed here independently
    snprintf(args, sizeof(args), VID " " COMMON " --mode fixed --kstar --out " TMP "/st_kstar");
    CHECK(stream(args) == 0, "--kstar run failed");
    {
        char* klog = read_log();
        double eta = line_value(klog, "\n  eta     = "), sigma2 = line_value(klog, "\n  sigma^2 = ");
        double beta = line_value(klog, "\n  beta    = ");
        const char* kline = strstr(klog, "\nkstar ");   // "kstar K = (sigma^2 / ...)"
        double kstar = kline ? atof(kline + 7) : NAN;
        double ref = 0.0;
        float* prev = NULL;
        for (int t = 1; t <= NF; t++) {
            char path[256];
            int H, W;
            snprintf(path, sizeof(path), VID "/frame%06d.png", t);
            float* x = image_load(path, &H, &W);
            if (prev) {
                double d = 0.0;
                for (int i = 0; i < H * W * 3; i++) d += ((double)x[i] - prev[i]) * ((double)x[i] - prev[i]);
                ref += sqrt(d) / (NF - 1);
            }
            free(prev);
            prev = x;
        }
        free(prev);
        printf("     --kstar: eta %.4g (here %.4g), sigma^2 %.4g, beta %.4g, k* %.4g\n", eta, ref, sigma2, beta, kstar);
        CHECK(fabs(eta - ref) <= 1e-3 * ref, "--kstar eta %g, computed here %g", eta, ref);
        CHECK(isfinite(sigma2) && sigma2 > 0 && isfinite(beta) && beta > 0, "--kstar sigma^2 %g, beta %g", sigma2, beta);
        double b2e2 = line_value(klog, "\n  beta^2 eta^2 = ");   // measured directly, not beta^2 x eta^2
        CHECK(isfinite(kstar) && fabs(kstar - cbrt(sigma2 / b2e2)) <= 2e-3 * kstar,
              "--kstar k* %g does not follow from its parts (sigma^2 %g, beta^2 eta^2 %g)", kstar, sigma2, b2e2);
        free(klog);
    }

    // --micro-batch: a step of 3 images runs in 2 chunks
    snprintf(args, sizeof(args), VID " " COMMON " --mode online --batch 3 --micro-batch 2 --out " TMP "/st_micro");
    CHECK(stream(args) == 0, "--micro-batch run failed");
    log0 = read_log();
    CHECK(strstr(log0, "--micro-batch 2: each step of 3 images runs in 2 chunks") != NULL, "--micro-batch not in effect");
    free(log0);

    // fixed mode: TTT options do not change the predictions
    snprintf(args, sizeof(args), VID " --model " MODEL " --device cpu --mode fixed --lr 1 --batch 3 --window 5 --steps 2 --seed 9 --out " TMP "/st_fixed2");
    CHECK(stream(args) == 0, "fixed run with other TTT options failed");
    log0 = read_log();
    CHECK(strstr(log0, "4 with labels in " LAB) != NULL, "labels next to the video (DIR_labels) not found by default");
    free(log0);
    CHECK(same_predictions(TMP "/st_fixed2", TMP "/st_fixed"), "fixed-mode predictions depend on TTT options");

    // nomem = a fresh run (f0, g0, empty window) on each frame alone
    int same = 1;
    for (int t = 1; t <= NF; t++) {
        char cmd[1024], a[256], b[256];
        snprintf(cmd, sizeof(cmd), "mkdir -p " TMP "/st_one%d && cp " VID "/frame%06d.png " TMP "/st_one%d/", t, t, t);
        run(cmd);
        snprintf(args, sizeof(args), TMP "/st_one%d " COMMON " --mode online --out " TMP "/st_one%d_out", t, t);
        same &= stream(args) == 0;
        snprintf(a, sizeof(a), TMP "/st_one%d_out/frame%06d.png", t, t);
        snprintf(b, sizeof(b), TMP "/st_nomem/frame%06d.png", t);
        same &= same_bytes(a, b);
    }
    CHECK(same, "nomem predictions differ from fresh single-frame runs");

    // online: f changes from frame to frame, h stays bit-identical (and equals fixed's h)
    unsigned long long f[NF], h[NF], f0[NF], h0[NF];
    snprintf(args, sizeof(args), VID " " COMMON " --mode online --hash --out " TMP "/st_online_h");
    CHECK(stream(args) == 0, "online --hash run failed");
    char* log = read_log();
    int nh = read_hashes(log, f, h);
    free(log);
    snprintf(args, sizeof(args), VID " " COMMON " --mode fixed --hash --out " TMP "/st_fixed_h");
    CHECK(stream(args) == 0, "fixed --hash run failed");
    log = read_log();
    int nh0 = read_hashes(log, f0, h0);
    free(log);
    int f_changes = nh == NF && f[0] != f0[0], h_fixed = nh == NF && nh0 == NF;
    for (int t = 1; t < nh; t++) f_changes &= f[t] != f[t - 1];
    for (int t = 0; t < nh && t < nh0; t++) h_fixed &= h[t] == h0[0] && f0[t] == f0[0];
    CHECK(f_changes, "online TTT did not change f at every frame");
    CHECK(h_fixed, "h changed during the stream (or fixed mode changed f)");

    // window sweep in one process: a table, one output dir per k
    snprintf(args, sizeof(args), VID " --labels " LAB " " COMMON " --window 1,3 --out " TMP "/st_sweep");
    CHECK(stream(args) == 0, "window sweep failed");
    log = read_log();
    CHECK(strstr(log, "window sweep") != NULL && outputs_ok(TMP "/st_sweep/window_1") && outputs_ok(TMP "/st_sweep/window_3"),
          "window sweep: no table or missing outputs");
    free(log);

    // shuffle runs and writes every frame
    snprintf(args, sizeof(args), VID " " COMMON " --shuffle --out " TMP "/st_shuffle");
    CHECK(stream(args) == 0 && outputs_ok(TMP "/st_shuffle"), "--shuffle run failed");

    // a NaN / Inf TTT loss (huge learning rate) warns, resets f to f0, and continues
    snprintf(args, sizeof(args), VID " " COMMON " --lr 1e30 --hash --out " TMP "/st_nan");
    int rc = stream(args);
    log = read_log();
    CHECK(rc == 0 && strstr(log, "warning:") && strstr(log, "resetting"), "no reset warning on a NaN/Inf loss (exit %d)", rc);
    free(log);

    // labels missing for some frames: only the labeled frames are scored
    run("mkdir -p " TMP "/st_somelab && cp " LAB "/frame000001.png " LAB "/frame000003.png " TMP "/st_somelab/");
    snprintf(args, sizeof(args), VID " --labels " TMP "/st_somelab " COMMON " --mode fixed --out " TMP "/st_partial");
    rc = stream(args);
    log = read_log();
    CHECK(rc == 0 && strstr(log, "2 with labels") && strstr(log, "over 2 labeled frames"), "partial labels not handled");
    free(log);

    // a non-image file among the frames is skipped with a warning
    run("mkdir -p " TMP "/st_mixed && cp " VID "/frame00000[12].png " TMP "/st_mixed/ && echo hi > " TMP "/st_mixed/notes.txt");
    snprintf(args, sizeof(args), TMP "/st_mixed " COMMON " --out " TMP "/st_mixed_out");
    rc = stream(args);
    log = read_log();
    CHECK(rc == 0 && strstr(log, "warning: skipping") && strstr(log, "2 frames"), "non-image file not skipped");
    free(log);

    // natural order: frame2 before frame10
    run("mkdir -p " TMP "/st_nat && cp " VID "/frame000001.png " TMP "/st_nat/f10.png && cp " VID "/frame000002.png " TMP "/st_nat/f2.png");
    snprintf(args, sizeof(args), TMP "/st_nat " COMMON " --mode fixed --out " TMP "/st_nat_out");
    rc = stream(args);
    log = read_log();
    char* p2 = strstr(log, "f2.png");
    char* p10 = strstr(log, "f10.png");
    CHECK(rc == 0 && p2 && p10 && p2 < p10, "frames not in natural order");
    free(log);

    double ks[5];
    int nk;

    // --kstar eta against an independent computation on a 3-frame video built here, and
    // the same-mask trick: on 3 identical frames the gradient change is exactly 0 (k* = inf)
    {
        const int H = 24, W = 40, n = H * W * 3;
        float* x[3];
        Rng r;
        rng_seed(&r, 77);
        run("mkdir -p " TMP "/st_three " TMP "/st_same");
        for (int t = 0; t < 3; t++) {
            x[t] = (float*)mallocCheck(n * sizeof(float));
            for (int i = 0; i < n; i++) x[t][i] = rng_int(&r, 256) / 255.0f;   // exact in 8 bits
            char p[256];
            snprintf(p, sizeof(p), TMP "/st_three/f%d.png", t + 1);
            image_save_png(p, x[t], H, W);
            snprintf(p, sizeof(p), TMP "/st_same/f%d.png", t + 1);
            image_save_png(p, x[0], H, W);
        }
        double eta = 0.0;
        for (int t = 1; t < 3; t++) {
            double d2 = 0.0;
            for (int i = 0; i < n; i++) d2 += ((double)x[t][i] - x[t - 1][i]) * ((double)x[t][i] - x[t - 1][i]);
            eta += sqrt(d2) / 2.0;
        }
        for (int t = 0; t < 3; t++) free(x[t]);
        snprintf(args, sizeof(args), TMP "/st_three " COMMON " --mode fixed --kstar --kstar-masks 2 --kstar-every 1 --out " TMP "/st_kstar3");
        rc = stream(args);
        log = read_log();
        nk = parse_kstar(log, ks);
        free(log);
        double rel = fabs(ks[2] - eta) / eta;
        printf("%-4s --kstar eta on 3 frames: %.6g vs %.6g computed here (rel err %.1e)\n",
               rc == 0 && nk == 5 && rel < 1e-5 ? "ok" : "FAIL", ks[2], eta, rel);
        if (rc == 0 && nk == 5 && rel < 1e-5) tests_passed++; else tests_failed++;
        CHECK(isfinite(ks[0]) && ks[0] > 0.0 && isfinite(ks[4]) && ks[4] > 0.0, "--kstar on 3 frames: sigma^2 %g, k* %g", ks[0], ks[4]);
        snprintf(args, sizeof(args), TMP "/st_same " COMMON " --mode fixed --kstar --kstar-masks 2 --kstar-every 1 --out " TMP "/st_kstar_same");
        rc = stream(args);
        log = read_log();
        nk = parse_kstar(log, ks);
        free(log);
        int same_ok = rc == 0 && nk == 5 && ks[2] == 0.0 && ks[3] == 0.0 && isinf(ks[4]) && ks[0] > 0.0;
        printf("%-4s --kstar on 3 identical frames: eta %g, beta^2 eta^2 %g (same mask), k* %g, sigma^2 %.4g\n",
               same_ok ? "ok" : "FAIL", ks[2], ks[3], ks[4], ks[0]);
        if (same_ok) tests_passed++; else tests_failed++;
    }

    // bad input: one error line, exit 1, no output directory
    run("mkdir -p " TMP "/st_empty");
    expect_error("missing frame directory", TMP "/st_nope " COMMON " --out " TMP "/st_bad1", TMP "/st_bad1");
    expect_error("empty frame directory", TMP "/st_empty " COMMON " --out " TMP "/st_bad2", TMP "/st_bad2");
    run("mkdir -p " TMP "/st_sizes && cp " VID "/frame000001.png " TMP "/st_sizes/ && "
        "./gen video " TMP "/st_big --frames 1 --size 48x32 >/dev/null && cp " TMP "/st_big/frame000001.png " TMP "/st_sizes/frame000002.png");
    expect_error("frames of different sizes", TMP "/st_sizes " COMMON " --out " TMP "/st_bad3", TMP "/st_bad3");
    expect_error("missing model", VID " --model " TMP "/st_nope.bin --out " TMP "/st_bad4", TMP "/st_bad4");
    expect_error("unknown mode", VID " " COMMON " --mode sometimes --out " TMP "/st_bad5", TMP "/st_bad5");
    expect_error("--kstar-masks 1", VID " " COMMON " --kstar --kstar-masks 1 --out " TMP "/st_bad9", TMP "/st_bad9");
    expect_error("--kstar on one frame", TMP "/st_one1 " COMMON " --kstar --out " TMP "/st_bad10", TMP "/st_bad10");
    expect_error("bad window list", VID " " COMMON " --window 4,x --out " TMP "/st_bad6", TMP "/st_bad6");
    expect_error("missing label directory", VID " " COMMON " --labels " TMP "/st_nolabels --out " TMP "/st_bad7", TMP "/st_bad7");
    run("mkdir -p " TMP "/st_rgblab && cp " VID "/frame000001.png " TMP "/st_rgblab/");
    expect_error("RGB label", VID " " COMMON " --labels " TMP "/st_rgblab --out " TMP "/st_bad8", TMP "/st_bad8");
    return test_summary("test_stream");
}
