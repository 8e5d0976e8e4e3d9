// train.c: joint training of the Y model on labeled still images:
//   minimise l_m(h(f(x)), y) + l_s(g(f(x~)), x)
// over a dataset folder DIR/images/NAME.(png|jpg) + DIR/labels/NAME.png (class ids, 255 =
// ignore), with random scale / crop / flip, AdamW with linear warm-up and poly decay, global
// gradient-norm clipping, periodic checkpoints and an exact resume.
//
//   ./train --data DIR --out model.bin [--steps N] [--batch B] [--crop WxH] ...
#include "ttt.h"
#include <dirent.h>
#include <errno.h>
#include <strings.h>
#include <sys/stat.h>

typedef struct {
    const char* data_dir;
    const char* val_dir;
    const char* out_path;
    const char* init_path;     // f and h from this checkpoint; g from scratch
    const char* resume_path;   // resume from out_path + ".opt" written by an earlier run
    const char* size;          // tiny | default | swin-s
    int classes, steps, batch, crop_w, crop_h, warmup, save_every, val_every, seed;
    float lr, weight_decay, grad_clip, min_scale, max_scale;
    const char* device;
} TrainArgs;

static void usage(void) {
    printf("usage: ./train --data DIR --out CKPT [options]\n"
           "  DIR/images/NAME.png|jpg with DIR/labels/NAME.png (8-bit class ids, 255 = ignore)\n"
           "  --classes K        number of classes (default 8, the generator's world)\n"
           "  --size S           model size: tiny | default | swin-s (default: default)\n"
           "  --steps N          optimizer steps (default 2000)\n"
           "  --batch B          images per step (default 4)\n"
           "  --crop WxH         training crop (default 128x96)\n"
           "  --lr LR            peak learning rate (default 1e-4)\n"
           "  --weight-decay W   AdamW decoupled weight decay (default 0.05)\n"
           "  --warmup N         linear warm-up steps (default 100), then poly(0.9) decay\n"
           "  --clip C           global gradient-norm clip, 0 = off (default 1.0)\n"
           "  --scale LO,HI      random scale range (default 0.75,1.25)\n"
           "  --init CKPT        start f and h from a checkpoint (g from scratch)\n"
           "  --resume           continue from CKPT and CKPT.opt written by an earlier run\n"
           "  --save-every N     checkpoint every N steps (default 500)\n"
           "  --val DIR          held-out folder: mIoU at the end (and every --val-every steps)\n"
           "  --val-every N      (default 0 = only at the end)\n"
           "  --seed S           (default 1)\n"
           "  --stop-after N     stop after step N as if interrupted (tests of --resume)\n"
           "  --device D         cpu | cuda | auto (default auto)\n");
}

// ----------------------------------------------------------------------------
// dataset: every image and label in memory, checked once up front

typedef struct {
    int n, H, W;          // all images share one size
    float* images;        // (n, H, W, 3)
    unsigned char* labels;  // (n, H, W)
    char** names;
} Dataset;

static int has_image_ext(const char* name) {
    const char* dot = strrchr(name, '.');
    return dot && (!strcasecmp(dot, ".png") || !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".bmp"));
}

static int compare_names(const void* a, const void* b) { return strcmp(*(char* const*)a, *(char* const*)b); }

static Dataset load_dataset(const char* dir, int K) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/images", dir);
    DIR* d = opendir(path);
    if (!d) ttt_die("cannot open dataset folder '%s': %s (expected %s/images and %s/labels)", path, strerror(errno), dir, dir);
    Dataset ds = {0};
    int cap = 64;
    ds.names = (char**)mallocCheck(cap * sizeof(char*));
    struct dirent* e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !has_image_ext(e->d_name)) continue;
        if (ds.n == cap) { cap *= 2; ds.names = (char**)realloc(ds.names, cap * sizeof(char*)); if (!ds.names) ttt_die("out of memory"); }
        ds.names[ds.n++] = strdup(e->d_name);
    }
    closedir(d);
    if (ds.n == 0) ttt_die("dataset folder '%s' has no images", path);
    qsort(ds.names, ds.n, sizeof(char*), compare_names);
    for (int i = 0; i < ds.n; i++) {
        int H, W;
        snprintf(path, sizeof(path), "%s/images/%s", dir, ds.names[i]);
        float* img = image_load(path, &H, &W);
        if (i == 0) {
            ds.H = H; ds.W = W;
            ds.images = (float*)mallocCheck((size_t)ds.n * H * W * 3 * sizeof(float));
            ds.labels = (unsigned char*)mallocCheck((size_t)ds.n * H * W);
        } else if (H != ds.H || W != ds.W) {
            ttt_die("image '%s' is %dx%d but the dataset's first image is %dx%d (all must match)", path, W, H, ds.W, ds.H);
        }
        memcpy(ds.images + (size_t)i * H * W * 3, img, (size_t)H * W * 3 * sizeof(float));
        free(img);
        char stem[1024];
        snprintf(stem, sizeof(stem), "%s", ds.names[i]);
        char* dot = strrchr(stem, '.');
        if (dot) *dot = 0;
        snprintf(path, sizeof(path), "%s/labels/%s.png", dir, stem);
        struct stat st;
        if (stat(path, &st) != 0) ttt_die("image '%s/images/%s' has no label '%s'", dir, ds.names[i], path);
        unsigned char* lab = label_load(path, H, W, NULL, NULL);
        for (int p = 0; p < H * W; p++) {
            if (lab[p] != 255 && lab[p] >= K)
                ttt_die("label '%s' has class id %d at pixel (%d, %d); ids must be < %d or 255", path, lab[p], p % W, p / W, K);
        }
        memcpy(ds.labels + (size_t)i * H * W, lab, (size_t)H * W);
        free(lab);
    }
    return ds;
}

// random scale (bilinear image, nearest label), random crop (pad: image 0, label 255),
// random horizontal flip
static void augment(const Dataset* ds, int idx, int ch, int cw, float lo, float hi, Rng* rng,
                    float* img_out, unsigned char* lab_out) {
    float s = lo + (hi - lo) * rng_uniform(rng);
    int sh = (int)(ds->H * s + 0.5f), sw = (int)(ds->W * s + 0.5f);
    if (sh < 1) sh = 1;
    if (sw < 1) sw = 1;
    int oy = sh > ch ? rng_int(rng, sh - ch + 1) : 0, ox = sw > cw ? rng_int(rng, sw - cw + 1) : 0;
    int flip = rng_uniform(rng) < 0.5f;
    const float* img = ds->images + (size_t)idx * ds->H * ds->W * 3;
    const unsigned char* lab = ds->labels + (size_t)idx * ds->H * ds->W;
    for (int y = 0; y < ch; y++) {
        for (int x = 0; x < cw; x++) {
            int yy = y + oy, xx = (flip ? cw - 1 - x : x) + ox;
            float* o = img_out + ((size_t)y * cw + x) * 3;
            if (yy >= sh || xx >= sw) { o[0] = o[1] = o[2] = 0.0f; lab_out[y * cw + x] = 255; continue; }
            // bilinear sample of the source at the scaled position (align_corners=False)
            float sy = (yy + 0.5f) / s - 0.5f, sx = (xx + 0.5f) / s - 0.5f;
            if (sy < 0) sy = 0;
            if (sx < 0) sx = 0;
            int y0 = (int)sy, x0 = (int)sx;
            if (y0 > ds->H - 1) y0 = ds->H - 1;
            if (x0 > ds->W - 1) x0 = ds->W - 1;
            int y1 = y0 + 1 < ds->H ? y0 + 1 : y0, x1 = x0 + 1 < ds->W ? x0 + 1 : x0;
            float ly = sy - y0, lx = sx - x0;
            if (ly > 1) ly = 1;
            if (lx > 1) lx = 1;
            for (int c = 0; c < 3; c++) {
                float a = img[((size_t)y0 * ds->W + x0) * 3 + c], b = img[((size_t)y0 * ds->W + x1) * 3 + c];
                float cc = img[((size_t)y1 * ds->W + x0) * 3 + c], dd = img[((size_t)y1 * ds->W + x1) * 3 + c];
                o[c] = (1 - ly) * ((1 - lx) * a + lx * b) + ly * ((1 - lx) * cc + lx * dd);
            }
            int ny = (int)(yy / s), nx = (int)(xx / s);
            if (ny > ds->H - 1) ny = ds->H - 1;
            if (nx > ds->W - 1) nx = ds->W - 1;
            lab_out[y * cw + x] = lab[(size_t)ny * ds->W + nx];
        }
    }
}

// mIoU of h(f(x)) over a folder, with a model built for its image size
static double validate(const Model* trained, const char* dir, int K) {
    Dataset vs = load_dataset(dir, K);
    Model* vm = model_create(model_config(trained), 1, vs.H, vs.W);
    model_copy_params(vm, trained);
    int64_t* conf = (int64_t*)callocCheck((size_t)K * K, sizeof(int64_t));
    unsigned char* pred = (unsigned char*)mallocCheck((size_t)vs.H * vs.W);
    for (int i = 0; i < vs.n; i++) {
        model_predict(vm, vs.images + (size_t)i * vs.H * vs.W * 3, pred);
        confusion_update(conf, pred, vs.labels + (size_t)i * vs.H * vs.W, (size_t)vs.H * vs.W, K);
    }
    double miou = mean_iou(conf, K, NULL);
    free(conf); free(pred); model_free(vm);
    for (int i = 0; i < vs.n; i++) free(vs.names[i]);
    free(vs.names); free(vs.images); free(vs.labels);
    return miou;
}

static int parse_size(const char* s, int* w, int* h) { return sscanf(s, "%dx%d", w, h) == 2 && *w > 0 && *h > 0; }

int main(int argc, char** argv) {
    TrainArgs a = {0};
    a.size = "default"; a.classes = 8; a.steps = 2000; a.batch = 4; a.crop_w = 128; a.crop_h = 96;
    a.warmup = 100; a.save_every = 500; a.seed = 1; a.lr = 1e-4f; a.weight_decay = 0.05f;
    a.grad_clip = 1.0f; a.min_scale = 0.75f; a.max_scale = 1.25f; a.device = "auto";
    int resume = 0, stop_after = -1;
    for (int i = 1; i < argc; i++) {
        const char* k = argv[i];
        const char* v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "--help") || !strcmp(k, "-h")) { usage(); return 0; }
        if (!strcmp(k, "--resume")) { resume = 1; continue; }
        if (!v) ttt_die("option %s needs a value (see --help)", k);
        i++;
        if (!strcmp(k, "--data")) a.data_dir = v;
        else if (!strcmp(k, "--val")) a.val_dir = v;
        else if (!strcmp(k, "--out")) a.out_path = v;
        else if (!strcmp(k, "--init")) a.init_path = v;
        else if (!strcmp(k, "--size")) a.size = v;
        else if (!strcmp(k, "--classes")) a.classes = atoi(v);
        else if (!strcmp(k, "--steps")) a.steps = atoi(v);
        else if (!strcmp(k, "--batch")) a.batch = atoi(v);
        else if (!strcmp(k, "--crop")) { if (!parse_size(v, &a.crop_w, &a.crop_h)) ttt_die("--crop wants WxH, got '%s'", v); }
        else if (!strcmp(k, "--lr")) a.lr = (float)atof(v);
        else if (!strcmp(k, "--weight-decay")) a.weight_decay = (float)atof(v);
        else if (!strcmp(k, "--warmup")) a.warmup = atoi(v);
        else if (!strcmp(k, "--clip")) a.grad_clip = (float)atof(v);
        else if (!strcmp(k, "--scale")) { if (sscanf(v, "%f,%f", &a.min_scale, &a.max_scale) != 2 || a.min_scale <= 0 || a.max_scale < a.min_scale) ttt_die("--scale wants LO,HI, got '%s'", v); }
        else if (!strcmp(k, "--save-every")) a.save_every = atoi(v);
        else if (!strcmp(k, "--val-every")) a.val_every = atoi(v);
        else if (!strcmp(k, "--seed")) a.seed = atoi(v);
        else if (!strcmp(k, "--device")) a.device = v;
        else if (!strcmp(k, "--stop-after")) stop_after = atoi(v);
        else ttt_die("unknown option '%s' (see --help)", k);
    }
    if (!a.data_dir || !a.out_path) { usage(); ttt_die("--data and --out are required"); }
    if (a.classes < 1 || a.classes > 254) ttt_die("--classes must be in 1..254");
    if (a.steps < 0 || a.batch < 1) ttt_die("--steps must be >= 0 and --batch >= 1");
    ttt_set_device(ttt_parse_device(a.device));

    ModelConfig cfg;
    if (!strcmp(a.size, "tiny")) cfg = model_config_tiny(a.classes);
    else if (!strcmp(a.size, "default")) cfg = model_config_default(a.classes);
    else if (!strcmp(a.size, "swin-s")) cfg = model_config_swin_s(a.classes);
    else ttt_die("--size must be tiny, default or swin-s, got '%s'", a.size);

    Dataset ds = load_dataset(a.data_dir, a.classes);
    printf("train: %d images %dx%d from %s, %d classes, model %s, device %s\n", ds.n, ds.W, ds.H,
           a.data_dir, a.classes, a.size, ttt_device_name(ttt_device));
    printf("train: %d steps of %d crops %dx%d, lr %g (warm-up %d, poly 0.9), wd %g, clip %g, seed %d\n",
           a.steps, a.batch, a.crop_w, a.crop_h, a.lr, a.warmup, a.weight_decay, a.grad_clip, a.seed);

    // check that the checkpoint path is writable before spending any time
    {
        char probe[4096];
        snprintf(probe, sizeof(probe), "%s.probe", a.out_path);
        FILE* fp = fopen(probe, "wb");
        if (!fp) ttt_die("cannot write checkpoint '%s': %s", a.out_path, strerror(errno));
        fclose(fp);
        remove(probe);
    }

    Model* m;
    Rng rng;
    rng_seed(&rng, (uint64_t)a.seed);
    int start = 0;
    char opt_path[4096];
    snprintf(opt_path, sizeof(opt_path), "%s.opt", a.out_path);
    if (resume) {
        m = model_load(a.out_path, a.batch, a.crop_h, a.crop_w);
        int extra[3];
        model_load_optimizer(m, opt_path, extra, 3);
        start = extra[0];
        memcpy(&rng.state, extra + 1, sizeof(uint64_t));   // the RNG continues where it stopped
        printf("train: resumed from %s at step %d\n", a.out_path, start);
    } else {
        m = model_create(&cfg, a.batch, a.crop_h, a.crop_w);
        model_init_random(m, (uint64_t)a.seed);
        if (a.init_path) { model_load_f_h(m, a.init_path); printf("train: f and h from %s, g from scratch\n", a.init_path); }
    }
    printf("train: parameters f %zu, h %zu, g %zu\n", model_num_params(m, 0), model_num_params(m, 1), model_num_params(m, 2));

    float* imgs = (float*)mallocCheck((size_t)a.batch * a.crop_h * a.crop_w * 3 * sizeof(float));
    unsigned char* labs = (unsigned char*)mallocCheck((size_t)a.batch * a.crop_h * a.crop_w);
    OptConfig opt = opt_config_ttt();
    opt.weight_decay = a.weight_decay;
    double t0 = time_now_seconds(), first_loss = -1.0, ema = 0.0;
    for (int step = start; step < a.steps; step++) {
        for (int b = 0; b < a.batch; b++)
            augment(&ds, rng_int(&rng, ds.n), a.crop_h, a.crop_w, a.min_scale, a.max_scale, &rng,
                    imgs + (size_t)b * a.crop_h * a.crop_w * 3, labs + (size_t)b * a.crop_h * a.crop_w);
        // linear warm-up, then poly decay with power 0.9
        float lr = a.lr;
        if (step < a.warmup) lr = a.lr * (step + 1) / (float)a.warmup;
        else lr = a.lr * powf(1.0f - (float)(step - a.warmup) / (float)(a.steps - a.warmup + 1), 0.9f);
        opt.lr = lr;
        float lm, ls;
        model_train_step(m, imgs, labs, a.batch, &opt, a.grad_clip, &rng, &lm, &ls);
        if (!isfinite(lm) || !isfinite(ls)) ttt_die("step %d: the loss is not finite (main %g, mae %g); lower --lr", step + 1, lm, ls);
        double total = lm + ls;
        if (first_loss < 0) { first_loss = total; ema = total; }
        ema = 0.9 * ema + 0.1 * total;
        int done = step + 1 - start;
        double el = time_now_seconds() - t0, per = el / done;
        if (done == 1 || (step + 1) % 10 == 0 || step + 1 == a.steps) {
            printf("step %5d/%d | main %.4f | mae %.4f | avg %.4f | lr %.2e | %.1f img/s | ETA %.0fs\n",
                   step + 1, a.steps, lm, ls, ema, lr, a.batch / per, per * (a.steps - step - 1));
            fflush(stdout);
        }
        if ((a.save_every > 0 && (step + 1) % a.save_every == 0) || step + 1 == a.steps || step + 1 == stop_after) {
            model_save(m, a.out_path);
            int extra[3] = {step + 1};
            memcpy(extra + 1, &rng.state, sizeof(uint64_t));
            model_save_optimizer(m, opt_path, extra, 3);
        }
        if (a.val_dir && a.val_every > 0 && (step + 1) % a.val_every == 0 && step + 1 < a.steps)
            printf("val  step %d: mIoU %.4f\n", step + 1, validate(m, a.val_dir, a.classes));
        if (step + 1 == stop_after) { printf("train: stopped after step %d (--stop-after)\n", stop_after); return 0; }
    }
    if (a.steps == start) model_save(m, a.out_path);
    printf("train: done, %d steps in %.1fs; loss %.4f -> %.4f (smoothed); checkpoint %s\n",
           a.steps - start, time_now_seconds() - t0, first_loss, ema, a.out_path);
    if (a.val_dir) printf("val: mIoU of h(f(x)) on %s: %.4f\n", a.val_dir, validate(m, a.val_dir, a.classes));
    model_free(m);
    free(imgs); free(labs);
    for (int i = 0; i < ds.n; i++) free(ds.names[i]);
    free(ds.names); free(ds.images); free(ds.labels);
    return 0;
}
