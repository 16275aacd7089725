import assert from "node:assert/strict";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { captureGraph, createRuntime } from "../core/runtime/runtime.ts";
import { randomData, runtime, SHIPPED_MODEL } from "./helpers.ts";

Deno.test("node and wasm backends agree on FP32 logits within 1e-4", async () => {
  const bytes = await Deno.readFile(SHIPPED_MODEL);
  const x = randomData(8 * 784, 5, 2);
  const feeds = { input: { data: x, dims: [8, 1, 28, 28] } };
  const node = await (await runtime()).createSession(bytes);
  const wasm = await (await createRuntime("wasm")).createSession(bytes);
  const a = (await node.run(feeds)).logits.data;
  const b = (await wasm.run(feeds)).logits.data;
  await node.release();
  await wasm.release();
  let maxDiff = 0;
  for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
  assert.ok(maxDiff < 1e-4, `max |node - wasm| = ${maxDiff}`);
});

Deno.test("capture exposes intermediate values without changing the logits", async () => {
  const g = await Graph.load(SHIPPED_MODEL);
  const sites = findSites(g);
  const fc2 = sites.find((s) => s.id === "b2.fc2")!;
  const sm = sites.find((s) => s.id === "b0.softmax")!;
  const cap = captureGraph(g, [fc2.input!, sm.output], true);
  const rt = await runtime();
  const s = await rt.createSession(cap);
  const base = await rt.createSession(g);
  const x = randomData(3 * 784, 9);
  const out = await s.run({ input: { data: x, dims: [3, 1, 28, 28] } });
  const ref = await base.run({ input: { data: x, dims: [3, 1, 28, 28] } });
  await s.release();
  await base.release();
  assert.deepEqual(out.logits.data, ref.logits.data);
  // GELU output: 3 images x 50 tokens x 128 hidden; softmax rows sum to 1
  assert.deepEqual(out[fc2.input!].dims, [3, 50, 128]);
  const p = out[sm.output];
  assert.deepEqual(p.dims, [3, 4, 50, 50]);
  let sum = 0;
  for (let j = 0; j < 50; j++) sum += p.data[j];
  assert.ok(Math.abs(sum - 1) < 1e-5);
});
