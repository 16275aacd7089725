/**
 * Searches of two-scaled quantizers (TSPTQ-ViT's V-2SF and O-2SF) and of the
 * quantizer of a LayerNorm input in the fully quantized scope, shared by the
 * methods that quantize LayerNorm inputs (TSPTQ-ViT, MPTQ-ViT with
 * `scope: "full"`):
 * - {@link searchTwoScaled}: alternating search of (ratio exponent m, large step L);
 * - {@link runScoring}: batches of candidate rows through a scoring graph;
 * - {@link lnScoringGraph}: a LayerNorm's output error for per-channel input steps;
 * - {@link searchLnInput}: O-2SF (or a per-tensor uniform step) on a LayerNorm
 *   input, scored on the LayerNorm's output, and {@link lnInputPlan} its plan.
 *
 * @module
 */
import { Graph, Tensor } from "../onnx/graph.ts";
import type { Runtime } from "../runtime/runtime.ts";
import type { ActPlan } from "./apply.ts";
import type { Metric } from "./search.ts";
import type { ActTarget } from "./scope.ts";
import {
  emitO2sf,
  type FlagRule,
  o2sf,
  o2sfFlags,
  type O2sfQuantizer,
  o2sfSteps,
} from "./two_scaled.ts";
import { absMax, fakeQuant, symmetric } from "./uniform.ts";

function argmin(xs: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] < xs[best]) best = i;
  return best;
}

/** PTQ4ViT's initial step: bound / (top + 0.5), top the largest code. */
export function initStep(bound: number, top: number): number {
  const s = Math.fround(bound / (top + 0.5));
  return s > 0 ? s : 1e-8;
}

/** A two-parameter quantizer searched in alternating rounds: exponent m and large step L. */
export interface TwoScaled {
  m: number;
  large: number;
}

/**
 * Alternating search of (m, L): per round, m over 1..mMax with L fixed, then L
 * over the grid L0·factors with m fixed. `score` scores a batch of candidates.
 * A round whose m search returns the previous round's m stops the search: its
 * L search would score the same candidates again (the result is the same as
 * running all rounds).
 */
export async function searchTwoScaled(
  l0: number,
  factors: number[],
  mMax: number,
  rounds: number,
  score: (cands: TwoScaled[]) => Promise<number[]>,
): Promise<TwoScaled & { score: number }> {
  let cur: TwoScaled = { m: 1, large: l0 };
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const ms = Array.from({ length: mMax }, (_, i) => ({ m: i + 1, large: cur.large }));
    let s = await score(ms);
    const m = ms[argmin(s)].m;
    // same m as the last round: the L search would repeat it exactly (converged)
    if (r > 0 && m === cur.m) break;
    const ls = factors.map((f) => ({ m, large: Math.fround(l0 * f) }));
    s = await score(ls);
    const i = argmin(s);
    cur = ls[i];
    best = s[i];
  }
  return { ...cur, score: best };
}

/** The small step of a two-scaled candidate: L / 2^m as float32 (L is then S·2^m exactly). */
export function smallStep(c: TwoScaled): number {
  const s = Math.fround(c.large / 2 ** c.m);
  return s > 0 ? s : 1e-30;
}

export function i64(g: Graph, prefix: string, values: number[]): string {
  return g.setInitializer(Tensor.fromInt64(g.uniqueName(prefix), [values.length], values));
}

/** LayerNorm scoring graph: candidates' per-channel steps p [K, C] quantize x [M, C]. */
export function lnScoringGraph(
  m: number,
  c: number,
  gamma: Float32Array,
  beta: Float32Array,
  eps: number,
  bits: number,
  metric: Metric,
): Graph {
  const g = Graph.create(17, "vitq-ln-score");
  g.addInput("x", [m, c]);
  g.addInput("p", ["K", c]);
  g.addInput("o", [m, c]);
  if (metric === "hessian") g.addInput("g", [m, c]);
  const lim = 2 ** (bits - 1);
  const shape = i64(g, "pshape", [-1, 1, c]);
  const p = g.addNode("Reshape", ["p", shape]);
  let q = g.addNode("Round", [g.addNode("Div", ["x", p])]);
  q = g.addNode("Clip", [q, g.constFloat("qmin", -lim), g.constFloat("qmax", lim - 1)]);
  q = g.addNode("Mul", [q, p]);
  const y = g.addNode("LayerNormalization", [
    q,
    g.constFloat("gamma", gamma, [c]),
    g.constFloat("beta", beta, [c]),
  ], { attributes: [{ name: "axis", type: 2, i: -1 }, { name: "epsilon", type: 1, f: eps }] });
  let score: string;
  if (metric === "cosine") {
    const last = i64(g, "last", [-1]);
    const keep0 = [{ name: "keepdims", type: 2, i: 0 }];
    const dot = g.addNode("ReduceSum", [g.addNode("Mul", [y, "o"]), last], { attributes: keep0 });
    const ny = g.addNode("ReduceSum", [g.addNode("Mul", [y, y]), last], { attributes: keep0 });
    const no = g.addNode("ReduceSum", [g.addNode("Mul", ["o", "o"]), last], { attributes: keep0 });
    const den = g.addNode("Sqrt", [
      g.addNode("Add", [g.addNode("Mul", [ny, no]), g.constFloat("eps", 1e-20)]),
    ]);
    const mean = g.addNode("ReduceMean", [g.addNode("Div", [dot, den])], {
      attributes: [{ name: "axes", type: 7, ints: [1] }, ...keep0],
    });
    score = g.addNode("Neg", [mean]);
  } else {
    let d = g.addNode("Sub", [y, "o"]);
    if (metric === "hessian") d = g.addNode("Mul", [d, "g"]);
    score = g.addNode("ReduceSum", [g.addNode("Mul", [d, d]), i64(g, "axes", [1, 2])], {
      attributes: [{ name: "keepdims", type: 2, i: 0 }],
    });
  }
  g.outputs = [{ name: score, type: { tensorType: { elemType: 1 } } }];
  return g;
}

/** A constant of the FP graph as float32 (γ, β, bias), or `fill` repeated when absent. */
export function constOf(g: Graph, name: string | undefined, n: number, fill: number): Float32Array {
  if (!name) return new Float32Array(n).fill(fill);
  const t = g.constant(name);
  if (!t) throw new Error(`tsptq: constant ${name} not found`);
  const v = t.float32();
  return v.length === n ? v : new Float32Array(n).fill(v[0]);
}

/** Fixed feeds of a scoring graph. */
export type Feeds = Record<string, { data: Float32Array; dims: number[] }>;

/**
 * Score candidates with a scoring graph whose input `p` holds one row of
 * `width` parameters per candidate; `perCand` bounds the bytes one candidate
 * occupies (chunks hold at most 256 MiB). Returns one score per candidate.
 */
export async function runScoring(
  rt: Runtime,
  graph: Graph,
  fixed: Feeds,
  rows: ArrayLike<number>[],
  width: number,
  perCand: number,
): Promise<number[]> {
  const s = await rt.createSession(graph, "two-scaled scoring graph");
  const chunk = Math.max(1, Math.floor((256 * 2 ** 20) / perCand));
  const out: number[] = [];
  try {
    for (let k0 = 0; k0 < rows.length; k0 += chunk) {
      const kn = Math.min(chunk, rows.length - k0);
      const p = new Float32Array(kn * width);
      for (let i = 0; i < kn; i++) p.set(rows[k0 + i], i * width);
      const res = Object.values(await s.run({ ...fixed, p: { data: p, dims: [kn, width] } }))[0];
      for (let i = 0; i < kn; i++) out.push(res.data[i]);
    }
  } finally {
    await s.release();
  }
  return out;
}

/** The quantizer chosen for a LayerNorm input. */
export type LnInputQuant =
  | { kind: "o2sf"; q: O2sfQuantizer; score: number }
  | { kind: "uniform"; bits: number; step: number; score: number };

/** What {@link searchLnInput} needs: the LayerNorm's FP input, output and output gradient. */
export interface LnInputProblem {
  /** FP input values, channels last. */
  x: { data: Float32Array; dims: number[] };
  /** FP output values of the LayerNorm (same shape). */
  y: Float32Array;
  /** dL/dy for the Hessian metric. */
  grad?: Float32Array;
  gamma: Float32Array;
  beta: Float32Array;
  epsilon: number;
}

/** Settings of {@link searchLnInput}. */
export interface LnInputSearch {
  bits: number;
  metric: Metric;
  /** Step grid factors around the initial step. */
  factors: number[];
  /** O-2SF (per-channel flag for S·2^m) or one per-tensor uniform step. */
  o2sf: boolean;
  /** O-2SF: largest ratio exponent searched (m in 1..mMax). */
  mMax: number;
  /** O-2SF: alternating (m, L) rounds. */
  rounds: number;
  flagRule: FlagRule;
}

/**
 * Search the quantizer of a LayerNorm input by the error of the LayerNorm's
 * output (TSPTQ-ViT's O-2SF: base step S and a per-channel flag for S·2^m,
 * (m, L = S·2^m) in alternating rounds; or a per-tensor step on the grid).
 */
export async function searchLnInput(
  rt: Runtime,
  p: LnInputProblem,
  s: LnInputSearch,
): Promise<LnInputQuant> {
  if (s.metric === "hessian" && !p.grad) {
    throw new Error("searchLnInput: the Hessian metric needs the LayerNorm's output gradient");
  }
  const { x } = p, { bits } = s;
  const c = x.dims[x.dims.length - 1], m = x.data.length / c;
  const lnGraph = lnScoringGraph(m, c, p.gamma, p.beta, p.epsilon, bits, s.metric);
  const feeds: Feeds = { x: { data: x.data, dims: [m, c] }, o: { data: p.y, dims: [m, c] } };
  if (s.metric === "hessian") feeds.g = { data: p.grad!, dims: [m, c] };
  const scoreLn = (rows: Float32Array[]) => runScoring(rt, lnGraph, feeds, rows, c, 4 * m * c * 3);
  const top = 2 ** (bits - 1) - 1;
  const l0 = initStep(absMax(x.data), top);
  if (s.o2sf) {
    const flagsOf = (k: TwoScaled) => o2sfFlags(x.data, c, bits, smallStep(k), k.m, s.flagRule);
    const best = await searchTwoScaled(l0, s.factors, s.mMax, s.rounds, (cands) =>
      scoreLn(
        cands.map((k) => o2sfSteps({ bits, step: smallStep(k), m: k.m, flags: flagsOf(k) })),
      ));
    const q = { bits, step: smallStep(best), m: best.m, flags: flagsOf(best) };
    return { kind: "o2sf", q, score: best.score };
  }
  const cands = s.factors.map((f) => Math.fround(l0 * f));
  const scores = await scoreLn(cands.map((st) => new Float32Array(c).fill(st)));
  const i = argmin(scores);
  return { kind: "uniform", bits, step: cands[i], score: scores[i] };
}

/** The base step of a LayerNorm-input quantizer (the layer record's scale). */
export function lnInputStep(r: LnInputQuant): number {
  return r.kind === "o2sf" ? r.q.step : r.step;
}

/** The layer record's quantizer description of a LayerNorm-input quantizer. */
export function lnInputName(r: LnInputQuant): string {
  if (r.kind === "uniform") return "per-tensor sym";
  const outliers = r.q.flags.reduce((a, b) => a + b, 0);
  return `O-2SF m=${r.q.m}, ${outliers}/${r.q.flags.length} outlier channels`;
}

/** TypeScript reference of a LayerNorm-input quantizer on `x` (channels last). */
export function lnInputQuantize(x: Float32Array, dims: number[], r: LnInputQuant): Float32Array {
  return r.kind === "o2sf" ? o2sf(x, dims, r.q) : fakeQuant(x, dims, symmetric(r.bits, r.step));
}

/** The plan of a LayerNorm-input target (value form) for a value of rank `rank`. */
export function lnInputPlan(t: ActTarget, r: LnInputQuant, rank: number): ActPlan {
  const base = { value: t.value, consumers: t.consumers, prefix: `${t.site.id}_in` };
  if (r.kind === "uniform") return { ...base, q: symmetric(r.bits, r.step) };
  const q = r.q;
  return { ...base, emit: (h, input, prefix) => emitO2sf(h, input, q, prefix, rank) };
}
