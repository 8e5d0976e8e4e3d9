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
// The other rows of the paper's Table 1 (mae.c's last section, ttt.h says what each is):
// ln-adapt (no training; LayerNorm statistics over the last k frames), tent (entropy of the
// prediction, norm parameters of f and h), self-train (pseudo-labels, main-task loss on
// masked frames, f and h), each tent / self-train with --memory online | implicit |
// explicit | nomem as the TTT-MAE modes; --class-balance on any mode that trains; and, on
// any mode, --smooth K (class scores averaged over the last K frames) and --tta N
// (majority vote over N augmented views). Main Task Only is --mode fixed with a model
// trained by ./train --no-mae.
//
// The randomness of frame t's TTT (which window frames, which patches masked) is drawn
// from an Rng seeded by (--seed, the frame's file name), so it does not depend on the
// order or the mode: e.g. nomem equals a fresh run on each frame alone.
//
// Input: every *.png / *.jpg / *.jpeg in DIR (case-insensitive), natural name order
// (frame2 before frame10). Other entries (other files, subdirectories) are skipped with
// a warning; so is a .png/.jpg that cannot be decoded (every frame is decoded once before
// the run). All frames must have one size. Or DIR "-" (--stdin): raw rgb24 frames of
// --size WxH on standard input, processed as they arrive (FrameSource; reading blocks, so a
// faster producer blocks on the pipe), named frame000001.png, ..., without labels.
// Labels (--labels DIR): LABELDIR/STEM.png for frame STEM.xxx, 8-bit class ids, 255 =
// ignore; frames without a label file are simply not scored. Without --labels, DIR_labels
// next to DIR is used when it exists (where ./gen video puts them), so
// `./stream data/demo/` scores against data/demo_labels/.
// Output (--out DIR): DIR/STEM.png (class ids, the label format), DIR/STEM_overlay.png,
// DIR/metrics.json (written before the first frame, rewritten as frames are done),
// DIR/metrics.png; --out-raw: the overlays as raw rgb24. Checked before anything is written
// (check_outputs): DIR is not the frames or labels folder nor inside them, no two outputs
// share a name, no file of the user's is replaced. With a window list (--window 1,4,16) each k runs
// in turn and writes into DIR/window_K/; a table of mIoU per k is printed at the end.
// --task panoptic | instance (coco_stream.c): Mask2Former's panoptic or instance inference
// on the same prediction, COCO-format outputs and PQ / mask AP against COCO panoptic ground
// truth (COCO 2017 or COCO Videos layouts, see README).
#include "ttt.h"
#include <ctype.h>
#include <stdarg.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>
#include <signal.h>
#include <fcntl.h>
#include <poll.h>
#include "stb_image.h"   // declarations only (stbi_info); the implementation is in ttt.c

#define MAX_CLASSES 255   // class ids 0..254; 255 = ignore
#define MAX_WINDOWS 32
#define DEFAULT_MODEL "data/model.bin"
#define DEFAULT_COLORIZE_MODEL "data/model_colorize.bin"   // --task colorize (color_stream.c)

typedef enum { MODE_FIXED, MODE_NOMEM, MODE_IMPLICIT, MODE_EXPLICIT, MODE_ONLINE, MODE_OFFLINE,
               MODE_LN_ADAPT, MODE_TENT, MODE_SELF_TRAIN, NUM_MODES } Mode;
static const char* mode_names[] = {"fixed", "nomem", "implicit", "explicit", "online", "offline",
                                   "ln-adapt", "tent", "self-train"};

// the memory of tent and self-train, named as the TTT-MAE modes: online (window k, no reset),
// implicit (k = 1, no reset), explicit (window k, reset every frame), nomem (k = 1, reset)
typedef enum { MEMORY_ONLINE, MEMORY_IMPLICIT, MEMORY_EXPLICIT, MEMORY_NOMEM } Memory;
static const char* memory_names[] = {"online", "implicit", "explicit", "nomem"};

typedef enum { SAMPLER_REPLACE, SAMPLER_CYCLE } Sampler;
static const char* sampler_names[] = {"replace", "cycle"};

// The stream's side of a recipe (the model's side is ModelRecipe in ttt.h). --recipe demo is
// this project's default; --recipe paper the released code's (renwang435/video-ttt-release):
// 32 images per step from the window by detectron2's TrainingSampler (cycling through random
// permutations of the window), a fresh AdamW every frame (--restart_optimizer in every
// published command), frames resized to short side 1024 (long side <= 2048), TTT on random
// 512x1024 crops, the prediction on the whole resized frame, scored at the original size.
typedef struct {
    int batch, window;
    int restart_optimizer;   // fresh AdamW moments and step count before each frame
    Sampler sampler;
    int resize_short, max_long;   // resize the frames (detectron2 ResizeShortestEdge); 0 = as they are
    int crop_h, crop_w;      // TTT on random crops of this size (of the resized frame); 0 = whole frame
} StreamRecipe;

static StreamRecipe stream_recipe_demo(void) {
    StreamRecipe r = {4, 16, 0, SAMPLER_REPLACE, 0, 0, 0, 0};
    return r;
}
static StreamRecipe stream_recipe_paper(void) {
    StreamRecipe r = {32, 16, 1, SAMPLER_CYCLE, 1024, 2048, 512, 1024};
    return r;
}

typedef struct {
    const char* dir;       // the frames folder, or "-": standard input
    int from_stdin;        // frames: raw rgb24 from standard input (DIR "-" or --stdin)
    int raw_W, raw_H;      // --size of those frames
    const char* out_raw;   // --out-raw PATH|-: the overlays as raw rgb24 frames (NULL: none)
    int save_png;          // --save-png on|off: NAME.png and NAME_overlay.png for every frame
    const char* model_path;
    int model_given;       // --model given (else --task colorize takes DEFAULT_COLORIZE_MODEL)
    Mode mode;
    const char* recipe;    // "demo" or "paper": the defaults the options below override
    StreamRecipe sr;       // resolved stream settings
    ModelRecipe mr;        // resolved model settings (after the checkpoint is read)
    // model-recipe options as given (negative = not given: the recipe's value)
    float mask_ratio, backbone_lr_scale, clip, drop_path;
    int loss_all_pixels, wd_exempt;
    int windows[MAX_WINDOWS];
    int n_windows;
    int steps;
    int micro_batch;       // images per forward/backward chunk of a step (0 = automatic)
    int gpus;              // --gpus N: the TTT step's batch split over N GPUs (dist.c)
    OptConfig opt;
    const char* labels_dir;
    int label_format;      // LabelFormat, or -1: found with the labels
    int score_every;       // score frames 0, N, 2N, ... of the name order (1 = all)
    int class_names;       // 1: the 19 Cityscapes/KITTI names; 0: numbers; -1: automatic
    const char* out_dir;
    uint64_t seed;
    const char* device;
    int offline_steps;     // 0 = one per frame
    int shuffle;
    int print_hashes;      // debug: per-frame hashes of f, g, h
    int kstar;             // estimate the bias-variance optimum k* before the run
    int kstar_masks;       // masks per sampled frame
    int kstar_every;       // sample every E-th frame; 0 = about 16 frames in all
    int task;              // TASK_SEMANTIC | TASK_PANOPTIC | TASK_INSTANCE (coco_stream.c)
    const char* panoptic_json;   // --panoptic-json / --panoptic-dir: ground truth of the tasks
    const char* panoptic_dir;
    int pq_rule;           // PQ_CROWD_COCO | PQ_CROWD_RELEASED | -1 (from the layout)
    int instance_gt_all;   // --instance-gt all
    // the other techniques of Table 1 (mae.c's last section)
    Memory memory;         // tent, self-train: online | implicit | explicit | nomem
    int memory_given;
    float st_threshold;    // self-train: pseudo-label confidence above this
    float st_mask_ratio;   // self-train: fraction of 16x16 patches masked
    int class_balance;     // reset to the initial weights when the class count drifts
    int cb_threshold;      // ... by more than this many classes (negative: every frame)
    float ln_prior;        // ln-adapt: weight of a frame's own LayerNorm statistics
    int smooth;            // class scores averaged over the last K frames (1 = off)
    int tta;               // majority vote over N views (1 = off)
    int tta_color;         // ColorAugSSD in the views (-1: the recipe's: demo off, paper on)
} Args;

typedef struct {
    char* name;         // file name in DIR
    char* stem;         // name without extension: output names
    char* path;         // DIR/name
    char* label_path;   // the label file, NULL if absent or not scored (--score-every)
    uint64_t seed;      // of this frame's TTT randomness
} Frame;

typedef struct {
    Frame* fr; int n, H, W, n_labeled;   // frames at their size on disk, H x W
    int Hr, Wr;          // the frames as the model sees them (resized by the recipe, or H x W)
    int Ht, Wt;          // TTT images: random crops of Ht x Wt of the resized frames, or Hr x Wr
    LabelFormat label_fmt;
    int K;               // the model's classes
    float** cache;       // offline mode: every frame decoded and resized once; else NULL
    const TaskSetup* task;   // --task panoptic | instance: categories and ground truth; else NULL
    int* task_ann;       // (n) the annotation of each frame, -1 where it has none
} Video;

// the results of one run: pooled mIoU over every scored pixel, and the paper's video score,
// the mean over the scored frames of each frame's mIoU (detectron2's SemSegEvaluator per frame)
typedef struct { double miou_pooled, miou_frames; int n_scored; double ms_frame; } RunResult;

static float clamp01(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }

// ----------------------------------------------------------------------------
// frames on disk

static int frame_cmp(const void* x, const void* y) {
    return natural_cmp(((const Frame*)x)->name, ((const Frame*)y)->name);
}

// the frames of a folder: *.png, *.jpg, *.jpeg (any case)
static int is_frame_name(const char* name) {
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

// the seed of a frame's TTT randomness: from --seed and the frame's name alone
static uint64_t frame_seed(uint64_t seed, const char* name) { return seed * 0x9E3779B97F4A7C15ULL ^ fnv1a(name); }

// the label file that a name in the label folder is, for a frame name; 0 if it is no label
// of this format (Cityscapes folders also hold colour, instance and polygon files)
static int label_frame_name(const char* label_name, LabelFormat fmt, char* frame, size_t n) {
    const char* suffix = fmt == LABEL_CITYSCAPES_TRAINIDS ? "_gtFine_labelTrainIds.png" :
                         fmt == LABEL_CITYSCAPES_LABELIDS ? "_gtFine_labelIds.png" : ".png";
    size_t ln = strlen(label_name), sn = strlen(suffix);
    if (ln <= sn || strcmp(label_name + ln - sn, suffix) != 0) return 0;
    if (fmt == LABEL_CITYSCAPES_TRAINIDS || fmt == LABEL_CITYSCAPES_LABELIDS)
        snprintf(frame, n, "%.*s_leftImg8bit.png", (int)(ln - sn), label_name);
    else
        snprintf(frame, n, "%s", label_name);
    return 1;
}

// list the frames of dir, check they decode headers and share one size; find labels and
// check every one of them (size, bit depth, channels, ids < K or 255). Everything fatal is
// found here, before any output is written. A published layout (KITTI-STEP, Cityscapes)
// labels every frame: a missing label, or a label without its frame, is an error there; in a
// plain folder (DIR_labels, --labels) frames without a label are simply not scored.
static Frame* list_frames(const Args* a, LabelFormat fmt, int K, int* n_out, int* H_out, int* W_out, int* n_labeled) {
    DIR* d = opendir(a->dir);
    if (d == NULL) ttt_die("cannot open frame directory '%s': %s", a->dir, strerror(errno));
    if (a->labels_dir) {
        struct stat st;
        if (stat(a->labels_dir, &st) != 0 || !S_ISDIR(st.st_mode))
            ttt_die("label directory '%s' does not exist or is not a directory", a->labels_dir);
    }
    int strict = fmt != LABEL_IDS;
    int cap = 64, n = 0;
    Frame* fr = (Frame*)mallocCheck(cap * sizeof(Frame));
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;   // ., .. and hidden files
        char* path = str_printf("%s/%s", a->dir, e->d_name);
        struct stat st;
        int is_file = stat(path, &st) == 0 && S_ISREG(st.st_mode);
        if (!is_file || !is_frame_name(e->d_name)) {
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
        f->seed = frame_seed(a->seed, f->name);
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
            free(fr[i].name); free(fr[i].stem); free(fr[i].path);
            continue;
        }
        if (first == NULL) { H = h; W = w; first = fr[i].path; }
        else if (h != H || w != W)
            ttt_die("frames of different sizes: '%s' is %dx%d but '%s' is %dx%d (W x H)", first, W, H, fr[i].path, w, h);
        fr[kept++] = fr[i];
    }
    // every frame decoded once (in parallel, then freed): a frame whose header reads but whose
    // data is corrupt is found now, not when the run reaches it after writing outputs
    char* bad_frame = (char*)callocCheck((size_t)kept, 1);
    char (*why)[256] = (char(*)[256])callocCheck((size_t)kept, 256);
    #pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < kept; i++) {
        int h, w;
        unsigned char* px = image_try_load_u8(fr[i].path, &h, &w, why[i], sizeof(why[i]));
        if (px && (h != H || w != W)) snprintf(why[i], sizeof(why[i]), "decodes to %dx%d, its header says %dx%d", w, h, W, H);
        bad_frame[i] = px == NULL || h != H || w != W;
        free(px);
    }
    int kept2 = 0;
    for (int i = 0; i < kept; i++) {
        if (!bad_frame[i]) { fr[kept2++] = fr[i]; continue; }
        fprintf(stderr, "warning: skipping '%s' (%s)\n", fr[i].path, why[i]);
        free(fr[i].name); free(fr[i].stem); free(fr[i].path);
    }
    free(bad_frame); free(why);
    if (kept2 == 0) ttt_die("no decodable frames in '%s'", a->dir);
    if (strict && kept2 != n) ttt_die("'%s' holds a frame that cannot be decoded (see the warning above)", a->dir);
    kept = kept2;
    // labels: the file of each frame in the layout; header checks (size, depth, channels)
    for (int i = 0; a->labels_dir && i < kept; i++) {
        char lp[4096];
        label_path_for_frame(lp, sizeof(lp), a->labels_dir, fr[i].name, fmt);
        if (access(lp, F_OK) != 0) {
            if (strict) ttt_die("frame '%s' has no label: '%s' is missing (the %s layout labels every frame)",
                                fr[i].path, lp, label_format_name(fmt));
            continue;
        }
        label_check_header(lp, fmt, H, W, NULL, NULL);
        if (i % a->score_every != 0) continue;   // --score-every: not scored
        fr[i].label_path = strdup(lp);
        labeled++;
    }
    // a published layout: every label file belongs to a frame
    if (strict && a->labels_dir) {
        DIR* ld = opendir(a->labels_dir);
        if (ld == NULL) ttt_die("cannot open label directory '%s': %s", a->labels_dir, strerror(errno));
        while ((e = readdir(ld)) != NULL) {
            char frame[1024];
            if (e->d_name[0] == '.' || !label_frame_name(e->d_name, fmt, frame, sizeof(frame))) continue;
            int found = 0;
            for (int i = 0; i < kept && !found; i++) found = strcmp(fr[i].name, frame) == 0;
            if (!found) ttt_die("label '%s/%s' has no frame '%s' in '%s'", a->labels_dir, e->d_name, frame, a->dir);
        }
        closedir(ld);
    }
    // every label decoded once and its ids checked, so that no bad label stops a run midway
    int bad = -1;
    char err[1024] = "";
    #pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < kept; i++) {
        if (fr[i].label_path == NULL || bad >= 0) continue;
        char e1[1024];
        int lh, lw;
        unsigned char* lab = label_try_load_format(fr[i].label_path, fmt, K, H, W, &lh, &lw, e1, sizeof(e1));
        if (lab == NULL) {
            #pragma omp critical
            if (bad < 0) { bad = i; snprintf(err, sizeof(err), "%s", e1); }
        }
        free(lab);
    }
    if (bad >= 0) ttt_die("%s", err);
    *n_out = kept; *H_out = H; *W_out = W; *n_labeled = labeled;
    return fr;
}

// ----------------------------------------------------------------------------
// output directories and files

static void make_dir(const char* path) {
    if (!is_main_rank()) return;   // --gpus: GPU 0 writes every output
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

// ----------------------------------------------------------------------------
// output checks, before anything is written: no output replaces an input or a file of the
// user's, and no two outputs share a name

// the absolute path that path names, symlinks resolved, also when it does not exist yet: the
// real path of its deepest existing ancestor, then the remaining names ("." dropped, ".." up)
static void resolve_path(const char* path, char* out) {
    char base[PATH_MAX], tail[PATH_MAX] = "";
    snprintf(base, sizeof(base), "%s", path);
    while (realpath(base, out) == NULL) {
        size_t len = strlen(base);
        while (len > 1 && base[len - 1] == '/') base[--len] = 0;   // trailing slashes
        char* slash = strrchr(base, '/');
        char rest[PATH_MAX];
        snprintf(rest, sizeof(rest), "%s%s%s", slash ? slash + 1 : base, tail[0] ? "/" : "", tail);
        snprintf(tail, sizeof(tail), "%s", rest);
        if (slash == NULL) snprintf(base, sizeof(base), ".");
        else if (slash == base) snprintf(base, sizeof(base), "/");
        else *slash = 0;
    }
    for (char* name = strtok(tail, "/"); name; name = strtok(NULL, "/")) {
        if (strcmp(name, ".") == 0) continue;
        if (strcmp(name, "..") == 0) {
            char* slash = strrchr(out, '/');
            if (slash && slash != out) *slash = 0; else snprintf(out, PATH_MAX, "/");
            continue;
        }
        size_t len = strlen(out);
        snprintf(out + len, PATH_MAX - len, "%s%s", len > 1 ? "/" : "", name);
    }
}

// 1 when resolved path a is b or lies below it
static int path_inside(const char* a, const char* b) {
    size_t n = strlen(b);
    if (strcmp(b, "/") == 0) return 1;
    return strncmp(a, b, n) == 0 && (a[n] == 0 || a[n] == '/');
}

static int same_file(const char* a, const char* b) {
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static int cmp_str(const void* x, const void* y) { return strcmp(*(char* const*)x, *(char* const*)y); }

// the file names one run writes into its output folder: NAME.png and NAME_overlay.png per
// frame, metrics.json, metrics.png (malloc'd, sorted); dies when two are the same (frames
// a.png and a_overlay.png, a.png and a.jpg, or a frame named metrics.png)
static char** output_names(const Video* v, int* count) {
    int n = 2 * v->n + 2;
    char** names = (char**)mallocCheck((size_t)n * sizeof(char*));   // name j: frame j / 2, or the run's
    for (int i = 0; i < v->n; i++) {
        names[2 * i] = str_printf("%s%s", v->fr[i].stem, ".png");
        names[2 * i + 1] = str_printf("%s%s", v->fr[i].stem, "_overlay.png");
    }
    names[2 * v->n] = strdup("metrics.json");
    names[2 * v->n + 1] = strdup("metrics.png");
    char** sorted = (char**)mallocCheck((size_t)n * sizeof(char*));
    for (int i = 0; i < n; i++) sorted[i] = names[i];
    qsort(sorted, n, sizeof(char*), cmp_str);
    for (int i = 0; i + 1 < n; i++) {
        if (strcmp(sorted[i], sorted[i + 1]) != 0) continue;
        const char* who[2];
        int found = 0;
        for (int j = 0; j < n && found < 2; j++)
            if (strcmp(names[j], sorted[i]) == 0) who[found++] = j < 2 * v->n ? v->fr[j / 2].name : "the run's metrics";
        ttt_die("frames '%s' and '%s' would both write '%s' in the output folder; rename one of them", who[0], who[1], sorted[i]);
    }
    free(names);
    *count = n;
    return sorted;
}

// --out (and each DIR/window_K of a sweep): not equal to or inside the frames folder or the
// labels folder; no output file is the model; existing files only replaced in the folder of an
// earlier run (one holding metrics.json, which a run writes before its first frame). The raw
// output (--out-raw) is not an input, an image or a checkpoint of the user's.
static void check_outputs(const Args* a, const Video* v) {
    char out_real[PATH_MAX], in_real[PATH_MAX];
    resolve_path(a->out_dir, out_real);
    const char* inputs[2] = {a->from_stdin ? NULL : a->dir, a->labels_dir};
    const char* what[2] = {"frames", "labels"};
    for (int k = 0; k < 2; k++) {
        if (inputs[k] == NULL || realpath(inputs[k], in_real) == NULL) continue;
        if (path_inside(out_real, in_real))
            ttt_die("--out '%s' is %s the %s folder '%s'; its outputs would replace or mix with the %s: write them elsewhere",
                    a->out_dir, strcmp(out_real, in_real) == 0 ? "the same folder as" : "inside", what[k], inputs[k], what[k]);
    }
    int n_names;
    char** names = a->from_stdin ? NULL : output_names(v, &n_names);
    if (a->from_stdin) {   // frame000001.png ... are unique; only the run's own files exist up front
        n_names = 2;
        names = (char**)mallocCheck(2 * sizeof(char*));
        names[0] = strdup("metrics.json"); names[1] = strdup("metrics.png");
    }
    for (int w = 0; w < a->n_windows; w++) {
        char dir[PATH_MAX];
        if (a->n_windows > 1) snprintf(dir, sizeof(dir), "%s/window_%d", a->out_dir, a->windows[w]);
        else snprintf(dir, sizeof(dir), "%s", a->out_dir);
        char* mj = str_printf("%s/%s", dir, "metrics.json");
        int earlier_run = access(mj, F_OK) == 0;
        free(mj);
        if (a->from_stdin && !earlier_run) {   // the frames' names are not known up front: the folder must hold nothing
            DIR* d = opendir(dir);
            struct dirent* e;
            while (d && (e = readdir(d)) != NULL)
                if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                    ttt_die("--out '%s' holds files ('%s') and no metrics.json of an earlier ./stream run; frames from "
                            "standard input could replace them: choose another output folder", dir, e->d_name);
            if (d) closedir(d);
        }
        for (int i = 0; i < n_names; i++) {
            char* p = str_printf("%s/%s", dir, names[i]);
            if (same_file(p, a->model_path)) ttt_die("--out '%s' would replace the model '%s'; write it elsewhere", a->out_dir, a->model_path);
            if (!earlier_run && access(p, F_OK) == 0)
                ttt_die("--out: '%s' exists and '%s' holds no metrics.json of an earlier ./stream run; refusing to "
                        "replace it: choose another output folder", p, dir);
            free(p);
        }
    }
    for (int i = 0; i < n_names; i++) free(names[i]);
    free(names);
    if (a->out_raw && strcmp(a->out_raw, "-") != 0) {
        struct stat st;
        char raw_real[PATH_MAX];
        resolve_path(a->out_raw, raw_real);
        for (int k = 0; k < 2; k++)
            if (inputs[k] && realpath(inputs[k], in_real) && path_inside(raw_real, in_real))
                ttt_die("--out-raw '%s' is inside the %s folder '%s'; write it elsewhere", a->out_raw, what[k], inputs[k]);
        if (path_inside(raw_real, out_real)) ttt_die("--out-raw '%s' is inside --out '%s'; write it elsewhere", a->out_raw, a->out_dir);
        if (stat(a->out_raw, &st) == 0) {
            int w, h, c, magic = 0;
            if (S_ISDIR(st.st_mode)) ttt_die("--out-raw '%s' is a folder; give a file name or -", a->out_raw);
            if (S_ISREG(st.st_mode)) {
                FILE* fp = fopen(a->out_raw, "rb");
                if (fp && fread(&magic, sizeof(int), 1, fp) != 1) magic = 0;
                if (fp) fclose(fp);
                if (same_file(a->out_raw, a->model_path) || magic == CKPT_MAGIC || stbi_info(a->out_raw, &w, &h, &c))
                    ttt_die("--out-raw '%s' is an existing %s; refusing to overwrite it", a->out_raw,
                            magic == CKPT_MAGIC ? "checkpoint" : "image");
            }
        }
    }
}

// class names of the run (NULL: classes are shown by number); the 19 Cityscapes / KITTI-STEP
// names when the labels come from those layouts or --class-names cityscapes
static const char* const* class_names = NULL;

// colour of class c in overlays and plots: the Cityscapes palette with its class names,
// else distinct hues repeating after 16
static void class_colour(int c, float* rgb) {
    static const unsigned char cityscapes[CITYSCAPES_NUM_CLASSES][3] = {
        {128, 64, 128}, {244, 35, 232}, {70, 70, 70}, {102, 102, 156}, {190, 153, 153}, {153, 153, 153},
        {250, 170, 30}, {220, 220, 0}, {107, 142, 35}, {152, 251, 152}, {70, 130, 180}, {220, 20, 60},
        {255, 0, 0}, {0, 0, 142}, {0, 0, 70}, {0, 60, 100}, {0, 80, 100}, {0, 0, 230}, {119, 11, 32}};
    if (class_names && c < CITYSCAPES_NUM_CLASSES) {
        for (int i = 0; i < 3; i++) rgb[i] = cityscapes[c][i] / 255.0f;
        return;
    }
    static const unsigned char pal[16][3] = {
        {70, 130, 180}, {107, 142, 35}, {190, 120, 80}, {220, 20, 60}, {0, 0, 142}, {250, 170, 30},
        {220, 220, 220}, {152, 78, 163}, {0, 160, 160}, {255, 127, 0}, {120, 120, 120}, {255, 255, 51},
        {166, 86, 40}, {247, 129, 191}, {77, 175, 74}, {0, 0, 0}};
    for (int i = 0; i < 3; i++) rgb[i] = pal[c % 16][i] / 255.0f;
}


// ----------------------------------------------------------------------------
// scoring: intersection and union per class, accumulated over the labeled frames

typedef struct { int64_t inter[MAX_CLASSES], uni[MAX_CLASSES]; } Score;

static void score_add(Score* s, const unsigned char* pred, const unsigned char* lab, int n) {
    for (int i = 0; i < n; i++) {
        int t = lab[i], p = pred[i];
        if (t == 255) continue;
        if (t == p) { s->inter[t]++; s->uni[t]++; }
        else { s->uni[t]++; if (p < MAX_CLASSES) s->uni[p]++; }
    }
}

// IoU of class c, NAN when the class is in neither prediction nor label; mean IoU over the
// classes present in prediction or label, NAN when nothing scored (ttt.c)
static double score_iou(const Score* s, int c) { return class_iou(s->inter[c], s->uni[c]); }
static double score_miou(const Score* s) { return mean_iou_counts(s->inter, s->uni, MAX_CLASSES, NULL); }

// ----------------------------------------------------------------------------
// 1 if s is a number as JSON writes it: -?digits(.digits)?([eE][+-]?digits)? (strtod would also
// take "0x0", "inf" or "nan", which JSON does not)
static int is_json_number(const char* s) {
    const char* p = s;
    if (*p == '-') p++;
    if (!isdigit((unsigned char)*p)) return 0;
    while (isdigit((unsigned char)*p)) p++;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p)) return 0;
        while (isdigit((unsigned char)*p)) p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!isdigit((unsigned char)*p)) return 0;
        while (isdigit((unsigned char)*p)) p++;
    }
    return *p == 0;
}

// metrics.png: loss and mIoU over frames, drawn into an RGB buffer with a 3x5 font

typedef struct { float* px; int H, W; } Canvas;

static void put_px(Canvas* cv, int x, int y, const float* col) { image_put_pixel(cv->px, cv->H, cv->W, x, y, col); }

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
    image_draw_text(cv->px, cv->H, cv->W, x, y, s, scale, col);
}

// frame blended half and half with the colours of the predicted classes; with class names and
// a frame wide enough, a legend of the predicted classes in the top-left corner
static void overlay(float* out, const float* frame, const unsigned char* pred, int H, int W) {
    int present[MAX_CLASSES] = {0};
    for (int i = 0; i < H * W; i++) {
        float col[3];
        class_colour(pred[i], col);
        for (int c = 0; c < 3; c++) out[3 * i + c] = 0.5f * frame[3 * i + c] + 0.5f * col[c];
        present[pred[i]] = 1;
    }
    if (class_names == NULL || W < 320 || H < 100) return;
    Canvas cv = {out, H, W};
    const float white[3] = {1.0f, 1.0f, 1.0f}, black[3] = {0.0f, 0.0f, 0.0f};
    int y = 4;
    for (int c = 0; c < CITYSCAPES_NUM_CLASSES && y + 12 <= H; c++) {
        if (!present[c]) continue;
        float col[3];
        class_colour(c, col);
        int len = (int)strlen(class_names[c]);
        for (int yy = y - 2; yy < y + 12; yy++)   // a dark box under swatch and name
            for (int xx = 2; xx < 22 + 8 * len; xx++) put_px(&cv, xx, yy, black);
        for (int yy = y; yy < y + 10; yy++) for (int xx = 4; xx < 14; xx++) put_px(&cv, xx, yy, col);
        draw_text(&cv, 18, y, class_names[c], 2, white);
        y += 14;
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
    if (!is_main_rank()) return;   // --gpus: GPU 0 writes every output
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

static void json_float(FILE* fp, double x) {
    if (isfinite(x)) fprintf(fp, "%.6g", x); else fprintf(fp, "null");
}

#define MAX_SETTINGS 64
typedef struct { int n; char key[MAX_SETTINGS][32]; char val[MAX_SETTINGS][512]; } Settings;
static Settings resolved_settings(const Args* a, const Video* v, int window);

// out/metrics.json, written to a temporary name and renamed into place
static void write_metrics(const char* path, const Args* a, const Video* v, int window, const FrameStats* st,
                          const int* order, int n, int n_classes, const Score* total, const RunResult* res,
                          const int* ck_steps, const double* ck_miou, int n_ck, double eta) {
    if (!is_main_rank()) return;   // --gpus: GPU 0 writes every output
    const Frame* fr = v->fr;
    FILE* fp = coco_json_open(path);
    fprintf(fp, "{\n  \"dir\": ");
    json_write_string(fp, a->dir);
    fprintf(fp, ", \"model\": ");
    json_write_string(fp, a->model_path);
    fprintf(fp, ", \"mode\": \"%s\", \"window\": %d, \"batch\": %d, "
            "\"steps\": %d, \"lr\": %g, \"seed\": %llu, \"shuffle\": %d, \"device\": \"%s\",\n",
            mode_names[a->mode], window, a->sr.batch, a->steps, a->opt.lr,
            (unsigned long long)a->seed, a->shuffle, ttt_device_name(ttt_device));
    // every resolved setting, as printed on the "settings:" line at start
    Settings set = resolved_settings(a, v, window);
    fprintf(fp, "  \"settings\": {");
    for (int i = 0; i < set.n; i++) {
        fprintf(fp, "%s\"%s\": ", i ? ", " : "", set.key[i]);
        if (is_json_number(set.val[i])) fprintf(fp, "%s", set.val[i]); else json_write_string(fp, set.val[i]);
    }
    fprintf(fp, "},\n");
    fprintf(fp, "  \"class_names\": [");
    for (int c = 0; c < n_classes; c++) {
        char num[16];
        snprintf(num, sizeof(num), "%d", c);
        if (c) fprintf(fp, ", ");
        json_write_string(fp, class_names ? class_names[c] : num);
    }
    fprintf(fp, "],\n  \"video_miou\": ");
    json_float(fp, res->miou_frames);
    fprintf(fp, ", \"num_scored\": %d,\n", res->n_scored);
    fprintf(fp, "  \"num_frames\": %d, \"num_classes\": %d, \"ms_per_frame\": ", n, n_classes);
    json_float(fp, res->ms_frame);
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
        json_write_string(fp, fr[order[i]].name);
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
    coco_json_close(fp, path);
}

// ----------------------------------------------------------------------------
// the stream


// frame i as on disk, (H, W, 3) in [0, 1]
static float* load_frame(const Video* v, int i) {
    int H, W;
    float* x = image_load(v->fr[i].path, &H, &W);
    if (H != v->H || W != v->W) ttt_die("frame '%s' changed size while running", v->fr[i].path);
    return x;
}

// ----------------------------------------------------------------------------
// where the frames come from: a folder (listed and checked before the run) or standard input

// SIGINT / SIGTERM: finish the current frame, then end as at the end of the input (summary,
// metrics.json, metrics.png); a second signal kills at once
static volatile sig_atomic_t stop_signal = 0;
static void on_stop_signal(int sig) { stop_signal = sig; signal(sig, SIG_DFL); }

// --out-raw: the overlays as raw rgb24 frames (-1: none); the reader closing it ends the run
static int raw_out_fd = -1;
static int raw_out_closed = 0;

typedef struct {
    Video* v;
    const int* order;     // a folder: the processing order of v->fr
    int next;             // frames handed out so far
    int fd;               // standard input: its descriptor; -1 for a folder
    int cap;              // standard input: room in v->fr
    uint64_t seed;        // --seed (names give each frame's seed)
    unsigned char* raw;   // standard input: one frame, H * W * 3 bytes
    double t_first, t_last;   // when the first and the last frame had arrived
    double wait_s;        // seconds blocked waiting for the frames after the first
    char error[512];      // why the input ended early ("" when it ended cleanly)
} FrameSource;

static FrameSource source_open(const Args* a, Video* v, const int* order) {
    FrameSource src;
    memset(&src, 0, sizeof(src));
    src.v = v; src.order = order; src.fd = -1; src.seed = a->seed;
    if (a->from_stdin) {
        src.fd = STDIN_FILENO;
        src.raw = (unsigned char*)mallocCheck((size_t)v->H * v->W * 3);
    }
    return src;
}

// read up to n bytes, blocking until they are there; fewer only at the end of the input, on a
// stop signal or a read error (then in src->error)
static size_t read_full(FrameSource* src, unsigned char* buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(src->fd, buf + got, n - got);
        if (r > 0) { got += (size_t)r; continue; }
        if (r == 0 || stop_signal) break;
        if (errno == EINTR) continue;
        snprintf(src->error, sizeof(src->error), "cannot read standard input: %s", strerror(errno));
        break;
    }
    return got;
}

// The next frame, (H, W, 3) in [0, 1], and its index in v->fr; NULL at the end of the input.
// Standard input: raw rgb24, H * W * 3 bytes a frame, read as it arrives, named frame000001.png,
// frame000002.png, ... (so its TTT randomness is that of a folder of frames with those names).
// Reading blocks until a whole frame is there: when the input is faster than the model, the
// frames wait in the pipe and the producer blocks on its full pipe (backpressure); nothing is
// queued beyond the pipe and nothing is dropped.
static float* source_next(FrameSource* src, int* index) {
    Video* v = src->v;
    if (stop_signal || raw_out_closed) return NULL;
    if (src->fd < 0) {
        if (src->next == v->n) return NULL;
        *index = src->order[src->next++];
        return load_frame(v, *index);
    }
    size_t bytes = (size_t)v->H * v->W * 3;
    double t0 = time_now_seconds();
    size_t got = read_full(src, src->raw, bytes);
    double t1 = time_now_seconds();
    if (src->next == 0) src->t_first = t1; else src->wait_s += t1 - t0;
    if (got == bytes) src->t_last = t1;
    if (got < bytes) {
        if (got == 0 && src->next == 0 && !stop_signal && !src->error[0])
            snprintf(src->error, sizeof(src->error), "standard input ended before the first frame (no data)");
        if (got > 0 && !stop_signal && !src->error[0])
            snprintf(src->error, sizeof(src->error), "standard input ended %zu bytes into frame %d (a %dx%d rgb24 frame "
                     "is %zu bytes): the stream was cut, or --size is not the video's size; the %d whole frames "
                     "before it were processed", got, src->next + 1, v->W, v->H, bytes, src->next);
        return NULL;
    }
    if (v->n == src->cap) {
        src->cap = src->cap ? 2 * src->cap : 256;
        Frame* grown = (Frame*)mallocCheck((size_t)src->cap * sizeof(Frame));
        if (v->n) memcpy(grown, v->fr, (size_t)v->n * sizeof(Frame));
        free(v->fr);
        v->fr = grown;
    }
    Frame* f = &v->fr[v->n];
    char name[64];
    snprintf(name, sizeof(name), "frame%06d.png", v->n + 1);
    f->name = strdup(name);
    f->stem = strdup(name);
    *strrchr(f->stem, '.') = 0;
    f->path = strdup("-");
    f->label_path = NULL;
    f->seed = frame_seed(src->seed, name);
    *index = v->n++;
    src->next++;
    float* x = (float*)mallocCheck(bytes * sizeof(float));
    for (size_t i = 0; i < bytes; i++) x[i] = src->raw[i] / 255.0f;
    return x;
}

static void source_close(FrameSource* src) { free(src->raw); }

// 1 when reading the next frame would wait: standard input has no data ready
static int source_idle(const FrameSource* src) {
    if (src->fd < 0) return 0;
    struct pollfd p = {src->fd, POLLIN, 0};
    return poll(&p, 1, 0) == 0;
}

// the overlay (H, W, 3) in [0, 1] as one raw rgb24 frame on --out-raw; a reader that closed
// the pipe (EPIPE) ends the run after this frame, with a warning
static void write_raw_frame(const float* rgb, int H, int W) {
    size_t n = (size_t)H * W * 3, done = 0;
    unsigned char* px = (unsigned char*)mallocCheck(n);
    for (size_t i = 0; i < n; i++) px[i] = (unsigned char)(clamp01(rgb[i]) * 255.0f + 0.5f);
    while (done < n && !raw_out_closed) {
        ssize_t w = write(raw_out_fd, px + done, n - done);
        if (w > 0) { done += (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EPIPE) {
            fprintf(stderr, "warning: the reader of --out-raw closed it; stopping after this frame\n");
            raw_out_closed = 1;
            break;
        }
        ttt_die("cannot write --out-raw: %s", strerror(w < 0 ? errno : EIO));
    }
    free(px);
}

// the frame as the model sees it, (Hr, Wr, 3): resized as detectron2 resizes the uint8 image
// (PIL bilinear), or a copy
static float* model_view(const Video* v, const float* x) {
    float* r = (float*)mallocCheck((size_t)v->Hr * v->Wr * 3 * sizeof(float));
    if (v->Hr == v->H && v->Wr == v->W) memcpy(r, x, (size_t)v->H * v->W * 3 * sizeof(float));
    else image_resize_bilinear(r, x, v->H, v->W, v->Hr, v->Wr);
    return r;
}

// the crop (y0, x0) of Ht x Wt out of a resized frame into dst
static void copy_crop(float* dst, const float* src, const Video* v, int y0, int x0) {
    for (int y = 0; y < v->Ht; y++)
        memcpy(dst + (size_t)y * v->Wt * 3, src + ((size_t)(y0 + y) * v->Wr + x0) * 3, (size_t)v->Wt * 3 * sizeof(float));
}

// The B images of one TTT step, drawn from n frames (Hr, Wr, 3):
//   replace: each image a frame drawn uniformly with replacement (the paper's text);
//   cycle:   detectron2's TrainingSampler, as the released code's loader (rebuilt every frame):
//            the frames of a fresh random permutation, then another, ... (with 16 frames and
//            32 images each frame appears exactly twice); *pos = n starts a new permutation;
// then, when the recipe crops, a random Ht x Wt window of each (detectron2's RandomCrop draws
// the top row, then the left column).
static void fill_batch(float* batch, float* const* frames, int n, int B, const Video* v, Sampler sampler,
                       int* perm, int* pos, Rng* rng) {
    size_t per = (size_t)v->Ht * v->Wt * 3;
    for (int b = 0; b < B; b++) {
        int i;
        if (sampler == SAMPLER_CYCLE) {
            if (*pos >= n) {
                for (int j = 0; j < n; j++) perm[j] = j;
                for (int j = n - 1; j > 0; j--) { int r = rng_int(rng, j + 1), t = perm[j]; perm[j] = perm[r]; perm[r] = t; }
                *pos = 0;
            }
            i = perm[(*pos)++];
        } else {
            i = rng_int(rng, n);
        }
        int y0 = v->Hr > v->Ht ? rng_int(rng, v->Hr - v->Ht + 1) : 0;
        int x0 = v->Wr > v->Wt ? rng_int(rng, v->Wr - v->Wt + 1) : 0;
        copy_crop(batch + (size_t)b * per, frames[i], v, y0, x0);
    }
}

// the other techniques' state of a run: the initial model (kept when h trains or for class
// balance: resets restore f, h, g from it, and class balance compares with its prediction)
// and the Predictor (LN Adapt, smoothing, TTA; NULL: model_predict)
typedef struct { Model* m0; Predictor* pred; int resets; } Tech;

static int mode_trains(Mode mode) { return mode != MODE_FIXED && mode != MODE_OFFLINE && mode != MODE_LN_ADAPT; }

// the memory of a mode: *one_frame (k = 1) and *reset_each (initial weights before every frame)
static void mode_memory(const Args* a, int* one_frame, int* reset_each) {
    Memory mem = a->mode == MODE_NOMEM ? MEMORY_NOMEM : a->mode == MODE_IMPLICIT ? MEMORY_IMPLICIT :
                 a->mode == MODE_EXPLICIT ? MEMORY_EXPLICIT :
                 a->mode == MODE_TENT || a->mode == MODE_SELF_TRAIN ? a->memory : MEMORY_ONLINE;
    *one_frame = mem == MEMORY_IMPLICIT || mem == MEMORY_NOMEM;
    *reset_each = mem == MEMORY_EXPLICIT || mem == MEMORY_NOMEM;
}

// the initial weights and a fresh optimizer: f, g from f0, g0, or f, h, g from the initial model
static void reset_weights(const Tech* t, Model* m) {
    if (t->m0) { model_copy_params(m, t->m0); model_restart_optimizer(m); }
    else model_reset_ttt(m);
}

// the prediction of a frame (resized, Hr x Wr) as class ids at H x W: the Predictor when one
// is on, else model_predict; plain (or NULL) gets the single-view, unsmoothed ids
static void predict_frame(const Tech* t, Model* mp, const float* xr, uint64_t seed, int same_frame,
                          unsigned char* pred, unsigned char* plain, size_t npix) {
    if (t->pred) { predictor_run(t->pred, xr, seed, same_frame, pred, plain); return; }
    model_predict(mp, xr, pred);
    if (plain) memcpy(plain, pred, npix);
}

// the label of frame i as class ids (H, W); checked when the frames were listed
static unsigned char* load_label(const Video* v, int i) {
    int H, W;
    return label_load_format(v->fr[i].label_path, v->label_fmt, v->K, v->H, v->W, &H, &W);
}

static void print_hashes(const Model* m, const char* name) {
    printf("hash %s f=%016llx g=%016llx h=%016llx\n", name, (unsigned long long)model_param_hash(m, 0),
           (unsigned long long)model_param_hash(m, 2), (unsigned long long)model_param_hash(m, 1));
}

// predict every scored frame with the current model (mp: the prediction's model); returns the
// mean over frames of the per-frame mIoU (offline checkpoints)
static double evaluate_all(Model* mp, const Video* v, unsigned char* pred) {
    double sum = 0.0;
    int n = 0;
    for (int i = 0; i < v->n; i++) {
        if (v->fr[i].label_path == NULL) continue;
        model_predict(mp, v->cache[i], pred);
        unsigned char* l = load_label(v, i);
        Score s;
        memset(&s, 0, sizeof(s));
        score_add(&s, pred, l, v->H * v->W);
        double mi = score_miou(&s);
        if (isfinite(mi)) { sum += mi; n++; }
        free(l);
    }
    return n ? sum / n : NAN;
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
// frame t as the TTT step sees it (Ht, Wt, 3): resized, then its centre crop when the recipe crops
static float* ttt_view(const Video* v, int t) {
    float* x = load_frame(v, t);
    float* r = model_view(v, x);
    free(x);
    if (v->Ht == v->Hr && v->Wt == v->Wr) return r;
    float* c = (float*)mallocCheck((size_t)v->Ht * v->Wt * 3 * sizeof(float));
    copy_crop(c, r, v, (v->Hr - v->Ht) / 2, (v->Wr - v->Wt) / 2);
    free(r);
    return c;
}

static KstarEstimate estimate_kstar(Model* m, const Video* v, int masks, int every) {
    KstarEstimate e;
    memset(&e, 0, sizeof(e));
    int n = v->n, HW3 = v->Ht * v->Wt * 3;
    size_t np = model_num_params(m, 0) + model_num_params(m, 2);
    model_reset_ttt(m);   // f0, g0
    float* g_cur = (float*)mallocCheck(np * sizeof(float));    // grad l(x_t, mask)
    float* g_prev = (float*)mallocCheck(np * sizeof(float));   // grad l(x_(t-1), same mask)
    double* g_mean = (double*)mallocCheck(np * sizeof(double));   // running mean over masks
    double eta_sum = 0.0, sigma2_sum = 0.0, beta_sum = 0.0, dgrad2_sum = 0.0;
    int n_dgrad = 0;
    float* prev = NULL;
    for (int t = 0; t < n; t++) {
        float* x = ttt_view(v, t);
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


// the results over the first n frames done
static RunResult run_result(const Score* total, double frame_miou_sum, int n_scored, double ms_sum, int n) {
    RunResult r;
    r.miou_pooled = score_miou(total);
    r.miou_frames = n_scored ? frame_miou_sum / n_scored : NAN;
    r.n_scored = n_scored;
    r.ms_frame = n ? ms_sum / n : NAN;
    return r;
}

// p (n elements of elem bytes) in an allocation of m elements, the new ones zero
static void* grow_array(void* p, int n, int m, size_t elem) {
    char* q = (char*)callocCheck((size_t)m, elem);
    memcpy(q, p, (size_t)n * elem);
    free(p);
    return q;
}

// The state of one run over the video (run_stream): its buffers, the window of the last k
// frames, and the scores and times so far
typedef struct {
    const Args* a;
    Tech* tech;
    Model* m;                 // the TTT model (crop size)
    Model* mp;                // the prediction's model (the resized frame; may be m)
    Video* v;
    int k;                    // window size (1 for the one-frame memories)
    int reset_each;           // initial weights before every frame
    const char* out_dir;
    char* metrics_path;       // out_dir/metrics.json
    int cap;                  // room in order and st (they grow with standard input)
    int* order;               // (cap) frame indices in processing order
    FrameStats* st;           // (cap) per frame, by frame index
    float** window;           // (k) ring of the last k frames (Hr, Wr, 3), NULL when empty
    int n_win, head;          // frames in the window; next slot to overwrite
    int* perm;                // the cycling sampler's permutation
    float* batch;             // (B, Ht, Wt, 3) the step's images
    float* vis;               // (H, W, 3) overlay
    unsigned char *pred, *plain, *pred0;   // (H, W) class ids; unsmoothed and initial model's (class balance)
    Score total;              // pooled over the labeled frames so far
    double ms_sum, eta_sum, frame_miou_sum;
    int n_scored, n_done;
    int ck_steps[8], n_ck;    // offline: the checkpoints' steps and mIoU
    double ck_miou[8];
    TaskRun* tr;              // --task panoptic | instance, or NULL
    int tQ, tK, tH4, tW4, tHm, tWm;
    float *t_cls, *t_msk;     // the last prediction's logits for the task
    char task_text[256];      // the task's scores of this frame, for its line
    double metrics_at, metrics_cost;   // last write of metrics.json: when, how long
    FrameSource src;
    RunResult res;
} StreamRun;

// everything a run needs before its first frame; metrics.json written with no frames
static void stream_run_begin(StreamRun* r, const Args* a, Tech* tech, Model* m, Model* mp, Video* v, int k,
                             const char* out_dir) {
    memset(r, 0, sizeof(*r));
    int n = v->n, H = v->H, W = v->W, HW3 = H * W * 3, B = a->sr.batch;   // n: 0 for standard input
    int one_frame;
    mode_memory(a, &one_frame, &r->reset_each);
    if (one_frame) k = 1;
    r->a = a; r->tech = tech; r->m = m; r->mp = mp; r->v = v; r->k = k; r->out_dir = out_dir;
    make_dir(out_dir);
    reset_weights(tech, m);
    // the Predictor of this run: LN Adapt's ring holds the last k frames
    PredictConfig pc = {a->smooth, a->tta, a->tta_color, a->mode == MODE_LN_ADAPT, k, a->ln_prior};
    tech->pred = a->smooth > 1 || a->tta > 1 || a->mode == MODE_LN_ADAPT ? predictor_create(mp, &pc) : NULL;
    tech->resets = 0;
    r->plain = a->class_balance ? (unsigned char*)mallocCheck((size_t)H * W) : NULL;
    r->pred0 = a->class_balance ? (unsigned char*)mallocCheck((size_t)H * W) : NULL;

    // processing order: name order, or a seeded permutation with --shuffle (standard input: the
    // order of arrival; order and st grow with the frames)
    r->cap = n > 0 ? n : 256;
    r->order = (int*)mallocCheck((size_t)r->cap * sizeof(int));
    for (int i = 0; i < n; i++) r->order[i] = i;
    if (a->shuffle) {
        Rng g; rng_seed(&g, a->seed ^ 0x5348554646ULL);
        for (int i = n - 1; i > 0; i--) { int j = rng_int(&g, i + 1), t = r->order[i]; r->order[i] = r->order[j]; r->order[j] = t; }
    }
    r->window = (float**)callocCheck(k, sizeof(float*));
    r->perm = (int*)mallocCheck((size_t)(k > n ? k : n) * sizeof(int));
    r->batch = (float*)mallocCheck((size_t)B * v->Ht * v->Wt * 3 * sizeof(float));
    r->vis = (float*)mallocCheck((size_t)HW3 * sizeof(float));
    r->pred = (unsigned char*)mallocCheck((size_t)H * W);
    r->st = (FrameStats*)callocCheck(r->cap, sizeof(FrameStats));
    // --task panoptic | instance: inference on the last prediction's logits, COCO outputs, scores
    r->tr = v->task && is_main_rank() ? task_run_begin(v->task, out_dir, H, W) : NULL;
    if (r->tr) {
        model_prediction_sizes(mp, &r->tQ, &r->tK, &r->tH4, &r->tW4, &r->tHm, &r->tWm);
        r->t_cls = (float*)mallocCheck((size_t)r->tQ * (r->tK + 1) * sizeof(float));
        r->t_msk = (float*)mallocCheck((size_t)r->tQ * r->tH4 * r->tW4 * sizeof(float));
    }
    // metrics.json from the start (no frames yet): it marks the folder as this program's, and is
    // rewritten as frames are done, so an interrupted run keeps a record of them
    r->metrics_path = str_printf("%s/%s", out_dir, "metrics.json");
    r->res = run_result(&r->total, 0.0, 0, 0.0, 0);
    write_metrics(r->metrics_path, a, v, k, r->st, r->order, 0, v->K, &r->total, &r->res, r->ck_steps, r->ck_miou, 0, NAN);
    r->metrics_at = time_now_seconds();
}

// --mode offline: train on the whole video, one shuffled epoch after another (cycling), with
// the mIoU of every frame at 0, 1/4, 1/2, 3/4 and all of the steps; the frames are then predicted
static void train_offline(StreamRun* r) {
    const Args* a = r->a;
    Video* v = r->v;
    int n = v->n;
    int total_steps = a->offline_steps > 0 ? a->offline_steps : n * a->steps;
    for (int q = 0; q <= 4; q++) {   // checkpoints at 0, 1/4, 1/2, 3/4, all of the run
        int s = (int)((long long)total_steps * q / 4);
        if (r->n_ck == 0 || s != r->ck_steps[r->n_ck - 1]) r->ck_steps[r->n_ck++] = s;
    }
    Rng rng; rng_seed(&rng, a->seed ^ 0x4F46464C494E45ULL);
    int pos = n, ck = 0;
    double t0 = time_now_seconds(), loss_sum = 0.0;   // since the last checkpoint
    int loss_count = 0;
    for (int step = 0; step <= total_steps; step++) {
        if (ck < r->n_ck && step == r->ck_steps[ck]) {
            r->ck_miou[ck] = v->n_labeled ? evaluate_all(r->mp, v, r->pred) : NAN;
            printf("offline step %5d/%d  mean loss since last ", step, total_steps);
            if (loss_count) printf("%.5f", loss_sum / loss_count); else printf("-");
            printf("  mIoU ");
            loss_sum = 0.0; loss_count = 0;
            if (v->n_labeled) printf("%.4f\n", r->ck_miou[ck]); else printf("-\n");
            fflush(stdout);
            ck++;
        }
        if (step == total_steps) break;
        if (a->sr.restart_optimizer) model_restart_optimizer(r->m);
        fill_batch(r->batch, v->cache, n, a->sr.batch, v, SAMPLER_CYCLE, r->perm, &pos, &rng);
        float loss = model_ttt_step(r->m, r->batch, a->sr.batch, &a->opt, &rng);
        if (!isfinite(loss)) {
            fprintf(stderr, "warning: offline step %d: TTT loss is %f; resetting f, g to f0, g0 and continuing\n", step, loss);
            model_reset_ttt(r->m);
        } else { loss_sum += loss; loss_count++; }
    }
    printf("offline training: %d steps in %.1f s\n", total_steps, time_now_seconds() - t0);
}

// frame i, just read as x (H, W, 3), enters the run: its place in the order, the model's view xr
// (Hr, Wr, 3) replacing the oldest frame of the window, and the drift from the previous frame.
// Returns xr (the window owns it).
static float* frame_enters(StreamRun* r, int i, const float* x) {
    if (r->n_done == r->cap) {   // standard input: room for more frames
        r->order = (int*)grow_array(r->order, r->cap, 2 * r->cap, sizeof(int));
        r->st = (FrameStats*)grow_array(r->st, r->cap, 2 * r->cap, sizeof(FrameStats));
        r->cap *= 2;
    }
    r->order[r->n_done++] = i;   // (a folder: already so)
    int k = r->k;
    size_t view = (size_t)r->v->Hr * r->v->Wr * 3;
    float* xr = model_view(r->v, x);     // what the model sees
    const float* prev = r->window[(r->head + k - 1) % k];
    if (prev) {   // eta: how far the stream moves per frame, ||x_t - x_{t-1}||_2 (model's view)
        double d2 = 0.0;
        for (size_t j = 0; j < view; j++) d2 += (double)(xr[j] - prev[j]) * (xr[j] - prev[j]);
        r->eta_sum += sqrt(d2);
    }
    // window update: the newest frame replaces the oldest
    free(r->window[r->head]);
    r->window[r->head] = xr;
    r->head = (r->head + 1) % k;
    if (r->n_win < k) r->n_win++;
    return xr;
}

// adapt: a->steps steps of the mode's technique on batches from the window, before frame f is
// predicted. Returns the mean loss of the steps that ran (NaN when none did or the mode does
// not train); a NaN / Inf loss resets to the initial weights and ends the frame's steps.
static float adapt_before_frame(StreamRun* r, const Frame* f, Rng* rng) {
    const Args* a = r->a;
    Model* m = r->m;
    int B = a->sr.batch;
    if (!mode_trains(a->mode)) return NAN;
    if (r->reset_each) reset_weights(r->tech, m);
    if (a->sr.restart_optimizer) model_restart_optimizer(m);   // a fresh AdamW every frame
    double loss_sum = 0.0;
    int n_ok = 0, pos = r->n_win;   // the sampler starts a new permutation every frame
    for (int step = 0; step < a->steps; step++) {
        fill_batch(r->batch, r->window, r->n_win, B, r->v, a->sr.sampler, r->perm, &pos, rng);   // (B, Ht, Wt, 3)
        float loss = a->mode == MODE_TENT ? model_tent_step(m, r->batch, B, &a->opt, rng)
                   : a->mode == MODE_SELF_TRAIN ? model_self_train_step(m, r->batch, B, &a->opt, a->st_threshold,
                                                                        a->st_mask_ratio, rng, NULL)
                   : model_ttt_step(m, r->batch, B, &a->opt, rng);
        if (!isfinite(loss)) {
            fprintf(stderr, "warning: %s: %s loss is %f; resetting to the initial weights and continuing\n", f->name,
                    mode_names[a->mode], loss);
            reset_weights(r->tech, m);
            break;
        }
        loss_sum += loss; n_ok++;
    }
    return n_ok ? (float)(loss_sum / n_ok) : NAN;
}

// predict: h(f(xr)) as class ids at H x W into r->pred; with --class-balance, back to the
// initial weights and predict again when the class count drifts (Volpi et al.). Returns 1 on
// such a reset.
static int predict_checked(StreamRun* r, const Frame* f, const float* xr) {
    size_t npix = (size_t)r->v->H * r->v->W;
    predict_frame(r->tech, r->mp, xr, f->seed, 0, r->pred, r->plain, npix);
    if (!r->a->class_balance) return 0;
    model_predict(r->tech->m0, xr, r->pred0);
    if (!class_balance_reset(count_classes(r->plain, npix), count_classes(r->pred0, npix), r->a->cb_threshold)) return 0;
    reset_weights(r->tech, r->m);
    predict_frame(r->tech, r->mp, xr, f->seed, 1, r->pred, NULL, npix);
    r->tech->resets++;
    return 1;
}

// write: class ids and overlay (PNG files, the raw stream), and the task's outputs and scores
// of frame i (x: the frame as read, (H, W, 3))
static void write_frame_outputs(StreamRun* r, int i, const Frame* f, const float* x) {
    const Args* a = r->a;
    int H = r->v->H, W = r->v->W;
    if (a->save_png) {
        char* path = str_printf("%s/%s.png", r->out_dir, f->stem);
        label_save_png(path, r->pred, H, W);
        free(path);
    }
    if (a->save_png || raw_out_fd >= 0) overlay(r->vis, x, r->pred, H, W);
    if (a->save_png) {
        char* path = str_printf("%s/%s_overlay.png", r->out_dir, f->stem);
        image_save_png(path, r->vis, H, W);
        free(path);
    }
    if (raw_out_fd >= 0) write_raw_frame(r->vis, H, W);
    r->task_text[0] = '\0';
    if (r->tr) {
        model_last_logits(r->mp, r->t_cls, r->t_msk);
        task_run_frame(r->tr, f->stem, i, r->v->task_ann[i], i % a->score_every == 0, x, r->t_cls, r->t_msk,
                       r->tQ, r->tH4, r->tW4, r->tHm, r->tWm, r->task_text, sizeof(r->task_text));
    }
}

// score: frame i's IoU per class and mIoU (classes in its label or prediction), and the pooled
// counts, when it has a label
static void score_frame(StreamRun* r, int i, const Frame* f) {
    FrameStats* s = &r->st[i];
    int HW = r->v->H * r->v->W;
    s->miou = NAN;
    if (f->label_path) {
        unsigned char* lab = load_label(r->v, i);
        Score one;
        memset(&one, 0, sizeof(one));
        score_add(&one, r->pred, lab, HW);
        score_add(&r->total, r->pred, lab, HW);
        for (int c = 0; c < MAX_CLASSES; c++) s->iou[c] = (float)score_iou(&one, c);
        s->miou = (float)score_miou(&one);
        s->labeled = 1;
        if (isfinite(s->miou)) { r->frame_miou_sum += s->miou; r->n_scored++; }
        free(lab);
    }
    s->running_miou = (float)score_miou(&r->total);
}

// the frame's line: loss, times, mIoU so far and of the frame, the task's scores
static void print_frame_line(const StreamRun* r, int i, const Frame* f, int cb_reset) {
    const FrameStats* s = &r->st[i];
    if (r->src.fd < 0) printf("frame %4d/%d %-20s loss ", r->n_done, r->v->n, f->name);
    else printf("frame %4d %-20s loss ", r->n_done, f->name);
    if (isfinite(s->loss)) printf("%-9.5f", s->loss); else printf("%-9s", mode_trains(r->a->mode) ? "nan" : "-");
    printf(" ttt %8.1f ms  predict %8.1f ms", s->ms_ttt, s->ms_predict);
    if (cb_reset) printf("  class-balance reset");
    if (r->v->n_labeled) {
        if (isfinite(s->running_miou)) printf("  mIoU %.4f", s->running_miou); else printf("  mIoU -");
        if (isfinite(s->miou)) printf("  frame %.4f", s->miou);
    }
    if (r->tr) printf("  %s", r->task_text);
    printf("\n");
    fflush(stdout);
}

// metrics.json of the frames so far, while rewriting it costs under 5% of the time, and
// whenever the run would wait for input anyway
static void update_metrics(StreamRun* r) {
    double now = time_now_seconds();
    if (now - r->metrics_at < 20.0 * r->metrics_cost && !source_idle(&r->src)) return;
    r->res = run_result(&r->total, r->frame_miou_sum, r->n_scored, r->ms_sum, r->n_done);
    write_metrics(r->metrics_path, r->a, r->v, r->k, r->st, r->order, r->n_done, r->v->K, &r->total, &r->res,
                  r->ck_steps, r->ck_miou, r->n_ck, r->n_done > 1 ? r->eta_sum / (r->n_done - 1) : NAN);
    r->metrics_at = time_now_seconds();
    r->metrics_cost = r->metrics_at - now;
}

// the summary of the run (t_end: when the last frame was done), metrics.json and metrics.png
static void finish_run(StreamRun* r, double t_end) {
    const Args* a = r->a;
    const Video* v = r->v;
    const FrameSource* src = &r->src;
    int n = r->n_done, n_classes = v->K, k = r->k;
    size_t view = (size_t)v->Hr * v->Wr * 3;
    if (stop_signal) fprintf(stderr, "warning: stopped by signal %d after %d frames; the outputs and metrics cover them\n", (int)stop_signal, n);
    r->res = run_result(&r->total, r->frame_miou_sum, r->n_scored, r->ms_sum, n);
    const RunResult* res = &r->res;
    printf("summary: %d frames, mode %s, window %d: %.1f ms/frame (%.2f frames/s)",
           n, mode_names[a->mode], k, res->ms_frame, 1e3 / res->ms_frame);
    if (n > 1) {   // the first frame carries one-time warm-up costs
        double first = r->st[r->order[0]].ms_ttt + r->st[r->order[0]].ms_predict;
        printf("; without the first frame %.1f ms/frame", (r->ms_sum - first) / (n - 1));
    }
    printf("\n");
    if (src->fd >= 0 && n > 0) {   // frames per second against the input's rate
        double wall = t_end - src->t_first;   // from the first frame's arrival to the last one's outputs
        double arrived = n > 1 ? (n - 1) / (src->t_last - src->t_first) : NAN;   // frames/s that came in
        printf("input: %d frames from standard input in %.2f s: %.2f frames/s through the loop (the model alone "
               "%.2f frames/s); frames arrived at %.2f frames/s; waited %.2f s for input (%.0f%% of the time)\n", n, wall,
               n / wall, 1e3 / res->ms_frame, arrived, src->wait_s, wall > 0 ? 100.0 * src->wait_s / wall : 0.0);
        if (src->wait_s <= 0.05 * wall)
            printf("  the input was faster than the model: frames waited in the pipe and the producer blocked on it "
                   "(backpressure), so they arrived at the model's pace; none was queued beyond the pipe or dropped\n");
        else
            printf("  the model waited for the input: the input's rate (%.2f frames/s) set the pace\n", arrived);
    }
    if (a->class_balance) printf("class balance: %d resets to the initial weights in %d frames\n", r->tech->resets, n);
    double eta = n > 1 ? r->eta_sum / (n - 1) : NAN;
    printf("frame drift eta = mean ||x_t - x_(t-1)||_2 = %.3f (RMS per value %.4f; frames in [0, 1] as the model sees them, processing order)\n",
           eta, eta / sqrt((double)view));
    if (v->n_labeled) {
        printf("IoU per class over %d labeled frames (pooled):\n", v->n_labeled);
        for (int c = 0; c < n_classes; c++) {
            printf("  class %3d %-14s ", c, class_names ? class_names[c] : "");
            if (r->total.uni[c]) printf("%.4f\n", score_iou(&r->total, c)); else printf("-\n");
        }
        printf("mIoU %.4f\n", res->miou_pooled);
        printf("video mIoU (mean of per-frame mIoU over %d scored frames, the paper's score) %.4f\n",
               r->n_scored, res->miou_frames);
    }
    // one line for scripts (dev/reproduce_kitti.sh collects these)
    printf("RESULT dir=%s mode=%s window=%d frames=%d scored=%d video_miou=%.6f pooled_miou=%.6f ms_per_frame=%.2f\n",
           a->dir, mode_names[a->mode], k, n, r->n_scored, res->miou_frames, res->miou_pooled, res->ms_frame);
    write_metrics(r->metrics_path, a, v, k, r->st, r->order, n, n_classes, &r->total, res, r->ck_steps, r->ck_miou,
                  r->n_ck, eta);
    char* path = str_printf("%s/%s", r->out_dir, "metrics.png");
    write_plot(path, r->st, r->order, n);
    free(path);
    printf("wrote %s/%smetrics.json, metrics.png\n", r->out_dir, a->save_png ? "NAME.png, NAME_overlay.png, " : "");
    if (r->tr) task_run_end(r->tr, a->dir);
}

static void stream_run_free(StreamRun* r) {
    free(r->metrics_path);
    free(r->t_cls); free(r->t_msk);
    for (int i = 0; i < r->k; i++) free(r->window[i]);
    free(r->window); free(r->perm); free(r->batch); free(r->vis); free(r->pred); free(r->st); free(r->order);
    free(r->plain); free(r->pred0);
    predictor_free(r->tech->pred);
    r->tech->pred = NULL;
}

// Run the whole video once with window k, writing into out_dir: for each frame, read it,
// adapt, predict, write, score. m: the TTT model (crop size); mp: the prediction's model (the
// resized frame, scored at the original size; may be m).
static RunResult run_stream(const Args* a, Tech* tech, Model* m, Model* mp, Video* v, int k, const char* out_dir) {
    StreamRun r;
    stream_run_begin(&r, a, tech, m, mp, v, k, out_dir);
    if (a->mode == MODE_OFFLINE) train_offline(&r);
    r.src = source_open(a, v, r.order);
    for (;;) {
        int i;
        float* x = source_next(&r.src, &i);      // read: (H, W, 3) as on disk or as read, the overlay and score size
        if (x == NULL) break;
        const Frame* f = &v->fr[i];
        float* xr = frame_enters(&r, i, x);      // the model's view, into the window
        FrameStats* s = &r.st[i];
        Rng rng; rng_seed(&rng, f->seed);
        double t0 = time_now_seconds();
        s->loss = adapt_before_frame(&r, f, &rng);
        ttt_synchronize();
        if (!is_main_rank()) { free(x); continue; }   // --gpus: the other GPUs only train
        double t1 = time_now_seconds();
        int cb_reset = predict_checked(&r, f, xr);
        double t2 = time_now_seconds();
        s->ms_ttt = (float)((t1 - t0) * 1e3);
        s->ms_predict = (float)((t2 - t1) * 1e3);
        r.ms_sum += (t2 - t0) * 1e3;
        if (a->print_hashes) print_hashes(m, f->name);
        write_frame_outputs(&r, i, f, x);
        free(x);
        score_frame(&r, i, f);
        print_frame_line(&r, i, f, cb_reset);
        update_metrics(&r);
    }
    finish_run(&r, time_now_seconds());
    source_close(&r.src);
    if (r.src.error[0]) ttt_die("%s", r.src.error);   // after the frames before it were written out
    RunResult res = r.res;
    stream_run_free(&r);
    return res;
}

// ----------------------------------------------------------------------------
// command line

static void usage(void) {
    printf(
        "usage: ./stream DIR [options]\n"
        "       ./stream - --size WxH [options]     (raw rgb24 frames on standard input)\n"
        "Online test-time training on the frames in DIR (*.png, *.jpg, natural name order;\n"
        "other files, and frames that do not decode, are skipped with a warning; every frame is\n"
        "decoded once before the run). Writes OUT/NAME.png (class ids), OUT/NAME_overlay.png,\n"
        "OUT/metrics.json (from the start, rewritten as frames are done while that costs under\n"
        "5%% of the time, atomically) and OUT/metrics.png. Ctrl-C (SIGINT, SIGTERM) ends after\n"
        "the current frame with the summary and metrics of the frames done (exit 128 + signal).\n"
        "OUT may not be DIR, the labels folder or inside them; no two frames may write the same\n"
        "output (a.png and a_overlay.png); files in an OUT without metrics.json are not replaced.\n"
        "Labels are found from the layout of DIR: KITTI-STEP ROOT/images/SPLIT/SEQ ->\n"
        "ROOT/panoptic_maps/SPLIT/SEQ; Cityscapes ROOT/leftImg8bit/SPLIT/CITY -> ROOT/gtFine/...;\n"
        "else DIR_labels next to DIR (8-bit class ids, 255 = ignore).\n"
        "  --model PATH        checkpoint (default " DEFAULT_MODEL ", shipped in the repo)\n"
        "  --recipe R          demo | paper (default demo): the defaults of every option marked (R)\n"
        "                        below. paper = the released code (renwang435/video-ttt-release):\n"
        "                        batch 32, cycle sampler, restart on, lr 1e-4, backbone lr x0.1,\n"
        "                        wd 0.05 with exemptions, clip 0.01, drop-path 0.3, mask ratio 0.85,\n"
        "                        loss over all pixels, resize 1024/2048, TTT crops 1024x512.\n"
        "                        Options override the recipe wherever they stand on the line\n"
        "  --mode M            fixed | nomem | implicit | explicit | online | offline | ln-adapt |\n"
        "                        tent | self-train (default online)\n"
        "                        fixed: no TTT; nomem: reset to f0,g0 every frame, k=1;\n"
        "                        implicit: k=1, no reset; explicit: reset every frame, window k;\n"
        "                        online: no reset, window k; offline: train on shuffled frames\n"
        "                        of the whole video first (all frames held in memory),\n"
        "                        then predict every frame. Main Task Only: fixed with a model of\n"
        "                        ./train --no-mae. The other rows of the paper's Table 1:\n"
        "                        ln-adapt: no training; every LayerNorm of f and h normalises with\n"
        "                        its statistics mixed with their mean over the last k frames\n"
        "                        (--window, --ln-prior); tent: minimise the entropy of the\n"
        "                        prediction over the norm weights of f and h; self-train: the\n"
        "                        set loss on confident pseudo-labels of the current model, the\n"
        "                        input masked as in TTT-MAE, f and h trained (--st-threshold,\n"
        "                        --st-mask-ratio). tent and self-train take --memory and --batch,\n"
        "                        --steps, --lr and the recipe's optimizer settings as TTT-MAE\n"
        "  --memory M          tent, self-train: online | implicit | explicit | nomem (default online),\n"
        "                        as the TTT-MAE modes of those names: window k or 1, reset or not\n"
        "  --st-threshold T    self-train: keep a pseudo-label where max_k s_k / sum_k s_k > T, s the\n"
        "                        class scores of the prediction (default 0.9)\n"
        "  --st-mask-ratio R   self-train: fraction of 16x16 patches masked in its input (default 0.8)\n"
        "  --ln-prior N        ln-adapt: weight of a frame's own statistics against 1 per frame of the\n"
        "                        window (Schneider et al.'s N; default 16)\n"
        "  --class-balance on|off  reset to the initial weights when the number of classes in the\n"
        "                        prediction differs from the initial model's on the same frame by\n"
        "                        more than --cb-threshold (Volpi et al.); modes that train (default off)\n"
        "  --cb-threshold T    classes (default 1; negative: reset every frame)\n"
        "  --smooth K          temporal smoothing, any mode: the class scores averaged over the last K\n"
        "                        frames before the argmax (default 1 = off)\n"
        "  --tta N             majority vote, any mode: N views of each frame (the frame itself, then\n"
        "                        random flips, with --tta-color ColorAugSSD), per-pixel vote, ties to\n"
        "                        the earlier view (default 1 = off)\n"
        "  --tta-color on|off  ColorAugSSD in the --tta views (R: demo off, paper on)\n"
        "  --window K[,K...]   window of the last k frames (R: 16); a list runs each k\n"
        "                        in turn into OUT/window_K/ and prints a table of mIoU per k\n"
        "  --batch B           images per TTT step (R: demo 4, paper 32)\n"
        "  --sampler S         replace | cycle: how a step draws its images from the window (R: demo\n"
        "                        replace = uniform with replacement, the paper's text; paper cycle =\n"
        "                        detectron2's TrainingSampler, random permutations one after another)\n"
        "  --restart-optimizer on|off  a fresh AdamW (moments and step 0) every frame (R: demo off, paper on)\n"
        "  --micro-batch M     run each step's batch in chunks of M images, gradients accumulated\n"
        "                        (the same step; less memory). Default: the whole batch on the\n"
        "                        CPU, on the GPU the largest M that fits in its free memory\n"
        "  --steps S           TTT steps per frame (default 1)\n"
        "  --lr LR             AdamW learning rate (default 1e-4, the paper's code)\n"
        "  --beta1 B1 --beta2 B2 --eps E --wd WD   AdamW settings (default 0.9 0.999 1e-8 0.05)\n"
        "  --backbone-lr-scale S  learning rate of f relative to --lr (R: demo 1, paper 0.1)\n"
        "  --wd-exempt on|off  no weight decay on norms, embeddings, rel-pos tables (R: demo off, paper on)\n"
        "  --clip C            full-model gradient L2 clip of the TTT step, 0 = off (R: demo 0, paper 0.01)\n"
        "  --drop-path P       Swin stochastic depth in TTT steps, 0..P over the blocks (R: demo 0, paper 0.3)\n"
        "  --mask-ratio R      fraction of 16x16 patches masked (R: demo the checkpoint's, paper 0.85)\n"
        "  --loss-pixels all|masked  MSE over all pixels or the masked ones (R: demo masked, paper all)\n"
        "  --resize-short N    resize frames to short side N (R: demo 0 = off, paper 1024); the\n"
        "                        prediction is on the resized frame, scored at the original size\n"
        "  --max-long N        with --resize-short: cap on the long side (R: demo 0 = none, paper 2048)\n"
        "  --crop WxH          TTT on random W x H crops of the (resized) frame, 0 = whole frame\n"
        "                        (R: demo 0, paper 1024x512)\n"
        "  --labels DIR        label folder (overrides the layout); frames without a label are not\n"
        "                        scored in a plain folder; KITTI-STEP and Cityscapes label every frame\n"
        "  --label-format F    ids | kitti | cityscapes-trainids | cityscapes-labelids (with --labels;\n"
        "                        default: the layout's, else ids)\n"
        "  --class-names N     cityscapes | numbers (default: cityscapes for the KITTI-STEP and\n"
        "                        Cityscapes layouts with a 19-class model, else numbers)\n"
        "  --score-every N     score frames 1, 1+N, 1+2N, ... of the name order (default 1: all;\n"
        "                        the released COCO Videos protocol: 10)\n"
        "  --task T            semantic | panoptic | instance | colorize (default semantic). colorize: the\n"
        "                        gray frames (L of each) colourised by a colorization model (default\n"
        "                        " DEFAULT_COLORIZE_MODEL "; ./train --task colorize), OUT/NAME.png, PSNR and SSIM when\n"
        "                        the frames are in colour; modes fixed, nomem, implicit, explicit, online\n"
        "                        with --window, --batch, --steps, --lr, the model-recipe options, --seed,\n"
        "                        --save-png (color_stream.c).\n"
        "                        panoptic: Mask2Former's\n"
        "                        panoptic inference, OUT/panoptic/NAME.png + OUT/panoptic.json (COCO\n"
        "                        panoptic format), NAME_panoptic.png, PQ/SQ/RQ; instance: the top 100\n"
        "                        query x class masks, OUT/instances.json (COCO results, RLE masks),\n"
        "                        NAME_instances.png, mask AP. Ground truth from the layout of DIR\n"
        "                        (COCO ROOT/val2017 -> ROOT/annotations/panoptic_val2017.json;\n"
        "                        COCO Videos ROOT/raw_images/VID -> ROOT/annotations/train/VID.json,\n"
        "                        ROOT/panoptic_images/VID) or the two options below\n"
        "  --panoptic-json F --panoptic-dir D   COCO panoptic ground truth: JSON and its PNG folder\n"
        "  --pq-rule R         coco | released: crowd regions as panopticapi (COCO) or ignored as the\n"
        "                        released code's copy (default: released for COCO Videos, else coco)\n"
        "  --instance-gt G     things | all: instance ground truth = the thing segments (COCO, default)\n"
        "                        or every segment not ignored (the released COCO Videos loader)\n"
        "  --out DIR           output directory (default out/)\n"
        "  --save-png on|off   write NAME.png and NAME_overlay.png for every frame (default on)\n"
        "  - or --stdin        read the frames from standard input instead of DIR: raw rgb24, W x H x 3\n"
        "                        bytes a frame, as `ffmpeg -i VIDEO -f rawvideo -pix_fmt rgb24 -` writes;\n"
        "                        each is processed as it arrives, the run ends at the end of the input\n"
        "                        (a partial last frame is an error, after the whole frames are done).\n"
        "                        Frames are named frame000001.png, ...; no labels. When the input is\n"
        "                        faster than the model, reading blocks: frames wait in the pipe and the\n"
        "                        producer blocks on it (backpressure; nothing is dropped or queued\n"
        "                        beyond the pipe). The summary gives frames/s against the input's rate.\n"
        "                        Not with --mode offline, --shuffle, --kstar or a --window list\n"
        "  --size WxH          the size of the frames on standard input\n"
        "  --out-raw PATH|-    also write the overlays as raw rgb24 frames (the frames' size) to PATH,\n"
        "                        or to standard output with -, when every log line goes to standard\n"
        "                        error: ... | ./stream - --size WxH --out-raw - | ffmpeg -f rawvideo\n"
        "                        -pix_fmt rgb24 -s WxH -i - out.mp4\n"
        "  --seed S            seed of masks and window sampling (default 0)\n"
        "  --device D          cpu | cuda | auto (default auto)\n"
        "  --gpus N            split each TTT step's batch over N GPUs of this node (one process each,\n"
        "                      NCCL; gradients summed, the same weights everywhere); GPU 0 predicts and\n"
        "                      writes every output (default 1)\n"
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

static int parse_on_off(const char* opt, const char* v) {
    if (strcmp(v, "on") == 0) return 1;
    if (strcmp(v, "off") == 0) return 0;
    ttt_die("%s: expected on or off, got '%s'", opt, v);
    return 0;
}

static Args parse_args(int argc, char** argv) {
    Args a;
    memset(&a, 0, sizeof(a));
    a.model_path = DEFAULT_MODEL;
    a.mode = MODE_ONLINE;
    a.recipe = "demo";
    a.steps = 1;
    a.kstar_masks = 8;
    a.opt = opt_config_ttt();
    a.out_dir = "out";
    a.device = "auto";
    a.label_format = -1;
    a.class_names = -1;
    a.score_every = 1;
    a.pq_rule = -1;
    a.save_png = 1;
    a.gpus = 1;
    a.memory = MEMORY_ONLINE;
    a.st_threshold = 0.9f;
    a.st_mask_ratio = 0.8f;
    a.cb_threshold = 1;
    a.ln_prior = 16.0f;
    a.smooth = 1;
    a.tta = 1;
    a.tta_color = -1;
    // the recipe first, wherever it stands: the other options override it
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--recipe") == 0) a.recipe = argv[i + 1];
    if (strcmp(a.recipe, "demo") == 0) a.sr = stream_recipe_demo();
    else if (strcmp(a.recipe, "paper") == 0) a.sr = stream_recipe_paper();
    else ttt_die("--recipe: unknown recipe '%s' (demo, paper)", a.recipe);
    a.windows[0] = a.sr.window; a.n_windows = 1;
    a.mask_ratio = a.backbone_lr_scale = a.clip = a.drop_path = -1.0f;
    a.loss_all_pixels = a.wd_exempt = -1;
    for (int i = 1; i < argc; i++) {
        const char* o = argv[i];
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) { usage(); exit(0); }
        if (o[0] != '-' || strcmp(o, "-") == 0 || strcmp(o, "--stdin") == 0) {
            const char* d = o[0] == '-' ? "-" : o;
            if (a.dir) ttt_die("more than one frame source given ('%s' and '%s')", a.dir, d);
            a.dir = d;
            a.from_stdin = d[0] == '-';
            continue;
        }
        if (strcmp(o, "--shuffle") == 0) { a.shuffle = 1; continue; }
        if (strcmp(o, "--hash") == 0) { a.print_hashes = 1; continue; }
        if (strcmp(o, "--kstar") == 0) { a.kstar = 1; continue; }
        if (i + 1 >= argc) ttt_die("option '%s' needs a value (--help for usage)", o);
        const char* v = argv[++i];
        if (strcmp(o, "--model") == 0) { a.model_path = v; a.model_given = 1; }
        else if (strcmp(o, "--recipe") == 0) {}   // read above
        else if (strcmp(o, "--mode") == 0) {
            int found = 0;
            for (int m = 0; m < NUM_MODES; m++) if (strcmp(v, mode_names[m]) == 0) { a.mode = (Mode)m; found = 1; }
            if (!found) ttt_die("--mode: unknown mode '%s' (fixed, nomem, implicit, explicit, online, offline, ln-adapt, tent, self-train)", v);
        }
        else if (strcmp(o, "--memory") == 0) {
            int found = 0;
            for (int m = 0; m <= MEMORY_NOMEM; m++) if (strcmp(v, memory_names[m]) == 0) { a.memory = (Memory)m; found = 1; }
            if (!found) ttt_die("--memory: expected online, implicit, explicit or nomem, got '%s'", v);
            a.memory_given = 1;
        }
        else if (strcmp(o, "--st-threshold") == 0) a.st_threshold = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--st-mask-ratio") == 0) a.st_mask_ratio = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--ln-prior") == 0) a.ln_prior = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--class-balance") == 0) a.class_balance = parse_on_off(o, v);
        else if (strcmp(o, "--cb-threshold") == 0) {
            char* end;
            long t = strtol(v, &end, 10);
            if (end == v || *end || t < -1000000 || t > 1000000) ttt_die("--cb-threshold: expected an integer, got '%s'", v);
            a.cb_threshold = (int)t;
        }
        else if (strcmp(o, "--smooth") == 0) a.smooth = parse_int_arg(o, v, 1);
        else if (strcmp(o, "--tta") == 0) a.tta = parse_int_arg(o, v, 1);
        else if (strcmp(o, "--tta-color") == 0) a.tta_color = parse_on_off(o, v);
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
        else if (strcmp(o, "--batch") == 0) a.sr.batch = parse_int_arg(o, v, 1);
        else if (strcmp(o, "--sampler") == 0) {
            if (strcmp(v, "replace") == 0) a.sr.sampler = SAMPLER_REPLACE;
            else if (strcmp(v, "cycle") == 0) a.sr.sampler = SAMPLER_CYCLE;
            else ttt_die("--sampler: expected replace or cycle, got '%s'", v);
        }
        else if (strcmp(o, "--restart-optimizer") == 0) a.sr.restart_optimizer = parse_on_off(o, v);
        else if (strcmp(o, "--resize-short") == 0) a.sr.resize_short = parse_int_arg(o, v, 0);
        else if (strcmp(o, "--max-long") == 0) a.sr.max_long = parse_int_arg(o, v, 0);
        else if (strcmp(o, "--crop") == 0) {
            if (strcmp(v, "0") == 0) { a.sr.crop_w = a.sr.crop_h = 0; }
            else {
                char* x = strchr(v, 'x');
                if (x == NULL) ttt_die("--crop: expected WxH (e.g. 1024x512) or 0, got '%s'", v);
                char wbuf[32];
                snprintf(wbuf, sizeof(wbuf), "%.*s", (int)(x - v), v);
                a.sr.crop_w = parse_int_arg(o, wbuf, 16);
                a.sr.crop_h = parse_int_arg(o, x + 1, 16);
            }
        }
        else if (strcmp(o, "--steps") == 0) a.steps = parse_int_arg(o, v, 1);
        else if (strcmp(o, "--micro-batch") == 0) a.micro_batch = parse_int_arg(o, v, 1);
        else if (strcmp(o, "--lr") == 0) a.opt.lr = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--beta1") == 0) a.opt.beta1 = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--beta2") == 0) a.opt.beta2 = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--eps") == 0) a.opt.eps = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--wd") == 0) a.opt.weight_decay = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--backbone-lr-scale") == 0) a.backbone_lr_scale = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--wd-exempt") == 0) a.wd_exempt = parse_on_off(o, v);
        else if (strcmp(o, "--clip") == 0) a.clip = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--drop-path") == 0) a.drop_path = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--mask-ratio") == 0) a.mask_ratio = parse_float_arg(o, v, 0.0f);
        else if (strcmp(o, "--loss-pixels") == 0) {
            if (strcmp(v, "all") == 0) a.loss_all_pixels = 1;
            else if (strcmp(v, "masked") == 0) a.loss_all_pixels = 0;
            else ttt_die("--loss-pixels: expected all or masked, got '%s'", v);
        }
        else if (strcmp(o, "--labels") == 0) a.labels_dir = v;
        else if (strcmp(o, "--label-format") == 0) {
            static const char* names[] = {"ids", "kitti", "cityscapes-trainids", "cityscapes-labelids"};
            static const LabelFormat fmts[] = {LABEL_IDS, LABEL_KITTI_PANOPTIC, LABEL_CITYSCAPES_TRAINIDS, LABEL_CITYSCAPES_LABELIDS};
            for (int f = 0; f < 4; f++) if (strcmp(v, names[f]) == 0) a.label_format = fmts[f];
            if (a.label_format < 0) ttt_die("--label-format: expected ids, kitti, cityscapes-trainids or cityscapes-labelids, got '%s'", v);
        }
        else if (strcmp(o, "--class-names") == 0) {
            if (strcmp(v, "cityscapes") == 0) a.class_names = 1;
            else if (strcmp(v, "numbers") == 0) a.class_names = 0;
            else ttt_die("--class-names: expected cityscapes or numbers, got '%s'", v);
        }
        else if (strcmp(o, "--score-every") == 0) a.score_every = parse_int_arg(o, v, 1);
        else if (strcmp(o, "--task") == 0) a.task = task_parse(o, v);
        else if (strcmp(o, "--panoptic-json") == 0) a.panoptic_json = v;
        else if (strcmp(o, "--panoptic-dir") == 0) a.panoptic_dir = v;
        else if (strcmp(o, "--pq-rule") == 0) {
            if (strcmp(v, "coco") == 0) a.pq_rule = PQ_CROWD_COCO;
            else if (strcmp(v, "released") == 0) a.pq_rule = PQ_CROWD_RELEASED;
            else ttt_die("--pq-rule: expected coco or released, got '%s'", v);
        }
        else if (strcmp(o, "--instance-gt") == 0) {
            if (strcmp(v, "things") == 0) a.instance_gt_all = 0;
            else if (strcmp(v, "all") == 0) a.instance_gt_all = 1;
            else ttt_die("--instance-gt: expected things or all, got '%s'", v);
        }
        else if (strcmp(o, "--out") == 0) a.out_dir = v;
        else if (strcmp(o, "--out-raw") == 0) a.out_raw = v;
        else if (strcmp(o, "--save-png") == 0) a.save_png = parse_on_off(o, v);
        else if (strcmp(o, "--size") == 0) {
            char* x = strchr(v, 'x');
            if (x == NULL) ttt_die("--size: expected WxH (e.g. 1242x375), got '%s'", v);
            char wbuf[32];
            snprintf(wbuf, sizeof(wbuf), "%.*s", (int)(x - v), v);
            a.raw_W = parse_int_arg(o, wbuf, 1);
            a.raw_H = parse_int_arg(o, x + 1, 1);
            if (a.raw_W > 16384 || a.raw_H > 16384) ttt_die("--size: at most 16384x16384, got '%s'", v);
        }
        else if (strcmp(o, "--seed") == 0) a.seed = (uint64_t)parse_int_arg(o, v, 0);
        else if (strcmp(o, "--device") == 0) a.device = v;
        else if (strcmp(o, "--gpus") == 0) a.gpus = parse_int_arg(o, v, 1);
        else if (strcmp(o, "--offline-steps") == 0) a.offline_steps = parse_int_arg(o, v, 1);
        else if (strcmp(o, "--kstar-masks") == 0) a.kstar_masks = parse_int_arg(o, v, 2);
        else if (strcmp(o, "--kstar-every") == 0) a.kstar_every = parse_int_arg(o, v, 1);
        else ttt_die("unknown option '%s' (--help for usage)", o);
    }
    if (a.dir == NULL) ttt_die("expected a directory of frames, or - for raw frames on standard input: ./stream DIR [options] (--help for usage)");
    if (a.from_stdin) {   // one pass over frames as they arrive: nothing that needs them all, no labels
        if (a.raw_W == 0) ttt_die("frames from standard input need --size WxH (raw rgb24, W x H x 3 bytes a frame)");
        if (a.mode == MODE_OFFLINE) ttt_die("--mode offline trains on the whole video first; it cannot read frames from standard input");
        if (a.shuffle) ttt_die("--shuffle needs every frame up front; it cannot read frames from standard input");
        if (a.kstar) ttt_die("--kstar needs every frame up front; it cannot read frames from standard input");
        if (a.n_windows > 1) ttt_die("--window with a list runs the video once per k; standard input is read once: give one k");
        if (a.labels_dir) ttt_die("--labels: frames from standard input have no labels");
    } else if (a.raw_W) {
        ttt_die("--size is the size of raw frames from standard input (./stream - --size WxH); frames in a folder have their own");
    }
    if (a.opt.beta1 >= 1.0f || a.opt.beta2 >= 1.0f) ttt_die("--beta1 and --beta2 must be < 1");
    if (a.mask_ratio >= 1.0f) ttt_die("--mask-ratio must be below 1, got %g", a.mask_ratio);
    if (a.drop_path >= 1.0f) ttt_die("--drop-path must be below 1, got %g", a.drop_path);
    if (a.label_format >= 0 && a.labels_dir == NULL) ttt_die("--label-format needs --labels DIR");
    if (a.sr.max_long > 0 && a.sr.resize_short == 0) ttt_die("--max-long needs --resize-short");
    if (a.task != TASK_SEMANTIC && a.labels_dir) ttt_die("--labels is for --task semantic; panoptic and instance read COCO panoptic ground truth (--panoptic-json)");
    if (a.task == TASK_SEMANTIC && (a.panoptic_json || a.panoptic_dir)) ttt_die("--panoptic-json / --panoptic-dir need --task panoptic or instance");
    if (a.memory_given && a.mode != MODE_TENT && a.mode != MODE_SELF_TRAIN)
        ttt_die("--memory applies to --mode tent and self-train (the TTT-MAE modes name their memory: nomem, implicit, explicit, online)");
    if (a.class_balance && !mode_trains(a.mode))
        ttt_die("--class-balance needs a mode that trains at test time (nomem, implicit, explicit, online, tent, self-train), not %s", mode_names[a.mode]);
    if (a.st_threshold > 1.0f) ttt_die("--st-threshold must be in [0, 1], got %g", a.st_threshold);
    if (a.st_mask_ratio >= 1.0f) ttt_die("--st-mask-ratio must be below 1, got %g", a.st_mask_ratio);
    if (a.tta > 64) ttt_die("--tta: at most 64 views, got %d", a.tta);
    if (a.smooth > 64) ttt_die("--smooth: at most 64 frames, got %d", a.smooth);
    if (a.tta_color < 0) a.tta_color = strcmp(a.recipe, "paper") == 0;   // the recipe's training augmentation
    return a;
}

// the model's side of the recipe: the recipe's values, then the options given
static ModelRecipe resolve_model_recipe(const Args* a, const ModelConfig* cfg) {
    ModelRecipe r = strcmp(a->recipe, "paper") == 0 ? model_recipe_paper() : model_recipe_demo(cfg);
    if (a->mask_ratio >= 0.0f) r.mask_ratio = a->mask_ratio;
    if (a->loss_all_pixels >= 0) r.loss_all_pixels = a->loss_all_pixels;
    if (a->backbone_lr_scale >= 0.0f) r.backbone_lr_scale = a->backbone_lr_scale;
    if (a->wd_exempt >= 0) r.wd_exempt = a->wd_exempt;
    if (a->clip >= 0.0f) r.ttt_clip = a->clip;
    if (a->drop_path >= 0.0f) r.drop_path = a->drop_path;
    return r;
}

static void settings_add(Settings* s, const char* key, const char* fmt, ...) {
    if (s->n == MAX_SETTINGS) return;
    snprintf(s->key[s->n], sizeof(s->key[0]), "%s", key);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->val[s->n], sizeof(s->val[0]), fmt, ap);
    va_end(ap);
    s->n++;
}

// every setting of a run as it was resolved (recipe, options, the frames' sizes), in the order
// of the "settings:" line printed at start and of metrics.json's "settings"
static Settings resolved_settings(const Args* a, const Video* v, int window) {
    Settings s;
    s.n = 0;
    const ModelRecipe* r = &a->mr;
    settings_add(&s, "recipe", "%s", a->recipe);
    settings_add(&s, "mode", "%s", mode_names[a->mode]);
    settings_add(&s, "task", "%s", task_name(a->task));
    int one_frame, reset_each;
    mode_memory(a, &one_frame, &reset_each);
    settings_add(&s, "window", "%d", one_frame ? 1 : window);
    settings_add(&s, "batch", "%d", a->sr.batch);
    settings_add(&s, "micro_batch", "%d", a->micro_batch);
    settings_add(&s, "steps", "%d", a->steps);
    settings_add(&s, "sampler", "%s", sampler_names[a->sr.sampler]);
    settings_add(&s, "restart_optimizer", "%s", a->sr.restart_optimizer ? "on" : "off");
    settings_add(&s, "lr", "%g", a->opt.lr);
    settings_add(&s, "backbone_lr_scale", "%g", r->backbone_lr_scale);
    settings_add(&s, "beta1", "%g", a->opt.beta1);
    settings_add(&s, "beta2", "%g", a->opt.beta2);
    settings_add(&s, "eps", "%g", a->opt.eps);
    settings_add(&s, "wd", "%g", a->opt.weight_decay);
    settings_add(&s, "wd_exempt", "%s", r->wd_exempt ? "on" : "off");
    settings_add(&s, "clip", "%g", r->ttt_clip);
    settings_add(&s, "drop_path", "%g", r->drop_path);
    settings_add(&s, "mask_ratio", "%g", r->mask_ratio);
    settings_add(&s, "loss_pixels", "%s", r->loss_all_pixels ? "all" : "masked");
    settings_add(&s, "resize_short", "%d", a->sr.resize_short);
    settings_add(&s, "max_long", "%d", a->sr.max_long);
    settings_add(&s, "crop", "%dx%d", a->sr.crop_w, a->sr.crop_h);
    settings_add(&s, "frame_size", "%dx%d", v->W, v->H);
    settings_add(&s, "model_size", "%dx%d", v->Wr, v->Hr);
    settings_add(&s, "ttt_size", "%dx%d", v->Wt, v->Ht);
    settings_add(&s, "labels", "%s", a->labels_dir ? a->labels_dir : "none");
    static const char* format_options[] = {"ids", "kitti", "cityscapes-trainids", "cityscapes-labelids"};   // --label-format
    settings_add(&s, "label_format", "%s", a->labels_dir ? format_options[v->label_fmt] : "none");
    settings_add(&s, "score_every", "%d", a->score_every);
    settings_add(&s, "seed", "%llu", (unsigned long long)a->seed);
    settings_add(&s, "shuffle", "%s", a->shuffle ? "on" : "off");
    settings_add(&s, "offline_steps", "%d", a->offline_steps);
    settings_add(&s, "model", "%s", a->model_path);
    settings_add(&s, "device", "%s", ttt_device_name(ttt_device));
    settings_add(&s, "precision", "%s", matmul_precision_name());   // the GPU's matrix products (TTT_PRECISION)
    // the other techniques of Table 1
    settings_add(&s, "memory", "%s", a->mode == MODE_TENT || a->mode == MODE_SELF_TRAIN ? memory_names[a->memory] : "-");
    settings_add(&s, "st_threshold", "%g", a->st_threshold);
    settings_add(&s, "st_mask_ratio", "%g", a->st_mask_ratio);
    settings_add(&s, "ln_prior", "%g", a->ln_prior);
    settings_add(&s, "class_balance", "%s", a->class_balance ? "on" : "off");
    settings_add(&s, "cb_threshold", "%d", a->cb_threshold);
    settings_add(&s, "smooth", "%d", a->smooth);
    settings_add(&s, "tta", "%d", a->tta);
    settings_add(&s, "tta_color", "%s", a->tta_color ? "on" : "off");
    return s;
}

// --task colorize: color_stream.c's loop with the options it takes; the others are refused
static int colorize_main(const Args* a) {
    if (a->from_stdin || a->out_raw) ttt_die("--task colorize reads a folder of frames and writes PNGs; not standard input or --out-raw");
    if (a->gpus > 1) ttt_die("--task colorize runs on one device; drop --gpus");
    if (a->n_windows > 1) ttt_die("--task colorize takes one --window k, not a list");
    if (a->labels_dir || a->panoptic_json || a->panoptic_dir) ttt_die("--task colorize has no labels: the colour frames are their own ground truth");
    if (a->mode > MODE_ONLINE) ttt_die("--task colorize runs the TTT-MAE modes fixed, nomem, implicit, explicit and online, not %s", mode_names[a->mode]);
    if (a->kstar || a->shuffle || a->smooth > 1 || a->tta > 1 || a->class_balance || a->memory_given || a->micro_batch ||
        a->offline_steps || a->score_every != 1 || strcmp(a->recipe, "demo") != 0)
        ttt_die("--task colorize takes --mode, --window, --batch, --steps, --lr and the other AdamW options, the model-recipe "
                "options (--mask-ratio, --loss-pixels, --clip, --drop-path, ...), --seed, --out, --model, --device, --save-png");
    ttt_set_device(ttt_parse_device(a->device));
    ColorStreamArgs c;
    memset(&c, 0, sizeof(c));
    c.dir = a->dir; c.out_dir = a->out_dir; c.save_png = a->save_png;
    c.model_path = a->model_given ? a->model_path : DEFAULT_COLORIZE_MODEL;
    if (access(c.model_path, R_OK) == 0) {   // the model recipe: the checkpoint's demo recipe, then the options given
        ModelConfig cfg = model_read_config(c.model_path);
        c.recipe = resolve_model_recipe(a, &cfg);
        c.has_recipe = 1;
    }
    c.mode = (int)a->mode; c.window = a->windows[0]; c.batch = a->sr.batch; c.steps = a->steps;
    c.opt = a->opt; c.seed = a->seed;
    return color_stream_run(&c);
}

int main(int argc, char** argv) {
    Args a = parse_args(argc, argv);
    if (a.task == TASK_COLORIZE) return colorize_main(&a);
    if (a.sr.batch < a.gpus) ttt_die("--batch %d over --gpus %d: every GPU needs at least one image per step", a.sr.batch, a.gpus);
    if (a.gpus > 1 && a.from_stdin) ttt_die("--gpus %d: frames from standard input go to one process; use a folder of frames", a.gpus);
    ttt_cuda_precision();   // a bad TTT_PRECISION dies here, once, before anything is written
    dist_launch(a.gpus, a.device);   // --gpus N: one process per GPU from here on (dist.c)
    if (a.out_raw && strcmp(a.out_raw, "-") == 0) {
        // standard output carries the video: keep it for that and send every log line (ours and
        // the library's) to standard error
        fflush(stdout);
        raw_out_fd = dup(STDOUT_FILENO);
        if (raw_out_fd < 0 || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) ttt_die("--out-raw -: cannot set up standard output: %s", strerror(errno));
    }
    struct sigaction sa;   // Ctrl-C / SIGTERM: end after the current frame (no SA_RESTART: a blocked read returns)
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (a.out_raw) signal(SIGPIPE, SIG_IGN);   // a closed reader is an EPIPE, handled per frame
    ttt_set_device(ttt_parse_device(a.device));
    if (access(a.model_path, R_OK) != 0)
        ttt_die("cannot read model checkpoint '%s': %s (train one with ./train, or pass --model)", a.model_path, strerror(errno));
    ModelConfig cfg = model_read_config(a.model_path);
    if (cfg.colorize)   // its classes are ab bins (color.c), not segments
        ttt_die("checkpoint '%s' is a colorization model (%d ab bins); run it with --task colorize, or give a "
                "segmentation model for --task %s", a.model_path, cfg.num_classes, task_name(a.task));
    a.mr = resolve_model_recipe(&a, &cfg);

    // labels: --labels (format --label-format, else ids), or found from the layout of DIR
    Video v;
    memset(&v, 0, sizeof(v));
    static char found_labels[4096];
    v.label_fmt = a.label_format >= 0 ? (LabelFormat)a.label_format : LABEL_IDS;
    if (a.task == TASK_SEMANTIC && a.labels_dir == NULL && !a.from_stdin && find_label_layout(a.dir, found_labels, sizeof(found_labels), &v.label_fmt))
        a.labels_dir = found_labels;
    v.K = cfg.num_classes;
    int published = v.label_fmt != LABEL_IDS;   // KITTI-STEP or Cityscapes labels
    if (a.class_names == 1 || (a.class_names < 0 && published && v.K == CITYSCAPES_NUM_CLASSES)) {
        if (v.K != CITYSCAPES_NUM_CLASSES)
            ttt_die("--class-names cityscapes needs a 19-class model; '%s' has %d classes", a.model_path, v.K);
        class_names = cityscapes_class_names;
    }
    if (a.from_stdin) { v.H = a.raw_H; v.W = a.raw_W; }   // the frames arrive during the run
    else v.fr = list_frames(&a, v.label_fmt, v.K, &v.n, &v.H, &v.W, &v.n_labeled);
    TaskSetup task;
    memset(&task, 0, sizeof(task));
    if (a.task != TASK_SEMANTIC) {   // categories and ground truth, every scored frame checked now
        if (a.from_stdin) ttt_die("--task %s needs a folder of frames, not standard input", task_name(a.task));
        task = task_setup(a.task, v.K, a.model_path, a.dir, a.panoptic_json, a.panoptic_dir, a.pq_rule, a.instance_gt_all);
        char** names = (char**)mallocCheck(v.n * sizeof(char*));
        int* scored = (int*)mallocCheck(v.n * sizeof(int));
        for (int i = 0; i < v.n; i++) { names[i] = v.fr[i].name; scored[i] = i % a.score_every == 0; }
        v.task_ann = task_check_frames(&task, names, scored, v.n, v.H, v.W);
        v.task = &task;
        int n_ann = 0, n_things = 0;
        for (int i = 0; i < v.n; i++) n_ann += v.task_ann[i] >= 0 && scored[i];
        for (int k = 0; k < task.cats.n; k++) n_things += task.cats.isthing[k] != 0;
        printf("task %s: %d classes (%d things)%s%s, %d frames scored%s%s\n", task_name(a.task), task.cats.n,
               n_things, task.has_gt ? ", ground truth " : "",
               task.has_gt ? task.gt.json_path : "", n_ann, task.has_gt ? ", PQ crowd rule " : "",
               task.has_gt ? (task.pq_rule == PQ_CROWD_COCO ? "coco" : "released") : "");
        free(names); free(scored);
    }
    check_outputs(&a, &v);   // before anything is written
    if (a.out_raw && raw_out_fd < 0) {
        raw_out_fd = open(a.out_raw, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (raw_out_fd < 0) ttt_die("cannot write --out-raw '%s': %s", a.out_raw, strerror(errno));
    }
    // sizes: the model's view of a frame (resized), and the TTT images (crops of it)
    v.Hr = v.H; v.Wr = v.W;
    if (a.sr.resize_short > 0) resize_shortest_edge_size(v.H, v.W, a.sr.resize_short, a.sr.max_long > 0 ? a.sr.max_long : INT32_MAX, &v.Hr, &v.Wr);
    v.Ht = a.sr.crop_h > 0 && a.sr.crop_h < v.Hr ? a.sr.crop_h : v.Hr;   // detectron2: min(crop, size)
    v.Wt = a.sr.crop_w > 0 && a.sr.crop_w < v.Wr ? a.sr.crop_w : v.Wr;

    if (a.from_stdin)
        printf("stream: standard input: raw rgb24 frames of %dx%d (%d bytes each), no labels\n", v.W, v.H, v.W * v.H * 3);
    else
        printf("stream: %s: %d frames of %dx%d, %d with labels%s%s%s%s\n", a.dir, v.n, v.W, v.H, v.n_labeled,
               a.labels_dir ? " in " : "", a.labels_dir ? a.labels_dir : "", a.labels_dir ? " as " : "",
               a.labels_dir ? label_format_name(v.label_fmt) : "");
    Settings set = resolved_settings(&a, &v, a.windows[0]);
    printf("settings:");
    for (int i = 0; i < set.n; i++) printf(" %s=%s", set.key[i], set.val[i]);
    printf("\n");
    if (a.n_windows > 1) {
        printf("  windows ");
        for (int i = 0; i < a.n_windows; i++) printf("%s%d", i ? "," : "", a.windows[i]);
        printf("\n");
    }
    {
        int one_frame, reset_each;
        mode_memory(&a, &one_frame, &reset_each);
        if (one_frame) printf("  (mode %s%s%s uses k = 1)\n", mode_names[a.mode], a.mode == MODE_TENT || a.mode == MODE_SELF_TRAIN ? " --memory " : "",
                              a.mode == MODE_TENT || a.mode == MODE_SELF_TRAIN ? memory_names[a.memory] : "");
    }
    if (a.kstar) printf("  --kstar --kstar-masks %d --kstar-every %d%s\n", a.kstar_masks, a.kstar_every,
                        a.kstar_every ? "" : " (= about 16 frames)");

    // plan the activations for a micro-batch: the whole batch unless it does not fit
    int B = a.sr.batch;
    // (the prediction's model of the resized frame, allocated after it, gets its room first)
    size_t reserve = (v.Ht != v.Hr || v.Wt != v.Wr) ? model_predict_bytes(&cfg, v.Hr, v.Wr) : 0;
    int per_gpu = (B + dist_world() - 1) / dist_world();   // a GPU's share of the batch
    // h runs on the batch only in the modes that train it; else it only predicts, one frame
    int main_trained = a.mode == MODE_TENT || a.mode == MODE_SELF_TRAIN;
    int micro = a.micro_batch ? a.micro_batch : model_auto_micro_batch(&cfg, per_gpu, v.Ht, v.Wt, reserve, main_trained);
    if (micro > per_gpu) micro = per_gpu;
    if (micro < B)
        printf("  --micro-batch %d: each step of %d images runs in %d chunks (%.2f GiB of activations)\n", micro,
               B, (B + micro - 1) / micro,
               model_activation_bytes_planned(&cfg, micro, main_trained ? micro : 1, v.Ht, v.Wt) / 1073741824.0);
    Model* m = model_load_planned(a.model_path, micro, main_trained ? micro : 1, v.Ht, v.Wt);
    model_set_recipe(m, &a.mr);
    model_snapshot_ttt(m);
    dist_attach(m);   // --gpus N: TTT steps sum their gradients over the GPUs
    // the prediction runs on the whole resized frame and is scored at the original size
    Model* mp = m;
    if (v.Ht != v.Hr || v.Wt != v.Wr) mp = model_create_sharing(m, 1, v.Hr, v.Wr);
    model_set_predict_size(mp, v.H, v.W);
    // the initial model: resets of a mode that trains h restore it, class balance predicts with it
    Tech tech = {NULL, NULL, 0};
    if (a.mode == MODE_TENT || a.mode == MODE_SELF_TRAIN || a.class_balance) {
        tech.m0 = model_load(a.model_path, 1, v.Hr, v.Wr);
        model_set_predict_size(tech.m0, v.H, v.W);
    }
    if (a.mode == MODE_OFFLINE) {   // offline trains on random frames: decode and resize them all once
        v.cache = (float**)mallocCheck(v.n * sizeof(float*));
        for (int i = 0; i < v.n; i++) { float* x = load_frame(&v, i); v.cache[i] = model_view(&v, x); free(x); }
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

    RunResult res[MAX_WINDOWS];
    for (int w = 0; w < a.n_windows; w++) {
        char kstr[16];
        snprintf(kstr, sizeof(kstr), "%d", a.windows[w]);
        char* out = a.n_windows > 1 ? str_printf("%s/window_%s", a.out_dir, kstr) : strdup(a.out_dir);
        if (a.n_windows > 1) printf("== window %d\n", a.windows[w]);
        res[w] = run_stream(&a, &tech, m, mp, &v, a.windows[w], out);
        free(out);
        if (stop_signal || raw_out_closed) { a.n_windows = w + 1; break; }   // the remaining k are not run
    }
    if (raw_out_fd >= 0 && close(raw_out_fd) != 0) ttt_die("cannot write --out-raw: %s", strerror(errno));
    if (a.n_windows > 1) {
        printf("window sweep (mode %s):\n     k    mIoU  video mIoU  ms/frame\n", mode_names[a.mode]);
        for (int w = 0; w < a.n_windows; w++) {
            printf("  %4d  ", a.windows[w]);
            if (isfinite(res[w].miou_pooled)) printf("%.4f", res[w].miou_pooled); else printf("     -");
            if (isfinite(res[w].miou_frames)) printf("      %.4f", res[w].miou_frames); else printf("           -");
            printf("  %8.1f\n", res[w].ms_frame);
        }
        int best = -1;
        for (int w = 0; w < a.n_windows; w++)
            if (isfinite(res[w].miou_pooled) && (best < 0 || res[w].miou_pooled > res[best].miou_pooled)) best = w;
        if (best >= 0) printf("best k %d (mIoU %.4f)", a.windows[best], res[best].miou_pooled);
        if (a.kstar) printf("%stheory's k* %.2f", best >= 0 ? "; " : "", ks.kstar);
        if (best >= 0 || a.kstar) printf("\n");
    }
    dist_check_same_weights(m, "at the end");
    if (mp != m) model_free(mp);
    model_free(tech.m0);
    model_free(m);
    for (int i = 0; i < v.n; i++) {
        free(v.fr[i].name); free(v.fr[i].stem); free(v.fr[i].path); free(v.fr[i].label_path);
        if (v.cache) free(v.cache[i]);
    }
    free(v.cache); free(v.fr); free(v.task_ann);
    if (v.task) task_setup_free(&task);
    return stop_signal ? 128 + (int)stop_signal : 0;
}
