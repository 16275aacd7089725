/**
 * Calibration data shared by consecutive cells (e.g. PTQ4ViT's captured values
 * and output gradients, the same for every bit setting of one model and
 * calibration set), keyed explicitly: the model hash and the calibration-set
 * hash the runner carries on the {@link QuantContext}, plus whatever else the
 * data depends on. Nothing is keyed by object identity.
 *
 * @module
 */
import { canonicalJson } from "../core/hash.ts";
import type { QuantContext } from "./types.ts";

/**
 * A one-entry cache: the last computed value and its key. One entry is enough
 * because the runner runs a model's cells of one calibration set one after the
 * other, and it keeps memory to one model's calibration data.
 */
export class CellCache<T> {
  private entry?: { key: string; value: Promise<T> };

  /** @param evict called with a value when a new key replaces it (e.g. to delete its files) */
  constructor(private evict?: (value: T) => void) {}

  /**
   * The value for this cell: the cached one when the model hash, the
   * calibration hash, the number of calibration images and `depends` all
   * equal the last call's; else `compute()` (a failed computation is not kept).
   */
  get(
    ctx: Pick<QuantContext, "modelHash" | "calibHash" | "calib">,
    depends: unknown,
    compute: () => Promise<T>,
  ): Promise<T> {
    const key = canonicalJson([ctx.modelHash, ctx.calibHash, ctx.calib.length, depends]);
    if (this.entry?.key === key) return this.entry.value;
    this.clear();
    const value = compute();
    const entry = { key, value };
    this.entry = entry;
    value.catch(() => {
      if (this.entry === entry) this.entry = undefined;
    });
    return value;
  }

  /** Drop the cached value (passing it to `evict` once it has settled). */
  clear(): void {
    const old = this.entry;
    this.entry = undefined;
    if (old && this.evict) old.value.then(this.evict, () => {});
  }
}
