/**
 * `deno task tables [manifest-name ...] [--db FILE] [--out DIR]`
 *
 * Regenerates the paper-style tables of every manifest stored in the database
 * (or of the named ones) under results/tables/<name>/.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { runCli, VitqError } from "../core/errors.ts";
import { DEFAULT_DB, Store } from "../core/store.ts";
import { gatherTable, writeTables } from "../core/tables.ts";

await runCli(async () => {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      db: { type: "string", default: DEFAULT_DB },
      out: { type: "string", default: "results/tables" },
    },
  });
  try {
    await Deno.stat(values.db!);
  } catch {
    throw new VitqError(`--db ${values.db}: no such database; run deno task bench first`);
  }
  const store = await Store.open(values.db!);
  try {
    const names = positionals.length ? positionals : (await store.query(
      `select distinct manifest_name from results order by 1`,
    )).map((r) => r.manifest_name as string);
    for (const name of names) {
      const md = await writeTables(await gatherTable(store, name), `${values.out}/${name}`);
      console.log(md);
    }
  } finally {
    store.close();
  }
});
