#!/bin/sh
# Makes data/model_panoptic.bin, the small panoptic model of the generated world (8 classes:
# sky, ground, wall stuff; disc, box, triangle, pole, ring things, one segment per object):
# 600 panoptic stills (./gen stills --panoptic, the COCO 2017 layout), joint training (set
# loss on one target per segment + MAE) of the "default" config, as dev/make_default_model.sh
# does for the semantic model. Usage: sh dev/make_panoptic_model.sh [STEPS] [DEVICE]
# (about the default model's time on a GPU: 201 s for 3000 steps on an H100; PQ on the 60
# held-out stills is printed at the end)
set -e
STEPS=${1:-3000}
DEVICE=${2:-auto}
make gen train
./gen stills data/panoptic_stills --n 600 --size 128x96 --seed 1 --panoptic --split train
./gen stills data/panoptic_stills --n 60 --size 128x96 --seed 2 --panoptic --split val
./train --task panoptic --data data/panoptic_stills --val data/panoptic_stills --out data/model_panoptic.bin \
        --size default --steps "$STEPS" --batch 8 --crop 128x96 --lr 4e-4 --warmup 200 \
        --save-every 250 --seed 1 --device "$DEVICE"
