/**
 * A small mutable graph IR over ONNX models: load, edit, save.
 *
 * Nodes keep their ONNX attributes as decoded protobuf objects, so anything the
 * IR does not interpret survives a round trip. Initializers are held as
 * little-endian bytes with a data type and dims; float tensors are viewed as
 * `Float32Array` without copying where alignment allows.
 *
 * @module
 */
import { ModelProtoType } from "./schema.ts";
import { VitqError } from "../errors.ts";

/** ONNX tensor element types used by vitq. */
export const DataType = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  UINT16: 4,
  INT16: 5,
  INT32: 6,
  INT64: 7,
  BOOL: 9,
  FLOAT16: 10,
  DOUBLE: 11,
  UINT32: 12,
  UINT64: 13,
  /** Packed 4-bit integers, two per byte, low nibble first (opset 21). */
  UINT4: 21,
  INT4: 22,
} as const;

const ELEM_BYTES: Record<number, number> = {
  1: 4,
  2: 1,
  3: 1,
  4: 2,
  5: 2,
  6: 4,
  7: 8,
  9: 1,
  10: 2,
  11: 8,
  12: 4,
  13: 8,
};

/** A decoded ONNX protobuf message (a plain object). */
// deno-lint-ignore no-explicit-any
export type Proto = any;

/** Convert a protobufjs int64 (number or Long) to a JS number. */
export function toNumber(v: unknown): number {
  if (typeof v === "number") return v;
  if (typeof v === "bigint") return Number(v);
  if (v && typeof v === "object" && "toNumber" in v) {
    return (v as { toNumber(): number }).toNumber();
  }
  if (typeof v === "string") return Number(v);
  return 0;
}

/** An initializer or constant: raw little-endian bytes plus type and shape. */
export class Tensor {
  /**
   * @param name value name in the graph
   * @param dataType ONNX element type ({@link DataType})
   * @param dims shape
   * @param raw little-endian element bytes (a Node Buffer, as protobufjs
   *   decodes from a Buffer, is re-viewed as a plain Uint8Array: Buffer's
   *   `slice()` is a view, not the copy the typed-array readers rely on)
   */
  constructor(
    public name: string,
    public dataType: number,
    public dims: number[],
    public raw: Uint8Array,
  ) {
    if (raw.constructor !== Uint8Array) {
      this.raw = new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
    }
  }

  /** Number of elements. */
  get size(): number {
    return this.dims.reduce((a, b) => a * b, 1);
  }

  /** A float32 tensor from values (copied). */
  static fromFloat32(name: string, dims: number[], data: Float32Array | number[]): Tensor {
    const arr = data instanceof Float32Array ? data.slice() : Float32Array.from(data);
    return new Tensor(name, DataType.FLOAT, dims, new Uint8Array(arr.buffer));
  }

  /** An int64 tensor from values. */
  static fromInt64(name: string, dims: number[], data: number[]): Tensor {
    const arr = BigInt64Array.from(data.map((v) => BigInt(v)));
    return new Tensor(name, DataType.INT64, dims, new Uint8Array(arr.buffer));
  }

  /** An int32 tensor from values. */
  static fromInt32(name: string, dims: number[], data: ArrayLike<number>): Tensor {
    return new Tensor(name, DataType.INT32, dims, new Uint8Array(Int32Array.from(data).buffer));
  }

  /** Values as float32 (a view when aligned, else a copy). Throws for other types. */
  float32(): Float32Array {
    if (this.dataType !== DataType.FLOAT) {
      throw new VitqError(`tensor ${this.name}: expected float32, got ONNX type ${this.dataType}`);
    }
    if (this.raw.byteOffset % 4 === 0) {
      return new Float32Array(this.raw.buffer, this.raw.byteOffset, this.raw.byteLength / 4);
    }
    return new Float32Array(this.raw.slice().buffer);
  }

  /** Values as JS numbers, for any integer or float type (small tensors only). */
  numbers(): number[] {
    const b = this.raw.slice().buffer;
    switch (this.dataType) {
      case DataType.FLOAT:
        return Array.from(new Float32Array(b));
      case DataType.DOUBLE:
        return Array.from(new Float64Array(b));
      case DataType.INT64:
        return Array.from(new BigInt64Array(b), Number);
      case DataType.INT32:
        return Array.from(new Int32Array(b));
      case DataType.INT8:
        return Array.from(new Int8Array(b));
      case DataType.UINT8:
      case DataType.BOOL:
        return Array.from(new Uint8Array(b));
      default:
        throw new VitqError(`tensor ${this.name}: unsupported ONNX type ${this.dataType}`);
    }
  }

  /** Decode a TensorProto, moving typed fields into raw bytes. */
  static fromProto(t: Proto): Tensor {
    const dims = (t.dims ?? []).map(toNumber);
    const name = t.name ?? "";
    const dataType = t.dataType ?? 0;
    if (t.dataLocation === 1) {
      throw new VitqError(
        `tensor ${name}: external data is not supported; re-export with all weights inside the .onnx file`,
      );
    }
    if (t.rawData && t.rawData.length > 0) return new Tensor(name, dataType, dims, t.rawData);
    const n = dims.reduce((a: number, b: number) => a * b, 1);
    let arr: ArrayBufferView;
    switch (dataType) {
      case DataType.FLOAT:
        arr = Float32Array.from(t.floatData ?? []);
        break;
      case DataType.DOUBLE:
        arr = Float64Array.from(t.doubleData ?? []);
        break;
      case DataType.INT64:
        arr = BigInt64Array.from((t.int64Data ?? []).map((v: unknown) => BigInt(toNumber(v))));
        break;
      case DataType.INT32:
        arr = Int32Array.from(t.int32Data ?? []);
        break;
      case DataType.INT8:
        arr = Int8Array.from(t.int32Data ?? []);
        break;
      case DataType.UINT8:
      case DataType.BOOL:
        arr = Uint8Array.from(t.int32Data ?? []);
        break;
      case DataType.INT16:
        arr = Int16Array.from(t.int32Data ?? []);
        break;
      case DataType.UINT16:
      case DataType.FLOAT16:
        arr = Uint16Array.from(t.int32Data ?? []);
        break;
      default:
        throw new VitqError(`tensor ${name}: unsupported ONNX element type ${dataType}`);
    }
    const raw = new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);
    const packed = dataType === DataType.INT4 || dataType === DataType.UINT4;
    if (raw.byteLength !== (packed ? Math.ceil(n / 2) : n * (ELEM_BYTES[dataType] ?? 1))) {
      throw new VitqError(`tensor ${name}: ${raw.byteLength} bytes do not match dims [${dims}]`);
    }
    return new Tensor(name, dataType, dims, raw);
  }

  /** Encode as a TensorProto with raw_data. */
  toProto(): Proto {
    return { name: this.name, dataType: this.dataType, dims: this.dims, rawData: this.raw };
  }
}

/** A graph node. `attributes` are decoded ONNX AttributeProto objects. */
export interface Node {
  name: string;
  opType: string;
  domain: string;
  inputs: string[];
  outputs: string[];
  attributes: Proto[];
}

/** Read a scalar or list attribute of a node, or `undefined` if absent. */
export function attr(node: Node, name: string): number | number[] | string | Tensor | undefined {
  const a = node.attributes.find((x) => x.name === name);
  if (!a) return undefined;
  switch (a.type) {
    case 1:
      return a.f;
    case 2:
      return toNumber(a.i);
    case 3:
      return new TextDecoder().decode(a.s);
    case 4:
      return Tensor.fromProto(a.t);
    case 6:
      return Array.from(a.floats as number[]);
    case 7:
      return (a.ints as unknown[]).map(toNumber);
    default:
      return undefined;
  }
}

/** Build an attribute proto from a JS value (int, float, ints, floats, string). */
export function makeAttr(
  name: string,
  value: number | number[] | string,
  kind: "int" | "float" = "int",
): Proto {
  if (typeof value === "string") return { name, type: 3, s: new TextEncoder().encode(value) };
  if (Array.isArray(value)) {
    return kind === "float" ? { name, type: 6, floats: value } : { name, type: 7, ints: value };
  }
  return kind === "float" ? { name, type: 1, f: value } : { name, type: 2, i: value };
}

/** Graph input/output description (decoded ValueInfoProto). */
export type ValueInfo = Proto;

/** Where a value is used: node index and input slot. */
export interface Use {
  node: number;
  slot: number;
}

/** Producer and consumer indices of a graph, valid until the next edit. */
export interface GraphIndex {
  producer: Map<string, number>;
  consumers: Map<string, Use[]>;
}

/**
 * Values that depend on a graph input through data (not shape) computation:
 * everything downstream of an input except what only `Shape`, `Size` and
 * `ConstantOfShape` derive from it. `g.nodes` must be topologically sorted.
 */
export function dataValues(g: Graph): Set<string> {
  const data = new Set<string>(g.inputNames);
  for (const n of g.nodes) {
    if (n.opType === "Shape" || n.opType === "Size" || n.opType === "ConstantOfShape") continue;
    if (n.inputs.some((v) => data.has(v))) { for (const o of n.outputs) data.add(o); }
  }
  return data;
}

/** What a backward walk from some values reached (see {@link walkBack}). */
export interface BackWalk {
  /** Every value reached (the start values included, stop values excluded). */
  values: Set<string>;
  /** Node indices of their producers, in the order first reached. */
  nodes: Set<number>;
}

/**
 * Walk from `values` back through their producers, depth first: every value
 * they depend on and the nodes that compute them. `stop` ends the walk at a
 * value (not reached); `follow` decides per node input whether to go on
 * through it (default: every non-empty input).
 */
export function walkBack(
  g: Graph,
  idx: GraphIndex,
  values: Iterable<string>,
  opts: { stop?: (v: string) => boolean; follow?: (n: Node, input: string) => boolean } = {},
): BackWalk {
  const nodes = new Set<number>();
  const stack = [...values];
  const seen = new Set<string>();
  while (stack.length) {
    const x = stack.pop()!;
    if (seen.has(x) || opts.stop?.(x)) continue;
    seen.add(x);
    const p = idx.producer.get(x);
    if (p === undefined || nodes.has(p)) continue;
    nodes.add(p);
    const n = g.nodes[p];
    for (const i of n.inputs) if (i && (!opts.follow || opts.follow(n, i))) stack.push(i);
  }
  return { values: seen, nodes };
}

/** Node indices of every ancestor of `values` (their producers, transitively). */
export function ancestors(g: Graph, idx: GraphIndex, values: Iterable<string>): Set<number> {
  return walkBack(g, idx, values).nodes;
}

/** A mutable ONNX graph with the model-level fields it came with. */
export class Graph {
  nodes: Node[];
  initializers: Map<string, Tensor>;
  inputs: ValueInfo[];
  outputs: ValueInfo[];
  valueInfo: ValueInfo[];
  private model: Proto;
  private graphRest: Proto;
  private counter = 0;

  private constructor(model: Proto) {
    const g = model.graph ?? {};
    this.nodes = (g.node ?? []).map((n: Proto, i: number) => ({
      name: n.name || `${n.opType}_${i}`,
      opType: n.opType,
      domain: n.domain ?? "",
      inputs: [...(n.input ?? [])],
      outputs: [...(n.output ?? [])],
      attributes: n.attribute ?? [],
      // keep doc strings etc. out of the IR: they do not affect computation
    }));
    this.initializers = new Map();
    for (const t of g.initializer ?? []) {
      const tensor = Tensor.fromProto(t);
      this.initializers.set(tensor.name, tensor);
    }
    this.inputs = g.input ?? [];
    this.outputs = g.output ?? [];
    this.valueInfo = g.valueInfo ?? [];
    const { node: _n, initializer: _i, input: _in, output: _o, valueInfo: _v, ...rest } = g;
    this.graphRest = rest;
    const { graph: _g, ...modelRest } = model;
    this.model = modelRest;
  }

  /** An empty graph with the default ONNX domain at `opset` (for small helper graphs). */
  static create(opset = 17, name = "vitq"): Graph {
    return new Graph({
      irVersion: 8,
      producerName: "vitq",
      opsetImport: [{ domain: "", version: opset }],
      graph: { name },
    });
  }

  /** Declare a float32 graph input with the given dims (-1 or a string for a symbolic dim). */
  addInput(name: string, dims: (number | string)[], elemType: number = DataType.FLOAT): void {
    const dim = dims.map((
      d,
    ) => (typeof d === "number" && d >= 0 ? { dimValue: d } : { dimParam: String(d) }));
    this.inputs.push({ name, type: { tensorType: { elemType, shape: { dim } } } });
  }

  /** Decode an ONNX model from bytes. `source` names the file in errors. */
  static fromBytes(bytes: Uint8Array, source = "<bytes>"): Graph {
    let model: Proto;
    try {
      model = ModelProtoType.decode(bytes);
    } catch (e) {
      throw new VitqError(`${source}: not a readable ONNX model (${(e as Error).message})`);
    }
    if (!model.graph || !model.graph.node || model.graph.node.length === 0) {
      throw new VitqError(`${source}: not a readable ONNX model (no graph nodes)`);
    }
    try {
      return new Graph(model);
    } catch (e) {
      if (e instanceof VitqError) throw new VitqError(`${source}: ${e.message}`);
      throw new VitqError(`${source}: not a readable ONNX model (${(e as Error).message})`);
    }
  }

  /** Read and decode an ONNX file. */
  static async load(path: string): Promise<Graph> {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(path);
    } catch (e) {
      throw new VitqError(`${path}: cannot read model file (${(e as Error).name})`);
    }
    return Graph.fromBytes(bytes, path);
  }

  /**
   * The graph as a decoded GraphProto (nodes topologically sorted first): what
   * {@link toBytes} encodes, and what a `Loop`/`Scan`/`If` node holds as a body.
   */
  toGraphProto(): Proto {
    this.topoSort();
    return {
      ...this.graphRest,
      node: this.nodes.map((n) => ({
        input: n.inputs,
        output: n.outputs,
        name: n.name,
        opType: n.opType,
        domain: n.domain,
        attribute: n.attributes,
      })),
      initializer: [...this.initializers.values()].map((t) => t.toProto()),
      input: this.inputs,
      output: this.outputs,
      valueInfo: this.valueInfo,
    };
  }

  /** A graph from a decoded GraphProto (e.g. a Loop body), with the opsets and IR version of `like`. */
  static fromGraphProto(graph: Proto, like: Graph): Graph {
    return new Graph({ ...like.model, graph });
  }

  /** Encode to ONNX bytes (nodes are topologically sorted first). */
  toBytes(): Uint8Array {
    return ModelProtoType.encode({ ...this.model, graph: this.toGraphProto() }).finish();
  }

  /** Write the model to a file. */
  async save(path: string): Promise<void> {
    await Deno.writeFile(path, this.toBytes());
  }

  /** Deep-copy nodes and value lists; initializer tensors are shared (replace, never mutate). */
  clone(): Graph {
    const g = Object.create(Graph.prototype) as Graph;
    g.nodes = this.nodes.map((n) => ({
      ...n,
      inputs: [...n.inputs],
      outputs: [...n.outputs],
      attributes: [...n.attributes],
    }));
    g.initializers = new Map(this.initializers);
    g.inputs = [...this.inputs];
    g.outputs = [...this.outputs];
    g.valueInfo = [...this.valueInfo];
    g.model = this.model;
    g.graphRest = this.graphRest;
    g.counter = this.counter;
    return g;
  }

  /**
   * Set the default domain's opset version and raise the IR version to at least
   * `ir` (a new model record, so clones keep theirs).
   */
  setOpset(version: number, ir = 0): void {
    const ops = (this.model.opsetImport ?? []) as Proto[];
    this.model = {
      ...this.model,
      opsetImport: ops.map((o) => (!o.domain || o.domain === "ai.onnx" ? { ...o, version } : o)),
      irVersion: Math.max(toNumber(this.model.irVersion ?? 0), ir),
    };
  }

  /** Import operator set `domain` at `version` unless the model already imports it. */
  useDomain(domain: string, version: number): void {
    const ops = (this.model.opsetImport ?? []) as Proto[];
    if (ops.some((o) => o.domain === domain)) return;
    this.model = { ...this.model, opsetImport: [...ops, { domain, version }] };
  }

  /** Opset version of the default ONNX domain. */
  get opset(): number {
    const ops = (this.model.opsetImport ?? []) as Proto[];
    const d = ops.find((o) => !o.domain || o.domain === "ai.onnx");
    return d ? toNumber(d.version) : 0;
  }

  /** Names of graph inputs that are not initializers. */
  get inputNames(): string[] {
    return this.inputs.map((v) => v.name).filter((n: string) => !this.initializers.has(n));
  }

  /** Names of graph outputs. */
  get outputNames(): string[] {
    return this.outputs.map((v) => v.name);
  }

  /** The node producing each value, for the current node list. */
  producers(): Map<string, Node> {
    const producer = new Map<string, Node>();
    for (const n of this.nodes) for (const o of n.outputs) producer.set(o, n);
    return producer;
  }

  /** Producer/consumer index of the current node list. */
  index(): GraphIndex {
    const producer = new Map<string, number>();
    const consumers = new Map<string, Use[]>();
    this.nodes.forEach((n, i) => {
      for (const o of n.outputs) producer.set(o, i);
      n.inputs.forEach((v, slot) => {
        if (!v) return;
        const list = consumers.get(v);
        if (list) list.push({ node: i, slot });
        else consumers.set(v, [{ node: i, slot }]);
      });
    });
    return { producer, consumers };
  }

  /** A value name not yet used in the graph. */
  uniqueName(prefix: string): string {
    const used = new Set<string>();
    for (const n of this.nodes) for (const v of [...n.inputs, ...n.outputs]) used.add(v);
    for (const k of this.initializers.keys()) used.add(k);
    let name: string;
    do {
      name = `${prefix}__vq${this.counter++}`;
    } while (used.has(name));
    return name;
  }

  /** Add a node; returns its first output name. Outputs are generated when not given. */
  addNode(
    opType: string,
    inputs: string[],
    opts: { outputs?: string[]; attributes?: Proto[]; name?: string; domain?: string } = {},
  ): string {
    const outputs = opts.outputs ?? [this.uniqueName(`${opType.toLowerCase()}_out`)];
    this.nodes.push({
      name: opts.name ?? this.uniqueName(opType),
      opType,
      domain: opts.domain ?? "",
      inputs,
      outputs,
      attributes: opts.attributes ?? [],
    });
    return outputs[0];
  }

  /** Add (or replace) an initializer. */
  setInitializer(t: Tensor): string {
    this.initializers.set(t.name, t);
    return t.name;
  }

  /** Add a float32 scalar or vector constant initializer with a fresh name. */
  constFloat(prefix: string, values: number | number[] | Float32Array, dims?: number[]): string {
    const arr = typeof values === "number" ? [values] : values;
    const d = dims ?? (typeof values === "number" ? [] : [arr.length]);
    return this.setInitializer(Tensor.fromFloat32(this.uniqueName(prefix), d, arr));
  }

  /** Value of a constant (initializer or Constant node output), or undefined. */
  constant(name: string, idx?: GraphIndex): Tensor | undefined {
    const t = this.initializers.get(name);
    if (t) return t;
    const p = (idx ?? this.index()).producer.get(name);
    if (p === undefined) return undefined;
    const node = this.nodes[p];
    if (node.opType !== "Constant") return undefined;
    const v = attr(node, "value");
    if (v instanceof Tensor) return v;
    const f = attr(node, "value_float");
    if (typeof f === "number") return Tensor.fromFloat32(name, [], [f]);
    return undefined;
  }

  /** Expose an intermediate value as an extra graph output (float32 unless told). */
  addOutput(name: string, elemType: number = DataType.FLOAT): void {
    if (this.outputs.some((o) => o.name === name)) return;
    this.outputs.push({ name, type: { tensorType: { elemType } } });
  }

  /** Keep only the given graph outputs (in that order) and drop nodes no longer needed. */
  setOutputs(names: string[]): void {
    const byName = new Map(this.outputs.map((o) => [o.name, o]));
    this.outputs = names.map((n) =>
      byName.get(n) ?? { name: n, type: { tensorType: { elemType: 1 } } }
    );
    this.prune();
  }

  /** Remove nodes and initializers that no graph output depends on. */
  prune(): void {
    const needed = ancestors(this, this.index(), this.outputNames);
    this.nodes = this.nodes.filter((_, i) => needed.has(i));
    const used = new Set([...this.outputNames, ...this.nodes.flatMap((n) => n.inputs)]);
    for (const k of [...this.initializers.keys()]) if (!used.has(k)) this.initializers.delete(k);
  }

  /** Reorder nodes topologically (stable for already-sorted graphs). */
  topoSort(): void {
    const idx = this.index();
    const available = new Set<string>([
      ...this.inputs.map((v) => v.name),
      ...this.initializers.keys(),
      "",
    ]);
    const pending = new Map<number, number>();
    const ready: number[] = [];
    this.nodes.forEach((n, i) => {
      const missing = n.inputs.filter((v) => v && !available.has(v) && idx.producer.has(v)).length;
      pending.set(i, missing);
      if (missing === 0) ready.push(i);
    });
    const order: number[] = [];
    const done = new Set<number>();
    // process in original order preference: a min-heap by index, kept as a sorted array
    ready.sort((a, b) => a - b);
    while (ready.length) {
      const i = ready.shift()!;
      if (done.has(i)) continue;
      done.add(i);
      order.push(i);
      const newly: number[] = [];
      for (const o of this.nodes[i].outputs) {
        for (const u of idx.consumers.get(o) ?? []) {
          const left = pending.get(u.node)! - 1;
          pending.set(u.node, left);
          if (left === 0) newly.push(u.node);
        }
      }
      for (const j of newly) {
        let lo = 0;
        while (lo < ready.length && ready[lo] < j) lo++;
        ready.splice(lo, 0, j);
      }
    }
    if (order.length !== this.nodes.length) {
      const stuck = this.nodes.find((_, i) => !done.has(i));
      throw new VitqError(`graph has a cycle or a missing input at node ${stuck?.name}`);
    }
    this.nodes = order.map((i) => this.nodes[i]);
  }
}
