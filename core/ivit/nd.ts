/**
 * A small n-dimensional array and the ONNX data-movement and shape operators
 * the I-ViT simulation needs (Shape, Gather, Reshape, Transpose, Concat,
 * Expand, Slice, Pad, Unsqueeze, ... and integer arithmetic on shape tensors).
 * Integer data lives in `Int32Array`s, int64/bool/double in `Float64Array`s
 * (shape values are small), float32 in `Float32Array`s.
 *
 * @module
 */
import { attr, DataType, type Node, Tensor } from "../onnx/graph.ts";
import { VitqError } from "../errors.ts";

/** A dense tensor with its ONNX element type. */
export interface NDArray {
  /** Shape. */
  dims: number[];
  /** Row-major values. */
  data: Int32Array | Float64Array | Float32Array;
  /** ONNX element type (DataType). */
  type: number;
}

/** Number of elements of a shape. */
export function sizeOf(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

/** Row-major strides of a shape. */
export function stridesOf(dims: readonly number[]): number[] {
  const s = new Array<number>(dims.length);
  let acc = 1;
  for (let i = dims.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= dims[i];
  }
  return s;
}

/** A new array of `type` (Int32Array for 8/16/32-bit integers). */
export function alloc(type: number, n: number): NDArray["data"] {
  switch (type) {
    case DataType.INT8:
    case DataType.UINT8:
    case DataType.INT16:
    case DataType.UINT16:
    case DataType.INT32:
      return new Int32Array(n);
    case DataType.FLOAT:
      return new Float32Array(n);
    default:
      return new Float64Array(n);
  }
}

/** An NDArray from an initializer or Constant tensor. */
export function fromTensor(t: Tensor): NDArray {
  const b = t.raw.slice().buffer;
  let vals: ArrayLike<number>;
  switch (t.dataType) {
    case DataType.INT16:
      vals = new Int16Array(b);
      break;
    case DataType.UINT16:
      vals = new Uint16Array(b);
      break;
    default:
      vals = t.numbers();
  }
  const data = alloc(t.dataType, t.size);
  data.set(vals as ArrayLike<number>);
  return { dims: [...t.dims], data, type: t.dataType };
}

function ints(a: NDArray): number[] {
  return Array.from(a.data as ArrayLike<number>);
}

function bcastShape(a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1, y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new VitqError(`broadcast [${a}] vs [${b}]`);
    out.push(x === 1 ? y : x);
  }
  return out;
}

/** Index map from an output of shape `out` into a broadcast input of shape `dims`. */
export function bcastIndex(dims: readonly number[], out: readonly number[]): Int32Array {
  const n = sizeOf(out);
  const idx = new Int32Array(n);
  const r = out.length;
  const src = new Array(r).fill(1);
  for (let i = 0; i < dims.length; i++) src[r - dims.length + i] = dims[i];
  const ss = stridesOf(src);
  const os = stridesOf(out);
  for (let i = 0; i < n; i++) {
    let rem = i, j = 0;
    for (let d = 0; d < r; d++) {
      const c = Math.floor(rem / os[d]);
      rem -= c * os[d];
      if (src[d] !== 1) j += c * ss[d];
    }
    idx[i] = j;
  }
  return idx;
}

/** Elementwise binary op with numpy broadcasting. */
export function binary(
  a: NDArray,
  b: NDArray,
  f: (x: number, y: number) => number,
  type = a.type,
): NDArray {
  const dims = bcastShape(a.dims, b.dims);
  const n = sizeOf(dims);
  const data = alloc(type, n);
  const same = (d: number[]) => d.length === dims.length && d.every((v, i) => v === dims[i]);
  const ia = same(a.dims) ? undefined : bcastIndex(a.dims, dims);
  const ib = same(b.dims) ? undefined : bcastIndex(b.dims, dims);
  for (let i = 0; i < n; i++) {
    data[i] = f(a.data[ia ? ia[i] : i], b.data[ib ? ib[i] : i]);
  }
  return { dims, data, type };
}

/** Transpose by `perm`. */
export function transpose(a: NDArray, perm: number[]): NDArray {
  const dims = perm.map((p) => a.dims[p]);
  const n = sizeOf(dims);
  const data = alloc(a.type, n);
  const is = stridesOf(a.dims);
  const ps = perm.map((p) => is[p]);
  const r = dims.length;
  const ctr = new Array(r).fill(0);
  let src = 0;
  for (let i = 0; i < n; i++) {
    data[i] = a.data[src];
    for (let d = r - 1; d >= 0; d--) {
      ctr[d]++;
      src += ps[d];
      if (ctr[d] < dims[d]) break;
      src -= ps[d] * dims[d];
      ctr[d] = 0;
    }
  }
  return { dims, data, type: a.type };
}

/** Broadcast `a` to `dims` (ONNX Expand: the result is the broadcast of both shapes). */
export function expand(a: NDArray, shape: number[]): NDArray {
  const dims = bcastShape(a.dims, shape);
  const idx = bcastIndex(a.dims, dims);
  const data = alloc(a.type, idx.length);
  for (let i = 0; i < idx.length; i++) data[i] = a.data[idx[i]];
  return { dims, data, type: a.type };
}

function gather(a: NDArray, ind: NDArray, axisIn: number): NDArray {
  const axis = axisIn < 0 ? axisIn + a.dims.length : axisIn;
  const outer = sizeOf(a.dims.slice(0, axis));
  const inner = sizeOf(a.dims.slice(axis + 1));
  const len = a.dims[axis];
  const idx = ints(ind).map((v) => (v < 0 ? v + len : v));
  const dims = [...a.dims.slice(0, axis), ...ind.dims, ...a.dims.slice(axis + 1)];
  const data = alloc(a.type, sizeOf(dims));
  let o = 0;
  for (let i = 0; i < outer; i++) {
    for (const j of idx) {
      const base = (i * len + j) * inner;
      for (let k = 0; k < inner; k++) data[o++] = a.data[base + k];
    }
  }
  return { dims, data, type: a.type };
}

function concat(xs: NDArray[], axisIn: number): NDArray {
  const r = xs[0].dims.length;
  const axis = axisIn < 0 ? axisIn + r : axisIn;
  const dims = [...xs[0].dims];
  dims[axis] = xs.reduce((s, x) => s + x.dims[axis], 0);
  const outer = sizeOf(dims.slice(0, axis));
  const data = alloc(xs[0].type, sizeOf(dims));
  let o = 0;
  for (let i = 0; i < outer; i++) {
    for (const x of xs) {
      const chunk = sizeOf(x.dims.slice(axis));
      for (let k = 0; k < chunk; k++) data[o++] = x.data[i * chunk + k];
    }
  }
  return { dims, data, type: xs[0].type };
}

function slice(
  a: NDArray,
  starts: number[],
  ends: number[],
  axesIn?: number[],
  steps?: number[],
): NDArray {
  const r = a.dims.length;
  const axes = (axesIn ?? starts.map((_, i) => i)).map((x) => (x < 0 ? x + r : x));
  const st = new Array(r).fill(0), step = new Array(r).fill(1);
  const dims = [...a.dims];
  axes.forEach((ax, i) => {
    const d = a.dims[ax];
    const s = steps?.[i] ?? 1;
    let b = starts[i], e = ends[i];
    if (b < 0) b += d;
    if (e < 0) e += d;
    if (s > 0) {
      b = Math.min(Math.max(b, 0), d);
      e = Math.min(Math.max(e, 0), d);
      dims[ax] = Math.max(0, Math.ceil((e - b) / s));
    } else {
      b = Math.min(Math.max(b, -1), d - 1);
      e = Math.min(Math.max(e, -1), d - 1);
      dims[ax] = Math.max(0, Math.ceil((e - b) / s));
    }
    st[ax] = b;
    step[ax] = s;
  });
  const n = sizeOf(dims);
  const data = alloc(a.type, n);
  const is = stridesOf(a.dims), os = stridesOf(dims);
  for (let i = 0; i < n; i++) {
    let rem = i, src = 0;
    for (let d = 0; d < r; d++) {
      const c = Math.floor(rem / os[d]);
      rem -= c * os[d];
      src += (st[d] + c * step[d]) * is[d];
    }
    data[i] = a.data[src];
  }
  return { dims, data, type: a.type };
}

/**
 * ONNX Pad, mode `constant`: `pads` = [begin of each axis in `axes`..., end...]
 * (negative pads crop), the new cells hold `value`.
 */
function pad(a: NDArray, pads: number[], value: number, axesIn?: number[]): NDArray {
  const r = a.dims.length;
  const axes = (axesIn ?? a.dims.map((_, i) => i)).map((x) => (x < 0 ? x + r : x));
  const begin = new Array(r).fill(0), end = new Array(r).fill(0);
  axes.forEach((ax, i) => {
    begin[ax] = pads[i];
    end[ax] = pads[i + axes.length];
  });
  const dims = a.dims.map((d, i) => d + begin[i] + end[i]);
  if (dims.some((d) => d < 0)) throw new VitqError(`Pad [${a.dims}] by [${pads}]`);
  const n = sizeOf(dims);
  const data = alloc(a.type, n);
  const is = stridesOf(a.dims), os = stridesOf(dims);
  for (let i = 0; i < n; i++) {
    let rem = i, src = 0, inside = true;
    for (let d = 0; d < r; d++) {
      const c = Math.floor(rem / os[d]);
      rem -= c * os[d];
      const j = c - begin[d];
      if (j < 0 || j >= a.dims[d]) {
        inside = false;
        break;
      }
      src += j * is[d];
    }
    data[i] = inside ? a.data[src] : value;
  }
  return { dims, data, type: a.type };
}

function reshape(a: NDArray, shape: number[], allowZero: boolean): NDArray {
  const dims = shape.map((d, i) => (d === 0 && !allowZero ? a.dims[i] : d));
  const known = dims.filter((d) => d !== -1).reduce((x, y) => x * y, 1);
  const out = dims.map((d) => (d === -1 ? sizeOf(a.dims) / known : d));
  if (sizeOf(out) !== sizeOf(a.dims)) throw new VitqError(`Reshape [${a.dims}] to [${shape}]`);
  return { dims: out, data: a.data, type: a.type };
}

function castTo(a: NDArray, to: number): NDArray {
  const data = alloc(to, a.data.length);
  const isInt = to !== DataType.FLOAT && to !== DataType.DOUBLE;
  for (let i = 0; i < a.data.length; i++) {
    const v = a.data[i];
    data[i] = to === DataType.BOOL ? (v !== 0 ? 1 : 0) : isInt ? Math.trunc(v) : v;
  }
  if (to === DataType.INT8 || to === DataType.INT16) {
    const bits = to === DataType.INT8 ? 8 : 16;
    for (let i = 0; i < data.length; i++) {
      if (data[i] < -(2 ** (bits - 1)) || data[i] >= 2 ** (bits - 1)) {
        throw new VitqError(`Cast: ${data[i]} does not fit ${bits} bits`);
      }
    }
  }
  return { dims: [...a.dims], data, type: to };
}

function axesOf(node: Node, inputs: (NDArray | undefined)[], slot: number): number[] | undefined {
  const a = attr(node, "axes");
  if (Array.isArray(a)) return a;
  const t = inputs[slot];
  return t ? ints(t) : undefined;
}

/**
 * Evaluate one ONNX node on NDArrays (the data-movement and shape operators
 * of ViT graphs). Throws a VitqError for other operators.
 */
export function evalNode(node: Node, inputs: (NDArray | undefined)[]): NDArray[] {
  const x = inputs[0]!;
  const num = (name: string, dflt: number) => {
    const v = attr(node, name);
    return typeof v === "number" ? v : dflt;
  };
  switch (node.opType) {
    case "Constant": {
      const v = attr(node, "value");
      if (v instanceof Tensor) return [fromTensor(v)];
      const f = attr(node, "value_float");
      if (typeof f === "number") {
        return [{ dims: [], data: Float32Array.of(f), type: DataType.FLOAT }];
      }
      const i = attr(node, "value_int");
      if (typeof i === "number") {
        return [{ dims: [], data: Float64Array.of(i), type: DataType.INT64 }];
      }
      const is = attr(node, "value_ints");
      if (Array.isArray(is)) {
        return [{ dims: [is.length], data: Float64Array.from(is), type: DataType.INT64 }];
      }
      throw new VitqError(`Constant ${node.name}: unsupported value`);
    }
    case "Identity":
      return [x];
    case "Shape": {
      let dims = x.dims;
      const start = attr(node, "start"), end = attr(node, "end");
      if (typeof start === "number" || typeof end === "number") {
        dims = dims.slice(
          typeof start === "number" ? start : 0,
          typeof end === "number" ? end : undefined,
        );
      }
      return [{ dims: [dims.length], data: Float64Array.from(dims), type: DataType.INT64 }];
    }
    case "Size":
      return [{ dims: [], data: Float64Array.of(sizeOf(x.dims)), type: DataType.INT64 }];
    case "Gather":
      return [gather(x, inputs[1]!, num("axis", 0))];
    case "Unsqueeze": {
      const axes = axesOf(node, inputs, 1)!;
      const r = x.dims.length + axes.length;
      const norm = axes.map((a) => (a < 0 ? a + r : a)).sort((a, b) => a - b);
      const dims = [...x.dims];
      for (const a of norm) dims.splice(a, 0, 1);
      return [{ ...x, dims }];
    }
    case "Squeeze": {
      const axes = axesOf(node, inputs, 1);
      const r = x.dims.length;
      const drop = new Set(
        axes
          ? axes.map((a) => (a < 0 ? a + r : a))
          : x.dims.flatMap((d, i) => (d === 1 ? [i] : [])),
      );
      return [{ ...x, dims: x.dims.filter((_, i) => !drop.has(i)) }];
    }
    case "Flatten": {
      let axis = num("axis", 1);
      if (axis < 0) axis += x.dims.length;
      return [{
        ...x,
        dims: [sizeOf(x.dims.slice(0, axis)), sizeOf(x.dims.slice(axis))],
      }];
    }
    case "Concat":
      return [concat(inputs.filter((t): t is NDArray => !!t), num("axis", 0))];
    case "Reshape":
      return [reshape(x, ints(inputs[1]!), num("allowzero", 0) === 1)];
    case "Transpose": {
      const p = attr(node, "perm");
      const perm = Array.isArray(p) ? p : x.dims.map((_, i) => x.dims.length - 1 - i);
      return [transpose(x, perm)];
    }
    case "Expand":
      return [expand(x, ints(inputs[1]!))];
    case "Slice": {
      const starts = inputs[1] ? ints(inputs[1]) : (attr(node, "starts") as number[]);
      const ends = inputs[2] ? ints(inputs[2]) : (attr(node, "ends") as number[]);
      const axes = inputs[3] ? ints(inputs[3]) : (attr(node, "axes") as number[] | undefined);
      const steps = inputs[4] ? ints(inputs[4]) : undefined;
      return [slice(x, starts, ends, axes, steps)];
    }
    case "Pad": {
      const mode = attr(node, "mode") ?? "constant";
      if (mode !== "constant") throw new VitqError(`Pad ${node.name}: mode ${mode}`);
      const pads = inputs[1] ? ints(inputs[1]) : (attr(node, "pads") as number[]);
      const value = inputs[2] ? inputs[2].data[0] : (attr(node, "value") as number | undefined);
      const axes = inputs[3] ? ints(inputs[3]) : undefined;
      return [pad(x, pads, value ?? 0, axes)];
    }
    case "ConstantOfShape": {
      const shape = ints(x);
      const v = attr(node, "value");
      const t = v instanceof Tensor ? fromTensor(v) : undefined;
      const type = t?.type ?? DataType.FLOAT;
      const data = alloc(type, sizeOf(shape));
      data.fill(t ? t.data[0] : 0);
      return [{ dims: shape, data, type }];
    }
    case "Cast":
      return [castTo(x, num("to", DataType.FLOAT))];
    case "Add":
      return [binary(x, inputs[1]!, (a, b) => a + b)];
    case "Sub":
      return [binary(x, inputs[1]!, (a, b) => a - b)];
    case "Mul":
      return [binary(x, inputs[1]!, (a, b) => a * b)];
    case "Div": {
      const isFloat = x.type === DataType.FLOAT || x.type === DataType.DOUBLE;
      return [binary(x, inputs[1]!, (a, b) => (isFloat ? a / b : Math.trunc(a / b)))];
    }
    case "Equal":
      return [binary(x, inputs[1]!, (a, b) => (a === b ? 1 : 0), DataType.BOOL)];
    case "Where": {
      const c = x, a = inputs[1]!, b = inputs[2]!;
      const dims = bcastShape(bcastShape(c.dims, a.dims), b.dims);
      const ic = bcastIndex(c.dims, dims), ia = bcastIndex(a.dims, dims);
      const ib = bcastIndex(b.dims, dims);
      const data = alloc(a.type, sizeOf(dims));
      for (let i = 0; i < data.length; i++) {
        data[i] = c.data[ic[i]] ? a.data[ia[i]] : b.data[ib[i]];
      }
      return [{ dims, data, type: a.type }];
    }
    case "Split": {
      let axis = num("axis", 0);
      if (axis < 0) axis += x.dims.length;
      const sizes = inputs[1] ? ints(inputs[1]) : (attr(node, "split") as number[] | undefined) ??
        new Array(node.outputs.length).fill(x.dims[axis] / node.outputs.length);
      let off = 0;
      return sizes.map((s) => {
        const r = slice(x, [off], [off + s], [axis]);
        off += s;
        return r;
      });
    }
    default:
      throw new VitqError(
        `simulation: no TypeScript evaluation for op ${node.opType} (${node.name})`,
      );
  }
}
