/**
 * Bit-exact TypeScript references for the integer-only kernels of I-ViT
 * (Li & Gu, "I-ViT: Integer-only Quantization for Efficient Vision Transformer
 * Inference", ICCV 2023): dyadic requantization, ShiftExp, Shiftmax,
 * ShiftGELU, I-LayerNorm, and the symmetric quantizers that feed them.
 *
 * Conventions shared by every function here:
 *
 * - **Integer arrays.** Inputs are any `ArrayLike<number>` (an `Int32Array`,
 *   a `number[]`, ...) whose entries are safe integers (|v| ≤ 2^53 − 1); a
 *   non-integer entry throws a `RangeError`. Outputs are `number[]` of safe
 *   integers (never `-0`). `number[]` rather than `Int32Array` because some
 *   outputs (ShiftExp at small scales, ShiftGELU's `x·σ`, requantization to
 *   more than 32 bits) can leave the 32-bit range.
 * - **Exact arithmetic.** Every intermediate is either a float64 holding an
 *   integer below 2^53 (or an integer times a power of two, which float64
 *   also holds exactly), or a `BigInt` where a product can pass 2^53 (the
 *   dyadic product `z·m_int`, I-LayerNorm's `Σ y²` for wide inputs). A result
 *   that cannot be represented exactly throws a `RangeError` instead of being
 *   silently rounded. Scales are plain float64 numbers.
 * - **Rows.** Kernels that reduce "along the last axis" take the data flat,
 *   row-major, plus the length of that axis (`rowLength` / `channels`).
 *
 * The float reference code these kernels mirror computes in float32/float64
 * tensors; where that differs from exact integer arithmetic (it can only
 * differ once a value passes 2^24 in float32 or 2^53 in float64) these
 * functions give the exact integer answer. Pass `Math.fround`-ed scales to
 * reproduce float32-derived constants such as `floor(-1/s)`.
 *
 * @module
 */
import { MIN_STEP, roundHalfEven } from "../quant/uniform.ts";

/** Integer input accepted by every kernel: `Int32Array`, `number[]`, ... of safe integers. */
export type IntArrayLike = ArrayLike<number>;

/** An integer tensor with the (float) step that dequantizes it: real = value · scale. */
export interface ScaledInts {
  /** Integer codes (safe integers). */
  values: number[];
  /** Step of the codes; real value = code · scale. */
  scale: number;
}

/** 2^31 − 1, the fixed-point "one" used by Shiftmax, ShiftGELU and I-LayerNorm. */
export const INT31_MAX = 2147483647;

const TWO_53 = 9007199254740992;
const SAFE = Number.MAX_SAFE_INTEGER;

// ---------------------------------------------------------------- helpers

function checkInts(x: IntArrayLike, what: string): void {
  for (let i = 0; i < x.length; i++) {
    if (!Number.isSafeInteger(x[i])) {
      throw new RangeError(`${what}[${i}] = ${x[i]} is not a safe integer`);
    }
  }
}

function checkScale(s: number, what: string): void {
  if (!(s > 0) || !Number.isFinite(s)) {
    throw new RangeError(`${what} must be a positive finite number, got ${s}`);
  }
}

function checkRows(len: number, rowLength: number, what: string): void {
  if (!Number.isInteger(rowLength) || rowLength < 1 || len % rowLength !== 0) {
    throw new RangeError(`${what}: length ${len} is not a multiple of row length ${rowLength}`);
  }
}

function checkBits(bits: number, lo: number, hi: number, what: string): void {
  if (!Number.isInteger(bits) || bits < lo || bits > hi) {
    throw new RangeError(`${what}: bits must be an integer in [${lo}, ${hi}], got ${bits}`);
  }
}

/** Exact product of two safe integers, or a RangeError when it is not a safe integer. */
function safeMul(a: number, b: number, what: string): number {
  const p = a * b;
  // float rounding is monotone: |p| ≤ 2^53 − 1 implies the true product is that value
  if (!(Math.abs(p) <= SAFE)) throw new RangeError(`${what}: ${a}·${b} exceeds 2^53`);
  return p + 0;
}

/** Clamp to the signed b-bit range [−2^(b−1), 2^(b−1) − 1]. */
function clampSigned(v: number, bits: number): number {
  const hi = 2 ** (bits - 1) - 1;
  const lo = -(2 ** (bits - 1));
  return (v < lo ? lo : v > hi ? hi : v) + 0;
}

// ---------------------------------------------------- dyadic requantization

/**
 * Decompose a float64 as `x = mantissa · 2^exponent` with |mantissa| in
 * [0.5, 1) (C's `frexp`). `frexp(0)` is `{ mantissa: 0, exponent: 0 }`;
 * subnormals are handled; NaN and ±Infinity throw.
 */
export function frexp(x: number): { mantissa: number; exponent: number } {
  if (!Number.isFinite(x)) throw new RangeError(`frexp: ${x} is not finite`);
  if (x === 0) return { mantissa: 0, exponent: 0 };
  const view = new DataView(new ArrayBuffer(8));
  let bias = 0;
  let y = x;
  view.setFloat64(0, y);
  if (((view.getUint16(0) >>> 4) & 0x7ff) === 0) {
    // subnormal: scale into the normal range first (exact)
    y = x * 2 ** 64;
    bias = -64;
    view.setFloat64(0, y);
  }
  const hi = view.getUint16(0);
  const biased = (hi >>> 4) & 0x7ff;
  // set the biased exponent to 1022, i.e. |mantissa| in [0.5, 1)
  view.setUint16(0, (hi & 0x800f) | (1022 << 4));
  return { mantissa: view.getFloat64(0), exponent: biased - 1022 + bias };
}

/** Dyadic form of a scale ratio: r ≈ mInt / 2^shift. */
export interface DyadicParams {
  /** round-half-up(m · 2^31) for frexp(r) = (m, e); in [2^30, 2^31] for r > 0. */
  mInt: number;
  /** 31 − e. */
  shift: number;
}

/**
 * Dyadic parameters of a requantization ratio `r = s_in / s_out`:
 * `frexp(r) = (m, e)`, `mInt = round_half_up(m · 2^31)` (ties away from zero,
 * like Python's `Decimal.quantize(ROUND_HALF_UP)`), `shift = 31 − e`.
 * `m · 2^31` is exact in float64, so the rounding is exact too. When `m` is
 * within 2^-32 of 1 the result is `mInt = 2^31` (kept, as the reference does).
 *
 * @example dyadicParams(0.0123) → { mInt: 1690499128, shift: 37 }
 */
export function dyadicParams(ratio: number): DyadicParams {
  const { mantissa, exponent } = frexp(ratio);
  const t = mantissa * 2 ** 31;
  const mInt = Math.sign(t) * Math.floor(Math.abs(t) + 0.5);
  return { mInt: mInt + 0, shift: 31 - exponent };
}

/**
 * `round(z · mInt / 2^shift)` computed exactly, rounding to nearest with ties
 * to even (the reference's `torch.round`). The product is formed in float64
 * when it stays below 2^53 and in `BigInt` otherwise, so the answer is exact
 * for every safe-integer `z` (the float64 reference can be off by one once
 * |z · mInt| passes 2^53). No clamping; `shift` may be negative (r ≥ 2^31).
 */
export function dyadicRound(z: number, mInt: number, shift: number): number {
  if (!Number.isSafeInteger(z)) throw new RangeError(`dyadicRound: z = ${z} is not a safe integer`);
  const p = z * mInt;
  if (Math.abs(p) < TWO_53 && shift >= 0 && shift <= 1000) {
    // p exact; dividing by a power of two is exact (no underflow for shift ≤ 1000)
    return roundHalfEven(p / 2 ** shift) + 0;
  }
  const big = BigInt(z) * BigInt(mInt);
  let q: bigint;
  if (shift <= 0) {
    q = big << BigInt(-shift);
  } else {
    const sh = BigInt(shift);
    q = big >> sh; // floor
    const rem = big - (q << sh);
    const half = 1n << (sh - 1n);
    if (rem > half || (rem === half && (q & 1n) === 1n)) q += 1n;
  }
  const out = Number(q);
  if (!Number.isSafeInteger(out)) throw new RangeError(`dyadicRound: result ${q} exceeds 2^53`);
  return out + 0;
}

/**
 * Scale(s) along the last axis: one number for per-tensor, or one per channel
 * (element i uses `s[i % s.length]`, i.e. channels are the last axis, as for
 * the output of a per-channel-quantized linear layer).
 */
export type ScaleLike = number | ArrayLike<number>;

function dyadicTable(sIn: ScaleLike, sOut: number, what: string): DyadicParams[] {
  checkScale(sOut, `${what}: output scale`);
  const arr = typeof sIn === "number" ? [sIn] : Array.from(sIn);
  if (arr.length === 0) throw new RangeError(`${what}: empty input scale`);
  return arr.map((s) => {
    checkScale(s, `${what}: input scale`);
    return dyadicParams(s / sOut);
  });
}

/**
 * Dyadic requantization (the reference's `fixedpoint_mul` without a residual):
 * `out = clamp(round(z · mInt / 2^shift), −2^(b−1), 2^(b−1) − 1)` with
 * `(mInt, shift) = dyadicParams(sIn / sOut)`, the ratio taken in float64.
 * Rounding is to nearest, ties to even (exact; see {@link dyadicRound}).
 *
 * @param z integer codes at scale `sIn`
 * @param sIn input scale, per tensor or per channel along the last axis
 * @param sOut output scale
 * @param bits output width, 2..53 (default 8)
 * @returns codes at scale `sOut`
 * @example fixedpointMul([1000], 0.0123, 1) → [12]
 */
export function fixedpointMul(
  z: IntArrayLike,
  sIn: ScaleLike,
  sOut: number,
  bits = 8,
): number[] {
  checkBits(bits, 2, 53, "fixedpointMul");
  checkInts(z, "fixedpointMul: z");
  const table = dyadicTable(sIn, sOut, "fixedpointMul");
  const out = new Array<number>(z.length);
  for (let i = 0; i < z.length; i++) {
    const { mInt, shift } = table[i % table.length];
    out[i] = clampSigned(dyadicRound(z[i], mInt, shift), bits);
  }
  return out;
}

/**
 * Residual add in the integer domain (the reference's `fixedpoint_mul` with an
 * identity branch): each operand is requantized to `sOut` with its own dyadic
 * parameters and rounded on its own, the two are added, then the sum is
 * clamped to b bits: `clamp(round(a·m_a/2^k_a) + round(b·m_b/2^k_b))`.
 *
 * @param a codes at scale `sA`
 * @param sA scale of `a` (per tensor or per channel along the last axis)
 * @param b codes at scale `sB`, same length as `a`
 * @param sB scale of `b`
 * @param sOut output scale
 * @param bits output width, 2..53 (default 8)
 */
export function fixedpointAdd(
  a: IntArrayLike,
  sA: ScaleLike,
  b: IntArrayLike,
  sB: ScaleLike,
  sOut: number,
  bits = 8,
): number[] {
  checkBits(bits, 2, 53, "fixedpointAdd");
  if (a.length !== b.length) {
    throw new RangeError(`fixedpointAdd: lengths differ (${a.length} vs ${b.length})`);
  }
  checkInts(a, "fixedpointAdd: a");
  checkInts(b, "fixedpointAdd: b");
  const ta = dyadicTable(sA, sOut, "fixedpointAdd");
  const tb = dyadicTable(sB, sOut, "fixedpointAdd");
  const out = new Array<number>(a.length);
  for (let i = 0; i < a.length; i++) {
    const pa = ta[i % ta.length];
    const pb = tb[i % tb.length];
    const sum = dyadicRound(a[i], pa.mInt, pa.shift) + dyadicRound(b[i], pb.mInt, pb.shift);
    if (!Number.isSafeInteger(sum)) throw new RangeError(`fixedpointAdd: sum exceeds 2^53`);
    out[i] = clampSigned(sum, bits);
  }
  return out;
}

// ------------------------------------------------------------------ ShiftExp

/**
 * ShiftExp on one integer, with `x0 = floor(−1/s)` precomputed. May return a
 * value above 2^53 (an exact float64 `int · 2^k`, possibly Infinity) for
 * positive inputs; callers that need a safe integer check it.
 */
function shiftExpScalar(x: number, x0: number, n: number): number {
  // 1) x · log2(e) ≈ x · (1 + 1/2 − 1/16)
  let v = x + Math.floor(x / 2) - Math.floor(x / 16);
  // 3) clamp to n·x0 (x0 < 0)
  const lo = n * x0;
  if (v < lo) v = lo;
  // 4) v = x0·q + r with r in (x0, 0]
  const q = Math.floor(v / x0);
  const r = v - x0 * q;
  // 5–6) floor((r/2 − x0) · 2^(n−q)) = floor((r − 2·x0) · 2^(n−q−1)), exact
  const num = r - 2 * x0;
  const k = n - q - 1;
  const e = k >= 0 ? num * 2 ** k : Math.floor(num / 2 ** -k);
  return e > 0 ? e : 0;
}

function expX0(scale: number): number {
  const x0 = Math.floor(-1 / scale);
  if (!Number.isSafeInteger(2 * x0)) throw new RangeError(`ShiftExp: scale ${scale} too small`);
  return x0;
}

/**
 * ShiftExp: integer approximation of `exp(x·s)` with output scale `s / 2^n`.
 *
 * 1. `x ← x + floor(x/2) − floor(x/16)` (x·log2 e ≈ 1.4375x);
 * 2. `x0 = floor(−1/s)` (float64);
 * 3. `x ← max(x, n·x0)`;
 * 4. `q = floor(x/x0)`, `r = x − x0·q` (r in (x0, 0]);
 * 5. `e = r/2 − x0` — **exact** division (the reference keeps it in float and
 *    only floors in step 6). The ShiftGELU vector pins this reading: flooring
 *    r/2 here would give [0, −380, −390, 0, 870, 2120, 7560] instead of
 *    [0, −400, −390, 0, 890, 2160, 7560] (the Shiftmax vector is the same
 *    either way);
 * 6. `e ← max(floor(e · 2^(n−q)), 0)`.
 *
 * Meant for x ≤ 0 (where e ≤ −x0·2^n); positive inputs are allowed but
 * throw a `RangeError` if the result is not a safe integer.
 *
 * @param x integer exponents (x_int, real value x_int·s)
 * @param scale s > 0
 * @param n output fraction bits (Shiftmax uses 15, ShiftGELU 23)
 * @returns codes with scale s/2^n
 */
export function shiftExp(x: IntArrayLike, scale: number, n: number): ScaledInts {
  checkScale(scale, "shiftExp: scale");
  checkBits(n, 0, 1000, "shiftExp: n");
  checkInts(x, "shiftExp: x");
  const x0 = expX0(scale);
  const values = new Array<number>(x.length);
  for (let i = 0; i < x.length; i++) {
    const e = shiftExpScalar(x[i], x0, n);
    if (!(e <= SAFE)) throw new RangeError(`shiftExp: exp of ${x[i]} exceeds 2^53`);
    values[i] = e;
  }
  return { values, scale: scale / 2 ** n };
}

// ------------------------------------------------------------------ Shiftmax

/** Options of {@link shiftmax}. */
export interface ShiftmaxOptions {
  /** Output bits b; output scale 1/2^(b−1). Default 8. */
  bits?: number;
  /** ShiftExp fraction bits. Default 15. */
  n?: number;
}

/**
 * Shiftmax: integer softmax along the last axis.
 *
 * Per row: `x ← x − rowmax`, `e = ShiftExp(x, s, n)`,
 * `S = min(Σ e, 2^31 − 1)`, `f = floor((2^31 − 1)/S)`,
 * `out = floor(e·f / 2^(32−b))`, output scale `1/2^(b−1)`. Every product is
 * exact (e·f ≤ 2^31 − 1 whenever f ≥ 2). A row sums to at most 2^(b−1) − 1
 * (each term is floored), so a one-hot row gives 2^(b−1) − 1, not 2^(b−1);
 * it is at least `2^(b−1)·(1 − (S + 1)/2^31) − rowLength`. Long rows at small
 * s make S large and the integer factor f coarse (the reference behaves the
 * same), which pulls the row sum further below 2^(b−1).
 *
 * @param x integer scores, row-major, rows of `rowLength`
 * @param rowLength length of the last axis
 * @param scale s of the scores
 * @example shiftmax([20, 10, -40, 0], 4, 0.05) → values [60, 39, 3, 24], scale 1/128
 */
export function shiftmax(
  x: IntArrayLike,
  rowLength: number,
  scale: number,
  options: ShiftmaxOptions = {},
): ScaledInts {
  const bits = options.bits ?? 8;
  const n = options.n ?? 15;
  checkBits(bits, 1, 32, "shiftmax");
  checkBits(n, 0, 1000, "shiftmax: n");
  checkScale(scale, "shiftmax: scale");
  checkRows(x.length, rowLength, "shiftmax");
  checkInts(x, "shiftmax: x");
  const x0 = expX0(scale);
  const div = 2 ** (32 - bits);
  const values = new Array<number>(x.length);
  const e = new Array<number>(rowLength);
  for (let base = 0; base < x.length; base += rowLength) {
    let max = -Infinity;
    for (let j = 0; j < rowLength; j++) if (x[base + j] > max) max = x[base + j];
    let sum = 0;
    for (let j = 0; j < rowLength; j++) {
      const d = x[base + j] - max;
      if (!Number.isSafeInteger(d)) throw new RangeError("shiftmax: x − rowmax exceeds 2^53");
      e[j] = shiftExpScalar(d, x0, n);
      if (!(e[j] <= SAFE)) throw new RangeError("shiftmax: exp exceeds 2^53");
      sum += e[j]; // rounding above 2^53 is monotone, so the clamp below stays exact
    }
    const S = Math.min(sum, INT31_MAX);
    const f = Math.floor(INT31_MAX / S);
    for (let j = 0; j < rowLength; j++) {
      values[base + j] = Math.floor(safeMul(e[j], f, "shiftmax") / div);
    }
  }
  return { values, scale: 1 / 2 ** (bits - 1) };
}

// ----------------------------------------------------------------- ShiftGELU

/** Options of {@link shiftGelu}. */
export interface ShiftGeluOptions {
  /** Bits of the sigmoid code; σ scale 1/2^(b−1). Default 8. */
  bits?: number;
  /** ShiftExp fraction bits. Default 23. */
  n?: number;
  /**
   * How the 1.702 of σ(1.702x) is applied.
   * - `"float"` (default): folded into the float scale, ShiftExp runs at
   *   scale `1.702·s` (reproduces the reference code and the test vector).
   * - `"shift"`: the paper's integer form, `x' = x + (x>>1) + (x>>3) + (x>>4)`
   *   (= 1.6875x, `>>` an arithmetic shift, i.e. floor division by a power of
   *   two), and ShiftExp runs on x' at scale `s`.
   */
  sigmoidScale?: "float" | "shift";
}

/**
 * ShiftGELU: GELU(x) ≈ x·σ(1.702x), integer-only, along the last axis.
 *
 * Per row, with `u` the sigmoid argument (`x` at scale 1.702·s, or
 * `x + (x>>1) + (x>>3) + (x>>4)` at scale s, see
 * {@link ShiftGeluOptions.sigmoidScale}) and `m = rowmax(u)`:
 * `e = ShiftExp(u − m)`, `e_m = ShiftExp(−m)` (so e/(e + e_m) = σ(u)),
 * `σ = floor(e · floor((2^31−1)/min(e + e_m, 2^31−1)) / 2^(32−b))`,
 * output `x·σ` with scale `s/2^(b−1)`.
 *
 * Quirk kept from the reference: in a row whose maximum is very negative,
 * `e_m` is huge, the sum is clamped to 2^31 − 1 and σ becomes
 * `floor(e / 2^(32−b))` instead of ≈ 0. `e_m` is exact (or +Infinity) there;
 * only its comparison with 2^31 − 1 is used.
 *
 * Accuracy: with n = 23 the sum `e + e_m` reaches |x0|·2^23, so the divisor
 * `floor((2^31−1)/(e + e_m))` is a small integer (21 at s = 0.05, 4 at
 * s = 0.01) and its floor costs up to 1/f of σ: max error vs GELU on a dense
 * [−3, 3] grid is ≈ 0.10 at s = 0.05 and grows as s shrinks. `n: 15` keeps
 * it ≤ 0.045 across scales. n = 23 is the default because the test vector
 * needs it (n = 15 gives 7620 instead of 7560 at x = 3).
 *
 * @param x integer inputs, row-major, rows of `rowLength`
 * @param rowLength length of the last axis
 * @param scale s of the inputs
 * @example shiftGelu([-60, -20, -10, 0, 10, 20, 60], 7, 0.05)
 *   → values [0, -400, -390, 0, 890, 2160, 7560], scale 0.05/128
 */
export function shiftGelu(
  x: IntArrayLike,
  rowLength: number,
  scale: number,
  options: ShiftGeluOptions = {},
): ScaledInts {
  const bits = options.bits ?? 8;
  const n = options.n ?? 23;
  const mode = options.sigmoidScale ?? "float";
  checkBits(bits, 1, 32, "shiftGelu");
  checkBits(n, 0, 1000, "shiftGelu: n");
  checkScale(scale, "shiftGelu: scale");
  checkRows(x.length, rowLength, "shiftGelu");
  checkInts(x, "shiftGelu: x");
  if (mode !== "float" && mode !== "shift") {
    throw new RangeError(`shiftGelu: unknown sigmoidScale ${mode}`);
  }
  const x0 = expX0(mode === "float" ? 1.702 * scale : scale);
  const div = 2 ** (32 - bits);
  const values = new Array<number>(x.length);
  const u = new Array<number>(rowLength);
  for (let base = 0; base < x.length; base += rowLength) {
    let m = -Infinity;
    for (let j = 0; j < rowLength; j++) {
      const v = x[base + j];
      u[j] = mode === "float" ? v : v + Math.floor(v / 2) + Math.floor(v / 8) + Math.floor(v / 16);
      if (u[j] > m) m = u[j];
    }
    const em = shiftExpScalar(-m, x0, n); // exact int·2^k or Infinity; only compared below
    for (let j = 0; j < rowLength; j++) {
      const d = u[j] - m;
      if (!Number.isSafeInteger(d)) throw new RangeError("shiftGelu: x − rowmax exceeds 2^53");
      const e = shiftExpScalar(d, x0, n);
      if (!(e <= SAFE)) throw new RangeError("shiftGelu: exp exceeds 2^53");
      const f = Math.floor(INT31_MAX / Math.min(e + em, INT31_MAX));
      const sigma = Math.floor(safeMul(e, f, "shiftGelu") / div);
      values[base + j] = safeMul(x[base + j], sigma, "shiftGelu");
    }
  }
  return { values, scale: scale / 2 ** (bits - 1) };
}

// ---------------------------------------------------------------- I-LayerNorm

/**
 * Integer square root by a fixed number of Newton steps,
 * `k ← floor((k + floor(V/k)) / 2)`, from `k0` (I-LayerNorm uses 10 steps
 * from 2^16). Exact in `BigInt`; the result is whatever the fixed step count
 * reaches (for V ≤ ~2^40 that is floor(√V), possibly +1 when V + 1 is a
 * perfect square; for tiny V the 10 halvings stop at k ≥ 64).
 *
 * @param v V ≥ 0
 * @param steps number of Newton steps (default 10)
 * @param k0 starting value > 0 (default 2^16)
 */
export function iSqrtNewton(v: bigint, steps = 10, k0: bigint = 65536n): bigint {
  if (v < 0n) throw new RangeError(`iSqrtNewton: negative V ${v}`);
  if (k0 <= 0n) throw new RangeError(`iSqrtNewton: k0 must be positive, got ${k0}`);
  let k = k0;
  for (let i = 0; i < steps; i++) {
    k = (k + v / k) / 2n; // operands are non-negative, so truncation is floor
    if (k === 0n) throw new RangeError("iSqrtNewton: k reached 0");
  }
  return k;
}

/** Float64 twin of iSqrtNewton for V < 2^53 (every quotient exact). */
function iSqrtNewtonNumber(v: number, steps: number, k0: number): number {
  let k = k0;
  for (let i = 0; i < steps; i++) {
    k = Math.floor((k + Math.floor(v / k)) / 2);
    if (k === 0) throw new RangeError("iSqrtNewton: k reached 0");
  }
  return k;
}

/** round(sum / c), ties to even, for integers (exact). */
function roundDivHalfEven(sum: bigint, c: bigint): bigint {
  let q = sum / c;
  let rem = sum - q * c;
  if (rem < 0n) {
    q -= 1n;
    rem += c;
  }
  const twice = 2n * rem;
  if (twice > c || (twice === c && (q & 1n) === 1n)) q += 1n;
  return q;
}

/** Options of {@link iLayerNorm}. */
export interface ILayerNormOptions {
  /** γ: one number or one per channel. Default 1. Must be non-zero. */
  gamma?: number | ArrayLike<number>;
  /** β: one number or one per channel. Default 0. */
  beta?: number | ArrayLike<number>;
  /** Newton steps of the integer sqrt. Default 10. */
  steps?: number;
  /** Newton start value. Default 2^16. */
  k0?: number;
}

/** Output of {@link iLayerNorm}. */
export interface ILayerNormResult {
  /** Integer outputs y + bias_int, row-major like the input. */
  values: number[];
  /** s_ln = √C / 2^30, the scale before γ. */
  scale: number;
  /** Per-channel output scale s_ln·γ_c: real output = values[i]·channelScale[i % C]. */
  channelScale: number[];
  /** Per-channel folded bias floor((β_c/γ_c)/s_ln). */
  biasInt: number[];
}

function perChannel(
  v: number | ArrayLike<number> | undefined,
  c: number,
  dflt: number,
  what: string,
) {
  if (v === undefined) return new Array<number>(c).fill(dflt);
  if (typeof v === "number") return new Array<number>(c).fill(v);
  if (v.length !== c) throw new RangeError(`iLayerNorm: ${what} has ${v.length} entries, not ${c}`);
  return Array.from(v);
}

/**
 * I-LayerNorm over the last axis (C channels).
 *
 * Per row: `mean = round(Σx / C)` (exact, ties to even like `torch.round`),
 * `y = x − mean`, `V = Σ y²` (a sum, not a mean), `k` = 10 Newton steps of
 * the integer sqrt of V from 2^16 ({@link iSqrtNewton}),
 * `y ← floor(y · floor((2^31−1)/k) / 2)`, then `y + floor((β_c/γ_c)/s_ln)`
 * with output scale `s_ln·γ_c`, `s_ln = √C/2^30` (float64 `Math.sqrt`).
 *
 * The input scale cancels out of the normalization, so it is not a
 * parameter. Sums run in float64 while `C·max|y|²` stays below 2^53 and in
 * `BigInt` otherwise, so V is exact beyond 2^31 and 2^53 alike.
 *
 * @param x integer inputs, row-major, rows of `channels`
 * @param channels C
 * @example iLayerNorm([30, -120, 250, 0, 410, -70, 110, -220], 8): values[0]·scale ≈ −0.0995
 */
export function iLayerNorm(
  x: IntArrayLike,
  channels: number,
  options: ILayerNormOptions = {},
): ILayerNormResult {
  const steps = options.steps ?? 10;
  const k0 = options.k0 ?? 65536;
  checkRows(x.length, channels, "iLayerNorm");
  checkBits(steps, 0, 10000, "iLayerNorm: steps");
  if (!Number.isInteger(k0) || k0 < 1 || k0 > 2 ** 32) {
    throw new RangeError(`iLayerNorm: k0 must be an integer in [1, 2^32], got ${k0}`);
  }
  checkInts(x, "iLayerNorm: x");
  const C = channels;
  const gamma = perChannel(options.gamma, C, 1, "gamma");
  const beta = perChannel(options.beta, C, 0, "beta");
  const sLn = Math.sqrt(C) / 2 ** 30;
  const biasInt = gamma.map((g, c) => {
    if (!(g !== 0 && Number.isFinite(g))) throw new RangeError(`iLayerNorm: gamma[${c}] = ${g}`);
    const b = Math.floor(beta[c] / g / sLn);
    if (!Number.isSafeInteger(b)) {
      throw new RangeError(`iLayerNorm: bias of channel ${c} too large`);
    }
    return b;
  });
  const channelScale = gamma.map((g) => sLn * g);
  const values = new Array<number>(x.length);
  const y = new Array<number>(C);
  for (let base = 0; base < x.length; base += C) {
    let maxAbs = 0;
    for (let j = 0; j < C; j++) maxAbs = Math.max(maxAbs, Math.abs(x[base + j]));
    let k: number;
    // |y| ≤ 2·max|x|; the float path needs C·(2·max|x|)² < 2^53 (covers Σx too)
    if (C * (2 * maxAbs) ** 2 < TWO_53) {
      let sum = 0;
      for (let j = 0; j < C; j++) sum += x[base + j];
      const mean = Number(roundDivHalfEven(BigInt(sum), BigInt(C)));
      let v = 0;
      for (let j = 0; j < C; j++) {
        y[j] = x[base + j] - mean;
        v += y[j] * y[j];
      }
      k = iSqrtNewtonNumber(v, steps, k0);
    } else {
      let sum = 0n;
      for (let j = 0; j < C; j++) sum += BigInt(x[base + j]);
      const mean = roundDivHalfEven(sum, BigInt(C));
      let v = 0n;
      for (let j = 0; j < C; j++) {
        const d = BigInt(x[base + j]) - mean;
        v += d * d;
        const dn = Number(d);
        if (!Number.isSafeInteger(dn)) throw new RangeError("iLayerNorm: x − mean exceeds 2^53");
        y[j] = dn;
      }
      const kb = iSqrtNewton(v, steps, BigInt(k0));
      k = kb > BigInt(INT31_MAX) ? INT31_MAX + 1 : Number(kb); // factor is 0 either way
    }
    const factor = Math.floor(INT31_MAX / k);
    for (let j = 0; j < C; j++) {
      const out = Math.floor(safeMul(y[j], factor, "iLayerNorm") / 2) + biasInt[j];
      if (!Number.isSafeInteger(out)) throw new RangeError("iLayerNorm: output exceeds 2^53");
      values[base + j] = out + 0;
    }
  }
  return { values, scale: sLn, channelScale, biasInt };
}

// ---------------------------------------------------------------- quantizers

/**
 * Symmetric step of I-ViT's quantizers: `max(absMax, 1e-8) / (2^(b−1) − 1)`
 * (the 1e-8 floor, applied before the division, keeps all-zero tensors
 * quantizable, as the reference's clamp does). Float64.
 */
export function ivitSymmetricStep(absMax: number, bits: number): number {
  checkBits(bits, 2, 53, "ivitSymmetricStep");
  if (!(absMax >= 0)) throw new RangeError(`ivitSymmetricStep: bad absMax ${absMax}`);
  return Math.max(absMax, MIN_STEP) / (2 ** (bits - 1) - 1);
}

/**
 * Symmetric quantization `clamp(round(x/Δ), −2^(b−1), 2^(b−1) − 1)` with
 * round half to even (`torch.round`), `x/Δ` in float64.
 *
 * @param x real values
 * @param step Δ > 0
 * @param bits b (default 8)
 */
export function quantizeSymmetric(x: ArrayLike<number>, step: number, bits = 8): number[] {
  checkScale(step, "quantizeSymmetric: step");
  checkBits(bits, 2, 53, "quantizeSymmetric");
  const out = new Array<number>(x.length);
  for (let i = 0; i < x.length; i++) {
    const q = roundHalfEven(x[i] / step);
    if (Number.isNaN(q)) throw new RangeError(`quantizeSymmetric: x[${i}] is NaN`);
    out[i] = clampSigned(q, bits);
  }
  return out;
}

/** Per-channel quantized weights. */
export interface PerChannelWeights {
  /** Integer codes, same layout as the input. */
  values: number[];
  /** Δ_c, one per output channel. */
  steps: number[];
}

/**
 * Per-channel symmetric weight quantization: the weight is `[channels, ...]`
 * row-major (PyTorch's `[out, in]` for a linear layer), each channel c gets
 * `Δ_c = max(|min_c|, |max_c|, 1e-8) / (2^(b−1) − 1)` and codes
 * `clamp(round_half_even(w/Δ_c))`.
 *
 * @param w weights, row-major with the channel axis first
 * @param channels number of output channels
 * @param bits b (default 8, i.e. Δ_c = absmax_c/127)
 */
export function quantizeWeightsPerChannel(
  w: ArrayLike<number>,
  channels: number,
  bits = 8,
): PerChannelWeights {
  checkRows(w.length, channels, "quantizeWeightsPerChannel");
  const per = w.length / channels;
  const values = new Array<number>(w.length);
  const steps = new Array<number>(channels);
  for (let c = 0; c < channels; c++) {
    let lo = Infinity;
    let hi = -Infinity;
    for (let j = 0; j < per; j++) {
      const v = w[c * per + j];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    const step = ivitSymmetricStep(Math.max(Math.abs(lo), Math.abs(hi)), bits);
    steps[c] = step;
    const q = quantizeSymmetric(Array.prototype.slice.call(w, c * per, (c + 1) * per), step, bits);
    for (let j = 0; j < per; j++) values[c * per + j] = q[j];
  }
  return { values, steps };
}

/**
 * I-ViT's activation quantizer (QuantAct) with running min/max: the first
 * observed batch sets min and max, later batches update them by EMA,
 * `new = momentum·old + (1 − momentum)·batch` (momentum 0.95). The step is
 * {@link ivitSymmetricStep}(max(|min|, |max|), b).
 *
 * "First batch" is tracked with a flag (the reference instead re-initializes
 * whenever the stored min equals the stored max, e.g. after an all-constant
 * batch; that only differs for degenerate batches).
 */
export class QuantActObserver {
  /** Activation bits b. */
  readonly bits: number;
  /** EMA momentum. */
  readonly momentum: number;
  /** Running minimum (0 before the first batch). */
  min = 0;
  /** Running maximum (0 before the first batch). */
  max = 0;
  /** Batches observed. */
  batches = 0;

  /**
   * An observer that has seen no batch yet.
   *
   * @param bits activation bits (default 8)
   * @param momentum EMA momentum (default 0.95)
   */
  constructor(bits = 8, momentum = 0.95) {
    checkBits(bits, 2, 53, "QuantActObserver");
    if (!(momentum >= 0 && momentum <= 1)) {
      throw new RangeError(`QuantActObserver: bad momentum ${momentum}`);
    }
    this.bits = bits;
    this.momentum = momentum;
  }

  /** Update the running range with one batch of real values. */
  observe(batch: ArrayLike<number>): void {
    if (batch.length === 0) return;
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = 0; i < batch.length; i++) {
      const v = batch[i];
      if (Number.isNaN(v)) throw new RangeError(`QuantActObserver: batch[${i}] is NaN`);
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (this.batches === 0) {
      this.min = lo;
      this.max = hi;
    } else {
      this.min = this.momentum * this.min + (1 - this.momentum) * lo;
      this.max = this.momentum * this.max + (1 - this.momentum) * hi;
    }
    this.batches++;
  }

  /** Δ = max(|min|, |max|, 1e-8) / (2^(b−1) − 1). */
  step(): number {
    return ivitSymmetricStep(Math.max(Math.abs(this.min), Math.abs(this.max)), this.bits);
  }

  /** Quantize real values with the current step (round half to even, clamp). */
  quantize(x: ArrayLike<number>): number[] {
    return quantizeSymmetric(x, this.step(), this.bits);
  }

  /**
   * Integer-only path: requantize codes at scale `sIn` to this quantizer's
   * step with {@link fixedpointMul}.
   */
  requantize(z: IntArrayLike, sIn: ScaleLike): number[] {
    return fixedpointMul(z, sIn, this.step(), this.bits);
  }
}
