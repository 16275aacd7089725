import assert from "node:assert/strict";
import { CellCache } from "../methods/cache.ts";

Deno.test("CellCache: keyed by model hash, calibration hash, image count and dependencies", async () => {
  const cache = new CellCache<number>();
  let computed = 0;
  const calib = { length: 8, shape: [1, 28, 28], slice: () => Promise.resolve(new Float32Array()) };
  const get = (modelHash: string, calibHash: string, dep: unknown, length = 8) =>
    cache.get({ modelHash, calibHash, calib: { ...calib, length } }, dep, () => {
      computed++;
      return Promise.resolve(computed);
    });
  assert.equal(await get("m1", "c1", ["hessian"]), 1);
  assert.equal(await get("m1", "c1", ["hessian"]), 1); // hit
  assert.equal(await get("m2", "c1", ["hessian"]), 2); // other model
  assert.equal(await get("m2", "c2", ["hessian"]), 3); // other calibration set
  assert.equal(await get("m2", "c2", ["none"]), 4); // other dependency
  assert.equal(await get("m2", "c2", ["none"], 4), 5); // other image count
  assert.equal(await get("m2", "c2", ["none"], 4), 5);
  // a failed computation is not kept
  await assert.rejects(() =>
    cache.get({ modelHash: "x", calibHash: "y", calib }, 0, () => Promise.reject(new Error("boom")))
  );
  assert.equal(await get("x", "y", 0), 6);
});
