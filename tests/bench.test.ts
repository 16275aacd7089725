import assert from "node:assert/strict";
import { Store } from "../bench/store.ts";
import { cli, smallManifest, tmpDir, writeManifest } from "./helpers.ts";

async function rows(db: string, sql: string) {
  const s = await Store.open(db);
  try {
    return await s.query(sql);
  } finally {
    s.close();
  }
}

Deno.test("bench end to end: rows in DuckDB, tables rendered, resume, force, determinism", async () => {
  const dir = await tmpDir();
  const db = `${dir}/r.duckdb`;
  const tables = `${dir}/tables`;
  const m = await writeManifest(dir, smallManifest());
  const first = await cli("bench", [m, "--db", db, "--tables", tables, "--quiet"]);
  assert.equal(first.code, 0, first.stderr);
  assert.match(first.stdout, /## W4A4: Top-1/);
  assert.match(first.stdout, /\| FP32 \|/);
  assert.match(first.stdout, /cells: 4 run, 0 already stored, 0 failed/);
  const res = await rows(db, "select * from results order by label, w_bits");
  assert.equal(res.length, 4);
  for (const r of res) {
    assert.equal(r.status, "ok");
    assert.equal(r.subset_size, 200);
    assert.equal(r.calib_size, 8);
    assert.ok((r.top1 as number) >= 0 && (r.top1 as number) <= 100);
    assert.ok((r.sim_ips as number) > 0 && (r.fp_ips as number) > 0);
    assert.ok((r.sim_lat_med_ms as number) > 0);
    // the load average around the timing is stored (Linux), so a loaded figure says so
    const onLinux = await Deno.stat("/proc/loadavg").then(() => true, () => false);
    if (onLinux) {
      assert.ok(typeof r.speed_load === "number" && r.speed_load >= 0, `${r.speed_load}`);
    }
  }
  if (await Deno.stat("/proc/loadavg").then(() => true, () => false)) {
    assert.match(await Deno.readTextFile(`${tables}/small/speed.md`), /Machine load while timing/);
  }
  const layers = await rows(db, "select count(*)::int as n from layers");
  // per cell: 26 weights + 25 linear inputs + 24 matmul operands
  assert.equal(layers[0].n, 4 * (26 + 25 + 24));
  // element counts: a weight's size, an activation's elements per image
  const el = await rows(
    db,
    "select site, tensor, min(elements)::int as lo, max(elements)::int as hi from layers group by all",
  );
  const count = (site: string, tensor: string) => {
    const r = el.find((x) => x.site === site && x.tensor === tensor)!;
    assert.equal(r.lo, r.hi, `${site} ${tensor}`);
    return r.lo;
  };
  assert.equal(count("b0.qkv", "weight"), 64 * 192);
  assert.equal(count("b0.qkv", "input"), 50 * 64);
  assert.equal(count("b0.qk", "b"), 4 * 16 * 50);
  assert.equal(count("patch_embed", "weight"), 64 * 16);
  const ids = await rows(db, "select kind, n from id_sets order by kind");
  assert.deepEqual(ids.map((r) => [r.kind, r.n]), [["calibration", 8], ["eval", 200]]);
  const runs = await rows(db, "select * from runs");
  assert.equal(runs.length, 1);
  assert.ok((runs[0].cpu as string).length > 0);
  for (const f of ["top1.md", "top1.tex", "top1.csv", "speed.md", "speed.csv"]) {
    await Deno.stat(`${tables}/small/${f}`);
  }

  // resume: nothing to do
  const again = await cli("bench", [m, "--db", db, "--tables", tables, "--quiet"]);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /cells: 0 run, 4 already stored, 0 failed/);

  // force: recompute, identical Top-1 to the last digit
  const forced = await cli("bench", [m, "--db", db, "--tables", tables, "--quiet", "--force"]);
  assert.equal(forced.code, 0, forced.stderr);
  assert.match(forced.stdout, /cells: 4 run/);
  const res2 = await rows(db, "select * from results order by label, w_bits");
  assert.equal(res2.length, 4);
  assert.deepEqual(
    res2.map((r) => [r.cell_id, r.top1, r.correct]),
    res.map((r) => [r.cell_id, r.top1, r.correct]),
  );

  // a new bit setting adds only its cells
  const m2 = await writeManifest(
    dir,
    smallManifest({ bits: [{ w: 8, a: 8 }, { w: 4, a: 4 }, { w: 6, a: 6 }] }),
  );
  const more = await cli("bench", [m2, "--db", db, "--tables", tables, "--quiet"]);
  assert.match(more.stdout, /cells: 2 run, 4 already stored, 0 failed/);

  const sql = await cli("sql", [
    "select method, count(*) as n from results group by 1 order by 1",
    "--db",
    db,
  ]);
  assert.equal(sql.code, 0, sql.stderr);
  assert.match(sql.stdout, /minmax\s+3/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("several calibration seeds give mean ± std in the table", async () => {
  const dir = await tmpDir();
  const db = `${dir}/r.duckdb`;
  const m = await writeManifest(
    dir,
    smallManifest({
      name: "seeds",
      methods: ["minmax"],
      bits: [{ w: 4, a: 4 }],
      calibration: { size: 4, seeds: [0, 1, 2], split: "train" },
      speed: { enabled: false },
    }),
  );
  const r = await cli("bench", [m, "--db", db, "--tables", `${dir}/t`, "--quiet"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /\| minmax \| \*\*\d+\.\d\d ± \d+\.\d\d\*\* \|/);
  const hashes = await rows(db, "select count(distinct calib_hash)::int as n from results");
  assert.equal(hashes[0].n, 3);
  await Deno.remove(dir, { recursive: true });
});
