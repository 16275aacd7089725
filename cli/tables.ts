/**
 * `deno task tables [manifest-name ...] [--db FILE] [--out DIR]`
 * `deno task tables --pairs --bits 4/4 --model vit_fmnist [manifest-name]`
 *
 * Regenerates the paper-style tables of every manifest stored in the database
 * (or of the named ones) under results/tables/<name>/, or prints the pairwise
 * difference table (with paired-bootstrap intervals and McNemar p-values) of
 * one bit setting and model.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { runCli, VitqError } from "../core/errors.ts";
import { DEFAULT_DB, Store } from "../bench/store.ts";
import { gatherTable, renderPairs, writeTables } from "../bench/tables.ts";

await runCli(async () => {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      db: { type: "string", default: DEFAULT_DB },
      out: { type: "string", default: "results/tables" },
      pairs: { type: "boolean", default: false },
      bits: { type: "string" },
      model: { type: "string" },
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
    if (values.pairs) {
      const m = (values.bits ?? "").match(/^W?(\d+)[A/](\d+)$/i);
      if (!m) throw new VitqError(`--bits: expected W/A such as 4/4, got "${values.bits ?? ""}"`);
      const [w, a] = [Number(m[1]), Number(m[2])];
      for (const name of names) {
        const d = await gatherTable(store, name);
        const model = values.model ?? d.models[0];
        if (!d.models.includes(model)) {
          throw new VitqError(
            `--model: ${model} has no results in manifest ${name} (has ${d.models.join(", ")})`,
          );
        }
        if (!d.bits.some((b) => b.w === w && b.a === a)) continue;
        console.log(`# ${name}\n`);
        console.log(renderPairs(d, w, a, model));
      }
      return;
    }
    for (const name of names) {
      const md = await writeTables(await gatherTable(store, name), `${values.out}/${name}`);
      console.log(md);
    }
  } finally {
    store.close();
  }
});
