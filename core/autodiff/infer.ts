/**
 * Static facts about the values of an ONNX graph: element type, shape and, for
 * small integer tensors (the shape-computing subgraphs), their values.
 *
 * Dimensions are numbers or symbolic monomials `c * s1 * s2 ...` over symbols
 * such as the graph input's `batch` dimension, so the batch size flows through
 * `Shape → Gather → Unsqueeze → Concat → Reshape` chains and two values that
 * both have `batch` rows are known to have the same shape. Anything the pass
 * cannot work out becomes a fresh symbol (never equal to anything else), or no
 * shape at all when even the rank is unknown. The gradient builder uses these
 * facts only to skip work (a broadcast reduction that is statically a no-op, a
 * shape that is a constant); where they are missing it emits the general
 * run-time computation instead.
 *
 * @module
 */
import { attr, DataType, type Graph, type Node, Tensor, toNumber } from "../onnx/graph.ts";

/** A symbolic dimension: the product `c * s[0] * s[1] * ...` (s sorted, non-empty). */
export interface Sym {
  /** Numeric coefficient. */
  c: number;
  /** Symbol names, sorted. */
  s: string[];
}

/** A dimension or an integer tensor element: a number or a symbolic monomial. */
export type Dim = number | Sym;

/** What is statically known about one value. */
export interface ValueFacts {
  /** ONNX element type, when known. */
  type?: number;
  /** Shape, when the rank is known (entries may be symbolic). */
  dims?: Dim[];
  /** Row-major elements of a small integer or bool tensor (entries may be symbolic). */
  value?: Dim[];
}

/** Element types treated as differentiable. */
export const FLOAT_TYPES: ReadonlySet<number> = new Set([
  DataType.FLOAT,
  DataType.FLOAT16,
  DataType.DOUBLE,
  16, // bfloat16
]);

const INT_TYPES = new Set<number>([
  DataType.INT64,
  DataType.INT32,
  DataType.INT16,
  DataType.INT8,
  DataType.UINT8,
  DataType.UINT16,
  DataType.UINT32,
  DataType.UINT64,
  DataType.BOOL,
]);

const MAX_VALUE = 64;
const BIG = 2 ** 62;

/** True for a numeric dimension. */
export function isNum(d: Dim | undefined): d is number {
  return typeof d === "number";
}

/** True when every entry is a number. */
export function allNum(ds: Dim[] | undefined): ds is number[] {
  return ds !== undefined && ds.every(isNum);
}

function mkSym(c: number, s: string[]): Dim {
  if (c === 0 || s.length === 0) return c;
  return { c, s: [...s].sort() };
}

/** Structural equality of two dimensions (same number or the same monomial). */
export function dimEq(a: Dim | undefined, b: Dim | undefined): boolean {
  if (a === undefined || b === undefined) return false;
  if (isNum(a) || isNum(b)) return a === b;
  return a.c === b.c && a.s.length === b.s.length && a.s.every((x, i) => x === b.s[i]);
}

/** Product of two dimensions. */
export function dimMul(a: Dim, b: Dim): Dim {
  if (isNum(a) && isNum(b)) return a * b;
  const ca = isNum(a) ? a : a.c, cb = isNum(b) ? b : b.c;
  const sa = isNum(a) ? [] : a.s, sb = isNum(b) ? [] : b.s;
  return mkSym(ca * cb, [...sa, ...sb]);
}

/** Exact quotient a / b when it is a monomial, else undefined. */
function dimDiv(a: Dim, b: Dim): Dim | undefined {
  const ca = isNum(a) ? a : a.c, cb = isNum(b) ? b : b.c;
  if (cb === 0 || ca % cb !== 0) return undefined;
  const rest = isNum(a) ? [] : [...a.s];
  for (const x of isNum(b) ? [] : b.s) {
    const i = rest.indexOf(x);
    if (i < 0) return undefined;
    rest.splice(i, 1);
  }
  return mkSym(ca / cb, rest);
}

/** A dimension known to be non-negative (numbers >= 0, monomials over dimension symbols). */
function nonNeg(d: Dim): boolean {
  return isNum(d) ? d >= 0 : d.c >= 0 && d.s.every((x) => !x.startsWith("?"));
}

function prodDims(ds: Dim[]): Dim {
  return ds.reduce<Dim>((a, b) => dimMul(a, b), 1);
}

/** Static facts for every value of a graph, computed once by {@link inferFacts}. */
export class Facts {
  private map = new Map<string, ValueFacts>();
  private n = 0;

  /** Facts of a value (empty when nothing is known). */
  get(v: string): ValueFacts {
    return this.map.get(v) ?? {};
  }

  /** Record facts of a value (used by the gradient builder for values it emits). */
  set(v: string, f: ValueFacts): void {
    this.map.set(v, f);
  }

  /** A fresh non-negative unknown (an unknown dimension). */
  freshDim(): Dim {
    return { c: 1, s: [`#${this.n++}`] };
  }

  /** A fresh unknown integer of unknown sign. */
  freshInt(): Dim {
    return { c: 1, s: [`?${this.n++}`] };
  }

  /** Rank of a value, or undefined. */
  rank(v: string): number | undefined {
    return this.get(v).dims?.length;
  }
}

function tensorFacts(t: Tensor): ValueFacts {
  const f: ValueFacts = { type: t.dataType, dims: [...t.dims] };
  if (INT_TYPES.has(t.dataType) && t.size <= MAX_VALUE) f.value = t.numbers();
  return f;
}

/** Broadcast two shapes (numpy rules); undecidable pairs become fresh symbols. */
export function broadcastDims(facts: Facts, a: Dim[], b: Dim[]): Dim[] {
  const r = Math.max(a.length, b.length);
  const out: Dim[] = [];
  for (let i = 0; i < r; i++) {
    const x = a[a.length - r + i], y = b[b.length - r + i];
    if (x === undefined) out.push(y);
    else if (y === undefined) out.push(x);
    else if (x === 1) out.push(y);
    else if (y === 1) out.push(x);
    else if (dimEq(x, y)) out.push(x);
    else if (isNum(x) && !isNum(y)) out.push(x);
    else if (isNum(y) && !isNum(x)) out.push(y);
    else out.push(facts.freshDim());
  }
  return out;
}

/** Flat index map for broadcasting a value with numeric dims `src` to `out`. */
function bcastIndex(src: number[], out: number[], flat: number): number {
  let idx = 0, stride = 1, rem = flat;
  const outRev: number[] = [];
  for (let i = out.length - 1; i >= 0; i--) {
    outRev.push(rem % out[i]);
    rem = Math.floor(rem / out[i]);
  }
  for (let i = 0; i < src.length; i++) {
    const oi = outRev[i];
    const d = src[src.length - 1 - i];
    idx += (d === 1 ? 0 : oi) * stride;
    stride *= d;
  }
  return idx;
}

function elementwiseValue(
  facts: Facts,
  inputs: ValueFacts[],
  outDims: Dim[] | undefined,
  fn: (xs: Dim[]) => Dim,
): Dim[] | undefined {
  if (!allNum(outDims) || inputs.some((f) => !f.value || !allNum(f.dims))) return undefined;
  const size = outDims.reduce((a, b) => a * b, 1);
  if (size > MAX_VALUE) return undefined;
  const out: Dim[] = [];
  for (let k = 0; k < size; k++) {
    out.push(fn(inputs.map((f) => f.value![bcastIndex(f.dims as number[], outDims, k)])));
  }
  void facts;
  return out;
}

function normAxis(a: number, r: number): number {
  return a < 0 ? a + r : a;
}

/** Constant value of an input as JS numbers (initializer or Constant node), if any. */
function constNumbers(facts: Facts, v: string | undefined): number[] | undefined {
  if (!v) return undefined;
  const val = facts.get(v).value;
  return allNum(val) ? val : undefined;
}

function intArith(op: string, facts: Facts, a: Dim, b: Dim): Dim {
  if (isNum(a) && isNum(b)) {
    switch (op) {
      case "Add":
        return a + b;
      case "Sub":
        return a - b;
      case "Mul":
        return a * b;
      case "Div":
        return b === 0 ? facts.freshInt() : Math.trunc(a / b);
      case "Mod":
        return b === 0 ? facts.freshInt() : ((a % b) + b) % b;
      case "Max":
        return Math.max(a, b);
      case "Min":
        return Math.min(a, b);
      case "Equal":
        return a === b ? 1 : 0;
      case "Less":
        return a < b ? 1 : 0;
      case "Greater":
        return a > b ? 1 : 0;
      case "LessOrEqual":
        return a <= b ? 1 : 0;
      case "GreaterOrEqual":
        return a >= b ? 1 : 0;
      case "And":
        return a && b ? 1 : 0;
      case "Or":
        return a || b ? 1 : 0;
    }
    return facts.freshInt();
  }
  switch (op) {
    case "Mul":
      return dimMul(a, b);
    case "Div": {
      const q = dimDiv(a, b);
      if (q !== undefined) return q;
      return nonNeg(a) && nonNeg(b) ? facts.freshDim() : facts.freshInt();
    }
    case "Add":
      if (b === 0) return a;
      if (a === 0) return b;
      return nonNeg(a) && nonNeg(b) ? facts.freshDim() : facts.freshInt();
    case "Sub":
      return b === 0 ? a : facts.freshInt();
    case "Equal":
      if (dimEq(a, b)) return 1;
      if ((isNum(a) && a < 0 && nonNeg(b)) || (isNum(b) && b < 0 && nonNeg(a))) return 0;
      return facts.freshInt();
    case "Max":
      if (dimEq(a, b)) return a;
      if (isNum(b) && b <= 0 && nonNeg(a)) return a;
      if (isNum(a) && a <= 0 && nonNeg(b)) return b;
      return facts.freshInt();
    case "Min":
      return dimEq(a, b) ? a : facts.freshInt();
  }
  return facts.freshInt();
}

const SAME_SHAPE = new Set([
  "Identity",
  "Round",
  "Floor",
  "Ceil",
  "Neg",
  "Abs",
  "Relu",
  "Sigmoid",
  "Tanh",
  "Erf",
  "Exp",
  "Log",
  "Sqrt",
  "Reciprocal",
  "Sign",
  "Not",
  "Softmax",
  "LogSoftmax",
  "Gelu",
  "LeakyRelu",
  "Elu",
  "Softplus",
  "HardSigmoid",
  "Clip",
  "Dropout",
  "IsNaN",
  "IsInf",
  "FastGelu",
  "BiasGelu",
]);

const BINARY = new Set([
  "Add",
  "Sub",
  "Mul",
  "Div",
  "Pow",
  "Mod",
  "Equal",
  "Less",
  "Greater",
  "LessOrEqual",
  "GreaterOrEqual",
  "And",
  "Or",
  "Xor",
  "Max",
  "Min",
  "Sum",
  "Mean",
  "PRelu",
]);

const COMPARE = new Set([
  "Equal",
  "Less",
  "Greater",
  "LessOrEqual",
  "GreaterOrEqual",
  "And",
  "Or",
  "Xor",
  "Not",
  "IsNaN",
  "IsInf",
]);

const REDUCE = new Set([
  "ReduceMean",
  "ReduceSum",
  "ReduceMax",
  "ReduceMin",
  "ReduceProd",
  "ReduceL1",
  "ReduceL2",
  "ReduceSumSquare",
  "ReduceLogSumExp",
]);

/** Reduction axes of a Reduce* node: from the attribute or the second input; null = all. */
export function reduceAxes(
  node: Node,
  facts: Facts,
  opset: number,
): number[] | null | "dynamic" {
  const inputForm = node.opType === "ReduceSum" ? opset >= 13 : opset >= 18;
  if (inputForm) {
    const v = node.inputs[1];
    if (!v) return null;
    const c = constNumbers(facts, v);
    return c ?? "dynamic";
  }
  const a = attr(node, "axes");
  return Array.isArray(a) ? a : null;
}

/** Shape proto of known dims (numbers, single-symbol dims as dimParam). */
export function shapeProto(dims: Dim[] | undefined): unknown {
  if (!dims) return undefined;
  return {
    dim: dims.map((d) =>
      isNum(d)
        ? { dimValue: d }
        : d.c === 1 && d.s.length === 1 && !d.s[0].startsWith("#") && !d.s[0].startsWith("?")
        ? { dimParam: d.s[0] }
        : {}
    ),
  };
}

/** What a shape rule sees of one node: its inputs' facts and a setter for its outputs'. */
interface InferArgs {
  node: Node;
  facts: Facts;
  opset: number;
  /** Facts of each input (empty for a missing optional input). */
  inF: ValueFacts[];
  /** Facts of input 0. */
  x: ValueFacts;
  /** Record the facts of output `i`. */
  set: (i: number, f: ValueFacts) => void;
  op: string;
}

/** A shape rule: derives the facts of a node's outputs. */
type InferRule = (a: InferArgs) => void;

/**
 * Shape rules of ops with their own semantics, one entry per op (like the
 * autodiff rule table in `rules.ts`); same-shape, broadcasting and reduce ops
 * are handled by their families in {@link inferNode}.
 */
const INFER_RULES: Record<string, InferRule> = {
  Constant: ({ node, set }) => {
    const t = attr(node, "value");
    if (t instanceof Tensor) return set(0, tensorFacts(t));
    const f = attr(node, "value_float");
    if (typeof f === "number") return set(0, { type: DataType.FLOAT, dims: [] });
    const fs = attr(node, "value_floats");
    if (Array.isArray(fs)) return set(0, { type: DataType.FLOAT, dims: [fs.length] });
    const i = attr(node, "value_int");
    if (typeof i === "number") return set(0, { type: DataType.INT64, dims: [], value: [i] });
    const is = attr(node, "value_ints");
    if (Array.isArray(is)) {
      return set(0, { type: DataType.INT64, dims: [is.length], value: is });
    }
    return;
  },
  Cast: ({ node, x, set }) => {
    const to = attr(node, "to") as number;
    const f: ValueFacts = { type: to, dims: x.dims };
    if (INT_TYPES.has(to) && x.value) f.value = x.value;
    return set(0, f);
  },
  CastLike: ({ inF, x, set }) => {
    return set(0, { type: inF[1]?.type, dims: x.dims, value: x.value });
  },
  LayerNormalization: ({ node, x, set }) => {
    set(0, { type: x.type, dims: x.dims });
    if (x.dims) {
      const axis = normAxis((attr(node, "axis") as number | undefined) ?? -1, x.dims.length);
      const sd = x.dims.map((d, i) => (i >= axis ? 1 : d));
      set(1, { type: DataType.FLOAT, dims: sd });
      set(2, { type: DataType.FLOAT, dims: sd });
    }
    return;
  },
  MatMul: ({ facts, inF, x, set }) => {
    const a = x.dims, b = inF[1]?.dims;
    if (!a || !b) return set(0, { type: x.type });
    const a2 = a.length === 1 ? [1, a[0]] : a;
    const b2 = b.length === 1 ? [b[0], 1] : b;
    const batch = broadcastDims(facts, a2.slice(0, -2), b2.slice(0, -2));
    const dims = [...batch];
    if (a.length > 1) dims.push(a2[a2.length - 2]);
    if (b.length > 1) dims.push(b2[b2.length - 1]);
    return set(0, { type: x.type, dims });
  },
  Gemm: ({ node, facts, inF, x, set }) => {
    const a = x.dims, b = inF[1]?.dims;
    if (!a || !b || a.length !== 2 || b.length !== 2) {
      return set(0, { type: x.type, dims: [facts.freshDim(), facts.freshDim()] });
    }
    const ta = attr(node, "transA") === 1, tb = attr(node, "transB") === 1;
    return set(0, { type: x.type, dims: [ta ? a[1] : a[0], tb ? b[0] : b[1]] });
  },
  Conv: ({ node, facts, inF, x, set }) => {
    const xd = x.dims, wd = inF[1]?.dims;
    if (!xd || !wd) return set(0, { type: x.type });
    const n = xd.length - 2;
    const k = (attr(node, "kernel_shape") as number[] | undefined) ?? wd.slice(2);
    const s = (attr(node, "strides") as number[] | undefined) ?? Array(n).fill(1);
    const d = (attr(node, "dilations") as number[] | undefined) ?? Array(n).fill(1);
    const p = (attr(node, "pads") as number[] | undefined) ?? Array(2 * n).fill(0);
    const autoPad = (attr(node, "auto_pad") as string | undefined) ?? "NOTSET";
    const dims: Dim[] = [xd[0], wd[0]];
    for (let i = 0; i < n; i++) {
      const h = xd[2 + i], kk = k[i];
      if (!isNum(h) || !isNum(kk) || (autoPad !== "NOTSET" && autoPad !== "VALID")) {
        dims.push(facts.freshDim());
        continue;
      }
      const pt = autoPad === "VALID" ? 0 : p[i] + p[n + i];
      dims.push(Math.floor((h + pt - d[i] * (kk - 1) - 1) / s[i]) + 1);
    }
    return set(0, { type: x.type, dims });
  },
  Reshape: ({ node, facts, inF, x, set }) => {
    const shp = inF[1]?.value;
    const allowZero = attr(node, "allowzero") === 1;
    if (!shp) {
      const len = inF[1]?.dims?.[0];
      if (isNum(len)) {
        return set(0, {
          type: x.type,
          dims: Array.from({ length: len }, () => facts.freshDim()),
          value: x.value,
        });
      }
      return set(0, { type: x.type });
    }
    const dims: Dim[] = [];
    let minus = -1;
    shp.forEach((v, i) => {
      if (!isNum(v) && !nonNeg(v)) dims.push(facts.freshDim());
      else if (v === 0 && !allowZero) dims.push(x.dims?.[i] ?? facts.freshDim());
      else if (v === -1) {
        minus = i;
        dims.push(0);
      } else dims.push(v);
    });
    if (minus >= 0) {
      const known = prodDims(dims.filter((_, i) => i !== minus));
      const q = x.dims ? dimDiv(prodDims(x.dims), known) : undefined;
      dims[minus] = q ?? facts.freshDim();
    }
    return set(0, { type: x.type, dims, value: x.value });
  },
  Flatten: ({ node, facts, x, set }) => {
    if (!x.dims) return set(0, { type: x.type, dims: [facts.freshDim(), facts.freshDim()] });
    const axis = normAxis((attr(node, "axis") as number | undefined) ?? 1, x.dims.length);
    return set(0, {
      type: x.type,
      dims: [prodDims(x.dims.slice(0, axis)), prodDims(x.dims.slice(axis))],
      value: x.value,
    });
  },
  Transpose: ({ node, x, set }) => {
    if (!x.dims) return set(0, { type: x.type });
    const perm = (attr(node, "perm") as number[] | undefined) ??
      x.dims.map((_, i) => x.dims!.length - 1 - i);
    const dims = perm.map((p) => x.dims![p]);
    const f: ValueFacts = { type: x.type, dims };
    if (x.value && allNum(x.dims)) {
      const xd = x.dims;
      const size = xd.reduce((a, b) => a * b, 1);
      const strides = xd.map((_, i) => xd.slice(i + 1).reduce((a, b) => a * b, 1));
      const od = dims as number[];
      const out: Dim[] = [];
      for (let k = 0; k < size; k++) {
        let rem = k, src = 0;
        for (let i = od.length - 1; i >= 0; i--) {
          const c = rem % od[i];
          rem = Math.floor(rem / od[i]);
          src += c * strides[perm[i]];
        }
        out.push(x.value[src]);
      }
      f.value = out;
    }
    return set(0, f);
  },
  Squeeze: ({ node, facts, opset, x, set, op }) => {
    const axes = opset >= 13
      ? constNumbers(facts, node.inputs[1])
      : (attr(node, "axes") as number[] | undefined);
    if (!x.dims || (op === "Unsqueeze" && !axes)) return set(0, { type: x.type, value: x.value });
    let dims: Dim[];
    if (op === "Squeeze") {
      if (!axes) {
        if (!allNum(x.dims)) return set(0, { type: x.type, value: x.value });
        dims = x.dims.filter((d) => d !== 1);
      } else {
        const ax = axes.map((a) => normAxis(a, x.dims!.length));
        dims = x.dims.filter((_, i) => !ax.includes(i));
      }
    } else {
      const r = x.dims.length + axes!.length;
      const ax = axes!.map((a) => normAxis(a, r));
      dims = [];
      let j = 0;
      for (let i = 0; i < r; i++) dims.push(ax.includes(i) ? 1 : x.dims[j++]);
    }
    return set(0, { type: x.type, dims, value: x.value });
  },
  Unsqueeze: (a) => INFER_RULES.Squeeze(a),
  Concat: ({ node, facts, inF, x, set }) => {
    const fs = inF.filter((_, i) => node.inputs[i]);
    const r = fs.find((f) => f.dims)?.dims?.length;
    if (r === undefined || fs.some((f) => !f.dims)) return set(0, { type: x.type });
    const axis = normAxis(attr(node, "axis") as number, r);
    const dims = [...fs[0].dims!];
    dims[axis] = fs.map((f) => f.dims![axis]).reduce<Dim>((a, b) => {
      if (isNum(a) && isNum(b)) return a + b;
      return facts.freshDim();
    }, 0);
    const f: ValueFacts = { type: x.type, dims };
    if (r === 1 && fs.every((q) => q.value)) f.value = fs.flatMap((q) => q.value!);
    return set(0, f);
  },
  Split: ({ node, facts, opset, x, set }) => {
    if (!x.dims) {
      node.outputs.forEach((_, i) => set(i, { type: x.type }));
      return;
    }
    const axis = normAxis((attr(node, "axis") as number | undefined) ?? 0, x.dims.length);
    const sizes = opset >= 13
      ? constNumbers(facts, node.inputs[1])
      : (attr(node, "split") as number[] | undefined);
    const n = node.outputs.length;
    node.outputs.forEach((_, i) => {
      const dims = [...x.dims!];
      if (sizes) dims[axis] = sizes[i];
      else {
        const tot = x.dims![axis];
        dims[axis] = isNum(tot) && tot % n === 0 ? tot / n : facts.freshDim();
      }
      set(i, { type: x.type, dims });
    });
    return;
  },
  Slice: ({ node, facts, x, set }) => {
    if (!x.dims) return set(0, { type: x.type });
    const r = x.dims.length;
    const starts = constNumbers(facts, node.inputs[1]);
    const ends = constNumbers(facts, node.inputs[2]);
    const axesIn = node.inputs[3] ? constNumbers(facts, node.inputs[3]) : undefined;
    const steps = node.inputs[4] ? constNumbers(facts, node.inputs[4]) : undefined;
    if (!starts || !ends || (node.inputs[3] && !axesIn) || (node.inputs[4] && !steps)) {
      return set(0, { type: x.type, dims: x.dims.map(() => facts.freshDim()) });
    }
    const axes = (axesIn ?? starts.map((_, i) => i)).map((a) => normAxis(a, r));
    const dims = [...x.dims];
    const ranges: ([number, number, number] | undefined)[] = Array(r).fill(undefined);
    axes.forEach((a, i) => {
      const step = steps?.[i] ?? 1;
      const d = x.dims![a];
      if (!isNum(d)) {
        if (step === 1 && starts[i] === 0 && ends[i] >= BIG / 4) return;
        dims[a] = facts.freshDim();
        return;
      }
      const [s, e] = sliceBounds(starts[i], ends[i], step, d);
      dims[a] = step > 0 ? Math.max(0, Math.ceil((e - s) / step)) : Math.max(
        0,
        Math.ceil((s - e) / -step),
      );
      ranges[a] = [s, e, step];
    });
    const f: ValueFacts = { type: x.type, dims };
    if (r === 1 && x.value && ranges[0]) {
      const [s, e, step] = ranges[0];
      const out: Dim[] = [];
      if (step > 0) { for (let k = s; k < e; k += step) out.push(x.value[k]); }
      else for (let k = s; k > e; k += step) out.push(x.value[k]);
      f.value = out;
    } else if (r === 1 && x.value && !ranges[0] && axes.length === 0) f.value = x.value;
    return set(0, f);
  },
  Gather: ({ node, facts, inF, x, set }) => {
    const idx = inF[1] ?? {};
    if (!x.dims || !idx.dims) return set(0, { type: x.type });
    const axis = normAxis((attr(node, "axis") as number | undefined) ?? 0, x.dims.length);
    const dims = [...x.dims.slice(0, axis), ...idx.dims, ...x.dims.slice(axis + 1)];
    const f: ValueFacts = { type: x.type, dims };
    if (x.dims.length === 1 && x.value && allNum(idx.value)) {
      const n = x.value.length;
      f.value = idx.value.map((i) => x.value![i < 0 ? i + n : i] ?? facts.freshInt());
    }
    return set(0, f);
  },
  Shape: ({ node, facts, x, set }) => {
    if (!x.dims) return set(0, { type: DataType.INT64, dims: [facts.freshDim()] });
    const r = x.dims.length;
    let start = (attr(node, "start") as number | undefined) ?? 0;
    let end = (attr(node, "end") as number | undefined) ?? r;
    start = Math.min(Math.max(normAxis(start, r), 0), r);
    end = Math.min(Math.max(normAxis(end, r), 0), r);
    const value = x.dims.slice(start, end);
    return set(0, { type: DataType.INT64, dims: [value.length], value });
  },
  Size: ({ x, set }) => {
    return set(0, {
      type: DataType.INT64,
      dims: [],
      value: x.dims ? [prodDims(x.dims)] : undefined,
    });
  },
  ConstantOfShape: ({ node, facts, x, set }) => {
    const t = attr(node, "value");
    const type = t instanceof Tensor ? t.dataType : DataType.FLOAT;
    const shp = x.value;
    if (!shp) {
      const len = x.dims?.[0];
      return set(0, {
        type,
        dims: isNum(len) ? Array.from({ length: len }, () => facts.freshDim()) : undefined,
      });
    }
    const dims = shp.map((d) => (nonNeg(d) ? d : facts.freshDim()));
    const f: ValueFacts = { type, dims };
    if (INT_TYPES.has(type) && allNum(dims)) {
      const size = dims.reduce((a, b) => a * b, 1);
      const fill = t instanceof Tensor ? t.numbers()[0] : 0;
      if (size <= MAX_VALUE) f.value = Array(size).fill(fill);
    }
    return set(0, f);
  },
  Expand: ({ facts, inF, x, set }) => {
    const shp = inF[1]?.value;
    if (!x.dims || !shp) {
      const len = inF[1]?.dims?.[0];
      if (x.dims && isNum(len)) {
        return set(0, {
          type: x.type,
          dims: Array.from({ length: Math.max(len, x.dims.length) }, () => facts.freshDim()),
        });
      }
      return set(0, { type: x.type });
    }
    const dims = broadcastDims(facts, x.dims, shp.map((d) => (nonNeg(d) ? d : facts.freshDim())));
    return set(0, { type: x.type, dims });
  },
  Range: ({ node, facts, x, set }) => {
    const [s, l, d] = [1, 2, 3].map((_, i) => constNumbers(facts, node.inputs[i])?.[0]);
    if (s !== undefined && l !== undefined && d !== undefined && d !== 0) {
      const n = Math.max(Math.ceil((l - s) / d), 0);
      const f: ValueFacts = { type: x.type, dims: [n] };
      if (n <= MAX_VALUE && x.type !== undefined && INT_TYPES.has(x.type)) {
        f.value = Array.from({ length: n }, (_, i) => s + i * d);
      }
      return set(0, f);
    }
    return set(0, { type: x.type, dims: [facts.freshDim()] });
  },
  Pad: ({ node, facts, opset, x, set }) => {
    if (!x.dims) return set(0, { type: x.type });
    const pads = opset >= 11
      ? constNumbers(facts, node.inputs[1])
      : (attr(node, "pads") as number[] | undefined);
    const r = x.dims.length;
    if (!pads || pads.length !== 2 * r || node.inputs[3]) {
      return set(0, { type: x.type, dims: x.dims.map(() => facts.freshDim()) });
    }
    const dims = x.dims.map((d, i) =>
      pads[i] === 0 && pads[r + i] === 0
        ? d
        : isNum(d)
        ? d + pads[i] + pads[r + i]
        : facts.freshDim()
    );
    return set(0, { type: x.type, dims });
  },
  OneHot: ({ node, facts, inF, x, set }) => {
    const depth = constNumbers(facts, node.inputs[1])?.[0];
    const idx = x.dims;
    if (!idx) return set(0, { type: inF[2]?.type });
    const r = idx.length + 1;
    const axis = normAxis((attr(node, "axis") as number | undefined) ?? -1, r);
    const dims = [...idx];
    dims.splice(axis, 0, depth ?? facts.freshDim());
    return set(0, { type: inF[2]?.type, dims });
  },
  NonZero: ({ facts, x, set }) => {
    return set(0, {
      type: DataType.INT64,
      dims: [x.dims ? x.dims.length : facts.freshDim(), facts.freshDim()],
    });
  },
  ConvTranspose: ({ facts, x, set }) => {
    return set(0, { type: x.type, dims: x.dims?.map(() => facts.freshDim()) });
  },
  Tile: ({ node, facts, x, set }) => {
    const reps = constNumbers(facts, node.inputs[1]);
    if (!x.dims || !reps) {
      return set(0, {
        type: x.type,
        dims: x.dims?.map(() => facts.freshDim()),
      });
    }
    return set(0, { type: x.type, dims: x.dims.map((d, i) => dimMul(d, reps[i])) });
  },
  ScatterElements: ({ x, set }) => {
    return set(0, { type: x.type, dims: x.dims });
  },
  ScatterND: (a) => INFER_RULES.ScatterElements(a),
};

function inferNode(node: Node, facts: Facts, opset: number): void {
  const inF = node.inputs.map((v) => (v ? facts.get(v) : {}));
  const x = inF[0] ?? {};
  const set = (i: number, f: ValueFacts) => {
    if (node.outputs[i]) facts.set(node.outputs[i], f);
  };
  const op = node.opType;
  if (SAME_SHAPE.has(op)) {
    const type = COMPARE.has(op) ? DataType.BOOL : x.type;
    const f: ValueFacts = { type, dims: x.dims };
    if (op === "Identity" || op === "Dropout") f.value = x.value;
    if (op === "Not" && x.value) f.value = x.value.map((d) => (isNum(d) ? (d ? 0 : 1) : d));
    set(0, f);
    if (op === "Dropout" && node.outputs[1]) set(1, { type: DataType.BOOL, dims: x.dims });
    return;
  }
  if (BINARY.has(op) || op === "Where") {
    const fs = inF.filter((_f, i) => node.inputs[i]);
    let dims: Dim[] | undefined = fs[0]?.dims;
    for (const f of fs.slice(1)) {
      dims = dims && f.dims ? broadcastDims(facts, dims, f.dims) : undefined;
    }
    let type = COMPARE.has(op) ? DataType.BOOL : x.type;
    if (op === "Where") type = inF[1]?.type;
    const out: ValueFacts = { type, dims };
    if (type !== undefined && INT_TYPES.has(type)) {
      if (op === "Where") {
        out.value = elementwiseValue(facts, inF.slice(0, 3), dims, ([c, a, b]) => {
          if (isNum(c)) return c ? a : b;
          return dimEq(a, b) ? a : facts.freshInt();
        });
      } else if (fs.length === 2) {
        out.value = elementwiseValue(facts, fs, dims, ([a, b]) => intArith(op, facts, a, b));
      }
    }
    set(0, out);
    return;
  }
  const rule = Object.hasOwn(INFER_RULES, op) ? INFER_RULES[op] : undefined;
  if (rule) return rule({ node, facts, opset, inF, x, set, op });
  if (REDUCE.has(op)) {
    if (!x.dims) return set(0, { type: x.type });
    const keep = ((attr(node, "keepdims") as number | undefined) ?? 1) === 1;
    const axes = reduceAxes(node, facts, opset);
    const noop = attr(node, "noop_with_empty_axes") === 1;
    if (axes === "dynamic") {
      return set(0, { type: x.type, dims: keep ? x.dims.map(() => facts.freshDim()) : undefined });
    }
    if (axes === null || axes.length === 0) {
      if (noop) return set(0, { type: x.type, dims: x.dims });
      return set(0, { type: x.type, dims: keep ? x.dims.map(() => 1) : [] });
    }
    const ax = axes.map((a) => normAxis(a, x.dims!.length));
    const dims = keep
      ? x.dims.map((d, i) => (ax.includes(i) ? 1 : d))
      : x.dims.filter((_, i) => !ax.includes(i));
    return set(0, { type: x.type, dims });
  }
  // unknown op: nothing known about its outputs
}

/** Normalized [start, end) bounds of one Slice axis, clamped as ONNX specifies. */
export function sliceBounds(
  start: number,
  end: number,
  step: number,
  dim: number,
): [number, number] {
  let s = start < 0 ? start + dim : start;
  let e = end < 0 ? end + dim : end;
  if (step > 0) {
    s = Math.min(Math.max(s, 0), dim);
    e = Math.min(Math.max(e, 0), dim);
  } else {
    s = Math.min(Math.max(s, 0), dim - 1);
    e = Math.min(Math.max(e, -1), dim - 1);
  }
  return [s, e];
}

/**
 * Infer static facts for every value of `g` (its nodes must be topologically
 * sorted). Graph inputs take their declared shapes; `dimParam` names become
 * symbols, missing dimensions fresh symbols.
 */
export function inferFacts(g: Graph): Facts {
  const facts = new Facts();
  for (const t of g.initializers.values()) facts.set(t.name, tensorFacts(t));
  for (const vi of g.inputs) {
    if (g.initializers.has(vi.name)) continue;
    const tt = vi.type?.tensorType;
    const dimList = tt?.shape?.dim as { dimValue?: unknown; dimParam?: string }[] | undefined;
    const dims = dimList?.map((d): Dim => {
      const v = toNumber(d.dimValue);
      if (v > 0) return v;
      if (d.dimParam) return { c: 1, s: [d.dimParam] };
      return facts.freshDim();
    });
    facts.set(vi.name, { type: tt?.elemType, dims: tt?.shape ? dims : undefined });
  }
  const opset = g.opset;
  for (const n of g.nodes) {
    try {
      inferNode(n, facts, opset);
    } catch {
      // facts are an optimization: an op the pass misreads leaves its outputs unknown
      for (const o of n.outputs) if (o) facts.set(o, {});
    }
  }
  return facts;
}
