"""Whole-model reference of Mask2Former with a Swin backbone (Hugging Face transformers), for
dev/convert_mask2former.py and ttt's f + h + g (test/test_m2f_model_ref.c checks it).

Builds three Hugging Face Mask2FormerForUniversalSegmentation models with random weights,
every parameter noised (a fresh model has zero offsets and attention weights, unit norms...):
  hf4: the backbone takes 4 channels (num_channels=4), as the released Y's f;
  hf3: the same weights with the usual 3-channel backbone (hf4's patch embedding without its
       4th input channel);
  hfg: a 48-query model whose pixel decoder and transformer decoder play g (its backbone is
       hf4's; its class head is dropped, as the released MAE head has none).
Runs them in float64 on the CPU (eval mode) on one input x (B, 4, H, W): RGB N(0, 1) and a 4th
channel of 0/1 blocks (1 = visible); hf3 sees x's RGB only. Records every prediction's class
and mask logits and the attention masks every decoder layer used: the C test feeds those
masks back (teacher forcing), since a mask bit decided by sigmoid(logit) < 0.5 can flip on
float noise (trap 4 of the reference notes) and change everything downstream.

Then writes the weights in the two source formats and converts them with
dev/convert_mask2former.py (the command line, as a user runs it):
  m2f_model_hf/ {config.json, model.safetensors}  hf3's state dict, runtime names
  m2f_model_hf.bin                                  converted: f, h; g absent (seed 1)
  m2f_model_d2.pkl                                  hf4 + hfg renamed to detectron2's names
                                                    ({"model": {name: ndarray}}, keys
                                                    backbone.*, sem_seg_head.*, recon_head.*,
                                                    with relative_position_index buffers and
                                                    criterion.empty_weight), the released code's
                                                    layout; renamed here by hand from the
                                                    released sources, detectron2 is not needed
  m2f_model_d2.bin                                  converted: f, h, g
  m2f_model_ref.bin                                 the input and the outputs:
    int32 header[32]: magic 0x4d32464d, version 1, B, H, W, H4, W4, L (predictions),
                      Q, K, QG (g's queries), T[3] (tokens of memory levels 1/32, 1/16, 1/8),
                      rest 0
    float32 x (B, H, W, 4) channels-last
    then for hf3 and for hf4 (h): class logits (L, B, Q, K+1), mask logits (L, B, Q, H4, W4),
         attention masks of layers i = 0..L-2, each (B, Q, T[i % 3]), 1 = blocked
    then g (hfg): attention masks (as above, QG queries), mask logits of the last prediction
         (B, QG, H4, W4)

Sizes: --size tiny (default): Swin embed 2, depths 2 1 2 1, heads 1 1 2 2, window 3, MLP 2;
width 8, GroupNorm 4 groups (Hugging Face hard-codes 32: nn.GroupNorm is patched while the
tiny models are built), 2 heads, 2 deformable layers (FFN 16), 4 queries, 3 decoder layers
(FFN 12), 3 classes, mask width 6; input 1 x 40 x 56 -> into test/data (committed, small).
--size swin-s: Swin-S and the published head (width 256, GN 32, 8 heads, 6 deformable layers,
FFN 1024, 100 queries, 9 decoder layers, FFN 2048, 19 classes), input 1 x 192 x 320 ->
into --out (default test/tmp/m2f_swin_s; about 1.5 GB, not committed).

usage: python3 dev/m2f_model_reference.py [--size tiny|swin-s] [--out DIR]
"""
import argparse
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import torch
import transformers
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--size", choices=["tiny", "swin-s"], default="tiny")
ap.add_argument("--out", default=None)
args = ap.parse_args()
out_dir = args.out or (os.path.join(ROOT, "test", "data") if args.size == "tiny" else os.path.join(ROOT, "test", "tmp", "m2f_swin_s"))
os.makedirs(out_dir, exist_ok=True)
print("transformers", transformers.__version__, "torch", torch.__version__, "->", out_dir)
torch.manual_seed(0)

if args.size == "tiny":
    SW = dict(embed_dim=2, depths=[2, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=3, mlp_ratio=2.0)
    HD = dict(hidden_dim=8, feature_size=8, mask_feature_size=6, num_queries=4, num_attention_heads=2,
              dim_feedforward=12, decoder_layers=4, encoder_layers=2, encoder_feedforward_dim=16, num_labels=3)
    GROUPS, B, H, W = 4, 1, 40, 56
else:
    SW = dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=7, mlp_ratio=4.0)
    HD = dict(hidden_dim=256, feature_size=256, mask_feature_size=256, num_queries=100, num_attention_heads=8,
              dim_feedforward=2048, decoder_layers=10, encoder_layers=6, encoder_feedforward_dim=1024, num_labels=19)
    GROUPS, B, H, W = 32, 1, 192, 320
QG = 48


def build(num_channels, num_queries, num_labels):
    bc = SwinConfig(num_channels=num_channels, qkv_bias=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                    drop_path_rate=0.0, hidden_act="gelu", use_absolute_embeddings=False, layer_norm_eps=1e-5,
                    out_features=["stage1", "stage2", "stage3", "stage4"], **SW)
    hd = dict(HD, num_queries=num_queries, num_labels=num_labels)
    cfg = Mask2FormerConfig(backbone_config=bc, dropout=0.0, pre_norm=False, enforce_input_projection=False,
                            common_stride=4, **hd)
    gn = torch.nn.GroupNorm

    class GroupNormG(gn):   # Hugging Face writes nn.GroupNorm(32, C); the tiny width needs fewer groups
        def __init__(self, num_groups, num_channels, *a, **k):
            super().__init__(GROUPS, num_channels, *a, **k)

    torch.nn.GroupNorm = GroupNormG
    try:
        model = Mask2FormerForUniversalSegmentation(cfg)
    finally:
        torch.nn.GroupNorm = gn
    model.eval()
    model.double()
    return model


def noise(model):
    """every parameter moved off its initial value: vectors by N(0, 0.2^2), matrices by
    N(0, (0.5 / sqrt(fan_in))^2)"""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 or "embed" in name or "relative_position_bias_table" in name:
                p.add_(0.2 * torch.randn_like(p))
            else:
                fan_in = p[0].numel()
                p.add_(0.5 / fan_in ** 0.5 * torch.randn_like(p))


hf4 = build(4, HD["num_queries"], HD["num_labels"])
noise(hf4)
hf3 = build(3, HD["num_queries"], HD["num_labels"])
sd4 = hf4.state_dict()
sd3 = {k: (v[:, :3].clone() if k.endswith("patch_embeddings.projection.weight") else v.clone()) for k, v in sd4.items()}
hf3.load_state_dict(sd3)
hfg = build(4, QG, 1)
noise(hfg)
with torch.no_grad():   # g shares f
    for (kg, pg), (k4, p4) in zip(hfg.model.pixel_level_module.encoder.named_parameters(),
                                  hf4.model.pixel_level_module.encoder.named_parameters()):
        assert kg == k4
        pg.copy_(p4)

# ---- the input: RGB N(0, 1), visibility 0/1 in blocks of 8 x 8 pixels
x = torch.randn(B, 4, H, W, dtype=torch.float64)
vis = (torch.rand(B, 1, (H + 7) // 8, (W + 7) // 8) < 0.7).double()
x[:, 3:] = vis.repeat_interleave(8, 2).repeat_interleave(8, 3)[:, :, :H, :W]


def run(model, pixel_values, with_class=True):
    layers = model.model.transformer_module.decoder.layers
    NH = HD["num_attention_heads"]
    captured = [None] * len(layers)
    hooks = []
    for i, layer in enumerate(layers):
        def hook(mod, a, kw, i=i):   # a keyword argument in transformers 5.x, positional in some versions
            m = kw["encoder_attention_mask"] if kw.get("encoder_attention_mask") is not None else a[6]
            captured[i] = m.detach().clone()
        hooks.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    with torch.no_grad():
        out = model.model(pixel_values=pixel_values, output_hidden_states=True)
        masks = [m.clone() for m in out.masks_queries_logits]
        classes = [model.class_predictor(h.transpose(0, 1)) for h in out.transformer_decoder_intermediate_states] \
            if with_class else None
    for h in hooks:
        h.remove()
    att = []
    for i, m in enumerate(captured):
        Bm, Q, T = m.shape
        m = m.reshape(B, NH, Q, T)
        assert bool((m == m[:, :1]).all()), "heads differ"
        att.append(m[:, 0].double())
        print(f"   layer {i}: {int(m[:, 0].sum())} of {m[:, 0].numel()} keys blocked")
    return classes, masks, att


print("hf3 (3-channel backbone):")
c3, m3, a3 = run(hf3, x[:, :3].contiguous())
print("hf4 (4-channel backbone):")
c4, m4, a4 = run(hf4, x)
print("hfg (g: 48 queries):")
_, mg, ag = run(hfg, x, with_class=False)
L, Q, K1 = len(m4), HD["num_queries"], HD["num_labels"] + 1
H4, W4 = m4[0].shape[-2:]
T = [a4[i].shape[-1] for i in range(3)]
print(f"L {L}, mask map {H4}x{W4}, memory tokens {T}, |mask logits| max {float(m4[-1].abs().max()):.3g}")

# ---- the weights, Hugging Face side: hf3's runtime state dict (float32) + config.json
hf_dir = os.path.join(out_dir, "m2f_model_hf")
os.makedirs(hf_dir, exist_ok=True)
from safetensors.torch import save_file  # noqa: E402
save_file({k: v.float().contiguous() for k, v in hf3.state_dict().items()}, os.path.join(hf_dir, "model.safetensors"))
hf3.config.to_json_file(os.path.join(hf_dir, "config.json"))


# ---- the weights, detectron2 side: hf4 (and hfg's head) under the released code's names
def rel_index(w):
    yx = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)
    rel = yx[:, :, None] - yx[:, None, :] + (w - 1)
    return (rel[0] * (2 * w - 1) + rel[1]).astype(np.int64)


def to_d2(sd, head, backbone):
    """Hugging Face runtime names -> detectron2 (backbone.*, head.pixel_decoder.*,
    head.predictor.*); q/k/v are stacked as PyTorch's nn.MultiheadAttention / Swin's qkv"""
    out, used = {}, set()
    # runtime names differ between transformers versions: bring 4.x-style Swin names to 5.x's
    # (q/k/v/o_proj, mlp.fc1/fc2, relative_position_bias.*), drop index buffers (made below)
    swin_5x = [(r"attention\.self\.query\.", "attention.q_proj."), (r"attention\.self\.key\.", "attention.k_proj."),
               (r"attention\.self\.value\.", "attention.v_proj."), (r"attention\.output\.dense\.", "attention.o_proj."),
               (r"intermediate\.dense\.", "mlp.fc1."), (r"(blocks\.\d+\.)output\.dense\.", r"\1mlp.fc2."),
               (r"attention\.self\.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table")]
    t = {}
    for k, v in sd.items():
        if k.endswith("relative_position_index"):
            continue
        if k.startswith("model.pixel_level_module.encoder.") and ".blocks." in k:
            for pat, rep in swin_5x:
                k = re.sub(pat, rep, k)
        t[k] = v.float().numpy()

    def mv(src, dst):
        used.add(src)
        out[dst] = t[src]

    def cat(srcs, dst):
        used.update(srcs)
        out[dst] = np.concatenate([t[s] for s in srcs], 0)

    enc = "model.pixel_level_module.encoder."
    if backbone:
        sw = enc + "swin." if enc + "swin.embeddings.patch_embeddings.projection.weight" in t else enc
        mv(sw + "embeddings.patch_embeddings.projection.weight", "backbone.patch_embed.proj.weight")
        mv(sw + "embeddings.patch_embeddings.projection.bias", "backbone.patch_embed.proj.bias")
        mv(sw + "embeddings.norm.weight", "backbone.patch_embed.norm.weight")
        mv(sw + "embeddings.norm.bias", "backbone.patch_embed.norm.bias")
        for s, depth in enumerate(SW["depths"]):
            for i in range(depth):
                a, b = sw + f"encoder.layers.{s}.blocks.{i}.", f"backbone.layers.{s}.blocks.{i}."
                for x_, y_ in (("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
                               ("attention.o_proj", "attn.proj"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                    mv(a + x_ + ".weight", b + y_ + ".weight")
                    mv(a + x_ + ".bias", b + y_ + ".bias")
                cat([a + f"attention.{q}_proj.weight" for q in "qkv"], b + "attn.qkv.weight")
                cat([a + f"attention.{q}_proj.bias" for q in "qkv"], b + "attn.qkv.bias")
                mv(a + "attention.relative_position_bias.relative_position_bias_table", b + "attn.relative_position_bias_table")
                out[b + "attn.relative_position_index"] = rel_index(SW["window_size"])   # a buffer in the released Swin
            if s < 3:
                for n in ("reduction.weight", "norm.weight", "norm.bias"):
                    mv(sw + f"encoder.layers.{s}.downsample.{n}", f"backbone.layers.{s}.downsample.{n}")
            for n in ("weight", "bias"):
                mv(enc + f"hidden_states_norms.stage{s + 1}.{n}", f"backbone.norm{s}.{n}")
                used.add(enc + "swin.layernorm." + n)   # SwinModel's final norm: not part of the released Swin
    else:
        used.update(k for k in t if k.startswith(enc))
    pd, pp = "model.pixel_level_module.decoder.", head + "pixel_decoder."
    rules = [(r"input_projections\.(\d)\.(\d)\.(weight|bias)", r"input_proj.\1.\2.\3"),
             (r"level_embed", r"transformer.level_embed"),
             (r"encoder\.layers\.(\d+)\.self_attn\.(\w+)\.(weight|bias)", r"transformer.encoder.layers.\1.self_attn.\2.\3"),
             (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"transformer.encoder.layers.\1.norm1.\2"),
             (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"transformer.encoder.layers.\1.linear1.\2"),
             (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"transformer.encoder.layers.\1.linear2.\2"),
             (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"transformer.encoder.layers.\1.norm2.\2"),
             (r"adapter_1\.0\.weight", r"adapter_1.weight"), (r"adapter_1\.1\.(weight|bias)", r"adapter_1.norm.\1"),
             (r"layer_1\.0\.weight", r"layer_1.weight"), (r"layer_1\.1\.(weight|bias)", r"layer_1.norm.\1"),
             (r"mask_projection\.(weight|bias)", r"mask_features.\1")]
    for k in t:
        if k.startswith(pd):
            for pat, rep in rules:
                if re.fullmatch(pat, k[len(pd):]):
                    mv(k, pp + re.sub(pat, rep, k[len(pd):]))
                    break
    tm, pr = "model.transformer_module.", head + "predictor."
    mv(tm + "queries_features.weight", pr + "query_feat.weight")
    mv(tm + "queries_embedder.weight", pr + "query_embed.weight")
    mv(tm + "level_embed.weight", pr + "level_embed.weight")
    for i in range(HD["decoder_layers"] - 1):
        a = tm + f"decoder.layers.{i}."
        ca, sa, ff = (pr + f"transformer_cross_attention_layers.{i}.", pr + f"transformer_self_attention_layers.{i}.",
                      pr + f"transformer_ffn_layers.{i}.")
        mv(a + "cross_attn.in_proj_weight", ca + "multihead_attn.in_proj_weight")
        mv(a + "cross_attn.in_proj_bias", ca + "multihead_attn.in_proj_bias")
        cat([a + f"self_attn.{q}_proj.weight" for q in "qkv"], sa + "self_attn.in_proj_weight")
        cat([a + f"self_attn.{q}_proj.bias" for q in "qkv"], sa + "self_attn.in_proj_bias")
        for n in ("weight", "bias"):
            mv(a + f"cross_attn.out_proj.{n}", ca + f"multihead_attn.out_proj.{n}")
            mv(a + f"cross_attn_layer_norm.{n}", ca + f"norm.{n}")
            mv(a + f"self_attn.out_proj.{n}", sa + f"self_attn.out_proj.{n}")
            mv(a + f"self_attn_layer_norm.{n}", sa + f"norm.{n}")
            mv(a + f"fc1.{n}", ff + f"linear1.{n}")
            mv(a + f"fc2.{n}", ff + f"linear2.{n}")
            mv(a + f"final_layer_norm.{n}", ff + f"norm.{n}")
    for n in ("weight", "bias"):
        mv(tm + f"decoder.layernorm.{n}", pr + f"decoder_norm.{n}")
        for j in range(3):
            mv(tm + f"decoder.mask_predictor.mask_embedder.{j}.0.{n}", pr + f"mask_embed.layers.{j}.{n}")
        if head == "sem_seg_head.":
            mv(f"class_predictor.{n}", pr + f"class_embed.{n}")
        else:
            used.add(f"class_predictor.{n}")   # the MAE head has no class head
    if head == "sem_seg_head.":
        mv("criterion.empty_weight", "criterion.empty_weight")
    else:
        used.add("criterion.empty_weight")
    left = sorted(k for k in t if k not in used)
    assert not left, left
    return out


d2 = to_d2(sd4, "sem_seg_head.", backbone=True)
d2.update(to_d2(hfg.state_dict(), "recon_head.", backbone=False))
with open(os.path.join(out_dir, "m2f_model_d2.pkl"), "wb") as f:
    pickle.dump({"model": d2, "__author__": "dev/m2f_model_reference.py"}, f, protocol=4)

# ---- convert both with the converter's command line
conv = [sys.executable, os.path.join(HERE, "convert_mask2former.py")]
gflag = ["--num-groups", str(GROUPS)]
subprocess.run(conv + [hf_dir, os.path.join(out_dir, "m2f_model_hf.bin"), "--force"] + gflag, check=True)
subprocess.run(conv + [os.path.join(out_dir, "m2f_model_d2.pkl"), os.path.join(out_dir, "m2f_model_d2.bin"),
                       "--num-heads", str(HD["num_attention_heads"]), "--force"] + gflag, check=True)

# ---- Hugging Face's serialised names (save_pretrained writes the 4.x Swin names of the Hub's
# checkpoints) must convert to the very same checkpoint
import tempfile  # noqa: E402
with tempfile.TemporaryDirectory() as tmp:
    hf3.float().save_pretrained(tmp)
    hf3.double()
    subprocess.run(conv + [tmp, os.path.join(tmp, "sp.bin")] + gflag, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(tmp, "sp.bin"), "rb") as f1, open(os.path.join(out_dir, "m2f_model_hf.bin"), "rb") as f2:
        assert f1.read() == f2.read(), "save_pretrained names convert to another checkpoint"
    print("save_pretrained copy converts to the same checkpoint")

# ---- the reference file
header = [0x4D32464D, 1, B, H, W, H4, W4, L, Q, K1 - 1, QG] + T
header += [0] * (32 - len(header))
with open(os.path.join(out_dir, "m2f_model_ref.bin"), "wb") as f:
    f.write(struct.pack("<32i", *header))

    def put(t):
        f.write(t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes())

    put(x.permute(0, 2, 3, 1))
    for c, m, a in ((c3, m3, a3), (c4, m4, a4)):
        put(torch.stack(c, 0))
        put(torch.stack(m, 0))
        for t in a:
            put(t)
    for t in ag:
        put(t)
    put(mg[-1])
for name in sorted(os.listdir(out_dir)):
    if name.startswith("m2f_model"):
        p = os.path.join(out_dir, name)
        size = sum(os.path.getsize(os.path.join(p, q)) for q in os.listdir(p)) if os.path.isdir(p) else os.path.getsize(p)
        print(f"  {name}: {size} bytes")
