/**
 * Writes the shipped Fashion-MNIST files: copies the original test-split IDX
 * files and draws a seeded 1,024-image calibration sample from the train split
 * (stored as IDX with `calib-ids.txt` listing the original train indices).
 *
 *     deno run -A tools/make_fmnist_sample.ts /usr/share/datasets/fashion-mnist
 *
 * @module
 */
import { encodeIdx, readIdx } from "../datasets/idx.ts";
import { drawCalibration } from "../datasets/subset.ts";

const src = Deno.args[0] ?? "/usr/share/datasets/fashion-mnist";
const out = new URL("../datasets/fashion-mnist/", import.meta.url).pathname;
const SIZE = 1024, SEED = 0;

for (const f of ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]) {
  await Deno.copyFile(`${src}/${f}`, `${out}${f}`);
}
const images = await readIdx(`${src}/train-images-idx3-ubyte.gz`);
const labels = await readIdx(`${src}/train-labels-idx1-ubyte.gz`);
const n = images.dims[0], px = images.dims[1] * images.dims[2];
const pick = drawCalibration(Array.from({ length: n }, (_, i) => i), SIZE, SEED);
const imgs = new Uint8Array(SIZE * px), labs = new Uint8Array(SIZE);
pick.forEach((j, i) => {
  imgs.set(images.data.subarray(j * px, (j + 1) * px), i * px);
  labs[i] = labels.data[j];
});
await Deno.writeFile(
  `${out}calib-images-idx3-ubyte.gz`,
  encodeIdx({ dims: [SIZE, images.dims[1], images.dims[2]], data: imgs }),
);
await Deno.writeFile(`${out}calib-labels-idx1-ubyte.gz`, encodeIdx({ dims: [SIZE], data: labs }));
await Deno.writeTextFile(`${out}calib-ids.txt`, pick.join("\n") + "\n");
console.log(`wrote ${SIZE} train images (seed ${SEED}) and the test split to ${out}`);
