/**
 * Deterministic shards of a bench plan: `--shard i/n` runs the i-th (0-based) of
 * n disjoint parts of a manifest's cells. Every shard re-derives the same
 * partition from the plan alone (and, when given, the same timings database),
 * so no coordinator and no shared state is needed: a Slurm array task, a
 * Kubernetes Indexed Job pod or a CI matrix job passes its index and the count.
 *
 * Partition: cells are sorted by estimated cost (descending, ties by cell id)
 * and each goes to the currently lightest shard (ties by lowest index): the
 * longest-processing-time rule, within 4/3 of the best balance. Cells of one
 * model and calibration seed are not kept together on purpose: FP32 baselines
 * are cheap next to calibration, and each shard computes the ones it needs.
 *
 * Cost estimate of a cell: model file bytes x method weight x (evaluation images
 * + 10 x calibration images), in arbitrary units. With a timings database
 * (`--timings FILE`, for example the merged database of an earlier run), a cell
 * whose method, label, model and bits were timed there costs its median stored
 * seconds (calibration + evaluation), and the other cells' estimates are scaled
 * by the median ratio of seconds to estimate over the timed ones, so both kinds
 * are in the same unit.
 *
 * @module
 */
import { VitqError } from "../core/errors.ts";
import { sha256Hex } from "../core/hash.ts";
import type { Cell, Plan } from "./runner.ts";
import type { Store } from "./store.ts";

/** Which shard of how many (index 0-based). */
export interface ShardSpec {
  index: number;
  count: number;
}

/**
 * Relative cost of one cell per method, measured on the shipped models (calibration plus
 * evaluation seconds over minmax's); unknown methods weigh 10.
 */
export const METHOD_WEIGHT: Readonly<Record<string, number>> = Object.freeze({
  minmax: 1,
  percentile: 2,
  ivit: 4,
  repq: 3,
  baseptq: 10,
  ptq4vit: 25,
  tsptq: 30,
  mptq: 40,
  adfq: 60,
});

/** Largest shard count accepted (a plan with fewer cells leaves shards empty). */
export const MAX_SHARDS = 10_000;

/** Parse `i/n` (0 <= i < n); `what` names the flag or variable in errors. */
export function parseShard(text: string, what = "--shard"): ShardSpec {
  const m = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(text);
  if (!m) throw new VitqError(`${what}: "${text}" is not i/n (0-based index i of n shards)`);
  const index = Number(m[1]), count = Number(m[2]);
  if (count < 1 || count > MAX_SHARDS) {
    throw new VitqError(`${what}: shard count ${count} is outside 1..${MAX_SHARDS}`);
  }
  if (index >= count) {
    throw new VitqError(`${what}: shard index ${index} must be below the count ${count} (0-based)`);
  }
  return { index, count };
}

/** Stored seconds per (method, label, model, bits) from an earlier database. */
export type Timings = Map<string, number>;

function timingKey(c: Pick<Cell, "method" | "label" | "model" | "bits">): string {
  return `${c.method}\u0000${c.label}\u0000${c.model}\u0000${c.bits.w}/${c.bits.a}`;
}

/** Median calibration + evaluation seconds of every timed (method, label, model, bits). */
export async function loadTimings(store: Store): Promise<Timings> {
  const rows = await store.query(
    `select method, label, model, w_bits, a_bits,
            median(coalesce(calib_seconds, 0) + coalesce(eval_seconds, 0)) as s
       from results where status = 'ok' group by all order by all`,
  );
  const t: Timings = new Map();
  for (const r of rows) {
    t.set(
      timingKey({
        method: r.method as string,
        label: r.label as string,
        model: r.model as string,
        bits: { w: Number(r.w_bits), a: Number(r.a_bits) },
      }),
      Number(r.s),
    );
  }
  return t;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

/** Estimated cost of every cell of a plan (same order as `plan.cells`). */
export function cellCosts(plan: Plan, timings?: Timings): number[] {
  const bytes = new Map(plan.models.map((m) => [m.model.name, m.bytes.length]));
  const evalN = plan.evalIds.length;
  const estimate = plan.cells.map((c) =>
    (bytes.get(c.model) ?? 1) * (METHOD_WEIGHT[c.method] ?? 10) *
    (evalN + 10 * c.calibIds.length) / 1e9
  );
  if (!timings || timings.size === 0) return estimate;
  const timed = plan.cells.map((c) => timings.get(timingKey(c)));
  const ratios = timed.flatMap((
    s,
    i,
  ) => (s !== undefined && estimate[i] > 0 ? [s / estimate[i]] : []));
  const scale = ratios.length ? median(ratios) : 1;
  return plan.cells.map((_, i) => timed[i] ?? estimate[i] * scale);
}

/** Shard index of every cell of the plan (same order as `plan.cells`), by the LPT rule. */
export function assignShards(cells: Cell[], costs: number[], count: number): number[] {
  const order = cells.map((_, i) => i).sort((a, b) =>
    costs[b] - costs[a] || (cells[a].id < cells[b].id ? -1 : cells[a].id > cells[b].id ? 1 : 0)
  );
  const load = new Float64Array(count);
  const out = new Array<number>(cells.length);
  for (const i of order) {
    let best = 0;
    for (let s = 1; s < count; s++) if (load[s] < load[best]) best = s;
    out[i] = best;
    load[best] += costs[i];
  }
  return out;
}

/** What a shard records in its `runs` row, so that merge can check the shards fit together. */
export interface ShardRecord {
  /** `i/n`. */
  shard: string;
  /** SHA-256 of the shard count and `plan_cells`. */
  plan_hash: string;
  /** Every cell id of the whole plan in plan order with its shard index, `id:i` per line. */
  plan_cells: string;
}

/**
 * Restrict a plan to one shard. Returns the plan with only that shard's cells and
 * the record to store with the run.
 */
export async function selectShard(
  plan: Plan,
  spec: ShardSpec,
  timings?: Timings,
): Promise<{ plan: Plan; record: ShardRecord; costs: number[] }> {
  const costs = cellCosts(plan, timings);
  const assigned = assignShards(plan.cells, costs, spec.count);
  // in plan order (the manifest's), so that tables of the merged run keep it
  const lines = plan.cells.map((c, i) => `${c.id}:${assigned[i]}`);
  const planCells = lines.join("\n");
  const record: ShardRecord = {
    shard: `${spec.index}/${spec.count}`,
    plan_hash: await sha256Hex(`${spec.count}\n${planCells}`),
    plan_cells: planCells,
  };
  const cells = plan.cells.filter((_, i) => assigned[i] === spec.index);
  return {
    plan: { ...plan, cells },
    record,
    costs: plan.cells.flatMap((_, i) => (assigned[i] === spec.index ? [costs[i]] : [])),
  };
}
