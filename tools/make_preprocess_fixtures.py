#!/usr/bin/env python3
"""Make the preprocessing parity fixtures under tests/fixtures/preprocess/.

    /usr/bin/python3 tools/make_preprocess_fixtures.py

Needs Pillow, NumPy and torchvision (Debian: python3-pil python3-numpy python3-torchvision).

1. Draws synthetic test images with a fixed seed (smooth gradients, random shapes, noise and a
   fine stripe patch that exercises antialiasing) and saves them as `.JPEG` files: several sizes
   (500x375, portrait, tiny, very wide, large, square, odd), colour modes RGB, L and CMYK, and two
   PNG files (RGB and RGBA) saved under a `.JPEG` name.
2. Runs the reference evaluation transform on each file for each configuration, exactly as timm's
   eval transform does for a square input with the default center crop mode:
       Image.open(path).convert("RGB")
       -> Resize(floor(224 / crop_pct), interpolation)   (shorter side, PIL antialiased)
       -> CenterCrop(224) -> ToTensor() -> Normalize(mean, std)
3. Stores the result compactly. The normalized tensor is a pure float32 function of the uint8
   crop (x / 255, then (x - mean) / std), so the crop is stored losslessly (`crops.u8.gz`, all
   crops concatenated, HWC RGB uint8) and `expected.json` keeps, per case, the crop's SHA-256,
   the float64 sum and sum of squares of the reference float32 tensor, and 64 reference float32
   values at positions drawn from `sample_seed` (see sample_positions), so a test can check that its reconstruction of the reference tensor
   is bit-exact before comparing against it.
"""
import gzip
import hashlib
import io
import json
import math
import os

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "preprocess")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

CONFIGS = {
    "bicubic_0.875": {"size": 224, "crop_pct": 0.875, "interpolation": "bicubic",
                      "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    "bicubic_0.9": {"size": 224, "crop_pct": 0.9, "interpolation": "bicubic",
                    "mean": HALF, "std": HALF},
    "bilinear_0.875": {"size": 224, "crop_pct": 0.875, "interpolation": "bilinear",
                       "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
}

# name, width, height, mode, container, configs
IMAGES = [
    ("rgb_500x375", 500, 375, "RGB", "JPEG", ["bicubic_0.875", "bicubic_0.9", "bilinear_0.875"]),
    ("rgb_375x500_portrait", 375, 500, "RGB", "JPEG", ["bicubic_0.875", "bicubic_0.9"]),
    ("rgb_1000x750_large", 1000, 750, "RGB", "JPEG", ["bicubic_0.875", "bilinear_0.875"]),
    ("rgb_1200x160_wide", 1200, 160, "RGB", "JPEG", ["bicubic_0.875"]),
    ("rgb_40x30_tiny", 40, 30, "RGB", "JPEG", ["bicubic_0.875", "bilinear_0.875"]),
    ("rgb_256x256_square", 256, 256, "RGB", "JPEG", ["bicubic_0.875", "bicubic_0.9"]),
    ("rgb_333x223_odd", 333, 223, "RGB", "JPEG", ["bicubic_0.9"]),
    ("gray_500x375", 500, 375, "L", "JPEG", ["bicubic_0.875"]),
    ("cmyk_500x375", 500, 375, "CMYK", "JPEG", ["bicubic_0.875"]),
    ("png_rgb_320x240", 320, 240, "RGB", "PNG", ["bicubic_0.875"]),
    ("png_rgba_300x260", 300, 260, "RGBA", "PNG", ["bicubic_0.9"]),
]


def synth(w, h, seed):
    """A deterministic photo-like RGB test image (uint8 HxWx3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        fx, fy = rng.uniform(0.5, 3.0, 2)
        ph = rng.uniform(0, 2 * math.pi)
        img[..., c] = 128 + 90 * np.sin(fx * 2 * math.pi * xx / w + ph) * np.cos(fy * 2 * math.pi * yy / h)
    for _ in range(12):  # ellipses with hard edges
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.03, 0.3) * w + 1, rng.uniform(0.03, 0.3) * h + 1
        mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        img[mask] = rng.uniform(0, 255, 3)
    # fine stripes (period 3 px) in one corner: aliasing without an antialiased resize
    sx, sy = w // 8, h // 8
    img[sy:sy + h // 4, sx:sx + w // 4] = np.where(
        ((xx[sy:sy + h // 4, sx:sx + w // 4] // 1.5) % 2 == 0)[..., None], 230.0, 25.0)
    img += rng.normal(0, 3, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_image(name, w, h, mode, container, seed):
    rgb = synth(w, h, seed)
    if mode == "RGB":
        im = Image.fromarray(rgb, "RGB")
    elif mode == "L":
        im = Image.fromarray(rgb, "RGB").convert("L")
    elif mode == "CMYK":
        im = Image.fromarray(rgb, "RGB").convert("CMYK")
        # give the K channel real content (RGB->CMYK in PIL leaves K at 0)
        c, m, y, _ = im.split()
        k = Image.fromarray(np.clip(np.arange(w)[None, :].repeat(h, 0) * 120 // max(w - 1, 1), 0, 255)
                            .astype(np.uint8), "L")
        im = Image.merge("CMYK", (c, m, y, k))
    elif mode == "RGBA":
        a = np.clip(np.arange(h)[:, None].repeat(w, 1) * 255 // max(h - 1, 1), 0, 255).astype(np.uint8)
        im = Image.fromarray(np.dstack([rgb, a]), "RGBA")
    else:
        raise ValueError(mode)
    path = os.path.join(OUT, f"{name}.JPEG")  # PNG files keep the .JPEG name on purpose
    if container == "JPEG":
        im.save(path, "JPEG", quality=90)
    else:
        im.save(path, "PNG", optimize=True)
    return path


def interp(name):
    return {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}[name]


def reference(path, cfg):
    scale = math.floor(cfg["size"] / cfg["crop_pct"])
    img = Image.open(path).convert("RGB")
    geo = T.Compose([T.Resize(scale, interpolation=interp(cfg["interpolation"])),
                     T.CenterCrop(cfg["size"])])
    full = T.Compose([geo, T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])])
    tensor = full(img).numpy().astype(np.float32)
    crop = np.asarray(geo(img), dtype=np.uint8)
    # the tensor must be a function of the crop alone (what the test relies on)
    again = T.Normalize(cfg["mean"], cfg["std"])(T.ToTensor()(Image.fromarray(crop))).numpy()
    assert np.array_equal(again, tensor), path
    resized = T.Resize(scale, interpolation=interp(cfg["interpolation"]))(img).size
    return crop, tensor, scale, resized


def delta_encode(crop):
    """Row-wise horizontal difference mod 256 per channel (first pixel of a row kept as is)."""
    d = crop.astype(np.int16)
    d[:, 1:, :] -= crop[:, :-1, :].astype(np.int16)
    return (d % 256).astype(np.uint8).tobytes()


def sample_positions(n, count, seed):
    """`count` positions in [0, n): s = (s * 1103515245 + 12345) mod 2^31, position = s mod n."""
    s = seed
    out = []
    for _ in range(count):
        s = (s * 1103515245 + 12345) % 2**31
        out.append(s % n)
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    cases = []
    blob = io.BytesIO()
    for seed, (name, w, h, mode, container, cfgs) in enumerate(IMAGES):
        path = make_image(name, w, h, mode, container, seed + 1)
        with Image.open(path) as probe:
            file_mode, file_format = probe.mode, probe.format
        for cname in cfgs:
            cfg = CONFIGS[cname]
            crop, tensor, scale, resized = reference(path, cfg)
            flat = tensor.reshape(-1)
            pos = sample_positions(flat.size, 64, 1234 + len(cases))
            cases.append({
                "file": os.path.basename(path),
                "source": {"width": w, "height": h, "mode": file_mode, "format": file_format},
                "config": cname,
                "scale_size": scale,
                "resized": list(resized),
                "crop_offset": blob.tell(),
                "crop_sha256": hashlib.sha256(crop.tobytes()).hexdigest(),
                "tensor_sum": float(flat.astype(np.float64).sum()),
                "tensor_sumsq": float((flat.astype(np.float64) ** 2).sum()),
                "sample_seed": 1234 + len(cases),
                "sample_values": [float(flat[p]) for p in pos],
            })
            blob.write(delta_encode(crop))
    with gzip.GzipFile(os.path.join(OUT, "crops.u8.gz"), "wb", mtime=0, compresslevel=9) as f:
        f.write(blob.getvalue())
    meta = {
        "generator": "tools/make_preprocess_fixtures.py",
        "versions": {"pillow": PIL.__version__, "torchvision": torchvision.__version__,
                     "torch": torch.__version__, "numpy": np.__version__},
        "pipeline": "Image.open(p).convert('RGB') -> Resize(floor(size/crop_pct), interp) -> "
                    "CenterCrop(size) -> ToTensor() -> Normalize(mean, std)",
        "crop_layout": "HWC RGB uint8, size x size x 3, row-wise delta-coded mod 256, concatenated in crops.u8.gz",
        "configs": CONFIGS,
        "cases": cases,
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(meta, f, indent=2)  # the layout deno fmt keeps
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"{len(cases)} cases, {len(IMAGES)} images, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
