import assert from "node:assert/strict";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { applyPlan } from "../core/quant/apply.ts";
import { distributeParts } from "../core/quant/deploy.ts";
import { fusedOps } from "../bench/speed.ts";
import { Tensor } from "../core/onnx/graph.ts";
import { activationTargets } from "../core/quant/scope.ts";
import { symmetric } from "../core/quant/uniform.ts";
import { optionsError } from "../bench/manifest.ts";
import { standardActSlots } from "../methods/baselines.ts";
import {
  emitO2sf,
  emitV2sf,
  emitV2sfParts,
  o2sf,
  o2sfDecodeInt,
  o2sfEncode,
  o2sfFlags,
  type O2sfQuantizer,
  o2sfSteps,
  v2sf,
  v2sfDecodeInt,
  v2sfEncode,
  type V2sfQuantizer,
} from "../core/quant/two_scaled.ts";
import { tsptq } from "../methods/tsptq.ts";
import type { QuantContext } from "../methods/types.ts";
import { fixtureContext, FIXTURES, randomData, runtime } from "./helpers.ts";

const readers = (g: Graph, v: string) => g.nodes.filter((n) => n.inputs.includes(v));

Deno.test("value-form activation plan: one quantizer, exactly the named consumers", async () => {
  const g = await Graph.load(`${FIXTURES}tiny_vit_op17.onnx`);
  const sites = findSites(g);
  const ln = sites.find((s) => s.id === "b0.norm2")!;
  const before = readers(g, ln.input!);
  assert.ok(
    before.length >= 2,
    "the residual stream feeds the LayerNorm and the next residual add",
  );
  const q = symmetric(8, 0.05);
  // only the LayerNorm reads the quantized value
  const only = applyPlan(g, [], [{ value: ln.input!, consumers: [ln.node], q }]).graph;
  const lnNode = only.nodes.find((n) => n.name === ln.node)!;
  assert.notEqual(lnNode.inputs[0], ln.input);
  const mul = only.nodes.find((n) => n.outputs[0] === lnNode.inputs[0])!;
  assert.equal(mul.opType, "Mul");
  for (const n of readers(only, ln.input!)) {
    assert.ok(n.name !== ln.node, "the LayerNorm reads the quantized value");
  }
  assert.ok(readers(only, ln.input!).some((n) => n.opType === "Add"), "the skip path stays FP");
  // default: every consumer reads the (single) quantized value
  const all = applyPlan(g, [], [{ value: ln.input!, q }]).graph;
  const divs = all.nodes.filter((n) => n.opType === "Div" && n.inputs[0] === ln.input);
  assert.equal(divs.length, 1, "one quantizer per value");
  const qv = all.nodes.filter((n) => n.opType === "Mul" && n.inputs[0] !== ln.input).find((n) =>
    before.every((b) => all.nodes.find((m) => m.name === b.name)!.inputs.includes(n.outputs[0]))
  );
  assert.ok(qv, "all former consumers read the quantized value");
  // a slot quantized by a value plan and a slot plan is refused; unknown consumers too
  const fc2 = sites.find((s) => s.id === "b0.fc2")!;
  assert.throws(
    () => applyPlan(g, [], [{ value: fc2.input!, q }, { site: fc2, slot: 0, q }]),
    /quantized by two plans/,
  );
  assert.throws(
    () => applyPlan(g, [], [{ value: ln.input!, consumers: ["nope"], q }]),
    /does not read/,
  );
});

Deno.test("scope: linear is the old slot list; full adds every LayerNorm input", async () => {
  for (const f of ["tiny_vit_op17.onnx", "tiny_swin_op17.onnx", "tiny_deit_op13.onnx"]) {
    const g = await Graph.load(`${FIXTURES}${f}`);
    const sites = findSites(g);
    const lin = activationTargets(g, sites, "linear");
    const old = standardActSlots(sites);
    assert.deepEqual(
      lin.map((t) => [t.site.id, t.slot, t.value, t.tensor]),
      old.map((s) => [s.site.id, s.slot, s.value, s.tensor]),
      f,
    );
    const full = activationTargets(g, sites, "full");
    const lns = sites.filter((s) => s.kind === "ln");
    const lnT = full.filter((t) => t.role === "ln_in");
    assert.deepEqual(lnT.map((t) => t.site.id), lns.map((s) => s.id), f);
    for (const t of lnT) {
      const real = readers(g, t.value).filter((n) => n.opType !== "Shape");
      assert.deepEqual(new Set(t.consumers), new Set(real.map((n) => n.name)), `${f} ${t.site.id}`);
    }
    // softmax / GELU outputs feed A·V and fc2 directly here: their slot targets serve both scopes
    assert.equal(full.length, lin.length + lns.length, f);
    const lnOnly = activationTargets(g, sites, "full", { lnConsumers: "ln" });
    for (const t of lnOnly.filter((t) => t.role === "ln_in")) {
      assert.ok(t.consumers!.every((c) => g.nodes.find((n) => n.name === c)!.opType !== "Add"));
    }
    // the full plan applies (no slot claimed twice) and keeps one quantizer per LN input
    const plans = full.map((t) =>
      t.slot !== undefined
        ? { site: t.site, slot: t.slot, q: symmetric(8, 0.1) }
        : { value: t.value, consumers: t.consumers, q: symmetric(8, 0.1) }
    );
    applyPlan(g, [], plans);
  }
});

/** Run an emitter through ONNX Runtime on a graph that is only the emitted subgraph. */
async function viaOrt(
  x: Float32Array,
  dims: number[],
  emit: (g: Graph, input: string) => string,
): Promise<Float32Array> {
  const g = Graph.create(17, "t");
  g.addInput("x", dims);
  const y = emit(g, "x");
  g.outputs = [{ name: y, type: { tensorType: { elemType: 1 } } }];
  const rt = await runtime();
  const s = await rt.createSession(g);
  const out = await s.run({ x: { data: x, dims } });
  await s.release();
  return out[y].data;
}

const bitsOf = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

/** Post-softmax-like (heavy mass near 0, a few large) and post-GELU-like test values. */
function testValues(kind: "unsigned" | "signed"): Float32Array {
  const r = randomData(3000, 7, 1);
  const x = Float32Array.from(
    r,
    (v, i) =>
      kind === "unsigned"
        ? Math.abs(v) ** 6 * (i % 50 === 0 ? 1 : 0.05)
        : (v < 0 ? v * 0.17 : v * v * 6) - (i % 97 === 0 ? 1e-9 : 0),
  );
  // exact region boundaries, ties, zeros of both signs, out-of-range values
  x.set([0, -0, -1e-12, 1.5, 2.5, 0.12, 1, 8, -0.5], 0);
  return x;
}

Deno.test("V-2SF: hand-computed codes (4 bits: flag + 3-bit payload)", () => {
  // unsigned small region 0..7 step 0.1, large region 0..7 step 0.4 (m = 2)
  const q: V2sfQuantizer = { bits: 4, step: 0.1, m: 2, kind: "unsigned" };
  const x = Float32Array.of(0.04, 0.26, 0.7, 0.76, 1.0, 1.1, 2.7, 5);
  const f = Math.fround, s = f(0.1), l = f(s * 4);
  // 0.76 rounds to fine code 8 > 7: large region, 0.76 / 0.4 = 1.9 -> 2; 1.0 / 0.4 = 2.5 -> 2 (half to even)
  assert.deepEqual(
    Array.from(v2sf(x, q)),
    [0, f(3 * s), f(7 * s), f(2 * l), f(2 * l), f(3 * l), f(7 * l), f(7 * l)],
  );
  assert.deepEqual(Array.from(v2sfEncode(x, q)), [0, 3, 7, 8 | 2, 8 | 2, 8 | 3, 8 | 7, 8 | 7]);
  // signed small region -4..3 (GELU's negative tail), unsigned large region
  const g: V2sfQuantizer = { bits: 4, step: 0.05, m: 3, kind: "signed" };
  const y = Float32Array.of(-0.17, -0.3, 0.14, 0.3, 1.0);
  const gs = f(0.05);
  assert.deepEqual(
    Array.from(v2sf(y, g)),
    [f(-3 * gs), f(-4 * gs), f(3 * gs), f(gs * 8), f(2 * f(gs * 8))],
  );
  assert.deepEqual(Array.from(v2sfDecodeInt(v2sfEncode(y, g), g)), [-3, -4, 3, 8, 16]);
});

Deno.test("two-scaled quantizers: TypeScript reference equals the ONNX emission bit for bit, and the integer form decodes by shifts", async () => {
  for (const kind of ["unsigned", "signed"] as const) {
    const x = testValues(kind);
    for (
      const [bits, step, m] of [[8, 0.001, 5], [6, 0.013, 2], [4, 0.07, 7], [8, 1 / 127 / 64, 6]]
    ) {
      const q: V2sfQuantizer = { bits, step, m, kind };
      const ref = v2sf(x, q);
      const ort = await viaOrt(x, [x.length], (g, v) => emitV2sf(g, v, q, "t"));
      assert.deepEqual(bitsOf(ort), bitsOf(ref), `V-2SF ${kind} ${bits} bits m ${m}`);
      // decode: integers from codes (payload << m for the large region), times S;
      // identical bits except that a code cannot carry the sign of a zero
      const ints = v2sfDecodeInt(v2sfEncode(x, q), q);
      const dec = Float32Array.from(ints, (i) => Math.fround(i * Math.fround(step)));
      assert.deepEqual(bitsOf(dec), bitsOf(ref.map((v) => v + 0)), `decode ${kind} ${bits}`);
      assert.ok(ints.every((i) => Number.isInteger(i)));
    }
  }
  const dims = [6, 10, 16];
  const x = randomData(6 * 10 * 16, 3, 2);
  for (let i = 0; i < x.length; i += 16) x[i + 3] *= 40; // outlier channel 3
  for (let i = 0; i < x.length; i += 16) x[i + 11] *= 9; // milder outlier channel 11
  for (const rule of ["threshold", "error"] as const) {
    for (const [bits, m] of [[8, 5], [6, 3], [4, 2]]) {
      const step = Math.fround(2 / (2 ** (bits - 1) - 1));
      const flags = o2sfFlags(x, 16, bits, step, m, rule);
      assert.equal(flags[3], 1, `${rule}: the 40x channel is flagged`);
      assert.equal(flags[0], 0, `${rule}: a normal channel is not`);
      const q: O2sfQuantizer = { bits, step, m, flags };
      const ref = o2sf(x, dims, q);
      const ort = await viaOrt(x, dims, (g, v) => emitO2sf(g, v, q, "t", 3));
      assert.deepEqual(bitsOf(ort), bitsOf(ref), `O-2SF ${rule} ${bits}`);
      const ints = o2sfDecodeInt(o2sfEncode(x, q), q);
      const dec = Float32Array.from(ints, (i) => Math.fround(i * step));
      assert.deepEqual(bitsOf(dec), bitsOf(ref.map((v) => v + 0)), `O-2SF decode ${rule} ${bits}`);
      // the outlier channel's step is the base step times 2^m exactly
      assert.equal(o2sfSteps(q)[3], step * 2 ** m);
    }
  }
});

Deno.test("V-2SF deploy parts: small-step plus large-step int8 operands sum to the V-2SF value exactly; a MatMul split per part runs integer kernels and equals the fake-quant product", async () => {
  const rt = await runtime();
  for (const kind of ["unsigned", "signed"] as const) {
    const x = testValues(kind).subarray(0, 2 * 50 * 16);
    for (const [bits, step, m] of [[8, 0.001, 5], [4, 0.07, 2], [6, 0.013, 3]]) {
      const q: V2sfQuantizer = { bits, step, m, kind };
      const ref = v2sf(x, q);
      const sum = await viaOrt(x, [x.length], (g, v) => emitV2sfParts(g, v, q, "t").sum);
      // equal values (a QuantizeLinear gives +0 where the fake-quant graph gives -0)
      assert.deepEqual(
        bitsOf(sum.map((v) => v + 0)),
        bitsOf(ref.map((v) => v + 0)),
        `${kind} ${bits}`,
      );
      // A·W with A V-2SF-quantized: one integer product per part, added
      // the fake-quant graph reads the dequantized weight as float (as vitq's do: a
      // DequantizeLinear weight beside a float input would become ONNX Runtime's MatMulNBits)
      const codes = Int8Array.from(randomData(16 * 7, 5, 100));
      const fake = Graph.create(17, "t");
      fake.addInput("x", [2, 50, 16]);
      fake.setInitializer(
        Tensor.fromFloat32("w", [16, 7], Float32Array.from(codes, (c) => Math.fround(c * 0.004))),
      );
      fake.addNode("MatMul", [emitV2sf(fake, "x", q, "f"), "w"], { outputs: ["y"] });
      fake.addOutput("y");
      const g = Graph.create(17, "t");
      g.addInput("x", [2, 50, 16]);
      g.setInitializer(new Tensor("wc", 3, [16, 7], new Uint8Array(codes.buffer)));
      const wq = g.addNode("DequantizeLinear", ["wc", g.constFloat("ws", 0.004)]);
      const p = emitV2sfParts(g, "x", q, "t");
      g.addNode("MatMul", [p.sum, wq], { outputs: ["y"] });
      g.addOutput("y");
      assert.equal(distributeParts(g, new Map([[p.sum, p.parts]])), 1);
      g.prune();
      g.topoSort();
      assert.equal(g.nodes.filter((n) => n.opType === "MatMul").length, 2, "one product per part");
      const run = async (h: Graph) => {
        const s = await rt.createSession(h);
        const o = await s.run({ x: { data: x, dims: [2, 50, 16] } });
        await s.release();
        return o.y.data;
      };
      const [a, b] = [await run(fake), await run(g)];
      for (let i = 0; i < a.length; i++) {
        assert.ok(
          Math.abs(a[i] - b[i]) <= 1e-5 * (1 + Math.abs(a[i])),
          `${kind} ${bits} [${i}] ${a[i]} ${b[i]}`,
        );
      }
      const fused = await fusedOps(rt, g.toBytes());
      assert.ok(Object.keys(fused).some((op) => /Integer|QLinear/.test(op)), JSON.stringify(fused));
    }
  }
});

Deno.test("O-2SF integer LayerNorm: integers with per-channel shifts give the LayerNorm of the fake-quant values", () => {
  const c = 24, rows = 40, bits = 8, m = 4;
  const x = randomData(rows * c, 5, 1);
  for (let i = 0; i < x.length; i += c) x[i + 7] = x[i + 7] * 30 + 12; // outlier channel
  const step = Math.fround(1.1 / 127);
  const q: O2sfQuantizer = { bits, step, m, flags: o2sfFlags(x, c, bits, step, m, "threshold") };
  assert.deepEqual([...q.flags.keys()].filter((i) => q.flags[i]), [7]);
  const fq = o2sf(x, [rows, c], q);
  const ints = o2sfDecodeInt(o2sfEncode(x, q), q);
  const eps = 1e-5;
  for (let r = 0; r < rows; r++) {
    // integer statistics: sums of integers, variance in units of S^2 (eps rescaled by 1/S^2)
    let s1 = 0, s2 = 0;
    for (let j = 0; j < c; j++) s1 += ints[r * c + j];
    const mean = s1 / c;
    for (let j = 0; j < c; j++) s2 += (ints[r * c + j] - mean) ** 2;
    const inv = 1 / Math.sqrt(s2 / c + eps / (step * step));
    // float LayerNorm of the fake-quant values
    let f1 = 0, f2 = 0;
    for (let j = 0; j < c; j++) f1 += fq[r * c + j];
    const fm = f1 / c;
    for (let j = 0; j < c; j++) f2 += (fq[r * c + j] - fm) ** 2;
    const finv = 1 / Math.sqrt(f2 / c + eps);
    for (let j = 0; j < c; j++) {
      const a = (ints[r * c + j] - mean) * inv, b = (fq[r * c + j] - fm) * finv;
      // the fake-quant values are int·S rounded to float32: agreement to float32 precision
      assert.ok(Math.abs(a - b) < 1e-6, `row ${r} channel ${j}: ${a} vs ${b}`);
    }
  }
});

async function ctxFor(
  fixture: string,
  options: Record<string, unknown>,
  bits = { w: 8, a: 8 },
): Promise<QuantContext> {
  return await fixtureContext(fixture, { calibSize: 8, bits, options, batchSize: 8 });
}

async function logits(g: Graph, c: QuantContext): Promise<Float32Array> {
  const rt = await runtime();
  const s = await rt.createSession(g);
  const out = await s.run({ input: { data: await c.calib.slice(0, 8), dims: [8, 1, 28, 28] } });
  await s.release();
  return out[s.outputNames[0]].data;
}

Deno.test("TSPTQ-ViT: fully quantized graph with V-2SF and O-2SF, ablation switches, options", async () => {
  for (const fixture of ["tiny_vit_op17.onnx", "tiny_swin_op13.onnx"]) {
    const c = await ctxFor(fixture, { ...tsptq.defaults, n: 12, rounds: 1, mMax: 6 });
    const q = await tsptq.quantize(c);
    const a = await logits(c.graph, c), b = await logits(q.graph, c);
    let err = 0, scale = 0;
    for (let i = 0; i < a.length; i++) {
      err = Math.max(err, Math.abs(a[i] - b[i]));
      scale = Math.max(scale, Math.abs(a[i]));
    }
    assert.ok(err / scale < 0.15, `${fixture}: relative logit error ${err / scale}`);
    const lns = c.sites.filter((s) => s.kind === "ln");
    const lnRecs = q.layers.filter((l) => l.kind === "ln");
    assert.equal(lnRecs.length, lns.length, fixture);
    assert.ok(lnRecs.every((l) => /^O-2SF m=\d+/.test(l.quantizer)), fixture);
    const soft = q.layers.filter((l) => l.tensor === "a" && l.role === "av");
    assert.ok(soft.length > 0 && soft.every((l) => l.quantizer.startsWith("V-2SF unsigned")));
    const gelu = q.layers.filter((l) => l.tensor === "input" && l.role === "fc2");
    assert.ok(gelu.length > 0 && gelu.every((l) => l.quantizer.startsWith("V-2SF signed")));
    // every reader of a LayerNorm input (the LayerNorm, the residual add) reads it quantized:
    // what still reads the FP value is the quantizer's Div (and shape queries)
    for (const s of lns) {
      const readers = q.graph.nodes.filter((n) => n.inputs.includes(s.input!));
      assert.ok(readers.some((n) => n.opType === "Div"), `${fixture} ${s.id}`);
      assert.ok(readers.every((n) => ["Div", "Shape"].includes(n.opType)), `${fixture} ${s.id}`);
    }
  }
  // ablation: both off gives per-tensor uniform LN inputs and PTQ4ViT's uniform softmax/GELU
  const c = await ctxFor("tiny_vit_op17.onnx", {
    ...tsptq.defaults,
    v2sf: false,
    o2sf: false,
    n: 8,
    rounds: 1,
  });
  const q = await tsptq.quantize(c);
  assert.ok(q.layers.filter((l) => l.kind === "ln").every((l) => l.quantizer === "per-tensor sym"));
  const avA = q.layers.filter((l) => l.role === "av" && /^a(\[h\d+\])?$/.test(l.tensor));
  assert.ok(avA.length > 0 && avA.every((l) => /^per-(tensor|head) sym$/.test(l.quantizer)));
  assert.equal(optionsError(tsptq, { ...tsptq.defaults }), undefined);
  assert.match(optionsError(tsptq, { ...tsptq.defaults, flagRule: "x" })!, /flagRule/);
  assert.match(optionsError(tsptq, { ...tsptq.defaults, mMax: 0 })!, /mMax/);
  assert.match(optionsError(tsptq, { ...tsptq.defaults, metric: "l1" })!, /metric/);
  assert.ok(!("twinSoftmax" in tsptq.defaults) && "gradient" in tsptq.defaults);
});
