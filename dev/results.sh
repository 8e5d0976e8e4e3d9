#!/bin/sh
# The paper's Table 1 on generated videos: every row, in the paper's order and grouping,
# with time per frame, over seeds and drift kinds ("worlds"); then Section 5.1's temporal
# smoothing and majority vote, and (EXTRA=1) the memory ablations and the window sweep.
#   Independent frames:  Main Task Only, MAE Joint Training, TTT-MAE No Mem.
#   Entire video:        Offline TTT-MAE All Frames
#   Frames in a stream:  LN Adapt, Tent, Tent-Class, Self-Train, Self-Train-Class, Online TTT-MAE
# Usage: sh dev/results.sh [DEVICE] [FRAMES] [SEEDS] [WORLDS]
#   DEVICE  cpu | cuda | auto (default auto)
#   FRAMES  frames per video (default 200; a new scene every FRAMES/2 frames)
#   SEEDS   video seeds (default "1 2 3": ./gen video --seed 100+s)
#   WORLDS  any of default (the generator's drift) and style3 (--drift 0 --style-drift 3: the
#           class cues drift, where TTT helps; see BENCHMARKS.md); default "default style3"
# Environment: MODEL (default data/model.bin, the joint Y model); MAIN_ONLY (default
#   data/model_main_only.bin: the same recipe with ./train --no-mae; made first with
#   TRAIN_MAIN_ONLY=1 DEVICE, e.g. about 200 s on an H100: NO_MAE=1 sh dev/make_default_model.sh);
#   without it the Main Task Only row is skipped. EXTRA=1 adds implicit, explicit, shuffled,
#   lr 1e-3 and the window sweep. OUT (default /tmp/ttt_results) holds videos, outputs, logs.
#   ROWS="tent_lr1e-3 self_train_lr1e-5": only these rows, their RESULT lines added to those of
#   an earlier run in OUT (the tables then show every row run so far).
# Prints one "RESULT world row seed video_miou pooled_miou ms_per_frame" line per run, then a
# markdown table per world: mean +- sd over seeds of the pooled mIoU (every scored pixel of
# the video), its gain over fixed (mean over seeds of the difference on the same video), the
# paper's video mIoU (mean of per-frame mIoU) and ms per frame.
# Then (unless PANOPTIC=0) the panoptic and instance rows ("RESULT panoptic_MODE seed PQ
# ms/frame", "RESULT instance_MODE seed AP ms/frame"): videos with panoptic labels (./gen
# --panoptic, the COCO Videos layout, every 10th frame annotated), ./stream --task
# panoptic|instance --score-every 10, the video score = mean per-frame PQ / AP (the released
# protocol), with PANOPTIC_MODEL (default data/model_panoptic.bin from
# dev/make_panoptic_model.sh; the semantic data/model.bin when it is absent).
DEVICE=${1:-auto}
FRAMES=${2:-200}
SEEDS=${3:-"1 2 3"}
WORLDS=${4:-"default style3"}
MODEL=${MODEL:-data/model.bin}
MAIN_ONLY=${MAIN_ONLY:-data/model_main_only.bin}
OUT=${OUT:-/tmp/ttt_results}
make gen stream train > /dev/null || exit 1
mkdir -p $OUT || exit 1
if [ ! -f "$MAIN_ONLY" ] && [ -n "$TRAIN_MAIN_ONLY" ]; then
    NO_MAE=1 OUT_MODEL=$MAIN_ONLY sh dev/make_default_model.sh 3000 $DEVICE > $OUT/main_only_train.log 2>&1 ||
        { echo "FAILED training the main-task-only model (see $OUT/main_only_train.log)"; exit 1; }
fi
RESULTS=$OUT/results.txt
[ -z "$ROWS" ] && : > $RESULTS
SCENE=$((FRAMES / 2))
for world in $WORLDS; do
    case $world in
        default) GEN="" ;;
        style3) GEN="--drift 0 --style-drift 3" ;;
        *) echo "unknown world '$world' (default, style3)"; exit 1 ;;
    esac
    for s in $SEEDS; do
        V=$OUT/${world}_video$s
        rm -rf $V $V"_labels"
        ./gen video $V --frames $FRAMES --size 128x96 --seed $((100 + s)) --scene-every $SCENE $GEN $GEN_OPTS > /dev/null || exit 1
        run() {   # row name, then ./stream options
            name=$1; shift
            if [ -n "$ROWS" ] && ! echo " $ROWS " | grep -q " $name "; then return; fi
            log=$OUT/${world}_$name$s.log
            ./stream $V --out $OUT/out_${world}_$name$s --device $DEVICE --seed $s --model $MODEL "$@" > $log 2>&1 ||
                { echo "FAILED $world $name $s"; tail -3 $log; return; }
            line=$(grep '^RESULT' $log | tail -1)
            vm=$(echo "$line" | sed -E 's/.*video_miou=([^ ]+).*/\1/')
            pm=$(echo "$line" | sed -E 's/.*pooled_miou=([^ ]+).*/\1/')
            ms=$(echo "$line" | sed -E 's/.*ms_per_frame=([^ ]+).*/\1/')
            echo "RESULT $world $name $s $vm $pm $ms" | tee -a $RESULTS
        }
        # independent frames
        [ -f "$MAIN_ONLY" ] && run main_only --mode fixed --model $MAIN_ONLY
        run fixed --mode fixed
        run nomem --mode nomem
        # entire video
        run offline --mode offline --offline-steps $FRAMES
        # frames in a stream
        run ln_adapt --mode ln-adapt --window 16
        run tent --mode tent --window 16
        run tent_class --mode tent --window 16 --class-balance on
        run self_train --mode self-train --window 16
        run self_train_class --mode self-train --window 16 --class-balance on
        run online --mode online --window 16
        # the baselines at their own learning rate (one step per frame like the rest): Tent on
        # the norms alone barely moves at the TTT-MAE lr; Self-Train over-adapts at it
        run tent_lr1e-3 --mode tent --window 16 --lr 1e-3
        run tent_class_lr1e-3 --mode tent --window 16 --lr 1e-3 --class-balance on
        run self_train_lr1e-5 --mode self-train --window 16 --lr 1e-5
        run self_train_class_lr1e-5 --mode self-train --window 16 --lr 1e-5 --class-balance on
        # Section 5.1: temporal smoothing and majority vote
        run fixed_smooth3 --mode fixed --smooth 3
        run fixed_tta5 --mode fixed --tta 5
        run online_smooth3 --mode online --window 16 --smooth 3
        run online_tta5 --mode online --window 16 --tta 5
        if [ -n "$EXTRA" ]; then
            run implicit --mode implicit
            run explicit --mode explicit --window 16
            run shuffled --mode online --window 16 --shuffle
            run online_lr1e-3 --mode online --window 16 --lr 1e-3
            ./stream $V --out $OUT/sweep_${world}$s --device $DEVICE --seed $s --model $MODEL --mode online \
                --window 1,2,4,8,16,32,64 > $OUT/sweep_${world}$s.log 2>&1
            echo "SWEEP $world seed $s"; grep -A9 "^window sweep" $OUT/sweep_${world}$s.log
        fi
    done
done

# the tables: mean +- sd over seeds per world and row, rows in the order they ran
for world in $WORLDS; do
    echo
    echo "world $world ($(echo $SEEDS | wc -w) seeds, $FRAMES frames, device $DEVICE)"
    echo
    echo "| row | pooled mIoU per seed | pooled mIoU mean +- sd | gain over fixed | video mIoU mean +- sd | ms/frame |"
    echo "| --- | --- | --- | --- | --- | --- |"
    awk -v w=$world '
        $2 == w { if (!($3 in n)) extra[++k] = $3; n[$3]++; v[$3] += $5; v2[$3] += $5 * $5; p[$3] += $6; p2[$3] += $6 * $6;
                  ms[$3] += $7; per[$3] = per[$3] (per[$3] == "" ? "" : " / ") sprintf("%.4f", $6); ps[$3, $4] = $6 }
        function sd(s, s2, c) { return c > 1 ? sqrt((s2 - s * s / c) / (c - 1) > 0 ? (s2 - s * s / c) / (c - 1) : 0) : 0 }
        function row(r) {
            if (!(r in n) || (r in done)) return
            done[r] = 1; c = n[r]
            g = 0; gn = 0   # the mean over seeds of (row - fixed) on the same video
            for (key in ps) { split(key, kk, SUBSEP); if (kk[1] == r && (("fixed", kk[2]) in ps)) { g += ps[key] - ps["fixed", kk[2]]; gn++ } }
            gain = r == "fixed" || gn == 0 ? "" : sprintf("%+.4f", g / gn)
            printf("| %s | %s | %.4f +- %.4f | %s | %.4f +- %.4f | %.1f |\n", (r in label) ? label[r] : r, per[r],
                   p[r] / c, sd(p[r], p2[r], c), gain, v[r] / c, sd(v[r], v2[r], c), ms[r] / c)
        }
        END {
            label["main_only"] = "Main Task Only"; label["fixed"] = "MAE Joint Training (fixed)";
            label["nomem"] = "TTT-MAE No Mem."; label["offline"] = "Offline TTT-MAE All Frames";
            label["ln_adapt"] = "LN Adapt"; label["tent"] = "Tent"; label["tent_class"] = "Tent-Class";
            label["self_train"] = "Self-Train"; label["self_train_class"] = "Self-Train-Class";
            label["online"] = "Online TTT-MAE (implicit + explicit memory)";
            label["tent_lr1e-3"] = "Tent, lr 1e-3"; label["tent_class_lr1e-3"] = "Tent-Class, lr 1e-3";
            label["self_train_lr1e-5"] = "Self-Train, lr 1e-5"; label["self_train_class_lr1e-5"] = "Self-Train-Class, lr 1e-5";
            label["fixed_smooth3"] = "fixed + temporal smoothing (K=3)"; label["fixed_tta5"] = "fixed + majority vote (N=5)";
            label["online_smooth3"] = "online + temporal smoothing (K=3)"; label["online_tta5"] = "online + majority vote (N=5)";
            label["implicit"] = "implicit memory only"; label["explicit"] = "explicit memory only";
            label["shuffled"] = "online, shuffled frames"; label["online_lr1e-3"] = "online, lr 1e-3";
            print "| *independent frames* | | | | | |"; row("main_only"); row("fixed"); row("nomem")
            print "| *entire video* | | | | | |"; row("offline")
            print "| *frames in a stream* | | | | | |"; row("ln_adapt"); row("tent"); row("tent_class"); row("tent_lr1e-3")
            row("tent_class_lr1e-3"); row("self_train"); row("self_train_class"); row("self_train_lr1e-5")
            row("self_train_class_lr1e-5"); row("online")
            print "| *Section 5.1 and ablations* | | | | | |"
            for (i = 1; i <= k; i++) row(extra[i])
        }' $RESULTS
done

[ "${PANOPTIC:-1}" = 0 ] && exit 0
# the panoptic and instance rows
PANOPTIC_MODEL=${PANOPTIC_MODEL:-data/model_panoptic.bin}
if [ ! -f "$PANOPTIC_MODEL" ]; then
    echo "note: $PANOPTIC_MODEL not found (sh dev/make_panoptic_model.sh); panoptic rows with the semantic data/model.bin"
    PANOPTIC_MODEL=data/model.bin
fi
for s in $SEEDS; do
    P=$OUT/coco_videos$s
    rm -rf $P
    ./gen video $P --panoptic --video-name v --frames $FRAMES --size 128x96 --seed $((100 + s)) --scene-every 100 $GEN_OPTS > /dev/null || exit 1
    for task in panoptic instance; do
        for mode in fixed nomem online; do
            name=${task}_$mode
            ./stream $P/raw_images/v --task $task --score-every 10 --model "$PANOPTIC_MODEL" --mode $mode --window 16 \
                --out $OUT/out_$name$s --device $DEVICE --seed $s > $OUT/$name$s.log 2>&1 || { echo "FAILED $name $s"; tail -3 $OUT/$name$s.log; continue; }
            score=$(grep '^RESULT task=' $OUT/$name$s.log | tail -1 | sed -E 's/.*video_(pq|ap)=([-0-9.na]+).*/\2/')
            ms=$(grep '^summary' $OUT/$name$s.log | sed -E 's/.*: ([0-9.]+) ms\/frame.*/\1/')
            echo "RESULT $name $s $score $ms"
        done
    done
done
