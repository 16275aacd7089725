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
import {
  applySmooth,
  greedyAllocate,
  mptq,
  type Plans,
  sensitivityTable,
  smoothGroups,
  switchGraph,
} from "../methods/mptq.ts";
import { applyPlan } from "../core/quant/apply.ts";
import { activationTargets } from "../core/quant/scope.ts";
import { emitFakeQuant, symmetric } from "../core/quant/uniform.ts";
import { achievedBits } from "../bench/store.ts";
import { fusedOps } from "../bench/speed.ts";
import { normalizeManifest } from "../bench/manifest.ts";
import {
  FIXTURE_CARD as card,
  fixtureContext,
  FIXTURES,
  quantContext,
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

async function ctx(
  bits: QuantContext["bits"],
  over: Record<string, unknown> = {},
): Promise<QuantContext> {
  return await fixtureContext("tiny_vit_op17.onnx", {
    calibSize: 8,
    bits,
    options: { ...mptq.defaults, n: 12, rounds: 1, optmN: 4, optmMaxM: 3, mpN: 4, ...over },
    batchSize: 8,
  });
}

Deno.test("MPTQ-ViT single precision: every tensor at its bits, OPT-m on the fc2 input, SQ-b folded", async () => {
  const c = await ctx({ w: 4, a: 4 });
  const before = c.graph.toBytes();
  const q = await mptq.quantize(c);
  // the FP graph the runner hands to the next cells is left as it was
  assert.deepEqual(c.graph.toBytes(), before, "mptq must not change ctx.graph");
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

/** Logits of a graph with extra float feeds beside the images. */
async function logitsWith(
  g: Graph,
  calib: ImageSource,
  extra: Record<string, Float32Array>,
): Promise<Float32Array> {
  const s = await (await runtime()).createSession(g);
  try {
    const x = await calib.slice(0, calib.length);
    const feeds = { [g.inputNames[0]]: { data: x, dims: [calib.length, ...calib.shape] } };
    for (const [k, v] of Object.entries(extra)) {
      Object.assign(feeds, { [k]: { data: v, dims: [v.length] } });
    }
    const out = await s.run(feeds);
    return out[g.outputNames[0]].data;
  } finally {
    await s.release();
  }
}

/** ||a - b|| / ||a||. */
function relL2(a: Float32Array, b: Float32Array): number {
  let d = 0, m = 0;
  for (let i = 0; i < a.length; i++) {
    d += (a[i] - b[i]) ** 2;
    m += a[i] ** 2;
  }
  return Math.sqrt(d / m);
}

function maxRelDiff(a: Float32Array, b: Float32Array): number {
  let d = 0, m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(a[i]));
  }
  return d / Math.max(1, m);
}

Deno.test("Greedy MP KL graph: selectors pick each unit's high or low quantizer (all 0: the high plan, all 1: the low plan, one: that unit alone lowered)", async () => {
  const graph = await Graph.load(`${FIXTURES}tiny_vit_op17.onnx`);
  const sites = findSites(graph);
  const calib = await calibSource(4);
  const lin = sites.filter((s) => s.kind === "linear");
  const mm = sites.filter((s) => s.kind === "matmul");
  const plans = (bits: number, lowered?: string, low = 3): Plans => {
    const b = (unit: string) => (unit === lowered ? low : bits);
    return {
      weights: lin.map((s) => ({
        unit: `w:${s.id}`,
        plan: { site: s, q: symmetric(b(`w:${s.id}`), 0.02) },
      })),
      acts: [
        ...lin.filter((s) => s.role !== "patch_embed").map((s) => ({
          unit: `a:${s.id}`,
          plan: { site: s, slot: 0, q: symmetric(b(`a:${s.id}`), 0.05) },
        })),
        // the softmax operand through a custom emitter (the twin, V-2SF and O-2SF path; a
        // uniform one: ORT's extended optimizations fold a twin quantizer's last Div into
        // the MatMul of a plain fake-quant graph but not behind a Where, and the float
        // difference can flip 3-bit codes downstream)
        ...mm.flatMap((s) =>
          [0, 1].map((slot) => {
            const q = symmetric(b(`a:${s.id}`), slot === 0 ? 0.01 : 0.04);
            return {
              unit: `a:${s.id}`,
              plan: s.role === "av" && slot === 0
                ? {
                  site: s,
                  slot,
                  emit: (g: Graph, x: string, p: string) => emitFakeQuant(g, x, q, p),
                }
                : { site: s, slot, q },
            };
          })
        ),
      ],
      records: [],
    };
  };
  const hi = plans(8), lo = plans(3);
  const units = [...new Set([...hi.weights, ...hi.acts].map((u) => u.unit))];
  const sw = switchGraph(graph, hi, lo, units);
  const fake = (p: Plans) =>
    logits(applyPlan(graph, p.weights.map((w) => w.plan), p.acts.map((a) => a.plan)).graph, calib);
  const sel = (on: number[]) => {
    const v = new Float32Array(units.length);
    for (const i of on) v[i] = 1;
    return { mptq_mp_select: v };
  };
  const [allHi, allLo] = [await fake(hi), await fake(lo)];
  assert.ok(maxRelDiff(allHi, allLo) > 1e-3, "3-bit and 8-bit plans differ");
  assert.ok(maxRelDiff(await logitsWith(sw, calib, sel([])), allHi) <= 1e-5);
  assert.ok(maxRelDiff(await logitsWith(sw, calib, sel(units.map((_, i) => i))), allLo) <= 1e-5);
  for (const unit of [units[1], ...units.filter((u) => /^a:b0\.(qk|av)$/.test(u))]) {
    const i = units.indexOf(unit);
    const one = await logitsWith(sw, calib, sel([i]));
    assert.ok(maxRelDiff(one, await fake(plans(8, unit))) <= 1e-5, unit);
    assert.ok(maxRelDiff(one, allHi) > 0, `${unit} lowered changes the logits`);
  }
});

Deno.test("MPTQ-ViT Greedy MP with the KL loss: nonnegative table, lower candidates cost more, targets reached", async () => {
  const c = await ctx({ w: 5, a: 5, mixed: [4, 5, 6, 8] }, { mpLoss: "kl", mpImages: 6, mpN: 16 });
  const t = await sensitivityTable(c);
  assert.equal(t.images, 6);
  assert.deepEqual(t.cands, [4, 5, 6, 8]);
  const top = t.cands.length - 1;
  for (const u of t.units) {
    assert.equal(u.err.length, 4, u.key);
    assert.ok(u.err.every((e) => Number.isFinite(e) && e >= 0), `${u.key}: ${u.err}`);
  }
  // the all-highest model is one entry shared by every unit
  assert.equal(new Set(t.units.map((u) => u.err[top])).size, 1);
  // monotone-ish (the KL of a random fixture on 6 images is noisy): 4 bits cost more
  // than 8 for most units and on average
  const worse = t.units.filter((u) => u.err[0] > u.err[top]).length;
  assert.ok(worse >= 0.6 * t.units.length, `${worse} of ${t.units.length}`);
  const mean = (i: number) => t.units.reduce((s, u) => s + u.err[i], 0) / t.units.length;
  assert.ok(mean(0) > 1.2 * mean(top), `${mean(0)} vs ${mean(top)}`);
  // units: every linear weight (patch embedding included) and input, every attention matmul
  const sites = c.sites.filter((s) => s.kind === "linear" || s.kind === "matmul");
  const linears = sites.filter((s) => s.kind === "linear").length;
  assert.equal(t.units.length, 2 * linears - 1 + (sites.length - linears));
  const q = await mptq.quantize(c);
  const a = achievedBits(q.layers);
  assert.ok(a.wBitsAvg! <= 5 + 1e-9 && a.wBitsAvg! > 4, `weights ${a.wBitsAvg}`);
  assert.ok(a.aBitsAvg! <= 5 + 1e-9 && a.aBitsAvg! > 4, `activations ${a.aBitsAvg}`);
  assert.ok(new Set(q.layers.map((l) => l.bits)).size > 1);
  assert.match(q.notes ?? "", /loss kl on 6 calibration images/);
});

Deno.test("MPTQ-ViT full scope: every LayerNorm input quantized and recorded, W8A8 logits close to FP, LayerNorm inputs join Greedy MP", async () => {
  const c = await ctx({ w: 8, a: 8 }, { scope: "full" });
  const lnTargets = activationTargets(c.graph, c.sites, "full").filter((t) => t.role === "ln_in");
  assert.ok(lnTargets.length > 0);
  const q = await mptq.quantize(c);
  const ln = q.layers.filter((l) => l.kind === "ln");
  assert.deepEqual(ln.map((l) => l.site).sort(), lnTargets.map((t) => t.site.id).sort());
  assert.ok(ln.every((l) => l.tensor === "input" && l.bits === 8 && l.elements > 0));
  assert.ok(ln.every((l) => /O-2SF/.test(l.quantizer)), ln.map((l) => l.quantizer).join(";"));
  assert.match(q.notes ?? "", /scope full/);
  const fp = await logits(c.graph, c.calib);
  const full = await logits(q.graph, c.calib);
  assert.ok(relL2(fp, full) < 0.1, `W8A8 full scope: relative L2 ${relL2(fp, full)}`);
  // the linear scope leaves LayerNorm inputs FP: its graph differs from the full one
  const lin = await mptq.quantize(await ctx({ w: 8, a: 8 }));
  assert.equal(lin.layers.filter((l) => l.kind === "ln").length, 0);
  assert.ok(maxRelDiff(await logits(lin.graph, c.calib), full) > 0);
  // a per-tensor step instead of O-2SF, and LayerNorm inputs as Greedy MP units
  const m = await mptq.quantize(
    await ctx({ w: 5, a: 5, mixed: [4, 5, 6, 8] }, { scope: "full", lnQuantizer: "uniform" }),
  );
  const mln = m.layers.filter((l) => l.kind === "ln");
  assert.equal(mln.length, lnTargets.length);
  assert.ok(mln.every((l) => l.quantizer === "per-tensor sym" && [4, 5, 6, 8].includes(l.bits)));
  assert.ok(achievedBits(m.layers).aBitsAvg! <= 5 + 1e-9);
});

Deno.test({
  name:
    "MPTQ-ViT deploy graph on the shipped ViT at W8A8: uniform quantizers as QDQ (integer kernels), Top-1 equal to the fake-quant graph's (within 0.2 points with uniform quantizers only, 1 point with V-2SF and the twin softmax)",
  sanitizeResources: false,
  fn: async () => {
    const graph = await Graph.load(`${ROOT}models/vit_fmnist.onnx`);
    const vitCard = JSON.parse(await Deno.readTextFile(`${ROOT}models/vit_fmnist.json`));
    const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
    const rt = await runtime();
    const c = await quantContext({
      graph,
      calib: makeSource(train, Array.from({ length: 16 }, (_, i) => i), vitCard),
      calibLabel: "train 0..15",
      bits: { w: 8, a: 8 },
      runtime: rt,
      // a short search: the deploy lowering does not depend on the step values
      options: { ...mptq.defaults, n: 10, rounds: 1, optmN: 4, optmMaxM: 3 },
      batchSize: 16,
    });
    const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
    const n = 500;
    const images = await makeSource(test, Array.from({ length: n }, (_, i) => i), vitCard)
      .slice(0, n);
    const top1 = async (g: Graph) => {
      const s = await rt.createSession(g);
      try {
        const y = (await s.run({ [s.inputNames[0]]: { data: images, dims: [n, 1, 28, 28] } }))[
          s.outputNames[0]
        ].data;
        let ok = 0;
        for (let i = 0; i < n; i++) {
          let best = 0;
          for (let k = 1; k < 10; k++) if (y[i * 10 + k] > y[i * 10 + best]) best = k;
          if (best === test.labels[i]) ok++;
        }
        return (100 * ok) / n;
      } finally {
        await s.release();
      }
    };
    // the integer kernels sum exactly where the fake-quant graph sums in float32, and the twin
    // parts split the A·V product: codes near a rounding boundary can flip downstream. With
    // only uniform quantizers (no OPT-m, no twin softmax) the two agree as minmax's do; V-2SF's
    // and the twin quantizer's coarser regions turn more such flips into changed logits
    // (measured: 3 of 500 images; the graphs compute the same values with ORT's optimizations
    // off, i.e. without integer kernels and fusions)
    for (
      const [over, tol] of [[{}, 1], [{ optm: false, twinSoftmax: false }, 0.2]] as const
    ) {
      const q = await mptq.quantize({ ...c, options: { ...c.options, ...over } });
      assert.ok(q.deployable, "MPTQ returns a deployable graph");
      const dep = q.deployable.graph;
      assert.ok(dep.nodes.some((n) => n.opType === "DequantizeLinear"), "QDQ in the deploy graph");
      const fused = await fusedOps(rt, dep.toBytes());
      assert.ok(
        (fused.MatMulIntegerToFloat ?? 0) + (fused.QLinearMatMul ?? 0) > 0,
        JSON.stringify(fused),
      );
      const [fake, deployed] = [await top1(q.graph), await top1(dep)];
      console.log(`MPTQ W8A8 ${JSON.stringify(over)}: fake-quant ${fake}, deploy ${deployed}`);
      assert.ok(fake > 80, `fake-quant Top-1 ${fake}`);
      assert.ok(Math.abs(fake - deployed) <= tol, `${fake} vs ${deployed}`);
    }
  },
});
