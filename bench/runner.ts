/**
 * The bench runner: validate a manifest completely, then expand it into cells
 * (method x model x bits x calibration seed), evaluate the FP32 baseline once per
 * model and evaluation set, run each cell not stored yet, and write one row per
 * cell in one transaction.
 *
 * @module
 */
import { Graph } from "../core/onnx/graph.ts";
import { findSites, type Site } from "../core/onnx/sites.ts";
import { type Backend, createRuntime, type Runtime } from "../core/runtime/runtime.ts";
import type { Manifest } from "./manifest.ts";
import { fromRoot, loadRegistry, type ResolvedModel, resolveModel } from "../core/models.ts";
import { canonicalJson, sha256Hex } from "../core/hash.ts";
import { VitqError } from "../core/errors.ts";
import { faultPoint } from "../core/fault.ts";
import { type EvalResult, evaluate, nonFiniteMessage } from "./evaluate.ts";
import { deployStage, saveCellModel } from "./deploy.ts";
import { measureSpeed, pairedSpeedup, type Speed } from "./speed.ts";
import type { ResultRow, Store } from "./store.ts";
import { Progress, storedEstimates } from "./progress.ts";
import { envInfo } from "./env.ts";
import { type DatasetSplit, IMAGENET_LAYOUT, openDataset } from "../datasets/dataset.ts";
import { describeRule, drawCalibration, hashIds, selectSubset } from "../datasets/subset.ts";
import { METHODS } from "../methods/registry.ts";
import type { Bits, QuantizedModel } from "../methods/types.ts";
import type { LabelledSource } from "../datasets/source.ts";

/** Options of one bench invocation. */
export interface BenchOptions {
  manifestPath: string;
  manifestText: string;
  /** Recompute cells even when stored. */
  force?: boolean;
  /** Override the manifest's backend. */
  backend?: Backend;
  quiet?: boolean;
  /** Save each cell's model (deploy graph, else fake-quant) with a card under `<save>/<manifest>/`. */
  save?: string;
  /** Extra columns of the `runs` row (a shard's record: see `bench/shard.ts`). */
  run?: Record<string, string>;
}

/** A model prepared for the run. */
interface PreparedModel {
  model: ResolvedModel;
  graph: Graph;
  bytes: Uint8Array;
  sha: string;
  sites: Site[];
}

/** One cell of the grid, before it runs. */
export interface Cell {
  id: string;
  method: string;
  label: string;
  options: Record<string, unknown>;
  model: string;
  bits: Bits;
  calibSeed: number;
  calibIds: string[];
  calibHash: string;
  calibIndices: number[];
}

/** Summary of a bench invocation. */
export interface BenchSummary {
  runId: string;
  cells: Cell[];
  ran: number;
  skipped: number;
  failed: number;
}

/** Everything validated and loaded before the database is touched. */
export interface Plan {
  manifest: Manifest;
  models: PreparedModel[];
  evalSplit: DatasetSplit;
  calibSplit: DatasetSplit;
  /** Where calibration images come from ("train", "test-held-out", "val-held-out"). */
  calibSource: string;
  evalIndices: number[];
  evalIds: string[];
  evalHash: string;
  cells: Cell[];
}

/**
 * Before loading anything: list every model file and dataset folder the manifest
 * needs that is not there, with how to get it, in one error.
 */
async function checkMissing(manifest: Manifest, file: string): Promise<void> {
  const exists = async (p: string) => {
    try {
      await Deno.stat(p);
      return true;
    } catch {
      return false;
    }
  };
  const reg = await loadRegistry();
  const missing: string[] = [];
  const commands: string[] = [];
  for (const name of manifest.models) {
    const e = (Object.hasOwn(reg, name) ? reg[name] : undefined) as
      | { file?: string; export?: string }
      | undefined;
    if (!e?.file || await exists(fromRoot(e.file))) continue;
    missing.push(e.file);
    if (e.export) commands.push(e.export);
  }
  const p = manifest.dataset.path;
  const dataMissing = p !== undefined && !(await exists(fromRoot(p)));
  if (missing.length === 0 && !dataMissing) return;
  const parts: string[] = [];
  if (missing.length) {
    parts.push(
      `missing model files ${
        missing.join(", ")
      } (export each with tools/export_timm.py, which needs torch and timm; the commands are in models/registry.json, e.g. ${
        commands[0] ?? "python3 tools/export_timm.py --help"
      })`,
    );
  }
  if (dataMissing) {
    parts.push(
      manifest.dataset.name === "imagenet"
        ? `/dataset/path: ImageNet folder ${p} does not exist (${IMAGENET_LAYOUT})`
        : `/dataset/path: folder ${p} does not exist`,
    );
  }
  throw new VitqError(`${file}: nothing was run: ${parts.join("; and ")}`);
}

/** Load models and data, choose subsets, expand cells; throws VitqError on bad input. */
export async function planBench(manifest: Manifest, file: string): Promise<Plan> {
  await checkMissing(manifest, file);
  const models: PreparedModel[] = [];
  for (const [i, name] of manifest.models.entries()) {
    const model = await resolveModel(name, `${file}: /models/${i}`);
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(model.path);
    } catch (e) {
      throw new VitqError(
        `${model.path}: cannot read model file for ${name} (${(e as Error).name})`,
      );
    }
    const graph = Graph.fromBytes(bytes, model.path);
    const sites = findSites(graph, model.path);
    models.push({ model, graph, bytes, sha: await sha256Hex(bytes), sites });
  }
  const { data, evalIndices } = await openDataset(
    {
      ...manifest.dataset,
      path: manifest.dataset.path ? fromRoot(manifest.dataset.path) : undefined,
    },
    manifest.calibration,
    (labels) => selectSubset(labels, manifest.dataset.subset),
    file,
  );
  const { evalSplit, calibSplit, calibPool: pool } = data;
  for (const pm of models) evalSplit.checkModel(pm.model.card, pm.model.name);
  const evalIds = evalIndices.map((i) => evalSplit.ids[i]);
  const evalHash = await hashIds(evalIds);
  const evalSet = new Set(evalIds);
  const cells: Cell[] = [];
  for (const seed of manifest.calibration.seeds) {
    const calibIndices = drawCalibration(pool, manifest.calibration.size, seed);
    const calibIds = calibIndices.map((i) => calibSplit.ids[i]);
    const clash = calibIds.find((id) => evalSet.has(id));
    if (clash) {
      throw new VitqError(
        `${file}: /calibration: image ${clash} is in both calibration and evaluation sets`,
      );
    }
    const calibHash = await hashIds(calibIds);
    for (const pm of models) {
      for (const bits of manifest.bits) {
        for (const m of manifest.methods) {
          // a mixed-precision entry makes cells only for methods that support it
          if (bits.mixed && !METHODS[m.name].mixedPrecision) continue;
          const key = {
            method: m.name,
            label: m.label,
            options: m.options,
            model: pm.model.name,
            modelSha: pm.sha,
            bits,
            dataset: manifest.dataset.name,
            split: manifest.dataset.split,
            evalHash,
            calibSize: manifest.calibration.size,
            calibSeed: seed,
            calibSplit: data.calibSource,
            calibHash,
            backend: manifest.backend,
          };
          const id = (await sha256Hex(canonicalJson(key))).slice(0, 24);
          cells.push({
            id,
            method: m.name,
            label: m.label,
            options: m.options,
            model: pm.model.name,
            bits,
            calibSeed: seed,
            calibIds,
            calibHash,
            calibIndices,
          });
        }
      }
    }
  }
  return {
    manifest,
    models,
    evalSplit,
    calibSplit,
    calibSource: data.calibSource,
    evalIndices,
    evalIds,
    evalHash,
    cells,
  };
}

/** `<prefix>_ratio`, `_lo`, `_hi` of a graph's paired speed-up over FP32 (nulls when either is untimed). */
function speedupFields(prefix: "sim" | "deploy", fp?: Speed, x?: Speed): Partial<ResultRow> {
  const r = fp && x ? pairedSpeedup(fp, x) : undefined;
  return {
    [`${prefix}_ratio`]: r?.x ?? null,
    [`${prefix}_ratio_lo`]: r?.lo ?? null,
    [`${prefix}_ratio_hi`]: r?.hi ?? null,
  };
}

function speedOpts(m: Manifest) {
  return { batch: m.batchSize, repetitions: m.speed.repetitions, warmup: m.speed.warmup };
}

/**
 * Evaluate and time the FP32 model on the evaluation images and store the
 * baseline (refused when its logits are not finite).
 */
async function fpBaseline(
  plan: Plan,
  pm: PreparedModel,
  evalSrc: LabelledSource,
  store: Store,
  run: { runId: string; runtime: Runtime; backend: Backend; progress: Progress },
): Promise<Pick<RunContext, "fpEval" | "fpSpeed" | "fpCell">> {
  const { manifest } = plan;
  const { runId, runtime, backend, progress } = run;
  progress.log(`${pm.model.name}: FP32 baseline on ${evalSrc.length} images`);
  const fpEval = await evaluate(runtime, pm.bytes, evalSrc, manifest.batchSize);
  if (fpEval.nonFinite > 0) {
    throw new VitqError(
      `${pm.model.path}: FP32 baseline refused: ${
        nonFiniteMessage(fpEval.nonFinite)
      } of ${fpEval.n} (NaN or Inf weights, or a zero std in the model card?)`,
    );
  }
  const fpCell = `fp32:${pm.sha.slice(0, 16)}:${plan.evalHash.slice(0, 16)}:${backend}`;
  const fpSpeed: Speed | undefined = manifest.speed.enabled
    ? await measureSpeed(runtime, pm.bytes, evalSrc.shape, speedOpts(manifest))
    : undefined;
  await store.putFp({
    model: pm.model.name,
    model_sha: pm.sha,
    dataset: manifest.dataset.name,
    eval_hash: plan.evalHash,
    backend,
    n: fpEval.n,
    correct: fpEval.correct,
    top1: fpEval.top1,
    top5: fpEval.top5,
    eval_seconds: fpEval.seconds,
    ips: fpSpeed?.ips ?? NaN,
    lat_med_ms: fpSpeed?.latMedMs ?? NaN,
    lat_p90_ms: fpSpeed?.latP90Ms ?? NaN,
    batch_size: manifest.batchSize,
    threads: manifest.threads,
    fp_cell: fpCell,
    run_id: runId,
  }, fpEval);
  faultPoint("fp-stored");
  return { fpEval, fpSpeed, fpCell };
}

/** What a cell's row shares with the run: ids, the backend and the FP32 baseline. */
interface RunContext {
  runId: string;
  backend: Backend;
  fpEval: EvalResult;
  fpSpeed: Speed | undefined;
  fpCell: string;
}

/** The result row of a cell before it runs: everything known up front, measurements null. */
function baseRow(plan: Plan, cell: Cell, pm: PreparedModel, run: RunContext): ResultRow {
  const { manifest } = plan;
  const method = METHODS[cell.method];
  const { runId, backend, fpEval, fpSpeed, fpCell } = run;
  return {
    cell_id: cell.id,
    run_id: runId,
    manifest_name: manifest.name,
    method: cell.method,
    label: cell.label,
    options: canonicalJson(cell.options),
    paper: method.paper,
    approximations: method.approximations,
    model: pm.model.name,
    model_sha: pm.sha,
    w_bits: cell.bits.w,
    a_bits: cell.bits.a,
    dataset: manifest.dataset.name,
    split: manifest.dataset.split,
    subset_rule: describeRule(manifest.dataset.subset),
    subset_size: plan.evalIds.length,
    eval_hash: plan.evalHash,
    calib_size: manifest.calibration.size,
    calib_seed: cell.calibSeed,
    calib_split: plan.calibSource,
    calib_hash: cell.calibHash,
    top1: null,
    top5: null,
    correct: null,
    fp_top1: fpEval.top1,
    calib_seconds: null,
    eval_seconds: null,
    fp_ips: fpSpeed?.ips ?? null,
    fp_lat_med_ms: fpSpeed?.latMedMs ?? null,
    fp_lat_p90_ms: fpSpeed?.latP90Ms ?? null,
    speed_load: fpSpeed?.load ?? null,
    sim_ips: null,
    sim_lat_med_ms: null,
    sim_lat_p90_ms: null,
    timed_graph: "fake-quant (simulated quantization in float32)",
    threads: manifest.threads,
    batch_size: manifest.batchSize,
    backend,
    model_bytes: null,
    mixed: cell.bits.mixed?.join(",") ?? null,
    fp_cell: fpCell,
    status: "ok",
    error: null,
    notes: null,
  };
}

/** What one cell needs besides its plan entry. */
interface CellRun {
  runtime: Runtime;
  evalSrc: LabelledSource;
  progress: Progress;
  /** Folder to save each cell's model under (see `BenchOptions.save`). */
  save?: string;
}

/**
 * Run one cell: the method quantizes the model on the cell's calibration images,
 * the fake-quant graph is evaluated, the deploy graph checked and timed (and the
 * model saved when asked). Returns the filled row and what the store keeps.
 */
async function runCell(
  plan: Plan,
  cell: Cell,
  pm: PreparedModel,
  base: ResultRow,
  run: CellRun,
): Promise<{ row: ResultRow; q: QuantizedModel; ev: EvalResult; calibSeconds: number }> {
  const { manifest } = plan;
  const { runtime, evalSrc, progress } = run;
  const method = METHODS[cell.method];
  const calib = await plan.calibSplit.source(cell.calibIndices, pm.model.card);
  const t0 = performance.now();
  const q = await method.quantize({
    graph: pm.graph,
    sites: pm.sites,
    calib,
    bits: cell.bits,
    runtime,
    options: cell.options,
    batchSize: manifest.batchSize,
    seed: cell.calibSeed,
    modelHash: pm.sha,
    calibHash: cell.calibHash,
    log: (m) => progress.log(`  ${m}`),
    step: (m) => progress.step(m),
  });
  const calibSeconds = (performance.now() - t0) / 1000;
  const bytes = q.graph.toBytes();
  const ev = await evaluate(runtime, bytes, evalSrc, manifest.batchSize);
  // deploy graph: evaluated, inspected; FP32, fake-quant and deploy timed side by side
  const dep = await deployStage({
    runtime,
    fp: { graph: pm.graph, bytes: pm.bytes, sites: pm.sites, sha: pm.sha },
    q,
    fakeBytes: bytes,
    evalSrc,
    batchSize: manifest.batchSize,
    speed: manifest.speed.enabled ? speedOpts(manifest) : undefined,
  });
  const sp = dep.speeds?.fake;
  if (run.save) {
    const saved = await saveCellModel(
      `${run.save}/${manifest.name}`,
      dep.bytes ?? bytes,
      pm.model.card,
      {
        cell_id: cell.id,
        manifest: manifest.name,
        method: cell.method,
        label: cell.label,
        options: cell.options,
        bits: { w: cell.bits.w, a: cell.bits.a },
        calib_seed: cell.calibSeed,
        calib_hash: cell.calibHash,
        eval_hash: plan.evalHash,
        dataset: { ...manifest.dataset },
        calibration: { ...manifest.calibration },
        graph: dep.fields.deploy_kind ?? q.graphKind ?? base.timed_graph,
        top1: ev.top1,
        deploy_top1: dep.fields.deploy_top1,
        source_model: pm.model.name,
        source_sha256: pm.sha,
      },
    );
    dep.fields.saved_path = saved.path;
  }
  const row: ResultRow = {
    ...base,
    ...dep.fields,
    fp_ips: dep.speeds?.fp.ips ?? base.fp_ips,
    fp_lat_med_ms: dep.speeds?.fp.latMedMs ?? base.fp_lat_med_ms,
    fp_lat_p90_ms: dep.speeds?.fp.latP90Ms ?? base.fp_lat_p90_ms,
    speed_load: dep.speeds?.fp.load ?? sp?.load ?? base.speed_load ?? null,
    ...speedupFields("sim", dep.speeds?.fp, sp),
    ...speedupFields("deploy", dep.speeds?.fp, dep.speeds?.deploy),
    top1: ev.top1,
    top5: ev.top5,
    correct: ev.correct,
    calib_seconds: calibSeconds,
    eval_seconds: ev.seconds,
    sim_ips: sp?.ips ?? null,
    sim_lat_med_ms: sp?.latMedMs ?? null,
    sim_lat_p90_ms: sp?.latP90Ms ?? null,
    model_bytes: bytes.length,
    timed_graph: q.graphKind ?? base.timed_graph,
    notes: q.notes ?? null,
  };
  return { row, q, ev, calibSeconds };
}

/** Run a planned bench against an open store. */
export async function runPlan(plan: Plan, store: Store, opts: BenchOptions): Promise<BenchSummary> {
  const { manifest } = plan;
  const backend = opts.backend ?? manifest.backend;
  const runtime: Runtime = await createRuntime(backend, manifest.threads);
  const env = await envInfo();
  const runId = crypto.randomUUID();
  await store.putRun({
    run_id: runId,
    started_at: new Date().toISOString(),
    manifest_path: opts.manifestPath,
    manifest_name: manifest.name,
    manifest_hash: await sha256Hex(opts.manifestText),
    manifest_json: opts.manifestText,
    git_commit: env.gitCommit,
    vitq_version: env.vitq,
    deno_version: env.deno,
    ort_version: runtime.version,
    duckdb_version: (await store.query("select version() as v"))[0].v as string,
    cpu: env.cpu,
    cpu_flags: env.cpuFlags,
    cores: env.cores,
    threads: manifest.threads,
    backend,
    ...opts.run,
  });
  await store.putIdSet(
    plan.evalHash,
    "eval",
    manifest.dataset.name,
    manifest.dataset.split,
    plan.evalIds,
  );
  await store.putImages(
    plan.evalHash,
    plan.evalIds,
    Int32Array.from(plan.evalIndices, (i) => plan.evalSplit.labels[i]),
  );
  const stored = opts.force ? new Set<string>() : await store.storedCells();
  const todo = plan.cells.filter((c) => !stored.has(c.id));
  const progress = new Progress(todo.length, opts.quiet, await storedEstimates(store, todo));
  if (plan.cells.length > todo.length) {
    progress.log(
      `${
        plan.cells.length - todo.length
      } of ${plan.cells.length} cells already stored; skipping them`,
    );
  }
  let ran = 0, failed = 0;
  for (const pm of plan.models) {
    const cells = todo.filter((c) => c.model === pm.model.name);
    if (cells.length === 0) continue;
    const evalSrc = await plan.evalSplit.source(plan.evalIndices, pm.model.card);
    const { fpEval, fpSpeed, fpCell } = await fpBaseline(plan, pm, evalSrc, store, {
      runId,
      runtime,
      backend,
      progress,
    });
    progress.log(`${pm.model.name}: FP32 top-1 ${fpEval.top1.toFixed(2)}`);
    for (const cell of cells) {
      const tag =
        `${cell.label} ${pm.model.name} W${cell.bits.w}A${cell.bits.a} seed ${cell.calibSeed}`;
      progress.start(tag, cell.id);
      await store.putIdSet(
        cell.calibHash,
        "calibration",
        manifest.dataset.name,
        plan.calibSource,
        cell.calibIds,
      );
      const base = baseRow(plan, cell, pm, { runId, backend, fpEval, fpSpeed, fpCell });
      try {
        const { row, q, ev, calibSeconds } = await runCell(plan, cell, pm, base, {
          runtime,
          evalSrc,
          progress,
          save: opts.save,
        });
        if (ev.nonFinite > 0) {
          // every such image counts as wrong; the cell says why and is not kept as ok
          row.status = "error";
          row.error = nonFiniteMessage(ev.nonFinite);
        }
        await store.putCell(row, q.layers, ev);
        faultPoint("cell-stored");
        if (row.status === "error") {
          failed++;
          progress.finish(`${tag}: FAILED: ${row.error} (top-1 ${ev.top1.toFixed(2)})`);
          continue;
        }
        ran++;
        progress.finish(
          `${tag}: top-1 ${ev.top1.toFixed(2)} (FP32 ${fpEval.top1.toFixed(2)}), calib ${
            calibSeconds.toFixed(1)
          }s`,
        );
      } catch (e) {
        failed++;
        const msg = String((e as Error)?.message ?? e).split("\n")[0];
        await store.putCell({ ...base, status: "error", error: msg }, []);
        progress.finish(`${tag}: FAILED: ${msg}`);
      }
    }
  }
  await store.finishRun(runId, {
    finished_at: new Date().toISOString(),
    cells_run: ran,
    cells_skipped: plan.cells.length - todo.length,
    cells_failed: failed,
  });
  return { runId, cells: plan.cells, ran, skipped: plan.cells.length - todo.length, failed };
}
