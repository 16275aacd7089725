/**
 * Measures how much space per-image predictions take in DuckDB: 50,000 images x
 * 100 cells (plus one FP32 baseline), predictions drawn like a 10-class or
 * 1,000-class classifier's (mostly correct, errors spread over classes).
 *
 *     deno run -A tools/bench_storage.ts [--images 50000] [--cells 100] [--classes 1000]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { Store } from "../bench/store.ts";
import { Rng } from "../core/rng.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    images: { type: "string", default: "50000" },
    cells: { type: "string", default: "100" },
    classes: { type: "string", default: "1000" },
  },
});
const n = Number(values.images), cells = Number(values.cells), classes = Number(values.classes);
const dir = await Deno.makeTempDir({ prefix: "vitq-storage-" });
const path = `${dir}/s.duckdb`;
const store = await Store.open(path);
const rng = new Rng(0);
const labels = Int32Array.from({ length: n }, () => rng.int(classes));
await store.putImages(
  "e",
  Array.from({ length: n }, (_, i) => `val/${String(i).padStart(8, "0")}.JPEG`),
  labels,
);
const t0 = performance.now();
for (let c = 0; c < cells; c++) {
  const acc = 0.5 + 0.4 * rng.next();
  const preds = new Int32Array(n), rank = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const ok = rng.next() < acc;
    preds[i] = ok ? labels[i] : rng.int(classes);
    rank[i] = ok ? 0 : 1 + rng.int(Math.min(classes - 1, 20));
  }
  await store.putFp(
    {
      model: "m",
      model_sha: `sha${c}`,
      dataset: "d",
      eval_hash: "e",
      backend: "node",
      n,
      correct: 0,
      top1: 0,
      top5: 0,
      eval_seconds: 0,
      ips: 0,
      lat_med_ms: 0,
      lat_p90_ms: 0,
      batch_size: 1,
      threads: 1,
      fp_cell: `cell${c}`,
      run_id: "r",
    },
    { preds, trueRank: rank },
  );
}
const writeSec = (performance.now() - t0) / 1000;
await store.exec("checkpoint");
const rows = await store.query("select count(*)::bigint as n from predictions");
store.close();
const bytes = (await Deno.stat(path)).size;
console.log(
  `${rows[0].n} prediction rows (${n} images x ${cells} cells, ${classes} classes): ${
    (bytes / 2 ** 20).toFixed(1)
  } MiB on disk, ${(bytes / (n * cells)).toFixed(2)} bytes per image-cell; written in ${
    writeSec.toFixed(1)
  } s`,
);
await Deno.remove(dir, { recursive: true });
