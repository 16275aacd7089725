/**
 * Logarithmic quantizers: the log-√2 quantizer (post-softmax in RepQ-ViT and
 * ADFQ-ViT) and ADFQ-ViT's Shift-Log2 quantizer (post-GELU).
 *
 * A log grid with `r` levels per octave (r = 2 for log-√2, r = 1 for log2),
 * scale δ and k bits maps x > 0 to the code `q = round(-r·log2(x/δ))`; codes
 * `q >= 2^k` (and x <= 0) dequantize to 0, the others are clamped to
 * `[0, 2^k - 1]` and dequantize to `δ·2^(-q/r)`.
 *
 * Exactness. ONNX Runtime's Log is not bit-compatible with `Math.log`, so the
 * code is never taken from a logarithm directly. `q >= j` holds exactly when
 * `x < δ·2^(-(2j-1)/(2r))` (real arithmetic). These half-way points are
 * irrational multiples of δ, so no float32 x ever lies on one: there are no
 * ties, and the code is the rounding of the exact real value -r·log2(x/δ)
 * (not of a float32 evaluation of it). Each threshold is stored as the
 * largest float32 strictly below it, found with exact integer arithmetic
 * (BigInt), so `q = #{j : x <= T_j}`. The reference counts thresholds by
 * binary search. The emission takes an approximate code from Log (any error
 * below half a code is enough), then corrects it by one with two comparisons
 * against the same float32 thresholds (table lookups + LessOrEqual/Greater),
 * and looks the output up in a float32 table of levels. Reference and
 * emission therefore agree bit for bit whatever Log's last-ulp behaviour.
 * NaN inputs are not supported.
 *
 * Speed. The codes are int32 and every lookup is a GatherElements on the
 * table as one row (`emitTableLookup`): ONNX Runtime 1.30's Gather copies
 * element by element (about 2 ns per element here), GatherElements about
 * four times faster; on the shipped ViT the RepQ-ViT and ADFQ-ViT W4A4
 * graphs ran 1.35x and 1.6x faster with the same outputs (README, session 11).
 *
 * @module
 */
import { DataType, type Graph, makeAttr, Tensor } from "../onnx/graph.ts";

/** Parameters of the log-√2 quantizer. */
export interface LogSqrt2Quantizer {
  /** Bit width k: codes 0..2^k-1; codes >= 2^k give 0. */
  bits: number;
  /** Scale δ (the largest level), stored as float32. */
  scale: number;
}

/**
 * Parameters of ADFQ-ViT's Shift-Log2 quantizer for post-GELU values.
 * - `reference`: shift by the minimum of the current input,
 *   `x_s = (x - min(x)) + 1e-6` (min over the whole tensor at every run:
 *   ReduceMin in ONNX), log-√2 grid on `x_s`, then `x̂ = (Q(x_s) + min(x)) - 1e-6`.
 * - `paper`: a static calibrated shift, `x_s = x + shift`, a true log2 grid
 *   (`q = round(-log2(x_s/δ))`, `x̂_s = δ·2^-q`, 0 when `q >= 2^k`), then `x̂ = Q(x_s) - shift`.
 */
export type ShiftLog2Quantizer =
  | { variant: "reference"; bits: number; scale: number }
  | { variant: "paper"; bits: number; scale: number; shift: number };

/** The ε added after shifting by the minimum (float32 1e-6). */
export const SHIFT_EPS: number = Math.fround(1e-6);

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);
const SQRT2_F32 = Math.fround(Math.SQRT2);

function bitsOf(x: number): number {
  F32[0] = x;
  return U32[0];
}

function fromBits(b: number): number {
  U32[0] = b;
  return F32[0];
}

/** Next float32 above a non-negative finite float32. */
function nextUp(x: number): number {
  return fromBits(bitsOf(x) + 1);
}

/** Next float32 below a positive finite float32. */
function nextDown(x: number): number {
  return fromBits(bitsOf(x) - 1);
}

/** Exact decomposition of a positive finite float32: x = m · 2^e. */
function decompose(x: number): { m: bigint; e: number } {
  const b = bitsOf(x);
  const be = (b >>> 23) & 0xff;
  const frac = b & 0x7fffff;
  return be === 0 ? { m: BigInt(frac), e: -149 } : { m: BigInt(frac | 0x800000), e: be - 150 };
}

/**
 * Exactly: is the float32 `c` (>= 0) below the half-way point between codes
 * j-1 and j, `δ·2^(-(2j-1)/(2r))`? Equivalent to `c^(2r)·2^(2j-1) < δ^(2r)`.
 */
function belowHalfway(c: number, delta: number, j: number, r: number): boolean {
  if (c === 0) return true;
  const p = 2 * r;
  const a = decompose(c), d = decompose(delta);
  const lhs = a.m ** BigInt(p), rhs = d.m ** BigInt(p);
  const shift = p * a.e + 2 * j - 1 - p * d.e;
  return shift >= 0 ? lhs << BigInt(shift) < rhs : lhs < rhs << BigInt(-shift);
}

function checkGrid(bits: number, scale: number, r: number): number {
  if (!Number.isInteger(bits) || bits < 1 || bits > 12) {
    throw new Error(`log quantizer: bits must be an integer in [1, 12], got ${bits}`);
  }
  if (r !== 1 && r !== 2) throw new Error(`log quantizer: levels per octave must be 1 or 2`);
  const d = Math.fround(scale);
  if (!(d > 0 && Number.isFinite(d))) {
    throw new Error(`log quantizer: scale must be positive and finite, got ${scale}`);
  }
  return d;
}

/**
 * Float32 decision thresholds of a log grid: element j-1 (j = 1..2^k) is the
 * largest float32 strictly below `δ·2^(-(2j-1)/(2r))`, so that for float32 x,
 * `round(-r·log2(x/δ)) >= j` exactly when `x <= T[j-1]`. Non-increasing.
 * @param bits k
 * @param scale δ
 * @param perOctave r: 2 for the log-√2 grid, 1 for the log2 grid
 */
export function logThresholds(bits: number, scale: number, perOctave: 1 | 2): Float32Array {
  const d = checkGrid(bits, scale, perOctave);
  const n = 2 ** bits;
  const out = new Float32Array(n);
  for (let j = 1; j <= n; j++) {
    let c = Math.fround(d * 2 ** (-(2 * j - 1) / (2 * perOctave)));
    while (c > 0 && !belowHalfway(c, d, j, perOctave)) c = nextDown(c);
    while (belowHalfway(nextUp(c), d, j, perOctave)) c = nextUp(c);
    out[j - 1] = c;
  }
  return out;
}

/**
 * Float32 output levels of a log grid, length 2^k + 1: element q < 2^k is
 * `δ·2^(-q/r)`, computed for r = 2 as `(2^-ceil(q/2)·√2_f32)·δ` when q is
 * odd and `2^-(q/2)·δ` when even (for r = 1, `2^-q·δ`), rounded to float32;
 * the last element (code 2^k) is 0.
 */
export function logLevels(bits: number, scale: number, perOctave: 1 | 2): Float32Array {
  const d = checkGrid(bits, scale, perOctave);
  const n = 2 ** bits;
  const out = new Float32Array(n + 1);
  for (let q = 0; q < n; q++) {
    const mant = perOctave === 2
      ? Math.fround(2 ** -Math.ceil(q / 2) * (q % 2 === 1 ? SQRT2_F32 : 1))
      : Math.fround(2 ** -q);
    out[q] = Math.fround(mant * d);
  }
  out[n] = 0;
  return out;
}

/**
 * Code of `x` on a log grid: the number of thresholds `T[j-1]` with
 * `x <= T[j-1]` (0..2^k; 2^k means "quantizes to 0"). Binary search.
 */
export function logCode(x: number, thresholds: Float32Array): number {
  let lo = 0, hi = thresholds.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (x <= thresholds[mid]) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Fake-quantize `x` on a log grid (reference). Returns a new array. */
function logGridQuant(x: Float32Array, bits: number, scale: number, r: 1 | 2): Float32Array {
  const t = logThresholds(bits, scale, r);
  const lv = logLevels(bits, scale, r);
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = lv[logCode(x[i], t)];
  return out;
}

/**
 * TypeScript reference of the log-√2 quantizer: `q = round(-2·log2(x/δ))`;
 * 0 when `q >= 2^k` or `x <= 0`; else `δ·2^(-q/2)` with q clamped to
 * `[0, 2^k - 1]`. Returns a new array.
 */
export function logSqrt2Quant(x: Float32Array, q: LogSqrt2Quantizer): Float32Array {
  return logGridQuant(x, q.bits, q.scale, 2);
}

/**
 * Emit `table[indices]` for a 1-D `table` (a constant or a graph input) and
 * integer `indices` of any shape, in range (the same values as ONNX `Gather`
 * on axis 0), as a GatherElements on the table viewed as one row: ONNX
 * Runtime's Gather copies element by element, GatherElements several times
 * faster (module doc). Returns the output name, shaped like `indices`.
 */
export function emitTableLookup(g: Graph, table: string, indices: string, prefix: string): string {
  const row = g.setInitializer(Tensor.fromInt64(g.uniqueName(`${prefix}_row`), [2], [1, -1]));
  const flat = g.addNode("Reshape", [indices, row]);
  const looked = g.addNode("GatherElements", [g.addNode("Reshape", [table, row]), flat], {
    attributes: [makeAttr("axis", 1)],
  });
  return g.addNode("Reshape", [looked, g.addNode("Shape", [indices])]);
}

/** Emit a log-grid fake-quant subgraph on `input` (see the module comment). */
function emitLogGrid(
  g: Graph,
  input: string,
  bits: number,
  scale: number,
  r: 1 | 2,
  prefix: string,
): string {
  const v = logGridTableValues(bits, scale, r);
  const cT = g.constFloat(`${prefix}_thresholds`, v.thresholds);
  const cLevels = g.constFloat(`${prefix}_levels`, v.levels);
  const lnScale = g.constFloat(`${prefix}_lnscale`, v.lnScale[0]);
  return emitLogGridWith(g, input, { thresholds: cT, levels: cLevels, lnScale }, bits, r, prefix);
}

/**
 * Names of the tables of a log-grid emission: `thresholds` holds +∞, the 2^k
 * values of {@link logThresholds}, −∞; `levels` the 2^k + 1 values of
 * {@link logLevels}; `lnScale` the scalar ln δ. Constants in a quantized
 * graph, or graph inputs of a calibration graph whose δ changes between runs.
 */
export interface LogGridTables {
  thresholds: string;
  levels: string;
  lnScale: string;
}

/**
 * The tables of a log grid as float32 arrays, for feeding the inputs of an
 * {@link emitLogGridWith} emission (the same values the constants of
 * {@link emitLogSqrt2Quant} hold).
 */
export function logGridTableValues(
  bits: number,
  scale: number,
  perOctave: 1 | 2,
): { thresholds: Float32Array; levels: Float32Array; lnScale: Float32Array } {
  const d = checkGrid(bits, scale, perOctave);
  const n = 2 ** bits;
  const ext = new Float32Array(n + 2);
  ext[0] = Infinity;
  ext.set(logThresholds(bits, d, perOctave), 1);
  ext[n + 1] = -Infinity;
  return {
    thresholds: ext,
    levels: logLevels(bits, d, perOctave),
    lnScale: Float32Array.of(Math.log(d)),
  };
}

/**
 * Emit a log-grid fake-quant subgraph on `input` whose tables are the named
 * tensors `t` (see {@link LogGridTables}); the node sequence of
 * {@link emitLogSqrt2Quant}, so given the same table values it computes the
 * same bits.
 */
export function emitLogGridWith(
  g: Graph,
  input: string,
  t: LogGridTables,
  bits: number,
  r: 1 | 2,
  prefix: string,
): string {
  const n = 2 ** bits;
  const cT = t.thresholds, cLevels = t.levels;
  // approximate code: round((ln max(x, 0) - ln δ) · (-r / ln 2)), clipped to [0, 2^k]
  let a = g.addNode("Max", [input, g.constFloat(`${prefix}_zero`, 0)]);
  a = g.addNode("Log", [a]);
  a = g.addNode("Sub", [a, t.lnScale]);
  a = g.addNode("Mul", [a, g.constFloat(`${prefix}_mult`, -r / Math.LN2)]);
  a = g.addNode("Round", [a]);
  a = g.addNode("Clip", [
    a,
    g.constFloat(`${prefix}_qlo`, 0),
    g.constFloat(`${prefix}_qhi`, n),
  ]);
  const toInt = [makeAttr("to", DataType.INT32)];
  const q0 = g.addNode("Cast", [a], { attributes: toInt });
  // exact correction by at most one code against the float32 thresholds
  const one = g.setInitializer(Tensor.fromInt32(g.uniqueName(`${prefix}_one`), [], [1]));
  const q1 = g.addNode("Add", [q0, one]);
  const up = g.addNode("LessOrEqual", [input, emitTableLookup(g, cT, q1, prefix)]);
  const down = g.addNode("Greater", [input, emitTableLookup(g, cT, q0, prefix)]);
  let code = g.addNode("Add", [q0, g.addNode("Cast", [up], { attributes: toInt })]);
  code = g.addNode("Sub", [code, g.addNode("Cast", [down], { attributes: toInt })]);
  return emitTableLookup(g, cLevels, code, prefix);
}

/**
 * Emit the log-√2 fake-quant subgraph for value `input` into `g` and return the
 * name of its output.
 */
export function emitLogSqrt2Quant(
  g: Graph,
  input: string,
  q: LogSqrt2Quantizer,
  prefix: string,
): string {
  return emitLogGrid(g, input, q.bits, q.scale, 2, prefix);
}

/** Smallest value of an array (+Infinity when empty; NaNs ignored). */
function minOf(x: Float32Array): number {
  let m = Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] < m) m = x[i];
  return m;
}

/**
 * A static shift for the `paper` Shift-Log2 variant from calibration data:
 * `1e-6 - min(x)` in float32, so that `x + shift` is at least 1e-6 on that data.
 */
export function calibrateShift(x: Float32Array): number {
  return Math.fround(SHIFT_EPS - minOf(x));
}

/** TypeScript reference of the Shift-Log2 quantizer (see {@link ShiftLog2Quantizer}). Returns a new array. */
export function shiftLog2Quant(x: Float32Array, q: ShiftLog2Quantizer): Float32Array {
  const out = new Float32Array(x.length);
  if (q.variant === "reference") {
    const m = minOf(x);
    const xs = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) xs[i] = Math.fround(Math.fround(x[i] - m) + SHIFT_EPS);
    const y = logGridQuant(xs, q.bits, q.scale, 2);
    for (let i = 0; i < x.length; i++) out[i] = Math.fround(Math.fround(y[i] + m) - SHIFT_EPS);
    return out;
  }
  if (q.variant !== "paper") throw new Error(`shift-log2 quantizer: unknown variant`);
  const s = Math.fround(q.shift);
  const xs = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) xs[i] = Math.fround(x[i] + s);
  const y = logGridQuant(xs, q.bits, q.scale, 1);
  for (let i = 0; i < x.length; i++) out[i] = Math.fround(y[i] - s);
  return out;
}

/**
 * Emit the Shift-Log2 fake-quant subgraph for value `input` into `g` and return
 * the name of its output. The `reference` variant computes the minimum of the
 * whole input with ReduceMin (keepdims) at every run.
 */
export function emitShiftLog2Quant(
  g: Graph,
  input: string,
  q: ShiftLog2Quantizer,
  prefix: string,
): string {
  if (q.variant === "reference") {
    const m = g.addNode("ReduceMin", [input], { attributes: [makeAttr("keepdims", 1)] });
    const eps = g.constFloat(`${prefix}_eps`, SHIFT_EPS);
    const xs = g.addNode("Add", [g.addNode("Sub", [input, m]), eps]);
    const y = emitLogGrid(g, xs, q.bits, q.scale, 2, prefix);
    return g.addNode("Sub", [g.addNode("Add", [y, m]), eps]);
  }
  if (q.variant !== "paper") throw new Error(`shift-log2 quantizer: unknown variant`);
  const s = g.constFloat(`${prefix}_shift`, Math.fround(q.shift));
  const y = emitLogGrid(g, g.addNode("Add", [input, s]), q.bits, q.scale, 1, prefix);
  return g.addNode("Sub", [y, s]);
}
