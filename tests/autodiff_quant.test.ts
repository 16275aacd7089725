/**
 * Quantizer gradients (LSQ, AdaRound, straight-through rounding, clamp masks)
 * and the Adam helper, through gradient graphs run by ONNX Runtime.
 */
import assert from "node:assert/strict";
import { Graph, Tensor } from "../core/onnx/graph.ts";
import { addFloatInput, buildGradientGraph } from "../core/autodiff/backward.ts";
import {
  emitAdaRoundHard,
  emitAdaRoundWeight,
  emitLsqQuant,
  emitRoundingRegularizer,
  lsqGradients,
} from "../core/autodiff/quant_grads.ts";
import { Adam, cosineLr, minimize, type Param } from "../core/autodiff/adam.ts";
import { finiteDifferences, relError } from "../core/autodiff/gradcheck.ts";
import { fakeQuant, symmetric } from "../core/quant/uniform.ts";
import { FIXTURES, randomData, runtime } from "./helpers.ts";

async function emptyGraph(): Promise<Graph> {
  const g = await Graph.load(`${FIXTURES}tiny_vit_op17.onnx`);
  g.nodes = [];
  g.initializers.clear();
  g.valueInfo = [];
  g.inputs = [];
  g.outputs = [];
  return g;
}

/** Deterministic standard-normal samples (Box-Muller over the LCG of randomData). */
function gaussian(n: number, seed: number): Float32Array {
  const u = randomData(2 * n, seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const a = (u[2 * i] + 1) / 2 || 1e-12, b = (u[2 * i + 1] + 1) / 2;
    out[i] = Math.sqrt(-2 * Math.log(a)) * Math.cos(2 * Math.PI * b);
  }
  return out;
}

function mse(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return s / a.length;
}

Deno.test("LSQ: graph gradients w.r.t. the step and the input equal the LSQ formula", async () => {
  const grid = { bits: 4, signed: true };
  const rt = await runtime();
  // per-tensor step
  {
    const n = 2000;
    const x = gaussian(n, 1);
    const w = randomData(n, 2);
    const s = 0.3;
    const g = await emptyGraph();
    addFloatInput(g, "x", [n]);
    addFloatInput(g, "s", []);
    addFloatInput(g, "w", [n]);
    const q = emitLsqQuant(g, "x", "s", grid);
    const gg = buildGradientGraph(g, {
      loss: { kind: "sum", value: g.addNode("Mul", [q, "w"]) },
      wrt: ["x", "s"],
      outputs: [q],
    });
    const sess = await rt.createSession(gg.graph);
    const out = await sess.run({
      x: { data: x, dims: [n] },
      s: { data: Float32Array.of(s), dims: [] },
      w: { data: w, dims: [n] },
    });
    await sess.release();
    // forward: identical to the round-then-clip fake quantizer
    assert.deepEqual(Array.from(out[q].data), Array.from(fakeQuant(x, [n], symmetric(4, s))));
    const ref = lsqGradients(x, s, grid, w);
    const ds = out[gg.gradNames.get("s")!].data[0];
    assert.ok(Math.abs(ds - ref.ds) <= 1e-4 * Math.abs(ref.ds) + 1e-4, `ds ${ds} vs ${ref.ds}`);
    const dx = out[gg.gradNames.get("x")!].data;
    assert.ok(relError(dx, ref.dx) < 1e-7, "dx: STE inside the range, 0 outside");
    // the data has clipped values on both sides, so all three branches are exercised
    assert.ok(x.some((v) => v / s > 7.5) && x.some((v) => v / s < -8.5));
  }
  // per-channel steps [1, C] on x [R, C]
  {
    const R = 50, C = 4;
    const x = gaussian(R * C, 3);
    const w = randomData(R * C, 4);
    const steps = Float32Array.of(0.1, 0.2, 0.3, 0.45);
    const g = await emptyGraph();
    addFloatInput(g, "x", [R, C]);
    addFloatInput(g, "s", [1, C]);
    addFloatInput(g, "w", [R, C]);
    const q = emitLsqQuant(g, "x", "s", grid);
    const gg = buildGradientGraph(g, {
      loss: { kind: "sum", value: g.addNode("Mul", [q, "w"]) },
      wrt: ["s"],
    });
    const sess = await rt.createSession(gg.graph);
    const out = await sess.run({
      x: { data: x, dims: [R, C] },
      s: { data: steps, dims: [1, C] },
      w: { data: w, dims: [R, C] },
    });
    await sess.release();
    const ds = out[gg.gradNames.get("s")!];
    assert.deepEqual(ds.dims, [1, C]);
    for (let c = 0; c < C; c++) {
      const col = Float32Array.from({ length: R }, (_, r) => x[r * C + c]);
      const wc = Float32Array.from({ length: R }, (_, r) => w[r * C + c]);
      const ref = lsqGradients(col, steps[c], grid, wc).ds;
      assert.ok(Math.abs(ds.data[c] - ref) <= 1e-4 * Math.abs(ref) + 1e-5, `channel ${c}`);
    }
  }
});

Deno.test("AdaRound: soft weight and rounding regularizer gradients match finite differences", async () => {
  const grid = { bits: 4, signed: true };
  const R = 4, C = 6, n = R * C;
  const g = await emptyGraph();
  const wv = randomData(n, 5, 0.6);
  const w = g.setInitializer(Tensor.fromFloat32("w", [R, C], wv));
  const s = g.constFloat("s", 0.1);
  addFloatInput(g, "V", [R, C]);
  addFloatInput(g, "beta", []);
  const { output, h } = emitAdaRoundWeight(g, w, s, "V", grid);
  const reg = emitRoundingRegularizer(g, h, "beta");
  const gg = buildGradientGraph(g, {
    loss: [
      { kind: "mse", value: output, target: w },
      { kind: "sum", value: reg, weight: 0.01 },
    ],
    wrt: ["V"],
  });
  assert.deepEqual(gg.extraInputs, []);
  // V away from the rectifier's kinks (|V| = ln 11) and from h = 0.5 (V = 0), some saturated
  const V = randomData(n, 6, 3.5).map((v) => {
    for (const k of [-Math.log(11), 0, Math.log(11)]) {
      if (Math.abs(v - k) < 0.1) return k + (v < k ? -0.1 : 0.1);
    }
    return v;
  });
  const rt = await runtime();
  const sess = await rt.createSession(gg.graph);
  const feeds = {
    V: { data: V, dims: [R, C] },
    beta: { data: Float32Array.of(4), dims: [] },
  };
  const out = await sess.run(feeds);
  const an = out[gg.gradNames.get("V")!].data;
  const fd = await finiteDifferences(sess, feeds, gg.lossName, "V", 1e-2);
  // same float32 finite-difference budget as the op tests (see autodiff_ops.test.ts)
  assert.ok(relError(an, fd) < 2e-3, `rel error ${relError(an, fd)}`);
  // saturated entries get no gradient from the rectifier's clip
  V.forEach((v, i) => {
    if (Math.abs(v) > Math.log(11)) assert.equal(an[i], 0, `saturated V[${i}] = ${v}`);
  });
  await sess.release();

  // hard rounding after learning: V >= 0 rounds up
  const hg = await emptyGraph();
  const w2 = hg.setInitializer(Tensor.fromFloat32("w", [R, C], wv));
  addFloatInput(hg, "V", [R, C]);
  const hard = emitAdaRoundHard(hg, w2, hg.constFloat("s", 0.1), "V", grid);
  hg.outputs = [{ name: hard, type: { tensorType: { elemType: 1 } } }];
  const hs = await rt.createSession(hg);
  const ho = await hs.run({ V: { data: V, dims: [R, C] } });
  await hs.release();
  ho[hard].data.forEach((q, i) => {
    const code = Math.min(
      Math.max(Math.floor(Math.fround(wv[i] / 0.1)) + (V[i] >= 0 ? 1 : 0), -8),
      7,
    );
    assert.ok(Math.abs(q - Math.fround(code * 0.1)) < 1e-7, `hard weight ${i}`);
  });
});

Deno.test("Adam: first step moves each parameter by lr against the gradient sign; cosine schedule", () => {
  const p: Param = { data: Float32Array.of(1, -2, 3), dims: [3] };
  const adam = new Adam(new Map([["p", p]]), { lr: 0.1, steps: 10 });
  adam.step({ p: Float32Array.of(5, -0.001, 0) });
  // bias-corrected m / sqrt(v) = g / |g| on the first step (up to eps = 1e-8 against |g|)
  assert.ok(Math.abs(p.data[0] - 0.9) < 1e-6, `${p.data[0]}`);
  assert.ok(Math.abs(p.data[1] + 1.9) < 1e-5, `${p.data[1]}`);
  assert.equal(p.data[2], 3);
  const o = { lr: 1, steps: 100, minLr: 0.1, warmup: 10 };
  assert.equal(cosineLr(0, o), 0.1);
  assert.equal(cosineLr(9, o), 1);
  assert.ok(Math.abs(cosineLr(10, o) - 1) < 1e-12);
  assert.ok(Math.abs(cosineLr(55, o) - 0.55) < 1e-12);
  assert.ok(Math.abs(cosineLr(100, o) - 0.1) < 1e-12);
});

Deno.test("LSQ + Adam: the learned 4-bit step reaches the grid-search optimum of the MSE", async () => {
  const n = 4000;
  const x = gaussian(n, 11);
  const g = await emptyGraph();
  const xv = g.setInitializer(Tensor.fromFloat32("x", [n], x));
  addFloatInput(g, "s", [1]);
  const q = emitLsqQuant(g, xv, "s", { bits: 4, signed: true });
  const gg = buildGradientGraph(g, { loss: { kind: "mse", value: q, target: xv }, wrt: ["s"] });
  const rt = await runtime();
  const sess = await rt.createSession(gg.graph);
  // start from min-max calibration (absmax / 7), far from the MSE optimum
  let amax = 0;
  for (const v of x) amax = Math.max(amax, Math.abs(v));
  const s: Param = { data: Float32Array.of(amax / 7), dims: [1] };
  const s0 = s.data[0];
  const steps = 300;
  const losses = await minimize(sess, new Map([["s", s]]), {
    lr: 0.01,
    steps,
    minLr: 1e-4,
    lossName: gg.lossName,
    gradNames: gg.gradNames,
  });
  await sess.release();
  // fine grid search with the bit-exact TypeScript reference quantizer
  let best = Infinity, bestS = 0;
  for (let k = 0; k <= 6000; k++) {
    const t = 0.15 + k * 1e-4;
    const e = mse(fakeQuant(x, [n], symmetric(4, t)), x);
    if (e < best) [best, bestS] = [e, t];
  }
  const learned = mse(fakeQuant(x, [n], symmetric(4, s.data[0])), x);
  console.log(
    `LSQ: s ${s0.toFixed(4)} -> ${s.data[0].toFixed(4)} (grid best ${bestS.toFixed(4)}), ` +
      `MSE ${mse(fakeQuant(x, [n], symmetric(4, s0)), x).toExponential(3)} -> ${
        learned.toExponential(3)
      } (grid best ${best.toExponential(3)}, ratio ${(learned / best).toFixed(4)})`,
  );
  // the last recorded loss is from just before the final (tiny, lr ~ 1e-4) update
  assert.ok(Math.abs(losses[losses.length - 1] - learned) < 1e-5, "graph loss = reference MSE");
  assert.ok(losses[losses.length - 1] < losses[0], "loss decreased");
  assert.ok(learned <= 1.02 * best, `learned MSE ${learned} vs best ${best}`);
  assert.ok(Math.abs(s.data[0] - bestS) / bestS < 0.05, `step ${s.data[0]} vs ${bestS}`);
});
