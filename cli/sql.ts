/**
 * `deno task sql "select ..." [--db FILE] [--csv]`: run a query on the result
 * database and print the rows as an aligned table (or CSV).
 *
 * The database is opened read-only (statements that write, and file access from
 * SQL such as COPY, ATTACH or read_csv, are refused), it can be read while a
 * bench writes to it, and results of any size are streamed chunk by chunk.
 *
 * @module
 */
import { runCli, VitqError } from "../core/errors.ts";
import { parseCli } from "./args.ts";
import { DEFAULT_DB, Store } from "../bench/store.ts";

const USAGE = 'usage: deno task sql "select ..." [--db FILE] [--csv]';
/** Rows read before the column widths of table mode are fixed. */
const WIDTH_ROWS = 1000;

function cell(v: unknown): string {
  if (v === null || v === undefined) return "NULL";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(6);
  if (typeof v === "bigint") return v.toString();
  if (v instanceof Date) return v.toISOString();
  if (typeof v === "object") {
    return JSON.stringify(v, (_, x) => (typeof x === "bigint" ? x.toString() : x));
  }
  return String(v);
}

const enc = new TextEncoder();
/** Write to stdout; false when the reader went away (e.g. `| head`). */
async function out(text: string): Promise<boolean> {
  try {
    const b = enc.encode(text);
    let off = 0;
    while (off < b.length) off += await Deno.stdout.write(b.subarray(off));
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.BrokenPipe) return false;
    throw e;
  }
}

await runCli(async () => {
  const parsed = parseCli(USAGE, {
    db: { type: "string", default: DEFAULT_DB },
    csv: { type: "boolean", default: false },
  }, { help: false });
  const { values, positionals } = parsed;
  if (positionals.length !== 1 || positionals[0].trim() === "") throw new VitqError(USAGE);
  const store = await Store.open(values.db!, { readOnly: true });
  try {
    let result;
    try {
      result = await store.conn.stream(positionals[0]);
    } catch (e) {
      const msg = (e as Error).message.split("\n")[0];
      const why = /read-only mode|file system operations are disabled|configuration has been locked/
          .test(msg)
        ? " (the sql command only reads: the database is opened read-only, without file access)"
        : "";
      throw new VitqError(`sql: ${msg}${why}`);
    }
    const cols = result.columnNames();
    const rows = result.yieldRowsJs();
    let n = 0;
    if (values.csv) {
      const esc = (x: string) => (/[,"\n\r]/.test(x) ? `"${x.replaceAll('"', '""')}"` : x);
      if (!await out(cols.map(esc).join(",") + "\n")) return;
      for await (const chunk of rows) {
        n += chunk.length;
        if (!await out(chunk.map((r) => r.map((v) => esc(cell(v))).join(",") + "\n").join(""))) {
          return;
        }
      }
      return;
    }
    // table mode: widths from the first rows, then stream the rest padded to them
    const head: string[][] = [];
    const it = rows[Symbol.asyncIterator]();
    let done = false;
    while (head.length < WIDTH_ROWS) {
      const r = await it.next();
      if (r.done) {
        done = true;
        break;
      }
      for (const row of r.value) head.push(row.map(cell));
    }
    const w = cols.map((c) => c.length);
    for (const r of head) for (let i = 0; i < r.length; i++) w[i] = Math.max(w[i], r[i].length);
    const line = (r: string[]) => r.map((x, i) => x.padEnd(w[i])).join("  ") + "\n";
    let text = line(cols) + w.map((x) => "-".repeat(x)).join("  ") + "\n";
    for (const r of head) text += line(r);
    n = head.length;
    if (!await out(text)) return;
    while (!done) {
      const r = await it.next();
      if (r.done) break;
      n += r.value.length;
      if (!await out(r.value.map((row) => line(row.map(cell))).join(""))) return;
    }
    await out(`(${n} row${n === 1 ? "" : "s"})\n`);
  } finally {
    store.close();
  }
});
