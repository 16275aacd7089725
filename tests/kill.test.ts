/**
 * Crash safety: a bench killed with SIGKILL at five points (after the FP32
 * baseline is stored, inside a cell's transaction, after a cell is stored, while
 * the table files are written, between the two renames that swap the table set)
 * resumes to results equal to an uninterrupted run, cell for cell, and every
 * table set a reader can see is complete (the old one or the new one). Also: a
 * reader during a run sees every finished cell.
 */
import assert from "node:assert/strict";
import { Store } from "../bench/store.ts";
import { recoverTables, TABLE_FILES } from "../bench/tables.ts";
import { ROOT, smallManifest, tmpDir, writeManifest } from "./helpers.ts";

const MANIFEST = smallManifest({
  name: "kill",
  methods: ["minmax"],
  bits: [{ w: 8, a: 8 }, { w: 4, a: 4 }],
  dataset: { name: "fashion-mnist", split: "test", subset: { rule: "first", perClass: 2 } },
  calibration: { size: 8, seeds: [0], split: "train" },
  batchSize: 20,
  threads: 1,
  speed: { enabled: false },
});

async function bench(
  manifest: string,
  db: string,
  tables: string,
  fault?: string,
): Promise<Deno.CommandOutput> {
  return await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      `${ROOT}cli/bench.ts`,
      manifest,
      "--db",
      db,
      "--tables",
      tables,
      "--report",
      `${db}-report`,
    ],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...(fault ? { VITQ_FAULT: fault } : {}) },
  }).output();
}

/** Stored results, comparable across runs (no run ids, times or timings). */
async function results(db: string) {
  const s = await Store.open(db, { readOnly: true });
  try {
    const cells = await s.query(
      `select cell_id, status, top1, top5, correct, fp_top1 from results order by cell_id`,
    );
    const preds = await s.query(
      `select cell_id, count(*)::int as n, sum(pred)::int as sp, sum(true_rank)::int as sr
         from predictions group by cell_id order by cell_id`,
    );
    const fp = await s.query(`select model_sha, n, correct from fp_baselines order by model_sha`);
    const layers = await s.query(
      `select cell_id, count(*)::int as n, sum(scale) as s from layers group by 1 order by 1`,
    );
    return { cells, preds, fp, layers };
  } finally {
    s.close();
  }
}

async function readSet(dir: string): Promise<Record<string, string> | undefined> {
  try {
    await Deno.stat(dir);
  } catch {
    return undefined;
  }
  const out: Record<string, string> = {};
  for (const f of TABLE_FILES) out[f] = await Deno.readTextFile(`${dir}/${f}`);
  return out;
}

type TableSet = Record<string, string>;

function sameSet(a: TableSet, b: TableSet): boolean {
  return TABLE_FILES.every((f) => a[f] === b[f]);
}

/** The set of this run: equal, file for file, to the uninterrupted run's (speed is off). */
function isNew(a: TableSet, ref: TableSet): boolean {
  return sameSet(a, ref);
}

Deno.test("kill -9 at five points of a run: resumed results equal an uninterrupted run; table sets stay whole", async () => {
  const dir = await tmpDir();
  const manifest = await writeManifest(dir, MANIFEST);
  // the uninterrupted reference
  const ref = await bench(manifest, `${dir}/ref.duckdb`, `${dir}/ref-tables`);
  assert.equal(ref.code, 0, new TextDecoder().decode(ref.stderr));
  const refResults = await results(`${dir}/ref.duckdb`);
  assert.equal(refResults.cells.length, 2);
  const refSet = (await readSet(`${dir}/ref-tables/kill`))!;
  const OLD = Object.fromEntries(TABLE_FILES.map((f) => [f, `old ${f}\n`]));

  const points = ["fp-stored", "store-commit:3", "cell-stored:1", "tables-write:3", "tables-swap"];
  for (const point of points) {
    const db = `${dir}/${point.replace(":", "-")}.duckdb`;
    const tables = `${dir}/${point.replace(":", "-")}`;
    // an older table set is already there
    await Deno.mkdir(`${tables}/kill`, { recursive: true });
    for (const f of TABLE_FILES) await Deno.writeTextFile(`${tables}/kill/${f}`, OLD[f]);
    const killed = await bench(manifest, db, tables, point);
    assert.equal(killed.signal, "SIGKILL", `${point}: ${new TextDecoder().decode(killed.stderr)}`);
    // what a reader sees right after the kill: the old set, or (after recovery) the new one
    let seen = await readSet(`${tables}/kill`);
    if (!seen) {
      // killed between the renames: the complete new set waits beside it
      await recoverTables(`${tables}/kill`);
      seen = await readSet(`${tables}/kill`);
      assert.ok(seen && isNew(seen, refSet), `${point}: recovered set`);
    }
    assert.ok(sameSet(seen, OLD) || isNew(seen, refSet), `${point}: mixed table set`);
    // the database opens and holds only whole cells
    const mid = await results(db);
    for (const c of mid.cells) {
      const p = mid.preds.find((x) => x.cell_id === c.cell_id);
      assert.equal(p?.n, 20, `${point}: cell ${c.cell_id} without its predictions`);
    }
    const resumed = await bench(manifest, db, tables);
    assert.equal(resumed.code, 0, `${point}: ${new TextDecoder().decode(resumed.stderr)}`);
    assert.deepEqual(await results(db), refResults, `${point}: resumed results differ`);
    const final = await readSet(`${tables}/kill`);
    assert.ok(final && isNew(final, refSet), `${point}: resumed tables differ`);
    const left = [];
    for await (const e of Deno.readDir(tables)) left.push(e.name);
    assert.deepEqual(left, ["kill"], `${point}: leftovers`);
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a reader during a run sees every finished cell", async () => {
  const dir = await tmpDir();
  const manifest = await writeManifest(
    dir,
    {
      ...MANIFEST,
      name: "reader",
      bits: [{ w: 8, a: 8 }, { w: 6, a: 6 }, { w: 4, a: 4 }],
      dataset: { name: "fashion-mnist", split: "test", subset: { rule: "first", perClass: 40 } },
    },
  );
  const db = `${dir}/r.duckdb`;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      `${ROOT}cli/bench.ts`,
      manifest,
      "--db",
      db,
      "--tables",
      `${dir}/t`,
      "--report",
      `${dir}/report`,
    ],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  let done = false;
  const out = child.output().then((o) => {
    done = true;
    return o;
  });
  // poll with read-only opens (what `deno task sql` and `tables` do) while the bench runs
  const seen: number[] = [];
  let reads = 0;
  while (!done) {
    const exists = await Deno.stat(db).then(() => true, () => false);
    if (exists) {
      let s: Store | undefined;
      try {
        s = await Store.open(db, { readOnly: true, lockWaitSeconds: 30 });
      } catch (e) {
        // the file exists before its schema is committed
        if (!/empty database|not a vitq/.test(String(e))) throw e;
      }
      if (s) {
        try {
          const r = await s.query(`select count(*)::int as n from results where status = 'ok'`);
          // each finished cell has its predictions: the reader sees whole cells only
          const p = await s.query(
            `select count(*)::int as n from results r where status = 'ok' and
               (select count(*) from predictions p where p.cell_id = r.cell_id) <> 400`,
          );
          assert.equal(p[0].n, 0);
          seen.push(r[0].n as number);
          reads++;
        } finally {
          s.close();
        }
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const o = await out;
  assert.equal(o.code, 0, new TextDecoder().decode(o.stderr));
  // counts never go down, and the reader saw finished cells while the run went on
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i] >= seen[i - 1], seen.join(","));
  assert.ok(reads > 0, "no read succeeded during the run");
  assert.ok(seen.some((n) => n > 0 && n < 3), `no partial state seen: ${seen.join(",")}`);
  const s = await Store.open(db, { readOnly: true });
  try {
    const r = await s.query(`select count(*)::int as n from results where status = 'ok'`);
    assert.equal(r[0].n, 3);
  } finally {
    s.close();
  }
  await Deno.remove(dir, { recursive: true });
});
