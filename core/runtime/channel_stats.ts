/**
 * Per-channel statistics of token activations over a set of images: the
 * minimum and maximum of every channel (the last axis), and how many values
 * exceed a magnitude threshold. They give a value's channel ranges, the ratio
 * of the largest channel range to the median one (how "outlier-heavy" an
 * activation is, as post-LayerNorm activations of ImageNet ViTs are), and the
 * share of values above ADFQ-ViT's outlier threshold τ.
 *
 * @module
 */
import type { Graph } from "../onnx/graph.ts";
import { captureGraph, type ImageSource, runBatches, type Runtime } from "./runtime.ts";

/** Per-channel statistics of one value. */
export interface ChannelStats {
  /** Channels (size of the last axis). */
  channels: number;
  /** Smallest value per channel. */
  min: Float64Array;
  /** Largest value per channel. */
  max: Float64Array;
  /** Values seen. */
  count: number;
  /** Values with |x| > `tau`. */
  above: number;
  /** The threshold `above` counts against. */
  tau: number;
}

/** Range (max - min) of every channel. */
export function channelRanges(s: ChannelStats): Float64Array {
  return s.max.map((m, c) => m - s.min[c]);
}

/** Median of numbers (mean of the two middle ones for an even count). */
export function median(xs: ArrayLike<number>): number {
  const a = Float64Array.from(xs).sort();
  if (a.length === 0) return NaN;
  const h = a.length >> 1;
  return a.length % 2 ? a[h] : (a[h - 1] + a[h]) / 2;
}

/** Ratio of the largest channel range to the median channel range. */
export function rangeRatio(s: ChannelStats): number {
  const r = channelRanges(s);
  let mx = 0;
  for (const v of r) if (v > mx) mx = v;
  return mx / median(r);
}

/**
 * Stream `images` through `graph` and reduce each of `values` to per-channel
 * min/max (channels on the last axis) and the count of |x| > `tau`.
 */
export async function collectChannelStats(
  runtime: Runtime,
  graph: Graph,
  values: string[],
  images: ImageSource,
  batchSize: number,
  tau = Infinity,
): Promise<Map<string, ChannelStats>> {
  const uniq = [...new Set(values)];
  const acc = new Map<string, ChannelStats>();
  const session = await runtime.createSession(captureGraph(graph, uniq), "channel-stats graph");
  try {
    await runBatches(session, images, batchSize, (out) => {
      for (const v of uniq) {
        const t = out[v];
        const c = t.dims[t.dims.length - 1];
        let s = acc.get(v);
        if (!s) {
          s = {
            channels: c,
            min: new Float64Array(c).fill(Infinity),
            max: new Float64Array(c).fill(-Infinity),
            count: 0,
            above: 0,
            tau,
          };
          acc.set(v, s);
        }
        const d = t.data;
        let above = 0;
        for (let i = 0; i < d.length; i++) {
          const x = d[i], ch = i % c;
          if (x < s.min[ch]) s.min[ch] = x;
          if (x > s.max[ch]) s.max[ch] = x;
          if (Math.abs(x) > tau) above++;
        }
        s.count += d.length;
        s.above += above;
      }
    });
  } finally {
    await session.release();
  }
  return acc;
}
