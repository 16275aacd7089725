/**
 * ADFQ-ViT per-patch outlier-aware quantizer for token activations (B, N, C):
 * every token position t has its own static asymmetric step Δ_t and zero point
 * z_t (2^k levels), and values with |x| > τ bypass quantization unchanged.
 *
 *   x̂ = |x| > τ ? x : (clamp(round(x / Δ_t) + z_t, 0, 2^k - 1) - z_t) · Δ_t
 *
 * The TypeScript reference computes in float32 exactly as ONNX Runtime runs
 * the emission (Div, Round, Add, Clip, Sub, Mul, then Where on Abs > τ), so the
 * two agree bit for bit.
 *
 * @module
 */
import type { Graph } from "../onnx/graph.ts";
import { fakeQuantValue, MIN_STEP, roundHalfEven } from "./uniform.ts";

/** Parameters of the per-patch outlier-aware quantizer. */
export interface PerPatchQuantizer {
  /** Bit width k: codes 0..2^k-1. */
  bits: number;
  /** Outlier threshold τ: values with |x| > τ pass through (|x| = τ is quantized). */
  tau: number;
  /** Step Δ_t per token position (length N). */
  scale: Float32Array;
  /** Integer zero point z_t per token position (length N). */
  zeroPoint: Float32Array;
  /** Token axis, counted from the front (default 1, i.e. N in (B, N, C)). */
  axis?: number;
}

/** How {@link initPerPatch} sets each token's range. */
export type PerPatchInit = "minmax" | "percentile";

/** Percentiles tried by the `percentile` initializer. */
export const PERCENTILE_CANDIDATES: readonly number[] = [0.999, 0.9999, 0.99999];

/**
 * τ as float32; must be >= 0 (a negative τ would pass zeros through, and ONNX
 * Runtime's CPU Where does not keep the sign of a -0 taken from its first input).
 */
function checkTau(tau: number): number {
  const t = Math.fround(tau);
  if (!(t >= 0)) throw new Error(`per-patch quantizer: tau must be >= 0, got ${tau}`);
  return t;
}

function tokenLayout(dims: number[], axis: number, length: number) {
  if (axis < 0 || axis >= dims.length) throw new Error(`per-patch quantizer: bad axis ${axis}`);
  const n = dims.reduce((a, b) => a * b, 1);
  if (n !== length) {
    throw new Error(`per-patch quantizer: ${length} values do not match dims [${dims}]`);
  }
  return { tokens: dims[axis], inner: dims.slice(axis + 1).reduce((a, b) => a * b, 1) };
}

/**
 * TypeScript reference: fake-quantize `x` (shape `dims`, tokens along
 * `q.axis ?? 1`) with `q`. Returns a new array.
 */
export function perPatchQuant(x: Float32Array, dims: number[], q: PerPatchQuantizer): Float32Array {
  const { tokens, inner } = tokenLayout(dims, q.axis ?? 1, x.length);
  if (q.scale.length !== tokens || q.zeroPoint.length !== tokens) {
    throw new Error(`per-patch quantizer: expected ${tokens} scales and zero points`);
  }
  const qmax = 2 ** q.bits - 1;
  const tau = checkTau(q.tau);
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    if (Math.abs(v) > tau) {
      out[i] = v;
      continue;
    }
    const t = Math.floor(i / inner) % tokens;
    out[i] = fakeQuantValue(v, q.scale[t], q.zeroPoint[t], 0, qmax, true);
  }
  return out;
}

/**
 * Emit the per-patch fake-quant subgraph for value `input` (rank `rank`,
 * default 3) into `g` and return the name of its output. Outliers are passed
 * through exactly with `Where(Abs(x) > τ, x, x̂)`.
 */
export function emitPerPatchQuant(
  g: Graph,
  input: string,
  q: PerPatchQuantizer,
  prefix: string,
  rank = 3,
): string {
  const axis = q.axis ?? 1;
  if (axis < 0 || axis >= rank) throw new Error(`emitPerPatchQuant ${prefix}: bad axis ${axis}`);
  const dims = Array.from({ length: rank }, (_, i) => (i === axis ? q.scale.length : 1));
  const s = g.constFloat(`${prefix}_scale`, q.scale, dims);
  const zp = g.constFloat(`${prefix}_zp`, q.zeroPoint, dims);
  let v = g.addNode("Div", [input, s]);
  v = g.addNode("Round", [v]);
  v = g.addNode("Add", [v, zp]);
  v = g.addNode("Clip", [
    v,
    g.constFloat(`${prefix}_qmin`, 0),
    g.constFloat(`${prefix}_qmax`, 2 ** q.bits - 1),
  ]);
  v = g.addNode("Sub", [v, zp]);
  v = g.addNode("Mul", [v, s]);
  const isOutlier = g.addNode("Greater", [
    g.addNode("Abs", [input]),
    g.constFloat(`${prefix}_tau`, checkTau(q.tau)),
  ]);
  return g.addNode("Where", [isOutlier, input, v]);
}

/**
 * `torch.quantile(v, p)` with linear interpolation on an ascending sorted
 * float32 array, in float32 like torch: rank `p·(n-1)`, then
 * `lerp(v[lo], v[hi], w)` with torch's two-sided lerp formula.
 */
export function quantileLinear(sorted: Float32Array, p: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  const rank = Math.fround(Math.fround(p) * (n - 1));
  const lo = Math.floor(rank);
  const hi = Math.min(lo + 1, n - 1);
  const w = Math.fround(rank - lo);
  const a = sorted[lo], b = sorted[hi];
  const diff = Math.fround(b - a);
  return w < 0.5
    ? Math.fround(a + Math.fround(w * diff))
    : Math.fround(b - Math.fround(diff * Math.fround(1 - w)));
}

/** Affine step and zero point of a range: Δ = (max - min)/(2^k - 1), z = round(-min/Δ). */
function affine(min: number, max: number, qmax: number): { s: number; z: number } {
  let s = Math.fround(Math.fround(max - min) / qmax);
  if (!(s > 0 && Number.isFinite(s))) s = Math.fround(MIN_STEP);
  // + 0 turns a -0 zero point into +0
  return { s, z: roundHalfEven(Math.fround(-min / s)) + 0 };
}

/**
 * Initialize per-token steps and zero points from calibration activations `x`
 * (shape `dims`, tokens along axis 1). Values with |x| > τ are set to 0 in a
 * working copy first (so a token that had outliers also counts 0 in its
 * statistics); then for each token t, over all images and channels:
 * - `minmax`: min and max of the working copy (0 is not added otherwise);
 * - `percentile`: for each p in {@link PERCENTILE_CANDIDATES},
 *   `max = quantile(x_t, p)`, `min = quantile(x_t, 1 - p)` (linear
 *   interpolation), and the candidate with the lowest MSE of the fake-quantized
 *   working copy x_t against x_t wins (first one on ties).
 * In both cases Δ = (max - min)/(2^k - 1) and z = round(-min/Δ) (half to even,
 * float32); a zero or non-finite Δ becomes 1e-8.
 */
export function initPerPatch(
  x: Float32Array,
  dims: number[],
  bits: number,
  tau: number,
  method: PerPatchInit,
): PerPatchQuantizer {
  if (!Number.isInteger(bits) || bits < 1 || bits > 16) {
    throw new Error(`per-patch quantizer: bits must be an integer in [1, 16], got ${bits}`);
  }
  if (method !== "minmax" && method !== "percentile") {
    throw new Error(`per-patch quantizer: unknown init method ${method}`);
  }
  const { tokens, inner } = tokenLayout(dims, 1, x.length);
  const t32 = checkTau(tau);
  const qmax = 2 ** bits - 1;
  const outer = x.length / (tokens * inner);
  const scale = new Float32Array(tokens);
  const zeroPoint = new Float32Array(tokens);
  const xt = new Float32Array(outer * inner);
  for (let t = 0; t < tokens; t++) {
    for (let b = 0; b < outer; b++) {
      const base = (b * tokens + t) * inner;
      for (let c = 0; c < inner; c++) {
        const v = x[base + c];
        xt[b * inner + c] = Math.abs(v) > t32 ? 0 : v;
      }
    }
    let best: { s: number; z: number };
    if (method === "minmax") {
      let min = Infinity, max = -Infinity;
      for (const v of xt) {
        if (v < min) min = v;
        if (v > max) max = v;
      }
      best = affine(min, max, qmax);
    } else {
      const sorted = xt.slice().sort();
      best = { s: Math.fround(MIN_STEP), z: 0 };
      let bestErr = Infinity;
      for (const p of PERCENTILE_CANDIDATES) {
        const cand = affine(quantileLinear(sorted, 1 - p), quantileLinear(sorted, p), qmax);
        let err = 0;
        for (const v of xt) {
          const d = v - fakeQuantValue(v, cand.s, cand.z, 0, qmax, true);
          err += d * d;
        }
        err /= xt.length;
        if (err < bestErr) {
          bestErr = err;
          best = cand;
        }
      }
    }
    scale[t] = best.s;
    zeroPoint[t] = best.z;
  }
  return { bits, tau: t32, scale, zeroPoint };
}
