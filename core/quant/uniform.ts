/**
 * Uniform quantizers: one definition used two ways, a TypeScript reference on
 * Float32Array and an ONNX emitter for the fake-quant subgraph. Both compute
 * `clamp(round_half_even(x / Δ) + z, qmin, qmax) - z) * Δ` in float32, so the
 * reference and ONNX Runtime agree bit for bit (tests assert it).
 *
 * @module
 */
import type { Graph } from "../onnx/graph.ts";

/**
 * The smallest step a quantizer gets: a zero, negative or non-finite step (an
 * all-zero tensor, a degenerate range) becomes this, in every initializer and
 * learned-step clamp (as `Math.fround(MIN_STEP)` where the arithmetic is float32).
 */
export const MIN_STEP = 1e-8;

/** Round half to even, as torch.round and ONNX Round do. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Integer range of a k-bit quantizer. */
export function qRange(bits: number, signed: boolean): { qmin: number; qmax: number } {
  return signed
    ? { qmin: -(2 ** (bits - 1)), qmax: 2 ** (bits - 1) - 1 }
    : { qmin: 0, qmax: 2 ** bits - 1 };
}

/** Parameters of a uniform (affine) quantizer, per tensor or along one axis. */
export interface UniformQuantizer {
  bits: number;
  signed: boolean;
  /** Step size(s); one per channel when `axis` is set. */
  scale: Float32Array;
  /** Integer zero point(s) (0 for symmetric), same length as `scale`. */
  zeroPoint: Float32Array;
  /** Channel axis for per-channel scales, counted from the front. */
  axis?: number;
}

/** A per-tensor symmetric signed quantizer with step `scale`. */
export function symmetric(bits: number, scale: number): UniformQuantizer {
  return {
    bits,
    signed: true,
    scale: Float32Array.of(scale),
    zeroPoint: Float32Array.of(0),
  };
}

/** Symmetric step for a tensor whose magnitude bound is `absMax`: absMax / (2^(k-1) - 1). */
export function symmetricScale(absMax: number, bits: number): number {
  const s = Math.fround(absMax / (2 ** (bits - 1) - 1));
  return s > 0 && Number.isFinite(s) ? s : MIN_STEP;
}

/**
 * Fake-quantize one value with step s and zero point z (float32 arithmetic).
 * `withZp` mirrors the emitted graph, which adds and subtracts the zero point
 * only when some zero point is non-zero (this keeps the sign of -0 identical).
 */
export function fakeQuantValue(
  x: number,
  s: number,
  z: number,
  qmin: number,
  qmax: number,
  withZp = z !== 0,
): number {
  let q = roundHalfEven(Math.fround(x / s));
  if (withZp) q += z;
  if (q < qmin) q = qmin;
  else if (q > qmax) q = qmax;
  return Math.fround((withZp ? q - z : q) * s);
}

/**
 * TypeScript reference: fake-quantize `x` (shape `dims`) with `q`.
 * Returns a new array.
 */
export function fakeQuant(x: Float32Array, dims: number[], q: UniformQuantizer): Float32Array {
  const { qmin, qmax } = qRange(q.bits, q.signed);
  const out = new Float32Array(x.length);
  const withZp = q.zeroPoint.some((z) => z !== 0);
  const perTensor = q.axis === undefined || q.scale.length === 1;
  const inner = perTensor ? x.length : dims.slice(q.axis! + 1).reduce((a, b) => a * b, 1);
  const ch = perTensor ? 1 : dims[q.axis!];
  // hot loop: the same arithmetic as fakeQuantValue, inlined
  for (let start = 0, c = 0; start < x.length; start += inner, c = (c + 1) % ch) {
    const s = q.scale[c], z = withZp ? q.zeroPoint[c] : 0;
    const end = start + inner;
    for (let i = start; i < end; i++) {
      const v = Math.fround(x[i] / s);
      let r = Math.round(v);
      if (r - v === 0.5 && r % 2 !== 0) r -= 1;
      if (withZp) r += z;
      if (r < qmin) r = qmin;
      else if (r > qmax) r = qmax;
      out[i] = withZp ? (r - z) * s : r * s;
    }
  }
  return out;
}

/**
 * TypeScript reference of the integer codes behind {@link fakeQuant}:
 * `clamp(round_half_even(x / Δ) + z, qmin, qmax)` per element, so that
 * `(code - z) * Δ` equals `fakeQuant(x)` bit for bit (tested). Deploy graphs
 * store weights as these codes.
 */
export function quantCodes(x: Float32Array, dims: number[], q: UniformQuantizer): Int32Array {
  const { qmin, qmax } = qRange(q.bits, q.signed);
  const out = new Int32Array(x.length);
  const perTensor = q.axis === undefined || q.scale.length === 1;
  const inner = perTensor ? x.length : dims.slice(q.axis! + 1).reduce((a, b) => a * b, 1);
  const ch = perTensor ? 1 : dims[q.axis!];
  for (let start = 0, c = 0; start < x.length; start += inner, c = (c + 1) % ch) {
    const s = q.scale[c], z = q.zeroPoint[c];
    for (let i = start; i < start + inner; i++) {
      let r = roundHalfEven(Math.fround(x[i] / s)) + z;
      if (r < qmin) r = qmin;
      else if (r > qmax) r = qmax;
      out[i] = r;
    }
  }
  return out;
}

/**
 * Dims of a quantizer's step (and zero-point) constant broadcast against a value of
 * rank `rank`: `[]` per tensor, `[1, .., C, .., 1]` with C on the quantizer's axis per
 * channel (the rank is then required; `where` names the caller in the error).
 */
export function stepDims(q: UniformQuantizer, rank: number | undefined, where: string): number[] {
  if (q.axis === undefined || q.scale.length === 1) return [];
  if (rank === undefined) throw new Error(`${where}: per-channel needs the rank`);
  return Array.from({ length: rank }, (_, i) => (i === q.axis ? q.scale.length : 1));
}

/**
 * Emit the fake-quant subgraph for value `input` into `g` and return the name of
 * its output. `rank` is the input's rank (needed for per-channel broadcasting).
 */
export function emitFakeQuant(
  g: Graph,
  input: string,
  q: UniformQuantizer,
  prefix: string,
  rank?: number,
): string {
  const { qmin, qmax } = qRange(q.bits, q.signed);
  const dims = stepDims(q, rank, `emitFakeQuant ${prefix}`);
  const s = g.constFloat(`${prefix}_scale`, q.scale, dims);
  const hasZp = q.zeroPoint.some((z) => z !== 0);
  if (!hasZp) {
    return emitSymmetricWith(
      g,
      input,
      s,
      g.constFloat(`${prefix}_qmin`, qmin),
      g.constFloat(`${prefix}_qmax`, qmax),
    );
  }
  let v = g.addNode("Div", [input, s]);
  v = g.addNode("Round", [v]);
  if (hasZp) v = g.addNode("Add", [v, g.constFloat(`${prefix}_zp`, q.zeroPoint, dims)]);
  v = g.addNode("Clip", [
    v,
    g.constFloat(`${prefix}_qmin`, qmin),
    g.constFloat(`${prefix}_qmax`, qmax),
  ]);
  if (hasZp) v = g.addNode("Sub", [v, g.constFloat(`${prefix}_zp`, q.zeroPoint, dims)]);
  return g.addNode("Mul", [v, s]);
}

/**
 * Emit zero-point-free fake quantization `clamp(round(x / s), qmin, qmax) * s`
 * where `s`, `qmin` and `qmax` are names of tensors broadcastable against
 * `input` (constants in a quantized graph, or a stack of candidate steps in a
 * scoring graph). Returns the output's name.
 */
export function emitSymmetricWith(
  g: Graph,
  input: string,
  s: string,
  qmin: string,
  qmax: string,
): string {
  let v = g.addNode("Div", [input, s]);
  v = g.addNode("Round", [v]);
  v = g.addNode("Clip", [v, qmin, qmax]);
  return g.addNode("Mul", [v, s]);
}

/** Signal-to-quantization-noise ratio in dB of `xq` against `x`. */
export function sqnrDb(x: Float32Array, xq: Float32Array): number {
  let sig = 0, noise = 0;
  for (let i = 0; i < x.length; i++) {
    sig += x[i] * x[i];
    const d = x[i] - xq[i];
    noise += d * d;
  }
  if (noise === 0) return Infinity;
  return 10 * Math.log10(sig / noise);
}

/** Largest absolute value of an array. */
export function absMax(x: Float32Array): number {
  let m = 0;
  for (let i = 0; i < x.length; i++) {
    const a = Math.abs(x[i]);
    if (a > m) m = a;
  }
  return m;
}

/** Per-channel absolute maxima along `axis` of a tensor with shape `dims`. */
export function absMaxPerChannel(x: Float32Array, dims: number[], axis: number): Float32Array {
  const inner = dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  const ch = dims[axis];
  const out = new Float32Array(ch);
  for (let i = 0; i < x.length; i++) {
    const c = Math.floor(i / inner) % ch;
    const a = Math.abs(x[i]);
    if (a > out[c]) out[c] = a;
  }
  return out;
}
