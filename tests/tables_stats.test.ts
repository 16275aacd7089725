import assert from "node:assert/strict";
import { Store } from "../bench/store.ts";
import { gatherTable, renderMarkdown, renderPairs } from "../bench/tables.ts";
import { cli, smallManifest, tmpDir, writeManifest } from "./helpers.ts";

Deno.test("identical cells show a zero difference and a tie mark; views answer", async () => {
  const dir = await tmpDir();
  const db = `${dir}/r.duckdb`;
  const m = await writeManifest(
    dir,
    smallManifest({
      name: "twins",
      methods: ["minmax", { name: "minmax", label: "minmax-again" }],
      bits: [{ w: 4, a: 4 }],
      speed: { enabled: false },
    }),
  );
  const r = await cli("bench", [m, "--db", db, "--tables", `${dir}/t`, "--quiet"]);
  assert.equal(r.code, 0, r.stderr);
  // one is best (bold), the other is tied with it
  assert.match(r.stdout, /\| minmax(-again)? \| \*\*[\d.]+\*\* \|/);
  assert.match(r.stdout, /\| minmax(-again)? \| [\d.]+ † \|/);
  const pairs = await cli("tables", ["twins", "--db", db, "--pairs", "--bits", "4/4"]);
  assert.equal(pairs.code, 0, pairs.stderr);
  assert.match(pairs.stdout, /\| 0\.00 \| \[0\.00, 0\.00\] \| 1\.0000 \| no \(tied\) \|/);

  const s = await Store.open(db);
  try {
    const pw = await s.query(
      "select label_a, label_b, n, only_a, only_b, diff_points, flip_rate from pairwise",
    );
    assert.equal(pw.length, 2);
    for (const p of pw) {
      assert.equal(p.n, 200);
      assert.equal(p.only_a, 0);
      assert.equal(p.diff_points, 0);
      assert.equal(p.flip_rate, 0);
    }
    const fl = await s.query("select label, n, flip_rate from flips order by label");
    assert.equal(fl.length, 2);
    assert.equal(fl[0].n, 200);
    assert.equal(fl[0].flip_rate, fl[1].flip_rate);
    const img = await s.query("select count(*)::int as n, min(image_id) as first from images");
    assert.deepEqual(img[0], { n: 200, first: "test/00000" });
  } finally {
    s.close();
  }
  await Deno.remove(dir, { recursive: true });
});

/** Insert a synthetic cell with given per-image correctness. */
async function fakeCell(s: Store, id: string, label: string, correct: boolean[], seed = 0) {
  const n = correct.length;
  const top1 = (100 * correct.filter(Boolean).length) / n;
  await s.putCell(
    {
      cell_id: id,
      run_id: "r",
      manifest_name: "synthetic",
      method: label,
      label,
      options: "{}",
      paper: "",
      approximations: "",
      model: "m",
      model_sha: "sha",
      w_bits: 4,
      a_bits: 4,
      dataset: "d",
      split: "test",
      subset_rule: "all",
      subset_size: n,
      eval_hash: "e",
      calib_size: 1,
      calib_seed: seed,
      calib_split: "train",
      calib_hash: `c${seed}`,
      top1,
      top5: 100,
      correct: correct.filter(Boolean).length,
      fp_top1: 90,
      calib_seconds: 0,
      eval_seconds: 0,
      fp_ips: null,
      fp_lat_med_ms: null,
      fp_lat_p90_ms: null,
      sim_ips: null,
      sim_lat_med_ms: null,
      sim_lat_p90_ms: null,
      timed_graph: "",
      threads: 1,
      batch_size: 1,
      backend: "node",
      model_bytes: 0,
      fp_cell: "fp",
      status: "ok",
      error: null,
      notes: null,
    },
    [],
    {
      preds: Int32Array.from(correct, (c) => (c ? 0 : 1)),
      trueRank: Int32Array.from(correct, (c) => (c ? 0 : 1)),
    },
  );
}

Deno.test("a constructed large gap is marked different, a small one tied; deterministic", async () => {
  const dir = await tmpDir();
  const s = await Store.open(`${dir}/r.duckdb`);
  try {
    const n = 1000;
    await fakeCell(s, "a", "strong", Array.from({ length: n }, (_, i) => i < 900));
    await fakeCell(s, "b", "weak", Array.from({ length: n }, (_, i) => i < 600));
    await fakeCell(s, "c", "close", Array.from({ length: n }, (_, i) => i < 897));
    const d = await gatherTable(s, "synthetic");
    const md = renderMarkdown(d);
    assert.match(md, /\| strong \| \*\*90\.00\*\* \|/);
    assert.match(md, /\| weak \| 60\.00 \|/);
    assert.match(md, /\| close \| 89\.70 † \|/);
    const weak = d.entries.find((e) => e.label === "weak")!;
    assert.equal(weak.tied, false);
    assert.ok(weak.vsBest!.hi < 0 && weak.vsBest!.lo < weak.vsBest!.diff);
    assert.ok(Math.abs(weak.vsBest!.diff + 30) < 1e-9);
    const pairs = renderPairs(d, 4, 4, "m");
    assert.match(
      pairs,
      /\| strong \| weak \| 30\.00 \| \[\d+\.\d\d, \d+\.\d\d\] \| \d\.\de-\d+ \| yes \|/,
    );
    // same data, same seed: same intervals
    const again = await gatherTable(s, "synthetic");
    assert.deepEqual(again.entries.map((e) => e.vsBest), d.entries.map((e) => e.vsBest));
  } finally {
    s.close();
  }
  await Deno.remove(dir, { recursive: true });
});
