/**
 * Differentiable quantizer building blocks, emitted as ordinary ONNX nodes in a
 * forward graph so that {@link buildGradientGraph} differentiates them with its
 * op rules:
 *
 * - straight-through rounding: `Round` (and `Floor`) get an identity gradient
 *   by default (the builder's `round: "ste"`);
 * - clamp masks: `Clip` passes the gradient only where `min < x < max`, and
 *   sends the rest to `min`/`max` when those are differentiated;
 * - LSQ (learned step size): `s * round(clip(x / s, qmin, qmax))`, whose
 *   gradient with respect to `s` is exactly the LSQ formula (see
 *   {@link lsqGradients});
 * - AdaRound: the rectified sigmoid `h(V) = clip(sigmoid(V) (ζ - γ) + γ, 0, 1)`,
 *   the soft-rounded weight `s * clip(floor(w / s) + h(V), qmin, qmax)` and the
 *   rounding regularizer `sum(1 - |2h - 1|^β)`.
 *
 * Parameters to learn (`s`, `V`) are value names: typically graph inputs added
 * with `addFloatInput`, so one session is fed new values at every step.
 *
 * @module
 */
import type { Graph } from "../onnx/graph.ts";
import { makeAttr } from "../onnx/graph.ts";
import { qRange, roundHalfEven } from "../quant/uniform.ts";

/** Integer grid of a quantizer. */
export interface QuantGrid {
  /** Bit width. */
  bits: number;
  /** Signed grid [-2^(b-1), 2^(b-1) - 1], else [0, 2^b - 1]. */
  signed: boolean;
}

/** Where a bound or exponent comes from: a constant number or a value name. */
export type Operand = number | string;

function operand(g: Graph, v: Operand, prefix: string): string {
  return typeof v === "number" ? g.constFloat(prefix, v) : v;
}

/** Round with the straight-through estimator (the builder's default gradient for Round). */
export function emitSteRound(g: Graph, x: string): string {
  return g.addNode("Round", [x]);
}

/** Clip(x, lo, hi): the gradient passes where lo < x < hi. */
export function emitClamp(g: Graph, x: string, lo: Operand, hi: Operand, prefix = "clamp"): string {
  return g.addNode("Clip", [x, operand(g, lo, `${prefix}_lo`), operand(g, hi, `${prefix}_hi`)]);
}

/**
 * LSQ fake quantizer `s * round(clip(x / s, qmin, qmax))` with step `s` a value
 * (scalar, or broadcastable per channel). The clip comes before the round: the
 * forward values equal `emitFakeQuant`'s round-then-clip (the bounds are
 * integers), and the gradient with respect to `s` is then exactly LSQ's
 * `round(x/s) - x/s` inside the range and `qmin`/`qmax` outside it (with
 * round-then-clip, half a step at each end of the range would differ).
 *
 * @param zeroPoint optional constant integer zero point (asymmetric grids)
 */
export function emitLsqQuant(
  g: Graph,
  x: string,
  step: string,
  grid: QuantGrid,
  opts: { zeroPoint?: number; prefix?: string } = {},
): string {
  const { qmin, qmax } = qRange(grid.bits, grid.signed);
  const p = opts.prefix ?? "lsq";
  const z = opts.zeroPoint ?? 0;
  let v = g.addNode("Div", [x, step]);
  if (z !== 0) v = g.addNode("Add", [v, g.constFloat(`${p}_zp`, z)]);
  v = emitClamp(g, v, qmin, qmax, p);
  v = emitSteRound(g, v);
  if (z !== 0) v = g.addNode("Sub", [v, g.constFloat(`${p}_zp`, z)]);
  return g.addNode("Mul", [v, step]);
}

/**
 * Reference LSQ gradients of `sum(upstream * q(x))` for a per-tensor step `s`
 * (float64): `ds = sum(upstream * dq/ds)` with dq/ds = round(x/s) - x/s for
 * qmin < x/s < qmax, else the clipped code, and dx = upstream where
 * qmin < x/s < qmax, else 0 (the STE).
 */
export function lsqGradients(
  x: Float32Array,
  s: number,
  grid: QuantGrid,
  upstream: Float32Array,
): { ds: number; dx: Float64Array } {
  const { qmin, qmax } = qRange(grid.bits, grid.signed);
  let ds = 0;
  const dx = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = Math.fround(x[i] / s);
    let d: number;
    if (v <= qmin) d = qmin;
    else if (v >= qmax) d = qmax;
    else {
      d = roundHalfEven(v) - v;
      dx[i] = upstream[i];
    }
    ds += upstream[i] * d;
  }
  return { ds, dx };
}

/** AdaRound's rectified sigmoid h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1). */
export function emitRectifiedSigmoid(
  g: Graph,
  v: string,
  opts: { zeta?: number; gamma?: number } = {},
): string {
  const zeta = opts.zeta ?? 1.1, gamma = opts.gamma ?? -0.1;
  const s = g.addNode("Sigmoid", [v]);
  const stretched = g.addNode("Add", [
    g.addNode("Mul", [s, g.constFloat("adaround_scale", zeta - gamma)]),
    g.constFloat("adaround_shift", gamma),
  ]);
  return emitClamp(g, stretched, 0, 1, "adaround_h");
}

/**
 * AdaRound soft-quantized weight `s * clip(floor(w / s) + h(V), qmin, qmax)`.
 * `w` and `s` are usually constants (initializers); `v` (shaped like `w`) is
 * the learned rounding variable. Returns the soft weight and `h`.
 */
export function emitAdaRoundWeight(
  g: Graph,
  w: string,
  step: string,
  v: string,
  grid: QuantGrid,
  opts: { zeta?: number; gamma?: number } = {},
): { output: string; h: string } {
  const { qmin, qmax } = qRange(grid.bits, grid.signed);
  const floor = g.addNode("Floor", [g.addNode("Div", [w, step])]);
  const h = emitRectifiedSigmoid(g, v, opts);
  const code = emitClamp(g, g.addNode("Add", [floor, h]), qmin, qmax, "adaround_code");
  return { output: g.addNode("Mul", [code, step]), h };
}

/** The hard-rounded AdaRound weight after learning: `h >= 0.5` rounds up. */
export function emitAdaRoundHard(
  g: Graph,
  w: string,
  step: string,
  v: string,
  grid: QuantGrid,
): string {
  const { qmin, qmax } = qRange(grid.bits, grid.signed);
  const floor = g.addNode("Floor", [g.addNode("Div", [w, step])]);
  const up = g.addNode("Cast", [g.addNode("GreaterOrEqual", [v, g.constFloat("zero", 0)])], {
    attributes: [makeAttr("to", 1)],
  });
  const code = emitClamp(g, g.addNode("Add", [floor, up]), qmin, qmax, "adaround_code");
  return g.addNode("Mul", [code, step]);
}

/**
 * AdaRound rounding regularizer `sum(1 - |2h - 1|^beta)` as a scalar value;
 * `beta` may be a number or a value (a graph input, for annealing).
 */
export function emitRoundingRegularizer(g: Graph, h: string, beta: Operand): string {
  const d = g.addNode("Abs", [
    g.addNode("Sub", [g.addNode("Mul", [h, g.constFloat("two", 2)]), g.constFloat("one", 1)]),
  ]);
  const p = g.addNode("Pow", [d, operand(g, beta, "beta")]);
  const r = g.addNode("Sub", [g.constFloat("one", 1), p]);
  return g.addNode("ReduceSum", [r], { attributes: [makeAttr("keepdims", 0)] });
}
