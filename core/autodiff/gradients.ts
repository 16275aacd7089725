/**
 * Output gradients of a task loss with respect to intermediate values over the
 * calibration set: what PTQ4ViT's Hessian-guided metric weights the output
 * error with. The gradient graph is built by `core/autodiff` and run by ONNX
 * Runtime in sub-batches.
 *
 * Modes:
 * - `pseudo-label`: cross-entropy to the FP model's own predicted classes (a
 *   non-degenerate gradient; vitq's default);
 * - `reference`: KL(P_fp ‖ softmax(logits)) with P_fp from one pass over all
 *   calibration images, as the PTQ4ViT reference code does. Since the model is FP
 *   while gradients are collected, this gradient is analytically zero and what
 *   remains is floating-point noise between the two batch sizes, as in the
 *   reference.
 *
 * @module
 */
import type { Graph } from "../onnx/graph.ts";
import { buildGradientGraph } from "./backward.ts";
import {
  BatchCollector,
  type CaptureStore,
  memoryStore,
  SpillCollector,
} from "../runtime/capture.ts";
import type { ImageSource, Runtime } from "../runtime/runtime.ts";

/** Options of {@link outputGradients}. */
export interface GradientOptions {
  mode: "pseudo-label" | "reference";
  /** Images per gradient pass (the PTQ4ViT reference uses 4). */
  subBatch: number;
}

/**
 * ∂L/∂v for every value v in `values`, over all calibration images,
 * concatenated along the first axis like {@link captureValues}.
 */
export async function outputGradients(
  runtime: Runtime,
  graph: Graph,
  values: string[],
  calib: ImageSource,
  opts: GradientOptions,
): Promise<Map<string, Float32Array>> {
  const parts = new BatchCollector(calib.length);
  await gradientsInto(parts, runtime, graph, values, calib, opts);
  return new Map([...parts.finish()].map(([v, c]) => [v, c.data]));
}

/**
 * {@link outputGradients} into a {@link CaptureStore}: in memory, or, with
 * `spill`, appended to files one sub-batch at a time (the same values).
 */
export async function outputGradientStore(
  runtime: Runtime,
  graph: Graph,
  values: string[],
  calib: ImageSource,
  opts: GradientOptions,
  spill: boolean,
): Promise<CaptureStore> {
  if (!spill) {
    const parts = new BatchCollector(calib.length);
    await gradientsInto(parts, runtime, graph, values, calib, opts);
    return memoryStore(parts.finish());
  }
  const parts = await SpillCollector.create(calib.length);
  try {
    await gradientsInto(parts, runtime, graph, values, calib, opts);
  } catch (e) {
    await parts.discard();
    throw e;
  }
  return parts.finish();
}

async function gradientsInto(
  parts: Pick<BatchCollector, "push">,
  runtime: Runtime,
  graph: Graph,
  values: string[],
  calib: ImageSource,
  opts: GradientOptions,
): Promise<void> {
  const uniq = [...new Set(values)];
  const input = graph.inputNames[0];
  const logitsName = graph.outputNames[0];
  // FP predictions over all calibration images in one pass
  const fp = await runtime.createSession(graph, "FP graph");
  const all = await calib.slice(0, calib.length);
  const logits =
    (await fp.run({ [input]: { data: all, dims: [calib.length, ...calib.shape] } }))[logitsName];
  await fp.release();
  const classes = logits.dims[logits.dims.length - 1];
  const target = new Float32Array(calib.length * classes);
  for (let i = 0; i < calib.length; i++) {
    const row = logits.data.subarray(i * classes, (i + 1) * classes);
    if (opts.mode === "pseudo-label") {
      let best = 0;
      for (let j = 1; j < classes; j++) if (row[j] > row[best]) best = j;
      target[i * classes + best] = 1;
    } else {
      let m = -Infinity, z = 0;
      for (const v of row) m = Math.max(m, v);
      for (const v of row) z += Math.exp(v - m);
      for (let j = 0; j < classes; j++) target[i * classes + j] = Math.exp(row[j] - m) / z;
    }
  }
  const kind = opts.mode === "pseudo-label" ? "cross_entropy" : "kl";
  const gg = buildGradientGraph(graph, {
    loss: { kind, logits: logitsName, target: "vitq_target" },
    wrt: uniq,
  });
  // no memory pattern: it would double the peak of a graph holding the activations
  const session = await runtime.createSession(gg.graph, "gradient graph", { memPattern: false });
  const per = calib.shape.reduce((a, b) => a * b, 1);
  try {
    for (let s = 0; s < calib.length; s += opts.subBatch) {
      const n = Math.min(opts.subBatch, calib.length - s);
      const out = await session.run({
        [input]: { data: all.subarray(s * per, (s + n) * per), dims: [n, ...calib.shape] },
        vitq_target: { data: target.subarray(s * classes, (s + n) * classes), dims: [n, classes] },
      });
      for (const v of uniq) {
        const g = out[gg.gradNames.get(v)!];
        parts.push(v, g.data, g.dims, n);
      }
    }
  } finally {
    await session.release();
  }
}
