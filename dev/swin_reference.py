"""Reference outputs and gradients of Hugging Face's SwinBackbone (the encoder f).

Builds a tiny transformers SwinBackbone (4 input channels, window 7, all four stages out),
adds noise to every parameter (a fresh model has zero relative-position tables and unit
LayerNorms), runs a random input of an odd size (not a multiple of 4, stages whose sides
are not multiples of 7, a last stage smaller than one window) in float64 on the CPU in eval
mode, takes loss = sum_s sum(feature_map_s * R_s) for fixed random R_s, and writes one
little-endian binary file read by test/test_swin_ref.c:

  int32 header[32]: magic 0x4e495753 ("SWIN"), version 1, B, H, W, in_chans, embed_dim,
                    depths[4], num_heads[4], window, mlp_ratio, n_params, rest 0
  float32 params (n_params) in the SwinParams order of swin.c:
      patch_w (E, 4, 4, in_chans) [HF (E, in_chans, 4, 4) permuted], patch_b, patch_norm_w,
      patch_norm_b; per stage s: per block: norm1_w, norm1_b, qkv_w (3C, C) = [q; k; v],
      qkv_b, rel_table (169, heads), proj_w, proj_b, norm2_w, norm2_b, fc1_w, fc1_b, fc2_w,
      fc2_b; then out_norm_w[s], out_norm_b[s]; then (s < 3) merge_norm_w, merge_norm_b,
      merge_w (2C, 4C)
  float32 input (B, H, W, in_chans)                  channels-last
  float32 out[s] (B, Hs, Ws, C_s), s = 0..3         the LayerNorm'd stage outputs
  float32 R[s]   (B, Hs, Ws, C_s), s = 0..3         the loss weights
  float32 dinput (B, H, W, in_chans)
  float32 dparams (n_params), same order as params

usage: python3 dev/swin_reference.py OUT.bin [--check-converter]
  --check-converter: also save the model's state dict (runtime names, safetensors) and a
  save_pretrained copy (its serialised names), convert both with dev/convert_swin.py and
  compare with the parameters written to OUT.bin.
"""
import struct
import sys

import torch
import transformers
from transformers import SwinConfig
from transformers.models.swin.modeling_swin import SwinBackbone

torch.manual_seed(0)
args = [a for a in sys.argv[1:] if not a.startswith("--")]
out_path = args[0] if args else "swin_ref.bin"
print("transformers", transformers.__version__, "torch", torch.__version__)

B, CIN, H, W = 2, 4, 101, 139
E, DEPTHS, HEADS, WIN, MLP = 12, [2, 2, 2, 2], [2, 2, 4, 4], 7, 4

config = SwinConfig(
    num_channels=CIN, embed_dim=E, depths=DEPTHS, num_heads=HEADS, window_size=WIN,
    mlp_ratio=float(MLP), qkv_bias=True, hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0, drop_path_rate=0.0, hidden_act="gelu",
    use_absolute_embeddings=False, layer_norm_eps=1e-5,
    out_features=["stage1", "stage2", "stage3", "stage4"],
)
try:
    config._attn_implementation = "eager"
except Exception as e:  # older/newer config classes: the default path is fine too
    print("note: could not force eager attention:", e)
model = SwinBackbone(config)
model.eval()
model.double()

# noise on every parameter so nothing is trivially 0 or 1
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("relative_position_bias_table"):
            p.add_(0.5 * torch.randn_like(p))
        elif p.dim() == 1:
            p.add_(0.1 * torch.randn_like(p))
        else:
            p.add_(0.02 * torch.randn_like(p))

# our parameter order: (tensor, transform to our layout)
sw = model.swin
ours = []  # list of (name, parameter, function param -> our-layout tensor)
ident = lambda t: t
proj = sw.embeddings.patch_embeddings.projection
ours.append(("patch_w", proj.weight, lambda t: t.permute(0, 2, 3, 1)))
ours.append(("patch_b", proj.bias, ident))
ours.append(("patch_norm_w", sw.embeddings.norm.weight, ident))
ours.append(("patch_norm_b", sw.embeddings.norm.bias, ident))
qkv_groups = []  # (index in ours, q, k, v) for concatenated tensors
for s, stage in enumerate(sw.encoder.layers):
    for i, blk in enumerate(stage.blocks):
        a = blk.attention
        pre = f"s{s}b{i}."
        ours.append((pre + "norm1_w", blk.layernorm_before.weight, ident))
        ours.append((pre + "norm1_b", blk.layernorm_before.bias, ident))
        ours.append((pre + "qkv_w", (a.q_proj.weight, a.k_proj.weight, a.v_proj.weight), None))
        ours.append((pre + "qkv_b", (a.q_proj.bias, a.k_proj.bias, a.v_proj.bias), None))
        ours.append((pre + "rel_table", a.relative_position_bias.relative_position_bias_table, ident))
        ours.append((pre + "proj_w", a.o_proj.weight, ident))
        ours.append((pre + "proj_b", a.o_proj.bias, ident))
        ours.append((pre + "norm2_w", blk.layernorm_after.weight, ident))
        ours.append((pre + "norm2_b", blk.layernorm_after.bias, ident))
        ours.append((pre + "fc1_w", blk.mlp.fc1.weight, ident))
        ours.append((pre + "fc1_b", blk.mlp.fc1.bias, ident))
        ours.append((pre + "fc2_w", blk.mlp.fc2.weight, ident))
        ours.append((pre + "fc2_b", blk.mlp.fc2.bias, ident))
    norm = model.hidden_states_norms[f"stage{s + 1}"]
    ours.append((f"out_norm_w{s}", norm.weight, ident))
    ours.append((f"out_norm_b{s}", norm.bias, ident))
    if s < 3:
        ds = stage.downsample
        ours.append((f"merge_norm_w{s}", ds.norm.weight, ident))
        ours.append((f"merge_norm_b{s}", ds.norm.bias, ident))
        ours.append((f"merge_w{s}", ds.reduction.weight, ident))

# every parameter the backbone uses is exported exactly once (swin.layernorm is unused)
used = set()
for _, t, _ in ours:
    for p in (t if isinstance(t, tuple) else (t,)):
        used.add(id(p))
for name, p in model.named_parameters():
    if id(p) not in used and not name.startswith("swin.layernorm."):
        raise SystemExit(f"parameter {name} {tuple(p.shape)} is not exported")
params_list = [p for _, t, _ in ours for p in (t if isinstance(t, tuple) else (t,))]
assert len(set(map(id, params_list))) == len(params_list)


def to_ours(entry, grads=None):
    """flatten one entry in our layout; grads maps id(param) -> gradient instead of value"""
    _, t, fn = entry
    get = (lambda p: grads[id(p)]) if grads is not None else (lambda p: p.detach())
    if isinstance(t, tuple):
        return torch.cat([get(p) for p in t], 0).reshape(-1)
    return fn(get(t)).reshape(-1)


x = torch.randn(B, CIN, H, W, dtype=torch.float64)
x[:, 3] = (torch.rand(B, H, W) < 0.5).double()  # mask-indicator-like 4th channel
x.requires_grad_(True)
feats = model(x).feature_maps
assert len(feats) == 4
R = [torch.randn_like(f) for f in feats]
loss = sum((f * r).sum() for f, r in zip(feats, R))
grads = torch.autograd.grad(loss, [x] + params_list, allow_unused=True)
dx = grads[0]
gmap = {}
for p, g in zip(params_list, grads[1:]):
    gmap[id(p)] = g if g is not None else torch.zeros_like(p)
for s, f in enumerate(feats):
    print(f"stage {s + 1}: {tuple(f.shape)}")

nhwc = lambda t: t.detach().permute(0, 2, 3, 1).reshape(-1)
param_vec = torch.cat([to_ours(e) for e in ours])
dparam_vec = torch.cat([to_ours(e, gmap) for e in ours])
n_params = param_vec.numel()
print("n_params", n_params, "loss", loss.item())

header = [0x4E495753, 1, B, H, W, CIN, E] + DEPTHS + HEADS + [WIN, MLP, n_params]
header += [0] * (32 - len(header))
with open(out_path, "wb") as fp:
    fp.write(struct.pack("<32i", *header))
    chunks = [param_vec, nhwc(x)] + [nhwc(f) for f in feats] + [nhwc(r) for r in R]
    chunks += [nhwc(dx), dparam_vec]
    for c in chunks:
        fp.write(c.to(torch.float32).contiguous().numpy().tobytes())
print("wrote", out_path)

if "--check-converter" in sys.argv:
    import importlib.util
    import os
    import tempfile
    from safetensors.torch import save_file
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("convert_swin", os.path.join(here, "convert_swin.py"))
    cs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cs)
    tmp = tempfile.mkdtemp()
    model.float()
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp + "/runtime.safetensors")
    files = [tmp + "/runtime.safetensors"]
    try:
        model.save_pretrained(tmp + "/pretrained")
        files += [os.path.join(tmp, "pretrained", f) for f in os.listdir(tmp + "/pretrained")
                  if f.endswith(".safetensors")]
    except Exception as e:
        print("save_pretrained failed:", e)
    ref = param_vec.to(torch.float32).numpy()
    for f in files:
        try:
            sd, _ = cs.load_state_dict(f)
            print(os.path.basename(f), "keys e.g.", sorted(sd)[:2], sorted(sd)[-2:])
            config, flat = cs.convert(sd, CIN)
            diff = float(abs(flat - ref).max()) if flat.size == ref.size else float("nan")
            print(f"converter on {os.path.basename(f)}: config {config}, n {flat.size} vs {ref.size}, "
                  f"max |diff| {diff:.3e}", "OK" if diff == 0.0 else "MISMATCH")
        except SystemExit as e:
            print(f"converter on {os.path.basename(f)} exited:", e)
        except Exception as e:
            print(f"converter on {os.path.basename(f)} failed:", repr(e))
