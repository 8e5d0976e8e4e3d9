// test/test_table1_stream.c: the other rows of Table 1 end to end through ./stream and
// ./train (built by make before the tests), on a tiny generated video with a tiny random
// model: ln-adapt, tent and self-train (every --memory) run and write outputs; --tta 2 goes
// through the Predictor and equals the plain prediction exactly (a tie keeps view 0);
// --smooth 1 --tta 1 equal the default; ln-adapt changes no parameter; tent changes h and
// not g; class balance with threshold -1 resets on every frame and then predicts exactly
// as fixed mode, with a huge threshold it never resets and equals tent alone; bad flag
// combinations end in one "error:" line; ./train --no-mae trains f and h, keeps g at its
// initialisation, and ./stream --mode fixed reads the checkpoint.
#include "test.h"
#include <sys/wait.h>
#include <unistd.h>

#define TMP "test/tmp"
#define VID TMP "/t1s_video"
#define LAB TMP "/t1s_video_labels"
#define MODEL TMP "/t1s_tiny.bin"
#define NF 4
#define FW 40
#define FH 32
#define COMMON "--model " MODEL " --device cpu --batch 2 --window 2 --lr 1e-2"

static int stream(const char* args) { return stream_to_log(args, TMP "/t1s_log.txt"); }

static char* read_log(void) { return read_text(TMP "/t1s_log.txt"); }

// the predictions of run directory dir for every frame equal those of ref, byte for byte
static int same_predictions(const char* dir, const char* ref) {
    int same = 1;
    for (int t = 1; t <= NF; t++) {
        char cmd[1024];
        snprintf(cmd, sizeof(cmd), "cmp -s '%s/frame%06d.png' '%s/frame%06d.png'", dir, t, ref, t);
        same &= run(cmd) == 0;
    }
    return same;
}

// every prediction is an H x W label map and metrics.json exists
static int outputs_ok(const char* dir) {
    for (int t = 1; t <= NF; t++) {
        char p[512];
        snprintf(p, sizeof(p), "%s/frame%06d.png", dir, t);
        if (access(p, R_OK) != 0) return 0;
        int H, W;
        free(label_load(p, FH, FW, &H, &W));
    }
    char p[512];
    snprintf(p, sizeof(p), "%s/metrics.json", dir);
    return access(p, R_OK) == 0;
}

// per-frame "hash NAME f=.. g=.. h=.." lines of a --hash run
static int read_hashes(const char* log, unsigned long long f[NF], unsigned long long g[NF], unsigned long long h[NF]) {
    int n = 0;
    for (const char* p = strstr(log, "hash "); p && n < NF; p = strstr(p + 1, "hash ")) {
        char name[256];
        if (sscanf(p, "hash %255s f=%llx g=%llx h=%llx", name, &f[n], &g[n], &h[n]) == 4) n++;
    }
    return n;
}

static void expect_error(const char* what, const char* args, const char* expect) {
    int rc = stream(args);
    char* log = read_log();
    char* line = strstr(log, "error:");
    int ok = rc == 1 && line != NULL && strstr(line, expect) != NULL;
    char first[256] = {0};
    if (line) { snprintf(first, sizeof(first), "%s", line); first[strcspn(first, "\n")] = 0; }
    printf("%-4s bad input: %-34s -> %s\n", ok ? "ok" : "FAIL", what, first);
    if (ok) tests_passed++; else tests_failed++;
    free(log);
}

int main(void) {
    if (run("mkdir -p " TMP " && rm -rf " TMP "/t1s_*") != 0) return 1;
    char args[2048];
    CHECK(run("./gen video " VID " --frames 4 --size 40x32 --seed 3 >/dev/null") == 0, "gen failed");
    ModelConfig cfg = model_config_tiny(8);
    Model* m = model_create(&cfg, 2, FH, FW);
    model_init_random(m, 1);
    model_save(m, MODEL);
    model_free(m);

    // the reference: fixed mode
    CHECK(stream(VID " " COMMON " --mode fixed --out " TMP "/t1s_fixed") == 0, "fixed run failed");

    // every new mode (and memory) runs and writes outputs
    const char* runs[][2] = {
        {"ln-adapt", "--mode ln-adapt"}, {"tent", "--mode tent"}, {"tent_implicit", "--mode tent --memory implicit"},
        {"tent_explicit", "--mode tent --memory explicit"}, {"tent_nomem", "--mode tent --memory nomem"},
        {"self_train", "--mode self-train --st-threshold 0.2"}, {"self_train_nomem", "--mode self-train --memory nomem"},
        {"smooth_tta", "--mode online --smooth 2 --tta 3 --tta-color on"},
        {"ln_tta", "--mode ln-adapt --smooth 3 --tta 2 --ln-prior 1"}};
    int n_runs = (int)(sizeof(runs) / sizeof(runs[0]));
    for (int i = 0; i < n_runs; i++) {
        snprintf(args, sizeof(args), VID " " COMMON " %s --out " TMP "/t1s_%s", runs[i][1], runs[i][0]);
        int rc = stream(args);
        char dir[256];
        snprintf(dir, sizeof(dir), TMP "/t1s_%s", runs[i][0]);
        int ok = rc == 0 && outputs_ok(dir);
        printf("%-4s %-52s runs, outputs parse (exit %d)\n", ok ? "ok" : "FAIL", runs[i][1], rc);
        if (ok) tests_passed++; else { tests_failed++; char* log = read_log(); printf("%s\n", log); free(log); }
    }
    char* log = read_log();
    CHECK(strstr(log, "smooth=3 tta=2") != NULL, "the settings line lacks smooth / tta");
    free(log);

    // the Predictor's path with two voters is the plain prediction; smoothing 1 and TTA 1 too
    CHECK(stream(VID " " COMMON " --mode fixed --tta 2 --tta-color on --out " TMP "/t1s_tta2") == 0, "--tta 2 run failed");
    CHECK(same_predictions(TMP "/t1s_tta2", TMP "/t1s_fixed"), "--tta 2 differs from the plain prediction");
    CHECK(stream(VID " " COMMON " --mode fixed --smooth 1 --tta 1 --out " TMP "/t1s_s1") == 0, "--smooth 1 run failed");
    CHECK(same_predictions(TMP "/t1s_s1", TMP "/t1s_fixed"), "--smooth 1 --tta 1 differ from the default");
    CHECK(stream(VID " " COMMON " --mode fixed --smooth 2 --out " TMP "/t1s_s2") == 0, "--smooth 2 run failed");
    {   // the first frame has nothing to average with
        char a[256], b[256], cmd[600];
        snprintf(a, sizeof(a), TMP "/t1s_s2/frame%06d.png", 1);
        snprintf(b, sizeof(b), TMP "/t1s_fixed/frame%06d.png", 1);
        snprintf(cmd, sizeof(cmd), "cmp -s %s %s", a, b);
        CHECK(run(cmd) == 0, "--smooth 2 changed the first frame");
    }

    // ln-adapt: no parameter changes; tent: h and f change, g does not
    unsigned long long f[NF], g[NF], h[NF];
    CHECK(stream(VID " " COMMON " --mode ln-adapt --hash --ln-prior 0.5 --out " TMP "/t1s_ln_h") == 0, "ln-adapt --hash failed");
    log = read_log();
    int n = read_hashes(log, f, g, h), same = n == NF;
    for (int t = 1; t < n; t++) same &= f[t] == f[0] && g[t] == g[0] && h[t] == h[0];
    free(log);
    CHECK(same, "ln-adapt changed a parameter (%d hash lines)", n);
    CHECK(stream(VID " " COMMON " --mode tent --hash --out " TMP "/t1s_tent_h") == 0, "tent --hash failed");
    log = read_log();
    n = read_hashes(log, f, g, h);
    free(log);
    CHECK(n == NF && f[1] != f[0] && h[1] != h[0] && g[NF - 1] == g[0], "tent: f, h must change and g must not");

    // class balance: threshold -1 resets after every frame's step and predicts with the
    // initial weights, i.e. exactly as fixed mode; a huge threshold never resets
    CHECK(stream(VID " " COMMON " --mode tent --class-balance on --cb-threshold -1 --out " TMP "/t1s_cb_all") == 0, "class balance run failed");
    log = read_log();
    CHECK(count_substr(log, "class-balance reset") == NF && strstr(log, "class balance: 4 resets") != NULL,
          "threshold -1: not one reset per frame");
    free(log);
    CHECK(same_predictions(TMP "/t1s_cb_all", TMP "/t1s_fixed"), "class balance resets but predicts unlike the initial model");
    CHECK(stream(VID " " COMMON " --mode tent --class-balance on --cb-threshold 1000 --out " TMP "/t1s_cb_none") == 0, "class balance run failed");
    log = read_log();
    CHECK(strstr(log, "class balance: 0 resets") != NULL, "threshold 1000 reset");
    free(log);
    CHECK(same_predictions(TMP "/t1s_cb_none", TMP "/t1s_tent"), "class balance without resets differs from tent");
    CHECK(stream(VID " " COMMON " --mode self-train --class-balance on --cb-threshold -1 --out " TMP "/t1s_cb_st") == 0, "class balance run failed");
    CHECK(same_predictions(TMP "/t1s_cb_st", TMP "/t1s_fixed"), "self-train with a reset every frame differs from fixed");
    group_line("class balance: threshold -1 = fixed mode, threshold 1000 = no class balance");

    // bad combinations
    expect_error("--memory with online", VID " " COMMON " --mode online --memory nomem --out " TMP "/t1s_bad", "--memory applies");
    expect_error("--class-balance with fixed", VID " " COMMON " --mode fixed --class-balance on --out " TMP "/t1s_bad", "--class-balance needs");
    expect_error("--st-threshold 2", VID " " COMMON " --mode self-train --st-threshold 2 --out " TMP "/t1s_bad", "--st-threshold");
    expect_error("--tta 0", VID " " COMMON " --tta 0 --out " TMP "/t1s_bad", "--tta");
    expect_error("--memory sometimes", VID " " COMMON " --mode tent --memory sometimes --out " TMP "/t1s_bad", "--memory");
    CHECK(access(TMP "/t1s_bad", F_OK) != 0, "a refused run wrote output");

    // ./train --no-mae: f and h train, g is the initialisation of --seed; ./stream reads it
    CHECK(run("./gen stills " TMP "/t1s_stills --n 6 --size 40x32 --seed 5 > /dev/null") == 0, "gen stills failed");
    CHECK(run("./train --data " TMP "/t1s_stills --out " TMP "/t1s_main.bin --no-mae --size tiny --classes 8 --batch 2 "
              "--crop 40x32 --steps 3 --save-every 0 --device cpu --seed 7 > " TMP "/t1s_train.log 2>&1") == 0,
          "./train --no-mae failed (see " TMP "/t1s_train.log)");
    Model* trained = model_load(TMP "/t1s_main.bin", 1, FH, FW);
    ModelConfig tc = model_config_tiny(8);
    Model* init = model_create(&tc, 1, FH, FW);
    model_init_random(init, 7);
    CHECK(model_param_hash(trained, 2) == model_param_hash(init, 2), "--no-mae changed g");
    CHECK(model_param_hash(trained, 0) != model_param_hash(init, 0) && model_param_hash(trained, 1) != model_param_hash(init, 1),
          "--no-mae did not train f and h");
    model_free(trained); model_free(init);
    log = NULL;
    {
        FILE* fp = fopen(TMP "/t1s_train.log", "r");
        char line[4096];
        int found = 0;
        while (fp && fgets(line, sizeof(line), fp)) found |= strstr(line, "mae=off (main task only)") != NULL;
        if (fp) fclose(fp);
        CHECK(found, "the settings line of ./train --no-mae does not say mae=off");
    }
    CHECK(stream(VID " --model " TMP "/t1s_main.bin --device cpu --mode fixed --out " TMP "/t1s_main_fixed") == 0 &&
          outputs_ok(TMP "/t1s_main_fixed"), "./stream --mode fixed cannot run the --no-mae checkpoint");
    group_line("./train --no-mae: f, h trained, g = its initialisation, ./stream runs it");
    return test_summary("test_table1_stream");
}
