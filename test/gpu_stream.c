// test/gpu_stream.c: ./stream end to end on the GPU against the CPU, with the default
// model config (random weights) on a short generated video: fixed-mode predictions
// agree, online TTT losses agree, and the per-frame times of both are printed.
#include "test.h"
#include <sys/wait.h>
#include <unistd.h>

#define TMP "test/tmp"
#define VID TMP "/gs_video"
#define MODEL TMP "/gs_default.bin"
#define NF 6
#define FW 128
#define FH 96

// the "loss X" of every progress line of a stream log
static int read_losses(const char* path, float* loss) {
    FILE* fp = fopen(path, "r");
    if (fp == NULL) return 0;
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof(line), fp) && n < NF) {
        char* p = strstr(line, " loss ");
        if (strncmp(line, "frame ", 6) == 0 && p && sscanf(p, " loss %f", &loss[n]) == 1) n++;
    }
    fclose(fp);
    return n;
}

// the "summary: ... X ms/frame" of a stream log
static double read_ms(const char* path) {
    FILE* fp = fopen(path, "r");
    if (fp == NULL) return NAN;
    char line[1024];
    double ms = NAN;
    while (fgets(line, sizeof(line), fp)) {
        char* p = strstr(line, "without the first frame ");
        if (p) sscanf(p, "without the first frame %lf", &ms);
    }
    fclose(fp);
    return ms;
}

int main(void) {
    if (!ttt_cuda_available()) { printf("no CUDA GPU: skipped\n"); return test_summary("gpu_stream"); }
    if (run("mkdir -p " TMP " && rm -rf " TMP "/gs_*") != 0) return 1;
    CHECK(run("./gen video " VID " --frames 6 --size 128x96 --seed 4 >/dev/null") == 0, "gen failed");
    ModelConfig cfg = model_config_default(8);
    Model* m = model_create(&cfg, 4, FH, FW);
    model_init_random(m, 3);
    model_save(m, MODEL);
    model_free(m);

    const char* dev[2] = {"cpu", "cuda"};
    for (int d = 0; d < 2; d++) {
        char cmd[1024];
        // float32 products on the GPU for the pixel agreement (a random model's class scores are
        // close: TF32 rounding alone flips about 2% of the pixels)
        snprintf(cmd, sizeof(cmd), "TTT_PRECISION=fp32 ./stream " VID " --model " MODEL " --device %s --mode fixed --out " TMP "/gs_fixed_%s > " TMP "/gs_fixed_%s.log 2>&1", dev[d], dev[d], dev[d]);
        CHECK(run(cmd) == 0, "fixed run on %s failed", dev[d]);
        snprintf(cmd, sizeof(cmd), "./stream " VID " --model " MODEL " --device %s --mode online --window 4 --batch 4 --out " TMP "/gs_online_%s > " TMP "/gs_online_%s.log 2>&1", dev[d], dev[d], dev[d]);
        CHECK(run(cmd) == 0, "online run on %s failed", dev[d]);
    }

    // fixed-mode predictions: fraction of pixels with the same class
    long long same = 0, total = 0;
    for (int t = 1; t <= NF; t++) {
        char a[256], b[256];
        int H, W;
        snprintf(a, sizeof(a), TMP "/gs_fixed_cpu/frame%06d.png", t);
        snprintf(b, sizeof(b), TMP "/gs_fixed_cuda/frame%06d.png", t);
        unsigned char* pa = label_load(a, FH, FW, &H, &W);
        unsigned char* pb = label_load(b, FH, FW, &H, &W);
        for (int i = 0; i < H * W; i++) same += pa[i] == pb[i];
        total += H * W;
        free(pa); free(pb);
    }
    double agree = (double)same / total;
    printf("%-4s fixed-mode predictions cuda (fp32) vs cpu agree on %.4f of pixels (tol 0.995)\n", agree >= 0.995 ? "ok" : "FAIL", agree);
    if (agree >= 0.995) tests_passed++; else tests_failed++;

    // online TTT losses frame by frame
    float lc[NF], lg[NF];
    int nc = read_losses(TMP "/gs_online_cpu.log", lc), ng = read_losses(TMP "/gs_online_cuda.log", lg);
    CHECK(nc == NF && ng == NF, "missing loss lines (%d cpu, %d cuda)", nc, ng);
    if (nc == NF && ng == NF) check_close("online TTT loss per frame, cuda vs cpu", lg, lc, NF, 1e-2);

    printf("ms/frame (without the first) fixed: cpu %.1f cuda %.1f; online k=4 B=4: cpu %.1f cuda %.1f\n",
           read_ms(TMP "/gs_fixed_cpu.log"), read_ms(TMP "/gs_fixed_cuda.log"),
           read_ms(TMP "/gs_online_cpu.log"), read_ms(TMP "/gs_online_cuda.log"));
    return test_summary("gpu_stream");
}
