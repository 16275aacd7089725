/**
 * `deno task bench <manifest.json> [--db FILE] [--force] [--backend node|wasm] [--quiet]`
 *
 * Runs every cell of a manifest not stored yet, stores results in DuckDB, writes
 * the tables under results/tables/<name>/ and prints them, and writes the HTML
 * report (`bench/report.ts`) to results/report/<name>.html (`--report DIR`).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { runCli, VitqError } from "../core/errors.ts";
import { runPlan } from "../bench/runner.ts";
import { checkDbPath, DEFAULT_DB, Store } from "../bench/store.ts";
import { prepareBench } from "../bench/prepare.ts";
import { gatherTable, writeTables } from "../bench/tables.ts";
import { REPORT_DIR, writeReport } from "../bench/report.ts";

const USAGE =
  "usage: deno task bench <manifest.json> [--db results/vitq.duckdb] [--force] [--backend node|wasm] [--tables DIR] [--report DIR] [--quiet]";

await runCli(async () => {
  let parsed;
  try {
    parsed = parseArgs({
      args: Deno.args,
      allowPositionals: true,
      options: {
        db: { type: "string", default: DEFAULT_DB },
        force: { type: "boolean", default: false },
        backend: { type: "string" },
        tables: { type: "string", default: "results/tables" },
        report: { type: "string", default: REPORT_DIR },
        quiet: { type: "boolean", default: false },
        help: { type: "boolean", default: false },
      },
    });
  } catch (e) {
    throw new VitqError(`${(e as Error).message}; ${USAGE}`);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (positionals.length !== 1) throw new VitqError(USAGE);
  checkDbPath(values.db!);
  if (values.tables!.trim() === "") {
    throw new VitqError("--tables: empty path; name a folder such as results/tables");
  }
  if (values.backend !== undefined && values.backend !== "node" && values.backend !== "wasm") {
    throw new VitqError(`--backend: unknown backend "${values.backend}" (expected node or wasm)`);
  }
  const path = positionals[0];
  // everything is validated and loaded before the database is opened
  const { manifest, text, plan } = await prepareBench(path, {
    backend: values.backend as "node" | "wasm" | undefined,
  });
  // the bench holds the database only while it writes: others can read finished cells
  const store = await Store.open(values.db!, { releaseBetweenOperations: true });
  try {
    const summary = await runPlan(plan, store, {
      manifestPath: path,
      manifestText: text,
      force: values.force,
      backend: values.backend as "node" | "wasm" | undefined,
      quiet: values.quiet,
    });
    const data = await gatherTable(store, manifest.name, summary.cells.map((c) => c.id));
    if (data.entries.length === 0) {
      console.log(
        `no cell of this manifest has a result; tables in ${values.tables}/${manifest.name}/ left as they were`,
      );
    } else {
      const md = await writeTables(data, `${values.tables}/${manifest.name}`);
      console.log(md);
    }
    const cellIds = summary.cells.map((c) => c.id);
    console.log(`report: ${await writeReport(store, manifest.name, values.report!, { cellIds })}`);
    console.log(
      `cells: ${summary.ran} run, ${summary.skipped} already stored, ${summary.failed} failed; results in ${values.db}, tables in ${values.tables}/${manifest.name}/`,
    );
    if (summary.failed > 0) Deno.exitCode = 1;
  } finally {
    store.close();
  }
});
