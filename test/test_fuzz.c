// test/test_fuzz.c: a bounded fuzz test of the loaders (a few seconds): random mutations of a
// valid model checkpoint, training resume state and Swin export (header ints set to extreme or
// random values, bytes flipped, the file cut or extended) and of valid PNG frames and labels
// (bytes flipped, chunk lengths and sizes overwritten, cut, extended) are fed to model_load,
// model_read_config, model_load_resume, swin_load_hf_export, image_try_load_u8, image_load,
// label_load, label_try_load_format and label_check_header, each case in a forked child. Every
// case must end in a valid load (exit 0) or one "error:" line and exit 1: never a crash, a
// hang, or another exit status. The mutations are drawn from a fixed seed; each target runs
// its cases until a time budget is spent (TTT_FUZZ_SECONDS, default 0.6 s per target), so the
// sequence is the same everywhere and only its length depends on the machine. A failing case is
// kept as test/tmp/fuzz_fail_*.
#include "test.h"
#include <limits.h>
#include <omp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define TMP "test/tmp"
#define F TMP "/fuzz"

typedef enum { T_MODEL, T_CONFIG, T_RESUME, T_SWIN, T_FRAME, T_FRAME_DIE, T_LABEL, T_LABEL_DIE, T_LABEL_HEADER, T_KITTI } Target;
static const char* target_names[] = {"model_load", "model_read_config", "model_load_resume", "swin_load_hf_export",
                                     "image_try_load_u8", "image_load", "label_try_load_format", "label_load",
                                     "label_check_header", "label_try_load_format (KITTI)"};

// the loader on path, in this (child) process: returns normally on a valid load; a try-loader's
// NULL becomes the error line and exit 1 its callers give
static void load(Target t, const char* path) {
    char err[1024];
    int H, W;
    switch (t) {
    case T_MODEL: { Model* m = model_load(path, 1, 32, 32); model_free(m); break; }
    case T_CONFIG: model_read_config(path); break;
    case T_RESUME: { int extra[3]; Model* m = model_load_resume(path, 1, 32, 32, extra, 3); model_free(m); break; }
    case T_SWIN: { SwinConfig c; free(swin_load_hf_export(path, &c)); break; }
    case T_FRAME: { unsigned char* p = image_try_load_u8(path, &H, &W, err, sizeof(err)); if (!p) ttt_die("%s", err); free(p); break; }
    case T_FRAME_DIE: free(image_load(path, &H, &W)); break;
    case T_LABEL: {
        unsigned char* p = label_try_load_format(path, LABEL_IDS, 8, 0, 0, &H, &W, err, sizeof(err));
        if (!p) ttt_die("%s", err);
        free(p);
        break;
    }
    case T_LABEL_DIE: free(label_load(path, 0, 0, &H, &W)); break;
    case T_LABEL_HEADER: label_check_header(path, LABEL_IDS, 24, 32, &H, &W); break;
    case T_KITTI: {
        unsigned char* p = label_try_load_format(path, LABEL_KITTI_PANOPTIC, 19, 24, 32, &H, &W, err, sizeof(err));
        if (!p) ttt_die("%s", err);
        free(p);
        break;
    }
    }
}

// one case: 1 when the child loaded (exit 0) or refused with an "error:" last line and exit 1
static int run_case(Target t, const char* path, char* why, size_t n) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(F "_err.txt", "w", stderr)) _exit(99);
        alarm(20);   // a hang is a failure too
        load(t, path);
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    size_t len;
    char* err = read_file(F "_err.txt", &len);
    char* last = err;
    {   // the last line
        while (len > 0 && err[len - 1] == '\n') err[--len] = 0;
        char* nl = strrchr(err, '\n');
        if (nl) last = nl + 1;
    }
    int ok = WIFEXITED(st) && (WEXITSTATUS(st) == 0 || (WEXITSTATUS(st) == 1 && strncmp(last, "error:", 6) == 0));
    if (WIFSIGNALED(st)) snprintf(why, n, "killed by signal %d", WTERMSIG(st));
    else snprintf(why, n, "exit %d, stderr '%.300s'", WIFEXITED(st) ? WEXITSTATUS(st) : -1, last);
    free(err);
    return ok;
}

// header ints of a checkpoint worth aiming at: the config, the counts, the resume block, the pixel decoder
static int header_index(Rng* r) {
    int k = rng_int(r, 4);
    if (k == 0) return rng_int(r, 48);
    if (k == 1) return 160 + rng_int(r, 8);
    if (k == 2) return 232 + rng_int(r, 8);
    return rng_int(r, CKPT_HEADER_INTS);
}

static int extreme_value(Rng* r, int v) {
    switch (rng_int(r, 10)) {
    case 0: return 0;
    case 1: return -1;
    case 2: return INT_MAX;
    case 3: return INT_MIN;
    case 4: return (int)((unsigned)v + 1u);   // wrapping, as a corrupt file would hold
    case 5: return (int)((unsigned)v - 1u);
    case 6: return (int)((unsigned)v * 2u);
    case 7: return (int)(1u << rng_int(r, 32));
    case 8: return rng_int(r, 64);
    default: return (int)rng_u32(r);
    }
}

// a mutation of the valid bytes v (n) into out (returns its length; out has room for n + 64)
static size_t mutate(Rng* r, const unsigned char* v, size_t n, unsigned char* out, int is_checkpoint) {
    memcpy(out, v, n);
    size_t len = n;
    int kind = rng_int(r, is_checkpoint ? 5 : 4);
    if (kind == 4) {   // checkpoint: 1 to 3 header ints set to extreme values
        int* h = (int*)out;
        for (int k = 1 + rng_int(r, 3); k > 0; k--) { int i = header_index(r); h[i] = extreme_value(r, h[i]); }
    } else if (kind == 0) {   // 1 to 8 bytes set at random (PNG: mostly in the first 100 bytes: IHDR, chunk heads)
        for (int k = 1 + rng_int(r, 8); k > 0; k--) {
            size_t at = !is_checkpoint && rng_int(r, 2) ? (size_t)rng_int(r, n < 100 ? (int)n : 100) : (size_t)rng_int(r, (int)n);
            out[at] = (unsigned char)rng_u32(r);
        }
    } else if (kind == 1) {   // 4 bytes at a random place overwritten by an extreme int (lengths, sizes)
        size_t at = (size_t)rng_int(r, (int)n - 4);
        int x = extreme_value(r, 0);
        memcpy(out + at, &x, 4);
    } else if (kind == 2) {   // cut
        len = (size_t)rng_int(r, (int)n);
    } else {   // extended by up to 64 random bytes
        size_t extra = 1 + rng_int(r, 64);
        for (size_t i = 0; i < extra; i++) out[n + i] = (unsigned char)rng_u32(r);
        len = n + extra;
    }
    return len;
}

static void fuzz(Target t, const char* valid_path, double budget_s, uint64_t seed) {
    size_t n;
    unsigned char* valid = (unsigned char*)read_file(valid_path, &n);
    char why[512];
    int ok0 = n > 0 && run_case(t, valid_path, why, sizeof(why));
    CHECK(ok0, "%s: the valid file does not load: %s", target_names[t], why);
    unsigned char* buf = (unsigned char*)mallocCheck(n + 64);
    Rng r;
    rng_seed(&r, seed);
    int cases = 0, loaded = 0, failed = 0;
    double t0 = time_now_seconds();
    char path[256];
    snprintf(path, sizeof(path), F "_case_%d", (int)t);
    while (cases < 20000 && (cases < 20 || time_now_seconds() - t0 < budget_s)) {
        size_t len = mutate(&r, valid, n, buf, t <= T_SWIN);
        write_file(path, buf, len);
        cases++;
        if (!run_case(t, path, why, sizeof(why))) {
            char keep[256];
            snprintf(keep, sizeof(keep), TMP "/fuzz_fail_%s_%d", target_names[t], failed);
            write_file(keep, buf, len);
            if (failed < 3) printf("FAIL %s: case %d (kept as %s): %s\n", target_names[t], cases, keep, why);
            failed++;
            continue;
        }
        loaded += strstr(why, "exit 0") == why;
    }
    printf("%-4s fuzz %-30s %5d cases in %.1f s: %d loaded, %d refused with one error line, %d crashed or other\n",
           failed ? "FAIL" : "ok", target_names[t], cases, time_now_seconds() - t0, loaded, cases - loaded - failed, failed);
    if (failed) tests_failed++; else tests_passed++;
    free(buf); free(valid);
}

int main(void) {
    omp_set_num_threads(1);   // every case is a forked child: no OpenMP thread pool in this process
    if (system("mkdir -p " TMP " && rm -f " TMP "/fuzz*") != 0) return 1;
    const char* env = getenv("TTT_FUZZ_SECONDS");
    double budget = env ? atof(env) : 0.6;

    // the valid files: a tiny model, its resume state, a Swin export, a frame, an id label, a KITTI map
    ModelConfig cfg = model_config_tiny(8);
    Model* m = model_create(&cfg, 1, 32, 32);
    model_init_random(m, 3);
    model_save(m, F "_model.bin");
    int extra[3] = {5, 1, 2};
    model_save_resume(m, F "_model.bin.opt", extra, 3);
    float* host = model_params_host(m);
    swin_save_export(F "_swin.bin", &cfg.swin, host);
    free(host);
    model_free(m);
    Rng r;
    rng_seed(&r, 11);
    float* rgb = (float*)mallocCheck(24 * 32 * 3 * sizeof(float));
    unsigned char* ids = (unsigned char*)mallocCheck(24 * 32);
    for (int i = 0; i < 24 * 32 * 3; i++) rgb[i] = rng_int(&r, 256) / 255.0f;
    for (int i = 0; i < 24 * 32; i++) ids[i] = (unsigned char)(i % 17 == 0 ? 255 : rng_int(&r, 8));
    image_save_png(F "_frame.png", rgb, 24, 32);
    label_save_png(F "_label.png", ids, 24, 32);
    for (int i = 0; i < 24 * 32 * 3; i++) rgb[i] = i % 3 == 0 ? rng_int(&r, 19) / 255.0f : rng_int(&r, 256) / 255.0f;
    image_save_png(F "_kitti.png", rgb, 24, 32);   // semantic id in R
    free(rgb); free(ids);

    fuzz(T_MODEL, F "_model.bin", budget, 1);
    fuzz(T_CONFIG, F "_model.bin", budget / 2, 2);
    fuzz(T_RESUME, F "_model.bin.opt", budget, 3);
    fuzz(T_SWIN, F "_swin.bin", budget / 2, 4);
    fuzz(T_FRAME, F "_frame.png", budget, 5);
    fuzz(T_FRAME_DIE, F "_frame.png", budget / 2, 6);
    fuzz(T_LABEL, F "_label.png", budget, 7);
    fuzz(T_LABEL_DIE, F "_label.png", budget / 2, 8);
    fuzz(T_LABEL_HEADER, F "_label.png", budget / 2, 9);
    fuzz(T_KITTI, F "_kitti.png", budget / 2, 10);
    return test_summary("test_fuzz");
}
