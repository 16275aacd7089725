/**
 * Lookup tables that let the integer graph evaluate I-ViT's nonlinear
 * kernels in a few passes instead of a chain of integer ops per element. Each
 * entry is computed by the reference kernel itself (`shiftExp`, `shiftGelu`
 * of `core/ivit/reference.ts`, `requantValue` of `kernels.ts`), so a graph
 * that indexes the table computes exactly what the simulation computes; the
 * tables are integer initializers and the lookups ONNX Gather on int32
 * indices, so the graph stays integer-only.
 *
 * - **ShiftExp of d ≤ 0** ({@link shiftExpTable}): `d + ⌊d/2⌋ − ⌊d/16⌋` is
 *   non-decreasing in d and ShiftExp clamps it at `n·x0`, so e(d) is constant
 *   for every d at or below the largest d that reaches the clamp; the table
 *   covers [dMin, 0] and the graph clips d to dMin first. Shiftmax of any
 *   int32 input (8-bit codes, or Swin's int32 scores plus bias) then needs
 *   one Gather for its exponentials.
 * - **ShiftGELU of b-bit codes** ({@link shiftGeluTable}): the output at an
 *   element depends only on its code x and its row's maximum m (the ShiftExp
 *   of x − m and of −m), so a (2^b)²-entry table indexed by `(m, x)` holds
 *   it; with the per-tensor requantization that follows folded in, the table
 *   holds the requantized codes (uint8 for the next MatMulInteger).
 *
 * @module
 */
import { shiftExp, shiftGelu } from "./reference.ts";
import { type RequantConst, requantValue } from "./kernels.ts";
import { VitqError } from "../errors.ts";

/** Largest table the graph builds (entries). */
export const MAX_TABLE = 1 << 17;

/** A ShiftExp table over d in [dMin, 0]: `values[i]` = e(dMin + i). */
export interface ExpTable {
  /** Smallest tabulated d: e(d) = e(dMin) for every d ≤ dMin. */
  dMin: number;
  /** e(dMin), ..., e(0). */
  values: number[];
}

/**
 * ShiftExp (`shiftExp` of reference.ts at `scale`, `n` fraction bits) of
 * every d in [dMin, 0], where dMin is the largest d ≤ 0 whose
 * `d + ⌊d/2⌋ − ⌊d/16⌋` reaches the clamp `n·x0` (x0 = ⌊−1/scale⌋), or the
 * range's own lower end `lo` when that is higher. Throws when the table
 * would pass {@link MAX_TABLE} entries.
 */
export function shiftExpTable(scale: number, n: number, lo = -Infinity): ExpTable {
  const x0 = Math.floor(-1 / scale);
  const clamp = n * x0;
  let dMin = 0;
  while (dMin > lo && dMin + Math.floor(dMin / 2) - Math.floor(dMin / 16) > clamp) {
    dMin--;
    if (-dMin >= MAX_TABLE) {
      throw new VitqError(`I-ViT: ShiftExp table for scale ${scale} exceeds ${MAX_TABLE} entries`);
    }
  }
  const d = Array.from({ length: 1 - dMin }, (_, i) => dMin + i);
  return { dMin, values: shiftExp(d, scale, n).values };
}

/** Parameters of a ShiftGELU table. */
export interface GeluTableSpec {
  /** Lowest code of the input (before the zero point is removed). */
  lo: number;
  /** Highest code. */
  hi: number;
  /** Zero point of the input codes. */
  xZp: number;
  /** Scale of the input. */
  scale: number;
  /** ShiftExp fraction bits. */
  n: number;
  /** Bits of σ. */
  bits: number;
  /** Requantization folded into the table (per tensor), or null for the int32 ShiftGELU output. */
  requant: { c: RequantConst; bits: number | null; outZp: number } | null;
}

/**
 * Table of ShiftGELU at every code pair: entry `(m − lo)·w + (x − lo)` (w =
 * hi − lo + 1) is the output at code x in a row whose maximum code is m
 * (`shiftGelu` of reference.ts on the row [x − xZp, m − xZp]), requantized
 * when `requant` is given; pairs with x > m cannot occur and hold 0.
 */
export function shiftGeluTable(s: GeluTableSpec): number[] {
  const w = s.hi - s.lo + 1;
  if (w * w > MAX_TABLE) throw new VitqError(`I-ViT: ShiftGELU table of ${w}² entries too large`);
  const out = new Array<number>(w * w).fill(0);
  const row = [0, 0];
  for (let m = 0; m < w; m++) {
    for (let x = 0; x <= m; x++) {
      row[0] = s.lo + x - s.xZp;
      row[1] = s.lo + m - s.xZp;
      const g = shiftGelu(row, 2, s.scale, { bits: s.bits, n: s.n }).values[0];
      out[m * w + x] = s.requant
        ? requantValue(g, s.requant.c, s.requant.bits) + s.requant.outZp
        : g;
    }
  }
  return out;
}
