/**
 * `deno task merge OUT.duckdb SHARD.duckdb... [--accept-mismatch] [--tables DIR] [--no-tables]`
 *
 * Merges shard databases (from `bench --shard i/n`) into OUT (created when
 * absent; merging again changes nothing), then writes the tables of every merged
 * manifest from the merged file. Refuses shards of different manifests or commits
 * unless `--accept-mismatch`, and any cell stored with different results in two
 * shards (see `bench/merge.ts`).
 *
 * @module
 */
import { runCli, VitqError } from "../core/errors.ts";
import { parseCli } from "./args.ts";
import { mergeShards } from "../bench/merge.ts";
import { Store } from "../bench/store.ts";
import { gatherTable, writeTables } from "../bench/tables.ts";

const USAGE =
  "usage: deno task merge OUT.duckdb SHARD.duckdb... [--accept-mismatch] [--tables DIR] [--no-tables]";

await runCli(async () => {
  const parsed = parseCli(USAGE, {
    "accept-mismatch": { type: "boolean", default: false },
    tables: { type: "string", default: "results/tables" },
    "no-tables": { type: "boolean", default: false },
  });
  if (!parsed) return;
  const { values, positionals } = parsed;
  if (positionals.length < 2) throw new VitqError(USAGE);
  if (!values.tables) throw new VitqError("--tables: empty path");
  const [out, ...shards] = positionals;
  const s = await mergeShards(out, shards, { acceptMismatch: values["accept-mismatch"] });
  console.log(
    `merged ${shards.length} shard(s) into ${out}: ${s.added} cells added, ${s.same} already there with the same results, ${s.replaced} error cells replaced`,
  );
  if (s.missing.length) {
    console.log(
      `incomplete: ${s.missing.length} cell(s) of the sharded plan are in no shard yet (first: ${
        s.missing[0]
      }); rerun the shard that holds them and merge again`,
    );
  }
  if (values["no-tables"]) return;
  const store = await Store.open(out);
  try {
    for (const [name, cells] of [...s.manifests].sort()) {
      const data = await gatherTable(store, name, cells);
      await writeTables(data, `${values.tables}/${name}`);
      console.log(`tables of ${name} in ${values.tables}/${name}/`);
    }
  } finally {
    store.close();
  }
  if (s.missing.length) Deno.exitCode = 1;
});
