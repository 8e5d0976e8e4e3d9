"""Reference outputs of OpenCV's 8-bit HSV conversions and of detectron2's ColorAugSSDTransform
(projects/PointRend/point_rend/color_augmentation.py, used by Mask2Former's semantic mapper)
for test/test_data.c (rgb_to_hsv_u8, hsv_to_rgb_u8, color_aug_ssd_apply in data.c).

The transform draws its random values inside apply_image; here the same steps run with given
values (the code below is that apply_image with the draws passed in), so the C port can be
compared on identical parameters.

Writes test/data/color_aug_ref.bin (little-endian):
  int32 magic 0x53534341, version 1, N (pixels per table), n_aug (augmentation cases), S (side)
  uint8 rgb (N, 3), uint8 hsv of it by cv2.cvtColor (N, 3)       [RGB in, H S V out]
  uint8 hsv (N, 3) with H < 180, uint8 rgb of it by cv2 (N, 3)
  uint8 image (S, S, 3) RGB
  n_aug times: int32 brightness_on, contrast_first, contrast_on, saturation_on, hue_on, hue;
               float32 brightness, contrast, saturation; uint8 output (S, S, 3) RGB
N and S are multiples of 32, so every pixel takes OpenCV's vectorised path (as in a real image).

usage: pip install opencv-python-headless numpy; python3 dev/color_aug_reference.py [OUT]
"""
import struct
import sys

import cv2
import numpy as np

N, S = 4096, 32


def convert(img, alpha=1, beta=0):
    img = img.astype(np.float32) * alpha + beta
    img = np.clip(img, 0, 255)
    return img.astype(np.uint8)


def color_aug_ssd(img_rgb, p):
    """ColorAugSSDTransform.apply_image (img_format RGB) with the draws in p."""
    img = img_rgb[:, :, [2, 1, 0]]
    if p["brightness_on"]:
        img = convert(img, beta=p["brightness"])

    def contrast(img):
        return convert(img, alpha=p["contrast"]) if p["contrast_on"] else img

    def saturation(img):
        if p["saturation_on"]:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            img[:, :, 1] = convert(img[:, :, 1], alpha=p["saturation"])
            return cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
        return img

    def hue(img):
        if p["hue_on"]:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            img[:, :, 0] = (img[:, :, 0].astype(int) + p["hue"]) % 180
            return cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
        return img

    if p["contrast_first"]:
        img = hue(saturation(contrast(img)))
    else:
        img = contrast(hue(saturation(img)))
    return np.ascontiguousarray(img[:, :, [2, 1, 0]])


CASES = [
    dict(brightness_on=1, brightness=-20.7, contrast_first=1, contrast_on=1, contrast=1.37,
         saturation_on=1, saturation=0.61, hue_on=1, hue=-13),
    dict(brightness_on=1, brightness=29.3, contrast_first=0, contrast_on=1, contrast=0.55,
         saturation_on=1, saturation=1.45, hue_on=1, hue=17),
    dict(brightness_on=0, brightness=0.0, contrast_first=1, contrast_on=0, contrast=0.0,
         saturation_on=0, saturation=0.0, hue_on=1, hue=5),
    dict(brightness_on=0, brightness=0.0, contrast_first=0, contrast_on=1, contrast=1.21,
         saturation_on=1, saturation=0.83, hue_on=0, hue=0),
]


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "test/data/color_aug_ref.bin"
    rng = np.random.default_rng(12)
    rgb = rng.integers(0, 256, (N, 3)).astype(np.uint8)
    rgb[:8] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [7, 7, 7], [255, 255, 0], [1, 2, 3]]
    hsv_of_rgb = cv2.cvtColor(rgb[:, [2, 1, 0]].reshape(-1, 32, 3), cv2.COLOR_BGR2HSV).reshape(N, 3)
    hsv = np.stack([rng.integers(0, 180, N), rng.integers(0, 256, N), rng.integers(0, 256, N)], 1).astype(np.uint8)
    rgb_of_hsv = cv2.cvtColor(hsv.reshape(-1, 32, 3), cv2.COLOR_HSV2BGR).reshape(N, 3)[:, [2, 1, 0]]
    image = rng.integers(0, 256, (S, S, 3)).astype(np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack("<5i", 0x53534341, 1, N, len(CASES), S))
        for a in (rgb, hsv_of_rgb, hsv, np.ascontiguousarray(rgb_of_hsv), image):
            f.write(a.astype(np.uint8).tobytes())
        for p in CASES:
            f.write(struct.pack("<6i", p["brightness_on"], p["contrast_first"], p["contrast_on"],
                                p["saturation_on"], p["hue_on"], p["hue"]))
            f.write(struct.pack("<3f", p["brightness"], p["contrast"], p["saturation"]))
            f.write(color_aug_ssd(image.copy(), p).tobytes())
    print(f"wrote {path}: OpenCV {cv2.__version__}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
