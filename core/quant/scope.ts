/**
 * Quantization scope: which activations a method quantizes, as targets that
 * become {@link ActPlan}s once a quantizer is chosen for each.
 *
 * - `linear` (PTQ4ViT's conventions, the default of every method): the input of
 *   every linear layer except the patch embedding (whose input is the image)
 *   and both operands of the two attention matmuls.
 * - `full` (fully quantized, as TSPTQ-ViT and FQ-ViT): additionally every
 *   LayerNorm input (the residual stream, including the patch-embedding plus
 *   position output, Swin's patch-merging input and the final norm's input),
 *   the softmax output and the GELU output, each for exactly the consumers it
 *   feeds. Where the softmax (GELU) output is itself the A·V operand (fc2 input),
 *   that one target serves both scopes; consumers the linear scope does not
 *   reach get a value-form target.
 *
 * @module
 */
import type { Graph, Node } from "../onnx/graph.ts";
import type { Site } from "../onnx/sites.ts";
import type { ActPlan } from "./apply.ts";

/** What a method quantizes among the activations. */
export type Scope = "linear" | "full";

/** Which consumers of a LayerNorm input read its quantized value. */
export type LnConsumers = "all" | "ln";

/** What an activation target holds. */
export type TargetRole = "linear_in" | "qk_a" | "qk_b" | "softmax" | "v" | "gelu" | "ln_in";

/** One quantized activation: a slot of a site's node, or a value and the nodes that read it. */
export interface ActTarget {
  site: Site;
  /** Layer-record tensor name: `input` (linear and LayerNorm inputs), `a`, `b`, `output`. */
  tensor: string;
  role: TargetRole;
  /** The value that is quantized. */
  value: string;
  /** Slot form: input slot of `site.node`. */
  slot?: number;
  /** Value form: the nodes that read the quantized value (absent: all). */
  consumers?: string[];
}

/** Options of {@link activationTargets}. */
export interface ScopeOptions {
  /**
   * `all` (default): every node that reads a LayerNorm's input reads it quantized
   * (the residual stream itself is quantized, as in FQ-ViT); `ln`: only the
   * LayerNorm's own nodes do, the skip path stays FP.
   */
  lnConsumers?: LnConsumers;
}

/** Nodes (other than shape queries) reading `v`. */
function readers(g: Graph, v: string): Node[] {
  return g.nodes.filter((n) => n.inputs.includes(v) && n.opType !== "Shape" && n.opType !== "Size");
}

/** Is node `to` reachable from node `from` within `limit` edges? */
function reaches(g: Graph, from: Node, to: string, limit = 12): boolean {
  let frontier = [from];
  const seen = new Set<Node>();
  for (let d = 0; d <= limit && frontier.length; d++) {
    const next: Node[] = [];
    for (const n of frontier) {
      if (n.name === to) return true;
      if (seen.has(n)) continue;
      seen.add(n);
      for (const o of n.outputs) next.push(...g.nodes.filter((m) => m.inputs.includes(o)));
    }
    frontier = next;
  }
  return false;
}

/**
 * The activation targets of a scope, in site order. `linear` gives exactly the
 * slots methods quantized before scopes existed (same order).
 */
export function activationTargets(
  graph: Graph,
  sites: Site[],
  scope: Scope,
  opts: ScopeOptions = {},
): ActTarget[] {
  const out: ActTarget[] = [];
  for (const s of sites) {
    if (s.kind === "linear" && s.role !== "patch_embed") {
      const role = s.role === "fc2" ? "gelu" : "linear_in";
      out.push({ site: s, tensor: "input", role, value: s.input!, slot: 0 });
    } else if (s.kind === "matmul") {
      const a = s.role === "av" ? "softmax" : "qk_a", b = s.role === "av" ? "v" : "qk_b";
      out.push({ site: s, tensor: "a", role: a, value: s.operands![0], slot: 0 });
      out.push({ site: s, tensor: "b", role: b, value: s.operands![1], slot: 1 });
    }
  }
  if (scope === "linear") return out;
  if (scope !== "full") throw new Error(`unknown quantization scope ${scope}`);
  const slotReaders = (v: string) =>
    new Set(out.filter((t) => t.value === v && t.slot !== undefined).map((t) => t.site.node));
  const full: ActTarget[] = [];
  for (const s of sites) {
    if (s.kind !== "ln" && s.kind !== "softmax_out" && s.kind !== "gelu_out") continue;
    const value = s.kind === "ln" ? s.input! : s.output;
    const covered = slotReaders(value);
    let cons = readers(graph, value).filter((n) => !covered.has(n.name));
    if (s.kind === "ln" && opts.lnConsumers === "ln") {
      cons = cons.filter((n) => reaches(graph, n, s.node));
    }
    if (cons.length === 0) continue;
    if (s.kind !== "ln" && covered.size === 0) {
      // the operand the linear scope quantizes is reached through reshapes: quantize
      // the output itself for all its readers instead of the downstream slot
      const role = s.kind === "softmax_out" ? "softmax" : "gelu";
      const i = out.findIndex((t) =>
        t.role === role && t.site.block === s.block &&
        cons.some((n) => reaches(graph, n, t.site.node))
      );
      if (i >= 0) out.splice(i, 1);
    }
    full.push({
      site: s,
      tensor: s.kind === "ln" ? "input" : "output",
      role: s.kind === "ln" ? "ln_in" : s.kind === "softmax_out" ? "softmax" : "gelu",
      value,
      consumers: cons.map((n) => n.name),
    });
  }
  const order = new Map(sites.map((s, i) => [s.id, i]));
  return [...out, ...full].sort((x, y) => order.get(x.site.id)! - order.get(y.site.id)!);
}

/** The plan of a target with a uniform quantizer or an emitter. */
export function targetPlan(
  t: ActTarget,
  q: Pick<ActPlan, "q" | "emit" | "rank">,
): ActPlan {
  return t.slot !== undefined
    ? { site: t.site, slot: t.slot, ...q }
    : { value: t.value, consumers: t.consumers, prefix: `${t.site.id}_${t.tensor}`, ...q };
}
