/**
 * Batch chunking: a graph with one batched input run over its batch a few
 * images at a time, as an ONNX `Loop` whose body is the graph itself. Each
 * iteration slices `chunk` images (the last one what is left: ONNX `Slice`
 * clamps the end), runs the body and appends each output to a tensor
 * sequence; the outer graph concatenates the sequences along the batch axis.
 * The result is bit-for-bit the unchunked graph's (every op of the body acts
 * per image; {@link chunkBatch} is only for such graphs).
 *
 * Why: ONNX Runtime runs every elementwise op as its own pass over memory, so
 * a graph made of many cheap integer passes (I-ViT's integer-only graph,
 * about 60 per block) is bound by how far its tensors sit from the core. At
 * batch 32 a ViT-S MLP activation is 39 MB of int32, larger than this
 * machine's 32 MiB L3; a chunk of a few images keeps each pass's operands in
 * cache. Float graphs gain too (ViT-S FP32 1.18-1.28x with chunks of 8: its
 * softmax, GELU and LayerNorm passes; the PTQ4ViT QDQ deploy graph
 * 1.05-1.15x), which is why tools/bench_deploy.ts times FP32 chunked alike.
 *
 * @module
 */
import { DataType, Graph, makeAttr, type Proto, Tensor } from "./graph.ts";

/** Name prefix of the Loop plumbing nodes and values in a chunked graph's body and outer graph. */
const P = "vitq_chunk_";

/**
 * Bytes of the largest per-image activation a chunk aims to hold in cache:
 * 10 MiB, tuned on a 2-core Zen 5 with a 32 MiB L3 (ViT-S I-ViT graph, batch
 * 32, interleaved timing: chunks of 4 to 12 images ran 1.15-1.2x faster
 * than the unchunked graph, 8 (this budget) a little ahead of 6 and 4 in the
 * median, 16 less; see the README).
 */
export const CHUNK_BYTES = 10 * 2 ** 20;

/**
 * Images per chunk so that the largest int32 activation of one chunk stays
 * within `budget` bytes, from the batch-1 dims of the float graph's values;
 * undefined (do not chunk) when the whole batch of a usual evaluation (64
 * images) already fits.
 */
export function batchChunkFor(
  dims: Iterable<number[]>,
  budget = CHUNK_BYTES,
): number | undefined {
  let largest = 1;
  for (const d of dims) largest = Math.max(largest, d.reduce((a, b) => a * Math.max(b, 1), 1));
  const chunk = Math.max(1, Math.floor(budget / (4 * largest)));
  return chunk >= 64 ? undefined : chunk;
}

/** Element type of a graph output's declared tensor type (float when undeclared). */
function elemType(v: Proto): number {
  return Number(v.type?.tensorType?.elemType ?? DataType.FLOAT);
}

/** Adds one-output nodes to `g`, each named after its output (the plumbing's names carry the prefix). */
function nodeAdder(g: Graph) {
  return (op: string, inputs: string[], out: string, attributes: Proto[] = []) =>
    g.addNode(op, inputs, { outputs: [out], name: out, attributes });
}

/**
 * `g` run over its (first) input's batch axis in chunks of `chunk` images
 * (module doc). `g` must have one input, batched along axis 0, compute each
 * image independently and be at opset 11 or later; its initializers move into
 * the Loop body.
 */
export function chunkBatch(g: Graph, chunk: number): Graph {
  if (!Number.isInteger(chunk) || chunk < 1) throw new Error(`chunkBatch: bad chunk ${chunk}`);
  // tensor sequences (SequenceEmpty/Insert, ConcatFromSequence) need opset 11
  if (g.opset < 11) throw new Error(`chunkBatch: opset ${g.opset} < 11`);
  const [image] = g.inputNames;
  const body = g.clone();
  const sliced = `${P}image`;
  // the outputs renamed inside the body: a subgraph may not redefine an outer-scope name
  const outs = g.outputs;
  const inside = new Map(outs.map((o, k) => [o.name as string, `${P}y${k}`]));
  for (const n of body.nodes) {
    n.inputs = n.inputs.map((v) => (v === image ? sliced : inside.get(v) ?? v));
    n.outputs = n.outputs.map((v) => inside.get(v) ?? v);
  }
  const c64 = (name: string, values: number[], dims: number[] = [values.length]) =>
    body.setInitializer(Tensor.fromInt64(name, dims, values));
  const step = c64(`${P}step`, [chunk], []);
  const one = c64(`${P}one`, [1]);
  const axis = c64(`${P}axis`, [0]);
  const node = nodeAdder(body);
  node("Mul", [`${P}i`, step], `${P}start`);
  node("Add", [`${P}start`, step], `${P}end`);
  node("Reshape", [`${P}start`, one], `${P}starts`);
  node("Reshape", [`${P}end`, one], `${P}ends`);
  node("Slice", [image, `${P}starts`, `${P}ends`, axis], sliced);
  node("Identity", [`${P}cond`], `${P}cond_out`);
  const seqType = (v: Proto) => ({
    sequenceType: { elemType: { tensorType: { elemType: elemType(v) } } },
  });
  outs.forEach((_, k) => node("SequenceInsert", [`${P}seq${k}`, `${P}y${k}`], `${P}seq${k}_out`));
  body.inputs = [
    { name: `${P}i`, type: { tensorType: { elemType: DataType.INT64, shape: { dim: [] } } } },
    { name: `${P}cond`, type: { tensorType: { elemType: DataType.BOOL, shape: { dim: [] } } } },
    ...outs.map((o, k) => ({ name: `${P}seq${k}`, type: seqType(o) })),
  ];
  body.outputs = [
    { name: `${P}cond_out`, type: { tensorType: { elemType: DataType.BOOL, shape: { dim: [] } } } },
    ...outs.map((o, k) => ({ name: `${P}seq${k}_out`, type: seqType(o) })),
  ];
  body.valueInfo = [];

  const outer = Graph.fromGraphProto({ name: "vitq_chunked" }, g);
  outer.inputs = g.inputs.filter((v) => v.name === image);
  outer.setInitializer(Tensor.fromInt64(`${P}zero`, [], [0]));
  outer.setInitializer(Tensor.fromInt64(`${P}pad`, [], [chunk - 1]));
  outer.setInitializer(Tensor.fromInt64(`${P}size`, [], [chunk]));
  outer.setInitializer(new Tensor(`${P}true`, DataType.BOOL, [], new Uint8Array([1])));
  const o = nodeAdder(outer);
  o("Shape", [image], `${P}shape`);
  o("Gather", [`${P}shape`, `${P}zero`], `${P}n`);
  o("Add", [`${P}n`, `${P}pad`], `${P}n_pad`);
  o("Div", [`${P}n_pad`, `${P}size`], `${P}trips`);
  outs.forEach((v, k) =>
    o("SequenceEmpty", [], `${P}seq${k}_init`, [makeAttr("dtype", elemType(v))])
  );
  outer.addNode("Loop", [`${P}trips`, `${P}true`, ...outs.map((_, k) => `${P}seq${k}_init`)], {
    outputs: outs.map((_, k) => `${P}seq${k}_all`),
    name: `${P}loop`,
    attributes: [{ name: "body", type: 5, g: body.toGraphProto() }],
  });
  outs.forEach((v, k) =>
    o("ConcatFromSequence", [`${P}seq${k}_all`], v.name, [makeAttr("axis", 0)])
  );
  outer.outputs = outs.map((v) => ({ ...v }));
  return outer;
}

/**
 * The per-chunk graph of a graph made by {@link chunkBatch} (its input the
 * chunk of images, under the original input's name; its outputs the
 * original ones), or undefined when `g` is not one.
 */
export function chunkBody(g: Graph): Graph | undefined {
  const loop = g.nodes.find((n) => n.opType === "Loop" && n.name === `${P}loop`);
  const proto = loop?.attributes.find((a) => a.name === "body")?.g;
  if (!proto) return undefined;
  const body = Graph.fromGraphProto(proto, g);
  const [image] = g.inputNames;
  const back = new Map<string, string>([[`${P}image`, image]]);
  g.outputs.forEach((o, k) => back.set(`${P}y${k}`, o.name));
  body.nodes = body.nodes.filter((n) => !n.name.startsWith(P));
  for (const n of body.nodes) {
    n.inputs = n.inputs.map((v) => back.get(v) ?? v);
    n.outputs = n.outputs.map((v) => back.get(v) ?? v);
  }
  for (const k of [...body.initializers.keys()]) if (k.startsWith(P)) body.initializers.delete(k);
  body.inputs = g.inputs.filter((v) => v.name === image);
  body.outputs = g.outputs.map((v) => ({ ...v }));
  return body;
}
