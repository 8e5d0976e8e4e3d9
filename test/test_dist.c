// test/test_dist.c: data parallelism (ttt.h, DATA PARALLEL) on the CPU, without NCCL.
// 1. Ranks in one process: models of the same seed, each made rank r of N with no transport,
//    run a gradient step on the same batch; their gradients and losses summed by hand equal
//    the one-process step (TTT: any chunking; joint training: the same micro-batch size), with
//    drop-path and set-loss point sampling on, with a batch not divisible by N and with a rank
//    that gets no chunk; every rank's rng ends where the one process's does.
// 2. Ranks as processes (dist_spawn, a shared-memory sum standing in for NCCL): two joint
//    training steps and a TTT step end with bitwise equal weights on both ranks and the
//    one-process weights; a NaN in one rank's chunk makes every rank skip the update.
// 3. The supervisor: a rank that fails (exit status, killed) stops the others within bounded
//    time with a message naming it; a bad input that stops every rank prints rank 0's one line;
//    all ranks exiting 0 exit 0.
// 4. ./train --gpus 2 and ./stream --gpus 2 here (no GPU, maybe no NCCL): one clear error line.
// The multi-process parts run first: libgomp must not have started its threads before a fork.
#include "test.h"
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TMP "test/tmp/dist"

static size_t n_params(const Model* m) { return model_num_params(m, 0) + model_num_params(m, 1) + model_num_params(m, 2); }

// the test batch: frames without padding (32 x 64) and labels holding every class in every image
enum { K = 3, H = 32, W = 64, BMAX = 6 };
static float* make_images(int B, uint64_t seed) {
    Rng rng; rng_seed(&rng, seed);
    float* x = (float*)mallocCheck((size_t)B * H * W * 3 * sizeof(float));
    rng_fill_uniform(&rng, x, (size_t)B * H * W * 3, 0.0f, 1.0f);
    return x;
}
static unsigned char* make_labels(int B) {
    unsigned char* l = (unsigned char*)mallocCheck((size_t)B * H * W);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < H * W; i++) l[(size_t)b * H * W + i] = (unsigned char)((i / W + b * 3 + i % W / 13) % K);
    return l;
}

// a model as every rank makes it: same config, seed, recipe and set-loss settings
static Model* make_model(int max_B, int paper) {
    ModelConfig cfg = model_config_tiny(K);
    Model* m = model_create(&cfg, max_B, H, W);
    model_init_random(m, 8);
    if (paper) {   // drop-path 0.3, all-pixels MAE loss, clipping, parameter groups
        ModelRecipe r = model_recipe_paper();
        model_set_recipe(m, &r);
    }
    SetLossConfig sl = set_loss_config_default();
    sl.num_points = 16;   // fewer points than the 8 x 16 mask maps: random point draws
    model_set_loss_config(m, &sl);
    return m;
}

// ----------------------------------------------------------------------------
// 2. ranks as processes

// DataParallelSum over shared memory: each rank packs its arrays into its slot; after a
// barrier every rank adds the slots in rank order (bitwise the same sums everywhere)
typedef struct {
    pthread_barrier_t barrier;
    int world, rank_of_caller_unused;
    size_t cap;             // floats per rank slot
    size_t result_floats;   // per rank result area
    float data[];           // world slots of cap, then world result areas
} Shared;
static int my_rank = 0;

static void shared_sum(float* const* bufs, const size_t* counts, int n_bufs, void* ctx) {
    Shared* s = (Shared*)ctx;
    size_t total = 0;
    for (int i = 0; i < n_bufs; i++) total += counts[i];
    if (total > s->cap) ttt_die("shared_sum: %zu floats, room for %zu", total, s->cap);
    float* mine = s->data + (size_t)my_rank * s->cap;
    for (int i = 0, k = 0; i < n_bufs; i++) { memcpy(mine + k, bufs[i], counts[i] * sizeof(float)); k += (int)counts[i]; }
    pthread_barrier_wait(&s->barrier);
    size_t k = 0;
    for (int i = 0; i < n_bufs; i++)
        for (size_t j = 0; j < counts[i]; j++, k++) {
            float v = 0.0f;
            for (int r = 0; r < s->world; r++) v += s->data[(size_t)r * s->cap + k];
            bufs[i][j] = v;
        }
    pthread_barrier_wait(&s->barrier);   // nobody refills a slot before everyone has read it
}

// what a rank records: per step the losses, then params, rng state, AdamW step
enum { STEPS = 5 };   // train, train, ttt, train with a NaN image, ttt with a NaN frame
typedef struct { float loss[STEPS][2]; uint64_t rng_state; int adam_t[STEPS]; uint64_t hash_before_nan, hash_after_nan[2]; } RankRecord;

// the steps, the same in every rank and in the one-process reference; frames (B) have a NaN in
// image nan_image for the last two steps
static void run_steps(Model* m, float* images, const unsigned char* labels, int B, int nan_image, RankRecord* rec) {
    Rng rng; rng_seed(&rng, 3);
    OptConfig opt = opt_config_ttt();
    opt.lr = 1e-3f;
    for (int s = 0; s < 2; s++) {
        model_train_step(m, images, labels, B, &opt, 1.0f, &rng, &rec->loss[s][0], &rec->loss[s][1]);
        rec->adam_t[s] = model_adam_step(m);
    }
    model_restart_optimizer(m);
    rec->loss[2][0] = model_ttt_step(m, images, B, &opt, &rng);
    rec->loss[2][1] = 0.0f;
    rec->adam_t[2] = model_adam_step(m);
    rec->rng_state = rng.state;
    rec->hash_before_nan = model_param_hash(m, 0) ^ model_param_hash(m, 1) ^ model_param_hash(m, 2);
    float keep = images[(size_t)nan_image * H * W * 3 + 5];
    images[(size_t)nan_image * H * W * 3 + 5] = NAN;
    model_train_step(m, images, labels, B, &opt, 1.0f, &rng, &rec->loss[3][0], &rec->loss[3][1]);
    rec->adam_t[3] = model_adam_step(m);
    rec->hash_after_nan[0] = model_param_hash(m, 0) ^ model_param_hash(m, 1) ^ model_param_hash(m, 2);
    rec->loss[4][0] = model_ttt_step(m, images, B, &opt, &rng);
    rec->loss[4][1] = 0.0f;
    rec->adam_t[4] = model_adam_step(m);
    rec->hash_after_nan[1] = model_param_hash(m, 0) ^ model_param_hash(m, 1) ^ model_param_hash(m, 2);
    images[(size_t)nan_image * H * W * 3 + 5] = keep;
}

// Shared region layout: header, world slots of cap floats, then per rank: RankRecord + params
static Shared* shared_create(int world, size_t cap, size_t result_floats, size_t* bytes) {
    *bytes = sizeof(Shared) + ((size_t)world * cap + (size_t)world * result_floats) * sizeof(float);
    Shared* s = (Shared*)mmap(NULL, *bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED) ttt_die("mmap of %zu bytes failed", *bytes);
    pthread_barrierattr_t attr;
    pthread_barrierattr_init(&attr);
    pthread_barrierattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_barrier_init(&s->barrier, &attr, world);
    s->world = world; s->cap = cap; s->result_floats = result_floats;
    return s;
}
static float* result_area(Shared* s, int r) { return s->data + (size_t)s->world * s->cap + (size_t)r * s->result_floats; }

// runs the steps as `world` processes (chunks of micro images); returns the shared results
static Shared* run_ranks(int world, int micro, int B, int nan_image, size_t n, size_t* bytes) {
    size_t rec_floats = (sizeof(RankRecord) + sizeof(float) - 1) / sizeof(float);
    Shared* s = shared_create(world, n + 8, rec_floats + n, bytes);
    fflush(NULL);
    pid_t p = fork();
    if (p == 0) {   // the launcher: dist_spawn makes the ranks and supervises them
        int r = dist_spawn(world);
        my_rank = r;
        Model* m = make_model(micro, 1);
        model_set_data_parallel(m, r, world, shared_sum, s);
        float* images = make_images(B, 11);
        unsigned char* labels = make_labels(B);
        RankRecord rec;
        memset(&rec, 0, sizeof(rec));
        run_steps(m, images, labels, B, nan_image, &rec);
        float* area = result_area(s, r);
        memcpy(area, &rec, sizeof(rec));
        float* params = model_params_host(m);
        memcpy(area + rec_floats, params, n * sizeof(float));
        free(params); free(images); free(labels);
        model_free(m);
        exit(0);
    }
    int status;
    waitpid(p, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the %d rank processes failed (status %d)", world, status);
    return s;
}

static void test_processes(Shared** out_s, size_t* out_bytes, size_t n) {
    // world 2, batch 4 in chunks of 2 (rank 0: images 0-1, rank 1: images 2-3); the NaN is in
    // image 3 (rank 1's chunk only)
    *out_s = run_ranks(2, 2, 4, 3, n, out_bytes);
}

static void check_processes(Shared* s, size_t n) {
    size_t rec_floats = (sizeof(RankRecord) + sizeof(float) - 1) / sizeof(float);
    RankRecord rec[2];
    memcpy(&rec[0], result_area(s, 0), sizeof(RankRecord));
    memcpy(&rec[1], result_area(s, 1), sizeof(RankRecord));
    const float* p0 = result_area(s, 0) + rec_floats;
    const float* p1 = result_area(s, 1) + rec_floats;
    // the one-process reference: chunks of 2 as well
    Model* m = make_model(2, 1);
    float* images = make_images(4, 11);
    unsigned char* labels = make_labels(4);
    RankRecord ref;
    memset(&ref, 0, sizeof(ref));
    run_steps(m, images, labels, 4, 3, &ref);
    float* pr = model_params_host(m);
    CHECK(memcmp(p0, p1, n * sizeof(float)) == 0, "processes: the two ranks' weights differ after the steps");
    printf("%-4s processes: both ranks' weights bitwise equal after 2 training steps and a TTT step\n",
           memcmp(p0, p1, n * sizeof(float)) == 0 ? "ok" : "FAIL");
    check_l2("processes: weights of 2 ranks vs one process", p0, pr, n, 1e-5);
    for (int st = 0; st < 3; st++) {
        char name[96];
        snprintf(name, sizeof(name), "processes: step %d losses (rank 0 vs one process)", st + 1);
        check_close(name, rec[0].loss[st], ref.loss[st], 2, 1e-5);
        CHECK(rec[0].loss[st][0] == rec[1].loss[st][0] && rec[0].loss[st][1] == rec[1].loss[st][1],
              "processes: step %d: ranks report different losses", st + 1);
        CHECK(rec[0].adam_t[st] == ref.adam_t[st] && rec[1].adam_t[st] == ref.adam_t[st], "processes: step %d: AdamW steps %d %d vs %d",
              st + 1, rec[0].adam_t[st], rec[1].adam_t[st], ref.adam_t[st]);
    }
    CHECK(rec[0].rng_state == rec[1].rng_state && rec[0].rng_state == ref.rng_state, "processes: rng states differ");
    // the NaN in rank 1's chunk: both ranks (and the one process) skip both updates
    int skipped = 1;
    for (int r = 0; r < 2; r++) {
        int ok = isnan(rec[r].loss[3][0] + rec[r].loss[3][1]) && isnan(rec[r].loss[4][0]) &&
                 rec[r].hash_after_nan[0] == rec[r].hash_before_nan && rec[r].hash_after_nan[1] == rec[r].hash_before_nan &&
                 rec[r].adam_t[3] == rec[r].adam_t[2] && rec[r].adam_t[4] == rec[r].adam_t[2];
        CHECK(ok, "processes: rank %d: losses %g + %g, %g with a NaN image in rank 1's chunk; updated: %d", r,
              rec[r].loss[3][0], rec[r].loss[3][1], rec[r].loss[4][0], rec[r].hash_after_nan[1] != rec[r].hash_before_nan);
        skipped &= ok;
    }
    CHECK(isnan(ref.loss[3][0] + ref.loss[3][1]) && ref.hash_after_nan[1] == ref.hash_before_nan, "one process: NaN step updated");
    if (skipped) printf("ok   processes: a NaN image in rank 1's chunk makes both ranks skip the training and the TTT update\n");
    free(pr); free(images); free(labels);
    model_free(m);
}

// ----------------------------------------------------------------------------
// 3. the supervisor

typedef enum { BOTH_OK, ONE_FAILS, ONE_KILLED, BOTH_BAD_INPUT, ZERO_FAILS } Scenario;

// runs dist_spawn(2) in a child whose stderr goes to `err_path`; returns its exit status and
// how long it took
static int run_scenario(Scenario sc, const char* err_path, double* seconds) {
    double t0 = time_now_seconds();
    fflush(NULL);
    pid_t p = fork();
    if (p == 0) {
        FILE* e = freopen(err_path, "w", stderr);
        if (!e) _exit(90);
        int r = dist_spawn(2);
        if (sc == BOTH_OK) exit(0);
        if (sc == ONE_FAILS) { if (r == 1) { fprintf(stderr, "error: rank one failed on purpose\n"); exit(3); } sleep(60); exit(0); }
        if (sc == ONE_KILLED) { if (r == 1) raise(SIGKILL); sleep(60); exit(0); }
        if (sc == BOTH_BAD_INPUT) { if (r == 1) usleep(100000); ttt_die("--data 'x': no such folder"); }
        if (sc == ZERO_FAILS) { if (r == 0) ttt_die("rank zero failed on purpose"); sleep(60); exit(0); }
        exit(0);
    }
    int status;
    waitpid(p, &status, 0);
    *seconds = time_now_seconds() - t0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

static int count_lines(const char* s) { int n = 0; for (; *s; s++) n += *s == '\n'; return n; }

static void test_supervisor(void) {
    const char* err = TMP "/supervisor.err";
    double t;
    int rc = run_scenario(BOTH_OK, err, &t);
    char* text = read_text(err);
    CHECK(rc == 0 && text[0] == 0, "supervisor: both ranks exit 0: exit %d, stderr '%s'", rc, text);
    free(text);

    rc = run_scenario(ONE_FAILS, err, &t);
    text = read_text(err);
    CHECK(rc == 1 && t < 20.0 && strstr(text, "rank 1: error: rank one failed on purpose") &&
          strstr(text, "error: rank 1 of 2 (GPU 1) exited with status 3; the other ranks were stopped"),
          "supervisor: rank 1 fails: exit %d after %.1f s, stderr '%s'", rc, t, text);
    group_line("supervisor: rank 1 fails, rank 0 (sleeping 60 s) stopped; exit 1 after %.1f s with its message", t);
    free(text);

    rc = run_scenario(ONE_KILLED, err, &t);
    text = read_text(err);
    CHECK(rc == 1 && t < 20.0 && strstr(text, "error: rank 1 of 2 (GPU 1) was killed by signal 9"),
          "supervisor: rank 1 killed: exit %d after %.1f s, stderr '%s'", rc, t, text);
    group_line("supervisor: rank 1 killed (SIGKILL), the other stopped; exit 1 after %.1f s", t);
    free(text);

    rc = run_scenario(BOTH_BAD_INPUT, err, &t);
    text = read_text(err);
    CHECK(rc == 1 && count_lines(text) == 1 && !strncmp(text, "error: --data 'x': no such folder", 33),
          "supervisor: bad input on every rank: exit %d, stderr '%s' (want rank 0's one line)", rc, text);
    group_line("supervisor: a bad input that stops both ranks prints one line");
    free(text);

    rc = run_scenario(ZERO_FAILS, err, &t);
    text = read_text(err);
    CHECK(rc == 1 && t < 20.0 && count_lines(text) == 1 && strstr(text, "error: rank zero failed on purpose"),
          "supervisor: rank 0 fails: exit %d after %.1f s, stderr '%s'", rc, t, text);
    group_line("supervisor: rank 0 fails, rank 1 (sleeping 60 s) stopped; exit 1 after %.1f s, one line", t);
    free(text);
}

// ----------------------------------------------------------------------------
// 1. ranks in one process

// gradients, losses and rng end state of one gradient step: TTT (train = 0) or joint training
typedef struct { float* grads; float loss[2]; uint64_t rng_state; } StepOut;

static StepOut one_step(Model* m, const float* images, const unsigned char* labels, int B, int train) {
    StepOut o;
    Rng rng; rng_seed(&rng, 42);
    if (train) model_train_forward_backward(m, images, labels, B, &rng, &o.loss[0], &o.loss[1]);
    else { o.loss[0] = model_mae_forward_backward(m, images, B, &rng); o.loss[1] = 0.0f; }
    o.grads = model_grads_host(m);
    o.rng_state = rng.state;
    return o;
}

// world ranks (models planned for rank_micro images) vs one process planned for ref_micro
static void check_split(const char* what, int train, int paper, int B, int world, int rank_micro, int ref_micro) {
    float* images = make_images(B, 5);
    unsigned char* labels = make_labels(B);
    Model* ref = make_model(ref_micro, paper);
    StepOut r = one_step(ref, images, labels, B, train);
    size_t n = n_params(ref);
    float* sum = (float*)callocCheck(n, sizeof(float));
    float loss[2] = {0.0f, 0.0f};
    int same_rng = 1;
    for (int k = 0; k < world; k++) {
        Model* m = make_model(rank_micro, paper);
        model_set_data_parallel(m, k, world, NULL, NULL);
        StepOut o = one_step(m, images, labels, B, train);
        for (size_t i = 0; i < n; i++) sum[i] += o.grads[i];
        loss[0] += o.loss[0]; loss[1] += o.loss[1];
        same_rng &= o.rng_state == r.rng_state;
        free(o.grads);
        model_free(m);
    }
    char name[128];
    snprintf(name, sizeof(name), "%s: gradients summed over ranks", what);
    check_close(name, sum, r.grads, n, 1e-5);
    snprintf(name, sizeof(name), "%s: losses summed over ranks", what);
    check_close(name, loss, r.loss, train ? 2 : 1, 1e-5);
    CHECK(same_rng, "%s: a rank's rng ends elsewhere than the one process's", what);
    free(sum); free(r.grads); free(images); free(labels);
    model_free(ref);
}

static void test_split_in_process(void) {
    // TTT: the whole batch is the reference (the step does not depend on the chunks)
    check_split("TTT, 2 ranks, B 4", 0, 0, 4, 2, 4, 4);
    check_split("TTT, 2 ranks, B 4, drop-path 0.3", 0, 1, 4, 2, 4, 4);
    check_split("TTT, 2 ranks, B 5 (chunks 2+2 | 1)", 0, 1, 5, 2, 2, 5);
    check_split("TTT, 3 ranks, B 4 (rank 2 idle)", 0, 1, 4, 3, 4, 4);
    // joint training: the same chunks as one process with that micro-batch
    check_split("train, 2 ranks, B 4, points, drop-path", 1, 1, 4, 2, 4, 2);
    check_split("train, 2 ranks, B 4 in chunks of 1", 1, 0, 4, 2, 1, 1);
    check_split("train, 2 ranks, B 5 (chunks 3 | 2)", 1, 1, 5, 2, 5, 3);
    // micro-batched TTT with drop-path now draws the whole batch's table: equal to one batch
    float* images = make_images(4, 6);
    Model* a = make_model(4, 1);
    Model* b = make_model(2, 1);
    StepOut oa = one_step(a, images, NULL, 4, 0), ob = one_step(b, images, NULL, 4, 0);
    check_close("TTT drop-path 0.3: micro-batches of 2 vs whole batch", ob.grads, oa.grads, n_params(a), 1e-5);
    free(oa.grads); free(ob.grads); free(images);
    model_free(a); model_free(b);
}

// ----------------------------------------------------------------------------
// 4. the programs

static void test_programs(void) {
    const char* cmds[3] = {
        "./train --data " TMP "/none --out " TMP "/o.bin --gpus 2 > " TMP "/cli.out 2> " TMP "/cli.err",
        "./stream data/demo --gpus 2 --out " TMP "/s > " TMP "/cli.out 2> " TMP "/cli.err",
        "./stream data/demo --gpus 2 --batch 1 --out " TMP "/s > " TMP "/cli.out 2> " TMP "/cli.err",
    };
    const char* want[3] = {"--gpus 2", "--gpus 2", "every GPU needs at least one image"};
    for (int i = 0; i < 3; i++) {
        int rc = system(cmds[i]);
        rc = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
        char* text = read_text(TMP "/cli.err");
        CHECK(rc == 1 && count_lines(text) == 1 && !strncmp(text, "error: ", 7) && strstr(text, want[i]),
              "'%s': exit %d, stderr '%s'", cmds[i], rc, text);
        if (rc == 1) printf("ok   %s: %s", i == 0 ? "./train --gpus 2" : i == 1 ? "./stream --gpus 2" : "./stream --gpus 2 --batch 1", text);
        free(text);
    }
    printf("     (this build %s NCCL)\n", dist_nccl_built() ? "has" : "has no");
}

int main(void) {
    if (fresh_dir(TMP) != 0) return 1;
    // processes first (no OpenMP threads before a fork)
    ModelConfig cfg = model_config_tiny(K);
    size_t n = swin_num_params(&cfg.swin) + m2f_num_params(&cfg.m2f) + m2f_num_params(&cfg.mae);
    Shared* s;
    size_t bytes;
    test_processes(&s, &bytes, n);
    test_supervisor();
    test_programs();
    check_processes(s, n);
    munmap(s, bytes);
    test_split_in_process();
    return test_summary("test_dist");
}
