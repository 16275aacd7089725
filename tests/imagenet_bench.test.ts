import assert from "node:assert/strict";
import sharp from "sharp";
import { Store } from "../bench/store.ts";
import { cli, FIXTURES, tmpDir, writeManifest } from "./helpers.ts";

const WNIDS = ["n01440764", "n01443537", "n01484850"];

/** A tiny ImageNet tree of generated JPEGs: val/<wnid>/*.JPEG and optionally train/<wnid>/*. */
async function makeTree(root: string, withTrain: boolean) {
  for (const split of withTrain ? ["val", "train"] : ["val"]) {
    for (const [c, wnid] of WNIDS.entries()) {
      await Deno.mkdir(`${root}/${split}/${wnid}`, { recursive: true });
      for (let i = 0; i < 5; i++) {
        const w = 40 + 7 * i, h = 36 + 5 * c;
        const px = new Uint8Array(w * h * 3).map((_, k) => (k * (c + 3) + i * 17) % 256);
        await sharp(px, { raw: { width: w, height: h, channels: 3 } }).jpeg().toFile(
          `${root}/${split}/${wnid}/${split}_${c}_${i}.JPEG`,
        );
      }
    }
  }
}

function manifest(root: string, name: string) {
  return {
    name,
    models: [`${FIXTURES}tiny_vit_rgb.onnx`],
    methods: ["minmax"],
    bits: [{ w: 8, a: 8 }],
    dataset: { name: "imagenet", path: root, split: "val", subset: { rule: "first", perClass: 3 } },
    calibration: { size: 4, seeds: [0], split: "train" },
    batchSize: 4,
    threads: 2,
    speed: { enabled: false },
  };
}

Deno.test("the runner evaluates an ImageNet folder tree with calibration from train or held-out val", async () => {
  const dir = await tmpDir();
  for (const withTrain of [true, false]) {
    const root = `${dir}/imagenet-${withTrain}`;
    await makeTree(root, withTrain);
    const db = `${dir}/r-${withTrain}.duckdb`;
    const m = await writeManifest(dir, manifest(root, `inet-${withTrain}`));
    const r = await cli("bench", [m, "--db", db, "--tables", `${dir}/t`, "--quiet"]);
    assert.equal(r.code, 0, r.stderr);
    const s = await Store.open(db);
    try {
      const rows = await s.query("select subset_size, calib_split, status from results");
      assert.deepEqual(rows, [{
        subset_size: 9,
        calib_split: withTrain ? "train" : "val-held-out",
        status: "ok",
      }]);
      const ids = await s.query("select kind, ids from id_sets order by kind");
      const calibIds = (ids[0].ids as string).split("\n");
      const evalIds = new Set((ids[1].ids as string).split("\n"));
      assert.equal(calibIds.length, 4);
      assert.ok(calibIds.every((id) => !evalIds.has(id)));
      assert.ok(calibIds.every((id) => id.startsWith(withTrain ? "train/" : "val/")));
    } finally {
      s.close();
    }
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("paper manifests stop before any work with one message naming what is missing", async () => {
  const r = await cli("bench", [
    "experiments/paper/w4a4.json",
    "--db",
    "/nonexistent/never.duckdb",
  ]);
  assert.equal(r.code, 2);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1);
  assert.match(
    lines[0],
    /nothing was run: missing model files models\/vit_s\.onnx, .*models\/swin_b\.onnx/,
  );
  assert.match(lines[0], /tools\/export_timm\.py --model vit_small_patch16_224/);
  assert.match(
    lines[0],
    /ImageNet folder datasets\/imagenet does not exist \(expected <root>\/val\/<wnid>/,
  );
});
