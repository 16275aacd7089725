/**
 * Turn a quantization plan (which weights and which activation inputs get which
 * uniform quantizer) into a fake-quant graph. Weights are quantized once in
 * TypeScript and stored dequantized; activations get an emitted Div/Round/Clip/Mul
 * subgraph in front of the consuming node's input slot.
 *
 * @module
 */
import { type Graph, Tensor } from "../onnx/graph.ts";
import type { Site } from "../onnx/sites.ts";
import { emitFakeQuant, fakeQuant, sqnrDb, type UniformQuantizer } from "./uniform.ts";

/** Quantize the weight of a linear site. */
export interface WeightPlan {
  site: Site;
  q: UniformQuantizer;
}

/**
 * Quantize input `slot` of the site's node (linear input: slot 0; matmul operands:
 * 0 and 1) with a uniform quantizer `q`, or with a custom emitter `emit` (twin,
 * log and other non-uniform quantizers) that returns the quantized value's name.
 */
export interface ActPlan {
  site: Site;
  slot: number;
  q?: UniformQuantizer;
  emit?: (g: Graph, input: string, prefix: string) => string;
  rank?: number;
}

/** Weight quantization result, for layer records. */
export interface AppliedWeight {
  site: Site;
  sqnrDb: number;
}

/** The FP32 weight of a linear site as float32 plus dims. */
export function siteWeight(g: Graph, site: Site): { data: Float32Array; dims: number[] } {
  const t = g.initializers.get(site.weight!)!;
  return { data: t.float32(), dims: t.dims };
}

/**
 * Build the fake-quant graph for a plan. The input graph is left unchanged
 * unless `inPlace` is set: then it is edited and its weight bytes are
 * overwritten (no second copy of the weights: for big graphs that are not
 * needed in FP any more).
 */
export function applyPlan(
  graph: Graph,
  weights: WeightPlan[],
  acts: ActPlan[],
  opts: { inPlace?: boolean } = {},
): { graph: Graph; weights: AppliedWeight[] } {
  const g = opts.inPlace ? graph : graph.clone();
  const nodeByName = new Map(g.nodes.map((n) => [n.name, n]));
  const applied: AppliedWeight[] = [];
  for (const w of weights) {
    const n = nodeByName.get(w.site.node)!;
    const { data, dims } = siteWeight(g, w.site);
    const wq = fakeQuant(data, dims, w.q);
    applied.push({ site: w.site, sqnrDb: sqnrDb(data, wq) });
    if (opts.inPlace) {
      g.initializers.get(w.site.weight!)!.raw.set(new Uint8Array(wq.buffer));
      continue;
    }
    const name = g.uniqueName(`${w.site.weight}_wq`);
    g.setInitializer(Tensor.fromFloat32(name, dims, wq));
    n.inputs[1] = name;
  }
  for (const a of acts) {
    const n = nodeByName.get(a.site.node)!;
    const prefix = `${a.site.id}_in${a.slot}`;
    n.inputs[a.slot] = a.emit
      ? a.emit(g, n.inputs[a.slot], prefix)
      : emitFakeQuant(g, n.inputs[a.slot], a.q!, prefix, a.rank);
  }
  g.prune();
  g.topoSort();
  return { graph: g, weights: applied };
}
