/**
 * TSPTQ-ViT's two-scaled quantizers (Tai, Lin, Wu, ICASSP 2023, arXiv 2305.12901),
 * as reconstructed from the abstract (no code or full text is public; see
 * `methods/tsptq.ts` for which choices are inferred).
 *
 * - **V-2SF** (value-aware two-scaled scaling factors), for post-softmax and
 *   post-GELU values: a k-bit code is one region flag plus a (k-1)-bit payload.
 *   The small region has step `S`, the large region step `L = S·2^m`, so small
 *   values keep their least significant bits and large values their most
 *   significant bits, and decoding is a shift: `value = (payload << (flag·m))·S`.
 *   The fine code `u = round(x/S)` selects the region: small when `u` fits the
 *   small payload range, large otherwise (`v = clamp(round(x/L), 0, 2^(k-1)-1)`).
 *   Post-softmax: unsigned small region `[0, 2^(k-1)-1]`. Post-GELU: signed
 *   small region `[-2^(k-2), 2^(k-2)-1]` covering GELU's negative tail, unsigned
 *   large region.
 * - **O-2SF** (outlier-aware two-scaled scaling factors), for LayerNorm inputs:
 *   one per-tensor base step `S` and a one-bit flag per channel (last axis)
 *   selecting `S` or `S·2^m`; signed k-bit codes. The integer LayerNorm sees
 *   `code << (flag_c·m)` in units of `S` (a per-channel shift).
 *
 * Every quantizer has a TypeScript reference in float32 arithmetic, an ONNX
 * emitter built from standard ops (bit-exact with the reference under ONNX
 * Runtime; tests assert it) and an integer form (codes, and a decoder that only
 * shifts and multiplies by `S`).
 * For deploy graphs, V-2SF also comes as two int8 operands, small-step and
 * large-step codes, whose integer products are added ({@link emitV2sfParts}).
 *
 * @module
 */
import type { Graph } from "../onnx/graph.ts";
import {
  emitFakeQuant,
  fakeQuant,
  roundHalfEven,
  symmetric,
  type UniformQuantizer,
} from "./uniform.ts";
import { emitQdqActivation } from "./deploy.ts";

/** V-2SF small-region sign convention: `unsigned` for post-softmax, `signed` for post-GELU. */
export type V2sfKind = "unsigned" | "signed";

/** Parameters of a V-2SF quantizer. */
export interface V2sfQuantizer {
  /** Bit width k (one flag bit plus k-1 payload bits). */
  bits: number;
  /** Small-region step S (stored as float32). */
  step: number;
  /** Ratio exponent m ≥ 0: large-region step `S·2^m`. */
  m: number;
  kind: V2sfKind;
}

/** Parameters of an O-2SF quantizer for a tensor whose last axis holds `flags.length` channels. */
export interface O2sfQuantizer {
  /** Bit width k of the signed codes. */
  bits: number;
  /** Base step S (stored as float32). */
  step: number;
  /** Ratio exponent m ≥ 0 of the outlier channels' step `S·2^m`. */
  m: number;
  /** One flag per channel: 1 = outlier channel (step `S·2^m`), 0 = base step. */
  flags: Uint8Array;
}

/** Clamp that returns `v` itself when it equals a bound (keeps -0), like ONNX Runtime Clip. */
function clamp(v: number, lo: number, hi: number): number {
  return v < lo ? lo : v > hi ? hi : v;
}

function checkCommon(bits: number, step: number, m: number, what: string): void {
  if (!Number.isInteger(bits) || bits < 3 || bits > 16) {
    throw new Error(`${what}: bits must be an integer in [3, 16], got ${bits}`);
  }
  if (!Number.isInteger(m) || m < 0 || m > 30) {
    throw new Error(`${what}: m must be an integer in [0, 30], got ${m}`);
  }
  const s = Math.fround(step);
  if (!(s > 0 && Number.isFinite(s) && Number.isFinite(Math.fround(s * 2 ** m)))) {
    throw new Error(`${what}: step must be positive and S·2^m finite, got ${step}`);
  }
}

/**
 * Steps and code ranges of a V-2SF quantizer as float32 values: small step,
 * large step `S·2^m` (exact: a power-of-two multiple), small code range
 * `[lo, hi]` and large codes `[0, top]`.
 */
export function v2sfSteps(q: V2sfQuantizer): {
  small: number;
  large: number;
  lo: number;
  hi: number;
  top: number;
} {
  checkCommon(q.bits, q.step, q.m, "V-2SF quantizer");
  if (q.kind !== "unsigned" && q.kind !== "signed") {
    throw new Error(`V-2SF quantizer: unknown kind ${q.kind}`);
  }
  const small = Math.fround(q.step);
  const payload = 2 ** (q.bits - 1);
  const [lo, hi] = q.kind === "unsigned" ? [0, payload - 1] : [-payload / 2, payload / 2 - 1];
  return { small, large: Math.fround(small * 2 ** q.m), lo, hi, top: payload - 1 };
}

function v2sfWith(
  x: number,
  small: number,
  large: number,
  lo: number,
  hi: number,
  top: number,
): number {
  const u = roundHalfEven(Math.fround(x / small));
  if (u > hi) {
    const v = clamp(roundHalfEven(Math.fround(x / large)), 0, top);
    return Math.fround(v * large);
  }
  return Math.fround(clamp(u, lo, hi) * small);
}

/** TypeScript reference: fake-quantize `x` with a V-2SF quantizer. Returns a new array. */
export function v2sf(x: Float32Array, q: V2sfQuantizer): Float32Array {
  const { small, large, lo, hi, top } = v2sfSteps(q);
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = v2sfWith(x[i], small, large, lo, hi, top);
  return out;
}

/**
 * Emit the V-2SF fake-quant subgraph for `input` and return its output's name:
 * `u = Round(x/S)`, small `Clip(u, lo, hi)·S`, large `Clip(Round(x/L), 0, top)·L`,
 * `Where(u > hi, large, small)`.
 */
export function emitV2sf(g: Graph, input: string, q: V2sfQuantizer, prefix: string): string {
  const { small, large, lo, hi, top } = v2sfSteps(q);
  return emitV2sfWith(g, input, {
    small: g.constFloat(`${prefix}_small`, small),
    large: g.constFloat(`${prefix}_large`, large),
    lo: g.constFloat(`${prefix}_lo`, lo),
    hi: g.constFloat(`${prefix}_hi`, hi),
    zero: g.constFloat(`${prefix}_zero`, 0),
    top: g.constFloat(`${prefix}_top`, top),
  });
}

/** Tensor names of a V-2SF quantizer's parameters (see {@link v2sfSteps}). */
export interface V2sfTensors {
  small: string;
  large: string;
  lo: string;
  hi: string;
  zero: string;
  top: string;
}

/**
 * Emit the V-2SF fake-quant subgraph with its parameters given as tensor names
 * broadcastable against `input` (constants in a quantized graph, or stacks of
 * candidates in a scoring graph). Returns the output's name.
 */
export function emitV2sfWith(g: Graph, input: string, t: V2sfTensors): string {
  const u = g.addNode("Round", [g.addNode("Div", [input, t.small])]);
  const sm = g.addNode("Mul", [g.addNode("Clip", [u, t.lo, t.hi]), t.small]);
  const v = g.addNode("Round", [g.addNode("Div", [input, t.large])]);
  const lg = g.addNode("Mul", [g.addNode("Clip", [v, t.zero, t.top]), t.large]);
  // the branch that can be -0 (small) goes in Where's "false" slot: ONNX Runtime's CPU
  // Where does not keep a selected "true" -0 (see twin.ts)
  return g.addNode("Where", [g.addNode("Greater", [u, t.hi]), lg, sm]);
}

/**
 * Integer form of V-2SF: one k-bit code per value, `flag << (k-1) | payload`
 * (payload in two's complement over k-1 bits for the signed small region).
 */
export function v2sfEncode(x: Float32Array, q: V2sfQuantizer): Uint16Array {
  const { small, large, lo, hi, top } = v2sfSteps(q);
  const flag = 1 << (q.bits - 1), mask = flag - 1;
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const u = roundHalfEven(Math.fround(x[i] / small));
    if (u > hi) out[i] = flag | clamp(roundHalfEven(Math.fround(x[i] / large)), 0, top);
    else out[i] = clamp(u, lo, hi) & mask;
  }
  return out;
}

/**
 * Decode V-2SF codes with integer operations only: the large region's payload is
 * shifted left by m, the small region's payload sign-extended (signed kind);
 * the integer is in units of S. Returns the integers.
 */
export function v2sfDecodeInt(codes: Uint16Array, q: V2sfQuantizer): Int32Array {
  const flag = 1 << (q.bits - 1), mask = flag - 1, sign = flag >> 1;
  const out = new Int32Array(codes.length);
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c & flag) out[i] = (c & mask) << q.m;
    else if (q.kind === "signed" && c & sign) out[i] = (c & mask) - flag;
    else out[i] = c & mask;
  }
  return out;
}

/** The per-channel steps of an O-2SF quantizer: `S` or `S·2^m` (exact) per flag. */
export function o2sfSteps(q: O2sfQuantizer): Float32Array {
  checkCommon(q.bits, q.step, q.m, "O-2SF quantizer");
  const s = Math.fround(q.step), big = Math.fround(s * 2 ** q.m);
  return Float32Array.from(q.flags, (f) => (f ? big : s));
}

/**
 * The O-2SF quantizer as a per-channel uniform quantizer on the last axis of a
 * tensor of rank `rank` (what the fake-quant graph computes).
 */
export function o2sfUniform(q: O2sfQuantizer, rank: number): UniformQuantizer {
  const scale = o2sfSteps(q);
  return {
    bits: q.bits,
    signed: true,
    scale,
    zeroPoint: new Float32Array(scale.length),
    axis: rank - 1,
  };
}

/** TypeScript reference: fake-quantize `x` (shape `dims`, channels last) with O-2SF. */
export function o2sf(x: Float32Array, dims: number[], q: O2sfQuantizer): Float32Array {
  if (dims[dims.length - 1] !== q.flags.length) {
    throw new Error(`O-2SF quantizer: ${q.flags.length} flags for ${dims.at(-1)} channels`);
  }
  return fakeQuant(x, dims, o2sfUniform(q, dims.length));
}

/** Emit the O-2SF fake-quant subgraph (per-channel steps on the last axis of a rank-`rank` value). */
export function emitO2sf(
  g: Graph,
  input: string,
  q: O2sfQuantizer,
  prefix: string,
  rank: number,
): string {
  return emitFakeQuant(g, input, o2sfUniform(q, rank), prefix, rank);
}

/** Integer form of O-2SF: signed k-bit codes per value (channels last). */
export function o2sfEncode(x: Float32Array, q: O2sfQuantizer): Int16Array {
  const steps = o2sfSteps(q), c = steps.length;
  const lim = 2 ** (q.bits - 1);
  const out = new Int16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    out[i] = clamp(roundHalfEven(Math.fround(x[i] / steps[i % c])), -lim, lim - 1);
  }
  return out;
}

/**
 * What the integer LayerNorm sees: `code << (flag_c·m)`, integers in units of
 * the base step S (a per-channel shift, no multiplier).
 */
export function o2sfDecodeInt(codes: Int16Array, q: O2sfQuantizer): Int32Array {
  const c = q.flags.length;
  const out = new Int32Array(codes.length);
  for (let i = 0; i < codes.length; i++) out[i] = codes[i] << (q.flags[i % c] * q.m);
  return out;
}

/** How O-2SF picks each channel's flag from calibration data. */
export type FlagRule = "threshold" | "error";

/**
 * Per-channel flags of an O-2SF quantizer on calibration data `x` ([rows, C],
 * channels last):
 * - `threshold`: a channel is an outlier when its largest |x| exceeds the base
 *   range `(2^(k-1)-1)·S` (it would clip at the base step);
 * - `error`: each channel takes the step (S or S·2^m) with the smaller squared
 *   quantization error over its calibration values (ties keep S).
 */
export function o2sfFlags(
  x: Float32Array,
  channels: number,
  bits: number,
  step: number,
  m: number,
  rule: FlagRule,
): Uint8Array {
  checkCommon(bits, step, m, "O-2SF flags");
  const c = channels, flags = new Uint8Array(c);
  const s = Math.fround(step), big = Math.fround(s * 2 ** m);
  const lim = 2 ** (bits - 1);
  if (rule === "threshold") {
    const bound = (lim - 1) * s;
    for (let i = 0; i < x.length; i++) {
      if (Math.abs(x[i]) > bound) flags[i % c] = 1;
    }
    return flags;
  }
  if (rule !== "error") throw new Error(`O-2SF flags: unknown rule ${rule}`);
  const e0 = new Float64Array(c), e1 = new Float64Array(c);
  const err = (v: number, st: number) => {
    const q = Math.fround(clamp(roundHalfEven(Math.fround(v / st)), -lim, lim - 1) * st) - v;
    return q * q;
  };
  for (let i = 0; i < x.length; i++) {
    const ch = i % c;
    e0[ch] += err(x[i], s);
    e1[ch] += err(x[i], big);
  }
  for (let ch = 0; ch < c; ch++) flags[ch] = e1[ch] < e0[ch] ? 1 : 0;
  return flags;
}

/**
 * V-2SF for a deploy graph, as two uniform int8 operands whose products are added:
 * the small-region value (codes `u` where `u` fits the small payload range, 0 elsewhere)
 * quantized with step S and the large-region value (codes `v` where `u` does not fit, 0
 * elsewhere) with step `L = S·2^m`, each as QuantizeLinear/DequantizeLinear. Their sum is
 * {@link emitV2sf}'s value exactly (one part is 0 at every element, the other is on its
 * own grid, so its QuantizeLinear reproduces the code). A MatMul or Gemm reading the sum
 * can be split into one integer product per part (`deploy.ts` `distributeParts`), which is
 * the shift decode `(payload << (flag·m))·S` carried out as two scaled integer products.
 * Returns the sum and the two parts' dequantized values. Needs `bits` <= 8 (int8 codes).
 */
export function emitV2sfParts(
  g: Graph,
  input: string,
  q: V2sfQuantizer,
  prefix: string,
): { sum: string; parts: [string, string] } {
  const { small, large, lo, hi, top } = v2sfSteps(q);
  if (q.bits > 8) throw new Error(`V-2SF parts: ${q.bits} bits do not fit int8 codes`);
  const s = g.constFloat(`${prefix}_small`, small);
  const l = g.constFloat(`${prefix}_large`, large);
  const zero = g.constFloat(`${prefix}_zero`, 0);
  const hiC = g.constFloat(`${prefix}_hi`, hi);
  const u = g.addNode("Round", [g.addNode("Div", [input, s])]);
  const sm = g.addNode("Mul", [g.addNode("Clip", [u, g.constFloat(`${prefix}_lo`, lo), hiC]), s]);
  const v = g.addNode("Round", [g.addNode("Div", [input, l])]);
  const lg = g.addNode("Mul", [
    g.addNode("Clip", [v, zero, g.constFloat(`${prefix}_top`, top)]),
    l,
  ]);
  const isLarge = g.addNode("Greater", [u, hiC]);
  const a = g.addNode("Where", [isLarge, zero, sm]);
  const b = g.addNode("Where", [isLarge, lg, zero]);
  const pa = emitQdqActivation(g, a, symmetric(8, small), `${prefix}_s`);
  const pb = emitQdqActivation(g, b, symmetric(8, large), `${prefix}_l`);
  return { sum: g.addNode("Add", [pa, pb]), parts: [pa, pb] };
}
