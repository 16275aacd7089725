/**
 * Calibration time and peak memory per method on one ONNX model (e.g. a random-weight
 * timm export from tools/export_timm.py --random-weights), on seeded synthetic
 * normalized images: wall seconds, process CPU seconds (ONNX Runtime threads
 * included) and the peak resident set size sampled every 20 ms while the method runs
 * (the process's RSS before it is printed too: the peak is not reset between methods).
 *
 *     deno run -A tools/bench_calib.ts --model /tmp/deit_t.onnx --images 32 \
 *         [--methods minmax,percentile,baseptq,ptq4vit] [--bits 8] [--batch 32] \
 *         [--threads 2] [--set ptq4vit.n=20] [--fp-speed] [--layers FILE] [--roles]
 *
 * `--layers FILE` writes each method's layer records (site, tensor, quantizer, step)
 * as JSON, one line per method, e.g. to compare the steps two option settings chose
 * (`--set ptq4vit.coarse=5` against the full grid).
 *
 * `--roles` prints each method's seconds per site role and search round (from the
 * method's step messages; PTQ4ViT, BasePTQ and the methods built on their searches).
 *
 * `--fp-speed` first times the FP32 graph (bench/speed.ts harness, batch `--batch`,
 * 5 repetitions after 2 warm-up runs): the evaluation rate a manifest cell of
 * this model gets. The load average at the start and end is printed.
 *
 * Each method runs in this process one after the other with its defaults (plus --set);
 * run a method alone for a clean peak. Timings on a shared machine are under load.
 *
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { createRuntime, type ImageSource } from "../core/runtime/runtime.ts";
import { sha256Hex } from "../core/hash.ts";
import { runCli, VitqError } from "../core/errors.ts";
import { METHODS } from "../methods/registry.ts";
import { loadAverage, measureSpeed } from "../bench/speed.ts";

/** `n` seeded synthetic images of `shape` (smooth patterns plus noise, about unit scale). */
function synthetic(n: number, shape: number[], seed: number): ImageSource {
  const per = shape.reduce((a, b) => a * b, 1);
  const [, h, w] = shape;
  const data = new Float32Array(n * per);
  let s = seed >>> 0;
  for (let k = 0; k < data.length; k++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const i = Math.floor(k / per), r = k % per, x = r % w, y = Math.floor(r / w) % h;
    data[k] = 0.75 * ((s / 4294967296) * 2 - 1) + Math.sin((x + 7 * i) / 17) + Math.cos(y / 23 + i);
  }
  return { length: n, shape, slice: (a, b) => Promise.resolve(data.slice(a * per, b * per)) };
}

/**
 * Seconds per site role and round from a method's step messages (`<site> round r/R`, the
 * time until the next message), summed over blocks: `b3.fc1 round 2/3` counts as fc1,
 * round 2, `b3.fc1: searching` as fc1, round 1. Time before the first message (capture, gradients) and after the last
 * search (graph building) is listed on its own.
 */
function printRoles(method: string, marks: [number, string][], end: number): void {
  const table = new Map<string, number[]>();
  let rounds = 1;
  marks.forEach(([t, msg], i) => {
    const next = i + 1 < marks.length ? marks[i + 1][0] : end;
    // "b3.fc1 round 2/3", "b3.fc1: searching" (round 1)
    const m = /^(?:b\d+\.|blocks?\.\d+\.)?([^\s:]+)(?:: .*| round (\d+)\/\d+.*)$/.exec(msg);
    const role = m ? m[1] : msg, r = m?.[2] ? Number(m[2]) : 1;
    rounds = Math.max(rounds, r);
    const row = table.get(role) ?? [];
    row[r - 1] = (row[r - 1] ?? 0) + (next - t) / 1000;
    table.set(role, row);
  });
  console.log(`${method}: seconds per role and round (summed over blocks)`);
  const head = Array.from({ length: rounds }, (_, i) => `round ${i + 1}`.padStart(9)).join("");
  console.log(`${"role".padEnd(28)}${head}    total`);
  for (const [role, row] of [...table].sort((a, b) => sum(b[1]) - sum(a[1]))) {
    const cells = Array.from({ length: rounds }, (_, i) => (row[i] ?? 0).toFixed(1).padStart(9));
    console.log(
      `${role.slice(0, 27).padEnd(28)}${cells.join("")}${sum(row).toFixed(1).padStart(9)}`,
    );
  }
}

function sum(xs: (number | undefined)[]): number {
  return xs.reduce((a: number, b) => a + (b ?? 0), 0);
}

await runCli(async () => {
  const { values } = parseArgs({
    options: {
      model: { type: "string" },
      methods: { type: "string", default: "minmax,percentile,baseptq,ptq4vit" },
      images: { type: "string", default: "32" },
      bits: { type: "string", default: "8" },
      batch: { type: "string", default: "32" },
      threads: { type: "string", default: "2" },
      set: { type: "string", multiple: true, default: [] },
      "fp-speed": { type: "boolean", default: false },
      layers: { type: "string" },
      roles: { type: "boolean", default: false },
    },
  });
  if (!values.model) {
    throw new VitqError("usage: deno run -A tools/bench_calib.ts --model FILE.onnx [...]");
  }
  const num = (k: string, v: string) => {
    const x = Number(v);
    if (!Number.isInteger(x) || x < 1) {
      throw new VitqError(`--${k} ${v}: expected a positive integer`);
    }
    return x;
  };
  const n = num("images", values.images!), bits = num("bits", values.bits!);
  const batch = num("batch", values.batch!), threads = num("threads", values.threads!);
  const overrides: Record<string, Record<string, unknown>> = {};
  for (const s of values.set as string[]) {
    const m = /^([a-z0-9_]+)\.([A-Za-z0-9_]+)=(.*)$/.exec(s);
    if (!m) throw new VitqError(`--set ${s}: expected method.option=value`);
    let v: unknown = m[3];
    try {
      v = JSON.parse(m[3]);
    } catch { /* a string */ }
    (overrides[m[1]] ??= {})[m[2]] = v;
  }
  const graph = await Graph.load(values.model);
  const sites = findSites(graph);
  const dims = graph.inputs.find((v) => v.name === graph.inputNames[0])?.type?.tensorType?.shape
    ?.dim?.slice(1).map((d: Record<string, unknown>) => Number(d.dimValue));
  if (!dims || dims.length !== 3 || dims.some((d: number) => !(d > 0))) {
    throw new VitqError(`${values.model}: input is not [batch, C, H, W] with static C, H, W`);
  }
  const runtime = await createRuntime("node", threads);
  const calib = synthetic(n, dims, 1);
  const modelHash = await sha256Hex(await Deno.readFile(values.model));
  console.log(
    `${values.model}: ${sites.length} sites, ${n} synthetic images ${dims.join("x")}, ` +
      `W${bits}A${bits}, batch ${batch}, ${threads} threads`,
  );
  console.log(`load average at start: ${loadAverage() ?? "?"}`);
  if (values["fp-speed"]) {
    const sp = await measureSpeed(runtime, graph, dims, { batch, repetitions: 5, warmup: 2 });
    console.log(
      `FP32: ${sp.ips.toFixed(1)} images/s at batch ${batch} (load ${sp.load ?? "?"})`,
    );
  }
  console.log("method      wall_s   cpu_s  rss_before_MiB  peak_rss_MiB");
  for (const name of values.methods!.split(",")) {
    const method = METHODS[name];
    if (!method) throw new VitqError(`--methods: unknown method ${name}`);
    const before = process.memoryUsage.rss();
    let peak = before;
    const timer = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage.rss());
    }, 20);
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const marks: [number, string][] = [[t0, "before the first search step"]];
    const q = await method.quantize({
      graph,
      sites,
      calib,
      bits: { w: bits, a: bits },
      runtime,
      options: { ...(method.defaults as Record<string, unknown>), ...overrides[name] },
      batchSize: batch,
      seed: 0,
      modelHash,
      calibHash: `synthetic ${n} seed 1`,
      log: () => {},
      step: values.roles ? (msg: string) => marks.push([performance.now(), msg]) : undefined,
    });
    const wall = (performance.now() - t0) / 1000;
    if (values.roles) printRoles(name, marks, t0 + wall * 1000);
    if (values.layers) {
      const layers = q.layers.map((l) => ({
        site: l.site,
        tensor: l.tensor,
        quantizer: l.quantizer,
        scale: l.scale,
      }));
      await Deno.writeTextFile(
        values.layers,
        JSON.stringify({ method: name, options: overrides[name] ?? {}, wall, layers }) + "\n",
        { append: true },
      );
    }
    const cpu = process.cpuUsage(cpu0);
    clearInterval(timer);
    peak = Math.max(peak, process.memoryUsage.rss());
    const mib = (b: number) => (b / 2 ** 20).toFixed(0);
    console.log(
      `${name.padEnd(10)} ${wall.toFixed(1).padStart(7)} ${
        ((cpu.user + cpu.system) / 1e6).toFixed(1).padStart(7)
      } ${mib(before).padStart(15)} ${mib(peak).padStart(13)}`,
    );
  }
  console.log(`load average at end: ${loadAverage() ?? "?"}`);
});
