/**
 * `deno task sql "select ..." [--db FILE] [--csv]`: run a query on the result
 * database and print the rows as an aligned table (or CSV).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { runCli, VitqError } from "../core/errors.ts";
import { DEFAULT_DB, Store } from "../bench/store.ts";

function cell(v: unknown): string {
  if (v === null || v === undefined) return "NULL";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(6);
  if (typeof v === "bigint") return v.toString();
  if (v instanceof Date) return v.toISOString();
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

await runCli(async () => {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      db: { type: "string", default: DEFAULT_DB },
      csv: { type: "boolean", default: false },
    },
  });
  if (positionals.length !== 1) {
    throw new VitqError('usage: deno task sql "select ..." [--db FILE] [--csv]');
  }
  try {
    await Deno.stat(values.db!);
  } catch {
    throw new VitqError(`--db ${values.db}: no such database; run deno task bench first`);
  }
  const store = await Store.open(values.db!);
  try {
    let reader;
    try {
      reader = await store.conn.runAndReadAll(positionals[0]);
    } catch (e) {
      throw new VitqError(`sql: ${(e as Error).message.split("\n")[0]}`);
    }
    const cols = reader.columnNames();
    const rows = reader.getRowsJS().map((r) => r.map(cell));
    if (values.csv) {
      console.log(cols.join(","));
      for (const r of rows) {
        console.log(r.map((x) => (/[,"\n]/.test(x) ? JSON.stringify(x) : x)).join(","));
      }
      return;
    }
    const w = cols.map((c, i) => Math.max(c.length, ...rows.map((r) => r[i].length)));
    console.log(cols.map((c, i) => c.padEnd(w[i])).join("  "));
    console.log(w.map((x) => "-".repeat(x)).join("  "));
    for (const r of rows) console.log(r.map((x, i) => x.padEnd(w[i])).join("  "));
    console.log(`(${rows.length} row${rows.length === 1 ? "" : "s"})`);
  } finally {
    store.close();
  }
});
