/**
 * Writes the PTQ4ViT parity fixture: the steps PTQ4ViT and BasePTQ (default
 * options) choose on the shipped ViT at W4A4 with the calibration images of
 * seed 0 (32 images drawn from the shipped train sample, as a manifest with
 * `"calibration": {"size": 32, "seeds": [0], "split": "train"}` draws them),
 * per site, tensor and group (heads of the attention-matmul operands, thirds of
 * the qkv weight, channels of the patch-embedding weight).
 *
 *     deno run -A tools/make_ptq4vit_steps.ts [--out tests/fixtures/ptq4vit_steps_vit_w4a4.json]
 *
 * `tests/ptq4vit_parity.test.ts` recomputes a subset of the sites and fails
 * naming the site whose step moved. Regenerate only when a change is meant to
 * move steps, and say why in the commit.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { createRuntime } from "../core/runtime/runtime.ts";
import { resolveModel } from "../core/models.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { drawCalibration, hashIds } from "../datasets/subset.ts";
import { sha256Hex } from "../core/hash.ts";
import { searchSteps } from "../methods/ptq4vit.ts";
import { baseptq, ptq4vit } from "../methods/ptq4vit.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { out: { type: "string", default: "tests/fixtures/ptq4vit_steps_vit_w4a4.json" } },
});

const model = await resolveModel("vit_fmnist", "model");
const graph = await Graph.load(model.path);
const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
const indices = drawCalibration(train.ids.map((_, i) => i), 32, 0);
const rt = await createRuntime("node", 2);
const out: Record<string, unknown> = {
  _comment:
    "Steps chosen by vitq (default options) on vit_fmnist, W4A4, calibration seed 0 (32 train-sample images); written by tools/make_ptq4vit_steps.ts, checked by tests/ptq4vit_parity.test.ts.",
  model: "vit_fmnist",
  bits: { w: 4, a: 4 },
  calibIds: indices.map((i) => train.ids[i]),
};
for (const m of [ptq4vit, baseptq]) {
  const t0 = performance.now();
  const steps = await searchSteps({
    graph,
    sites: findSites(graph),
    calib: makeSource(train, indices, model.card),
    bits: { w: 4, a: 4 },
    runtime: rt,
    options: { ...m.defaults },
    batchSize: 100,
    seed: 0,
    modelHash: await sha256Hex(await Deno.readFile(model.path)),
    calibHash: await hashIds(out.calibIds as string[]),
    log: (msg) => console.log(`${m.name} ${((performance.now() - t0) / 1000).toFixed(1)} s ${msg}`),
  });
  console.log(`${m.name}: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  out[m.name] = steps;
}
await Deno.writeTextFile(values.out, JSON.stringify(out, null, 1) + "\n");
console.log(`wrote ${values.out}`);
