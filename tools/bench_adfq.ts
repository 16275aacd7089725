/**
 * Throughput of ADFQ-ViT's module-wise optimization (optimization steps per
 * second of each reconstruction unit, batch 32 as the reference), on
 *
 * 1. the shipped model (`models/vit_fmnist.onnx`, dim 64, 4 heads, 50 tokens),
 *    with Fashion-MNIST calibration images;
 * 2. one ViT-S sized transformer block with random weights (dim 384, 6 heads,
 *    197 tokens, MLP 1536), built with the Graph IR and fed random tokens;
 * 3. with `--full-vits N`, the whole ViT-S sized graph (12 blocks, 224x224x3,
 *    random weights) on N random images (the reference uses 1,024), a few
 *    steps per unit: the run that measures the memory of holding every unit's
 *    FP inputs, outputs and attention maps and its quantized inputs over the
 *    whole calibration set (peak resident memory of the process, VmHWM).
 *
 *     deno run -A tools/bench_adfq.ts [--iters 20] [--vits-iters 4] [--images 64]
 *                                     [--threads 2] [--skip-vits] [--skip-shipped]
 *                                     [--full-vits 1024] [--full-vits-iters 2]
 *                                     [--full-vits-depth 12]
 *                                     [--json FILE]
 *
 * Steps per second exclude captures, quantizer initialization and the
 * before/after evaluation of each unit (reported separately as setup time).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { Graph, makeAttr, Tensor } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { createRuntime, type ImageSource, type Runtime } from "../core/runtime/runtime.ts";
import { resolveModel } from "../core/models.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { buildVitGraph, randomImages, VIT_S } from "../core/ivit/vits.ts";
import { ADFQ_DEFAULTS, type AdfqReport, runAdfq } from "../methods/adfq.ts";
import { memoryMiB } from "../bench/env.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    iters: { type: "string", default: "20" },
    "vits-iters": { type: "string", default: "4" },
    images: { type: "string", default: "64" },
    threads: { type: "string", default: "2" },
    "skip-vits": { type: "boolean", default: false },
    "skip-shipped": { type: "boolean", default: false },
    "full-vits": { type: "string" },
    "full-vits-iters": { type: "string", default: "2" },
    "full-vits-depth": { type: "string", default: "12" },
    json: { type: "string" },
  },
});

/** Deterministic normal samples (Box-Muller over a 32-bit LCG). */
function normal(n: number, seed: number, std: number): Float32Array {
  let s = seed >>> 0;
  const u = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s + 0.5) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = std * Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
  }
  return out;
}

/**
 * One pre-norm ViT block (LayerNorm → qkv → attention → proj → residual →
 * LayerNorm → fc1 → GELU (erf form) → fc2 → residual) with random weights.
 */
function vitBlock(dim = 384, heads = 6, tokens = 197, hidden = 4 * dim): Graph {
  const g = Graph.create(17, "vit-block");
  g.addInput("input", ["batch", tokens, dim]);
  let seed = 1;
  const w = (name: string, dims: number[], std: number) =>
    g.setInitializer(
      Tensor.fromFloat32(name, dims, normal(dims.reduce((a, b) => a * b, 1), seed++, std)),
    );
  const ones = (name: string, n: number) =>
    g.setInitializer(Tensor.fromFloat32(name, [n], new Float32Array(n).fill(1)));
  const zeros = (name: string, n: number) =>
    g.setInitializer(Tensor.fromFloat32(name, [n], new Float32Array(n)));
  const i64 = (name: string, v: number[]) =>
    g.setInitializer(Tensor.fromInt64(name, [v.length], v));
  const ln = (x: string, p: string) =>
    g.addNode("LayerNormalization", [x, ones(`${p}.weight`, dim), zeros(`${p}.bias`, dim)], {
      attributes: [makeAttr("axis", -1), makeAttr("epsilon", 1e-6, "float")],
    });
  const linear = (x: string, p: string, cin: number, cout: number) =>
    g.addNode("Add", [
      g.addNode("MatMul", [x, w(`${p}.weight`, [cin, cout], 0.02)]),
      w(`${p}.bias`, [cout], 0.01),
    ]);
  const hd = dim / heads;
  const qkv = linear(ln("input", "norm1"), "attn.qkv", dim, 3 * dim);
  const t = g.addNode("Transpose", [
    g.addNode("Reshape", [qkv, i64("qkv_shape", [0, tokens, 3, heads, hd])]),
  ], {
    attributes: [makeAttr("perm", [2, 0, 3, 1, 4])],
  });
  const part = (i: number) =>
    g.addNode("Gather", [t, g.setInitializer(Tensor.fromInt64(`idx${i}`, [], [i]))], {
      attributes: [makeAttr("axis", 0)],
    });
  const [q, k, v] = [part(0), part(1), part(2)];
  const kt = g.addNode("Transpose", [k], { attributes: [makeAttr("perm", [0, 1, 3, 2])] });
  const scores = g.addNode("Mul", [
    g.addNode("MatMul", [q, kt]),
    g.constFloat("scale", hd ** -0.5),
  ]);
  const attn = g.addNode("Softmax", [scores], { attributes: [makeAttr("axis", -1)] });
  const ctx = g.addNode("Reshape", [
    g.addNode("Transpose", [g.addNode("MatMul", [attn, v])], {
      attributes: [makeAttr("perm", [0, 2, 1, 3])],
    }),
    i64("merge_shape", [0, tokens, dim]),
  ]);
  const x1 = g.addNode("Add", ["input", linear(ctx, "attn.proj", dim, dim)]);
  const h = linear(ln(x1, "norm2"), "mlp.fc1", dim, hidden);
  const erf = g.addNode("Erf", [g.addNode("Div", [h, g.constFloat("sqrt2", Math.SQRT2)])]);
  const gelu = g.addNode("Mul", [
    g.addNode("Mul", [h, g.addNode("Add", [erf, g.constFloat("one", 1)])]),
    g.constFloat("half", 0.5),
  ]);
  const out = g.addNode("Add", [x1, linear(gelu, "mlp.fc2", hidden, dim)]);
  g.outputs = [{ name: out, type: { tensorType: { elemType: 1 } } }];
  return g;
}

/** Random token batches shaped [tokens, dim] per item. */
function tokenSource(n: number, tokens: number, dim: number): ImageSource {
  const data = normal(n * tokens * dim, 7, 1);
  const per = tokens * dim;
  return {
    length: n,
    shape: [tokens, dim],
    slice: (a, b) => Promise.resolve(data.subarray(a * per, b * per)),
  };
}

async function bench(
  rt: Runtime,
  name: string,
  graph: Graph,
  calib: ImageSource,
  iters: number,
): Promise<{ name: string; report: AdfqReport; seconds: number }> {
  const t0 = performance.now();
  const { report } = await runAdfq({
    graph,
    sites: findSites(graph, name),
    calib,
    bits: { w: 4, a: 4 },
    runtime: rt,
    options: { ...ADFQ_DEFAULTS, iters, initSamples: Math.min(64, calib.length) },
    batchSize: 32,
    modelHash: name, // ADFQ keeps no calibration data between runs
    calibHash: `${calib.length} images`,
    seed: 0,
    log: (m) => console.error(`  ${m}`),
  });
  const seconds = (performance.now() - t0) / 1000;
  console.log(`\n${name}: ${iters} steps per unit, batch 32, ${calib.length} images, W4A4`);
  console.log("| unit | steps/s | ms/step |");
  console.log("|---|---:|---:|");
  for (const r of report.units) {
    console.log(
      `| ${r.unit} | ${r.itersPerSec.toFixed(2)} | ${(1000 / r.itersPerSec).toFixed(1)} |`,
    );
  }
  console.log(
    `total ${seconds.toFixed(1)} s: ${report.trainSeconds.toFixed(1)} s optimizing, ${
      report.setupSeconds.toFixed(1)
    } s captures/initialization/evaluation`,
  );
  return { name, report, seconds };
}

const rt = await createRuntime("node", Number(values.threads));
const images = Number(values.images);
const results = [];
if (!values["skip-shipped"]) {
  const model = await resolveModel("vit_fmnist", "bench_adfq");
  const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
  results.push(
    await bench(
      rt,
      "vit_fmnist",
      await Graph.load(model.path),
      makeSource(train, Array.from({ length: images }, (_, i) => i), model.card),
      Number(values.iters),
    ),
  );
}
if (!values["skip-vits"]) {
  results.push(
    await bench(
      rt,
      "vit-s block (random weights)",
      vitBlock(),
      tokenSource(images, 197, 384),
      Number(values["vits-iters"]),
    ),
  );
}
if (values["full-vits"]) {
  const n = Number(values["full-vits"]), depth = Number(values["full-vits-depth"]);
  const r = await bench(
    rt,
    `vit-s graph (${depth} blocks, random weights, ${n} random images)`,
    buildVitGraph({ ...VIT_S, depth }, 0),
    randomImages(VIT_S, n),
    Number(values["full-vits-iters"]),
  );
  console.log(`peak RSS of the process: ${memoryMiB().toFixed(0)} MiB`);
  results.push(r);
}
if (values.json) {
  await Deno.writeTextFile(
    values.json,
    JSON.stringify(
      results.map((r) => ({
        name: r.name,
        seconds: r.seconds,
        setupSeconds: r.report.setupSeconds,
        trainSeconds: r.report.trainSeconds,
        units: r.report.units.map((u) => ({
          unit: u.unit,
          iters: u.iters,
          itersPerSec: u.itersPerSec,
        })),
      })),
      null,
      2,
    ),
  );
}
