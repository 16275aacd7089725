import assert from "node:assert/strict";
import { decodeIdx, encodeIdx } from "../datasets/idx.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { drawCalibration, hashIds, selectSubset } from "../datasets/subset.ts";
import { makeSource } from "../datasets/source.ts";
import { VitqError } from "../core/errors.ts";
import { tmpDir } from "./helpers.ts";

Deno.test("IDX encode/decode round trip, plain and gzip", () => {
  const arr = { dims: [2, 3, 2], data: Uint8Array.from({ length: 12 }, (_, i) => i * 20) };
  for (const gz of [false, true]) {
    const back = decodeIdx(encodeIdx(arr, gz), "mem");
    assert.deepEqual(back.dims, arr.dims);
    assert.deepEqual(Array.from(back.data), Array.from(arr.data));
  }
  assert.throws(() => decodeIdx(Uint8Array.of(1, 2, 3, 4), "x.idx"), /x\.idx: not an IDX file/);
  const short = encodeIdx(arr, false).subarray(0, 20);
  assert.throws(() => decodeIdx(short, "y.idx"), /y\.idx: IDX payload/);
});

Deno.test("shipped Fashion-MNIST: full test split and a disjoint train sample", async () => {
  const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
  assert.equal(test.ids.length, 10000);
  assert.deepEqual(test.shape, [1, 28, 28]);
  const counts = new Array(10).fill(0);
  for (const l of test.labels) counts[l]++;
  assert.deepEqual(counts, new Array(10).fill(1000));
  const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
  assert.equal(train.ids.length, 1024);
  assert.ok(train.ids.every((id) => id.startsWith("train/")));
  assert.equal(new Set(train.ids).size, 1024);
});

Deno.test("the loader reads IDX files from any folder and reports what is missing", async () => {
  const dir = await tmpDir();
  const px = Uint8Array.from({ length: 3 * 784 }, (_, i) => i % 251);
  await Deno.writeFile(
    `${dir}/t10k-images-idx3-ubyte`,
    encodeIdx({ dims: [3, 28, 28], data: px }, false),
  );
  await Deno.writeFile(
    `${dir}/t10k-labels-idx1-ubyte.gz`,
    encodeIdx({ dims: [3], data: Uint8Array.of(4, 0, 9) }),
  );
  const s = await loadFashionMnist(dir, "test");
  assert.deepEqual(Array.from(s.labels), [4, 0, 9]);
  await assert.rejects(
    () => loadFashionMnist(dir, "train"),
    (e: Error) => e instanceof VitqError && e.message.includes("train-images-idx3-ubyte"),
  );
  await assert.rejects(() => loadFashionMnist(`${dir}/nope`, "test"), /does not exist/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("subset rules are deterministic and stratified", () => {
  const labels = Int32Array.from({ length: 300 }, (_, i) => i % 3);
  assert.deepEqual(selectSubset(labels, { rule: "first", perClass: 2 }), [0, 1, 2, 3, 4, 5]);
  const a = selectSubset(labels, { rule: "random", perClass: 5, seed: 1 });
  const b = selectSubset(labels, { rule: "random", perClass: 5, seed: 1 });
  const c = selectSubset(labels, { rule: "random", perClass: 5, seed: 2 });
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  assert.equal(a.length, 15);
  const st = selectSubset(labels, { rule: "stratified", total: 31, seed: 0 });
  assert.equal(st.length, 31);
  const per = [0, 0, 0];
  for (const i of st) per[labels[i]]++;
  assert.ok(Math.max(...per) - Math.min(...per) <= 1);
  assert.equal(selectSubset(labels, { rule: "all" }).length, 300);
});

Deno.test("calibration draws are seeded, sized and refuse oversize pools", async () => {
  const pool = Array.from({ length: 100 }, (_, i) => i * 2);
  const a = drawCalibration(pool, 10, 0);
  assert.deepEqual(a, drawCalibration(pool, 10, 0));
  assert.notDeepEqual(a, drawCalibration(pool, 10, 1));
  assert.ok(a.every((x) => pool.includes(x)));
  assert.throws(() => drawCalibration(pool, 101, 0), VitqError);
  assert.notEqual(await hashIds(["a", "b"]), await hashIds(["b", "a"]));
});

Deno.test("preprocessing normalizes with the card's mean and std", async () => {
  const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
  const card = {
    name: "m",
    file: "m.onnx",
    input: { name: "input", channels: 1, height: 28, width: 28 },
    normalization: { mean: [0.5], std: [0.25] },
    classes: 10,
    dataset: "fashion-mnist",
  };
  const src = makeSource(test, [3, 7], card);
  const x = await src.slice(0, 2);
  assert.equal(x.length, 2 * 784);
  const raw = test.pixels[7 * 784 + 400];
  assert.equal(x[784 + 400], Math.fround((Math.fround(raw / 255) - 0.5) / 0.25));
  assert.deepEqual(src.ids, ["test/00003", "test/00007"]);
});
