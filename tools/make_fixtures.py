#!/usr/bin/env python3
"""Make the tiny random-weight ONNX graphs under tests/fixtures/ (site-finder and runtime tests).

    /usr/bin/python3 tools/make_fixtures.py

Each graph uses the architectures of models/train_fmnist.py at a tiny width, with a fixed
seed, exported at two opsets: 17 (LayerNormalization op) and 13 (LayerNorm decomposed into
ReduceMean/Sub/Pow/Sqrt/Div), both with GELU as the Erf pattern.
"""
import importlib.util
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
for name, model in models.items():
    model.eval()
    for opset in (17, 13):
        path = os.path.join(out, f"{name}_op{opset}.onnx")
        torch.onnx.export(model, torch.zeros(1, 1, 28, 28), path, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)
        print(path, os.path.getsize(path))
