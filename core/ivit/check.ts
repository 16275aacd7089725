/**
 * Static checks of the integer graph: element-type inference over ONNX
 * operators, and the integer-only rule.
 *
 * **The integer-only rule.** Call a value *data* when it is computed from the
 * image (the graph input) by any operator other than `Shape`/`Size` (whose
 * outputs only carry shapes). Then:
 *
 * 1. the image is consumed only by `QuantizeLinear` (the input quantizer) and
 *    `Shape`/`Size`;
 * 2. every data value other than the image has type int8, uint8, int16, int32,
 *    uint32 (the operands of BitShift, defined on unsigned types only) or uint16
 *    (the low 16 bits of an int32, taken by Cast), except the *output dequantizer*: data values from which no integer
 *    data value can be reached (they only flow to graph outputs), which must
 *    start with a `Cast` of an integer value;
 * 3. values that are not data (constants and shape computations) may be
 *    int64 or bool as well; a float one may only feed the input quantizer's
 *    scale or the output dequantizer.
 *
 * A batch-chunked graph (core/onnx/chunk.ts) is checked as its per-chunk
 * graph; its outer graph may hold only the chunk plumbing (Shape of the image,
 * int64 trip-count arithmetic, the Loop, SequenceEmpty, ConcatFromSequence).
 *
 * @module
 */
import { attr, DataType, type Graph, Tensor } from "../onnx/graph.ts";
import { VitqError } from "../errors.ts";
import { chunkBody } from "../onnx/chunk.ts";

const SAME_AS_INPUT0 = new Set([
  "Identity",
  "Reshape",
  "Transpose",
  "Squeeze",
  "Unsqueeze",
  "Flatten",
  "Expand",
  "Slice",
  "Concat",
  "Split",
  "Tile",
  "Pad",
  "Gather",
  "GatherElements",
  "Add",
  "Sub",
  "Mul",
  "Div",
  "Mod",
  "Max",
  "Min",
  "Neg",
  "Abs",
  "Clip",
  "ReduceSum",
  "ReduceSumSquare",
  "ReduceMax",
  "ReduceMin",
  "MatMul",
  "Pow",
  "BitShift",
]);
const BOOL_OUT = new Set([
  "Equal",
  "Greater",
  "Less",
  "GreaterOrEqual",
  "LessOrEqual",
  "Not",
  "And",
  "Or",
  "Xor",
]);
const SAME_TYPE_INPUTS = new Set(["Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "MatMul"]);

/** Integer element types allowed for data between the quantizer and the dequantizer. */
export const INTEGER_DATA_TYPES: ReadonlySet<number> = new Set([
  DataType.INT8,
  DataType.UINT8,
  DataType.INT16,
  DataType.INT32,
  DataType.UINT32,
  DataType.UINT16,
]);

/** ONNX Runtime's JS name of an element type ("int32", "float32", ...). */
export function ortTypeName(t: number): string {
  switch (t) {
    case DataType.FLOAT:
      return "float32";
    case DataType.UINT8:
      return "uint8";
    case DataType.INT8:
      return "int8";
    case DataType.UINT16:
      return "uint16";
    case DataType.INT16:
      return "int16";
    case DataType.INT32:
      return "int32";
    case DataType.UINT32:
      return "uint32";
    case DataType.INT64:
      return "int64";
    case DataType.BOOL:
      return "bool";
    case DataType.DOUBLE:
      return "float64";
    default:
      return `type${t}`;
  }
}

/**
 * Element type of every value of `g` (inputs, initializers, node outputs),
 * by operator rules; throws a VitqError for an operator it does not know or
 * for mixed-type operands of an elementwise operator.
 */
export function inferTypes(g: Graph): Map<string, number> {
  const types = new Map<string, number>();
  for (const v of g.inputs) types.set(v.name, Number(v.type?.tensorType?.elemType ?? 0));
  for (const [k, t] of g.initializers) types.set(k, t.dataType);
  const copy = g.clone();
  copy.topoSort();
  for (const n of copy.nodes) {
    const tin = (i: number) => {
      const t = types.get(n.inputs[i]);
      if (t === undefined) {
        throw new VitqError(`type inference: ${n.inputs[i]} untyped (${n.name})`);
      }
      return t;
    };
    let out: number;
    if (n.opType === "Cast") out = attr(n, "to") as number;
    else if (n.opType === "QuantizeLinear") out = n.inputs[2] ? tin(2) : DataType.UINT8;
    else if (n.opType === "DequantizeLinear") out = DataType.FLOAT;
    else if (n.opType === "MatMulInteger" || n.opType === "ConvInteger") out = DataType.INT32;
    else if (n.opType === "Shape" || n.opType === "Size") out = DataType.INT64;
    else if (BOOL_OUT.has(n.opType)) out = DataType.BOOL;
    else if (n.opType === "ConstantOfShape") {
      const v = attr(n, "value");
      out = v instanceof Tensor ? v.dataType : DataType.FLOAT;
    } else if (n.opType === "Constant") {
      const v = attr(n, "value");
      if (v instanceof Tensor) out = v.dataType;
      else if (attr(n, "value_float") !== undefined || attr(n, "value_floats") !== undefined) {
        out = DataType.FLOAT;
      } else out = DataType.INT64;
    } else if (n.opType === "Where") out = tin(1);
    else if (SAME_AS_INPUT0.has(n.opType)) {
      out = tin(0);
      if (SAME_TYPE_INPUTS.has(n.opType)) {
        for (let i = 1; i < n.inputs.length; i++) {
          if (n.inputs[i] && tin(i) !== out) {
            throw new VitqError(`type inference: ${n.opType} ${n.name} mixes element types`);
          }
        }
      }
    } else throw new VitqError(`type inference: unknown op ${n.opType} (${n.name})`);
    for (const o of n.outputs) if (o) types.set(o, out);
  }
  return types;
}

/**
 * Violations of the integer-only rule (module doc) in `g`, one line each;
 * empty when the graph computes in integers from its input quantizer to its
 * output dequantizer.
 */
export function integerOnlyViolations(g: Graph, types?: Map<string, number>): string[] {
  // a batch-chunked graph (core/onnx/chunk.ts): its outer graph only slices the image into
  // chunks and concatenates the outputs; the rule applies to the per-chunk graph
  const body = chunkBody(g);
  if (body) {
    // the outer graph: the image read only by Shape, trip-count arithmetic (Gather, Add, Div)
    // on int64 shape values and constants, the Loop, and ConcatFromSequence of its sequences
    const shapeVals = new Set<string>();
    const odd: string[] = [];
    const copy = g.clone();
    copy.topoSort();
    for (const n of copy.nodes) {
      const int64 = (v: string) =>
        shapeVals.has(v) || copy.initializers.get(v)?.dataType === DataType.INT64;
      if (n.opType === "Shape") n.outputs.forEach((o) => shapeVals.add(o));
      else if (["Gather", "Add", "Div"].includes(n.opType) && n.inputs.every(int64)) {
        n.outputs.forEach((o) => shapeVals.add(o));
      } else if (!["SequenceEmpty", "Loop", "ConcatFromSequence"].includes(n.opType)) {
        odd.push(`chunked graph: ${n.opType} ${n.name} outside the chunk loop`);
      }
    }
    return [...odd, ...integerOnlyViolations(body)];
  }
  types ??= inferTypes(g);
  const out: string[] = [];
  const copy = g.clone();
  copy.topoSort();
  const nodes = copy.nodes;
  const inputs = new Set(copy.inputNames);
  const data = new Set<string>(inputs);
  for (const n of nodes) {
    if (n.opType === "Shape" || n.opType === "Size") continue;
    if (n.inputs.some((v) => data.has(v))) { for (const o of n.outputs) data.add(o); }
  }
  const isInt = (v: string) => INTEGER_DATA_TYPES.has(types.get(v) ?? -1);
  // values from which an integer data value can be reached
  const feedsInt = new Set<string>();
  for (let i = nodes.length - 1; i >= 0; i--) {
    const n = nodes[i];
    if (n.outputs.some((o) => data.has(o) && (isInt(o) || feedsInt.has(o)))) {
      for (const v of n.inputs) if (v) feedsInt.add(v);
    }
  }
  const producer = new Map<string, string>();
  for (const n of nodes) for (const o of n.outputs) producer.set(o, n.opType);
  const tail = (v: string) => data.has(v) && !inputs.has(v) && !isInt(v) && !feedsInt.has(v);
  for (const n of nodes) {
    for (const [slot, v] of n.inputs.entries()) {
      if (inputs.has(v) && !["QuantizeLinear", "Shape", "Size"].includes(n.opType)) {
        out.push(`image ${v} is consumed by ${n.opType} ${n.name}, not by the input quantizer`);
      }
      const t = types.get(v);
      if (v && !data.has(v) && t === DataType.FLOAT) {
        const ok = (n.opType === "QuantizeLinear" && slot === 1) || n.outputs.every(tail);
        if (!ok) out.push(`float constant ${v} feeds ${n.opType} ${n.name}`);
      }
    }
    for (const o of n.outputs) {
      if (!o || !data.has(o) || isInt(o)) continue;
      if (tail(o)) {
        const fromInt = n.inputs.some((v) => isInt(v));
        if (fromInt && n.opType !== "Cast") {
          out.push(`dequantizer value ${o} is made by ${n.opType} ${n.name}, not a Cast`);
        }
        continue;
      }
      out.push(`${o}: ${ortTypeName(types.get(o) ?? 0)} data value (${n.opType} ${n.name})`);
    }
  }
  return out;
}
