/**
 * `deno task bench <manifest.json> [--db FILE] [--force] [--backend node|wasm] [--quiet]
 * [--shard i/n] [--jobs k] [--timings FILE] [--threads N]`
 *
 * Runs every cell of a manifest not stored yet, stores results in DuckDB, writes
 * the tables under results/tables/<name>/ and prints them, and writes the HTML
 * report (`bench/report.ts`) to results/report/<name>.html (`--report DIR`).
 *
 * `--save` writes each computed cell's model (its deploy graph where the method
 * has one, else its fake-quant graph) with a model card to
 * `results/models/<name>/<cell id>.onnx` (`--save-dir DIR`); `deno task eval`
 * evaluates such a file again.
 *
 * `--shard i/n` runs only the i-th (0-based) of n deterministic parts of the
 * cells (`bench/shard.ts`) into its own database (default
 * `results/shards/<name>/shard-i-of-n.duckdb`) and writes no tables: merge the
 * shards with `deno task merge`. `--jobs k` runs k shards as local processes
 * (threads split between them), then merges them into `--db` and writes the
 * tables.
 *
 * @module
 */
import { runCli, VitqError } from "../core/errors.ts";
import { parseCli } from "./args.ts";
import { loadManifest } from "../bench/manifest.ts";
import { runPlan } from "../bench/runner.ts";
import { checkDbPath, DEFAULT_DB, Store } from "../bench/store.ts";
import { prepareBench } from "../bench/prepare.ts";
import { gatherTable, writeTables } from "../bench/tables.ts";
import { REPORT_DIR, writeReport } from "../bench/report.ts";
import { loadTimings, parseShard, selectShard, type Timings } from "../bench/shard.ts";
import { mergeShards } from "../bench/merge.ts";
import type { Backend } from "../core/runtime/runtime.ts";

const USAGE =
  "usage: deno task bench <manifest.json> [--db results/vitq.duckdb] [--force] [--backend node|wasm] [--tables DIR] [--report DIR] [--quiet] [--shard i/n | --jobs k] [--timings FILE] [--threads N] [--save [--save-dir DIR]]";

/** `7m33s` from milliseconds. */
function elapsed(ms: number): string {
  const s = Math.round(ms / 1000);
  return s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s` : `${s}s`;
}

/** Largest `--jobs` and `--threads` accepted. */
const MAX_PARALLEL = 1024;

function positiveInt(text: string | undefined, flag: string, max: number): number | undefined {
  if (text === undefined) return undefined;
  const v = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(v) || v < 1 || v > max) {
    throw new VitqError(`${flag}: "${text}" is not a whole number in 1..${max}`);
  }
  return v;
}

async function readTimings(path: string | undefined): Promise<Timings | undefined> {
  if (path === undefined) return undefined;
  try {
    if (!(await Deno.stat(path)).isFile) throw new Error("not a regular file");
  } catch (e) {
    throw new VitqError(`--timings ${path}: ${(e as Error).message.split("\n")[0]}`);
  }
  // read-only: the timings file is never changed
  const ts = await Store.open(path, { readOnly: true });
  try {
    return await loadTimings(ts);
  } finally {
    ts.close();
  }
}

await runCli(async () => {
  const started = performance.now();
  const parsed = parseCli(USAGE, {
    db: { type: "string", default: DEFAULT_DB },
    force: { type: "boolean", default: false },
    backend: { type: "string" },
    tables: { type: "string", default: "results/tables" },
    report: { type: "string", default: REPORT_DIR },
    quiet: { type: "boolean", default: false },
    shard: { type: "string" },
    jobs: { type: "string" },
    timings: { type: "string" },
    threads: { type: "string" },
    "shard-dir": { type: "string" },
    save: { type: "boolean", default: false },
    "save-dir": { type: "string", default: "results/models" },
  });
  if (!parsed) return;
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw new VitqError(USAGE);
  checkDbPath(values.db!);
  if (values.tables!.trim() === "") {
    throw new VitqError("--tables: empty path; name a folder such as results/tables");
  }
  if (values.backend !== undefined && values.backend !== "node" && values.backend !== "wasm") {
    throw new VitqError(`--backend: unknown backend "${values.backend}" (expected node or wasm)`);
  }
  const path = positionals[0];
  const shard = values.shard === undefined ? undefined : parseShard(values.shard);
  const jobs = positiveInt(values.jobs, "--jobs", MAX_PARALLEL);
  const threads = positiveInt(values.threads, "--threads", MAX_PARALLEL);
  if (shard && jobs) throw new VitqError("--shard and --jobs: give one of them");
  // everything is validated and loaded before the database is opened
  const prepared = await prepareBench(path, {
    backend: values.backend as Backend | undefined,
    threads,
  });
  const { manifest, text } = prepared;
  let plan = prepared.plan;
  const timings = await readTimings(values.timings);
  const shardDir = values["shard-dir"] ?? `results/shards/${manifest.name}`;
  if (jobs !== undefined && jobs > 1) {
    await runJobs(path, jobs, shardDir, values, plan.cells.map((c) => c.id));
    return;
  }
  let run: Record<string, string> | undefined;
  let db = values.db!;
  if (shard) {
    const s = await selectShard(plan, shard, timings);
    plan = s.plan;
    run = { ...s.record };
    if (values.db === DEFAULT_DB) db = `${shardDir}/shard-${shard.index}-of-${shard.count}.duckdb`;
  }
  // the bench holds the database only while it writes: others can read finished cells
  const store = await Store.open(db, { releaseBetweenOperations: true });
  try {
    const summary = await runPlan(plan, store, {
      manifestPath: path,
      manifestText: text,
      force: values.force,
      backend: values.backend as Backend | undefined,
      quiet: values.quiet,
      run,
      save: values.save ? values["save-dir"] : undefined,
    });
    if (shard) {
      console.log(
        `shard ${shard.index}/${shard.count}: ${summary.cells.length} cells, ${summary.ran} run, ${summary.skipped} already stored, ${summary.failed} failed; results in ${db} (merge with: deno task merge OUT.duckdb ${
          db.includes("/") ? db.slice(0, db.lastIndexOf("/")) : "."
        }/*.duckdb)`,
      );
      if (summary.failed > 0) Deno.exitCode = 1;
      return;
    }
    const data = await gatherTable(store, manifest.name, summary.cells.map((c) => c.id));
    if (data.entries.length === 0) {
      console.log(
        `no cell of this manifest has a result; tables in ${values.tables}/${manifest.name}/ left as they were`,
      );
    } else {
      const md = await writeTables(data, `${values.tables}/${manifest.name}`);
      console.log(md);
      const cellIds = summary.cells.map((c) => c.id);
      console.log(
        `report: ${await writeReport(store, manifest.name, values.report!, { cellIds })}`,
      );
    }
    console.log(
      `cells: ${summary.ran} run, ${summary.skipped} already stored, ${summary.failed} failed; results in ${values.db}, tables in ${values.tables}/${manifest.name}/; total ${
        elapsed(performance.now() - started)
      }`,
    );
    if (summary.failed > 0) Deno.exitCode = 1;
  } finally {
    store.close();
  }
});

/**
 * `--jobs k`: k shard processes of this command, threads split between them
 * (the machine's cores / k, at least 1), then a merge into `--db` and the tables.
 */
async function runJobs(
  path: string,
  jobs: number,
  shardDir: string,
  values: Record<string, string | boolean | undefined>,
  cellIds: string[],
): Promise<void> {
  const threads = Math.max(1, Math.floor(navigator.hardwareConcurrency / jobs));
  const self = new URL(import.meta.url).pathname;
  const files: string[] = [];
  const children = Array.from({ length: jobs }, (_, j) => {
    const file = `${shardDir}/shard-${j}-of-${jobs}.duckdb`;
    files.push(file);
    const args = ["run", "--allow-all", self, path, "--shard", `${j}/${jobs}`, "--db", file];
    args.push("--threads", String(threads), "--quiet");
    if (values.force) args.push("--force");
    if (typeof values.backend === "string") args.push("--backend", values.backend);
    if (typeof values.timings === "string") args.push("--timings", values.timings);
    return new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" }).spawn();
  });
  console.log(`${jobs} shard processes, ${threads} thread(s) each, databases in ${shardDir}/`);
  const outs = await Promise.all(children.map((c) => c.output()));
  let bad = 0;
  for (const [j, o] of outs.entries()) {
    const lines = new TextDecoder().decode(o.stdout).trim().split("\n");
    const err = new TextDecoder().decode(o.stderr).trim();
    console.log(`[shard ${j}] ${lines[lines.length - 1] ?? ""}`);
    if (!o.success) {
      bad++;
      console.log(`[shard ${j}] exit ${o.code}${err ? `: ${err.split("\n").pop()}` : ""}`);
    }
  }
  const db = values.db as string;
  const merged = await mergeShards(db, files);
  console.log(
    `merged ${files.length} shards into ${db}: ${merged.added} cells added, ${merged.same} already there, ${merged.replaced} replaced`,
  );
  const store = await Store.open(db);
  try {
    const { manifest } = await loadManifest(path);
    const data = await gatherTable(store, manifest.name, cellIds);
    const md = await writeTables(data, `${values.tables}/${manifest.name}`);
    console.log(md);
    const report = await writeReport(store, manifest.name, values.report as string, { cellIds });
    console.log(`report: ${report}`);
  } finally {
    store.close();
  }
  if (bad > 0 || merged.missing.length > 0) {
    console.log(
      `${bad} shard(s) failed, ${merged.missing.length} cell(s) missing; rerun the same command to resume`,
    );
    Deno.exitCode = 1;
  }
}
