/**
 * Top-1 / Top-5 evaluation of a graph over labelled images, keeping the
 * per-image prediction and the rank of the true class.
 *
 * @module
 */
import type { Graph } from "../core/onnx/graph.ts";
import { runBatches, type Runtime } from "../core/runtime/runtime.ts";
import type { LabelledSource } from "../datasets/source.ts";
import { VitqError } from "../core/errors.ts";

/** Accuracy of one graph on one image set. */
export interface EvalResult {
  n: number;
  correct: number;
  top1: number;
  top5: number;
  seconds: number;
  /** Predicted class per image. */
  preds: Int32Array;
  /** Rank (0 = top) of the true class per image. */
  trueRank: Int32Array;
  /**
   * Images whose logits hold a NaN or an infinity. Each counts as wrong: its
   * prediction is -1 and the true class is ranked last (rank = class count).
   */
  nonFinite: number;
}

/** The one-line reason a result with non-finite logits carries. */
export function nonFiniteMessage(n: number): string {
  return `non-finite logits on ${n} image${n === 1 ? "" : "s"}`;
}

/** Evaluate `graph` on `images` with batches of `batchSize`. */
export async function evaluate(
  runtime: Runtime,
  graph: Graph | Uint8Array,
  images: LabelledSource,
  batchSize: number,
): Promise<EvalResult> {
  const session = await runtime.createSession(graph, "evaluation graph");
  const n = images.length;
  const preds = new Int32Array(n), trueRank = new Int32Array(n);
  const t0 = performance.now();
  let nonFinite = 0;
  try {
    const out0 = session.outputNames[0];
    await runBatches(session, images, batchSize, (out, start, b) => {
      const logits = out[out0].data;
      const k = logits.length / b;
      for (let i = 0; i < b; i++) {
        const row = logits.subarray(i * k, (i + 1) * k);
        const t = images.labels[start + i];
        if (!Number.isInteger(t) || t < 0 || t >= k) {
          throw new VitqError(
            `image ${images.ids[start + i]}: label ${t} is outside the model's ${k} classes (0..${
              k - 1
            })`,
          );
        }
        if (!row.every(Number.isFinite)) {
          // a NaN compares false with everything: without this the true class would rank first
          nonFinite++;
          preds[start + i] = -1;
          trueRank[start + i] = k;
          continue;
        }
        let best = 0;
        for (let j = 1; j < k; j++) if (row[j] > row[best]) best = j;
        let rank = 0;
        for (let j = 0; j < k; j++) if (row[j] > row[t] || (row[j] === row[t] && j < t)) rank++;
        preds[start + i] = best;
        trueRank[start + i] = rank;
      }
    });
  } finally {
    await session.release();
  }
  const seconds = (performance.now() - t0) / 1000;
  let correct = 0, c5 = 0;
  for (let i = 0; i < n; i++) {
    if (trueRank[i] === 0) correct++;
    if (trueRank[i] < 5) c5++;
  }
  return {
    n,
    correct,
    top1: (100 * correct) / n,
    top5: (100 * c5) / n,
    seconds,
    preds,
    trueRank,
    nonFinite,
  };
}
