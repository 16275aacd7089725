/**
 * Preprocessing throughput: cold (decode + resize + crop + normalize, no
 * cache) and cached (crop cache hits), images per second, on generated
 * 500x375 JPEGs or a folder of your own.
 *
 *   deno run -A tools/bench_preprocess.ts [--n 256] [--reps 5] [--concurrency 1,2,4]
 *       [--batch 32] [--dir FOLDER] [--compare-sharp]
 *
 * Files are processed in batches of `--batch` (one `preprocessFiles` call
 * each, as an image source's slices are).
 * Each measurement is one warm-up pass then `--reps` timed passes; the median
 * and the best pass are printed. `--compare-sharp` also measures how far
 * sharp's own resize kernels are from the PIL reference crops in
 * tests/fixtures/preprocess/ (why the PIL-compatible resampler is used).
 *
 * @module
 */
import sharp from "sharp";
import { gunzipSync } from "node:zlib";
import process from "node:process";
import { CropCache } from "../datasets/cache.ts";
import { preprocessFiles } from "../datasets/image_source.ts";
import {
  centerCropBox,
  decoderVersion,
  type Geometry,
  type PreprocessConfig,
  resizedSize,
  scaleSize,
} from "../datasets/preprocess.ts";

const args = Deno.args;
function opt(name: string, def: string): string {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : def;
}
const N = Number(opt("n", "256"));
const REPS = Number(opt("reps", "5"));
const CONC = opt("concurrency", "1,2,4").split(",").map(Number);
const DIR = opt("dir", "");
const BATCH = Number(opt("batch", "32"));

const CFG: PreprocessConfig = {
  geometry: { size: 224, crop_pct: 0.875, interpolation: "bicubic" },
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
};

/** A photo-like 500x375 JPEG (gradients, blocks, noise), deterministic per seed. */
async function makeJpeg(seed: number): Promise<Uint8Array> {
  const w = 500, h = 375;
  const px = new Uint8Array(w * h * 3);
  let s = (seed * 2654435761) >>> 0;
  const rnd = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296);
  const f = [rnd() * 4 + 1, rnd() * 4 + 1, rnd() * 4 + 1];
  const blocks = Array.from({ length: 10 }, () => [rnd() * w, rnd() * h, rnd() * 120 + 10, rnd()]);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let inBlock = -1;
      for (let b = 0; b < blocks.length; b++) {
        const [bx, by, r] = blocks[b];
        if (Math.abs(x - bx) < r && Math.abs(y - by) < r * 0.7) inBlock = b;
      }
      for (let c = 0; c < 3; c++) {
        let v = 128 + 100 * Math.sin((f[c] * x) / 60 + c) * Math.cos((f[(c + 1) % 3] * y) / 45);
        if (inBlock >= 0) v = 40 + 180 * ((blocks[inBlock][3] * (c + 1)) % 1);
        v += (rnd() - 0.5) * 40;
        px[(y * w + x) * 3 + c] = v < 0 ? 0 : v > 255 ? 255 : v;
      }
    }
  }
  return await sharp(px, { raw: { width: w, height: h, channels: 3 } }).jpeg({ quality: 90 })
    .toBuffer();
}

/** Wall seconds of each timed pass, and process CPU seconds (user + system) over all of them. */
async function timePasses(fn: () => Promise<unknown>): Promise<{ wall: number[]; cpu: number }> {
  await fn(); // warm-up
  const wall: number[] = [];
  const c0 = process.cpuUsage();
  for (let r = 0; r < REPS; r++) {
    const t0 = performance.now();
    await fn();
    wall.push((performance.now() - t0) / 1000);
  }
  const c = process.cpuUsage(c0);
  return { wall, cpu: (c.user + c.system) / 1e6 };
}

function loadAverage(): string {
  try {
    return Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
  } catch {
    return "?";
  }
}

/** Preprocess all files in batches of BATCH; returns cache hits and failures. */
async function run(
  files: string[],
  opts: { cache?: CropCache; concurrency: number },
): Promise<{ hits: number; failures: number }> {
  let hits = 0, failures = 0;
  for (let s = 0; s < files.length; s += BATCH) {
    const b = await preprocessFiles(files.slice(s, s + BATCH), CFG, opts);
    hits += b.cacheHits;
    failures += b.failures.length;
  }
  return { hits, failures };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function compareSharp(): Promise<void> {
  const dir = new URL("../tests/fixtures/preprocess/", import.meta.url).pathname;
  const meta = JSON.parse(await Deno.readTextFile(`${dir}expected.json`));
  const raw = new Uint8Array(gunzipSync(await Deno.readFile(`${dir}crops.u8.gz`)));
  const kernels = ["cubic", "mitchell", "lanczos3", "linear"] as const;
  console.log("\nsharp's own resize vs the PIL reference crops (uint8 levels):");
  for (const kernel of kernels) {
    // [shrinking cases, enlarging cases]: sum, count, max
    const acc = [[0, 0, 0], [0, 0, 0]];
    for (const c of meta.cases) {
      const cfg = meta.configs[c.config];
      if (cfg.interpolation === "bilinear" && kernel !== "linear") continue;
      if (cfg.interpolation === "bicubic" && kernel === "linear") continue;
      const g: Geometry = {
        size: cfg.size,
        crop_pct: cfg.crop_pct,
        interpolation: cfg.interpolation,
      };
      const n = g.size * g.size * 3, row = g.size * 3;
      const enc = raw.subarray(c.crop_offset, c.crop_offset + n);
      const ref = new Uint8Array(n);
      for (let i = 0; i < n; i++) ref[i] = i % row < 3 ? enc[i] : (ref[i - 3] + enc[i]) & 255;
      const bytes = await Deno.readFile(`${dir}${c.file}`);
      const m = await sharp(bytes).metadata();
      if (m.space === "cmyk") continue; // sharp converts CMYK through ICC; not comparable
      const [rw, rh] = resizedSize(m.width!, m.height!, scaleSize(g));
      const box = centerCropBox(rw, rh, g.size);
      if (box.padLeft || box.padTop) continue;
      const { data } = await sharp(bytes, { ignoreIcc: true }).removeAlpha()
        .resize(rw, rh, { kernel, fit: "fill", fastShrinkOnLoad: false })
        .extract({ left: box.left, top: box.top, width: g.size, height: g.size })
        .toColourspace("srgb").raw().toBuffer({ resolveWithObject: true });
      const a = acc[rw > m.width! || rh > m.height! ? 1 : 0];
      for (let i = 0; i < n; i++) {
        const d = Math.abs(data[i] - ref[i]);
        a[0] += d;
        a[1]++;
        if (d > a[2]) a[2] = d;
      }
    }
    const fmt = ([sum, count, max]: number[]) =>
      count ? `mean |diff| ${(sum / count).toFixed(3)}, max ${max}` : "no cases";
    console.log(
      `  kernel ${kernel.padEnd(8)} shrinking: ${fmt(acc[0])}; enlarging: ${fmt(acc[1])} (levels)`,
    );
  }
  console.log("  our resampler: 0 levels on every case (tests/imagenet_preprocess.test.ts)");
}

async function main(): Promise<void> {
  let dir = DIR;
  let files: string[];
  if (dir) {
    files = [];
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && /\.(jpe?g|png)$/i.test(e.name)) files.push(`${dir}/${e.name}`);
    }
    files.sort();
    files = files.slice(0, N);
  } else {
    dir = await Deno.makeTempDir({ prefix: "vitq-bench-pre-" });
    files = [];
    const distinct = Math.min(N, 32);
    const jpegs = await Promise.all(Array.from({ length: distinct }, (_, i) => makeJpeg(i)));
    for (let i = 0; i < N; i++) {
      // distinct bytes per file (a comment-free trailing byte change would break the JPEG,
      // so vary content: reuse 32 images, each with a unique appended APP-less trailer)
      const base = jpegs[i % distinct];
      const b = new Uint8Array(base.length + 4);
      b.set(base);
      new DataView(b.buffer).setUint32(base.length, i); // bytes after EOI are ignored by decoders
      const p = `${dir}/img_${String(i).padStart(5, "0")}.jpg`;
      await Deno.writeFile(p, b);
      files.push(p);
    }
  }
  const sizes = await Promise.all(files.map(async (f) => (await Deno.stat(f)).size));
  console.log(
    `${files.length} files, mean ${
      (sizes.reduce((a, b) => a + b, 0) / sizes.length / 1024).toFixed(1)
    } KiB, ${decoderVersion()}, ${navigator.hardwareConcurrency} CPUs, sharp concurrency ${sharp.concurrency()}`,
  );
  console.log(
    `config ${
      JSON.stringify(CFG.geometry)
    }; batches of ${BATCH}; ${REPS} timed passes after 1 warm-up`,
  );
  const cacheRoot = await Deno.makeTempDir({ prefix: "vitq-bench-cache-" });
  try {
    console.log(`load average before: ${loadAverage()}`);
    const cold: Record<number, number> = {};
    for (const c of CONC) {
      const t = await timePasses(() => run(files, { concurrency: c }));
      cold[c] = files.length / median(t.wall);
      const cpuMs = (1000 * t.cpu) / (files.length * REPS);
      console.log(
        `cold   concurrency ${c}: ${cold[c].toFixed(1)} img/s (median), best ${
          (files.length / Math.min(...t.wall)).toFixed(1)
        } img/s; CPU ${cpuMs.toFixed(2)} ms/img (2 idle cores at full use: ${
          (2000 / cpuMs).toFixed(0)
        } img/s)`,
      );
    }
    const cache = await CropCache.open(CFG.geometry, cacheRoot);
    const f0 = performance.now();
    const fill = await run(files, { cache, concurrency: 4 });
    const fillRate = files.length / ((performance.now() - f0) / 1000);
    if (fill.failures) throw new Error(`${fill.failures} images failed`);
    console.log(
      `first run filling the cache (hash + decode + write), concurrency 4: ${
        fillRate.toFixed(1)
      } img/s (one pass)`,
    );
    for (const c of CONC) {
      const t = await timePasses(async () => {
        const b = await run(files, { cache, concurrency: c });
        if (b.hits !== files.length) throw new Error("cache miss in the cached pass");
      });
      const rate = files.length / median(t.wall);
      const cpuMs = (1000 * t.cpu) / (files.length * REPS);
      console.log(
        `cached concurrency ${c}: ${rate.toFixed(1)} img/s (median), speedup ${
          (rate / cold[c]).toFixed(1)
        }x over cold; CPU ${cpuMs.toFixed(2)} ms/img`,
      );
    }
    console.log(`load average after: ${loadAverage()}`);
  } finally {
    await Deno.remove(cacheRoot, { recursive: true });
    if (!DIR) await Deno.remove(dir, { recursive: true });
  }
  if (args.includes("--compare-sharp")) await compareSharp();
}

await main();
