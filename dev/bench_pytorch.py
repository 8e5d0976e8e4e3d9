"""PyTorch reference loop for dev/bench.c: the same measurements with Hugging Face's
Mask2Former (Swin-S backbone, 4-channel patch embedding, random weights).

  predict (B=1): the full Mask2Former forward (eval, no grad) + semantic map
                 einsum(softmax(class), sigmoid(mask)) upsampled to the frame size
  MAE forward / TTT step (batch B): f = the Swin-S backbone, g = a copy of h's pixel
                 decoder + a 1x1 output layer to the 48 = 3*4*4 pixel values of each 4x4
                 patch; masked MSE on masked pixels; AdamW (lr 1e-4, wd 0.05) on f and g.
Differences from ours that matter for the timing: HF's pixel decoder has multi-scale
deformable attention (ours: FPN without it), and g here has no transformer decoder (ours
is a full copy of h's architecture). TF32 is enabled for matmuls and convolutions as in
ours. Times are medians of CUDA-event intervals after warm-up.

usage: python3 dev/bench_pytorch.py [--batch 1 8 32] [--height 384] [--width 1248]
"""
import argparse
import copy
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
ap.add_argument("--height", type=int, default=384)
ap.add_argument("--width", type=int, default=1248)
ap.add_argument("--iters", type=int, default=5)
ap.add_argument("--warmup", type=int, default=2)
args = ap.parse_args()

import transformers
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
dev = torch.device("cuda")
print("torch", torch.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name(0))

H, W, K = args.height, args.width, 19
swin = SwinConfig(num_channels=4, embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24],
                  window_size=7, drop_path_rate=0.0,
                  out_features=["stage1", "stage2", "stage3", "stage4"])
cfg = Mask2FormerConfig(backbone_config=swin, num_labels=K, use_pretrained_backbone=False)
model = Mask2FormerForUniversalSegmentation(cfg).to(dev)
f = model.model.pixel_level_module.encoder
g_dec = copy.deepcopy(model.model.pixel_level_module.decoder)
g_out = nn.Conv2d(cfg.mask_feature_size, 48, 1).to(dev)
n_f = sum(p.numel() for p in f.parameters())
n_all = sum(p.numel() for p in model.parameters())
n_g = sum(p.numel() for p in g_dec.parameters()) + sum(p.numel() for p in g_out.parameters())
print(f"params f {n_f / 1e6:.2f}M  h {(n_all - n_f) / 1e6:.2f}M  g {n_g / 1e6:.2f}M")
opt = torch.optim.AdamW(list(f.parameters()) + list(g_dec.parameters()) + list(g_out.parameters()),
                        lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)

mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
Hp, Wp = (H + 31) // 32 * 32, (W + 31) // 32 * 32


def prepare(frames, masked):
    """frames (B, 3, H, W) in [0, 1] -> 4-channel input (B, 4, Hp, Wp), target and mask (B, 48, Hp/4, Wp/4)"""
    B = frames.shape[0]
    x = torch.zeros(B, 3, Hp, Wp, device=dev)
    x[:, :, :H, :W] = (frames - mean) / std
    inside = torch.zeros(B, 1, Hp, Wp, device=dev)
    inside[:, :, :H, :W] = 1
    if masked:
        L = (Hp // 16) * (Wp // 16)
        keep = int(L * 0.2)
        m = torch.ones(B, L, device=dev)
        idx = torch.rand(B, L, device=dev).argsort(dim=1)[:, :keep]
        m.scatter_(1, idx, 0.0)
        m = m.view(B, 1, Hp // 16, Wp // 16).repeat_interleave(16, 2).repeat_interleave(16, 3)
    else:
        m = torch.zeros(B, 1, Hp, Wp, device=dev)
    inp = torch.cat([x * (1 - m), m], dim=1)
    # target in g's layout: channel q = c*16 + py*4 + px of each 4x4 patch
    target = F.pixel_unshuffle(x, 4)
    tmask = F.pixel_unshuffle((m * inside).expand(B, 3, Hp, Wp).contiguous(), 4)
    return inp, target, tmask


def mae_loss(inp, target, tmask):
    feats = f(inp).feature_maps
    out = g_dec(feats)
    mf = out.mask_features if hasattr(out, "mask_features") else out[0]
    recon = g_out(mf)
    return ((recon - target) ** 2 * tmask).sum() / tmask.sum().clamp(min=1)


def timed(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


frames1 = torch.rand(1, 3, H, W, device=dev)


def predict():
    model.eval()
    with torch.no_grad():
        inp, _, _ = prepare(frames1, False)
        out = model(pixel_values=inp)
        cls = out.class_queries_logits.softmax(-1)[..., :-1]
        msk = out.masks_queries_logits.sigmoid()
        seg = torch.einsum("bqc,bqhw->bchw", cls, msk)
        seg = F.interpolate(seg, size=(Hp, Wp), mode="bilinear", align_corners=False)[:, :, :H, :W]
        return seg.argmax(1)


ms_pred = timed(predict, args.iters, args.warmup)
print(f"predict (B=1)        {ms_pred:9.2f} ms")

rows = []
for B in args.batch:
    try:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        frames = torch.rand(B, 3, H, W, device=dev)
        f.train(); g_dec.train()

        def fwd():
            with torch.no_grad():
                return mae_loss(*prepare(frames, True))

        def step():
            opt.zero_grad(set_to_none=False)
            loss = mae_loss(*prepare(frames, True))
            loss.backward()
            opt.step()
            return loss

        ms_fwd = timed(fwd, args.iters, args.warmup)
        ms_step = timed(step, args.iters, args.warmup)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"B={B}: MAE forward {ms_fwd:.2f} ms, TTT step {ms_step:.2f} ms ({ms_step / B:.2f} ms/frame), "
              f"peak {peak:.2f} GiB")
        rows.append(f"| pytorch | {B} | {H}x{W} | {ms_pred:.2f} | {ms_fwd:.2f} | {ms_step:.2f} | {ms_step / B:.2f} | - | {peak:.2f} |")
    except torch.cuda.OutOfMemoryError:
        print(f"B={B}: out of memory")
        rows.append(f"| pytorch | {B} | {H}x{W} | {ms_pred:.2f} | OOM | OOM | OOM | - | OOM |")
        opt.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
for r in rows:
    print(r)
sys.stdout.flush()
