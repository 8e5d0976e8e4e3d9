// test/test_robust.c: the failures a new user meets, one check each: nothing of the
// user's is overwritten, nothing silently wrong, no undefined behaviour on a bad header, no late
// failure, no inconsistent resume state.
//   ./stream: --out equal to or inside the frames or labels folder (also through a symlink and
//     with a trailing slash), output names that collide (a.png / a_overlay.png, a.png / a.jpg, a
//     frame named metrics.png), an --out holding a file of the user's, the model among the outputs,
//     --out-raw at an image or inside --out: refused before any write, inputs untouched; label ids
//     outside the model's classes and 16-bit labels refused; a frame whose header reads but whose
//     data is corrupt skipped with a warning before the first output; a checkpoint that is a folder
//   checkpoint headers: each field out of range (window, embed, mlp ratio, depths, heads, widths,
//     queries, layers, classes, patch, mask ratio, pixel decoder, parameter counts) dies with one
//     line, in model_load, model_read_config and swin_load_hf_export; a plausible header of a big
//     model on a short file dies before the model is allocated (the child's peak memory stays small)
//   ./train: --out at the --init file, a foreign file at OUT.opt, --out a folder, --batch 0,
//     --steps 5x, a validation set of mixed sizes (found before training); the resume state after a
//     kill between the two renames (OUT one save behind OUT.opt) and before them (a stale .tmp)
//     resumes bit for bit; an older two-file optimizer state and a missing one are refused.
// (16-bit and out-of-range labels in ./train, --steps abc, --lr abc, --lr -1, --out at an image,
// inside the data set, in a missing folder: test_data.c; frames from standard input: test_pipe.c.)
#include "test.h"
#include <errno.h>
#include <omp.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include "stb_image.h"   // declarations only

#define TMP "test/tmp"
#define R TMP "/rb"
#define VID R "/video"
#define LAB R "/video_labels"
#define MODEL R "/tiny.bin"
#define COMMON "--model " MODEL " --device cpu --batch 2 --window 2 --mode fixed"

static int lines_of(const char* s) { int n = 0; for (; *s; s++) n += *s == '\n'; return n; }

// a fingerprint of every file under dir (names, sizes, bytes): equal before and after = untouched
static char* fingerprint(const char* dir) {
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "cd %s && find . -type f | sort | xargs md5sum > ../fp.txt 2>/dev/null", dir);
    run(cmd);
    char p[512];
    snprintf(p, sizeof(p), "%s/../fp.txt", dir);
    return read_file(p, NULL);
}

// ./PROGRAM ARGS must exit 1 with exactly one line, "error: ..." containing needle
static int refuses(const char* what, const char* program, const char* args, const char* needle) {
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "./%s %s > " R "/log.txt 2>&1", program, args);
    int rc = run(cmd);
    char* log = read_file(R "/log.txt", NULL);
    int ok = rc == 1 && strncmp(log, "error:", 6) == 0 && lines_of(log) == 1 && strstr(log, needle) != NULL;
    printf("%-4s refused: %-40s -> %s", ok ? "ok" : "FAIL", what, log);
    if (!ok) printf("\n     (exit %d, wanted one error line with '%s')\n", rc, needle);
    if (ok) tests_passed++; else tests_failed++;
    free(log);
    return ok;
}

// (write_png16: a 16-bit grayscale PNG, in test/test.h)

// ----------------------------------------------------------------------------
// checkpoint headers

// header index of each field of a model checkpoint (mae.c pack_header)
enum { H_CLASSES = 3, H_PATCH, H_MASK, H_IN_CHANS, H_EMBED, H_DEPTHS, H_HEADS = H_DEPTHS + 4, H_WINDOW = H_HEADS + 4,
       H_MLP, H_HEAD_H, H_HEAD_G = H_HEAD_H + 13, H_COUNTS = H_HEAD_G + 13, H_PIXEL_DECODER = 232 };
// within a head: in_dims[4], conv_dim, mask_dim, num_groups, num_queries, hidden_dim, num_heads, ffn_dim, dec_layers, classes
enum { M_IN = 0, M_CONV = 4, M_MASK, M_GROUPS, M_QUERIES, M_HIDDEN, M_HEADS, M_FFN, M_LAYERS, M_CLASSES };

typedef enum { LOAD_MODEL, READ_CONFIG, LOAD_SWIN } Loader;

// run loader on path in a child, stderr captured; returns its exit status (-signal when it
// died of one) and the first line of its stderr in err
static int load_in_child(Loader loader, const char* path, char* err, size_t n, long* max_rss_kb) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(R "/child_err.txt", "w", stderr)) _exit(99);
        if (loader == LOAD_MODEL) { Model* m = model_load(path, 1, 32, 32); model_free(m); }
        else if (loader == READ_CONFIG) model_read_config(path);
        else { SwinConfig c; free(swin_load_hf_export(path, &c)); }
        _exit(0);
    }
    int st = 0;
    struct rusage ru;
    wait4(pid, &st, 0, &ru);
    if (max_rss_kb) *max_rss_kb = ru.ru_maxrss;
    char* e = read_file(R "/child_err.txt", NULL);
    e[strcspn(e, "\n")] = 0;
    snprintf(err, n, "%s", e);
    free(e);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

// the valid header h with h[at] = value (and at2 = value2 when at2 >= 0) written with the data of
// the valid file; loader must die with one error line containing needle
static void bad_header(const char* what, const int* h, const float* data, size_t n, int at, int value, int at2, int value2,
                       Loader loader, const char* needle) {
    int hh[CKPT_HEADER_INTS];
    memcpy(hh, h, sizeof(hh));
    hh[at] = value;
    if (at2 >= 0) hh[at2] = value2;
    FILE* fp = fopenCheck(R "/bad.bin", "wb");
    fwriteCheck(hh, sizeof(int), CKPT_HEADER_INTS, fp);
    fwriteCheck(data, sizeof(float), n, fp);
    fcloseCheck(fp);
    char err[1024];
    int rc = load_in_child(loader, R "/bad.bin", err, sizeof(err), NULL);
    int ok = rc == 1 && strncmp(err, "error:", 6) == 0 && strstr(err, needle);
    printf("%-4s bad header: %-34s -> %s\n", ok ? "ok" : "FAIL", what, err);
    if (!ok) printf("     (exit %d, wanted '%s')\n", rc, needle);
    if (ok) tests_passed++; else tests_failed++;
}

static void check_headers(void) {
    ModelConfig cfg = model_config_tiny(8);
    Model* m = model_create(&cfg, 1, 32, 32);
    model_init_random(m, 2);
    model_save(m, R "/valid.bin");
    size_t np = model_num_params(m, 0) + model_num_params(m, 1) + model_num_params(m, 2);
    model_free(m);
    size_t len;
    char* file = read_file(R "/valid.bin", &len);
    int h[CKPT_HEADER_INTS];
    memcpy(h, file, sizeof(h));
    const float* data = (const float*)(file + sizeof(h));
    CHECK(len == sizeof(h) + np * sizeof(float), "valid checkpoint of %zu bytes", len);
    char err[1024];
    CHECK(load_in_child(LOAD_MODEL, R "/valid.bin", err, sizeof(err), NULL) == 0, "the valid checkpoint does not load: %s", err);
    const int HH = H_HEAD_H, HG = H_HEAD_G;
    struct { const char* what; int at, value, at2, value2; Loader loader; const char* needle; } cases[] = {
        {"window 1<<20", H_WINDOW, 1 << 20, -1, 0, LOAD_MODEL, "invalid Swin config"},
        {"window -7", H_WINDOW, -7, -1, 0, READ_CONFIG, "invalid Swin config"},
        {"embed_dim 1<<28 (embed << 3 overflows)", H_EMBED, 1 << 28, -1, 0, LOAD_MODEL, "invalid Swin config"},
        {"embed_dim INT_MAX", H_EMBED, INT32_MAX, -1, 0, READ_CONFIG, "invalid Swin config"},
        {"mlp_ratio 1<<30", H_MLP, 1 << 30, -1, 0, LOAD_MODEL, "invalid Swin config"},
        {"depths INT_MAX, INT_MAX (sum overflows)", H_DEPTHS, INT32_MAX, H_DEPTHS + 1, INT32_MAX, LOAD_MODEL, "invalid Swin config"},
        {"depth 0", H_DEPTHS + 2, 0, -1, 0, LOAD_MODEL, "invalid Swin config"},
        {"heads 0 (division by zero)", H_HEADS + 1, 0, -1, 0, LOAD_MODEL, "invalid Swin config"},
        {"heads INT_MIN", H_HEADS, INT32_MIN, -1, 0, LOAD_MODEL, "invalid Swin config"},
        {"in_chans 3", H_IN_CHANS, 3, -1, 0, LOAD_MODEL, "invalid model config"},
        {"classes 0", H_CLASSES, 0, -1, 0, LOAD_MODEL, "invalid model config"},
        {"classes 300", H_CLASSES, 300, HH + M_CLASSES, 300, LOAD_MODEL, "invalid model config"},
        {"mask patch 0", H_PATCH, 0, -1, 0, LOAD_MODEL, "invalid model config"},
        {"mask patch 6", H_PATCH, 6, -1, 0, LOAD_MODEL, "invalid model config"},
        {"mask ratio -1e-6", H_MASK, -1, -1, 0, LOAD_MODEL, "invalid model config"},
        {"queries of g 49", HG + M_QUERIES, 49, -1, 0, LOAD_MODEL, "invalid model config"},
        {"h in_dims[2] != f's channels", HH + M_IN + 2, 7, -1, 0, LOAD_MODEL, "reads 7 channels at level 2"},
        {"h width 1<<30", HH + M_CONV, 1 << 30, HH + M_HIDDEN, 1 << 30, LOAD_MODEL, "invalid h head"},
        {"h queries INT_MAX", HH + M_QUERIES, INT32_MAX, -1, 0, LOAD_MODEL, "invalid h head"},
        {"h ffn 1<<30", HH + M_FFN, 1 << 30, -1, 0, LOAD_MODEL, "invalid h head"},
        {"h decoder layers 1000", HH + M_LAYERS, 1000, -1, 0, LOAD_MODEL, "invalid h head"},
        {"h heads 0", HH + M_HEADS, 0, -1, 0, LOAD_MODEL, "invalid h head"},
        {"g groups 0", HG + M_GROUPS, 0, -1, 0, LOAD_MODEL, "invalid g head"},
        {"g mask dim -1", HG + M_MASK, -1, -1, 0, LOAD_MODEL, "invalid g head"},
        {"pixel decoder kind 7", H_PIXEL_DECODER, 7, -1, 0, LOAD_MODEL, "invalid pixel decoder"},
        {"msdeform with 1<<30 layers", H_PIXEL_DECODER + 4, 1, H_PIXEL_DECODER + 5, 1 << 30, LOAD_MODEL, "invalid pixel decoder"},
        {"parameter count of f -1", H_COUNTS, -1, -1, 0, LOAD_MODEL, "parameters; its config gives"},
        {"parameter count of g + 1", H_COUNTS + 2, h[H_COUNTS + 2] + 1, -1, 0, LOAD_MODEL, "parameters; its config gives"},
        {"kind 4 (a resume state) as a model", 2, 4, -1, 0, LOAD_MODEL, "training resume state"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        bad_header(cases[i].what, h, data, np, cases[i].at, cases[i].value, cases[i].at2, cases[i].value2, cases[i].loader, cases[i].needle);

    // a plausible header of a big model (Swin-S with the published head, ~70M parameters) on a
    // file of 1000 floats: the size is checked before anything is allocated
    ModelConfig big = model_config_swin_s(19);
    int hb[CKPT_HEADER_INTS];
    memcpy(hb, h, sizeof(hb));
    hb[H_CLASSES] = big.num_classes; hb[H_PATCH] = big.mae_patch; hb[H_MASK] = (int)lrintf(big.mask_ratio * 1e6f);
    hb[H_EMBED] = big.swin.embed_dim;
    for (int s = 0; s < 4; s++) { hb[H_DEPTHS + s] = big.swin.depths[s]; hb[H_HEADS + s] = big.swin.num_heads[s]; }
    hb[H_WINDOW] = big.swin.window; hb[H_MLP] = big.swin.mlp_ratio;
    const M2FConfig* heads[2] = {&big.m2f, &big.mae};
    for (int k = 0; k < 2; k++) {
        int* q = hb + (k ? HG : HH);
        for (int l = 0; l < 4; l++) q[M_IN + l] = heads[k]->in_dims[l];
        q[M_CONV] = heads[k]->conv_dim; q[M_MASK] = heads[k]->mask_dim; q[M_GROUPS] = heads[k]->num_groups;
        q[M_QUERIES] = heads[k]->num_queries; q[M_HIDDEN] = heads[k]->hidden_dim; q[M_HEADS] = heads[k]->num_heads;
        q[M_FFN] = heads[k]->ffn_dim; q[M_LAYERS] = heads[k]->dec_layers; q[M_CLASSES] = heads[k]->num_classes;
    }
    size_t nf = swin_num_params(&big.swin), nh = m2f_num_params(&big.m2f), ng = m2f_num_params(&big.mae);
    hb[H_COUNTS] = (int)nf; hb[H_COUNTS + 1] = (int)nh; hb[H_COUNTS + 2] = (int)ng;
    float zeros[1000] = {0};
    FILE* fp = fopenCheck(R "/big.bin", "wb");
    fwriteCheck(hb, sizeof(int), CKPT_HEADER_INTS, fp);
    fwriteCheck(zeros, sizeof(float), 1000, fp);
    fcloseCheck(fp);
    long rss_kb = 0;
    int rc = load_in_child(LOAD_MODEL, R "/big.bin", err, sizeof(err), &rss_kb);
    int ok = rc == 1 && strstr(err, "truncated") && rss_kb < 300 * 1024;
    printf("%-4s bad header: a Swin-S header on a short file (%zu parameters) dies before allocating (peak %.0f MB) -> %s\n",
           ok ? "ok" : "FAIL", nf + nh + ng, rss_kb / 1024.0, err);
    if (ok) tests_passed++; else tests_failed++;

    // the Swin encoder export: the same bounds before its arithmetic, its size before allocating
    SwinConfig sc = swin_config_tiny();
    size_t ns = swin_num_params(&sc);
    float* sw = (float*)callocCheck(ns, sizeof(float));
    swin_save_export(R "/swin.bin", &sc, sw);
    char* sfile = read_file(R "/swin.bin", NULL);
    int hs[CKPT_HEADER_INTS];
    memcpy(hs, sfile, sizeof(hs));
    CHECK(load_in_child(LOAD_SWIN, R "/swin.bin", err, sizeof(err), NULL) == 0, "the valid Swin export does not load: %s", err);
    // [magic, version, kind, in_chans, embed_dim, depths[4], num_heads[4], window, mlp_ratio]
    struct { const char* what; int at, value, at2, value2; } sc_cases[] = {
        {"Swin export: window 1<<20", 13, 1 << 20, -1, 0},
        {"Swin export: embed 1<<29", 4, 1 << 29, -1, 0},
        {"Swin export: depths INT_MAX x2", 5, INT32_MAX, 6, INT32_MAX},
        {"Swin export: heads 0", 10, 0, -1, 0},
        {"Swin export: mlp ratio 1<<30", 14, 1 << 30, -1, 0},
    };
    for (size_t i = 0; i < sizeof(sc_cases) / sizeof(sc_cases[0]); i++)
        bad_header(sc_cases[i].what, hs, sw, ns, sc_cases[i].at, sc_cases[i].value, sc_cases[i].at2, sc_cases[i].value2, LOAD_SWIN, "implausible Swin config");
    // plausible but large (embed 1024, depth 8 each): the size is checked before the ~3 GB allocation
    int hsb[CKPT_HEADER_INTS];
    memcpy(hsb, hs, sizeof(hsb));
    hsb[4] = 1024;
    for (int s = 0; s < 4; s++) { hsb[5 + s] = 8; hsb[9 + s] = 8; }
    fp = fopenCheck(R "/swin_big.bin", "wb");
    fwriteCheck(hsb, sizeof(int), CKPT_HEADER_INTS, fp);
    fwriteCheck(zeros, sizeof(float), 1000, fp);
    fcloseCheck(fp);
    rc = load_in_child(LOAD_SWIN, R "/swin_big.bin", err, sizeof(err), &rss_kb);
    ok = rc == 1 && strstr(err, "truncated") && rss_kb < 300 * 1024;
    printf("%-4s bad header: a large Swin export on a short file dies before allocating (peak %.0f MB) -> %s\n",
           ok ? "ok" : "FAIL", rss_kb / 1024.0, err);
    if (ok) tests_passed++; else tests_failed++;
    free(sw); free(sfile); free(file);
}

// ----------------------------------------------------------------------------

static void check_stream(void) {
    char args[4096];
    CHECK(run("./gen video " VID " --frames 3 --size 40x32 --seed 3 >/dev/null") == 0, "gen failed");
    ModelConfig cfg = model_config_tiny(8);
    Model* m = model_create(&cfg, 2, 32, 40);
    model_init_random(m, 1);
    model_save(m, MODEL);
    model_free(m);
    char* fp_frames = fingerprint(VID);
    char* fp_labels = fingerprint(LAB);

    // --out at the inputs: refused before any write, nothing of theirs touched
    refuses("--out = the frames folder", "stream", VID " " COMMON " --out " VID, "the same folder as the frames folder");
    refuses("--out = the labels folder (DIR_labels)", "stream", VID " " COMMON " --out " LAB, "the same folder as the labels folder");
    refuses("--out = --labels, spelled differently", "stream", VID " " COMMON " --labels " LAB " --out " TMP "/../tmp/rb/./video_labels/",
            "the same folder as the labels folder");
    refuses("--out inside the frames folder", "stream", VID " " COMMON " --out " VID "/sub/deeper", "inside the frames folder");
    run("ln -sfn video " R "/link_to_video");
    refuses("--out = a symlink to it, trailing slash", "stream", VID " " COMMON " --out " R "/link_to_video/", "the same folder as the frames folder");
    refuses("--out inside the labels folder", "stream", VID " " COMMON " --out " LAB "/x", "inside the labels folder");
    char* fp_frames2 = fingerprint(VID);
    char* fp_labels2 = fingerprint(LAB);
    CHECK(strcmp(fp_frames, fp_frames2) == 0 && strcmp(fp_labels, fp_labels2) == 0 && access(VID "/sub", F_OK) != 0,
          "a refused run changed the frames or the labels");
    free(fp_frames); free(fp_labels); free(fp_frames2); free(fp_labels2);

    // output names that collide: found at listing, no output folder made
    run("mkdir -p " R "/coll1 " R "/coll2 " R "/coll3 && cp " VID "/frame000001.png " R "/coll1/a.png && cp " VID
        "/frame000002.png " R "/coll1/a_overlay.png && cp " VID "/frame000001.png " R "/coll2/a.png && cp " VID
        "/frame000002.png " R "/coll2/a.jpg && cp " VID "/frame000001.png " R "/coll3/metrics.png");
    refuses("frames a.png and a_overlay.png", "stream", R "/coll1 " COMMON " --out " R "/o_coll1", "would both write 'a_overlay.png'");
    refuses("frames a.png and a.jpg", "stream", R "/coll2 " COMMON " --out " R "/o_coll2", "would both write 'a.png'");
    refuses("a frame named metrics.png", "stream", R "/coll3 " COMMON " --out " R "/o_coll3", "would both write 'metrics.png'");
    CHECK(access(R "/o_coll1", F_OK) != 0 && access(R "/o_coll2", F_OK) != 0 && access(R "/o_coll3", F_OK) != 0,
          "a run refused for colliding names made its output folder");

    // a folder of the user's (no metrics.json of an earlier run) is not written over
    run("mkdir -p " R "/mine && echo 'my notes' > " R "/mine/frame000002_overlay.png");
    refuses("--out holding a file of the user's", "stream", VID " " COMMON " --out " R "/mine", "holds no metrics.json");
    char* mine = read_file(R "/mine/frame000002_overlay.png", NULL);
    CHECK(strcmp(mine, "my notes\n") == 0 && access(R "/mine/metrics.json", F_OK) != 0, "the user's file was replaced");
    free(mine);
    // the folder of an earlier run is: a second run into it works
    snprintf(args, sizeof(args), "./stream " VID " " COMMON " --out " R "/again > /dev/null 2>&1");
    CHECK(run(args) == 0 && run(args) == 0, "a second run into the output folder of an earlier run failed");
    // the model among the outputs
    run("cp " MODEL " " R "/again/frame000001.png");
    refuses("the model would be an output", "stream", VID " --model " R "/again/frame000001.png --device cpu --mode fixed --out " R "/again",
            "would replace the model");
    // --out-raw at an image, inside --out
    refuses("--out-raw at an existing image", "stream", VID " " COMMON " --out " R "/o_raw --out-raw " VID "_labels/frame000001.png",
            "inside the labels folder");
    run("cp " VID "/frame000001.png " R "/picture.png");
    refuses("--out-raw at a picture of the user's", "stream", VID " " COMMON " --out " R "/o_raw --out-raw " R "/picture.png", "existing image");
    refuses("--out-raw inside --out", "stream", VID " " COMMON " --out " R "/o_raw --out-raw " R "/o_raw/v.rgb", "inside --out");
    CHECK(access(R "/o_raw", F_OK) != 0, "a refused run made its output folder");

    // labels: ids outside the model's 8 classes, and 16-bit labels, refused before any output
    run("rm -rf " R "/lab_bad && cp -r " LAB " " R "/lab_bad");
    {
        unsigned char* ids = (unsigned char*)mallocCheck(32 * 40);
        for (int i = 0; i < 32 * 40; i++) ids[i] = i == 41 ? 9 : 1;   // id 9 at pixel (1, 1)
        label_save_png(R "/lab_bad/frame000002.png", ids, 32, 40);
        free(ids);
    }
    refuses("a label id outside the 8 classes", "stream", VID " " COMMON " --labels " R "/lab_bad --out " R "/o_lab", "class id 9 at pixel (1, 1)");
    run("rm -rf " R "/lab16 && cp -r " LAB " " R "/lab16");
    write_png16(R "/lab16/frame000003.png", 32, 40, 0x0102);   // read at 8 bits, every id would be 1
    refuses("a 16-bit label", "stream", VID " " COMMON " --labels " R "/lab16 --out " R "/o_lab", "16-bit");
    CHECK(access(R "/o_lab", F_OK) != 0, "a run refused for its labels made its output folder");

    // a frame whose header reads but whose data is corrupt: skipped with a warning at listing,
    // before the first output; the run goes on with the others
    {
        run("rm -rf " R "/corrupt && cp -r " VID " " R "/corrupt");
        size_t n;
        char* png = read_file(VID "/frame000002.png", &n);
        write_file(R "/corrupt/frame000002.png", png, n * 6 / 10);   // cut inside the image data
        free(png);
        int w, h, c;
        unsigned char* px = stbi_load(R "/corrupt/frame000002.png", &w, &h, &c, 3);
        CHECK(stbi_info(R "/corrupt/frame000002.png", &w, &h, &c) && px == NULL, "the fixture's header does not read, or it decodes");
        if (px) stbi_image_free(px);
        int rc = run("./stream " R "/corrupt " COMMON " --out " R "/o_corrupt > " R "/log.txt 2>&1");
        char* log = read_file(R "/log.txt", NULL);
        char* warn = strstr(log, "warning: skipping '" R "/corrupt/frame000002.png'");
        char* first_out = strstr(log, "frame    1/2");
        CHECK(rc == 0 && warn && first_out && warn < first_out && strstr(log, "2 frames of 40x32") &&
              access(R "/o_corrupt/frame000002.png", F_OK) != 0 && access(R "/o_corrupt/frame000003.png", F_OK) == 0,
              "corrupt frame: exit %d, log:\n%s", rc, log);
        if (warn) printf("ok   a corrupt frame is found at listing, before any output: %.*s\n", (int)strcspn(warn, "\n"), warn);
        free(log);
    }

    // a checkpoint that is a folder
    refuses("--model a folder", "stream", VID " --model " R " --device cpu --out " R "/o_dir", "is a directory");
}

// ----------------------------------------------------------------------------

static int files_equal(const char* a, const char* b) {
    size_t na, nb;
    char *x = read_file(a, &na), *y = read_file(b, &nb);
    int eq = na == nb && na > 0 && memcmp(x, y, na) == 0;
    free(x); free(y);
    return eq;
}

static void check_train(void) {
    char cmd[4096];
    CHECK(run("./gen stills " R "/data --n 6 --size 32x24 --seed 3 > /dev/null") == 0, "gen stills failed");
    const char* common = "--data " R "/data --size tiny --classes 8 --batch 1 --crop 32x24 --lr 2e-3 --warmup 2 --device cpu --seed 4";

    // --out at an input, at a foreign .opt, at a folder; bad numbers: before any time is spent
    char args[4096];
    ModelConfig cfg = model_config_tiny(8);
    Model* m = model_create(&cfg, 1, 24, 32);
    model_init_random(m, 5);
    model_save(m, R "/init.bin");
    model_free(m);
    char* before = read_file(R "/init.bin", NULL);
    snprintf(args, sizeof(args), "%s --init " R "/init.bin --out " R "/init.bin --steps 1", common);
    refuses("--out = the --init checkpoint", "train", args, "would overwrite the --init file");
    snprintf(args, sizeof(args), "%s --init " R "/init.bin --out " R "/./init.bin --steps 1", common);
    refuses("--out = --init, spelled differently", "train", args, "would overwrite the --init file");
    char* after = read_file(R "/init.bin", NULL);
    CHECK(strcmp(before, after) == 0, "the --init checkpoint was changed");
    free(before); free(after);
    run("echo 'my notes' > " R "/m.bin.opt");
    snprintf(args, sizeof(args), "%s --out " R "/m.bin --steps 1", common);
    refuses("OUT.opt is a file of the user's", "train", args, "is not a ttt checkpoint");
    run("rm -f " R "/m.bin.opt && mkdir -p " R "/adir");
    snprintf(args, sizeof(args), "%s --out " R "/adir --steps 1", common);
    refuses("--out is a folder", "train", args, "is a folder");
    snprintf(args, sizeof(args), "%s --out " R "/m.bin --batch 0", common);
    refuses("--batch 0", "train", args, "--batch");
    snprintf(args, sizeof(args), "%s --out " R "/m.bin --steps 5x", common);
    refuses("--steps 5x", "train", args, "--steps");
    snprintf(args, sizeof(args), "%s --out " R "/m.bin --init " R, common);
    refuses("--init a folder", "train", args, "is a directory");
    // a validation set of two sizes: found before training, not after it
    run("rm -rf " R "/val && ./gen stills " R "/val --n 1 --size 32x24 --seed 5 > /dev/null && ./gen stills " R
        "/val2 --n 1 --size 40x24 --seed 6 > /dev/null && cp " R "/val2/images/000000.png " R "/val/images/000001.png && cp "
        R "/val2/labels/000000.png " R "/val/labels/000001.png");
    snprintf(args, sizeof(args), "%s --out " R "/m.bin --steps 3 --val " R "/val", common);
    refuses("a validation set of two sizes", "train", args, "all must match");
    CHECK(access(R "/m.bin", F_OK) != 0, "a refused run wrote a checkpoint");

    // the resume state: OUT.opt alone (model, AdamW, step, RNG), written before OUT
    snprintf(cmd, sizeof(cmd), "./train %s --out " R "/full.bin --steps 6 --save-every 2 > /dev/null 2>&1", common);
    CHECK(run(cmd) == 0, "uninterrupted run failed");
    // (a) a kill between the two renames: OUT.opt at step 4, OUT still at step 2
    snprintf(cmd, sizeof(cmd), "./train %s --out " R "/k2.bin --steps 6 --save-every 2 --stop-after 2 > /dev/null 2>&1 && "
             "./train %s --out " R "/ka.bin --steps 6 --save-every 2 --stop-after 4 > /dev/null 2>&1 && cp " R "/k2.bin " R "/ka.bin",
             common, common);
    CHECK(run(cmd) == 0, "interrupted runs failed");
    snprintf(cmd, sizeof(cmd), "./train %s --out " R "/ka.bin --steps 6 --save-every 2 --resume > " R "/log.txt 2>&1", common);
    int rc = run(cmd);
    char* log = read_file(R "/log.txt", NULL);
    CHECK(rc == 0 && strstr(log, "resumed from") && strstr(log, "at step 4") && files_equal(R "/ka.bin", R "/full.bin") &&
          files_equal(R "/ka.bin.opt", R "/full.bin.opt"),
          "a kill between the renames (OUT one save behind OUT.opt): the resumed run differs (exit %d)\n%s", rc, log);
    group_line("killed between the two renames (model one save behind OUT.opt): resumed at step 4, bit for bit");
    free(log);
    // (b) a kill before the renames: both at step 2, a half-written OUT.opt.tmp beside them
    snprintf(cmd, sizeof(cmd), "./train %s --out " R "/kb.bin --steps 6 --save-every 2 --stop-after 2 > /dev/null 2>&1 && "
             "head -c 5000 " R "/full.bin.opt > " R "/kb.bin.opt.tmp && head -c 3000 " R "/full.bin > " R "/kb.bin.tmp", common);
    CHECK(run(cmd) == 0, "interrupted run failed");
    snprintf(cmd, sizeof(cmd), "./train %s --out " R "/kb.bin --steps 6 --save-every 2 --resume > " R "/log.txt 2>&1", common);
    rc = run(cmd);
    log = read_file(R "/log.txt", NULL);
    CHECK(rc == 0 && strstr(log, "at step 2") && files_equal(R "/kb.bin", R "/full.bin") && files_equal(R "/kb.bin.opt", R "/full.bin.opt"),
          "a kill before the renames (stale .tmp files): the resumed run differs (exit %d)\n%s", rc, log);
    group_line("killed before the renames (half-written .tmp files beside): resumed at step 2, bit for bit");
    free(log);
    // (c) an optimizer state of the older two-file format, (d) none
    run("rm -f " R "/old.bin*");
    {
        Model* mo = model_load(R "/full.bin", 1, 24, 32);
        int extra[3] = {6, 0, 0};
        model_save_optimizer(mo, R "/old.bin.opt", extra, 3);
        model_save(mo, R "/old.bin");
        model_free(mo);
    }
    snprintf(args, sizeof(args), "%s --out " R "/old.bin --steps 8 --resume", common);
    refuses("--resume from a two-file optimizer state", "train", args, "cannot be resumed");
    snprintf(args, sizeof(args), "%s --out " R "/full.bin --steps 8 --resume", common);
    run("mv " R "/full.bin.opt " R "/full.saved");
    refuses("--resume without OUT.opt", "train", args, "no resume state");
    run("mv " R "/full.saved " R "/full.bin.opt");
}

int main(void) {
    omp_set_num_threads(1);   // this process forks children that load checkpoints: no OpenMP pool
    if (fresh_dir(R) != 0) return 1;
    check_headers();
    check_stream();
    check_train();
    return test_summary("test_robust");
}
