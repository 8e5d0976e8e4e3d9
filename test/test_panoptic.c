// test/test_panoptic.c: the panoptic and instance path end to end on the CPU, on data the
// project makes:
//   ./gen --panoptic (COCO 2017 stills, a COCO Videos video) = the semantic world's images with
//   one segment per object; ./train --task panoptic on the stills; the joint step on panoptic
//   targets equals the semantic one when every segment is a class region; ./stream --task
//   panoptic | instance --score-every 10 on the video: its COCO outputs read back with the
//   readers (PNG ids against the JSON), PQ and AP recomputed from the files equal what it
//   printed; and the bad inputs of the COCO formats at the program level.
#include "test.h"
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cJSON.h"
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#include "stb_image.h"
#include "stb_image_write.h"
#pragma GCC diagnostic pop

#define TMP "test/tmp/panoptic"

static int exists(const char* p) { struct stat st; return stat(p, &st) == 0; }

// ----------------------------------------------------------------------------
// ./gen --panoptic: the same images, segments that refine the class-id labels

static void test_gen(void) {
    CHECK(run("./gen video " TMP "/sem --frames 11 --size 96x64 --seed 5 > /dev/null") == 0, "gen video failed");
    CHECK(run("./gen video " TMP "/cv --frames 11 --size 96x64 --seed 5 --panoptic --video-name v > /dev/null") == 0, "gen video --panoptic failed");
    CHECK(same_bytes(TMP "/sem/frame000011.png", TMP "/cv/raw_images/v/v_000011.png"), "--panoptic changed the images");
    CocoPanoptic p = coco_panoptic_read(TMP "/cv/annotations/train/v.json", TMP "/cv/panoptic_images/v");
    CHECK(p.n == 2 && p.categories_from_file && p.cats.n == 8, "gen video: %d annotations (frames 1 and 11), %d categories", p.n, p.cats.n);
    int things = 0, agree = 1, multi = 0;
    for (int k = 0; k < p.cats.n; k++) things += p.cats.isthing[k];
    for (int a = 0; a < p.n; a++) {
        int H, W, h, w;
        uint32_t* ids = coco_panoptic_load(&p, &p.ann[a], 0, 0, &H, &W);   // every check of the reader
        char lp[512];
        snprintf(lp, sizeof(lp), TMP "/sem_labels/frame%06ld.png", p.ann[a].image_id);
        unsigned char* lab = label_load(lp, H, W, &h, &w);
        for (int i = 0; i < H * W; i++) {
            int s = 0;
            while (p.ann[a].seg[s].id != ids[i]) s++;
            agree &= p.ann[a].seg[s].category == lab[i];   // class = category index
        }
        int per_class[8] = {0};
        for (int s = 0; s < p.ann[a].n; s++) per_class[p.ann[a].seg[s].category]++;
        for (int c = 0; c < 8; c++) if (per_class[c] > 1) { multi = 1; CHECK(p.cats.isthing[c], "stuff class %d has several segments", c); }
        free(ids); free(lab);
    }
    CHECK(things == 5 && agree && multi, "gen --panoptic: 5 thing classes %d, segments refine the labels %d, instances of one class %d", things, agree, multi);
    coco_panoptic_free(&p);
    CHECK(run("./gen stills " TMP "/st --n 6 --size 64x48 --seed 3 --panoptic > /dev/null") == 0 &&
          run("./gen stills " TMP "/st --n 2 --size 64x48 --seed 4 --panoptic --split val > /dev/null") == 0, "gen stills --panoptic failed");
    PanopticSet ps = panoptic_set_list(TMP "/st", "train", 1);
    CHECK(ps.n == 6 && ps.H[0] == 48 && ps.W[0] == 64, "panoptic_set_list on gen stills: %d", ps.n);
    panoptic_set_free(&ps);
    group_line("./gen --panoptic: COCO Videos and COCO 2017 layouts read back, the images unchanged, one segment per object");
}

// ----------------------------------------------------------------------------
// the joint step on panoptic targets: semantic-shaped segments give the semantic loss

static void test_train_loss(void) {
    ttt_set_device(DEVICE_CPU);
    const int K = 5, B = 3, H = 32, W = 32;
    ModelConfig cfg = model_config_tiny(K);
    Model* m = model_create(&cfg, B, H, W);
    Model* m1 = model_create(&cfg, 1, H, W);   // micro-batches of 1: the data-parallel chunks
    model_init_random(m, 3);
    model_copy_params(m1, m);
    Rng r;
    rng_seed(&r, 11);
    float* img = (float*)mallocCheck((size_t)B * H * W * 3 * sizeof(float));
    rng_fill_uniform(&r, img, (size_t)B * H * W * 3, 0.0f, 1.0f);
    unsigned char* lab = (unsigned char*)mallocCheck((size_t)B * H * W);
    unsigned char* seg = (unsigned char*)mallocCheck((size_t)B * H * W);
    int* classes = (int*)callocCheck((size_t)B * PANOPTIC_MAX_TRAIN_SEGMENTS, sizeof(int));
    int counts[3];
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < H * W; i++) {
            int y = i / W, x = i % W;
            int c = (x / 11 + 2 * (y / 13) + b) % K;
            if (b == 1 && c == 3) c = 1;       // an image without class 3
            if (y < 2 && x < 5) c = 255;        // ignored pixels
            lab[(size_t)b * H * W + i] = (unsigned char)c;
        }
        // segment s = the s-th present class in increasing order (the semantic target order)
        int rank[256], n = 0;
        for (int c = 0; c < 256; c++) rank[c] = -1;
        for (int c = 0; c < K; c++) {
            int present = 0;
            for (int i = 0; i < H * W; i++) present |= lab[(size_t)b * H * W + i] == c;
            if (present) { rank[c] = n; classes[b * PANOPTIC_MAX_TRAIN_SEGMENTS + n] = c; n++; }
        }
        counts[b] = n;
        for (int i = 0; i < H * W; i++) {
            int c = lab[(size_t)b * H * W + i];
            seg[(size_t)b * H * W + i] = c == 255 ? 255 : (unsigned char)rank[c];
        }
    }
    Rng r1, r2;
    rng_seed(&r1, 5); rng_seed(&r2, 5);
    float ls = model_train_loss(m, img, lab, B, &r1);
    float lp = model_train_loss_panoptic(m, img, seg, classes, counts, B, &r2);
    rng_seed(&r1, 5); rng_seed(&r2, 5);
    float ls1 = model_train_loss(m1, img, lab, B, &r1);
    float lp1 = model_train_loss_panoptic(m1, img, seg, classes, counts, B, &r2);
    int ok = isfinite(ls) && ls > 0 && fabsf(ls - lp) <= 1e-6f * fabsf(ls) && fabsf(ls1 - lp1) <= 1e-6f * fabsf(ls1);
    CHECK(ok, "panoptic targets shaped as the semantic ones: loss %g vs %g; in micro-batches %g vs %g", ls, lp, ls1, lp1);
    printf("%-4s joint loss on panoptic targets = semantic loss on the same regions: %.6f vs %.6f (micro-batched %.6f vs %.6f)\n",
           ok ? "ok" : "FAIL", ls, lp, ls1, lp1);
    // two segments of one class: a different target set, a different loss
    for (int i = 0; i < H * W; i++) if (seg[i] == 0 && (i % W) >= W / 2) seg[i] = (unsigned char)counts[0];
    classes[counts[0]] = classes[0];
    counts[0]++;
    rng_seed(&r2, 5);
    float lp2 = model_train_loss_panoptic(m, img, seg, classes, counts, B, &r2);
    CHECK(isfinite(lp2) && lp2 != lp, "splitting a segment in two leaves the loss unchanged: %g", lp2);
    free(img); free(lab); free(seg); free(classes);
    model_free(m1); model_free(m);
}

// ----------------------------------------------------------------------------
// ./train --task panoptic, ./stream --task panoptic | instance, scores recomputed from the files

static cJSON* parse_file(const char* path) {
    char* s = read_text(path);
    cJSON* j = cJSON_Parse(s);
    free(s);
    CHECK(j != NULL, "'%s' is not valid JSON", path);
    return j;
}

static double json_num(const cJSON* o, const char* key) {
    const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static void test_train_and_stream(void) {
    // training on the stills runs and writes a model the stream takes
    int rc = run("OMP_NUM_THREADS=2 ./train --task panoptic --data " TMP "/st --val " TMP "/st --size tiny --steps 3 --batch 2 "
                 "--crop 64x48 --out " TMP "/tiny.bin --device cpu > " TMP "/train.log 2>&1");
    char* log = read_text(TMP "/train.log");
    CHECK(rc == 0 && strstr(log, "coco-panoptic layout") && strstr(log, "val: PQ"), "./train --task panoptic: rc %d\n%s", rc, log);
    free(log);
    rc = run("./stream " TMP "/cv/raw_images/v --model " TMP "/tiny.bin --task panoptic --score-every 10 --mode fixed "
             "--device cpu --out " TMP "/out_tiny > " TMP "/tiny.log 2>&1");
    CHECK(rc == 0, "./stream with the panoptic model ./train wrote: rc %d", rc);

    // the shipped model (8 classes of the generated world) with TTT, panoptic
    rc = run("./stream " TMP "/cv/raw_images/v --task panoptic --score-every 10 --batch 2 --device cpu --out " TMP "/out_pan > "
             TMP "/pan.log 2>&1");
    log = read_text(TMP "/pan.log");
    CHECK(rc == 0 && strstr(log, "RESULT task=panoptic") && strstr(log, "2 frames scored") && strstr(log, "released crowd rule"),
          "./stream --task panoptic: rc %d\n%s", rc, log);
    free(log);
    // the outputs read back as ground truth: PNG ids and the JSON agree, categories are the video's
    CocoPanoptic gt = coco_panoptic_read(TMP "/cv/annotations/train/v.json", TMP "/cv/panoptic_images/v");
    CocoPanoptic pr = coco_panoptic_read(TMP "/out_pan/panoptic.json", TMP "/out_pan/panoptic");
    CHECK(pr.n == 11 && pr.cats.n == 8, "panoptic.json: %d entries (11 frames), %d categories", pr.n, pr.cats.n);
    PQCat* stat = (PQCat*)callocCheck(8, sizeof(PQCat));
    double frame_pq[2];
    int nf = 0;
    for (int a = 0; a < gt.n; a++) {
        char name[64];
        snprintf(name, sizeof(name), "v_%06ld.png", gt.ann[a].image_id);
        const CocoPanopticAnn* p = coco_panoptic_find(&pr, name);
        CHECK(p && p->image_id == gt.ann[a].image_id, "no output for %s with its image id", name);
        if (!p) continue;
        int H, W;
        uint32_t* g = coco_panoptic_load(&gt, &gt.ann[a], 0, 0, &H, &W);
        uint32_t* q = coco_panoptic_load(&pr, p, H, W, &H, &W);
        PQCat one[8];
        memset(one, 0, sizeof(one));
        char err[512];
        CHECK(pq_image(one, g, gt.ann[a].seg, gt.ann[a].n, q, p->seg, p->n, (size_t)H * W, PQ_CROWD_RELEASED, err, sizeof(err)) == 0, "%s", err);
        CHECK(pq_image(stat, g, gt.ann[a].seg, gt.ann[a].n, q, p->seg, p->n, (size_t)H * W, PQ_CROWD_RELEASED, err, sizeof(err)) == 0, "%s", err);
        frame_pq[nf++] = pq_average(one, gt.cats.isthing, 8, -1, NULL).pq;
        free(g); free(q);
    }
    PQResult all = pq_average(stat, gt.cats.isthing, 8, -1, NULL);
    cJSON* sc = parse_file(TMP "/out_pan/panoptic_scores.json");
    const cJSON* pooled = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(sc, "pooled"), "all");
    double pq_printed = pooled ? cJSON_GetArrayItem(pooled, 0)->valuedouble : NAN;
    double video = json_num(sc, "video_pq");
    int ok = nf == 2 && fabs(all.pq - pq_printed) < 2e-6 && fabs(0.5 * (frame_pq[0] + frame_pq[1]) - video) < 2e-6 && all.pq > 0.2;
    CHECK(ok, "PQ from the files %.6f (video %.6f) vs printed %.6f (video %.6f)", all.pq, 0.5 * (frame_pq[0] + frame_pq[1]), pq_printed, video);
    printf("%-4s ./stream --task panoptic (online TTT, shipped model): PQ %.4f, video PQ %.4f, equal when recomputed from panoptic.json + PNGs\n",
           ok ? "ok" : "FAIL", all.pq, video);
    cJSON_Delete(sc);
    free(stat);
    coco_panoptic_free(&pr);

    // instance
    rc = run("./stream " TMP "/cv/raw_images/v --task instance --score-every 10 --mode fixed --device cpu --out " TMP "/out_ins > "
             TMP "/ins.log 2>&1");
    log = read_text(TMP "/ins.log");
    CHECK(rc == 0 && strstr(log, "RESULT task=instance"), "./stream --task instance: rc %d\n%s", rc, log);
    free(log);
    cJSON* res = parse_file(TMP "/out_ins/instances.json");
    int n = res ? cJSON_GetArraySize(res) : 0;
    CocoMaskObject* dt = (CocoMaskObject*)callocCheck((size_t)n + 1, sizeof(CocoMaskObject));
    int nd = 0, bad_rle = 0, per_image_ok = 1;
    const cJSON* e;
    cJSON_ArrayForEach(e, res) {
        const cJSON* segm = cJSON_GetObjectItemCaseSensitive(e, "segmentation");
        const cJSON* size = cJSON_GetObjectItemCaseSensitive(segm, "size");
        const char* counts = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(segm, "counts"));
        char err[256];
        CocoMaskObject* o = &dt[nd];
        if (!counts || !size || rle_from_string(&o->rle, counts, (int)cJSON_GetArrayItem(size, 0)->valuedouble,
                                                (int)cJSON_GetArrayItem(size, 1)->valuedouble, err, sizeof(err)) != 0) { bad_rle++; continue; }
        o->image = (int)json_num(e, "image_id"); o->category_id = (int)json_num(e, "category_id"); o->score = json_num(e, "score");
        const cJSON* bb = cJSON_GetObjectItemCaseSensitive(e, "bbox");
        o->area = cJSON_GetArrayItem(bb, 2)->valuedouble * cJSON_GetArrayItem(bb, 3)->valuedouble;
        nd++;
    }
    // at most 100 per frame; 11 frames
    for (int f = 1; f <= 22; f++) {   // ids: 1 and 11 annotated, 12 + index for the others
        int c = 0;
        for (int i = 0; i < nd; i++) c += dt[i].image == f;
        per_image_ok &= c <= 100;
    }
    for (int i = 0; i < nd; i++) per_image_ok &= dt[i].image >= 1 && dt[i].image <= 22;
    CocoMaskObject* gto = (CocoMaskObject*)callocCheck(256, sizeof(CocoMaskObject));
    int ng = 0, imgs[2];
    for (int a = 0; a < gt.n; a++) {
        int H, W;
        uint32_t* g = coco_panoptic_load(&gt, &gt.ann[a], 0, 0, &H, &W);
        imgs[a] = (int)gt.ann[a].image_id;
        for (int s = 0; s < gt.ann[a].n; s++) {
            const PanSeg* S = &gt.ann[a].seg[s];
            if (!gt.cats.isthing[S->category]) continue;
            CocoMaskObject* o = &gto[ng++];
            o->image = imgs[a]; o->category_id = gt.cats.id[S->category]; o->iscrowd = S->iscrowd; o->area = (double)S->area;
            rle_encode_id(&o->rle, g, H, W, S->id);
        }
        free(g);
    }
    double st[COCO_AP_STATS];
    coco_mask_ap(st, NULL, gto, ng, dt, nd, gt.cats.id, gt.cats.n, imgs, 2, 100);
    sc = parse_file(TMP "/out_ins/instance_scores.json");
    double ap_printed = json_num(cJSON_GetObjectItemCaseSensitive(sc, "pooled"), "AP");
    ok = bad_rle == 0 && nd > 0 && per_image_ok && fabs(st[0] - ap_printed) < 2e-6 && st[0] > 0.0;
    CHECK(ok, "AP from instances.json %.6f vs printed %.6f (%d detections, %d bad RLE)", st[0], ap_printed, nd, bad_rle);
    printf("%-4s ./stream --task instance: %d detections in instances.json (RLE), AP %.4f, equal when recomputed from the file\n",
           ok ? "ok" : "FAIL", nd, st[0]);
    for (int i = 0; i < nd; i++) rle_free(&dt[i].rle);
    for (int i = 0; i < ng; i++) rle_free(&gto[i].rle);
    free(dt); free(gto);
    cJSON_Delete(sc); cJSON_Delete(res);
    coco_panoptic_free(&gt);
    CHECK(exists(TMP "/out_ins/v_000001_instances.png") && exists(TMP "/out_pan/v_000011_panoptic.png") &&
          exists(TMP "/out_pan/panoptic/v_000002.png"), "overlays or panoptic PNGs missing");
}

// ----------------------------------------------------------------------------
// bad inputs at the program level: one "error:" line, exit 1, no output folder made

static void stream_dies(const char* what, const char* args, const char* out, const char* expect1, const char* expect2) {
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "./stream %s --out %s --device cpu > " TMP "/bad.log 2> " TMP "/bad.err", args, out);
    int rc = run(cmd);
    char* err = read_text(TMP "/bad.err");
    int lines = 0;
    for (const char* p = err; *p; p++) lines += *p == '\n';
    int ok = rc == 1 && lines == 1 && strncmp(err, "error:", 6) == 0 && strstr(err, expect1) && (!expect2 || strstr(err, expect2)) && !exists(out);
    CHECK(ok, "%s: rc %d, out exists %d, stderr '%s'", what, rc, exists(out), err);
    if (ok) printf("ok   bad input (%s): %s", what, err);
    free(err);
}

static void test_bad_inputs(void) {
    stream_dies("a scored frame without annotation", TMP "/cv/raw_images/v --task panoptic --mode fixed", TMP "/bad1",
                "v_000002.png", "--score-every 10");
    stream_dies("model classes != categories", TMP "/cv/raw_images/v --task panoptic --score-every 10 --model " TMP "/k5.bin",
                TMP "/bad2", "5 classes", "8 categories");
    stream_dies("--labels with --task panoptic", TMP "/cv/raw_images/v --task instance --labels " TMP "/sem_labels",
                TMP "/bad3", "--labels is for --task semantic", NULL);
    stream_dies("unknown task", TMP "/cv/raw_images/v --task depth", TMP "/bad4", "--task", "depth");
    // a broken ground-truth PNG is found before anything is written
    run("cp -r " TMP "/cv " TMP "/cv_bad");
    int w, h, c;
    unsigned char* px = stbi_load(TMP "/cv_bad/panoptic_images/v/v_000011.png", &w, &h, &c, 3);
    CHECK(px != NULL, "cannot read the PNG to break");
    if (px) {
        px[3 * (5 * w + 7)] = 7; px[3 * (5 * w + 7) + 1] = 7; px[3 * (5 * w + 7) + 2] = 7;   // id 7 + 256 * 7 + 65536 * 7
        stbi_write_png(TMP "/cv_bad/panoptic_images/v/v_000011.png", w, h, 3, px, 3 * w);
        stbi_image_free(px);
    }
    stream_dies("PNG ids the JSON does not list", TMP "/cv_bad/raw_images/v --task panoptic --score-every 10 --mode fixed",
                TMP "/bad5", "v_000011.png", "segment id 460551 at (x 7, y 5)");
    // ./train: an image listed without an annotation
    run("cp -r " TMP "/st " TMP "/st_bad");
    char* j = read_text(TMP "/st_bad/annotations/panoptic_train2017.json");
    char* at = strstr(j, "\"images\": [");
    FILE* fp = fopen(TMP "/st_bad/annotations/panoptic_train2017.json", "w");
    if (at && fp) {
        fwrite(j, 1, at - j + strlen("\"images\": ["), fp);
        fputs("{\"id\": 77, \"file_name\": \"000077.png\", \"height\": 48, \"width\": 64}, ", fp);
        fputs(at + strlen("\"images\": ["), fp);
    }
    if (fp) fclose(fp);
    free(j);
    int rc = run("./train --task panoptic --data " TMP "/st_bad --size tiny --steps 1 --batch 1 --crop 64x48 --out " TMP
                 "/never.bin --device cpu > " TMP "/bad.log 2> " TMP "/bad.err");
    char* err = read_text(TMP "/bad.err");
    int ok = rc == 1 && strstr(err, "image id 77") && strstr(err, "no annotation") && !exists(TMP "/never.bin");
    CHECK(ok, "train with an image without annotation: rc %d, '%s'", rc, err);
    if (ok) printf("ok   bad input (./train, an image without annotation): %s", err);
    free(err);
}

// dev/reproduce_coco_videos.sh on a generated COCO Videos root (video "bar", one of the
// released list): every run, its RESULT line, the table with both columns
static void test_reproduce(void) {
    CHECK(run("./gen video " TMP "/rcv/coco_videos --frames 11 --size 64x48 --seed 9 --panoptic --video-name bar > /dev/null") == 0, "gen failed");
    int rc = run("VIDEOS='bar' ROWS='fixed online' sh dev/reproduce_coco_videos.sh " TMP "/rcv/coco_videos data/model.bin data/model.bin "
                 TMP "/rcv/out --resize-short 0 --max-long 0 --crop 0 --batch 2 --device cpu > " TMP "/rcv.log 2> " TMP "/rcv.err");
    char* log = read_text(TMP "/rcv.log");
    char* res = read_text(TMP "/rcv/out/results.txt");
    int lines = 0;
    for (const char* p = res; *p; p++) lines += *p == '\n';
    const char* row = strstr(log, "MAE Joint Training");
    double ap = -1, pq = -1;
    if (row) sscanf(row + strlen("MAE Joint Training"), "%lf %*s %lf", &ap, &pq);
    int ok = rc == 0 && lines == 4 && strstr(res, "panoptic online bar RESULT task=panoptic") &&
             strstr(res, "instance fixed bar RESULT task=instance") && ap >= 0 && pq > 10.0 && strstr(log, "Online TTT-MAE");
    CHECK(ok, "dev/reproduce_coco_videos.sh: rc %d, %d results, AP %g PQ %g\n%s\n%s", rc, lines, ap, pq, res, log);
    if (ok) printf("ok   dev/reproduce_coco_videos.sh on a generated COCO Videos root: 4 runs, table AP %.1f PQ %.1f (fixed row)\n", ap, pq);
    free(log); free(res);
}

int main(void) {
    fresh_dir(TMP);
    test_gen();
    test_train_loss();
    // a 5-class model for the class-count check
    ModelConfig c5 = model_config_tiny(5);
    Model* m5 = model_create(&c5, 1, 32, 32);
    model_init_random(m5, 1);
    model_save(m5, TMP "/k5.bin");
    model_free(m5);
    test_train_and_stream();
    test_bad_inputs();
    test_reproduce();
    return test_summary("test_panoptic");
}
