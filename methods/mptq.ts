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
 * What is quantized (`scope: "linear"`, the default) is PTQ4ViT's linear scope:
 * weights and inputs of every linear layer (the patch embedding's input, the
 * image, stays FP) and both operands of Q·Kᵀ and A·V; softmax, GELU, LayerNorm,
 * biases and residuals stay FP. `scope: "full"` (fully quantized, the setting of
 * the paper's mixed-precision results; `core/quant/scope.ts`) also quantizes every
 * LayerNorm input (the residual stream, for all its readers by default:
 * `lnConsumers`), with TSPTQ-ViT's O-2SF or a per-tensor step (`lnQuantizer`,
 * inferred) searched by the LayerNorm output error (`core/quant/ln_input.ts`, the
 * search TSPTQ-ViT uses); the softmax and GELU outputs are the A·V and fc2 inputs
 * the linear scope already quantizes. LayerNorm inputs join the Greedy MP units
 * (inferred).
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
 *    everything is recalibrated at the final assignment. Loss (`mpLoss`):
 *    `hessian` (default), the Hessian-weighted output error of the layer with
 *    only that unit quantized, which under PTQ4ViT's diagonal approximation adds
 *    up over layers; or `kl`, the KL divergence from the FP logits to the
 *    quantized model's on the first `mpImages` calibration images with the unit
 *    lowered alone and every other unit at the highest candidate (one session per
 *    lower candidate evaluates all units: every quantized tensor is emitted at
 *    both bit-widths behind a `Where` on a per-unit selector input), the
 *    increases summed over units as if additive (inferred). Caching: the table of
 *    every unit at every candidate is computed once, before the loop (one
 *    calibration pass per candidate); with an additive loss, lowering one unit
 *    does not change any other unit's cost, so each greedy step is a table lookup
 *    and no candidate is re-evaluated.
 *
 * The deploy graph (`deployable`) lowers the uniform quantizers to
 * QuantizeLinear/DequantizeLinear and the twin softmax to integer products per
 * part; V-2SF, O-2SF and explicit SQ-b stay float fake-quant in it.
 *
 * @module
 */
import { type Captured, captureValues } from "../core/runtime/capture.ts";
import type { Site } from "../core/onnx/sites.ts";
import { type Graph, Tensor } from "../core/onnx/graph.ts";
import type { TensorData } from "../core/runtime/runtime.ts";
import { type ActPlan, applyPlan, siteWeight, type WeightPlan } from "../core/quant/apply.ts";
import { QDQ_KIND } from "../core/quant/deploy.ts";
import {
  activationTargets,
  type ActTarget,
  type LnConsumers,
  type Scope,
} from "../core/quant/scope.ts";
import {
  constOf,
  lnInputName,
  lnInputPlan,
  type LnInputQuant,
  lnInputStep,
  searchLnInput,
} from "../core/quant/ln_input.ts";
import type { FlagRule } from "../core/quant/two_scaled.ts";
import {
  absMax,
  emitFakeQuant,
  fakeQuant,
  symmetric,
  type UniformQuantizer,
} from "../core/quant/uniform.ts";
import {
  emitTwinSoftmax,
  twinSoftmax,
  twinSoftmaxParts,
  type TwinVariant,
} from "../core/quant/twin.ts";
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
import type { Bits, OptionsSchema, QuantContext, QuantizedModel, QuantMethod } from "./types.ts";

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
  /**
   * Greedy MP loss: `hessian` (the Hessian-weighted output error of the unit's layer) or
   * `kl` (KL divergence from the FP logits to the quantized model's on `mpImages`
   * calibration images, each unit lowered alone; summed over units: inferred additivity).
   */
  mpLoss: "hessian" | "kl";
  /** Inferred: grid points of the per-candidate calibration that fills the sensitivity table (one round). */
  mpN: number;
  /** Inferred: calibration images (the first ones) on which the KL table is measured. */
  mpImages: number;
  /**
   * `linear` (PTQ4ViT's scope) or `full` (fully quantized: also every LayerNorm input;
   * softmax and GELU outputs are the A·V and fc2 inputs the linear scope already quantizes).
   */
  scope: Scope;
  /** Inferred (full scope): LayerNorm-input quantizer, TSPTQ-ViT's O-2SF or a per-tensor step. */
  lnQuantizer: "o2sf" | "uniform";
  /** Inferred (full scope, O-2SF): largest ratio exponent m searched (1..lnMMax). */
  lnMMax: number;
  /** Inferred (full scope, O-2SF): how a channel is flagged for the large step. */
  lnFlagRule: FlagRule;
  /** Inferred (full scope): readers of a LayerNorm input that see it quantized. */
  lnConsumers: LnConsumers;
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
  mpImages: 32,
  scope: "linear",
  lnQuantizer: "o2sf",
  lnMMax: 10,
  lnFlagRule: "threshold",
  lnConsumers: "all",
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
    enum: ["hessian", "kl"],
    description:
      "Greedy MP loss: hessian (Hessian-weighted output error of the unit's layer, additive under PTQ4ViT's diagonal approximation) or kl (KL divergence from the FP logits on mpImages calibration images with the unit lowered alone, the others at the highest candidate; inferred: summed over units as if additive)",
  },
  mpN: {
    type: "integer",
    minimum: 1,
    description: inferred("grid points of the one-round passes that fill the sensitivity table"),
  },
  mpImages: {
    type: "integer",
    minimum: 1,
    description: inferred("calibration images (the first ones) on which the KL table is measured"),
  },
  scope: {
    enum: ["linear", "full"],
    description:
      "linear: PTQ4ViT's scope; full: fully quantized, also every LayerNorm input (the softmax and GELU outputs are the A·V and fc2 inputs); LayerNorm inputs join the mixed-precision units (inferred)",
  },
  lnQuantizer: {
    enum: ["o2sf", "uniform"],
    description: inferred(
      "full scope: LayerNorm-input quantizer, TSPTQ-ViT's O-2SF (per-channel flag for S*2^m) or a per-tensor step, searched by the LayerNorm output error",
    ),
  },
  lnMMax: {
    type: "integer",
    minimum: 1,
    maximum: 20,
    description: inferred("full scope, O-2SF: largest ratio exponent m searched (TSPTQ's 10)"),
  },
  lnFlagRule: {
    enum: ["threshold", "error"],
    description: inferred(
      "full scope, O-2SF: a channel is flagged when it would clip at S (threshold) or when S*2^m gives the smaller error (error)",
    ),
  },
  lnConsumers: {
    enum: ["all", "ln"],
    description: inferred(
      "full scope: readers of a LayerNorm input that see it quantized: all (the residual stream too, as FQ-ViT) or ln (the LayerNorm only)",
    ),
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
  const key = JSON.stringify([
    ids,
    o.metric === "hessian" ? o.gradient : "none",
    o.gradBatch,
    sites.map((s) => s.id),
  ]);
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
  const tq = { bits, split: q.split, variant };
  return {
    site,
    slot,
    emit: (g, input, prefix) => emitTwinSoftmax(g, input, tq, prefix),
    // integer products per part in the deploy graph
    parts: twinSoftmaxParts(tq),
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
  bitsOf: (s: Site) => Bits,
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
  /** Full scope: a LayerNorm input's target and quantizer (`score`: its LayerNorm-output error). */
  ln?: { target: ActTarget; q: LnInputQuant };
}

/** SQ-b groups with their chosen factors. */
type Groups = { group: SmoothGroup; f: SmoothFactors }[];

/**
 * One calibration pass at a bit assignment: SQ-b factors (chosen, or `fixed`),
 * then every linear layer, attention matmul and (full scope) LayerNorm input
 * searched on FP inputs.
 */
async function calibrate(
  ctx: QuantContext,
  data: CalibData,
  o: MptqOptions,
  assign: Assignment,
  pass: Pass,
  lnTargets: ActTarget[],
  fixed?: Groups,
): Promise<{ results: SiteResult[]; groups: Groups }> {
  const linears = ctx.sites.filter((s) => s.kind === "linear");
  const problems = new Map<string, LinearProblem>();
  for (const s of linears) {
    if (s.role !== "patch_embed") problems.set(s.id, linearProblem(ctx, s, data));
  }
  const bitsOf = (s: Site) => ({ w: assign.w.get(s.id)!, a: assign.a.get(s.id)! });
  const groups: Groups = [];
  const smoothOf = new Map<string, SmoothFactors>();
  if (o.sqb) {
    const chosen: { group: SmoothGroup; f?: SmoothFactors }[] = fixed ??
      smoothGroups(ctx.graph, ctx.sites, o.sqbScope, ctx.log).map((group) => ({ group }));
    for (const { group, f: given } of chosen) {
      const f = given ?? await chooseSmooth(ctx, group, problems, bitsOf, o);
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
  // full scope: LayerNorm inputs, scored on the FP LayerNorm's output; the Hessian-weighted
  // error does not change under SQ-b's fold into γ, β (an affine map per channel whose
  // inverse scales dL/dy), so the unfolded LayerNorm is used
  for (const target of lnTargets) {
    const site = target.site, ab = assign.a.get(site.id)!;
    const x = data.values.get(target.value)!;
    const c = x.dims[x.dims.length - 1];
    const q = await searchLnInput(ctx.runtime, {
      x,
      y: data.values.get(site.output)!.data,
      grad: data.grads?.get(site.output),
      gamma: constOf(ctx.graph, site.gamma, c, 1),
      beta: constOf(ctx.graph, site.beta, c, 0),
      epsilon: site.epsilon ?? 1e-5,
    }, {
      bits: ab,
      metric: o.metric,
      factors: grid(o.alpha, o.beta, pass.n),
      o2sf: o.lnQuantizer === "o2sf",
      mMax: o.lnMMax,
      rounds: pass.rounds,
      flagRule: o.lnFlagRule,
    });
    results.push({ site, ab, ln: { target, q } });
  }
  return { results, groups };
}

// ---------------------------------------------------------------------------
// Greedy MP

/** One unit of the bit allocation. */
export interface Unit {
  key: string;
  side: "w" | "a";
  site: Site;
  /** Elements (a weight's size; an activation's elements per image). */
  elements: number;
  /** Loss at each candidate (index into the candidate list). */
  err: number[];
}

/**
 * Greedy allocation: start every unit at the highest candidate, repeatedly lower
 * the unit with the smallest loss increase per saved size-weighted average bit
 * (on a side whose average is still above its target) until both averages are
 * at or below their targets. Each step is a lookup in the precomputed table
 * (`unit.err`): with a loss that adds up over units (the Hessian metric under
 * PTQ4ViT's diagonal approximation; for KL an inferred assumption), every unit's
 * cost is independent of the others.
 */
export function greedyAllocate(
  units: { side: "w" | "a"; elements: number; err: number[] }[],
  cands: number[],
  target: Bits,
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
// plans

/** A layer record waiting for the graph (weights' SQNR). */
export interface PendingRecord {
  unit: string;
  site: Site;
  tensor: string;
  value: string;
  bits: number;
  scale: number;
  quantizer: string;
  elements: number;
}

/** The quantizer plans of one calibration pass, each tagged with its Greedy MP unit. */
export interface Plans {
  weights: { unit: string; plan: WeightPlan }[];
  acts: { unit: string; plan: ActPlan }[];
  records: PendingRecord[];
}

const wUnit = (s: Site) => `w:${s.id}`;
const aUnit = (s: Site) => `a:${s.id}`;

/**
 * The plans and records of a calibration pass's results on the SQ-b graph
 * (`explicit`: the layers whose input needs an explicit smoothing in front of
 * its quantizer). Units: each linear's weight, each linear's input, both
 * operands of each attention matmul together, each LayerNorm input (full scope).
 */
function plansOf(
  ctx: QuantContext,
  results: SiteResult[],
  explicit: Map<string, SmoothFactors>,
  data: CalibData,
  o: MptqOptions,
): Plans {
  const out: Plans = { weights: [], acts: [], records: [] };
  const perImage = (v: string) => data.values.get(v)!.data.length / data.images;
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
      out.weights.push({ unit: wUnit(s), plan: { site: s, q } });
      const sm = r.smooth
        ? `, SQ-b α=${r.smooth.alpha ?? "shift only"}${
          explicit.has(s.id) ? " explicit" : " folded"
        }`
        : "";
      out.records.push({
        unit: wUnit(s),
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
      const inner = plan;
      out.acts.push({
        unit: aUnit(s),
        plan: f
          ? {
            site: s,
            slot: 0,
            emit: (g, input, prefix) => {
              const x = emitSmoothInput(g, input, f, prefix);
              return inner.emit ? inner.emit(g, x, prefix) : emitFakeQuant(g, x, inner.q!, prefix);
            },
          }
          : plan,
      });
      out.records.push({
        unit: aUnit(s),
        site: s,
        tensor: "input",
        value: s.input!,
        bits: r.ab!,
        scale: actScale(r.linear.act),
        quantizer: actName(r.linear.act) + (r.smooth ? " (SQ-b)" : ""),
        elements: perImage(s.input!),
      });
    }
    if (r.matmul) {
      for (const [slot, q] of [[0, r.matmul.a], [1, r.matmul.b]] as const) {
        out.acts.push({ unit: aUnit(s), plan: actPlan(s, slot, q, r.ab!, o.softmaxVariant) });
        out.records.push({
          unit: aUnit(s),
          site: s,
          tensor: slot === 0 ? "a" : "b",
          value: s.operands![slot],
          bits: r.ab!,
          scale: actScale(q),
          quantizer: actName(q),
          elements: perImage(s.operands![slot]),
        });
      }
    }
    if (r.ln) {
      const t = r.ln.target, x = data.values.get(t.value)!;
      out.acts.push({ unit: aUnit(s), plan: lnInputPlan(t, r.ln.q, x.dims.length) });
      out.records.push({
        unit: aUnit(s),
        site: s,
        tensor: t.tensor,
        value: t.value,
        bits: r.ab!,
        scale: lnInputStep(r.ln.q),
        quantizer: lnInputName(r.ln.q),
        elements: perImage(t.value),
      });
    }
  }
  return out;
}

/** The Greedy MP units of a pass's plans (elements summed over a unit's records), losses unset. */
function unitsOf(p: Plans): Unit[] {
  const units = new Map<string, Unit>();
  for (const r of p.records) {
    const u = units.get(r.unit);
    if (u) u.elements += r.elements;
    else {
      const side = r.tensor === "weight" ? "w" : "a";
      units.set(r.unit, { key: r.unit, side, site: r.site, elements: r.elements, err: [] });
    }
  }
  return [...units.values()];
}

// ---------------------------------------------------------------------------
// sensitivity tables

/** Builds the uniform assignment of a bit pair. */
type Uniform = (w: number, a: number) => Assignment;

/**
 * Hessian table: one calibration pass per candidate; a unit's loss is the
 * Hessian-weighted output error of its layer (LayerNorm inputs: of the
 * LayerNorm) with only that unit quantized. The patch embedding's weight error
 * is a weight-space error, not comparable with output errors: it counts in the
 * average and is lowered only after every other unit.
 */
async function hessianTable(
  ctx: QuantContext,
  data: CalibData,
  o: MptqOptions,
  cands: number[],
  lnTargets: ActTarget[],
  uniform: Uniform,
): Promise<Unit[]> {
  let units: Map<string, Unit> | undefined;
  for (const [ci, b] of cands.entries()) {
    ctx.log(`Greedy MP: sensitivity pass at ${b} bits`);
    const pass = { n: o.mpN, rounds: 1 };
    const { results } = await calibrate(ctx, data, o, uniform(b, b), pass, lnTargets);
    units ??= new Map(unitsOf(plansOf(ctx, results, new Map(), data, o)).map((u) => [u.key, u]));
    for (const r of results) {
      const s = r.site;
      if (r.linear) {
        units.get(wUnit(s))!.err[ci] = r.linear.errW;
        units.get(aUnit(s))!.err[ci] = r.linear.errA;
      } else if (r.matmul) units.get(aUnit(s))!.err[ci] = r.matmul.err;
      else if (r.ln) units.get(aUnit(s))!.err[ci] = r.ln.q.score;
      else if (r.patchSteps) units.get(wUnit(s))!.err[ci] = (cands.length - 1 - ci) * 1e30;
    }
  }
  return [...units!.values()];
}

/** Graph input of the KL graph: one selector per unit (1: the unit at the lower candidate). */
const SELECT = "mptq_mp_select";

/**
 * The SQ-b graph with every unit quantized twice, at the highest candidate
 * (`hi`) and at a lower one (`lo`), and a `Where` per quantized tensor that
 * picks the lower one where the unit's selector in input {@link SELECT} is 1:
 * one session evaluates every unit lowered alone.
 */
export function switchGraph(base: Graph, hi: Plans, lo: Plans, units: string[]): Graph {
  const g = base.clone();
  g.addInput(SELECT, [units.length]);
  const half = g.constFloat("mp_half", 0.5);
  const conds = new Map<string, string>();
  const cond = (unit: string) => {
    let c = conds.get(unit);
    if (!c) {
      const i = units.indexOf(unit);
      if (i < 0) throw new VitqError(`MPTQ-ViT: Greedy MP unit ${unit} has no selector`);
      const idx = g.setInitializer(Tensor.fromInt64(g.uniqueName("mp_idx"), [1], [i]));
      c = g.addNode("Greater", [g.addNode("Gather", [SELECT, idx]), half]);
      conds.set(unit, c);
    }
    return c;
  };
  const pair = <T extends { unit: string }>(a: T[], b: T[]) => {
    if (a.length !== b.length || a.some((x, i) => x.unit !== b[i].unit)) {
      throw new VitqError("MPTQ-ViT: Greedy MP passes gave different plans");
    }
    return a.map((x, i) => [x, b[i]] as const);
  };
  const nodes = new Map(g.nodes.map((n) => [n.name, n]));
  for (const [h, l] of pair(hi.weights, lo.weights)) {
    const site = h.plan.site;
    const { data, dims } = siteWeight(g, site);
    const version = (q: UniformQuantizer, tag: string) =>
      g.setInitializer(
        Tensor.fromFloat32(g.uniqueName(`${site.weight}_${tag}`), dims, fakeQuant(data, dims, q)),
      );
    const hq = version(h.plan.q, "hi"), lq = version(l.plan.q, "lo");
    nodes.get(site.node)!.inputs[1] = g.addNode("Where", [cond(h.unit), lq, hq]);
  }
  const emitOf = (p: ActPlan) =>
    p.emit ??
      ((gg: Graph, input: string, prefix: string) =>
        emitFakeQuant(gg, input, p.q!, prefix, p.rank));
  const acts = pair(hi.acts, lo.acts).map(([h, l]): ActPlan => {
    const { q: _q, emit: _e, parts: _p, ...where } = h.plan;
    return {
      ...where,
      emit: (gg, input, prefix) =>
        gg.addNode("Where", [
          cond(h.unit),
          emitOf(l.plan)(gg, input, `${prefix}_lo`),
          emitOf(h.plan)(gg, input, prefix),
        ]),
    };
  });
  applyPlan(g, [], acts, { inPlace: true });
  g.prune(); // the FP weights the Where nodes replaced
  return g;
}

/** Row-wise log-softmax of logits [rows, classes]. */
function logSoftmax(x: Float32Array, rows: number): Float64Array {
  const c = x.length / rows, out = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let j = 0; j < c; j++) m = Math.max(m, x[r * c + j]);
    let z = 0;
    for (let j = 0; j < c; j++) z += Math.exp(x[r * c + j] - m);
    const lse = m + Math.log(z);
    for (let j = 0; j < c; j++) out[r * c + j] = x[r * c + j] - lse;
  }
  return out;
}

/** Mean over rows of KL(P || Q) from log-probabilities. */
function klDivergence(logP: Float64Array, logQ: Float64Array, rows: number): number {
  let t = 0;
  for (let i = 0; i < logP.length; i++) t += Math.exp(logP[i]) * (logP[i] - logQ[i]);
  return t / rows;
}

/**
 * KL table: the calibration pass at the highest candidate fixes the SQ-b
 * factors (inferred: every candidate's pass reuses them, so a unit's versions
 * differ only in its own quantizer); then per lower candidate one pass and one
 * session of {@link switchGraph}, in which each unit is lowered alone (the
 * others at the highest candidate) and the KL divergence from the FP logits to
 * the quantized logits is measured on the first `mpImages` calibration images.
 * Entry [highest] is the KL of the all-highest model, the same for every unit.
 * Greedy MP then treats the increases as additive over units (inferred).
 */
async function klTable(
  ctx: QuantContext,
  data: CalibData,
  o: MptqOptions,
  cands: number[],
  lnTargets: ActTarget[],
  uniform: Uniform,
): Promise<{ units: Unit[]; images: number }> {
  const pass = { n: o.mpN, rounds: 1 };
  const top = cands[cands.length - 1];
  ctx.log(`Greedy MP (KL): sensitivity pass at ${top} bits`);
  const hi = await calibrate(ctx, data, o, uniform(top, top), pass, lnTargets);
  const { graph: base, explicit } = applySmooth(ctx.graph, hi.groups);
  const hiPlans = plansOf(ctx, hi.results, explicit, data, o);
  const units = unitsOf(hiPlans);
  const keys = units.map((u) => u.key);
  const n = Math.min(o.mpImages, ctx.calib.length);
  const x = await ctx.calib.slice(0, n);
  const run = async (g: Graph) => {
    const s = await ctx.runtime.createSession(g, "Greedy MP KL graph");
    const logits = async (select?: Float32Array) => {
      const parts: Float32Array[] = [];
      for (let i = 0; i < n; i += ctx.batchSize) {
        const b = Math.min(ctx.batchSize, n - i), per = x.length / n;
        const feeds: Record<string, TensorData> = {
          [g.inputNames[0]]: {
            data: x.subarray(i * per, (i + b) * per),
            dims: [b, ...ctx.calib.shape],
          },
        };
        if (select) feeds[SELECT] = { data: select, dims: [select.length] };
        parts.push((await s.run(feeds))[g.outputNames[0]].data);
      }
      const all = new Float32Array(parts.reduce((t, p) => t + p.length, 0));
      let off = 0;
      for (const p of parts) {
        all.set(p, off);
        off += p.length;
      }
      return logSoftmax(all, n);
    };
    return { s, logits };
  };
  const fp = await run(ctx.graph);
  let fpLogP: Float64Array;
  try {
    fpLogP = await fp.logits();
  } finally {
    await fp.s.release();
  }
  let baseKl = NaN;
  for (let ci = 0; ci < cands.length - 1; ci++) {
    ctx.log(`Greedy MP (KL): pass at ${cands[ci]} bits and ${units.length} lowered models`);
    const lo = await calibrate(
      ctx,
      data,
      o,
      uniform(cands[ci], cands[ci]),
      pass,
      lnTargets,
      hi.groups,
    );
    const loPlans = plansOf(ctx, lo.results, explicit, data, o);
    const q = await run(switchGraph(base, hiPlans, loPlans, keys));
    try {
      const sel = new Float32Array(units.length);
      if (ci === 0) baseKl = klDivergence(fpLogP, await q.logits(sel), n);
      for (const [i, u] of units.entries()) {
        sel.fill(0);
        sel[i] = 1;
        u.err[ci] = klDivergence(fpLogP, await q.logits(sel), n);
      }
    } finally {
      await q.s.release();
    }
  }
  for (const u of units) u.err[cands.length - 1] = baseKl;
  return { units, images: n };
}

// ---------------------------------------------------------------------------

/**
 * The LayerNorm-input targets of the full scope (none for the linear scope).
 * The softmax and GELU outputs must be the A·V and fc2 inputs themselves (the
 * linear scope's slots), as in every exporter vitq ships with.
 */
function lnTargetsOf(ctx: QuantContext, o: MptqOptions): ActTarget[] {
  if (o.scope === "linear") return [];
  const all = activationTargets(ctx.graph, ctx.sites, "full", { lnConsumers: o.lnConsumers });
  const odd = all.find((t) => t.role !== "ln_in" && t.slot === undefined);
  const slots = all.filter((t) => t.slot !== undefined).length;
  if (odd || slots !== activationTargets(ctx.graph, ctx.sites, "linear").length) {
    throw new VitqError(
      `MPTQ-ViT: scope full: the ${odd?.role ?? "softmax or GELU"} output${
        odd ? ` of ${odd.site.id}` : ""
      } reaches its A·V or fc2 input through other nodes; only LayerNorm inputs are added`,
    );
  }
  return all.filter((t) => t.role === "ln_in");
}

/** What every pass of a cell shares: options, targets, FP data, uniform assignments. */
interface Setup {
  o: MptqOptions;
  lnTargets: ActTarget[];
  data: CalibData;
  uniform: Uniform;
}

async function setup(ctx: QuantContext): Promise<Setup> {
  const o = ctx.options as unknown as MptqOptions;
  const lnTargets = lnTargetsOf(ctx, o);
  const sites = ctx.sites.filter((s) => s.kind === "linear" || s.kind === "matmul");
  const data = await calibData(ctx, [...sites, ...lnTargets.map((t) => t.site)], o);
  const uniform = (w: number, a: number): Assignment => ({
    w: new Map(sites.filter((s) => s.kind === "linear").map((s) => [s.id, w])),
    a: new Map([
      ...sites.filter((s) => s.role !== "patch_embed").map((s) => [s.id, a] as const),
      ...lnTargets.map((t) => [t.site.id, a] as const),
    ]),
  });
  return { o, lnTargets, data, uniform };
}

/**
 * The Greedy MP sensitivity table of a mixed-precision cell (`ctx.bits.mixed`):
 * every unit with its loss at each candidate (ascending), by the cell's
 * `mpLoss`; `images`: the calibration images the KL loss was measured on.
 */
export async function sensitivityTable(
  ctx: QuantContext,
  su?: Setup,
): Promise<{ units: Unit[]; cands: number[]; images?: number }> {
  if (!ctx.bits.mixed) throw new VitqError("MPTQ-ViT: a sensitivity table needs mixed candidates");
  const { o, data, lnTargets, uniform } = su ?? await setup(ctx);
  const cands = [...ctx.bits.mixed].sort((x, y) => x - y);
  if (o.mpLoss === "kl") {
    return { ...(await klTable(ctx, data, o, cands, lnTargets, uniform)), cands };
  }
  return { units: await hessianTable(ctx, data, o, cands, lnTargets, uniform), cands };
}

async function quantizeMptq(ctx: QuantContext): Promise<QuantizedModel> {
  const su = await setup(ctx);
  const { o, data, lnTargets, uniform } = su;
  const full: Pass = { n: o.n, rounds: o.rounds };
  let assign = uniform(ctx.bits.w, ctx.bits.a);
  let mpNote = "";
  if (ctx.bits.mixed) {
    // the sensitivity table, computed once: each greedy step is a lookup
    const { units: list, cands, images } = await sensitivityTable(ctx, su);
    const chosen = greedyAllocate(list, cands, ctx.bits);
    assign = uniform(cands[cands.length - 1], cands[cands.length - 1]);
    list.forEach((u, i) => (u.side === "w" ? assign.w : assign.a).set(u.site.id, chosen[i]));
    const hist = (side: "w" | "a") =>
      cands.map((b) => `${b}:${list.filter((u, i) => u.side === side && chosen[i] === b).length}`)
        .join(" ");
    const how = images
      ? `loss kl on ${images} calibration images, each unit lowered alone, increases summed as if additive (inferred)`
      : "loss hessian";
    mpNote = `; Greedy MP over {${
      cands.join(",")
    }} (${how}; table of ${list.length} units x ${cands.length} candidates from ${o.mpN}-point one-round passes), units per bits W ${
      hist("w")
    }, A ${hist("a")}${images ? "" : "; patch-embed weight lowered last"}`;
  }
  // final calibration at the assignment
  const { results, groups } = await calibrate(ctx, data, o, assign, full, lnTargets);
  const { graph, explicit } = applySmooth(ctx.graph, groups);
  if (groups.length) await checkFold(ctx, graph);
  const plans = plansOf(ctx, results, explicit, data, o);
  const { graph: out, weights: applied, deploy } = applyPlan(
    graph,
    plans.weights.map((w) => w.plan),
    plans.acts.map((a) => a.plan),
    // not in place: the weights SQ-b does not rewrite are the FP graph's own tensors
    // (clones share initializers), which the runner's next cells read
    { deploy: true },
  );
  const sqnr = new Map(applied.map((a) => [a.site.id, a.sqnrDb]));
  const recorder = new LayerRecorder(ctx);
  for (const p of plans.records) {
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
  const ln = lnTargets.length
    ? `; scope full (${lnTargets.length} LayerNorm inputs, ${o.lnQuantizer}, read by ${o.lnConsumers}; inferred)`
    : "; scope linear";
  const notes = `MPTQ-ViT reconstruction (inferred choices marked in approximations); SQ-b ${
    o.sqb ? `${o.sqbScope} (α per group: ${alphas.join(",")})` : "off"
  }; OPT-m ${
    o.optm ? `on (m per fc2: ${ms.join(",")})` : "off"
  }; weights ${o.weightGranularity}; metric ${o.metric}${
    o.metric === "hessian" ? ` (gradient ${o.gradient})` : ""
  }; grid ${o.alpha}..${o.beta} x ${o.n}, ${o.rounds} rounds${ln}${mpNote}`;
  return { graph: out, layers, notes, deployable: deploy && { graph: deploy, kind: QDQ_KIND } };
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
  "reconstruction: no code or full text of the paper was available; SQ-b (per-channel shift to the range centre and SmoothQuant scale, α searched by output error, folded into LayerNorm γ/β and the layer's bias), OPT-m (TSPTQ-ViT V-2SF two-region quantizer on the fc2 input with (step, 2^m) searched jointly by the Hessian-weighted fc2 output error) and Greedy MP (additive Hessian-weighted output-error loss per unit, smallest loss increase per saved average bit first, recalibration at the final assignment) follow the abstract; inferred options: n and rounds (50 points, 2 rounds: fewer than PTQ4ViT's 100 and 3, for cost), sqbAlphas, sqbScope, optmMaxM, optmN, weightGranularity (per-channel weights), twinSoftmax/softmaxVariant (PTQ4ViT's softmax quantizer), mpN, MP units (weight and input of each linear, both operands of each attention matmul together, each LayerNorm input in the full scope; with the hessian loss the patch-embed weight, searched by weight MSE, is lowered only after every other unit); mpLoss kl: each unit lowered alone from the highest candidate with the others at the highest, on the first mpImages calibration images, SQ-b factors of the highest candidate's pass for every candidate, increases summed over units as if additive (inferred); scope full: LayerNorm inputs with TSPTQ-ViT's O-2SF (lnQuantizer, lnMMax, lnFlagRule, lnConsumers: inferred) scored on the unfolded LayerNorm's output; PTQ4ViT's parallel Hessian-guided search with pseudo-label gradients";

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
