/**
 * Deploy-graph benchmark: FP32, the fake-quant graph, the QDQ deploy graphs of
 * minmax and PTQ4ViT at W8A8 (and minmax W4A4), and I-ViT's integer-only graph
 * (the `reference` variant, 16-bit residual stream and Shiftmax output, and
 * the `paper` variant, 8-bit everywhere),
 * all timed in ONE interleaved loop (bench/speed.ts `measureInterleaved`:
 * warm-up each, then round-robin repetitions), so their ratios are side by
 * side. Also: file sizes, the deploy graphs' integer MAC share and the fused
 * integer kernels ONNX Runtime ran. Not a test: run it on an idle machine.
 *
 * Where I-ViT's graph runs the batch in chunks (core/onnx/chunk.ts: ViT-S),
 * so do the QDQ deploy graphs, as the bench runs and saves them
 * (bench/deploy.ts `chunkedDeploy`); FP32 is also timed in the same chunks,
 * and every row gets a second ratio against chunked FP32: chunking speeds
 * FP32 up as well, so that is the like-for-like figure. The PTQ4ViT deploy
 * graph is timed unchunked too, to show what chunking gives it.
 *
 * Ratios are paired (bench/speed.ts `pairedSpeedup`): the median over rounds
 * of the reference graph's batch time over this graph's in the same round,
 * with its distribution-free 95 % interval in brackets (order statistics of
 * the per-round ratios; at least 6 repetitions, else the paired median
 * without an interval).
 *
 * Models: `vit_fmnist`, `deit_fmnist`, `swin_fmnist` (shipped; 32 calibration
 * images of the shipped train sample) and `vits` (a ViT-S sized graph with
 * random weights, core/ivit/vits.ts; random calibration images). On `vits`,
 * PTQ4ViT's step search runs on a reduced grid (`--vits-grid`, default 10
 * points, 1 round) to keep the benchmark short: speed depends on which
 * quantizers the graph holds, not on the step values.
 *
 *     deno run -A tools/bench_deploy.ts [--models vit_fmnist,vits] [--batch 32]
 *       [--reps 10] [--warmup 3] [--threads 2] [--calib 32] [--json out.json]
 *       [--save-graphs DIR]
 *
 * `--save-graphs DIR` writes every timed graph as `DIR/<model>_<row>.onnx`
 * (rows numbered as printed, from 0), to profile or time them elsewhere.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { envInfo } from "../bench/env.ts";
import {
  formatSpeedup,
  fusedOps,
  integerKernels,
  measureInterleaved,
  pairedSpeedup,
  type Speedup,
} from "../bench/speed.ts";
import { resolveModel } from "../core/models.ts";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { createRuntime, type ImageSource } from "../core/runtime/runtime.ts";
import { coverageShapes, integerCoverage } from "../core/quant/deploy.ts";
import { sha256Hex } from "../core/hash.ts";
import { Rng } from "../core/rng.ts";
import { runCli, VitqError } from "../core/errors.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { buildIntegerProgram } from "../core/ivit/build.ts";
import { emitFloatWrapper } from "../core/ivit/emit.ts";
import { batchChunkFor, chunkBatch } from "../core/onnx/chunk.ts";
import { chunkedDeploy } from "../bench/deploy.ts";
import { buildVitGraph, randomImages, VIT_S } from "../core/ivit/vits.ts";
import { minmax } from "../methods/baselines.ts";
import { ptq4vit } from "../methods/ptq4vit.ts";
import type { Bits, QuantContext, QuantizedModel } from "../methods/types.ts";

interface Timed {
  graph: string;
  bytes: number;
  ips: number;
  /** Speed over FP32's (paired per round, see the module doc). */
  ratio: Speedup;
  /** Speed over FP32 run in the same batch chunks as I-ViT's graph (where it is chunked). */
  ratioChunked?: Speedup;
  latMedMs: number;
  intMacShare?: number;
  kernels?: string;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      models: { type: "string", default: "vit_fmnist,deit_fmnist,swin_fmnist,vits" },
      batch: { type: "string", default: "32" },
      reps: { type: "string", default: "10" },
      warmup: { type: "string", default: "3" },
      threads: { type: "string", default: "2" },
      calib: { type: "string", default: "32" },
      "vits-grid": { type: "string", default: "10" },
      json: { type: "string" },
      "save-graphs": { type: "string" },
    },
  });
  const num = (k: string, v: string | undefined) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new VitqError(`--${k}: expected a positive integer`);
    return n;
  };
  const batch = num("batch", values.batch), reps = num("reps", values.reps);
  const warmup = num("warmup", values.warmup), threads = num("threads", values.threads);
  const nCal = num("calib", values.calib), vitsGrid = num("vits-grid", values["vits-grid"]);
  const runtime = await createRuntime("node", threads);
  const env = await envInfo();
  const load = await Deno.readTextFile("/proc/loadavg").catch(() => "?");
  console.log(`cpu: ${env.cpu}, ${env.cores} cores; ${runtime.version}; ${threads} threads`);
  console.log(`load average at start: ${load.split(" ").slice(0, 3).join(" ")}`);
  const out: Record<string, Timed[]> = {};
  for (const m of values.models!.split(",").map((s) => s.trim()).filter(Boolean)) {
    let graph: Graph, calib: ImageSource;
    if (m === "vits") {
      graph = buildVitGraph(VIT_S, 0);
      calib = randomImages(VIT_S, Math.min(nCal, 8));
    } else {
      const model = await resolveModel(m, "--models");
      graph = await Graph.load(model.path);
      const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
      const idx = new Rng(0).shuffle(Array.from({ length: train.ids.length }, (_, i) => i));
      calib = makeSource(train, idx.slice(0, nCal), model.card);
    }
    const sites = findSites(graph, m);
    const fpBytes = graph.toBytes();
    const ctx = async (bits: Bits, options: Record<string, unknown>) =>
      ({
        graph,
        sites,
        calib,
        bits,
        runtime,
        options,
        batchSize: Math.min(32, calib.length),
        seed: 0,
        modelHash: await sha256Hex(fpBytes),
        calibHash: await sha256Hex(`${m} calib ${nCal}`),
        log: () => {},
      }) as unknown as QuantContext;
    const t0 = performance.now();
    const mm8 = await minmax.quantize(await ctx({ w: 8, a: 8 }, { ...minmax.defaults }));
    const mm4 = await minmax.quantize(await ctx({ w: 4, a: 4 }, { ...minmax.defaults }));
    const pOpts = m === "vits"
      ? { ...ptq4vit.defaults, n: vitsGrid, rounds: 1 }
      : { ...ptq4vit.defaults };
    const p8 = await ptq4vit.quantize(await ctx({ w: 8, a: 8 }, pOpts));
    const lowerIvit = (variant: "reference" | "paper") =>
      buildIntegerProgram(
        { runtime, graph, sites, calib, batchSize: Math.min(32, calib.length) },
        { variant, wBits: 8, aBits: 8, source: m },
      );
    const built = await lowerIvit("reference");
    const chunk = batchChunkFor(built.dims.values());
    const ivit = emitFloatWrapper(built.program, { batchChunk: chunk });
    // the paper's variant: 8-bit everywhere (one MatMulInteger for A·V, 8-bit residual stream)
    const ivitPaper = emitFloatWrapper((await lowerIvit("paper")).program, { batchChunk: chunk });
    console.log(`${m}: quantized in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    const dims = await coverageShapes(runtime, graph, sites, calib);
    // the deploy graphs as the bench evaluates, times and saves them (chunked where it pays)
    const deployed = async (label: string, q: QuantizedModel): Promise<Row> => {
      const d = await chunkedDeploy(runtime, q.deployable!.graph, dims, calib);
      return [d.chunk ? `${label}, chunks of ${d.chunk}` : label, d.graph.toBytes(), q];
    };
    type Row = [string, Uint8Array, QuantizedModel?];
    const graphs: Row[] = [
      ["FP32", fpBytes],
      ["minmax W8A8 fake-quant", mm8.graph.toBytes()],
      await deployed("minmax W8A8 deploy", mm8),
      await deployed("minmax W4A4 deploy", mm4),
      await deployed("PTQ4ViT W8A8 deploy", p8),
      ["I-ViT W8A8 integer-only", ivit.toBytes()],
      ["I-ViT paper (8-bit) integer-only", ivitPaper.toBytes()],
    ];
    // the batch chunking I-ViT's graph gets (core/onnx/chunk.ts) applied alike to FP32: the
    // like-for-like comparison (chunking speeds it up too); and PTQ4ViT's deploy graph unchunked
    const fpChunked = graphs.length;
    if (chunk) {
      graphs.push(
        [`FP32, chunks of ${chunk}`, chunkBatch(graph, chunk).toBytes()],
        ["PTQ4ViT W8A8 deploy, unchunked", p8.deployable!.graph.toBytes(), p8],
      );
    }
    const saveDir = values["save-graphs"];
    if (saveDir) {
      await Deno.mkdir(saveDir, { recursive: true });
      for (const [i, g] of graphs.entries()) {
        await Deno.writeFile(`${saveDir}/${m}_${i}.onnx`, g[1]);
      }
    }
    const speeds = await measureInterleaved(runtime, graphs.map((g) => g[1]), calib.shape, {
      batch,
      repetitions: reps,
      warmup,
    });
    const rows: Timed[] = [];
    const fmt = (r: Speedup, what: string) => `${formatSpeedup(r)} ${what}`;
    for (const [i, [name, bytes, q]] of graphs.entries()) {
      const row: Timed = {
        graph: name,
        bytes: bytes.length,
        ips: speeds[i].ips,
        ratio: pairedSpeedup(speeds[0], speeds[i]),
        ...(chunk ? { ratioChunked: pairedSpeedup(speeds[fpChunked], speeds[i]) } : {}),
        latMedMs: speeds[i].latMedMs,
      };
      if (q?.deployable) {
        const cov = integerCoverage(graph, q.deployable.graph, sites, dims);
        row.intMacShare = cov.integerMacs / cov.totalMacs;
        row.kernels = integerKernels(await fusedOps(runtime, bytes));
      }
      rows.push(row);
      console.log(
        `  ${name.padEnd(24)} ${row.ips.toFixed(1).padStart(8)} img/s @ ${batch} (${
          fmt(row.ratio, "FP32")
        }${
          row.ratioChunked !== undefined ? `, ${fmt(row.ratioChunked, "FP32 chunked")}` : ""
        }), batch-1 ${row.latMedMs.toFixed(2)} ms, ${(row.bytes / 1e6).toFixed(2)} MB (${
          (row.bytes / fpBytes.length).toFixed(2)
        }x)${
          row.intMacShare !== undefined
            ? `, integer MACs ${(100 * row.intMacShare).toFixed(1)} %, ${row.kernels}`
            : ""
        }`,
      );
    }
    out[m] = rows;
  }
  const loadEnd = await Deno.readTextFile("/proc/loadavg").catch(() => "?");
  console.log(`load average at end: ${loadEnd.split(" ").slice(0, 3).join(" ")}`);
  if (values.json) {
    await Deno.writeTextFile(
      values.json,
      JSON.stringify(
        { cpu: env.cpu, cores: env.cores, threads, batch, reps, load, loadEnd, out },
        null,
        2,
      ) +
        "\n",
    );
  }
}

if (import.meta.main) await runCli(main);
