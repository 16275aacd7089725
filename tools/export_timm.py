#!/usr/bin/env python3
"""Export a timm image classifier to ONNX with a vitq model card.

    python3 tools/export_timm.py --model deit_small_patch16_224 --out models/deit_s \\
        [--top1 79.85] [--opset 17] [--pretrained-tag fb_in1k] [--check]
    python3 tools/export_timm.py --model vit_small_patch16_224 --out /tmp/vit_s \\
        --random-weights [--seed 0] [--depth 2] [--set embed_dim=96] [--fused-attn off]

Needs torch and timm (pip install torch timm; onnx and onnxruntime are optional, for
--check). Weights come from timm's usual download (Hugging Face Hub) unless they are in
its cache already. Without network the download fails within seconds (the hub's
timeouts are shortened and retries are not waited for) with one `error:` line, exit 2;
set HF_HUB_OFFLINE=1 to use the cache only.

--random-weights: the architecture with timm's own initialization (torch.manual_seed
--seed before the model is built), no download. The card then says "weights": "random"
and has no Top-1. This is what tests, CI and anyone checking a graph without the
checkpoint use.

With --random-weights, initializers with identical values (timm's zero biases and
all-ones LayerNorm γ/β) are kept apart, one per parameter as in a pretrained export; the
exporter would otherwise merge them, so that several layers read one tensor.

--depth N: a reduced-depth variant (timm's `depth` argument; for Swin, `depths` = N in
every stage). --set key=value passes any other timm.create_model keyword (the value is
read as JSON when it parses, e.g. --set embed_dim=96 --set "num_heads=[2,4,8,16]");
the card lists the overrides under "reduced" so a reduced graph is never mistaken for
the paper model.

--fused-attn on|off: timm >= 0.9 computes attention with
F.scaled_dot_product_attention when fused attention is on, which the TorchScript
exporter writes as q*sqrt(scale) @ (k^T*sqrt(scale)) with the scalar computed from the
shape (Shape/Gather/Cast/Sqrt/Div); off gives timm 0.4.12's form (q @ k^T * scale).
Default: timm's own default. "on" fails with timm versions without fused attention.

torchvision: timm imports torchvision; a torchvision whose C extension does not load
(e.g. a CUDA wheel next to a CPU torch: "operator torchvision::nms does not exist")
would stop the import. The script then retries with torchvision's fake-tensor
registrations module stubbed out (only torch.compile meta kernels for detection ops,
which timm's classifiers never call) and prints a note.

Writes
  <out>.onnx  float32 graph, input "input" [batch, 3, H, W] with a dynamic batch
              dimension, output "logits" [batch, classes]
  <out>.json  model card: name, arch, file, input size, normalization (mean, std,
              scale x/255), crop_pct, interpolation, classes, dataset "imagenet",
              timm model name, pretrained tag and version, torch version, opset,
              parameter count, the ONNX file's SHA-256 and, with --top1, the FP32
              ImageNet Top-1 (%) you report for this model.

Pretrained tags: timm >= 0.9 names weights `<model>.<tag>`, and its default tag for some
names is not the checkpoint the PTQ papers evaluated (vit_base_patch16_224 defaults to
augreg2_in21k_ft_in1k, swin_small_patch4_window7_224 to ms_in22k_ft_in1k); pass
--pretrained-tag (models/paper_registry.json lists the paper tags). With timm < 0.9,
which has no tags, the tag is ignored with a note and timm's default weights are used.

The preprocessing fields are timm's pretrained data config for the model
(timm.data.resolve_model_data_config), the same values timm's own validate.py uses.
vitq reproduces timm's eval transform for square inputs and center crops only; the
script refuses other crop modes.

--check runs the ONNX file with onnxruntime at batch sizes 1 and 3 on random inputs and
compares with PyTorch (max abs difference of logits), so a broken export or a batch
dimension that is not dynamic is caught here rather than in a benchmark.
"""
import argparse
import hashlib
import inspect
import json
import math
import os
import sys


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def hub_reachable(timeout=5.0):
    """Whether a TCP connection to the Hugging Face Hub (or the HTTPS proxy) opens in time."""
    import socket
    from urllib.parse import urlparse
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(proxy if proxy else endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return True  # cannot tell; let the hub client decide
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError as e:
        print(f"note: {host}:{port} not reachable ({e}); using the local weight cache only "
              "(HF_HUB_OFFLINE=1)")
        return False


def import_torch_timm(pretrained):
    """Import torch and timm; work around a torchvision whose C extension does not load.

    With `pretrained`, probe the hub first: unreachable -> HF_HUB_OFFLINE=1 (read by
    huggingface_hub at import), so a missing checkpoint fails in seconds, not after the
    hub client's minute of retries."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    if pretrained and os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0") and not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import torch
    except ImportError as e:
        fail(f"this script needs torch and timm ({e}); pip install torch timm")
    try:
        import torchvision  # noqa: F401  (timm imports it; load it first to see if it works)
    except ImportError:
        pass  # timm works without torchvision for the models vitq exports
    except RuntimeError as e:
        # torchvision/_meta_registrations.py registers fake kernels for its C++ ops
        # (nms, roi_align, ...) and raises when the C extension did not define them.
        # Those are torch.compile meta kernels for detection ops that timm's
        # classifiers never call: stub that module and import the rest.
        import types
        for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[mod]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType(
            "torchvision._meta_registrations")
        try:
            import torchvision  # noqa: F401,F811
        except Exception as e2:
            fail(f"torchvision does not import ({e}; with its op registrations stubbed: {e2}); "
                 "pip uninstall torchvision, or install the build that matches torch")
        print(f"note: torchvision's C extension does not load ({e}); "
              "its detection-op registrations are stubbed (not used by timm classifiers)")
    try:
        import timm
    except ImportError as e:
        fail(f"this script needs torch and timm ({e}); pip install torch timm")
    return torch, timm


def set_fused_attn(timm, model, mode):
    """Switch every attention module of `model` to fused (SDPA) or explicit attention.

    Returns the number of modules switched; fails when "on" is asked of a timm without
    fused attention."""
    if mode is None:
        return None
    flag = mode == "on"
    switched = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = flag
            switched += 1
    if flag and switched == 0:
        fail(f"--fused-attn on: timm {getattr(timm, '__version__', '?')}'s "
             f"{type(model).__name__} has no fused attention (timm >= 0.9 has it)")
    return switched


def parse_overrides(items):
    """`key=value` pairs for timm.create_model; values parsed as JSON when they parse."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            fail(f"--set {item!r}: expected key=value with a timm.create_model keyword")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def data_config(timm, model):
    """timm's pretrained eval data config for `model` (works with timm 0.6 to 1.x)."""
    data = timm.data
    if hasattr(data, "resolve_model_data_config"):
        return data.resolve_model_data_config(model)
    return data.resolve_data_config({}, model=model)


def timm_major_minor(timm):
    try:
        parts = timm.__version__.split(".")
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (AttributeError, IndexError, ValueError):
        return (99, 0)


def arch_of(name):
    for prefix in ("deit", "swin", "vit"):
        if name.startswith(prefix):
            return prefix
    return name.split("_")[0]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(torch, model, dummy, path, opset, keep_duplicates=False):
    kwargs = dict(
        opset_version=opset,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=True,
        export_params=True,
    )
    # torch >= 2.5 also has the dynamo exporter (default in recent releases); vitq's graph
    # tools are tested on the TorchScript exporter's graphs, so ask for it explicitly
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    # The TorchScript exporter merges initializers with identical values. A trained
    # checkpoint has none, but timm's random init has many (zero biases, all-ones
    # LayerNorm γ), and a merged one makes several layers read one tensor, which a
    # trained export never does; keep_duplicates skips that pass for such graphs.
    C = torch._C
    dedup = getattr(C, "_jit_pass_onnx_deduplicate_initializers", None)
    if keep_duplicates and dedup is not None:
        C._jit_pass_onnx_deduplicate_initializers = lambda graph, params, training: params
    try:
        with torch.no_grad():
            torch.onnx.export(model, dummy, path, **kwargs)
    finally:
        if keep_duplicates and dedup is not None:
            C._jit_pass_onnx_deduplicate_initializers = dedup


def check_onnx(torch, model, path, size, classes):
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        print("--check: onnxruntime or numpy not installed; skipped")
        return
    try:
        import onnx
        onnx.checker.check_model(path)
    except ImportError:
        pass
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 3):
        x = torch.randn(batch, 3, size[0], size[1], generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = model(x).numpy()
        out = sess.run(["logits"], {"input": x.numpy()})[0]
        if out.shape != (batch, classes):
            fail(f"{path}: output shape {out.shape} at batch {batch}, expected ({batch}, {classes})")
        diff = float(np.abs(out - ref).max())
        worst = max(worst, diff)
        if not (diff < 1e-3 * max(1.0, float(np.abs(ref).max()))):
            fail(f"{path}: ONNX Runtime differs from PyTorch by {diff:.3g} at batch {batch}")
    print(f"--check: ONNX Runtime matches PyTorch at batch 1 and 3 (max |diff| {worst:.2e})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="timm model name, e.g. deit_small_patch16_224")
    ap.add_argument("--out", required=True,
                    help="output path without extension, e.g. models/deit_s")
    ap.add_argument("--top1", type=float, default=None,
                    help="FP32 ImageNet-1k val Top-1 in percent that you report for this model")
    ap.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    ap.add_argument("--pretrained-tag", default=None,
                    help="timm pretrained tag, e.g. augreg_in21k_ft_in1k (default: timm's default)")
    ap.add_argument("--random-weights", action="store_true",
                    help="timm's own random initialization (seeded by --seed); no download")
    ap.add_argument("--seed", type=int, default=0, help="seed for --random-weights (default 0)")
    ap.add_argument("--depth", type=int, default=None,
                    help="reduced depth: N blocks (Swin: N blocks in every stage)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="other timm.create_model keyword, e.g. embed_dim=96 (repeatable)")
    ap.add_argument("--fused-attn", choices=["on", "off"], default=None,
                    help="fused (SDPA) or explicit attention (default: timm's default)")
    ap.add_argument("--check", action="store_true",
                    help="compare ONNX Runtime with PyTorch on random inputs (needs onnxruntime)")
    args = ap.parse_args()

    if args.top1 is not None and not (0.0 < args.top1 <= 100.0):
        fail(f"--top1 {args.top1}: expected a percentage in (0, 100]")
    if not 13 <= args.opset <= 17:
        fail(f"--opset {args.opset}: vitq supports opsets 13 to 17")
    if args.depth is not None and args.depth < 1:
        fail(f"--depth {args.depth}: expected a positive number of blocks")
    if args.random_weights and args.pretrained_tag:
        fail("--pretrained-tag names a checkpoint; it cannot go with --random-weights")
    if args.random_weights and args.top1 is not None:
        fail("--top1 is the checkpoint's accuracy; random weights have none")
    if args.fused_attn == "on" and args.opset < 14:
        fail(f"--fused-attn on --opset {args.opset}: torch exports scaled_dot_product_attention "
             "from opset 14; use --opset 14 or newer, or --fused-attn off")
    overrides = parse_overrides(args.set)
    torch, timm = import_torch_timm(not args.random_weights)
    if args.depth is not None:
        if arch_of(args.model) == "swin":
            stages = len(overrides.get("num_heads", ())) or 4
            overrides["depths"] = (args.depth,) * stages
        else:
            overrides["depth"] = args.depth
    if args.fused_attn is not None and hasattr(timm, "layers") and hasattr(timm.layers, "set_fused_attn"):
        timm.layers.set_fused_attn(args.fused_attn == "on")

    out = args.out[:-5] if args.out.endswith(".onnx") else args.out
    name = os.path.basename(out)
    out_dir = os.path.dirname(out) or "."
    os.makedirs(out_dir, exist_ok=True)
    onnx_path, card_path = out + ".onnx", out + ".json"

    full_name = args.model + (f".{args.pretrained_tag}" if args.pretrained_tag else "")
    tag_used = args.pretrained_tag
    if args.random_weights:
        torch.manual_seed(args.seed)
        try:
            model = timm.create_model(args.model, pretrained=False, **overrides)
        except Exception as e:  # unknown name, bad override
            fail(f"--model {args.model}: timm cannot create it{' with ' + str(args.set) if args.set else ''} ({e})")
    else:
        model = None
    try:
        if model is None:
            model = timm.create_model(full_name, pretrained=True, **overrides)
    except Exception as e:  # unknown name, no network, missing weights
        if args.pretrained_tag and timm_major_minor(timm) < (0, 9):
            # timm < 0.9 has no pretrained tags; its default weights are the ones papers used
            print(f"note: timm {timm.__version__} has no pretrained tags; using {args.model}'s "
                  f"default weights instead of .{args.pretrained_tag}")
            full_name, tag_used = args.model, None
            try:
                model = timm.create_model(full_name, pretrained=True)
            except Exception as e2:
                fail(f"--model {full_name}: timm cannot create it with pretrained weights ({e2})")
        else:
            hint = ("; no network: export the architecture with --random-weights, or put the "
                    "checkpoint in the Hugging Face cache" if os.environ.get("HF_HUB_OFFLINE") == "1" else "")
            fail(f"--model {full_name}: timm cannot create it with pretrained weights "
                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__}){hint}")
    model.eval()
    if args.fused_attn is None and args.opset < 14 and any(
            getattr(m, "fused_attn", False) for m in model.modules()):
        print(f"note: opset {args.opset} has no export of fused attention "
              "(scaled_dot_product_attention, opset 14); exporting with --fused-attn off")
        args.fused_attn = "off"
    fused_switched = set_fused_attn(timm, model, args.fused_attn)

    cfg = data_config(timm, model)
    c, h, w = cfg["input_size"]
    if c != 3:
        fail(f"{full_name}: input has {c} channels, vitq expects 3")
    if h != w:
        fail(f"{full_name}: input {h}x{w} is not square; vitq's timm eval transform supports square inputs")
    crop_mode = cfg.get("crop_mode", "center")
    if crop_mode != "center":
        fail(f"{full_name}: crop_mode {crop_mode!r}; vitq reproduces timm's 'center' crop mode only")
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear"):
        fail(f"{full_name}: interpolation {interpolation!r}; vitq supports bicubic and bilinear")
    crop_pct = float(cfg.get("crop_pct", 0.875))
    classes = int(getattr(model, "num_classes", 0) or 0)
    if classes <= 0:
        fail(f"{full_name}: cannot read the number of classes")

    dummy = torch.zeros(1, 3, h, w)
    export_onnx(torch, model, dummy, onnx_path, args.opset, keep_duplicates=args.random_weights)
    if args.check:
        check_onnx(torch, model, onnx_path, (h, w), classes)

    pretrained_cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", {}) or {}
    card = {
        "name": name,
        "weights": "random" if args.random_weights else "pretrained",
        "arch": arch_of(args.model),
        "file": os.path.basename(onnx_path),
        "input": {"name": "input", "channels": 3, "height": int(h), "width": int(w)},
        "normalization": {
            "mean": [float(v) for v in cfg["mean"]],
            "std": [float(v) for v in cfg["std"]],
            "scale": "x/255",
        },
        "crop_pct": crop_pct,
        "interpolation": interpolation,
        "resize_shorter_side": math.floor(h / crop_pct),
        "classes": classes,
        "dataset": "imagenet",
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "timm": {
            "model": args.model,
            "pretrained_tag": None if args.random_weights else (pretrained_cfg.get("tag") or tag_used),
            "hf_hub_id": None if args.random_weights else pretrained_cfg.get("hf_hub_id"),
            "version": getattr(timm, "__version__", "?"),
            "fused_attn": args.fused_attn or "timm default",
        },
        "torch_version": torch.__version__,
        "opset": args.opset,
        "onnx_sha256": sha256_file(onnx_path),
        "export_command": "python3 tools/export_timm.py " + " ".join(sys.argv[1:]),
    }
    if args.random_weights:
        card["random_weights"] = {
            "seed": args.seed,
            "init": "timm's own initialization after torch.manual_seed(seed), identical-valued "
                    "initializers kept apart (one per parameter); NOT a trained "
                    "model: accuracy is chance level, use it for graph, op and speed checks only",
        }
    if overrides:
        card["reduced"] = {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}
    if fused_switched is not None:
        card["timm"]["fused_attn_modules"] = fused_switched
    if args.top1 is not None:
        card["fp32_top1"] = round(args.top1, 2)
        card["fp32_top1_source"] = "reported by the user at export (ImageNet-1k val, 50,000 images)"
    with open(card_path, "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    size_mb = os.path.getsize(onnx_path) / 2**20
    what = f"{args.model} (random weights, seed {args.seed})" if args.random_weights else full_name
    print(f"{onnx_path} ({size_mb:.1f} MiB), {card_path}: {what}, {h}x{w}, crop_pct {crop_pct}, "
          f"{interpolation}, {classes} classes, opset {args.opset}")


if __name__ == "__main__":
    main()
