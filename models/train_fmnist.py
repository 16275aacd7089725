#!/usr/bin/env python3
"""Train vitq's shipped small vision transformers on Fashion-MNIST and export them to ONNX.

Offline tool (Debian's python3-torch and python3-onnx are enough). It writes
`models/<name>.onnx` and `models/<name>.json` (the model card). The framework
itself never runs this script; it only reads what it produced.

    /usr/bin/python3 models/train_fmnist.py --arch vit --out models/vit_fmnist

Architectures:
  vit  : class token, pre-norm blocks, multi-head attention, GELU MLP.
  deit : class and distillation tokens, two heads averaged at inference.
  swin : window attention, shifted windows, relative position bias, patch merging.
"""
import argparse
import gzip
import json
import math
import os
import struct
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN, STD = 0.2860, 0.3530


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and dtype == 0x08, f"{path}: not an unsigned-byte IDX file"
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, bias=None):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if bias is not None:
            attn = attn + bias
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT (one class token) or DeiT (class + distillation token, heads averaged)."""

    def __init__(self, dim=64, depth=6, heads=4, mlp_ratio=2.0, patch=4, img=28, classes=10, distilled=False,
                 in_chans=1):
        super().__init__()
        self.distilled = distilled
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, patch)
        n = (img // patch) ** 2
        extra = 2 if distilled else 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.randn(1, n + extra, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)
        self.head_dist = nn.Linear(dim, classes) if distilled else None

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        toks = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.distilled:
            toks.append(self.dist_token.expand(x.shape[0], -1, -1))
        x = torch.cat(toks + [x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        if self.distilled:
            return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
        return self.head(x[:, 0])


def window_partition(x, ws):
    b, h, w, c = x.shape
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(x, ws, h, w):
    c = x.shape[-1]
    b = x.shape[0] // ((h // ws) * (w // ws))
    x = x.reshape(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class SwinBlock(nn.Module):
    def __init__(self, dim, heads, res, ws, shift, mlp_ratio):
        super().__init__()
        self.res, self.ws, self.shift, self.heads = res, ws, shift, heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, heads)
        self.rel_table = nn.Parameter(torch.randn((2 * ws - 1) ** 2, heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("rel_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1], persistent=False)
        if shift > 0:
            img = torch.zeros(1, res, res, 1)
            cnt = 0
            for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                    img[:, hs, wsl, :] = cnt
                    cnt += 1
            mw = window_partition(img, ws).squeeze(-1)
            mask = mw[:, None, :] - mw[:, :, None]
            mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        else:
            mask = torch.zeros((res // ws) ** 2, ws * ws, ws * ws)
        self.register_buffer("mask", mask, persistent=False)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        b, n, c = x.shape
        r, ws = self.res, self.ws
        shortcut = x
        x = self.norm1(x).reshape(b, r, r, c)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = window_partition(x, ws)
        nw = win.shape[0] // b
        bias = self.rel_table[self.rel_index.reshape(-1)].reshape(ws * ws, ws * ws, -1).permute(2, 0, 1)
        bias = bias[None, None] + self.mask[None, :, None]  # (1, nW, heads, N, N)
        bias = bias.expand(b, -1, -1, -1, -1).reshape(b * nw, self.heads, ws * ws, ws * ws)
        win = self.attn(win, bias)
        x = window_reverse(win, ws, r, r)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, res, dim):
        super().__init__()
        self.res = res
        self.norm = nn.LayerNorm(4 * dim, eps=1e-5)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        b, n, c = x.shape
        r = self.res
        x = x.reshape(b, r, r, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class Swin(nn.Module):
    """Two stages: 8x8 tokens (dim 64, 4 blocks) -> merge -> 4x4 tokens (dim 128, 2 blocks), window 4."""

    def __init__(self, classes=10, dim=64, heads=(2, 4), depths=(4, 2), ws=4, mlp_ratio=3.0):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, 4, 4)  # 32x32 padded input -> 8x8
        self.embed_norm = nn.LayerNorm(dim, eps=1e-5)
        res = 8
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            d = dim * 2 ** i
            win = min(ws, res)
            blocks = [SwinBlock(d, heads[i], res, win, (win // 2 if (j % 2 and res > win) else 0), mlp_ratio) for j in range(depth)]
            self.stages.append(nn.ModuleList(blocks))
            if i < len(depths) - 1:
                self.stages.append(nn.ModuleList([PatchMerging(res, d)]))
                res //= 2
        self.norm = nn.LayerNorm(dim * 2 ** (len(depths) - 1), eps=1e-5)
        self.head = nn.Linear(dim * 2 ** (len(depths) - 1), classes)

    def forward(self, x):
        x = F.pad(x, (2, 2, 2, 2))
        x = self.embed_norm(self.patch_embed(x).flatten(2).transpose(1, 2))
        for stage in self.stages:
            for blk in stage:
                x = blk(x)
        return self.head(self.norm(x).mean(1))


def build(arch):
    if arch == "vit":
        return ViT()
    if arch == "deit":
        return ViT(heads=2, distilled=True)
    if arch == "swin":
        return Swin()
    raise SystemExit(f"unknown --arch {arch}")


def augment(x, gen):
    """Random 2-pixel translation (pad-and-crop) and horizontal flip, on uint8-derived floats."""
    b = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2))
    dx = torch.randint(0, 5, (b,), generator=gen)
    dy = torch.randint(0, 5, (b,), generator=gen)
    out = torch.empty_like(x)
    for sy in range(5):
        for sx in range(5):
            sel = (dy == sy) & (dx == sx)
            if sel.any():
                out[sel] = padded[sel, :, sy:sy + 28, sx:sx + 28]
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def load_onnx_weights(model, path):
    """Load weights exported by this script back into `model` (to continue training).

    Initializers keep their torch names except MatMul weights, which the exporter
    stores transposed under generated names; those are matched through the name of
    the MatMul node (e.g. /blocks.0/attn/qkv/MatMul -> blocks.0.attn.qkv.weight).
    """
    import onnx
    from onnx import numpy_helper
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    producers = {}
    for n in m.graph.node:
        if n.op_type == "Identity" and n.input[0] in inits:
            inits[n.output[0]] = inits[n.input[0]]
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            producers[n.name] = (n.op_type, n.input[1], n)
    state = model.state_dict()
    new = {}
    for name, (op, w, node) in producers.items():
        key = name.strip("/").replace("/", ".").rsplit(".", 1)[0] + ".weight"
        arr = inits[w]
        trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        new[key] = arr if (op == "Gemm" and trans_b) else arr.T
    for k in state:
        if k not in new and k in inits:
            new[k] = inits[k]
    # Swin: the exporter folds rel_table[rel_index] + shift mask into one (1, nW, heads, N, N)
    # constant per block, in block order; window 0 carries no shift mask, so its N x N
    # bias gives every table entry back (each entry is checked to be read consistently).
    tables = [k for k in state if k.endswith(".rel_table") and k not in new]
    if tables:
        folded = []
        for n in m.graph.node:
            for i in n.input:
                if i in inits and inits[i].ndim == 5 and i not in folded:
                    folded.append(i)
        if len(folded) != len(tables):
            raise SystemExit(f"{path}: {len(tables)} rel_table parameters, {len(folded)} folded biases")
        for k, f in zip(tables, folded):
            attn = model.get_submodule(k.rsplit(".", 1)[0])
            idx = attn.rel_index.reshape(-1).numpy()
            bias = inits[f][0, 0].reshape(inits[f].shape[2], -1).T  # (N*N, heads)
            table = np.zeros(state[k].shape, dtype=np.float32)
            table[idx] = bias
            if not np.allclose(table[idx], bias, atol=1e-6):
                raise SystemExit(f"{path}: {f} is not a relative position bias of {k}")
            new[k] = table
    missing = [k for k in state if k not in new]
    if missing:
        raise SystemExit(f"{path}: cannot map parameters {missing}")
    model.load_state_dict({k: torch.from_numpy(v.copy()).reshape(state[k].shape) for k, v in new.items()})


def evaluate(model, x, y, bs=500):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), bs):
            correct += (model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum().item()
    return correct / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="vit")
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=7)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--init", help="continue training from an ONNX file written by this script")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up epochs")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    tr_x = read_idx(os.path.join(args.data, "train-images-idx3-ubyte.gz"))
    tr_y = read_idx(os.path.join(args.data, "train-labels-idx1-ubyte.gz"))
    te_x = read_idx(os.path.join(args.data, "t10k-images-idx3-ubyte.gz"))
    te_y = read_idx(os.path.join(args.data, "t10k-labels-idx1-ubyte.gz"))
    norm = lambda a: (torch.from_numpy(a.astype(np.float32) / 255.0)[:, None] - MEAN) / STD
    xtr, ytr = norm(tr_x), torch.from_numpy(tr_y.astype(np.int64))
    xte, yte = norm(te_x), torch.from_numpy(te_y.astype(np.int64))
    model = build(args.arch)
    if args.init:
        load_onnx_weights(model, args.init)
        print(f"initialized from {args.init}: test top1 {evaluate(model, xte, yte) * 100:.2f}", flush=True)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * (len(xtr) // args.batch)
    warm = max(1, args.warmup * (len(xtr) // args.batch))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    t0 = time.time()
    for ep in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr) - args.batch + 1, args.batch):
            idx = perm[i:i + args.batch]
            xb = augment(xtr[idx], gen)
            loss = F.cross_entropy(model(xb), ytr[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate(model, xte, yte)
        print(f"epoch {ep + 1}/{args.epochs} loss {loss.item():.4f} test top1 {acc * 100:.2f} ({time.time() - t0:.0f}s)", flush=True)
    acc = evaluate(model, xte, yte)
    model.eval()
    onnx_path = args.out + ".onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), onnx_path, opset_version=args.opset,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True)
    prev = None
    if args.init and os.path.exists(args.init.replace(".onnx", ".json")):
        with open(args.init.replace(".onnx", ".json")) as f:
            prev = json.load(f).get("training")
    card = {
        "name": os.path.basename(args.out),
        "arch": args.arch,
        "file": os.path.basename(onnx_path),
        "input": {"name": "input", "channels": 1, "height": 28, "width": 28},
        "normalization": {"mean": [MEAN], "std": [STD], "scale": "x/255"},
        "preprocess": "none (28x28 grayscale, no resize or crop)",
        "classes": 10,
        "dataset": "fashion-mnist",
        "parameters": params,
        "fp32_top1": round(acc * 100, 2),
        "fp32_top1_source": "PyTorch, full 10,000-image test set, at training time",
        "training": {
            "script": "models/train_fmnist.py", "arch": args.arch, "epochs": args.epochs, "batch": args.batch,
            "optimizer": "AdamW", "lr": args.lr, "weight_decay": 0.05, "schedule": f"{args.warmup}-epoch linear warm-up, cosine",
            "init": args.init, "previous_training": prev,
            "label_smoothing": 0.1, "augmentation": "random 2-pixel translation, horizontal flip",
            "seed": args.seed, "torch": torch.__version__, "onnx_opset": args.opset,
            "seconds": round(time.time() - t0),
        },
    }
    with open(args.out + ".json", "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    print(json.dumps(card))


if __name__ == "__main__":
    main()
