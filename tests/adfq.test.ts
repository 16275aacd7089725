/**
 * ADFQ-ViT: trainable quantizers against the exact emitted ones, the 2-D
 * search, module-wise reconstruction on the tiny fixtures (every unit's loss
 * falls; the optimized model beats the same quantizers without optimization
 * on held-out images), quantizer choices per site, Swin support, options.
 */
import assert from "node:assert/strict";
import { captureValues } from "../core/runtime/capture.ts";
import { evaluate } from "../bench/evaluate.ts";
import { resolveModel } from "../core/models.ts";
import { Graph } from "../core/onnx/graph.ts";
import { addFloatInput, buildGradientGraph } from "../core/autodiff/backward.ts";
import { initPerPatch } from "../core/quant/outlier.ts";
import {
  adaRoundHard,
  adaRoundInit,
  floorCodes,
  percentileAffine,
  perChannelAffine,
  search2d,
  shiftLog2Init,
} from "../core/recon/init.ts";
import {
  type ActState,
  emitExactAct,
  emitTrainAct,
  emitTrainWeight,
  type WeightState,
} from "../core/recon/quantizers.ts";
import { roundingSchedule } from "../core/recon/train.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { optionsError } from "../bench/manifest.ts";
import { adfq, runAdfq } from "../methods/adfq.ts";
import type { QuantContext } from "../methods/types.ts";
import {
  FIXTURE_CARD as card,
  fixtureContext,
  quantContext,
  randomData,
  runtime,
} from "./helpers.ts";

async function ctx(
  fixture: string,
  options: Record<string, unknown>,
  nCalib: number,
  bits = { w: 4, a: 4 },
): Promise<QuantContext> {
  return await fixtureContext(fixture, {
    calibSize: nCalib,
    bits,
    options: { ...adfq.defaults, ...options },
    batchSize: 32,
  });
}

/** Run a small graph and return the requested outputs. */
async function run(
  g: Graph,
  feeds: Record<string, { data: Float32Array; dims: number[] }>,
): Promise<Record<string, Float32Array>> {
  const s = await (await runtime()).createSession(g);
  try {
    const out = await s.run(feeds);
    return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v.data]));
  } finally {
    await s.release();
  }
}

function setOutputs(g: Graph, names: string[]): void {
  g.outputs = names.map((name) => ({ name, type: { tensorType: { elemType: 1 } } }));
}

/** Logits of `g` on images [0, n) of the test split. */
async function logits(g: Graph, n: number): Promise<Float32Array> {
  const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
  const src = makeSource(test, Array.from({ length: n }, (_, i) => i), card);
  const out = await run(g, { input: { data: await src.slice(0, n), dims: [n, 1, 28, 28] } });
  return Object.values(out)[0];
}

function mse(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return s / a.length;
}

Deno.test("ADFQ trainable quantizers: forward equals the exact emitted quantizers, steps learn through the final multiply", async () => {
  const [B, N, C] = [4, 6, 8];
  const dims = [B, N, C];
  const x = randomData(B * N * C, 3, 3);
  x[5] = 7.5; // outliers beyond tau = 5
  x[40] = -6;
  const pos = randomData(B * N * C, 4).map((v) => Math.fround((v + 1) / 2 * 0.3));
  const gelu = randomData(B * N * C, 5, 3).map((v) => Math.fround(v * 0.5 * (1 + Math.tanh(v))));
  const mk = (id: string, p: ActState["p"], learn: boolean): ActState => ({
    id,
    value: "x",
    targets: [],
    tensor: "input",
    bits: 4,
    learn,
    rank: 3,
    p,
  });
  const cases: { a: ActState; data: Float32Array; exact: boolean }[] = [
    {
      a: mk("pp", { kind: "per-patch", q: initPerPatch(x, dims, 4, 5, "percentile") }, true),
      data: x,
      exact: true,
    },
    { a: mk("un", { kind: "uniform", q: percentileAffine(x, 4) }, true), data: x, exact: true },
    { a: mk("mm", { kind: "uniform", q: search2d(x, 4) }, false), data: x, exact: true },
    {
      a: mk("lg", { kind: "log-sqrt2", q: { bits: 4, scale: 0.25 } }, false),
      data: pos,
      exact: false,
    },
    {
      a: mk("sr", { kind: "shift-log2", q: shiftLog2Init(gelu, 4, "reference") }, true),
      data: gelu,
      exact: false,
    },
    {
      a: mk("sp", { kind: "shift-log2", q: shiftLog2Init(gelu, 4, "paper") }, true),
      data: gelu,
      exact: false,
    },
  ];
  for (const { a, data, exact } of cases) {
    const g = Graph.create(17);
    addFloatInput(g, "x", dims);
    const stepDims = a.p!.kind === "per-patch" ? [1, N, 1] : [];
    addFloatInput(g, "s", stepDims);
    const step = a.p!.kind === "per-patch" ? a.p!.q.scale : Float32Array.of(a.p!.q.scale);
    const t = emitTrainAct(g, "x", a, `${a.id}_t`, "s");
    const e = emitExactAct(g, "x", a, `${a.id}_e`);
    setOutputs(g, [t, e]);
    const out = await run(g, { x: { data, dims }, s: { data: step, dims: stepDims } });
    if (exact) assert.deepEqual(Array.from(out[t]), Array.from(out[e]), a.id);
    else {
      // the training graph takes log codes from Log: equal except at exact grid boundaries
      const same = out[t].filter((v, i) => Math.abs(v - out[e][i]) <= 1e-6 * Math.abs(v) + 1e-7);
      assert.ok(same.length >= 0.99 * data.length, `${a.id}: ${same.length}/${data.length} equal`);
    }
  }
  // the learned per-patch step: d sum(w * x̂) / dΔ_t = Σ w (code - z) over non-outliers of token t
  const a = cases[0].a;
  const q = a.p!.kind === "per-patch" ? a.p!.q : undefined!;
  const g = Graph.create(17);
  addFloatInput(g, "x", dims);
  addFloatInput(g, "s", [1, N, 1]);
  addFloatInput(g, "w", dims);
  const out = emitTrainAct(g, "x", a, "pp", "s");
  const gg = buildGradientGraph(g, {
    loss: { kind: "sum", value: g.addNode("Mul", [out, "w"]) },
    wrt: ["s"],
  });
  const w = randomData(B * N * C, 9);
  const res = await run(gg.graph, {
    x: { data: x, dims },
    s: { data: q.scale, dims: [1, N, 1] },
    w: { data: w, dims },
  });
  const grad = res[gg.gradNames.get("s")!];
  for (let t = 0; t < N; t++) {
    let ref = 0;
    for (let b = 0; b < B; b++) {
      for (let c = 0; c < C; c++) {
        const i = (b * N + t) * C + c;
        if (Math.abs(x[i]) > 5) continue;
        const code = Math.min(
          Math.max(Math.round(Math.fround(x[i] / q.scale[t])) + q.zeroPoint[t], 0),
          15,
        );
        ref += w[i] * (code - q.zeroPoint[t]);
      }
    }
    assert.ok(
      Math.abs(grad[t] - ref) < 1e-4 * (1 + Math.abs(ref)),
      `token ${t}: ${grad[t]} vs ${ref}`,
    );
  }
});

Deno.test("ADFQ gradient modes: reference passes nothing to a learned quantizer's input, ste passes it inside the range", async () => {
  const dims = [3, 4, 5];
  const x = randomData(60, 31, 2);
  const w = randomData(60, 32);
  const q = percentileAffine(x, 3);
  const a: ActState = {
    id: "u",
    value: "x",
    targets: [],
    tensor: "input",
    bits: 3,
    learn: true,
    rank: 3,
    p: { kind: "uniform", q },
  };
  for (const mode of ["reference", "ste"] as const) {
    const g = Graph.create(17);
    addFloatInput(g, "x", dims);
    addFloatInput(g, "s", []);
    addFloatInput(g, "w", dims);
    const out = emitTrainAct(g, "x", a, "u", "s", mode);
    const gg = buildGradientGraph(g, {
      loss: { kind: "sum", value: g.addNode("Mul", [out, "w"]) },
      wrt: ["x", "s"],
    });
    const res = await run(gg.graph, {
      x: { data: x, dims },
      s: { data: Float32Array.of(q.scale), dims: [] },
      w: { data: w, dims },
    });
    const dx = res[gg.gradNames.get("x")!];
    x.forEach((v, i) => {
      const code = Math.round(Math.fround(v / q.scale)) + q.zeroPoint;
      const inRange = code >= 0 && code <= 7;
      const want = mode === "ste" && inRange ? w[i] : 0;
      assert.ok(Math.abs(dx[i] - want) < 1e-6, `${mode} dx[${i}]: ${dx[i]} vs ${want}`);
    });
    assert.ok(Number.isFinite(res[gg.gradNames.get("s")!][0]));
  }
});

Deno.test("ADFQ AdaRound: soft weight at V = ±100 equals the hard rounding; V init reproduces W", async () => {
  const dims = [6, 5];
  const wv = randomData(30, 11, 0.8);
  const { scale, zeroPoint } = perChannelAffine(wv, dims, 1, 4);
  const v0 = adaRoundInit(wv, dims, 1, scale);
  const ws: WeightState = {
    site: { id: "w", kind: "linear", role: "fc1", block: 0, node: "n", output: "o" },
    bits: 4,
    w: wv,
    dims,
    axis: 1,
    scale,
    zeroPoint,
    v: v0,
  };
  const g = Graph.create(17);
  addFloatInput(g, "V", dims);
  const { output } = emitTrainWeight(g, ws, floorCodes(wv, dims, 1, scale), "V");
  setOutputs(g, [output]);
  const vMoved = v0.map((v, i) => v + (i % 3 === 0 ? 2 : -2));
  const hard = await run(g, { V: { data: vMoved.map((v) => (v >= 0 ? 100 : -100)), dims } });
  assert.deepEqual(Array.from(hard[output]), Array.from(adaRoundHard(wv, dims, 1, ws, vMoved)));
  // h(V_init) = frac(W/Δ): the soft weight is W itself (inside the grid range)
  const soft = await run(g, { V: { data: v0, dims } });
  for (let i = 0; i < 30; i++) {
    const c = i % 5, code = Math.floor(wv[i] / scale[c]) + zeroPoint[c];
    if (code >= 0 && code < 15) assert.ok(Math.abs(soft[output][i] - wv[i]) < 1e-5, `w[${i}]`);
  }
});

Deno.test("ADFQ 2-D search: the histogram ranking finds the exact search's quantizer; one-sided inputs", () => {
  const x = randomData(4000, 21, 1).map((v, i) => Math.fround(v * v * v * 3 + (i % 7) * 0.05));
  const exact = search2d(x, 4, { bins: 0 });
  assert.deepEqual(search2d(x, 4), exact);
  const pos = x.map(Math.abs);
  const p = search2d(pos, 4);
  assert.equal(p.zeroPoint, 0);
  assert.deepEqual(p, search2d(pos, 4, { bins: 0 }));
  // the regularizer schedule: off during warm-up, b from 20 down to 2
  const o = { iters: 100, warmup: 0.2, bStart: 20, bEnd: 2, roundWeight: 0.01 };
  assert.deepEqual(roundingSchedule(19, o), { b: 20, lambda: 0 });
  assert.deepEqual(roundingSchedule(20, o), { b: 20, lambda: 0.01 });
  assert.ok(Math.abs(roundingSchedule(100, o).b - 2) < 1e-12);
});

let tiny: Awaited<ReturnType<typeof runAdfq>> | undefined;

Deno.test("ADFQ module-wise optimization on the tiny ViT: every unit's loss falls and the model beats zero iterations on held-out images", async () => {
  const t0 = performance.now();
  const c = await ctx("tiny_vit_op17.onnx", { iters: 60 }, 64);
  tiny = await runAdfq(c);
  const t1 = performance.now();
  const base = await runAdfq({ ...c, options: { ...c.options, iters: 0 } });
  const t2 = performance.now();
  const units = tiny.report.units.map((r) => r.unit);
  assert.deepEqual(units, ["patch_embed", "b0.attn", "b0.mlp", "b1.attn", "b1.mlp", "head"]);
  for (const r of tiny.report.units) {
    assert.ok(r.recAfter < r.recBefore, `${r.unit}: ${r.recBefore} -> ${r.recAfter}`);
    assert.equal(r.trace.length, 60);
    if (r.kind === "attention") assert.ok(r.klBefore! > 0 && Number.isFinite(r.klAfter!));
  }
  // same quantizer initialization (later units see different inputs once earlier ones are optimized)
  assert.equal(base.report.units[0].recBefore, tiny.report.units[0].recBefore);
  const n = 256;
  const fp = await logits(c.graph, n);
  const opt = mse(await logits(tiny.model.graph, n), fp);
  const init = mse(await logits(base.model.graph, n), fp);
  console.log(
    `tiny ViT W4A4, 64 images: held-out logit MSE ${init.toExponential(3)} (0 iterations) -> ${
      opt.toExponential(3)
    } (60 per unit); ${((t1 - t0) / 1000).toFixed(1)} s optimized, ${
      ((t2 - t1) / 1000).toFixed(1)
    } s init only; ${
      tiny.report.units.map((r) => `${r.unit} ${r.itersPerSec.toFixed(0)}`).join(", ")
    } it/s`,
  );
  assert.ok(opt < init, `optimized ${opt} vs not ${init}`);
});

Deno.test("ADFQ quantizer choices per site", () => {
  assert.ok(tiny, "needs the previous test");
  const layer = (site: string, tensor: string) => {
    const l = tiny!.model.layers.find((x) => x.site === site && x.tensor === tensor);
    assert.ok(l, `${site} ${tensor}`);
    return l;
  };
  for (const b of [0, 1]) {
    assert.match(layer(`b${b}.qkv`, "input").quantizer, /^per-patch asym \(tau 5\), learned step/);
    assert.match(layer(`b${b}.fc1`, "input").quantizer, /^per-patch asym \(tau 5\)/);
    assert.match(layer(`b${b}.fc2`, "input").quantizer, /^shift-log2 \(reference\)/);
    assert.equal(layer(`b${b}.av`, "a").quantizer, "log-sqrt2");
    for (const [s, t] of [["qk", "a"], ["qk", "b"], ["av", "b"]]) {
      assert.equal(layer(`b${b}.${s}`, t).quantizer, "per-tensor asym (2-D search)");
    }
    assert.equal(layer(`b${b}.proj`, "input").quantizer, "per-tensor asym, learned step");
  }
  // the image is quantized at the activation bit width (reference; firstLast8bit off)
  assert.equal(layer("patch_embed", "input").bits, 4);
  assert.equal(layer("head", "input").bits, 4);
  for (const l of tiny!.model.layers.filter((x) => x.tensor === "weight")) {
    assert.equal(l.quantizer, "per-channel asym, AdaRound");
    assert.equal(l.bits, 4);
  }
  // one static step per token position (50 tokens) in the final graph
  const scale = [...tiny!.model.graph.initializers.values()].find((t) =>
    t.name.startsWith("b0.qkv_in0_scale")
  );
  assert.deepEqual(scale?.dims, [1, 50, 1]);
  assert.match(tiny!.model.notes!, /6 units x 60 iterations, batch 32, 64 calibration images/);
});

Deno.test("ADFQ on a Swin graph: window-position tokens, reductions, 8-bit patch-embed and head", async () => {
  const c = await ctx("tiny_swin_op17.onnx", { iters: 2, firstLast8bit: true, initSamples: 8 }, 8);
  const { model, report } = await runAdfq(c);
  assert.ok(report.units.some((r) => r.kind === "reduction"));
  const l = (site: string, tensor: string) =>
    model.layers.find((x) => x.site === site && x.tensor === tensor)!;
  assert.equal(l("patch_embed", "input").bits, 8);
  assert.equal(l("patch_embed", "weight").bits, 8);
  assert.equal(l("head", "weight").bits, 8);
  assert.equal(l("b0.qkv", "weight").bits, 4);
  // the qkv input is (windows, window positions, C): one step per window position
  const site = c.sites.find((s) => s.id === "b0.qkv")!;
  const win = (await captureValues(c.runtime, c.graph, [site.input!], c.calib, 8)).get(
    site.input!,
  )!;
  assert.ok(win.dims[0] > c.calib.length, `${win.dims}: more windows than images`);
  const scale = [...model.graph.initializers.values()].find((t) =>
    t.name.startsWith("b0.qkv_in0_scale")
  )!;
  assert.deepEqual(scale.dims, [1, win.dims[1], 1]);
  const out = await logits(model.graph, 4);
  assert.ok(out.every(Number.isFinite));
});

for (const name of ["vit_fmnist", "deit_fmnist", "swin_fmnist"]) {
  Deno.test(`ADFQ on the shipped ${name}: every unit's reconstruction loss falls, W6A6 close to FP`, async () => {
    const model = await resolveModel(name, "test");
    const graph = await Graph.load(model.path);
    const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
    const iters = 200; // as experiments/adfq.json
    const c = await quantContext({
      graph,
      calib: makeSource(train, Array.from({ length: 16 }, (_, i) => i), model.card),
      calibLabel: "train 0..15",
      bits: { w: 6, a: 6 },
      options: { ...adfq.defaults, iters },
      batchSize: 32,
    });
    const t0 = performance.now();
    const { model: q, report } = await runAdfq(c);
    const blocks = new Set(c.sites.filter((s) => s.block >= 0).map((s) => s.block)).size;
    const reductions = c.sites.filter((s) => s.role === "reduction").length;
    const heads = c.sites.filter((s) => s.role === "head").length; // DeiT: class and distillation heads
    assert.equal(report.units.length, 1 + 2 * blocks + reductions + heads);
    for (const r of report.units) {
      assert.equal(r.trace.length, iters);
      assert.ok(r.recAfter < r.recBefore, `${name} ${r.unit}: ${r.recBefore} -> ${r.recAfter}`);
    }
    const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
    const ev = makeSource(test, Array.from({ length: 500 }, (_, i) => i * 20), model.card);
    const rt = await runtime();
    const fp = await evaluate(rt, graph, ev, 100), qe = await evaluate(rt, q.graph, ev, 100);
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    const fell = report.units.map((r) => (100 * (1 - r.recAfter / r.recBefore)).toFixed(0));
    console.log(
      `${name} W6A6, 16 images, ${iters} steps per unit: ${secs} s; top-1 on 500 test images ` +
        `${qe.top1.toFixed(1)} (FP ${fp.top1.toFixed(1)}); reconstruction loss fell by ${
          fell.join(", ")
        } % per unit`,
    );
    assert.ok(qe.top1 >= fp.top1 - 3, `W6A6 top-1 ${qe.top1} vs FP ${fp.top1}`);
  });
}

Deno.test("ADFQ options are validated", () => {
  const ok = { ...adfq.defaults };
  assert.equal(optionsError(adfq, ok), undefined);
  assert.match(optionsError(adfq, { ...ok, iters: -1 })!, /iters/);
  assert.match(optionsError(adfq, { ...ok, attentionKlAxis: "keys" })!, /attentionKlAxis/);
  assert.match(optionsError(adfq, { ...ok, shiftLog2: "log" })!, /shiftLog2/);
  assert.match(optionsError(adfq, { ...ok, inputProb: 2 })!, /inputProb/);
  assert.match(optionsError(adfq, { ...ok, firstLast8bit: 1 })!, /firstLast8bit/);
});
