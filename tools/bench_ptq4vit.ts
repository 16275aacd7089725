/**
 * Calibration cost of PTQ4ViT (wall time and peak resident memory of one
 * `quantize` call, default options: Hessian metric with pseudo-label
 * gradients, twin quantizers, 100 candidates, 3 rounds, 32 calibration images):
 *
 * 1. each shipped Fashion-MNIST model, with the first 32 images of the shipped
 *    train sample (`--models`, default all three);
 * 2. with `--vits`, a ViT-S sized graph (dim 384, 6 heads, 12 blocks, 197
 *    tokens, 224x224x3) with random weights, fed 32 random images.
 *
 *     deno run -A tools/bench_ptq4vit.ts [--models vit_fmnist,deit_fmnist,swin_fmnist]
 *                                        [--bits 4] [--reps 2] [--vits] [--threads 2]
 *
 * Shipped models: one warm-up call, then `--reps` timed calls (median
 * reported); the calibration statistics cache is cleared before each call so
 * every call captures and differentiates again, as the first cell of a
 * manifest does. ViT-S: one call (minutes), peak RSS of the whole process.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { findSites } from "../core/onnx/sites.ts";
import { Graph } from "../core/onnx/graph.ts";
import { createRuntime, type ImageSource } from "../core/runtime/runtime.ts";
import { resolveModel } from "../core/models.ts";
import { buildVitGraph, randomImages, VIT_S } from "../core/ivit/vits.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { METHODS } from "../methods/registry.ts";
import { memoryMiB } from "../bench/env.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    models: { type: "string", default: "vit_fmnist,deit_fmnist,swin_fmnist" },
    bits: { type: "string", default: "4" },
    reps: { type: "string", default: "2" },
    threads: { type: "string", default: "2" },
    vits: { type: "boolean", default: false },
  },
});

const bits = Number(values.bits);
const rt = await createRuntime("node", Number(values.threads));
const method = METHODS.ptq4vit;

/** One full calibration: a fresh calibration hash per call, so the statistics cache never hits. */
async function calibrate(bytes: Uint8Array, calib: ImageSource): Promise<number> {
  const graph = Graph.fromBytes(bytes);
  const t0 = performance.now();
  await method.quantize({
    graph,
    sites: findSites(graph),
    calib,
    bits: { w: bits, a: bits },
    runtime: rt,
    options: { ...method.defaults },
    batchSize: 32,
    modelHash: `${bytes.length} bytes`,
    calibHash: crypto.randomUUID(),
    seed: 0,
    log: () => {},
  });
  return (performance.now() - t0) / 1000;
}

const rows: string[] = [];
const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
for (const name of values.models.split(",").filter((s) => s)) {
  const m = await resolveModel(name, "--models");
  const bytes = await Deno.readFile(m.path);
  const calib = makeSource(train, Array.from({ length: 32 }, (_, i) => i), m.card);
  await calibrate(bytes, calib);
  const times: number[] = [];
  for (let r = 0; r < Number(values.reps); r++) times.push(await calibrate(bytes, calib));
  times.sort((a, b) => a - b);
  const med = times[Math.floor(times.length / 2)];
  rows.push(
    `| ${name} | W${bits}A${bits} | ${med.toFixed(1)} s (${
      times.map((t) => t.toFixed(1)).join(", ")
    }) |`,
  );
  console.log(rows.at(-1));
}
if (values.vits) {
  const g = buildVitGraph(VIT_S, 0);
  const bytes = g.toBytes();
  const calib = randomImages(VIT_S, 32);
  const secs = await calibrate(bytes, calib);
  rows.push(
    `| ViT-S sized, random weights | W${bits}A${bits} | ${secs.toFixed(0)} s, peak RSS ${
      memoryMiB().toFixed(0)
    } MiB |`,
  );
  console.log(rows.at(-1));
}
console.log(
  `\nPTQ4ViT calibration, ${values.threads} threads, ORT ${rt.version}\n| model | bits | time |\n|---|---|---|\n${
    rows.join("\n")
  }`,
);
