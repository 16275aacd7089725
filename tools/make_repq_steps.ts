/**
 * Writes the RepQ-ViT parity fixture: every quantizer RepQ-ViT (default
 * options) chooses on the shipped ViT at W4A4 with the calibration images of
 * seed 0 (32 images drawn from the shipped train sample, as a manifest with
 * `"calibration": {"size": 32, "seeds": [0], "split": "train"}` draws them):
 * per activation quantizer its step(s) and zero point(s) (the log-√2 δ for
 * the softmax operand; for the post-LayerNorm ones also the per-channel
 * calibration before the reparameterization), per weight its per-channel
 * steps and zero points (after the reparameterization for qkv and fc1).
 *
 *     deno run -A tools/make_repq_steps.ts [--out tests/fixtures/repq_steps_vit_fmnist_w4a4.json]
 *
 * `tests/repq.test.ts` recomputes them and fails naming the site whose step
 * moved. Regenerate only when a change is meant to move steps, and say why in
 * the commit.
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
import { repq, repqSteps, runRepq } from "../methods/repq.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { out: { type: "string", default: "tests/fixtures/repq_steps_vit_fmnist_w4a4.json" } },
});

const model = await resolveModel("vit_fmnist", "model");
const graph = await Graph.load(model.path);
const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
const indices = drawCalibration(train.ids.map((_, i) => i), 32, 0);
const calibIds = indices.map((i) => train.ids[i]);
const rt = await createRuntime("node", 2);
const t0 = performance.now();
const r = await runRepq({
  graph,
  sites: findSites(graph),
  calib: makeSource(train, indices, model.card),
  bits: { w: 4, a: 4 },
  runtime: rt,
  options: { ...repq.defaults },
  batchSize: 100,
  seed: 0,
  modelHash: await sha256Hex(await Deno.readFile(model.path)),
  calibHash: await hashIds(calibIds),
  log: () => {},
});
console.log(`repq: ${((performance.now() - t0) / 1000).toFixed(1)} s, ${r.passes} passes`);
const out = {
  _comment:
    "Quantizers chosen by vitq's repq (default options) on vit_fmnist, W4A4, calibration seed 0 (32 train-sample images); written by tools/make_repq_steps.ts, checked by tests/repq.test.ts.",
  model: "vit_fmnist",
  bits: { w: 4, a: 4 },
  calibIds,
  ...repqSteps(r),
};
await Deno.writeTextFile(values.out, JSON.stringify(out, null, 1) + "\n");
console.log(`wrote ${values.out}`);
