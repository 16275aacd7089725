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
import { repq, repqSteps, runRepq } from "../methods/repq.ts";
import { fixtureOut, paritySetting, writeFixture } from "./parity_fixture.ts";

const path = fixtureOut("tests/fixtures/repq_steps_vit_fmnist_w4a4.json");
const setting = await paritySetting();
const t0 = performance.now();
const r = await runRepq(await setting.context({ ...repq.defaults }));
console.log(`repq: ${((performance.now() - t0) / 1000).toFixed(1)} s, ${r.passes} passes`);
await writeFixture(
  path,
  "Quantizers chosen by vitq's repq (default options) on vit_fmnist, W4A4, calibration seed 0 (32 train-sample images); written by tools/make_repq_steps.ts, checked by tests/repq.test.ts.",
  setting,
  repqSteps(r),
);
