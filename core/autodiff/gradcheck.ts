/**
 * Finite-difference checks of gradient graphs: central differences of the loss
 * output of a session, elementwise or along a direction, and a normwise
 * relative error to compare them with analytic gradients.
 *
 * @module
 */
import type { Session, TensorData } from "../runtime/runtime.ts";
import { VitqError } from "../errors.ts";

/** Float32 feeds of a session. */
export type Feeds = Record<string, TensorData>;

/** Run `session` and return the scalar `lossName` output as a number. */
export async function lossAt(session: Session, feeds: Feeds, lossName: string): Promise<number> {
  const out = await session.run(feeds);
  const l = out[lossName];
  if (!l || l.data.length !== 1) {
    throw new VitqError(`gradcheck: output ${lossName} is not a scalar`);
  }
  return l.data[0];
}

/**
 * Central differences (L(x + h e_i) - L(x - h e_i)) / 2h of the loss with
 * respect to each element `i` of feed `input` (all elements unless `indices`).
 * The perturbed value is rounded to float32, and the actual step taken is used.
 */
export async function finiteDifferences(
  session: Session,
  feeds: Feeds,
  lossName: string,
  input: string,
  h: number,
  indices?: number[],
): Promise<Float64Array> {
  const base = feeds[input];
  if (!base) throw new VitqError(`gradcheck: no feed named ${input}`);
  const x = base.data.slice();
  const idx = indices ?? Array.from({ length: x.length }, (_, i) => i);
  const out = new Float64Array(idx.length);
  const f = { ...feeds, [input]: { data: x, dims: base.dims } };
  for (let k = 0; k < idx.length; k++) {
    const i = idx[k];
    const x0 = x[i];
    x[i] = x0 + h;
    const xp = x[i];
    const lp = await lossAt(session, f, lossName);
    x[i] = x0 - h;
    const xm = x[i];
    const lm = await lossAt(session, f, lossName);
    x[i] = x0;
    out[k] = (lp - lm) / (xp - xm);
  }
  return out;
}

/**
 * Directional derivative by central differences: (L(x + h d) - L(x - h d)) / 2h,
 * where `direction` gives d for one or more feeds.
 */
export async function directionalDifference(
  session: Session,
  feeds: Feeds,
  lossName: string,
  direction: Record<string, Float32Array>,
  h: number,
): Promise<number> {
  const at = (sign: number) => {
    const f: Feeds = { ...feeds };
    for (const [k, d] of Object.entries(direction)) {
      const b = feeds[k];
      if (!b) throw new VitqError(`gradcheck: no feed named ${k}`);
      const x = new Float32Array(b.data.length);
      for (let i = 0; i < x.length; i++) x[i] = b.data[i] + sign * h * d[i];
      f[k] = { data: x, dims: b.dims };
    }
    return lossAt(session, f, lossName);
  };
  const lp = await at(1), lm = await at(-1);
  return (lp - lm) / (2 * h);
}

/** Dot product in float64. */
export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** Normwise relative error ||a - b|| / max(||a||, ||b||, tiny). */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new VitqError(`gradcheck: lengths ${a.length} != ${b.length}`);
  let d = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    d += (a[i] - b[i]) ** 2;
    na += a[i] ** 2;
    nb += b[i] ** 2;
  }
  return Math.sqrt(d) / Math.max(Math.sqrt(na), Math.sqrt(nb), 1e-30);
}
