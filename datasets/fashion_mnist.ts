/**
 * Fashion-MNIST from IDX files: the shipped copy under `datasets/fashion-mnist`
 * (the full 10,000-image test split and a 1,024-image sample of the train split
 * for calibration) or the full dataset from any folder the user names.
 *
 * @module
 */
import { readIdx } from "./idx.ts";
import { VitqError } from "../core/errors.ts";

/** Folder of the shipped Fashion-MNIST files. */
export const SHIPPED_FMNIST: string = new URL("./fashion-mnist/", import.meta.url).pathname;

/** Class names of Fashion-MNIST, by label index. */
export const FMNIST_CLASSES = [
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
];

/** A labelled split of uint8 images. */
export interface ImageSplit {
  dataset: string;
  split: string;
  /** Stable image ids, e.g. `test/00042`, `train/59999`. */
  ids: string[];
  labels: Int32Array;
  /** Shape of one image [C, H, W]. */
  shape: [number, number, number];
  /** Pixels, n x C x H x W, uint8. */
  pixels: Uint8Array;
}

async function exists(p: string): Promise<boolean> {
  try {
    await Deno.stat(p);
    return true;
  } catch {
    return false;
  }
}

async function findFile(dir: string, base: string): Promise<string | undefined> {
  for (const name of [base, `${base}.gz`]) {
    const p = `${dir.replace(/\/$/, "")}/${name}`;
    if (await exists(p)) return p;
  }
  return undefined;
}

/**
 * Load a Fashion-MNIST split from `dir`. For `train`, the full
 * `train-images-idx3-ubyte[.gz]` is used when present, else the shipped
 * calibration sample (`calib-*` files with `calib-ids.txt` naming the original
 * train indices).
 */
export async function loadFashionMnist(dir: string, split: "test" | "train"): Promise<ImageSplit> {
  if (!(await exists(dir))) {
    throw new VitqError(`dataset.path: folder ${dir} does not exist`);
  }
  const prefix = split === "test" ? "t10k" : "train";
  let img = await findFile(dir, `${prefix}-images-idx3-ubyte`);
  let lab = await findFile(dir, `${prefix}-labels-idx1-ubyte`);
  let indices: number[] | undefined;
  if (split === "train" && (!img || !lab)) {
    img = await findFile(dir, "calib-images-idx3-ubyte");
    lab = await findFile(dir, "calib-labels-idx1-ubyte");
    const idsPath = `${dir.replace(/\/$/, "")}/calib-ids.txt`;
    if (img && lab && (await exists(idsPath))) {
      indices = (await Deno.readTextFile(idsPath)).trim().split(/\s+/).map(Number);
    }
  }
  if (!img || !lab) {
    throw new VitqError(
      `${dir}: no Fashion-MNIST ${split} split (expected ${prefix}-images-idx3-ubyte[.gz] and ${prefix}-labels-idx1-ubyte[.gz])`,
    );
  }
  const images = await readIdx(img);
  const labels = await readIdx(lab);
  if (images.dims.length !== 3 || labels.dims.length !== 1 || images.dims[0] !== labels.dims[0]) {
    throw new VitqError(
      `${img}: images [${images.dims}] and labels [${labels.dims}] do not describe the same N images`,
    );
  }
  const bad = labels.data.findIndex((l) => l >= FMNIST_CLASSES.length);
  if (bad >= 0) {
    throw new VitqError(
      `${lab}: label ${
        labels.data[bad]
      } at index ${bad} is outside the ${FMNIST_CLASSES.length} Fashion-MNIST classes (0..${
        FMNIST_CLASSES.length - 1
      })`,
    );
  }
  const n = images.dims[0];
  if (indices && indices.length !== n) {
    throw new VitqError(`${dir}/calib-ids.txt: ${indices.length} ids for ${n} images`);
  }
  const ids = Array.from(
    { length: n },
    (_, i) => `${split}/${String(indices ? indices[i] : i).padStart(5, "0")}`,
  );
  return {
    dataset: "fashion-mnist",
    split,
    ids,
    labels: Int32Array.from(labels.data),
    shape: [1, images.dims[1], images.dims[2]],
    pixels: images.data,
  };
}
