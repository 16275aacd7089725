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
import { baseptq, ptq4vit, searchSteps } from "../methods/ptq4vit.ts";
import { fixtureOut, paritySetting, writeFixture } from "./parity_fixture.ts";

const path = fixtureOut("tests/fixtures/ptq4vit_steps_vit_w4a4.json");
const setting = await paritySetting();
const chosen: Record<string, unknown> = {};
for (const m of [ptq4vit, baseptq]) {
  const t0 = performance.now();
  const log = (msg: string) =>
    console.log(`${m.name} ${((performance.now() - t0) / 1000).toFixed(1)} s ${msg}`);
  chosen[m.name] = await searchSteps(await setting.context({ ...m.defaults }, log));
  console.log(`${m.name}: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}
await writeFixture(
  path,
  "Steps chosen by vitq (default options) on vit_fmnist, W4A4, calibration seed 0 (32 train-sample images); written by tools/make_ptq4vit_steps.ts, checked by tests/ptq4vit_parity.test.ts.",
  setting,
  chosen,
);
