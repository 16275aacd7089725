/**
 * Reading the float graph for the I-ViT lowering: constants through Identity
 * nodes, constant chains through data movement (Swin's relative position bias
 * and shifted-window mask), the nodes of a pattern between two values, and
 * node attributes as numbers.
 *
 * @module
 */
import { type Graph, type GraphIndex, type Node, type Tensor, walkBack } from "../../onnx/graph.ts";

/** Data-movement ops: lowered as the same node on the integer codes. */
export const STRUCT: ReadonlySet<string> = new Set([
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

/** A constant reached through data-movement nodes. */
export interface ConstChain {
  /** The constant. */
  base: Tensor;
  /** The nodes to replay on its quantized codes, in execution order. */
  chain: Node[];
  /** The value the constant defines. */
  value: string;
}

/**
 * A non-data value traced to a constant through data-movement nodes (input 0
 * of each): the constant and the nodes to replay on its quantized codes, in
 * execution order; undefined when the value is not such a constant.
 */
export function traceConstChain(
  g: Graph,
  idx: GraphIndex,
  v: string,
): ConstChain | undefined {
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
export function traceConstTerms(
  g: Graph,
  idx: GraphIndex,
  v: string,
): ConstChain[] | undefined {
  const one = traceConstChain(g, idx, v);
  if (one) return [one];
  const p = idx.producer.get(v);
  const n = p === undefined ? undefined : g.nodes[p];
  if (!n || n.opType !== "Add" || n.inputs.length !== 2) return undefined;
  const a = traceConstChain(g, idx, n.inputs[0]), b = traceConstChain(g, idx, n.inputs[1]);
  return a && b ? [a, b] : undefined;
}

/** Nodes strictly after `from` up to the producer of `to` (data paths only). */
export function between(
  g: Graph,
  idx: GraphIndex,
  data: Set<string>,
  from: string,
  to: string,
): Node[] {
  const { nodes } = walkBack(g, idx, [to], {
    stop: (v) => v === from,
    follow: (_n, i) => data.has(i),
  });
  return [...nodes].map((p) => g.nodes[p]);
}

/** A numeric attribute (float or int) of `n`, `dflt` when absent. */
export function attrNum(n: Node, name: string, dflt: number): number {
  const a = n.attributes.find((x) => x.name === name);
  if (!a) return dflt;
  if (a.type === 1) return a.f;
  return Number(a.i);
}

/** An ints attribute of `n` as numbers, undefined when absent. */
export function attrInts(n: Node, name: string): number[] | undefined {
  const a = n.attributes.find((x) => x.name === name);
  return a ? (a.ints as unknown[]).map(Number) : undefined;
}
