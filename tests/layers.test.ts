import assert from "node:assert/strict";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { LayerRecorder } from "../methods/layers.ts";
import { FIXTURE_CARD, ROOT, runtime } from "./helpers.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";

Deno.test("LayerRecorder: element counts of weights, window-reshaped activations and the image", async () => {
  const graph = await Graph.load(`${ROOT}models/swin_fmnist.onnx`);
  const sites = findSites(graph);
  const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
  const ctx = {
    graph,
    runtime: await runtime(),
    calib: makeSource(train, [0, 1, 2], FIXTURE_CARD),
  };
  const rec = new LayerRecorder(ctx);
  const qk = sites.find((s) => s.id === "b0.qk")!;
  const qkv = sites.find((s) => s.id === "b0.qkv")!;
  const pe = sites.find((s) => s.id === "patch_embed")!;
  const q = { bits: 4, scale: 0.1, quantizer: "test" };
  rec.add(qkv, "weight", qkv.weight!, { ...q, sqnrDb: Infinity });
  rec.add(qk, "a", qk.operands![0], q);
  rec.add(qk, "b", qk.operands![1], { ...q, elements: 7 });
  rec.add(pe, "input", pe.input!, q);
  rec.add(pe, "image", graph.inputNames[0], q);
  const layers = await rec.records();
  assert.deepEqual(layers.map((l) => l.tensor), ["weight", "a", "b", "input", "image"]);
  assert.equal(layers[0].elements, graph.initializers.get(qkv.weight!)!.size);
  assert.equal(layers[0].sqnrDb, null); // non-finite SQNR is stored as null
  // Swin: 28x28 image, 4x4 patches -> 7x7 tokens padded to 8x8, 4 windows of 4x4, 2 heads of 32
  assert.equal(layers[1].elements, 4 * 2 * 16 * 32);
  assert.equal(layers[2].elements, 7); // a count the method knows is kept
  assert.equal(layers[3].elements, 32 * 32); // the patch embedding sees the image padded to 32x32
  assert.equal(layers[4].elements, 28 * 28);
  rec.add({ id: "x", kind: "activation", role: "x", block: -1 }, "output", "no_such_value", q);
  await assert.rejects(() => rec.records(), /no_such_value/);
});
