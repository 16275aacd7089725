/**
 * ADFQ-ViT (Jiang et al., arXiv 2407.02763; Neural Networks 2025):
 * outlier-aware and log quantizers for the activations that uniform
 * quantization handles worst, plus attention-score-enhanced module-wise
 * optimization. Follows the reference code (`llwx593/adfq-vit`):
 *
 * - qkv and fc1 inputs (post-LayerNorm): per-patch outlier-aware quantizer —
 *   a static asymmetric step and zero point per token position (percentile-MSE
 *   init), |x| > τ kept in FP (τ: `outlierQkv`, `outlierFc1`, both 5);
 * - fc2 input (post-GELU): Shift-Log2 (`shiftLog2: "reference"`: dynamic
 *   min-shift and log-√2 grid as the code; `"paper"`: static shift, log2 grid);
 * - post-softmax A: log-√2; q, kᵀ and V: per-tensor asymmetric from the 2-D
 *   grid search (mean |x - x̂|^2.4);
 * - proj, head, patch-embed (the image) and Swin reduction inputs: per-tensor
 *   asymmetric uniform (percentile-MSE init) at the activation bit width
 *   (`firstLast8bit` keeps patch-embed and head at 8 bits);
 * - weights: per output channel, asymmetric, percentile-MSE init, AdaRound.
 *
 * Module-wise optimization runs unit by unit in network order (patch
 * embedding; per block the attention and the MLP module; Swin reductions;
 * head), driven by `core/recon/driver.ts`: the unit's input comes from the
 * model quantized so far, its target from the FP model; this file holds only
 * ADFQ-ViT's choices (quantizers, their initialization, the loss); activation quantizers of the unit are initialized on the
 * first `initSamples` cached inputs, then AdaRound variables and activation
 * steps are learned (see `core/recon/train.ts`), then frozen with hard
 * rounding.
 *
 * @module
 */
import type { Captured } from "../core/runtime/capture.ts";
import { type Graph, Tensor } from "../core/onnx/graph.ts";
import type { Site } from "../core/onnx/sites.ts";
import type { Runtime } from "../core/runtime/runtime.ts";
import { fakeQuant, sqnrDb, type UniformQuantizer } from "../core/quant/uniform.ts";
import { type ActPlan, applyPlan, type WeightPlan } from "../core/quant/apply.ts";
import { QDQ_KIND, qdqable } from "../core/quant/deploy.ts";
import { initPerPatch } from "../core/quant/outlier.ts";
import { findUnits, type Unit } from "../core/recon/units.ts";
import { firstImages, reconstructUnits, runRows } from "../core/recon/driver.ts";
import {
  adaRoundHard,
  adaRoundInit,
  logDeltaInit,
  percentileAffine,
  perChannelAffine,
  search2d,
  shiftLog2Init,
} from "../core/recon/init.ts";
import {
  actScale,
  type ActState,
  describeAct,
  emitExactAct,
  quantizeGraph,
  type WeightState,
} from "../core/recon/quantizers.ts";
import {
  buildTrainGraph,
  type ReconOptions,
  trainUnit,
  type UnitReport,
  type UnitTensors,
} from "../core/recon/train.ts";
import {
  defineMethod,
  type OptionsSchema,
  type QuantContext,
  type QuantizedModel,
  type QuantMethod,
} from "./types.ts";
import { LayerRecorder } from "./layers.ts";

/** Options of ADFQ-ViT (defaults: the reference code's). */
export type AdfqOptions = {
  /** Optimization steps per unit (reference: 5000; README example 3000). */
  iters: number;
  /** Images per optimization step. */
  batch: number;
  /** Cached inputs used to initialize a unit's activation quantizers (reference: 256). */
  initSamples: number;
  /** Adam learning rate of the AdaRound variables. */
  lrV: number;
  /** Adam learning rate of the activation steps (the reference's `--lr`). */
  lrStep: number;
  /** Rounding-regularizer weight λ (`--weight`). */
  roundWeight: number;
  /** Regularizer exponent at the start of its decay (`--b_start`). */
  bStart: number;
  /** Regularizer exponent at the end (`--b_end`). */
  bEnd: number;
  /** Share of steps without the regularizer (`--warmup`). */
  warmup: number;
  /** QDrop probability of the quantized input (`--input_prob`). */
  inputProb: number;
  /** The attention KL is divided by this (`--lamb_r`; 0 turns the KL off). */
  lambR: number;
  /** Attention-KL temperature (`--T`). */
  temperature: number;
  /** Softmax axis of the attention KL: `head` (the reference's dim=1) or `token` (the key axis). */
  attentionKlAxis: "head" | "token";
  /** Outlier threshold τ of the qkv input (hard-coded 5 in the reference). */
  outlierQkv: number;
  /** Outlier threshold τ of the fc1 input (`--outlier`). */
  outlierFc1: number;
  /** Shift-Log2 variant: `reference` (dynamic min, log-√2 grid) or `paper` (static shift, log2 grid). */
  shiftLog2: "reference" | "paper";
  /** Patch embedding and head (weights and inputs) at 8 bits. */
  firstLast8bit: boolean;
  /** Reconstruction loss: `reference` (Σ over dim 1, mean over the rest) or `mean`. */
  recLoss: "reference" | "mean";
  /**
   * Gradients through the activation quantizers during reconstruction:
   * `reference` as the code (no straight-through path through the per-patch,
   * uniform and log quantizers' inputs) or `ste` (straight-through everywhere,
   * LSQ steps, as QDrop).
   */
  gradients: "reference" | "ste";
  /** Histogram bins of the 2-D search (0: exact scoring of every candidate). */
  searchBins: number;
  /** Histogram-best candidates of the 2-D search re-scored exactly. */
  searchRescore: number;
};

/** The reference code's defaults. */
export const ADFQ_DEFAULTS: AdfqOptions = {
  iters: 5000,
  batch: 32,
  initSamples: 256,
  lrV: 3e-3,
  lrStep: 4e-5,
  roundWeight: 0.01,
  bStart: 20,
  bEnd: 2,
  warmup: 0.2,
  inputProb: 0.5,
  lambR: 0.1,
  temperature: 4,
  attentionKlAxis: "head",
  outlierQkv: 5,
  outlierFc1: 5,
  shiftLog2: "reference",
  firstLast8bit: false,
  recLoss: "reference",
  gradients: "reference",
  searchBins: 2048,
  searchRescore: 4,
};

/** JSON Schema of each option (checked by the manifest loader). */
const ADFQ_SCHEMA: OptionsSchema<AdfqOptions> = {
  iters: { type: "integer", minimum: 0, description: "reconstruction iterations per unit" },
  batch: { type: "integer", minimum: 1, description: "images per reconstruction step" },
  initSamples: {
    type: "integer",
    minimum: 1,
    description: "calibration images for activation initialization",
  },
  lrV: { type: "number", exclusiveMinimum: 0, description: "learning rate of AdaRound's V" },
  lrStep: { type: "number", exclusiveMinimum: 0, description: "learning rate of activation steps" },
  roundWeight: { type: "number", minimum: 0, description: "weight of the rounding loss" },
  bStart: { type: "number", exclusiveMinimum: 0, description: "rounding-loss b at the start" },
  bEnd: { type: "number", exclusiveMinimum: 0, description: "rounding-loss b at the end" },
  warmup: {
    type: "number",
    minimum: 0,
    maximum: 1,
    description: "fraction of iterations without rounding loss",
  },
  inputProb: { type: "number", minimum: 0, maximum: 1, description: "QDrop probability" },
  lambR: {
    type: "number",
    minimum: 0,
    description: "inverse weight of the attention KL term (0: off)",
  },
  temperature: { type: "number", exclusiveMinimum: 0, description: "attention KL temperature" },
  attentionKlAxis: { enum: ["head", "token"], description: "axis of the attention KL" },
  outlierQkv: { type: "number", minimum: 0, description: "per-patch outlier tau of qkv inputs" },
  outlierFc1: { type: "number", minimum: 0, description: "per-patch outlier tau of fc1 inputs" },
  shiftLog2: { enum: ["reference", "paper"], description: "Shift-Log2 variant for fc2 inputs" },
  firstLast8bit: {
    type: "boolean",
    description: "patch embedding and head at 8 bits (weights and inputs)",
  },
  recLoss: { enum: ["reference", "mean"], description: "reconstruction loss reduction" },
  gradients: { enum: ["reference", "ste"], description: "gradients of the quantizers" },
  searchBins: {
    type: "integer",
    minimum: 0,
    description: "histogram bins of the 2-D search (0: exact)",
  },
  searchRescore: {
    type: "integer",
    minimum: 1,
    description: "best histogram candidates rescored exactly",
  },
};

/** A unit with its quantizers and the order in which its activation quantizers are initialized. */
interface UnitState {
  unit: Unit;
  weights: WeightState[];
  acts: ActState[];
  /** Groups of `acts` initialized together (each on inputs computed with the earlier groups applied). */
  stages: ActState[][];
  /** How each activation quantizer is initialized. */
  init: Map<ActState, "per-patch" | "percentile" | "search2d" | "log-sqrt2" | "shift-log2">;
  /** Outlier threshold of per-patch quantizers. */
  tau: Map<ActState, number>;
}

function unitState(ctx: QuantContext, unit: Unit, o: AdfqOptions): UnitState {
  const eight = (s: Site) => o.firstLast8bit && (s.role === "patch_embed" || s.role === "head");
  const wBits = (s: Site) => (eight(s) ? 8 : ctx.bits.w);
  const aBits = (s: Site) => (eight(s) ? 8 : ctx.bits.a);
  const weights: WeightState[] = unit.linears.map((site) => {
    const t = ctx.graph.initializers.get(site.weight!)!;
    const w = t.float32().slice();
    const bits = wBits(site);
    const axis = site.weightOutAxis ?? 0;
    const { scale, zeroPoint } = perChannelAffine(w, t.dims, axis, bits);
    return {
      site,
      bits,
      w,
      dims: [...t.dims],
      axis,
      scale,
      zeroPoint,
      v: adaRoundInit(w, t.dims, axis, scale),
    };
  });
  const init: UnitState["init"] = new Map();
  const tau: UnitState["tau"] = new Map();
  const act = (
    id: string,
    value: string,
    targets: { site: Site; slot: number }[],
    tensor: string,
    bits: number,
    learn: boolean,
    how: "per-patch" | "percentile" | "search2d" | "log-sqrt2" | "shift-log2",
  ): ActState => {
    const a: ActState = { id, value, targets, tensor, bits, learn, rank: 0 };
    init.set(a, how);
    return a;
  };
  const stages: ActState[][] = [];
  if (unit.kind === "attention") {
    const qkv = unit.linears.slice(0, -1), proj = unit.linears[unit.linears.length - 1];
    const [qk, av] = unit.matmuls;
    const a = ctx.bits.a;
    const inQ = act(
      `${qkv[0].id}.input`,
      unit.input,
      qkv.map((site) => ({ site, slot: 0 })),
      "input",
      a,
      true,
      "per-patch",
    );
    tau.set(inQ, o.outlierQkv);
    const mm = (s: Site, slot: number, how: "search2d" | "log-sqrt2") =>
      act(
        `${s.id}.${slot ? "b" : "a"}`,
        s.operands![slot],
        [{ site: s, slot }],
        slot ? "b" : "a",
        a,
        false,
        how,
      );
    stages.push(
      [inQ],
      [mm(qk, 0, "search2d"), mm(qk, 1, "search2d")],
      [mm(av, 0, "log-sqrt2"), mm(av, 1, "search2d")],
      [act(
        `${proj.id}.input`,
        proj.input!,
        [{ site: proj, slot: 0 }],
        "input",
        a,
        true,
        "percentile",
      )],
    );
  } else if (unit.kind === "mlp") {
    const [fc1, fc2] = unit.linears;
    const inQ = act(
      `${fc1.id}.input`,
      unit.input,
      [{ site: fc1, slot: 0 }],
      "input",
      ctx.bits.a,
      true,
      "per-patch",
    );
    tau.set(inQ, o.outlierFc1);
    stages.push(
      [inQ],
      [act(
        `${fc2.id}.input`,
        fc2.input!,
        [{ site: fc2, slot: 0 }],
        "input",
        ctx.bits.a,
        true,
        "shift-log2",
      )],
    );
  } else {
    const s = unit.linears[0];
    stages.push([
      act(
        `${s.id}.input`,
        unit.input,
        [{ site: s, slot: 0 }],
        "input",
        aBits(s),
        true,
        "percentile",
      ),
    ]);
  }
  return { unit, weights, acts: stages.flat(), stages, init, tau };
}

/** Round-to-nearest weight with the initial per-channel quantizer (what the reference inits with). */
function nearestWeight(w: WeightState): Float32Array {
  return fakeQuant(w.w, w.dims, {
    bits: w.bits,
    signed: false,
    scale: w.scale,
    zeroPoint: w.zeroPoint,
    axis: w.axis,
  });
}

/** The hard-rounded weight after AdaRound. */
function hardWeight(w: WeightState): Float32Array {
  return adaRoundHard(w.w, w.dims, w.axis, w, w.v);
}

/** Initialize the unit's activation quantizers stage by stage on the cached quantized inputs. */
async function initActs(
  rt: Runtime,
  st: UnitState,
  unitGraph: Graph,
  data: UnitTensors,
  o: AdfqOptions,
  batchSize: number,
): Promise<void> {
  const { qIn, nImages } = data;
  const n = Math.min(o.initSamples, nImages);
  const x = firstImages(qIn, nImages, n);
  const weights = st.weights.map((w) => ({ site: w.site, data: nearestWeight(w), dims: w.dims }));
  const done: ActState[] = [];
  for (const stage of st.stages) {
    const need = stage.filter((a) => a.value !== st.unit.input).map((a) => a.value);
    const vals = need.length
      ? await runRows(
        rt,
        quantizeGraph(unitGraph, weights, done),
        new Map([[st.unit.input, x]]),
        n,
        batchSize,
        need,
        {
          ...data,
          nImages: n,
          shapeInputs: data.shapeInputs?.map((s) => ({
            name: s.name,
            dims: [s.dims[0] / nImages * n, ...s.dims.slice(1)],
          })),
        },
      )
      : new Map<string, Captured>();
    for (const a of stage) {
      const v = a.value === st.unit.input ? x : vals.get(a.value)!;
      a.rank = v.dims.length;
      switch (st.init.get(a)!) {
        case "per-patch":
          a.p = {
            kind: "per-patch",
            q: initPerPatch(v.data, v.dims, a.bits, st.tau.get(a)!, "percentile"),
          };
          break;
        case "percentile":
          a.p = { kind: "uniform", q: percentileAffine(v.data, a.bits) };
          break;
        case "search2d":
          a.p = {
            kind: "uniform",
            q: search2d(v.data, a.bits, { bins: o.searchBins, rescore: o.searchRescore }),
          };
          break;
        case "log-sqrt2":
          a.p = { kind: "log-sqrt2", q: { bits: a.bits, scale: logDeltaInit(v.data, a.bits) } };
          break;
        case "shift-log2":
          a.p = { kind: "shift-log2", q: shiftLog2Init(v.data, a.bits, o.shiftLog2) };
          break;
      }
      done.push(a);
    }
  }
}

/** A weight's per-output-channel asymmetric quantizer (what AdaRound's codes are codes of). */
function weightQuantizer(w: WeightState): UniformQuantizer {
  return { bits: w.bits, signed: false, scale: w.scale, zeroPoint: w.zeroPoint, axis: w.axis };
}

/**
 * ADFQ-ViT's deploy graph: the hard-rounded AdaRound weights as uint8 codes (their
 * per-channel quantizer's codes reproduce them bit for bit) with DequantizeLinear, the
 * per-tensor uniform activation quantizers (proj, head, patch-embed and reduction inputs,
 * q, kᵀ and V) as QuantizeLinear/DequantizeLinear; the per-patch outlier quantizers (qkv and
 * fc1 inputs: FP outliers), Shift-Log2 (fc2 input) and log-√2 (softmax) stay float
 * fake-quant, as does any quantizer whose zero point does not fit its 8-bit container
 * (`qdqable`). A layer whose input stays float reads its hard-rounded weight as float
 * (`applyPlan` stores such weights float: no MatMulNBits).
 */
function adfqDeploy(
  fp: Graph,
  weights: WeightState[],
  hard: { data: Float32Array }[],
  acts: ActState[],
): Graph {
  const aPlans = acts.filter((a) => a.p).flatMap((a) =>
    a.targets.map((t): ActPlan => {
      if (a.p!.kind === "uniform") {
        const q: UniformQuantizer = {
          bits: a.bits,
          signed: false,
          scale: Float32Array.of(a.p!.q.scale),
          zeroPoint: Float32Array.of(a.p!.q.zeroPoint),
        };
        if (qdqable(q)) return { site: t.site, slot: t.slot, q };
      }
      return { site: t.site, slot: t.slot, emit: (g, x, prefix) => emitExactAct(g, x, a, prefix) };
    })
  );
  const base = fp.clone();
  const wPlans: WeightPlan[] = weights.map((w, i) => {
    // the hard-rounded weight under the FP weight's name: what its codes reproduce
    base.setInitializer(Tensor.fromFloat32(w.site.weight!, w.dims, hard[i].data));
    return { site: w.site, q: weightQuantizer(w) };
  });
  return applyPlan(base, wPlans, aPlans, { deploy: true }).deploy!;
}

/** Everything {@link runAdfq} measured, besides the model. */
export interface AdfqReport {
  /** Per-unit reports, in network order. */
  units: UnitReport[];
  /** Seconds spent in captures and quantizer initialization (outside the optimization loops). */
  setupSeconds: number;
  /** Seconds spent in the optimization loops. */
  trainSeconds: number;
}

/** Optional hooks of {@link runAdfq} (tests and the throughput tool). */
export interface AdfqHooks {
  /** Called after each unit is optimized and frozen. */
  onUnit?: (r: UnitReport) => void;
}

/**
 * Quantize `ctx.graph` with ADFQ-ViT; returns the fake-quant model and the
 * per-unit optimization report.
 */
export async function runAdfq(
  ctx: QuantContext,
  hooks: AdfqHooks = {},
): Promise<{ model: QuantizedModel; report: AdfqReport }> {
  const o = { ...ADFQ_DEFAULTS, ...ctx.options } as AdfqOptions;
  const rt = ctx.runtime;
  const nImages = ctx.calib.length;
  const units = findUnits(ctx.graph, ctx.sites);
  const states: UnitState[] = [];
  const reports: UnitReport[] = [];
  let train = 0;
  const t00 = performance.now();
  await reconstructUnits(ctx, units, async ({ index: ui, unit, graph: unitGraph, data }) => {
    ctx.step?.(`${unit.id} unit ${ui + 1}/${units.length}: ${o.iters} steps`);
    const st = unitState(ctx, unit, o);
    await initActs(rt, st, unitGraph, data, o, ctx.batchSize);
    const tg = buildTrainGraph(
      unitGraph,
      unit,
      st.weights,
      st.acts,
      { out: data.fpOut.dims, attn: data.fpAttn?.dims },
      {
        klWeight: o.lambR > 0 ? 1 / o.lambR : 0,
        temperature: o.temperature,
        klAxis: o.attentionKlAxis,
        recLoss: o.recLoss,
        gradients: o.gradients,
      },
    );
    const recon: ReconOptions = {
      iters: o.iters,
      batch: o.batch,
      lrV: o.lrV,
      lrStep: o.lrStep,
      roundWeight: o.roundWeight,
      bStart: o.bStart,
      bEnd: o.bEnd,
      warmup: o.warmup,
      inputProb: o.inputProb,
      klWeight: o.lambR > 0 ? 1 / o.lambR : 0,
      temperature: o.temperature,
      klAxis: o.attentionKlAxis,
      recLoss: o.recLoss,
      gradients: o.gradients,
      seed: (ctx.seed * 1000003 + ui * 7919) >>> 0,
    };
    const r = await trainUnit(rt, unit, tg, data, st.weights, st.acts, recon, ctx.log);
    train += r.seconds;
    reports.push(r);
    hooks.onUnit?.(r);
    states.push(st);
    return {
      weights: st.weights.map((w) => ({ site: w.site, data: hardWeight(w), dims: w.dims })),
      acts: st.acts,
    };
  });
  const setup = (performance.now() - t00) / 1000 - train;
  const weights = states.flatMap((s) => s.weights);
  const hard = weights.map((w) => ({ site: w.site, data: hardWeight(w), dims: w.dims }));
  const allActs = states.flatMap((s) => s.acts);
  const graph = quantizeGraph(ctx.graph, hard, allActs);
  const deploy = adfqDeploy(ctx.graph, weights, hard, allActs);
  const rec = new LayerRecorder(ctx);
  weights.forEach((w, i) => {
    rec.add(w.site, "weight", w.site.weight!, {
      bits: w.bits,
      scale: w.scale[0],
      quantizer: "per-channel asym, AdaRound",
      sqnrDb: sqnrDb(w.w, hard[i].data),
    });
  });
  for (const a of states.flatMap((s) => s.acts)) {
    for (const t of a.targets) {
      rec.add(t.site, a.tensor, a.value, {
        bits: a.bits,
        scale: actScale(a),
        quantizer: describeAct(a),
      });
    }
  }
  const layers = await rec.records();
  const mean = (f: (r: UnitReport) => number) =>
    reports.reduce((acc, r) => acc + f(r), 0) / Math.max(reports.length, 1);
  const improved = reports.filter((r) => r.recAfter < r.recBefore).length;
  const ips = reports.filter((r) => r.iters > 0).map((r) => r.itersPerSec);
  const notes = [
    `module-wise reconstruction of ${units.length} units x ${o.iters} iterations, batch ${o.batch}, ` +
    `${nImages} calibration images (reference: 5000 iterations, 1024 images), activation init on ${
      Math.min(o.initSamples, nImages)
    } images`,
    `QDrop ${o.inputProb}; attention KL over the ${o.attentionKlAxis} axis, T ${o.temperature}, weight ${
      o.lambR > 0 ? (1 / o.lambR).toFixed(3) : "0 (off)"
    }; rounding loss ${o.roundWeight}, b ${o.bStart}->${o.bEnd} after ${o.warmup * 100}% warm-up`,
    `outlier tau qkv ${o.outlierQkv}, fc1 ${o.outlierFc1}; shift-log2 ${o.shiftLog2}; ` +
    `patch-embed/head ${
      o.firstLast8bit ? "at 8 bits (weights and inputs)" : "at target bits (image input quantized)"
    }; ` +
    `rec loss ${o.recLoss}; gradients ${o.gradients}; 2-D search ${
      o.searchBins > 0 ? `${o.searchBins}-bin histogram + ${o.searchRescore} exact` : "exact"
    }`,
    `unit rec loss (mean over units) ${mean((r) => r.recBefore).toExponential(3)} -> ${
      mean((r) => r.recAfter).toExponential(3)
    }, lower after optimization on ${improved}/${reports.length} units`,
    ips.length
      ? `optimization ${Math.min(...ips).toFixed(1)}-${
        Math.max(...ips).toFixed(1)
      } it/s per unit, ${train.toFixed(1)} s in optimization loops`
      : "no optimization steps (initialization only)",
  ].join("; ");
  return {
    model: {
      graph,
      layers,
      notes,
      deployable: {
        graph: deploy,
        kind:
          `${QDQ_KIND}; ADFQ-ViT's per-patch outlier (qkv, fc1 inputs), Shift-Log2 (fc2 input) and log-sqrt2 (softmax) quantizers float`,
      },
    },
    report: { units: reports, setupSeconds: setup, trainSeconds: train },
  };
}

const APPROX = [
  "module-wise reconstruction runs with the manifest's iterations and calibration images (on shipped data fewer than the reference's 3000-5000 iterations and 1024 images; the notes give the numbers)",
  "the 2-D grid search of q, k^T and V ranks every candidate on histograms of the values and re-scores the best few exactly (searchBins 0: all exactly, as the reference)",
  "gradients by default as the reference code: the steps of the per-patch, uniform and Shift-Log2 input quantizers learn through the final multiply only and pass no gradient to their inputs (Shift-Log2 only through its min-shift), so in the attention unit only proj and, through the attention KL, the q/k part of qkv get reconstruction gradients, and in the MLP unit fc2 (gradients ste: straight-through everywhere)",
  "the attention KL is over the head axis (dim 1) as the reference computes it (attentionKlAxis token: the key axis)",
  "each step forwards only the QDrop batch (the reference also forwards the quantized-input half, which only changes the Shift-Log2 batch minimum); Swin attention units keep their shift mask in training (the reference trains window attention without it)",
  "the training graph takes log-quantizer codes from Log (a code can differ by one at exact grid boundaries); the final graph's quantizers are exact",
].join("; ");

/** ADFQ-ViT as a vitq method. */
export const adfq: QuantMethod = defineMethod<AdfqOptions>({
  name: "adfq",
  paper: "Jiang et al., ADFQ-ViT, arXiv 2407.02763 (Neural Networks 2025)",
  description:
    "per-patch outlier-aware quantizer (qkv/fc1 inputs), Shift-Log2 (fc2 input), log-sqrt2 (softmax), 2-D searched q/k/V, per-channel AdaRound weights; attention-score-enhanced module-wise reconstruction with QDrop",
  approximations: APPROX,
  defaults: { ...ADFQ_DEFAULTS },
  optionsSchema: ADFQ_SCHEMA,
  async quantize(ctx: QuantContext) {
    return (await runAdfq(ctx)).model;
  },
});
