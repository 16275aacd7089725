/**
 * Process CPU seconds (user + system, ONNX Runtime threads included) of one
 * PTQ4ViT and one BasePTQ calibration at W4A4 on each shipped model, default
 * options (per-head attention-matmul steps) against the options that reproduce
 * vitq's earlier search (`matmulGranularity: "tensor"`, `softmaxPartner:
 * "quantized"`, `groupCosine: "sequential"`), in the same process with the
 * calibration statistics cached (one warm-up call first), so the figures compare
 * the searches and hold on a loaded machine where wall time does not.
 *
 *     deno run -A tools/bench_ptq4vit_cpu.ts [vit_fmnist,deit_fmnist,swin_fmnist]
 *
 * @module
 */
import process from "node:process";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { createRuntime } from "../core/runtime/runtime.ts";
import { resolveModel } from "../core/models.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { drawCalibration, hashIds } from "../datasets/subset.ts";
import { sha256Hex } from "../core/hash.ts";
import { baseptq, ptq4vit } from "../methods/ptq4vit.ts";
const rt = await createRuntime("node", 1);
const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
const indices = drawCalibration(train.ids.map((_, i) => i), 32, 0);
const old = { matmulGranularity: "tensor", softmaxPartner: "quantized", groupCosine: "sequential" };
for (const name of (Deno.args[0] ?? "vit_fmnist,deit_fmnist,swin_fmnist").split(",")) {
  const model = await resolveModel(name, "model");
  const graph = await Graph.load(model.path);
  const base = {
    graph,
    sites: findSites(graph),
    calib: makeSource(train, indices, model.card),
    bits: { w: 4, a: 4 },
    runtime: rt,
    batchSize: 100,
    seed: 0,
    log: () => {},
    modelHash: await sha256Hex(await Deno.readFile(model.path)),
    calibHash: await hashIds(indices.map((i) => train.ids[i])),
  };
  for (const m of [ptq4vit, baseptq]) {
    await m.quantize({ ...base, options: { ...m.defaults, n: 2, rounds: 1 } }); // warm the cache
    for (const [tag, extra] of [["new", {}], ["old", old]] as const) {
      const c0 = process.cpuUsage(), t0 = performance.now();
      await m.quantize({ ...base, options: { ...m.defaults, ...extra } });
      const c = process.cpuUsage(c0);
      console.log(
        `${name} ${m.name} ${tag}: cpu ${((c.user + c.system) / 1e6).toFixed(1)} s, wall ${
          ((performance.now() - t0) / 1000).toFixed(1)
        } s`,
      );
    }
  }
}
