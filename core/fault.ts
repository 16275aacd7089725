/**
 * Fault injection for the crash tests (`tests/kill.test.ts`): when the
 * environment variable `VITQ_FAULT` is `<point>` or `<point>:<n>`, the process
 * kills itself with SIGKILL the first (or n-th) time it passes that point. Unset,
 * every point is a no-op.
 *
 * @module
 */

let spec: string | undefined;
try {
  spec = Deno.env.get("VITQ_FAULT") || undefined;
} catch {
  spec = undefined; // no env permission: no faults
}
const passes = new Map<string, number>();

/** Die here (SIGKILL) when `VITQ_FAULT` names this point and pass. */
export function faultPoint(name: string): void {
  if (!spec) return;
  const [point, nth] = spec.split(":");
  if (point !== name) return;
  const k = (passes.get(name) ?? 0) + 1;
  passes.set(name, k);
  if (k === Number(nth ?? 1)) Deno.kill(Deno.pid, "SIGKILL");
}
