#!/usr/bin/env python3
"""Export a ViT-B sized graph with random weights (about 350 MB) for the big-graph benchmark.

    /usr/bin/python3 tools/make_big_graph.py /tmp/vit_b_random.onnx [--dim 768 --depth 12 --heads 12]

Not committed: the benchmark (tools/bench_big_graph.ts) generates it when missing.
"""
import argparse
import importlib.util
import os

import torch

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("train", os.path.join(here, "..", "models", "train_fmnist.py"))
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--dim", type=int, default=768)
ap.add_argument("--depth", type=int, default=12)
ap.add_argument("--heads", type=int, default=12)
ap.add_argument("--img", type=int, default=224)
ap.add_argument("--classes", type=int, default=1000)
a = ap.parse_args()
torch.manual_seed(0)
m = train.ViT(dim=a.dim, depth=a.depth, heads=a.heads, mlp_ratio=4.0, patch=16, img=a.img, classes=a.classes,
              in_chans=3).eval()
torch.onnx.export(m, torch.zeros(1, 3, a.img, a.img), a.out, opset_version=17, input_names=["input"],
                  output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
print(a.out, os.path.getsize(a.out), sum(p.numel() for p in m.parameters()))
