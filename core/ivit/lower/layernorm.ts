/**
 * LayerNorm → I-LayerNorm: integer mean and variance, I-ViT's integer sqrt
 * from a start no larger than the calibrated range needs, γ folded into the
 * per-channel scale (its sign into the kernel) and β into a per-channel bias.
 *
 * @module
 */
import type { Node } from "../../onnx/graph.ts";
import type { Site } from "../../onnx/sites.ts";
import { VitqError } from "../../errors.ts";
import { layerNormPrescale, layerNormStart } from "../kernels.ts";
import { attrNum, constTensor } from "./graph.ts";
import type { LowerState } from "./state.ts";

/** γ and β of a LayerNorm site, from the constants the site finder names (γ = 1, β = 0 when absent). */
function lnParams(
  st: LowerState,
  n: Node,
  site: Site,
  C: number,
): { gamma: number[]; beta: number[] } {
  const vec = (v: string | undefined, dflt: number): number[] => {
    if (!v) return new Array(C).fill(dflt);
    const t = constTensor(st.g, st.cls.idx, v);
    if (!t) throw new VitqError(`${st.source}: I-ViT: LayerNorm ${n.name}: γ/β not constant`);
    const a = t.numbers();
    return Array.from({ length: C }, (_, i) => a[i % a.length]);
  };
  if (n.opType === "LayerNormalization") {
    const rank = st.rank(n.inputs[0]);
    const axis = attrNum(n, "axis", -1);
    if (axis !== -1 && axis !== rank - 1) {
      throw new VitqError(`${st.source}: I-ViT: LayerNorm ${n.name} not over the last axis`);
    }
  }
  return { gamma: vec(site.gamma, 1), beta: vec(site.beta, 0) };
}

/** LayerNorm site → I-LayerNorm on its (reference: 16-bit) input; γ, β folded into scale and bias. */
export function lowerLayerNorm(st: LowerState, n: Node, site: Site): void {
  const x = st.need(site.input!, "small", st.R);
  const C = st.env.dims(site.input!).at(-1)!;
  const { gamma, beta } = lnParams(st, n, site, C);
  const a = layerNormPrescale(C, x.hi - x.lo);
  const k0 = layerNormStart(a, C, x.hi - x.lo);
  if (a > 0) st.prog.facts.push(`${site.id}: Σy² after a right shift by ${a}, sqrt from ${k0}`);
  else if (k0 < 2 ** 16) st.prog.facts.push(`${site.id}: sqrt from ${k0} (I-ViT: 2^16)`);
  const sLn = Math.sqrt(C) / 2 ** 30;
  const sign = gamma.map((gm, c) => {
    if (!(gm !== 0 && Number.isFinite(gm))) {
      throw new VitqError(`${st.source}: I-ViT: LayerNorm ${site.id}: γ[${c}] = ${gm}`);
    }
    return gm < 0 ? -1 : 1;
  });
  const add = gamma.map((gm, c) => {
    const b = Math.floor(beta[c] / gm / sLn);
    if (!Number.isSafeInteger(b)) {
      throw new VitqError(`${st.source}: I-ViT: LayerNorm ${site.id}: bias of channel ${c}`);
    }
    return BigInt(sign[c] * b);
  });
  const out = st.fresh(site.output);
  st.push({
    kind: "layernorm",
    x: x.name,
    out,
    channels: C,
    prescale: a,
    yMax: x.hi - x.lo,
    k0,
    steps: 10,
    sign: sign.some((v) => v < 0) ? sign : null,
  });
  const rank = st.rank(site.output);
  st.setVal(site.output, {
    name: out,
    type: "int32",
    lo: -(2 ** 30),
    hi: 2 ** 30 - 1,
    scale: gamma.map((gm) => sLn * Math.abs(gm)),
    axis: rank - 1,
    rank,
    add,
    zp: 0,
  });
}
