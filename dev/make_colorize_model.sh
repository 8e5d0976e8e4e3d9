#!/bin/sh
# Reproduces data/model_colorize.bin, the small colorization model shipped for
# ./stream data/demo/ --task colorize: 600 generated stills (their colours, no labels used),
# joint training (Zhang et al.'s rebalanced colour loss on the gray stills + MAE) of the
# "default" config. About 20 minutes on two CPU cores.
# Usage: sh dev/make_colorize_model.sh [STEPS] [DEVICE]
set -e
STEPS=${1:-800}
DEVICE=${2:-auto}
OUT_MODEL=${OUT_MODEL:-data/model_colorize.bin}
make gen train
./gen stills data/stills_train --n 600 --size 128x96 --seed 1
./gen stills data/stills_val --n 60 --size 128x96 --seed 2
./train --task colorize --data data/stills_train --val data/stills_val --out "$OUT_MODEL" --size default \
        --steps "$STEPS" --batch 4 --crop 128x96 --lr 4e-4 --warmup 50 --save-every 100 --seed 1 --device "$DEVICE"
rm -f "$OUT_MODEL.opt"   # the resume state is not shipped
