"""Test helper (test/test_convert.c): a damaged copy of a weights file for the converters.

IN is a detectron2 pickle ({"model": {name: ndarray}}) or a Hugging Face model folder
(config.json + model.safetensors); OUT is written in the same form. Each option may repeat:
  --drop REGEX      remove every key that REGEX matches whole
  --add KEY         add KEY as a float32 tensor of shape (3,)
  --transpose KEY   replace KEY by its transpose (a vector becomes a column)
Needs numpy only (dev/weights.py reads and writes safetensors).

usage: python3 test/mutate_weights.py IN OUT [--drop REGEX] [--add KEY] [--transpose KEY]
"""
import argparse
import os
import pickle
import re
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dev"))
from weights import read_safetensors, write_safetensors  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("input")
ap.add_argument("output")
ap.add_argument("--drop", action="append", default=[])
ap.add_argument("--add", action="append", default=[])
ap.add_argument("--transpose", action="append", default=[])
args = ap.parse_args()

folder = os.path.isdir(args.input)
if folder:
    sd = read_safetensors(os.path.join(args.input, "model.safetensors"))
else:
    with open(args.input, "rb") as f:
        obj = pickle.load(f, encoding="latin1")
    sd = obj["model"]
for pat in args.drop:
    gone = [k for k in sd if re.fullmatch(pat, k)]
    if not gone:
        sys.exit(f"mutate_weights: --drop {pat} matches no key")
    for k in gone:
        del sd[k]
for k in args.add:
    sd[k] = np.zeros(3, np.float32)
for k in args.transpose:
    a = sd[k]
    sd[k] = np.ascontiguousarray(a.T if a.ndim > 1 else a.reshape(-1, 1))
if folder:
    os.makedirs(args.output, exist_ok=True)
    shutil.copy(os.path.join(args.input, "config.json"), os.path.join(args.output, "config.json"))
    write_safetensors(os.path.join(args.output, "model.safetensors"), sd)
else:
    obj["model"] = sd
    with open(args.output, "wb") as f:
        pickle.dump(obj, f, protocol=4)
