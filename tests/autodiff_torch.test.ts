/**
 * Whole-model gradients of the shipped ViT (models/vit_fmnist.onnx) against
 * PyTorch autograd on the same weights.
 *
 * The fixture tests/fixtures/vit_fmnist_grads.{json,bin} is written by
 * `tools/make_grad_fixtures.py`, which rebuilds the network of
 * models/train_fmnist.py in PyTorch, loads the ONNX weights into it and
 * computes, in float64, on a few Fashion-MNIST test images plus fixed-seed
 * noise: the cross-entropy to the labels and the KL to the model's own
 * probabilities on the clean images, their gradients with respect to the
 * graph input, linear outputs (named by vitq site id), the head input and the
 * patch embedding weight, and the forward values of those activations. Here
 * the same losses go through {@link buildGradientGraph} and ONNX Runtime
 * (float32) and everything is compared. When the model is retrained the
 * fixture's sha256 no longer matches and the test says how to regenerate it.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { buildGradientGraph } from "../core/autodiff/backward.ts";
import { sha256Hex } from "../core/hash.ts";
import type { TensorData } from "../core/runtime/runtime.ts";
import { FIXTURES, runtime, SHIPPED_MODEL } from "./helpers.ts";

/**
 * Tolerances, float32 ONNX Runtime against float64 torch. Errors are relative
 * in Euclidean norm over the whole tensor, ||x - x_ref|| / ||x_ref|| (the
 * float32 storage of the reference alone contributes ~3e-8).
 *
 * Forward values: float32 rounding (eps = 6e-8) over ~6 blocks of a few dozen
 * ops each; measured <= 4e-7 on the logits and activations compared. 1e-5
 * leaves 25x for other kernels, thread counts or a retrained model with larger
 * activations, while a wrong site (another layer's output, the input instead
 * of the output of a linear) is off by order 1 (swapping b5.proj and b5.fc2:
 * 1.8).
 *
 * Gradients: the backward pass roughly doubles the chain and partly cancels
 * (softmax, LayerNorm), measured <= 6e-7 (the gradient at the graph input, the
 * longest chain). 1e-4 is ~170x that, and the slack is not needed for float32
 * noise: a wrong rule, a transposed layout, a wrong batch normalization of a
 * loss or a wrong site mapping gives 1e-1..1; even subtle bugs are caught
 * (an Erf derivative constant 2.5% off: 7e-3 at the input; the loss scaled by
 * 1.001: 1e-3).
 *
 * Losses: relative error 1e-5 (float32 LogSoftmax and a few dozen-term
 * reductions; measured <= 4e-8).
 */
const TOL = { forward: 1e-5, grad: 1e-4, loss: 1e-5 };

const FIXTURE = `${FIXTURES}vit_fmnist_grads`;

/** Index of the fixture (see tools/make_grad_fixtures.py). */
interface Fixture {
  command: string;
  model: string;
  model_sha256: string;
  images: { indices: number[]; labels: number[] };
  losses: Record<"ce" | "kl", { kind: "cross_entropy" | "kl"; target: string; value: number }>;
  activations: { name: string; site: string; value: "input" | "output" }[];
  weights: { name: string; site: string; value: "weight" }[];
  bin: string;
  tensors: Record<string, { shape: number[]; offset: number }>;
}

/** The fixture and a reader of its tensors; fails when it is not for the shipped model. */
async function loadFixture(): Promise<{ fx: Fixture; get: (key: string) => TensorData }> {
  const fx: Fixture = JSON.parse(await Deno.readTextFile(`${FIXTURE}.json`));
  const sha = await sha256Hex(await Deno.readFile(SHIPPED_MODEL));
  if (sha !== fx.model_sha256) {
    throw new Error(
      `tests/fixtures/vit_fmnist_grads.json was made for a model with sha256 ${fx.model_sha256}, ` +
        `but models/vit_fmnist.onnx has sha256 ${sha} (retrained?). Regenerate the fixture ` +
        `from the repository root with:\n\n    ${fx.command}\n`,
    );
  }
  const bytes = await Deno.readFile(`${FIXTURES}${fx.bin}`);
  const all = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const get = (key: string): TensorData => {
    const t = fx.tensors[key];
    if (!t) throw new Error(`fixture has no tensor "${key}"`);
    const n = t.shape.reduce((a, b) => a * b, 1);
    return { data: all.slice(t.offset, t.offset + n), dims: t.shape };
  };
  return { fx, get };
}

/** Relative error in norm and max absolute error of `x` against `ref`. */
function compare(x: TensorData, ref: TensorData, what: string): { rel: number; maxAbs: number } {
  assert.deepEqual(x.dims, ref.dims, `${what}: shape`);
  let d2 = 0, r2 = 0, maxAbs = 0;
  for (let i = 0; i < ref.data.length; i++) {
    const d = x.data[i] - ref.data[i];
    d2 += d * d;
    r2 += ref.data[i] * ref.data[i];
    maxAbs = Math.max(maxAbs, Math.abs(d));
  }
  assert.ok(r2 > 0, `${what}: the reference is all zeros`);
  return { rel: Math.sqrt(d2 / r2), maxAbs };
}

const fmt = (e: { rel: number; maxAbs: number }) =>
  `rel ${e.rel.toExponential(1)} max ${e.maxAbs.toExponential(1)}`;

Deno.test("torch reference: ORT on the clean images gives the FP probabilities the KL targets", async () => {
  const { get } = await loadFixture();
  const rt = await runtime();
  const s = await rt.createSession(await Graph.load(SHIPPED_MODEL));
  const { logits } = await s.run({ input: get("inputs.clean") });
  await s.release();
  const [n, c] = logits.dims;
  const probs = new Float32Array(n * c);
  for (let i = 0; i < n; i++) {
    const row = logits.data.subarray(i * c, (i + 1) * c);
    const m = Math.max(...row);
    const z = row.reduce((a, v) => a + Math.exp(v - m), 0);
    row.forEach((v, j) => (probs[i * c + j] = Math.exp(v - m) / z));
  }
  const e = compare({ data: probs, dims: logits.dims }, get("targets.kl"), "probabilities");
  console.log(`clean probabilities: ${fmt(e)}`);
  assert.ok(e.rel < TOL.forward, `clean probabilities differ from torch's: ${fmt(e)}`);
});

for (const kind of ["ce", "kl"] as const) {
  Deno.test(`whole-model ${kind} gradients of the shipped ViT match PyTorch autograd`, async () => {
    const { fx, get } = await loadFixture();
    const g = await Graph.load(SHIPPED_MODEL);
    const sites = new Map(findSites(g).map((s) => [s.id, s]));
    const valueOf = (site: string, value: "input" | "output" | "weight") => {
      const s = sites.get(site);
      assert.ok(s, `no site ${site} in ${fx.model}`);
      const v = s[value];
      assert.ok(v, `site ${site} has no ${value}`);
      return v;
    };
    const acts = fx.activations.map((a) => ({ ...a, v: valueOf(a.site, a.value) }));
    const weights = fx.weights.map((w) => ({ ...w, v: valueOf(w.site, w.value) }));
    const input = g.inputNames[0];
    const wrt = [input, ...acts.map((a) => a.v), ...weights.map((w) => w.v)];
    const refs = [
      `grad.${kind}.input`,
      ...acts.map((a) => `grad.${kind}.${a.name}`),
      ...weights.map((w) => `grad.${kind}.${w.name}`),
    ];
    const loss = fx.losses[kind];
    const logits = g.outputNames[0];
    const gg = buildGradientGraph(g, {
      loss: { kind: loss.kind, logits, target: "target" },
      wrt,
      outputs: [logits, ...acts.map((a) => a.v)],
    });
    const rt = await runtime();
    const s = await rt.createSession(gg.graph, `vit_fmnist ${kind} gradients`);
    const out = await s.run({ [input]: get("inputs.perturbed"), target: get(loss.target) });
    await s.release();

    const report: string[] = [];
    const lossRel = Math.abs(out[gg.lossName].data[0] - loss.value) / Math.abs(loss.value);
    report.push(
      `loss ${out[gg.lossName].data[0]} (torch ${loss.value}, rel ${lossRel.toExponential(1)})`,
    );
    assert.ok(lossRel < TOL.loss, `${kind} loss: ${report[0]}`);
    const fwd: [string, string][] = [
      ["logits", logits],
      ...acts.map((a) => [a.name, a.v] as [string, string]),
    ];
    for (const [name, v] of fwd) {
      const e = compare(out[v], get(`forward.${name}`), `forward ${name}`);
      report.push(`fwd ${name} ${fmt(e)}`);
      assert.ok(e.rel < TOL.forward, `forward ${name} (${v}) is not torch's: ${fmt(e)}`);
    }
    wrt.forEach((v, i) => {
      const e = compare(out[gg.gradNames.get(v)!], get(refs[i]), refs[i]);
      report.push(`${refs[i].slice(`grad.${kind}.`.length)} ${fmt(e)}`);
      assert.ok(e.rel < TOL.grad, `${refs[i]} (d loss / d ${v}): ${fmt(e)}`);
    });
    console.log(`${kind}:\n  ${report.join("\n  ")}`);
  });
}
