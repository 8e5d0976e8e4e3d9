"""Convert a Swin state dict (safetensors, or a PyTorch .pth/.pkl when torch is installed)
into the encoder weights file of ttt (swin_load_hf_export in swin.c reads it).

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
Missing per-stage output norms (classification checkpoints have none) become weight 1,
bias 0, with a warning. A 3-channel patch embedding becomes --in-chans channels (default 4,
RGB + mask indicator) with the extra input channels' weights zero, so the converted encoder
computes exactly the original function on RGB when the extra channel is ignored.

Output (little-endian): int32 header[256] = [20261122 (CKPT_MAGIC), 1 (CKPT_VERSION),
2 (CKPT_KIND_SWIN), in_chans, embed_dim, depths[4], num_heads[4], window, mlp_ratio, 0...],
then float32 parameters in the SwinParams order of swin.c:
  patch_w (E, 4, 4, in_chans), patch_b, patch_norm_w, patch_norm_b;
  per stage s: per block: norm1_w, norm1_b, qkv_w (3C, C) = [q; k; v], qkv_b,
  rel_table ((2w-1)^2, heads), proj_w, proj_b, norm2_w, norm2_b, fc1_w, fc1_b, fc2_w, fc2_b;
  out_norm_w[s], out_norm_b[s]; (s < 3) merge_norm_w, merge_norm_b, merge_w (2C, 4C).

usage: python3 dev/convert_swin.py IN.safetensors OUT.bin [--in-chans 4]
"""
import argparse
import re
import struct
import sys

import numpy as np

CKPT_MAGIC, CKPT_VERSION, CKPT_KIND_SWIN, HEADER_INTS = 20261122, 1, 2, 256


def load_state_dict(path):
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        return {k: np.asarray(v, dtype=np.float32) for k, v in load_file(path).items()
                if np.issubdtype(np.asarray(v).dtype, np.floating)}
    import torch  # .pth / .pkl checkpoints
    sd = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    out = {}
    for k, v in sd.items():
        v = v.detach().cpu().float().numpy() if hasattr(v, "detach") else np.asarray(v)
        if np.issubdtype(v.dtype, np.floating):
            out[k] = v.astype(np.float32)
    return out


def die(msg):
    print("error: " + msg, file=sys.stderr)
    sys.exit(1)


def convert(sd, in_chans):
    # find the backbone prefix from the patch embedding
    patch_key = None
    for k in sd:
        if k.endswith("embeddings.patch_embeddings.projection.weight") or k.endswith("patch_embed.proj.weight"):
            patch_key = k
            break
    if patch_key is None:
        die("no Swin patch embedding found (expected ...patch_embeddings.projection.weight "
            "or ...patch_embed.proj.weight)")
    hf = "patch_embeddings" in patch_key
    if hf:
        root = patch_key[: -len("embeddings.patch_embeddings.projection.weight")]
        base = root[: -len("swin.")] if root.endswith("swin.") else root  # hidden_states_norms
    else:
        root = base = patch_key[: -len("patch_embed.proj.weight")]

    def get(key):
        if key not in sd:
            die(f"missing tensor '{key}'")
        return sd[key]

    pw = get(patch_key)  # (E, Cin, 4, 4)
    E, src_chans, kh, kw = pw.shape
    if (kh, kw) != (4, 4):
        die(f"patch size {kh}x{kw}; only 4x4 is supported")
    if src_chans > in_chans:
        die(f"source has {src_chans} input channels, more than --in-chans {in_chans}")
    pw4 = np.zeros((E, in_chans, 4, 4), np.float32)
    pw4[:, :src_chans] = pw
    if hf:
        pb = get(root + "embeddings.patch_embeddings.projection.bias")
        pnw, pnb = get(root + "embeddings.norm.weight"), get(root + "embeddings.norm.bias")
        layer_fmt = root + "encoder.layers.{}."
    else:
        pb = get(root + "patch_embed.proj.bias")
        pnw, pnb = get(root + "patch_embed.norm.weight"), get(root + "patch_embed.norm.bias")
        layer_fmt = root + "layers.{}."

    # depths: count blocks per stage
    depths = []
    for s in range(4):
        pat = re.compile(re.escape(layer_fmt.format(s)) + r"blocks\.(\d+)\.")
        ids = {int(m.group(1)) for k in sd for m in [pat.match(k)] if m}
        if not ids or ids != set(range(len(ids))):
            die(f"stage {s}: blocks {sorted(ids)} are not 0..n-1")
        depths.append(len(ids))

    chunks = [pw4.transpose(0, 2, 3, 1), pb, pnw, pnb]
    heads, window, mlp_ratio = [], None, None
    for s in range(4):
        C = E << s
        for i in range(depths[s]):
            p = layer_fmt.format(s) + f"blocks.{i}."
            if p + "attention.q_proj.weight" in sd:  # HF 5.x runtime names
                n1, n2 = "layernorm_before", "layernorm_after"
                qkv_w = np.concatenate([get(p + f"attention.{x}_proj.weight") for x in "qkv"], 0)
                qkv_b = np.concatenate([get(p + f"attention.{x}_proj.bias") for x in "qkv"], 0)
                table = get(p + "attention.relative_position_bias.relative_position_bias_table")
                proj, fc1, fc2 = "attention.o_proj", "mlp.fc1", "mlp.fc2"
            elif p + "attention.self.query.weight" in sd:  # HF 4.x names
                n1, n2 = "layernorm_before", "layernorm_after"
                qkv_w = np.concatenate([get(p + f"attention.self.{x}.weight") for x in ("query", "key", "value")], 0)
                qkv_b = np.concatenate([get(p + f"attention.self.{x}.bias") for x in ("query", "key", "value")], 0)
                table = get(p + "attention.self.relative_position_bias_table")
                proj, fc1, fc2 = "attention.output.dense", "intermediate.dense", "output.dense"
            else:  # original Swin
                n1, n2 = "norm1", "norm2"
                qkv_w, qkv_b = get(p + "attn.qkv.weight"), get(p + "attn.qkv.bias")
                table = get(p + "attn.relative_position_bias_table")
                proj, fc1, fc2 = "attn.proj", "mlp.fc1", "mlp.fc2"
            if qkv_w.shape != (3 * C, C):
                die(f"{p}: qkv weight {qkv_w.shape}, expected {(3 * C, C)}")
            w = int(round((table.shape[0] ** 0.5 + 1) / 2))
            if (2 * w - 1) ** 2 != table.shape[0] or (window is not None and w != window):
                die(f"{p}: relative position table {table.shape} does not fit one window size")
            window = w
            if i == 0:
                heads.append(table.shape[1])
            f1w = get(p + fc1 + ".weight")
            mlp_ratio = f1w.shape[0] // C
            if f1w.shape[0] != mlp_ratio * C:
                die(f"{p}: MLP hidden size {f1w.shape[0]} is not a multiple of {C}")
            chunks += [get(p + n1 + ".weight"), get(p + n1 + ".bias"), qkv_w, qkv_b, table,
                       get(p + proj + ".weight"), get(p + proj + ".bias"),
                       get(p + n2 + ".weight"), get(p + n2 + ".bias"),
                       f1w, get(p + fc1 + ".bias"), get(p + fc2 + ".weight"), get(p + fc2 + ".bias")]
        # per-stage output norm
        cands = [base + f"hidden_states_norms.stage{s + 1}.", root + f"norm{s}."]
        found = [c for c in cands if c + "weight" in sd]
        if found:
            chunks += [get(found[0] + "weight"), get(found[0] + "bias")]
        else:
            print(f"warning: no output norm for stage {s + 1}; using weight 1, bias 0", file=sys.stderr)
            chunks += [np.ones(C, np.float32), np.zeros(C, np.float32)]
        if s < 3:
            d = layer_fmt.format(s) + "downsample."
            chunks += [get(d + "norm.weight"), get(d + "norm.bias"), get(d + "reduction.weight")]
    config = [in_chans, E] + depths + heads + [window, mlp_ratio]
    flat = np.concatenate([np.asarray(c, np.float32).reshape(-1) for c in chunks])
    return config, flat


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--in-chans", type=int, default=4)
    args = ap.parse_args()
    sd = load_state_dict(args.input)
    config, flat = convert(sd, args.in_chans)
    header = [CKPT_MAGIC, CKPT_VERSION, CKPT_KIND_SWIN] + config
    header += [0] * (HEADER_INTS - len(header))
    with open(args.output + ".tmp", "wb") as fp:
        fp.write(struct.pack(f"<{HEADER_INTS}i", *header))
        fp.write(flat.astype("<f4").tobytes())
    import os
    os.replace(args.output + ".tmp", args.output)
    print(f"wrote {args.output}: in_chans {config[0]}, embed {config[1]}, depths {config[2:6]}, "
          f"heads {config[6:10]}, window {config[10]}, mlp {config[11]}, {flat.size} params")


if __name__ == "__main__":
    main()
