/**
 * RepQ-ViT (Li, Xiao, Yang, Gu; ICCV 2023): scale reparameterization for
 * post-training quantization of vision transformers. Follows the reference
 * code (`zkkli/RepQ-ViT`, `classification/`):
 *
 * - weights of every linear layer and of the patch embedding: per output
 *   channel, asymmetric, percentile-MSE init (p ∈ {0.999, 0.9999, 0.99999},
 *   lowest MSE);
 * - inputs of qkv, fc1 and the Swin reduction (post-LayerNorm): per channel,
 *   asymmetric, percentile-MSE per channel during calibration; then the
 *   per-channel steps and zero points are folded into the LayerNorm's γ, β and
 *   the next layer's weight and bias (`core/quant/reparam.ts`), inference uses
 *   one per-tensor (Δ̄, z̄), and the folded layer's weight quantizer is
 *   re-initialized on the rescaled weight;
 * - post-softmax operand of A·V: log-√2, δ by percentile-MSE;
 * - every other activation (proj, fc2, head inputs, q, kᵀ and V): per-tensor
 *   asymmetric, percentile-MSE; the image (patch-embedding input) at 8 bits.
 *
 * Calibration is sequential as in the reference (one forward pass of the
 * calibration images with quantization on, each quantizer initialized on the
 * first data it sees): a quantizer is initialized on its input computed by
 * the model with all earlier quantizers applied. Quantizers that do not feed
 * each other are initialized from the same pass (q, kᵀ and V of a block).
 * After the reparameterization the reference runs the calibration batch once
 * more, which only re-initializes the folded layers' weight quantizers (the
 * activation quantizers keep their steps); so does vitq.
 *
 * A LayerNorm whose output reaches its linear layers through a zero Pad (timm 1.x
 * Swin's window padding) is folded through it ({@link postLnFoldCheck},
 * {@link foldPostLn}); one that cannot be folded exactly (another consumer, a
 * non-zero Pad, ...) keeps its per-channel quantizers, said in its layer records
 * and the notes.
 *
 * Deploy graph ({@link RepqResult.deploy}): weights and uniform activation
 * quantizers as QDQ integer codes; the reparameterized post-LayerNorm ones keep the
 * reference's fractional mean z̄ exactly as two integer parts (`fractionalZpParts`:
 * the integer-zero-point codes plus a saturation correction, the consuming linear
 * layer split into two integer products); the log-√2 softmax operand of A·V stays
 * float.
 *
 * @module
 */
import { BatchCollector, captureValues } from "../core/runtime/capture.ts";
import { captureGraph, type TensorData } from "../core/runtime/runtime.ts";
import {
  emitFedLogSqrt2,
  emitFedUniform,
  type FedLog,
  type FedUniform,
} from "../core/quant/fed.ts";
import { ancestors, attr, type Graph, type GraphIndex, type Node } from "../core/onnx/graph.ts";
import type { Site } from "../core/onnx/sites.ts";
import { VitqError } from "../core/errors.ts";
import { type ActPlan, applyPlan, siteWeight, type WeightPlan } from "../core/quant/apply.ts";
import { fractionalZpFloor, QDQ_KIND, qdqable } from "../core/quant/deploy.ts";
import { emitLogSqrt2Quant } from "../core/quant/log.ts";
import { emitLog2SplitMatMul } from "../core/quant/log2_reparam.ts";
import type { UniformQuantizer } from "../core/quant/uniform.ts";
import {
  foldBlocker,
  foldLayerNorm,
  reparamParams,
  type ScaleReparam,
} from "../core/quant/reparam.ts";
import {
  channelValues,
  logDeltaInit,
  percentileAffine,
  perChannelAffine,
} from "../core/recon/init.ts";
import { LayerRecorder } from "./layers.ts";
import type { OptionsSchema, QuantContext, QuantizedModel, QuantMethod } from "./types.ts";

/** Options of RepQ-ViT (defaults: the reference code's behaviour). */
export interface RepqOptions {
  /**
   * Post-LayerNorm activations (qkv, fc1, reduction inputs):
   * `reparam` (the method: per-channel calibration folded into one per-tensor
   * step), `per-channel` (keep the per-channel quantizers at inference, no
   * fold: the accuracy the reparameterization approximates) or `per-tensor`
   * (a plain per-tensor percentile quantizer: no RepQ).
   */
  postLn: "reparam" | "per-channel" | "per-tensor";
  /** Post-softmax quantizer: `log-sqrt2` (the method) or `uniform` (per-tensor asymmetric, ablation). */
  softmax: "log-sqrt2" | "uniform";
  /** Bits of the image (patch-embedding input; the reference's 8), or 0 to keep it FP. */
  imageBits: number;
  /**
   * `sequential`: every quantizer initialized on inputs from the model
   * quantized so far (the reference); `parallel`: all on FP inputs.
   */
  calibration: "sequential" | "parallel";
  /** Round the reparameterized zero point z̄ (the reference keeps the fractional mean). */
  roundZeroPoint: boolean;
  /**
   * How the quantized A·V is emitted: `log-sqrt2` (the log-√2 values, as the
   * reference code simulates them) or `log2-split` (the paper's inference form:
   * A split into log2-grid values P and odd-code part O, `P·V + (√2-1)·O·V`;
   * equal up to float32 rounding).
   */
  softmaxGraph: "log-sqrt2" | "log2-split";
}

/** The reference code's behaviour. */
export const REPQ_DEFAULTS: RepqOptions = {
  postLn: "reparam",
  softmax: "log-sqrt2",
  imageBits: 8,
  calibration: "sequential",
  roundZeroPoint: false,
  softmaxGraph: "log-sqrt2",
};

/** JSON Schema of each option (checked by the manifest loader). */
const REPQ_SCHEMA: OptionsSchema<RepqOptions> = {
  postLn: {
    enum: ["reparam", "per-channel", "per-tensor"],
    description: "post-LayerNorm activations: reparameterized, per-channel kept, or per-tensor",
  },
  softmax: { enum: ["log-sqrt2", "uniform"], description: "post-softmax quantizer" },
  imageBits: {
    anyOf: [{ const: 0 }, { type: "integer", minimum: 2, maximum: 16 }],
    description: "bits of the image (patch-embedding input), 0 to keep it FP",
  },
  calibration: {
    enum: ["sequential", "parallel"],
    description: "initialize each quantizer on the model quantized so far, or all on FP inputs",
  },
  roundZeroPoint: { type: "boolean", description: "round the reparameterized zero point" },
  softmaxGraph: {
    enum: ["log-sqrt2", "log2-split"],
    description:
      "A·V emitted with log-sqrt2 values, or split into log2 parts (the paper's inference form)",
  },
};

/** How an activation quantizer is initialized. */
type ActKind = "uniform" | "per-channel" | "log-sqrt2";

/** One activation quantizer of the plan. */
export interface RepqAct {
  /** `b3.qkv.input`, `b3.qk.a`, ... */
  id: string;
  site: Site;
  slot: number;
  /** The quantized value (the node's input). */
  value: string;
  tensor: string;
  kind: ActKind;
  bits: number;
  /** Calibration pass that initializes it (0 first). */
  stage: number;
  /** Uniform quantizer after calibration (per-channel for `per-channel`). */
  q?: UniformQuantizer;
  /** δ of the log-√2 quantizer. */
  logScale?: number;
  /** Rank of `value`. */
  rank?: number;
  /** Per-channel calibration before reparameterization (postLn: reparam). */
  perChannel?: UniformQuantizer;
  /**
   * postLn "reparam" only: why this post-LayerNorm quantizer's LayerNorm could not be
   * folded; the quantizer then stays per channel at inference.
   */
  unfolded?: string;
}

/** One weight quantizer of the plan. */
export interface RepqWeight {
  site: Site;
  bits: number;
  q: UniformQuantizer;
  /** Re-initialized on the reparameterized weight. */
  reinit: boolean;
  /** SQNR (dB) of the quantized weight against the (folded) FP weight. */
  sqnrDb?: number;
}

/** A LayerNorm folded into the linear layers it feeds. */
export interface RepqFold {
  ln: Site;
  linears: Site[];
  params: ScaleReparam;
  /** Zero Pads between the LayerNorm and the linear layers, folded through (`foldPostLn`). */
  pads: string[];
}

/** Everything {@link runRepq} decided, for tests and fixtures. */
export interface RepqResult {
  acts: RepqAct[];
  weights: RepqWeight[];
  folds: RepqFold[];
  /** The FP graph with the folds applied (no quantizers). */
  folded: Graph;
  /** The fake-quant graph. */
  graph: Graph;
  /**
   * The deploy graph (`repqDeploy`): uniform quantizers as QDQ integer codes, the log-√2
   * softmax quantizer (and any quantizer without a QDQ form) as float fake-quant.
   */
  deploy: Graph;
  /**
   * Reparameterized quantizers whose fractional zero point the deploy graph rounds (where
   * the exact two-part form does not apply: `⌊z̄⌋ + 1` outside uint8).
   */
  deployRounded: number;
  /** Calibration passes run. */
  passes: number;
}

const POST_LN_ROLE: Record<string, string> = {
  qkv: "norm1",
  q: "norm1",
  k: "norm1",
  v: "norm1",
  fc1: "norm2",
  reduction: "merge",
};

/** The activation quantizers of the reference, with their calibration stages. */
function planActs(ctx: QuantContext, o: RepqOptions): RepqAct[] {
  const a = ctx.bits.a;
  const acts: RepqAct[] = [];
  const add = (
    site: Site,
    slot: number,
    value: string,
    tensor: string,
    kind: ActKind,
    bits: number,
  ) =>
    acts.push({
      id: `${site.id}.${tensor}`,
      site,
      slot,
      value,
      tensor,
      kind,
      bits,
      stage: 0,
    });
  for (const s of ctx.sites) {
    if (s.kind === "linear") {
      if (s.role === "patch_embed") {
        if (o.imageBits > 0) add(s, 0, s.input!, "input", "uniform", o.imageBits);
      } else if (POST_LN_ROLE[s.role] && o.postLn !== "per-tensor") {
        add(s, 0, s.input!, "input", "per-channel", a);
      } else {
        add(s, 0, s.input!, "input", "uniform", a);
      }
    } else if (s.kind === "matmul") {
      const softmaxA = s.role === "av" && o.softmax === "log-sqrt2";
      add(s, 0, s.operands![0], "a", softmaxA ? "log-sqrt2" : "uniform", a);
      add(s, 1, s.operands![1], "b", "uniform", a);
    }
  }
  if (o.calibration === "parallel") return acts;
  // stage: 1 + the latest stage of the quantizers in front of the nodes it depends on
  const idx = ctx.graph.index();
  const nodeIdx = new Map(ctx.graph.nodes.map((n, i) => [n.name, i]));
  const anc = acts.map((q) => ancestors(ctx.graph, idx, [q.value]));
  const order = acts.map((_, i) => i).sort((i, j) => anc[i].size - anc[j].size);
  for (const i of order) {
    let st = 0;
    for (const j of order) {
      if (j === i) continue;
      if (anc[i].has(nodeIdx.get(acts[j].site.node)!)) st = Math.max(st, acts[j].stage + 1);
    }
    acts[i].stage = st;
  }
  return acts;
}

/** Per-output-channel percentile-MSE weight quantizer of a linear site. */
function weightQuantizer(g: Graph, site: Site, bits: number): UniformQuantizer {
  const { data, dims } = siteWeight(g, site);
  const axis = site.weightOutAxis ?? 0;
  const { scale, zeroPoint } = perChannelAffine(data, dims, axis, bits);
  return { bits, signed: false, scale, zeroPoint, axis };
}

/** Initialize one activation quantizer from its captured calibration values. */
function initAct(q: RepqAct, x: Float32Array, dims: number[]): void {
  q.rank = dims.length;
  if (q.kind === "log-sqrt2") {
    q.logScale = logDeltaInit(x, q.bits);
  } else if (q.kind === "per-channel") {
    const axis = dims.length - 1;
    const C = dims[axis];
    const scale = new Float32Array(C), zeroPoint = new Float32Array(C);
    for (let c = 0; c < C; c++) {
      const p = percentileAffine(channelValues(x, dims, axis, c), q.bits);
      scale[c] = p.scale;
      zeroPoint[c] = p.zeroPoint;
    }
    q.q = { bits: q.bits, signed: false, scale, zeroPoint, axis };
  } else {
    const p = percentileAffine(x, q.bits);
    q.q = {
      bits: q.bits,
      signed: false,
      scale: Float32Array.of(p.scale),
      zeroPoint: Float32Array.of(p.zeroPoint),
    };
  }
}

function actPlan(q: RepqAct): ActPlan {
  if (q.kind === "log-sqrt2") {
    const logQ = { bits: q.bits, scale: q.logScale! };
    return {
      site: q.site,
      slot: q.slot,
      emit: (g, input, prefix) => emitLogSqrt2Quant(g, input, logQ, prefix),
    };
  }
  return { site: q.site, slot: q.slot, q: q.q!, rank: q.rank };
}

/**
 * The LayerNorms RepQ-ViT reparameterizes and the linear layers each one
 * feeds: norm1 → qkv (or q, k, v), norm2 → fc1, the patch-merging norm → the
 * Swin reduction, in the same block. Throws a VitqError naming the linear
 * layer when its LayerNorm is not found.
 */
export function postLnFolds(sites: Site[]): { ln: Site; linears: Site[] }[] {
  const groups = new Map<string, { ln: Site; linears: Site[] }>();
  for (const s of sites) {
    const lnRole = s.kind === "linear" ? POST_LN_ROLE[s.role] : undefined;
    if (!lnRole) continue;
    const ln = sites.find((l) => l.kind === "ln" && l.role === lnRole && l.block === s.block);
    if (!ln) throw new VitqError(`repq: no ${lnRole} LayerNorm in front of ${s.id}`);
    const g = groups.get(ln.id) ?? { ln, linears: [] };
    g.linears.push(s);
    groups.set(ln.id, g);
  }
  return [...groups.values()];
}

/** Group the post-LayerNorm quantizers by the LayerNorm that produces their input. */
function foldGroups(ctx: QuantContext, acts: RepqAct[]): { ln: Site; acts: RepqAct[] }[] {
  return postLnFolds(ctx.sites).map(({ ln, linears }) => ({
    ln,
    acts: linears.map((l) => acts.find((q) => q.site === l && q.kind === "per-channel")!),
  }));
}

/** A constant-mode Pad whose padding value is 0 (Swin's window padding). */
function zeroPad(g: Graph, idx: GraphIndex, n: Node): boolean {
  if (n.opType !== "Pad") return false;
  const mode = attr(n, "mode");
  if (mode !== undefined && mode !== "constant") return false;
  if (!n.inputs[2]) return true;
  const v = g.constant(n.inputs[2], idx);
  return v !== undefined && v.float32().every((x) => x === 0);
}

/**
 * Can the LayerNorm `ln` be folded into `linears`? `foldBlocker`'s conditions (layout
 * ops only between them), except that constant Pads with value 0 may sit on the way
 * (timm 1.x Swin pads norm1's output to the window size: a Pad whose pads come from
 * the shapes). A plain fold through such a Pad is not exact: a padded position holds
 * 0, not an LN output, and the folded linear layer (weights W·r, bias + W·r·b) reads
 * 0 as `x/r - b = 0`, i.e. an original value of `r·b`, changing its output there
 * (the padded tokens are keys and values of their window). `foldPostLn` therefore
 * pads `y + b` and subtracts `b` after the Pad: the padded positions then hold `-b`,
 * what the folded layer needs to compute the original `W·0 + bias`, and the others
 * are unchanged (exact up to float32 rounding; the FP function of the graph is kept).
 * The per-tensor quantizer reads `-b_c = (z_c - z̄)·Δ̄` there, which it maps to code
 * `z_c` and back to `-b_c` when z̄ is an integer: the per-channel quantizer's exact zero
 * (with the reference's fractional z̄, the same approximation as at every position).
 * Returns the reason it cannot, or the Pad nodes on the way.
 */
export function postLnFoldCheck(
  g: Graph,
  ln: Site,
  linears: Site[],
): { why: string; pads?: undefined } | { why?: undefined; pads: string[] } {
  const idx = g.index();
  const view = g.clone();
  for (const n of view.nodes) {
    if (!zeroPad(g, idx, n)) continue;
    n.opType = "Identity";
    n.inputs = [n.inputs[0]];
    n.attributes = [];
  }
  const why = foldBlocker(view, ln, linears);
  if (why) return { why };
  // the paths from the LayerNorm to the linear layers are layout ops and zero Pads only
  const targets = new Set(linears.map((s) => s.node));
  const pads = new Set<string>();
  const seen = new Set<string>([ln.output]);
  const queue = [ln.output];
  while (queue.length) {
    for (const u of idx.consumers.get(queue.shift()!) ?? []) {
      const n = g.nodes[u.node];
      if (targets.has(n.name) || n.opType === "Shape" || n.opType === "Size") continue;
      if (n.opType === "Pad") pads.add(n.name);
      for (const o of n.outputs) {
        if (!seen.has(o)) {
          seen.add(o);
          queue.push(o);
        }
      }
    }
  }
  return { pads: [...pads] };
}

/**
 * `foldLayerNorm`, and through each zero Pad in `pads` (see {@link postLnFoldCheck}):
 * `Pad(y + b) - b`, so that padded positions hold `-b` (exact in FP up to float32
 * rounding). Edits `g`; keeps it topologically sorted.
 */
export function foldPostLn(
  g: Graph,
  ln: Site,
  linears: Site[],
  p: ScaleReparam,
  pads: string[],
): void {
  foldLayerNorm(g, ln, linears, p);
  if (pads.length === 0) return;
  const b = g.constFloat(`${ln.id}_pad_b`, p.b);
  for (const name of pads) {
    const n = g.nodes.find((x) => x.name === name);
    if (!n) throw new VitqError(`repq: Pad ${name} after ${ln.id} not found`);
    n.inputs[0] = g.addNode("Add", [n.inputs[0], b]);
    const out = n.outputs[0];
    n.outputs[0] = g.uniqueName(`${out}_shifted`);
    g.addNode("Sub", [n.outputs[0], b], { outputs: [out] });
  }
  g.topoSort();
}

/** Input channels of a linear site (from its weight). */
function inChannels(g: Graph, site: Site): number {
  const t = g.initializers.get(site.weight!)!;
  return t.dims[1 - (site.weightOutAxis ?? 0)];
}

/** All quantizers from FP activations of the FP model: one pass. */
async function calibrateParallel(ctx: QuantContext, acts: RepqAct[]): Promise<number> {
  const cap = await captureValues(
    ctx.runtime,
    ctx.graph,
    acts.map((q) => q.value),
    ctx.calib,
    ctx.batchSize,
  );
  for (const q of acts) {
    const x = cap.get(q.value)!;
    initAct(q, x.data, x.dims);
  }
  return 1;
}

/**
 * Stage by stage: pass `s` runs the calibration images through the model with
 * the weights quantized and the activation quantizers of stages < s on, and
 * initializes those of stage s. One session serves every pass: the
 * activation quantizers' parameters and on/off switches are graph inputs
 * (`core/quant/fed.ts`).
 */
async function calibrateSequential(
  ctx: QuantContext,
  acts: RepqAct[],
  wPlans: WeightPlan[],
): Promise<number> {
  const fed = new Map<RepqAct, FedUniform | FedLog>();
  const plans: ActPlan[] = acts.map((q) => ({
    site: q.site,
    slot: q.slot,
    emit: (g, input, prefix) => {
      const f = q.kind === "log-sqrt2" ? emitFedLogSqrt2(g, input, q.bits, prefix) : emitFedUniform(
        g,
        input,
        q.bits,
        q.kind === "per-channel" ? inChannels(g, q.site) : 1,
        prefix,
      );
      fed.set(q, f);
      return f.output;
    },
  }));
  const full = applyPlan(ctx.graph, wPlans, plans).graph;
  const imageInput = ctx.graph.inputNames[0];
  const nStages = Math.max(0, ...acts.map((q) => q.stage)) + 1;
  // consecutive stages of one block share a session whose graph ends at their values
  const chunks: RepqAct[][][] = [];
  let lastBlock: number | undefined;
  for (let st = 0; st < nStages; st++) {
    const todo = acts.filter((q) => q.stage === st);
    if (todo.length === 0) continue;
    const block = Math.max(...todo.map((q) => q.site.block));
    if (block !== lastBlock || chunks.length === 0) chunks.push([]);
    chunks[chunks.length - 1].push(todo);
    lastBlock = block;
  }
  let passes = 0;
  for (const chunk of chunks) {
    const g = captureGraph(full, chunk.flat().map((q) => q.value));
    const session = await ctx.runtime.createSession(g, "repq calibration graph");
    const inputs = new Set(session.inputNames);
    try {
      for (const todo of chunk) {
        const st = todo[0].stage;
        const params: Record<string, TensorData> = {};
        for (const q of acts) {
          const f = fed.get(q)!;
          let feeds: Record<string, TensorData>;
          if (q.stage >= st) feeds = f.off();
          else if (q.kind === "log-sqrt2") feeds = (f as FedLog).on(q.logScale!);
          else feeds = (f as FedUniform).on(q.q!.scale, q.q!.zeroPoint);
          for (const [k, v] of Object.entries(feeds)) if (inputs.has(k)) params[k] = v;
        }
        const parts = new BatchCollector(ctx.calib.length);
        for (let start = 0; start < ctx.calib.length; start += ctx.batchSize) {
          const n = Math.min(ctx.batchSize, ctx.calib.length - start);
          const data = await ctx.calib.slice(start, start + n);
          const out = await session.run({
            ...params,
            [imageInput]: { data, dims: [n, ...ctx.calib.shape] },
          });
          for (const q of todo) parts.push(q.value, out[q.value].data, out[q.value].dims, n);
        }
        const cap = parts.finish();
        passes++;
        for (const q of todo) {
          const x = cap.get(q.value)!;
          initAct(q, x.data, x.dims);
        }
        ctx.step?.(`calibration pass ${passes} (${todo.map((q) => q.id).join(", ")})`);
      }
    } finally {
      await session.release();
    }
  }
  return passes;
}

/** Run RepQ-ViT's calibration and reparameterization; returns the plan and the graphs. */
export async function runRepq(ctx: QuantContext): Promise<RepqResult> {
  const o = { ...REPQ_DEFAULTS, ...ctx.options } as RepqOptions;
  const linears = ctx.sites.filter((s) => s.kind === "linear");
  const weights: RepqWeight[] = linears.map((site) => ({
    site,
    bits: ctx.bits.w,
    q: weightQuantizer(ctx.graph, site, ctx.bits.w),
    reinit: false,
  }));
  const acts = planActs(ctx, o);
  // a LayerNorm that cannot be folded keeps its per-channel quantizers (recorded, noted)
  const groups = (o.postLn === "reparam" ? foldGroups(ctx, acts) : []).flatMap((gr) => {
    const check = postLnFoldCheck(ctx.graph, gr.ln, gr.acts.map((q) => q.site));
    if (check.why === undefined) return [{ ...gr, pads: check.pads }];
    for (const q of gr.acts) q.unfolded = check.why;
    return [];
  });

  // calibration: weights quantized throughout; activations stage by stage
  const wPlans: WeightPlan[] = weights.map((w) => ({ site: w.site, q: w.q }));
  const passes = o.calibration === "sequential"
    ? await calibrateSequential(ctx, acts, wPlans)
    : await calibrateParallel(ctx, acts);

  // scale reparameterization
  const folded = ctx.graph.clone();
  const folds: RepqFold[] = [];
  for (const gr of groups) {
    const first = gr.acts[0];
    const pc = first.q!;
    const params = reparamParams(pc.scale, pc.zeroPoint, o.roundZeroPoint);
    foldPostLn(folded, gr.ln, gr.acts.map((q) => q.site), params, gr.pads);
    folds.push({ ln: gr.ln, linears: gr.acts.map((q) => q.site), params, pads: gr.pads });
    for (const q of gr.acts) {
      q.perChannel = q.q;
      q.q = {
        bits: q.bits,
        signed: false,
        scale: Float32Array.of(params.scale),
        zeroPoint: Float32Array.of(params.zeroPoint),
      };
      const w = weights.find((x) => x.site === q.site)!;
      w.q = weightQuantizer(folded, q.site, w.bits);
      w.reinit = true;
    }
  }
  const split = o.softmaxGraph === "log2-split" ? acts.filter((q) => q.kind === "log-sqrt2") : [];
  const { graph, weights: applied } = applyPlan(
    folded,
    weights.map((w) => ({ site: w.site, q: w.q })),
    acts.filter((q) => !split.includes(q)).map(actPlan),
  );
  splitSoftmax(graph, split);
  const sq = new Map(applied.map((a) => [a.site, a.sqnrDb]));
  for (const w of weights) w.sqnrDb = sq.get(w.site);
  const dep = repqDeploy(folded, weights, acts, split);
  return {
    acts,
    weights,
    folds,
    folded,
    graph,
    deploy: dep.graph,
    deployRounded: dep.rounded,
    passes,
  };
}

/** softmaxGraph "log2-split": the A·V matmuls of `split` in the paper's log2 form. */
function splitSoftmax(g: Graph, split: RepqAct[]): void {
  for (const q of split) {
    emitLog2SplitMatMul(g, q.site.node, { bits: q.bits, scale: q.logScale! }, `${q.site.id}_l2`);
  }
  if (split.length) g.topoSort();
}

/**
 * The uniform quantizer the deploy graph uses for `q`: `q` itself (a fractional zero point
 * z̄, a reparameterized post-LayerNorm quantizer's mean of integers as the reference keeps
 * it, becomes two exact integer parts in `applyPlan`: `fractionalZpParts`), or, where that
 * form does not apply (`⌊z̄⌋ + 1` outside uint8), the same step with z̄ rounded: the
 * values are then the same except where the quantizer saturates, where they differ by
 * less than one step (a rounded zero point outside uint8: `q`, float fake-quant).
 */
function integerZeroPoint(q: UniformQuantizer): UniformQuantizer {
  if (q.zeroPoint.every((z) => Number.isInteger(z)) || fractionalZpFloor(q) !== undefined) {
    return q;
  }
  const r = { ...q, zeroPoint: q.zeroPoint.map((z) => Math.round(z)) };
  return qdqable(r) ? r : q;
}

/**
 * RepQ-ViT's deploy graph, from the folded FP graph: weights (per output channel,
 * asymmetric) as uint8 codes, uniform activation quantizers as
 * QuantizeLinear/DequantizeLinear (the reparameterized post-LayerNorm ones per tensor,
 * their fractional z̄ as two integer parts: {@link integerZeroPoint}); the log-√2 softmax
 * quantizer, per-channel quantizers of LayerNorms that were not folded, and any quantizer
 * whose zero point does not fit its 8-bit container stay float fake-quant (a weight beside
 * such a float input is stored float by `applyPlan`). Returns the graph and how many
 * quantizers had their zero point rounded.
 */
function repqDeploy(
  folded: Graph,
  weights: RepqWeight[],
  acts: RepqAct[],
  split: RepqAct[],
): { graph: Graph; rounded: number } {
  let rounded = 0;
  const aPlans = acts.filter((q) => !split.includes(q)).map((q): ActPlan => {
    if (q.kind === "log-sqrt2") return actPlan(q);
    const qi = integerZeroPoint(q.q!);
    if (qi !== q.q) rounded++;
    return { site: q.site, slot: q.slot, q: qi, rank: q.rank };
  });
  const wPlans = weights.map((w): WeightPlan => ({ site: w.site, q: w.q }));
  const graph = applyPlan(folded, wPlans, aPlans, { deploy: true }).deploy!;
  splitSoftmax(graph, split);
  return { graph, rounded };
}

/** One quantizer's parameters as plain numbers (float32 values, exactly representable in JSON). */
export interface StepEntry {
  scale: number[];
  zeroPoint?: number[];
  /** Post-LayerNorm quantizers: the per-channel calibration before the fold. */
  perChannel?: { scale: number[]; zeroPoint: number[] };
}

/** The chosen quantizers of a run, keyed `<site>.<tensor>` (activations) and `<site>` (weights). */
export function repqSteps(
  r: RepqResult,
): { acts: Record<string, StepEntry>; weights: Record<string, StepEntry> } {
  const acts: Record<string, StepEntry> = {};
  for (const q of r.acts) {
    if (q.kind === "log-sqrt2") acts[q.id] = { scale: [q.logScale!] };
    else {
      acts[q.id] = { scale: [...q.q!.scale], zeroPoint: [...q.q!.zeroPoint] };
      if (q.perChannel) {
        acts[q.id].perChannel = {
          scale: [...q.perChannel.scale],
          zeroPoint: [...q.perChannel.zeroPoint],
        };
      }
    }
  }
  const weights: Record<string, StepEntry> = {};
  for (const w of r.weights) {
    weights[w.site.id] = { scale: [...w.q.scale], zeroPoint: [...w.q.zeroPoint] };
  }
  return { acts, weights };
}

function describe(q: RepqAct, o: RepqOptions): string {
  if (q.kind === "log-sqrt2") return "per-tensor log-sqrt2";
  if (q.kind === "per-channel") {
    if (q.unfolded) return `per-channel asym (not reparameterized: ${q.unfolded})`;
    return o.postLn === "reparam"
      ? "per-tensor asym (reparameterized per-channel)"
      : "per-channel asym";
  }
  return "per-tensor asym";
}

/** RepQ-ViT behind the common interface. */
export const repq: QuantMethod = {
  name: "repq",
  paper: "Li et al., RepQ-ViT, ICCV 2023 (arXiv 2212.08254)",
  description:
    "RepQ-ViT: per-channel asymmetric post-LayerNorm activations folded into LayerNorm γ/β and the next layer (one per-tensor step at inference), log-√2 post-softmax, per-channel asymmetric weights, percentile-MSE init everywhere, 8-bit image; sequential calibration",
  approximations:
    "none of the algorithm; log-√2 codes are the exact rounding of -2·log2(x/δ) (the reference rounds a float32 log2 of x/δ), percentile and mean arithmetic float32 with float64 sums; the fake-quant graph emits the log-√2 values directly (as the reference code simulates them); softmaxGraph: log2-split emits the paper's log2 inference form instead (equal up to float32 rounding)",
  defaults: { ...REPQ_DEFAULTS },
  optionsSchema: REPQ_SCHEMA,
  async quantize(ctx: QuantContext): Promise<QuantizedModel> {
    const o = { ...REPQ_DEFAULTS, ...ctx.options } as RepqOptions;
    const r = await runRepq(ctx);
    const rec = new LayerRecorder(ctx);
    for (const w of r.weights) {
      rec.add(w.site, "weight", w.site.weight!, {
        bits: w.bits,
        scale: w.q.scale[0],
        quantizer: w.reinit ? "per-channel asym (reparameterized weight)" : "per-channel asym",
        sqnrDb: w.sqnrDb,
      });
    }
    for (const q of r.acts) {
      rec.add(q.site, q.tensor, q.value, {
        bits: q.bits,
        scale: q.kind === "log-sqrt2" ? q.logScale! : q.q!.scale[0],
        quantizer: describe(q, o),
      });
    }
    const layers = await rec.records();
    const pads = r.folds.reduce((n, f) => n + f.pads.length, 0);
    const unfolded = [...new Set(r.acts.filter((q) => q.unfolded).map((q) => q.unfolded))];
    const notes = [
      `${r.passes} calibration passes`,
      `${r.folds.length} LayerNorms reparameterized${
        pads ? ` (${pads} through a zero Pad: padded positions shifted by -b)` : ""
      }`,
      ...unfolded.map((why) => `kept per channel (not reparameterized): ${why}`),
      ...(r.deployRounded
        ? [
          `deploy graph: ${r.deployRounded} reparameterized zero points rounded to integers (differs from the fake-quant graph only where those quantizers saturate)`,
        ]
        : []),
    ].join("; ");
    const kind =
      `${QDQ_KIND}; RepQ-ViT's reparameterized post-LayerNorm quantizers (fractional zero point z̄) as two integer parts, the consuming linear layers as two integer products${
        r.deployRounded ? ` (${r.deployRounded} with z̄ rounded)` : ""
      }; log-√2 softmax quantizer float`;
    return { graph: r.graph, layers, notes, deployable: { graph: r.deploy, kind } };
  },
};
