/**
 * TSPTQ-ViT (Tai, Lin, Wu, ICASSP 2023, arXiv 2305.12901): two-scaled scaling
 * factors for fully quantized 8-bit vision transformers, **reconstructed from the
 * abstract** (no code or full text is public; `../shared/methods.md` section 3).
 *
 * What is quantized (`scope: "full"`, the default): every linear layer's weight
 * and input and both attention matmul operands as PTQ4ViT does, plus every
 * LayerNorm input (the residual stream, including the patch-embedding plus
 * position output and the final norm's input) for every node that reads it, the
 * softmax output and the GELU output (`core/quant/scope.ts`).
 *
 * Calibration (as PTQ4ViT's, whose search it runs): 32 images, parallel (every
 * layer searched on FP inputs), Hessian-guided metric (squared output error
 * weighted by the squared task-loss gradient), alternating rounds on the grid
 * Δ0·(α + i(β-α)/n). Weights, linear inputs and the Q·Kᵀ / V operands get
 * PTQ4ViT's uniform quantizers and searched steps. Then:
 * - V-2SF (`core/quant/two_scaled.ts`) replaces the uniform quantizer of the
 *   A·V softmax operand (unsigned small region) and of the fc2 input (post-GELU,
 *   signed small region); its large step L and ratio exponent m are searched in
 *   alternating rounds (m in 1..mMax with L fixed, then L on the grid with m
 *   fixed; small step S = L/2^m), scored on the consuming layer's output with the
 *   layer's other operand as calibrated (the fc2 weight at its searched step, V
 *   in FP as PTQ4ViT scores the softmax operand).
 * - O-2SF quantizes every LayerNorm input: base step S and a per-channel flag
 *   for S·2^m, searched the same way and scored on the LayerNorm's output.
 * `v2sf: false` / `o2sf: false` give the ablation rows (PTQ4ViT's searched
 * uniform quantizer on the softmax and GELU outputs; a searched per-tensor
 * uniform step on LayerNorm inputs).
 *
 * @module
 */
import { type Captured, captureValues } from "../core/runtime/capture.ts";
import { outputGradients } from "../core/autodiff/gradients.ts";
import type { Graph } from "../core/onnx/graph.ts";
import type { Site } from "../core/onnx/sites.ts";
import { type ActPlan, applyPlan } from "../core/quant/apply.ts";
import {
  distributeParts,
  integerMatMuls,
  QDQ_KIND,
  unhoistHeadCodes,
} from "../core/quant/deploy.ts";
import {
  activationTargets,
  type ActTarget,
  type LnConsumers,
  type Scope,
} from "../core/quant/scope.ts";
import { type Metric, scoringFeeds, scoringGraph } from "../core/quant/search.ts";
import {
  emitV2sf,
  emitV2sfParts,
  emitV2sfWith,
  type FlagRule,
  type V2sfKind,
  type V2sfQuantizer,
  v2sfSteps,
} from "../core/quant/two_scaled.ts";
import {
  constOf,
  type Feeds,
  i64,
  initStep,
  lnInputName,
  lnInputPlan,
  lnInputStep,
  runScoring,
  searchLnInput,
  searchTwoScaled,
  smallStep,
} from "../core/quant/ln_input.ts";
import { ptq4vit, type Ptq4vitOptions } from "./ptq4vit.ts";
import { CellCache } from "./cache.ts";
import {
  defineMethod,
  type LayerRecord,
  type OptionSchema,
  type OptionsSchema,
  type QuantContext,
  type QuantizedModel,
  type QuantMethod,
} from "./types.ts";

/** PTQ4ViT options TSPTQ does not take: the two-scaled quantizers replace the twin ones. */
const NOT_PASSED = ["twinSoftmax", "twinGelu", "variant", "softmaxPartner"] as const;

/** PTQ4ViT's options that TSPTQ passes on to its search. */
type PtqPart = Omit<Ptq4vitOptions, (typeof NOT_PASSED)[number]>;

/** TSPTQ-ViT's options: its own, and PTQ4ViT's search options (less the twin quantizers'). */
export interface TsptqOptions extends PtqPart {
  /** `full` (fully quantized, the paper's setting) or `linear` (PTQ4ViT's scope). */
  scope: Scope;
  /** V-2SF on the softmax and GELU outputs (off: PTQ4ViT's searched uniform quantizer). */
  v2sf: boolean;
  /** O-2SF on LayerNorm inputs (off: a searched per-tensor uniform step). */
  o2sf: boolean;
  /** Inferred: how O-2SF flags a channel (`threshold`: would clip at S; `error`: smaller error). */
  flagRule: FlagRule;
  /** Inferred: largest ratio exponent m searched (both quantizers). */
  mMax: number;
  /** Inferred: which readers of a LayerNorm input see it quantized (`all`: the residual stream too). */
  lnConsumers: LnConsumers;
}

type OwnOptions = Omit<TsptqOptions, keyof PtqPart>;

const OWN_DEFAULTS: OwnOptions = {
  scope: "full",
  v2sf: true,
  o2sf: true,
  flagRule: "threshold",
  mMax: 10,
  lnConsumers: "all",
};

const OWN_SCHEMA: OptionsSchema<OwnOptions> = {
  scope: {
    enum: ["linear", "full"],
    description:
      "full: also every LayerNorm input and the softmax and GELU outputs (fully quantized, the paper's setting); linear: PTQ4ViT's scope",
  },
  v2sf: {
    type: "boolean",
    description:
      "V-2SF on post-softmax and post-GELU values (off: PTQ4ViT's searched uniform quantizer)",
  },
  o2sf: {
    type: "boolean",
    description: "O-2SF on LayerNorm inputs (off: a searched per-tensor uniform step)",
  },
  flagRule: {
    enum: ["threshold", "error"],
    description:
      "inferred: O-2SF outlier flag per channel: threshold (the channel would clip at the base step) or error (the step with the smaller squared error)",
  },
  mMax: {
    type: "integer",
    minimum: 1,
    maximum: 20,
    description:
      "inferred: largest ratio exponent m (steps S and S*2^m) searched by V-2SF and O-2SF",
  },
  lnConsumers: {
    enum: ["all", "ln"],
    description:
      "inferred: readers of a LayerNorm input that see it quantized: all (the residual stream feeds the residual adds quantized too) or ln (the LayerNorm only)",
  },
};

/** A copy of `x` without PTQ4ViT's twin-quantizer options. */
function ptqPart<T>(x: Record<string, T>): Record<string, T> {
  const out = { ...x };
  for (const k of NOT_PASSED) delete out[k];
  return out;
}

/** The PTQ4ViT options of a TSPTQ cell: its search options, twin quantizers off. */
function ptqOptions(o: TsptqOptions): Ptq4vitOptions {
  const out = { ...(ptq4vit.defaults as Ptq4vitOptions) } as unknown as Record<string, unknown>;
  const given = o as unknown as Record<string, unknown>;
  // every search option TSPTQ takes, defaulted or optional (e.g. `coarse`)
  for (const k of Object.keys(ptqPart(ptq4vit.optionsSchema as Record<string, unknown>))) {
    if (k in given) out[k] = given[k];
  }
  return { ...(out as unknown as Ptq4vitOptions), twinSoftmax: false, twinGelu: false };
}

function maxOf(x: Float32Array): number {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] > m) m = x[i];
  return m;
}

/**
 * The matmul scoring graph of `core/quant/search.ts` with its stacked candidates
 * computed in the graph by V-2SF from the raw operand `x` and per-candidate
 * parameters `p` = [small step, large step] (the same emitter as the final graph).
 */
function v2sfScoringGraph(
  problem: {
    aDims: number[];
    bDims: number[];
    oDims: number[];
    metric: Metric;
    bias?: Float32Array;
  },
  kind: V2sfKind,
  bits: number,
): Graph {
  const g = scoringGraph({ vary: "a", ...problem });
  g.inputs = g.inputs.filter((v) => v.name !== "cand");
  g.addInput("x", problem.aDims);
  g.addInput("p", ["K", 2]);
  const rank = problem.aDims.length;
  const shape = i64(g, "pshape", [-1, ...Array(rank).fill(1)]);
  const col = (i: number) =>
    g.addNode("Reshape", [
      g.addNode("Gather", ["p", i64(g, "col", [i])], {
        attributes: [{ name: "axis", type: 2, i: 1 }],
      }),
      shape,
    ]);
  const { lo, hi, top } = v2sfSteps({ bits, step: 1, m: 1, kind });
  const cand = emitV2sfWith(g, "x", {
    small: col(0),
    large: col(1),
    lo: g.constFloat("lo", lo),
    hi: g.constFloat("hi", hi),
    zero: g.constFloat("zero", 0),
    top: g.constFloat("top", top),
  });
  for (const n of g.nodes) n.inputs = n.inputs.map((v) => (v === "cand" ? cand : v));
  return g;
}

/** The record of one quantized activation. */
function record(
  t: ActTarget,
  bits: number,
  scale: number,
  quantizer: string,
  elements: number,
): LayerRecord {
  return {
    site: t.site.id,
    kind: t.site.kind,
    role: t.site.role,
    block: t.site.block,
    tensor: t.tensor,
    bits,
    scale,
    quantizer,
    sqnrDb: null,
    elements,
  } as LayerRecord;
}

/** FP values and output gradients the two-scaled searches read, shared by the cells of a model. */
interface CalibData {
  values: Map<string, Captured>;
  grads: Map<string, Float32Array> | undefined;
}

const cache = new CellCache<CalibData>();

/**
 * Capture (once per model and calibration set) every value the two-scaled
 * searches of the full scope may read: the softmax and GELU outputs' layers
 * (operands, outputs) and every LayerNorm's input and output, with the output
 * gradients for the Hessian metric.
 */
function calibData(ctx: QuantContext<TsptqOptions>, ptq: Ptq4vitOptions): Promise<CalibData> {
  const hessian = ptq.metric === "hessian";
  const depends = ["tsptq", hessian ? ptq.gradient : "none", ptq.gradBatch, ctx.batchSize];
  return cache.get(ctx, depends, async () => {
    const all = activationTargets(ctx.graph, ctx.sites, "full");
    const sites = all.filter((t) => ["softmax", "gelu", "ln_in"].includes(t.role)).map((t) =>
      t.site
    );
    const outputs = [...new Set(sites.map((s) => s.output))];
    const values = [
      ...new Set([
        ...outputs,
        ...sites.flatMap((s) => s.kind === "matmul" ? s.operands! : [s.input!]),
      ]),
    ];
    const captured = await captureValues(ctx.runtime, ctx.graph, values, ctx.calib, ctx.batchSize);
    const grads = hessian
      ? await outputGradients(ctx.runtime, ctx.graph, outputs, ctx.calib, {
        mode: ptq.gradient,
        subBatch: ptq.gradBatch,
      })
      : undefined;
    return { values: captured, grads };
  });
}

/** Replace the activation quantizer PTQ4ViT put on input `slot` of `site`'s node by the raw value. */
function unquantizeSlot(g: Graph, site: Site, slot: number, raw: string): void {
  const n = g.nodes.find((x) => x.name === site.node);
  if (!n) throw new Error(`tsptq: node ${site.node} of ${site.id} not in the PTQ4ViT graph`);
  n.inputs[slot] = raw;
}

/** One V-2SF quantizer of the plan: the node input it replaces PTQ4ViT's quantizer on. */
interface V2sfSite {
  site: Site;
  slot: number;
  value: string;
  q: V2sfQuantizer;
}

/**
 * Undo PTQ4ViT's deploy rewrite of the matmul `site` (`integerMatMuls`: MatMulInteger of the
 * operands' codes, Cast, Mul by the steps or one DequantizeLinear, under the site node's
 * name; operands quantized before the head split get their own codes again,
 * `unhoistHeadCodes`) back to a MatMul of
 * DequantizeLinear operands, so that one operand can be quantized anew. A node that is
 * not so rewritten is left. Returns the DequantizeLinear values (per-channel ones need
 * their rank for `integerMatMuls` again).
 */
function undoIntegerMatMul(g: Graph, site: Site): string[] {
  let producer = g.producers();
  const n = g.nodes.find((x) => x.name === site.node);
  if (!n) throw new Error(`tsptq: node ${site.node} of ${site.id} not in the deploy graph`);
  // the steps after the int32 sums: Cast + Mul, or a DequantizeLinear (`stepsAsDequantize`)
  const first = producer.get(n.inputs[0]);
  const dqSteps = n.opType === "DequantizeLinear" && first?.opType === "MatMulInteger";
  if (n.opType !== "Mul" && !dqSteps) return [];
  const mmi = dqSteps ? first : producer.get(first?.inputs[0] ?? "");
  if (mmi?.opType !== "MatMulInteger") {
    throw new Error(`tsptq: ${site.id} is a Mul but not an integer matmul in the deploy graph`);
  }
  // operands quantized before the head split: their own QuantizeLinear again
  if (unhoistHeadCodes(g, mmi)) producer = g.producers();
  const dq = [0, 1].map((k) => {
    const q = producer.get(mmi.inputs[k]);
    if (q?.opType !== "QuantizeLinear") {
      throw new Error(`tsptq: ${site.id}: operand ${k} of its integer matmul is not quantized`);
    }
    return g.addNode("DequantizeLinear", [mmi.inputs[k], q.inputs[1], q.inputs[2]], {
      attributes: q.attributes,
    });
  });
  n.opType = "MatMul";
  n.inputs = dq;
  n.attributes = [];
  return dq;
}

/**
 * TSPTQ-ViT's deploy graph, from PTQ4ViT's: each V-2SF operand replaces PTQ4ViT's
 * quantizer on its slot as two int8 operands (`emitV2sfParts`: small-step and large-step
 * codes), and the consuming A·V matmul or fc2 layer is split into one integer product per
 * part, the products added (`distributeParts`; per-head V as MatMulInteger with the steps
 * after it, `integerMatMuls`). The LayerNorm-input plans (`lnPlans`: O-2SF, per-channel
 * steps feeding LayerNorm and the residual adds, no integer kernel) stay float fake-quant.
 * `rankOf` gives the rank of a captured value.
 */
function tsptqDeploy(
  ptqDeploy: Graph,
  v2: V2sfSite[],
  lnPlans: ActPlan[],
  rankOf: (value: string) => number,
): Graph {
  const g = ptqDeploy.clone();
  const ranks = new Map<string, number>();
  for (const v of v2) {
    const dq = undoIntegerMatMul(g, v.site);
    dq.forEach((d, k) => ranks.set(d, rankOf(v.site.operands![k])));
    unquantizeSlot(g, v.site, v.slot, v.value);
  }
  const sums = new Map<string, string[]>();
  const plans: ActPlan[] = v2.map((v) => ({
    site: v.site,
    slot: v.slot,
    emit: (h, input, prefix) => {
      if (v.q.bits > 8) return emitV2sf(h, input, v.q, prefix);
      const { sum, parts } = emitV2sfParts(h, input, v.q, prefix);
      sums.set(sum, parts);
      return sum;
    },
  }));
  const out = applyPlan(g, [], [...plans, ...lnPlans], { inPlace: true }).graph;
  distributeParts(out, sums);
  integerMatMuls(out, ranks);
  out.prune();
  out.topoSort();
  return out;
}

async function quantizeTsptq(ctx: QuantContext<TsptqOptions>): Promise<QuantizedModel> {
  const o = ctx.options;
  const { bits } = ctx;
  const ptq = ptqOptions(o);
  // 1. PTQ4ViT's calibration: weights, linear inputs, matmul operands (uniform quantizers)
  const base = await ptq4vit.quantize({
    ...ctx,
    options: ptq as unknown as Record<string, unknown>,
  });
  ctx.log("tsptq: PTQ4ViT search done");
  const targets = activationTargets(ctx.graph, ctx.sites, o.scope, {
    lnConsumers: o.lnConsumers,
  });
  const v2Targets = o.v2sf ? targets.filter((t) => t.role === "softmax" || t.role === "gelu") : [];
  for (const t of v2Targets) {
    if (t.slot === undefined) {
      throw new Error(
        `tsptq: ${t.site.id}: the ${t.role} output reaches its consumer through other nodes; V-2SF needs it to feed the A·V or fc2 input directly`,
      );
    }
  }
  const lnTargets = targets.filter((t) => t.role === "ln_in");
  // 2. FP values and output gradients of the layers the new quantizers feed
  const { values: captured, grads } = await calibData(ctx, ptq);
  ctx.log("tsptq: FP values and gradients captured");
  const factors = Array.from({ length: o.n }, (_, i) => o.alpha + (i * (o.beta - o.alpha)) / o.n);
  const perImage = (v: string) => captured.get(v)!.data.length / ctx.calib.length;
  const acts: ActPlan[] = [];
  const v2: V2sfSite[] = [];
  const records: LayerRecord[] = [];
  const g = base.graph;
  // 3. V-2SF on the softmax operand of A·V and the fc2 input
  for (const t of v2Targets) {
    ctx.log(`${t.site.id}: V-2SF search`);
    const kind: V2sfKind = t.role === "softmax" ? "unsigned" : "signed";
    const x = captured.get(t.value)!;
    const site = t.site;
    let fixed: Float32Array, aDims: number[], bDims: number[], oDims: number[];
    let bias: Float32Array | undefined;
    const out = captured.get(site.output)!;
    if (site.kind === "matmul") {
      const b = captured.get(site.operands![1])!;
      fixed = b.data;
      [aDims, bDims, oDims] = [x.dims, b.dims, out.dims];
    } else {
      // the fc2 weight as PTQ4ViT quantized it, in [Cin, Cout] layout
      const node = g.nodes.find((n) => n.name === site.node)!;
      const w = g.initializers.get(node.inputs[1]) ?? g.constant(node.inputs[1]);
      if (!w) throw new Error(`tsptq: ${site.id}: quantized weight not found`);
      const [r, c] = w.dims;
      const transB = node.opType === "Gemm" && site.weightOutAxis === 0;
      const wd = w.float32();
      const cin = transB ? c : r, cout = transB ? r : c;
      fixed = transB
        ? Float32Array.from({ length: wd.length }, (_, i) => {
          const ii = Math.floor(i / cout), jj = i % cout;
          return wd[jj * cin + ii];
        })
        : wd;
      const rows = x.data.length / cin;
      [aDims, bDims, oDims] = [[rows, cin], [cin, cout], [rows, cout]];
      bias = site.bias ? constOf(ctx.graph, site.bias, cout, 0) : undefined;
    }
    const scoring = v2sfScoringGraph({ aDims, bDims, oDims, metric: o.metric, bias }, kind, bits.a);
    const fixedFeeds: Feeds = {
      x: { data: x.data, dims: aDims },
      ...scoringFeeds(
        { vary: "a", aDims, bDims, oDims, metric: o.metric, bias },
        fixed,
        out.data,
        grads?.get(site.output),
      ),
    };
    const perCand = 4 * Math.max(x.data.length, out.data.length) * 3;
    const top = 2 ** (bits.a - 1) - 1;
    const l0 = initStep(kind === "unsigned" ? maxOf(x.data) : Math.max(maxOf(x.data), 0), top);
    const best = await searchTwoScaled(
      l0,
      factors,
      o.mMax,
      o.rounds,
      (cands) =>
        runScoring(
          ctx.runtime,
          scoring,
          fixedFeeds,
          cands.map((k) => [smallStep(k), Math.fround(smallStep(k) * 2 ** k.m)]),
          2,
          perCand,
        ),
    );
    const q = { bits: bits.a, step: smallStep(best), m: best.m, kind };
    unquantizeSlot(g, site, t.slot!, t.value);
    acts.push({ site, slot: t.slot, emit: (h, input, prefix) => emitV2sf(h, input, q, prefix) });
    v2.push({ site, slot: t.slot!, value: t.value, q });
    records.push(record(t, bits.a, q.step, `V-2SF ${kind}, m=${q.m}`, perImage(t.value)));
  }
  // 4. LayerNorm inputs: O-2SF (or a searched per-tensor step)
  for (const t of lnTargets) {
    ctx.log(`${t.site.id}: ${o.o2sf ? "O-2SF" : "uniform"} search`);
    const site = t.site;
    const x = captured.get(t.value)!;
    const c = x.dims[x.dims.length - 1];
    const r = await searchLnInput(ctx.runtime, {
      x,
      y: captured.get(site.output)!.data,
      grad: grads?.get(site.output),
      gamma: constOf(ctx.graph, site.gamma, c, 1),
      beta: constOf(ctx.graph, site.beta, c, 0),
      epsilon: site.epsilon ?? 1e-5,
    }, {
      bits: bits.a,
      metric: o.metric,
      factors,
      o2sf: o.o2sf,
      mMax: o.mMax,
      rounds: o.rounds,
      flagRule: o.flagRule,
    });
    acts.push(lnInputPlan(t, r, x.dims.length));
    records.push(record(t, bits.a, lnInputStep(r), lnInputName(r), perImage(t.value)));
  }
  // the deploy graph first: PTQ4ViT's deploy graph with the same edits
  const lnPlans = acts.slice(v2.length);
  const deploy = base.deployable &&
    tsptqDeploy(base.deployable.graph, v2, lnPlans, (v) => captured.get(v)!.dims.length);
  const { graph } = applyPlan(g, [], acts, { inPlace: true });
  const replaced = new Set(v2Targets.map((t) => `${t.site.id}/${t.tensor}`));
  // PTQ4ViT records a per-head operand as tensors a[h0], a[h1], ...
  const layers = [
    ...base.layers.filter((l) => !replaced.has(`${l.site}/${l.tensor.replace(/\[h\d+\]$/, "")}`)),
    ...records,
  ];
  const notes = `TSPTQ-ViT reconstruction: scope ${o.scope}; V-2SF ${
    o.v2sf ? "on" : "off"
  }; O-2SF ${
    o.o2sf ? `on (flag rule ${o.flagRule}, inferred)` : "off"
  }; m in 1..${o.mMax} (inferred); LayerNorm input read quantized by ${
    o.lnConsumers === "all" ? "all its readers (inferred)" : "the LayerNorm only (inferred)"
  }; PTQ4ViT search: ${base.notes ?? ""}`;
  return {
    graph,
    layers,
    notes,
    deployable: deploy && {
      graph: deploy,
      kind:
        `${QDQ_KIND}; TSPTQ-ViT's V-2SF operands as two int8 operands (small- and large-step codes) whose integer products are added; O-2SF LayerNorm inputs float`,
    },
  };
}

const APPROX =
  "reconstruction from the abstract and secondary summaries (no code or full text public): V-2SF = 1 flag + (k-1)-bit payload, small step S, large step S*2^m (post-softmax unsigned small region, post-GELU signed small region), decode by shift; O-2SF = per-tensor base step + per-channel flag for S*2^m on LayerNorm inputs; inferred choices are options: flagRule (threshold | error), mMax (10), lnConsumers (all: the quantized residual stream feeds the residual adds too | ln), search order (m then L per round, S = L/2^m), O-2SF scored on the LayerNorm output only, V-2SF scored after PTQ4ViT's rounds with the fc2 weight at its searched step and V in FP; weights, linear inputs and Q/K/V operands are PTQ4ViT's (pseudo-label gradient by default, see ptq4vit)";

/** TSPTQ-ViT: two-scaled scaling factors (V-2SF, O-2SF), fully quantized, PTQ4ViT's search. */
export const tsptq: QuantMethod = defineMethod<TsptqOptions>({
  name: "tsptq",
  paper: "Tai, Lin, Wu, TSPTQ-ViT, ICASSP 2023 (arXiv 2305.12901); reconstructed from the abstract",
  description:
    "fully quantized: PTQ4ViT's Hessian-guided search for linear layers and matmul operands; V-2SF (two steps S, S*2^m; decode by shift) on post-softmax and post-GELU values; O-2SF (per-channel flag for S*2^m) on every LayerNorm input",
  approximations: APPROX,
  defaults: {
    ...(ptqPart(ptq4vit.defaults as Record<string, unknown>) as unknown as PtqPart),
    ...OWN_DEFAULTS,
  },
  optional: ptq4vit.optional,
  optionsSchema: {
    ...(ptqPart(ptq4vit.optionsSchema as Record<string, OptionSchema>) as unknown as OptionsSchema<
      PtqPart
    >),
    ...OWN_SCHEMA,
  },
  quantize: quantizeTsptq,
});
