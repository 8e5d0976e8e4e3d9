#!/usr/bin/env python3
# Writes test/data/color_ref.txt, the reference values test/test_color.c checks color.c against,
# with scikit-image (not needed to build or test ttt; install it anywhere, e.g.
#   python3 -m venv /tmp/cvenv && /tmp/cvenv/bin/pip install scikit-image numpy
#   /tmp/cvenv/bin/python dev/color_reference.py PTS_IN_HULL.npy > test/data/color_ref.txt).
# PTS_IN_HULL.npy: Zhang et al.'s resources/pts_in_hull.npy (richzhang/colorization), the 313 ab
# bins. It also counts the ab cells of the 8-bit sRGB gamut and checks them against the table.
# Lines (whitespace separated):
#   table K a b                the 313 bin centres, in the file's order
#   gamut_cells N              cells (nearest centre of grid 10) holding the ab of an 8-bit sRGB colour
#   gamut_outside N            of those, how many are not in the table (0)
#   lab R G B L a b            skimage.color.rgb2lab of the byte colour (R, G, B) / 255
#   rgb L a b R G B            skimage.color.lab2rgb (clipped to [0, 1])
#   bin a b nearest i0..i4 w0..w4   nearest bin, the 5 nearest (sorted by distance, lower index
#                              first on a tie) and their Gaussian weights (sigma 5, sum 1)
#   rebal_hist c0..c312 / rebal_w w0..w312   Zhang's rebalancing weights of the counts
#   image NAME H W C v...      an 8-bit image (row-major, channels last)
#   psnr A B value / ssim A B value   skimage.metrics of image B against image A
import sys
import warnings
import numpy as np
from skimage import color
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def load_pts(path):
    try:
        return np.load(path).astype(np.int64)
    except ValueError:
        # some copies of pts_in_hull.npy on GitHub went through a text filter that turned every zero
        # byte into a space (and one newline byte into two): rebuild the (313, 2) int64 array
        raw = open(path, 'rb').read()
        body, vals, i = raw[80:], [], 0
        while i + 8 <= len(body):
            w = body[i:i + 8]
            if all(c == 0xff for c in w[1:]):
                vals.append(w[0] - 256); i += 8
            elif all(c in (0x20, 0) for c in w[1:]):
                vals.append(0 if w[0] == 0x20 else w[0]); i += 8
            else:
                i += 1
        return np.array(vals, np.int64).reshape(-1, 2)


def main():
    pts = load_pts(sys.argv[1])
    assert pts.shape == (313, 2) and np.all(pts % 10 == 0), pts.shape
    out = []
    for k, (a, b) in enumerate(pts.tolist()):
        out.append('table %d %d %d' % (k, a, b))
    # the gamut's cells
    r = np.arange(256, dtype=np.float64) / 255.0
    cells = set()
    for R in range(256):
        g, b = np.meshgrid(r, r, indexing='ij')
        lab = color.rgb2lab(np.stack([np.full_like(g, R / 255.0), g, b], -1)).reshape(-1, 3)
        cells.update(zip(np.rint(lab[:, 1] / 10).astype(int).tolist(), np.rint(lab[:, 2] / 10).astype(int).tolist()))
    table = set(map(tuple, (pts // 10).tolist()))
    out.append('gamut_cells %d' % len(cells))
    out.append('gamut_outside %d' % len(cells - table))
    # Lab of fixed colours: the cube's corners, grays, and random ones
    rng = np.random.default_rng(20)
    cols = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255),
            (255, 0, 255), (128, 128, 128), (10, 10, 10), (3, 2, 1), (200, 150, 100)]
    cols += [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(28)]
    labs = []
    for c in cols:
        lab = color.rgb2lab(np.array(c, np.float64).reshape(1, 1, 3) / 255.0).reshape(3)
        labs.append(lab)
        out.append('lab %d %d %d %.9f %.9f %.9f' % (c + tuple(lab)))
    # sRGB of Lab values, in and out of gamut (clipped)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for L, a, b in [(50, 0, 0), (0, 0, 0), (100, 0, 0), (75, 20, -30), (30, 60, 40), (60, -80, 70), (90, 100, -100),
                        (20, -40, -60), (55.5, 12.25, 33.75), (5, 80, -110)]:
            rgb = color.lab2rgb(np.array([L, a, b], np.float64).reshape(1, 1, 3)).reshape(3)
            out.append('rgb %.4f %.4f %.4f %.9f %.9f %.9f' % (L, a, b, rgb[0], rgb[1], rgb[2]))
    # bins of ab points: those of the colours above and random ones
    abs_ = [(l[1], l[2]) for l in labs] + [tuple(rng.uniform(-100, 100, 2)) for _ in range(30)] + [(0.0, 0.0), (5.0, 5.0), (123.0, -140.0)]
    cent = pts.astype(np.float64)
    for a, b in abs_:
        d2 = (cent[:, 0] - a) ** 2 + (cent[:, 1] - b) ** 2
        order = np.argsort(d2, kind='stable')[:5]
        e = np.exp(-(d2[order] - d2[order[0]]) / (2 * 5.0 ** 2))
        w = e / e.sum()
        out.append('bin %.9f %.9f %d %s %s' % (a, b, order[0], ' '.join(map(str, order)), ' '.join('%.9f' % v for v in w)))
    # rebalancing weights of fixed counts
    hist = np.zeros(313)
    hist[rng.integers(0, 313, 40)] += rng.integers(1, 1000, 40)
    hist[100] += 50000
    G = np.exp(-((cent[:, None, :] - cent[None, :, :]) ** 2).sum(-1) / (2 * 5.0 ** 2))   # G[q, r]
    p = hist / hist.sum()
    ps = (G / G.sum(0, keepdims=True)) @ p
    w = 1.0 / (0.5 * ps + 0.5 / 313)
    w /= (ps * w).sum()
    out.append('rebal_hist ' + ' '.join('%d' % v for v in hist))
    out.append('rebal_w ' + ' '.join('%.9f' % v for v in w))
    # PSNR and SSIM on fixed small images
    H, W = 24, 20
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([128 + 100 * np.sin(xx / 3.0 + c) * np.cos(yy / 4.0) for c in range(3)], -1)
    ref = np.clip(np.rint(base), 0, 255).astype(np.uint8)
    noisy = np.clip(ref.astype(int) + rng.integers(-30, 31, ref.shape), 0, 255).astype(np.uint8)
    shifted = np.clip(ref.astype(int) + 17, 0, 255).astype(np.uint8)
    gray_ref = ref[:, :, 1].copy()
    gray_noisy = noisy[:, :, 0].copy()
    images = {'ref': ref, 'noisy': noisy, 'shifted': shifted, 'gref': gray_ref[:, :, None], 'gnoisy': gray_noisy[:, :, None]}
    for name, im in images.items():
        out.append('image %s %d %d %d %s' % (name, im.shape[0], im.shape[1], im.shape[2], ' '.join(map(str, im.reshape(-1).tolist()))))
    for a, b in [('ref', 'noisy'), ('ref', 'shifted'), ('gref', 'gnoisy')]:
        A, B = images[a], images[b]
        out.append('psnr %s %s %.9f' % (a, b, peak_signal_noise_ratio(A, B, data_range=255)))
        if A.shape[2] == 1:
            s = structural_similarity(A[:, :, 0], B[:, :, 0], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
        else:
            s = structural_similarity(A, B, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=2)
        out.append('ssim %s %s %.9f' % (a, b, s))
    print('\n'.join(out))


if __name__ == '__main__':
    main()
