/**
 * RepQ-ViT's scale reparameterization of post-LayerNorm activations: a
 * per-channel asymmetric quantizer (steps Δ_c, zero points z_c) on the output
 * of a LayerNorm becomes one per-tensor quantizer (Δ̄, z̄) by moving the
 * per-channel variation into the LayerNorm's affine parameters and the next
 * linear layer's weights and bias:
 *
 *   Δ̄ = mean_c Δ_c, z̄ = mean_c z_c, r_c = Δ_c / Δ̄,
 *   b_c = (-z_c·Δ_c)/r_c - (-z̄·Δ̄),
 *   γ_c ← γ_c / r_c, β_c ← β_c / r_c - b_c,
 *   W[c, :] ← W[c, :]·r_c (c: input channel), bias ← bias + W_new·b.
 *
 * The next layer sees `y_c = x_c / r_c - b_c` and computes
 * `W_new·y + bias_new = W·x + bias`: the FP function is unchanged (tests check
 * it on the shipped models). Only the rounding of the activation quantizer
 * changes, which is the point.
 *
 * @module
 */
import { attr, type Graph, Tensor } from "../onnx/graph.ts";
import type { Site } from "../onnx/sites.ts";
import { VitqError } from "../errors.ts";

/** The per-channel quantizer of one LayerNorm output and what it is reparameterized to. */
export interface ScaleReparam {
  /** r_c = Δ_c / Δ̄ (float32). */
  r: Float32Array;
  /** b_c = (-z_c·Δ_c)/r_c + z̄·Δ̄ (float32). */
  b: Float32Array;
  /** Δ̄: the per-tensor step after reparameterization. */
  scale: number;
  /** z̄: the per-tensor zero point (the mean of integers, not rounded, as the reference). */
  zeroPoint: number;
}

/**
 * Reparameterization of per-channel steps and zero points (float32 arithmetic
 * as the PyTorch reference; the means are accumulated in float64 and rounded
 * once). `roundZeroPoint` rounds z̄ to an integer (the reference keeps the
 * fractional mean).
 */
export function reparamParams(
  scale: Float32Array,
  zeroPoint: Float32Array,
  roundZeroPoint = false,
): ScaleReparam {
  const n = scale.length;
  if (n === 0 || zeroPoint.length !== n) {
    throw new Error(`reparamParams: ${n} steps and ${zeroPoint.length} zero points`);
  }
  let sd = 0, sz = 0;
  for (let c = 0; c < n; c++) {
    sd += scale[c];
    sz += zeroPoint[c];
  }
  const dBar = Math.fround(sd / n);
  let zBar = Math.fround(sz / n);
  if (roundZeroPoint) zBar = Math.round(zBar);
  const targetMin = Math.fround(-zBar * dBar);
  const r = new Float32Array(n), b = new Float32Array(n);
  for (let c = 0; c < n; c++) {
    r[c] = Math.fround(scale[c] / dBar);
    const actMin = Math.fround(-zeroPoint[c] * scale[c]);
    b[c] = Math.fround(Math.fround(actMin / r[c]) - targetMin);
  }
  return { r, b, scale: dBar, zeroPoint: zBar };
}

/** Ops a LayerNorm output may pass through on its way to the folded linear layers. */
const MOVE_OPS = new Set([
  "Reshape",
  "Transpose",
  "Slice",
  "Concat",
  "Identity",
  "Squeeze",
  "Unsqueeze",
]);

/**
 * Why the LayerNorm `ln` cannot be folded into `linears`, or undefined when it
 * can: every data path from its output must reach one of the linear layers'
 * data input through layout ops only (Reshape, Transpose keeping the last axis
 * last, Slice, Concat of pieces of the same tensor, ...), so that the channel
 * scaling commutes with them, and nothing else may consume it (a residual
 * branch or a zero Pad would see the rescaled values).
 */
export function foldBlocker(g: Graph, ln: Site, linears: Site[]): string | undefined {
  const idx = g.index();
  const targets = new Set(linears.map((s) => s.node));
  const reach = new Set<string>([ln.output]);
  const queue = [ln.output];
  const reached = new Set<string>();
  while (queue.length) {
    const v = queue.shift()!;
    for (const u of idx.consumers.get(v) ?? []) {
      const n = g.nodes[u.node];
      if (n.opType === "Shape" || n.opType === "Size") continue;
      if (targets.has(n.name)) {
        if (u.slot !== 0) return `${ln.id} output reaches ${n.name} at input ${u.slot}`;
        reached.add(n.name);
        continue;
      }
      if (!MOVE_OPS.has(n.opType)) return `${ln.id} output is consumed by ${n.opType} ${n.name}`;
      if (n.opType !== "Concat" && u.slot !== 0) {
        return `${ln.id} output is a parameter of ${n.opType} ${n.name}`;
      }
      if (n.opType === "Transpose") {
        const p = attr(n, "perm");
        if (!Array.isArray(p) || p[p.length - 1] !== p.length - 1) {
          return `${ln.id} output is transposed off the channel axis by ${n.name}`;
        }
      }
      if (n.opType === "Concat") {
        if (attr(n, "axis") === -1) {
          return `${ln.id} output is concatenated along the channel axis by ${n.name}`;
        }
        for (const i of n.inputs) {
          if (!reach.has(i) && !isPieceOf(g, idx, i, reach)) {
            return `${n.name} concatenates ${ln.id} output with another tensor`;
          }
        }
      }
      for (const o of n.outputs) {
        if (!reach.has(o)) {
          reach.add(o);
          queue.push(o);
        }
      }
    }
  }
  for (const s of linears) {
    if (!reached.has(s.node)) return `${ln.id} output does not reach ${s.id}`;
  }
  return undefined;
}

/** Is `v` computed from values in `reach` by layout ops only? */
function isPieceOf(
  g: Graph,
  idx: ReturnType<Graph["index"]>,
  v: string,
  reach: Set<string>,
): boolean {
  for (let depth = 0; depth < 8; depth++) {
    if (reach.has(v)) return true;
    const p = idx.producer.get(v);
    if (p === undefined || !MOVE_OPS.has(g.nodes[p].opType)) return false;
    v = g.nodes[p].inputs[0];
  }
  return false;
}

/** Replace a float32 initializer's values under the same name (the tensor object is new: clones share tensors). */
function replaceFloat(g: Graph, name: string, dims: number[], data: Float32Array): void {
  g.setInitializer(Tensor.fromFloat32(name, dims, data));
}

/** The float32 values of an initializer, or a VitqError naming the site. */
function initializerValues(g: Graph, name: string, what: string): Float32Array {
  const t = g.initializers.get(name);
  if (!t) throw new VitqError(`scale reparameterization: ${what} ${name} is not an initializer`);
  return t.float32();
}

/**
 * Fold `p` into the LayerNorm `ln` (γ, β) and the linear layers `linears`
 * that consume its output (weights scaled along their input axis, biases
 * corrected; a bias is added to a linear layer that has none). Edits `g` in
 * place (initializers are replaced, never mutated, so a graph this one was
 * cloned from keeps its values). Throws a VitqError when the LayerNorm's
 * affine parameters are not plain initializers of a LayerNormalization node
 * or of the decomposed form's final Mul/Add.
 */
export function foldLayerNorm(g: Graph, ln: Site, linears: Site[], p: ScaleReparam): void {
  const C = p.r.length;
  const node = g.nodes.find((n) => n.name === ln.node);
  if (!node) throw new VitqError(`scale reparameterization: no node ${ln.node} for ${ln.id}`);
  // γ' = γ / r
  if (ln.gamma) {
    const gm = initializerValues(g, ln.gamma, `${ln.id} γ`);
    if (gm.length !== C) {
      throw new VitqError(`scale reparameterization: ${ln.id} γ has ${gm.length} values, not ${C}`);
    }
    replaceFloat(g, ln.gamma, g.initializers.get(ln.gamma)!.dims, gm.map((v, c) => v / p.r[c]));
  } else if (node.opType === "LayerNormalization") {
    node.inputs[1] = g.constFloat(`${ln.id}_gamma`, Float32Array.from(p.r, (r) => 1 / r));
  } else {
    throw new VitqError(`scale reparameterization: ${ln.id} has no γ to fold into`);
  }
  // β' = β / r - b
  const beta = ln.beta ? initializerValues(g, ln.beta, `${ln.id} β`) : new Float32Array(C);
  const newBeta = beta.map((v, c) => Math.fround(v / p.r[c]) - p.b[c]);
  if (ln.beta) replaceFloat(g, ln.beta, g.initializers.get(ln.beta)!.dims, newBeta);
  else if (node.opType === "LayerNormalization") {
    while (node.inputs.length < 2) node.inputs.push("");
    node.inputs[2] = g.constFloat(`${ln.id}_beta`, newBeta);
  } else {
    throw new VitqError(`scale reparameterization: ${ln.id} has no β to fold into`);
  }
  for (const s of linears) foldLinear(g, s, p);
}

/** W[c, :] ← W[c, :]·r_c along the input axis; bias ← bias + W_new·b. */
function foldLinear(g: Graph, s: Site, p: ScaleReparam): void {
  const t = g.initializers.get(s.weight!);
  if (!t || t.dims.length !== 2) {
    throw new VitqError(`scale reparameterization: ${s.id} weight is not a 2-D initializer`);
  }
  const outAxis = s.weightOutAxis ?? 0;
  const inAxis = 1 - outAxis;
  const [d0, d1] = t.dims;
  const nIn = t.dims[inAxis], nOut = t.dims[outAxis];
  if (nIn !== p.r.length) {
    throw new VitqError(
      `scale reparameterization: ${s.id} has ${nIn} input channels, the LayerNorm ${p.r.length}`,
    );
  }
  const w = t.float32();
  const wNew = new Float32Array(w.length);
  for (let i = 0; i < d0; i++) {
    for (let j = 0; j < d1; j++) {
      const c = inAxis === 0 ? i : j;
      wNew[i * d1 + j] = Math.fround(w[i * d1 + j] * p.r[c]);
    }
  }
  replaceFloat(g, s.weight!, t.dims, wNew);
  const delta = new Float32Array(nOut);
  for (let o = 0; o < nOut; o++) {
    let acc = 0;
    for (let c = 0; c < nIn; c++) {
      acc += wNew[inAxis === 0 ? c * d1 + o : o * d1 + c] * p.b[c];
    }
    delta[o] = acc;
  }
  if (s.bias) {
    const bt = g.initializers.get(s.bias)!;
    const bias = bt.float32();
    replaceFloat(g, s.bias, bt.dims, bias.map((v, o) => v + delta[o]));
    return;
  }
  // no bias: add one after the layer (the reference creates a bias parameter)
  const n = g.nodes.find((x) => x.name === s.node)!;
  const slot = n.outputs.indexOf(s.output);
  if (slot < 0) throw new VitqError(`scale reparameterization: ${s.id} output is not its node's`);
  const tmp = g.uniqueName(`${s.id}_nobias`);
  n.outputs[slot] = tmp;
  g.addNode("Add", [tmp, g.constFloat(`${s.id}_bias`, delta)], { outputs: [s.output] });
}
