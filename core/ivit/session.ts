/**
 * A small onnxruntime-node session wrapper that returns outputs with their
 * own element types (int8, int16, int32, ...), for running the integer graph
 * directly; vitq's `Runtime` sessions return float32 only.
 *
 * @module
 */
import * as ort from "onnxruntime-node";
import type { Graph } from "../onnx/graph.ts";
import { VitqError } from "../errors.ts";

/** An output tensor as ONNX Runtime returned it. */
export interface RawTensor {
  /** ONNX Runtime type name: "int32", "int8", "float32", ... */
  type: string;
  /** Shape. */
  dims: number[];
  /** Values (a typed array of the element type). */
  data: ArrayLike<number>;
}

/** A session over any-typed outputs. */
export interface RawSession {
  /** Graph input names. */
  readonly inputNames: readonly string[];
  /** Graph output names. */
  readonly outputNames: readonly string[];
  /** Run on one float32 (or int32) input. */
  run(input: Float32Array | Int32Array, dims: number[]): Promise<Record<string, RawTensor>>;
  /** Free native resources. */
  release(): Promise<void>;
}

/**
 * Create a session for `graph` with `threads` intra-op threads, sequential
 * execution and all graph optimizations (the settings of vitq's runtime).
 */
export async function createRawSession(
  graph: Graph | Uint8Array,
  threads = 2,
  source = "<graph>",
): Promise<RawSession> {
  const bytes = graph instanceof Uint8Array ? graph : graph.toBytes();
  let s: ort.InferenceSession;
  try {
    s = await ort.InferenceSession.create(bytes, {
      executionMode: "sequential",
      graphOptimizationLevel: "all",
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      logSeverityLevel: 3,
    });
  } catch (e) {
    const msg = String((e as Error).message ?? e).split("\n")[0];
    throw new VitqError(`${source}: ONNX Runtime cannot load the graph (${msg})`);
  }
  return {
    inputNames: s.inputNames,
    outputNames: s.outputNames,
    async run(input, dims) {
      const t = input instanceof Int32Array
        ? new ort.Tensor("int32", input, dims)
        : new ort.Tensor("float32", input, dims);
      const out = await s.run({ [s.inputNames[0]]: t });
      const res: Record<string, RawTensor> = {};
      for (const [k, v] of Object.entries(out)) {
        res[k] = {
          type: v.type,
          dims: Array.from(v.dims),
          data: v.data as unknown as ArrayLike<number>,
        };
      }
      return res;
    },
    async release() {
      await s.release();
    },
  };
}
