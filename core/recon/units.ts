/**
 * Reconstruction units for module-wise optimization (BRECQ / QDrop / ADFQ-ViT
 * style): the patch embedding, per transformer block the attention module
 * (qkv → q·kᵀ → softmax → A·V → proj) and the MLP module (fc1 → GELU → fc2),
 * Swin patch-merging reductions and the classifier head(s), in network order.
 * LayerNorms and residual adds lie between units and stay outside them.
 *
 * {@link cutUnit} cuts a unit's subgraph out of the full graph: the unit's
 * input value becomes a graph input, its output (and, for attention units, the
 * softmax output) become the graph outputs, and everything else is pruned.
 *
 * @module
 */
import { dataValues, type Graph, walkBack } from "../onnx/graph.ts";
import type { Site } from "../onnx/sites.ts";
import { VitqError } from "../errors.ts";

/** Kind of a reconstruction unit. */
export type UnitKind = "patch_embed" | "attention" | "mlp" | "reduction" | "head";

/** One reconstruction unit. */
export interface Unit {
  /** Id, e.g. `b3.attn`, `b3.mlp`, `patch_embed`, `head`. */
  id: string;
  kind: UnitKind;
  /** Transformer block index (-1 outside blocks). */
  block: number;
  /** The unit's input value (FP input = "cur_sym" of the reference). */
  input: string;
  /** The unit's output value (after the last linear's bias). */
  output: string;
  /** Softmax output (the attention map) of an attention unit. */
  attn?: string;
  /** Linear sites whose weights belong to the unit, in network order. */
  linears: Site[];
  /** Matmul sites (q·kᵀ, A·V) of an attention unit. */
  matmuls: Site[];
  /** Position of the unit's first node in the graph (for ordering). */
  order: number;
}

/**
 * Reconstruction units of a graph, in network order.
 *
 * @param g the FP graph
 * @param sites its sites (from `findSites`)
 */
export function findUnits(g: Graph, sites: Site[]): Unit[] {
  const pos = new Map(g.nodes.map((n, i) => [n.name, i]));
  const at = (s: Site) => pos.get(s.node) ?? 0;
  const units: Unit[] = [];
  const linears = sites.filter((s) => s.kind === "linear");
  const blocks = [...new Set(sites.filter((s) => s.kind === "matmul").map((s) => s.block))].sort(
    (a, b) => a - b,
  );
  for (const b of blocks) {
    const inBlock = (r: string) => linears.filter((s) => s.block === b && s.role === r);
    const qkv = [...inBlock("qkv"), ...inBlock("q"), ...inBlock("k"), ...inBlock("v")];
    const proj = inBlock("proj")[0];
    const fc1 = inBlock("fc1")[0], fc2 = inBlock("fc2")[0];
    const qk = sites.find((s) => s.block === b && s.role === "qk");
    const av = sites.find((s) => s.block === b && s.role === "av");
    const sm = sites.find((s) => s.block === b && s.kind === "softmax_out");
    if (!qkv.length || !proj || !fc1 || !fc2 || !qk || !av || !sm) {
      throw new VitqError(`block ${b}: incomplete sites for module-wise reconstruction`);
    }
    const inputs = new Set(qkv.map((s) => s.input));
    if (inputs.size !== 1) {
      throw new VitqError(`block ${b}: q, k and v do not share one input value`);
    }
    qkv.sort((x, y) => at(x) - at(y));
    units.push({
      id: `b${b}.attn`,
      kind: "attention",
      block: b,
      input: qkv[0].input!,
      output: proj.output,
      attn: sm.output,
      linears: [...qkv, proj],
      matmuls: [qk, av],
      order: Math.min(...qkv.map(at)),
    });
    units.push({
      id: `b${b}.mlp`,
      kind: "mlp",
      block: b,
      input: fc1.input!,
      output: fc2.output,
      linears: [fc1, fc2],
      matmuls: [],
      order: at(fc1),
    });
  }
  for (const s of linears) {
    if (s.role === "patch_embed" || s.role === "reduction" || s.role === "head") {
      units.push({
        id: s.id,
        kind: s.role,
        block: s.block,
        input: s.input!,
        output: s.output,
        linears: [s],
        matmuls: [],
        order: at(s),
      });
    }
  }
  return units.sort((a, b) => a.order - b.order);
}

/**
 * Values from outside a unit that the unit's subgraph needs only for their
 * shape (a Swin block computes its window count from the batch size of the
 * block input): walking back from `outputs` and stopping at `inputs`, every
 * data value reached only as the input of a Shape node. Feed them as extra
 * inputs of {@link cutUnit} (any values of the right shape do).
 */
export function shapeSources(graph: Graph, inputs: string[], outputs: string[]): string[] {
  const stop = new Set(inputs);
  const data = dataValues(graph);
  const shaped = new Set<string>();
  const walked = walkBack(graph, graph.index(), outputs, {
    stop: (v) => stop.has(v),
    follow: (n, i) => {
      const shapeOnly = (n.opType === "Shape" || n.opType === "Size") && data.has(i);
      if (shapeOnly) shaped.add(i);
      return !shapeOnly;
    },
  }).values;
  return [...shaped].filter((v) => !walked.has(v) && !stop.has(v));
}

/**
 * Cut a subgraph out of `graph`: `inputs` become graph inputs (float32, with
 * the given dims; use a string for the symbolic batch dimension), `outputs`
 * the graph outputs; nodes not needed are dropped. Throws when the subgraph
 * still needs a value from outside (another graph input).
 */
export function cutUnit(
  graph: Graph,
  inputs: { name: string; dims: (number | string)[] }[],
  outputs: string[],
): Graph {
  const g = graph.clone();
  const original = new Set(graph.inputNames);
  const names = new Set(inputs.map((i) => i.name));
  // orphan the producers of the new inputs
  for (const n of g.nodes) {
    n.outputs = n.outputs.map((o) => (names.has(o) ? `${o}::cut` : o));
  }
  g.inputs = [];
  for (const i of inputs) g.addInput(i.name, i.dims);
  g.valueInfo = [];
  g.setOutputs(outputs);
  const used = new Set(g.nodes.flatMap((n) => n.inputs));
  for (const v of original) {
    if (!names.has(v) && used.has(v)) {
      throw new VitqError(
        `cannot cut the unit producing ${outputs.join(", ")}: it also depends on graph input ${v}`,
      );
    }
  }
  const idx = g.index();
  for (const n of g.nodes) {
    for (const v of n.inputs) {
      if (v && !names.has(v) && !g.initializers.has(v) && !idx.producer.has(v)) {
        throw new VitqError(`cut unit: value ${v} (input of ${n.name}) has no producer`);
      }
    }
  }
  g.topoSort();
  return g;
}
