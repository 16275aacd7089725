/**
 * `deno task report [NAME ...] [--db FILE] [--out DIR] [--cell ID] [--bits W/A]`
 *
 * Writes the HTML report of each named manifest (default: every manifest stored
 * in the database) to `<out>/<name>.html`: one self-contained file with charts
 * rendered to SVG, the tables and the provenance of the runs.
 *
 * @module
 */
import { runCli, VitqError } from "../core/errors.ts";
import { parseCli } from "./args.ts";
import { DEFAULT_DB, Store } from "../bench/store.ts";
import { REPORT_DIR, writeReport } from "../bench/report.ts";
import type { Bits } from "../methods/types.ts";

const USAGE =
  "usage: deno task report [NAME ...] [--db results/vitq.duckdb] [--out results/report] [--cell ID] [--bits W/A]";

await runCli(async () => {
  const parsed = parseCli(USAGE, {
    db: { type: "string", default: DEFAULT_DB },
    out: { type: "string", default: REPORT_DIR },
    cell: { type: "string" },
    bits: { type: "string" },
  });
  if (!parsed) return;
  const { values, positionals } = parsed;
  let bits: Bits | undefined;
  if (values.bits !== undefined) {
    const m = values.bits.match(/^W?(\d+)[A/](\d+)$/i);
    if (!m) throw new VitqError(`--bits: expected W/A such as 4/4, got "${values.bits}"`);
    bits = { w: Number(m[1]), a: Number(m[2]) };
  }
  try {
    await Deno.stat(values.db!);
  } catch {
    throw new VitqError(`--db ${values.db}: no such database; run deno task bench first`);
  }
  const store = await Store.open(values.db!, { readOnly: true });
  try {
    const stored = (await store.query(
      `select distinct manifest_name from results where status = 'ok' order by 1`,
    )).map((r) => r.manifest_name as string);
    const names = positionals.length ? positionals : stored;
    if (names.length === 0) throw new VitqError(`--db ${values.db}: no stored results`);
    for (const name of names) {
      if (!stored.includes(name)) {
        throw new VitqError(
          `${name}: no results for this manifest name in ${values.db} (has ${
            stored.join(", ") || "none"
          })`,
        );
      }
      const path = await writeReport(store, name, values.out!, { cell: values.cell, bits });
      console.log(`report: ${path}`);
    }
  } finally {
    store.close();
  }
});
