/**
 * Quantizer initializations of ADFQ-ViT's reference code, on Float32Array:
 *
 * - {@link percentileAffine}: asymmetric uniform range from the percentile
 *   pairs (1 - p, p), p ∈ {0.999, 0.9999, 0.99999}, whichever gives the lowest
 *   MSE (weights per output channel, per-tensor activations);
 * - {@link logDeltaInit} and {@link shiftLog2Init}: the scale δ of the log-√2
 *   (post-softmax) and Shift-Log2 (post-GELU) quantizers from the same
 *   percentiles;
 * - {@link search2d}: the 2-D grid search of the q, kᵀ and V quantizers over
 *   range r_i = (max - min)·i/100 and every zero point, scored by
 *   mean |x - x̂|^2.4 (1-D over symmetric thresholds for one-sided inputs);
 * - AdaRound's rounding variable initialization and hard rounding.
 *
 * All arithmetic that decides a rounding is float32 (`Math.fround`), as in the
 * PyTorch reference; scores accumulate in float64.
 *
 * @module
 */
import { PERCENTILE_CANDIDATES, quantileLinear } from "../quant/outlier.ts";
import { fakeQuantValue, MIN_STEP, roundHalfEven } from "../quant/uniform.ts";
import { logLevels, logThresholds, type ShiftLog2Quantizer } from "../quant/log.ts";
import { calibrateShift, SHIFT_EPS } from "../quant/log.ts";

/** An asymmetric uniform quantizer's step and integer zero point. */
export interface AffineParams {
  /** Step Δ (float32). */
  scale: number;
  /** Integer zero point z. */
  zeroPoint: number;
}

/** Δ = (max - min)/(2^k - 1), z = round(-min/Δ) in float32 (a zero step becomes 1e-8). */
export function affineFromRange(min: number, max: number, bits: number): AffineParams {
  let s = Math.fround(Math.fround(max - min) / (2 ** bits - 1));
  if (!(s > 0 && Number.isFinite(s))) s = Math.fround(MIN_STEP);
  return { scale: s, zeroPoint: roundHalfEven(Math.fround(-min / s)) + 0 };
}

/** Mean squared error of the asymmetric fake quantization of `x` (float64 sum). */
export function affineMse(x: ArrayLike<number>, p: AffineParams, bits: number): number {
  const qmax = 2 ** bits - 1;
  let e = 0;
  for (let i = 0; i < x.length; i++) {
    const d = x[i] - fakeQuantValue(x[i], p.scale, p.zeroPoint, 0, qmax, true);
    e += d * d;
  }
  return e / x.length;
}

/** Ascending sorted float32 copy. */
function sorted(x: ArrayLike<number>): Float32Array {
  return Float32Array.from(x).sort();
}

/**
 * Percentile-MSE initialization of an asymmetric uniform quantizer (the
 * reference's `UniformQuantizer` / `TokenQuantizer` per-slice init): for each
 * p, max = quantile(x, p), min = quantile(x, 1 - p) (linear interpolation),
 * and the candidate with the lowest MSE wins (the first on ties).
 */
export function percentileAffine(x: ArrayLike<number>, bits: number): AffineParams {
  const s = sorted(x);
  let best = affineFromRange(s[0], s[s.length - 1], bits);
  let bestErr = Infinity;
  for (const p of PERCENTILE_CANDIDATES) {
    const cand = affineFromRange(quantileLinear(s, 1 - p), quantileLinear(s, p), bits);
    const err = affineMse(x, cand, bits);
    if (err < bestErr) {
      bestErr = err;
      best = cand;
    }
  }
  return best;
}

/** Channel layout of a tensor along `axis`: element i belongs to channel ⌊i / inner⌋ mod channels. */
export function channelLayout(dims: number[], axis: number): { channels: number; inner: number } {
  return { channels: dims[axis], inner: dims.slice(axis + 1).reduce((a, b) => a * b, 1) };
}

/** The values of channel `c` (along `axis`) of a row-major tensor. */
export function channelValues(
  x: Float32Array,
  dims: number[],
  axis: number,
  c: number,
): Float32Array {
  const { channels, inner } = channelLayout(dims, axis);
  const outer = x.length / (channels * inner);
  const out = new Float32Array(outer * inner);
  for (let o = 0; o < outer; o++) {
    out.set(x.subarray((o * channels + c) * inner, (o * channels + c + 1) * inner), o * inner);
  }
  return out;
}

/** Per-output-channel percentile-MSE initialization of a weight (channels along `axis`). */
export function perChannelAffine(
  w: Float32Array,
  dims: number[],
  axis: number,
  bits: number,
): { scale: Float32Array; zeroPoint: Float32Array } {
  const { channels } = channelLayout(dims, axis);
  const scale = new Float32Array(channels), zeroPoint = new Float32Array(channels);
  for (let c = 0; c < channels; c++) {
    const p = percentileAffine(channelValues(w, dims, axis, c), bits);
    scale[c] = p.scale;
    zeroPoint[c] = p.zeroPoint;
  }
  return { scale, zeroPoint };
}

/**
 * MSE of a log-grid quantization of `x` (the grid of `core/quant/log.ts`:
 * codes by comparison with its float32 thresholds, so the same values as
 * `logSqrt2Quant`), for scoring candidate scales quickly.
 */
function logGridMse(x: ArrayLike<number>, bits: number, scale: number, r: 1 | 2): number {
  const t = logThresholds(bits, scale, r), lv = logLevels(bits, scale, r);
  const n = t.length;
  let e = 0;
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    // count thresholds >= v (non-increasing list): binary search
    let lo = 0, hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (v <= t[mid]) lo = mid + 1;
      else hi = mid;
    }
    const d = v - lv[lo];
    e += d * d;
  }
  return e / x.length;
}

/**
 * δ of the log-√2 quantizer (post-softmax): δ = quantile(x, p) for p in the
 * percentile candidates, lowest MSE wins.
 */
export function logDeltaInit(x: Float32Array, bits: number): number {
  const s = sorted(x);
  let best = s[s.length - 1], bestErr = Infinity;
  for (const p of PERCENTILE_CANDIDATES) {
    const d = quantileLinear(s, p);
    if (!(d > 0)) continue;
    const err = logGridMse(x, bits, d, 2);
    if (err < bestErr) {
      bestErr = err;
      best = d;
    }
  }
  return best > 0 ? best : Math.fround(MIN_STEP);
}

/**
 * Shift-Log2 quantizer (post-GELU) from calibration values `x`:
 * - `reference`: δ = quantile(x - min(x) + 1e-6, p), lowest MSE of the
 *   log-√2 grid on the shifted values (the shift stays dynamic at run time);
 * - `paper`: a static shift `1e-6 - min(x)` and δ = quantile(x + shift, p) on a
 *   log2 grid.
 */
export function shiftLog2Init(
  x: Float32Array,
  bits: number,
  variant: "reference" | "paper",
): ShiftLog2Quantizer {
  let m = Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] < m) m = x[i];
  const shift = variant === "paper" ? calibrateShift(x) : 0;
  const xs = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    xs[i] = variant === "paper"
      ? Math.fround(x[i] + shift)
      : Math.fround(Math.fround(x[i] - m) + SHIFT_EPS);
  }
  const s = xs.slice().sort();
  const make = (d: number): ShiftLog2Quantizer =>
    variant === "paper"
      ? { variant, bits, scale: d, shift }
      : { variant: "reference", bits, scale: d };
  let best = make(s[s.length - 1] > 0 ? s[s.length - 1] : MIN_STEP), bestErr = Infinity;
  for (const p of PERCENTILE_CANDIDATES) {
    const d = quantileLinear(s, p);
    if (!(d > 0)) continue;
    const cand = make(d);
    const err = logGridMse(xs, bits, d, variant === "paper" ? 1 : 2);
    if (err < bestErr) {
      bestErr = err;
      best = cand;
    }
  }
  return best;
}

/** Options of {@link search2d}. */
export interface Search2dOptions {
  /** Range steps (the reference's 100). */
  steps?: number;
  /** Exponent of the error (the reference's 2.4). */
  p?: number;
  /**
   * Bins of the fine histogram that ranks candidates (0: score every
   * candidate exactly on all values, as the reference; slow).
   */
  bins?: number;
  /** Best histogram candidates re-scored exactly on all values. */
  rescore?: number;
}

/** One candidate of the grid: its quantizer and its place in the reference's enumeration. */
interface Cand extends AffineParams {
  order: number;
}

/** The reference's `calculate_qparams(min, max)`: range widened to include 0, float32. */
function qparams(min: number, max: number, bits: number): AffineParams {
  const levels = 2 ** bits - 1;
  const lo = Math.min(min, 0), hi = Math.max(max, 0);
  const s = Math.max(Math.fround(Math.fround(hi - lo) / levels), Math.fround(MIN_STEP));
  const z = Math.min(Math.max(-roundHalfEven(Math.fround(lo / s)), 0), levels) + 0;
  return { scale: s, zeroPoint: z };
}

/**
 * Σ w_i·|x_i - x̂_i|^p of the asymmetric fake quantization of `x` (weights 1
 * when `w` is absent); the same float32 arithmetic as `fakeQuantValue`, inlined.
 */
function lpSum(
  x: ArrayLike<number>,
  c: AffineParams,
  bits: number,
  p: number,
  w?: ArrayLike<number>,
): number {
  const qmax = 2 ** bits - 1, s = c.scale, z = c.zeroPoint;
  let e = 0;
  for (let i = 0; i < x.length; i++) {
    const v = Math.fround(x[i] / s);
    let r = Math.round(v);
    if (r - v === 0.5 && r % 2 !== 0) r -= 1;
    r += z;
    if (r < 0) r = 0;
    else if (r > qmax) r = qmax;
    const d = Math.abs(x[i] - Math.fround((r - z) * s));
    if (d > 0) e += (w ? w[i] : 1) * d ** p;
  }
  return e;
}

/**
 * The `keep` candidates with the lowest error on a `bins`-bin histogram of
 * `x` over [min, max] (bin means as representatives), in enumeration order.
 */
function bestOnHistogram(
  x: Float32Array,
  min: number,
  max: number,
  bins: number,
  cands: Cand[],
  bits: number,
  p: number,
  keep: number,
): Cand[] {
  if (cands.length <= keep) return cands;
  const cnt = new Float64Array(bins), sum = new Float64Array(bins);
  const w = (max - min) / bins;
  for (let i = 0; i < x.length; i++) {
    const b = Math.min(Math.floor((x[i] - min) / w), bins - 1);
    cnt[b]++;
    sum[b] += x[i];
  }
  const reps: number[] = [], counts: number[] = [];
  for (let b = 0; b < bins; b++) {
    if (cnt[b] > 0) {
      reps.push(Math.fround(sum[b] / cnt[b]));
      counts.push(cnt[b]);
    }
  }
  return cands.map((c) => ({ c, e: lpSum(reps, c, bits, p, counts) }))
    .sort((a, b) => a.e - b.e || a.c.order - b.c.order)
    .slice(0, keep)
    .map((t) => t.c)
    .sort((a, b) => a.order - b.order);
}

/**
 * The reference's 2-D search of an asymmetric per-tensor quantizer (q, kᵀ,
 * V): for i = 1..steps the range r_i = (max - min)·i/steps, and for every
 * zero point z the range [-z·Δ_i, r_i - z·Δ_i] (Δ_i = r_i/(2^k - 1)); the
 * lowest mean |x - x̂|^p wins (the first in enumeration order on ties). A
 * one-sided input gets the reference's 1-D search over thresholds instead.
 * With `bins > 0` every candidate is first scored on a coarse histogram of
 * `x` (bins/16, at least 64; bin means as representatives), the best 64 on a
 * `bins`-bin histogram, and the `rescore` best of those exactly on all
 * values; `bins: 0` scores every candidate exactly (slow).
 */
export function search2d(x: Float32Array, bits: number, opts: Search2dOptions = {}): AffineParams {
  const steps = opts.steps ?? 100, p = opts.p ?? 2.4;
  const bins = opts.bins ?? 2048, rescore = opts.rescore ?? 4;
  const levels = 2 ** bits;
  let min = Infinity, max = -Infinity;
  for (let i = 0; i < x.length; i++) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
  }
  const cands: Cand[] = [];
  if (min >= 0 || max <= 0) {
    const pos = min >= 0;
    const range = Math.max(Math.abs(min), max);
    for (let i = 1; i <= steps; i++) {
      const t = Math.fround(Math.fround(range / steps) * i);
      const c = qparams(pos ? 0 : -t, pos ? t : 0, bits);
      cands.push({ ...c, order: cands.length });
    }
  } else {
    const range = Math.fround(max - min);
    for (let i = 1; i <= steps; i++) {
      const hi = Math.fround(Math.fround(range / steps) * i);
      const d = Math.fround(hi / (levels - 1));
      for (let z = 0; z < levels; z++) {
        const off = Math.fround(z * d);
        const c = qparams(Math.fround(0 - off), Math.fround(hi - off), bits);
        cands.push({ ...c, order: cands.length });
      }
    }
  }
  let pool = cands;
  if (bins > 0 && cands.length > rescore && max > min) {
    // coarse histogram for every candidate, the fine one for the best 64, exact for the best few
    const coarse = Math.max(64, Math.floor(bins / 16));
    if (coarse < bins) pool = bestOnHistogram(x, min, max, coarse, pool, bits, p, 64);
    pool = bestOnHistogram(x, min, max, bins, pool, bits, p, rescore);
  }
  let best: AffineParams = pool[0], bestScore = Infinity;
  for (const c of pool) {
    const s = lpSum(x, c, bits, p) / x.length;
    if (s < bestScore) {
      bestScore = s;
      best = c;
    }
  }
  return { scale: best.scale, zeroPoint: best.zeroPoint };
}

/** AdaRound's stretch: h(V) = clip(sigmoid(V)·(ζ - γ) + γ, 0, 1), ζ = 1.1, γ = -0.1. */
export const ADAROUND_ZETA = 1.1;
/** AdaRound's γ (see {@link ADAROUND_ZETA}). */
export const ADAROUND_GAMMA = -0.1;

/** floor(w / Δ_c) per element (float32 division), channels along `axis`. */
export function floorCodes(
  w: Float32Array,
  dims: number[],
  axis: number,
  scale: Float32Array,
): Float32Array {
  const { channels, inner } = channelLayout(dims, axis);
  const out = new Float32Array(w.length);
  for (let i = 0; i < w.length; i++) {
    out[i] = Math.floor(Math.fround(w[i] / scale[Math.floor(i / inner) % channels]));
  }
  return out;
}

/**
 * AdaRound's initial rounding variable: V such that h(V) equals the
 * fractional part w/Δ - floor(w/Δ), i.e. V = -ln((ζ - γ)/(rest - γ) - 1).
 */
export function adaRoundInit(
  w: Float32Array,
  dims: number[],
  axis: number,
  scale: Float32Array,
): Float32Array {
  const { channels, inner } = channelLayout(dims, axis);
  const v = new Float32Array(w.length);
  for (let i = 0; i < w.length; i++) {
    const r = Math.fround(w[i] / scale[Math.floor(i / inner) % channels]);
    const rest = r - Math.floor(r);
    v[i] = -Math.log((ADAROUND_ZETA - ADAROUND_GAMMA) / (rest - ADAROUND_GAMMA) - 1);
  }
  return v;
}

/**
 * Hard-rounded dequantized weight after AdaRound: code = clamp(floor(w/Δ) +
 * [V >= 0] + z, 0, 2^k - 1), ŵ = (code - z)·Δ (float32).
 */
export function adaRoundHard(
  w: Float32Array,
  dims: number[],
  axis: number,
  q: { scale: Float32Array; zeroPoint: Float32Array; bits: number },
  v: Float32Array,
): Float32Array {
  const { channels, inner } = channelLayout(dims, axis);
  const qmax = 2 ** q.bits - 1;
  const out = new Float32Array(w.length);
  for (let i = 0; i < w.length; i++) {
    const c = Math.floor(i / inner) % channels;
    const s = q.scale[c], z = q.zeroPoint[c];
    let code = Math.floor(Math.fround(w[i] / s)) + (v[i] >= 0 ? 1 : 0) + z;
    code = Math.min(Math.max(code, 0), qmax);
    out[i] = Math.fround((code - z) * s);
  }
  return out;
}
