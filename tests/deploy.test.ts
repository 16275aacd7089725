import assert from "node:assert/strict";
import { Graph, Tensor } from "../core/onnx/graph.ts";
import { findSites, type Site } from "../core/onnx/sites.ts";
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
import { coverageShapes, emitQdqActivation, integerCoverage } from "../core/quant/deploy.ts";
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
  contextKeys,
  randomData,
  readRows,
  ROOT,
  runtime,
  tmpDir,
  writeManifest,
} from "./helpers.ts";
import { fusedOps } from "../bench/speed.ts";

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

/** First `n` shipped test images, preprocessed for the shipped ViT. */
async function shippedImages(n: number): Promise<Float32Array> {
  const card = JSON.parse(await Deno.readTextFile(`${ROOT}models/vit_fmnist.json`));
  const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
  return await makeSource(test, Array.from({ length: n }, (_, i) => i), card).slice(0, n);
}

/** Top-1 of a graph on the first `n` shipped test images (batches of 100). */
async function shippedTop1(n: number): Promise<(g: Graph) => Promise<number>> {
  const rt = await runtime();
  const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
  const images = await shippedImages(n);
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
async function coverageDimsOf(g: Graph, sites: Site[]): Promise<Map<string, number[]>> {
  const card = JSON.parse(await Deno.readTextFile(`${ROOT}models/vit_fmnist.json`));
  const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
  return await coverageShapes(await runtime(), g, sites, makeSource(test, [0], card));
}

async function shippedCtx(
  bits: Bits,
  options: Record<string, unknown> = { ...minmax.defaults },
): Promise<QuantContext> {
  const graph = await Graph.load(`${ROOT}models/vit_fmnist.onnx`);
  const card = JSON.parse(await Deno.readTextFile(`${ROOT}models/vit_fmnist.json`));
  const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
  return {
    graph,
    sites: findSites(graph),
    calib: makeSource(train, Array.from({ length: 32 }, (_, i) => i), card),
    bits,
    runtime: await runtime(),
    options,
    batchSize: 32,
    ...(await contextKeys(graph, "train 0..31")),
    seed: 0,
    log: () => {},
  } as QuantContext;
}

Deno.test({
  name:
    "deploy: minmax on the shipped ViT gives a QDQ graph whose Top-1 matches the fake-quant graph, with integer kernels on every linear and attention matmul",
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
      // coverage: every linear and attention matmul but the patch embedding (its input, the image, is FP)
      const sites = c.sites;
      const dims = await coverageDimsOf(c.graph, sites);
      const cov = integerCoverage(c.graph, q.deployable.graph, sites, dims);
      assert.deepEqual(cov.floatSites, ["patch_embed"]);
      assert.ok(cov.integerMacs / cov.totalMacs > 0.8, `${cov.integerMacs} / ${cov.totalMacs}`);
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
        methods: ["minmax"],
        bits: [{ w: 8, a: 8 }],
        dataset: { name: "fashion-mnist", split: "test", subset: { rule: "first", perClass: 20 } },
        calibration: { size: 16, seeds: [0], split: "train" },
        batchSize: 100,
        threads: 2,
        speed: { repetitions: 2, warmup: 1 },
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
        "select top1, deploy_top1, deploy_ips, fp_ips, int_mac_share, fused_ops, saved_path, deploy_bytes from results",
      )) as (Record<string, number> & { saved_path: string; fused_ops: string })[];
      assert.equal(row.deploy_top1, row.top1);
      assert.ok(row.deploy_ips > 0 && row.fp_ips > 0);
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
  for (const [kind, bits] of [["softmax", 8], ["gelu", 8], ["gelu", 4], ["softmax", 6]] as const) {
    const g = Graph.create(17);
    g.addInput("x", [2, 5, 16]);
    g.setInitializer(Tensor.fromFloat32("w", [16, 7], randomData(16 * 7, 3, 0.5)));
    g.addOutput(g.addNode("MatMul", ["x", "w"], { name: "mm", outputs: ["y"] }));
    const site = {
      id: "s",
      kind: "linear",
      role: "fc2",
      block: 0,
      node: "mm",
      output: "y",
      weight: "w",
      weightOutAxis: 1,
    } as Site;
    const plan: ActPlan = kind === "softmax"
      ? {
        site,
        slot: 0,
        emit: (gg, i, p) =>
          emitTwinSoftmax(gg, i, { bits, split: 2 ** -5, variant: "reference" }, p),
        parts: twinSoftmaxParts({ bits, split: 2 ** -5, variant: "reference" }),
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
    const x = kind === "softmax"
      ? randomData(160, 5, 0.5).map(Math.abs)
      : randomData(160, 5, 2).map((v) => v * 0.5 * (1 + Math.tanh(v)));
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
    assert.deepEqual(cov.floatSites, ["patch_embed"]);
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
  },
});

/**
 * RepQ-ViT, TSPTQ-ViT and ADFQ-ViT deploy graphs on the shipped ViT at W8A8 (short
 * settings: the lowering does not depend on the step values): Top-1 within 0.1 points of
 * the fake-quant graph, and the sites each leaves float (its non-uniform quantizers).
 */
const DEPLOY_CASES: {
  method: QuantMethod;
  options: Record<string, unknown>;
  /** Site roles whose linear/matmul stays float in the deploy graph. */
  float: string[];
}[] = [
  // log-√2 softmax operand of A·V; the reparameterized post-LN inputs are integer (z̄ rounded)
  { method: repq, options: {}, float: ["av"] },
  // V-2SF operands as two int8 operands: every linear and matmul integer but the patch
  // embedding (PTQ4ViT keeps the image FP)
  { method: tsptq, options: { n: 10, rounds: 1, mMax: 4 }, float: ["patch_embed"] },
  // per-patch outlier (qkv, fc1 inputs), Shift-Log2 (fc2 input), log-√2 (softmax) float
  {
    method: adfq,
    options: { iters: 2, batch: 4, initSamples: 8 },
    float: ["qkv", "q", "k", "v", "fc1", "fc2", "av"],
  },
];

for (const { method, options, float } of DEPLOY_CASES) {
  Deno.test({
    name:
      `deploy: ${method.name} on the shipped ViT at W8A8: deploy Top-1 equals fake-quant within 0.1, integer kernels where its quantizers are uniform`,
    sanitizeResources: false,
    fn: async () => {
      const top1 = await shippedTop1(1000);
      const c = await shippedCtx({ w: 8, a: 8 }, {
        ...(method.defaults as Record<string, unknown>),
        ...options,
      });
      const q = await method.quantize(c);
      assert.ok(q.deployable, `${method.name} returns a deployable graph`);
      const [fake, dep] = [await top1(q.graph), await top1(q.deployable.graph)];
      const cov = integerCoverage(
        c.graph,
        q.deployable.graph,
        c.sites,
        await coverageDimsOf(c.graph, c.sites),
      );
      const share = cov.integerMacs / cov.totalMacs;
      console.log(
        `${method.name} W8A8: fake-quant ${fake.toFixed(1)}, deploy ${
          dep.toFixed(1)
        }; integer ${cov.integerSites.length} sites, ${(100 * share).toFixed(1)}% of MACs; float: ${
          cov.floatSites.join(" ")
        }`,
      );
      assert.ok(Math.abs(fake - dep) <= 0.1, `${fake} vs ${dep}`);
      const byId = new Map(c.sites.map((s) => [s.id, s]));
      const expected = c.sites.filter((s) =>
        (s.kind === "linear" || s.kind === "matmul") && float.includes(s.role)
      ).map((s) => s.id);
      assert.deepEqual(cov.floatSites, expected, `float sites: ${cov.floatSites}`);
      assert.ok(cov.integerSites.every((id) => !float.includes(byId.get(id)!.role)));
      const fused = await fusedOps(await runtime(), q.deployable.graph.toBytes());
      assert.ok(
        Object.keys(fused).some((op) => /Integer|QLinear|QGemm/.test(op)),
        JSON.stringify(fused),
      );
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
