// test/test_instance.c: Mask2Former's instance and panoptic post-processing at the frame's
// original size (m2f_instance_inference, m2f_panoptic_inference_resized) against a
// brute-force version built from the resize ops (upsample_bilinear_forward_cpu: PyTorch's
// F.interpolate, align_corners=False): x4, crop, resize, then topk / argmax by hand.
#include "test.h"

// mask logits (Q, H4, W4) -> (Q, Ho, Wo) through the ops, channels-last in between
static float* resized_maps(const float* mask, int Q, int H4, int W4, int H, int W, int Ho, int Wo) {
    float* cl = (float*)mallocCheck((size_t)H4 * W4 * Q * sizeof(float));
    for (int q = 0; q < Q; q++) for (int p = 0; p < H4 * W4; p++) cl[(size_t)p * Q + q] = mask[(size_t)q * H4 * W4 + p];
    float* up = (float*)mallocCheck((size_t)16 * H4 * W4 * Q * sizeof(float));
    upsample_bilinear_forward_cpu(up, cl, 1, H4, W4, Q, 4 * H4, 4 * W4);
    float* crop = (float*)mallocCheck((size_t)H * W * Q * sizeof(float));
    for (int y = 0; y < H; y++) memcpy(crop + (size_t)y * W * Q, up + (size_t)y * 4 * W4 * Q, (size_t)W * Q * sizeof(float));
    float* out = (float*)mallocCheck((size_t)Ho * Wo * Q * sizeof(float));
    upsample_bilinear_forward_cpu(out, crop, 1, H, W, Q, Ho, Wo);
    float* r = (float*)mallocCheck((size_t)Q * Ho * Wo * sizeof(float));
    for (int q = 0; q < Q; q++) for (int p = 0; p < Ho * Wo; p++) r[(size_t)q * Ho * Wo + p] = out[(size_t)p * Q + q];
    free(cl); free(up); free(crop); free(out);
    return r;
}

static void softmax_row(double* p, const float* lg, int n) {
    double mx = lg[0], z = 0.0;
    for (int k = 1; k < n; k++) if (lg[k] > mx) mx = lg[k];
    for (int k = 0; k < n; k++) { p[k] = exp((double)lg[k] - mx); z += p[k]; }
    for (int k = 0; k < n; k++) p[k] /= z;
}

static void test_instance(int Ho, int Wo, const unsigned char* is_thing, const char* what) {
    const int Q = 7, K = 4, H4 = 5, W4 = 6, H = 18, W = 22, top_k = 12;
    Rng rng; rng_seed(&rng, 7 + Ho);
    float cls[7 * 5], msk[7 * 5 * 6];
    rng_fill_normal(&rng, cls, Q * (K + 1), 0.0f, 2.0f);
    rng_fill_normal(&rng, msk, Q * H4 * W4, 0.0f, 3.0f);
    InstanceDet dets[12];
    int n = m2f_instance_inference(dets, top_k, cls, msk, Q, K, H4, W4, H, W, Ho, Wo, is_thing);
    // brute force: every (q, k) probability, the top_k by selection, thing filter, masks
    float* maps = resized_maps(msk, Q, H4, W4, H, W, Ho, Wo);
    double prob[7][5];
    for (int q = 0; q < Q; q++) softmax_row(prob[q], cls + q * (K + 1), K + 1);
    int taken[7 * 4] = {0}, m = 0, ok = 1;
    double max_score_err = 0.0;
    int mask_diff = 0;
    unsigned char* dec = (unsigned char*)mallocCheck((size_t)Ho * Wo);
    for (int i = 0; i < top_k; i++) {
        int best = -1;
        for (int j = 0; j < Q * K; j++)
            if (!taken[j] && (best < 0 || prob[j / K][j % K] > prob[best / K][best % K])) best = j;
        taken[best] = 1;
        int q = best / K, k = best % K;
        if (is_thing && !is_thing[k]) continue;
        if (m >= n || dets[m].query != q || dets[m].class_id != k) { ok = 0; break; }
        const float* mp = maps + (size_t)q * Ho * Wo;
        double s = 0.0; long area = 0;
        rle_decode(&dets[m].rle, dec);
        for (int p = 0; p < Ho * Wo; p++) {
            int in = mp[p] > 0.0f;
            if (in) { s += 1.0 / (1.0 + exp(-(double)mp[p])); area++; }
            // pixels within float rounding of 0 may flip: count them, allow a few
            if (in != dec[p] && fabsf(mp[p]) > 1e-4f) mask_diff++;
        }
        double score = prob[q][k] * s / (area + 1e-6);
        max_score_err = fmax(max_score_err, fabs(score - dets[m].score));
        if (labs((long)dets[m].area - area) > 2) ok = 0;
        m++;
    }
    ok = ok && m == n && mask_diff == 0 && max_score_err < 1e-5;
    CHECK(ok, "instance inference %s: %d of %d detections, %d mask pixels differ, score err %g", what, n, m, mask_diff, max_score_err);
    printf("%-4s instance inference %s (Q %d, K %d, top %d -> %d, %dx%d -> %dx%d): masks and scores as torch's resize + topk (score err %.1e)\n",
           ok ? "ok" : "FAIL", what, Q, K, top_k, n, W, H, Wo, Ho, max_score_err);
    for (int i = 0; i < n; i++) rle_free(&dets[i].rle);
    free(maps); free(dec);
}

static void test_panoptic_resized(void) {
    const int Q = 6, K = 3, H4 = 4, W4 = 5, H = 15, W = 19, Ho = 23, Wo = 29;
    Rng rng; rng_seed(&rng, 99);
    float cls[6 * 4], msk[6 * 4 * 5];
    rng_fill_normal(&rng, msk, Q * H4 * W4, 0.0f, 3.0f);
    for (int q = 0; q < Q; q++) {   // confident queries, one below the threshold
        for (int k = 0; k <= K; k++) cls[q * (K + 1) + k] = 0.0f;
        cls[q * (K + 1) + (q % K)] = q == 4 ? 1.0f : 6.0f;
    }
    unsigned char is_thing[3] = {1, 0, 1};
    int* seg = (int*)mallocCheck((size_t)Ho * Wo * sizeof(int));
    PanopticSegment segs[8];
    int n = m2f_panoptic_inference_resized(seg, segs, 8, cls, msk, Q, K, H4, W4, H, W, Ho, Wo, is_thing, 0.8f, 0.0f);
    // brute force with overlap threshold 0: owners from the op-resized maps
    float* maps = resized_maps(msk, Q, H4, W4, H, W, Ho, Wo);
    double p[4];
    int agree = 0, segs_ok = 1;
    for (int px = 0; px < Ho * Wo; px++) {
        int owner = -1; float best = -1.0f, op = 0.0f;
        for (int q = 0; q < Q; q++) {
            softmax_row(p, cls + q * (K + 1), K + 1);
            if (!(p[q % K] > 0.8)) continue;
            float prob = 1.0f / (1.0f + expf(-maps[(size_t)q * Ho * Wo + px]));
            float v = (float)p[q % K] * prob;
            if (v > best) { best = v; owner = q; op = prob; }
        }
        int id = seg[px];
        int cls_here = id > 0 ? segs[id - 1].class_id : -1;
        int want = op >= 0.5f ? owner % K : -1;
        agree += cls_here == want;
    }
    for (int s = 0; s < n; s++) {
        int c = 0;
        for (int px = 0; px < Ho * Wo; px++) c += seg[px] == s + 1;
        segs_ok &= c == segs[s].area && segs[s].is_thing == is_thing[segs[s].class_id];
        for (int t = 0; t < s; t++)   // stuff merged: one segment per stuff class
            if (!segs[s].is_thing && !segs[t].is_thing) segs_ok &= segs[s].class_id != segs[t].class_id;
    }
    int ok = agree >= Ho * Wo - 2 && segs_ok && n >= 2;
    CHECK(ok, "panoptic at the original size: %d of %d pixels agree, %d segments, segs ok %d", agree, Ho * Wo, n, segs_ok);
    printf("%-4s panoptic inference at %dx%d from %dx%d: %d of %d pixel classes as the op-resized argmax, %d segments\n",
           ok ? "ok" : "FAIL", Wo, Ho, W, H, agree, Ho * Wo, n);
    free(seg); free(maps);
}

int main(void) {
    ttt_set_device(DEVICE_CPU);
    test_instance(18, 22, NULL, "at the model's size");
    test_instance(27, 33, NULL, "resized up");
    test_instance(11, 13, NULL, "resized down");
    unsigned char is_thing[4] = {1, 0, 1, 1};
    test_instance(27, 33, is_thing, "things only");
    test_panoptic_resized();
    return test_summary("test_instance");
}
