// train.c: joint training of the Y model (f, h and g) on labeled still images.
//
//   loss = set_loss(h(f(x)), y) + masked-pixel MSE(g(f(x~)), x)      (model_train_step)
//
// x is a random crop of a randomly scaled and flipped training image, x~ the same crop with
// 80% of its 16x16 patches blacked out and the 4th input channel set on them. AdamW on all
// parameters, linear warm-up then poly(0.9) decay of the learning rate, gradients clipped
// to a global L2 norm.
//
// Data: DIR/images/STEM.{png,jpg,jpeg,bmp} with DIR/labels/STEM.png (8-bit class ids, 255 =
// ignore), as `./gen stills DIR` writes them. Every image is loaded once at start-up and
// checked (label present, same size, ids < K or 255).
//
// Files: --out PATH (default data/model.bin) gets the model checkpoint (what ./stream reads)
// every --ckpt-every steps and at the end; PATH.resume gets the whole training state
// (parameters, AdamW moments and step, the RNG, the step counter), so
// `./train DIR --resume PATH.resume` continues bit for bit as if never interrupted.
//
// The randomness of the whole run (data order, augmentation, masks, set-loss points) comes
// from one Rng seeded by --seed and saved in the resume file.
#include "ttt.h"
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#define RESUME_INTS 8   // step, total steps, rng low, rng high, seed low, seed high, K, reserved

typedef struct {
    const char* data_dir;
    const char* val_dir;
    const char* out_path;
    const char* resume_path;
    const char* init_path;
    const char* config;
    const char* device;
    int keep_g;
    int steps, batch, crop_W, crop_H, warmup, ckpt_every, val_every, log_every, classes;
    float lr, weight_decay, grad_clip, scale_min, scale_max;
    uint64_t seed;
} Args;

typedef struct {
    int n, K_seen;               // images, 1 + largest class id present
    int* H; int* W;
    float** rgb;                 // (H, W, 3) in [0, 1]
    unsigned char** label;       // (H, W)
    char** name;                 // for messages
} Dataset;

static void usage(void) {
    printf(
        "usage: ./train DIR [options]\n"
        "Joint training of the Y model (Swin f, Mask2Former h, MAE head g) on DIR/images/*.png\n"
        "with labels DIR/labels/STEM.png (class ids, 255 = ignore); `./gen stills DIR` writes such a folder.\n"
        "\n"
        "  --out PATH        model checkpoint (default data/model.bin); PATH.resume holds the\n"
        "                    full training state\n"
        "  --resume FILE     continue from a resume file (bit-for-bit same as an uninterrupted run)\n"
        "  --init CKPT       start f and h from a model checkpoint; g from scratch unless --keep-g\n"
        "  --keep-g          with --init: keep the checkpoint's g too\n"
        "  --config NAME     default | tiny | swin_s (default: default); ignored with --init/--resume\n"
        "  --classes K       number of classes (default: 1 + the largest id in the labels)\n"
        "  --steps N         optimizer steps (default 2000)\n"
        "  --batch B         images per step (default 4)\n"
        "  --size WxH        training crop (default 128x96)\n"
        "  --scale LO,HI     random rescale range before the crop (default 0.5,2.0)\n"
        "  --lr LR           peak learning rate (default 3e-4)\n"
        "  --wd WD           AdamW weight decay (default 0.05)\n"
        "  --warmup N        linear warm-up steps (default 100), then poly(0.9) decay to 0\n"
        "  --clip C          clip gradients to global L2 norm C, 0 = off (default 1.0)\n"
        "  --ckpt-every N    write the checkpoint and resume file every N steps (default 200)\n"
        "  --val DIR         held-out folder (same layout): mIoU of h o f at the end\n"
        "  --val-every N     also every N steps (default 0 = only at the end)\n"
        "  --log-every N     progress line every N steps (default 10)\n"
        "  --seed S          seed of all randomness (default 1)\n"
        "  --device D        cpu | cuda | auto (default auto)\n"
        "  --help            this text\n");
}

// ----------------------------------------------------------------------------
// data

static int has_image_ext(const char* name) {
    const char* dot = strrchr(name, '.');
    if (!dot) return 0;
    char ext[8] = {0};
    for (int i = 0; i < 7 && dot[1 + i]; i++) ext[i] = (char)tolower((unsigned char)dot[1 + i]);
    return !strcmp(ext, "png") || !strcmp(ext, "jpg") || !strcmp(ext, "jpeg") || !strcmp(ext, "bmp");
}

static int cmp_str(const void* a, const void* b) { return strcmp(*(char* const*)a, *(char* const*)b); }

// every image of DIR/images with its label DIR/labels/STEM.png; dies naming the bad file
static Dataset load_dataset(const char* dir, int K_max) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/images", dir);
    DIR* d = opendir(path);
    if (!d) ttt_die("cannot open image folder '%s': %s (expected DIR/images and DIR/labels)", path, strerror(errno));
    int cap = 64, n = 0;
    char** names = (char**)mallocCheck(cap * sizeof(char*));
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || !has_image_ext(e->d_name)) continue;
        if (n == cap) { cap *= 2; names = (char**)realloc(names, cap * sizeof(char*)); if (!names) ttt_die("out of memory"); }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (n == 0) ttt_die("no images (.png/.jpg/.jpeg/.bmp) in '%s'", path);
    qsort(names, n, sizeof(char*), cmp_str);
    Dataset ds = {0};
    ds.n = n;
    ds.H = (int*)mallocCheck(n * sizeof(int)); ds.W = (int*)mallocCheck(n * sizeof(int));
    ds.rgb = (float**)mallocCheck(n * sizeof(float*));
    ds.label = (unsigned char**)mallocCheck(n * sizeof(unsigned char*));
    ds.name = names;
    for (int i = 0; i < n; i++) {
        char ipath[4096], lpath[4096], stem[1024];
        snprintf(ipath, sizeof(ipath), "%s/images/%s", dir, names[i]);
        snprintf(stem, sizeof(stem), "%s", names[i]);
        char* dot = strrchr(stem, '.'); if (dot) *dot = 0;
        snprintf(lpath, sizeof(lpath), "%s/labels/%s.png", dir, stem);
        if (access(lpath, F_OK) != 0) ttt_die("image '%s' has no label: '%s' is missing", ipath, lpath);
        ds.rgb[i] = image_load(ipath, &ds.H[i], &ds.W[i]);
        int lh, lw;
        ds.label[i] = label_load(lpath, ds.H[i], ds.W[i], &lh, &lw);
        for (size_t p = 0; p < (size_t)lh * lw; p++) {
            int id = ds.label[i][p];
            if (id == 255) continue;
            if (id >= K_max) ttt_die("label '%s' has class id %d at pixel (%zu, %zu); the model has %d classes (0..%d, 255 = ignore)",
                                     lpath, id, p % lw, p / lw, K_max, K_max - 1);
            if (id + 1 > ds.K_seen) ds.K_seen = id + 1;
        }
    }
    return ds;
}

static void free_dataset(Dataset* ds) {
    for (int i = 0; i < ds->n; i++) { free(ds->rgb[i]); free(ds->label[i]); free(ds->name[i]); }
    free(ds->rgb); free(ds->label); free(ds->name); free(ds->H); free(ds->W);
}

// One augmented sample: image i scaled by s (bilinear, align_corners=False; labels nearest),
// flipped left-right if flip, then the crop (cH, cW) at (oy, ox) of the scaled image; crop
// pixels beyond the scaled image are 0 (image) and 255 (label).
static void augment(const Dataset* ds, int i, float s, int flip, int oy, int ox, int cH, int cW,
                    float* out_rgb, unsigned char* out_label) {
    int H = ds->H[i], W = ds->W[i];
    int sH = (int)lrintf(H * s), sW = (int)lrintf(W * s);
    if (sH < 1) sH = 1;
    if (sW < 1) sW = 1;
    const float* src = ds->rgb[i];
    const unsigned char* lab = ds->label[i];
    for (int y = 0; y < cH; y++) {
        for (int x = 0; x < cW; x++) {
            float* o = out_rgb + ((size_t)y * cW + x) * 3;
            unsigned char* ol = out_label + (size_t)y * cW + x;
            int sy = y + oy, sx = x + ox;
            if (sy >= sH || sx >= sW) { o[0] = o[1] = o[2] = 0.0f; *ol = 255; continue; }
            if (flip) sx = sW - 1 - sx;
            // bilinear source position
            float fy = ((float)sy + 0.5f) * H / sH - 0.5f, fx = ((float)sx + 0.5f) * W / sW - 0.5f;
            if (fy < 0) fy = 0;
            if (fx < 0) fx = 0;
            int y0 = (int)fy, x0 = (int)fx;
            if (y0 > H - 1) y0 = H - 1;
            if (x0 > W - 1) x0 = W - 1;
            int y1 = y0 + 1 < H ? y0 + 1 : H - 1, x1 = x0 + 1 < W ? x0 + 1 : W - 1;
            float wy = fy - y0, wx = fx - x0;
            for (int c = 0; c < 3; c++) {
                float a = src[((size_t)y0 * W + x0) * 3 + c], b = src[((size_t)y0 * W + x1) * 3 + c];
                float cc = src[((size_t)y1 * W + x0) * 3 + c], dd = src[((size_t)y1 * W + x1) * 3 + c];
                o[c] = (1 - wy) * ((1 - wx) * a + wx * b) + wy * ((1 - wx) * cc + wx * dd);
            }
            // nearest (PyTorch mode="nearest"): src = floor(dst * H / sH)
            int ly = (int)((long long)sy * H / sH), lx = (int)((long long)sx * W / sW);
            *ol = lab[(size_t)ly * W + lx];
        }
    }
}

// a batch of B augmented crops; all randomness from rng in a fixed order
static void sample_batch(const Dataset* ds, const Args* a, Rng* rng, float* images, unsigned char* labels, int B) {
    int cH = a->crop_H, cW = a->crop_W;
    for (int b = 0; b < B; b++) {
        int i = rng_int(rng, ds->n);
        float s = a->scale_min + (a->scale_max - a->scale_min) * rng_uniform(rng);
        int flip = rng_int(rng, 2);
        int sH = (int)lrintf(ds->H[i] * s), sW = (int)lrintf(ds->W[i] * s);
        int oy = sH > cH ? rng_int(rng, sH - cH + 1) : 0;
        int ox = sW > cW ? rng_int(rng, sW - cW + 1) : 0;
        augment(ds, i, s, flip, oy, ox, cH, cW, images + (size_t)b * cH * cW * 3, labels + (size_t)b * cH * cW);
    }
}

// ----------------------------------------------------------------------------
// validation: mIoU of h o f (no TTT) over a folder; one model per image size

static double validate(const Model* trained, const Dataset* val, int K, int verbose) {
    double* inter = (double*)callocCheck(K, sizeof(double));
    double* uni = (double*)callocCheck(K, sizeof(double));
    Model* vm = NULL;
    int vH = 0, vW = 0;
    for (int i = 0; i < val->n; i++) {
        if (!vm || vH != val->H[i] || vW != val->W[i]) {
            model_free(vm);
            vH = val->H[i]; vW = val->W[i];
            vm = model_create(model_config(trained), 1, vH, vW);
            model_copy_params(vm, trained);
        }
        unsigned char* pred = (unsigned char*)mallocCheck((size_t)vH * vW);
        model_predict(vm, val->rgb[i], pred);
        for (size_t p = 0; p < (size_t)vH * vW; p++) {
            int g = val->label[i][p], q = pred[p];
            if (g == 255) continue;
            if (g == q) inter[g] += 1;
            uni[g] += 1;
            if (q != g && q < K) uni[q] += 1;
        }
        free(pred);
    }
    model_free(vm);
    double sum = 0; int cnt = 0;
    for (int k = 0; k < K; k++) if (uni[k] > 0) { sum += inter[k] / uni[k]; cnt++; }
    if (verbose) {
        printf("val per-class IoU:");
        for (int k = 0; k < K; k++) { if (uni[k] > 0) printf(" %d:%.3f", k, inter[k] / uni[k]); else printf(" %d:-", k); }
        printf("\n");
    }
    free(inter); free(uni);
    return cnt ? sum / cnt : 0.0;
}

// ----------------------------------------------------------------------------
// arguments

static int parse_int(const char* opt, const char* v, int lo) {
    char* end; long x = strtol(v, &end, 10);
    if (*v == 0 || *end != 0 || x < lo || x > 1000000000L) ttt_die("option %s expects an integer >= %d, got '%s'", opt, lo, v);
    return (int)x;
}

static float parse_float(const char* opt, const char* v, float lo) {
    char* end; float x = strtof(v, &end);
    if (*v == 0 || *end != 0 || !isfinite(x) || x < lo) ttt_die("option %s expects a number >= %g, got '%s'", opt, lo, v);
    return x;
}

static Args parse_args(int argc, char** argv) {
    Args a;
    memset(&a, 0, sizeof(a));
    a.out_path = "data/model.bin"; a.config = "default"; a.device = "auto";
    a.steps = 2000; a.batch = 4; a.crop_W = 128; a.crop_H = 96; a.warmup = 100; a.ckpt_every = 200;
    a.log_every = 10; a.lr = 3e-4f; a.weight_decay = 0.05f; a.grad_clip = 1.0f;
    a.scale_min = 0.5f; a.scale_max = 2.0f; a.seed = 1;
    for (int i = 1; i < argc; i++) {
        const char* o = argv[i];
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) { usage(); exit(0); }
        if (!strcmp(o, "--keep-g")) { a.keep_g = 1; continue; }
        if (o[0] != '-') {
            if (a.data_dir) ttt_die("more than one data folder given ('%s' and '%s')", a.data_dir, o);
            a.data_dir = o; continue;
        }
        if (i + 1 >= argc) ttt_die("option '%s' needs a value (--help for usage)", o);
        const char* v = argv[++i];
        if (!strcmp(o, "--out")) a.out_path = v;
        else if (!strcmp(o, "--resume")) a.resume_path = v;
        else if (!strcmp(o, "--init")) a.init_path = v;
        else if (!strcmp(o, "--config")) a.config = v;
        else if (!strcmp(o, "--classes")) a.classes = parse_int(o, v, 1);
        else if (!strcmp(o, "--steps")) a.steps = parse_int(o, v, 1);
        else if (!strcmp(o, "--batch")) a.batch = parse_int(o, v, 1);
        else if (!strcmp(o, "--size")) {
            if (sscanf(v, "%dx%d", &a.crop_W, &a.crop_H) != 2 || a.crop_W < 1 || a.crop_H < 1 || a.crop_W > 8192 || a.crop_H > 8192)
                ttt_die("option --size expects WxH, e.g. 128x96, got '%s'", v);
        } else if (!strcmp(o, "--scale")) {
            if (sscanf(v, "%f,%f", &a.scale_min, &a.scale_max) != 2 || !(a.scale_min > 0) || !(a.scale_max >= a.scale_min) || a.scale_max > 16)
                ttt_die("option --scale expects LO,HI with 0 < LO <= HI <= 16, got '%s'", v);
        }
        else if (!strcmp(o, "--lr")) a.lr = parse_float(o, v, 0);
        else if (!strcmp(o, "--wd")) a.weight_decay = parse_float(o, v, 0);
        else if (!strcmp(o, "--warmup")) a.warmup = parse_int(o, v, 0);
        else if (!strcmp(o, "--clip")) a.grad_clip = parse_float(o, v, 0);
        else if (!strcmp(o, "--ckpt-every")) a.ckpt_every = parse_int(o, v, 1);
        else if (!strcmp(o, "--val")) a.val_dir = v;
        else if (!strcmp(o, "--val-every")) a.val_every = parse_int(o, v, 0);
        else if (!strcmp(o, "--log-every")) a.log_every = parse_int(o, v, 1);
        else if (!strcmp(o, "--seed")) a.seed = (uint64_t)strtoull(v, NULL, 10);
        else if (!strcmp(o, "--device")) a.device = v;
        else ttt_die("unknown option '%s' (--help for usage)", o);
    }
    if (!a.data_dir) ttt_die("expected a data folder: ./train DIR (--help for usage)");
    if (a.resume_path && a.init_path) ttt_die("--resume and --init exclude each other");
    return a;
}

// fail before training if PATH cannot be written (a checkpoint goes to PATH.tmp, renamed)
static void check_writable(const char* path) {
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE* fp = fopen(tmp, "wb");
    if (!fp) ttt_die("cannot write checkpoint '%s': %s", tmp, strerror(errno));
    fclose(fp);
    remove(tmp);
}

static ModelConfig config_by_name(const char* name, int K) {
    if (!strcmp(name, "default")) return model_config_default(K);
    if (!strcmp(name, "tiny")) return model_config_tiny(K);
    if (!strcmp(name, "swin_s")) return model_config_swin_s(K);
    ttt_die("unknown --config '%s' (default, tiny or swin_s)", name);
    return model_config_default(K);
}

// linear warm-up to the peak, then poly(0.9) decay to 0 at the last step; step counts from 0
static float learning_rate(const Args* a, int step) {
    if (step < a->warmup) return a->lr * (float)(step + 1) / (float)a->warmup;
    int span = a->steps - a->warmup;
    if (span <= 0) return a->lr;
    return a->lr * powf(1.0f - (float)(step - a->warmup) / (float)span, 0.9f);
}

static void save_all(const Model* m, const Args* a, int step, const Rng* rng, int K) {
    char rpath[4096];
    snprintf(rpath, sizeof(rpath), "%s.resume", a->out_path);
    int extra[RESUME_INTS] = {step, a->steps, (int)(uint32_t)rng->state, (int)(uint32_t)(rng->state >> 32),
                              (int)(uint32_t)a->seed, (int)(uint32_t)(a->seed >> 32), K, 0};
    model_save(m, a->out_path);
    model_save_resume(m, rpath, extra, RESUME_INTS);
}

int main(int argc, char** argv) {
    Args a = parse_args(argc, argv);
    ttt_set_device(ttt_parse_device(a.device));
    check_writable(a.out_path);
    {
        char rpath[4096];
        snprintf(rpath, sizeof(rpath), "%s.resume", a.out_path);
        check_writable(rpath);
    }

    // the model: from a resume file, from a checkpoint (f, h; g fresh), or from scratch
    Model* m = NULL;
    Rng rng;
    rng_seed(&rng, a.seed);
    int step0 = 0, K = 0;
    if (a.resume_path) {
        int extra[RESUME_INTS];
        m = model_load_resume(a.resume_path, a.batch, a.crop_H, a.crop_W, extra, RESUME_INTS);
        step0 = extra[0];
        a.steps = extra[1];   // the schedule of the interrupted run
        rng.state = (uint64_t)(uint32_t)extra[2] | ((uint64_t)(uint32_t)extra[3] << 32);
        K = extra[6];
        printf("resumed from %s at step %d of %d\n", a.resume_path, step0, a.steps);
    } else if (a.init_path) {
        Model* src = model_load(a.init_path, 1, 32, 32);
        m = model_create(model_config(src), a.batch, a.crop_H, a.crop_W);
        model_copy_params(m, src);
        model_free(src);
        if (!a.keep_g) {
            // g from scratch: a random model's g over the checkpoint's f and h
            Model* fresh = model_create(model_config(m), 1, 32, 32);
            model_init_random(fresh, a.seed);
            float* P = model_params_device(m);
            size_t off = model_num_params(m, 0) + model_num_params(m, 1);
            ttt_copy(P + off, model_params_device(fresh) + off, model_num_params(m, 2) * sizeof(float));
            model_free(fresh);
            model_snapshot_ttt(m);
        }
        K = model_config(m)->num_classes;
        printf("initialised f and h%s from %s\n", a.keep_g ? " and g" : "", a.init_path);
    }
    if (a.classes && K && a.classes != K) ttt_die("--classes %d disagrees with the model's %d classes", a.classes, K);
    if (!K) K = a.classes;

    Dataset ds = load_dataset(a.data_dir, K ? K : 255);
    if (!K) K = ds.K_seen > 1 ? ds.K_seen : 2;
    Dataset val = {0};
    if (a.val_dir) val = load_dataset(a.val_dir, K);
    if (!m) {
        ModelConfig cfg = config_by_name(a.config, K);
        m = model_create(&cfg, a.batch, a.crop_H, a.crop_W);
        model_init_random(m, a.seed);
    }
    size_t nparams = model_num_params(m, 0) + model_num_params(m, 1) + model_num_params(m, 2);
    printf("train: %d images from %s, %d classes, crop %dx%d, batch %d, steps %d, device %s\n",
           ds.n, a.data_dir, K, a.crop_W, a.crop_H, a.batch, a.steps, ttt_device_name(ttt_device));
    printf("model: %zu parameters (f %zu, h %zu, g %zu); lr %g, warm-up %d, wd %g, clip %g, seed %llu\n",
           nparams, model_num_params(m, 0), model_num_params(m, 1), model_num_params(m, 2),
           a.lr, a.warmup, a.weight_decay, a.grad_clip, (unsigned long long)a.seed);
    fflush(stdout);

    float* images = (float*)mallocCheck((size_t)a.batch * a.crop_H * a.crop_W * 3 * sizeof(float));
    unsigned char* labels = (unsigned char*)mallocCheck((size_t)a.batch * a.crop_H * a.crop_W);
    OptConfig opt = {a.lr, 0.9f, 0.999f, 1e-8f, a.weight_decay};
    double t_start = time_now_seconds();
    double lm_acc = 0, lr_acc = 0; int acc_n = 0, bad_steps = 0;
    for (int step = step0; step < a.steps; step++) {
        sample_batch(&ds, &a, &rng, images, labels, a.batch);
        opt.lr = learning_rate(&a, step);
        float lmain = 0, lmae = 0;
        model_train_step(m, images, labels, a.batch, &opt, a.grad_clip, &rng, &lmain, &lmae);
        if (!isfinite(lmain) || !isfinite(lmae)) {
            bad_steps++;
            fprintf(stderr, "warning: step %d: non-finite loss (main %g, mae %g), update skipped\n", step + 1, lmain, lmae);
            if (bad_steps > 20) ttt_die("more than 20 non-finite losses; lower --lr");
        } else {
            lm_acc += lmain; lr_acc += lmae; acc_n++;
        }
        int done = step + 1;
        if (done % a.log_every == 0 || done == a.steps) {
            double el = time_now_seconds() - t_start;
            double per = el / (done - step0);
            printf("step %6d/%d  lr %.2e  loss main %.4f  mae %.4f  |g| %.3f  %.2f img/s  ETA %.0f s\n",
                   done, a.steps, opt.lr, acc_n ? lm_acc / acc_n : NAN, acc_n ? lr_acc / acc_n : NAN,
                   model_last_grad_norm(m), a.batch / per, per * (a.steps - done));
            fflush(stdout);
            lm_acc = lr_acc = 0; acc_n = 0;
        }
        if (done % a.ckpt_every == 0 || done == a.steps) save_all(m, &a, done, &rng, K);
        if (a.val_dir && a.val_every > 0 && done % a.val_every == 0 && done != a.steps) {
            printf("val mIoU at step %d: %.4f\n", done, validate(m, &val, K, 0));
            fflush(stdout);
        }
    }
    if (step0 >= a.steps) save_all(m, &a, step0, &rng, K);
    printf("wrote %s and %s.resume\n", a.out_path, a.out_path);
    if (a.val_dir) printf("val mIoU (%d images): %.4f\n", val.n, validate(m, &val, K, 1));
    printf("final hashes f=%016llx h=%016llx g=%016llx\n", (unsigned long long)model_param_hash(m, 0),
           (unsigned long long)model_param_hash(m, 1), (unsigned long long)model_param_hash(m, 2));
    free(images); free(labels);
    free_dataset(&ds);
    if (a.val_dir) free_dataset(&val);
    model_free(m);
    return 0;
}
