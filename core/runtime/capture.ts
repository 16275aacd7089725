/**
 * Calibration statistics: stream the calibration images through a capture graph
 * and reduce every requested intermediate value to its absolute maximum and,
 * when asked, exact percentiles of |x| (kept as a streaming top-K, so memory stays
 * small however many images are seen).
 *
 * @module
 */
import type { Graph } from "../onnx/graph.ts";
import { captureGraph, type ImageSource, runBatches, type Runtime } from "./runtime.ts";

/** Reduced statistics of one value over the calibration set. */
export interface ValueStats {
  /** Largest |x| seen. */
  absMax: number;
  /** Number of elements seen. */
  count: number;
  /** Rank (number of dims) of the value. */
  rank: number;
  /**
   * The p-th percentile (0..100) of |x|, linearly interpolated between order
   * statistics as torch.quantile does. Only percentiles at or above the
   * smallest requested one are available.
   */
  percentile(p: number): number;
}

/**
 * The `k` largest values of `a` (in no particular order), by quickselect
 * (Hoare partition, median-of-three pivot); `a` is reordered in place.
 */
export function selectLargest(a: Float32Array, k: number): Float32Array {
  let lo = 0, hi = a.length - 1;
  const target = k - 1; // descending order: position k-1 holds the k-th largest
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const x = a[lo], y = a[mid], z = a[hi];
    const pivot = x > y ? (y > z ? y : x > z ? z : x) : (x > z ? x : y > z ? z : y);
    let i = lo, j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else break;
  }
  return a.subarray(0, k);
}

class TopK {
  top = new Float32Array(0);
  count = 0;
  absMax = 0;
  rank = 0;
  k = 0;
  constructor(private minP: number | undefined) {}

  add(x: Float32Array, rank: number, total: number): void {
    this.rank = rank;
    this.count += x.length;
    for (let i = 0; i < x.length; i++) {
      const a = Math.abs(x[i]);
      if (a > this.absMax) this.absMax = a;
    }
    if (this.minP === undefined) return;
    if (this.k === 0) {
      this.k = Math.min(total, total - Math.floor((this.minP / 100) * (total - 1)) + 1);
    }
    let keep: ArrayLike<number>;
    if (this.top.length >= this.k) {
      const thr = this.top[this.k - 1];
      const pass: number[] = [];
      for (let i = 0; i < x.length; i++) {
        const a = Math.abs(x[i]);
        if (a > thr) pass.push(a);
      }
      keep = pass;
    } else {
      // top not full yet (the first batch): select this batch's k largest in O(n)
      // instead of keeping and sorting every value (bounded memory, same result)
      const abs = new Float32Array(x.length); // a plain loop: TypedArray.from(x, fn) is slow
      for (let i = 0; i < x.length; i++) abs[i] = Math.abs(x[i]);
      keep = abs.length > this.k ? selectLargest(abs, this.k) : abs;
    }
    if (keep.length === 0) return;
    const merged = new Float32Array(this.top.length + keep.length);
    merged.set(this.top);
    merged.set(keep, this.top.length);
    merged.sort().reverse();
    this.top = merged.slice(0, this.k);
  }

  percentile(p: number): number {
    if (p >= 100) return this.absMax;
    if (this.minP === undefined || p < this.minP) {
      throw new Error(`percentile ${p} below the smallest requested (${this.minP})`);
    }
    const n = this.count;
    const pos = (p / 100) * (n - 1);
    const lo = Math.floor(pos), hi = Math.ceil(pos);
    const at = (ascIdx: number) => this.top[n - 1 - ascIdx];
    return at(lo) + (at(hi) - at(lo)) * (pos - lo);
  }
}

/**
 * Collect statistics of `values` (intermediate value names of `graph`) over the
 * calibration images.
 *
 * @param minPercentile smallest percentile that will be asked of the result
 */
export async function collectStats(
  runtime: Runtime,
  graph: Graph,
  values: string[],
  calib: ImageSource,
  batchSize: number,
  minPercentile?: number,
): Promise<Map<string, ValueStats>> {
  const uniq = [...new Set(values)];
  const acc = new Map(uniq.map((v) => [v, new TopK(minPercentile)]));
  const session = await runtime.createSession(captureGraph(graph, uniq), "capture graph");
  try {
    await runBatches(session, calib, batchSize, (out, _start, n) => {
      for (const v of uniq) {
        const t = out[v];
        const perImage = t.data.length / n;
        acc.get(v)!.add(t.data, t.dims.length, perImage * calib.length);
      }
    });
  } finally {
    await session.release();
  }
  return acc as Map<string, ValueStats>;
}

/** A captured tensor: all calibration images concatenated along axis 0. */
export interface Captured {
  data: Float32Array;
  dims: number[];
}

/**
 * Batches of named tensors, copied into one array per name that is allocated
 * once for all `images` (each batch's first axis holds a whole number of rows
 * per image: images, or windows for Swin). Nothing is held twice: no chunk
 * list is concatenated at the end.
 */
export class BatchCollector {
  private parts = new Map<string, Captured & { filled: number }>();

  /** @param images the number of images all batches together will hold */
  constructor(private images: number) {}

  /** Add one batch of `name` holding `n` images (copied). */
  push(name: string, data: Float32Array, dims: number[], n: number): void {
    let p = this.parts.get(name);
    if (!p) {
      p = {
        data: new Float32Array((data.length / n) * this.images),
        dims: [(dims[0] / n) * this.images, ...dims.slice(1)],
        filled: 0,
      };
      this.parts.set(name, p);
    }
    if (p.filled + data.length > p.data.length) {
      throw new Error(`BatchCollector: ${name} exceeds the ${this.images} images it was sized for`);
    }
    p.data.set(data, p.filled);
    p.filled += data.length;
  }

  /** The collected tensors (all `images` must have been pushed). */
  finish(): Map<string, Captured> {
    const out = new Map<string, Captured>();
    for (const [v, p] of this.parts) {
      if (p.filled !== p.data.length) {
        throw new Error(`BatchCollector: ${v} holds ${p.filled} of ${p.data.length} values`);
      }
      out.set(v, { data: p.data, dims: p.dims });
    }
    return out;
  }
}

/**
 * Capture the full FP values of `values` over the calibration images,
 * concatenated along the first axis (images, or windows for Swin).
 */
export async function captureValues(
  runtime: Runtime,
  graph: Graph,
  values: string[],
  calib: ImageSource,
  batchSize: number,
): Promise<Map<string, Captured>> {
  const uniq = [...new Set(values)];
  const parts = new BatchCollector(calib.length);
  const session = await runtime.createSession(captureGraph(graph, uniq), "capture graph");
  try {
    await runBatches(session, calib, batchSize, (out, _start, n) => {
      for (const v of uniq) parts.push(v, out[v].data, out[v].dims, n);
    });
  } finally {
    await session.release();
  }
  return parts.finish();
}
