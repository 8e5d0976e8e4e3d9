// dev/gen.c: a seeded synthetic world with exact labels, for training on stills and
// for test-time training on drifting videos.
//
//   ./gen stills OUTDIR --n N --size WxH --seed S
//       OUTDIR/images/000000.png ... (RGB) and OUTDIR/labels/000000.png ... (class ids),
//       same stems; each still is a fresh random scene in the SOURCE appearance
//       (canonical class colours and textures, small random jitter, no drift).
//   ./gen video OUTDIR --frames T --size WxH --seed S [--labels DIR] [--drift D]
//       [--style-drift S] [--look-drift L]
//       [--drift-period P] [--scene-every N] [--speed V] [--fps F] [--shift NAME]
//       [--shift-strength S]
//       OUTDIR/frame000001.png ... and the label maps with the same names in DIR
//       (default OUTDIR_labels). A camera pans smoothly through a scene wider than the
//       frame; objects move on their own and enter and leave the view; the appearance
//       (illumination, colour cast, contrast, blur, noise, class colours and texture
//       scale) drifts along smooth random tracks with keyframes every P frames; every N
//       frames the scene changes (new layout, new appearance anchor). So nearby frames
//       are alike and distant ones are not.
//       --shift adds on every frame a test-time shift the stills never show (fog, night,
//       swap, noise, style; see shift_image below); labels unchanged.
//
// The world is continuous: a pixel (x, y) of an H-pixel-high frame sees world point
// u = cam_u + (x + 0.5) / H * zoom, v = cam_v + (y + 0.5) / H * zoom (v grows
// downward). The class of a pixel is that of the topmost shape covering its centre, so
// labels are exact; the image is the class texture at that point, then the global
// appearance transform, blur and noise (which never touch the labels).
//
// Classes (label value = index): 0 sky, 1 ground, 2 wall, 3 disc, 4 box, 5 triangle,
// 6 pole, 7 ring. Everything is a function of the seed: same arguments, same bytes.
//
// --panoptic writes the same images with panoptic labels in COCO's published layouts instead:
// every object of a thing class (disc, box, triangle, pole, ring) is a segment of its own, each
// stuff class (sky, ground, wall) one segment; category id = class + 1.
//   stills  OUTDIR/SPLIT2017/000000.png, OUTDIR/annotations/panoptic_SPLIT2017.json and the
//           PNGs in OUTDIR/panoptic_SPLIT2017/ (segment id = R + 256 G + 256^2 B), --split SPLIT
//           (default train): what ./train --task panoptic --data OUTDIR reads
//   video   COCO Videos: OUTDIR/raw_images/VID/VID_000001.png ..., the annotated frames (every
//           --annotate-every N-th, default 10, from the first) in OUTDIR/panoptic_images/VID/ and
//           OUTDIR/annotations/train/VID.json (--video-name VID, default video): what
//           ./stream OUTDIR/raw_images/VID --task panoptic|instance --score-every N reads
#include "ttt.h"
#include <errno.h>
#include <sys/stat.h>

#define NUM_CLASSES 8
enum { SKY, GROUND, WALL, DISC, BOX, TRIANGLE, POLE, RING };
static const char* class_names[NUM_CLASSES] = {
    "sky", "ground", "wall", "disc", "box", "triangle", "pole", "ring"};

// ----------------------------------------------------------------------------
// hashing: deterministic per-coordinate randomness (value noise, drift tracks)

static uint32_t hash3(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t h = a * 0x9E3779B1u ^ (b + 0x7F4A7C15u) * 0x85EBCA77u ^ (c + 0x165667B1u) * 0xC2B2AE3Du;
    h ^= h >> 15; h *= 0x2C1B3C6Du;
    h ^= h >> 12; h *= 0x297A2D39u;
    h ^= h >> 15;
    return h;
}
static float hash_unit(uint32_t a, uint32_t b, uint32_t c) { return hash3(a, b, c) / 4294967296.0f; }
static float smoothstep01(float f) { return f * f * (3.0f - 2.0f * f); }
static float mixf(float a, float b, float t) { return a + (b - a) * t; }
static float clampf(float x, float lo, float hi) { return x < lo ? lo : x > hi ? hi : x; }

// bilinear value noise in [0, 1] on the integer lattice, smoothstep-interpolated
static float value_noise(uint32_t seed, float x, float y) {
    float fx = floorf(x), fy = floorf(y);
    int ix = (int)fx, iy = (int)fy;
    float tx = smoothstep01(x - fx), ty = smoothstep01(y - fy);
    float a = hash_unit(seed, (uint32_t)ix, (uint32_t)iy);
    float b = hash_unit(seed, (uint32_t)(ix + 1), (uint32_t)iy);
    float c = hash_unit(seed, (uint32_t)ix, (uint32_t)(iy + 1));
    float d = hash_unit(seed, (uint32_t)(ix + 1), (uint32_t)(iy + 1));
    return mixf(mixf(a, b, tx), mixf(c, d, tx), ty);
}

// two octaves of value noise, in [0, 1]
static float fbm(uint32_t seed, float x, float y) {
    return (2.0f * value_noise(seed, x, y) + value_noise(seed + 1, 2.03f * x, 2.03f * y)) / 3.0f;
}

// a smooth random track in [-1, 1]: random values at keyframes every `period` frames,
// smoothstep-interpolated between them. `key` names the quantity. The keyframe at
// t = 0 is 0, so a video starts in the source appearance and drifts away from it.
static float keyframe(uint32_t seed, uint32_t key, int k) {
    return k == 0 ? 0.0f : 2.0f * hash_unit(seed, key, (uint32_t)k) - 1.0f;
}
static float track(uint32_t seed, uint32_t key, float t, float period) {
    float s = t / period, fs = floorf(s);
    int k = (int)fs;
    return mixf(keyframe(seed, key, k), keyframe(seed, key, k + 1), smoothstep01(s - fs));
}

// ----------------------------------------------------------------------------
// appearance of the classes

enum { PAT_NOISE, PAT_STRIPES, PAT_CHECKER, PAT_DOTS };

typedef struct {
    float base[3], alt[3];  // the texture blends these two colours
    int pattern;            // PAT_*
    float freq;             // pattern cycles per world unit (background) or per object radius
    float angle;            // stripe orientation (radians)
} ClassStyle;

// the SOURCE distribution's canonical appearance of each class
static const ClassStyle source_style[NUM_CLASSES] = {
    {{0.55f, 0.72f, 0.95f}, {0.95f, 0.97f, 1.00f}, PAT_NOISE,   2.5f, 0.0f},   // sky: clouds
    {{0.33f, 0.52f, 0.22f}, {0.50f, 0.38f, 0.20f}, PAT_NOISE,   9.0f, 0.0f},   // ground: grass/soil
    {{0.68f, 0.40f, 0.30f}, {0.85f, 0.80f, 0.72f}, PAT_CHECKER, 9.0f, 0.0f},   // wall: bricks
    {{0.90f, 0.18f, 0.15f}, {1.00f, 0.62f, 0.20f}, PAT_STRIPES, 2.0f, 0.8f},   // disc
    {{0.22f, 0.30f, 0.80f}, {0.10f, 0.12f, 0.35f}, PAT_CHECKER, 2.0f, 0.0f},   // box
    {{0.95f, 0.85f, 0.20f}, {0.60f, 0.48f, 0.08f}, PAT_NOISE,   3.0f, 0.0f},   // triangle
    {{0.95f, 0.95f, 0.95f}, {0.85f, 0.10f, 0.10f}, PAT_STRIPES, 3.0f, 1.5708f},// pole: barber stripes
    {{0.58f, 0.20f, 0.70f}, {0.30f, 0.88f, 0.80f}, PAT_DOTS,    3.0f, 0.0f},   // ring
};

// pattern value in [0, 1] at texture coordinates (s, t)
static float pattern_value(const ClassStyle* st, uint32_t seed, float s, float t) {
    float x = s * st->freq, y = t * st->freq;
    switch (st->pattern) {
    case PAT_STRIPES: {
        float r = x * cosf(st->angle) + y * sinf(st->angle);
        return 0.5f + 0.5f * sinf(6.2831853f * r);
    }
    case PAT_CHECKER: {  // brick-like: every other row shifted by half a cell
        int row = (int)floorf(y);
        int col = (int)floorf(x + 0.5f * (row & 1));
        float edge = fminf(fabsf(y - floorf(y) - 0.5f), 0.5f);  // mortar lines
        return ((row + col) & 1) ? 0.85f - 0.5f * (edge > 0.42f) : 0.15f;
    }
    case PAT_DOTS: {
        float dx = x - floorf(x) - 0.5f, dy = y - floorf(y) - 0.5f;
        return dx * dx + dy * dy < 0.09f ? 1.0f : 0.0f;
    }
    default:
        return fbm(seed, x, y);
    }
}

// ----------------------------------------------------------------------------
// scenes

#define MAX_OBJECTS 256
#define MAX_WALLS 64

typedef struct {
    int cls;
    float u, v;      // centre at scene frame 0 (world units)
    float vel;       // own horizontal speed (world units per frame)
    float r;         // size (radius-like)
    float aspect;    // width / height for boxes
    float angle;     // rotation for boxes
    float shade;     // brightness factor of this instance
} Object;

typedef struct {
    float width;                                   // world extent in u
    float horizon, hor_amp, hor_freq, hor_phase;   // ground starts at v > horizon(u)
    int n_walls;
    float wall_u0[MAX_WALLS], wall_u1[MAX_WALLS], wall_top[MAX_WALLS];
    int n_objects;
    Object obj[MAX_OBJECTS];
    ClassStyle style[NUM_CLASSES];
    uint32_t noise_seed;
} Scene;

// lay out a random scene `width` world units wide. Styles start at the source style.
static void scene_make(Scene* sc, Rng* rng, float width) {
    sc->width = width;
    sc->horizon = 0.38f + 0.16f * rng_uniform(rng);
    sc->hor_amp = 0.02f + 0.05f * rng_uniform(rng);
    sc->hor_freq = 0.8f + 1.5f * rng_uniform(rng);
    sc->hor_phase = 6.2831853f * rng_uniform(rng);
    sc->noise_seed = rng_u32(rng);
    memcpy(sc->style, source_style, sizeof(source_style));
    // walls: buildings standing on the horizon
    sc->n_walls = 0;
    float u = -0.5f + 0.8f * rng_uniform(rng);
    while (u < width + 0.5f && sc->n_walls < MAX_WALLS) {
        float w = 0.25f + 0.9f * rng_uniform(rng);
        int i = sc->n_walls++;
        sc->wall_u0[i] = u;
        sc->wall_u1[i] = u + w;
        sc->wall_top[i] = 0.06f + (sc->horizon - 0.16f) * rng_uniform(rng);
        u += w + 0.2f + 1.2f * rng_uniform(rng);
    }
    // objects: about 5 per world unit of width; a third of them move on their own
    sc->n_objects = 0;
    int n = (int)(5.0f * (width + 1.0f)) + rng_int(rng, 3);
    if (n > MAX_OBJECTS) n = MAX_OBJECTS;
    for (int i = 0; i < n; i++) {
        Object* o = &sc->obj[sc->n_objects++];
        o->cls = DISC + rng_int(rng, NUM_CLASSES - DISC);
        o->u = -0.5f + (width + 1.0f) * rng_uniform(rng);
        o->r = 0.06f + 0.14f * rng_uniform(rng);
        o->v = (o->cls == DISC && rng_uniform(rng) < 0.4f)
             ? 0.08f + 0.35f * rng_uniform(rng)                        // a balloon in the sky
             : sc->horizon - 0.05f + (1.0f - sc->horizon) * rng_uniform(rng);
        o->vel = rng_uniform(rng) < 0.33f ? 0.012f * (2.0f * rng_uniform(rng) - 1.0f) : 0.0f;
        o->aspect = 0.6f + 1.0f * rng_uniform(rng);
        o->angle = 0.5f * (rng_uniform(rng) - 0.5f);
        o->shade = 0.8f + 0.4f * rng_uniform(rng);
        if (o->cls == POLE) o->v = sc->horizon + (1.0f - sc->horizon) * rng_uniform(rng) - o->r;
    }
}

static float horizon_at(const Scene* sc, float u) {
    return sc->horizon + sc->hor_amp * sinf(sc->hor_freq * u + sc->hor_phase);
}

// does object o (at scene frame j) cover world point (u, v)? If so set texture coords
// (s, t) in units of the object's size and return 1.
static int object_covers(const Object* o, float j, float u, float v, float* s, float* t) {
    float du = (u - (o->u + o->vel * j)) / o->r, dv = (v - o->v) / o->r;
    switch (o->cls) {
    case DISC:
        if (du * du + dv * dv > 1.0f) return 0;
        break;
    case RING: {
        float d2 = du * du + dv * dv;
        if (d2 > 1.0f || d2 < 0.3f) return 0;
        break;
    }
    case BOX: {
        float c = cosf(o->angle), sn = sinf(o->angle);
        float x = c * du + sn * dv, y = -sn * du + c * dv;
        if (fabsf(x) > o->aspect || fabsf(y) > 1.0f) return 0;
        du = x; dv = y;
        break;
    }
    case TRIANGLE:  // apex up at dv = -1, base at dv = +1
        if (dv < -1.0f || dv > 1.0f || fabsf(du) > 0.5f * (dv + 1.0f)) return 0;
        break;
    case POLE:      // thin, tall: from dv = -3 to +1
        if (fabsf(du) > 0.25f || dv < -3.0f || dv > 1.0f) return 0;
        break;
    }
    *s = du; *t = dv;
    return 1;
}

// class id at world point (u, v) at scene frame j; texture coords into (s, t), and a
// shading factor into *shade; the object's index into *obj (-1 for the background)
static int scene_classify(const Scene* sc, float j, float u, float v, float* s, float* t, float* shade, int* obj) {
    for (int i = sc->n_objects - 1; i >= 0; i--) {   // later objects are drawn on top
        if (object_covers(&sc->obj[i], j, u, v, s, t)) {
            *shade = sc->obj[i].shade * (1.1f - 0.2f * (*t + 1.0f) * 0.5f);  // lit from above
            *obj = i;
            return sc->obj[i].cls;
        }
    }
    *obj = -1;
    *s = u; *t = v;
    float hz = horizon_at(sc, u);
    if (v > hz) { *shade = 0.85f + 0.3f * (v - hz); return GROUND; }
    for (int i = 0; i < sc->n_walls; i++) {
        if (u >= sc->wall_u0[i] && u < sc->wall_u1[i] && v >= sc->wall_top[i]) {
            *shade = 0.9f + 0.2f * ((i & 1) ? 1.0f : 0.0f);
            return WALL;
        }
    }
    *shade = 1.0f - 0.3f * (hz - v);
    return SKY;
}

// ----------------------------------------------------------------------------
// rendering

typedef struct {
    float gain;         // illumination
    float cast[3];      // per-channel colour cast
    float contrast;     // around 0.5
    float blur;         // gaussian sigma in pixels (0 = none)
    float noise;        // std of additive pixel noise
} Look;

typedef struct { float cam_u, cam_v, zoom; } Camera;

// render image (H, W, 3) and labels (H, W) of scene at frame j through camera and look;
// `noise_rng` draws the pixel noise; inst (H, W) (may be NULL) gets each pixel's object index,
// -1 on the background
static void render(const Scene* sc, float j, const Camera* cam, const Look* look,
                   float* img, unsigned char* lab, int* inst, float* tmp, int H, int W, Rng* noise_rng) {
    for (int y = 0; y < H; y++) {
        for (int x = 0; x < W; x++) {
            float u = cam->cam_u + (x + 0.5f) / H * cam->zoom;
            float v = cam->cam_v + (y + 0.5f) / H * cam->zoom;
            float s, t, shade;
            int obj;
            int cls = scene_classify(sc, j, u, v, &s, &t, &shade, &obj);
            if (inst) inst[y * W + x] = obj;
            const ClassStyle* st = &sc->style[cls];
            float p = pattern_value(st, sc->noise_seed + 17u * cls, s, t);
            float grain = fbm(sc->noise_seed + 101u, 40.0f * s, 40.0f * t) - 0.5f;  // fine texture
            lab[y * W + x] = (unsigned char)cls;
            for (int c = 0; c < 3; c++) {
                float col = mixf(st->base[c], st->alt[c], p) * shade + 0.08f * grain;
                col = ((col - 0.5f) * look->contrast + 0.5f) * look->gain * look->cast[c];
                img[(y * W + x) * 3 + c] = col;
            }
        }
    }
    if (look->blur > 0.05f) {  // separable gaussian, edges clamped
        int rad = (int)ceilf(2.5f * look->blur);
        float kern[64];
        if (rad > 31) rad = 31;
        float ksum = 0.0f;
        for (int i = -rad; i <= rad; i++) ksum += kern[i + rad] = expf(-0.5f * i * i / (look->blur * look->blur));
        for (int i = 0; i <= 2 * rad; i++) kern[i] /= ksum;
        for (int y = 0; y < H; y++) for (int x = 0; x < W; x++) for (int c = 0; c < 3; c++) {
            float acc = 0.0f;
            for (int i = -rad; i <= rad; i++) {
                int xx = x + i < 0 ? 0 : x + i >= W ? W - 1 : x + i;
                acc += kern[i + rad] * img[(y * W + xx) * 3 + c];
            }
            tmp[(y * W + x) * 3 + c] = acc;
        }
        for (int y = 0; y < H; y++) for (int x = 0; x < W; x++) for (int c = 0; c < 3; c++) {
            float acc = 0.0f;
            for (int i = -rad; i <= rad; i++) {
                int yy = y + i < 0 ? 0 : y + i >= H ? H - 1 : y + i;
                acc += kern[i + rad] * tmp[(yy * W + x) * 3 + c];
            }
            img[(y * W + x) * 3 + c] = acc;
        }
    }
    for (size_t i = 0; i < (size_t)H * W * 3; i++)
        img[i] = clampf(img[i] + look->noise * rng_normal(noise_rng), 0.0f, 1.0f);
}

// ----------------------------------------------------------------------------
// --shift: a test-time shift outside what the source stills vary
//
// The stills jitter class colours (+-0.08), texture scale (x0.8..1.25), illumination
// (x0.85..1.15), contrast (x0.9..1.1) and blur (sigma < 0.5) with noise 0.02; a video's
// drift moves the same knobs further (about twice as far). A shift changes the image in a
// way neither does, on every frame of the video, with strength S (1 = the full shift):
//   fog    x <- (1 - a) x + a haze, a = 0.55 S, haze (0.78, 0.80, 0.84): washed out
//   night  x <- x * (1 - 0.72 S) * (1, 1 + 0.15 S, 1 + 0.6 S) + noise of std 0.05 S: dark, blue, grainy
//   swap   x <- (1 - S) x + S (B, R, G): the colour channels rotated
//   noise  x <- x + noise of std 0.15 S: heavy sensor noise
//   style  every class's texture pattern replaced by the next kind (noise -> stripes ->
//          checker -> dots -> noise), its two colours exchanged, frequency x (1 + 1.5 S)
// Pixels are clamped to [0, 1] afterwards. Only the image changes: labels never do.

enum { SHIFT_NONE, SHIFT_FOG, SHIFT_NIGHT, SHIFT_SWAP, SHIFT_NOISE, SHIFT_STYLE, NUM_SHIFTS };
static const char* shift_names[NUM_SHIFTS] = {"none", "fog", "night", "swap", "noise", "style"};

// the style shift, on the styles of the frame about to be rendered
static void shift_style(Scene* sc, float strength) {
    for (int c = 0; c < NUM_CLASSES; c++) {
        ClassStyle* st = &sc->style[c];
        st->pattern = (source_style[c].pattern + 1) % 4;   // the drift redoes colours and scale, not this
        for (int ch = 0; ch < 3; ch++) { float t = st->base[ch]; st->base[ch] = st->alt[ch]; st->alt[ch] = t; }
        st->freq *= 1.0f + 1.5f * strength;
    }
}

// the image shifts, on a rendered image (H, W, 3) in [0, 1]; rng draws the added noise
static void shift_image(float* img, int H, int W, int shift, float strength, Rng* rng) {
    size_t n = (size_t)H * W;
    const float haze[3] = {0.78f, 0.80f, 0.84f};
    for (size_t i = 0; i < n; i++) {
        float* px = img + 3 * i;
        float in[3] = {px[0], px[1], px[2]};
        for (int c = 0; c < 3; c++) {
            float x = in[c];
            switch (shift) {
            case SHIFT_FOG: { float a = 0.55f * strength; x = (1.0f - a) * x + a * haze[c]; break; }
            case SHIFT_NIGHT: {
                const float tint[3] = {0.0f, 0.15f, 0.6f};
                x = x * (1.0f - 0.72f * strength) * (1.0f + tint[c] * strength) + 0.05f * strength * rng_normal(rng);
                break;
            }
            case SHIFT_SWAP: x = (1.0f - strength) * x + strength * in[(c + 2) % 3]; break;
            case SHIFT_NOISE: x += 0.15f * strength * rng_normal(rng); break;
            }
            px[c] = clampf(x, 0.0f, 1.0f);
        }
    }
}

// ----------------------------------------------------------------------------
// output

// mkdir -p: create path and any missing parents
static void make_dir(const char* path) {
    char buf[4096];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char* p = buf + 1; ; p++) {
        if (*p == '/' || *p == 0) {
            char saved = *p;
            *p = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                ttt_die("cannot create directory '%s': %s", buf, strerror(errno));
            *p = saved;
            if (saved == 0) break;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) ttt_die("'%s' exists and is not a directory", path);
}

// ----------------------------------------------------------------------------
// --panoptic: segment ids, the PNG and the JSON entries of one image

static int is_thing_class(int c) { return c >= DISC; }

// segment ids (H, W) of a rendered image: stuff class c -> c + 1; object i of a thing class c
// -> (c + 1) * 65536 + i + 1 (R + 256 G + 256^2 B in the PNG)
static void segment_ids(uint32_t* ids, const unsigned char* lab, const int* inst, int H, int W) {
    for (int i = 0; i < H * W; i++)
        ids[i] = inst[i] >= 0 && is_thing_class(lab[i]) ? (uint32_t)(lab[i] + 1) * 65536u + (uint32_t)inst[i] + 1u
                                                         : (uint32_t)lab[i] + 1u;
}

// the "segments_info" of an id map, appended to fp as JSON
static void write_segments_info(FILE* fp, const uint32_t* ids, int H, int W) {
    // the distinct ids in order of first appearance (few per image)
    int cap = 64, n = 0;
    uint32_t* seen = (uint32_t*)mallocCheck(cap * sizeof(uint32_t));
    long long* stats = NULL;   // per segment: area, x0, y0, x1, y1
    for (int i = 0; i < H * W; i++) {
        int k = 0;
        while (k < n && seen[k] != ids[i]) k++;
        if (k == n) {
            if (n == cap) { cap *= 2; seen = (uint32_t*)realloc(seen, cap * sizeof(uint32_t)); if (!seen) ttt_die("out of memory"); }
            seen[n++] = ids[i];
        }
    }
    stats = (long long*)mallocCheck((size_t)n * 5 * sizeof(long long));
    for (int k = 0; k < n; k++) { stats[5 * k] = 0; stats[5 * k + 1] = W; stats[5 * k + 2] = H; stats[5 * k + 3] = -1; stats[5 * k + 4] = -1; }
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int k = 0;
            while (seen[k] != ids[y * W + x]) k++;
            long long* st = stats + 5 * k;
            st[0]++;
            if (x < st[1]) st[1] = x;
            if (y < st[2]) st[2] = y;
            if (x > st[3]) st[3] = x;
            if (y > st[4]) st[4] = y;
        }
    for (int k = 0; k < n; k++) {
        const long long* st = stats + 5 * k;
        int cat = seen[k] >= 65536u ? (int)(seen[k] / 65536u) : (int)seen[k];
        fprintf(fp, "%s{\"id\": %u, \"category_id\": %d, \"iscrowd\": 0, \"area\": %lld, \"bbox\": [%lld, %lld, %lld, %lld]}",
                k ? ", " : "", seen[k], cat, st[0], st[1], st[2], st[3] - st[1] + 1, st[4] - st[2] + 1);
    }
    free(seen); free(stats);
}

static void write_categories(FILE* fp) {
    fprintf(fp, "\"categories\": [");
    for (int c = 0; c < NUM_CLASSES; c++)
        fprintf(fp, "%s\n  {\"id\": %d, \"name\": \"%s\", \"isthing\": %d, \"supercategory\": \"%s\", \"color\": [%d, %d, %d]}",
                c ? "," : "", c + 1, class_names[c], is_thing_class(c), is_thing_class(c) ? "object" : "background",
                (int)(source_style[c].base[0] * 255.0f), (int)(source_style[c].base[1] * 255.0f), (int)(source_style[c].base[2] * 255.0f));
    fprintf(fp, "]");
}

static void usage(void) {
    FILE* fp = stdout;
    fprintf(fp,
        "usage: ./gen stills OUTDIR [--n N] [--size WxH] [--seed S]\n"
        "       ./gen video OUTDIR [--frames T] [--size WxH] [--seed S] [--labels DIR]\n"
        "                 [--drift D] [--style-drift S] [--look-drift L] [--drift-period P]\n"
        "                 [--scene-every N] [--speed V] [--fps F] [--shift NAME] [--shift-strength S]\n"
        "\n"
        "A seeded synthetic world with %d classes (label value = index):", NUM_CLASSES);
    for (int c = 0; c < NUM_CLASSES; c++) fprintf(fp, " %d %s%s", c, class_names[c], c + 1 < NUM_CLASSES ? "," : "\n");
    fprintf(fp,
        "Same arguments give the same bytes.\n"
        "\n"
        "stills: N independent scenes in the source appearance, written as\n"
        "        OUTDIR/images/000000.png (RGB) and OUTDIR/labels/000000.png (class ids).\n"
        "  --n N             number of images (default 100)\n"
        "video:  a camera panning through a wide scene with drifting appearance, written as\n"
        "        OUTDIR/frame000001.png ... and labels with the same names in the labels dir.\n"
        "  --frames T        number of frames (default 300)\n"
        "  --labels DIR      where label maps go (default OUTDIR_labels)\n"
        "  --drift D         strength of the appearance drift, 0 = none (default 1)\n"
        "  --style-drift S   strength of the class-colour and texture-scale part only: what\n"
        "                    tells the classes apart moves (default: D)\n"
        "  --look-drift L    strength of the nuisance part only: illumination, colour cast,\n"
        "                    contrast, blur, noise (default: D)\n"
        "  --drift-period P  frames between drift keyframes (default 60)\n"
        "  --scene-every N   a new scene every N frames (default 300)\n"
        "  --speed V         camera pan in frame heights per frame at 30 fps (default 0.01)\n"
        "  --fps F           frame rate (default 30): the same world and motion sampled F/30\n"
        "                    times as densely; --drift-period, --scene-every and --speed are\n"
        "                    given in frames at 30 fps\n"
        "  --shift NAME      a test-time shift outside what the stills vary, on every frame\n"
        "                    (labels unchanged): none (default), fog (washed-out haze), night\n"
        "                    (dark, blue, grainy), swap (colour channels rotated), noise (heavy\n"
        "                    sensor noise), style (unseen textures: other patterns, colours\n"
        "                    exchanged, finer)\n"
        "  --shift-strength S  strength of the shift, 1 = full (default 1)\n"
        "  --video-name VID  with --panoptic: the video's name (default video)\n"
        "  --annotate-every N  with --panoptic: annotate frames 1, 1+N, 1+2N, ... (default 10, as COCO\n"
        "                    Videos; ./stream --score-every N scores exactly those)\n"
        "both:\n"
        "  --panoptic        panoptic labels in COCO's layouts instead of class-id maps: stills as\n"
        "                    OUTDIR/SPLIT2017/ + OUTDIR/annotations/panoptic_SPLIT2017.json + OUTDIR/\n"
        "                    panoptic_SPLIT2017/; a video as COCO Videos: OUTDIR/raw_images/VID/,\n"
        "                    OUTDIR/panoptic_images/VID/, OUTDIR/annotations/train/VID.json. Things\n"
        "                    (disc, box, triangle, pole, ring) one segment per object, stuff one per\n"
        "                    class; category id = class + 1\n"
        "  --split S         with --panoptic, stills: the split name (default train)\n"
        "  --size WxH        frame size in pixels (default 128x96)\n"
        "  --seed S          random seed (default 1)\n");
}

// ----------------------------------------------------------------------------

int main(int argc, char** argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) { usage(); return 0; }
    }
    if (argc < 3) ttt_die("expected a mode (stills or video) and an output directory (./gen --help for usage)");
    const char* mode = argv[1];
    const char* outdir = argv[2];
    int is_video = strcmp(mode, "video") == 0;
    if (!is_video && strcmp(mode, "stills") != 0) ttt_die("unknown mode '%s' (use stills or video; --help for usage)", mode);
    if (outdir[0] == '-') ttt_die("expected an output directory after '%s', got option '%s'", mode, outdir);

    int n = 100, frames = 300, W = 128, H = 96, scene_every = 300;
    uint64_t seed = 1;
    float drift = 1.0f, drift_period = 60.0f, speed = 0.01f, fps = 30.0f, shift_strength = 1.0f;
    float style_drift = -1.0f, look_drift = -1.0f;   // < 0: the value of --drift
    int shift = SHIFT_NONE;
    char labels_dir[4096] = {0};
    int panoptic = 0, annotate_every = 10;
    const char* split = "train";
    const char* video_name = "video";
    for (int i = 3; i < argc; i++) {
        const char* a = argv[i];
        if (strcmp(a, "--panoptic") == 0) { panoptic = 1; continue; }
        if (i + 1 >= argc) ttt_die("option '%s' needs a value (--help for usage)", a);
        const char* val = argv[++i];
        if (strcmp(a, "--n") == 0 && !is_video) n = parse_int_arg(a, val, 1);
        else if (strcmp(a, "--frames") == 0 && is_video) frames = parse_int_arg(a, val, 1);
        else if (strcmp(a, "--size") == 0) {
            if (sscanf(val, "%dx%d", &W, &H) != 2 || W < 8 || H < 8 || W > 8192 || H > 8192)
                ttt_die("--size: expected WxH with 8 <= W, H <= 8192, got '%s'", val);
        }
        else if (strcmp(a, "--seed") == 0) seed = (uint64_t)parse_int_arg(a, val, 0);
        else if (strcmp(a, "--labels") == 0 && is_video) snprintf(labels_dir, sizeof(labels_dir), "%s", val);
        else if (strcmp(a, "--drift") == 0 && is_video) drift = parse_float_arg(a, val, 0.0f);
        else if (strcmp(a, "--style-drift") == 0 && is_video) style_drift = parse_float_arg(a, val, 0.0f);
        else if (strcmp(a, "--look-drift") == 0 && is_video) look_drift = parse_float_arg(a, val, 0.0f);
        else if (strcmp(a, "--drift-period") == 0 && is_video) drift_period = parse_float_arg(a, val, 1.0f);
        else if (strcmp(a, "--scene-every") == 0 && is_video) scene_every = parse_int_arg(a, val, 1);
        else if (strcmp(a, "--speed") == 0 && is_video) speed = parse_float_arg(a, val, 0.0f);
        else if (strcmp(a, "--fps") == 0 && is_video) { fps = parse_float_arg(a, val, 0.0f); if (fps <= 0.0f) ttt_die("--fps must be > 0"); }
        else if (strcmp(a, "--shift") == 0 && is_video) {
            shift = -1;
            for (int k = 0; k < NUM_SHIFTS; k++) if (strcmp(val, shift_names[k]) == 0) shift = k;
            if (shift < 0) ttt_die("--shift: unknown shift '%s' (none, fog, night, swap, noise, style)", val);
        }
        else if (strcmp(a, "--shift-strength") == 0 && is_video) shift_strength = parse_float_arg(a, val, 0.0f);
        else if (strcmp(a, "--split") == 0 && !is_video) split = val;
        else if (strcmp(a, "--video-name") == 0 && is_video) video_name = val;
        else if (strcmp(a, "--annotate-every") == 0 && is_video) annotate_every = parse_int_arg(a, val, 1);
        else ttt_die("unknown option '%s' for mode %s (--help for usage)", a, mode);
    }

    if (!panoptic && (strcmp(split, "train") != 0 || strcmp(video_name, "video") != 0 || annotate_every != 10))
        ttt_die("--split, --video-name and --annotate-every need --panoptic");
    if (panoptic && labels_dir[0]) ttt_die("--labels is for class-id maps; --panoptic writes COCO's layout");
    for (const char* c = panoptic ? video_name : ""; *c; c++)
        if (*c == '/' || *c == ' ') ttt_die("--video-name: '%s' must be a plain name", video_name);
    if (style_drift < 0.0f) style_drift = drift;
    if (look_drift < 0.0f) look_drift = drift;
    float* img = (float*)mallocCheck((size_t)H * W * 3 * sizeof(float));
    float* tmp = (float*)mallocCheck((size_t)H * W * 3 * sizeof(float));
    unsigned char* lab = (unsigned char*)mallocCheck((size_t)H * W);
    int* inst = panoptic ? (int*)mallocCheck((size_t)H * W * sizeof(int)) : NULL;
    uint32_t* ids = panoptic ? (uint32_t*)mallocCheck((size_t)H * W * sizeof(uint32_t)) : NULL;
    FILE* json = NULL;
    char json_path[8192] = "";
    int n_ann = 0;
    Scene* sc = (Scene*)mallocCheck(sizeof(Scene));
    char path[8192];
    float aspect = (float)W / H;
    make_dir(outdir);

    if (!is_video) {
        // stills: each image its own scene, source appearance with small jitter
        if (panoptic) {
            snprintf(path, sizeof(path), "%s/%s2017", outdir, split); make_dir(path);
            snprintf(path, sizeof(path), "%s/panoptic_%s2017", outdir, split); make_dir(path);
            snprintf(path, sizeof(path), "%s/annotations", outdir); make_dir(path);
            snprintf(json_path, sizeof(json_path), "%s/annotations/panoptic_%s2017.json", outdir, split);
            json = coco_json_open(json_path);
            fprintf(json, "{\"info\": {\"description\": \"ttt synthetic world (dev/gen.c)\"},\n\"images\": [");
            for (int k = 0; k < n; k++)
                fprintf(json, "%s\n  {\"id\": %d, \"file_name\": \"%06d.png\", \"height\": %d, \"width\": %d}", k ? "," : "", k + 1, k, H, W);
            fprintf(json, "],\n\"annotations\": [");
        } else {
            snprintf(path, sizeof(path), "%s/images", outdir); make_dir(path);
            snprintf(path, sizeof(path), "%s/labels", outdir); make_dir(path);
        }
        for (int k = 0; k < n; k++) {
            Rng rng;
            rng_seed(&rng, seed * 1000003ULL + (uint64_t)k);
            Camera cam = {0.0f, 0.0f, 0.8f + 0.4f * rng_uniform(&rng)};
            scene_make(sc, &rng, aspect * cam.zoom);
            for (int c = 0; c < NUM_CLASSES; c++) {
                ClassStyle* st = &sc->style[c];
                for (int ch = 0; ch < 3; ch++) {
                    st->base[ch] = clampf(st->base[ch] + 0.08f * (2.0f * rng_uniform(&rng) - 1.0f), 0.0f, 1.0f);
                    st->alt[ch] = clampf(st->alt[ch] + 0.08f * (2.0f * rng_uniform(&rng) - 1.0f), 0.0f, 1.0f);
                }
                st->freq *= 0.8f + 0.45f * rng_uniform(&rng);
            }
            Look look = {0.85f + 0.3f * rng_uniform(&rng), {1.0f, 1.0f, 1.0f},
                         0.9f + 0.2f * rng_uniform(&rng), 0.5f * rng_uniform(&rng), 0.02f};
            render(sc, 0.0f, &cam, &look, img, lab, inst, tmp, H, W, &rng);
            if (panoptic) {
                snprintf(path, sizeof(path), "%s/%s2017/%06d.png", outdir, split, k);
                image_save_png(path, img, H, W);
                segment_ids(ids, lab, inst, H, W);
                snprintf(path, sizeof(path), "%s/panoptic_%s2017/%06d.png", outdir, split, k);
                panoptic_png_save(path, ids, H, W);
                fprintf(json, "%s\n  {\"image_id\": %d, \"file_name\": \"%06d.png\", \"segments_info\": [", k ? "," : "", k + 1, k);
                write_segments_info(json, ids, H, W);
                fprintf(json, "]}");
                continue;
            }
            snprintf(path, sizeof(path), "%s/images/%06d.png", outdir, k);
            image_save_png(path, img, H, W);
            snprintf(path, sizeof(path), "%s/labels/%06d.png", outdir, k);
            label_save_png(path, lab, H, W);
        }
        if (panoptic) {
            fprintf(json, "],\n");
            write_categories(json);
            fprintf(json, "}\n");
            coco_json_close(json, json_path);
            printf("gen: wrote %d stills (%dx%d) to %s/%s2017 with panoptic labels in %s and %s/panoptic_%s2017\n",
                   n, W, H, outdir, split, json_path, outdir, split);
        } else {
            printf("gen: wrote %d stills (%dx%d) to %s/images and %s/labels\n", n, W, H, outdir, outdir);
        }
    } else {
        if (panoptic) {   // COCO Videos: OUTDIR is the dataset root
            char frames_dir[8192];
            snprintf(frames_dir, sizeof(frames_dir), "%s/raw_images/%s", outdir, video_name); make_dir(frames_dir);
            snprintf(path, sizeof(path), "%s/panoptic_images/%s", outdir, video_name); make_dir(path);
            snprintf(path, sizeof(path), "%s/annotations/train", outdir); make_dir(path);
            snprintf(json_path, sizeof(json_path), "%s/annotations/train/%s.json", outdir, video_name);
            json = coco_json_open(json_path);
            fprintf(json, "{\"info\": {\"description\": \"ttt synthetic world (dev/gen.c), video %s\"},\n\"images\": [", video_name);
            for (int t = 0, k = 0; t < frames; t += annotate_every, k++)
                fprintf(json, "%s\n  {\"id\": %d, \"file_name\": \"%s_%06d.png\", \"height\": %d, \"width\": %d}", k ? "," : "",
                        t + 1, video_name, t + 1, H, W);
            fprintf(json, "],\n\"annotations\": [");
        } else {
            if (labels_dir[0] == 0) {
                size_t len = strlen(outdir);
                while (len > 1 && outdir[len - 1] == '/') len--;
                snprintf(labels_dir, sizeof(labels_dir), "%.*s_labels", (int)len, outdir);
            }
            make_dir(labels_dir);
        }
        uint32_t dseed = (uint32_t)hash3((uint32_t)seed, (uint32_t)(seed >> 32), 0xD21F7u);
        int scene_index = -1;
        float anchor[NUM_CLASSES][3];   // per-scene offset of the class colours
        for (int t = 0; t < frames; t++) {
            // time in 30 fps reference frames: --fps samples the same motion more densely
            double time = (double)t * 30.0 / fps;
            int si = (int)floor(time / scene_every);
            float j = (float)(time - (double)si * scene_every);   // time within the scene
            if (si != scene_index) {
                scene_index = si;
                Rng rng;
                rng_seed(&rng, seed * 7919ULL + (uint64_t)si * 104729ULL + 1);
                // wide enough for the whole pan, plus the view and a margin
                scene_make(sc, &rng, aspect * 1.3f + speed * scene_every + 1.0f);
                for (int c = 0; c < NUM_CLASSES; c++)
                    for (int ch = 0; ch < 3; ch++)
                        anchor[c][ch] = (si == 0 ? 0.0f : 0.12f * style_drift) * (2.0f * rng_uniform(&rng) - 1.0f);
            }
            // appearance drift: smooth tracks in [-1, 1] with keyframes every drift_period
            float tt = (float)time;
            for (int c = 0; c < NUM_CLASSES; c++) {
                ClassStyle* st = &sc->style[c];
                const ClassStyle* src = &source_style[c];
                for (int ch = 0; ch < 3; ch++) {
                    float off = anchor[c][ch] + 0.12f * style_drift * track(dseed, 100u + 8u * c + ch, tt, drift_period);
                    st->base[ch] = clampf(src->base[ch] + off, 0.0f, 1.0f);
                    st->alt[ch] = clampf(src->alt[ch] + off, 0.0f, 1.0f);
                }
                st->freq = src->freq * expf(0.35f * style_drift * track(dseed, 200u + c, tt, 2.0f * drift_period));
            }
            Look look;
            look.gain = 1.0f + 0.3f * look_drift * track(dseed, 1, tt, drift_period);
            for (int ch = 0; ch < 3; ch++) look.cast[ch] = 1.0f + 0.2f * look_drift * track(dseed, 2 + ch, tt, drift_period);
            look.contrast = 1.0f + 0.3f * look_drift * track(dseed, 5, tt, drift_period);
            look.blur = fmaxf(0.0f, 1.2f * look_drift * track(dseed, 6, tt, drift_period));
            look.noise = 0.015f + 0.03f * look_drift * (0.5f + 0.5f * track(dseed, 7, tt, drift_period));
            // camera: steady pan with gentle vertical bob and zoom breathing
            Camera cam;
            cam.zoom = 1.0f + 0.08f * sinf(0.011f * j);
            cam.cam_u = 0.5f + speed * j;
            cam.cam_v = 0.04f * sinf(0.017f * j) + 0.5f * (1.0f - cam.zoom);
            if (shift == SHIFT_STYLE) shift_style(sc, shift_strength);   // styles are redone every frame
            Rng noise_rng;
            rng_seed(&noise_rng, seed * 31337ULL + (uint64_t)t);
            render(sc, j, &cam, &look, img, lab, inst, tmp, H, W, &noise_rng);
            if (shift != SHIFT_NONE && shift != SHIFT_STYLE) {
                Rng shift_rng;   // its own stream: the frame without the shift is unchanged
                rng_seed(&shift_rng, seed * 2654435761ULL + (uint64_t)t * 40503ULL + 7);
                shift_image(img, H, W, shift, shift_strength, &shift_rng);
            }
            if (panoptic) {
                snprintf(path, sizeof(path), "%s/raw_images/%s/%s_%06d.png", outdir, video_name, video_name, t + 1);
                image_save_png(path, img, H, W);
                if (t % annotate_every != 0) continue;
                segment_ids(ids, lab, inst, H, W);
                snprintf(path, sizeof(path), "%s/panoptic_images/%s/%s_%06d.png", outdir, video_name, video_name, t + 1);
                panoptic_png_save(path, ids, H, W);
                fprintf(json, "%s\n  {\"image_id\": %d, \"file_name\": \"%s_%06d.png\", \"segments_info\": [", n_ann ? "," : "",
                        t + 1, video_name, t + 1);
                write_segments_info(json, ids, H, W);
                fprintf(json, "]}");
                n_ann++;
                continue;
            }
            snprintf(path, sizeof(path), "%s/frame%06d.png", outdir, t + 1);
            image_save_png(path, img, H, W);
            snprintf(path, sizeof(path), "%s/frame%06d.png", labels_dir, t + 1);
            label_save_png(path, lab, H, W);
        }
        if (panoptic) {
            fprintf(json, "],\n");
            write_categories(json);
            fprintf(json, "}\n");
            coco_json_close(json, json_path);
            printf("gen: wrote %d frames (%dx%d) to %s/raw_images/%s, %d annotated (every %d-th) in %s and %s/panoptic_images/%s",
                   frames, W, H, outdir, video_name, n_ann, annotate_every, json_path, outdir, video_name);
        } else {
            printf("gen: wrote %d frames (%dx%d) to %s, labels to %s", frames, W, H, outdir, labels_dir);
        }
        if (shift != SHIFT_NONE) printf(", shift %s at strength %g", shift_names[shift], shift_strength);
        printf("\n");
    }
    free(img); free(tmp); free(lab); free(sc); free(inst); free(ids);
    return 0;
}
