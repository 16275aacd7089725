import assert from "node:assert/strict";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { captureValues } from "../core/runtime/capture.ts";
import {
  channelRange,
  smoothFactors,
  smoothLinear,
  weightRowAbsMax,
} from "../core/quant/smooth.ts";
import { applySmooth, greedyAllocate, mptq, smoothGroups } from "../methods/mptq.ts";
import { achievedBits } from "../bench/store.ts";
import { normalizeManifest } from "../bench/manifest.ts";
import {
  contextKeys,
  FIXTURE_CARD as card,
  FIXTURES,
  randomData,
  ROOT,
  runtime,
} from "./helpers.ts";
import type { QuantContext } from "../methods/types.ts";
import type { ImageSource } from "../core/runtime/runtime.ts";

async function calibSource(n: number): Promise<ImageSource> {
  const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
  return makeSource(train, Array.from({ length: n }, (_, i) => i), card);
}

async function logits(g: Graph, calib: ImageSource): Promise<Float32Array> {
  const rt = await runtime();
  const s = await rt.createSession(g);
  try {
    const x = await calib.slice(0, calib.length);
    const out = await s.run({
      [g.inputNames[0]]: { data: x, dims: [calib.length, ...calib.shape] },
    });
    return out[g.outputNames[0]].data;
  } finally {
    await s.release();
  }
}

Deno.test("smoothLinear rewrites X·W + b exactly: (X - z)/s · diag(s)W + (b + zW)", () => {
  const rows = 7, cin = 5, cout = 3;
  const x = randomData(rows * cin, 1, 3);
  for (let i = 0; i < rows; i++) x[i * cin + 2] += 4; // an asymmetric channel
  const w = randomData(cin * cout, 2), b = randomData(cout, 3);
  const { min, max } = channelRange(x, cin);
  const f = smoothFactors(min, max, weightRowAbsMax(w, cin, cout), 0.5);
  assert.ok(Math.abs(f.shift[2] - (max[2] + min[2]) / 2) < 1e-6);
  const t = smoothLinear(x, w, cin, cout, b, f);
  for (let i = 0; i < rows; i++) {
    for (let o = 0; o < cout; o++) {
      let y = b[o], ys = t.bias[o];
      for (let j = 0; j < cin; j++) {
        y += x[i * cin + j] * w[j * cout + o];
        ys += t.x[i * cin + j] * t.w[j * cout + o];
      }
      assert.ok(Math.abs(y - ys) < 1e-4, `row ${i} col ${o}: ${y} vs ${ys}`);
    }
  }
  // the rewritten channels are centred: max = -min
  const r = channelRange(t.x, cin);
  for (let j = 0; j < cin; j++) assert.ok(Math.abs(r.max[j] + r.min[j]) < 1e-4 * r.max[j]);
});

for (const model of ["vit", "swin"]) {
  Deno.test(`SQ-b folded into the LayerNorms keeps the FP logits of the shipped ${model} within 1e-5`, async () => {
    const graph = await Graph.load(`${ROOT}models/${model}_fmnist.onnx`);
    const sites = findSites(graph);
    const calib = await calibSource(8);
    const groups = smoothGroups(graph, sites, "ln");
    // every LayerNorm in front of qkv and fc1 (and Swin's reductions) folds
    const roles = new Set(groups.flatMap((g) => g.members.map((s) => s.role)));
    assert.ok(roles.has("qkv") && roles.has("fc1"), [...roles].join(","));
    if (model === "swin") assert.ok(roles.has("reduction"));
    const rt = await runtime();
    const inputs = groups.map((g) => g.members[0].input!);
    const cap = await captureValues(rt, graph, inputs, calib, 8);
    const folded = groups.map((group) => {
      const x = cap.get(group.members[0].input!)!;
      const cin = x.dims[x.dims.length - 1];
      const { min, max } = channelRange(x.data, cin);
      const t = graph.initializers.get(group.members[0].weight!)!;
      const w = t.float32(); // [cin, cout] MatMul layout in the shipped models
      return { group, f: smoothFactors(min, max, weightRowAbsMax(w, cin, w.length / cin), 0.5) };
    });
    // the factors are not trivial: some channel moves and some scale differs from 1
    assert.ok(folded.some(({ f }) => f.shift.some((z) => Math.abs(z) > 1e-3)));
    assert.ok(folded.some(({ f }) => f.scale.some((s) => Math.abs(s - 1) > 0.1)));
    const { graph: g2, explicit } = applySmooth(graph, folded);
    assert.equal(explicit.size, 0);
    const a = await logits(graph, calib), b = await logits(g2, calib);
    let d = 0, m = 0;
    for (let i = 0; i < a.length; i++) {
      d = Math.max(d, Math.abs(a[i] - b[i]));
      m = Math.max(m, Math.abs(a[i]));
    }
    assert.ok(d <= 1e-5 * Math.max(1, m), `max logit difference ${d} (max |logit| ${m})`);
    // the original graph is untouched
    const c = await logits(graph, calib);
    assert.deepEqual(c, a);
  });
}

Deno.test("greedyAllocate lowers the cheapest unit per saved average bit until both targets are met", () => {
  const cands = [4, 5, 6, 8];
  // loss at candidates 4, 5, 6, 8 per unit; w0 is very sensitive, w1 insensitive
  const units = [
    { side: "w" as const, elements: 100, err: [100, 10, 1, 0] },
    { side: "w" as const, elements: 100, err: [0.3, 0.2, 0.1, 0] },
    { side: "a" as const, elements: 50, err: [5, 1, 0.5, 0] },
    { side: "a" as const, elements: 150, err: [0.5, 0.1, 0.05, 0] },
  ];
  const bits = greedyAllocate(units, cands, { w: 6, a: 5 });
  const avg = (side: "w" | "a") => {
    let t = 0, n = 0;
    units.forEach((u, i) => {
      if (u.side === side) {
        t += bits[i] * u.elements;
        n += u.elements;
      }
    });
    return t / n;
  };
  assert.ok(avg("w") <= 6 && avg("a") <= 5, `averages ${avg("w")} / ${avg("a")}`);
  assert.ok(bits[0] > bits[1], `sensitive weight ${bits[0]} vs insensitive ${bits[1]}`);
  assert.ok(bits[2] >= bits[3]);
  // targets at the top keep everything at the highest candidate; at the bottom, all go to it
  assert.deepEqual(greedyAllocate(units, cands, { w: 8, a: 8 }), [8, 8, 8, 8]);
  assert.deepEqual(greedyAllocate(units, cands, { w: 4, a: 4 }), [4, 4, 4, 4]);
});

Deno.test("achievedBits: size-weighted averages and packed bytes; a single-precision cell's averages are its bits", () => {
  const single = [
    { tensor: "weight", bits: 4, elements: 1000 },
    { tensor: "weight", bits: 4, elements: 24 },
    { tensor: "input", bits: 4, elements: 3200 },
    { tensor: "a", bits: 4, elements: 10 },
  ];
  assert.deepEqual(achievedBits(single), { wBitsAvg: 4, aBitsAvg: 4, packedBytes: 500 + 12 });
  const mixed = [
    { tensor: "weight", bits: 8, elements: 100 },
    { tensor: "weight", bits: 4, elements: 300 },
    { tensor: "input", bits: 6, elements: 10 },
    { tensor: "b", bits: 3, elements: 30 },
  ];
  const m = achievedBits(mixed);
  assert.equal(m.wBitsAvg, (8 * 100 + 4 * 300) / 400);
  assert.equal(m.aBitsAvg, (6 * 10 + 3 * 30) / 40);
  assert.equal(m.packedBytes, 100 + 150);
  // a record without an element count leaves the averages unknown
  assert.equal(achievedBits([{ tensor: "weight", bits: 4, elements: 0 }]).wBitsAvg, null);
});

async function ctx(bits: QuantContext["bits"]): Promise<QuantContext> {
  const graph = await Graph.load(`${FIXTURES}tiny_vit_op17.onnx`);
  return {
    graph,
    sites: findSites(graph),
    calib: await calibSource(8),
    bits,
    runtime: await runtime(),
    options: { ...mptq.defaults, n: 12, rounds: 1, optmN: 4, optmMaxM: 3, mpN: 4 },
    batchSize: 8,
    ...(await contextKeys(graph, "train 0..7")),
    seed: 0,
    log: () => {},
  };
}

Deno.test("MPTQ-ViT single precision: every tensor at its bits, OPT-m on the fc2 input, SQ-b folded", async () => {
  const c = await ctx({ w: 4, a: 4 });
  const q = await mptq.quantize(c);
  assert.ok(q.layers.length > 0);
  assert.ok(q.layers.every((l) => l.bits === 4 && l.elements > 0));
  assert.deepEqual(achievedBits(q.layers), {
    wBitsAvg: 4,
    aBitsAvg: 4,
    packedBytes: q.layers.filter((l) => l.tensor === "weight").reduce(
      (t, l) => t + Math.ceil((4 * l.elements) / 8),
      0,
    ),
  });
  const fc2 = q.layers.find((l) => l.site === "b0.fc2" && l.tensor === "input")!;
  assert.match(fc2.quantizer, /V-2SF/);
  const qkv = q.layers.find((l) => l.site === "b0.qkv" && l.tensor === "weight")!;
  assert.match(qkv.quantizer, /SQ-b/);
  const out = await logits(q.graph, c.calib);
  assert.ok(out.every(Number.isFinite));
});

Deno.test("MPTQ-ViT Greedy MP reaches the target averages with candidate bit-widths", async () => {
  const c = await ctx({ w: 5, a: 5, mixed: [4, 5, 6, 8] });
  const q = await mptq.quantize(c);
  assert.ok(q.layers.every((l) => [4, 5, 6, 8].includes(l.bits)));
  const a = achievedBits(q.layers);
  assert.ok(a.wBitsAvg! <= 5 + 1e-9 && a.wBitsAvg! > 4, `weights ${a.wBitsAvg}`);
  assert.ok(a.aBitsAvg! <= 5 + 1e-9 && a.aBitsAvg! > 4, `activations ${a.aBitsAvg}`);
  assert.ok(new Set(q.layers.map((l) => l.bits)).size > 1, "mixed precision uses several widths");
  assert.match(q.notes ?? "", /Greedy MP/);
});

Deno.test("manifest: mixed targets must lie within the candidates and need a method that supports them", async () => {
  const base = {
    name: "m",
    models: ["vit_fmnist"],
    methods: ["mptq"],
    dataset: { name: "fashion-mnist" },
    calibration: { size: 8 },
  };
  const ok = await normalizeManifest(
    { ...base, bits: [{ w: 5, a: 5, mixed: [4, 5, 6, 8] }] },
    "m.json",
  );
  assert.deepEqual(ok.bits[0].mixed, [4, 5, 6, 8]);
  await assert.rejects(
    normalizeManifest({ ...base, bits: [{ w: 3, a: 5, mixed: [4, 5, 6, 8] }] }, "m.json"),
    /m\.json: \/bits\/0\/w: target 3 is outside the mixed candidates 4\.\.8/,
  );
  await assert.rejects(
    normalizeManifest(
      { ...base, methods: ["minmax"], bits: [{ w: 5, a: 5, mixed: [4, 8] }] },
      "m.json",
    ),
    /\/bits\/0\/mixed: no method of this manifest supports mixed precision/,
  );
});
