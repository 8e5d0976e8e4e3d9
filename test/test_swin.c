// test/test_swin.c: Swin encoder f: shapes, and the backward of the whole encoder against
// finite differences (input and a sample of every parameter tensor) on odd input sizes.
#include "test.h"
#include <sys/wait.h>
#include <unistd.h>

// the encoder weights file: write, read back bit-exactly with its config; a file of
// another kind or a truncated one is refused with exit status 1
static void test_export_roundtrip(void) {
    if (system("mkdir -p test/tmp") != 0) { CHECK(0, "mkdir test/tmp"); return; }
    const char* path = "test/tmp/swin_export.bin";
    SwinConfig cfg = {4, 8, {1, 2, 1, 1}, {1, 2, 2, 4}, 7, 3};
    size_t n = swin_num_params(&cfg);
    float* params = (float*)mallocCheck(n * sizeof(float));
    Rng rng; rng_seed(&rng, 7);
    swin_init_params(params, &cfg, &rng);
    swin_save_export(path, &cfg, params);
    SwinConfig back;
    float* loaded = swin_load_hf_export(path, &back);
    CHECK(memcmp(&back, &cfg, sizeof(cfg)) == 0, "config read back differs");
    CHECK(memcmp(loaded, params, n * sizeof(float)) == 0, "parameters read back differ");
    free(loaded);
    // a checkpoint of another kind, then a truncated file: each must exit(1) cleanly
    for (int bad = 0; bad < 2; bad++) {
        int h[CKPT_HEADER_INTS] = {0};
        if (bad == 0) { h[2] = 1; checkpoint_write(path, h, params, n); }
        else { swin_save_export(path, &cfg, params); if (truncate(path, 2048) != 0) CHECK(0, "truncate"); }
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            freopen("/dev/null", "w", stderr);
            SwinConfig c2;
            swin_load_hf_export(path, &c2);
            _exit(0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1, "bad export file %d: status %d", bad, status);
    }
    remove(path);
    free(params);
}

typedef struct {
    SwinConfig cfg; SwinParams p; SwinActs a; int* rel_index;
    float* inp; float* R[4]; int B;
} SwinCase;

static double swin_loss(void* ctx) {
    SwinCase* t = ctx;
    swin_forward(&t->cfg, &t->p, &t->a, t->rel_index, t->inp, t->B);
    double s = 0.0;
    for (int k = 0; k < 4; k++)
        s += dot_double(t->a.out[k], t->R[k], (size_t)t->B * t->a.Hs[k] * t->a.Ws[k] * t->a.C[k]);
    return s;
}

static float g_eps = 5e-2f;   // float32 through ~10 layers: roundoff needs a large step
int main(int argc, char** argv) {
    if (argc > 1) g_eps = (float)atof(argv[1]);
    Rng rng; rng_seed(&rng, 99);
    SwinCase t;
    SwinConfig cfg = {4, 8, {2, 2, 1, 1}, {1, 2, 2, 2}, 7, 4};
    t.cfg = cfg; t.B = 2;
    int H = 37, W = 45;
    size_t np = swin_num_params(&cfg);
    float* params = calloc(np, sizeof(float));
    swin_init_params(params, &cfg, &rng);
    // perturb every parameter so no tensor is trivially 0 or 1
    for (size_t i = 0; i < np; i++) params[i] += 0.1f * (rng_uniform(&rng) - 0.5f);
    swin_point_params(&t.p, params, &cfg);
    size_t na = swin_point_acts(&t.a, NULL, &cfg, t.B, H, W);
    float* acts = calloc(na, sizeof(float)), *dacts = calloc(na, sizeof(float));
    swin_point_acts(&t.a, acts, &cfg, t.B, H, W);
    SwinActs da; swin_point_acts(&da, dacts, &cfg, t.B, H, W);
    swin_init_acts(&t.a, &cfg);
    t.rel_index = swin_make_rel_index(&cfg);
    CHECK(t.a.Hs[0] == 10 && t.a.Ws[0] == 12 && t.a.Hs[3] == 2 && t.a.Ws[3] == 2,
          "stage sizes %dx%d .. %dx%d", t.a.Hs[0], t.a.Ws[0], t.a.Hs[3], t.a.Ws[3]);
    size_t nin = (size_t)t.B * H * W * cfg.in_chans;
    t.inp = random_tensor(&rng, nin, -1, 1);
    for (int k = 0; k < 4; k++) t.R[k] = random_tensor(&rng, (size_t)t.B * t.a.Hs[k] * t.a.Ws[k] * t.a.C[k], -1, 1);

    // analytic gradients
    swin_loss(&t);
    float* grads = calloc(np, sizeof(float)), *dinp = calloc(nin, sizeof(float));
    SwinParams g; swin_point_params(&g, grads, &cfg);
    swin_backward(&cfg, &t.p, &g, &t.a, &da, t.rel_index, t.inp, t.R, dinp, t.B);

    // the batch is independent: image 1's outputs do not depend on image 0's input
    {
        float* out1 = malloc(t.a.Hs[0] * t.a.Ws[0] * t.a.C[0] * sizeof(float));
        size_t n1 = (size_t)t.a.Hs[0] * t.a.Ws[0] * t.a.C[0];
        memcpy(out1, t.a.out[0] + n1, n1 * sizeof(float));
        float keep = t.inp[5]; t.inp[5] += 1.0f;
        swin_loss(&t);
        CHECK(memcmp(out1, t.a.out[0] + n1, n1 * sizeof(float)) == 0, "image 1 changed when image 0 changed");
        t.inp[5] = keep;
        free(out1);
    }

    // a smaller batch in the same activations: image 0 alone gives image 0's outputs
    {
        swin_loss(&t);
        size_t n0[4];
        float* full[4];
        for (int k = 0; k < 4; k++) {
            n0[k] = (size_t)t.a.Hs[k] * t.a.Ws[k] * t.a.C[k];
            full[k] = malloc(n0[k] * sizeof(float));
            memcpy(full[k], t.a.out[k], n0[k] * sizeof(float));
        }
        t.B = 1;
        swin_loss(&t);
        t.B = 2;
        int same = 1;
        for (int k = 0; k < 4; k++) { same &= memcmp(full[k], t.a.out[k], n0[k] * sizeof(float)) == 0; free(full[k]); }
        CHECK(same, "B=1 in B=2 activations differs from image 0 of the B=2 pass");
        CHECK(swin_num_acts(&cfg, 2, H, W) == na, "swin_num_acts");
    }

    grad_check("swin dinp", t.inp, nin, dinp, swin_loss, &t, g_eps, 2e-2, 60);
    // a sample of every parameter tensor: walk the arena in tensor-sized steps via the struct
    SwinParams* P = &t.p;
    struct { const char* name; float* x; float* gx; size_t n; } tensors[64];
    int nt = 0;
    #define ADD(nm, field, count) do { tensors[nt].name = nm; tensors[nt].x = P->field; \
        tensors[nt].gx = g.field; tensors[nt].n = count; nt++; } while (0)
    int E = cfg.embed_dim;
    ADD("patch_w", patch_w, (size_t)E * 16 * 4);
    ADD("patch_b", patch_b, E);
    ADD("patch_norm_w", patch_norm_w, E);
    ADD("patch_norm_b", patch_norm_b, E);
    int blk = 0;
    for (int s = 0; s < 4; s++) {
        size_t C = (size_t)E << s;
        for (int i = 0; i < cfg.depths[s]; i++, blk++) {
            if (!(s == 0 || s == 3 || i == 1)) continue;   // stage 0 both, shifted blocks, last stage
            ADD("norm1_w", block[blk].norm1_w, C);
            ADD("qkv_w", block[blk].qkv_w, 3 * C * C);
            ADD("qkv_b", block[blk].qkv_b, 3 * C);
            ADD("rel_table", block[blk].rel_table, 169 * cfg.num_heads[s]);
            ADD("proj_w", block[blk].proj_w, C * C);
            ADD("norm2_b", block[blk].norm2_b, C);
            ADD("fc1_w", block[blk].fc1_w, 4 * C * C);
            ADD("fc2_b", block[blk].fc2_b, C);
        }
        ADD("out_norm_w", out_norm_w[s], C);
        if (s < 3) { ADD("merge_norm_b", merge_norm_b[s], 4 * C); ADD("merge_w", merge_w[s], 8 * C * C); }
    }
    #undef ADD
    for (int k = 0; k < nt; k++) {
        char label[64];
        snprintf(label, sizeof(label), "swin %s (#%d)", tensors[k].name, k);
        grad_check(label, tensors[k].x, tensors[k].n, tensors[k].gx, swin_loss, &t, g_eps, 2e-2, 12);
    }
    free(params); free(acts); free(dacts); free(grads); free(dinp); free(t.inp);
    for (int k = 0; k < 4; k++) free(t.R[k]);
    ttt_free(t.rel_index);
    test_export_roundtrip();
    return test_summary("test_swin");
}
