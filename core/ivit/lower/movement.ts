/**
 * Data movement on integer codes: Reshape/Transpose/Gather/Slice/... as the
 * same node, constant Pad with the pad value quantized at the value's step,
 * and Concat (class token: requantized to one step; values already in one
 * integer form: as is).
 *
 * @module
 */
import type { Node } from "../../onnx/graph.ts";
import { VitqError } from "../../errors.ts";
import { quantizeSymmetric } from "../reference.ts";
import { roundHalfEven } from "../../quant/uniform.ts";
import { int32Tensor, int8Tensor, uint8Tensor } from "../program.ts";
import { attrNum, constTensor } from "./graph.ts";
import { type LowerState, typeRange } from "./state.ts";

/**
 * Constant Pad (the 28→32 image padding of the Swin models): the same Pad
 * on the integer codes, the pad value quantized at the value's step plus
 * its zero point (0.0 → code 128 of the uint8 image).
 */
export function lowerPad(st: LowerState, n: Node): void {
  const iv0 = st.get(n.inputs[0]);
  const ok = iv0.scale.length === 1 && !iv0.add &&
    (iv0.type === "uint8" || iv0.type === "int8" || iv0.type === "int32");
  // ONNX Runtime's CPU Pad has no int16 kernel: other forms become 8-bit codes
  const iv = ok ? iv0 : st.need(n.inputs[0], "act8");
  const cv = n.inputs[2] ? constTensor(st.g, st.cls.idx, n.inputs[2])!.numbers()[0] : 0;
  const v = roundHalfEven(cv / iv.scale[0]);
  const code = v + iv.zp;
  const [tLo, tHi] = iv.type === "uint8"
    ? [0, 255]
    : iv.type === "int8"
    ? [-128, 127]
    : [-(2 ** 31), 2 ** 31 - 1];
  if (!(code >= tLo && code <= tHi)) {
    throw new VitqError(`${st.source}: I-ViT: pad value ${cv} of ${n.name} does not fit`);
  }
  const make = iv.type === "uint8" ? uint8Tensor : iv.type === "int8" ? int8Tensor : int32Tensor;
  const cName = st.init(make(st.fresh(`${n.name}_value`), [], [code]));
  for (const i of n.inputs.slice(1)) {
    const t = i ? st.g.initializers.get(i) : undefined;
    if (t) st.prog.initializers.set(i, t);
  }
  const out = st.fresh(n.outputs[0]);
  st.push({
    kind: "node",
    node: { ...n, inputs: [iv.name, n.inputs[1], cName, ...n.inputs.slice(3)], outputs: [out] },
  });
  st.setVal(n.outputs[0], { ...iv, name: out, lo: Math.min(iv.lo, v), hi: Math.max(iv.hi, v) });
}

/** Concat: as is when the inputs share one integer form, else requantized to one 8-bit step. */
export function lowerConcat(st: LowerState, n: Node): void {
  if (concatAsIs(st, n)) return;
  const sOut = st.actStep(n.outputs[0], st.A);
  const inputs = n.inputs.map((v) => {
    if (st.cls.data.has(v)) {
      return st.requant(st.get(v), sOut, st.A, `${n.name} input ${v}`, "u8").name;
    }
    const { base, chain } = st.traceConst(v);
    const codes = quantizeSymmetric(base.numbers(), sOut, st.A).map((q) => q + 128);
    const name = st.init(uint8Tensor(st.fresh(`${base.name}_q`), base.dims, codes));
    return st.replayChain(name, chain, "uint8");
  });
  const out = st.fresh(n.outputs[0]);
  st.push({ kind: "node", node: { ...n, inputs, outputs: [out] } });
  const [lo, hi] = typeRange(st.A);
  st.setVal(n.outputs[0], {
    name: out,
    type: "uint8",
    lo,
    hi,
    scale: [sOut],
    axis: -1,
    rank: st.rank(n.outputs[0]),
    add: null,
    zp: 128,
  });
}

/**
 * Concat of data values that share one integer form (type, zero point,
 * scales, folded bias; not along a per-channel axis): the same Concat on
 * the codes, no requantization (Swin's cyclic shift as Slice + Concat, and
 * PatchMerging's strided slices concatenated along channels).
 */
function concatAsIs(st: LowerState, n: Node): boolean {
  if (!n.inputs.every((v) => st.cls.data.has(v))) return false;
  const ivs = n.inputs.map((v) => st.get(v));
  const a = ivs[0];
  const same = (x: readonly unknown[] | null, y: readonly unknown[] | null) =>
    x === y || (!!x && !!y && x.length === y.length && x.every((v, i) => v === y[i]));
  const alike = ivs.every((b) =>
    b.type === a.type && b.zp === a.zp && b.axis === a.axis && b.rank === a.rank &&
    !!b.wide === !!a.wide && !!b.nonneg === !!a.nonneg && same(b.scale, a.scale) &&
    same(b.add, a.add)
  );
  if (!alike) return false;
  let axis = attrNum(n, "axis", 0);
  if (axis < 0) axis += a.rank;
  if (a.scale.length > 1 && axis === a.axis) return false;
  const out = st.fresh(n.outputs[0]);
  st.push({ kind: "node", node: { ...n, inputs: ivs.map((v) => v.name), outputs: [out] } });
  st.setVal(n.outputs[0], {
    ...a,
    name: out,
    lo: Math.min(...ivs.map((v) => v.lo)),
    hi: Math.max(...ivs.map((v) => v.hi)),
  });
  return true;
}

/**
 * Data movement (Reshape, Transpose, Gather, Slice, ...): the same node on the
 * codes; per-channel or folded-bias forms are requantized first unless the
 * node keeps the channel axis last.
 */
export function lowerStruct(st: LowerState, n: Node): void {
  const iv0 = st.get(n.inputs[0]);
  const rankIn = iv0.rank;
  let passChannels = false;
  if (n.opType === "Identity") passChannels = true;
  if (n.opType === "Gather" && iv0.axis === rankIn - 1) {
    let axis = attrNum(n, "axis", 0);
    if (axis < 0) axis += rankIn;
    passChannels = axis < rankIn - 1;
  }
  const plain = iv0.scale.length === 1 && !iv0.add &&
    (iv0.type === "int8" || iv0.type === "int16" || !!iv0.wide);
  const iv = plain || passChannels ? iv0 : st.need(n.inputs[0], "small", st.A);
  for (const v of n.inputs.slice(1)) {
    const t = v ? st.g.initializers.get(v) : undefined;
    if (t) st.prog.initializers.set(v, t);
  }
  const outs = n.outputs.map((o) => st.fresh(o));
  st.push({
    kind: "node",
    node: { ...n, inputs: [iv.name, ...n.inputs.slice(1)], outputs: outs },
  });
  n.outputs.forEach((o, i) => {
    const rank = st.rank(o);
    st.setVal(o, {
      ...iv,
      name: outs[i],
      rank,
      axis: iv.scale.length === 1 ? -1 : rank - 1,
    });
  });
}
