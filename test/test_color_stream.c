// test/test_color_stream.c: ./train --task colorize and ./stream --task colorize end to end on
// the CPU (the programs are built by make before the tests): a tiny colorization model trained
// on generated stills, a short generated video colourised (one PNG per frame, PSNR and SSIM
// printed per frame and per video, equal to a recomputation from the written PNGs, metrics.json
// written), the same video made gray (colourised, not scored), the shipped demo model on
// data/demo/; bad input ends in one "error:" line, exit 1 and no output: a segmentation
// checkpoint for colorization and the reverse (./stream and ./train --init), frames with alpha,
// 16-bit frames, a video mixing gray and colour frames, gray images to train on.
#include "test.h"
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#include "stb_image.h"         // declarations only (vendor/stb_impl.c)
#include "stb_image_write.h"
#pragma GCC diagnostic pop

#define TMP "test/tmp"
#define STILLS TMP "/cs_stills"
#define VID TMP "/cs_video"
#define GRAY TMP "/cs_gray"
#define MODEL TMP "/cs_model.bin"
#define OUT TMP "/cs_out"
#define NF 4
#define LOG TMP "/cs_log.txt"

// run cmd with its stdout and stderr in LOG
static int run_logged(const char* cmd) {
    fflush(stdout);
    char full[4096];
    snprintf(full, sizeof(full), "%s >" LOG " 2>&1", cmd);
    int st = system(full);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char* read_log(void) { return read_text(LOG); }

static int exists(const char* p) { return access(p, F_OK) == 0; }

// a bad-input run: exit 1, exactly one line, starting "error:", naming what; no output folder
static void expect_error(const char* what, const char* cmd, const char* needle, const char* out_dir) {
    system("rm -rf " TMP "/cs_bad_out");
    int rc = run_logged(cmd);
    char* log = read_log();
    int lines = count_substr(log, "\n");
    int ok = rc == 1 && lines == 1 && strncmp(log, "error:", 6) == 0 && strstr(log, needle) != NULL &&
             (out_dir == NULL || !exists(out_dir));
    printf("%-4s bad input: %s: %s", ok ? "ok" : "FAIL", what, log);
    CHECK(ok, "%s (rc %d, %d lines)", what, rc, lines);
    free(log);
}

static char frame_name[NF][64];

// the per-frame PSNR and SSIM printed by ./stream, recomputed from the PNGs it wrote
static void check_scores(const char* log, const char* frames_dir, const char* out_dir) {
    double sum_p = 0.0, sum_s = 0.0;
    int ok_all = 1;
    for (int i = 0; i < NF; i++) {
        char key[512];
        snprintf(key, sizeof(key), " %s | mae ", frame_name[i]);   // online TTT: the MAE loss, then the scores
        const char* line = strstr(log, key);
        double p = NAN, s = NAN;
        if (line) {
            const char* pp = strstr(line, "PSNR ");
            const char* ss = strstr(line, "SSIM ");
            if (pp) p = atof(pp + 5);
            if (ss) s = atof(ss + 5);
        }
        char a[1024], b[1024], err[1024];
        snprintf(a, sizeof(a), "%s/%s.png", frames_dir, frame_name[i]);
        snprintf(b, sizeof(b), "%s/%s.png", out_dir, frame_name[i]);
        int H, W, H2, W2;
        unsigned char* orig = image_try_load_u8(a, &H, &W, err, sizeof(err));
        unsigned char* col = image_try_load_u8(b, &H2, &W2, err, sizeof(err));
        if (!orig || !col || H != H2 || W != W2) { ok_all = 0; free(orig); free(col); continue; }
        double rp = color_psnr(orig, col, (size_t)H * W * 3), rs = color_ssim(orig, col, H, W, 3);
        int ok = fabs(rp - p) < 6e-5 && fabs(rs - s) < 6e-7;
        printf("%-4s %s: printed PSNR %.4f SSIM %.6f, from the PNGs %.6f %.8f\n", ok ? "ok" : "FAIL", frame_name[i], p, s, rp, rs);
        ok_all &= ok;
        sum_p += rp; sum_s += rs;
        free(orig); free(col);
    }
    CHECK(ok_all, "per-frame PSNR / SSIM equal a recomputation from the written PNGs");
    const char* r = strstr(log, "RESULT task=colorize");
    double vp = r && strstr(r, "psnr=") ? atof(strstr(r, "psnr=") + 5) : NAN;
    double vs = r && strstr(r, "ssim=") ? atof(strstr(r, "ssim=") + 5) : NAN;
    int ok = fabs(vp - sum_p / NF) < 1e-5 && fabs(vs - sum_s / NF) < 1e-6;
    printf("%-4s video PSNR %.6f SSIM %.6f = means of the recomputed frames (%.6f, %.6f)\n", ok ? "ok" : "FAIL", vp, vs, sum_p / NF, sum_s / NF);
    CHECK(ok, "video scores are the frame means");
}

int main(void) {
    system("rm -rf " TMP "/cs_* && mkdir -p " TMP);
    // a tiny model: ./train --task colorize on generated stills (images only)
    int rc = run_logged("./gen stills " STILLS " --n 6 --size 64x48 --seed 3");
    CHECK(rc == 0, "gen stills");
    rc = run_logged("./train --task colorize --data " STILLS " --val " STILLS " --out " MODEL " --size tiny --steps 3 --batch 2 "
             "--crop 64x48 --warmup 1 --lr 1e-3 --save-every 0 --device cpu --seed 2");
    char* log = read_log();
    CHECK(rc == 0 && strstr(log, "colour rebalancing from 6 images") && strstr(log, "val: PSNR"), "./train --task colorize:\n%s", log);
    free(log);
    ModelConfig cfg = exists(MODEL) ? model_read_config(MODEL) : model_config_tiny(1);
    CHECK(cfg.colorize == 1 && cfg.num_classes == COLOR_BINS, "the trained checkpoint is a colorization model");
    // interrupted after step 1 and resumed: the same checkpoint, byte for byte (weights included)
    #define TRAIN_ARGS "./train --task colorize --data " STILLS " --size tiny --steps 3 --batch 2 --crop 64x48 --warmup 1 " \
                       "--lr 1e-3 --save-every 0 --device cpu --seed 2 --out " TMP "/cs_resumed.bin"
    rc = run_logged(TRAIN_ARGS " --stop-after 1");
    int rc2 = run_logged(TRAIN_ARGS " --resume");
    size_t na = 0, nb = 0;
    unsigned char *fa = NULL, *fb = NULL;
    FILE* f1 = fopen(MODEL, "rb");
    FILE* f2 = fopen(TMP "/cs_resumed.bin", "rb");
    if (f1 && f2) {
        fseek(f1, 0, SEEK_END); na = (size_t)ftell(f1); fseek(f1, 0, SEEK_SET);
        fseek(f2, 0, SEEK_END); nb = (size_t)ftell(f2); fseek(f2, 0, SEEK_SET);
        fa = (unsigned char*)mallocCheck(na + 1); fb = (unsigned char*)mallocCheck(nb + 1);
        na = fread(fa, 1, na, f1); nb = fread(fb, 1, nb, f2);
    }
    if (f1) fclose(f1);
    if (f2) fclose(f2);
    int same = fa && fb && na == nb && na > 0 && memcmp(fa, fb, na) == 0;
    printf("%-4s ./train --task colorize stopped after step 1 and resumed equals the uninterrupted run (%zu bytes)\n", same ? "ok" : "FAIL", na);
    CHECK(rc == 0 && rc2 == 0 && same, "colorize resume (rc %d %d)", rc, rc2);
    free(fa); free(fb);
    // a short generated colour video
    rc = run_logged("./gen video " VID " --frames 4 --size 64x48 --seed 5");
    CHECK(rc == 0, "gen video");
    for (int i = 0; i < NF; i++) snprintf(frame_name[i], sizeof(frame_name[i]), "frame%06d", i + 1);
    rc = run_logged("./stream " VID " --task colorize --model " MODEL " --out " OUT " --device cpu --batch 2 --window 2 --lr 1e-3");
    log = read_log();
    int pngs = 1;
    for (int i = 0; i < NF; i++) {
        char p[1024];
        snprintf(p, sizeof(p), OUT "/%s.png", frame_name[i]);
        int H, W, C;
        pngs &= stbi_info(p, &W, &H, &C) && H == 48 && W == 64 && C == 3;
    }
    CHECK(rc == 0 && pngs && exists(OUT "/metrics.json"), "./stream --task colorize writes a colour PNG per frame and metrics.json (rc %d):\n%s", rc, log);
    CHECK(count_substr(log, "| PSNR ") == NF && strstr(log, "scored=4"), "PSNR and SSIM on every frame");
    check_scores(log, VID, OUT);
    free(log);
    FILE* fp = fopen(OUT "/metrics.json", "r");
    char buf[8192] = "";
    if (fp) { size_t n = fread(buf, 1, sizeof(buf) - 1, fp); buf[n] = 0; fclose(fp); }
    CHECK(strstr(buf, "\"video_psnr\"") && strstr(buf, "\"video_ssim\"") && count_substr(buf, "\"psnr\"") == NF, "metrics.json holds the scores");
    // the same video made gray (1-channel PNGs): colourised, not scored
    mkdir(GRAY, 0755);
    for (int i = 0; i < NF; i++) {
        char a[1024], b[1024], err[1024];
        snprintf(a, sizeof(a), VID "/%s.png", frame_name[i]);
        snprintf(b, sizeof(b), GRAY "/%s.png", frame_name[i]);
        int H, W;
        unsigned char* px = image_try_load_u8(a, &H, &W, err, sizeof(err));
        if (!px) { CHECK(0, "%s", err); continue; }
        unsigned char* g = (unsigned char*)mallocCheck((size_t)H * W);
        for (size_t p = 0; p < (size_t)H * W; p++) g[p] = (unsigned char)((px[p * 3] + px[p * 3 + 1] + px[p * 3 + 2]) / 3);
        stbi_write_png(b, W, H, 1, g, W);
        free(px); free(g);
    }
    rc = run_logged("./stream " GRAY " --task colorize --model " MODEL " --out " TMP "/cs_gray_out --device cpu --mode fixed");
    log = read_log();
    int H, W, C;
    CHECK(rc == 0 && !strstr(log, "| PSNR") && strstr(log, "scored=0") && stbi_info(TMP "/cs_gray_out/frame000001.png", &W, &H, &C) && C == 3,
          "gray frames are colourised, not scored:\n%s", log);
    free(log);
    // the shipped model on the demo video, out of the box
    rc = run_logged("./stream data/demo/ --task colorize --mode fixed --out " TMP "/cs_demo --device cpu");
    log = read_log();
    CHECK(rc == 0 && strstr(log, "model=data/model_colorize.bin") && exists(TMP "/cs_demo/frame000001.png") && strstr(log, "RESULT task=colorize"),
          "./stream data/demo/ --task colorize:\n%s", log);
    free(log);
    // bad input
    expect_error("a segmentation checkpoint for --task colorize",
                 "./stream " VID " --task colorize --model data/model.bin --out " TMP "/cs_bad_out --device cpu", "segmentation model", TMP "/cs_bad_out");
    expect_error("a colorization checkpoint for --task semantic",
                 "./stream " VID " --model " MODEL " --out " TMP "/cs_bad_out --device cpu", "colorization model", TMP "/cs_bad_out");
    expect_error("a colorization checkpoint for --task panoptic",
                 "./stream " VID " --task panoptic --model " MODEL " --out " TMP "/cs_bad_out --device cpu", "colorization model", TMP "/cs_bad_out");
    expect_error("./train --task colorize --init a segmentation model",
                 "./train --task colorize --data " STILLS " --init data/model.bin --out " TMP "/cs_bad.bin --steps 1 --device cpu", "segmentation model", TMP "/cs_bad.bin");
    expect_error("./train --init a colorization model for segmentation",
                 "./train --data " STILLS " --init " MODEL " --out " TMP "/cs_bad.bin --steps 1 --device cpu", "colorization model", TMP "/cs_bad.bin");
    // frames with an alpha channel
    mkdir(TMP "/cs_rgba", 0755);
    unsigned char px[16 * 16 * 4];
    for (int i = 0; i < 16 * 16 * 4; i++) px[i] = (unsigned char)(i * 7);
    stbi_write_png(TMP "/cs_rgba/f1.png", 16, 16, 4, px, 16 * 4);
    expect_error("RGBA frames", "./stream " TMP "/cs_rgba --task colorize --model " MODEL " --out " TMP "/cs_bad_out --device cpu", "alpha", TMP "/cs_bad_out");
    // 16-bit frames
    mkdir(TMP "/cs_16", 0755);
    write_png16(TMP "/cs_16/f1.png", 16, 16, 100);
    expect_error("16-bit frames", "./stream " TMP "/cs_16 --task colorize --model " MODEL " --out " TMP "/cs_bad_out --device cpu", "16-bit", TMP "/cs_bad_out");
    // a video mixing gray and colour frames
    system("mkdir -p " TMP "/cs_mixed && cp " VID "/frame000001.png " TMP "/cs_mixed/a1.png && cp " GRAY "/frame000002.png " TMP "/cs_mixed/a2.png");
    expect_error("gray and colour frames mixed", "./stream " TMP "/cs_mixed --task colorize --model " MODEL " --out " TMP "/cs_bad_out --device cpu", "mixes gray", TMP "/cs_bad_out");
    // gray images to train on
    expect_error("./train --task colorize on gray images",
                 "./train --task colorize --data " GRAY " --out " TMP "/cs_bad.bin --steps 1 --device cpu", "gray", TMP "/cs_bad.bin");
    return test_summary("test_color_stream");
}
