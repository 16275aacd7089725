/**
 * Classification of the float graph's data nodes for the I-ViT lowering: the
 * role of each node (a site's linear layer, GELU or LayerNorm with the nodes
 * they absorb; attention matmul, Softmax, scale folds, adds, mean, Pad,
 * Concat, data movement, shape computations), shared by the static pre-check
 * ({@link checkLowerable}) and the lowering.
 *
 * @module
 */
import { attr, dataValues, type Graph, type GraphIndex, type Node } from "../../onnx/graph.ts";
import type { Site } from "../../onnx/sites.ts";
import { VitqError } from "../../errors.ts";
import { attrInts, between, constTensor, STRUCT, traceConstTerms } from "./graph.ts";
import { evalShapeChain } from "./shape_chain.ts";

/** How one data node of the float graph is lowered. */
export type Role =
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
export class Classifier {
  /** The float graph, cloned and topologically sorted. */
  readonly g: Graph;
  /** Its producer/consumer index. */
  readonly idx: GraphIndex;
  /** Its data values (those that depend on the image). */
  readonly data: Set<string>;
  /** Role of every data node that has an integer lowering. */
  readonly roles = new Map<Node, Role>();

  /** Classify the data nodes of `graph`; throws when a site's pattern leaks an intermediate. */
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
