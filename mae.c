// mae.c: the MAE head g, patch masking, and the Y model that joins f (swin.c), h and g
// (mask2former.c).
//
// What g is in the paper's code (renwang435/video-ttt-release, read 2026-11-22; the MAE
// section of ttt.h has the same notes):
// - mask2former/maskformer_ttt_model.py (from_config): g ("recon_head") is a second
//   build_sem_seg_head from a clone of the config with head name MaskFormerReconHead,
//   NUM_CLASSES = 3 * PATCH_SIZE^2 = 48 and NUM_OBJECT_QUERIES = 48: a full copy of h's
//   architecture (pixel decoder + masked-attention transformer decoder). Its 48 mask maps
//   at 1/4 resolution are the 3 x 4 x 4 pixels of each 4 x 4 patch; the class head is unused.
// - mask2former/modeling/criterion.py (ReconCriterion): the 48 maps are un-patchified to
//   (3, H, W) and compared by MSE with the ImageNet-normalised image (the released code
//   averages over all pixels; the masked-only variant is commented out there).
// - dataset_mappers/dropout.py + mask2former/config.py: 16 x 16 masking patches, ratio 0.85
//   (PRETRAIN.MASK_RATIO), int(L * (1 - ratio)) kept per image by a random permutation, masked
//   pixels set to 0 after normalisation, a 4th input channel that is 1 on visible pixels (all
//   ones for the main task). Swin IN_CHANS 4. We use the same convention (checkpoint version
//   2; version-1 checkpoints, 1 = masked, are converted exactly when loaded).
// - configs/kitti_step/semantic-segmentation/swin/maskformer2_swin_small_bs16_90k_ttt_mae.yaml
//   and train_ttt_mae.py (run_step, build_optimizer, restart_optimizer), README commands: TTT
//   with AdamW lr 1e-4, backbone lr x 0.1, weight decay 0.05 except norms, embeddings and
//   relative-position tables, full-model gradient clipping at 0.01, 32 images per step in 4
//   accumulated chunks, one step per frame, a fresh optimizer every frame (--restart_optimizer),
//   drop-path 0.3 (train mode), AMP; only f and g are trained (TTT.USE_SEG_HEAD False).
// The ModelRecipe (ttt.h) holds these settings: model_recipe_paper() is the released code's,
// model_recipe_demo() this project's demo defaults (the checkpoint's mask ratio, the MSE over
// the masked pixels, one learning rate, decay everywhere, no clipping, no drop-path). The
// stream-level ones (batch, restart, sampler, crops, resizes) are stream.c's. We stay in
// float32 where the released code uses AMP fp16.
//
// One frame through the Y, as stream.c drives it:
//   model_ttt_step:  frames -> random 16x16 patch masks -> mask_input (normalise, zero
//                    masked pixels, 4th channel = 1 on visible pixels) -> f_forward (Swin) ->
//                    g_forward (h's architecture, 48 queries) -> mae_loss: last prediction's 48
//                    maps vs the patchified target, MSE over the masked (or all) pixels ->
//                    zero_grads -> g_backward -> f_backward -> clip (recipe) -> AdamW on f and g
//   model_predict:   frame -> mae_prepare_input (no mask) -> f -> h = m2f_forward ->
//                    last prediction -> semantic inference (on the device) -> class ids
//   model_train_step (train.c): h(f(x)) -> set loss on the host (labels padded with 255 to the
//                    model's padded frame) -> backward through h and f; then the MAE path as
//                    above on freshly masked x -> backward through g and f; clip; AdamW on all.
#include "ttt.h"

// a run of parameters that AdamW updates with one call: same part (0 f, 1 h, 2 g) and the
// same weight-decay treatment (exempt = 1: norm weights/biases, embeddings, rel-pos tables)
typedef struct { size_t off, n; int part, exempt; } AdamRun;

struct Model {
    ModelConfig cfg;
    int max_B, H, W, Hp, Wp, H4, W4;
    // trainable parameters [f | h | g], then the frozen copies [f0 | g0]; one allocation
    size_t n_f, n_h, n_g;
    float* params;
    SwinParams f, f0;
    M2FParams h, g, g0;
    // gradients and AdamW moments mirror [f | h | g]
    float *grads, *adam_m, *adam_v;
    SwinParams df;
    M2FParams dh, dg;
    int adam_t;
    // activations (one allocation) and their gradients (another), planned for max_B x Hp x Wp
    float *acts, *dacts;
    SwinActs fa, dfa;
    M2FActs ha, dha, ga, dga;
    int* rel_index;
    float* dfeat[4];          // (B, Hs, Ws, C_s) gradients flowing from a head into f
    float* inp4;              // (B, Hp, Wp, 4)
    float* target;            // (B, 48, H4, W4)
    float* target_mask;       // (B, 48, H4, W4)
    float* rgb;               // (B, H, W, 3) frames copied in
    unsigned char* patch_mask;  // (B, Hp/ps, Wp/ps)
    float* loss;              // one float on the device
    float* g_frozen_masks;    // g's attention masks held fixed (gradient checks), or NULL
    float* h_frozen_masks;    // h's, likewise
    // joint training (allocated on the first train step): set loss on the host
    SetLossConfig set_loss_cfg;
    float grad_norm;          // global L2 norm of the last train step's gradients
    float *host_cls_all, *host_mask_all, *host_dcls, *host_dmask;   // (L, B, Q, K+1), (L, B, Q, H4, W4)
    unsigned char* host_labels_pad;   // (B, Hp, Wp), 255 outside the frame
    // prediction: class ids and semantic-inference scratch on the device
    unsigned char* pred_ids;  // (H, W)
    float* infer_work;        // m2f_semantic_work_size floats
    // recorded device work (CUDA graphs; plain calls on the CPU): the MAE forward and
    // backward per batch size 1..max_B, and the prediction
    DeviceGraph* mae_graphs;  // (max_B + 1)
    DeviceGraph predict_graph;
    // host scratch
    unsigned char* patch_mask_host;
    unsigned char* micro_masks;   // (micro_masks_B, L) patch masks of a micro-batched step
    double* micro_counts;         // (micro_masks_B) masked values of each image's mask
    int micro_masks_B;
    ModelRecipe recipe;       // how TTT and training steps train (model_set_recipe)
    int shares_params;        // 1: made by model_create_sharing: params belong to another model,
                              // and it only predicts (activations of f and h; no g, no gradients)
    // AdamW runs: [f | h | g] cut where the part or the weight-decay exemption changes
    AdamRun* runs;
    int n_runs;
    int pred_H, pred_W;       // size of the class ids model_predict writes (the frame's by default)
    // drop-path (recipe.drop_path > 0): the (2 * blocks, B) scale table of the next forward
    float* drop_scale;        // device
    float* drop_scale_host;
    // micro-batched and data-parallel steps draw every random number of the batch before its
    // chunks run: two (2 * blocks, B) drop-path tables (main, MAE) and a set-loss seed per chunk
    float* drop_tables_host;  // (2, 2 * blocks, drop_tables_B)
    int drop_tables_B;
    uint64_t* chunk_seeds;    // (chunk_seeds_n)
    int chunk_seeds_n;
    // data parallel (model_set_data_parallel): rank dp_rank of dp_world processes; gradient
    // steps run only this rank's chunks of a batch and add gradients and losses over the ranks
    // with dp_sum (NULL: no transport, each rank keeps its own part)
    int dp_rank, dp_world;
    DataParallelSum dp_sum;
    void* dp_ctx;
    float* dp_scalars;        // (DP_SCALARS) device: the losses summed with the gradients
    struct TechState* tech;   // Tent / Self-Train buffers (last section of this file), made on first use
    // --task colorize (cfg.colorize): the rebalancing weights (saved with the checkpoint) and the
    // targets of the batch in a colorization training step (host; color_b0: the chunk's first image)
    float color_rebal[COLOR_BINS];
    const int* color_ids;
    const float* color_w;
    int color_b0;
};
#define DP_SCALARS 4

static void tech_state_free(Model* m);

OptConfig opt_config_ttt(void) {
    OptConfig o = {1e-4f, 0.9f, 0.999f, 1e-8f, 0.05f};
    return o;
}

static void model_drop_graphs(Model* m);

ModelRecipe model_recipe_demo(const ModelConfig* cfg) {
    ModelRecipe r = {cfg->mask_ratio, 0, 1.0f, 0, 0.0f, 0.0f};
    return r;
}

// the released code (renwang435/video-ttt-release): PRETRAIN.MASK_RATIO 0.85
// (mask2former/config.py), ReconCriterion's mean over all pixels (modeling/criterion.py),
// BACKBONE_MULTIPLIER 0.1, decay 0 on norms / embeddings / relative_position_bias_table
// (train_ttt_mae.py build_optimizer), CLIP_GRADIENTS full_model 0.01 and DROP_PATH_RATE 0.3
// (configs/kitti_step/.../maskformer2_swin_small_bs16_90k_ttt_mae.yaml)
ModelRecipe model_recipe_paper(void) {
    ModelRecipe r = {0.85f, 1, 0.1f, 1, 0.01f, 0.3f};
    return r;
}

void model_set_recipe(Model* m, const ModelRecipe* r) {
    if (!(r->mask_ratio >= 0.0f && r->mask_ratio < 1.0f)) ttt_die("mask ratio %g is outside [0, 1)", r->mask_ratio);
    if (!(r->drop_path >= 0.0f && r->drop_path < 1.0f)) ttt_die("drop-path rate %g is outside [0, 1)", r->drop_path);
    m->recipe = *r;
    model_drop_graphs(m);   // the recorded MAE work holds the loss's pixel set
}
const ModelRecipe* model_recipe(const Model* m) { return &m->recipe; }

void model_restart_optimizer(Model* m) {
    size_t n_train = m->n_f + m->n_h + m->n_g;
    ttt_zero(m->adam_m, n_train * sizeof(float));
    ttt_zero(m->adam_v, n_train * sizeof(float));
    m->adam_t = 0;
}

// g copies h's architecture; its queries are the 3 x 4 x 4 pixels of a patch
static M2FConfig mae_head_config(M2FConfig h) {
    h.num_queries = 3 * MAE_RECON_PATCH * MAE_RECON_PATCH;
    h.num_classes = 1;
    return h;
}

static ModelConfig model_config_make(SwinConfig swin, M2FConfig (*head)(const int*, int), int K) {
    ModelConfig c;
    c.swin = swin;
    int dims[4] = {swin.embed_dim, swin.embed_dim * 2, swin.embed_dim * 4, swin.embed_dim * 8};
    c.m2f = head(dims, K);
    c.mae = mae_head_config(c.m2f);
    c.num_classes = K;
    c.mae_patch = 16;
    c.mask_ratio = 0.8f;
    c.colorize = 0;
    return c;
}

ModelConfig model_config_default(int K) {
    SwinConfig s = {4, 24, {1, 1, 2, 1}, {1, 2, 3, 6}, 7, 4};
    return model_config_make(s, m2f_config_small, K);
}

ModelConfig model_config_tiny(int K) {
    SwinConfig s = {4, 8, {1, 2, 1, 1}, {1, 2, 2, 2}, 7, 2};
    return model_config_make(s, m2f_config_tiny, K);
}

ModelConfig model_config_swin_s(int K) {
    return model_config_make(swin_config_small(), m2f_config_published, K);
}

const ModelConfig* model_config(const Model* m) { return &m->cfg; }

// ----------------------------------------------------------------------------
// parameter groups of the optimizer, as the released code's build_optimizer makes them
// (train_ttt_mae.py): the backbone f at lr x backbone_lr_scale; weight decay 0 on every
// norm layer (LayerNorm, GroupNorm), on nn.Embedding tables (Mask2Former's query_feat,
// query_embed, level_embed) and on Swin's relative_position_bias_table; the rest decays.

static void mark_exempt(unsigned char* exempt, const float* base, const float* p, size_t n) {
    memset(exempt + (p - base), 1, n);
}

static void mark_exempt_swin(unsigned char* ex, const float* base, const SwinParams* p, const SwinConfig* c) {
    int E = c->embed_dim, w = c->window, blk = 0;
    mark_exempt(ex, base, p->patch_norm_w, E);
    mark_exempt(ex, base, p->patch_norm_b, E);
    for (int s = 0; s < 4; s++) {
        size_t C = (size_t)E << s;
        for (int i = 0; i < c->depths[s]; i++, blk++) {
            const SwinBlockParams* b = &p->block[blk];
            mark_exempt(ex, base, b->norm1_w, C);
            mark_exempt(ex, base, b->norm1_b, C);
            mark_exempt(ex, base, b->rel_table, (size_t)(2 * w - 1) * (2 * w - 1) * c->num_heads[s]);
            mark_exempt(ex, base, b->norm2_w, C);
            mark_exempt(ex, base, b->norm2_b, C);
        }
        mark_exempt(ex, base, p->out_norm_w[s], C);
        mark_exempt(ex, base, p->out_norm_b[s], C);
        if (s < 3) {
            mark_exempt(ex, base, p->merge_norm_w[s], 4 * C);
            mark_exempt(ex, base, p->merge_norm_b[s], 4 * C);
        }
    }
}

static void mark_exempt_m2f(unsigned char* ex, const float* base, const M2FParams* p, const M2FConfig* c) {
    size_t D = c->hidden_dim, Q = c->num_queries, NL = c->dec_layers, CD = c->conv_dim;
    if (c->pixel_decoder == PIXEL_DECODER_FPN) {   // FPN: its GroupNorms
        for (int l = 0; l < 3; l++) {
            mark_exempt(ex, base, p->pd.lateral_gn_w[l], CD);
            mark_exempt(ex, base, p->pd.lateral_gn_b[l], CD);
        }
        for (int l = 0; l < 4; l++) {
            mark_exempt(ex, base, p->pd.output_gn_w[l], CD);
            mark_exempt(ex, base, p->pd.output_gn_b[l], CD);
        }
    } else {   // MSDeformAttn: GroupNorms and the encoder's LayerNorms (its level_embed is an
               // nn.Parameter in msdeformattn.py, not an nn.Embedding: it decays)
        const MSDeformParams* q = &p->msd;
        size_t NE = c->enc_layers;
        for (int e = 0; e < MSD_LEVELS; e++) {
            mark_exempt(ex, base, q->input_gn_w[e], CD);
            mark_exempt(ex, base, q->input_gn_b[e], CD);
        }
        mark_exempt(ex, base, q->ln1_w, NE * CD); mark_exempt(ex, base, q->ln1_b, NE * CD);
        mark_exempt(ex, base, q->ln2_w, NE * CD); mark_exempt(ex, base, q->ln2_b, NE * CD);
        mark_exempt(ex, base, q->lateral_gn_w, CD); mark_exempt(ex, base, q->lateral_gn_b, CD);
        mark_exempt(ex, base, q->output_gn_w, CD); mark_exempt(ex, base, q->output_gn_b, CD);
    }
    mark_exempt(ex, base, p->query_feat, Q * D);
    mark_exempt(ex, base, p->query_embed, Q * D);
    mark_exempt(ex, base, p->level_embed, 3 * D);
    mark_exempt(ex, base, p->ca_ln_w, NL * D); mark_exempt(ex, base, p->ca_ln_b, NL * D);
    mark_exempt(ex, base, p->sa_ln_w, NL * D); mark_exempt(ex, base, p->sa_ln_b, NL * D);
    mark_exempt(ex, base, p->ffn_ln_w, NL * D); mark_exempt(ex, base, p->ffn_ln_b, NL * D);
    mark_exempt(ex, base, p->dec_ln_w, D); mark_exempt(ex, base, p->dec_ln_b, D);
}

// cut [f | h | g] into runs of one part and one exemption flag
static void build_adam_runs(Model* m) {
    size_t n = m->n_f + m->n_h + m->n_g;
    unsigned char* ex = (unsigned char*)callocCheck(n, 1);
    mark_exempt_swin(ex, m->params, &m->f, &m->cfg.swin);
    mark_exempt_m2f(ex, m->params, &m->h, &m->cfg.m2f);
    mark_exempt_m2f(ex, m->params, &m->g, &m->cfg.mae);
    int cap = 64;
    m->runs = (AdamRun*)mallocCheck(cap * sizeof(AdamRun));
    m->n_runs = 0;
    for (size_t i = 0; i < n;) {
        int part = i < m->n_f ? 0 : i < m->n_f + m->n_h ? 1 : 2;
        size_t end = part == 0 ? m->n_f : part == 1 ? m->n_f + m->n_h : n, j = i;
        while (j < end && ex[j] == ex[i]) j++;
        if (m->n_runs == cap) {
            cap *= 2;
            AdamRun* r = (AdamRun*)mallocCheck(cap * sizeof(AdamRun));
            memcpy(r, m->runs, m->n_runs * sizeof(AdamRun));
            free(m->runs);
            m->runs = r;
        }
        AdamRun r = {i, j - i, part, ex[i]};
        m->runs[m->n_runs++] = r;
        i = j;
    }
    free(ex);
}

// AdamW on the parts in `parts` (bit 1 << part): lr x backbone_lr_scale on f; with the
// recipe's wd_exempt the exempt runs get no decay. Consecutive runs with the same lr and decay
// are one update (the runs are contiguous): without the exemption, one AdamW over each part's
// span of runs (a few launches instead of one per run; the same arithmetic per element).
static void adamw_parts(Model* m, const OptConfig* opt, int parts) {
    const ModelRecipe* r = &m->recipe;
    for (int i = 0; i < m->n_runs;) {
        const AdamRun* run = &m->runs[i];
        if (!(parts >> run->part & 1)) { i++; continue; }
        float lr = run->part == 0 ? opt->lr * r->backbone_lr_scale : opt->lr;
        float wd = r->wd_exempt && run->exempt ? 0.0f : opt->weight_decay;
        size_t n = run->n;
        int j = i + 1;
        for (; j < m->n_runs; j++) {   // extend over the next runs with the same lr and decay
            const AdamRun* next = &m->runs[j];
            float next_lr = next->part == 0 ? opt->lr * r->backbone_lr_scale : opt->lr;
            float next_wd = r->wd_exempt && next->exempt ? 0.0f : opt->weight_decay;
            if (!(parts >> next->part & 1) || next->off != run->off + n || next_lr != lr || next_wd != wd) break;
            n += next->n;
        }
        adamw_update(m->params + run->off, m->grads + run->off, m->adam_m + run->off, m->adam_v + run->off,
                     n, lr, opt->beta1, opt->beta2, opt->eps, wd, m->adam_t);
        i = j;
    }
}

// global L2 norm of the gradients of `parts`; scaled down to max_norm when above it (max_norm > 0)
static float clip_grad_parts(Model* m, float max_norm, int parts) {
    double ss = 0.0;
    size_t off[3] = {0, m->n_f, m->n_f + m->n_h}, n[3] = {m->n_f, m->n_h, m->n_g};
    for (int p = 0; p < 3; p++) {
        if (!(parts >> p & 1)) continue;
        float part_ss;
        sum_squares(m->loss, m->grads + off[p], n[p]);
        ttt_to_host(&part_ss, m->loss, sizeof(float));
        ss += part_ss;
    }
    float norm = (float)sqrt(ss);
    if (max_norm > 0.0f && isfinite(norm) && norm > max_norm)
        for (int p = 0; p < 3; p++)
            if (parts >> p & 1) scale_inplace(m->grads + off[p], max_norm / norm, n[p]);
    return norm;
}

// ----------------------------------------------------------------------------
// creation: every buffer is allocated here, once

static void model_point_params(Model* m, float* base, SwinParams* f, M2FParams* h, M2FParams* g) {
    if (f) swin_point_params(f, base, &m->cfg.swin);
    if (h) m2f_point_params(h, base + m->n_f, &m->cfg.m2f);
    if (g) m2f_point_params(g, base + m->n_f + m->n_h, &m->cfg.mae);
}

// frames are padded to a multiple of 32 (Swin's four halvings) and of the masking patch
static void padded_size(const ModelConfig* cfg, int H, int W, int* Hp, int* Wp) {
    int div = 32;
    while (div % cfg->mae_patch) div += 32;
    *Hp = (H + div - 1) / div * div;
    *Wp = (W + div - 1) / div * div;
}

// floats of the batch-dependent device buffers for max_batch frames of H x W: what
// model_create allocates and model_activation_bytes reports
typedef struct {
    int Hp, Wp;
    size_t acts_f, acts_h, acts_g;   // activations of f, h, g
    size_t grads_f;                  // f's gradient buffers (swin_point_grad_acts: far fewer)
    size_t grads_h, grads_g;         // h's and g's (m2f_point_grad_acts; 0 for a prediction-only model)
    size_t feat[4];                  // gradient flowing from a head into f's stage s
    size_t pix;                      // max_batch * Hp * Wp
} ActivationPlan;

int model_mirror_head_grads = 0;   // test hook (ttt.h)

// main_batch: the largest batch h runs on (h's activations and gradients are planned for it).
// predict_only: f's and h's activations only (no g, no gradients), for model_create_sharing
static ActivationPlan plan_activations(const ModelConfig* cfg, int max_batch, int main_batch, int H, int W,
                                       int predict_only) {
    ActivationPlan p;
    padded_size(cfg, H, W, &p.Hp, &p.Wp);
    SwinActs fa;
    p.acts_f = swin_point_acts(&fa, NULL, &cfg->swin, max_batch, p.Hp, p.Wp);
    p.grads_f = predict_only ? 0 : swin_point_grad_acts(&fa, NULL, &cfg->swin, max_batch, p.Hp, p.Wp);
    p.acts_h = m2f_num_acts(&cfg->m2f, main_batch, p.Hp / 4, p.Wp / 4);
    p.acts_g = predict_only ? 0 : m2f_num_acts(&cfg->mae, max_batch, p.Hp / 4, p.Wp / 4);
    // h: every prediction has a loss in joint training; g: only the last (mae_loss)
    p.grads_h = predict_only ? 0 : model_mirror_head_grads ? p.acts_h
                                 : m2f_num_grad_acts(&cfg->m2f, main_batch, p.Hp / 4, p.Wp / 4, 0);
    p.grads_g = predict_only ? 0 : model_mirror_head_grads ? p.acts_g
                                 : m2f_num_grad_acts(&cfg->mae, max_batch, p.Hp / 4, p.Wp / 4, 1);
    for (int s = 0; s < 4; s++) p.feat[s] = (size_t)max_batch * fa.Hs[s] * fa.Ws[s] * fa.C[s];
    p.pix = (size_t)max_batch * p.Hp * p.Wp;
    return p;
}

size_t model_activation_bytes(const ModelConfig* cfg, int max_batch, int H, int W) {
    return model_activation_bytes_planned(cfg, max_batch, max_batch, H, W);
}

static size_t plan_bytes(const ActivationPlan* p, int max_batch, int H, int W) {
    size_t n = p->acts_f + p->grads_f + p->acts_h + p->grads_h + p->acts_g + p->grads_g;
    n += p->feat[0] + p->feat[1] + p->feat[2] + p->feat[3];
    n += p->pix * (4 + 3 + 3) + (size_t)max_batch * H * W * 3;   // inp4, target, target_mask, rgb
    return n * sizeof(float);
}

size_t model_activation_bytes_planned(const ModelConfig* cfg, int max_batch, int main_batch, int H, int W) {
    ActivationPlan p = plan_activations(cfg, max_batch, main_batch, H, W, 0);
    return plan_bytes(&p, max_batch, H, W);
}

size_t model_predict_bytes(const ModelConfig* cfg, int H, int W) {
    ActivationPlan p = plan_activations(cfg, 1, 1, H, W, 1);
    return plan_bytes(&p, 1, H, W);
}

// forget the recorded device work (after anything that changes which buffers it reads)
static void model_drop_graphs(Model* m) {
    for (int b = 0; b <= m->max_B; b++) device_graph_free(&m->mae_graphs[b]);
    device_graph_free(&m->predict_graph);
}

// share == NULL: a model with parameters of its own; else one that uses share's parameters,
// gradients and optimizer state (model_create_sharing)
static Model* model_create_impl(const ModelConfig* cfg, int max_batch, int main_batch, int H, int W, Model* share) {
    if (max_batch < 1 || H < 1 || W < 1) ttt_die("model_create: bad size B=%d H=%d W=%d", max_batch, H, W);
    if (main_batch < 1 || main_batch > max_batch)
        ttt_die("model_create: h's batch %d outside [1, %d]", main_batch, max_batch);
    m2f_config_check(&cfg->m2f);
    if (cfg->mae_patch % MAE_RECON_PATCH != 0)
        ttt_die("model config: the masking patch (%d) must be a multiple of %d", cfg->mae_patch, MAE_RECON_PATCH);
    Model* m = (Model*)callocCheck(1, sizeof(Model));
    m->cfg = *cfg;
    m->max_B = max_batch; m->H = H; m->W = W;
    ActivationPlan plan = plan_activations(cfg, max_batch, main_batch, H, W, share != NULL);
    m->Hp = plan.Hp; m->Wp = plan.Wp;
    m->H4 = m->Hp / 4; m->W4 = m->Wp / 4;

    m->n_f = swin_num_params(&cfg->swin);
    m->n_h = m2f_num_params(&cfg->m2f);
    m->n_g = m2f_num_params(&cfg->mae);
    size_t n_train = m->n_f + m->n_h + m->n_g;
    if (share) {
        m->shares_params = 1;
        m->params = share->params; m->grads = share->grads;
        m->adam_m = share->adam_m; m->adam_v = share->adam_v;
    } else {
        m->params = (float*)ttt_malloc((n_train + m->n_f + m->n_g) * sizeof(float));
        m->grads = (float*)ttt_malloc(n_train * sizeof(float));
        m->adam_m = (float*)ttt_malloc(n_train * sizeof(float));
        m->adam_v = (float*)ttt_malloc(n_train * sizeof(float));
        ttt_zero(m->grads, n_train * sizeof(float));
        ttt_zero(m->adam_m, n_train * sizeof(float));
        ttt_zero(m->adam_v, n_train * sizeof(float));
    }
    model_point_params(m, m->params, &m->f, &m->h, &m->g);
    swin_point_params(&m->f0, m->params + n_train, &cfg->swin);
    m2f_point_params(&m->g0, m->params + n_train + m->n_f, &cfg->mae);
    model_point_params(m, m->grads, &m->df, &m->dh, &m->dg);

    // activations: [swin | h | g]; gradients: [swin's (swin_point_grad_acts) | h | g]
    size_t n_fa = plan.acts_f, n_ha = plan.acts_h, n_acts = plan.acts_f + plan.acts_h + plan.acts_g;
    size_t n_dfa = plan.grads_f, n_dha = plan.grads_h, n_dacts = plan.grads_f + plan.grads_h + plan.grads_g;
    m->acts = (float*)ttt_malloc(n_acts * sizeof(float));
    ttt_zero(m->acts, n_acts * sizeof(float));
    swin_point_acts(&m->fa, m->acts, &cfg->swin, max_batch, m->Hp, m->Wp);
    m2f_point_acts(&m->ha, m->acts + n_fa, &cfg->m2f, main_batch, m->H4, m->W4);
    if (share == NULL) {   // a prediction-only (sharing) model has no g and no gradient buffers
        m->dacts = (float*)ttt_malloc(n_dacts * sizeof(float));
        swin_point_grad_acts(&m->dfa, m->dacts, &cfg->swin, max_batch, m->Hp, m->Wp);
        m2f_point_acts(&m->ga, m->acts + n_fa + n_ha, &cfg->mae, max_batch, m->H4, m->W4);
        if (model_mirror_head_grads) {
            m2f_point_acts(&m->dha, m->dacts + n_dfa, &cfg->m2f, main_batch, m->H4, m->W4);
            m2f_point_acts(&m->dga, m->dacts + n_dfa + n_dha, &cfg->mae, max_batch, m->H4, m->W4);
        } else {
            m2f_point_grad_acts(&m->dha, m->dacts + n_dfa, &cfg->m2f, main_batch, m->H4, m->W4, 0);
            m2f_point_grad_acts(&m->dga, m->dacts + n_dfa + n_dha, &cfg->mae, max_batch, m->H4, m->W4, 1);
        }
    }
    swin_init_acts(&m->fa, &cfg->swin);
    m->rel_index = swin_make_rel_index(&cfg->swin);

    float* feat_mem = (float*)ttt_malloc((plan.feat[0] + plan.feat[1] + plan.feat[2] + plan.feat[3]) * sizeof(float));
    for (int s = 0; s < 4; s++) m->dfeat[s] = s == 0 ? feat_mem : m->dfeat[s - 1] + plan.feat[s - 1];
    size_t npix = plan.pix;
    int nP = (m->Hp / cfg->mae_patch) * (m->Wp / cfg->mae_patch);
    m->inp4 = (float*)ttt_malloc(npix * 4 * sizeof(float));
    m->target = (float*)ttt_malloc(npix * 3 * sizeof(float));
    m->target_mask = (float*)ttt_malloc(npix * 3 * sizeof(float));
    m->rgb = (float*)ttt_malloc((size_t)max_batch * H * W * 3 * sizeof(float));
    m->patch_mask = (unsigned char*)ttt_malloc((size_t)max_batch * nP);
    m->loss = (float*)ttt_malloc(sizeof(float));
    m->patch_mask_host = (unsigned char*)mallocCheck((size_t)max_batch * nP);
    int Q = cfg->m2f.num_queries, K = cfg->num_classes;
    m->pred_ids = (unsigned char*)ttt_malloc((size_t)H * W);
    m->infer_work = (float*)ttt_malloc(m2f_semantic_work_size(Q, K, m->H4, m->W4) * sizeof(float));
    m->mae_graphs = (DeviceGraph*)callocCheck((size_t)max_batch + 1, sizeof(DeviceGraph));
    m->set_loss_cfg = set_loss_config_default();
    m->recipe = model_recipe_demo(cfg);
    m->pred_H = H; m->pred_W = W;
    int blocks = cfg->swin.depths[0] + cfg->swin.depths[1] + cfg->swin.depths[2] + cfg->swin.depths[3];
    m->drop_scale = (float*)ttt_malloc((size_t)2 * blocks * max_batch * sizeof(float));
    m->drop_scale_host = (float*)mallocCheck((size_t)2 * blocks * max_batch * sizeof(float));
    m->dp_rank = 0; m->dp_world = 1;
    build_adam_runs(m);
    return m;
}

Model* model_create(const ModelConfig* cfg, int max_batch, int H, int W) {
    return model_create_impl(cfg, max_batch, max_batch, H, W, NULL);
}

Model* model_create_planned(const ModelConfig* cfg, int max_batch, int main_batch, int H, int W) {
    return model_create_impl(cfg, max_batch, main_batch, H, W, NULL);
}

Model* model_create_sharing(Model* share, int max_batch, int H, int W) {
    Model* m = model_create_impl(&share->cfg, max_batch, max_batch, H, W, share);
    m->recipe = share->recipe;
    memcpy(m->color_rebal, share->color_rebal, sizeof(m->color_rebal));
    return m;
}

void model_free(Model* m) {
    if (!m) return;
    if (!m->shares_params) { ttt_free(m->params); ttt_free(m->grads); ttt_free(m->adam_m); ttt_free(m->adam_v); }
    ttt_free(m->acts); ttt_free(m->dacts); ttt_free(m->rel_index); ttt_free(m->dfeat[0]);
    ttt_free(m->inp4); ttt_free(m->target); ttt_free(m->target_mask); ttt_free(m->rgb);
    ttt_free(m->patch_mask); ttt_free(m->loss);
    free(m->patch_mask_host); free(m->micro_masks); free(m->micro_counts);
    ttt_free(m->pred_ids); ttt_free(m->infer_work);
    model_drop_graphs(m);
    free(m->mae_graphs);
    free(m->host_cls_all); free(m->host_mask_all); free(m->host_dcls); free(m->host_dmask);
    free(m->host_labels_pad);
    free(m->runs);
    ttt_free(m->drop_scale); free(m->drop_scale_host);
    free(m->drop_tables_host); free(m->chunk_seeds); ttt_free(m->dp_scalars);
    tech_state_free(m);
    ttt_free(m->g_frozen_masks); ttt_free(m->h_frozen_masks);
    free(m);
}

size_t model_num_params(const Model* m, int part) {
    return part == 0 ? m->n_f : part == 1 ? m->n_h : m->n_g;
}

// f, h, g from one rng seeded with seed, in that order (host memory of n_f + n_h + n_g floats)
static void init_params_host(float* host, const Model* m, uint64_t seed) {
    Rng rng;
    rng_seed(&rng, seed);
    swin_init_params(host, &m->cfg.swin, &rng);
    m2f_init_params(host + m->n_f, &m->cfg.m2f, &rng);
    m2f_init_params(host + m->n_f + m->n_h, &m->cfg.mae, &rng);
}

void model_init_random(Model* m, uint64_t seed) {
    size_t n = m->n_f + m->n_h + m->n_g;
    float* host = (float*)mallocCheck(n * sizeof(float));
    init_params_host(host, m, seed);
    ttt_to_device(m->params, host, n * sizeof(float));
    free(host);
    m->adam_t = 0;
    model_snapshot_ttt(m);
}

void model_snapshot_ttt(Model* m) {
    size_t n_train = m->n_f + m->n_h + m->n_g;
    ttt_copy(m->params + n_train, m->params, m->n_f * sizeof(float));
    ttt_copy(m->params + n_train + m->n_f, m->params + m->n_f + m->n_h, m->n_g * sizeof(float));
}

void model_reset_ttt(Model* m) {
    size_t n_train = m->n_f + m->n_h + m->n_g;
    ttt_copy(m->params, m->params + n_train, m->n_f * sizeof(float));
    ttt_copy(m->params + m->n_f + m->n_h, m->params + n_train + m->n_f, m->n_g * sizeof(float));
    ttt_zero(m->adam_m, n_train * sizeof(float));
    ttt_zero(m->adam_v, n_train * sizeof(float));
    m->adam_t = 0;
}

// ----------------------------------------------------------------------------
// checkpoint: header = [magic, version, kind 1, num_classes, mae_patch, mask_ratio x 1e6,
// swin (in_chans, embed_dim, depths[4], num_heads[4], window, mlp_ratio),
// h (in_dims[4], conv_dim, mask_dim, num_groups, num_queries, hidden_dim, num_heads,
//    ffn_dim, dec_layers, num_classes), g (same fields), n_f, n_h, n_g; at 232: h's pixel decoder
//    (kind, enc_layers, enc_ffn, n_points), then g's; at 240: g absent (0 / 1), seed],
// data = [f | h | g], or [f | h] when g is absent

#define CKPT_KIND_MODEL 1
#define CKPT_KIND_OPTIMIZER 3   // model_save_optimizer's moments alone (kind 2 is CKPT_KIND_SWIN, the encoder export)
#define CKPT_KIND_RESUME 4     // model_save_resume: model, moments, step in one file
#define RESUME_EXTRA_AT 160    // header index of the AdamW step, then the caller's ints
#define RESUME_MAX_EXTRA 64
// The pixel decoder of h and g (M2FConfig.pixel_decoder, enc_layers, enc_ffn, n_points) sits at a
// fixed high index, after the resume block (RESUME_EXTRA_AT .. + RESUME_MAX_EXTRA): slots that
// are 0 in every older checkpoint, so those load as the FPN they hold.
#define PIXEL_DECODER_HEADER_AT 232   // h: kind, enc_layers, enc_ffn, n_points; then the same for g
// A checkpoint converted from weights that have no MAE head (Hugging Face's Mask2Former, by
// dev/convert_mask2former.py) says so at G_ABSENT_AT: [1, seed]; its data is then [f | h] only,
// and model_load initialises g as model_init_random(seed) does, which is what ./train --init
// gives g (with --seed seed). 0 in every other checkpoint (model_save writes g).
#define G_ABSENT_AT 240
// A colorization model (ModelConfig.colorize, color.c) says so at COLORIZE_AT: 1, and its data
// then ends with the COLOR_BINS rebalancing weights (after [f | h | g], or after [params | m | v]
// in a resume state). 0 in every segmentation checkpoint.
#define COLORIZE_AT 250
_Static_assert(RESUME_EXTRA_AT + 1 + RESUME_MAX_EXTRA <= PIXEL_DECODER_HEADER_AT &&
               PIXEL_DECODER_HEADER_AT + 8 <= G_ABSENT_AT && G_ABSENT_AT + 2 <= CKPT_HEADER_INTS,
               "pixel decoder / g-absent header blocks overlap");

static int pack_m2f(int* h, const M2FConfig* c) {
    for (int l = 0; l < 4; l++) h[l] = c->in_dims[l];
    h[4] = c->conv_dim; h[5] = c->mask_dim; h[6] = c->num_groups; h[7] = c->num_queries;
    h[8] = c->hidden_dim; h[9] = c->num_heads; h[10] = c->ffn_dim; h[11] = c->dec_layers;
    h[12] = c->num_classes;
    return 13;
}

static int unpack_m2f(const int* h, M2FConfig* c) {
    for (int l = 0; l < 4; l++) c->in_dims[l] = h[l];
    c->conv_dim = h[4]; c->mask_dim = h[5]; c->num_groups = h[6]; c->num_queries = h[7];
    c->hidden_dim = h[8]; c->num_heads = h[9]; c->ffn_dim = h[10]; c->dec_layers = h[11];
    c->num_classes = h[12];
    return 13;
}

static void pack_header(int* h, const Model* m, int kind) {
    memset(h, 0, CKPT_HEADER_INTS * sizeof(int));
    const ModelConfig* c = &m->cfg;
    int i = 2;
    h[i++] = kind; h[i++] = c->num_classes; h[i++] = c->mae_patch;
    h[i++] = (int)lrintf(c->mask_ratio * 1e6f);
    h[i++] = c->swin.in_chans; h[i++] = c->swin.embed_dim;
    for (int s = 0; s < 4; s++) h[i++] = c->swin.depths[s];
    for (int s = 0; s < 4; s++) h[i++] = c->swin.num_heads[s];
    h[i++] = c->swin.window; h[i++] = c->swin.mlp_ratio;
    i += pack_m2f(h + i, &c->m2f);
    i += pack_m2f(h + i, &c->mae);
    h[i++] = (int)m->n_f; h[i++] = (int)m->n_h; h[i++] = (int)m->n_g;
    const M2FConfig* heads[2] = {&c->m2f, &c->mae};
    for (int k = 0; k < 2; k++) {
        int* q = h + PIXEL_DECODER_HEADER_AT + 4 * k;
        q[0] = heads[k]->pixel_decoder; q[1] = heads[k]->enc_layers; q[2] = heads[k]->enc_ffn; q[3] = heads[k]->n_points;
    }
    h[COLORIZE_AT] = c->colorize;
}

// the checkpoint's data: n parameters (or [params | m | v]) then, for colorization, the weights
static void write_checkpoint_with_color(const Model* m, const char* path, const int* header, float* host, size_t n) {
    if (!m->cfg.colorize) { checkpoint_write(path, header, host, n); return; }
    float* all = (float*)mallocCheck((n + COLOR_BINS) * sizeof(float));
    memcpy(all, host, n * sizeof(float));
    memcpy(all + n, m->color_rebal, COLOR_BINS * sizeof(float));
    checkpoint_write(path, header, all, n + COLOR_BINS);
    free(all);
}

void model_save(const Model* m, const char* path) {
    int header[CKPT_HEADER_INTS];
    pack_header(header, m, CKPT_KIND_MODEL);
    size_t n = m->n_f + m->n_h + m->n_g;
    float* host = (float*)mallocCheck(n * sizeof(float));
    ttt_to_host(host, m->params, n * sizeof(float));
    write_checkpoint_with_color(m, path, header, host, n);
    free(host);
}

// Every header field is bounded before anything is computed from it (shifts, products, sizes),
// so a corrupt or hostile header gets one error line, never an overflow or a huge allocation.
// The bounds are far above any real model (Swin-S: embed 96, window 7, mlp 4; Mask2Former:
// 256 wide, 100 queries, 9 layers) and keep every int product of the forward pass in range.
#define HDR_MAX_EMBED 1024     // stage 4 has 8x the channels
#define HDR_MAX_WINDOW 64
#define HDR_MAX_MLP 16
#define HDR_MAX_WIDTH 2048     // conv_dim = hidden_dim, mask_dim
#define HDR_MAX_QUERIES 4096
#define HDR_MAX_FFN 65536

static int in_range(int v, int lo, int hi) { return v >= lo && v <= hi; }

// one head's fields (h or g, named by which); in_dims must be f's channels
static void check_m2f_header(const M2FConfig* c, int embed, const char* which, const char* path) {
    for (int l = 0; l < 4; l++)
        if (c->in_dims[l] != embed << l)
            ttt_die("checkpoint '%s': %s reads %d channels at level %d, but f gives %d", path, which,
                    c->in_dims[l], l, embed << l);
    int ok = in_range(c->conv_dim, 2, HDR_MAX_WIDTH) && c->hidden_dim == c->conv_dim && c->conv_dim % 2 == 0 &&
             in_range(c->mask_dim, 1, HDR_MAX_WIDTH) && in_range(c->num_groups, 1, c->conv_dim) &&
             c->conv_dim % c->num_groups == 0 && in_range(c->num_queries, 1, HDR_MAX_QUERIES) &&
             in_range(c->num_heads, 1, c->hidden_dim) && c->hidden_dim % c->num_heads == 0 &&
             in_range(c->ffn_dim, 1, HDR_MAX_FFN) && in_range(c->dec_layers, 1, M2F_MAX_LAYERS) &&
             in_range(c->num_classes, 1, COLOR_BINS);
    if (!ok)
        ttt_die("checkpoint '%s' has an invalid %s head (width %d, hidden %d, mask %d, groups %d, queries %d, heads %d, "
                "ffn %d, layers %d, classes %d)", path, which, c->conv_dim, c->hidden_dim, c->mask_dim, c->num_groups,
                c->num_queries, c->num_heads, c->ffn_dim, c->dec_layers, c->num_classes);
}

// the config in a model or resume header; dies naming what is wrong. Returns the header
// index after the config (where n_f, n_h, n_g are).
static int unpack_header(const int* h, ModelConfig* out, const char* path) {
    ModelConfig c;
    memset(&c, 0, sizeof(c));
    int i = 3;
    c.num_classes = h[i++]; c.mae_patch = h[i++];
    int mask_ppm = h[i++];   // mask ratio x 1e6
    c.swin.in_chans = h[i++]; c.swin.embed_dim = h[i++];
    for (int s = 0; s < 4; s++) c.swin.depths[s] = h[i++];
    for (int s = 0; s < 4; s++) c.swin.num_heads[s] = h[i++];
    c.swin.window = h[i++]; c.swin.mlp_ratio = h[i++];
    i += unpack_m2f(h + i, &c.m2f);
    i += unpack_m2f(h + i, &c.mae);
    c.colorize = h[COLORIZE_AT];
    if (c.colorize != 0 && c.colorize != 1) ttt_die("checkpoint '%s' has an invalid task field (%d)", path, c.colorize);
    // the model as a whole (colorization: the COLOR_BINS ab bins are h's classes)
    if (!(c.colorize ? c.num_classes == COLOR_BINS : in_range(c.num_classes, 1, 254)) || !in_range(c.mae_patch, MAE_RECON_PATCH, 1024) ||
        c.mae_patch % MAE_RECON_PATCH != 0 || !in_range(mask_ppm, 0, 999999) || c.swin.in_chans != 4 ||
        c.m2f.num_classes != c.num_classes || c.mae.num_queries != 3 * MAE_RECON_PATCH * MAE_RECON_PATCH)
        ttt_die("checkpoint '%s' has an invalid model config (classes %d, patch %d, mask ratio %g, in_chans %d, "
                "classes of h %d, queries of g %d)", path, c.num_classes, c.mae_patch, mask_ppm * 1e-6,
                c.swin.in_chans, c.m2f.num_classes, c.mae.num_queries);
    c.mask_ratio = mask_ppm * 1e-6f;
    // f: each field in range before embed << s, window * window, the block count
    int blocks = 0, ok = in_range(c.swin.embed_dim, 1, HDR_MAX_EMBED) && in_range(c.swin.window, 1, HDR_MAX_WINDOW) &&
                         in_range(c.swin.mlp_ratio, 1, HDR_MAX_MLP);
    for (int s = 0; s < 4; s++) {
        ok = ok && in_range(c.swin.depths[s], 1, SWIN_MAX_BLOCKS) && in_range(c.swin.num_heads[s], 1, c.swin.embed_dim << s) &&
             (c.swin.embed_dim << s) % c.swin.num_heads[s] == 0;
        if (ok) blocks += c.swin.depths[s];
    }
    if (!ok || blocks > SWIN_MAX_BLOCKS)
        ttt_die("checkpoint '%s' has an invalid Swin config (embed %d, depths %d %d %d %d, heads %d %d %d %d, window %d, "
                "mlp ratio %d)", path, c.swin.embed_dim, c.swin.depths[0], c.swin.depths[1], c.swin.depths[2],
                c.swin.depths[3], c.swin.num_heads[0], c.swin.num_heads[1], c.swin.num_heads[2], c.swin.num_heads[3],
                c.swin.window, c.swin.mlp_ratio);
    check_m2f_header(&c.m2f, c.swin.embed_dim, "h", path);
    check_m2f_header(&c.mae, c.swin.embed_dim, "g", path);
    M2FConfig* heads[2] = {&c.m2f, &c.mae};
    for (int k = 0; k < 2; k++) {
        const int* q = h + PIXEL_DECODER_HEADER_AT + 4 * k;
        M2FConfig* hc = heads[k];
        hc->pixel_decoder = q[0]; hc->enc_layers = q[1]; hc->enc_ffn = q[2]; hc->n_points = q[3];
        int pd_ok = (q[0] == PIXEL_DECODER_FPN && q[1] == 0 && q[2] == 0 && q[3] == 0) ||
                    (q[0] == PIXEL_DECODER_MSDEFORM && q[1] >= 1 && q[1] <= MSD_MAX_LAYERS && q[2] >= 1 &&
                     q[2] <= 65536 && q[3] >= 1 && q[3] <= 64);
        if (!pd_ok)
            ttt_die("checkpoint '%s' has an invalid pixel decoder for %s (kind %d, enc_layers %d, enc_ffn %d, n_points %d)",
                    path, k == 0 ? "h" : "g", q[0], q[1], q[2], q[3]);
    }
    *out = c;
    return i;
}

// the parameter counts of f, h, g that config c gives (computed, nothing allocated) must be the
// header's, at h[i..i+2]; returns their sum
static size_t header_param_count(const int* h, int i, const ModelConfig* c, const char* path) {
    size_t nf = swin_num_params(&c->swin), nh = m2f_num_params(&c->m2f), ng = m2f_num_params(&c->mae);
    if (h[i] < 0 || h[i + 1] < 0 || h[i + 2] < 0 || (size_t)h[i] != nf || (size_t)h[i + 1] != nh || (size_t)h[i + 2] != ng)
        ttt_die("checkpoint '%s' says f, h, g have %d, %d, %d parameters; its config gives %zu, %zu, %zu",
                path, h[i], h[i + 1], h[i + 2], nf, nh, ng);
    return nf + nh + ng;
}

// The header of a model checkpoint (kind CKPT_KIND_MODEL, its data [f | h | g]) or of a resume
// state (CKPT_KIND_RESUME, [params | AdamW m | AdamW v]) read into h and checked in full before
// anything is allocated from it: the kind, every config field (unpack_header), the parameter
// counts, and the file's size. Returns the config; dies naming the file otherwise.
static ModelConfig read_checked_header(const char* path, int* h, int kind) {
    checkpoint_read_header(path, h);
    if (h[2] == CKPT_KIND_OPTIMIZER && kind == CKPT_KIND_RESUME)
        ttt_die("'%s' is the optimizer state of an older ./train (model and moments in two files, which a kill "
                "between the two writes can leave inconsistent); it cannot be resumed: start a new run with --init "
                "and the model file", path);
    if (h[2] != kind && kind == CKPT_KIND_MODEL)
        ttt_die("checkpoint '%s' holds kind %d, not a model (kind %d)%s", path, h[2], CKPT_KIND_MODEL,
                h[2] == CKPT_KIND_OPTIMIZER || h[2] == CKPT_KIND_RESUME
                    ? "; it is a training resume state (the model is the file without .opt)" : "");
    if (h[2] != kind)
        ttt_die("'%s' holds checkpoint kind %d, not a training resume state (kind %d)", path, h[2], CKPT_KIND_RESUME);
    ModelConfig c;
    int i = unpack_header(h, &c, path);
    size_t n = header_param_count(h, i, &c, path);
    if (kind == CKPT_KIND_MODEL && h[G_ABSENT_AT] != 0) {   // converted weights without g: [f | h]
        if (h[G_ABSENT_AT] != 1 || h[G_ABSENT_AT + 1] < 0)
            ttt_die("checkpoint '%s' has an invalid g-absent block (%d, seed %d)", path, h[G_ABSENT_AT], h[G_ABSENT_AT + 1]);
        n -= (size_t)h[i + 2];
    }
    checkpoint_check_size(path, (kind == CKPT_KIND_RESUME ? 3 : 1) * n + (c.colorize ? COLOR_BINS : 0));
    return c;
}

// A version-1 checkpoint's patch embedding saw m = 1 on masked pixels and 0 for the main
// task; the released convention feeds c = 1 - m (1 on visible pixels, all ones for the main
// task). The convolution is linear in its input, so with w'[o, ., ., 3] = -w[o, ., ., 3] and
// b'[o] = b[o] + sum_{ky,kx} w[o, ky, kx, 3] every patch inside the frame gives the same output.
static void convert_mask_channel_v1(float* host_f, const SwinConfig* cfg) {
    SwinParams p;
    swin_point_params(&p, host_f, cfg);
    int E = cfg->embed_dim, C = cfg->in_chans;
    for (int o = 0; o < E; o++) {
        double sum = 0.0;
        for (int k = 0; k < 16; k++) {
            float* w = p.patch_w + ((size_t)o * 16 + k) * C + 3;
            sum += *w;
            *w = -*w;
        }
        p.patch_b[o] = (float)(p.patch_b[o] + sum);
    }
}

// the data of a checkpoint: its first n floats into host and, for colorization, the rebalancing
// weights after them into m
static void read_data_with_color(Model* m, const char* path, float* host, size_t n) {
    if (!m->cfg.colorize) { checkpoint_read_data(path, host, n); return; }
    float* all = (float*)mallocCheck((n + COLOR_BINS) * sizeof(float));
    checkpoint_read_data(path, all, n + COLOR_BINS);
    for (int k = 0; k < COLOR_BINS; k++)
        if (!(all[n + k] > 0.0f) || !isfinite(all[n + k])) ttt_die("checkpoint '%s' has an invalid colour rebalancing weight", path);
    memcpy(host, all, n * sizeof(float));
    memcpy(m->color_rebal, all + n, COLOR_BINS * sizeof(float));
    free(all);
}

Model* model_load(const char* path, int max_batch, int H, int W) {
    return model_load_planned(path, max_batch, max_batch, H, W);
}

Model* model_load_planned(const char* path, int max_batch, int main_batch, int H, int W) {
    int h[CKPT_HEADER_INTS];
    ModelConfig c = read_checked_header(path, h, CKPT_KIND_MODEL);   // g-absent block checked there
    int g_absent = h[G_ABSENT_AT] == 1;
    Model* m = model_create_planned(&c, max_batch, main_batch, H, W);
    size_t n = m->n_f + m->n_h + m->n_g;
    float* host = (float*)mallocCheck(n * sizeof(float));
    if (g_absent) init_params_host(host, m, (uint64_t)h[G_ABSENT_AT + 1]);   // g; f and h from the file
    if (g_absent && c.colorize) ttt_die("checkpoint '%s': a colorization model without g is not a format ttt writes", path);
    read_data_with_color(m, path, host, g_absent ? m->n_f + m->n_h : n);
    if (g_absent)
        fprintf(stderr, "note: '%s' holds f and h only (converted weights without an MAE head); g is "
                        "initialised from scratch with seed %d, as ./train --init would\n", path, h[G_ABSENT_AT + 1]);
    if (!is_finite_array(host, n)) ttt_die("checkpoint '%s' contains NaN or Inf parameters", path);
    if (h[1] == 1) {
        fprintf(stderr, "note: '%s' is a version-1 checkpoint (4th input channel 1 = masked); its patch "
                        "embedding is converted exactly to the released convention (1 = visible)\n", path);
        convert_mask_channel_v1(host, &m->cfg.swin);
    }
    ttt_to_device(m->params, host, n * sizeof(float));
    free(host);
    model_snapshot_ttt(m);
    return m;
}

// Training resume state in ONE file (./train writes it as CKPT.opt): the model header with kind
// CKPT_KIND_RESUME, the AdamW step at RESUME_EXTRA_AT, the caller's count and ints after it;
// data = [params f | h | g, AdamW m, AdamW v]. checkpoint_write renames it into place at once,
// so a kill at any moment leaves either the previous state or the new one, complete.
void model_save_resume(const Model* m, const char* path, const int* extra, int n_extra) {
    if (n_extra < 0 || n_extra > RESUME_MAX_EXTRA - 1) ttt_die("model_save_resume: %d extra ints (max %d)", n_extra, RESUME_MAX_EXTRA - 1);
    int header[CKPT_HEADER_INTS];
    pack_header(header, m, CKPT_KIND_RESUME);
    header[RESUME_EXTRA_AT] = m->adam_t;
    header[RESUME_EXTRA_AT + 1] = n_extra;
    for (int i = 0; i < n_extra; i++) header[RESUME_EXTRA_AT + 2 + i] = extra[i];
    size_t n = m->n_f + m->n_h + m->n_g;
    float* host = (float*)mallocCheck(3 * n * sizeof(float));
    ttt_to_host(host, m->params, n * sizeof(float));
    ttt_to_host(host + n, m->adam_m, n * sizeof(float));
    ttt_to_host(host + 2 * n, m->adam_v, n * sizeof(float));
    write_checkpoint_with_color(m, path, header, host, 3 * n);
    free(host);
}

ModelConfig model_read_resume_config(const char* path, int n_extra) {
    int h[CKPT_HEADER_INTS];
    ModelConfig c = read_checked_header(path, h, CKPT_KIND_RESUME);
    if (h[RESUME_EXTRA_AT + 1] != n_extra || h[RESUME_EXTRA_AT] < 0)
        ttt_die("resume state '%s' is damaged (AdamW step %d, %d training-state ints, expected %d)", path,
                h[RESUME_EXTRA_AT], h[RESUME_EXTRA_AT + 1], n_extra);
    return c;
}

Model* model_load_resume(const char* path, int max_batch, int H, int W, int* extra, int n_extra) {
    int h[CKPT_HEADER_INTS];
    ModelConfig c = model_read_resume_config(path, n_extra);
    checkpoint_read_header(path, h);
    Model* m = model_create(&c, max_batch, H, W);
    size_t n = m->n_f + m->n_h + m->n_g;
    float* host = (float*)mallocCheck(3 * n * sizeof(float));
    read_data_with_color(m, path, host, 3 * n);
    if (!is_finite_array(host, 3 * n)) ttt_die("resume state '%s' contains NaN or Inf", path);
    for (size_t i = 2 * n; i < 3 * n; i++)
        if (host[i] < 0.0f) ttt_die("resume state '%s' is damaged (a negative second moment)", path);
    ttt_to_device(m->params, host, n * sizeof(float));
    ttt_to_device(m->adam_m, host + n, n * sizeof(float));
    ttt_to_device(m->adam_v, host + 2 * n, n * sizeof(float));
    free(host);
    m->adam_t = h[RESUME_EXTRA_AT];
    for (int i = 0; i < n_extra; i++) extra[i] = h[RESUME_EXTRA_AT + 2 + i];
    model_snapshot_ttt(m);
    return m;
}

int model_auto_micro_batch(const ModelConfig* cfg, int B, int H, int W, size_t reserve_bytes, int main_trained) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) {
        size_t used, total;
        ttt_cuda_memory_info(&used, &total);
        size_t n_train = swin_num_params(&cfg->swin) + m2f_num_params(&cfg->m2f) + m2f_num_params(&cfg->mae);
        size_t fixed = (4 * n_train + swin_num_params(&cfg->swin) + m2f_num_params(&cfg->mae)) * sizeof(float);
        // leave 15% of the free memory for workspaces (im2col, attention scores, cuBLAS)
        double budget = 0.85 * (double)(total - used) - (double)fixed - (double)reserve_bytes;
        int M = B;
        while (M > 1 && (double)model_activation_bytes_planned(cfg, M, main_trained ? M : 1, H, W) > budget) M--;
        return M;
    }
#endif
    (void)cfg; (void)H; (void)W; (void)reserve_bytes; (void)main_trained;
    return B;
}

ModelConfig model_read_config(const char* path) {
    int h[CKPT_HEADER_INTS];
    return read_checked_header(path, h, CKPT_KIND_MODEL);
}

// ----------------------------------------------------------------------------
// helpers

// FNV-1a over the bytes of a parameter group
uint64_t model_param_hash(const Model* m, int part) {
    size_t off = part == 0 ? 0 : part == 1 ? m->n_f : m->n_f + m->n_h;
    size_t n = model_num_params(m, part);
    float* host = (float*)mallocCheck(n * sizeof(float));
    ttt_to_host(host, m->params + off, n * sizeof(float));
    uint64_t hsh = 1469598103934665603ULL;
    const unsigned char* b = (const unsigned char*)host;
    for (size_t i = 0; i < n * sizeof(float); i++) { hsh ^= b[i]; hsh *= 1099511628211ULL; }
    free(host);
    return hsh;
}

float* model_params_host(const Model* m) {
    size_t n = m->n_f + m->n_h + m->n_g;
    float* host = (float*)mallocCheck(n * sizeof(float));
    ttt_to_host(host, m->params, n * sizeof(float));
    return host;
}

float* model_grads_host(const Model* m) {
    size_t n = m->n_f + m->n_h + m->n_g;
    float* host = (float*)mallocCheck(n * sizeof(float));
    ttt_to_host(host, m->grads, n * sizeof(float));
    return host;
}

float* model_params_device(Model* m) { return m->params; }

// per image, mask exactly L - int(L * (1 - ratio)) of the L patches (a random permutation)
static void make_patch_masks(unsigned char* mask, int B, int L, float ratio, Rng* rng) {
    int keep = (int)(L * (1.0f - ratio));
    int* perm = (int*)mallocCheck((size_t)L * sizeof(int));
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < L; i++) perm[i] = i;
        for (int i = L - 1; i > 0; i--) { int j = rng_int(rng, i + 1); int t = perm[i]; perm[i] = perm[j]; perm[j] = t; }
        for (int i = 0; i < L; i++) mask[(size_t)b * L + perm[i]] = i >= keep;
    }
    free(perm);
}

static const float* const* swin_outputs(const Model* m) { return (const float* const*)m->fa.out; }

// frames (B, H, W, 3) and their patch masks (B, L) from the host into the device buffers
static void upload_batch(Model* m, const float* frames, const unsigned char* masks, int B) {
    int ps = m->cfg.mae_patch, L = (m->Hp / ps) * (m->Wp / ps);
    ttt_to_device(m->patch_mask, masks, (size_t)B * L);
    ttt_to_device(m->rgb, frames, (size_t)B * m->H * m->W * 3 * sizeof(float));
}

// the same with fresh patch masks
static void upload_masked_batch(Model* m, const float* frames, int B, Rng* rng) {
    int ps = m->cfg.mae_patch, L = (m->Hp / ps) * (m->Wp / ps);
    make_patch_masks(m->patch_mask_host, B, L, m->recipe.mask_ratio, rng);
    upload_batch(m, frames, m->patch_mask_host, B);
}

// number of values the MAE loss averages over for one image's patch mask (L): 3 per
// masked pixel inside the frame (patches over the padding hold fewer), or 3 per pixel of
// the frame when the loss covers all pixels
static double masked_value_count(const Model* m, const unsigned char* mask) {
    if (m->recipe.loss_all_pixels) return 3.0 * m->H * m->W;
    int ps = m->cfg.mae_patch, nPw = m->Wp / ps, nPh = m->Hp / ps;
    double n = 0.0;
    for (int py = 0; py < nPh; py++)
        for (int px = 0; px < nPw; px++) {
            if (!mask[py * nPw + px]) continue;
            int h = m->H - py * ps, w = m->W - px * ps;
            h = h < 0 ? 0 : h > ps ? ps : h;
            w = w < 0 ? 0 : w > ps ? ps : w;
            n += 3.0 * h * w;
        }
    return n;
}

// drop-path of the next forward of f on a batch of B (training and TTT): a fresh table of
// per-sample branch scales when the recipe has a rate (no draws otherwise), else none
static void upload_drop_path(Model* m, int B, Rng* rng) {
    if (m->recipe.drop_path <= 0.0f) { m->fa.drop_scale = NULL; return; }
    int blocks = m->cfg.swin.depths[0] + m->cfg.swin.depths[1] + m->cfg.swin.depths[2] + m->cfg.swin.depths[3];
    swin_drop_path_scales(m->drop_scale_host, &m->cfg.swin, B, m->recipe.drop_path, rng);
    ttt_to_device(m->drop_scale, m->drop_scale_host, (size_t)2 * blocks * B * sizeof(float));
    m->fa.drop_scale = m->drop_scale;
}

static int swin_blocks(const Model* m) {
    const int* d = m->cfg.swin.depths;
    return d[0] + d[1] + d[2] + d[3];
}

// A batch run in chunks (micro-batches, data-parallel ranks) draws its drop-path tables for
// the whole batch up front, in the order the whole batch would draw them: table t (0: the main
// task's forward, 1: the MAE forward) of (2 * blocks, B) into drop_tables_host. Nothing is drawn
// at rate 0. Chunk [b0, b0 + Bc) then uses the columns b0.. of each row (upload_drop_slice), so
// the chunks see exactly the scales the whole batch would.
static void draw_drop_table(Model* m, int B, int t, Rng* rng) {
    if (m->recipe.drop_path <= 0.0f) return;
    size_t rows = (size_t)2 * swin_blocks(m);
    if (B > m->drop_tables_B) {   // grows once to the largest batch seen
        free(m->drop_tables_host);
        m->drop_tables_host = (float*)mallocCheck(2 * rows * B * sizeof(float));
        m->drop_tables_B = B;
    }
    swin_drop_path_scales(m->drop_tables_host + (size_t)t * rows * B, &m->cfg.swin, B, m->recipe.drop_path, rng);
}

static void upload_drop_slice(Model* m, int t, int B, int b0, int Bc) {
    if (m->recipe.drop_path <= 0.0f) { m->fa.drop_scale = NULL; return; }
    size_t rows = (size_t)2 * swin_blocks(m);
    const float* table = m->drop_tables_host + (size_t)t * rows * B;
    for (size_t r = 0; r < rows; r++)
        memcpy(m->drop_scale_host + r * Bc, table + r * B + b0, (size_t)Bc * sizeof(float));
    ttt_to_device(m->drop_scale, m->drop_scale_host, rows * Bc * sizeof(float));
    m->fa.drop_scale = m->drop_scale;
}

// images per chunk of a batch of B: the planned max_B; in a data-parallel gradient step at
// most ceil(B / world), so that the chunks spread over every rank
static int chunk_size(const Model* m, int B, int dp) {
    int M = m->max_B;
    if (dp) {
        int per_rank = (B + m->dp_world - 1) / m->dp_world;
        if (per_rank < M) M = per_rank;
    }
    return M < B ? M : B;
}

// chunk c of a data-parallel step belongs to rank c mod world (every chunk is ours otherwise)
static int owns_chunk(const Model* m, int c, int dp) { return !dp || c % m->dp_world == m->dp_rank; }

// Data parallel: the gradients of `parts` (bit 1 << part of [f | h | g]) and n host values (the
// losses) summed over the ranks in one call of the transport, in place. Every rank calls this at
// the same point of the same step, so every rank then holds the whole batch's gradients.
static void dp_allreduce(Model* m, int parts, double* values, int n) {
    if (m->dp_sum == NULL) return;   // no transport: each rank keeps its part (tests add them)
    float* bufs[4];
    size_t counts[4];
    int k = 0;
    size_t off[3] = {0, m->n_f, m->n_f + m->n_h}, len[3] = {m->n_f, m->n_h, m->n_g};
    for (int p = 0; p < 3; p++) {
        if (!(parts >> p & 1)) continue;
        if (k > 0 && bufs[k - 1] + counts[k - 1] == m->grads + off[p]) counts[k - 1] += len[p];   // contiguous
        else { bufs[k] = m->grads + off[p]; counts[k] = len[p]; k++; }
    }
    float host[DP_SCALARS];
    if (n > DP_SCALARS) ttt_die("internal: dp_allreduce of %d values", n);
    for (int i = 0; i < n; i++) host[i] = (float)values[i];
    ttt_to_device(m->dp_scalars, host, n * sizeof(float));
    bufs[k] = m->dp_scalars; counts[k] = n; k++;
    stage_begin("all-reduce (gradients)");
    m->dp_sum(bufs, counts, k, m->dp_ctx);
    stage_begin(NULL);
    ttt_to_host(host, m->dp_scalars, n * sizeof(float));
    for (int i = 0; i < n; i++) values[i] = host[i];
}

void model_set_data_parallel(Model* m, int rank, int world, DataParallelSum sum, void* ctx) {
    if (world < 1 || rank < 0 || rank >= world) ttt_die("model_set_data_parallel: rank %d of %d", rank, world);
    m->dp_rank = rank; m->dp_world = world; m->dp_sum = sum; m->dp_ctx = ctx;
    if (m->dp_scalars == NULL) m->dp_scalars = (float*)ttt_malloc(DP_SCALARS * sizeof(float));
}

// Hold a head's thresholded attention masks at their values from its last forward (on = 1)
// or compute them again each forward (on = 0). The masks are a step function of the
// weights, so finite differences are only meaningful with them held fixed.
static void freeze_masks(Model* m, float** slot, const M2FConfig* c, const M2FActs* a, int B, int on) {
    model_drop_graphs(m);   // the recorded work reads the mask pointer
    ttt_free(*slot);
    *slot = NULL;
    if (!on) return;
    size_t n = 0;
    for (int i = 0; i < c->dec_layers; i++) n += (size_t)B * c->num_queries * a->T[i % 3];
    float* buf = (float*)ttt_malloc(n * sizeof(float));
    size_t off = 0;
    for (int i = 0; i < c->dec_layers; i++) {
        size_t k = (size_t)B * c->num_queries * a->T[i % 3];
        ttt_copy(buf + off, a->attn_mask[i], k * sizeof(float));
        off += k;
    }
    *slot = buf;
}

void model_freeze_mae_masks(Model* m, int B, int on) { freeze_masks(m, &m->g_frozen_masks, &m->cfg.mae, &m->ga, B, on); }
void model_freeze_main_masks(Model* m, int B, int on) { freeze_masks(m, &m->h_frozen_masks, &m->cfg.m2f, &m->ha, B, on); }

// ----------------------------------------------------------------------------
// The TTT step: one gradient step of the MAE loss on f and g (h is not trained at test time)
//
//   frames x (B, H, W, 3) -> hide most 16 x 16 patches -> x~ (B, Hp, Wp, 4) -> f -> z (four
//   scales) -> g -> recon (B, 48, H4, W4) -> l = mean over the masked values of
//   (recon - target)^2 -> dl/dg, dl/dz -> dl/df -> clip -> AdamW on f and g
//
// model_ttt_step below is that, a line per step, each a call of one of the functions just
// below. Two wrappers change how it runs, never what it computes:
// - CUDA graph: the lines from mask_input to f_backward are the same device work on every call
//   with this B, so on the GPU they are recorded once as a graph and replayed after (on the CPU
//   device_graph_replay is always 0 and they simply run);
// - mae_in_chunks (micro-batching, data parallel): a batch larger than max_B, or split over
//   ranks, runs the same lines on chunks, each weighted by its share of the masked values.

enum { PART_F = 1 << 0, PART_H = 1 << 1, PART_G = 1 << 2 };   // bits of the parts [f | h | g]

// uploaded frames and masks -> x~ (B, Hp, Wp, 4): normalised, masked pixels 0, a 4th channel
// that is 1 on visible pixels; the target (B, 48, H4, W4) and which of its values count
static void mask_input(Model* m, int B) {
    mae_prepare_input(m->inp4, m->target, m->target_mask, m->rgb, m->patch_mask,
                      B, m->H, m->W, m->Hp, m->Wp, m->cfg.mae_patch, m->recipe.loss_all_pixels);
}

// z = f(x~): Swin's features at 1/4, 1/8, 1/16, 1/32 (m->fa.out)
static void f_forward(Model* m, int B) {
    stage_begin("f forward (masked)");
    swin_forward(&m->cfg.swin, &m->f, &m->fa, m->rel_index, m->inp4, B);
}

// g(z): h's architecture with 48 queries; every decoder layer predicts (m->ga)
// a model made by model_create_sharing predicts only: it has no buffers for g or gradients
static void require_trainable(const Model* m) {
    if (m->shares_params) ttt_die("internal: a prediction-only model (model_create_sharing) cannot run g or a backward pass");
}

static void g_forward(Model* m, int B) {
    require_trainable(m);
    stage_begin("g forward + loss");
    m2f_forward(&m->cfg.mae, &m->g, &m->ga, swin_outputs(m), B, m->g_frozen_masks);
}

// recon: g's last prediction's 48 mask maps (B, 48, H4, W4), the 3 x 4 x 4 pixels of each
// 4 x 4 patch at 1/4 resolution; dg_recon: its gradient
static float* g_recon(const Model* m, int B) {
    int L = m->cfg.mae.dec_layers + 1;
    return m->ga.mask_logits + (size_t)(L - 1) * B * m->cfg.mae.num_queries * m->H4 * m->W4;
}
// g's gradient buffers hold the logits of the last prediction only (m2f_point_grad_acts with
// last_only), or of all (model_mirror_head_grads)
static int g_grad_predictions(const Model* m) { return m->dga.last_only ? 1 : m->cfg.mae.dec_layers + 1; }
static float* dg_recon(const Model* m, int B) {
    return m->dga.mask_logits + (size_t)(g_grad_predictions(m) - 1) * B * m->cfg.mae.num_queries * m->H4 * m->W4;
}

// l = mean over the counted values of (recon - target)^2, into m->loss (one float, device)
static void mae_loss(Model* m, int B) {
    int n = B * m->cfg.mae.num_queries * m->H4 * m->W4;
    masked_mse_forward(m->loss, g_recon(m, B), m->target, m->target_mask, n, 1);
    stage_begin(NULL);
}

// the host masks (B, L) and per-image counts of a batch split in chunks: grown once to the
// largest batch seen
static void ensure_micro_masks(Model* m, int B, int L) {
    if (B <= m->micro_masks_B) return;
    free(m->micro_masks); free(m->micro_counts);
    m->micro_masks = (unsigned char*)mallocCheck((size_t)B * L);
    m->micro_counts = (double*)mallocCheck((size_t)B * sizeof(double));
    m->micro_masks_B = B;
}

// the gradients of [f | h | g] to 0 (backward ops accumulate)
static void zero_grads(Model* m) { ttt_zero(m->grads, (m->n_f + m->n_h + m->n_g) * sizeof(float)); }

// dl/drecon = dloss * 2 (recon - target) / n on the counted values, then back through g:
// accumulates the gradients of g, and dl/dz into m->dfeat (zeroed here). dloss: the weight of
// this batch's mean in the loss (1, or a chunk's share of a micro-batched batch).
static void g_backward(Model* m, int B, float dloss) {
    int Q = m->cfg.mae.num_queries, L = g_grad_predictions(m), Kg = m->cfg.mae.num_classes + 1;
    size_t per = (size_t)B * Q * m->H4 * m->W4;
    ttt_zero(m->dga.class_logits, (size_t)L * B * Q * Kg * sizeof(float));   // only the last maps get a loss
    ttt_zero(m->dga.mask_logits, (size_t)L * per * sizeof(float));
    masked_mse_backward(dg_recon(m, B), dloss, g_recon(m, B), m->target, m->target_mask, (int)per, 1);
    for (int s = 0; s < 4; s++)
        ttt_zero(m->dfeat[s], (size_t)B * m->fa.Hs[s] * m->fa.Ws[s] * m->fa.C[s] * sizeof(float));
    stage_begin("g backward");
    m2f_backward(&m->cfg.mae, &m->g, &m->dg, &m->ga, &m->dga, swin_outputs(m), m->dfeat, B);
}

// dl/dz back through f: accumulates the gradients of f
static void f_backward(Model* m, int B) {
    require_trainable(m);
    stage_begin("f backward");
    swin_backward(&m->cfg.swin, &m->f, &m->df, &m->fa, &m->dfa, m->rel_index, m->inp4, m->dfeat, NULL, B);
    stage_begin(NULL);
}

static float read_loss(const Model* m) {
    float loss;
    ttt_to_host(&loss, m->loss, sizeof(float));
    return loss;
}

// Micro-batching: a batch larger than the planned one (max_B) runs in chunks of max_B
// images. All B masks are drawn first (the same draws as one big batch), then the batch's
// drop-path table (likewise); the loss is the mean over every masked value of the batch, so
// chunk c's mean enters with weight n_c / n (its share of the masked values) in the loss and in
// the gradients, which the chunks accumulate (backward = 1). Returns the loss of the whole batch.
// Data parallel (backward with world > 1): chunks of at most ceil(B / world), chunk c run by
// rank c mod world; every rank draws every mask and table (its rng stays in step with the
// others'), and the gradients of f and g and the loss are summed over the ranks at the end.
static float mae_in_chunks(Model* m, const float* frames, int B, Rng* rng, int backward) {
    int ps = m->cfg.mae_patch, L = (m->Hp / ps) * (m->Wp / ps);
    int dp = backward && m->dp_world > 1, M = chunk_size(m, B, dp);
    ensure_micro_masks(m, B, L);
    make_patch_masks(m->micro_masks, B, L, m->recipe.mask_ratio, rng);
    draw_drop_table(m, B, 0, rng);
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        m->micro_counts[b] = masked_value_count(m, m->micro_masks + (size_t)b * L);
        total += m->micro_counts[b];
    }
    if (backward) zero_grads(m);
    double loss = 0.0;
    for (int c = 0, b0 = 0; b0 < B; c++, b0 += M) {
        if (!owns_chunk(m, c, dp)) continue;
        int Bc = B - b0 < M ? B - b0 : M;
        double nc = 0.0;
        for (int b = b0; b < b0 + Bc; b++) nc += m->micro_counts[b];
        double share = total > 0.0 ? nc / total : 0.0;
        upload_batch(m, frames + (size_t)b0 * m->H * m->W * 3, m->micro_masks + (size_t)b0 * L, Bc);
        upload_drop_slice(m, 0, B, b0, Bc);
        mask_input(m, Bc);
        f_forward(m, Bc);
        g_forward(m, Bc);
        mae_loss(m, Bc);
        if (backward) {
            g_backward(m, Bc, (float)share);
            f_backward(m, Bc);
        }
        loss += share * read_loss(m);
    }
    if (dp) dp_allreduce(m, PART_F | PART_G, &loss, 1);   // h is not trained at test time
    return (float)loss;
}

// The TTT step on B frames (opt NULL: stop at the gradients, model_mae_forward_backward).
// Returns the MAE loss; a NaN / Inf loss or gradient norm leaves the weights untouched (the
// caller resets).
float model_ttt_step(Model* m, const float* frames, int B, const OptConfig* opt, Rng* rng) {
    float loss;
    if (B > m->max_B || m->dp_world > 1) loss = mae_in_chunks(m, frames, B, rng, 1);   // the lines below, on chunks
    else {
        upload_masked_batch(m, frames, B, rng);   // mask: fresh random patch masks (host), frames and masks to the device
        upload_drop_path(m, B, rng);              // f's drop-path scales for this batch (recipe; none at rate 0)
        DeviceGraph* graph = &m->mae_graphs[B];
        if (!device_graph_replay(graph)) {        // on the GPU: recorded once per B, replayed after
            device_graph_begin(graph);
            mask_input(m, B);                     // x~ (B, Hp, Wp, 4) and the target (B, 48, H4, W4)
            f_forward(m, B);                      // z = f(x~)
            g_forward(m, B);                      // recon = g(z)
            mae_loss(m, B);                       // l = mean over the masked values of (recon - target)^2
            zero_grads(m);
            g_backward(m, B, 1.0f);               // grads of g, dl/dz
            f_backward(m, B);                     // grads of f
            device_graph_end(graph);
        }
        loss = read_loss(m);
    }
    if (opt == NULL || !isfinite(loss)) return loss;
    stage_begin("AdamW (f, g)");
    if (m->recipe.ttt_clip > 0.0f &&              // clip: ||grads of f, g|| <= ttt_clip (the released code's 0.01)
        !isfinite(clip_grad_parts(m, m->recipe.ttt_clip, PART_F | PART_G))) { stage_begin(NULL); return NAN; }
    m->adam_t++;
    adamw_parts(m, opt, PART_F | PART_G);          // AdamW on f and g, with the recipe's param groups
    stage_begin(NULL);
    return loss;
}

float model_mae_forward_backward(Model* m, const float* frames, int B, Rng* rng) {
    return model_ttt_step(m, frames, B, NULL, rng);
}

// the MAE loss alone (no gradients, no graph)
float model_mae_loss(Model* m, const float* frames, int B, Rng* rng) {
    if (B > m->max_B) return mae_in_chunks(m, frames, B, rng, 0);
    upload_masked_batch(m, frames, B, rng);
    upload_drop_path(m, B, rng);
    mask_input(m, B);
    f_forward(m, B);
    g_forward(m, B);
    mae_loss(m, B);
    return read_loss(m);
}

void model_predict(Model* m, const float* frame, unsigned char* pred) {
    ttt_to_device(m->rgb, frame, (size_t)m->H * m->W * 3 * sizeof(float));
    m->fa.drop_scale = NULL;   // prediction: no drop-path (the recorded work has none either)
    // frame in, class ids out: everything between runs on the device (one CUDA graph)
    if (!device_graph_replay(&m->predict_graph)) {
        device_graph_begin(&m->predict_graph);
        stage_begin("predict: f forward");
        mae_prepare_input(m->inp4, NULL, NULL, m->rgb, NULL, 1, m->H, m->W, m->Hp, m->Wp, m->cfg.mae_patch, 0);
        swin_forward(&m->cfg.swin, &m->f, &m->fa, m->rel_index, m->inp4, 1);
        stage_begin("predict: h forward");
        m2f_forward(&m->cfg.m2f, &m->h, &m->ha, swin_outputs(m), 1, NULL);
        stage_begin("predict: semantic inference");
        int L = m->cfg.m2f.dec_layers + 1, Q = m->cfg.m2f.num_queries, K = m->cfg.num_classes;
        semantic_inference(m->pred_ids, m->ha.class_logits + (size_t)(L - 1) * Q * (K + 1),
                           m->ha.mask_logits + (size_t)(L - 1) * Q * m->H4 * m->W4,
                           Q, K, m->H4, m->W4, m->H, m->W, m->pred_H, m->pred_W, m->infer_work);
        device_graph_end(&m->predict_graph);
    }
    ttt_to_host(pred, m->pred_ids, (size_t)m->pred_H * m->pred_W);
    stage_begin(NULL);
}

void model_set_predict_size(Model* m, int H, int W) {
    if (H < 1 || W < 1) ttt_die("model_set_predict_size: bad size %dx%d", W, H);
    if (H == m->pred_H && W == m->pred_W) return;
    if ((size_t)H * W > (size_t)m->pred_H * m->pred_W) {
        ttt_free(m->pred_ids);
        m->pred_ids = (unsigned char*)ttt_malloc((size_t)H * W);
    }
    m->pred_H = H; m->pred_W = W;
    device_graph_free(&m->predict_graph);   // the recorded work has the old size
}

// ----------------------------------------------------------------------------
// joint training: set loss of h o f on the clean image + MAE loss of g o f on the masked one

void model_set_loss_config(Model* m, const SetLossConfig* c) { m->set_loss_cfg = *c; }
float model_last_grad_norm(const Model* m) { return m->grad_norm; }
int model_adam_step(const Model* m) { return m->adam_t; }

// host buffers of the set loss, allocated on the first training step (stream.c never needs them)
static void ensure_train_buffers(Model* m) {
    if (m->host_cls_all) return;
    const M2FConfig* c = &m->cfg.m2f;
    size_t L = c->dec_layers + 1, BQ = (size_t)m->max_B * c->num_queries;
    size_t ncls = L * BQ * (c->num_classes + 1), nmask = L * BQ * m->H4 * m->W4;
    m->host_cls_all = (float*)mallocCheck(ncls * sizeof(float));
    m->host_dcls = (float*)mallocCheck(ncls * sizeof(float));
    m->host_mask_all = (float*)mallocCheck(nmask * sizeof(float));
    m->host_dmask = (float*)mallocCheck(nmask * sizeof(float));
    m->host_labels_pad = (unsigned char*)mallocCheck((size_t)m->max_B * m->Hp * m->Wp);
}

// the set loss on panoptic targets (Mask2Former's panoptic mapper: one mask per kept segment,
// empty ones included) from the padded segment-index maps in host_labels_pad
static float panoptic_set_loss(Model* m, const SetLossConfig* lc, const int* pan_classes, const int* pan_counts,
                               int B, int want_grad, Rng* rng, float parts[3]) {
    const M2FConfig* c = &m->cfg.m2f;
    int L = c->dec_layers + 1, Q = c->num_queries, K = c->num_classes;
    size_t HWp = (size_t)m->Hp * m->Wp;
    int total = 0;
    for (int b = 0; b < B; b++) total += pan_counts[b];
    int* num_t = (int*)mallocCheck(((size_t)B + 1) * sizeof(int));
    int* tcls = (int*)mallocCheck(((size_t)total + 1) * sizeof(int));
    float* tmask = (float*)mallocCheck(((size_t)total * HWp + 1) * sizeof(float));
    int* seg = (int*)mallocCheck(HWp * sizeof(int));
    int off = 0;
    for (int b = 0; b < B; b++) {
        const unsigned char* l = m->host_labels_pad + (size_t)b * HWp;
        for (size_t i = 0; i < HWp; i++) seg[i] = l[i] == 255 ? 0 : l[i] + 1;
        num_t[b] = set_loss_targets_panoptic(tcls + off, tmask + (size_t)off * HWp, seg, m->Hp, m->Wp,
                                             pan_classes + (size_t)b * PANOPTIC_MAX_TRAIN_SEGMENTS, pan_counts[b], K);
        off += num_t[b];
    }
    float loss = set_loss_from_targets(lc, m->host_cls_all, m->host_mask_all, L, B, Q, K, m->H4, m->W4, num_t, tcls, tmask,
                                       m->Hp, m->Wp, want_grad ? m->host_dcls : NULL, want_grad ? m->host_dmask : NULL, rng, parts);
    free(num_t); free(tcls); free(tmask); free(seg);
    return loss;
}

static float main_set_loss(Model* m, const unsigned char* labels, int B, Rng* rng, int want_grad, float num_masks,
                          const int* pan_classes, const int* pan_counts);

// f and h on the clean images (B, H, W, 3) host; set loss against labels (B, H, W) on the host.
// The mask maps cover the padded frame, so labels are padded with 255 (ignore) to Hp x Wp.
// With want_grad the logits' gradients land in host_dcls / host_dmask.
// num_masks > 0: the normaliser of the mask losses (a micro-batch's share of the batch's targets)
// pan_classes, pan_counts (panoptic targets, NULL for semantic labels): labels are then segment
// indexes (255 = void), image b's segment s of class pan_classes[b * PANOPTIC_MAX_TRAIN_SEGMENTS + s]
// The caller has uploaded f's drop-path table (upload_drop_path / upload_drop_slice); rng: the
// set loss's random points.
static float main_forward(Model* m, const float* images, const unsigned char* labels, int B,
                          Rng* rng, int want_grad, float num_masks, const int* pan_classes, const int* pan_counts) {
    ensure_train_buffers(m);
    ttt_to_device(m->rgb, images, (size_t)B * m->H * m->W * 3 * sizeof(float));
    mae_prepare_input(m->inp4, NULL, NULL, m->rgb, NULL, B, m->H, m->W, m->Hp, m->Wp, m->cfg.mae_patch, 0);
    swin_forward(&m->cfg.swin, &m->f, &m->fa, m->rel_index, m->inp4, B);
    m2f_forward(&m->cfg.m2f, &m->h, &m->ha, swin_outputs(m), B, m->h_frozen_masks);
    return main_set_loss(m, labels, B, rng, want_grad, num_masks, pan_classes, pan_counts);
}

// the set loss of h's last forward of B images (logits copied to the host) against labels
// (B, H, W), padded with 255 to the model's Hp x Wp; gradients into host_dcls / host_dmask
static float main_set_loss(Model* m, const unsigned char* labels, int B, Rng* rng, int want_grad, float num_masks,
                          const int* pan_classes, const int* pan_counts) {
    const M2FConfig* c = &m->cfg.m2f;
    int L = c->dec_layers + 1, Q = c->num_queries, K = c->num_classes;
    size_t ncls = (size_t)L * B * Q * (K + 1), nmask = (size_t)L * B * Q * m->H4 * m->W4;
    ttt_to_host(m->host_cls_all, m->ha.class_logits, ncls * sizeof(float));
    ttt_to_host(m->host_mask_all, m->ha.mask_logits, nmask * sizeof(float));
    // non-finite logits would stall the matcher: report NaN, the caller skips the update
    if (!is_finite_array(m->host_cls_all, ncls) || !is_finite_array(m->host_mask_all, nmask)) return NAN;
    if (want_grad) {
        memset(m->host_dcls, 0, ncls * sizeof(float));
        memset(m->host_dmask, 0, nmask * sizeof(float));
    }
    if (m->cfg.colorize) {   // --task colorize: the rebalanced colour loss (color.c) of every layer
        size_t off = (size_t)m->color_b0 * m->H4 * m->W4 * COLOR_NEIGHBOURS;
        return color_loss(m->host_cls_all, m->host_mask_all, L, B, Q, m->H4, m->W4, m->color_ids + off, m->color_w + off,
                          m->color_rebal, want_grad ? m->host_dcls : NULL, want_grad ? m->host_dmask : NULL);
    }
    memset(m->host_labels_pad, 255, (size_t)B * m->Hp * m->Wp);
    for (int b = 0; b < B; b++)
        for (int y = 0; y < m->H; y++)
            memcpy(m->host_labels_pad + ((size_t)b * m->Hp + y) * m->Wp,
                   labels + ((size_t)b * m->H + y) * m->W, (size_t)m->W);
    // a mask map with no more pixels than the point budget is supervised on every pixel:
    // exact, and cheaper than 3 x 12544 random points
    SetLossConfig lc = m->set_loss_cfg;
    if (m->H4 * m->W4 <= lc.num_points) lc.all_pixels = 1;
    if (num_masks > 0.0f) lc.num_masks = num_masks;
    float parts[3];
    if (pan_classes) return panoptic_set_loss(m, &lc, pan_classes, pan_counts, B, want_grad, rng, parts);
    return set_loss(&lc, m->host_cls_all, m->host_mask_all, L, B, Q, K, m->H4, m->W4,
                    m->host_labels_pad, m->Hp, m->Wp, want_grad ? m->host_dcls : NULL,
                    want_grad ? m->host_dmask : NULL, rng, parts);
}

// backward of the set loss (gradients in host_dcls / host_dmask) through h and f, accumulated
static void main_backward(Model* m, int B) {
    const M2FConfig* c = &m->cfg.m2f;
    int L = c->dec_layers + 1, Q = c->num_queries, K = c->num_classes;
    ttt_to_device(m->dha.class_logits, m->host_dcls, (size_t)L * B * Q * (K + 1) * sizeof(float));
    ttt_to_device(m->dha.mask_logits, m->host_dmask, (size_t)L * B * Q * m->H4 * m->W4 * sizeof(float));
    for (int s = 0; s < 4; s++)
        ttt_zero(m->dfeat[s], (size_t)B * m->fa.Hs[s] * m->fa.Ws[s] * m->fa.C[s] * sizeof(float));
    require_trainable(m);
    m2f_backward(c, &m->h, &m->dh, &m->ha, &m->dha, swin_outputs(m), m->dfeat, B);
    swin_backward(&m->cfg.swin, &m->f, &m->df, &m->fa, &m->dfa, m->rel_index, m->inp4, m->dfeat, NULL, B);
}

// targets of a label batch: the classes present in each label (255 ignored), summed, as the set
// loss makes them (set_loss_targets_semantic counts when given no masks)
static int count_targets(const unsigned char* labels, int B, int H, int W, int K) {
    int classes[256], total = 0;
    for (int b = 0; b < B; b++) total += set_loss_targets_semantic(classes, NULL, labels + (size_t)b * H * W, H, W, K);
    return total;
}

// 1 when the set loss draws random points (not every pixel of the mask maps; see main_forward)
static int set_loss_draws(const Model* m) {
    return !m->set_loss_cfg.all_pixels && m->H4 * m->W4 > m->set_loss_cfg.num_points;
}

// the host gradients of the last main-task forward of B images times s (a chunk's share)
static void scale_host_main_grads(Model* m, int B, float s) {
    const M2FConfig* c = &m->cfg.m2f;
    size_t L = c->dec_layers + 1, BQ = (size_t)B * c->num_queries;
    size_t ncls = L * BQ * (c->num_classes + 1), nmask = L * BQ * m->H4 * m->W4;
    for (size_t i = 0; i < ncls; i++) m->host_dcls[i] *= s;
    for (size_t i = 0; i < nmask; i++) m->host_dmask[i] *= s;
}

// The joint loss of a batch, in micro-batches of at most max_B images that behave as the
// replicas of detectron2's data-parallel training (Mask2Former, 8 GPUs x 2 images for batch
// 16): chunk c of n_c images enters with weight n_c / B; its mask losses are divided by its
// share of the batch's targets, max(1, T n_c / B) (Mask2Former all-reduces num_masks and
// divides by the world size), so the chunks' mask losses add up to the whole batch's; its
// class loss is its own weighted mean (per replica, as DDP averages); the MAE loss is each
// chunk's mean (equal pixels per image: the batch's mean). One chunk (B <= max_B) is the plain
// step. backward: accumulate the gradients (zeroed here first). Losses land in *lm, *lr.
// Random draws: one chunk draws as it goes (f's drop-path, set-loss points, MAE masks, f's
// drop-path again). Several chunks, or data parallel, draw the batch's randomness up front, the
// same on every rank: f's drop-path table for the main forward, all B masks, the table for the
// MAE forward, then (when the set loss samples points) one seed per chunk for its points.
// Data parallel (backward with world > 1): chunks of at most ceil(B / world) images, chunk c run
// by rank c mod world, then gradients of f, h, g and both losses summed over the ranks: the
// step of one process running the same chunks, up to float summation order.
static float train_chunks(Model* m, const float* images, const unsigned char* labels, int B, Rng* rng,
                          int backward, float* loss_main, float* loss_mae, const int* pan_classes, const int* pan_counts) {
    size_t HW = (size_t)m->H * m->W;
    int dp = backward && m->dp_world > 1, M = chunk_size(m, B, dp);
    int n_chunks = (B + M - 1) / M, chunked = n_chunks > 1, upfront = chunked || dp;
    int T = chunked && labels ? count_targets(labels, B, m->H, m->W, m->cfg.num_classes) : 0;   // labels NULL: colorize
    if (chunked && pan_classes) { T = 0; for (int b = 0; b < B; b++) T += pan_counts[b]; }
    if (backward) zero_grads(m);
    int ps = m->cfg.mae_patch, L = (m->Hp / ps) * (m->Wp / ps);
    if (upfront) {
        draw_drop_table(m, B, 0, rng);
        ensure_micro_masks(m, B, L);
        make_patch_masks(m->micro_masks, B, L, m->recipe.mask_ratio, rng);
        draw_drop_table(m, B, 1, rng);
        if (set_loss_draws(m)) {
            if (n_chunks > m->chunk_seeds_n) {
                free(m->chunk_seeds);
                m->chunk_seeds = (uint64_t*)mallocCheck((size_t)n_chunks * sizeof(uint64_t));
                m->chunk_seeds_n = n_chunks;
            }
            for (int c = 0; c < n_chunks; c++) {
                uint64_t hi = rng_u32(rng);
                m->chunk_seeds[c] = hi << 32 | rng_u32(rng);
            }
        }
    }
    double lm = 0.0, lr = 0.0;
    for (int c = 0, b0 = 0; b0 < B; c++, b0 += M) {
        if (!owns_chunk(m, c, dp)) continue;
        int Bc = B - b0 < M ? B - b0 : M;
        float w = (float)Bc / (float)B;
        float num_masks = chunked ? fmaxf(1.0f, T * w) : 0.0f;
        const float* img = images + (size_t)b0 * HW * 3;
        Rng chunk_rng, *point_rng = rng;   // the set loss's points
        if (upfront && set_loss_draws(m)) { rng_seed(&chunk_rng, m->chunk_seeds[c]); point_rng = &chunk_rng; }
        // main task first: the MAE forward reuses f's activations
        if (upfront) upload_drop_slice(m, 0, B, b0, Bc); else upload_drop_path(m, Bc, rng);
        m->color_b0 = b0;   // --task colorize: the chunk's targets (main_set_loss)
        float lmc = main_forward(m, img, labels ? labels + (size_t)b0 * HW : NULL, Bc, point_rng, backward, num_masks,
                                 pan_classes ? pan_classes + (size_t)b0 * PANOPTIC_MAX_TRAIN_SEGMENTS : NULL,
                                 pan_counts ? pan_counts + b0 : NULL);
        if (!isfinite(lmc)) { lm = NAN; lr = NAN; break; }
        if (backward) {
            if (w != 1.0f) scale_host_main_grads(m, Bc, w);   // the chunk's weight
            main_backward(m, Bc);
        }
        if (upfront) {
            upload_batch(m, img, m->micro_masks + (size_t)b0 * L, Bc);
            upload_drop_slice(m, 1, B, b0, Bc);
        } else {
            upload_masked_batch(m, img, Bc, rng);
            upload_drop_path(m, Bc, rng);
        }
        mask_input(m, Bc);
        f_forward(m, Bc);
        g_forward(m, Bc);
        mae_loss(m, Bc);
        if (backward) {
            g_backward(m, Bc, w);
            f_backward(m, Bc);
        }
        float lrc = read_loss(m);
        lm += w * lmc;
        lr += w * lrc;
    }
    if (dp) {   // a rank whose chunk gave NaN makes the sums NaN: every rank then skips the update
        double sums[2] = {lm, lr};
        dp_allreduce(m, 7, sums, 2);
        lm = sums[0]; lr = sums[1];
    }
    if (loss_main) *loss_main = (float)lm;
    if (loss_mae) *loss_mae = (float)lr;
    return (float)(lm + lr);
}

float model_train_loss(Model* m, const float* images, const unsigned char* labels, int B, Rng* rng) {
    return train_chunks(m, images, labels, B, rng, 0, NULL, NULL, NULL, NULL);
}

float model_train_forward_backward(Model* m, const float* images, const unsigned char* labels,
                                   int B, Rng* rng, float* loss_main, float* loss_mae) {
    return train_chunks(m, images, labels, B, rng, 1, loss_main, loss_mae, NULL, NULL);
}

static void train_step(Model* m, const float* images, const unsigned char* labels, const int* pan_classes,
                       const int* pan_counts, int B, const OptConfig* opt, float grad_clip, Rng* rng,
                       float* loss_main, float* loss_mae) {
    float total = train_chunks(m, images, labels, B, rng, 1, loss_main, loss_mae, pan_classes, pan_counts);
    const int all_parts = 7;
    if (!isfinite(total)) { m->grad_norm = NAN; return; }   // weights untouched
    m->grad_norm = clip_grad_parts(m, grad_clip, all_parts);
    if (!isfinite(m->grad_norm)) return;
    m->adam_t++;
    adamw_parts(m, opt, all_parts);
}

void model_train_step(Model* m, const float* images, const unsigned char* labels, int B,
                      const OptConfig* opt, float grad_clip, Rng* rng, float* loss_main, float* loss_mae) {
    train_step(m, images, labels, NULL, NULL, B, opt, grad_clip, rng, loss_main, loss_mae);
}

void model_copy_params(Model* dst, const Model* src) {
    if (dst->n_f != src->n_f || dst->n_h != src->n_h || dst->n_g != src->n_g)
        ttt_die("model_copy_params: the two models have different configs");
    ttt_copy(dst->params, src->params, (src->n_f + src->n_h + src->n_g) * sizeof(float));
    memcpy(dst->color_rebal, src->color_rebal, sizeof(dst->color_rebal));
    model_snapshot_ttt(dst);
}

// load the f and h parts of a model checkpoint into m (g keeps its own initialisation)
void model_load_f_h(Model* m, const char* path) {
    Model* src = model_load(path, 1, 32, 32);
    if (src->n_f != m->n_f || src->n_h != m->n_h)
        ttt_die("checkpoint '%s' has f, h of %zu, %zu parameters; this model has %zu, %zu",
                path, src->n_f, src->n_h, m->n_f, m->n_h);
    ttt_copy(m->params, src->params, (m->n_f + m->n_h) * sizeof(float));
    model_snapshot_ttt(m);
    model_free(src);
}

// optimizer state for resuming training: [m and v of f | h | g] in a checkpoint of kind
// CKPT_KIND_OPTIMIZER (3) whose header also records the parameter counts and the step t

void model_save_optimizer(const Model* m, const char* path, const int* extra, int n_extra) {
    int header[CKPT_HEADER_INTS] = {0};
    header[2] = CKPT_KIND_OPTIMIZER;
    header[3] = (int)m->n_f; header[4] = (int)m->n_h; header[5] = (int)m->n_g; header[6] = m->adam_t;
    if (n_extra > CKPT_HEADER_INTS - 16) ttt_die("model_save_optimizer: too many extra ints");
    memcpy(header + 16, extra, n_extra * sizeof(int));
    size_t n = m->n_f + m->n_h + m->n_g;
    float* host = (float*)mallocCheck(2 * n * sizeof(float));
    ttt_to_host(host, m->adam_m, n * sizeof(float));
    ttt_to_host(host + n, m->adam_v, n * sizeof(float));
    checkpoint_write(path, header, host, 2 * n);
    free(host);
}

void model_load_optimizer(Model* m, const char* path, int* extra, int n_extra) {
    int h[CKPT_HEADER_INTS];
    checkpoint_read_header(path, h);
    if (h[2] != CKPT_KIND_OPTIMIZER) ttt_die("'%s' is not an optimizer state file (kind %d)", path, h[2]);
    if (h[1] == 1)   // its moments belong to the old 4th-channel convention (see model_load)
        ttt_die("optimizer state '%s' is version 1 (4th channel 1 = masked) and cannot be resumed; "
                "start a new run with --init from the model", path);
    if (h[3] != (int)m->n_f || h[4] != (int)m->n_h || h[5] != (int)m->n_g)
        ttt_die("optimizer state '%s' is for f, h, g of %d, %d, %d parameters; the model has %zu, %zu, %zu",
                path, h[3], h[4], h[5], m->n_f, m->n_h, m->n_g);
    size_t n = m->n_f + m->n_h + m->n_g;
    float* host = (float*)mallocCheck(2 * n * sizeof(float));
    checkpoint_read_data(path, host, 2 * n);
    ttt_to_device(m->adam_m, host, n * sizeof(float));
    ttt_to_device(m->adam_v, host + n, n * sizeof(float));
    free(host);
    m->adam_t = h[6];
    memcpy(extra, h + 16, n_extra * sizeof(int));
}


// ----------------------------------------------------------------------------
// the last prediction's logits, for panoptic and instance inference on the host (stream.c's
// --task panoptic|instance; coco_stream.c)

void model_prediction_sizes(const Model* m, int* Q, int* K, int* H4, int* W4, int* H, int* W) {
    *Q = m->cfg.m2f.num_queries; *K = m->cfg.num_classes;
    *H4 = m->H4; *W4 = m->W4; *H = m->H; *W = m->W;
}

void model_last_logits(const Model* m, float* class_logits, float* mask_logits) {
    int L = m->cfg.m2f.dec_layers + 1, Q = m->cfg.m2f.num_queries, K = m->cfg.num_classes;
    ttt_to_host(class_logits, m->ha.class_logits + (size_t)(L - 1) * Q * (K + 1), (size_t)Q * (K + 1) * sizeof(float));
    ttt_to_host(mask_logits, m->ha.mask_logits + (size_t)(L - 1) * Q * m->H4 * m->W4, (size_t)Q * m->H4 * m->W4 * sizeof(float));
}

// joint training on panoptic targets (./train --task panoptic): model_train_step with segment
// index maps and their classes instead of semantic labels
void model_train_step_panoptic(Model* m, const float* images, const unsigned char* seg_index,
                               const int* seg_classes, const int* seg_counts, int B, const OptConfig* opt,
                               float grad_clip, Rng* rng, float* loss_main, float* loss_mae) {
    train_step(m, images, seg_index, seg_classes, seg_counts, B, opt, grad_clip, rng, loss_main, loss_mae);
}

float model_train_loss_panoptic(Model* m, const float* images, const unsigned char* seg_index,
                                const int* seg_classes, const int* seg_counts, int B, Rng* rng) {
    return train_chunks(m, images, seg_index, B, rng, 0, NULL, NULL, seg_classes, seg_counts);
}

// ---- --task colorize (color.c): the colour loss in place of the set loss (main_set_loss) ----

void model_set_color_weights(Model* m, const float* w) { memcpy(m->color_rebal, w, sizeof(m->color_rebal)); }
void model_color_weights(const Model* m, float* w) { memcpy(w, m->color_rebal, sizeof(m->color_rebal)); }

static void check_colorize_model(const Model* m) {
    if (!m->cfg.colorize) ttt_die("a colorization step needs a colorization model (./train --task colorize)");
}

void model_train_step_colorize(Model* m, const float* gray, const int* ids, const float* w, int B,
                               const OptConfig* opt, float grad_clip, Rng* rng, float* loss_main, float* loss_mae) {
    check_colorize_model(m);
    m->color_ids = ids; m->color_w = w;
    train_step(m, gray, NULL, NULL, NULL, B, opt, grad_clip, rng, loss_main, loss_mae);
    m->color_ids = NULL; m->color_w = NULL;
}

float model_train_loss_colorize(Model* m, const float* gray, const int* ids, const float* w, int B, Rng* rng) {
    check_colorize_model(m);
    m->color_ids = ids; m->color_w = w;
    float loss = train_chunks(m, gray, NULL, B, rng, 0, NULL, NULL, NULL, NULL);
    m->color_ids = NULL; m->color_w = NULL;
    return loss;
}

// f and h on the unmasked frame, as model_predict without the semantic inference (eagerly)
void model_predict_logits(Model* m, const float* frame) {
    ttt_to_device(m->rgb, frame, (size_t)m->H * m->W * 3 * sizeof(float));
    m->fa.drop_scale = NULL;
    stage_begin("predict: f forward");
    mae_prepare_input(m->inp4, NULL, NULL, m->rgb, NULL, 1, m->H, m->W, m->Hp, m->Wp, m->cfg.mae_patch, 0);
    swin_forward(&m->cfg.swin, &m->f, &m->fa, m->rel_index, m->inp4, 1);
    stage_begin("predict: h forward");
    m2f_forward(&m->cfg.m2f, &m->h, &m->ha, swin_outputs(m), 1, NULL);
    stage_begin(NULL);
}

// ============================================================================
// OTHER TEST-TIME TECHNIQUES (Table 1): Tent, Self-Train, LN Adapt, class balance, temporal
// smoothing and majority vote (the Predictor), Main Task Only training. What each one is and
// the choices behind it: the section of the same name in ttt.h.
// ============================================================================

// ---- ops: CPU references and dispatchers ----

void semantic_scores_cpu(float* scores, const float* class_logits, const float* mask_logits,
                         int Q, int K, int H4, int W4, int H, int W, int Ho, int Wo, float* work) {
    if (H > 4 * H4 || W > 4 * W4) ttt_die("semantic scores: image %dx%d larger than 4 x (%dx%d)", H, W, H4, W4);
    int K1 = K + 1, HW = H4 * W4;
    float* probs = work;                    // (Q, K+1)
    float* seg = work + (size_t)Q * K1;     // (H4*W4, K)
    for (int q = 0; q < Q; q++) softmax_row_host(probs + (size_t)q * K1, class_logits + (size_t)q * K1, K1);
    // seg[p, k] = sum_q probs[q, k] * sigmoid(mask[q, p]), q ascending (m2f_semantic_inference's order)
    #pragma omp parallel for schedule(static) if ((size_t)HW * Q * K > 262144)
    for (int p = 0; p < HW; p++) {
        float* sp = seg + (size_t)p * K;
        for (int k = 0; k < K; k++) sp[k] = 0.0f;
        for (int q = 0; q < Q; q++) {
            float s = 1.0f / (1.0f + expf(-mask_logits[(size_t)q * HW + p]));
            const float* pq = probs + (size_t)q * K1;
            for (int k = 0; k < K; k++) sp[k] += pq[k] * s;
        }
    }
    #pragma omp parallel for schedule(static) if ((size_t)Ho * Wo * K > 262144)
    for (int y = 0; y < Ho; y++) {
        int ya, yb; float ly;
        bilinear_source(y, H, Ho, &ya, &yb, &ly);
        for (int x = 0; x < Wo; x++) {
            int xa, xb; float lx;
            bilinear_source(x, W, Wo, &xa, &xb, &lx);
            float* out = scores + ((size_t)y * Wo + x) * K;
            for (int k = 0; k < K; k++) {
                float top = (1.0f - lx) * seg_x4_at(seg, K, H4, W4, ya, xa, k) + lx * seg_x4_at(seg, K, H4, W4, ya, xb, k);
                float bot = (1.0f - lx) * seg_x4_at(seg, K, H4, W4, yb, xa, k) + lx * seg_x4_at(seg, K, H4, W4, yb, xb, k);
                out[k] = (1.0f - ly) * top + ly * bot;
            }
        }
    }
}

void class_argmax_cpu(unsigned char* ids, const float* scores, int N, int K, float min_conf) {
    #pragma omp parallel for schedule(static) if ((size_t)N * K > 262144)
    for (int i = 0; i < N; i++) {
        const float* s = scores + (size_t)i * K;
        int best = 0;
        float sum = 0.0f;
        for (int k = 0; k < K; k++) { if (s[k] > s[best]) best = k; sum += s[k]; }
        ids[i] = min_conf > 0.0f && !(s[best] / sum > min_conf) ? 255 : (unsigned char)best;
    }
}

void flip_width_cpu(float* out, const float* inp, int B, int H, int W, int C) {
    for (size_t r = 0; r < (size_t)B * H; r++)
        for (int x = 0; x < W; x++)
            memcpy(out + (r * W + x) * C, inp + (r * W + (W - 1 - x)) * C, (size_t)C * sizeof(float));
}

void majority_vote_cpu(unsigned char* ids, const unsigned char* votes, int V, int N) {
    for (int i = 0; i < N; i++) {
        int best = votes[i], best_count = 0;
        for (int j = 0; j < V; j++) {
            int c = votes[(size_t)j * N + i], seen = 0, count = 0;
            for (int l = 0; l < j; l++) seen |= votes[(size_t)l * N + i] == c;
            if (seen) continue;   // counted at its first vote
            for (int l = j; l < V; l++) count += votes[(size_t)l * N + i] == c;
            if (count > best_count) { best = c; best_count = count; }   // ties keep the earlier view's id
        }
        ids[i] = (unsigned char)best;
    }
}

void layernorm_adapt_forward_cpu(float* out, float* mean, float* rstd, float* hist_mean, float* hist_var,
                                 const int* state, const float* inp, const float* weight, const float* bias,
                                 int N, int C, int cap, float prior) {
    int r = state[0], n = state[1], record = state[2];
    if (r < 0 || r >= cap || n < 1 || n > cap) ttt_die("layernorm_adapt_forward: ring entry %d of %d frames, ring size %d", r, n, cap);
    #pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
    for (int i = 0; i < N; i++) {
        const float* x = inp + (size_t)i * C;
        double m = 0.0, v = 0.0;
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        for (int c = 0; c < C; c++) { double d = x[c] - m; v += d * d; }
        v /= C;
        if (record) { hist_mean[(size_t)r * N + i] = (float)m; hist_var[(size_t)r * N + i] = (float)v; }
        double sm = 0.0, sv = 0.0;
        for (int j = 0; j < n; j++) { sm += hist_mean[(size_t)j * N + i]; sv += hist_var[(size_t)j * N + i]; }
        double mm = (prior * m + sm) / (prior + n), vv = (prior * v + sv) / (prior + n);
        float s = (float)(1.0 / sqrt(vv + LN_EPS));
        float* y = out + (size_t)i * C;
        for (int c = 0; c < C; c++) y[c] = ((float)(x[c] - mm)) * s * weight[c] + bias[c];
        mean[i] = (float)mm;
        rstd[i] = s;
    }
}

size_t semantic_entropy_work_size(int B, int Q, int K, int H4, int W4) {
    size_t P = (size_t)H4 * W4;
    // probs, g, entropy per pixel, and da (the CUDA twin's scratch)
    return 2 * (size_t)B * Q * (K + 1) + (size_t)B * P * K + (size_t)B * P;
}

// the shared part of Tent's forward and backward on the CPU: per image b, probs (Q, K+1); per
// valid pixel p the entropy ent[b, p] of P = softmax(seg[p, .]) and g[b, p, k] = -scale P (log P + H)
// (0 on pixels outside the Hv x Wv corner). work: probs (B, Q, K+1) | g (B, P, K) | ent (B, P)
static void semantic_entropy_pixels_cpu(const float* class_logits, const float* mask_logits, int B, int Q, int K,
                                        int H4, int W4, int Hv, int Wv, float scale, float* work) {
    int K1 = K + 1;
    size_t P = (size_t)H4 * W4;
    float* probs = work;
    float* g = probs + (size_t)B * Q * K1;
    float* ent = g + (size_t)B * P * K;
    for (int bq = 0; bq < B * Q; bq++) softmax_row_host(probs + (size_t)bq * K1, class_logits + (size_t)bq * K1, K1);
    #pragma omp parallel for schedule(static)
    for (size_t bp = 0; bp < (size_t)B * P; bp++) {
        size_t b = bp / P, p = bp % P;
        int y = (int)(p / W4), x = (int)(p % W4);
        float* gp = g + bp * K;
        if (y >= Hv || x >= Wv) { for (int k = 0; k < K; k++) gp[k] = 0.0f; ent[bp] = 0.0f; continue; }
        double seg[256], mx = -1e300, z = 0.0, H = 0.0;
        for (int k = 0; k < K; k++) seg[k] = 0.0;
        for (int q = 0; q < Q; q++) {
            double s = 1.0 / (1.0 + exp(-(double)mask_logits[(b * Q + q) * P + p]));
            const float* a = probs + (b * Q + q) * K1;
            for (int k = 0; k < K; k++) seg[k] += a[k] * s;
        }
        for (int k = 0; k < K; k++) if (seg[k] > mx) mx = seg[k];
        for (int k = 0; k < K; k++) z += exp(seg[k] - mx);
        double logz = log(z);
        for (int k = 0; k < K; k++) { double lp = seg[k] - mx - logz; H -= exp(lp) * lp; }
        for (int k = 0; k < K; k++) { double lp = seg[k] - mx - logz; gp[k] = (float)(-scale * exp(lp) * (lp + H)); }
        ent[bp] = (float)H;
    }
}

void semantic_entropy_forward_cpu(float* loss, const float* class_logits, const float* mask_logits,
                                  int B, int Q, int K, int H4, int W4, int Hv, int Wv, float* work) {
    if (K > 256) ttt_die("semantic_entropy: at most 256 classes, got %d", K);
    semantic_entropy_pixels_cpu(class_logits, mask_logits, B, Q, K, H4, W4, Hv, Wv, 0.0f, work);
    size_t P = (size_t)H4 * W4;
    const float* ent = work + (size_t)B * Q * (K + 1) + (size_t)B * P * K;
    double sum = 0.0;
    for (size_t i = 0; i < (size_t)B * P; i++) sum += ent[i];
    *loss = (float)(sum / ((double)B * Hv * Wv));
}

void semantic_entropy_backward_cpu(float* dclass_logits, float* dmask_logits, float dloss,
                                   const float* class_logits, const float* mask_logits,
                                   int B, int Q, int K, int H4, int W4, int Hv, int Wv, float* work) {
    if (K > 256) ttt_die("semantic_entropy: at most 256 classes, got %d", K);
    float scale = (float)(dloss / ((double)B * Hv * Wv));
    semantic_entropy_pixels_cpu(class_logits, mask_logits, B, Q, K, H4, W4, Hv, Wv, scale, work);
    int K1 = K + 1;
    size_t P = (size_t)H4 * W4;
    const float* probs = work;
    const float* g = probs + (size_t)B * Q * K1;
    #pragma omp parallel for schedule(static)
    for (int bq = 0; bq < B * Q; bq++) {
        int b = bq / Q;
        const float* a = probs + (size_t)bq * K1;
        const float* ml = mask_logits + (size_t)bq * P;
        const float* gb = g + (size_t)b * P * K;
        double da[257];
        for (int k = 0; k <= K; k++) da[k] = 0.0;
        for (size_t p = 0; p < P; p++) {
            float s = 1.0f / (1.0f + expf(-ml[p]));
            const float* gp = gb + p * K;
            double ds = 0.0;
            for (int k = 0; k < K; k++) { da[k] += (double)gp[k] * s; ds += (double)gp[k] * a[k]; }
            if (dmask_logits) dmask_logits[(size_t)bq * P + p] += (float)(ds * s * (1.0f - s));
        }
        if (dclass_logits) {
            double dot = 0.0;
            for (int k = 0; k <= K; k++) dot += a[k] * da[k];
            for (int k = 0; k <= K; k++) dclass_logits[(size_t)bq * K1 + k] += (float)(a[k] * (da[k] - dot));
        }
    }
}

void semantic_scores(float* scores, const float* class_logits, const float* mask_logits,
                     int Q, int K, int H4, int W4, int H, int W, int Ho, int Wo, float* work) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { semantic_scores_cuda(scores, class_logits, mask_logits, Q, K, H4, W4, H, W, Ho, Wo, work); return; }
#endif
    semantic_scores_cpu(scores, class_logits, mask_logits, Q, K, H4, W4, H, W, Ho, Wo, work);
}

void class_argmax(unsigned char* ids, const float* scores, int N, int K, float min_conf) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { class_argmax_cuda(ids, scores, N, K, min_conf); return; }
#endif
    class_argmax_cpu(ids, scores, N, K, min_conf);
}

void flip_width(float* out, const float* inp, int B, int H, int W, int C) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { flip_width_cuda(out, inp, B, H, W, C); return; }
#endif
    flip_width_cpu(out, inp, B, H, W, C);
}

void majority_vote(unsigned char* ids, const unsigned char* votes, int V, int N) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { majority_vote_cuda(ids, votes, V, N); return; }
#endif
    majority_vote_cpu(ids, votes, V, N);
}

void layernorm_adapt_forward(float* out, float* mean, float* rstd, float* hist_mean, float* hist_var,
                             const int* state, const float* inp, const float* weight, const float* bias,
                             int N, int C, int cap, float prior) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { layernorm_adapt_forward_cuda(out, mean, rstd, hist_mean, hist_var, state, inp, weight, bias, N, C, cap, prior); return; }
#endif
    layernorm_adapt_forward_cpu(out, mean, rstd, hist_mean, hist_var, state, inp, weight, bias, N, C, cap, prior);
}

void semantic_entropy_forward(float* loss, const float* class_logits, const float* mask_logits,
                              int B, int Q, int K, int H4, int W4, int Hv, int Wv, float* work) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { semantic_entropy_forward_cuda(loss, class_logits, mask_logits, B, Q, K, H4, W4, Hv, Wv, work); return; }
#endif
    semantic_entropy_forward_cpu(loss, class_logits, mask_logits, B, Q, K, H4, W4, Hv, Wv, work);
}

void semantic_entropy_backward(float* dclass_logits, float* dmask_logits, float dloss,
                               const float* class_logits, const float* mask_logits,
                               int B, int Q, int K, int H4, int W4, int Hv, int Wv, float* work) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { semantic_entropy_backward_cuda(dclass_logits, dmask_logits, dloss, class_logits, mask_logits, B, Q, K, H4, W4, Hv, Wv, work); return; }
#endif
    semantic_entropy_backward_cpu(dclass_logits, dmask_logits, dloss, class_logits, mask_logits, B, Q, K, H4, W4, Hv, Wv, work);
}

// ---- per-model state of the techniques (made on first use, freed by model_free) ----

typedef struct { size_t off, n; int part; } NormRun;   // a run of norm parameters in [f | h]

typedef struct TechState {
    NormRun* norm_runs;           // Tent's parameters: the norm weights and biases of f and h
    int n_norm_runs;
    float* entropy_work;          // device, semantic_entropy_work_size for max_B
    float* scores;                // device (H * W, K): one image's class scores (pseudo-labels)
    unsigned char* ids;           // device (H * W)
    unsigned char* masks;         // host (masks_B, L): patch masks of a self-training batch
    int masks_B;
    unsigned char* labels;        // host (labels_B, H, W): pseudo-labels of a self-training batch
    int labels_B;
} TechState;

static TechState* tech_state(Model* m) {
    if (!m->tech) m->tech = (TechState*)callocCheck(1, sizeof(TechState));
    return m->tech;
}

static void tech_state_free(Model* m) {
    TechState* t = m->tech;
    if (!t) return;
    free(t->norm_runs);
    ttt_free(t->entropy_work); ttt_free(t->scores); ttt_free(t->ids);
    free(t->masks); free(t->labels);
    free(t);
    m->tech = NULL;
}

static void unmark(unsigned char* ex, const float* base, const float* p, size_t n) { memset(ex + (p - base), 0, n); }

// The weight-decay exemption list (mark_exempt_swin / mark_exempt_m2f) holds every norm layer
// of f and h (LayerNorm and GroupNorm weights and biases, the pixel decoder's included) plus
// the embeddings and Swin's relative-position tables: Tent's set is that list without the latter.
unsigned char* model_norm_param_mask(const Model* m) {
    size_t n = m->n_f + m->n_h + m->n_g;
    unsigned char* ex = (unsigned char*)callocCheck(n, 1);
    mark_exempt_swin(ex, m->params, &m->f, &m->cfg.swin);
    mark_exempt_m2f(ex, m->params, &m->h, &m->cfg.m2f);
    const SwinConfig* c = &m->cfg.swin;
    int blk = 0;
    for (int s = 0; s < 4; s++)
        for (int i = 0; i < c->depths[s]; i++, blk++)
            unmark(ex, m->params, m->f.block[blk].rel_table, (size_t)(2 * c->window - 1) * (2 * c->window - 1) * c->num_heads[s]);
    size_t D = m->cfg.m2f.hidden_dim, Q = m->cfg.m2f.num_queries;
    unmark(ex, m->params, m->h.query_feat, Q * D);
    unmark(ex, m->params, m->h.query_embed, Q * D);
    unmark(ex, m->params, m->h.level_embed, 3 * D);
    return ex;
}

static void ensure_norm_runs(Model* m) {
    TechState* t = tech_state(m);
    if (t->norm_runs) return;
    unsigned char* ex = model_norm_param_mask(m);
    size_t n = m->n_f + m->n_h;
    int cap = 64;
    t->norm_runs = (NormRun*)mallocCheck(cap * sizeof(NormRun));
    for (size_t i = 0; i < n;) {
        int part = i < m->n_f ? 0 : 1;
        size_t end = part == 0 ? m->n_f : n, j = i;
        while (j < end && ex[j] == ex[i]) j++;
        if (ex[i]) {
            if (t->n_norm_runs == cap) {
                cap *= 2;
                NormRun* r = (NormRun*)mallocCheck(cap * sizeof(NormRun));
                memcpy(r, t->norm_runs, t->n_norm_runs * sizeof(NormRun));
                free(t->norm_runs);
                t->norm_runs = r;
            }
            NormRun r = {i, j - i, part};
            t->norm_runs[t->n_norm_runs++] = r;
        }
        i = j;
    }
    free(ex);
}

// the last prediction of h for a batch of B: class logits (B, Q, K+1), mask logits (B, Q, H4, W4)
static float* h_last_class(Model* m, float* base, int B) {
    const M2FConfig* c = &m->cfg.m2f;
    return base + (size_t)c->dec_layers * B * c->num_queries * (c->num_classes + 1);
}
static float* h_last_mask(Model* m, float* base, int B) {
    const M2FConfig* c = &m->cfg.m2f;
    return base + (size_t)c->dec_layers * B * c->num_queries * m->H4 * m->W4;
}

// f and h on B frames (host); masks (B, L) or NULL (unmasked, 4th channel all ones); with
// train = 1 the recipe's drop-path (draws from rng) and h's frozen attention masks if held
static void f_h_forward(Model* m, const float* frames, const unsigned char* masks, int B, Rng* rng, int train) {
    if (masks) upload_batch(m, frames, masks, B);
    else ttt_to_device(m->rgb, frames, (size_t)B * m->H * m->W * 3 * sizeof(float));
    mae_prepare_input(m->inp4, NULL, NULL, m->rgb, masks ? m->patch_mask : NULL, B, m->H, m->W, m->Hp, m->Wp,
                      m->cfg.mae_patch, 0);
    if (train) upload_drop_path(m, B, rng);
    else m->fa.drop_scale = NULL;
    swin_forward(&m->cfg.swin, &m->f, &m->fa, m->rel_index, m->inp4, B);
    m2f_forward(&m->cfg.m2f, &m->h, &m->ha, swin_outputs(m), B, train ? m->h_frozen_masks : NULL);
}

// backward through h and f from the logit gradients already in m->dha (accumulated into grads)
static void f_h_backward(Model* m, int B) {
    for (int s = 0; s < 4; s++)
        ttt_zero(m->dfeat[s], (size_t)B * m->fa.Hs[s] * m->fa.Ws[s] * m->fa.C[s] * sizeof(float));
    require_trainable(m);
    m2f_backward(&m->cfg.m2f, &m->h, &m->dh, &m->ha, &m->dha, swin_outputs(m), m->dfeat, B);
    swin_backward(&m->cfg.swin, &m->f, &m->df, &m->fa, &m->dfa, m->rel_index, m->inp4, m->dfeat, NULL, B);
}

// ---- Tent ----

// the entropy loss of B frames (chunks of max_B, each weighted by its share of the images);
// with backward the gradients of f and h land in the grad buffer (zeroed first)
static float tent_run(Model* m, const float* frames, int B, Rng* rng, int backward) {
    TechState* t = tech_state(m);
    const M2FConfig* c = &m->cfg.m2f;
    int Q = c->num_queries, K = c->num_classes, L = c->dec_layers + 1;
    int Hv = (m->H + 3) / 4, Wv = (m->W + 3) / 4;
    if (!t->entropy_work)
        t->entropy_work = (float*)ttt_malloc(semantic_entropy_work_size(m->max_B, Q, K, m->H4, m->W4) * sizeof(float));
    if (backward) zero_grads(m);
    double loss = 0.0;
    for (int b0 = 0; b0 < B; b0 += m->max_B) {
        int Bc = B - b0 < m->max_B ? B - b0 : m->max_B;
        float share = (float)Bc / (float)B;
        f_h_forward(m, frames + (size_t)b0 * m->H * m->W * 3, NULL, Bc, rng, 1);
        float* cls = h_last_class(m, m->ha.class_logits, Bc);
        float* msk = h_last_mask(m, m->ha.mask_logits, Bc);
        semantic_entropy_forward(m->loss, cls, msk, Bc, Q, K, m->H4, m->W4, Hv, Wv, t->entropy_work);
        float lc;
        ttt_to_host(&lc, m->loss, sizeof(float));
        loss += share * lc;
        if (backward) {
            ttt_zero(m->dha.class_logits, (size_t)L * Bc * Q * (K + 1) * sizeof(float));
            ttt_zero(m->dha.mask_logits, (size_t)L * Bc * Q * m->H4 * m->W4 * sizeof(float));
            semantic_entropy_backward(h_last_class(m, m->dha.class_logits, Bc), h_last_mask(m, m->dha.mask_logits, Bc),
                                      share, cls, msk, Bc, Q, K, m->H4, m->W4, Hv, Wv, t->entropy_work);
            f_h_backward(m, Bc);
        }
    }
    return (float)loss;
}

float model_tent_loss(Model* m, const float* frames, int B, Rng* rng) { return tent_run(m, frames, B, rng, 0); }
float model_tent_forward_backward(Model* m, const float* frames, int B, Rng* rng) { return tent_run(m, frames, B, rng, 1); }

float model_tent_step(Model* m, const float* frames, int B, const OptConfig* opt, Rng* rng) {
    float loss = tent_run(m, frames, B, rng, 1);
    if (!isfinite(loss)) return loss;   // weights untouched
    ensure_norm_runs(m);
    TechState* t = m->tech;
    // only the norms train: the other gradients of f and h are dropped before the clip
    size_t at = 0;
    for (int i = 0; i <= t->n_norm_runs; i++) {
        size_t next = i < t->n_norm_runs ? t->norm_runs[i].off : m->n_f + m->n_h;
        if (next > at) ttt_zero(m->grads + at, (next - at) * sizeof(float));
        if (i < t->n_norm_runs) at = t->norm_runs[i].off + t->norm_runs[i].n;
    }
    if (m->recipe.ttt_clip > 0.0f) {
        float norm = clip_grad_parts(m, m->recipe.ttt_clip, 1 << 0 | 1 << 1);
        if (!isfinite(norm)) return NAN;
    }
    m->adam_t++;
    for (int i = 0; i < t->n_norm_runs; i++) {
        const NormRun* r = &t->norm_runs[i];
        float lr = r->part == 0 ? opt->lr * m->recipe.backbone_lr_scale : opt->lr;
        float wd = m->recipe.wd_exempt ? 0.0f : opt->weight_decay;   // norms are exempt in the recipe
        adamw_update(m->params + r->off, m->grads + r->off, m->adam_m + r->off, m->adam_v + r->off, r->n, lr,
                     opt->beta1, opt->beta2, opt->eps, wd, m->adam_t);
    }
    return loss;
}

// ---- Self-Train ----

void model_pseudo_labels(Model* m, const float* frames, int B, float threshold, unsigned char* labels) {
    TechState* t = tech_state(m);
    const M2FConfig* c = &m->cfg.m2f;
    int Q = c->num_queries, K = c->num_classes;
    size_t HW = (size_t)m->H * m->W;
    if (!t->scores) {
        t->scores = (float*)ttt_malloc(HW * K * sizeof(float));
        t->ids = (unsigned char*)ttt_malloc(HW);
    }
    for (int b0 = 0; b0 < B; b0 += m->max_B) {
        int Bc = B - b0 < m->max_B ? B - b0 : m->max_B;
        f_h_forward(m, frames + (size_t)b0 * HW * 3, NULL, Bc, NULL, 0);
        for (int b = 0; b < Bc; b++) {
            semantic_scores(t->scores, h_last_class(m, m->ha.class_logits, Bc) + (size_t)b * Q * (K + 1),
                            h_last_mask(m, m->ha.mask_logits, Bc) + (size_t)b * Q * m->H4 * m->W4,
                            Q, K, m->H4, m->W4, m->H, m->W, m->H, m->W, m->infer_work);
            class_argmax(t->ids, t->scores, (int)HW, K, threshold);
            ttt_to_host(labels + (size_t)(b0 + b) * HW, t->ids, HW);
        }
    }
}

// f and h on B frames under patch masks (B, L), set loss against labels (B, H, W) on the host
// (main_forward's, on the masked input); with want_grad the logit gradients in host_dcls / host_dmask
static float self_train_forward(Model* m, const float* frames, const unsigned char* labels, const unsigned char* masks,
                                int B, Rng* rng, int want_grad) {
    ensure_train_buffers(m);
    f_h_forward(m, frames, masks, B, rng, 1);
    return main_set_loss(m, labels, B, rng, want_grad, 0.0f, NULL, NULL);
}


static float self_train_run(Model* m, const float* frames, const unsigned char* labels, int B, float mask_ratio,
                            Rng* rng, int backward) {
    if (!(mask_ratio >= 0.0f && mask_ratio < 1.0f)) ttt_die("self-training mask ratio %g is outside [0, 1)", mask_ratio);
    TechState* t = tech_state(m);
    int ps = m->cfg.mae_patch, L = (m->Hp / ps) * (m->Wp / ps);
    if (B > t->masks_B) {
        free(t->masks);
        t->masks = (unsigned char*)mallocCheck((size_t)B * L);
        t->masks_B = B;
    }
    make_patch_masks(t->masks, B, L, mask_ratio, rng);
    if (backward) zero_grads(m);
    size_t HW = (size_t)m->H * m->W;
    double loss = 0.0;
    for (int b0 = 0; b0 < B; b0 += m->max_B) {
        int Bc = B - b0 < m->max_B ? B - b0 : m->max_B;
        float share = (float)Bc / (float)B;
        float lc = self_train_forward(m, frames + (size_t)b0 * HW * 3, labels + (size_t)b0 * HW, t->masks + (size_t)b0 * L,
                                      Bc, rng, backward);
        if (!isfinite(lc)) return NAN;
        if (backward) {
            if (Bc != B) scale_host_main_grads(m, Bc, share);
            main_backward(m, Bc);
        }
        loss += share * lc;
    }
    return (float)loss;
}

float model_self_train_loss(Model* m, const float* frames, const unsigned char* labels, int B, float mask_ratio, Rng* rng) {
    return self_train_run(m, frames, labels, B, mask_ratio, rng, 0);
}
float model_self_train_forward_backward(Model* m, const float* frames, const unsigned char* labels, int B,
                                        float mask_ratio, Rng* rng) {
    return self_train_run(m, frames, labels, B, mask_ratio, rng, 1);
}

float model_self_train_step(Model* m, const float* frames, int B, const OptConfig* opt, float threshold,
                            float mask_ratio, Rng* rng, float* kept) {
    size_t n = (size_t)B * m->H * m->W, n_kept = 0;
    TechState* t = tech_state(m);
    if (B > t->labels_B) {   // grows once to the largest batch seen, not per step
        free(t->labels);
        t->labels = (unsigned char*)mallocCheck(n);
        t->labels_B = B;
    }
    unsigned char* labels = t->labels;
    model_pseudo_labels(m, frames, B, threshold, labels);
    for (size_t i = 0; i < n; i++) n_kept += labels[i] != 255;
    if (kept) *kept = (float)((double)n_kept / (double)n);
    if (n_kept == 0) return 0.0f;   // nothing confident: no targets, no step
    float loss = self_train_run(m, frames, labels, B, mask_ratio, rng, 1);
    if (!isfinite(loss)) return NAN;   // weights untouched
    const int f_and_h = 1 << 0 | 1 << 1;
    if (m->recipe.ttt_clip > 0.0f) {
        float norm = clip_grad_parts(m, m->recipe.ttt_clip, f_and_h);
        if (!isfinite(norm)) return NAN;
    }
    m->adam_t++;
    adamw_parts(m, opt, f_and_h);
    return loss;
}

// ---- Main Task Only ----

void model_train_step_main_only(Model* m, const float* images, const unsigned char* labels, int B,
                                const OptConfig* opt, float grad_clip, Rng* rng, float* loss_main) {
    const int f_and_h = 1 << 0 | 1 << 1;
    zero_grads(m);
    size_t HW = (size_t)m->H * m->W;
    double loss = 0.0;
    for (int b0 = 0; b0 < B; b0 += m->max_B) {
        int Bc = B - b0 < m->max_B ? B - b0 : m->max_B;
        float share = (float)Bc / (float)B;
        upload_drop_path(m, Bc, rng);   // train mode: the recipe's drop-path
        float lc = main_forward(m, images + (size_t)b0 * HW * 3, labels + (size_t)b0 * HW, Bc, rng, 1, 0.0f, NULL, NULL);
        if (!isfinite(lc)) { m->grad_norm = NAN; if (loss_main) *loss_main = lc; return; }   // weights untouched
        if (Bc != B) scale_host_main_grads(m, Bc, share);
        main_backward(m, Bc);
        loss += share * lc;
    }
    if (loss_main) *loss_main = (float)loss;
    m->grad_norm = clip_grad_parts(m, grad_clip, f_and_h);
    if (!isfinite(m->grad_norm)) return;
    m->adam_t++;
    adamw_parts(m, opt, f_and_h);
}

// ---- class balance ----

int count_classes(const unsigned char* ids, size_t n) {
    unsigned char seen[256] = {0};
    int count = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] != 255 && !seen[ids[i]]) { seen[ids[i]] = 1; count++; }
    return count;
}

int class_balance_reset(int n_adapted, int n_initial, int threshold) {
    return abs(n_adapted - n_initial) > threshold;
}

// ---- the Predictor: LN Adapt, temporal smoothing, majority vote ----

typedef struct { int N, C; float *hist_mean, *hist_var; } LnSlot;   // one LayerNorm call site

struct Predictor {
    Model* m;
    PredictConfig c;
    int Ho, Wo, K;
    size_t npix;                  // Ho * Wo
    float* scores;                // device (npix, K): the last forward's class scores
    float* flipped;               // device (npix, K): scores of a flipped view, mirrored back
    float* avg;                   // device (npix, K): a view's smoothed scores
    float* kept;                  // device (smooth, npix, K): view 0's scores of the last frames
    unsigned char* view_ids;      // device (tta, npix)
    unsigned char* out_ids;       // device (npix)
    float* aug;                   // host (H, W, 3): an augmented view
    unsigned char* aug_u8;        // host (H, W, 3)
    int frames;                   // frames seen (the current one included)
    DeviceGraph graph;            // frame in device memory -> class scores
    // LN Adapt: the LayerNorm call sites in the order of a forward pass, and the ring's state
    LnSlot* slots;
    int n_slots, cap_slots, next_slot;
    int* ln_state;                // device (3): ring entry of this frame, frames in the ring, record
    int ln_state_host[3];
};

// every LayerNorm of the prediction's forward pass, in call order: the k-th call is site k
static void ln_adapt_hook(void* ctx, float* out, float* mean, float* rstd, const float* inp,
                          const float* weight, const float* bias, int N, int C) {
    Predictor* p = (Predictor*)ctx;
    int k = p->next_slot++;
    if (k == p->n_slots) {   // the first forward pass (eager, never inside a graph recording) meets it
        if (p->n_slots == p->cap_slots) {
            p->cap_slots = p->cap_slots ? 2 * p->cap_slots : 64;
            LnSlot* s = (LnSlot*)mallocCheck((size_t)p->cap_slots * sizeof(LnSlot));
            if (p->n_slots) memcpy(s, p->slots, (size_t)p->n_slots * sizeof(LnSlot));
            free(p->slots);
            p->slots = s;
        }
        LnSlot* s = &p->slots[p->n_slots++];
        s->N = N; s->C = C;
        size_t n = (size_t)p->c.ln_window * N;
        s->hist_mean = (float*)ttt_malloc(n * sizeof(float));
        s->hist_var = (float*)ttt_malloc(n * sizeof(float));
        ttt_zero(s->hist_mean, n * sizeof(float));
        ttt_zero(s->hist_var, n * sizeof(float));
    }
    LnSlot* s = &p->slots[k];
    if (s->N != N || s->C != C)
        ttt_die("internal: LN Adapt: LayerNorm %d is %d x %d, was %d x %d", k, N, C, s->N, s->C);
    layernorm_adapt_forward(out, mean, rstd, s->hist_mean, s->hist_var, p->ln_state, inp, weight, bias, N, C,
                            p->c.ln_window, p->c.ln_prior);
}

Predictor* predictor_create(Model* m, const PredictConfig* c) {
    if (c->smooth < 1 || c->tta < 1 || (c->ln_adapt && (c->ln_window < 1 || !(c->ln_prior >= 0.0f))))
        ttt_die("predictor: bad settings (smooth %d, tta %d, LN window %d, LN prior %g)", c->smooth, c->tta,
                c->ln_window, c->ln_prior);
    Predictor* p = (Predictor*)callocCheck(1, sizeof(Predictor));
    p->m = m;
    p->c = *c;
    p->Ho = m->pred_H; p->Wo = m->pred_W; p->K = m->cfg.num_classes;
    p->npix = (size_t)p->Ho * p->Wo;
    size_t ns = p->npix * p->K;
    p->scores = (float*)ttt_malloc(ns * sizeof(float));
    p->flipped = (float*)ttt_malloc(ns * sizeof(float));
    p->avg = (float*)ttt_malloc(ns * sizeof(float));
    p->kept = (float*)ttt_malloc((size_t)c->smooth * ns * sizeof(float));
    p->view_ids = (unsigned char*)ttt_malloc((size_t)c->tta * p->npix);
    p->out_ids = (unsigned char*)ttt_malloc(p->npix);
    p->aug = (float*)mallocCheck((size_t)m->H * m->W * 3 * sizeof(float));
    p->aug_u8 = (unsigned char*)mallocCheck((size_t)m->H * m->W * 3);
    p->ln_state = (int*)ttt_malloc(3 * sizeof(int));
    return p;
}

void predictor_free(Predictor* p) {
    if (!p) return;
    device_graph_free(&p->graph);
    ttt_free(p->scores); ttt_free(p->flipped); ttt_free(p->avg); ttt_free(p->kept);
    ttt_free(p->view_ids); ttt_free(p->out_ids); ttt_free(p->ln_state);
    for (int i = 0; i < p->n_slots; i++) { ttt_free(p->slots[i].hist_mean); ttt_free(p->slots[i].hist_var); }
    free(p->slots); free(p->aug); free(p->aug_u8);
    free(p);
}

// the ring entries beyond the frames seen are never read, so forgetting is a count
void predictor_reset(Predictor* p) { p->frames = 0; }

// frame x (H, W, 3) host -> p->scores (Ho * Wo, K) on the device: f, h and semantic_scores,
// recorded once as a CUDA graph (LN Adapt's ring state is read from the device)
static void predictor_forward(Predictor* p, const float* x) {
    Model* m = p->m;
    ttt_to_device(m->rgb, x, (size_t)m->H * m->W * 3 * sizeof(float));
    if (p->c.ln_adapt) ttt_to_device(p->ln_state, p->ln_state_host, 3 * sizeof(int));
    m->fa.drop_scale = NULL;
    if (!device_graph_replay(&p->graph)) {
        device_graph_begin(&p->graph);
        mae_prepare_input(m->inp4, NULL, NULL, m->rgb, NULL, 1, m->H, m->W, m->Hp, m->Wp, m->cfg.mae_patch, 0);
        if (p->c.ln_adapt) {
            p->next_slot = 0;
            layernorm_forward_hook = ln_adapt_hook;
            layernorm_forward_hook_ctx = p;
        }
        swin_forward(&m->cfg.swin, &m->f, &m->fa, m->rel_index, m->inp4, 1);
        m2f_forward(&m->cfg.m2f, &m->h, &m->ha, swin_outputs(m), 1, NULL);
        layernorm_forward_hook = NULL;
        layernorm_forward_hook_ctx = NULL;
        semantic_scores(p->scores, h_last_class(m, m->ha.class_logits, 1), h_last_mask(m, m->ha.mask_logits, 1),
                        m->cfg.m2f.num_queries, p->K, m->H4, m->W4, m->H, m->W, p->Ho, p->Wo, m->infer_work);
        device_graph_end(&p->graph);
    }
}

// view j > 0 of a frame: ColorAugSSD (tta_color) then a flip with probability 1/2, drawn in
// aug_draw's order, on the frame's 8-bit levels; returns 1 when flipped
static int predictor_view(Predictor* p, const float* frame, Rng* rng) {
    int H = p->m->H, W = p->m->W;
    size_t n = (size_t)H * W * 3;
    for (size_t i = 0; i < n; i++) {
        float v = frame[i] < 0.0f ? 0.0f : frame[i] > 1.0f ? 1.0f : frame[i];
        p->aug_u8[i] = (unsigned char)lrintf(v * 255.0f);
    }
    if (p->c.tta_color) {
        ColorAugSSD ca = color_aug_ssd_draw(rng);
        color_aug_ssd_apply(p->aug_u8, (size_t)H * W, &ca);
    }
    int flip = rng_uniform(rng) < 0.5f;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++)
                p->aug[((size_t)y * W + x) * 3 + c] = p->aug_u8[((size_t)y * W + (flip ? W - 1 - x : x)) * 3 + c] / 255.0f;
    return flip;
}

void predictor_run(Predictor* p, const float* frame, uint64_t seed, int same_frame,
                   unsigned char* ids, unsigned char* plain_ids) {
    if (!same_frame || p->frames == 0) p->frames++;
    int K = p->K, S = p->c.smooth;
    size_t ns = p->npix * K;
    int slot = (p->frames - 1) % S, n_kept = p->frames < S ? p->frames : S;
    if (p->c.ln_adapt) {
        int w = p->c.ln_window;
        p->ln_state_host[0] = (p->frames - 1) % w;
        p->ln_state_host[1] = p->frames < w ? p->frames : w;
    }
    Rng rng;
    rng_seed(&rng, seed ^ 0x545441ULL);   // "TTA": apart from the frame's TTT draws
    for (int j = 0; j < p->c.tta; j++) {
        int flip = j > 0 ? predictor_view(p, frame, &rng) : 0;
        p->ln_state_host[2] = j == 0;   // only the frame itself adds to LN Adapt's statistics
        predictor_forward(p, j > 0 ? p->aug : frame);
        const float* sc = p->scores;
        if (flip) { flip_width(p->flipped, p->scores, 1, p->Ho, p->Wo, K); sc = p->flipped; }
        if (j == 0 && S > 1) ttt_copy(p->kept + (size_t)slot * ns, sc, ns * sizeof(float));
        if (j == 0 && plain_ids) {
            class_argmax(p->out_ids, sc, (int)p->npix, K, 0.0f);
            ttt_to_host(plain_ids, p->out_ids, p->npix);
        }
        unsigned char* vid = p->view_ids + (size_t)j * p->npix;
        if (S > 1) {   // mean of this view's scores and those kept of the previous frames
            ttt_copy(p->avg, sc, ns * sizeof(float));
            for (int s = 0; s < n_kept; s++)
                if (s != slot) add_inplace(p->avg, p->kept + (size_t)s * ns, ns);
            scale_inplace(p->avg, 1.0f / (float)n_kept, ns);
            class_argmax(vid, p->avg, (int)p->npix, K, 0.0f);
        } else {
            class_argmax(vid, sc, (int)p->npix, K, 0.0f);
        }
    }
    if (p->c.tta > 1) {
        majority_vote(p->out_ids, p->view_ids, p->c.tta, (int)p->npix);
        ttt_to_host(ids, p->out_ids, p->npix);
    } else {
        ttt_to_host(ids, p->view_ids, p->npix);
    }
}
