// test/test_kitti.c: ./stream on a small fixture written here in the exact KITTI-STEP layout
// (ROOT/images/val/SEQ/NNNNNN.png with ROOT/panoptic_maps/val/SEQ/NNNNNN.png: semantic train id
// in R, instance id in G and B) and a tiny 19-class model:
// - the labels are found from the layout alone, every frame is scored, the class names print;
// - --recipe paper resolves to the released code's settings (one "settings:" line, the same in
//   metrics.json), each one still one option away;
// - the resize / crop / predict / resize-back path: outputs at the frame's size, the model's
//   size as detectron2's ResizeShortestEdge gives it, TTT crops of the asked size;
// - the per-frame mIoU (detectron2's definition: classes in the label or the prediction, 255
//   ignored) recomputed here from the written class maps and labels, and the video score as
//   their mean; --score-every;
// - bad input: a missing label, a label without its frame, a label of the wrong size, an id
//   outside the 19 classes: one "error:" line naming the file, exit 1, no output written.
#include "test.h"
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define TMP "test/tmp"
#define ROOT TMP "/kitti"
#define SEQ ROOT "/images/val/0002"
#define LABS ROOT "/panoptic_maps/val/0002"
#define MODEL TMP "/kitti_tiny19.bin"
#define NF 5
#define FH 40
#define FW 75

static int stream(const char* args) { return stream_to_log(args, TMP "/kitti_log.txt"); }

// the number after `key` in s (e.g. "\"video_miou\": "); NAN when absent
static double number_after(const char* s, const char* key) {
    const char* p = strstr(s, key);
    return p ? strtod(p + strlen(key), NULL) : NAN;
}

// frame t: coloured bands that move a little per frame; a first label: road below, sky above,
// a car block, an ignored corner (panoptic map R = train id, G = instance id); main() then
// replaces the labels by ones that partly agree with the model
static void write_fixture(void) {
    float* img = mallocCheck((size_t)FH * FW * 3 * sizeof(float));
    unsigned char* pan = mallocCheck((size_t)FH * FW * 3);
    for (int t = 0; t < NF; t++) {
        for (int y = 0; y < FH; y++)
            for (int x = 0; x < FW; x++) {
                float* p = img + ((size_t)y * FW + x) * 3;
                int cls = y > FH / 2 ? 0 : 10;                         // road, sky
                if (y > FH / 3 && x > 10 + t && x < 30 + t) cls = 13;   // car
                if (y < 4 && x < 6) cls = 255;                          // ignored
                p[0] = cls == 0 ? 0.5f : cls == 10 ? 0.3f : 0.9f;
                p[1] = 0.2f + 0.5f * (x % 7) / 7.0f;
                p[2] = cls == 10 ? 0.9f : 0.2f + 0.01f * t;
                unsigned char* q = pan + ((size_t)y * FW + x) * 3;
                q[0] = (unsigned char)cls;
                q[1] = cls == 13 ? 1 : 0;   // instance id
                q[2] = 0;
            }
        char path[512];
        snprintf(path, sizeof(path), SEQ "/%06d.png", t);
        image_save_png(path, img, FH, FW);
        snprintf(path, sizeof(path), LABS "/%06d.png", t);
        // RGB PNG through the float writer: ids / 255 are exact in 8 bits
        float* rgb = mallocCheck((size_t)FH * FW * 3 * sizeof(float));
        for (int i = 0; i < FH * FW * 3; i++) rgb[i] = pan[i] / 255.0f;
        image_save_png(path, rgb, FH, FW);
        free(rgb);
    }
    free(img); free(pan);
}

// detectron2 SemSegEvaluator on one frame: IoU of every class present in label or prediction
// (pixels with label 255 ignored), their mean
static double frame_miou(const unsigned char* pred, const unsigned char* lab, int n, int K) {
    long long tp[256] = {0}, fp[256] = {0}, fn[256] = {0};
    for (int i = 0; i < n; i++) {
        if (lab[i] == 255) continue;
        if (pred[i] == lab[i]) tp[lab[i]]++;
        else { fp[pred[i]]++; fn[lab[i]]++; }
    }
    double sum = 0.0;
    int cnt = 0;
    for (int c = 0; c < K; c++) {
        long long u = tp[c] + fp[c] + fn[c];
        if (u) { sum += (double)tp[c] / u; cnt++; }
    }
    return cnt ? sum / cnt : NAN;
}

int main(void) {
    if (run("rm -rf " ROOT " && mkdir -p " SEQ " " LABS) != 0) return 1;
    write_fixture();
    {   // a tiny random 19-class model
        ModelConfig cfg = model_config_tiny(19);
        Model* m = model_create(&cfg, 1, 32, 32);
        model_init_random(m, 5);
        model_save(m, MODEL);
        model_free(m);
    }
    const char* common = "--model " MODEL " --device cpu";
    char args[2048];

    // 0. labels that partly agree with the model: predict the frames once (fixed mode, a copy
    // of the frames outside the layout, so no labels), then label = prediction, except a band
    // of another class and an ignored corner. Scores then sit strictly between 0 and 1.
    run("rm -rf " TMP "/kitti_plain " TMP "/kitti_pred && mkdir -p " TMP "/kitti_plain && cp " SEQ "/*.png " TMP "/kitti_plain/");
    snprintf(args, sizeof(args), TMP "/kitti_plain --mode fixed --resize-short 48 --max-long 96 %s --out " TMP "/kitti_pred", common);
    CHECK(stream(args) == 0, "prediction run for the labels failed");
    for (int t = 0; t < NF; t++) {
        char p[512];
        int H, W;
        snprintf(p, sizeof(p), TMP "/kitti_pred/%06d.png", t);
        unsigned char* pred = label_load(p, FH, FW, &H, &W);
        float* rgb = mallocCheck((size_t)FH * FW * 3 * sizeof(float));
        for (int y = 0; y < FH; y++)
            for (int x = 0; x < FW; x++) {
                int c = pred[y * FW + x];
                if (y >= 10 + t && y < 20 + t) c = (c + 1 + x / 25) % 19;   // disagree in a band
                if (y < 4 && x < 6) c = 255;                                  // ignored
                float* q = rgb + ((size_t)y * FW + x) * 3;
                q[0] = c / 255.0f; q[1] = 1 / 255.0f; q[2] = 0.0f;
            }
        snprintf(p, sizeof(p), LABS "/%06d.png", t);
        image_save_png(p, rgb, FH, FW);
        free(pred); free(rgb);
    }

    // 1. the paper's recipe at small sizes: resize to short side 48 (long side <= 96), TTT on
    // 64x32 crops, batch 4; labels from the layout
    snprintf(args, sizeof(args), "%s/ --recipe paper --resize-short 48 --max-long 96 --crop 64x32 --batch 4 "
             "%s --out " TMP "/kitti_out", SEQ, common);
    int rc = stream(args);
    char* log = read_text(TMP "/kitti_log.txt");
    CHECK(rc == 0, "stream on the KITTI-STEP fixture exited %d:\n%s", rc, log);
    CHECK(strstr(log, "5 frames of 75x40, 5 with labels in " LABS) != NULL, "labels not found from the layout:\n%s", log);
    const char* want[] = {"recipe=paper", "sampler=cycle", "restart_optimizer=on", "backbone_lr_scale=0.1",
                          "wd_exempt=on", "clip=0.01", "drop_path=0.3", "mask_ratio=0.85", "loss_pixels=all",
                          "resize_short=48", "max_long=96", "crop=64x32", "batch=4", "lr=0.0001", "wd=0.05",
                          "frame_size=75x40", "model_size=90x48", "ttt_size=64x32", "label_format=kitti"};
    const char* settings = strstr(log, "\nsettings:");
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        CHECK(settings && strstr(settings, want[i]) && strchr(settings + 1, '\n') > strstr(settings, want[i]),
              "settings line lacks %s", want[i]);
    CHECK(strstr(log, "road") && strstr(log, "sky") && strstr(log, "car"), "class names not printed");
    CHECK(strstr(log, "RESULT dir=") != NULL, "no RESULT line");
    // outputs at the frame's size, and the per-frame mIoU recomputed here
    double sum = 0.0;
    int nscored = 0, sizes_ok = 1;
    char* js = read_text(TMP "/kitti_out/metrics.json");
    for (int t = 0; t < NF; t++) {
        char p[512];
        int H, W, lh, lw;
        snprintf(p, sizeof(p), TMP "/kitti_out/%06d.png", t);
        unsigned char* pred = label_load(p, 0, 0, &H, &W);
        sizes_ok &= H == FH && W == FW;
        snprintf(p, sizeof(p), LABS "/%06d.png", t);
        unsigned char* lab = label_load_format(p, LABEL_KITTI_PANOPTIC, 19, FH, FW, &lh, &lw);
        double mi = frame_miou(pred, lab, FH * FW, 19);
        sum += mi; nscored++;
        // the same value in metrics.json's frame record
        char key[64];
        snprintf(key, sizeof(key), "\"name\": \"%06d.png\"", t);
        const char* rec = strstr(js, key);
        double got = rec ? number_after(rec, "\"miou\": ") : NAN;
        CHECK(fabs(got - mi) < 1e-5, "frame %d: metrics.json mIoU %g, recomputed %g", t, got, mi);
        free(pred); free(lab);
    }
    CHECK(sizes_ok, "class maps are not at the frame's size %dx%d", FW, FH);
    double video = number_after(js, "\"video_miou\": ");
    printf("%-4s video mIoU %.6f = mean of the recomputed per-frame mIoU %.6f\n",
           fabs(video - sum / nscored) < 1e-5 ? "ok" : "FAIL", video, sum / nscored);
    CHECK(fabs(video - sum / nscored) < 1e-5, "video mIoU %g, mean of frames %g", video, sum / nscored);
    CHECK(strstr(js, "\"settings\": {\"recipe\": \"paper\"") && strstr(js, "\"mask_ratio\": 0.85") &&
          strstr(js, "\"class_names\": [\"road\""), "metrics.json lacks the settings or class names");
    free(js); free(log);

    // 2. one option away: the demo's sampler and no restart on top of the paper's recipe; a
    // fixed-mode run that scores every second frame
    snprintf(args, sizeof(args), "%s --recipe paper --sampler replace --restart-optimizer off --loss-pixels masked "
             "--resize-short 48 --max-long 96 --crop 64x32 --batch 2 --mode fixed --score-every 2 %s --out " TMP "/kitti_out2",
             SEQ, common);
    rc = stream(args);
    log = read_text(TMP "/kitti_log.txt");
    CHECK(rc == 0, "second run exited %d:\n%s", rc, log);
    CHECK(strstr(log, "sampler=replace") && strstr(log, "restart_optimizer=off") && strstr(log, "loss_pixels=masked") &&
          strstr(log, "clip=0.01"), "overrides not applied:\n%s", log);
    CHECK(strstr(log, "3 with labels") != NULL, "--score-every 2 of 5 frames should score 3");
    CHECK(strstr(log, "scored=3") != NULL, "RESULT does not count 3 scored frames");
    {   // fixed mode: the predictions of step 0, so frames 0, 2, 4 score strictly between 0 and 1
        char* js2 = read_text(TMP "/kitti_out2/metrics.json");
        double v2 = number_after(js2, "\"video_miou\": "), want2 = 0.0;
        for (int t = 0; t < NF; t += 2) {
            char p[512];
            int H, W, lh, lw;
            snprintf(p, sizeof(p), TMP "/kitti_out2/%06d.png", t);
            unsigned char* pred = label_load(p, FH, FW, &H, &W);
            snprintf(p, sizeof(p), LABS "/%06d.png", t);
            unsigned char* lab = label_load_format(p, LABEL_KITTI_PANOPTIC, 19, FH, FW, &lh, &lw);
            want2 += frame_miou(pred, lab, FH * FW, 19) / 3.0;
            free(pred); free(lab);
        }
        printf("%-4s fixed, every 2nd frame: video mIoU %.6f, recomputed %.6f\n",
               fabs(v2 - want2) < 1e-5 && v2 > 0.05 && v2 < 0.95 ? "ok" : "FAIL", v2, want2);
        CHECK(fabs(v2 - want2) < 1e-5 && v2 > 0.05 && v2 < 0.95, "video mIoU %g, recomputed %g", v2, want2);
        free(js2);
    }
    free(log);

    // 3. bad input: each ends in one error line naming the file, exit 1, nothing written
    struct { const char* name; const char* setup; const char* undo; const char* needle; } bad[] = {
        {"missing label", "mv " LABS "/000003.png " TMP "/k_saved.png", "mv " TMP "/k_saved.png " LABS "/000003.png", "000003.png"},
        {"label without a frame", "cp " LABS "/000001.png " LABS "/000009.png", "rm " LABS "/000009.png", "000009.png"},
        {"label of the wrong size", "cp " LABS "/000002.png " TMP "/k_saved.png && cp data/demo_labels/frame000001.png " LABS "/000002.png",
         "mv " TMP "/k_saved.png " LABS "/000002.png", "000002.png"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        run(bad[i].setup);
        run("rm -rf " TMP "/kitti_bad");
        snprintf(args, sizeof(args), "%s %s --mode fixed --out " TMP "/kitti_bad", SEQ, common);
        rc = stream(args);
        log = read_text(TMP "/kitti_log.txt");
        int lines = 0;
        for (const char* p = log; *p; p++) lines += *p == '\n';
        CHECK(rc == 1 && strncmp(log, "error:", 6) == 0 && lines == 1 && strstr(log, bad[i].needle),
              "%s: exit %d, log:\n%s", bad[i].name, rc, log);
        CHECK(access(TMP "/kitti_bad", F_OK) != 0, "%s: output written", bad[i].name);
        printf("%-4s bad input: %s -> %s", rc == 1 ? "ok" : "FAIL", bad[i].name, log);
        free(log);
        run(bad[i].undo);
    }
    {   // an id outside the 19 classes (R = 30) in one label
        float* rgb = mallocCheck((size_t)FH * FW * 3 * sizeof(float));
        for (int i = 0; i < FH * FW * 3; i++) rgb[i] = (i % 3 == 0) ? 30 / 255.0f : 0.0f;
        run("cp " LABS "/000004.png " TMP "/k_saved.png");
        image_save_png(LABS "/000004.png", rgb, FH, FW);
        run("rm -rf " TMP "/kitti_bad");
        snprintf(args, sizeof(args), "%s %s --mode fixed --out " TMP "/kitti_bad", SEQ, common);
        rc = stream(args);
        log = read_text(TMP "/kitti_log.txt");
        CHECK(rc == 1 && strstr(log, "error:") && strstr(log, "000004.png") && strstr(log, "30"),
              "id out of range: exit %d, log:\n%s", rc, log);
        CHECK(access(TMP "/kitti_bad", F_OK) != 0, "id out of range: output written");
        printf("%-4s bad input: id 30 -> %s", rc == 1 ? "ok" : "FAIL", log);
        free(log); free(rgb);
        run("mv " TMP "/k_saved.png " LABS "/000004.png");
    }
    {   // a 16-bit label PNG in a plain folder (DIR_labels): refused, not cut to 8 bits
        run("rm -rf " TMP "/k16 " TMP "/k16_labels " TMP "/kitti_bad && mkdir -p " TMP "/k16 " TMP "/k16_labels && cp " SEQ "/000000.png " TMP "/k16/");
        write_png16(TMP "/k16_labels/000000.png", FH, FW, 3);
        rc = stream(TMP "/k16 --model " MODEL " --device cpu --mode fixed --out " TMP "/kitti_bad");
        log = read_text(TMP "/kitti_log.txt");
        CHECK(rc == 1 && strncmp(log, "error:", 6) == 0 && strstr(log, "k16_labels/000000.png") && strstr(log, "16-bit"),
              "16-bit label: exit %d, log:\n%s", rc, log);
        CHECK(access(TMP "/kitti_bad", F_OK) != 0, "16-bit label: output written");
        printf("%-4s bad input: 16-bit label -> %s", rc == 1 ? "ok" : "FAIL", log);
        free(log);
    }
    {   // 4. dev/reproduce_kitti.sh over the fixture (only val/0002 exists: the others are noted
        // as missing) at small sizes: rows run and the table prints their frame-weighted scores
        int rc4 = run("ROWS='fixed tent online' sh dev/reproduce_kitti.sh " ROOT " " MODEL " " TMP "/kitti_repro "
                      "--device cpu --resize-short 48 --max-long 96 --crop 64x32 --batch 2 >" TMP "/kitti_repro.txt 2>" TMP "/kitti_repro_err.txt");
        char* table = read_text(TMP "/kitti_repro.txt");
        char* err = read_text(TMP "/kitti_repro_err.txt");
        char* res = read_text(TMP "/kitti_repro/results.txt");
        CHECK(rc4 == 0, "reproduce_kitti.sh exited %d:\n%s%s", rc4, err, table);
        CHECK(count_lines_with(res, "RESULT ") == 3, "results.txt should hold 3 runs:\n%s", res);
        CHECK(strstr(res, "tent val 0002") && strstr(res, "mode=tent"), "the Tent row did not run --mode tent:\n%s", res);
        const char* fixed_row = strstr(table, "MAE Joint Training");
        const char* online_row = strstr(table, "Online TTT-MAE   ");
        CHECK(fixed_row && online_row, "table rows missing:\n%s", table);
        // the fixed row's val score is this test's fixed-mode video mIoU of all 5 frames, in %
        double want = NAN;
        {
            const char* p = strstr(res, "fixed val 0002");
            const char* q = p ? strstr(p, "video_miou=") : NULL;
            if (q) want = 100.0 * strtod(q + 11, NULL);
        }
        double got = fixed_row ? strtod(fixed_row + strlen("MAE Joint Training"), NULL) : NAN;
        printf("%-4s reproduce_kitti.sh: fixed row val %.1f (video mIoU x 100 = %.2f)\n",
               fabs(got - want) < 0.051 ? "ok" : "FAIL", got, want);
        CHECK(fabs(got - want) < 0.051, "table shows %g, the run's score is %g", got, want);
        CHECK(strstr(err, "0006 is missing") != NULL, "missing sequences are not noted");
        free(table); free(err); free(res);
    }
    return test_summary("test_kitti");
}
