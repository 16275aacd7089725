/**
 * Linear layers and attention matmuls: per-channel symmetric weights,
 * `MatMulInteger`/`ConvInteger` with int32 accumulation, the bias folded into
 * the accumulator, then I-ViT's QuantAct (a dyadic requantization); attention
 * matmuls as integer matmuls of the 8-bit (or 16-bit Shiftmax) operands.
 *
 * @module
 */
import type { Node, Tensor } from "../../onnx/graph.ts";
import type { Site } from "../../onnx/sites.ts";
import { VitqError } from "../../errors.ts";
import { quantizeWeightsPerChannel } from "../reference.ts";
import { roundHalfEven } from "../../quant/uniform.ts";
import { INT32_MAX } from "../kernels.ts";
import { int8Tensor } from "../program.ts";
import { attrInts, attrNum, constTensor } from "./graph.ts";
import type { IVal, LowerState } from "./state.ts";

/** A linear layer's float weight laid out channel-first, and its bias and Gemm factors. */
interface LinearWeight {
  /** The weight constant as stored. */
  wt: Tensor;
  /** Output channels. */
  N: number;
  /** Reduction length per channel. */
  K: number;
  /** The weight as [N, K] (Conv: [N, C·kh·kw]). */
  chanFirst: Float32Array;
  /** Bias constant, if any (Conv/Gemm input 2, or the Add a MatMul site absorbs). */
  biasT?: Tensor;
  /** Gemm's alpha (1 otherwise). */
  alpha: number;
  /** Gemm's beta (1 otherwise). */
  beta: number;
}

/** Read the weight, bias and layout of a linear site's Conv, Gemm or MatMul node. */
function linearWeight(st: LowerState, n: Node, site: Site): LinearWeight {
  const { g } = st;
  const wt = g.initializers.get(site.weight!) ?? constTensor(g, st.cls.idx, n.inputs[1]);
  if (!wt) throw new VitqError(`${st.source}: I-ViT: weight of ${n.name} is not a constant`);
  const w = wt.float32();
  if (n.opType === "Conv") {
    if (attrNum(n, "group", 1) !== 1) {
      throw new VitqError(`${st.source}: I-ViT: grouped Conv ${n.name} is not supported`);
    }
    const autoPad = n.attributes.find((a) => a.name === "auto_pad");
    if (autoPad && new TextDecoder().decode(autoPad.s) !== "NOTSET") {
      throw new VitqError(`${st.source}: I-ViT: Conv ${n.name} with auto_pad`);
    }
    const N = wt.dims[0];
    const biasT = n.inputs[2] ? constTensor(g, st.cls.idx, n.inputs[2]) : undefined;
    return { wt, N, K: wt.size / N, chanFirst: w, biasT, alpha: 1, beta: 1 };
  }
  if (wt.dims.length !== 2) {
    throw new VitqError(`${st.source}: I-ViT: weight of ${n.name} is not a matrix`);
  }
  const transB = n.opType === "Gemm" && attrNum(n, "transB", 0) === 1;
  let biasT: Tensor | undefined;
  let alpha = 1, beta = 1;
  if (n.opType === "Gemm") {
    if (attrNum(n, "transA", 0) !== 0) {
      throw new VitqError(`${st.source}: I-ViT: Gemm ${n.name} with transA`);
    }
    alpha = attrNum(n, "alpha", 1);
    beta = attrNum(n, "beta", 1);
    if (n.inputs[2]) biasT = constTensor(g, st.cls.idx, n.inputs[2]);
  } else if (site.output !== n.outputs[0]) {
    const add = g.nodes[st.cls.idx.producer.get(site.output)!];
    const other = add.inputs.find((v) => v !== n.outputs[0])!;
    biasT = constTensor(g, st.cls.idx, other);
  }
  const [K, N] = transB ? [wt.dims[1], wt.dims[0]] : [wt.dims[0], wt.dims[1]];
  let chanFirst = w;
  if (!transB) {
    chanFirst = new Float32Array(w.length);
    for (let k = 0; k < K; k++) for (let c = 0; c < N; c++) chanFirst[c * K + k] = w[k * N + c];
  }
  return { wt, N, K, chanFirst, biasT, alpha, beta };
}

/** Largest |accumulator| of any channel: max|x| · Σ|w codes|. */
function accumulatorBound(codes: number[], N: number, K: number, xMax: number): number {
  let accMax = 0;
  for (let c = 0; c < N; c++) {
    let s = 0;
    for (let k = 0; k < K; k++) s += Math.abs(codes[c * K + k]);
    accMax = Math.max(accMax, s * xMax);
  }
  return accMax;
}

/**
 * Push the integer Conv or MatMul of `x` with the int8 weight codes (`codes`
 * channel-first) into int32 `acc`; returns the channel axis of the result.
 */
function pushAccumulate(
  st: LowerState,
  n: Node,
  site: Site,
  x: IVal,
  lw: LinearWeight,
  codes: number[],
  acc: string,
): number {
  const { wt, N, K } = lw;
  if (n.opType === "Conv") {
    const wName = st.init(int8Tensor(st.fresh(`${site.id}_w`), wt.dims, codes));
    st.push({
      kind: "conv",
      x: x.name,
      xZp: x.zp,
      w: wName,
      out: acc,
      strides: attrInts(n, "strides") ?? wt.dims.slice(2).map(() => 1),
      pads: attrInts(n, "pads") ?? wt.dims.slice(2).flatMap(() => [0, 0]),
      dilations: attrInts(n, "dilations") ?? wt.dims.slice(2).map(() => 1),
      group: 1,
    });
    return 1;
  }
  const kn = new Int8Array(K * N);
  for (let c = 0; c < N; c++) {
    for (let k = 0; k < K; k++) kn[k * N + c] = codes[c * K + k];
  }
  const wName = st.init(int8Tensor(st.fresh(`${site.id}_w`), [K, N], kn));
  st.push({
    kind: "matmul",
    a: x.name,
    b: wName,
    out: acc,
    aType: x.type,
    bType: "int8",
    aZp: x.zp,
    bZp: 0,
    mode: "integer",
  });
  return st.rank(site.output) - 1;
}

/**
 * A linear site: the 8-bit input, per-channel int8 weights, the int32
 * accumulator with the bias folded as `round(b/(s_x·s_w))`, then the QuantAct
 * of the output (16 bits for proj/fc2 in the reference variant, int32 for
 * fc1's ShiftGELU); the head keeps its accumulator.
 */
export function lowerLinear(st: LowerState, n: Node, site: Site): void {
  const x = st.need(site.input!, "act8");
  const lw = linearWeight(st, n, site);
  const q = quantizeWeightsPerChannel(lw.chanFirst, lw.N, st.opts.wBits);
  st.weightRecord(site.weight!, lw.chanFirst, q.values, q.steps);
  const accMax = accumulatorBound(q.values, lw.N, lw.K, Math.max(Math.abs(x.lo), Math.abs(x.hi)));
  if (accMax > INT32_MAX) {
    throw new VitqError(`${st.source}: I-ViT: accumulator of ${n.name} may exceed int32`);
  }
  const acc = st.fresh(`${site.id}_acc`);
  const axis = pushAccumulate(st, n, site, x, lw, q.values, acc);
  st.prog.types.set(acc, "int32");
  const sx = x.scale[0];
  const scale = q.steps.map((sw) => sx * sw * lw.alpha);
  let add: bigint[] | null = null;
  if (lw.biasT) {
    const b = lw.biasT.numbers();
    add = scale.map((s, c) => BigInt(roundHalfEven((b[c % b.length] * lw.beta) / s)));
  }
  const accVal: IVal = {
    name: acc,
    type: "int32",
    lo: -accMax,
    hi: accMax,
    scale,
    axis,
    rank: st.rank(site.output),
    add,
    zp: 0,
  };
  if (site.role === "head") {
    st.setVal(site.output, accVal);
    return;
  }
  const bits = site.role === "proj" || site.role === "fc2" ? st.R : st.A;
  // fc1 feeds ShiftGELU, which computes in int32
  const form = site.role === "fc1" ? "int32" : bits <= 8 ? "u8" : "signed";
  const out = st.requant(accVal, st.actStep(site.output, bits), bits, `${site.id} output`, form);
  st.setVal(site.output, out);
}

/** Attention matmul of two data values: integer matmul of their 8-bit (or Shiftmax) codes. */
export function lowerMatmul(st: LowerState, n: Node): void {
  const a0 = st.get(n.inputs[0]);
  const a = a0.nonneg && a0.axis === -1 && !a0.add ? a0 : st.need(n.inputs[0], "act8");
  const b = st.need(n.inputs[1], "act8");
  const K = st.env.dims(n.inputs[0]).at(-1)!;
  const bound = K * Math.max(Math.abs(a.lo), Math.abs(a.hi)) *
    Math.max(Math.abs(b.lo), Math.abs(b.hi));
  if (bound > INT32_MAX) {
    throw new VitqError(`${st.source}: I-ViT: accumulator of ${n.name} may exceed int32`);
  }
  const out = st.fresh(n.outputs[0]);
  const mode = a.type === "uint8" && b.type === "uint8"
    ? "integer"
    : a.zp === 0 && a.lo >= 0 && a.hi < 2 ** 15 && b.type === "uint8"
    ? "split16"
    : "int32";
  st.push({
    kind: "matmul",
    a: a.name,
    b: b.name,
    out,
    aType: a.type,
    bType: b.type,
    aZp: a.zp,
    bZp: b.zp,
    mode,
  });
  st.setVal(n.outputs[0], {
    name: out,
    type: "int32",
    lo: -bound,
    hi: bound,
    scale: [a.scale[0] * b.scale[0]],
    axis: -1,
    rank: st.rank(n.outputs[0]),
    add: null,
    zp: 0,
  });
}
