#!/bin/sh
# Reproduces data/model.bin, the small default model shipped for the demo:
# 600 generated stills of the source appearance, joint training (set loss + MAE) of the
# "default" config. Usage: sh dev/make_default_model.sh [STEPS] [DEVICE]
# NO_MAE=1: the same recipe with ./train --no-mae (Table 1's Main Task Only), written to
# data/model_main_only.bin; OUT_MODEL overrides the output path.
set -e
STEPS=${1:-3000}
DEVICE=${2:-auto}
if [ -n "$NO_MAE" ]; then FLAGS=--no-mae; OUT_MODEL=${OUT_MODEL:-data/model_main_only.bin}; else FLAGS=; OUT_MODEL=${OUT_MODEL:-data/model.bin}; fi
make gen train
./gen stills data/stills_train --n 600 --size 128x96 --seed 1
./gen stills data/stills_val --n 60 --size 128x96 --seed 2
./train --data data/stills_train --val data/stills_val --out "$OUT_MODEL" --size default \
        --classes 8 --steps "$STEPS" --batch 8 --crop 128x96 --lr 4e-4 --warmup 200 \
        --save-every 250 --seed 1 --device "$DEVICE" $FLAGS
