/**
 * MPTQ-ViT (Tai and Wu, arXiv 2401.14895): SQ-b (SmoothQuant with a bias term),
 * OPT-m (searched ratio between the region steps of post-GELU values) and
 * Greedy MP (greedy layer-wise weight and activation bit-widths).
 *
 * No code of the paper is public and its full text was not available to us:
 * this is a reconstruction from the abstract and secondary summaries
 * (`methods.md` section 4). Every choice the sources leave open is a named
 * option marked "inferred" below, in the README and in every result row.
 *
 * What is quantized is PTQ4ViT's linear scope: weights and inputs of every
 * linear layer (the patch embedding's input, the image, stays FP) and both
 * operands of Q·Kᵀ and A·V; softmax, GELU, LayerNorm, biases and residuals stay
 * FP. (`scope: "full"`, the fully quantized scope of the paper's mixed-precision
 * results, is not supported yet.)
 *
 * Calibration is PTQ4ViT's parallel Hessian-guided search: every layer on FP
 * inputs of the FP model, candidates scored by the squared output error weighted
 * by the squared gradient of the task loss (cross-entropy to the FP model's
 * predictions), grid Δ0·(α + i(β-α)/n), alternating rounds.
 *
 * 1. **SQ-b** (`core/quant/smooth.ts`): for each linear layer fed by a
 *    LayerNorm (qkv, fc1, Swin reduction; the head's final LayerNorm reaches it
 *    through a token Gather or mean, which the fold check refuses, so the head
 *    is not smoothed), a per-channel shift z (centre
 *    of the calibration range) and SmoothQuant scale s = r^α / max|W_j|^(1-α);
 *    α is chosen from `sqbAlphas` (plus "shift only") by the Hessian-weighted
 *    output error of the layer quantized with quick steps; the shift and scale
 *    fold into the LayerNorm's γ and β (`core/quant/reparam.ts`) and the bias
 *    into the layer, so the FP graph computes the same function (checked on the
 *    calibration images). `sqbScope: "all"` also smooths the attention
 *    projection's input with an explicit per-channel Sub/Mul in front of its
 *    quantizer (not foldable: a runtime cost).
 * 2. **OPT-m**: the fc2 input (post-GELU) gets a two-region V-2SF quantizer
 *    (`core/quant/two_scaled.ts`, TSPTQ-ViT's: signed small region with step
 *    S for the negative tail and small values, unsigned large region with step
 *    S·2^m); m ∈ 0..`optmMaxM` and S on a grid are searched jointly by the
 *    Hessian-weighted output error of fc2.
 * 3. **Greedy MP** (a manifest bit entry with `mixed` candidates): units are the
 *    weight of each linear layer, the input of each linear layer, and the two
 *    operands of each attention matmul together. Every unit starts at the
 *    highest candidate; the unit whose next-lower candidate costs the smallest
 *    loss increase per saved size-weighted average bit is lowered, until the
 *    size-weighted average weight and activation bits reach the targets; then
 *    everything is recalibrated at the final assignment. Loss (`mpLoss:
 *    "hessian"`): the Hessian-weighted output error of the layer with only that
 *    unit quantized, which under PTQ4ViT's diagonal approximation adds up over
 *    layers. Caching: the error of every unit at every candidate is computed
 *    once, in one calibration pass per candidate bit-width, before the loop;
 *    because the loss is additive over units, lowering one unit does not change
 *    any other unit's cost, so each greedy step is a table lookup and no
 *    candidate is re-evaluated.
 *
 * @module
 */
import { type Captured, captureValues } from "../core/runtime/capture.ts";
import type { Site } from "../core/onnx/sites.ts";
import type { Graph } from "../core/onnx/graph.ts";
import { type ActPlan, applyPlan, type WeightPlan } from "../core/quant/apply.ts";
import {
  absMax,
  emitFakeQuant,
  fakeQuant,
  symmetric,
  type UniformQuantizer,
} from "../core/quant/uniform.ts";
import { emitTwinSoftmax, twinSoftmax, type TwinVariant } from "../core/quant/twin.ts";
import { emitV2sf, v2sf, type V2sfQuantizer } from "../core/quant/two_scaled.ts";
import { CandidateScorer } from "../core/quant/search.ts";
import { foldBlocker, foldLayerNorm } from "../core/quant/reparam.ts";
import {
  asReparam,
  channelRange,
  emitSmoothInput,
  foldSmoothWeights,
  privateLayerNormParams,
  type SmoothFactors,
  smoothFactors,
  smoothLinear,
  weightRowAbsMax,
} from "../core/quant/smooth.ts";
import { outputGradients } from "../core/autodiff/gradients.ts";
import { VitqError } from "../core/errors.ts";
import { LayerRecorder } from "./layers.ts";
import type { OptionsSchema, QuantContext, QuantizedModel, QuantMethod } from "./types.ts";

/** Options of MPTQ-ViT. "inferred": not given by the sources we could read. */
export interface MptqOptions {
  /** SQ-b on or off (the "without SQ-b" ablation). */
  sqb: boolean;
  /** Inferred: migration strengths searched (besides "shift only"). */
  sqbAlphas: number[];
  /** Inferred: `ln` = layers fed by a LayerNorm (folded); `all` = also the attention projection (explicit). */
  sqbScope: "ln" | "all";
  /** OPT-m on or off (off: uniform fc2 input, the "without OPT-m" ablation). */
  optm: boolean;
  /** Inferred: largest ratio exponent m searched (m = 0..optmMaxM). */
  optmMaxM: number;
  /** Inferred: base-step grid points per m. */
  optmN: number;
  /** Inferred: per-output-channel (`channel`) or per-tensor weight steps (qkv: one per third). */
  weightGranularity: "channel" | "tensor";
  /** Inferred: the post-softmax operand of A·V uses PTQ4ViT's twin quantizer (else uniform). */
  twinSoftmax: boolean;
  /** Inferred: semantics of that twin quantizer (see core/quant/twin.ts). */
  softmaxVariant: TwinVariant;
  /** Search metric: PTQ4ViT's Hessian-weighted output error, or plain output MSE. */
  metric: "hessian" | "mse";
  /** Gradient of the Hessian metric (see PTQ4ViT). */
  gradient: "pseudo-label" | "reference";
  gradBatch: number;
  /**
   * PTQ4ViT's step grid (α, β) with fewer points and rounds than its reference (100, 3):
   * inferred, for cost; PTQ4ViT's README finds 20 points enough and more than one round
   * worth < 0.05 points.
   */
  alpha: number;
  beta: number;
  n: number;
  rounds: number;
  /** Greedy MP loss: `hessian` (additive Hessian-weighted output error). */
  mpLoss: "hessian";
  /** Inferred: grid points of the per-candidate calibration that fills the sensitivity table (one round). */
  mpN: number;
  /** Quantization scope; only PTQ4ViT's linear scope is supported. */
  scope: "linear";
}

const DEFAULTS: MptqOptions = {
  sqb: true,
  sqbAlphas: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
  sqbScope: "ln",
  optm: true,
  optmMaxM: 6,
  optmN: 16,
  weightGranularity: "channel",
  twinSoftmax: true,
  softmaxVariant: "reference",
  metric: "hessian",
  gradient: "pseudo-label",
  gradBatch: 4,
  alpha: 0.01,
  beta: 1.2,
  n: 50,
  rounds: 2,
  mpLoss: "hessian",
  mpN: 16,
  scope: "linear",
};

const inferred = (d: string) => `inferred: ${d}`;

/** JSON Schema of each option (checked by the manifest loader); inferred choices say so. */
const MPTQ_SCHEMA: OptionsSchema<MptqOptions> = {
  sqb: { type: "boolean", description: "SQ-b on (off: the 'without SQ-b' ablation)" },
  sqbAlphas: {
    type: "array",
    minItems: 1,
    items: { type: "number", minimum: 0, maximum: 1 },
    description: inferred("SmoothQuant migration strengths searched besides 'shift only'"),
  },
  sqbScope: {
    enum: ["ln", "all"],
    description: inferred(
      "ln: layers fed by a LayerNorm (qkv, fc1, reduction; folded); all: also the attention projection (explicit Sub/Mul, a runtime cost)",
    ),
  },
  optm: {
    type: "boolean",
    description: "OPT-m on (off: uniform fc2 input, the 'without OPT-m' ablation)",
  },
  optmMaxM: {
    type: "integer",
    minimum: 0,
    maximum: 20,
    description: inferred("largest ratio exponent m searched (m = 0..optmMaxM)"),
  },
  optmN: { type: "integer", minimum: 1, description: inferred("base-step grid points per m") },
  weightGranularity: {
    enum: ["channel", "tensor"],
    description: inferred("per-output-channel weight steps, or per tensor (qkv: one per third)"),
  },
  twinSoftmax: {
    type: "boolean",
    description: inferred("PTQ4ViT's twin quantizer on the post-softmax operand of A·V"),
  },
  softmaxVariant: {
    enum: ["paper", "reference"],
    description: inferred("semantics of that twin quantizer (core/quant/twin.ts)"),
  },
  metric: { enum: ["hessian", "mse"], description: "layer-output metric every search minimizes" },
  gradient: {
    enum: ["pseudo-label", "reference"],
    description: "where the Hessian metric's dL/dO comes from (see PTQ4ViT)",
  },
  gradBatch: { type: "integer", minimum: 1, description: "images per gradient pass" },
  alpha: { type: "number", exclusiveMinimum: 0, description: "low end of the step grid" },
  beta: {
    type: "number",
    exclusiveMinimum: { $data: "1/alpha" },
    description: "high end of the step grid, above alpha",
  },
  n: {
    type: "integer",
    minimum: 1,
    description: inferred("step grid points (PTQ4ViT's reference: 100; fewer for cost)"),
  },
  rounds: {
    type: "integer",
    minimum: 1,
    description: inferred("alternating search rounds (PTQ4ViT's reference: 3)"),
  },
  mpLoss: {
    enum: ["hessian"],
    description:
      "Greedy MP loss: additive Hessian-weighted output error (KL to FP logits is not implemented)",
  },
  mpN: {
    type: "integer",
    minimum: 1,
    description: inferred("grid points of the one-round passes that fill the sensitivity table"),
  },
  scope: {
    enum: ["linear"],
    description: "quantization scope: PTQ4ViT's linear scope (the full scope is not supported yet)",
  },
};

// ---------------------------------------------------------------------------
// calibration data (FP values and output gradients), cached across cells

interface CalibData {
  values: Map<string, Captured>;
  grads: Map<string, Float32Array> | undefined;
  images: number;
}

const cache = new WeakMap<Graph, { key: string; data: CalibData }>();

async function calibData(ctx: QuantContext, sites: Site[], o: MptqOptions): Promise<CalibData> {
  const values = [
    ...new Set(sites.flatMap((s) => [s.input, ...(s.operands ?? []), s.output])),
  ].filter((v): v is string => !!v);
  const ids = (ctx.calib as { ids?: string[] }).ids ?? [];
  const key = JSON.stringify([ids, o.metric === "hessian" ? o.gradient : "none", o.gradBatch]);
  const hit = cache.get(ctx.graph);
  if (hit && hit.key === key) return hit.data;
  const captured = await captureValues(ctx.runtime, ctx.graph, values, ctx.calib, ctx.batchSize);
  const grads = o.metric === "hessian"
    ? await outputGradients(ctx.runtime, ctx.graph, sites.map((s) => s.output), ctx.calib, {
      mode: o.gradient,
      subBatch: o.gradBatch,
    })
    : undefined;
  const data = { values: captured, grads, images: ctx.calib.length };
  cache.set(ctx.graph, { key, data });
  return data;
}

// ---------------------------------------------------------------------------
// quantizers

/** An activation quantizer. */
type ActQ =
  | { kind: "uniform"; step: number }
  | { kind: "v2sf"; step: number; m: number }
  | { kind: "twin-softmax"; split: number };

function v2sfQ(bits: number, q: { step: number; m: number }): V2sfQuantizer {
  return { bits, step: q.step, m: q.m, kind: "signed" };
}

function quantAct(x: Float32Array, q: ActQ, bits: number, variant: TwinVariant): Float32Array {
  if (q.kind === "uniform") return fakeQuant(x, [x.length], symmetric(bits, q.step));
  if (q.kind === "v2sf") return v2sf(x, v2sfQ(bits, q));
  return twinSoftmax(x, { bits, split: q.split, variant });
}

function actPlan(site: Site, slot: number, q: ActQ, bits: number, variant: TwinVariant): ActPlan {
  if (q.kind === "uniform") return { site, slot, q: symmetric(bits, q.step) };
  if (q.kind === "v2sf") {
    return { site, slot, emit: (g, input, prefix) => emitV2sf(g, input, v2sfQ(bits, q), prefix) };
  }
  return {
    site,
    slot,
    emit: (g, input, prefix) =>
      emitTwinSoftmax(g, input, { bits, split: q.split, variant }, prefix),
  };
}

function actScale(q: ActQ): number {
  return q.kind === "twin-softmax" ? q.split : q.step;
}

function actName(q: ActQ): string {
  return q.kind === "uniform"
    ? "per-tensor sym"
    : q.kind === "v2sf"
    ? `V-2SF signed, m=${q.m} (OPT-m)`
    : "twin-softmax";
}

/** Reference initial step: bound / (2^(k-1) - 0.5). */
function initStep(bound: number, bits: number): number {
  const s = Math.fround(bound / (2 ** (bits - 1) - 0.5));
  return s > 0 ? s : 1e-8;
}

function argmin(xs: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] < xs[best]) best = i;
  return best;
}

function grid(alpha: number, beta: number, n: number): number[] {
  return Array.from({ length: n }, (_, i) => alpha + (i * (beta - alpha)) / n);
}

function transpose(x: Float32Array, r: number, c: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = x[i * c + j];
  return out;
}

function expandGroups(groups: [number, number][], steps: number[], cout: number): Float32Array {
  const out = new Float32Array(cout);
  groups.forEach(([a, b], gi) => out.fill(steps[gi], a, b));
  return out;
}

function quantW(w: Float32Array, cin: number, cout: number, steps: Float32Array, bits: number) {
  return fakeQuant(w, [cin, cout], {
    bits,
    signed: true,
    scale: steps,
    zeroPoint: new Float32Array(cout),
    axis: 1,
  });
}

// ---------------------------------------------------------------------------
// per-layer problems and searches

/** A linear layer as X [m, cin] · W [cin, cout] + b against FP output o (gradient g). */
interface LinearProblem {
  site: Site;
  x: Float32Array;
  m: number;
  cin: number;
  cout: number;
  w: Float32Array;
  bias?: Float32Array;
  o: Float32Array;
  g?: Float32Array;
}

function linearProblem(ctx: QuantContext, site: Site, data: CalibData): LinearProblem {
  const wt = ctx.graph.initializers.get(site.weight!)!;
  if (wt.dims.length !== 2) throw new VitqError(`MPTQ-ViT: ${site.id} weight is not 2-D`);
  const [r, c] = wt.dims;
  const transB = site.weightOutAxis === 0;
  const w = transB ? transpose(wt.float32(), r, c) : wt.float32();
  const cin = transB ? c : r, cout = transB ? r : c;
  const x = data.values.get(site.input!)!.data;
  return {
    site,
    x,
    m: x.length / cin,
    cin,
    cout,
    w,
    bias: site.bias ? ctx.graph.initializers.get(site.bias)?.float32() : undefined,
    o: data.values.get(site.output)!.data,
    g: data.grads?.get(site.output),
  };
}

/** Search settings of one calibration pass. */
interface Pass {
  n: number;
  rounds: number;
}

interface LinearResult {
  /** Weight steps per output column (in [cin, cout] column order). */
  colSteps: Float32Array;
  act: ActQ | undefined;
  /** Output error with only the weight quantized / only the input quantized. */
  errW: number;
  errA: number;
}

function weightGroups(p: LinearProblem, o: MptqOptions): [number, number][] {
  if (o.weightGranularity === "channel") {
    return Array.from({ length: p.cout }, (_, i) => [i, i + 1] as [number, number]);
  }
  const c = p.cout;
  return p.site.role === "qkv" ? [[0, c / 3], [c / 3, (2 * c) / 3], [(2 * c) / 3, c]] : [[0, c]];
}

const sum = (xs: ArrayLike<number>) => {
  let t = 0;
  for (let i = 0; i < xs.length; i++) t += xs[i];
  return t;
};

/**
 * Search a linear layer's weight steps and input quantizer (uniform, or OPT-m's
 * V-2SF for the fc2 input) in alternating rounds by the metric.
 */
async function searchLinear(
  ctx: QuantContext,
  p: LinearProblem,
  wb: number,
  ab: number,
  o: MptqOptions,
  pass: Pass,
): Promise<LinearResult> {
  const rt = ctx.runtime;
  const factors = grid(o.alpha, o.beta, pass.n);
  const groups = weightGroups(p, o);
  const wInit = groups.map(([a, b]) => {
    let m = 0;
    for (let i = 0; i < p.cin; i++) {
      for (let j = a; j < b; j++) m = Math.max(m, Math.abs(p.w[i * p.cout + j]));
    }
    return initStep(m, wb);
  });
  const wCur = [...wInit];
  const optm = o.optm && p.site.role === "fc2";
  const xMax = absMax(p.x);
  const aInit = initStep(xMax, ab);
  let act: ActQ = { kind: "uniform", step: aInit };
  const dims = { aDims: [p.m, p.cin], bDims: [p.cin, p.cout], oDims: [p.m, p.cout] };
  const wScorer = await CandidateScorer.create(rt, {
    vary: "b",
    ...dims,
    metric: o.metric,
    perColumn: true,
    bias: p.bias,
    quant: { kind: "uniform", bits: wb, columns: p.cout },
  });
  const xScorer = await CandidateScorer.create(rt, {
    vary: "a",
    ...dims,
    metric: o.metric,
    bias: p.bias,
    quant: optm ? undefined : { kind: "uniform", bits: ab },
  });
  // OPT-m: (m, S) pairs, S = S0(m)·f with S0(m) putting the large region's top at max x
  const mCands: { step: number; m: number }[] = [];
  if (optm) {
    const top = 2 ** (ab - 1) - 0.5;
    for (let m = 0; m <= o.optmMaxM; m++) {
      for (const f of grid(o.alpha, o.beta, o.optmN)) {
        const step = Math.fround((xMax / (top * 2 ** m)) * f);
        if (step > 0) mCands.push({ step, m });
      }
    }
  }
  const scoreAct = async (wFixed: Float32Array, cands: ActQ[]) =>
    optm
      ? await xScorer.score(
        cands.length,
        (k) => quantAct(p.x, cands[k], ab, "paper"),
        wFixed,
        p.o,
        p.g,
      )
      : await xScorer.scoreQuantized(
        cands.length,
        (k) => [actScale(cands[k])],
        p.x,
        wFixed,
        p.o,
        p.g,
      );
  try {
    for (let r = 0; r < pass.rounds; r++) {
      const xq = quantAct(p.x, act, ab, "paper");
      const scores = await wScorer.scoreQuantized(
        pass.n,
        (k) => expandGroups(groups, wInit.map((s) => s * factors[k]), p.cout),
        p.w,
        xq,
        p.o,
        p.g,
      );
      groups.forEach(([a, b], gi) => {
        const tot = scores.map((s) => {
          let t = 0;
          for (let j = a; j < b; j++) t += s[j];
          return t;
        });
        wCur[gi] = Math.fround(wInit[gi] * factors[argmin(tot)]);
      });
      const wq = quantW(p.w, p.cin, p.cout, expandGroups(groups, wCur, p.cout), wb);
      const cands: ActQ[] = optm
        ? mCands.map((c) => ({ kind: "v2sf", ...c }))
        : factors.map((f) => ({ kind: "uniform", step: Math.fround(aInit * f) }));
      const s = await scoreAct(wq, cands);
      act = cands[argmin(s.map((x) => x[0]))];
    }
    const colSteps = expandGroups(groups, wCur, p.cout);
    const errW = sum((await wScorer.scoreQuantized(1, () => colSteps, p.w, p.x, p.o, p.g))[0]);
    const errA = (await scoreAct(p.w, [act]))[0][0];
    return { colSteps, act, errW, errA };
  } finally {
    await wScorer.release();
    await xScorer.release();
  }
}

/** Patch embedding (convolution on the image): per-output-channel weight steps by weight MSE. */
function searchPatchWeight(
  w: Float32Array,
  dims: number[],
  bits: number,
  o: MptqOptions,
  n: number,
) {
  const cout = dims[0], per = w.length / cout;
  const steps = new Float32Array(cout);
  const { qmin, qmax } = { qmin: -(2 ** (bits - 1)), qmax: 2 ** (bits - 1) - 1 };
  for (let c = 0; c < cout; c++) {
    const row = w.subarray(c * per, (c + 1) * per);
    const init = initStep(absMax(row), bits);
    let best = Infinity;
    for (const f of grid(o.alpha, o.beta, n)) {
      const s = Math.fround(init * f);
      let e = 0;
      for (let i = 0; i < per; i++) {
        const q = Math.min(qmax, Math.max(qmin, Math.round(row[i] / s))) * s;
        e += (row[i] - q) ** 2;
      }
      if (e < best) {
        best = e;
        steps[c] = s;
      }
    }
  }
  return steps;
}

interface MatmulResult {
  a: ActQ;
  b: ActQ;
  /** Output error with both operands quantized. */
  err: number;
}

async function searchMatmul(
  ctx: QuantContext,
  site: Site,
  data: CalibData,
  bits: number,
  o: MptqOptions,
  pass: Pass,
): Promise<MatmulResult> {
  const A = data.values.get(site.operands![0])!, B = data.values.get(site.operands![1])!;
  const O = data.values.get(site.output)!;
  const G = data.grads?.get(site.output);
  const factors = grid(o.alpha, o.beta, pass.n);
  const twin = site.role === "av" && o.twinSoftmax;
  const aInit = initStep(absMax(A.data), bits), bInit = initStep(absMax(B.data), bits);
  const aCands: ActQ[] = twin
    ? Array.from({ length: 20 }, (_, i) => ({ kind: "twin-softmax", split: 2 ** -i }))
    : factors.map((f) => ({ kind: "uniform", step: Math.fround(aInit * f) }));
  const bCands: ActQ[] = factors.map((f) => ({ kind: "uniform", step: Math.fround(bInit * f) }));
  let a: ActQ = twin ? { kind: "twin-softmax", split: 1 } : { kind: "uniform", step: aInit };
  let b: ActQ = { kind: "uniform", step: bInit };
  const dims = { aDims: A.dims, bDims: B.dims, oDims: O.dims, metric: o.metric };
  const sa = await CandidateScorer.create(ctx.runtime, {
    vary: "a",
    ...dims,
    quant: twin
      ? { kind: "twin-softmax", bits, variant: o.softmaxVariant }
      : { kind: "uniform", bits },
  });
  const sb = await CandidateScorer.create(ctx.runtime, {
    vary: "b",
    ...dims,
    quant: { kind: "uniform", bits },
  });
  const v = o.softmaxVariant;
  try {
    let err = NaN;
    for (let r = 0; r < pass.rounds; r++) {
      const s1 = await sa.scoreQuantized(
        aCands.length,
        (k) => [actScale(aCands[k])],
        A.data,
        quantAct(B.data, b, bits, v),
        O.data,
        G,
      );
      a = aCands[argmin(s1.map((s) => s[0]))];
      const s2 = await sb.scoreQuantized(
        bCands.length,
        (k) => [actScale(bCands[k])],
        B.data,
        quantAct(A.data, a, bits, v),
        O.data,
        G,
      );
      const best = argmin(s2.map((s) => s[0]));
      b = bCands[best];
      err = s2[best][0];
    }
    return { a, b, err };
  } finally {
    await sa.release();
    await sb.release();
  }
}

// ---------------------------------------------------------------------------
// SQ-b

/** Linear layers fed by one LayerNorm (or, for `sqbScope: all`, a projection without one). */
export interface SmoothGroup {
  ln?: Site;
  members: Site[];
}

const LN_FED: Record<string, string[]> = {
  norm1: ["qkv", "q", "k", "v"],
  norm2: ["fc1"],
  merge: ["reduction"],
  final: ["head"],
};

/**
 * SQ-b groups of a graph: for every LayerNorm that feeds linear layers (norm1 ->
 * qkv, norm2 -> fc1, patch-merging norm -> reduction, final norm -> head) and
 * can be folded into them (`foldBlocker`), the LayerNorm and its linear layers;
 * with `scope: "all"` also every attention projection on its own (explicit SQ-b).
 */
export function smoothGroups(
  graph: Graph,
  sites: Site[],
  scope: "ln" | "all",
  log: (msg: string) => void = () => {},
): SmoothGroup[] {
  const out: SmoothGroup[] = [];
  const linears = sites.filter((s) => s.kind === "linear");
  for (const ln of sites.filter((s) => s.kind === "ln" && LN_FED[s.role])) {
    const members = linears.filter((s) =>
      LN_FED[ln.role].includes(s.role) && (ln.role === "final" || s.block === ln.block)
    );
    if (members.length === 0) continue;
    const why = foldBlocker(graph, ln, members);
    if (why) {
      log(`SQ-b: ${ln.id} not folded (${why})`);
      continue;
    }
    out.push({ ln, members });
  }
  if (scope === "all") {
    for (const s of linears.filter((x) => x.role === "proj")) out.push({ members: [s] });
  }
  return out;
}

/**
 * Apply SQ-b to a clone of `graph`: LayerNorm groups fold into γ, β and the
 * layers' weights and biases; explicit groups rewrite the layers' weights and
 * biases and are returned in `explicit` (their input needs {@link emitSmoothInput}).
 */
export function applySmooth(
  graph: Graph,
  groups: { group: SmoothGroup; f: SmoothFactors }[],
): { graph: Graph; explicit: Map<string, SmoothFactors> } {
  const g = graph.clone();
  const explicit = new Map<string, SmoothFactors>();
  for (const { group, f } of groups) {
    if (group.ln) {
      foldLayerNorm(g, privateLayerNormParams(g, group.ln), group.members, asReparam(f));
    } else {
      for (const s of group.members) {
        foldSmoothWeights(g, s, f);
        explicit.set(s.id, f);
      }
    }
  }
  g.prune(); // drops the shared constants the private copies replaced, where nothing else reads them
  return { graph: g, explicit };
}

/**
 * Choose a group's SQ-b factors: "shift only" or one of `sqbAlphas`, by the
 * summed metric over its members with quick quantizers (per-column weight
 * steps at their initial value, the input step best of 10 grid points).
 */
async function chooseSmooth(
  ctx: QuantContext,
  group: SmoothGroup,
  problems: Map<string, LinearProblem>,
  bitsOf: (s: Site) => { w: number; a: number },
  o: MptqOptions,
): Promise<SmoothFactors> {
  const ps = group.members.map((s) => problems.get(s.id)!);
  const cin = ps[0].cin;
  const { min, max } = channelRange(ps[0].x, cin);
  const wmax = new Float32Array(cin);
  for (const p of ps) {
    const r = weightRowAbsMax(p.w, p.cin, p.cout);
    for (let j = 0; j < cin; j++) wmax[j] = Math.max(wmax[j], r[j]);
  }
  const options: (number | null)[] = [null, ...o.sqbAlphas];
  const errs = new Float64Array(options.length);
  const factors = grid(0.3, 1.2, 10);
  for (const p of ps) {
    const { w: wb, a: ab } = bitsOf(p.site);
    let scorer: CandidateScorer | undefined;
    try {
      for (const [i, alpha] of options.entries()) {
        const f = smoothFactors(min, max, wmax, alpha);
        const s = smoothLinear(p.x, p.w, p.cin, p.cout, p.bias, f);
        scorer ??= await CandidateScorer.create(ctx.runtime, {
          vary: "a",
          aDims: [p.m, p.cin],
          bDims: [p.cin, p.cout],
          oDims: [p.m, p.cout],
          metric: o.metric,
          bias: s.bias,
          quant: { kind: "uniform", bits: ab },
        });
        const steps = new Float32Array(p.cout);
        for (let c = 0; c < p.cout; c++) {
          let m = 0;
          for (let j = 0; j < p.cin; j++) m = Math.max(m, Math.abs(s.w[j * p.cout + c]));
          steps[c] = initStep(m, wb);
        }
        const wq = quantW(s.w, p.cin, p.cout, steps, wb);
        const a0 = initStep(absMax(s.x), ab);
        const sc = await scorer.scoreQuantized(
          factors.length,
          (k) => [a0 * factors[k]],
          s.x,
          wq,
          p.o,
          p.g,
        );
        errs[i] += Math.min(...sc.map((x) => x[0]));
      }
    } finally {
      await scorer?.release();
    }
  }
  return smoothFactors(min, max, wmax, options[argmin(errs)]);
}

// ---------------------------------------------------------------------------
// one calibration pass at a bit assignment

/** Per-site bits: a linear's weight and input, a matmul's operands. */
interface Assignment {
  w: Map<string, number>;
  a: Map<string, number>;
}

interface SiteResult {
  site: Site;
  wb?: number;
  ab?: number;
  linear?: LinearResult;
  patchSteps?: Float32Array;
  matmul?: MatmulResult;
  smooth?: SmoothFactors;
}

async function calibrate(
  ctx: QuantContext,
  data: CalibData,
  o: MptqOptions,
  assign: Assignment,
  pass: Pass,
): Promise<{ results: SiteResult[]; groups: { group: SmoothGroup; f: SmoothFactors }[] }> {
  const linears = ctx.sites.filter((s) => s.kind === "linear");
  const problems = new Map<string, LinearProblem>();
  for (const s of linears) {
    if (s.role !== "patch_embed") problems.set(s.id, linearProblem(ctx, s, data));
  }
  const bitsOf = (s: Site) => ({ w: assign.w.get(s.id)!, a: assign.a.get(s.id)! });
  const groups: { group: SmoothGroup; f: SmoothFactors }[] = [];
  const smoothOf = new Map<string, SmoothFactors>();
  if (o.sqb) {
    for (const group of smoothGroups(ctx.graph, ctx.sites, o.sqbScope, ctx.log)) {
      const f = await chooseSmooth(ctx, group, problems, bitsOf, o);
      groups.push({ group, f });
      for (const s of group.members) {
        const p = problems.get(s.id)!;
        const t = smoothLinear(p.x, p.w, p.cin, p.cout, p.bias, f);
        problems.set(s.id, { ...p, x: t.x, w: t.w, bias: t.bias });
        smoothOf.set(s.id, f);
      }
    }
  }
  const results: SiteResult[] = [];
  for (const site of ctx.sites) {
    if (site.kind === "linear") {
      const wb = assign.w.get(site.id)!;
      if (site.role === "patch_embed") {
        const t = ctx.graph.initializers.get(site.weight!)!;
        results.push({
          site,
          wb,
          patchSteps: searchPatchWeight(t.float32(), t.dims, wb, o, pass.n),
        });
        continue;
      }
      const ab = assign.a.get(site.id)!;
      const linear = await searchLinear(ctx, problems.get(site.id)!, wb, ab, o, pass);
      results.push({ site, wb, ab, linear, smooth: smoothOf.get(site.id) });
    } else if (site.kind === "matmul") {
      const ab = assign.a.get(site.id)!;
      results.push({ site, ab, matmul: await searchMatmul(ctx, site, data, ab, o, pass) });
    }
  }
  return { results, groups };
}

// ---------------------------------------------------------------------------
// Greedy MP

/** One unit of the bit allocation. */
interface Unit {
  key: string;
  side: "w" | "a";
  site: Site;
  /** Elements (a weight's size; an activation's elements per image). */
  elements: number;
  /** Loss at each candidate (index into the candidate list). */
  err: number[];
}

/** Elements per image of a site's quantized activations (linear input, or both operands). */
function actElements(site: Site, data: CalibData): number {
  const vals = site.kind === "matmul" ? site.operands! : [site.input!];
  return vals.reduce((t, v) => t + data.values.get(v)!.data.length / data.images, 0);
}

/**
 * Greedy allocation: start every unit at the highest candidate, repeatedly lower
 * the unit with the smallest loss increase per saved size-weighted average bit
 * (on a side whose average is still above its target) until both averages are
 * at or below their targets. Each step is a lookup in the precomputed table
 * (`unit.err`): the additive loss makes every unit's cost independent of the others.
 */
export function greedyAllocate(
  units: { side: "w" | "a"; elements: number; err: number[] }[],
  cands: number[],
  target: { w: number; a: number },
): number[] {
  const level = units.map(() => cands.length - 1);
  const total = { w: 0, a: 0 };
  for (const u of units) total[u.side] += u.elements;
  const avg = (side: "w" | "a") =>
    units.reduce((t, u, i) => (u.side === side ? t + cands[level[i]] * u.elements : t), 0) /
    (total[side] || 1);
  const eps = 1e-9;
  for (;;) {
    const above = {
      w: total.w > 0 && avg("w") > target.w + eps,
      a: total.a > 0 && avg("a") > target.a + eps,
    };
    if (!above.w && !above.a) break;
    let best = -1, bestCost = Infinity;
    units.forEach((u, i) => {
      if (!above[u.side] || level[i] === 0) return;
      const saved = ((cands[level[i]] - cands[level[i] - 1]) * u.elements) / total[u.side];
      const cost = (u.err[level[i] - 1] - u.err[level[i]]) / saved;
      if (cost < bestCost) {
        bestCost = cost;
        best = i;
      }
    });
    if (best < 0) break;
    level[best]--;
  }
  return level.map((l) => cands[l]);
}

// ---------------------------------------------------------------------------

async function quantizeMptq(ctx: QuantContext): Promise<QuantizedModel> {
  const o = ctx.options as unknown as MptqOptions;
  const sites = ctx.sites.filter((s) => s.kind === "linear" || s.kind === "matmul");
  const data = await calibData(ctx, sites, o);
  const full: Pass = { n: o.n, rounds: o.rounds };
  const uniform = (w: number, a: number): Assignment => ({
    w: new Map(sites.filter((s) => s.kind === "linear").map((s) => [s.id, w])),
    a: new Map(sites.filter((s) => s.role !== "patch_embed").map((s) => [s.id, a])),
  });
  let assign = uniform(ctx.bits.w, ctx.bits.a);
  let mpNote = "";
  const cands = ctx.bits.mixed ? [...ctx.bits.mixed].sort((x, y) => x - y) : undefined;
  if (cands) {
    // sensitivity table: one calibration pass per candidate (cached for the whole greedy loop)
    const units = new Map<string, Unit>();
    for (const [ci, b] of cands.entries()) {
      ctx.log(`Greedy MP: sensitivity pass at ${b} bits`);
      const { results } = await calibrate(ctx, data, o, uniform(b, b), { n: o.mpN, rounds: 1 });
      for (const r of results) {
        const add = (key: string, side: "w" | "a", elements: number, err: number) => {
          let u = units.get(key);
          if (!u) units.set(key, u = { key, side, site: r.site, elements, err: [] });
          u.err[ci] = err;
        };
        if (r.linear) {
          const p = ctx.graph.initializers.get(r.site.weight!)!;
          add(`w:${r.site.id}`, "w", p.size, r.linear.errW);
          add(`a:${r.site.id}`, "a", actElements(r.site, data), r.linear.errA);
        } else if (r.matmul) add(`a:${r.site.id}`, "a", actElements(r.site, data), r.matmul.err);
        else if (r.patchSteps) {
          // the patch embedding's weight error is a weight-space error, not comparable with
          // output errors: it counts in the average and is lowered only after every other unit
          const p = ctx.graph.initializers.get(r.site.weight!)!;
          add(`w:${r.site.id}`, "w", p.size, (cands.length - 1 - ci) * 1e30);
        }
      }
    }
    const list = [...units.values()];
    const chosen = greedyAllocate(list, cands, ctx.bits);
    assign = uniform(cands[cands.length - 1], cands[cands.length - 1]);
    list.forEach((u, i) => (u.side === "w" ? assign.w : assign.a).set(u.site.id, chosen[i]));
    const hist = (side: "w" | "a") =>
      cands.map((b) => `${b}:${list.filter((u, i) => u.side === side && chosen[i] === b).length}`)
        .join(" ");
    mpNote = `; Greedy MP over {${
      cands.join(",")
    }} (loss ${o.mpLoss}, table of ${list.length} units x ${cands.length} candidates from ${o.mpN}-point one-round passes), units per bits W ${
      hist("w")
    }, A ${hist("a")}; patch-embed weight lowered last`;
  }
  // final calibration at the assignment
  const { results, groups } = await calibrate(ctx, data, o, assign, full);
  const { graph, explicit } = applySmooth(ctx.graph, groups);
  if (groups.length) await checkFold(ctx, graph);
  const weights: WeightPlan[] = [];
  const acts: ActPlan[] = [];
  const recorder = new LayerRecorder(ctx);
  const pending: {
    site: Site;
    tensor: string;
    value: string;
    bits: number;
    scale: number;
    quantizer: string;
    elements: number;
  }[] = [];
  for (const r of results) {
    const s = r.site;
    if (r.patchSteps || r.linear) {
      const steps = r.patchSteps ?? r.linear!.colSteps;
      const perChannel = steps.some((x) => x !== steps[0]);
      const q: UniformQuantizer = perChannel
        ? {
          bits: r.wb!,
          signed: true,
          scale: steps,
          zeroPoint: new Float32Array(steps.length),
          axis: s.weightOutAxis,
        }
        : symmetric(r.wb!, steps[0]);
      weights.push({ site: s, q });
      const sm = r.smooth
        ? `, SQ-b α=${r.smooth.alpha ?? "shift only"}${
          explicit.has(s.id) ? " explicit" : " folded"
        }`
        : "";
      pending.push({
        site: s,
        tensor: "weight",
        value: s.weight!,
        bits: r.wb!,
        scale: steps[0],
        quantizer: `${perChannel ? "per-channel sym" : "per-tensor sym"}${sm}`,
        elements: ctx.graph.initializers.get(s.weight!)!.size,
      });
    }
    if (r.linear?.act) {
      const plan = actPlan(s, 0, r.linear.act, r.ab!, o.softmaxVariant);
      const f = explicit.get(s.id);
      if (f) {
        const inner = plan;
        acts.push({
          site: s,
          slot: 0,
          emit: (g, input, prefix) => {
            const x = emitSmoothInput(g, input, f, prefix);
            return inner.emit ? inner.emit(g, x, prefix) : emitFakeQuant(g, x, inner.q!, prefix);
          },
        });
      } else acts.push(plan);
      pending.push({
        site: s,
        tensor: "input",
        value: s.input!,
        bits: r.ab!,
        scale: actScale(r.linear.act),
        quantizer: actName(r.linear.act) + (r.smooth ? " (SQ-b)" : ""),
        elements: data.values.get(s.input!)!.data.length / data.images,
      });
    }
    if (r.matmul) {
      for (const [slot, q] of [[0, r.matmul.a], [1, r.matmul.b]] as const) {
        acts.push(actPlan(s, slot, q, r.ab!, o.softmaxVariant));
        pending.push({
          site: s,
          tensor: slot === 0 ? "a" : "b",
          value: s.operands![slot],
          bits: r.ab!,
          scale: actScale(q),
          quantizer: actName(q),
          elements: data.values.get(s.operands![slot])!.data.length / data.images,
        });
      }
    }
  }
  const { graph: out, weights: applied } = applyPlan(graph, weights, acts, { inPlace: true });
  const sqnr = new Map(applied.map((a) => [a.site.id, a.sqnrDb]));
  for (const p of pending) {
    recorder.add(p.site, p.tensor, p.value, {
      bits: p.bits,
      scale: p.scale,
      quantizer: p.quantizer,
      elements: p.elements,
      sqnrDb: p.tensor === "weight" ? sqnr.get(p.site.id) : undefined,
    });
  }
  const layers = await recorder.records();
  const ms = results.filter((r) => r.linear?.act?.kind === "v2sf").map((r) =>
    (r.linear!.act as { m: number }).m
  );
  const alphas = groups.map((g) => g.f.alpha ?? "shift");
  const notes = `MPTQ-ViT reconstruction (inferred choices marked in approximations); SQ-b ${
    o.sqb ? `${o.sqbScope} (α per group: ${alphas.join(",")})` : "off"
  }; OPT-m ${
    o.optm ? `on (m per fc2: ${ms.join(",")})` : "off"
  }; weights ${o.weightGranularity}; metric ${o.metric}${
    o.metric === "hessian" ? ` (gradient ${o.gradient})` : ""
  }; grid ${o.alpha}..${o.beta} x ${o.n}, ${o.rounds} rounds${mpNote}`;
  return { graph: out, layers, notes };
}

/** The folded FP graph must compute the FP function: compare logits on up to 8 calibration images. */
async function checkFold(ctx: QuantContext, folded: Graph): Promise<void> {
  const n = Math.min(8, ctx.calib.length);
  const x = await ctx.calib.slice(0, n);
  const run = async (g: Graph) => {
    const s = await ctx.runtime.createSession(g, "SQ-b fold check");
    try {
      const out = await s.run({ [g.inputNames[0]]: { data: x, dims: [n, ...ctx.calib.shape] } });
      return out[g.outputNames[0]].data;
    } finally {
      await s.release();
    }
  };
  const a = await run(ctx.graph), b = await run(folded);
  let d = 0, m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(a[i]));
  }
  if (!(d <= 1e-4 * Math.max(1, m))) {
    throw new VitqError(`MPTQ-ViT: SQ-b folding changed the FP logits by ${d} (max |logit| ${m})`);
  }
}

const APPROX =
  "reconstruction: no code or full text of the paper was available; SQ-b (per-channel shift to the range centre and SmoothQuant scale, α searched by output error, folded into LayerNorm γ/β and the layer's bias), OPT-m (TSPTQ-ViT V-2SF two-region quantizer on the fc2 input with (step, 2^m) searched jointly by the Hessian-weighted fc2 output error) and Greedy MP (additive Hessian-weighted output-error loss per unit, smallest loss increase per saved average bit first, recalibration at the final assignment) follow the abstract; inferred options: n and rounds (50 points, 2 rounds: fewer than PTQ4ViT's 100 and 3, for cost), sqbAlphas, sqbScope, optmMaxM, optmN, weightGranularity (per-channel weights), twinSoftmax/softmaxVariant (PTQ4ViT's softmax quantizer), mpN, MP units (weight and input of each linear, both operands of each attention matmul together; patch-embed weight searched by weight MSE and lowered only after every other unit); PTQ4ViT's parallel Hessian-guided search with pseudo-label gradients; linear scope only (the paper's mixed-precision results are fully quantized); KL-to-logits MP loss not implemented";

/** MPTQ-ViT: SQ-b, OPT-m and Greedy MP on PTQ4ViT's Hessian-guided search (reconstruction). */
export const mptq: QuantMethod = {
  name: "mptq",
  paper: "Tai, Wu, MPTQ-ViT, arXiv 2401.14895 (reconstruction: no public code)",
  description:
    "SmoothQuant with a bias term folded into LayerNorms, searched power-of-two ratio of the post-GELU two-region quantizer, greedy mixed precision; PTQ4ViT's Hessian-guided search",
  approximations: APPROX,
  mixedPrecision: true,
  defaults: { ...DEFAULTS },
  optionsSchema: MPTQ_SCHEMA,
  quantize: quantizeMptq,
};
