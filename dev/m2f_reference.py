"""Reference outputs of Hugging Face's Mask2Former masked-attention transformer decoder.

Builds a tiny Mask2FormerTransformerModule (transformers), adds noise to every parameter,
feeds random multi-scale features and mask features, and records per-prediction class and
mask logits and the attention masks each decoder layer used (for teacher forcing in C,
since thresholded masks make bit-exact agreement impossible otherwise). Runs in float64 on
the CPU. Writes one little-endian binary file read by test/test_m2f_ref.c:

  int32 header[32]: magic 0x4d324652, version 1, B, D, Q, NH, F, NL (decoder layers), K,
                    MD (mask dim), H4, W4, h[3], w[3] (memory levels 1/32, 1/16, 1/8),
                    n_params (decoder parameters in the C layout), rest 0
  float32 decoder params in the M2FParams order after the pixel decoder block:
      query_feat, query_embed, level_embed, ca_in_w, ca_in_b, ca_out_w, ca_out_b, ca_ln_w,
      ca_ln_b, sa_in_w, sa_in_b, sa_out_w, sa_out_b, sa_ln_w, sa_ln_b, fc1_w, fc1_b, fc2_w,
      fc2_b, ffn_ln_w, ffn_ln_b, dec_ln_w, dec_ln_b, class_w, class_b, me1_w, me1_b, me2_w,
      me2_b, me3_w, me3_b
  float32 memory features, level m = 0, 1, 2, channels-last (B, h[m], w[m], D)
  float32 mask features, channels-last (B, H4, W4, MD)
  float32 attention masks of layer i = 0..NL-1, (B, Q, h*w of level i % 3), 1 = blocked
  float32 class logits (L, B, Q, K+1), L = NL + 1
  float32 mask logits (L, B, Q, H4, W4)

usage: python3 dev/m2f_reference.py OUT.bin
"""
import struct
import sys

import torch
import torch.nn.functional as F
import transformers
from transformers import Mask2FormerConfig
from transformers.models.mask2former import modeling_mask2former as m2f

torch.manual_seed(0)
out_path = sys.argv[1] if len(sys.argv) > 1 else "m2f_ref.bin"
print("transformers", transformers.__version__, "torch", torch.__version__)

B, D, Q, NH, FF, NL, K, MD = 2, 32, 8, 4, 48, 4, 6, 24
H4, W4 = 10, 17
# level sizes as the C code derives them (halving, rounding up): 1/4, 1/8, 1/16, 1/32
Hs, Ws = [H4], [W4]
for _ in range(3):
    Hs.append((Hs[-1] + 1) // 2)
    Ws.append((Ws[-1] + 1) // 2)
lev_h = [Hs[3], Hs[2], Hs[1]]
lev_w = [Ws[3], Ws[2], Ws[1]]

config = Mask2FormerConfig(
    hidden_dim=D, feature_size=D, mask_feature_size=MD, num_queries=Q,
    num_attention_heads=NH, dim_feedforward=FF, decoder_layers=NL + 1, num_labels=K,
    dropout=0.0, pre_norm=False, enforce_input_projection=False,
)
module = m2f.Mask2FormerTransformerModule(in_features=D, config=config)
class_predictor = torch.nn.Linear(D, K + 1)
module.eval()
module.double()
class_predictor.double()
with torch.no_grad():
    for name, p in list(module.named_parameters()) + list(class_predictor.named_parameters()):
        p.add_(0.2 * torch.randn_like(p))
print("parameters:")
for name, p in module.named_parameters():
    print("  ", name, tuple(p.shape))

# ---- parameters in the C layout
used = set()


def take(t):
    used.add(id(t))
    return t.detach()


def proj_in(attn):
    """(3D, D) weight and (3D) bias, rows q, k, v, for either attention flavour"""
    if getattr(attn, "in_proj_weight", None) is not None:
        return take(attn.in_proj_weight), take(attn.in_proj_bias)
    w = torch.cat([take(attn.q_proj.weight), take(attn.k_proj.weight), take(attn.v_proj.weight)], 0)
    b = torch.cat([take(attn.q_proj.bias), take(attn.k_proj.bias), take(attn.v_proj.bias)], 0)
    return w, b


layers = module.decoder.layers
assert len(layers) == NL, len(layers)
tensors = {k: [] for k in ["ca_in_w", "ca_in_b", "ca_out_w", "ca_out_b", "ca_ln_w", "ca_ln_b",
                           "sa_in_w", "sa_in_b", "sa_out_w", "sa_out_b", "sa_ln_w", "sa_ln_b",
                           "fc1_w", "fc1_b", "fc2_w", "fc2_b", "ffn_ln_w", "ffn_ln_b"]}
for layer in layers:
    w, b = proj_in(layer.cross_attn)
    tensors["ca_in_w"].append(w); tensors["ca_in_b"].append(b)
    tensors["ca_out_w"].append(take(layer.cross_attn.out_proj.weight))
    tensors["ca_out_b"].append(take(layer.cross_attn.out_proj.bias))
    tensors["ca_ln_w"].append(take(layer.cross_attn_layer_norm.weight))
    tensors["ca_ln_b"].append(take(layer.cross_attn_layer_norm.bias))
    w, b = proj_in(layer.self_attn)
    tensors["sa_in_w"].append(w); tensors["sa_in_b"].append(b)
    tensors["sa_out_w"].append(take(layer.self_attn.out_proj.weight))
    tensors["sa_out_b"].append(take(layer.self_attn.out_proj.bias))
    tensors["sa_ln_w"].append(take(layer.self_attn_layer_norm.weight))
    tensors["sa_ln_b"].append(take(layer.self_attn_layer_norm.bias))
    tensors["fc1_w"].append(take(layer.fc1.weight)); tensors["fc1_b"].append(take(layer.fc1.bias))
    tensors["fc2_w"].append(take(layer.fc2.weight)); tensors["fc2_b"].append(take(layer.fc2.bias))
    tensors["ffn_ln_w"].append(take(layer.final_layer_norm.weight))
    tensors["ffn_ln_b"].append(take(layer.final_layer_norm.bias))

mlp = module.decoder.mask_predictor.mask_embedder
mlp_linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
assert len(mlp_linears) == 3
params = [take(module.queries_features.weight), take(module.queries_embedder.weight),
          take(module.level_embed.weight)]
for k in tensors:
    params.append(torch.stack(tensors[k], 0))
params += [take(module.decoder.layernorm.weight), take(module.decoder.layernorm.bias),
           class_predictor.weight.detach(), class_predictor.bias.detach()]
for lin in mlp_linears:
    params += [take(lin.weight), take(lin.bias)]
unused = [n for n, p in module.named_parameters() if id(p) not in used]
if unused:
    sys.exit("error: parameters not mapped to the C layout: %s" % unused)
flat_params = torch.cat([p.reshape(-1) for p in params]).float()

# ---- inputs
feats = [torch.randn(B, D, lev_h[m], lev_w[m], dtype=torch.float64) for m in range(3)]
mask_features = torch.randn(B, MD, H4, W4, dtype=torch.float64)

# ---- record the attention mask every decoder layer receives
captured = [None] * NL


def make_hook(i):
    def hook(mod, args, kwargs):
        m = kwargs.get("encoder_attention_mask", None)
        if m is None and len(args) > 6:
            m = args[6]
        captured[i] = m.detach().clone()
    return hook


for i, layer in enumerate(layers):
    layer.register_forward_pre_hook(make_hook(i), with_kwargs=True)

with torch.no_grad():
    out = module(multi_scale_features=feats, mask_features=mask_features,
                 output_hidden_states=True, output_attentions=False)
    mask_logits = list(out.masks_queries_logits)
    inter = list(out.intermediate_hidden_states)
    assert len(mask_logits) == NL + 1 and len(inter) == NL + 1, (len(mask_logits), len(inter))
    class_logits = []
    for h in inter:
        if h.shape[0] == Q and h.shape[1] == B:
            h = h.transpose(0, 1)
        class_logits.append(class_predictor(h))

# the masks per layer: (B*NH, Q, T) bool, True = blocked, same for all heads
masks = []
for i in range(NL):
    m = captured[i]
    assert m is not None, "no attention mask captured for layer %d" % i
    T = lev_h[i % 3] * lev_w[i % 3]
    m = m.reshape(B, NH, Q, T).bool()
    assert bool((m == m[:, :1]).all()), "heads differ"
    m = m[:, 0]
    # the documented construction from the previous prediction, for the record
    r = F.interpolate(mask_logits[i], size=(lev_h[i % 3], lev_w[i % 3]), mode="bilinear",
                      align_corners=False)
    mine = (r.sigmoid().flatten(2) < 0.5)
    full = mine.all(-1, keepdim=True)
    mine = mine & ~full
    print("layer %d: %d of %d keys blocked, %d rows reopened, documented rule differs at %d"
          % (i, int(m.sum()), m.numel(), int(full.sum()), int((mine != m).sum())))
    masks.append(m.float())

header = [0x4D324652, 1, B, D, Q, NH, FF, NL, K, MD, H4, W4] + lev_h + lev_w + [flat_params.numel()]
header += [0] * (32 - len(header))
with open(out_path, "wb") as f:
    f.write(struct.pack("<32i", *header))

    def put(t):
        f.write(t.detach().float().contiguous().numpy().astype("<f4").tobytes())

    put(flat_params)
    for m in range(3):
        put(feats[m].permute(0, 2, 3, 1))
    put(mask_features.permute(0, 2, 3, 1))
    for m in masks:
        put(m)
    put(torch.stack(class_logits, 0))
    put(torch.stack(mask_logits, 0))
print("wrote", out_path, "params", flat_params.numel())
