/**
 * SQ-b, SmoothQuant with a bias term (MPTQ-ViT, Tai and Wu, arXiv 2401.14895),
 * as reconstructed in `methods/mptq.ts` (the paper's equations are not
 * available to us): per input channel j of a linear layer `Y = X·W + b`,
 *
 *   z_j = (max_j + min_j) / 2                (shift: centres each channel)
 *   s_j = r_j^α / max_o |W_jo|^(1-α),  r_j = (max_j - min_j) / 2
 *
 * from calibration minima and maxima of X, and the layer is rewritten exactly as
 *
 *   X' = (X - z) / s,  W' = diag(s)·W,  b' = b + z·W,   X'·W' + b' = X·W + b.
 *
 * The shift removes the asymmetry a symmetric quantizer would waste range on
 * (the negative side of some channels is wider than the positive one), the
 * scale migrates the channel ranges into the weights as in SmoothQuant.
 *
 * Where X is a LayerNorm output, `X' = X/s - z/s` folds into the LayerNorm's
 * γ and β with the scale reparameterization of `core/quant/reparam.ts`
 * (`r = s`, `b = z/s`): no runtime cost. Elsewhere {@link emitSmoothInput}
 * computes X' explicitly in front of the layer's input quantizer and
 * {@link foldSmoothWeights} rewrites W and b.
 *
 * @module
 */
import { type Graph, Tensor } from "../onnx/graph.ts";
import type { Site } from "../onnx/sites.ts";
import { VitqError } from "../errors.ts";
import type { ScaleReparam } from "./reparam.ts";

/** Per-input-channel shift and scale of one SQ-b rewrite. */
export interface SmoothFactors {
  /** z_j (float32). */
  shift: Float32Array;
  /** s_j > 0 (float32). */
  scale: Float32Array;
  /** Migration strength α, or null for shift only (s = 1). */
  alpha: number | null;
}

/** Per-channel minima and maxima of a row-major `[rows, c]` matrix. */
export function channelRange(x: Float32Array, c: number): { min: Float32Array; max: Float32Array } {
  const min = new Float32Array(c).fill(Infinity), max = new Float32Array(c).fill(-Infinity);
  for (let i = 0; i < x.length; i += c) {
    for (let j = 0; j < c; j++) {
      const v = x[i + j];
      if (v < min[j]) min[j] = v;
      if (v > max[j]) max[j] = v;
    }
  }
  return { min, max };
}

/** max_o |W_jo| per input channel j of a `[cin, cout]` weight. */
export function weightRowAbsMax(w: Float32Array, cin: number, cout: number): Float32Array {
  const out = new Float32Array(cin);
  for (let j = 0; j < cin; j++) {
    let m = 0;
    for (let o = 0; o < cout; o++) m = Math.max(m, Math.abs(w[j * cout + o]));
    out[j] = m;
  }
  return out;
}

/**
 * SQ-b factors from channel ranges and weight row maxima. `alpha = null` gives
 * shift only (s = 1). Degenerate channels (constant activation or zero weight
 * row) keep s = 1; s is clamped to [1e-4, 1e4].
 */
export function smoothFactors(
  min: Float32Array,
  max: Float32Array,
  wRowAbsMax: Float32Array,
  alpha: number | null,
): SmoothFactors {
  const c = min.length;
  const shift = new Float32Array(c), scale = new Float32Array(c).fill(1);
  for (let j = 0; j < c; j++) {
    shift[j] = Math.fround((max[j] + min[j]) / 2);
    if (alpha === null) continue;
    const r = (max[j] - min[j]) / 2, w = wRowAbsMax[j];
    if (!(r > 0) || !(w > 0)) continue;
    const s = r ** alpha / w ** (1 - alpha);
    scale[j] = Math.fround(Math.min(1e4, Math.max(1e-4, s)));
  }
  return { shift, scale, alpha };
}

/**
 * The rewritten layer: X' = (X - z)/s (`[rows, cin]`), W' = diag(s)·W
 * (`[cin, cout]`), b' = b + z·W (float64 accumulation, rounded once).
 */
export function smoothLinear(
  x: Float32Array,
  w: Float32Array,
  cin: number,
  cout: number,
  bias: Float32Array | undefined,
  f: SmoothFactors,
): { x: Float32Array; w: Float32Array; bias: Float32Array } {
  const xs = new Float32Array(x.length);
  for (let i = 0; i < x.length; i += cin) {
    for (let j = 0; j < cin; j++) xs[i + j] = Math.fround((x[i + j] - f.shift[j]) / f.scale[j]);
  }
  const ws = new Float32Array(w.length);
  for (let j = 0; j < cin; j++) {
    for (let o = 0; o < cout; o++) ws[j * cout + o] = Math.fround(w[j * cout + o] * f.scale[j]);
  }
  const b = new Float32Array(cout);
  for (let o = 0; o < cout; o++) {
    let acc = bias ? bias[o] : 0;
    for (let j = 0; j < cin; j++) acc += f.shift[j] * w[j * cout + o];
    b[o] = Math.fround(acc);
  }
  return { x: xs, w: ws, bias: b };
}

/** The factors as a LayerNorm scale reparameterization (`r = s`, `b = z/s`) for `foldLayerNorm`. */
export function asReparam(f: SmoothFactors): ScaleReparam {
  return {
    r: f.scale,
    b: Float32Array.from(f.shift, (z, j) => Math.fround(z / f.scale[j])),
    scale: 1,
    zeroPoint: 0,
  };
}

/**
 * Rewrite a linear site's weight and bias initializers in `g` for an explicit
 * SQ-b input (W' = diag(s)·W, b' = b + z·W), replacing them under the same
 * names (clones keep their values). The site must have a 2-D weight and a bias.
 */
export function foldSmoothWeights(g: Graph, site: Site, f: SmoothFactors): void {
  const t = g.initializers.get(site.weight!);
  if (!t || t.dims.length !== 2) {
    throw new VitqError(`SQ-b: ${site.id} weight is not a 2-D initializer`);
  }
  if (!site.bias || !g.initializers.has(site.bias)) {
    throw new VitqError(`SQ-b: ${site.id} has no bias initializer to fold the shift into`);
  }
  const outAxis = site.weightOutAxis ?? 1;
  const [d0, d1] = t.dims;
  const w = t.float32();
  const ws = new Float32Array(w.length);
  const cout = outAxis === 1 ? d1 : d0;
  const delta = new Float64Array(cout);
  for (let i = 0; i < d0; i++) {
    for (let k = 0; k < d1; k++) {
      const j = outAxis === 1 ? i : k, o = outAxis === 1 ? k : i;
      ws[i * d1 + k] = Math.fround(w[i * d1 + k] * f.scale[j]);
      delta[o] += f.shift[j] * w[i * d1 + k];
    }
  }
  g.setInitializer(Tensor.fromFloat32(site.weight!, t.dims, ws));
  const bt = g.initializers.get(site.bias)!;
  const b = bt.float32();
  g.setInitializer(
    Tensor.fromFloat32(site.bias, bt.dims, b.map((v, o) => Math.fround(v + delta[o]))),
  );
}

/**
 * Emit X' = (X - z)·(1/s) for value `input` (channels on the last axis) and
 * return its name: the explicit SQ-b input of a layer not fed by a LayerNorm.
 */
export function emitSmoothInput(g: Graph, input: string, f: SmoothFactors, prefix: string): string {
  const sub = g.addNode("Sub", [input, g.constFloat(`${prefix}_sqb_shift`, f.shift)]);
  const inv = Float32Array.from(f.scale, (s) => Math.fround(1 / s));
  return g.addNode("Mul", [sub, g.constFloat(`${prefix}_sqb_invscale`, inv)]);
}

/**
 * Give a LayerNormalization node private copies of its γ and β initializers
 * (exporters share identical constants between LayerNorms, e.g. all-ones γ
 * through Identity nodes, and folding into a shared one would change every
 * LayerNorm that reads it). Returns the site with the new names. A decomposed
 * LayerNorm is returned unchanged when its constants are read by no other node,
 * and refused otherwise.
 */
export function privateLayerNormParams(g: Graph, ln: Site): Site {
  const node = g.nodes.find((n) => n.name === ln.node);
  if (!node) throw new VitqError(`SQ-b: no node ${ln.node} for ${ln.id}`);
  const out = { ...ln };
  if (node.opType === "LayerNormalization") {
    for (const [slot, key] of [[1, "gamma"], [2, "beta"]] as const) {
      const name = ln[key];
      const t = name ? g.initializers.get(name) : undefined;
      if (!t || !node.inputs[slot]) continue;
      const copy = g.uniqueName(`${ln.id}_${key}`);
      g.setInitializer(Tensor.fromFloat32(copy, t.dims, t.float32()));
      node.inputs[slot] = copy;
      out[key] = copy;
    }
    return out;
  }
  const idx = g.index();
  for (const name of [ln.gamma, ln.beta]) {
    if (!name) continue;
    const readers = (idx.consumers.get(name) ?? []).map((u) => g.nodes[u.node]);
    const through = readers.flatMap((n) =>
      n.opType === "Identity" ? (idx.consumers.get(n.outputs[0]) ?? []).map((u) => u.node) : [0]
    );
    if (through.length > 1) {
      throw new VitqError(`SQ-b: ${ln.id} shares its constant ${name} with other nodes`);
    }
  }
  return out;
}
