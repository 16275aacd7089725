import assert from "node:assert/strict";
import { Graph, Tensor } from "../core/onnx/graph.ts";
import { FIXTURES, randomData, runtime, SHIPPED_MODEL } from "./helpers.ts";
import { VitqError } from "../core/errors.ts";

async function logits(model: Graph | Uint8Array, x: Float32Array, n: number) {
  const rt = await runtime();
  const s = await rt.createSession(model);
  const out = await s.run({ [s.inputNames[0]]: { data: x, dims: [n, 1, 28, 28] } });
  await s.release();
  return out[s.outputNames[0]].data;
}

Deno.test("graph round trip: saving an unmodified model gives identical logits", async () => {
  for (const path of [SHIPPED_MODEL, `${FIXTURES}tiny_swin_op13.onnx`]) {
    const bytes = await Deno.readFile(path);
    const g = Graph.fromBytes(bytes, path);
    const again = g.toBytes();
    const x = randomData(4 * 784, 7, 2);
    assert.deepEqual(await logits(again, x, 4), await logits(bytes, x, 4), path);
    // and the re-encoded model decodes to the same graph
    const g2 = Graph.fromBytes(again);
    assert.equal(g2.nodes.length, g.nodes.length);
    assert.deepEqual([...g2.initializers.keys()].sort(), [...g.initializers.keys()].sort());
    assert.equal(g2.opset, g.opset);
  }
});

Deno.test("graph edits: added nodes are sorted topologically and run", async () => {
  const g = await Graph.load(`${FIXTURES}tiny_vit_op17.onnx`);
  const out = g.outputNames[0];
  // logits * 2, appended at the end of the node list, feeding a new output
  const two = g.constFloat("two", 2);
  const doubled = g.addNode("Mul", [out, two]);
  g.outputs = [{ name: doubled, type: { tensorType: { elemType: 1 } } }];
  const x = randomData(2 * 784, 3);
  const base = await logits(await Deno.readFile(`${FIXTURES}tiny_vit_op17.onnx`), x, 2);
  const got = await logits(g, x, 2);
  assert.deepEqual(got, base.map((v) => Math.fround(v * 2)));
});

Deno.test("tensor conversions keep values and reject bad payloads", () => {
  const t = Tensor.fromFloat32("w", [2, 2], [1, -2, 3.5, 0]);
  assert.deepEqual(Array.from(t.float32()), [1, -2, 3.5, 0]);
  const back = Tensor.fromProto(t.toProto());
  assert.deepEqual(back.numbers(), [1, -2, 3.5, 0]);
  const fromFloats = Tensor.fromProto({ name: "f", dataType: 1, dims: [3], floatData: [1, 2, 3] });
  assert.deepEqual(fromFloats.numbers(), [1, 2, 3]);
  assert.throws(
    () => Tensor.fromProto({ name: "bad", dataType: 1, dims: [4], floatData: [1, 2] }),
    VitqError,
  );
});

Deno.test("unreadable ONNX bytes give a VitqError naming the file", () => {
  assert.throws(
    () => Graph.fromBytes(new TextEncoder().encode("not a model at all"), "bad.onnx"),
    (e: Error) => e instanceof VitqError && e.message.startsWith("bad.onnx:"),
  );
});

Deno.test("a graph decoded from a Node Buffer reads its int64 and float initializers by value", async () => {
  const { Buffer } = await import("node:buffer");
  const g = Graph.create(17, "buffer-decode");
  g.addInput("input", [2]);
  g.setInitializer(Tensor.fromFloat32("pad", [3], [1.5, -2, 3]));
  g.setInitializer(Tensor.fromInt64("shape", [3], [0, 197, -1]));
  g.addOutput(g.addNode("Identity", ["input"]));
  // an odd prefix puts every raw payload at an unaligned offset of one big buffer
  const bytes = g.toBytes();
  const padded = Buffer.alloc(bytes.length + 1);
  padded.set(bytes, 1);
  const back = Graph.fromBytes(padded.subarray(1));
  assert.deepEqual(back.initializers.get("shape")!.numbers(), [0, 197, -1]);
  assert.deepEqual(Array.from(back.initializers.get("pad")!.float32()), [1.5, -2, 3]);
  assert.equal(back.initializers.get("shape")!.raw.constructor, Uint8Array);
});
