/**
 * Whole-model gradients: cross-entropy gradients of the tiny ViT (opset 17 and
 * its decomposed-LayerNorm opset-13 export) and Swin fixtures with respect to
 * activations and weights, against central finite differences.
 */
import assert from "node:assert/strict";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import {
  addFloatInput,
  buildGradientGraph,
  initializersToInputs,
  type LossSpec,
} from "../core/autodiff/backward.ts";
import { minimize } from "../core/autodiff/adam.ts";
import { directionalDifference, dot } from "../core/autodiff/gradcheck.ts";
import { FIXTURES, randomData, runtime } from "./helpers.ts";

const N = 3;
/**
 * Directional derivatives <grad, d> against central differences of the float32
 * forward pass (step: 1% of the value's RMS along a random direction d). The
 * loss (~2.3) is accurate to a few float32 ulps (~1e-6) after ~100 ops, which
 * over a step 2h gives ~1e-4 absolute error in the difference quotient, and the
 * O(h^2) truncation term is smaller still; directional derivatives here are
 * 2e-3..0.3, so relative errors ~1e-3 are expected (observed <= 5e-4). The
 * error is measured against max(|fd|, |<g, d>|, ||g|| ||d|| / sqrt(n)), the
 * last being the typical size of a random-direction derivative, so a direction
 * with a near-zero projection does not turn float32 noise into a failure. A
 * wrong rule anywhere on the path gives errors of order 1.
 */
const TOL = 5e-3;

/** One-hot targets for N rows of 10 classes. */
function oneHot(labels: number[], c = 10): Float32Array {
  const t = new Float32Array(labels.length * c);
  labels.forEach((l, i) => (t[i * c + l] = 1));
  return t;
}

/** A copy of `g` where each value `v` in `names` is replaced by v + delta_v (a new input). */
function withDeltas(g: Graph, names: string[]): { graph: Graph; deltas: Map<string, string> } {
  const h = g.clone();
  const deltas = new Map<string, string>();
  for (const v of names) {
    const d = `delta::${v}`;
    addFloatInput(h, d, []);
    // the delta's shape comes from the feed; declare no shape
    h.inputs[h.inputs.length - 1].type.tensorType.shape = undefined;
    const moved = `${v}::perturbed`;
    for (const n of h.nodes) n.inputs = n.inputs.map((x) => (x === v ? moved : x));
    h.nodes.push({
      name: `perturb::${v}`,
      opType: "Add",
      domain: "",
      inputs: [v, d],
      outputs: [moved],
      attributes: [],
    });
    deltas.set(v, d);
  }
  return { graph: h, deltas };
}

async function checkModel(file: string) {
  const g = await Graph.load(`${FIXTURES}${file}`);
  const sites = findSites(g);
  const fc1 = sites.find((s) => s.role === "fc1")!;
  const qkv = sites.find((s) => s.role === "qkv")!;
  const patch = sites.find((s) => s.role === "patch_embed")!;
  const fc2 = sites.filter((s) => s.role === "fc2").at(-1)!;
  const wrt = [fc1.output, qkv.output, patch.weight!, fc2.weight!];
  const loss: LossSpec = { kind: "cross_entropy", logits: "logits", target: "target" };
  const t0 = performance.now();
  const gg = buildGradientGraph(g, { loss, wrt, outputs: [...wrt.slice(0, 2)] });
  const buildMs = performance.now() - t0;
  assert.deepEqual(gg.extraInputs, ["target"]);
  const rt = await runtime();
  const s = await rt.createSession(gg.graph);
  const input = { data: randomData(N * 28 * 28, 7), dims: [N, 1, 28, 28] };
  const target = { data: oneHot([3, 7, 1]), dims: [N, 10] };
  const out = await s.run({ input, target });
  await s.release();

  // finite differences on a copy where each wrt value gets an additive perturbation input
  const { graph: pg, deltas } = withDeltas(g, wrt);
  const fg = buildGradientGraph(pg, { loss, wrt: [] });
  const fs = await rt.createSession(fg.graph);
  const feeds: Record<string, { data: Float32Array; dims: number[] }> = { input, target };
  const shapes = new Map<string, number[]>();
  for (const w of wrt) {
    const val = out[w]?.dims ?? g.initializers.get(w)!.dims;
    shapes.set(w, val);
    const n = val.reduce((a, b) => a * b, 1);
    feeds[deltas.get(w)!] = { data: new Float32Array(n), dims: val };
  }
  const l0 = (await fs.run(feeds))[fg.lossName].data[0];
  assert.ok(Math.abs(l0 - out[gg.lossName].data[0]) < 1e-6, "same loss in both graphs");
  const report: string[] = [];
  for (const [k, w] of wrt.entries()) {
    const grad = out[gg.gradNames.get(w)!];
    assert.deepEqual(grad.dims, shapes.get(w), `${w}: gradient shape`);
    const ref = out[w]?.data ?? g.initializers.get(w)!.float32();
    const rms = Math.sqrt(dot(ref, ref) / ref.length);
    for (const seed of [100 + k, 200 + k]) {
      const d = randomData(grad.data.length, seed);
      // step: a perturbation of 1% of the value's RMS per element
      const h = 1e-2 * rms / Math.sqrt(dot(d, d) / d.length);
      const fd = await directionalDifference(fs, feeds, fg.lossName, { [deltas.get(w)!]: d }, h);
      const an = dot(grad.data, d);
      // a random direction can have an unluckily small projection; measure the error
      // against the typical size of <g, d> over random d as well, ||g|| ||d|| / sqrt(n)
      const typical = Math.sqrt(dot(grad.data, grad.data) * dot(d, d) / d.length);
      const rel = Math.abs(fd - an) / Math.max(Math.abs(fd), Math.abs(an), typical);
      report.push(`${w} ${rel.toExponential(1)}`);
      assert.ok(rel < TOL, `${file} ${w}: analytic ${an} vs finite difference ${fd} (rel ${rel})`);
    }
  }
  console.log(
    `${file}: ${gg.graph.nodes.length} nodes, built in ${buildMs.toFixed(0)} ms; rel errors: ${
      report.join(", ")
    }`,
  );
  await fs.release();
}

for (const f of ["tiny_vit_op17.onnx", "tiny_vit_op13.onnx", "tiny_swin_op17.onnx"]) {
  Deno.test(`whole-model cross-entropy gradients match finite differences: ${f}`, async () => {
    await checkModel(f);
  });
}

Deno.test("weights as graph inputs: one session, Adam steps on the head lower the loss", async () => {
  const g = await Graph.load(`${FIXTURES}tiny_vit_op17.onnx`);
  const head = findSites(g).find((s) => s.role === "head")!;
  const params = initializersToInputs(g, [head.weight!]);
  assert.ok(g.inputNames.includes(head.weight!) && !g.initializers.has(head.weight!));
  const gg = buildGradientGraph(g, {
    loss: { kind: "cross_entropy", logits: "logits", target: "target" },
    wrt: [head.weight!],
  });
  const rt = await runtime();
  const s = await rt.createSession(gg.graph);
  const input = { data: randomData(8 * 28 * 28, 3), dims: [8, 1, 28, 28] };
  const target = { data: oneHot([0, 1, 2, 3, 4, 5, 6, 7]), dims: [8, 10] };
  const losses = await minimize(s, params, {
    lr: 0.05,
    steps: 20,
    lossName: gg.lossName,
    gradNames: gg.gradNames,
    feeds: { input, target },
  });
  await s.release();
  assert.ok(losses[19] < 0.8 * losses[0], `loss ${losses[0]} -> ${losses[19]}`);
});

Deno.test("every fixture builds a finite gradient graph (DeiT, Swin op13 too)", async () => {
  const rt = await runtime();
  for (const f of ["tiny_deit_op17", "tiny_deit_op13", "tiny_swin_op13"]) {
    const g = await Graph.load(`${FIXTURES}${f}.onnx`);
    const wrt = findSites(g).filter((s) => s.kind === "linear").map((s) => s.weight!);
    const gg = buildGradientGraph(g, {
      loss: { kind: "kl", logits: "logits", target: "p" },
      wrt,
    });
    const s = await rt.createSession(gg.graph, f);
    const p = { data: new Float32Array(20).fill(0.1), dims: [2, 10] };
    const out = await s.run({ input: { data: randomData(2 * 784, 5), dims: [2, 1, 28, 28] }, p });
    await s.release();
    assert.ok(Number.isFinite(out[gg.lossName].data[0]), f);
    for (const w of wrt) {
      const d = out[gg.gradNames.get(w)!].data;
      assert.ok(d.every(Number.isFinite) && d.some((v) => v !== 0), `${f} ${w}`);
    }
  }
});
