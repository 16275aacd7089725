import assert from "node:assert/strict";
import { DataType, Graph, makeAttr, type Node, Tensor } from "../core/onnx/graph.ts";
import type { Site } from "../core/onnx/sites.ts";
import { upgradeOpset21 } from "../core/onnx/opset.ts";
import { type ActPlan, applyPlan } from "../core/quant/apply.ts";
import {
  emitTwinGelu,
  emitTwinSoftmax,
  twinGeluParts,
  twinSoftmaxParts,
} from "../core/quant/twin.ts";
import {
  fakeQuant,
  qRange,
  quantCodes,
  symmetric,
  type UniformQuantizer,
} from "../core/quant/uniform.ts";
import {
  coverageShapes,
  emitQdqActivation,
  emitQdqWeight,
  fractionalZpFloor,
  hoistHeadCodes,
  integerCoverage,
  integerSite,
  qdqable,
  unhoistHeadCodes,
} from "../core/quant/deploy.ts";
import { emitFakeQuant } from "../core/quant/uniform.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { minmax } from "../methods/baselines.ts";
import { ptq4vit } from "../methods/ptq4vit.ts";
import { repq } from "../methods/repq.ts";
import { tsptq } from "../methods/tsptq.ts";
import { adfq } from "../methods/adfq.ts";
import type { QuantMethod } from "../methods/types.ts";
import type { Bits, QuantContext } from "../methods/types.ts";
import {
  cli,
  quantContext,
  randomData,
  readRows,
  ROOT,
  runtime,
  tmpDir,
  writeManifest,
} from "./helpers.ts";
import { fusedOps, integerKernels } from "../bench/speed.ts";
import { Store } from "../bench/store.ts";
import { chunkedDeploy, deployStage } from "../bench/deploy.ts";
import { findSites } from "../core/onnx/sites.ts";
import { buildVitGraph } from "../core/ivit/vits.ts";
import { GELU_NEG_RANGE } from "../core/quant/twin.ts";

function quantizers(): { name: string; q: UniformQuantizer }[] {
  const out: { name: string; q: UniformQuantizer }[] = [];
  for (const bits of [2, 3, 4, 5, 6, 8]) {
    out.push({
      name: `W${bits} signed per-tensor`,
      q: { bits, signed: true, scale: Float32Array.of(0.037), zeroPoint: Float32Array.of(0) },
    });
    const { qmax } = qRange(bits, false);
    out.push({
      name: `W${bits} unsigned zp per-channel`,
      q: {
        bits,
        signed: false,
        scale: Float32Array.of(0.05, 0.011, 0.3),
        zeroPoint: Float32Array.of(Math.floor(qmax / 2), 1, 0),
        axis: 1,
      },
    });
  }
  return out;
}

/**
 * The node a MatMulInteger operand's codes come from: past the int8 conversion of hoisted
 * uint8 codes (`Cast(Sub(codes, 128), int8)`, asserted) and the head layout ops.
 */
function codesSource(g: Graph, producer: Map<string, Node>, v: string): Node | undefined {
  let p = producer.get(v);
  if (p?.opType === "Cast") {
    const sub = producer.get(p.inputs[0])!;
    assert.equal(sub.opType, "Sub");
    assert.equal(g.initializers.get(sub.inputs[1])?.numbers()[0], 128);
    p = producer.get(sub.inputs[0]);
  }
  while (p && (p.opType === "Transpose" || p.opType === "Gather")) p = producer.get(p.inputs[0]);
  return p;
}

Deno.test("deploy: integer codes reproduce fakeQuant bit for bit ((code - z) * step)", () => {
  const x = randomData(3 * 3 * 50, 7, 6);
  for (const { name, q } of quantizers()) {
    const dims = [3, 3, 50];
    const codes = quantCodes(x, dims, q);
    const fq = fakeQuant(x, dims, q);
    const { qmin, qmax } = qRange(q.bits, q.signed);
    const inner = 50;
    for (let i = 0; i < x.length; i++) {
      const c = q.scale.length > 1 ? Math.floor(i / inner) % 3 : 0;
      assert.ok(codes[i] >= qmin && codes[i] <= qmax, name);
      assert.equal(Math.fround((codes[i] - q.zeroPoint[c]) * q.scale[c]), fq[i], `${name} [${i}]`);
    }
  }
});

Deno.test("deploy: QuantizeLinear/DequantizeLinear equals the fake-quant subgraph in ONNX Runtime", async () => {
  const rt = await runtime();
  const dims = [4, 3, 64];
  // values on and between the grid, ties, far outside the range
  const x = randomData(dims.reduce((a, b) => a * b), 11, 8);
  for (let i = 0; i < 64; i++) x[i] = (i - 32) * 0.0185;
  for (const { name, q } of quantizers()) {
    const g = Graph.create(17);
    g.addInput("x", dims);
    const a = emitFakeQuant(g, "x", q, "fq", 3);
    const b = emitQdqActivation(g, "x", q, "qdq", 3);
    g.addOutput(a);
    g.addOutput(b);
    const s = await rt.createSession(g);
    const out = await s.run({ x: { data: x, dims } });
    await s.release();
    // equal values (QuantizeLinear gives +0 where the fake-quant Mul gives -0)
    const plain = (d: Float32Array) => Array.from(d, (v) => (v === 0 ? 0 : v));
    assert.deepEqual(plain(out[b].data), plain(out[a].data), name);
  }
});

Deno.test("deploy: qdqable needs integer zero points that fit the 8-bit container", () => {
  const q = (signed: boolean, z: number, bits = 8): UniformQuantizer => ({
    bits,
    signed,
    scale: Float32Array.of(0.1, 0.2),
    zeroPoint: Float32Array.of(0, z),
    axis: 0,
  });
  for (const z of [0, 17, 255]) assert.ok(qdqable(q(false, z)), `uint8 z ${z}`);
  for (const z of [-1, 256, 300, 3.5]) assert.ok(!qdqable(q(false, z)), `uint8 z ${z}`);
  for (const z of [-128, 0, 127]) assert.ok(qdqable(q(true, z)), `int8 z ${z}`);
  for (const z of [-129, 128]) assert.ok(!qdqable(q(true, z)), `int8 z ${z}`);
  assert.ok(!qdqable(q(false, 0, 9)) && !qdqable(q(false, 0, 1)), "2-8 bits");
});

Deno.test("deploy: a zero point outside the container keeps the quantizer float fake-quant; a 4-bit one outside int4 uses 8-bit codes", async () => {
  const rt = await runtime();
  const { g, site } = linearGraph("MatMul", [3, 16], { bias: false, cols: 5, seed: 2 });
  // an activation range that excludes 0 (z = -40 does not fit uint8), a 4-bit weight
  // quantizer with z = 20 (fits uint8, not uint4)
  const act: UniformQuantizer = {
    bits: 8,
    signed: false,
    scale: Float32Array.of(0.01),
    zeroPoint: Float32Array.of(-40),
  };
  const wq: UniformQuantizer = {
    bits: 4,
    signed: false,
    scale: new Float32Array(5).fill(0.02),
    zeroPoint: new Float32Array(5).fill(20),
    axis: 1,
  };
  const up = g.clone();
  upgradeOpset21(up);
  const { graph, deploy } = applyPlan(up, [{ site, q: wq }], [{ site, slot: 0, q: act }], {
    deploy: true,
  });
  assert.ok(!deploy!.nodes.some((n) => n.opType === "QuantizeLinear"), "activation float");
  assert.ok(
    !deploy!.nodes.some((n) => n.opType === "DequantizeLinear"),
    "the weight beside a float input is float",
  );
  // with a QDQ activation the 4-bit weight's codes are uint8 (not uint4)
  const act2 = { ...act, zeroPoint: Float32Array.of(40) };
  const d2 = applyPlan(up, [{ site, q: wq }], [{ site, slot: 0, q: act2 }], { deploy: true });
  const codes2 = [...d2.deploy!.initializers.values()].filter((t) =>
    t.name.includes("_codes") && t.dataType !== DataType.FLOAT
  );
  assert.deepEqual(codes2.map((t) => t.dataType), [2], "uint8 codes");
  const x = randomData(48, 3, 1);
  for (const [a, b] of [[graph, deploy!], [d2.graph, d2.deploy!]]) {
    const run = async (gg: Graph) => {
      const s = await rt.createSession(gg);
      const o = await s.run({ x: { data: x, dims: [3, 16] } });
      await s.release();
      return o.y.data;
    };
    const [ya, yb] = [await run(a), await run(b)];
    for (let i = 0; i < ya.length; i++) {
      assert.ok(Math.abs(ya[i] - yb[i]) <= 1e-5 * (1 + Math.abs(ya[i])), `[${i}]`);
    }
  }
});

/**
 * A one-linear graph `y = x·W + b` (MatMul, or Gemm with transB) and its site;
 * `bias: false` leaves `+ b` out (MatMul only), `cols` output columns, `seed`
 * of the weights, `role` of the site.
 */
function linearGraph(
  op: "MatMul" | "Gemm",
  dims: number[],
  { bias = true, cols = 7, seed = 3, role = "fc1" } = {},
): { g: Graph; site: Site } {
  const g = Graph.create(17);
  g.addInput("x", dims);
  const k = dims[dims.length - 1];
  const wDims = op === "MatMul" ? [k, cols] : [cols, k];
  g.setInitializer(Tensor.fromFloat32("w", wDims, randomData(cols * k, seed, 0.5)));
  if (op === "MatMul" && !bias) {
    g.addNode("MatMul", ["x", "w"], { name: "mm", outputs: ["y"] });
  } else if (op === "MatMul") {
    g.setInitializer(Tensor.fromFloat32("b", [cols], randomData(cols, 4, 0.5)));
    const mm = g.addNode("MatMul", ["x", "w"], { name: "mm" });
    g.addNode("Add", [mm, "b"], { outputs: ["y"] });
  } else {
    g.setInitializer(Tensor.fromFloat32("b", [cols], randomData(cols, 4, 0.5)));
    g.addNode("Gemm", ["x", "w", "b"], {
      name: "mm",
      outputs: ["y"],
      attributes: [makeAttr("transB", 1)],
    });
  }
  g.addOutput("y");
  const site = {
    id: "s",
    kind: "linear",
    role,
    block: 0,
    node: "mm",
    output: "y",
    weight: "w",
    weightOutAxis: op === "MatMul" ? 1 : 0,
  } as Site;
  return { g, site };
}

async function runXY(g: Graph, x: Float32Array, dims: number[]): Promise<Float32Array> {
  const s = await (await runtime()).createSession(g);
  const o = await s.run({ x: { data: x, dims } });
  await s.release();
  return o.y.data;
}

Deno.test("deploy: an integer weight beside a float input is stored as its float dequantized values: deploy equals fake-quant, no MatMulNBits", async () => {
  const rt = await runtime();
  for (const op of ["MatMul", "Gemm"] as const) {
    const dims = op === "MatMul" ? [2, 9, 16] : [9, 16];
    const { g: g17, site } = linearGraph(op, dims);
    // and at opset 21, where 4-bit codes are packed as uint4
    const g21 = g17.clone();
    upgradeOpset21(g21);
    for (const g of [g17, g21]) {
      const axis = site.weightOutAxis!;
      for (
        const wq of [
          { bits: 8, signed: false, zeroPoint: 119 },
          { bits: 8, signed: true, zeroPoint: 0 },
          { bits: 4, signed: false, zeroPoint: 8 },
        ]
      ) {
        const q: UniformQuantizer = {
          bits: wq.bits,
          signed: wq.signed,
          scale: Float32Array.from(
            { length: 7 },
            (_, i) => 0.003 * (i + 1) * (wq.bits === 4 ? 16 : 1),
          ),
          zeroPoint: new Float32Array(7).fill(wq.zeroPoint),
          axis,
        };
        // the input stays float: no plan, or a custom (float) quantizer
        const plans: ActPlan[][] = [[], [{
          site,
          slot: 0,
          emit: (gg, i, p) => emitFakeQuant(gg, i, symmetric(8, 0.02), p),
        }]];
        for (const acts of plans) {
          const { graph, deploy } = applyPlan(g, [{ site, q }], acts, { deploy: true });
          const x = randomData(dims.reduce((a, b) => a * b), 5, 2);
          const [a, b] = [await runXY(graph, x, dims), await runXY(deploy!, x, dims)];
          for (let i = 0; i < a.length; i++) {
            assert.ok(
              Math.abs(a[i] - b[i]) <= 1e-6 * (1 + Math.abs(a[i])),
              `${op} W${q.bits} [${i}] ${a[i]} ${b[i]}`,
            );
          }
          assert.ok(!deploy!.nodes.some((n) => n.opType === "DequantizeLinear"), "weight float");
          const fused = await fusedOps(rt, deploy!.toBytes());
          assert.equal(fused.MatMulNBits, undefined, JSON.stringify(fused));
        }
      }
    }
  }
});

Deno.test("deploy: a fractional zero point (RepQ-ViT's z̄) becomes two integer parts equal to the fake-quant values, saturated ends included", async () => {
  const rt = await runtime();
  const dims = [2, 40, 16];
  const { g, site } = linearGraph("MatMul", dims);
  const wq: UniformQuantizer = {
    bits: 8,
    signed: false,
    scale: new Float32Array(7).fill(0.004),
    zeroPoint: new Float32Array(7).fill(121),
    axis: 1,
  };
  // values far beyond both ends of the range, on the grid, and on rounding ties
  const x = randomData(dims.reduce((a, b) => a * b), 13, 4);
  for (
    const [bits, z, step] of [[8, 127.37, 0.02], [8, 3.9, 0.02], [8, 253.5, 0.02], [
      4,
      7.25,
      0.3,
    ]]
  ) {
    for (let i = 0; i < 64; i++) {
      x[i] = (i - 32 + (i % 3 === 0 ? 0.5 : 0)) * step * (bits === 4 ? 0.5 : 8);
    }
    const aq: UniformQuantizer = {
      bits,
      signed: false,
      scale: Float32Array.of(step),
      zeroPoint: Float32Array.of(z),
    };
    assert.equal(fractionalZpFloor(aq), Math.floor(z));
    const { graph, deploy } = applyPlan(g, [{ site, q: wq }], [{ site, slot: 0, q: aq }], {
      deploy: true,
    });
    const rounded = applyPlan(g, [{ site, q: wq }], [{
      site,
      slot: 0,
      q: { ...aq, zeroPoint: Float32Array.of(Math.round(z)) },
    }], { deploy: true }).deploy!;
    const [a, b, r] = [
      await runXY(graph, x, dims),
      await runXY(deploy!, x, dims),
      await runXY(rounded, x, dims),
    ];
    let maxDiff = 0, roundedDiff = 0;
    for (let i = 0; i < a.length; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]) / (1 + Math.abs(a[i])));
      roundedDiff = Math.max(roundedDiff, Math.abs(a[i] - r[i]) / (1 + Math.abs(a[i])));
    }
    assert.ok(maxDiff <= 1e-5, `W8A${bits} z ${z}: ${maxDiff}`);
    // the saturated ends are exercised: a rounded zero point differs there
    assert.ok(roundedDiff > 1e-3, `W8A${bits} z ${z}: rounded z differs by ${roundedDiff}`);
    const fused = await fusedOps(rt, deploy!.toBytes());
    assert.equal(fused.MatMulIntegerToFloat, 2, `two integer products: ${JSON.stringify(fused)}`);
    const cov = integerCoverage(g, deploy!, [site], new Map([["y", [2, 40, 7]]]));
    assert.deepEqual(cov.integerSites, ["s"]);
  }
  // no two-part form: signed, per channel, or ⌊z̄⌋ + 1 outside uint8
  const base = { bits: 8, scale: Float32Array.of(0.1) };
  assert.equal(
    fractionalZpFloor({ ...base, signed: true, zeroPoint: Float32Array.of(3.5) }),
    undefined,
  );
  assert.equal(
    fractionalZpFloor({ ...base, signed: false, zeroPoint: Float32Array.of(255.5) }),
    undefined,
  );
  assert.equal(
    fractionalZpFloor({ ...base, signed: false, zeroPoint: Float32Array.of(-0.5) }),
    undefined,
  );
  assert.equal(
    fractionalZpFloor({ ...base, signed: false, zeroPoint: Float32Array.of(4) }),
    undefined,
  );
});

Deno.test("deploy: integerCoverage's rules match ONNX Runtime's fusions (Gemm with a float bias and a Conv with a float output stay float)", async () => {
  const q8: UniformQuantizer = {
    bits: 8,
    signed: false,
    scale: Float32Array.of(0.02),
    zeroPoint: Float32Array.of(128),
  };
  const cases: { name: string; build: (g: Graph) => void; integer: boolean }[] = [];
  for (const bias of [false, true]) {
    for (const quantOut of [false, true]) {
      cases.push({
        name: `Gemm bias ${bias} quantized output ${quantOut}`,
        integer: !bias || quantOut,
        build: (g) => {
          g.addInput("x", [5, 16]);
          const a = emitQdqActivation(g, "x", q8, "a");
          const w = emitQdqWeight(g, randomData(96, 1, 1), [6, 16], { ...q8, axis: 0 }, "w");
          const ins = bias ? [a, w, g.constFloat("b", randomData(6, 2, 1), [6])] : [a, w];
          const y = g.addNode("Gemm", ins, { name: "site", attributes: [makeAttr("transB", 1)] });
          g.addOutput(quantOut ? emitQdqActivation(g, y, q8, "o") : y);
        },
      });
      cases.push({
        name: `Conv bias ${bias} quantized output ${quantOut}`,
        integer: quantOut,
        build: (g) => {
          g.addInput("x", [1, 1, 8, 8]);
          const a = emitQdqActivation(g, "x", q8, "a");
          const w = emitQdqWeight(g, randomData(64, 1, 1), [4, 1, 4, 4], {
            ...q8,
            scale: new Float32Array(4).fill(0.01),
            zeroPoint: new Float32Array(4).fill(120),
            axis: 0,
          }, "w");
          const ins = bias ? [a, w, g.constFloat("b", randomData(4, 2, 1), [4])] : [a, w];
          const y = g.addNode("Conv", ins, {
            name: "site",
            attributes: [makeAttr("strides", [4, 4])],
          });
          g.addOutput(quantOut ? emitQdqActivation(g, y, q8, "o") : y);
        },
      });
    }
  }
  for (const c of cases) {
    const g = Graph.create(17);
    c.build(g);
    const site = { id: "site", kind: "linear", node: "site" } as Site;
    const ours = integerSite(g, g.nodes.find((n) => n.name === "site")!);
    assert.equal(ours, c.integer, c.name);
    assert.deepEqual(await ortIntegerSites(g, [site]), c.integer ? ["site"] : [], c.name);
  }
});

/** First `n` shipped test images, preprocessed for a shipped model (default the ViT). */
async function shippedImages(n: number, model = "vit_fmnist"): Promise<Float32Array> {
  const card = JSON.parse(await Deno.readTextFile(`${ROOT}models/${model}.json`));
  const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
  return await makeSource(test, Array.from({ length: n }, (_, i) => i), card).slice(0, n);
}

/** Top-1 of a graph on the first `n` shipped test images (batches of 100). */
async function shippedTop1(
  n: number,
  model = "vit_fmnist",
): Promise<(g: Graph) => Promise<number>> {
  const rt = await runtime();
  const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
  const images = await shippedImages(n, model);
  const labels = Array.from({ length: n }, (_, i) => test.labels[i]);
  return async (g: Graph) => {
    const s = await rt.createSession(g);
    let ok = 0;
    for (let i = 0; i < n; i += 100) {
      const out = await s.run({
        [s.inputNames[0]]: {
          data: images.subarray(i * 784, (i + 100) * 784),
          dims: [100, 1, 28, 28],
        },
      });
      const y = out[s.outputNames[0]].data;
      for (let j = 0; j < 100; j++) {
        const row = y.subarray(j * 10, j * 10 + 10);
        let best = 0;
        for (let c = 1; c < 10; c++) if (row[c] > row[best]) best = c;
        if (best === labels[i + j]) ok++;
      }
    }
    await s.release();
    return (100 * ok) / n;
  };
}

/** Shapes of the values integer coverage needs, on one shipped image. */
async function coverageDimsOf(
  g: Graph,
  sites: Site[],
  model = "vit_fmnist",
): Promise<Map<string, number[]>> {
  const card = JSON.parse(await Deno.readTextFile(`${ROOT}models/${model}.json`));
  const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
  return await coverageShapes(await runtime(), g, sites, makeSource(test, [0], card));
}

const INTEGER_OP = /Integer|^QLinear|^QGemm/;

/**
 * The linear/matmul sites of a deploy graph that ONNX Runtime's optimized graph computes
 * with an integer kernel: the node of the same name (a fused node keeps it; its output may
 * be renamed when a later QuantizeLinear is moved up to it) is one, or the node producing
 * the site's value (or the QuantizeLinear that
 * reads it, fused into QLinearConv/QGemm) is one, or a Mul/Cast chain after one
 * (`integerMatMuls`' MatMulInteger, Cast, step Mul) or a layout change (ONNX Runtime's
 * NHWC QLinearConv). The truth `integerCoverage` must match.
 */
async function ortIntegerSites(deploy: Graph, sites: Site[]): Promise<string[]> {
  const rt = await runtime();
  const dir = await tmpDir();
  try {
    const path = `${dir}/optimized.onnx`;
    const s = await rt.createSession(deploy.toBytes(), "optimized deploy graph", {
      optimizedModelPath: path,
    });
    await s.release();
    const opt = Graph.fromBytes(await Deno.readFile(path), path);
    const producer = new Map<string, Node>();
    for (const n of opt.nodes) for (const o of n.outputs) producer.set(o, n);
    const byName = new Map(deploy.nodes.map((n) => [n.name, n]));
    const optByName = new Map(opt.nodes.map((n) => [n.name, n]));
    const integer = (v: string) => {
      let p = producer.get(v);
      for (let k = 0; k < 4 && p; k++) {
        if (INTEGER_OP.test(p.opType)) return true;
        // the steps after an integer matmul: Cast + Mul, or a DequantizeLinear of the int32 sums
        if (!["Mul", "Cast", "DequantizeLinear", "Transpose", "Reshape"].includes(p.opType)) {
          return false;
        }
        p = producer.get(p.inputs[0]);
      }
      return false;
    };
    return sites.filter((site) => {
      const n = byName.get(site.node);
      if (!n || (site.kind !== "linear" && site.kind !== "matmul")) return false;
      const quantized = deploy.nodes.filter((r) =>
        r.opType === "QuantizeLinear" && r.inputs[0] === n.outputs[0]
      );
      return INTEGER_OP.test(optByName.get(n.name)?.opType ?? "") ||
        [n.outputs[0], ...quantized.map((r) => r.outputs[0])].some(integer);
    }).map((site) => site.id);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function shippedCtx(
  bits: Bits,
  options: Record<string, unknown> = { ...minmax.defaults },
  model = "vit_fmnist",
): Promise<QuantContext> {
  const graph = await Graph.load(`${ROOT}models/${model}.onnx`);
  const card = JSON.parse(await Deno.readTextFile(`${ROOT}models/${model}.json`));
  const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
  return await quantContext({
    graph,
    calib: makeSource(train, Array.from({ length: 32 }, (_, i) => i), card),
    calibLabel: "train 0..31",
    bits,
    options,
    batchSize: 32,
  });
}

Deno.test({
  name:
    "deploy: chunkedDeploy runs a deploy graph in batch chunks where the cache budget asks, with the same outputs and fused kernels, and keeps a graph that mixes images unchunked",
  sanitizeResources: false,
  fn: async () => {
    const rt = await runtime();
    const c = await shippedCtx({ w: 8, a: 8 });
    const q = await minmax.quantize(c);
    const dep = q.deployable!.graph;
    const dims = await coverageDimsOf(c.graph, c.sites);
    const card = JSON.parse(await Deno.readTextFile(`${ROOT}models/vit_fmnist.json`));
    const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
    const src = makeSource(test, Array.from({ length: 64 }, (_, i) => i), card);
    // the shipped ViT fits the cache whole: not chunked at the default budget, nor at 0
    assert.equal((await chunkedDeploy(rt, dep, dims, src)).graph, dep);
    assert.equal((await chunkedDeploy(rt, dep, dims, src, 0)).graph, dep);
    // a budget of 3 images' largest activation: chunks of 3
    let largest = 0;
    for (const d of dims.values()) largest = Math.max(largest, d.reduce((a, b) => a * b, 1));
    const r = await chunkedDeploy(rt, dep, dims, src, 3 * 4 * largest);
    assert.equal(r.chunk, 3);
    assert.ok(r.graph.nodes.some((n) => n.opType === "Loop"));
    assert.match(r.note!, /3 images at a time/);
    console.log(`  ${r.note}`);
    const top1 = await shippedTop1(1000);
    assert.equal(await top1(r.graph), await top1(dep));
    // the kernels ONNX Runtime runs inside the Loop body are counted: the same as unchunked
    const kernels = integerKernels(await fusedOps(rt, dep.toBytes()));
    assert.ok(kernels.length > 0);
    assert.equal(integerKernels(await fusedOps(rt, r.graph.toBytes())), kernels);
    // the bench's deploy stage with that budget: evaluates and returns the chunked graph
    const stage = (chunkBytes?: number) =>
      deployStage({
        runtime: rt,
        fp: { graph: c.graph, bytes: c.graph.toBytes(), sites: c.sites, sha: `chunk-test` },
        q,
        fakeBytes: q.graph.toBytes(),
        evalSrc: src,
        batchSize: 32,
        chunkBytes,
      });
    const [whole, chunked] = [await stage(), await stage(3 * 4 * largest)];
    assert.equal(whole.fields.deploy_kind, q.deployable!.kind);
    assert.equal(chunked.fields.deploy_kind, `${q.deployable!.kind}; ${r.note}`);
    assert.ok(Graph.fromBytes(chunked.bytes!).nodes.some((n) => n.opType === "Loop"));
    assert.deepEqual(chunked.eval!.preds, whole.eval!.preds);
    assert.equal(chunked.fields.fused_ops, whole.fields.fused_ops);
    assert.equal(chunked.fields.int_mac_share, whole.fields.int_mac_share);
    // a second graph input: only the first would be sliced, so the graph stays whole
    const two = dep.clone();
    two.inputs.push({ ...two.inputs[0], name: "vitq_test_second" });
    assert.equal((await chunkedDeploy(rt, two, dims, src, 3 * 4 * largest)).graph, two);
    // logits minus their maximum over the batch: chunks change them, so the graph stays whole
    const mixed = dep.clone();
    const [logits] = mixed.outputNames;
    const renamed = "vitq_test_logits";
    for (const n of mixed.nodes) n.outputs = n.outputs.map((v) => (v === logits ? renamed : v));
    const axes = mixed.opset >= 18
      ? { inputs: [renamed, "vitq_test_axes"], attributes: [makeAttr("keepdims", 1)] }
      : { inputs: [renamed], attributes: [makeAttr("axes", [0]), makeAttr("keepdims", 1)] };
    if (mixed.opset >= 18) mixed.setInitializer(Tensor.fromInt64("vitq_test_axes", [1], [0]));
    mixed.addNode("ReduceMax", axes.inputs, {
      outputs: ["vitq_test_max"],
      name: "vitq_test_max",
      attributes: axes.attributes,
    });
    mixed.addNode("Sub", [renamed, "vitq_test_max"], { outputs: [logits], name: "vitq_test_sub" });
    const m = await chunkedDeploy(rt, mixed, dims, src, 3 * 4 * largest);
    assert.equal(m.graph, mixed);
    assert.equal(m.chunk, undefined);
    assert.match(m.note!, /not run in batch chunks \(the chunked graph's outputs differed/);
  },
});

Deno.test({
  name:
    "deploy: minmax on the shipped ViT gives a QDQ graph whose Top-1 matches the fake-quant graph, with integer kernels where ONNX Runtime fuses them (recorded as it runs them)",
  sanitizeResources: false,
  fn: async () => {
    const rt = await runtime();
    const top1 = await shippedTop1(1000);
    for (const bits of [{ w: 8, a: 8 }, { w: 4, a: 4 }]) {
      const c = await shippedCtx(bits);
      const q = await minmax.quantize(c);
      assert.ok(q.deployable, "minmax returns a deployable graph");
      const [fake, dep] = [await top1(q.graph), await top1(q.deployable.graph)];
      console.log(`W${bits.w}A${bits.a}: fake-quant ${fake.toFixed(1)}, deploy ${dep.toFixed(1)}`);
      // the same codes: identical up to float summation order in the integer kernels
      assert.ok(Math.abs(fake - dep) <= (bits.w === 8 ? 0.1 : 0.5), `${fake} vs ${dep}`);
      // coverage at W8A8: every linear and attention matmul but the patch embedding (its
      // input, the image, is FP) and the head (a Gemm with a float bias: ONNX Runtime keeps it
      // float); at W4A4 the int4 weights make ONNX Runtime multiply the linear layers in
      // float, and only the attention matmuls (8-bit containers) run integer kernels
      const sites = c.sites;
      const dims = await coverageDimsOf(c.graph, sites);
      const cov = integerCoverage(c.graph, q.deployable.graph, sites, dims);
      const roles = new Map(sites.map((s) => [s.id, s.role]));
      if (bits.w === 8) {
        assert.deepEqual(cov.floatSites, ["patch_embed", "head"]);
        assert.ok(cov.integerMacs / cov.totalMacs > 0.8, `${cov.integerMacs} / ${cov.totalMacs}`);
      } else {
        assert.ok(cov.integerSites.length > 0);
        assert.ok(cov.integerSites.every((id) => ["qk", "av"].includes(roles.get(id)!)));
      }
      assert.deepEqual(cov.integerSites, await ortIntegerSites(q.deployable.graph, sites));
      const bytes = q.deployable.graph.toBytes();
      const fpSize = (await Deno.stat(`${ROOT}models/vit_fmnist.onnx`)).size;
      console.log(`  deploy file ${(bytes.length / fpSize).toFixed(2)}x FP32`);
      if (bits.w === 4) {
        // 4-bit weight codes packed two per byte (the graph raised to opset 21)
        assert.equal(q.deployable.graph.opset, 21);
        assert.ok(
          [...q.deployable.graph.initializers.values()].some((t) => t.dataType === 22),
          "int4 initializers",
        );
        assert.ok(bytes.length < 0.25 * fpSize, `${bytes.length} vs ${fpSize}`);
      } else {
        const fused = await fusedOps(rt, bytes);
        assert.ok(
          (fused.MatMulIntegerToFloat ?? 0) + (fused.QLinearMatMul ?? 0) + (fused.QGemm ?? 0) > 0,
          JSON.stringify(fused),
        );
      }
    }
  },
});

Deno.test({
  name:
    "deploy: bench stores the deploy Top-1 beside the fake-quant one, --save writes the model with a card, eval reproduces it",
  sanitizeResources: false,
  fn: async () => {
    const dir = await tmpDir();
    try {
      const man = await writeManifest(dir, {
        name: "deploytest",
        models: ["vit_fmnist"],
        methods: ["minmax", "ivit"],
        bits: [{ w: 8, a: 8 }],
        dataset: { name: "fashion-mnist", split: "test", subset: { rule: "first", perClass: 20 } },
        calibration: { size: 16, seeds: [0], split: "train" },
        batchSize: 100,
        threads: 2,
        speed: { repetitions: 6, warmup: 1 },
      });
      const r = await cli("bench", [
        man,
        "--db",
        `${dir}/d.duckdb`,
        "--tables",
        `${dir}/t`,
        "--report",
        `${dir}/r`,
        "--save",
        "--save-dir",
        `${dir}/models`,
        "--quiet",
      ]);
      assert.equal(r.code, 0, r.stderr);
      const [row] = (await readRows(
        `${dir}/d.duckdb`,
        "select top1, deploy_top1, deploy_ips, fp_ips, int_mac_share, fused_ops, saved_path, deploy_bytes, sim_ratio, sim_ratio_lo, sim_ratio_hi, deploy_ratio, deploy_ratio_lo, deploy_ratio_hi from results where method = 'minmax'",
      )) as (Record<string, number> & { saved_path: string; fused_ops: string })[];
      assert.equal(row.deploy_top1, row.top1);
      assert.ok(row.deploy_ips > 0 && row.fp_ips > 0);
      // paired speed-ups over FP32 with their 95 % intervals (6 repetitions: the full range)
      for (const k of ["sim", "deploy"]) {
        const [x, lo, hi] = [row[`${k}_ratio`], row[`${k}_ratio_lo`], row[`${k}_ratio_hi`]];
        assert.ok(x > 0 && lo > 0 && lo <= x && x <= hi, `${k}: ${x} [${lo}, ${hi}]`);
      }
      const speedMd = await Deno.readTextFile(`${dir}/t/deploytest/speed.md`);
      const shown = (v: number) => v.toFixed(2);
      assert.ok(
        speedMd.includes(
          `${shown(row.deploy_ratio)}x [${shown(row.deploy_ratio_lo)}, ${
            shown(row.deploy_ratio_hi)
          }]`,
        ),
        speedMd,
      );
      // the integer-only cell (I-ViT) names the integer kernels ONNX Runtime ran for its graph
      const [iv] = await readRows(
        `${dir}/d.duckdb`,
        "select label, top1, fused_ops, deploy_top1 from results where method = 'ivit'",
      );
      assert.match(iv.fused_ops as string, /^MatMulInteger x\d+$/);
      assert.equal(iv.deploy_top1, null);
      assert.ok(
        speedMd.includes(
          `| ${iv.label} W8A8 | vit_fmnist | ${(iv.top1 as number).toFixed(2)} | ${iv.fused_ops} |`,
        ),
        speedMd,
      );
      const csv = await Deno.readTextFile(`${dir}/t/deploytest/speed.csv`);
      assert.match(csv.split("\n")[0], /,speedup,speedup_lo,speedup_hi$/);
      // a database written before the paired ratios (and the load column): tables still render,
      // with the ratio of throughputs
      const old = await Store.open(`${dir}/d.duckdb`);
      for (
        const c of ["sim", "deploy"].flatMap((k) => ["", "_lo", "_hi"].map((x) => `${k}_ratio${x}`))
      ) {
        await old.exec(`alter table results drop column ${c}`);
      }
      await old.exec(`alter table results drop column speed_load`);
      old.close();
      const t = await cli("tables", [
        "deploytest",
        "--db",
        `${dir}/d.duckdb`,
        "--out",
        `${dir}/t2`,
      ]);
      assert.equal(t.code, 0, t.stderr);
      const oldMd = await Deno.readTextFile(`${dir}/t2/deploytest/speed.md`);
      assert.ok(oldMd.includes(` ${(row.deploy_ips / row.fp_ips).toFixed(2)}x |`), oldMd);
      assert.ok(!oldMd.includes("x ["), oldMd);
      assert.ok(row.int_mac_share > 0.9, String(row.int_mac_share));
      assert.match(row.fused_ops, /MatMulIntegerToFloat|QLinearMatMul/);
      const fpBytes = (await Deno.stat(`${ROOT}models/vit_fmnist.onnx`)).size;
      assert.ok(Number(row.deploy_bytes) < 0.45 * fpBytes, `${row.deploy_bytes} vs ${fpBytes}`);
      const card = JSON.parse(await Deno.readTextFile(row.saved_path.replace(/\.onnx$/, ".json")));
      assert.equal(card.quantized.method, "minmax");
      assert.equal(card.input.channels, 1);
      const e = await cli("eval", [row.saved_path]);
      assert.equal(e.code, 0, e.stderr);
      assert.match(e.stdout, /reproduced/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("deploy: twin quantizers become sums of integer products (MatMul split per part), equal to the fake-quant product", async () => {
  const rt = await runtime();
  // softmax splits: 2^-5 (its large part clips at the split), 2^-9 (the split's code is 0:
  // no clip); the GELU negative part never clips (uint8 codes of -x, step -Δ); below 8 bits
  // a part's own clip and its code range's are one Clip
  for (
    const [kind, bits, split, clips] of [
      ["softmax", 8, 2 ** -5, 1],
      ["softmax", 8, 2 ** -9, 0],
      ["gelu", 8, 0, 1],
      ["gelu", 4, 0, 1],
      ["softmax", 6, 2 ** -5, 2],
    ] as const
  ) {
    const { g, site } = linearGraph("MatMul", [2, 5, 16], { bias: false, role: "fc2" });
    const plan: ActPlan = kind === "softmax"
      ? {
        site,
        slot: 0,
        emit: (gg, i, p) => emitTwinSoftmax(gg, i, { bits, split, variant: "reference" }, p),
        parts: twinSoftmaxParts({ bits, split, variant: "reference" }),
      }
      : {
        site,
        slot: 0,
        emit: (gg, i, p) => emitTwinGelu(gg, i, { bits, posScale: 0.05 }, p),
        parts: twinGeluParts({ bits, posScale: 0.05 }),
      };
    const { graph, deploy } = applyPlan(g, [{ site, q: symmetric(8, 0.004) }], [plan], {
      deploy: true,
    });
    assert.equal(
      deploy!.nodes.filter((n) => n.opType === "MatMul").length,
      2,
      "one product per part",
    );
    // clips: the GELU positive part's and the softmax large part's where the split has a code
    assert.equal(
      deploy!.nodes.filter((n) => n.opType === "Clip").length,
      clips,
      `${kind} W${bits} split ${split}: clips`,
    );
    // GELU-like outputs (x·σ(2x) >= -0.14), one at GELU's minimum itself
    const x = kind === "softmax"
      ? randomData(160, 5, 0.5).map(Math.abs)
      : randomData(160, 5, 2).map((v, i) =>
        i === 7 ? -GELU_NEG_RANGE : v * 0.5 * (1 + Math.tanh(v))
      );
    const run = async (gg: Graph) => {
      const s = await rt.createSession(gg);
      const o = await s.run({ x: { data: x, dims: [2, 5, 16] } });
      await s.release();
      return o.y.data;
    };
    const [a, b] = [await run(graph), await run(deploy!)];
    for (let i = 0; i < a.length; i++) {
      assert.ok(
        Math.abs(a[i] - b[i]) <= 1e-5 * (1 + Math.abs(a[i])),
        `${kind} W${bits} [${i}] ${a[i]} ${b[i]}`,
      );
    }
    const fused = await fusedOps(rt, deploy!.toBytes());
    assert.ok(Object.keys(fused).some((op) => /Integer|QLinear/.test(op)), JSON.stringify(fused));
  }
});

/**
 * Per-head operands of one linear output (a fused qkv split by Reshape -> Transpose ->
 * Gather) quantized before the split: MatMulInteger reads codes the layout ops moved, the
 * same codes the fake-quant graph's per-head quantizers give, and ONNX Runtime's optimized
 * graph has no Q -> DQ pair left to re-quantize an operand.
 */
Deno.test("deploy: per-head q/k/v operands are quantized once before the head split, with the fake-quant graph's codes", async () => {
  const rt = await runtime();
  const spec = {
    dim: 24,
    heads: 3,
    depth: 1,
    mlp: 32,
    patch: 4,
    img: 8,
    channels: 1,
    classes: 5,
  };
  const g = buildVitGraph(spec, 7, 0.3);
  const sites = findSites(g, "tiny vit");
  const H = spec.heads;
  const perHead = (seed: number): UniformQuantizer => ({
    bits: 8,
    signed: true,
    scale: Float32Array.from(
      { length: H },
      (_, h) => Math.fround(0.012 + 0.006 * ((h + seed) % H)),
    ),
    zeroPoint: new Float32Array(H),
    axis: 1,
  });
  const qk = sites.find((s) => s.role === "qk")!, av = sites.find((s) => s.role === "av")!;
  const steps = [perHead(0), perHead(1), perHead(2)]; // q, k, v
  const acts: ActPlan[] = [
    { site: qk, slot: 0, q: steps[0], rank: 4 },
    { site: qk, slot: 1, q: steps[1], rank: 4 },
    { site: av, slot: 0, q: { ...symmetric(8, 1 / 127) } },
    { site: av, slot: 1, q: steps[2], rank: 4 },
  ];
  const { graph, deploy } = applyPlan(g, [], acts, { deploy: true });
  const dep = deploy!;
  // the layout ops reach the MatMulIntegers as uint8 codes of one quantized value (a second
  // operand converted to int8 after them: Cast(Sub(codes, 128), int8))
  const producer = new Map(dep.nodes.flatMap((n) => n.outputs.map((o) => [o, n] as const)));
  const source = (v: string) => codesSource(dep, producer, v);
  const mmi = dep.nodes.filter((n) => n.opType === "MatMulInteger");
  assert.equal(mmi.length, 2);
  const hoisted = mmi.flatMap((n) => [0, 1].map((k) => source(n.inputs[k])));
  const quantized = new Set(hoisted.filter((p) => p?.opType === "QuantizeLinear"));
  assert.equal(quantized.size, 2, "q·k operands and v share one QuantizeLinear; softmax its own");
  const qx = [...quantized].find((p) => producer.get(p!.inputs[0])?.opType === "Div")!;
  assert.ok(qx, "the head-split value is divided by its steps and quantized with step 1");
  assert.equal(hoisted.filter((p) => p === qx).length, 3, "q, k and v read the shared codes");
  // the codes each MatMulInteger reads equal the fake-quant operands' codes (plus its zero
  // point: 128 on uint8 first operands, 0 on the int8 second operands)
  const operands = [[qk, 0, steps[0]], [qk, 1, steps[1]], [av, 1, steps[2]]] as const;
  // q·k's MatMulInteger is the one whose scaled sums feed the Softmax
  const feedsSoftmax = (n: Node) =>
    dep.nodes.some((r) =>
      r.inputs[0] === n.outputs[0] &&
      dep.nodes.some((s) => s.opType === "Softmax" && s.inputs.includes(r.outputs[0]))
    );
  const mmOf = (site: Site) => mmi.find((n) => feedsSoftmax(n) === (site.role === "qk"))!;
  const probe = dep.clone();
  const zpOf = (site: Site, slot: number) =>
    dep.initializers.get(mmOf(site).inputs[2 + slot])!.numbers()[0];
  for (const [site, slot] of operands) {
    const t = dep.initializers.get(mmOf(site).inputs[2 + slot])!.dataType;
    probe.addOutput(mmOf(site).inputs[slot], t);
  }
  assert.deepEqual(
    operands.map(([site, slot]) => zpOf(site, slot)),
    [128, 0, 0],
    "uint8 x int8 matmuls",
  );
  const fake = graph.clone();
  const fakeNodes = new Map(fake.nodes.map((n) => [n.name, n]));
  for (const [site, slot] of operands) fake.addOutput(fakeNodes.get(site.node)!.inputs[slot]);
  const x = randomData(2 * 64, 11, 1);
  const feed = { input: { data: x, dims: [2, 1, 8, 8] } };
  const run = async (gg: Graph) => {
    const s = await rt.createSession(gg);
    try {
      return await s.run(feed);
    } finally {
      await s.release();
    }
  };
  const [pOut, fOut] = [await run(probe), await run(fake)];
  for (const [site, slot, q] of operands) {
    const codes = pOut[mmOf(site).inputs[slot]],
      vals = fOut[fakeNodes.get(site.node)!.inputs[slot]];
    assert.deepEqual(codes.dims, vals.dims, `${site.id} ${slot} dims`);
    const inner = vals.dims.slice(2).reduce((a, b) => a * b, 1);
    let saturated = 0;
    for (let i = 0; i < vals.data.length; i++) {
      const c = Math.round(vals.data[i] / q.scale[Math.floor(i / inner) % H]);
      assert.ok(
        codes.data[i] - zpOf(site, slot) === c,
        `${site.id} operand ${slot} [${i}]: ${codes.data[i]} ${c}`,
      );
      if (Math.abs(c) >= 127) saturated++;
    }
    assert.ok(
      saturated > 0 && saturated < vals.data.length / 4,
      `${site.id} ${slot}: ${saturated}`,
    );
  }
  // logits equal up to float rounding of the step products
  const [a, b] = [(await run(graph)).logits.data, (await run(dep)).logits.data];
  for (let i = 0; i < a.length; i++) {
    assert.ok(Math.abs(a[i] - b[i]) <= 1e-4 * (1 + Math.abs(a[i])));
  }
  // ONNX Runtime keeps the codes: no DequantizeLinear of a QuantizeLinear (re-quantization)
  const dir = await tmpDir();
  try {
    const path = `${dir}/opt.onnx`;
    await (await rt.createSession(dep.toBytes(), "hoisted", { optimizedModelPath: path }))
      .release();
    const opt = Graph.fromBytes(await Deno.readFile(path), path);
    const op = new Map(opt.nodes.flatMap((n) => n.outputs.map((o) => [o, n.opType] as const)));
    const requant = opt.nodes.filter((n) =>
      n.opType === "DequantizeLinear" && op.get(n.inputs[0]) === "QuantizeLinear"
    );
    assert.deepEqual(requant.map((n) => n.name), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  // idempotent: no per-head QuantizeLinear is left to move
  assert.equal(hoistHeadCodes(dep.clone()), 0);
  // per-head q and k but a per-tensor v: codes for two of the three Gather indices would not
  // fit the Reshape's 3, so the operands keep their own QuantizeLinear (and the graph runs)
  const partial = applyPlan(g, [], [...acts.slice(0, 3), {
    site: av,
    slot: 1,
    q: symmetric(8, 0.02),
  }], {
    deploy: true,
  });
  const pd = partial.deploy!;
  const reshaped = new Set(pd.nodes.filter((n) => n.opType === "Reshape").map((n) => n.outputs[0]));
  assert.equal(pd.nodes.filter((n) => n.opType === "Div" && reshaped.has(n.inputs[0])).length, 0);
  const [pa, pb] = [
    (await run(partial.graph)).logits.data,
    (await run(partial.deploy!)).logits.data,
  ];
  for (let i = 0; i < pa.length; i++) {
    assert.ok(Math.abs(pa[i] - pb[i]) <= 1e-4 * (1 + Math.abs(pa[i])));
  }
  // undone (for a method that rewrites the matmuls again): per-head QuantizeLinears, same logits
  const undone = dep.clone();
  assert.equal(
    undone.nodes.filter((n) => n.opType === "MatMulInteger")
      .reduce((k, n) => k + unhoistHeadCodes(undone, n), 0),
    3,
  );
  undone.prune();
  const c = (await run(undone)).logits.data;
  for (let i = 0; i < a.length; i++) {
    assert.ok(Math.abs(c[i] - b[i]) <= 1e-6 * (1 + Math.abs(b[i])));
  }
});

Deno.test({
  name:
    "deploy: PTQ4ViT on the shipped ViT: twin softmax and twin GELU run as integer products, deploy Top-1 equals fake-quant",
  sanitizeResources: false,
  fn: async () => {
    const rt = await runtime();
    const top1 = await shippedTop1(1000);
    // a short search: the deploy lowering does not depend on the step values
    const c = await shippedCtx({ w: 8, a: 8 }, { ...ptq4vit.defaults, n: 10, rounds: 1 });
    const q = await ptq4vit.quantize(c);
    const [fake, dep] = [await top1(q.graph), await top1(q.deployable!.graph)];
    console.log(`PTQ4ViT W8A8: fake-quant ${fake.toFixed(1)}, deploy ${dep.toFixed(1)}`);
    assert.ok(Math.abs(fake - dep) <= 0.1, `${fake} vs ${dep}`);
    const cov = integerCoverage(
      c.graph,
      q.deployable!.graph,
      c.sites,
      await coverageDimsOf(c.graph, c.sites),
    );
    // per-head attention-matmul operands run as MatMulInteger with the steps applied after it
    assert.deepEqual(cov.floatSites, ["patch_embed", "head"]);
    assert.deepEqual(cov.integerSites, await ortIntegerSites(q.deployable!.graph, c.sites));
    assert.ok(cov.integerMacs / cov.totalMacs > 0.8, `${cov.integerMacs} / ${cov.totalMacs}`);
    const fused = await fusedOps(rt, q.deployable!.graph.toBytes());
    assert.ok(
      (fused.MatMulIntegerToFloat ?? 0) + (fused.QLinearMatMul ?? 0) > 0,
      JSON.stringify(fused),
    );
    assert.ok(
      (fused.MatMulInteger ?? 0) >= 2 * 4,
      `per-head attention matmuls: ${JSON.stringify(fused)}`,
    );
    // the torch export's computed head-split shapes: q, k and v (read by q·k and both A·V
    // parts) quantized once per block before the split; steps applied as DequantizeLinear
    // (no Cast); the GELU negative parts unclipped (uint8 codes with a negative step)
    const dg = q.deployable!.graph;
    const producer = new Map(dg.nodes.flatMap((n) => n.outputs.map((o) => [o, n] as const)));
    const source = (v: string) => codesSource(dg, producer, v);
    const hoisted = dg.nodes.filter((n) => n.opType === "MatMulInteger").flatMap((n) =>
      [0, 1].filter((k) => {
        const p = source(n.inputs[k]);
        return p?.opType === "QuantizeLinear" && producer.get(p.inputs[0])?.opType === "Div";
      })
    );
    assert.equal(hoisted.length, 4 * 6, "q, k, v operand slots per block");
    assert.equal(
      dg.nodes.filter((n) =>
        n.opType === "Cast" && producer.get(n.inputs[0])?.opType === "MatMulInteger"
      ).length,
      0,
    );
    const negative = dg.nodes.filter((n) =>
      n.opType === "QuantizeLinear" && dg.initializers.get(n.inputs[1])!.float32()[0] < 0
    );
    assert.equal(negative.length, 6);
    assert.ok(negative.every((n) => producer.get(n.inputs[0])?.opType !== "Clip"));
  },
});

/**
 * RepQ-ViT, TSPTQ-ViT and ADFQ-ViT deploy graphs on the shipped models at W8A8 (short
 * settings: the lowering does not depend on the step values): Top-1 within 0.1 points of
 * the fake-quant graph, the sites each leaves float (its non-uniform quantizers; the patch
 * embedding's Conv and the head's Gemm with a float bias, which ONNX Runtime runs in
 * float), and the integer sites as ONNX Runtime's optimized graph has them.
 */
const DEPLOY_CASES: {
  method: QuantMethod;
  model?: string;
  options: Record<string, unknown>;
  /** Site roles whose linear/matmul stays float in the deploy graph. */
  float: string[];
}[] = [
  // log-√2 softmax operand of A·V; the reparameterized post-LN inputs (fractional z̄) as
  // two integer parts, exact
  ...["vit_fmnist", "swin_fmnist", "deit_fmnist"].map((model) => ({
    method: repq,
    model,
    options: {},
    float: ["av", "patch_embed", "head"],
  })),
  // V-2SF operands as two int8 operands: every linear and matmul integer but the patch
  // embedding (PTQ4ViT keeps the image FP) and the head
  { method: tsptq, options: { n: 10, rounds: 1, mMax: 4 }, float: ["patch_embed", "head"] },
  // per-patch outlier (qkv, fc1 inputs), Shift-Log2 (fc2 input), log-√2 (softmax) float
  {
    method: adfq,
    options: { iters: 2, batch: 4, initSamples: 8 },
    float: ["qkv", "q", "k", "v", "fc1", "fc2", "av", "patch_embed", "head"],
  },
];

for (const { method, model = "vit_fmnist", options, float } of DEPLOY_CASES) {
  Deno.test({
    name:
      `deploy: ${method.name} on ${model} at W8A8: deploy Top-1 equals fake-quant within 0.1, integer kernels where its quantizers are uniform`,
    sanitizeResources: false,
    fn: async () => {
      const top1 = await shippedTop1(1000, model);
      const c = await shippedCtx({ w: 8, a: 8 }, {
        ...(method.defaults as Record<string, unknown>),
        ...options,
      }, model);
      const q = await method.quantize(c);
      assert.ok(q.deployable, `${method.name} returns a deployable graph`);
      const [fake, dep] = [await top1(q.graph), await top1(q.deployable.graph)];
      const cov = integerCoverage(
        c.graph,
        q.deployable.graph,
        c.sites,
        await coverageDimsOf(c.graph, c.sites, model),
      );
      const share = cov.integerMacs / cov.totalMacs;
      console.log(
        `${method.name} ${model} W8A8: fake-quant ${fake.toFixed(1)}, deploy ${
          dep.toFixed(1)
        }; integer ${cov.integerSites.length} sites, ${(100 * share).toFixed(1)}% of MACs; float: ${
          cov.floatSites.join(" ")
        }`,
      );
      // within 0.1 points (one image in 1000; 1e-9: the percentages' float rounding)
      assert.ok(Math.abs(fake - dep) <= 0.1 + 1e-9, `${fake} vs ${dep}`);
      const byId = new Map(c.sites.map((s) => [s.id, s]));
      const expected = c.sites.filter((s) =>
        (s.kind === "linear" || s.kind === "matmul") && float.includes(s.role)
      ).map((s) => s.id);
      assert.deepEqual(cov.floatSites, expected, `float sites: ${cov.floatSites}`);
      assert.ok(cov.integerSites.every((id) => !float.includes(byId.get(id)!.role)));
      assert.deepEqual(cov.integerSites, await ortIntegerSites(q.deployable.graph, c.sites));
      const fused = await fusedOps(await runtime(), q.deployable.graph.toBytes());
      assert.ok(
        Object.keys(fused).some((op) => /Integer|QLinear|QGemm/.test(op)),
        JSON.stringify(fused),
      );
      assert.equal(fused.MatMulNBits, undefined, "no float MatMul beside an 8-bit weight");
    },
  });
}

Deno.test("deploy: raising a graph to opset 21 (Reduce axes as inputs) keeps its logits", async () => {
  const rt = await runtime();
  for (
    const f of [
      "models/vit_fmnist.onnx",
      "models/swin_fmnist.onnx",
      "tests/fixtures/tiny_swin_op13.onnx",
    ]
  ) {
    const g = await Graph.load(`${ROOT}${f}`);
    const up = g.clone();
    upgradeOpset21(up);
    assert.equal(up.opset, 21);
    assert.equal(g.opset === 21, false, "the original keeps its opset");
    const x = randomData(4 * 784, 9, 1.5);
    const run = async (gg: Graph) => {
      const s = await rt.createSession(gg);
      const o = await s.run({ [s.inputNames[0]]: { data: x, dims: [4, 1, 28, 28] } });
      await s.release();
      return Array.from(o[s.outputNames[0]].data);
    };
    assert.deepEqual(await run(up), await run(g), f);
  }
});
