// train.c: joint training of the Y model on labeled still images:
//   minimise l_m(h(f(x)), y) + l_s(g(f(x~)), x)
// (--no-mae: l_m alone, f and h only: the paper's "Main Task Only" baseline)
// with the augmentation of Mask2Former's semantic dataset mapper (resize, crop, ColorAugSSD,
// flip; data.c), AdamW with detectron2's WarmupPolyLR schedule, global gradient-norm
// clipping, periodic checkpoints and an exact resume.
//
// Datasets (labeled_set_list in data.c, found from what --data holds):
//   Cityscapes  ROOT/leftImg8bit/SPLIT/CITY/*_leftImg8bit.png with ROOT/gtFine/SPLIT/CITY/
//               *_gtFine_labelTrainIds.png (or *_labelIds.png, mapped to the 19 train ids)
//   KITTI-STEP  ROOT/images/SPLIT/SEQ/*.png with ROOT/panoptic_maps/SPLIT/SEQ/*.png
//   plain       DIR/images/NAME.(png|jpg) with DIR/labels/NAME.png (8-bit ids, 255 = ignore)
// Paths are listed and every header (and every label's ids) checked before training; each
// step then decodes its images from disk (OpenMP over the batch), so a real dataset need not
// fit in memory.
//
// --recipe paper: the released Cityscapes joint-training schedule (video-ttt-release,
// configs/kitti_step/semantic-segmentation/maskformer2_swin_small_bs16_90k_ttt_mae.yaml and
// its bases Base-Cityscapes-SemanticSegmentation.yaml, maskformer2_R50_bs16_90k.yaml):
// 90k iterations of 16 images, AdamW lr 1e-4 poly(0.9) without warm-up, wd 0.05, crops of
// 512x1024 after a random short side from int(x * 0.1 * 1024), x = 5..20 (long side <= 4096),
// ColorAugSSD, horizontal flip, full-model clipping at 0.01, Swin-S with 19 classes, and the
// model recipe of model_recipe_paper(). Every setting is its own flag as well; the recipe
// sets the defaults and every other flag overrides it, wherever it stands on the line.
//
//   ./train --data DIR --out model.bin [--recipe paper] [--steps N] [--batch B] ...
#include "ttt.h"
#include <errno.h>
#include <limits.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#include "stb_image.h"   // declarations only (stbi_info for the --out check)
#pragma GCC diagnostic pop

typedef struct {
    const char* recipe;        // demo | paper
    const char* data_dir;
    const char* split;         // Cityscapes / KITTI-STEP split of --data
    const char* val_dir;
    const char* val_split;
    const char* out_path;
    const char* init_path;     // f and h from this checkpoint; g from scratch
    const char* init_swin;     // f from a Swin encoder export (dev/convert_swin.py)
    const char* size;          // tiny | default | swin-s
    const char* device;
    int classes, steps, batch, warmup, save_every, val_every, seed;
    int micro_batch;        // images per forward/backward chunk of a step; 0 = automatic
    int sampler_perm;          // 1: cycle through random permutations (detectron2's TrainingSampler)
    float lr, weight_decay, grad_clip, warmup_factor;
    AugConfig aug;
    // model recipe overrides (< 0: the recipe's value)
    float mask_ratio, backbone_lr_scale, drop_path;
    int loss_all_pixels, wd_exempt;
    int task;                  // TASK_SEMANTIC | TASK_PANOPTIC (COCO panoptic layout, coco_data.c) | TASK_COLORIZE (color.c)
    int no_mae;                // 1: the main task alone (f and h), g stays as initialised
} TrainArgs;

static void usage(void) {
    printf("usage: ./train --data DIR --out CKPT [options]\n"
           "  --data DIR           Cityscapes root (leftImg8bit/, gtFine/), KITTI-STEP root (images/,\n"
           "                       panoptic_maps/), or DIR/images + DIR/labels (8-bit class ids, 255 = ignore)\n"
           "  --split S            split of a Cityscapes / KITTI-STEP / COCO root (default train)\n"
           "  --task T             semantic (default) | panoptic: --data is a COCO panoptic root\n"
           "                       (ROOT/train2017, ROOT/annotations/panoptic_train2017.json + PNGs); the set\n"
           "                       loss gets one target per segment (crowd and void ignored), classes = the\n"
           "                       JSON's categories (COCO's 133 when it has none); --val reports PQ\n"
           "                       | colorize: --data is any folder of colour images (or DIR/images), no labels;\n"
           "                       h learns the 313 ab bins of the gray image's colours (Zhang et al.'s loss,\n"
           "                       rebalancing weights from --data, stored in the checkpoint); --val reports\n"
           "                       PSNR and SSIM; --color-aug is off\n"
           "  --recipe R           demo (default) | paper: the released Cityscapes schedule; other flags\n"
           "                       override it wherever they stand\n"
           "  --classes K          number of classes (demo 8, paper 19)\n"
           "  --size S             model size: tiny | default | swin-s (demo default, paper swin-s)\n"
           "  --steps N            optimizer steps (demo 2000, paper 90000)\n"
           "  --batch B            images per step (demo 4, paper 16)\n"
           "  --micro-batch M      run each step in chunks of M images that act as data-parallel\n"
           "                       replicas (Mask2Former's 8 GPUs x 2), gradients accumulated.\n"
           "                       Default: the whole batch on the CPU, on the GPU the largest M\n"
           "                       that fits in its free memory\n"
           "  --crop WxH           training crop (demo 128x96, paper 1024x512)\n"
           "  --lr LR              base learning rate (1e-4)\n"
           "  --weight-decay W     AdamW decoupled weight decay (0.05)\n"
           "  --warmup N           linear warm-up steps from 0.001 x lr (demo 100, paper 0), then poly(0.9)\n"
           "  --clip C             full-model gradient-norm clip, 0 = off (demo 1.0, paper 0.01)\n"
           "  --scale LO,HI        random scale of each side (demo 0.75,1.25)\n"
           "  --resize-short LIST  random short side from LIST (comma-separated; replaces --scale);\n"
           "                       paper 512,614,...,2048 = int(x * 0.1 * 1024) for x = 5..20\n"
           "  --max-long N         cap on the long side with --resize-short (paper 4096)\n"
           "  --flip on|off        random horizontal flip (on)\n"
           "  --color-aug on|off   ColorAugSSD photometric augmentation (demo off, paper on)\n"
           "  --sampler S          random (with replacement) | perm (random permutations; paper)\n"
           "  --mask-ratio R       MAE mask ratio (demo: the model's, 0.8; paper 0.85)\n"
           "  --loss-pixels P      MAE loss over all | masked pixels (demo masked, paper all)\n"
           "  --backbone-lr-scale S  learning rate of f relative to lr (demo 1, paper 0.1)\n"
           "  --wd-exempt on|off   no weight decay on norms, embeddings, position tables (demo off, paper on)\n"
           "  --drop-path R        stochastic depth rate of Swin (demo 0, paper 0.3)\n"
           "  --init CKPT          start f and h from a model checkpoint (g from scratch)\n"
           "  --init-swin FILE     start f from a Swin encoder export (dev/convert_swin.py; h, g from scratch)\n"
           "  --resume             continue from CKPT.opt, the resume state (model, AdamW, step, RNG in one\n"
           "                       file) written beside CKPT at every save; bit for bit as if never stopped\n"
           "  --no-mae             Main Task Only (the paper's baseline): train f and h on the set loss\n"
           "                       alone, no MAE head and no masked inputs (the 4th channel is all ones);\n"
           "                       g keeps its random initialisation (--seed) in the checkpoint (default off)\n"
           "  --save-every N       checkpoint every N steps (demo 500, paper 5000)\n"
           "  --val DIR            held-out set (any layout above): mIoU at the end (and every --val-every)\n"
           "  --val-split S        split of a Cityscapes / KITTI-STEP --val root (default val)\n"
           "  --val-every N        (default 0 = only at the end)\n"
           "  --seed S             (default 1)\n"
           "  --stop-after N       stop after step N as if interrupted (tests of --resume)\n"
           "  --device D           cpu | cuda | auto (default auto)\n"
           "  --gpus N             data parallel over N GPUs of this node (one process each, NCCL): each step's\n"
           "                       batch split over them, gradients summed; rank 0 writes the checkpoints.\n"
           "                       Equals one GPU with the same --micro-batch (default 1; see README)\n");
}

// ----------------------------------------------------------------------------
// settings

static void defaults_demo(TrainArgs* a) {
    a->size = "default"; a->classes = 8; a->steps = 2000; a->batch = 4;
    a->aug.crop_w = 128; a->aug.crop_h = 96; a->aug.n_short = 0; a->aug.max_long = 0;
    a->aug.min_scale = 0.75f; a->aug.max_scale = 1.25f; a->aug.flip = 1; a->aug.color_aug = 0;
    a->warmup = 100; a->warmup_factor = 0.001f; a->save_every = 500; a->lr = 1e-4f;
    a->weight_decay = 0.05f; a->grad_clip = 1.0f; a->sampler_perm = 0;
}

static void defaults_paper(TrainArgs* a) {
    a->size = "swin-s"; a->classes = CITYSCAPES_NUM_CLASSES; a->steps = 90000; a->batch = 16;
    a->aug.crop_w = 1024; a->aug.crop_h = 512;
    a->aug.n_short = 0;
    for (int x = 5; x <= 20; x++) a->aug.short_sizes[a->aug.n_short++] = (int)(x * 0.1 * 1024);   // python's int()
    a->aug.max_long = 4096; a->aug.flip = 1; a->aug.color_aug = 1;
    a->warmup = 0; a->warmup_factor = 1.0f; a->save_every = 5000; a->lr = 1e-4f;
    a->weight_decay = 0.05f; a->grad_clip = 0.01f; a->sampler_perm = 1;
}

static int parse_on_off(const char* opt, const char* v) {
    if (!strcmp(v, "on")) return 1;
    if (!strcmp(v, "off")) return 0;
    ttt_die("%s: expected on or off, got '%s'", opt, v);
    return 0;
}

static int parse_size(const char* s, int* w, int* h) {
    char* end;
    long W = strtol(s, &end, 10);
    if (end == s || *end != 'x') return 0;
    const char* p = end + 1;
    long H = strtol(p, &end, 10);
    if (end == p || *end != 0 || W < 1 || H < 1 || W > 100000 || H > 100000) return 0;
    *w = (int)W; *h = (int)H;
    return 1;
}

static void parse_short_list(AugConfig* aug, const char* v) {
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", v);
    aug->n_short = 0;
    for (char* tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (aug->n_short == AUG_MAX_SHORT) ttt_die("--resize-short: at most %d sizes", AUG_MAX_SHORT);
        aug->short_sizes[aug->n_short++] = parse_int_arg("--resize-short", tok, 1);
    }
    if (aug->n_short == 0) ttt_die("--resize-short: expected a comma-separated list of sizes, got '%s'", v);
}

// ----------------------------------------------------------------------------
// the --out path: checked before anything is spent

// the folder of path (malloc'd): "." when it has none
static char* folder_of(const char* path) {
    char* d = strdup(path);
    if (!d) ttt_die("out of memory");
    char* slash = strrchr(d, '/');
    if (slash == NULL) { free(d); d = strdup("."); }
    else if (slash == d) slash[1] = 0;
    else *slash = 0;
    return d;
}

// 1 when the real path of folder a is b or lies inside b
static int folder_inside(const char* a, const char* b) {
    char ra[PATH_MAX], rb[PATH_MAX];
    if (!realpath(a, ra) || !realpath(b, rb)) return 0;
    size_t n = strlen(rb);
    return strncmp(ra, rb, n) == 0 && (ra[n] == 0 || ra[n] == '/' || (n == 1 && rb[0] == '/'));
}

// 1 when two paths name the same existing file
static int same_file(const char* a, const char* b) {
    struct stat sa, sb;
    return a && b && stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

// an existing file at path may be replaced only when it is a ttt checkpoint (of an earlier run)
static void check_replaceable(const char* path, const char* what) {
    struct stat st;
    if (stat(path, &st) != 0) return;
    int w, h, c;
    if (S_ISDIR(st.st_mode)) ttt_die("%s '%s' is a folder; give a checkpoint file name", what, path);
    if (has_image_ext(path) || stbi_info(path, &w, &h, &c))
        ttt_die("%s '%s' is an existing image; refusing to overwrite it", what, path);
    FILE* fp = fopen(path, "rb");
    int magic = 0;
    if (fp == NULL || fread(&magic, sizeof(int), 1, fp) != 1 || magic != CKPT_MAGIC)
        ttt_die("%s '%s' exists and is not a ttt checkpoint; refusing to overwrite it", what, path);
    fclose(fp);
}

// --out and the resume state beside it (OUT.opt): never inside or equal to an input (the data
// sets, --init, --init-swin), only replacing ttt checkpoints, in a writable folder. Checked
// before anything is spent, so a bad --out fails at once rather than at the first save.
static void check_out_path(const char* out, const char* opt_path, const TrainArgs* a, int resume) {
    char* dir = folder_of(out);
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        ttt_die("cannot write checkpoint '%s': folder '%s' does not exist", out, dir);
    if (folder_inside(dir, a->data_dir)) ttt_die("--out '%s' is inside the dataset folder '%s'; write it elsewhere", out, a->data_dir);
    if (a->val_dir && folder_inside(dir, a->val_dir)) ttt_die("--out '%s' is inside the validation folder '%s'; write it elsewhere", out, a->val_dir);
    if (access(dir, W_OK) != 0) ttt_die("cannot write checkpoint '%s': folder '%s': %s", out, dir, strerror(errno));
    free(dir);
    const char* inputs[2] = {a->init_path, a->init_swin};
    const char* names[2] = {"--init", "--init-swin"};
    for (int i = 0; i < 2; i++)
        if (same_file(out, inputs[i]) || same_file(opt_path, inputs[i]))
            ttt_die("--out '%s' would overwrite the %s file '%s'; write it elsewhere", out, names[i], inputs[i]);
    check_replaceable(out, "--out");
    check_replaceable(opt_path, "the resume state");
    if (resume && access(opt_path, F_OK) != 0)
        ttt_die("--resume: no resume state '%s' (written beside the checkpoint at every save)", opt_path);
}

// ----------------------------------------------------------------------------
// f from a Swin encoder export

static void init_f_from_swin(Model* m, const char* path) {
    SwinConfig sc;
    float* src = swin_load_hf_export(path, &sc);
    const SwinConfig* mc = &model_config(m)->swin;
    int same = sc.embed_dim == mc->embed_dim && sc.window == mc->window && sc.mlp_ratio == mc->mlp_ratio;
    for (int s = 0; s < 4; s++) same = same && sc.depths[s] == mc->depths[s] && sc.num_heads[s] == mc->num_heads[s];
    if (!same || (sc.in_chans != 3 && sc.in_chans != mc->in_chans))
        ttt_die("'%s' holds a Swin of embed %d, depths %d %d %d %d, window %d, %d input channels; the model "
                "(--size) has embed %d, depths %d %d %d %d, window %d, %d input channels", path, sc.embed_dim,
                sc.depths[0], sc.depths[1], sc.depths[2], sc.depths[3], sc.window, sc.in_chans, mc->embed_dim,
                mc->depths[0], mc->depths[1], mc->depths[2], mc->depths[3], mc->window, mc->in_chans);
    size_t n = model_num_params(m, 0);
    float* f = src;
    if (sc.in_chans == 3) {
        // ImageNet weights: the patch embedding (E, 4, 4, 3) gets a 4th input channel of zero
        // weights, so f computes exactly the pretrained function of the RGB channels at first
        int E = sc.embed_dim;
        f = (float*)mallocCheck(n * sizeof(float));
        for (size_t i = 0; i < (size_t)E * 16; i++) {
            for (int c = 0; c < 3; c++) f[i * 4 + c] = src[i * 3 + c];
            f[i * 4 + 3] = 0.0f;
        }
        memcpy(f + (size_t)E * 16 * 4, src + (size_t)E * 16 * 3, (n - (size_t)E * 16 * 4) * sizeof(float));
    }
    ttt_to_device(model_params_device(m), f, n * sizeof(float));
    model_snapshot_ttt(m);
    if (f != src) free(f);
    free(src);
}

// ----------------------------------------------------------------------------
// sampling and the batch

// detectron2's TrainingSampler: an endless stream of random permutations of the set. The
// permutation of epoch e comes from its own seed, so position p of the stream is a pure
// function of (seed, p) and a resumed run continues it exactly.
typedef struct { int n, epoch; int* perm; uint64_t seed; } PermSampler;

static int perm_sample(PermSampler* s, long long pos) {
    int e = (int)(pos / s->n);
    if (e != s->epoch) {
        Rng r;
        rng_seed(&r, s->seed * 1000003ULL + (uint64_t)e * 7919ULL + 17ULL);
        for (int i = 0; i < s->n; i++) s->perm[i] = i;
        for (int i = s->n - 1; i > 0; i--) { int j = rng_int(&r, i + 1); int t = s->perm[i]; s->perm[i] = s->perm[j]; s->perm[j] = t; }
        s->epoch = e;
    }
    return s->perm[pos % s->n];
}

// decode and augment the batch (OpenMP over images); the draws were made in order before
static void load_batch(const LabeledSet* ds, const int* idx, const AugDraw* draws, int B, const AugConfig* aug,
                       int K, float* imgs, unsigned char* labs) {
    char* errs = (char*)callocCheck((size_t)B, 2048);
    int first_bad = B;
    size_t npix = (size_t)aug->crop_h * aug->crop_w;
    #pragma omp parallel for schedule(dynamic)
    for (int b = 0; b < B; b++) {
        int i = idx[b], H, W;
        char* err = errs + (size_t)b * 2048;
        unsigned char* img = image_try_load_u8(ds->images[i], &H, &W, err, 2048);
        unsigned char* lab = NULL;
        if (img && (H != ds->H[i] || W != ds->W[i])) {
            snprintf(err, 2048, "image '%s' changed size since it was listed (%dx%d, now %dx%d)", ds->images[i],
                     ds->W[i], ds->H[i], W, H);
        } else if (img) {
            lab = label_try_load_format(ds->labels[i], ds->fmt[i], K, H, W, NULL, NULL, err, 2048);
            if (lab) aug_apply(aug, &draws[b], img, lab, H, W, imgs + (size_t)b * npix * 3, labs + (size_t)b * npix);
        }
        if (!lab) {
            #pragma omp critical
            if (b < first_bad) first_bad = b;
        }
        free(img); free(lab);
    }
    if (first_bad < B) ttt_die("%s", errs + (size_t)first_bad * 2048);
    free(errs);
}

// mIoU of h(f(x)) over a held-out set at its own size (all its images share one size)
static double validate(Model* trained, const LabeledSet* vs, int K) {
    int H = vs->H[0], W = vs->W[0];
    for (int i = 1; i < vs->n; i++)
        if (vs->H[i] != H || vs->W[i] != W)
            ttt_die("validation image '%s' is %dx%d but the first is %dx%d (all must match)", vs->images[i], vs->W[i], vs->H[i], W, H);
    Model* vm = model_create_sharing(trained, 1, H, W);   // the same weights, buffers of this size
    int64_t* conf = (int64_t*)callocCheck((size_t)K * K, sizeof(int64_t));
    unsigned char* pred = (unsigned char*)mallocCheck((size_t)H * W);
    float* frame = (float*)mallocCheck((size_t)H * W * 3 * sizeof(float));
    for (int i = 0; i < vs->n; i++) {
        char err[2048];
        int h, w;
        unsigned char* img = image_try_load_u8(vs->images[i], &h, &w, err, sizeof(err));
        if (!img) ttt_die("%s", err);
        for (size_t p = 0; p < (size_t)H * W * 3; p++) frame[p] = img[p] / 255.0f;
        free(img);
        unsigned char* lab = label_load_format(vs->labels[i], vs->fmt[i], K, H, W, NULL, NULL);
        model_predict(vm, frame, pred);
        confusion_update(conf, pred, lab, (size_t)H * W, K);
        free(lab);
    }
    double miou = mean_iou(conf, K, NULL);
    free(conf); free(pred); free(frame); model_free(vm);
    return miou;
}

// detectron2's WarmupPolyLR (projects/DeepLab): lr * warmup(t) * (1 - t / T)^0.9, where
// warmup(t) = f + (1 - f) t / W for t < W (linear from factor f) and 1 after
static float learning_rate(const TrainArgs* a, int step) {
    float wf = 1.0f;
    if (step < a->warmup) { float alpha = (float)step / a->warmup; wf = a->warmup_factor * (1.0f - alpha) + alpha; }
    return a->lr * wf * powf(1.0f - (float)step / (float)a->steps, 0.9f);
}

static ModelConfig model_config_for_size(const TrainArgs* a, int classes) {
    if (!strcmp(a->size, "tiny")) return model_config_tiny(classes);
    if (!strcmp(a->size, "default")) return model_config_default(classes);
    if (!strcmp(a->size, "swin-s")) return model_config_swin_s(classes);
    ttt_die("--size must be tiny, default or swin-s, got '%s'", a->size);
    return model_config_tiny(classes);
}

// ----------------------------------------------------------------------------
// --task panoptic: the batch (image + segment-index map per image) and PQ on a held-out set

static void load_batch_panoptic(const PanopticSet* ds, const int* idx, const AugDraw* draws, int B, const AugConfig* aug,
                                float* imgs, unsigned char* labs, int* seg_classes, int* seg_counts) {
    char* errs = (char*)callocCheck((size_t)B, 2048);
    int first_bad = B;
    size_t npix = (size_t)aug->crop_h * aug->crop_w;
    #pragma omp parallel for schedule(dynamic)
    for (int b = 0; b < B; b++) {
        int i = idx[b], H, W, h, w;
        char* err = errs + (size_t)b * 2048;
        unsigned char* img = image_try_load_u8(ds->images[i], &H, &W, err, 2048);
        uint32_t* ids = NULL;
        unsigned char* lab = NULL;
        if (img && (H != ds->H[i] || W != ds->W[i])) {
            snprintf(err, 2048, "image '%s' changed size since it was listed (%dx%d, now %dx%d)", ds->images[i],
                     ds->W[i], ds->H[i], W, H);
        } else if (img) {
            ids = coco_panoptic_try_load(&ds->gt, &ds->gt.ann[i], H, W, &h, &w, err, 2048);
            if (ids) {
                lab = (unsigned char*)mallocCheck((size_t)H * W);
                seg_counts[b] = coco_panoptic_index_map(lab, seg_classes + (size_t)b * PANOPTIC_MAX_TRAIN_SEGMENTS, ids,
                                                        (size_t)H * W, &ds->gt.ann[i], err, 2048);
                if (seg_counts[b] < 0) { free(lab); lab = NULL; }
                else aug_apply(aug, &draws[b], img, lab, H, W, imgs + (size_t)b * npix * 3, labs + (size_t)b * npix);
            }
        }
        if (!lab) {
            #pragma omp critical
            if (b < first_bad) first_bad = b;
        }
        free(img); free(ids); free(lab);
    }
    if (first_bad < B) ttt_die("%s", errs + (size_t)first_bad * 2048);
    free(errs);
}

// PQ (COCO's rule, pooled) of h(f(x)) with Mask2Former's panoptic inference over a held-out set
static double validate_panoptic(Model* trained, const PanopticSet* vs) {
    const CocoCategories* cats = &vs->gt.cats;
    PQCat* stat = (PQCat*)callocCheck((size_t)cats->n + 1, sizeof(PQCat));
    int Hv = -1, Wv = -1, Q, K, H4, W4, Hm, Wm;
    Model* vm = NULL;
    float *cls = NULL, *msk = NULL;
    unsigned char* pred = NULL;
    for (int i = 0; i < vs->n; i++) {
        int H = vs->H[i], W = vs->W[i];
        if (H != Hv || W != Wv) {   // buffers of this size, the same weights
            if (vm) { model_free(vm); free(cls); free(msk); free(pred); }
            vm = model_create_sharing(trained, 1, H, W);
            model_prediction_sizes(vm, &Q, &K, &H4, &W4, &Hm, &Wm);
            cls = (float*)mallocCheck((size_t)Q * (K + 1) * sizeof(float));
            msk = (float*)mallocCheck((size_t)Q * H4 * W4 * sizeof(float));
            pred = (unsigned char*)mallocCheck((size_t)H * W);
            Hv = H; Wv = W;
        }
        char err[2048];
        int h, w;
        unsigned char* img = image_try_load_u8(vs->images[i], &h, &w, err, sizeof(err));
        if (!img) ttt_die("%s", err);
        float* frame = (float*)mallocCheck((size_t)H * W * 3 * sizeof(float));
        for (size_t p = 0; p < (size_t)H * W * 3; p++) frame[p] = img[p] / 255.0f;
        free(img);
        model_predict(vm, frame, pred);
        model_last_logits(vm, cls, msk);
        int* seg = (int*)mallocCheck((size_t)H * W * sizeof(int));
        PanopticSegment* segs = (PanopticSegment*)mallocCheck(((size_t)Q + 1) * sizeof(PanopticSegment));
        int n = m2f_panoptic_inference_resized(seg, segs, Q, cls, msk, Q, K, H4, W4, H, W, H, W, cats->isthing, 0.8f, 0.8f);
        uint32_t* pid = (uint32_t*)mallocCheck((size_t)H * W * sizeof(uint32_t));
        for (size_t p = 0; p < (size_t)H * W; p++) pid[p] = (uint32_t)seg[p];
        PanSeg* ps = (PanSeg*)mallocCheck(((size_t)n + 1) * sizeof(PanSeg));
        for (int k = 0; k < n; k++) { ps[k].id = segs[k].id; ps[k].category = segs[k].class_id; ps[k].iscrowd = 0; ps[k].area = segs[k].area; }
        uint32_t* gid = coco_panoptic_load(&vs->gt, &vs->gt.ann[i], H, W, &h, &w);
        const CocoPanopticAnn* a = &vs->gt.ann[i];
        PanSeg* gs = (PanSeg*)mallocCheck(((size_t)a->n + 1) * sizeof(PanSeg));
        memcpy(gs, a->seg, (size_t)a->n * sizeof(PanSeg));
        for (int k = 0; k < a->n; k++) if (gs[k].area < 0) { gs[k].area = 0; for (size_t p = 0; p < (size_t)H * W; p++) gs[k].area += gid[p] == gs[k].id; }
        if (pq_image(stat, gid, gs, a->n, pid, ps, n, (size_t)H * W, PQ_CROWD_COCO, err, sizeof(err)) != 0)
            ttt_die("scoring '%s': %s", vs->images[i], err);
        free(frame); free(seg); free(segs); free(pid); free(ps); free(gid); free(gs);
    }
    PQResult r = pq_average(stat, cats->isthing, cats->n, -1, NULL);
    if (vm) { model_free(vm); free(cls); free(msk); free(pred); }
    free(stat);
    return r.pq;
}

// ----------------------------------------------------------------------------

int main(int argc, char** argv) {
    TrainArgs a;
    memset(&a, 0, sizeof(a));
    a.recipe = "demo";
    for (int i = 1; i + 1 < argc; i++) if (!strcmp(argv[i], "--recipe")) a.recipe = argv[i + 1];
    if (!strcmp(a.recipe, "paper")) defaults_paper(&a);
    else if (!strcmp(a.recipe, "demo")) defaults_demo(&a);
    else ttt_die("--recipe must be demo or paper, got '%s'", a.recipe);
    a.split = "train"; a.val_split = "val"; a.seed = 1; a.device = "auto";
    a.mask_ratio = -1; a.backbone_lr_scale = -1; a.drop_path = -1; a.loss_all_pixels = -1; a.wd_exempt = -1;
    int resume = 0, stop_after = -1, scale_given = 0, short_given = 0, classes_given = 0, gpus = 1;
    for (int i = 1; i < argc; i++) {
        const char* k = argv[i];
        const char* v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "--help") || !strcmp(k, "-h")) { usage(); return 0; }
        if (!strcmp(k, "--resume")) { resume = 1; continue; }
        if (!strcmp(k, "--no-mae")) { a.no_mae = 1; continue; }
        if (!v) ttt_die("option %s needs a value (see --help)", k);
        i++;
        if (!strcmp(k, "--recipe")) continue;   // applied first, above
        else if (!strcmp(k, "--data")) a.data_dir = v;
        else if (!strcmp(k, "--split")) a.split = v;
        else if (!strcmp(k, "--task")) { a.task = task_parse(k, v); if (a.task == TASK_INSTANCE) ttt_die("--task: ./train takes semantic, panoptic or colorize (an instance model is a panoptic one)"); }
        else if (!strcmp(k, "--val")) a.val_dir = v;
        else if (!strcmp(k, "--val-split")) a.val_split = v;
        else if (!strcmp(k, "--out")) a.out_path = v;
        else if (!strcmp(k, "--init")) a.init_path = v;
        else if (!strcmp(k, "--init-swin")) a.init_swin = v;
        else if (!strcmp(k, "--size")) a.size = v;
        else if (!strcmp(k, "--classes")) { a.classes = parse_int_arg(k, v, 1); classes_given = 1; }
        else if (!strcmp(k, "--steps")) a.steps = parse_int_arg(k, v, 0);
        else if (!strcmp(k, "--batch")) a.batch = parse_int_arg(k, v, 1);
        else if (!strcmp(k, "--micro-batch")) a.micro_batch = parse_int_arg(k, v, 1);
        else if (!strcmp(k, "--crop")) { if (!parse_size(v, &a.aug.crop_w, &a.aug.crop_h)) ttt_die("--crop wants WxH, got '%s'", v); }
        else if (!strcmp(k, "--lr")) a.lr = parse_float_arg(k, v, 0.0f);
        else if (!strcmp(k, "--weight-decay")) a.weight_decay = parse_float_arg(k, v, 0.0f);
        else if (!strcmp(k, "--warmup")) a.warmup = parse_int_arg(k, v, 0);
        else if (!strcmp(k, "--clip")) a.grad_clip = parse_float_arg(k, v, 0.0f);
        else if (!strcmp(k, "--scale")) {
            if (sscanf(v, "%f,%f", &a.aug.min_scale, &a.aug.max_scale) != 2 || !(a.aug.min_scale > 0) || !(a.aug.max_scale >= a.aug.min_scale))
                ttt_die("--scale wants LO,HI with 0 < LO <= HI, got '%s'", v);
            scale_given = 1;
        }
        else if (!strcmp(k, "--resize-short")) { parse_short_list(&a.aug, v); short_given = 1; }
        else if (!strcmp(k, "--max-long")) a.aug.max_long = parse_int_arg(k, v, 1);
        else if (!strcmp(k, "--flip")) a.aug.flip = parse_on_off(k, v);
        else if (!strcmp(k, "--color-aug")) a.aug.color_aug = parse_on_off(k, v);
        else if (!strcmp(k, "--sampler")) {
            if (!strcmp(v, "perm")) a.sampler_perm = 1;
            else if (!strcmp(v, "random")) a.sampler_perm = 0;
            else ttt_die("--sampler must be random or perm, got '%s'", v);
        }
        else if (!strcmp(k, "--mask-ratio")) a.mask_ratio = parse_float_arg(k, v, 0.0f);
        else if (!strcmp(k, "--loss-pixels")) {
            if (!strcmp(v, "all")) a.loss_all_pixels = 1;
            else if (!strcmp(v, "masked")) a.loss_all_pixels = 0;
            else ttt_die("--loss-pixels must be all or masked, got '%s'", v);
        }
        else if (!strcmp(k, "--backbone-lr-scale")) a.backbone_lr_scale = parse_float_arg(k, v, 0.0f);
        else if (!strcmp(k, "--wd-exempt")) a.wd_exempt = parse_on_off(k, v);
        else if (!strcmp(k, "--drop-path")) a.drop_path = parse_float_arg(k, v, 0.0f);
        else if (!strcmp(k, "--save-every")) a.save_every = parse_int_arg(k, v, 0);
        else if (!strcmp(k, "--val-every")) a.val_every = parse_int_arg(k, v, 0);
        else if (!strcmp(k, "--seed")) a.seed = parse_int_arg(k, v, 0);
        else if (!strcmp(k, "--device")) a.device = v;
        else if (!strcmp(k, "--gpus")) gpus = parse_int_arg(k, v, 1);
        else if (!strcmp(k, "--stop-after")) stop_after = parse_int_arg(k, v, 1);
        else ttt_die("unknown option '%s' (see --help)", k);
    }
    if (!a.data_dir || !a.out_path) { usage(); ttt_die("--data and --out are required"); }
    if (a.classes > 254 && a.task != TASK_COLORIZE) ttt_die("--classes must be in 1..254");
    if ((a.task == TASK_PANOPTIC || a.task == TASK_COLORIZE) && a.val_dir == NULL && a.val_every > 0) ttt_die("--val-every needs --val");
    if (a.task == TASK_PANOPTIC && a.no_mae) ttt_die("--no-mae is for semantic training; give one of --no-mae and --task panoptic");
    if (a.task == TASK_COLORIZE) {   // color.c: h's classes are the ab bins; no labels, no colour jitter
        if (a.no_mae) ttt_die("--no-mae is for semantic training; give one of --no-mae and --task colorize");
        if (classes_given) ttt_die("--task colorize: the classes are the %d ab bins; drop --classes", COLOR_BINS);
        a.classes = COLOR_BINS;
        a.aug.color_aug = 0;
    }
    if (scale_given && short_given) ttt_die("--scale and --resize-short are two resize modes; give one");
    if (scale_given) a.aug.n_short = 0;   // --scale replaces the recipe's short-side list
    if (a.aug.n_short > 0 && a.aug.max_long < 1) a.aug.max_long = INT_MAX;
    if (a.mask_ratio >= 1.0f) ttt_die("--mask-ratio must be in [0, 1), got %g", a.mask_ratio);
    if (a.drop_path >= 1.0f) ttt_die("--drop-path must be in [0, 1), got %g", a.drop_path);
    if (a.init_path && a.init_swin) ttt_die("--init and --init-swin both set f; give one");
    if (resume && (a.init_path || a.init_swin)) ttt_die("--resume continues a run; it cannot take --init or --init-swin");
    if (a.batch < gpus) ttt_die("--batch %d over --gpus %d: every GPU needs at least one image per step", a.batch, gpus);
    ttt_cuda_precision();   // a bad TTT_PRECISION dies here, once, before anything is written
    dist_launch(gpus, a.device);   // --gpus N: one process per GPU from here on (dist.c)
    ttt_set_device(ttt_parse_device(a.device));

    ModelConfig cfg = model_config_for_size(&a, a.classes);
    cfg.colorize = a.task == TASK_COLORIZE;

    // everything the run needs is checked before any time is spent: the out path, the model it
    // starts from, the dataset (every header, every label's ids), the validation set (one size)
    char opt_path[4096];
    if (snprintf(opt_path, sizeof(opt_path), "%s.opt", a.out_path) >= (int)sizeof(opt_path)) ttt_die("--out: path too long");
    check_out_path(a.out_path, opt_path, &a, resume);
    // the checkpoints it starts from: kind, config and size checked before the data set is listed
    if (resume && model_read_resume_config(opt_path, 3).num_classes != a.classes)
        ttt_die("resume state '%s' has %d classes but --classes is %d", opt_path, model_read_resume_config(opt_path, 3).num_classes, a.classes);
    if (resume && model_read_resume_config(opt_path, 3).colorize != cfg.colorize)
        ttt_die("resume state '%s' is a %s model; this run is --task %s", opt_path, cfg.colorize ? "segmentation" : "colorization", task_name(a.task));
    if (a.init_path && model_read_config(a.init_path).colorize != cfg.colorize)
        ttt_die("--init '%s' is a %s model; this run is --task %s", a.init_path, cfg.colorize ? "segmentation" : "colorization", task_name(a.task));
    if (a.init_swin) swin_read_export_config(a.init_swin);
    double t_list = time_now_seconds();
    LabeledSet ds, vs;
    PanopticSet pds, pvs;
    ColorImageSet cds, cvs;   // --task colorize
    memset(&cds, 0, sizeof(cds)); memset(&cvs, 0, sizeof(cvs));
    memset(&ds, 0, sizeof(ds)); memset(&vs, 0, sizeof(vs));
    memset(&pds, 0, sizeof(pds)); memset(&pvs, 0, sizeof(pvs));
    if (a.task == TASK_PANOPTIC) {   // COCO panoptic: the classes are the annotation's categories
        pds = panoptic_set_list(a.data_dir, a.split, 1);
        if (classes_given && a.classes != pds.gt.cats.n)
            ttt_die("--classes %d, but '%s' has %d categories", a.classes, pds.gt.json_path, pds.gt.cats.n);
        a.classes = pds.gt.cats.n;
        if (a.classes > 254) ttt_die("'%s' has %d categories; at most 254", pds.gt.json_path, a.classes);
        cfg = model_config_for_size(&a, a.classes);
        if (a.val_dir) {
            pvs = panoptic_set_list(a.val_dir, a.val_split, 1);
            if (pvs.gt.cats.n != a.classes) ttt_die("'%s' has %d categories, the training set %d", pvs.gt.json_path, pvs.gt.cats.n, a.classes);
        }
        ds.n = pds.n; ds.H = pds.H; ds.W = pds.W; ds.layout = "coco-panoptic";   // sizes for the sampler and the draws
        if (a.val_dir) { vs.H = pvs.H; vs.W = pvs.W; }
    } else if (a.task == TASK_COLORIZE) {   // any colour images (color_stream.c)
        cds = color_image_list(a.data_dir);
        if (a.val_dir) cvs = color_image_list(a.val_dir);
        ds.n = cds.n; ds.H = cds.H; ds.W = cds.W; ds.layout = "colour images";
        if (a.val_dir) { vs.H = cvs.H; vs.W = cvs.W; }
    } else {
        ds = labeled_set_list(a.data_dir, a.split, a.classes, 1);
        if (a.val_dir) {
            vs = labeled_set_list(a.val_dir, a.val_split, a.classes, 1);
            for (int i = 1; i < vs.n; i++)   // validate() runs at one size: found now, not after training
                if (vs.H[i] != vs.H[0] || vs.W[i] != vs.W[0])
                    ttt_die("validation image '%s' is %dx%d but the first is %dx%d (all must match)", vs.images[i],
                            vs.W[i], vs.H[i], vs.W[0], vs.H[0]);
        }
    }
    printf("train: %d images (%s layout) from %s, every label checked in %.1fs\n", ds.n, ds.layout, a.data_dir,
           time_now_seconds() - t_list);

    Model* m;
    Rng rng;
    rng_seed(&rng, (uint64_t)a.seed);
    int start = 0;
    // the activations are planned for a micro-batch: the whole batch (a GPU's share of it with
    // --gpus) unless it does not fit
    ModelConfig plan_cfg = resume ? model_read_resume_config(opt_path, 3) : cfg;
    int per_gpu = (a.batch + dist_world() - 1) / dist_world();
    int micro = a.micro_batch ? a.micro_batch : model_auto_micro_batch(&plan_cfg, per_gpu, a.aug.crop_h, a.aug.crop_w,
                                  a.val_dir ? model_predict_bytes(&plan_cfg, vs.H[0], vs.W[0]) : 0, 1);
    if (micro > per_gpu) micro = per_gpu;
    if (resume) {   // everything comes from OUT.opt (OUT itself may be one save behind it)
        int extra[3];
        m = model_load_resume(opt_path, micro, a.aug.crop_h, a.aug.crop_w, extra, 3);
        if (model_config(m)->num_classes != a.classes)
            ttt_die("resume state '%s' has %d classes but --classes is %d", opt_path, model_config(m)->num_classes, a.classes);
        start = extra[0];
        if (start < 0 || start > a.steps) ttt_die("resume state '%s' is at step %d, outside 0..--steps %d", opt_path, start, a.steps);
        memcpy(&rng.state, extra + 1, sizeof(uint64_t));   // the RNG continues where it stopped
    } else {
        m = model_create(&cfg, micro, a.aug.crop_h, a.aug.crop_w);
        model_init_random(m, (uint64_t)a.seed);
        if (a.init_path) model_load_f_h(m, a.init_path);
        if (a.init_swin) init_f_from_swin(m, a.init_swin);
        if (a.task == TASK_COLORIZE) {   // the rebalancing weights of --data (a resume state holds them)
            float w[COLOR_BINS];
            color_train_weights(&cds, w);
            model_set_color_weights(m, w);
        }
    }
    // the model recipe: the recipe's, then each flag
    ModelRecipe r = !strcmp(a.recipe, "paper") ? model_recipe_paper() : model_recipe_demo(model_config(m));
    if (a.mask_ratio >= 0) r.mask_ratio = a.mask_ratio;
    if (a.loss_all_pixels >= 0) r.loss_all_pixels = a.loss_all_pixels;
    if (a.backbone_lr_scale >= 0) r.backbone_lr_scale = a.backbone_lr_scale;
    if (a.wd_exempt >= 0) r.wd_exempt = a.wd_exempt;
    if (a.drop_path >= 0) r.drop_path = a.drop_path;
    model_set_recipe(m, &r);
    // the set loss of the released config (maskformer2_R50_bs16_90k.yaml): CLASS_WEIGHT 2,
    // MASK_WEIGHT 5, DICE_WEIGHT 5, NO_OBJECT_WEIGHT 0.1, TRAIN_NUM_POINTS 12544,
    // OVERSAMPLE_RATIO 3, IMPORTANCE_SAMPLE_RATIO 0.75: set_loss_config_default() already
    SetLossConfig sl = set_loss_config_default();
    model_set_loss_config(m, &sl);
    dist_attach(m);   // --gpus N: steps sum their gradients over the GPUs

    // the settings line: everything that decides this run
    char shorts[512] = "";
    if (a.aug.n_short > 0) {
        for (int i = 0; i < a.aug.n_short; i++)
            snprintf(shorts + strlen(shorts), sizeof(shorts) - strlen(shorts), "%s%d", i ? "," : "", a.aug.short_sizes[i]);
    }
    char resize[600];
    if (a.aug.n_short > 0) {
        if (a.aug.max_long == INT_MAX) snprintf(resize, sizeof(resize), "resize-short=%s max-long=none", shorts);
        else snprintf(resize, sizeof(resize), "resize-short=%s max-long=%d", shorts, a.aug.max_long);
    } else {
        snprintf(resize, sizeof(resize), "scale=%g,%g", a.aug.min_scale, a.aug.max_scale);
    }
    const ModelConfig* mc = model_config(m);
    printf("settings: recipe=%s data=%s layout=%s split=%s images=%d classes=%d size=%s steps=%d batch=%d micro-batch=%d crop=%dx%d "
           "lr=%g schedule=poly0.9 warmup=%d warmup-factor=%g optimizer=adamw(0.9,0.999,1e-8) weight-decay=%g clip=%g "
           "%s flip=%s color-aug=%s sampler=%s mask-ratio=%g mask-patch=%d loss-pixels=%s backbone-lr-scale=%g "
           "wd-exempt=%s drop-path=%g set-loss=ce%g,mask%g,dice%g,no-object%g,points%d init=%s init-swin=%s "
           "resume=%s val=%s seed=%d device=%s precision=%s mae=%s\n",
           a.recipe, a.data_dir, ds.layout, a.split, ds.n, mc->num_classes, a.size, a.steps, a.batch, micro, a.aug.crop_w,
           a.aug.crop_h, a.lr, a.warmup, a.warmup_factor, a.weight_decay, a.grad_clip, resize, a.aug.flip ? "on" : "off",
           a.aug.color_aug ? "on" : "off", a.sampler_perm ? "perm" : "random", r.mask_ratio, mc->mae_patch,
           r.loss_all_pixels ? "all" : "masked", r.backbone_lr_scale, r.wd_exempt ? "on" : "off", r.drop_path,
           sl.w_class, sl.w_mask, sl.w_dice, sl.no_object_weight, sl.num_points, a.init_path ? a.init_path : "none",
           a.init_swin ? a.init_swin : "none", resume ? "on" : "off", a.val_dir ? a.val_dir : "none", a.seed,
           ttt_device_name(ttt_device), matmul_precision_name(), a.no_mae ? "off (main task only)" : "on");
    if (resume) printf("train: resumed from %s at step %d\n", a.out_path, start);
    printf("train: parameters f %zu, h %zu, g %zu; activations %.2f GB for %d crops of %dx%d%s\n",
           model_num_params(m, 0), model_num_params(m, 1), model_num_params(m, 2),
           model_activation_bytes(mc, micro, a.aug.crop_h, a.aug.crop_w) / 1e9, micro, a.aug.crop_w, a.aug.crop_h,
           micro < a.batch ? " (each step in micro-batches)" : "");
    fflush(stdout);

    size_t npix = (size_t)a.aug.crop_h * a.aug.crop_w;
    float* imgs = (float*)mallocCheck((size_t)a.batch * npix * 3 * sizeof(float));
    unsigned char* labs = (unsigned char*)mallocCheck((size_t)a.batch * npix);
    int* idx = (int*)mallocCheck((size_t)a.batch * sizeof(int));
    int* seg_classes = (int*)mallocCheck((size_t)a.batch * PANOPTIC_MAX_TRAIN_SEGMENTS * sizeof(int));
    int* seg_counts = (int*)mallocCheck((size_t)a.batch * sizeof(int));
    AugDraw* draws = (AugDraw*)mallocCheck((size_t)a.batch * sizeof(AugDraw));
    int cQ, cK, cH4 = 0, cW4 = 0, cHm, cWm;   // --task colorize: targets at the model's map
    model_prediction_sizes(m, &cQ, &cK, &cH4, &cW4, &cHm, &cWm);
    size_t n_tgt = a.task == TASK_COLORIZE ? (size_t)a.batch * cH4 * cW4 * COLOR_NEIGHBOURS : 1;
    int* color_ids = (int*)mallocCheck(n_tgt * sizeof(int));
    float* color_w = (float*)mallocCheck(n_tgt * sizeof(float));
    PermSampler ps = {ds.n, -1, (int*)mallocCheck((size_t)ds.n * sizeof(int)), (uint64_t)a.seed};
    OptConfig opt = opt_config_ttt();
    opt.weight_decay = a.weight_decay;
    double t0 = time_now_seconds(), first_loss = -1.0, ema = 0.0;
    int stopped = 0;
    for (int step = start; step < a.steps; step++) {
        // every random draw of the batch in order, then the decoding in parallel
        for (int b = 0; b < a.batch; b++) {
            idx[b] = a.sampler_perm ? perm_sample(&ps, (long long)step * a.batch + b) : rng_int(&rng, ds.n);
            draws[b] = aug_draw(&a.aug, ds.H[idx[b]], ds.W[idx[b]], &rng);
        }
        opt.lr = learning_rate(&a, step);
        float lm, ls = 0.0f;
        if (a.task == TASK_PANOPTIC) {
            load_batch_panoptic(&pds, idx, draws, a.batch, &a.aug, imgs, labs, seg_classes, seg_counts);
            model_train_step_panoptic(m, imgs, labs, seg_classes, seg_counts, a.batch, &opt, a.grad_clip, &rng, &lm, &ls);
        } else if (a.task == TASK_COLORIZE) {
            color_train_batch(&cds, idx, draws, a.batch, &a.aug, cH4, cW4, imgs, color_ids, color_w);
            model_train_step_colorize(m, imgs, color_ids, color_w, a.batch, &opt, a.grad_clip, &rng, &lm, &ls);
        } else {
            load_batch(&ds, idx, draws, a.batch, &a.aug, mc->num_classes, imgs, labs);
            if (a.no_mae) model_train_step_main_only(m, imgs, labs, a.batch, &opt, a.grad_clip, &rng, &lm);
            else model_train_step(m, imgs, labs, a.batch, &opt, a.grad_clip, &rng, &lm, &ls);
        }
        if (!isfinite(lm) || !isfinite(ls)) ttt_die("step %d: the loss is not finite (main %g, mae %g); lower --lr", step + 1, lm, ls);
        double total = lm + ls;
        if (first_loss < 0) { first_loss = total; ema = total; }
        ema = 0.9 * ema + 0.1 * total;
        int done = step + 1 - start;
        double el = time_now_seconds() - t0, per = el / done;
        if (done == 1 || (step + 1) % 10 == 0 || step + 1 == a.steps) {
            printf("step %5d/%d | main %.4f | mae %.4f | avg %.4f | lr %.2e | %.1f img/s | ETA %.0fs\n",
                   step + 1, a.steps, lm, ls, ema, opt.lr, a.batch / per, per * (a.steps - step - 1));
            fflush(stdout);
        }
        if (is_main_rank() && ((a.save_every > 0 && (step + 1) % a.save_every == 0) || step + 1 == a.steps || step + 1 == stop_after)) {
            // the resume state first (one file, one rename: complete at any moment), then the
            // model for ./stream (its own rename); a kill between the two leaves OUT one save
            // behind OUT.opt, which --resume reads alone
            int extra[3] = {step + 1};
            memcpy(extra + 1, &rng.state, sizeof(uint64_t));
            model_save_resume(m, opt_path, extra, 3);
            model_save(m, a.out_path);
        }
        if (a.val_dir && a.val_every > 0 && (step + 1) % a.val_every == 0 && step + 1 < a.steps) {
            if (a.task == TASK_PANOPTIC) printf("val  step %d: PQ %.4f\n", step + 1, validate_panoptic(m, &pvs));
            else if (a.task == TASK_COLORIZE) { double p, q; color_validate(m, &cvs, &p, &q); printf("val  step %d: PSNR %.4f SSIM %.4f\n", step + 1, p, q); }
            else printf("val  step %d: mIoU %.4f\n", step + 1, validate(m, &vs, mc->num_classes));
        }
        if (step + 1 == stop_after) { printf("train: stopped after step %d (--stop-after)\n", stop_after); stopped = 1; break; }
    }
    if (!stopped) {
        if (a.steps == start && is_main_rank()) model_save(m, a.out_path);
        dist_check_same_weights(m, "at the end");
        printf("train: done, %d steps in %.1fs; loss %.4f -> %.4f (smoothed); checkpoint %s\n",
               a.steps - start, time_now_seconds() - t0, first_loss, ema, a.out_path);
        if (a.val_dir && a.task == TASK_COLORIZE) {
            double p, q;
            color_validate(m, &cvs, &p, &q);
            printf("val: PSNR %.4f dB, SSIM %.4f of the colourised gray images of %s (means)\n", p, q, a.val_dir);
        } else if (a.val_dir && a.task == TASK_PANOPTIC)
            printf("val: PQ of h(f(x)) (Mask2Former panoptic inference, COCO's rule) on %s: %.4f\n", a.val_dir, validate_panoptic(m, &pvs));
        else if (a.val_dir) printf("val: mIoU of h(f(x)) on %s: %.4f\n", a.val_dir, validate(m, &vs, mc->num_classes));
    }
    model_free(m);
    free(imgs); free(labs); free(idx); free(draws); free(ps.perm); free(seg_classes); free(seg_counts);
    free(color_ids); free(color_w);
    if (a.task == TASK_PANOPTIC) { panoptic_set_free(&pds); if (a.val_dir) panoptic_set_free(&pvs); }
    else if (a.task == TASK_COLORIZE) { color_image_set_free(&cds); if (a.val_dir) color_image_set_free(&cvs); }
    else { labeled_set_free(&ds); if (a.val_dir) labeled_set_free(&vs); }
    return 0;
}
