/**
 * The site finder: names the quantization sites of every transformer block in an
 * ONNX graph, whatever exporter produced it (torch.onnx/timm: LayerNormalization
 * op or its decomposed form, Gelu op or the Erf pattern, fused or separate q/k/v).
 *
 * Methods address sites by block and role ("the fc2 input of block 3"), never by
 * node name.
 *
 * @module
 */
import { dataValues, type Graph, type GraphIndex, type Node } from "./graph.ts";
import { VitqError } from "../errors.ts";

/** Kinds of quantization sites. */
export type SiteKind = "linear" | "matmul" | "softmax_out" | "gelu_out" | "ln" | "residual";

/** Roles of linear layers. */
export type LinearRole =
  | "patch_embed"
  | "qkv"
  | "q"
  | "k"
  | "v"
  | "proj"
  | "fc1"
  | "fc2"
  | "reduction"
  | "head";

/** One quantization site. */
export interface Site {
  /** Stable id: `b3.fc2`, `patch_embed`, `head`, `final.ln`. */
  id: string;
  kind: SiteKind;
  /** Linear role, `qk`/`av` for matmuls, `norm1`/`norm2`/`final`/`embed`/`merge` for LayerNorms, `attn`/`mlp` for residuals. */
  role: string;
  /** Transformer block index (network order), -1 outside blocks. */
  block: number;
  /** Name of the main node (the MatMul/Gemm/Conv, Softmax, LayerNorm's last node, residual Add). */
  node: string;
  /** Data input value (linear input, LayerNorm input). */
  input?: string;
  /** Output value (after the bias Add for linears). */
  output: string;
  /** Weight initializer name (linear). */
  weight?: string;
  /** Axis of the weight initializer that indexes output channels. */
  weightOutAxis?: number;
  /** Bias initializer of a linear site, if it has one. */
  bias?: string;
  /** The two operands of a matmul site (A, B as the MatMul node sees them). */
  operands?: [string, string];
  /**
   * LayerNorm site: the constant value holding γ (an initializer name, resolved
   * through Identity nodes; the Constant node's output otherwise). Absent when the
   * LayerNorm has no scale (γ = 1), as a decomposed LayerNorm without its Mul.
   */
  gamma?: string;
  /** LayerNorm site: the constant value holding β, like `gamma`; absent when there is no shift (β = 0). */
  beta?: string;
  /**
   * LayerNorm site: ε added to the variance (the LayerNormalization op's `epsilon`
   * attribute, 1e-5 by default; the constant of the `Add` under the `Sqrt` in the
   * decomposed form). Absent only for a decomposed LayerNorm whose ε is not such a constant.
   */
  epsilon?: number;
}

const PASS = new Set([
  "Reshape",
  "Transpose",
  "Gather",
  "Split",
  "Slice",
  "Squeeze",
  "Unsqueeze",
  "Flatten",
  "Identity",
  "Cast",
  "Concat",
  "Pad",
  "Expand",
  "ReduceMean",
]);

interface Ctx {
  g: Graph;
  idx: GraphIndex;
  data: Set<string>;
}

function isConst(c: Ctx, v: string): boolean {
  return !!v && !c.data.has(v);
}

function node(c: Ctx, v: string): Node | undefined {
  const p = c.idx.producer.get(v);
  return p === undefined ? undefined : c.g.nodes[p];
}

function consumers(c: Ctx, v: string): Node[] {
  return (c.idx.consumers.get(v) ?? []).map((u) => c.g.nodes[u.node]);
}

/** Is this node a pass-through step for data (reshape-like, or an op with a constant operand)? */
function passes(c: Ctx, n: Node): boolean {
  if (PASS.has(n.opType)) return true;
  if (["Add", "Sub", "Mul", "Div"].includes(n.opType)) {
    return n.inputs.filter((v) => c.data.has(v)).length === 1;
  }
  return false;
}

/** Follow data forward through pass-through nodes; return the first nodes matching `pred`. */
function forward(c: Ctx, v: string, pred: (n: Node) => boolean, limit = 40): Node[] {
  const found: Node[] = [];
  const seen = new Set<string>();
  const queue: [string, number][] = [[v, 0]];
  while (queue.length) {
    const [val, d] = queue.shift()!;
    if (seen.has(val) || d > limit) continue;
    seen.add(val);
    for (const n of consumers(c, val)) {
      if (pred(n)) {
        if (!found.includes(n)) found.push(n);
      } else if (passes(c, n)) {
        for (const o of n.outputs) if (c.data.has(o)) queue.push([o, d + 1]);
      }
    }
  }
  return found;
}

/** Follow data backward through pass-through nodes; return the first producers matching `pred`. */
function backward(c: Ctx, v: string, pred: (n: Node) => boolean, limit = 40): Node[] {
  const found: Node[] = [];
  const seen = new Set<string>();
  const queue: [string, number][] = [[v, 0]];
  while (queue.length) {
    const [val, d] = queue.shift()!;
    if (seen.has(val) || d > limit) continue;
    seen.add(val);
    const n = node(c, val);
    if (!n) continue;
    if (pred(n)) {
      if (!found.includes(n)) found.push(n);
    } else if (passes(c, n)) {
      for (const i of n.inputs) if (c.data.has(i)) queue.push([i, d + 1]);
    }
  }
  return found;
}

/** Resolve a constant weight through Identity nodes to its initializer name. */
function weightSource(c: Ctx, v: string): string | undefined {
  let cur = v;
  for (let i = 0; i < 4; i++) {
    if (c.g.initializers.has(cur)) return cur;
    const n = node(c, cur);
    if (!n || n.opType !== "Identity") return undefined;
    cur = n.inputs[0];
  }
  return undefined;
}

interface Linear {
  node: Node;
  input: string;
  weight: string;
  outAxis: number;
  output: string;
  bias?: string;
}

function findLinears(c: Ctx): Linear[] {
  const out: Linear[] = [];
  for (const n of c.g.nodes) {
    let weight: string | undefined;
    let outAxis = 1;
    if (n.opType === "MatMul" && c.data.has(n.inputs[0]) && isConst(c, n.inputs[1])) {
      weight = weightSource(c, n.inputs[1]);
    } else if (n.opType === "Gemm" && c.data.has(n.inputs[0]) && isConst(c, n.inputs[1])) {
      weight = weightSource(c, n.inputs[1]);
      const tb = n.attributes.find((a) => a.name === "transB");
      outAxis = tb && Number(tb.i) === 1 ? 0 : 1;
    } else if (n.opType === "Conv" && c.data.has(n.inputs[0]) && isConst(c, n.inputs[1])) {
      weight = weightSource(c, n.inputs[1]);
      outAxis = 0;
    }
    if (!weight) continue;
    // the linear's output is after a bias Add with a constant operand, if there is one
    let output = n.outputs[0];
    let bias = n.opType !== "MatMul" && n.inputs[2] ? weightSource(c, n.inputs[2]) : undefined;
    const cons = consumers(c, output);
    if (
      n.opType === "MatMul" && cons.length === 1 && cons[0].opType === "Add" &&
      cons[0].inputs.filter((v) => c.data.has(v)).length === 1
    ) {
      output = cons[0].outputs[0];
      bias = weightSource(c, cons[0].inputs.find((v) => !c.data.has(v))!);
    }
    out.push({ node: n, input: n.inputs[0], weight, outAxis, output, bias });
  }
  return out;
}

interface LayerNorm {
  input: string;
  output: string;
  last: Node;
  first: Node;
  gamma?: string;
  beta?: string;
  epsilon?: number;
}

/** A constant operand as a site names it: its initializer, or the value itself. */
function constName(c: Ctx, v: string | undefined): string | undefined {
  return v ? weightSource(c, v) ?? v : undefined;
}

/** ε of a decomposed LayerNorm: Div(y, Sqrt(Add(var, ε))). */
function decomposedEpsilon(c: Ctx, div: Node): number | undefined {
  const sqrt = node(c, div.inputs[1]);
  const add = sqrt?.opType === "Sqrt" ? node(c, sqrt.inputs[0]) : undefined;
  if (!add || add.opType !== "Add") return undefined;
  const v = add.inputs.find((x) => isConst(c, x));
  const t = v === undefined ? undefined : c.g.constant(constName(c, v)!, c.idx);
  return t && t.size === 1 ? t.numbers()[0] : undefined;
}

function findLayerNorms(c: Ctx): LayerNorm[] {
  const out: LayerNorm[] = [];
  for (const n of c.g.nodes) {
    if (n.opType === "LayerNormalization" && c.data.has(n.inputs[0])) {
      const eps = n.attributes.find((a) => a.name === "epsilon");
      out.push({
        input: n.inputs[0],
        output: n.outputs[0],
        last: n,
        first: n,
        gamma: constName(c, n.inputs[1]),
        beta: constName(c, n.inputs[2]),
        epsilon: eps ? eps.f : 1e-5,
      });
      continue;
    }
    // decomposed: Sub(x, ReduceMean(x)) -> ... -> Div(sub, Sqrt(...)) [-> Mul(gamma) -> Add(beta)]
    if (n.opType !== "Sub") continue;
    const mean = node(c, n.inputs[1]);
    if (!mean || mean.opType !== "ReduceMean" || mean.inputs[0] !== n.inputs[0]) continue;
    const div = consumers(c, n.outputs[0]).find((m) =>
      m.opType === "Div" && m.inputs[0] === n.outputs[0]
    );
    if (!div) continue;
    let last = div;
    const affine: Record<string, string | undefined> = {};
    for (const op of ["Mul", "Add"]) {
      const next = consumers(c, last.outputs[0]);
      if (next.length === 1 && next[0].opType === op && next[0].inputs.some((v) => isConst(c, v))) {
        last = next[0];
        affine[op] = constName(c, last.inputs.find((v) => isConst(c, v)));
      }
    }
    out.push({
      input: n.inputs[0],
      output: last.outputs[0],
      last,
      first: mean,
      gamma: affine.Mul,
      beta: affine.Add,
      epsilon: decomposedEpsilon(c, div),
    });
  }
  return out;
}

interface Gelu {
  input: string;
  output: string;
  last: Node;
}

function findGelus(c: Ctx): Gelu[] {
  const out: Gelu[] = [];
  for (const n of c.g.nodes) {
    if (n.opType === "Gelu" || n.opType === "FastGelu") {
      out.push({ input: n.inputs[0], output: n.outputs[0], last: n });
      continue;
    }
    if (n.opType !== "Erf") continue;
    const pre = node(c, n.inputs[0]);
    if (!pre || !["Div", "Mul"].includes(pre.opType)) continue;
    const x = pre.inputs.find((v) => c.data.has(v));
    if (!x) continue;
    // Erf -> Add(1) -> Mul(x) -> Mul(0.5), in either order of the two Muls
    let last: Node = n;
    for (let step = 0; step < 3; step++) {
      const next = consumers(c, last.outputs[0]);
      if (next.length !== 1 || !["Add", "Mul"].includes(next[0].opType)) break;
      last = next[0];
      if (step >= 1 && last.opType === "Mul") {
        const nn = consumers(c, last.outputs[0]);
        const isHalf = (m: Node) =>
          m.opType === "Mul" && m.inputs.some((v) => {
            const t = isConst(c, v) ? c.g.constant(v, c.idx) : undefined;
            return t !== undefined && t.size === 1 && Math.abs(t.numbers()[0] - 0.5) < 1e-6;
          });
        const usesX = last.inputs.includes(x);
        if (usesX && nn.length === 1 && isHalf(nn[0])) last = nn[0];
        else if (!usesX && nn.length === 1 && nn[0].opType === "Mul" && nn[0].inputs.includes(x)) {
          last = nn[0];
        }
        break;
      }
    }
    out.push({ input: x, output: last.outputs[0], last });
  }
  return out;
}

/** One attention block: Q·Kᵀ, the softmax and A·V. */
interface Attention {
  qk: Node;
  sm: Node;
  av: Node;
}

/** The site finder's state, shared by its steps. */
interface Found {
  c: Ctx;
  /** File name for error messages. */
  source: string;
  /** Node positions (network order). */
  pos: Map<Node, number>;
  byNode: Map<Node, Linear>;
  isLinear: (n: Node) => boolean;
  lns: LayerNorm[];
  /** The LayerNorm whose output is `v`. */
  lnOf: (v: string) => LayerNorm | undefined;
  attn: Attention[];
  /** Role and block of each classified linear. */
  role: Map<Linear, { role: LinearRole; block: number }>;
  /** Role and block of each LayerNorm that feeds a classified linear. */
  lnRole: Map<LayerNorm, { role: string; block: number }>;
  sites: Site[];
}

/** The attention blocks in network order: a Softmax between two activation MatMuls each. */
function findAttention(
  c: Ctx,
  pos: Map<Node, number>,
  isLinear: (n: Node) => boolean,
  source: string,
): Attention[] {
  // attention: Softmax fed by a MatMul of two data operands
  const attn: Attention[] = [];
  for (const n of c.g.nodes) {
    if (n.opType !== "Softmax") continue;
    const qk = backward(c, n.inputs[0], (m) => m.opType === "MatMul" && !isLinear(m))[0];
    const av = forward(c, n.outputs[0], (m) => m.opType === "MatMul" && !isLinear(m))[0];
    if (qk && av && qk.inputs.every((v) => c.data.has(v))) attn.push({ qk, sm: n, av });
  }
  if (attn.length === 0) {
    throw new VitqError(
      `${source}: no transformer block found (expected Softmax between two activation MatMuls)`,
    );
  }
  attn.sort((a, b) => pos.get(a.sm)! - pos.get(b.sm)!);
  return attn;
}

/**
 * Sites of block `b` (its matmuls, softmax, GELU, residual adds) and the roles
 * of its linears (q/k/v or qkv, proj, fc1, fc2) and LayerNorms (norm1, norm2).
 */
function blockSites(f: Found, a: Attention, b: number, gelu: Gelu): void {
  const { c, source, isLinear, byNode, role, lnRole, lns, lnOf, sites } = f;
  const qSrc = backward(c, a.qk.inputs[0], isLinear)[0];
  const kSrc = backward(c, a.qk.inputs[1], isLinear)[0];
  const vSrc = backward(c, a.av.inputs[1], isLinear)[0];
  if (!qSrc || !kSrc || !vSrc) {
    throw new VitqError(
      `${source}: block ${b}: cannot trace q/k/v of ${a.qk.name} to a linear layer`,
    );
  }
  if (qSrc === kSrc && kSrc === vSrc) role.set(byNode.get(qSrc)!, { role: "qkv", block: b });
  else {
    role.set(byNode.get(qSrc)!, { role: "q", block: b });
    role.set(byNode.get(kSrc)!, { role: "k", block: b });
    role.set(byNode.get(vSrc)!, { role: "v", block: b });
  }
  const proj = forward(c, a.av.outputs[0], isLinear)[0];
  if (!proj) throw new VitqError(`${source}: block ${b}: no projection after ${a.av.name}`);
  role.set(byNode.get(proj)!, { role: "proj", block: b });
  sites.push({
    id: `b${b}.qk`,
    kind: "matmul",
    role: "qk",
    block: b,
    node: a.qk.name,
    output: a.qk.outputs[0],
    operands: [a.qk.inputs[0], a.qk.inputs[1]],
  });
  sites.push({
    id: `b${b}.softmax`,
    kind: "softmax_out",
    role: "softmax",
    block: b,
    node: a.sm.name,
    input: a.sm.inputs[0],
    output: a.sm.outputs[0],
  });
  sites.push({
    id: `b${b}.av`,
    kind: "matmul",
    role: "av",
    block: b,
    node: a.av.name,
    output: a.av.outputs[0],
    operands: [a.av.inputs[0], a.av.inputs[1]],
  });
  const fc1 = backward(c, gelu.input, isLinear)[0];
  const fc2 = forward(c, gelu.output, isLinear)[0];
  if (!fc1 || !fc2) throw new VitqError(`${source}: block ${b}: cannot find fc1/fc2 around GELU`);
  role.set(byNode.get(fc1)!, { role: "fc1", block: b });
  role.set(byNode.get(fc2)!, { role: "fc2", block: b });
  sites.push({
    id: `b${b}.gelu`,
    kind: "gelu_out",
    role: "gelu",
    block: b,
    node: gelu.last.name,
    input: gelu.input,
    output: gelu.output,
  });
  // residual adds: Add of two data values reached from proj / fc2 outputs
  for (const [lin, r] of [[proj, "attn"], [fc2, "mlp"]] as const) {
    const out = byNode.get(lin)!.output;
    const add = forward(
      c,
      out,
      (m) => m.opType === "Add" && m.inputs.filter((v) => c.data.has(v)).length === 2,
    )[0];
    if (add) {
      sites.push({
        id: `b${b}.res_${r}`,
        kind: "residual",
        role: r,
        block: b,
        node: add.name,
        output: add.outputs[0],
        operands: [add.inputs[0], add.inputs[1]],
      });
    }
  }
  // LayerNorms feeding qkv (norm1) and fc1 (norm2)
  for (const [lin, r] of [[qSrc, "norm1"], [fc1, "norm2"]] as const) {
    const ln = backward(c, lin.inputs[0], (m) => lns.some((l) => l.last === m))[0];
    if (ln) lnRole.set(lnOf(ln.outputs[0])!, { role: r, block: b });
  }
}

/** Roles of the linears outside blocks: patch embedding, head(s), Swin reductions. */
function otherLinearRoles(f: Found, linears: Linear[]): void {
  const { c, source, pos, attn, role, lnRole, lns, lnOf } = f;
  const lastBlockNode = Math.max(...attn.map((a) => pos.get(a.sm)!));
  for (const l of linears) {
    if (role.has(l)) continue;
    if (l.node.opType === "Conv") {
      role.set(l, { role: "patch_embed", block: -1 });
      continue;
    }
    const ln = backward(c, l.input, (m) => lns.some((x) => x.last === m))[0];
    const p = pos.get(l.node)!;
    if (p > lastBlockNode) {
      role.set(l, { role: "head", block: -1 });
      if (ln) lnRole.set(lnOf(ln.outputs[0])!, { role: "final", block: -1 });
    } else if (ln) {
      // Swin patch merging: LayerNorm -> reduction, between blocks
      const before = attn.filter((a) => pos.get(a.sm)! < p).length;
      role.set(l, { role: "reduction", block: before - 1 });
      lnRole.set(lnOf(ln.outputs[0])!, { role: "merge", block: before - 1 });
    } else {
      throw new VitqError(
        `${source}: cannot classify linear op ${l.node.opType} node ${l.node.name} (weight ${l.weight})`,
      );
    }
  }
}

/** The linear sites, ids from their roles. */
function linearSites(f: Found, linears: Linear[]): void {
  const { role, sites } = f;
  for (const l of linears) {
    const r = role.get(l)!;
    let id = r.block >= 0 && r.role !== "reduction" ? `b${r.block}.${r.role}` : r.role;
    if (r.role === "reduction") id = `b${r.block}.reduction`;
    if (sites.some((s) => s.id === id)) {
      id = `${id}_${sites.filter((s) => s.id.startsWith(id)).length}`;
    }
    sites.push({
      id,
      kind: "linear",
      role: r.role,
      block: r.block,
      node: l.node.name,
      input: l.input,
      output: l.output,
      weight: l.weight,
      weightOutAxis: l.outAxis,
      bias: l.bias,
    });
  }
}

/** The LayerNorm sites with their γ, β and ε (unclassified ones by position). */
function layerNormSites(f: Found): void {
  const { pos, attn, lnRole, lns, sites } = f;
  for (const l of lns) {
    let r = lnRole.get(l);
    if (!r) {
      const p = pos.get(l.last)!;
      const before = attn.filter((a) => pos.get(a.sm)! < p).length;
      r = before === 0 ? { role: "embed", block: -1 } : { role: "other", block: before - 1 };
    }
    sites.push({
      id: r.block >= 0 ? `b${r.block}.${r.role}` : `${r.role}.ln`,
      kind: "ln",
      role: r.role,
      block: r.block,
      node: l.last.name,
      input: l.input,
      output: l.output,
      gamma: l.gamma,
      beta: l.beta,
      epsilon: l.epsilon,
    });
  }
}

/**
 * Find all quantization sites of a ViT/DeiT/Swin graph.
 *
 * @param g the graph
 * @param source file name for error messages
 */
export function findSites(g: Graph, source = "<graph>"): Site[] {
  const c: Ctx = { g, idx: g.index(), data: dataValues(g) };
  const pos = new Map(g.nodes.map((n, i) => [n, i]));
  const linears = findLinears(c);
  const lns = findLayerNorms(c);
  const gelus = findGelus(c);
  const byNode = new Map(linears.map((l) => [l.node, l]));
  const isLinear = (n: Node) => byNode.has(n);
  const attn = findAttention(c, pos, isLinear, source);
  gelus.sort((a, b) => pos.get(a.last)! - pos.get(b.last)!);
  if (gelus.length !== attn.length) {
    throw new VitqError(
      `${source}: found ${attn.length} attention blocks but ${gelus.length} GELU activations; expected one MLP per block`,
    );
  }
  const f: Found = {
    c,
    source,
    pos,
    byNode,
    isLinear,
    lns,
    lnOf: (v) => lns.find((l) => l.output === v),
    attn,
    role: new Map(),
    lnRole: new Map(),
    sites: [],
  };
  attn.forEach((a, b) => blockSites(f, a, b, gelus[b]));
  otherLinearRoles(f, linears);
  linearSites(f, linears);
  layerNormSites(f);
  const order = (s: Site) => pos.get(g.nodes.find((n) => n.name === s.node)!) ?? 0;
  return f.sites.sort((a, b) => order(a) - order(b) || a.id.localeCompare(b.id));
}

/** Count sites by kind (for summaries and tests). */
export function countSites(sites: Site[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of sites) out[s.kind] = (out[s.kind] ?? 0) + 1;
  return out;
}
