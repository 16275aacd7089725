/**
 * The speed harness: warm-up runs, then repeated timed runs of a graph on
 * deterministic random input; throughput at a batch size and batch-1 latency
 * (median and p90). Speed never comes from timing a test or an evaluation loop.
 *
 * @module
 */
import { type MedianInterval, medianInterval, quantileSorted } from "../core/quantile.ts";
import { Graph } from "../core/onnx/graph.ts";
import type { Runtime, Session } from "../core/runtime/runtime.ts";
import { Rng } from "../core/rng.ts";

/** Measured speed of one graph. */
export interface Speed {
  /** Images per second at `batch`, from the median batch time. */
  ips: number;
  /** Images per second at `batch` from the 90th-percentile (slow) batch time. */
  ipsP90?: number;
  /**
   * Batch times (ms) of every repetition, in round order: entry r of two graphs timed by one
   * {@link measureInterleaved} call ran in the same round (see {@link pairedRatio}).
   */
  batchMs?: number[];
  /** Batch-1 latency, median over repetitions (ms). */
  latMedMs: number;
  /** Batch-1 latency, 90th percentile (ms). */
  latP90Ms: number;
  batch: number;
  repetitions: number;
  warmup: number;
  /**
   * The machine's 1-minute load average around the measurement (the larger of
   * the readings before and after), so a figure taken under load says so;
   * absent where `/proc/loadavg` cannot be read.
   */
  load?: number;
}

/** The 1-minute load average from `/proc/loadavg`, or undefined (not Linux, no permission). */
export function loadAverage(): number | undefined {
  try {
    const v = Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
    return Number.isFinite(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

/** Quantile of a list (type 7, linear interpolation; see core/quantile.ts). */
export function quantile(xs: number[], q: number): number {
  return quantileSorted([...xs].sort((x, y) => x - y), q);
}

/** Measure throughput at `batch` and batch-1 latency of `graph` for images of `shape`. */
export async function measureSpeed(
  runtime: Runtime,
  graph: Graph | Uint8Array,
  shape: readonly number[],
  opts: { batch: number; repetitions: number; warmup: number },
): Promise<Speed> {
  return (await measureInterleaved(runtime, [graph], shape, opts))[0];
}

/**
 * Time several graphs side by side: every graph gets its warm-up runs, then the
 * repetitions go round-robin (graph order rotated each round), first at `batch`,
 * then at batch 1. A load change during the measurement lands on every graph
 * alike, so their ratio is measured, not two figures taken minutes apart.
 */
export async function measureInterleaved(
  runtime: Runtime,
  graphs: (Graph | Uint8Array)[],
  shape: readonly number[],
  opts: { batch: number; repetitions: number; warmup: number },
): Promise<Speed[]> {
  const sessions: Session[] = [];
  try {
    for (const g of graphs) sessions.push(await runtime.createSession(g, "speed graph"));
    const per = shape.reduce((a, b) => a * b, 1);
    const rng = new Rng(1234);
    const make = (n: number) => {
      const d = new Float32Array(n * per);
      for (let i = 0; i < d.length; i++) d[i] = rng.next() * 2 - 1;
      return { data: d, dims: [n, ...shape] };
    };
    const timeRounds = async (feed: { data: Float32Array; dims: number[] }) => {
      for (const s of sessions) {
        for (let i = 0; i < opts.warmup; i++) await s.run({ [s.inputNames[0]]: feed });
      }
      const times: number[][] = sessions.map(() => []);
      for (let r = 0; r < opts.repetitions; r++) {
        for (let k = 0; k < sessions.length; k++) {
          const j = (k + r) % sessions.length;
          const s = sessions[j];
          const t0 = performance.now();
          await s.run({ [s.inputNames[0]]: feed });
          times[j].push(performance.now() - t0);
        }
      }
      return times;
    };
    const before = loadAverage();
    const big = await timeRounds(make(opts.batch));
    const one = await timeRounds(make(1));
    const after = loadAverage();
    const load = before === undefined || after === undefined ? undefined : Math.max(before, after);
    return sessions.map((_, j) => ({
      ...(load === undefined ? {} : { load }),
      ips: opts.batch / (quantile(big[j], 0.5) / 1000),
      batchMs: big[j],
      ipsP90: opts.batch / (quantile(big[j], 0.9) / 1000),
      latMedMs: quantile(one[j], 0.5),
      latP90Ms: quantile(one[j], 0.9),
      ...opts,
    }));
  } finally {
    for (const s of sessions) await s.release();
  }
}

/**
 * How many times faster `x` ran than `ref` (both from one {@link measureInterleaved} call),
 * round by round: the median of the per-round ratios `ref.batchMs[r] / x.batchMs[r]` (the two
 * graphs ran back to back in round r, so a slower stretch of the machine lands on both) and
 * its distribution-free 95 % interval ({@link medianInterval}). Undefined without per-round
 * times or with fewer than 6 rounds (no 95 % interval exists).
 */
export function pairedRatio(ref: Speed, x: Speed): MedianInterval | undefined {
  const r = roundRatios(ref, x);
  return r && medianInterval(r);
}

/** `ref.batchMs[r] / x.batchMs[r]` per round; undefined without per-round times or with unequal rounds. */
function roundRatios(ref: Speed, x: Speed): number[] | undefined {
  const a = ref.batchMs, b = x.batchMs;
  if (!a || !b || a.length !== b.length || a.length === 0) return undefined;
  return a.map((t, r) => t / b[r]);
}

/** Speed-up of a graph over a reference graph (see {@link pairedSpeedup}). */
export interface Speedup {
  /** Median over rounds of reference time / graph time (or the throughput ratio, unpaired). */
  x: number;
  /** Distribution-free 95 % interval of that median (6 or more paired rounds). */
  lo?: number;
  hi?: number;
}

/**
 * Speed-up of `x` over `ref`: the paired median of {@link pairedRatio} with its
 * 95 % interval; below 6 rounds the paired median alone; without per-round times
 * (or with unequal round counts) the ratio of median throughputs.
 */
export function pairedSpeedup(ref: Speed, x: Speed): Speedup {
  const r = roundRatios(ref, x);
  if (!r) return { x: x.ips / ref.ips };
  const iv = medianInterval(r);
  return iv
    ? { x: iv.median, lo: iv.lo, hi: iv.hi }
    : { x: quantileSorted([...r].sort((p, q) => p - q), 0.5) };
}

/** A speed-up as printed: `1.61x [1.48, 1.70]`, or `1.61x` without an interval. */
export function formatSpeedup(r: Speedup): string {
  return `${r.x.toFixed(2)}x${
    r.lo !== undefined && r.hi !== undefined ? ` [${r.lo.toFixed(2)}, ${r.hi.toFixed(2)}]` : ""
  }`;
}

/**
 * The operators of a graph after ONNX Runtime's optimizations, counted by type
 * (for example `MatMulIntegerToFloat: 48`): which fused integer kernels run. Nodes of
 * subgraphs count too (the body of a batch-chunked graph's Loop: core/onnx/chunk.ts).
 * Empty on the wasm backend, which cannot write its optimized graph.
 */
export async function fusedOps(
  runtime: Runtime,
  bytes: Uint8Array,
): Promise<Record<string, number>> {
  if (runtime.backend !== "node") return {};
  const dir = await Deno.makeTempDir({ prefix: "vitq-opt-" });
  try {
    const path = `${dir}/optimized.onnx`;
    const s = await runtime.createSession(bytes, "optimized graph", { optimizedModelPath: path });
    await s.release();
    const g = Graph.fromBytes(await Deno.readFile(path), path);
    const counts: Record<string, number> = {};
    const count = (graph: Graph) => {
      for (const n of graph.nodes) {
        counts[n.opType] = (counts[n.opType] ?? 0) + 1;
        for (const a of n.attributes) if (a.g) count(Graph.fromGraphProto(a.g, g));
      }
    };
    count(g);
    return counts;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The fused integer kernels among {@link fusedOps}' counts, as `Op xN, ...` (sorted). */
export function integerKernels(counts: Record<string, number>): string {
  const integer = /Integer|^QLinear|^QGemm|^QAttention|NBits|^DynamicQuantize/;
  return Object.entries(counts).filter(([op]) => integer.test(op)).sort()
    .map(([op, n]) => `${op} x${n}`).join(", ");
}
