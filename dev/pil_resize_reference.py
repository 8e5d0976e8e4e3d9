"""Reference outputs of PIL's Image.resize(BILINEAR) on 8-bit images, the resize detectron2's
ResizeTransform applies to uint8 images, for test/test_data.c (resize_bilinear_u8 in data.c).

Writes test/data/pil_resize_ref.bin (little-endian):
  int32 magic 0x52504C49, version 1, number of cases N
  N times: int32 H, W, C, Ho, Wo; uint8 input (H, W, C); uint8 PIL output (Ho, Wo, C)
Inputs are pseudo-random bytes (a fixed LCG) mixed with a smooth ramp and some 0 / 255
pixels, so rounding and clipping are exercised; cases cover up- and down-scaling, one axis
only, and a reduction by more than 2 (support wider than the triangle).

The committed file was made with Pillow 9.5.0, the Pillow of the paper's code (2022), which
always runs the horizontal pass first. Pillow 13 runs the vertical pass first when the height
shrinks and the width grows (the cases 8x8 -> 20x3 and 33x15 -> 70x11 here), which rounds
differently; resize_bilinear_u8 follows 9.5 (detectron2's scale-keeping resizes never mix
the two directions, so both agree there).

usage: pip install pillow==9.5.0; python3 dev/pil_resize_reference.py [OUT]
"""
import struct
import sys

from PIL import Image

CASES = [  # (H, W, C, Ho, Wo)
    (13, 17, 3, 7, 5),      # down both ways
    (13, 17, 3, 29, 40),    # up both ways
    (13, 17, 3, 13, 9),     # width only
    (13, 17, 3, 31, 17),    # height only
    (40, 50, 3, 17, 11),    # down by more than 2
    (8, 8, 3, 3, 20),       # down one way, up the other
    (15, 33, 1, 11, 70),    # grayscale (a label-like single channel)
    (12, 24, 3, 19, 38),    # 2:1 frames, like Cityscapes crops
]


def pixels(H, W, C, seed):
    state = seed
    out = bytearray()
    for y in range(H):
        for x in range(W):
            for c in range(C):
                state = (state * 1103515245 + 12345) & 0x7FFFFFFF
                noise = (state >> 16) & 0xFF
                ramp = (x * 255 // max(W - 1, 1) + y * 97 + c * 50) & 0xFF
                v = (ramp + noise) // 2
                if (x + y + c) % 11 == 0:
                    v = 0
                if (x * 3 + y + c) % 13 == 0:
                    v = 255
                out.append(v)
    return bytes(out)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "test/data/pil_resize_ref.bin"
    with open(path, "wb") as f:
        f.write(struct.pack("<3i", 0x52504C49, 1, len(CASES)))
        for i, (H, W, C, Ho, Wo) in enumerate(CASES):
            data = pixels(H, W, C, 1000 + i)
            mode = "RGB" if C == 3 else "L"
            im = Image.frombytes(mode, (W, H), data)
            out = im.resize((Wo, Ho), Image.BILINEAR).tobytes()
            assert len(out) == Ho * Wo * C
            f.write(struct.pack("<5i", H, W, C, Ho, Wo))
            f.write(data)
            f.write(out)
    import PIL
    if int(PIL.__version__.split(".")[0]) >= 13:
        print("warning: Pillow >= 13 orders the two passes differently for mixed up/down cases")
    print(f"wrote {path}: {len(CASES)} cases, Pillow {PIL.__version__}")


if __name__ == "__main__":
    main()
