"""Reading weight files and mapping their tensors by name into ttt's checkpoint layout.

Shared by dev/convert_swin.py and dev/convert_mask2former.py. Needs only numpy for
safetensors files and for detectron2 pickles of numpy arrays (what the released code and
detectron2's conversion scripts write); PyTorch files (.pth, .pt, .bin, or a pickle that
holds torch tensors) need torch.

A Plan collects our tensors in checkpoint order, each one built from named source tensors
whose shapes are checked. Nothing stops at the first problem: every missing key, every key
of the wrong shape and (report) every source key no tensor used is listed, then the
conversion exits with status 1. Nothing is guessed.
"""
import json
import os
import pickle
import re
import struct
import sys

import numpy as np

CKPT_MAGIC, CKPT_VERSION, HEADER_INTS = 20261122, 2, 256


def die(msg):
    print("error: " + msg, file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------
# files

_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
              "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_safetensors(path):
    """{name: ndarray} of a .safetensors file, with numpy alone (BF16 widened to float32)"""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        die(f"'{path}' is not a safetensors file (too short)")
    n = struct.unpack("<Q", raw[:8])[0]
    if n > len(raw) - 8:
        die(f"'{path}' is not a safetensors file (header of {n} bytes in a file of {len(raw)})")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        die(f"'{path}' is not a safetensors file ({e})")
    data = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt, shape, (b, e) = info["dtype"], info["shape"], info["data_offsets"]
        if e > len(data) or b > e:
            die(f"'{path}': tensor '{name}' lies outside the file (truncated?)")
        if dt == "BF16":
            a = (np.frombuffer(data[b:e], "<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt in _ST_DTYPES:
            a = np.frombuffer(data[b:e], _ST_DTYPES[dt])
        else:
            die(f"'{path}': tensor '{name}' has unsupported dtype {dt}")
        count = int(np.prod(shape)) if shape else 1
        if a.size != count:
            die(f"'{path}': tensor '{name}' has {a.size} values for shape {shape}")
        out[name] = a.reshape(shape).copy()
    return out


def write_safetensors(path, tensors):
    """{name: ndarray} -> a .safetensors file (float32 / int64 / ...), numpy alone"""
    inv = {np.dtype(v).str: k for k, v in _ST_DTYPES.items()}
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, np.asarray(a).dtype.newbyteorder("<"))
        code = inv.get(a.dtype.str)
        if code is None:
            raise ValueError(f"dtype {a.dtype} of '{name}'")
        b = a.tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def _to_numpy(v):
    if hasattr(v, "detach"):   # torch tensor
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        return v.numpy()
    return np.asarray(v)


def _unwrap(obj, path):
    """the {name: tensor} inside a checkpoint object ({"model": ...}, {"state_dict": ...})"""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        die(f"'{path}' holds no state dict (expected {{name: tensor}}, or one under 'model' / 'state_dict')")
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            die(f"'{path}': a state-dict key is not a string: {k!r}")
        a = _to_numpy(v)
        if a.dtype == object:
            die(f"'{path}': '{k}' is not a tensor ({type(v).__name__})")
        out[k] = a
    return out


def load_state_dict(path):
    """{name: ndarray} (dtypes as stored) of a weights file or a Hugging Face model folder;
    also returns that folder's config.json as a dict (or None)"""
    config = None
    if os.path.isdir(path):
        cfg_path = os.path.join(path, "config.json")
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                config = json.load(f)
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.exists(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            die(f"folder '{path}' has no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)")
    else:
        cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
        if path.endswith(".safetensors") and os.path.exists(cfg_path):
            with open(cfg_path) as f:
                config = json.load(f)
    if not os.path.isfile(path):
        die(f"cannot open '{path}'")
    with open(path, "rb") as f:
        magic = f.read(4)
    if path.endswith(".safetensors"):
        return read_safetensors(path), config
    if magic[:2] == b"PK" or not path.endswith(".pkl"):   # zip: torch.save; .pth/.pt/.bin
        try:
            import torch
        except ImportError:
            die(f"'{path}' is a PyTorch file: reading it needs torch (pip install torch)")
        obj = torch.load(path, map_location="cpu", weights_only=False)
        return _unwrap(obj, path), config
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except ModuleNotFoundError as e:
        die(f"'{path}' is a pickle of {e.name} objects: reading it needs {e.name} installed")
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        die(f"'{path}' is not a readable pickle ({e})")
    return _unwrap(obj, path), config


# ---------------------------------------------------------------------------
# the plan: our tensors in order, from named source tensors


class Plan:
    def __init__(self, sd):
        self.sd = sd
        self.chunks = []      # float32 arrays, our layout, in checkpoint order
        self.used = set()     # source keys some tensor asked for
        self.missing = []     # "key (expected shape)"
        self.misshaped = []   # "key: shape, expected shape"
        self.ignored = []     # "key (why)": known non-parameters, checked and skipped

    def take(self, key, shape):
        """the source tensor key as float32, checked against shape (None = the shape of a
        problem elsewhere: accept any); None when it is missing or mis-shaped"""
        self.used.add(key)
        if key not in self.sd:
            self.missing.append(f"{key} {tuple(shape) if shape is not None else ''}".rstrip())
            return None
        a = self.sd[key]
        if shape is not None and tuple(a.shape) != tuple(shape):
            self.misshaped.append(f"{key}: {tuple(a.shape)}, expected {tuple(shape)}")
            return None
        if not np.issubdtype(a.dtype, np.floating):
            self.misshaped.append(f"{key}: dtype {a.dtype}, expected a floating-point tensor")
            return None
        return a.astype(np.float32)

    def put(self, a, n):
        """append our tensor a (n floats), or n zeros as a placeholder when a is None"""
        if a is None:
            a = np.zeros(n, np.float32)
        a = np.asarray(a, np.float32).reshape(-1)
        assert a.size == n, (a.size, n)
        self.chunks.append(a)

    # common shapes of a source tensor -> ours
    def tensor(self, key, shape):
        """copied as is (linear weights (out, in), vectors, embeddings)"""
        self.put(self.take(key, shape), int(np.prod(shape)))

    def conv(self, key, O, C, K):
        """PyTorch conv weight (O, C, K, K) -> ours (O, K, K, C)"""
        a = self.take(key, (O, C, K, K))
        self.put(None if a is None else a.transpose(0, 2, 3, 1), O * K * K * C)

    def concat(self, keys, shapes):
        """several source tensors stacked along their first axis (q, k, v -> in_proj)"""
        parts = [self.take(k, s) for k, s in zip(keys, shapes)]
        n = sum(int(np.prod(s)) for s in shapes)
        self.put(None if any(p is None for p in parts) else np.concatenate(parts, 0), n)

    def ignore(self, key, why):
        self.used.add(key)
        self.ignored.append(f"{key} ({why})")

    def flat(self):
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)

    def report(self, check_unused=True, what="the checkpoint"):
        """print every problem and exit 1 if there is any"""
        unused = sorted(k for k in self.sd if k not in self.used) if check_unused else []
        if not (self.missing or self.misshaped or unused):
            return
        print(f"error: {what} does not match the model it describes; nothing was written", file=sys.stderr)
        for title, items in (("missing keys (expected by the model, absent from the file)", self.missing),
                             ("mis-shaped keys", self.misshaped),
                             ("unexpected keys (in the file, used by no tensor of the model)", unused)):
            if items:
                print(f"  {title}: {len(items)}", file=sys.stderr)
                for k in items:
                    print(f"    {k}", file=sys.stderr)
        sys.exit(1)


def layer_indices(sd, prefix_regex):
    """the integers i of keys matching prefix_regex + r'(\\d+)\\.' (sorted)"""
    pat = re.compile(prefix_regex + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd for m in [pat.match(k)] if m})


def first_shape(sd, keys):
    """the shape of the first of keys present in sd, or None"""
    for k in keys:
        if k in sd:
            return tuple(sd[k].shape)
    return None


def write_checkpoint(path, header, flat):
    """header ints (magic and version filled in) + float32 data, via path.tmp and a rename"""
    header = list(header)
    header[0], header[1] = CKPT_MAGIC, CKPT_VERSION
    header += [0] * (HEADER_INTS - len(header))
    assert len(header) == HEADER_INTS
    tmp = path + ".tmp"
    with open(tmp, "wb") as fp:
        fp.write(struct.pack(f"<{HEADER_INTS}i", *header))
        fp.write(np.asarray(flat, "<f4").tobytes())
    os.replace(tmp, path)
