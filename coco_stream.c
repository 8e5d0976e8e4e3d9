// coco_stream.c: what ./stream does per frame for --task panoptic and --task instance, kept
// out of stream.c: Mask2Former's panoptic or instance inference on the last prediction's
// logits (host), the outputs in COCO's formats (panoptic PNG + JSON, instance results JSON
// with RLE masks), overlays with outlines and class names, and the scores: per frame (the
// released code's protocol: the video's score is the mean of the per-frame PQ or AP over the
// scored frames) and pooled over the video (COCO's: one pq_compute / COCOeval over all of
// them). Every function is documented once, in ttt.h (COCO section).
#include "ttt.h"
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/stat.h>

int task_parse(const char* opt, const char* s) {
    if (strcmp(s, "semantic") == 0) return TASK_SEMANTIC;
    if (strcmp(s, "panoptic") == 0) return TASK_PANOPTIC;
    if (strcmp(s, "instance") == 0) return TASK_INSTANCE;
    if (strcmp(s, "colorize") == 0) return TASK_COLORIZE;   // color.c, color_stream.c
    ttt_die("%s: expected semantic, panoptic, instance or colorize, got '%s'", opt, s);
    return 0;
}

const char* task_name(int task) {
    return task == TASK_PANOPTIC ? "panoptic" : task == TASK_INSTANCE ? "instance" : task == TASK_COLORIZE ? "colorize" : "semantic";
}

// ----------------------------------------------------------------------------
// setup: categories and ground truth

static int categories_have_stuff(const CocoCategories* c) {
    for (int i = 0; i < c->n; i++) if (!c->isthing[i]) return 1;
    return 0;
}

TaskSetup task_setup(int task, int K, const char* model_path, const char* frame_dir, const char* json_path,
                     const char* png_dir, int pq_rule, int instance_gt_all) {
    TaskSetup s;
    memset(&s, 0, sizeof(s));
    s.task = task;
    s.pq_rule = pq_rule;
    s.instance_gt_all = instance_gt_all;
    s.object_threshold = 0.8f;   // MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD
    s.overlap_threshold = 0.8f;  // MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD
    s.top_k = 100;               // TEST.DETECTIONS_PER_IMAGE
    char j[4096], d[4096];
    if (json_path) {
        if (!png_dir) ttt_die("--panoptic-json needs --panoptic-dir (the folder of its PNGs)");
        snprintf(j, sizeof(j), "%s", json_path);
        snprintf(d, sizeof(d), "%s", png_dir);
    } else if (png_dir) {
        ttt_die("--panoptic-dir needs --panoptic-json");
    } else {
        s.layout = find_panoptic_layout(frame_dir, j, sizeof(j), d, sizeof(d));
    }
    if (json_path || s.layout) {
        s.gt = coco_panoptic_read(j, d);
        s.has_gt = 1;
        // the model's classes: the table (panoptic, or instance with a panoptic model), or its things
        if (K == s.gt.cats.n) {
            s.cats = s.gt.cats;
        } else {
            CocoCategories things = coco_categories_things(&s.gt.cats);
            if (task == TASK_INSTANCE && K == things.n) s.cats = things;
            else ttt_die("'%s' has %d classes, but '%s' has %d categories (%d things)", model_path, K, j, s.gt.cats.n, things.n);
            s.own_cats = 1;
        }
    } else {
        // no annotation: COCO's tables for COCO-sized models, else numbered classes (all things)
        CocoCategories all = coco_categories_builtin();
        if (K == all.n) { s.cats = all; }
        else if (K == 80) { s.cats = coco_categories_things(&all); coco_categories_free(&all); }
        else { coco_categories_free(&all); s.cats = coco_categories_numbered(K, NULL); }
        s.own_cats = 1;
    }
    if (pq_rule < 0) s.pq_rule = s.layout == PANOPTIC_LAYOUT_COCO_VIDEOS ? PQ_CROWD_RELEASED : PQ_CROWD_COCO;
    return s;
}

void task_setup_free(TaskSetup* s) {
    if (s->own_cats) coco_categories_free(&s->cats);
    if (s->has_gt) coco_panoptic_free(&s->gt);
    memset(s, 0, sizeof(*s));
}

int* task_check_frames(const TaskSetup* s, char* const* names, const int* scored, int n, int H, int W) {
    int* ann = (int*)mallocCheck(((size_t)n + 1) * sizeof(int));
    for (int i = 0; i < n; i++) {
        ann[i] = -1;
        if (!s->has_gt) continue;
        const CocoPanopticAnn* a = coco_panoptic_find(&s->gt, names[i]);
        if (a == NULL && scored[i])
            ttt_die("frame '%s' is scored but '%s' has no annotation for it (COCO Videos annotates every 10th frame: "
                    "--score-every 10)", names[i], s->gt.json_path);
        if (a) ann[i] = (int)(a - s->gt.ann);
    }
    // every scored annotation's PNG decoded once, its ids checked against the JSON
    int bad = -1;
    char err[8192] = "";
    #pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < n; i++) {
        if (ann[i] < 0 || !scored[i] || bad >= 0) continue;
        char e1[8192];
        int h, w;
        uint32_t* ids = coco_panoptic_try_load(&s->gt, &s->gt.ann[ann[i]], H, W, &h, &w, e1, sizeof(e1));
        if (ids == NULL) {
            #pragma omp critical
            if (bad < 0) { bad = i; snprintf(err, sizeof(err), "%s", e1); }
        }
        free(ids);
    }
    if (bad >= 0) ttt_die("%s", err);
    return ann;
}

// ----------------------------------------------------------------------------
// drawing: colours, outlines, names (image_draw_text's 3x5 font, as stream.c's plots)

// a name on a dark box at (x, y)
static void draw_label(float* img, int H, int W, int x, int y, const char* s) {
    int scale = W >= 480 ? 2 : 1;
    int len = (int)strlen(s), bw = 4 * scale * len + 2, bh = 5 * scale + 2;
    if (x + bw > W) x = W - bw;
    if (y + bh > H) y = H - bh;
    if (x < 0) x = 0;
    if (y < 0) y = 0;
    const float dark[3] = {0.05f, 0.05f, 0.05f}, white[3] = {1.0f, 1.0f, 1.0f};
    for (int yy = y; yy < y + bh; yy++) for (int xx = x; xx < x + bw; xx++) image_put_pixel(img, H, W, xx, yy, dark);
    image_draw_text(img, H, W, x + 1, y + 1, s, scale, white);
}

// the colour of segment s of class k: the category's, shifted per instance for things
static void segment_colour(const CocoCategories* c, int k, int s, int thing, float* rgb) {
    for (int i = 0; i < 3; i++) {
        float v = c->color[3 * k + i] / 255.0f;
        if (thing) v += 0.22f * ((float)((s * 7 + i * 3) % 5) / 4.0f - 0.5f);
        rgb[i] = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
    }
}

// ----------------------------------------------------------------------------
// the run

struct TaskRun {
    const TaskSetup* s;
    char* out_dir;
    int H, W;
    // panoptic
    PQCat* pq_total;               // (cats.n) pooled over the scored frames
    char* json;                    // the "annotations" / results entries written so far
    size_t json_len, json_cap;
    // instance: every scored frame's ground truth and detections, for the pooled AP
    CocoMaskObject* gt; int n_gt, cap_gt;
    CocoMaskObject* dt; int n_dt, cap_dt;
    int* scored_images; int n_scored_images;
    // per-frame scores (the released protocol): PQ, SQ, RQ or AP of each scored frame
    double* frame_score; double* frame_sq; double* frame_rq;
    int n_frames, cap_frames;
    int n_undefined;               // frames whose AP is undefined (no instance ground truth)
    int n_outputs;
};

static void json_append(TaskRun* r, const char* fmt, ...) {
    va_list ap;
    for (;;) {
        size_t room = r->json_cap - r->json_len;
        va_start(ap, fmt);
        int k = vsnprintf(r->json + r->json_len, room, fmt, ap);
        va_end(ap);
        if (k >= 0 && (size_t)k < room) { r->json_len += (size_t)k; return; }
        size_t cap = r->json_cap * 2 + (size_t)(k > 0 ? k : 0) + 1024;
        char* n = (char*)mallocCheck(cap);
        memcpy(n, r->json, r->json_len + 1);
        free(r->json);
        r->json = n;
        r->json_cap = cap;
    }
}

static void make_dirs(const char* path) {
    char* buf = strdup(path);
    if (!buf) ttt_die("out of memory");
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
}

TaskRun* task_run_begin(const TaskSetup* s, const char* out_dir, int H, int W) {
    TaskRun* r = (TaskRun*)callocCheck(1, sizeof(TaskRun));
    r->s = s;
    r->out_dir = strdup(out_dir);
    r->H = H; r->W = W;
    r->pq_total = (PQCat*)callocCheck((size_t)s->cats.n + 1, sizeof(PQCat));
    r->json_cap = 1 << 16;
    r->json = (char*)mallocCheck(r->json_cap);
    r->json[0] = 0;
    if (s->task == TASK_PANOPTIC) {
        char p[4096];
        snprintf(p, sizeof(p), "%s/panoptic", out_dir);
        make_dirs(p);
    }
    return r;
}

static void frames_push(TaskRun* r, double v, double sq, double rq) {
    if (r->n_frames == r->cap_frames) {
        int cap = r->cap_frames ? 2 * r->cap_frames : 64;
        double* a = (double*)mallocCheck((size_t)cap * sizeof(double));
        double* b = (double*)mallocCheck((size_t)cap * sizeof(double));
        double* c = (double*)mallocCheck((size_t)cap * sizeof(double));
        if (r->n_frames) {
            memcpy(a, r->frame_score, r->n_frames * sizeof(double));
            memcpy(b, r->frame_sq, r->n_frames * sizeof(double));
            memcpy(c, r->frame_rq, r->n_frames * sizeof(double));
        }
        free(r->frame_score); free(r->frame_sq); free(r->frame_rq);
        r->frame_score = a; r->frame_sq = b; r->frame_rq = c; r->cap_frames = cap;
    }
    r->frame_score[r->n_frames] = v; r->frame_sq[r->n_frames] = sq; r->frame_rq[r->n_frames] = rq;
    r->n_frames++;
}

static CocoMaskObject* objects_push(CocoMaskObject** a, int* n, int* cap) {
    if (*n == *cap) {
        int c = *cap ? 2 * *cap : 256;
        CocoMaskObject* b = (CocoMaskObject*)mallocCheck((size_t)c * sizeof(CocoMaskObject));
        if (*n) memcpy(b, *a, (size_t)*n * sizeof(CocoMaskObject));
        free(*a);
        *a = b; *cap = c;
    }
    CocoMaskObject* o = &(*a)[(*n)++];
    memset(o, 0, sizeof(*o));
    return o;
}

// the ground truth of a scored frame: ids (H, W) and segments with areas (the JSON's or counted)
static uint32_t* frame_gt(const TaskRun* r, int ann, PanSeg** segs) {
    const CocoPanopticAnn* a = &r->s->gt.ann[ann];
    int h, w;
    uint32_t* ids = coco_panoptic_load(&r->s->gt, a, r->H, r->W, &h, &w);
    PanSeg* g = (PanSeg*)mallocCheck(((size_t)a->n + 1) * sizeof(PanSeg));
    memcpy(g, a->seg, (size_t)a->n * sizeof(PanSeg));
    for (int k = 0; k < a->n; k++) {
        if (g[k].area >= 0) continue;
        int64_t c = 0;
        for (size_t i = 0; i < (size_t)r->H * r->W; i++) c += ids[i] == g[k].id;
        g[k].area = c;
    }
    *segs = g;
    return ids;
}

static void panoptic_frame(TaskRun* r, const char* stem, long image_id, const float* frame, const float* cls,
                           const float* msk, int Q, int H4, int W4, int Hm, int Wm, int ann, char* text, size_t tn) {
    const TaskSetup* s = r->s;
    int H = r->H, W = r->W;
    size_t npix = (size_t)H * W;
    int* seg = (int*)mallocCheck(npix * sizeof(int));
    PanopticSegment* segs = (PanopticSegment*)mallocCheck(((size_t)Q + 1) * sizeof(PanopticSegment));
    int n = m2f_panoptic_inference_resized(seg, segs, Q, cls, msk, Q, s->cats.n, H4, W4, Hm, Wm, H, W,
                                           s->cats.isthing, s->object_threshold, s->overlap_threshold);
    uint32_t* ids = (uint32_t*)mallocCheck(npix * sizeof(uint32_t));
    for (size_t i = 0; i < npix; i++) ids[i] = (uint32_t)seg[i];
    // COCO panoptic output: PNG + its JSON entry (bbox per segment from the map)
    char path[4096];
    snprintf(path, sizeof(path), "%s/panoptic/%s.png", r->out_dir, stem);
    panoptic_png_save(path, ids, H, W);
    int* bb = (int*)mallocCheck(((size_t)n + 1) * 4 * sizeof(int));
    for (int k = 0; k < n; k++) { bb[4 * k] = W; bb[4 * k + 1] = H; bb[4 * k + 2] = -1; bb[4 * k + 3] = -1; }
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int v = seg[(size_t)y * W + x];
            if (v <= 0) continue;
            int* b = bb + 4 * (v - 1);
            if (x < b[0]) b[0] = x;
            if (y < b[1]) b[1] = y;
            if (x > b[2]) b[2] = x;
            if (y > b[3]) b[3] = y;
        }
    json_append(r, "%s\n  {\"image_id\": %ld, \"file_name\": \"%s.png\", \"segments_info\": [", r->n_outputs ? "," : "", image_id, stem);
    for (int k = 0; k < n; k++)
        json_append(r, "%s{\"id\": %d, \"category_id\": %d, \"isthing\": %d, \"iscrowd\": 0, \"area\": %d, \"bbox\": [%d, %d, %d, %d], \"score\": %.6f}",
                    k ? ", " : "", segs[k].id, s->cats.id[segs[k].class_id], segs[k].is_thing, segs[k].area,
                    bb[4 * k], bb[4 * k + 1], bb[4 * k + 2] - bb[4 * k] + 1, bb[4 * k + 3] - bb[4 * k + 1] + 1, segs[k].score);
    json_append(r, "]}");
    r->n_outputs++;
    // overlay: segment colours, white outlines, names
    float* vis = (float*)mallocCheck(npix * 3 * sizeof(float));
    for (size_t i = 0; i < npix; i++) {
        int v = seg[i];
        float col[3] = {0.0f, 0.0f, 0.0f};
        if (v > 0) segment_colour(&s->cats, segs[v - 1].class_id, v, segs[v - 1].is_thing, col);
        for (int c = 0; c < 3; c++) vis[3 * i + c] = v > 0 ? 0.45f * frame[3 * i + c] + 0.55f * col[c] : 0.5f * frame[3 * i + c];
    }
    const float white[3] = {1.0f, 1.0f, 1.0f};
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int v = seg[(size_t)y * W + x];
            if ((x + 1 < W && seg[(size_t)y * W + x + 1] != v) || (y + 1 < H && seg[(size_t)(y + 1) * W + x] != v))
                image_put_pixel(vis, H, W, x, y, white);
        }
    for (int k = 0; k < n; k++)
        if (segs[k].area >= 64) draw_label(vis, H, W, bb[4 * k] + 1, bb[4 * k + 1] + 1, s->cats.name[segs[k].class_id]);
    snprintf(path, sizeof(path), "%s/%s_panoptic.png", r->out_dir, stem);
    image_save_png(path, vis, H, W);
    free(vis); free(bb);
    // score
    snprintf(text, tn, "segments %d", n);
    if (ann >= 0) {
        PanSeg* g;
        uint32_t* gids = frame_gt(r, ann, &g);
        PanSeg* p = (PanSeg*)mallocCheck(((size_t)n + 1) * sizeof(PanSeg));
        for (int k = 0; k < n; k++) { p[k].id = (uint32_t)segs[k].id; p[k].category = segs[k].class_id; p[k].iscrowd = 0; p[k].area = segs[k].area; }
        PQCat* one = (PQCat*)callocCheck((size_t)s->cats.n + 1, sizeof(PQCat));
        char err[1024];
        const CocoPanopticAnn* a = &s->gt.ann[ann];
        if (pq_image(one, gids, g, a->n, ids, p, n, npix, s->pq_rule, err, sizeof(err)) != 0)
            ttt_die("scoring frame '%s' against '%s': %s", stem, s->gt.json_path, err);
        for (int c = 0; c < s->cats.n; c++) {
            r->pq_total[c].iou += one[c].iou; r->pq_total[c].tp += one[c].tp;
            r->pq_total[c].fp += one[c].fp; r->pq_total[c].fn += one[c].fn;
        }
        PQResult f = pq_average(one, s->cats.isthing, s->cats.n, -1, NULL);
        frames_push(r, f.pq, f.sq, f.rq);
        snprintf(text, tn, "segments %d  PQ %.4f  frame PQ %.4f", n, pq_average(r->pq_total, s->cats.isthing, s->cats.n, -1, NULL).pq, f.pq);
        free(one); free(p); free(g); free(gids);
    }
    free(ids); free(seg); free(segs);
}

static void instance_frame(TaskRun* r, const char* stem, long image_id, const float* frame, const float* cls,
                           const float* msk, int Q, int H4, int W4, int Hm, int Wm, int ann, char* text, size_t tn) {
    const TaskSetup* s = r->s;
    int H = r->H, W = r->W;
    size_t npix = (size_t)H * W;
    InstanceDet* dets = (InstanceDet*)callocCheck((size_t)s->top_k + 1, sizeof(InstanceDet));
    int n = m2f_instance_inference(dets, s->top_k, cls, msk, Q, s->cats.n, H4, W4, Hm, Wm, H, W,
                                   categories_have_stuff(&s->cats) ? s->cats.isthing : NULL);
    // COCO results entries
    for (int k = 0; k < n; k++) {
        char* counts = rle_to_string(&dets[k].rle);
        double bb[4];
        rle_to_bbox(&dets[k].rle, bb);
        json_append(r, "%s\n  {\"image_id\": %ld, \"category_id\": %d, \"segmentation\": {\"size\": [%d, %d], \"counts\": ",
                    r->n_outputs ? "," : "", image_id, s->cats.id[dets[k].class_id], H, W);
        // RLE strings may hold '\\' (character 92): escaped as JSON wants
        char* esc = (char*)mallocCheck(2 * strlen(counts) + 1);
        size_t e = 0;
        for (const char* c = counts; *c; c++) { if (*c == '\\' || *c == '"') esc[e++] = '\\'; esc[e++] = *c; }
        esc[e] = 0;
        json_append(r, "\"%s\"}, \"score\": %.9g, \"bbox\": [%g, %g, %g, %g]}", esc, dets[k].score, bb[0], bb[1], bb[2], bb[3]);
        free(counts); free(esc);
        r->n_outputs++;
    }
    // overlay: detections with score >= 0.5, filled and outlined, with class name and score
    float* vis = (float*)mallocCheck(npix * 3 * sizeof(float));
    memcpy(vis, frame, npix * 3 * sizeof(float));
    unsigned char* m = (unsigned char*)mallocCheck(npix);
    int shown = 0;
    for (int k = n - 1; k >= 0; k--) {   // highest scores drawn last, on top
        if (dets[k].score < 0.5f) continue;
        shown++;
        rle_decode(&dets[k].rle, m);
        float col[3];
        segment_colour(&s->cats, dets[k].class_id, k + 1, 1, col);
        for (size_t i = 0; i < npix; i++)
            if (m[i]) for (int c = 0; c < 3; c++) vis[3 * i + c] = 0.5f * vis[3 * i + c] + 0.5f * col[c];
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                size_t i = (size_t)y * W + x;
                if (m[i] && ((x + 1 < W && !m[i + 1]) || (y + 1 < H && !m[i + W]) || x == 0 || y == 0 ||
                             (x > 0 && !m[i - 1]) || (y > 0 && !m[i - W])))
                    image_put_pixel(vis, H, W, x, y, col);
            }
        double bb[4];
        rle_to_bbox(&dets[k].rle, bb);
        char label[96];
        snprintf(label, sizeof(label), "%s %.2f", s->cats.name[dets[k].class_id], dets[k].score);
        draw_label(vis, H, W, (int)bb[0], (int)bb[1], label);
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s_instances.png", r->out_dir, stem);
    image_save_png(path, vis, H, W);
    free(vis); free(m);
    snprintf(text, tn, "detections %d (%d >= 0.5)", n, shown);
    if (ann >= 0) {
        // ground truth instances: thing segments (COCO), or every segment not ignored
        // (--instance-gt all: what the released code's loader takes from segments_info)
        PanSeg* g;
        uint32_t* gids = frame_gt(r, ann, &g);
        const CocoPanopticAnn* a = &s->gt.ann[ann];
        int first_gt = r->n_gt, first_dt = r->n_dt;
        for (int k = 0; k < a->n; k++) {
            int c = g[k].category;
            if (c < 0 || !(s->gt.cats.isthing[c] || s->instance_gt_all)) continue;
            int cat_id = s->gt.cats.id[c];
            CocoMaskObject* o = objects_push(&r->gt, &r->n_gt, &r->cap_gt);
            o->image = (int)image_id; o->category_id = cat_id; o->iscrowd = g[k].iscrowd;
            rle_encode_id(&o->rle, gids, H, W, g[k].id);
            o->area = (double)g[k].area;
        }
        for (int k = 0; k < n; k++) {
            CocoMaskObject* o = objects_push(&r->dt, &r->n_dt, &r->cap_dt);
            o->image = (int)image_id; o->category_id = s->cats.id[dets[k].class_id]; o->score = dets[k].score;
            o->rle = dets[k].rle;   // moved: kept for the pooled AP
            dets[k].rle.cnts = NULL;
            // pycocotools' loadRes takes a result's area from its "bbox" when it has one (ours
            // do: the mask's box), the mask's otherwise; it only decides the area ranges
            double bb[4];
            rle_to_bbox(&o->rle, bb);
            o->area = bb[2] * bb[3];
        }
        int img = (int)image_id;
        double st[COCO_AP_STATS];
        coco_mask_ap(st, NULL, r->gt + first_gt, r->n_gt - first_gt, r->dt + first_dt, r->n_dt - first_dt,
                     s->gt.cats.id, s->gt.cats.n, &img, 1, 100);
        r->scored_images = (int*)realloc(r->scored_images, ((size_t)r->n_scored_images + 1) * sizeof(int));
        if (!r->scored_images) ttt_die("out of memory");
        r->scored_images[r->n_scored_images++] = img;
        if (st[0] < 0) { r->n_undefined++; snprintf(text, tn, "detections %d (%d >= 0.5)  frame AP - (no instance ground truth)", n, shown); }
        else {
            frames_push(r, st[0], st[1], st[2]);
            snprintf(text, tn, "detections %d (%d >= 0.5)  frame AP %.4f AP50 %.4f", n, shown, st[0], st[1]);
        }
        free(g); free(gids);
    }
    for (int k = 0; k < n; k++) rle_free(&dets[k].rle);
    free(dets);
}

void task_run_frame(TaskRun* r, const char* stem, int frame_index, int ann, int scored, const float* frame,
                    const float* class_logits, const float* mask_logits, int Q, int H4, int W4, int Hm, int Wm,
                    char* text, size_t n) {
    // the output's image id: the annotation's; else, beside a ground truth, one past its largest
    // id plus the frame's index (no clash); without one the index + 1
    long max_id = 0;
    for (int i = 0; r->s->has_gt && i < r->s->gt.n; i++) if (r->s->gt.ann[i].image_id > max_id) max_id = r->s->gt.ann[i].image_id;
    long image_id = ann >= 0 ? r->s->gt.ann[ann].image_id : max_id + 1 + frame_index;
    if (!scored) ann = -1;
    if (r->s->task == TASK_PANOPTIC)
        panoptic_frame(r, stem, image_id, frame, class_logits, mask_logits, Q, H4, W4, Hm, Wm, ann, text, n);
    else
        instance_frame(r, stem, image_id, frame, class_logits, mask_logits, Q, H4, W4, Hm, Wm, ann, text, n);
}

static double mean_of(const double* v, int n) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += v[i];
    return n ? s / n : NAN;
}

TaskResult task_run_end(TaskRun* r, const char* dir) {
    const TaskSetup* s = r->s;
    TaskResult res;
    memset(&res, 0, sizeof(res));
    res.n_scored = r->n_frames;
    res.video = mean_of(r->frame_score, r->n_frames);
    res.pooled = NAN;
    char path[4096];
    const char* rule = s->pq_rule == PQ_CROWD_COCO ? "coco" : "released";
    if (s->task == TASK_PANOPTIC) {
        snprintf(path, sizeof(path), "%s/panoptic.json", r->out_dir);
        FILE* fp = coco_json_open(path);
        fprintf(fp, "{\"annotations\": [%s\n],\n", r->json);
        coco_json_write_categories(fp, &s->cats);
        fprintf(fp, "}\n");
        coco_json_close(fp, path);
        PQResult all = pq_average(r->pq_total, s->cats.isthing, s->cats.n, -1, NULL);
        PQResult th = pq_average(r->pq_total, s->cats.isthing, s->cats.n, 1, NULL);
        PQResult st = pq_average(r->pq_total, s->cats.isthing, s->cats.n, 0, NULL);
        res.pooled = all.pq;
        if (r->n_frames) {
            printf("panoptic quality over %d scored frames (%s crowd rule):\n", r->n_frames, rule);
            printf("            PQ      SQ      RQ   categories\n");
            printf("  all     %.4f  %.4f  %.4f  %d\n", all.pq, all.sq, all.rq, all.n);
            printf("  things  %.4f  %.4f  %.4f  %d\n", th.pq, th.sq, th.rq, th.n);
            printf("  stuff   %.4f  %.4f  %.4f  %d\n", st.pq, st.sq, st.rq, st.n);
            printf("video PQ (mean of per-frame PQ over %d frames, the released protocol) %.4f (SQ %.4f, RQ %.4f); pooled PQ %.4f\n",
                   r->n_frames, res.video, mean_of(r->frame_sq, r->n_frames), mean_of(r->frame_rq, r->n_frames), all.pq);
        }
        snprintf(path, sizeof(path), "%s/panoptic_scores.json", r->out_dir);
        fp = coco_json_open(path);
        fprintf(fp, "{\"task\": \"panoptic\", \"crowd_rule\": \"%s\", \"num_scored\": %d,\n", rule, r->n_frames);
        fprintf(fp, " \"video_pq\": %.6f, \"video_sq\": %.6f, \"video_rq\": %.6f,\n",
                r->n_frames ? res.video : 0.0, r->n_frames ? mean_of(r->frame_sq, r->n_frames) : 0.0,
                r->n_frames ? mean_of(r->frame_rq, r->n_frames) : 0.0);
        fprintf(fp, " \"pooled\": {\"all\": [%.6f, %.6f, %.6f, %d], \"things\": [%.6f, %.6f, %.6f, %d], \"stuff\": [%.6f, %.6f, %.6f, %d]},\n",
                all.pq, all.sq, all.rq, all.n, th.pq, th.sq, th.rq, th.n, st.pq, st.sq, st.rq, st.n);
        fprintf(fp, " \"frame_pq\": [");
        for (int i = 0; i < r->n_frames; i++) fprintf(fp, "%s%.6f", i ? ", " : "", r->frame_score[i]);
        fprintf(fp, "]}\n");
        coco_json_close(fp, path);
        printf("RESULT task=panoptic dir=%s frames_scored=%d video_pq=%.6f pooled_pq=%.6f pooled_sq=%.6f pooled_rq=%.6f pq_things=%.6f pq_stuff=%.6f\n",
               dir, r->n_frames, r->n_frames ? res.video : NAN, all.pq, all.sq, all.rq, th.pq, st.pq);
        printf("wrote %s/panoptic.json, %s/panoptic/NAME.png (COCO panoptic format), NAME_panoptic.png, panoptic_scores.json\n", r->out_dir, r->out_dir);
    } else {
        snprintf(path, sizeof(path), "%s/instances.json", r->out_dir);
        FILE* fp = coco_json_open(path);
        fprintf(fp, "[%s\n]\n", r->json);
        coco_json_close(fp, path);
        double st[COCO_AP_STATS] = {-1, -1, -1, -1, -1, -1};
        if (r->n_scored_images)
            coco_mask_ap(st, NULL, r->gt, r->n_gt, r->dt, r->n_dt, s->gt.cats.id, s->gt.cats.n,
                         r->scored_images, r->n_scored_images, 100);
        res.pooled = st[0];
        if (r->n_scored_images) {
            printf("mask AP over %d scored frames (COCOeval segm, pooled): AP %.4f AP50 %.4f AP75 %.4f APs %.4f APm %.4f APl %.4f\n",
                   r->n_scored_images, st[0], st[1], st[2], st[3], st[4], st[5]);
            printf("video AP (mean of per-frame AP over %d frames with instance ground truth, the released protocol) %.4f", r->n_frames, res.video);
            if (r->n_undefined) printf("; %d scored frames without instance ground truth left out", r->n_undefined);
            printf("\n");
        }
        snprintf(path, sizeof(path), "%s/instance_scores.json", r->out_dir);
        fp = coco_json_open(path);
        fprintf(fp, "{\"task\": \"instance\", \"num_scored\": %d, \"num_undefined\": %d,\n", r->n_frames, r->n_undefined);
        fprintf(fp, " \"video_ap\": %.6f, \"video_ap50\": %.6f, \"video_ap75\": %.6f,\n",
                r->n_frames ? res.video : 0.0, r->n_frames ? mean_of(r->frame_sq, r->n_frames) : 0.0,
                r->n_frames ? mean_of(r->frame_rq, r->n_frames) : 0.0);
        fprintf(fp, " \"pooled\": {\"AP\": %.6f, \"AP50\": %.6f, \"AP75\": %.6f, \"APs\": %.6f, \"APm\": %.6f, \"APl\": %.6f},\n",
                st[0], st[1], st[2], st[3], st[4], st[5]);
        fprintf(fp, " \"frame_ap\": [");
        for (int i = 0; i < r->n_frames; i++) fprintf(fp, "%s%.6f", i ? ", " : "", r->frame_score[i]);
        fprintf(fp, "]}\n");
        coco_json_close(fp, path);
        printf("RESULT task=instance dir=%s frames_scored=%d video_ap=%.6f pooled_ap=%.6f pooled_ap50=%.6f pooled_ap75=%.6f\n",
               dir, r->n_frames, r->n_frames ? res.video : NAN, st[0], st[1], st[2]);
        printf("wrote %s/instances.json (COCO results, RLE masks), NAME_instances.png, instance_scores.json\n", r->out_dir);
    }
    for (int i = 0; i < r->n_gt; i++) rle_free(&r->gt[i].rle);
    for (int i = 0; i < r->n_dt; i++) rle_free(&r->dt[i].rle);
    free(r->gt); free(r->dt); free(r->scored_images);
    free(r->frame_score); free(r->frame_sq); free(r->frame_rq);
    free(r->pq_total); free(r->json); free(r->out_dir); free(r);
    return res;
}
