/**
 * The speed harness: warm-up runs, then repeated timed runs of a graph on
 * deterministic random input; throughput at a batch size and batch-1 latency
 * (median and p90). Speed never comes from timing a test or an evaluation loop.
 *
 * @module
 */
import type { Graph } from "../core/onnx/graph.ts";
import type { Runtime } from "../core/runtime/runtime.ts";
import { Rng } from "../core/rng.ts";

/** Measured speed of one graph. */
export interface Speed {
  /** Images per second at `batch`, from the median batch time. */
  ips: number;
  /** Batch-1 latency, median over repetitions (ms). */
  latMedMs: number;
  /** Batch-1 latency, 90th percentile (ms). */
  latP90Ms: number;
  batch: number;
  repetitions: number;
  warmup: number;
}

/** Quantile of a list (linear interpolation). */
export function quantile(xs: number[], q: number): number {
  const a = [...xs].sort((x, y) => x - y);
  const pos = q * (a.length - 1);
  const lo = Math.floor(pos), hi = Math.ceil(pos);
  return a[lo] + (a[hi] - a[lo]) * (pos - lo);
}

/** Measure throughput at `batch` and batch-1 latency of `graph` for images of `shape`. */
export async function measureSpeed(
  runtime: Runtime,
  graph: Graph | Uint8Array,
  shape: readonly number[],
  opts: { batch: number; repetitions: number; warmup: number },
): Promise<Speed> {
  const session = await runtime.createSession(graph, "speed graph");
  const input = session.inputNames[0];
  const per = shape.reduce((a, b) => a * b, 1);
  const rng = new Rng(1234);
  const make = (n: number) => {
    const d = new Float32Array(n * per);
    for (let i = 0; i < d.length; i++) d[i] = rng.next() * 2 - 1;
    return { data: d, dims: [n, ...shape] };
  };
  const timeRuns = async (feed: { data: Float32Array; dims: number[] }) => {
    for (let i = 0; i < opts.warmup; i++) await session.run({ [input]: feed });
    const times: number[] = [];
    for (let i = 0; i < opts.repetitions; i++) {
      const t0 = performance.now();
      await session.run({ [input]: feed });
      times.push(performance.now() - t0);
    }
    return times;
  };
  try {
    const big = await timeRuns(make(opts.batch));
    const one = await timeRuns(make(1));
    return {
      ips: opts.batch / (quantile(big, 0.5) / 1000),
      latMedMs: quantile(one, 0.5),
      latP90Ms: quantile(one, 0.9),
      ...opts,
    };
  } finally {
    await session.release();
  }
}
