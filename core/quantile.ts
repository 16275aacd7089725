/**
 * The one type-7 quantile (Hyndman and Fan; numpy's and R's default): linear
 * interpolation between order statistics at rank `q·(n-1)`, in float64. Used
 * by the bench (speed medians, bootstrap intervals) and the baselines' weight
 * percentile. (`quantileLinear` in `quant/outlier.ts` is the same rule in
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
