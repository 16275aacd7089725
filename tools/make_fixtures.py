#!/usr/bin/env python3
"""Make the tiny random-weight ONNX graphs under tests/fixtures/ (site-finder and runtime tests).

    /usr/bin/python3 tools/make_fixtures.py

Each graph uses the architectures of models/train_fmnist.py at a tiny width, with a fixed
seed, exported at two opsets: 17 (LayerNormalization op) and 13 (LayerNorm decomposed into
ReduceMean/Sub/Pow/Sqrt/Div), both with GELU as the Erf pattern.
"""
import importlib.util
import json
import os

import torch

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("train", os.path.join(here, "..", "models", "train_fmnist.py"))
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)
out = os.path.join(here, "..", "tests", "fixtures")
os.makedirs(out, exist_ok=True)

torch.manual_seed(0)
models = {
    "tiny_vit": train.ViT(dim=16, depth=2, heads=2, mlp_ratio=2.0),
    "tiny_deit": train.ViT(dim=16, depth=2, heads=2, mlp_ratio=2.0, distilled=True),
    "tiny_swin": train.Swin(dim=8, heads=(1, 2), depths=(2, 2), ws=4, mlp_ratio=2.0),
}
# an RGB ImageNet-style model (32x32 input, 3 classes) for the ImageNet runner test
rgb = train.ViT(dim=16, depth=1, heads=2, mlp_ratio=2.0, patch=8, img=32, classes=3, in_chans=3).eval()
rgb_path = os.path.join(out, "tiny_vit_rgb.onnx")
torch.onnx.export(rgb, torch.zeros(1, 3, 32, 32), rgb_path, opset_version=17, input_names=["input"],
                  output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
with open(os.path.join(out, "tiny_vit_rgb.json"), "w") as f:
    json.dump({"name": "tiny_vit_rgb", "file": "tiny_vit_rgb.onnx",
               "input": {"name": "input", "channels": 3, "height": 32, "width": 32},
               "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
               "crop_pct": 0.875, "interpolation": "bicubic", "classes": 3, "dataset": "imagenet"}, f, indent=2)
    f.write("\n")

for name, model in models.items():
    model.eval()
    for opset in (17, 13):
        path = os.path.join(out, f"{name}_op{opset}.onnx")
        torch.onnx.export(model, torch.zeros(1, 1, 28, 28), path, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)
        print(path, os.path.getsize(path))
