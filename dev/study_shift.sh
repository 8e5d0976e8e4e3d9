#!/bin/sh
# Why does TTT not help on the generated world? One grid over three hypotheses:
#   (1) the test-time shift is too small: videos with and without a shift the source stills
#       never show (./gen video --shift NAME[:STRENGTH]);
#   (2) one step of lr 1e-4 on batch 4 is too little: online TTT (window 16) at other
#       learning rates, steps per frame and batch sizes;
#   plus the bias-variance estimate of the best window, ./stream --kstar, on every video.
# (Hypothesis (3), the model is small, needs a larger trained model: not covered here.)
#
# (dev/study.sh asks the same over kinds and strengths of the drift inside the source
# knobs, --style-drift / --look-drift; dev/study_size.sh with a larger model.)
#
# Usage: sh dev/study_shift.sh DEVICE [FRAMES] [SEEDS] [SHIFTS] [CONFIGS] [JOBS] [SIZE]
#   DEVICE   cpu | cuda | auto
#   FRAMES   frames per video (default 200)
#   SEEDS    video seeds s: ./gen video --seed 100+s, ./stream --seed s (default "1 2 3")
#   SHIFTS   NAME or NAME:STRENGTH of ./gen --shift; none = the plain drifting world
#            (default "none fog:0.7 night:0.7": fixed-mode mIoU about 0.87, 0.38, 0.53 on
#            24-frame videos, against 0.16, 0.17 at strength 1)
#   CONFIGS  online TTT configs LR:STEPS:BATCH (default
#            "1e-4:1:4 3e-4:1:4 1e-4:4:4 3e-4:4:4 1e-4:1:16"; 1e-4:1:4 is the default run)
#   JOBS     videos processed at once (default 3). The small model leaves a GPU mostly idle
#            between kernel launches, so concurrent processes overlap; the ms/frame they
#            print are then slower than alone.
#   SIZE     WxH (default 128x96)
# Environment: KSTAR_OPTS, extra options for the --kstar pass (e.g. "--kstar-masks 4");
#   MODEL (default data/model.bin).
#
# Every video: ./stream --mode fixed --kstar (the baseline and k*), then every config.
# Prints, as runs finish:
#   RESULT SHIFT SEED CONFIG MIOU MS_PER_FRAME IOU_CLASS0 ... IOU_CLASS7   (- = class absent)
#   KSTAR SHIFT SEED SIGMA2 BETA ETA BETA2ETA2 KSTAR
# and at the end, per shift and config: mIoU mean and sd over seeds, the gain over fixed
# (mean and sd over seeds of the per-seed difference), the per-class IoU gain, and k*.
# Logs and outputs under /tmp/ttt_study_shift/.
DEVICE=${1:?usage: sh dev/study_shift.sh DEVICE [FRAMES] [SEEDS] [SHIFTS] [CONFIGS] [JOBS] [SIZE]}
FRAMES=${2:-200}
SEEDS=${3:-"1 2 3"}
SHIFTS=${4:-"none fog:0.7 night:0.7"}
CONFIGS=${5:-"1e-4:1:4 3e-4:1:4 1e-4:4:4 3e-4:4:4 1e-4:1:16"}
JOBS=${6:-3}
SIZE=${7:-128x96}
MODEL=${MODEL:-data/model.bin}
D=/tmp/ttt_study_shift
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
make gen stream > /dev/null || exit 1
rm -rf $D && mkdir -p $D || exit 1

# expected time on an H100 (measured there: predict 4 ms/frame, one batch-4 TTT step
# ~9 ms; the rest is a guess): per run 2 s of start-up and 2 ms/frame of PNG output,
# a TTT step (7 + 0.5 B) ms, the --kstar pass 2 x 8 masks x ~16 frames x 12 ms, gen 1.5 s
# per 200 frames; concurrent jobs assumed to give at most 2x
n_videos=0
for s in $SEEDS; do for sh in $SHIFTS; do n_videos=$((n_videos + 1)); done; done
echo "$CONFIGS" | awk -v F=$FRAMES -v NV=$n_videos -v J=$JOBS -v SIZE=$SIZE '{
    px = 1.0; split(SIZE, wh, "x"); px = wh[1] * wh[2] / (128 * 96)
    per = 1.5 * F / 200 + 2 + F * 0.006 * px + 3.1           # gen, fixed + --kstar
    for (i = 1; i <= NF; i++) { split($i, c, ":"); per += 2 + F * (0.006 + c[2] * (0.007 + 0.0005 * c[3])) * px }
    serial = per * NV; par = J > 1 ? serial / (J < 2 ? J : 2) : serial
    printf("study: %d videos x (fixed + --kstar + %d configs), %d frames of %s, %d jobs at once\n", NV, NF, F, SIZE, J)
    printf("study: expected on an H100: about %.0f s one after another, about %.0f s with %d jobs (a GPU timing model; a CPU is far slower)\n", serial, par, J)
}'
t_start=$(date +%s)

# one video: generate, fixed + --kstar, every config; lines appended to $D/results.txt
video() {   # shift spec, seed
    spec=$1; s=$2
    name=${spec%%:*}; strength=1
    case $spec in *:*) strength=${spec#*:};; esac
    tag=$(echo "$spec" | tr ':' '_')
    V=$D/v_${tag}_$s
    ./gen video $V --frames $FRAMES --size $SIZE --seed $((100 + s)) --scene-every 100 \
        --shift $name --shift-strength $strength > $D/gen_${tag}_$s.log 2>&1 || { echo "FAILED gen $spec $s"; return; }
    one() {   # config name, options...
        cfg=$1; shift
        log=$D/${tag}_${s}_$(echo $cfg | tr ':' '_').log
        ./stream $V --model $MODEL --out $D/out_${tag}_${s}_$(echo $cfg | tr ':' '_') --device $DEVICE --seed $s "$@" > $log 2>&1 \
            || { echo "FAILED $spec $s $cfg: $(tail -1 $log)"; return; }
        miou=$(grep '^mIoU' $log | tail -1 | awk '{print $2}')
        ms=$(grep '^summary' $log | sed -E 's/.*: ([0-9.]+) ms\/frame.*/\1/')
        ious=$(grep -E '^  class +[0-9]+ ' $log | awk '{printf " %s", $3}')
        line="RESULT $spec $s $cfg $miou $ms$ious"
        echo "$line"; echo "$line" >> $D/results.txt
        if grep -q '^kstar_values sigma2=' $log; then
            line=$(grep '^kstar_values sigma2=' $log | sed -E 's/kstar_values sigma2=([^ ]+) beta=([^ ]+) eta=([^ ]+) beta2eta2=([^ ]+) kstar=([^ ]+)/\1 \2 \3 \4 \5/')
            line="KSTAR $spec $s $line"
            echo "$line"; echo "$line" >> $D/results.txt
        fi
    }
    one fixed --mode fixed --kstar $KSTAR_OPTS
    for c in $CONFIGS; do
        lr=$(echo $c | cut -d: -f1); steps=$(echo $c | cut -d: -f2); batch=$(echo $c | cut -d: -f3)
        one $c --mode online --window 16 --lr $lr --steps $steps --batch $batch
    done
}

# deal the videos round-robin to JOBS background workers
: > $D/results.txt
i=0
for s in $SEEDS; do for sh in $SHIFTS; do echo "$sh $s" >> $D/videos_$((i % JOBS)).txt; i=$((i + 1)); done; done
j=0
while [ $j -lt $JOBS ]; do
    if [ -f $D/videos_$j.txt ]; then
        ( while read sh s; do video $sh $s; done < $D/videos_$j.txt ) &
    fi
    j=$((j + 1))
done
wait
echo "study: done in $(( $(date +%s) - t_start )) s"

# tables
awk -v CONFIGS="fixed $CONFIGS" -v SHIFTS="$SHIFTS" '
function sd(sum, sum2, n) { return n > 1 ? sqrt((sum2 - sum * sum / n) / (n - 1) > 0 ? (sum2 - sum * sum / n) / (n - 1) : 0) : 0 }
$1 == "RESULT" {
    k = $2 SUBSEP $4; miou[k, $3] = $5; seen[k, $3] = 1
    for (c = 7; c <= NF; c++) iou[k, $3, c - 7] = $c
    if (NF - 6 > ncls) ncls = NF - 6
    seeds[$3] = 1
}
$1 == "KSTAR" { ks[$2] += $8; ks_s2[$2] += $4; ks_b[$2] += $5; ks_e[$2] += $6; ks_n[$2]++ }
END {
    nc = split(CONFIGS, cf, " "); nsh = split(SHIFTS, shf, " ")
    printf("\nmIoU per shift and config over seeds (mean +- sd); gain = config - fixed on the same video\n")
    printf("%-12s %-12s %2s  %-17s  %-17s\n", "shift", "config", "n", "mIoU", "gain over fixed")
    for (a = 1; a <= nsh; a++) for (b = 1; b <= nc; b++) {
        k = shf[a] SUBSEP cf[b]; kf = shf[a] SUBSEP "fixed"
        n = 0; s = 0; s2 = 0; ng = 0; g = 0; g2 = 0
        for (sd_ in seeds) if ((k, sd_) in seen && miou[k, sd_] != "") {
            n++; s += miou[k, sd_]; s2 += miou[k, sd_] ^ 2
            if ((kf, sd_) in seen && miou[kf, sd_] != "") { d = miou[k, sd_] - miou[kf, sd_]; ng++; g += d; g2 += d * d }
        }
        if (n == 0) { printf("%-12s %-12s %2d  -\n", shf[a], cf[b], 0); continue }
        printf("%-12s %-12s %2d  %.4f +- %.4f", shf[a], cf[b], n, s / n, sd(s, s2, n))
        if (cf[b] != "fixed" && ng > 0) printf("   %+.4f +- %.4f", g / ng, sd(g, g2, ng))
        printf("\n")
    }
    printf("\nIoU gain over fixed per class (mean over seeds where the class is present), classes 0..%d\n", ncls - 1)
    printf("%-12s %-12s", "shift", "config"); for (c = 0; c < ncls; c++) printf("  %7s", "c" c); printf("\n")
    for (a = 1; a <= nsh; a++) {
        kf = shf[a] SUBSEP "fixed"
        printf("%-12s %-12s", shf[a], "fixed (IoU)")
        for (c = 0; c < ncls; c++) {
            n = 0; s = 0
            for (sd_ in seeds) if ((kf, sd_, c) in iou && iou[kf, sd_, c] != "-") { n++; s += iou[kf, sd_, c] }
            if (n) printf("  %7.4f", s / n); else printf("  %7s", "-")
        }
        printf("\n")
        for (b = 2; b <= nc; b++) {
            k = shf[a] SUBSEP cf[b]
            printf("%-12s %-12s", shf[a], cf[b])
            for (c = 0; c < ncls; c++) {
                n = 0; s = 0
                for (sd_ in seeds) if ((k, sd_, c) in iou && (kf, sd_, c) in iou && iou[k, sd_, c] != "-" && iou[kf, sd_, c] != "-") { n++; s += iou[k, sd_, c] - iou[kf, sd_, c] }
                if (n) printf("  %+7.4f", s / n); else printf("  %7s", "-")
            }
            printf("\n")
        }
    }
    printf("\nbias-variance estimate at f0, g0 (mean over seeds); the window of every config is 16\n")
    printf("%-12s %10s %10s %10s %8s\n", "shift", "sigma^2", "beta", "eta", "k*")
    for (a = 1; a <= nsh; a++) if (ks_n[shf[a]])
        printf("%-12s %10.4g %10.4g %10.4g %8.3g\n", shf[a], ks_s2[shf[a]] / ks_n[shf[a]], ks_b[shf[a]] / ks_n[shf[a]], ks_e[shf[a]] / ks_n[shf[a]], ks[shf[a]] / ks_n[shf[a]])
}' $D/results.txt
