#!/usr/bin/env python3
# dev/coco_eval_reference.py: reference values for coco_eval.c (test/test_coco_eval.c).
#
#   pip install pycocotools numpy
#   python3 dev/coco_eval_reference.py [test/data/coco_eval_ref.json]
#
# Generates seeded cases and scores them with the field's tools:
#   - RLE: small masks with pycocotools.mask encode / area / toBbox (the compressed "counts"
#     strings the C side must decode and re-encode byte for byte);
#   - mask AP: pycocotools COCO + COCOeval(iouType="segm") on a few images with small, medium
#     and large masks, crowd regions, score ties, categories without ground truth, a cell with
#     more than 100 detections and ground-truth areas that differ from the mask's (COCOeval
#     reads the JSON's "area");
#   - PQ: two ports of pq_compute_single_core run on id maps in memory instead of PNG files:
#     panopticapi's (cocodataset/panopticapi evaluation.py, COCO's crowd rule) and the released
#     TTT code's copy (renwang435/video-ttt-release mask2former/evaluation/
#     coco_videos_panoptic_evaluation.py: no crowd handling, iou <= 1, the n == 0 guard), with a
#     ground-truth category outside the table (COCO Videos' 255).
# Everything is written to one JSON file (masks as RLE strings, id maps as row-major runs).
import json
import sys
from collections import defaultdict
import contextlib
import io

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

OFFSET = 256 * 256 * 256
VOID = 0


# ---------------------------------------------------------------------------
# PQ: the two ports (logic copied line for line; only the PNG reading replaced)

class PQStatCat():
    def __init__(self):
        self.iou = 0.0
        self.tp = 0
        self.fp = 0
        self.fn = 0

    def __iadd__(self, pq_stat_cat):
        self.iou += pq_stat_cat.iou
        self.tp += pq_stat_cat.tp
        self.fp += pq_stat_cat.fp
        self.fn += pq_stat_cat.fn
        return self


class PQStat():
    def __init__(self):
        self.pq_per_cat = defaultdict(PQStatCat)

    def __getitem__(self, i):
        return self.pq_per_cat[i]

    def __iadd__(self, pq_stat):
        for label, pq_stat_cat in pq_stat.pq_per_cat.items():
            self.pq_per_cat[label] += pq_stat_cat
        return self

    def pq_average(self, categories, isthing, guard):
        pq, sq, rq, n = 0, 0, 0, 0
        per_class_results = {}
        for label, label_info in categories.items():
            if isthing is not None:
                cat_isthing = label_info['isthing'] == 1
                if isthing != cat_isthing:
                    continue
            iou = self.pq_per_cat[label].iou
            tp = self.pq_per_cat[label].tp
            fp = self.pq_per_cat[label].fp
            fn = self.pq_per_cat[label].fn
            if tp + fp + fn == 0:
                per_class_results[label] = {'pq': 0.0, 'sq': 0.0, 'rq': 0.0}
                continue
            n += 1
            pq_class = iou / (tp + 0.5 * fp + 0.5 * fn)
            sq_class = iou / tp if tp != 0 else 0
            rq_class = tp / (tp + 0.5 * fp + 0.5 * fn)
            per_class_results[label] = {'pq': pq_class, 'sq': sq_class, 'rq': rq_class}
            pq += pq_class
            sq += sq_class
            rq += rq_class
        if guard and n == 0:   # the released code's guard (panopticapi would divide by 0)
            n = 1
        return {'pq': pq / n, 'sq': sq / n, 'rq': rq / n, 'n': n}, per_class_results


def pq_single_image_panopticapi(pq_stat, gt_ann, pred_ann, pan_gt, pan_pred, categories):
    gt_segms = {el['id']: el for el in gt_ann['segments_info']}
    pred_segms = {el['id']: el for el in pred_ann['segments_info']}

    # predicted segments area calculation + prediction sanity checks
    pred_labels_set = set(el['id'] for el in pred_ann['segments_info'])
    labels, labels_cnt = np.unique(pan_pred, return_counts=True)
    for label, label_cnt in zip(labels, labels_cnt):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError('segment with ID {} is presented in PNG and not presented in JSON.'.format(label))
        pred_segms[label]['area'] = label_cnt
        pred_labels_set.remove(label)
        if pred_segms[label]['category_id'] not in categories:
            raise KeyError('segment with ID {} has unknown category_id {}.'.format(label, pred_segms[label]['category_id']))
    if len(pred_labels_set) != 0:
        raise KeyError('the following segment IDs {} are presented in JSON and not presented in PNG.'.format(list(pred_labels_set)))

    # confusion matrix calculation
    pan_gt_pred = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
    gt_pred_map = {}
    labels, labels_cnt = np.unique(pan_gt_pred, return_counts=True)
    for label, intersection in zip(labels, labels_cnt):
        gt_id = label // OFFSET
        pred_id = label % OFFSET
        gt_pred_map[(gt_id, pred_id)] = intersection

    # count all matched pairs
    gt_matched = set()
    pred_matched = set()
    for label_tuple, intersection in gt_pred_map.items():
        gt_label, pred_label = label_tuple
        if gt_label not in gt_segms:
            continue
        if pred_label not in pred_segms:
            continue
        if gt_segms[gt_label]['iscrowd'] == 1:
            continue
        if gt_segms[gt_label]['category_id'] != pred_segms[pred_label]['category_id']:
            continue

        union = pred_segms[pred_label]['area'] + gt_segms[gt_label]['area'] - intersection - gt_pred_map.get((VOID, pred_label), 0)
        iou = intersection / union
        if iou > 0.5:
            pq_stat[gt_segms[gt_label]['category_id']].tp += 1
            pq_stat[gt_segms[gt_label]['category_id']].iou += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    # count false positives
    crowd_labels_dict = {}
    for gt_label, gt_info in gt_segms.items():
        if gt_label in gt_matched:
            continue
        # crowd segments are ignored
        if gt_info['iscrowd'] == 1:
            crowd_labels_dict[gt_info['category_id']] = gt_label
            continue
        pq_stat[gt_info['category_id']].fn += 1

    # count false positives
    for pred_label, pred_info in pred_segms.items():
        if pred_label in pred_matched:
            continue
        # intersection of the segment with VOID
        intersection = gt_pred_map.get((VOID, pred_label), 0)
        # plus intersection with corresponding CROWD region if it exists
        if pred_info['category_id'] in crowd_labels_dict:
            intersection += gt_pred_map.get((crowd_labels_dict[pred_info['category_id']], pred_label), 0)
        # predicted segment is ignored if more than half of the segment correspond to VOID and CROWD regions
        if intersection / pred_info['area'] > 0.5:
            continue
        pq_stat[pred_info['category_id']].fp += 1
    return pq_stat


def pq_single_image_released(pq_stat, gt_ann, pred_ann, pan_gt, pan_pred, categories):
    gt_segms = {el['id']: el for el in gt_ann['segments_info']}
    pred_segms = {el['id']: el for el in pred_ann['segments_info']}

    # predicted segments area calculation + prediction sanity checks
    pred_labels_set = set(el['id'] for el in pred_ann['segments_info'])
    labels, labels_cnt = np.unique(pan_pred, return_counts=True)
    for label, label_cnt in zip(labels, labels_cnt):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError('segment with ID {} is presented in PNG and not presented in JSON.'.format(label))
        pred_segms[label]['area'] = label_cnt
        pred_labels_set.remove(label)
        if pred_segms[label]['category_id'] not in categories:
            raise KeyError('segment with ID {} has unknown category_id {}.'.format(label, pred_segms[label]['category_id']))
    if len(pred_labels_set) != 0:
        raise KeyError('the following segment IDs {} are presented in JSON and not presented in PNG.'.format(list(pred_labels_set)))

    # confusion matrix calculation
    pan_gt_pred = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
    gt_pred_map = {}
    labels, labels_cnt = np.unique(pan_gt_pred, return_counts=True)
    for label, intersection in zip(labels, labels_cnt):
        gt_id = label // OFFSET
        pred_id = label % OFFSET
        gt_pred_map[(gt_id, pred_id)] = intersection

    # count all matched pairs
    gt_matched = set()
    pred_matched = set()
    for label_tuple, intersection in gt_pred_map.items():
        gt_label, pred_label = label_tuple
        if gt_label not in gt_segms:
            continue
        if pred_label not in pred_segms:
            continue
        if gt_segms[gt_label]['category_id'] != pred_segms[pred_label]['category_id']:
            continue

        union = pred_segms[pred_label]['area'] + gt_segms[gt_label]['area'] - intersection - gt_pred_map.get((VOID, pred_label), 0)
        iou = intersection / union
        if iou > 0.5 and iou <= 1:
            pq_stat[gt_segms[gt_label]['category_id']].tp += 1
            pq_stat[gt_segms[gt_label]['category_id']].iou += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    # count false positives
    crowd_labels_dict = {}
    for gt_label, gt_info in gt_segms.items():
        if gt_label in gt_matched:
            continue
        pq_stat[gt_info['category_id']].fn += 1

    # count false positives
    for pred_label, pred_info in pred_segms.items():
        if pred_label in pred_matched:
            continue
        # intersection of the segment with VOID
        intersection = gt_pred_map.get((VOID, pred_label), 0)
        # plus intersection with corresponding CROWD region if it exists
        if pred_info['category_id'] in crowd_labels_dict:
            intersection += gt_pred_map.get((crowd_labels_dict[pred_info['category_id']], pred_label), 0)
        # predicted segment is ignored if more than half of the segment correspond to VOID and CROWD regions
        if intersection / pred_info['area'] > 0.5:
            continue
        pq_stat[pred_info['category_id']].fp += 1
    return pq_stat


# ---------------------------------------------------------------------------
# generated cases

def runs_of(a):
    """row-major runs [value, count, value, count, ...] of an int array"""
    flat = a.reshape(-1)
    out = []
    i = 0
    while i < len(flat):
        j = i
        while j < len(flat) and flat[j] == flat[i]:
            j += 1
        out += [int(flat[i]), j - i]
        i = j
    return out


def rle_of(mask):
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return r["counts"].decode("ascii")


def random_shape(rng, h, w, size):
    """a filled ellipse or rectangle of about size x size pixels somewhere in h x w"""
    m = np.zeros((h, w), dtype=bool)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = size * rng.uniform(0.4, 0.8), size * rng.uniform(0.4, 0.8)
    yy, xx = np.mgrid[0:h, 0:w]
    if rng.uniform() < 0.5:
        m = ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0
    else:
        m = (np.abs(yy + 0.5 - cy) <= ry) & (np.abs(xx + 0.5 - cx) <= rx)
    return m


def perturb(rng, m):
    """a shifted, sometimes grown or shrunk copy of mask m"""
    dy, dx = rng.integers(-3, 4), rng.integers(-3, 4)
    p = np.roll(np.roll(m, dy, axis=0), dx, axis=1)
    k = rng.integers(0, 3)
    if k == 1:   # grow by one pixel
        p = p | np.roll(p, 1, 0) | np.roll(p, -1, 0) | np.roll(p, 1, 1) | np.roll(p, -1, 1)
    elif k == 2:   # shrink
        p = p & np.roll(p, 1, 0) & np.roll(p, -1, 0) & np.roll(p, 1, 1) & np.roll(p, -1, 1)
    return p


def rle_cases(rng):
    cases = []
    shapes = [(5, 7), (1, 1), (3, 4), (12, 9), (8, 8), (40, 33)]
    for i, (h, w) in enumerate(shapes):
        if i == 0:
            m = np.zeros((h, w), dtype=np.uint8)   # empty
        elif i == 1:
            m = np.ones((h, w), dtype=np.uint8)
        elif i == 4:
            m = np.ones((h, w), dtype=np.uint8)
            m[:, 3] = 0                            # runs of ones that wrap into the next column
        else:
            m = (rng.uniform(size=(h, w)) < 0.45).astype(np.uint8)
        r = mask_util.encode(np.asfortranarray(m))
        cases.append({"h": h, "w": w, "bits": "".join(str(int(v)) for v in m.reshape(-1)),
                      "counts": r["counts"].decode("ascii"), "area": int(mask_util.area(r)),
                      "bbox": [float(v) for v in mask_util.toBbox(r)]})
    # a long run (large counts, negative deltas): one big mask
    m = np.zeros((300, 200), dtype=np.uint8)
    m[20:280, 5:190] = 1
    m[100:110, :] = 0
    r = mask_util.encode(np.asfortranarray(m))
    cases.append({"h": 300, "w": 200, "bits": "", "counts": r["counts"].decode("ascii"),
                  "area": int(mask_util.area(r)), "bbox": [float(v) for v in mask_util.toBbox(r)]})
    return cases


def ap_case(rng, n_images, h, w, cat_ids, n_gt, crowd_p, many_dets):
    images = [{"id": 10 + 3 * i, "height": h, "width": w, "file_name": "%d.png" % i} for i in range(n_images)]
    gts, dts = [], []
    sizes = [5, 12, 20, 40, 70, 110]
    for im in images:
        k = n_gt if im["id"] != images[-1]["id"] or n_images == 1 else 0   # the last image: no ground truth
        for j in range(k):
            cat = int(rng.choice(cat_ids[:-1]))     # the last category never has ground truth
            m = random_shape(rng, h, w, float(rng.choice(sizes)))
            if m.sum() == 0:
                continue
            crowd = int(rng.uniform() < crowd_p)
            area = float(m.sum())
            if rng.uniform() < 0.2:
                area += 0.5          # a JSON area that is not the mask's (polygon areas are not)
            gts.append({"id": len(gts) + 1, "image_id": im["id"], "category_id": cat, "iscrowd": crowd,
                        "area": area, "counts": rle_of(m), "mask": m})
            n_det = rng.integers(0, 3)
            for _ in range(n_det):
                cat_d = cat if rng.uniform() < 0.85 else int(rng.choice(cat_ids))
                score = float(np.round(rng.uniform(0.05, 1.0), 2))   # rounded: ties happen
                dts.append({"image_id": im["id"], "category_id": cat_d, "score": score,
                            "counts": rle_of(perturb(rng, m))})
        for _ in range(rng.integers(1, 5)):   # false positives, some in the gt-less category
            m = random_shape(rng, h, w, float(rng.choice(sizes)))
            dts.append({"image_id": im["id"], "category_id": int(rng.choice(cat_ids)),
                        "score": float(np.round(rng.uniform(0.05, 1.0), 2)), "counts": rle_of(m)})
    if many_dets:   # more than 100 detections in one (image, category) cell
        im = images[0]["id"]
        cat = cat_ids[0]
        g0 = [g for g in gts if g["image_id"] == im and not g["iscrowd"]]
        if g0:   # an exact copy of a ground truth, scored lowest: dropped by the cap of 100
            cat = g0[0]["category_id"]
            dts.append({"image_id": im, "category_id": cat, "score": 0.0001, "counts": g0[0]["counts"]})
        for _ in range(110):
            m = random_shape(rng, h, w, 8.0)
            dts.append({"image_id": im, "category_id": cat, "score": float(rng.uniform(0.0, 0.5)),
                        "counts": rle_of(m)})
    # pycocotools
    gt_json = {"images": images, "categories": [{"id": c, "name": "c%d" % c} for c in cat_ids],
               "annotations": [{"id": g["id"], "image_id": g["image_id"], "category_id": g["category_id"],
                                "iscrowd": g["iscrowd"], "area": g["area"], "bbox": [0, 0, 1, 1],
                                "segmentation": {"size": [h, w], "counts": g["counts"]}} for g in gts]}
    res = [{"image_id": d["image_id"], "category_id": d["category_id"], "score": d["score"],
            "segmentation": {"size": [h, w], "counts": d["counts"]}} for d in dts]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt_json))
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(json.loads(json.dumps(res)))
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]   # (T, R, K, A, M)
    per_cat = []
    for k in range(len(cat_ids)):
        p = prec[:, :, k, 0, -1]
        p = p[p > -1]
        per_cat.append(float(np.mean(p)) if p.size else None)
    return {"h": h, "w": w, "images": [im["id"] for im in images], "categories": cat_ids,
            "gt": [{k: g[k] for k in ("image_id", "category_id", "iscrowd", "area", "counts")} for g in gts],
            "dt": dts, "stats": [float(v) for v in ev.stats[:6]], "per_category": per_cat}


def pq_case(rng, n_images, h, w, categories, crowd_p):
    """id maps with stuff regions, thing blobs, void, crowd; predictions perturbed from them"""
    cat_ids = [c["id"] for c in categories]
    things = [c["id"] for c in categories if c["isthing"]]
    stuff = [c["id"] for c in categories if not c["isthing"]]
    images = []
    for i in range(n_images):
        gt = np.zeros((h, w), dtype=np.uint32)
        segs = []
        used = set()

        def new_id():
            while True:
                v = int(rng.integers(1, 256 ** 3))
                if v not in used:
                    used.add(v)
                    return v
        # stuff: horizontal bands
        cuts = sorted(rng.choice(np.arange(3, h - 3), size=2, replace=False))
        bands = [(0, cuts[0]), (cuts[0], cuts[1]), (cuts[1], h)]
        for (y0, y1) in bands:
            sid = new_id()
            gt[y0:y1, :] = sid
            segs.append({"id": sid, "category_id": int(rng.choice(stuff)), "iscrowd": 0})
        # things
        for j in range(rng.integers(2, 7)):
            m = random_shape(rng, h, w, float(rng.choice([4, 7, 11])))
            tid = new_id()
            gt[m] = tid
            cat = 255 if rng.uniform() < 0.08 else int(rng.choice(things))
            segs.append({"id": tid, "category_id": cat, "iscrowd": int(rng.uniform() < crowd_p)})
        # void: a few blocks
        for j in range(rng.integers(0, 3)):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            gt[y:y + rng.integers(2, 6), x:x + rng.integers(2, 8)] = 0
        present = set(np.unique(gt).tolist())
        segs = [s for s in segs if s["id"] in present]
        for s in segs:
            s["area"] = int((gt == s["id"]).sum())
        # prediction: every segment perturbed, categories sometimes wrong, merges, extras, void
        pred = np.zeros((h, w), dtype=np.uint32)
        psegs = []
        pused = set()
        order = rng.permutation(len(segs))
        for k in order:
            s = segs[k]
            if rng.uniform() < 0.1:
                continue   # missed
            m = perturb(rng, gt == s["id"]) if rng.uniform() < 0.7 else (gt == s["id"])
            if not m.any():
                continue
            while True:
                pid = int(rng.integers(1, 256 ** 3))
                if pid not in pused:
                    pused.add(pid)
                    break
            pred[m] = pid
            cat = s["category_id"]
            if cat == 255 or rng.uniform() < 0.12:
                cat = int(rng.choice(cat_ids))
            psegs.append({"id": pid, "category_id": cat})
        for j in range(rng.integers(0, 3)):   # extra predictions, some on void
            m = random_shape(rng, h, w, float(rng.choice([3, 6])))
            pid = int(rng.integers(1, 256 ** 3))
            while pid in pused:
                pid = int(rng.integers(1, 256 ** 3))
            pused.add(pid)
            pred[m] = pid
            psegs.append({"id": pid, "category_id": int(rng.choice(cat_ids))})
        y, x = rng.integers(0, h - 5), rng.integers(0, w - 5)
        pred[y:y + 4, x:x + 5] = 0
        present = set(np.unique(pred).tolist())
        psegs = [s for s in psegs if s["id"] in present]
        images.append({"gt_map": runs_of(gt), "gt_segments": segs, "pred_map": runs_of(pred),
                       "pred_segments": psegs, "_gt": gt, "_pred": pred})
    cats = {c["id"]: c for c in categories}
    out = {"h": h, "w": w, "categories": categories, "images": []}
    for mode, fn, guard in (("coco", pq_single_image_panopticapi, False), ("released", pq_single_image_released, True)):
        total = PQStat()
        for i, im in enumerate(images):
            one = PQStat()
            gt_ann = {"segments_info": json.loads(json.dumps(im["gt_segments"]))}
            pred_ann = {"segments_info": json.loads(json.dumps(im["pred_segments"]))}
            fn(one, gt_ann, pred_ann, im["_gt"], im["_pred"], cats)
            total += one
            res = {}
            for name, isthing in (("all", None), ("things", True), ("stuff", False)):
                r, _ = one.pq_average(cats, isthing, True)   # per image: guarded (empty frames score 0)
                res[name] = [r["pq"], r["sq"], r["rq"], r["n"]]
            im.setdefault("result", {})[mode] = res
        res = {}
        for name, isthing in (("all", None), ("things", True), ("stuff", False)):
            r, per = total.pq_average(cats, isthing, guard)
            res[name] = [r["pq"], r["sq"], r["rq"], r["n"]]
            if name == "all":
                res["per_category"] = [per[c["id"]]["pq"] if (total[c["id"]].tp + total[c["id"]].fp + total[c["id"]].fn) else None
                                       for c in categories]
        out[mode] = res
    for im in images:
        out["images"].append({k: v for k, v in im.items() if not k.startswith("_")})
    return out


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "test/data/coco_eval_ref.json"
    rng = np.random.default_rng(20261122)
    ref = {"generator": "dev/coco_eval_reference.py", "rle": rle_cases(rng), "ap": [], "pq": []}
    ref["ap"].append(ap_case(rng, 4, 100, 120, [1, 2, 3, 5], 6, 0.15, True))
    ref["ap"].append(ap_case(rng, 1, 100, 120, [2, 7, 9], 5, 0.2, False))   # one frame (the per-frame score)
    ref["ap"].append(ap_case(rng, 3, 64, 48, [1, 4], 4, 0.0, False))
    categories = [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1}, {"id": 5, "isthing": 1},
                  {"id": 17, "isthing": 0}, {"id": 20, "isthing": 0}, {"id": 33, "isthing": 0}]
    ref["pq"].append(pq_case(rng, 5, 30, 40, categories, 0.15))
    ref["pq"].append(pq_case(rng, 3, 24, 24, categories, 0.3))
    with open(path, "w") as f:
        json.dump(ref, f, separators=(",", ":"))
    print("wrote", path)
    for i, c in enumerate(ref["ap"]):
        print("ap case %d: %d gt, %d dt, stats %s" % (i, len(c["gt"]), len(c["dt"]), ["%.4f" % v for v in c["stats"]]))
    for i, c in enumerate(ref["pq"]):
        print("pq case %d: coco PQ %.4f (things %.4f, stuff %.4f), released PQ %.4f" %
              (i, c["coco"]["all"][0], c["coco"]["things"][0], c["coco"]["stuff"][0], c["released"]["all"][0]))


if __name__ == "__main__":
    main()
