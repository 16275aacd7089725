/**
 * Calibration statistics: stream the calibration images through a capture graph
 * and reduce every requested intermediate value to its absolute maximum and,
 * when asked, exact percentiles of |x| (kept as a streaming top-K, so memory stays
 * small however many images are seen).
 *
 * @module
 */
import type { Graph } from "../onnx/graph.ts";
import {
  captureGraph,
  type ImageSource,
  runBatches,
  type Runtime,
  type Session,
} from "./runtime.ts";

/** Reduced statistics of one value over the calibration set. */
export interface ValueStats {
  /** Largest |x| seen. */
  absMax: number;
  /** Number of elements seen. */
  count: number;
  /** Rank (number of dims) of the value. */
  rank: number;
  /**
   * The p-th percentile (0..100) of |x|, linearly interpolated between order
   * statistics as torch.quantile does. Only percentiles at or above the
   * smallest requested one are available.
   */
  percentile(p: number): number;
}

/**
 * The `k` largest values of `a` (in no particular order), by quickselect
 * (Hoare partition, median-of-three pivot); `a` is reordered in place.
 */
export function selectLargest(a: Float32Array, k: number): Float32Array {
  let lo = 0, hi = a.length - 1;
  const target = k - 1; // descending order: position k-1 holds the k-th largest
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const x = a[lo], y = a[mid], z = a[hi];
    const pivot = x > y ? (y > z ? y : x > z ? z : x) : (x > z ? x : y > z ? z : y);
    let i = lo, j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else break;
  }
  return a.subarray(0, k);
}

class TopK {
  top = new Float32Array(0);
  count = 0;
  absMax = 0;
  rank = 0;
  k = 0;
  constructor(private minP: number | undefined) {}

  add(x: Float32Array, rank: number, total: number): void {
    this.rank = rank;
    this.count += x.length;
    for (let i = 0; i < x.length; i++) {
      const a = Math.abs(x[i]);
      if (a > this.absMax) this.absMax = a;
    }
    if (this.minP === undefined) return;
    if (this.k === 0) {
      this.k = Math.min(total, total - Math.floor((this.minP / 100) * (total - 1)) + 1);
    }
    let keep: ArrayLike<number>;
    if (this.top.length >= this.k) {
      const thr = this.top[this.k - 1];
      const pass: number[] = [];
      for (let i = 0; i < x.length; i++) {
        const a = Math.abs(x[i]);
        if (a > thr) pass.push(a);
      }
      keep = pass;
    } else {
      // top not full yet (the first batch): select this batch's k largest in O(n)
      // instead of keeping and sorting every value (bounded memory, same result)
      const abs = new Float32Array(x.length); // a plain loop: TypedArray.from(x, fn) is slow
      for (let i = 0; i < x.length; i++) abs[i] = Math.abs(x[i]);
      keep = abs.length > this.k ? selectLargest(abs, this.k) : abs;
    }
    if (keep.length === 0) return;
    const merged = new Float32Array(this.top.length + keep.length);
    merged.set(this.top);
    merged.set(keep, this.top.length);
    merged.sort().reverse();
    this.top = merged.slice(0, this.k);
  }

  percentile(p: number): number {
    if (p >= 100) return this.absMax;
    if (this.minP === undefined || p < this.minP) {
      throw new Error(`percentile ${p} below the smallest requested (${this.minP})`);
    }
    const n = this.count;
    const pos = (p / 100) * (n - 1);
    const lo = Math.floor(pos), hi = Math.ceil(pos);
    const at = (ascIdx: number) => this.top[n - 1 - ascIdx];
    return at(lo) + (at(hi) - at(lo)) * (pos - lo);
  }
}

/**
 * Collect statistics of `values` (intermediate value names of `graph`) over the
 * calibration images.
 *
 * @param minPercentile smallest percentile that will be asked of the result
 */
export async function collectStats(
  runtime: Runtime,
  graph: Graph,
  values: string[],
  calib: ImageSource,
  batchSize: number,
  minPercentile?: number,
): Promise<Map<string, ValueStats>> {
  const uniq = [...new Set(values)];
  const acc = new Map(uniq.map((v) => [v, new TopK(minPercentile)]));
  const session = await runtime.createSession(captureGraph(graph, uniq), "capture graph");
  try {
    await runBatches(session, calib, batchSize, (out, _start, n) => {
      for (const v of uniq) {
        const t = out[v];
        const perImage = t.data.length / n;
        acc.get(v)!.add(t.data, t.dims.length, perImage * calib.length);
      }
    });
  } finally {
    await session.release();
  }
  return acc as Map<string, ValueStats>;
}

/** A captured tensor: all calibration images concatenated along axis 0. */
export interface Captured {
  data: Float32Array;
  dims: number[];
}

/**
 * Batches of named tensors, copied into one array per name that is allocated
 * once for all `images` (each batch's first axis holds a whole number of rows
 * per image: images, or windows for Swin). Nothing is held twice: no chunk
 * list is concatenated at the end.
 */
export class BatchCollector {
  private parts = new Map<string, Captured & { filled: number }>();

  /** @param images the number of images all batches together will hold */
  constructor(private images: number) {}

  /** Add one batch of `name` holding `n` images (copied). */
  push(name: string, data: Float32Array, dims: number[], n: number): void {
    let p = this.parts.get(name);
    if (!p) {
      p = {
        data: new Float32Array((data.length / n) * this.images),
        dims: [(dims[0] / n) * this.images, ...dims.slice(1)],
        filled: 0,
      };
      this.parts.set(name, p);
    }
    if (p.filled + data.length > p.data.length) {
      throw new Error(`BatchCollector: ${name} exceeds the ${this.images} images it was sized for`);
    }
    p.data.set(data, p.filled);
    p.filled += data.length;
  }

  /** The collected tensors (all `images` must have been pushed). */
  finish(): Map<string, Captured> {
    const out = new Map<string, Captured>();
    for (const [v, p] of this.parts) {
      if (p.filled !== p.data.length) {
        throw new Error(`BatchCollector: ${v} holds ${p.filled} of ${p.data.length} values`);
      }
      out.set(v, { data: p.data, dims: p.dims });
    }
    return out;
  }
}

/**
 * Captured tensors by name, held in memory or spilled to files and loaded on
 * demand (a method then holds one block's tensors at a time).
 */
export interface CaptureStore {
  /** Whether the tensors live in files (loaded afresh by each {@link CaptureStore.load}). */
  readonly spilled: boolean;
  /** Dims of `name` (all calibration images along the first axis), or undefined if absent. */
  dims(name: string): number[] | undefined;
  /** The tensors named (in memory: the held arrays; spilled: read from their files). */
  load(names: Iterable<string>): Promise<Map<string, Captured>>;
  /** Delete the spill files (a no-op in memory). */
  release(): Promise<void>;
}

/** A store over tensors already in memory. */
export function memoryStore(m: Map<string, Captured>): CaptureStore {
  return {
    spilled: false,
    dims: (name) => m.get(name)?.dims,
    load: (names) => {
      const out = new Map<string, Captured>();
      for (const n of names) {
        const c = m.get(n);
        if (c) out.set(n, c);
      }
      return Promise.resolve(out);
    },
    release: () => Promise.resolve(),
  };
}

/** Spill directories not yet released, removed when the process exits. */
const liveSpills = new Set<string>();
globalThis.addEventListener?.("unload", () => {
  for (const d of liveSpills) {
    try {
      Deno.removeSync(d, { recursive: true });
    } catch { /* already gone */ }
  }
});

/**
 * Like {@link BatchCollector}, but every batch is appended to one file per name
 * in a fresh temporary directory instead of memory: a capture then holds one
 * batch at a time, and a reader loads only the tensors it needs.
 */
export class SpillCollector {
  private files = new Map<
    string,
    { path: string; dims: number[]; filled: number; total: number }
  >();
  private constructor(private dir: string, private images: number) {}

  /** A collector for `images` images, writing under a new temporary directory. */
  static async create(images: number): Promise<SpillCollector> {
    const dir = await Deno.makeTempDir({ prefix: "vitq-capture-" });
    liveSpills.add(dir);
    return new SpillCollector(dir, images);
  }

  /** Append one batch of `name` holding `n` images. */
  push(name: string, data: Float32Array, dims: number[], n: number): void {
    let f = this.files.get(name);
    if (!f) {
      f = {
        path: `${this.dir}/${this.files.size}.f32`,
        dims: [(dims[0] / n) * this.images, ...dims.slice(1)],
        filled: 0,
        total: (data.length / n) * this.images,
      };
      this.files.set(name, f);
    }
    if (f.filled + data.length > f.total) {
      throw new Error(`SpillCollector: ${name} exceeds the ${this.images} images it was sized for`);
    }
    Deno.writeFileSync(f.path, new Uint8Array(data.buffer, data.byteOffset, data.byteLength), {
      append: true,
    });
    f.filled += data.length;
  }

  /** Delete what was written (a capture that failed). */
  async discard(): Promise<void> {
    liveSpills.delete(this.dir);
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }

  /** The spilled tensors as a store (all `images` must have been pushed). */
  finish(): CaptureStore {
    for (const [v, f] of this.files) {
      if (f.filled !== f.total) {
        throw new Error(`SpillCollector: ${v} holds ${f.filled} of ${f.total} values`);
      }
    }
    const files = this.files;
    return {
      spilled: true,
      dims: (name) => files.get(name)?.dims,
      load: async (names) => {
        const out = new Map<string, Captured>();
        for (const n of names) {
          const f = files.get(n);
          if (!f) continue;
          const bytes = await Deno.readFile(f.path);
          out.set(n, {
            data: new Float32Array(bytes.buffer, bytes.byteOffset, f.total),
            dims: f.dims,
          });
        }
        return out;
      },
      release: () => this.discard(),
    };
  }
}

/**
 * Bytes a capture may hold in memory before {@link captureStore} spills it to
 * files: `VITQ_CAPTURE_BUDGET_MIB` (default 2048). Spilling changes no value
 * (the same capture graph, run in smaller batches: ONNX Runtime's results per
 * image do not depend on the batch size, checked on the timm fixtures), only
 * memory and a little time.
 */
export function captureBudgetBytes(): number {
  const env = Deno.env.get("VITQ_CAPTURE_BUDGET_MIB");
  const mib = env === undefined ? 2048 : Number(env);
  if (!(mib > 0)) {
    throw new Error(`VITQ_CAPTURE_BUDGET_MIB: expected a positive number, got ${env}`);
  }
  return mib * 2 ** 20;
}

/** Run `calib` through a capture session in batches, pushing every value in `names` to `sink`. */
async function collectBatches(
  session: Session,
  names: string[],
  calib: ImageSource,
  batchSize: number,
  sink: Pick<BatchCollector, "push">,
): Promise<void> {
  await runBatches(session, calib, batchSize, (out, _start, n) => {
    for (const v of names) sink.push(v, out[v].data, out[v].dims, n);
  });
}

/**
 * {@link captureValues} into a {@link CaptureStore}: in memory, exactly as
 * `captureValues`, when all values of all images fit `budgetBytes` (measured
 * on a one-image probe run); otherwise spilled to files, capturing in batches
 * of at most a quarter of the budget.
 */
export async function captureStore(
  runtime: Runtime,
  graph: Graph,
  values: string[],
  calib: ImageSource,
  batchSize: number,
  budgetBytes = captureBudgetBytes(),
): Promise<CaptureStore> {
  const uniq = [...new Set(values)];
  const session = await runtime.createSession(captureGraph(graph, uniq), "capture graph");
  try {
    const probe = await session.run({
      [session.inputNames[0]]: { data: await calib.slice(0, 1), dims: [1, ...calib.shape] },
    });
    const perImage = uniq.reduce((a, v) => a + 4 * probe[v].data.length, 0);
    if (perImage * calib.length <= budgetBytes) {
      const parts = new BatchCollector(calib.length);
      await collectBatches(session, uniq, calib, batchSize, parts);
      return memoryStore(parts.finish());
    }
    const spill = await SpillCollector.create(calib.length);
    const batch = Math.max(1, Math.min(batchSize, Math.floor(budgetBytes / 4 / perImage)));
    try {
      await collectBatches(session, uniq, calib, batch, spill);
    } catch (e) {
      await spill.discard();
      throw e;
    }
    return spill.finish();
  } finally {
    await session.release();
  }
}

/**
 * Capture the full FP values of `values` over the calibration images,
 * concatenated along the first axis (images, or windows for Swin).
 */
export async function captureValues(
  runtime: Runtime,
  graph: Graph,
  values: string[],
  calib: ImageSource,
  batchSize: number,
): Promise<Map<string, Captured>> {
  const uniq = [...new Set(values)];
  const parts = new BatchCollector(calib.length);
  const session = await runtime.createSession(captureGraph(graph, uniq), "capture graph");
  try {
    await collectBatches(session, uniq, calib, batchSize, parts);
  } finally {
    await session.release();
  }
  return parts.finish();
}
