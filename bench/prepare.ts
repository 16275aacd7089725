/**
 * Everything a bench invocation checks before the result database is opened:
 * the manifest (schema, names, bounds), the model files and cards, the data,
 * every image the run will read, and one small FP32 forward pass per model
 * (input shape as the card says, finite logits). A bad input ends here with one
 * {@link VitqError}, so nothing is stored for it.
 *
 * @module
 */
import { VitqError } from "../core/errors.ts";
import { fromRoot, loadRegistry, type ModelCard, resolveModel } from "../core/models.ts";
import { type Backend, createRuntime } from "../core/runtime/runtime.ts";
import { evaluate, nonFiniteMessage } from "./evaluate.ts";
import { loadManifest, type Manifest } from "./manifest.ts";
import { type Plan, planBench } from "./runner.ts";

/** Overrides from the command line. */
export interface PrepareOptions {
  /** `--backend`: part of every cell's key. */
  backend?: Backend;
  /** `--threads`. */
  threads?: number;
  /** Images of the FP32 pre-flight forward pass per model (default 4; 0 skips it). */
  preflightImages?: number;
}

/** A validated manifest with its plan. */
export interface Prepared {
  manifest: Manifest;
  /** The manifest file's text, as stored with the run. */
  text: string;
  plan: Plan;
}

/** Largest model file read (bytes). */
export const MAX_MODEL_BYTES = 4 * 2 ** 30;

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

/**
 * Check a model card's fields the runner relies on; `cardPath` names the file.
 * Throws a {@link VitqError} naming the field.
 */
export function checkCard(card: ModelCard, cardPath: string): void {
  const bad = (field: string, why: string) => new VitqError(`${cardPath}: /${field}: ${why}`);
  if (card.name !== undefined && (typeof card.name !== "string" || card.name === "")) {
    throw bad("name", "must be a non-empty string");
  }
  // deno-lint-ignore no-control-regex
  if (typeof card.name === "string" && /[|\u0000-\u001f\u007f]/.test(card.name)) {
    throw bad("name", "contains '|' or a control character");
  }
  const input = card.input as unknown;
  if (!isObject(input)) throw bad("input", "missing; expected {name, channels, height, width}");
  const limits: Record<string, number> = { channels: 16, height: 8192, width: 8192 };
  for (const [k, max] of Object.entries(limits)) {
    const v = input[k];
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > max) {
      throw bad(`input/${k}`, `expected a whole number in 1..${max}, got ${JSON.stringify(v)}`);
    }
  }
  const c = input.channels as number;
  const norm = card.normalization as unknown;
  if (!isObject(norm)) throw bad("normalization", "missing; expected {mean: [...], std: [...]}");
  for (const k of ["mean", "std"]) {
    const v = norm[k];
    if (!Array.isArray(v) || v.length !== c) {
      throw bad(`normalization/${k}`, `expected ${c} numbers (one per input channel)`);
    }
    v.forEach((x, i) => {
      if (typeof x !== "number" || !Number.isFinite(x)) {
        throw bad(`normalization/${k}/${i}`, `not a finite number: ${JSON.stringify(x)}`);
      }
      if (k === "std" && !(x > 0)) {
        throw bad(`normalization/std/${i}`, `must be positive (a zero std divides by zero)`);
      }
    });
  }
  const k = card.classes;
  if (typeof k !== "number" || !Number.isInteger(k) || k < 2 || k > 1_000_000) {
    throw bad("classes", `expected a whole number in 2..1000000, got ${JSON.stringify(k)}`);
  }
}

async function statOrNull(p: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(p);
  } catch {
    return null;
  }
}

/** Model files must be regular files; cards must describe what the runner reads. */
async function checkModels(manifest: Manifest, file: string): Promise<void> {
  const reg = await loadRegistry();
  for (const [i, name] of manifest.models.entries()) {
    const where = `${file}: /models/${i}`;
    const entry = Object.hasOwn(reg, name) ? reg[name] : undefined;
    const modelPath = name.endsWith(".onnx") ? fromRoot(name) : entry ? fromRoot(entry.file) : "";
    const st = modelPath ? await statOrNull(modelPath) : null;
    // unknown names and missing files are reported (all at once) by the planner
    if (!st) continue;
    if (!st.isFile) throw new VitqError(`${modelPath}: model file is not a regular file`);
    if (st.size > MAX_MODEL_BYTES) {
      throw new VitqError(`${modelPath}: model file of ${st.size} bytes is too large`);
    }
    const m = await resolveModel(name, where);
    const cardPath = name.endsWith(".onnx")
      ? modelPath.replace(/\.onnx$/, ".json")
      : fromRoot(entry!.card);
    checkCard(m.card, cardPath);
  }
}

function checkThreads(threads: number, where: string): void {
  const cores = navigator.hardwareConcurrency || 1;
  if (threads > cores) {
    throw new VitqError(
      `${where}: ${threads} threads is more than the ${cores} cores of this machine`,
    );
  }
}

function asVitqError(e: unknown, prefix: string): VitqError {
  if (e instanceof VitqError) return e;
  const msg = String((e as Error)?.message ?? e).split("\n")[0];
  return new VitqError(`${prefix} (${msg})`);
}

/**
 * Pre-flight: every image the run will read decodes, and each model runs on a
 * few evaluation images as its card describes them, with finite logits.
 */
async function preflight(plan: Plan, images: number): Promise<void> {
  const { manifest } = plan;
  const calibSets = new Map<string, number[]>();
  for (const c of plan.cells) calibSets.set(c.calibHash, c.calibIndices);
  const runtime = images > 0 ? await createRuntime(manifest.backend, manifest.threads) : undefined;
  for (const pm of plan.models) {
    const card = pm.model.card;
    const what = `${pm.model.path}: with its card`;
    const evalSrc = await plan.evalSplit.source(plan.evalIndices, card).catch((e) => {
      throw asVitqError(e, `${what}: cannot prepare the evaluation images`);
    });
    // image folders are read lazily: decode every image now (this fills the crop cache)
    const paths = (evalSrc as { paths?: string[] }).paths;
    if (paths) {
      const { scanImages, describeFailures } = await import("../datasets/image_source.ts");
      const all = [...paths];
      for (const idx of calibSets.values()) {
        const cs = await plan.calibSplit.source(idx, card);
        all.push(...((cs as { paths?: string[] }).paths ?? []));
      }
      const scan = await scanImages(all, card as never);
      if (scan.failures.length) throw new VitqError(describeFailures(scan.failures));
    } else {
      for (const idx of calibSets.values()) {
        await plan.calibSplit.source(idx, card).catch((e) => {
          throw asVitqError(e, `${what}: cannot prepare the calibration images`);
        });
      }
    }
    if (!runtime) continue;
    const n = Math.min(images, plan.evalIndices.length);
    const few = await plan.evalSplit.source(plan.evalIndices.slice(0, n), card);
    const { channels, height, width } = card.input;
    let ev;
    try {
      ev = await evaluate(runtime, pm.bytes, few, n);
    } catch (e) {
      throw asVitqError(
        e,
        `${pm.model.path}: the model does not run on the ${channels}x${height}x${width} input its card describes`,
      );
    }
    if (ev.nonFinite > 0) {
      throw new VitqError(
        `${pm.model.path}: FP32 baseline refused: ${
          nonFiniteMessage(ev.nonFinite)
        } of the first ${n} (NaN or Inf weights, or a zero std in the model card?)`,
      );
    }
  }
}

/**
 * Read and validate a manifest, apply command-line overrides, check models,
 * cards and data, plan the cells and run the pre-flight checks. This is what
 * `deno task bench` does before it opens the database.
 */
export async function prepareBench(path: string, opts: PrepareOptions = {}): Promise<Prepared> {
  const { manifest, text } = await loadManifest(path);
  // the backend that runs is part of every cell's key
  if (opts.backend) manifest.backend = opts.backend;
  if (opts.threads !== undefined) manifest.threads = opts.threads;
  checkThreads(manifest.threads, opts.threads !== undefined ? "--threads" : `${path}: /threads`);
  await checkModels(manifest, path);
  let plan: Plan;
  try {
    plan = await planBench(manifest, path);
  } catch (e) {
    // errors from the dataset helpers name a bare field ("calibration: ..."): add the file
    const m = e instanceof VitqError ? e.message.match(/^([a-z][A-Za-z.]*): (.*)$/) : null;
    if (m) throw new VitqError(`${path}: /${m[1].replaceAll(".", "/")}: ${m[2]}`);
    throw e;
  }
  await preflight(plan, opts.preflightImages ?? 4);
  return { manifest, text, plan };
}
