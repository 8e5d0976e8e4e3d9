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
//   model_ttt_step:  frames -> random 16x16 patch masks -> mae_prepare_input (normalise, zero
//                    masked pixels, 4th channel = 1 on visible pixels) -> f = swin_forward ->
//                    g = m2f_forward (48 queries) -> last prediction's 48 maps vs the
//                    patchified target: MSE over the masked (or all) pixels -> m2f_backward (g)
//                    -> swin_backward (f) -> clip (recipe) -> AdamW on f and g (param groups)
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
    int shares_params;        // 1: made by model_create_sharing; params belong to another model
    // AdamW runs: [f | h | g] cut where the part or the weight-decay exemption changes
    AdamRun* runs;
    int n_runs;
    int pred_H, pred_W;       // size of the class ids model_predict writes (the frame's by default)
    // drop-path (recipe.drop_path > 0): the (2 * blocks, B) scale table of the next forward
    float* drop_scale;        // device
    float* drop_scale_host;
};

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
// recipe's wd_exempt the exempt runs get no decay. Without the exemption and with scale 1 this
// is exactly one AdamW over each part.
static void adamw_parts(Model* m, const OptConfig* opt, int parts) {
    const ModelRecipe* r = &m->recipe;
    for (int i = 0; i < m->n_runs; i++) {
        const AdamRun* run = &m->runs[i];
        if (!(parts >> run->part & 1)) continue;
        float lr = run->part == 0 ? opt->lr * r->backbone_lr_scale : opt->lr;
        float wd = r->wd_exempt && run->exempt ? 0.0f : opt->weight_decay;
        adamw_update(m->params + run->off, m->grads + run->off, m->adam_m + run->off, m->adam_v + run->off,
                     run->n, lr, opt->beta1, opt->beta2, opt->eps, wd, m->adam_t);
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
    size_t acts_f, acts_h, acts_g;   // activations of f, h, g (their gradients mirror them)
    size_t feat[4];                  // gradient flowing from a head into f's stage s
    size_t pix;                      // max_batch * Hp * Wp
} ActivationPlan;

static ActivationPlan plan_activations(const ModelConfig* cfg, int max_batch, int H, int W) {
    ActivationPlan p;
    padded_size(cfg, H, W, &p.Hp, &p.Wp);
    SwinActs fa;
    p.acts_f = swin_point_acts(&fa, NULL, &cfg->swin, max_batch, p.Hp, p.Wp);
    p.acts_h = m2f_num_acts(&cfg->m2f, max_batch, p.Hp / 4, p.Wp / 4);
    p.acts_g = m2f_num_acts(&cfg->mae, max_batch, p.Hp / 4, p.Wp / 4);
    for (int s = 0; s < 4; s++) p.feat[s] = (size_t)max_batch * fa.Hs[s] * fa.Ws[s] * fa.C[s];
    p.pix = (size_t)max_batch * p.Hp * p.Wp;
    return p;
}

size_t model_activation_bytes(const ModelConfig* cfg, int max_batch, int H, int W) {
    ActivationPlan p = plan_activations(cfg, max_batch, H, W);
    size_t n = 2 * (p.acts_f + p.acts_h + p.acts_g) + p.feat[0] + p.feat[1] + p.feat[2] + p.feat[3];
    n += p.pix * (4 + 3 + 3) + (size_t)max_batch * H * W * 3;   // inp4, target, target_mask, rgb
    return n * sizeof(float);
}

// forget the recorded device work (after anything that changes which buffers it reads)
static void model_drop_graphs(Model* m) {
    for (int b = 0; b <= m->max_B; b++) device_graph_free(&m->mae_graphs[b]);
    device_graph_free(&m->predict_graph);
}

// share == NULL: a model with parameters of its own; else one that uses share's parameters,
// gradients and optimizer state (model_create_sharing)
static Model* model_create_impl(const ModelConfig* cfg, int max_batch, int H, int W, Model* share) {
    if (max_batch < 1 || H < 1 || W < 1) ttt_die("model_create: bad size B=%d H=%d W=%d", max_batch, H, W);
    m2f_config_check(&cfg->m2f);
    if (cfg->mae_patch % MAE_RECON_PATCH != 0)
        ttt_die("model config: the masking patch (%d) must be a multiple of %d", cfg->mae_patch, MAE_RECON_PATCH);
    Model* m = (Model*)callocCheck(1, sizeof(Model));
    m->cfg = *cfg;
    m->max_B = max_batch; m->H = H; m->W = W;
    ActivationPlan plan = plan_activations(cfg, max_batch, H, W);
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

    // activations: [swin | h | g]; gradients mirror them
    size_t n_fa = plan.acts_f, n_ha = plan.acts_h, n_acts = plan.acts_f + plan.acts_h + plan.acts_g;
    m->acts = (float*)ttt_malloc(n_acts * sizeof(float));
    m->dacts = (float*)ttt_malloc(n_acts * sizeof(float));
    ttt_zero(m->acts, n_acts * sizeof(float));
    swin_point_acts(&m->fa, m->acts, &cfg->swin, max_batch, m->Hp, m->Wp);
    swin_point_acts(&m->dfa, m->dacts, &cfg->swin, max_batch, m->Hp, m->Wp);
    m2f_point_acts(&m->ha, m->acts + n_fa, &cfg->m2f, max_batch, m->H4, m->W4);
    m2f_point_acts(&m->dha, m->dacts + n_fa, &cfg->m2f, max_batch, m->H4, m->W4);
    m2f_point_acts(&m->ga, m->acts + n_fa + n_ha, &cfg->mae, max_batch, m->H4, m->W4);
    m2f_point_acts(&m->dga, m->dacts + n_fa + n_ha, &cfg->mae, max_batch, m->H4, m->W4);
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
    build_adam_runs(m);
    return m;
}

Model* model_create(const ModelConfig* cfg, int max_batch, int H, int W) {
    return model_create_impl(cfg, max_batch, H, W, NULL);
}

Model* model_create_sharing(Model* share, int max_batch, int H, int W) {
    Model* m = model_create_impl(&share->cfg, max_batch, H, W, share);
    m->recipe = share->recipe;
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
    ttt_free(m->g_frozen_masks); ttt_free(m->h_frozen_masks);
    free(m);
}

size_t model_num_params(const Model* m, int part) {
    return part == 0 ? m->n_f : part == 1 ? m->n_h : m->n_g;
}

void model_init_random(Model* m, uint64_t seed) {
    Rng rng;
    rng_seed(&rng, seed);
    size_t n = m->n_f + m->n_h + m->n_g;
    float* host = (float*)mallocCheck(n * sizeof(float));
    swin_init_params(host, &m->cfg.swin, &rng);
    m2f_init_params(host + m->n_f, &m->cfg.m2f, &rng);
    m2f_init_params(host + m->n_f + m->n_h, &m->cfg.mae, &rng);
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
//    (kind, enc_layers, enc_ffn, n_points), then g's], data = [f | h | g]

#define CKPT_KIND_MODEL 1
#define CKPT_KIND_RESUME 3     // (kind 2 is the Swin encoder export)
#define RESUME_EXTRA_AT 160    // header index of the AdamW step, then the caller's ints
#define RESUME_MAX_EXTRA 64
// The pixel decoder of h and g (M2FConfig.pixel_decoder, enc_layers, enc_ffn, n_points) sits at a
// fixed high index, after the resume block (RESUME_EXTRA_AT .. + RESUME_MAX_EXTRA): slots that
// are 0 in every older checkpoint, so those load as the FPN they hold.
#define PIXEL_DECODER_HEADER_AT 232   // h: kind, enc_layers, enc_ffn, n_points; then the same for g
_Static_assert(RESUME_EXTRA_AT + 1 + RESUME_MAX_EXTRA <= PIXEL_DECODER_HEADER_AT &&
               PIXEL_DECODER_HEADER_AT + 8 <= CKPT_HEADER_INTS, "pixel decoder header block overlaps");

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
}

void model_save(const Model* m, const char* path) {
    int header[CKPT_HEADER_INTS];
    pack_header(header, m, CKPT_KIND_MODEL);
    size_t n = m->n_f + m->n_h + m->n_g;
    float* host = (float*)mallocCheck(n * sizeof(float));
    ttt_to_host(host, m->params, n * sizeof(float));
    checkpoint_write(path, header, host, n);
    free(host);
}

// the config in a model or resume header; dies naming what is wrong. Returns the header
// index after the config (where n_f, n_h, n_g are).
static int unpack_header(const int* h, ModelConfig* out, const char* path) {
    ModelConfig c;
    memset(&c, 0, sizeof(c));
    int i = 3;
    c.num_classes = h[i++]; c.mae_patch = h[i++]; c.mask_ratio = h[i++] * 1e-6f;
    c.swin.in_chans = h[i++]; c.swin.embed_dim = h[i++];
    for (int s = 0; s < 4; s++) c.swin.depths[s] = h[i++];
    for (int s = 0; s < 4; s++) c.swin.num_heads[s] = h[i++];
    c.swin.window = h[i++]; c.swin.mlp_ratio = h[i++];
    i += unpack_m2f(h + i, &c.m2f);
    i += unpack_m2f(h + i, &c.mae);
    M2FConfig* heads[2] = {&c.m2f, &c.mae};
    for (int k = 0; k < 2; k++) {
        const int* q = h + PIXEL_DECODER_HEADER_AT + 4 * k;
        M2FConfig* hc = heads[k];
        hc->pixel_decoder = q[0]; hc->enc_layers = q[1]; hc->enc_ffn = q[2]; hc->n_points = q[3];
        int ok = (q[0] == PIXEL_DECODER_FPN && q[1] == 0 && q[2] == 0 && q[3] == 0) ||
                 (q[0] == PIXEL_DECODER_MSDEFORM && q[1] >= 1 && q[1] <= MSD_MAX_LAYERS && q[2] >= 1 &&
                  q[2] <= 65536 && q[3] >= 1 && q[3] <= 64);
        if (!ok)
            ttt_die("checkpoint '%s' has an invalid pixel decoder for %s (kind %d, enc_layers %d, enc_ffn %d, n_points %d)",
                    path, k == 0 ? "h" : "g", q[0], q[1], q[2], q[3]);
    }
    // refuse nonsense before sizing anything from it
    if (c.num_classes < 1 || c.num_classes > 254 || c.mae_patch < 4 || c.mae_patch > 1024 ||
        c.mask_ratio < 0.0f || c.mask_ratio >= 1.0f || c.swin.in_chans != 4 || c.swin.embed_dim < 1 ||
        c.swin.window < 1 || c.swin.mlp_ratio < 1 || c.m2f.num_classes != c.num_classes ||
        c.mae.num_queries != 3 * MAE_RECON_PATCH * MAE_RECON_PATCH)
        ttt_die("checkpoint '%s' has an invalid model config (classes %d, patch %d, in_chans %d, queries of g %d)",
                path, c.num_classes, c.mae_patch, c.swin.in_chans, c.mae.num_queries);
    for (int s = 0; s < 4; s++)
        if (c.swin.depths[s] < 1 || c.swin.num_heads[s] < 1 || ((c.swin.embed_dim << s) % c.swin.num_heads[s]))
            ttt_die("checkpoint '%s': Swin stage %d has depth %d and %d heads for %d channels", path, s,
                    c.swin.depths[s], c.swin.num_heads[s], c.swin.embed_dim << s);
    *out = c;
    return i;
}

// create the model a header describes and check its parameter counts
static Model* model_from_header(const int* h, const char* path, int max_batch, int H, int W) {
    ModelConfig c;
    int i = unpack_header(h, &c, path);
    Model* m = model_create(&c, max_batch, H, W);
    if (h[i] != (int)m->n_f || h[i + 1] != (int)m->n_h || h[i + 2] != (int)m->n_g)
        ttt_die("checkpoint '%s' says f, h, g have %d, %d, %d parameters; its config gives %zu, %zu, %zu",
                path, h[i], h[i + 1], h[i + 2], m->n_f, m->n_h, m->n_g);
    return m;
}

// the header of a model checkpoint (kind 1); dies naming the file otherwise
static void read_model_header(const char* path, int* h) {
    checkpoint_read_header(path, h);
    if (h[2] != CKPT_KIND_MODEL)
        ttt_die("checkpoint '%s' holds kind %d, not a model (kind %d)%s", path, h[2], CKPT_KIND_MODEL,
                h[2] == 3 ? "; it is a training optimizer state (the model is the file without .opt)" : "");
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

Model* model_load(const char* path, int max_batch, int H, int W) {
    int h[CKPT_HEADER_INTS];
    read_model_header(path, h);
    Model* m = model_from_header(h, path, max_batch, H, W);
    size_t n = m->n_f + m->n_h + m->n_g;
    float* host = (float*)mallocCheck(n * sizeof(float));
    checkpoint_read_data(path, host, n);
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

int model_auto_micro_batch(const ModelConfig* cfg, int B, int H, int W) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) {
        size_t used, total;
        ttt_cuda_memory_info(&used, &total);
        size_t n_train = swin_num_params(&cfg->swin) + m2f_num_params(&cfg->m2f) + m2f_num_params(&cfg->mae);
        size_t fixed = (4 * n_train + swin_num_params(&cfg->swin) + m2f_num_params(&cfg->mae)) * sizeof(float);
        // leave 15% of the free memory for workspaces (im2col, attention scores, cuBLAS)
        double budget = 0.85 * (double)(total - used) - (double)fixed;
        int M = B;
        while (M > 1 && (double)model_activation_bytes(cfg, M, H, W) > budget) M--;
        return M;
    }
#endif
    (void)cfg; (void)H; (void)W;
    return B;
}

ModelConfig model_read_config(const char* path) {
    int h[CKPT_HEADER_INTS];
    read_model_header(path, h);
    ModelConfig c;
    unpack_header(h, &c, path);
    return c;
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

// uploaded frames and masks -> masked 4-channel input, target and its mask
static void prepare_masked_batch(Model* m, int B) {
    mae_prepare_input(m->inp4, m->target, m->target_mask, m->rgb, m->patch_mask,
                      B, m->H, m->W, m->Hp, m->Wp, m->cfg.mae_patch, m->recipe.loss_all_pixels);
}

// f and g forward on the prepared batch; the loss lands in m->loss. Returns the device
// pointer of g's last prediction (B, 48, H4, W4).
static float* mae_forward(Model* m, int B) {
    stage_begin("f forward (masked)");
    swin_forward(&m->cfg.swin, &m->f, &m->fa, m->rel_index, m->inp4, B);
    stage_begin("g forward + loss");
    m2f_forward(&m->cfg.mae, &m->g, &m->ga, swin_outputs(m), B, m->g_frozen_masks);
    int L = m->cfg.mae.dec_layers + 1, Q = m->cfg.mae.num_queries;
    size_t per = (size_t)B * Q * m->H4 * m->W4;
    float* recon = m->ga.mask_logits + (size_t)(L - 1) * per;
    masked_mse_forward(m->loss, recon, m->target, m->target_mask, (int)per, 1);
    stage_begin(NULL);
    return recon;
}

// backward of the MAE loss, accumulated into the gradients of g and f
// dloss: the weight of this batch's mean in the loss (1, or its share of a micro-batched one)
static void mae_backward(Model* m, int B, const float* recon, float dloss) {
    int L = m->cfg.mae.dec_layers + 1, Q = m->cfg.mae.num_queries;
    size_t per = (size_t)B * Q * m->H4 * m->W4;
    int Kg = m->cfg.mae.num_classes + 1;
    ttt_zero(m->dga.class_logits, (size_t)L * B * Q * Kg * sizeof(float));
    ttt_zero(m->dga.mask_logits, (size_t)L * per * sizeof(float));
    masked_mse_backward(m->dga.mask_logits + (size_t)(L - 1) * per, dloss, recon, m->target,
                        m->target_mask, (int)per, 1);
    for (int s = 0; s < 4; s++)
        ttt_zero(m->dfeat[s], (size_t)B * m->fa.Hs[s] * m->fa.Ws[s] * m->fa.C[s] * sizeof(float));
    stage_begin("g backward");
    m2f_backward(&m->cfg.mae, &m->g, &m->dg, &m->ga, &m->dga, swin_outputs(m), m->dfeat, B);
    stage_begin("f backward");
    swin_backward(&m->cfg.swin, &m->f, &m->df, &m->fa, &m->dfa, m->rel_index, m->inp4, m->dfeat, NULL, B);
    stage_begin(NULL);
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

// Micro-batching: a batch larger than the planned one (max_B) runs in chunks of max_B
// images. All B masks are drawn first (the same draws as one big batch), the loss is the
// mean over every masked value of the batch, so chunk c's mean enters with weight
// n_c / n (its share of the masked values) in the loss and in the gradients, which the
// chunks accumulate (backward = 1). Returns the loss of the whole batch.
static float mae_micro_batched(Model* m, const float* frames, int B, Rng* rng, int backward) {
    int ps = m->cfg.mae_patch, L = (m->Hp / ps) * (m->Wp / ps);
    if (B > m->micro_masks_B) {   // grows once to the largest batch seen
        free(m->micro_masks); free(m->micro_counts);
        m->micro_masks = (unsigned char*)mallocCheck((size_t)B * L);
        m->micro_counts = (double*)mallocCheck((size_t)B * sizeof(double));
        m->micro_masks_B = B;
    }
    make_patch_masks(m->micro_masks, B, L, m->recipe.mask_ratio, rng);
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        m->micro_counts[b] = masked_value_count(m, m->micro_masks + (size_t)b * L);
        total += m->micro_counts[b];
    }
    if (backward) ttt_zero(m->grads, (m->n_f + m->n_h + m->n_g) * sizeof(float));
    double loss = 0.0;
    for (int b0 = 0; b0 < B; b0 += m->max_B) {
        int Bc = B - b0 < m->max_B ? B - b0 : m->max_B;
        double nc = 0.0;
        for (int b = b0; b < b0 + Bc; b++) nc += m->micro_counts[b];
        double share = total > 0.0 ? nc / total : 0.0;
        upload_batch(m, frames + (size_t)b0 * m->H * m->W * 3, m->micro_masks + (size_t)b0 * L, Bc);
        upload_drop_path(m, Bc, rng);
        prepare_masked_batch(m, Bc);
        float* recon = mae_forward(m, Bc);
        if (backward) mae_backward(m, Bc, recon, (float)share);
        float lc;
        ttt_to_host(&lc, m->loss, sizeof(float));
        loss += share * lc;
    }
    return (float)loss;
}

float model_mae_loss(Model* m, const float* frames, int B, Rng* rng) {
    if (B > m->max_B) return mae_micro_batched(m, frames, B, rng, 0);
    upload_masked_batch(m, frames, B, rng);
    upload_drop_path(m, B, rng);
    prepare_masked_batch(m, B);
    mae_forward(m, B);
    float loss;
    ttt_to_host(&loss, m->loss, sizeof(float));
    return loss;
}

float model_mae_forward_backward(Model* m, const float* frames, int B, Rng* rng) {
    if (B > m->max_B) return mae_micro_batched(m, frames, B, rng, 1);
    upload_masked_batch(m, frames, B, rng);
    upload_drop_path(m, B, rng);
    // the device work from here to the gradients is the same every call of this batch
    // size: recorded once as a CUDA graph and replayed (see DeviceGraph in ttt.h)
    DeviceGraph* graph = &m->mae_graphs[B];
    if (!device_graph_replay(graph)) {
        device_graph_begin(graph);
        prepare_masked_batch(m, B);
        float* recon = mae_forward(m, B);
        ttt_zero(m->grads, (m->n_f + m->n_h + m->n_g) * sizeof(float));
        mae_backward(m, B, recon, 1.0f);
        device_graph_end(graph);
    }
    float loss;
    ttt_to_host(&loss, m->loss, sizeof(float));
    return loss;
}

float model_ttt_step(Model* m, const float* frames, int B, const OptConfig* opt, Rng* rng) {
    float loss = model_mae_forward_backward(m, frames, B, rng);
    if (!isfinite(loss)) return loss;   // the caller resets; weights untouched
    const int f_and_g = 1 << 0 | 1 << 2;   // h is not trained at test time
    stage_begin("AdamW (f, g)");
    if (m->recipe.ttt_clip > 0.0f) {   // the released code clips the whole model's gradient
        float norm = clip_grad_parts(m, m->recipe.ttt_clip, f_and_g);
        if (!isfinite(norm)) { stage_begin(NULL); return NAN; }   // weights untouched
    }
    m->adam_t++;
    adamw_parts(m, opt, f_and_g);
    stage_begin(NULL);
    return loss;
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

// f and h on the clean images (B, H, W, 3) host; set loss against labels (B, H, W) on the host.
// The mask maps cover the padded frame, so labels are padded with 255 (ignore) to Hp x Wp.
// With want_grad the logits' gradients land in host_dcls / host_dmask.
static float main_forward(Model* m, const float* images, const unsigned char* labels, int B,
                          Rng* rng, int want_grad) {
    ensure_train_buffers(m);
    ttt_to_device(m->rgb, images, (size_t)B * m->H * m->W * 3 * sizeof(float));
    mae_prepare_input(m->inp4, NULL, NULL, m->rgb, NULL, B, m->H, m->W, m->Hp, m->Wp, m->cfg.mae_patch, 0);
    upload_drop_path(m, B, rng);
    swin_forward(&m->cfg.swin, &m->f, &m->fa, m->rel_index, m->inp4, B);
    m2f_forward(&m->cfg.m2f, &m->h, &m->ha, swin_outputs(m), B, m->h_frozen_masks);
    const M2FConfig* c = &m->cfg.m2f;
    int L = c->dec_layers + 1, Q = c->num_queries, K = c->num_classes;
    size_t ncls = (size_t)L * B * Q * (K + 1), nmask = (size_t)L * B * Q * m->H4 * m->W4;
    ttt_to_host(m->host_cls_all, m->ha.class_logits, ncls * sizeof(float));
    ttt_to_host(m->host_mask_all, m->ha.mask_logits, nmask * sizeof(float));
    // non-finite logits would stall the matcher: report NaN, the caller skips the update
    if (!is_finite_array(m->host_cls_all, ncls) || !is_finite_array(m->host_mask_all, nmask)) return NAN;
    memset(m->host_labels_pad, 255, (size_t)B * m->Hp * m->Wp);
    for (int b = 0; b < B; b++)
        for (int y = 0; y < m->H; y++)
            memcpy(m->host_labels_pad + ((size_t)b * m->Hp + y) * m->Wp,
                   labels + ((size_t)b * m->H + y) * m->W, (size_t)m->W);
    if (want_grad) {
        memset(m->host_dcls, 0, ncls * sizeof(float));
        memset(m->host_dmask, 0, nmask * sizeof(float));
    }
    // a mask map with no more pixels than the point budget is supervised on every pixel:
    // exact, and cheaper than 3 x 12544 random points
    SetLossConfig lc = m->set_loss_cfg;
    if (m->H4 * m->W4 <= lc.num_points) lc.all_pixels = 1;
    float parts[3];
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
    m2f_backward(c, &m->h, &m->dh, &m->ha, &m->dha, swin_outputs(m), m->dfeat, B);
    swin_backward(&m->cfg.swin, &m->f, &m->df, &m->fa, &m->dfa, m->rel_index, m->inp4, m->dfeat, NULL, B);
}

float model_train_loss(Model* m, const float* images, const unsigned char* labels, int B, Rng* rng) {
    if (B > m->max_B) ttt_die("batch %d exceeds the model's planned batch %d", B, m->max_B);
    float lm = main_forward(m, images, labels, B, rng, 0);
    upload_masked_batch(m, images, B, rng);
    upload_drop_path(m, B, rng);
    prepare_masked_batch(m, B);
    mae_forward(m, B);
    float lr;
    ttt_to_host(&lr, m->loss, sizeof(float));
    return lm + lr;
}

float model_train_forward_backward(Model* m, const float* images, const unsigned char* labels,
                                   int B, Rng* rng, float* loss_main, float* loss_mae) {
    if (B > m->max_B) ttt_die("batch %d exceeds the model's planned batch %d", B, m->max_B);
    ttt_zero(m->grads, (m->n_f + m->n_h + m->n_g) * sizeof(float));
    // main task first: the MAE forward reuses f's activations
    float lm = main_forward(m, images, labels, B, rng, 1);
    if (!isfinite(lm)) {
        if (loss_main) *loss_main = lm;
        if (loss_mae) *loss_mae = NAN;
        return lm;
    }
    main_backward(m, B);
    upload_masked_batch(m, images, B, rng);
    upload_drop_path(m, B, rng);
    prepare_masked_batch(m, B);
    float* recon = mae_forward(m, B);
    mae_backward(m, B, recon, 1.0f);
    float lr;
    ttt_to_host(&lr, m->loss, sizeof(float));
    if (loss_main) *loss_main = lm;
    if (loss_mae) *loss_mae = lr;
    return lm + lr;
}

void model_train_step(Model* m, const float* images, const unsigned char* labels, int B,
                      const OptConfig* opt, float grad_clip, Rng* rng, float* loss_main, float* loss_mae) {
    float total = model_train_forward_backward(m, images, labels, B, rng, loss_main, loss_mae);
    const int all_parts = 7;
    if (!isfinite(total)) { m->grad_norm = NAN; return; }   // weights untouched
    m->grad_norm = clip_grad_parts(m, grad_clip, all_parts);
    if (!isfinite(m->grad_norm)) return;
    m->adam_t++;
    adamw_parts(m, opt, all_parts);
}

void model_copy_params(Model* dst, const Model* src) {
    if (dst->n_f != src->n_f || dst->n_h != src->n_h || dst->n_g != src->n_g)
        ttt_die("model_copy_params: the two models have different configs");
    ttt_copy(dst->params, src->params, (src->n_f + src->n_h + src->n_g) * sizeof(float));
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

// optimizer state for resuming training: [t, then m and v of f | h | g] in a checkpoint of
// kind 2 whose header also records the parameter counts
#define CKPT_KIND_OPTIMIZER 3   // (2 is CKPT_KIND_SWIN)

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

