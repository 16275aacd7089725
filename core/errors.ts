/**
 * One error type for every bad input vitq can meet. The command-line tools print
 * `error: <message>` on one line and exit with code 2 when they catch it.
 *
 * @module
 */

/** A user-facing error: bad manifest, unknown method or model, unreadable file. */
export class VitqError extends Error {
  /** Process exit code the CLI uses for this error. */
  readonly exitCode: number;
  /**
   * @param message one line naming the file and the field or op at fault
   * @param exitCode process exit code (2 for bad input)
   */
  constructor(message: string, exitCode = 2) {
    super(message.replace(/\s*\n\s*/g, " "));
    this.name = "VitqError";
    this.exitCode = exitCode;
  }
}

/**
 * Run a CLI entry point: a {@link VitqError} (or any error) becomes one line on
 * stderr and a non-zero exit code.
 */
export async function runCli(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (err) {
    if (err instanceof VitqError) {
      console.error(`error: ${err.message}`);
      Deno.exit(err.exitCode);
    }
    const e = err as Error;
    console.error(`error: ${e?.message ?? String(err)}`);
    if (Deno.env.get("VITQ_DEBUG")) console.error(e?.stack);
    Deno.exit(1);
  }
}
