#!/usr/bin/env python3
"""Reference gradients of the shipped ViT from PyTorch autograd, for tests/autodiff_torch.test.ts.

Rebuilds the network of models/train_fmnist.py (`build("vit")`) in PyTorch,
loads the ONNX model's weights into it (`load_onnx_weights`), converts model
and inputs to float64 and computes with autograd, on the first N Fashion-MNIST
test images (normalized as the model card says) plus fixed-seed Gaussian noise:

  ce : cross-entropy to the true labels (one-hot), mean over the batch
       (vitq's `cross_entropy` term);
  kl : KL(p_clean || softmax(logits on the perturbed images)), summed and
       divided by N like torch `kl_div(..., reduction="batchmean")` (vitq's
       `kl` term), p_clean being the model's own float64 probabilities on the
       clean images, rounded to float32 as they are fed to ONNX Runtime.

Both losses are evaluated on the perturbed images. Gradients are taken with
respect to the graph input, a few activations (linear outputs named by their
vitq site id, the head input) and the patch embedding weight; the forward
values of those activations are stored too, so the test first checks that the
ONNX value a site names is the torch module's output.

Usage (run from the repository root; regenerate whenever the model changes):

    /usr/bin/python3 tools/make_grad_fixtures.py

Options: --model (default models/vit_fmnist.onnx; its card is the .json next
to it), --data (folder with t10k-images/labels-idx*-ubyte[.gz], default the
shipped datasets/fashion-mnist), --n (images, default 3), --seed (noise seed,
default 0), --noise (std of the noise in normalized units, default 0.3),
--out (fixture prefix, default tests/fixtures/vit_fmnist_grads).

Writes <out>.json (index: model sha256, settings, labels, losses, and for each
tensor its shape and offset) and <out>.bin (little-endian float32, all tensors
back to back). Deterministic: same model and options, same bytes (up to
floating-point differences between torch builds).
"""
import argparse
import hashlib
import importlib.util
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (fixture name, vitq site id, which value of the site, torch module, hook kind)
# "output": the module's output (for linears, after the bias Add in ONNX);
# "input": the module's input (the head's input is the class token after the final LayerNorm).
ACTIVATIONS = [
    ("b0.qkv", "b0.qkv", "output", "blocks.0.attn.qkv", "output"),
    ("b2.fc1", "b2.fc1", "output", "blocks.2.mlp.fc1", "output"),
    ("b5.proj", "b5.proj", "output", "blocks.5.attn.proj", "output"),
    ("b5.fc2", "b5.fc2", "output", "blocks.5.mlp.fc2", "output"),
    ("head.input", "head", "input", "head", "input"),
]
# weights whose torch and ONNX layouts agree (Conv: [out, in, kh, kw] in both)
WEIGHTS = [("patch_embed.weight", "patch_embed", "weight", "patch_embed.weight")]


def load_train_module():
    path = os.path.join(ROOT, "models", "train_fmnist.py")
    spec = importlib.util.spec_from_file_location("train_fmnist", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def find_idx(folder, base):
    for name in (base, base + ".gz"):
        p = os.path.join(folder, name)
        if os.path.exists(p):
            return p
    raise SystemExit(f"{folder}: no {base}[.gz]")


def rel(path):
    """Path relative to the repository root, or absolute when outside it."""
    r = os.path.relpath(os.path.abspath(path), ROOT)
    return os.path.abspath(path) if r.startswith("..") else r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "vit_fmnist.onnx"))
    ap.add_argument("--data", default=os.path.join(ROOT, "datasets", "fashion-mnist"))
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.3)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "vit_fmnist_grads"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    tf = load_train_module()

    with open(args.model, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.splitext(args.model)[0] + ".json") as f:
        card = json.load(f)
    if card.get("arch") != "vit":
        raise SystemExit(f"{args.model}: arch {card.get('arch')!r}, this script builds 'vit'")
    mean = float(card["normalization"]["mean"][0])
    std = float(card["normalization"]["std"][0])
    assert card["normalization"].get("scale", "x/255") == "x/255"

    model = tf.build("vit")
    tf.load_onnx_weights(model, args.model)
    model = model.double().eval()

    n = args.n
    images = tf.read_idx(find_idx(args.data, "t10k-images-idx3-ubyte"))[:n]
    labels = tf.read_idx(find_idx(args.data, "t10k-labels-idx1-ubyte"))[:n].astype(np.int64)
    # inputs as ONNX Runtime sees them (float32); torch gets the same values in float64
    clean = ((images.astype(np.float64) / 255.0 - mean) / std).astype(np.float32)[:, None]
    noise = np.random.default_rng(args.seed).standard_normal(clean.shape) * args.noise
    perturbed = (clean.astype(np.float64) + noise).astype(np.float32)
    onehot = np.eye(10, dtype=np.float32)[labels]
    with torch.no_grad():
        clean_logits = model(torch.from_numpy(clean).double())
    target = torch.softmax(clean_logits, -1).numpy().astype(np.float32)

    modules = dict(model.named_modules())
    params = dict(model.named_parameters())

    def run(kind):
        """Forward on the perturbed images, one loss, backward; returns loss, logits, acts, grads."""
        model.zero_grad(set_to_none=True)
        acts = {}
        hooks = []
        for name, _, _, mod, where in ACTIVATIONS:
            def hook(_m, inp, out, name=name, where=where):
                t = out if where == "output" else inp[0]
                t.retain_grad()
                acts[name] = t
            hooks.append(modules[mod].register_forward_hook(hook))
        x = torch.from_numpy(perturbed).double().requires_grad_(True)
        logits = model(x)
        for h in hooks:
            h.remove()
        lsm = F.log_softmax(logits, -1)
        if kind == "ce":
            y = torch.from_numpy(onehot).double()
            loss = -(y * lsm).sum(-1).mean()
            assert torch.allclose(loss, F.cross_entropy(logits, torch.from_numpy(labels)), rtol=1e-12)
        else:
            p = torch.from_numpy(target).double()
            loss = (p * (torch.log(p) - lsm)).sum() / n
            assert torch.allclose(loss, F.kl_div(lsm, p, reduction="batchmean"), rtol=1e-12)
        loss.backward()
        grads = {"input": x.grad}
        grads.update({name: acts[name].grad for name, *_ in ACTIVATIONS})
        grads.update({name: params[p].grad for name, _, _, p in WEIGHTS})
        return loss.item(), logits.detach(), {k: v.detach() for k, v in acts.items()}, grads

    tensors = {}
    order = []

    def put(key, arr):
        tensors[key] = np.ascontiguousarray(np.asarray(arr, dtype=np.float32))
        order.append(key)

    put("inputs.perturbed", perturbed)
    put("inputs.clean", clean)
    put("targets.onehot", onehot)
    put("targets.kl", target)
    losses = {}
    for kind in ("ce", "kl"):
        loss, logits, acts, grads = run(kind)
        losses[kind] = loss
        if kind == "ce":
            put("forward.logits", logits.numpy())
            for name, *_ in ACTIVATIONS:
                put(f"forward.{name}", acts[name].numpy())
        for name, g in grads.items():
            put(f"grad.{kind}.{name}", g.numpy())

    out_json, out_bin = args.out + ".json", args.out + ".bin"
    offset = 0
    index = {}
    with open(out_bin, "wb") as f:
        for key in order:
            a = tensors[key]
            f.write(a.astype("<f4").tobytes())
            index[key] = {"shape": list(a.shape), "offset": offset}
            offset += a.size
    command = "/usr/bin/python3 tools/make_grad_fixtures.py"
    defaults = {"model": "models/vit_fmnist.onnx", "data": "datasets/fashion-mnist", "n": 3, "seed": 0,
                "noise": 0.3, "out": "tests/fixtures/vit_fmnist_grads"}
    given = {"model": rel(args.model), "data": rel(args.data), "n": args.n, "seed": args.seed,
             "noise": args.noise, "out": rel(args.out)}
    for k, v in given.items():
        if v != defaults[k]:
            command += f" --{k} {v}"
    meta = {
        "description": "PyTorch float64 autograd reference gradients of the shipped ViT "
                       "(tools/make_grad_fixtures.py; checked by tests/autodiff_torch.test.ts)",
        "command": command,
        "model": rel(args.model),
        "model_sha256": sha,
        "torch": torch.__version__,
        "dtype": "float64 (stored as float32)",
        "images": {"data": rel(args.data), "split": "test", "indices": list(range(n)),
                   "labels": labels.tolist()},
        "normalization": {"mean": mean, "std": std, "scale": "x/255"},
        "noise": {"kind": "gaussian, normalized units, numpy default_rng", "std": args.noise,
                  "seed": args.seed},
        "losses": {
            "ce": {"kind": "cross_entropy", "target": "targets.onehot", "value": losses["ce"]},
            "kl": {"kind": "kl", "target": "targets.kl", "value": losses["kl"]},
        },
        "activations": [{"name": a, "site": s, "value": v, "torch": m, "torch_hook": w}
                        for a, s, v, m, w in ACTIVATIONS],
        "weights": [{"name": a, "site": s, "value": v, "torch": p} for a, s, v, p in WEIGHTS],
        "bin": os.path.basename(out_bin),
        "tensors": index,
    }
    with open(out_json, "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"wrote {rel(out_json)} and {rel(out_bin)} ({offset * 4} bytes); "
          f"ce {losses['ce']:.6f} kl {losses['kl']:.6f}; model sha256 {sha[:12]}")


if __name__ == "__main__":
    main()
