/**
 * PTQ4ViT (Yuan et al., ECCV 2022, arXiv 2111.12293) and its baseline BasePTQ.
 *
 * What is quantized follows the reference code: weights and inputs of every
 * linear layer (qkv with separate steps for its q, k and v thirds, proj, fc1, fc2,
 * head, Swin reduction; per tensor), the patch-embedding weight per output channel
 * (its input, the image, stays FP), both operands of Q·Kᵀ and A·V with one step per
 * head (the reference's batching matmul quantizer; `matmulGranularity: "tensor"` for
 * one step per operand; the twin softmax split stays per tensor). The fc2 input
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
import { type Captured, type CaptureStore, captureStore } from "../core/runtime/capture.ts";
import type { Site } from "../core/onnx/sites.ts";
import { QDQ_KIND } from "../core/quant/deploy.ts";
import { type ActPlan, applyPlan, type WeightPlan } from "../core/quant/apply.ts";
import {
  absMax,
  absMaxPerChannel,
  fakeQuant,
  symmetric,
  type UniformQuantizer,
} from "../core/quant/uniform.ts";
import { VitqError } from "../core/errors.ts";
import {
  emitTwinGelu,
  emitTwinSoftmax,
  twinGelu,
  twinGeluParts,
  twinSoftmax,
  twinSoftmaxParts,
  type TwinVariant,
} from "../core/quant/twin.ts";
import { type CandidateQuantizer, CandidateScorer, type Metric } from "../core/quant/search.ts";
import { attr } from "../core/onnx/graph.ts";
import { outputGradientStore } from "../core/autodiff/gradients.ts";
import { CellCache } from "./cache.ts";
import {
  defineMethod,
  type OptionsSchema,
  type QuantContext,
  type QuantizedModel,
  type QuantMethod,
} from "./types.ts";
import { LayerRecorder, type TensorQuant } from "./layers.ts";

/** Options shared by PTQ4ViT and BasePTQ. */
export type Ptq4vitOptions = {
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
  /**
   * Steps of the attention-matmul operands (Q·Kᵀ and A·V): one per head, as the
   * reference's batching matmul quantizer (`n_G = heads`, heads read from the
   * operand's shape `[B, heads, N, d]`), or one per operand (`tensor`).
   * The post-softmax twin quantizer keeps one split per tensor either way, as in the reference.
   */
  matmulGranularity: "head" | "tensor";
  /**
   * Partner operand when scoring the post-softmax twin quantizer's split: the FP
   * value operand, as the reference's split search does (`fp`), or the quantized one (`quantized`).
   */
  softmaxPartner: "fp" | "quantized";
  /**
   * Cosine metric with several weight groups (the qkv thirds): each group scored by
   * the cosine over its own output columns, all groups searched at once, as the
   * reference (`per-group`); or the cosine over whole rows, groups one after the
   * other (`sequential`). The per-channel patch embedding is searched sequentially in both.
   */
  groupCosine: "per-group" | "sequential";
  /**
   * Grid stride of a coarse-to-fine search (vitq's approximation, not the
   * reference's): 1 scores every grid point (the reference); s > 1 scores every
   * s-th point (and the last), then every point within s - 1 of each group's best,
   * about n/s + 2(s-1) candidates instead of n. It returns the full grid's minimum
   * whenever that lies within s - 1 points of the best coarse point.
   * The twin softmax's 20 split candidates are always all scored. Absent (not a
   * default) so that cells of the full search keep their ids.
   */
  coarse?: number;
};

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
  matmulGranularity: "head",
  softmaxPartner: "fp",
  groupCosine: "per-group",
};

/** JSON Schema of each option (checked by the manifest loader). */
const PTQ4VIT_SCHEMA: OptionsSchema<Ptq4vitOptions> = {
  metric: {
    enum: ["hessian", "cosine", "mse"],
    description: "layer-output metric the step search minimizes",
  },
  gradient: {
    enum: ["pseudo-label", "reference"],
    description:
      "where the Hessian metric's dL/dO comes from: CE to the FP predictions, or the reference's KL(FP||FP)",
  },
  twinSoftmax: { type: "boolean", description: "twin uniform quantizer for post-softmax values" },
  twinGelu: { type: "boolean", description: "twin uniform quantizer for post-GELU values" },
  variant: {
    enum: ["paper", "reference"],
    description: "twin softmax semantics: disjoint ranges (paper) or sum of branches (reference)",
  },
  patchPerChannel: {
    type: "boolean",
    description: "per-output-channel steps for the patch-embedding weight",
  },
  alpha: {
    type: "number",
    exclusiveMinimum: 0,
    description: "low end of the step grid (x initial step)",
  },
  beta: {
    type: "number",
    exclusiveMinimum: { $data: "1/alpha" },
    description: "high end of the step grid (x initial step), above alpha",
  },
  n: { type: "integer", minimum: 1, description: "grid points" },
  rounds: { type: "integer", minimum: 1, description: "alternating search rounds" },
  gradBatch: { type: "integer", minimum: 1, description: "images per gradient pass" },
  matmulGranularity: {
    enum: ["head", "tensor"],
    description: "attention-matmul operand steps: one per head (reference) or one per operand",
  },
  softmaxPartner: {
    enum: ["fp", "quantized"],
    description: "partner operand when scoring the post-softmax twin split",
  },
  groupCosine: {
    enum: ["per-group", "sequential"],
    description:
      "cosine over each weight group's own columns, all at once (reference), or over whole rows, one group after the other",
  },
  coarse: {
    type: "integer",
    minimum: 1,
    description:
      "grid stride of a coarse-to-fine step search (approximation, vitq's: every s-th grid point, then the points within s-1 of each group's best); 1 = every grid point (reference)",
  },
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

/**
 * One grid search over factor indices 0..n-1 for `groups` independently scored
 * groups: `score(idx)` scores candidates `idx[k]` (one index per group) and returns
 * one score per candidate and group. Returns each group's best index (ties to the
 * lower index, as a first-minimum argmin over the full grid) and its score.
 * `stride` 1 scores every index in order (the reference's search); `stride` s > 1
 * is the coarse-to-fine approximation of the `coarse` option.
 */
export async function gridSearch(
  n: number,
  groups: number,
  stride: number,
  score: (idx: number[][]) => Promise<ArrayLike<number>[]>,
): Promise<{ best: number[]; score: number[] }> {
  const best = new Array<number>(groups).fill(-1), bestScore = new Array<number>(groups).fill(0);
  const take = (idx: number[][], scores: ArrayLike<number>[]) => {
    idx.forEach((row, k) =>
      row.forEach((i, gi) => {
        const v = scores[k][gi];
        if (best[gi] < 0 || v < bestScore[gi] || (v === bestScore[gi] && i < best[gi])) {
          best[gi] = i;
          bestScore[gi] = v;
        }
      })
    );
  };
  const same = (i: number) => new Array<number>(groups).fill(i);
  if (stride <= 1 || n <= stride) {
    const idx = Array.from({ length: n }, (_, k) => same(k));
    take(idx, await score(idx));
    return { best, score: bestScore };
  }
  const coarse: number[][] = [];
  for (let i = 0; i < n; i += stride) coarse.push(same(i));
  if ((n - 1) % stride !== 0) coarse.push(same(n - 1));
  take(coarse, await score(coarse));
  const centre = [...best];
  const fine: number[][] = [];
  for (let d = -(stride - 1); d < stride; d++) {
    if (d === 0 || centre.every((c) => c + d < 0 || c + d >= n)) continue;
    // a group whose neighbour is off the grid re-scores its centre (same score)
    fine.push(centre.map((c) => (c + d >= 0 && c + d < n ? c + d : c)));
  }
  if (fine.length) take(fine, await score(fine));
  return { best, score: bestScore };
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

/** A twin quantizer as uniform parts for the deploy graph (integer products per part). */
function actParts(q: ActQ, bits: number, variant: TwinVariant): ActPlan["parts"] {
  if (q.kind === "twin-softmax") return twinSoftmaxParts({ bits, split: q.split, variant });
  if (q.kind === "twin-gelu") return twinGeluParts({ bits, posScale: q.pos });
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

/**
 * Calibration data shared by cells: FP values and output gradients per site,
 * in memory or, past the capture budget (`captureBudgetBytes`), spilled to
 * files and loaded one block at a time.
 */
interface CalibData {
  values: CaptureStore;
  grads: CaptureStore | undefined;
}

/** The tensors of one block's sites, loaded from {@link CalibData}. */
interface CalibView {
  values: Map<string, Captured>;
  grads: Map<string, Float32Array> | undefined;
}

const cache = new CellCache<CalibData>((d) => {
  void d.values.release();
  void d.grads?.release();
});

/** Load the captured tensors the given sites read. */
async function loadView(data: CalibData, sites: Site[]): Promise<CalibView> {
  const values = await data.values.load(
    sites.flatMap((s) => [s.input, ...(s.operands ?? []), s.output]).filter((v): v is string =>
      !!v
    ),
  );
  const grads = data.grads &&
    new Map(
      [...await data.grads.load(sites.map((s) => s.output))].map(([k, c]) => [k, c.data]),
    );
  return { values, grads };
}

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
    const captured = await captureStore(ctx.runtime, ctx.graph, values, ctx.calib, ctx.batchSize);
    try {
      const grads = o.metric === "hessian"
        ? await outputGradientStore(ctx.runtime, ctx.graph, outputs, ctx.calib, {
          mode: o.gradient,
          subBatch: o.gradBatch,
        }, captured.spilled)
        : undefined;
      return { values: captured, grads };
    } catch (e) {
      await captured.release();
      throw e;
    }
  });
}

function linearProblem(
  ctx: QuantContext,
  site: Site,
  data: CalibView,
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
  // cosine per group over its own columns (the reference's qkv thirds); the
  // per-channel patch embedding keeps the sequential search (see groupCosine)
  const perGroupCos = !decomposes && o.groupCosine === "per-group" && p.groups.length > 1 &&
    p.groups.length < p.cout && p.groups.every(([a, b]) => b - a === p.cout / p.groups.length);
  // with a quantized input (uniform, or the post-GELU twin as two parts) both operands are
  // 8-bit codes: large layers are scored by integer matmuls (CandidateScorer.create decides
  // by size, see ScoreProblem.integer)
  const integer = act !== undefined && decomposes && wb <= 8 && ab <= 8;
  const wScorer = await CandidateScorer.create(ctx.runtime, {
    vary: "b",
    integer,
    fixedA: act ? { kind: act.kind, bits: ab } : undefined,
    aDims: [p.m, p.cin],
    bDims: [p.cin, p.cout],
    oDims: [p.m, p.cout],
    metric: o.metric,
    perColumn: decomposes,
    cosineGroups: perGroupCos ? p.groups.length : undefined,
    bias: p.bias,
    quant: { kind: "uniform", bits: wb, columns: p.cout },
  });
  const xScorer = act
    ? await CandidateScorer.create(ctx.runtime, {
      vary: "a",
      integer,
      aDims: [p.m, p.cin],
      bDims: [p.cin, p.cout],
      oDims: [p.m, p.cout],
      metric: o.metric,
      bias: p.bias,
      quant: candidateQuantizer(act, ab, o.variant),
    })
    : undefined;
  let last = NaN;
  // A round is a deterministic function of the steps it starts from: once a weight search
  // returns the steps the previous round's did, every later search would repeat itself
  // (same weights -> same input step -> same weights), so the remaining rounds are skipped
  // with the same result.
  let prevW: number[] | undefined;
  try {
    for (let r = 0; r < o.rounds; r++) {
      ctx.step?.(`${site.id} round ${r + 1}/${o.rounds}`);
      const xq = act ? quantAct(p.x, act, ab, o.variant) : p.x;
      if (decomposes || perGroupCos) {
        const { best } = await gridSearch(o.n, p.groups.length, o.coarse ?? 1, async (idx) => {
          const scores = await wScorer.scoreQuantized(
            idx.length,
            (k) => expandGroups(p.groups, wInit.map((s, gi) => s * factors[idx[k][gi]]), p.cout),
            p.w,
            xq,
            p.o,
            p.g,
            act ? [actStep(act)] : undefined,
          );
          return scores.map((s) =>
            p.groups.map(([a, b], gi) => {
              if (perGroupCos) return s[gi];
              let t = 0;
              for (let j = a; j < b; j++) t += s[j];
              return t;
            })
          );
        });
        best.forEach((i, gi) => (wCur[gi] = Math.fround(wInit[gi] * factors[i])));
      } else {
        for (let gi = 0; gi < p.groups.length; gi++) {
          const { best } = await gridSearch(
            o.n,
            1,
            o.coarse ?? 1,
            async (idx) => (await wScorer.scoreQuantized(
              idx.length,
              (k) => {
                const steps = [...wCur];
                steps[gi] = wInit[gi] * factors[idx[k][0]];
                return expandGroups(p.groups, steps, p.cout);
              },
              p.w,
              xq,
              p.o,
              p.g,
            )),
          );
          wCur[gi] = Math.fround(wInit[gi] * factors[best[0]]);
        }
      }
      if (prevW && prevW.every((v, i) => v === wCur[i])) break;
      prevW = [...wCur];
      if (!act || !xScorer) continue;
      const colSteps = expandGroups(p.groups, wCur, p.cout);
      const wq = quantW(p.w, p.cin, p.cout, colSteps, wb);
      const cands: ActQ[] = factors.map((f) =>
        act!.kind === "twin-gelu" ? { kind: "twin-gelu", pos: Math.fround(actInit * f) } : {
          kind: "uniform",
          step: Math.fround(actInit * f),
        }
      );
      const found = await gridSearch(
        o.n,
        1,
        o.coarse ?? 1,
        async (idx) => (await xScorer.scoreQuantized(
          idx.length,
          (k) => [actStep(cands[idx[k][0]])],
          p.x,
          wq,
          p.o,
          p.g,
          colSteps,
        )),
      );
      act = cands[found.best[0]];
      last = found.score[0];
    }
  } finally {
    await wScorer.release();
    await xScorer?.release();
  }
  return { colSteps: expandGroups(p.groups, wCur, p.cout), act, score: last };
}

/**
 * A matmul operand's quantizer: the post-softmax twin quantizer (one split per
 * tensor), or uniform symmetric with one step per group along axis 1 (the heads
 * of `[B, heads, N, d]`; a single group is one step per tensor).
 */
type OperandQ =
  | { kind: "twin-softmax"; split: number }
  | { kind: "grouped"; steps: Float32Array };

/** The searched matmul steps of one site: A and B quantizers and the number of groups. */
export interface MatmulSteps {
  a: OperandQ;
  b: OperandQ;
  groups: number;
}

/** Per-group steps as a uniform quantizer on axis 1 (per tensor for one group). */
function groupedQuantizer(steps: Float32Array, bits: number): UniformQuantizer {
  return steps.length === 1 ? symmetric(bits, steps[0]) : {
    bits,
    signed: true,
    scale: steps,
    zeroPoint: new Float32Array(steps.length),
    axis: 1,
  };
}

function quantOperand(x: Captured, q: OperandQ, bits: number, variant: TwinVariant): Float32Array {
  return q.kind === "twin-softmax"
    ? twinSoftmax(x.data, { bits, split: q.split, variant })
    : fakeQuant(x.data, x.dims, groupedQuantizer(q.steps, bits));
}

/**
 * Groups of an attention matmul's operands: 1 for `matmulGranularity: "tensor"`,
 * else the heads, axis 1 of both operands (`[B, heads, N, d]` and `[B, heads, d, N]`
 * or `[B, heads, N, N]`; Swin's window attention `[B·windows, heads, N, d]`), as the
 * reference's batching matmul quantizer takes `n_G = A.shape[1]`.
 */
function matmulGroups(site: Site, a: number[], b: number[], o: Ptq4vitOptions): number {
  if (o.matmulGranularity === "tensor") return 1;
  if (a.length !== 4 || b.length !== 4 || a[1] !== b[1]) {
    throw new VitqError(
      `${site.id}: per-head steps need operands [B, heads, ., .] with the same heads, got [${a}] and [${b}] (use matmulGranularity: "tensor")`,
    );
  }
  return a[1];
}

/** Initial step per group (axis 1): max|x| over the group / (2^(k-1) - 0.5). */
function groupInit(x: Captured, groups: number, bits: number): Float32Array {
  const m = groups === 1 ? Float32Array.of(absMax(x.data)) : absMaxPerChannel(x.data, x.dims, 1);
  return m.map((v) => initStep(v, bits));
}

/**
 * Search both operands of a matmul site: A then B in each round, each group's step
 * on the grid Δ0·(α + i(β-α)/n) (the twin softmax's split over 2^-i, i < 20).
 * Group scores decompose (head h of the output depends on head h of A and B
 * only), so all groups are scored at once per candidate and each takes its own
 * best. The twin split is scored against the FP value operand (`softmaxPartner: fp`,
 * the reference) or the quantized one; uniform A against the quantized B, as in the reference.
 */
async function searchMatmul(
  ctx: QuantContext,
  site: Site,
  data: CalibView,
  o: Ptq4vitOptions,
): Promise<MatmulSteps> {
  const ab = ctx.bits.a;
  const A = data.values.get(site.operands![0])!, B = data.values.get(site.operands![1])!;
  const O = data.values.get(site.output)!;
  const G = data.grads?.get(site.output);
  const groups = matmulGroups(site, A.dims, B.dims, o);
  const factors = Array.from({ length: o.n }, (_, i) => o.alpha + (i * (o.beta - o.alpha)) / o.n);
  const twin = site.role === "av" && o.twinSoftmax;
  const aInit = groupInit(A, groups, ab), bInit = groupInit(B, groups, ab);
  const splits = Array.from({ length: 20 }, (_, i) => 2 ** -i);
  let a: OperandQ = twin ? { kind: "twin-softmax", split: 1 } : { kind: "grouped", steps: aInit };
  let b: OperandQ = { kind: "grouped", steps: bInit };
  // per-group steps of candidate `idx` (one grid index per group)
  const cand = (init: Float32Array, idx: number[]) =>
    init.map((s, h) => Math.fround(s * factors[idx[h]]));
  const search = async (init: Float32Array, run: (idx: number[][]) => Promise<Float64Array[]>) =>
    Float32Array.from(
      (await gridSearch(o.n, init.length, o.coarse ?? 1, run)).best,
      (i, h) => Math.fround(init[h] * factors[i]),
    );
  const uniform = { kind: "uniform" as const, bits: ab, columns: groups, axis: 1 };
  const keepAxis = groups > 1 ? 1 : undefined;
  const sa = await CandidateScorer.create(ctx.runtime, {
    vary: "a",
    aDims: A.dims,
    bDims: B.dims,
    oDims: O.dims,
    metric: o.metric,
    keepAxis: twin ? undefined : keepAxis,
    quant: twin ? { kind: "twin-softmax", bits: ab, variant: o.variant } : uniform,
  });
  const sb = await CandidateScorer.create(ctx.runtime, {
    vary: "b",
    aDims: A.dims,
    bDims: B.dims,
    oDims: O.dims,
    metric: o.metric,
    keepAxis,
    quant: uniform,
  });
  // as in searchLinear: once an A search repeats the previous round's steps, the rounds
  // have reached a fixed point and the rest would repeat themselves
  let prevA: OperandQ | undefined;
  try {
    for (let r = 0; r < o.rounds; r++) {
      ctx.step?.(`${site.id} round ${r + 1}/${o.rounds}`);
      if (twin) {
        const partner = o.softmaxPartner === "fp" ? B.data : quantOperand(B, b, ab, o.variant);
        const s1 = await sa.scoreQuantized(
          splits.length,
          (k) => [splits[k]],
          A.data,
          partner,
          O.data,
          G,
        );
        a = { kind: "twin-softmax", split: splits[argmin(s1.map((s) => s[0]))] };
      } else {
        const bq = quantOperand(B, b, ab, o.variant);
        a = {
          kind: "grouped",
          steps: await search(
            aInit,
            (idx) =>
              sa.scoreQuantized(idx.length, (k) => cand(aInit, idx[k]), A.data, bq, O.data, G),
          ),
        };
      }
      if (prevA && sameOperand(prevA, a)) break;
      prevA = a;
      const aq = quantOperand(A, a, ab, o.variant);
      b = {
        kind: "grouped",
        steps: await search(
          bInit,
          (idx) => sb.scoreQuantized(idx.length, (k) => cand(bInit, idx[k]), B.data, aq, O.data, G),
        ),
      };
    }
  } finally {
    await sa.release();
    await sb.release();
  }
  return { a, b, groups };
}

function sameOperand(x: OperandQ, y: OperandQ): boolean {
  if (x.kind === "twin-softmax" || y.kind === "twin-softmax") {
    return x.kind === "twin-softmax" && y.kind === "twin-softmax" && x.split === y.split;
  }
  return x.steps.length === y.steps.length && x.steps.every((v, i) => v === y.steps[i]);
}

/** The searched quantizers of one site. */
type SiteResult =
  | { site: Site; kind: "linear"; groups: number; colSteps: Float32Array; act?: ActQ }
  | { site: Site; kind: "matmul"; steps: MatmulSteps };

/** Calibrate (parallel: every site on FP data) the linear and matmul sites passing `only`. */
async function searchSites(
  ctx: QuantContext,
  o: Ptq4vitOptions,
  only: (s: Site) => boolean = () => true,
): Promise<{ results: SiteResult[]; data: CalibData }> {
  const all = ctx.sites.filter((s) => s.kind === "linear" || s.kind === "matmul");
  const data = await calibData(ctx, all, o);
  const chosen = all.filter(only);
  // one block's tensors loaded at a time (all of them at once when they are in memory)
  const byBlock = new Map<number, Site[]>();
  for (const s of chosen) byBlock.set(s.block, [...(byBlock.get(s.block) ?? []), s]);
  const groups = data.values.spilled ? [...byBlock.values()] : [chosen];
  const found = new Map<Site, SiteResult>();
  for (const group of groups) {
    const view = await loadView(data, group);
    for (const site of group) {
      (ctx.step ?? ctx.log)(`${site.id}: searching`);
      if (site.kind === "linear") {
        const p = linearProblem(ctx, site, view, o.patchPerChannel);
        const res = await searchLinear(ctx, site, p, o);
        found.set(site, {
          site,
          kind: "linear",
          groups: p.groups.length,
          colSteps: res.colSteps,
          act: res.act,
        });
      } else {
        found.set(site, { site, kind: "matmul", steps: await searchMatmul(ctx, site, view, o) });
      }
    }
  }
  return { results: chosen.map((s) => found.get(s)!), data };
}

/** One searched parameter set of a site: a weight's, an input's or a matmul operand's steps. */
export interface StepRecord {
  site: string;
  /** `weight` (one step per group: the qkv thirds, patch-embed channels), `input`, `a`, `b`. */
  tensor: string;
  /** `uniform` steps, `twin-gelu` positive step or `twin-softmax` split. */
  quantizer: string;
  /** One value per group (heads for matmul operands, weight groups for weights). */
  steps: number[];
}

/**
 * The steps PTQ4ViT or BasePTQ (`options` of the context, merged over the
 * method's defaults by the caller) chooses for the sites passing `only`. Sites are
 * calibrated independently on FP data, so a subset gets the same steps as a
 * whole-model calibration (used by the parity fixture test).
 */
export async function searchSteps(
  ctx: QuantContext,
  only?: (s: Site) => boolean,
): Promise<StepRecord[]> {
  const o = ctx.options as unknown as Ptq4vitOptions;
  const { results } = await searchSites(ctx, o, only);
  const out: StepRecord[] = [];
  const operand = (q: OperandQ) =>
    q.kind === "twin-softmax"
      ? { quantizer: "twin-softmax", steps: [q.split] }
      : { quantizer: "uniform", steps: [...q.steps] };
  for (const r of results) {
    if (r.kind === "linear") {
      const first: number[] = [];
      for (let j = 0; j < r.colSteps.length; j += r.colSteps.length / r.groups) {
        first.push(r.colSteps[j]);
      }
      out.push({ site: r.site.id, tensor: "weight", quantizer: "uniform", steps: first });
      if (r.act) {
        out.push({
          site: r.site.id,
          tensor: "input",
          quantizer: r.act.kind === "uniform" ? "uniform" : r.act.kind,
          steps: [actStep(r.act)],
        });
      }
    } else {
      out.push({ site: r.site.id, tensor: "a", ...operand(r.steps.a) });
      out.push({ site: r.site.id, tensor: "b", ...operand(r.steps.b) });
    }
  }
  return out;
}

async function quantizePtq4vit(ctx: QuantContext<Ptq4vitOptions>): Promise<QuantizedModel> {
  const o = ctx.options;
  const { bits } = ctx;
  const { results, data } = await searchSites(ctx, o);
  const weights: WeightPlan[] = [];
  const acts: ActPlan[] = [];
  const recorded: { site: Site; tensor: string; value: string; q: TensorQuant }[] = [];
  // `parts`: one record per head of a matmul operand (tensor `a[h3]`), each holding 1/parts of it
  const rec = (s: Site, tensor: string, b: number, scale: number, quantizer: string, parts = 1) => {
    const value = tensor === "weight"
      ? s.weight!
      : tensor === "input"
      ? s.input!
      : s.operands![tensor[0] === "a" ? 0 : 1];
    const dims = data.values.dims(value);
    const elements = dims ? dims.reduce((x, y) => x * y, 1) / ctx.calib.length / parts : undefined;
    recorded.push({ site: s, tensor, value, q: { bits: b, scale, quantizer, elements } });
  };
  for (const res of results) {
    const site = res.site;
    if (res.kind === "linear") {
      // express column steps along the initializer's own output axis
      const perChannel = res.groups > 1;
      const q: UniformQuantizer = perChannel
        ? {
          bits: bits.w,
          signed: true,
          scale: res.colSteps,
          zeroPoint: new Float32Array(res.colSteps.length),
          axis: site.weightOutAxis,
        }
        : symmetric(bits.w, res.colSteps[0]);
      weights.push({ site, q });
      rec(
        site,
        "weight",
        bits.w,
        res.colSteps[0],
        perChannel ? `sym, ${res.groups} groups` : "per-tensor sym",
      );
      if (res.act) {
        acts.push({
          site,
          slot: 0,
          q: res.act.kind === "uniform" ? symmetric(bits.a, res.act.step) : undefined,
          emit: emitAct(res.act, bits.a, o.variant),
          parts: actParts(res.act, bits.a, o.variant),
        });
        rec(site, "input", bits.a, actStep(res.act), actName(res.act));
      }
    } else {
      const { a, b, groups } = res.steps;
      for (const [slot, q] of [[0, a], [1, b]] as const) {
        const t = slot === 0 ? "a" : "b";
        if (q.kind === "twin-softmax") {
          acts.push({
            site,
            slot,
            emit: emitAct(q, bits.a, o.variant),
            parts: actParts(q, bits.a, o.variant),
          });
          rec(site, t, bits.a, q.split, "twin-softmax");
          continue;
        }
        acts.push({ site, slot, q: groupedQuantizer(q.steps, bits.a), rank: 4 });
        if (groups === 1) rec(site, t, bits.a, q.steps[0], "per-tensor sym");
        // one record per head: tensor a[h0], a[h1], ... with that head's step
        else {q.steps.forEach((st, h) =>
            rec(site, `${t}[h${h}]`, bits.a, st, "per-head sym", groups)
          );}
      }
    }
  }
  const { graph, weights: applied, deploy } = applyPlan(ctx.graph, weights, acts, {
    deploy: true,
  });
  const sqnr = new Map(applied.map((a) => [a.site.id, a.sqnrDb]));
  const recorder = new LayerRecorder(ctx);
  for (const r of recorded) {
    const sqnrDb = r.tensor === "weight" ? sqnr.get(r.site.id) : undefined;
    recorder.add(r.site, r.tensor, r.value, { ...r.q, sqnrDb });
  }
  const layers = await recorder.records();
  const notes = `metric ${o.metric}${
    o.metric === "hessian" ? ` (gradient ${o.gradient}, sub-batch ${o.gradBatch})` : ""
  }; grid ${o.alpha}..${o.beta} x ${o.n}${
    (o.coarse ?? 1) > 1
      ? ` searched coarse-to-fine (stride ${o.coarse}: approximation, vitq's)`
      : ""
  }, ${o.rounds} rounds; twin softmax ${o.twinSoftmax ? o.variant : "off"}, twin GELU ${
    o.twinGelu ? "on" : "off"
  }`;
  return { graph, layers, notes, deployable: deploy && { graph: deploy, kind: QDQ_KIND } };
}

const APPROX =
  "parallel calibration as the reference code; per-head attention-matmul steps and the twin split scored with the FP value operand, as the reference; default gradient is cross-entropy to the FP model's predictions (pseudo-label) because the reference's KL(FP||FP) gradient is analytically zero (option gradient: reference reproduces it); bias correction off (the reference never applies it)";

/** PTQ4ViT: twin uniform quantizers and Hessian-guided scaling-factor search. */
export const ptq4vit: QuantMethod = defineMethod<Ptq4vitOptions>({
  name: "ptq4vit",
  paper: "Yuan et al., PTQ4ViT, ECCV 2022 (arXiv 2111.12293)",
  description:
    "twin uniform quantizers (post-softmax, post-GELU) and Hessian-guided step search: per-tensor linear inputs and weights, own steps for the qkv weight thirds and patch-embed channels, per-head attention-matmul operands",
  approximations: APPROX,
  defaults: { ...PTQ4VIT_DEFAULTS },
  optional: ["coarse"],
  optionsSchema: PTQ4VIT_SCHEMA,
  quantize: quantizePtq4vit,
});

/** BasePTQ: PTQ4ViT's baseline (cosine metric, grid 0.5..1.2, one round, no twin quantizers). */
export const baseptq: QuantMethod = defineMethod<Ptq4vitOptions>({
  name: "baseptq",
  paper: "Yuan et al., PTQ4ViT, ECCV 2022: the paper's BasePTQ baseline",
  description:
    "symmetric steps searched by cosine similarity of layer outputs (per tensor; qkv weight thirds scored per third; attention-matmul operands per head); no twin quantizers",
  approximations: "parallel calibration and per-head attention-matmul steps as the reference code",
  defaults: { ...BASEPTQ_DEFAULTS },
  optional: ["coarse"],
  optionsSchema: PTQ4VIT_SCHEMA,
  quantize: quantizePtq4vit,
});
