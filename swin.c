// swin.c: the shared encoder f, a Swin Transformer as Mask2Former uses it.
// Semantics (channels-last throughout):
//   patch embed: zero-pad bottom/right to a multiple of 4, conv 4x4 stride 4, LayerNorm
//   block:  x = x + s_attn[b] * reverse(attn(partition(roll(pad(LN1(x)), -shift))))
//           x = x + s_mlp[b] * fc2(gelu(fc1(LN2(x))))
//     (fused ops: layernorm_partition writes LN1 in window order, window_reverse_residual
//     does reverse, scale and residual in one pass, scale_rows_add the MLP's; LN1 and LN2
//     themselves are not kept: the backward recomputes them from x and their statistics)
//     s_attn, s_mlp: drop-path (stochastic depth) scales per sample, 0 or 1/(1-p) (the
//     table a->drop_scale), or 1 when it is NULL (prediction).
//     window attention: qkv linear, q.k / sqrt(d) + relative position bias (+ the -100 mask
//     between regions that the roll brought together), softmax, proj linear. Padded tokens
//     are zeros after LN1 (so their k, v are the biases) and are not masked.
//     No attention map is kept (window_attention_forward): the activations hold one
//     log-sum-exp per score row (att_lse), and the backward recomputes the softmax from it.
//     even blocks: shift 0; odd blocks: shift = window / 2, at every stage resolution:
//     HF's SwinBackbone calls its encoder with always_partition=True, which skips
//     SwinLayer.set_shift_and_window_size (the classification model's rule that drops the
//     shift when a stage fits in one window), and the original Mask2Former Swin never
//     drops it either.
//   stage output: LayerNorm(x) -> one of the four outputs
//   patch merging (stages 1..3): gather 2x2 neighbours into 4C, LayerNorm, Linear(4C->2C)
#include "ttt.h"

SwinConfig swin_config_small(void) {
    SwinConfig c = {4, 96, {2, 2, 18, 2}, {3, 6, 12, 24}, 7, 4};
    return c;
}

SwinConfig swin_config_tiny(void) {
    SwinConfig c = {4, 16, {2, 2, 2, 2}, {1, 2, 2, 4}, 7, 4};
    return c;
}

SwinConfig swin_config_demo(void) {
    SwinConfig c = {4, 32, {1, 1, 2, 1}, {1, 2, 4, 8}, 7, 4};
    return c;
}

// ----------------------------------------------------------------------------
// parameters

// take n floats from the arena (counting only when base is NULL)
static float* take(float* base, size_t* off, size_t n) {
    float* p = base ? base + *off : NULL;
    *off += n;
    return p;
}

// the same for activations: each piece starts at a multiple of ACT_ALIGN floats (ttt.h says why)
static float* take_act(float* base, size_t* off, size_t n) {
    *off = (*off + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
    return take(base, off, n);
}

static size_t swin_layout_params(SwinParams* p, float* base, const SwinConfig* cfg) {
    SwinParams dummy;
    if (p == NULL) p = &dummy;
    size_t off = 0;
    int E = cfg->embed_dim, w = cfg->window, T = (2 * w - 1) * (2 * w - 1);
    p->patch_w = take(base, &off, (size_t)E * 16 * cfg->in_chans);
    p->patch_b = take(base, &off, E);
    p->patch_norm_w = take(base, &off, E);
    p->patch_norm_b = take(base, &off, E);
    int blk = 0;
    for (int s = 0; s < 4; s++) {
        size_t C = (size_t)E << s, Ch = C * cfg->mlp_ratio;
        for (int i = 0; i < cfg->depths[s]; i++, blk++) {
            SwinBlockParams* b = &p->block[blk];
            b->norm1_w = take(base, &off, C);
            b->norm1_b = take(base, &off, C);
            b->qkv_w = take(base, &off, 3 * C * C);
            b->qkv_b = take(base, &off, 3 * C);
            b->rel_table = take(base, &off, (size_t)T * cfg->num_heads[s]);
            b->proj_w = take(base, &off, C * C);
            b->proj_b = take(base, &off, C);
            b->norm2_w = take(base, &off, C);
            b->norm2_b = take(base, &off, C);
            b->fc1_w = take(base, &off, Ch * C);
            b->fc1_b = take(base, &off, Ch);
            b->fc2_w = take(base, &off, C * Ch);
            b->fc2_b = take(base, &off, C);
        }
        p->out_norm_w[s] = take(base, &off, C);
        p->out_norm_b[s] = take(base, &off, C);
        if (s < 3) {
            p->merge_norm_w[s] = take(base, &off, 4 * C);
            p->merge_norm_b[s] = take(base, &off, 4 * C);
            p->merge_w[s] = take(base, &off, 2 * C * 4 * C);
        }
    }
    return off;
}

static int swin_num_blocks(const SwinConfig* cfg) {
    int n = cfg->depths[0] + cfg->depths[1] + cfg->depths[2] + cfg->depths[3];
    if (n > SWIN_MAX_BLOCKS) ttt_die("Swin config has %d blocks; at most %d are supported", n, SWIN_MAX_BLOCKS);
    return n;
}

size_t swin_num_params(const SwinConfig* cfg) {
    swin_num_blocks(cfg);
    return swin_layout_params(NULL, NULL, cfg);
}

void swin_point_params(SwinParams* p, float* base, const SwinConfig* cfg) {
    swin_num_blocks(cfg);
    swin_layout_params(p, base, cfg);
}

static void fill(float* x, size_t n, float v) { for (size_t i = 0; i < n; i++) x[i] = v; }

void swin_init_params(float* host_base, const SwinConfig* cfg, Rng* rng) {
    SwinParams p;
    swin_point_params(&p, host_base, cfg);
    memset(host_base, 0, swin_num_params(cfg) * sizeof(float));
    int E = cfg->embed_dim, T = (2 * cfg->window - 1) * (2 * cfg->window - 1);
    float bound = 1.0f / sqrtf(16.0f * cfg->in_chans);
    rng_fill_uniform(rng, p.patch_w, (size_t)E * 16 * cfg->in_chans, -bound, bound);
    fill(p.patch_norm_w, E, 1.0f);
    int blk = 0;
    for (int s = 0; s < 4; s++) {
        size_t C = (size_t)E << s, Ch = C * cfg->mlp_ratio;
        for (int i = 0; i < cfg->depths[s]; i++, blk++) {
            SwinBlockParams* b = &p.block[blk];
            fill(b->norm1_w, C, 1.0f);
            fill(b->norm2_w, C, 1.0f);
            rng_fill_normal(rng, b->qkv_w, 3 * C * C, 0.0f, 0.02f);
            rng_fill_normal(rng, b->rel_table, (size_t)T * cfg->num_heads[s], 0.0f, 0.02f);
            rng_fill_normal(rng, b->proj_w, C * C, 0.0f, 0.02f);
            rng_fill_normal(rng, b->fc1_w, Ch * C, 0.0f, 0.02f);
            rng_fill_normal(rng, b->fc2_w, C * Ch, 0.0f, 0.02f);
        }
        fill(p.out_norm_w[s], C, 1.0f);
        if (s < 3) {
            fill(p.merge_norm_w[s], 4 * C, 1.0f);
            rng_fill_normal(rng, p.merge_w[s], 2 * C * 4 * C, 0.0f, 0.02f);
        }
    }
}

// ----------------------------------------------------------------------------
// activations

// the largest (B, Hs, Ws, C), (B*nW, w*w, C) and (B, Hs, Ws, 4C) of the four stages
static void largest_stage(const SwinActs* a, const SwinConfig* cfg, int B,
                          size_t* max_NC, size_t* max_NwC, size_t* max_NCh) {
    int T = cfg->window * cfg->window;
    *max_NC = *max_NwC = *max_NCh = 0;
    for (int s = 0; s < 4; s++) {
        size_t NC = (size_t)B * a->Hs[s] * a->Ws[s] * a->C[s], NwC = (size_t)B * a->nW[s] * T * a->C[s];
        if (NC > *max_NC) *max_NC = NC;
        if (NwC > *max_NwC) *max_NwC = NwC;
        if (NC * cfg->mlp_ratio > *max_NCh) *max_NCh = NC * cfg->mlp_ratio;
    }
}

static void point_work_buffers(SwinActs* a, float* base, size_t* off, const SwinConfig* cfg, int B) {
    size_t max_NC, max_NwC, max_NCh;
    largest_stage(a, cfg, B, &max_NC, &max_NwC, &max_NCh);
    a->drop_grad = take_act(base, off, max_NC);
    a->work_windows = take_act(base, off, max_NwC);
    a->work_hidden = take_act(base, off, max_NCh);
}

size_t swin_point_acts(SwinActs* a, float* base, const SwinConfig* cfg, int max_B, int H, int W) {
    swin_num_blocks(cfg);
    if (max_B < 1 || H < 1 || W < 1) ttt_die("swin: bad input size %d x %d x %d", max_B, H, W);
    size_t off = 0;
    int w = cfg->window, T = w * w, B = max_B;
    a->max_B = max_B; a->H = H; a->W = W;
    a->drop_scale = NULL;
    int hs = (H + 3) / 4, wsz = (W + 3) / 4;
    for (int s = 0; s < 4; s++) {
        a->Hs[s] = hs; a->Ws[s] = wsz; a->C[s] = cfg->embed_dim << s;
        a->nW[s] = ((hs + w - 1) / w) * ((wsz + w - 1) / w);
        hs = (hs + 1) / 2; wsz = (wsz + 1) / 2;
    }
    size_t N0 = (size_t)B * a->Hs[0] * a->Ws[0];
    a->patch = take_act(base, &off, N0 * cfg->embed_dim);
    a->patch_ln_mean = take_act(base, &off, N0);
    a->patch_ln_rstd = take_act(base, &off, N0);
    int blk = 0;
    for (int s = 0; s < 4; s++) {
        size_t C = a->C[s], N = (size_t)B * a->Hs[s] * a->Ws[s], Nw = (size_t)B * a->nW[s] * T;
        int nh = cfg->num_heads[s];
        for (int i = 0; i < cfg->depths[s]; i++, blk++) {
            SwinBlockActs* b = &a->block[blk];
            b->x_in = take_act(base, &off, N * C);
            b->ln1_mean = take_act(base, &off, N);   // LN1 itself is written in window order
            b->ln1_rstd = take_act(base, &off, N);
            b->windows = NULL;   // partitioned LN1(x_in): work_windows, recomputed in the backward
            b->qkv = take_act(base, &off, Nw * 3 * C);
            b->rel_bias = take_act(base, &off, (size_t)nh * T * T);
            b->att_lse = take_act(base, &off, (size_t)B * a->nW[s] * nh * T);   // no (T, T) att map
            b->attn = take_act(base, &off, Nw * C);
            b->proj = NULL;      // only read by window_reverse: work_windows
            b->x_mid = take_act(base, &off, N * C);
            b->ln2 = NULL;       // LN2(x_mid), fc1's input: work_windows, recomputed in the backward
            b->ln2_mean = take_act(base, &off, N);
            b->ln2_rstd = take_act(base, &off, N);
            b->fc1 = take_act(base, &off, N * C * cfg->mlp_ratio);
            b->gelu = NULL;      // gelu(fc1): work_hidden, recomputed in the backward
        }
        a->stage_out[s] = take_act(base, &off, N * C);
        a->out[s] = take_act(base, &off, N * C);
        a->out_mean[s] = take_act(base, &off, N);
        a->out_rstd[s] = take_act(base, &off, N);
        if (s < 3) {
            size_t Nm = (size_t)B * a->Hs[s + 1] * a->Ws[s + 1];
            a->merged[s] = take_act(base, &off, Nm * 4 * C);
            a->merged_ln[s] = take_act(base, &off, Nm * 4 * C);
            a->merged_mean[s] = take_act(base, &off, Nm);
            a->merged_rstd[s] = take_act(base, &off, Nm);
        }
        a->shift_mask[s] = take_act(base, &off, (size_t)a->nW[s] * T * T);
    }
    point_work_buffers(a, base, &off, cfg, B);
    off = (off + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
    a->total = off;
    return off;
}

// one block's gradient buffers at stage s, packed from sb (NULL: only count); returns floats
static size_t point_block_grads(SwinBlockActs* one, float* sb, const SwinActs* da, const SwinConfig* cfg,
                                int B, int s) {
    int T = cfg->window * cfg->window, nh = cfg->num_heads[s];
    size_t C = da->C[s], N = (size_t)B * da->Hs[s] * da->Ws[s], Nw = (size_t)B * da->nW[s] * T;
    size_t so = 0;
    memset(one, 0, sizeof(*one));
    // rel_bias is the one buffer swin_backward zeroes (qkv_window_attention_backward accumulates
    // into it); every other buffer is written (=) by its first op (qkv: that op's scratch)
    one->qkv = take_act(sb, &so, Nw * 3 * C);
    one->rel_bias = take_act(sb, &so, (size_t)nh * T * T);
    one->windows = take_act(sb, &so, Nw * C);
    one->attn = take_act(sb, &so, Nw * C);
    one->proj = take_act(sb, &so, Nw * C);
    one->x_mid = NULL;   // dx_mid is dx_out's buffer, added to in place (swin_backward)
    one->ln2 = take_act(sb, &so, N * C);
    one->gelu = take_act(sb, &so, N * C * cfg->mlp_ratio);   // mlp_backward's dhidden (no fc1 gradient buffer)
    return (so + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
}

size_t swin_point_grad_acts(SwinActs* da, float* base, const SwinConfig* cfg, int max_B, int H, int W) {
    swin_num_blocks(cfg);
    if (max_B < 1 || H < 1 || W < 1) ttt_die("swin: bad input size %d x %d x %d", max_B, H, W);
    memset(da, 0, sizeof(*da));
    size_t off = 0;
    int w = cfg->window, B = max_B;
    da->max_B = max_B; da->H = H; da->W = W;
    int hs = (H + 3) / 4, wsz = (W + 3) / 4;
    for (int s = 0; s < 4; s++) {
        da->Hs[s] = hs; da->Ws[s] = wsz; da->C[s] = cfg->embed_dim << s;
        da->nW[s] = ((hs + w - 1) / w) * ((wsz + w - 1) / w);
        hs = (hs + 1) / 2; wsz = (wsz + 1) / 2;
    }
    da->patch = take_act(base, &off, (size_t)B * da->Hs[0] * da->Ws[0] * cfg->embed_dim);
    // the span of one block's buffers, shared by every block (packed per stage from its start,
    // so that a block zeroes one contiguous span of its own stage's size)
    size_t span = 0;
    SwinBlockActs one;
    for (int s = 0; s < 4; s++) {
        size_t n = point_block_grads(&one, NULL, da, cfg, B, s);
        if (n > span) span = n;
    }
    float* shared = take_act(base, &off, span);
    int blk = 0;
    for (int s = 0; s < 4; s++) {
        size_t C = da->C[s], N = (size_t)B * da->Hs[s] * da->Ws[s];
        point_block_grads(&one, shared, da, cfg, B, s);
        float* chain[2];   // the residual stream's gradient, alternating between blocks
        chain[0] = take_act(base, &off, N * C);
        chain[1] = take_act(base, &off, N * C);
        da->stage_out[s] = take_act(base, &off, N * C);
        if (s < 3) {
            size_t Nm = (size_t)B * da->Hs[s + 1] * da->Ws[s + 1];
            da->merged[s] = take_act(base, &off, Nm * 4 * C);
            da->merged_ln[s] = take_act(base, &off, Nm * 4 * C);
        }
        for (int i = 0; i < cfg->depths[s]; i++, blk++) {
            da->block[blk] = one;
            da->block[blk].x_in = chain[i % 2];
        }
    }
    point_work_buffers(da, base, &off, cfg, B);
    off = (off + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
    da->total = off;
    return off;
}

size_t swin_num_acts(const SwinConfig* cfg, int max_B, int H, int W) {
    SwinActs a;
    return swin_point_acts(&a, NULL, cfg, max_B, H, W);
}

// The shift mask of one stage: label each cell of the padded grid by its region
// (rows [0, Hp-w), [Hp-w, Hp-shift), [Hp-shift, Hp), likewise columns) in the rolled frame,
// then mask[win, i, j] = -100 where tokens i and j of the window carry different labels.
static void build_shift_mask(float* mask, int Hp, int Wp, int w, int shift) {
    int nWw = Wp / w, nW = (Hp / w) * nWw, T = w * w;
    int* region = (int*)mallocCheck((size_t)Hp * Wp * sizeof(int));
    for (int y = 0; y < Hp; y++) {
        int ry = y < Hp - w ? 0 : (y < Hp - shift ? 1 : 2);
        for (int x = 0; x < Wp; x++) {
            int rx = x < Wp - w ? 0 : (x < Wp - shift ? 1 : 2);
            region[y * Wp + x] = ry * 3 + rx;
        }
    }
    for (int win = 0; win < nW; win++) {
        int y0 = (win / nWw) * w, x0 = (win % nWw) * w;
        for (int i = 0; i < T; i++) {
            int ri = region[(y0 + i / w) * Wp + x0 + i % w];
            for (int j = 0; j < T; j++) {
                int rj = region[(y0 + j / w) * Wp + x0 + j % w];
                mask[((size_t)win * T + i) * T + j] = ri == rj ? 0.0f : -100.0f;
            }
        }
    }
    free(region);
}

void swin_init_acts(SwinActs* a, const SwinConfig* cfg) {
    int w = cfg->window, T = w * w;
    for (int s = 0; s < 4; s++) {
        int Hp = (a->Hs[s] + w - 1) / w * w, Wp = (a->Ws[s] + w - 1) / w * w;
        size_t n = (size_t)a->nW[s] * T * T;
        float* host = (float*)mallocCheck(n * sizeof(float));
        build_shift_mask(host, Hp, Wp, w, w / 2);
        ttt_to_device(a->shift_mask[s], host, n * sizeof(float));
        free(host);
    }
}

// index into the ((2w-1)^2, heads) table for token pair (i, j) of a window:
// (yi - yj + w - 1) * (2w - 1) + (xi - xj + w - 1)
int* swin_make_rel_index(const SwinConfig* cfg) {
    int w = cfg->window, T = w * w;
    int* host = (int*)mallocCheck((size_t)T * T * sizeof(int));
    for (int i = 0; i < T; i++)
        for (int j = 0; j < T; j++)
            host[i * T + j] = (i / w - j / w + w - 1) * (2 * w - 1) + (i % w - j % w + w - 1);
    int* dev = (int*)ttt_malloc((size_t)T * T * sizeof(int));
    ttt_to_device(dev, host, (size_t)T * T * sizeof(int));
    free(host);
    return dev;
}

// ----------------------------------------------------------------------------
// drop-path (stochastic depth), as timm's DropPath in the original Swin: block i of all
// n blocks has rate p_i = rate * i / (n - 1); each of its two branches is multiplied per
// sample by 0 with probability p_i, else by 1/(1-p_i).

void swin_drop_path_scales(float* host_scale, const SwinConfig* cfg, int B, float rate, Rng* rng) {
    int n = swin_num_blocks(cfg);
    if (!(rate >= 0.0f && rate < 1.0f)) ttt_die("drop-path rate %g: must be in [0, 1)", rate);
    if (B < 1) ttt_die("swin_drop_path_scales: batch %d", B);
    for (int blk = 0; blk < n; blk++) {
        float p = n > 1 ? rate * blk / (n - 1) : 0.0f;
        float keep_scale = 1.0f / (1.0f - p);
        // rows 2 blk (attention branch) and 2 blk + 1 (MLP branch); p = 0 draws nothing
        for (int k = 0; k < 2 * B; k++)
            host_scale[(size_t)2 * blk * B + k] = (p > 0.0f && rng_uniform(rng) < p) ? 0.0f : keep_scale;
    }
}

// row `row` (B) of the (2 * blocks, B) scale table, or NULL (scale 1) when there is no table
static const float* drop_row(const float* table, int row, int B) {
    return table ? table + (size_t)row * B : NULL;
}

// the backward of out = residual + s[b] * branch (B, n): the residual's gradient is dout itself
// (the caller keeps adding to dout's buffer in place: no copy); returned is the gradient that
// reaches the branch: dout without a table, else dout * s written to scratch
static const float* residual_branch_backward(float* scratch, const float* dout, const float* table, int row,
                                             int B, size_t n) {
    if (!table) return dout;
    scale_rows_add_backward(scratch, NULL, dout, drop_row(table, row, B), B, n);   // writes scratch
    return scratch;
}

// ----------------------------------------------------------------------------
// forward

void swin_forward(const SwinConfig* cfg, const SwinParams* p, SwinActs* a, const int* rel_index,
                  const float* inp, int B) {
    if (B > a->max_B) ttt_die("swin_forward: batch %d exceeds the planned %d", B, a->max_B);
    int E = cfg->embed_dim, w = cfg->window, T = w * w;
    // patch embedding: conv 4x4/4 reading zeros past the bottom/right edge, then LayerNorm
    size_t N0 = (size_t)B * a->Hs[0] * a->Ws[0];
    conv2d_forward(a->patch, inp, p->patch_w, p->patch_b, B, a->H, a->W, cfg->in_chans, E,
                   4, 4, 0, a->Hs[0], a->Ws[0]);
    layernorm_forward(a->block[0].x_in, a->patch_ln_mean, a->patch_ln_rstd, a->patch,
                      p->patch_norm_w, p->patch_norm_b, (int)N0, E);
    int blk = 0;
    for (int s = 0; s < 4; s++) {
        int Hs = a->Hs[s], Ws = a->Ws[s], C = a->C[s], nh = cfg->num_heads[s], nW = a->nW[s];
        int N = B * Hs * Ws, Nw = B * nW * T, Ch = C * cfg->mlp_ratio;
        for (int i = 0; i < cfg->depths[s]; i++, blk++) {
            // block blk's weights bp and activations b (llm.c's l_ locals; here one struct each)
            const SwinBlockParams* bp = &p->block[blk];
            SwinBlockActs* b = &a->block[blk];
            int shift = (i % 2 == 1) ? w / 2 : 0;
            float* x_out = (i + 1 < cfg->depths[s]) ? a->block[blk + 1].x_in : a->stage_out[s];
            // attention half: LN1 straight into the (padded, rolled) windows, unless LN Adapt's
            // hook replaces the LayerNorms (prediction only): then LN1 goes through work_hidden
            if (layernorm_forward_hook) {
                layernorm_forward(a->work_hidden, b->ln1_mean, b->ln1_rstd, b->x_in, bp->norm1_w, bp->norm1_b, N, C);
                window_partition_forward(a->work_windows, a->work_hidden, B, Hs, Ws, C, w, shift);
            } else {
                layernorm_partition_forward(a->work_windows, b->ln1_mean, b->ln1_rstd, b->x_in, bp->norm1_w,
                                            bp->norm1_b, B, Hs, Ws, C, w, shift);
            }
            bias_gather_forward(b->rel_bias, bp->rel_table, rel_index, T * T, nh);
            // attn = window attention over qkv = windows @ qkv_w^T + qkv_b (qkv kept: the op's storage)
            qkv_window_attention_forward(b->attn, b->att_lse, b->qkv, a->work_windows, bp->qkv_w, bp->qkv_b,
                                         b->rel_bias, shift ? a->shift_mask[s] : NULL, nW, B * nW, T, nh, C / nh);
            linear_forward(a->work_windows, b->attn, bp->proj_w, NULL, Nw, C, C);   // proj, its bias below
            // x_mid = x_in + s_attn[b] * reverse(proj + proj_b), one pass
            window_reverse_residual_forward(b->x_mid, a->work_windows, bp->proj_b, b->x_in,
                                            drop_row(a->drop_scale, 2 * blk, B), B, Hs, Ws, C, w, shift);
            // MLP half (LN2 into work_windows, free again: not kept, recomputed in the backward)
            layernorm_forward(a->work_windows, b->ln2_mean, b->ln2_rstd, b->x_mid, bp->norm2_w, bp->norm2_b, N, C);
            mlp_forward(x_out, b->fc1, a->work_hidden, a->work_windows, bp->fc1_w, bp->fc1_b, bp->fc2_w, bp->fc2_b,
                        N, C, Ch);   // fc2(gelu(fc1(LN2))), fc1 kept (without its bias)
            // x_out = x_mid + s_mlp[b] * fc2, in place
            scale_rows_add_forward(x_out, x_out, b->x_mid, drop_row(a->drop_scale, 2 * blk + 1, B), B,
                                   (size_t)Hs * Ws * C);
        }
        layernorm_forward(a->out[s], a->out_mean[s], a->out_rstd[s], a->stage_out[s],
                          p->out_norm_w[s], p->out_norm_b[s], N, C);
        if (s < 3) {
            int Nm = B * a->Hs[s + 1] * a->Ws[s + 1];
            patch_merge_forward(a->merged[s], a->stage_out[s], B, Hs, Ws, C);
            layernorm_forward(a->merged_ln[s], a->merged_mean[s], a->merged_rstd[s], a->merged[s],
                              p->merge_norm_w[s], p->merge_norm_b[s], Nm, 4 * C);
            linear_forward(a->block[blk].x_in, a->merged_ln[s], p->merge_w[s], NULL, Nm, 4 * C, 2 * C);
        }
    }
}

// ----------------------------------------------------------------------------
// backward: the forward in reverse; every op accumulates into the da buffers, each zeroed
// right before its first use (da: swin_point_grad_acts; the blocks share their buffers), but
// for the buffers whose first op WRITES (=) them (ttt.h: linear_backward_write, mlp_backward,
// window_reverse_residual_backward, scale_rows_add_backward), which are not zeroed: merged_ln
// (the merge linear) and the drop-path scratch drop_grad (scale_rows_add_backward).
// A block's first writers: gelu and ln2 (mlp_backward: its scratch and dx), x_in and proj
// (window_reverse_residual), attn (proj), windows and qkv (qkv_window_attention_backward: its dx
// and scratch); only rel_bias, which it accumulates into, is zeroed. dx_mid needs no buffer: it
// starts as dx_out (the MLP residual), so LN2's gradient is added to dx_out in place (nothing
// reads dx_out after that block).

void swin_backward(const SwinConfig* cfg, const SwinParams* p, SwinParams* g,
                   const SwinActs* a, SwinActs* da, const int* rel_index,
                   const float* inp, float* const dout[4], float* dinp, int B) {
    int E = cfg->embed_dim, w = cfg->window, T = w * w;
    int nblocks = swin_num_blocks(cfg);
    if (B > da->max_B) ttt_die("swin_backward: batch %d exceeds the planned %d", B, da->max_B);
    int blk = nblocks;
    for (int s = 3; s >= 0; s--) {
        int Hs = a->Hs[s], Ws = a->Ws[s], C = a->C[s], nh = cfg->num_heads[s], nW = a->nW[s];
        int N = B * Hs * Ws, Nw = B * nW * T, Ch = C * cfg->mlp_ratio;
        ttt_zero(da->stage_out[s], (size_t)N * C * sizeof(float));
        if (s < 3) {
            size_t Nm4C = (size_t)B * a->Hs[s + 1] * a->Ws[s + 1] * 4 * C;
            ttt_zero(da->merged[s], Nm4C * sizeof(float));
            int Nm = B * a->Hs[s + 1] * a->Ws[s + 1];
            linear_backward_write(da->merged_ln[s], g->merge_w[s], NULL, da->block[blk].x_in,
                                  a->merged_ln[s], p->merge_w[s], Nm, 4 * C, 2 * C);   // writes merged_ln
            layernorm_backward(da->merged[s], g->merge_norm_w[s], g->merge_norm_b[s], da->merged_ln[s],
                               a->merged[s], p->merge_norm_w[s], a->merged_mean[s], a->merged_rstd[s], Nm, 4 * C);
            patch_merge_backward(da->stage_out[s], da->merged[s], B, Hs, Ws, C);
        }
        if (dout[s]) {
            layernorm_backward(da->stage_out[s], g->out_norm_w[s], g->out_norm_b[s], dout[s],
                               a->stage_out[s], p->out_norm_w[s], a->out_mean[s], a->out_rstd[s], N, C);
        }
        for (int i = cfg->depths[s] - 1; i >= 0; i--) {
            blk--;
            // block blk's weights bp, their gradients gb, activations b and theirs db (llm.c's l_ locals)
            const SwinBlockParams* bp = &p->block[blk];
            SwinBlockParams* gb = &g->block[blk];
            const SwinBlockActs* b = &a->block[blk];
            SwinBlockActs* db = &da->block[blk];
            int shift = (i % 2 == 1) ? w / 2 : 0;
            float* dx_out = (i + 1 < cfg->depths[s]) ? da->block[blk + 1].x_in : da->stage_out[s];
            float* dx_mid = dx_out;   // dx_mid = dx_out + LN2's gradient, in place
            // this block's one buffer that is accumulated into: rel_bias (point_block_grads); every
            // other one is written first (=), below
            ttt_zero(db->rel_bias, (size_t)nh * T * T * sizeof(float));
            // MLP half: x_out = x_mid + s_mlp[b] * fc2(gelu(fc1(ln2(x_mid))))
            const float* dbranch = residual_branch_backward(da->drop_grad, dx_out, a->drop_scale, 2 * blk + 1, B,
                                                            (size_t)Hs * Ws * C);
            layernorm_apply(da->work_windows, b->x_mid, b->ln2_mean, b->ln2_rstd, bp->norm2_w, bp->norm2_b,
                            N, C);                                    // recomputed: fc1's input
            // db->ln2 written; db->gelu: the gradient at gelu's output (scratch)
            mlp_backward(db->ln2, gb->fc1_w, gb->fc1_b, gb->fc2_w, gb->fc2_b, db->gelu, da->work_hidden, dbranch,
                         b->fc1, da->work_windows, bp->fc1_w, bp->fc1_b, bp->fc2_w, N, C, Ch);
            layernorm_backward(dx_mid, gb->norm2_w, gb->norm2_b, db->ln2, b->x_mid, bp->norm2_w,
                               b->ln2_mean, b->ln2_rstd, N, C);
            // attention half: x_mid = x_in + s_attn[b] * reverse(proj(attn(qkv(partition(ln1(x_in))))));
            // dx_in = dx_mid and dproj = s_attn[b] * partition(dx_mid) in one pass, both written
            window_reverse_residual_backward(db->x_in, db->proj, dx_mid, drop_row(a->drop_scale, 2 * blk, B),
                                             B, Hs, Ws, C, w, shift);
            linear_backward_write(db->attn, gb->proj_w, gb->proj_b, db->proj, b->attn, bp->proj_w, Nw, C, C);
            // recomputed: qkv's input, the windows of LN1(x_in) (the forward's op: the same numbers)
            layernorm_partition_forward(da->work_windows, NULL, NULL, b->x_in, bp->norm1_w, bp->norm1_b,
                                        B, Hs, Ws, C, w, shift);
            // db->windows written; db->qkv: the op's scratch for qkv's gradient
            qkv_window_attention_backward(db->windows, gb->qkv_w, gb->qkv_b, db->rel_bias, db->qkv, db->attn,
                                          b->attn, b->att_lse, b->qkv, da->work_windows, bp->qkv_w, bp->qkv_b,
                                          b->rel_bias, shift ? a->shift_mask[s] : NULL, nW, B * nW, T, nh,
                                          C / nh);
            bias_gather_backward(gb->rel_table, db->rel_bias, rel_index, T * T, nh);
            layernorm_partition_backward(db->x_in, gb->norm1_w, gb->norm1_b, db->windows, b->x_in, bp->norm1_w,
                                         b->ln1_mean, b->ln1_rstd, B, Hs, Ws, C, w, shift);
        }
    }
    size_t N0 = (size_t)B * a->Hs[0] * a->Ws[0];
    ttt_zero(da->patch, N0 * E * sizeof(float));
    layernorm_backward(da->patch, g->patch_norm_w, g->patch_norm_b, da->block[0].x_in, a->patch,
                       p->patch_norm_w, a->patch_ln_mean, a->patch_ln_rstd, (int)N0, E);
    conv2d_backward(dinp, g->patch_w, g->patch_b, da->patch, inp, p->patch_w,
                    B, a->H, a->W, cfg->in_chans, E, 4, 4, 0, a->Hs[0], a->Ws[0]);
}

// ----------------------------------------------------------------------------
// weights files of the encoder alone (dev/convert_swin.py writes them from a Hugging Face
// or original Swin state dict): a checkpoint of kind CKPT_KIND_SWIN

void swin_save_export(const char* path, const SwinConfig* cfg, const float* host_params) {
    int h[CKPT_HEADER_INTS];
    memset(h, 0, sizeof(h));
    int i = 2;
    h[i++] = CKPT_KIND_SWIN;
    h[i++] = cfg->in_chans; h[i++] = cfg->embed_dim;
    for (int s = 0; s < 4; s++) h[i++] = cfg->depths[s];
    for (int s = 0; s < 4; s++) h[i++] = cfg->num_heads[s];
    h[i++] = cfg->window; h[i++] = cfg->mlp_ratio;
    checkpoint_write(path, h, host_params, swin_num_params(cfg));
}

SwinConfig swin_read_export_config(const char* path) {
    int h[CKPT_HEADER_INTS];
    checkpoint_read_header(path, h);
    if (h[2] != CKPT_KIND_SWIN)
        ttt_die("'%s' holds checkpoint kind %d, not Swin encoder weights (kind %d)", path, h[2], CKPT_KIND_SWIN);
    int i = 3;
    SwinConfig c;
    c.in_chans = h[i++]; c.embed_dim = h[i++];
    for (int s = 0; s < 4; s++) c.depths[s] = h[i++];
    for (int s = 0; s < 4; s++) c.num_heads[s] = h[i++];
    c.window = h[i++]; c.mlp_ratio = h[i++];
    // every field bounded before it is shifted, multiplied or summed
    int nblocks = 0, ok = c.in_chans >= 1 && c.in_chans <= 64 && c.embed_dim >= 1 &&
                         c.embed_dim <= 4096 && c.window >= 1 && c.window <= 64 &&
                         c.mlp_ratio >= 1 && c.mlp_ratio <= 64;
    for (int s = 0; s < 4; s++) {
        ok = ok && c.depths[s] >= 1 && c.depths[s] <= SWIN_MAX_BLOCKS && c.num_heads[s] >= 1 &&
             c.num_heads[s] <= (c.embed_dim << s) && ((c.embed_dim << s) % c.num_heads[s]) == 0;
        if (ok) nblocks += c.depths[s];
    }
    if (!ok || nblocks > SWIN_MAX_BLOCKS)
        ttt_die("'%s': implausible Swin config (in_chans %d, embed %d, depths %d %d %d %d, heads %d %d %d %d, "
                "window %d, mlp %d)", path, c.in_chans, c.embed_dim, c.depths[0], c.depths[1], c.depths[2],
                c.depths[3], c.num_heads[0], c.num_heads[1], c.num_heads[2], c.num_heads[3], c.window, c.mlp_ratio);
    checkpoint_check_size(path, swin_num_params(&c));   // before anything is allocated from it
    return c;
}

float* swin_load_hf_export(const char* path, SwinConfig* cfg) {
    SwinConfig c = swin_read_export_config(path);
    size_t n = swin_num_params(&c);
    float* params = (float*)mallocCheck(n * sizeof(float));
    checkpoint_read_data(path, params, n);
    *cfg = c;
    return params;
}
