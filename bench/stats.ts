/**
 * Paired statistics for comparing two quantization methods evaluated on the
 * SAME images: discordance counts, the exact McNemar test, a paired bootstrap
 * interval for the Top-1 difference, and the prediction flip rate.
 *
 * Correctness arrays hold one entry per image; any truthy / non-zero entry
 * (1, `true`) counts as correct, anything else (0, `false`, NaN) as wrong.
 * The bootstrap also accepts fractions in [0, 1]: per-image correctness
 * averaged over several calibration seeds.
 * Every function here is pure: no I/O, and randomness only from a seeded
 * {@link Rng}, so the same inputs and seed always give the same result.
 *
 * @module
 */

import { Rng } from "../core/rng.ts";
import { quantileSorted } from "../core/quantile.ts";

/** Per-image correctness: 1 / `true` = correct, 0 / `false` = wrong. */
export type Correctness = ArrayLike<number | boolean>;

/** Joint correctness counts of two methods over the same images. */
export interface PairedCounts {
  /** Number of images. */
  n: number;
  /** Images both methods got right. */
  both: number;
  /** Images only method A got right. */
  onlyA: number;
  /** Images only method B got right. */
  onlyB: number;
  /** Images both methods got wrong. */
  neither: number;
}

/** Options of {@link pairedBootstrap}. */
export interface BootstrapOptions {
  /** Number of bootstrap resamples (a positive integer). */
  resamples: number;
  /** Seed of the {@link Rng} that draws the resamples. */
  seed: number;
  /** Two-sided confidence level in (0, 1); default 0.95. */
  level?: number;
}

/** Result of {@link pairedBootstrap}; all differences in percentage points. */
export interface BootstrapResult {
  /** Observed Top-1(a) - Top-1(b), in percentage points. */
  diff: number;
  /** Lower end of the percentile interval, in percentage points. */
  lo: number;
  /** Upper end of the percentile interval, in percentage points. */
  hi: number;
  /** Number of resamples used. */
  resamples: number;
  /** Seed used. */
  seed: number;
}

function checkSameLength(a: ArrayLike<unknown>, b: ArrayLike<unknown>, what: string): number {
  if (a.length !== b.length) {
    throw new Error(`${what}: length mismatch (${a.length} vs ${b.length})`);
  }
  return a.length;
}

/**
 * Joint correctness counts of methods A and B on the same images.
 *
 * @param a per-image correctness of method A
 * @param b per-image correctness of method B, same length and image order as `a`
 * @returns the 2x2 table as `{ n, both, onlyA, onlyB, neither }`
 * @throws {Error} when the lengths differ
 */
export function pairedCounts(a: Correctness, b: Correctness): PairedCounts {
  const n = checkSameLength(a, b, "pairedCounts");
  let both = 0;
  let onlyA = 0;
  let onlyB = 0;
  for (let i = 0; i < n; i++) {
    const ca = a[i] ? 1 : 0;
    const cb = b[i] ? 1 : 0;
    if (ca && cb) both++;
    else if (ca) onlyA++;
    else if (cb) onlyB++;
  }
  return { n, both, onlyA, onlyB, neither: n - both - onlyA - onlyB };
}

// ---------------------------------------------------------------------------
// Binomial log-probabilities (Loader's saddle-point method, as in R's dbinom).

const LN_2PI = Math.log(2 * Math.PI);

/** Exact ln(k!) for small k by direct summation (accurate to a few ulps). */
const SMALL_LN_FACT: Float64Array = (() => {
  const t = new Float64Array(16);
  for (let k = 2; k < 16; k++) t[k] = t[k - 1] + Math.log(k);
  return t;
})();

/** stirlerr(n) = ln(n!) - ln(sqrt(2 pi n) (n / e)^n), for integer n >= 1. */
function stirlerr(n: number): number {
  if (n < 16) return SMALL_LN_FACT[n] - (0.5 * (LN_2PI + Math.log(n)) + n * Math.log(n) - n);
  const S0 = 1 / 12, S1 = 1 / 360, S2 = 1 / 1260, S3 = 1 / 1680, S4 = 1 / 1188;
  const nn = n * n;
  return (S0 - (S1 - (S2 - (S3 - S4 / nn) / nn) / nn) / nn) / n;
}

/** bd0(x, m) = x ln(x / m) + m - x, computed without cancellation when x ~ m. */
function bd0(x: number, m: number): number {
  if (Math.abs(x - m) < 0.1 * (x + m)) {
    let v = (x - m) / (x + m);
    let s = (x - m) * v;
    let ej = 2 * x * v;
    v *= v;
    for (let j = 1; j < 1000; j++) {
      ej *= v;
      const s1 = s + ej / (2 * j + 1);
      if (s1 === s) return s1;
      s = s1;
    }
    return s;
  }
  return x * Math.log(x / m) + m - x;
}

/** ln P(X = k) for X ~ Binomial(n, 1/2), 0 <= k <= n, integers. */
function logBinomHalfPmf(k: number, n: number): number {
  if (k === 0 || k === n) return -n * Math.LN2;
  const m = n / 2;
  const lc = stirlerr(n) - stirlerr(k) - stirlerr(n - k) - bd0(k, m) - bd0(n - k, m);
  return lc + 0.5 * (Math.log(n) - LN_2PI - Math.log(k) - Math.log(n - k));
}

function checkCount(x: number, name: string): void {
  if (!Number.isSafeInteger(x) || x < 0) {
    throw new Error(`mcnemarExact: ${name} must be a non-negative integer, got ${x}`);
  }
}

/**
 * Exact two-sided McNemar test on the discordant counts: a binomial test of
 * `k = min(onlyA, onlyB)` under Binomial(onlyA + onlyB, 1/2),
 * `p = min(1, 2 * P(X <= k))`.
 *
 * The lower tail is computed as `P(X = k) * sum_i P(X = i) / P(X = k)`, with
 * `ln P(X = k)` from Loader's saddle-point formula and the ratios from the
 * pmf recurrence, so it neither overflows nor returns NaN for any count;
 * results below ~1e-308 underflow to 0.
 *
 * @param onlyA images only method A got right
 * @param onlyB images only method B got right
 * @returns the p-value in [0, 1]; 1 when there are no discordant images
 * @throws {Error} when a count is not a non-negative integer
 */
export function mcnemarExact(onlyA: number, onlyB: number): number {
  checkCount(onlyA, "onlyA");
  checkCount(onlyB, "onlyB");
  const n = onlyA + onlyB;
  if (n === 0) return 1;
  const k = Math.min(onlyA, onlyB);
  if (2 * k >= n - 1) {
    // k >= (n - 1) / 2: the lower tail holds at least half the mass.
    return 1;
  }
  // Sum P(X = i) / P(X = k) for i = k, k-1, ..., 0; the ratios shrink (k < n/2).
  let ratio = 1;
  let sum = 1;
  for (let i = k; i > 0; i--) {
    ratio *= i / (n - i + 1);
    sum += ratio;
    if (ratio < sum * 1e-17) break;
  }
  const p = 2 * Math.exp(logBinomHalfPmf(k, n) + Math.log(sum));
  return Math.min(1, p);
}

// ---------------------------------------------------------------------------
// Paired bootstrap.

/** Correctness of one image as a number in [0, 1]: booleans and 0/1, or a seed-averaged fraction. */
function score(v: number | boolean): number {
  if (typeof v === "boolean") return v ? 1 : 0;
  return Number.isFinite(v) ? Math.min(1, Math.max(0, v)) : 0;
}

/**
 * Paired bootstrap interval for Top-1(a) - Top-1(b), in percentage points.
 *
 * Each resample draws `n` image indices with replacement (`rng.int(n)` from
 * `new Rng(seed)`, so the same seed always gives the same interval) and takes
 * the mean per-image difference of correctness times 100. `lo` / `hi` are the
 * `(1 - level) / 2` and `(1 + level) / 2` percentiles of the resampled
 * differences, interpolating linearly between order statistics.
 *
 * @param a per-image correctness of method A
 * @param b per-image correctness of method B, same length and image order as `a`
 * @param opts resample count, seed and confidence level (default 0.95)
 * @returns the observed difference and its percentile interval
 * @throws {Error} on a length mismatch, no images, or invalid options
 */
export function pairedBootstrap(
  a: Correctness,
  b: Correctness,
  opts: BootstrapOptions,
): BootstrapResult {
  const n = checkSameLength(a, b, "pairedBootstrap");
  if (n === 0) throw new Error("pairedBootstrap: no images");
  const { resamples, seed } = opts;
  const level = opts.level ?? 0.95;
  if (!Number.isSafeInteger(resamples) || resamples < 1) {
    throw new Error(`pairedBootstrap: resamples must be a positive integer, got ${resamples}`);
  }
  if (!Number.isFinite(seed)) throw new Error(`pairedBootstrap: invalid seed ${seed}`);
  if (!(level > 0 && level < 1)) {
    throw new Error(`pairedBootstrap: level must lie in (0, 1), got ${level}`);
  }

  // Per-image difference: in {-1, 0, 1} for 0/1 correctness, a fraction when
  // correctness was averaged over calibration seeds. Only non-zero images matter.
  const d = new Float64Array(n);
  let total = 0;
  let discordant = 0;
  for (let i = 0; i < n; i++) {
    const v = score(a[i]) - score(b[i]);
    d[i] = v;
    total += v;
    if (v !== 0) discordant++;
  }
  const diff = (100 * total) / n;

  const sums = new Float64Array(resamples);
  if (discordant > 0) {
    const rng = new Rng(seed);
    for (let r = 0; r < resamples; r++) {
      let s = 0;
      for (let j = 0; j < n; j++) s += d[rng.int(n)];
      sums[r] = s;
    }
  }
  // With no discordant image every resample difference is exactly 0.
  sums.sort();
  const lo = (100 * quantileSorted(sums, (1 - level) / 2)) / n;
  const hi = (100 * quantileSorted(sums, (1 + level) / 2)) / n;
  return { diff, lo, hi, resamples, seed };
}

/**
 * Share of images whose predicted class differs between two methods.
 *
 * @param predsA per-image predicted class of method A
 * @param predsB per-image predicted class of method B, same length and order
 * @returns the flip rate in [0, 1]
 * @throws {Error} on a length mismatch or no images
 */
export function flipRate(predsA: ArrayLike<number>, predsB: ArrayLike<number>): number {
  const n = checkSameLength(predsA, predsB, "flipRate");
  if (n === 0) throw new Error("flipRate: no images");
  let flips = 0;
  for (let i = 0; i < n; i++) if (predsA[i] !== predsB[i]) flips++;
  return flips / n;
}

/**
 * Whether a confidence interval for a difference excludes 0.
 *
 * @param ci the interval, e.g. from {@link pairedBootstrap}
 * @returns true when `lo > 0` or `hi < 0`
 */
export function isDifferent(ci: { lo: number; hi: number }): boolean {
  return ci.lo > 0 || ci.hi < 0;
}
