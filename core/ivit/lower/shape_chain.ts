/**
 * Scalars of the static shapes: a non-data value computed only from constants
 * and `Shape` of data values (timm >= 0.9's fused attention exports `q·√scale`
 * with √scale from Shape(q)[-1] → Cast → Sqrt → Div(1, ·) → Cast → Sqrt), valued
 * with float32 / integer semantics per op, one table entry per op.
 *
 * @module
 */
import { DataType, type Graph, type GraphIndex, type Node } from "../../onnx/graph.ts";
import { attrNum, constTensor } from "./graph.ts";

/** ONNX integer element types (Cast `to`). */
const INT_TYPES = new Set([2, 3, 4, 5, 6, 7, 12, 13]);

/** A value of a shape-only chain: its numbers, which are integers, and which depend on the batch. */
interface ShapeVal {
  v: number[];
  int: boolean;
  batch: boolean[];
}

/** Value of one op of a shape chain from its evaluated inputs (undefined: not a static scalar). */
type ShapeOp = (n: Node, ins: (ShapeVal | undefined)[]) => ShapeVal | undefined;

/** Elementwise `f` of two values, one of which may be a scalar. */
function scalarBroadcast(
  a: ShapeVal,
  b: ShapeVal,
  f: (x: number, y: number) => number,
): ShapeVal | undefined {
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
}

const same: ShapeOp = (_n, [a]) => a;
const binary = (f: (x: number, y: number) => number): ShapeOp => (_n, [a, b]) =>
  scalarBroadcast(a!, b!, f);
const unaryFloat = (f: (x: number) => number): ShapeOp => (_n, [a]) => ({
  v: a!.v.map((x) => Math.fround(f(x))),
  int: false,
  batch: a!.batch,
});

/** The ops of a shape chain besides `Shape` of a data value and constants. */
const SHAPE_OPS: Record<string, ShapeOp> = {
  Identity: same,
  Squeeze: same,
  Unsqueeze: same,
  Reshape: same,
  Cast: (n, [a]) => {
    const int = INT_TYPES.has(attrNum(n, "to", 1));
    return { v: a!.v.map((x) => (int ? Math.trunc(x) : Math.fround(x))), int, batch: a!.batch };
  },
  Sqrt: unaryFloat(Math.sqrt),
  Reciprocal: unaryFloat((x) => 1 / x),
  Div: binary((x, y) => x / y),
  Mul: binary((x, y) => x * y),
  Add: binary((x, y) => x + y),
  Sub: binary((x, y) => x - y),
  Pow: (_n, [a, b]) => {
    const out = scalarBroadcast(a!, b!, (x, y) => x ** y);
    if (out) out.int = a!.int;
    return out;
  },
  Concat: (_n, ins) => ({
    v: ins.flatMap((x) => x!.v),
    int: ins.every((x) => x!.int),
    batch: ins.flatMap((x) => x!.batch),
  }),
  Gather: (_n, [a, b]) => {
    const len = a!.v.length;
    const pick = b!.v.map((i) => (i < 0 ? i + len : i));
    return pick.every((i) => i >= 0 && i < len)
      ? { v: pick.map((i) => a!.v[i]), int: a!.int, batch: pick.map((i) => a!.batch[i]) }
      : undefined;
  },
  Slice: (_n, ins) => {
    const [a, b] = ins;
    const len = a!.v.length;
    const steps = ins[4]?.v ?? [1];
    if ((ins[3] && ins[3].v.some((ax) => ax !== 0 && ax !== -1)) || steps[0] !== 1) {
      return undefined;
    }
    const clamp = (x: number) => Math.min(Math.max(x < 0 ? x + len : x, 0), len);
    const lo = clamp(b!.v[0]), hi = clamp(ins[2]!.v[0]);
    return { v: a!.v.slice(lo, hi), int: a!.int, batch: a!.batch.slice(lo, hi) };
  },
};

/** Ops a shape-only scalar chain may contain (besides Shape of a data value and constants). */
const SHAPE_ARITH = new Set([...Object.keys(SHAPE_OPS), "Shape", "Constant"]);

/** `Shape` of data value `x` (its static dims from `dimsOf`, batch 1; none when only checking). */
function shapeOf(n: Node, dimsOf?: (value: string) => number[]): ShapeVal {
  const dims = dimsOf ? dimsOf(n.inputs[0]) : [];
  const r = dims.length;
  let start = attrNum(n, "start", 0), end = attrNum(n, "end", r);
  if (start < 0) start += r;
  if (end < 0) end += r;
  end = Math.min(end, r);
  const idxs = dimsOf ? Array.from({ length: Math.max(0, end - start) }, (_, i) => start + i) : [];
  return { v: idxs.map((i) => dims[i]), int: true, batch: idxs.map((i) => i === 0) };
}

/**
 * Evaluate a non-data value computed only from constants and `Shape` of data
 * values (see the module doc). `dimsOf` gives the static dims of a data value
 * (batch 1); without it the chain is only checked (returns `[]` on success).
 * Undefined when the chain has other ops, or its result depends on the batch
 * dimension.
 */
export function evalShapeChain(
  g: Graph,
  idx: GraphIndex,
  data: Set<string>,
  v: string,
  dimsOf?: (value: string) => number[],
): number[] | undefined {
  const memo = new Map<string, ShapeVal | undefined>();
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
      out = shapeOf(n, dimsOf);
    } else {
      const ins = n.inputs.map((x) => (x ? walk(x, depth + 1) : undefined));
      if (n.inputs.some((x, i) => x && ins[i] === undefined)) {
        out = undefined;
      } else if (!dimsOf) {
        out = { v: [], int: false, batch: [] }; // structure only
      } else {
        out = SHAPE_OPS[n.opType]?.(n, ins);
      }
    }
    memo.set(name, out);
    return out;
  };
  const r = walk(v, 0);
  if (!r || r.batch.some(Boolean)) return undefined;
  return r.v;
}
