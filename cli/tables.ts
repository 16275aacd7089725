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
import { runCli, VitqError } from "../core/errors.ts";
import { parseCli } from "./args.ts";
import { DEFAULT_DB, Store } from "../bench/store.ts";
import { gatherTable, renderPairs, writeTables } from "../bench/tables.ts";

const USAGE = "usage: deno task tables [name ...] [--db FILE] [--out DIR]";

await runCli(async () => {
  const parsed = parseCli(USAGE, {
    db: { type: "string", default: DEFAULT_DB },
    out: { type: "string", default: "results/tables" },
    pairs: { type: "boolean", default: false },
    bits: { type: "string" },
    model: { type: "string" },
  }, { help: false });
  const { values, positionals } = parsed;
  if (values.out!.trim() === "") {
    throw new VitqError("--out: empty path; name a folder such as results/tables");
  }
  // read-only: never changes the database, and works while a bench writes to it
  const store = await Store.open(values.db!, { readOnly: true });
  try {
    const stored = (await store.query(
      `select distinct manifest_name from results where status = 'ok' order by 1`,
    )).map((r) => r.manifest_name as string);
    if (stored.length === 0) {
      throw new VitqError(`--db ${values.db}: no results yet; nothing to write`);
    }
    // a name with no results would overwrite its tables with empty ones: refuse it
    for (const name of positionals) {
      if (!stored.includes(name)) {
        throw new VitqError(
          `${name}: no results for this manifest in ${values.db} (it has ${
            stored.slice(0, 10).join(", ")
          }${stored.length > 10 ? ", ..." : ""})`,
        );
      }
    }
    const names = positionals.length ? positionals : stored;
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
