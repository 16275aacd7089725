/**
 * Progress reporting: cells done and left, the current step of a long method,
 * the elapsed time and an estimate of the remaining time. On a terminal one
 * status line is redrawn in place; otherwise plain lines are printed.
 *
 * The estimate of a cell comes from stored timings of earlier cells
 * ({@link storedEstimates}: median calibration + evaluation seconds of the same
 * model, method and bits, else of the same model and method) and is scaled by
 * how long this run's finished cells took against their estimates, which takes
 * in what stored timings leave out (speed measurement, loading) and the load of
 * the machine. A cell without a stored timing counts as the mean of this run's
 * finished cells.
 *
 * @module
 */
import type { Store } from "./store.ts";
import type { Bits } from "../methods/types.ts";

/** What {@link storedEstimates} needs of a cell. */
export interface CellKey {
  id: string;
  method: string;
  label: string;
  model: string;
  bits: Bits;
}

/**
 * Estimated seconds of each cell (calibration + evaluation) from the stored
 * results of earlier cells: the median over cells of the same model, label and
 * bits, else the same model, method and bits, else the same model and method;
 * null when none is stored.
 */
export async function storedEstimates(
  store: Store,
  cells: CellKey[],
): Promise<Map<string, number | null>> {
  const rows = await store.query(
    `select model, method, label, w_bits, a_bits, calib_seconds + eval_seconds as s
       from results
      where status = 'ok' and calib_seconds is not null and eval_seconds is not null`,
  );
  const groups = new Map<string, number[]>();
  const add = (k: string, s: number) => (groups.get(k) ?? groups.set(k, []).get(k)!).push(s);
  for (const r of rows) {
    const s = Number(r.s);
    if (!isFinite(s)) continue;
    add(`L|${r.model}|${r.label}|${r.w_bits}/${r.a_bits}`, s);
    add(`B|${r.model}|${r.method}|${r.w_bits}/${r.a_bits}`, s);
    add(`M|${r.model}|${r.method}`, s);
  }
  const med = (k: string) => {
    const xs = groups.get(k);
    if (!xs?.length) return null;
    const s = [...xs].sort((a, b) => a - b), h = s.length >> 1;
    return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
  };
  const out = new Map<string, number | null>();
  for (const c of cells) {
    const bits = `${c.bits.w}/${c.bits.a}`;
    out.set(
      c.id,
      med(`L|${c.model}|${c.label}|${bits}`) ?? med(`B|${c.model}|${c.method}|${bits}`) ??
        med(`M|${c.model}|${c.method}`),
    );
  }
  return out;
}

/** Format seconds as `1h02m`, `3m05s` or `12s`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s >= 3600) {
    return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
  }
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

/**
 * The remaining-time estimate: `estimates` of the cells not finished (the
 * current one included, less its elapsed seconds), scaled by actual / estimated
 * seconds of the finished cells that had an estimate; a cell without one counts
 * as the mean of the finished cells. Null while nothing can be said.
 */
export function remainingSeconds(
  pending: (number | null)[],
  current: { estimate: number | null; elapsed: number } | null,
  finished: { estimate: number | null; actual: number }[],
): number | null {
  let est = 0, act = 0, all = 0;
  for (const f of finished) {
    all += f.actual;
    if (f.estimate !== null && f.estimate > 0) {
      est += f.estimate;
      act += f.actual;
    }
  }
  const scale = est > 0 ? act / est : 1;
  const mean = finished.length ? all / finished.length : null;
  const guess = (e: number | null) => (e !== null ? e * scale : mean);
  let total = 0;
  for (const e of pending) {
    const g = guess(e);
    if (g === null) return null;
    total += g;
  }
  if (current) {
    const g = guess(current.estimate);
    if (g === null) return null;
    total += Math.max(0, g - current.elapsed);
  }
  return total;
}

/** Progress over a known set of cells. */
export class Progress {
  private done = 0;
  private readonly tty: boolean;
  private readonly enc = new TextEncoder();
  private readonly t0 = performance.now();
  private label = "";
  private stepText = "";
  private current: { key: string | undefined; t0: number } | null = null;
  private readonly finished: { estimate: number | null; actual: number }[] = [];
  private readonly pending: Map<string, number | null>;
  private timer: ReturnType<typeof setInterval> | undefined;

  /**
   * @param total number of cells
   * @param quiet print nothing
   * @param estimates estimated seconds per cell key (see {@link storedEstimates}); keys
   *   passed to {@link start} are taken off as cells run
   */
  constructor(
    readonly total: number,
    private quiet = false,
    estimates: Map<string, number | null> = new Map(),
  ) {
    this.tty = !quiet && Deno.stderr.isTerminal();
    this.pending = new Map(estimates);
  }

  private width(): number {
    try {
      return Math.max(60, Deno.consoleSize().columns - 1);
    } catch {
      return 120;
    }
  }

  /** Elapsed time and the remaining-time estimate, e.g. `1m05s elapsed, ~3m10s left`. */
  timing(): string {
    const now = performance.now();
    const key = this.current?.key;
    const pending = [...this.pending.entries()].filter(([k]) => k !== key).map(([, v]) => v);
    // cells without a key count as unknown
    const unkeyed = Math.max(
      0,
      this.total - this.done - (this.current ? 1 : 0) - pending.length,
    );
    const cur = this.current
      ? {
        estimate: key !== undefined ? this.pending.get(key) ?? null : null,
        elapsed: (now - this.current.t0) / 1000,
      }
      : null;
    const left = remainingSeconds(
      [...pending, ...Array(unkeyed).fill(null)],
      cur,
      this.finished,
    );
    return `${formatDuration((now - this.t0) / 1000)} elapsed, ${
      left === null ? "time left unknown" : `~${formatDuration(left)} left`
    }`;
  }

  private counts(): string {
    return `${this.done}/${this.total} done, ${this.total - this.done} left`;
  }

  private draw(): void {
    if (!this.tty) return;
    const w = this.width();
    const barW = 16, filled = Math.round((barW * this.done) / Math.max(1, this.total));
    const bar = "#".repeat(filled) + "-".repeat(barW - filled);
    const parts = [`[${bar}] ${this.counts()}`, this.timing(), this.label];
    if (this.stepText) parts.push(this.stepText);
    const line = parts.join(" | ").slice(0, w);
    Deno.stderr.writeSync(this.enc.encode(`\r${line.padEnd(w)}`));
  }

  private clear(): void {
    if (this.tty) Deno.stderr.writeSync(this.enc.encode(`\r${" ".repeat(this.width())}\r`));
  }

  /** Announce the cell now starting; `key` identifies its estimate. */
  start(label: string, key?: string): void {
    this.label = label;
    this.stepText = "";
    this.current = { key, t0: performance.now() };
    if (this.quiet) return;
    if (this.tty) {
      this.draw();
      // redraw once a second so the clock moves during long steps
      clearInterval(this.timer);
      const timer = setInterval(() => this.draw(), 1000);
      Deno.unrefTimer(timer as unknown as number);
      this.timer = timer;
    } else {
      console.error(`[${this.done + 1}/${this.total}] ${label} (${this.timing()})`);
    }
  }

  /**
   * The current step of a long method (e.g. `b7.fc1 round 2/3`): shown on the
   * status line of a terminal, not printed otherwise.
   */
  step(msg: string): void {
    this.stepText = msg;
    if (!this.quiet) this.draw();
  }

  /** Mark the current cell finished, with a result summary. */
  finish(summary: string): void {
    this.done++;
    if (this.current) {
      const key = this.current.key;
      this.finished.push({
        estimate: key !== undefined ? this.pending.get(key) ?? null : null,
        actual: (performance.now() - this.current.t0) / 1000,
      });
      if (key !== undefined) this.pending.delete(key);
    }
    this.current = null;
    this.stepText = "";
    clearInterval(this.timer);
    this.timer = undefined;
    if (this.quiet) return;
    this.clear();
    console.error(`  ${summary} [${this.counts()}; ${this.timing()}]`);
  }

  /** Log a line without disturbing the status line. */
  log(msg: string): void {
    if (this.quiet) return;
    this.clear();
    console.error(msg);
    if (this.current) this.draw();
  }
}
