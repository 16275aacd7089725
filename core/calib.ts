/**
 * Calibration statistics: stream the calibration images through a capture graph
 * and reduce every requested intermediate value to its absolute maximum and,
 * when asked, exact percentiles of |x| (kept as a streaming top-K, so memory stays
 * small however many images are seen).
 *
 * @module
 */
import type { Graph } from "./onnx/graph.ts";
import { captureGraph, type ImageSource, runBatches, type Runtime } from "./runtime/runtime.ts";

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
    const thr = this.top.length >= this.k ? this.top[this.k - 1] : -1;
    const keep: number[] = [];
    for (let i = 0; i < x.length; i++) {
      const a = Math.abs(x[i]);
      if (a > thr) keep.push(a);
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

/** Concatenate float32 chunks into one array. */
export function concatFloat32(chunks: Float32Array[]): Float32Array {
  const data = new Float32Array(chunks.reduce((a, c) => a + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    data.set(c, off);
    off += c.length;
  }
  return data;
}

/** Batches of named tensors collected and concatenated along their first axis. */
export class BatchCollector {
  private parts = new Map<string, { chunks: Float32Array[]; dims: number[] }>();

  /** Add one batch of `name` (copied). */
  push(name: string, data: Float32Array, dims: number[]): void {
    const p = this.parts.get(name);
    if (p) {
      p.chunks.push(data.slice());
      p.dims[0] += dims[0];
    } else this.parts.set(name, { chunks: [data.slice()], dims: [...dims] });
  }

  /** The concatenated tensors. */
  finish(): Map<string, Captured> {
    const out = new Map<string, Captured>();
    for (const [v, p] of this.parts) out.set(v, { data: concatFloat32(p.chunks), dims: p.dims });
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
  const parts = new BatchCollector();
  const session = await runtime.createSession(captureGraph(graph, uniq), "capture graph");
  try {
    await runBatches(session, calib, batchSize, (out) => {
      for (const v of uniq) parts.push(v, out[v].data, out[v].dims);
    });
  } finally {
    await session.release();
  }
  return parts.finish();
}
