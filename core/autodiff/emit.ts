/**
 * Node-emitting helpers for the gradient builder: fresh names, cached constants
 * and shapes, opset-aware reductions, and `sumTo`, the broadcasting-aware
 * reduction of a gradient back to an operand's shape.
 *
 * @module
 */
import { DataType, type Graph, makeAttr, Tensor } from "../onnx/graph.ts";
import { GraphEmitter } from "../onnx/emitter.ts";
import { VitqError } from "../errors.ts";
import { allNum, type Dim, dimEq, type Facts, isNum, type ValueFacts } from "./infer.ts";

// deno-lint-ignore no-explicit-any
type Proto = any;

/** Largest int64 used as an open Slice end. */
export const INT64_MAX = 9223372036854775807n;

/** An attribute holding a one-element tensor (ConstantOfShape's `value`). */
export function tensorAttr(name: string, t: Tensor): Proto {
  return { name, type: 4, t: t.toProto() };
}

/** A gradient that is `base` zero-padded along one axis (see {@link Emitter.padded}). */
export interface PaddedGrad {
  /** The unpadded gradient. */
  base: string;
  /** The padded axis. */
  axis: number;
  /** Zeros before. */
  begin: number;
  /** Zeros after. */
  end: number;
}

/** Emits nodes into a graph under fresh names, with cached constants and shapes. */
export class Emitter extends GraphEmitter {
  /**
   * Gradients that are another value zero-padded along a single axis (from
   * Gather and Slice rules), so that contributions that exactly tile the axis
   * can be accumulated with one Concat instead of padding each and summing.
   */
  readonly padded = new Map<string, PaddedGrad>();
  private used = new Set<string>();
  private n = 0;
  private shapes = new Map<string, string>();

  /**
   * Create an emitter; every name already in the graph is reserved.
   *
   * @param g graph to emit into (opset 13 or newer)
   * @param facts static facts of its values; emitted values get facts when known
   */
  constructor(g: Graph, readonly facts: Facts) {
    super(g);
    for (const node of g.nodes) {
      used(this.used, node.name);
      for (const v of [...node.inputs, ...node.outputs]) used(this.used, v);
    }
    for (const k of g.initializers.keys()) this.used.add(k);
    for (const v of [...g.inputs, ...g.outputs]) this.used.add(v.name);
  }

  /** Emit Pad(base, pads) with constant pads, remembering single-axis padding. */
  pad(base: string, pads: number[], facts?: ValueFacts): string {
    const out = this.op1("Pad", [base, this.i64(pads)], [], facts);
    const r = pads.length / 2;
    const axes = Array.from({ length: r }, (_, i) => i).filter((i) => pads[i] || pads[r + i]);
    if (axes.length === 1) {
      this.padded.set(out, { base, axis: axes[0], begin: pads[axes[0]], end: pads[r + axes[0]] });
    }
    return out;
  }

  /** Opset of the default domain. */
  get opset(): number {
    return this.g.opset;
  }

  /** A value or node name not used anywhere in the graph. */
  override fresh(prefix: string): string {
    let name: string;
    do name = `${prefix}__ad${this.n++}`; while (this.used.has(name));
    this.used.add(name);
    return name;
  }

  /** Mark a name as used (for names chosen by the caller). */
  reserve(name: string): void {
    this.used.add(name);
  }

  /** Emit a node; returns its output names. */
  op(
    type: string,
    inputs: string[],
    attributes: Proto[] = [],
    opts: { nOut?: number; domain?: string; facts?: ValueFacts; prefix?: string } = {},
  ): string[] {
    const prefix = opts.prefix ?? `grad/${type}`;
    const outputs = Array.from({ length: opts.nOut ?? 1 }, () => this.fresh(prefix));
    this.emitNode(type, inputs, outputs, attributes, this.fresh(`${prefix}_node`), opts.domain);
    if (opts.facts) this.facts.set(outputs[0], opts.facts);
    return outputs;
  }

  /** Emit a single-output node; returns its output name. */
  op1(type: string, inputs: string[], attributes: Proto[] = [], facts?: ValueFacts): string {
    return this.op(type, inputs, attributes, { facts })[0];
  }

  /** A cached int64 constant (1-D unless `dims` says otherwise). */
  i64(values: number[], dims?: number[]): string {
    const d = dims ?? [values.length];
    return this.cachedConstant(
      `i64:${d}:${values}`,
      "grad/const_i64",
      (name) => Tensor.fromInt64(name, d, values),
      (name) => this.facts.set(name, { type: DataType.INT64, dims: d, value: values }),
    );
  }

  /** A 1-D int64 constant that may hold INT64_MAX (for open Slice ends). */
  i64big(values: (number | bigint)[]): string {
    return this.cachedConstant(
      `i64b:${values}`,
      "grad/const_i64",
      (name) => {
        const arr = BigInt64Array.from(values.map((v) => BigInt(v)));
        return new Tensor(name, DataType.INT64, [values.length], new Uint8Array(arr.buffer));
      },
      (name) => this.facts.set(name, { type: DataType.INT64, dims: [values.length] }),
    );
  }

  /** A cached float32 constant: a scalar for a number, else 1-D unless `dims` is given. */
  f32(values: number | number[], dims?: number[]): string {
    const arr = typeof values === "number" ? [values] : values;
    const d = dims ?? (typeof values === "number" ? [] : [arr.length]);
    return this.cachedConstant(
      `f32:${d}:${arr.map((v) => Math.fround(v))}`,
      "grad/const_f32",
      (name) => Tensor.fromFloat32(name, d, arr),
      (name) => this.facts.set(name, { type: DataType.FLOAT, dims: d }),
    );
  }

  /** Static dims of a value, if its rank is known. */
  dims(v: string): Dim[] | undefined {
    return this.facts.get(v).dims;
  }

  /** Rank of a value; throws a VitqError naming `what` when unknown. */
  rank(v: string, what: string): number {
    const r = this.facts.rank(v);
    if (r === undefined) {
      throw new VitqError(`autodiff: ${what}: cannot determine the rank of ${v} statically`);
    }
    return r;
  }

  /** The shape of `v` as a 1-D int64 value: a constant when static, else a cached Shape node. */
  shape(v: string): string {
    const d = this.dims(v);
    if (allNum(d)) return this.i64(d);
    let s = this.shapes.get(v);
    if (!s) {
      s = this.op1("Shape", [v], [], {
        type: DataType.INT64,
        dims: d ? [d.length] : undefined,
        value: d,
      });
      this.shapes.set(v, s);
    }
    return s;
  }

  /** a + b */
  add(a: string, b: string, facts?: ValueFacts): string {
    return this.op1("Add", [a, b], [], facts);
  }

  /** a - b */
  sub(a: string, b: string, facts?: ValueFacts): string {
    return this.op1("Sub", [a, b], [], facts);
  }

  /** a * b */
  mul(a: string, b: string, facts?: ValueFacts): string {
    return this.op1("Mul", [a, b], [], facts);
  }

  /** a / b */
  div(a: string, b: string, facts?: ValueFacts): string {
    return this.op1("Div", [a, b], [], facts);
  }

  /** -a */
  neg(a: string, facts?: ValueFacts): string {
    return this.op1("Neg", [a], [], facts);
  }

  /** Where(c, a, b) */
  where(c: string, a: string, b: string, facts?: ValueFacts): string {
    return this.op1("Where", [c, a, b], [], facts);
  }

  /** ReduceSum over `axes` (null: all axes). */
  reduceSum(x: string, axes: number[] | null, keepdims: boolean, facts?: ValueFacts): string {
    const k = makeAttr("keepdims", keepdims ? 1 : 0);
    if (axes === null) return this.op1("ReduceSum", [x], [k], facts);
    return this.op1("ReduceSum", [x, this.i64(axes)], [k], facts);
  }

  /** ReduceMean over `axes` (null: all axes), in the form the opset wants. */
  reduceMean(x: string, axes: number[] | null, keepdims: boolean, facts?: ValueFacts): string {
    const k = makeAttr("keepdims", keepdims ? 1 : 0);
    if (axes === null) return this.op1("ReduceMean", [x], [k], facts);
    if (this.opset >= 18) return this.op1("ReduceMean", [x, this.i64(axes)], [k], facts);
    return this.op1("ReduceMean", [x], [k, makeAttr("axes", axes)], facts);
  }

  /** Unsqueeze at `axes`. */
  unsqueeze(x: string, axes: number[], facts?: ValueFacts): string {
    return this.op1("Unsqueeze", [x, this.i64(axes)], [], facts);
  }

  /** Squeeze `axes`. */
  squeeze(x: string, axes: number[], facts?: ValueFacts): string {
    return this.op1("Squeeze", [x, this.i64(axes)], [], facts);
  }

  /** Reshape to a shape value. */
  reshape(x: string, shape: string, facts?: ValueFacts): string {
    return this.op1("Reshape", [x, shape], [], facts);
  }

  /** Reshape `x` to the shape of `like` (a constant shape when static). */
  reshapeLike(x: string, like: string): string {
    return this.reshape(x, this.shape(like), this.gradFacts(like));
  }

  /** Transpose with `perm`. */
  transpose(x: string, perm: number[], facts?: ValueFacts): string {
    return this.op1("Transpose", [x], [makeAttr("perm", perm)], facts);
  }

  /** Cast to float32. */
  toFloat(x: string): string {
    return this.op1("Cast", [x], [makeAttr("to", DataType.FLOAT)]);
  }

  /** Zeros (float32) shaped like `v`. */
  zerosLike(v: string): string {
    return this.op1(
      "ConstantOfShape",
      [this.shape(v)],
      [tensorAttr("value", Tensor.fromFloat32("", [1], [0]))],
      this.gradFacts(v),
    );
  }

  /** Facts of a gradient of `v`: float with v's dims. */
  gradFacts(v: string): ValueFacts {
    return { type: DataType.FLOAT, dims: this.dims(v) };
  }

  /**
   * Reduce gradient `g` (shape `gDims`, the broadcast shape) to the shape of
   * operand `target`: sum over the leading axes `target` lacks and over axes
   * where `target` has size 1 and `g` does not. Decided statically from the
   * facts when possible; otherwise the axes are computed at run time from the
   * two shapes.
   */
  sumTo(g: string, gDims: Dim[] | undefined, target: string): string {
    const tDims = this.dims(target);
    const gf = this.gradFacts(target);
    if (gDims && tDims && gDims.length >= tDims.length) {
      const lead = gDims.length - tDims.length;
      const axes: number[] = [];
      let ok = true;
      for (let i = 0; i < lead; i++) axes.push(i);
      tDims.forEach((d, i) => {
        const gd = gDims[lead + i];
        if (dimEq(d, gd)) return;
        if (d === 1) axes.push(lead + i);
        else ok = false;
      });
      if (ok) {
        if (axes.length === 0) return g;
        if (tDims.length === 0) return this.reduceSum(g, null, false, gf);
        if (lead === 0) return this.reduceSum(g, axes, true, gf);
        const r = this.reduceSum(g, axes, true);
        return this.squeeze(r, axes.slice(0, lead), gf);
      }
    }
    // run-time version: pad the target shape with leading ones, compare, reduce
    const sy = this.op1("Shape", [g]);
    const sx = this.shape(target);
    const ry = this.op1("Shape", [sy]);
    const rx = this.op1("Shape", [sx]);
    const ones = this.op1("ConstantOfShape", [this.sub(ry, rx)], [
      tensorAttr("value", Tensor.fromInt64("", [1], [1])),
    ]);
    const px = this.op1("Concat", [ones, sx], [makeAttr("axis", 0)]);
    const differ = this.op1("Not", [this.op1("Equal", [px, sy])]);
    const axes = this.reshape(this.op1("NonZero", [differ]), this.i64([-1]));
    const r = this.op1("ReduceSum", [g, axes], [
      makeAttr("keepdims", 1),
      makeAttr("noop_with_empty_axes", 1),
    ]);
    return this.reshape(r, sx, gf);
  }
}

function used(set: Set<string>, v: string): void {
  if (v) set.add(v);
}

/** Product of numeric dims, or undefined when any is symbolic. */
export function numProd(ds: Dim[] | undefined): number | undefined {
  if (!ds || !ds.every(isNum)) return undefined;
  return (ds as number[]).reduce((a, b) => a * b, 1);
}
