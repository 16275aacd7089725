/**
 * Turn a quantization plan (which weights and which activations get which
 * quantizer) into a fake-quant graph. Weights are quantized once in TypeScript
 * and stored dequantized; activations get an emitted Div/Round/Clip/Mul
 * subgraph (or a custom emitter's subgraph) that the chosen consumers read.
 *
 * An activation plan takes one of two forms:
 * - slot form (`site`, `slot`): input `slot` of the site's node reads the
 *   quantized value (linear input: slot 0; matmul operands: 0 and 1);
 * - value form (`value`, optional `consumers`): one quantizer on a value (a
 *   LayerNorm's input, a softmax or GELU output), read by exactly the listed
 *   consumer nodes, or by every node that reads the value when `consumers` is
 *   absent (the graph output, if the value is one, stays FP).
 *
 * @module
 */
import { type Graph, type Node, Tensor } from "../onnx/graph.ts";
import { opset21Blocker, upgradeOpset21 } from "../onnx/opset.ts";
import type { Site } from "../onnx/sites.ts";
import { emitFakeQuant, fakeQuant, sqnrDb, type UniformQuantizer } from "./uniform.ts";
import {
  type DeployPart,
  distributeParts,
  emitQdqActivation,
  emitQdqPart,
  emitQdqWeight,
  floatWeightsBesideFloatInputs,
  foldConstantMuls,
  fractionalZpFloor,
  fractionalZpParts,
  hoistHeadCodes,
  integerMatMuls,
  qdqable,
  stepsAsDequantize,
} from "./deploy.ts";

/** Quantize the weight of a linear site. */
export interface WeightPlan {
  site: Site;
  q: UniformQuantizer;
}

/**
 * Quantize one activation with a uniform quantizer `q`, or with a custom
 * emitter `emit` (twin, log, two-scaled and other non-uniform quantizers) that
 * returns the quantized value's name. Give either `site` and `slot` (slot form)
 * or `value` (value form, see the module notes).
 */
export interface ActPlan {
  /** Slot form: the site whose node's input `slot` is quantized. */
  site?: Site;
  /** Slot form: the input slot of the site's node. */
  slot?: number;
  /** Value form: the value to quantize. */
  value?: string;
  /**
   * Value form: names of the nodes that read the quantized value (every input
   * slot of such a node that reads `value`). Absent: all consumers of `value`.
   */
  consumers?: string[];
  /** Name prefix of the emitted tensors (value form; default derived from the value name). */
  prefix?: string;
  q?: UniformQuantizer;
  emit?: (g: Graph, input: string, prefix: string) => string;
  /**
   * For a custom `emit` that equals a sum of uniform quantizers on clipped
   * inputs (twin quantizers): those parts. The deploy graph then quantizes each
   * part as integer codes and splits the consuming MatMul/Gemm into one integer
   * product per part (`deploy.ts` {@link DeployPart}); without parts, a custom
   * quantizer stays float fake-quant in the deploy graph.
   */
  parts?: DeployPart[];
  /** Rank of the quantized value (needed for per-channel uniform quantizers). */
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

/** One node input slot that reads a quantized value. */
interface Target {
  node: Node;
  slot: number;
}

/** The input slots a value-form plan rewires, resolved on the graph before any activation edit. */
function valueTargets(g: Graph, a: ActPlan): Target[] {
  const v = a.value!;
  const readers = g.nodes.filter((n) => n.inputs.includes(v));
  if (a.consumers) {
    for (const c of a.consumers) {
      if (!readers.some((n) => n.name === c)) {
        throw new Error(`applyPlan: node ${c} does not read value ${v}`);
      }
    }
  }
  const chosen = a.consumers ? readers.filter((n) => a.consumers!.includes(n.name)) : readers;
  return chosen.flatMap((node) =>
    node.inputs.flatMap((x, slot) => (x === v ? [{ node, slot }] : []))
  );
}

/**
 * Activations get QDQ only with one step: ONNX Runtime's integer matmul kernels take a
 * per-tensor scale for the left operand and per-column scales for the right one, so a
 * per-head (or other per-channel) activation quantizer stays float fake-quant in the
 * deploy graph.
 */
function perTensor(q: UniformQuantizer): boolean {
  return q.scale.length === 1;
}

/** A value name usable as a tensor-name prefix. */
function prefixOf(value: string): string {
  return value.replace(/[^A-Za-z0-9_.]+/g, "_").replace(/^_+/, "") || "value";
}

/**
 * Build the fake-quant graph for a plan. The input graph is left unchanged
 * unless `inPlace` is set: then it is edited and its weight bytes are
 * overwritten (no second copy of the weights: for big graphs that are not
 * needed in FP any more).
 *
 * Slot-form plans are applied in order (two on one slot chain, as before value
 * plans existed); a value-form plan's targets are resolved on the graph as it
 * is before any activation is quantized, and a slot claimed by a value-form
 * plan and by any other plan is an error (it would be quantized twice).
 */
export function applyPlan(
  graph: Graph,
  weights: WeightPlan[],
  acts: ActPlan[],
  opts: { inPlace?: boolean; deploy?: boolean } = {},
): { graph: Graph; weights: AppliedWeight[]; deploy?: Graph } {
  // the deploy graph first: in-place application overwrites the FP weights it reads
  let deploy: Graph | undefined;
  if (opts.deploy) {
    deploy = graph.clone();
    // 4-bit weights packed as int4 need opset 21
    if (weights.some((w) => w.q.bits <= 4) && !opset21Blocker(deploy)) upgradeOpset21(deploy);
    deploy = build(deploy, weights, acts, "qdq").graph;
  }
  return {
    ...build(opts.inPlace ? graph : graph.clone(), weights, acts, "fake", opts.inPlace),
    deploy,
  };
}

/**
 * Apply a plan to `g` (edited). `mode` "fake": weights stored dequantized, activations as
 * float fake-quant subgraphs; "qdq": uniform quantizers as integer codes with
 * QuantizeLinear/DequantizeLinear (`deploy.ts`; a per-tensor one with a fractional zero
 * point as two integer parts, `fractionalZpParts`), the others as in "fake"; an integer
 * weight that a MatMul/Gemm multiplies with a float operand is stored as its float
 * dequantized values (`floatWeightsBesideFloatInputs`: no MatMulNBits).
 */
function build(
  g: Graph,
  weights: WeightPlan[],
  acts: ActPlan[],
  mode: "fake" | "qdq",
  inPlace = false,
): { graph: Graph; weights: AppliedWeight[] } {
  const nodeByName = new Map(g.nodes.map((n) => [n.name, n]));
  const applied: AppliedWeight[] = [];
  for (const w of weights) {
    const n = nodeByName.get(w.site.node)!;
    const { data, dims } = siteWeight(g, w.site);
    if (mode === "qdq" && qdqable(w.q)) {
      n.inputs[1] = emitQdqWeight(g, data, dims, w.q, `${w.site.id}_w`);
      continue;
    }
    const wq = fakeQuant(data, dims, w.q);
    applied.push({ site: w.site, sqnrDb: sqnrDb(data, wq) });
    if (inPlace) {
      g.initializers.get(w.site.weight!)!.raw.set(new Uint8Array(wq.buffer));
      continue;
    }
    const name = g.uniqueName(`${w.site.weight}_wq`);
    g.setInitializer(Tensor.fromFloat32(name, dims, wq));
    n.inputs[1] = name;
  }
  // value-form targets, resolved before any activation edit; check for slots claimed twice
  const claimed = new Map<Node, Map<number, string>>();
  const claim = (t: Target, by: string, strict: boolean) => {
    let m = claimed.get(t.node);
    if (!m) claimed.set(t.node, m = new Map());
    const prev = m.get(t.slot);
    if (prev !== undefined && (strict || prev.startsWith("value "))) {
      throw new Error(
        `applyPlan: input ${t.slot} of node ${t.node.name} is quantized by two plans (${prev}; ${by})`,
      );
    }
    m.set(t.slot, by);
  };
  const resolved = acts.map((a) => {
    if (a.value === undefined) return undefined;
    if (a.site !== undefined || a.slot !== undefined) {
      throw new Error(`applyPlan: plan for value ${a.value} also names a site slot`);
    }
    const ts = valueTargets(g, a);
    for (const t of ts) claim(t, `value ${a.value}`, true);
    return ts;
  });
  for (const a of acts) {
    if (a.value !== undefined) continue;
    claim({ node: nodeByName.get(a.site!.node)!, slot: a.slot! }, `site ${a.site!.id}`, false);
  }
  const sums = new Map<string, string[]>();
  // per-channel (per-head) activations: QDQ here, then MatMulInteger with the steps applied
  // after it (`integerMatMuls`); where that rewrite does not apply they fall back to float
  const perChannel = new Map<
    string,
    { q: UniformQuantizer; input: string; prefix: string; rank: number }
  >();
  const qdqActivation = (a: ActPlan, input: string, prefix: string) => {
    const out = emitQdqActivation(g, input, a.q!, prefix, a.rank);
    if (!perTensor(a.q!)) perChannel.set(out, { q: a.q!, input, prefix, rank: a.rank! });
    return out;
  };
  acts.forEach((a, i) => {
    const emit = (input: string, prefix: string) => {
      if (mode === "qdq" && a.parts?.length && a.parts.every((p) => qdqable(p.q))) {
        const ps = a.parts.map((p, k) => emitQdqPart(g, input, p, `${prefix}_p${k}`));
        let sum = ps[0];
        for (let k = 1; k < ps.length; k++) sum = g.addNode("Add", [sum, ps[k]]);
        sums.set(sum, ps);
        return sum;
      }
      if (mode === "qdq" && !a.emit && fractionalZpFloor(a.q!) !== undefined) {
        // a fractional zero point: two integer parts, exact (`fractionalZpParts`)
        const { sum, parts } = fractionalZpParts(g, input, a.q!, prefix);
        sums.set(sum, parts);
        return sum;
      }
      return a.emit
        ? a.emit(g, input, prefix)
        : mode === "qdq" && qdqable(a.q!) && (perTensor(a.q!) || a.rank !== undefined)
        ? qdqActivation(a, input, prefix)
        : emitFakeQuant(g, input, a.q!, prefix, a.rank);
    };
    const targets = resolved[i];
    if (targets === undefined) {
      const n = nodeByName.get(a.site!.node)!;
      n.inputs[a.slot!] = emit(n.inputs[a.slot!], `${a.site!.id}_in${a.slot}`);
      return;
    }
    if (targets.length === 0) return;
    const out = emit(a.value!, a.prefix ?? prefixOf(a.value!));
    for (const t of targets) t.node.inputs[t.slot] = out;
  });
  if (sums.size) distributeParts(g, sums);
  if (perChannel.size) {
    const steps = integerMatMuls(g, new Map([...perChannel].map(([k, v]) => [k, v.rank])));
    // per-head operands split off one linear output: quantized once before the split
    hoistHeadCodes(g);
    foldConstantMuls(g, steps);
    stepsAsDequantize(g);
    // a per-channel QDQ still read by any node: float fake-quant instead (ORT would fuse it
    // into an integer matmul that cannot take its steps)
    for (const [dq, p] of perChannel) {
      const readers = g.nodes.filter((n) => n.inputs.includes(dq));
      if (readers.length === 0) continue;
      const fq = emitFakeQuant(g, p.input, p.q, `${p.prefix}_fq`, p.rank);
      for (const n of readers) n.inputs = n.inputs.map((v) => (v === dq ? fq : v));
    }
  }
  // an integer weight beside a float operand: its float values (no MatMulNBits)
  if (mode === "qdq") floatWeightsBesideFloatInputs(g);
  g.prune();
  g.topoSort();
  return { graph: g, weights: applied };
}
