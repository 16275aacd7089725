/**
 * The one type-7 quantile (Hyndman and Fan; numpy's and R's default): linear
 * interpolation between order statistics at rank `q·(n-1)`, in float64. Used
 * by the bench (speed medians, bootstrap intervals) and the baselines' weight
 * percentile; {@link medianInterval} gives a median its sign-test interval
 * (paired speed ratios). (`quantileLinear` in `quant/outlier.ts` is the same rule in
 * float32 as torch computes it, for bit-exact parity with reference code.)
 *
 * @module
 */

/** The `q`-quantile (0..1) of ascending `sorted` data. */
export function quantileSorted(sorted: ArrayLike<number>, q: number): number {
  const h = (sorted.length - 1) * q;
  const i = Math.floor(h);
  const f = h - i;
  if (f === 0 || i + 1 >= sorted.length) return sorted[i];
  return sorted[i] + f * (sorted[i + 1] - sorted[i]);
}

/** A distribution-free confidence interval for a median ({@link medianInterval}). */
export interface MedianInterval {
  /** The sample median (type 7). */
  median: number;
  /** Lower end: order statistic x_(k) (1-based). */
  lo: number;
  /** Upper end: order statistic x_(n−k+1). */
  hi: number;
  /** Coverage of [x_(k), x_(n−k+1)] for the population median: 1 − 2·P(Binomial(n, ½) < k). */
  level: number;
}

/**
 * The median of `xs` with the narrowest symmetric order-statistic interval
 * [x_(k), x_(n−k+1)] that covers the population median with probability at
 * least `level` for any continuous distribution (the sign-test interval:
 * coverage 1 − 2·P(Binomial(n, ½) ≤ k − 1)). Undefined when even the full
 * range falls short (n < 6 at the default 0.95: [min, max] covers 1 − 2^(1−n)).
 */
export function medianInterval(xs: readonly number[], level = 0.95): MedianInterval | undefined {
  const n = xs.length;
  if (n === 0 || !(level > 0 && level < 1)) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  // P(B ≤ k − 1) for B ~ Binomial(n, 1/2), from the pmf relative to its centre (no underflow
  // of 2^−n for large n; the far tails may underflow to 0, which they are to double precision)
  const c = Math.floor(n / 2);
  const t = new Float64Array(c + 1);
  t[c] = 1;
  for (let j = c; j > 0; j--) t[j - 1] = (t[j] * j) / (n - j + 1);
  let total = 0;
  for (let j = 0; j <= c; j++) total += 2 * t[j];
  if (n % 2 === 0) total -= t[c];
  let cdf = 0;
  let best: { k: number; cover: number } | undefined;
  for (let k = 1; 2 * k <= n + 1; k++) {
    cdf += t[k - 1] / total;
    const cover = 1 - 2 * cdf;
    if (cover < level) break;
    best = { k, cover };
  }
  if (best === undefined) return undefined;
  return {
    median: quantileSorted(s, 0.5),
    lo: s[best.k - 1],
    hi: s[n - best.k],
    level: best.cover,
  };
}
