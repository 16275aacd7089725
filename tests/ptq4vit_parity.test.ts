/**
 * Parity that stays: the steps PTQ4ViT and BasePTQ choose on the shipped ViT at
 * W4A4 (calibration seed 0) are committed in
 * `tests/fixtures/ptq4vit_steps_vit_w4a4.json` (written by
 * `tools/make_ptq4vit_steps.ts` from a whole-model calibration). Calibration is
 * parallel (every site on FP data), so recomputing a subset of the sites gives
 * the same steps; this test recomputes one block's sites of every kind (qkv with
 * its thirds, both attention matmuls per head, the twin quantizers), the
 * per-channel patch embedding and the head, and fails naming the site, tensor and
 * group whose step moved (relative tolerance 1e-6).
 */
import assert from "node:assert/strict";
import { Graph } from "../core/onnx/graph.ts";
import { resolveModel } from "../core/models.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { drawCalibration } from "../datasets/subset.ts";
import { baseptq, ptq4vit, searchSteps, type StepRecord } from "../methods/ptq4vit.ts";
import { FIXTURES, quantContext } from "./helpers.ts";

const fixture = JSON.parse(
  await Deno.readTextFile(`${FIXTURES}ptq4vit_steps_vit_w4a4.json`),
) as Record<string, unknown> & { calibIds: string[] };

async function recompute(
  method: typeof ptq4vit,
  sites: string[],
): Promise<StepRecord[]> {
  const model = await resolveModel("vit_fmnist", "model");
  const graph = await Graph.load(model.path);
  const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
  const indices = drawCalibration(train.ids.map((_, i) => i), 32, 0);
  assert.deepEqual(indices.map((i) => train.ids[i]), fixture.calibIds, "calibration images");
  const c = await quantContext({
    graph,
    calib: makeSource(train, indices, model.card),
    calibLabel: fixture.calibIds.join("\n"),
    bits: { w: 4, a: 4 },
    options: { ...method.defaults },
    batchSize: 100,
  });
  return await searchSteps(c, (s) => sites.includes(s.id));
}

function compare(method: string, got: StepRecord[], sites: string[]): void {
  const want = (fixture[method] as StepRecord[]).filter((r) => sites.includes(r.site));
  const key = (r: StepRecord) => `${r.site} ${r.tensor}`;
  assert.deepEqual(got.map(key), want.map(key), `${method}: searched tensors`);
  for (const [i, w] of want.entries()) {
    const g = got[i];
    assert.equal(g.quantizer, w.quantizer, `${method} ${key(w)}: quantizer`);
    assert.equal(g.steps.length, w.steps.length, `${method} ${key(w)}: number of groups`);
    w.steps.forEach((s, j) => {
      assert.ok(
        Math.abs(g.steps[j] - s) <= 1e-6 * Math.abs(s),
        `${method} ${key(w)} group ${j}: step ${g.steps[j]}, fixture ${s}`,
      );
    });
  }
}

Deno.test("PTQ4ViT steps on the shipped ViT (W4A4, seed 0) match the committed fixture", async () => {
  const sites = ["patch_embed", "b0.qkv", "b0.qk", "b0.av", "b0.fc2", "head"];
  compare("ptq4vit", await recompute(ptq4vit, sites), sites);
});

Deno.test("BasePTQ steps on the shipped ViT (W4A4, seed 0) match the committed fixture", async () => {
  const sites = ["patch_embed", "b0.qkv", "b0.qk", "b0.av"];
  compare("baseptq", await recompute(baseptq, sites), sites);
});
