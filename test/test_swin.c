// test/test_swin.c: Swin encoder f: shapes, and the backward of the whole encoder against
// finite differences (input and a sample of every parameter tensor) on odd input sizes;
// drop-path: the forward of every block against a manual computation with a fixed table,
// a fully dropped block passing its input through, an all-ones table giving exactly the
// plain pass, finite differences through a table with zeros, and the statistics of
// swin_drop_path_scales.
#include "test.h"
#include <sys/wait.h>
#include <unistd.h>

static void load_export(const char* path) { SwinConfig c; free(swin_load_hf_export(path, &c)); }

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
        char err[512];
        int status;
        run_path_in_child(load_export, path, err, sizeof(err), &status);
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

static size_t stage_numel(const SwinActs* a, int s, int B) { return (size_t)B * a->Hs[s] * a->Ws[s] * a->C[s]; }

// forward + backward of the case into grads (zeroed here) and dinp (zeroed here)
static void swin_grads(SwinCase* t, SwinActs* da, float* grads, size_t np, float* dinp, size_t nin) {
    memset(grads, 0, np * sizeof(float));
    memset(dinp, 0, nin * sizeof(float));
    SwinParams g; swin_point_params(&g, grads, &t->cfg);
    swin_loss(t);
    swin_backward(&t->cfg, &t->p, &g, &t->a, da, t->rel_index, t->inp, t->R, dinp, t->B);
}

// copies of the four outputs
static void save_outputs(const SwinCase* t, float* saved[4]) {
    for (int k = 0; k < 4; k++) {
        size_t n = stage_numel(&t->a, k, t->B);
        saved[k] = malloc(n * sizeof(float));
        memcpy(saved[k], t->a.out[k], n * sizeof(float));
    }
}

// every block of the last forward against a manual computation from its saved activations:
// x_mid = x_in + s_attn[b] * reverse(proj), x_out = x_mid + s_mlp[b] * fc2(gelu)
static void check_blocks_manually(const SwinCase* t, const float* table) {
    const SwinConfig* cfg = &t->cfg;
    int blk = 0, B = t->B, w = cfg->window;
    double worst = 0.0;
    for (int s = 0; s < 4; s++) {
        int Hs = t->a.Hs[s], Ws = t->a.Ws[s], C = t->a.C[s], Ch = C * cfg->mlp_ratio;
        size_t per = (size_t)Hs * Ws * C, n = (size_t)B * per;
        int Nw = B * t->a.nW[s] * w * w;
        float* branch = malloc(n * sizeof(float));
        float* want = malloc(n * sizeof(float));
        float* proj = malloc((size_t)Nw * C * sizeof(float));     // not kept by the forward:
        float* hidden = malloc(n * cfg->mlp_ratio * sizeof(float)); // recomputed here
        float* pre = malloc(n * cfg->mlp_ratio * sizeof(float));
        for (int i = 0; i < cfg->depths[s]; i++, blk++) {
            const SwinBlockActs* b = &t->a.block[blk];
            const SwinBlockParams* bp = &t->p.block[blk];
            const float* x_out = (i + 1 < cfg->depths[s]) ? t->a.block[blk + 1].x_in : t->a.stage_out[s];
            linear_forward_cpu(proj, b->attn, bp->proj_w, bp->proj_b, Nw, C, C);
            window_reverse_forward_cpu(branch, proj, B, Hs, Ws, C, w, (i % 2 == 1) ? w / 2 : 0);
            for (size_t j = 0; j < n; j++) want[j] = b->x_in[j] + table[(size_t)2 * blk * B + j / per] * branch[j];
            worst = fmax(worst, max_rel_error(b->x_mid, want, n));
            // b->fc1 is kept without its bias (mlp_forward's pre): gelu(fc1 + b1)
            for (size_t j = 0; j < n * cfg->mlp_ratio; j++) pre[j] = b->fc1[j] + bp->fc1_b[j % Ch];
            gelu_forward_cpu(hidden, pre, n * cfg->mlp_ratio);
            linear_forward_cpu(branch, hidden, bp->fc2_w, bp->fc2_b, B * Hs * Ws, Ch, C);
            for (size_t j = 0; j < n; j++) want[j] = b->x_mid[j] + table[(size_t)(2 * blk + 1) * B + j / per] * branch[j];
            worst = fmax(worst, max_rel_error(x_out, want, n));
        }
        free(branch); free(want); free(proj); free(hidden); free(pre);
    }
    printf("%-4s %-48s rel err %.3e (tol 1e-06)\n", worst <= 1e-6 ? "ok" : "FAIL",
           "drop-path: every block's residuals by hand", worst);
    CHECK(worst <= 1e-6, "drop-path blocks differ from the manual computation: %.3e", worst);
}

typedef struct { float* table; const SwinConfig* cfg; int B; float rate; Rng* rng; } DropPathCall;
static void drop_path_call(void* p) {
    DropPathCall* c = p;
    swin_drop_path_scales(c->table, c->cfg, c->B, c->rate, c->rng);
}

// swin_drop_path_scales: per-block zero fractions near the linear rates, values exactly 0 or
// 1/(1-p), independent draws for the two branches, rate 0 all ones (and no draws), a single
// block never dropped, rates outside [0, 1) refused with exit status 1
static void test_drop_path_scales(void) {
    SwinConfig cfg = swin_config_small();   // 24 blocks
    int n = 24, B = 8, draws = 2000;
    float rate = 0.3f;
    float* table = malloc((size_t)2 * n * B * sizeof(float));
    long* zeros = calloc(n, sizeof(long));
    long both_last = 0;   // last block: attention and MLP branch of a sample both dropped
    int values_ok = 1;
    Rng rng; rng_seed(&rng, 4242);
    for (int d = 0; d < draws; d++) {
        swin_drop_path_scales(table, &cfg, B, rate, &rng);
        for (int blk = 0; blk < n; blk++) {
            double p = (double)rate * blk / (n - 1);
            for (int k = 0; k < 2 * B; k++) {
                float v = table[(size_t)2 * blk * B + k];
                if (v == 0.0f) zeros[blk]++;
                else values_ok &= fabs(v * (1.0 - p) - 1.0) < 1e-6 && (blk > 0 || v == 1.0f);
            }
        }
        for (int b = 0; b < B; b++)
            both_last += table[(size_t)2 * (n - 1) * B + b] == 0.0f && table[(size_t)(2 * n - 1) * B + b] == 0.0f;
    }
    CHECK(values_ok, "drop-path scales: a value other than 0 or 1/(1-p)");
    double worst_sigma = 0.0;
    int fractions_ok = zeros[0] == 0;
    for (int blk = 1; blk < n; blk++) {
        double p = (double)rate * blk / (n - 1), m = 2.0 * B * draws;
        double sigma = fabs(zeros[blk] / m - p) / sqrt(p * (1 - p) / m);
        worst_sigma = fmax(worst_sigma, sigma);
        fractions_ok &= sigma < 5.0;
    }
    printf("%-4s %-48s worst %.2f sigma (tol 5)\n", fractions_ok ? "ok" : "FAIL",
           "drop-path: zero fraction per block vs its rate", worst_sigma);
    CHECK(fractions_ok, "drop-path zero fractions off their rates (block 0: %ld zeros)", zeros[0]);
    double both = (double)both_last / ((double)B * draws), p2 = (double)rate * rate;
    CHECK(fabs(both - p2) < 5.0 * sqrt(p2 * (1 - p2) / ((double)B * draws)),
          "drop-path: both branches of the last block dropped in %.4f of samples, want %.4f", both, p2);
    // rate 0: all ones, rng untouched
    Rng before = rng;
    swin_drop_path_scales(table, &cfg, B, 0.0f, &rng);
    int ones = rng.state == before.state;
    for (int k = 0; k < 2 * n * B; k++) ones &= table[k] == 1.0f;
    CHECK(ones, "drop-path rate 0: not all ones, or the rng moved");
    // one block in all: its rate is 0
    SwinConfig one = {4, 8, {1, 0, 0, 0}, {1, 1, 1, 1}, 7, 4};
    swin_drop_path_scales(table, &one, B, 0.5f, &rng);
    ones = 1;
    for (int k = 0; k < 2 * B; k++) ones &= table[k] == 1.0f;
    CHECK(ones, "drop-path with a single block: not all ones");
    float bad_rates[3] = {1.0f, -0.1f, NAN};
    for (int i = 0; i < 3; i++) {
        DropPathCall c = {table, &cfg, B, bad_rates[i], &rng};
        char err[512];
        int status;
        run_in_child(drop_path_call, &c, err, sizeof(err), &status);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1, "drop-path rate %g: status %d", bad_rates[i], status);
    }
    free(table); free(zeros);
}

// drop-path through the encoder: the case t (B = 2) with grads/dinp scratch
static void test_drop_path(SwinCase* t, SwinActs* da, size_t np, size_t nin) {
    const SwinConfig* cfg = &t->cfg;
    int nblocks = cfg->depths[0] + cfg->depths[1] + cfg->depths[2] + cfg->depths[3], B = t->B;
    size_t ntab = (size_t)2 * nblocks * B;
    float* grads = calloc(np, sizeof(float)), *dinp = calloc(nin, sizeof(float));
    float* grads_ref = calloc(np, sizeof(float)), *dinp_ref = calloc(nin, sizeof(float));
    float* plain[4], *with_ones[4];
    t->a.drop_scale = NULL;
    swin_grads(t, da, grads_ref, np, dinp_ref, nin);
    save_outputs(t, plain);

    // an all-ones table: exactly the plain pass, forward and backward
    float* ones = malloc(ntab * sizeof(float));
    for (size_t k = 0; k < ntab; k++) ones[k] = 1.0f;
    t->a.drop_scale = ones;
    swin_grads(t, da, grads, np, dinp, nin);
    save_outputs(t, with_ones);
    for (int k = 0; k < 4; k++) {
        char label[64];
        snprintf(label, sizeof(label), "drop-path all ones: out[%d] exact", k);
        check_close(label, with_ones[k], plain[k], stage_numel(&t->a, k, B), 0);
        free(with_ones[k]);
    }
    check_close("drop-path all ones: dinp exact", dinp, dinp_ref, nin, 0);
    check_close("drop-path all ones: d(parameters) exact", grads, grads_ref, np, 0);

    // a fixed table: block blk keeps a branch with 1/(1-p), p = 0.1 + 0.3 blk / (n - 1), or
    // drops it (0): block 0 entirely for image 1, the last block of stage 0 and the first of
    // stage 1 entirely for image 0, and single branches elsewhere
    float* table = malloc(ntab * sizeof(float));
    for (int blk = 0; blk < nblocks; blk++)
        for (int k = 0; k < 2 * B; k++)
            table[(size_t)2 * blk * B + k] = 1.0f / (1.0f - (0.1f + 0.3f * blk / (nblocks - 1)));
    #define DROP(blk, branch, b) (table[(size_t)(2 * (blk) + (branch)) * B + (b)] = 0.0f)
    DROP(0, 0, 1); DROP(0, 1, 1);
    DROP(1, 0, 0); DROP(1, 1, 0);
    DROP(2, 0, 0); DROP(2, 1, 0);
    DROP(3, 1, 1);
    DROP(4, 0, 1);
    DROP(5, 1, 0);
    #undef DROP
    t->a.drop_scale = table;
    swin_grads(t, da, grads, np, dinp, nin);
    check_blocks_manually(t, table);
    {
        double diff = l2_rel_error(t->a.out[3], plain[3], stage_numel(&t->a, 3, B));
        CHECK(diff > 1e-2, "drop-path table barely changes out[3]: %.3e", diff);
    }
    // a block dropped entirely passes its input through, and its input gradient is its
    // output gradient: block 0 for image 1 (x_out = block 1's x_in), blocks 1, 2 for image 0
    // (block 1 ends stage 0 in x_out = stage_out[0]; block 2 starts stage 1)
    {
        size_t per0 = stage_numel(&t->a, 0, 1), per1 = stage_numel(&t->a, 1, 1);
        check_close("drop-path block 0 dropped: x_out = x_in (image 1)", t->a.block[1].x_in + per0,
                    t->a.block[0].x_in + per0, per0, 0);
        check_close("drop-path block 0 dropped: dx_in = dx_out (image 1)", da->block[0].x_in + per0,
                    da->block[1].x_in + per0, per0, 0);
        check_close("drop-path block 1 dropped: x_out = x_in (image 0)", t->a.stage_out[0],
                    t->a.block[1].x_in, per0, 0);
        check_close("drop-path block 2 dropped: x_out = x_in (image 0)", t->a.block[3].x_in,
                    t->a.block[2].x_in, per1, 0);
        check_close("drop-path block 2 dropped: dx_in = dx_out (image 0)", da->block[2].x_in,
                    da->block[3].x_in, per1, 0);
        double kept = l2_rel_error(t->a.block[1].x_in, t->a.block[0].x_in, per0);
        CHECK(kept > 1e-3, "drop-path: image 0's block 0 (kept) changed its input by only %.3e", kept);
    }
    // the same table's column of image 0 with B = 1 in the B = 2 activations: image 0's outputs
    {
        float* full[4];
        save_outputs(t, full);
        float* col = malloc((size_t)2 * nblocks * sizeof(float));
        for (int r = 0; r < 2 * nblocks; r++) col[r] = table[(size_t)r * B];
        t->a.drop_scale = col;
        t->B = 1;
        swin_loss(t);
        t->B = B;
        int same = 1;
        for (int k = 0; k < 4; k++) { same &= memcmp(full[k], t->a.out[k], stage_numel(&t->a, k, 1) * sizeof(float)) == 0; free(full[k]); }
        CHECK(same, "drop-path: B=1 with image 0's column differs from image 0 of the B=2 pass");
        free(col);
        t->a.drop_scale = table;
    }
    // finite differences through the table
    grad_check("drop-path swin dinp", t->inp, nin, dinp, swin_loss, t, g_eps, 2e-2, 60);
    SwinParams g; swin_point_params(&g, grads, cfg);
    // a sample of tensors of every stage (sizes for the case's config: E 8, depths 2 2 1 1)
    struct { const char* name; float* x; float* gx; size_t n; } tensors[] = {
        {"patch_w", t->p.patch_w, g.patch_w, (size_t)cfg->embed_dim * 16 * cfg->in_chans},
        {"block 0 qkv_w", t->p.block[0].qkv_w, g.block[0].qkv_w, (size_t)3 * 8 * 8},
        {"block 0 fc2_b", t->p.block[0].fc2_b, g.block[0].fc2_b, 8},
        {"block 1 proj_w", t->p.block[1].proj_w, g.block[1].proj_w, (size_t)8 * 8},
        {"block 1 fc1_w", t->p.block[1].fc1_w, g.block[1].fc1_w, (size_t)32 * 8},
        {"block 3 rel_table", t->p.block[3].rel_table, g.block[3].rel_table, (size_t)169 * cfg->num_heads[1]},
        {"block 3 fc2_w", t->p.block[3].fc2_w, g.block[3].fc2_w, (size_t)16 * 64},
        {"block 4 qkv_b", t->p.block[4].qkv_b, g.block[4].qkv_b, (size_t)3 * 32},
        {"block 5 fc1_b", t->p.block[5].fc1_b, g.block[5].fc1_b, (size_t)4 * 64},
        {"merge_w[0]", t->p.merge_w[0], g.merge_w[0], (size_t)16 * 32},
    };
    for (size_t k = 0; k < sizeof(tensors) / sizeof(tensors[0]); k++) {
        char label[64];
        snprintf(label, sizeof(label), "drop-path swin %s", tensors[k].name);
        grad_check(label, tensors[k].x, tensors[k].n, tensors[k].gx, swin_loss, t, g_eps, 2e-2, 12);
    }
    t->a.drop_scale = NULL;
    for (int k = 0; k < 4; k++) free(plain[k]);
    free(grads); free(dinp); free(grads_ref); free(dinp_ref); free(ones); free(table);
}

// swin_backward reads no gradient buffer before writing it (most are not zeroed: their first op
// writes them, swin.c): with the whole gradient arena filled with NaN first, the gradients equal
// those from a zeroed arena bit for bit. Plain, with a drop-path table (zeros in it), with only
// some outputs' gradients given (dout[s] NULL), and B = 1 in the B = 2 buffers.
static void test_garbage_arena(SwinCase* t, SwinActs* da, float* dacts, size_t nda, size_t np, size_t nin) {
    int B = t->B, nblocks = t->cfg.depths[0] + t->cfg.depths[1] + t->cfg.depths[2] + t->cfg.depths[3];
    Rng rng; rng_seed(&rng, 5);
    float* table = malloc((size_t)2 * nblocks * B * sizeof(float));
    swin_drop_path_scales(table, &t->cfg, B, 0.5f, &rng);
    table[0] = 0.0f;   // image 0's attention branch of block 0 dropped, at least
    float *grads[2], *dinp[2];
    for (int k = 0; k < 2; k++) { grads[k] = malloc(np * sizeof(float)); dinp[k] = malloc(nin * sizeof(float)); }
    const char* names[4] = {"plain", "drop-path table", "dout[0], dout[2] NULL", "B = 1 of 2"};
    for (int c = 0; c < 4; c++) {
        t->a.drop_scale = c == 1 ? table : NULL;
        int Bc = c == 3 ? 1 : B;
        float* dout[4] = {t->R[0], t->R[1], t->R[2], t->R[3]};
        if (c == 2) dout[0] = dout[2] = NULL;
        swin_forward(&t->cfg, &t->p, &t->a, t->rel_index, t->inp, Bc);
        for (int k = 0; k < 2; k++) {   // k 0: zeroed arena, 1: NaN arena
            if (k == 0) memset(dacts, 0, nda * sizeof(float));
            else for (size_t i = 0; i < nda; i++) dacts[i] = NAN;
            memset(grads[k], 0, np * sizeof(float));
            memset(dinp[k], 0, nin * sizeof(float));
            SwinParams g; swin_point_params(&g, grads[k], &t->cfg);
            swin_backward(&t->cfg, &t->p, &g, &t->a, da, t->rel_index, t->inp, dout, dinp[k], Bc);
        }
        size_t nin_c = nin / B * Bc;
        int finite = 1;
        for (size_t i = 0; i < np; i++) finite &= isfinite(grads[1][i]) != 0;
        CHECK(finite && memcmp(grads[0], grads[1], np * sizeof(float)) == 0,
              "swin_backward (%s): parameter gradients differ from a NaN-filled gradient arena", names[c]);
        CHECK(memcmp(dinp[0], dinp[1], nin_c * sizeof(float)) == 0,
              "swin_backward (%s): dinp differs from a NaN-filled gradient arena", names[c]);
    }
    t->a.drop_scale = NULL;
    for (int k = 0; k < 2; k++) { free(grads[k]); free(dinp[k]); }
    free(table);
}

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
    float* acts = calloc(na, sizeof(float));
    SwinActs da;
    size_t nda = swin_point_grad_acts(&da, NULL, &cfg, t.B, H, W);
    float* dacts = calloc(nda, sizeof(float));
    swin_point_acts(&t.a, acts, &cfg, t.B, H, W);
    swin_point_grad_acts(&da, dacts, &cfg, t.B, H, W);
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
    test_drop_path(&t, &da, np, nin);
    test_garbage_arena(&t, &da, dacts, nda, np, nin);
    {   // Swin-S on 8 frames of 384 x 1248 (counted, nothing allocated): the gradient buffers
        // (one block's set shared by all blocks) against the activations
        SwinConfig ss = model_config_swin_s(19).swin;
        SwinActs tmp;
        size_t n_acts = swin_num_acts(&ss, 8, 384, 1248), n_grads = swin_point_grad_acts(&tmp, NULL, &ss, 8, 384, 1248);
        printf("     Swin-S, B=8, 384x1248: activations %.2f GiB, gradient buffers %.2f GiB\n",
               n_acts * 4.0 / (1 << 30), n_grads * 4.0 / (1 << 30));
        CHECK(n_grads * 3 < n_acts, "Swin-S gradient buffers %zu floats, not under a third of the activations' %zu", n_grads, n_acts);
        // the paper's step, 32 crops of 512 x 1024: 42.28 GiB of activations while LN1 and LN2
        // were stored, 36.47 GiB since they are recomputed in the backward
        size_t n_paper = swin_num_acts(&ss, 32, 512, 1024);
        printf("     Swin-S, B=32, 512x1024: activations %.2f GiB, gradient buffers %.2f GiB\n",
               n_paper * 4.0 / (1 << 30), swin_point_grad_acts(&tmp, NULL, &ss, 32, 512, 1024) * 4.0 / (1 << 30));
        CHECK(n_paper * 4.0 / (1 << 30) < 37.0, "Swin-S B=32 512x1024: %zu floats of activations, LN1/LN2 kept?",
              n_paper);
    }
    test_drop_path_scales();
    free(params); free(acts); free(dacts); free(grads); free(dinp); free(t.inp);
    for (int k = 0; k < 4; k++) free(t.R[k]);
    ttt_free(t.rel_index);
    test_export_roundtrip();
    return test_summary("test_swin");
}
