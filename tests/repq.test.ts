/**
 * RepQ-ViT: the scale reparameterization is exact in FP on the three shipped
 * models and turns the per-channel quantizer into a per-tensor one; the fed
 * calibration quantizers compute the emitted ones bit for bit; the options;
 * the parity fixture of the steps chosen on the shipped ViT (W4A4, seed 0).
 */
import assert from "node:assert/strict";
import { Graph, makeAttr, Tensor } from "../core/onnx/graph.ts";
import { findSites, type Site } from "../core/onnx/sites.ts";
import { addFloatInput } from "../core/autodiff/backward.ts";
import { emitFakeQuant, fakeQuant, type UniformQuantizer } from "../core/quant/uniform.ts";
import { emitLogSqrt2Quant } from "../core/quant/log.ts";
import { emitFedLogSqrt2, emitFedUniform } from "../core/quant/fed.ts";
import { logSqrt2Quant } from "../core/quant/log.ts";
import { emitLog2SplitMatMul, log2Parts, recombineLog2 } from "../core/quant/log2_reparam.ts";
import { foldBlocker, foldLayerNorm, reparamParams } from "../core/quant/reparam.ts";
import { resolveModel } from "../core/models.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { drawCalibration } from "../datasets/subset.ts";
import type { TensorData } from "../core/runtime/runtime.ts";
import {
  foldPostLn,
  postLnFoldCheck,
  postLnFolds,
  repq,
  repqSteps,
  runRepq,
  type StepEntry,
} from "../methods/repq.ts";
import type { Bits, QuantContext } from "../methods/types.ts";
import {
  FIXTURE_CARD,
  fixtureContext,
  FIXTURES,
  quantContext,
  randomData,
  runtime,
} from "./helpers.ts";

/** Run `g` on `feeds`; every output by name. */
async function run(
  g: Graph,
  feeds: Record<string, TensorData>,
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

/** A deterministic per-channel quantizer with steps that vary by a factor ~4 across channels. */
function syntheticPerChannel(C: number, seed: number, bits: number) {
  const u = randomData(2 * C, seed);
  const scale = new Float32Array(C), zeroPoint = new Float32Array(C);
  for (let c = 0; c < C; c++) {
    scale[c] = Math.fround(0.05 * 2 ** (1 + u[c]));
    zeroPoint[c] = Math.round(((u[C + c] + 1) / 2) * (2 ** bits - 1));
  }
  return { scale, zeroPoint };
}

for (const name of ["vit_fmnist", "deit_fmnist", "swin_fmnist"]) {
  Deno.test(`RepQ fold on the shipped ${name}: FP logits unchanged within 1e-5 relative, γ and weights changed`, async () => {
    const model = await resolveModel(name, "test");
    const graph = await Graph.load(model.path);
    const sites = findSites(graph);
    const folds = postLnFolds(sites);
    const nBlocks = new Set(sites.filter((s) => s.kind === "matmul").map((s) => s.block)).size;
    const merges = sites.filter((s) => s.role === "reduction").length;
    assert.equal(
      folds.length,
      2 * nBlocks + merges,
      "norm1, norm2 per block and every patch merge",
    );
    const folded = graph.clone();
    for (const [i, f] of folds.entries()) {
      assert.equal(foldBlocker(graph, f.ln, f.linears), undefined, `${f.ln.id} foldable`);
      const C = graph.initializers.get(f.ln.gamma!)!.dims[0];
      const pc = syntheticPerChannel(C, 11 + i, 4);
      foldLayerNorm(folded, f.ln, f.linears, reparamParams(pc.scale, pc.zeroPoint));
      const g0 = graph.initializers.get(f.ln.gamma!)!.float32();
      const g1 = folded.initializers.get(f.ln.gamma!)!.float32();
      assert.ok(g0.some((v, c) => v !== g1[c]), `${f.ln.id}: γ folded`);
      const w0 = graph.initializers.get(f.linears[0].weight!)!.float32();
      const w1 = folded.initializers.get(f.linears[0].weight!)!.float32();
      assert.ok(w0.some((v, k) => v !== w1[k]), `${f.linears[0].id}: weight folded`);
    }
    const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
    const src = makeSource(test, Array.from({ length: 16 }, (_, i) => i), model.card);
    const feeds = {
      [graph.inputNames[0]]: { data: await src.slice(0, 16), dims: [16, ...src.shape] },
    };
    const a = Object.values(await run(graph, feeds))[0];
    const b = Object.values(await run(folded, feeds))[0];
    let maxAbs = 0, maxDiff = 0;
    for (let k = 0; k < a.length; k++) {
      maxAbs = Math.max(maxAbs, Math.abs(a[k]));
      maxDiff = Math.max(maxDiff, Math.abs(a[k] - b[k]));
    }
    assert.ok(maxDiff / maxAbs <= 1e-5, `${name}: relative logit change ${maxDiff / maxAbs}`);
  });
}

Deno.test("RepQ reparameterization: the per-tensor quantizer of the folded activation is the per-channel quantizer when z_c - z̄ are integers", () => {
  const [N, C, bits] = [50, 6, 4];
  const x = randomData(N * C, 21, 2);
  const scale = Float32Array.from([0.1, 0.4, 0.25, 0.05, 0.2, 0.125]);
  const zeroPoint = new Float32Array(C).fill(7);
  const pc: UniformQuantizer = { bits, signed: false, scale, zeroPoint, axis: 1 };
  const p = reparamParams(scale, zeroPoint);
  assert.equal(p.zeroPoint, 7);
  assert.ok(Math.abs(p.scale - 1.125 / 6) < 1e-7);
  // y_c = x_c / r_c - b_c (the folded LayerNorm's output), quantized per tensor
  const y = x.map((v, i) => Math.fround(v / p.r[i % C]) - p.b[i % C]);
  const qy = fakeQuant(y, [N, C], {
    bits,
    signed: false,
    scale: Float32Array.of(p.scale),
    zeroPoint: Float32Array.of(p.zeroPoint),
  });
  const qx = fakeQuant(x, [N, C], pc);
  // the folded next layer sees r_c·(Q(y)_c + b_c), the original one Q_c(x_c)
  for (let i = 0; i < x.length; i++) {
    const c = i % C;
    const seen = p.r[c] * (qy[i] + p.b[c]);
    assert.ok(Math.abs(seen - qx[i]) <= 1e-5, `element ${i} channel ${c}: ${seen} vs ${qx[i]}`);
  }
  // fractional z̄ (the reference's mean) is kept unless rounding is asked for
  const z2 = Float32Array.from([3, 4, 4, 4, 4, 4]);
  assert.equal(reparamParams(scale, z2).zeroPoint, Math.fround(23 / 6));
  assert.equal(reparamParams(scale, z2, true).zeroPoint, 4);
});

Deno.test("RepQ fed calibration quantizers compute the emitted ones bit for bit; off passes the input", async () => {
  const dims = [3, 5, 8];
  const n = 3 * 5 * 8;
  const x = randomData(n, 5, 3);
  const pos = randomData(n, 6).map((v) => Math.fround(((v + 1) / 2) ** 3));
  const pcq: UniformQuantizer = {
    bits: 4,
    signed: false,
    scale: Float32Array.from(randomData(8, 7), (v) => Math.fround(0.2 + 0.1 * v)),
    zeroPoint: Float32Array.from([3, 7, 8, 1, 0, 15, 9, 6]),
    axis: 2,
  };
  const ptq: UniformQuantizer = {
    bits: 3,
    signed: false,
    scale: Float32Array.of(0.7),
    zeroPoint: Float32Array.of(Math.fround(3.4)),
  };
  const g = Graph.create(17);
  addFloatInput(g, "x", dims);
  addFloatInput(g, "p", dims);
  const fedPc = emitFedUniform(g, "x", 4, 8, "fpc");
  const fedPt = emitFedUniform(g, "x", 3, 1, "fpt");
  const fedLog = emitFedLogSqrt2(g, "p", 4, "flog");
  const refPc = emitFakeQuant(g, "x", pcq, "rpc", 3);
  const refPt = emitFakeQuant(g, "x", ptq, "rpt", 3);
  const refLog = emitLogSqrt2Quant(g, "p", { bits: 4, scale: 0.6 }, "rlog");
  setOutputs(g, [fedPc.output, fedPt.output, fedLog.output, refPc, refPt, refLog]);
  const data = { x: { data: x, dims }, p: { data: pos, dims } };
  const on = await run(g, {
    ...data,
    ...fedPc.on(pcq.scale, pcq.zeroPoint),
    ...fedPt.on(ptq.scale, ptq.zeroPoint),
    ...fedLog.on(0.6),
  });
  assert.deepEqual(on[fedPc.output], on[refPc]);
  assert.deepEqual(on[fedPt.output], on[refPt]);
  assert.deepEqual(on[fedLog.output], on[refLog]);
  assert.ok(on[refPc].some((v, i) => v !== x[i]), "the quantizer moves values");
  const off = await run(g, { ...data, ...fedPc.off(), ...fedPt.off(), ...fedLog.off() });
  assert.deepEqual(off[fedPc.output], x);
  assert.deepEqual(off[fedPt.output], x);
  assert.deepEqual(off[fedLog.output], pos);
  assert.throws(() => fedPc.on(Float32Array.of(1), Float32Array.of(0)), /expected 8/);
});

Deno.test("RepQ fold refuses a LayerNorm whose output also feeds something else", async () => {
  const graph = await Graph.load(`${FIXTURES}tiny_vit_op17.onnx`);
  const sites = findSites(graph);
  const [f] = postLnFolds(sites);
  assert.equal(foldBlocker(graph, f.ln, f.linears), undefined);
  const g = graph.clone();
  g.addOutput(g.addNode("Relu", [f.ln.output], { name: "extra_relu" }));
  assert.match(foldBlocker(g, f.ln, f.linears) ?? "", /consumed by Relu extra_relu/);
});

/**
 * LayerNorm -> Reshape [B, H, W, C] -> Pad (H and W, value `padValue`) -> Reshape -> MatMul + bias:
 * the window padding of timm 1.x Swin, here with real padding.
 */
function padGraph(padValue?: number): { g: Graph; ln: Site; lin: Site } {
  const [B, H, W, C, O] = [2, 2, 3, 8, 5];
  const g = Graph.create(17);
  g.addInput("x", [B, H * W, C]);
  g.setInitializer(Tensor.fromFloat32("gamma", [C], randomData(C, 31, 0.5).map((v) => 1 + v)));
  g.setInitializer(Tensor.fromFloat32("beta", [C], randomData(C, 32, 0.3)));
  g.setInitializer(Tensor.fromFloat32("w", [C, O], randomData(C * O, 33, 0.4)));
  g.setInitializer(Tensor.fromFloat32("bias", [O], randomData(O, 34, 0.2)));
  const i64 = (name: string, v: number[]) =>
    g.setInitializer(Tensor.fromInt64(name, [v.length], v));
  g.addNode("LayerNormalization", ["x", "gamma", "beta"], {
    name: "ln",
    outputs: ["y"],
    attributes: [makeAttr("axis", -1), makeAttr("epsilon", 1e-5, "float")],
  });
  const r = g.addNode("Reshape", ["y", i64("s4", [B, H, W, C])]);
  // H padded by one row at the end, W by one column at the start
  const pads = [i64("pads", [0, 0, 1, 0, 0, 1, 0, 0])];
  if (padValue !== undefined) pads.push(g.constFloat("pad_value", padValue));
  const p = g.addNode("Pad", [r, ...pads], {
    name: "pad",
    attributes: [makeAttr("mode", "constant")],
  });
  const t = g.addNode("Reshape", [p, i64("s3", [B, -1, C])]);
  g.addNode("MatMul", [t, "w"], { name: "mm", outputs: ["mm_out"] });
  g.addNode("Add", ["mm_out", "bias"], { outputs: ["out"] });
  g.addOutput("out");
  const ln = {
    id: "b0.norm1",
    kind: "ln",
    role: "norm1",
    block: 0,
    node: "ln",
    input: "x",
    output: "y",
    gamma: "gamma",
    beta: "beta",
  } as Site;
  const lin = {
    id: "b0.qkv",
    kind: "linear",
    role: "qkv",
    block: 0,
    node: "mm",
    input: t,
    output: "mm_out",
    weight: "w",
    bias: "bias",
    weightOutAxis: 1,
  } as Site;
  return { g, ln, lin };
}

Deno.test("RepQ fold through a zero Pad (Swin window padding) keeps the FP outputs at padded positions too; a plain fold does not; a non-zero Pad is refused", async () => {
  const { g, ln, lin } = padGraph();
  assert.match(foldBlocker(g, ln, [lin]) ?? "", /consumed by Pad pad/);
  const check = postLnFoldCheck(g, ln, [lin]);
  assert.deepEqual(check, { pads: ["pad"] });
  const pc = syntheticPerChannel(8, 35, 8);
  const params = reparamParams(pc.scale, pc.zeroPoint);
  const folded = g.clone();
  foldPostLn(folded, ln, [lin], params, check.pads!);
  const plain = g.clone();
  foldLayerNorm(plain, ln, [lin], params);
  const x = randomData(2 * 6 * 8, 36, 2);
  const feeds = { x: { data: x, dims: [2, 6, 8] } };
  const [ref, got, bad] = [
    (await run(g, feeds)).out,
    (await run(folded, feeds)).out,
    (
      await run(plain, feeds)
    ).out,
  ];
  assert.equal(ref.length, 2 * 12 * 5);
  let worst = 0, plainWorst = 0;
  for (let i = 0; i < ref.length; i++) {
    worst = Math.max(worst, Math.abs(got[i] - ref[i]) / (1 + Math.abs(ref[i])));
    plainWorst = Math.max(plainWorst, Math.abs(bad[i] - ref[i]));
  }
  assert.ok(worst <= 1e-5, `fold through the Pad: ${worst}`);
  assert.ok(plainWorst > 1e-2, `a plain fold changes the padded positions: ${plainWorst}`);
  // padding with another value than 0: no exact fold, RepQ keeps that LayerNorm per channel
  const nz = padGraph(1);
  assert.match(postLnFoldCheck(nz.g, nz.ln, [nz.lin]).why ?? "", /consumed by Pad pad/);
  assert.deepEqual(postLnFoldCheck(padGraph(0).g, ln, [lin]), { pads: ["pad"] });
});

async function tinyCtx(
  fixture: string,
  options: Record<string, unknown>,
  bits = { w: 4, a: 4 },
): Promise<QuantContext> {
  return await fixtureContext(fixture, {
    calibSize: 8,
    bits,
    options: { ...repq.defaults, ...options },
    batchSize: 8,
  });
}

Deno.test("RepQ quantizer choices: reparameterized post-LN inputs are per tensor, log-√2 softmax, 8-bit image, per-channel weights; postLn and calibration options", async () => {
  for (const fixture of ["tiny_vit_op17.onnx", "tiny_swin_op17.onnx"]) {
    const ctx = await tinyCtx(fixture, {});
    const r = await runRepq(ctx);
    const byId = new Map(r.acts.map((q) => [q.id, q]));
    const folds = postLnFolds(ctx.sites);
    assert.equal(r.folds.length, folds.length);
    for (const q of r.acts) {
      if (q.site.role === "patch_embed") assert.equal(q.bits, 8, `${q.id} at 8 bits`);
      else assert.equal(q.bits, 4, q.id);
      if (q.site.role === "av" && q.tensor === "a") {
        assert.equal(q.kind, "log-sqrt2", q.id);
        assert.ok(q.logScale! > 0 && q.logScale! <= 1, `${q.id} δ ${q.logScale}`);
      } else {
        assert.equal(q.q!.scale.length, 1, `${q.id} per tensor at inference`);
      }
      if (q.kind === "per-channel") {
        assert.ok(q.perChannel && q.perChannel.scale.length > 1, `${q.id} calibrated per channel`);
        const mean = q.perChannel.scale.reduce((a, b) => a + b, 0) / q.perChannel.scale.length;
        assert.ok(Math.abs(q.q!.scale[0] - mean) <= 1e-6 * mean, `${q.id} Δ̄ is the mean`);
      }
    }
    for (const f of folds) {
      for (const l of f.linears) assert.equal(byId.get(`${l.id}.input`)!.kind, "per-channel", l.id);
    }
    for (const w of r.weights) {
      assert.equal(w.q.axis, w.site.weightOutAxis ?? 0, `${w.site.id} per output channel`);
      assert.equal(w.reinit, folds.some((f) => f.linears.includes(w.site)), `${w.site.id} re-init`);
    }
    // sequential calibration: a later quantizer sees the quantized model, so steps differ from parallel
    const par = await runRepq(await tinyCtx(fixture, { calibration: "parallel" }));
    assert.equal(par.passes, 1);
    assert.ok(r.passes > 3);
    const last = r.acts[r.acts.length - 1];
    const lastPar = par.acts.find((q) => q.id === last.id)!;
    assert.notDeepEqual(
      last.q!.scale,
      lastPar.q!.scale,
      `${last.id}: sequential differs from parallel`,
    );
  }
  const keep = await runRepq(await tinyCtx("tiny_vit_op17.onnx", { postLn: "per-channel" }));
  assert.equal(keep.folds.length, 0);
  assert.ok(keep.acts.some((q) => q.kind === "per-channel" && q.q!.scale.length > 1));
  const plain = await runRepq(await tinyCtx("tiny_vit_op17.onnx", { postLn: "per-tensor" }));
  assert.ok(plain.acts.every((q) => q.kind !== "per-channel"));
  const img = await runRepq(await tinyCtx("tiny_vit_op17.onnx", { imageBits: 0 }));
  assert.ok(!img.acts.some((q) => q.site.role === "patch_embed"));
});

Deno.test("RepQ parity fixture: the steps chosen on the shipped ViT at W4A4 (seed 0) have not moved", async () => {
  const fx = JSON.parse(
    await Deno.readTextFile(`${FIXTURES}repq_steps_vit_fmnist_w4a4.json`),
  ) as {
    calibIds: string[];
    bits: Bits;
    acts: Record<string, StepEntry>;
    weights: Record<string, StepEntry>;
  };
  const model = await resolveModel("vit_fmnist", "test");
  const graph = await Graph.load(model.path);
  const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
  const indices = drawCalibration(train.ids.map((_, i) => i), 32, 0);
  assert.deepEqual(indices.map((i) => train.ids[i]), fx.calibIds, "calibration images of seed 0");
  const r = await runRepq(
    await quantContext({
      graph,
      calib: makeSource(train, indices, model.card),
      calibLabel: fx.calibIds.join("\n"),
      bits: fx.bits,
      options: { ...repq.defaults },
      batchSize: 100,
    }),
  );
  const got = repqSteps(r);
  const close = (a: number, b: number) => Math.abs(a - b) <= 1e-5 * Math.max(Math.abs(b), 1e-12);
  const compare = (
    kind: string,
    want: Record<string, StepEntry>,
    have: Record<string, StepEntry>,
  ) => {
    assert.deepEqual(Object.keys(have).sort(), Object.keys(want).sort(), `${kind} quantizers`);
    for (const [id, w] of Object.entries(want)) {
      const h = have[id];
      const pairs: [string, number[], number[] | undefined][] = [
        ["step", w.scale, h.scale],
        ["zero point", w.zeroPoint ?? [], h.zeroPoint ?? []],
        ["per-channel step", w.perChannel?.scale ?? [], h.perChannel?.scale],
        ["per-channel zero point", w.perChannel?.zeroPoint ?? [], h.perChannel?.zeroPoint],
      ];
      for (const [what, a, b] of pairs) {
        assert.equal(b?.length ?? 0, a.length, `${id}: ${what} count`);
        a.forEach((v, i) =>
          assert.ok(close(b![i], v), `${kind} ${id}: ${what} ${i} moved: ${b![i]} (fixture ${v})`)
        );
      }
    }
  };
  compare("activation", fx.acts, got.acts);
  compare("weight", fx.weights, got.weights);
});

Deno.test("RepQ log2 reparameterization of the log-√2 quantizer: parts recombine bit for bit, the split A·V matches", async () => {
  const [H, N, D] = [2, 7, 5];
  const raw = randomData(H * N * N, 31, 4);
  const a = new Float32Array(raw.length);
  for (let r = 0; r < H * N; r++) {
    // softmax rows, with some exact zeros
    let sum = 0;
    for (let j = 0; j < N; j++) sum += Math.exp(raw[r * N + j]);
    for (let j = 0; j < N; j++) {
      a[r * N + j] = j === 3 ? 0 : Math.fround(Math.exp(raw[r * N + j]) / sum);
    }
  }
  const v = randomData(H * N * D, 32, 2);
  for (const bits of [3, 4, 6]) {
    const q = { bits, scale: 0.7 };
    const parts = log2Parts(a, q);
    assert.deepEqual(recombineLog2(parts.p, parts.o), logSqrt2Quant(a, q), `${bits} bits`);
    assert.ok(parts.codes.some((c) => c % 2 === 1) && parts.codes.some((c) => c % 2 === 0));
    // P is on the log2 grid: δ·2^-c or 0
    parts.p.forEach((p, i) => {
      const c = parts.codes[i];
      const want = c === 2 ** bits ? 0 : Math.fround(0.7 * 2 ** -Math.ceil(c / 2));
      assert.equal(p, want, `${bits} bits, element ${i}: P on the log2 grid`);
    });
    const g = Graph.create(17);
    addFloatInput(g, "a", [H, N, N]);
    addFloatInput(g, "v", [H, N, D]);
    const ref = g.addNode("MatMul", [emitLogSqrt2Quant(g, "a", q, "ref"), "v"]);
    g.addNode("MatMul", ["a", "v"], { name: "av", outputs: ["split_out"] });
    emitLog2SplitMatMul(g, "av", q, "l2");
    setOutputs(g, [ref, "split_out"]);
    g.topoSort();
    const out = await run(g, { a: { data: a, dims: [H, N, N] }, v: { data: v, dims: [H, N, D] } });
    const x = out[ref], y = out["split_out"];
    for (let i = 0; i < x.length; i++) {
      assert.ok(Math.abs(x[i] - y[i]) <= 1e-6 * (1 + Math.abs(x[i])), `${bits} bits, element ${i}`);
    }
  }
});

Deno.test("RepQ softmaxGraph log2-split: the tiny ViT's logits equal the log-√2 graph's up to rounding", async () => {
  const a = await runRepq(await tinyCtx("tiny_vit_op17.onnx", {}));
  const b = await runRepq(await tinyCtx("tiny_vit_op17.onnx", { softmaxGraph: "log2-split" }));
  assert.ok(b.graph.nodes.length > a.graph.nodes.length, "split graph has the extra MatMuls");
  const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
  const src = makeSource(test, Array.from({ length: 8 }, (_, i) => i), FIXTURE_CARD);
  const feeds = { [a.graph.inputNames[0]]: { data: await src.slice(0, 8), dims: [8, 1, 28, 28] } };
  const x = Object.values(await run(a.graph, feeds))[0];
  const y = Object.values(await run(b.graph, feeds))[0];
  let m = 0, d = 0;
  for (let i = 0; i < x.length; i++) {
    m = Math.max(m, Math.abs(x[i]));
    d = Math.max(d, Math.abs(x[i] - y[i]));
  }
  assert.ok(d <= 1e-3 * m, `relative logit difference ${d / m}`);
});

Deno.test("RepQ deploy graph: the fractional z̄ of each reparameterized quantizer stays exact (two integer products per post-LayerNorm linear layer), logits equal the fake-quant graph's", async () => {
  const rt = await runtime();
  for (const fixture of ["tiny_vit_op17.onnx", "tiny_swin_op17.onnx"]) {
    const ctx = await tinyCtx(fixture, {}, { w: 8, a: 8 });
    const r = await runRepq(ctx);
    assert.equal(r.deployRounded, 0, `${fixture}: no zero point rounded`);
    const reparam = r.acts.filter((q) => q.perChannel && !Number.isInteger(q.q!.zeroPoint[0]));
    assert.ok(reparam.length > 0, `${fixture}: fractional zero points`);
    // each post-LayerNorm linear layer with a fractional z̄: two products, both reading codes
    const producer = new Map(r.deploy.nodes.flatMap((n) => n.outputs.map((o) => [o, n])));
    for (const q of reparam) {
      const first = r.deploy.nodes.find((n) => n.name === q.site.node)!;
      const copies = r.deploy.nodes.filter((n) =>
        n.opType === first.opType && n.inputs[1] === first.inputs[1]
      );
      assert.equal(copies.length, 2, `${q.id}: two products`);
      for (const n of copies) {
        for (const v of n.inputs.slice(0, 2)) {
          assert.equal(producer.get(v)?.opType, "DequantizeLinear", `${q.id} reads codes`);
        }
      }
    }
    const x = randomData(4 * 784, 21, 1.5);
    const run = async (g: Graph) => {
      const s = await rt.createSession(g);
      const o = await s.run({ [s.inputNames[0]]: { data: x, dims: [4, 1, 28, 28] } });
      await s.release();
      return o[s.outputNames[0]].data;
    };
    const [a, b] = [await run(r.graph), await run(r.deploy)];
    const scale = Math.max(...a.map(Math.abs));
    let worst = 0;
    for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]) / scale);
    assert.ok(worst <= 1e-3, `${fixture}: deploy logits off by ${worst} of the largest`);
  }
});
