/**
 * Raise a graph's default-domain opset to 21, the first with 4-bit integer
 * tensors (`int4`/`uint4` for QuantizeLinear/DequantizeLinear), so a deploy
 * graph can store 4-bit weight codes packed two per byte.
 *
 * Between opsets 13 and 21 the operators vision transformers use changed only
 * additively (new optional inputs or attributes, new element types), except:
 * the Reduce operators take `axes` as an input instead of an attribute from
 * opset 18 (converted here), `GridSample` renamed its modes (opset 20) and
 * `GroupNormalization` changed its statistics (opset 21) — a graph holding
 * either of those two is refused, not silently changed.
 *
 * @module
 */
import { type Graph, type Node, Tensor } from "./graph.ts";
import { VitqError } from "../errors.ts";

/** Reduce operators whose `axes` became an input in opset 18 (ReduceSum did so in 13). */
const REDUCE_AXES = new Set([
  "ReduceMean",
  "ReduceMax",
  "ReduceMin",
  "ReduceProd",
  "ReduceL1",
  "ReduceL2",
  "ReduceLogSum",
  "ReduceLogSumExp",
  "ReduceSumSquare",
]);

/** Operators whose meaning changed between 13 and 21 in a way not converted here. */
const CHANGED = new Set(["GridSample", "GroupNormalization"]);

/** Can {@link upgradeOpset21} convert this graph? Returns why not, or undefined. */
export function opset21Blocker(g: Graph): string | undefined {
  if (g.opset < 13) return `opset ${g.opset} is below 13`;
  const n = g.nodes.find((x) => (!x.domain || x.domain === "ai.onnx") && CHANGED.has(x.opType));
  return n ? `operator ${n.opType} (node ${n.name}) changed meaning before opset 21` : undefined;
}

/** Convert `g` (edited in place) to default-domain opset 21; the graph computes the same. */
export function upgradeOpset21(g: Graph): void {
  const why = opset21Blocker(g);
  if (why) throw new VitqError(`cannot raise the graph to opset 21: ${why}`);
  if (g.opset >= 21) return;
  if (g.opset < 18) {
    for (const n of g.nodes) if (!n.domain && REDUCE_AXES.has(n.opType)) axesToInput(g, n);
  }
  // IR version 10 is the first that knows int4 (ONNX Runtime checks it)
  g.setOpset(21, 10);
}

function axesToInput(g: Graph, n: Node): void {
  const i = n.attributes.findIndex((a) => a.name === "axes");
  if (i < 0) return; // no axes: reduce over all, the same in both forms
  const axes = (n.attributes[i].ints ?? []).map(Number);
  n.attributes = n.attributes.filter((_, k) => k !== i);
  const name = g.uniqueName(`${n.name}_axes`);
  g.setInitializer(Tensor.fromInt64(name, [axes.length], axes));
  n.inputs = [n.inputs[0], name];
}
