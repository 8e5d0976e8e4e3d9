// test/test_recipe.c: the released code's TTT recipe inside the model (mae.c): mask ratio,
// loss over all pixels, the optimizer's parameter groups (backbone lr scale, weight-decay
// exemptions), full-model clipping, the optimizer restart, a model sharing another's
// parameters, the predict size, and the exact conversion of version-1 checkpoints (4th
// channel 1 = masked) to the released convention (1 = visible).
#include "test.h"
#include <float.h>

#define TMP "test/tmp"

static Model* tiny_model(int B, int H, int W, uint64_t seed) {
    ModelConfig cfg = model_config_tiny(3);
    Model* m = model_create(&cfg, B, H, W);
    model_init_random(m, seed);
    Rng r; rng_seed(&r, seed + 1);
    size_t n = model_num_params(m, 0) + model_num_params(m, 1) + model_num_params(m, 2);
    float* P = model_params_device(m);   // CPU build of the tests: host memory
    for (size_t i = 0; i < n; i++) P[i] += 0.05f * (rng_uniform(&r) - 0.5f);
    model_snapshot_ttt(m);
    return m;
}

static size_t n_params(const Model* m) { return model_num_params(m, 0) + model_num_params(m, 1) + model_num_params(m, 2); }

// one TTT step from the same weights and the same draws; returns the parameter change
static float* step_delta(Model* m, const float* frames, int B, const OptConfig* opt, const ModelRecipe* r) {
    size_t n = n_params(m);
    model_reset_ttt(m);
    model_set_recipe(m, r);
    float* before = model_params_host(m);
    Rng rng; rng_seed(&rng, 99);
    float loss = model_ttt_step(m, frames, B, opt, &rng);
    CHECK(isfinite(loss), "TTT step loss %g", loss);
    float* after = model_params_host(m);
    for (size_t i = 0; i < n; i++) after[i] -= before[i];
    free(before);
    model_reset_ttt(m);
    return after;
}

static void test_groups(void) {
    int B = 2, H = 40, W = 36;
    Model* m = tiny_model(B, H, W, 3);
    Rng rng; rng_seed(&rng, 4);
    float* frames = random_tensor(&rng, (size_t)B * H * W * 3, 0.0f, 1.0f);
    size_t nf = model_num_params(m, 0), nh = model_num_params(m, 1), ng = model_num_params(m, 2), n = nf + nh + ng;
    OptConfig opt = opt_config_ttt();
    opt.weight_decay = 0.05f;
    ModelRecipe base = model_recipe_demo(model_config(m));
    float* d1 = step_delta(m, frames, B, &opt, &base);

    // backbone lr x 0.1: f moves exactly 0.1 as far (AdamW's step is linear in lr), g as before
    ModelRecipe scaled = base; scaled.backbone_lr_scale = 0.1f;
    float* d2 = step_delta(m, frames, B, &opt, &scaled);
    // changes are differences of float32 parameters: allowed error 2 ulp of the parameter
    float* P0 = model_params_host(m);
    double err_f = 0.0, ref_f = 0.0, err_g = 0.0, h_moved = 0.0;
    size_t f_bad = 0;
    for (size_t i = 0; i < nf; i++) {
        double e = fabs(d2[i] - 0.1 * d1[i]);
        if (e > 2.0 * FLT_EPSILON * fabs(P0[i]) + 1e-5 * fabs(0.1 * d1[i])) f_bad++;
        err_f = fmax(err_f, e); ref_f = fmax(ref_f, fabs(0.1 * d1[i]));
    }
    for (size_t i = nf + nh; i < n; i++) err_g = fmax(err_g, fabs(d2[i] - d1[i]));
    for (size_t i = nf; i < nf + nh; i++) h_moved += fabs(d1[i]) + fabs(d2[i]);
    printf("backbone lr x0.1: f change vs 0.1 x the unscaled one, max abs err %.3e (of %.3e); g max abs diff %.3e\n",
           err_f, ref_f, err_g);
    CHECK(ref_f > 0 && f_bad == 0, "f's change is not 0.1 x at %zu parameters (err %g of %g)", f_bad, err_f, ref_f);
    free(P0);
    CHECK(err_g <= 1e-9, "g's change depends on the backbone scale (%g)", err_g);
    CHECK(h_moved == 0.0, "h changed in a TTT step");

    // weight-decay exemption: the exempt tensors lose exactly lr * wd * p of their change,
    // every other parameter is unchanged. Exempt: Swin's patch_norm, norm1/norm2, rel tables...
    ModelRecipe ex = base; ex.wd_exempt = 1;
    float* d3 = step_delta(m, frames, B, &opt, &ex);
    float* P = model_params_host(m);
    size_t n_exempt = 0, n_bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (i >= nf && i < nf + nh) continue;
        double diff = (double)d3[i] - d1[i];
        if (diff == 0.0) continue;
        // decay term lr * wd * p, removed
        double want = opt.lr * opt.weight_decay * P[i];
        if (fabs(diff - want) > 4.0 * FLT_EPSILON * fabs(P[i]) + 1e-3 * fabs(want)) n_bad++;
        n_exempt++;
    }
    // the patch-embedding LayerNorm is exempt: its weights are the 3rd tensor of f
    SwinParams sp;
    swin_point_params(&sp, P, &model_config(m)->swin);
    size_t ln_off = sp.patch_norm_w - P, E = model_config(m)->swin.embed_dim;
    int ln_exempt = 1;
    for (size_t i = ln_off; i < ln_off + 2 * E; i++) ln_exempt &= d3[i] != d1[i];
    int conv_kept = 1;
    for (size_t i = 0; i < (size_t)(sp.patch_b - P); i++) conv_kept &= d3[i] == d1[i];
    printf("weight-decay exemption: %zu parameters lose their decay, %zu of them not by lr*wd*p\n", n_exempt, n_bad);
    CHECK(n_exempt > 0 && n_bad == 0, "exemption: %zu changed, %zu wrong", n_exempt, n_bad);
    CHECK(ln_exempt, "the patch-embedding LayerNorm still decays");
    CHECK(conv_kept, "the patch-embedding convolution lost its decay");

    // clipping: the gradient left in the buffer after the step has norm <= the clip
    ModelRecipe clip = base; clip.ttt_clip = 1e-3f;
    float* d4 = step_delta(m, frames, B, &opt, &clip);
    float* G = model_grads_host(m);
    double gn = 0.0;
    for (size_t i = 0; i < n; i++) gn += (double)G[i] * G[i];
    gn = sqrt(gn);
    printf("clip 1e-3: gradient norm after clipping %.6e\n", gn);
    CHECK(fabs(gn - 1e-3) < 1e-6, "clipped gradient norm %g, want 1e-3", gn);

    // restart: a second step after model_restart_optimizer equals a first step from there
    model_set_recipe(m, &base);
    Rng r1; rng_seed(&r1, 5);
    model_ttt_step(m, frames, B, &opt, &r1);
    CHECK(model_adam_step(m) == 1, "adam step %d after one step", model_adam_step(m));
    model_restart_optimizer(m);
    CHECK(model_adam_step(m) == 0, "adam step %d after restart", model_adam_step(m));
    free(d1); free(d2); free(d3); free(d4); free(P); free(G); free(frames);
    model_free(m);
}

static void test_mask_and_loss(void) {
    int B = 3, H = 64, W = 64;
    Model* m = tiny_model(B, H, W, 7);
    Rng rng; rng_seed(&rng, 8);
    float* frames = random_tensor(&rng, (size_t)B * H * W * 3, 0.0f, 1.0f);
    ModelRecipe r = model_recipe_paper();
    r.drop_path = 0.0f;
    model_set_recipe(m, &r);
    // all-pixels loss: the whole batch equals its micro-batches (equal weights per image)
    Rng a; rng_seed(&a, 1);
    float whole = model_mae_loss(m, frames, B, &a);
    Model* m1 = model_create(model_config(m), 1, H, W);   // planned for 1: micro-batches of 1
    model_copy_params(m1, m);
    model_set_recipe(m1, &r);
    Rng b; rng_seed(&b, 1);
    float chunks = model_mae_loss(m1, frames, B, &b);
    printf("all-pixels MAE loss: batch %.7f, micro-batches of 1 %.7f\n", whole, chunks);
    CHECK(fabsf(whole - chunks) <= 1e-5f * fabsf(whole), "micro-batched all-pixels loss %g vs %g", chunks, whole);
    ModelRecipe masked = r; masked.loss_all_pixels = 0;
    model_set_recipe(m, &masked);
    Rng c; rng_seed(&c, 1);
    float lm = model_mae_loss(m, frames, B, &c);
    CHECK(isfinite(lm) && lm != whole, "masked-only loss %g equals the all-pixels one", lm);
    model_free(m1);
    // drop-path: active in the MAE loss (train mode), reproducible from the rng, never in
    // prediction
    ModelRecipe dp = r; dp.drop_path = 0.5f;
    model_set_recipe(m, &dp);
    Rng d1; rng_seed(&d1, 1);
    float ld1 = model_mae_loss(m, frames, B, &d1);
    Rng d2; rng_seed(&d2, 1);
    float ld2 = model_mae_loss(m, frames, B, &d2);
    printf("drop-path 0.5: MAE loss %.7f (twice from one seed: %.7f), without %.7f\n", ld1, ld2, whole);
    CHECK(ld1 == ld2, "drop-path loss not reproducible: %g vs %g", ld1, ld2);
    CHECK(ld1 != whole, "drop-path did not change the loss");
    unsigned char* q1 = mallocCheck((size_t)H * W), *q2 = mallocCheck((size_t)H * W);
    model_predict(m, frames, q1);
    model_set_recipe(m, &r);
    model_predict(m, frames, q2);
    CHECK(memcmp(q1, q2, (size_t)H * W) == 0, "prediction depends on the drop-path rate");
    Rng d3; rng_seed(&d3, 1);
    float l3 = model_mae_loss(m, frames, B, &d3);
    CHECK(l3 == whole, "rate 0 after a drop-path run: loss %g, want %g", l3, whole);
    free(q1); free(q2);
    // the sharing model reads the same weights: a prediction equal to the owner's
    Model* s = model_create_sharing(m, 1, H, W);
    unsigned char* p1 = mallocCheck((size_t)H * W), *p2 = mallocCheck((size_t)H * W);
    model_predict(m, frames, p1);
    model_predict(s, frames, p2);
    CHECK(memcmp(p1, p2, (size_t)H * W) == 0, "sharing model predicts differently");
    // predict size: 32 x 48 ids from the 64 x 64 frame
    model_set_predict_size(s, 32, 48);
    unsigned char* p3 = mallocCheck(32 * 48);
    model_predict(s, frames, p3);
    int in_range = 1;
    for (int i = 0; i < 32 * 48; i++) in_range &= p3[i] < 3;
    CHECK(in_range, "resized prediction has ids outside the classes");
    model_free(s);
    free(p1); free(p2); free(p3); free(frames);
    model_free(m);
}

// version 1 checkpoints: converted at load so that old inputs (m = 1 masked) with the old
// weights give what new inputs (c = 1 - m) give with the converted ones
static void test_v1_conversion(void) {
    int H = 32, W = 32;
    Model* m = tiny_model(1, H, W, 13);
    model_save(m, TMP "/rc_v2.bin");
    model_save(m, TMP "/rc_v1.bin");
    FILE* fp = fopenCheck(TMP "/rc_v1.bin", "r+b");
    int one = 1;
    fseek(fp, sizeof(int), SEEK_SET);
    fwriteCheck(&one, sizeof(int), 1, fp);
    fcloseCheck(fp);
    Model* old = model_load(TMP "/rc_v2.bin", 1, H, W);   // the weights as written
    Model* conv = model_load(TMP "/rc_v1.bin", 1, H, W);  // read as version 1: converted
    const SwinConfig* sc = &model_config(m)->swin;
    float* Po = model_params_host(old), *Pc = model_params_host(conv);
    SwinParams so, sv;
    swin_point_params(&so, Po, sc);
    swin_point_params(&sv, Pc, sc);
    int E = sc->embed_dim;
    Rng rng; rng_seed(&rng, 3);
    float* x_old = random_tensor(&rng, (size_t)H * W * 4, -1.0f, 1.0f);
    float* x_new = mallocCheck((size_t)H * W * 4 * sizeof(float));
    for (int i = 0; i < H * W; i++) {
        float masked = rng_uniform(&rng) < 0.5f;
        x_old[i * 4 + 3] = masked;          // version 1: 1 on masked pixels
        memcpy(x_new + i * 4, x_old + i * 4, 3 * sizeof(float));
        x_new[i * 4 + 3] = 1.0f - masked;   // released: 1 on visible pixels
    }
    int Ho = H / 4, Wo = W / 4;
    float* y_old = mallocCheck((size_t)Ho * Wo * E * sizeof(float)), *y_new = mallocCheck((size_t)Ho * Wo * E * sizeof(float));
    conv2d_forward_cpu(y_old, x_old, so.patch_w, so.patch_b, 1, H, W, 4, E, 4, 4, 0, Ho, Wo);
    conv2d_forward_cpu(y_new, x_new, sv.patch_w, sv.patch_b, 1, H, W, 4, E, 4, 4, 0, Ho, Wo);
    check_close("version-1 patch embedding converted", y_new, y_old, (size_t)Ho * Wo * E, 1e-5);
    // nothing else of the model changed
    size_t n = n_params(m), off = (size_t)(so.patch_norm_w - Po), diff = 0;
    for (size_t i = off; i < n; i++) diff += Po[i] != Pc[i];
    CHECK(diff == 0, "%zu parameters besides the patch embedding changed", diff);
    free(Po); free(Pc); free(x_old); free(x_new); free(y_old); free(y_new);
    model_free(old); model_free(conv); model_free(m);
}

// with the deformable pixel decoder its GroupNorms and encoder LayerNorms are exempt too, and
// its level_embed (an nn.Parameter in the released code) is not
static void test_exempt_msdeform(void) {
    ModelConfig cfg = model_config_tiny(3);
    model_config_set_pixel_decoder(&cfg, PIXEL_DECODER_MSDEFORM);
    Model* m = model_create(&cfg, 1, 32, 32);
    model_init_random(m, 2);
    Rng rng; rng_seed(&rng, 3);
    float* frames = random_tensor(&rng, (size_t)32 * 32 * 3, 0.0f, 1.0f);
    OptConfig opt = opt_config_ttt();
    ModelRecipe base = model_recipe_demo(&cfg), ex = base;
    ex.wd_exempt = 1;
    float* d1 = step_delta(m, frames, 1, &opt, &base);
    float* d2 = step_delta(m, frames, 1, &opt, &ex);
    float* P = model_params_host(m);
    M2FParams g;
    size_t nf = model_num_params(m, 0), nh = model_num_params(m, 1);
    m2f_point_params(&g, P + nf + nh, &cfg.mae);
    size_t D = cfg.mae.conv_dim, NE = cfg.mae.enc_layers;
    int ln1 = 1, gn = 1, lvl = 1;
    for (size_t i = 0; i < NE * D; i++) ln1 &= d1[g.msd.ln1_w - P + i] != d2[g.msd.ln1_w - P + i];
    for (size_t i = 0; i < D; i++) gn &= d1[g.msd.input_gn_w[0] - P + i] != d2[g.msd.input_gn_w[0] - P + i];
    for (size_t i = 0; i < 3 * D; i++) lvl &= d1[g.msd.level_embed - P + i] == d2[g.msd.level_embed - P + i];
    CHECK(ln1 && gn, "msdeform: encoder LayerNorm (%d) or input GroupNorm (%d) still decays", ln1, gn);
    CHECK(lvl, "msdeform: level_embed lost its decay");
    free(d1); free(d2); free(P); free(frames);
    model_free(m);
}

// joint training in micro-batches: with labels that hold every class in every image (equal
// target counts, so the replicas' class-loss means equal the batch's) and the set loss on every
// pixel (no point draws), and frames without padding (equal masked counts), chunks of 2 and 3
// give the whole batch's loss and gradients; then a step with B > planned runs and updates
static void test_train_chunks(void) {
    int K = 3, B = 4, H = 32, W = 64;   // no padding: every image has the same masked count
    ModelConfig cfg = model_config_tiny(K);
    Rng rng; rng_seed(&rng, 17);
    float* images = random_tensor(&rng, (size_t)B * H * W * 3, 0.0f, 1.0f);
    unsigned char* labels = mallocCheck((size_t)B * H * W);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < H * W; i++) labels[(size_t)b * H * W + i] = (unsigned char)((i / W + b * 3 + i % W / 13) % K);
    SetLossConfig sl = set_loss_config_default();
    sl.all_pixels = 1;
    int planned[3] = {4, 2, 3};
    float lm[3], lr[3], *grads[3];
    size_t n = 0;
    for (int i = 0; i < 3; i++) {
        Model* m = model_create(&cfg, planned[i], H, W);
        model_init_random(m, 8);
        model_set_loss_config(m, &sl);
        Rng r; rng_seed(&r, 3);
        model_train_forward_backward(m, images, labels, B, &r, &lm[i], &lr[i]);
        grads[i] = model_grads_host(m);
        n = n_params(m);
        model_free(m);
    }
    for (int j = 1; j < 3; j++) {
        char name[96];
        printf("     training in micro-batches of %d: main %.7f mae %.7f (whole batch %.7f %.7f)\n", planned[j], lm[j], lr[j], lm[0], lr[0]);
        snprintf(name, sizeof(name), "training micro-batches of %d: set loss", planned[j]);
        check_close(name, &lm[j], &lm[0], 1, 1e-5);
        snprintf(name, sizeof(name), "training micro-batches of %d: MAE loss", planned[j]);
        check_close(name, &lr[j], &lr[0], 1, 1e-5);
        snprintf(name, sizeof(name), "training micro-batches of %d: gradients f, h, g", planned[j]);
        check_close(name, grads[j], grads[0], n, 1e-4);
    }
    for (int i = 0; i < 3; i++) free(grads[i]);
    // a step with B > planned runs and updates
    Model* m = model_create(&cfg, 2, H, W);
    model_init_random(m, 8);
    OptConfig opt = opt_config_ttt();
    float a, b;
    Rng r; rng_seed(&r, 4);
    model_train_step(m, images, labels, B, &opt, 1.0f, &r, &a, &b);
    CHECK(isfinite(a) && isfinite(b) && model_adam_step(m) == 1, "micro-batched train step: %g %g, step %d", a, b, model_adam_step(m));
    model_free(m);
    free(images); free(labels);
}

// the published sizes (Swin-S, Mask2Former 256 wide: hundreds of AdamW runs) at a small
// frame: a paper-recipe TTT step (drop-path, clipping, groups) and a prediction run, and the
// model frees cleanly (the sanitizer build checks the memory)
static void test_swin_s_step(void) {
    ModelConfig cfg = model_config_swin_s(19);
    Model* m = model_create(&cfg, 1, 32, 32);
    model_init_random(m, 1);
    ModelRecipe r = model_recipe_paper();
    model_set_recipe(m, &r);
    Rng rng; rng_seed(&rng, 2);
    float* x = random_tensor(&rng, 32 * 32 * 3, 0.0f, 1.0f);
    OptConfig opt = opt_config_ttt();
    model_restart_optimizer(m);
    float loss = model_ttt_step(m, x, 1, &opt, &rng);
    unsigned char ids[32 * 32];
    model_predict(m, x, ids);
    int ok = isfinite(loss) && model_adam_step(m) == 1;
    CHECK(ok, "Swin-S paper step: loss %g", loss);
    printf("%-4s Swin-S paper-recipe TTT step at 32x32: loss %.5f\n", ok ? "ok" : "FAIL", loss);
    free(x);
    model_free(m);
}

static void test_recipes(void) {
    ModelConfig cfg = model_config_tiny(3);
    ModelRecipe d = model_recipe_demo(&cfg), p = model_recipe_paper();
    CHECK(d.mask_ratio == cfg.mask_ratio && d.loss_all_pixels == 0 && d.backbone_lr_scale == 1.0f &&
          d.wd_exempt == 0 && d.ttt_clip == 0.0f && d.drop_path == 0.0f, "demo recipe");
    CHECK(p.mask_ratio == 0.85f && p.loss_all_pixels == 1 && p.backbone_lr_scale == 0.1f && p.wd_exempt == 1 &&
          p.ttt_clip == 0.01f && p.drop_path == 0.3f, "paper recipe");
}

int main(void) {
    if (system("mkdir -p " TMP) != 0) return 1;
    test_recipes();
    test_groups();
    test_mask_and_loss();
    test_v1_conversion();
    test_exempt_msdeform();
    test_train_chunks();
    test_swin_s_step();
    return test_summary("test_recipe");
}
