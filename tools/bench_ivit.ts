/**
 * Speed of I-ViT's integer-only ONNX graph against the FP32 graph, both run
 * by onnxruntime-node on the CPU: images/s at a batch size (median batch
 * time) and batch-1 latency (median, p90), after warm-up runs, with a fixed
 * thread count (bench/speed.ts). The integer graph is timed as the float
 * wrapper the runner evaluates (QuantizeLinear → integer operators → Cast·scale).
 *
 * Models: `shipped` (models/vit_fmnist.onnx, calibrated on shipped
 * calibration images) and `vits` (a ViT-S sized graph with random weights:
 * dim 384, 6 heads, 12 blocks, MLP 1536, 197 tokens, 224×224×3, patch 16,
 * calibrated on random images). The CPU's model name and the instruction-set
 * flags that decide integer matmul speed (AVX-512 VNNI, AVX-VNNI, AMX) are
 * recorded from /proc/cpuinfo.
 *
 *     deno run -A tools/bench_ivit.ts [--models shipped,vits] [--batch 100]
 *       [--reps 5] [--warmup 2] [--threads 2] [--variant reference]
 *       [--calib 32] [--vits-batch 100] [--json out.json]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { envInfo } from "../bench/env.ts";
import { resolveModel } from "../core/models.ts";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { createRuntime, type ImageSource } from "../core/runtime/runtime.ts";
import { measureSpeed, type Speed } from "../bench/speed.ts";
import { Rng } from "../core/rng.ts";
import { runCli, VitqError } from "../core/errors.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { buildIntegerProgram } from "../core/ivit/build.ts";
import { emitFloatWrapper } from "../core/ivit/emit.ts";
import { batchChunkFor, chunkBody } from "../core/onnx/chunk.ts";
import type { IvitVariant } from "../core/ivit/lower.ts";
import { buildVitGraph, VIT_S } from "../core/ivit/vits.ts";

/** One timed graph. */
interface Row {
  model: string;
  graph: "fp32" | "ivit-int";
  nodes: number;
  speed: Speed;
}

/** Instruction-set flags relevant to int8 matmuls, as present/absent. */
async function isaFlags(): Promise<Record<string, boolean>> {
  const want = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"];
  let flags = new Set<string>();
  try {
    const info = await Deno.readTextFile("/proc/cpuinfo");
    flags = new Set((info.match(/flags\s*:\s*(.+)/)?.[1] ?? "").split(/\s+/));
  } catch { /* not Linux */ }
  return Object.fromEntries(want.map((f) => [f, flags.has(f)]));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      models: { type: "string", default: "shipped,vits" },
      batch: { type: "string", default: "100" },
      "vits-batch": { type: "string" },
      reps: { type: "string", default: "5" },
      warmup: { type: "string", default: "2" },
      threads: { type: "string", default: "2" },
      variant: { type: "string", default: "reference" },
      calib: { type: "string", default: "32" },
      json: { type: "string" },
    },
  });
  const num = (k: string, v: string | undefined) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new VitqError(`--${k}: expected a positive integer`);
    return n;
  };
  const batch = num("batch", values.batch);
  const vitsBatch = num("vits-batch", values["vits-batch"] ?? values.batch);
  const reps = num("reps", values.reps), warmup = num("warmup", values.warmup);
  const threads = num("threads", values.threads), nCal = num("calib", values.calib);
  const variant = values.variant as IvitVariant;
  if (variant !== "reference" && variant !== "paper") {
    throw new VitqError(`--variant: expected reference or paper`);
  }
  const models = values.models!.split(",").map((s) => s.trim()).filter(Boolean);
  const runtime = await createRuntime("node", threads);
  const env = await envInfo();
  const isa = await isaFlags();
  console.log(`cpu: ${env.cpu}, ${env.cores} cores; ${runtime.version}; ${threads} threads`);
  console.log(`isa: ${Object.entries(isa).map(([k, v]) => `${k}=${v ? "yes" : "no"}`).join(" ")}`);
  const rows: Row[] = [];
  for (const m of models) {
    let graph: Graph, calib: ImageSource, b: number;
    if (m === "shipped") {
      const model = await resolveModel("vit_fmnist", "--models");
      graph = await Graph.load(model.path);
      const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
      const idx = new Rng(0).shuffle(Array.from({ length: train.ids.length }, (_, i) => i));
      calib = makeSource(train, idx.slice(0, nCal), model.card);
      b = batch;
    } else if (m === "vits") {
      graph = buildVitGraph(VIT_S, 0);
      const shape = [VIT_S.channels, VIT_S.img, VIT_S.img];
      const per = shape[0] * shape[1] * shape[2];
      const n = Math.min(nCal, 8);
      const rng = new Rng(1);
      const data = Float32Array.from({ length: n * per }, () => (rng.next() * 2 - 1) * 2);
      calib = {
        length: n,
        shape,
        slice: (s, e) => Promise.resolve(data.subarray(s * per, e * per)),
      };
      b = vitsBatch;
    } else throw new VitqError(`--models: unknown model "${m}" (expected shipped, vits)`);
    const t0 = performance.now();
    const built = await buildIntegerProgram(
      { runtime, graph, sites: findSites(graph, m), calib, batchSize: Math.min(100, calib.length) },
      { variant, wBits: 8, aBits: 8, source: m },
    );
    const batchChunk = batchChunkFor(built.dims.values());
    const wrapper = emitFloatWrapper(built.program, { batchChunk });
    console.log(
      `${m}: lowered in ${
        ((performance.now() - t0) / 1000).toFixed(1)
      } s, ${graph.nodes.length} FP nodes -> ${
        (chunkBody(wrapper) ?? wrapper).nodes.length
      } integer-graph nodes${batchChunk ? `, run ${batchChunk} images at a time` : ""}`,
    );
    const opts = { batch: b, repetitions: reps, warmup };
    for (const [label, g] of [["fp32", graph], ["ivit-int", wrapper]] as const) {
      const speed = await measureSpeed(runtime, g, calib.shape, opts);
      rows.push({ model: m, graph: label, nodes: g.nodes.length, speed });
      console.log(
        `  ${label.padEnd(9)} ${
          speed.ips.toFixed(1).padStart(8)
        } img/s @ batch ${b}   batch-1 latency median ${speed.latMedMs.toFixed(2)} ms, p90 ${
          speed.latP90Ms.toFixed(2)
        } ms`,
      );
    }
    const fp = rows.at(-2)!.speed, iq = rows.at(-1)!.speed;
    console.log(
      `  integer/fp32: throughput ${(iq.ips / fp.ips).toFixed(2)}x, batch-1 latency ${
        (iq.latMedMs / fp.latMedMs).toFixed(2)
      }x`,
    );
  }
  if (values.json) {
    await Deno.writeTextFile(
      values.json,
      JSON.stringify(
        {
          cpu: env.cpu,
          cores: env.cores,
          cpuFlags: env.cpuFlags,
          isa,
          runtime: runtime.version,
          threads,
          variant,
          rows,
        },
        null,
        2,
      ) + "\n",
    );
  }
}

if (import.meta.main) await runCli(main);
