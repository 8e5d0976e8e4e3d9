"""Convert a Swin state dict (safetensors, a detectron2 pickle of numpy arrays, or a PyTorch
.pth/.bin when torch is installed) into the encoder weights file of ttt (swin_load_hf_export
in swin.c reads it). The key mapping (swin_map) is shared with dev/convert_mask2former.py.

Recognised key schemes, found anywhere under a common prefix (so a full Mask2Former
checkpoint works too):
  - Hugging Face runtime names (transformers 5.x modules): embeddings.patch_embeddings.
    projection, encoder.layers.S.blocks.I.{layernorm_before, attention.{q,k,v,o}_proj,
    attention.relative_position_bias.relative_position_bias_table, layernorm_after,
    mlp.fc1, mlp.fc2}, encoder.layers.S.downsample.{norm, reduction}, hidden_states_norms.
    stageN (SwinBackbone / Mask2Former's pixel_level_module.encoder)
  - Hugging Face 4.x / save_pretrained names: attention.self.{query,key,value,
    relative_position_bias_table}, attention.output.dense, intermediate.dense, output.dense
  - original Swin / Mask2Former (detectron2) names: patch_embed.{proj,norm},
    layers.S.blocks.I.{norm1, attn.qkv, attn.relative_position_bias_table, attn.proj, norm2,
    mlp.fc1, mlp.fc2}, layers.S.downsample.{norm, reduction}, normS (per-stage output norms)
relative_position_index buffers are checked (they must be the standard index) and skipped.
Missing per-stage output norms (classification checkpoints have none) become weight 1,
bias 0, with a warning (this script only; the Mask2Former converter requires them). A
3-channel patch embedding becomes --in-chans channels (default 4, RGB + the indicator that
is 1 on visible pixels) with the extra input channels' weights zero, so the converted encoder
computes exactly the original function on RGB whatever the extra channel holds.
Every missing or mis-shaped tensor is listed before the script exits with status 1.

Output (little-endian): int32 header[256] = [20261122 (CKPT_MAGIC), 2 (CKPT_VERSION),
2 (CKPT_KIND_SWIN), in_chans, embed_dim, depths[4], num_heads[4], window, mlp_ratio, 0...],
then float32 parameters in the SwinParams order of swin.c:
  patch_w (E, 4, 4, in_chans), patch_b, patch_norm_w, patch_norm_b;
  per stage s: per block: norm1_w, norm1_b, qkv_w (3C, C) = [q; k; v], qkv_b,
  rel_table ((2w-1)^2, heads), proj_w, proj_b, norm2_w, norm2_b, fc1_w, fc1_b, fc2_w, fc2_b;
  out_norm_w[s], out_norm_b[s]; (s < 3) merge_norm_w, merge_norm_b, merge_w (2C, 4C).

usage: python3 dev/convert_swin.py IN.safetensors OUT.bin [--in-chans 4]
"""
import argparse
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from weights import Plan, die, first_shape, layer_indices, load_state_dict, write_checkpoint  # noqa: E402

CKPT_KIND_SWIN = 2
HF_PATCH = "embeddings.patch_embeddings.projection.weight"
ORIG_PATCH = "patch_embed.proj.weight"


def find_swin(sd):
    """(root, base, scheme) of the one Swin encoder in sd, or None: root = the prefix of its
    patch embedding, base = where Hugging Face keeps hidden_states_norms, scheme = 'hf5'
    (runtime names), 'hf4' (save_pretrained names) or 'orig' (original / detectron2)"""
    patch = sorted(k for k in sd if k.endswith(HF_PATCH) or k.endswith(ORIG_PATCH))
    if not patch:
        return None
    if len(patch) > 1:
        die("several Swin patch embeddings in one file: " + ", ".join(patch))
    k = patch[0]
    if k.endswith(HF_PATCH):
        root = k[: -len(HF_PATCH)]
        base = root[: -len("swin.")] if root.endswith("swin.") else root
        q5 = any(x.startswith(root + "encoder.layers.") and ".attention.q_proj." in x for x in sd)
        return root, base, "hf5" if q5 else "hf4"
    root = k[: -len(ORIG_PATCH)]
    return root, root, "orig"


def standard_rel_index(w):
    """Swin's relative_position_index for window w: (w*w, w*w) ints"""
    yx = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)
    rel = yx[:, :, None] - yx[:, None, :] + (w - 1)
    return rel[0] * (2 * w - 1) + rel[1]


def swin_map(plan, sd, root, base, scheme, in_chans, out_norms_required):
    """append f's tensors (SwinParams order) to plan; returns the SwinConfig fields
    [in_chans, embed_dim, depths[4], num_heads[4], window, mlp_ratio]"""
    hf = scheme != "orig"
    patch_key = root + (HF_PATCH if hf else ORIG_PATCH)
    shape = tuple(sd[patch_key].shape)
    if len(shape) != 4 or shape[2:] != (4, 4):
        die(f"'{patch_key}' has shape {shape}; only a 4x4 patch embedding (E, C, 4, 4) is supported")
    E, src_chans = shape[0], shape[1]
    if src_chans > in_chans:
        die(f"the patch embedding takes {src_chans} input channels, more than the {in_chans} of the model")
    layer_fmt = root + ("encoder.layers.{}." if hf else "layers.{}.")
    if scheme == "hf5":
        n1, n2, proj, fc1, fc2 = "layernorm_before", "layernorm_after", "attention.o_proj", "mlp.fc1", "mlp.fc2"
        table_name = "attention.relative_position_bias.relative_position_bias_table"
        index_names = ["attention.relative_position_bias.relative_position_index", "attention.relative_position_index"]
    elif scheme == "hf4":
        n1, n2, proj, fc1, fc2 = "layernorm_before", "layernorm_after", "attention.output.dense", "intermediate.dense", "output.dense"
        table_name = "attention.self.relative_position_bias_table"
        index_names = ["attention.self.relative_position_index"]
    else:
        n1, n2, proj, fc1, fc2 = "norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2"
        table_name = "attn.relative_position_bias_table"
        index_names = ["attn.relative_position_index"]

    # the config, read from the shapes (each from the first block that has the tensor)
    depths, heads, window, mlp_ratio = [], [], None, None
    for s in range(4):
        ids = layer_indices(sd, re.escape(layer_fmt.format(s)) + r"blocks\.")
        if not ids:
            die(f"no blocks of Swin stage {s} (keys {layer_fmt.format(s)}blocks.N.*)")
        depths.append(max(ids) + 1)
        blocks = [layer_fmt.format(s) + f"blocks.{i}." for i in range(depths[s])]
        t = first_shape(sd, [b + table_name for b in blocks])
        if t is None or len(t) != 2:
            die(f"cannot tell the heads of Swin stage {s}: no {blocks[0]}{table_name} (rows, heads)")
        w = int(round((t[0] ** 0.5 + 1) / 2))
        if (2 * w - 1) ** 2 != t[0] or (window is not None and w != window):
            die(f"Swin stage {s}: a relative position table of {t[0]} rows does not fit one window size")
        window = w
        heads.append(t[1])
        f = first_shape(sd, [b + fc1 + ".weight" for b in blocks])
        C = E << s
        if f is not None and mlp_ratio is None:
            if f[0] % C:
                die(f"Swin stage {s}: MLP hidden size {f[0]} is not a multiple of {C}")
            mlp_ratio = f[0] // C
    if mlp_ratio is None:
        die("cannot tell Swin's MLP ratio: no fc1 weight in any block")

    pw = plan.take(patch_key, (E, src_chans, 4, 4))
    if pw is not None:
        pw4 = np.zeros((E, in_chans, 4, 4), np.float32)
        pw4[:, :src_chans] = pw      # extra input channels: weight 0
        pw = pw4.transpose(0, 2, 3, 1)
    plan.put(pw, E * 16 * in_chans)
    pre = root + ("embeddings." if hf else "patch_embed.")
    plan.tensor(pre + ("patch_embeddings.projection.bias" if hf else "proj.bias"), (E,))
    plan.tensor(pre + "norm.weight", (E,))
    plan.tensor(pre + "norm.bias", (E,))
    T = (2 * window - 1) ** 2
    for s in range(4):
        C, Ch = E << s, (E << s) * mlp_ratio
        for i in range(depths[s]):
            p = layer_fmt.format(s) + f"blocks.{i}."
            plan.tensor(p + n1 + ".weight", (C,))
            plan.tensor(p + n1 + ".bias", (C,))
            if scheme == "hf5":
                plan.concat([p + f"attention.{x}_proj.weight" for x in "qkv"], [(C, C)] * 3)
                plan.concat([p + f"attention.{x}_proj.bias" for x in "qkv"], [(C,)] * 3)
            elif scheme == "hf4":
                plan.concat([p + f"attention.self.{x}.weight" for x in ("query", "key", "value")], [(C, C)] * 3)
                plan.concat([p + f"attention.self.{x}.bias" for x in ("query", "key", "value")], [(C,)] * 3)
            else:
                plan.tensor(p + "attn.qkv.weight", (3 * C, C))
                plan.tensor(p + "attn.qkv.bias", (3 * C,))
            plan.tensor(p + table_name, (T, heads[s]))
            plan.tensor(p + proj + ".weight", (C, C))
            plan.tensor(p + proj + ".bias", (C,))
            plan.tensor(p + n2 + ".weight", (C,))
            plan.tensor(p + n2 + ".bias", (C,))
            plan.tensor(p + fc1 + ".weight", (Ch, C))
            plan.tensor(p + fc1 + ".bias", (Ch,))
            plan.tensor(p + fc2 + ".weight", (C, Ch))
            plan.tensor(p + fc2 + ".bias", (C,))
            for name in index_names:   # a buffer we compute ourselves: must be the standard one
                if p + name in sd:
                    idx = sd[p + name]
                    if idx.shape != (window ** 2, window ** 2) or not np.array_equal(idx, standard_rel_index(window)):
                        plan.misshaped.append(f"{p + name}: not Swin's relative position index for window {window}")
                    plan.ignore(p + name, "buffer, recomputed")
        cands = [base + f"hidden_states_norms.stage{s + 1}.", root + f"norm{s}."]
        found = [c for c in cands if c + "weight" in sd or c + "bias" in sd]
        if found or out_norms_required:
            c = found[0] if found else cands[0 if hf else 1]
            plan.tensor(c + "weight", (C,))
            plan.tensor(c + "bias", (C,))
        else:
            print(f"warning: no output norm for Swin stage {s + 1}; using weight 1, bias 0", file=sys.stderr)
            plan.put(np.ones(C, np.float32), C)
            plan.put(np.zeros(C, np.float32), C)
        if s < 3:
            d = layer_fmt.format(s) + "downsample."
            plan.tensor(d + "norm.weight", (4 * C,))
            plan.tensor(d + "norm.bias", (4 * C,))
            plan.tensor(d + "reduction.weight", (2 * C, 4 * C))
    return [in_chans, E] + depths + heads + [window, mlp_ratio]


def convert(sd, in_chans):
    """(config, flat float32 parameters) of the Swin encoder in sd (extra keys are fine)"""
    found = find_swin(sd)
    if found is None:
        die(f"no Swin patch embedding found (expected ...{HF_PATCH} or ...{ORIG_PATCH})")
    plan = Plan(sd)
    config = swin_map(plan, sd, *found, in_chans, out_norms_required=False)
    plan.report(check_unused=False, what="the Swin encoder")
    return config, plan.flat()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--in-chans", type=int, default=4)
    args = ap.parse_args()
    sd, _ = load_state_dict(args.input)
    config, flat = convert(sd, args.in_chans)
    write_checkpoint(args.output, [0, 0, CKPT_KIND_SWIN] + config, flat)
    print(f"wrote {args.output}: in_chans {config[0]}, embed {config[1]}, depths {config[2:6]}, "
          f"heads {config[6:10]}, window {config[10]}, mlp {config[11]}, {flat.size} params")


if __name__ == "__main__":
    main()
