/**
 * Module-wise reconstruction of one unit (ADFQ-ViT's attention-score-enhanced
 * module-wise optimization, after QDrop / BRECQ): a gradient graph of the
 * unit's fake-quant subgraph (AdaRound soft weights, learned activation steps)
 * and the optimization loop around it.
 *
 * Loss of one step, on a batch of `batch` calibration images drawn with
 * replacement:
 * - reconstruction: Σ over dim 1 of (Ô - O_fp)², averaged over the other
 *   dims (`recLoss: "reference"`), or the plain mean (`"mean"`);
 * - rounding: λ·Σ(1 - |2h(V) - 1|^b) over the unit's weights, off for the
 *   first `warmup` share of the steps, then b decays linearly from `bStart`
 *   to `bEnd`;
 * - attention units: `klWeight`·KL(softmax(A_q/T) ‖ softmax(A_fp/T)) as the
 *   reference computes it (`KLDiv(log_softmax(A_fp/T), softmax(A_q/T))`,
 *   batch mean) over the head axis (`klAxis: "head"`) or the key axis.
 * Input: QDrop — each element is the quantized model's input with
 * probability `inputProb`, else the FP input. Adam on V (constant lr) and on
 * the steps (cosine decay to 0). One ONNX Runtime session serves all steps.
 *
 * @module
 */
import { MIN_STEP } from "../quant/uniform.ts";
import { DataType, type Graph, makeAttr, Tensor } from "../onnx/graph.ts";
import type { Runtime, Session, TensorData } from "../runtime/runtime.ts";
import type { Captured } from "../runtime/capture.ts";
import { addFloatInput, buildGradientGraph } from "../autodiff/backward.ts";
import { Adam, type Param } from "../autodiff/adam.ts";
import type { LossTerm } from "../autodiff/backward.ts";
import { Rng } from "../rng.ts";
import type { Unit } from "./units.ts";
import {
  type ActState,
  emitTrainAct,
  emitTrainRegularizer,
  emitTrainWeight,
  type GradientMode,
  setStep,
  stepDims,
  stepValue,
  type WeightState,
} from "./quantizers.ts";
import { floorCodes } from "./init.ts";

/** Optimization settings of one unit. */
export interface ReconOptions {
  /** Optimization steps (0: keep the initialization; round to nearest). */
  iters: number;
  /** Images per step. */
  batch: number;
  /** Adam learning rate of the AdaRound variables (constant). */
  lrV: number;
  /** Adam learning rate of the activation steps (cosine decay to 0). */
  lrStep: number;
  /** Rounding-regularizer weight λ. */
  roundWeight: number;
  /** Exponent b of the regularizer at the start of the decay. */
  bStart: number;
  /** Exponent b at the end. */
  bEnd: number;
  /** Share of the steps without the regularizer (b decays after it). */
  warmup: number;
  /** QDrop: probability of taking the quantized input per element. */
  inputProb: number;
  /** Weight of the attention KL term (the reference's 1 / lamb_r). */
  klWeight: number;
  /** Temperature of the attention KL. */
  temperature: number;
  /** Softmax axis of the attention KL: the head axis (reference) or the key axis. */
  klAxis: "head" | "token";
  /** Reconstruction loss: Σ over dim 1, mean over the rest (reference), or the mean. */
  recLoss: "reference" | "mean";
  /** Gradients through activation quantizers: as the reference code, or straight-through. */
  gradients: GradientMode;
  /** Seed of batch sampling and QDrop. */
  seed: number;
}

/** Cached tensors of a unit over the calibration images (axis 0: images, or windows). */
export interface UnitTensors {
  /** Number of calibration images (axis 0 holds a multiple of it). */
  nImages: number;
  /** The unit's input in the model quantized so far. */
  qIn: Captured;
  /** The unit's input in the FP model. */
  fpIn: Captured;
  /** The unit's output in the FP model. */
  fpOut: Captured;
  /** FP attention map (softmax output) of an attention unit. */
  fpAttn?: Captured;
  /**
   * Extra inputs of the unit graph used only for their shape (see
   * `shapeSources`): name, and dims for all calibration images.
   */
  shapeInputs?: { name: string; dims: number[] }[];
}

/** Zero-filled feeds of the shape-only inputs for `n` images (buffers cached per size). */
export function shapeFeeds(data: UnitTensors, n: number): Record<string, TensorData> {
  const out: Record<string, TensorData> = {};
  for (const s of data.shapeInputs ?? []) {
    const dims = [s.dims[0] / data.nImages * n, ...s.dims.slice(1)];
    const size = dims.reduce((a, b) => a * b, 1);
    const key = `${s.name}:${size}`;
    let buf = zeroCache.get(key);
    if (!buf) zeroCache.set(key, buf = new Float32Array(size));
    out[s.name] = { data: buf, dims };
  }
  return out;
}

const zeroCache = new Map<string, Float32Array>();

/** A unit's gradient graph and the names of its inputs and outputs. */
export interface TrainGraph {
  /** The gradient graph. */
  graph: Graph;
  /** Output holding the total loss. */
  lossName: string;
  /** Gradient output per parameter input. */
  gradNames: Map<string, string>;
  /** Reconstruction-loss output. */
  rec: string;
  /** Attention-KL output (attention units). */
  kl?: string;
  /** Graph input of the unit's input. */
  input: string;
  /** Graph input of the FP output. */
  target: string;
  /** Graph input of the FP attention map. */
  attnFp?: string;
  /** Graph input of the regularizer exponent b. */
  beta: string;
  /** Graph input of the regularizer weight (0 during warm-up). */
  lambda: string;
  /** AdaRound variable input per weight. */
  vNames: Map<WeightState, string>;
  /** Step input per learned activation quantizer. */
  stepNames: Map<ActState, string>;
  /** Non-differentiated copy of a step (fed the same values), where the quantizer needs one. */
  stepCopies: Map<ActState, string>;
}

/** Per-unit outcome of the optimization. */
export interface UnitReport {
  /** Unit id. */
  unit: string;
  /** Unit kind. */
  kind: string;
  /** Optimization steps run. */
  iters: number;
  /** Wall time of the optimization loop. */
  seconds: number;
  /** Optimization steps per second (0 when no step ran). */
  itersPerSec: number;
  /** Reconstruction loss on all calibration images (quantized inputs) before optimization (round to nearest, initial steps). */
  recBefore: number;
  /** The same after optimization (hard rounding, learned steps). */
  recAfter: number;
  /** Attention KL (unweighted) before optimization. */
  klBefore?: number;
  /** Attention KL after optimization. */
  klAfter?: number;
  /** Reconstruction loss of every optimization step (its QDrop batch, soft rounding). */
  trace: number[];
}

/**
 * Build the gradient graph of a unit. `unitGraph` is the unit's FP subgraph
 * (input: the unit input value; outputs: the unit output and, for attention
 * units, the softmax output); `dims` gives the captured shapes (axis 0 is
 * replaced by a symbolic batch).
 */
export function buildTrainGraph(
  unitGraph: Graph,
  unit: Unit,
  weights: WeightState[],
  acts: ActState[],
  dims: { out: number[]; attn?: number[] },
  o: Pick<ReconOptions, "klWeight" | "temperature" | "klAxis" | "recLoss" | "gradients">,
): TrainGraph {
  const g = unitGraph.clone();
  const byName = new Map(g.nodes.map((n) => [n.name, n]));
  const beta = addFloatInput(g, "adfq_beta", []);
  const lambda = addFloatInput(g, "adfq_lambda", []);
  const vNames = new Map<WeightState, string>();
  const regs: string[] = [];
  weights.forEach((w, i) => {
    const node = byName.get(w.site.node);
    if (!node) throw new Error(`${unit.id}: weight node ${w.site.node} not in the unit graph`);
    const vName = addFloatInput(g, `adfq_V${i}`, w.dims);
    const { output, h } = emitTrainWeight(g, w, floorCodes(w.w, w.dims, w.axis, w.scale), vName);
    node.inputs[1] = output;
    regs.push(emitTrainRegularizer(g, h, beta));
    vNames.set(w, vName);
  });
  const stepNames = new Map<ActState, string>();
  const stepCopies = new Map<ActState, string>();
  acts.forEach((a, i) => {
    let step: string | undefined, copy: string | undefined;
    if (a.learn) {
      step = addFloatInput(g, `adfq_S${i}`, stepDims(a));
      stepNames.set(a, step);
      if (o.gradients === "ste" && a.p?.kind === "shift-log2") {
        copy = addFloatInput(g, `adfq_S${i}_copy`, stepDims(a));
        stepCopies.set(a, copy);
      }
    }
    const nodes = a.targets.map((t) => byName.get(t.site.node)).filter((n) => !!n);
    if (nodes.length === 0) return;
    const input = nodes[0]!.inputs[a.targets[0].slot];
    const q = emitTrainAct(g, input, a, `${a.id}_t`, step, o.gradients, copy);
    a.targets.forEach((t) => {
      const n = byName.get(t.site.node);
      if (n) n.inputs[t.slot] = q;
    });
  });
  const target = addFloatInput(g, "adfq_target", ["batch", ...dims.out.slice(1)]);
  const d = g.addNode("Sub", [unit.output, target]);
  let rec = g.addNode("ReduceMean", [g.addNode("Mul", [d, d])], {
    attributes: [makeAttr("keepdims", 0)],
  });
  if (o.recLoss === "reference" && dims.out.length > 1) {
    rec = g.addNode("Mul", [rec, g.constFloat("adfq_dim1", dims.out[1])]);
  }
  const terms: LossTerm[] = [{ kind: "sum", value: rec }];
  let kl: string | undefined, attnFp: string | undefined;
  if (unit.attn && dims.attn && o.klWeight > 0) {
    attnFp = addFloatInput(g, "adfq_attn_fp", ["batch", ...dims.attn.slice(1)]);
    const rank = dims.attn.length;
    // softmax over a (possibly short, non-last) axis by hand: A/T lies in [0, 1/T], so
    // exp cannot overflow, and a Reduce over the axis beats ORT's per-row Softmax
    const axis = o.klAxis === "head" ? rank - 3 : rank - 1;
    const invT = g.constFloat("adfq_invT", 1 / o.temperature);
    const axes = g.setInitializer(Tensor.fromInt64(g.uniqueName("adfq_axis"), [1], [axis]));
    const logSoftmax = (v: string) => {
      const l = g.addNode("Mul", [v, invT]);
      const lse = g.addNode("Log", [
        g.addNode("ReduceSum", [g.addNode("Exp", [l]), axes], {
          attributes: [makeAttr("keepdims", 1)],
        }),
      ]);
      return g.addNode("Sub", [l, lse]);
    };
    const logp = logSoftmax(unit.attn);
    const logf = logSoftmax(attnFp);
    const p = g.addNode("Exp", [logp]);
    const total = g.addNode("ReduceSum", [g.addNode("Mul", [p, g.addNode("Sub", [logp, logf])])], {
      attributes: [makeAttr("keepdims", 0)],
    });
    const rows = g.addNode("Cast", [
      g.addNode("Gather", [
        g.addNode("Shape", [unit.attn]),
        g.setInitializer(Tensor.fromInt64(g.uniqueName("adfq_zero_i"), [], [0])),
      ], { attributes: [makeAttr("axis", 0)] }),
    ], { attributes: [makeAttr("to", DataType.FLOAT)] });
    kl = g.addNode("Div", [total, rows]);
    terms.push({
      kind: "sum",
      value: g.addNode("Mul", [kl, g.constFloat("adfq_klw", o.klWeight)]),
    });
  }
  if (regs.length) {
    const reg = regs.length === 1 ? regs[0] : g.addNode("Sum", regs);
    terms.push({ kind: "sum", value: g.addNode("Mul", [reg, lambda]) });
  }
  const wrt = [...vNames.values(), ...stepNames.values()];
  const gg = buildGradientGraph(g, {
    loss: terms,
    wrt,
    outputs: kl ? [rec, kl] : [rec],
  });
  return {
    graph: gg.graph,
    lossName: gg.lossName,
    gradNames: gg.gradNames,
    rec,
    kl,
    input: unit.input,
    target,
    attnFp,
    beta,
    lambda,
    vNames,
    stepNames,
    stepCopies,
  };
}

/** Rows of a captured tensor for a list of images (each image owns `dims[0]/nImages` rows). */
function gatherRows(
  t: Captured,
  nImages: number,
  images: number[],
  out?: Float32Array,
): TensorData {
  const rows = t.dims[0] / nImages;
  const per = t.data.length / t.dims[0] * rows;
  const data = out ?? new Float32Array(images.length * per);
  images.forEach((im, i) => data.set(t.data.subarray(im * per, (im + 1) * per), i * per));
  return { data, dims: [images.length * rows, ...t.dims.slice(1)] };
}

/** The regularizer's exponent b and weight at (1-based) step `count`, as the reference schedules them. */
export function roundingSchedule(
  count: number,
  o: Pick<ReconOptions, "iters" | "warmup" | "bStart" | "bEnd" | "roundWeight">,
): { b: number; lambda: number } {
  const start = o.warmup * o.iters;
  if (count < start) return { b: o.bStart, lambda: 0 };
  const rel = (count - start) / Math.max(o.iters - start, 1e-12);
  return { b: o.bEnd + (o.bStart - o.bEnd) * Math.max(0, 1 - rel), lambda: o.roundWeight };
}

/** Hard-rounding stand-in for V: ±100 gives h(V) exactly 1 or 0. */
function hardV(v: Float32Array): Float32Array {
  return v.map((x) => (x >= 0 ? 100 : -100));
}

/** Mean reconstruction loss and KL over all cached images with quantized inputs and hard rounding. */
async function evaluateUnit(
  session: Session,
  tg: TrainGraph,
  data: UnitTensors,
  weights: WeightState[],
  acts: ActState[],
  batch: number,
): Promise<{ rec: number; kl?: number }> {
  let rec = 0, kl = 0, seen = 0;
  for (let start = 0; start < data.nImages; start += batch) {
    const n = Math.min(batch, data.nImages - start);
    const images = Array.from({ length: n }, (_, i) => start + i);
    const feeds: Record<string, TensorData> = {
      ...shapeFeeds(data, n),
      [tg.input]: gatherRows(data.qIn, data.nImages, images),
      [tg.target]: gatherRows(data.fpOut, data.nImages, images),
      [tg.beta]: { data: Float32Array.of(2), dims: [] },
      [tg.lambda]: { data: Float32Array.of(0), dims: [] },
    };
    if (tg.attnFp) feeds[tg.attnFp] = gatherRows(data.fpAttn!, data.nImages, images);
    for (const w of weights) feeds[tg.vNames.get(w)!] = { data: hardV(w.v), dims: w.dims };
    for (const a of acts) {
      const s = tg.stepNames.get(a), c = tg.stepCopies.get(a);
      if (s) feeds[s] = { data: stepValue(a), dims: stepDims(a) };
      if (c) feeds[c] = feeds[s!];
    }
    const out = await session.run(feeds);
    rec += out[tg.rec].data[0] * n;
    if (tg.kl) kl += out[tg.kl].data[0] * n;
    seen += n;
  }
  return { rec: rec / seen, kl: tg.kl ? kl / seen : undefined };
}

/**
 * Optimize one unit in place: the weights' rounding variables V and the
 * learned steps of `acts` are updated; returns the report. With `iters: 0`
 * only the before/after evaluation runs (they are equal).
 */
export async function trainUnit(
  rt: Runtime,
  unit: Unit,
  tg: TrainGraph,
  data: UnitTensors,
  weights: WeightState[],
  acts: ActState[],
  o: ReconOptions,
  log: (msg: string) => void = () => {},
): Promise<UnitReport> {
  const session = await rt.createSession(tg.graph, `${unit.id} reconstruction graph`);
  try {
    const before = await evaluateUnit(session, tg, data, weights, acts, o.batch);
    const trace: number[] = [];
    const t0 = performance.now();
    if (o.iters > 0) {
      const vParams = new Map<string, Param>();
      for (const w of weights) vParams.set(tg.vNames.get(w)!, { data: w.v, dims: w.dims });
      const sParams = new Map<string, Param>();
      const learned = acts.filter((a) => tg.stepNames.has(a));
      const stepData = new Map<ActState, Float32Array>();
      for (const a of learned) {
        const d = stepValue(a);
        stepData.set(a, d);
        sParams.set(tg.stepNames.get(a)!, { data: d, dims: stepDims(a) });
      }
      const adamV = vParams.size
        ? new Adam(vParams, { lr: o.lrV, minLr: o.lrV, steps: o.iters })
        : undefined;
      const adamS = sParams.size
        ? new Adam(sParams, { lr: o.lrStep, minLr: 0, steps: o.iters })
        : undefined;
      const rng = new Rng(o.seed);
      const images = new Array<number>(o.batch);
      let mixed: Float32Array | undefined, fpBuf: Float32Array | undefined;
      for (let t = 0; t < o.iters; t++) {
        for (let i = 0; i < o.batch; i++) images[i] = rng.int(data.nImages);
        const q = gatherRows(data.qIn, data.nImages, images, mixed);
        mixed = q.data;
        const f = gatherRows(data.fpIn, data.nImages, images, fpBuf);
        fpBuf = f.data;
        if (o.inputProb < 1) {
          for (let i = 0; i < mixed.length; i++) if (rng.next() >= o.inputProb) mixed[i] = fpBuf[i];
        }
        const sched = roundingSchedule(t + 1, o);
        const feeds: Record<string, TensorData> = {
          ...shapeFeeds(data, o.batch),
          [tg.input]: q,
          [tg.target]: gatherRows(data.fpOut, data.nImages, images),
          [tg.beta]: { data: Float32Array.of(sched.b), dims: [] },
          [tg.lambda]: { data: Float32Array.of(sched.lambda), dims: [] },
        };
        if (tg.attnFp) feeds[tg.attnFp] = gatherRows(data.fpAttn!, data.nImages, images);
        for (const [k, p] of vParams) feeds[k] = p;
        for (const [k, p] of sParams) feeds[k] = p;
        for (const [a, c] of tg.stepCopies) feeds[c] = sParams.get(tg.stepNames.get(a)!)!;
        const out = await session.run(feeds);
        trace.push(out[tg.rec].data[0]);
        const grad = (k: string) => out[tg.gradNames.get(k)!].data;
        adamV?.step(new Map([...vParams.keys()].map((k) => [k, grad(k)])));
        adamS?.step(new Map([...sParams.keys()].map((k) => [k, grad(k)])));
        for (const p of sParams.values()) {
          for (let i = 0; i < p.data.length; i++) if (!(p.data[i] > MIN_STEP)) p.data[i] = MIN_STEP;
        }
      }
      for (const a of learned) setStep(a, stepData.get(a)!);
    }
    const seconds = (performance.now() - t0) / 1000;
    const after = o.iters > 0
      ? await evaluateUnit(session, tg, data, weights, acts, o.batch)
      : before;
    const report: UnitReport = {
      unit: unit.id,
      kind: unit.kind,
      iters: o.iters,
      seconds,
      itersPerSec: o.iters > 0 ? o.iters / seconds : 0,
      recBefore: before.rec,
      recAfter: after.rec,
      klBefore: before.kl,
      klAfter: after.kl,
      trace,
    };
    log(
      `${unit.id}: rec ${before.rec.toExponential(3)} -> ${after.rec.toExponential(3)}${
        before.kl !== undefined
          ? `, kl ${before.kl.toExponential(3)} -> ${after.kl!.toExponential(3)}`
          : ""
      } (${o.iters} steps, ${report.itersPerSec.toFixed(1)} it/s)`,
    );
    return report;
  } finally {
    await session.release();
  }
}
