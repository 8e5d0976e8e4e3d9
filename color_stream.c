// color_stream.c: ./stream --task colorize and the image list of ./train --task colorize.
// The stream loop of colorization (stream.c's run_stream does segmentation): per frame, in
// natural name order, the TTT-MAE steps of the mode on the GRAY frames (the gray image of each
// frame's L, color_gray_frame), then h(f(gray)) decoded to colour (color_decode, annealed mean
// T = 0.38) and written as OUT/STEM.png. When the frames are in colour, the colourised frame
// is scored against the original: PSNR and SSIM on the 8-bit RGB (color_psnr, color_ssim),
// per frame and per video (the mean over frames); gray frames (1 channel, or RGB with
// R = G = B everywhere: an old film) are only colourised. The modes are stream.c's TTT-MAE
// ones: fixed (no TTT), nomem (reset each frame, k = 1), implicit (k = 1), explicit (reset,
// window k), online (window k, the default); each step draws --batch frames of the window
// uniformly with replacement (the demo recipe's sampler), one AdamW step on f and g.
#include "ttt.h"
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#include "stb_image.h"   // declarations only: stbi_info, stbi_is_16_bit
#pragma GCC diagnostic pop

static const char* color_mode_names[] = {"fixed", "nomem", "implicit", "explicit", "online"};

// ----------------------------------------------------------------------------
// listing images

static int name_cmp(const void* x, const void* y) { return natural_cmp(*(char* const*)x, *(char* const*)y); }

// the image files of dir (names, natural order), *n of them; dies when dir cannot be read
static char** list_image_names(const char* dir, int* n) {
    char** names = list_names(dir, 0, NULL, n);
    qsort(names, *n, sizeof(char*), name_cmp);
    return names;
}

// channels of an image file (1 gray, 2 gray + alpha, 3 RGB, 4 RGBA) and size; one line on
// anything --task colorize does not read: unreadable, 16-bit, alpha
static int image_channels(const char* path, int* H, int* W) {
    int w, h, c;
    if (!stbi_info(path, &w, &h, &c)) ttt_die("cannot read image '%s': %s", path, access(path, R_OK) != 0 ? strerror(errno) : stbi_failure_reason());
    if (stbi_is_16_bit(path)) ttt_die("image '%s' has 16-bit channels; --task colorize reads 8-bit gray or RGB images", path);
    if (c == 2 || c == 4) ttt_die("image '%s' has an alpha channel (%d channels); --task colorize reads 8-bit gray (1 channel) or RGB (3) images", path, c);
    *H = h; *W = w;
    return c;
}

ColorImageSet color_image_list(const char* dir) {
    char* sub = join_path(dir, "images");   // ./gen stills lays its images out in DIR/images
    struct stat st;
    const char* root = stat(sub, &st) == 0 && S_ISDIR(st.st_mode) ? sub : dir;
    ColorImageSet s;
    char** names = list_image_names(root, &s.n);
    if (s.n == 0) ttt_die("no images (.png, .jpg, .jpeg, .bmp) in '%s'", root);
    s.images = (char**)mallocCheck(s.n * sizeof(char*));
    s.H = (int*)mallocCheck(s.n * sizeof(int));
    s.W = (int*)mallocCheck(s.n * sizeof(int));
    for (int i = 0; i < s.n; i++) {
        s.images[i] = join_path(root, names[i]);
        free(names[i]);
        int c = image_channels(s.images[i], &s.H[i], &s.W[i]);
        if (c != 3) ttt_die("image '%s' is gray (1 channel); ./train --task colorize learns from colour (RGB) images", s.images[i]);
    }
    free(names); free(sub);
    return s;
}

void color_image_set_free(ColorImageSet* s) {
    for (int i = 0; i < s->n; i++) free(s->images[i]);
    free(s->images); free(s->H); free(s->W);
    memset(s, 0, sizeof(*s));
}

// ----------------------------------------------------------------------------
// output folder: never the frames folder or inside it; files of a folder without the
// metrics.json of an earlier run are not replaced

static int path_inside(const char* a, const char* b) {   // real paths: a is b or below it
    size_t n = strlen(b);
    return strncmp(a, b, n) == 0 && (a[n] == 0 || a[n] == '/' || (n == 1 && b[0] == '/'));
}

// the real path of p, which may not exist yet: its longest existing prefix resolved, the rest kept
static void resolve_path(const char* p, char* out) {
    char buf[PATH_MAX];
    snprintf(buf, sizeof(buf), "%s", p);
    size_t len = strlen(buf);
    while (len > 1 && buf[len - 1] == '/') buf[--len] = 0;
    if (realpath(buf, out)) return;
    char* slash = strrchr(buf, '/');
    if (!slash) {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof(cwd))) ttt_die("cannot read the working folder: %s", strerror(errno));
        if (snprintf(out, PATH_MAX, "%s/%s", cwd, buf) >= PATH_MAX) ttt_die("path too long: '%s'", p);
        return;
    }
    *slash = 0;
    char parent[PATH_MAX];
    resolve_path(buf[0] ? buf : "/", parent);
    if (snprintf(out, PATH_MAX, "%s/%s", strcmp(parent, "/") == 0 ? "" : parent, slash + 1) >= PATH_MAX) ttt_die("path too long: '%s'", p);
}

static void make_dirs(const char* path) {
    char buf[PATH_MAX];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char* p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) ttt_die("cannot create folder '%s': %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) ttt_die("cannot create folder '%s': %s", buf, strerror(errno));
}

static void check_out_dir(const ColorStreamArgs* a, char** stems, int n) {
    char out_real[PATH_MAX], in_real[PATH_MAX];
    resolve_path(a->out_dir, out_real);
    if (realpath(a->dir, in_real) && path_inside(out_real, in_real))
        ttt_die("--out '%s' is %s the frames folder '%s'; its outputs would replace or mix with the frames: write them elsewhere",
                a->out_dir, strcmp(out_real, in_real) == 0 ? "the same folder as" : "inside", a->dir);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (strcmp(stems[i], stems[j]) == 0)
                ttt_die("frames '%s' and another share the name '%s'; both would write %s/%s.png", stems[i], stems[i], a->out_dir, stems[i]);
    char* mj = join_path(a->out_dir, "metrics.json");
    int earlier_run = access(mj, F_OK) == 0;
    free(mj);
    if (earlier_run) return;
    for (int i = 0; i < n; i++) {
        char name[PATH_MAX];
        snprintf(name, sizeof(name), "%s/%s.png", a->out_dir, stems[i]);
        if (access(name, F_OK) == 0)
            ttt_die("--out: '%s' exists and '%s' holds no metrics.json of an earlier ./stream run; refusing to replace it: "
                    "choose another output folder", name, a->out_dir);
    }
}

// ----------------------------------------------------------------------------
// the run

typedef struct { double psnr, ssim, mae, ms; int scored; } ColorFrameResult;

static void write_json_number(FILE* fp, double v) {
    if (isfinite(v)) fprintf(fp, "%.6f", v);
    else fprintf(fp, "null");   // PSNR of an exact copy: +inf, which JSON cannot hold
}

static void write_metrics(const ColorStreamArgs* a, char** stems, const ColorFrameResult* r, int done, int n,
                          int colour, int H, int W, double psnr, double ssim, int n_scored) {
    char* path = join_path(a->out_dir, "metrics.json");
    FILE* fp = coco_json_open(path);
    fprintf(fp, "{\n  \"task\": \"colorize\",\n  \"settings\": {\"dir\": ");
    json_write_string(fp, a->dir);
    fprintf(fp, ", \"model\": ");
    json_write_string(fp, a->model_path);
    fprintf(fp, ", \"mode\": \"%s\", \"window\": %d, \"batch\": %d, \"steps\": %d, \"lr\": %g, \"seed\": %llu, "
                "\"temperature\": %g, \"width\": %d, \"height\": %d, \"device\": \"%s\"},\n",
            color_mode_names[a->mode], a->window, a->batch, a->steps, a->opt.lr, (unsigned long long)a->seed,
            COLOR_TEMPERATURE, W, H, ttt_device_name(ttt_device));
    fprintf(fp, "  \"colour_input\": %s,\n  \"frames_total\": %d,\n  \"frames_done\": %d,\n  \"frames\": [", colour ? "true" : "false", n, done);
    for (int i = 0; i < done; i++) {
        fprintf(fp, "%s\n    {\"name\": ", i ? "," : "");
        json_write_string(fp, stems[i]);
        fprintf(fp, ", \"mae_loss\": ");
        write_json_number(fp, r[i].mae);
        if (r[i].scored) {
            fprintf(fp, ", \"psnr\": ");
            write_json_number(fp, r[i].psnr);
            fprintf(fp, ", \"ssim\": ");
            write_json_number(fp, r[i].ssim);
        }
        fprintf(fp, ", \"ms\": %.2f}", r[i].ms);
    }
    fprintf(fp, "\n  ],\n  \"frames_scored\": %d", n_scored);
    if (n_scored > 0) {
        fprintf(fp, ",\n  \"video_psnr\": ");
        write_json_number(fp, psnr);
        fprintf(fp, ",\n  \"video_ssim\": ");
        write_json_number(fp, ssim);
    }
    fprintf(fp, "\n}\n");
    coco_json_close(fp, path);
    free(path);
}

// 1 when every pixel of (n, 3) bytes has R = G = B
static int is_gray_rgb(const unsigned char* px, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (px[i * 3] != px[i * 3 + 1] || px[i * 3] != px[i * 3 + 2]) return 0;
    return 1;
}

int color_stream_run(const ColorStreamArgs* a) {
    if (a->mode < 0 || a->mode > 4)
        ttt_die("--task colorize runs the TTT-MAE modes fixed, nomem, implicit, explicit and online; not this --mode");
    // the model first: a segmentation checkpoint is refused before any frame is read
    if (access(a->model_path, R_OK) != 0)
        ttt_die("cannot read model checkpoint '%s': %s (train one with ./train --task colorize, or pass --model)", a->model_path, strerror(errno));
    ModelConfig cfg = model_read_config(a->model_path);
    if (!cfg.colorize)
        ttt_die("checkpoint '%s' is a segmentation model (%d classes), not a colorization model; --task colorize needs one "
                "from ./train --task colorize (data/model_colorize.bin is shipped)", a->model_path, cfg.num_classes);
    // the frames: every header checked before anything is written
    int n;
    char** names = list_image_names(a->dir, &n);
    if (n == 0) ttt_die("no frames (.png, .jpg, .jpeg, .bmp) in '%s'", a->dir);
    char** paths = (char**)mallocCheck(n * sizeof(char*));
    char** stems = (char**)mallocCheck(n * sizeof(char*));
    int H = 0, W = 0, n_colour_files = 0;
    for (int i = 0; i < n; i++) {
        paths[i] = join_path(a->dir, names[i]);
        stems[i] = strdup(names[i]);
        if (!stems[i]) ttt_die("out of memory");
        *strrchr(stems[i], '.') = 0;
        int h, w, c = image_channels(paths[i], &h, &w);
        if (i == 0) { H = h; W = w; }
        else if (h != H || w != W) ttt_die("frame '%s' is %dx%d but the first frame is %dx%d (all must match)", paths[i], w, h, W, H);
        n_colour_files += c == 3;
    }
    if (n_colour_files != 0 && n_colour_files != n)
        ttt_die("'%s' mixes gray (1-channel) and colour (RGB) frames; --task colorize reads a video of one channel layout", a->dir);
    check_out_dir(a, stems, n);
    make_dirs(a->out_dir);
    // every frame decoded once before the run (a run fails before it writes, not midway): which
    // are in colour (scored); the loop decodes each again and keeps only the window's gray frames
    size_t npix = (size_t)H * W;
    unsigned char* is_colour = (unsigned char*)callocCheck(n, 1);
    int colour = 0;
    for (int i = 0; i < n; i++) {
        char err[2048];
        int h, w;
        unsigned char* px = image_try_load_u8(paths[i], &h, &w, err, sizeof(err));
        if (!px) ttt_die("%s", err);
        is_colour[i] = n_colour_files > 0 && !is_gray_rgb(px, npix);
        colour |= is_colour[i];
        free(px);
    }
    int one_frame = a->mode == 1 || a->mode == 2, reset_each = a->mode == 1 || a->mode == 3;
    int k = one_frame ? 1 : a->window, B = a->batch;
    float* rgb = (float*)mallocCheck(npix * 3 * sizeof(float));
    float** ring = (float**)mallocCheck(k * sizeof(float*));   // gray frame j in ring[j % k]
    for (int j = 0; j < k; j++) ring[j] = (float*)mallocCheck(npix * 3 * sizeof(float));
    printf("stream: %s: %d frames of %dx%d, %s%s\n", a->dir, n, W, H, colour ? "colour (made gray; PSNR and SSIM against the originals)" : "gray (colourised, not scored)", "");
    printf("settings: task=colorize model=%s mode=%s window=%d batch=%d steps=%d lr=%g seed=%llu temperature=%g out=%s device=%s\n",
           a->model_path, color_mode_names[a->mode], k, B, a->steps, a->opt.lr, (unsigned long long)a->seed,
           COLOR_TEMPERATURE, a->out_dir, ttt_device_name(ttt_device));
    fflush(stdout);
    Model* m = model_load(a->model_path, B, H, W);
    if (a->has_recipe) model_set_recipe(m, &a->recipe);
    const ModelRecipe* mr = model_recipe(m);
    printf("  TTT recipe: mask-ratio=%g loss-pixels=%s backbone-lr-scale=%g wd-exempt=%s clip=%g drop-path=%g\n", mr->mask_ratio,
           mr->loss_all_pixels ? "all" : "masked", mr->backbone_lr_scale, mr->wd_exempt ? "on" : "off", mr->ttt_clip, mr->drop_path);
    int Q, K, H4, W4, Hm, Wm;
    model_prediction_sizes(m, &Q, &K, &H4, &W4, &Hm, &Wm);
    float* cls = (float*)mallocCheck((size_t)Q * (K + 1) * sizeof(float));
    float* msk = (float*)mallocCheck((size_t)Q * H4 * W4 * sizeof(float));
    float* batch = (float*)mallocCheck((size_t)B * npix * 3 * sizeof(float));
    unsigned char* out8 = (unsigned char*)mallocCheck(npix * 3);
    ColorFrameResult* res = (ColorFrameResult*)callocCheck(n, sizeof(ColorFrameResult));
    Rng rng;
    rng_seed(&rng, a->seed);
    double sum_psnr = 0.0, sum_ssim = 0.0, t_all = time_now_seconds();
    int n_scored = 0, n_inf = 0;
    for (int i = 0; i < n; i++) {
        double t0 = time_now_seconds();
        double mae = NAN;
        char err[2048];
        int h, w;
        unsigned char* orig = image_try_load_u8(paths[i], &h, &w, err, sizeof(err));
        if (!orig) ttt_die("%s", err);
        for (size_t p = 0; p < npix * 3; p++) rgb[p] = orig[p] / 255.0f;
        float* gray = ring[i % k];
        color_gray_frame(gray, rgb, npix);
        if (a->mode != 0) {   // TTT-MAE on the gray frames of the window
            if (reset_each) model_reset_ttt(m);
            int first = i - k + 1 < 0 ? 0 : i - k + 1, nw = i - first + 1;
            for (int s = 0; s < a->steps; s++) {
                for (int b = 0; b < B; b++)
                    memcpy(batch + (size_t)b * npix * 3, ring[(first + rng_int(&rng, nw)) % k], npix * 3 * sizeof(float));
                float loss = model_ttt_step(m, batch, B, &a->opt, &rng);
                if (!isfinite(loss)) {
                    fprintf(stderr, "warning: %s: MAE loss is %f; resetting to the initial weights and continuing\n", stems[i], loss);
                    model_reset_ttt(m);
                }
                mae = loss;
            }
        }
        model_predict_logits(m, gray);
        model_last_logits(m, cls, msk);
        color_decode(rgb, gray, cls, msk, Q, H4, W4, H, W, COLOR_TEMPERATURE);
        for (size_t p = 0; p < npix * 3; p++) {   // the bytes image_save_png writes
            float v = rgb[p] * 255.0f + 0.5f;
            out8[p] = (unsigned char)(v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v);
        }
        if (a->save_png) {
            char* name = (char*)mallocCheck(strlen(a->out_dir) + strlen(stems[i]) + 8);
            sprintf(name, "%s/%s.png", a->out_dir, stems[i]);
            image_save_png(name, rgb, H, W);
            free(name);
        }
        res[i].mae = mae;
        res[i].ms = (time_now_seconds() - t0) * 1e3;
        char score[128] = "";
        if (is_colour[i]) {
            res[i].scored = 1;
            res[i].psnr = color_psnr(orig, out8, npix * 3);
            res[i].ssim = color_ssim(orig, out8, H, W, 3);
            if (isfinite(res[i].psnr)) sum_psnr += res[i].psnr; else n_inf++;
            sum_ssim += res[i].ssim;
            n_scored++;
            snprintf(score, sizeof(score), " | PSNR %.4f dB | SSIM %.6f", res[i].psnr, res[i].ssim);
        }
        double vp = n_scored > n_inf ? sum_psnr / (n_scored - n_inf) : NAN, vs = n_scored ? sum_ssim / n_scored : NAN;
        char mae_text[32] = " | no TTT";
        if (a->mode != 0) snprintf(mae_text, sizeof(mae_text), " | mae %.4f", mae);
        printf("frame %4d/%d %s%s%s | %.0f ms\n", i + 1, n, stems[i], mae_text, score, res[i].ms);
        fflush(stdout);
        free(orig);
        write_metrics(a, stems, res, i + 1, n, colour, H, W, vp, vs, n_scored);
    }
    double ms = (time_now_seconds() - t_all) * 1e3 / n;
    double vp = n_scored > n_inf ? sum_psnr / (n_scored - n_inf) : NAN, vs = n_scored ? sum_ssim / n_scored : NAN;
    if (colour)
        printf("video: PSNR %.4f dB, SSIM %.6f (means over %d frames%s); %.1f ms/frame\n", vp, vs, n_scored,
               n_inf ? ", exact copies (infinite PSNR) left out of the PSNR" : "", ms);
    else
        printf("video: %d gray frames colourised (no colour originals: no scores); %.1f ms/frame\n", n, ms);
    printf("RESULT task=colorize dir=%s mode=%s window=%d frames=%d scored=%d psnr=%.6f ssim=%.6f ms_per_frame=%.2f\n",
           a->dir, color_mode_names[a->mode], k, n, n_scored, vp, vs, ms);
    for (int i = 0; i < n; i++) { free(paths[i]); free(stems[i]); free(names[i]); }
    for (int j = 0; j < k; j++) free(ring[j]);
    free(paths); free(stems); free(names); free(ring); free(is_colour); free(rgb);
    free(cls); free(msk); free(batch); free(out8); free(res);
    model_free(m);
    return 0;
}

// ----------------------------------------------------------------------------
// ./train --task colorize (the hooks in train.c)

// the images of a training batch: decoded, augmented as the segmentation batches (data.c's
// aug_apply: resize, crop, flip; the crop's padding marked by a label of 255), made gray; the
// targets of each at the model's map H4 x W4 (color_targets), none where more than half a 4 x 4
// block is padding
void color_train_batch(const ColorImageSet* ds, const int* idx, const AugDraw* draws, int B, const AugConfig* aug,
                       int H4, int W4, float* gray, int* ids, float* w) {
    int Hc = aug->crop_h, Wc = aug->crop_w;
    size_t npix = (size_t)Hc * Wc, nt = (size_t)H4 * W4 * COLOR_NEIGHBOURS;
    char* errs = (char*)callocCheck((size_t)B, 2048);
    int first_bad = B;
    #pragma omp parallel for schedule(dynamic)
    for (int b = 0; b < B; b++) {
        int i = idx[b], H, W;
        char* err = errs + (size_t)b * 2048;
        unsigned char* img = image_try_load_u8(ds->images[i], &H, &W, err, 2048);
        int ok = img != NULL;
        if (img && (H != ds->H[i] || W != ds->W[i])) {
            snprintf(err, 2048, "image '%s' changed size since it was listed (%dx%d, now %dx%d)", ds->images[i], ds->W[i], ds->H[i], W, H);
            ok = 0;
        }
        if (ok) {
            unsigned char* zero = (unsigned char*)callocCheck((size_t)H * W, 1);
            unsigned char* pad = (unsigned char*)mallocCheck(npix);
            float* rgb = (float*)mallocCheck(npix * 3 * sizeof(float));
            aug_apply(aug, &draws[b], img, zero, H, W, rgb, pad);
            int* id = ids + (size_t)b * nt;
            float* wb = w + (size_t)b * nt;
            color_targets(id, wb, rgb, Hc, Wc, H4, W4);
            for (int y = 0; y < H4; y++)
                for (int x = 0; x < W4; x++) {
                    int in = 0, padded = 0;
                    for (int dy = 0; dy < 4; dy++)
                        for (int dx = 0; dx < 4; dx++) {
                            int yy = 4 * y + dy, xx = 4 * x + dx;
                            if (yy >= Hc || xx >= Wc) continue;
                            in++;
                            padded += pad[(size_t)yy * Wc + xx] == 255;
                        }
                    if (in > 0 && 2 * padded > in)
                        for (int j = 0; j < COLOR_NEIGHBOURS; j++) wb[((size_t)y * W4 + x) * COLOR_NEIGHBOURS + j] = 0.0f;
                }
            color_gray_frame(gray + (size_t)b * npix * 3, rgb, npix);
            free(zero); free(pad); free(rgb);
        } else {
            #pragma omp critical
            if (b < first_bad) first_bad = b;
        }
        free(img);
    }
    if (first_bad < B) ttt_die("%s", errs + (size_t)first_bad * 2048);
    free(errs);
}

// Zhang's rebalancing weights of a training set: the nearest-bin counts of the pixels of (up to
// 1000 evenly spaced) images, then color_rebalance_weights. Prints how many bins occur.
void color_train_weights(const ColorImageSet* ds, float* w) {
    double* hist = (double*)callocCheck(COLOR_BINS, sizeof(double));
    int n_use = ds->n < 1000 ? ds->n : 1000;
    for (int j = 0; j < n_use; j++) {
        int i = (int)((long long)j * ds->n / n_use), H, W;
        char err[2048];
        unsigned char* img = image_try_load_u8(ds->images[i], &H, &W, err, sizeof(err));
        if (!img) ttt_die("%s", err);
        size_t n = (size_t)H * W;
        float* rgb = (float*)mallocCheck(n * 3 * sizeof(float));
        for (size_t p = 0; p < n * 3; p++) rgb[p] = img[p] / 255.0f;
        color_hist_add(hist, rgb, n);
        free(rgb); free(img);
    }
    color_rebalance_weights(w, hist);
    int used = 0;
    float wmin = w[0], wmax = w[0];
    for (int k = 0; k < COLOR_BINS; k++) { used += hist[k] > 0.0; wmin = fminf(wmin, w[k]); wmax = fmaxf(wmax, w[k]); }
    printf("train: colour rebalancing from %d images: %d of %d ab bins occur; weights %.3f .. %.3f\n", n_use, used, COLOR_BINS, wmin, wmax);
    free(hist);
}

// PSNR and SSIM (means over the images) of the colourised gray versions of a held-out set
void color_validate(Model* trained, const ColorImageSet* vs, double* psnr, double* ssim) {
    double sp = 0.0, ss = 0.0;
    int np = 0;
    for (int i = 0; i < vs->n; i++) {
        int H, W;
        char err[2048];
        unsigned char* img = image_try_load_u8(vs->images[i], &H, &W, err, sizeof(err));
        if (!img) ttt_die("%s", err);
        Model* vm = model_create_sharing(trained, 1, H, W);
        int Q, K, H4, W4, Hm, Wm;
        model_prediction_sizes(vm, &Q, &K, &H4, &W4, &Hm, &Wm);
        size_t n = (size_t)H * W;
        float* rgb = (float*)mallocCheck(n * 3 * sizeof(float));
        float* gray = (float*)mallocCheck(n * 3 * sizeof(float));
        float* cls = (float*)mallocCheck((size_t)Q * (K + 1) * sizeof(float));
        float* msk = (float*)mallocCheck((size_t)Q * H4 * W4 * sizeof(float));
        unsigned char* out8 = (unsigned char*)mallocCheck(n * 3);
        for (size_t p = 0; p < n * 3; p++) rgb[p] = img[p] / 255.0f;
        color_gray_frame(gray, rgb, n);
        model_predict_logits(vm, gray);
        model_last_logits(vm, cls, msk);
        color_decode(rgb, gray, cls, msk, Q, H4, W4, H, W, COLOR_TEMPERATURE);
        for (size_t p = 0; p < n * 3; p++) {
            float v = rgb[p] * 255.0f + 0.5f;
            out8[p] = (unsigned char)(v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v);
        }
        double v = color_psnr(img, out8, n * 3);
        if (isfinite(v)) { sp += v; np++; }
        ss += H >= 11 && W >= 11 ? color_ssim(img, out8, H, W, 3) : NAN;
        free(rgb); free(gray); free(cls); free(msk); free(out8); free(img);
        model_free(vm);
    }
    *psnr = np ? sp / np : NAN;
    *ssim = ss / vs->n;
}
