/**
 * Integer sums: the residual add of two data values and the add of a
 * constant (position embedding), both operands requantized to the calibrated
 * output step (I-ViT's QuantAct with an identity branch), and the mean over
 * tokens as an integer ReduceSum with 1/T folded into the scale.
 *
 * @module
 */
import type { Node } from "../../onnx/graph.ts";
import { VitqError } from "../../errors.ts";
import { ivitSymmetricStep, quantizeSymmetric } from "../reference.ts";
import { dyadic15, INT32_MAX, requantConst, requantValue } from "../kernels.ts";
import { int32Tensor } from "../program.ts";
import { attrInts, attrNum, constTensor } from "./graph.ts";
import { type IVal, type LowerState, typeOfBits, typeRange } from "./state.ts";

/** An operand of an add: per tensor or per channel along the last axis. */
function addOperand(st: LowerState, fp: string): IVal {
  const iv = st.get(fp);
  if (iv.scale.length === 1 || iv.axis === iv.rank - 1) return iv;
  return st.need(fp, "small", st.R);
}

/** Residual add of two data values: both requantized to the calibrated output step, summed. */
export function lowerAdd2(st: LowerState, n: Node): void {
  const a = addOperand(st, n.inputs[0]);
  const b = addOperand(st, n.inputs[1]);
  const sOut = st.actStep(n.outputs[0], st.R);
  const qa = st.requant(a, sOut, null, `${n.name} operand 0`);
  const qb = st.requant(b, sOut, null, `${n.name} operand 1`);
  if (
    qa.hi + qb.hi > INT32_MAX || qa.lo + qb.lo < -INT32_MAX - 1
  ) throw new VitqError(`${st.source}: I-ViT: sum of ${n.name} may exceed int32`);
  const out = st.fresh(n.outputs[0]);
  const outType = typeOfBits(st.R);
  st.push({ kind: "add", a: qa.name, b: qb.name, out, bits: st.R, outType });
  const [lo, hi] = typeRange(st.R);
  st.setVal(n.outputs[0], {
    name: out,
    type: outType,
    lo: Math.max(lo, qa.lo + qb.lo),
    hi: Math.min(hi, qa.hi + qb.hi),
    scale: [sOut],
    axis: -1,
    rank: st.rank(n.outputs[0]),
    add: null,
    zp: 0,
  });
}

/** Add of a constant (position embedding): the constant quantized to 8 bits, requantized, added. */
export function lowerAddConst(st: LowerState, n: Node, d: number): void {
  const a = addOperand(st, n.inputs[d]);
  const t = constTensor(st.g, st.cls.idx, n.inputs[1 - d])!;
  const c = t.numbers();
  const absMax = c.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  const sc = ivitSymmetricStep(absMax, st.A);
  const codes = quantizeSymmetric(c, sc, st.A);
  st.weightRecord(n.inputs[1 - d], c, codes, [sc]);
  const sOut = st.actStep(n.outputs[0], st.R);
  const qa = st.requant(a, sOut, null, `${n.name} data operand`);
  const rc = requantConst(dyadic15(sc / sOut), 0n);
  const qc = codes.map((v) => requantValue(v, rc, null));
  const cLo = Math.min(...qc), cHi = Math.max(...qc);
  if (qa.hi + cHi > INT32_MAX || qa.lo + cLo < -INT32_MAX - 1) {
    throw new VitqError(`${st.source}: I-ViT: sum of ${n.name} may exceed int32`);
  }
  const cName = st.init(int32Tensor(st.fresh(`${n.inputs[1 - d]}_q`), t.dims, qc));
  const out = st.fresh(n.outputs[0]);
  const outType = typeOfBits(st.R);
  st.push({ kind: "add", a: qa.name, b: cName, out, bits: st.R, outType });
  const [lo, hi] = typeRange(st.R);
  st.setVal(n.outputs[0], {
    name: out,
    type: outType,
    lo: Math.max(lo, qa.lo + cLo),
    hi: Math.min(hi, qa.hi + cHi),
    scale: [sOut],
    axis: -1,
    rank: st.rank(n.outputs[0]),
    add: null,
    zp: 0,
  });
}

/**
 * Mean over tokens (Swin's pooling before the head): I-ViT's 8-bit QuantAct
 * on the input, an integer ReduceSum over the T reduced elements, and 1/T
 * folded into the scale, so that the next requantization applies it inside
 * its dyadic multiplier.
 */
export function lowerMean(st: LowerState, n: Node): void {
  const dimsIn = st.env.dims(n.inputs[0]);
  const rankIn = dimsIn.length;
  const axes = (attrInts(n, "axes") ?? constTensor(st.g, st.cls.idx, n.inputs[1])!.numbers())
    .map((a) => (a < 0 ? a + rankIn : a));
  if (axes.includes(0)) {
    throw new VitqError(`${st.source}: I-ViT: ReduceMean ${n.name} averages over the batch`);
  }
  const T = axes.reduce((p, a) => p * dimsIn[a], 1);
  const x = st.need(n.inputs[0], "small", st.A);
  if (T * Math.max(Math.abs(x.lo), Math.abs(x.hi)) > INT32_MAX) {
    throw new VitqError(`${st.source}: I-ViT: sum of ${n.name} may exceed int32`);
  }
  const out = st.fresh(n.outputs[0]);
  st.push({
    kind: "reducesum",
    x: x.name,
    xType: x.type,
    xZp: x.zp,
    out,
    axes: [...axes].sort((a, b) => a - b),
    keepdims: attrNum(n, "keepdims", 1) === 1,
  });
  st.prog.types.set(out, "int32");
  st.setVal(n.outputs[0], {
    name: out,
    type: "int32",
    lo: T * x.lo,
    hi: T * x.hi,
    scale: [x.scale[0] / T],
    axis: -1,
    rank: st.rank(n.outputs[0]),
    add: null,
    zp: 0,
  });
}
