import assert from "node:assert/strict";
import { DuckDBInstance } from "@duckdb/node-api";
import { prepareBench } from "../bench/prepare.ts";
import { cli, FIXTURE_CARD, smallManifest, tmpDir, writeManifest } from "./helpers.ts";

/** Run a bad bench and check: exit 2, one line naming `expect`, database unchanged. */
async function expectBad(dir: string, db: string, args: string[], expect: RegExp) {
  const before = await Deno.readFile(db);
  const r = await cli("bench", [
    ...args,
    "--db",
    db,
    "--quiet",
    "--tables",
    `${dir}/t`,
    "--report",
    `${dir}/report`,
  ]);
  assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], /^error: /);
  assert.match(lines[0], expect);
  assert.deepEqual(await Deno.readFile(db), before, "database changed");
}

Deno.test("bad input: one-line errors, exit code 2, database left as it was", async () => {
  const dir = await tmpDir();
  const db = `${dir}/r.duckdb`;
  const good = await writeManifest(
    dir,
    smallManifest({
      name: "good",
      methods: ["minmax"],
      bits: [{ w: 8, a: 8 }],
      dataset: { name: "fashion-mnist", subset: { rule: "first", perClass: 2 } },
      speed: { enabled: false },
    }),
  );
  const ok = await cli("bench", [
    good,
    "--db",
    db,
    "--quiet",
    "--tables",
    `${dir}/t`,
    "--report",
    `${dir}/report`,
  ]);
  assert.equal(ok.code, 0, ok.stderr);

  const malformed = `${dir}/malformed.json`;
  await Deno.writeTextFile(malformed, '{"name": "x", "models": [');
  await expectBad(dir, db, [malformed], /malformed\.json: malformed JSON/);

  const schema = await writeManifest(
    dir,
    smallManifest({ name: "schema", bits: [{ w: 4, a: 99 }] }),
  );
  await expectBad(dir, db, [schema], /schema\.json: \/bits\/0\/a: must be <= 16/);

  const extra = await writeManifest(dir, smallManifest({ name: "extra", colour: "red" }));
  await expectBad(
    dir,
    db,
    [extra],
    /extra\.json: \/: must NOT have additional properties "colour"/,
  );

  const method = await writeManifest(dir, smallManifest({ name: "method", methods: ["nope"] }));
  await expectBad(dir, db, [method], /method\.json: \/methods\/0\/name: unknown method "nope"/);

  const option = await writeManifest(
    dir,
    smallManifest({ name: "option", methods: [{ name: "percentile", options: { pct: 3 } }] }),
  );
  await expectBad(dir, db, [option], /\/methods\/0\/options\/pct: unknown option/);

  const model = await writeManifest(dir, smallManifest({ name: "model", models: ["vit_nope"] }));
  await expectBad(dir, db, [model], /model\.json: \/models\/0: unknown model "vit_nope"/);

  const data = await writeManifest(
    dir,
    smallManifest({
      name: "data",
      dataset: { name: "fashion-mnist", path: `${dir}/no-such-folder` },
    }),
  );
  await expectBad(dir, db, [data], /\/dataset\/path: folder .*no-such-folder does not exist/);

  const overlap = await writeManifest(
    dir,
    smallManifest({
      name: "overlap",
      dataset: { name: "fashion-mnist", subset: { rule: "all" } },
      calibration: { size: 8, split: "test" },
    }),
  );
  await expectBad(
    dir,
    db,
    [overlap],
    /\/calibration\/split: calibration from the "test" split would overlap/,
  );

  await Deno.writeTextFile(`${dir}/broken.onnx`, "this is not protobuf");
  await Deno.writeTextFile(
    `${dir}/broken.json`,
    JSON.stringify({ ...FIXTURE_CARD, name: "broken" }),
  );
  const onnx = await writeManifest(
    dir,
    smallManifest({ name: "onnx", models: [`${dir}/broken.onnx`] }),
  );
  await expectBad(dir, db, [onnx], /broken\.onnx: not a readable ONNX model/);

  await expectBad(dir, db, [`${dir}/missing.json`], /missing\.json: cannot read manifest/);

  // a database that keeps nothing
  const mem = await cli("bench", [good, "--db", ":memory:", "--quiet"]);
  assert.equal(mem.code, 2, mem.stderr);
  assert.match(mem.stderr.trim(), /^error: --db :memory:: an in-memory database keeps no results/);

  // the backend that runs is part of every cell's key
  const nodeIds = (await prepareBench(good, { preflightImages: 0 })).plan.cells.map((c) => c.id);
  const wasmIds = (await prepareBench(good, { backend: "wasm", preflightImages: 0 })).plan.cells
    .map((c) => c.id);
  assert.equal(nodeIds.length, wasmIds.length);
  assert.ok(nodeIds.every((id) => !wasmIds.includes(id)), "node and wasm cells share a key");

  await readOnlyChecks(dir, db);
  await Deno.remove(dir, { recursive: true });
});

/** One-line refusal with exit 2, and `file` byte-identical afterwards. */
async function expectRefused(name: string, args: string[], file: string, expect: RegExp) {
  const before = await Deno.readFile(file);
  const r = await cli(name, args);
  assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], expect);
  assert.deepEqual(await Deno.readFile(file), before, `${file} changed`);
}

/** sql and tables only read; a name with no results, other DuckDB files and damage are refused. */
async function readOnlyChecks(dir: string, db: string) {
  for (
    const q of [
      "drop table results",
      "delete from results",
      "update results set top1 = 0",
      `copy results to '${dir}/x.csv'`,
      "select * from read_csv('/etc/passwd')",
      `attach '${dir}/other.duckdb' as other`,
    ]
  ) {
    await expectRefused("sql", [q, "--db", db], db, /^error: sql: .*(read-only|disabled)/);
  }
  // reading leaves the file as it was (it would work on a read-only file system)
  const before = await Deno.readFile(db);
  const mtime = (await Deno.stat(db)).mtime?.getTime();
  const ok = await cli("sql", ["select count(*) as n from results", "--db", db]);
  assert.equal(ok.code, 0, ok.stderr);
  const t = await cli("tables", ["good", "--db", db, "--out", `${dir}/tt`]);
  assert.equal(t.code, 0, t.stderr);
  assert.deepEqual(await Deno.readFile(db), before);
  assert.equal((await Deno.stat(db)).mtime?.getTime(), mtime);
  assert.ok(!(await Deno.stat(`${db}.wal`).then(() => true, () => false)), "a WAL was written");
  // results of any size (table mode used to overflow the stack at ~120,000 rows)
  const big = await cli("sql", ["select range as i from range(150000)", "--db", db]);
  assert.equal(big.code, 0, big.stderr);
  assert.match(big.stdout, /\(150000 rows\)\n$/);
  // a name with no results is refused, and no folder is made for it
  await expectRefused(
    "tables",
    ["nosuch", "--db", db, "--out", `${dir}/tt`],
    db,
    /^error: nosuch: no results for this manifest/,
  );
  assert.ok(!(await Deno.stat(`${dir}/tt/nosuch`).then(() => true, () => false)));
  await expectRefused("tables", ["--db", db, "--out", ""], db, /^error: --out: empty path/);
  // a DuckDB file that is not a vitq database is never given the schema
  const other = `${dir}/other.duckdb`;
  const inst = await DuckDBInstance.create(other);
  const conn = await inst.connect();
  await conn.run("create table t (x integer); insert into t values (1)");
  conn.closeSync();
  inst.closeSync();
  const good = `${dir}/good.json`;
  for (const [name, args] of [["sql", ["select 1", "--db", other]], ["tables", ["--db", other]]]) {
    await expectRefused(name as string, args as string[], other, /not a vitq result database/);
  }
  await expectRefused(
    "bench",
    [good, "--db", other, "--quiet", "--tables", `${dir}/t`],
    other,
    /not a vitq result database/,
  );
  // a dropped table is reported, not re-created empty
  const damaged = `${dir}/damaged.duckdb`;
  await Deno.copyFile(db, damaged);
  const di = await DuckDBInstance.create(damaged);
  const dc = await di.connect();
  await dc.run("drop view flips; drop view pairwise; drop table predictions");
  dc.closeSync();
  di.closeSync();
  await expectRefused("sql", ["select 1", "--db", damaged], damaged, /damaged vitq database/);
  await expectRefused(
    "bench",
    [good, "--db", damaged, "--quiet", "--tables", `${dir}/t`],
    damaged,
    /damaged vitq database: table predictions missing/,
  );
}
