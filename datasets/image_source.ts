/**
 * Preprocess image files for a model (decode, resize, crop, normalize) with the
 * crop cache, and an {@link LabelledSource} over an {@link ImageList} that does
 * so lazily, one slice at a time, with the next slice prefetched.
 *
 * Images that cannot be read or decoded are never dropped silently: each batch
 * returns them as {@link PreprocessFailure}s (path and reason), and the source
 * either throws a {@link VitqError} naming them (default) or zero-fills them
 * and records them in `failures` (`onFailure: "zero"`), for the caller to decide.
 *
 * @module
 */
import { VitqError } from "../core/errors.ts";
import type { LabelledSource } from "./source.ts";
import type { ImageList } from "./imagenet.ts";
import { contentHash, CropCache } from "./cache.ts";
import {
  cropFromBytes,
  DecodeError,
  normalizationTable,
  normalizeInto,
  type PreprocessCard,
  type PreprocessConfig,
  preprocessConfig,
  type PreprocessFailure,
} from "./preprocess.ts";

/** Options of {@link preprocessFiles}. */
export interface PreprocessOptions {
  /** Crop cache to read and fill; none when omitted. */
  cache?: CropCache;
  /**
   * Images in flight at once (default 4). Decoding runs on the native thread
   * pool while resampling runs on the JS thread, so 2-4 keeps 2 cores busy.
   */
  concurrency?: number;
}

/** Result of preprocessing a batch of files. */
export interface PreprocessBatch {
  /** n x 3 x size x size float32, NCHW; failed images are all zeros. */
  data: Float32Array;
  /** Images that could not be read or decoded, by position in the request. */
  failures: PreprocessFailure[];
  /** Images served from the cache. */
  cacheHits: number;
  /** Images decoded and resampled. */
  decoded: number;
  /** Cache writes that failed (the image itself is fine), with the first message. */
  cacheWriteErrors: { count: number; first?: string };
}

/**
 * Preprocess `paths` for `cfg` into one NCHW float32 array. Never throws for a
 * bad image: it is listed in `failures` and its slot left zero.
 */
export async function preprocessFiles(
  paths: readonly string[],
  cfg: PreprocessConfig,
  opts: PreprocessOptions = {},
): Promise<PreprocessBatch> {
  const size = cfg.geometry.size;
  const per = 3 * size * size;
  const data = new Float32Array(paths.length * per);
  const lut = normalizationTable(cfg);
  const failures: PreprocessFailure[] = [];
  const res: PreprocessBatch = {
    data,
    failures,
    cacheHits: 0,
    decoded: 0,
    cacheWriteErrors: { count: 0 },
  };
  const cache = opts.cache;
  let next = 0;
  const worker = async () => {
    while (next < paths.length) {
      const i = next++;
      const path = paths[i];
      let bytes: Uint8Array;
      try {
        bytes = await Deno.readFile(path);
      } catch (err) {
        failures.push({ index: i, path, reason: `cannot read file (${(err as Error).message})` });
        continue;
      }
      let crop: Uint8Array | undefined;
      let key: string | undefined;
      if (cache) {
        key = await contentHash(bytes);
        crop = await cache.get(key);
        if (crop) res.cacheHits++;
      }
      if (!crop) {
        try {
          crop = await cropFromBytes(bytes, path, cfg.geometry);
        } catch (err) {
          const reason = err instanceof DecodeError ? err.reason : String((err as Error).message);
          failures.push({ index: i, path, reason });
          continue;
        }
        res.decoded++;
        if (cache && key) {
          try {
            await cache.put(key, crop);
          } catch (err) {
            res.cacheWriteErrors.count++;
            res.cacheWriteErrors.first ??= String((err as Error).message);
          }
        }
      }
      normalizeInto(crop, lut, data, i * per);
    }
  };
  const n = Math.max(1, Math.min(opts.concurrency ?? 4, paths.length));
  await Promise.all(Array.from({ length: n }, worker));
  failures.sort((a, b) => a.index - b.index);
  return res;
}

/** Options of {@link openImageSource}. */
export interface SourceOptions {
  /**
   * Crop cache: a cache, `false` for none, or omitted for the default
   * `results/cache/preprocess/`.
   */
  cache?: CropCache | false;
  /** Images in flight at once (see {@link PreprocessOptions}). */
  concurrency?: number;
  /** Preprocess the next slice while the caller works on this one (default true). */
  prefetch?: boolean;
  /**
   * What a slice does when images fail: "error" (default) throws a VitqError
   * naming them; "zero" returns zeros for them and records them in `failures`.
   */
  onFailure?: "error" | "zero";
}

/** A labelled, lazily preprocessed image source over an image list. */
export interface ImageListSource extends LabelledSource {
  /** Full paths of the images, in source order. */
  readonly paths: string[];
  /** Failures met so far (index = position in this source). */
  readonly failures: PreprocessFailure[];
  /** Cache hits and decodes so far. */
  readonly counts: { cacheHits: number; decoded: number; cacheWriteErrors: number };
  /** The validated preprocessing configuration. */
  readonly config: PreprocessConfig;
}

/** Format failures for one error line: count, then the first few paths and reasons. */
export function describeFailures(failures: readonly PreprocessFailure[], show = 3): string {
  const head = failures.slice(0, show).map((f) => `${f.path} (${f.reason})`).join("; ");
  const more = failures.length > show ? `; and ${failures.length - show} more` : "";
  return `${failures.length} image(s) could not be decoded: ${head}${more}`;
}

/**
 * A source over `list` restricted to `indices` (in that order), preprocessed
 * for `card` when sliced.
 */
export async function openImageSource(
  list: ImageList,
  indices: readonly number[],
  card: PreprocessCard,
  opts: SourceOptions = {},
): Promise<ImageListSource> {
  const config = preprocessConfig(card);
  for (const i of indices) {
    if (!Number.isInteger(i) || i < 0 || i >= list.paths.length) {
      throw new VitqError(`${list.root}: image index ${i} outside 0..${list.paths.length - 1}`);
    }
  }
  const cache = opts.cache === false
    ? undefined
    : opts.cache ?? await CropCache.open(config.geometry);
  const paths = indices.map((i) => list.paths[i]);
  const size = config.geometry.size;
  const failures: PreprocessFailure[] = [];
  const reported = new Set<number>();
  const counts = { cacheHits: 0, decoded: 0, cacheWriteErrors: 0 };
  const pending = new Map<string, Promise<PreprocessBatch>>();
  const popts: PreprocessOptions = { cache, concurrency: opts.concurrency };

  const run = (start: number, end: number): Promise<PreprocessBatch> => {
    const key = `${start}:${end}`;
    const p = pending.get(key);
    if (p) {
      pending.delete(key);
      return p;
    }
    return preprocessFiles(paths.slice(start, end), config, popts);
  };

  return {
    length: paths.length,
    shape: [3, size, size],
    ids: indices.map((i) => list.ids[i]),
    labels: Int32Array.from(indices, (i) => list.labels[i]),
    paths,
    failures,
    counts,
    config,
    async slice(start: number, end: number): Promise<Float32Array> {
      start = Math.max(0, start);
      end = Math.min(paths.length, end);
      if (end <= start) return new Float32Array(0);
      const current = run(start, end);
      if (opts.prefetch !== false && end < paths.length) {
        const ns = end, ne = Math.min(paths.length, end + (end - start));
        const key = `${ns}:${ne}`;
        if (!pending.has(key)) {
          // drop stale prefetches (the caller changed its pattern)
          pending.clear();
          const p = preprocessFiles(paths.slice(ns, ne), config, popts);
          p.catch(() => {});
          pending.set(key, p);
        }
      }
      const b = await current;
      counts.cacheHits += b.cacheHits;
      counts.decoded += b.decoded;
      counts.cacheWriteErrors += b.cacheWriteErrors.count;
      const fs = b.failures.map((f) => ({ ...f, index: f.index + start }));
      for (const f of fs) {
        if (!reported.has(f.index)) {
          reported.add(f.index);
          failures.push(f);
        }
      }
      if (fs.length && opts.onFailure !== "zero") {
        throw new VitqError(describeFailures(fs));
      }
      return b.data;
    },
  };
}

/**
 * Preprocess every image of a source's list once (filling the cache) and
 * return the failures, without keeping tensors: a pre-flight check before a
 * long run. `onProgress` gets (done, total).
 */
export async function scanImages(
  paths: readonly string[],
  card: PreprocessCard,
  opts: { cache?: CropCache | false; concurrency?: number; batch?: number } = {},
  onProgress?: (done: number, total: number) => void,
): Promise<{ failures: PreprocessFailure[]; cacheHits: number; decoded: number }> {
  const config = preprocessConfig(card);
  const cache = opts.cache === false
    ? undefined
    : opts.cache ?? await CropCache.open(config.geometry);
  const batch = opts.batch ?? 64;
  const out = { failures: [] as PreprocessFailure[], cacheHits: 0, decoded: 0 };
  for (let s = 0; s < paths.length; s += batch) {
    const b = await preprocessFiles(paths.slice(s, s + batch), config, {
      cache,
      concurrency: opts.concurrency,
    });
    out.cacheHits += b.cacheHits;
    out.decoded += b.decoded;
    for (const f of b.failures) out.failures.push({ ...f, index: f.index + s });
    onProgress?.(Math.min(paths.length, s + batch), paths.length);
  }
  return out;
}
