/**
 * The progress line's remaining-time estimate: stored timings of earlier cells
 * (median by model, label and bits, falling back to model, method and bits, then
 * model and method), scaled by this run's actual / estimated seconds.
 *
 * @module
 */
import assert from "node:assert/strict";
import { formatDuration, remainingSeconds, storedEstimates } from "../bench/progress.ts";
import { Store } from "../bench/store.ts";
import { tmpDir } from "./helpers.ts";

Deno.test("progress: remaining time from estimates, scaled by finished cells", () => {
  // nothing known yet
  assert.equal(remainingSeconds([null, null], null, []), null);
  // stored estimates only: their sum
  assert.equal(remainingSeconds([10, 20], null, []), 30);
  // finished cells took twice their estimates: the rest is scaled by 2
  assert.equal(remainingSeconds([10, 20], null, [{ estimate: 5, actual: 10 }]), 60);
  // a cell without a stored timing counts as the mean of the finished cells
  assert.equal(
    remainingSeconds([null], null, [{ estimate: null, actual: 4 }, { estimate: null, actual: 8 }]),
    6,
  );
  // the running cell counts for what is left of it, never below zero
  assert.equal(remainingSeconds([], { estimate: 10, elapsed: 4 }, []), 6);
  assert.equal(remainingSeconds([5], { estimate: 10, elapsed: 40 }, []), 5);
});

Deno.test("progress: durations", () => {
  assert.equal(formatDuration(7.4), "7s");
  assert.equal(formatDuration(185), "3m05s");
  assert.equal(formatDuration(3725), "1h02m");
});

Deno.test("progress: stored estimates by model, label, method and bits", async () => {
  const dir = await tmpDir();
  const store = await Store.open(`${dir}/p.duckdb`);
  try {
    const rows: [string, string, string, number, number, number][] = [
      // id, method, label, bits, calib + eval seconds (split 3:1)
      ["a", "ptq4vit", "ptq4vit", 4, 4, 40],
      ["b", "ptq4vit", "ptq4vit", 4, 4, 60],
      ["c", "ptq4vit", "ptq4vit-mse", 4, 4, 8],
      ["d", "ptq4vit", "ptq4vit", 8, 8, 20],
      ["e", "minmax", "minmax", 4, 4, 1],
    ];
    for (const [id, method, label, w, a, s] of rows) {
      await store.exec(
        `insert into results (cell_id, method, label, model, w_bits, a_bits, calib_seconds,
                              eval_seconds, status) values ($1, $2, $3, 'vit', $4, $5, $6, $7, 'ok')`,
        [id, method, label, w, a, s * 0.75, s * 0.25],
      );
    }
    const cell = (id: string, method: string, label: string, w: number, model = "vit") => ({
      id,
      method,
      label,
      model,
      bits: { w, a: w },
    });
    const est = await storedEstimates(store, [
      cell("x1", "ptq4vit", "ptq4vit", 4), // same label and bits: median of 40 and 60
      cell("x2", "ptq4vit", "ptq4vit-cos", 4), // new label: same method and bits (40, 60, 8)
      cell("x3", "ptq4vit", "ptq4vit-cos", 6), // new bits: same method (40, 60, 8, 20)
      cell("x4", "adfq", "adfq", 4), // nothing stored
      cell("x5", "minmax", "minmax", 4, "deit"), // other model
    ]);
    assert.equal(est.get("x1"), 50);
    assert.equal(est.get("x2"), 40);
    assert.equal(est.get("x3"), 30);
    assert.equal(est.get("x4"), null);
    assert.equal(est.get("x5"), null);
  } finally {
    store.close();
    await Deno.remove(dir, { recursive: true });
  }
});
