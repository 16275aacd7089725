/**
 * The integer program: what the I-ViT lowering produces from a float ViT
 * graph, before it becomes ONNX. One list of steps, each a whole integer
 * kernel (requantization, Shiftmax, ShiftGELU, I-LayerNorm, integer matmul,
 * integer sum over tokens, ...) or a copied ONNX node (shape computations and
 * data movement such as Reshape/Transpose/Gather/Slice/Concat/Pad on integer
 * tensors). `emit.ts` expands it
 * into ONNX operators; `simulate.ts` runs it in TypeScript with the reference
 * kernels. Both read the same constants, so a test can compare them bit for
 * bit.
 *
 * @module
 */
import { DataType, type Node, Tensor } from "../onnx/graph.ts";
import type { RequantPlan } from "./kernels.ts";

/** Integer element types that data tensors of the integer graph may have. */
export type IntType = "int8" | "uint8" | "int16" | "int32";

/**
 * Quantize the float image: `clamp(round_half_even(x / scale), −2^(b−1), 2^(b−1) − 1) + zp`
 * (QuantizeLinear to uint8 with zero point `zp` = 128).
 */
export interface QuantizeStep {
  /** Step kind. */
  kind: "quantize";
  /** Float input value. */
  x: string;
  /** uint8 codes. */
  out: string;
  /** Float32 scale (a float32-representable number). */
  scale: number;
  /** Signed bits of the codes (≤ 8). */
  bits: number;
  /** Zero point added to the signed code (128: uint8 codes). */
  zp: number;
}

/**
 * Integer matmul `(a − aZp) @ (b − bZp)` with int32 accumulation:
 * `integer` is one MatMulInteger with zero points; `split16` takes a
 * non-negative 15-bit `a` (the 16-bit Shiftmax output) as `256·hi + lo` with
 * two uint8 bytes and adds two MatMulIntegers (exact); `int32` casts both to
 * int32 for an int32 MatMul.
 */
export interface MatMulStep {
  /** Step kind. */
  kind: "matmul";
  /** Left operand (codes). */
  a: string;
  /** Right operand (codes, or an int8 weight initializer [K, N]). */
  b: string;
  /** int32 accumulator. */
  out: string;
  /** Element type of a. */
  aType: IntType;
  /** Element type of b. */
  bType: IntType;
  /** Zero point of a. */
  aZp: number;
  /** Zero point of b. */
  bZp: number;
  /** How the product is formed. */
  mode: "integer" | "split16" | "int32";
}

/** Integer convolution of `x − xZp` (ConvInteger), int32 output; `w` is an int8 initializer [O, C, kh, kw]. */
export interface ConvStep {
  /** Step kind. */
  kind: "conv";
  /** Input codes [N, C, H, W]. */
  x: string;
  /** Zero point of x. */
  xZp: number;
  /** int8 weight initializer [O, C, kh, kw]. */
  w: string;
  /** int32 accumulator [N, O, H', W']. */
  out: string;
  /** Conv strides. */
  strides: number[];
  /** Conv pads (begin..., end...). */
  pads: number[];
  /** Conv dilations. */
  dilations: number[];
  /** Conv groups (1). */
  group: number;
}

/**
 * Dyadic requantization per channel along `axis` (−1 = per tensor):
 * `q = floor(((z + add_c)·m_c + 2^(k_c−1)) / 2^k_c)`, clamped to `bits` when
 * not null (see `kernels.ts`), plus `outZp` (128 for uint8 codes).
 */
export interface RequantStep {
  /** Step kind. */
  kind: "requant";
  /** Input codes. */
  x: string;
  /** Requantized codes. */
  out: string;
  /** Element type of x. */
  xType: IntType;
  /** Channel axis of the per-channel constants (non-negative), or −1 for one constant. */
  axis: number;
  /** Rank of x. */
  rank: number;
  /** Constants and the int32 evaluation plan (kernels.ts). */
  plan: RequantPlan;
  /** Signed bits of the clamp, or null for no clamp (operands of an add). */
  bits: number | null;
  /** Element type of the result. */
  outType: IntType;
  /** Zero point added to the result (0, or 128 with outType uint8). */
  outZp: number;
}

/**
 * `clamp(a + b)` on int32 (b may be an int32 initializer that broadcasts);
 * `bits` = 32: no clamp (attention scores plus a constant bias/mask, kept in
 * int32 for Shiftmax).
 */
export interface AddStep {
  /** Step kind. */
  kind: "add";
  /** int32 operand. */
  a: string;
  /** int32 operand or initializer. */
  b: string;
  /** Clamped sum. */
  out: string;
  /** Signed bits of the clamp (32: none, the sum is int32 by construction). */
  bits: number;
  /** Element type of the result. */
  outType: IntType;
}

/**
 * Integer sum over `axes` (ONNX ReduceSum on int32) of `x − xZp`: the
 * numerator of a mean over tokens, whose 1/T the next requantization folds.
 */
export interface ReduceSumStep {
  /** Step kind. */
  kind: "reducesum";
  /** Input codes. */
  x: string;
  /** Element type of x. */
  xType: IntType;
  /** Zero point of x (subtracted before summing). */
  xZp: number;
  /** int32 sum. */
  out: string;
  /** Reduced axes (non-negative, never the batch axis). */
  axes: number[];
  /** Keep the reduced axes as size 1. */
  keepdims: boolean;
}

/** Shiftmax along the last axis (`shiftmax` of core/ivit/reference.ts). */
export interface ShiftmaxStep {
  /** Step kind. */
  kind: "shiftmax";
  /**
   * Input codes: 8-bit (an offset cancels in x − rowmax), or int32 scores
   * plus an additive constant quantized at the same step (Swin's relative
   * position bias and shifted-window mask; |x − rowmax| < 2^30).
   */
  x: string;
  /** Output codes at scale 1/2^(bits−1). */
  out: string;
  /** Scale of the int8 input. */
  scale: number;
  /** x0 = floor(−1/scale). */
  x0: number;
  /** ShiftExp fraction bits (15). */
  n: number;
  /** Output bits (16 reference, 8 paper). */
  bits: number;
  /** Element type of the output. */
  outType: IntType;
  /** Row length. */
  rowLength: number;
  /** Σe may pass 2^31 − 1: sum in two 16-bit halves and saturate. */
  splitSum: boolean;
}

/** ShiftGELU along the last axis (`shiftGelu` of core/ivit/reference.ts, sigmoidScale "float"). */
export interface ShiftGeluStep {
  /** Step kind. */
  kind: "shiftgelu";
  /** Input codes (8-bit). */
  x: string;
  /** int32 output x·σ at scale s/2^(bits−1). */
  out: string;
  /** Scale s of the input. */
  scale: number;
  /** x0 = floor(−1/(1.702·scale)). */
  x0: number;
  /** Zero point of the input codes (subtracted first). */
  xZp: number;
  /** ShiftExp fraction bits (23, less where int32 would overflow). */
  n: number;
  /** Bits of σ. */
  bits: number;
  /** Row length (hidden width). */
  rowLength: number;
}

/** I-LayerNorm without γ/β (`iLayerNormInt32`), with the sign of γ applied before the last product. */
export interface LayerNormStep {
  /** Step kind. */
  kind: "layernorm";
  /** Input codes (8- or 16-bit; an offset cancels in x − mean). */
  x: string;
  /** int32 output in [−2^30, 2^30 − 1]. */
  out: string;
  /** Channels C of the normalized (last) axis. */
  channels: number;
  /** Right shift before squaring. */
  prescale: number;
  /** Bound on |x − mean| (the input range's width). */
  yMax: number;
  /** Newton start value. */
  k0: number;
  /** Newton steps (10). */
  steps: number;
  /** Per-channel ±1, or null when every γ > 0. */
  sign: number[] | null;
}

/** `z + add_c` along the last axis, in int32 (materializes a folded bias or zero point at a graph output). */
export interface BiasStep {
  /** Step kind. */
  kind: "bias";
  /** Input codes. */
  x: string;
  /** Element type of x. */
  xType: IntType;
  /** int32 result. */
  out: string;
  /** Per-channel (or one) integer addend. */
  add: number[];
}

/** A copied ONNX node: shape arithmetic, constants, or data movement on integer tensors. */
export interface NodeStep {
  /** Step kind. */
  kind: "node";
  /** The node, inputs renamed to integer tensors. */
  node: Node;
}

/** One step of the integer program. */
export type Step =
  | QuantizeStep
  | MatMulStep
  | ConvStep
  | RequantStep
  | AddStep
  | ReduceSumStep
  | ShiftmaxStep
  | ShiftGeluStep
  | LayerNormStep
  | BiasStep
  | NodeStep;

/** Values a step reads (initializers included). */
export function stepInputs(s: Step): string[] {
  switch (s.kind) {
    case "quantize":
    case "requant":
    case "shiftmax":
    case "shiftgelu":
    case "layernorm":
    case "bias":
    case "reducesum":
      return [s.x];
    case "matmul":
    case "add":
      return [s.a, s.b];
    case "conv":
      return [s.x, s.w];
    case "node":
      return s.node.inputs.filter((v) => v);
  }
}

/** Values a step writes. */
export function stepOutputs(s: Step): string[] {
  return s.kind === "node" ? s.node.outputs : [s.out];
}

/** A graph output of the program: integer codes and the scale that dequantizes them. */
export interface ProgramOutput {
  /** Name of the float output in the original graph (and in the float wrapper). */
  name: string;
  /** Integer tensor holding the codes (int32). */
  value: string;
  /** Dequantization scale: one number, or one per channel along the last axis. */
  scale: number[];
}

/** A quantized activation or weight, for the method's layer records. */
export interface QuantRecord {
  /** Value name in the float graph (activations) or weight initializer name. */
  value: string;
  /** Weight or activation. */
  tensor: "weight" | "activation";
  /** Bits of the quantizer. */
  bits: number;
  /** Step (first channel's for weights). */
  scale: number;
  /** Granularity and observer. */
  quantizer: string;
  /** Weight SQNR in dB (weights only). */
  sqnrDb: number | null;
}

/** The image input of a program. */
export interface ProgramInput {
  /** Input name (as in the float graph). */
  name: string;
  /** Dims, a string for a symbolic dim (batch). */
  dims: (number | string)[];
  /** Element type: float32 (default), or int32 for kernel-level test programs. */
  type?: "float" | "int32";
}

/** The integer program of one model. */
export interface IntProgram {
  /** Opset of the default domain. */
  opset: number;
  /** Image input: float32, or int32 for kernel-level test programs. */
  input: ProgramInput;
  /** Graph outputs (codes and dequantization scales). */
  outputs: ProgramOutput[];
  /** Integer constants (weights, tables, folded terms) and copied shape constants. */
  initializers: Map<string, Tensor>;
  /** Steps in execution order. */
  steps: Step[];
  /** Element type of every integer data value and of the float input. */
  types: Map<string, IntType>;
  /** Quantizers, in graph order. */
  records: QuantRecord[];
  /** Human-readable facts about the lowering (prescale shifts, split sums, ...). */
  facts: string[];
}

/** ONNX element type of an integer type. */
export function onnxType(t: IntType): number {
  return t === "int8"
    ? DataType.INT8
    : t === "uint8"
    ? DataType.UINT8
    : t === "int16"
    ? DataType.INT16
    : DataType.INT32;
}

/** An int8 initializer. */
export function int8Tensor(name: string, dims: number[], values: ArrayLike<number>): Tensor {
  const a = Int8Array.from(values);
  return new Tensor(name, DataType.INT8, dims, new Uint8Array(a.buffer));
}

/** A uint8 initializer. */
export function uint8Tensor(name: string, dims: number[], values: ArrayLike<number>): Tensor {
  const a = Uint8Array.from(values);
  return new Tensor(name, DataType.UINT8, dims, a);
}

/** An int32 initializer. */
export function int32Tensor(name: string, dims: number[], values: ArrayLike<number>): Tensor {
  return Tensor.fromInt32(name, dims, values);
}
