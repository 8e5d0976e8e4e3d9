// mask2former.c: the main-task head h: deformable-free pixel decoder (FPN),
// masked-attention transformer decoder, set loss (Hungarian matching, CE, BCE, dice)
// and semantic / panoptic inference. API and structs in ttt.h.
#include "ttt.h"

// ============================================================================
// PIXEL DECODER AND TRANSFORMER DECODER
// ============================================================================

// ----------------------------------------------------------------------------
// configs

static M2FConfig m2f_config_make(const int in_dims[4], int num_classes, int conv_dim,
                                 int num_groups, int num_queries, int num_heads, int ffn_dim,
                                 int dec_layers) {
    M2FConfig c;
    for (int l = 0; l < 4; l++) c.in_dims[l] = in_dims[l];
    c.conv_dim = conv_dim;
    c.mask_dim = conv_dim;
    c.num_groups = num_groups;
    c.num_queries = num_queries;
    c.hidden_dim = conv_dim;
    c.num_heads = num_heads;
    c.ffn_dim = ffn_dim;
    c.dec_layers = dec_layers;
    c.num_classes = num_classes;
    c.pixel_decoder = PIXEL_DECODER_FPN;
    c.enc_layers = c.enc_ffn = c.n_points = 0;
    return c;
}

M2FConfig m2f_config_published(const int in_dims[4], int num_classes) {
    return m2f_config_make(in_dims, num_classes, 256, 32, 100, 8, 2048, 9);
}

M2FConfig m2f_config_small(const int in_dims[4], int num_classes) {
    return m2f_config_make(in_dims, num_classes, 64, 8, 20, 4, 256, 3);
}

M2FConfig m2f_config_tiny(const int in_dims[4], int num_classes) {
    return m2f_config_make(in_dims, num_classes, 16, 4, 5, 2, 24, 3);
}

void m2f_config_check(const M2FConfig* c) {
    for (int l = 0; l < 4; l++) {
        if (c->in_dims[l] <= 0) ttt_die("m2f config: in_dims[%d] = %d must be positive", l, c->in_dims[l]);
    }
    if (c->conv_dim <= 0 || c->mask_dim <= 0 || c->hidden_dim <= 0 || c->ffn_dim <= 0)
        ttt_die("m2f config: conv_dim, mask_dim, hidden_dim, ffn_dim must be positive");
    if (c->conv_dim != c->hidden_dim)
        ttt_die("m2f config: conv_dim (%d) must equal hidden_dim (%d): no input projections",
                c->conv_dim, c->hidden_dim);
    if (c->num_groups <= 0 || c->conv_dim % c->num_groups != 0)
        ttt_die("m2f config: conv_dim %d not divisible by num_groups %d", c->conv_dim, c->num_groups);
    if (c->num_heads <= 0 || c->hidden_dim % c->num_heads != 0)
        ttt_die("m2f config: hidden_dim %d not divisible by num_heads %d", c->hidden_dim, c->num_heads);
    if (c->hidden_dim % 2 != 0) ttt_die("m2f config: hidden_dim must be even (sine encoding)");
    if (c->num_queries <= 0) ttt_die("m2f config: num_queries must be positive");
    if (c->dec_layers < 1 || c->dec_layers > M2F_MAX_LAYERS)
        ttt_die("m2f config: dec_layers %d outside [1, %d]", c->dec_layers, M2F_MAX_LAYERS);
    if (c->num_classes < 1 || c->num_classes > COLOR_BINS)   // 313: colorization's ab bins (color.c)
        ttt_die("m2f config: num_classes %d outside [1, %d]", c->num_classes, COLOR_BINS);
    if (c->pixel_decoder == PIXEL_DECODER_FPN) {
        if (c->enc_layers != 0 || c->enc_ffn != 0 || c->n_points != 0)
            ttt_die("m2f config: the fpn pixel decoder has no deformable encoder (enc_layers %d, enc_ffn %d, n_points %d)",
                    c->enc_layers, c->enc_ffn, c->n_points);
    } else if (c->pixel_decoder == PIXEL_DECODER_MSDEFORM) {
        if (c->enc_layers < 1 || c->enc_layers > MSD_MAX_LAYERS)
            ttt_die("m2f config: enc_layers %d outside [1, %d]", c->enc_layers, MSD_MAX_LAYERS);
        if (c->enc_ffn < 1 || c->enc_ffn > 65536) ttt_die("m2f config: enc_ffn %d outside [1, 65536]", c->enc_ffn);
        if (c->n_points < 1 || c->n_points > 64) ttt_die("m2f config: n_points %d outside [1, 64]", c->n_points);
    } else {
        ttt_die("m2f config: unknown pixel decoder kind %d (0 fpn, 1 msdeform)", c->pixel_decoder);
    }
}

void m2f_config_set_pixel_decoder(M2FConfig* c, int kind) {
    if (kind == PIXEL_DECODER_FPN) {
        c->enc_layers = c->enc_ffn = c->n_points = 0;
    } else if (kind == PIXEL_DECODER_MSDEFORM) {
        // published: 6 layers, 4 points, FFN 1024 at width 256 (transformer_dim_feedforward)
        c->enc_layers = 6;
        c->enc_ffn = 4 * c->conv_dim;
        c->n_points = 4;
    } else {
        ttt_die("unknown pixel decoder kind %d (0 fpn, 1 msdeform)", kind);
    }
    c->pixel_decoder = kind;
}

void model_config_set_pixel_decoder(ModelConfig* cfg, int kind) {
    m2f_config_set_pixel_decoder(&cfg->m2f, kind);
    m2f_config_set_pixel_decoder(&cfg->mae, kind);
}

int pixel_decoder_parse(const char* opt, const char* s) {
    if (!strcmp(s, "fpn")) return PIXEL_DECODER_FPN;
    if (!strcmp(s, "msdeform")) return PIXEL_DECODER_MSDEFORM;
    ttt_die("%s: expected fpn or msdeform, got '%s'", opt, s);
    return -1;
}

const char* pixel_decoder_name(int kind) {
    return kind == PIXEL_DECODER_FPN ? "fpn" : kind == PIXEL_DECODER_MSDEFORM ? "msdeform" : "unknown";
}

void m2f_level_sizes(int H4, int W4, int Hs[4], int Ws[4]) {
    Hs[0] = H4; Ws[0] = W4;
    for (int l = 1; l < 4; l++) { Hs[l] = (Hs[l - 1] + 1) / 2; Ws[l] = (Ws[l - 1] + 1) / 2; }
}

// hands out consecutive pieces of one allocation; with mem == NULL it only counts
static float* take(float* mem, size_t* off, size_t n) {
    float* p = mem ? mem + *off : NULL;
    *off += n;
    return p;
}

// the same for activations, each piece starting at a multiple of ACT_ALIGN floats (64 bytes)
// from mem (an aligned allocation): cuBLAS's tensor-core kernels run 2.5-3.3x slower on a
// matrix that is only 4 or 8 bytes aligned (measured on the H200). Parameters stay packed
// (their layout is the checkpoint's); linear and gemm stage misaligned weights (ttt_kernels.cu).
static float* take_act(float* mem, size_t* off, size_t n) {
    *off = (*off + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
    return take(mem, off, n);
}

static void repeat_row(float* rows, const float* v, int T, int D);

// ----------------------------------------------------------------------------
// pixel decoder: parameters and activations

static size_t pixel_decoder_layout_params(PixelDecoderParams* p, float* mem, const M2FConfig* c) {
    size_t off = 0;
    int CD = c->conv_dim;
    for (int l = 0; l < 3; l++) p->lateral_w[l] = take(mem, &off, (size_t)CD * c->in_dims[l]);
    for (int l = 0; l < 3; l++) p->lateral_gn_w[l] = take(mem, &off, CD);
    for (int l = 0; l < 3; l++) p->lateral_gn_b[l] = take(mem, &off, CD);
    for (int l = 0; l < 4; l++) {
        int C = (l == 3) ? c->in_dims[3] : CD;
        p->output_w[l] = take(mem, &off, (size_t)CD * 9 * C);
    }
    for (int l = 0; l < 4; l++) p->output_gn_w[l] = take(mem, &off, CD);
    for (int l = 0; l < 4; l++) p->output_gn_b[l] = take(mem, &off, CD);
    p->mask_w = take(mem, &off, (size_t)c->mask_dim * 9 * CD);
    p->mask_b = take(mem, &off, c->mask_dim);
    return off;
}

size_t pixel_decoder_num_params(const M2FConfig* cfg) {
    if (cfg->pixel_decoder == PIXEL_DECODER_MSDEFORM) return msdeform_num_params(cfg);
    PixelDecoderParams p;
    return pixel_decoder_layout_params(&p, NULL, cfg);
}

static void require_fpn(const M2FConfig* cfg, const char* fn) {
    if (cfg->pixel_decoder != PIXEL_DECODER_FPN)
        ttt_die("internal: %s called for the %s pixel decoder", fn, pixel_decoder_name(cfg->pixel_decoder));
}

void pixel_decoder_point_params(PixelDecoderParams* p, float* mem, const M2FConfig* cfg) {
    require_fpn(cfg, "pixel_decoder_point_params");
    pixel_decoder_layout_params(p, mem, cfg);
}

static void fill_uniform_host(Rng* rng, float* x, size_t n, float bound) {
    rng_fill_uniform(rng, x, n, -bound, bound);
}
static void fill_const_host(float* x, size_t n, float v) {
    for (size_t i = 0; i < n; i++) x[i] = v;
}

void pixel_decoder_init_params(float* mem, const M2FConfig* c, Rng* rng) {
    require_fpn(c, "pixel_decoder_init_params");
    PixelDecoderParams p;
    pixel_decoder_point_params(&p, mem, c);
    int CD = c->conv_dim;
    // c2_xavier_fill = kaiming_uniform(a=1): bound sqrt(3 / fan_in), bias 0
    for (int l = 0; l < 3; l++) {
        fill_uniform_host(rng, p.lateral_w[l], (size_t)CD * c->in_dims[l], sqrtf(3.0f / c->in_dims[l]));
        fill_const_host(p.lateral_gn_w[l], CD, 1.0f);
        fill_const_host(p.lateral_gn_b[l], CD, 0.0f);
    }
    for (int l = 0; l < 4; l++) {
        int C = (l == 3) ? c->in_dims[3] : CD;
        fill_uniform_host(rng, p.output_w[l], (size_t)CD * 9 * C, sqrtf(3.0f / (9.0f * C)));
        fill_const_host(p.output_gn_w[l], CD, 1.0f);
        fill_const_host(p.output_gn_b[l], CD, 0.0f);
    }
    fill_uniform_host(rng, p.mask_w, (size_t)c->mask_dim * 9 * CD, sqrtf(3.0f / (9.0f * CD)));
    fill_const_host(p.mask_b, c->mask_dim, 0.0f);
}

static size_t msdeform_layout_acts(PixelDecoderActs* a, float* mem, const M2FConfig* c, int B, int H4, int W4);
static size_t msdeform_layout_grads(PixelDecoderActs* da, float* mem, const M2FConfig* c, int B, int H4, int W4);

static size_t pixel_decoder_layout_acts(PixelDecoderActs* a, float* mem, const M2FConfig* c,
                                        int B, int H4, int W4) {
    if (c->pixel_decoder == PIXEL_DECODER_MSDEFORM) return msdeform_layout_acts(a, mem, c, B, H4, W4);
    size_t off = 0;
    int CD = c->conv_dim, G = c->num_groups;
    memset(&a->msd, 0, sizeof(a->msd));
    a->max_B = B; a->H4 = H4; a->W4 = W4;
    m2f_level_sizes(H4, W4, a->Hs, a->Ws);
    for (int l = 0; l < 3; l++) {
        size_t n = (size_t)B * a->Hs[l] * a->Ws[l] * CD;
        a->lateral[l] = take_act(mem, &off, n);
        a->lateral_gn[l] = take_act(mem, &off, n);
        a->lateral_mean[l] = take_act(mem, &off, (size_t)B * G);
        a->lateral_rstd[l] = take_act(mem, &off, (size_t)B * G);
        a->fused[l] = take_act(mem, &off, n);
    }
    for (int l = 0; l < 4; l++) {
        size_t n = (size_t)B * a->Hs[l] * a->Ws[l] * CD;
        a->conv[l] = take_act(mem, &off, n);
        a->gn[l] = take_act(mem, &off, n);
        a->mean[l] = take_act(mem, &off, (size_t)B * G);
        a->rstd[l] = take_act(mem, &off, (size_t)B * G);
        a->out[l] = take_act(mem, &off, n);
    }
    a->mask_features = take_act(mem, &off, (size_t)B * H4 * W4 * c->mask_dim);
    return (off + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
}

size_t pixel_decoder_num_acts(const M2FConfig* cfg, int max_B, int H4, int W4) {
    PixelDecoderActs a;
    return pixel_decoder_layout_acts(&a, NULL, cfg, max_B, H4, W4);
}

void pixel_decoder_point_acts(PixelDecoderActs* a, float* mem, const M2FConfig* cfg,
                              int max_B, int H4, int W4) {
    pixel_decoder_layout_acts(a, mem, cfg, max_B, H4, W4);
}

// The FPN's gradient buffers (m2f_point_grad_acts). pixel_decoder_backward runs level 0 as a
// chain mask_features -> out[0] -> gn[0] -> conv[0] -> fused[0] -> lateral[0] in which each
// gradient is dead once the next is made, then levels 1, 2, 3 the same way (gn, conv, fused,
// lateral): two 1/4-resolution buffers used in turn hold every link of every level. out[1..3]
// collect gradients from the transformer decoder and from the finer level: buffers of their
// own. GroupNorm's means/rstds and lateral_gn (whose gradient is fused's) get none.
// msdeform: msdeform_layout_grads.
// Both pixel decoders' FPN chains (levels 0 .. chain_levels - 1): the two 1/4-resolution buffers
// in turn, out[1..3] of their own. Returns ping, the first 1/4 buffer (its floats: n0).
static float* fpn_chain_grads(PixelDecoderActs* da, float* mem, size_t* off, const M2FConfig* c, int B,
                              int H4, int W4, int chain_levels, size_t* n0) {
    memset(da, 0, sizeof(*da));
    size_t CD = c->conv_dim, C0 = c->mask_dim > c->conv_dim ? c->mask_dim : c->conv_dim;
    da->max_B = B; da->H4 = H4; da->W4 = W4;
    m2f_level_sizes(H4, W4, da->Hs, da->Ws);
    *n0 = (size_t)B * H4 * W4 * C0;
    float* ping = take_act(mem, off, *n0);
    float* pong = take_act(mem, off, *n0);
    da->mask_features = ping;
    da->out[0] = pong;
    for (int l = 1; l < 4; l++) da->out[l] = take_act(mem, off, (size_t)B * da->Hs[l] * da->Ws[l] * CD);
    for (int l = 0; l < chain_levels; l++) {
        da->gn[l] = ping;
        da->conv[l] = pong;
        if (l < 3) { da->fused[l] = ping; da->lateral[l] = pong; }
    }
    return ping;
}

static size_t pixel_decoder_layout_grads(PixelDecoderActs* da, float* mem, const M2FConfig* c,
                                         int B, int H4, int W4) {
    if (c->pixel_decoder == PIXEL_DECODER_MSDEFORM) return msdeform_layout_grads(da, mem, c, B, H4, W4);
    size_t off = 0, n0;
    fpn_chain_grads(da, mem, &off, c, B, H4, W4, 4, &n0);
    return (off + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
}

// ----------------------------------------------------------------------------
// pixel decoder: forward and backward

void pixel_decoder_forward(const M2FConfig* c, const PixelDecoderParams* p, PixelDecoderActs* a,
                           const float* const feats[4], int B) {
    require_fpn(c, "pixel_decoder_forward");
    if (B < 1 || B > a->max_B) ttt_die("pixel decoder: batch %d outside [1, %d]", B, a->max_B);
    int CD = c->conv_dim, G = c->num_groups;
    const int* Hs = a->Hs; const int* Ws = a->Ws;
    // 1/32: conv3x3 + GN + ReLU
    size_t n3 = (size_t)B * Hs[3] * Ws[3] * CD;
    conv2d_forward(a->conv[3], feats[3], p->output_w[3], NULL, B, Hs[3], Ws[3], c->in_dims[3], CD,
                   3, 1, 1, Hs[3], Ws[3]);
    groupnorm_forward(a->gn[3], a->mean[3], a->rstd[3], a->conv[3], p->output_gn_w[3],
                      p->output_gn_b[3], B, Hs[3] * Ws[3], CD, G);
    relu_forward(a->out[3], a->gn[3], n3);
    // 1/16, 1/8, 1/4: lateral conv1x1 + GN, plus the nearest-upsampled coarser output
    for (int l = 2; l >= 0; l--) {
        int HW = Hs[l] * Ws[l];
        size_t n = (size_t)B * HW * CD;
        conv2d_forward(a->lateral[l], feats[l], p->lateral_w[l], NULL, B, Hs[l], Ws[l],
                       c->in_dims[l], CD, 1, 1, 0, Hs[l], Ws[l]);
        groupnorm_forward(a->lateral_gn[l], a->lateral_mean[l], a->lateral_rstd[l], a->lateral[l],
                          p->lateral_gn_w[l], p->lateral_gn_b[l], B, HW, CD, G);
        upsample_nearest_forward(a->fused[l], a->out[l + 1], B, Hs[l + 1], Ws[l + 1], CD, Hs[l], Ws[l]);
        add_inplace(a->fused[l], a->lateral_gn[l], n);
        conv2d_forward(a->conv[l], a->fused[l], p->output_w[l], NULL, B, Hs[l], Ws[l], CD, CD,
                       3, 1, 1, Hs[l], Ws[l]);
        groupnorm_forward(a->gn[l], a->mean[l], a->rstd[l], a->conv[l], p->output_gn_w[l],
                          p->output_gn_b[l], B, HW, CD, G);
        relu_forward(a->out[l], a->gn[l], n);
    }
    conv2d_forward(a->mask_features, a->out[0], p->mask_w, p->mask_b, B, Hs[0], Ws[0], CD,
                   c->mask_dim, 3, 1, 1, Hs[0], Ws[0]);
}

void pixel_decoder_backward(const M2FConfig* c, const PixelDecoderParams* p,
                            PixelDecoderParams* g, const PixelDecoderActs* a,
                            PixelDecoderActs* da, const float* const feats[4], float* dfeats[4],
                            int B) {
    require_fpn(c, "pixel_decoder_backward");
    int CD = c->conv_dim, G = c->num_groups;
    const int* Hs = a->Hs; const int* Ws = a->Ws;
    // scratch gradients start at zero (backward ops accumulate); each is zeroed right before
    // its first write, as the gradient layout (pixel_decoder_layout_grads) reuses buffers
    // between the links of the chain. da->out[1..3] come in holding the decoder's gradients.
    size_t bytes0 = (size_t)B * Hs[0] * Ws[0] * CD * sizeof(float);
    ttt_zero(da->out[0], bytes0);
    conv2d_backward(da->out[0], g->mask_w, g->mask_b, da->mask_features, a->out[0], p->mask_w,
                    B, Hs[0], Ws[0], CD, c->mask_dim, 3, 1, 1, Hs[0], Ws[0]);
    for (int l = 0; l < 3; l++) {
        int HW = Hs[l] * Ws[l];
        size_t n = (size_t)B * HW * CD;
        ttt_zero(da->gn[l], n * sizeof(float));
        relu_backward(da->gn[l], a->out[l], da->out[l], n);
        ttt_zero(da->conv[l], n * sizeof(float));
        groupnorm_backward(da->conv[l], g->output_gn_w[l], g->output_gn_b[l], da->gn[l], a->conv[l],
                           p->output_gn_w[l], a->mean[l], a->rstd[l], B, HW, CD, G);
        ttt_zero(da->fused[l], n * sizeof(float));
        conv2d_backward(da->fused[l], g->output_w[l], NULL, da->conv[l], a->fused[l], p->output_w[l],
                        B, Hs[l], Ws[l], CD, CD, 3, 1, 1, Hs[l], Ws[l]);
        // fused = lateral_gn + up(out[l+1]): both branches get d fused
        upsample_nearest_backward(da->out[l + 1], da->fused[l], B, Hs[l + 1], Ws[l + 1], CD,
                                  Hs[l], Ws[l]);
        ttt_zero(da->lateral[l], n * sizeof(float));
        groupnorm_backward(da->lateral[l], g->lateral_gn_w[l], g->lateral_gn_b[l], da->fused[l],
                           a->lateral[l], p->lateral_gn_w[l], a->lateral_mean[l],
                           a->lateral_rstd[l], B, HW, CD, G);
        conv2d_backward(dfeats ? dfeats[l] : NULL, g->lateral_w[l], NULL, da->lateral[l], feats[l],
                        p->lateral_w[l], B, Hs[l], Ws[l], c->in_dims[l], CD, 1, 1, 0, Hs[l], Ws[l]);
    }
    size_t n3 = (size_t)B * Hs[3] * Ws[3] * CD;
    ttt_zero(da->gn[3], n3 * sizeof(float));
    relu_backward(da->gn[3], a->out[3], da->out[3], n3);
    ttt_zero(da->conv[3], n3 * sizeof(float));
    groupnorm_backward(da->conv[3], g->output_gn_w[3], g->output_gn_b[3], da->gn[3], a->conv[3],
                       p->output_gn_w[3], a->mean[3], a->rstd[3], B, Hs[3] * Ws[3], CD, G);
    conv2d_backward(dfeats ? dfeats[3] : NULL, g->output_w[3], NULL, da->conv[3], feats[3],
                    p->output_w[3], B, Hs[3], Ws[3], c->in_dims[3], CD, 3, 1, 1, Hs[3], Ws[3]);
}

// ----------------------------------------------------------------------------
// pixel decoder MSDeformAttnPixelDecoder (math and parameter layout in ttt.h)

static size_t msdeform_layout_params(MSDeformParams* p, float* mem, const M2FConfig* c) {
    size_t off = 0;
    size_t D = c->conv_dim, NE = c->enc_layers, FE = c->enc_ffn, MD = c->mask_dim;
    size_t E = (size_t)c->num_heads * MSD_LEVELS * c->n_points;   // attention weights per token
    for (int e = 0; e < MSD_LEVELS; e++) p->input_w[e] = take(mem, &off, D * c->in_dims[3 - e]);
    for (int e = 0; e < MSD_LEVELS; e++) p->input_b[e] = take(mem, &off, D);
    for (int e = 0; e < MSD_LEVELS; e++) p->input_gn_w[e] = take(mem, &off, D);
    for (int e = 0; e < MSD_LEVELS; e++) p->input_gn_b[e] = take(mem, &off, D);
    p->level_embed = take(mem, &off, MSD_LEVELS * D);
    p->value_w = take(mem, &off, NE * D * D);
    p->value_b = take(mem, &off, NE * D);
    p->off_w = take(mem, &off, NE * 2 * E * D);
    p->off_b = take(mem, &off, NE * 2 * E);
    p->aw_w = take(mem, &off, NE * E * D);
    p->aw_b = take(mem, &off, NE * E);
    p->out_w = take(mem, &off, NE * D * D);
    p->out_b = take(mem, &off, NE * D);
    p->ln1_w = take(mem, &off, NE * D);
    p->ln1_b = take(mem, &off, NE * D);
    p->fc1_w = take(mem, &off, NE * FE * D);
    p->fc1_b = take(mem, &off, NE * FE);
    p->fc2_w = take(mem, &off, NE * D * FE);
    p->fc2_b = take(mem, &off, NE * D);
    p->ln2_w = take(mem, &off, NE * D);
    p->ln2_b = take(mem, &off, NE * D);
    p->lateral_w = take(mem, &off, D * c->in_dims[0]);
    p->lateral_gn_w = take(mem, &off, D);
    p->lateral_gn_b = take(mem, &off, D);
    p->output_w = take(mem, &off, D * 9 * D);
    p->output_gn_w = take(mem, &off, D);
    p->output_gn_b = take(mem, &off, D);
    p->mask_w = take(mem, &off, MD * D);
    p->mask_b = take(mem, &off, MD);
    return off;
}

static void require_msdeform(const M2FConfig* cfg, const char* fn) {
    if (cfg->pixel_decoder != PIXEL_DECODER_MSDEFORM)
        ttt_die("internal: %s called for the %s pixel decoder", fn, pixel_decoder_name(cfg->pixel_decoder));
}

size_t msdeform_num_params(const M2FConfig* cfg) {
    require_msdeform(cfg, "msdeform_num_params");
    MSDeformParams p;
    return msdeform_layout_params(&p, NULL, cfg);
}

void msdeform_point_params(MSDeformParams* p, float* mem, const M2FConfig* cfg) {
    require_msdeform(cfg, "msdeform_point_params");
    msdeform_layout_params(p, mem, cfg);
}

void msdeform_init_params(float* mem, const M2FConfig* c, Rng* rng) {
    MSDeformParams p;
    msdeform_point_params(&p, mem, c);
    size_t D = c->conv_dim, NE = c->enc_layers, FE = c->enc_ffn, MD = c->mask_dim;
    int NH = c->num_heads, P = c->n_points;
    size_t E = (size_t)NH * MSD_LEVELS * P;
    // input projections: xavier_uniform (gain 1) on the 1x1 conv, bias 0; GroupNorm 1 / 0
    for (int e = 0; e < MSD_LEVELS; e++) {
        int C = c->in_dims[3 - e];
        fill_uniform_host(rng, p.input_w[e], D * C, sqrtf(6.0f / (float)(C + D)));
        fill_const_host(p.input_b[e], D, 0.0f);
        fill_const_host(p.input_gn_w[e], D, 1.0f);
        fill_const_host(p.input_gn_b[e], D, 0.0f);
    }
    rng_fill_normal(rng, p.level_embed, MSD_LEVELS * D, 0.0f, 1.0f);
    for (size_t i = 0; i < NE; i++) {
        // MSDeformAttn._reset_parameters: offsets weight 0, bias = head h's direction
        // (cos, sin)(2 pi h / NH) scaled so its larger component is 1, times p + 1 at point p,
        // the same on every level; attention weights 0; value / output proj xavier, bias 0
        float* ob = p.off_b + i * 2 * E;
        for (int h = 0; h < NH; h++) {
            double th = h * (2.0 * M_PI / NH);
            float gx = (float)cos(th), gy = (float)sin(th);
            float mx = fabsf(gx) > fabsf(gy) ? fabsf(gx) : fabsf(gy);
            for (int l = 0; l < MSD_LEVELS; l++)
                for (int pt = 0; pt < P; pt++) {
                    size_t k = (((size_t)h * MSD_LEVELS + l) * P + pt) * 2;
                    ob[k] = gx / mx * (pt + 1);
                    ob[k + 1] = gy / mx * (pt + 1);
                }
        }
        fill_const_host(p.off_w + i * 2 * E * D, 2 * E * D, 0.0f);
        fill_const_host(p.aw_w + i * E * D, E * D, 0.0f);
        fill_const_host(p.aw_b + i * E, E, 0.0f);
        fill_uniform_host(rng, p.value_w + i * D * D, D * D, sqrtf(6.0f / (float)(2 * D)));
        fill_const_host(p.value_b + i * D, D, 0.0f);
        fill_uniform_host(rng, p.out_w + i * D * D, D * D, sqrtf(6.0f / (float)(2 * D)));
        fill_const_host(p.out_b + i * D, D, 0.0f);
        // FFN: xavier weights (the encoder's _reset_parameters), nn.Linear's default biases
        fill_uniform_host(rng, p.fc1_w + i * FE * D, FE * D, sqrtf(6.0f / (float)(D + FE)));
        fill_uniform_host(rng, p.fc1_b + i * FE, FE, 1.0f / sqrtf((float)D));
        fill_uniform_host(rng, p.fc2_w + i * D * FE, D * FE, sqrtf(6.0f / (float)(D + FE)));
        fill_uniform_host(rng, p.fc2_b + i * D, D, 1.0f / sqrtf((float)FE));
    }
    fill_const_host(p.ln1_w, NE * D, 1.0f); fill_const_host(p.ln1_b, NE * D, 0.0f);
    fill_const_host(p.ln2_w, NE * D, 1.0f); fill_const_host(p.ln2_b, NE * D, 0.0f);
    // c2_xavier_fill: uniform +-sqrt(3 / fan_in), bias 0
    fill_uniform_host(rng, p.lateral_w, D * c->in_dims[0], sqrtf(3.0f / (float)c->in_dims[0]));
    fill_const_host(p.lateral_gn_w, D, 1.0f); fill_const_host(p.lateral_gn_b, D, 0.0f);
    fill_uniform_host(rng, p.output_w, D * 9 * D, sqrtf(3.0f / (9.0f * D)));
    fill_const_host(p.output_gn_w, D, 1.0f); fill_const_host(p.output_gn_b, D, 0.0f);
    fill_uniform_host(rng, p.mask_w, MD * D, sqrtf(3.0f / (float)D));
    fill_const_host(p.mask_b, MD, 0.0f);
}

// the FPN fields of a that msdeform uses (level 0 of lateral/fused/conv/gn, out[0..3],
// mask_features) in the FPN's order, lateral[0] first (m2f_backward zeroes from there on),
// then the encoder block a->msd
static size_t msdeform_layout_acts(PixelDecoderActs* a, float* mem, const M2FConfig* c, int B, int H4, int W4) {
    memset(a, 0, sizeof(*a));
    size_t off = 0;
    size_t D = c->conv_dim, G = c->num_groups, FE = c->enc_ffn;
    int NE = c->enc_layers;
    size_t E = (size_t)c->num_heads * MSD_LEVELS * c->n_points;
    a->max_B = B; a->H4 = H4; a->W4 = W4;
    m2f_level_sizes(H4, W4, a->Hs, a->Ws);
    size_t n0 = (size_t)B * H4 * W4 * D;
    a->lateral[0] = take_act(mem, &off, n0);
    a->lateral_gn[0] = take_act(mem, &off, n0);
    a->lateral_mean[0] = take_act(mem, &off, (size_t)B * G);
    a->lateral_rstd[0] = take_act(mem, &off, (size_t)B * G);
    a->fused[0] = take_act(mem, &off, n0);
    a->conv[0] = take_act(mem, &off, n0);
    a->gn[0] = take_act(mem, &off, n0);
    a->mean[0] = take_act(mem, &off, (size_t)B * G);
    a->rstd[0] = take_act(mem, &off, (size_t)B * G);
    for (int l = 0; l < 4; l++) a->out[l] = take_act(mem, &off, (size_t)B * a->Hs[l] * a->Ws[l] * D);
    a->mask_features = take_act(mem, &off, (size_t)B * H4 * W4 * c->mask_dim);

    MSDeformActs* m = &a->msd;
    size_t first = off;
    m->S = 0;
    for (int e = 0; e < MSD_LEVELS; e++) {
        int l = 3 - e;
        m->shapes[2 * e] = a->Hs[l]; m->shapes[2 * e + 1] = a->Ws[l];
        m->T[e] = a->Hs[l] * a->Ws[l];
        m->start[e] = m->S;
        m->S += m->T[e];
    }
    size_t S = m->S, BS = (size_t)B * S;
    for (int e = 0; e < MSD_LEVELS; e++) {
        m->proj[e] = take_act(mem, &off, (size_t)B * m->T[e] * D);
        m->proj_gn[e] = take_act(mem, &off, (size_t)B * m->T[e] * D);
        m->proj_mean[e] = take_act(mem, &off, (size_t)B * G);
        m->proj_rstd[e] = take_act(mem, &off, (size_t)B * G);
    }
    m->pos = take_act(mem, &off, S * D);
    m->level_rows = take_act(mem, &off, S * D);
    for (int i = 0; i <= NE; i++) m->x[i] = take_act(mem, &off, BS * D);
    for (int i = 0; i < NE; i++) {
        m->q_in[i] = take_act(mem, &off, BS * D);
        m->value[i] = take_act(mem, &off, BS * D);
        m->off[i] = take_act(mem, &off, BS * 2 * E);
        m->loc[i] = take_act(mem, &off, BS * 2 * E);
        m->aw_logit[i] = take_act(mem, &off, BS * E);
        m->aw[i] = take_act(mem, &off, BS * E);
        m->attn[i] = take_act(mem, &off, BS * D);
        m->res1[i] = take_act(mem, &off, BS * D);
        m->ln1[i] = take_act(mem, &off, BS * D);
        m->ln1_mean[i] = take_act(mem, &off, BS);
        m->ln1_rstd[i] = take_act(mem, &off, BS);
        m->fc1[i] = take_act(mem, &off, BS * FE);
        m->fc1_relu[i] = take_act(mem, &off, BS * FE);
        m->res2[i] = take_act(mem, &off, BS * D);
        m->ln2_mean[i] = take_act(mem, &off, BS);
        m->ln2_rstd[i] = take_act(mem, &off, BS);
    }
    m->n = off - first;
    return (off + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
}

// The msdeform pixel decoder's gradient buffers (m2f_point_grad_acts). The FPN step to 1/4 is a
// chain mask_features -> out[0] -> gn[0] -> conv[0] -> fused[0] -> lateral[0] whose links die
// one after another: two 1/4-resolution buffers in turn. out[1..3] collect the transformer
// decoder's gradients (buffers of their own). The encoder: pos collects over all layers; the
// layer inputs x[i] alternate between two buffers (layer i reads x[i+1]'s and writes x[i]'s);
// one span of a layer's internals for all layers; the input projections' (proj, proj_gn), used
// after the encoder, inside the first 1/4 buffer (free by then) when they fit. No buffers for
// means, rstds, level_rows.
static size_t msdeform_layout_grads(PixelDecoderActs* da, float* mem, const M2FConfig* c, int B, int H4, int W4) {
    size_t off = 0, n0;
    size_t D = c->conv_dim, FE = c->enc_ffn;
    int NE = c->enc_layers;
    size_t E = (size_t)c->num_heads * MSD_LEVELS * c->n_points;
    float* ping = fpn_chain_grads(da, mem, &off, c, B, H4, W4, 1, &n0);

    MSDeformActs* m = &da->msd;
    m->S = 0;
    for (int e = 0; e < MSD_LEVELS; e++) {
        int l = 3 - e;
        m->shapes[2 * e] = da->Hs[l]; m->shapes[2 * e + 1] = da->Ws[l];
        m->T[e] = da->Hs[l] * da->Ws[l];
        m->start[e] = m->S;
        m->S += m->T[e];
    }
    size_t S = m->S, BS = (size_t)B * S;
    m->pos = take_act(mem, &off, S * D);
    float* chain[2];
    chain[0] = take_act(mem, &off, BS * D);
    chain[1] = take_act(mem, &off, BS * D);
    for (int i = 0; i <= NE; i++) m->x[i] = chain[i % 2];
    float *q_in = take_act(mem, &off, BS * D), *value = take_act(mem, &off, BS * D);
    float *offs = take_act(mem, &off, BS * 2 * E), *loc = take_act(mem, &off, BS * 2 * E);
    float *aw_logit = take_act(mem, &off, BS * E), *aw = take_act(mem, &off, BS * E);
    float *attn = take_act(mem, &off, BS * D), *res1 = take_act(mem, &off, BS * D), *ln1 = take_act(mem, &off, BS * D);
    float *fc1 = take_act(mem, &off, BS * FE), *fc1_relu = take_act(mem, &off, BS * FE);
    float* res2 = take_act(mem, &off, BS * D);
    for (int i = 0; i < NE; i++) {
        m->q_in[i] = q_in; m->value[i] = value; m->off[i] = offs; m->loc[i] = loc;
        m->aw_logit[i] = aw_logit; m->aw[i] = aw; m->attn[i] = attn; m->res1[i] = res1;
        m->ln1[i] = ln1; m->fc1[i] = fc1; m->fc1_relu[i] = fc1_relu; m->res2[i] = res2;
    }
    // proj[e] then proj_gn[e], level after level, counted from ping (or from mem)
    size_t proj_n = 0;
    for (int e = 0; e < MSD_LEVELS; e++) proj_n += 2 * ((B * m->T[e] * D + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN);
    size_t proj_off = 0;
    float* proj_mem = ping;
    if (proj_n > n0) { proj_mem = mem; proj_off = off; }
    for (int e = 0; e < MSD_LEVELS; e++) {
        m->proj[e] = take_act(proj_mem, &proj_off, (size_t)B * m->T[e] * D);
        m->proj_gn[e] = take_act(proj_mem, &proj_off, (size_t)B * m->T[e] * D);
    }
    if (proj_n > n0) off = proj_off;
    m->n = 0;   // not one block here
    return (off + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
}

void msdeform_forward(const M2FConfig* c, const MSDeformParams* p, PixelDecoderActs* a,
                      const float* const feats[4], int B) {
    require_msdeform(c, "msdeform_forward");
    if (B < 1 || B > a->max_B) ttt_die("msdeform pixel decoder: batch %d outside [1, %d]", B, a->max_B);
    MSDeformActs* m = &a->msd;
    int D = c->conv_dim, G = c->num_groups, NH = c->num_heads, HD = D / NH, P = c->n_points;
    int NE = c->enc_layers, FE = c->enc_ffn, MD = c->mask_dim, S = m->S, BS = B * S;
    int E = NH * MSD_LEVELS * P;
    size_t nSD = (size_t)BS * D, SD = (size_t)S * D;
    const int* Hs = a->Hs; const int* Ws = a->Ws;
    // input projections (1x1 conv + GN) of 1/32, 1/16, 1/8, concatenated level after level
    for (int e = 0; e < MSD_LEVELS; e++) {
        int l = 3 - e, T = m->T[e];
        conv2d_forward(m->proj[e], feats[l], p->input_w[e], p->input_b[e], B, Hs[l], Ws[l], c->in_dims[l], D,
                       1, 1, 0, Hs[l], Ws[l]);
        groupnorm_forward(m->proj_gn[e], m->proj_mean[e], m->proj_rstd[e], m->proj[e], p->input_gn_w[e],
                          p->input_gn_b[e], B, T, D, G);
        for (int b = 0; b < B; b++)
            ttt_copy(m->x[0] + ((size_t)b * S + m->start[e]) * D, m->proj_gn[e] + (size_t)b * T * D,
                     (size_t)T * D * sizeof(float));
    }
    // positions: each level's sine encoding plus its level embedding
    for (int e = 0; e < MSD_LEVELS; e++) {
        sine_position_encoding(m->pos + (size_t)m->start[e] * D, m->shapes[2 * e], m->shapes[2 * e + 1], D);
        repeat_row(m->level_rows + (size_t)m->start[e] * D, p->level_embed + (size_t)e * D, m->T[e], D);
    }
    add_inplace(m->pos, m->level_rows, SD);
    const char* outer_stage = stage_current();
    stage_begin("msdeform encoder forward");
    for (int i = 0; i < NE; i++) {
        const float* x = m->x[i];
        for (int b = 0; b < B; b++) add_forward(m->q_in[i] + b * SD, x + b * SD, m->pos, SD);
        linear_forward(m->value[i], x, p->value_w + (size_t)i * D * D, p->value_b + (size_t)i * D, BS, D, D);
        linear_forward(m->off[i], m->q_in[i], p->off_w + (size_t)i * 2 * E * D, p->off_b + (size_t)i * 2 * E,
                       BS, D, 2 * E);
        linear_forward(m->aw_logit[i], m->q_in[i], p->aw_w + (size_t)i * E * D, p->aw_b + (size_t)i * E, BS, D, E);
        softmax_forward(m->aw[i], m->aw_logit[i], BS * NH, MSD_LEVELS * P);
        ms_deform_locations_forward(m->loc[i], m->off[i], m->shapes, B, MSD_LEVELS, NH, P);
        ms_deform_attn_forward(m->attn[i], m->value[i], m->shapes, m->loc[i], m->aw[i], B, S, S, NH, HD,
                               MSD_LEVELS, P);
        linear_forward(m->res1[i], m->attn[i], p->out_w + (size_t)i * D * D, p->out_b + (size_t)i * D, BS, D, D);
        add_inplace(m->res1[i], x, nSD);
        layernorm_forward(m->ln1[i], m->ln1_mean[i], m->ln1_rstd[i], m->res1[i], p->ln1_w + (size_t)i * D,
                          p->ln1_b + (size_t)i * D, BS, D);
        linear_forward(m->fc1[i], m->ln1[i], p->fc1_w + (size_t)i * FE * D, p->fc1_b + (size_t)i * FE, BS, D, FE);
        relu_forward(m->fc1_relu[i], m->fc1[i], (size_t)BS * FE);
        linear_forward(m->res2[i], m->fc1_relu[i], p->fc2_w + (size_t)i * D * FE, p->fc2_b + (size_t)i * D,
                       BS, FE, D);
        add_inplace(m->res2[i], m->ln1[i], nSD);
        layernorm_forward(m->x[i + 1], m->ln2_mean[i], m->ln2_rstd[i], m->res2[i], p->ln2_w + (size_t)i * D,
                          p->ln2_b + (size_t)i * D, BS, D);
    }
    stage_begin(outer_stage);
    // the encoder output, split by level: the multi-scale features out[3], out[2], out[1]
    for (int e = 0; e < MSD_LEVELS; e++) {
        size_t TD = (size_t)m->T[e] * D;
        for (int b = 0; b < B; b++)
            ttt_copy(a->out[3 - e] + b * TD, m->x[NE] + ((size_t)b * S + m->start[e]) * D, TD * sizeof(float));
    }
    // one FPN step to 1/4: lateral 1x1 conv + GN plus the bilinearly upsampled 1/8 map
    int HW0 = Hs[0] * Ws[0];
    size_t n0 = (size_t)B * HW0 * D;
    conv2d_forward(a->lateral[0], feats[0], p->lateral_w, NULL, B, Hs[0], Ws[0], c->in_dims[0], D,
                   1, 1, 0, Hs[0], Ws[0]);
    groupnorm_forward(a->lateral_gn[0], a->lateral_mean[0], a->lateral_rstd[0], a->lateral[0], p->lateral_gn_w,
                      p->lateral_gn_b, B, HW0, D, G);
    upsample_bilinear_forward(a->fused[0], a->out[1], B, Hs[1], Ws[1], D, Hs[0], Ws[0]);
    add_inplace(a->fused[0], a->lateral_gn[0], n0);
    conv2d_forward(a->conv[0], a->fused[0], p->output_w, NULL, B, Hs[0], Ws[0], D, D, 3, 1, 1, Hs[0], Ws[0]);
    groupnorm_forward(a->gn[0], a->mean[0], a->rstd[0], a->conv[0], p->output_gn_w, p->output_gn_b, B, HW0, D, G);
    relu_forward(a->out[0], a->gn[0], n0);
    conv2d_forward(a->mask_features, a->out[0], p->mask_w, p->mask_b, B, Hs[0], Ws[0], D, MD, 1, 1, 0,
                   Hs[0], Ws[0]);
}

void msdeform_backward(const M2FConfig* c, const MSDeformParams* p, MSDeformParams* g,
                       const PixelDecoderActs* a, PixelDecoderActs* da, const float* const feats[4],
                       float* dfeats[4], int B) {
    require_msdeform(c, "msdeform_backward");
    const MSDeformActs* m = &a->msd;
    MSDeformActs* dm = &da->msd;
    int D = c->conv_dim, G = c->num_groups, NH = c->num_heads, HD = D / NH, P = c->n_points;
    int NE = c->enc_layers, FE = c->enc_ffn, MD = c->mask_dim, S = m->S, BS = B * S;
    int E = NH * MSD_LEVELS * P;
    size_t nSD = (size_t)BS * D, SD = (size_t)S * D;
    const int* Hs = a->Hs; const int* Ws = a->Ws;
    int HW0 = Hs[0] * Ws[0];
    size_t n0 = (size_t)B * HW0 * D, bytes0 = n0 * sizeof(float);
    // scratch gradients start at zero (backward ops accumulate); each is zeroed right before its
    // first write, as the gradient layout (msdeform_layout_grads) reuses buffers. da->out[1..3]
    // and da->mask_features come in holding the transformer decoder's gradients.

    // mask projection and the FPN step to 1/4
    ttt_zero(da->out[0], bytes0);
    conv2d_backward(da->out[0], g->mask_w, g->mask_b, da->mask_features, a->out[0], p->mask_w,
                    B, Hs[0], Ws[0], D, MD, 1, 1, 0, Hs[0], Ws[0]);
    ttt_zero(da->gn[0], bytes0);
    relu_backward(da->gn[0], a->out[0], da->out[0], n0);
    ttt_zero(da->conv[0], bytes0);
    groupnorm_backward(da->conv[0], g->output_gn_w, g->output_gn_b, da->gn[0], a->conv[0], p->output_gn_w,
                       a->mean[0], a->rstd[0], B, HW0, D, G);
    ttt_zero(da->fused[0], bytes0);
    conv2d_backward(da->fused[0], g->output_w, NULL, da->conv[0], a->fused[0], p->output_w,
                    B, Hs[0], Ws[0], D, D, 3, 1, 1, Hs[0], Ws[0]);
    // fused = lateral_gn + up(out[1]): both branches get d fused
    upsample_bilinear_backward(da->out[1], da->fused[0], B, Hs[1], Ws[1], D, Hs[0], Ws[0]);
    ttt_zero(da->lateral[0], bytes0);
    groupnorm_backward(da->lateral[0], g->lateral_gn_w, g->lateral_gn_b, da->fused[0], a->lateral[0],
                       p->lateral_gn_w, a->lateral_mean[0], a->lateral_rstd[0], B, HW0, D, G);
    conv2d_backward(dfeats ? dfeats[0] : NULL, g->lateral_w, NULL, da->lateral[0], feats[0], p->lateral_w,
                    B, Hs[0], Ws[0], c->in_dims[0], D, 1, 1, 0, Hs[0], Ws[0]);
    // the multi-scale features are the encoder output's levels
    ttt_zero(dm->pos, SD * sizeof(float));
    ttt_zero(dm->x[NE], nSD * sizeof(float));
    for (int e = 0; e < MSD_LEVELS; e++) {
        size_t TD = (size_t)m->T[e] * D;
        for (int b = 0; b < B; b++)
            add_inplace(dm->x[NE] + ((size_t)b * S + m->start[e]) * D, da->out[3 - e] + b * TD, TD);
    }
    const char* outer_stage = stage_current();
    stage_begin("msdeform encoder backward");
    for (int i = NE - 1; i >= 0; i--) {
        // layer i's gradients (the layout may share them between layers), x[i]'s among them
        float* zero_now[] = {dm->x[i], dm->q_in[i], dm->value[i], dm->attn[i], dm->res1[i], dm->ln1[i], dm->res2[i]};
        for (size_t z = 0; z < sizeof(zero_now) / sizeof(zero_now[0]); z++) ttt_zero(zero_now[z], nSD * sizeof(float));
        ttt_zero(dm->off[i], (size_t)BS * 2 * E * sizeof(float));
        ttt_zero(dm->loc[i], (size_t)BS * 2 * E * sizeof(float));
        ttt_zero(dm->aw_logit[i], (size_t)BS * E * sizeof(float));
        ttt_zero(dm->aw[i], (size_t)BS * E * sizeof(float));
        ttt_zero(dm->fc1[i], (size_t)BS * FE * sizeof(float));
        ttt_zero(dm->fc1_relu[i], (size_t)BS * FE * sizeof(float));
        // FFN block: x[i+1] = LN2(ln1 + fc2(relu(fc1(ln1))))
        layernorm_backward(dm->res2[i], g->ln2_w + (size_t)i * D, g->ln2_b + (size_t)i * D, dm->x[i + 1],
                           m->res2[i], p->ln2_w + (size_t)i * D, m->ln2_mean[i], m->ln2_rstd[i], BS, D);
        add_inplace(dm->ln1[i], dm->res2[i], nSD);
        linear_backward(dm->fc1_relu[i], g->fc2_w + (size_t)i * D * FE, g->fc2_b + (size_t)i * D, dm->res2[i],
                        m->fc1_relu[i], p->fc2_w + (size_t)i * D * FE, BS, FE, D);
        relu_backward(dm->fc1[i], m->fc1_relu[i], dm->fc1_relu[i], (size_t)BS * FE);
        linear_backward(dm->ln1[i], g->fc1_w + (size_t)i * FE * D, g->fc1_b + (size_t)i * FE, dm->fc1[i],
                        m->ln1[i], p->fc1_w + (size_t)i * FE * D, BS, D, FE);
        // attention block: ln1 = LN1(x + output_proj(attn))
        layernorm_backward(dm->res1[i], g->ln1_w + (size_t)i * D, g->ln1_b + (size_t)i * D, dm->ln1[i],
                           m->res1[i], p->ln1_w + (size_t)i * D, m->ln1_mean[i], m->ln1_rstd[i], BS, D);
        add_inplace(dm->x[i], dm->res1[i], nSD);
        linear_backward(dm->attn[i], g->out_w + (size_t)i * D * D, g->out_b + (size_t)i * D, dm->res1[i],
                        m->attn[i], p->out_w + (size_t)i * D * D, BS, D, D);
        ms_deform_attn_backward(dm->value[i], dm->loc[i], dm->aw[i], dm->attn[i], m->value[i], m->shapes,
                                m->loc[i], m->aw[i], B, S, S, NH, HD, MSD_LEVELS, P);
        ms_deform_locations_backward(dm->off[i], dm->loc[i], m->shapes, B, MSD_LEVELS, NH, P);
        softmax_backward(dm->aw_logit[i], m->aw[i], dm->aw[i], BS * NH, MSD_LEVELS * P);
        linear_backward(dm->q_in[i], g->aw_w + (size_t)i * E * D, g->aw_b + (size_t)i * E, dm->aw_logit[i],
                        m->q_in[i], p->aw_w + (size_t)i * E * D, BS, D, E);
        linear_backward(dm->q_in[i], g->off_w + (size_t)i * 2 * E * D, g->off_b + (size_t)i * 2 * E, dm->off[i],
                        m->q_in[i], p->off_w + (size_t)i * 2 * E * D, BS, D, 2 * E);
        linear_backward(dm->x[i], g->value_w + (size_t)i * D * D, g->value_b + (size_t)i * D, dm->value[i],
                        m->x[i], p->value_w + (size_t)i * D * D, BS, D, D);
        // q_in = x + pos, pos broadcast over the batch
        add_inplace(dm->x[i], dm->q_in[i], nSD);
        for (int b = 0; b < B; b++) add_inplace(dm->pos, dm->q_in[i] + b * SD, SD);
    }
    stage_begin(outer_stage);
    // level_embed[e] was added to every row of level e: its gradient is those rows' sum
    for (int e = 0; e < MSD_LEVELS; e++)
        linear_backward(NULL, NULL, g->level_embed + (size_t)e * D, dm->pos + (size_t)m->start[e] * D,
                        m->pos + (size_t)m->start[e] * D, p->out_w, m->T[e], D, D);
    // input projections
    for (int e = 0; e < MSD_LEVELS; e++) {
        int l = 3 - e, T = m->T[e];
        size_t TD = (size_t)T * D;
        ttt_zero(dm->proj_gn[e], (size_t)B * TD * sizeof(float));
        ttt_zero(dm->proj[e], (size_t)B * TD * sizeof(float));
        for (int b = 0; b < B; b++)
            add_inplace(dm->proj_gn[e] + b * TD, dm->x[0] + ((size_t)b * S + m->start[e]) * D, TD);
        groupnorm_backward(dm->proj[e], g->input_gn_w[e], g->input_gn_b[e], dm->proj_gn[e], m->proj[e],
                           p->input_gn_w[e], m->proj_mean[e], m->proj_rstd[e], B, T, D, G);
        conv2d_backward(dfeats ? dfeats[l] : NULL, g->input_w[e], g->input_b[e], dm->proj[e], feats[l],
                        p->input_w[e], B, Hs[l], Ws[l], c->in_dims[l], D, 1, 1, 0, Hs[l], Ws[l]);
    }
}

// ----------------------------------------------------------------------------
// the new op attn_mask_from_logits: CPU reference and dispatcher (the CUDA twin lives in
// ttt_kernels.cu). Math in ttt.h.

void attn_mask_from_logits_cpu(float* mask_add, const float* logits, int B, int Q, int T) {
    #pragma omp parallel for
    for (int row = 0; row < B * Q; row++) {
        const float* x = logits + (size_t)row * T;
        float* m = mask_add + (size_t)row * T;
        int open = 0;
        for (int t = 0; t < T; t++) {
            int blocked = 1.0f / (1.0f + expf(-x[t])) < 0.5f;
            m[t] = blocked ? -INFINITY : 0.0f;
            open += !blocked;
        }
        if (open == 0) {
            for (int t = 0; t < T; t++) m[t] = 0.0f;
        }
    }
}

void attn_mask_from_logits(float* mask_add, const float* logits, int B, int Q, int T) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { attn_mask_from_logits_cuda(mask_add, logits, B, Q, T); return; }
#endif
    attn_mask_from_logits_cpu(mask_add, logits, B, Q, T);
}

// ----------------------------------------------------------------------------
// the head h: parameters and activations

static size_t m2f_layout_params(M2FParams* p, float* mem, const M2FConfig* c) {
    // the pixel decoder's block first, of its kind; the other kind's pointers are NULL
    memset(&p->pd, 0, sizeof(p->pd));
    memset(&p->msd, 0, sizeof(p->msd));
    size_t off = c->pixel_decoder == PIXEL_DECODER_MSDEFORM ? msdeform_layout_params(&p->msd, mem, c)
                                                            : pixel_decoder_layout_params(&p->pd, mem, c);
    size_t D = c->hidden_dim, Q = c->num_queries, F = c->ffn_dim, NL = c->dec_layers;
    size_t K1 = c->num_classes + 1, MD = c->mask_dim;
    p->query_feat = take(mem, &off, Q * D);
    p->query_embed = take(mem, &off, Q * D);
    p->level_embed = take(mem, &off, 3 * D);
    p->ca_in_w = take(mem, &off, NL * 3 * D * D);
    p->ca_in_b = take(mem, &off, NL * 3 * D);
    p->ca_out_w = take(mem, &off, NL * D * D);
    p->ca_out_b = take(mem, &off, NL * D);
    p->ca_ln_w = take(mem, &off, NL * D);
    p->ca_ln_b = take(mem, &off, NL * D);
    p->sa_in_w = take(mem, &off, NL * 3 * D * D);
    p->sa_in_b = take(mem, &off, NL * 3 * D);
    p->sa_out_w = take(mem, &off, NL * D * D);
    p->sa_out_b = take(mem, &off, NL * D);
    p->sa_ln_w = take(mem, &off, NL * D);
    p->sa_ln_b = take(mem, &off, NL * D);
    p->fc1_w = take(mem, &off, NL * F * D);
    p->fc1_b = take(mem, &off, NL * F);
    p->fc2_w = take(mem, &off, NL * D * F);
    p->fc2_b = take(mem, &off, NL * D);
    p->ffn_ln_w = take(mem, &off, NL * D);
    p->ffn_ln_b = take(mem, &off, NL * D);
    p->dec_ln_w = take(mem, &off, D);
    p->dec_ln_b = take(mem, &off, D);
    p->class_w = take(mem, &off, K1 * D);
    p->class_b = take(mem, &off, K1);
    p->me1_w = take(mem, &off, D * D);
    p->me1_b = take(mem, &off, D);
    p->me2_w = take(mem, &off, D * D);
    p->me2_b = take(mem, &off, D);
    p->me3_w = take(mem, &off, MD * D);
    p->me3_b = take(mem, &off, MD);
    return off;
}

size_t m2f_num_params(const M2FConfig* cfg) {
    M2FParams p;
    return m2f_layout_params(&p, NULL, cfg);
}

void m2f_point_params(M2FParams* p, float* mem, const M2FConfig* cfg) {
    m2f_layout_params(p, mem, cfg);
}

void m2f_init_params(float* mem, const M2FConfig* c, Rng* rng) {
    m2f_config_check(c);
    M2FParams p;
    m2f_point_params(&p, mem, c);
    if (c->pixel_decoder == PIXEL_DECODER_MSDEFORM) msdeform_init_params(mem, c, rng);
    else pixel_decoder_init_params(mem, c, rng);
    size_t D = c->hidden_dim, Q = c->num_queries, F = c->ffn_dim, NL = c->dec_layers;
    size_t K1 = c->num_classes + 1, MD = c->mask_dim;
    rng_fill_normal(rng, p.query_feat, Q * D, 0.0f, 1.0f);
    rng_fill_normal(rng, p.query_embed, Q * D, 0.0f, 1.0f);
    rng_fill_normal(rng, p.level_embed, 3 * D, 0.0f, 1.0f);
    // as the original decoder layers: xavier_uniform per matrix, bound sqrt(6 / (fan_in + fan_out));
    // in_proj is one (3D, D) matrix; attention biases 0
    float in_bound = sqrtf(6.0f / (float)(D + 3 * D));
    float dd_bound = sqrtf(6.0f / (float)(D + D));
    float ff_bound = sqrtf(6.0f / (float)(D + F));
    fill_uniform_host(rng, p.ca_in_w, NL * 3 * D * D, in_bound);
    fill_uniform_host(rng, p.ca_out_w, NL * D * D, dd_bound);
    fill_uniform_host(rng, p.sa_in_w, NL * 3 * D * D, in_bound);
    fill_uniform_host(rng, p.sa_out_w, NL * D * D, dd_bound);
    fill_uniform_host(rng, p.fc1_w, NL * F * D, ff_bound);
    fill_uniform_host(rng, p.fc2_w, NL * D * F, ff_bound);
    fill_const_host(p.ca_in_b, NL * 3 * D, 0.0f);
    fill_const_host(p.ca_out_b, NL * D, 0.0f);
    fill_const_host(p.sa_in_b, NL * 3 * D, 0.0f);
    fill_const_host(p.sa_out_b, NL * D, 0.0f);
    // FFN biases keep nn.Linear's default: uniform +-1/sqrt(fan_in)
    fill_uniform_host(rng, p.fc1_b, NL * F, 1.0f / sqrtf((float)D));
    fill_uniform_host(rng, p.fc2_b, NL * D, 1.0f / sqrtf((float)F));
    fill_const_host(p.ca_ln_w, NL * D, 1.0f); fill_const_host(p.ca_ln_b, NL * D, 0.0f);
    fill_const_host(p.sa_ln_w, NL * D, 1.0f); fill_const_host(p.sa_ln_b, NL * D, 0.0f);
    fill_const_host(p.ffn_ln_w, NL * D, 1.0f); fill_const_host(p.ffn_ln_b, NL * D, 0.0f);
    fill_const_host(p.dec_ln_w, D, 1.0f); fill_const_host(p.dec_ln_b, D, 0.0f);
    // PyTorch nn.Linear default: uniform +-1/sqrt(fan_in) for weight and bias
    float lin_bound = 1.0f / sqrtf((float)D);
    fill_uniform_host(rng, p.class_w, K1 * D, lin_bound);
    fill_uniform_host(rng, p.class_b, K1, lin_bound);
    fill_uniform_host(rng, p.me1_w, D * D, lin_bound);
    fill_uniform_host(rng, p.me1_b, D, lin_bound);
    fill_uniform_host(rng, p.me2_w, D * D, lin_bound);
    fill_uniform_host(rng, p.me2_b, D, lin_bound);
    fill_uniform_host(rng, p.me3_w, MD * D, lin_bound);
    fill_uniform_host(rng, p.me3_b, MD, lin_bound);
}

// the sizes an activation or gradient layout records: batch, 1/4 map, the levels and their token
// counts T[m] (memory m = level 3 - m); returns the largest T
static size_t m2f_set_sizes(M2FActs* a, int B, int H4, int W4, int last_only) {
    a->max_B = B; a->H4 = H4; a->W4 = W4;
    a->last_only = last_only;
    m2f_level_sizes(H4, W4, a->Hs, a->Ws);
    size_t maxT = 0;
    for (int m = 0; m < 3; m++) {
        a->T[m] = a->Hs[3 - m] * a->Ws[3 - m];
        if ((size_t)a->T[m] > maxT) maxT = a->T[m];
    }
    return maxT;
}

static size_t m2f_layout_acts(M2FActs* a, float* mem, const M2FConfig* c, int B, int H4, int W4) {
    size_t off = 0;
    size_t D = c->hidden_dim, Q = c->num_queries, F = c->ffn_dim, NH = c->num_heads;
    size_t K1 = c->num_classes + 1, MD = c->mask_dim, HW = (size_t)H4 * W4;
    int NL = c->dec_layers, L = NL + 1;
    size_t maxT = m2f_set_sizes(a, B, H4, W4, 0);
    size_t BQ = (size_t)B * Q;
    a->class_logits = take_act(mem, &off, L * BQ * K1);
    a->mask_logits = take_act(mem, &off, L * BQ * HW);
    off = (off + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
    size_t pd_n = pixel_decoder_layout_acts(&a->pd, mem ? mem + off : NULL, c, B, H4, W4);
    off += pd_n;
    for (int m = 0; m < 3; m++) {
        a->pos[m] = take_act(mem, &off, a->T[m] * D);
        a->level_rows[m] = take_act(mem, &off, a->T[m] * D);
        a->src[m] = take_act(mem, &off, B * a->T[m] * D);
        a->src_pos[m] = take_act(mem, &off, B * a->T[m] * D);
    }
    a->qpos = take_act(mem, &off, BQ * D);
    a->tgt0 = take_act(mem, &off, BQ * D);
    for (int i = 0; i < M2F_MAX_LAYERS; i++) {
        if (i >= NL) {   // unused layers point nowhere
            a->attn_mask[i] = a->ca_qin[i] = a->ca_q[i] = a->ca_k[i] = a->ca_v[i] = NULL;
            a->ca_lse[i] = a->ca_o[i] = a->ca_res[i] = a->ca_ln[i] = a->ca_mean[i] = NULL;
            a->ca_rstd[i] = a->sa_qin[i] = a->sa_q[i] = a->sa_k[i] = a->sa_v[i] = NULL;
            a->sa_lse[i] = a->sa_o[i] = a->sa_res[i] = a->sa_ln[i] = a->sa_mean[i] = NULL;
            a->sa_rstd[i] = a->fc1[i] = a->fc1_relu[i] = a->ffn_res[i] = a->ffn_ln[i] = NULL;
            a->ffn_mean[i] = a->ffn_rstd[i] = NULL;
            continue;
        }
        size_t T = a->T[i % 3];
        a->attn_mask[i] = take_act(mem, &off, BQ * T);
        a->ca_qin[i] = take_act(mem, &off, BQ * D);
        a->ca_q[i] = take_act(mem, &off, BQ * D);
        a->ca_k[i] = take_act(mem, &off, B * T * D);
        a->ca_v[i] = take_act(mem, &off, B * T * D);
        a->ca_lse[i] = take_act(mem, &off, BQ * NH);   // no (B, NH, Q, T) attention map
        a->ca_o[i] = take_act(mem, &off, BQ * D);
        a->ca_res[i] = take_act(mem, &off, BQ * D);
        a->ca_ln[i] = take_act(mem, &off, BQ * D);
        a->ca_mean[i] = take_act(mem, &off, BQ);
        a->ca_rstd[i] = take_act(mem, &off, BQ);
        a->sa_qin[i] = take_act(mem, &off, BQ * D);
        a->sa_q[i] = take_act(mem, &off, BQ * D);
        a->sa_k[i] = take_act(mem, &off, BQ * D);
        a->sa_v[i] = take_act(mem, &off, BQ * D);
        a->sa_lse[i] = take_act(mem, &off, BQ * NH);
        a->sa_o[i] = take_act(mem, &off, BQ * D);
        a->sa_res[i] = take_act(mem, &off, BQ * D);
        a->sa_ln[i] = take_act(mem, &off, BQ * D);
        a->sa_mean[i] = take_act(mem, &off, BQ);
        a->sa_rstd[i] = take_act(mem, &off, BQ);
        a->fc1[i] = take_act(mem, &off, BQ * F);
        a->fc1_relu[i] = take_act(mem, &off, BQ * F);
        a->ffn_res[i] = take_act(mem, &off, BQ * D);
        a->ffn_ln[i] = take_act(mem, &off, BQ * D);
        a->ffn_mean[i] = take_act(mem, &off, BQ);
        a->ffn_rstd[i] = take_act(mem, &off, BQ);
    }
    for (int j = 0; j < M2F_MAX_LAYERS + 1; j++) {
        if (j >= L) {
            a->dn[j] = a->dn_mean[j] = a->dn_rstd[j] = a->me1[j] = a->me1_relu[j] = NULL;
            a->me2[j] = a->me2_relu[j] = a->me3[j] = NULL;
            continue;
        }
        a->dn[j] = take_act(mem, &off, BQ * D);
        a->dn_mean[j] = take_act(mem, &off, BQ);
        a->dn_rstd[j] = take_act(mem, &off, BQ);
        a->me1[j] = take_act(mem, &off, BQ * D);
        a->me1_relu[j] = take_act(mem, &off, BQ * D);
        a->me2[j] = take_act(mem, &off, BQ * D);
        a->me2_relu[j] = take_act(mem, &off, BQ * D);
        a->me3[j] = take_act(mem, &off, BQ * MD);
    }
    a->mask_resized = take_act(mem, &off, BQ * maxT);
    return (off + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
}

size_t m2f_num_acts(const M2FConfig* cfg, int max_B, int H4, int W4) {
    M2FActs a;
    return m2f_layout_acts(&a, NULL, cfg, max_B, H4, W4);
}

void m2f_point_acts(M2FActs* a, float* mem, const M2FConfig* cfg, int max_B, int H4, int W4) {
    m2f_layout_acts(a, mem, cfg, max_B, H4, W4);
}

// the decoder's scratch gradients, dead once prediction 0's backward is done: one span for every
// layer (m2f_backward zeroes it at the start of each layer), two buffers in turn for the layer
// outputs (layer i's collects from layer i+1 and prediction i+1 and is read by layer i, which
// writes layer i-1's), one set of prediction-MLP buffers (each prediction's backward zeroes it)
static size_t m2f_layout_decoder_grads(M2FActs* da, float* mem, const M2FConfig* c, int B, size_t maxT) {
    size_t off = 0;
    size_t D = c->hidden_dim, Q = c->num_queries, F = c->ffn_dim, MD = c->mask_dim, BQ = (size_t)B * Q;
    int NL = c->dec_layers, L = NL + 1;
    float *ca_qin = take_act(mem, &off, BQ * D), *ca_q = take_act(mem, &off, BQ * D);
    float *ca_k = take_act(mem, &off, B * maxT * D), *ca_v = take_act(mem, &off, B * maxT * D);
    float *ca_o = take_act(mem, &off, BQ * D), *ca_res = take_act(mem, &off, BQ * D);
    float *ca_ln = take_act(mem, &off, BQ * D);
    float *sa_qin = take_act(mem, &off, BQ * D), *sa_q = take_act(mem, &off, BQ * D);
    float *sa_k = take_act(mem, &off, BQ * D), *sa_v = take_act(mem, &off, BQ * D);
    float *sa_o = take_act(mem, &off, BQ * D), *sa_res = take_act(mem, &off, BQ * D);
    float *sa_ln = take_act(mem, &off, BQ * D);
    float *fc1 = take_act(mem, &off, BQ * F), *fc1_relu = take_act(mem, &off, BQ * F);
    float* ffn_res = take_act(mem, &off, BQ * D);
    float* chain[2];
    chain[0] = take_act(mem, &off, BQ * D);
    chain[1] = take_act(mem, &off, BQ * D);
    for (int i = 0; i < NL; i++) {
        da->ca_qin[i] = ca_qin; da->ca_q[i] = ca_q; da->ca_k[i] = ca_k; da->ca_v[i] = ca_v;
        da->ca_o[i] = ca_o; da->ca_res[i] = ca_res; da->ca_ln[i] = ca_ln;
        da->sa_qin[i] = sa_qin; da->sa_q[i] = sa_q; da->sa_k[i] = sa_k; da->sa_v[i] = sa_v;
        da->sa_o[i] = sa_o; da->sa_res[i] = sa_res; da->sa_ln[i] = sa_ln;
        da->fc1[i] = fc1; da->fc1_relu[i] = fc1_relu; da->ffn_res[i] = ffn_res;
        da->ffn_ln[i] = chain[i % 2];
    }
    float *dn = take_act(mem, &off, BQ * D), *me1 = take_act(mem, &off, BQ * D);
    float *me1_relu = take_act(mem, &off, BQ * D), *me2 = take_act(mem, &off, BQ * D);
    float *me2_relu = take_act(mem, &off, BQ * D), *me3 = take_act(mem, &off, BQ * MD);
    for (int j = 0; j < L; j++) {
        da->dn[j] = dn; da->me1[j] = me1; da->me1_relu[j] = me1_relu;
        da->me2[j] = me2; da->me2_relu[j] = me2_relu; da->me3[j] = me3;
    }
    return (off + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
}

// the gradient layout (ttt.h, m2f_point_grad_acts); buffers of tensors without a gradient NULL
static size_t m2f_layout_grads(M2FActs* da, float* mem, const M2FConfig* c, int B, int H4, int W4,
                               int last_only) {
    memset(da, 0, sizeof(*da));
    size_t off = 0;
    size_t D = c->hidden_dim, Q = c->num_queries;
    size_t K1 = c->num_classes + 1, HW = (size_t)H4 * W4;
    size_t P = last_only ? 1 : c->dec_layers + 1;   // predictions with upstream gradients
    size_t maxT = m2f_set_sizes(da, B, H4, W4, last_only);
    size_t BQ = (size_t)B * Q;
    da->class_logits = take_act(mem, &off, P * BQ * K1);
    da->mask_logits = take_act(mem, &off, P * BQ * HW);
    off = (off + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
    off += pixel_decoder_layout_grads(&da->pd, mem ? mem + off : NULL, c, B, H4, W4);
    // summed over all layers: the query broadcasts and the memory levels. src = out[lv] +
    // level_embed, and out[lv]'s gradient is zero until src's is added to it (m2f_backward):
    // src's gradient can be collected in out[lv]'s buffer from the start
    for (int m = 0; m < 3; m++) {
        da->src[m] = da->pd.out[3 - m];
        da->src_pos[m] = take_act(mem, &off, B * da->T[m] * D);
    }
    da->qpos = take_act(mem, &off, BQ * D);
    da->tgt0 = take_act(mem, &off, BQ * D);
    // the decoder's scratch is dead before the pixel decoder's backward starts: it goes inside
    // the pixel decoder's second 1/4-resolution buffer (out[0]; pixel_decoder_layout_grads,
    // msdeform_layout_grads) when it fits there
    size_t scratch = m2f_layout_decoder_grads(da, NULL, c, B, maxT);
    size_t n_out0 = (size_t)B * HW * (c->mask_dim > c->conv_dim ? c->mask_dim : c->conv_dim);
    if (scratch <= n_out0) {
        m2f_layout_decoder_grads(da, da->pd.out[0], c, B, maxT);
    } else {
        m2f_layout_decoder_grads(da, mem ? mem + off : NULL, c, B, maxT);
        off += scratch;
    }
    return (off + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
}

size_t m2f_num_grad_acts(const M2FConfig* cfg, int max_B, int H4, int W4, int last_only) {
    M2FActs da;
    return m2f_layout_grads(&da, NULL, cfg, max_B, H4, W4, last_only);
}

void m2f_point_grad_acts(M2FActs* da, float* mem, const M2FConfig* cfg, int max_B, int H4, int W4,
                         int last_only) {
    m2f_layout_grads(da, mem, cfg, max_B, H4, W4, last_only);
}

// ----------------------------------------------------------------------------
// the head h: forward

// prediction j from tgt (B, Q, D): class logits, mask logits and (when j < dec_layers and no
// teacher masks are given) the attention mask of decoder layer j.
static void m2f_predict(const M2FConfig* c, const M2FParams* p, M2FActs* a, const float* tgt,
                        int j, int B, int make_mask) {
    int D = c->hidden_dim, Q = c->num_queries, K1 = c->num_classes + 1, MD = c->mask_dim;
    int BQ = B * Q, HW = a->H4 * a->W4;
    float* class_j = a->class_logits + (size_t)j * BQ * K1;
    float* mask_j = a->mask_logits + (size_t)j * BQ * HW;
    layernorm_forward(a->dn[j], a->dn_mean[j], a->dn_rstd[j], tgt, p->dec_ln_w, p->dec_ln_b, BQ, D);
    linear_forward(class_j, a->dn[j], p->class_w, p->class_b, BQ, D, K1);
    linear_forward(a->me1[j], a->dn[j], p->me1_w, p->me1_b, BQ, D, D);
    relu_forward(a->me1_relu[j], a->me1[j], (size_t)BQ * D);
    linear_forward(a->me2[j], a->me1_relu[j], p->me2_w, p->me2_b, BQ, D, D);
    relu_forward(a->me2_relu[j], a->me2[j], (size_t)BQ * D);
    linear_forward(a->me3[j], a->me2_relu[j], p->me3_w, p->me3_b, BQ, D, MD);
    // mask logits: per image, (Q, MD) @ mask_features (HW, MD)^T
    for (int b = 0; b < B; b++) {
        linear_forward(mask_j + (size_t)b * Q * HW, a->me3[j] + (size_t)b * Q * MD,
                       a->pd.mask_features + (size_t)b * HW * MD, NULL, Q, MD, HW);
    }
    if (make_mask) {
        int m = j % 3, lv = 3 - m;
        // the (B*Q) maps are resized as one batch of single-channel images
        upsample_bilinear_forward(a->mask_resized, mask_j, BQ, a->H4, a->W4, 1, a->Hs[lv], a->Ws[lv]);
        attn_mask_from_logits(a->attn_mask[j], a->mask_resized, B, Q, a->T[m]);
    }
}

// repeat the row vector v (D) over all T rows of rows (T, D) by doubling copies
static void repeat_row(float* rows, const float* v, int T, int D) {
    ttt_copy(rows, v, (size_t)D * sizeof(float));
    for (int done = 1; done < T; done *= 2) {
        int n = (done <= T - done) ? done : T - done;
        ttt_copy(rows + (size_t)done * D, rows, (size_t)n * D * sizeof(float));
    }
}

void m2f_forward(const M2FConfig* c, const M2FParams* p, M2FActs* a,
                 const float* const feats[4], int B, const float* teacher_masks) {
    if (B < 1 || B > a->max_B) ttt_die("m2f forward: batch %d outside [1, %d]", B, a->max_B);
    if (c->pixel_decoder == PIXEL_DECODER_MSDEFORM) msdeform_forward(c, &p->msd, &a->pd, feats, B);
    else pixel_decoder_forward(c, &p->pd, &a->pd, feats, B);
    m2f_decoder_forward(c, p, a, B, teacher_masks);
}

void m2f_decoder_forward(const M2FConfig* c, const M2FParams* p, M2FActs* a, int B,
                         const float* teacher_masks) {
    if (B < 1 || B > a->max_B) ttt_die("m2f decoder forward: batch %d outside [1, %d]", B, a->max_B);
    int D = c->hidden_dim, Q = c->num_queries, F = c->ffn_dim, NH = c->num_heads, HS = D / NH;
    int NL = c->dec_layers, BQ = B * Q;
    size_t nQD = (size_t)BQ * D;
    // memory levels m = 0, 1, 2 are FPN outputs 3, 2, 1 (1/32, 1/16, 1/8)
    for (int m = 0; m < 3; m++) {
        int lv = 3 - m, T = a->T[m];
        sine_position_encoding(a->pos[m], a->Hs[lv], a->Ws[lv], D);
        repeat_row(a->level_rows[m], p->level_embed + (size_t)m * D, T, D);
        for (int b = 0; b < B; b++) {
            size_t o = (size_t)b * T * D;
            add_forward(a->src[m] + o, a->pd.out[lv] + o, a->level_rows[m], (size_t)T * D);
            add_forward(a->src_pos[m] + o, a->src[m] + o, a->pos[m], (size_t)T * D);
        }
    }
    for (int b = 0; b < B; b++) {
        ttt_copy(a->qpos + (size_t)b * Q * D, p->query_embed, (size_t)Q * D * sizeof(float));
        ttt_copy(a->tgt0 + (size_t)b * Q * D, p->query_feat, (size_t)Q * D * sizeof(float));
    }
    m2f_predict(c, p, a, a->tgt0, 0, B, teacher_masks == NULL);
    size_t teacher_off = 0;
    for (int i = 0; i < NL; i++) {
        int m = i % 3, T = a->T[m];
        size_t DD = (size_t)D * D;
        // layer i's weights (llm.c's l_ locals): attention in-projections (3D, D) hold q, k, v
        const float* l_ca_in_w = p->ca_in_w + (size_t)i * 3 * DD;
        const float* l_ca_in_b = p->ca_in_b + (size_t)i * 3 * D;
        const float* l_ca_out_w = p->ca_out_w + i * DD;
        const float* l_ca_out_b = p->ca_out_b + (size_t)i * D;
        const float* l_ca_ln_w = p->ca_ln_w + (size_t)i * D;
        const float* l_ca_ln_b = p->ca_ln_b + (size_t)i * D;
        const float* l_sa_in_w = p->sa_in_w + (size_t)i * 3 * DD;
        const float* l_sa_in_b = p->sa_in_b + (size_t)i * 3 * D;
        const float* l_sa_out_w = p->sa_out_w + i * DD;
        const float* l_sa_out_b = p->sa_out_b + (size_t)i * D;
        const float* l_sa_ln_w = p->sa_ln_w + (size_t)i * D;
        const float* l_sa_ln_b = p->sa_ln_b + (size_t)i * D;
        const float* l_fc1_w = p->fc1_w + (size_t)i * F * D;
        const float* l_fc1_b = p->fc1_b + (size_t)i * F;
        const float* l_fc2_w = p->fc2_w + (size_t)i * D * F;
        const float* l_fc2_b = p->fc2_b + (size_t)i * D;
        const float* l_ffn_ln_w = p->ffn_ln_w + (size_t)i * D;
        const float* l_ffn_ln_b = p->ffn_ln_b + (size_t)i * D;
        // and its activations, (B, Q, D) unless marked
        float* l_attn_mask = a->attn_mask[i];   // (B, Q, T)
        float *l_ca_qin = a->ca_qin[i], *l_ca_q = a->ca_q[i], *l_ca_o = a->ca_o[i], *l_ca_res = a->ca_res[i];
        float *l_ca_k = a->ca_k[i], *l_ca_v = a->ca_v[i];   // (B, T, D)
        float* l_ca_lse = a->ca_lse[i];         // (B, NH, Q)
        float *l_ca_ln = a->ca_ln[i], *l_ca_mean = a->ca_mean[i], *l_ca_rstd = a->ca_rstd[i];
        float *l_sa_qin = a->sa_qin[i], *l_sa_q = a->sa_q[i], *l_sa_k = a->sa_k[i], *l_sa_v = a->sa_v[i];
        float *l_sa_o = a->sa_o[i], *l_sa_res = a->sa_res[i];
        float* l_sa_lse = a->sa_lse[i];         // (B, NH, Q)
        float *l_sa_ln = a->sa_ln[i], *l_sa_mean = a->sa_mean[i], *l_sa_rstd = a->sa_rstd[i];
        float *l_fc1 = a->fc1[i], *l_fc1_relu = a->fc1_relu[i];   // (B, Q, F)
        float *l_ffn_res = a->ffn_res[i], *l_ffn_ln = a->ffn_ln[i], *l_ffn_mean = a->ffn_mean[i], *l_ffn_rstd = a->ffn_rstd[i];
        if (teacher_masks) {
            ttt_copy(l_attn_mask, teacher_masks + teacher_off, (size_t)BQ * T * sizeof(float));
            teacher_off += (size_t)BQ * T;
        }
        const float* tgt = (i == 0) ? a->tgt0 : a->ffn_ln[i - 1];
        // masked cross-attention on memory level m
        add_forward(l_ca_qin, tgt, a->qpos, nQD);
        linear_forward(l_ca_q, l_ca_qin, l_ca_in_w, l_ca_in_b, BQ, D, D);
        linear_forward(l_ca_k, a->src_pos[m], l_ca_in_w + DD, l_ca_in_b + D, B * T, D, D);
        linear_forward(l_ca_v, a->src[m], l_ca_in_w + 2 * DD, l_ca_in_b + 2 * D, B * T, D, D);
        flash_attention_forward(l_ca_o, l_ca_lse, l_ca_q, l_ca_k, l_ca_v, l_attn_mask, B, B, Q, T, NH, HS, D, D);
        linear_forward(l_ca_res, l_ca_o, l_ca_out_w, l_ca_out_b, BQ, D, D);
        add_inplace(l_ca_res, tgt, nQD);
        layernorm_forward(l_ca_ln, l_ca_mean, l_ca_rstd, l_ca_res, l_ca_ln_w, l_ca_ln_b, BQ, D);
        // self-attention over the queries
        add_forward(l_sa_qin, l_ca_ln, a->qpos, nQD);
        linear_forward(l_sa_q, l_sa_qin, l_sa_in_w, l_sa_in_b, BQ, D, D);
        linear_forward(l_sa_k, l_sa_qin, l_sa_in_w + DD, l_sa_in_b + D, BQ, D, D);
        linear_forward(l_sa_v, l_ca_ln, l_sa_in_w + 2 * DD, l_sa_in_b + 2 * D, BQ, D, D);
        flash_attention_forward(l_sa_o, l_sa_lse, l_sa_q, l_sa_k, l_sa_v, NULL, 1, B, Q, Q, NH, HS, D, D);
        linear_forward(l_sa_res, l_sa_o, l_sa_out_w, l_sa_out_b, BQ, D, D);
        add_inplace(l_sa_res, l_ca_ln, nQD);
        layernorm_forward(l_sa_ln, l_sa_mean, l_sa_rstd, l_sa_res, l_sa_ln_w, l_sa_ln_b, BQ, D);
        // FFN
        linear_forward(l_fc1, l_sa_ln, l_fc1_w, l_fc1_b, BQ, D, F);
        relu_forward(l_fc1_relu, l_fc1, (size_t)BQ * F);
        linear_forward(l_ffn_res, l_fc1_relu, l_fc2_w, l_fc2_b, BQ, F, D);
        add_inplace(l_ffn_res, l_sa_ln, nQD);
        layernorm_forward(l_ffn_ln, l_ffn_mean, l_ffn_rstd, l_ffn_res, l_ffn_ln_w, l_ffn_ln_b, BQ, D);
        m2f_predict(c, p, a, l_ffn_ln, i + 1, B, teacher_masks == NULL && i + 1 < NL);
    }
}

// ----------------------------------------------------------------------------
// the head h: backward

// backward of m2f_predict: upstream da->class_logits / da->mask_logits of prediction j;
// accumulates into dtgt, the head parameters and da->pd.mask_features. With da->last_only
// the predictions before the last have no upstream gradient: nothing to do.
static void m2f_predict_backward(const M2FConfig* c, const M2FParams* p, M2FParams* g,
                                 const M2FActs* a, M2FActs* da, const float* tgt, float* dtgt,
                                 int j, int B) {
    int D = c->hidden_dim, Q = c->num_queries, K1 = c->num_classes + 1, MD = c->mask_dim;
    int BQ = B * Q, HW = a->H4 * a->W4;
    if (da->last_only && j < c->dec_layers) return;
    int jg = da->last_only ? 0 : j;   // prediction j's place in da's logits
    const float* dclass_j = da->class_logits + (size_t)jg * BQ * K1;
    const float* dmask_j = da->mask_logits + (size_t)jg * BQ * HW;
    // the MLP's gradient buffers may be shared by all predictions (m2f_point_grad_acts)
    size_t nQD = (size_t)BQ * D * sizeof(float);
    ttt_zero(da->dn[j], nQD);
    ttt_zero(da->me1[j], nQD);
    ttt_zero(da->me1_relu[j], nQD);
    ttt_zero(da->me2[j], nQD);
    ttt_zero(da->me2_relu[j], nQD);
    ttt_zero(da->me3[j], (size_t)BQ * MD * sizeof(float));
    for (int b = 0; b < B; b++) {
        linear_backward(da->me3[j] + (size_t)b * Q * MD, da->pd.mask_features + (size_t)b * HW * MD,
                        NULL, dmask_j + (size_t)b * Q * HW, a->me3[j] + (size_t)b * Q * MD,
                        a->pd.mask_features + (size_t)b * HW * MD, Q, MD, HW);
    }
    linear_backward(da->me2_relu[j], g->me3_w, g->me3_b, da->me3[j], a->me2_relu[j], p->me3_w, BQ, D, MD);
    relu_backward(da->me2[j], a->me2_relu[j], da->me2_relu[j], (size_t)BQ * D);
    linear_backward(da->me1_relu[j], g->me2_w, g->me2_b, da->me2[j], a->me1_relu[j], p->me2_w, BQ, D, D);
    relu_backward(da->me1[j], a->me1_relu[j], da->me1_relu[j], (size_t)BQ * D);
    linear_backward(da->dn[j], g->me1_w, g->me1_b, da->me1[j], a->dn[j], p->me1_w, BQ, D, D);
    linear_backward(da->dn[j], g->class_w, g->class_b, dclass_j, a->dn[j], p->class_w, BQ, D, K1);
    layernorm_backward(dtgt, g->dec_ln_w, g->dec_ln_b, da->dn[j], tgt, p->dec_ln_w, a->dn_mean[j],
                       a->dn_rstd[j], BQ, D);
}

void m2f_backward(const M2FConfig* c, const M2FParams* p, M2FParams* g, const M2FActs* a,
                  M2FActs* da, const float* const feats[4], float* dfeats[4], int B) {
    int D = c->hidden_dim, Q = c->num_queries, F = c->ffn_dim, NH = c->num_heads, HS = D / NH;
    int NL = c->dec_layers, BQ = B * Q;
    size_t nQD = (size_t)BQ * D, DD = (size_t)D * D;
    if (B < 1 || B > da->max_B) ttt_die("m2f backward: batch %d outside [1, %d]", B, da->max_B);
    // da->class_logits and da->mask_logits hold the upstream gradients; everything else is
    // scratch, zeroed right before its first use: the gradients summed over all layers now,
    // each layer's own at the start of that layer (da may share them between layers:
    // m2f_point_grad_acts), the pixel decoder's in its backward
    ttt_zero(da->pd.mask_features, (size_t)B * a->H4 * a->W4 * c->mask_dim * sizeof(float));
    for (int l = 1; l < 4; l++) ttt_zero(da->pd.out[l], (size_t)B * a->Hs[l] * a->Ws[l] * c->conv_dim * sizeof(float));
    for (int m = 0; m < 3; m++) {
        ttt_zero(da->src[m], (size_t)B * a->T[m] * D * sizeof(float));
        ttt_zero(da->src_pos[m], (size_t)B * a->T[m] * D * sizeof(float));
    }
    ttt_zero(da->qpos, nQD * sizeof(float));
    ttt_zero(da->tgt0, nQD * sizeof(float));
    ttt_zero(da->ffn_ln[NL - 1], nQD * sizeof(float));
    for (int i = NL - 1; i >= 0; i--) {
        int m = i % 3, T = a->T[m];
        // layer i's weights and their gradients (llm.c's l_ / dl_ locals)
        const float* l_ca_in_w = p->ca_in_w + (size_t)i * 3 * DD;
        const float* l_ca_out_w = p->ca_out_w + i * DD;
        const float* l_ca_ln_w = p->ca_ln_w + (size_t)i * D;
        const float* l_sa_in_w = p->sa_in_w + (size_t)i * 3 * DD;
        const float* l_sa_out_w = p->sa_out_w + i * DD;
        const float* l_sa_ln_w = p->sa_ln_w + (size_t)i * D;
        const float* l_fc1_w = p->fc1_w + (size_t)i * F * D;
        const float* l_fc2_w = p->fc2_w + (size_t)i * D * F;
        const float* l_ffn_ln_w = p->ffn_ln_w + (size_t)i * D;
        float *dl_ca_in_w = g->ca_in_w + (size_t)i * 3 * DD, *dl_ca_in_b = g->ca_in_b + (size_t)i * 3 * D;
        float *dl_ca_out_w = g->ca_out_w + i * DD, *dl_ca_out_b = g->ca_out_b + (size_t)i * D;
        float *dl_ca_ln_w = g->ca_ln_w + (size_t)i * D, *dl_ca_ln_b = g->ca_ln_b + (size_t)i * D;
        float *dl_sa_in_w = g->sa_in_w + (size_t)i * 3 * DD, *dl_sa_in_b = g->sa_in_b + (size_t)i * 3 * D;
        float *dl_sa_out_w = g->sa_out_w + i * DD, *dl_sa_out_b = g->sa_out_b + (size_t)i * D;
        float *dl_sa_ln_w = g->sa_ln_w + (size_t)i * D, *dl_sa_ln_b = g->sa_ln_b + (size_t)i * D;
        float *dl_fc1_w = g->fc1_w + (size_t)i * F * D, *dl_fc1_b = g->fc1_b + (size_t)i * F;
        float *dl_fc2_w = g->fc2_w + (size_t)i * D * F, *dl_fc2_b = g->fc2_b + (size_t)i * D;
        float *dl_ffn_ln_w = g->ffn_ln_w + (size_t)i * D, *dl_ffn_ln_b = g->ffn_ln_b + (size_t)i * D;
        // its activations and their gradients
        const float *l_ca_qin = a->ca_qin[i], *l_ca_q = a->ca_q[i], *l_ca_k = a->ca_k[i], *l_ca_v = a->ca_v[i];
        const float *l_ca_o = a->ca_o[i], *l_ca_lse = a->ca_lse[i], *l_ca_res = a->ca_res[i], *l_ca_ln = a->ca_ln[i];
        const float *l_sa_qin = a->sa_qin[i], *l_sa_q = a->sa_q[i], *l_sa_k = a->sa_k[i], *l_sa_v = a->sa_v[i];
        const float *l_sa_o = a->sa_o[i], *l_sa_lse = a->sa_lse[i], *l_sa_res = a->sa_res[i], *l_sa_ln = a->sa_ln[i];
        const float *l_fc1_relu = a->fc1_relu[i], *l_ffn_res = a->ffn_res[i], *l_ffn_ln = a->ffn_ln[i];
        const float *l_ca_mean = a->ca_mean[i], *l_ca_rstd = a->ca_rstd[i], *l_sa_mean = a->sa_mean[i];
        const float *l_sa_rstd = a->sa_rstd[i], *l_ffn_mean = a->ffn_mean[i], *l_ffn_rstd = a->ffn_rstd[i];
        float *dl_ca_qin = da->ca_qin[i], *dl_ca_q = da->ca_q[i], *dl_ca_k = da->ca_k[i], *dl_ca_v = da->ca_v[i];
        float *dl_ca_o = da->ca_o[i], *dl_ca_res = da->ca_res[i], *dl_ca_ln = da->ca_ln[i];
        float *dl_sa_qin = da->sa_qin[i], *dl_sa_q = da->sa_q[i], *dl_sa_k = da->sa_k[i], *dl_sa_v = da->sa_v[i];
        float *dl_sa_o = da->sa_o[i], *dl_sa_res = da->sa_res[i], *dl_sa_ln = da->sa_ln[i];
        float *dl_fc1 = da->fc1[i], *dl_fc1_relu = da->fc1_relu[i], *dl_ffn_res = da->ffn_res[i], *dl_ffn_ln = da->ffn_ln[i];
        float* dtgt = (i == 0) ? da->tgt0 : da->ffn_ln[i - 1];
        float* zero_now[] = {dl_ca_qin, dl_ca_q, dl_ca_o, dl_ca_res, dl_ca_ln, dl_sa_qin, dl_sa_q, dl_sa_k,
                             dl_sa_v, dl_sa_o, dl_sa_res, dl_sa_ln, dl_ffn_res};
        for (size_t z = 0; z < sizeof(zero_now) / sizeof(zero_now[0]); z++) ttt_zero(zero_now[z], nQD * sizeof(float));
        ttt_zero(dl_ca_k, (size_t)B * T * D * sizeof(float));
        ttt_zero(dl_ca_v, (size_t)B * T * D * sizeof(float));
        ttt_zero(dl_fc1, (size_t)BQ * F * sizeof(float));
        ttt_zero(dl_fc1_relu, (size_t)BQ * F * sizeof(float));
        if (i > 0) ttt_zero(dtgt, nQD * sizeof(float));   // may hold layer i+1's (consumed) output gradient
        // prediction i + 1 reads the output of layer i
        m2f_predict_backward(c, p, g, a, da, l_ffn_ln, dl_ffn_ln, i + 1, B);
        // FFN
        layernorm_backward(dl_ffn_res, dl_ffn_ln_w, dl_ffn_ln_b, dl_ffn_ln, l_ffn_res, l_ffn_ln_w, l_ffn_mean,
                           l_ffn_rstd, BQ, D);
        add_inplace(dl_sa_ln, dl_ffn_res, nQD);
        linear_backward(dl_fc1_relu, dl_fc2_w, dl_fc2_b, dl_ffn_res, l_fc1_relu, l_fc2_w, BQ, F, D);
        relu_backward(dl_fc1, l_fc1_relu, dl_fc1_relu, (size_t)BQ * F);
        linear_backward(dl_sa_ln, dl_fc1_w, dl_fc1_b, dl_fc1, l_sa_ln, l_fc1_w, BQ, D, F);
        // self-attention
        layernorm_backward(dl_sa_res, dl_sa_ln_w, dl_sa_ln_b, dl_sa_ln, l_sa_res, l_sa_ln_w, l_sa_mean,
                           l_sa_rstd, BQ, D);
        add_inplace(dl_ca_ln, dl_sa_res, nQD);
        linear_backward(dl_sa_o, dl_sa_out_w, dl_sa_out_b, dl_sa_res, l_sa_o, l_sa_out_w, BQ, D, D);
        flash_attention_backward(dl_sa_q, dl_sa_k, dl_sa_v, dl_sa_o, l_sa_o, l_sa_lse, l_sa_q, l_sa_k, l_sa_v,
                                 NULL, 1, B, Q, Q, NH, HS, D, D);
        linear_backward(dl_sa_qin, dl_sa_in_w, dl_sa_in_b, dl_sa_q, l_sa_qin, l_sa_in_w, BQ, D, D);
        linear_backward(dl_sa_qin, dl_sa_in_w + DD, dl_sa_in_b + D, dl_sa_k, l_sa_qin, l_sa_in_w + DD, BQ, D, D);
        linear_backward(dl_ca_ln, dl_sa_in_w + 2 * DD, dl_sa_in_b + 2 * D, dl_sa_v, l_ca_ln, l_sa_in_w + 2 * DD,
                        BQ, D, D);
        add_inplace(dl_ca_ln, dl_sa_qin, nQD);
        add_inplace(da->qpos, dl_sa_qin, nQD);
        // masked cross-attention
        layernorm_backward(dl_ca_res, dl_ca_ln_w, dl_ca_ln_b, dl_ca_ln, l_ca_res, l_ca_ln_w, l_ca_mean,
                           l_ca_rstd, BQ, D);
        add_inplace(dtgt, dl_ca_res, nQD);
        linear_backward(dl_ca_o, dl_ca_out_w, dl_ca_out_b, dl_ca_res, l_ca_o, l_ca_out_w, BQ, D, D);
        flash_attention_backward(dl_ca_q, dl_ca_k, dl_ca_v, dl_ca_o, l_ca_o, l_ca_lse, l_ca_q, l_ca_k, l_ca_v,
                                 a->attn_mask[i], B, B, Q, T, NH, HS, D, D);
        linear_backward(dl_ca_qin, dl_ca_in_w, dl_ca_in_b, dl_ca_q, l_ca_qin, l_ca_in_w, BQ, D, D);
        linear_backward(da->src_pos[m], dl_ca_in_w + DD, dl_ca_in_b + D, dl_ca_k, a->src_pos[m], l_ca_in_w + DD,
                        B * T, D, D);
        linear_backward(da->src[m], dl_ca_in_w + 2 * DD, dl_ca_in_b + 2 * D, dl_ca_v, a->src[m], l_ca_in_w + 2 * DD,
                        B * T, D, D);
        add_inplace(dtgt, dl_ca_qin, nQD);
        add_inplace(da->qpos, dl_ca_qin, nQD);
    }
    m2f_predict_backward(c, p, g, a, da, a->tgt0, da->tgt0, 0, B);
    // the broadcasts over the batch sum back
    for (int b = 0; b < B; b++) {
        add_inplace(g->query_feat, da->tgt0 + (size_t)b * Q * D, (size_t)Q * D);
        add_inplace(g->query_embed, da->qpos + (size_t)b * Q * D, (size_t)Q * D);
    }
    for (int m = 0; m < 3; m++) {
        int lv = 3 - m, T = a->T[m];
        size_t n = (size_t)B * T * D;
        add_inplace(da->src[m], da->src_pos[m], n);          // src_pos = src + pos
        // level_embed[m] was added to every row: its gradient is the row sum (a bias gradient)
        linear_backward(NULL, NULL, g->level_embed + (size_t)m * D, da->src[m], a->src[m],
                        p->ca_out_w, B * T, D, D);
        // src = out[lv] + level_embed (m2f_point_grad_acts collects src's gradient in out[lv]'s)
        if (da->pd.out[lv] != da->src[m]) add_inplace(da->pd.out[lv], da->src[m], n);
    }
    if (c->pixel_decoder == PIXEL_DECODER_MSDEFORM) msdeform_backward(c, &p->msd, &g->msd, &a->pd, &da->pd, feats, dfeats, B);
    else pixel_decoder_backward(c, &p->pd, &g->pd, &a->pd, &da->pd, feats, dfeats, B);
}

// ----------------------------------------------------------------------------
// inference (host memory, one image)

// softmax over the K+1 logits of one query into probs (K+1), double sum (ttt.h)
void softmax_row_host(float* probs, const float* logits, int n) {
    float mx = logits[0];
    for (int k = 1; k < n; k++) if (logits[k] > mx) mx = logits[k];
    double z = 0.0;
    for (int k = 0; k < n; k++) { probs[k] = expf(logits[k] - mx); z += probs[k]; }
    for (int k = 0; k < n; k++) probs[k] = (float)(probs[k] / z);
}

size_t m2f_semantic_work_size(int Q, int K, int H4, int W4) {
    return (size_t)Q * (K + 1) + (size_t)H4 * W4 * K + K;
}

void m2f_semantic_inference(unsigned char* ids, const float* class_logits,
                            const float* mask_logits, int Q, int K, int H4, int W4,
                            int H, int W, int Ho, int Wo, float* work) {
    if (H > 4 * H4 || W > 4 * W4) ttt_die("semantic inference: image %dx%d larger than 4 x (%dx%d)", H, W, H4, W4);
    int K1 = K + 1, HW = H4 * W4;
    float* probs = work;                    // (Q, K+1)
    float* seg = work + (size_t)Q * K1;     // (H4*W4, K)
    float* val = seg + (size_t)HW * K;      // (K)
    for (int q = 0; q < Q; q++) softmax_row_host(probs + (size_t)q * K1, class_logits + (size_t)q * K1, K1);
    // seg[p, k] = sum_q probs[q, k] * sigmoid(mask[q, p])   (no-object dropped)
    memset(seg, 0, (size_t)HW * K * sizeof(float));
    for (int q = 0; q < Q; q++) {
        const float* m = mask_logits + (size_t)q * HW;
        const float* pq = probs + (size_t)q * K1;
        for (int p = 0; p < HW; p++) {
            float s = 1.0f / (1.0f + expf(-m[p]));
            for (int k = 0; k < K; k++) seg[(size_t)p * K + k] += pq[k] * s;
        }
    }
    // bilinear to (4*H4, 4*W4), crop to H x W, bilinear to Ho x Wo, argmax over classes
    for (int y = 0; y < Ho; y++) {
        int ya, yb; float ly;
        bilinear_source(y, H, Ho, &ya, &yb, &ly);
        for (int x = 0; x < Wo; x++) {
            int xa, xb; float lx;
            bilinear_source(x, W, Wo, &xa, &xb, &lx);
            int best = 0;
            for (int k = 0; k < K; k++) {
                float top = (1.0f - lx) * seg_x4_at(seg, K, H4, W4, ya, xa, k) + lx * seg_x4_at(seg, K, H4, W4, ya, xb, k);
                float bot = (1.0f - lx) * seg_x4_at(seg, K, H4, W4, yb, xa, k) + lx * seg_x4_at(seg, K, H4, W4, yb, xb, k);
                val[k] = (1.0f - ly) * top + ly * bot;
                if (val[k] > val[best]) best = k;
            }
            ids[(size_t)y * Wo + x] = (unsigned char)best;
        }
    }
}

void semantic_inference(unsigned char* ids, const float* class_logits, const float* mask_logits,
                        int Q, int K, int H4, int W4, int H, int W, int Ho, int Wo, float* work) {
#ifdef TTT_CUDA
    if (ttt_device == DEVICE_CUDA) { semantic_inference_cuda(ids, class_logits, mask_logits, Q, K, H4, W4, H, W, Ho, Wo, work); return; }
#endif
    m2f_semantic_inference(ids, class_logits, mask_logits, Q, K, H4, W4, H, W, Ho, Wo, work);
}

size_t m2f_panoptic_work_size(int Q, int H, int W) {
    (void)H; (void)W;
    return (size_t)Q * 8;
}

int m2f_panoptic_inference(int* seg_ids, PanopticSegment* segments, int max_segments,
                           const float* class_logits, const float* mask_logits,
                           int Q, int K, int H4, int W4, int H, int W,
                           const unsigned char* is_thing, float object_threshold,
                           float overlap_threshold, float* work) {
    (void)work;   // the resized variant allocates its own scratch
    return m2f_panoptic_inference_resized(seg_ids, segments, max_segments, class_logits, mask_logits,
                                          Q, K, H4, W4, H, W, H, W, is_thing, object_threshold,
                                          overlap_threshold);
}

// The mask logits of one query as Mask2Former post-processes them: m (H4, W4) resized
// bilinearly x4 (align_corners=False) to the padded frame, cropped to the top-left H x W (the
// frame the model saw) and resized bilinearly again to Ho x Wo (sem_seg_postprocess: the
// frame's original size). out (Ho, Wo); tmp: H * W floats (unused when Ho x Wo = H x W).
// Taps of the two stages are precomputed by mask_resize_plan.
typedef struct { int H4, W4, H, W, Ho, Wo; int *ya, *yb, *xa, *xb, *oya, *oyb, *oxa, *oxb; float *ly, *lx, *oly, *olx; } MaskResizePlan;

static MaskResizePlan mask_resize_plan(int H4, int W4, int H, int W, int Ho, int Wo) {
    MaskResizePlan p = {H4, W4, H, W, Ho, Wo};
    p.ya = (int*)mallocCheck(H * sizeof(int)); p.yb = (int*)mallocCheck(H * sizeof(int)); p.ly = (float*)mallocCheck(H * sizeof(float));
    p.xa = (int*)mallocCheck(W * sizeof(int)); p.xb = (int*)mallocCheck(W * sizeof(int)); p.lx = (float*)mallocCheck(W * sizeof(float));
    p.oya = (int*)mallocCheck(Ho * sizeof(int)); p.oyb = (int*)mallocCheck(Ho * sizeof(int)); p.oly = (float*)mallocCheck(Ho * sizeof(float));
    p.oxa = (int*)mallocCheck(Wo * sizeof(int)); p.oxb = (int*)mallocCheck(Wo * sizeof(int)); p.olx = (float*)mallocCheck(Wo * sizeof(float));
    for (int y = 0; y < H; y++) bilinear_source(y, H4, 4 * H4, &p.ya[y], &p.yb[y], &p.ly[y]);
    for (int x = 0; x < W; x++) bilinear_source(x, W4, 4 * W4, &p.xa[x], &p.xb[x], &p.lx[x]);
    for (int y = 0; y < Ho; y++) bilinear_source(y, H, Ho, &p.oya[y], &p.oyb[y], &p.oly[y]);
    for (int x = 0; x < Wo; x++) bilinear_source(x, W, Wo, &p.oxa[x], &p.oxb[x], &p.olx[x]);
    return p;
}

static void mask_resize_plan_free(MaskResizePlan* p) {
    free(p->ya); free(p->yb); free(p->ly); free(p->xa); free(p->xb); free(p->lx);
    free(p->oya); free(p->oyb); free(p->oly); free(p->oxa); free(p->oxb); free(p->olx);
}

static void mask_logits_resize(float* out, const float* m, const MaskResizePlan* p, float* tmp) {
    int W4 = p->W4, W = p->W, Wo = p->Wo;
    int same = p->Ho == p->H && p->Wo == p->W;
    float* mid = same ? out : tmp;   // (H, W) after the x4 upsampling and the crop
    for (int y = 0; y < p->H; y++) {
        const float* r0 = m + (size_t)p->ya[y] * W4;
        const float* r1 = m + (size_t)p->yb[y] * W4;
        float ly = p->ly[y];
        float* o = mid + (size_t)y * W;
        for (int x = 0; x < W; x++) {
            float lx = p->lx[x];
            int x0 = p->xa[x], x1 = p->xb[x];
            o[x] = (1.0f - ly) * ((1.0f - lx) * r0[x0] + lx * r0[x1]) + ly * ((1.0f - lx) * r1[x0] + lx * r1[x1]);
        }
    }
    if (same) return;
    for (int y = 0; y < p->Ho; y++) {
        const float* r0 = tmp + (size_t)p->oya[y] * W;
        const float* r1 = tmp + (size_t)p->oyb[y] * W;
        float ly = p->oly[y];
        float* o = out + (size_t)y * Wo;
        for (int x = 0; x < Wo; x++) {
            float lx = p->olx[x];
            int x0 = p->oxa[x], x1 = p->oxb[x];
            o[x] = (1.0f - ly) * ((1.0f - lx) * r0[x0] + lx * r0[x1]) + ly * ((1.0f - lx) * r1[x0] + lx * r1[x1]);
        }
    }
}

int m2f_panoptic_inference_resized(int* seg_ids, PanopticSegment* segments, int max_segments,
                                   const float* class_logits, const float* mask_logits,
                                   int Q, int K, int H4, int W4, int H, int W, int Ho, int Wo,
                                   const unsigned char* is_thing, float object_threshold,
                                   float overlap_threshold) {
    if (H > 4 * H4 || W > 4 * W4) ttt_die("panoptic inference: image %dx%d larger than 4 x (%dx%d)", H, W, H4, W4);
    int K1 = K + 1, HW4 = H4 * W4;
    size_t npix = (size_t)Ho * Wo;
    float* score = (float*)mallocCheck(((size_t)Q + 1) * sizeof(float));
    int* label = (int*)mallocCheck(((size_t)Q + 1) * sizeof(int));
    int* kept = (int*)mallocCheck(((size_t)Q + 1) * sizeof(int));
    int64_t* area_owner = (int64_t*)callocCheck((size_t)Q + 1, sizeof(int64_t));  // pixels whose argmax is this kept query
    int64_t* area_orig = (int64_t*)callocCheck((size_t)Q + 1, sizeof(int64_t));   // pixels with prob >= 0.5
    int64_t* area_both = (int64_t*)callocCheck((size_t)Q + 1, sizeof(int64_t));   // owner and prob >= 0.5
    int* seg_of = (int*)callocCheck((size_t)Q + 1, sizeof(int));                   // segment id of a kept query
    int nk = 0;
    for (int q = 0; q < Q; q++) {
        const float* lg = class_logits + (size_t)q * K1;
        float mx = lg[0];
        for (int k = 1; k < K1; k++) if (lg[k] > mx) mx = lg[k];
        double z = 0.0;
        for (int k = 0; k < K1; k++) z += exp((double)lg[k] - mx);
        int best = 0;
        for (int k = 1; k < K1; k++) if (lg[k] > lg[best]) best = k;
        float s = (float)(exp((double)lg[best] - mx) / z);
        if (best != K && s > object_threshold) { score[nk] = s; label[nk] = best; kept[nk] = q; nk++; }
    }
    if (nk == 0) {
        memset(seg_ids, 0, npix * sizeof(int));
        free(score); free(label); free(kept); free(area_owner); free(area_orig); free(area_both); free(seg_of);
        return 0;
    }
    // pass 1, query by query: each pixel's owner is the first kept query with the largest
    // score x prob (prob = sigmoid of the resized logit); its prob is kept to test >= 0.5
    float* best = (float*)mallocCheck(npix * sizeof(float));
    float* owner_prob = (float*)mallocCheck(npix * sizeof(float));
    float* map = (float*)mallocCheck(npix * sizeof(float));
    float* tmp = (float*)mallocCheck((size_t)H * W * sizeof(float));
    for (size_t p = 0; p < npix; p++) { best[p] = -1.0f; seg_ids[p] = 0; owner_prob[p] = 0.0f; }
    MaskResizePlan plan = mask_resize_plan(H4, W4, H, W, Ho, Wo);
    for (int i = 0; i < nk; i++) {
        mask_logits_resize(map, mask_logits + (size_t)kept[i] * HW4, &plan, tmp);
        int64_t orig = 0;
        for (size_t p = 0; p < npix; p++) {
            float prob = 1.0f / (1.0f + expf(-map[p]));
            if (prob >= 0.5f) orig++;
            if (score[i] * prob > best[p]) { best[p] = score[i] * prob; seg_ids[p] = i; owner_prob[p] = prob; }
        }
        area_orig[i] = orig;
    }
    mask_resize_plan_free(&plan);
    // seg_ids holds owner + 1, negated when the owner's prob < 0.5
    for (size_t p = 0; p < npix; p++) {
        int owner = seg_ids[p];
        area_owner[owner]++;
        int ok = owner_prob[p] >= 0.5f;
        if (ok) area_both[owner]++;
        seg_ids[p] = ok ? owner + 1 : -(owner + 1);
    }
    free(best); free(owner_prob); free(map); free(tmp);
    // segments in query order; stuff classes merge into the first segment of their class
    int n = 0;
    for (int i = 0; i < nk; i++) {
        if (!(area_owner[i] > 0 && area_orig[i] > 0 && area_both[i] > 0)) continue;
        if ((float)area_owner[i] / (float)area_orig[i] < overlap_threshold) continue;
        int cls = label[i];
        int thing = is_thing ? (is_thing[cls] != 0) : 1;
        if (!thing) {
            int found = 0;
            for (int s = 0; s < n; s++) {
                if (!segments[s].is_thing && segments[s].class_id == cls) { seg_of[i] = segments[s].id; found = 1; break; }
            }
            if (found) continue;
        }
        if (n >= max_segments) break;
        segments[n].id = n + 1;
        segments[n].class_id = cls;
        segments[n].is_thing = thing;
        segments[n].area = 0;
        segments[n].score = score[i];
        seg_of[i] = n + 1;
        n++;
    }
    // pass 2: final ids and areas
    for (size_t p = 0; p < npix; p++) {
        int v = seg_ids[p];
        int id = (v > 0) ? seg_of[v - 1] : 0;
        seg_ids[p] = id;
        if (id > 0) segments[id - 1].area++;
    }
    free(score); free(label); free(kept); free(area_owner); free(area_orig); free(area_both); free(seg_of);
    return n;
}

// top_k of the Q*K (query, class) probabilities, highest first, ties by lower index
typedef struct { float p; int idx; } ScoredPair;
static int scored_pair_cmp(const void* a, const void* b) {
    const ScoredPair *x = (const ScoredPair*)a, *y = (const ScoredPair*)b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

int m2f_instance_inference(InstanceDet* dets, int top_k, const float* class_logits,
                           const float* mask_logits, int Q, int K, int H4, int W4, int H, int W,
                           int Ho, int Wo, const unsigned char* is_thing) {
    if (H > 4 * H4 || W > 4 * W4) ttt_die("instance inference: image %dx%d larger than 4 x (%dx%d)", H, W, H4, W4);
    int K1 = K + 1, HW4 = H4 * W4;
    size_t npix = (size_t)Ho * Wo;
    // softmax over K + 1, no-object dropped: scores (Q, K)
    ScoredPair* pairs = (ScoredPair*)mallocCheck((size_t)Q * K * sizeof(ScoredPair));
    for (int q = 0; q < Q; q++) {
        const float* lg = class_logits + (size_t)q * K1;
        float mx = lg[0];
        for (int k = 1; k < K1; k++) if (lg[k] > mx) mx = lg[k];
        double z = 0.0;
        for (int k = 0; k < K1; k++) z += exp((double)lg[k] - mx);
        for (int k = 0; k < K; k++) { pairs[q * K + k].p = (float)(exp((double)lg[k] - mx) / z); pairs[q * K + k].idx = q * K + k; }
    }
    qsort(pairs, (size_t)Q * K, sizeof(ScoredPair), scored_pair_cmp);
    int n_top = top_k < Q * K ? top_k : Q * K, n = 0;
    for (int i = 0; i < n_top; i++) {
        int q = pairs[i].idx / K, k = pairs[i].idx % K;
        if (is_thing && !is_thing[k]) continue;   // a panoptic model: thing classes only
        dets[n].query = q; dets[n].class_id = k; dets[n].class_prob = pairs[i].p;
        n++;
    }
    free(pairs);
    // masks: each query's map once (OpenMP over queries), shared by its detections
    MaskResizePlan plan = mask_resize_plan(H4, W4, H, W, Ho, Wo);
    int bad_alloc = 0;
    #pragma omp parallel
    {
        float* map = (float*)malloc(npix * sizeof(float));
        float* tmp = (float*)malloc((size_t)H * W * sizeof(float) + 1);
        unsigned char* bin = (unsigned char*)malloc(npix + 1);
        if (!map || !tmp || !bin) {
            #pragma omp atomic write
            bad_alloc = 1;
        }
        #pragma omp for schedule(dynamic)
        for (int i = 0; i < n; i++) {
            if (!map || !tmp || !bin) continue;
            int q = dets[i].query, first = 1;
            for (int j = 0; j < i; j++) if (dets[j].query == q) { first = 0; break; }
            if (!first) continue;   // filled below from the first detection of its query
            mask_logits_resize(map, mask_logits + (size_t)q * HW4, &plan, tmp);
            double sum = 0.0;
            int64_t area = 0;
            for (size_t p = 0; p < npix; p++) {
                bin[p] = map[p] > 0.0f;   // sigmoid > 0.5
                if (bin[p]) { sum += 1.0f / (1.0f + expf(-map[p])); area++; }
            }
            float mask_score = (float)(sum / ((double)area + 1e-6));
            for (int j = i; j < n; j++) {
                if (dets[j].query != q) continue;
                rle_encode(&dets[j].rle, bin, Ho, Wo);
                dets[j].area = area;
                dets[j].mask_score = mask_score;
                dets[j].score = dets[j].class_prob * mask_score;
            }
        }
        free(map); free(tmp); free(bin);
    }
    mask_resize_plan_free(&plan);
    if (bad_alloc) ttt_die("instance inference: out of memory for %dx%d masks", Wo, Ho);
    return n;
}

// ============================================================================
// end of PIXEL DECODER AND TRANSFORMER DECODER
// ============================================================================


// ============================================================================
// SET LOSS: targets from label maps, Hungarian matching, point sampling, losses
// ============================================================================

SetLossConfig set_loss_config_default(void) {
    SetLossConfig c = {12544, 3.0f, 0.75f, 2.0f, 5.0f, 5.0f, 0.1f, 0};
    return c;
}

// ----------------------------------------------------------------------------
// targets

int set_loss_targets_semantic(int* classes, float* masks, const unsigned char* labels,
                              int H, int W, int K) {
    size_t HW = (size_t)H * W;
    int present[256] = {0};
    for (size_t i = 0; i < HW; i++) present[labels[i]] = 1;
    for (int k = K; k < 255; k++) {
        if (present[k]) ttt_die("set loss: label %d outside [0, %d) and not 255 (ignore)", k, K);
    }
    int T = 0;
    for (int k = 0; k < K; k++) {
        if (!present[k]) continue;
        classes[T] = k;
        if (masks) {
            float* m = masks + (size_t)T * HW;
            for (size_t i = 0; i < HW; i++) m[i] = labels[i] == k ? 1.0f : 0.0f;
        }
        T++;
    }
    return T;
}

int set_loss_targets_panoptic(int* classes, float* masks, const int* seg_ids, int H, int W,
                              const int* segment_class, int num_segments, int K) {
    size_t HW = (size_t)H * W;
    for (size_t i = 0; i < HW; i++) {
        if (seg_ids[i] < 0 || seg_ids[i] > num_segments)
            ttt_die("set loss: segment id %d outside [0, %d]", seg_ids[i], num_segments);
    }
    int T = 0;
    for (int s = 0; s < num_segments; s++) {
        int k = segment_class[s];
        if (k < 0) continue;   // crowd / ignored
        if (k >= K) ttt_die("set loss: segment %d has class %d outside [0, %d)", s + 1, k, K);
        classes[T] = k;
        if (masks) {
            float* m = masks + (size_t)T * HW;
            for (size_t i = 0; i < HW; i++) m[i] = seg_ids[i] == s + 1 ? 1.0f : 0.0f;
        }
        T++;
    }
    return T;
}

// ----------------------------------------------------------------------------
// Hungarian matching

// Shortest augmenting paths with row/column potentials u, v (the e-maxx formulation):
// rows are added one at a time; each addition grows a Dijkstra-like tree over columns on
// reduced costs c - u - v until it reaches a free column, then flips the path.
// Needs n <= m; indices are 1-based inside, p[j] = row matched to column j (0 = free).
static double hungarian_rows_le_cols(const double* cost, int n, int m, int* col_of_row) {
    double* u = (double*)callocCheck(n + 1, sizeof(double));
    double* v = (double*)callocCheck(m + 1, sizeof(double));
    double* minv = (double*)mallocCheck((m + 1) * sizeof(double));
    int* p = (int*)callocCheck(m + 1, sizeof(int));
    int* way = (int*)callocCheck(m + 1, sizeof(int));
    char* used = (char*)mallocCheck(m + 1);
    for (int i = 1; i <= n; i++) {
        p[0] = i;
        int j0 = 0;
        for (int j = 0; j <= m; j++) { minv[j] = INFINITY; used[j] = 0; }
        do {
            used[j0] = 1;
            int i0 = p[j0], j1 = 0;
            double delta = INFINITY;
            for (int j = 1; j <= m; j++) {
                if (used[j]) continue;
                double cur = cost[(size_t)(i0 - 1) * m + (j - 1)] - u[i0] - v[j];
                if (cur < minv[j]) { minv[j] = cur; way[j] = j0; }
                if (minv[j] < delta) { delta = minv[j]; j1 = j; }
            }
            for (int j = 0; j <= m; j++) {
                if (used[j]) { u[p[j]] += delta; v[j] -= delta; }
                else minv[j] -= delta;
            }
            j0 = j1;
        } while (p[j0] != 0);
        do { int j1 = way[j0]; p[j0] = p[j1]; j0 = j1; } while (j0);
    }
    double total = 0.0;
    for (int j = 1; j <= m; j++) {
        if (p[j]) { col_of_row[p[j] - 1] = j - 1; total += cost[(size_t)(p[j] - 1) * m + (j - 1)]; }
    }
    free(u); free(v); free(minv); free(p); free(way); free(used);
    return total;
}

double hungarian_assign(const double* cost, int n, int m, int* col_of_row) {
    for (int i = 0; i < n; i++) col_of_row[i] = -1;
    if (n <= 0 || m <= 0) return 0.0;
    int rows = n <= m ? n : m, cols = n <= m ? m : n;
    // finite copy, transposed when there are more rows than columns
    double* c = (double*)mallocCheck((size_t)n * m * sizeof(double));
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < m; j++) {
            double x = cost[(size_t)i * m + j];
            if (!isfinite(x)) x = 1e30;
            if (n <= m) c[(size_t)i * m + j] = x; else c[(size_t)j * n + i] = x;
        }
    }
    int* match = (int*)mallocCheck((size_t)rows * sizeof(int));
    hungarian_rows_le_cols(c, rows, cols, match);
    double total = 0.0;
    for (int r = 0; r < rows; r++) {
        int i = n <= m ? r : match[r], j = n <= m ? match[r] : r;
        col_of_row[i] = j;
        total += cost[(size_t)i * m + j];
    }
    free(c); free(match);
    return total;
}

// ----------------------------------------------------------------------------
// point sets

typedef struct { float u; int i; } RankedPoint;
// most uncertain first; ties by index, so the order is deterministic
static int compare_uncertainty(const void* a, const void* b) {
    float ua = ((const RankedPoint*)a)->u, ub = ((const RankedPoint*)b)->u;
    if (ua != ub) return ua > ub ? -1 : 1;
    return ((const RankedPoint*)a)->i - ((const RankedPoint*)b)->i;
}

// Reorders r (n) so that r[0..k) are the k most uncertain in the order of compare_uncertainty
// (a total order, so the set equals a full sort's prefix): quickselect, then sort the prefix.
static void select_most_uncertain(RankedPoint* r, int n, int k) {
    if (k <= 0) return;
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        // median of three as pivot, Hoare partition
        int mid = lo + (hi - lo) / 2;
        RankedPoint a = r[lo], b = r[mid], c = r[hi], pivot;
        if (compare_uncertainty(&a, &b) < 0) {
            pivot = compare_uncertainty(&b, &c) < 0 ? b : (compare_uncertainty(&a, &c) < 0 ? c : a);
        } else {
            pivot = compare_uncertainty(&a, &c) < 0 ? a : (compare_uncertainty(&b, &c) < 0 ? c : b);
        }
        int i = lo, j = hi;
        while (i <= j) {
            while (compare_uncertainty(&r[i], &pivot) < 0) i++;
            while (compare_uncertainty(&r[j], &pivot) > 0) j--;
            if (i <= j) { RankedPoint tmp = r[i]; r[i] = r[j]; r[j] = tmp; i++; j--; }
        }
        // now r[lo..j] <= pivot <= r[i..hi], and r(j..i) == pivot
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
    qsort(r, k, sizeof(RankedPoint), compare_uncertainty);
}

// P points (x, y): uniform random in [0, 1)^2, or the centres of an Hm x Wm grid
static void random_points(float* coords, int P, Rng* rng) {
    for (int i = 0; i < 2 * P; i++) coords[i] = rng_uniform(rng);
}
static void grid_points(float* coords, int Hm, int Wm) {
    for (int y = 0; y < Hm; y++) for (int x = 0; x < Wm; x++) {
        coords[2 * (y * Wm + x)] = (x + 0.5f) / Wm;
        coords[2 * (y * Wm + x) + 1] = (y + 0.5f) / Hm;
    }
}

// ----------------------------------------------------------------------------
// the loss
//
// set_loss_from_targets, for every decoder layer j (deep supervision) and image b:
//   matching_cost      cost (T, Q) of giving target t to query q, on P random points
//   match_queries      Hungarian matching: M = min(T, Q) pairs (query, target)
//   pair_points        P points per pair (importance sampling, or every pixel)
//   mask_losses        BCE and dice of each pair on its points (and their gradients)
// then class_loss: cross-entropy of every query of the batch against its matched class
// (no-object for the unmatched ones, weighted no_object_weight).

// host scratch of one set_loss_from_targets call, allocated together (set_loss_scratch_alloc)
typedef struct {
    int P, P_over, P_imp, P_rand;   // points per mask; candidates, most uncertain and random ones
    float* coords;          // (P, 2) the matching's points, shared by every mask of an image
    float* coords_rep;      // (QT, P, 2) the same points once per mask (QT = max(Q, max T))
    float* pred_pts;        // (Q, P) mask logits of each query at the points
    float* pred_sig;        // (Q, P) their sigmoid
    double* pred_softplus;  // (Q) sum over the points of softplus(x)
    double* pred_sigsum;    // (Q) sum over the points of sigmoid(x)
    float* tgt_pts;         // (max T, P) target masks at the points
    double* cost;           // (max T, Q) matching cost
    int* query_of_target;   // (max T) Hungarian result, -1: no query
    int *match_q, *match_t; // (max M) the matched pairs: query, target
    float* probs;           // (Q, C) class probabilities of one image
    int* cls_target;        // (B, Q) each query's class target, K = no object
    float* cand;            // (max M, P_over, 2) candidate points of importance sampling
    float* sel;             // (max M, P, 2) each pair's points
    float *pl, *tl, *dpl;   // (max M, P) pair's mask logits, target, d loss / d logits at the points
    float *bce, *dice;      // (max M) each pair's losses
    float *dloss_bce, *dloss_dice;   // (max M) their weights in the total: w / num_masks
    float* class_w;         // (C) 1 per class, no_object_weight for no object
} SetLossScratch;

static void set_loss_scratch_alloc(SetLossScratch* s, const SetLossConfig* cfg, int B, int Q, int K, int Hm, int Wm,
                                   int max_T, double norm) {
    int C = K + 1;
    // P points per mask; P_over candidates of which P_imp most uncertain are kept
    int P = s->P = cfg->all_pixels ? Hm * Wm : cfg->num_points;
    int P_over = s->P_over = cfg->all_pixels ? P : (int)(cfg->oversample * P);
    s->P_imp = cfg->all_pixels ? 0 : (int)(cfg->importance * P);
    s->P_rand = P - s->P_imp;
    int QT = Q > max_T ? Q : max_T;
    int max_match = Q < max_T ? Q : max_T;   // matched pairs per image
    int nt = max_T > 0 ? max_T : 1, nmatch = max_match > 0 ? max_match : 1;   // buffer rows
    size_t nmp = (size_t)nmatch * P;   // matched pairs x points
    s->coords = (float*)mallocCheck((size_t)P * 2 * sizeof(float));
    s->coords_rep = (float*)mallocCheck((size_t)QT * P * 2 * sizeof(float));
    s->pred_pts = (float*)mallocCheck((size_t)Q * P * sizeof(float));
    s->pred_sig = (float*)mallocCheck((size_t)Q * P * sizeof(float));
    s->pred_softplus = (double*)mallocCheck((size_t)Q * sizeof(double));
    s->pred_sigsum = (double*)mallocCheck((size_t)Q * sizeof(double));
    s->tgt_pts = (float*)mallocCheck((size_t)nt * P * sizeof(float));
    s->cost = (double*)mallocCheck((size_t)nt * Q * sizeof(double));
    s->query_of_target = (int*)mallocCheck((size_t)nt * sizeof(int));
    s->match_q = (int*)mallocCheck((size_t)nmatch * sizeof(int));
    s->match_t = (int*)mallocCheck((size_t)nmatch * sizeof(int));
    s->probs = (float*)mallocCheck((size_t)Q * C * sizeof(float));
    s->cls_target = (int*)mallocCheck((size_t)B * Q * sizeof(int));
    s->cand = (float*)mallocCheck((size_t)nmatch * P_over * 2 * sizeof(float));
    s->sel = (float*)mallocCheck(nmp * 2 * sizeof(float));
    s->pl = (float*)mallocCheck(nmp * sizeof(float));
    s->tl = (float*)mallocCheck(nmp * sizeof(float));
    s->dpl = (float*)mallocCheck(nmp * sizeof(float));
    s->bce = (float*)mallocCheck((size_t)nmatch * sizeof(float));
    s->dice = (float*)mallocCheck((size_t)nmatch * sizeof(float));
    s->dloss_bce = (float*)mallocCheck((size_t)nmatch * sizeof(float));
    s->dloss_dice = (float*)mallocCheck((size_t)nmatch * sizeof(float));
    s->class_w = (float*)mallocCheck((size_t)C * sizeof(float));
    for (int k = 0; k < K; k++) s->class_w[k] = 1.0f;
    s->class_w[K] = cfg->no_object_weight;
    for (int i = 0; i < nmatch; i++) {
        s->dloss_bce[i] = (float)(cfg->w_mask / norm);
        s->dloss_dice[i] = (float)(cfg->w_dice / norm);
    }
    if (cfg->all_pixels) {   // every pixel, the same points for every mask and pair
        grid_points(s->coords, Hm, Wm);
        for (int i = 0; i < QT; i++) memcpy(s->coords_rep + (size_t)i * P * 2, s->coords, (size_t)P * 2 * sizeof(float));
        for (int i = 0; i < max_match; i++) memcpy(s->sel + (size_t)i * P * 2, s->coords, (size_t)P * 2 * sizeof(float));
    }
}

static void set_loss_scratch_free(SetLossScratch* s) {
    free(s->coords); free(s->coords_rep); free(s->pred_pts); free(s->pred_sig);
    free(s->pred_softplus); free(s->pred_sigsum); free(s->tgt_pts); free(s->cost); free(s->query_of_target);
    free(s->match_q); free(s->match_t); free(s->probs); free(s->cls_target); free(s->cand); free(s->sel);
    free(s->pl); free(s->tl); free(s->dpl); free(s->bce); free(s->dice); free(s->dloss_bce); free(s->dloss_dice);
    free(s->class_w);
}

// The matching cost of one image into s->cost (T, Q), on P points shared by every mask (uniform
// random, or every pixel):
//   cost[t][q] = w_class * -p_q(class_t) + w_mask * BCE(x_q, y_t) + w_dice * dice(x_q, y_t)
// x_q: query q's mask logits (Hm, Wm) at the points, y_t: target t's mask (H, W) at the points;
// BCE(x, y) averaged over the points = (sum softplus(x) - sum x y) / P (y in [0, 1]),
// dice = 1 - (2 sum sigmoid(x) y + 1) / (sum sigmoid(x) + sum y + 1).
static void matching_cost(SetLossScratch* s, const SetLossConfig* cfg, const float* cls, const float* masks,
                          const int* tgt_classes, const float* tgt_masks, int T, int Q, int C, int Hm, int Wm,
                          int H, int W, Rng* rng) {
    int P = s->P, QT = Q > T ? Q : T;
    if (!cfg->all_pixels) {
        random_points(s->coords, P, rng);
        for (int i = 0; i < QT; i++) memcpy(s->coords_rep + (size_t)i * P * 2, s->coords, (size_t)P * 2 * sizeof(float));
    }
    point_sample_forward_cpu(s->pred_pts, masks, s->coords_rep, Q, Hm, Wm, P);
    point_sample_forward_cpu(s->tgt_pts, tgt_masks, s->coords_rep, T, H, W, P);
    softmax_forward_cpu(s->probs, cls, Q, C);
    #pragma omp parallel for schedule(static) if ((long)Q * P > 16384)
    for (int q = 0; q < Q; q++) {
        const float* x = s->pred_pts + (size_t)q * P;
        float* sg = s->pred_sig + (size_t)q * P;
        double sp = 0.0, ss = 0.0;
        for (int p = 0; p < P; p++) {   // float terms (as Mask2Former), double sums
            float xp = x[p], e = expf(-fabsf(xp));
            sp += (xp > 0.0f ? xp : 0.0f) + log1pf(e);
            sg[p] = xp >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
            ss += sg[p];
        }
        s->pred_softplus[q] = sp; s->pred_sigsum[q] = ss;
    }
    #pragma omp parallel for collapse(2) schedule(static) if ((long)T * Q * P > 65536)
    for (int t = 0; t < T; t++) {
        for (int q = 0; q < Q; q++) {
            const float* y = s->tgt_pts + (size_t)t * P;
            const float* x = s->pred_pts + (size_t)q * P;
            const float* sg = s->pred_sig + (size_t)q * P;
            double xy = 0.0, sy = 0.0, yy = 0.0;
            for (int p = 0; p < P; p++) { xy += x[p] * y[p]; sy += sg[p] * y[p]; yy += y[p]; }
            double pair_bce = (s->pred_softplus[q] - xy) / P;
            double pair_dice = 1.0 - (2.0 * sy + 1.0) / (s->pred_sigsum[q] + yy + 1.0);
            s->cost[(size_t)t * Q + q] = cfg->w_class * -(double)s->probs[q * C + tgt_classes[t]]
                                       + cfg->w_mask * pair_bce + cfg->w_dice * pair_dice;
        }
    }
}

// Hungarian matching on s->cost: the M matched pairs into s->match_q / s->match_t, and each
// matched query's class target into cls_target (Q; the others keep K, no object). Returns M.
static int match_queries(SetLossScratch* s, const int* tgt_classes, int T, int Q, int* cls_target) {
    hungarian_assign(s->cost, T, Q, s->query_of_target);
    int M = 0;
    for (int t = 0; t < T; t++) {
        if (s->query_of_target[t] < 0) continue;   // T > Q: this target gets no query
        s->match_t[M] = t; s->match_q[M] = s->query_of_target[t]; M++;
        cls_target[s->query_of_target[t]] = tgt_classes[t];
    }
    return M;
}

// The P points of each matched pair into s->sel (M, P, 2): importance sampling
// (get_uncertain_point_coords_with_randomness): of P_over uniform candidates the P_imp where the
// query's logit is nearest 0, then P_rand uniform ones; the random draws first, in a fixed
// order, then the selection. Every pixel (all_pixels): s->sel already holds the grid.
static void pair_points(SetLossScratch* s, const SetLossConfig* cfg, const float* masks, int M, int Hm, int Wm,
                        Rng* rng) {
    if (cfg->all_pixels) return;
    int P = s->P, P_over = s->P_over, P_imp = s->P_imp;
    size_t HWm = (size_t)Hm * Wm;
    random_points(s->cand, M * P_over, rng);
    for (int i = 0; i < M; i++) random_points(s->sel + ((size_t)i * P + P_imp) * 2, s->P_rand, rng);
    #pragma omp parallel for schedule(dynamic) if ((long)M * P_over > 16384)
    for (int i = 0; i < M; i++) {
        const float* ci = s->cand + (size_t)i * P_over * 2;
        float* unc = (float*)mallocCheck((size_t)P_over * sizeof(float));
        RankedPoint* ranked = (RankedPoint*)mallocCheck((size_t)P_over * sizeof(RankedPoint));
        point_sample_forward_cpu(unc, masks + (size_t)s->match_q[i] * HWm, ci, 1, Hm, Wm, P_over);
        for (int k = 0; k < P_over; k++) {
            float u = -fabsf(unc[k]);
            ranked[k].u = u == u ? u : -INFINITY;   // NaN (diverged): least uncertain, keeps the order total
            ranked[k].i = k;
        }
        select_most_uncertain(ranked, P_over, P_imp);
        float* si = s->sel + (size_t)i * P * 2;
        for (int k = 0; k < P_imp; k++) {
            si[2 * k] = ci[2 * ranked[k].i];
            si[2 * k + 1] = ci[2 * ranked[k].i + 1];
        }
        free(unc); free(ranked);
    }
}

// BCE and dice of every matched pair on its points, each weighted w / norm, added to *sum_bce
// and *sum_dice; their gradients accumulated into dmasks (Q, Hm, Wm) unless it is NULL
static void mask_losses(SetLossScratch* s, const SetLossConfig* cfg, const float* masks, const float* tgt_masks,
                        int M, int Hm, int Wm, int H, int W, double norm, double* sum_bce, double* sum_dice,
                        float* dmasks) {
    int P = s->P;
    size_t HWm = (size_t)Hm * Wm, HW = (size_t)H * W;
    #pragma omp parallel for schedule(static) if ((long)M * P > 16384)
    for (int i = 0; i < M; i++) {
        const float* si = s->sel + (size_t)i * P * 2;
        point_sample_forward_cpu(s->pl + (size_t)i * P, masks + (size_t)s->match_q[i] * HWm, si, 1, Hm, Wm, P);
        point_sample_forward_cpu(s->tl + (size_t)i * P, tgt_masks + (size_t)s->match_t[i] * HW, si, 1, H, W, P);
    }
    sigmoid_bce_forward_cpu(s->bce, s->pl, s->tl, M, P);
    dice_loss_forward_cpu(s->dice, s->pl, s->tl, M, P);
    for (int i = 0; i < M; i++) {
        *sum_bce += cfg->w_mask * s->bce[i] / norm;
        *sum_dice += cfg->w_dice * s->dice[i] / norm;
    }
    if (dmasks == NULL) return;
    memset(s->dpl, 0, (size_t)M * P * sizeof(float));
    sigmoid_bce_backward_cpu(s->dpl, s->dloss_bce, s->pl, s->tl, M, P);
    dice_loss_backward_cpu(s->dpl, s->dloss_dice, s->pl, s->tl, M, P);
    // distinct queries: no two pairs write the same map
    #pragma omp parallel for schedule(static) if ((long)M * P > 16384)
    for (int i = 0; i < M; i++)
        point_sample_backward_cpu(dmasks + (size_t)s->match_q[i] * HWm, s->dpl + (size_t)i * P,
                                  s->sel + (size_t)i * P * 2, 1, Hm, Wm, P);
}

// w_class * cross-entropy over the N = B * Q queries of one layer, (N, C) logits against
// cls_target (class weights class_w); its gradient accumulated into dcls unless NULL
static double class_loss(const SetLossScratch* s, const SetLossConfig* cfg, const float* cls, int N, int C,
                         float* dcls) {
    float ce;
    cross_entropy_forward_cpu(&ce, cls, s->cls_target, s->class_w, N, C, -1);
    if (dcls) cross_entropy_backward_cpu(dcls, cfg->w_class, cls, s->cls_target, s->class_w, N, C, -1);
    return cfg->w_class * ce;
}

float set_loss_from_targets(const SetLossConfig* cfg, const float* class_logits,
                            const float* mask_logits, int L, int B, int Q, int K, int Hm, int Wm,
                            const int* num_targets, const int* target_classes,
                            const float* target_masks, int H, int W,
                            float* dclass_logits, float* dmask_logits, Rng* rng, float parts[3]) {
    if (L < 1 || B < 1 || Q < 1 || K < 1 || Hm < 1 || Wm < 1 || H < 1 || W < 1)
        ttt_die("set loss: sizes must be positive (L %d B %d Q %d K %d mask %dx%d labels %dx%d)",
                L, B, Q, K, Hm, Wm, H, W);
    if (!cfg->all_pixels && (cfg->num_points < 1 || cfg->oversample < 1.0f ||
                             cfg->importance < 0.0f || cfg->importance > 1.0f))
        ttt_die("set loss: need num_points >= 1, oversample >= 1, importance in [0, 1]");
    int C = K + 1;
    size_t HW = (size_t)H * W, HWm = (size_t)Hm * Wm;
    int max_T = 0, num_masks = 0;
    size_t* first = (size_t*)mallocCheck((size_t)B * sizeof(size_t));   // image b's first target
    for (int b = 0; b < B; b++) {
        if (num_targets[b] < 0) ttt_die("set loss: negative target count");
        first[b] = (size_t)num_masks;
        num_masks += num_targets[b];
        if (num_targets[b] > max_T) max_T = num_targets[b];
    }
    for (int i = 0; i < num_masks; i++) {
        if (target_classes[i] < 0 || target_classes[i] >= K)
            ttt_die("set loss: target class %d outside [0, %d)", target_classes[i], K);
    }
    double norm = cfg->num_masks > 0.0f ? cfg->num_masks : num_masks > 0 ? num_masks : 1;
    SetLossScratch s;
    set_loss_scratch_alloc(&s, cfg, B, Q, K, Hm, Wm, max_T, norm);

    double sum_ce = 0.0, sum_bce = 0.0, sum_dice = 0.0;
    for (int j = 0; j < L; j++) {   // every decoder layer's prediction (deep supervision)
        const float* l_cls = class_logits + (size_t)j * B * Q * C;   // (B, Q, C)
        for (int b = 0; b < B; b++) {
            const float* cls = l_cls + (size_t)b * Q * C;                     // (Q, C)
            const float* masks = mask_logits + ((size_t)j * B + b) * Q * HWm;  // (Q, Hm, Wm)
            const float* tgt_masks = target_masks + first[b] * HW;             // (T, H, W)
            const int* tgt_classes = target_classes + first[b];                // (T)
            float* dmasks = dmask_logits ? dmask_logits + ((size_t)j * B + b) * Q * HWm : NULL;
            int T = num_targets[b];
            for (int q = 0; q < Q; q++) s.cls_target[b * Q + q] = K;   // no object
            if (T == 0) continue;
            matching_cost(&s, cfg, cls, masks, tgt_classes, tgt_masks, T, Q, C, Hm, Wm, H, W, rng);
            int M = match_queries(&s, tgt_classes, T, Q, s.cls_target + b * Q);
            pair_points(&s, cfg, masks, M, Hm, Wm, rng);
            mask_losses(&s, cfg, masks, tgt_masks, M, Hm, Wm, H, W, norm, &sum_bce, &sum_dice, dmasks);
        }
        sum_ce += class_loss(&s, cfg, l_cls, B * Q, C, dclass_logits ? dclass_logits + (size_t)j * B * Q * C : NULL);
    }
    if (parts) { parts[0] = (float)sum_ce; parts[1] = (float)sum_bce; parts[2] = (float)sum_dice; }
    set_loss_scratch_free(&s);
    free(first);
    return (float)(sum_ce + sum_bce + sum_dice);
}

float set_loss(const SetLossConfig* cfg, const float* class_logits, const float* mask_logits,
               int L, int B, int Q, int K, int Hm, int Wm, const unsigned char* labels, int H, int W,
               float* dclass_logits, float* dmask_logits, Rng* rng, float parts[3]) {
    if (K < 1 || K > 255) ttt_die("set loss: %d classes outside [1, 255]", K);
    size_t HW = (size_t)H * W;
    // count first, so the masks take (sum T, H, W) rather than (B, K, H, W)
    int* num_targets = (int*)mallocCheck((size_t)B * sizeof(int));
    int* classes = (int*)mallocCheck((size_t)B * K * sizeof(int));
    int total = 0;
    for (int b = 0; b < B; b++) {
        num_targets[b] = set_loss_targets_semantic(classes + total, NULL, labels + b * HW, H, W, K);
        total += num_targets[b];
    }
    float* masks = (float*)mallocCheck((size_t)(total ? total : 1) * HW * sizeof(float));
    total = 0;
    for (int b = 0; b < B; b++) {
        set_loss_targets_semantic(classes + total, masks + (size_t)total * HW, labels + b * HW, H, W, K);
        total += num_targets[b];
    }
    float loss = set_loss_from_targets(cfg, class_logits, mask_logits, L, B, Q, K, Hm, Wm,
                                       num_targets, classes, masks, H, W, dclass_logits,
                                       dmask_logits, rng, parts);
    free(num_targets); free(classes); free(masks);
    return loss;
}

// ============================================================================
// end of SET LOSS
// ============================================================================
