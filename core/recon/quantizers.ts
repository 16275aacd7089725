/**
 * Quantizer state of module-wise reconstruction (ADFQ-ViT) and its two
 * emissions:
 *
 * - exact ({@link quantizeGraph}): weights stored dequantized (AdaRound hard
 *   rounding, or round-to-nearest before training) and activation quantizers
 *   emitted with the bit-exact emitters of `core/quant/` — the final fake-quant
 *   graph and the partially quantized graphs that feed later units;
 * - trainable ({@link emitTrainWeight}, {@link emitTrainAct}): AdaRound soft
 *   weights with the rounding variable V as a graph input, activation
 *   quantizers whose step δ is a graph input, for gradient graphs.
 *
 * Gradients in the trainable form follow the reference code by default
 * (`GradientMode` "reference"; "ste" is straight-through everywhere): the step of a
 * learned activation quantizer (per-patch, per-tensor uniform, Shift-Log2)
 * gets its gradient only through the final multiply by δ (the code is
 * rounded with `torch.round`, no straight-through estimator), and nothing
 * flows back through such a quantizer's input (Shift-Log2 passes the gradient
 * of its min-shift only); the fixed q, kᵀ and V quantizers round with the
 * straight-through estimator; the log-√2 quantizer of the attention map passes
 * no gradient.
 *
 * @module
 */
import { DataType, type Graph, makeAttr, Tensor } from "../onnx/graph.ts";
import type { Site } from "../onnx/sites.ts";
import { applyPlan } from "../quant/apply.ts";
import { emitPerPatchQuant, type PerPatchQuantizer } from "../quant/outlier.ts";
import {
  emitLogSqrt2Quant,
  emitShiftLog2Quant,
  type LogSqrt2Quantizer,
  SHIFT_EPS,
  type ShiftLog2Quantizer,
} from "../quant/log.ts";
import { emitFakeQuant } from "../quant/uniform.ts";
import { emitRectifiedSigmoid, emitRoundingRegularizer } from "../autodiff/quant_grads.ts";
import { type AffineParams, channelLayout } from "./init.ts";

/** Weight quantizer of one linear site: per output channel, asymmetric, AdaRound. */
export interface WeightState {
  /** The linear site. */
  site: Site;
  /** Bit width (codes 0..2^k - 1). */
  bits: number;
  /** FP weight (initializer layout). */
  w: Float32Array;
  /** Initializer dims. */
  dims: number[];
  /** Output-channel axis of the initializer. */
  axis: number;
  /** Step per output channel. */
  scale: Float32Array;
  /** Integer zero point per output channel. */
  zeroPoint: Float32Array;
  /** AdaRound rounding variable (same layout as `w`); learned. */
  v: Float32Array;
}

/** Parameters of an activation quantizer, by kind. */
export type ActParams =
  | { kind: "per-patch"; q: PerPatchQuantizer }
  | { kind: "uniform"; q: AffineParams }
  | { kind: "log-sqrt2"; q: LogSqrt2Quantizer }
  | { kind: "shift-log2"; q: ShiftLog2Quantizer };

/** An activation quantizer: which node inputs it quantizes and with what. */
export interface ActState {
  /** Id, e.g. `b0.qkv.input`, `b0.qk.a`. */
  id: string;
  /** The quantized value (FP name in the graph). */
  value: string;
  /** Node input slots fed by the quantized value (several for separate q, k, v). */
  targets: { site: Site; slot: number }[];
  /** Layer-record tensor name: `input`, `a` or `b`. */
  tensor: string;
  /** Bit width. */
  bits: number;
  /** Whether the step δ is learned during reconstruction. */
  learn: boolean;
  /** Rank of the value. */
  rank: number;
  /** Parameters once initialized. */
  p?: ActParams;
}

/** Short quantizer description for layer records. */
export function describeAct(a: ActState): string {
  if (!a.p) return "uninitialized";
  switch (a.p.kind) {
    case "per-patch":
      return `per-patch asym (tau ${a.p.q.tau})${a.learn ? ", learned step" : ""}`;
    case "uniform":
      return `per-tensor asym${a.learn ? ", learned step" : " (2-D search)"}`;
    case "log-sqrt2":
      return "log-sqrt2";
    case "shift-log2":
      return `shift-log2 (${a.p.q.variant})${a.learn ? ", learned step" : ""}`;
  }
}

/** The representative step of a quantizer for layer records. */
export function actScale(a: ActState): number {
  if (!a.p) return NaN;
  return a.p.kind === "per-patch" ? a.p.q.scale[0] : a.p.q.scale;
}

/** Emit the exact (bit-compatible) fake-quant subgraph of an activation quantizer. */
export function emitExactAct(g: Graph, input: string, a: ActState, prefix: string): string {
  const p = a.p;
  if (!p) throw new Error(`${a.id}: quantizer not initialized`);
  switch (p.kind) {
    case "per-patch":
      return emitPerPatchQuant(g, input, { ...p.q, axis: 1 }, prefix, a.rank);
    case "uniform":
      return emitFakeQuant(
        g,
        input,
        {
          bits: a.bits,
          signed: false,
          scale: Float32Array.of(p.q.scale),
          zeroPoint: Float32Array.of(p.q.zeroPoint),
        },
        prefix,
      );
    case "log-sqrt2":
      return emitLogSqrt2Quant(g, input, p.q, prefix);
    case "shift-log2":
      return emitShiftLog2Quant(g, input, p.q, prefix);
  }
}

/**
 * A copy of `graph` with the given weights replaced by dequantized values
 * and the given activation quantizers emitted exactly in front of their
 * target slots. Quantizers without parameters are skipped.
 */
export function quantizeGraph(
  graph: Graph,
  weights: { site: Site; data: Float32Array; dims: number[] }[],
  acts: ActState[],
): Graph {
  const g = graph.clone();
  const byName = new Map(g.nodes.map((n) => [n.name, n]));
  for (const w of weights) {
    const n = byName.get(w.site.node);
    if (!n) continue;
    const name = g.uniqueName(`${w.site.weight}_adfq`);
    g.setInitializer(Tensor.fromFloat32(name, w.dims, w.data));
    n.inputs[1] = name;
  }
  const plans = acts.filter((a) => a.p).flatMap((a) =>
    a.targets.filter((t) => byName.has(t.site.node)).map((t) => ({
      site: t.site,
      slot: t.slot,
      emit: (h: Graph, input: string, prefix: string) => emitExactAct(h, input, a, prefix),
    }))
  );
  return applyPlan(g, [], plans).graph;
}

/** Dims broadcasting a per-channel vector along `axis` of a rank-`rank` tensor. */
export function channelDims(rank: number, axis: number, n: number): number[] {
  return Array.from({ length: rank }, (_, i) => (i === axis ? n : 1));
}

/** Cast an integer-valued float tensor to int32 and back: same values, no gradient. */
function stopGradient(g: Graph, v: string): string {
  const i = g.addNode("Cast", [v], { attributes: [makeAttr("to", DataType.INT32)] });
  return g.addNode("Cast", [i], { attributes: [makeAttr("to", DataType.FLOAT)] });
}

/**
 * Emit the AdaRound soft weight of `w` into a trainable graph:
 * `(clip(floor(W/Δ) + h(V) + z, 0, 2^k - 1) - z)·Δ` with `vName` (a graph
 * input shaped like W) as V. Returns the soft weight and `h(V)`.
 */
export function emitTrainWeight(
  g: Graph,
  w: WeightState,
  floorCodes: Float32Array,
  vName: string,
): { output: string; h: string } {
  const { channels } = channelLayout(w.dims, w.axis);
  const cd = channelDims(w.dims.length, w.axis, channels);
  const s = g.constFloat(`${w.site.id}_wscale`, w.scale, cd);
  const z = g.constFloat(`${w.site.id}_wzp`, w.zeroPoint, cd);
  const base = g.addNode("Add", [
    g.setInitializer(Tensor.fromFloat32(g.uniqueName(`${w.site.id}_wfloor`), w.dims, floorCodes)),
    z,
  ]);
  const h = emitRectifiedSigmoid(g, vName);
  const code = g.addNode("Clip", [
    g.addNode("Add", [base, h]),
    g.constFloat("adfq_zero", 0),
    g.constFloat("adfq_qmax", 2 ** w.bits - 1),
  ]);
  return { output: g.addNode("Mul", [g.addNode("Sub", [code, z]), s]), h };
}

/** AdaRound's rounding regularizer Σ(1 - |2h - 1|^β) of one weight, β a value name. */
export function emitTrainRegularizer(g: Graph, h: string, beta: string): string {
  return emitRoundingRegularizer(g, h, beta);
}

/** Dims of the learned step of an activation quantizer (per-patch: one per token). */
export function stepDims(a: ActState): number[] {
  if (a.p?.kind === "per-patch") return channelDims(a.rank, 1, a.p.q.scale.length);
  return [];
}

/** Initial value of the learned step of an activation quantizer. */
export function stepValue(a: ActState): Float32Array {
  const p = a.p!;
  if (p.kind === "per-patch") return p.q.scale.slice();
  return Float32Array.of(p.q.scale);
}

/** Write a learned step back into the quantizer's parameters. */
export function setStep(a: ActState, s: Float32Array): void {
  const p = a.p!;
  if (p.kind === "per-patch") p.q = { ...p.q, scale: s.slice() };
  else if (p.kind === "uniform") p.q = { ...p.q, scale: s[0] };
  else p.q = { ...p.q, scale: s[0] };
}

/**
 * Code of a log grid with `r` levels per octave from the ratio x/δ:
 * clip(round(-r·log2(clip(x/δ, tiny, big))), 0, 2^k) (2^k: "zero"), taken
 * from Log (may differ by one from the exact code at a grid boundary).
 * Without gradient, or with the straight-through estimator (`ste`).
 */
function emitLogCode(
  g: Graph,
  ratio: string,
  r: number,
  bits: number,
  prefix: string,
  ste = false,
): string {
  let v = g.addNode("Log", [
    g.addNode("Clip", [
      ratio,
      g.constFloat(`${prefix}_tiny`, 1e-30),
      g.constFloat(`${prefix}_big`, 3e38),
    ]),
  ]);
  v = g.addNode("Round", [g.addNode("Mul", [v, g.constFloat(`${prefix}_mult`, -r / Math.LN2)])]);
  if (ste) {
    // STE through round; the clip passes the gradient for codes in [0, 2^k)
    return g.addNode("Round", [
      g.addNode("Clip", [
        v,
        g.constFloat(`${prefix}_qlo`, -0.5),
        g.constFloat(`${prefix}_qhi`, 2 ** bits - 0.501),
      ]),
    ]);
  }
  v = g.addNode("Clip", [
    v,
    g.constFloat(`${prefix}_qlo`, 0),
    g.constFloat(`${prefix}_qhi`, 2 ** bits),
  ]);
  return stopGradient(g, v);
}

/**
 * Level factor of a log-grid code (times δ gives the value): 2^(-q/r)
 * (equal to the reference's 2^-ceil(q/2)·√2 for odd q, up to float32
 * rounding), 0 for the code 2^k.
 */
function emitLogLevel(g: Graph, code: string, r: number, bits: number, prefix: string): string {
  const k = (name: string, v: number) => g.constFloat(`${prefix}_${name}`, v);
  const zero = g.addNode("GreaterOrEqual", [code, k("qn", 2 ** bits)]);
  const f = g.addNode("Exp", [g.addNode("Mul", [code, k("lnstep", -Math.LN2 / r)])]);
  return g.addNode("Where", [zero, k("zero", 0), f]);
}

/** How gradients pass through trainable activation quantizers. */
export type GradientMode = "reference" | "ste";

/**
 * Emit a trainable activation quantizer on `input`; `step` is the step's
 * value name (a graph input) for learned quantizers, ignored otherwise.
 *
 * `mode: "reference"` (the default) follows the reference code (see the
 * module comment). `mode: "ste"` rounds with the straight-through estimator
 * everywhere, as QDrop/BRECQ-style reconstruction does: uniform steps get the
 * LSQ gradient and pass the gradient to their input inside the range; log
 * quantizers pass dx̂/dx = x̂/x inside their range, and a learned Shift-Log2 δ
 * still learns through its final multiply only (its code reads `stepCopy`, a
 * second input fed the same δ that is not differentiated).
 */
export function emitTrainAct(
  g: Graph,
  input: string,
  a: ActState,
  prefix: string,
  step?: string,
  mode: GradientMode = "reference",
  stepCopy?: string,
): string {
  const ste = mode === "ste";
  const p = a.p;
  if (!p) throw new Error(`${a.id}: quantizer not initialized`);
  const c = (name: string, v: number | Float32Array, dims?: number[]) =>
    g.constFloat(`${prefix}_${name}`, v, dims);
  if (p.kind === "log-sqrt2") {
    // reference: no gradient (torch.round); a cheaper forward than the exact emitter
    const code = emitLogCode(
      g,
      g.addNode("Div", [input, c("delta", p.q.scale)]),
      2,
      p.q.bits,
      prefix,
      ste,
    );
    return g.addNode("Mul", [emitLogLevel(g, code, 2, p.q.bits, prefix), c("delta2", p.q.scale)]);
  }
  if (p.kind === "per-patch" || p.kind === "uniform") {
    const qmax = 2 ** a.bits - 1;
    const perPatch = p.kind === "per-patch";
    const dims = perPatch ? stepDims(a) : [];
    const s = a.learn && step
      ? step
      : perPatch
      ? c("scale", p.q.scale, dims)
      : c("scale", p.q.scale);
    const z = perPatch ? c("zp", p.q.zeroPoint, dims) : c("zp", p.q.zeroPoint);
    let v = g.addNode("Add", [g.addNode("Round", [g.addNode("Div", [input, s])]), z]);
    if (a.learn && !ste) {
      // reference: torch.round without STE -> the step learns through the final multiply only
      v = stopGradient(g, g.addNode("Clip", [v, c("qmin", 0), c("qmax", qmax)]));
    } else {
      // matmul quantizers (and `ste`): STE through round, gradient where 0 <= code <= qmax
      v = g.addNode("Round", [g.addNode("Clip", [v, c("lo", -0.5), c("hi", qmax + 0.499)])]);
    }
    const out = g.addNode("Mul", [g.addNode("Sub", [v, z]), s]);
    if (!perPatch) return out;
    const tau = Math.fround((p.q as PerPatchQuantizer).tau);
    const outlier = g.addNode("Greater", [g.addNode("Abs", [input]), c("tau", tau)]);
    return g.addNode("Where", [outlier, input, out]);
  }
  // Shift-Log2: code from Log (approximate at exact boundaries), level table, times δ
  const q = p.q;
  const delta = a.learn && step ? step : c("delta", q.scale);
  const r = q.variant === "reference" ? 2 : 1;
  let xs: string, shift: string;
  if (q.variant === "reference") {
    // min(x) with the reference's gradient (all of it to the minimum element): the mask of
    // minimal elements carries no gradient, ReduceMin only feeds the mask
    const keep = [makeAttr("keepdims", 1)];
    const mn = g.addNode("ReduceMin", [input], { attributes: keep });
    const mask = g.addNode("Cast", [g.addNode("Equal", [input, mn])], {
      attributes: [makeAttr("to", DataType.FLOAT)],
    });
    shift = g.addNode("Div", [
      g.addNode("ReduceSum", [g.addNode("Mul", [input, mask])], { attributes: keep }),
      g.addNode("ReduceSum", [mask], { attributes: keep }),
    ]);
    xs = g.addNode("Add", [g.addNode("Sub", [input, shift]), c("eps", SHIFT_EPS)]);
  } else {
    shift = c("shift", Math.fround(q.shift));
    xs = g.addNode("Add", [input, shift]);
  }
  const codeDelta = ste && a.learn ? (stepCopy ?? c("delta_ng", q.scale)) : delta;
  const code = emitLogCode(g, g.addNode("Div", [xs, codeDelta]), r, q.bits, prefix, ste);
  const ys = g.addNode("Mul", [emitLogLevel(g, code, r, q.bits, prefix), delta]);
  if (q.variant === "reference") {
    return g.addNode("Sub", [g.addNode("Add", [ys, shift]), c("eps2", SHIFT_EPS)]);
  }
  return g.addNode("Sub", [ys, shift]);
}
