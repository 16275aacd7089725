import assert from "node:assert/strict";
import { Graph, Tensor } from "../core/onnx/graph.ts";
import {
  emitFakeQuant,
  fakeQuant,
  roundHalfEven,
  symmetric,
  symmetricScale,
  type UniformQuantizer,
} from "../core/quant/uniform.ts";
import { FIXTURES, randomData, runtime } from "./helpers.ts";

Deno.test("roundHalfEven matches torch.round / ONNX Round", () => {
  assert.deepEqual(
    [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 2.4999, -2.6].map(roundHalfEven),
    [-2, -2, -0, 0, 2, 2, 4, 2, -3],
  );
});

Deno.test("symmetric fake quantization: hand-computed case", () => {
  const q = symmetric(4, 0.5); // codes -8..7
  const x = Float32Array.from([0, 0.24, 0.25, 0.75, 3.4, 3.8, -4.1, -5]);
  assert.deepEqual(Array.from(fakeQuant(x, [8], q)), [0, 0, 0, 1, 3.5, 3.5, -4, -4]);
  assert.equal(symmetricScale(1.4, 8), Math.fround(1.4 / 127));
});

/** Run `fakeQuant` through ONNX Runtime on a graph that is only the emitted subgraph. */
async function viaOrt(x: Float32Array, dims: number[], q: UniformQuantizer): Promise<Float32Array> {
  // reuse a fixture's model-level fields; replace the graph body
  const g = await Graph.load(`${FIXTURES}tiny_vit_op17.onnx`);
  g.nodes = [];
  g.initializers.clear();
  g.valueInfo = [];
  g.inputs = [{
    name: "x",
    type: { tensorType: { elemType: 1, shape: { dim: dims.map((d) => ({ dimValue: d })) } } },
  }];
  const y = emitFakeQuant(g, "x", q, "t", dims.length);
  g.outputs = [{ name: y, type: { tensorType: { elemType: 1 } } }];
  const rt = await runtime();
  const s = await rt.createSession(g);
  const out = await s.run({ x: { data: x, dims } });
  await s.release();
  return out[y].data;
}

Deno.test("each quantizer's TypeScript reference equals its ONNX emission bit for bit", async () => {
  const x = randomData(4 * 6 * 10, 11, 3);
  // include exact ties at half steps, which exercise half-to-even rounding
  for (let i = 0; i < 20; i++) x[i] = (i - 10) * 0.25;
  const cases: UniformQuantizer[] = [
    symmetric(4, 0.5),
    symmetric(8, 0.0123),
    symmetric(3, 0.7),
    { bits: 4, signed: false, scale: Float32Array.of(0.3), zeroPoint: Float32Array.of(7) },
    {
      bits: 6,
      signed: false,
      scale: Float32Array.from([0.1, 0.2, 0.05, 0.3, 0.15, 0.25]),
      zeroPoint: Float32Array.from([31, 20, 40, 10, 32, 33]),
      axis: 1,
    },
    {
      bits: 4,
      signed: true,
      scale: Float32Array.from(Array.from({ length: 10 }, (_, i) => 0.05 + i * 0.03)),
      zeroPoint: new Float32Array(10),
      axis: 2,
    },
  ];
  for (const q of cases) {
    const dims = [4, 6, 10];
    const ref = fakeQuant(x, dims, q);
    const ort = await viaOrt(x, dims, q);
    assert.deepEqual(Array.from(ort), Array.from(ref), `bits ${q.bits} axis ${q.axis}`);
  }
});

Deno.test("Tensor.fromFloat32 copies its input", () => {
  const a = Float32Array.of(1, 2);
  const t = Tensor.fromFloat32("a", [2], a);
  a[0] = 9;
  assert.equal(t.float32()[0], 1);
});

Deno.test("applyPlan in place gives the same weights as a copy", async () => {
  const { findSites } = await import("../core/onnx/sites.ts");
  const { applyPlan } = await import("../core/quant/apply.ts");
  const a = await Graph.load(`${FIXTURES}tiny_vit_op17.onnx`);
  const b = await Graph.load(`${FIXTURES}tiny_vit_op17.onnx`);
  const plan = (g: Graph) =>
    findSites(g).filter((s) => s.kind === "linear").map((site) => ({
      site,
      q: symmetric(4, 0.02),
    }));
  const copy = applyPlan(a, plan(a), []).graph;
  const inPlace = applyPlan(b, plan(b), [], { inPlace: true }).graph;
  const x = randomData(2 * 784, 4);
  const rt = await runtime();
  const run = async (g: Graph) => {
    const s = await rt.createSession(g);
    const out = await s.run({ input: { data: x, dims: [2, 1, 28, 28] } });
    await s.release();
    return out.logits.data;
  };
  assert.deepEqual(await run(inPlace), await run(copy));
  // the copy left its input untouched
  assert.deepEqual(await run(a), await run(await Graph.load(`${FIXTURES}tiny_vit_op17.onnx`)));
});
