// test/test_iou.c: the one IoU (ttt.c: class_iou, mean_iou_counts, mean_iou), as ./stream
// scores frames (per-class intersection and union counts) and ./train scores its validation
// (a confusion matrix): hand-made cases with known scores, and both forms equal on random maps.
#include "test.h"

// ./stream's counting: label 255 skipped; a pixel adds to the union of its label's class and,
// when the prediction differs, of the predicted class too; to the intersection when equal
static void count_inter_union(int64_t* inter, int64_t* uni, const unsigned char* pred,
                              const unsigned char* lab, int n) {
    for (int i = 0; i < n; i++) {
        if (lab[i] == 255) continue;
        uni[lab[i]]++;
        if (pred[i] == lab[i]) inter[lab[i]]++;
        else uni[pred[i]]++;
    }
}

int main(void) {
    CHECK(class_iou(3, 4) == 0.75, "class_iou(3, 4) = %g", class_iou(3, 4));
    CHECK(isnan(class_iou(0, 0)), "class_iou(0, 0) = %g, expected NAN", class_iou(0, 0));
    CHECK(class_iou(0, 5) == 0.0, "class_iou(0, 5) = %g", class_iou(0, 5));

    // 3 classes, 8 pixels: label 0 0 0 1 1 255 2 2, prediction 0 0 1 1 1 0 0 2
    // class 0: inter 2, union 3 (labels) + 1 (predicted at a 2) = 4 -> 0.5
    // class 1: inter 2, union 2 + 1 (predicted at a 0) = 3 -> 2/3; class 2: inter 1, union 2 -> 0.5
    const unsigned char lab[8] = {0, 0, 0, 1, 1, 255, 2, 2}, pred[8] = {0, 0, 1, 1, 1, 0, 0, 2};
    int64_t inter[4] = {0}, uni[4] = {0};
    count_inter_union(inter, uni, pred, lab, 8);
    double iou[4];
    double miou = mean_iou_counts(inter, uni, 4, iou);   // class 3 absent: NAN, not averaged
    double want = (0.5 + 2.0 / 3.0 + 0.5) / 3.0;
    CHECK(iou[0] == 0.5 && iou[1] == 2.0 / 3.0 && iou[2] == 0.5 && isnan(iou[3]),
          "per-class IoU %g %g %g %g, expected 0.5 0.6667 0.5 nan", iou[0], iou[1], iou[2], iou[3]);
    CHECK(miou == want, "mIoU %.17g, expected %.17g", miou, want);
    int64_t conf[16] = {0};
    confusion_update(conf, pred, lab, 8, 4);
    double iou_conf[4];
    double miou_conf = mean_iou(conf, 4, iou_conf);
    CHECK(miou_conf == miou, "mIoU from the confusion matrix %.17g vs from counts %.17g", miou_conf, miou);
    int64_t none[4] = {0};
    CHECK(isnan(mean_iou_counts(none, none, 4, NULL)), "mIoU of nothing scored is NAN");

    // random maps: both forms give the same per-class IoU and mIoU, bit for bit
    Rng rng;
    rng_seed(&rng, 15);
    int worst = 0;
    for (int trial = 0; trial < 20; trial++) {
        int K = 2 + rng_int(&rng, 18), n = 1 + rng_int(&rng, 5000);
        unsigned char* p = (unsigned char*)mallocCheck(n);
        unsigned char* l = (unsigned char*)mallocCheck(n);
        for (int i = 0; i < n; i++) {
            l[i] = rng_int(&rng, 10) == 0 ? 255 : (unsigned char)rng_int(&rng, K);
            p[i] = rng_int(&rng, 3) == 0 ? l[i] : (unsigned char)rng_int(&rng, K);
            if (p[i] == 255) p[i] = 0;
        }
        int64_t* in = (int64_t*)callocCheck(2 * K, sizeof(int64_t));
        int64_t* cf = (int64_t*)callocCheck((size_t)K * K, sizeof(int64_t));
        double* a = (double*)mallocCheck(2 * K * sizeof(double));
        count_inter_union(in, in + K, p, l, n);
        confusion_update(cf, p, l, n, K);
        double m1 = mean_iou_counts(in, in + K, K, a), m2 = mean_iou(cf, K, a + K);
        int same = (m1 == m2) || (isnan(m1) && isnan(m2));
        for (int k = 0; k < K; k++) same &= (a[k] == a[K + k]) || (isnan(a[k]) && isnan(a[K + k]));
        if (!same) worst++;
        free(p); free(l); free(in); free(cf); free(a);
    }
    CHECK(worst == 0, "%d of 20 random cases differ between counts and confusion matrix", worst);
    return test_summary("test_iou");
}
