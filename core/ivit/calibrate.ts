/**
 * Calibration for the I-ViT lowering: shapes of the float graph's values (one
 * image) and I-ViT's running min/max of every activation the lowering
 * quantizes, observed on the FP32 model over the calibration images (first
 * batch sets the range, later batches update it by EMA with momentum 0.95:
 * `QuantActObserver` of core/ivit/reference.ts).
 *
 * @module
 */
import { QuantActObserver } from "./reference.ts";
import { captureGraph, type ImageSource, runBatches, type Runtime } from "../runtime/runtime.ts";
import { dataValues, type Graph } from "../onnx/graph.ts";

/** Dims (batch 1) of every data value of `graph`, from one run on the first calibration image. */
export async function probeDims(
  runtime: Runtime,
  graph: Graph,
  calib: ImageSource,
): Promise<Map<string, number[]>> {
  const inputs = new Set(graph.inputNames);
  const values = [...dataValues(graph)].filter((v) => !inputs.has(v));
  const dims = new Map<string, number[]>();
  for (const v of inputs) dims.set(v, [1, ...calib.shape]);
  const session = await runtime.createSession(captureGraph(graph, values), "shape probe");
  try {
    const out = await session.run({
      [session.inputNames[0]]: { data: await calib.slice(0, 1), dims: [1, ...calib.shape] },
    });
    for (const [k, t] of Object.entries(out)) dims.set(k, t.dims);
  } finally {
    await session.release();
  }
  return dims;
}

/** Calibrated range of one value. */
export interface Range {
  /** Running minimum. */
  min: number;
  /** Running maximum. */
  max: number;
}

/**
 * Running min/max (first batch, then EMA with `momentum`) of float values of
 * `graph` over the calibration images in batches of `batchSize`. The graph
 * input may be among `values`.
 */
export async function observeRanges(
  runtime: Runtime,
  graph: Graph,
  values: string[],
  calib: ImageSource,
  batchSize: number,
  momentum = 0.95,
): Promise<Map<string, Range>> {
  const inputs = new Set(graph.inputNames);
  const uniq = [...new Set(values)];
  const inner = uniq.filter((v) => !inputs.has(v));
  const obs = new Map(uniq.map((v) => [v, new QuantActObserver(8, momentum)]));
  const input = graph.inputNames[0];
  if (inner.length === 0) {
    for (let s = 0; s < calib.length; s += batchSize) {
      obs.get(input)?.observe(await calib.slice(s, Math.min(calib.length, s + batchSize)));
    }
  } else {
    const session = await runtime.createSession(captureGraph(graph, inner), "calibration graph");
    try {
      await runBatches(session, calib, batchSize, async (out, start, n) => {
        obs.get(input)?.observe(await calib.slice(start, start + n));
        for (const v of inner) obs.get(v)!.observe(out[v].data);
      });
    } finally {
      await session.release();
    }
  }
  return new Map([...obs].map(([k, o]) => [k, { min: o.min, max: o.max }]));
}
