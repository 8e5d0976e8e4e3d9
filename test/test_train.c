// test/test_train.c: ./train end to end on a tiny generated dataset: the smoothed loss falls
// by at least 20% in 40 steps, an interrupted run resumed with --resume ends bit-for-bit
// where an uninterrupted run ends, and bad datasets fail with one clear line.
#include "test.h"
#include <sys/stat.h>

static int files_equal(const char* a, const char* b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    if (!fa || !fb) { if (fa) fclose(fa); if (fb) fclose(fb); return 0; }
    int same = 1, ca, cb;
    do { ca = fgetc(fa); cb = fgetc(fb); if (ca != cb) { same = 0; break; } } while (ca != EOF);
    fclose(fa); fclose(fb);
    return same;
}

int main(void) {
    const char* T = "test/tmp/train";
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "rm -rf %s && mkdir -p %s && ./gen stills %s/data --n 12 --size 64x48 --seed 3 > /dev/null", T, T, T);
    CHECK(run(cmd) == 0, "generating the dataset failed");
    const char* common = "--size tiny --classes 8 --batch 2 --crop 64x48 --lr 2e-3 --warmup 5 --device cpu --seed 4";

    // the loss falls
    snprintf(cmd, sizeof(cmd), "./train --data %s/data --out %s/a.bin --steps 40 --save-every 0 %s > %s/a.log 2>&1", T, T, common, T);
    CHECK(run(cmd) == 0, "training run failed (see %s/a.log)", T);
    char path[512], line[1024];
    snprintf(path, sizeof(path), "%s/a.log", T);
    FILE* fp = fopen(path, "r");
    float first = -1, last = -1;
    while (fp && fgets(line, sizeof(line), fp)) {
        float a, b;
        char* p = strstr(line, "loss ");
        if (strstr(line, "train: done") && p && sscanf(p, "loss %f -> %f", &a, &b) == 2) { first = a; last = b; }
    }
    if (fp) fclose(fp);
    CHECK(first > 0 && last > 0 && last < 0.8f * first, "loss did not fall by 20%%: %g -> %g", first, last);
    group_line("training loss %.4f -> %.4f (smoothed) in 40 steps", first, last);

    // resume: 10 steps straight vs 4 steps, stop, resume to 10
    snprintf(cmd, sizeof(cmd), "./train --data %s/data --out %s/full.bin --steps 10 --save-every 0 %s > /dev/null 2>&1", T, T, common);
    CHECK(run(cmd) == 0, "uninterrupted run failed");
    snprintf(cmd, sizeof(cmd), "./train --data %s/data --out %s/part.bin --steps 10 --save-every 0 --stop-after 4 %s > /dev/null 2>&1", T, T, common);
    CHECK(run(cmd) == 0, "interrupted run failed");
    snprintf(cmd, sizeof(cmd), "./train --data %s/data --out %s/part.bin --steps 10 --save-every 0 --resume %s > /dev/null 2>&1", T, T, common);
    CHECK(run(cmd) == 0, "resumed run failed");
    char a[512], b[512];
    snprintf(a, sizeof(a), "%s/full.bin", T); snprintf(b, sizeof(b), "%s/part.bin", T);
    CHECK(files_equal(a, b), "resumed checkpoint differs from the uninterrupted one");
    snprintf(a, sizeof(a), "%s/full.bin.opt", T); snprintf(b, sizeof(b), "%s/part.bin.opt", T);
    CHECK(files_equal(a, b), "resumed optimizer state differs from the uninterrupted one");
    group_line("resume after 4 of 10 steps ends bit-for-bit like the uninterrupted run");

    // bad input: missing label, wrong-size label, class id out of range, empty folder,
    // unwritable checkpoint path
    snprintf(cmd, sizeof(cmd), "mkdir -p %s/bad/images %s/bad/labels %s/empty/images && cp %s/data/images/000000.png %s/bad/images/x.png", T, T, T, T, T);
    run(cmd);
    struct { const char* what; const char* setup; const char* data; const char* out; const char* expect; } cases[5] = {
        {"image without label", "true", "bad", "o.bin", "has no label"},
        {"label of other size", "./gen stills %s/small --n 1 --size 32x24 --seed 1 >/dev/null && cp %s/small/labels/000000.png %s/bad/labels/x.png", "bad", "o.bin", "is 32x24"},
        {"class id out of range", "cp %s/data/labels/000000.png %s/bad/labels/x.png", "bad", "o.bin", "must be < 3"},
        {"empty folder", "true", "empty", "o.bin", "has no images"},
        {"unwritable checkpoint", "true", "data", "no/such/dir/o.bin", "cannot write checkpoint"},
    };
    for (int i = 0; i < 5; i++) {
        snprintf(cmd, sizeof(cmd), cases[i].setup, T, T, T);
        run(cmd);
        snprintf(cmd, sizeof(cmd), "./train --data %s/%s --out %s/%s --steps 1 --size tiny --classes %d --crop 64x48 --device cpu > %s/err.log 2>&1",
                 T, cases[i].data, T, cases[i].out, i == 2 ? 3 : 8, T);
        int rc = run(cmd);
        snprintf(path, sizeof(path), "%s/err.log", T);
        fp = fopen(path, "r");
        int found = 0;
        while (fp && fgets(line, sizeof(line), fp)) if (strstr(line, "error:") && strstr(line, cases[i].expect)) found = 1;
        if (fp) fclose(fp);
        CHECK(rc == 1 && found, "bad input '%s': exit %d, message with '%s' %s", cases[i].what, rc, cases[i].expect, found ? "found" : "missing");
        if (rc == 1 && found) printf("ok   bad input: %s\n", cases[i].what);
    }
    return test_summary("test_train");
}
