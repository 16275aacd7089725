/**
 * Gradient rules: for each ONNX op, how to emit the vector-Jacobian product
 * (the gradients of its inputs given the gradients of its outputs) as ONNX
 * nodes. A rule returns, per input slot, the gradient value name, `null` for a
 * gradient that is zero by definition, or `undefined` where it has none; the
 * builder throws a {@link VitqError} when a slot that needs a gradient gets
 * `undefined`, so an unsupported case is never silently zero.
 *
 * @module
 */
import { attr, DataType, type Graph, type GraphIndex, makeAttr, type Node } from "../onnx/graph.ts";
import { VitqError } from "../errors.ts";
import { type Emitter, INT64_MAX, numProd } from "./emit.ts";
import { allNum, type Dim, isNum, reduceAxes, sliceBounds } from "./infer.ts";

/** How Round, Floor and Ceil pass gradients. */
export type RoundGradient = "ste" | "zero" | "error";

/** Options every rule sees. */
export interface RuleOptions {
  /**
   * Round/Floor/Ceil: "ste" (straight-through estimator: identity gradient, the
   * default), "zero" (the true gradient almost everywhere), or "error" (refuse).
   */
  round: RoundGradient;
}

/** Arguments of a rule call. */
export interface RuleArgs {
  /** Emitter of the gradient graph. */
  e: Emitter;
  /** The forward node. */
  node: Node;
  /** Gradient of each output (undefined: no gradient reaches it, i.e. zero). */
  gy: (string | undefined)[];
  /** Which input slots need a gradient. */
  need: boolean[];
  /** Builder options. */
  opts: RuleOptions;
}

/** A gradient rule. */
export type Rule = (a: RuleArgs) => (string | null | undefined)[];

function unsupported(node: Node, what: string): never {
  throw new VitqError(
    `autodiff: no gradient for ${node.opType} node "${node.name}": ${what}`,
  );
}

/** Gradient of output 0 (a rule only runs when some output has one). */
function g0(a: RuleArgs): string {
  return a.gy[0] ?? a.e.zerosLike(a.node.outputs[0]);
}

function ydims(a: RuleArgs, i = 0): Dim[] | undefined {
  return a.e.dims(a.node.outputs[i]);
}

function intAttr(node: Node, name: string, dflt: number): number {
  const v = attr(node, name);
  return typeof v === "number" ? v : dflt;
}

function floatAttr(node: Node, name: string, dflt: number): number {
  const v = attr(node, name);
  return typeof v === "number" ? v : dflt;
}

function constOf(e: Emitter, v: string | undefined): number[] | undefined {
  if (!v) return undefined;
  const t = e.g.constant(v);
  if (!t) return undefined;
  try {
    return t.numbers();
  } catch {
    return undefined;
  }
}

function swapLast(r: number): number[] {
  const p = Array.from({ length: r }, (_, i) => i);
  [p[r - 2], p[r - 1]] = [p[r - 1], p[r - 2]];
  return p;
}

/** Rules whose gradient ignores the inputs: y = f(x) elementwise, dy/dx from x or y. */
function unary(fn: (e: Emitter, g: string, x: string, y: string) => string): Rule {
  return (a) => {
    if (!a.need[0]) return [];
    const { e, node } = a;
    const gf = e.gradFacts(node.inputs[0]);
    const r = fn(e, g0(a), node.inputs[0], node.outputs[0]);
    e.facts.set(r, gf);
    return [r];
  };
}

const identity: Rule = (a) => (a.need[0] ? [g0(a)] : []);

function roundRule(a: RuleArgs): (string | null | undefined)[] {
  if (!a.need[0]) return [];
  if (a.opts.round === "ste") return [g0(a)];
  if (a.opts.round === "zero") return [null];
  unsupported(a.node, `${a.node.opType} has zero gradient almost everywhere (round: "error")`);
}

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/** d/dx of exact GELU: Φ(x) + x φ(x). */
function geluExactDeriv(e: Emitter, x: string): string {
  const cdf = e.mul(e.add(e.op1("Erf", [e.mul(x, e.f32(Math.SQRT1_2))]), e.f32(1)), e.f32(0.5));
  const pdf = e.mul(e.op1("Exp", [e.mul(e.mul(x, x), e.f32(-0.5))]), e.f32(INV_SQRT_2PI));
  return e.add(cdf, e.mul(x, pdf));
}

/** d/dx of tanh-approximate GELU. */
function geluTanhDeriv(e: Emitter, x: string): string {
  const x2 = e.mul(x, x);
  const u = e.mul(e.mul(x, e.add(e.mul(x2, e.f32(0.044715)), e.f32(1))), e.f32(SQRT_2_OVER_PI));
  const t = e.op1("Tanh", [u]);
  const du = e.mul(e.add(e.mul(x2, e.f32(3 * 0.044715)), e.f32(1)), e.f32(SQRT_2_OVER_PI));
  const sech2 = e.sub(e.f32(1), e.mul(t, t));
  return e.add(
    e.mul(e.add(t, e.f32(1)), e.f32(0.5)),
    e.mul(e.mul(e.mul(x, e.f32(0.5)), sech2), du),
  );
}

const rules: Record<string, Rule> = {
  Identity: identity,
  Dropout: identity,
  Cast: (a) => {
    if (!a.need[0]) return [];
    // float-to-float only (an integer output never carries a gradient)
    const from = a.e.facts.get(a.node.inputs[0]).type ?? DataType.FLOAT;
    const to = attr(a.node, "to");
    if (from === to) return [g0(a)];
    return [a.e.op1("Cast", [g0(a)], [makeAttr("to", from)])];
  },
  Round: roundRule,
  Floor: roundRule,
  Ceil: roundRule,
  Sign: (a) => (a.need[0] ? [null] : []),
  Neg: unary((e, g) => e.neg(g)),
  Exp: unary((e, g, _x, y) => e.mul(g, y)),
  Log: unary((e, g, x) => e.div(g, x)),
  Reciprocal: unary((e, g, _x, y) => e.neg(e.mul(g, e.mul(y, y)))),
  Sqrt: unary((e, g, _x, y) => e.div(e.mul(g, e.f32(0.5)), y)),
  Tanh: unary((e, g, _x, y) => e.mul(g, e.sub(e.f32(1), e.mul(y, y)))),
  Sigmoid: unary((e, g, _x, y) => e.mul(g, e.mul(y, e.sub(e.f32(1), y)))),
  Relu: unary((e, g, x) => e.where(e.op1("Greater", [x, e.f32(0)]), g, e.f32(0))),
  Abs: unary((e, g, x) => e.mul(g, e.op1("Sign", [x]))),
  // 2/√π exp(-x²) as exp(ln(2/√π) - x²): one pass fewer than scaling and negating
  Erf: unary((e, g, x) =>
    e.mul(g, e.op1("Exp", [e.sub(e.f32(Math.log(2 / Math.sqrt(Math.PI))), e.mul(x, x))]))
  ),
  Gelu: (a) => {
    if (!a.need[0]) return [];
    const approx = attr(a.node, "approximate");
    const d = approx === "tanh"
      ? geluTanhDeriv(a.e, a.node.inputs[0])
      : geluExactDeriv(a.e, a.node.inputs[0]);
    return [a.e.mul(g0(a), d, a.e.gradFacts(a.node.inputs[0]))];
  },
  FastGelu: (a) => {
    if (a.node.inputs[1] && a.need[1]) unsupported(a.node, "gradient of the bias input");
    if (!a.need[0]) return [];
    return [a.e.mul(g0(a), geluTanhDeriv(a.e, a.node.inputs[0]))];
  },

  Add: (a) => {
    const { e, node } = a;
    const g = g0(a), yd = ydims(a);
    return node.inputs.map((x, i) => (a.need[i] ? e.sumTo(g, yd, x) : undefined));
  },
  Sum: (a) => {
    const { e, node } = a;
    const g = g0(a), yd = ydims(a);
    return node.inputs.map((x, i) => (a.need[i] ? e.sumTo(g, yd, x) : undefined));
  },
  Sub: (a) => {
    const { e, node } = a;
    const g = g0(a), yd = ydims(a);
    const [x0, x1] = node.inputs;
    return [
      a.need[0] ? e.sumTo(g, yd, x0) : undefined,
      a.need[1] ? e.neg(e.sumTo(g, yd, x1), e.gradFacts(x1)) : undefined,
    ];
  },
  Mul: (a) => {
    const { e, node } = a;
    const g = g0(a), yd = ydims(a);
    const [x0, x1] = node.inputs;
    return [
      a.need[0] ? e.sumTo(e.mul(g, x1), yd, x0) : undefined,
      a.need[1] ? e.sumTo(e.mul(g, x0), yd, x1) : undefined,
    ];
  },
  Div: (a) => {
    const { e, node } = a;
    const g = g0(a), yd = ydims(a);
    const [x0, x1] = node.inputs;
    const t = e.div(g, x1);
    return [
      a.need[0] ? e.sumTo(t, yd, x0) : undefined,
      a.need[1] ? e.neg(e.sumTo(e.mul(t, node.outputs[0]), yd, x1), e.gradFacts(x1)) : undefined,
    ];
  },
  Pow: (a) => {
    const { e, node } = a;
    const g = g0(a), yd = ydims(a);
    const [x, p] = node.inputs;
    const y = node.outputs[0];
    const out: (string | undefined)[] = [];
    if (a.need[0]) {
      const c = constOf(e, p);
      let d: string;
      if (c && c.length === 1) {
        const k = c[0];
        if (k === 0) d = e.f32(0);
        else if (k === 1) d = e.f32(1);
        else if (k === 2) d = e.mul(x, e.f32(2));
        else if (k === 0.5) d = e.div(e.f32(0.5), y);
        else d = e.mul(e.op1("Pow", [x, e.f32(k - 1)]), e.f32(k));
      } else {
        const pf = e.facts.get(p).type === DataType.FLOAT ? p : e.toFloat(p);
        d = e.mul(e.op1("Pow", [x, e.sub(pf, e.f32(1))]), pf);
      }
      out[0] = e.sumTo(e.mul(g, d), yd, x);
    }
    if (a.need[1]) out[1] = e.sumTo(e.mul(g, e.mul(y, e.op1("Log", [x]))), yd, p);
    return out;
  },
  Where: (a) => {
    const { e, node } = a;
    const g = g0(a), yd = ydims(a);
    const [c, x1, x2] = node.inputs;
    const z = e.f32(0);
    return [
      undefined,
      a.need[1] ? e.sumTo(e.where(c, g, z), yd, x1) : undefined,
      a.need[2] ? e.sumTo(e.where(c, z, g), yd, x2) : undefined,
    ];
  },
  Expand: (a) => (a.need[0] ? [a.e.sumTo(g0(a), ydims(a), a.node.inputs[0])] : []),
  Clip: (a) => {
    const { e, node } = a;
    const [x, lo, hi] = node.inputs;
    if (e.opset < 11) unsupported(node, "Clip before opset 11");
    const g = g0(a), yd = ydims(a);
    const z = e.f32(0);
    // Strict inequalities: gradient passes only where lo < x < hi.
    const gtLo = lo ? e.op1("Greater", [x, lo]) : undefined;
    const ltHi = hi ? e.op1("Less", [x, hi]) : undefined;
    const out: (string | undefined)[] = [];
    if (a.need[0]) {
      const m = gtLo && ltHi ? e.op1("And", [gtLo, ltHi]) : gtLo ?? ltHi;
      out[0] = m ? e.where(m, g, z, e.gradFacts(x)) : g;
    }
    if (lo && a.need[1]) out[1] = e.sumTo(e.where(gtLo!, z, g), yd, lo);
    if (hi && a.need[2]) out[2] = e.sumTo(e.where(ltHi!, z, g), yd, hi);
    return out;
  },

  Softmax: (a) => {
    if (!a.need[0]) return [];
    const { e, node } = a;
    if (e.opset < 13) unsupported(node, "Softmax before opset 13 (coerced-2D semantics)");
    const axis = intAttr(node, "axis", -1);
    const y = node.outputs[0];
    const g = g0(a);
    const s = e.reduceSum(e.mul(g, y), [axis], true);
    return [e.mul(y, e.sub(g, s), e.gradFacts(node.inputs[0]))];
  },
  LogSoftmax: (a) => {
    if (!a.need[0]) return [];
    const { e, node } = a;
    if (e.opset < 13) unsupported(node, "LogSoftmax before opset 13 (coerced-2D semantics)");
    const axis = intAttr(node, "axis", -1);
    const g = g0(a);
    const p = e.op1("Exp", [node.outputs[0]]);
    return [e.sub(g, e.mul(p, e.reduceSum(g, [axis], true)), e.gradFacts(node.inputs[0]))];
  },
  LayerNormalization: layerNorm,

  ReduceSum: reduceRule(false),
  ReduceMean: reduceRule(true),

  Reshape: reshapeLike,
  Flatten: reshapeLike,
  Squeeze: reshapeLike,
  Unsqueeze: reshapeLike,
  Transpose: (a) => {
    if (!a.need[0]) return [];
    const { e, node } = a;
    let perm = attr(node, "perm") as number[] | undefined;
    if (!perm) {
      const r = e.rank(node.inputs[0], `Transpose "${node.name}"`);
      perm = Array.from({ length: r }, (_, i) => r - 1 - i);
    }
    const inv = Array(perm.length);
    perm.forEach((p, i) => (inv[p] = i));
    return [e.transpose(g0(a), inv, e.gradFacts(node.inputs[0]))];
  },
  Concat: (a) => {
    const { e, node } = a;
    const axis = intAttr(node, "axis", 0);
    const sizes = node.inputs.map((x) => {
      const d = e.dims(x);
      const r = d?.length;
      const ax = r !== undefined && axis < 0 ? axis + r : axis;
      const s = d?.[ax];
      return isNum(s) ? s : undefined;
    });
    let split: string;
    if (sizes.every((s) => s !== undefined)) split = e.i64(sizes as number[]);
    else {
      split = e.op1(
        "Concat",
        node.inputs.map((x) => e.op1("Gather", [e.shape(x), e.i64([axis])], [makeAttr("axis", 0)])),
        [makeAttr("axis", 0)],
      );
    }
    const outs = e.op("Split", [g0(a), split], [makeAttr("axis", axis)], {
      nOut: node.inputs.length,
    });
    outs.forEach((o, i) => e.facts.set(o, e.gradFacts(node.inputs[i])));
    return node.inputs.map((_, i) => (a.need[i] ? outs[i] : undefined));
  },
  Split: (a) => {
    const { e, node } = a;
    if (!a.need[0]) return [];
    const parts = node.outputs.map((o, i) => a.gy[i] ?? e.zerosLike(o));
    return [
      e.op1(
        "Concat",
        parts,
        [makeAttr("axis", intAttr(node, "axis", 0))],
        e.gradFacts(node.inputs[0]),
      ),
    ];
  },
  Slice: sliceRule,
  Gather: gatherRule,
  Pad: padRule,

  MatMul: matmulRule,
  Gemm: gemmRule,
  Conv: convRule,
};

function reshapeLike(a: RuleArgs): (string | undefined)[] {
  if (!a.need[0]) return [];
  return [a.e.reshapeLike(g0(a), a.node.inputs[0])];
}

function layerNorm(a: RuleArgs): (string | undefined)[] {
  const { e, node } = a;
  if (a.gy[1] || a.gy[2]) unsupported(node, "gradient through the Mean/InvStdDev outputs");
  const [x, scale, bias] = node.inputs;
  const axis = intAttr(node, "axis", -1);
  let axes: number[];
  if (axis < 0) axes = Array.from({ length: -axis }, (_, i) => axis + i);
  else {
    const r = e.rank(x, `LayerNormalization "${node.name}" with axis ${axis}`);
    axes = Array.from({ length: r - axis }, (_, i) => axis + i);
  }
  // reuse the op's own saved statistics: add the optional Mean/InvStdDev outputs
  while (node.outputs.length < 3) node.outputs.push("");
  if (!node.outputs[1]) node.outputs[1] = e.fresh("grad/ln_mean");
  if (!node.outputs[2]) node.outputs[2] = e.fresh("grad/ln_invstd");
  const mean = node.outputs[1], invstd = node.outputs[2];
  const g = g0(a), yd = ydims(a);
  const xhat = e.mul(e.sub(x, mean), invstd);
  const out: (string | undefined)[] = [];
  if (a.need[0]) {
    const gh = scale ? e.mul(g, scale) : g;
    const m1 = e.reduceMean(gh, axes, true);
    const m2 = e.reduceMean(e.mul(gh, xhat), axes, true);
    out[0] = e.mul(invstd, e.sub(e.sub(gh, m1), e.mul(xhat, m2)), e.gradFacts(x));
  }
  if (scale && a.need[1]) out[1] = e.sumTo(e.mul(g, xhat), yd, scale);
  if (bias && a.need[2]) out[2] = e.sumTo(g, yd, bias);
  return out;
}

function reduceRule(mean: boolean): Rule {
  return (a) => {
    const { e, node } = a;
    if (node.inputs[1] && a.need[1]) unsupported(node, "gradient w.r.t. the axes input");
    if (!a.need[0]) return [];
    const x = node.inputs[0], y = node.outputs[0];
    const keep = intAttr(node, "keepdims", 1) === 1;
    const noop = intAttr(node, "noop_with_empty_axes", 0) === 1;
    const axes = reduceAxes(node, e.facts, e.opset);
    let g = g0(a);
    if ((axes === null || (Array.isArray(axes) && axes.length === 0)) && noop) return [g];
    if (!keep && axes !== null) {
      g = axes === "dynamic" ? e.op1("Unsqueeze", [g, node.inputs[1]]) : e.unsqueeze(g, axes);
    }
    if (mean) {
      const n = numProd(e.dims(x)), m = numProd(e.dims(y));
      let scale: string;
      if (n !== undefined && m !== undefined) scale = e.f32(m / n);
      else {
        scale = e.div(
          e.toFloat(e.op1("Size", [y])),
          e.toFloat(e.op1("Size", [x])),
        );
      }
      g = e.mul(g, scale);
    }
    return [e.op1("Expand", [g, e.shape(x)], [], e.gradFacts(x))];
  };
}

function sliceRule(a: RuleArgs): (string | undefined)[] {
  const { e, node } = a;
  for (let i = 1; i < node.inputs.length; i++) {
    if (a.need[i]) unsupported(node, `gradient w.r.t. input ${i}`);
  }
  if (!a.need[0]) return [];
  const x = node.inputs[0];
  const r = e.rank(x, `Slice "${node.name}"`);
  const starts = constOf(e, node.inputs[1]);
  const ends = constOf(e, node.inputs[2]);
  const axesIn = node.inputs[3] ? constOf(e, node.inputs[3]) : undefined;
  const stepsIn = node.inputs[4] ? constOf(e, node.inputs[4]) : undefined;
  if (node.inputs[3] && !axesIn) unsupported(node, "non-constant axes");
  if (node.inputs[4] && !stepsIn) unsupported(node, "non-constant steps");
  if (stepsIn?.some((k) => k < 1)) unsupported(node, "negative steps");
  const nAx = starts?.length ?? ends?.length ?? axesIn?.length;
  if (nAx === undefined) unsupported(node, "non-constant starts, ends and axes");
  const axes = (axesIn ?? Array.from({ length: nAx }, (_, i) => i)).map((v) => (v < 0 ? v + r : v));
  const steps = stepsIn ?? Array(nAx).fill(1);
  const xd = e.dims(x);
  const gf = e.gradFacts(x);
  let g = g0(a);
  // strided axes: spread the gradient so element j lands at j * step
  let gd: Dim[] | undefined = ydims(a)?.slice();
  axes.forEach((ax, i) => {
    const k = steps[i];
    if (k === 1) return;
    const padU = Array(2 * (r + 1)).fill(0);
    padU[r + 1 + ax + 1] = k - 1;
    const spread = e.op1("Pad", [e.unsqueeze(g, [ax + 1]), e.i64(padU)]);
    let shp: string;
    if (allNum(gd)) {
      gd[ax] = (gd[ax] as number) * k;
      shp = e.i64(gd as number[]);
    } else {
      gd = undefined;
      const sg = e.op1("Shape", [g]);
      const pieces = [
        e.op1("Slice", [sg, e.i64([0]), e.i64([ax])]),
        e.mul(e.op1("Gather", [sg, e.i64([ax])], [makeAttr("axis", 0)]), e.i64([k])),
        e.op1("Slice", [sg, e.i64([ax + 1]), e.i64big([INT64_MAX])]),
      ];
      shp = e.op1("Concat", pieces, [makeAttr("axis", 0)]);
    }
    g = e.reshape(spread, shp);
  });
  const crop = (v: string, dims: string) =>
    e.op1("Slice", [v, e.i64(Array(axes.length).fill(0)), dims, e.i64(axes)], [], gf);
  if (starts && ends && xd && axes.every((ax) => isNum(xd[ax]))) {
    const pads = Array(2 * r).fill(0);
    let cut = false;
    axes.forEach((ax, i) => {
      const d = xd[ax] as number, k = steps[i];
      const [s, en] = sliceBounds(starts[i], ends[i], 1, d);
      const m = Math.max(0, Math.ceil((en - s) / k));
      pads[ax] = s;
      pads[r + ax] = Math.max(d - s - m * k, 0);
      if (d - s - m * k < 0) cut = true;
    });
    if (pads.every((p) => p === 0) && !cut) return [g];
    if (!cut) return [e.pad(g, pads, gf)];
    const p = e.op1("Pad", [g, e.i64(pads)]);
    return [crop(p, e.i64(axes.map((ax) => xd[ax] as number)))];
  }
  // run time: normalize and clamp the starts against the input shape
  const axC = e.i64(axes);
  const dimsX = e.op1("Gather", [e.shape(x), axC], [makeAttr("axis", 0)]);
  const dimsG = e.op1("Gather", [e.op1("Shape", [g]), axC], [makeAttr("axis", 0)]);
  let s = node.inputs[1];
  if (e.facts.get(s).type !== DataType.INT64) {
    s = e.op1("Cast", [s], [makeAttr("to", DataType.INT64)]);
  }
  const zero = e.i64([0], []);
  const s1 = e.where(e.op1("Less", [s, zero]), e.add(s, dimsX), s);
  const s2 = e.op1("Min", [e.op1("Max", [s1, zero]), dimsX]);
  const after = e.op1("Max", [e.sub(e.sub(dimsX, s2), dimsG), zero]);
  const idx = e.i64([...axes, ...axes.map((v) => v + r)]);
  const pads = e.op1("ScatterElements", [
    e.i64(Array(2 * r).fill(0)),
    idx,
    e.op1("Concat", [s2, after], [makeAttr("axis", 0)]),
  ], [makeAttr("axis", 0)]);
  const p = e.op1("Pad", [g, pads]);
  return [steps.some((k) => k > 1) ? crop(p, dimsX) : e.op1("Identity", [p], [], gf)];
}

function gatherRule(a: RuleArgs): (string | undefined)[] {
  const { e, node } = a;
  if (!a.need[0]) return [];
  const [x, idx] = node.inputs;
  const g = g0(a);
  const xd = e.dims(x);
  const r = xd?.length;
  let axis = intAttr(node, "axis", 0);
  if (axis < 0 && r !== undefined) axis += r;
  const gf = e.gradFacts(x);
  const ci = constOf(e, idx);
  const idxDims = e.dims(idx);
  // a constant scalar index: pad the slice back into place
  if (ci && ci.length === 1 && idxDims?.length === 0 && r !== undefined && isNum(xd![axis])) {
    const d = xd![axis] as number;
    const i = ci[0] < 0 ? ci[0] + d : ci[0];
    const pads = Array(2 * r).fill(0);
    pads[axis] = i;
    pads[r + axis] = d - 1 - i;
    return [e.pad(e.unsqueeze(g, [axis]), pads, gf)];
  }
  // general: one-hot matrix of the indices times the gradient
  const nIdx = numProd(idxDims);
  const k = nIdx !== undefined ? e.i64([nIdx]) : e.reshape(e.op1("Size", [idx]), e.i64([1]));
  const flat = e.reshape(idx, e.i64([-1]));
  const depth = e.op1("Gather", [e.shape(x), e.i64([axis])], [makeAttr("axis", 0)]);
  const oh = e.op1("OneHot", [flat, depth, e.f32([0, 1])], [makeAttr("axis", -1)]);
  const ohT = e.transpose(oh, [1, 0]);
  const pieces = axis === 0 ? [] : [
    e.op1("Slice", [e.shape(x), e.i64([0]), e.i64([axis])]),
  ];
  const shp = e.op1("Concat", [...pieces, k, e.i64([-1])], [makeAttr("axis", 0)]);
  const m = e.op1("MatMul", [ohT, e.reshape(g, shp)]);
  return [e.reshape(m, e.shape(x), gf)];
}

function padRule(a: RuleArgs): (string | undefined)[] {
  const { e, node } = a;
  for (let i = 1; i < node.inputs.length; i++) {
    if (a.need[i]) unsupported(node, `gradient w.r.t. input ${i}`);
  }
  if (!a.need[0]) return [];
  const mode = (attr(node, "mode") as string | undefined) ?? "constant";
  if (mode !== "constant") unsupported(node, `mode "${mode}"`);
  if (e.opset < 11) unsupported(node, "Pad before opset 11");
  if (node.inputs[3]) unsupported(node, "the axes input");
  const x = node.inputs[0];
  const g = g0(a);
  const gf = e.gradFacts(x);
  const pads = constOf(e, node.inputs[1]);
  if (pads) {
    const r = pads.length / 2;
    if (pads.some((p) => p < 0)) unsupported(node, "negative pads");
    if (pads.every((p) => p === 0)) return [g];
    const starts = pads.slice(0, r);
    const ends = pads.slice(r).map((p) => (p > 0 ? BigInt(-p) : INT64_MAX));
    return [
      e.op1(
        "Slice",
        [
          g,
          e.i64(starts),
          e.i64big(ends),
          e.i64(Array.from({ length: r }, (_, i) => i)),
        ],
        [],
        gf,
      ),
    ];
  }
  const r = e.rank(x, `Pad "${node.name}"`);
  const starts = e.op1("Slice", [node.inputs[1], e.i64([0]), e.i64([r])]);
  const ends = e.add(starts, e.shape(x));
  return [e.op1("Slice", [g, starts, ends], [], gf)];
}

function lastDimShape(e: Emitter, v: string, d: Dim | undefined): string {
  // [-1, d] as a shape value
  if (isNum(d)) return e.i64([-1, d]);
  const last = e.op1("Slice", [e.shape(v), e.i64([-1]), e.i64big([INT64_MAX])]);
  return e.op1("Concat", [e.i64([-1]), last], [makeAttr("axis", 0)]);
}

function matmulRule(a: RuleArgs): (string | undefined)[] {
  const { e, node } = a;
  const [A, B] = node.inputs;
  const ra = e.rank(A, `MatMul "${node.name}"`);
  const rb = e.rank(B, `MatMul "${node.name}"`);
  const ad = e.dims(A)!, bd = e.dims(B)!;
  const yd = ydims(a);
  let g = g0(a);
  const out: (string | undefined)[] = [];
  // the common linear layer: activations [..., K] times a 2-D weight [K, N]
  if (ra >= 2 && rb === 2) {
    if (a.need[0]) out[0] = e.op1("MatMul", [g, e.transpose(B, [1, 0])], [], e.gradFacts(A));
    if (a.need[1]) {
      const a2 = ra === 2 ? A : e.reshape(A, lastDimShape(e, A, ad[ra - 1]));
      const g2 = ra === 2 ? g : e.reshape(g, lastDimShape(e, node.outputs[0], yd?.[yd.length - 1]));
      out[1] = e.op1("Gemm", [a2, g2], [makeAttr("transA", 1)], e.gradFacts(B));
    }
    return out;
  }
  // general batched case; 1-D operands are promoted as MatMul defines
  const A2 = ra === 1 ? e.unsqueeze(A, [0]) : A;
  const B2 = rb === 1 ? e.unsqueeze(B, [1]) : B;
  const ad2: Dim[] = ra === 1 ? [1, ad[0]] : ad;
  const bd2: Dim[] = rb === 1 ? [bd[0], 1] : bd;
  if (ra === 1 && rb === 1) g = e.reshape(g, e.i64([1, 1]));
  else if (ra === 1) g = e.unsqueeze(g, [-2]);
  else if (rb === 1) g = e.unsqueeze(g, [-1]);
  const batch = yd
    ? yd.slice(0, Math.max(yd.length - 2 + (ra === 1 ? 1 : 0) + (rb === 1 ? 1 : 0), 0))
    : undefined;
  const r2a = ad2.length, r2b = bd2.length;
  if (a.need[0]) {
    const ga = e.op1("MatMul", [g, e.transpose(B2, swapLast(r2b))]);
    const gaDims = batch ? [...batch, ad2[r2a - 2], ad2[r2a - 1]] : undefined;
    e.facts.set(A2, { type: DataType.FLOAT, dims: ad2 });
    const red = e.sumTo(ga, gaDims, A2);
    out[0] = ra === 1 ? e.reshapeLike(red, A) : red;
  }
  if (a.need[1]) {
    const gb = e.op1("MatMul", [e.transpose(A2, swapLast(r2a)), g]);
    const gbDims = batch ? [...batch, bd2[r2b - 2], bd2[r2b - 1]] : undefined;
    e.facts.set(B2, { type: DataType.FLOAT, dims: bd2 });
    const red = e.sumTo(gb, gbDims, B2);
    out[1] = rb === 1 ? e.reshapeLike(red, B) : red;
  }
  return out;
}

function gemmRule(a: RuleArgs): (string | undefined)[] {
  const { e, node } = a;
  const [A, B, C] = node.inputs;
  const alpha = floatAttr(node, "alpha", 1), beta = floatAttr(node, "beta", 1);
  const ta = intAttr(node, "transA", 0) === 1, tb = intAttr(node, "transB", 0) === 1;
  const g = g0(a);
  const al = makeAttr("alpha", alpha, "float");
  const gemm = (x: string, y: string, tx: boolean, ty: boolean, like: string) =>
    e.op1(
      "Gemm",
      [x, y],
      [al, makeAttr("transA", tx ? 1 : 0), makeAttr("transB", ty ? 1 : 0)],
      e.gradFacts(like),
    );
  const out: (string | undefined)[] = [];
  // dL/dop(A) = alpha g op(B)^T ; dL/dop(B) = alpha op(A)^T g
  if (a.need[0]) out[0] = ta ? gemm(B, g, tb, true, A) : gemm(g, B, false, !tb, A);
  if (a.need[1]) out[1] = tb ? gemm(g, A, true, ta, B) : gemm(A, g, !ta, false, B);
  if (C && a.need[2]) {
    const gc = beta === 1 ? g : e.mul(g, e.f32(beta));
    out[2] = e.sumTo(gc, ydims(a), C);
  }
  return out;
}

function convRule(a: RuleArgs): (string | undefined)[] {
  const { e, node } = a;
  const [X, W, B] = node.inputs;
  if (intAttr(node, "group", 1) !== 1) unsupported(node, "grouped convolution");
  const autoPad = (attr(node, "auto_pad") as string | undefined) ?? "NOTSET";
  if (autoPad !== "NOTSET" && autoPad !== "VALID") unsupported(node, `auto_pad ${autoPad}`);
  const wd = e.dims(W);
  if (!wd) unsupported(node, "weight of unknown rank");
  const n = wd.length - 2;
  const strides = (attr(node, "strides") as number[] | undefined) ?? Array(n).fill(1);
  const dil = (attr(node, "dilations") as number[] | undefined) ?? Array(n).fill(1);
  const pads = autoPad === "VALID"
    ? Array(2 * n).fill(0)
    : (attr(node, "pads") as number[] | undefined) ?? Array(2 * n).fill(0);
  const g = g0(a);
  const out: (string | undefined)[] = [];
  const spatial = Array.from({ length: n }, (_, i) => i + 2);
  if (a.need[0]) {
    // transposed convolution, then zero rows/cols the forward stride skipped
    const xd = e.dims(X), gd = ydims(a);
    const k = (attr(node, "kernel_shape") as number[] | undefined) ?? wd.slice(2);
    let outPad: number[] | undefined;
    if (xd && gd && allNum(xd.slice(2)) && allNum(gd.slice(2)) && allNum(k)) {
      outPad = spatial.map((ax, i) => {
        const full = ((gd[ax] as number) - 1) * strides[i] - pads[i] - pads[n + i] +
          dil[i] * ((k[i] as number) - 1) + 1;
        return (xd[ax] as number) - full;
      });
      if (outPad.some((p, i) => p < 0 || p >= Math.max(strides[i], dil[i]))) outPad = undefined;
    }
    const at = [
      makeAttr("strides", strides),
      makeAttr("dilations", dil),
      makeAttr("pads", pads),
      makeAttr("group", 1),
    ];
    if (outPad) {
      if (outPad.some((p) => p > 0)) at.push(makeAttr("output_padding", outPad));
      out[0] = e.op1("ConvTranspose", [g, W], at, e.gradFacts(X));
    } else {
      // without the end crop the output spans X plus the end padding, minus
      // the rows the stride skipped: crop to X, then zero-fill what is missing
      at[2] = makeAttr("pads", [...pads.slice(0, n), ...Array(n).fill(0)]);
      const ct = e.op1("ConvTranspose", [g, W], at);
      const xs = e.shape(X);
      const ends = e.op1("Slice", [xs, e.i64([2]), e.i64big([INT64_MAX])]);
      const cut = e.op1("Slice", [ct, e.i64(Array(n).fill(0)), ends, e.i64(spatial)]);
      const tail = e.sub(xs, e.op1("Shape", [cut]));
      const p = e.op1("Concat", [e.i64(Array(n + 2).fill(0)), tail], [makeAttr("axis", 0)]);
      out[0] = e.op1("Pad", [cut, p], [], e.gradFacts(X));
    }
  }
  if (a.need[1]) {
    // dW[co, ci] = sum_n X[n, ci] (*) g[n, co]: a convolution with batch and channels swapped
    const perm = [1, 0, ...spatial];
    const xt = e.transpose(X, perm), gt = e.transpose(g, perm);
    const r = e.op1("Conv", [xt, gt], [
      makeAttr("strides", dil),
      makeAttr("dilations", strides),
      makeAttr("pads", pads),
      makeAttr("group", 1),
    ]);
    const kdims = wd.slice(2);
    const kEnd = allNum(kdims)
      ? e.i64(kdims)
      : e.op1("Slice", [e.shape(W), e.i64([2]), e.i64big([INT64_MAX])]);
    const cut = e.op1("Slice", [r, e.i64(Array(n).fill(0)), kEnd, e.i64(spatial)]);
    out[1] = e.transpose(cut, perm, e.gradFacts(W));
  }
  if (B && a.need[2]) out[2] = e.reduceSum(g, [0, ...spatial], false, e.gradFacts(B));
  return out;
}

function scalarConst(g: Graph, idx: GraphIndex, v: string): number | undefined {
  const t = g.constant(v, idx);
  if (!t || t.dims.reduce((a, b) => a * b, 1) !== 1) return undefined;
  try {
    return t.numbers()[0];
  } catch {
    return undefined;
  }
}

/**
 * Match the exact GELU as torch.onnx exports `nn.GELU()`, ending at Mul node
 * `node`: y = x · (erf(x / √2) + 1) · 0.5, the operands of each Mul and Add in
 * either order, the 0.5 applied last or to x first, and x · (1/√2) for x / √2.
 * Every intermediate value must have one consumer and not be `keep` (a value
 * whose own gradient or value is asked for). Returns x, or undefined.
 *
 * The builder then emits the GELU's gradient from x alone
 * ({@link erfGeluGrad}) instead of differentiating the five nodes: no pass
 * over the erf branch's intermediates, which ONNX Runtime can then fuse into
 * one Gelu kernel and free after the forward pass.
 */
export function matchErfGelu(
  g: Graph,
  idx: GraphIndex,
  node: Node,
  keep: (v: string) => boolean,
): string | undefined {
  if (node.opType !== "Mul" || node.domain || node.inputs.length !== 2) return undefined;
  const near = (v: string, c: number) => {
    const k = scalarConst(g, idx, v);
    return k !== undefined && Math.abs(k - c) <= 1e-6 * Math.max(1, Math.abs(c));
  };
  // an intermediate produced by `op`, consumed once, not kept
  const inner = (v: string, op: string): Node | undefined => {
    const p = idx.producer.get(v);
    if (p === undefined || keep(v) || (idx.consumers.get(v)?.length ?? 0) !== 1) return undefined;
    const n = g.nodes[p];
    return n.opType === op && !n.domain && n.inputs.length === 2 ? n : undefined;
  };
  const other = (n: Node, v: string) => (n.inputs[0] === v ? n.inputs[1] : n.inputs[0]);
  const [p, q] = node.inputs;
  for (const [m, rest] of [[p, q], [q, p]]) {
    const mul = inner(m, "Mul");
    if (!mul) continue;
    const leaves = [...mul.inputs, rest];
    const half = leaves.findIndex((v) => near(v, 0.5));
    if (half < 0) continue;
    const two = leaves.filter((_, i) => i !== half);
    for (const [a, x] of [[two[0], two[1]], [two[1], two[0]]]) {
      const add = inner(a, "Add");
      if (!add) continue;
      const er = add.inputs.find((v) => !near(v, 1));
      if (!er || !near(other(add, er), 1)) continue;
      const pe = idx.producer.get(er);
      if (pe === undefined || keep(er) || (idx.consumers.get(er)?.length ?? 0) !== 1) continue;
      const erf = g.nodes[pe];
      if (erf.opType !== "Erf" || erf.domain) continue;
      const u = erf.inputs[0];
      const div = inner(u, "Div");
      if (div && div.inputs[0] === x && near(div.inputs[1], Math.SQRT2)) return x;
      const scale = inner(u, "Mul");
      if (scale && scale.inputs.includes(x) && near(other(scale, x), Math.SQRT1_2)) return x;
    }
  }
  return undefined;
}

/**
 * g · GELU'(x) for the exact GELU, GELU'(x) = Φ(x) + x φ(x), computed as
 * g · (1 + erf(x/√2) + x √(2/π) exp(-x²/2)) · 0.5 (ten elementwise nodes).
 */
export function erfGeluGrad(e: Emitter, g: string, x: string): string {
  const u = e.mul(x, e.f32(Math.SQRT1_2));
  const er = e.op1("Erf", [u]);
  // √(2/π) exp(-x²/2) = exp(ln √(2/π) - u²)
  const ex = e.op1("Exp", [e.sub(e.f32(0.5 * Math.log(2 / Math.PI)), e.mul(u, u))]);
  const s = e.add(e.add(er, e.mul(x, ex)), e.f32(1));
  return e.mul(e.mul(g, s), e.f32(0.5), e.gradFacts(x));
}

/** The rule for an op type, or undefined when there is none. */
export function ruleFor(opType: string, domain: string): Rule | undefined {
  if (domain === "com.microsoft") {
    if (opType === "Gelu") return rules.Gelu;
    if (opType === "FastGelu") return rules.FastGelu;
    return undefined;
  }
  if (domain && domain !== "ai.onnx") return undefined;
  return Object.hasOwn(rules, opType) ? rules[opType] : undefined;
}

/** Op types (default domain) that have a gradient rule. */
export function supportedOps(): string[] {
  return Object.keys(rules).sort();
}
