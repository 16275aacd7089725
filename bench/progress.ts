/**
 * Progress reporting: a redrawn bar on a terminal, plain lines otherwise.
 *
 * @module
 */

/** Progress over a known number of steps. */
export class Progress {
  private done = 0;
  private readonly tty: boolean;
  private readonly enc = new TextEncoder();
  /** @param total number of steps; @param quiet print nothing */
  constructor(readonly total: number, private quiet = false) {
    this.tty = !quiet && Deno.stderr.isTerminal();
  }

  /** Announce the step now starting. */
  start(label: string): void {
    if (this.quiet) return;
    if (this.tty) {
      const width = 24, filled = Math.round((width * this.done) / Math.max(1, this.total));
      const bar = "#".repeat(filled) + "-".repeat(width - filled);
      const line = `\r[${bar}] ${this.done}/${this.total} ${label}`.slice(0, 120);
      Deno.stderr.writeSync(this.enc.encode(line.padEnd(120)));
    } else {
      console.error(`[${this.done + 1}/${this.total}] ${label}`);
    }
  }

  /** Mark a step finished, with a result summary. */
  finish(summary: string): void {
    this.done++;
    if (this.quiet) return;
    if (this.tty) Deno.stderr.writeSync(this.enc.encode(`\r${" ".repeat(120)}\r`));
    console.error(`  ${summary}`);
  }

  /** Log a line without disturbing the bar. */
  log(msg: string): void {
    if (this.quiet) return;
    if (this.tty) Deno.stderr.writeSync(this.enc.encode(`\r${" ".repeat(120)}\r`));
    console.error(msg);
  }
}
