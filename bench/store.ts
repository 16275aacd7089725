/**
 * The DuckDB result store (`results/vitq.duckdb` by default). One row per cell in
 * `results`, per-tensor records in `layers`, the FP32 baseline per model and
 * evaluation set in `fp_baselines`, exact image-id lists in `id_sets`, and one
 * row per bench invocation in `runs`. Each cell is written in one transaction.
 *
 * @module
 */
import {
  type DuckDBConnection,
  DuckDBInstance,
  type DuckDBValue,
  listValue,
} from "@duckdb/node-api";
import { VitqError } from "../core/errors.ts";
import { faultPoint } from "../core/fault.ts";
import type { LayerRecord } from "../methods/types.ts";

/** Default database path, relative to the working directory. */
export const DEFAULT_DB = "results/vitq.duckdb";

const SCHEMA = `
create table if not exists runs (
  run_id varchar primary key, started_at timestamp, finished_at timestamp,
  manifest_path varchar, manifest_name varchar, manifest_hash varchar, manifest_json varchar,
  git_commit varchar, vitq_version varchar, deno_version varchar, ort_version varchar,
  duckdb_version varchar, cpu varchar, cpu_flags varchar, cores integer, threads integer,
  backend varchar, cells_run integer, cells_skipped integer, cells_failed integer);
alter table runs add column if not exists shard varchar;
alter table runs add column if not exists plan_hash varchar;
alter table runs add column if not exists plan_cells varchar;
create table if not exists id_sets (
  hash varchar primary key, kind varchar, dataset varchar, split varchar, n integer,
  ids varchar);
create table if not exists fp_baselines (
  model varchar, model_sha varchar, dataset varchar, eval_hash varchar, backend varchar,
  n integer, correct integer, top1 double, top5 double, eval_seconds double,
  ips double, lat_med_ms double, lat_p90_ms double, batch_size integer, threads integer,
  fp_cell varchar, run_id varchar, created_at timestamp,
  primary key (model_sha, eval_hash, backend));
create table if not exists outlier_stats (
  model varchar, model_sha varchar, dataset varchar, calib_hash varchar, calib_size integer,
  calib_seed integer, calib_split varchar, site varchar, role varchar, block integer,
  value varchar, channels integer, max_range double, max_channel integer, median_range double,
  range_ratio double, abs_max double, tau double, above bigint, n bigint, share_above double,
  created_at timestamp, primary key (model_sha, calib_hash, site));
create table if not exists results (
  cell_id varchar primary key, run_id varchar, manifest_name varchar,
  method varchar, label varchar, options varchar, paper varchar, approximations varchar,
  model varchar, model_sha varchar, w_bits integer, a_bits integer,
  dataset varchar, split varchar, subset_rule varchar, subset_size integer, eval_hash varchar,
  calib_size integer, calib_seed integer, calib_split varchar, calib_hash varchar,
  top1 double, top5 double, correct integer, fp_top1 double,
  calib_seconds double, eval_seconds double,
  fp_ips double, fp_lat_med_ms double, fp_lat_p90_ms double,
  sim_ips double, sim_lat_med_ms double, sim_lat_p90_ms double, timed_graph varchar,
  threads integer, batch_size integer, backend varchar, model_bytes bigint, fp_cell varchar,
  status varchar, error varchar, notes varchar, created_at timestamp);
alter table results add column if not exists deploy_top1 double;
alter table results add column if not exists deploy_correct integer;
alter table results add column if not exists deploy_kind varchar;
alter table results add column if not exists deploy_bytes bigint;
alter table results add column if not exists deploy_ips double;
alter table results add column if not exists deploy_lat_med_ms double;
alter table results add column if not exists deploy_lat_p90_ms double;
alter table results add column if not exists int_sites varchar;
alter table results add column if not exists int_mac_share double;
alter table results add column if not exists fused_ops varchar;
alter table results add column if not exists saved_path varchar;
alter table results add column if not exists speed_load double;
alter table results add column if not exists sim_ratio double;
alter table results add column if not exists sim_ratio_lo double;
alter table results add column if not exists sim_ratio_hi double;
alter table results add column if not exists deploy_ratio double;
alter table results add column if not exists deploy_ratio_lo double;
alter table results add column if not exists deploy_ratio_hi double;
create table if not exists images (
  eval_hash varchar, image_idx integer, image_id varchar, label smallint,
  primary key (eval_hash, image_idx));
create table if not exists predictions (
  cell_id varchar, image_idx integer, pred smallint, true_rank smallint);
create or replace view flips as
  select r.cell_id, r.manifest_name, r.label, r.method, r.model, r.w_bits, r.a_bits,
         r.calib_seed, count(*)::integer as n,
         sum(case when p.pred <> f.pred then 1 else 0 end)::integer as flipped,
         avg(case when p.pred <> f.pred then 1.0 else 0.0 end) as flip_rate
    from results r
    join predictions p on p.cell_id = r.cell_id
    join predictions f on f.cell_id = r.fp_cell and f.image_idx = p.image_idx
   where r.status = 'ok'
   group by all;
create or replace view pairwise as
  select a.cell_id as cell_a, b.cell_id as cell_b, a.model, a.w_bits, a.a_bits,
         a.calib_seed, a.label as label_a, b.label as label_b,
         a.manifest_name as manifest_a, b.manifest_name as manifest_b, count(*)::integer as n,
         sum(case when pa.true_rank = 0 and pb.true_rank = 0 then 1 else 0 end)::integer as both_correct,
         sum(case when pa.true_rank = 0 and pb.true_rank <> 0 then 1 else 0 end)::integer as only_a,
         sum(case when pa.true_rank <> 0 and pb.true_rank = 0 then 1 else 0 end)::integer as only_b,
         100.0 * (only_a - only_b) / n as diff_points,
         avg(case when pa.pred <> pb.pred then 1.0 else 0.0 end) as flip_rate
    from results a
    join results b on a.model_sha = b.model_sha and a.eval_hash = b.eval_hash
     and a.w_bits = b.w_bits and a.a_bits = b.a_bits and a.calib_hash = b.calib_hash
     and a.cell_id <> b.cell_id and a.status = 'ok' and b.status = 'ok'
    join predictions pa on pa.cell_id = a.cell_id
    join predictions pb on pb.cell_id = b.cell_id and pb.image_idx = pa.image_idx
   group by all;
create table if not exists layers (
  cell_id varchar, site varchar, kind varchar, role varchar, block integer, tensor varchar,
  bits integer, scale double, quantizer varchar, sqnr_db double);
alter table layers add column if not exists elements bigint;
alter table results add column if not exists mixed varchar;
alter table results add column if not exists w_bits_avg double;
alter table results add column if not exists a_bits_avg double;
alter table results add column if not exists packed_bytes bigint;
`;

/**
 * What a cell achieved, from its layer records: the size-weighted average bits
 * of its quantized weights (weighted by element count) and of its quantized
 * activations (weighted by elements per image), and the packed size in bytes of
 * its quantized weights (each tensor's bits x elements, rounded up to whole
 * bytes; FP parameters and quantizer steps are not counted). Null where the cell
 * has no such tensor, or where a record has no element count. A single-precision
 * cell's averages equal its bits.
 */
export function achievedBits(
  layers: Pick<LayerRecord, "tensor" | "bits" | "elements">[],
): { wBitsAvg: number | null; aBitsAvg: number | null; packedBytes: number | null } {
  let wb = 0, we = 0, ab = 0, ae = 0, bytes = 0;
  for (const l of layers) {
    const n = l.elements;
    // a record without an element count leaves the averages unknown
    if (!(n > 0)) return { wBitsAvg: null, aBitsAvg: null, packedBytes: null };
    if (l.tensor === "weight") {
      wb += l.bits * n;
      we += n;
      bytes += Math.ceil((l.bits * n) / 8);
    } else {
      ab += l.bits * n;
      ae += n;
    }
  }
  return {
    wBitsAvg: we ? wb / we : null,
    aBitsAvg: ae ? ab / ae : null,
    packedBytes: we ? bytes : null,
  };
}

/** A result row as the runner writes it. */
export interface ResultRow {
  cell_id: string;
  run_id: string;
  manifest_name: string;
  method: string;
  label: string;
  options: string;
  paper: string;
  approximations: string;
  model: string;
  model_sha: string;
  w_bits: number;
  a_bits: number;
  dataset: string;
  split: string;
  subset_rule: string;
  subset_size: number;
  eval_hash: string;
  calib_size: number;
  calib_seed: number;
  calib_split: string;
  calib_hash: string;
  top1: number | null;
  top5: number | null;
  correct: number | null;
  fp_top1: number | null;
  calib_seconds: number | null;
  eval_seconds: number | null;
  fp_ips: number | null;
  fp_lat_med_ms: number | null;
  fp_lat_p90_ms: number | null;
  sim_ips: number | null;
  sim_lat_med_ms: number | null;
  sim_lat_p90_ms: number | null;
  timed_graph: string;
  threads: number;
  batch_size: number;
  backend: string;
  model_bytes: number | null;
  /** Mixed-precision candidates, comma-separated (`4,5,6,8`); null for single precision. */
  mixed?: string | null;
  fp_cell: string;
  status: "ok" | "error";
  error: string | null;
  notes: string | null;
  /** Deploy graph (QDQ) of the cell, when the method returns one: see `bench/deploy.ts`. */
  deploy_top1?: number | null;
  deploy_correct?: number | null;
  deploy_kind?: string | null;
  deploy_bytes?: number | null;
  deploy_ips?: number | null;
  deploy_lat_med_ms?: number | null;
  deploy_lat_p90_ms?: number | null;
  /** Sites whose matmul/conv runs on integer codes, comma-separated. */
  int_sites?: string | null;
  /** Share of the linear/matmul multiply-accumulates those sites hold. */
  int_mac_share?: number | null;
  /** Fused integer kernels in ONNX Runtime's optimized deploy graph (`Op xN, ...`). */
  fused_ops?: string | null;
  /** Where `--save` wrote the cell's model. */
  saved_path?: string | null;
  /** 1-minute load average while the cell's speed was measured (see `Speed.load`). */
  speed_load?: number | null;
  /**
   * Speed-up of the timed (fake-quant or integer-only) graph over FP32, paired per
   * interleaved round (`pairedSpeedup` in bench/speed.ts): the median over rounds of
   * FP32's batch time over the graph's; `_lo`/`_hi` its 95 % interval (null below 6
   * repetitions).
   */
  sim_ratio?: number | null;
  sim_ratio_lo?: number | null;
  sim_ratio_hi?: number | null;
  /** The same for the deploy graph. */
  deploy_ratio?: number | null;
  deploy_ratio_lo?: number | null;
  deploy_ratio_hi?: number | null;
}

/** FP32 baseline of one model on one evaluation set. */
export interface FpRow {
  model: string;
  model_sha: string;
  dataset: string;
  eval_hash: string;
  backend: string;
  n: number;
  correct: number;
  top1: number;
  top5: number;
  eval_seconds: number;
  ips: number;
  lat_med_ms: number;
  lat_p90_ms: number;
  batch_size: number;
  threads: number;
  fp_cell: string;
  run_id: string;
}

/** Outlier statistics of one linear layer's input on a calibration set (`deno task outliers`). */
export interface OutlierStatsRow {
  model: string;
  model_sha: string;
  dataset: string;
  calib_hash: string;
  calib_size: number;
  calib_seed: number;
  calib_split: string;
  site: string;
  role: string;
  block: number;
  value: string;
  channels: number;
  max_range: number;
  max_channel: number;
  median_range: number;
  /** max_range / median_range. */
  range_ratio: number;
  abs_max: number;
  tau: number;
  above: number;
  n: number;
  /** above / n. */
  share_above: number;
}

/** Per-image predictions of one cell (or of an FP32 baseline). */
export interface Predictions {
  preds: Int32Array;
  trueRank: Int32Array;
}

function listOf(xs: string[]): DuckDBValue {
  return listValue(xs);
}

function placeholders(n: number): string {
  return Array.from({ length: n }, (_, i) => `$${i + 1}`).join(", ");
}

/** Tables every vitq database has; one missing means the file was damaged. */
const CORE_TABLES = [
  "runs",
  "id_sets",
  "fp_baselines",
  "results",
  "images",
  "predictions",
  "layers",
];

/** How {@link Store.open} opens a database. */
export interface OpenOptions {
  /**
   * Read-only: the file must be a vitq database already; nothing is written to it
   * (no schema, no checkpoint), statements that write are refused, and so is any
   * file access from SQL (COPY, ATTACH, read_csv, ...). Default false.
   */
  readOnly?: boolean;
  /**
   * Longest wait, in seconds, for a lock held by another process (default 60
   * read-only, 600 writing). A writing store holds the lock only while it writes.
   */
  lockWaitSeconds?: number;
  /**
   * Writing only: open the file for each operation (a query, a cell's
   * transaction) and release it right after, so that other processes can read
   * finished results meanwhile (the bench does this). Default false: the store
   * holds the file until {@link Store.close} (needed e.g. for ATTACH).
   */
  releaseBetweenOperations?: boolean;
}

/**
 * Refuse database paths that would keep nothing (`""`, `:memory:`) or reach
 * outside the file system (`md:`); `flag` names the option in the error.
 */
export function checkDbPath(path: string, flag = "--db"): void {
  if (path.trim() === "") {
    throw new VitqError(`${flag}: empty path; name a database file such as ${DEFAULT_DB}`);
  }
  if (path.startsWith(":memory:")) {
    throw new VitqError(
      `${flag} ${path}: an in-memory database keeps no results after the run; name a file such as ${DEFAULT_DB}`,
    );
  }
  if (/^(md|motherduck):/i.test(path)) {
    throw new VitqError(`${flag} ${path}: not a local file; name a database file`);
  }
}

function isLockError(e: unknown): boolean {
  return /could not set lock|conflicting lock/i.test(String((e as Error)?.message ?? e));
}

async function statOrNull(p: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(p);
  } catch {
    return null;
  }
}

/**
 * An open result database. A read-only store holds one read-only connection (a
 * consistent view) until {@link Store.close}; a writing store either holds the
 * file too, or (`releaseBetweenOperations`) opens it only for each operation, so
 * that other processes can read finished cells while a bench runs. Opening waits,
 * with backoff, while another process holds the lock.
 */
export class Store {
  private inst?: DuckDBInstance;
  private c?: DuckDBConnection;
  private depth = 0;
  private closed = false;

  private constructor(
    /** Path of the database file. */
    readonly path: string,
    /** Opened read-only. */
    readonly readOnly: boolean,
    private waitSeconds: number,
    private releaseEach: boolean,
  ) {}

  /**
   * Open the database at `path`. Writing (default): created with the vitq schema
   * when it does not exist; an existing file must be a vitq database (a DuckDB
   * file with other tables is refused, never altered). Read-only: see
   * {@link OpenOptions.readOnly}.
   */
  static async open(path: string, opts: OpenOptions = {}): Promise<Store> {
    checkDbPath(path);
    const readOnly = opts.readOnly ?? false;
    const st = await statOrNull(path);
    if (st && !st.isFile) throw new VitqError(`--db ${path}: not a regular file`);
    if (readOnly && !st) {
      throw new VitqError(`--db ${path}: no such database; run deno task bench first`);
    }
    if (!st) {
      const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".";
      try {
        await Deno.mkdir(dir, { recursive: true });
      } catch (e) {
        throw new VitqError(`--db ${path}: cannot create folder ${dir} (${(e as Error).message})`);
      }
    }
    const store = new Store(
      path,
      readOnly,
      opts.lockWaitSeconds ?? (readOnly ? 60 : 600),
      !readOnly && (opts.releaseBetweenOperations ?? false),
    );
    try {
      await store.withConn(() => store.checkSchema());
    } catch (e) {
      store.close();
      throw e;
    }
    return store;
  }

  private async openInstance(): Promise<DuckDBInstance> {
    const t0 = performance.now();
    let delay = 20, told = false;
    const config: Record<string, string> = this.readOnly
      ? { access_mode: "READ_ONLY", enable_external_access: "false", lock_configuration: "true" }
      : {};
    for (;;) {
      try {
        return await DuckDBInstance.create(this.path, config);
      } catch (e) {
        const msg = String((e as Error)?.message ?? e).split("\n")[0];
        if (!isLockError(e)) {
          throw new VitqError(`--db ${this.path}: cannot open DuckDB database (${msg})`);
        }
        const waited = (performance.now() - t0) / 1000;
        if (waited >= this.waitSeconds) {
          throw new VitqError(
            `--db ${this.path}: still locked by another process after ${
              Math.round(waited)
            } s; try again when it is done (${msg})`,
          );
        }
        if (!told && waited > 5) {
          told = true;
          console.error(`vitq: waiting for ${this.path}, locked by another process`);
        }
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(500, delay * 2);
      }
    }
  }

  /** Run `fn` with an open connection (opened and released around it when writing). */
  private async withConn<T>(fn: (c: DuckDBConnection) => Promise<T>): Promise<T> {
    if (this.closed) throw new Error(`store ${this.path} is closed`);
    if (!this.c) {
      const inst = await this.openInstance();
      try {
        this.c = await inst.connect();
      } catch (e) {
        inst.closeSync();
        throw e;
      }
      this.inst = inst;
    }
    this.depth++;
    try {
      return await fn(this.c);
    } finally {
      this.depth--;
      if (this.depth === 0 && (this.releaseEach || this.closed)) this.release();
    }
  }

  private release(): void {
    this.c?.closeSync();
    this.inst?.closeSync();
    this.c = undefined;
    this.inst = undefined;
  }

  /** The open connection (only inside an operation with `releaseBetweenOperations`). */
  get conn(): DuckDBConnection {
    if (!this.c) throw new Error(`store ${this.path}: no open connection outside an operation`);
    return this.c;
  }

  /** Check the file is a vitq database (writing: create or upgrade its schema). */
  private async checkSchema(): Promise<void> {
    const c = this.conn;
    const tables = (await c.runAndReadAll(
      `select table_name from information_schema.tables
        where table_catalog = current_database() and table_schema = 'main'
          and table_type = 'BASE TABLE'`,
    )).getRowsJS().map((r) => String(r[0]));
    let marked = false;
    if (tables.includes("vitq_meta")) {
      const v = (await c.runAndReadAll(`select value from vitq_meta where key = 'format'`))
        .getRowsJS();
      marked = v.length > 0 && v[0][0] === "vitq";
    }
    // databases written before the marker existed: the result tables identify them
    const legacy = !marked && ["runs", "results", "predictions"].every((t) => tables.includes(t));
    if (!marked && !legacy && tables.length > 0) {
      throw new VitqError(
        `--db ${this.path}: a DuckDB database that is not a vitq result database (tables ${
          tables.slice(0, 5).join(", ")
        }${tables.length > 5 ? ", ..." : ""}); name another file`,
      );
    }
    const missing = CORE_TABLES.filter((t) => !tables.includes(t));
    if ((marked || legacy) && missing.length) {
      throw new VitqError(
        `--db ${this.path}: damaged vitq database: table ${
          missing.join(", ")
        } missing (dropped?); restore it or start a new file`,
      );
    }
    if (this.readOnly) {
      if (tables.length === 0) {
        throw new VitqError(`--db ${this.path}: empty database; run deno task bench first`);
      }
      return;
    }
    await c.run("begin transaction");
    try {
      await c.run(SCHEMA);
      await c.run(`create table if not exists vitq_meta (key varchar primary key, value varchar)`);
      await c.run(`insert into vitq_meta values ('format', 'vitq') on conflict do nothing`);
      await c.run("commit");
    } catch (e) {
      await c.run("rollback");
      throw e;
    }
  }

  /** Run a query and return rows as plain JS objects. */
  query(sql: string, params: DuckDBValue[] = []): Promise<Record<string, unknown>[]> {
    return this.withConn(async (c) => {
      const r = await c.runAndReadAll(sql, params);
      return r.getRowObjectsJS() as Record<string, unknown>[];
    });
  }

  /** Run a statement. */
  async exec(sql: string, params: DuckDBValue[] = []): Promise<void> {
    await this.withConn((c) => c.run(sql, params));
  }

  private async insert(table: string, row: Record<string, unknown>): Promise<void> {
    const cols = Object.keys(row);
    await this.exec(
      `insert into ${table} (${cols.join(", ")}) values (${placeholders(cols.length)})`,
      cols.map((c) => (row[c] === undefined ? null : row[c]) as DuckDBValue),
    );
  }

  /** Cell ids already stored with status ok. */
  async storedCells(): Promise<Set<string>> {
    const rows = await this.query(`select cell_id from results where status = 'ok'`);
    return new Set(rows.map((r) => r.cell_id as string));
  }

  /** Record an id list (idempotent). */
  async putIdSet(hash: string, kind: string, dataset: string, split: string, ids: string[]) {
    await this.exec(
      `insert into id_sets values ($1, $2, $3, $4, $5, $6) on conflict do nothing`,
      [hash, kind, dataset, split, ids.length, ids.join("\n")],
    );
  }

  /** Record the images of an evaluation set (idempotent). */
  async putImages(evalHash: string, ids: string[], labels: ArrayLike<number>): Promise<void> {
    const have = await this.query(`select count(*)::int as n from images where eval_hash = $1`, [
      evalHash,
    ]);
    if ((have[0].n as number) === ids.length) return;
    await this.transaction(async () => {
      await this.exec(`delete from images where eval_hash = $1`, [evalHash]);
      const app = await this.conn.createAppender("images");
      for (let i = 0; i < ids.length; i++) {
        app.appendVarchar(evalHash);
        app.appendInteger(i);
        app.appendVarchar(ids[i]);
        app.appendSmallInt(labels[i]);
        app.endRow();
      }
      app.closeSync();
    });
  }

  private async putPredictions(cellId: string, p: Predictions): Promise<void> {
    await this.exec(`delete from predictions where cell_id = $1`, [cellId]);
    const app = await this.conn.createAppender("predictions");
    for (let i = 0; i < p.preds.length; i++) {
      app.appendVarchar(cellId);
      app.appendInteger(i);
      app.appendSmallInt(p.preds[i]);
      app.appendSmallInt(p.trueRank[i]);
      app.endRow();
    }
    app.closeSync();
  }

  /** Per-image correctness (true class ranked first) of cells, in image order. */
  async correctness(cellIds: string[]): Promise<Map<string, Uint8Array>> {
    const out = new Map<string, Uint8Array>();
    if (cellIds.length === 0) return out;
    const rows = await this.query(
      `select cell_id, list(true_rank order by image_idx) as r from predictions
        where cell_id in (select unnest($1::varchar[])) group by cell_id`,
      [listOf(cellIds)],
    );
    for (const r of rows) {
      out.set(r.cell_id as string, Uint8Array.from(r.r as number[], (x) => (x === 0 ? 1 : 0)));
    }
    return out;
  }

  /** Store an FP32 baseline and its predictions (replacing an earlier one for the same key). */
  async putFp(row: FpRow, preds: Predictions): Promise<void> {
    await this.transaction(async () => {
      await this.exec(
        `delete from fp_baselines where model_sha = $1 and eval_hash = $2 and backend = $3`,
        [row.model_sha, row.eval_hash, row.backend],
      );
      await this.insert("fp_baselines", { ...row, created_at: new Date().toISOString() });
      await this.putPredictions(row.fp_cell, preds);
    });
  }

  /**
   * Store outlier statistics (one row per site), replacing earlier rows of the
   * same model file and calibration set.
   */
  async putOutlierStats(rows: OutlierStatsRow[]): Promise<void> {
    await this.transaction(async () => {
      for (const k of new Set(rows.map((r) => `${r.model_sha}\n${r.calib_hash}`))) {
        const [sha, calib] = k.split("\n");
        await this.exec(`delete from outlier_stats where model_sha = $1 and calib_hash = $2`, [
          sha,
          calib,
        ]);
      }
      for (const r of rows) {
        await this.insert("outlier_stats", { ...r, created_at: new Date().toISOString() });
      }
    });
  }

  /** Write one cell (result row, layer records, predictions) in one transaction. */
  async putCell(row: ResultRow, layers: LayerRecord[], preds?: Predictions): Promise<void> {
    await this.transaction(async () => {
      await this.exec(`delete from layers where cell_id = $1`, [row.cell_id]);
      await this.exec(`delete from results where cell_id = $1`, [row.cell_id]);
      if (preds) await this.putPredictions(row.cell_id, preds);
      else await this.exec(`delete from predictions where cell_id = $1`, [row.cell_id]);
      const ach = achievedBits(layers);
      await this.insert("results", {
        ...row,
        w_bits_avg: ach.wBitsAvg,
        a_bits_avg: ach.aBitsAvg,
        packed_bytes: ach.packedBytes,
        created_at: new Date().toISOString(),
      });
      for (const l of layers) {
        await this.insert("layers", {
          cell_id: row.cell_id,
          site: l.site,
          kind: l.kind,
          role: l.role,
          block: l.block,
          tensor: l.tensor,
          bits: l.bits,
          scale: l.scale,
          quantizer: l.quantizer,
          sqnr_db: l.sqnrDb,
          elements: l.elements,
        });
      }
    });
  }

  /**
   * Column names of `table` in `database` (an attached database's alias, or `main`, this
   * file), in table order; empty when there is no such table.
   */
  async columns(table: string, database = "main"): Promise<string[]> {
    const rows = await this.query(
      `select column_name from duckdb_columns()
        where database_name = (case when $1 = 'main' then current_database() else $1 end)
          and schema_name = 'main' and table_name = $2 order by column_index`,
      [database, table],
    );
    return rows.map((r) => r.column_name as string);
  }

  /** Insert a run row. */
  async putRun(row: Record<string, unknown>): Promise<void> {
    await this.insert("runs", row);
  }

  /** Update columns of a run row. */
  async finishRun(runId: string, fields: Record<string, unknown>): Promise<void> {
    const cols = Object.keys(fields);
    await this.exec(
      `update runs set ${cols.map((c, i) => `${c} = $${i + 2}`).join(", ")} where run_id = $1`,
      [runId, ...cols.map((c) => fields[c] as DuckDBValue)],
    );
  }

  /** Run `fn` inside BEGIN/COMMIT (one open of the file), rolling back on error. */
  async transaction(fn: () => Promise<void>): Promise<void> {
    await this.withConn(async (c) => {
      await c.run("begin transaction");
      try {
        await fn();
        faultPoint("store-commit");
        await c.run("commit");
      } catch (e) {
        await c.run("rollback");
        throw e;
      }
    });
  }

  /** Close the database (flushes to disk and releases the file). */
  close(): void {
    this.closed = true;
    if (this.depth === 0) this.release();
  }
}
