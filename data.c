// data.c: the data side of the paper's experiment. Class names and the Cityscapes label
// table, label formats with checked loaders, the real dataset layouts (KITTI-STEP,
// Cityscapes, plain folders), and detectron2's resizes and training augmentations ported
// faithfully (PIL's bilinear resize, PyTorch's nearest resize of labels, ColorAugSSD with
// OpenCV's 8-bit HSV). Every function is documented once, in ttt.h.
#include "ttt.h"
#include <dirent.h>
#include <errno.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#include "stb_image.h"   // declarations only; the implementation is compiled in ttt.c
#pragma GCC diagnostic pop

// ----------------------------------------------------------------------------
// class names and the Cityscapes table

const char* const cityscapes_class_names[CITYSCAPES_NUM_CLASSES] = {
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
};

// cityscapesScripts helpers/labels.py: id -> trainId
const unsigned char cityscapes_label_to_train[CITYSCAPES_NUM_LABEL_IDS] = {
    255, 255, 255, 255, 255, 255, 255,   //  0 unlabeled, ego vehicle, rectification border,
                                         //    out of roi, static, dynamic, ground
    0, 1,                                //  7 road, 8 sidewalk
    255, 255,                            //  9 parking, 10 rail track
    2, 3, 4,                             // 11 building, 12 wall, 13 fence
    255, 255, 255,                       // 14 guard rail, 15 bridge, 16 tunnel
    5,                                   // 17 pole
    255,                                 // 18 polegroup
    6, 7, 8, 9, 10, 11, 12, 13, 14, 15,  // 19 traffic light ... 28 bus
    255, 255,                            // 29 caravan, 30 trailer
    16, 17, 18,                          // 31 train, 32 motorcycle, 33 bicycle
};

int cityscapes_train_id(int label_id) {
    if (label_id >= 0 && label_id < CITYSCAPES_NUM_LABEL_IDS) return cityscapes_label_to_train[label_id];
    if (label_id == 255 || label_id == -1) return 255;   // license plate (-1), stored as 255
    return -1;
}

const char* label_format_name(LabelFormat fmt) {
    switch (fmt) {
        case LABEL_IDS: return "ids";
        case LABEL_KITTI_PANOPTIC: return "kitti-step panoptic";
        case LABEL_CITYSCAPES_TRAINIDS: return "cityscapes labelTrainIds";
        case LABEL_CITYSCAPES_LABELIDS: return "cityscapes labelIds";
    }
    return "?";
}

// ----------------------------------------------------------------------------
// label files

static int format_channels(LabelFormat fmt) { return fmt == LABEL_KITTI_PANOPTIC ? 3 : 1; }

static const char* format_expectation(LabelFormat fmt) {
    switch (fmt) {
        case LABEL_KITTI_PANOPTIC: return "an 8-bit RGB KITTI-STEP panoptic map (semantic id in R)";
        case LABEL_CITYSCAPES_LABELIDS: return "an 8-bit single-channel PNG of Cityscapes label ids";
        case LABEL_CITYSCAPES_TRAINIDS: return "an 8-bit single-channel PNG of Cityscapes train ids";
        default: return "an 8-bit single-channel PNG of class ids";
    }
}

// header checks shared by the dying and the non-dying loader; 0 and a line in err on failure
static int label_header_ok(const char* path, LabelFormat fmt, int expect_H, int expect_W,
                           int* H, int* W, char* err, size_t errlen) {
    int w, h, c;
    if (!stbi_info(path, &w, &h, &c)) {
        snprintf(err, errlen, "cannot read label '%s': %s", path,
                 access(path, R_OK) != 0 ? strerror(errno) : stbi_failure_reason());
        return 0;
    }
    if (stbi_is_16_bit(path)) {
        snprintf(err, errlen, "label '%s' is a 16-bit PNG; expected %s", path, format_expectation(fmt));
        return 0;
    }
    if (c != format_channels(fmt)) {
        snprintf(err, errlen, "label '%s' has %d channels; expected %s", path, c, format_expectation(fmt));
        return 0;
    }
    if (expect_H > 0 && (h != expect_H || w != expect_W)) {
        snprintf(err, errlen, "label '%s' is %dx%d but its image is %dx%d (W x H)", path, w, h, expect_W, expect_H);
        return 0;
    }
    if (H) *H = h;
    if (W) *W = w;
    return 1;
}

void label_check_header(const char* path, LabelFormat fmt, int expect_H, int expect_W, int* H, int* W) {
    char err[2048];
    if (!label_header_ok(path, fmt, expect_H, expect_W, H, W, err, sizeof(err))) ttt_die("%s", err);
}

unsigned char* label_try_load_format(const char* path, LabelFormat fmt, int num_classes,
                                     int expect_H, int expect_W, int* H, int* W, char* err, size_t errlen) {
    int h, w, c;
    if (!label_header_ok(path, fmt, expect_H, expect_W, &h, &w, err, errlen)) return NULL;
    int nc = format_channels(fmt);
    unsigned char* px = stbi_load(path, &w, &h, &c, nc);
    if (px == NULL) {
        snprintf(err, errlen, "cannot read label '%s': %s", path, stbi_failure_reason());
        return NULL;
    }
    size_t n = (size_t)h * w;
    unsigned char* ids = (unsigned char*)mallocCheck(n);
    for (size_t i = 0; i < n; i++) {
        int raw = px[i * nc];   // the id itself, or R of a panoptic map
        int id = raw;
        if (fmt == LABEL_CITYSCAPES_LABELIDS) {
            id = cityscapes_train_id(raw);
            if (id < 0) {
                snprintf(err, errlen, "label '%s' has label id %d at pixel (%d, %d), which is not in the "
                         "Cityscapes table (0..33, 255)", path, raw, (int)(i % w), (int)(i / w));
                free(ids); stbi_image_free(px);
                return NULL;
            }
        }
        if (id != 255 && id >= num_classes) {
            if (fmt == LABEL_CITYSCAPES_LABELIDS)
                snprintf(err, errlen, "label '%s' has label id %d (train id %d) at pixel (%d, %d); train ids "
                         "must be < %d or 255", path, raw, id, (int)(i % w), (int)(i / w), num_classes);
            else
                snprintf(err, errlen, "label '%s' has class id %d at pixel (%d, %d); ids must be < %d or 255",
                         path, id, (int)(i % w), (int)(i / w), num_classes);
            free(ids); stbi_image_free(px);
            return NULL;
        }
        ids[i] = (unsigned char)id;
    }
    stbi_image_free(px);
    if (H) *H = h;
    if (W) *W = w;
    return ids;
}

unsigned char* label_load_format(const char* path, LabelFormat fmt, int num_classes,
                                 int expect_H, int expect_W, int* H, int* W) {
    char err[2048];
    unsigned char* ids = label_try_load_format(path, fmt, num_classes, expect_H, expect_W, H, W, err, sizeof(err));
    if (ids == NULL) ttt_die("%s", err);
    return ids;
}

// ----------------------------------------------------------------------------
// paths and layouts

static int is_dir(const char* path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char* path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int ends_with(const char* s, const char* suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

// a copy of path without trailing slashes ("/" stays "/")
static char* strip_slashes(const char* path) {
    char* s = strdup(path);
    if (!s) ttt_die("out of memory");
    size_t n = strlen(s);
    while (n > 1 && s[n - 1] == '/') s[--n] = 0;
    return s;
}

char* join_path(const char* a, const char* b) {
    char* s = strip_slashes(a);
    size_t n = strlen(s) + strlen(b) + 2;
    char* out = (char*)mallocCheck(n);
    snprintf(out, n, "%s/%s", s, b);
    free(s);
    return out;
}

// the label format of a Cityscapes gtFine folder: train ids when it has any
static LabelFormat cityscapes_folder_format(const char* label_dir) {
    LabelFormat fmt = LABEL_CITYSCAPES_LABELIDS;
    DIR* d = opendir(label_dir);
    if (!d) return fmt;
    struct dirent* e;
    while ((e = readdir(d)))
        if (ends_with(e->d_name, "_gtFine_labelTrainIds.png")) { fmt = LABEL_CITYSCAPES_TRAINIDS; break; }
    closedir(d);
    return fmt;
}

int find_label_layout(const char* frame_dir, char* label_dir, size_t n, LabelFormat* fmt) {
    char* d = strip_slashes(frame_dir);
    // d = PREFIX KIND/SPLIT/SEQ: the last three components and what comes before them
    char* s3 = strrchr(d, '/');
    char* s2 = NULL;
    char* s1 = NULL;
    if (s3 && s3 > d) { *s3 = 0; s2 = strrchr(d, '/'); *s3 = '/'; }
    if (s2 && s2 > d) { *s2 = 0; s1 = strrchr(d, '/'); *s2 = '/'; }
    int found = 0;
    if (s3 && s2) {
        const char* kind = s1 ? s1 + 1 : d;
        size_t kind_len = (size_t)(s2 - kind);
        int prefix_len = (int)(kind - d);   // includes the slash before KIND
        char cand[4096];
        if (kind_len == 6 && strncmp(kind, "images", 6) == 0) {
            snprintf(cand, sizeof(cand), "%.*spanoptic_maps%s", prefix_len, d, s2);
            if (is_dir(cand)) { *fmt = LABEL_KITTI_PANOPTIC; found = 1; }
        } else if (kind_len == 11 && strncmp(kind, "leftImg8bit", 11) == 0) {
            snprintf(cand, sizeof(cand), "%.*sgtFine%s", prefix_len, d, s2);
            if (is_dir(cand)) { *fmt = cityscapes_folder_format(cand); found = 1; }
        }
        if (found) snprintf(label_dir, n, "%s", cand);
    }
    if (!found) {
        char cand[4096];
        snprintf(cand, sizeof(cand), "%s_labels", d);
        if (is_dir(cand)) { *fmt = LABEL_IDS; snprintf(label_dir, n, "%s", cand); found = 1; }
    }
    free(d);
    return found;
}

void label_path_for_frame(char* out, size_t n, const char* label_dir, const char* frame_name, LabelFormat fmt) {
    char stem[1024];
    snprintf(stem, sizeof(stem), "%s", frame_name);
    char* dot = strrchr(stem, '.');
    if (dot) *dot = 0;
    char* dir = strip_slashes(label_dir);
    if (fmt == LABEL_CITYSCAPES_TRAINIDS || fmt == LABEL_CITYSCAPES_LABELIDS) {
        if (ends_with(stem, "_leftImg8bit")) stem[strlen(stem) - strlen("_leftImg8bit")] = 0;
        snprintf(out, n, "%s/%s_gtFine_%s.png", dir, stem, fmt == LABEL_CITYSCAPES_TRAINIDS ? "labelTrainIds" : "labelIds");
    } else {
        snprintf(out, n, "%s/%s.png", dir, stem);
    }
    free(dir);
}

static int compare_strings(const void* a, const void* b) { return strcmp(*(char* const*)a, *(char* const*)b); }

// sorted names in dir: sub-folders (want_dirs) or files ending with suffix (NULL: image files)
char** list_names(const char* dir, int want_dirs, const char* suffix, int* count) {
    DIR* d = opendir(dir);
    if (!d) ttt_die("cannot open folder '%s': %s", dir, strerror(errno));
    int n = 0, cap = 64;
    char** names = (char**)mallocCheck(cap * sizeof(char*));
    struct dirent* e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char* full = join_path(dir, e->d_name);
        int keep = want_dirs ? is_dir(full)
                             : is_file(full) && (suffix ? ends_with(e->d_name, suffix) : has_image_ext(e->d_name));
        free(full);
        if (!keep) continue;
        if (n == cap) { cap *= 2; names = (char**)realloc(names, cap * sizeof(char*)); if (!names) ttt_die("out of memory"); }
        names[n] = strdup(e->d_name);
        if (!names[n]) ttt_die("out of memory");
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof(char*), compare_strings);
    *count = n;
    return names;
}

static void free_names(char** names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

typedef struct { int n, cap; char** images; char** labels; LabelFormat* fmt; } ItemList;

static void item_add(ItemList* l, char* image, char* label, LabelFormat fmt) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->images = (char**)realloc(l->images, l->cap * sizeof(char*));
        l->labels = (char**)realloc(l->labels, l->cap * sizeof(char*));
        l->fmt = (LabelFormat*)realloc(l->fmt, l->cap * sizeof(LabelFormat));
        if (!l->images || !l->labels || !l->fmt) ttt_die("out of memory");
    }
    l->images[l->n] = image; l->labels[l->n] = label; l->fmt[l->n] = fmt;
    l->n++;
}

// every frame of every sub-folder of image_root (sorted), labels in the same sub-folder of
// label_root; fmt < 0: Cityscapes (the format is decided per folder)
static void list_sequences(ItemList* l, const char* image_root, const char* label_root, const char* suffix, int fmt) {
    int ns;
    char** seqs = list_names(image_root, 1, NULL, &ns);
    for (int s = 0; s < ns; s++) {
        char* idir = join_path(image_root, seqs[s]);
        char* ldir = join_path(label_root, seqs[s]);
        if (!is_dir(ldir)) ttt_die("image folder '%s' has no label folder '%s'", idir, ldir);
        LabelFormat f = fmt < 0 ? cityscapes_folder_format(ldir) : (LabelFormat)fmt;
        int nf;
        char** frames = list_names(idir, 0, suffix, &nf);
        for (int i = 0; i < nf; i++) {
            char lp[4096];
            label_path_for_frame(lp, sizeof(lp), ldir, frames[i], f);
            char* lab = strdup(lp);
            if (!lab) ttt_die("out of memory");
            item_add(l, join_path(idir, frames[i]), lab, f);
        }
        free_names(frames, nf);
        free(idir); free(ldir);
    }
    free_names(seqs, ns);
}

LabeledSet labeled_set_list(const char* root, const char* split, int num_classes, int check_ids) {
    LabeledSet s;
    memset(&s, 0, sizeof(s));
    ItemList l;
    memset(&l, 0, sizeof(l));
    char a[4096], b[4096];
    char* r = strip_slashes(root);
    snprintf(a, sizeof(a), "%s/leftImg8bit/%s", r, split);
    snprintf(b, sizeof(b), "%s/gtFine/%s", r, split);
    const char* where;
    if (is_dir(a)) {
        if (!is_dir(b)) ttt_die("Cityscapes images in '%s' but no labels folder '%s'", a, b);
        s.layout = "cityscapes";
        list_sequences(&l, a, b, "_leftImg8bit.png", -1);
        where = a;
    } else {
        snprintf(a, sizeof(a), "%s/images/%s", r, split);
        snprintf(b, sizeof(b), "%s/panoptic_maps/%s", r, split);
        if (is_dir(a) && is_dir(b)) {
            s.layout = "kitti-step";
            list_sequences(&l, a, b, ".png", LABEL_KITTI_PANOPTIC);
            where = a;
        } else {
            snprintf(a, sizeof(a), "%s/images", r);
            snprintf(b, sizeof(b), "%s/labels", r);
            if (!is_dir(a))
                ttt_die("unknown dataset layout in '%s': expected ROOT/leftImg8bit/%s with ROOT/gtFine/%s (Cityscapes), "
                        "ROOT/images/%s with ROOT/panoptic_maps/%s (KITTI-STEP), or DIR/images with DIR/labels",
                        root, split, split, split, split);
            s.layout = "plain";
            int nf;
            char** files = list_names(a, 0, NULL, &nf);
            for (int i = 0; i < nf; i++) {
                char lp[4096];
                label_path_for_frame(lp, sizeof(lp), b, files[i], LABEL_IDS);
                char* lab = strdup(lp);
                if (!lab) ttt_die("out of memory");
                item_add(&l, join_path(a, files[i]), lab, LABEL_IDS);
            }
            free_names(files, nf);
            where = a;
        }
    }
    if (l.n == 0) ttt_die("dataset folder '%s' has no images", where);
    free(r);
    s.n = l.n; s.images = l.images; s.labels = l.labels; s.fmt = l.fmt;
    s.H = (int*)mallocCheck(s.n * sizeof(int));
    s.W = (int*)mallocCheck(s.n * sizeof(int));
    // headers: every image decodes its size, every label exists and fits its image
    for (int i = 0; i < s.n; i++) {
        int c;
        if (!stbi_info(s.images[i], &s.W[i], &s.H[i], &c))
            ttt_die("cannot read image '%s': %s", s.images[i],
                    access(s.images[i], R_OK) != 0 ? strerror(errno) : stbi_failure_reason());
        if (!is_file(s.labels[i])) ttt_die("image '%s' has no label '%s'", s.images[i], s.labels[i]);
        label_check_header(s.labels[i], s.fmt[i], s.H[i], s.W[i], NULL, NULL);
    }
    if (check_ids) {   // decode every label in parallel; report the first bad one in list order
        int first_bad = s.n;
        char* errs = (char*)callocCheck((size_t)s.n, 1024);
        #pragma omp parallel for schedule(dynamic)
        for (int i = 0; i < s.n; i++) {
            unsigned char* ids = label_try_load_format(s.labels[i], s.fmt[i], num_classes, s.H[i], s.W[i],
                                                       NULL, NULL, errs + (size_t)i * 1024, 1024);
            if (ids == NULL) {
                #pragma omp critical
                if (i < first_bad) first_bad = i;
            }
            free(ids);
        }
        if (first_bad < s.n) ttt_die("%s", errs + (size_t)first_bad * 1024);
        free(errs);
    }
    return s;
}

void labeled_set_free(LabeledSet* s) {
    for (int i = 0; i < s->n; i++) { free(s->images[i]); free(s->labels[i]); }
    free(s->images); free(s->labels); free(s->fmt); free(s->H); free(s->W);
    memset(s, 0, sizeof(*s));
}

// ----------------------------------------------------------------------------
// detectron2's resizes

void resize_shortest_edge_size(int H, int W, int short_edge, int max_long, int* Ho, int* Wo) {
    double h = H, w = W, size = short_edge;
    double scale = size / (H < W ? h : w);
    double newh, neww;
    if (H < W) { newh = size; neww = scale * w; }
    else { newh = scale * h; neww = size; }
    double longest = newh > neww ? newh : neww;
    if (longest > max_long) {
        scale = max_long * 1.0 / longest;
        newh = newh * scale;
        neww = neww * scale;
    }
    *Wo = (int)(neww + 0.5);
    *Ho = (int)(newh + 0.5);
}

// PIL (src/libImaging/Resample.c) with the bilinear (triangle) filter, 8 bits per channel
#define PIL_PRECISION_BITS (32 - 8 - 2)

typedef struct {
    int ksize;
    int* bounds;   // (out, 2): first source index, number of taps
    int* k;        // (out, ksize) fixed-point weights
} PilCoeffs;

static double pil_triangle(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

// precompute_coeffs + normalize_coeffs_8bpc for the box (0, in) -> out
static PilCoeffs pil_coeffs(int in, int out) {
    PilCoeffs c;
    double scale = (double)((float)in - 0.0f) / out;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 1.0 * filterscale;
    c.ksize = (int)ceil(support) * 2 + 1;
    c.bounds = (int*)mallocCheck((size_t)out * 2 * sizeof(int));
    c.k = (int*)mallocCheck((size_t)out * c.ksize * sizeof(int));
    double* kk = (double*)mallocCheck((size_t)c.ksize * sizeof(double));
    double inv_filterscale = 1.0 / filterscale;
    for (int xx = 0; xx < out; xx++) {
        double center = 0.0 + (xx + 0.5) * scale;
        double ww = 0.0;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in) xmax = in;
        xmax -= xmin;
        int x;
        for (x = 0; x < xmax; x++) {
            double wt = pil_triangle((x + xmin - center + 0.5) * inv_filterscale);
            kk[x] = wt;
            ww += wt;
        }
        if (ww != 0.0) for (x = 0; x < xmax; x++) kk[x] /= ww;
        for (; x < c.ksize; x++) kk[x] = 0.0;
        for (x = 0; x < c.ksize; x++) {
            double v = kk[x] * (1 << PIL_PRECISION_BITS);
            c.k[(size_t)xx * c.ksize + x] = v < 0 ? (int)(-0.5 + v) : (int)(0.5 + v);
        }
        c.bounds[2 * xx] = xmin;
        c.bounds[2 * xx + 1] = xmax;
    }
    free(kk);
    return c;
}

static unsigned char pil_clip8(int ss) {
    int v = ss >> PIL_PRECISION_BITS;
    return (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
}

void resize_bilinear_u8(unsigned char* out, const unsigned char* in, int H, int W, int C,
                        int Ho, int Wo, int y0, int x0, int h, int w) {
    if (H < 1 || W < 1 || Ho < 1 || Wo < 1 || h < 1 || w < 1 || y0 < 0 || x0 < 0 || y0 + h > Ho || x0 + w > Wo)
        ttt_die("resize_bilinear_u8: bad sizes %dx%d -> %dx%d window (%d, %d) %dx%d", W, H, Wo, Ho, x0, y0, w, h);
    int need_h = Wo != W, need_v = Ho != H;
    PilCoeffs ch = {0, NULL, NULL}, cv = {0, NULL, NULL};
    if (need_h) ch = pil_coeffs(W, Wo);
    if (need_v) cv = pil_coeffs(H, Ho);
    // the source rows the window's output rows read (bounds grow with the output index)
    int r0 = y0, r1 = y0 + h;
    if (need_v) { r0 = cv.bounds[2 * y0]; r1 = cv.bounds[2 * (y0 + h - 1)] + cv.bounds[2 * (y0 + h - 1) + 1]; }
    // horizontal pass: rows r0..r1, output columns x0..x0+w, rounded to 8 bits
    int nr = r1 - r0;
    unsigned char* tmp = (unsigned char*)mallocCheck((size_t)nr * w * C);
    #pragma omp parallel for if ((size_t)nr * w > 65536)
    for (int r = 0; r < nr; r++) {
        const unsigned char* line = in + (size_t)(r0 + r) * W * C;
        unsigned char* o = tmp + (size_t)r * w * C;
        for (int xx = 0; xx < w; xx++) {
            if (!need_h) { memcpy(o + (size_t)xx * C, line + (size_t)(x0 + xx) * C, C); continue; }
            int xmin = ch.bounds[2 * (x0 + xx)], xn = ch.bounds[2 * (x0 + xx) + 1];
            const int* k = ch.k + (size_t)(x0 + xx) * ch.ksize;
            for (int c = 0; c < C; c++) {
                int ss = 1 << (PIL_PRECISION_BITS - 1);
                for (int x = 0; x < xn; x++) ss += line[(size_t)(x + xmin) * C + c] * k[x];
                o[(size_t)xx * C + c] = pil_clip8(ss);
            }
        }
    }
    // vertical pass
    #pragma omp parallel for if ((size_t)h * w > 65536)
    for (int yy = 0; yy < h; yy++) {
        unsigned char* o = out + (size_t)yy * w * C;
        if (!need_v) { memcpy(o, tmp + (size_t)(y0 + yy - r0) * w * C, (size_t)w * C); continue; }
        int ymin = cv.bounds[2 * (y0 + yy)] - r0, yn = cv.bounds[2 * (y0 + yy) + 1];
        const int* k = cv.k + (size_t)(y0 + yy) * cv.ksize;
        for (int i = 0; i < w * C; i++) {
            int ss = 1 << (PIL_PRECISION_BITS - 1);
            for (int y = 0; y < yn; y++) ss += tmp[(size_t)(ymin + y) * w * C + i] * k[y];
            o[i] = pil_clip8(ss);
        }
    }
    free(tmp);
    free(ch.bounds); free(ch.k); free(cv.bounds); free(cv.k);
}

void image_resize_bilinear(float* out, const float* in, int H, int W, int Ho, int Wo) {
    size_t n_in = (size_t)H * W * 3, n_out = (size_t)Ho * Wo * 3;
    unsigned char* a = (unsigned char*)mallocCheck(n_in);
    unsigned char* b = (unsigned char*)mallocCheck(n_out);
    for (size_t i = 0; i < n_in; i++) {
        float v = in[i] * 255.0f + 0.5f;
        a[i] = (unsigned char)(v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v);
    }
    resize_bilinear_u8(b, a, H, W, 3, Ho, Wo, 0, 0, Ho, Wo);
    for (size_t i = 0; i < n_out; i++) out[i] = b[i] / 255.0f;
    free(a); free(b);
}

// PyTorch's nearest source index (UpSampleKernel.cpp HelperInterpNearest, float64 input):
// scale = in / out in double, floorf of the product
static int torch_nearest_index(int dst, int in, int out) {
    double scale = (double)in / out;
    int i = (int)floorf((float)(scale * dst));
    return i < in - 1 ? i : in - 1;
}

void label_resize_nearest(unsigned char* out, const unsigned char* in, int H, int W,
                          int Ho, int Wo, int y0, int x0, int h, int w) {
    if (H < 1 || W < 1 || Ho < 1 || Wo < 1 || y0 < 0 || x0 < 0 || y0 + h > Ho || x0 + w > Wo)
        ttt_die("label_resize_nearest: bad sizes %dx%d -> %dx%d window (%d, %d) %dx%d", W, H, Wo, Ho, x0, y0, w, h);
    int* xs = (int*)mallocCheck((size_t)w * sizeof(int));
    for (int x = 0; x < w; x++) xs[x] = torch_nearest_index(x0 + x, W, Wo);
    for (int y = 0; y < h; y++) {
        const unsigned char* line = in + (size_t)torch_nearest_index(y0 + y, H, Ho) * W;
        for (int x = 0; x < w; x++) out[(size_t)y * w + x] = line[xs[x]];
    }
    free(xs);
}

// ----------------------------------------------------------------------------
// ColorAugSSD and OpenCV's 8-bit HSV

// RGB2HSV_b's tables: saturate_cast<int> rounds half to even (cvRound)
static int hsv_sdiv[256], hsv_hdiv180[256];
static void hsv_tables_init(void) {
    static int done = 0;
    if (done) return;
    #pragma omp critical(hsv_tables)
    if (!done) {
        hsv_sdiv[0] = hsv_hdiv180[0] = 0;
        for (int i = 1; i < 256; i++) {
            hsv_sdiv[i] = (int)lrint((255 << 12) / (1.0 * i));
            hsv_hdiv180[i] = (int)lrint((180 << 12) / (6.0 * i));
        }
        done = 1;
    }
}

void rgb_to_hsv_u8(const unsigned char rgb[3], unsigned char hsv[3]) {
    hsv_tables_init();
    const int shift = 12;
    int r = rgb[0], g = rgb[1], b = rgb[2];
    int v = b, vmin = b;
    if (g > v) v = g;
    if (r > v) v = r;
    if (g < vmin) vmin = g;
    if (r < vmin) vmin = r;
    int diff = v - vmin;
    int vr = v == r ? -1 : 0, vg = v == g ? -1 : 0;
    int s = (diff * hsv_sdiv[v] + (1 << (shift - 1))) >> shift;
    int h = (vr & (g - b)) + (~vr & ((vg & (b - r + 2 * diff)) + ((~vg) & (r - g + 4 * diff))));
    h = (h * hsv_hdiv180[diff] + (1 << (shift - 1))) >> shift;
    h += h < 0 ? 180 : 0;
    hsv[0] = (unsigned char)(h < 0 ? 0 : h > 255 ? 255 : h);
    hsv[1] = (unsigned char)s;
    hsv[2] = (unsigned char)v;
}

// OpenCV's vectorised HSV2RGB_b (the path nearly every pixel of an image takes) truncates
// b * 255 to an integer (v_trunc) and packs with saturation; its scalar tail rounds instead
static unsigned char trunc_u8(float x) {
    int v = (int)x;
    return (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
}

void hsv_to_rgb_u8(const unsigned char hsv[3], unsigned char rgb[3]) {
    float h = hsv[0], s = hsv[1] * (1.0f / 255.0f), v = hsv[2] * (1.0f / 255.0f);
    float b, g, r;
    if (s == 0) {
        b = g = r = v;
    } else {
        static const int sector_data[6][3] = {{1, 3, 0}, {1, 0, 2}, {3, 0, 1}, {0, 2, 1}, {0, 1, 3}, {2, 1, 0}};
        h *= 6.0f / 180.0f;
        int sector = (int)floorf(h);
        h -= sector;
        sector %= 6;
        sector += sector < 0 ? 6 : 0;
        float tab[4];
        tab[0] = v;
        tab[1] = v * (1.f - s);
        tab[2] = v * (1.f - s * h);
        tab[3] = v * (1.f - s * (1.f - h));
        b = tab[sector_data[sector][0]];
        g = tab[sector_data[sector][1]];
        r = tab[sector_data[sector][2]];
    }
    rgb[0] = trunc_u8(r * 255.0f);
    rgb[1] = trunc_u8(g * 255.0f);
    rgb[2] = trunc_u8(b * 255.0f);
}

ColorAugSSD color_aug_ssd_draw(Rng* rng) {
    // python's random.randrange(2), uniform(a, b) = a + (b - a) * random(), randint(a, b)
    ColorAugSSD p;
    memset(&p, 0, sizeof(p));
    p.brightness_on = rng_int(rng, 2);
    if (p.brightness_on) p.brightness = -32.0f + 64.0f * rng_uniform(rng);
    p.contrast_first = rng_int(rng, 2);
    // the draws come in the order the steps run
    for (int step = 0; step < 3; step++) {
        int which = p.contrast_first ? step : (step + 1) % 3;   // 0 contrast, 1 saturation, 2 hue
        if (which == 0) { p.contrast_on = rng_int(rng, 2); if (p.contrast_on) p.contrast = 0.5f + rng_uniform(rng); }
        if (which == 1) { p.saturation_on = rng_int(rng, 2); if (p.saturation_on) p.saturation = 0.5f + rng_uniform(rng); }
        if (which == 2) { p.hue_on = rng_int(rng, 2); if (p.hue_on) p.hue = -18 + rng_int(rng, 37); }
    }
    return p;
}

// ColorAugSSDTransform.convert: float32 x * alpha + beta, clipped to [0, 255], truncated
static unsigned char ssd_convert(unsigned char x, float alpha, float beta) {
    float v = (float)x * alpha;
    v = v + beta;
    v = v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v;
    return (unsigned char)(int)v;
}

void color_aug_ssd_apply(unsigned char* rgb, size_t npix, const ColorAugSSD* p) {
    for (size_t i = 0; i < npix; i++) {
        unsigned char* px = rgb + 3 * i;
        if (p->brightness_on) for (int c = 0; c < 3; c++) px[c] = ssd_convert(px[c], 1.0f, p->brightness);
        for (int step = 0; step < 3; step++) {
            int which = p->contrast_first ? step : (step + 1) % 3;
            if (which == 0 && p->contrast_on) {
                for (int c = 0; c < 3; c++) px[c] = ssd_convert(px[c], p->contrast, 0.0f);
            } else if (which == 1 && p->saturation_on) {
                unsigned char hsv[3];
                rgb_to_hsv_u8(px, hsv);
                hsv[1] = ssd_convert(hsv[1], p->saturation, 0.0f);
                hsv_to_rgb_u8(hsv, px);
            } else if (which == 2 && p->hue_on) {
                unsigned char hsv[3];
                rgb_to_hsv_u8(px, hsv);
                int hh = ((int)hsv[0] + p->hue) % 180;
                hsv[0] = (unsigned char)(hh < 0 ? hh + 180 : hh);   // python's modulo
                hsv_to_rgb_u8(hsv, px);
            }
        }
    }
}

// ----------------------------------------------------------------------------
// the training sample

AugDraw aug_draw(const AugConfig* c, int H, int W, Rng* rng) {
    AugDraw d;
    memset(&d, 0, sizeof(d));
    if (c->n_short > 0) {
        int s = c->short_sizes[rng_int(rng, c->n_short)];
        resize_shortest_edge_size(H, W, s, c->max_long, &d.Ho, &d.Wo);
    } else {
        float f = c->min_scale + (c->max_scale - c->min_scale) * rng_uniform(rng);
        d.Ho = (int)(H * f + 0.5f);
        d.Wo = (int)(W * f + 0.5f);
    }
    if (d.Ho < 1) d.Ho = 1;
    if (d.Wo < 1) d.Wo = 1;
    d.ch = c->crop_h < d.Ho ? c->crop_h : d.Ho;
    d.cw = c->crop_w < d.Wo ? c->crop_w : d.Wo;
    d.y0 = rng_int(rng, d.Ho - d.ch + 1);
    d.x0 = rng_int(rng, d.Wo - d.cw + 1);
    d.color_on = c->color_aug;
    if (d.color_on) d.color = color_aug_ssd_draw(rng);
    d.flip = c->flip ? rng_uniform(rng) < 0.5f : 0;
    return d;
}

void aug_apply(const AugConfig* c, const AugDraw* d, const unsigned char* img, const unsigned char* lab,
               int H, int W, float* out_img, unsigned char* out_lab) {
    static const float mean[3] = {123.675f / 255.0f, 116.28f / 255.0f, 103.53f / 255.0f};
    unsigned char* px = (unsigned char*)mallocCheck((size_t)d->ch * d->cw * 3);
    unsigned char* ids = (unsigned char*)mallocCheck((size_t)d->ch * d->cw);
    resize_bilinear_u8(px, img, H, W, 3, d->Ho, d->Wo, d->y0, d->x0, d->ch, d->cw);
    label_resize_nearest(ids, lab, H, W, d->Ho, d->Wo, d->y0, d->x0, d->ch, d->cw);
    if (d->color_on) color_aug_ssd_apply(px, (size_t)d->ch * d->cw, &d->color);
    for (int y = 0; y < c->crop_h; y++) {
        for (int x = 0; x < c->crop_w; x++) {
            float* o = out_img + ((size_t)y * c->crop_w + x) * 3;
            unsigned char* l = out_lab + (size_t)y * c->crop_w + x;
            if (y >= d->ch || x >= d->cw) {
                o[0] = mean[0]; o[1] = mean[1]; o[2] = mean[2];
                *l = 255;
                continue;
            }
            int sx = d->flip ? d->cw - 1 - x : x;
            const unsigned char* p = px + ((size_t)y * d->cw + sx) * 3;
            o[0] = p[0] / 255.0f; o[1] = p[1] / 255.0f; o[2] = p[2] / 255.0f;
            *l = ids[(size_t)y * d->cw + sx];
        }
    }
    free(px); free(ids);
}
