// test/gpu_panoptic.c: ./stream --task panoptic | instance on the GPU against the CPU, with the
// shipped model on a generated COCO Videos layout (gen --panoptic). The panoptic and instance
// inference run on the host in both cases, on the logits the device produced: the check is
// that the GPU's last-prediction logits (model_last_logits after model_predict, CUDA graphs
// included) give the CPU's segments and scores. Float32 matrix products (TTT_TF32=0).
#include "test.h"
#include <sys/wait.h>
#include <unistd.h>
#include "cJSON.h"

#define TMP "test/tmp/gpu_panoptic"

static double score_from(const char* path, const char* key) {
    char* s = read_text(path);
    cJSON* j = cJSON_Parse(s);
    free(s);
    double v = NAN;
    const cJSON* p = cJSON_GetObjectItemCaseSensitive(j, "pooled");
    const cJSON* e = cJSON_GetObjectItemCaseSensitive(p, key);
    if (cJSON_IsArray(e)) v = cJSON_GetArrayItem(e, 0)->valuedouble;   // panoptic: [pq, sq, rq, n]
    else if (cJSON_IsNumber(e)) v = e->valuedouble;                    // instance: AP
    cJSON_Delete(j);
    return v;
}

int main(void) {
    if (!ttt_cuda_available()) { printf("no CUDA GPU: skipped\n"); return test_summary("gpu_panoptic"); }
    if (fresh_dir(TMP) != 0) return 1;
    CHECK(run("./gen video " TMP "/cv --frames 21 --size 128x96 --seed 7 --panoptic --video-name v > /dev/null") == 0, "gen failed");
    const char* dev[2] = {"cpu", "cuda"};
    const char* task[2] = {"panoptic", "instance"};
    for (int d = 0; d < 2; d++)
        for (int t = 0; t < 2; t++) {
            char cmd[1024];
            snprintf(cmd, sizeof(cmd), "TTT_TF32=0 ./stream " TMP "/cv/raw_images/v --task %s --score-every 10 --mode fixed "
                     "--device %s --out " TMP "/%s_%s > " TMP "/%s_%s.log 2>&1", task[t], dev[d], task[t], dev[d], task[t], dev[d]);
            CHECK(run(cmd) == 0, "./stream --task %s on %s failed (see " TMP "/%s_%s.log)", task[t], dev[d], task[t], dev[d]);
        }
    // panoptic: the category of every pixel, read back through the outputs' JSON + PNGs
    CocoPanoptic a = coco_panoptic_read(TMP "/panoptic_cpu/panoptic.json", TMP "/panoptic_cpu/panoptic");
    CocoPanoptic b = coco_panoptic_read(TMP "/panoptic_cuda/panoptic.json", TMP "/panoptic_cuda/panoptic");
    long long same = 0, total = 0;
    for (int i = 0; i < a.n && i < b.n; i++) {
        int H, W;
        uint32_t* ia = coco_panoptic_load(&a, &a.ann[i], 0, 0, &H, &W);
        const CocoPanopticAnn* bb = coco_panoptic_find(&b, a.ann[i].png_name);
        CHECK(bb != NULL, "no cuda output for %s", a.ann[i].png_name);
        if (!bb) { free(ia); continue; }
        uint32_t* ib = coco_panoptic_load(&b, bb, H, W, &H, &W);
        for (int p = 0; p < H * W; p++) {
            int ca = -1, cb = -1;
            for (int s = 0; s < a.ann[i].n; s++) if (a.ann[i].seg[s].id == ia[p]) ca = a.ann[i].seg[s].category;
            for (int s = 0; s < bb->n; s++) if (bb->seg[s].id == ib[p]) cb = bb->seg[s].category;
            same += ca == cb;
        }
        total += H * W;
        free(ia); free(ib);
    }
    double agree = total ? (double)same / total : 0.0;
    printf("%-4s panoptic segments' categories cuda vs cpu agree on %.4f of pixels over %d frames (tol 0.98)\n",
           agree >= 0.98 && a.n == 21 ? "ok" : "FAIL", agree, a.n);
    if (agree >= 0.98 && a.n == 21 && b.n == 21) tests_passed++; else tests_failed++;
    coco_panoptic_free(&a); coco_panoptic_free(&b);
    double pq_c = score_from(TMP "/panoptic_cpu/panoptic_scores.json", "all"), pq_g = score_from(TMP "/panoptic_cuda/panoptic_scores.json", "all");
    double ap_c = score_from(TMP "/instance_cpu/instance_scores.json", "AP"), ap_g = score_from(TMP "/instance_cuda/instance_scores.json", "AP");
    int ok = fabs(pq_c - pq_g) <= 0.02 && fabs(ap_c - ap_g) <= 0.02;
    printf("%-4s PQ cpu %.4f cuda %.4f; AP cpu %.4f cuda %.4f (tol 0.02)\n", ok ? "ok" : "FAIL", pq_c, pq_g, ap_c, ap_g);
    if (ok) tests_passed++; else tests_failed++;
    return test_summary("gpu_panoptic");
}
