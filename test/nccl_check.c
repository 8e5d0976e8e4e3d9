// test/nccl_check.c: the data-parallel checks on a machine with two (or more) GPUs and NCCL
// (make test-nccl; the CPU suite covers the rest in test_dist.c). Matrix products in float32
// (TTT_TF32=0) so that N = 2 and N = 1 agree to float summation order.
//   ./test/nccl_check          the whole list below (uses ./train, ./stream, ./gen)
//   ./test/nccl_check --ranks  part 1 alone (2 ranks)
// 1. Steps (this program as 2 ranks): 3 joint training steps (drop-path, point-sampled set
//    loss) and 3 TTT steps (paper recipe: clipping, drop-path) on 2 x 4 images equal one GPU
//    running the same 8 images in chunks of 4; a TTT step of 5 images (chunks 3 | 2) equals one
//    GPU's; the weights are bitwise equal on both ranks after every phase; step times.
// 2. ./train --gpus 2 equals ./train --gpus 1 with the same --micro-batch (checkpoints).
// 3. Resume across N: 3 steps on 2 GPUs, resumed on 1 to the end, equals the uninterrupted run;
//    likewise 1 -> 2.
// 4. A batch not divisible by N: --batch 5 --gpus 2 (chunks 3 | 2) equals --gpus 1 --micro-batch 3.
// 5. ./stream --gpus 2 vs --gpus 1: per-frame TTT losses and the video mIoU agree, the same
//    output files, written once.
// 6. Launcher path (TTT_WORLD / TTT_RANK / TTT_NCCL_ID_FILE, as under mpirun): equals --gpus 2.
// 7. Failures: rank 1 killed during training (TTT_DIST_FAULT) -> exit 1 within 30 s naming it;
//    the same under the launcher path (no supervisor) -> rank 0 exits by the NCCL timeout
//    (TTT_NCCL_TIMEOUT=20) with a message; --gpus more than the GPUs -> one error line.
#include "test.h"
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define T "test/tmp/nccl"

// ----------------------------------------------------------------------------
// part 1: this program as 2 ranks

enum { K = 8, H = 96, W = 128 };

static void fill_batch(float* images, unsigned char* labels, int B, uint64_t seed) {
    Rng rng; rng_seed(&rng, seed);
    rng_fill_uniform(&rng, images, (size_t)B * H * W * 3, 0.0f, 1.0f);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < H * W; i++) labels[(size_t)b * H * W + i] = (unsigned char)((i / W / 16 + b + i % W / 24) % K);
}

static Model* make_model(int max_B) {
    ModelConfig cfg = model_config_default(K);
    Model* m = model_create(&cfg, max_B, H, W);
    model_init_random(m, 7);
    ModelRecipe r = model_recipe_paper();   // drop-path 0.3, clipping 0.01, groups
    model_set_recipe(m, &r);
    SetLossConfig sl = set_loss_config_default();
    sl.num_points = 256;   // fewer than the 24 x 32 mask maps: point draws (per-chunk seeds)
    model_set_loss_config(m, &sl);
    return m;
}

typedef struct { float train[3][2], ttt[3], ttt5; double ms_train, ms_ttt; } Record;

// the same calls on every rank and in the one-GPU reference
static void run_phases(Model* m, Model* m5, const float* images, const unsigned char* labels, Record* rec, int dp) {
    OptConfig opt = opt_config_ttt();
    opt.lr = 1e-3f;
    Rng rng; rng_seed(&rng, 5);
    double t0 = time_now_seconds();
    for (int s = 0; s < 3; s++) model_train_step(m, images, labels, 8, &opt, 1.0f, &rng, &rec->train[s][0], &rec->train[s][1]);
    ttt_synchronize();
    rec->ms_train = (time_now_seconds() - t0) / 3 * 1e3;
    if (dp) dist_check_same_weights(m, "after 3 training steps");
    model_restart_optimizer(m);
    opt = opt_config_ttt();
    t0 = time_now_seconds();
    for (int s = 0; s < 3; s++) rec->ttt[s] = model_ttt_step(m, images, 8, &opt, &rng);
    ttt_synchronize();
    rec->ms_ttt = (time_now_seconds() - t0) / 3 * 1e3;
    if (dp) dist_check_same_weights(m, "after 3 TTT steps");
    rec->ttt5 = model_ttt_step(m5, images, 5, &opt, &rng);   // 5 images: chunks 3 | 2 on 2 ranks
    if (dp) dist_check_same_weights(m5, "after a TTT step of 5 images");
}

static int ranks_main(void) {
    setenv("TTT_TF32", "0", 1);   // float32 matrix products
    dist_launch(2, "cuda");
    ttt_set_device(DEVICE_CUDA);
    float* images = (float*)mallocCheck((size_t)8 * H * W * 3 * sizeof(float));
    unsigned char* labels = (unsigned char*)mallocCheck((size_t)8 * H * W);
    fill_batch(images, labels, 8, 11);
    Model* m = make_model(4);
    Model* m5 = make_model(3);
    dist_attach(m);
    dist_attach(m5);
    Record dp;
    run_phases(m, m5, images, labels, &dp, 1);
    if (!is_main_rank()) return 0;   // rank 1 is done; rank 0 runs the one-GPU reference
    float* p_dp = model_params_host(m);
    float* p5_dp = model_params_host(m5);
    Model* r = make_model(4);   // the same chunks of 4, one after the other
    Model* r5 = make_model(5);  // the TTT step of 5 as one batch
    Record ref;
    run_phases(r, r5, images, labels, &ref, 0);
    float* p_ref = model_params_host(r);
    float* p5_ref = model_params_host(r5);
    size_t n = model_num_params(m, 0) + model_num_params(m, 1) + model_num_params(m, 2);
    printf("steps: training 2 GPUs %.1f ms (1 GPU %.1f ms), TTT step of 8 images 2 GPUs %.1f ms (1 GPU %.1f ms)\n",
           dp.ms_train, ref.ms_train, dp.ms_ttt, ref.ms_ttt);
    // The first step's losses come from the same weights and the same draws: float summation
    // order only. Later ones follow AdamW updates, where a gradient near 0 whose sign differs by
    // rounding moves its weight by 2 lr: looser (a wrong draw or chunk weight shows as 1e-2).
    for (int s = 0; s < 3; s++) {
        char name[96];
        snprintf(name, sizeof(name), "training step %d losses, 2 GPUs vs 1", s + 1);
        check_close(name, dp.train[s], ref.train[s], 2, s == 0 ? 1e-5 : 1e-3);
        snprintf(name, sizeof(name), "TTT step %d loss, 2 GPUs vs 1", s + 1);
        check_close(name, &dp.ttt[s], &ref.ttt[s], 1, 1e-3);
    }
    check_close("TTT step of 5 images (chunks 3 | 2) loss vs 1 GPU", &dp.ttt5, &ref.ttt5, 1, 1e-3);
    check_l2("weights after training + TTT, 2 GPUs vs 1", p_dp, p_ref, n, 1e-3);
    check_l2("weights after the TTT step of 5, 2 GPUs vs 1", p5_dp, p5_ref, n, 1e-3);
    free(p_dp); free(p5_dp); free(p_ref); free(p5_ref); free(images); free(labels);
    model_free(m); model_free(m5); model_free(r); model_free(r5);
    return test_summary("nccl_check --ranks");
}

// ----------------------------------------------------------------------------
// parts 2-7: the programs

// rel L2 distance of the float data of two checkpoint files (model or optimizer state) whose
// headers are equal; -1 if either cannot be read or the headers or sizes differ
static double ckpt_distance(const char* a, const char* b) {
    FILE* fa = fopen(a, "rb");
    FILE* fb = fopen(b, "rb");
    double d = -1.0;
    if (fa && fb) {
        fseek(fa, 0, SEEK_END); fseek(fb, 0, SEEK_END);
        long na = ftell(fa), nb = ftell(fb);
        long hb = CKPT_HEADER_INTS * (long)sizeof(int);
        if (na == nb && na > hb) {
            rewind(fa); rewind(fb);
            char* ba = (char*)mallocCheck(na);
            char* bb = (char*)mallocCheck(nb);
            if (fread(ba, 1, na, fa) == (size_t)na && fread(bb, 1, nb, fb) == (size_t)nb && !memcmp(ba, bb, hb))
                d = l2_rel_error((const float*)(bb + hb), (const float*)(ba + hb), (size_t)(na - hb) / sizeof(float));
            free(ba); free(bb);
        }
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return d;
}

static void check_ckpt(const char* what, const char* a, const char* b, double tol) {
    double d = ckpt_distance(a, b);
    int ok = d >= 0.0 && d <= tol;
    printf("%-4s %-60s rel L2 %.3e (tol %.0e)%s\n", ok ? "ok" : "FAIL", what, d, tol, d == 0.0 ? " bitwise equal" : "");
    if (ok) tests_passed++; else tests_failed++;
}

// the per-frame "loss X" values and the RESULT line's video_miou of a stream log
static int stream_log(const char* path, float* loss, int max, double* miou) {
    FILE* fp = fopen(path, "r");
    if (fp == NULL) return 0;
    char line[2048];
    int n = 0;
    *miou = NAN;
    while (fgets(line, sizeof(line), fp)) {
        char* p = strstr(line, " loss ");
        if (!strncmp(line, "frame ", 6) && p && n < max && sscanf(p, " loss %f", &loss[n]) == 1) n++;
        p = strstr(line, "video_miou=");
        if (!strncmp(line, "RESULT ", 7) && p) sscanf(p, "video_miou=%lf", miou);
    }
    fclose(fp);
    return n;
}

static void programs(int n_gpus) {
    char cmd[4096];
    CHECK(run("./gen stills " T "/data --n 16 --size 128x96 --seed 3 > /dev/null && "
              "./gen video " T "/video --labels " T "/video_labels --frames 8 --size 128x96 --seed 4 > /dev/null") == 0,
          "./gen failed");
    const char* common = "--data " T "/data --size default --classes 8 --crop 128x96 --lr 1e-3 --warmup 0 --steps 6 "
                         "--save-every 0 --seed 4 --drop-path 0.3 --device cuda";
    // 2. N = 2 vs N = 1 with the same micro-batch
    snprintf(cmd, sizeof(cmd), "./train %s --batch 4 --micro-batch 2 --out " T "/g1.bin --gpus 1 > " T "/g1.log 2>&1", common);
    CHECK(run(cmd) == 0, "./train --gpus 1 failed (" T "/g1.log)");
    snprintf(cmd, sizeof(cmd), "./train %s --batch 4 --micro-batch 2 --out " T "/g2.bin --gpus 2 > " T "/g2.log 2>&1", common);
    CHECK(run(cmd) == 0, "./train --gpus 2 failed (" T "/g2.log)");
    char* log = read_text(T "/g2.log");
    CHECK(strstr(log, "dist: weights identical on all 2 ranks at the end") != NULL, "./train --gpus 2: no end-of-run weight check in the log");
    free(log);
    check_ckpt("./train --gpus 2 vs --gpus 1 (micro-batch 2), 6 steps", T "/g2.bin", T "/g1.bin", 1e-3);
    check_ckpt("  optimizer state", T "/g2.bin.opt", T "/g1.bin.opt", 1e-3);
    // 3. resume across N
    snprintf(cmd, sizeof(cmd), "./train %s --batch 4 --micro-batch 2 --out " T "/r21.bin --gpus 2 --stop-after 3 > " T "/r21a.log 2>&1 && "
             "./train %s --batch 4 --micro-batch 2 --out " T "/r21.bin --gpus 1 --resume > " T "/r21b.log 2>&1", common, common);
    CHECK(run(cmd) == 0, "resume 2 -> 1 failed (" T "/r21*.log)");
    check_ckpt("3 steps on 2 GPUs, resumed on 1 vs uninterrupted", T "/r21.bin", T "/g1.bin", 1e-3);
    snprintf(cmd, sizeof(cmd), "./train %s --batch 4 --micro-batch 2 --out " T "/r12.bin --gpus 1 --stop-after 3 > " T "/r12a.log 2>&1 && "
             "./train %s --batch 4 --micro-batch 2 --out " T "/r12.bin --gpus 2 --resume > " T "/r12b.log 2>&1", common, common);
    CHECK(run(cmd) == 0, "resume 1 -> 2 failed (" T "/r12*.log)");
    check_ckpt("3 steps on 1 GPU, resumed on 2 vs uninterrupted", T "/r12.bin", T "/g2.bin", 1e-3);
    // 4. a batch not divisible by N
    snprintf(cmd, sizeof(cmd), "./train %s --batch 5 --out " T "/o2.bin --gpus 2 > " T "/o2.log 2>&1 && "
             "./train %s --batch 5 --micro-batch 3 --out " T "/o1.bin --gpus 1 > " T "/o1.log 2>&1", common, common);
    CHECK(run(cmd) == 0, "--batch 5 runs failed (" T "/o*.log)");
    check_ckpt("--batch 5 --gpus 2 (chunks 3 | 2) vs --gpus 1 --micro-batch 3", T "/o2.bin", T "/o1.bin", 1e-3);
    // 5. ./stream
    const char* sargs = T "/video --labels " T "/video_labels --model " T "/g1.bin --batch 4 --steps 2 --drop-path 0.3 --device cuda";
    snprintf(cmd, sizeof(cmd), "./stream %s --out " T "/s1 --gpus 1 > " T "/s1.log 2>&1 && ./stream %s --out " T "/s2 --gpus 2 > " T "/s2.log 2>&1 && "
             "ls " T "/s1 > " T "/s1.ls && ls " T "/s2 > " T "/s2.ls && cmp -s " T "/s1.ls " T "/s2.ls", sargs, sargs);
    CHECK(run(cmd) == 0, "./stream --gpus 1 / 2 failed or wrote different files (" T "/s*.log, s*.ls)");
    float l1[16], l2[16];
    double mi1, mi2;
    int n1 = stream_log(T "/s1.log", l1, 16, &mi1), n2 = stream_log(T "/s2.log", l2, 16, &mi2);
    CHECK(n1 == 8 && n2 == 8, "stream logs: %d and %d frame lines", n1, n2);
    if (n1 == 8 && n2 == 8) check_close("./stream --gpus 2 vs 1: per-frame TTT losses", l2, l1, 8, 2e-3);
    CHECK(fabs(mi1 - mi2) <= 5e-3, "./stream video mIoU: 2 GPUs %.6f, 1 GPU %.6f", mi2, mi1);
    printf("     ./stream video mIoU: 1 GPU %.6f, 2 GPUs %.6f\n", mi1, mi2);
    // 6. the launcher path, as mpirun would start it
    snprintf(cmd, sizeof(cmd), "export TTT_WORLD=2 TTT_NCCL_ID_FILE=" T "/nccl.id TTT_RUN_ID=check$$; "
             "TTT_RANK=1 TTT_LOCAL_RANK=1 ./train %s --batch 4 --micro-batch 2 --out " T "/e.bin > " T "/e1.log 2>&1 & "
             "TTT_RANK=0 TTT_LOCAL_RANK=0 ./train %s --batch 4 --micro-batch 2 --out " T "/e.bin > " T "/e0.log 2>&1; r0=$?; "
             "wait $!; r1=$?; [ $r0 -eq 0 ] && [ $r1 -eq 0 ]", common, common);
    CHECK(run(cmd) == 0, "launcher path (TTT_WORLD=2) failed (" T "/e0.log, e1.log)");
    check_ckpt("launcher path (TTT_RANK/TTT_WORLD) vs --gpus 2", T "/e.bin", T "/g2.bin", 1e-3);
    CHECK(access(T "/nccl.id", F_OK) != 0, "the NCCL id file was left behind");
    // 7. failures
    double t0 = time_now_seconds();
    snprintf(cmd, sizeof(cmd), "TTT_DIST_FAULT=1:3 ./train %s --batch 4 --out " T "/k.bin --gpus 2 > " T "/k.log 2> " T "/k.err", common);
    int rc = run(cmd);
    double t = time_now_seconds() - t0;
    char* err = read_text(T "/k.err");
    CHECK(rc == 1 && t < 30.0 && strstr(err, "error: rank 1 of 2 (GPU 1) was killed by signal 9"),
          "rank 1 killed: exit %d after %.1f s, stderr: %s", rc, t, err);
    printf("     rank 1 killed at its 3rd all-reduce: exit %d after %.1f s:\n%s", rc, t, err);
    free(err);
    t0 = time_now_seconds();
    snprintf(cmd, sizeof(cmd), "export TTT_WORLD=2 TTT_NCCL_ID_FILE=" T "/nccl2.id TTT_RUN_ID=fault$$ TTT_NCCL_TIMEOUT=20 TTT_DIST_FAULT=1:3; "
             "TTT_RANK=1 ./train %s --batch 4 --out " T "/k2.bin > " T "/k21.log 2>&1 & "
             "TTT_RANK=0 ./train %s --batch 4 --out " T "/k2.bin > " T "/k20.log 2> " T "/k20.err; r0=$?; wait; exit $r0", common, common);
    rc = run(cmd);
    t = time_now_seconds() - t0;
    err = read_text(T "/k20.err");
    CHECK(rc == 1 && t < 90.0 && strstr(err, "error: rank 0") != NULL,
          "launcher path, rank 1 killed: rank 0 exit %d after %.1f s, stderr: %s", rc, t, err);
    printf("     launcher path, rank 1 killed: rank 0 exit %d after %.1f s (TTT_NCCL_TIMEOUT=20):\n%s", rc, t, err);
    free(err);
    snprintf(cmd, sizeof(cmd), "./train %s --batch 4 --out " T "/x.bin --gpus %d > /dev/null 2> " T "/x.err", common, n_gpus + 1);
    rc = run(cmd);
    err = read_text(T "/x.err");
    char want[96];
    snprintf(want, sizeof(want), "error: --gpus %d: only %d CUDA GPU(s) visible", n_gpus + 1, n_gpus);
    CHECK(rc == 1 && strstr(err, want) == err && strchr(err, '\n') == err + strlen(err) - 1,
          "--gpus %d on %d GPUs: exit %d, stderr: %s", n_gpus + 1, n_gpus, rc, err);
    printf("     --gpus %d: %s", n_gpus + 1, err);
    free(err);
}

int main(int argc, char** argv) {
    if (argc > 1 && !strcmp(argv[1], "--ranks")) return ranks_main();
    if (!dist_nccl_built()) { printf("this build has no NCCL: skipped\n"); return test_summary("nccl_check"); }
    setenv("NCCL_NVLS_ENABLE", "0", 1);
    setenv("TTT_TF32", "0", 1);   // float32 products in every program run below
    int n_gpus = 0;
#ifdef TTT_CUDA
    n_gpus = ttt_cuda_device_count();
#endif
    if (n_gpus < 2) { printf("%d GPU(s): the checks need 2; skipped\n", n_gpus); return test_summary("nccl_check"); }
    if (fresh_dir(T) != 0) return 1;
    // part 1 in its own processes (the ranks must start before any CUDA call)
    int rc = run("./test/nccl_check --ranks > " T "/ranks.log 2>&1");
    char* text = read_text(T "/ranks.log");
    printf("%s", text);
    int p = 0, f = 0;
    char* line = strstr(text, "nccl_check --ranks: ");
    CHECK(rc == 0 && line && sscanf(line, "nccl_check --ranks: %d passed, %d failed", &p, &f) == 2 && f == 0 && p > 0,
          "part 1 (2 ranks): exit %d", rc);
    tests_passed += p; tests_failed += f;
    free(text);
    programs(n_gpus);
    return test_summary("nccl_check");
}
