/**
 * One runtime interface over onnxruntime-node (default, native kernels) and
 * onnxruntime-web (`--backend wasm`), with a fixed thread count, batching and
 * capture of intermediate values.
 *
 * @module
 */
import { Graph } from "../onnx/graph.ts";
import { VitqError } from "../errors.ts";

/** Which ONNX Runtime build executes graphs. */
export type Backend = "node" | "wasm";

/** A float32 tensor as it goes in and out of a session. */
export interface TensorData {
  data: Float32Array;
  dims: number[];
}

/** A feed: float32, or 8-bit integer codes (uint8 / int8 inputs, e.g. of an integer matmul). */
export interface FeedData {
  data: Float32Array | Uint8Array | Int8Array;
  dims: number[];
}

/** A loaded model, ready to run. */
export interface Session {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** Run with float32 (or 8-bit integer) feeds; returns every graph output as float32. */
  run(feeds: Record<string, FeedData>): Promise<Record<string, TensorData>>;
  /** Free native resources. */
  release(): Promise<void>;
}

/** Per-session options of {@link Runtime.createSession}. */
export interface SessionOptions {
  /**
   * ONNX Runtime's memory pattern (default true): after the first run, one
   * block is planned for all intermediate tensors. For graphs that keep many
   * activations alive, such as gradient graphs, that block comes on top of
   * the arena the first run grew, about doubling the peak memory; false
   * reuses the arena's chunks instead.
   */
  memPattern?: boolean;
  /**
   * Write the graph as ONNX Runtime optimized it (fused kernels) to this path
   * (node backend; the wasm backend ignores it).
   */
  optimizedModelPath?: string;
}

/** A configured ONNX Runtime. */
export interface Runtime {
  readonly backend: Backend;
  readonly threads: number;
  /** Version string of the ONNX Runtime package in use. */
  readonly version: string;
  /** Create a session from a graph or ONNX bytes. */
  createSession(
    model: Graph | Uint8Array,
    source?: string,
    options?: SessionOptions,
  ): Promise<Session>;
}

// deno-lint-ignore no-explicit-any
type Ort = any;

class OrtRuntime implements Runtime {
  constructor(
    readonly backend: Backend,
    readonly threads: number,
    readonly version: string,
    private ort: Ort,
  ) {}

  async createSession(
    model: Graph | Uint8Array,
    source = "<graph>",
    options: SessionOptions = {},
  ): Promise<Session> {
    const bytes = model instanceof Graph ? model.toBytes() : model;
    const opts: Record<string, unknown> = {
      executionMode: "sequential",
      graphOptimizationLevel: "all",
    };
    if (options.memPattern === false) opts.enableMemPattern = false;
    if (options.optimizedModelPath && this.backend === "node") {
      opts.optimizedModelFilePath = options.optimizedModelPath;
      opts.logSeverityLevel = 3; // ORT warns that the file holds machine-specific fusions
    }
    if (this.backend === "node") {
      opts.intraOpNumThreads = this.threads;
      opts.interOpNumThreads = 1;
    }
    let s: Ort;
    try {
      s = await this.ort.InferenceSession.create(bytes, opts);
    } catch (e) {
      const msg = String((e as Error).message ?? e).split("\n")[0];
      throw new VitqError(`${source}: ONNX Runtime cannot load the graph (${msg})`);
    }
    const ort = this.ort;
    return {
      inputNames: s.inputNames,
      outputNames: s.outputNames,
      async run(feeds) {
        const f: Record<string, unknown> = {};
        for (const [k, v] of Object.entries(feeds)) {
          const type = v.data instanceof Uint8Array
            ? "uint8"
            : v.data instanceof Int8Array
            ? "int8"
            : "float32";
          f[k] = new ort.Tensor(type, v.data, v.dims);
        }
        const out = await s.run(f);
        const res: Record<string, TensorData> = {};
        for (const [k, v] of Object.entries(out) as [string, Ort][]) {
          const data = v.data instanceof Float32Array
            ? v.data
            : Float32Array.from(v.data as ArrayLike<number>);
          res[k] = { data, dims: Array.from(v.dims as number[]) };
        }
        return res;
      },
      async release() {
        await s.release();
      },
    };
  }
}

/**
 * Create a runtime.
 * @param backend "node" (onnxruntime-node) or "wasm" (onnxruntime-web)
 * @param threads intra-op threads (node); the wasm backend runs single-threaded
 */
export async function createRuntime(backend: Backend = "node", threads = 2): Promise<Runtime> {
  if (backend === "node") {
    const ort = await import("onnxruntime-node");
    const version = (ort as Ort).env?.versions?.node ?? (ort as Ort).env?.versions?.common ?? "?";
    return new OrtRuntime("node", threads, `onnxruntime-node ${version}`, ort);
  }
  if (backend === "wasm") {
    const ort = await import("onnxruntime-web");
    const o = ort as Ort;
    o.env.wasm.numThreads = 1;
    o.env.wasm.proxy = false;
    const version = o.env?.versions?.web ?? o.env?.versions?.common ?? "?";
    return new OrtRuntime("wasm", 1, `onnxruntime-web ${version}`, o);
  }
  throw new VitqError(`--backend: unknown backend "${backend}" (expected node or wasm)`);
}

/** Images as a float32 batch source. */
export interface ImageSource {
  /** Number of images. */
  readonly length: number;
  /** Shape of one image, e.g. [1, 28, 28]. */
  readonly shape: readonly number[];
  /** Images [start, end) as one contiguous NCHW float32 array. */
  slice(start: number, end: number): Promise<Float32Array>;
}

/**
 * Run `session` over `images` in batches of `batchSize`, calling `onBatch` with
 * every output of each batch.
 */
export async function runBatches(
  session: Session,
  images: ImageSource,
  batchSize: number,
  onBatch: (outputs: Record<string, TensorData>, start: number, n: number) => void | Promise<void>,
): Promise<void> {
  const input = session.inputNames[0];
  for (let start = 0; start < images.length; start += batchSize) {
    const n = Math.min(batchSize, images.length - start);
    const data = await images.slice(start, start + n);
    const out = await session.run({ [input]: { data, dims: [n, ...images.shape] } });
    await onBatch(out, start, n);
  }
}

/**
 * A copy of `graph` whose outputs are the given intermediate values (plus the
 * original outputs when `keepOutputs`), for calibration capture.
 */
export function captureGraph(graph: Graph, values: string[], keepOutputs = false): Graph {
  const g = graph.clone();
  const names = keepOutputs ? [...g.outputNames, ...values] : [...new Set(values)];
  for (const v of names) g.addOutput(v);
  g.setOutputs([...new Set(names)]);
  return g;
}
