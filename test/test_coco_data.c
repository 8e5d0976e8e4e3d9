// test/test_coco_data.c: the COCO panoptic readers (coco_data.c) on fixtures written here in
// the published layouts, byte for byte the format of the real files:
//   COCO 2017    coco/val2017/NNN.jpg, coco/annotations/panoptic_val2017.json and the PNGs in
//                coco/annotations/panoptic_val2017/ (as the zip unpacks) or coco/panoptic_val2017/
//                (detectron2's place)
//   COCO Videos  coco_videos/raw_images/VID/VID_NNNN.png, coco_videos/panoptic_images/VID/...,
//                coco_videos/annotations/train/VID.json (no "categories": COCO's 133; only every
//                10th frame annotated; category 255 = ignored), as the released code reads them
// and every bad input of the COCO loaders (one "error:" line naming the file and the id, exit 1).
#include "test.h"
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#include "stb_image.h"
#include "stb_image_write.h"
#pragma GCC diagnostic pop

#define TMP "test/tmp/coco_data"
#define FH 12
#define FW 16

// the segment ids of fixture image k: two stuff bands, two things, void, a crowd, ignored
static const uint32_t SKY = 3937356, ROAD = 8421504, PERSON_A = 2570, PERSON_B = 65793, CROWD = 12345678, IGN = 777;
static void fixture_ids(uint32_t* ids, int k) {
    for (int y = 0; y < FH; y++)
        for (int x = 0; x < FW; x++) {
            uint32_t v = y < 5 ? SKY : ROAD;
            if (y >= 3 && y < 8 && x >= 2 + k && x < 6 + k) v = PERSON_A;
            if (y >= 6 && y < 11 && x >= 9 && x < 12) v = PERSON_B;
            if (y >= 9 && x >= 13) v = CROWD;
            if (y == 0 && x < 3) v = 0;            // void
            if (y == FH - 1 && x < 2) v = IGN;     // an ignored (255) segment
            ids[y * FW + x] = v;
        }
}

static void write_ids_png(const char* path, const uint32_t* ids, int H, int W) {
    unsigned char* px = (unsigned char*)mallocCheck((size_t)H * W * 3);
    for (int i = 0; i < H * W; i++) { px[3 * i] = ids[i] & 255; px[3 * i + 1] = (ids[i] >> 8) & 255; px[3 * i + 2] = (ids[i] >> 16) & 255; }
    CHECK(stbi_write_png(path, W, H, 3, px, W * 3), "cannot write %s", path);
    free(px);
}

static void write_frame(const char* path, int k, int jpg) {
    unsigned char px[FH * FW * 3];
    for (int i = 0; i < FH * FW * 3; i++) px[i] = (unsigned char)(40 + 7 * k + i % 97);
    if (jpg) CHECK(stbi_write_jpg(path, FW, FH, 3, px, 95), "cannot write %s", path);
    else CHECK(stbi_write_png(path, FW, FH, 3, px, FW * 3), "cannot write %s", path);
}

static int64_t count_id(const uint32_t* ids, uint32_t v) {
    int64_t c = 0;
    for (int i = 0; i < FH * FW; i++) c += ids[i] == v;
    return c;
}

// a segments_info entry as COCO writes it (id, category_id, iscrowd, bbox, area)
static void seg_json(char* out, size_t n, uint32_t id, int cat, int crowd, const uint32_t* ids) {
    snprintf(out, n, "{\"id\": %u, \"category_id\": %d, \"iscrowd\": %d, \"bbox\": [0, 0, 1, 1], \"area\": %lld}",
             id, cat, crowd, (long long)count_id(ids, id));
}

// COCO 2017 val fixture: 2 images with file categories person (1), car (3), sky-other-merged (187)
static void write_coco_fixture(const char* root, int png_in_annotations, const char* extra_segment) {
    char p[1024], segs[4][256];
    snprintf(p, sizeof(p), "mkdir -p %s/val2017 %s/annotations %s/%s", root, root, root, png_in_annotations ? "annotations/panoptic_val2017" : "panoptic_val2017");
    run(p);
    const int img_ids[2] = {139, 285};
    char anns[2][2048];
    for (int k = 0; k < 2; k++) {
        uint32_t ids[FH * FW];
        fixture_ids(ids, k);
        for (int i = 0; i < FH * FW; i++) if (ids[i] == IGN) ids[i] = ROAD;   // COCO has no 255
        snprintf(p, sizeof(p), "%s/val2017/%012d.jpg", root, img_ids[k]);
        write_frame(p, k, 1);
        snprintf(p, sizeof(p), "%s/%s/%012d.png", root, png_in_annotations ? "annotations/panoptic_val2017" : "panoptic_val2017", img_ids[k]);
        write_ids_png(p, ids, FH, FW);
        seg_json(segs[0], 256, SKY, 187, 0, ids);
        seg_json(segs[1], 256, ROAD, 187, 0, ids);   // two segments of one stuff class (as COCO has none; fine)
        seg_json(segs[2], 256, PERSON_A, 1, 0, ids);
        seg_json(segs[3], 256, PERSON_B, 3, 0, ids);
        char crowd[256];
        seg_json(crowd, 256, CROWD, 1, 1, ids);
        snprintf(anns[k], sizeof(anns[k]),
                 "{\"segments_info\": [%s, %s, %s, %s, %s%s%s], \"file_name\": \"%012d.png\", \"image_id\": %d}",
                 segs[0], segs[1], segs[2], segs[3], crowd, k == 1 && extra_segment ? ", " : "",
                 k == 1 && extra_segment ? extra_segment : "", img_ids[k], img_ids[k]);
    }
    char* json = (char*)mallocCheck(16384);
    snprintf(json, 16384,
             "{\"info\": {\"description\": \"fixture\", \"year\": 2017}, \"licenses\": [{\"id\": 1, \"name\": \"x\"}],\n"
             " \"images\": [{\"license\": 1, \"file_name\": \"%012d.jpg\", \"height\": %d, \"width\": %d, \"id\": %d},\n"
             "             {\"license\": 1, \"file_name\": \"%012d.jpg\", \"height\": %d, \"width\": %d, \"id\": %d}],\n"
             " \"annotations\": [%s,\n %s],\n"
             " \"categories\": [{\"supercategory\": \"person\", \"isthing\": 1, \"id\": 1, \"name\": \"person\", \"color\": [220, 20, 60]},\n"
             "   {\"supercategory\": \"sky\", \"isthing\": 0, \"id\": 187, \"name\": \"sky-other-merged\", \"color\": [106, 154, 176]},\n"
             "   {\"supercategory\": \"vehicle\", \"isthing\": 1, \"id\": 3, \"name\": \"car\", \"color\": [0, 0, 142]}]}\n",
             img_ids[0], FH, FW, img_ids[0], img_ids[1], FH, FW, img_ids[1], anns[0], anns[1]);
    snprintf(p, sizeof(p), "%s/annotations/panoptic_val2017.json", root);
    write_file(p, json, strlen(json));
    free(json);
}

// COCO Videos fixture: 12 frames of video "bar", frames 1 and 11 annotated (the released
// protocol scores every 10th), no "categories" (COCO's 133), a 255 segment
static void write_videos_fixture(const char* root) {
    char p[1024];
    snprintf(p, sizeof(p), "mkdir -p %s/coco_videos/raw_images/bar %s/coco_videos/panoptic_images/bar %s/coco_videos/annotations/train", root, root, root);
    run(p);
    char anns[2][2048];
    for (int f = 1; f <= 12; f++) {
        snprintf(p, sizeof(p), "%s/coco_videos/raw_images/bar/bar_%04d.png", root, f);
        write_frame(p, f, 0);
    }
    for (int k = 0; k < 2; k++) {
        int f = 1 + 10 * k;
        uint32_t ids[FH * FW];
        fixture_ids(ids, k);
        snprintf(p, sizeof(p), "%s/coco_videos/panoptic_images/bar/bar_%04d.png", root, f);
        write_ids_png(p, ids, FH, FW);
        char s[6][256];
        seg_json(s[0], 256, SKY, 187, 0, ids);
        seg_json(s[1], 256, ROAD, 149, 0, ids);   // road
        seg_json(s[2], 256, PERSON_A, 1, 0, ids);
        seg_json(s[3], 256, PERSON_B, 3, 0, ids);
        seg_json(s[4], 256, CROWD, 1, 1, ids);
        seg_json(s[5], 256, IGN, 255, 0, ids);
        snprintf(anns[k], sizeof(anns[k]), "{\"image_id\": %d, \"file_name\": \"bar_%04d.png\", \"segments_info\": [%s, %s, %s, %s, %s, %s]}",
                 100 + f, f, s[0], s[1], s[2], s[3], s[4], s[5]);
    }
    char json[8192];
    snprintf(json, sizeof(json),
             "{\"images\": [{\"id\": 101, \"file_name\": \"bar_0001.png\", \"height\": %d, \"width\": %d},"
             " {\"id\": 111, \"file_name\": \"bar_0011.png\", \"height\": %d, \"width\": %d}],\n"
             " \"annotations\": [%s,\n %s]}\n", FH, FW, FH, FW, anns[0], anns[1]);
    snprintf(p, sizeof(p), "%s/coco_videos/annotations/train/bar.json", root);
    write_file(p, json, strlen(json));
}

static void test_layouts_and_reading(void) {
    char j[4096], d[4096];
    write_coco_fixture(TMP "/coco", 1, NULL);
    int lay = find_panoptic_layout(TMP "/coco/val2017/", j, sizeof(j), d, sizeof(d));
    CHECK(lay == PANOPTIC_LAYOUT_COCO && strcmp(j, TMP "/coco/annotations/panoptic_val2017.json") == 0 &&
          strcmp(d, TMP "/coco/annotations/panoptic_val2017") == 0, "COCO layout (zip): %d %s %s", lay, j, d);
    write_coco_fixture(TMP "/coco_d2", 0, NULL);
    lay = find_panoptic_layout(TMP "/coco_d2/val2017", j, sizeof(j), d, sizeof(d));
    CHECK(lay == PANOPTIC_LAYOUT_COCO && strcmp(d, TMP "/coco_d2/panoptic_val2017") == 0, "COCO layout (detectron2): %d %s", lay, d);
    CHECK(find_panoptic_layout(TMP "/coco/train2017", j, sizeof(j), d, sizeof(d)) == 0, "a split without a JSON is found");

    CocoPanoptic p = coco_panoptic_read(TMP "/coco/annotations/panoptic_val2017.json", TMP "/coco/annotations/panoptic_val2017");
    CHECK(p.n == 2 && p.categories_from_file && p.cats.n == 3 && p.cats.id[0] == 1 && p.cats.id[1] == 3 && p.cats.id[2] == 187 &&
          p.cats.isthing[0] && p.cats.isthing[1] && !p.cats.isthing[2] && strcmp(p.cats.name[2], "sky-other-merged") == 0 &&
          p.cats.color[3 * 1 + 2] == 142, "COCO categories sorted by id (index = class)");
    const CocoPanopticAnn* a = coco_panoptic_find(&p, "000000000285.jpg");
    CHECK(a && a->image_id == 285 && a->H == FH && a->W == FW && a->n == 5 && strcmp(a->png_name, "000000000285.png") == 0,
          "annotation of 000000000285.jpg");
    CHECK(coco_panoptic_find(&p, "000000000999.jpg") == NULL, "an image without annotation is found");
    int H, W;
    uint32_t* ids = coco_panoptic_load(&p, a, FH, FW, &H, &W);
    uint32_t want[FH * FW];
    fixture_ids(want, 1);
    for (int i = 0; i < FH * FW; i++) if (want[i] == IGN) want[i] = ROAD;
    CHECK(H == FH && W == FW && memcmp(ids, want, sizeof(want)) == 0, "ids = R + 256 G + 256^2 B");
    CHECK(a->seg[2].id == PERSON_A && a->seg[2].category == 0 && a->seg[3].category == 1 && a->seg[0].category == 2 &&
          a->seg[4].iscrowd == 1 && a->seg[2].area == count_id(want, PERSON_A), "segments: ids, class indexes, crowd, area");
    // training targets: crowd and void -> 255, segments in list order
    unsigned char idx[FH * FW];
    int classes[254];
    char err[1024];
    int n = coco_panoptic_index_map(idx, classes, ids, FH * FW, a, err, sizeof(err));
    int ok = n == 4 && classes[0] == 2 && classes[1] == 2 && classes[2] == 0 && classes[3] == 1;
    for (int i = 0; i < FH * FW && ok; i++) {
        uint32_t v = want[i];
        int e = v == 0 || v == CROWD ? 255 : v == SKY ? 0 : v == ROAD ? 1 : v == PERSON_A ? 2 : 3;
        ok &= idx[i] == e;
    }
    CHECK(ok, "index map for training (n = %d)", n);
    free(ids);
    coco_panoptic_free(&p);
    group_line("COCO 2017 layout (both PNG places), categories from the file, ids from RGB, training index map");

    write_videos_fixture(TMP "/cv");
    lay = find_panoptic_layout(TMP "/cv/coco_videos/raw_images/bar", j, sizeof(j), d, sizeof(d));
    CHECK(lay == PANOPTIC_LAYOUT_COCO_VIDEOS && strcmp(j, TMP "/cv/coco_videos/annotations/train/bar.json") == 0 &&
          strcmp(d, TMP "/cv/coco_videos/panoptic_images/bar") == 0, "COCO Videos layout: %d %s %s", lay, j, d);
    p = coco_panoptic_read(j, d);
    CHECK(!p.categories_from_file && p.cats.n == 133 && p.n == 2, "COCO Videos: the built-in 133 categories");
    int things = 0;
    for (int i = 0; i < p.cats.n; i++) things += p.cats.isthing[i];
    CHECK(things == 80 && p.cats.id[0] == 1 && p.cats.id[132] == 200 && strcmp(p.cats.name[0], "person") == 0, "COCO table: 80 things");
    a = coco_panoptic_find(&p, "bar_0011.png");
    CHECK(a && a->image_id == 111 && a->seg[5].category == -1 && a->seg[1].category == coco_category_index(&p.cats, 149),
          "COCO Videos: 255 = ignored (-1), road = 149");
    CHECK(coco_panoptic_find(&p, "bar_0002.png") == NULL, "an unannotated frame has an annotation");
    ids = coco_panoptic_load(&p, a, FH, FW, &H, &W);
    n = coco_panoptic_index_map(idx, classes, ids, FH * FW, a, err, sizeof(err));
    CHECK(n == 4 && idx[(FH - 1) * FW] == 255, "ignored pixels are 255 in the training map");
    free(ids);
    coco_panoptic_free(&p);
    group_line("COCO Videos layout: raw_images / panoptic_images / annotations/train/VID.json, COCO's 133 categories, 255 ignored");
}

// ----------------------------------------------------------------------------
// bad inputs: a child reads the JSON (and loads every PNG); one "error:" line naming the file
// and the id, exit 1

typedef struct { const char* json; const char* png_dir; } CocoRead;
static void coco_read_all(void* p) {
    CocoRead* c = p;
    CocoPanoptic pan = coco_panoptic_read(c->json, c->png_dir);
    for (int i = 0; i < pan.n; i++) { int H, W; free(coco_panoptic_load(&pan, &pan.ann[i], 0, 0, &H, &W)); }
}
static void read_dies(const char* what, const char* json, const char* png_dir, const char* expect1, const char* expect2) {
    CocoRead c = {json, png_dir};
    char err[2048];
    int st;
    run_in_child(coco_read_all, &c, err, sizeof(err), &st);
    int ok = WIFEXITED(st) && WEXITSTATUS(st) == 1 && count_lines_with(err, "error:") == 1 &&
             count_lines_with(err, "") == 1 && strstr(err, expect1) && (!expect2 || strstr(err, expect2));
    CHECK(ok, "%s: exit %d, stderr '%s'", what, WIFEXITED(st) ? WEXITSTATUS(st) : -1, err);
    if (ok) printf("ok   bad input (%s): %s", what, err);
}

// the fixture's JSON with one substitution
static void write_variant(const char* dst, const char* src, const char* from, const char* to) {
    char* s = read_text(src);
    char* at = strstr(s, from);
    CHECK(at != NULL, "variant: '%s' not in %s", from, src);
    if (!at) { free(s); return; }
    FILE* fp = fopenCheck(dst, "w");
    fwrite(s, 1, at - s, fp);
    fputs(to, fp);
    fputs(at + strlen(from), fp);
    fcloseCheck(fp);
    free(s);
}

static void test_bad_inputs(void) {
    const char* good = TMP "/coco/annotations/panoptic_val2017.json";
    const char* pngs = TMP "/coco/annotations/panoptic_val2017";
    const char* bad = TMP "/coco/annotations/bad.json";
    write_variant(bad, good, "\"annotations\": [", "\"annotations\": [,");
    read_dies("malformed JSON", bad, pngs, bad, "not valid JSON");
    write_variant(bad, good, "\"segments_info\": [", "\"segments\": [");
    read_dies("missing segments_info", bad, pngs, bad, "\"segments_info\"");
    write_variant(bad, good, "\"category_id\": 3,", "\"category_id\": 91,");
    read_dies("category outside the table", bad, pngs, "category_id 91", "segment 65793");
    write_variant(bad, good, "\"category_id\": 3,", "\"category_id\": \"car\",");
    read_dies("category id not a number", bad, pngs, "\"category_id\" must be an integer", "image_id 139");
    write_variant(bad, good, "\"file_name\": \"000000000285.png\", \"image_id\": 285", "\"file_name\": \"000000000285.png\", \"image_id\": 286");
    read_dies("annotation of an unknown image", bad, pngs, "image id 286", "not in \"images\"");
    char dup[256];
    snprintf(dup, sizeof(dup), "\"id\": %u, \"category_id\": 3,", PERSON_A);
    write_variant(bad, good, "\"id\": 65793, \"category_id\": 3,", dup);
    read_dies("segment id listed twice", bad, pngs, "segment id 2570 is listed twice", bad);
    // ids in the PNG that the JSON does not list, and the reverse
    write_variant(bad, good, "{\"id\": 65793, \"category_id\": 3, \"iscrowd\": 0, \"bbox\": [0, 0, 1, 1], \"area\": 15}, ", "");
    read_dies("PNG id not listed", bad, pngs, "segment id 65793", "does not list");
    write_coco_fixture(TMP "/coco_x", 1, "{\"id\": 4242, \"category_id\": 1, \"iscrowd\": 0, \"area\": 5}");
    read_dies("listed id not in the PNG", TMP "/coco_x/annotations/panoptic_val2017.json", TMP "/coco_x/annotations/panoptic_val2017",
              "segment id 4242", "no pixel of it");
    // a 16-bit PNG and one of another size
    write_png16(TMP "/coco_x/annotations/panoptic_val2017/000000000139.png", FH, FW, 1);
    read_dies("16-bit panoptic PNG", TMP "/coco_x/annotations/panoptic_val2017.json", TMP "/coco_x/annotations/panoptic_val2017",
              "000000000139.png", "16-bit");
    uint32_t big[(FH + 1) * FW];
    for (int i = 0; i < (FH + 1) * FW; i++) big[i] = SKY;
    write_ids_png(TMP "/coco_x/annotations/panoptic_val2017/000000000139.png", big, FH + 1, FW);
    read_dies("PNG of the wrong size", TMP "/coco_x/annotations/panoptic_val2017.json", TMP "/coco_x/annotations/panoptic_val2017",
              "000000000139.png", "is 16x13");
    read_dies("missing PNG folder", good, TMP "/nowhere", "000000000139.png", "image id 139");
}

int main(void) {
    fresh_dir(TMP);
    test_layouts_and_reading();
    test_bad_inputs();
    return test_summary("test_coco_data");
}
