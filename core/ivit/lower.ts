/**
 * The I-ViT lowering: a float ViT/DeiT/Swin ONNX graph plus calibrated
 * activation ranges → an {@link IntProgram} whose every data tensor after the
 * input quantizer is an integer.
 *
 * The walk visits the float graph in topological order. Shape computations
 * (values that depend on the image only through `Shape`) and constants are
 * copied unchanged. Every data node is lowered by its role:
 *
 * - linear layers (site finder: qkv/proj/fc1/fc2/head/patch_embed, and Swin's
 *   bias-free PatchMerging reduction): per-channel symmetric int8 weights,
 *   `MatMulInteger`/`ConvInteger` with int32 accumulation, the bias (if any)
 *   folded as `round(b/(s_x·s_w))`, then I-ViT's QuantAct: a dyadic
 *   requantization to 8 bits (16 for proj and fc2 in the `reference`
 *   variant; 8 for the reduction, as in I-ViT's Swin); the head keeps its
 *   int32 accumulator;
 * - attention matmuls: integer matmul of the 8-bit operands (16-bit softmax
 *   × V as an int32 MatMul);
 * - 8-bit activations that feed a matmul are stored as uint8 codes with zero
 *   point 128 (the value is code − 128, exactly the signed code): ONNX
 *   Runtime's fast MatMulInteger/ConvInteger kernels take uint8 × int8;
 * - `Mul`/`Div` by a positive scalar constant (the 1/√d of attention, DeiT's
 *   head average): folded into the scale, no operator;
 * - Softmax → Shiftmax (8-bit input, 16- or 8-bit output); GELU → ShiftGELU;
 *   LayerNorm → I-LayerNorm with γ/β folded into the scale and a bias (also
 *   over 4C channels in PatchMerging, and on the 8-bit input of Swin's
 *   patch-embedding LayerNorm, I-ViT's `qact_before_norm`); the integer
 *   sqrt starts from a power of two no larger than needed for the
 *   calibrated range (`layerNormStart`);
 * - residual `Add` of two data values → integer add of both operands
 *   requantized to the calibrated output scale (I-ViT's QuantAct with an
 *   identity branch); `Add` of a constant (position embedding) → the constant
 *   quantized to 8 bits, requantized, added;
 * - `Add` of a constant to attention scores that flow only into a Softmax
 *   (Swin's relative position bias, with the shifted-window mask folded in
 *   by the exporter, reached through Expand/Reshape of a constant): the
 *   scores get I-ViT's 8-bit QuantAct, the constant is quantized at that same
 *   step into int32 (the Expand/Reshape chain replayed on the codes) and
 *   added without a clamp, so the −100 mask stays far below every score and
 *   Shiftmax runs on the int32 sum at the scores' step;
 * - `Concat` (class token) → inputs requantized to one scale, constants
 *   quantized at that scale; a `Concat` of data values already in one
 *   integer form (Swin's cyclic shift as Slice + Concat, PatchMerging's
 *   strided slices joined along channels) → the same Concat on the codes;
 * - `ReduceMean` over tokens (Swin's pooling before the head) → I-ViT's
 *   8-bit QuantAct, an integer `ReduceSum`, and 1/T folded into the scale,
 *   so the head's input requantization applies it in its dyadic multiplier;
 * - constant `Pad` (the Swin models' 28→32 image padding, after the input
 *   quantizer) → the same Pad on the codes with the pad value quantized at
 *   the value's step plus its zero point (0.0 → 128 on the uint8 image);
 * - data movement (Reshape, Transpose, Gather, Slice with steps, ...) → the
 *   same node on the integer tensor.
 *
 * Any other data operator throws a {@link VitqError} naming the op and node;
 * {@link checkLowerable} runs the same classification before any calibration.
 *
 * This file is the dispatcher: `lower/classify.ts` gives every data node its
 * role, `lower/state.ts` holds the integer forms and the shared QuantAct, and
 * one module per op family lowers a node: `lower/linear.ts` (linear layers,
 * attention matmuls), `lower/layernorm.ts`, `lower/softmax.ts` (Shiftmax,
 * score bias), `lower/gelu.ts`, `lower/sum.ts` (residual and constant adds,
 * mean), `lower/movement.ts` (data movement, Pad, Concat); `lower/graph.ts`
 * and `lower/shape_chain.ts` read the float graph.
 *
 * @module
 */
import type { Graph, Node } from "../onnx/graph.ts";
import type { Site } from "../onnx/sites.ts";
import { VitqError } from "../errors.ts";
import { INT32_MAX } from "./kernels.ts";
import type { IntProgram } from "./program.ts";
import type { Role } from "./lower/classify.ts";
import { evalShapeChain } from "./lower/shape_chain.ts";
import { type LowerEnv, type LowerOptions, LowerState, typeRange } from "./lower/state.ts";
import { lowerLinear, lowerMatmul } from "./lower/linear.ts";
import { lowerLayerNorm } from "./lower/layernorm.ts";
import { lowerScoreBias, lowerSoftmax } from "./lower/softmax.ts";
import { lowerGelu } from "./lower/gelu.ts";
import { lowerAdd2, lowerAddConst, lowerMean } from "./lower/sum.ts";
import { lowerConcat, lowerPad, lowerStruct } from "./lower/movement.ts";

export { checkLowerable } from "./lower/classify.ts";
export { constTensor } from "./lower/graph.ts";
export type { IvitVariant, LowerEnv, LowerOptions } from "./lower/state.ts";

/** Lowers one data node of a given role. */
type Handler<K extends Role["kind"]> = (
  st: LowerState,
  n: Node,
  role: Extract<Role, { kind: K }>,
) => void;

/** The lowering of each role. */
const HANDLERS: { [K in Role["kind"]]: Handler<K> } = {
  absorbed: () => {},
  shape: (st, n) => st.copyNode(n),
  linear: (st, n, r) => lowerLinear(st, n, r.site),
  gelu: (st, _n, r) => lowerGelu(st, r.site),
  ln: (st, n, r) => lowerLayerNorm(st, n, r.site),
  matmul: (st, n) => lowerMatmul(st, n),
  softmax: (st, n) => lowerSoftmax(st, n),
  scale: (st, n, r) => st.rescale(n.outputs[0], n.inputs[r.data], r.factor),
  shapescale: lowerShapeScale,
  add2: (st, n) => lowerAdd2(st, n),
  addconst: (st, n, r) => lowerAddConst(st, n, r.data),
  scorebias: (st, n, r) => lowerScoreBias(st, n, r.data),
  mean: (st, n) => lowerMean(st, n),
  pad: (st, n) => lowerPad(st, n),
  concat: (st, n) => lowerConcat(st, n),
  struct: (st, n) => lowerStruct(st, n),
};

/** Lower a float ViT graph to an integer program (see the module doc). */
export function lowerIvit(
  graph: Graph,
  sites: Site[],
  env: LowerEnv,
  opts: LowerOptions,
): IntProgram {
  const st = new LowerState(graph, sites, env, opts);
  quantizeInput(st);
  for (const n of st.g.nodes) {
    const role = st.cls.roles.get(n)!;
    (HANDLERS[role.kind] as Handler<typeof role.kind>)(st, n, role);
  }
  for (const o of st.g.outputNames) lowerOutput(st, o);
  return st.prog;
}

/** The image: I-ViT's qact_input, an 8-bit symmetric QuantAct to uint8 codes (zero point 128). */
function quantizeInput(st: LowerState): void {
  const inputName = st.prog.input.name;
  const s0 = Math.fround(st.actStep(inputName, st.A));
  const q0 = st.fresh(inputName);
  st.push({ kind: "quantize", x: inputName, out: q0, scale: s0, bits: st.A, zp: 128 });
  const [lo0, hi0] = typeRange(st.A);
  st.setVal(inputName, {
    name: q0,
    type: "uint8",
    lo: lo0,
    hi: hi0,
    scale: [s0],
    axis: -1,
    rank: st.rank(inputName),
    add: null,
    zp: 128,
  });
}

/** `Mul`/`Div` by a positive scalar of the static shapes (fused attention's √scale): into the scale. */
function lowerShapeScale(
  st: LowerState,
  n: Node,
  role: Extract<Role, { kind: "shapescale" }>,
): void {
  const c = evalShapeChain(st.g, st.cls.idx, st.cls.data, role.operand, (v) => st.env.dims(v));
  if (!c || c.length !== 1 || !(c[0] > 0) || !Number.isFinite(c[0])) {
    throw new VitqError(
      `${st.source}: I-ViT: ${n.opType} ${n.name}: its operand ${role.operand} is not a ` +
        "positive scalar of the static shapes (or depends on the batch size)",
    );
  }
  st.rescale(n.outputs[0], n.inputs[role.data], role.div ? 1 / c[0] : c[0]);
}

/**
 * A graph output: int32 codes with the folded bias and zero point added (per
 * tensor or per channel along the last axis), and its scale.
 */
function lowerOutput(st: LowerState, o: string): void {
  let iv = st.get(o);
  if (iv.axis !== -1 && iv.axis !== iv.rank - 1) iv = st.need(o, "small", 16);
  let value = iv.name;
  if (iv.add || iv.zp !== 0 || iv.type !== "int32") {
    const add = iv.scale.map((_, c) => (iv.add ? Number(iv.add[c % iv.add.length]) : 0) - iv.zp);
    const maxAdd = Math.max(...add.map(Math.abs));
    if (Math.max(Math.abs(iv.lo), Math.abs(iv.hi)) + maxAdd > INT32_MAX) {
      throw new VitqError(`${st.source}: I-ViT: output ${o} plus its bias exceeds int32`);
    }
    value = st.fresh(`${o}_acc`);
    st.push({ kind: "bias", x: iv.name, xType: iv.type, out: value, add });
    st.prog.types.set(value, "int32");
  }
  st.prog.outputs.push({ name: o, value, scale: iv.scale });
}
