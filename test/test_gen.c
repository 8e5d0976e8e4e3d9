// test/test_gen.c: the synthetic-world generator (./gen, built by make before the tests)
// is deterministic, writes labels in range and of the image's size, keeps nearby video
// frames alike and scene changes apart, changes frames but never labels with --shift,
// and rejects bad arguments with one error line.
#include "test.h"
#include <sys/wait.h>
#include <unistd.h>

#define TMP "test/tmp"
#define NUM_CLASSES 8

static double mean_abs_diff(const float* a, const float* b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += fabs((double)a[i] - b[i]);
    return s / n;
}

// the bad command must exit 1 and print a first stderr line starting with "error:"
static void expect_error(const char* what, const char* args) {
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "./gen %s >/dev/null 2>" TMP "/gen_err.txt", args);
    int rc = run(cmd);
    char line[512] = {0};
    FILE* fp = fopen(TMP "/gen_err.txt", "r");
    if (fp) { if (!fgets(line, sizeof(line), fp)) line[0] = 0; fclose(fp); }
    line[strcspn(line, "\n")] = 0;
    int ok = rc == 1 && strncmp(line, "error:", 6) == 0;
    printf("%-4s bad input: %-30s -> %s\n", ok ? "ok" : "FAIL", what, line);
    if (ok) tests_passed++; else tests_failed++;
}

int main(void) {
    if (run("mkdir -p " TMP " && rm -rf " TMP "/gen_*") != 0) return 1;
    char a[512], b[512];

    // stills: same seed, same bytes; another seed, other bytes
    CHECK(run("./gen stills " TMP "/gen_s1 --n 3 --size 40x24 --seed 5 >/dev/null") == 0, "gen stills failed");
    CHECK(run("./gen stills " TMP "/gen_s2 --n 3 --size 40x24 --seed 5 >/dev/null") == 0, "gen stills failed");
    CHECK(run("./gen stills " TMP "/gen_s3 --n 3 --size 40x24 --seed 6 >/dev/null") == 0, "gen stills failed");
    int same = 1;
    for (int k = 0; k < 3; k++) {
        snprintf(a, sizeof(a), TMP "/gen_s1/images/%06d.png", k);
        snprintf(b, sizeof(b), TMP "/gen_s2/images/%06d.png", k);
        same &= same_bytes(a, b);
        snprintf(a, sizeof(a), TMP "/gen_s1/labels/%06d.png", k);
        snprintf(b, sizeof(b), TMP "/gen_s2/labels/%06d.png", k);
        same &= same_bytes(a, b);
    }
    CHECK(same, "stills with the same seed differ");
    CHECK(!same_bytes(TMP "/gen_s1/images/000000.png", TMP "/gen_s3/images/000000.png"),
          "stills with different seeds are identical");

    // video: deterministic too; 12 frames with a scene change after 8
    const char* vid = "--frames 12 --size 40x24 --seed 9 --scene-every 8";
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "./gen video " TMP "/gen_v1 %s >/dev/null", vid);
    CHECK(run(cmd) == 0, "gen video failed");
    snprintf(cmd, sizeof(cmd), "./gen video " TMP "/gen_v2 %s --labels " TMP "/gen_v2lab >/dev/null", vid);
    CHECK(run(cmd) == 0, "gen video failed");
    same = 1;
    for (int t = 1; t <= 12; t++) {
        snprintf(a, sizeof(a), TMP "/gen_v1/frame%06d.png", t);
        snprintf(b, sizeof(b), TMP "/gen_v2/frame%06d.png", t);
        same &= same_bytes(a, b);
        snprintf(a, sizeof(a), TMP "/gen_v1_labels/frame%06d.png", t);
        snprintf(b, sizeof(b), TMP "/gen_v2lab/frame%06d.png", t);
        same &= same_bytes(a, b);
    }
    CHECK(same, "videos with the same seed differ");

    // the drift split into its two parts: --style-drift D --look-drift D is --drift D
    // byte for byte; a nuisance-only and a class-style-only drift change the frames (at a
    // frame far from the source appearance) and never the labels
    // gen_d0 .. gen_d4: whole drift, the same split into parts, look only, style only, none
    const char* parts[5] = {"--drift 2", "--style-drift 2 --look-drift 2", "--drift 0 --look-drift 3",
                            "--drift 0 --style-drift 3", "--drift 0"};
    for (int i = 0; i < 5; i++) {
        snprintf(cmd, sizeof(cmd), "./gen video " TMP "/gen_d%d %s %s >/dev/null", i, vid, parts[i]);
        CHECK(run(cmd) == 0, "gen video %s failed", parts[i]);
    }
    int split_same = 1, look_differs = 0, style_differs = 0, labels_same = 1;
    for (int t = 1; t <= 12; t++) {
        char c[512], d[512], e[512];
        snprintf(a, sizeof(a), TMP "/gen_d0/frame%06d.png", t);
        snprintf(b, sizeof(b), TMP "/gen_d1/frame%06d.png", t);
        split_same &= same_bytes(a, b);
        snprintf(c, sizeof(c), TMP "/gen_d2/frame%06d.png", t);
        snprintf(d, sizeof(d), TMP "/gen_d3/frame%06d.png", t);
        snprintf(e, sizeof(e), TMP "/gen_d4/frame%06d.png", t);
        look_differs |= !same_bytes(c, e);
        style_differs |= !same_bytes(d, e);
        for (int k = 0; k < 4; k++) {
            snprintf(c, sizeof(c), TMP "/gen_d%d_labels/frame%06d.png", k, t);
            snprintf(e, sizeof(e), TMP "/gen_d4_labels/frame%06d.png", t);
            labels_same &= same_bytes(c, e);
        }
    }
    CHECK(split_same, "--style-drift 2 --look-drift 2 differs from --drift 2");
    CHECK(look_differs && style_differs, "a drift part changes no frame (look %d, style %d)", look_differs, style_differs);
    CHECK(labels_same, "a drift option changed the labels");
    group_line("drift parts: split equals whole, each part moves frames, labels untouched");

    // every label map matches its image's size and holds class ids < NUM_CLASSES
    int sizes_ok = 1, range_ok = 1, classes_seen[NUM_CLASSES] = {0};
    float* frames[12];
    for (int t = 1; t <= 12; t++) {
        int H, W, LH, LW;
        snprintf(a, sizeof(a), TMP "/gen_v1/frame%06d.png", t);
        snprintf(b, sizeof(b), TMP "/gen_v1_labels/frame%06d.png", t);
        frames[t - 1] = image_load(a, &H, &W);
        unsigned char* lab = label_load(b, 0, 0, &LH, &LW);
        sizes_ok &= H == 24 && W == 40 && LH == H && LW == W;
        for (int i = 0; i < LH * LW; i++) {
            if (lab[i] >= NUM_CLASSES) range_ok = 0;
            else classes_seen[lab[i]] = 1;
        }
        free(lab);
    }
    CHECK(sizes_ok, "a frame or label is not 40x24");
    CHECK(range_ok, "a label is outside [0, %d)", NUM_CLASSES);
    CHECK(classes_seen[0] && classes_seen[1], "sky and ground never appear");

    // locality: consecutive frames are closer than frames across the scene change
    size_t n = 24 * 40 * 3;
    double near = mean_abs_diff(frames[0], frames[1], n);
    double far = mean_abs_diff(frames[0], frames[8], n);
    printf("%-4s locality: |x2 - x1| = %.4f < |x9 - x1| = %.4f (new scene)\n", near < far ? "ok" : "FAIL", near, far);
    if (near < far) tests_passed++; else tests_failed++;
    for (int t = 0; t < 12; t++) free(frames[t]);

    // --fps samples the same motion: frame 2 at 15 fps shows the labels of frame 3 at 30 fps
    CHECK(run("./gen video " TMP "/gen_f15 --frames 2 --fps 15 --size 40x24 --seed 4 >/dev/null") == 0 &&
          run("./gen video " TMP "/gen_f30 --frames 3 --size 40x24 --seed 4 >/dev/null") == 0, "gen --fps failed");
    CHECK(same_bytes(TMP "/gen_f15_labels/frame000002.png", TMP "/gen_f30_labels/frame000003.png") &&
          !same_bytes(TMP "/gen_f15_labels/frame000002.png", TMP "/gen_f30_labels/frame000002.png"),
          "--fps 15 frame 2 does not show the scene of frame 3 at 30 fps");

    // --shift: every named shift changes every frame but never a label; deterministic
    const char* shifts[] = {"fog", "night", "swap", "noise", "style"};
    CHECK(run("./gen video " TMP "/gen_sh_none --frames 2 --size 40x24 --seed 12 >/dev/null") == 0, "gen video failed");
    for (int k = 0; k < 5; k++) {
        snprintf(cmd, sizeof(cmd), "./gen video " TMP "/gen_sh_%s --frames 2 --size 40x24 --seed 12 --shift %s >/dev/null", shifts[k], shifts[k]);
        CHECK(run(cmd) == 0, "gen video --shift %s failed", shifts[k]);
        double diff = 1e9;
        int labels_same = 1;
        for (int t = 1; t <= 2; t++) {
            int H, W, H2, W2;
            snprintf(a, sizeof(a), TMP "/gen_sh_none/frame%06d.png", t);
            snprintf(b, sizeof(b), TMP "/gen_sh_%s/frame%06d.png", shifts[k], t);
            float* x0 = image_load(a, &H, &W);
            float* x1 = image_load(b, &H2, &W2);
            double d = H == H2 && W == W2 ? mean_abs_diff(x0, x1, (size_t)H * W * 3) : 0.0;
            if (d < diff) diff = d;
            free(x0); free(x1);
            snprintf(a, sizeof(a), TMP "/gen_sh_none_labels/frame%06d.png", t);
            snprintf(b, sizeof(b), TMP "/gen_sh_%s_labels/frame%06d.png", shifts[k], t);
            labels_same &= same_bytes(a, b);
        }
        int ok = diff > 0.02 && labels_same;
        printf("%-4s --shift %-5s: frames change (min mean |diff| %.4f > 0.02), labels %s\n",
               ok ? "ok" : "FAIL", shifts[k], diff, labels_same ? "identical" : "DIFFER");
        if (ok) tests_passed++; else tests_failed++;
    }
    CHECK(run("./gen video " TMP "/gen_sh_night2 --frames 2 --size 40x24 --seed 12 --shift night >/dev/null") == 0 &&
          same_bytes(TMP "/gen_sh_night/frame000002.png", TMP "/gen_sh_night2/frame000002.png"),
          "--shift night is not deterministic");
    CHECK(run("./gen video " TMP "/gen_sh_fog0 --frames 1 --size 40x24 --seed 12 --shift fog --shift-strength 0 >/dev/null") == 0 &&
          same_bytes(TMP "/gen_sh_fog0/frame000001.png", TMP "/gen_sh_none/frame000001.png"),
          "--shift fog at strength 0 changes the frame");

    // bad arguments
    expect_error("no arguments", "");
    expect_error("unknown mode", "movie " TMP "/gen_x");
    expect_error("unknown option", "video " TMP "/gen_x --colour 3");
    expect_error("option for the other mode", "stills " TMP "/gen_x --frames 3");
    expect_error("bad size", "video " TMP "/gen_x --size 3x3");
    expect_error("bad number", "stills " TMP "/gen_x --n ten");
    expect_error("zero fps", "video " TMP "/gen_x --fps 0");
    expect_error("unknown shift", "video " TMP "/gen_x --shift rain");
    expect_error("shift for stills", "stills " TMP "/gen_x --shift fog");
    expect_error("missing value", "stills " TMP "/gen_x --n");
    expect_error("output is a file", "stills " TMP "/gen_err.txt --n 1");
    return test_summary("test_gen");
}
