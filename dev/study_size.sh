#!/bin/sh
# Model size: does a bigger model gain more from TTT on the generated world? Trains the
# Swin-S config (f 48.8M, h 18.8M, g 18.7M parameters) jointly on the same 600 stills as
# the default model, then runs dev/study.sh with it (fixed, online, online batch 16).
# The checkpoint (about 350 MB) stays in /tmp. Usage: sh dev/study_size.sh [DEVICE]
# [STEPS] [SEEDS] [KINDS]; about 8 minutes on an H100 with the defaults. TRAIN_TIMEOUT=S
# stops training after S seconds (the last checkpoint, every 250 steps, is used).
DEVICE=${1:-auto}
STEPS=${2:-2000}
SEEDS=${3:-"1 2"}
KINDS=${4:-"d1 style3 look3"}
make gen train stream > /dev/null || exit 1
./gen stills /tmp/ttt_size/stills_train --n 600 --size 128x96 --seed 1 > /dev/null || exit 1
./gen stills /tmp/ttt_size/stills_val --n 60 --size 128x96 --seed 2 > /dev/null || exit 1
timeout ${TRAIN_TIMEOUT:-0} ./train --data /tmp/ttt_size/stills_train --val /tmp/ttt_size/stills_val --out /tmp/ttt_size/swin_s.bin \
        --size swin-s --classes 8 --steps "$STEPS" --batch 8 --crop 128x96 --lr 2e-4 --warmup 200 \
        --save-every 250 --seed 1 --device "$DEVICE" > /tmp/ttt_size/train.log 2>&1
echo "train exit $?"; grep -iE "miou|step +$STEPS|error" /tmp/ttt_size/train.log | tail -4
MODEL=/tmp/ttt_size/swin_s.bin CONFIGS="online online_batch16" sh dev/study.sh "$DEVICE" 200 "$SEEDS" "$KINDS"
