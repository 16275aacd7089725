/**
 * `deno task export-parquet [--db results/vitq.duckdb] [--out results/parquet]`
 *
 * Writes every table of a result database (for example one merged from shards)
 * as `OUT/<table>.parquet`, for analysis outside vitq (pandas, polars, Spark,
 * DuckDB itself). The database is read, never written.
 *
 * @module
 */
import { DuckDBInstance } from "@duckdb/node-api";
import { runCli, VitqError } from "../core/errors.ts";
import { parseCli } from "./args.ts";
import { DEFAULT_DB } from "../bench/store.ts";

const USAGE = "usage: deno task export-parquet [--db results/vitq.duckdb] [--out results/parquet]";

await runCli(async () => {
  const parsed = parseCli(USAGE, {
    db: { type: "string", default: DEFAULT_DB },
    out: { type: "string", default: "results/parquet" },
  }, { positionals: false });
  if (!parsed) return;
  const { values } = parsed;
  if (!values.db) throw new VitqError("--db: empty path");
  if (!values.out) throw new VitqError("--out: empty path");
  try {
    if (!(await Deno.stat(values.db)).isFile) throw new Error("not a regular file");
  } catch (e) {
    throw new VitqError(`--db ${values.db}: ${(e as Error).message.split("\n")[0]}`);
  }
  let instance: DuckDBInstance;
  try {
    instance = await DuckDBInstance.create(values.db, { access_mode: "READ_ONLY" });
  } catch (e) {
    throw new VitqError(`--db ${values.db}: cannot open (${(e as Error).message.split("\n")[0]})`);
  }
  const conn = await instance.connect();
  try {
    const tables = (await conn.runAndReadAll(
      `select table_name from duckdb_tables() where schema_name = 'main' order by 1`,
    )).getRowObjectsJS().map((r) => r.table_name as string);
    if (!tables.includes("results")) throw new VitqError(`--db ${values.db}: not a vitq database`);
    await Deno.mkdir(values.out, { recursive: true });
    for (const t of tables) {
      const file = `${values.out}/${t}.parquet`.replaceAll("'", "''");
      await conn.run(`copy (select * from "${t}") to '${file}' (format parquet)`);
      console.log(`${values.out}/${t}.parquet`);
    }
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
});
