// coco_data.c: COCO's panoptic format as published, read and written in C (no Python at run
// time): the JSON (vendor/cJSON) with its "images", "annotations" (segments_info) and
// "categories", the PNGs whose RGB encodes segment ids (id = R + 256 G + 256^2 B), the
// category table (the 133 COCO panoptic categories built in, as detectron2's COCO_CATEGORIES),
// the dataset layouts (COCO 2017 and the released code's COCO Videos), and the outputs the
// field's tools read (panoptic PNG + JSON, instance results JSON with RLE masks).
// Every function is documented once, in ttt.h (COCO section).
#include "ttt.h"
#include <errno.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cJSON.h"
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#include "stb_image.h"         // declarations only; the implementations are compiled in ttt.c
#include "stb_image_write.h"
#pragma GCC diagnostic pop

// ----------------------------------------------------------------------------
// categories

// panopticapi's panoptic_coco_categories.json = detectron2's COCO_CATEGORIES: id, isthing,
// name, colour; sorted by id, so the index is detectron2's contiguous id (the model's class)
static const struct { int id, isthing; const char* name; unsigned char color[3]; } coco_table[COCO_PANOPTIC_NUM_CATEGORIES] = {
    {1, 1, "person", {220, 20, 60}},
    {2, 1, "bicycle", {119, 11, 32}},
    {3, 1, "car", {0, 0, 142}},
    {4, 1, "motorcycle", {0, 0, 230}},
    {5, 1, "airplane", {106, 0, 228}},
    {6, 1, "bus", {0, 60, 100}},
    {7, 1, "train", {0, 80, 100}},
    {8, 1, "truck", {0, 0, 70}},
    {9, 1, "boat", {0, 0, 192}},
    {10, 1, "traffic light", {250, 170, 30}},
    {11, 1, "fire hydrant", {100, 170, 30}},
    {13, 1, "stop sign", {220, 220, 0}},
    {14, 1, "parking meter", {175, 116, 175}},
    {15, 1, "bench", {250, 0, 30}},
    {16, 1, "bird", {165, 42, 42}},
    {17, 1, "cat", {255, 77, 255}},
    {18, 1, "dog", {0, 226, 252}},
    {19, 1, "horse", {182, 182, 255}},
    {20, 1, "sheep", {0, 82, 0}},
    {21, 1, "cow", {120, 166, 157}},
    {22, 1, "elephant", {110, 76, 0}},
    {23, 1, "bear", {174, 57, 255}},
    {24, 1, "zebra", {199, 100, 0}},
    {25, 1, "giraffe", {72, 0, 118}},
    {27, 1, "backpack", {255, 179, 240}},
    {28, 1, "umbrella", {0, 125, 92}},
    {31, 1, "handbag", {209, 0, 151}},
    {32, 1, "tie", {188, 208, 182}},
    {33, 1, "suitcase", {0, 220, 176}},
    {34, 1, "frisbee", {255, 99, 164}},
    {35, 1, "skis", {92, 0, 73}},
    {36, 1, "snowboard", {133, 129, 255}},
    {37, 1, "sports ball", {78, 180, 255}},
    {38, 1, "kite", {0, 228, 0}},
    {39, 1, "baseball bat", {174, 255, 243}},
    {40, 1, "baseball glove", {45, 89, 255}},
    {41, 1, "skateboard", {134, 134, 103}},
    {42, 1, "surfboard", {145, 148, 174}},
    {43, 1, "tennis racket", {255, 208, 186}},
    {44, 1, "bottle", {197, 226, 255}},
    {46, 1, "wine glass", {171, 134, 1}},
    {47, 1, "cup", {109, 63, 54}},
    {48, 1, "fork", {207, 138, 255}},
    {49, 1, "knife", {151, 0, 95}},
    {50, 1, "spoon", {9, 80, 61}},
    {51, 1, "bowl", {84, 105, 51}},
    {52, 1, "banana", {74, 65, 105}},
    {53, 1, "apple", {166, 196, 102}},
    {54, 1, "sandwich", {208, 195, 210}},
    {55, 1, "orange", {255, 109, 65}},
    {56, 1, "broccoli", {0, 143, 149}},
    {57, 1, "carrot", {179, 0, 194}},
    {58, 1, "hot dog", {209, 99, 106}},
    {59, 1, "pizza", {5, 121, 0}},
    {60, 1, "donut", {227, 255, 205}},
    {61, 1, "cake", {147, 186, 208}},
    {62, 1, "chair", {153, 69, 1}},
    {63, 1, "couch", {3, 95, 161}},
    {64, 1, "potted plant", {163, 255, 0}},
    {65, 1, "bed", {119, 0, 170}},
    {67, 1, "dining table", {0, 182, 199}},
    {70, 1, "toilet", {0, 165, 120}},
    {72, 1, "tv", {183, 130, 88}},
    {73, 1, "laptop", {95, 32, 0}},
    {74, 1, "mouse", {130, 114, 135}},
    {75, 1, "remote", {110, 129, 133}},
    {76, 1, "keyboard", {166, 74, 118}},
    {77, 1, "cell phone", {219, 142, 185}},
    {78, 1, "microwave", {79, 210, 114}},
    {79, 1, "oven", {178, 90, 62}},
    {80, 1, "toaster", {65, 70, 15}},
    {81, 1, "sink", {127, 167, 115}},
    {82, 1, "refrigerator", {59, 105, 106}},
    {84, 1, "book", {142, 108, 45}},
    {85, 1, "clock", {196, 172, 0}},
    {86, 1, "vase", {95, 54, 80}},
    {87, 1, "scissors", {128, 76, 255}},
    {88, 1, "teddy bear", {201, 57, 1}},
    {89, 1, "hair drier", {246, 0, 122}},
    {90, 1, "toothbrush", {191, 162, 208}},
    {92, 0, "banner", {255, 255, 128}},
    {93, 0, "blanket", {147, 211, 203}},
    {95, 0, "bridge", {150, 100, 100}},
    {100, 0, "cardboard", {168, 171, 172}},
    {107, 0, "counter", {146, 112, 198}},
    {109, 0, "curtain", {210, 170, 100}},
    {112, 0, "door-stuff", {92, 136, 89}},
    {118, 0, "floor-wood", {218, 88, 184}},
    {119, 0, "flower", {241, 129, 0}},
    {122, 0, "fruit", {217, 17, 255}},
    {125, 0, "gravel", {124, 74, 181}},
    {128, 0, "house", {70, 70, 70}},
    {130, 0, "light", {255, 228, 255}},
    {133, 0, "mirror-stuff", {154, 208, 0}},
    {138, 0, "net", {193, 0, 92}},
    {141, 0, "pillow", {76, 91, 113}},
    {144, 0, "platform", {255, 180, 195}},
    {145, 0, "playingfield", {106, 154, 176}},
    {147, 0, "railroad", {230, 150, 140}},
    {148, 0, "river", {60, 143, 255}},
    {149, 0, "road", {128, 64, 128}},
    {151, 0, "roof", {92, 82, 55}},
    {154, 0, "sand", {254, 212, 124}},
    {155, 0, "sea", {73, 77, 174}},
    {156, 0, "shelf", {255, 160, 98}},
    {159, 0, "snow", {255, 255, 255}},
    {161, 0, "stairs", {104, 84, 109}},
    {166, 0, "tent", {169, 164, 131}},
    {168, 0, "towel", {225, 199, 255}},
    {171, 0, "wall-brick", {137, 54, 74}},
    {175, 0, "wall-stone", {135, 158, 223}},
    {176, 0, "wall-tile", {7, 246, 231}},
    {177, 0, "wall-wood", {107, 255, 200}},
    {178, 0, "water-other", {58, 41, 149}},
    {180, 0, "window-blind", {183, 121, 142}},
    {181, 0, "window-other", {255, 73, 97}},
    {184, 0, "tree-merged", {107, 142, 35}},
    {185, 0, "fence-merged", {190, 153, 153}},
    {186, 0, "ceiling-merged", {146, 139, 141}},
    {187, 0, "sky-other-merged", {70, 130, 180}},
    {188, 0, "cabinet-merged", {134, 199, 156}},
    {189, 0, "table-merged", {209, 226, 140}},
    {190, 0, "floor-other-merged", {96, 36, 108}},
    {191, 0, "pavement-merged", {96, 96, 96}},
    {192, 0, "mountain-merged", {64, 170, 64}},
    {193, 0, "grass-merged", {152, 251, 152}},
    {194, 0, "dirt-merged", {208, 229, 228}},
    {195, 0, "paper-merged", {206, 186, 171}},
    {196, 0, "food-other-merged", {152, 161, 64}},
    {197, 0, "building-other-merged", {116, 112, 0}},
    {198, 0, "rock-merged", {0, 114, 143}},
    {199, 0, "wall-other-merged", {102, 102, 156}},
    {200, 0, "rug-merged", {250, 141, 255}},
};

static char* dup_string(const char* s) {
    char* d = strdup(s);
    if (d == NULL) ttt_die("out of memory");
    return d;
}

static CocoCategories categories_alloc(int n) {
    CocoCategories c;
    c.n = n;
    c.id = (int*)callocCheck((size_t)n + 1, sizeof(int));
    c.isthing = (unsigned char*)callocCheck((size_t)n + 1, 1);
    c.name = (char**)callocCheck((size_t)n + 1, sizeof(char*));
    c.color = (unsigned char*)callocCheck((size_t)n * 3 + 3, 1);
    return c;
}

CocoCategories coco_categories_builtin(void) {
    CocoCategories c = categories_alloc(COCO_PANOPTIC_NUM_CATEGORIES);
    for (int i = 0; i < c.n; i++) {
        c.id[i] = coco_table[i].id;
        c.isthing[i] = (unsigned char)coco_table[i].isthing;
        c.name[i] = dup_string(coco_table[i].name);
        memcpy(c.color + 3 * i, coco_table[i].color, 3);
    }
    return c;
}

CocoCategories coco_categories_things(const CocoCategories* all) {
    int n = 0;
    for (int i = 0; i < all->n; i++) n += all->isthing[i] != 0;
    CocoCategories c = categories_alloc(n);
    for (int i = 0, j = 0; i < all->n; i++) {
        if (!all->isthing[i]) continue;
        c.id[j] = all->id[i];
        c.isthing[j] = 1;
        c.name[j] = dup_string(all->name[i]);
        memcpy(c.color + 3 * j, all->color + 3 * i, 3);
        j++;
    }
    return c;
}

CocoCategories coco_categories_numbered(int n, const unsigned char* isthing) {
    CocoCategories c = categories_alloc(n);
    for (int i = 0; i < n; i++) {
        char buf[32];
        snprintf(buf, sizeof(buf), "%d", i);
        c.id[i] = i + 1;
        c.isthing[i] = isthing ? isthing[i] : 1;
        c.name[i] = dup_string(buf);
        // distinct hues: golden-ratio steps around the colour wheel
        float h = fmodf(0.618034f * i, 1.0f) * 6.0f;
        int k = (int)h;
        float f = h - k, v = 0.9f, s = 0.75f;
        float p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f)), rgb[3];
        switch (k % 6) {
            case 0: rgb[0] = v; rgb[1] = t; rgb[2] = p; break;
            case 1: rgb[0] = q; rgb[1] = v; rgb[2] = p; break;
            case 2: rgb[0] = p; rgb[1] = v; rgb[2] = t; break;
            case 3: rgb[0] = p; rgb[1] = q; rgb[2] = v; break;
            case 4: rgb[0] = t; rgb[1] = p; rgb[2] = v; break;
            default: rgb[0] = v; rgb[1] = p; rgb[2] = q; break;
        }
        for (int j = 0; j < 3; j++) c.color[3 * i + j] = (unsigned char)(rgb[j] * 255.0f);
    }
    return c;
}

int coco_category_index(const CocoCategories* c, int id) {
    int lo = 0, hi = c->n - 1;
    while (lo <= hi) {   // ids are increasing
        int mid = (lo + hi) / 2;
        if (c->id[mid] == id) return mid;
        if (c->id[mid] < id) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
}

void coco_categories_free(CocoCategories* c) {
    for (int i = 0; i < c->n; i++) free(c->name[i]);
    free(c->id); free(c->isthing); free(c->name); free(c->color);
    memset(c, 0, sizeof(*c));
}

// ----------------------------------------------------------------------------
// JSON fields, each checked with a message naming the file and where in it

static char* read_file_text(const char* path, size_t* len) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) ttt_die("cannot read '%s': %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) ttt_die("cannot read '%s': %s", path, strerror(errno));
    long n = ftell(f);
    if (n < 0) ttt_die("cannot read '%s': %s", path, strerror(errno));
    rewind(f);
    char* s = (char*)mallocCheck((size_t)n + 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n) ttt_die("cannot read '%s': short read", path);
    fclose(f);
    s[n] = 0;
    if (len) *len = (size_t)n;
    return s;
}

// parse a whole JSON file; dies naming the file and the line of the first error
static cJSON* json_parse_file(const char* path) {
    size_t len;
    char* text = read_file_text(path, &len);
    const char* end = NULL;
    cJSON* root = cJSON_ParseWithOpts(text, &end, 1);   // the whole text, nothing after the value
    if (root == NULL) {
        const char* at = cJSON_GetErrorPtr();
        size_t off = at && at >= text && at <= text + len ? (size_t)(at - text) : 0;
        int line = 1;
        for (size_t i = 0; i < off; i++) line += text[i] == '\n';
        free(text);
        ttt_die("'%s' is not valid JSON (near line %d, byte %zu)", path, line, off);
    }
    free(text);
    return root;
}

static const cJSON* json_field(const cJSON* o, const char* key, const char* path, const char* where) {
    const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (v == NULL) ttt_die("'%s': %s has no field \"%s\"", path, where, key);
    return v;
}

// an integer field in [lo, hi]
static long json_int(const cJSON* o, const char* key, long lo, long hi, const char* path, const char* where) {
    const cJSON* v = json_field(o, key, path, where);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi)
        ttt_die("'%s': %s: \"%s\" must be an integer in [%ld, %ld]", path, where, key, lo, hi);
    return (long)v->valuedouble;
}

static const char* json_str(const cJSON* o, const char* key, const char* path, const char* where) {
    const cJSON* v = json_field(o, key, path, where);
    if (!cJSON_IsString(v) || v->valuestring[0] == 0) ttt_die("'%s': %s: \"%s\" must be a non-empty string", path, where, key);
    return v->valuestring;
}

static const cJSON* json_array(const cJSON* o, const char* key, const char* path, const char* where) {
    const cJSON* v = json_field(o, key, path, where);
    if (!cJSON_IsArray(v)) ttt_die("'%s': %s: \"%s\" must be an array", path, where, key);
    return v;
}

static int cats_by_id(const void* a, const void* b) {
    int x = ((const int*)a)[0], y = ((const int*)b)[0];
    return (x > y) - (x < y);
}

// ----------------------------------------------------------------------------
// reading the panoptic JSON

static int image_entry_cmp(const void* a, const void* b) {
    long x = ((const long*)a)[0], y = ((const long*)b)[0];
    return (x > y) - (x < y);
}

CocoPanoptic coco_panoptic_read(const char* json_path, const char* png_dir) {
    CocoPanoptic p;
    memset(&p, 0, sizeof(p));
    p.json_path = dup_string(json_path);
    p.png_dir = dup_string(png_dir);
    cJSON* root = json_parse_file(json_path);
    if (!cJSON_IsObject(root)) ttt_die("'%s': expected a JSON object with \"annotations\"", json_path);
    char where[256];

    // categories: the file's, else COCO's 133
    const cJSON* cats = cJSON_GetObjectItemCaseSensitive(root, "categories");
    if (cats) {
        if (!cJSON_IsArray(cats) || cJSON_GetArraySize(cats) == 0) ttt_die("'%s': \"categories\" must be a non-empty array", json_path);
        int n = cJSON_GetArraySize(cats), i = 0;
        int* order = (int*)mallocCheck((size_t)n * 2 * sizeof(int));   // (id, position) sorted by id
        const cJSON* c;
        cJSON_ArrayForEach(c, cats) {
            snprintf(where, sizeof(where), "categories[%d]", i);
            order[2 * i] = (int)json_int(c, "id", 0, 1 << 24, json_path, where);
            if (order[2 * i] == COCO_IGNORE_CATEGORY) ttt_die("'%s': %s: id %d is reserved for ignored segments", json_path, where, COCO_IGNORE_CATEGORY);
            order[2 * i + 1] = i;
            i++;
        }
        qsort(order, n, 2 * sizeof(int), cats_by_id);
        p.cats = categories_alloc(n);
        for (int k = 0; k < n; k++) {
            if (k > 0 && order[2 * k] == order[2 * k - 2]) ttt_die("'%s': category id %d is listed twice", json_path, order[2 * k]);
            const cJSON* e = cJSON_GetArrayItem(cats, order[2 * k + 1]);
            snprintf(where, sizeof(where), "category %d", order[2 * k]);
            p.cats.id[k] = order[2 * k];
            p.cats.isthing[k] = (unsigned char)json_int(e, "isthing", 0, 1, json_path, where);
            p.cats.name[k] = dup_string(json_str(e, "name", json_path, where));
            const cJSON* col = cJSON_GetObjectItemCaseSensitive(e, "color");
            if (cJSON_IsArray(col) && cJSON_GetArraySize(col) == 3) {
                for (int j = 0; j < 3; j++) {
                    double v = cJSON_GetArrayItem(col, j)->valuedouble;
                    p.cats.color[3 * k + j] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
                }
            } else {
                CocoCategories tmp = coco_categories_numbered(k + 1, NULL);
                memcpy(p.cats.color + 3 * k, tmp.color + 3 * k, 3);
                coco_categories_free(&tmp);
            }
        }
        free(order);
        p.categories_from_file = 1;
    } else {
        p.cats = coco_categories_builtin();
    }

    // images (optional): id -> file name and size
    const cJSON* images = cJSON_GetObjectItemCaseSensitive(root, "images");
    int n_img = 0;
    long* img = NULL;    // (id, index) sorted by id
    if (images) {
        if (!cJSON_IsArray(images)) ttt_die("'%s': \"images\" must be an array", json_path);
        n_img = cJSON_GetArraySize(images);
        img = (long*)mallocCheck(((size_t)n_img + 1) * 2 * sizeof(long));
        int i = 0;
        const cJSON* e;
        cJSON_ArrayForEach(e, images) {
            snprintf(where, sizeof(where), "images[%d]", i);
            img[2 * i] = json_int(e, "id", 0, 1L << 53, json_path, where);
            img[2 * i + 1] = i;
            json_str(e, "file_name", json_path, where);
            json_int(e, "height", 1, 1 << 20, json_path, where);
            json_int(e, "width", 1, 1 << 20, json_path, where);
            i++;
        }
        qsort(img, n_img, 2 * sizeof(long), image_entry_cmp);
        for (int k = 1; k < n_img; k++)
            if (img[2 * k] == img[2 * k - 2]) ttt_die("'%s': image id %ld is listed twice in \"images\"", json_path, img[2 * k]);
    }

    const cJSON* anns = json_array(root, "annotations", json_path, "the file");
    p.n = cJSON_GetArraySize(anns);
    p.ann = (CocoPanopticAnn*)callocCheck((size_t)p.n + 1, sizeof(CocoPanopticAnn));
    unsigned char* img_has_ann = (unsigned char*)callocCheck((size_t)n_img + 1, 1);
    int i = 0;
    const cJSON* a;
    cJSON_ArrayForEach(a, anns) {
        CocoPanopticAnn* A = &p.ann[i];
        snprintf(where, sizeof(where), "annotations[%d]", i);
        A->image_id = json_int(a, "image_id", 0, 1L << 53, json_path, where);
        A->png_name = dup_string(json_str(a, "file_name", json_path, where));
        snprintf(where, sizeof(where), "annotations[%d] (image_id %ld, %s)", i, A->image_id, A->png_name);
        if (images) {
            long key[2] = {A->image_id, 0};
            long* hit = (long*)bsearch(key, img, n_img, 2 * sizeof(long), image_entry_cmp);
            if (hit == NULL) ttt_die("'%s': %s: image id %ld is not in \"images\"", json_path, where, A->image_id);
            int idx = (int)hit[1];
            if (img_has_ann[idx]) ttt_die("'%s': image id %ld has more than one annotation", json_path, A->image_id);
            img_has_ann[idx] = 1;
            const cJSON* ie = cJSON_GetArrayItem(images, idx);
            A->file_name = dup_string(cJSON_GetObjectItemCaseSensitive(ie, "file_name")->valuestring);
            A->H = (int)cJSON_GetObjectItemCaseSensitive(ie, "height")->valuedouble;
            A->W = (int)cJSON_GetObjectItemCaseSensitive(ie, "width")->valuedouble;
        } else {
            A->file_name = dup_string(A->png_name);
        }
        const cJSON* segs = json_array(a, "segments_info", json_path, where);
        A->n = cJSON_GetArraySize(segs);
        A->seg = (PanSeg*)callocCheck((size_t)A->n + 1, sizeof(PanSeg));
        int j = 0;
        const cJSON* s;
        cJSON_ArrayForEach(s, segs) {
            char w2[384];
            snprintf(w2, sizeof(w2), "%s segments_info[%d]", where, j);
            PanSeg* S = &A->seg[j];
            S->id = (uint32_t)json_int(s, "id", 1, (1L << 24) - 1, json_path, w2);
            int cat = (int)json_int(s, "category_id", 0, 1 << 24, json_path, w2);
            S->category = coco_category_index(&p.cats, cat);
            if (S->category < 0 && cat != COCO_IGNORE_CATEGORY)
                ttt_die("'%s': %s: segment %u has category_id %d, which is not in the category table (%s; %d categories, ids %d..%d)",
                        json_path, where, S->id, cat, p.categories_from_file ? "the file's \"categories\"" : "COCO's 133",
                        p.cats.n, p.cats.id[0], p.cats.id[p.cats.n - 1]);
            const cJSON* cr = cJSON_GetObjectItemCaseSensitive(s, "iscrowd");
            S->iscrowd = cr ? (int)json_int(s, "iscrowd", 0, 1, json_path, w2) : 0;
            const cJSON* ar = cJSON_GetObjectItemCaseSensitive(s, "area");
            S->area = ar ? (int64_t)json_int(s, "area", 0, 1L << 40, json_path, w2) : -1;
            for (int k = 0; k < j; k++)
                if (A->seg[k].id == S->id) ttt_die("'%s': %s: segment id %u is listed twice", json_path, where, S->id);
            j++;
        }
        i++;
    }
    p.n_images_without_ann = 0;
    for (int k = 0; k < n_img; k++) if (!img_has_ann[k]) {   // k: position in "images"
        if (p.n_images_without_ann == 0) {
            const cJSON* ie = cJSON_GetArrayItem(images, k);
            snprintf(p.first_image_without_ann, sizeof(p.first_image_without_ann), "image id %ld (%s)",
                     (long)cJSON_GetObjectItemCaseSensitive(ie, "id")->valuedouble,
                     cJSON_GetObjectItemCaseSensitive(ie, "file_name")->valuestring);
        }
        p.n_images_without_ann++;
    }
    free(img_has_ann); free(img);
    cJSON_Delete(root);
    return p;
}

void coco_panoptic_free(CocoPanoptic* p) {
    for (int i = 0; i < p->n; i++) { free(p->ann[i].file_name); free(p->ann[i].png_name); free(p->ann[i].seg); }
    free(p->ann); free(p->json_path); free(p->png_dir);
    coco_categories_free(&p->cats);
    memset(p, 0, sizeof(*p));
}

// the file name without folder and extension, into out
static void name_stem(char* out, size_t n, const char* name) {
    const char* slash = strrchr(name, '/');
    if (slash) name = slash + 1;
    snprintf(out, n, "%s", name);
    char* dot = strrchr(out, '.');
    if (dot) *dot = 0;
}

const CocoPanopticAnn* coco_panoptic_find(const CocoPanoptic* p, const char* image_name) {
    const char* base = strrchr(image_name, '/');
    base = base ? base + 1 : image_name;
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->ann[i].file_name, base) == 0) return &p->ann[i];
    char a[1024], b[1024];
    name_stem(a, sizeof(a), base);
    for (int i = 0; i < p->n; i++) {
        name_stem(b, sizeof(b), p->ann[i].png_name);
        if (strcmp(a, b) == 0) return &p->ann[i];
    }
    return NULL;
}

// ----------------------------------------------------------------------------
// the PNGs

uint32_t* coco_panoptic_try_load(const CocoPanoptic* p, const CocoPanopticAnn* a, int expect_H, int expect_W,
                                 int* H, int* W, char* err, size_t errlen) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", p->png_dir, a->png_name);
    int w, h, c;
    if (!stbi_info(path, &w, &h, &c)) {
        snprintf(err, errlen, "cannot read panoptic PNG '%s' (image id %ld in '%s'): %s", path, a->image_id, p->json_path,
                 access(path, R_OK) != 0 ? strerror(errno) : stbi_failure_reason());
        return NULL;
    }
    if (stbi_is_16_bit(path) || c != 3) {
        snprintf(err, errlen, "panoptic PNG '%s' is %s; expected 8-bit RGB (segment id = R + 256 G + 256^2 B)",
                 path, stbi_is_16_bit(path) ? "16-bit" : c == 4 ? "RGBA" : c == 1 ? "single-channel" : "not RGB");
        return NULL;
    }
    if ((a->H > 0 && (h != a->H || w != a->W)) || (expect_H > 0 && (h != expect_H || w != expect_W))) {
        snprintf(err, errlen, "panoptic PNG '%s' is %dx%d but %s says %dx%d (W x H)", path, w, h,
                 expect_H > 0 ? "its image" : p->json_path, expect_H > 0 ? expect_W : a->W, expect_H > 0 ? expect_H : a->H);
        return NULL;
    }
    unsigned char* px = stbi_load(path, &w, &h, &c, 3);
    if (px == NULL) {
        snprintf(err, errlen, "cannot read panoptic PNG '%s': %s", path, stbi_failure_reason());
        return NULL;
    }
    size_t npix = (size_t)w * h;
    uint32_t* ids = (uint32_t*)mallocCheck(npix * sizeof(uint32_t));
    for (size_t i = 0; i < npix; i++)
        ids[i] = (uint32_t)px[3 * i] + 256u * px[3 * i + 1] + 65536u * px[3 * i + 2];
    stbi_image_free(px);
    // every id of the PNG is listed and every listed id is in the PNG
    int64_t* count = (int64_t*)callocCheck((size_t)a->n + 1, sizeof(int64_t));
    uint32_t last = 0;
    int li = -1;
    for (size_t i = 0; i < npix; i++) {
        uint32_t v = ids[i];
        if (v == 0) continue;
        if (v != last || li < 0) {
            li = -1;
            for (int s = 0; s < a->n; s++) if (a->seg[s].id == v) { li = s; break; }
            last = v;
            if (li < 0) {
                snprintf(err, errlen, "panoptic PNG '%s' has segment id %u at (x %zu, y %zu), which image id %ld in '%s' does not list",
                         path, v, i % w, i / w, a->image_id, p->json_path);
                free(ids); free(count);
                return NULL;
            }
        }
        count[li]++;
    }
    for (int s = 0; s < a->n; s++)
        if (count[s] == 0) {
            snprintf(err, errlen, "'%s' lists segment id %u for image id %ld, but its PNG '%s' has no pixel of it",
                     p->json_path, a->seg[s].id, a->image_id, path);
            free(ids); free(count);
            return NULL;
        }
    free(count);
    *H = h; *W = w;
    return ids;
}

uint32_t* coco_panoptic_load(const CocoPanoptic* p, const CocoPanopticAnn* a, int expect_H, int expect_W, int* H, int* W) {
    char err[8192];
    uint32_t* ids = coco_panoptic_try_load(p, a, expect_H, expect_W, H, W, err, sizeof(err));
    if (ids == NULL) ttt_die("%s", err);
    return ids;
}

int coco_panoptic_index_map(unsigned char* out, int* classes, const uint32_t* ids, size_t npix,
                            const CocoPanopticAnn* a, char* err, size_t errlen) {
    int n = 0;
    int* index_of = (int*)mallocCheck(((size_t)a->n + 1) * sizeof(int));
    for (int s = 0; s < a->n; s++) {
        const PanSeg* S = &a->seg[s];
        index_of[s] = 255;
        if (S->iscrowd || S->category < 0) continue;   // crowd and ignored: no target, like void
        if (n == PANOPTIC_MAX_TRAIN_SEGMENTS) {
            snprintf(err, errlen, "image id %ld has more than %d segments for training", a->image_id, PANOPTIC_MAX_TRAIN_SEGMENTS);
            free(index_of);
            return -1;
        }
        index_of[s] = n;
        classes[n++] = S->category;
    }
    uint32_t last = 0;
    int li = 255;
    for (size_t i = 0; i < npix; i++) {
        uint32_t v = ids[i];
        if (v == 0) { out[i] = 255; continue; }
        if (v != last) {
            last = v;
            li = 255;
            for (int s = 0; s < a->n; s++) if (a->seg[s].id == v) { li = index_of[s]; break; }
        }
        out[i] = (unsigned char)li;
    }
    free(index_of);
    return n;
}

// ----------------------------------------------------------------------------
// layouts

static int path_is_dir(const char* path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}
static int path_is_file(const char* path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int find_panoptic_layout(const char* image_dir, char* json_path, size_t n1, char* png_dir, size_t n2) {
    char buf[4096];
    snprintf(buf, sizeof(buf), "%s", image_dir);
    size_t len = strlen(buf);
    while (len > 1 && buf[len - 1] == '/') buf[--len] = 0;
    char* slash = strrchr(buf, '/');
    const char* last = slash ? slash + 1 : buf;
    char parent[4096];
    if (slash) { *slash = 0; snprintf(parent, sizeof(parent), "%s", slash == buf ? "/" : buf); }
    else snprintf(parent, sizeof(parent), ".");
    // COCO Videos: ROOT/raw_images/VID -> ROOT/annotations/train/VID.json, ROOT/panoptic_images/VID
    const char* pslash = strrchr(parent, '/');
    const char* pname = pslash ? pslash + 1 : parent;
    if (strcmp(pname, "raw_images") == 0) {
        char root[4096];
        snprintf(root, sizeof(root), "%.*s", pslash ? (int)(pslash - parent) : 1, pslash ? parent : ".");
        char j[9000], d[9000];
        snprintf(j, sizeof(j), "%s/annotations/train/%s.json", root, last);
        snprintf(d, sizeof(d), "%s/panoptic_images/%s", root, last);
        if (path_is_file(j) && path_is_dir(d)) {
            snprintf(json_path, n1, "%s", j);
            snprintf(png_dir, n2, "%s", d);
            return PANOPTIC_LAYOUT_COCO_VIDEOS;
        }
        return 0;
    }
    // COCO 2017: ROOT/SPLIT2017 -> ROOT/annotations/panoptic_SPLIT2017.json with the PNGs in
    // ROOT/panoptic_SPLIT2017 (detectron2) or ROOT/annotations/panoptic_SPLIT2017 (the zip)
    char j[9000], d[9000];
    snprintf(j, sizeof(j), "%s/annotations/panoptic_%s.json", parent, last);
    if (!path_is_file(j)) return 0;
    snprintf(d, sizeof(d), "%s/panoptic_%s", parent, last);
    if (!path_is_dir(d)) snprintf(d, sizeof(d), "%s/annotations/panoptic_%s", parent, last);
    if (!path_is_dir(d)) return 0;
    snprintf(json_path, n1, "%s", j);
    snprintf(png_dir, n2, "%s", d);
    return PANOPTIC_LAYOUT_COCO;
}

// ----------------------------------------------------------------------------
// writing: PNG of ids, the panoptic JSON, the instance results JSON

void panoptic_png_save(const char* path, const uint32_t* ids, int H, int W) {
    size_t npix = (size_t)H * W;
    unsigned char* px = (unsigned char*)mallocCheck(npix * 3);
    for (size_t i = 0; i < npix; i++) {   // id2rgb
        px[3 * i] = (unsigned char)(ids[i] & 255);
        px[3 * i + 1] = (unsigned char)((ids[i] >> 8) & 255);
        px[3 * i + 2] = (unsigned char)((ids[i] >> 16) & 255);
    }
    png_write_atomic(path, px, H, W, 3);
    free(px);
}

void json_write_string(FILE* fp, const char* s) {
    fputc('"', fp);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(fp, "\\%c", c);
        else if (c < 0x20) fprintf(fp, "\\u%04x", c);
        else fputc(c, fp);
    }
    fputc('"', fp);
}

// a FILE on path.tmp; coco_json_close renames it into place
FILE* coco_json_open(const char* path) {
    size_t n = strlen(path) + 8;
    char* tmp = (char*)mallocCheck(n);
    snprintf(tmp, n, "%s.tmp", path);
    FILE* fp = fopen(tmp, "w");
    int e = errno;
    free(tmp);   // before dying: nothing leaks at exit
    if (fp == NULL) ttt_die("cannot write '%s': %s", path, strerror(e));
    return fp;
}

void coco_json_close(FILE* fp, const char* path) {
    size_t n = strlen(path) + 8;
    char* tmp = (char*)mallocCheck(n);
    snprintf(tmp, n, "%s.tmp", path);
    int ok = !ferror(fp);
    ok = (fclose(fp) == 0) && ok;
    int e = 0;
    if (!ok || rename(tmp, path) != 0) { e = errno ? errno : EIO; remove(tmp); }
    free(tmp);   // before dying: nothing leaks at exit
    if (e) ttt_die("cannot write '%s': %s", path, strerror(e));
}

void coco_json_write_categories(FILE* fp, const CocoCategories* c) {
    fprintf(fp, "\"categories\": [");
    for (int i = 0; i < c->n; i++) {
        fprintf(fp, "%s\n  {\"id\": %d, \"name\": ", i ? "," : "", c->id[i]);
        json_write_string(fp, c->name[i]);
        fprintf(fp, ", \"isthing\": %d, \"color\": [%d, %d, %d]}", c->isthing[i],
                c->color[3 * i], c->color[3 * i + 1], c->color[3 * i + 2]);
    }
    fprintf(fp, "]");
}

// ----------------------------------------------------------------------------
// a training set in the COCO panoptic layout

PanopticSet panoptic_set_list(const char* root, const char* split, int check_pngs) {
    PanopticSet s;
    memset(&s, 0, sizeof(s));
    char dir[4096], j[4096], d[4096];
    snprintf(dir, sizeof(dir), "%s/%s2017", root, split);
    if (!path_is_dir(dir)) snprintf(dir, sizeof(dir), "%s/%s", root, split);
    if (!path_is_dir(dir) || find_panoptic_layout(dir, j, sizeof(j), d, sizeof(d)) != PANOPTIC_LAYOUT_COCO)
        ttt_die("no COCO panoptic layout in '%s': expected ROOT/%s2017/ (images), ROOT/annotations/panoptic_%s2017.json "
                "and its PNGs in ROOT/panoptic_%s2017/ or ROOT/annotations/panoptic_%s2017/", root, split, split, split, split);
    s.gt = coco_panoptic_read(j, d);
    if (s.gt.n_images_without_ann > 0)
        ttt_die("'%s': %s has no annotation (%d images in \"images\" have none)", j, s.gt.first_image_without_ann,
                s.gt.n_images_without_ann);
    if (s.gt.n == 0) ttt_die("'%s' has no annotations", j);
    s.image_dir = dup_string(dir);
    s.n = s.gt.n;
    s.images = (char**)callocCheck((size_t)s.n, sizeof(char*));
    s.H = (int*)mallocCheck((size_t)s.n * sizeof(int));
    s.W = (int*)mallocCheck((size_t)s.n * sizeof(int));
    for (int i = 0; i < s.n; i++) {
        const CocoPanopticAnn* a = &s.gt.ann[i];
        char path[8192];
        snprintf(path, sizeof(path), "%s/%s", dir, a->file_name);
        int c;
        if (!stbi_info(path, &s.W[i], &s.H[i], &c))
            ttt_die("cannot read image '%s' (image id %ld in '%s'): %s", path, a->image_id, j,
                    access(path, R_OK) != 0 ? strerror(errno) : stbi_failure_reason());
        if (a->H > 0 && (s.H[i] != a->H || s.W[i] != a->W))
            ttt_die("image '%s' is %dx%d but '%s' says %dx%d (W x H)", path, s.W[i], s.H[i], j, a->W, a->H);
        s.images[i] = dup_string(path);
    }
    if (check_pngs) {   // every PNG decoded once (OpenMP); the first bad one in list order reported
        int first_bad = s.n;
        char* errs = (char*)callocCheck((size_t)s.n, 2048);
        #pragma omp parallel for schedule(dynamic)
        for (int i = 0; i < s.n; i++) {
            int h, w;
            uint32_t* ids = coco_panoptic_try_load(&s.gt, &s.gt.ann[i], s.H[i], s.W[i], &h, &w, errs + (size_t)i * 2048, 2048);
            if (ids) {
                unsigned char* idx = (unsigned char*)mallocCheck((size_t)h * w);
                int cls[PANOPTIC_MAX_TRAIN_SEGMENTS];
                if (coco_panoptic_index_map(idx, cls, ids, (size_t)h * w, &s.gt.ann[i], errs + (size_t)i * 2048, 2048) < 0) {
                    free(ids); ids = NULL;
                }
                free(idx);
            }
            if (ids == NULL) {
                #pragma omp critical
                if (i < first_bad) first_bad = i;
            }
            free(ids);
        }
        if (first_bad < s.n) ttt_die("%s", errs + (size_t)first_bad * 2048);
        free(errs);
    }
    return s;
}

void panoptic_set_free(PanopticSet* s) {
    for (int i = 0; i < s->n; i++) free(s->images[i]);
    free(s->images); free(s->H); free(s->W); free(s->image_dir);
    coco_panoptic_free(&s->gt);
    memset(s, 0, sizeof(*s));
}
