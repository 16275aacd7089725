/**
 * Batched candidate evaluation for scaling-factor searches: all candidates of one
 * search step are scored in a few ONNX Runtime runs. A candidate is a quantized
 * version of one operand of a matmul-like layer (`Ô = A·B (+ bias)`); the graph
 * stacks `K` candidates on a leading axis, multiplies with the fixed operand and
 * reduces an error against the FP output `O` to one score per candidate (or per
 * candidate and output column).
 *
 * Metrics (lower is better for all three as returned):
 * - `hessian`: Σ (G ⊙ (Ô − O))², the diagonal-Fisher-weighted output error of
 *   PTQ4ViT, G = ∂L/∂O on the calibration set;
 * - `mse`: Σ (Ô − O)²;
 * - `cosine`: −mean over rows of cos(Ô_row, O_row).
 *
 * @module
 */
import { Graph, Tensor } from "./onnx/graph.ts";
import type { Runtime, Session } from "./runtime/runtime.ts";

/** Search metric. */
export type Metric = "hessian" | "mse" | "cosine";

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
  /** Bias added to the output (broadcast over the last axis). */
  bias?: Float32Array;
}

function i64(g: Graph, prefix: string, values: number[]): string {
  return g.setInitializer(Tensor.fromInt64(g.uniqueName(prefix), [values.length], values));
}

/** Build the scoring graph of a problem. Inputs: cand, fixed, o, (g). Output: score. */
export function scoringGraph(p: ScoreProblem): Graph {
  const g = Graph.create(17, "vitq-score");
  const varDims = p.vary === "a" ? p.aDims : p.bDims;
  const fixDims = p.vary === "a" ? p.bDims : p.aDims;
  g.addInput("cand", ["K", ...varDims]);
  g.addInput("fixed", fixDims);
  g.addInput("o", p.oDims);
  if (p.metric === "hessian") g.addInput("g", p.oDims);
  let y = p.vary === "a"
    ? g.addNode("MatMul", ["cand", "fixed"])
    : g.addNode("MatMul", ["fixed", "cand"]);
  if (p.bias) y = g.addNode("Add", [y, g.constFloat("bias", p.bias)]);
  const rank = p.oDims.length + 1;
  const all = Array.from({ length: rank - 1 }, (_, i) => i + 1);
  let score: string;
  if (p.metric === "cosine") {
    const last = i64(g, "last", [-1]);
    const dot = g.addNode("ReduceSum", [g.addNode("Mul", [y, "o"]), last], {
      attributes: [{ name: "keepdims", type: 2, i: 0 }],
    });
    const ny = g.addNode("ReduceSum", [g.addNode("Mul", [y, y]), last], {
      attributes: [{ name: "keepdims", type: 2, i: 0 }],
    });
    const no = g.addNode("ReduceSum", [g.addNode("Mul", ["o", "o"]), last], {
      attributes: [{ name: "keepdims", type: 2, i: 0 }],
    });
    const den = g.addNode("Sqrt", [
      g.addNode("Add", [g.addNode("Mul", [ny, no]), g.constFloat("eps", 1e-20)]),
    ]);
    const cos = g.addNode("Div", [dot, den]);
    const rows = all.slice(0, -1);
    const mean = rows.length
      ? g.addNode("ReduceMean", [cos], {
        attributes: [{ name: "axes", type: 7, ints: rows }, { name: "keepdims", type: 2, i: 0 }],
      })
      : cos;
    score = g.addNode("Neg", [mean]);
  } else {
    let d = g.addNode("Sub", [y, "o"]);
    if (p.metric === "hessian") d = g.addNode("Mul", [d, "g"]);
    const e = g.addNode("Mul", [d, d]);
    const axes = p.perColumn ? all.slice(0, -1) : all;
    score = axes.length
      ? g.addNode("ReduceSum", [e, i64(g, "axes", axes)], {
        attributes: [{ name: "keepdims", type: 2, i: 0 }],
      })
      : e;
  }
  g.outputs = [{ name: score, type: { tensorType: { elemType: 1 } } }];
  return g;
}

/** Scores candidate operands of one problem, chunking the candidate axis to bound memory. */
export class CandidateScorer {
  private constructor(
    private session: Session,
    private problem: ScoreProblem,
    private chunk: number,
  ) {}

  /**
   * @param maxBytes bound on the size of the stacked K x output tensor per run
   */
  static async create(
    rt: Runtime,
    p: ScoreProblem,
    maxBytes = 256 * 2 ** 20,
  ): Promise<CandidateScorer> {
    const session = await rt.createSession(scoringGraph(p), "scoring graph");
    const perCand = 4 * Math.max(
      p.oDims.reduce((a, b) => a * b, 1),
      (p.vary === "a" ? p.aDims : p.bDims).reduce((a, b) => a * b, 1),
    );
    return new CandidateScorer(session, p, Math.max(1, Math.floor(maxBytes / perCand)));
  }

  /**
   * Score `count` candidates (`make(k)` gives candidate k, with the varying
   * operand's dims; only one chunk is held at a time) against the fixed operand,
   * the FP output `o` and, for the hessian metric, the gradient `g`. Returns K
   * scores, or K x columns when `perColumn`.
   */
  async score(
    count: number,
    make: (k: number) => Float32Array,
    fixed: Float32Array,
    o: Float32Array,
    g?: Float32Array,
  ): Promise<Float64Array[]> {
    const p = this.problem;
    const varDims = p.vary === "a" ? p.aDims : p.bDims;
    const fixDims = p.vary === "a" ? p.bDims : p.aDims;
    const per = varDims.reduce((a, b) => a * b, 1);
    const out: Float64Array[] = [];
    for (let k0 = 0; k0 < count; k0 += this.chunk) {
      const kn = Math.min(this.chunk, count - k0);
      const stacked = new Float32Array(kn * per);
      for (let i = 0; i < kn; i++) stacked.set(make(k0 + i), i * per);
      const feeds: Record<string, { data: Float32Array; dims: number[] }> = {
        cand: { data: stacked, dims: [kn, ...varDims] },
        fixed: { data: fixed, dims: fixDims },
        o: { data: o, dims: p.oDims },
      };
      if (p.metric === "hessian") feeds.g = { data: g!, dims: p.oDims };
      if (p.bias) feeds.bias = { data: p.bias, dims: [p.bias.length] };
      const res = await this.session.run(feeds);
      const s = Object.values(res)[0].data;
      const cols = s.length / kn;
      for (let i = 0; i < kn; i++) {
        out.push(Float64Array.from(s.subarray(i * cols, (i + 1) * cols)));
      }
    }
    return out;
  }

  /** Done with this scorer (its session stays cached for problems of the same shape). */
  release(): Promise<void> {
    return Promise.resolve();
  }
}
