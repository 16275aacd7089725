/**
 * Softmax → Shiftmax on 8-bit scores (16- or 8-bit output), and the attention
 * scores plus a constant (Swin's relative position bias and shifted-window
 * mask) added in int32 at the scores' step before Shiftmax.
 *
 * @module
 */
import type { Node } from "../../onnx/graph.ts";
import { VitqError } from "../../errors.ts";
import { INT31_MAX } from "../reference.ts";
import { roundHalfEven } from "../../quant/uniform.ts";
import { int32Tensor } from "../program.ts";
import { attrNum, traceConstTerms } from "./graph.ts";
import type { LowerState } from "./state.ts";

/** Softmax over the last axis → Shiftmax on 8-bit (or score-biased int32) input. */
export function lowerSoftmax(st: LowerState, n: Node): void {
  const rank = st.rank(n.inputs[0]);
  const axis = attrNum(n, "axis", st.g.opset >= 13 ? -1 : 1);
  if (axis !== -1 && axis !== rank - 1) {
    throw new VitqError(`${st.source}: I-ViT: Softmax ${n.name} is not over the last axis`);
  }
  const iv = st.get(n.inputs[0]);
  const x = iv.wide ? iv : st.need(n.inputs[0], "val8");
  const s = x.scale[0];
  const nExp = 15;
  const x0 = Math.floor(-1 / s);
  const eMax = -x0 * 2 ** nExp;
  if (eMax > INT31_MAX) {
    throw new VitqError(
      `${st.source}: I-ViT: Softmax ${n.name}: input step ${s} too small for int32 ShiftExp`,
    );
  }
  const N = st.env.dims(n.inputs[0]).at(-1)!;
  const splitSum = N * eMax > INT31_MAX;
  if (splitSum) {
    if (N >= 2 ** 15) throw new VitqError(`${st.source}: I-ViT: Softmax row too long`);
    st.prog.facts.push(`${n.name}: Σexp may pass 2^31−1, summed in 16-bit halves`);
  }
  const out = st.fresh(n.outputs[0]);
  // 8-bit output: uint8 operand of MatMulInteger; 16-bit: kept in int32 for the int32 MatMul
  const outType = st.SM <= 8 ? "uint8" : "int32";
  st.push({
    kind: "shiftmax",
    x: x.name,
    out,
    scale: s,
    x0,
    n: nExp,
    bits: st.SM,
    outType,
    rowLength: N,
    splitSum,
  });
  st.setVal(n.outputs[0], {
    name: out,
    type: outType,
    lo: 0,
    hi: 2 ** (st.SM - 1) - 1,
    scale: [1 / 2 ** (st.SM - 1)],
    axis: -1,
    rank,
    add: null,
    zp: 0,
    nonneg: true,
  });
}

/**
 * Attention scores + a constant (Swin's relative position bias, with the
 * shifted-window mask folded in by the exporter): I-ViT's 8-bit QuantAct on
 * the scores, the constant quantized at that same step into int32 and
 * added without a clamp, so that a −100 mask stays far below the row
 * maximum and Shiftmax gives it (almost) no weight; I-ViT adds its mask at
 * the scores' scale the same way. A second constant add on the result
 * (bias, then mask, as timm exports them) reuses the step.
 */
export function lowerScoreBias(st: LowerState, n: Node, d: number): void {
  const fp = n.inputs[d];
  const iv = st.get(fp);
  let x = iv.wide ? iv : st.need(fp, "val8");
  if (x.type !== "int32" || x.zp !== 0) {
    x = st.requant(x, x.scale[0], st.A, `${n.name} scores`, "int32");
  }
  const s = x.scale[0];
  const other = n.inputs[1 - d];
  const terms = traceConstTerms(st.g, st.cls.idx, other);
  if (!terms) {
    throw new VitqError(`${st.source}: I-ViT: cannot quantize the constant operand ${other}`);
  }
  // each term (bias; expanded mask) quantized at the scores' step and replayed; summed in int32
  let cLo = 0, cHi = 0, cName = "";
  for (const { base, chain, value } of terms) {
    const c = base.numbers();
    const codes = Array.from(c, (v) => roundHalfEven(v / s));
    let tLo = 0, tHi = 0;
    for (const q of codes) {
      if (!Number.isSafeInteger(q)) {
        throw new VitqError(
          `${st.source}: I-ViT: constant ${other} of ${n.name} is not finite`,
        );
      }
      if (q < tLo) tLo = q;
      if (q > tHi) tHi = q;
    }
    cLo += tLo;
    cHi += tHi;
    // a Constant node's tensor may have no name: record the value it defines
    const named = base.name || value;
    st.weightRecord(named, c, codes, [s], 32, "per-tensor at the scores' step, int32");
    const term = st.replayChain(
      st.init(int32Tensor(st.fresh(`${named}_q`), base.dims, codes)),
      chain,
      "int32",
    );
    if (cName === "") {
      cName = term;
    } else {
      const sum = st.fresh(`${other}_q`);
      st.push({ kind: "add", a: cName, b: term, out: sum, bits: 32, outType: "int32" });
      st.prog.types.set(sum, "int32");
      cName = sum;
    }
  }
  const lo = x.lo + cLo, hi = x.hi + cHi;
  // ShiftExp forms about 1.4375·(x − rowmax) in int32
  if (hi - lo >= 2 ** 30) {
    throw new VitqError(
      `${st.source}: I-ViT: scores plus ${other} of ${n.name} span ${hi - lo} steps (≥ 2^30)`,
    );
  }
  const out = st.fresh(n.outputs[0]);
  st.push({ kind: "add", a: x.name, b: cName, out, bits: 32, outType: "int32" });
  st.setVal(n.outputs[0], {
    name: out,
    type: "int32",
    lo,
    hi,
    scale: [s],
    axis: -1,
    rank: st.rank(n.outputs[0]),
    add: null,
    zp: 0,
    wide: true,
  });
}
