// stream.c: online test-time training on a folder of frames (the paper's Algorithm,
// Section 4.2), with every baseline of its Table 1 from the same loop.
//
//   f, g <- f0, g0 (from the checkpoint); window <- empty
//   for each frame x_t in natural name order:
//       window.push(x_t)                      (the oldest beyond k dropped)
//       repeat --steps times:
//           B frames sampled with replacement from the window, independent masks,
//           one AdamW step on the mean masked-pixel MSE (f and g only)
//       y_t <- h0(f_t(x_t, unmasked))         (h never changes)
//
// Modes: fixed (no TTT), nomem (reset to f0, g0 before every frame, k = 1), implicit
// (k = 1, no reset), explicit (reset every frame, window k), online (no reset, window
// k; the default), offline (train on shuffled frames of the whole video for
// --offline-steps steps first, then predict every frame with that model).
//
// The randomness of frame t's TTT (which window frames, which patches masked) is drawn
// from an Rng seeded by (--seed, the frame's file name), so it does not depend on the
// order or the mode: e.g. nomem equals a fresh run on each frame alone.
//
// Input: every *.png / *.jpg / *.jpeg in DIR (case-insensitive), natural name order
// (frame2 before frame10). Other entries (other files, subdirectories) are skipped with
// a warning; so is a .png/.jpg that cannot be decoded. All frames must have one size.
// Labels (--labels DIR): LABELDIR/STEM.png for frame STEM.xxx, 8-bit class ids, 255 =
// ignore; frames without a label file are simply not scored. Without --labels, DIR_labels
// next to DIR is used when it exists (where ./gen video puts them), so
// `./stream data/demo/` scores against data/demo_labels/.
// Output (--out DIR): DIR/STEM.png (class ids, the label format), DIR/STEM_overlay.png,
// DIR/metrics.json, DIR/metrics.png. With a window list (--window 1,4,16) each k runs
// in turn and writes into DIR/window_K/; a table of mIoU per k is printed at the end.
#include "ttt.h"
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>
#include "stb_image.h"   // declarations only (stbi_info); the implementation is in ttt.c

#define MAX_CLASSES 255   // class ids 0..254; 255 = ignore
#define MAX_WINDOWS 32
#define DEFAULT_MODEL "data/model.bin"

typedef enum { MODE_FIXED, MODE_NOMEM, MODE_IMPLICIT, MODE_EXPLICIT, MODE_ONLINE, MODE_OFFLINE } Mode;
static const char* mode_names[] = {"fixed", "nomem", "implicit", "explicit", "online", "offline"};

typedef struct {
    const char* dir;
    const char* model_path;
    Mode mode;
    int windows[MAX_WINDOWS];
    int n_windows;
    int batch, steps;
    int micro_batch;       // images per forward/backward chunk of a step (0 = automatic)
    OptConfig opt;
    const char* labels_dir;
    const char* out_dir;
    uint64_t seed;
    const char* device;
    int offline_steps;     // 0 = one per frame
    int shuffle;
    int print_hashes;      // debug: per-frame hashes of f, g, h
    int kstar;             // estimate the bias-variance optimum k* before the run
    int kstar_masks;       // masks per sampled frame
    int kstar_every;       // sample every E-th frame; 0 = about 16 frames in all
} Args;

typedef struct {
    char* name;         // file name in DIR
    char* stem;         // name without extension: output names
    char* path;         // DIR/name
    char* label_path;   // LABELDIR/stem.png, NULL if absent
    uint64_t seed;      // of this frame's TTT randomness
} Frame;

static float clamp01(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }

// ----------------------------------------------------------------------------
// frames on disk

// natural order: runs of digits compare by value, everything else bytewise
static int natural_cmp(const char* a, const char* b) {
    while (*a && *b) {
        if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
            while (*a == '0') a++;
            while (*b == '0') b++;
            size_t na = 0, nb = 0;
            while (isdigit((unsigned char)a[na])) na++;
            while (isdigit((unsigned char)b[nb])) nb++;
            if (na != nb) return na < nb ? -1 : 1;
            int c = strncmp(a, b, na);
            if (c != 0) return c;
            a += na; b += nb;
        } else {
            if (*a != *b) return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
            a++; b++;
        }
    }
    return (*a != 0) - (*b != 0);
}
static int frame_cmp(const void* x, const void* y) {
    return natural_cmp(((const Frame*)x)->name, ((const Frame*)y)->name);
}

static int has_image_ext(const char* name) {
    const char* dot = strrchr(name, '.');
    return dot && (strcasecmp(dot, ".png") == 0 || strcasecmp(dot, ".jpg") == 0 || strcasecmp(dot, ".jpeg") == 0);
}

static char* str_printf(const char* fmt, const char* a, const char* b) {
    size_t n = strlen(fmt) + strlen(a) + strlen(b) + 1;
    char* s = (char*)mallocCheck(n);
    snprintf(s, n, fmt, a, b);
    return s;
}

static uint64_t fnv1a(const char* s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) { h ^= (unsigned char)*s; h *= 1099511628211ULL; }
    return h;
}

// list the frames of dir, check they decode headers and share one size; find labels.
// Everything fatal is found here, before any output is written.
static Frame* list_frames(const Args* a, int* n_out, int* H_out, int* W_out, int* n_labeled) {
    DIR* d = opendir(a->dir);
    if (d == NULL) ttt_die("cannot open frame directory '%s': %s", a->dir, strerror(errno));
    if (a->labels_dir) {
        struct stat st;
        if (stat(a->labels_dir, &st) != 0 || !S_ISDIR(st.st_mode))
            ttt_die("label directory '%s' does not exist or is not a directory", a->labels_dir);
    }
    int cap = 64, n = 0;
    Frame* fr = (Frame*)mallocCheck(cap * sizeof(Frame));
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;   // ., .. and hidden files
        char* path = str_printf("%s/%s", a->dir, e->d_name);
        struct stat st;
        int is_file = stat(path, &st) == 0 && S_ISREG(st.st_mode);
        if (!is_file || !has_image_ext(e->d_name)) {
            fprintf(stderr, "warning: skipping '%s' (%s)\n", path, is_file ? "not .png/.jpg/.jpeg" : "not a regular file");
            free(path);
            continue;
        }
        if (n == cap) { cap *= 2; Frame* f2 = (Frame*)mallocCheck(cap * sizeof(Frame)); memcpy(f2, fr, n * sizeof(Frame)); free(fr); fr = f2; }
        Frame* f = &fr[n++];
        f->name = strdup(e->d_name);
        f->path = path;
        f->stem = strdup(e->d_name);
        *strrchr(f->stem, '.') = 0;
        f->label_path = NULL;
        f->seed = a->seed * 0x9E3779B97F4A7C15ULL ^ fnv1a(f->name);
    }
    closedir(d);
    if (n == 0) ttt_die("no .png/.jpg frames in '%s'", a->dir);
    qsort(fr, n, sizeof(Frame), frame_cmp);

    // headers: decodable, one size; drop undecodable frames with a warning
    int H = 0, W = 0, kept = 0, labeled = 0;
    const char* first = NULL;
    for (int i = 0; i < n; i++) {
        int w, h, c;
        if (!stbi_info(fr[i].path, &w, &h, &c)) {
            fprintf(stderr, "warning: skipping '%s' (cannot decode: %s)\n", fr[i].path, stbi_failure_reason());
            continue;
        }
        if (first == NULL) { H = h; W = w; first = fr[i].path; }
        else if (h != H || w != W)
            ttt_die("frames of different sizes: '%s' is %dx%d but '%s' is %dx%d (W x H)", first, W, H, fr[i].path, w, h);
        if (kept > 0 && strcmp(fr[kept - 1].stem, fr[i].stem) == 0)
            ttt_die("frames '%s' and '%s' have the same name stem; outputs would collide", fr[kept - 1].name, fr[i].name);
        fr[kept++] = fr[i];
    }
    if (kept == 0) ttt_die("no decodable frames in '%s'", a->dir);
    // labels: same stem, .png; must be single-channel and of the frame size
    for (int i = 0; a->labels_dir && i < kept; i++) {
        char* lp = str_printf("%s/%s.png", a->labels_dir, fr[i].stem);
        int w, h, c;
        if (access(lp, F_OK) != 0) { free(lp); continue; }
        if (!stbi_info(lp, &w, &h, &c)) ttt_die("cannot read label '%s': %s", lp, stbi_failure_reason());
        if (c != 1) ttt_die("label '%s' has %d channels; expected an 8-bit single-channel PNG of class ids", lp, c);
        if (h != H || w != W) ttt_die("label '%s' is %dx%d but the frames are %dx%d (W x H)", lp, w, h, W, H);
        fr[i].label_path = lp;
        labeled++;
    }
    *n_out = kept; *H_out = H; *W_out = W; *n_labeled = labeled;
    return fr;
}

// ----------------------------------------------------------------------------
// output directories and files

static void make_dir(const char* path) {
    char* buf = strdup(path);
    for (char* p = buf + 1; ; p++) {
        if (*p == '/' || *p == 0) {
            char saved = *p;
            *p = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) ttt_die("cannot create directory '%s': %s", buf, strerror(errno));
            *p = saved;
            if (saved == 0) break;
        }
    }
    free(buf);
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) ttt_die("'%s' exists and is not a directory", path);
}

// colour of class c in overlays and plots (distinct hues, repeating after 16)
static void class_colour(int c, float* rgb) {
    static const unsigned char pal[16][3] = {
        {70, 130, 180}, {107, 142, 35}, {190, 120, 80}, {220, 20, 60}, {0, 0, 142}, {250, 170, 30},
        {220, 220, 220}, {152, 78, 163}, {0, 160, 160}, {255, 127, 0}, {120, 120, 120}, {255, 255, 51},
        {166, 86, 40}, {247, 129, 191}, {77, 175, 74}, {0, 0, 0}};
    for (int i = 0; i < 3; i++) rgb[i] = pal[c % 16][i] / 255.0f;
}

// frame blended half and half with the colours of the predicted classes
static void overlay(float* out, const float* frame, const unsigned char* pred, int H, int W) {
    for (int i = 0; i < H * W; i++) {
        float col[3];
        class_colour(pred[i], col);
        for (int c = 0; c < 3; c++) out[3 * i + c] = 0.5f * frame[3 * i + c] + 0.5f * col[c];
    }
}

// ----------------------------------------------------------------------------
// scoring: intersection and union per class, accumulated over the labeled frames

typedef struct { long long inter[MAX_CLASSES], uni[MAX_CLASSES]; } Score;

static void score_add(Score* s, const unsigned char* pred, const unsigned char* lab, int n) {
    for (int i = 0; i < n; i++) {
        int t = lab[i], p = pred[i];
        if (t == 255) continue;
        if (t == p) { s->inter[t]++; s->uni[t]++; }
        else { s->uni[t]++; if (p < MAX_CLASSES) s->uni[p]++; }
    }
}

// IoU of class c, NAN when the class is in neither prediction nor label
static double score_iou(const Score* s, int c) { return s->uni[c] ? (double)s->inter[c] / s->uni[c] : NAN; }

// mean IoU over the classes present in prediction or label; NAN when nothing scored
static double score_miou(const Score* s) {
    double sum = 0.0; int n = 0;
    for (int c = 0; c < MAX_CLASSES; c++) if (s->uni[c]) { sum += score_iou(s, c); n++; }
    return n ? sum / n : NAN;
}

// ----------------------------------------------------------------------------
// metrics.png: loss and mIoU over frames, drawn into an RGB buffer with a 3x5 font

typedef struct { float* px; int H, W; } Canvas;

static void put_px(Canvas* cv, int x, int y, const float* col) {
    if (x < 0 || y < 0 || x >= cv->W || y >= cv->H) return;
    memcpy(&cv->px[3 * ((size_t)y * cv->W + x)], col, 3 * sizeof(float));
}

static void draw_line(Canvas* cv, int x0, int y0, int x1, int y1, const float* col) {
    int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, err = dx + dy;
    for (;;) {   // Bresenham
        put_px(cv, x0, y0, col);
        if (x0 == x1 && y0 == y1) break;
        int e2 = 2 * err;
        if (e2 >= dy) { err += dy; x0 += sx; }
        if (e2 <= dx) { err += dx; y0 += sy; }
    }
}

static void draw_text(Canvas* cv, int x, int y, const char* s, int scale, const float* col) {
    static const char chars[] = "0123456789.-LOSMIUFRAEKNTCPHW=/ GD";
    static const unsigned short glyphs[] = {   // 5 rows of 3 bits, top row in the high bits
        075557, 026227, 071747, 071717, 055711, 074717, 074757, 071111, 075757, 075717, 000002, 000700,
        044447, 075557, 074717, 057755, 072227, 055557, 074744, 065655, 025755, 074747, 055655, 065555,
        072222, 074447, 075744, 055755, 055575, 007070, 011244, 000000, 074557, 065556};
    for (; *s; s++, x += 4 * scale) {
        const char* p = strchr(chars, toupper((unsigned char)*s));
        if (p == NULL) continue;
        unsigned g = glyphs[p - chars];
        for (int r = 0; r < 5; r++) for (int c = 0; c < 3; c++)
            if (g >> (3 * (4 - r) + (2 - c)) & 1)
                for (int i = 0; i < scale; i++) for (int j = 0; j < scale; j++)
                    put_px(cv, x + c * scale + j, y + r * scale + i, col);
    }
}

// one panel: values v[0..n) (NAN = gap) against frame index, y range [lo, hi]
static void draw_panel(Canvas* cv, int top, int height, const char* title, const float* v, int n,
                       float lo, float hi, const float* col) {
    const float axis[3] = {0.2f, 0.2f, 0.2f}, grid[3] = {0.85f, 0.85f, 0.85f};
    int left = 70, right = cv->W - 20, bottom = top + height;
    char buf[64];
    for (int i = 1; i < 4; i++) draw_line(cv, left, top + i * height / 4, right, top + i * height / 4, grid);
    draw_line(cv, left, top, left, bottom, axis);
    draw_line(cv, left, bottom, right, bottom, axis);
    draw_text(cv, left, top - 16, title, 2, axis);
    snprintf(buf, sizeof(buf), "%.3g", hi); draw_text(cv, 4, top, buf, 2, axis);
    snprintf(buf, sizeof(buf), "%.3g", lo); draw_text(cv, 4, bottom - 10, buf, 2, axis);
    int px = -1, py = -1;
    for (int i = 0; i < n; i++) {
        if (!isfinite(v[i])) { px = -1; continue; }
        int x = left + (n > 1 ? (int)((double)i * (right - left) / (n - 1)) : (right - left) / 2);
        float f = hi > lo ? (v[i] - lo) / (hi - lo) : 0.5f;
        int y = bottom - (int)(clamp01(f) * height);
        if (px >= 0) { draw_line(cv, px, py, x, y, col); draw_line(cv, px, py + 1, x, y + 1, col); }
        else { put_px(cv, x, y, col); put_px(cv, x, y + 1, col); }
        px = x; py = y;
    }
}

// per-frame record of one run
typedef struct {
    float loss;          // mean TTT loss over the steps of this frame; NAN if none
    float ms_ttt, ms_predict;
    int labeled;
    float iou[MAX_CLASSES];   // this frame's IoU per class, NAN where absent
    float miou;               // this frame's mIoU, NAN if unlabeled
    float running_miou;       // over the labeled frames so far (in processing order)
} FrameStats;

// plot loss (top) and running / per-frame mIoU (bottom) over frames in processing order
static void write_plot(const char* path, const FrameStats* st, const int* order, int n) {
    Canvas cv = {NULL, 400, 800};
    cv.px = (float*)mallocCheck((size_t)cv.H * cv.W * 3 * sizeof(float));
    for (size_t i = 0; i < (size_t)cv.H * cv.W * 3; i++) cv.px[i] = 1.0f;
    float* v = (float*)mallocCheck(n * sizeof(float));
    float lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++) {
        v[i] = st[order[i]].loss;
        if (isfinite(v[i])) { lo = fminf(lo, v[i]); hi = fmaxf(hi, v[i]); }
    }
    if (!(lo <= hi)) { lo = 0.0f; hi = 1.0f; }
    const float red[3] = {0.8f, 0.1f, 0.1f}, blue[3] = {0.1f, 0.3f, 0.8f}, light[3] = {0.6f, 0.75f, 1.0f};
    draw_panel(&cv, 30, 140, "TTT LOSS", v, n, lo, hi, red);
    for (int i = 0; i < n; i++) v[i] = st[order[i]].miou;
    draw_panel(&cv, 220, 140, "MIOU  PER FRAME (LIGHT) AND RUNNING (DARK)", v, n, 0.0f, 1.0f, light);
    for (int i = 0; i < n; i++) v[i] = st[order[i]].running_miou;
    draw_panel(&cv, 220, 140, "", v, n, 0.0f, 1.0f, blue);
    char buf[64];
    snprintf(buf, sizeof(buf), "FRAME 1 - %d", n);
    draw_text(&cv, 70, 372, buf, 2, red);
    image_save_png(path, cv.px, cv.H, cv.W);
    free(v); free(cv.px);
}

static void json_string(FILE* fp, const char* s) {
    fputc('"', fp);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(fp, "\\%c", c);
        else if (c < 0x20) fprintf(fp, "\\u%04x", c);
        else fputc(c, fp);
    }
    fputc('"', fp);
}

static void json_float(FILE* fp, double x) {
    if (isfinite(x)) fprintf(fp, "%.6g", x); else fprintf(fp, "null");
}

// out/metrics.json, written to a temporary name and renamed into place
static void write_metrics(const char* path, const Args* a, int window, const Frame* fr,
                          const FrameStats* st, const int* order, int n, int n_classes,
                          const Score* total, double ms_frame, const int* ck_steps,
                          const double* ck_miou, int n_ck, double eta) {
    char* tmp = str_printf("%s%s", path, ".tmp");
    FILE* fp = fopen(tmp, "w");
    if (fp == NULL) ttt_die("cannot write '%s': %s", path, strerror(errno));
    fprintf(fp, "{\n  \"dir\": ");
    json_string(fp, a->dir);
    fprintf(fp, ", \"model\": ");
    json_string(fp, a->model_path);
    fprintf(fp, ", \"mode\": \"%s\", \"window\": %d, \"batch\": %d, "
            "\"steps\": %d, \"lr\": %g, \"seed\": %llu, \"shuffle\": %d, \"device\": \"%s\",\n",
            mode_names[a->mode], window, a->batch, a->steps, a->opt.lr,
            (unsigned long long)a->seed, a->shuffle, ttt_device_name(ttt_device));
    fprintf(fp, "  \"num_frames\": %d, \"num_classes\": %d, \"ms_per_frame\": ", n, n_classes);
    json_float(fp, ms_frame);
    fprintf(fp, ", \"eta\": ");
    json_float(fp, eta);
    fprintf(fp, ",\n  \"miou\": ");
    json_float(fp, score_miou(total));
    fprintf(fp, ",\n  \"class_iou\": [");
    for (int c = 0; c < n_classes; c++) { if (c) fprintf(fp, ", "); json_float(fp, score_iou(total, c)); }
    fprintf(fp, "],\n  \"offline_checkpoints\": [");
    for (int i = 0; i < n_ck; i++) {
        fprintf(fp, "%s{\"step\": %d, \"miou\": ", i ? ", " : "", ck_steps[i]);
        json_float(fp, ck_miou[i]);
        fprintf(fp, "}");
    }
    fprintf(fp, "],\n  \"frames\": [\n");
    for (int i = 0; i < n; i++) {
        const FrameStats* s = &st[order[i]];
        fprintf(fp, "    {\"index\": %d, \"name\": ", i);
        json_string(fp, fr[order[i]].name);
        fprintf(fp, ", \"loss\": ");
        json_float(fp, s->loss);
        fprintf(fp, ", \"ms_ttt\": %.3f, \"ms_predict\": %.3f, \"labeled\": %s, \"miou\": ",
                s->ms_ttt, s->ms_predict, s->labeled ? "true" : "false");
        json_float(fp, s->miou);
        fprintf(fp, ", \"iou\": [");
        for (int c = 0; c < n_classes; c++) { if (c) fprintf(fp, ", "); json_float(fp, s->labeled ? s->iou[c] : NAN); }
        fprintf(fp, "]}%s\n", i + 1 < n ? "," : "");
    }
    fprintf(fp, "  ]\n}\n");
    int ok = !ferror(fp);
    ok = (fclose(fp) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) { int e = errno; remove(tmp); ttt_die("cannot write '%s': %s", path, strerror(e ? e : EIO)); }
    free(tmp);
}

// ----------------------------------------------------------------------------
// the stream

typedef struct {
    Frame* fr; int n, H, W, n_labeled;
    float** cache;       // offline mode: every frame decoded once; else NULL
} Video;

static float* load_frame(const Video* v, int i) {
    int H, W;
    if (v->cache) {
        float* x = (float*)mallocCheck((size_t)v->H * v->W * 3 * sizeof(float));
        memcpy(x, v->cache[i], (size_t)v->H * v->W * 3 * sizeof(float));
        return x;
    }
    float* x = image_load(v->fr[i].path, &H, &W);
    if (H != v->H || W != v->W) ttt_die("frame '%s' changed size while running", v->fr[i].path);
    return x;
}

// one TTT step on B frames sampled with replacement from the window (n_win frames);
// a NaN / Inf loss resets f, g to f0, g0 and is reported to the caller
static float ttt_step(Model* m, float* const* window, int n_win, float* batch, int B, int HW3,
                      const OptConfig* opt, Rng* rng, const char* name) {
    for (int b = 0; b < B; b++)
        memcpy(batch + (size_t)b * HW3, window[rng_int(rng, n_win)], HW3 * sizeof(float));
    float loss = model_ttt_step(m, batch, B, opt, rng);
    if (!isfinite(loss)) {
        fprintf(stderr, "warning: %s: TTT loss is %f; resetting f, g to f0, g0 and continuing\n", name, loss);
        model_reset_ttt(m);
    }
    return loss;
}

static void print_hashes(const Model* m, const char* name) {
    printf("hash %s f=%016llx g=%016llx h=%016llx\n", name, (unsigned long long)model_param_hash(m, 0),
           (unsigned long long)model_param_hash(m, 2), (unsigned long long)model_param_hash(m, 1));
}

// predict every frame with the current model and return the mIoU (offline checkpoints)
static double evaluate_all(Model* m, const Video* v, unsigned char* pred) {
    Score s;
    memset(&s, 0, sizeof(s));
    for (int i = 0; i < v->n; i++) {
        if (v->fr[i].label_path == NULL) continue;
        model_predict(m, v->cache[i], pred);
        int H, W;
        unsigned char* l = label_load(v->fr[i].label_path, v->H, v->W, &H, &W);
        score_add(&s, pred, l, v->H * v->W);
        free(l);
    }
    return score_miou(&s);
}

// ----------------------------------------------------------------------------
// --kstar: the bias-variance estimate of the best window size k (the paper's theory)
//
// Online TTT with window k steps on gradients of the last k frames, while the loss it
// should descend is the current frame's. With l(x, mask) the MAE loss of one frame under
// one random mask and grad the gradient w.r.t. the TTT parameters (f and g; h is not
// trained at test time):
//   variance: averaging k frames' independently masked gradients leaves noise ~ sigma^2 / k,
//             sigma^2 = E_mask ||grad l(x, mask) - E_mask' grad l(x, mask')||^2 (batch 1);
//   bias:     a frame s steps old differs from x_t by about s eta in the input, so its
//             gradient is off by about beta s eta: over the window, a bias ~ beta eta k;
//   sigma^2 / k + beta^2 eta^2 k^2 is smallest near k* = (sigma^2 / (beta^2 eta^2))^(1/3)
//   (the exact minimiser of this expression has a further factor 2^(-1/3) ~ 0.79).
// With --batch B the stream's step samples B frames of the window, so its noise is
// sigma^2 / B; the analysis averages over the whole window.
// Measured once, at f0, g0 (before the run), on the frames in name order:
//   eta     = mean_t ||x_t - x_(t-1)||_2 over every consecutive pair (frames in [0, 1]),
//             the "frame drift" the run prints (there: in processing order);
//   sigma^2 = on every E-th frame x_t (t = 2, 2 + E, ...): M masks, gradients g_1..g_M,
//             sum_i ||g_i - mean_i g_i||^2 / (M - 1); averaged over the sampled frames;
//   beta    = mean over the same frames and masks of
//             ||grad l(x_t, mask) - grad l(x_(t-1), mask)|| / ||x_t - x_(t-1)||
//             with the SAME mask for both frames (a copied Rng draws it twice), so the mask
//             noise cancels and only the change of the input remains;
//   beta^2 eta^2 is estimated directly as the mean of ||grad l(x_t, mask) -
//             grad l(x_(t-1), mask)||^2 over those pairs: the squared gradient change per
//             frame, which is what the bias term holds (the product of the two means would
//             add the noise of the ratio on near-static pairs);
//   k*      = (sigma^2 / that)^(1/3); inf when consecutive frames give equal gradients.
// Cost: 2 M forward-backward passes at batch 1 per sampled frame. The test checks eta
// against a computation of its own and that identical frames give a gradient change of
// exactly 0 (the same mask really is drawn twice).

typedef struct {
    double eta, sigma2, beta, beta2eta2, kstar;
    int n_sampled, n_pairs;     // frames with gradients; pairs with ||x_t - x_(t-1)|| > 0
} KstarEstimate;

// gradient of the MAE loss of frame (H, W, 3) under one mask drawn from rng, w.r.t. f and
// g, into out (n_f + n_g) host: [f | g] of the model's [f | h | g]
static float mae_gradient_fg(Model* m, const float* frame, Rng* rng, float* out) {
    float loss = model_mae_forward_backward(m, frame, 1, rng);
    size_t nf = model_num_params(m, 0), nh = model_num_params(m, 1), ng = model_num_params(m, 2);
    float* all = model_grads_host(m);
    memcpy(out, all, nf * sizeof(float));
    memcpy(out + nf, all + nf + nh, ng * sizeof(float));
    free(all);
    return loss;
}

// ||x - y||_2^2 of n values
static double dist2(const float* a, const float* b, size_t n) {
    double d = 0.0;
    for (size_t i = 0; i < n; i++) { double e = (double)a[i] - b[i]; d += e * e; }
    return d;
}

// the estimate at f0, g0 with `masks` masks on every `every`-th frame (t = 2, 2 + every, ...)
static KstarEstimate estimate_kstar(Model* m, const Video* v, int masks, int every) {
    KstarEstimate e;
    memset(&e, 0, sizeof(e));
    int n = v->n, HW3 = v->H * v->W * 3;
    size_t np = model_num_params(m, 0) + model_num_params(m, 2);
    model_reset_ttt(m);   // f0, g0
    float* g_cur = (float*)mallocCheck(np * sizeof(float));    // grad l(x_t, mask)
    float* g_prev = (float*)mallocCheck(np * sizeof(float));   // grad l(x_(t-1), same mask)
    double* g_mean = (double*)mallocCheck(np * sizeof(double));   // running mean over masks
    double eta_sum = 0.0, sigma2_sum = 0.0, beta_sum = 0.0, dgrad2_sum = 0.0;
    int n_dgrad = 0;
    float* prev = NULL;
    for (int t = 0; t < n; t++) {
        float* x = load_frame(v, t);
        if (prev == NULL) { prev = x; continue; }
        double dx = sqrt(dist2(x, prev, (size_t)HW3));
        eta_sum += dx;
        if ((t - 1) % every == 0) {
            Rng rng;
            rng_seed(&rng, v->fr[t].seed ^ 0x4B53544152ULL);   // "KSTAR": apart from the run's draws
            double sq_dev = 0.0;   // Welford: sum over masks of squared deviations from the mean
            for (size_t j = 0; j < np; j++) g_mean[j] = 0.0;
            for (int i = 0; i < masks; i++) {
                Rng same_mask = rng;   // a copy: the next mask drawn again, for x_(t-1)
                mae_gradient_fg(m, x, &rng, g_cur);
                mae_gradient_fg(m, prev, &same_mask, g_prev);
                double dev = 0.0, dg2 = 0.0;
                for (size_t j = 0; j < np; j++) {
                    double d = g_cur[j] - g_mean[j];
                    g_mean[j] += d / (i + 1);
                    dev += d * (g_cur[j] - g_mean[j]);
                    double c = (double)g_cur[j] - g_prev[j];
                    dg2 += c * c;
                }
                sq_dev += dev;
                dgrad2_sum += dg2;
                n_dgrad++;
                if (dx > 0.0) { beta_sum += sqrt(dg2) / dx; e.n_pairs++; }
            }
            sigma2_sum += sq_dev / (masks - 1);
            e.n_sampled++;
            printf("  kstar: frame %d: ||dx|| %.3f, sigma^2 %.4g\n", t + 1, dx, sq_dev / (masks - 1));
        }
        free(prev);
        prev = x;
    }
    free(prev); free(g_cur); free(g_prev); free(g_mean);
    e.eta = n > 1 ? eta_sum / (n - 1) : NAN;
    e.sigma2 = e.n_sampled ? sigma2_sum / e.n_sampled : NAN;
    e.beta = e.n_pairs ? beta_sum / e.n_pairs : NAN;
    e.beta2eta2 = n_dgrad ? dgrad2_sum / n_dgrad : NAN;
    e.kstar = e.beta2eta2 > 0.0 ? cbrt(e.sigma2 / e.beta2eta2) : e.beta2eta2 == 0.0 ? INFINITY : NAN;
    return e;
}

// run the whole video once with window k, writing into out_dir; returns mIoU, sets ms/frame
static double run_stream(const Args* a, Model* m, const Video* v, int k, const char* out_dir, double* ms_frame) {
    int n = v->n, H = v->H, W = v->W, HW3 = H * W * 3, B = a->batch;
    Mode mode = a->mode;
    if (mode == MODE_NOMEM || mode == MODE_IMPLICIT) k = 1;
    int reset_each = mode == MODE_NOMEM || mode == MODE_EXPLICIT;
    make_dir(out_dir);
    model_reset_ttt(m);

    // processing order: name order, or a seeded permutation with --shuffle
    int* order = (int*)mallocCheck(n * sizeof(int));
    for (int i = 0; i < n; i++) order[i] = i;
    if (a->shuffle) {
        Rng r; rng_seed(&r, a->seed ^ 0x5348554646ULL);
        for (int i = n - 1; i > 0; i--) { int j = rng_int(&r, i + 1), t = order[i]; order[i] = order[j]; order[j] = t; }
    }
    float** window = (float**)callocCheck(k, sizeof(float*));   // ring of the last k frames
    float* batch = (float*)mallocCheck((size_t)B * HW3 * sizeof(float));
    float* vis = (float*)mallocCheck((size_t)HW3 * sizeof(float));
    unsigned char* pred = (unsigned char*)mallocCheck((size_t)H * W);
    FrameStats* st = (FrameStats*)callocCheck(n, sizeof(FrameStats));
    Score total;
    memset(&total, 0, sizeof(total));
    int ck_steps[8], n_ck = 0;
    double ck_miou[8];

    if (mode == MODE_OFFLINE) {
        // train on shuffled frames of the whole video, one epoch after another
        int total_steps = a->offline_steps > 0 ? a->offline_steps : n * a->steps;
        for (int q = 0; q <= 4; q++) {   // checkpoints at 0, 1/4, 1/2, 3/4, all of the run
            int s = (int)((long long)total_steps * q / 4);
            if (n_ck == 0 || s != ck_steps[n_ck - 1]) ck_steps[n_ck++] = s;
        }
        Rng rng; rng_seed(&rng, a->seed ^ 0x4F46464C494E45ULL);
        int* perm = (int*)mallocCheck(n * sizeof(int));
        int pos = n, ck = 0;
        double t0 = time_now_seconds(), loss_sum = 0.0;   // since the last checkpoint
        int loss_count = 0;
        for (int step = 0; step <= total_steps; step++) {
            if (ck < n_ck && step == ck_steps[ck]) {
                ck_miou[ck] = v->n_labeled ? evaluate_all(m, v, pred) : NAN;
                printf("offline step %5d/%d  mean loss since last ", step, total_steps);
                if (loss_count) printf("%.5f", loss_sum / loss_count); else printf("-");
                printf("  mIoU ");
                loss_sum = 0.0; loss_count = 0;
                if (v->n_labeled) printf("%.4f\n", ck_miou[ck]); else printf("-\n");
                fflush(stdout);
                ck++;
            }
            if (step == total_steps) break;
            for (int b = 0; b < B; b++) {   // next B frames of the current shuffled epoch
                if (pos == n) {
                    for (int i = 0; i < n; i++) perm[i] = i;
                    for (int i = n - 1; i > 0; i--) { int j = rng_int(&rng, i + 1), t = perm[i]; perm[i] = perm[j]; perm[j] = t; }
                    pos = 0;
                }
                memcpy(batch + (size_t)b * HW3, v->cache[perm[pos++]], HW3 * sizeof(float));
            }
            float loss = model_ttt_step(m, batch, B, &a->opt, &rng);
            if (!isfinite(loss)) {
                fprintf(stderr, "warning: offline step %d: TTT loss is %f; resetting f, g to f0, g0 and continuing\n", step, loss);
                model_reset_ttt(m);
            } else { loss_sum += loss; loss_count++; }
        }
        printf("offline training: %d steps in %.1f s\n", total_steps, time_now_seconds() - t0);
        free(perm);
    }

    int n_win = 0, head = 0;   // frames in the window; next slot to overwrite
    double ms_sum = 0.0, eta_sum = 0.0;
    for (int oi = 0; oi < n; oi++) {
        int i = order[oi];
        const Frame* f = &v->fr[i];
        FrameStats* s = &st[i];
        float* x = load_frame(v, i);
        const float* prev = window[(head + k - 1) % k];
        if (prev) {   // eta: how far the stream moves per frame, ||x_t - x_{t-1}||_2
            double d2 = 0.0;
            for (int j = 0; j < HW3; j++) d2 += (double)(x[j] - prev[j]) * (x[j] - prev[j]);
            eta_sum += sqrt(d2);
        }
        // window update: the newest frame replaces the oldest
        free(window[head]);
        window[head] = x;
        head = (head + 1) % k;
        if (n_win < k) n_win++;
        Rng rng; rng_seed(&rng, f->seed);
        double t0 = time_now_seconds();
        s->loss = NAN;
        if (mode != MODE_FIXED && mode != MODE_OFFLINE) {
            if (reset_each) model_reset_ttt(m);
            double loss_sum = 0.0;
            int n_ok = 0;
            for (int step = 0; step < a->steps; step++) {
                float loss = ttt_step(m, window, n_win, batch, B, HW3, &a->opt, &rng, f->name);
                if (!isfinite(loss)) break;
                loss_sum += loss; n_ok++;
            }
            s->loss = n_ok ? (float)(loss_sum / n_ok) : NAN;
        }
        ttt_synchronize();
        double t1 = time_now_seconds();
        model_predict(m, x, pred);
        double t2 = time_now_seconds();
        s->ms_ttt = (float)((t1 - t0) * 1e3);
        s->ms_predict = (float)((t2 - t1) * 1e3);
        ms_sum += (t2 - t0) * 1e3;
        if (a->print_hashes) print_hashes(m, f->name);

        // outputs: class ids and overlay
        char* path = str_printf("%s/%s.png", out_dir, f->stem);
        label_save_png(path, pred, H, W);
        free(path);
        overlay(vis, x, pred, H, W);
        path = str_printf("%s/%s_overlay.png", out_dir, f->stem);
        image_save_png(path, vis, H, W);
        free(path);

        // score
        s->miou = NAN;
        if (f->label_path) {
            int LH, LW;
            unsigned char* lab = label_load(f->label_path, H, W, &LH, &LW);
            Score one;
            memset(&one, 0, sizeof(one));
            score_add(&one, pred, lab, H * W);
            score_add(&total, pred, lab, H * W);
            for (int c = 0; c < MAX_CLASSES; c++) s->iou[c] = (float)score_iou(&one, c);
            s->miou = (float)score_miou(&one);
            s->labeled = 1;
            free(lab);
        }
        s->running_miou = (float)score_miou(&total);
        printf("frame %4d/%d %-20s loss ", oi + 1, n, f->name);
        if (isfinite(s->loss)) printf("%-9.5f", s->loss); else printf("%-9s", mode == MODE_FIXED || mode == MODE_OFFLINE ? "-" : "nan");
        printf(" ttt %8.1f ms  predict %8.1f ms", s->ms_ttt, s->ms_predict);
        if (v->n_labeled) { if (isfinite(s->running_miou)) printf("  mIoU %.4f", s->running_miou); else printf("  mIoU -"); }
        printf("\n");
        fflush(stdout);
    }

    // summary
    int n_classes = model_config(m)->num_classes;   // K, or more if labels hold larger ids
    for (int c = 0; c < MAX_CLASSES; c++) if (total.uni[c] && c + 1 > n_classes) n_classes = c + 1;
    double miou = score_miou(&total);
    *ms_frame = ms_sum / n;
    printf("summary: %d frames, mode %s, window %d: %.1f ms/frame (%.2f frames/s)",
           n, mode_names[mode], k, *ms_frame, 1e3 / *ms_frame);
    if (n > 1) {   // the first frame carries one-time warm-up costs
        double first = st[order[0]].ms_ttt + st[order[0]].ms_predict;
        printf("; without the first frame %.1f ms/frame", (ms_sum - first) / (n - 1));
    }
    printf("\n");
    double eta = n > 1 ? eta_sum / (n - 1) : NAN;
    printf("frame drift eta = mean ||x_t - x_(t-1)||_2 = %.3f (RMS per value %.4f; frames in [0, 1], processing order)\n",
           eta, eta / sqrt((double)HW3));
    if (v->n_labeled) {
        printf("IoU per class over %d labeled frames:\n", v->n_labeled);
        for (int c = 0; c < n_classes; c++) {
            if (total.uni[c]) printf("  class %3d  %.4f\n", c, score_iou(&total, c));
            else printf("  class %3d  -\n", c);
        }
        printf("mIoU %.4f\n", miou);
    }
    char* path = str_printf("%s/%s", out_dir, "metrics.json");
    write_metrics(path, a, k, v->fr, st, order, n, n_classes, &total, *ms_frame, ck_steps, ck_miou, n_ck, eta);
    free(path);
    path = str_printf("%s/%s", out_dir, "metrics.png");
    write_plot(path, st, order, n);
    free(path);
    printf("wrote %s/NAME.png, NAME_overlay.png, metrics.json, metrics.png\n", out_dir);

    for (int i = 0; i < k; i++) free(window[i]);
    free(window); free(batch); free(vis); free(pred); free(st); free(order);
    return miou;
}

// ----------------------------------------------------------------------------
// command line

static void usage(void) {
    printf(
        "usage: ./stream DIR [options]\n"
        "Online test-time training on the frames in DIR (*.png, *.jpg, natural name order;\n"
        "other files are skipped with a warning). Writes OUT/NAME.png (class ids),\n"
        "OUT/NAME_overlay.png, OUT/metrics.json and OUT/metrics.png.\n"
        "  --model PATH        checkpoint (default " DEFAULT_MODEL ", shipped in the repo)\n"
        "  --mode M            fixed | nomem | implicit | explicit | online | offline (default online)\n"
        "                        fixed: no TTT; nomem: reset to f0,g0 every frame, k=1;\n"
        "                        implicit: k=1, no reset; explicit: reset every frame, window k;\n"
        "                        online: no reset, window k; offline: train on shuffled frames\n"
        "                        of the whole video first (all frames held in memory),\n"
        "                        then predict every frame\n"
        "  --window K[,K...]   window of the last k frames (default 16); a list runs each k\n"
        "                        in turn into OUT/window_K/ and prints a table of mIoU per k\n"
        "  --batch B           masked images per TTT step, sampled with replacement (default 4)\n"
        "  --micro-batch M     run each step's batch in chunks of M images, gradients accumulated\n"
        "                        (the same step; less memory). Default: the whole batch on the\n"
        "                        CPU, on the GPU the largest M that fits in its free memory\n"
        "  --steps S           TTT steps per frame (default 1)\n"
        "  --lr LR             AdamW learning rate (default 1e-4, the paper's code)\n"
        "  --beta1 B1 --beta2 B2 --eps E --wd WD   AdamW settings (default 0.9 0.999 1e-8 0.05)\n"
        "  --labels DIR        label PNGs with the frames' stems; frames without one are not scored\n"
        "                        (default: DIR_labels next to DIR when it exists, else none)\n"
        "  --out DIR           output directory (default out/)\n"
        "  --seed S            seed of masks and window sampling (default 0)\n"
        "  --device D          cpu | cuda | auto (default auto)\n"
        "  --offline-steps N   offline mode: training steps (default: number of frames x steps)\n"
        "  --shuffle           process the frames in a random (seeded) order\n"
        "  --kstar             before the run, estimate at f0, g0 the theory's optimal window\n"
        "                        k* = (sigma^2 / (beta^2 eta^2))^(1/3) from the frames: eta the\n"
        "                        frame drift, sigma^2 the variance of one masked image's gradient,\n"
        "                        beta the gradient's change per unit of input change (same mask);\n"
        "                        printed with its parts (and beside the best k of a --window list);\n"
        "                        beta^2 eta^2 is measured directly as the mean squared gradient\n"
        "                        change between consecutive frames (same mask)\n"
        "  --kstar-masks M     masks per sampled frame (default 8, >= 2)\n"
        "  --kstar-every E     sample every E-th frame (default: about 16 frames in all);\n"
        "                        costs 2 M forward-backward passes at batch 1 per sampled frame\n"
        "  --hash              print a hash of f, g and h after every frame (debugging)\n");
}

static Args parse_args(int argc, char** argv) {
    Args a;
    memset(&a, 0, sizeof(a));
    a.model_path = DEFAULT_MODEL;
    a.mode = MODE_ONLINE;
    a.windows[0] = 16; a.n_windows = 1;
    a.batch = 4; a.steps = 1;
    a.kstar_masks = 8;
    a.opt = opt_config_ttt();
    a.out_dir = "out";
    a.device = "auto";
    for (int i = 1; i < argc; i++) {
        const char* o = argv[i];
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) { usage(); exit(0); }
        if (o[0] != '-') {
            if (a.dir) ttt_die("more than one frame directory given ('%s' and '%s')", a.dir, o);
            a.dir = o;
            continue;
        }
        if (strcmp(o, "--shuffle") == 0) { a.shuffle = 1; continue; }
        if (strcmp(o, "--hash") == 0) { a.print_hashes = 1; continue; }
        if (strcmp(o, "--kstar") == 0) { a.kstar = 1; continue; }
        if (i + 1 >= argc) ttt_die("option '%s' needs a value (--help for usage)", o);
        const char* v = argv[++i];
        if (strcmp(o, "--model") == 0) a.model_path = v;
        else if (strcmp(o, "--mode") == 0) {
            int found = 0;
            for (int m = 0; m <= MODE_OFFLINE; m++) if (strcmp(v, mode_names[m]) == 0) { a.mode = (Mode)m; found = 1; }
            if (!found) ttt_die("--mode: unknown mode '%s' (fixed, nomem, implicit, explicit, online, offline)", v);
        }
        else if (strcmp(o, "--window") == 0) {
            a.n_windows = 0;
            char buf[512];
            snprintf(buf, sizeof(buf), "%s", v);
            for (char* tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
                if (a.n_windows == MAX_WINDOWS) ttt_die("--window: at most %d sizes", MAX_WINDOWS);
                a.windows[a.n_windows++] = parse_int_arg("--window", tok, 1);
            }
            if (a.n_windows == 0) ttt_die("--window: expected k or a list k1,k2,..., got '%s'", v);
        }
        else if (strcmp(o, "--batch") == 0) a.batch = parse_int_arg(o, v, 1);
        else if (strcmp(o, "--steps") == 0) a.steps = parse_int_arg(o, v, 1);
        else if (strcmp(o, "--micro-batch") == 0) a.micro_batch = parse_int_arg(o, v, 1);
        else if (strcmp(o, "--lr") == 0) a.opt.lr = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--beta1") == 0) a.opt.beta1 = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--beta2") == 0) a.opt.beta2 = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--eps") == 0) a.opt.eps = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--wd") == 0) a.opt.weight_decay = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--labels") == 0) a.labels_dir = v;
        else if (strcmp(o, "--out") == 0) a.out_dir = v;
        else if (strcmp(o, "--seed") == 0) a.seed = (uint64_t)parse_int_arg(o, v, 0);
        else if (strcmp(o, "--device") == 0) a.device = v;
        else if (strcmp(o, "--offline-steps") == 0) a.offline_steps = parse_int_arg(o, v, 1);
        else if (strcmp(o, "--kstar-masks") == 0) a.kstar_masks = parse_int_arg(o, v, 2);
        else if (strcmp(o, "--kstar-every") == 0) a.kstar_every = parse_int_arg(o, v, 1);
        else ttt_die("unknown option '%s' (--help for usage)", o);
    }
    if (a.dir == NULL) ttt_die("expected a directory of frames: ./stream DIR [options] (--help for usage)");
    if (a.labels_dir == NULL) {   // default: DIR_labels next to DIR, when it exists (as ./gen writes)
        static char guess[4096];
        size_t len = strlen(a.dir);
        while (len > 1 && a.dir[len - 1] == '/') len--;
        snprintf(guess, sizeof(guess), "%.*s_labels", (int)len, a.dir);
        struct stat st;
        if (stat(guess, &st) == 0 && S_ISDIR(st.st_mode)) a.labels_dir = guess;
    }
    if (a.opt.beta1 >= 1.0f || a.opt.beta2 >= 1.0f) ttt_die("--beta1 and --beta2 must be < 1");
    return a;
}

int main(int argc, char** argv) {
    Args a = parse_args(argc, argv);
    ttt_set_device(ttt_parse_device(a.device));
    Video v;
    memset(&v, 0, sizeof(v));
    v.fr = list_frames(&a, &v.n, &v.H, &v.W, &v.n_labeled);
    if (access(a.model_path, R_OK) != 0)
        ttt_die("cannot read model checkpoint '%s': %s (train one with ./train, or pass --model)", a.model_path, strerror(errno));

    printf("stream: %s: %d frames of %dx%d, %d with labels%s%s\n", a.dir, v.n, v.W, v.H, v.n_labeled,
           a.labels_dir ? " in " : "", a.labels_dir ? a.labels_dir : "");
    printf("  --model %s --mode %s --window ", a.model_path, mode_names[a.mode]);
    for (int i = 0; i < a.n_windows; i++) printf("%s%d", i ? "," : "", a.windows[i]);
    printf(" --batch %d --steps %d --lr %g --beta1 %g --beta2 %g --eps %g --wd %g\n",
           a.batch, a.steps, a.opt.lr, a.opt.beta1, a.opt.beta2, a.opt.eps, a.opt.weight_decay);
    printf("  --out %s --seed %llu --device %s --offline-steps %d%s --shuffle %s\n", a.out_dir,
           (unsigned long long)a.seed, ttt_device_name(ttt_device), a.offline_steps,
           a.offline_steps ? "" : " (= frames x steps)", a.shuffle ? "on" : "off");
    if (a.mode == MODE_NOMEM || a.mode == MODE_IMPLICIT) printf("  (mode %s uses k = 1)\n", mode_names[a.mode]);
    if (a.kstar) printf("  --kstar --kstar-masks %d --kstar-every %d%s\n", a.kstar_masks, a.kstar_every,
                        a.kstar_every ? "" : " (= about 16 frames)");

    // plan the activations for a micro-batch: the whole batch unless it does not fit
    ModelConfig cfg = model_read_config(a.model_path);
    int micro = a.micro_batch ? a.micro_batch : model_auto_micro_batch(&cfg, a.batch, v.H, v.W);
    if (micro > a.batch) micro = a.batch;
    if (micro < a.batch)
        printf("  --micro-batch %d: each step of %d images runs in %d chunks (%.2f GiB of activations)\n", micro,
               a.batch, (a.batch + micro - 1) / micro, model_activation_bytes(&cfg, micro, v.H, v.W) / 1073741824.0);
    Model* m = model_load(a.model_path, micro, v.H, v.W);
    model_snapshot_ttt(m);
    if (a.mode == MODE_OFFLINE) {   // offline trains on random frames: decode them all once
        v.cache = (float**)mallocCheck(v.n * sizeof(float*));
        for (int i = 0; i < v.n; i++) { int H, W; v.cache[i] = image_load(v.fr[i].path, &H, &W); }
    }

    KstarEstimate ks;
    memset(&ks, 0, sizeof(ks));
    if (a.kstar) {
        if (v.n < 2) ttt_die("--kstar needs at least 2 frames, '%s' has %d", a.dir, v.n);
        int every = a.kstar_every ? a.kstar_every : (v.n - 1 + 15) / 16;   // about 16 frames
        double t0 = time_now_seconds();
        ks = estimate_kstar(m, &v, a.kstar_masks, every);
        printf("bias-variance estimate at f0, g0 (%d frames t, every %d-th, %d masks each, batch 1, %.1f s):\n",
               ks.n_sampled, every, a.kstar_masks, time_now_seconds() - t0);
        printf("  eta     = mean ||x_t - x_(t-1)||_2                      = %.6g\n", ks.eta);
        printf("  sigma^2 = E||g_i - E g||^2, one masked image          = %.6g\n", ks.sigma2);
        printf("  beta    = mean ||g(x_t) - g(x_(t-1))|| / ||x_t - x_(t-1)|| = %.6g\n", ks.beta);
        printf("  beta^2 eta^2 = mean ||g(x_t) - g(x_(t-1))||^2, same mask = %.6g (beta^2 x eta^2 of the means: %.6g)\n",
               ks.beta2eta2, ks.beta * ks.beta * ks.eta * ks.eta);
        printf("kstar %.4g = (sigma^2 / (beta^2 eta^2))^(1/3)\n", ks.kstar);
        printf("kstar_values sigma2=%.6g beta=%.6g eta=%.6g beta2eta2=%.6g kstar=%.6g\n",
               ks.sigma2, ks.beta, ks.eta, ks.beta2eta2, ks.kstar);
        fflush(stdout);
    }

    double miou[MAX_WINDOWS], ms[MAX_WINDOWS];
    for (int w = 0; w < a.n_windows; w++) {
        char kstr[16];
        snprintf(kstr, sizeof(kstr), "%d", a.windows[w]);
        char* out = a.n_windows > 1 ? str_printf("%s/window_%s", a.out_dir, kstr) : strdup(a.out_dir);
        if (a.n_windows > 1) printf("== window %d\n", a.windows[w]);
        miou[w] = run_stream(&a, m, &v, a.windows[w], out, &ms[w]);
        free(out);
    }
    if (a.n_windows > 1) {
        printf("window sweep (mode %s):\n     k    mIoU   ms/frame\n", mode_names[a.mode]);
        for (int w = 0; w < a.n_windows; w++) {
            printf("  %4d  ", a.windows[w]);
            if (isfinite(miou[w])) printf("%.4f", miou[w]); else printf("     -");
            printf("  %8.1f\n", ms[w]);
        }
        int best = -1;
        for (int w = 0; w < a.n_windows; w++)
            if (isfinite(miou[w]) && (best < 0 || miou[w] > miou[best])) best = w;
        if (best >= 0) printf("best k %d (mIoU %.4f)", a.windows[best], miou[best]);
        if (a.kstar) printf("%stheory's k* %.2f", best >= 0 ? "; " : "", ks.kstar);
        if (best >= 0 || a.kstar) printf("\n");
    }
    model_free(m);
    for (int i = 0; i < v.n; i++) {
        free(v.fr[i].name); free(v.fr[i].stem); free(v.fr[i].path); free(v.fr[i].label_path);
        if (v.cache) free(v.cache[i]);
    }
    free(v.cache); free(v.fr);
    return 0;
}
