/**
 * ImageNet-style folders: both layouts on generated trees, label files, class
 * order, errors, subset determinism, the calibration pool and the lazy source.
 */
import assert from "node:assert/strict";
import sharp from "sharp";
import {
  calibrationPool,
  checkClassCount,
  heldOutIndices,
  type ImageList,
  loadImageFolder,
} from "../datasets/imagenet.ts";
import { openImageSource } from "../datasets/image_source.ts";
import { CropCache } from "../datasets/cache.ts";
import { drawCalibration, hashIds, selectSubset } from "../datasets/subset.ts";
import { VitqError } from "../core/errors.ts";
import { tmpDir } from "./helpers.ts";

const W1 = "n01440764", W2 = "n01443537", W3 = "n02119789";

/** A small JPEG of one colour (distinct bytes per `seed`). */
async function jpeg(seed: number, w = 12, h = 9): Promise<Uint8Array> {
  const px = new Uint8Array(w * h * 3);
  for (let i = 0; i < px.length; i++) px[i] = (seed * 37 + i * 11) & 255;
  return await sharp(px, { raw: { width: w, height: h, channels: 3 } }).jpeg().toBuffer();
}

async function write(path: string, data: Uint8Array | string): Promise<void> {
  await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  if (typeof data === "string") await Deno.writeTextFile(path, data);
  else await Deno.writeFile(path, data);
}

/** Run `fn` and return the VitqError message it throws. */
async function vitqError(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
  } catch (e) {
    assert.ok(e instanceof VitqError, `expected VitqError, got ${e}`);
    assert.ok(!e.message.includes("\n"));
    return e.message;
  }
  throw new Error("expected a VitqError");
}

async function withTree(fn: (root: string) => Promise<void>): Promise<void> {
  const root = await tmpDir();
  try {
    await fn(root);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

/** train: 3 classes x 4 images; val: 3 classes x 3 images (W3 created first on purpose). */
async function classTree(root: string): Promise<void> {
  let seed = 0;
  for (const split of ["train", "val"]) {
    for (const w of [W3, W1, W2]) {
      const n = split === "train" ? 4 : 3;
      for (let i = n - 1; i >= 0; i--) {
        await write(`${root}/${split}/${w}/${w}_${i}.JPEG`, await jpeg(seed++));
      }
    }
  }
}

Deno.test("imagenet: class-folder layout, sorted wnid classes and ImageFolder order", async () => {
  await withTree(async (root) => {
    await classTree(root);
    await write(`${root}/val/${W2}/sub/extra.png`, await jpeg(99)); // nested folder counts
    await write(`${root}/val/${W2}/notes.txt`, "ignored");
    await write(`${root}/val/${W2}/.hidden.JPEG`, "ignored");
    const val = await loadImageFolder(root, "val");
    assert.equal(val.layout, "class-folders");
    assert.deepStrictEqual(val.classes, [W1, W2, W3]);
    assert.deepStrictEqual(val.ids, [
      `val/${W1}/${W1}_0.JPEG`,
      `val/${W1}/${W1}_1.JPEG`,
      `val/${W1}/${W1}_2.JPEG`,
      `val/${W2}/${W2}_0.JPEG`,
      `val/${W2}/${W2}_1.JPEG`,
      `val/${W2}/${W2}_2.JPEG`,
      `val/${W2}/sub/extra.png`,
      `val/${W3}/${W3}_0.JPEG`,
      `val/${W3}/${W3}_1.JPEG`,
      `val/${W3}/${W3}_2.JPEG`,
    ]);
    assert.deepStrictEqual([...val.labels], [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]);
    assert.equal(val.paths[0], `${root}/val/${W1}/${W1}_0.JPEG`);
    const train = await loadImageFolder(root, "train");
    assert.equal(train.ids.length, 12);
    assert.deepStrictEqual(train.classes, val.classes);
    assert.doesNotThrow(() => checkClassCount(val, 3, "m"));
    assert.throws(() => checkClassCount(val, 1000, "deit_s"), /3 classes found but model deit_s/);
  });
});

Deno.test("imagenet: a mapping file pins the class list (subset of classes on disk)", async () => {
  await withTree(async (root) => {
    await write(`${root}/val/${W3}/a.JPEG`, await jpeg(1));
    await write(`${root}/val/${W1}/b.JPEG`, await jpeg(2));
    await write(
      `${root}/LOC_synset_mapping.txt`,
      `${W1} tench, Tinca tinca\n${W2} goldfish\nn01484850 great white shark\n${W3} kit fox\n`,
    );
    const val = await loadImageFolder(root, "val");
    assert.deepStrictEqual(val.classes, [W1, W2, "n01484850", W3]);
    assert.deepStrictEqual([...val.labels], [0, 3]);
    await write(`${root}/val/n09999999/c.JPEG`, await jpeg(3));
    const msg = await vitqError(() => loadImageFolder(root, "val"));
    assert.match(msg, /n09999999.*unknown wnid "n09999999" \(not in .*LOC_synset_mapping\.txt\)/);
  });
});

Deno.test("imagenet: flat val with LOC_val_solution.csv", async () => {
  await withTree(async (root) => {
    const names = ["ILSVRC2012_val_00000003", "ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002"];
    for (const [i, n] of names.entries()) await write(`${root}/val/${n}.JPEG`, await jpeg(i));
    await write(
      `${root}/LOC_val_solution.csv`,
      "ImageId,PredictionString\n" +
        `ILSVRC2012_val_00000001,${W3} 1 2 3 4 ${W3} 5 6 7 8\n` +
        `ILSVRC2012_val_00000002,${W1} 1 2 3 4\n` +
        `ILSVRC2012_val_00000003,${W2} 1 2 3 4\n` +
        `ILSVRC2012_val_00000004,${W2} 1 2 3 4\n`,
    );
    const val = await loadImageFolder(root, "val");
    assert.equal(val.layout, "flat");
    assert.deepStrictEqual(val.classes, [W1, W2, W3]); // from the CSV
    assert.deepStrictEqual(val.ids, names.map((n) => `val/${n}.JPEG`).sort());
    assert.deepStrictEqual([...val.labels], [2, 0, 1]);
    assert.equal(val.unmatchedLabels, 1);
    // a file without a row
    await write(`${root}/val/ILSVRC2012_val_00000009.JPEG`, await jpeg(9));
    let msg = await vitqError(() => loadImageFolder(root, "val"));
    assert.match(msg, /LOC_val_solution\.csv: no label for .*ILSVRC2012_val_00000009\.JPEG/);
    await Deno.remove(`${root}/val/ILSVRC2012_val_00000009.JPEG`);
    // a mapping file that lacks a wnid of the CSV
    await write(`${root}/LOC_synset_mapping.txt`, `${W1} a\n${W2} b\n`);
    msg = await vitqError(() => loadImageFolder(root, "val"));
    assert.match(msg, /LOC_val_solution\.csv:2: unknown wnid "n02119789"/);
    // a malformed wnid
    await write(
      `${root}/LOC_val_solution.csv`,
      "ImageId,PredictionString\nILSVRC2012_val_00000001,kitfox 1 2 3 4\n",
    );
    msg = await vitqError(() => loadImageFolder(root, "val"));
    assert.match(msg, /LOC_val_solution\.csv:2: unknown wnid "kitfox"/);
  });
});

Deno.test("imagenet: flat val with the devkit ground truth and an ILSVRC2012_ID mapping", async () => {
  await withTree(async (root) => {
    for (let i = 1; i <= 4; i++) {
      await write(`${root}/val/ILSVRC2012_val_${String(i).padStart(8, "0")}.JPEG`, await jpeg(i));
    }
    // ILSVRC2012_ID order is not sorted order: ID 1 = W3, ID 2 = W1, ID 3 = W2
    await write(`${root}/synsets.txt`, `${W3} kit fox\n${W1} tench\n${W2} goldfish\n`);
    await write(
      `${root}/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`,
      "1\n3\n2\n1\n",
    );
    const val = await loadImageFolder(root, "val");
    assert.deepStrictEqual(val.classes, [W1, W2, W3]);
    assert.deepStrictEqual([...val.labels], [2, 1, 0, 2]);
    assert.deepStrictEqual(val.labelFiles, [
      `${root}/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`,
      `${root}/synsets.txt`,
    ]);
    // a file whose number is past the ground truth
    await write(`${root}/val/ILSVRC2012_val_00000005.JPEG`, await jpeg(5));
    let msg = await vitqError(() => loadImageFolder(root, "val"));
    assert.match(
      msg,
      /ground_truth\.txt: no label for .*ILSVRC2012_val_00000005\.JPEG \(the file has 4 lines\)/,
    );
    await Deno.remove(`${root}/val/ILSVRC2012_val_00000005.JPEG`);
    // a file not named by its number
    await write(`${root}/val/holiday.JPEG`, await jpeg(6));
    msg = await vitqError(() => loadImageFolder(root, "val"));
    assert.match(
      msg,
      /cannot label .*holiday\.JPEG: expected file names ILSVRC2012_val_<8 digits>/,
    );
    await Deno.remove(`${root}/val/holiday.JPEG`);
    // a 1000-wnid mapping in sorted order is Kaggle's, not ILSVRC2012_ID order: refused
    const sorted = Array.from(
      { length: 1000 },
      (_, i) => `n${String(1000000 + i).padStart(8, "0")} x`,
    );
    await Deno.remove(`${root}/synsets.txt`);
    await write(`${root}/LOC_synset_mapping.txt`, sorted.join("\n"));
    msg = await vitqError(() => loadImageFolder(root, "val"));
    assert.match(msg, /LOC_synset_mapping\.txt: is in sorted wnid order, not ILSVRC2012_ID order/);
  });
});

Deno.test("imagenet: errors name the folder or file and what was expected", async () => {
  await withTree(async (root) => {
    let msg = await vitqError(() => loadImageFolder(`${root}/nope`, "val"));
    assert.match(msg, /nope: dataset folder not found/);
    msg = await vitqError(() => loadImageFolder(root, "val"));
    assert.match(msg, /\/val: split folder not found/);
    await Deno.mkdir(`${root}/val`);
    msg = await vitqError(() => loadImageFolder(root, "val"));
    assert.match(msg, /cannot determine the class list/);
    await write(`${root}/val/${W1}/a.JPEG`, await jpeg(1));
    await Deno.mkdir(`${root}/val/${W2}`);
    msg = await vitqError(() => loadImageFolder(root, "val"));
    assert.match(
      msg,
      new RegExp(`val/${W2}: no images \\(\\.JPEG/\\.jpg/\\.png\\) in class folder`),
    );
    await Deno.remove(`${root}/val/${W2}`);
    await write(`${root}/val/goldfish/a.JPEG`, await jpeg(2));
    msg = await vitqError(() => loadImageFolder(root, "val"));
    assert.match(msg, /val\/goldfish: unknown wnid "goldfish"/);
    await Deno.remove(`${root}/val/goldfish`, { recursive: true });
    await write(`${root}/val/loose.JPEG`, await jpeg(3));
    msg = await vitqError(() => loadImageFolder(root, "val"));
    assert.match(msg, /holds both image files and class folders/);
    await Deno.remove(`${root}/val/${W1}`, { recursive: true });
    msg = await vitqError(() => loadImageFolder(root, "val"));
    assert.match(msg, /image files without labels: expected .*LOC_val_solution\.csv/);
    await write(`${root}/ILSVRC2012_validation_ground_truth.txt`, "1\n");
    msg = await vitqError(() => loadImageFolder(root, "val"));
    assert.match(msg, /needs the ILSVRC2012_ID -> wnid mapping/);
  });
});

Deno.test("imagenet: subsets over image lists are deterministic", async () => {
  await withTree(async (root) => {
    await classTree(root);
    const a = await loadImageFolder(root, "train");
    const b = await loadImageFolder(root, "train");
    assert.deepStrictEqual(a.ids, b.ids);
    for (const seed of [0, 1, 7]) {
      const r = { rule: "random" as const, perClass: 2, seed };
      const s1 = selectSubset(a.labels, r), s2 = selectSubset(b.labels, r);
      assert.deepStrictEqual(s1, s2);
      assert.equal(s1.length, 6);
      assert.equal(
        await hashIds(s1.map((i) => a.ids[i])),
        await hashIds(s2.map((i) => b.ids[i])),
      );
    }
    const st = selectSubset(a.labels, { rule: "stratified", total: 6, seed: 3 });
    assert.deepStrictEqual(st.map((i) => a.labels[i]).sort(), [0, 0, 1, 1, 2, 2]);
    const draws = new Set<string>();
    for (let seed = 0; seed < 8; seed++) {
      draws.add(JSON.stringify(selectSubset(a.labels, { rule: "random", perClass: 2, seed })));
    }
    assert.ok(draws.size > 1, "different seeds give different subsets");
  });
});

Deno.test("imagenet: calibration pool never overlaps the evaluation set", async () => {
  await withTree(async (root) => {
    await classTree(root);
    const val = await loadImageFolder(root, "val");
    const evalIdx = selectSubset(val.labels, { rule: "first", perClass: 2 });
    const pool = await calibrationPool(val, evalIdx);
    assert.equal(pool.source, "train");
    assert.equal(pool.indices.length, 12);
    const evalIds = new Set(evalIdx.map((i) => val.ids[i]));
    assert.ok(pool.indices.every((i) => !evalIds.has(pool.list.ids[i])));

    await Deno.remove(`${root}/train`, { recursive: true });
    const val2 = await loadImageFolder(root, "val");
    const pool2 = await calibrationPool(val2, evalIdx);
    assert.equal(pool2.source, "val-held-out");
    assert.deepStrictEqual(pool2.indices, heldOutIndices(val2.ids.length, evalIdx));
    assert.deepStrictEqual(pool2.indices, [2, 5, 8]);
    for (let seed = 0; seed < 5; seed++) {
      const calib = drawCalibration(pool2.indices, 2, seed);
      assert.ok(calib.every((i) => !evalIdx.includes(i)));
    }
    const all = val2.ids.map((_, i) => i);
    const msg = await vitqError(() => calibrationPool(val2, all));
    assert.match(
      msg,
      /no calibration images: no train split, and the evaluation uses all 9 val images/,
    );
    assert.throws(() => heldOutIndices(3, [3]), VitqError);
  });
});

const CARD = {
  name: "test",
  input: { height: 32, width: 32, channels: 3 },
  normalization: { mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] },
  crop_pct: 0.875,
  interpolation: "bicubic",
};

Deno.test("imagenet: lazy labelled source with cache, prefetch and failure policy", async () => {
  await withTree(async (root) => {
    await classTree(root);
    const val: ImageList = await loadImageFolder(root, "val");
    const cacheRoot = `${root}/cache`;
    const idx = [0, 2, 4, 6, 8];
    const cache = await CropCache.open(
      { size: 32, crop_pct: 0.875, interpolation: "bicubic" },
      cacheRoot,
    );
    const src = await openImageSource(val, idx, CARD, { cache });
    assert.equal(src.length, 5);
    assert.deepStrictEqual(src.shape, [3, 32, 32]);
    assert.deepStrictEqual(src.ids, idx.map((i) => val.ids[i]));
    assert.deepStrictEqual([...src.labels], idx.map((i) => val.labels[i]));
    const a = await src.slice(0, 2);
    const b = await src.slice(2, 4); // prefetched
    const c = await src.slice(4, 5);
    assert.equal(a.length + b.length + c.length, 5 * 3 * 32 * 32);
    assert.deepStrictEqual(src.counts, { cacheHits: 0, decoded: 5, cacheWriteErrors: 0 });
    // a second source over the same files is served from the cache, same tensors
    const again = await openImageSource(val, idx, CARD, { cache, prefetch: false });
    const a2 = await again.slice(0, 2);
    assert.deepStrictEqual(a2, a);
    assert.equal(again.counts.cacheHits, 2);

    // a truncated image: the slice names it; with onFailure "zero" it is recorded
    const bad = val.paths[2];
    const bytes = await Deno.readFile(bad);
    await Deno.writeFile(bad, bytes.subarray(0, bytes.length >> 1));
    const src2 = await openImageSource(val, idx, CARD, { cache: false });
    const msg = await vitqError(() => src2.slice(0, 3));
    assert.match(
      msg,
      new RegExp(`1 image\\(s\\) could not be decoded: ${bad.replace(/[.]/g, "\\.")}`),
    );
    assert.deepStrictEqual(src2.failures.map((f) => [f.index, f.path]), [[1, bad]]);
    const src3 = await openImageSource(val, idx, CARD, { cache: false, onFailure: "zero" });
    const d = await src3.slice(0, 3);
    assert.equal(src3.failures.length, 1);
    const per = 3 * 32 * 32;
    assert.ok(d.subarray(per, 2 * per).every((v) => v === 0));
    assert.deepStrictEqual(d.subarray(0, per), a.subarray(0, per));
  });
});
