/**
 * A float ViT graph with random weights, built with the Graph IR in the same
 * operator pattern as the torch.onnx export of models/train_fmnist.py
 * (Conv patch embedding, class token by Expand + Concat, LayerNormalization,
 * fused qkv, Erf GELU, Gemm head). Used to benchmark the integer graph at
 * ViT-S size (dim 384, 6 heads, 12 blocks, MLP 1536, 224×224×3, patch 16,
 * 197 tokens, 1000 classes) without shipping ViT-S weights.
 *
 * @module
 */
import { Graph, makeAttr, Tensor } from "../onnx/graph.ts";
import { Rng } from "../rng.ts";
import type { ImageSource } from "../runtime/runtime.ts";

/** Shape of a ViT. */
export interface VitSpec {
  /** Embedding width D. */
  dim: number;
  /** Attention heads (D divisible by heads). */
  heads: number;
  /** Transformer blocks. */
  depth: number;
  /** MLP hidden width. */
  mlp: number;
  /** Patch size (= Conv kernel and stride). */
  patch: number;
  /** Image side (square). */
  img: number;
  /** Image channels. */
  channels: number;
  /** Output classes. */
  classes: number;
}

/** ViT-S/16 at 224×224 (DeiT-S shapes). */
export const VIT_S: VitSpec = {
  dim: 384,
  heads: 6,
  depth: 12,
  mlp: 1536,
  patch: 16,
  img: 224,
  channels: 3,
  classes: 1000,
};

/**
 * Build the float graph of `spec` with weights drawn from N(0, std²)
 * (Box–Muller on the seeded generator), zero biases, LayerNorm γ = 1, β = 0.
 * Input `input` [N, C, H, W], output `logits` [N, classes].
 */
export function buildVitGraph(spec: VitSpec, seed = 0, std = 0.02): Graph {
  const rng = new Rng(seed);
  const normal = (n: number) => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      const u = Math.max(rng.next(), 1e-12), v = rng.next();
      const r = Math.sqrt(-2 * Math.log(u)) * std;
      a[i] = r * Math.cos(2 * Math.PI * v);
      if (i + 1 < n) a[i + 1] = r * Math.sin(2 * Math.PI * v);
    }
    return a;
  };
  const { dim: D, heads: H, depth, mlp, patch: P, img, channels: C, classes } = spec;
  const L = (img / P) ** 2;
  const T = L + 1;
  const hd = D / H;
  const g = Graph.create(17, "vit_random");
  g.addInput("input", ["N", C, img, img]);
  let n = 0;
  const name = (b: string) => `${b}_${n++}`;
  const w = (b: string, dims: number[], data?: Float32Array) =>
    g.setInitializer(
      Tensor.fromFloat32(name(b), dims, data ?? normal(dims.reduce((x, y) => x * y, 1))),
    );
  const zeros = (b: string, len: number) => w(b, [len], new Float32Array(len));
  const ones = (b: string, len: number) => w(b, [len], new Float32Array(len).fill(1));
  const i64 = (b: string, v: number[], dims = [v.length]) =>
    g.setInitializer(Tensor.fromInt64(name(b), dims, v));
  const f32 = (b: string, v: number) => g.setInitializer(Tensor.fromFloat32(name(b), [], [v]));
  const op = (type: string, inputs: string[], attrs: unknown[] = []) =>
    g.addNode(type, inputs, { outputs: [name(type.toLowerCase())], attributes: attrs as never[] });

  // patch embedding and tokens
  const pe = op("Conv", ["input", w("pe_w", [D, C, P, P]), zeros("pe_b", D)], [
    makeAttr("kernel_shape", [P, P]),
    makeAttr("strides", [P, P]),
    makeAttr("pads", [0, 0, 0, 0]),
  ]);
  const flat = op("Reshape", [pe, i64("flat_shape", [0, D, -1])]);
  const tokens = op("Transpose", [flat], [makeAttr("perm", [0, 2, 1])]);
  const batch = op("Slice", [op("Shape", ["input"]), i64("s0", [0]), i64("s1", [1])]);
  const clsShape = op("Concat", [batch, i64("cls_tail", [1, D])], [makeAttr("axis", 0)]);
  const cls = op("Expand", [w("cls_token", [1, 1, D]), clsShape]);
  let x = op("Concat", [cls, tokens], [makeAttr("axis", 1)]);
  x = op("Add", [x, w("pos_embed", [1, T, D])]);

  const ln = (v: string) =>
    op("LayerNormalization", [v, ones("ln_g", D), zeros("ln_b", D)], [
      makeAttr("axis", -1),
      makeAttr("epsilon", 1e-6, "float"),
    ]);
  const linear = (v: string, k: number, m: number) =>
    op("Add", [zeros("bias", m), op("MatMul", [v, w("weight", [k, m])])]);

  for (let b = 0; b < depth; b++) {
    const qkv = linear(ln(x), D, 3 * D);
    const r = op("Reshape", [qkv, i64("qkv_shape", [0, -1, 3, H, hd])]);
    const t = op("Transpose", [r], [makeAttr("perm", [2, 0, 3, 1, 4])]);
    const q = op("Gather", [t, i64("i0", [0], [])], [makeAttr("axis", 0)]);
    const k = op("Gather", [t, i64("i1", [1], [])], [makeAttr("axis", 0)]);
    const v = op("Gather", [t, i64("i2", [2], [])], [makeAttr("axis", 0)]);
    const kt = op("Transpose", [k], [makeAttr("perm", [0, 1, 3, 2])]);
    const scores = op("Mul", [op("MatMul", [q, kt]), f32("scale", hd ** -0.5)]);
    const attn = op("Softmax", [scores], [makeAttr("axis", -1)]);
    const o = op("Transpose", [op("MatMul", [attn, v])], [makeAttr("perm", [0, 2, 1, 3])]);
    const merged = op("Reshape", [o, i64("merge_shape", [0, -1, D])]);
    x = op("Add", [x, linear(merged, D, D)]);
    const h = linear(ln(x), D, mlp);
    const erf = op("Erf", [op("Div", [h, f32("sqrt2", Math.SQRT2)])]);
    const gelu = op("Mul", [op("Mul", [h, op("Add", [erf, f32("one", 1)])]), f32("half", 0.5)]);
    x = op("Add", [x, linear(gelu, mlp, D)]);
  }
  const cls0 = op("Gather", [ln(x), i64("cls_idx", [0], [])], [makeAttr("axis", 1)]);
  g.addNode("Gemm", [cls0, w("head_w", [classes, D]), zeros("head_b", classes)], {
    outputs: ["logits"],
    attributes: [makeAttr("transB", 1)],
  });
  g.addOutput("logits");
  return g;
}

/**
 * `n` random images of `spec`'s input shape, uniform in [-1, 1). Image `i` is
 * drawn from its own generator (seeded `seed + i`), so every slice is the same
 * on every call and the source holds no pixels between calls.
 */
export function randomImages(spec: VitSpec, n: number, seed = 12345): ImageSource {
  const per = spec.channels * spec.img * spec.img;
  return {
    length: n,
    shape: [spec.channels, spec.img, spec.img],
    slice: (a, b) => {
      const out = new Float32Array((b - a) * per);
      for (let i = a; i < b; i++) {
        const rng = new Rng(seed + i);
        const o = (i - a) * per;
        for (let j = 0; j < per; j++) out[o + j] = rng.next() * 2 - 1;
      }
      return Promise.resolve(out);
    },
  };
}
