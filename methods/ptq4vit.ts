/**
 * PTQ4ViT (Yuan et al., ECCV 2022, arXiv 2111.12293) and its baseline BasePTQ.
 *
 * What is quantized follows the reference code: weights and inputs of every
 * linear layer (qkv with separate steps for its q, k and v thirds, proj, fc1, fc2,
 * head, Swin reduction; per tensor), the patch-embedding weight per output channel
 * (its input, the image, stays FP), both operands of Q·Kᵀ and A·V. The fc2 input
 * (post-GELU) uses the twin uniform GELU quantizer and the softmax operand of A·V
 * the twin uniform softmax quantizer. LayerNorm, softmax and GELU computation,
 * biases and residuals stay FP.
 *
 * Calibration is parallel, as in the reference: every layer is searched on FP
 * inputs from the FP model. Steps start at max|x| / (2^(k-1) - 0.5) and are searched
 * on the grid Δ0·(α + i(β-α)/n), i < n, in `rounds` alternating rounds (weights
 * then inputs; A then B for matmuls; the softmax split over 2^-i, i < 20). All
 * candidates of a step are scored in a few batched ONNX Runtime runs.
 *
 * @module
 */
import { type Captured, captureValues } from "../core/runtime/capture.ts";
import type { Site } from "../core/onnx/sites.ts";
import { type ActPlan, applyPlan, type WeightPlan } from "../core/quant/apply.ts";
import { fakeQuant, symmetric, type UniformQuantizer } from "../core/quant/uniform.ts";
import {
  emitTwinGelu,
  emitTwinSoftmax,
  twinGelu,
  twinSoftmax,
  type TwinVariant,
} from "../core/quant/twin.ts";
import { type CandidateQuantizer, CandidateScorer, type Metric } from "../core/quant/search.ts";
import { attr } from "../core/onnx/graph.ts";
import { outputGradients } from "../core/autodiff/gradients.ts";
import { CellCache } from "./cache.ts";
import type { QuantContext, QuantizedModel, QuantMethod } from "./types.ts";
import { LayerRecorder, type TensorQuant } from "./layers.ts";

/** Options shared by PTQ4ViT and BasePTQ. */
export interface Ptq4vitOptions {
  metric: Metric;
  /** Where ∂L/∂O comes from: CE to the FP model's predictions, or the reference's KL(FP‖FP). */
  gradient: "pseudo-label" | "reference";
  twinSoftmax: boolean;
  twinGelu: boolean;
  /** Twin softmax semantics: `paper` (disjoint ranges) or `reference` (sum of branches). */
  variant: TwinVariant;
  /** Per-output-channel steps for the patch-embedding weight (PTQ4ViT) or one step (BasePTQ). */
  patchPerChannel: boolean;
  alpha: number;
  beta: number;
  n: number;
  rounds: number;
  /** Images per gradient pass (the reference uses 4). */
  gradBatch: number;
}

const PTQ4VIT_DEFAULTS: Ptq4vitOptions = {
  metric: "hessian",
  gradient: "pseudo-label",
  twinSoftmax: true,
  twinGelu: true,
  variant: "reference",
  patchPerChannel: true,
  alpha: 0.01,
  beta: 1.2,
  n: 100,
  rounds: 3,
  gradBatch: 4,
};

const BASEPTQ_DEFAULTS: Ptq4vitOptions = {
  ...PTQ4VIT_DEFAULTS,
  metric: "cosine",
  twinSoftmax: false,
  twinGelu: false,
  patchPerChannel: false,
  alpha: 0.5,
  rounds: 1,
};

function checkOptions(o: Record<string, unknown>): string | undefined {
  if (!["hessian", "cosine", "mse"].includes(o.metric as string)) {
    return "metric must be hessian, cosine or mse";
  }
  if (!["pseudo-label", "reference"].includes(o.gradient as string)) {
    return "gradient must be pseudo-label or reference";
  }
  if (!["paper", "reference"].includes(o.variant as string)) {
    return "variant must be paper or reference";
  }
  for (const k of ["twinSoftmax", "twinGelu", "patchPerChannel"]) {
    if (typeof o[k] !== "boolean") return `${k} must be true or false`;
  }
  const a = o.alpha as number, b = o.beta as number;
  if (!(typeof a === "number" && typeof b === "number" && a > 0 && b > a)) {
    return "need 0 < alpha < beta";
  }
  for (const k of ["n", "rounds", "gradBatch"]) {
    if (!Number.isInteger(o[k]) || (o[k] as number) < 1) return `${k} must be a positive integer`;
  }
  return undefined;
}

function absMax(x: Float32Array): number {
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]));
  return m;
}

function maxOf(x: Float32Array): number {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] > m) m = x[i];
  return m;
}

/** The reference's initial step: bound / (2^(k-1) - 0.5). */
function initStep(bound: number, bits: number): number {
  const s = Math.fround(bound / (2 ** (bits - 1) - 0.5));
  return s > 0 ? s : 1e-8;
}

function argmin(xs: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] < xs[best]) best = i;
  return best;
}

/** A linear layer as a matmul problem: X [M, Cin] · W [Cin, Cout] + b. */
interface LinearProblem {
  x: Float32Array;
  m: number;
  cin: number;
  cout: number;
  /** Weight in [Cin, Cout] layout. */
  w: Float32Array;
  bias?: Float32Array;
  o: Float32Array;
  g?: Float32Array;
  /** Output column ranges with their own weight step. */
  groups: [number, number][];
}

/** Transpose a row-major [r, c] matrix. */
function transpose(x: Float32Array, r: number, c: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = x[i * c + j];
  return out;
}

/** [B, C, H, W] -> [B*H*W, C] (channels last, rows in b, h, w order). */
function channelsLast(x: Float32Array, dims: number[]): Float32Array {
  const [b, c, h, w] = dims;
  const out = new Float32Array(x.length);
  const hw = h * w;
  for (let n = 0; n < b; n++) {
    for (let ch = 0; ch < c; ch++) {
      for (let p = 0; p < hw; p++) out[(n * hw + p) * c + ch] = x[(n * c + ch) * hw + p];
    }
  }
  return out;
}

/** Non-overlapping patches of [B, C, H, W] for a kernel == stride conv: [B*Ho*Wo, C*kh*kw]. */
function patches(x: Float32Array, dims: number[], kh: number, kw: number): Float32Array {
  const [b, c, h, w] = dims;
  const ho = Math.floor(h / kh), wo = Math.floor(w / kw), k = c * kh * kw;
  const out = new Float32Array(b * ho * wo * k);
  for (let n = 0; n < b; n++) {
    for (let i = 0; i < ho; i++) {
      for (let j = 0; j < wo; j++) {
        const row = ((n * ho + i) * wo + j) * k;
        for (let ch = 0; ch < c; ch++) {
          for (let u = 0; u < kh; u++) {
            for (let v = 0; v < kw; v++) {
              out[row + (ch * kh + u) * kw + v] =
                x[((n * c + ch) * h + i * kh + u) * w + j * kw + v];
            }
          }
        }
      }
    }
  }
  return out;
}

/** Fake-quantize a [Cin, Cout] weight with one step per output column. */
function quantW(
  w: Float32Array,
  cin: number,
  cout: number,
  colSteps: Float32Array,
  bits: number,
): Float32Array {
  return fakeQuant(w, [cin, cout], {
    bits,
    signed: true,
    scale: colSteps,
    zeroPoint: new Float32Array(cout),
    axis: 1,
  });
}

function expandGroups(groups: [number, number][], steps: number[], cout: number): Float32Array {
  const out = new Float32Array(cout);
  groups.forEach(([a, b], gi) => out.fill(steps[gi], a, b));
  return out;
}

function sym(bits: number, step: number): UniformQuantizer {
  return symmetric(bits, step);
}

/** How one activation operand is quantized: uniform with a step, or a twin quantizer. */
type ActQ =
  | { kind: "uniform"; step: number }
  | { kind: "twin-softmax"; split: number }
  | { kind: "twin-gelu"; pos: number };

function quantAct(x: Float32Array, q: ActQ, bits: number, variant: TwinVariant): Float32Array {
  if (q.kind === "uniform") return fakeQuant(x, [x.length], sym(bits, q.step));
  if (q.kind === "twin-softmax") return twinSoftmax(x, { bits, split: q.split, variant });
  return twinGelu(x, { bits, posScale: q.pos });
}

function emitAct(q: ActQ, bits: number, variant: TwinVariant): ActPlan["emit"] | undefined {
  if (q.kind === "twin-softmax") {
    return (g, input, prefix) =>
      emitTwinSoftmax(g, input, { bits, split: q.split, variant }, prefix);
  }
  if (q.kind === "twin-gelu") {
    return (g, input, prefix) => emitTwinGelu(g, input, { bits, posScale: q.pos }, prefix);
  }
  return undefined;
}

/** The scoring graph's quantizer for candidates of the same kind as `q`. */
function candidateQuantizer(q: ActQ, bits: number, variant: TwinVariant): CandidateQuantizer {
  return q.kind === "uniform"
    ? { kind: "uniform", bits }
    : q.kind === "twin-softmax"
    ? { kind: "twin-softmax", bits, variant }
    : { kind: "twin-gelu", bits };
}

/** The searched parameter of an activation quantizer (step, split point or positive step). */
function actStep(q: ActQ): number {
  return q.kind === "uniform" ? q.step : q.kind === "twin-softmax" ? q.split : q.pos;
}

function actName(q: ActQ): string {
  return q.kind === "uniform" ? "per-tensor sym" : q.kind;
}

/** Calibration data shared by cells: FP values and output gradients per site. */
interface CalibData {
  values: Map<string, Captured>;
  grads: Map<string, Float32Array> | undefined;
}

const cache = new CellCache<CalibData>();

async function calibData(ctx: QuantContext, sites: Site[], o: Ptq4vitOptions): Promise<CalibData> {
  const outputs = sites.map((s) => s.output);
  const values = [
    ...new Set(
      sites.flatMap((s) => [s.input, ...(s.operands ?? []), s.output]).filter((v): v is string =>
        !!v
      ),
    ),
  ];
  const depends = [o.metric === "hessian" ? o.gradient : "none", o.gradBatch];
  return await cache.get(ctx, depends, async () => {
    const captured = await captureValues(ctx.runtime, ctx.graph, values, ctx.calib, ctx.batchSize);
    const grads = o.metric === "hessian"
      ? await outputGradients(ctx.runtime, ctx.graph, outputs, ctx.calib, {
        mode: o.gradient,
        subBatch: o.gradBatch,
      })
      : undefined;
    return { values: captured, grads };
  });
}

function linearProblem(
  ctx: QuantContext,
  site: Site,
  data: CalibData,
  perChannelPatch: boolean,
): LinearProblem {
  const wt = ctx.graph.initializers.get(site.weight!)!;
  const wRaw = wt.float32();
  const node = ctx.graph.nodes.find((n) => n.name === site.node)!;
  const bias = site.bias ? ctx.graph.initializers.get(site.bias)?.float32() : undefined;
  const xin = data.values.get(site.input!)!;
  const out = data.values.get(site.output)!;
  const grad = data.grads?.get(site.output);
  if (node.opType === "Conv") {
    const [cout, cin, kh, kw] = wt.dims;
    const strides = (attr(node, "strides") as number[] | undefined) ?? [1, 1];
    const pads = (attr(node, "pads") as number[] | undefined) ?? [0, 0, 0, 0];
    const group = (attr(node, "group") as number | undefined) ?? 1;
    if (strides[0] !== kh || strides[1] !== kw || pads.some((p) => p !== 0) || group !== 1) {
      throw new Error(
        `${site.id}: patch embedding ${node.name} is not a non-overlapping convolution`,
      );
    }
    const x = patches(xin.data, xin.dims, kh, kw);
    const k = cin * kh * kw;
    return {
      x,
      m: x.length / k,
      cin: k,
      cout,
      w: transpose(wRaw, cout, k),
      bias,
      o: channelsLast(out.data, out.dims),
      g: grad ? channelsLast(grad, out.dims) : undefined,
      groups: perChannelPatch
        ? Array.from({ length: cout }, (_, i) => [i, i + 1] as [number, number])
        : [[0, cout]],
    };
  }
  const transB = node.opType === "Gemm" && site.weightOutAxis === 0;
  const [r, c] = wt.dims;
  const w = transB ? transpose(wRaw, r, c) : wRaw;
  const cin = transB ? c : r, cout = transB ? r : c;
  const groups: [number, number][] = site.role === "qkv"
    ? [[0, cout / 3], [cout / 3, (2 * cout) / 3], [(2 * cout) / 3, cout]]
    : [[0, cout]];
  return {
    x: xin.data,
    m: xin.data.length / cin,
    cin,
    cout,
    w,
    bias,
    o: out.data,
    g: grad,
    groups,
  };
}

/** Search one linear site; returns column steps (in [Cin, Cout] layout order) and the input quantizer. */
async function searchLinear(
  ctx: QuantContext,
  site: Site,
  p: LinearProblem,
  o: Ptq4vitOptions,
): Promise<{ colSteps: Float32Array; act: ActQ | undefined; score: number }> {
  const { w: wb, a: ab } = ctx.bits;
  const factors = Array.from({ length: o.n }, (_, i) => o.alpha + (i * (o.beta - o.alpha)) / o.n);
  const wInit = p.groups.map(([a, b]) => {
    let m = 0;
    for (let i = 0; i < p.cin; i++) {
      for (let j = a; j < b; j++) m = Math.max(m, Math.abs(p.w[i * p.cout + j]));
    }
    return initStep(m, wb);
  });
  const wCur = [...wInit];
  const quantIn = site.role !== "patch_embed";
  const twin = quantIn && site.role === "fc2" && o.twinGelu;
  let act: ActQ | undefined = quantIn
    ? twin
      ? { kind: "twin-gelu", pos: initStep(maxOf(p.x), ab) }
      : { kind: "uniform", step: initStep(absMax(p.x), ab) }
    : undefined;
  const actInit = act ? actStep(act) : 0;
  const decomposes = o.metric !== "cosine";
  const wScorer = await CandidateScorer.create(ctx.runtime, {
    vary: "b",
    aDims: [p.m, p.cin],
    bDims: [p.cin, p.cout],
    oDims: [p.m, p.cout],
    metric: o.metric,
    perColumn: decomposes,
    bias: p.bias,
    quant: { kind: "uniform", bits: wb, columns: p.cout },
  });
  const xScorer = act
    ? await CandidateScorer.create(ctx.runtime, {
      vary: "a",
      aDims: [p.m, p.cin],
      bDims: [p.cin, p.cout],
      oDims: [p.m, p.cout],
      metric: o.metric,
      bias: p.bias,
      quant: candidateQuantizer(act, ab, o.variant),
    })
    : undefined;
  let last = NaN;
  try {
    for (let r = 0; r < o.rounds; r++) {
      const xq = act ? quantAct(p.x, act, ab, o.variant) : p.x;
      if (decomposes) {
        const scores = await wScorer.scoreQuantized(
          o.n,
          (k) => expandGroups(p.groups, wInit.map((s) => s * factors[k]), p.cout),
          p.w,
          xq,
          p.o,
          p.g,
        );
        p.groups.forEach(([a, b], gi) => {
          const tot = scores.map((s) => {
            let t = 0;
            for (let j = a; j < b; j++) t += s[j];
            return t;
          });
          wCur[gi] = Math.fround(wInit[gi] * factors[argmin(tot)]);
        });
      } else {
        for (let gi = 0; gi < p.groups.length; gi++) {
          const scores = await wScorer.scoreQuantized(
            o.n,
            (k) => {
              const steps = [...wCur];
              steps[gi] = wInit[gi] * factors[k];
              return expandGroups(p.groups, steps, p.cout);
            },
            p.w,
            xq,
            p.o,
            p.g,
          );
          wCur[gi] = Math.fround(wInit[gi] * factors[argmin(scores.map((s) => s[0]))]);
        }
      }
      if (!act || !xScorer) continue;
      const wq = quantW(p.w, p.cin, p.cout, expandGroups(p.groups, wCur, p.cout), wb);
      const cands: ActQ[] = factors.map((f) =>
        act!.kind === "twin-gelu" ? { kind: "twin-gelu", pos: Math.fround(actInit * f) } : {
          kind: "uniform",
          step: Math.fround(actInit * f),
        }
      );
      const scores = await xScorer.scoreQuantized(
        o.n,
        (k) => [actStep(cands[k])],
        p.x,
        wq,
        p.o,
        p.g,
      );
      const best = argmin(scores.map((s) => s[0]));
      act = cands[best];
      last = scores[best][0];
    }
  } finally {
    await wScorer.release();
    await xScorer?.release();
  }
  return { colSteps: expandGroups(p.groups, wCur, p.cout), act, score: last };
}

/** Search both operands of a matmul site. */
async function searchMatmul(
  ctx: QuantContext,
  site: Site,
  data: CalibData,
  o: Ptq4vitOptions,
): Promise<{ a: ActQ; b: ActQ }> {
  const ab = ctx.bits.a;
  const A = data.values.get(site.operands![0])!, B = data.values.get(site.operands![1])!;
  const O = data.values.get(site.output)!;
  const G = data.grads?.get(site.output);
  const factors = Array.from({ length: o.n }, (_, i) => o.alpha + (i * (o.beta - o.alpha)) / o.n);
  const twin = site.role === "av" && o.twinSoftmax;
  const aInit = initStep(absMax(A.data), ab), bInit = initStep(absMax(B.data), ab);
  let a: ActQ = twin ? { kind: "twin-softmax", split: 1 } : { kind: "uniform", step: aInit };
  let b: ActQ = { kind: "uniform", step: bInit };
  const aCands: ActQ[] = twin
    ? Array.from({ length: 20 }, (_, i) => ({ kind: "twin-softmax", split: 2 ** -i }))
    : factors.map((f) => ({ kind: "uniform", step: Math.fround(aInit * f) }));
  const bCands: ActQ[] = factors.map((f) => ({ kind: "uniform", step: Math.fround(bInit * f) }));
  const mk = async (vary: "a" | "b") =>
    await CandidateScorer.create(ctx.runtime, {
      vary,
      aDims: A.dims,
      bDims: B.dims,
      oDims: O.dims,
      metric: o.metric,
      quant: candidateQuantizer(vary === "a" ? a : b, ab, o.variant),
    });
  const sa = await mk("a"), sb = await mk("b");
  try {
    for (let r = 0; r < o.rounds; r++) {
      const bq = quantAct(B.data, b, ab, o.variant);
      const s1 = await sa.scoreQuantized(
        aCands.length,
        (k) => [actStep(aCands[k])],
        A.data,
        bq,
        O.data,
        G,
      );
      a = aCands[argmin(s1.map((s) => s[0]))];
      const aq = quantAct(A.data, a, ab, o.variant);
      const s2 = await sb.scoreQuantized(
        bCands.length,
        (k) => [actStep(bCands[k])],
        B.data,
        aq,
        O.data,
        G,
      );
      b = bCands[argmin(s2.map((s) => s[0]))];
    }
  } finally {
    await sa.release();
    await sb.release();
  }
  return { a, b };
}

async function quantizePtq4vit(ctx: QuantContext): Promise<QuantizedModel> {
  const o = ctx.options as unknown as Ptq4vitOptions;
  const { bits } = ctx;
  const sites = ctx.sites.filter((s) => s.kind === "linear" || s.kind === "matmul");
  const data = await calibData(ctx, sites, o);
  const weights: WeightPlan[] = [];
  const acts: ActPlan[] = [];
  const recorded: { site: Site; tensor: string; value: string; q: TensorQuant }[] = [];
  const rec = (s: Site, tensor: string, b: number, scale: number, quantizer: string) => {
    const value = tensor === "weight"
      ? s.weight!
      : tensor === "input"
      ? s.input!
      : s.operands![tensor === "a" ? 0 : 1];
    const cap = data.values.get(value);
    const elements = cap ? cap.data.length / ctx.calib.length : undefined;
    recorded.push({ site: s, tensor, value, q: { bits: b, scale, quantizer, elements } });
  };
  for (const site of sites) {
    ctx.log(`${site.id}: searching`);
    if (site.kind === "linear") {
      const p = linearProblem(ctx, site, data, o.patchPerChannel);
      const res = await searchLinear(ctx, site, p, o);
      // express column steps along the initializer's own output axis
      const perChannel = p.groups.length > 1;
      const q: UniformQuantizer = perChannel
        ? {
          bits: bits.w,
          signed: true,
          scale: res.colSteps,
          zeroPoint: new Float32Array(p.cout),
          axis: site.weightOutAxis,
        }
        : symmetric(bits.w, res.colSteps[0]);
      weights.push({ site, q });
      rec(
        site,
        "weight",
        bits.w,
        res.colSteps[0],
        perChannel ? `sym, ${p.groups.length} groups` : "per-tensor sym",
      );
      if (res.act) {
        acts.push({
          site,
          slot: 0,
          q: res.act.kind === "uniform" ? symmetric(bits.a, res.act.step) : undefined,
          emit: emitAct(res.act, bits.a, o.variant),
        });
        rec(site, "input", bits.a, actStep(res.act), actName(res.act));
      }
    } else {
      const res = await searchMatmul(ctx, site, data, o);
      for (const [slot, q] of [[0, res.a], [1, res.b]] as const) {
        acts.push({
          site,
          slot,
          q: q.kind === "uniform" ? symmetric(bits.a, q.step) : undefined,
          emit: emitAct(q, bits.a, o.variant),
        });
        rec(site, slot === 0 ? "a" : "b", bits.a, actStep(q), actName(q));
      }
    }
  }
  const { graph, weights: applied } = applyPlan(ctx.graph, weights, acts);
  const sqnr = new Map(applied.map((a) => [a.site.id, a.sqnrDb]));
  const recorder = new LayerRecorder(ctx);
  for (const r of recorded) {
    const sqnrDb = r.tensor === "weight" ? sqnr.get(r.site.id) : undefined;
    recorder.add(r.site, r.tensor, r.value, { ...r.q, sqnrDb });
  }
  const layers = await recorder.records();
  const notes = `metric ${o.metric}${
    o.metric === "hessian" ? ` (gradient ${o.gradient}, sub-batch ${o.gradBatch})` : ""
  }; grid ${o.alpha}..${o.beta} x ${o.n}, ${o.rounds} rounds; twin softmax ${
    o.twinSoftmax ? o.variant : "off"
  }, twin GELU ${o.twinGelu ? "on" : "off"}`;
  return { graph, layers, notes };
}

const APPROX =
  "parallel calibration as the reference code; default gradient is cross-entropy to the FP model's predictions (pseudo-label) because the reference's KL(FP||FP) gradient is analytically zero (option gradient: reference reproduces it); bias correction off (the reference never applies it)";

/** PTQ4ViT: twin uniform quantizers and Hessian-guided scaling-factor search. */
export const ptq4vit: QuantMethod = {
  name: "ptq4vit",
  paper: "Yuan et al., PTQ4ViT, ECCV 2022 (arXiv 2111.12293)",
  description:
    "twin uniform quantizers (post-softmax, post-GELU) and Hessian-guided per-tensor step search; qkv weight thirds and patch-embed channels get own steps",
  approximations: APPROX,
  defaults: { ...PTQ4VIT_DEFAULTS },
  checkOptions,
  quantize: quantizePtq4vit,
};

/** BasePTQ: PTQ4ViT's baseline (cosine metric, grid 0.5..1.2, one round, no twin quantizers). */
export const baseptq: QuantMethod = {
  name: "baseptq",
  paper: "Yuan et al., PTQ4ViT, ECCV 2022: the paper's BasePTQ baseline",
  description:
    "per-tensor symmetric steps searched by cosine similarity of layer outputs; no twin quantizers",
  approximations: "parallel calibration as the reference code",
  defaults: { ...BASEPTQ_DEFAULTS },
  checkOptions,
  quantize: quantizePtq4vit,
};
