#!/bin/sh
# Why does online TTT help (or not) on the generated world? Fixed vs online TTT with a
# higher learning rate, more steps per frame and bigger batches, on videos with different
# kinds and strengths of appearance drift, with the shipped default model; the mean TTT
# (reconstruction) loss of each run beside its mIoU, the loss of nomem (f0, g0 on every
# frame) as the baseline for it; and the bias-variance k* (--kstar) on every video.
# Usage: sh dev/study.sh [DEVICE] [FRAMES] [SEEDS] [KINDS]
#   KINDS (default "d1 d3 look3 style3"): d1 = --drift 1 (the default videos, close to
#   what the training stills vary), d3 = --drift 3, look3 = nuisance-only drift of 3
#   (light, colour cast, contrast, blur, noise), style3 = class-style-only drift of 3
#   (class colours, texture scale). About 3 minutes on an H100 with the defaults.
# Environment: MODEL (default data/model.bin), CONFIGS (default all of: fixed nomem online
#   online_lr3e-4 online_steps4 online_batch16; fixed always runs, with --kstar).
# Prints "RESULT kind seed config mIoU ms/frame mean-loss" per run, "KSTAR kind seed eta
# sigma2 beta kstar" per video, then per kind: mean +- sd of mIoU over seeds, the mean
# gain over fixed on the same videos, and the mean TTT loss.
DEVICE=${1:-auto}
FRAMES=${2:-200}
SEEDS=${3:-"1 2 3"}
KINDS=${4:-"d1 d3 look3 style3"}
MODEL=${MODEL:-data/model.bin}
CONFIGS=${CONFIGS:-"nomem online online_lr3e-4 online_steps4 online_batch16"}
D=/tmp/ttt_study
make gen stream > /dev/null || exit 1
mkdir -p $D
: > $D/results.txt
for kind in $KINDS; do
    case $kind in
        d1) opts="--drift 1" ;;
        d3) opts="--drift 3" ;;
        look3) opts="--drift 0 --look-drift 3" ;;
        style3) opts="--drift 0 --style-drift 3" ;;
        *) echo "unknown kind $kind"; exit 1 ;;
    esac
    for s in $SEEDS; do
        V=$D/video_${kind}_s$s
        rm -rf $V $V"_labels"
        ./gen video $V --frames $FRAMES --size 128x96 --seed $((100 + s)) --scene-every 100 $opts > /dev/null || exit 1
        run() {   # config name, options
            name=$1; shift
            log=$D/${name}_${kind}_s$s.log
            ./stream $V --model $MODEL --out $D/out --device $DEVICE --seed $s "$@" > $log 2>&1 || { echo "FAILED $name $kind s$s"; tail -3 $log; return; }
            miou=$(grep '^mIoU' $log | tail -1 | awk '{print $2}')
            ms=$(grep '^summary' $log | sed -E 's/.*: ([0-9.]+) ms\/frame.*/\1/')
            loss=$(grep '^frame .* loss ' $log | awk '{for (i = 1; i < NF; i++) if ($i == "loss") { s += $(i + 1); n++ } } END { if (n) printf "%.5f", s / n; else print "-" }')
            echo "RESULT $kind $s $name $miou $ms $loss" | tee -a $D/results.txt
        }
        run fixed --mode fixed --kstar
        log=$D/fixed_${kind}_s$s.log
        eta=$(grep '^  eta ' $log | sed 's/.*= //'); sg=$(grep '^  sigma^2 ' $log | sed 's/.*= //')
        be=$(grep '^  beta ' $log | sed 's/.*= //'); ks=$(grep '^kstar ' $log | awk '{print $2}')
        echo "KSTAR $kind $s $eta $sg $be $ks" | tee -a $D/results.txt
        for c in $CONFIGS; do
            case $c in
                nomem) run nomem --mode nomem ;;
                online) run online --mode online ;;
                online_lr3e-4) run online_lr3e-4 --mode online --lr 3e-4 ;;
                online_steps4) run online_steps4 --mode online --steps 4 ;;
                online_batch16) run online_batch16 --mode online --batch 16 ;;
                *) echo "unknown config $c"; exit 1 ;;
            esac
        done
    done
done
echo "summary (mIoU mean +- sd over seeds; gain = mean of config - fixed on the same video; mean TTT loss):"
awk '
$1 == "RESULT" { key = $2 " " $4; n[key]++; s[key] += $5; ss[key] += $5 * $5; L[key] += $7; v[$2 " " $3 " " $4] = $5;
                 if (!($4 in seen)) { seen[$4] = 1; order[++nc] = $4 } if (!($2 in kseen)) { kseen[$2] = 1; korder[++nk] = $2 } }
$1 == "KSTAR"  { kn[$2]++; ke[$2] += $4; kk[$2] += $7 }
END {
    for (j = 1; j <= nk; j++) {
        d = korder[j]
        printf "%s (eta %.2f, k* %.2f):\n", d, ke[d] / kn[d], kk[d] / kn[d]
        for (i = 1; i <= nc; i++) {
            c = order[i]; key = d " " c
            if (!n[key]) continue
            m = s[key] / n[key]; var = ss[key] / n[key] - m * m; sd = sqrt(var > 0 ? var * n[key] / (n[key] > 1 ? n[key] - 1 : 1) : 0)
            g = 0; ng = 0
            for (kv in v) { split(kv, p, " "); if (p[1] == d && p[3] == c && ((d " " p[2] " fixed") in v)) { g += v[kv] - v[d " " p[2] " fixed"]; ng++ } }
            if (c == "fixed") printf "  %-16s %.4f +- %.4f\n", c, m, sd
            else printf "  %-16s %.4f +- %.4f   gain %+.4f   TTT loss %.4f\n", c, m, sd, ng ? g / ng : 0, L[key] / n[key]
        }
    }
}' $D/results.txt
