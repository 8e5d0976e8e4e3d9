#!/usr/bin/env python3
# dev/check_coco_outputs.py: score ./stream's COCO outputs with the field's tools and compare
# with the numbers ./stream printed (OUT/panoptic_scores.json, OUT/instance_scores.json).
#
#   python3 dev/check_coco_outputs.py panoptic GT.json GT_PNG_DIR OUT [coco|released]
#   python3 dev/check_coco_outputs.py instance GT.json GT_PNG_DIR OUT [things|all]
#
# panoptic: OUT/panoptic.json + OUT/panoptic/*.png against the ground truth with the pq_compute
#   ports of dev/coco_eval_reference.py (panopticapi's or the released copy's), per frame and
#   pooled over the frames the stream scored;
# instance: OUT/instances.json (COCO results, RLE) against instance ground truth made from the
#   panoptic ground truth (thing segments, or every segment not 255), with pycocotools COCOeval
#   ("segm"), per frame and pooled.
# Needs numpy, pillow, pycocotools. Exits 1 when a number differs by more than 1e-6.
import json
import os
import sys
import contextlib
import io

import numpy as np
from PIL import Image
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from coco_eval_reference import PQStat, pq_single_image_panopticapi, pq_single_image_released  # noqa: E402

COCO_TABLE_NOTE = "the JSON has no categories: pass a file that has them"


def rgb2id(a):
    a = a.astype(np.uint32)
    return a[..., 0] + 256 * a[..., 1] + 256 * 256 * a[..., 2]


def main():
    task, gt_json, gt_dir, out = sys.argv[1:5]
    rule = sys.argv[5] if len(sys.argv) > 5 else ("coco" if task == "panoptic" else "things")
    gt = json.load(open(gt_json))
    if "categories" not in gt:
        sys.exit(COCO_TABLE_NOTE)
    cats = {c["id"]: c for c in gt["categories"]}
    bad = 0
    if task == "panoptic":
        pred = json.load(open(os.path.join(out, "panoptic.json")))
        mine = json.load(open(os.path.join(out, "panoptic_scores.json")))
        gt_by_id = {a["image_id"]: a for a in gt["annotations"]}
        fn = pq_single_image_panopticapi if rule == "coco" else pq_single_image_released
        total = PQStat()
        frame_pq = []
        for p in pred["annotations"]:
            if p["image_id"] not in gt_by_id:
                continue
            g = gt_by_id[p["image_id"]]
            pan_gt = rgb2id(np.array(Image.open(os.path.join(gt_dir, g["file_name"])).convert("RGB")))
            pan_pred = rgb2id(np.array(Image.open(os.path.join(out, "panoptic", p["file_name"])).convert("RGB")))
            one = PQStat()
            fn(one, json.loads(json.dumps(g)), json.loads(json.dumps(p)), pan_gt, pan_pred, cats)
            total += one
            r, _ = one.pq_average(cats, None, True)
            frame_pq.append(r["pq"])
        res = {}
        for name, isthing in (("all", None), ("things", True), ("stuff", False)):
            r, _ = total.pq_average(cats, isthing, True)
            res[name] = [r["pq"], r["sq"], r["rq"], r["n"]]
        print("python: PQ %.6f SQ %.6f RQ %.6f (things %.6f, stuff %.6f) over %d frames; video PQ %.6f" %
              (res["all"][0], res["all"][1], res["all"][2], res["things"][0], res["stuff"][0], len(frame_pq),
               float(np.mean(frame_pq)) if frame_pq else float("nan")))
        print("stream: PQ %.6f SQ %.6f RQ %.6f (things %.6f, stuff %.6f) over %d frames; video PQ %.6f" %
              (mine["pooled"]["all"][0], mine["pooled"]["all"][1], mine["pooled"]["all"][2], mine["pooled"]["things"][0],
               mine["pooled"]["stuff"][0], mine["num_scored"], mine["video_pq"]))
        for name in ("all", "things", "stuff"):
            for k in range(3):
                if abs(res[name][k] - mine["pooled"][name][k]) > 1e-6:
                    print("  %s %s: python %.6f, stream %.6f" % (name, "PQ SQ RQ".split()[k], res[name][k], mine["pooled"][name][k]))
                    bad += 1
        bad += len(frame_pq) != mine["num_scored"]
        bad += any(abs(a - b) > 1e-6 for a, b in zip(frame_pq, mine["frame_pq"]))
    else:
        results = json.load(open(os.path.join(out, "instances.json")))
        mine = json.load(open(os.path.join(out, "instance_scores.json")))
        # instance ground truth from the panoptic annotation, as coco_stream.c builds it
        anns, images = [], []
        for a in gt["annotations"]:
            ids = rgb2id(np.array(Image.open(os.path.join(gt_dir, a["file_name"])).convert("RGB")))
            images.append({"id": a["image_id"], "height": ids.shape[0], "width": ids.shape[1]})
            for s in a["segments_info"]:
                c = cats.get(s["category_id"])
                if c is None or not (c["isthing"] or rule == "all"):
                    continue
                rle = mask_util.encode(np.asfortranarray((ids == s["id"]).astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                area = s.get("area", int(mask_util.area(rle)))
                anns.append({"id": len(anns) + 1, "image_id": a["image_id"], "category_id": s["category_id"],
                             "iscrowd": s.get("iscrowd", 0), "area": area, "segmentation": rle, "bbox": [0, 0, 1, 1]})
        scored = sorted({r["image_id"] for r in results} & {im["id"] for im in images})
        gt_coco = {"images": [im for im in images if im["id"] in scored], "annotations": [a for a in anns if a["image_id"] in scored],
                   "categories": gt["categories"]}

        def evaluate(img_ids):
            with contextlib.redirect_stdout(io.StringIO()):
                c = COCO()
                c.dataset = json.loads(json.dumps(gt_coco))
                c.createIndex()
                dets = [r for r in results if r["image_id"] in img_ids]
                if not dets:
                    return None
                d = c.loadRes(json.loads(json.dumps(dets)))
                e = COCOeval(c, d, "segm")
                e.params.imgIds = img_ids
                e.evaluate(); e.accumulate(); e.summarize()
            return e.stats
        pooled = evaluate(scored)
        frame_ap = []
        for i in scored:
            st = evaluate([i])
            if st is not None and st[0] >= 0:
                frame_ap.append(st[0])
        print("python: AP %.6f AP50 %.6f AP75 %.6f over %d frames; video AP %.6f" %
              (pooled[0], pooled[1], pooled[2], len(scored), float(np.mean(frame_ap)) if frame_ap else float("nan")))
        print("stream: AP %.6f AP50 %.6f AP75 %.6f over %d frames; video AP %.6f" %
              (mine["pooled"]["AP"], mine["pooled"]["AP50"], mine["pooled"]["AP75"], mine["num_scored"], mine["video_ap"]))
        for k, key in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
            if abs(pooled[k] - mine["pooled"][key]) > 1e-6:
                print("  %s: python %.6f, stream %.6f" % (key, pooled[k], mine["pooled"][key]))
                bad += 1
        if len(frame_ap) != mine["num_scored"] or any(abs(a - b) > 1e-6 for a, b in zip(frame_ap, mine["frame_ap"])):
            print("  per-frame AP: python %s, stream %s" % (["%.6f" % v for v in frame_ap], ["%.6f" % v for v in mine["frame_ap"]]))
        bad += len(frame_ap) != mine["num_scored"]
        bad += any(abs(a - b) > 1e-6 for a, b in zip(frame_ap, mine["frame_ap"]))
    print("agree" if bad == 0 else "DIFFER (%d numbers)" % bad)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
