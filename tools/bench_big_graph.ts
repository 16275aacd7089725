/**
 * Big-graph benchmark: load a ViT-B sized ONNX file (random weights, about 350 MB),
 * find its quantization sites, rewrite it (fake-quantize every linear weight and
 * insert activation quantizers, as the minmax baseline's graph does), encode it,
 * and report the peak resident memory against the file size (target: at most 3x).
 *
 *     deno run -A tools/bench_big_graph.ts [/tmp/vit_b_random.onnx]
 *
 * The file is made by tools/make_big_graph.py when missing.
 *
 * @module
 */
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { applyPlan } from "../core/quant/apply.ts";
import { absMax, symmetric, symmetricScale } from "../core/quant/uniform.ts";
import { standardActSlots } from "../methods/baselines.ts";
import { memoryMiB } from "../bench/env.ts";

const path = Deno.args[0] ?? "/tmp/vit_b_random.onnx";
try {
  await Deno.stat(path);
} catch {
  const out = await new Deno.Command("/usr/bin/python3", {
    args: [new URL("./make_big_graph.py", import.meta.url).pathname, path],
  }).output();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
}

const size = (await Deno.stat(path)).size;
const t0 = performance.now();
const g = await Graph.load(path);
const tLoad = performance.now();
const sites = findSites(g, path);
const linears = sites.filter((s) => s.kind === "linear");
const weights = linears.map((site) => {
  const w = g.initializers.get(site.weight!)!.float32();
  return { site, q: symmetric(8, symmetricScale(absMax(w), 8)) };
});
const acts = standardActSlots(sites).map((s) => ({
  site: s.site,
  slot: s.slot,
  q: symmetric(8, 0.05),
}));
// in place: the FP weights are not needed afterwards, so no second copy is made
const { graph } = applyPlan(g, weights, acts, { inPlace: true });
const tRewrite = performance.now();
const bytes = graph.toBytes();
const tEncode = performance.now();
const peak = memoryMiB() * 2 ** 20;
console.log(
  `file ${
    (size / 2 ** 20).toFixed(0)
  } MiB, ${sites.length} sites (${linears.length} linear); load ${
    ((tLoad - t0) / 1000).toFixed(1)
  } s, sites+rewrite ${((tRewrite - tLoad) / 1000).toFixed(1)} s, encode ${
    ((tEncode - tRewrite) / 1000).toFixed(1)
  } s (${(bytes.length / 2 ** 20).toFixed(0)} MiB); peak RSS ${(peak / 2 ** 20).toFixed(0)} MiB = ${
    (peak / size).toFixed(2)
  }x the file size`,
);
