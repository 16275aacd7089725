/**
 * Facts about the machine and the software, stored with every run.
 *
 * @module
 */

/** Machine and version information for the `runs` table. */
export interface EnvInfo {
  cpu: string;
  cpuFlags: string;
  cores: number;
  deno: string;
  gitCommit: string;
  /** vitq's version, as `deno.json` states it. */
  vitq: string;
}

const FLAGS = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16"];

/** vitq's version from `deno.json` ("unknown" when it cannot be read). */
export async function vitqVersion(): Promise<string> {
  try {
    const cfg = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
    return typeof cfg.version === "string" ? cfg.version : "unknown";
  } catch {
    return "unknown";
  }
}

/** Collect CPU model, relevant instruction-set flags, core count, Deno version and git commit. */
export async function envInfo(): Promise<EnvInfo> {
  let cpu = "unknown", flags: string[] = [];
  try {
    const info = await Deno.readTextFile("/proc/cpuinfo");
    cpu = info.match(/model name\s*:\s*(.+)/)?.[1]?.trim() ?? "unknown";
    const all = new Set((info.match(/flags\s*:\s*(.+)/)?.[1] ?? "").split(/\s+/));
    flags = FLAGS.filter((f) => all.has(f));
  } catch { /* not Linux */ }
  let gitCommit = "unknown";
  try {
    const out = await new Deno.Command("git", {
      args: ["rev-parse", "HEAD"],
      cwd: new URL("../", import.meta.url).pathname,
      stdout: "piped",
      stderr: "null",
    }).output();
    if (out.success) gitCommit = new TextDecoder().decode(out.stdout).trim();
  } catch { /* no git */ }
  return {
    cpu,
    cpuFlags: flags.join(" "),
    cores: navigator.hardwareConcurrency,
    deno: Deno.version.deno,
    gitCommit,
    vitq: await vitqVersion(),
  };
}

/**
 * Resident memory of this process in MiB from /proc/self/status: `VmHWM` is
 * the peak so far, `VmRSS` the current value (NaN where /proc is missing).
 */
export function memoryMiB(field: "VmHWM" | "VmRSS" = "VmHWM"): number {
  try {
    const status = Deno.readTextFileSync("/proc/self/status");
    return Number(status.match(new RegExp(`${field}:\\s+(\\d+) kB`))![1]) / 1024;
  } catch {
    return NaN;
  }
}
