// test/test_coco_eval.c: coco_eval.c against the field's tools. test/data/coco_eval_ref.json
// was written by dev/coco_eval_reference.py with pycocotools (RLE strings, areas, boxes;
// COCOeval "segm" stats) and ports of panopticapi's and the released TTT code's pq_compute.
#include "test.h"
#include "cJSON.h"

static double num(const cJSON* o, const char* key) {
    const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) { printf("missing number '%s'\n", key); exit(1); }
    return v->valuedouble;
}
static const char* str(const cJSON* o, const char* key) {
    const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v)) { printf("missing string '%s'\n", key); exit(1); }
    return v->valuestring;
}
static const cJSON* arr(const cJSON* o, const char* key) {
    const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsArray(v)) { printf("missing array '%s'\n", key); exit(1); }
    return v;
}

static void test_rle(const cJSON* cases) {
    int n_ok = 0, n = 0;
    const cJSON* c;
    cJSON_ArrayForEach(c, cases) {
        int h = (int)num(c, "h"), w = (int)num(c, "w");
        const char* counts = str(c, "counts");
        const char* bits = str(c, "bits");
        char err[256];
        Rle r;
        int ok = rle_from_string(&r, counts, h, w, err, sizeof(err)) == 0;
        unsigned char* m = (unsigned char*)mallocCheck((size_t)h * w);
        if (ok) rle_decode(&r, m);
        if (ok && bits[0]) for (int i = 0; i < h * w; i++) ok &= m[i] == (unsigned char)(bits[i] - '0');
        ok &= ok && rle_area(&r) == (uint32_t)num(c, "area");
        double bb[4];
        if (ok) rle_to_bbox(&r, bb);
        const cJSON* rb = arr(c, "bbox");
        for (int k = 0; ok && k < 4; k++) ok &= bb[k] == cJSON_GetArrayItem(rb, k)->valuedouble;
        // encode the decoded mask again: the same string, byte for byte
        Rle e;
        if (ok) {
            rle_encode(&e, m, h, w);
            char* s = rle_to_string(&e);
            ok &= strcmp(s, counts) == 0;
            free(s);
            rle_free(&e);
        }
        if (ok) rle_free(&r);
        free(m);
        n_ok += ok; n++;
    }
    CHECK(n_ok == n && n >= 6, "RLE: %d of %d masks decode, encode, area and bbox as pycocotools", n_ok, n);
    group_line("RLE: %d masks decode to the bits, re-encode to the same counts string, area, bbox", n);
}

// objects of one AP case; rle strings decoded (and re-encoded: must round-trip)
static CocoMaskObject* read_objects(const cJSON* list, int h, int w, int is_gt, int* n_out, int* roundtrip_bad) {
    int n = cJSON_GetArraySize(list), i = 0;
    CocoMaskObject* o = (CocoMaskObject*)callocCheck((size_t)n + 1, sizeof(CocoMaskObject));
    const cJSON* e;
    cJSON_ArrayForEach(e, list) {
        char err[256];
        const char* counts = str(e, "counts");
        if (rle_from_string(&o[i].rle, counts, h, w, err, sizeof(err)) != 0) { printf("bad rle: %s\n", err); exit(1); }
        char* s = rle_to_string(&o[i].rle);
        if (strcmp(s, counts) != 0) (*roundtrip_bad)++;
        free(s);
        o[i].image = (int)num(e, "image_id");
        o[i].category_id = (int)num(e, "category_id");
        if (is_gt) { o[i].iscrowd = (int)num(e, "iscrowd"); o[i].area = num(e, "area"); }
        else { o[i].score = num(e, "score"); o[i].area = rle_area(&o[i].rle); }
        i++;
    }
    *n_out = n;
    return o;
}

static int* read_ints(const cJSON* a, int* n_out) {
    int n = cJSON_GetArraySize(a), i = 0;
    int* v = (int*)mallocCheck(((size_t)n + 1) * sizeof(int));
    const cJSON* e;
    cJSON_ArrayForEach(e, a) v[i++] = (int)e->valuedouble;
    *n_out = n;
    return v;
}

static void test_ap(const cJSON* cases) {
    int ci = 0;
    const cJSON* c;
    cJSON_ArrayForEach(c, cases) {
        int h = (int)num(c, "h"), w = (int)num(c, "w"), ng, nd, ni, nc, bad = 0;
        CocoMaskObject* gt = read_objects(arr(c, "gt"), h, w, 1, &ng, &bad);
        CocoMaskObject* dt = read_objects(arr(c, "dt"), h, w, 0, &nd, &bad);
        int* imgs = read_ints(arr(c, "images"), &ni);
        int* cats = read_ints(arr(c, "categories"), &nc);
        CHECK(bad == 0, "AP case %d: %d RLE strings do not round-trip", ci, bad);
        double stats[COCO_AP_STATS], per[16];
        double t0 = time_now_seconds();
        coco_mask_ap(stats, per, gt, ng, dt, nd, cats, nc, imgs, ni, 100);
        double ms = (time_now_seconds() - t0) * 1e3;
        const cJSON* rs = arr(c, "stats");
        double maxerr = 0.0;
        for (int s = 0; s < COCO_AP_STATS; s++) maxerr = fmax(maxerr, fabs(stats[s] - cJSON_GetArrayItem(rs, s)->valuedouble));
        const cJSON* rp = arr(c, "per_category");
        for (int k = 0; k < nc; k++) {
            const cJSON* v = cJSON_GetArrayItem(rp, k);
            if (cJSON_IsNull(v)) { if (!isnan(per[k])) maxerr = 1.0; }
            else maxerr = fmax(maxerr, fabs(per[k] - v->valuedouble));
        }
        int ok = maxerr < 1e-12;
        printf("%-4s AP case %d (%d images, %d gt, %d dt): AP %.6f AP50 %.6f AP75 %.6f s %.4f m %.4f l %.4f; max |C - pycocotools| %.1e (%.1f ms)\n",
               ok ? "ok" : "FAIL", ci, ni, ng, nd, stats[0], stats[1], stats[2], stats[3], stats[4], stats[5], maxerr, ms);
        CHECK(ok, "AP case %d differs from pycocotools by %g", ci, maxerr);
        if (ci == 0) {   // the case with 110 detections in one cell: the cap of 100 matters
            double s2[COCO_AP_STATS];
            coco_mask_ap(s2, NULL, gt, ng, dt, nd, cats, nc, imgs, ni, 1000);
            CHECK(s2[0] != stats[0], "AP case 0: max_dets 100 and 1000 give the same AP %g", s2[0]);
        }
        for (int i = 0; i < ng; i++) rle_free(&gt[i].rle);
        for (int i = 0; i < nd; i++) rle_free(&dt[i].rle);
        free(gt); free(dt); free(imgs); free(cats);
        ci++;
    }
    CHECK(ci >= 3, "AP: %d cases", ci);
}

// an id map from row-major runs [value, count, ...]
static uint32_t* read_map(const cJSON* runs, size_t n) {
    uint32_t* m = (uint32_t*)mallocCheck(n * sizeof(uint32_t));
    size_t p = 0;
    for (int i = 0; i + 1 < cJSON_GetArraySize(runs); i += 2) {
        uint32_t v = (uint32_t)cJSON_GetArrayItem(runs, i)->valuedouble;
        int cnt = (int)cJSON_GetArrayItem(runs, i + 1)->valuedouble;
        for (int k = 0; k < cnt && p < n; k++) m[p++] = v;
    }
    if (p != n) { printf("map runs cover %zu of %zu pixels\n", p, n); exit(1); }
    return m;
}

static int category_index(const cJSON* cats, int id) {
    int i = 0;
    const cJSON* c;
    cJSON_ArrayForEach(c, cats) { if ((int)num(c, "id") == id) return i; i++; }
    return -1;   // outside the table (COCO Videos' 255)
}

static PanSeg* read_segments(const cJSON* list, const cJSON* cats, int* n_out) {
    int n = cJSON_GetArraySize(list), i = 0;
    PanSeg* s = (PanSeg*)callocCheck((size_t)n + 1, sizeof(PanSeg));
    const cJSON* e;
    cJSON_ArrayForEach(e, list) {
        s[i].id = (uint32_t)num(e, "id");
        s[i].category = category_index(cats, (int)num(e, "category_id"));
        const cJSON* cr = cJSON_GetObjectItemCaseSensitive(e, "iscrowd");
        s[i].iscrowd = cr ? (int)cr->valuedouble : 0;
        const cJSON* ar = cJSON_GetObjectItemCaseSensitive(e, "area");
        s[i].area = ar ? (int64_t)ar->valuedouble : 0;
        i++;
    }
    *n_out = n;
    return s;
}

static double pq_diff(PQResult r, const cJSON* ref) {
    double d = fabs(r.pq - cJSON_GetArrayItem(ref, 0)->valuedouble);
    d = fmax(d, fabs(r.sq - cJSON_GetArrayItem(ref, 1)->valuedouble));
    d = fmax(d, fabs(r.rq - cJSON_GetArrayItem(ref, 2)->valuedouble));
    if (r.n != (int)cJSON_GetArrayItem(ref, 3)->valuedouble) d = 1.0;
    return d;
}

static void test_pq(const cJSON* cases) {
    int ci = 0;
    const cJSON* c;
    cJSON_ArrayForEach(c, cases) {
        int h = (int)num(c, "h"), w = (int)num(c, "w");
        const cJSON* cats = arr(c, "categories");
        int nc = cJSON_GetArraySize(cats);
        unsigned char isthing[16];
        for (int k = 0; k < nc; k++) isthing[k] = (unsigned char)num(cJSON_GetArrayItem(cats, k), "isthing");
        const char* modes[2] = {"coco", "released"};
        for (int mode = 0; mode < 2; mode++) {
            PQCat total[16];
            memset(total, 0, sizeof(total));
            double maxerr = 0.0;
            int ni = 0;
            const cJSON* im;
            cJSON_ArrayForEach(im, arr(c, "images")) {
                uint32_t* gm = read_map(arr(im, "gt_map"), (size_t)h * w);
                uint32_t* pm = read_map(arr(im, "pred_map"), (size_t)h * w);
                int ng, np;
                PanSeg* gs = read_segments(arr(im, "gt_segments"), cats, &ng);
                PanSeg* ps = read_segments(arr(im, "pred_segments"), cats, &np);
                PQCat one[16];
                memset(one, 0, sizeof(one));
                char err[256] = "";
                int rc = pq_image(one, gm, gs, ng, pm, ps, np, (size_t)h * w, mode == 0 ? PQ_CROWD_COCO : PQ_CROWD_RELEASED, err, sizeof(err));
                if (rc != 0) { printf("pq_image: %s\n", err); maxerr = 1.0; }
                const cJSON* ref = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(im, "result"), modes[mode]);
                maxerr = fmax(maxerr, pq_diff(pq_average(one, isthing, nc, -1, NULL), arr(ref, "all")));
                maxerr = fmax(maxerr, pq_diff(pq_average(one, isthing, nc, 1, NULL), arr(ref, "things")));
                maxerr = fmax(maxerr, pq_diff(pq_average(one, isthing, nc, 0, NULL), arr(ref, "stuff")));
                for (int k = 0; k < nc; k++) {
                    total[k].iou += one[k].iou; total[k].tp += one[k].tp;
                    total[k].fp += one[k].fp; total[k].fn += one[k].fn;
                }
                free(gm); free(pm); free(gs); free(ps);
                ni++;
            }
            const cJSON* ref = cJSON_GetObjectItemCaseSensitive(c, modes[mode]);
            double per[16];
            PQResult all = pq_average(total, isthing, nc, -1, per);
            maxerr = fmax(maxerr, pq_diff(all, arr(ref, "all")));
            maxerr = fmax(maxerr, pq_diff(pq_average(total, isthing, nc, 1, NULL), arr(ref, "things")));
            maxerr = fmax(maxerr, pq_diff(pq_average(total, isthing, nc, 0, NULL), arr(ref, "stuff")));
            const cJSON* rp = arr(ref, "per_category");
            for (int k = 0; k < nc; k++) {
                const cJSON* v = cJSON_GetArrayItem(rp, k);
                if (cJSON_IsNull(v)) { if (!isnan(per[k])) maxerr = 1.0; }
                else maxerr = fmax(maxerr, fabs(per[k] - v->valuedouble));
            }
            int ok = maxerr < 1e-12;
            printf("%-4s PQ case %d, %-8s rule (%d images): PQ %.6f SQ %.6f RQ %.6f over %d categories; per image and pooled, all/things/stuff: max |C - python| %.1e\n",
                   ok ? "ok" : "FAIL", ci, modes[mode], ni, all.pq, all.sq, all.rq, all.n, maxerr);
            CHECK(ok, "PQ case %d (%s) differs by %g", ci, modes[mode], maxerr);
        }
        ci++;
    }
    CHECK(ci >= 2, "PQ: %d cases", ci);
}

// inputs the scorers must refuse, each with a message naming the id
static void test_bad_inputs(void) {
    char err[256];
    Rle r;
    CHECK(rle_from_string(&r, "1a~", 4, 4, err, sizeof(err)) != 0, "RLE with a bad character accepted");
    CHECK(rle_from_string(&r, "34", 4, 4, err, sizeof(err)) != 0 && strstr(err, "16"), "RLE of the wrong size accepted: %s", err);
    CHECK(rle_from_string(&r, "", 0, 0, err, sizeof(err)) == 0 && r.m == 0, "empty RLE of an empty mask refused");
    rle_free(&r);
    // a 2 x 3 map: gt segments 5 (cat 0) and 9 (cat 1); pred 7 only
    uint32_t gm[6] = {5, 5, 9, 9, 0, 9}, pm[6] = {7, 7, 7, 0, 0, 0};
    PanSeg gs[2] = {{5, 0, 0, 2}, {9, 1, 0, 3}}, ps[2] = {{7, 0, 0, 0}, {8, 1, 0, 0}};
    PQCat st[2];
    memset(st, 0, sizeof(st));
    int rc = pq_image(st, gm, gs, 2, pm, ps, 2, 6, PQ_CROWD_COCO, err, sizeof(err));
    CHECK(rc != 0 && strstr(err, "8") && strstr(err, "not in the map"), "pred id listed but absent accepted: %s", err);
    rc = pq_image(st, gm, gs, 2, pm, ps, 1, 6, PQ_CROWD_COCO, err, sizeof(err));
    CHECK(rc == 0 && st[0].tp == 1 && st[1].fn == 1 && st[0].fp == 0, "pq_image on a small case: rc %d tp %lld fn %lld", rc, (long long)st[0].tp, (long long)st[1].fn);
    // iou of 5 vs 7: inter 2, union 3 + 2 - 2 - 0 = 3 -> 2/3
    CHECK(fabs(st[0].iou - 2.0 / 3.0) < 1e-15, "iou %g", st[0].iou);
    gm[4] = 11;   // an id the list does not have
    rc = pq_image(st, gm, gs, 2, pm, ps, 1, 6, PQ_CROWD_COCO, err, sizeof(err));
    CHECK(rc != 0 && strstr(err, "11"), "gt id in the map but not listed accepted: %s", err);
    gm[4] = 0;
    PanSeg dup[2] = {{5, 0, 0, 2}, {5, 1, 0, 3}};
    rc = pq_image(st, gm, dup, 2, pm, ps, 1, 6, PQ_CROWD_COCO, err, sizeof(err));
    CHECK(rc != 0 && strstr(err, "twice"), "duplicate ids accepted: %s", err);
    group_line("bad inputs: malformed and wrong-size RLE, ids in a map but not listed and the reverse, duplicates");
}

int main(void) {
    char* text = read_text("test/data/coco_eval_ref.json");
    cJSON* ref = cJSON_Parse(text);
    CHECK(ref != NULL, "test/data/coco_eval_ref.json does not parse");
    if (!ref) return test_summary("test_coco_eval");
    test_rle(arr(ref, "rle"));
    test_ap(arr(ref, "ap"));
    test_pq(arr(ref, "pq"));
    test_bad_inputs();
    cJSON_Delete(ref);
    free(text);
    return test_summary("test_coco_eval");
}
