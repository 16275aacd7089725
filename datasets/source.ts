/**
 * Turn a labelled uint8 split plus an index list into a preprocessed float32
 * image source for one model: x/255, then (x - mean) / std per channel, as the
 * model card says.
 *
 * @module
 */
import type { ImageSource } from "../core/runtime/runtime.ts";
import type { ModelCard } from "../core/models.ts";
import type { ImageSplit } from "./fashion_mnist.ts";
import { VitqError } from "../core/errors.ts";

/** An image source that also knows its labels and ids. */
export interface LabelledSource extends ImageSource {
  ids: string[];
  labels: Int32Array;
}

/** Preprocess the images `indices` of `split` for `card` (all at once; small datasets). */
export function makeSource(split: ImageSplit, indices: number[], card: ModelCard): LabelledSource {
  const [c, h, w] = split.shape;
  if (c !== card.input.channels || h !== card.input.height || w !== card.input.width) {
    throw new VitqError(
      `model ${card.name}: expects ${card.input.channels}x${card.input.height}x${card.input.width} input, dataset ${split.dataset} has ${c}x${h}x${w}`,
    );
  }
  const px = c * h * w, plane = h * w;
  const data = new Float32Array(indices.length * px);
  const { mean, std } = card.normalization;
  indices.forEach((j, i) => {
    const src = split.pixels.subarray(j * px, (j + 1) * px);
    for (let k = 0; k < px; k++) {
      const ch = Math.floor(k / plane);
      data[i * px + k] = Math.fround((Math.fround(src[k] / 255) - mean[ch]) / std[ch]);
    }
  });
  return {
    length: indices.length,
    shape: [c, h, w],
    ids: indices.map((i) => split.ids[i]),
    labels: Int32Array.from(indices, (i) => split.labels[i]),
    slice: (start, end) => Promise.resolve(data.subarray(start * px, end * px)),
  };
}
