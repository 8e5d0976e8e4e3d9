#!/usr/bin/env python3
"""FID, IS and LPIPS of colourised frames (Table 3's other columns), with the field's packages.

    python3 dev/colorize_metrics.py FRAMES_DIR OUT_DIR [--device cuda] [--json OUT_DIR/perceptual.json]

FRAMES_DIR holds the original colour frames, OUT_DIR what `./stream FRAMES_DIR --task colorize
--out OUT_DIR` wrote (OUT_DIR/NAME.png for FRAMES_DIR/NAME.*). Needs PyTorch and:
  FID    torchmetrics.image.fid.FrechetInceptionDistance (feature 2048), or pytorch-fid
  IS     torchmetrics.image.inception.InceptionScore
  LPIPS  the lpips package (AlexNet, version 0.1, inputs in [-1, 1]), mean over the frames
Each downloads pretrained weights (Inception-v3 for FID/IS, AlexNet + the LPIPS linear layers)
on first use; where they cannot be fetched (as on the machine ttt is developed on, which has no
network) the metric is reported as unavailable and the others still run. FID and IS over a single
video of a few hundred frames are noisy; the paper pools the frames of all videos.
"""
import argparse
import json
import os
import sys

import numpy as np


def load_pairs(frames_dir, out_dir):
    from PIL import Image
    pairs = []
    for name in sorted(os.listdir(frames_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in ('.png', '.jpg', '.jpeg', '.bmp'):
            continue
        out = os.path.join(out_dir, stem + '.png')
        if not os.path.exists(out):
            sys.exit('error: %s has no colourised frame %s' % (name, out))
        a = np.asarray(Image.open(os.path.join(frames_dir, name)).convert('RGB'))
        b = np.asarray(Image.open(out).convert('RGB'))
        if a.shape != b.shape:
            sys.exit('error: %s is %s but %s is %s' % (name, a.shape, out, b.shape))
        pairs.append((a, b))
    if not pairs:
        sys.exit('error: no frames in %s' % frames_dir)
    return pairs


def to_uint8_batch(torch, images, device):
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x.to(device)


def fid(torch, real, fake, device):
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        m = FrechetInceptionDistance(feature=2048).to(device)
        for i in range(0, len(real), 32):
            m.update(to_uint8_batch(torch, real[i:i + 32], device), real=True)
            m.update(to_uint8_batch(torch, fake[i:i + 32], device), real=False)
        return float(m.compute())
    except ImportError:
        pass
    import tempfile
    from PIL import Image
    from pytorch_fid.fid_score import calculate_fid_given_paths   # pytorch-fid
    with tempfile.TemporaryDirectory() as d:
        for k, (r, f) in enumerate(zip(real, fake)):
            os.makedirs(os.path.join(d, 'real'), exist_ok=True)
            os.makedirs(os.path.join(d, 'fake'), exist_ok=True)
            Image.fromarray(r).save(os.path.join(d, 'real', '%06d.png' % k))
            Image.fromarray(f).save(os.path.join(d, 'fake', '%06d.png' % k))
        return float(calculate_fid_given_paths([os.path.join(d, 'real'), os.path.join(d, 'fake')], 32, device, 2048))


def inception_score(torch, fake, device):
    from torchmetrics.image.inception import InceptionScore
    m = InceptionScore().to(device)
    for i in range(0, len(fake), 32):
        m.update(to_uint8_batch(torch, fake[i:i + 32], device))
    mean, std = m.compute()
    return float(mean), float(std)


def lpips_mean(torch, real, fake, device):
    import lpips
    net = lpips.LPIPS(net='alex', version='0.1').to(device)
    vals = []
    with torch.no_grad():
        for r, f in zip(real, fake):
            a = to_uint8_batch(torch, [r], device).float() / 127.5 - 1.0
            b = to_uint8_batch(torch, [f], device).float() / 127.5 - 1.0
            vals.append(float(net(a, b).mean()))
    return float(np.mean(vals))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('frames_dir')
    p.add_argument('out_dir')
    p.add_argument('--device', default='cpu')
    p.add_argument('--json', default=None, help='write the results here (default OUT_DIR/perceptual.json)')
    a = p.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit('error: FID, IS and LPIPS need PyTorch (pip install torch torchmetrics[image] lpips)')
    pairs = load_pairs(a.frames_dir, a.out_dir)
    real = [r for r, _ in pairs]
    fake = [f for _, f in pairs]
    res = {'frames': len(pairs)}
    for name, fn in [('fid', lambda: fid(torch, real, fake, a.device)),
                     ('is', lambda: inception_score(torch, fake, a.device)),
                     ('lpips', lambda: lpips_mean(torch, real, fake, a.device))]:
        try:
            res[name] = fn()
        except Exception as e:   # a missing package or weights that cannot be downloaded
            res[name] = None
            print('%s: unavailable (%s: %s)' % (name, type(e).__name__, str(e).splitlines()[0] if str(e) else ''), file=sys.stderr)
    for k in ('fid', 'is', 'lpips'):
        v = res[k]
        print('%-6s %s' % (k.upper(), 'unavailable' if v is None else ('%.4f +- %.4f' % v if isinstance(v, tuple) else '%.4f' % v)))
    path = a.json or os.path.join(a.out_dir, 'perceptual.json')
    with open(path, 'w') as fp:
        json.dump(res, fp, indent=2)


if __name__ == '__main__':
    main()
