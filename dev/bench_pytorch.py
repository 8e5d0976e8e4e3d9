"""PyTorch reference loop for dev/bench.c: the same measurements, in the same loop as ours
(mae.c model_ttt_step / model_predict) and the released code (renwang435/video-ttt-release),
with Hugging Face's Mask2Former (Swin-S backbone, 4-channel patch embedding, random weights).

The Y model, as in the released code (mask2former/maskformer_ttt_model.py):
  f  the Swin-S backbone (embed 96, depths 2 2 18 2, heads 3 6 12 24, window 7), 4 input
     channels: the ImageNet-normalised RGB with masked pixels set to 0, and a 4th channel that
     is 1 on visible pixels (all ones for the prediction).
  h  Mask2Former head (pixel decoder + masked-attention transformer decoder, 100 queries,
     19 classes).
  g  the MAE head "recon_head": a second, full Mask2Former head with h's architecture, 48
     queries and no class head (HF's Mask2FormerModel has none; the class predictor lives in
     Mask2FormerForUniversalSegmentation). The mask logits of its last decoder layer,
     (B, 48, H/4, W/4), are un-patchified to pixels (B, 3, H, W): query q = c*16 + py*4 + px
     is pixel (4y + py, 4x + px) of channel c (criterion.py ReconCriterion; pixel_shuffle).
  TTT step (batch B): random 16x16 patch masks at ratio 0.85 (int(L * 0.15) patches kept per
     image, dataset_mappers/dropout.py), f and g forward, MSE against the normalised frame over
     all pixels of the frame (released; --loss masked: the masked pixels only), backward through
     g and f, AdamW (lr 1e-4, betas 0.9 0.999, eps 1e-8, weight decay 0.05) on f and g; h is
     untouched. --recipe paper adds the rest of the released step, as ./bench --recipe paper:
     drop-path 0.3 in f, backbone lr x 0.1, no decay on norms / embeddings / relative-position
     tables, full-model gradient clipping at 0.01, a fresh AdamW every step.
  MAE forward (batch B): the step's masking, f and g forward and the loss, autograd on (the
     activations kept, as ours keeps them), no backward.
  predict (B=1): h's full forward (eval, no grad) + the semantic map
     einsum(softmax(class)[..., :-1], sigmoid(mask)) upsampled to the padded frame, cropped to
     the frame, resized to the score size (--score), argmax; the class ids come back to the host.
  Frames start on the host (pageable, as ./bench's) and are copied in inside the timed calls.

Variants, timed in the same process on the same GPU (--variants):
  eager    float32 with TF32 matrix products and convolutions (as ours)
  bf16     eager under torch.autocast(device, dtype=torch.bfloat16); float32 weights, AdamW and
           loss; bf16 needs no loss scaling (the released code uses fp16 AMP with a GradScaler)
  compile  torch.compile(dynamic=False) of the bf16 autocast MAE loss (forward and, through
           AOTAutograd, backward) and of the prediction; compilation is the first call of each
           shape, timed apart ("compile s") and not counted in the step time. A failure of
           dynamo/inductor is caught and reported on one line; the other variants go on.
AdamW is torch's fused implementation where it exists (foreach otherwise), in every variant.

Differences from ours (mae.c, swin.c, mask2former.c) that matter for the timing:
- HF's pixel decoder is the released MSDeformAttn one (6 deformable encoder layers on 1/8..1/32),
  but its deformable attention is plain PyTorch (grid_sample per level) where the released code
  calls its own CUDA op; ours defaults to an FPN without it (./bench --pixel-decoder msdeform is
  the released architecture, with our CUDA kernel).
- cudnn.benchmark is on here (PyTorch at its best; detectron2's default is off).
- HF Swin pads each stage to whole 7x7 windows and masks the shifted windows like the original;
  the released code's Swin is detectron2's port of the original, same math.
- Peak memory here is torch.cuda.max_memory_allocated (tensors only, reset before each
  measurement); ours prints the device memory in use (context, workspaces and caches included).
- GEMM FLOPs are counted once per shape with torch.utils.flop_counter (matrix products,
  convolutions and attention in eager float32, backward included), ours as cuBLAS is called.
- The released code runs its 32 images in 4 accumulated chunks of 8; here the batch runs in one
  pass unless --micro-batch M (or --oom-retry M after an out-of-memory) splits it.
Times are medians of CUDA-event intervals after warm-up (host clock on --device cpu).

usage: python3 dev/bench_pytorch.py [--batch 1 8 32] [--height 384] [--width 1248]
           [--predict HxW] [--score HxW] [--iters 5] [--warmup 2] [--variants eager,bf16,compile]
           [--skip-compile] [--compile-mode default] [--compile-backend inductor] [--recipe demo|paper] [--loss all|masked]
           [--micro-batch M] [--oom-retry M] [--paper] [--tiny] [--device cuda|cpu] [--no-flops]
  --paper: the paper's sizes, B=32 TTT on 512x1024 crops, the prediction on a KITTI frame resized
           to 618x2048 (padded to 640x2048) scored at 375x1242, --recipe paper
  --tiny:  a smoke test: 64x64, Swin depths 1 1 1 1, 3 decoder layers, 1 deformable layer, B=1,
           1 iteration, no warm-up (e.g. --device cpu --tiny)
"""
import argparse
import gc
import statistics
import sys
import time
import traceback


def die(msg):
    print(f"bench_pytorch: {msg}", file=sys.stderr)
    sys.exit(1)


def parse_hw(opt, s):
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        die(f"{opt}: expected HxW, got '{s}'")
    if h < 32 or w < 32:
        die(f"{opt}: expected HxW of at least 32x32, got '{s}'")
    return h, w


ap = argparse.ArgumentParser(description="PyTorch reference for dev/bench.c (see the top of this file)")
ap.add_argument("--batch", type=int, nargs="+", default=None, help="TTT batch sizes (default 1 8 32)")
ap.add_argument("--height", type=int, default=None, help="TTT frame height (default 384)")
ap.add_argument("--width", type=int, default=None, help="TTT frame width (default 1248)")
ap.add_argument("--predict", default=None, help="prediction frame HxW (default: the TTT size)")
ap.add_argument("--score", default=None, help="size HxW the semantic map is resized to (default: --predict)")
ap.add_argument("--iters", type=int, default=None, help="timed calls, median reported (default 5)")
ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2)")
ap.add_argument("--variants", default="eager,bf16,compile", help="comma-separated: eager, bf16, compile")
ap.add_argument("--skip-compile", action="store_true", help="leave out the compile variant")
ap.add_argument("--compile-mode", default="default", help="torch.compile mode (default, max-autotune, ...)")
ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: dynamo alone, to debug)")
ap.add_argument("--recipe", choices=["demo", "paper"], default=None, help="demo (default) or the released step")
ap.add_argument("--loss", choices=["all", "masked"], default="all", help="MSE over all pixels (released) or masked ones")
ap.add_argument("--mask-ratio", type=float, default=0.85, help="fraction of 16x16 patches masked (default 0.85)")
ap.add_argument("--micro-batch", type=int, default=0, help="run the step in chunks of M, gradients accumulated")
ap.add_argument("--oom-retry", type=int, default=0, help="after an out-of-memory step, retry in chunks of M")
ap.add_argument("--paper", action="store_true", help="the paper's sizes and the released recipe")
ap.add_argument("--tiny", action="store_true", help="tiny smoke config (64x64, depths 1 1 1 1, B=1, 1 iter)")
ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
ap.add_argument("--no-flops", action="store_true", help="do not count GEMM FLOPs")
ap.add_argument("--traceback", action="store_true", help="print the whole traceback of a failed variant")
args = ap.parse_args()
sys.stdout.reconfigure(line_buffering=True)   # every line out at once, also when the run is cut short

if args.paper and args.tiny:
    die("--paper and --tiny exclude each other")
# defaults: --tiny, then --paper, then 384x1248; options given explicitly win
if args.tiny:
    preset = dict(batch=[1], height=64, width=64, iters=1, warmup=0, recipe="demo")
elif args.paper:
    preset = dict(batch=[32], height=512, width=1024, iters=3, warmup=1, recipe="paper",
                  predict="618x2048", score="375x1242")
else:
    preset = dict(batch=[1, 8, 32], height=384, width=1248, iters=5, warmup=2, recipe="demo")
for k, v in preset.items():
    if getattr(args, k) is None:
        setattr(args, k, v)
H, W = args.height, args.width
if H < 32 or W < 32:
    die(f"--height/--width: at least 32, got {H}x{W}")
if any(b < 1 for b in args.batch):
    die(f"--batch: every batch must be at least 1, got {args.batch}")
if args.iters < 1 or args.iters > 1000:
    die(f"--iters: between 1 and 1000, got {args.iters}")
if args.warmup < 0:
    die(f"--warmup: at least 0, got {args.warmup}")
if args.micro_batch < 0 or args.oom_retry < 0:
    die("--micro-batch/--oom-retry: at least 0")
if not 0.0 <= args.mask_ratio < 1.0:
    die(f"--mask-ratio: in [0, 1), got {args.mask_ratio}")
PH, PW = parse_hw("--predict", args.predict) if args.predict else (H, W)
SH, SW = parse_hw("--score", args.score) if args.score else (PH, PW)
variants = [v.strip() for v in args.variants.split(",") if v.strip()]
for v in variants:
    if v not in ("eager", "bf16", "compile"):
        die(f"--variants: unknown variant '{v}' (eager, bf16, compile)")
if args.skip_compile:
    variants = [v for v in variants if v != "compile"]
if not variants:
    die("--variants: nothing to run")

import torch
import torch.nn as nn
import torch.nn.functional as F

import transformers
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerModel, SwinConfig

if args.device == "cuda" and not torch.cuda.is_available():
    die("CUDA is not available here (use --device cpu for the smoke path)")
dev = torch.device(args.device)
CUDA = dev.type == "cuda"
# TF32 for the float32 matrix products and convolutions, as ours (the legacy flags only: mixing
# them with the newer fp32_precision API makes some torch versions refuse to read them)
if CUDA:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
name = torch.cuda.get_device_name(0) if CUDA else "cpu"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, {name}")

RECIPE_PAPER = args.recipe == "paper"
DROP_PATH = 0.3 if RECIPE_PAPER else 0.0
K = 19          # classes of h
PATCH = 16      # masking patch
Q_G = 48        # g's queries: the 3 x 4 x 4 pixels of a 4x4 cell


def m2f_config(num_labels, num_queries):
    if args.tiny:
        swin = SwinConfig(num_channels=4, embed_dim=96, depths=[1, 1, 1, 1], num_heads=[3, 6, 12, 24],
                          window_size=7, drop_path_rate=DROP_PATH, out_features=["stage1", "stage2", "stage3", "stage4"])
        extra = dict(decoder_layers=3, encoder_layers=1)
    else:
        swin = SwinConfig(num_channels=4, embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24],
                          window_size=7, drop_path_rate=DROP_PATH, out_features=["stage1", "stage2", "stage3", "stage4"])
        extra = {}
    kw = dict(backbone_config=swin, num_labels=num_labels, num_queries=num_queries, **extra)
    try:
        return Mask2FormerConfig(use_pretrained_backbone=False, **kw)
    except TypeError:   # versions without the option never load pretrained backbones
        return Mask2FormerConfig(**kw)


class MaeHead(nn.Module):
    """g: h's architecture with 48 queries and no class head; returns the last layer's mask
    logits (B, 48, H/4, W/4)"""

    def __init__(self, cfg):
        super().__init__()
        full = Mask2FormerModel(cfg)   # HF's own construction and initialisation; its backbone is dropped
        self.pixel_decoder = full.pixel_level_module.decoder
        self.transformer_module = full.transformer_module
        del full

    def forward(self, features):
        dec = self.pixel_decoder(features)
        mask_features = dec.mask_features if hasattr(dec, "mask_features") else dec[0]
        multi_scale = dec.multi_scale_features if hasattr(dec, "multi_scale_features") else dec[1]
        out = self.transformer_module(multi_scale_features=multi_scale, mask_features=mask_features)
        masks = out.masks_queries_logits if hasattr(out, "masks_queries_logits") else out[-1]
        return masks[-1]


def unpatchify(x):
    """(B, 48, h, w) -> (B, 3, 4h, 4w): ReconCriterion's reshape + einsum, as pixel_shuffle"""
    return F.pixel_shuffle(x, 4)


def check_unpatchify():
    x = torch.randn(2, Q_G, 3, 5)
    p, h, w = 4, 3 * 4, 5 * 4
    ref = torch.einsum("bcpqhw->bchpwq", x.reshape(2, 3, p, p, h // p, w // p)).reshape(2, 3, h, w)
    if not torch.equal(unpatchify(x), ref):
        die("internal: pixel_shuffle differs from the released un-patchify")


check_unpatchify()
torch.manual_seed(0)
cfg_h = m2f_config(K, 100)
model = Mask2FormerForUniversalSegmentation(cfg_h).to(dev)   # f + h
f = model.model.pixel_level_module.encoder
g = MaeHead(m2f_config(Q_G, Q_G)).to(dev)
n_f = sum(p.numel() for p in f.parameters())
n_h = sum(p.numel() for p in model.parameters()) - n_f
n_g = sum(p.numel() for p in g.parameters())
print(f"params f {n_f / 1e6:.2f}M  h {n_h / 1e6:.2f}M  g {n_g / 1e6:.2f}M; recipe {args.recipe}, loss over "
      f"{'all' if args.loss == 'all' else 'the masked'} pixels, mask ratio {args.mask_ratio}, drop-path {DROP_PATH}")


def param_groups():
    """f and g; --recipe paper: backbone lr x 0.1, no decay on norms, embeddings, relative-position
    tables (train_ttt_mae.py build_optimizer)"""
    if not RECIPE_PAPER:
        return [{"params": list(f.parameters()) + list(g.parameters())}]
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.Embedding)
    groups = {}
    for part, module, lr in (("f", f, 1e-5), ("g", g, 1e-4)):
        for mod_name, mod in module.named_modules():
            for p_name, p in mod.named_parameters(recurse=False):
                exempt = isinstance(mod, norm_types) or "relative_position_bias_table" in p_name or \
                    "position_embed" in p_name or "level_embed" in p_name
                key = (lr, 0.0 if exempt else 0.05)
                groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


train_params = list(f.parameters()) + list(g.parameters())
f_ids = {id(p) for p in f.parameters()}
h_params = [p for p in model.parameters() if id(p) not in f_ids]


def fingerprint(params):
    """sum of |w| and of w * position, in float64: changes when any weight does"""
    with torch.no_grad():
        flat = torch.cat([p.detach().flatten().double() for p in params])
        pos = torch.arange(flat.numel(), device=flat.device, dtype=torch.float64)
        return (flat.abs().sum().item(), (flat * pos).sum().item())


fingerprint_h, fingerprint_fg = fingerprint(h_params), fingerprint(train_params)
try:
    opt = torch.optim.AdamW(param_groups(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, fused=True)
    opt_kind = "fused"
except (TypeError, RuntimeError, ValueError):
    opt = torch.optim.AdamW(param_groups(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    opt_kind = "foreach"
print(f"AdamW {opt_kind}; TTT on {H}x{W}, prediction on {PH}x{PW} scored at {SH}x{SW}; variants {','.join(variants)}")

mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)


def padded(h, w):
    """Swin's four halvings and the 16x16 masking patches: multiples of 32"""
    return (h + 31) // 32 * 32, (w + 31) // 32 * 32


Hp, Wp = padded(H, W)
PHp, PWp = padded(PH, PW)


def prepare_masked(frames):
    """frames (B, 3, H, W) in [0, 1] -> input (B, 4, Hp, Wp), target (B, 3, Hp, Wp), loss weight
    (B, 1, Hp, Wp): 1 on the frame's pixels (--loss all) or its masked ones (--loss masked)"""
    B = frames.shape[0]
    x = torch.zeros(B, 3, Hp, Wp, device=dev)
    x[:, :, :H, :W] = (frames - mean) / std
    inside = torch.zeros(B, 1, Hp, Wp, device=dev)
    inside[:, :, :H, :W] = 1
    L = (Hp // PATCH) * (Wp // PATCH)
    keep = int(L * (1 - args.mask_ratio))
    visible = torch.zeros(B, L, device=dev)
    idx = torch.rand(B, L, device=dev).argsort(dim=1)[:, :keep]
    visible.scatter_(1, idx, 1.0)
    visible = visible.view(B, 1, Hp // PATCH, Wp // PATCH).repeat_interleave(PATCH, 2).repeat_interleave(PATCH, 3)
    visible = visible * inside
    inp = torch.cat([x * visible, visible], dim=1)
    weight = inside if args.loss == "all" else inside - visible
    return inp, x, weight


def prepare_predict(frame):
    """frame (1, 3, PH, PW) -> (1, 4, PHp, PWp), the 4th channel all ones (released)"""
    x = torch.zeros(1, 4, PHp, PWp, device=dev)
    x[:, :3, :PH, :PW] = (frame - mean) / std
    x[:, 3] = 1
    return x


def feature_maps(out):
    return out.feature_maps if hasattr(out, "feature_maps") else out[0]


def make_loss_fn(bf16):
    def mae_loss(inp, target, weight, denom):
        """sum of the squared errors over the weighted pixels / denom (3 x the batch's weight sum)"""
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = g(feature_maps(f(inp)))                 # (B, 48, Hp/4, Wp/4)
        recon = unpatchify(logits.float())                   # (B, 3, Hp, Wp)
        return ((recon - target) ** 2 * weight).sum() / denom
    return mae_loss


def make_predict_fn(bf16):
    def predict_scores(inp):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(pixel_values=inp)
        cls = out.class_queries_logits if hasattr(out, "class_queries_logits") else out[0]
        msk = out.masks_queries_logits if hasattr(out, "masks_queries_logits") else out[1]
        cls = cls.float().softmax(-1)[..., :-1]
        msk = msk.float().sigmoid()
        seg = torch.einsum("bqc,bqhw->bchw", cls, msk)
        seg = F.interpolate(seg, size=(PHp, PWp), mode="bilinear", align_corners=False)[:, :, :PH, :PW]
        if (SH, SW) != (PH, PW):
            seg = F.interpolate(seg, size=(SH, SW), mode="bilinear", align_corners=False)
        return seg.argmax(1).to(torch.uint8)
    return predict_scores


def sync():
    if CUDA:
        torch.cuda.synchronize()


def call_ms(fn):
    """ms of one call: CUDA events (host clock on the CPU)"""
    if CUDA:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        return s.elapsed_time(e)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


last_value = [None]   # what the last timed call returned (the loss)


def timed(fn):
    for _ in range(args.warmup):
        fn()
    sync()

    def keep():
        last_value[0] = fn()
    return statistics.median(call_ms(keep) for _ in range(args.iters))


def reset_peak():
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib():
    return torch.cuda.max_memory_allocated() / 2**30 if CUDA else float("nan")


def is_oom(e):
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(e, oom_type):
        return True
    return "out of memory" in str(e).lower()


def first_line(e):
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}"[:300]


def free_after_failure():
    opt.zero_grad(set_to_none=True)
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()


frame_pred_host = torch.rand(1, 3, PH, PW)   # host, pageable, as ./bench's frames


def run_predict(predict_scores):
    model.eval()
    with torch.no_grad():
        ids = predict_scores(prepare_predict(frame_pred_host.to(dev)))
    return ids.cpu()


def ttt_modes():
    """f in training mode (drop-path under --recipe paper). g in eval mode: with HF's dropout 0
    the math is the same, without the training-only `if not torch.isfinite(h).all()` of HF's
    deformable encoder layers (a host sync and a dynamo graph break per layer, absent from the
    released code)"""
    f.train()
    g.eval()


def run_forward(loss_fn, frames_host, M):
    """the MAE loss of the batch in chunks of M: the forward of the TTT step (autograd on, as ours
    keeps the activations; under compile the step's own graph, no second compilation), no backward"""
    ttt_modes()
    inp, target, weight = prepare_masked(frames_host.to(dev))
    denom = 3 * weight.sum().clamp(min=1)
    total = 0.0
    for b in range(0, inp.shape[0], M):
        total = total + loss_fn(inp[b:b + M], target[b:b + M], weight[b:b + M], denom).detach()
    return total


def run_step(loss_fn, frames_host, M):
    """one TTT step on the batch: fresh masks, MAE loss, backward in chunks of M, (clip,) AdamW"""
    ttt_modes()
    inp, target, weight = prepare_masked(frames_host.to(dev))
    denom = 3 * weight.sum().clamp(min=1)
    if RECIPE_PAPER:
        opt.state.clear()   # a fresh AdamW every frame (--restart_optimizer)
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for b in range(0, inp.shape[0], M):
        loss = loss_fn(inp[b:b + M], target[b:b + M], weight[b:b + M], denom)
        loss.backward()
        total = total + loss.detach()
    if RECIPE_PAPER:
        torch.nn.utils.clip_grad_norm_(train_params, 0.01)
    opt.step()
    return total


def count_flops(fn):
    """GEMM FLOPs of one call (matrix products, convolutions, attention; backward included)"""
    if args.no_flops:
        return None
    try:
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        sync()
        return counter.get_total_flops()
    except Exception as e:   # noqa: BLE001 - the counter is optional
        if is_oom(e):
            free_after_failure()
        print(f"  (FLOP count failed: {first_line(e)})")
        return None


def tflops(flop, ms):
    return flop / (ms * 1e-3) / 1e12 if flop and ms == ms else None


flops_cache = {}   # what -> FLOPs, counted once in eager float32 (the same for every variant)


def run_variant(variant, results):
    """times predict (B=1) and, per batch, the MAE forward and the TTT step; appends a result
    dict per batch (and per retry) to results"""
    bf16 = variant != "eager"
    label = {"eager": "eager fp32/tf32", "bf16": "eager bf16 autocast", "compile": "compile bf16 autocast"}[variant]
    loss_fn, predict_scores = make_loss_fn(bf16), make_predict_fn(bf16)
    if variant == "compile":
        import torch._dynamo as dynamo
        for limit in ("cache_size_limit", "recompile_limit"):   # one compiled graph per batch shape
            try:
                if hasattr(dynamo.config, limit):
                    setattr(dynamo.config, limit, max(getattr(dynamo.config, limit), 64))
            except Exception:   # noqa: BLE001 - the default limit (8) is enough for a few batches
                pass
        kw = dict(dynamic=False, backend=args.compile_backend)
        if args.compile_backend == "inductor":
            kw["mode"] = args.compile_mode
        loss_fn = torch.compile(loss_fn, **kw)
        predict_scores = torch.compile(predict_scores, **kw)
    print(f"== {label}")

    def first_call(what, fn):
        """compile variant: the first call of a shape compiles; timed apart"""
        if variant != "compile":
            return
        t0 = time.perf_counter()
        fn()
        sync()
        print(f"  compile s ({what}): {time.perf_counter() - t0:.1f}")

    # predict (B=1)
    pred = {"ms": None, "peak": None, "oom": False}
    try:
        if "predict" not in flops_cache:
            flops_cache["predict"] = count_flops(lambda: run_predict(make_predict_fn(False)))
        reset_peak()
        first_call("predict", lambda: run_predict(predict_scores))
        reset_peak()
        pred["ms"] = timed(lambda: run_predict(predict_scores))
        pred["peak"] = peak_gib()
        tf = tflops(flops_cache["predict"], pred["ms"])
        print(f"  predict (B=1) {pred['ms']:9.2f} ms" +
              (f"  GEMM {flops_cache['predict'] / 1e9:.1f} GFLOP, {tf:.2f} TFLOP/s" if tf else "") +
              (f"  peak {pred['peak']:.2f} GiB" if CUDA else ""))
    except Exception as e:   # noqa: BLE001
        if not is_oom(e):
            raise
        pred["oom"] = True
        print("  predict (B=1) OOM")
    if pred["oom"]:
        free_after_failure()

    for B in args.batch:
        M = args.micro_batch if 0 < args.micro_batch < B else B
        while True:
            r = {"variant": label, "B": B, "M": M, "pred": pred, "fwd": None, "step": None, "peak": None,
                 "tf": None, "oom": False}
            frames_host = torch.rand(B, 3, H, W)
            try:
                key = ("step", B)   # the same FLOPs in any chunking
                if flops_cache.get(key) is None:
                    flops_cache[key] = count_flops(lambda: run_step(make_loss_fn(False), frames_host, M))
                reset_peak()
                first_call(f"TTT step B={B}, forward and backward", lambda: run_step(loss_fn, frames_host, M))
                reset_peak()
                r["fwd"] = timed(lambda: run_forward(loss_fn, frames_host, M))
                fwd_peak = peak_gib()
                reset_peak()
                r["step"] = timed(lambda: run_step(loss_fn, frames_host, M))
                loss = float(last_value[0])
                if loss != loss or loss == float("inf"):
                    raise RuntimeError(f"the TTT step's loss is {loss}")
                r["peak"] = peak_gib()
                r["tf"] = tflops(flops_cache[key], r["step"])
                mem = f", peak {fwd_peak:.2f} / {r['peak']:.2f} GiB (forward / step)" if CUDA else ""
                tf = f", GEMM {flops_cache[key] / 1e9:.1f} GFLOP, {r['tf']:.2f} TFLOP/s" if r["tf"] else ""
                print(f"  B={B} (micro-batch {M}): MAE forward {r['fwd']:.2f} ms, TTT step {r['step']:.2f} ms "
                      f"({r['step'] / B:.2f} ms/frame, loss {loss:.4f}){tf}{mem}")
                if pred["ms"] is not None:
                    print(f"  frame (TTT step + predict) {r['step'] + pred['ms']:.2f} ms")
            except Exception as e:   # noqa: BLE001
                if not is_oom(e):
                    raise
                r["oom"] = True
                print(f"  B={B} (micro-batch {M}): OOM")
            if r["oom"]:
                free_after_failure()
            results.append(r)
            if r["oom"] and 0 < args.oom_retry < M:
                M = args.oom_retry   # the released code's way: accumulated chunks
                continue
            break


all_results, failed = [], []
for variant in variants:
    try:
        run_variant(variant, all_results)
    except Exception as e:   # noqa: BLE001 - report and go on with the other variants
        print(f"== {variant} failed: {first_line(e)}")
        if args.traceback:
            traceback.print_exc()
        failed.append(variant)
        free_after_failure()


def fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


print()
print(f"Summary ({name}; TTT {H}x{W}, predict {PH}x{PW} scored at {SH}x{SW}, recipe {args.recipe}; "
      f"memory = max_memory_allocated of the step):")
print("| impl | B | micro-batch | predict ms (B=1) | MAE fwd ms | TTT step ms | step ms/frame | GEMM TFLOP/s (step) | memory GiB |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in all_results:
    p = "OOM" if r["pred"]["oom"] else fmt(r["pred"]["ms"])
    if r["oom"]:
        print(f"| pytorch {r['variant']} | {r['B']} | {r['M']} | {p} | OOM | OOM | OOM | - | OOM |")
    else:
        print(f"| pytorch {r['variant']} | {r['B']} | {r['M']} | {p} | {fmt(r['fwd'])} | {fmt(r['step'])} | "
              f"{fmt(r['step'] / r['B'])} | {fmt(r['tf'], 1)} | {fmt(r['peak']) if CUDA else '-'} |")
if (PH, PW) != (H, W):   # the paper-size table: the frame = TTT step + prediction
    print()
    print("| impl | micro-batch | predict ms | TTT step ms | frame ms | GEMM TFLOP/s (step) | memory GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in all_results:
        pms = r["pred"]["ms"]
        frame = r["step"] + pms if (r["step"] is not None and pms is not None) else None
        step = "OOM" if r["oom"] else fmt(r["step"])
        print(f"| pytorch {r['variant']} (B={r['B']}) | {r['M']} | {'OOM' if r['pred']['oom'] else fmt(pms)} | {step} | "
              f"{fmt(frame)} | {fmt(r['tf'], 1)} | {'OOM' if r['oom'] else (fmt(r['peak']) if CUDA else '-')} |")
for v in failed:
    print(f"variant {v}: failed (see above)")
# the loop's own check: TTT trains f and g only
h_changed = fingerprint(h_params) != fingerprint_h
stepped = any(r["step"] is not None for r in all_results)
fg_updated = fingerprint(train_params) != fingerprint_fg
bad = h_changed or (stepped and not fg_updated)
print(f"check: h {'CHANGED (defect)' if h_changed else 'untouched'}; f and g "
      f"{('updated' if fg_updated else 'NOT updated (defect)') if stepped else 'not stepped'}")
sys.stdout.flush()
# a compile failure is reported and tolerated; a failure of eager or bf16 is a defect
sys.exit(1 if bad or any(v != "compile" for v in failed) else 0)
