/**
 * PTQ4ViT twin uniform quantizers: two uniform grids with different steps for
 * one tensor, one for post-softmax values (small and large range split at a
 * power of two) and one for post-GELU values (fixed negative step, searched
 * positive step).
 *
 * Like {@link ./uniform.ts}, each quantizer has a TypeScript reference that
 * computes in float32 (`Math.fround` wherever ONNX Runtime rounds a float32
 * result) and an ONNX emitter built from standard ops; the two agree bit for
 * bit when ONNX Runtime runs the emission (tests assert it).
 *
 * Clamping keeps the IEEE sign of zero the way ONNX Runtime's Clip does
 * (a value equal to a bound is returned unchanged, so -0 stays -0).
 *
 * @module
 */
import type { Graph } from "../onnx/graph.ts";
import { roundHalfEven, symmetric } from "./uniform.ts";
import type { DeployPart } from "./deploy.ts";

/**
 * Which semantics of the post-softmax twin quantizer to use.
 * - `paper`: disjoint ranges; `x < split` uses the small step, otherwise the large step.
 * - `reference`: the PTQ4ViT reference code, the sum of both branches evaluated on
 *   `x` clamped into each range (`clamp(x, 0, split)` and `clamp(x, split, 1)`).
 */
export type TwinVariant = "paper" | "reference";

/** Parameters of the post-softmax twin uniform quantizer. */
export interface TwinSoftmaxQuantizer {
  /** Bit width k; each range has codes 0..2^(k-1)-1. */
  bits: number;
  /** Split point between the ranges, `2^-i` in PTQ4ViT (stored as float32). */
  split: number;
  /** Semantics, see {@link TwinVariant}. */
  variant: TwinVariant;
}

/** Parameters of the post-GELU twin uniform quantizer. */
export interface TwinGeluQuantizer {
  /** Bit width k: negative codes -2^(k-1)..0, positive codes 0..2^(k-1)-1. */
  bits: number;
  /** Step of the positive range (searched during calibration). */
  posScale: number;
}

/** Magnitude of GELU's minimum as used by PTQ4ViT for the fixed negative range. */
export const GELU_NEG_RANGE = 0.16997124254703522;

/** Clamp that returns `v` itself when it equals a bound (keeps -0), like ONNX Runtime Clip. */
function clamp(v: number, lo: number, hi: number): number {
  return v < lo ? lo : v > hi ? hi : v;
}

function checkBits(bits: number, what: string): void {
  if (!Number.isInteger(bits) || bits < 2 || bits > 16) {
    throw new Error(`${what}: bits must be an integer in [2, 16], got ${bits}`);
  }
}

/**
 * Steps and code range of a post-softmax twin quantizer, as float32 values:
 * `qmax = 2^(k-1) - 1`, `small = split / qmax`, `large = 1 / qmax`.
 * The large branch is computed as `round(x * qmax) / qmax`, as in the reference code.
 */
export function twinSoftmaxSteps(
  bits: number,
  split: number,
): { qmax: number; split: number; small: number; large: number } {
  checkBits(bits, "twin softmax quantizer");
  const s = Math.fround(split);
  if (!(s > 0 && s <= 1)) {
    throw new Error(`twin softmax quantizer: split must be in (0, 1], got ${split}`);
  }
  const qmax = 2 ** (bits - 1) - 1;
  return { qmax, split: s, small: Math.fround(s / qmax), large: Math.fround(1 / qmax) };
}

/** Small-range branch: `clamp(round(x / Δs), 0, qmax) * Δs` in float32. */
function lowBranch(x: number, small: number, qmax: number): number {
  return Math.fround(clamp(roundHalfEven(Math.fround(x / small)), 0, qmax) * small);
}

/** Large-range branch: `clamp(round(x * qmax), 0, qmax) / qmax` in float32. */
function highBranch(x: number, qmax: number): number {
  return Math.fround(clamp(roundHalfEven(Math.fround(x * qmax)), 0, qmax) / qmax);
}

function twinSoftmaxValueWith(
  x: number,
  variant: TwinVariant,
  qmax: number,
  split: number,
  small: number,
): number {
  if (variant === "paper") return x < split ? lowBranch(x, small, qmax) : highBranch(x, qmax);
  const lo = lowBranch(clamp(x, 0, split), small, qmax);
  const hi = highBranch(clamp(x, split, 1), qmax);
  return Math.fround(hi + lo);
}

/** TypeScript reference: fake-quantize `x` with the post-softmax twin quantizer. Returns a new array. */
export function twinSoftmax(x: Float32Array, q: TwinSoftmaxQuantizer): Float32Array {
  const { qmax, split, small } = twinSoftmaxSteps(q.bits, q.split);
  if (q.variant !== "paper" && q.variant !== "reference") {
    throw new Error(`twin softmax quantizer: unknown variant ${q.variant}`);
  }
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    out[i] = twinSoftmaxValueWith(x[i], q.variant, qmax, split, small);
  }
  return out;
}

/** Emit `clamp(round(v / Δs), 0, qmax) * Δs`. */
function emitLow(g: Graph, v: string, small: string, zero: string, qmax: string): string {
  let y = g.addNode("Div", [v, small]);
  y = g.addNode("Round", [y]);
  y = g.addNode("Clip", [y, zero, qmax]);
  return g.addNode("Mul", [y, small]);
}

/** Emit `clamp(round(v * qmax), 0, qmax) / qmax`. */
function emitHigh(g: Graph, v: string, zero: string, qmax: string): string {
  let y = g.addNode("Mul", [v, qmax]);
  y = g.addNode("Round", [y]);
  y = g.addNode("Clip", [y, zero, qmax]);
  return g.addNode("Div", [y, qmax]);
}

/**
 * Emit the post-softmax twin fake-quant subgraph for value `input` into `g` and
 * return the name of its output. `paper` uses GreaterOrEqual + Where to pick a branch;
 * `reference` clips the input into each range and adds both branches.
 */
export function emitTwinSoftmax(
  g: Graph,
  input: string,
  q: TwinSoftmaxQuantizer,
  prefix: string,
): string {
  const { qmax, split, small } = twinSoftmaxSteps(q.bits, q.split);
  if (q.variant !== "paper" && q.variant !== "reference") {
    throw new Error(`twin softmax quantizer: unknown variant ${q.variant}`);
  }
  return emitTwinSoftmaxWith(g, input, q.variant, {
    small: g.constFloat(`${prefix}_small`, small),
    split: g.constFloat(`${prefix}_split`, split),
    zero: g.constFloat(`${prefix}_zero`, 0),
    qmax: g.constFloat(`${prefix}_qmax`, qmax),
    one: q.variant === "reference" ? g.constFloat(`${prefix}_one`, 1) : undefined,
  });
}

/** Tensor names of a post-softmax twin quantizer's parameters (see {@link twinSoftmaxSteps}). */
export interface TwinSoftmaxTensors {
  small: string;
  split: string;
  zero: string;
  qmax: string;
  /** The constant 1 (used by the `reference` variant only). */
  one?: string;
}

/**
 * Emit the post-softmax twin fake-quant subgraph with its parameters given as
 * tensor names, broadcastable against `input` (constants in a quantized graph,
 * or stacks of candidates in a scoring graph). Returns the output's name.
 */
export function emitTwinSoftmaxWith(
  g: Graph,
  input: string,
  variant: TwinVariant,
  t: TwinSoftmaxTensors,
): string {
  if (variant === "paper") {
    const lo = emitLow(g, input, t.small, t.zero, t.qmax);
    const hi = emitHigh(g, input, t.zero, t.qmax);
    // ONNX Runtime's CPU Where returns the "false" input's +0 when the selected "true"
    // value is -0, so the branch that can produce -0 (lo, for x = -0 or tiny negatives)
    // goes in the "false" slot, and the "true" slot (x >= split > 0) never holds -0.
    const isHigh = g.addNode("GreaterOrEqual", [input, t.split]);
    return g.addNode("Where", [isHigh, hi, lo]);
  }
  if (!t.one) throw new Error("twin softmax quantizer: the reference variant needs the constant 1");
  // Max/Min rather than Clip: Clip needs scalar bounds, and a scoring graph's split is a stack.
  const clamp = (lo: string, hi: string) => g.addNode("Min", [g.addNode("Max", [input, lo]), hi]);
  const lo = emitLow(g, clamp(t.zero, t.split), t.small, t.zero, t.qmax);
  const hi = emitHigh(g, clamp(t.split, t.one), t.zero, t.qmax);
  return g.addNode("Add", [hi, lo]);
}

/**
 * Steps and code ranges of a post-GELU twin quantizer as float32 values:
 * negative step `0.16997124254703522 / 2^(k-1)` with codes `[-2^(k-1), 0]`,
 * positive step `posScale` with codes `[0, 2^(k-1) - 1]`.
 */
export function twinGeluSteps(
  bits: number,
  posScale: number,
): { neg: number; pos: number; nmin: number; pmax: number } {
  checkBits(bits, "twin GELU quantizer");
  const pos = Math.fround(posScale);
  if (!(pos > 0 && Number.isFinite(pos))) {
    throw new Error(`twin GELU quantizer: posScale must be positive, got ${posScale}`);
  }
  const half = 2 ** (bits - 1);
  return { neg: Math.fround(GELU_NEG_RANGE / half), pos, nmin: -half, pmax: half - 1 };
}

function twinGeluValueWith(
  x: number,
  neg: number,
  pos: number,
  nmin: number,
  pmax: number,
): number {
  const p = Math.fround(clamp(roundHalfEven(Math.fround(x / pos)), 0, pmax) * pos);
  const n = Math.fround(clamp(roundHalfEven(Math.fround(x / neg)), nmin, 0) * neg);
  return Math.fround(p + n);
}

/** TypeScript reference: fake-quantize `x` with the post-GELU twin quantizer. Returns a new array. */
export function twinGelu(x: Float32Array, q: TwinGeluQuantizer): Float32Array {
  const { neg, pos, nmin, pmax } = twinGeluSteps(q.bits, q.posScale);
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = twinGeluValueWith(x[i], neg, pos, nmin, pmax);
  return out;
}

/**
 * Emit the post-GELU twin fake-quant subgraph for value `input` into `g` and
 * return the name of its output (positive branch + negative branch).
 */
export function emitTwinGelu(
  g: Graph,
  input: string,
  q: TwinGeluQuantizer,
  prefix: string,
): string {
  const { neg, pos, nmin, pmax } = twinGeluSteps(q.bits, q.posScale);
  return emitTwinGeluWith(g, input, {
    pos: g.constFloat(`${prefix}_pos`, pos),
    neg: g.constFloat(`${prefix}_neg`, neg),
    zero: g.constFloat(`${prefix}_zero`, 0),
    pmax: g.constFloat(`${prefix}_pmax`, pmax),
    nmin: g.constFloat(`${prefix}_nmin`, nmin),
  });
}

/** Tensor names of a post-GELU twin quantizer's parameters (see {@link twinGeluSteps}). */
export interface TwinGeluTensors {
  pos: string;
  neg: string;
  zero: string;
  pmax: string;
  nmin: string;
}

/**
 * Emit the post-GELU twin fake-quant subgraph with its parameters given as
 * tensor names broadcastable against `input`. Returns the output's name.
 */
export function emitTwinGeluWith(g: Graph, input: string, t: TwinGeluTensors): string {
  let p = g.addNode("Div", [input, t.pos]);
  p = g.addNode("Round", [p]);
  p = g.addNode("Clip", [p, t.zero, t.pmax]);
  p = g.addNode("Mul", [p, t.pos]);
  let n = g.addNode("Div", [input, t.neg]);
  n = g.addNode("Round", [n]);
  n = g.addNode("Clip", [n, t.nmin, t.zero]);
  n = g.addNode("Mul", [n, t.neg]);
  return g.addNode("Add", [p, n]);
}

/**
 * The post-softmax twin quantizer as a sum of uniform parts for deploy graphs
 * (`deploy.ts`): `reference` variant only (the sum of both branches on clamped
 * inputs); the `paper` variant selects a branch per value and has no such form.
 * The large branch's step is `1/qmax` (the fake-quant graph computes
 * `round(x·qmax)/qmax`, which can differ in the last float bit).
 */
export function twinSoftmaxParts(q: TwinSoftmaxQuantizer): DeployPart[] | undefined {
  if (q.variant !== "reference") return undefined;
  const { split, small, large } = twinSoftmaxSteps(q.bits, q.split);
  // The input is a softmax output, in [0, 1]: the small branch's clip to [0, split] is the
  // code range's own saturation (split / small = qmax), and the large branch's upper bound 1
  // is never passed, so only `lo: split` needs a clip (one float pass fewer per part); and
  // not even that where `split` itself rounds to code 0 (split < 1/(2·qmax)): then
  // `round(max(x, split)/Δ) = max(round(x/Δ), 0) = round(x/Δ)` for x >= 0.
  const lo = Math.round(Math.fround(split / large)) === 0 ? {} : { lo: split };
  return [
    { q: symmetric(q.bits, small) },
    { q: symmetric(q.bits, large), ...lo },
  ];
}

/**
 * The post-GELU twin quantizer as a sum of uniform parts (positive and negative branch).
 * Its input is a GELU output, never below GELU's minimum (`-GELU_NEG_RANGE`), so the
 * negative part needs no clip in a deploy graph (`deploy.ts` `negatedPart`).
 */
export function twinGeluParts(q: TwinGeluQuantizer): DeployPart[] {
  const { neg, pos } = twinGeluSteps(q.bits, q.posScale);
  return [
    { q: symmetric(q.bits, pos), lo: 0 },
    { q: symmetric(q.bits, neg), hi: 0, min: -GELU_NEG_RANGE },
  ];
}
