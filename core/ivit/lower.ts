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
 * @module
 */
import {
  attr,
  DataType,
  dataValues,
  type Graph,
  type GraphIndex,
  type Node,
  Tensor,
} from "../onnx/graph.ts";
import type { Site } from "../onnx/sites.ts";
import { VitqError } from "../errors.ts";
import {
  INT31_MAX,
  ivitSymmetricStep,
  quantizeSymmetric,
  quantizeWeightsPerChannel,
} from "./reference.ts";
import { roundHalfEven } from "../quant/uniform.ts";
import {
  dyadic15,
  dyadicBits,
  INT32_MAX,
  layerNormPrescale,
  layerNormStart,
  planRequant,
  requantConst,
  requantValue,
} from "./kernels.ts";
import type { IntProgram, IntType, QuantRecord, Step } from "./program.ts";

/** What the lowering needs to know about the float graph's values. */
export interface LowerEnv {
  /** Dims of a float data value for one image (batch 1). */
  dims(value: string): number[];
  /** Calibrated range of a float data value (running min/max). */
  range(value: string): { min: number; max: number };
}

/** Bit-width variant: `reference` follows the PyTorch code, `paper` is 8-bit throughout. */
export type IvitVariant = "reference" | "paper";

/** Options of the lowering. */
export interface LowerOptions {
  /** Bit-width variant. */
  variant: IvitVariant;
  /** Weight bits (2..8). */
  wBits: number;
  /** Activation bits of the 8-bit quantizers (2..8). */
  aBits: number;
  /** Name of the model in error messages. */
  source?: string;
}

/** An integer data value: the integer tensor that stands for a float value. */
interface IVal {
  name: string;
  type: IntType;
  lo: number;
  hi: number;
  /** Real value = (code + add_c)·scale_c; one entry per tensor or one per channel. */
  scale: number[];
  /** Channel axis (non-negative) for per-channel scales, −1 per tensor. */
  axis: number;
  rank: number;
  add: bigint[] | null;
  /** Zero point of the stored codes: value = code − zp (128 for uint8 activations). */
  zp: number;
  /** Softmax output: non-negative, accepted as the left operand of the attention matmul. */
  nonneg?: boolean;
  /**
   * Attention scores plus an additive constant (relative position bias,
   * shifted-window mask) at the scores' step, unclamped int32: accepted as
   * the Shiftmax input and moved by data-movement nodes as is.
   */
  wide?: boolean;
}

const STRUCT = new Set([
  "Reshape",
  "Transpose",
  "Flatten",
  "Squeeze",
  "Unsqueeze",
  "Identity",
  "Expand",
  "Slice",
  "Gather",
  "Split",
]);

/** A constant value, read through Identity nodes (initializer or Constant node). */
export function constTensor(g: Graph, idx: GraphIndex, name: string): Tensor | undefined {
  let cur = name;
  for (let i = 0; i < 8; i++) {
    const t = g.constant(cur, idx);
    if (t) return t;
    const p = idx.producer.get(cur);
    if (p === undefined || g.nodes[p].opType !== "Identity") return undefined;
    cur = g.nodes[p].inputs[0];
  }
  return undefined;
}

/**
 * A non-data value traced to a constant through data-movement nodes (input 0
 * of each): the constant and the nodes to replay on its quantized codes, in
 * execution order; undefined when the value is not such a constant.
 */
function traceConstChain(
  g: Graph,
  idx: GraphIndex,
  v: string,
): { base: Tensor; chain: Node[]; value: string } | undefined {
  const chain: Node[] = [];
  let cur = v;
  for (let i = 0; i < 16; i++) {
    const t = constTensor(g, idx, cur);
    if (t) return { base: t, chain: chain.reverse(), value: cur };
    const p = idx.producer.get(cur);
    const node = p === undefined ? undefined : g.nodes[p];
    if (!node || !STRUCT.has(node.opType) && node.opType !== "Tile") return undefined;
    chain.push(node);
    cur = node.inputs[0];
  }
  return undefined;
}

/**
 * A non-data value that is a constant chain ({@link traceConstChain}) or the sum of
 * two (timm >= 0.9's fused Swin attention adds the relative position bias and the
 * expanded shifted-window mask into one attention mask before the scores): the
 * traced terms, undefined otherwise.
 */
function traceConstTerms(
  g: Graph,
  idx: GraphIndex,
  v: string,
): { base: Tensor; chain: Node[]; value: string }[] | undefined {
  const one = traceConstChain(g, idx, v);
  if (one) return [one];
  const p = idx.producer.get(v);
  const n = p === undefined ? undefined : g.nodes[p];
  if (!n || n.opType !== "Add" || n.inputs.length !== 2) return undefined;
  const a = traceConstChain(g, idx, n.inputs[0]), b = traceConstChain(g, idx, n.inputs[1]);
  return a && b ? [a, b] : undefined;
}

/** Ops a shape-only scalar chain may contain (besides Shape of a data value and constants). */
const SHAPE_ARITH = new Set([
  "Shape",
  "Slice",
  "Gather",
  "Cast",
  "Sqrt",
  "Div",
  "Mul",
  "Add",
  "Sub",
  "Reciprocal",
  "Pow",
  "Identity",
  "Squeeze",
  "Unsqueeze",
  "Reshape",
  "Concat",
  "Constant",
]);

/** ONNX integer element types (Cast `to`). */
const INT_TYPES = new Set([2, 3, 4, 5, 6, 7, 12, 13]);

/** A value of a shape-only chain: its numbers, which are integers, and which depend on the batch. */
interface ShapeVal {
  v: number[];
  int: boolean;
  batch: boolean[];
}

/**
 * Evaluate a non-data value computed only from constants and `Shape` of data values
 * (timm >= 0.9's fused attention exports `q·√scale` with √scale from
 * Shape(q)[-1] → Cast → Sqrt → Div(1, ·) → Cast → Sqrt). `dimsOf` gives the static
 * dims of a data value (batch 1); without it the chain is only checked (returns
 * `[]` on success). Undefined when the chain has other ops, or its result depends on
 * the batch dimension.
 */
function evalShapeChain(
  g: Graph,
  idx: GraphIndex,
  data: Set<string>,
  v: string,
  dimsOf?: (value: string) => number[],
): number[] | undefined {
  const memo = new Map<string, ShapeVal | undefined>();
  const scalarBroadcast = (a: ShapeVal, b: ShapeVal, f: (x: number, y: number) => number) => {
    const n = Math.max(a.v.length, b.v.length);
    if (a.v.length !== n && a.v.length !== 1 || b.v.length !== n && b.v.length !== 1) {
      return undefined;
    }
    const int = a.int && b.int;
    const out: ShapeVal = { v: [], int, batch: [] };
    for (let i = 0; i < n; i++) {
      const x = a.v[a.v.length === 1 ? 0 : i], y = b.v[b.v.length === 1 ? 0 : i];
      const r = f(x, y);
      out.v.push(int ? Math.trunc(r) : Math.fround(r));
      out.batch.push(a.batch[a.v.length === 1 ? 0 : i] || b.batch[b.v.length === 1 ? 0 : i]);
    }
    return out;
  };
  const walk = (name: string, depth: number): ShapeVal | undefined => {
    if (memo.has(name)) return memo.get(name);
    let out: ShapeVal | undefined;
    const t = constTensor(g, idx, name);
    const p = idx.producer.get(name);
    const n = p === undefined ? undefined : g.nodes[p];
    if (t) {
      const isInt = t.dataType !== DataType.FLOAT && t.dataType !== DataType.DOUBLE;
      out = { v: t.numbers(), int: isInt, batch: t.numbers().map(() => false) };
    } else if (!n || depth > 32 || !SHAPE_ARITH.has(n.opType) || data.has(name)) {
      out = undefined;
    } else if (n.opType === "Shape") {
      if (!data.has(n.inputs[0])) return undefined;
      const dims = dimsOf ? dimsOf(n.inputs[0]) : [];
      const r = dims.length;
      let start = attrNum(n, "start", 0), end = attrNum(n, "end", r);
      if (start < 0) start += r;
      if (end < 0) end += r;
      end = Math.min(end, r);
      const idxs = dimsOf
        ? Array.from({ length: Math.max(0, end - start) }, (_, i) => start + i)
        : [];
      out = { v: idxs.map((i) => dims[i]), int: true, batch: idxs.map((i) => i === 0) };
    } else {
      const ins = n.inputs.map((x) => (x ? walk(x, depth + 1) : undefined));
      const a = ins[0], b = ins[1];
      if (n.inputs.some((x, i) => x && ins[i] === undefined)) {
        out = undefined;
      } else if (!dimsOf) {
        out = { v: [], int: false, batch: [] }; // structure only
      } else {
        switch (n.opType) {
          case "Identity":
          case "Squeeze":
          case "Unsqueeze":
          case "Reshape":
            out = a;
            break;
          case "Cast": {
            const int = INT_TYPES.has(attrNum(n, "to", 1));
            out = {
              v: a!.v.map((x) => (int ? Math.trunc(x) : Math.fround(x))),
              int,
              batch: a!.batch,
            };
            break;
          }
          case "Sqrt":
            out = { v: a!.v.map((x) => Math.fround(Math.sqrt(x))), int: false, batch: a!.batch };
            break;
          case "Reciprocal":
            out = { v: a!.v.map((x) => Math.fround(1 / x)), int: false, batch: a!.batch };
            break;
          case "Div":
            out = scalarBroadcast(a!, b!, (x, y) => x / y);
            break;
          case "Mul":
            out = scalarBroadcast(a!, b!, (x, y) => x * y);
            break;
          case "Add":
            out = scalarBroadcast(a!, b!, (x, y) => x + y);
            break;
          case "Sub":
            out = scalarBroadcast(a!, b!, (x, y) => x - y);
            break;
          case "Pow":
            out = scalarBroadcast(a!, b!, (x, y) => x ** y);
            if (out) out.int = a!.int;
            break;
          case "Concat":
            out = {
              v: ins.flatMap((x) => x!.v),
              int: ins.every((x) => x!.int),
              batch: ins.flatMap((x) => x!.batch),
            };
            break;
          case "Gather": {
            const len = a!.v.length;
            const pick = b!.v.map((i) => (i < 0 ? i + len : i));
            out = pick.every((i) => i >= 0 && i < len)
              ? { v: pick.map((i) => a!.v[i]), int: a!.int, batch: pick.map((i) => a!.batch[i]) }
              : undefined;
            break;
          }
          case "Slice": {
            const len = a!.v.length;
            const steps = ins[4]?.v ?? [1];
            if ((ins[3] && ins[3].v.some((ax) => ax !== 0 && ax !== -1)) || steps[0] !== 1) {
              out = undefined;
              break;
            }
            const clamp = (x: number) => Math.min(Math.max(x < 0 ? x + len : x, 0), len);
            const lo = clamp(b!.v[0]), hi = clamp(ins[2]!.v[0]);
            out = { v: a!.v.slice(lo, hi), int: a!.int, batch: a!.batch.slice(lo, hi) };
            break;
          }
          default:
            out = undefined;
        }
      }
    }
    memo.set(name, out);
    return out;
  };
  const r = walk(v, 0);
  if (!r || r.batch.some(Boolean)) return undefined;
  return r.v;
}

/** Nodes strictly after `from` up to the producer of `to` (data paths only). */
function between(g: Graph, idx: GraphIndex, data: Set<string>, from: string, to: string): Node[] {
  const out = new Set<Node>();
  const stack = [to];
  const seen = new Set<string>();
  while (stack.length) {
    const v = stack.pop()!;
    if (v === from || seen.has(v)) continue;
    seen.add(v);
    const p = idx.producer.get(v);
    if (p === undefined) continue;
    out.add(g.nodes[p]);
    for (const i of g.nodes[p].inputs) if (data.has(i)) stack.push(i);
  }
  return [...out];
}

function attrNum(n: Node, name: string, dflt: number): number {
  const a = n.attributes.find((x) => x.name === name);
  if (!a) return dflt;
  if (a.type === 1) return a.f;
  return Number(a.i);
}

function attrInts(n: Node, name: string): number[] | undefined {
  const a = n.attributes.find((x) => x.name === name);
  return a ? (a.ints as unknown[]).map(Number) : undefined;
}

function typeOfBits(bits: number): IntType {
  return bits <= 8 ? "int8" : bits <= 16 ? "int16" : "int32";
}

function typeRange(bits: number): [number, number] {
  return [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1];
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
  const a = Int32Array.from(values);
  return new Tensor(name, DataType.INT32, dims, new Uint8Array(a.buffer));
}

/** How one data node of the float graph is lowered. */
type Role =
  | { kind: "absorbed" }
  | { kind: "linear"; site: Site }
  | { kind: "gelu"; site: Site }
  | { kind: "ln"; site: Site }
  | { kind: "matmul" }
  | { kind: "softmax" }
  | { kind: "scale"; data: number; factor: number }
  | { kind: "shapescale"; data: number; div: boolean; operand: string }
  | { kind: "add2" }
  | { kind: "addconst"; data: number }
  | { kind: "scorebias"; data: number }
  | { kind: "mean" }
  | { kind: "pad" }
  | { kind: "concat" }
  | { kind: "struct" }
  | { kind: "shape" };

/** Classification of the data nodes of a graph (shared by the pre-check and the lowering). */
class Classifier {
  readonly g: Graph;
  readonly idx: GraphIndex;
  readonly data: Set<string>;
  readonly roles = new Map<Node, Role>();

  constructor(graph: Graph, sites: Site[], source: string) {
    const g = graph.clone();
    g.topoSort();
    this.g = g;
    this.idx = g.index();
    this.data = dataValues(g);
    const byName = new Map(g.nodes.map((n) => [n.name, n]));
    const producer = (v: string) => {
      const p = this.idx.producer.get(v);
      return p === undefined ? undefined : g.nodes[p];
    };
    for (const s of sites) {
      const node = byName.get(s.node);
      if (!node) continue;
      if (s.kind === "linear") {
        this.roles.set(node, { kind: "linear", site: s });
        if (s.output !== node.outputs[0]) {
          const add = producer(s.output);
          if (add) this.roles.set(add, { kind: "absorbed" });
        }
      } else if (s.kind === "gelu_out" || s.kind === "ln") {
        const inner = between(g, this.idx, this.data, s.input!, s.output);
        for (const n of inner) {
          if (n === node) continue;
          for (const o of n.outputs) {
            const outside = (this.idx.consumers.get(o) ?? []).some((u) =>
              !inner.includes(g.nodes[u.node])
            );
            if (outside || g.outputNames.includes(o)) {
              throw new VitqError(
                `${source}: ${
                  s.kind === "ln" ? "LayerNorm" : "GELU"
                } ${s.id}: intermediate ${o} of node ${n.name} is used outside the pattern`,
              );
            }
          }
          this.roles.set(n, { kind: "absorbed" });
        }
        this.roles.set(node, { kind: s.kind === "ln" ? "ln" : "gelu", site: s });
      }
    }
    for (const n of g.nodes) {
      if (this.roles.has(n)) continue;
      const role = this.classify(n);
      if (role) this.roles.set(n, role);
    }
  }

  /** Role of a data node not covered by a site, or undefined (no integer lowering). */
  private classify(n: Node): Role | undefined {
    const dataIn = n.inputs.map((v) => this.data.has(v));
    const nData = dataIn.filter(Boolean).length;
    if (nData === 0 || n.opType === "Shape" || n.opType === "Size") return { kind: "shape" };
    switch (n.opType) {
      case "MatMul":
        return nData === 2 ? { kind: "matmul" } : undefined;
      case "Softmax":
        return { kind: "softmax" };
      case "Mul":
      case "Div": {
        if (nData !== 1 || n.inputs.length !== 2) return undefined;
        const d = dataIn.indexOf(true);
        if (n.opType === "Div" && d !== 0) return undefined;
        const t = constTensor(this.g, this.idx, n.inputs[1 - d]);
        if (!t && evalShapeChain(this.g, this.idx, this.data, n.inputs[1 - d])) {
          // a scalar computed from static shapes (fused attention's √scale): valued at lowering
          return { kind: "shapescale", data: d, div: n.opType === "Div", operand: n.inputs[1 - d] };
        }
        if (!t || t.size !== 1) return undefined;
        const c = t.numbers()[0];
        if (!(c > 0) || !Number.isFinite(c)) return undefined;
        return { kind: "scale", data: d, factor: n.opType === "Mul" ? c : 1 / c };
      }
      case "Add": {
        if (nData === 2) return { kind: "add2" };
        const d = dataIn.indexOf(true);
        const other = n.inputs[1 - d];
        if (this.feedsSoftmax(n.outputs[0], 0) && traceConstTerms(this.g, this.idx, other)) {
          return { kind: "scorebias", data: d };
        }
        const t = constTensor(this.g, this.idx, other);
        return t ? { kind: "addconst", data: d } : undefined;
      }
      case "Concat":
        return { kind: "concat" };
      case "ReduceMean": {
        // a mean over tokens/channels; not one over the batch (axis 0, or all axes)
        if (!dataIn[0] || nData !== 1) return undefined;
        const axes = attrInts(n, "axes") ??
          (n.inputs[1] ? constTensor(this.g, this.idx, n.inputs[1])?.numbers() : []);
        return axes && axes.length > 0 && !axes.includes(0) ? { kind: "mean" } : undefined;
      }
      case "Pad": {
        if (!dataIn[0] || nData !== 1 || (attr(n, "mode") ?? "constant") !== "constant") {
          return undefined;
        }
        const cv = n.inputs[2];
        return !cv || constTensor(this.g, this.idx, cv)?.size === 1 ? { kind: "pad" } : undefined;
      }
      default:
        if (STRUCT.has(n.opType) && dataIn[0] && nData === 1) return { kind: "struct" };
        return undefined;
    }
  }

  /**
   * Whether value `v` reaches only Softmax inputs, through data movement and
   * further constant adds (attention scores + relative position bias, then +
   * shifted-window mask, then Softmax).
   */
  private feedsSoftmax(v: string, depth: number): boolean {
    const uses = this.idx.consumers.get(v) ?? [];
    if (uses.length === 0 || depth > 8 || this.g.outputNames.includes(v)) return false;
    return uses.every((u) => {
      const m = this.g.nodes[u.node];
      if (m.opType === "Softmax") return true;
      const dataIns = m.inputs.filter((x) => this.data.has(x)).length;
      const pass = STRUCT.has(m.opType) && m.inputs[0] === v && dataIns === 1;
      if (!pass && !(m.opType === "Add" && dataIns === 1)) return false;
      return m.outputs.length === 1 && this.feedsSoftmax(m.outputs[0], depth + 1);
    });
  }

  /** The first data node without an integer lowering, if any. */
  firstUnsupported(): Node | undefined {
    return this.g.nodes.find((n) => !this.roles.has(n));
  }
}

/**
 * Throw a {@link VitqError} naming the op and node of the first data operator
 * of `graph` that has no integer lowering (static; runs no session).
 */
export function checkLowerable(graph: Graph, sites: Site[], source = "<graph>"): void {
  const c = new Classifier(graph, sites, source);
  const bad = c.firstUnsupported();
  if (bad) {
    throw new VitqError(
      `${source}: I-ViT: no integer lowering for op ${bad.opType} (node ${bad.name})`,
    );
  }
  const inputs = graph.inputNames;
  if (inputs.length !== 1) {
    throw new VitqError(`${source}: I-ViT expects one image input, found ${inputs.length}`);
  }
  if (graph.opset < 13) {
    throw new VitqError(`${source}: I-ViT lowering needs opset ≥ 13, graph has ${graph.opset}`);
  }
}

/** Lower a float ViT graph to an integer program (see the module doc). */
export function lowerIvit(
  graph: Graph,
  sites: Site[],
  env: LowerEnv,
  opts: LowerOptions,
): IntProgram {
  return new Lowering(graph, sites, env, opts).run();
}

class Lowering {
  private readonly cls: Classifier;
  private readonly g: Graph;
  private readonly source: string;
  private readonly A: number;
  private readonly R: number;
  private readonly SM: number;
  private readonly SIGMA = 8;
  private readonly vals = new Map<string, IVal>();
  private readonly memo = new Map<string, IVal>();
  private readonly recorded = new Set<string>();
  private counter = 0;
  private readonly prog: IntProgram;

  constructor(
    graph: Graph,
    sites: Site[],
    private readonly env: LowerEnv,
    private readonly opts: LowerOptions,
  ) {
    this.source = opts.source ?? "<graph>";
    checkLowerable(graph, sites, this.source);
    this.cls = new Classifier(graph, sites, this.source);
    this.g = this.cls.g;
    this.A = opts.aBits;
    this.R = opts.variant === "reference" ? 16 : opts.aBits;
    this.SM = opts.variant === "reference" ? 16 : opts.aBits;
    const input = graph.inputs.find((v) => v.name === graph.inputNames[0]);
    const dims = (input?.type?.tensorType?.shape?.dim ?? []).map((d: Record<string, unknown>) =>
      d.dimValue !== undefined && d.dimValue !== null && Number(d.dimValue) > 0
        ? Number(d.dimValue)
        : String(d.dimParam ?? "N")
    );
    this.prog = {
      opset: graph.opset,
      input: { name: graph.inputNames[0], dims },
      outputs: [],
      initializers: new Map(),
      steps: [],
      types: new Map(),
      records: [],
      facts: [],
    };
  }

  private fresh(base: string): string {
    return `${base}__i${this.counter++}`;
  }

  private push(step: Step): void {
    this.prog.steps.push(step);
  }

  private init(t: Tensor): string {
    this.prog.initializers.set(t.name, t);
    return t.name;
  }

  private setVal(fp: string, v: IVal): void {
    this.vals.set(fp, v);
    this.prog.types.set(v.name, v.type);
  }

  private get(fp: string): IVal {
    const v = this.vals.get(fp);
    if (!v) throw new VitqError(`${this.source}: I-ViT: value ${fp} has no integer form`);
    return v;
  }

  private rank(fp: string): number {
    return this.env.dims(fp).length;
  }

  /** I-ViT QuantAct step of a float value at `bits` from its calibrated range. */
  private actStep(fp: string, bits: number): number {
    const r = this.env.range(fp);
    const s = ivitSymmetricStep(Math.max(Math.abs(r.min), Math.abs(r.max)), bits);
    const key = `${fp}|${bits}`;
    if (!this.recorded.has(key)) {
      this.recorded.add(key);
      this.prog.records.push({
        value: fp,
        tensor: "activation",
        bits,
        scale: s,
        quantizer: "per-tensor sym, running min/max (EMA 0.95)",
        sqnrDb: null,
      });
    }
    return s;
  }

  /**
   * Requantize `iv` to one scale `sOut` (clamped to `bits` unless null). The
   * result is stored as `form`: `signed` (int8/int16 by bits), `u8` (uint8
   * codes with zero point 128, the MatMulInteger operand form, bits ≤ 8) or
   * `int32` (for int32 consumers: Shiftmax, ShiftGELU).
   */
  private requant(
    iv: IVal,
    sOut: number,
    bits: number | null,
    where: string,
    form: "signed" | "u8" | "int32" = "signed",
  ): IVal {
    const dy = iv.scale.map((s) => dyadic15(s / sOut));
    // the plan sees the stored codes: z = value + zp, so the zero point joins the folded add
    const zlo = iv.lo + iv.zp, zhi = iv.hi + iv.zp;
    const add = iv.zp === 0
      ? iv.add
      : iv.scale.map((_, c) => (iv.add ? iv.add[c % iv.add.length] : 0n) - BigInt(iv.zp));
    let plan = planRequant(dy, add, bits, zlo, zhi, where);
    if (bits !== null && plan.split.some((v) => v > 0)) {
      // a 12..14-bit multiplier may let z·m of a saturating requantization fit
      // int32 without splitting z (relative error of the ratio ≤ 2^-12)
      for (const mb of [14, 13, 12]) {
        const dyb = iv.scale.map((s) => dyadicBits(s / sOut, mb));
        const pb = planRequant(dyb, add, bits, zlo, zhi, where);
        if (pb.split.every((v) => v === 0) && pb.offsets) {
          plan = pb;
          break;
        }
      }
    }
    const asU8 = form === "u8" && bits !== null && bits <= 8;
    const outType = bits === null || form === "int32" ? "int32" : asU8 ? "uint8" : typeOfBits(bits);
    const out = this.fresh(iv.name.replace(/__i\d+$/, "") + (bits === null ? "_rq" : `_q${bits}`));
    this.push({
      kind: "requant",
      x: iv.name,
      out,
      xType: iv.type,
      axis: iv.scale.length === 1 ? -1 : iv.axis,
      rank: iv.rank,
      plan,
      bits,
      outType,
      outZp: asU8 ? 128 : 0,
    });
    this.prog.types.set(out, outType);
    return {
      name: out,
      type: outType,
      lo: plan.outLo,
      hi: plan.outHi,
      scale: [sOut],
      axis: -1,
      rank: iv.rank,
      add: null,
      zp: asU8 ? 128 : 0,
    };
  }

  /**
   * The integer form of float value `fp` as a consumer needs it: `act8` (per
   * tensor, uint8 codes with zero point 128 holding aBits values, no folded
   * bias: the operand form of MatMulInteger), `val8` (per tensor, aBits
   * values in any integer type: Shiftmax and ShiftGELU inputs, requantized
   * straight to int32) or `small` (per tensor, 8- or 16-bit codes).
   * Otherwise inserts a QuantAct (requantization at the value's calibrated
   * scale with `bits`).
   */
  private need(fp: string, kind: "act8" | "val8" | "small", bits = this.A): IVal {
    const iv = this.get(fp);
    const [lo, hi] = typeRange(this.A);
    const plain = iv.axis === -1 && iv.scale.length === 1 && !iv.add;
    const in8 = iv.lo >= lo && iv.hi <= hi;
    if (kind === "act8" && plain && iv.type === "uint8" && iv.zp === 128 && in8) return iv;
    if (kind === "val8" && plain && in8) return iv;
    if (kind === "small" && plain && iv.type !== "int32") return iv;
    const b = kind === "small" ? bits : this.A;
    const form = kind === "val8" ? "int32" : b <= 8 ? "u8" : "signed";
    const key = `${fp}|${b}|${form}`;
    const hit = this.memo.get(key);
    if (hit) return hit;
    const out = this.requant(iv, this.actStep(fp, b), b, `value ${fp}`, form);
    this.memo.set(key, out);
    this.prog.types.set(out.name, out.type);
    return out;
  }

  run(): IntProgram {
    const { g } = this;
    const inputName = this.prog.input.name;
    // the image: I-ViT's qact_input, an 8-bit symmetric QuantAct
    const s0 = Math.fround(this.actStep(inputName, this.A));
    const q0 = this.fresh(inputName);
    this.push({ kind: "quantize", x: inputName, out: q0, scale: s0, bits: this.A, zp: 128 });
    const [lo0, hi0] = typeRange(this.A);
    this.setVal(inputName, {
      name: q0,
      type: "uint8",
      lo: lo0,
      hi: hi0,
      scale: [s0],
      axis: -1,
      rank: this.rank(inputName),
      add: null,
      zp: 128,
    });
    for (const n of g.nodes) {
      const role = this.cls.roles.get(n)!;
      switch (role.kind) {
        case "absorbed":
          break;
        case "shape":
          this.copyNode(n);
          break;
        case "linear":
          this.linear(n, role.site);
          break;
        case "gelu":
          this.gelu(role.site);
          break;
        case "ln":
          this.layerNorm(n, role.site);
          break;
        case "matmul":
          this.matmul(n);
          break;
        case "softmax":
          this.softmax(n);
          break;
        case "scale": {
          const iv = this.get(n.inputs[role.data]);
          this.vals.set(n.outputs[0], { ...iv, scale: iv.scale.map((s) => s * role.factor) });
          break;
        }
        case "shapescale": {
          const c = evalShapeChain(
            g,
            this.cls.idx,
            this.cls.data,
            role.operand,
            (v) => this.env.dims(v),
          );
          if (!c || c.length !== 1 || !(c[0] > 0) || !Number.isFinite(c[0])) {
            throw new VitqError(
              `${this.source}: I-ViT: ${n.opType} ${n.name}: its operand ${role.operand} is not a ` +
                "positive scalar of the static shapes (or depends on the batch size)",
            );
          }
          const factor = role.div ? 1 / c[0] : c[0];
          const iv = this.get(n.inputs[role.data]);
          this.vals.set(n.outputs[0], { ...iv, scale: iv.scale.map((s) => s * factor) });
          break;
        }
        case "add2":
          this.add2(n);
          break;
        case "addconst":
          this.addConst(n, role.data);
          break;
        case "scorebias":
          this.scoreBias(n, role.data);
          break;
        case "mean":
          this.mean(n);
          break;
        case "pad":
          this.pad(n);
          break;
        case "concat":
          this.concat(n);
          break;
        case "struct":
          this.struct(n);
          break;
      }
    }
    for (const o of g.outputNames) {
      let iv = this.get(o);
      if (iv.axis !== -1 && iv.axis !== iv.rank - 1) iv = this.need(o, "small", 16);
      let value = iv.name;
      if (iv.add || iv.zp !== 0 || iv.type !== "int32") {
        const add = iv.scale.map((_, c) =>
          (iv.add ? Number(iv.add[c % iv.add.length]) : 0) - iv.zp
        );
        const maxAdd = Math.max(...add.map(Math.abs));
        if (Math.max(Math.abs(iv.lo), Math.abs(iv.hi)) + maxAdd > INT32_MAX) {
          throw new VitqError(`${this.source}: I-ViT: output ${o} plus its bias exceeds int32`);
        }
        value = this.fresh(`${o}_acc`);
        this.push({ kind: "bias", x: iv.name, xType: iv.type, out: value, add });
        this.prog.types.set(value, "int32");
      }
      this.prog.outputs.push({ name: o, value, scale: iv.scale });
    }
    return this.prog;
  }

  /** Copy a shape/constant node (inputs that are data are renamed to their integer tensors). */
  private copyNode(n: Node): void {
    const inputs = n.inputs.map((v) => (v && this.cls.data.has(v) ? this.get(v).name : v));
    for (const v of inputs) {
      const t = v ? this.g.initializers.get(v) : undefined;
      if (t) this.prog.initializers.set(v, t);
    }
    this.push({ kind: "node", node: { ...n, inputs } });
  }

  private weightRecord(
    name: string,
    w: ArrayLike<number>,
    codes: number[],
    steps: number[],
    bits = this.opts.wBits,
    quantizer?: string,
  ) {
    const per = w.length / steps.length;
    let sig = 0, err = 0;
    for (let i = 0; i < w.length; i++) {
      const d = w[i] - codes[i] * steps[Math.floor(i / per)];
      sig += w[i] * w[i];
      err += d * d;
    }
    const rec: QuantRecord = {
      value: name,
      tensor: "weight",
      bits,
      scale: steps[0],
      quantizer: quantizer ?? (steps.length > 1 ? "per-channel sym" : "per-tensor sym"),
      sqnrDb: err > 0 ? 10 * Math.log10(sig / err) : null,
    };
    this.prog.records.push(rec);
  }

  private linear(n: Node, site: Site): void {
    const { g } = this;
    const x = this.need(site.input!, "act8");
    const wt = g.initializers.get(site.weight!) ?? constTensor(g, this.cls.idx, n.inputs[1]);
    if (!wt) throw new VitqError(`${this.source}: I-ViT: weight of ${n.name} is not a constant`);
    const w = wt.float32();
    const xMax = Math.max(Math.abs(x.lo), Math.abs(x.hi));
    let biasT: Tensor | undefined;
    let alpha = 1, beta = 1;
    let N: number, K: number;
    let chanFirst: Float32Array; // [N, rest]
    if (n.opType === "Conv") {
      if (attrNum(n, "group", 1) !== 1) {
        throw new VitqError(`${this.source}: I-ViT: grouped Conv ${n.name} is not supported`);
      }
      const autoPad = n.attributes.find((a) => a.name === "auto_pad");
      if (autoPad && new TextDecoder().decode(autoPad.s) !== "NOTSET") {
        throw new VitqError(`${this.source}: I-ViT: Conv ${n.name} with auto_pad`);
      }
      N = wt.dims[0];
      K = wt.size / N;
      chanFirst = w;
      if (n.inputs[2]) biasT = constTensor(g, this.cls.idx, n.inputs[2]);
    } else {
      if (wt.dims.length !== 2) {
        throw new VitqError(`${this.source}: I-ViT: weight of ${n.name} is not a matrix`);
      }
      const transB = n.opType === "Gemm" && attrNum(n, "transB", 0) === 1;
      if (n.opType === "Gemm") {
        if (attrNum(n, "transA", 0) !== 0) {
          throw new VitqError(`${this.source}: I-ViT: Gemm ${n.name} with transA`);
        }
        alpha = attrNum(n, "alpha", 1);
        beta = attrNum(n, "beta", 1);
        if (n.inputs[2]) biasT = constTensor(g, this.cls.idx, n.inputs[2]);
      } else if (site.output !== n.outputs[0]) {
        const add = g.nodes[this.cls.idx.producer.get(site.output)!];
        const other = add.inputs.find((v) => v !== n.outputs[0])!;
        biasT = constTensor(g, this.cls.idx, other);
      }
      [K, N] = transB ? [wt.dims[1], wt.dims[0]] : [wt.dims[0], wt.dims[1]];
      if (transB) chanFirst = w;
      else {
        chanFirst = new Float32Array(w.length);
        for (let k = 0; k < K; k++) for (let c = 0; c < N; c++) chanFirst[c * K + k] = w[k * N + c];
      }
    }
    const q = quantizeWeightsPerChannel(chanFirst, N, this.opts.wBits);
    this.weightRecord(site.weight!, chanFirst, q.values, q.steps);
    // accumulator bound per channel: max|x| · Σ|w|
    let accMax = 0;
    for (let c = 0; c < N; c++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += Math.abs(q.values[c * K + k]);
      accMax = Math.max(accMax, s * xMax);
    }
    if (accMax > INT32_MAX) {
      throw new VitqError(`${this.source}: I-ViT: accumulator of ${n.name} may exceed int32`);
    }
    const acc = this.fresh(`${site.id}_acc`);
    let axis: number;
    if (n.opType === "Conv") {
      const wName = this.init(int8Tensor(this.fresh(`${site.id}_w`), wt.dims, q.values));
      this.push({
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
      axis = 1;
    } else {
      const codes = new Int8Array(K * N);
      for (let c = 0; c < N; c++) {
        for (let k = 0; k < K; k++) codes[k * N + c] = q.values[c * K + k];
      }
      const wName = this.init(int8Tensor(this.fresh(`${site.id}_w`), [K, N], codes));
      this.push({
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
      axis = this.rank(site.output) - 1;
    }
    this.prog.types.set(acc, "int32");
    const sx = x.scale[0];
    const scale = q.steps.map((sw) => sx * sw * alpha);
    let add: bigint[] | null = null;
    if (biasT) {
      const b = biasT.numbers();
      add = scale.map((s, c) => BigInt(roundHalfEven((b[c % b.length] * beta) / s)));
    }
    const accVal: IVal = {
      name: acc,
      type: "int32",
      lo: -accMax,
      hi: accMax,
      scale,
      axis,
      rank: this.rank(site.output),
      add,
      zp: 0,
    };
    if (site.role === "head") {
      this.setVal(site.output, accVal);
      return;
    }
    const bits = site.role === "proj" || site.role === "fc2" ? this.R : this.A;
    // fc1 feeds ShiftGELU, which computes in int32
    const form = site.role === "fc1" ? "int32" : bits <= 8 ? "u8" : "signed";
    const out = this.requant(
      accVal,
      this.actStep(site.output, bits),
      bits,
      `${site.id} output`,
      form,
    );
    this.setVal(site.output, out);
  }

  private matmul(n: Node): void {
    const a0 = this.get(n.inputs[0]);
    const a = a0.nonneg && a0.axis === -1 && !a0.add ? a0 : this.need(n.inputs[0], "act8");
    const b = this.need(n.inputs[1], "act8");
    const K = this.env.dims(n.inputs[0]).at(-1)!;
    const bound = K * Math.max(Math.abs(a.lo), Math.abs(a.hi)) *
      Math.max(Math.abs(b.lo), Math.abs(b.hi));
    if (bound > INT32_MAX) {
      throw new VitqError(`${this.source}: I-ViT: accumulator of ${n.name} may exceed int32`);
    }
    const out = this.fresh(n.outputs[0]);
    const mode = a.type === "uint8" && b.type === "uint8"
      ? "integer"
      : a.zp === 0 && a.lo >= 0 && a.hi < 2 ** 15 && b.type === "uint8"
      ? "split16"
      : "int32";
    this.push({
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
    this.setVal(n.outputs[0], {
      name: out,
      type: "int32",
      lo: -bound,
      hi: bound,
      scale: [a.scale[0] * b.scale[0]],
      axis: -1,
      rank: this.rank(n.outputs[0]),
      add: null,
      zp: 0,
    });
  }

  private softmax(n: Node): void {
    const rank = this.rank(n.inputs[0]);
    const axis = attrNum(n, "axis", this.g.opset >= 13 ? -1 : 1);
    if (axis !== -1 && axis !== rank - 1) {
      throw new VitqError(`${this.source}: I-ViT: Softmax ${n.name} is not over the last axis`);
    }
    const iv = this.get(n.inputs[0]);
    const x = iv.wide ? iv : this.need(n.inputs[0], "val8");
    const s = x.scale[0];
    const nExp = 15;
    const x0 = Math.floor(-1 / s);
    const eMax = -x0 * 2 ** nExp;
    if (eMax > INT31_MAX) {
      throw new VitqError(
        `${this.source}: I-ViT: Softmax ${n.name}: input step ${s} too small for int32 ShiftExp`,
      );
    }
    const N = this.env.dims(n.inputs[0]).at(-1)!;
    const splitSum = N * eMax > INT31_MAX;
    if (splitSum) {
      if (N >= 2 ** 15) throw new VitqError(`${this.source}: I-ViT: Softmax row too long`);
      this.prog.facts.push(`${n.name}: Σexp may pass 2^31−1, summed in 16-bit halves`);
    }
    const out = this.fresh(n.outputs[0]);
    // 8-bit output: uint8 operand of MatMulInteger; 16-bit: kept in int32 for the int32 MatMul
    const outType = this.SM <= 8 ? "uint8" : "int32";
    this.push({
      kind: "shiftmax",
      x: x.name,
      out,
      scale: s,
      x0,
      n: nExp,
      bits: this.SM,
      outType,
      rowLength: N,
      splitSum,
    });
    this.setVal(n.outputs[0], {
      name: out,
      type: outType,
      lo: 0,
      hi: 2 ** (this.SM - 1) - 1,
      scale: [1 / 2 ** (this.SM - 1)],
      axis: -1,
      rank,
      add: null,
      zp: 0,
      nonneg: true,
    });
  }

  private gelu(site: Site): void {
    const x = this.need(site.input!, "val8");
    const s = x.scale[0];
    const x0 = Math.floor(-1 / (1.702 * s));
    let nExp = 23;
    while (nExp > 1 && -x0 * 2 ** nExp > INT31_MAX) nExp--;
    if (-x0 * 2 ** nExp > INT31_MAX) {
      throw new VitqError(`${this.source}: I-ViT: GELU ${site.id}: input step ${s} too small`);
    }
    if (nExp !== 23) this.prog.facts.push(`${site.id}: ShiftGELU n = ${nExp} (23 overflows int32)`);
    const out = this.fresh(site.output);
    const N = this.env.dims(site.input!).at(-1)!;
    this.push({
      kind: "shiftgelu",
      x: x.name,
      out,
      scale: s,
      x0,
      xZp: x.zp,
      n: nExp,
      bits: this.SIGMA,
      rowLength: N,
    });
    const bound = Math.max(Math.abs(x.lo), Math.abs(x.hi)) * (2 ** (this.SIGMA - 1) - 1);
    this.setVal(site.output, {
      name: out,
      type: "int32",
      lo: -bound,
      hi: bound,
      scale: [s / 2 ** (this.SIGMA - 1)],
      axis: -1,
      rank: this.rank(site.output),
      add: null,
      zp: 0,
    });
  }

  /** γ and β of a LayerNorm site, from the constants the site finder names (γ = 1, β = 0 when absent). */
  private lnParams(n: Node, site: Site, C: number): { gamma: number[]; beta: number[] } {
    const vec = (v: string | undefined, dflt: number): number[] => {
      if (!v) return new Array(C).fill(dflt);
      const t = constTensor(this.g, this.cls.idx, v);
      if (!t) throw new VitqError(`${this.source}: I-ViT: LayerNorm ${n.name}: γ/β not constant`);
      const a = t.numbers();
      return Array.from({ length: C }, (_, i) => a[i % a.length]);
    };
    if (n.opType === "LayerNormalization") {
      const rank = this.rank(n.inputs[0]);
      const axis = attrNum(n, "axis", -1);
      if (axis !== -1 && axis !== rank - 1) {
        throw new VitqError(`${this.source}: I-ViT: LayerNorm ${n.name} not over the last axis`);
      }
    }
    return { gamma: vec(site.gamma, 1), beta: vec(site.beta, 0) };
  }

  private layerNorm(n: Node, site: Site): void {
    const x = this.need(site.input!, "small", this.R);
    const C = this.env.dims(site.input!).at(-1)!;
    const { gamma, beta } = this.lnParams(n, site, C);
    const a = layerNormPrescale(C, x.hi - x.lo);
    const k0 = layerNormStart(a, C, x.hi - x.lo);
    if (a > 0) this.prog.facts.push(`${site.id}: Σy² after a right shift by ${a}, sqrt from ${k0}`);
    else if (k0 < 2 ** 16) this.prog.facts.push(`${site.id}: sqrt from ${k0} (I-ViT: 2^16)`);
    const sLn = Math.sqrt(C) / 2 ** 30;
    const sign = gamma.map((gm, c) => {
      if (!(gm !== 0 && Number.isFinite(gm))) {
        throw new VitqError(`${this.source}: I-ViT: LayerNorm ${site.id}: γ[${c}] = ${gm}`);
      }
      return gm < 0 ? -1 : 1;
    });
    const add = gamma.map((gm, c) => {
      const b = Math.floor(beta[c] / gm / sLn);
      if (!Number.isSafeInteger(b)) {
        throw new VitqError(`${this.source}: I-ViT: LayerNorm ${site.id}: bias of channel ${c}`);
      }
      return BigInt(sign[c] * b);
    });
    const out = this.fresh(site.output);
    this.push({
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
    const rank = this.rank(site.output);
    this.setVal(site.output, {
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

  /** An operand of an add: per tensor or per channel along the last axis. */
  private addOperand(fp: string): IVal {
    const iv = this.get(fp);
    if (iv.scale.length === 1 || iv.axis === iv.rank - 1) return iv;
    return this.need(fp, "small", this.R);
  }

  private add2(n: Node): void {
    const a = this.addOperand(n.inputs[0]);
    const b = this.addOperand(n.inputs[1]);
    const sOut = this.actStep(n.outputs[0], this.R);
    const qa = this.requant(a, sOut, null, `${n.name} operand 0`);
    const qb = this.requant(b, sOut, null, `${n.name} operand 1`);
    if (
      qa.hi + qb.hi > INT32_MAX || qa.lo + qb.lo < -INT32_MAX - 1
    ) throw new VitqError(`${this.source}: I-ViT: sum of ${n.name} may exceed int32`);
    const out = this.fresh(n.outputs[0]);
    const outType = typeOfBits(this.R);
    this.push({ kind: "add", a: qa.name, b: qb.name, out, bits: this.R, outType });
    const [lo, hi] = typeRange(this.R);
    this.setVal(n.outputs[0], {
      name: out,
      type: outType,
      lo: Math.max(lo, qa.lo + qb.lo),
      hi: Math.min(hi, qa.hi + qb.hi),
      scale: [sOut],
      axis: -1,
      rank: this.rank(n.outputs[0]),
      add: null,
      zp: 0,
    });
  }

  private addConst(n: Node, d: number): void {
    const a = this.addOperand(n.inputs[d]);
    const t = constTensor(this.g, this.cls.idx, n.inputs[1 - d])!;
    const c = t.numbers();
    const absMax = c.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const sc = ivitSymmetricStep(absMax, this.A);
    const codes = quantizeSymmetric(c, sc, this.A);
    this.weightRecord(n.inputs[1 - d], c, codes, [sc]);
    const sOut = this.actStep(n.outputs[0], this.R);
    const qa = this.requant(a, sOut, null, `${n.name} data operand`);
    const rc = requantConst(dyadic15(sc / sOut), 0n);
    const qc = codes.map((v) => requantValue(v, rc, null));
    const cLo = Math.min(...qc), cHi = Math.max(...qc);
    if (qa.hi + cHi > INT32_MAX || qa.lo + cLo < -INT32_MAX - 1) {
      throw new VitqError(`${this.source}: I-ViT: sum of ${n.name} may exceed int32`);
    }
    const cName = this.init(int32Tensor(this.fresh(`${n.inputs[1 - d]}_q`), t.dims, qc));
    const out = this.fresh(n.outputs[0]);
    const outType = typeOfBits(this.R);
    this.push({ kind: "add", a: qa.name, b: cName, out, bits: this.R, outType });
    const [lo, hi] = typeRange(this.R);
    this.setVal(n.outputs[0], {
      name: out,
      type: outType,
      lo: Math.max(lo, qa.lo + cLo),
      hi: Math.min(hi, qa.hi + cHi),
      scale: [sOut],
      axis: -1,
      rank: this.rank(n.outputs[0]),
      add: null,
      zp: 0,
    });
  }

  /** Trace a non-data operand to a constant through data-movement nodes. */
  private traceConst(v: string): { base: Tensor; chain: Node[] } {
    const t = traceConstChain(this.g, this.cls.idx, v);
    if (!t) throw new VitqError(`${this.source}: I-ViT: cannot quantize the constant operand ${v}`);
    return t;
  }

  /** Replay the data-movement `chain` of a traced constant on its integer codes `name`. */
  private replayChain(name: string, chain: Node[], type: IntType): string {
    for (const c of chain) {
      const out = this.fresh(c.outputs[0]);
      for (const i of c.inputs.slice(1)) {
        const t = i ? this.g.initializers.get(i) : undefined;
        if (t) this.prog.initializers.set(i, t);
      }
      this.push({
        kind: "node",
        node: {
          ...c,
          name: this.fresh(c.name),
          inputs: [name, ...c.inputs.slice(1)],
          outputs: [out],
        },
      });
      this.prog.types.set(out, type);
      name = out;
    }
    return name;
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
  private scoreBias(n: Node, d: number): void {
    const fp = n.inputs[d];
    const iv = this.get(fp);
    let x = iv.wide ? iv : this.need(fp, "val8");
    if (x.type !== "int32" || x.zp !== 0) {
      x = this.requant(x, x.scale[0], this.A, `${n.name} scores`, "int32");
    }
    const s = x.scale[0];
    const other = n.inputs[1 - d];
    const terms = traceConstTerms(this.g, this.cls.idx, other);
    if (!terms) {
      throw new VitqError(`${this.source}: I-ViT: cannot quantize the constant operand ${other}`);
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
            `${this.source}: I-ViT: constant ${other} of ${n.name} is not finite`,
          );
        }
        if (q < tLo) tLo = q;
        if (q > tHi) tHi = q;
      }
      cLo += tLo;
      cHi += tHi;
      // a Constant node's tensor may have no name: record the value it defines
      const named = base.name || value;
      this.weightRecord(named, c, codes, [s], 32, "per-tensor at the scores' step, int32");
      const term = this.replayChain(
        this.init(int32Tensor(this.fresh(`${named}_q`), base.dims, codes)),
        chain,
        "int32",
      );
      if (cName === "") {
        cName = term;
      } else {
        const sum = this.fresh(`${other}_q`);
        this.push({ kind: "add", a: cName, b: term, out: sum, bits: 32, outType: "int32" });
        this.prog.types.set(sum, "int32");
        cName = sum;
      }
    }
    const lo = x.lo + cLo, hi = x.hi + cHi;
    // ShiftExp forms about 1.4375·(x − rowmax) in int32
    if (hi - lo >= 2 ** 30) {
      throw new VitqError(
        `${this.source}: I-ViT: scores plus ${other} of ${n.name} span ${hi - lo} steps (≥ 2^30)`,
      );
    }
    const out = this.fresh(n.outputs[0]);
    this.push({ kind: "add", a: x.name, b: cName, out, bits: 32, outType: "int32" });
    this.setVal(n.outputs[0], {
      name: out,
      type: "int32",
      lo,
      hi,
      scale: [s],
      axis: -1,
      rank: this.rank(n.outputs[0]),
      add: null,
      zp: 0,
      wide: true,
    });
  }

  /**
   * Mean over tokens (Swin's pooling before the head): I-ViT's 8-bit QuantAct
   * on the input, an integer ReduceSum over the T reduced elements, and 1/T
   * folded into the scale, so that the next requantization applies it inside
   * its dyadic multiplier.
   */
  private mean(n: Node): void {
    const dimsIn = this.env.dims(n.inputs[0]);
    const rankIn = dimsIn.length;
    const axes = (attrInts(n, "axes") ?? constTensor(this.g, this.cls.idx, n.inputs[1])!.numbers())
      .map((a) => (a < 0 ? a + rankIn : a));
    if (axes.includes(0)) {
      throw new VitqError(`${this.source}: I-ViT: ReduceMean ${n.name} averages over the batch`);
    }
    const T = axes.reduce((p, a) => p * dimsIn[a], 1);
    const x = this.need(n.inputs[0], "small", this.A);
    if (T * Math.max(Math.abs(x.lo), Math.abs(x.hi)) > INT32_MAX) {
      throw new VitqError(`${this.source}: I-ViT: sum of ${n.name} may exceed int32`);
    }
    const out = this.fresh(n.outputs[0]);
    this.push({
      kind: "reducesum",
      x: x.name,
      xType: x.type,
      xZp: x.zp,
      out,
      axes: [...axes].sort((a, b) => a - b),
      keepdims: attrNum(n, "keepdims", 1) === 1,
    });
    this.prog.types.set(out, "int32");
    this.setVal(n.outputs[0], {
      name: out,
      type: "int32",
      lo: T * x.lo,
      hi: T * x.hi,
      scale: [x.scale[0] / T],
      axis: -1,
      rank: this.rank(n.outputs[0]),
      add: null,
      zp: 0,
    });
  }

  /**
   * Constant Pad (the 28→32 image padding of the Swin models): the same Pad
   * on the integer codes, the pad value quantized at the value's step plus
   * its zero point (0.0 → code 128 of the uint8 image).
   */
  private pad(n: Node): void {
    const iv0 = this.get(n.inputs[0]);
    const ok = iv0.scale.length === 1 && !iv0.add &&
      (iv0.type === "uint8" || iv0.type === "int8" || iv0.type === "int32");
    // ONNX Runtime's CPU Pad has no int16 kernel: other forms become 8-bit codes
    const iv = ok ? iv0 : this.need(n.inputs[0], "act8");
    const cv = n.inputs[2] ? constTensor(this.g, this.cls.idx, n.inputs[2])!.numbers()[0] : 0;
    const v = roundHalfEven(cv / iv.scale[0]);
    const code = v + iv.zp;
    const [tLo, tHi] = iv.type === "uint8"
      ? [0, 255]
      : iv.type === "int8"
      ? [-128, 127]
      : [-(2 ** 31), 2 ** 31 - 1];
    if (!(code >= tLo && code <= tHi)) {
      throw new VitqError(`${this.source}: I-ViT: pad value ${cv} of ${n.name} does not fit`);
    }
    const make = iv.type === "uint8" ? uint8Tensor : iv.type === "int8" ? int8Tensor : int32Tensor;
    const cName = this.init(make(this.fresh(`${n.name}_value`), [], [code]));
    for (const i of n.inputs.slice(1)) {
      const t = i ? this.g.initializers.get(i) : undefined;
      if (t) this.prog.initializers.set(i, t);
    }
    const out = this.fresh(n.outputs[0]);
    this.push({
      kind: "node",
      node: { ...n, inputs: [iv.name, n.inputs[1], cName, ...n.inputs.slice(3)], outputs: [out] },
    });
    this.setVal(n.outputs[0], { ...iv, name: out, lo: Math.min(iv.lo, v), hi: Math.max(iv.hi, v) });
  }

  private concat(n: Node): void {
    if (this.concatAsIs(n)) return;
    const sOut = this.actStep(n.outputs[0], this.A);
    const inputs = n.inputs.map((v) => {
      if (this.cls.data.has(v)) {
        return this.requant(this.get(v), sOut, this.A, `${n.name} input ${v}`, "u8").name;
      }
      const { base, chain } = this.traceConst(v);
      const codes = quantizeSymmetric(base.numbers(), sOut, this.A).map((q) => q + 128);
      const name = this.init(uint8Tensor(this.fresh(`${base.name}_q`), base.dims, codes));
      return this.replayChain(name, chain, "uint8");
    });
    const out = this.fresh(n.outputs[0]);
    this.push({ kind: "node", node: { ...n, inputs, outputs: [out] } });
    const [lo, hi] = typeRange(this.A);
    this.setVal(n.outputs[0], {
      name: out,
      type: "uint8",
      lo,
      hi,
      scale: [sOut],
      axis: -1,
      rank: this.rank(n.outputs[0]),
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
  private concatAsIs(n: Node): boolean {
    if (!n.inputs.every((v) => this.cls.data.has(v))) return false;
    const ivs = n.inputs.map((v) => this.get(v));
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
    const out = this.fresh(n.outputs[0]);
    this.push({ kind: "node", node: { ...n, inputs: ivs.map((v) => v.name), outputs: [out] } });
    this.setVal(n.outputs[0], {
      ...a,
      name: out,
      lo: Math.min(...ivs.map((v) => v.lo)),
      hi: Math.max(...ivs.map((v) => v.hi)),
    });
    return true;
  }

  private struct(n: Node): void {
    const iv0 = this.get(n.inputs[0]);
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
    const iv = plain || passChannels ? iv0 : this.need(n.inputs[0], "small", this.A);
    for (const v of n.inputs.slice(1)) {
      const t = v ? this.g.initializers.get(v) : undefined;
      if (t) this.prog.initializers.set(v, t);
    }
    const outs = n.outputs.map((o) => this.fresh(o));
    this.push({
      kind: "node",
      node: { ...n, inputs: [iv.name, ...n.inputs.slice(1)], outputs: outs },
    });
    n.outputs.forEach((o, i) => {
      const rank = this.rank(o);
      this.setVal(o, {
        ...iv,
        name: outs[i],
        rank,
        axis: iv.scale.length === 1 ? -1 : rank - 1,
      });
    });
  }
}
