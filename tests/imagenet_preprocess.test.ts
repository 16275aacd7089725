/**
 * Preprocessing parity with the PIL + torchvision reference
 * (tests/fixtures/preprocess/, made by tools/make_preprocess_fixtures.py),
 * odd colour modes, truncated and unreadable files, and the crop cache.
 *
 * Tolerance: the reference tensor is a float32 function of its uint8 crop, so
 * we compare crops in uint8 levels and tensors in normalized units. Measured
 * difference is 0 (decoding is bit-identical to PIL's libjpeg-turbo, and the
 * resampler reproduces PIL's fixed-point arithmetic). The test allows at most
 * 1 level on any value and a mean of 0.01 levels: the smallest change a
 * different but conforming JPEG decoder build could make, about 0.017 in
 * normalized units, far below what moves a classifier.
 */
import assert from "node:assert/strict";
import { gunzipSync } from "node:zlib";
import sharp from "sharp";
import {
  centerCropBox,
  cropFromBytes,
  DecodeError,
  decodeRgb,
  jpegComponents,
  normalizationTable,
  type PreprocessConfig,
  preprocessConfig,
  resizeCrop,
  resizedSize,
  resizeWindow,
} from "../datasets/preprocess.ts";
import { preprocessFiles } from "../datasets/image_source.ts";
import { CropCache } from "../datasets/cache.ts";
import { VitqError } from "../core/errors.ts";
import { FIXTURES, tmpDir } from "./helpers.ts";

const DIR = `${FIXTURES}preprocess/`;

interface Case {
  file: string;
  config: string;
  source: { width: number; height: number; mode: string; format: string };
  scale_size: number;
  resized: [number, number];
  crop_offset: number;
  tensor_sum: number;
  tensor_sumsq: number;
  sample_seed: number;
  sample_values: number[];
}
interface RefConfig {
  size: number;
  crop_pct: number;
  interpolation: "bicubic" | "bilinear";
  mean: [number, number, number];
  std: [number, number, number];
}

const meta = JSON.parse(await Deno.readTextFile(`${DIR}expected.json`)) as {
  configs: Record<string, RefConfig>;
  cases: Case[];
};
const blob = new Uint8Array(gunzipSync(await Deno.readFile(`${DIR}crops.u8.gz`)));

function refCrop(c: Case, size: number): Uint8Array {
  const n = size * size * 3, row = size * 3;
  const enc = blob.subarray(c.crop_offset, c.crop_offset + n);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = i % row < 3 ? enc[i] : (out[i - 3] + enc[i]) & 255;
  return out;
}

function samplePositions(n: number, count: number, seed: number): number[] {
  const out: number[] = [];
  let s = BigInt(seed);
  for (let i = 0; i < count; i++) {
    s = (s * 1103515245n + 12345n) % 2n ** 31n;
    out.push(Number(s % BigInt(n)));
  }
  return out;
}

function toConfig(r: RefConfig): PreprocessConfig {
  return preprocessConfig({
    input: { height: r.size, width: r.size, channels: 3 },
    normalization: { mean: r.mean, std: r.std },
    crop_pct: r.crop_pct,
    interpolation: r.interpolation,
  });
}

Deno.test("preprocess: parity with PIL + torchvision on the fixture set", async () => {
  let levelSum = 0, levelMax = 0, levelCount = 0;
  let normSum = 0, normMax = 0;
  const perCase: string[] = [];
  for (const c of meta.cases) {
    const r = meta.configs[c.config];
    const cfg = toConfig(r);
    const ref = refCrop(c, r.size);
    // reference float32 tensor, reconstructed from the crop; check it is bit-exact
    const lut = normalizationTable(cfg);
    const plane = r.size * r.size;
    const refT = new Float32Array(3 * plane);
    for (let i = 0; i < plane; i++) {
      for (let ch = 0; ch < 3; ch++) refT[ch * plane + i] = lut[ch * 256 + ref[i * 3 + ch]];
    }
    const pos = samplePositions(refT.length, c.sample_values.length, c.sample_seed);
    pos.forEach((p, k) =>
      assert.deepStrictEqual(refT[p], c.sample_values[k], `${c.file} sample ${k}`)
    );
    let s = 0, s2 = 0;
    for (const v of refT) {
      s += v;
      s2 += v * v;
    }
    assert(Math.abs(s - c.tensor_sum) < 1e-6 * Math.max(1, Math.abs(c.tensor_sum)), c.file);
    assert(Math.abs(s2 - c.tensor_sumsq) < 1e-6 * c.tensor_sumsq, c.file);

    const [rw, rh] = resizedSize(c.source.width, c.source.height, c.scale_size);
    assert.deepStrictEqual([rw, rh], c.resized, `${c.file}: resized size`);

    const bytes = await Deno.readFile(`${DIR}${c.file}`);
    const ours = await cropFromBytes(bytes, c.file, cfg.geometry);
    const js = resizeCrop(await decodeRgb(bytes, c.file), cfg.geometry, "js");
    assert.deepStrictEqual(js, ours, `${c.file}: JS and WebAssembly resamplers agree`);
    const batch = await preprocessFiles([`${DIR}${c.file}`], cfg);
    assert.deepStrictEqual(batch.failures, []);
    let caseMax = 0;
    for (let i = 0; i < ours.length; i++) {
      const d = Math.abs(ours[i] - ref[i]);
      levelSum += d;
      if (d > caseMax) caseMax = d;
    }
    levelCount += ours.length;
    levelMax = Math.max(levelMax, caseMax);
    for (let i = 0; i < refT.length; i++) {
      const d = Math.abs(batch.data[i] - refT[i]);
      normSum += d;
      if (d > normMax) normMax = d;
    }
    perCase.push(`${c.file}/${c.config}: max ${caseMax}`);
  }
  const levelMean = levelSum / levelCount, normMean = normSum / levelCount;
  console.log(
    `parity over ${meta.cases.length} cases: uint8 mean ${levelMean} max ${levelMax}; ` +
      `normalized mean ${normMean.toExponential(3)} max ${normMax.toExponential(3)}`,
  );
  assert(levelMax <= 1, `max diff ${levelMax} levels: ${perCase.join(", ")}`);
  assert(levelMean <= 0.01, `mean diff ${levelMean} levels`);
  assert(normMax <= 1 / 255 / 0.224 + 1e-6, `normalized max diff ${normMax}`);
});

Deno.test("preprocess: grayscale, CMYK and PNG-in-.JPEG decode to 3-channel RGB", async () => {
  const gray = await decodeRgb(await Deno.readFile(`${DIR}gray_500x375.JPEG`), "gray");
  assert.deepStrictEqual([gray.width, gray.height, gray.data.length], [500, 375, 500 * 375 * 3]);
  for (let i = 0; i < gray.data.length; i += 3 * 97) {
    assert.deepStrictEqual(gray.data[i], gray.data[i + 1]);
    assert.deepStrictEqual(gray.data[i], gray.data[i + 2]);
  }
  const cmykBytes = await Deno.readFile(`${DIR}cmyk_500x375.JPEG`);
  assert.deepStrictEqual(jpegComponents(cmykBytes), 4);
  const cmyk = await decodeRgb(cmykBytes, "cmyk");
  assert.deepStrictEqual(cmyk.data.length, 500 * 375 * 3);
  const png = await decodeRgb(await Deno.readFile(`${DIR}png_rgba_300x260.JPEG`), "png");
  assert.deepStrictEqual([png.width, png.height, png.data.length], [300, 260, 300 * 260 * 3]);
  assert.deepStrictEqual(
    jpegComponents(await Deno.readFile(`${DIR}png_rgb_320x240.JPEG`)),
    undefined,
  );

  // generated at test time: known pixel values through each colour mode
  const w = 16, h = 12;
  const px = new Uint8Array(w * h * 3).fill(0);
  for (let i = 0; i < w * h; i++) px.set([200, 120, 40], i * 3);
  const raw = { raw: { width: w, height: h, channels: 3 as const } };
  const asPng = await sharp(px, raw).png().toBuffer();
  const p = await decodeRgb(asPng, "x.JPEG");
  assert.deepStrictEqual([...p.data.subarray(0, 3)], [200, 120, 40]);
  const asGray = await sharp(px, raw).toColourspace("b-w").jpeg({ quality: 100 }).toBuffer();
  assert.deepStrictEqual(jpegComponents(asGray), 1);
  const g = await decodeRgb(asGray, "g.JPEG");
  assert.deepStrictEqual(g.data.length, w * h * 3);
  assert.deepStrictEqual(g.data[0], g.data[1]);
  // a CMYK JPEG written by libvips: C=0 M=0 Y=0 K=0 is white, K=255 black
  const cmykPx = new Uint8Array(w * h * 4);
  for (let i = 0; i < w * h; i++) {
    cmykPx.set(i < (w * h) / 2 ? [0, 0, 0, 0] : [0, 0, 0, 255], i * 4);
  }
  const asCmyk = await sharp(cmykPx, { raw: { width: w, height: h, channels: 4 } })
    .pipelineColourspace("cmyk").toColourspace("cmyk").jpeg({ quality: 100 }).toBuffer();
  assert.deepStrictEqual(jpegComponents(asCmyk), 4);
  const k = await decodeRgb(asCmyk, "k.JPEG");
  assert(k.data[0] > 245 && k.data[1] > 245 && k.data[2] > 245, `white: ${k.data.subarray(0, 3)}`);
  const last = k.data.length - 3;
  assert(k.data[last] < 10 && k.data[last + 2] < 10, `black: ${k.data.subarray(last)}`);
});

Deno.test("preprocess: truncated, garbage and missing files are reported by path", async () => {
  const dir = await tmpDir();
  try {
    const good = await Deno.readFile(`${DIR}rgb_500x375.JPEG`);
    const truncated = `${dir}/truncated.JPEG`;
    await Deno.writeFile(truncated, good.subarray(0, Math.floor(good.length * 0.6)));
    const garbage = `${dir}/garbage.JPEG`;
    await Deno.writeTextFile(garbage, "this is not an image");
    const missing = `${dir}/missing.JPEG`;
    const okPath = `${dir}/ok.JPEG`;
    await Deno.writeFile(okPath, good);
    await assert.rejects(
      () => decodeRgb(good.subarray(0, Math.floor(good.length * 0.6)), truncated),
      (e) => e instanceof DecodeError && e.message.includes(truncated),
    );
    const cfg = toConfig(meta.configs["bicubic_0.875"]);
    const b = await preprocessFiles([okPath, truncated, garbage, missing], cfg, {
      concurrency: 2,
    });
    assert.deepStrictEqual(b.failures.map((f) => [f.index, f.path]), [
      [1, truncated],
      [2, garbage],
      [3, missing],
    ]);
    assert(b.failures.every((f) => f.reason.length > 0));
    assert.deepStrictEqual(b.decoded, 1);
    const per = 3 * 224 * 224;
    assert(b.data.subarray(per, 4 * per).every((v) => v === 0), "failed slots are zero");
    assert(b.data.subarray(0, per).some((v) => v !== 0));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("preprocess: card validation and torchvision geometry rules", () => {
  const base = {
    name: "m",
    input: { height: 224, width: 224, channels: 3 },
    normalization: { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] },
  };
  for (
    const bad of [
      { ...base },
      { ...base, crop_pct: 0.9 },
      { ...base, crop_pct: 0.9, interpolation: "nearest" },
      { ...base, crop_pct: 0.9, interpolation: "bicubic", input: { ...base.input, width: 256 } },
      { ...base, crop_pct: 0.9, interpolation: "bicubic", input: { ...base.input, channels: 1 } },
    ]
  ) {
    let err: unknown;
    try {
      preprocessConfig(bad);
    } catch (e) {
      err = e;
    }
    assert(err instanceof VitqError, JSON.stringify(bad));
    assert((err as Error).message.startsWith("model card m:"));
  }
  const cfg = preprocessConfig({ ...base, crop_pct: 0.9, interpolation: "bicubic" });
  assert.deepStrictEqual(Math.floor(224 / cfg.geometry.crop_pct), 248);
  assert.deepStrictEqual(resizedSize(500, 375, 256), [341, 256]);
  assert.deepStrictEqual(resizedSize(375, 500, 256), [256, 341]);
  // round half to even, as Python: (341 - 224) / 2 = 58.5 -> 58; (343 - 224) / 2 = 59.5 -> 60
  assert.deepStrictEqual(centerCropBox(341, 256, 224).left, 58);
  assert.deepStrictEqual(centerCropBox(343, 256, 224).left, 60);
  // zero padding when the image is smaller than the crop
  assert.deepStrictEqual(centerCropBox(200, 300, 224), {
    padLeft: 12,
    padTop: 0,
    left: 0,
    top: 38,
  });
});

Deno.test("preprocess: crops smaller than the image are padded with zeros (crop_pct > 1)", async () => {
  const px = new Uint8Array(50 * 40 * 3).fill(255);
  const bytes = await sharp(px, { raw: { width: 50, height: 40, channels: 3 } }).png().toBuffer();
  // floor(64 / 1.25) = 51 -> resized 63x51, crop 64: pad 0 left / 1 right, 6 top / 7 bottom
  const crop = await cropFromBytes(bytes, "p", {
    size: 64,
    crop_pct: 1.25,
    interpolation: "bilinear",
  });
  const at = (x: number, y: number) => crop[(y * 64 + x) * 3];
  assert.deepStrictEqual(at(0, 0), 0);
  assert.deepStrictEqual(at(30, 5), 0);
  assert.deepStrictEqual(at(30, 6), 255);
  assert.deepStrictEqual(at(62, 30), 255);
  assert.deepStrictEqual(at(63, 30), 0);
  assert.deepStrictEqual(at(30, 57), 0);
});

Deno.test("cache: second pass is served from the cache with identical tensors", async () => {
  const root = await tmpDir();
  try {
    const cfg = toConfig(meta.configs["bicubic_0.875"]);
    const files = ["rgb_500x375.JPEG", "gray_500x375.JPEG", "cmyk_500x375.JPEG"].map((f) =>
      `${DIR}${f}`
    );
    const cache = await CropCache.open(cfg.geometry, root);
    const cold = await preprocessFiles(files, cfg, { cache });
    assert.deepStrictEqual([cold.cacheHits, cold.decoded, cache.stats.writes], [0, 3, 3]);
    const warm = await preprocessFiles(files, cfg, { cache });
    assert.deepStrictEqual([warm.cacheHits, warm.decoded], [3, 0]);
    assert.deepStrictEqual(warm.data, cold.data);
    // other normalization, same geometry: same entries, different tensor
    const other = { ...cfg, mean: [0.5, 0.5, 0.5] as [number, number, number] };
    const warm2 = await preprocessFiles(files, other, { cache });
    assert.deepStrictEqual(warm2.cacheHits, 3);
    assert(warm2.data[0] !== warm.data[0]);
    // other geometry: another folder
    const c2 = await CropCache.open({ ...cfg.geometry, crop_pct: 0.9 }, root);
    assert(c2.dir !== cache.dir);
    const cfgJson = JSON.parse(await Deno.readTextFile(`${cache.dir}/config.json`));
    assert.deepStrictEqual(cfgJson.geometry, {
      crop_pct: 0.875,
      interpolation: "bicubic",
      size: 224,
    });
    // a damaged entry is a miss and gets rewritten
    const entry = [...Deno.readDirSync(cache.dir)].find((e) => e.isDirectory)!;
    const f = [...Deno.readDirSync(`${cache.dir}/${entry.name}`)][0];
    await Deno.writeFile(`${cache.dir}/${entry.name}/${f.name}`, new Uint8Array(10));
    const again = await preprocessFiles(files, cfg, { cache });
    assert.deepStrictEqual([again.cacheHits, again.decoded], [2, 1]);
    assert.deepStrictEqual(again.data, cold.data);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("preprocess: SIMD WebAssembly passes equal the JS reference", () => {
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 4294967296);
  const shapes: [number, number, number, number][] = [
    [500, 375, 341, 256], // downscale
    [40, 30, 341, 256], // upscale
    [1200, 160, 1920, 256], // wide, horizontal up, vertical up
    [1000, 750, 298, 224], // strong downscale
    [257, 255, 256, 256], // near identity
    [300, 300, 300, 200], // vertical only
    [300, 300, 200, 300], // horizontal only
    [7, 5, 3, 2],
  ];
  for (const [w, h, ow, oh] of shapes) {
    const data = new Uint8Array(w * h * 3);
    for (let i = 0; i < data.length; i++) {
      data[i] = rnd() < 0.1 ? (rnd() < 0.5 ? 0 : 255) : rnd() * 256;
    }
    const img = { width: w, height: h, data };
    for (const interp of ["bicubic", "bilinear"] as const) {
      const cw = Math.max(1, Math.min(ow, Math.floor(ow * 0.8))),
        ch = Math.max(1, Math.floor(oh * 0.7));
      const x0 = ow - cw, y0 = Math.floor((oh - ch) / 3);
      const js = resizeWindow(img, ow, oh, interp, x0, y0, cw, ch, "js");
      const wasm = resizeWindow(img, ow, oh, interp, x0, y0, cw, ch, "wasm");
      assert.equal(js.length, cw * ch * 3);
      assert.deepStrictEqual(wasm, js, `${w}x${h} -> ${ow}x${oh} ${interp}`);
    }
  }
});
