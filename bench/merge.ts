/**
 * Merge shard databases into one: runs, id lists, images, FP32 baselines,
 * cells, layers and predictions, plus any other table a shard holds. Merging is
 * idempotent (rows already in the output are not added again) and refuses:
 *
 * - shards of different manifests or commits (unless `acceptMismatch`),
 * - shards whose partitions differ (different shard counts or timings: the
 *   `plan_hash` each shard stored with its run),
 * - the same cell id (or FP32 baseline) with different results, naming it.
 *
 * A cell stored with status `error` in the output is replaced by the same
 * cell's `ok` row from a shard (a rerun shard fixed it); an `ok` row is never
 * replaced.
 *
 * @module
 */
import { VitqError } from "../core/errors.ts";
import { Store } from "./store.ts";

/** Options of a merge. */
export interface MergeOptions {
  /** Accept shards of different manifests or commits. */
  acceptMismatch?: boolean;
}

/** What a merge did. */
export interface MergeSummary {
  /** Cells added to the output. */
  added: number;
  /** Cells already in the output with the same result. */
  same: number;
  /** Error cells of the output replaced by a shard's ok row. */
  replaced: number;
  /** Manifest names of the merged shards, each with the whole plan's cell ids when sharded. */
  manifests: Map<string, string[] | undefined>;
  /** Cells of a sharded plan that no shard has stored with status ok. */
  missing: string[];
}

const KNOWN = ["runs", "id_sets", "images", "fp_baselines", "results", "predictions", "layers"];

function sqlString(s: string): string {
  return `'${s.replaceAll("'", "''")}'`;
}

async function hasPrimaryKey(store: Store, db: string, table: string): Promise<boolean> {
  const rows = await store.query(
    `select count(*)::int as n from duckdb_constraints()
      where database_name = (case when $1 = 'main' then current_database() else $1 end)
        and table_name = $2 and constraint_type = 'PRIMARY KEY'`,
    [db, table],
  );
  return (rows[0].n as number) > 0;
}

/** Per-cell fingerprint of stored predictions (xor of row hashes) and the result columns. */
const FINGERPRINT = (db: string) => `
  select r.cell_id, r.status, r.correct, r.top1,
         (select bit_xor(hash(p.image_idx, p.pred, p.true_rank)) from ${db}.predictions p
           where p.cell_id = r.cell_id) as fp
    from ${db}.results r`;

/**
 * Merge shard database files into `out` (created when absent). Every shard must be
 * an existing vitq database; it is opened read-only.
 */
export async function mergeShards(
  out: string,
  shards: string[],
  opts: MergeOptions = {},
): Promise<MergeSummary> {
  if (shards.length === 0) throw new VitqError("merge: no shard databases given");
  const seen = new Set<string>();
  for (const s of shards) {
    let st: Deno.FileInfo;
    try {
      st = await Deno.stat(s);
    } catch {
      throw new VitqError(`${s}: shard database does not exist`);
    }
    if (!st.isFile) throw new VitqError(`${s}: not a regular file`);
    const real = await Deno.realPath(s);
    if (seen.has(real)) throw new VitqError(`${s}: given twice`);
    seen.add(real);
    try {
      if (real === await Deno.realPath(out)) {
        throw new VitqError(`${s}: is the output database itself`);
      }
    } catch (e) {
      if (e instanceof VitqError) throw e;
    }
  }
  const store = await Store.open(out);
  const summary: MergeSummary = {
    added: 0,
    same: 0,
    replaced: 0,
    manifests: new Map(),
    missing: [],
  };
  try {
    const aliases: string[] = [];
    for (const [i, s] of shards.entries()) {
      const alias = `shard${i}`;
      try {
        await store.exec(`attach ${sqlString(s)} as ${alias} (read_only)`);
      } catch (e) {
        throw new VitqError(
          `${s}: cannot open as a DuckDB database (${(e as Error).message.split("\n")[0]})`,
        );
      }
      aliases.push(alias);
      for (const t of ["runs", "results", "predictions"]) {
        if ((await store.columns(t, alias)).length === 0) {
          throw new VitqError(`${s}: not a vitq database (no ${t} table)`);
        }
      }
    }
    try {
      await checkShards(store, shards, aliases, opts, summary);
      await store.transaction(async () => {
        for (const [i, alias] of aliases.entries()) {
          await mergeOne(store, shards[i], alias, summary);
        }
      });
      // completeness of sharded plans
      const ok = new Set(
        (await store.query(`select cell_id from results where status = 'ok'`)).map((r) =>
          r.cell_id as string
        ),
      );
      for (const cells of summary.manifests.values()) {
        for (const id of cells ?? []) if (!ok.has(id)) summary.missing.push(id);
      }
    } finally {
      for (const alias of aliases) await store.exec(`detach ${alias}`);
    }
  } finally {
    store.close();
  }
  return summary;
}

async function checkShards(
  store: Store,
  shards: string[],
  aliases: string[],
  opts: MergeOptions,
  summary: MergeSummary,
): Promise<void> {
  const first = new Map<string, { value: string; file: string }>();
  const plans = new Map<string, { hash: string; file: string }>();
  for (const [i, alias] of aliases.entries()) {
    const runCols = await store.columns("runs", alias);
    const sharded = runCols.includes("plan_hash");
    const runs = await store.query(
      `select manifest_name, manifest_hash, git_commit${
        sharded ? ", shard, plan_hash, plan_cells" : ""
      } from ${alias}.runs order by started_at`,
    );
    for (const r of runs) {
      const name = r.manifest_name as string;
      if (!opts.acceptMismatch) {
        for (const [field, value] of [["manifest", r.manifest_hash], ["commit", r.git_commit]]) {
          const key = `${field}`;
          const prev = first.get(key);
          const v = String(value ?? "");
          if (prev && prev.value !== v) {
            throw new VitqError(
              `${shards[i]}: ${field} ${v.slice(0, 12) || "(none)"} differs from ${
                prev.value.slice(0, 12) || "(none)"
              } in ${prev.file} (pass --accept-mismatch to merge anyway)`,
            );
          }
          if (!prev) first.set(key, { value: v, file: shards[i] });
        }
      }
      if (sharded && r.plan_hash) {
        const prev = plans.get(name);
        if (prev && prev.hash !== r.plan_hash) {
          throw new VitqError(
            `${
              shards[i]
            }: shard ${r.shard} of ${name} was planned differently from ${prev.file} (different shard count, manifest or --timings database); rerun the shards with the same arguments`,
          );
        }
        plans.set(name, { hash: r.plan_hash as string, file: shards[i] });
        summary.manifests.set(
          name,
          (r.plan_cells as string).split("\n").map((l) => l.slice(0, l.lastIndexOf(":"))),
        );
      } else if (!summary.manifests.has(name)) summary.manifests.set(name, undefined);
    }
  }
}

async function mergeOne(store: Store, file: string, alias: string, summary: MergeSummary) {
  // conflicts: same cell, different result
  const theirs = await store.query(FINGERPRINT(alias));
  const ours = new Map(
    (await store.query(FINGERPRINT("main"))).map((r) => [r.cell_id as string, r]),
  );
  const add: string[] = [];
  const replace: string[] = [];
  for (const t of theirs) {
    const id = t.cell_id as string;
    const o = ours.get(id);
    if (t.status !== "ok") {
      if (!o) add.push(id);
      continue;
    }
    if (!o) add.push(id);
    else if (o.status !== "ok") replace.push(id);
    else if (o.correct !== t.correct || String(o.fp) !== String(t.fp)) {
      throw new VitqError(
        `${file}: cell ${id} has different results than already merged (top-1 ${
          Number(t.top1).toFixed(2)
        } vs ${Number(o.top1).toFixed(2)}${
          o.correct === t.correct ? ", same count, different predictions" : ""
        }); nothing was merged`,
      );
    } else summary.same++;
  }
  const fpConflict = await store.query(
    `select s.model, s.backend, s.correct as a, m.correct as b from ${alias}.fp_baselines s
       join main.fp_baselines m using (model_sha, eval_hash, backend) where s.correct <> m.correct`,
  );
  if (fpConflict.length) {
    const c = fpConflict[0];
    throw new VitqError(
      `${file}: FP32 baseline of ${c.model} (${c.backend}) differs from the one already merged (${c.a} vs ${c.b} correct); nothing was merged`,
    );
  }
  if (replace.length) {
    const list = replace.map(sqlString).join(", ");
    await store.exec(`delete from results where cell_id in (${list})`);
    await store.exec(`delete from layers where cell_id in (${list})`);
    await store.exec(`delete from predictions where cell_id in (${list})`);
  }
  const move = [...add, ...replace];
  summary.added += add.length;
  summary.replaced += replace.length;
  // tables: every table of the shard, known ones first
  const tables = (await store.query(
    `select table_name from duckdb_tables() where database_name = $1 and schema_name = 'main'`,
    [alias],
  )).map((r) => r.table_name as string);
  const order = [
    ...KNOWN.filter((t) => tables.includes(t)),
    ...tables.filter((t) => !KNOWN.includes(t)).sort(),
  ];
  for (const t of order) {
    const mine = await store.columns(t, "main");
    if (mine.length === 0) {
      await store.exec(`create table main.${t} as select * from ${alias}.${t} limit 0`);
    }
    const cols = await store.columns(t, "main");
    const theirCols = new Set(await store.columns(t, alias));
    const shared = cols.filter((c) => theirCols.has(c)).map((c) => `"${c}"`).join(", ");
    if (t === "results" || t === "layers") {
      if (move.length === 0) continue;
      const list = move.map(sqlString).join(", ");
      await store.exec(
        `insert into main.${t} (${shared}) select ${shared} from ${alias}.${t} where cell_id in (${list})`,
      );
    } else if (t === "predictions") {
      // cell predictions of moved cells, and FP32 predictions not merged yet
      const list = move.length ? move.map(sqlString).join(", ") : "''";
      await store.exec(
        `insert into main.predictions (${shared}) select ${shared} from ${alias}.predictions p
          where p.cell_id in (${list})
             or (p.cell_id in (select fp_cell from ${alias}.fp_baselines)
                 and p.cell_id not in (select distinct cell_id from main.predictions))`,
      );
    } else if (await hasPrimaryKey(store, "main", t)) {
      await store.exec(
        `insert or ignore into main.${t} (${shared}) select ${shared} from ${alias}.${t}`,
      );
    } else {
      await store.exec(
        `insert into main.${t} (${shared}) select ${shared} from ${alias}.${t}
          except all select ${shared} from main.${t}`,
      );
    }
  }
}
