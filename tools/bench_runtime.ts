/**
 * Benchmark harness for the runner's overheads (figures recorded in the README):
 *
 * 1. FP32 evaluation through vitq's runner path (`evaluate`) against a bare
 *    onnxruntime-node session on the same batches (target: at least 90%).
 * 2. Evaluation time of a fake-quant graph (minmax W8A8) against FP32 (target:
 *    at most 2x).
 *
 *     deno task speed [model-name] [--images 10000] [--batch 100] [--reps 3]
 *
 * Each measurement: one warm-up pass, then `reps` timed passes; the median is
 * reported.
 *
 * @module
 */
import { parseArgs } from "node:util";
import * as ort from "onnxruntime-node";
import { resolveModel } from "../core/models.ts";
import { Graph } from "../core/onnx/graph.ts";
import { sha256Hex } from "../core/hash.ts";
import { findSites } from "../core/onnx/sites.ts";
import { createRuntime } from "../core/runtime/runtime.ts";
import { evaluate } from "../bench/evaluate.ts";
import { quantile } from "../bench/speed.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { minmax } from "../methods/baselines.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    images: { type: "string", default: "10000" },
    batch: { type: "string", default: "100" },
    reps: { type: "string", default: "3" },
    threads: { type: "string", default: "2" },
  },
});
const name = positionals[0] ?? "vit_fmnist";
const nImages = Number(values.images), batch = Number(values.batch), reps = Number(values.reps);
const threads = Number(values.threads);
const model = await resolveModel(name, "model");
const bytes = await Deno.readFile(model.path);
const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
const idx = Array.from({ length: Math.min(nImages, test.ids.length) }, (_, i) => i);
const src = makeSource(test, idx, model.card);
const rt = await createRuntime("node", threads);

async function timed(fn: () => Promise<void>): Promise<number> {
  await fn(); // warm-up
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    t.push((performance.now() - t0) / 1000);
  }
  return quantile(t, 0.5);
}

// bare onnxruntime-node on the same batches, same session options
const bare = await ort.InferenceSession.create(bytes, {
  executionMode: "sequential",
  graphOptimizationLevel: "all",
  intraOpNumThreads: threads,
  interOpNumThreads: 1,
});
const batches: Float32Array[] = [];
for (let s = 0; s < src.length; s += batch) {
  batches.push(await src.slice(s, Math.min(s + batch, src.length)));
}
const bareSec = await timed(async () => {
  for (const b of batches) {
    await bare.run({
      [bare.inputNames[0]]: new ort.Tensor("float32", b, [b.length / 784, 1, 28, 28]),
    });
  }
});
await bare.release();

const runnerSec = await timed(async () => {
  await evaluate(rt, bytes, src, batch);
});

const graph = Graph.fromBytes(bytes, model.path);
const calibSplit = await loadFashionMnist(SHIPPED_FMNIST, "train");
const calib = makeSource(calibSplit, Array.from({ length: 32 }, (_, i) => i), model.card);
const q = await minmax.quantize({
  graph,
  sites: findSites(graph),
  calib,
  bits: { w: 8, a: 8 },
  runtime: rt,
  options: {},
  batchSize: batch,
  modelHash: await sha256Hex(bytes),
  calibHash: await sha256Hex("train 0..31"),
  seed: 0,
  log: () => {},
});
const fq = q.graph.toBytes();
const fqSec = await timed(async () => {
  await evaluate(rt, fq, src, batch);
});

const n = src.length;
console.log(
  `model ${name}, ${n} images, batch ${batch}, ${threads} threads, median of ${reps} passes`,
);
console.log(`| measurement | seconds | images/s | ratio |`);
console.log(`|---|---:|---:|---:|`);
console.log(
  `| bare onnxruntime-node session, FP32 | ${bareSec.toFixed(3)} | ${
    (n / bareSec).toFixed(0)
  } | 1.00 |`,
);
console.log(
  `| vitq runner evaluate(), FP32 | ${runnerSec.toFixed(3)} | ${(n / runnerSec).toFixed(0)} | ${
    (bareSec / runnerSec).toFixed(2)
  } of bare throughput |`,
);
console.log(
  `| vitq runner evaluate(), fake-quant minmax W8A8 | ${fqSec.toFixed(3)} | ${
    (n / fqSec).toFixed(0)
  } | ${(fqSec / runnerSec).toFixed(2)}x FP32 time |`,
);
