/**
 * Subset rules over a labelled list of images, shared by every dataset:
 * all images, the first N per class, N per class by seeded draw, or a
 * stratified total by seeded draw. Results are index lists in dataset order.
 *
 * @module
 */
import { Rng } from "../core/rng.ts";
import { VitqError } from "../core/errors.ts";
import { sha256Hex } from "../core/hash.ts";

/** How to choose evaluation images. */
export type SubsetRule =
  | { rule: "all" }
  | { rule: "first"; perClass: number }
  | { rule: "random"; perClass: number; seed: number }
  | { rule: "stratified"; total: number; seed: number };

/** A short text form of a rule, for tables and the database. */
export function describeRule(r: SubsetRule): string {
  switch (r.rule) {
    case "all":
      return "all";
    case "first":
      return `first ${r.perClass}/class`;
    case "random":
      return `random ${r.perClass}/class seed ${r.seed}`;
    case "stratified":
      return `stratified ${r.total} seed ${r.seed}`;
  }
}

function byClass(labels: ArrayLike<number>, allowed: number[]): Map<number, number[]> {
  const m = new Map<number, number[]>();
  for (const i of allowed) {
    const c = labels[i];
    const list = m.get(c);
    if (list) list.push(i);
    else m.set(c, [i]);
  }
  return m;
}

/**
 * Apply a subset rule. `allowed` are the candidate indices in dataset order
 * (for example all images minus calibration images); the result is sorted.
 */
export function selectSubset(
  labels: ArrayLike<number>,
  rule: SubsetRule,
  allowed?: number[],
): number[] {
  const cand = allowed ?? Array.from({ length: labels.length }, (_, i) => i);
  const classes = byClass(labels, cand);
  const keys = [...classes.keys()].sort((a, b) => a - b);
  let out: number[] = [];
  switch (rule.rule) {
    case "all":
      out = [...cand];
      break;
    case "first":
      for (const k of keys) out.push(...classes.get(k)!.slice(0, rule.perClass));
      break;
    case "random": {
      const rng = new Rng(rule.seed);
      for (const k of keys) out.push(...rng.shuffle(classes.get(k)!).slice(0, rule.perClass));
      break;
    }
    case "stratified": {
      if (rule.total > cand.length) {
        throw new VitqError(
          `subset: total ${rule.total} exceeds the ${cand.length} available images`,
        );
      }
      // largest-remainder allocation proportional to class sizes
      const sizes = keys.map((k) => classes.get(k)!.length);
      const exact = sizes.map((s) => (s * rule.total) / cand.length);
      const alloc = exact.map(Math.floor);
      let left = rule.total - alloc.reduce((a, b) => a + b, 0);
      const order = exact.map((e, i) => [e - Math.floor(e), i]).sort((a, b) =>
        b[0] - a[0] || a[1] - b[1]
      );
      for (const [, i] of order) {
        if (left-- <= 0) break;
        alloc[i]++;
      }
      const rng = new Rng(rule.seed);
      keys.forEach((k, i) => out.push(...rng.shuffle(classes.get(k)!).slice(0, alloc[i])));
      break;
    }
  }
  return out.sort((a, b) => a - b);
}

/** Draw `size` indices from `pool` by seeded permutation (sorted result). */
export function drawCalibration(pool: number[], size: number, seed: number): number[] {
  if (size > pool.length) {
    throw new VitqError(`calibration: size ${size} exceeds the ${pool.length} images of the pool`);
  }
  return new Rng(seed).shuffle(pool).slice(0, size).sort((a, b) => a - b);
}

/** SHA-256 hex digest of a list of image ids (joined by newlines). */
export function hashIds(ids: string[]): Promise<string> {
  return sha256Hex(ids.join("\n"));
}
