// test/test_precision.c: the precision switch of the GPU's matrix products (ttt.h, MATRIX-PRODUCT
// PRECISION), on the CPU: TTT_PRECISION / TTT_TF32 parsing, the setter, the name on settings
// lines, and that ./train and ./stream stop with one clear line on a bad value before doing
// anything. (The products themselves in each precision: test/gpu_ops.c.)
#include "test.h"
#include <sys/stat.h>

static int count_lines(const char* s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

int main(void) {
    // names <-> values
    CHECK(precision_parse("fp32") == PRECISION_FP32 && precision_parse("tf32") == PRECISION_TF32 &&
          precision_parse("bf16") == PRECISION_BF16, "precision_parse of the three names");
    CHECK(precision_parse("BF16") < 0 && precision_parse("bf") < 0 && precision_parse("") < 0 &&
          precision_parse("fp16") < 0 && precision_parse(NULL) < 0, "precision_parse accepts a bad name");
    for (int p = PRECISION_FP32; p <= PRECISION_BF16; p++)
        CHECK(precision_parse(precision_name(p)) == p, "precision_name(%d) does not parse back", p);
    CHECK(PRECISION_DEFAULT == PRECISION_BF16, "the default is bf16 (measured faster, same mIoU on the demo)");

    // the environment: TTT_PRECISION, the older TTT_TF32=0, unset or empty -> the default
    char err[256];
    CHECK(precision_from_env_values(NULL, NULL, err, sizeof(err)) == PRECISION_DEFAULT, "unset: not the default");
    CHECK(precision_from_env_values("", NULL, err, sizeof(err)) == PRECISION_DEFAULT, "empty: not the default");
    CHECK(precision_from_env_values("bf16", NULL, err, sizeof(err)) == PRECISION_BF16, "TTT_PRECISION=bf16");
    CHECK(precision_from_env_values("fp32", NULL, err, sizeof(err)) == PRECISION_FP32, "TTT_PRECISION=fp32");
    CHECK(precision_from_env_values(NULL, "0", err, sizeof(err)) == PRECISION_FP32, "TTT_TF32=0 is not fp32");
    CHECK(precision_from_env_values(NULL, "1", err, sizeof(err)) == PRECISION_TF32, "TTT_TF32=1 is not tf32");
    CHECK(precision_from_env_values("fp32", "0", err, sizeof(err)) == PRECISION_FP32, "TTT_TF32=0 with fp32 agree");
    CHECK(precision_from_env_values("bf16", "1", err, sizeof(err)) == PRECISION_BF16, "TTT_TF32=1 overrides bf16");
    err[0] = '\0';
    CHECK(precision_from_env_values("bf17", NULL, err, sizeof(err)) == -1 && strstr(err, "TTT_PRECISION") &&
          strstr(err, "bf17") && strstr(err, "bf16, tf32 or fp32"), "bad TTT_PRECISION: '%s'", err);
    err[0] = '\0';
    CHECK(precision_from_env_values("bf16", "0", err, sizeof(err)) == -1 && strstr(err, "TTT_TF32=0") &&
          strstr(err, "disagree"), "TTT_TF32=0 with bf16 does not say they disagree: '%s'", err);

    // the setting: read from the environment once, then the setter's value
    setenv("TTT_PRECISION", "bf16", 1);
    unsetenv("TTT_TF32");
    CHECK(ttt_cuda_precision() == PRECISION_BF16, "TTT_PRECISION=bf16 not read");
    setenv("TTT_PRECISION", "fp32", 1);
    CHECK(ttt_cuda_precision() == PRECISION_BF16, "the environment is read once, at first use");
    ttt_cuda_set_precision(PRECISION_FP32);
    CHECK(ttt_cuda_precision() == PRECISION_FP32, "ttt_cuda_set_precision(fp32)");
    ttt_cuda_set_precision(PRECISION_TF32);
    CHECK(ttt_cuda_precision() == PRECISION_TF32, "ttt_cuda_set_precision(tf32)");
    ttt_set_device(DEVICE_CPU);
    CHECK(strcmp(matmul_precision_name(), "fp32") == 0, "on the CPU the products are float32");
    unsetenv("TTT_PRECISION");

    // the programs: one line, exit 1, before anything is written
    const char* T = "test/tmp/precision";
    char cmd[2048], path[512];
    snprintf(cmd, sizeof(cmd), "rm -rf %s && mkdir -p %s && ./gen stills %s/data --n 4 --size 64x48 --seed 3 > /dev/null", T, T, T);
    CHECK(run(cmd) == 0, "generating the dataset failed");
    snprintf(cmd, sizeof(cmd), "TTT_PRECISION=bf17 ./train --data %s/data --out %s/bad.bin --size tiny --classes 8 --steps 1 "
             "--batch 1 --crop 64x48 --device cpu > %s/bad_train.log 2>&1", T, T, T);
    int rc = run(cmd);
    snprintf(path, sizeof(path), "%s/bad_train.log", T);
    char* log = read_text(path);
    CHECK(rc == 1 && count_lines(log) == 1 && strstr(log, "error: TTT_PRECISION: expected bf16, tf32 or fp32, got 'bf17'"),
          "./train with TTT_PRECISION=bf17: rc %d, log '%s'", rc, log);
    snprintf(path, sizeof(path), "%s/bad.bin", T);
    struct stat st;
    CHECK(stat(path, &st) != 0, "./train wrote its checkpoint despite a bad TTT_PRECISION");
    snprintf(cmd, sizeof(cmd), "TTT_TF32=0 TTT_PRECISION=bf16 ./stream %s/data --model %s/none.bin --device cpu --out %s/out "
             "> %s/bad_stream.log 2>&1", T, T, T, T);
    rc = run(cmd);
    snprintf(path, sizeof(path), "%s/bad_stream.log", T);
    free(log);
    log = read_text(path);
    CHECK(rc == 1 && count_lines(log) == 1 && strstr(log, "error: TTT_TF32=0 (float32) and TTT_PRECISION=bf16 disagree"),
          "./stream with TTT_TF32=0 TTT_PRECISION=bf16: rc %d, log '%s'", rc, log);
    snprintf(path, sizeof(path), "%s/out", T);
    CHECK(stat(path, &st) != 0, "./stream made its output folder despite a bad precision setting");

    // the settings line names the precision (fp32 on the CPU, whatever TTT_PRECISION asks of the GPU)
    snprintf(cmd, sizeof(cmd), "TTT_PRECISION=bf16 ./train --data %s/data --out %s/a.bin --size tiny --classes 8 --steps 1 "
             "--batch 1 --crop 64x48 --save-every 0 --device cpu > %s/train.log 2>&1", T, T, T);
    rc = run(cmd);
    snprintf(path, sizeof(path), "%s/train.log", T);
    free(log);
    log = read_text(path);
    CHECK(rc == 0 && strstr(log, "settings: ") && strstr(log, " device=cpu precision=fp32 "),
          "./train's settings line lacks 'device=cpu precision=fp32' (rc %d)", rc);
    free(log);
    return test_summary("test_precision");
}
