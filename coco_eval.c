// coco_eval.c: COCO's scores in C, as the field's tools compute them:
//   - run-length encoded masks, bit for bit pycocotools' maskApi (rleEncode, rleDecode,
//     rleToString, rleFrString, rleArea, rleToBbox, rleIou);
//   - panoptic quality PQ = SQ x RQ, panopticapi's pq_compute (cocodataset/panopticapi,
//     evaluation.py) and the copy the released TTT code evaluates COCO Videos with
//     (renwang435/video-ttt-release, mask2former/evaluation/coco_videos_panoptic_evaluation.py),
//     which differs only in ignoring "iscrowd";
//   - mask AP, pycocotools' COCOeval with iouType "segm" (evaluateImg, accumulate, summarize).
// dev/coco_eval_reference.py computes the same numbers with pycocotools and ports of both
// pq_compute on generated cases; test/test_coco_eval.c compares.
#include "ttt.h"

// ============================================================================
// RLE (pycocotools maskApi.c)

void rle_free(Rle* r) {
    free(r->cnts);
    r->cnts = NULL;
    r->m = 0;
}

static void rle_push(Rle* r, size_t* cap, uint32_t c) {
    if ((size_t)r->m == *cap) {
        *cap = *cap ? 2 * *cap : 16;
        uint32_t* n = (uint32_t*)mallocCheck(*cap * sizeof(uint32_t));
        if (r->m) memcpy(n, r->cnts, (size_t)r->m * sizeof(uint32_t));
        free(r->cnts);
        r->cnts = n;
    }
    r->cnts[r->m++] = c;
}

// the one scan both encoders share: column-major (x outer, y inner), runs of equal values
// starting with a run of zeros (possibly empty)
#define RLE_SCAN(r, h, w, IS_IN) do {                                           \
    size_t cap_ = 0; uint32_t c_ = 0; int p_ = 0;                               \
    (r)->h = (h); (r)->w = (w); (r)->m = 0; (r)->cnts = NULL;                   \
    for (int x = 0; x < (w); x++)                                               \
        for (int y = 0; y < (h); y++) {                                         \
            int v_ = (IS_IN) ? 1 : 0;                                           \
            if (v_ != p_) { rle_push((r), &cap_, c_); c_ = 0; p_ = v_; }        \
            c_++;                                                               \
        }                                                                       \
    rle_push((r), &cap_, c_);                                                   \
} while (0)

void rle_encode(Rle* r, const unsigned char* mask, int h, int w) {
    RLE_SCAN(r, h, w, mask[(size_t)y * w + x] != 0);
}

void rle_encode_id(Rle* r, const uint32_t* ids, int h, int w, uint32_t id) {
    RLE_SCAN(r, h, w, ids[(size_t)y * w + x] == id);
}

void rle_decode(const Rle* r, unsigned char* mask) {
    size_t p = 0, n = (size_t)r->h * r->w;
    int v = 0;
    for (int j = 0; j < r->m; j++, v = !v) {
        for (uint32_t c = 0; c < r->cnts[j] && p < n; c++, p++) {
            size_t y = p % r->h, x = p / r->h;
            mask[y * r->w + x] = (unsigned char)v;
        }
    }
}

uint32_t rle_area(const Rle* r) {
    uint32_t a = 0;
    for (int j = 1; j < r->m; j += 2) a += r->cnts[j];
    return a;
}

void rle_to_bbox(const Rle* r, double bb[4]) {
    uint32_t h = (uint32_t)r->h, xs = (uint32_t)r->w, ys = h, xe = 0, ye = 0, cc = 0, xp = 0;
    int m = (r->m / 2) * 2;
    if (m == 0) { bb[0] = bb[1] = bb[2] = bb[3] = 0.0; return; }
    for (int j = 0; j < m; j++) {
        cc += r->cnts[j];
        uint32_t t = cc - (uint32_t)(j % 2), y = t % h, x = (t - y) / h;
        if (j % 2 == 0) xp = x;
        else if (xp < x) { ys = 0; ye = h - 1; }   // a run of ones wraps into the next column
        if (x < xs) xs = x;
        if (x > xe) xe = x;
        if (y < ys) ys = y;
        if (y > ye) ye = y;
    }
    bb[0] = xs; bb[2] = xe - xs + 1;
    bb[1] = ys; bb[3] = ye - ys + 1;
}

// rleToString: each count (minus the one two back, for index > 2) in 5-bit groups, low first,
// 0x20 = more follows, 0x10 of the last group = sign; every group + 48 is one character
char* rle_to_string(const Rle* r) {
    char* s = (char*)mallocCheck((size_t)r->m * 7 + 1);
    size_t p = 0;
    for (int i = 0; i < r->m; i++) {
        long x = (long)r->cnts[i];
        if (i > 2) x -= (long)r->cnts[i - 2];
        int more = 1;
        while (more) {
            char c = (char)(x & 0x1f);
            x >>= 5;
            more = (c & 0x10) ? x != -1 : x != 0;
            if (more) c |= 0x20;
            c += 48;
            s[p++] = c;
        }
    }
    s[p] = 0;
    return s;
}

int rle_from_string(Rle* r, const char* s, int h, int w, char* err, size_t errlen) {
    size_t cap = 0, n = (size_t)h * w;
    r->h = h; r->w = w; r->m = 0; r->cnts = NULL;
    uint64_t total = 0;
    for (size_t p = 0; s[p];) {
        long x = 0;
        int k = 0, more = 1;
        while (more) {
            int c = (unsigned char)s[p] - 48;
            if (s[p] == 0 || c < 0 || c > 63 || k > 6) {
                snprintf(err, errlen, "malformed RLE counts string at character %zu", p);
                rle_free(r);
                return -1;
            }
            x |= (long)(c & 0x1f) << (5 * k);
            more = c & 0x20;
            p++; k++;
            if (!more && (c & 0x10)) x -= 1L << (5 * k);   // sign-extend the 5k-bit value (pycocotools: x |= -1 << 5k)
        }
        if (r->m > 2) x += (long)r->cnts[r->m - 2];
        if (x < 0 || x > (long)UINT32_MAX) {
            snprintf(err, errlen, "RLE run %d has length %ld", r->m, x);
            rle_free(r);
            return -1;
        }
        rle_push(r, &cap, (uint32_t)x);
        total += (uint64_t)x;
    }
    if (total != n) {
        snprintf(err, errlen, "RLE runs cover %llu pixels, the size %dx%d has %zu",
                 (unsigned long long)total, w, h, n);
        rle_free(r);
        return -1;
    }
    return 0;
}

// intersection over union of two masks of one size walking both run lists (rleIou);
// crowd: the union is the area of dt alone (COCO's crowd regions)
double rle_iou(const Rle* dt, const Rle* gt, int crowd) {
    if (dt->h != gt->h || dt->w != gt->w) return -1.0;
    uint64_t i = 0, u = 0;
    int ka = dt->m, kb = gt->m, a = 1, b = 1, va = 0, vb = 0;
    uint32_t ca = ka ? dt->cnts[0] : 0, cb = kb ? gt->cnts[0] : 0;
    int ct = 1;
    while (ct > 0) {
        uint32_t c = ca < cb ? ca : cb;
        if (va || vb) { u += c; if (va && vb) i += c; }
        ct = 0;
        ca -= c; if (!ca && a < ka) { ca = dt->cnts[a++]; va = !va; } ct += ca;
        cb -= c; if (!cb && b < kb) { cb = gt->cnts[b++]; vb = !vb; } ct += cb;
    }
    if (i == 0) u = 1;
    else if (crowd) u = rle_area(dt);
    return (double)i / (double)u;
}

// ============================================================================
// panoptic quality (panopticapi pq_compute_single_core, per image)

// index of id in the sorted (id, index) pairs, or -1
typedef struct { uint32_t id; int index; } IdIndex;
static int id_index_cmp(const void* a, const void* b) {
    uint32_t x = ((const IdIndex*)a)->id, y = ((const IdIndex*)b)->id;
    return x < y ? -1 : x > y;
}
static int id_lookup(const IdIndex* t, int n, uint32_t id) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (t[mid].id == id) return t[mid].index;
        if (t[mid].id < id) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
}
// (id, index) of a segment list sorted by id; -1 with a message on a duplicate or id 0
static IdIndex* id_table(const PanSeg* s, int n, const char* what, char* err, size_t errlen) {
    IdIndex* t = (IdIndex*)mallocCheck(((size_t)n + 1) * sizeof(IdIndex));
    for (int i = 0; i < n; i++) { t[i].id = s[i].id; t[i].index = i; }
    qsort(t, n, sizeof(IdIndex), id_index_cmp);
    for (int i = 0; i < n; i++) {
        if (t[i].id == 0 || (i > 0 && t[i].id == t[i - 1].id)) {
            snprintf(err, errlen, "%s segment id %u is %s", what, t[i].id, t[i].id == 0 ? "0 (void)" : "listed twice");
            free(t);
            return NULL;
        }
    }
    return t;
}

int pq_image(PQCat* stat, const uint32_t* gt_map, const PanSeg* gt, int n_gt,
             const uint32_t* pred_map, const PanSeg* pred, int n_pred, size_t npix,
             int crowd_mode, char* err, size_t errlen) {
    IdIndex* tg = id_table(gt, n_gt, "ground-truth", err, errlen);
    if (!tg) return -1;
    IdIndex* tp = id_table(pred, n_pred, "predicted", err, errlen);
    if (!tp) { free(tg); return -1; }
    // counts[(g + 1) * (n_pred + 1) + (p + 1)]: pixels with gt segment g and predicted p (index
    // -1 = void, id 0)
    size_t W = (size_t)n_pred + 1;
    int64_t* counts = (int64_t*)callocCheck(((size_t)n_gt + 1) * W, sizeof(int64_t));
    uint32_t last_g = 0, last_p = 0;
    int gi = -1, pi = -1, bad = 0;
    for (size_t i = 0; i < npix; i++) {
        uint32_t g = gt_map[i], p = pred_map[i];
        if (g != last_g) { last_g = g; gi = g ? id_lookup(tg, n_gt, g) : -1; }
        if (p != last_p) { last_p = p; pi = p ? id_lookup(tp, n_pred, p) : -1; }
        if ((g && gi < 0) || (p && pi < 0)) {
            snprintf(err, errlen, "%s segment id %u is in the map but not in the segment list",
                     g && gi < 0 ? "ground-truth" : "predicted", g && gi < 0 ? g : p);
            bad = 1;
            break;
        }
        counts[(size_t)(gi + 1) * W + (pi + 1)]++;
    }
    free(tg); free(tp);
    int64_t* pred_area = (int64_t*)callocCheck(W, sizeof(int64_t));
    int64_t* gt_area = (int64_t*)callocCheck((size_t)n_gt + 1, sizeof(int64_t));
    for (int g = -1; g < n_gt && !bad; g++)
        for (int p = -1; p < n_pred; p++) {
            int64_t c = counts[(size_t)(g + 1) * W + (p + 1)];
            pred_area[p + 1] += c;
            gt_area[g + 1] += c;
        }
    for (int p = 0; p < n_pred && !bad; p++)
        if (pred_area[p + 1] == 0) {
            snprintf(err, errlen, "predicted segment id %u is in the segment list but not in the map", pred[p].id);
            bad = 1;
        }
    for (int g = 0; g < n_gt && !bad; g++)
        if (gt_area[g + 1] == 0) {
            snprintf(err, errlen, "ground-truth segment id %u is in the segment list but not in the map", gt[g].id);
            bad = 1;
        }
    if (bad) { free(counts); free(pred_area); free(gt_area); return -1; }

    int coco = crowd_mode == PQ_CROWD_COCO;
    unsigned char* gt_matched = (unsigned char*)callocCheck((size_t)n_gt + 1, 1);
    unsigned char* pred_matched = (unsigned char*)callocCheck(W, 1);
    // matched pairs: same category, IoU > 0.5 (unique: segments do not overlap), the union
    // leaving out the prediction's void pixels; gt area as listed (the JSON's)
    for (int g = 0; g < n_gt; g++) {
        if (coco && gt[g].iscrowd) continue;
        for (int p = 0; p < n_pred; p++) {
            int64_t inter = counts[(size_t)(g + 1) * W + (p + 1)];
            if (inter == 0 || gt[g].category != pred[p].category) continue;
            int64_t uni = pred_area[p + 1] + gt[g].area - inter - counts[p + 1];
            double iou = (double)inter / (double)uni;
            if (iou > 0.5 && (coco || iou <= 1.0)) {   // (the released copy adds iou <= 1)
                if (gt[g].category >= 0) { stat[gt[g].category].tp++; stat[gt[g].category].iou += iou; }
                gt_matched[g] = 1;
                pred_matched[p] = 1;
            }
        }
    }
    // false negatives: unmatched gt segments; with COCO's rule crowd ones are not, and the
    // last crowd segment of each category excuses predictions of it
    int* crowd_of_cat = NULL;
    int max_cat = -1;
    for (int g = 0; g < n_gt; g++) if (gt[g].category > max_cat) max_cat = gt[g].category;
    for (int p = 0; p < n_pred; p++) if (pred[p].category > max_cat) max_cat = pred[p].category;
    crowd_of_cat = (int*)mallocCheck(((size_t)max_cat + 2) * sizeof(int));
    for (int c = 0; c <= max_cat + 1; c++) crowd_of_cat[c] = -1;
    for (int g = 0; g < n_gt; g++) {
        if (gt_matched[g]) continue;
        if (coco && gt[g].iscrowd) { if (gt[g].category >= 0) crowd_of_cat[gt[g].category] = g; continue; }
        if (gt[g].category >= 0) stat[gt[g].category].fn++;
    }
    // false positives: unmatched predictions, unless more than half of them lies on void (and
    // on a crowd region of their category)
    for (int p = 0; p < n_pred; p++) {
        if (pred_matched[p]) continue;
        int64_t inter = counts[p + 1];
        int c = pred[p].category;
        if (c >= 0 && crowd_of_cat[c] >= 0) inter += counts[(size_t)(crowd_of_cat[c] + 1) * W + (p + 1)];
        if ((double)inter / (double)pred_area[p + 1] > 0.5) continue;
        if (c >= 0) stat[c].fp++;
    }
    free(crowd_of_cat); free(gt_matched); free(pred_matched);
    free(counts); free(pred_area); free(gt_area);
    return 0;
}

PQResult pq_average(const PQCat* stat, const unsigned char* isthing, int n_categories, int which,
                    double* per_category_pq) {
    PQResult r = {0.0, 0.0, 0.0, 0};
    for (int c = 0; c < n_categories; c++) {
        if (per_category_pq) per_category_pq[c] = NAN;
        if (which >= 0 && (isthing[c] != 0) != (which != 0)) continue;
        const PQCat* s = &stat[c];
        if (s->tp + s->fp + s->fn == 0) continue;
        double den = (double)s->tp + 0.5 * (double)s->fp + 0.5 * (double)s->fn;
        double pq = s->iou / den;
        if (per_category_pq) per_category_pq[c] = pq;
        r.pq += pq;
        r.sq += s->tp ? s->iou / (double)s->tp : 0.0;
        r.rq += (double)s->tp / den;
        r.n++;
    }
    int n = r.n ? r.n : 1;   // the released code's guard: no category present scores 0
    r.pq /= n; r.sq /= n; r.rq /= n;
    return r;
}

// ============================================================================
// mask AP (pycocotools cocoeval.py, iouType "segm", one maxDets value)

#define AP_T 10    // IoU thresholds 0.50:0.05:0.95
#define AP_R 101   // recall thresholds 0:0.01:1
#define AP_A 4     // area ranges all, small, medium, large

// np.linspace(lo, hi, n): i * ((hi - lo) / (n - 1)) + lo, the last one hi exactly
static double linspace_at(double lo, double hi, int n, int i) {
    if (i == n - 1) return hi;
    double step = (hi - lo) / (double)(n - 1);
    return (double)i * step + lo;
}

// sort keys: cells (category, image) in order, and within a cell the order COCOeval sees
typedef struct { int img, cat, index; double score; } ObjKey;
static int gt_key_cmp(const void* a, const void* b) {
    const ObjKey *x = (const ObjKey*)a, *y = (const ObjKey*)b;
    if (x->cat != y->cat) return x->cat < y->cat ? -1 : 1;
    if (x->img != y->img) return x->img < y->img ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}
// detections by score, highest first; ties keep the input order (numpy's mergesort)
static int dt_key_cmp(const void* a, const void* b) {
    const ObjKey *x = (const ObjKey*)a, *y = (const ObjKey*)b;
    if (x->cat != y->cat) return x->cat < y->cat ? -1 : 1;
    if (x->img != y->img) return x->img < y->img ? -1 : 1;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}
static int int_cmp(const void* a, const void* b) {
    int x = *(const int*)a, y = *(const int*)b;
    return (x > y) - (x < y);
}
static int int_find(const int* sorted, int n, int v) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (sorted[mid] == v) return mid;
        if (sorted[mid] < v) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
}

// the detections of one (category, area range), gathered over the images in order
typedef struct {
    int n, cap;
    float* score;
    unsigned char* matched;   // (AP_T, cap) row t at t * cap; grown together
    unsigned char* ignored;
    int npig;                 // not-ignored ground truth
    int cells;                // (image, category) cells with anything in them
} ApAccum;

static void accum_reserve(ApAccum* a, int more) {
    if (a->n + more <= a->cap) return;
    int cap = a->cap ? a->cap : 64;
    while (cap < a->n + more) cap *= 2;
    float* s = (float*)mallocCheck((size_t)cap * sizeof(float));
    unsigned char* m = (unsigned char*)callocCheck((size_t)AP_T * cap, 1);
    unsigned char* g = (unsigned char*)callocCheck((size_t)AP_T * cap, 1);
    for (int t = 0; t < AP_T; t++) {
        if (a->n) {
            memcpy(m + (size_t)t * cap, a->matched + (size_t)t * a->cap, a->n);
            memcpy(g + (size_t)t * cap, a->ignored + (size_t)t * a->cap, a->n);
        }
    }
    if (a->n) memcpy(s, a->score, (size_t)a->n * sizeof(float));
    free(a->score); free(a->matched); free(a->ignored);
    a->score = s; a->matched = m; a->ignored = g; a->cap = cap;
}

// evaluateImg for one cell and area range: gts (G, in input order), dts (D, by score, at most
// max_dets), ious (D, G); appends its detections to acc
static void evaluate_cell(ApAccum* acc, const CocoMaskObject* const* gts, int G,
                          const CocoMaskObject* const* dts, int D, const double* ious,
                          double area_lo, double area_hi, const double* thr) {
    if (G == 0 && D == 0) return;
    acc->cells++;
    // ground truth: ignored (crowd, or area outside the range) ones last, order kept
    int* order = (int*)mallocCheck(((size_t)G + 1) * sizeof(int));
    unsigned char* gt_ig = (unsigned char*)mallocCheck((size_t)G + 1);
    int k = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int g = 0; g < G; g++) {
            int ig = gts[g]->iscrowd || gts[g]->area < area_lo || gts[g]->area > area_hi;
            if (ig == pass) { order[k] = g; gt_ig[k] = (unsigned char)ig; k++; }
        }
    for (int g = 0; g < G; g++) if (!gt_ig[g]) acc->npig++;
    accum_reserve(acc, D);
    int base = acc->n;
    int* gtm = (int*)mallocCheck(((size_t)G + 1) * sizeof(int));
    for (int t = 0; t < AP_T; t++) {
        unsigned char* dtm = acc->matched + (size_t)t * acc->cap + base;
        unsigned char* dtig = acc->ignored + (size_t)t * acc->cap + base;
        for (int g = 0; g < G; g++) gtm[g] = 0;
        for (int d = 0; d < D; d++) {
            dtm[d] = 0; dtig[d] = 0;
            if (G == 0) continue;
            double iou = thr[t] < 1.0 - 1e-10 ? thr[t] : 1.0 - 1e-10;
            int m = -1;
            for (int gi = 0; gi < G; gi++) {
                int crowd = gts[order[gi]]->iscrowd;
                if (gtm[gi] && !crowd) continue;                       // taken
                if (m > -1 && gt_ig[m] == 0 && gt_ig[gi] == 1) break;  // only ignored ones left
                double v = ious[(size_t)d * G + order[gi]];
                if (v < iou) continue;
                iou = v; m = gi;
            }
            if (m == -1) continue;
            dtig[d] = gt_ig[m];
            dtm[d] = 1;
            gtm[m] = 1;
        }
        // unmatched detections outside the area range are ignored too
        for (int d = 0; d < D; d++)
            if (!dtm[d] && (dts[d]->area < area_lo || dts[d]->area > area_hi)) dtig[d] = 1;
    }
    for (int d = 0; d < D; d++) acc->score[base + d] = dts[d]->score;
    acc->n += D;
    free(order); free(gt_ig); free(gtm);
}

// accumulate for one (category, area range): precision at the 101 recall thresholds, per IoU
// threshold, into prec (AP_T, AP_R); returns 0 when undefined (no cell or no unignored gt)
static int accumulate(const ApAccum* a, const double* rec_thr, double* prec) {
    if (a->cells == 0 || a->npig == 0) return 0;
    int n = a->n;
    // detections of all images by score, stable
    ObjKey* keys = (ObjKey*)mallocCheck(((size_t)n + 1) * sizeof(ObjKey));
    for (int i = 0; i < n; i++) { keys[i].img = 0; keys[i].cat = 0; keys[i].score = a->score[i]; keys[i].index = i; }
    qsort(keys, n, sizeof(ObjKey), dt_key_cmp);
    double* rc = (double*)mallocCheck(((size_t)n + 1) * sizeof(double));
    double* pr = (double*)mallocCheck(((size_t)n + 1) * sizeof(double));
    const double eps = 2.220446049250313e-16;   // np.spacing(1)
    for (int t = 0; t < AP_T; t++) {
        const unsigned char* m = a->matched + (size_t)t * a->cap;
        const unsigned char* g = a->ignored + (size_t)t * a->cap;
        double tp = 0.0, fp = 0.0;
        for (int i = 0; i < n; i++) {
            int j = keys[i].index;
            if (!g[j]) { if (m[j]) tp += 1.0; else fp += 1.0; }
            rc[i] = tp / (double)a->npig;
            pr[i] = tp / (fp + tp + eps);
        }
        for (int i = n - 1; i > 0; i--) if (pr[i] > pr[i - 1]) pr[i - 1] = pr[i];
        // q[r] = pr[first i with rc[i] >= rec_thr[r]] (np.searchsorted left), 0 past the end
        int i = 0;
        for (int r = 0; r < AP_R; r++) {
            while (i < n && rc[i] < rec_thr[r]) i++;
            prec[(size_t)t * AP_R + r] = i < n ? pr[i] : 0.0;
        }
    }
    free(keys); free(rc); free(pr);
    return 1;
}

void coco_mask_ap(double stats[COCO_AP_STATS], double* ap_per_category,
                  const CocoMaskObject* gt, int n_gt, const CocoMaskObject* dt, int n_dt,
                  const int* category_ids, int n_categories, const int* image_ids, int n_images,
                  int max_dets) {
    double thr[AP_T], rec_thr[AP_R];
    for (int t = 0; t < AP_T; t++) thr[t] = linspace_at(0.5, 0.95, AP_T, t);
    for (int r = 0; r < AP_R; r++) rec_thr[r] = linspace_at(0.0, 1.0, AP_R, r);
    const double area_lo[AP_A] = {0.0, 0.0, 32.0 * 32.0, 96.0 * 96.0};
    const double area_hi[AP_A] = {1e5 * 1e5, 32.0 * 32.0, 96.0 * 96.0, 1e5 * 1e5};
    // images and categories as sorted unique lists (COCOeval's p.imgIds, p.catIds)
    int* imgs = (int*)mallocCheck(((size_t)n_images + 1) * sizeof(int));
    int* cats = (int*)mallocCheck(((size_t)n_categories + 1) * sizeof(int));
    memcpy(imgs, image_ids, (size_t)n_images * sizeof(int));
    memcpy(cats, category_ids, (size_t)n_categories * sizeof(int));
    qsort(imgs, n_images, sizeof(int), int_cmp);
    qsort(cats, n_categories, sizeof(int), int_cmp);
    int ni = 0, nc = 0;
    for (int i = 0; i < n_images; i++) if (ni == 0 || imgs[i] != imgs[ni - 1]) imgs[ni++] = imgs[i];
    for (int i = 0; i < n_categories; i++) if (nc == 0 || cats[i] != cats[nc - 1]) cats[nc++] = cats[i];
    // objects of evaluated images and categories, in cell order
    ObjKey* gk = (ObjKey*)mallocCheck(((size_t)n_gt + 1) * sizeof(ObjKey));
    ObjKey* dk = (ObjKey*)mallocCheck(((size_t)n_dt + 1) * sizeof(ObjKey));
    int ng = 0, nd = 0;
    for (int i = 0; i < n_gt; i++) {
        int im = int_find(imgs, ni, gt[i].image), c = int_find(cats, nc, gt[i].category_id);
        if (im >= 0 && c >= 0) { gk[ng].img = im; gk[ng].cat = c; gk[ng].index = i; gk[ng].score = 0; ng++; }
    }
    for (int i = 0; i < n_dt; i++) {
        int im = int_find(imgs, ni, dt[i].image), c = int_find(cats, nc, dt[i].category_id);
        if (im >= 0 && c >= 0) { dk[nd].img = im; dk[nd].cat = c; dk[nd].index = i; dk[nd].score = dt[i].score; nd++; }
    }
    qsort(gk, ng, sizeof(ObjKey), gt_key_cmp);
    qsort(dk, nd, sizeof(ObjKey), dt_key_cmp);

    double* prec = (double*)mallocCheck((size_t)AP_T * AP_R * AP_A * (nc + 1) * sizeof(double));
    unsigned char* defined = (unsigned char*)callocCheck((size_t)AP_A * (nc + 1), 1);
    const CocoMaskObject** gcell = (const CocoMaskObject**)mallocCheck(((size_t)ng + 1) * sizeof(void*));
    const CocoMaskObject** dcell = (const CocoMaskObject**)mallocCheck(((size_t)nd + 1) * sizeof(void*));
    int gpos = 0, dpos = 0;
    for (int c = 0; c < nc; c++) {
        ApAccum acc[AP_A];
        memset(acc, 0, sizeof(acc));
        for (int im = 0; im < ni; im++) {
            int G = 0, D = 0;
            while (gpos < ng && gk[gpos].cat == c && gk[gpos].img == im) gcell[G++] = &gt[gk[gpos++].index];
            while (dpos < nd && dk[dpos].cat == c && dk[dpos].img == im) {
                if (D < max_dets) dcell[D++] = &dt[dk[dpos].index];
                dpos++;
            }
            if (G == 0 && D == 0) continue;
            double* ious = (double*)mallocCheck(((size_t)G * D + 1) * sizeof(double));
            for (int d = 0; d < D; d++)
                for (int g = 0; g < G; g++)
                    ious[(size_t)d * G + g] = rle_iou(&dcell[d]->rle, &gcell[g]->rle, gcell[g]->iscrowd);
            for (int a = 0; a < AP_A; a++)
                evaluate_cell(&acc[a], gcell, G, dcell, D, ious, area_lo[a], area_hi[a], thr);
            free(ious);
        }
        for (int a = 0; a < AP_A; a++) {
            defined[(size_t)a * nc + c] = (unsigned char)accumulate(&acc[a], rec_thr, prec + ((size_t)a * nc + c) * AP_T * AP_R);
            free(acc[a].score); free(acc[a].matched); free(acc[a].ignored);
        }
    }
    // summarize: means over the defined entries (-1 when none), as COCOeval.summarize
    for (int s = 0; s < COCO_AP_STATS; s++) {
        int a = s < 3 ? 0 : s - 2;           // AP, AP50, AP75 over all areas; then small, medium, large
        int t_only = s == 1 ? 0 : s == 2 ? 5 : -1;   // 0.5 and 0.75 are linspace entries 0 and 5
        double sum = 0.0;
        long cnt = 0;
        for (int c = 0; c < nc; c++) {
            if (!defined[(size_t)a * nc + c]) continue;
            const double* p = prec + ((size_t)a * nc + c) * AP_T * AP_R;
            for (int t = 0; t < AP_T; t++) {
                if (t_only >= 0 && t != t_only) continue;
                for (int r = 0; r < AP_R; r++) { sum += p[(size_t)t * AP_R + r]; cnt++; }
            }
        }
        stats[s] = cnt ? sum / cnt : -1.0;
    }
    if (ap_per_category) {
        for (int i = 0; i < n_categories; i++) {
            int c = int_find(cats, nc, category_ids[i]);
            ap_per_category[i] = NAN;
            if (c < 0 || !defined[c]) continue;
            const double* p = prec + (size_t)c * AP_T * AP_R;
            double sum = 0.0;
            for (int k = 0; k < AP_T * AP_R; k++) sum += p[k];
            ap_per_category[i] = sum / (AP_T * AP_R);
        }
    }
    free(imgs); free(cats); free(gk); free(dk); free(prec); free(defined); free(gcell); free(dcell);
}
