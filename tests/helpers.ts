/**
 * Shared test helpers: fixture paths, a runtime, hand-built quantization
 * contexts, and running the CLI as a user would.
 *
 * @module
 */
import { createRuntime, type ImageSource, type Runtime } from "../core/runtime/runtime.ts";
import { Graph } from "../core/onnx/graph.ts";
import { findSites, type Site } from "../core/onnx/sites.ts";
import { sha256Hex } from "../core/hash.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import type { Bits, QuantContext } from "../methods/types.ts";
import { DuckDBInstance } from "@duckdb/node-api";

/** Repository root. */
export const ROOT = new URL("../", import.meta.url).pathname;
/** Test fixtures folder. */
export const FIXTURES = `${ROOT}tests/fixtures/`;
/** The shipped model. */
export const SHIPPED_MODEL = `${ROOT}models/vit_fmnist.onnx`;

/** Model card of the 28x28 grayscale test fixtures (Fashion-MNIST normalization). */
export const FIXTURE_CARD = {
  name: "tiny",
  file: "tiny.onnx",
  input: { name: "input", channels: 1, height: 28, width: 28 },
  normalization: { mean: [0.286], std: [0.353] },
  classes: 10,
  dataset: "fashion-mnist",
};

let rt: Runtime | undefined;
/** A shared onnxruntime-node runtime with 2 threads. */
export async function runtime(): Promise<Runtime> {
  rt ??= await createRuntime("node", 2);
  return rt;
}

/** Result of running a CLI entry point. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run `deno run -A cli/<name>.ts ...args` from the repository root. */
export async function cli(name: string, args: string[]): Promise<CliResult> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", `${ROOT}cli/${name}.ts`, ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** A fresh temporary directory. */
export function tmpDir(): Promise<string> {
  return Deno.makeTempDir({ prefix: "vitq-test-" });
}

/** Deterministic pseudo-random float32 data in [-scale, scale). */
export function randomData(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return out;
}

/** What a test sets in a hand-built {@link QuantContext}; {@link quantContext} fills the rest. */
export interface ContextFields<O extends object> {
  /** The FP32 graph. */
  graph: Graph;
  /** Calibration images. */
  calib: ImageSource;
  /** Names the calibration images; hashed into `calibHash`. */
  calibLabel: string;
  /** Bit-widths. */
  bits: Bits;
  /** Method options. */
  options: O;
  /** Calibration batch size. */
  batchSize: number;
  /** Sites (default: found on `graph`). */
  sites?: Site[];
  /** Runtime (default: the shared {@link runtime}). */
  runtime?: Runtime;
  /** Seed (default 0). */
  seed?: number;
}

/**
 * A hand-built QuantContext: the sites found on the graph, the shared
 * runtime, seed 0, a silent log, and the explicit cache keys: the SHA-256
 * of the model's bytes and of `calibLabel`.
 */
export async function quantContext<O extends object>(
  f: ContextFields<O>,
): Promise<QuantContext<O>> {
  const { calibLabel, ...given } = f;
  return {
    ...given,
    sites: f.sites ?? findSites(f.graph),
    runtime: f.runtime ?? await runtime(),
    seed: f.seed ?? 0,
    modelHash: await sha256Hex(f.graph.toBytes()),
    calibHash: await sha256Hex(calibLabel),
    log: () => {},
  };
}

/**
 * The context of a test fixture (`tests/fixtures/<fixture>`) calibrated on the
 * first `calibSize` shipped Fashion-MNIST training images.
 */
export async function fixtureContext<O extends object>(
  fixture: string,
  f: { calibSize: number; bits: Bits; options: O; batchSize: number },
): Promise<QuantContext<O>> {
  const graph = await Graph.load(`${FIXTURES}${fixture}`);
  const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
  return await quantContext({
    graph,
    calib: makeSource(train, Array.from({ length: f.calibSize }, (_, i) => i), FIXTURE_CARD),
    calibLabel: `train 0..${f.calibSize - 1}`,
    bits: f.bits,
    options: f.options,
    batchSize: f.batchSize,
  });
}

/** Write a small manifest to a temp file and return its path. */
export async function writeManifest(dir: string, m: Record<string, unknown>): Promise<string> {
  const p = `${dir}/${m.name ?? "m"}.json`;
  await Deno.writeTextFile(p, JSON.stringify(m, null, 2));
  return p;
}

/** A small, fast manifest on the shipped model and data. */
export function smallManifest(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name: "small",
    models: ["vit_fmnist"],
    methods: ["minmax", { name: "percentile", options: { percentile: 99.9 } }],
    bits: [{ w: 8, a: 8 }, { w: 4, a: 4 }],
    dataset: { name: "fashion-mnist", split: "test", subset: { rule: "first", perClass: 20 } },
    calibration: { size: 8, seeds: [0], split: "train" },
    batchSize: 50,
    threads: 2,
    speed: { repetitions: 2, warmup: 1 },
    ...over,
  };
}

/** Rows of a query on a result database opened read-only (as plain objects). */
export async function readRows(db: string, sql: string): Promise<Record<string, unknown>[]> {
  const inst = await DuckDBInstance.create(db, { access_mode: "READ_ONLY" });
  const conn = await inst.connect();
  try {
    return (await conn.runAndReadAll(sql)).getRowObjectsJS() as Record<string, unknown>[];
  } finally {
    conn.closeSync();
    inst.closeSync();
  }
}
