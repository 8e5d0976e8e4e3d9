#!/bin/sh
# Why does online TTT help (or not) on the generated world? Fixed vs online TTT with more
# learning rate, more steps per frame and bigger batches, on videos whose appearance drift
# grows from the default (--drift 1, close to what the training stills already vary) to
# far outside it (--drift 3), with the shipped default model; plus the bias-variance k*
# (--kstar) on every video.
# Usage: sh dev/study.sh [DEVICE] [FRAMES] [SEEDS] [DRIFTS]
#   (defaults: auto 200 "1 2 3" "1 2 3"; about 4 minutes on an H100)
# Prints "RESULT drift seed config mIoU ms/frame" per run, "KSTAR drift seed eta sigma2
# beta kstar" per video, then a table: mean and spread of mIoU per config and drift, and
# the mean gain over fixed on the same videos.
DEVICE=${1:-auto}
FRAMES=${2:-200}
SEEDS=${3:-"1 2 3"}
DRIFTS=${4:-"1 2 3"}
D=/tmp/ttt_study
make gen stream > /dev/null || exit 1
mkdir -p $D
: > $D/results.txt
for dr in $DRIFTS; do
    for s in $SEEDS; do
        V=$D/video_d${dr}_s$s
        rm -rf $V $V"_labels"
        ./gen video $V --frames $FRAMES --size 128x96 --seed $((100 + s)) --scene-every 100 --drift $dr > /dev/null || exit 1
        run() {   # config name, options
            name=$1; shift
            log=$D/${name}_d${dr}_s$s.log
            ./stream $V --out $D/out --device $DEVICE --seed $s "$@" > $log 2>&1 || { echo "FAILED $name d$dr s$s"; tail -3 $log; return; }
            miou=$(grep '^mIoU' $log | tail -1 | awk '{print $2}')
            ms=$(grep '^summary' $log | sed -E 's/.*: ([0-9.]+) ms\/frame.*/\1/')
            echo "RESULT $dr $s $name $miou $ms" | tee -a $D/results.txt
        }
        run fixed --mode fixed --kstar
        log=$D/fixed_d${dr}_s$s.log
        eta=$(grep '^  eta ' $log | sed 's/.*= //'); sg=$(grep '^  sigma^2 ' $log | sed 's/.*= //')
        be=$(grep '^  beta ' $log | sed 's/.*= //'); ks=$(grep '^kstar ' $log | awk '{print $2}')
        echo "KSTAR $dr $s $eta $sg $be $ks" | tee -a $D/results.txt
        run online --mode online
        run online_lr3e-4 --mode online --lr 3e-4
        run online_steps4 --mode online --steps 4
        run online_batch16 --mode online --batch 16
        run online_steps4_lr3e-4 --mode online --steps 4 --lr 3e-4
    done
done
echo "summary (mIoU mean +- sd over seeds; gain = mean of config - fixed on the same video):"
awk '
$1 == "RESULT" { key = $2 " " $4; n[key]++; s[key] += $5; ss[key] += $5 * $5; v[$2 " " $3 " " $4] = $5;
                 if (!($4 in seen)) { seen[$4] = 1; order[++nc] = $4 } drifts[$2] = 1 }
$1 == "KSTAR"  { kn[$2]++; ke[$2] += $4; kk[$2] += $7 }
END {
    for (d in drifts) {
        printf "drift %s (eta %.2f, k* %.2f):\n", d, ke[d] / kn[d], kk[d] / kn[d]
        for (i = 1; i <= nc; i++) {
            c = order[i]; key = d " " c
            if (!n[key]) continue
            m = s[key] / n[key]; sd = sqrt((ss[key] / n[key] - m * m) > 0 ? ss[key] / n[key] - m * m : 0)
            g = 0; ng = 0
            for (kv in v) { split(kv, p, " "); if (p[1] == d && p[3] == c && ((d " " p[2] " fixed") in v)) { g += v[kv] - v[d " " p[2] " fixed"]; ng++ } }
            printf "  %-22s %.4f +- %.4f   gain %+.4f\n", c, m, sd, ng ? g / ng : 0
        }
    }
}' $D/results.txt
