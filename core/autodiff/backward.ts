/**
 * Reverse-mode differentiation of ONNX graphs into ONNX graphs.
 *
 * {@link buildGradientGraph} takes a forward graph, a scalar loss built from
 * its values and a list of values to differentiate with respect to, and
 * returns one graph whose outputs are the loss and exactly those gradients, so
 * the whole forward and backward pass runs inside ONNX Runtime. Only nodes the
 * requested gradients need are kept.
 *
 * How it works: static facts (types, shapes with a symbolic batch dimension,
 * values of shape-computing subgraphs) are inferred; the values that depend on
 * a `wrt` value through float data flow are marked; the nodes on a path from a
 * `wrt` value to the loss are visited in reverse topological order and each
 * op's rule (see `rules.ts`) emits the gradients of its inputs; contributions
 * of a value with several consumers are summed. Integer tensors, Shape ops and
 * everything computed from them are constants: no gradient flows through them.
 * An op without a rule on the gradient path raises a {@link VitqError} naming
 * the op type and node, never a silently wrong answer.
 *
 * Non-differentiable rounding: `Round`, `Floor` and `Ceil` pass gradients
 * straight through (the straight-through estimator, STE) by default; set
 * `round: "zero"` for their true (zero) gradient or `"error"` to refuse them.
 *
 * @module
 */
import { DataType, type Graph, makeAttr, type Node, walkBack } from "../onnx/graph.ts";
import { VitqError } from "../errors.ts";
import { Emitter } from "./emit.ts";
import { FLOAT_TYPES, inferFacts, shapeProto } from "./infer.ts";
import { erfGeluGrad, matchErfGelu, type RoundGradient, ruleFor } from "./rules.ts";

/** Softmax cross-entropy against target probabilities (one-hot or soft), mean over rows. */
export interface CrossEntropyTerm {
  /** Term kind. */
  kind: "cross_entropy";
  /** Logits value [N, C] (classes on the last axis). */
  logits: string;
  /** Target probabilities [N, C]: an existing value, or a new float32 graph input of that name. */
  target: string;
  /** Weight of this term in the loss (default 1). */
  weight?: number;
}

/**
 * KL(target || softmax(logits)) summed over all elements and divided by the
 * first dimension, like torch `kl_div(log_softmax(logits), target, reduction="batchmean")`.
 */
export interface KlTerm {
  /** Term kind. */
  kind: "kl";
  /** Logits value (classes on the last axis). */
  logits: string;
  /** Reference probabilities: an existing value, or a new float32 graph input. */
  target: string;
  /** Weight of this term in the loss (default 1). */
  weight?: number;
}

/** Mean squared error over all elements. */
export interface MseTerm {
  /** Term kind. */
  kind: "mse";
  /** Value compared with the target. */
  value: string;
  /** An existing value, or a new float32 graph input shaped like `value`. */
  target: string;
  /** Weight of this term in the loss (default 1). */
  weight?: number;
}

/** Sum or mean of all elements of a value (for regularizers and tests). */
export interface ReduceTerm {
  /** Sum or mean of all elements. */
  kind: "sum" | "mean";
  /** Value reduced. */
  value: string;
  /** Weight of this term in the loss (default 1). */
  weight?: number;
}

/** One term of a loss. */
export type LossTerm = CrossEntropyTerm | KlTerm | MseTerm | ReduceTerm;

/** A scalar loss: one term or the (weighted) sum of several. */
export type LossSpec = LossTerm | LossTerm[];

/** What to differentiate. */
export interface GradientSpec {
  /** The scalar loss to differentiate. */
  loss: LossSpec;
  /** Values to differentiate with respect to: activations, initializers or graph inputs. */
  wrt: string[];
  /** Gradient of Round/Floor/Ceil (default "ste"). */
  round?: RoundGradient;
  /** Forward values to expose as extra outputs (after the loss, before the gradients). */
  outputs?: string[];
}

/** The gradient graph and the names of what it computes. */
export interface GradientGraph {
  /** The gradient graph (a new graph; the input is not modified). */
  graph: Graph;
  /** Output holding the scalar loss. */
  lossName: string;
  /** For each `wrt` value, the output holding its gradient (same shape). */
  gradNames: Map<string, string>;
  /** Graph inputs the loss added (targets), to be fed as float32. */
  extraInputs: string[];
}

function knownValues(g: Graph): Set<string> {
  const s = new Set<string>([...g.inputs.map((v) => v.name), ...g.initializers.keys()]);
  for (const n of g.nodes) for (const o of n.outputs) if (o) s.add(o);
  return s;
}

/** Add the loss nodes to `g`; returns the scalar loss value and the inputs added. */
function emitLoss(g: Graph, spec: LossSpec): { loss: string; extra: string[] } {
  const facts = inferFacts(g);
  const e = new Emitter(g, facts);
  const known = knownValues(g);
  const extra: string[] = [];
  const need = (v: string, term: string) => {
    if (!known.has(v)) throw new VitqError(`autodiff: ${term} loss: no value named "${v}"`);
  };
  const target = (name: string, like: string) => {
    if (known.has(name)) return name;
    g.inputs.push({
      name,
      type: { tensorType: { elemType: DataType.FLOAT, shape: shapeProto(facts.get(like).dims) } },
    });
    known.add(name);
    extra.push(name);
    return name;
  };
  const op = (type: string, inputs: string[], attrs: unknown[] = []) =>
    e.op(type, inputs, attrs, { prefix: `loss/${type}` })[0];
  const terms = Array.isArray(spec) ? spec : [spec];
  if (terms.length === 0) throw new VitqError("autodiff: the loss has no terms");
  const values = terms.map((t) => {
    let v: string;
    switch (t.kind) {
      case "cross_entropy": {
        need(t.logits, "cross_entropy");
        const p = target(t.target, t.logits);
        const lsm = op("LogSoftmax", [t.logits], [makeAttr("axis", -1)]);
        const rows = op("ReduceSum", [op("Mul", [p, lsm]), e.i64([-1])], [makeAttr("keepdims", 0)]);
        v = op("Neg", [op("ReduceMean", [rows], [makeAttr("keepdims", 0)])]);
        break;
      }
      case "kl": {
        need(t.logits, "kl");
        const p = target(t.target, t.logits);
        const lsm = op("LogSoftmax", [t.logits], [makeAttr("axis", -1)]);
        // p log p with 0 log 0 = 0: the Where picks 0 where p = 0
        const logp = op("Where", [op("Greater", [p, e.f32(0)]), op("Log", [p]), e.f32(0)]);
        const total = op("ReduceSum", [op("Mul", [p, op("Sub", [logp, lsm])])], [
          makeAttr("keepdims", 0),
        ]);
        const n = op("Gather", [op("Shape", [t.logits]), e.i64([0], [])], [makeAttr("axis", 0)]);
        v = op("Div", [total, op("Cast", [n], [makeAttr("to", DataType.FLOAT)])]);
        break;
      }
      case "mse": {
        need(t.value, "mse");
        const y = target(t.target, t.value);
        const d = op("Sub", [t.value, y]);
        v = op("ReduceMean", [op("Mul", [d, d])], [makeAttr("keepdims", 0)]);
        break;
      }
      case "sum":
      case "mean":
        need(t.value, t.kind);
        v = op(t.kind === "sum" ? "ReduceSum" : "ReduceMean", [t.value], [makeAttr("keepdims", 0)]);
        break;
      default:
        throw new VitqError(`autodiff: unknown loss kind "${(t as { kind: string }).kind}"`);
    }
    const w = t.weight ?? 1;
    return w === 1 ? v : op("Mul", [v, e.f32(w)]);
  });
  const loss = values.length === 1 ? values[0] : op("Sum", values);
  return { loss, extra };
}

/**
 * Contributions that are zero-padded pieces exactly tiling one axis of `v`
 * (the q/k/v Gathers of attention, the two Slices of a Swin roll) become one
 * Concat of the pieces; the Pads are then unused and pruned.
 */
function tileToConcat(e: Emitter, v: string, list: string[]): string[] {
  if (list.length < 2) return list;
  const dims = e.dims(v);
  const byAxis = new Map<number, string[]>();
  for (const c of list) {
    const p = e.padded.get(c);
    if (p) byAxis.set(p.axis, [...(byAxis.get(p.axis) ?? []), c]);
  }
  for (const [axis, group] of byAxis) {
    const d = dims?.[axis];
    if (group.length < 2 || typeof d !== "number") continue;
    const pieces = group.map((c) => e.padded.get(c)!).sort((a, b) => a.begin - b.begin);
    let at = 0;
    for (const p of pieces) at = p.begin === at && at >= 0 ? d - p.end : -1;
    if (at !== d) continue;
    const cat = e.op1(
      "Concat",
      pieces.map((p) => p.base),
      [makeAttr("axis", axis)],
      e.gradFacts(v),
    );
    return [cat, ...list.filter((c) => !group.includes(c))];
  }
  return list;
}

/**
 * Build one graph computing the loss and its gradients with respect to `wrt`.
 * The input graph is not modified. Requires opset 13 or newer.
 *
 * @param g forward graph
 * @param spec loss terms, values to differentiate with respect to, options
 * @returns the graph, the loss output name, a map from each `wrt` value to its
 *   gradient output, and the target inputs the loss added
 */
export function buildGradientGraph(g: Graph, spec: GradientSpec): GradientGraph {
  if (g.opset < 13) {
    throw new VitqError(`autodiff: opset ${g.opset} is not supported (13 or newer required)`);
  }
  const G = g.clone();
  G.topoSort();
  const known = knownValues(G);
  for (const w of spec.wrt) {
    if (!known.has(w)) throw new VitqError(`autodiff: wrt: no value named "${w}"`);
  }
  for (const o of spec.outputs ?? []) {
    if (!known.has(o)) throw new VitqError(`autodiff: outputs: no value named "${o}"`);
  }
  const { loss, extra } = emitLoss(G, spec.loss);
  G.topoSort();
  const facts = inferFacts(G);
  const e = new Emitter(G, facts);
  // nodes from here on are emitted gradient nodes
  const nForward = G.nodes.length;
  const floatish = (v: string) => {
    const t = facts.get(v).type;
    return t === undefined || FLOAT_TYPES.has(t);
  };
  for (const w of spec.wrt) {
    if (!floatish(w)) throw new VitqError(`autodiff: wrt: "${w}" is not a float tensor`);
  }

  // values that depend on a wrt value through float data flow
  const reach = new Set(spec.wrt);
  for (const n of G.nodes) {
    if (!n.inputs.some((v) => v && reach.has(v))) continue;
    for (const o of n.outputs) if (o && floatish(o)) reach.add(o);
  }
  // values the loss depends on
  const idx = G.index();
  const live = walkBack(G, idx, [loss]).values;
  const onPath = (v: string) => !!v && reach.has(v) && live.has(v);
  const pathNodes = G.nodes.filter((n) =>
    n.outputs.some(onPath) && n.inputs.some((v) => v && reach.has(v))
  );

  // exact GELUs written out with Erf: differentiated as one op (see matchErfGelu)
  const kept = new Set([...spec.wrt, ...(spec.outputs ?? [])]);
  const gelus = new Map<Node, string>();
  for (const n of pathNodes) {
    const x = matchErfGelu(G, idx, n, (v) => kept.has(v));
    if (x !== undefined && reach.has(x)) gelus.set(n, x);
  }

  // reverse sweep
  const contribs = new Map<string, string[]>([[loss, [e.f32(1)]]]);
  const total = new Map<string, string | undefined>();
  const gradOf = (v: string): string | undefined => {
    if (total.has(v)) return total.get(v);
    const list = tileToConcat(e, v, contribs.get(v) ?? []);
    let r: string | undefined;
    if (list.length === 1) r = list[0];
    else if (list.length > 1) r = e.op1("Sum", list, [], e.gradFacts(v));
    total.set(v, r);
    return r;
  };
  const opts = { round: spec.round ?? "ste" };
  for (let k = pathNodes.length - 1; k >= 0; k--) {
    const node = pathNodes[k];
    const gy = node.outputs.map((o) => (onPath(o) ? gradOf(o) : undefined));
    if (gy.every((x) => x === undefined)) continue;
    const geluX = gelus.get(node);
    if (geluX !== undefined) {
      // the pattern's inner nodes then get no gradient and are skipped
      const r = erfGeluGrad(e, gy[0]!, geluX);
      const list = contribs.get(geluX);
      if (list) list.push(r);
      else contribs.set(geluX, [r]);
      continue;
    }
    const rule = ruleFor(node.opType, node.domain);
    if (!rule) {
      throw new VitqError(
        `autodiff: no gradient rule for op ${
          node.domain ? node.domain + "." : ""
        }${node.opType} (node "${node.name}") on the path from [${
          spec.wrt.join(", ")
        }] to the loss`,
      );
    }
    const need = node.inputs.map((v) => !!v && reach.has(v));
    const res = rule({ e, node, gy, need, opts });
    need.forEach((nd, i) => {
      if (!nd) return;
      const r = res[i];
      if (r === undefined) {
        throw new VitqError(
          `autodiff: no gradient for input ${i} ("${
            node.inputs[i]
          }") of ${node.opType} node "${node.name}"`,
        );
      }
      if (r === null) return;
      const list = contribs.get(node.inputs[i]);
      if (list) list.push(r);
      else contribs.set(node.inputs[i], [r]);
    });
  }

  // outputs: the loss, extra forward values, one gradient per wrt value
  const lossName = known.has("loss") ? e.fresh("loss") : "loss";
  e.reserve(lossName);
  G.nodes.push({
    name: e.fresh("loss/out"),
    opType: "Identity",
    domain: "",
    inputs: [loss],
    outputs: [lossName],
    attributes: [],
  });
  const gradNames = new Map<string, string>();
  // A gradient computed by an emitted node is renamed to its output name
  // rather than copied by an Identity (ONNX Runtime copies graph outputs an
  // Identity produces: a full pass over every gradient). Constants, forward
  // values and gradients already renamed for another wrt value keep the Identity.
  const producer = new Map<string, Node>();
  for (let k = nForward; k < G.nodes.length; k++) {
    for (const o of G.nodes[k].outputs) if (o) producer.set(o, G.nodes[k]);
  }
  const consumers = new Map<string, Node[]>();
  for (const n of G.nodes) {
    for (const i of n.inputs) if (i) consumers.set(i, [...(consumers.get(i) ?? []), n]);
  }
  const renamed = new Map<string, string>();
  for (const w of spec.wrt) {
    if (gradNames.has(w)) continue;
    const gr = gradOf(w) ?? e.zerosLike(w);
    const name = e.fresh(`${w}_grad`);
    const p = producer.get(gr);
    if (p && !renamed.has(gr)) {
      p.outputs = p.outputs.map((o) => (o === gr ? name : o));
      for (const c of consumers.get(gr) ?? []) {
        c.inputs = c.inputs.map((i) => (i === gr ? name : i));
      }
      renamed.set(gr, name);
      gradNames.set(w, name);
      continue;
    }
    G.nodes.push({
      name: e.fresh("grad/out"),
      opType: "Identity",
      domain: "",
      inputs: [renamed.get(gr) ?? gr],
      outputs: [name],
      attributes: [],
    });
    gradNames.set(w, name);
  }
  G.setOutputs([lossName, ...(spec.outputs ?? []), ...gradNames.values()]);
  // drop graph inputs nothing uses any more, so callers need not feed them
  const consumed = new Set(G.nodes.flatMap((n) => n.inputs));
  const outs = new Set(G.outputNames);
  G.inputs = G.inputs.filter((v) => consumed.has(v.name) || outs.has(v.name));
  G.topoSort();
  return { graph: G, lossName, gradNames, extraInputs: extra };
}

/**
 * Add a float32 graph input (for quantizer parameters to learn, targets...).
 * `dims` entries may be numbers or symbolic names; returns the name.
 */
export function addFloatInput(g: Graph, name: string, dims: (number | string)[]): string {
  if (g.inputs.some((v) => v.name === name) || g.initializers.has(name)) {
    throw new VitqError(`autodiff: a value named "${name}" already exists`);
  }
  g.inputs.push({
    name,
    type: {
      tensorType: {
        elemType: DataType.FLOAT,
        shape: {
          dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })),
        },
      },
    },
  });
  return name;
}

/**
 * Turn float32 initializers into graph inputs, so one session can be fed new
 * values each step. Returns their current values and shapes.
 */
export function initializersToInputs(
  g: Graph,
  names: string[],
): Map<string, { data: Float32Array; dims: number[] }> {
  const out = new Map<string, { data: Float32Array; dims: number[] }>();
  for (const n of names) {
    const t = g.initializers.get(n);
    if (!t) throw new VitqError(`autodiff: no initializer named "${n}"`);
    out.set(n, { data: t.float32().slice(), dims: [...t.dims] });
    g.initializers.delete(n);
    g.inputs = g.inputs.filter((v) => v.name !== n);
    addFloatInput(g, n, t.dims);
  }
  return out;
}
