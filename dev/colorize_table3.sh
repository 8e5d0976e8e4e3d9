#!/bin/sh
# Table 3 of the paper on the generated world: colorization of videos made gray, fixed model vs
# online TTT-MAE, PSNR and SSIM (means over the frames of a video, then over the videos).
# Generated colour videos (./gen video, one per seed) are the ground truth; ./stream --task
# colorize makes each frame gray (its L), colourises it and scores it against the original.
# Usage: sh dev/colorize_table3.sh [MODEL] [DEVICE] [FRAMES] [SEEDS] [OUT]
#   defaults: data/model_colorize.bin cpu 60 "1 2 3" out/table3
# Extra ./stream options for the online rows: ONLINE_FLAGS (default: the demo recipe).
set -e
MODEL=${1:-data/model_colorize.bin}
DEVICE=${2:-cpu}
FRAMES=${3:-60}
SEEDS=${4:-"1 2 3"}
OUT=${5:-out/table3}
make -s gen stream
mkdir -p "$OUT"
for s in $SEEDS; do
    [ -d "$OUT/video_$s" ] || ./gen video "$OUT/video_$s" --frames "$FRAMES" --size 128x96 --seed "$s" --labels "$OUT/video_${s}_labels" >/dev/null
    for mode in fixed online; do
        rm -rf "$OUT/${mode}_$s"
        ./stream "$OUT/video_$s" --task colorize --model "$MODEL" --mode "$mode" --device "$DEVICE" --seed "$s" \
                 --out "$OUT/${mode}_$s" $ONLINE_FLAGS | grep '^RESULT' | sed "s/^/seed $s: /"
    done
done | tee "$OUT/results.txt"
awk '
/RESULT/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
           m = v["mode"]; p[m] += v["psnr"]; q[m] += v["ssim"]; n[m]++; ps[m] = ps[m] sprintf(" %.2f", v["psnr"]); ss[m] = ss[m] sprintf(" %.3f", v["ssim"]) }
END { printf "\n| method | PSNR (dB) | SSIM | per video PSNR | per video SSIM |\n| --- | --- | --- | --- | --- |\n";
      split("fixed online", order, " ");
      for (j = 1; j <= 2; j++) { m = order[j]; if (n[m]) printf "| %s | %.2f | %.4f |%s |%s |\n", (m == "fixed" ? "Fixed model (no TTT)" : "Online TTT-MAE"), p[m] / n[m], q[m] / n[m], ps[m], ss[m] } }
' "$OUT/results.txt"
