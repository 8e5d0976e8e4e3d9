#!/bin/sh
# dev/reproduce_coco_videos.sh: the COCO Videos columns of the paper's Table 1 (instance AP,
# panoptic PQ) with ./stream.
#
#   sh dev/reproduce_coco_videos.sh ROOT PANOPTIC_CKPT INSTANCE_CKPT [OUT] [extra ./stream options...]
#
# ROOT is COCO Videos as published and as the released runner_ttt_mae_{panoptic,inst}.py read
# it ($DETECTRON2_DATASETS/coco_videos): ROOT/raw_images/VID/*.png (frames),
# ROOT/panoptic_images/VID/*.png (panoptic PNGs, id = R + 256 G + 256^2 B) and
# ROOT/annotations/train/VID.json (COCO panoptic JSON; COCO's 133 categories when it has none).
# PANOPTIC_CKPT: a 133-class Y model (./train --task panoptic on COCO panoptic, or the released
# ttt_coco_panoptic_baseline.pkl once it converts); INSTANCE_CKPT: an 80-class one (the
# released ttt_coco_instance_baseline.pkl once it converts) or the panoptic one again (its
# instance inference keeps the thing classes). Give "-" to skip a column.
#
# Per video (bangkok bar berkeley havana house irvine paris restaurant school tokyo, the
# released README's list) and row (fixed = MAE Joint Training, nomem, online = Online TTT-MAE):
#   ./stream ROOT/raw_images/VID --task panoptic|instance --score-every 10 --recipe paper
#            --resize-short 800 --max-long 1333 --crop 1024x1024 --mode ROW
# --score-every 10 scores frames 1, 11, 21, ... (the released validation_img_idxs = 0, 10,
# 20, ...); a video's score is the mean of its per-frame PQ or AP (the released
# performance.txt, one line per scored frame); the column weights the videos by the released
# tabulate_results_cv.py's lengths (310 196 380 325 338 340 331 305 304 301). PQ uses the
# released copy of pq_compute (iscrowd ignored; --pq-rule coco for panopticapi's rule).
#
# What still differs from the released runs, and why:
# - The TTT images: the released COCO configs train on LSJ samples (random scale 0.1-2.0 of a
#   1024 square, a fixed 1024 x 1024 crop); ./stream crops 1024 x 1024 windows of the frame
#   resized to detectron2's test size (short side 800, long side <= 1333, the default the COCO
#   configs keep), without the random scale.
# - Instance ground truth: the thing segments of each annotated frame, masks from the PNG
#   (COCO's definition). The released loader takes every segment of segments_info with a
#   "segmentation" field except category 255 (stuff included, if the files carry one for
#   stuff): INSTANCE_GT=all passes --instance-gt all.
# - Instance results carry each mask's box, so the area ranges (APs/m/l) use box areas as
#   pycocotools does; Mask2Former's zero boxes put every detection in "small" (AP itself,
#   the number Table 1 reports, does not depend on it).
# - float32 with TF32 matrix products where the released code uses AMP fp16.
#
# Output: OUT/TASK/ROW/VID/ (outputs + log.txt), OUT/results.txt (one RESULT line per run) and
# the table. ROWS="fixed online" restricts the rows; VIDEOS="bar paris" the videos.
set -u
if [ $# -lt 3 ]; then
    echo "usage: sh dev/reproduce_coco_videos.sh ROOT PANOPTIC_CKPT INSTANCE_CKPT [OUT] [extra ./stream options...]" >&2
    exit 2
fi
ROOT=$1; PAN=$2; INS=$3; shift 3
OUT=out/coco_videos_reproduction
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT=$1; shift; fi
[ -d "$ROOT/raw_images" ] || { echo "error: '$ROOT' has no raw_images/ folder (expected the COCO Videos layout)" >&2; exit 1; }
[ "$PAN" = "-" ] || [ -r "$PAN" ] || { echo "error: cannot read checkpoint '$PAN'" >&2; exit 1; }
[ "$INS" = "-" ] || [ -r "$INS" ] || { echo "error: cannot read checkpoint '$INS'" >&2; exit 1; }
[ -x ./stream ] || { echo "error: ./stream not built (run make)" >&2; exit 1; }
VIDEOS=${VIDEOS:-"bangkok bar berkeley havana house irvine paris restaurant school tokyo"}
ROWS=${ROWS:-"fixed nomem online"}
INSTANCE_GT=${INSTANCE_GT:-things}
mkdir -p "$OUT"
: > "$OUT/results.txt"
for task in panoptic instance; do
    ckpt=$PAN; [ $task = instance ] && ckpt=$INS
    [ "$ckpt" = "-" ] && continue
    extra=""; [ $task = instance ] && extra="--instance-gt $INSTANCE_GT"
    for row in $ROWS; do
        for vid in $VIDEOS; do
            dir=$ROOT/raw_images/$vid
            if [ ! -d "$dir" ]; then echo "note: $dir is missing; skipped" >&2; continue; fi
            run=$OUT/$task/$row/$vid
            mkdir -p "$run"
            echo "== $task $row $vid" >&2
            if ./stream "$dir" --model "$ckpt" --task $task --score-every 10 --recipe paper --resize-short 800 \
                   --max-long 1333 --crop 1024x1024 --mode $row $extra --out "$run" "$@" > "$run/log.txt" 2>&1; then
                r=$(grep "^RESULT task=" "$run/log.txt" | tail -1)
                ms=$(grep "^RESULT dir=" "$run/log.txt" | tail -1 | sed -E 's/.*ms_per_frame=([0-9.]+).*/\1/')
                echo "$task $row $vid $r ms_per_frame=$ms" >> "$OUT/results.txt"
            else
                echo "error: $task $row on $dir failed; see $run/log.txt:" >&2
                tail -2 "$run/log.txt" >&2
            fi
        done
    done
done
# the table: per task and row, sum(video score * length) / sum(length) over the videos run
awk -v results="$OUT/results.txt" '
BEGIN {
    split("bangkok bar berkeley havana house irvine paris restaurant school tokyo", names, " ")
    split("310 196 380 325 338 340 331 305 304 301", lens, " ")
    for (i = 1; i <= 10; i++) len[names[i]] = lens[i]
    while ((getline line < results) > 0) {
        n = split(line, f, " ")
        task = f[1]; row = f[2]; vid = f[3]; v = ""; ms = ""
        for (i = 4; i <= n; i++) {
            if (f[i] ~ /^video_pq=/) v = substr(f[i], 10)
            if (f[i] ~ /^video_ap=/) v = substr(f[i], 10)
            if (f[i] ~ /^ms_per_frame=/) ms = substr(f[i], 14) + 0
        }
        if (v == "" || v == "nan" || !(vid in len)) continue
        w[task, row] += len[vid]; s[task, row] += len[vid] * v; t[row] += ms; nt[row]++
    }
    printf("\nCOCO Videos, Table 1 layout: video score x 100 (mean of per-frame AP / PQ, videos weighted as the released code)\n")
    printf("%-34s %10s %8s %10s %8s %10s\n", "row", "inst. AP", "paper", "pan. PQ", "paper", "ms/frame")
    split("fixed|MAE Joint Training|16.7|13.9;nomem|TTT-MAE No Memory|-|-;online|Online TTT-MAE|37.6|21.7", rows, ";")
    for (k = 1; k <= 3; k++) {
        split(rows[k], r, "|")
        ap = (w["instance", r[1]] > 0) ? sprintf("%.1f", 100 * s["instance", r[1]] / w["instance", r[1]]) : "-"
        pq = (w["panoptic", r[1]] > 0) ? sprintf("%.1f", 100 * s["panoptic", r[1]] / w["panoptic", r[1]]) : "-"
        ms = (nt[r[1]] > 0) ? sprintf("%.0f", t[r[1]] / nt[r[1]]) : "-"
        printf("%-34s %10s %8s %10s %8s %10s\n", r[2], ap, r[3], pq, r[4], ms)
    }
    printf("(the numbers of the paper for the baseline and online rows)\n")
}' /dev/null
