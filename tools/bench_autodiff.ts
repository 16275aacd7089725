/**
 * Cost of the autodiff gradient graphs (`core/autodiff`) against the forward
 * pass, for issue #4's targets: one backward pass over a calibration batch
 * costs at most 3x the forward pass, and the gradients of all 12 blocks' layer
 * outputs of a ViT-S sized graph over 32 images stay under 8 GB peak memory.
 *
 *     deno run -A tools/bench_autodiff.ts [--models vit_fmnist,deit_fmnist,swin_fmnist]
 *         [--batch 32] [--warmup 3] [--reps 20] [--vits-batch 32] [--vits-warmup 2]
 *         [--vits-reps 3] [--skip-vits] [--threads 2] [--profile] [--json FILE]
 *
 * For each shipped model that is present (missing ones are skipped with a
 * note; batch `--batch` of the shipped Fashion-MNIST train sample) and for a
 * ViT-S sized graph with random weights (`core/ivit/vits.ts`, random images,
 * batch `--vits-batch`), three sessions are timed, created by
 * `createRuntime("node", threads)` (sequential, all graph optimizations,
 * `--threads` intra-op threads):
 *
 * - (a) `fwd`: the forward graph alone (logits);
 * - (b) `out`: the gradient graph PTQ4ViT uses (`core/autodiff/gradients.ts`):
 *   cross-entropy to the FP model's own predicted classes, gradients with
 *   respect to the outputs of all linear and matmul sites, all returned;
 * - (c) `w`: the same loss, gradients with respect to all linear weights.
 *
 * (b) and (c) get the session options `core/autodiff/gradients.ts` gives its gradient
 * graph (no ONNX Runtime memory pattern), (a) the defaults.
 *
 * A gradient graph runs the forward pass too, so (b)/(a) and (c)/(a) are
 * "forward + backward" over "forward"; the "backward ≤ 3x forward"
 * target is checked against (b)/(a), the graph PTQ4ViT runs, and (c)/(a) is
 * reported beside it. Each session gets `--warmup` untimed runs (the first
 * runs of a gradient graph fault its activation memory in) and `--reps` timed
 * runs; the median is reported with the range. For the shipped models the
 * three sessions run in turn, run by run, so they see the same machine load.
 * Run times include feeding the inputs and copying every output back to
 * JavaScript, as callers pay them.
 *
 * The ViT-S part runs in child processes, one per gradient graph: each times
 * (a), then its gradient graph, so the peak resident memory (VmHWM) is that of
 * building the graph and running it, not inflated by the shipped models or the
 * other gradient graph; (b)'s is compared with the 8 GB target. The children
 * collect garbage after each run (untimed), so the peak is one pass's, not
 * that of earlier passes' outputs awaiting collection.
 *
 * `--profile` also runs each gradient session once more with ONNX Runtime's
 * profiler and prints where the kernel time goes, per op type, split into
 * forward nodes and emitted gradient (`grad/`, `loss/`) nodes.
 *
 * Timings are wall-clock medians on whatever else the machine runs: the load
 * average is printed before and after.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { loadavg } from "node:os";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { buildGradientGraph } from "../core/autodiff/backward.ts";
import {
  createRuntime,
  type Runtime,
  type SessionOptions,
  type TensorData,
} from "../core/runtime/runtime.ts";
import { resolveModel } from "../core/models.ts";
import { buildVitGraph, VIT_S } from "../core/ivit/vits.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { memoryMiB } from "../bench/env.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    models: { type: "string", default: "vit_fmnist,deit_fmnist,swin_fmnist" },
    batch: { type: "string", default: "32" },
    warmup: { type: "string", default: "3" },
    reps: { type: "string", default: "20" },
    "vits-batch": { type: "string", default: "32" },
    "vits-warmup": { type: "string", default: "2" },
    "vits-reps": { type: "string", default: "3" },
    "skip-vits": { type: "boolean", default: false },
    threads: { type: "string", default: "2" },
    profile: { type: "boolean", default: false },
    json: { type: "string" },
    // internal: run one ViT-S session (fwd, out or w) and print its result as JSON
    "vits-child": { type: "string" },
  },
});

type Mode = "fwd" | "out" | "w";

/** Timing of one session. */
interface Timing {
  /** Median run time, ms. */
  ms: number;
  /** Every timed run, ms, sorted. */
  runs: number[];
  /** Nodes in the graph handed to ONNX Runtime. */
  nodes: number;
  /** Values the gradients are taken with respect to (0 for the forward). */
  wrt: number;
  /** Process peak RSS after the runs, MiB (ViT-S children only). */
  peakMiB?: number;
  /** Process RSS before the session was created, MiB (ViT-S children only). */
  baseMiB?: number;
  /** Kernel time per op type (--profile). */
  profile?: ProfileRow[];
}

/** Kernel time of one op type, from ONNX Runtime's profiler. */
interface ProfileRow {
  /** "fwd" for nodes of the forward graph, "grad" for emitted gradient and loss nodes. */
  part: "fwd" | "grad";
  op: string;
  /** Kernel time per run, ms. */
  ms: number;
  /** Kernels per run. */
  count: number;
}

function load(): string {
  return loadavg().map((v) => v.toFixed(2)).join(" ");
}

/** Deterministic uniform data in [-1, 1) (32-bit LCG). */
function uniform(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 4294967296) * 2 - 1;
  }
  return out;
}

/** A graph to time, its feeds and session options. */
interface Job {
  graph: Graph;
  feeds: Record<string, TensorData>;
  options: SessionOptions;
}

/** The graph a mode runs, with its feeds (the pseudo-labels come from `logits`). */
function modeGraph(
  g: Graph,
  mode: Mode,
  input: TensorData,
  logits: TensorData | undefined,
): Job & { wrt: number } {
  const feeds: Record<string, TensorData> = { [g.inputNames[0]]: input };
  if (mode === "fwd") return { graph: g, feeds, options: {}, wrt: 0 };
  // as methods/ptq4vit.ts and core/autodiff/gradients.ts: linear and matmul sites, pseudo-label CE
  const sites = findSites(g).filter((s) => s.kind === "linear" || s.kind === "matmul");
  const wrt = mode === "out"
    ? [...new Set(sites.map((s) => s.output))]
    : [...new Set(sites.filter((s) => s.kind === "linear").map((s) => s.weight!))];
  const gg = buildGradientGraph(g, {
    loss: { kind: "cross_entropy", logits: g.outputNames[0], target: "vitq_target" },
    wrt,
  });
  const [n, classes] = logits!.dims;
  const target = new Float32Array(n * classes);
  for (let i = 0; i < n; i++) {
    const row = logits!.data.subarray(i * classes, (i + 1) * classes);
    let best = 0;
    for (let j = 1; j < classes; j++) if (row[j] > row[best]) best = j;
    target[i * classes + best] = 1;
  }
  feeds.vitq_target = { data: target, dims: [n, classes] };
  // the session options core/autodiff/gradients.ts uses for its gradient graph
  return { graph: gg.graph, feeds, options: { memPattern: false }, wrt: wrt.length };
}

async function forwardLogits(rt: Runtime, g: Graph, input: TensorData): Promise<TensorData> {
  const s = await rt.createSession(g, "forward graph");
  try {
    return (await s.run({ [g.inputNames[0]]: input }))[g.outputNames[0]];
  } finally {
    await s.release();
  }
}

/**
 * Create one session per graph, run each `warmup` times, then `reps` rounds
 * that run every session once in turn (so all of them see the same load);
 * returns the sorted run times of each, ms.
 */
const gc = (globalThis as { gc?: () => void }).gc;

async function timeInterleaved(
  rt: Runtime,
  jobs: Job[],
  warmup: number,
  reps: number,
): Promise<number[][]> {
  const sessions = [];
  try {
    for (const j of jobs) {
      sessions.push(await rt.createSession(j.graph, "benchmark graph", j.options));
    }
    for (let i = 0; i < warmup; i++) {
      for (const [k, s] of sessions.entries()) {
        await s.run(jobs[k].feeds);
        gc?.();
      }
    }
    const runs: number[][] = jobs.map(() => []);
    for (let i = 0; i < reps; i++) {
      for (const [k, s] of sessions.entries()) {
        const t0 = performance.now();
        await s.run(jobs[k].feeds);
        runs[k].push(performance.now() - t0);
        // ViT-S children: drop the outputs before the next run (untimed), so the peak
        // RSS is one pass's, not that of several passes' outputs awaiting collection
        gc?.();
      }
    }
    return runs.map((r) => r.sort((a, b) => a - b));
  } finally {
    for (const s of sessions) await s.release();
  }
}

/**
 * Kernel time per op type over `reps` runs after `warmup` runs, from ONNX
 * Runtime's profiler, in a session with createRuntime's options plus profiling.
 */
async function profile(
  { graph, feeds, options }: Job,
  threads: number,
  warmup: number,
  reps: number,
): Promise<ProfileRow[]> {
  // deno-lint-ignore no-explicit-any
  const ort: any = await import("onnxruntime-node");
  const dir = await Deno.makeTempDir({ prefix: "vitq-prof-" });
  const s = await ort.InferenceSession.create(graph.toBytes(), {
    executionMode: "sequential",
    graphOptimizationLevel: "all",
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    enableMemPattern: options.memPattern !== false,
    enableProfiling: true,
    profileFilePrefix: `${dir}/p`,
  });
  const f: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(feeds)) f[k] = new ort.Tensor("float32", v.data, v.dims);
  for (let i = 0; i < warmup + reps; i++) await s.run(f);
  s.endProfiling();
  await s.release();
  const file = [...Deno.readDirSync(dir)].find((e) => e.name.endsWith(".json"))!.name;
  const events = JSON.parse(await Deno.readTextFile(`${dir}/${file}`)) as {
    cat?: string;
    name: string;
    ts: number;
    dur: number;
    args?: { op_name?: string };
  }[];
  await Deno.remove(dir, { recursive: true });
  const runs = events.filter((e) => e.cat === "Session" && e.name === "model_run")
    .sort((a, b) => a.ts - b.ts);
  const from = runs[warmup].ts;
  const acc = new Map<string, ProfileRow>();
  for (const e of events) {
    if (e.cat !== "Node" || !e.name.endsWith("_kernel_time") || e.ts < from) continue;
    const part = /(^|\/)(grad|loss)\//.test(e.name) ? "grad" : "fwd";
    const op = e.args?.op_name ?? "?";
    const key = `${part} ${op}`;
    const row = acc.get(key) ?? { part, op, ms: 0, count: 0 };
    row.ms += e.dur / 1000 / reps;
    row.count += 1 / reps;
    acc.set(key, row);
  }
  return [...acc.values()].sort((a, b) => b.ms - a.ms);
}

/** Time the sessions of `modes` on `g`, interleaved (see {@link timeInterleaved}). */
async function measure(
  rt: Runtime,
  g: Graph,
  modes: Mode[],
  input: TensorData,
  logits: TensorData | undefined,
  warmup: number,
  reps: number,
): Promise<Timing[]> {
  const jobs = modes.map((mode) => modeGraph(g, mode, input, logits));
  const runs = await timeInterleaved(rt, jobs, warmup, reps);
  const res: Timing[] = [];
  for (const [k, m] of jobs.entries()) {
    const t: Timing = {
      ms: runs[k][Math.floor(runs[k].length / 2)],
      runs: runs[k],
      nodes: m.graph.nodes.length,
      wrt: m.wrt,
    };
    if (values.profile) {
      t.profile = await profile(m, rt.threads, warmup, Math.min(reps, 3));
    }
    res.push(t);
  }
  return res;
}

function vitsInput(n: number): TensorData {
  const shape = [VIT_S.channels, VIT_S.img, VIT_S.img];
  return { data: uniform(n * shape.reduce((a, b) => a * b, 1), 12345), dims: [n, ...shape] };
}

const threads = Number(values.threads);
const rt = await createRuntime("node", threads);

if (values["vits-child"]) {
  // ViT-S in this process: the forward graph, then one gradient graph (out or
  // w) in sequence, so the peak RSS is the gradient session's; the result goes
  // to the parent on stdout
  const mode = values["vits-child"] as Mode;
  const g = buildVitGraph(VIT_S, 0);
  const input = vitsInput(Number(values["vits-batch"]));
  const warmup = Number(values["vits-warmup"]), reps = Number(values["vits-reps"]);
  const [fwd] = await measure(rt, g, ["fwd"], input, undefined, warmup, reps);
  const logits = await forwardLogits(rt, g, input);
  const baseMiB = memoryMiB("VmRSS");
  const [grad] = await measure(rt, g, [mode], input, logits, warmup, reps);
  grad.peakMiB = memoryMiB("VmHWM");
  grad.baseMiB = baseMiB;
  console.log(JSON.stringify({ fwd, grad }));
  Deno.exit(0);
}

async function vitsChild(mode: Mode): Promise<{ fwd: Timing; grad: Timing }> {
  const args = [
    "run",
    "--allow-all",
    "--v8-flags=--expose-gc",
    new URL(import.meta.url).pathname,
    "--vits-child",
    mode,
    "--vits-batch",
    values["vits-batch"]!,
    "--vits-warmup",
    values["vits-warmup"]!,
    "--vits-reps",
    values["vits-reps"]!,
    "--threads",
    values.threads!,
    ...(values.profile ? ["--profile"] : []),
  ];
  const out = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "inherit" })
    .output();
  if (!out.success) throw new Error(`ViT-S ${mode} child failed (exit ${out.code})`);
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  return JSON.parse(lines.at(-1)!);
}

interface Result {
  model: string;
  batch: number;
  /** (a), timed with (b). */
  fwd: Timing;
  out: Timing;
  /** (a), timed with (c) (the same as `fwd` for the shipped models). */
  fwdW: Timing;
  w: Timing;
}

const fmt = (t: Timing) =>
  `${t.ms.toFixed(t.ms < 100 ? 1 : 0)} (${t.runs[0].toFixed(t.ms < 100 ? 1 : 0)}–${
    t.runs.at(-1)!.toFixed(t.ms < 100 ? 1 : 0)
  })`;

const loadBefore = load();
console.error(`load average before: ${loadBefore}`);
const results: Result[] = [];
const skipped: string[] = [];
const batch = Number(values.batch);
const warmup = Number(values.warmup), reps = Number(values.reps);
let train: Awaited<ReturnType<typeof loadFashionMnist>> | undefined;
for (const name of values.models!.split(",").filter((s) => s)) {
  let model;
  try {
    model = await resolveModel(name, "--models");
    await Deno.stat(model.path);
  } catch (err) {
    skipped.push(`${name} (${(err as Error).message.split("\n")[0]})`);
    console.error(`skipping ${name}: not available`);
    continue;
  }
  train ??= await loadFashionMnist(SHIPPED_FMNIST, "train");
  const g = await Graph.load(model.path);
  const src = makeSource(train, Array.from({ length: batch }, (_, i) => i), model.card);
  const input = { data: await src.slice(0, batch), dims: [batch, ...src.shape] };
  const logits = await forwardLogits(rt, g, input);
  const [fwd, out, w] = await measure(rt, g, ["fwd", "out", "w"], input, logits, warmup, reps);
  console.error(`${name}: (a) ${fmt(fwd)}, (b) ${fmt(out)}, (c) ${fmt(w)} ms`);
  results.push({ model: name, batch, fwd, out, fwdW: fwd, w });
}
if (!values["skip-vits"]) {
  const out = await vitsChild("out");
  console.error(
    `ViT-S: (a) ${fmt(out.fwd)}, (b) ${fmt(out.grad)} ms, peak RSS ${
      out.grad.peakMiB!.toFixed(0)
    } MiB`,
  );
  const w = await vitsChild("w");
  console.error(
    `ViT-S: (a) ${fmt(w.fwd)}, (c) ${fmt(w.grad)} ms, peak RSS ${w.grad.peakMiB!.toFixed(0)} MiB`,
  );
  results.push({
    model: "ViT-S sized, random weights",
    batch: Number(values["vits-batch"]),
    fwd: out.fwd,
    out: out.grad,
    fwdW: w.fwd,
    w: w.grad,
  });
}
const loadAfter = load();

if (values.profile) {
  const title = {
    fwd: "(a) forward",
    out: "(b) layer-output gradients",
    w: "(c) weight gradients",
  };
  for (const r of results) {
    for (const mode of ["fwd", "out", "w"] as const) {
      const rows = r[mode].profile ?? [];
      const total = rows.reduce((a, b) => a + b.ms, 0);
      const part = (p: "fwd" | "grad") =>
        rows.filter((x) => x.part === p).reduce((a, b) => a + b.ms, 0).toFixed(1);
      console.log(
        `\n${r.model}, ${title[mode]}: kernel time per run ${total.toFixed(1)} ms ` +
          `(forward nodes ${part("fwd")}, gradient nodes ${part("grad")}; ` +
          `session wall time ${r[mode].ms.toFixed(1)} ms)`,
      );
      console.log("| part | op | ms/run | share | kernels |\n|---|---|---:|---:|---:|");
      for (const p of rows.filter((p) => p.ms >= total * 0.005)) {
        console.log(
          `| ${p.part} | ${p.op} | ${p.ms.toFixed(1)} | ${(100 * p.ms / total).toFixed(1)}% | ${
            Math.round(p.count)
          } |`,
        );
      }
    }
  }
}

console.log(
  `\nAutodiff cost, ONNX Runtime ${rt.version}, ${threads} threads; median ms of ${reps} runs ` +
    `after ${warmup} warm-up (ViT-S: ${values["vits-reps"]} after ${values["vits-warmup"]}), ` +
    `range in parentheses, number of gradients after (b) and (c); ` +
    `load average ${loadBefore} before, ${loadAfter} after.`,
);
console.log(
  "(a) forward graph; (b) loss + gradients w.r.t. all linear/matmul layer outputs (PTQ4ViT's " +
    "pseudo-label cross-entropy); (c) loss + gradients w.r.t. all linear weights. A gradient " +
    "graph includes its forward pass: the issue's target (backward pass ≤ 3x forward) is checked " +
    "as (b)/(a) ≤ 3. Shipped models: (a), (b), (c) interleaved run by run; ViT-S: each gradient " +
    "graph in its own process after its own (a), the ratio against that (a).",
);
console.log(
  "| model | batch | (a) forward ms | (b) layer outputs ms | (b)/(a) | (c) weights ms | (c)/(a) | nodes a/b/c |",
);
console.log("|---|---:|---:|---:|---:|---:|---:|---|");
for (const r of results) {
  console.log(
    `| ${r.model} | ${r.batch} | ${fmt(r.fwd)} | ${fmt(r.out)} (${r.out.wrt}) | ${
      (r.out.ms / r.fwd.ms).toFixed(2)
    } | ${fmt(r.w)} (${r.w.wrt}) | ${
      (r.w.ms / r.fwdW.ms).toFixed(2)
    } | ${r.fwd.nodes}/${r.out.nodes}/${r.w.nodes} |`,
  );
}
const vits = results.find((r) => r.out.peakMiB !== undefined);
if (vits) {
  const gb = vits.out.peakMiB! / 1024;
  console.log(
    `\nViT-S sized graph, ${vits.batch} images, peak RSS (VmHWM of a process that builds the ` +
      `graph, runs (a), then the gradient session): ` +
      `(b) ${vits.out.peakMiB!.toFixed(0)} MiB = ${gb.toFixed(2)} GiB ` +
      `(target < 8 GB: ${gb * 2 ** 30 < 8e9 ? "met" : "NOT met"}), ` +
      `(c) ${vits.w.peakMiB!.toFixed(0)} MiB; RSS before the gradient session ${
        vits.out.baseMiB!.toFixed(0)
      } MiB.`,
  );
}
if (skipped.length) console.log(`\nskipped: ${skipped.join("; ")}`);
if (values.json) {
  await Deno.writeTextFile(
    values.json,
    JSON.stringify({ ort: rt.version, threads, loadBefore, loadAfter, results }, null, 2),
  );
}
