#!/bin/sh
# The paper's Table 1 / Table 4 rows and the window sweep (Fig. 4) on generated videos,
# with the shipped default model. Usage: sh dev/results.sh [DEVICE] [FRAMES] [SEEDS]
# Prints one line per run ("RESULT mode seed mIoU ms/frame") and the sweep tables.
# GEN_OPTS: extra ./gen video options, e.g. GEN_OPTS="--drift 0 --style-drift 3".
# Then the panoptic and instance rows ("RESULT panoptic_MODE seed PQ ms/frame", "RESULT
# instance_MODE seed AP ms/frame"): the same videos with panoptic labels (./gen --panoptic, the
# COCO Videos layout, every 10th frame annotated), ./stream --task panoptic|instance
# --score-every 10, the video score = mean per-frame PQ / AP (the released protocol), with
# PANOPTIC_MODEL (default data/model_panoptic.bin from dev/make_panoptic_model.sh; the
# semantic data/model.bin when it is absent).
DEVICE=${1:-auto}
FRAMES=${2:-200}
SEEDS=${3:-"1 2 3"}
make gen stream > /dev/null || exit 1
for s in $SEEDS; do
    V=/tmp/ttt_results/video$s
    rm -rf $V $V"_labels"
    ./gen video $V --frames $FRAMES --size 128x96 --seed $((100 + s)) --scene-every 100 $GEN_OPTS > /dev/null || exit 1
    run() {   # name, extra options
        name=$1; shift
        ./stream $V --out /tmp/ttt_results/out_$name$s --device $DEVICE --seed $s "$@" > /tmp/ttt_results/$name$s.log 2>&1 || { echo "FAILED $name $s"; tail -3 /tmp/ttt_results/$name$s.log; return; }
        miou=$(grep '^mIoU' /tmp/ttt_results/$name$s.log | tail -1 | awk '{print $2}')
        ms=$(grep '^summary' /tmp/ttt_results/$name$s.log | sed -E 's/.*: ([0-9.]+) ms\/frame.*/\1/')
        echo "RESULT $name $s $miou $ms"
    }
    run fixed --mode fixed
    run nomem --mode nomem
    run implicit --mode implicit
    run explicit --mode explicit --window 16
    run online --mode online --window 16
    run online_lr1e-3 --mode online --window 16 --lr 1e-3
    run shuffled --mode online --window 16 --shuffle
    run offline --mode offline --offline-steps $FRAMES
    ./stream $V --out /tmp/ttt_results/sweep$s --device $DEVICE --seed $s --mode online --window 1,2,4,8,16,32,64 > /tmp/ttt_results/sweep$s.log 2>&1
    echo "SWEEP seed $s"; grep -A9 "^window sweep" /tmp/ttt_results/sweep$s.log
    grep -i "offline" /tmp/ttt_results/offline$s.log | grep -i miou | tail -6
    grep "^frame drift" /tmp/ttt_results/online$s.log
done

# the panoptic and instance rows
PANOPTIC_MODEL=${PANOPTIC_MODEL:-data/model_panoptic.bin}
if [ ! -f "$PANOPTIC_MODEL" ]; then
    echo "note: $PANOPTIC_MODEL not found (sh dev/make_panoptic_model.sh); panoptic rows with the semantic data/model.bin"
    PANOPTIC_MODEL=data/model.bin
fi
for s in $SEEDS; do
    P=/tmp/ttt_results/coco_videos$s
    rm -rf $P
    ./gen video $P --panoptic --video-name v --frames $FRAMES --size 128x96 --seed $((100 + s)) --scene-every 100 $GEN_OPTS > /dev/null || exit 1
    for task in panoptic instance; do
        for mode in fixed nomem online; do
            name=${task}_$mode
            ./stream $P/raw_images/v --task $task --score-every 10 --model "$PANOPTIC_MODEL" --mode $mode --window 16 \
                --out /tmp/ttt_results/out_$name$s --device $DEVICE --seed $s > /tmp/ttt_results/$name$s.log 2>&1 || { echo "FAILED $name $s"; tail -3 /tmp/ttt_results/$name$s.log; continue; }
            score=$(grep '^RESULT task=' /tmp/ttt_results/$name$s.log | tail -1 | sed -E 's/.*video_(pq|ap)=([-0-9.na]+).*/\2/')
            ms=$(grep '^summary' /tmp/ttt_results/$name$s.log | sed -E 's/.*: ([0-9.]+) ms\/frame.*/\1/')
            echo "RESULT $name $s $score $ms"
        done
    done
done
