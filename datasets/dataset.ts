/**
 * One interface over the datasets a manifest can name: the evaluation split and
 * the calibration pool as labelled id lists, and a way to turn indices into a
 * preprocessed image source for a model.
 *
 * @module
 */
import { VitqError } from "../core/errors.ts";
import type { ModelCard } from "../core/models.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "./fashion_mnist.ts";
import { calibrationPool, checkClassCount, heldOutIndices, loadImageFolder } from "./imagenet.ts";
import { openImageSource } from "./image_source.ts";
import { type LabelledSource, makeSource } from "./source.ts";

/** A labelled split and how to preprocess any of its images for a model. */
export interface DatasetSplit {
  dataset: string;
  split: string;
  ids: string[];
  labels: Int32Array;
  /** A source over `indices` preprocessed for `card`. */
  source(indices: number[], card: ModelCard): Promise<LabelledSource>;
  /** Check that a model fits this dataset (class count); throws VitqError. */
  checkModel(card: ModelCard, model: string): void;
}

/** Evaluation split plus calibration pool. */
export interface OpenedDataset {
  evalSplit: DatasetSplit;
  calibSplit: DatasetSplit;
  /** Candidate calibration indices into `calibSplit` (never overlapping evaluation). */
  calibPool: number[];
  /** Where calibration images came from ("train", "test-held-out", "val-held-out"). */
  calibSource: string;
}

function checkClasses(dataset: string, n: number) {
  return (card: ModelCard, model: string) => {
    if (card.classes !== n) {
      throw new VitqError(
        `model ${model}: has ${card.classes} classes, dataset ${dataset} has ${n}`,
      );
    }
  };
}

/** Expected ImageNet layout, for error messages. */
export const IMAGENET_LAYOUT =
  "expected <root>/val/<wnid>/*.JPEG, or <root>/val/*.JPEG with LOC_val_solution.csv, and optionally <root>/train/<wnid>/* for calibration";

/**
 * Open the dataset of a manifest and choose the calibration pool.
 *
 * @param evalSubset function choosing evaluation indices from the split's labels
 */
export async function openDataset(
  spec: { name: string; path?: string; split: string },
  calib: { split: string; size: number },
  evalSubset: (labels: Int32Array) => number[],
  file: string,
): Promise<{ data: OpenedDataset; evalIndices: number[] }> {
  if (spec.name === "fashion-mnist") {
    const dir = spec.path ?? SHIPPED_FMNIST;
    const wrap = async (split: "test" | "train"): Promise<DatasetSplit> => {
      const s = await loadFashionMnist(dir, split);
      return {
        dataset: s.dataset,
        split,
        ids: s.ids,
        labels: s.labels,
        source: (indices, card) => Promise.resolve(makeSource(s, indices, card)),
        checkModel: checkClasses("fashion-mnist", 10),
      };
    };
    const evalSplit = await wrap(spec.split as "test" | "train");
    const evalIndices = evalSubset(evalSplit.labels);
    if (calib.split === spec.split) {
      const used = new Set(evalIndices);
      const pool = evalSplit.ids.map((_, i) => i).filter((i) => !used.has(i));
      if (pool.length < calib.size) {
        throw new VitqError(
          `${file}: /calibration/split: calibration from the "${calib.split}" split would overlap the evaluation subset (only ${pool.length} images are left outside it); use "train" or a smaller evaluation subset`,
        );
      }
      return {
        data: {
          evalSplit,
          calibSplit: evalSplit,
          calibPool: pool,
          calibSource: `${spec.split}-held-out`,
        },
        evalIndices,
      };
    }
    const calibSplit = await wrap(calib.split as "test" | "train");
    return {
      data: {
        evalSplit,
        calibSplit,
        calibPool: calibSplit.ids.map((_, i) => i),
        calibSource: calib.split,
      },
      evalIndices,
    };
  }
  // imagenet
  const root = spec.path!;
  const wrapList = (list: Awaited<ReturnType<typeof loadImageFolder>>): DatasetSplit => ({
    dataset: "imagenet",
    split: list.split,
    ids: list.ids,
    labels: list.labels,
    source: (indices, card) => openImageSource(list, indices, card as never),
    checkModel: (card, model) => checkClassCount(list, card.classes, model),
  });
  const evalList = await loadImageFolder(root, spec.split);
  const evalIndices = evalSubset(evalList.labels);
  // calibration from train when it exists, else (or when asked) held-out evaluation images
  const pool = calib.split === spec.split
    ? {
      list: evalList,
      indices: heldOutIndices(evalList.ids.length, evalIndices),
      source: "val-held-out",
    }
    : await calibrationPool(evalList, evalIndices);
  if (pool.indices.length < calib.size) {
    throw new VitqError(
      `${root}: only ${pool.indices.length} calibration candidates (${pool.source}) for size ${calib.size}`,
    );
  }
  const evalSplit = wrapList(evalList);
  return {
    data: {
      evalSplit,
      calibSplit: pool.list === evalList ? evalSplit : wrapList(pool.list),
      calibPool: pool.indices,
      calibSource: pool.source,
    },
    evalIndices,
  };
}
