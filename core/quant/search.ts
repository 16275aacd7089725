/**
 * Batched candidate evaluation for scaling-factor searches: all candidates of one
 * search step are scored in a few ONNX Runtime runs. A candidate is a quantized
 * version of one operand of a matmul-like layer (`Ô = A·B (+ bias)`); the graph
 * stacks `K` candidates on a leading axis, multiplies with the fixed operand and
 * reduces an error against the FP output `O` to one score per candidate (or per
 * candidate and output column).
 *
 * Candidates are either given as tensors ({@link CandidateScorer.score}) or, when
 * the problem names a {@link CandidateQuantizer}, quantized inside the scoring
 * graph from the raw operand and a few parameters per candidate
 * ({@link CandidateScorer.scoreQuantized}), with the same quantizer emitters as
 * the final fake-quant graph. The second form moves the candidates' fake
 * quantization out of TypeScript into ONNX Runtime, and feeds the raw operand
 * once per run instead of K copies.
 *
 * Large problems (a candidate's output above 2 MiB, e.g. every layer of a
 * 224x224 timm model, none of the shipped Fashion-MNIST models') are scored
 * in row tiles that stay in the CPU cache ({@link ScoreProblem.tiles}), and a
 * linear layer whose two operands are both quantized (PTQ4ViT's and BasePTQ's
 * hessian / mse searches with a quantized input) by integer matmuls on their
 * codes ({@link ScoreProblem.integer}). Both compute the same scores up to
 * float32 rounding and summation order; small problems keep the one-MatMul
 * float graph, so the shipped models' results do not change.
 *
 * Metrics (lower is better for all three as returned):
 * - `hessian`: Σ (G ⊙ (Ô − O))², the diagonal-Fisher-weighted output error of
 *   PTQ4ViT, G = ∂L/∂O on the calibration set;
 * - `mse`: Σ (Ô − O)²;
 * - `cosine`: −mean over rows of cos(Ô_row, O_row).
 *
 * @module
 */
import { DataType, Graph, makeAttr, Tensor } from "../onnx/graph.ts";
import type { Runtime, Session } from "../runtime/runtime.ts";
import { emitTwinGeluWith, emitTwinSoftmaxWith, twinGeluSteps, type TwinVariant } from "./twin.ts";
import type { FeedData } from "../runtime/runtime.ts";
import { emitSymmetricWith, qRange, roundHalfEven } from "./uniform.ts";

/** Search metric. */
export type Metric = "hessian" | "mse" | "cosine";

/**
 * How the scoring graph quantizes the varying operand from per-candidate
 * parameters (one row of `params` per candidate):
 * - `uniform`: symmetric signed, one step per candidate, or `columns` steps per
 *   candidate along the operand's axis `axis` (default: the last axis; per-output-channel
 *   weights use the last axis, per-head attention operands `[B, heads, N, d]` axis 1);
 * - `twin-softmax`: PTQ4ViT post-softmax twin quantizer, parameter = split point;
 * - `twin-gelu`: PTQ4ViT post-GELU twin quantizer, parameter = positive step.
 */
export type CandidateQuantizer =
  | { kind: "uniform"; bits: number; columns?: number; axis?: number }
  | { kind: "twin-softmax"; bits: number; variant: TwinVariant }
  | { kind: "twin-gelu"; bits: number };

/** Shape of one scoring problem. */
export interface ScoreProblem {
  /** Which operand varies over candidates. */
  vary: "a" | "b";
  aDims: number[];
  bDims: number[];
  /** Output dims of A·B (without the candidate axis). */
  oDims: number[];
  metric: Metric;
  /** Keep the last (output-column) axis in the score (hessian / mse only). */
  perColumn?: boolean;
  /**
   * Keep this axis of the output (counted in `oDims`, not the last one) in the
   * score: one score per candidate and index along it, e.g. per attention head
   * (axis 1 of `[B, heads, N, d]`). For `cosine`, rows are still the last axis
   * and the mean runs over every other axis.
   */
  keepAxis?: number;
  /**
   * Cosine only: split the last axis into this many equal contiguous groups and
   * score each group by the cosine over its own columns (one score per candidate
   * and group), as PTQ4ViT's reference scores the q, k and v thirds of qkv.
   */
  cosineGroups?: number;
  /** Bias added to the output (broadcast over the last axis). */
  bias?: Float32Array;
  /** Quantize the varying operand in the graph (input `x` + parameters `p`) instead of feeding candidates. */
  quant?: CandidateQuantizer;
  /**
   * Hessian / mse with `quant` only: score the output in this many tiles along
   * its axis 0 (the rows of a linear layer, the batch of an attention matmul),
   * each with its own MatMul and error chain, and add the tiles' partial
   * scores. Each tile's intermediates stay in the CPU cache between the
   * elementwise passes (see {@link tileCount}). Inputs become `<name>_<i>`
   * per tile for the operands with that axis (A always; B when it has the
   * batch axis, i.e. rank > 2) and for `t` and `g`; `p` (and `x` when it is
   * not split) stay whole. Default 1: one graph as without tiles.
   */
  tiles?: number;
  /**
   * Linear problems only (2-D operands, hessian / mse, at most 8 bits; A
   * uniform symmetric or the post-GELU twin, B uniform symmetric with one step
   * per tensor or per output column): the fixed operand is a fake-quantized
   * tensor whose steps each call passes (`fixedSteps`: one for A, the twin's
   * positive step, or one per column of B), and A·B runs on the int8 codes as ONNX Runtime's MatMulIntegerToFloat
   * (exact integer sums times s_A·s_B) instead of a float32 MatMul of the
   * fake-quantized operands: about 2.5x faster on a VNNI CPU. The scores are
   * the same quantities, rounded differently (the float path rounds every
   * product and partial sum). One candidate per run. {@link CandidateScorer}
   * takes it only for problems large enough to be tiled (or with `tiles` set):
   * small layers keep the float path.
   */
  integer?: boolean;
  /** `integer` with B varying: the fixed A's quantizer (default uniform, 8 bits; PTQ4ViT's fc2 input: post-GELU twin). */
  fixedA?: { kind: "uniform" | "twin-gelu"; bits: number };
}

/** Rows of each of `tiles` near-equal tiles of `n` rows (the first ones one larger). */
export function tileRows(n: number, tiles: number): number[] {
  const r = Math.max(1, Math.min(tiles, n));
  return Array.from({ length: r }, (_, i) => Math.floor(n / r) + (i < n % r ? 1 : 0));
}

/**
 * Tiles for a scoring problem: the fewest that keep one candidate's tile of the
 * output, and of each operand split with it, within `tileBytes` (float32).
 * Default 2 MiB. On the 2-core AMD EPYC machine (32 MiB L3), per candidate,
 * single scorer, idle: DeiT-T fc1 weight search 12.4 -> 8-10 ms, fc2 input
 * search 17.9 -> 12 ms, Q·Kᵀ 6.4-7.7 -> 5-6.5 ms (noisy, ±20 %); PTQ4ViT
 * on DeiT-T end to end 246 s -> 208 s with all 219 chosen steps identical.
 */
export function tileCount(p: ScoreProblem, tileBytes = 2 * 2 ** 20): number {
  if (!p.quant || p.metric === "cosine" || p.keepAxis === 0) return 1;
  const size = (d: number[]) => 4 * d.reduce((a, b) => a * b, 1);
  const split = splitOperands(p);
  const bytes = Math.max(
    size(p.oDims),
    split.a ? size(p.aDims) : 0,
    split.b ? size(p.bDims) : 0,
  );
  return Math.min(p.oDims[0], Math.max(1, Math.ceil(bytes / tileBytes)));
}

/** Which operands a tiled problem splits along axis 0: A always, B when batched (rank > 2). */
function splitOperands(p: ScoreProblem): { a: boolean; b: boolean } {
  return { a: true, b: p.bDims.length > 2 };
}

/** Number of parameters per candidate of a quantizer. */
function paramWidth(q: CandidateQuantizer): number {
  return q.kind === "uniform" ? q.columns ?? 1 : 1;
}

/** The parameters `p` ([K, width]) reshaped to broadcast over `[K, ...varDims]`. */
function emitParams(g: Graph, q: CandidateQuantizer, varDims: number[]): string {
  const rank = varDims.length;
  const width = paramWidth(q);
  const axis = q.kind === "uniform" && q.axis !== undefined ? q.axis : rank - 1;
  const shape = width > 1
    ? [-1, ...Array.from({ length: rank }, (_, i) => (i === axis ? width : 1))]
    : [-1, ...Array(rank).fill(1)];
  return g.addNode("Reshape", ["p", i64(g, "pshape", shape)]);
}

/** Emit the stacked candidates `[K, ...dims of x]` from input `x` and the reshaped parameters `p`. */
function emitCandidates(g: Graph, q: CandidateQuantizer, x: string, p: string): string {
  const c = (name: string, v: number) => g.constFloat(name, v);
  if (q.kind === "uniform") {
    const { qmin, qmax } = qRange(q.bits, true);
    return emitSymmetricWith(g, x, p, c("qmin", qmin), c("qmax", qmax));
  }
  if (q.kind === "twin-gelu") {
    const { neg, pmax, nmin } = twinGeluSteps(q.bits, 1);
    return emitTwinGeluWith(g, x, {
      pos: p,
      neg: c("neg", neg),
      zero: c("zero", 0),
      pmax: c("pmax", pmax),
      nmin: c("nmin", nmin),
    });
  }
  const qmax = c("qmax", 2 ** (q.bits - 1) - 1);
  return emitTwinSoftmaxWith(g, x, q.variant, {
    split: p,
    small: g.addNode("Div", [p, qmax]),
    zero: c("zero", 0),
    qmax,
    one: q.variant === "reference" ? c("one", 1) : undefined,
  });
}

function i64(g: Graph, prefix: string, values: number[]): string {
  return g.setInitializer(Tensor.fromInt64(g.uniqueName(prefix), [values.length], values));
}

/**
 * The error target the hessian and mse scoring graphs subtract from the candidate
 * output: `T = (O − bias) ⊙ G` (hessian) or `T = O − bias` (mse), so that a
 * candidate's error `(Ô + bias − O) ⊙ G` is `Ô ⊙ G − T`: one Mul and one Sub per
 * candidate instead of Add, Sub and Mul. Computed once per problem in float32
 * (each product and difference rounded to float32, as ONNX Runtime would).
 */
export function errorTarget(o: Float32Array, g?: Float32Array, bias?: Float32Array): Float32Array {
  const t = new Float32Array(o.length);
  const c = bias?.length ?? 1;
  for (let i = 0; i < o.length; i++) {
    const v = bias ? Math.fround(o[i] - bias[i % c]) : o[i];
    t[i] = g ? v * g[i] : v;
  }
  return t;
}

/**
 * The feeds of a scoring graph that do not change across candidates: `fixed`,
 * and for hessian / mse the {@link errorTarget} `t` (plus `g` for hessian), for
 * cosine the FP output `o` (plus `bias`).
 */
export function scoringFeeds(
  p: Omit<ScoreProblem, "quant" | "vary"> & { vary?: "a" | "b" },
  fixed: Float32Array,
  o: Float32Array,
  g?: Float32Array,
): Record<string, { data: Float32Array; dims: number[] }> {
  const fixDims = p.vary === "b" ? p.aDims : p.bDims;
  const feeds: Record<string, { data: Float32Array; dims: number[] }> = {
    fixed: { data: fixed, dims: fixDims },
  };
  if (p.metric === "hessian" && !g) throw new Error("hessian metric: no output gradient");
  if (p.metric === "cosine") {
    feeds.o = { data: o, dims: p.oDims };
    if (p.bias) feeds.bias = { data: p.bias, dims: [p.bias.length] };
  } else {
    const gg = p.metric === "hessian" ? g : undefined;
    feeds.t = { data: errorTarget(o, gg, p.bias), dims: p.oDims };
    if (gg) feeds.g = { data: gg, dims: p.oDims };
  }
  return feeds;
}

/**
 * Build the scoring graph of a problem. Inputs: cand (or x and p), fixed, and
 * {@link scoringFeeds}' t (and g) or o (and bias). Output: score.
 *
 * Hessian / mse reductions are laid out for ONNX Runtime's fast paths: its
 * ReduceSum over the rows with the columns kept is a strided loop (on a DeiT-T
 * fc1 weight search it took longer than the candidate's Add, Sub and two Muls
 * together), so per-column scores are a row of ones times the `[rows, columns]`
 * squared errors (one MatMul), and a kept axis (per-head scores) reduces its
 * contiguous trailing axes first. Per candidate, a DeiT-T fc1 weight search runs
 * 1.7x faster and a per-head search 1.4x (both graphs timed interleaved, under
 * load 3.4); scores differ from the older Add/Sub/Mul/ReduceSum graph by float32
 * rounding and summation order only.
 */
export function scoringGraph(p: ScoreProblem): Graph {
  const g = Graph.create(17, "vitq-score");
  const varDims = p.vary === "a" ? p.aDims : p.bDims;
  const fixDims = p.vary === "a" ? p.bDims : p.aDims;
  const tiles = p.tiles ?? 1;
  if (tiles > 1 || p.integer) return tiledScoringGraph(g, p, tiles);
  let cand = "cand";
  if (p.quant) {
    g.addInput("x", varDims);
    g.addInput("p", ["K", paramWidth(p.quant)]);
    cand = emitCandidates(g, p.quant, "x", emitParams(g, p.quant, varDims));
  } else {
    g.addInput("cand", ["K", ...varDims]);
  }
  g.addInput("fixed", fixDims);
  let y = p.vary === "a"
    ? g.addNode("MatMul", [cand, "fixed"])
    : g.addNode("MatMul", ["fixed", cand]);
  const rank = p.oDims.length + 1;
  const all = Array.from({ length: rank - 1 }, (_, i) => i + 1);
  let score: string;
  if (p.metric === "cosine") {
    g.addInput("o", p.oDims);
    if (p.bias) {
      g.addInput("bias", [p.bias.length]);
      y = g.addNode("Add", [y, "bias"]);
    }
    const last = i64(g, "last", [-1]);
    let yo = y, oo = "o", rowAxes = all.slice(0, -1);
    const groups = p.cosineGroups ?? 1;
    if (groups > 1) {
      const cols = p.oDims[p.oDims.length - 1];
      if (cols % groups !== 0) {
        throw new Error(`cosineGroups ${groups} do not divide ${cols} columns`);
      }
      const split = [...p.oDims.slice(0, -1), groups, cols / groups];
      yo = g.addNode("Reshape", [y, i64(g, "ysplit", [-1, ...split])]);
      oo = g.addNode("Reshape", ["o", i64(g, "osplit", split)]);
      rowAxes = all.slice(0, -1); // [K, rows..., G] after the cosine: reduce rows, keep G
    } else if (p.keepAxis !== undefined) {
      rowAxes = rowAxes.filter((a) => a !== p.keepAxis! + 1);
    }
    const dot = g.addNode("ReduceSum", [g.addNode("Mul", [yo, oo]), last], {
      attributes: [{ name: "keepdims", type: 2, i: 0 }],
    });
    const ny = g.addNode("ReduceSum", [g.addNode("Mul", [yo, yo]), last], {
      attributes: [{ name: "keepdims", type: 2, i: 0 }],
    });
    const no = g.addNode("ReduceSum", [g.addNode("Mul", [oo, oo]), last], {
      attributes: [{ name: "keepdims", type: 2, i: 0 }],
    });
    const den = g.addNode("Sqrt", [
      g.addNode("Add", [g.addNode("Mul", [ny, no]), g.constFloat("eps", 1e-20)]),
    ]);
    const cos = g.addNode("Div", [dot, den]);
    const mean = rowAxes.length
      ? g.addNode("ReduceMean", [cos], {
        attributes: [{ name: "axes", type: 7, ints: rowAxes }, {
          name: "keepdims",
          type: 2,
          i: 0,
        }],
      })
      : cos;
    score = g.addNode("Neg", [mean]);
  } else {
    score = errorScore(g, p, y, p.oDims, "t", "g");
  }
  g.outputs = [{ name: score, type: { tensorType: { elemType: 1 } } }];
  return g;
}

/**
 * The hessian / mse score of output `y` ([K, ...oDims]) against inputs `t`
 * (and `g`) of dims `oDims`: `Σ (y ⊙ g − t)²` (hessian) or `Σ (y − t)²`,
 * reduced as the problem asks (per column, per kept axis, or whole).
 */
function errorScore(
  g: Graph,
  p: ScoreProblem,
  y: string,
  oDims: number[],
  t: string,
  gName: string,
): string {
  g.addInput(t, oDims);
  if (p.metric === "hessian") {
    g.addInput(gName, oDims);
    y = g.addNode("Mul", [y, gName]);
  }
  const d = g.addNode("Sub", [y, t]);
  const sum = (x: string, axes: number[]) =>
    g.addNode("ReduceSum", [x, i64(g, "axes", axes)], {
      attributes: [{ name: "keepdims", type: 2, i: 0 }],
    });
  const e = g.addNode("Mul", [d, d]);
  const prod = (dims: number[]) => dims.reduce((a, b) => a * b, 1);
  if (p.perColumn && oDims.length === 1) return e; // one output column per element: nothing to sum
  if (p.perColumn) {
    // [K, rows, cols]: a row of ones times the squared errors
    const cols = oDims[oDims.length - 1], rows = prod(oDims.slice(0, -1));
    const e3 = g.addNode("Reshape", [e, i64(g, "rowscols", [-1, rows, cols])]);
    const ones = g.setInitializer(
      Tensor.fromFloat32(g.uniqueName("ones"), [1, rows], new Float32Array(rows).fill(1)),
    );
    return g.addNode("Reshape", [g.addNode("MatMul", [ones, e3]), i64(g, "kcols", [-1, cols])]);
  }
  if (p.keepAxis !== undefined) {
    const k = p.keepAxis;
    const e4 = g.addNode("Reshape", [
      e,
      i64(g, "split", [-1, prod(oDims.slice(0, k)), oDims[k], prod(oDims.slice(k + 1))]),
    ]);
    return sum(sum(e4, [3]), [1]);
  }
  const all = Array.from({ length: oDims.length }, (_, i) => i + 1);
  return all.length ? sum(e, all) : e;
}

/**
 * The scoring graph of a problem with `tiles` > 1 (see {@link ScoreProblem.tiles}),
 * or of an `integer` problem (any tiles; with one tile the inputs keep their plain names).
 */
function tiledScoringGraph(g: Graph, p: ScoreProblem, tiles: number): Graph {
  const q = p.quant;
  if (!q || p.metric === "cosine") {
    throw new Error("tiled scoring: hessian or mse with an in-graph quantizer only");
  }
  if (p.keepAxis === 0) throw new Error("tiled scoring: the tiled axis 0 cannot be kept");
  const varDims = p.vary === "a" ? p.aDims : p.bDims;
  const fixDims = p.vary === "a" ? p.bDims : p.aDims;
  const split = splitOperands(p);
  const varSplit = p.vary === "a" ? split.a : split.b,
    fixSplit = p.vary === "a" ? split.b : split.a;
  if (varSplit && q.kind === "uniform" && q.axis === 0 && (q.columns ?? 1) > 1) {
    throw new Error("tiled scoring: per-column steps along the tiled axis 0");
  }
  const rows = tileRows(p.oDims[0], tiles);
  const name = (base: string, i: number) => (rows.length > 1 ? `${base}_${i}` : base);
  g.addInput("p", ["K", paramWidth(q)]);
  const int = p.integer ? integerProduct(g, p, q) : undefined;
  const params = int ? "" : emitParams(g, q, varDims);
  let whole: string | undefined;
  if (!varSplit) {
    g.addInput("x", varDims);
    whole = int ? "x" : emitCandidates(g, q, "x", params);
  }
  if (!fixSplit) int ? int.fixed("fixed", fixDims) : g.addInput("fixed", fixDims);
  const parts = rows.map((r, i) => {
    const tile = (dims: number[]) => [r, ...dims.slice(1)];
    let cand = whole;
    if (!cand) {
      g.addInput(cand = name("x", i), tile(varDims));
      if (!int) cand = emitCandidates(g, q, cand, params);
    }
    let fixed = "fixed";
    if (fixSplit) {
      fixed = name("fixed", i);
      int ? int.fixed(fixed, tile(fixDims)) : g.addInput(fixed, tile(fixDims));
    }
    let y: string;
    if (int) {
      y = int.product(cand, fixed);
      // the float path's candidate axis (K = 1)
      y = g.addNode("Reshape", [y, i64(g, "k1", [1, ...tile(p.oDims)])]);
    } else {
      y = p.vary === "a" ? g.addNode("MatMul", [cand, fixed]) : g.addNode("MatMul", [fixed, cand]);
    }
    return errorScore(g, p, y, tile(p.oDims), name("t", i), name("g", i));
  });
  const score = parts.length > 1 ? g.addNode("Sum", parts) : parts[0];
  g.outputs = [{ name: score, type: { tensorType: { elemType: 1 } } }];
  return g;
}

/** Parts of an integer operand: 8-bit codes and the step they are scaled by. */
type CodeParts = { codes: string; step: string }[];

/**
 * Validate an `integer` problem; returns A's quantizer (uniform or twin-gelu, at its bits).
 */
function integerA(
  p: ScoreProblem,
  q: CandidateQuantizer,
): { kind: "uniform" | "twin-gelu"; bits: number } {
  const cols = p.bDims[1];
  const width = q.kind === "uniform" ? q.columns ?? 1 : 1;
  const a = p.vary === "a" ? q : p.fixedA ?? { kind: "uniform" as const, bits: 8 };
  if (
    p.aDims.length !== 2 || p.bDims.length !== 2 || p.keepAxis !== undefined ||
    (p.vary === "b" && q.kind !== "uniform") || (a.kind !== "uniform" && a.kind !== "twin-gelu") ||
    (q.kind === "uniform" && q.axis !== undefined && q.axis !== 1) ||
    (p.vary === "a" ? width !== 1 : width !== 1 && width !== cols) || q.bits > 8 || a.bits > 8
  ) {
    throw new Error(
      "integer scoring: a linear problem, A uniform or post-GELU twin, B uniform per tensor or column, <= 8 bits",
    );
  }
  return { kind: a.kind, bits: a.bits };
}

/**
 * The integer product of an `integer` problem (see {@link ScoreProblem.integer}):
 * A as uint8 codes with zero point 128 (one part, or the post-GELU twin's
 * positive and negative parts), B as int8 codes, each part's product by
 * MatMulIntegerToFloat (exact integer sums times s_A·s_B) and the parts added.
 * The varying operand is quantized here from its raw values and the candidate's
 * steps (`p`, one row): rows of A by QuantizeLinear (the same division, round
 * half to even and saturation as the float quantizers' Div, Round, Clip, then a
 * Clip to the code range), B by Div, Round, Clip, Cast. The fixed operand comes
 * as codes ({@link integerCodes}: `fixed` and, for a twin A, `fixedn`) with its
 * step in `fs` (A: one, or the twin's positive step; B: one per column).
 */
function integerProduct(g: Graph, p: ScoreProblem, q: CandidateQuantizer) {
  const a = integerA(p, q);
  const cols = p.bDims[1];
  const u8 = (v: number) =>
    g.setInitializer(new Tensor(g.uniqueName("u8"), DataType.UINT8, [], Uint8Array.of(v)));
  const zp128 = u8(128);
  g.addInput("fs", [p.vary === "a" ? cols : 1]);
  const vecP = g.addNode("Reshape", ["p", i64(g, "pvec", [-1])]);
  const scalar = (x: string) => g.addNode("Reshape", [x, i64(g, "scalar", [])]);
  // A's steps are scalars, B's one per column ([cols] or [1])
  const aStep = p.vary === "a" ? scalar(vecP) : scalar("fs");
  const bStep = p.vary === "a" ? "fs" : vecP;
  const neg = a.kind === "twin-gelu" ? g.constFloat("neg", twinGeluSteps(a.bits, 1).neg) : "";
  const fixedParts = new Map<string, CodeParts>();
  const rowsOf = (x: string): CodeParts => {
    const codes = (step: string, lo: number, hi: number) => {
      const c = g.addNode("QuantizeLinear", [x, step, zp128]);
      return lo === 0 && hi === 255 ? c : g.addNode("Clip", [c, u8(lo), u8(hi)]);
    };
    const { qmin, qmax } = qRange(a.bits, true);
    if (a.kind === "uniform") return [{ codes: codes(aStep, 128 + qmin, 128 + qmax), step: aStep }];
    return [
      { codes: codes(aStep, 128, 128 + qmax), step: aStep },
      { codes: codes(neg, 128 + qmin, 128), step: neg },
    ];
  };
  let bCodes: string | undefined;
  const candidateB = (w: string) => {
    if (bCodes) return bCodes;
    const { qmin, qmax } = qRange(q.bits, true);
    const c = g.addNode("Clip", [
      g.addNode("Round", [g.addNode("Div", [w, bStep])]),
      g.constFloat("qmin", qmin),
      g.constFloat("qmax", qmax),
    ]);
    return bCodes = g.addNode("Cast", [c], { attributes: [makeAttr("to", DataType.INT8)] });
  };
  g.useDomain("com.microsoft", 1);
  return {
    /** Declare fixed-operand input(s) `name` of `dims` (codes). */
    fixed(name: string, dims: number[]): void {
      if (p.vary === "a") {
        g.addInput(name, dims, DataType.INT8);
        return;
      }
      g.addInput(name, dims, DataType.UINT8);
      const parts: CodeParts = [{ codes: name, step: aStep }];
      if (a.kind === "twin-gelu") {
        // "fixed" -> "fixedn", tile "fixed_3" -> "fixedn_3" (see tileFeeds)
        const nName = name.replace(/^fixed/, "fixedn");
        g.addInput(nName, dims, DataType.UINT8);
        parts.push({ codes: nName, step: neg });
      }
      fixedParts.set(name, parts);
    },
    /** The float product of the candidate (raw values `cand`) and the fixed codes `fixed`. */
    product(cand: string, fixed: string): string {
      const [aParts, b] = p.vary === "a"
        ? [rowsOf(cand), fixed]
        : [fixedParts.get(fixed)!, candidateB(cand)];
      const ys = aParts.map((ap) =>
        g.addNode("MatMulIntegerToFloat", [ap.codes, b, ap.step, bStep, zp128], {
          domain: "com.microsoft",
        })
      );
      return ys.length > 1 ? g.addNode("Add", ys) : ys[0];
    },
  };
}

/**
 * The fixed operand of an `integer` problem as the codes and steps its graph
 * reads (see {@link integerProduct}): A (`fixed`, a fake-quantized uniform or
 * post-GELU twin tensor with step, or positive step, `steps[0]`) as uint8 codes
 * + 128, a twin's negative part as `fixedn`; B (fake-quantized with one step
 * per column) as int8 codes. A fake-quantized value is code·step rounded to
 * float32, so value/step rounds back to its code.
 */
export function integerCodes(
  p: ScoreProblem,
  fixed: Float32Array,
  steps: ArrayLike<number>,
): Record<string, FeedData> {
  const q = p.quant!;
  const a = integerA(p, q);
  const code = (v: number, s: number) => roundHalfEven(Math.fround(v / s));
  const fs = { data: Float32Array.from(steps), dims: [steps.length] };
  if (p.vary === "a") {
    const cols = p.bDims[1];
    const c = new Int8Array(fixed.length);
    for (let i = 0; i < fixed.length; i++) c[i] = code(fixed[i], steps[i % cols]);
    return { fixed: { data: c, dims: p.bDims }, fs };
  }
  const s = Math.fround(steps[0]);
  const pos = new Uint8Array(fixed.length);
  if (a.kind === "uniform") {
    for (let i = 0; i < fixed.length; i++) pos[i] = 128 + code(fixed[i], s);
    return { fixed: { data: pos, dims: p.aDims }, fs };
  }
  // the twin's parts: a value is either a positive code·pos or a negative code·neg
  const neg = twinGeluSteps(a.bits, 1).neg;
  const nc = new Uint8Array(fixed.length).fill(128);
  for (let i = 0; i < fixed.length; i++) {
    const v = fixed[i];
    if (v >= 0) pos[i] = 128 + code(v, s);
    else {
      pos[i] = 128;
      nc[i] = 128 + code(v, neg);
    }
  }
  return { fixed: { data: pos, dims: p.aDims }, fixedn: { data: nc, dims: p.aDims }, fs };
}

type Feeds = Record<string, FeedData>;

/**
 * The feeds of a tiled problem: each input split along axis 0 (see
 * {@link ScoreProblem.tiles}) replaced by its tiles `<name>_<i>`, as views of
 * the same memory. Feeds of an untiled problem are returned as they are.
 */
export function tileFeeds(p: ScoreProblem, feeds: Feeds): Feeds {
  const tiles = p.tiles ?? 1;
  if (tiles <= 1) return feeds;
  const split = splitOperands(p);
  const splitNames = new Set(["t", "g"]);
  if (p.vary === "a" ? split.a : split.b) splitNames.add("x");
  // "fixedn": an integer problem's twin negative codes (integerProduct names its tiles fixedn_i)
  if (p.vary === "a" ? split.b : split.a) splitNames.add("fixed").add("fixedn");
  const out: Feeds = {};
  const rows = tileRows(p.oDims[0], tiles);
  for (const [name, f] of Object.entries(feeds)) {
    if (!splitNames.has(name)) {
      out[name] = f;
      continue;
    }
    const per = f.dims.slice(1).reduce((a, b) => a * b, 1);
    let r0 = 0;
    rows.forEach((r, i) => {
      out[`${name}_${i}`] = {
        data: f.data.subarray(r0 * per, (r0 + r) * per),
        dims: [r, ...f.dims.slice(1)],
      };
      r0 += r;
    });
  }
  return out;
}

/** Scores candidate operands of one problem, chunking the candidate axis to bound memory. */
export class CandidateScorer {
  private target?: {
    o: Float32Array;
    g?: Float32Array;
    feeds: Feeds;
  };
  private codes?: { fixed: Float32Array; steps: Float32Array; feeds: Feeds };

  private constructor(
    private session: Session,
    private problem: ScoreProblem,
    private chunk: number,
  ) {}

  /**
   * @param maxBytes bound on the size of the stacked K x output tensor per run.
   * Small chunks keep each run's intermediates in cache: 8 MiB (usually one
   * candidate per run on ViT-sized layers) scored DeiT-T-sized layers 1.6-2.3x
   * faster than 256 MiB chunks, with bit-identical scores (each candidate's score
   * is computed on its own slice of the batched graph).
   */
  static async create(
    rt: Runtime,
    p: ScoreProblem,
    maxBytes = 8 * 2 ** 20,
  ): Promise<CandidateScorer> {
    // integer products only where the problem is large enough to be tiled (unless tiles are
    // set): small layers, e.g. the shipped models', keep the float path and their results
    const integer = p.integer && (p.tiles !== undefined || tileCount(p) > 1);
    p = { ...p, tiles: p.tiles ?? tileCount(p), integer };
    const session = await rt.createSession(scoringGraph(p), "scoring graph");
    const perCand = 4 * Math.max(
      p.oDims.reduce((a, b) => a * b, 1),
      (p.vary === "a" ? p.aDims : p.bDims).reduce((a, b) => a * b, 1),
    );
    const chunk = p.integer ? 1 : Math.max(1, Math.floor(maxBytes / perCand));
    return new CandidateScorer(session, p, chunk);
  }

  /**
   * Score `count` candidates (`make(k)` gives candidate k, with the varying
   * operand's dims; only one chunk is held at a time) against the fixed operand,
   * the FP output `o` and, for the hessian metric, the gradient `g`. Returns K
   * scores, or K x columns when `perColumn` (K x groups / K x the kept axis with
   * `cosineGroups` / `keepAxis`).
   */
  async score(
    count: number,
    make: (k: number) => Float32Array,
    fixed: Float32Array,
    o: Float32Array,
    g?: Float32Array,
  ): Promise<Float64Array[]> {
    if (this.problem.quant) throw new Error("scoring graph quantizes in-graph: use scoreQuantized");
    const varDims = this.problem.vary === "a" ? this.problem.aDims : this.problem.bDims;
    const per = varDims.reduce((a, b) => a * b, 1);
    return await this.run(
      count,
      (k0, kn) => {
        const stacked = new Float32Array(kn * per);
        for (let i = 0; i < kn; i++) stacked.set(make(k0 + i), i * per);
        return { cand: { data: stacked, dims: [kn, ...varDims] } };
      },
      fixed,
      o,
      g,
    );
  }

  /**
   * Score `count` candidates quantized in the graph from the raw varying operand
   * `raw`: `params(k)` gives candidate k's parameters (one value, or one per
   * column for a per-column uniform quantizer). Returns K scores, or K x columns.
   * An `integer` problem takes the fixed operand's steps in `fixedSteps` (one for
   * A, one per column of B).
   */
  async scoreQuantized(
    count: number,
    params: (k: number) => ArrayLike<number>,
    raw: Float32Array,
    fixed: Float32Array,
    o: Float32Array,
    g?: Float32Array,
    fixedSteps?: ArrayLike<number>,
  ): Promise<Float64Array[]> {
    const q = this.problem.quant;
    if (!q) throw new Error("scoring graph has no candidate quantizer: use score");
    let codes: Feeds | undefined;
    if (this.problem.integer) {
      const n = this.problem.vary === "a" ? this.problem.bDims[1] : 1;
      if (fixedSteps?.length !== n) {
        throw new Error(`integer scoring: ${fixedSteps?.length ?? 0} fixed steps, expected ${n}`);
      }
      // the fixed operand's codes: computed once while it and its steps stay the same
      const c = this.codes;
      if (c?.fixed !== fixed || c.steps.some((v, i) => v !== Math.fround(fixedSteps[i]))) {
        this.codes = {
          fixed,
          steps: Float32Array.from(fixedSteps),
          feeds: integerCodes(this.problem, fixed, fixedSteps),
        };
      }
      codes = this.codes!.feeds;
    }
    const width = paramWidth(q);
    const varDims = this.problem.vary === "a" ? this.problem.aDims : this.problem.bDims;
    return await this.run(
      count,
      (k0, kn) => {
        const p = new Float32Array(kn * width);
        for (let i = 0; i < kn; i++) {
          const v = params(k0 + i);
          if (v.length !== width) {
            throw new Error(`candidate ${k0 + i}: ${v.length} parameters, expected ${width}`);
          }
          p.set(v, i * width);
        }
        return { x: { data: raw, dims: varDims }, p: { data: p, dims: [kn, width] } };
      },
      fixed,
      o,
      g,
      codes,
    );
  }

  private async run(
    count: number,
    feedsOf: (k0: number, kn: number) => Feeds,
    fixed: Float32Array,
    o: Float32Array,
    g?: Float32Array,
    codes?: Feeds,
  ): Promise<Float64Array[]> {
    // the error target depends on o and g only: computed once per scorer while they stay the same
    if (this.target?.o !== o || this.target.g !== g) {
      this.target = { o, g, feeds: scoringFeeds(this.problem, fixed, o, g) };
    }
    const t = this.target.feeds;
    const fixedFeeds = codes
      ? { ...t, ...codes }
      : { ...t, fixed: { data: fixed, dims: t.fixed.dims } };
    const out: Float64Array[] = [];
    for (let k0 = 0; k0 < count; k0 += this.chunk) {
      const kn = Math.min(this.chunk, count - k0);
      const feeds = tileFeeds(this.problem, { ...feedsOf(k0, kn), ...fixedFeeds });
      const res = await this.session.run(feeds);
      const s = Object.values(res)[0].data;
      const cols = s.length / kn;
      for (let i = 0; i < kn; i++) {
        out.push(Float64Array.from(s.subarray(i * cols, (i + 1) * cols)));
      }
    }
    return out;
  }

  /** Free the scoring session. */
  async release(): Promise<void> {
    this.target = this.codes = undefined;
    await this.session.release();
  }
}
