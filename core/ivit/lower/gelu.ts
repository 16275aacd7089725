/**
 * GELU → ShiftGELU on the 8-bit fc1 output (computed in int32).
 *
 * @module
 */
import type { Site } from "../../onnx/sites.ts";
import { VitqError } from "../../errors.ts";
import { INT31_MAX } from "../reference.ts";
import type { LowerState } from "./state.ts";

/** GELU site → ShiftGELU on the int32 form of its 8-bit input (n lowered until −x0·2^n fits int32). */
export function lowerGelu(st: LowerState, site: Site): void {
  const x = st.need(site.input!, "val8");
  const s = x.scale[0];
  const x0 = Math.floor(-1 / (1.702 * s));
  let nExp = 23;
  while (nExp > 1 && -x0 * 2 ** nExp > INT31_MAX) nExp--;
  if (-x0 * 2 ** nExp > INT31_MAX) {
    throw new VitqError(`${st.source}: I-ViT: GELU ${site.id}: input step ${s} too small`);
  }
  if (nExp !== 23) st.prog.facts.push(`${site.id}: ShiftGELU n = ${nExp} (23 overflows int32)`);
  const out = st.fresh(site.output);
  const N = st.env.dims(site.input!).at(-1)!;
  st.push({
    kind: "shiftgelu",
    x: x.name,
    out,
    scale: s,
    x0,
    xZp: x.zp,
    n: nExp,
    bits: st.SIGMA,
    rowLength: N,
  });
  const bound = Math.max(Math.abs(x.lo), Math.abs(x.hi)) * (2 ** (st.SIGMA - 1) - 1);
  st.setVal(site.output, {
    name: out,
    type: "int32",
    lo: -bound,
    hi: bound,
    scale: [s / 2 ** (st.SIGMA - 1)],
    axis: -1,
    rank: st.rank(site.output),
    add: null,
    zp: 0,
  });
}
