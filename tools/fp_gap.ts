/**
 * Top-1 gap of every stored cell of a manifest to its FP32 baseline on the same
 * images, with the 95% paired-bootstrap interval the tables use (1,000
 * resamples, seed 0) and the exact McNemar p-value: what a claim such as "within
 * 0.5 points of FP32" is checked against.
 *
 * Usage: deno run -A tools/fp_gap.ts --db FILE MANIFEST_NAME
 *
 * @module
 */
import { parseArgs } from "node:util";
import { runCli, VitqError } from "../core/errors.ts";
import { Store } from "../bench/store.ts";
import { mcnemarExact, pairedBootstrap, pairedCounts } from "../bench/stats.ts";
import { BOOTSTRAP } from "../bench/tables.ts";

await runCli(async () => {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { db: { type: "string" } },
  });
  if (!values.db || positionals.length !== 1) {
    throw new VitqError("usage: deno run -A tools/fp_gap.ts --db FILE MANIFEST_NAME");
  }
  const store = await Store.open(values.db, { readOnly: true });
  try {
    const rows = await store.query(
      `select cell_id, fp_cell, label, model, w_bits, a_bits, top1, fp_top1, calib_seconds
         from results where manifest_name = $1 and status = 'ok'
        order by model, w_bits desc, label`,
      [positionals[0]],
    );
    if (rows.length === 0) {
      throw new VitqError(`${positionals[0]}: no stored cells in ${values.db}`);
    }
    const ids = rows.flatMap((r) => [r.cell_id as string, r.fp_cell as string]);
    const correct = await store.correctness([...new Set(ids)]);
    console.log(
      "| model | bits | method | Top-1 | FP32 | Top-1 - FP32 | 95% CI | McNemar p | calib s |",
    );
    console.log("|---|---|---|---:|---:|---:|---|---:|---:|");
    for (const r of rows) {
      const q = correct.get(r.cell_id as string), f = correct.get(r.fp_cell as string);
      if (!q || !f) continue;
      const ci = pairedBootstrap(q, f, BOOTSTRAP);
      const k = pairedCounts(q, f);
      const p = mcnemarExact(k.onlyA, k.onlyB);
      console.log(
        `| ${r.model} | W${r.w_bits}A${r.a_bits} | ${r.label} | ${
          (r.top1 as number).toFixed(2)
        } | ${(r.fp_top1 as number).toFixed(2)} | ${ci.diff.toFixed(2)} | [${ci.lo.toFixed(2)}, ${
          ci.hi.toFixed(2)
        }] | ${p < 1e-4 ? p.toExponential(1) : p.toFixed(4)} | ${
          (r.calib_seconds as number).toFixed(1)
        } |`,
      );
    }
  } finally {
    store.close();
  }
});
