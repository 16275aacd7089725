/**
 * Command-line parsing shared by the tasks in `cli/`: `node:util`'s
 * `parseArgs` over `Deno.args`, a parse error as a one-line {@link VitqError}
 * ending in the usage line (exit 2 through `runCli`), and `--help` printing the
 * usage line (exit 0).
 *
 * @module
 */
import { parseArgs, type ParseArgsOptionsConfig } from "node:util";
import { VitqError } from "../core/errors.ts";

/** How a task takes its arguments besides its options. */
export interface CliShape {
  /** Whether positional arguments are accepted (default true). */
  positionals?: boolean;
  /** Whether `--help` prints the usage and ends the task (default true). */
  help?: boolean;
}

const HELP = { help: { type: "boolean", default: false } } as const;

/** What {@link parseCli} returns: the option values and the positional arguments. */
export type ParsedCli<O extends ParseArgsOptionsConfig> = ReturnType<
  typeof parseArgs<{ options: O; allowPositionals: true }>
>;

/**
 * Parse `Deno.args` with `options`; throws a VitqError naming the bad
 * argument and `usage`. Returns undefined after printing `usage` for `--help`
 * (the task then returns); never undefined with `help: false`.
 */
export function parseCli<const O extends ParseArgsOptionsConfig>(
  usage: string,
  options: O,
  shape: CliShape & { help: false },
): ParsedCli<O>;
export function parseCli<const O extends ParseArgsOptionsConfig>(
  usage: string,
  options: O,
  shape?: CliShape,
): ParsedCli<O> | undefined;
export function parseCli<const O extends ParseArgsOptionsConfig>(
  usage: string,
  options: O,
  shape: CliShape = {},
): ParsedCli<O> | undefined {
  const help = shape.help ?? true;
  let parsed;
  try {
    parsed = parseArgs({
      args: Deno.args,
      allowPositionals: shape.positionals ?? true,
      options: help ? { ...options, ...HELP } : options,
    });
  } catch (e) {
    throw new VitqError(`${(e as Error).message}; ${usage}`);
  }
  if (help && (parsed.values as { help?: boolean }).help) {
    console.log(usage);
    return undefined;
  }
  return parsed as ParsedCli<O>;
}
