/**
 * The percentile statistics' bounded-memory selection (core/runtime/capture.ts):
 * `selectLargest` returns the k largest values, ties and duplicates included (the
 * percentiles of `collectStats` equal those of the sorted captured values at any batch size).
 */
import assert from "node:assert/strict";
import { captureValues, collectStats, selectLargest } from "../core/runtime/capture.ts";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { quantileSorted } from "../core/quantile.ts";
import { randomData, runtime, SHIPPED_MODEL } from "./helpers.ts";

Deno.test("selectLargest: the k largest values for sizes 1..20,000, with many ties", () => {
  let seed = 3;
  for (const n of [1, 2, 3, 17, 1000, 20000]) {
    for (const k of new Set([1, 2, Math.max(1, n >> 1), n - 1, n].filter((k) => k >= 1))) {
      const base = randomData(n, seed++, 4);
      const a = base.map((v) => Math.abs(Math.round(v * 3) / 3)); // few distinct values: many ties
      const want = Float32Array.from(a).sort().reverse().slice(0, k);
      const got = Float32Array.from(selectLargest(Float32Array.from(a), k)).sort().reverse();
      assert.deepEqual(got, want, `n ${n} k ${k}`);
    }
  }
});

Deno.test("collectStats percentiles equal the sorted data's (type-7) at batch sizes 1, 3 and 8", async () => {
  const graph = await Graph.load(SHIPPED_MODEL);
  const values = findSites(graph).filter((s) => s.kind === "linear" && s.role !== "patch_embed")
    .slice(0, 4).map((s) => s.input!);
  const images = randomData(8 * 28 * 28, 5, 2);
  const calib = {
    length: 8,
    shape: [1, 28, 28],
    slice: (a: number, b: number) => Promise.resolve(images.slice(a * 784, b * 784)),
  };
  const rt = await runtime();
  const full = await captureValues(rt, graph, values, calib, 8);
  for (const batch of [1, 3, 8]) {
    const stats = await collectStats(rt, graph, values, calib, batch, 99);
    for (const v of values) {
      const sorted = Float64Array.from(full.get(v)!.data, Math.abs).sort();
      for (const p of [99, 99.9, 99.99]) {
        const want = quantileSorted(sorted, p / 100);
        const got = stats.get(v)!.percentile(p);
        assert.ok(
          Math.abs(got - want) <= 1e-6 * want,
          `${v} p${p} batch ${batch}: ${got} vs ${want}`,
        );
      }
    }
  }
});
