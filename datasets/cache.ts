/**
 * On-disk cache of preprocessed crops, so a second run skips decoding and
 * resampling.
 *
 * What is stored: the uint8 center crop (`size` x `size` x 3, HWC RGB), not
 * the float32 tensor: it is 4x smaller and normalization from it is exact and
 * cheap, so models that differ only in mean/std share entries.
 *
 * Key: the SHA-256 of the file's bytes, under a folder named by the first 16
 * hex digits of the SHA-256 of the canonical JSON of
 * `{ geometry, decoder, algorithm }` (geometry = size, crop_pct,
 * interpolation; decoder = sharp/libvips/mozjpeg versions; algorithm = a
 * version of our resampler). Layout:
 *
 * ```
 * <dir>/<config hash>/config.json          the canonical JSON of the key
 * <dir>/<config hash>/<h[0..2]>/<h>.u8     raw crop bytes, h = content SHA-256
 * ```
 *
 * The default folder is `results/cache/preprocess/` (git-ignored). Entries
 * are written to a temporary name and renamed, so a crashed run leaves no
 * partial entry; an entry of the wrong length is treated as a miss and
 * rewritten.
 *
 * @module
 */
import { canonicalJson, sha256Hex } from "../core/hash.ts";
import { fromRoot } from "../core/models.ts";
import { decoderVersion, type Geometry } from "./preprocess.ts";

/** Version of the crop algorithm; bump when resizeCrop changes its output. */
export const CROP_ALGORITHM = "pil-resample-v1";

/** Default cache folder. */
export const DEFAULT_CACHE_DIR: string = fromRoot("results/cache/preprocess");

/** Hit/miss counters of a cache. */
export interface CacheStats {
  /** Entries found. */
  hits: number;
  /** Lookups without a valid entry. */
  misses: number;
  /** Entries written. */
  writes: number;
}

/** The key of a cache namespace: everything that determines a crop besides the file. */
export function cacheConfig(g: Geometry): Record<string, unknown> {
  return {
    geometry: { size: g.size, crop_pct: g.crop_pct, interpolation: g.interpolation },
    decoder: decoderVersion(),
    algorithm: CROP_ALGORITHM,
  };
}

/** SHA-256 hex of file bytes (the per-image cache key). */
export function contentHash(bytes: Uint8Array): Promise<string> {
  return sha256Hex(bytes);
}

/** A crop cache for one geometry. */
export class CropCache {
  /** Folder of this geometry's entries. */
  readonly dir: string;
  /** Bytes of one entry. */
  readonly entryBytes: number;
  /** Counters since creation. */
  readonly stats: CacheStats = { hits: 0, misses: 0, writes: 0 };
  #ready: Promise<void> | undefined;
  #madeDirs = new Set<string>();
  #tmpSeq = 0;

  private constructor(dir: string, entryBytes: number, private configJson: string) {
    this.dir = dir;
    this.entryBytes = entryBytes;
  }

  /**
   * Open (lazily create) the cache for `geometry` under `root`
   * (default {@link DEFAULT_CACHE_DIR}).
   */
  static async open(geometry: Geometry, root: string = DEFAULT_CACHE_DIR): Promise<CropCache> {
    const json = canonicalJson(cacheConfig(geometry));
    const h = (await sha256Hex(json)).slice(0, 16);
    return new CropCache(
      `${root.replace(/\/$/, "")}/${h}`,
      geometry.size * geometry.size * 3,
      json,
    );
  }

  #ensureRoot(): Promise<void> {
    this.#ready ??= (async () => {
      await Deno.mkdir(this.dir, { recursive: true });
      const cfg = `${this.dir}/config.json`;
      try {
        await Deno.stat(cfg);
      } catch {
        await Deno.writeTextFile(cfg, this.configJson + "\n");
      }
    })();
    return this.#ready;
  }

  /** Path of the entry for content hash `h`. */
  pathOf(h: string): string {
    return `${this.dir}/${h.slice(0, 2)}/${h}.u8`;
  }

  /** The cached crop for content hash `h`, or undefined. */
  async get(h: string): Promise<Uint8Array | undefined> {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(this.pathOf(h));
    } catch {
      this.stats.misses++;
      return undefined;
    }
    if (bytes.length !== this.entryBytes) {
      this.stats.misses++;
      return undefined;
    }
    this.stats.hits++;
    return bytes;
  }

  /** Store the crop for content hash `h` (atomic: temp file + rename). */
  async put(h: string, crop: Uint8Array): Promise<void> {
    if (crop.length !== this.entryBytes) {
      throw new Error(`cache: crop has ${crop.length} bytes, expected ${this.entryBytes}`);
    }
    await this.#ensureRoot();
    const sub = `${this.dir}/${h.slice(0, 2)}`;
    if (!this.#madeDirs.has(sub)) {
      await Deno.mkdir(sub, { recursive: true });
      this.#madeDirs.add(sub);
    }
    const final = this.pathOf(h);
    const tmp = `${final}.${Deno.pid}.${this.#tmpSeq++}.tmp`;
    await Deno.writeFile(tmp, crop);
    await Deno.rename(tmp, final);
    this.stats.writes++;
  }
}
