// test/gpu_table1.c: the other test-time techniques of Table 1 on CUDA against the CPU
// reference. Ops (random non-zero inputs, odd and realistic sizes, GPU outputs poisoned with
// NaN first, gradient buffers pre-filled so the increments are compared): semantic_scores,
// class_argmax (with and without a confidence threshold), flip_width, majority_vote,
// layernorm_adapt_forward (output, saved statistics, the ring entry), the Tent entropy and
// its backward. Model (tiny config, float32 products, then TF32): Tent's loss and gradients,
// a Tent step, pseudo-labels, the self-training loss and gradients, a main-task-only step;
// the Predictor (LN Adapt + smoothing + TTA) against the CPU, and with CUDA graphs against
// eager launches (a replay that read a stale ring state would show). End to end: ./stream
// --device cuda with every new mode against --device cpu (test_stream_e2e).
#include "test/test.h"
#include <sys/wait.h>

static Rng rng;

#ifdef TTT_CUDA
static void check_bytes(const char* name, const unsigned char* got, const unsigned char* ref, size_t n, double max_frac) {
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) diff += got[i] != ref[i];
    int ok = (double)diff <= max_frac * n;
    printf("%-4s %-48s %zu of %zu differ (allowed %.0e)\n", ok ? "ok" : "FAIL", name, diff, n, max_frac);
    if (ok) tests_passed++; else tests_failed++;
}

// ---- ops ----

static void test_scores(int Q, int K, int H4, int W4, int H, int W, int Ho, int Wo) {
    size_t nc = (size_t)Q * (K + 1), nm = (size_t)Q * H4 * W4, ns = (size_t)Ho * Wo * K, nw = m2f_semantic_work_size(Q, K, H4, W4);
    float* cls = random_tensor(&rng, nc, -3, 3), *msk = random_tensor(&rng, nm, -4, 4);
    float* work = mallocCheck(nw * sizeof(float)), *ref = mallocCheck(ns * sizeof(float));
    semantic_scores_cpu(ref, cls, msk, Q, K, H4, W4, H, W, Ho, Wo, work);
    float *dc = device_copy_of(cls, nc), *dm = device_copy_of(msk, nm), *dw = device_nan_buffer(nw), *ds = device_nan_buffer(ns);
    semantic_scores_cuda(ds, dc, dm, Q, K, H4, W4, H, W, Ho, Wo, dw);
    float* got = host_copy_of(ds, ns);
    char name[128];
    snprintf(name, sizeof(name), "semantic_scores Q%d K%d %dx%d -> %dx%d", Q, K, H, W, Ho, Wo);
    check_close(name, got, ref, ns, 1e-5);
    // their argmax on the GPU against the GPU's semantic inference
    unsigned char* ids = (unsigned char*)ttt_malloc((size_t)Ho * Wo), *ids2 = (unsigned char*)ttt_malloc((size_t)Ho * Wo);
    class_argmax_cuda(ids, ds, Ho * Wo, K, 0.0f);
    semantic_inference_cuda(ids2, dc, dm, Q, K, H4, W4, H, W, Ho, Wo, dw);
    unsigned char* a = mallocCheck((size_t)Ho * Wo), *b = mallocCheck((size_t)Ho * Wo);
    ttt_to_host(a, ids, (size_t)Ho * Wo); ttt_to_host(b, ids2, (size_t)Ho * Wo);
    snprintf(name, sizeof(name), "argmax(scores) vs semantic inference, GPU");
    check_bytes(name, a, b, (size_t)Ho * Wo, 1e-4);
    ttt_free(dc); ttt_free(dm); ttt_free(dw); ttt_free(ds); ttt_free(ids); ttt_free(ids2);
    free(cls); free(msk); free(work); free(ref); free(got); free(a); free(b);
}

static void test_argmax_flip_vote(int N, int K) {
    float* s = random_tensor(&rng, (size_t)N * K, 0.0f, 1.0f);
    for (int i = 0; i < N; i += 7) s[(size_t)i * K + i % K] += 3.0f;   // some confident rows
    unsigned char* ref = mallocCheck(N), *got = mallocCheck(N);
    float* ds = device_copy_of(s, (size_t)N * K);
    unsigned char* dids = (unsigned char*)ttt_malloc(N);
    float thr[2] = {0.0f, 0.4f};
    for (int t = 0; t < 2; t++) {
        class_argmax_cpu(ref, s, N, K, thr[t]);
        class_argmax_cuda(dids, ds, N, K, thr[t]);
        ttt_to_host(got, dids, N);
        char name[96];
        snprintf(name, sizeof(name), "class_argmax N%d K%d threshold %.1f", N, K, thr[t]);
        check_bytes(name, got, ref, N, 0.0);
    }
    // flip: (3, 17, 29, K)
    size_t nf = (size_t)3 * 17 * 29 * K;
    float* x = random_tensor(&rng, nf, -1, 1), *fr = mallocCheck(nf * sizeof(float));
    flip_width_cpu(fr, x, 3, 17, 29, K);
    float* dx = device_copy_of(x, nf), *dy = device_nan_buffer(nf);
    flip_width_cuda(dy, dx, 3, 17, 29, K);
    float* fg = host_copy_of(dy, nf);
    check_close("flip_width", fg, fr, nf, 0.0);
    // vote: V views of N ids in [0, 4) so that ties happen
    int V = 6;
    unsigned char* votes = mallocCheck((size_t)V * N);
    for (size_t i = 0; i < (size_t)V * N; i++) votes[i] = (unsigned char)rng_int(&rng, 4);
    unsigned char* dv = (unsigned char*)ttt_malloc((size_t)V * N);
    ttt_to_device(dv, votes, (size_t)V * N);
    majority_vote_cpu(ref, votes, V, N);
    majority_vote_cuda(dids, dv, V, N);
    ttt_to_host(got, dids, N);
    check_bytes("majority_vote 6 views", got, ref, N, 0.0);
    ttt_free(ds); ttt_free(dids); ttt_free(dx); ttt_free(dy); ttt_free(dv);
    free(s); free(ref); free(got); free(x); free(fr); free(fg); free(votes);
}

static void test_ln_adapt(int N, int C, int cap, float prior) {
    size_t nx = (size_t)N * C, nh = (size_t)cap * N;
    float* x = random_tensor(&rng, nx, -2, 3), *w = random_tensor(&rng, C, 0.5f, 1.5f), *b = random_tensor(&rng, C, -0.5f, 0.5f);
    float* hm = random_tensor(&rng, nh, -1, 1), *hv = random_tensor(&rng, nh, 0.1f, 2);
    float *dx = device_copy_of(x, nx), *dw = device_copy_of(w, C), *db = device_copy_of(b, C), *dhm = device_copy_of(hm, nh), *dhv = device_copy_of(hv, nh);
    int states[2][3] = {{cap - 1, cap, 1}, {0, cap > 1 ? 2 : 1, 0}};   // recording a full ring; reading a partial one
    for (int t = 0; t < 2; t++) {
        float* out = mallocCheck(nx * 4), *mean = mallocCheck(N * 4), *rstd = mallocCheck(N * 4);
        layernorm_adapt_forward_cpu(out, mean, rstd, hm, hv, states[t], x, w, b, N, C, cap, prior);
        int* dst = (int*)ttt_malloc(3 * sizeof(int));
        ttt_to_device(dst, states[t], 3 * sizeof(int));
        float *dout = device_nan_buffer(nx), *dmean = device_nan_buffer(N), *drstd = device_nan_buffer(N);
        layernorm_adapt_forward_cuda(dout, dmean, drstd, dhm, dhv, dst, dx, dw, db, N, C, cap, prior);
        float *go = host_copy_of(dout, nx), *gm = host_copy_of(dmean, N), *gr = host_copy_of(drstd, N), *ghm = host_copy_of(dhm, nh), *ghv = host_copy_of(dhv, nh);
        char name[96];
        snprintf(name, sizeof(name), "layernorm_adapt N%d C%d ring %d/%d%s: out", N, C, states[t][1], cap, states[t][2] ? " rec" : "");
        check_close(name, go, out, nx, 1e-4);
        snprintf(name, sizeof(name), "layernorm_adapt N%d C%d: mean, rstd", N, C);
        check_close(name, gm, mean, N, 1e-4);
        check_close(name, gr, rstd, N, 1e-4);
        snprintf(name, sizeof(name), "layernorm_adapt N%d C%d: ring", N, C);
        check_close(name, ghm, hm, nh, 1e-5);
        check_close(name, ghv, hv, nh, 1e-4);
        ttt_free(dst); ttt_free(dout); ttt_free(dmean); ttt_free(drstd);
        free(out); free(mean); free(rstd); free(go); free(gm); free(gr); free(ghm); free(ghv);
    }
    ttt_free(dx); ttt_free(dw); ttt_free(db); ttt_free(dhm); ttt_free(dhv);
    free(x); free(w); free(b); free(hm); free(hv);
}

static void test_entropy(int B, int Q, int K, int H4, int W4, int Hv, int Wv) {
    size_t nc = (size_t)B * Q * (K + 1), nm = (size_t)B * Q * H4 * W4, nw = semantic_entropy_work_size(B, Q, K, H4, W4);
    float* cls = random_tensor(&rng, nc, -2, 2), *msk = random_tensor(&rng, nm, -3, 3);
    float* work = mallocCheck(nw * sizeof(float));
    float lc;
    semantic_entropy_forward_cpu(&lc, cls, msk, B, Q, K, H4, W4, Hv, Wv, work);
    float *dc = device_copy_of(cls, nc), *dm = device_copy_of(msk, nm), *dw = device_nan_buffer(nw), *dl = device_nan_buffer(1);
    semantic_entropy_forward_cuda(dl, dc, dm, B, Q, K, H4, W4, Hv, Wv, dw);
    float lg;
    ttt_to_host(&lg, dl, sizeof(float));
    char name[128];
    snprintf(name, sizeof(name), "semantic_entropy B%d Q%d K%d %dx%d: loss", B, Q, K, H4, W4);
    check_close(name, &lg, &lc, 1, 1e-5);
    // backward: increments on pre-filled buffers, dloss 0.7
    float* gc0 = random_tensor(&rng, nc, -1, 1), *gm0 = random_tensor(&rng, nm, -1, 1);
    float* gc = mallocCheck(nc * 4), *gm = mallocCheck(nm * 4);
    memcpy(gc, gc0, nc * 4); memcpy(gm, gm0, nm * 4);
    float *dgc = device_copy_of(gc0, nc), *dgm = device_copy_of(gm0, nm);
    semantic_entropy_backward_cpu(gc, gm, 0.7f, cls, msk, B, Q, K, H4, W4, Hv, Wv, work);
    semantic_entropy_backward_cuda(dgc, dgm, 0.7f, dc, dm, B, Q, K, H4, W4, Hv, Wv, dw);
    float *hgc = host_copy_of(dgc, nc), *hgm = host_copy_of(dgm, nm);
    for (size_t i = 0; i < nc; i++) { gc[i] -= gc0[i]; hgc[i] -= gc0[i]; }
    for (size_t i = 0; i < nm; i++) { gm[i] -= gm0[i]; hgm[i] -= gm0[i]; }
    snprintf(name, sizeof(name), "semantic_entropy B%d Q%d K%d: d class_logits", B, Q, K);
    check_close(name, hgc, gc, nc, 1e-3);
    snprintf(name, sizeof(name), "semantic_entropy B%d Q%d K%d: d mask_logits", B, Q, K);
    check_close(name, hgm, gm, nm, 1e-4);
    ttt_free(dc); ttt_free(dm); ttt_free(dw); ttt_free(dl); ttt_free(dgc); ttt_free(dgm);
    free(cls); free(msk); free(work); free(gc0); free(gm0); free(gc); free(gm); free(hgc); free(hgm);
}

// ---- model ----

typedef struct {
    float tent_loss, st_loss, main_loss;
    float *tent_grads, *tent_params, *st_grads, *main_params;
    unsigned char *pseudo, *pred;
    size_t n;
} T1Result;

static T1Result run_model(Device d, const ModelConfig* cfg, const float* frames, const unsigned char* labels,
                          int B, int H, int W) {
    ttt_set_device(d);
    T1Result r;
    Model* m = model_create(cfg, B, H, W);
    model_init_random(m, 42);
    r.n = model_num_params(m, 0) + model_num_params(m, 1) + model_num_params(m, 2);
    Rng g; rng_seed(&g, 7);
    r.tent_loss = model_tent_forward_backward(m, frames, B, &g);
    r.tent_grads = model_grads_host(m);
    OptConfig opt = opt_config_ttt();
    rng_seed(&g, 7);
    model_tent_step(m, frames, B, &opt, &g);
    r.tent_params = model_params_host(m);
    model_init_random(m, 42);
    r.pseudo = (unsigned char*)mallocCheck((size_t)B * H * W);
    model_pseudo_labels(m, frames, B, 0.3f, r.pseudo);
    rng_seed(&g, 8);
    r.st_loss = model_self_train_forward_backward(m, frames, labels, B, 0.8f, &g);
    r.st_grads = model_grads_host(m);
    rng_seed(&g, 9);
    model_train_step_main_only(m, frames, labels, B, &opt, 1.0f, &g, &r.main_loss);
    r.main_params = model_params_host(m);
    r.pred = (unsigned char*)mallocCheck((size_t)4 * H * W);
    model_init_random(m, 42);
    PredictConfig pc = {2, 3, 1, 1, 3, 1.0f};
    Predictor* p = predictor_create(m, &pc);
    for (int t = 0; t < 4; t++) predictor_run(p, frames + (size_t)(t % B) * H * W * 3, 100 + t, 0, r.pred + (size_t)t * H * W, NULL);
    predictor_free(p);
    ttt_synchronize();
    model_free(m);
    return r;
}

// Adam's first step moves each element by about lr * sign(grad): an element whose tiny gradient
// changes sign between devices differs by 2 lr = 2e-4, hence tol_params 1e-4 (relative to the
// largest parameter); the gradients are the exact check
static void compare(const char* mode, const T1Result* c, const T1Result* g, const ModelConfig* cfg, int B, int H, int W,
                    double tol_loss, double tol_grad, double tol_params, double min_agree) {
    char name[128];
    size_t nf = swin_num_params(&cfg->swin), nh = m2f_num_params(&cfg->m2f);
    printf("-- %s: Tent loss cpu %.7f gpu %.7f; self-training loss cpu %.7f gpu %.7f\n", mode, c->tent_loss, g->tent_loss,
           c->st_loss, g->st_loss);
    snprintf(name, sizeof(name), "[%s] Tent loss", mode);
    check_close(name, &g->tent_loss, &c->tent_loss, 1, tol_loss);
    snprintf(name, sizeof(name), "[%s] Tent grad f", mode);
    check_l2(name, g->tent_grads, c->tent_grads, nf, tol_grad);
    snprintf(name, sizeof(name), "[%s] Tent grad h", mode);
    check_l2(name, g->tent_grads + nf, c->tent_grads + nf, nh, tol_grad);
    snprintf(name, sizeof(name), "[%s] params after a Tent step", mode);
    check_close(name, g->tent_params, c->tent_params, c->n, tol_params);
    snprintf(name, sizeof(name), "[%s] pseudo-labels (threshold 0.3)", mode);
    check_bytes(name, g->pseudo, c->pseudo, (size_t)B * H * W, 1.0 - min_agree);
    snprintf(name, sizeof(name), "[%s] self-training loss", mode);
    check_close(name, &g->st_loss, &c->st_loss, 1, tol_loss);
    snprintf(name, sizeof(name), "[%s] self-training grad f", mode);
    check_l2(name, g->st_grads, c->st_grads, nf, tol_grad);
    snprintf(name, sizeof(name), "[%s] self-training grad h", mode);
    check_l2(name, g->st_grads + nf, c->st_grads + nf, nh, tol_grad);
    snprintf(name, sizeof(name), "[%s] main-only loss", mode);
    check_close(name, &g->main_loss, &c->main_loss, 1, tol_loss);
    snprintf(name, sizeof(name), "[%s] params after a main-only step", mode);
    check_close(name, g->main_params, c->main_params, c->n, tol_params);
    snprintf(name, sizeof(name), "[%s] Predictor (LN Adapt, smooth 2, TTA 3), 4 frames", mode);
    check_bytes(name, g->pred, c->pred, (size_t)4 * H * W, 1.0 - min_agree);
}

static void free_result(T1Result* r) {
    free(r->tent_grads); free(r->tent_params); free(r->st_grads); free(r->main_params); free(r->pseudo); free(r->pred);
}

// ./stream end to end on both devices, the default config with random weights on a short
// generated video: every new mode runs on the GPU; a class-balance reset on every frame
// predicts exactly as fixed mode on the same device; the per-frame losses of tent and
// self-train and the predictions agree with the CPU's
#define E2E_DIR "test/tmp/gt1_video"
#define E2E_MODEL "test/tmp/gt1_default.bin"
#define E2E_NF 5
static int e2e_stream(const char* dev, const char* name, const char* opts) {
    char cmd[2048];
    // float32 matrix products on the GPU (TTT_TF32=0): the comparison with the CPU then measures
    // the code, not TF32's rounding (a tiny random model has many near-ties between classes)
    snprintf(cmd, sizeof(cmd), "%s./stream " E2E_DIR " --model " E2E_MODEL " --device %s %s --out test/tmp/gt1_%s_%s "
             "> test/tmp/gt1_%s_%s.log 2>&1", strcmp(dev, "cuda") == 0 ? "TTT_TF32=0 " : "", dev, opts, name, dev, name, dev);
    return run(cmd);
}
// fraction of pixels where two runs predict the same class
static double e2e_agree(const char* a, const char* b) {
    long long same = 0, total = 0;
    for (int t = 1; t <= E2E_NF; t++) {
        char pa[256], pb[256];
        int H, W, H2, W2;
        snprintf(pa, sizeof(pa), "test/tmp/gt1_%s/frame%06d.png", a, t);
        snprintf(pb, sizeof(pb), "test/tmp/gt1_%s/frame%06d.png", b, t);
        unsigned char* x = label_load(pa, 0, 0, &H, &W);
        unsigned char* y = label_load(pb, H, W, &H2, &W2);
        for (int i = 0; i < H * W; i++) same += x[i] == y[i];
        total += (long long)H * W;
        free(x); free(y);
    }
    return total ? (double)same / total : 0.0;
}
static int e2e_losses(const char* name, float* loss) {
    char path[256], line[1024];
    snprintf(path, sizeof(path), "test/tmp/gt1_%s.log", name);
    FILE* fp = fopen(path, "r");
    int n = 0;
    while (fp && fgets(line, sizeof(line), fp) && n < E2E_NF) {
        char* p = strstr(line, " loss ");
        if (strncmp(line, "frame ", 6) == 0 && p && sscanf(p, " loss %f", &loss[n]) == 1) n++;
    }
    if (fp) fclose(fp);
    return n;
}
static void test_stream_e2e(void) {
    ttt_set_device(DEVICE_CPU);
    CHECK(run("mkdir -p test/tmp && rm -rf test/tmp/gt1_* && ./gen video " E2E_DIR " --frames 5 --size 128x96 --seed 4 >/dev/null") == 0, "gen failed");
    ModelConfig cfg = model_config_default(8);
    Model* m = model_create(&cfg, 2, 96, 128);
    model_init_random(m, 3);
    model_save(m, E2E_MODEL);
    model_free(m);
    const char* runs[][2] = {
        {"fixed", "--mode fixed"}, {"ln", "--mode ln-adapt --window 3 --ln-prior 1"},
        {"tent", "--mode tent --batch 2 --window 3"}, {"st", "--mode self-train --batch 2 --window 3 --st-threshold 0.3"},
        {"cb", "--mode tent --batch 2 --window 3 --class-balance on --cb-threshold -1"},
        {"smtta", "--mode fixed --smooth 2 --tta 3 --tta-color on"}};
    const char* dev[2] = {"cpu", "cuda"};
    for (int i = 0; i < 6; i++)
        for (int d = 0; d < 2; d++)
            CHECK(e2e_stream(dev[d], runs[i][0], runs[i][1]) == 0, "./stream %s on %s failed (test/tmp/gt1_%s_%s.log)",
                  runs[i][1], dev[d], runs[i][0], dev[d]);
    double cb = e2e_agree("cb_cuda", "fixed_cuda");
    // the same weights give the same ids; eager and graph-replayed launches may differ in the
    // last bits (gpu_model allows 1e-3 of the pixels), hence not exactly 1
    printf("%-4s GPU: class balance resetting every frame = fixed mode on %.6f of pixels (tol 0.999)\n",
           cb >= 0.999 ? "ok" : "FAIL", cb);
    if (cb >= 0.999) tests_passed++; else tests_failed++;
    for (int i = 0; i < 6; i++) {
        char a[64], b[64];
        snprintf(a, sizeof(a), "%s_cpu", runs[i][0]);
        snprintf(b, sizeof(b), "%s_cuda", runs[i][0]);
        double ag = e2e_agree(a, b);
        printf("%-4s %-56s cuda vs cpu: predictions agree on %.4f (tol 0.98)\n", ag >= 0.98 ? "ok" : "FAIL", runs[i][1], ag);
        if (ag >= 0.98) tests_passed++; else tests_failed++;
    }
    const char* trained[2] = {"tent", "st"};
    for (int i = 0; i < 2; i++) {
        float lc[E2E_NF], lg[E2E_NF];
        char a[64], b[64];
        snprintf(a, sizeof(a), "%s_cpu", trained[i]);
        snprintf(b, sizeof(b), "%s_cuda", trained[i]);
        int nc = e2e_losses(a, lc), ng = e2e_losses(b, lg);
        CHECK(nc == E2E_NF && ng == E2E_NF, "%s: missing loss lines (%d cpu, %d cuda)", trained[i], nc, ng);
        // the first step starts from the same weights (TF32 products: 5e-3); later ones from
        // weights that have drifted apart by the earlier steps' rounding
        char name[96];
        snprintf(name, sizeof(name), "./stream %s: first frame's loss, cuda vs cpu", trained[i]);
        if (nc == E2E_NF && ng == E2E_NF) check_close(name, lg, lc, 1, 5e-3);
        snprintf(name, sizeof(name), "./stream %s: loss of every frame, cuda vs cpu", trained[i]);
        if (nc == E2E_NF && ng == E2E_NF) check_close(name, lg, lc, E2E_NF, 5e-2);
    }
}

// the Predictor with LN Adapt replayed from a CUDA graph against eager launches
static void test_predictor_graphs(const ModelConfig* cfg, const float* frames, int n_frames, int H, int W) {
    ttt_set_device(DEVICE_CUDA);
    ttt_cuda_set_tf32(0);
    unsigned char* ids[2];
    for (int gr = 0; gr < 2; gr++) {
        ttt_cuda_set_graphs(gr);
        Model* m = model_create(cfg, 1, H, W);
        model_init_random(m, 5);
        PredictConfig pc = {2, 2, 1, 1, 3, 0.5f};
        Predictor* p = predictor_create(m, &pc);
        ids[gr] = (unsigned char*)mallocCheck((size_t)6 * H * W);
        for (int t = 0; t < 6; t++) predictor_run(p, frames + (size_t)(t % n_frames) * H * W * 3, t, 0, ids[gr] + (size_t)t * H * W, NULL);
        predictor_free(p);
        model_free(m);
    }
    ttt_cuda_set_graphs(1);
    ttt_cuda_set_tf32(1);
    check_bytes("Predictor, LN Adapt: graphs vs eager, 6 frames", ids[1], ids[0], (size_t)6 * H * W, 1e-3);
    free(ids[0]); free(ids[1]);
}
#endif

int main(void) {
    if (!ttt_cuda_available()) {
        printf("no CUDA device: skipped\n");
        return test_summary("gpu_table1");
    }
#ifdef TTT_CUDA
    rng_seed(&rng, 20261130);
    ttt_set_device(DEVICE_CUDA);
    test_scores(7, 5, 9, 13, 35, 50, 35, 50);
    test_scores(6, 4, 8, 12, 31, 45, 17, 70);
    test_scores(100, 19, 160, 512, 618, 2048, 375, 1242);   // KITTI: 618x2048 scored at 375x1242
    test_argmax_flip_vote(10007, 7);
    test_argmax_flip_vote(4097, 19);
    test_ln_adapt(1001, 19, 3, 2.5f);
    test_ln_adapt(513, 96, 16, 16.0f);
    test_ln_adapt(77, 768, 1, 16.0f);
    test_entropy(2, 5, 4, 6, 7, 5, 6);
    test_entropy(3, 100, 19, 32, 64, 30, 61);   // realistic Q, K on a small map

    int K = 5, B = 2, H = 70, W = 101;
    ModelConfig cfg = model_config_tiny(K);
    float* frames = random_tensor(&rng, (size_t)B * H * W * 3, 0.0f, 1.0f);
    unsigned char* labels = (unsigned char*)mallocCheck((size_t)B * H * W);
    for (int b = 0; b < B; b++) for (int y = 0; y < H; y++) for (int x = 0; x < W; x++)
        labels[((size_t)b * H + y) * W + x] = (y < 6) ? 255 : (unsigned char)((y / 20 + x / 30 + b) % K);
    T1Result cpu = run_model(DEVICE_CPU, &cfg, frames, labels, B, H, W);
    ttt_cuda_set_tf32(0);
    T1Result g32 = run_model(DEVICE_CUDA, &cfg, frames, labels, B, H, W);
    compare("fp32 GEMM", &cpu, &g32, &cfg, B, H, W, 1e-4, 1e-3, 1e-4, 0.99);
    free_result(&g32);
    ttt_cuda_set_tf32(1);
    T1Result gtf = run_model(DEVICE_CUDA, &cfg, frames, labels, B, H, W);
    compare("tf32 GEMM", &cpu, &gtf, &cfg, B, H, W, 3e-3, 6e-2, 2e-4, 0.98);
    free_result(&gtf);
    free_result(&cpu);
    test_predictor_graphs(&cfg, frames, B, H, W);
    free(frames); free(labels);
    test_stream_e2e();
#endif
    return test_summary("gpu_table1");
}
