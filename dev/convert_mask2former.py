"""Convert a Mask2Former checkpoint with a Swin backbone into a ttt model checkpoint (f, h, g).

Sources, told apart by their keys:
  - Hugging Face Mask2FormerForUniversalSegmentation: a .safetensors file, a PyTorch state
    dict (.bin / .pth, needs torch) or a model folder (config.json + model.safetensors).
    Keys model.pixel_level_module.encoder.* (Swin, runtime or save_pretrained names),
    model.pixel_level_module.decoder.* (MSDeformAttn pixel decoder), model.transformer_module.*
    and class_predictor.*. There is no MAE head: the checkpoint is written with f and h only
    and a header mark "g absent, seed S"; model_load (mae.c) then initialises g exactly as
    model_init_random(S) does, i.e. as `./train --init CKPT --seed S` would (default S = 1).
    The backbone takes 3 channels: the 4th input channel of f (1 on visible pixels, all ones
    for the main task) gets weight 0, so it is a no-op: h(f(x)) is the Hugging Face model's
    function of the RGB input whatever that channel holds, until training changes the weights.
  - detectron2 pickles as the released code (renwang435/video-ttt-release) and detectron2 write
    them, {"model": {name: ndarray}} (a .pkl; numpy alone reads it), or the same names in a
    PyTorch file: backbone.* (4-channel Swin, original names), sem_seg_head.pixel_decoder.*
    and sem_seg_head.predictor.* (h), and the MAE head g of MaskFormerTTT under recon_head.
    (recon_head.pixel_decoder.*, recon_head.predictor.*: 48 queries and no class head, since
    mask_classification=False; our g has a class head of 1 class + no-object that nothing
    reads: it is written as zeros). Without recon_head.* keys, g is absent as for Hugging Face.
    The released code's 4th channel is 1 on visible pixels, as ours (checkpoint version 2).

Every key is mapped by name, with its shape checked against the config the file implies; known
non-parameters are checked and skipped (Swin's relative_position_index buffers, the loss's
criterion.empty_weight, the unused final LayerNorm of Hugging Face's SwinModel). Any missing,
mis-shaped or unexpected key: all of them are listed and the script exits with status 1
without writing anything. Only the MSDeformAttn pixel decoder is supported (every published
Mask2Former checkpoint uses it); a file with another pixel decoder is refused, naming it.

Not in the weights, so options: --num-heads (attention heads of the pixel decoder's encoder
and of the transformer decoder; default: num_attention_heads of a config.json beside the
weights, else 8 as published), --num-groups (GroupNorm groups, 32 as published). The sampling
points per head follow from the shapes (4 as published).

Output: the checkpoint format of mae.c (model_save / model_load): int32 header[256] =
[20261122, 2, 1 (model), num_classes, mae_patch 16, mask_ratio x 1e6, Swin config (12),
h config (13), g config (13), n_f, n_h, n_g, 0...; at 232 h's pixel decoder (1 = msdeform,
enc_layers, enc_ffn, n_points), at 236 g's; at 240 g absent (0 / 1), seed], then float32
[f | h | g] (or [f | h]) in the SwinParams / M2FParams orders of ttt.h; conv weights
(O, K, K, C), linear weights (out, in).

usage: python3 dev/convert_mask2former.py IN OUT.bin [--num-heads N] [--num-groups G]
       [--seed S] [--mask-ratio R] [--ignore REGEX ...] [--force]
"""
import argparse
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_swin import find_swin, swin_map  # noqa: E402
from weights import Plan, die, first_shape, layer_indices, load_state_dict, write_checkpoint  # noqa: E402

CKPT_KIND_MODEL = 1
PIXEL_DECODER_MSDEFORM = 1
PIXEL_DECODER_HEADER_AT = 232
G_ABSENT_AT = 240
MSD_LEVELS = 3
MAE_QUERIES = 48          # g: the 3 x 4 x 4 pixels of a 4 x 4 patch
MAE_CLASSES = 1           # g's unused class head: 1 class + no-object

# Names of h's tensors in the two schemes. {e}: encoder level 0..2 (1/32, 1/16, 1/8);
# {i}: layer; {j}: mask-embed MLP layer. Pixel decoder names follow the pixel decoder prefix,
# decoder names the decoder prefix; class_w / class_b are full names for Hugging Face.
HF_NAMES = {
    "pd": "model.pixel_level_module.decoder.", "dec": "model.transformer_module.",
    "input_w": "input_projections.{e}.0.weight", "input_b": "input_projections.{e}.0.bias",
    "input_gn_w": "input_projections.{e}.1.weight", "input_gn_b": "input_projections.{e}.1.bias",
    "pd_level_embed": "level_embed", "enc": "encoder.layers.{i}.",
    "ln1": "self_attn_layer_norm", "fc1": "fc1", "fc2": "fc2", "ln2": "final_layer_norm",
    "lateral_w": "adapter_1.0.weight", "lateral_gn": "adapter_1.1.",
    "output_w": "layer_1.0.weight", "output_gn": "layer_1.1.", "mask": "mask_projection.",
    "query_feat": "queries_features.weight", "query_embed": "queries_embedder.weight",
    "level_embed": "level_embed.weight", "layer": "decoder.layers.{i}.",
    "ca": "cross_attn.", "ca_ln": "cross_attn_layer_norm.", "sa": "self_attn.",
    "sa_ln": "self_attn_layer_norm.", "ffn1": "fc1.", "ffn2": "fc2.", "ffn_ln": "final_layer_norm.",
    "dec_ln": "decoder.layernorm.", "me": "decoder.mask_predictor.mask_embedder.{j}.0.",
    "class": "class_predictor.",
}
D2_NAMES = {
    "input_w": "input_proj.{e}.0.weight", "input_b": "input_proj.{e}.0.bias",
    "input_gn_w": "input_proj.{e}.1.weight", "input_gn_b": "input_proj.{e}.1.bias",
    "pd_level_embed": "transformer.level_embed", "enc": "transformer.encoder.layers.{i}.",
    "ln1": "norm1", "fc1": "linear1", "fc2": "linear2", "ln2": "norm2",
    "lateral_w": "adapter_1.weight", "lateral_gn": "adapter_1.norm.",
    "output_w": "layer_1.weight", "output_gn": "layer_1.norm.", "mask": "mask_features.",
    "query_feat": "query_feat.weight", "query_embed": "query_embed.weight",
    "level_embed": "level_embed.weight",
    "ca": "transformer_cross_attention_layers.{i}.multihead_attn.", "ca_ln": "transformer_cross_attention_layers.{i}.norm.",
    "sa": "transformer_self_attention_layers.{i}.self_attn.", "sa_ln": "transformer_self_attention_layers.{i}.norm.",
    "ffn1": "transformer_ffn_layers.{i}.linear1.", "ffn2": "transformer_ffn_layers.{i}.linear2.",
    "ffn_ln": "transformer_ffn_layers.{i}.norm.", "dec_ln": "decoder_norm.", "me": "mask_embed.layers.{j}.",
    "class": "class_embed.",
}


def d2_names(head):
    """detectron2 names of a MaskFormer head under head ('sem_seg_head.' or 'recon_head.')"""
    n = dict(D2_NAMES)
    n["pd"], n["dec"] = head + "pixel_decoder.", head + "predictor."
    n["layer"] = ""   # detectron2 keeps the three sublayers in separate lists
    n["class"] = head + "predictor.class_embed."
    return n


def head_config(sd, names, num_heads, num_groups, in_dims, what):
    """the M2FConfig of a head, read from its shapes (dies naming the key it needs)"""
    pd, dec = names["pd"], names["dec"]

    def need(keys, label):
        s = first_shape(sd, keys)
        if s is None:
            die(f"{what}: cannot tell its {label}: no {keys[0]}")
        return s

    Q, D = need([dec + names["query_feat"], dec + names["query_embed"]], "queries and width")
    layer = (dec + names["layer"]) if names["layer"] else dec + "transformer_ffn_layers.{i}."
    nl = layer_indices(sd, re.escape(layer.split("{i}")[0]))
    if not nl:
        die(f"{what}: no transformer decoder layers ({layer.format(i=0)}*)")
    enc = pd + names["enc"]
    ne = layer_indices(sd, re.escape(enc.split("{i}")[0]))
    if not ne:
        mark = [k for k in sd if k.startswith(pd)]
        die(f"{what}: no MSDeformAttn encoder layers ({enc.format(i=0)}*): only the MSDeformAttn pixel "
            f"decoder is supported" + (f" (this one has e.g. {mark[0]})" if mark else ""))
    NL, NE = max(nl) + 1, max(ne) + 1
    ffn1 = (dec + names["layer"] + names["ffn1"]) if names["layer"] else dec + names["ffn1"]
    F = need([ffn1.format(i=i) + "weight" for i in range(NL)], "FFN width")[0]
    FE = need([enc.format(i=i) + names["fc1"] + ".weight" for i in range(NE)], "encoder FFN width")[0]
    E = need([enc.format(i=i) + "self_attn.attention_weights.weight" for i in range(NE)], "sampling points")[0]
    MD = need([pd + names["mask"] + "weight", pd + names["mask"] + "bias"], "mask width")[0]
    if E % (MSD_LEVELS * num_heads):
        die(f"{what}: {E} attention weights per token are not {MSD_LEVELS} levels x {num_heads} heads x "
            f"points (set --num-heads)")
    P = E // (MSD_LEVELS * num_heads)
    if D % num_heads or D % num_groups or D % 2:
        die(f"{what}: width {D} does not fit {num_heads} heads and {num_groups} groups (set --num-heads, --num-groups)")
    kc = first_shape(sd, [names["class"] + "weight", names["class"] + "bias"])
    K = kc[0] - 1 if kc is not None else None
    return {"in_dims": list(in_dims), "conv_dim": D, "mask_dim": MD, "num_groups": num_groups,
            "num_queries": Q, "hidden_dim": D, "num_heads": num_heads, "ffn_dim": F,
            "dec_layers": NL, "num_classes": K, "enc_layers": NE, "enc_ffn": FE, "n_points": P}


def head_map(plan, names, c, with_class):
    """append a head's tensors (M2FParams order, msdeform pixel decoder first) to plan;
    with_class False: the class head is written as zeros (c["num_classes"] + 1 rows)"""
    pd, dec = names["pd"], names["dec"]
    D, MD, Q, F, NL, NE, FE = c["hidden_dim"], c["mask_dim"], c["num_queries"], c["ffn_dim"], c["dec_layers"], c["enc_layers"], c["enc_ffn"]
    E = c["num_heads"] * MSD_LEVELS * c["n_points"]
    K1 = c["num_classes"] + 1
    # the MSDeformAttn pixel decoder: input projections of levels e = 0, 1, 2 (1/32, 1/16, 1/8)
    for e in range(MSD_LEVELS):
        plan.conv(pd + names["input_w"].format(e=e), D, c["in_dims"][3 - e], 1)
    for part, shape in (("input_b", (D,)), ("input_gn_w", (D,)), ("input_gn_b", (D,))):
        for e in range(MSD_LEVELS):
            plan.tensor(pd + names[part].format(e=e), shape)
    plan.tensor(pd + names["pd_level_embed"], (MSD_LEVELS, D))
    enc = pd + names["enc"]
    for sub, shape in (("self_attn.value_proj.weight", (D, D)), ("self_attn.value_proj.bias", (D,)),
                       ("self_attn.sampling_offsets.weight", (2 * E, D)), ("self_attn.sampling_offsets.bias", (2 * E,)),
                       ("self_attn.attention_weights.weight", (E, D)), ("self_attn.attention_weights.bias", (E,)),
                       ("self_attn.output_proj.weight", (D, D)), ("self_attn.output_proj.bias", (D,)),
                       (names["ln1"] + ".weight", (D,)), (names["ln1"] + ".bias", (D,)),
                       (names["fc1"] + ".weight", (FE, D)), (names["fc1"] + ".bias", (FE,)),
                       (names["fc2"] + ".weight", (D, FE)), (names["fc2"] + ".bias", (D,)),
                       (names["ln2"] + ".weight", (D,)), (names["ln2"] + ".bias", (D,))):
        for i in range(NE):
            plan.tensor(enc.format(i=i) + sub, shape)
    plan.conv(pd + names["lateral_w"], D, c["in_dims"][0], 1)
    plan.tensor(pd + names["lateral_gn"] + "weight", (D,))
    plan.tensor(pd + names["lateral_gn"] + "bias", (D,))
    plan.conv(pd + names["output_w"], D, D, 3)
    plan.tensor(pd + names["output_gn"] + "weight", (D,))
    plan.tensor(pd + names["output_gn"] + "bias", (D,))
    plan.conv(pd + names["mask"] + "weight", MD, D, 1)
    plan.tensor(pd + names["mask"] + "bias", (MD,))
    # the masked-attention transformer decoder
    plan.tensor(dec + names["query_feat"], (Q, D))
    plan.tensor(dec + names["query_embed"], (Q, D))
    plan.tensor(dec + names["level_embed"], (3, D))
    lay = dec + names["layer"]
    ca, sa = lay + names["ca"], lay + names["sa"]
    hf_self = names is HF_NAMES   # Hugging Face's self-attention has separate q, k, v
    rows = [
        ("ca_in_w", lambda i: plan.tensor(ca.format(i=i) + "in_proj_weight", (3 * D, D))),
        ("ca_in_b", lambda i: plan.tensor(ca.format(i=i) + "in_proj_bias", (3 * D,))),
        ("ca_out_w", lambda i: plan.tensor(ca.format(i=i) + "out_proj.weight", (D, D))),
        ("ca_out_b", lambda i: plan.tensor(ca.format(i=i) + "out_proj.bias", (D,))),
        ("ca_ln_w", lambda i: plan.tensor((lay + names["ca_ln"]).format(i=i) + "weight", (D,))),
        ("ca_ln_b", lambda i: plan.tensor((lay + names["ca_ln"]).format(i=i) + "bias", (D,))),
        ("sa_in_w", lambda i: plan.concat([sa.format(i=i) + f"{x}_proj.weight" for x in "qkv"], [(D, D)] * 3)
            if hf_self else plan.tensor(sa.format(i=i) + "in_proj_weight", (3 * D, D))),
        ("sa_in_b", lambda i: plan.concat([sa.format(i=i) + f"{x}_proj.bias" for x in "qkv"], [(D,)] * 3)
            if hf_self else plan.tensor(sa.format(i=i) + "in_proj_bias", (3 * D,))),
        ("sa_out_w", lambda i: plan.tensor(sa.format(i=i) + "out_proj.weight", (D, D))),
        ("sa_out_b", lambda i: plan.tensor(sa.format(i=i) + "out_proj.bias", (D,))),
        ("sa_ln_w", lambda i: plan.tensor((lay + names["sa_ln"]).format(i=i) + "weight", (D,))),
        ("sa_ln_b", lambda i: plan.tensor((lay + names["sa_ln"]).format(i=i) + "bias", (D,))),
        ("fc1_w", lambda i: plan.tensor((lay + names["ffn1"]).format(i=i) + "weight", (F, D))),
        ("fc1_b", lambda i: plan.tensor((lay + names["ffn1"]).format(i=i) + "bias", (F,))),
        ("fc2_w", lambda i: plan.tensor((lay + names["ffn2"]).format(i=i) + "weight", (D, F))),
        ("fc2_b", lambda i: plan.tensor((lay + names["ffn2"]).format(i=i) + "bias", (D,))),
        ("ffn_ln_w", lambda i: plan.tensor((lay + names["ffn_ln"]).format(i=i) + "weight", (D,))),
        ("ffn_ln_b", lambda i: plan.tensor((lay + names["ffn_ln"]).format(i=i) + "bias", (D,))),
    ]
    for _, add in rows:         # each tensor stacked over the layers
        for i in range(NL):
            add(i)
    plan.tensor(dec + names["dec_ln"] + "weight", (D,))
    plan.tensor(dec + names["dec_ln"] + "bias", (D,))
    if with_class:
        plan.tensor(names["class"] + "weight", (K1, D))
        plan.tensor(names["class"] + "bias", (K1,))
    else:
        plan.put(np.zeros(K1 * D, np.float32), K1 * D)
        plan.put(np.zeros(K1, np.float32), K1)
    for j, out in enumerate((D, D, MD)):
        me = dec + names["me"].format(j=j)
        plan.tensor(me + "weight", (out, D))
        plan.tensor(me + "bias", (out,))


def head_num_params(c):
    """floats of a head in the M2FParams layout (mask2former.c) for config c"""
    D, MD, Q, F, NL, NE, FE = c["hidden_dim"], c["mask_dim"], c["num_queries"], c["ffn_dim"], c["dec_layers"], c["enc_layers"], c["enc_ffn"]
    E = c["num_heads"] * MSD_LEVELS * c["n_points"]
    K1 = c["num_classes"] + 1
    msd = sum(D * c["in_dims"][3 - e] for e in range(3)) + 9 * D + 3 * D
    msd += NE * (D * D + D + 2 * E * D + 2 * E + E * D + E + D * D + D + 2 * D + FE * D + FE + D * FE + D + 2 * D)
    msd += D * c["in_dims"][0] + 2 * D + 9 * D * D + 2 * D + MD * D + MD
    dec = 2 * Q * D + 3 * D + NL * (2 * (3 * D * D + 3 * D + D * D + D + 2 * D) + F * D + F + D * F + D + 2 * D)
    dec += 2 * D + K1 * D + K1 + 2 * (D * D + D) + MD * D + MD
    return msd + dec


def pack_head(c):
    return c["in_dims"] + [c["conv_dim"], c["mask_dim"], c["num_groups"], c["num_queries"], c["hidden_dim"],
                           c["num_heads"], c["ffn_dim"], c["dec_layers"], c["num_classes"]]


def convert(sd, hf_config, num_heads=None, num_groups=32, seed=1, mask_ratio=0.85, ignore=()):
    """(header ints, flat float32 data, summary text) of the checkpoint in sd; dies listing
    every problem"""
    hf = any(k.startswith("model.pixel_level_module.") for k in sd)
    d2 = any(k.startswith("sem_seg_head.") for k in sd)
    if hf == d2:
        die("cannot tell the checkpoint's naming: expected Hugging Face keys (model.pixel_level_module.*) "
            "or detectron2 keys (sem_seg_head.*)" + (", found both" if hf else ", found neither"))
    if num_heads is None:
        num_heads = (hf_config or {}).get("num_attention_heads", 8)
    plan = Plan(sd)
    found = find_swin(sd)
    if found is None:
        die("no Swin backbone: expected " + ("model.pixel_level_module.encoder.(swin.)embeddings.patch_embeddings."
            "projection.weight" if hf else "backbone.patch_embed.proj.weight"))
    want_root = ("model.pixel_level_module.encoder." if hf else "backbone.")
    if not found[0].startswith(want_root):
        die(f"the Swin patch embedding sits under '{found[0]}', not under '{want_root}'")
    swin = swin_map(plan, sd, *found, 4, out_norms_required=True)
    E = swin[1]
    in_dims = [E, 2 * E, 4 * E, 8 * E]
    n_f = len(plan.flat())
    names_h = HF_NAMES if hf else d2_names("sem_seg_head.")
    h = head_config(sd, names_h, num_heads, num_groups, in_dims, "h")
    if h["num_classes"] is None:
        die("h has no class head (" + names_h["class"] + "weight)")
    if not 1 <= h["num_classes"] <= 254:
        die(f"h has {h['num_classes']} classes; ttt supports 1 to 254")
    head_map(plan, names_h, h, with_class=True)
    n_h = len(plan.flat()) - n_f
    g = dict(h, num_queries=MAE_QUERIES, num_classes=MAE_CLASSES)
    g_present = d2 and any(k.startswith("recon_head.") for k in sd)
    if g_present:
        names_g = d2_names("recon_head.")
        g_file = head_config(sd, names_g, num_heads, num_groups, in_dims, "g (recon_head)")
        diff = [k for k in g if k not in ("num_classes",) and g_file[k] != g[k]]
        if diff:
            die("g (recon_head) is not h's architecture with 48 queries: " +
                ", ".join(f"{k} {g_file[k]} (h: {h[k]})" for k in diff))
        if g_file["num_classes"] is not None:
            die("g (recon_head) has a class head (" + names_g["class"] + "weight); the released MAE head has none")
        head_map(plan, names_g, g, with_class=False)
        n_g = len(plan.flat()) - n_f - n_h
    else:
        n_g = head_num_params(g)
    assert n_h == head_num_params(h) and (not g_present or n_g == head_num_params(g))
    # known non-parameters
    for k in sd:
        if k.endswith("criterion.empty_weight") and k.count(".") == 1:
            plan.ignore(k, "loss weights of the training criterion")
        elif hf and re.fullmatch(r"model\.pixel_level_module\.encoder\.swin\.layernorm\.(weight|bias)", k):
            plan.ignore(k, "SwinModel's final LayerNorm, which the backbone never applies")
        elif any(re.fullmatch(r, k) for r in ignore):
            plan.ignore(k, "--ignore")
    plan.report(what="the checkpoint")
    header = [0, 0, CKPT_KIND_MODEL, h["num_classes"], 16, int(round(mask_ratio * 1e6))] + swin
    header += pack_head(h) + pack_head(g) + [n_f, n_h, n_g]
    header += [0] * (PIXEL_DECODER_HEADER_AT - len(header))
    for c in (h, g):
        header += [PIXEL_DECODER_MSDEFORM, c["enc_layers"], c["enc_ffn"], c["n_points"]]
    header += [0 if g_present else 1, 0 if g_present else seed]
    assert len(header) == G_ABSENT_AT + 2
    summary = (f"{'Hugging Face' if hf else 'detectron2'} Mask2Former, Swin embed {E} depths {swin[2:6]} "
               f"heads {swin[6:10]} window {swin[10]}; h: {h['num_classes']} classes, {h['num_queries']} queries, "
               f"width {h['hidden_dim']}, {h['num_heads']} heads, {h['dec_layers']} decoder layers, msdeform "
               f"{h['enc_layers']} layers x {h['n_points']} points; g: "
               + ("from the file (recon_head)" if g_present else f"absent, initialised at load with seed {seed}")
               + f"; {len(plan.ignored)} non-parameter keys skipped")
    return header, plan.flat(), summary, plan.ignored


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", help=".pkl / .safetensors / .pth / .bin file, or a Hugging Face model folder")
    ap.add_argument("output", help="the ttt checkpoint to write")
    ap.add_argument("--num-heads", type=int, default=None,
                    help="attention heads (default: config.json's num_attention_heads, else 8)")
    ap.add_argument("--num-groups", type=int, default=32, help="GroupNorm groups (default 32)")
    ap.add_argument("--seed", type=int, default=1, help="seed of g's initialisation when the file has no g (default 1)")
    ap.add_argument("--mask-ratio", type=float, default=0.85, help="mask ratio recorded in the header (default 0.85)")
    ap.add_argument("--ignore", action="append", default=[], metavar="REGEX",
                    help="skip keys matching REGEX (whole key), after checking them yourself")
    ap.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    ap.add_argument("--verbose", action="store_true", help="list the skipped non-parameter keys")
    args = ap.parse_args()
    if os.path.exists(args.output) and os.path.realpath(args.output) == os.path.realpath(args.input):
        die("the output would overwrite the input")
    if os.path.exists(args.output) and not args.force:
        die(f"'{args.output}' exists; pass --force to overwrite it")
    if args.num_heads is not None and args.num_heads < 1 or args.num_groups < 1 or args.seed < 0:
        die("--num-heads and --num-groups must be >= 1, --seed >= 0")
    if not 0.0 <= args.mask_ratio < 1.0:
        die("--mask-ratio must be in [0, 1)")
    sd, hf_config = load_state_dict(args.input)
    header, flat, summary, ignored = convert(sd, hf_config, args.num_heads, args.num_groups, args.seed,
                                             args.mask_ratio, args.ignore)
    if not np.all(np.isfinite(flat)):
        die(f"'{args.input}' holds NaN or Inf parameters")
    if args.verbose:
        for k in ignored:
            print("skipped", k)
    write_checkpoint(args.output, header, flat)
    print(f"wrote {args.output}: {summary}; {flat.size} parameters")


if __name__ == "__main__":
    main()
