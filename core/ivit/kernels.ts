/**
 * The integer semantics of vitq's I-ViT graph, as TypeScript references.
 *
 * The integer ONNX graph (see `emit.ts`) computes exactly these functions in
 * int32 arithmetic; `simulate.ts` runs them in TypeScript. Where a kernel of
 * `core/ivit/reference.ts` (the float64-exact reference of the I-ViT paper code)
 * already fits in int32 it is used as is (Shiftmax, ShiftGELU, per-channel
 * weight quantization, the activation observers). Two kernels depart from it,
 * because their intermediates do not fit in int32:
 *
 * 1. **Dyadic requantization** ({@link dyadic15}, {@link requantValue}).
 *    `core/ivit/reference.ts` uses a 31-bit multiplier, `round_half_even(z·m/2^k)`
 *    with m in [2^30, 2^31]: `z·m` needs up to 62 bits. Here the multiplier
 *    has 15 bits, m = round_half_up(mantissa·2^15) in [2^14, 2^15] and
 *    k = 15 − exponent, and the rounding is half up:
 *    `q = floor(((z + add)·m + 2^(k−1)) / 2^k)`, then clamped to b bits.
 *    The ratio is off by at most 2^-15 relative; ties round up instead of to
 *    even. The graph evaluates this exactly for every int32 z by splitting z
 *    into 15-bit halves where needed (see {@link planRequant}); `add` is a
 *    per-channel integer (a folded bias or zero point) that never has to fit
 *    in int32. Where a clamped requantization would need the split, the
 *    lowering first tries a 14-, 13- or 12-bit multiplier ({@link dyadicBits};
 *    relative error ≤ 2^-12, at most 0.03 of a step at the end of an 8-bit
 *    range) that lets `z·m` stay in int32 once z is clipped to the saturation
 *    bounds, and keeps it when it does; the program records the multiplier of
 *    every requantization, so the reference uses the same.
 * 2. **I-LayerNorm's Σy²** ({@link iLayerNormInt32}). With 16-bit inputs
 *    y² reaches 2^32. Each y is first floored by a static right shift `a`
 *    (the smallest with C·max|y >> a|² < 2^31), the integer square root runs
 *    on the shifted sum from 2^(16−a), and the output is
 *    `floor(sign(γ)·(y >> a)·floor((2^31−1)/k)/2)`. With `a = 0` (8-bit
 *    inputs) and γ > 0 this is exactly `iLayerNorm` of `core/ivit/reference.ts`.
 *
 * @module
 */
import { frexp, INT31_MAX } from "./reference.ts";
import { VitqError } from "../errors.ts";

/** Largest int32. */
export const INT32_MAX = 2147483647;
/** Smallest int32. */
export const INT32_MIN: number = -2147483648;
/** Largest `k` a dyadic multiplier keeps; smaller ratios lose multiplier bits. */
export const MAX_SHIFT = 45;
/** Bits of the dyadic multiplier. */
export const MULT_BITS = 15;

/** A dyadic ratio r ≈ m / 2^k with a 15-bit multiplier. */
export interface Dyadic {
  /** Multiplier, 0..2^15. */
  m: number;
  /** Shift, 1..45. */
  k: number;
}

/**
 * Dyadic form of a positive ratio with a 15-bit multiplier:
 * `frexp(r) = (mantissa, e)`, `m = round_half_up(mantissa·2^15)` (so
 * m ∈ [2^14, 2^15]), `k = 15 − e`. When k would pass 45 (r < 2^-30) the
 * multiplier is rounded (half up) to fewer bits so that k = 45; it can reach 0
 * for r < 2^-46. Ratios ≥ 2^14 (k < 1) are rejected.
 */
export function dyadic15(ratio: number): Dyadic {
  return dyadicBits(ratio, MULT_BITS);
}

/** {@link dyadic15} with a `bits`-bit multiplier (1..15): m ∈ [2^(bits−1), 2^bits], k = bits − e. */
export function dyadicBits(ratio: number, bits: number): Dyadic {
  if (!(ratio > 0) || !Number.isFinite(ratio)) {
    throw new VitqError(`I-ViT: requantization ratio ${ratio} is not a positive finite number`);
  }
  const { mantissa, exponent } = frexp(ratio);
  let m = Math.floor(mantissa * 2 ** bits + 0.5); // exact: mantissa·2^bits < 2^15
  let k = bits - exponent;
  if (k > MAX_SHIFT) {
    m = Math.floor(m / 2 ** (k - MAX_SHIFT) + 0.5);
    k = MAX_SHIFT;
  }
  if (k < 1) {
    throw new VitqError(`I-ViT: requantization ratio ${ratio} ≥ 2^${bits - 1} cannot be lowered`);
  }
  return { m, k };
}

/** Per-channel constants of a requantization: q = ch + floor((z·m + cl) / 2^k). */
export interface RequantConst {
  /** Multiplier. */
  m: number;
  /** Shift. */
  k: number;
  /** floor(C / 2^k) with C = add·m + 2^(k−1) (may be large). */
  ch: bigint;
  /** C − ch·2^k, in [0, 2^k). */
  cl: bigint;
}

/** floor(a / b) for BigInt, b > 0. */
export function floorDivBig(a: bigint, b: bigint): bigint {
  const q = a / b;
  return q * b > a ? q - 1n : q;
}

/** The constants of {@link requantValue} for one channel. */
export function requantConst(d: Dyadic, add: bigint): RequantConst {
  const c = add * BigInt(d.m) + (1n << BigInt(d.k - 1));
  const p = 1n << BigInt(d.k);
  const ch = floorDivBig(c, p);
  return { m: d.m, k: d.k, ch, cl: c - ch * p };
}

/**
 * One requantized value: `floor(((z + add)·m + 2^(k−1)) / 2^k)` (round half
 * up of (z + add)·m/2^k), clamped to signed `bits` when given. Exact for any
 * safe-integer z (float64 while the product stays below 2^52, BigInt beyond).
 */
export function requantValue(z: number, c: RequantConst, bits: number | null): number {
  let q: number;
  const zm = z * c.m;
  if (Math.abs(zm) < 2 ** 52 && c.cl < 2n ** 52n && c.ch < 2n ** 52n && c.ch > -(2n ** 52n)) {
    q = Math.floor((zm + Number(c.cl)) / 2 ** c.k) + Number(c.ch);
  } else {
    const t = BigInt(z) * BigInt(c.m) + c.cl;
    const big = floorDivBig(t, 1n << BigInt(c.k)) + c.ch;
    if (bits !== null) {
      const hi = 2n ** BigInt(bits - 1) - 1n;
      const lo = -(2n ** BigInt(bits - 1));
      return Number(big < lo ? lo : big > hi ? hi : big);
    }
    q = Number(big);
  }
  if (bits !== null) {
    const hi = 2 ** (bits - 1) - 1;
    const lo = -(2 ** (bits - 1));
    q = q < lo ? lo : q > hi ? hi : q;
  }
  return q + 0;
}

/** How the graph evaluates one requantization without leaving int32 (see {@link planRequant}). */
export interface RequantPlan {
  /** Per-channel constants. */
  consts: RequantConst[];
  /** Per-channel split position S: z = zh·2^S + zl with zl in [0, 2^S); 0 means no split. */
  split: number[];
  /** Per-channel clip of z to [lo, hi] before the product (only with a clamp), or null. */
  clip: { lo: number[]; hi: number[] } | null;
  /** Per-channel ch clamped to the int32-safe range (equal to ch where it matters). */
  chClamped: number[];
  /**
   * Offsets that make every division act on a non-negative dividend (so ONNX's
   * truncating Div is a floor and no Mod is needed), or null when one does not
   * fit in int32 (the graph then floors with Mod): `z` is added to the input
   * before the split (a multiple of 2^S), `h` to H (a multiple of 2^(k−S)).
   */
  offsets: { z: number[]; h: number[] } | null;
  /** Whether the result still needs the clamp to `bits` (not when the clip already bounds it). */
  finalClamp: boolean;
  /** Range of the clamped result over all channels for z in the input range. */
  outLo: number;
  /** Upper end of that range. */
  outHi: number;
  /** Lower end of the input range the plan was made for. */
  zlo: number;
  /** Upper end of the input range. */
  zhi: number;
}

function fits(v: bigint): boolean {
  return v >= BigInt(INT32_MIN) && v <= BigInt(INT32_MAX);
}

/**
 * Range of `F = floor(H / 2^(k−s))` when the graph's requantization of one
 * channel runs with split position `s` for z in [zlo, zhi], or undefined when
 * an intermediate can leave int32: `zl = z mod 2^s`, `zh = (z − zl)/2^s`,
 * `P = zh·m`, `Q = zl·m + (cl mod 2^s)`, `H = P + floor(Q/2^s) + floor(cl/2^s)`.
 */
function splitRange(
  c: RequantConst,
  s: number,
  zlo: number,
  zhi: number,
): SplitRange | undefined {
  const m = BigInt(c.m);
  const ps = 1n << BigInt(s);
  const d = c.k - s;
  if (d < 0 || d > 30) return undefined;
  const zhLo = floorDivBig(BigInt(zlo), ps), zhHi = floorDivBig(BigInt(zhi), ps);
  const pLo = zhLo * m, pHi = zhHi * m;
  if (!fits(pLo) || !fits(pHi)) return undefined;
  const cll = c.cl % ps, clh = c.cl / ps;
  if (!fits(clh)) return undefined;
  const qMax = (ps - 1n) * m + cll;
  if (!fits(qMax)) return undefined;
  const partLo = pLo, partHi = pHi + qMax / ps;
  if (!fits(partHi)) return undefined;
  const hLo = partLo + clh, hHi = partHi + clh;
  if (!fits(hLo) || !fits(hHi)) return undefined;
  const pd = 1n << BigInt(d);
  return { fLo: floorDivBig(hLo, pd), fHi: floorDivBig(hHi, pd), hLo, hHi, qsMax: qMax / ps };
}

interface SplitRange {
  fLo: bigint;
  fHi: bigint;
  /** Range of H = floor((z·m + cl) / 2^S). */
  hLo: bigint;
  hHi: bigint;
  /** Largest floor(Q / 2^S). */
  qsMax: bigint;
}

/**
 * Offsets for the Mod-free evaluation of one channel (see
 * {@link RequantPlan.offsets}), or undefined when an intermediate would leave
 * int32: zOff = z + oz ∈ [0, 2^31), zh' = zOff / 2^S, zl = zOff − zh'·2^S,
 * H' = zh'·m + floor((zl·m + cll)/2^S), U = H' + (clh − (oz/2^S)·m + oh) ∈
 * [0, 2^31), q = U / 2^(k−S) + (ch − oh/2^(k−S)).
 */
function offsetsFor(
  c: RequantConst,
  s: number,
  zlo: number,
  zhi: number,
  r: SplitRange,
  ch: bigint,
): { oz: bigint; oh: bigint } | undefined {
  const ps = 1n << BigInt(s);
  const pd = 1n << BigInt(c.k - s);
  const m = BigInt(c.m);
  const lo = BigInt(zlo), hi = BigInt(zhi);
  const oz = s === 0 || lo >= 0n ? 0n : -floorDivBig(lo, ps) * ps;
  if (!fits(hi + oz)) return undefined;
  const hpMax = ((hi + oz) / ps) * m + r.qsMax;
  if (!fits(hpMax) || !fits(((hi + oz) / ps) * m)) return undefined;
  const oh = r.hLo >= 0n ? 0n : -floorDivBig(r.hLo, pd) * pd;
  if (!fits(r.hHi + oh)) return undefined;
  const k2 = c.cl / ps - (oz / ps) * m + oh;
  if (!fits(k2) || !fits(hpMax + k2)) return undefined;
  const q0 = ch - oh / pd;
  if (!fits(q0) || !fits((r.hHi + oh) / pd + q0)) return undefined;
  // the direct form adds cl + oh in one constant
  if (s === 0 && !fits(c.cl + oh)) return undefined;
  return { oz, oh };
}

/**
 * Smallest z with clamp(q(z)) at the top of the b-bit range and largest z at
 * its bottom: clipping z to [zLo, zHi] leaves the clamped result unchanged
 * (q is non-decreasing in z for m ≥ 0).
 */
export function saturation(c: RequantConst, bits: number): { zLo: bigint; zHi: bigint } {
  const qmax = 2n ** BigInt(bits - 1) - 1n, qmin = -(2n ** BigInt(bits - 1));
  const p = 1n << BigInt(c.k);
  const m = BigInt(c.m);
  if (m === 0n) return { zLo: BigInt(INT32_MIN), zHi: BigInt(INT32_MAX) };
  // q(z) ≥ qmax ⟺ z·m + cl ≥ (qmax − ch)·2^k
  const zHi = -floorDivBig(-((qmax - c.ch) * p - c.cl), m);
  // q(z) ≤ qmin ⟺ z·m + cl < (qmin − ch + 1)·2^k
  const zLo = -floorDivBig(-((qmin - c.ch + 1n) * p - c.cl), m) - 1n;
  return { zLo, zHi };
}

/** One channel's choice: split position, (clamped) ch, offsets if they fit. */
interface ChannelPlan {
  s: number;
  ch: bigint;
  off?: { oz: bigint; oh: bigint };
}

/**
 * Plan the int32 evaluation of a requantization over input range [zlo, zhi]
 * (int32). Modes, first that fits for every channel wins (Mod-free ones
 * first): (A) `z·m + cl` directly; (B) z clipped to the saturation bounds of
 * the clamp (the clamped result cannot change), then directly; (C) z split at
 * S = min(k, 15) bits where needed; (D) clipped and split. With a clip and a
 * ratio ≤ 1 on every channel the result is already in range, so the final
 * clamp is dropped (`finalClamp`). Throws a VitqError naming `where` when
 * nothing fits (not met by ViT-sized models).
 */
export function planRequant(
  dy: Dyadic[],
  add: bigint[] | null,
  bits: number | null,
  zlo: number,
  zhi: number,
  where: string,
): RequantPlan {
  const consts = dy.map((d, i) => requantConst(d, add ? add[i] : 0n));
  const qmax = bits === null ? 0n : 2n ** BigInt(bits - 1) - 1n;
  const qmin = bits === null ? 0n : -(2n ** BigInt(bits - 1));
  // per-channel clip range at the saturation bounds (degenerate: the whole
  // input range saturates, so the clipped value may land beyond the bound)
  let degenerate = false;
  const clipped = consts.map((c) => {
    if (bits === null) return [zlo, zhi];
    const sat = saturation(c, bits);
    const l = Number(sat.zLo > BigInt(zlo) ? sat.zLo : BigInt(zlo));
    const h = Number(sat.zHi < BigInt(zhi) ? sat.zHi : BigInt(zhi));
    if (l > h) degenerate = true;
    return [Math.min(l, h), h];
  });
  const channel = (
    c: RequantConst,
    l: number,
    h: number,
    splitAllowed: boolean,
  ): ChannelPlan | undefined => {
    for (const s of splitAllowed ? [0, Math.min(c.k, MULT_BITS)] : [0]) {
      const r = splitRange(c, s, l, h);
      if (!r) continue;
      // q = F + ch: with a clamp, ch may move toward the range as long as the
      // clamped result cannot change (F + ch stays saturated on the same side)
      let ch = c.ch;
      if (bits !== null) {
        if (ch > qmax - r.fLo) ch = qmax - r.fLo;
        if (ch < qmin - r.fHi) ch = qmin - r.fHi;
      }
      if (!fits(ch) || !fits(r.fLo + ch) || !fits(r.fHi + ch)) continue;
      return { s, ch, off: offsetsFor(c, s, l, h, r, ch) };
    }
    return undefined;
  };
  const modes: [boolean, boolean][] = [[false, false], [true, false], [false, true], [true, true]];
  let chosen: { plans: ChannelPlan[]; clip: boolean } | undefined;
  let fallback: typeof chosen;
  for (const [clip, splitAllowed] of modes) {
    if (clip && bits === null) continue;
    const plans = consts.map((c, i) =>
      channel(c, clip ? clipped[i][0] : zlo, clip ? clipped[i][1] : zhi, splitAllowed)
    );
    if (plans.some((p) => !p)) continue;
    const ok = plans as ChannelPlan[];
    if (ok.every((p) => p.off)) {
      chosen = { plans: ok, clip };
      break;
    }
    fallback ??= { plans: ok, clip };
  }
  chosen ??= fallback;
  if (!chosen) {
    throw new VitqError(
      `I-ViT: requantization at ${where} (m ${consts[0].m}, k ${
        consts[0].k
      }) cannot be evaluated in int32 for inputs in [${zlo}, ${zhi}]`,
    );
  }
  const { plans, clip } = chosen;
  const offOk = plans.every((p) => p.off);
  let outLo = Infinity, outHi = -Infinity;
  consts.forEach((c, i) => {
    const [l, h] = clip ? clipped[i] : [zlo, zhi];
    outLo = Math.min(outLo, requantValue(l, c, bits));
    outHi = Math.max(outHi, requantValue(h, c, bits));
  });
  return {
    consts,
    split: plans.map((p) => p.s),
    clip: clip ? { lo: clipped.map((r) => r[0]), hi: clipped.map((r) => r[1]) } : null,
    chClamped: plans.map((p) => Number(p.ch)),
    offsets: offOk
      ? { z: plans.map((p) => Number(p.off!.oz)), h: plans.map((p) => Number(p.off!.oh)) }
      : null,
    finalClamp: bits !== null && !(clip && !degenerate && consts.every((c) => c.m <= 2 ** c.k)),
    outLo,
    outHi,
    zlo,
    zhi,
  };
}

/**
 * A clamped requantization in the fewest int32 passes: `Clip` z (one range
 * for all channels, or per channel with Max/Min, or none), `t = z·m + A`,
 * `Div(t, 2^k)`, `Clip(·, 0, hi)`, plus `shift` when the output range starts
 * below 0. The addend A = C + (zp − base)·2^k moves the result so that its
 * range starts at 0 (base = qmin + zp when that is negative, else 0): ONNX
 * Div truncates toward zero, which differs from the floor only on a negative
 * t, and there both the floor (≤ −1) and the truncation (≤ 0) clamp to 0.
 */
export interface TruncPlan {
  /** Clip of z before the product: one range, per-channel ranges, or null (none needed). */
  clip: { lo: number; hi: number } | { lo: number[]; hi: number[] } | null;
  /** Per-channel multiplier m. */
  m: number[];
  /** Per-channel addend A (int32). */
  add: number[];
  /** Per-channel divisor 2^k. */
  div: number[];
  /** Upper clamp of the quotient (the clamp's lower end is 0). */
  hi: number;
  /**
   * Whether the quotient needs its clamp to [0, hi]: false when every
   * channel's (clipped) input range already maps into it, i.e. the clip sits
   * at saturation bounds the channel reaches exactly (ratio ≤ 1); the
   * dividend is then non-negative too, so truncation is floor.
   */
  clamp: boolean;
  /** Added after the clamp: the output's lowest code when negative, else 0. */
  shift: number;
}

/**
 * {@link TruncPlan} of a clamped (`bits` not null) requantization with
 * output zero point `outZp` over the plan's input range, or null when some
 * `z·m + A` leaves int32 even with z clipped to the saturation bounds. The
 * shared clip range is [min over channels of the lower saturation bound,
 * max of the upper] (clipping beyond a channel's own bound cannot change its
 * clamped result, since q is non-decreasing in z); per-channel bounds are the
 * fallback when the shared range overflows.
 */
export function planTruncRequant(plan: RequantPlan, bits: number, outZp: number): TruncPlan | null {
  const qmin = -(2 ** (bits - 1)), qmax = 2 ** (bits - 1) - 1;
  const base = Math.min(0, qmin + outZp);
  const hi = qmax + outZp - base;
  const { zlo, zhi, consts } = plan;
  const adds = consts.map((c) =>
    BigInt(c.ch) * (1n << BigInt(c.k)) + c.cl + BigInt(outZp - base) * (1n << BigInt(c.k))
  );
  const ok = (i: number, l: number, h: number) => {
    const m = BigInt(consts[i].m);
    return l <= h && fits(BigInt(l) * m + adds[i]) && fits(BigInt(h) * m + adds[i]);
  };
  if (!adds.every((a) => fits(a)) || consts.some((c) => c.k > 30)) return null;
  const sats = consts.map((c) => saturation(c, bits));
  const lows = sats.map((s) => Math.max(zlo, Number(s.zLo < BigInt(zlo) ? BigInt(zlo) : s.zLo)));
  const highs = sats.map((s) => Math.min(zhi, Number(s.zHi > BigInt(zhi) ? BigInt(zhi) : s.zHi)));
  const rest = {
    m: consts.map((c) => c.m),
    add: adds.map(Number),
    div: consts.map((c) => 2 ** c.k),
    hi,
    shift: base,
  };
  // unclamped q(z) of channel i (floor), in range for every channel's [l_i, h_i]
  const q = (i: number, z: number) => {
    const c = consts[i];
    return floorDivBig(BigInt(z) * BigInt(c.m) + c.cl, 1n << BigInt(c.k)) + BigInt(c.ch);
  };
  const clamp = (l: (i: number) => number, h: (i: number) => number) =>
    !consts.every((_, i) => q(i, l(i)) >= BigInt(qmin) && q(i, h(i)) <= BigInt(qmax));
  if (consts.every((_, i) => ok(i, zlo, zhi))) {
    return { clip: null, ...rest, clamp: clamp(() => zlo, () => zhi) };
  }
  const lo1 = Math.min(...lows), hi1 = Math.max(...highs);
  // one range: the clamp stays unless it is every channel's own range
  const own = (i: number) => lows[i] === lo1 && highs[i] === hi1;
  if (consts.every((_, i) => ok(i, lo1, hi1))) {
    // even where per-channel bounds would drop the clamp: ONNX Runtime's broadcasting Max and
    // Min cost more than two scalar Clips
    const cl = !consts.every((_, i) => own(i)) || clamp(() => lo1, () => hi1);
    return { clip: { lo: lo1, hi: hi1 }, ...rest, clamp: cl };
  }
  if (consts.every((_, i) => ok(i, lows[i], highs[i]))) {
    return {
      clip: { lo: lows, hi: highs },
      ...rest,
      clamp: clamp((i) => lows[i], (i) => highs[i]),
    };
  }
  return null;
}

// ------------------------------------------------------------ I-LayerNorm

/**
 * The static right shift of I-LayerNorm's Σy²: the smallest `a` ≥ 0 with
 * C·ceil(yMax/2^a)² ≤ 2^31 − 1, where yMax bounds |x − mean|.
 */
export function layerNormPrescale(channels: number, yMax: number): number {
  for (let a = 0; a < 31; a++) {
    const b = Math.ceil(yMax / 2 ** a);
    if (channels * b * b <= INT32_MAX) return a;
  }
  throw new VitqError(`I-ViT: LayerNorm over ${channels} channels cannot be held in int32`);
}

/**
 * Newton start of I-LayerNorm's integer sqrt after a prescale by 2^a:
 * 2^(16−a), at least 1 (I-ViT starts at 2^16). Given the channels and the
 * bound yMax on |x − mean|, lowered to the smallest power of two ≥ the
 * largest possible √V = √C·ceil(yMax/2^a), but not below 2^10: Newton from
 * above halves k per step while k ≫ √V, so ten steps from 2^16 leave the
 * root of a small V (8-bit inputs over few channels, e.g. a Swin
 * patch-embedding LayerNorm) unconverged, and a start ≥ 2^10 keeps k ≥ 1
 * through ten steps even for V = 0. With a = layerNormPrescale(C, yMax) ≥ 1
 * the bound is never below 2^(16−a)/2, so only unprescaled LayerNorms
 * start lower.
 */
export function layerNormStart(a: number, channels?: number, yMax?: number): number {
  let k0 = 2 ** Math.max(0, 16 - a);
  if (channels !== undefined && yMax !== undefined) {
    const bound = Math.max(Math.sqrt(channels) * Math.ceil(yMax / 2 ** a), 2 ** 10);
    while (k0 / 2 >= bound) k0 /= 2;
  }
  return k0;
}

/** round(sum / c), ties to even, for safe integers (c > 0). */
function roundDivHalfEven(sum: number, c: number): number {
  const rem = ((sum % c) + c) % c;
  const q = (sum - rem) / c;
  const t = 2 * rem - c;
  return q + (t > 0 || (t === 0 && ((q % 2) + 2) % 2 === 1) ? 1 : 0);
}

/**
 * I-LayerNorm without γ/β in int32 arithmetic, per row of `channels`:
 * `mean = round_half_even(Σx/C)`, `y = x − mean`, `y' = floor(y / 2^a)`,
 * `V = Σ y'²` (must be < 2^31), `k` = `steps` Newton steps
 * `k ← floor((k + floor(V/k))/2)` from `k0`, output
 * `floor(sign_c·y'·floor((2^31−1)/k) / 2)` in [−2^30, 2^30 − 1]. `sign`
 * (±1 per channel, default all +1) carries the sign of γ. With a = 0,
 * k0 = 2^16 and positive signs this is `iLayerNorm` of `core/ivit/reference.ts`
 * (γ = 1, β = 0); a negative sign floors −y'·f instead of negating floor(y'·f),
 * which can differ by one unit (2^-30 of the normalized value).
 */
export function iLayerNormInt32(
  x: ArrayLike<number>,
  channels: number,
  a: number,
  k0: number,
  steps = 10,
  sign: ArrayLike<number> | null = null,
): Int32Array {
  const C = channels;
  if (x.length % C !== 0) throw new RangeError(`iLayerNormInt32: ${x.length} % ${C} != 0`);
  const out = new Int32Array(x.length);
  const yp = new Float64Array(C);
  const div = 2 ** a;
  for (let base = 0; base < x.length; base += C) {
    let sum = 0;
    for (let j = 0; j < C; j++) sum += x[base + j];
    const mean = roundDivHalfEven(sum, C);
    let v = 0;
    for (let j = 0; j < C; j++) {
      const y = Math.floor((x[base + j] - mean) / div);
      yp[j] = y;
      v += y * y;
    }
    if (v > INT32_MAX) throw new RangeError(`iLayerNormInt32: Σy'² = ${v} exceeds int32`);
    let k = k0;
    for (let i = 0; i < steps; i++) {
      k = Math.floor((k + Math.floor(v / k)) / 2);
      if (k === 0) throw new RangeError("iLayerNormInt32: k reached 0");
    }
    const f = Math.floor(INT31_MAX / k);
    for (let j = 0; j < C; j++) {
      out[base + j] = Math.floor(((sign ? sign[j] : 1) * yp[j] * f) / 2);
    }
  }
  return out;
}
