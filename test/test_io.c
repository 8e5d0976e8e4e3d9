// test/test_io.c: image / label / checkpoint round trips, and every bad input ends in
// exit status 1 with one "error:" line on stderr and no file left half-written.
#include "test.h"
#include <sys/wait.h>
#include <unistd.h>
#include "stb_image_write.h"   // declarations only: writes grayscale / RGBA test files

#define TMP "test/tmp"

// run fn(arg) in a child with stderr captured; check it exits 1 with an "error:" line
static void expect_error(const char* what, void (*fn)(const char*), const char* arg) {
    char line[512];
    int status;
    run_path_in_child(fn, arg, line, sizeof(line), &status);   // returning normally (exit 0) fails
    line[strcspn(line, "\n")] = 0;   // its first line
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 1 && strncmp(line, "error:", 6) == 0;
    printf("%-4s bad input: %-36s -> %s\n", ok ? "ok" : "FAIL", what, line);
    if (ok) tests_passed++; else tests_failed++;
}

static void do_image_load(const char* p) { int H, W; image_load(p, &H, &W); }
static void do_label_load_10x8(const char* p) { int H, W; label_load(p, 8, 10, &H, &W); }
static void do_ckpt_header(const char* p) { int h[CKPT_HEADER_INTS]; checkpoint_read_header(p, h); }
static void do_ckpt_data(const char* p) { float d[16]; checkpoint_read_data(p, d, 16); }
static void do_ckpt_unwritable(const char* p) { int h[CKPT_HEADER_INTS] = {0}; float d[4] = {0}; checkpoint_write(p, h, d, 4); }
static void do_png_unwritable(const char* p) { float px[12] = {0}; image_save_png(p, px, 2, 2); }

static void write_bytes(const char* path, const void* data, size_t n) {
    FILE* fp = fopenCheck(path, "wb"); fwriteCheck(data, 1, n, fp); fcloseCheck(fp);
}

int main(void) {
    if (system("mkdir -p " TMP) != 0) return 1;
    Rng rng; rng_seed(&rng, 7);

    // PNG round trip is exact on 8-bit values
    int H = 8, W = 10;
    float* img = calloc(H * W * 3, 4);
    for (int i = 0; i < H * W * 3; i++) img[i] = rng_int(&rng, 256) / 255.0f;
    image_save_png(TMP "/img.png", img, H, W);
    int H2, W2;
    float* back = image_load(TMP "/img.png", &H2, &W2);
    CHECK(H2 == H && W2 == W, "image size %dx%d, expected %dx%d", W2, H2, W, H);
    check_close("PNG round trip", back, img, H * W * 3, 1e-7);
    CHECK(access(TMP "/img.png.tmp", F_OK) != 0, "temporary file left behind");

    // grayscale and RGBA files load as RGB: gray replicated, alpha dropped
    unsigned char gray[6] = {0, 51, 102, 153, 204, 255}, rgba[6 * 4];
    for (int i = 0; i < 6; i++) { rgba[4 * i] = gray[i]; rgba[4 * i + 1] = 255 - gray[i]; rgba[4 * i + 2] = 7; rgba[4 * i + 3] = 100; }
    CHECK(stbi_write_png(TMP "/gray.png", 3, 2, 1, gray, 3) && stbi_write_png(TMP "/rgba.png", 3, 2, 4, rgba, 12), "cannot write test PNGs");
    float* g3 = image_load(TMP "/gray.png", &H2, &W2);
    float* a3 = image_load(TMP "/rgba.png", &H2, &W2);
    int conv_ok = H2 == 2 && W2 == 3;
    for (int i = 0; i < 6; i++) {
        for (int c = 0; c < 3; c++) conv_ok &= g3[3 * i + c] == gray[i] / 255.0f;
        for (int c = 0; c < 3; c++) conv_ok &= a3[3 * i + c] == rgba[4 * i + c] / 255.0f;
    }
    CHECK(conv_ok, "grayscale / RGBA not converted to RGB exactly");
    free(g3); free(a3);

    // labels round trip, 255 kept
    unsigned char* lab = malloc(H * W);
    for (int i = 0; i < H * W; i++) lab[i] = (i % 7 == 0) ? 255 : rng_int(&rng, 6);
    label_save_png(TMP "/lab.png", lab, H, W);
    unsigned char* lab2 = label_load(TMP "/lab.png", H, W, &H2, &W2);
    CHECK(memcmp(lab, lab2, H * W) == 0, "label round trip differs");

    // checkpoint round trip
    int hdr[CKPT_HEADER_INTS] = {0};
    hdr[2] = 42; hdr[3] = 16;
    float data[16], data2[16];
    rng_fill_uniform(&rng, data, 16, -1, 1);
    checkpoint_write(TMP "/ck.bin", hdr, data, 16);
    int hdr2[CKPT_HEADER_INTS];
    checkpoint_read_header(TMP "/ck.bin", hdr2);
    checkpoint_read_data(TMP "/ck.bin", data2, 16);
    CHECK(hdr2[0] == CKPT_MAGIC && hdr2[1] == CKPT_VERSION && hdr2[2] == 42, "checkpoint header differs");
    CHECK(memcmp(data, data2, sizeof(data)) == 0, "checkpoint data differs");

    // bad inputs
    expect_error("missing image", do_image_load, TMP "/nope.png");
    write_bytes(TMP "/garbage.png", "this is not a png file at all", 29);
    expect_error("undecodable image", do_image_load, TMP "/garbage.png");
    remove(TMP "/lab_small.png");
    expect_error("missing label", do_label_load_10x8, TMP "/lab_small.png");
    unsigned char small[6] = {0, 1, 2, 3, 4, 5};
    label_save_png(TMP "/lab_small.png", small, 2, 3);
    expect_error("label of wrong size", do_label_load_10x8, TMP "/lab_small.png");
    expect_error("RGB image used as label", do_label_load_10x8, TMP "/img.png");
    expect_error("missing checkpoint", do_ckpt_header, TMP "/nope.bin");
    write_bytes(TMP "/short.bin", hdr2, 100);
    expect_error("truncated checkpoint header", do_ckpt_header, TMP "/short.bin");
    int bad[CKPT_HEADER_INTS]; memcpy(bad, hdr2, sizeof(bad)); bad[0] = 12345;
    write_bytes(TMP "/magic.bin", bad, sizeof(bad));
    expect_error("wrong magic", do_ckpt_header, TMP "/magic.bin");
    bad[0] = CKPT_MAGIC; bad[1] = CKPT_VERSION + 1;
    write_bytes(TMP "/version.bin", bad, sizeof(bad));
    expect_error("wrong version", do_ckpt_header, TMP "/version.bin");
    checkpoint_write(TMP "/trunc.bin", hdr, data, 15);
    expect_error("truncated checkpoint data", do_ckpt_data, TMP "/trunc.bin");
    expect_error("unwritable PNG path", do_png_unwritable, TMP "/no/such/dir/x.png");
    CHECK(access(TMP "/no/such/dir/x.png.tmp", F_OK) != 0, "partial file left");
    expect_error("unwritable checkpoint path", do_ckpt_unwritable, TMP "/no/such/dir/ck.bin");
    CHECK(access(TMP "/no/such/dir/ck.bin.tmp", F_OK) != 0 && access(TMP "/no/such/dir/ck.bin", F_OK) != 0, "partial checkpoint left");

    free(img); free(back); free(lab); free(lab2);
    return test_summary("test_io");
}
