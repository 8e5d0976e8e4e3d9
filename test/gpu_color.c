// test/gpu_color.c: --task colorize on CUDA against the CPU reference (make test-gpu). The
// colour loss itself runs on the host (color.c, on the logits copied back, as the set loss),
// so what differs is the model around it: a joint colorization training step from the same
// weights (colour loss + MAE loss, the gradients of f, h, g) and the prediction's logits and
// decoded colour frame. Float32 matrix products (TF32 off) for tight bounds.
#include "test/test.h"

typedef struct { float loss_main, loss_mae; float* grads; float* rgb; size_t n; } ColorRun;

static ColorRun run_color(Device d, const ModelConfig* cfg, const float* gray, const int* ids, const float* w,
                          const float* rebal, int B, int H, int W) {
    ttt_set_device(d);
    ColorRun r;
    Model* m = model_create(cfg, B, H, W);
    model_init_random(m, 42);
    model_set_color_weights(m, rebal);
    r.n = model_num_params(m, 0) + model_num_params(m, 1) + model_num_params(m, 2);
    Rng rng;
    rng_seed(&rng, 9);
    OptConfig opt = opt_config_ttt();
    model_train_step_colorize(m, gray, ids, w, B, &opt, 1.0f, &rng, &r.loss_main, &r.loss_mae);
    r.grads = model_grads_host(m);
    int Q, K, H4, W4, Hm, Wm;
    model_prediction_sizes(m, &Q, &K, &H4, &W4, &Hm, &Wm);
    float* cls = (float*)mallocCheck((size_t)Q * (K + 1) * sizeof(float));
    float* msk = (float*)mallocCheck((size_t)Q * H4 * W4 * sizeof(float));
    model_predict_logits(m, gray);
    model_last_logits(m, cls, msk);
    r.rgb = (float*)mallocCheck((size_t)H * W * 3 * sizeof(float));
    color_decode(r.rgb, gray, cls, msk, Q, H4, W4, H, W, COLOR_TEMPERATURE);
    free(cls); free(msk);
    ttt_synchronize();
    model_free(m);
    return r;
}

int main(void) {
    if (!ttt_cuda_available()) {
        printf("no CUDA device: skipped\n");
        return test_summary("gpu_color");
    }
#ifdef TTT_CUDA
    int B = 2, H = 40, W = 52;
    ModelConfig cfg = model_config_tiny(COLOR_BINS);
    cfg.colorize = 1;
    Rng rng;
    rng_seed(&rng, 4);
    // random colour images (smooth gradients plus noise), their gray versions and targets
    size_t n = (size_t)B * H * W;
    float* img = (float*)mallocCheck(n * 3 * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int c = 0; c < 3; c++)
                    img[(((size_t)b * H + y) * W + x) * 3 + c] =
                        0.5f + 0.4f * sinf(0.1f * (x + 2 * c) + 0.2f * y + b) + 0.05f * (rng_uniform(&rng) - 0.5f);
    float* gray = (float*)mallocCheck(n * 3 * sizeof(float));
    color_gray_frame(gray, img, n);
    int Q, K, H4, W4, Hm, Wm;   // the model's map (the padded frame over 4), from a model of this size
    ttt_set_device(DEVICE_CPU);
    Model* probe = model_create(&cfg, 1, H, W);
    model_prediction_sizes(probe, &Q, &K, &H4, &W4, &Hm, &Wm);
    model_free(probe);
    size_t nt = (size_t)H4 * W4 * COLOR_NEIGHBOURS;
    int* ids = (int*)mallocCheck(B * nt * sizeof(int));
    float* w = (float*)mallocCheck(B * nt * sizeof(float));
    for (int b = 0; b < B; b++) color_targets(ids + b * nt, w + b * nt, img + (size_t)b * H * W * 3, H, W, H4, W4);
    float rebal[COLOR_BINS];
    for (int k = 0; k < COLOR_BINS; k++) rebal[k] = 0.5f + rng_uniform(&rng);
    ttt_cuda_set_tf32(0);
    ColorRun c = run_color(DEVICE_CPU, &cfg, gray, ids, w, rebal, B, H, W);
    ColorRun g = run_color(DEVICE_CUDA, &cfg, gray, ids, w, rebal, B, H, W);
    ttt_cuda_set_tf32(1);
    printf("-- colour loss cpu %.7f gpu %.7f, MAE loss cpu %.7f gpu %.7f\n", c.loss_main, g.loss_main, c.loss_mae, g.loss_mae);
    check_close("colorize step: colour loss", &g.loss_main, &c.loss_main, 1, 1e-4);
    check_close("colorize step: MAE loss", &g.loss_mae, &c.loss_mae, 1, 1e-4);
    check_l2("colorize step: gradients of f, h, g", g.grads, c.grads, c.n, 1e-3);
    check_close("colorize prediction: decoded frame", g.rgb, c.rgb, (size_t)H * W * 3, 1e-3);
    free(c.grads); free(c.rgb); free(g.grads); free(g.rgb);
    free(img); free(gray); free(ids); free(w);
#endif
    return test_summary("gpu_color");
}
