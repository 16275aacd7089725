/**
 * Baseline methods, the floor of every table: `minmax` and `percentile`.
 *
 * Both follow PTQ4ViT's conventions for what is quantized: the weights and the
 * inputs of every linear layer (qkv, proj, fc1, fc2, head, Swin reduction), the
 * patch-embedding weight (its input, the image, stays FP), and both operands of
 * the two attention matmuls. Softmax, GELU and LayerNorm computation, biases and
 * residual adds stay FP. Every quantizer is symmetric, signed and per tensor.
 * Option `scope: "full"` quantizes, in addition, every LayerNorm input, the
 * softmax output and the GELU output for the consumers they feed
 * (`core/quant/scope.ts`): the fully quantized baseline rows.
 *
 * @module
 */
import { collectStats } from "../core/runtime/capture.ts";
import type { Site } from "../core/onnx/sites.ts";
import { QDQ_KIND } from "../core/quant/deploy.ts";
import { type ActPlan, applyPlan, siteWeight, type WeightPlan } from "../core/quant/apply.ts";
import { absMax, symmetric, symmetricScale } from "../core/quant/uniform.ts";
import { activationTargets, type Scope, targetPlan } from "../core/quant/scope.ts";
import { defineMethod, type QuantContext, type QuantizedModel, type QuantMethod } from "./types.ts";
import { LayerRecorder } from "./layers.ts";
import { quantileSorted } from "../core/quantile.ts";

/** An activation tensor quantized by the baselines: a node input slot and its value. */
export interface ActSlot {
  site: Site;
  slot: number;
  value: string;
  tensor: string;
}

/** The activation inputs quantized under PTQ4ViT's conventions. */
export function standardActSlots(sites: Site[]): ActSlot[] {
  const out: ActSlot[] = [];
  for (const s of sites) {
    if (s.kind === "linear" && s.role !== "patch_embed") {
      out.push({ site: s, slot: 0, value: s.input!, tensor: "input" });
    } else if (s.kind === "matmul") {
      out.push({ site: s, slot: 0, value: s.operands![0], tensor: "a" });
      out.push({ site: s, slot: 1, value: s.operands![1], tensor: "b" });
    }
  }
  return out;
}

/** Shared body of the two baselines: `clip(stats)` gives each activation's clipping bound. */
async function uniformBaseline(
  ctx: QuantContext<{ scope: Scope }>,
  actBound: (value: string, stats: Awaited<ReturnType<typeof collectStats>>) => number,
  minPercentile: number | undefined,
  weightBound: (w: Float32Array) => number,
): Promise<QuantizedModel> {
  const { bits } = ctx;
  const linears = ctx.sites.filter((s) => s.kind === "linear");
  const slots = activationTargets(ctx.graph, ctx.sites, ctx.options.scope);
  const stats = await collectStats(
    ctx.runtime,
    ctx.graph,
    slots.map((s) => s.value),
    ctx.calib,
    ctx.batchSize,
    minPercentile,
  );
  const weights: WeightPlan[] = linears.map((site) => {
    const { data } = siteWeight(ctx.graph, site);
    return { site, q: symmetric(bits.w, symmetricScale(weightBound(data), bits.w)) };
  });
  const acts: ActPlan[] = slots.map((s) =>
    targetPlan(s, { q: symmetric(bits.a, symmetricScale(actBound(s.value, stats), bits.a)) })
  );
  const { graph, weights: applied, deploy } = applyPlan(ctx.graph, weights, acts, { deploy: true });
  const rec = new LayerRecorder(ctx);
  applied.forEach((w, i) =>
    rec.add(w.site, "weight", w.site.weight!, {
      bits: bits.w,
      scale: weights[i].q.scale[0],
      quantizer: "per-tensor sym",
      sqnrDb: w.sqnrDb,
    })
  );
  slots.forEach((s, i) =>
    rec.add(s.site, s.tensor, s.value, {
      bits: bits.a,
      scale: acts[i].q!.scale[0],
      quantizer: "per-tensor sym",
      elements: stats.get(s.value)!.count / ctx.calib.length,
    })
  );
  const layers = await rec.records();
  return { graph, layers, deployable: deploy && { graph: deploy, kind: QDQ_KIND } };
}

/** Percentile of |w| over a weight tensor (exact, by sorting a copy). */
function weightPercentile(w: Float32Array, p: number): number {
  if (p >= 100) return absMax(w);
  return quantileSorted(Float32Array.from(w, Math.abs).sort(), p / 100);
}

/** The `scope` option of both baselines. */
const SCOPE_SCHEMA = {
  enum: ["linear", "full"],
  description:
    "linear: weights and inputs of linear layers and attention-matmul operands (PTQ4ViT's convention); full: also every LayerNorm input and the softmax and GELU outputs",
};

/** Options of `minmax`. */
export interface MinmaxOptions {
  scope: Scope;
}

/** Options of `percentile`. */
export interface PercentileOptions {
  /** Percentile of |x| that clips activations. */
  percentile: number;
  /** Percentile of |w| that clips weights (100: the maximum). */
  weightPercentile: number;
  scope: Scope;
}

/** MinMax: steps from the absolute maximum of each tensor over the calibration set. */
export const minmax: QuantMethod = defineMethod<MinmaxOptions>({
  name: "minmax",
  paper: "baseline",
  description:
    "symmetric per-tensor uniform; step = max|x| / (2^(k-1)-1) for weights and calibrated activations",
  approximations: "none (baseline)",
  defaults: { scope: "linear" },
  optionsSchema: { scope: SCOPE_SCHEMA },
  quantize: (ctx) => uniformBaseline(ctx, (v, st) => st.get(v)!.absMax, undefined, absMax),
});

/** Percentile: activations clipped at a calibrated percentile of |x|. */
export const percentile: QuantMethod = defineMethod<PercentileOptions>({
  name: "percentile",
  paper: "baseline",
  description:
    "symmetric per-tensor uniform; activations clipped at the p-th percentile of |x| over the calibration set, weights at the q-th percentile of |w|",
  approximations: "none (baseline)",
  defaults: { percentile: 99.99, weightPercentile: 100, scope: "linear" },
  optionsSchema: {
    percentile: {
      type: "number",
      exclusiveMinimum: 50,
      maximum: 100,
      description: "percentile of |x| over the calibration set that clips each activation",
    },
    weightPercentile: {
      type: "number",
      exclusiveMinimum: 50,
      maximum: 100,
      description: "percentile of |w| that clips each weight tensor (100: its maximum)",
    },
    scope: SCOPE_SCHEMA,
  },
  quantize(ctx) {
    const p = ctx.options.percentile;
    const wp = ctx.options.weightPercentile;
    return uniformBaseline(
      ctx,
      (v, st) => st.get(v)!.percentile(p),
      p,
      (w) => weightPercentile(w, wp),
    );
  },
});
