/**
 * Every gradient rule against central finite differences, on tiny graphs built
 * with the Graph IR and run by ONNX Runtime.
 *
 * Each case builds y = op(inputs), the objective L = sum(y * W) with fixed
 * random W, and compares the gradient graph's dL/dinput with
 * (L(x + h e_i) - L(x - h e_i)) / 2h for every element i, in float32.
 *
 * Tolerance: normwise relative error ||g - fd|| / max(||g||, ||fd||) <= 2e-3
 * with h = 1e-2 on inputs of size ~1. Central differences have truncation
 * error h^2 |f'''| / 6 ~ 2e-5 per element for these smooth ops, and rounding
 * error ~ (float32 eps 6e-8) * (|L| + accumulation over ~100 terms) / h ~ 1e-4
 * per element; gradients are O(0.1..1) per element, so the expected normwise
 * error is ~1e-4 (observed: <= 6e-5 for most ops, up to 4e-4 for the
 * high-curvature x^-1.5, 1/x and a/b at x >= 0.5), and a wrong rule (a missing
 * term, wrong axis, transposed operand) gives errors of order 1. Kinked ops (Abs, Relu, Clip) get inputs
 * kept at least 0.05 away from their kinks, so no step crosses one.
 *
 * Every case runs twice: with static input shapes, and with every dimension
 * symbolic, which exercises the run-time (Shape-op) fallbacks of the rules.
 */
import assert from "node:assert/strict";
import { Graph, makeAttr, Tensor } from "../core/onnx/graph.ts";
import { addFloatInput, buildGradientGraph, type LossSpec } from "../core/autodiff/backward.ts";
import { inferFacts, isNum } from "../core/autodiff/infer.ts";
import { finiteDifferences, relError } from "../core/autodiff/gradcheck.ts";
import { VitqError } from "../core/errors.ts";
import { FIXTURES, randomData, runtime } from "./helpers.ts";

const TOL = 2e-3;
const H = 1e-2;

let baseBytes: Uint8Array | undefined;

/** An empty graph with the fixture's model-level fields (opset 17). */
async function emptyGraph(opset?: number): Promise<Graph> {
  baseBytes ??= await Deno.readFile(`${FIXTURES}tiny_vit_op17.onnx`);
  const g = Graph.fromBytes(baseBytes);
  g.nodes = [];
  g.initializers.clear();
  g.valueInfo = [];
  g.inputs = [];
  g.outputs = [];
  if (opset !== undefined) {
    // test-only: swap the default-domain opset import
    const m = (g as unknown as { model: { opsetImport: { domain?: string; version: number }[] } })
      .model;
    const ops = m.opsetImport.filter((o) => o.domain && o.domain !== "ai.onnx");
    (g as unknown as { model: unknown }).model = {
      ...m,
      opsetImport: [...ops, { domain: "", version: opset }],
    };
  }
  return g;
}

/** One input of a case. */
interface In {
  dims: number[];
  /** Values (default: uniform in [-1, 1)). */
  data?: Float32Array;
  /** Not differentiated (e.g. a condition), fed as given. */
  fixed?: boolean;
}

/** Random values in [lo, hi) keeping |x - k| >= gap for each kink k. */
function awayFrom(n: number, seed: number, lo: number, hi: number, kinks: number[], gap = 0.05) {
  const r = randomData(n, seed);
  return r.map((v) => {
    let x = lo + (v + 1) / 2 * (hi - lo);
    for (const k of kinks) if (Math.abs(x - k) < gap) x = k + (x < k ? -gap : gap);
    return x;
  });
}

function positive(n: number, seed: number, lo = 0.5, hi = 1.5) {
  return awayFrom(n, seed, lo, hi, []);
}

type Build = (g: Graph, x: string[]) => string;

/**
 * Check the gradient of sum(build(x) * W) w.r.t. every non-fixed input against
 * finite differences, with static and with symbolic input shapes.
 */
async function check(label: string, inputs: In[], build: Build, opts: { opset?: number } = {}) {
  const names = inputs.map((_, i) => `x${i}`);
  const data = inputs.map((inp, i) =>
    inp.data ?? randomData(inp.dims.reduce((a, b) => a * b, 1), 1000 + 17 * i)
  );
  for (const symbolic of [false, true]) {
    const g = await emptyGraph(opts.opset);
    inputs.forEach((inp, i) =>
      addFloatInput(g, names[i], symbolic ? inp.dims.map((_, k) => `${names[i]}_d${k}`) : inp.dims)
    );
    const y = build(g, names);
    let yDims: number[];
    if (!symbolic) {
      const d = inferFacts(g).get(y).dims;
      assert.ok(d && d.every(isNum), `${label}: static output shape`);
      yDims = d as number[];
    } else {
      yDims = (await staticDims(label, inputs, build, opts)) as number[];
    }
    const w = addFloatInput(g, "w", symbolic ? yDims.map((_, k) => `w_d${k}`) : yDims);
    const obj = g.addNode("Mul", [y, w]);
    const wrt = names.filter((_, i) => !inputs[i].fixed);
    const loss: LossSpec = { kind: "sum", value: obj };
    const gg = buildGradientGraph(g, { loss, wrt });
    const rt = await runtime();
    const s = await rt.createSession(gg.graph, label);
    const feeds: Record<string, { data: Float32Array; dims: number[] }> = {
      w: { data: randomData(yDims.reduce((a, b) => a * b, 1), 77), dims: yDims },
    };
    names.forEach((n, i) => (feeds[n] = { data: data[i], dims: inputs[i].dims }));
    const out = await s.run(feeds);
    for (const n of wrt) {
      const an = out[gg.gradNames.get(n)!];
      assert.deepEqual(an.dims, feeds[n].dims, `${label}: gradient shape of ${n}`);
      const fd = await finiteDifferences(s, feeds, gg.lossName, n, H);
      const err = relError(an.data, fd);
      assert.ok(
        err <= TOL,
        `${label} (${symbolic ? "symbolic" : "static"} shapes) d/d${n}: rel error ${
          err.toExponential(2)
        }\n analytic ${Array.from(an.data.slice(0, 8)).map((v) => v.toFixed(4))}\n fd       ${
          Array.from(fd.slice(0, 8)).map((v) => v.toFixed(4))
        }`,
      );
    }
    await s.release();
  }
}

async function staticDims(label: string, inputs: In[], build: Build, opts: { opset?: number }) {
  const g = await emptyGraph(opts.opset);
  inputs.forEach((inp, i) => addFloatInput(g, `x${i}`, inp.dims));
  const y = build(g, inputs.map((_, i) => `x${i}`));
  const d = inferFacts(g).get(y).dims;
  assert.ok(d && d.every(isNum), `${label}: static output shape`);
  return d;
}

const ints = (g: Graph, v: number[], dims?: number[]) =>
  g.setInitializer(Tensor.fromInt64(g.uniqueName("c"), dims ?? [v.length], v));
const fl = (g: Graph, v: number | number[], dims?: number[]) => g.constFloat("c", v, dims);
const op = (g: Graph, type: string, inputs: string[], attrs: unknown[] = [], nOut = 1) =>
  g.addNode(type, inputs, {
    attributes: attrs,
    outputs: nOut === 1 ? undefined : Array.from({ length: nOut }, () => g.uniqueName("o")),
  });

Deno.test("autodiff rules: elementwise binary ops with broadcasting", async (t) => {
  const A = { dims: [2, 3, 4] };
  await t.step(
    "Add [2,3,4] + [4]",
    () => check("Add", [A, { dims: [4] }], (g, x) => op(g, "Add", x)),
  );
  await t.step(
    "Add [2,1,4] + [3,1]",
    () => check("Add2", [{ dims: [2, 1, 4] }, { dims: [3, 1] }], (g, x) => op(g, "Add", x)),
  );
  await t.step(
    "Sub [2,3,4] - [3,1]",
    () => check("Sub", [A, { dims: [3, 1] }], (g, x) => op(g, "Sub", x)),
  );
  await t.step(
    "Mul [2,3,4] * [1,3,4]",
    () => check("Mul", [A, { dims: [1, 3, 4] }], (g, x) => op(g, "Mul", x)),
  );
  await t.step(
    "Mul x * x (one value in two slots)",
    () => check("MulSelf", [A], (g, x) => op(g, "Mul", [x[0], x[0]])),
  );
  await t.step(
    "Div [2,3,4] / [4]",
    () => check("Div", [A, { dims: [4], data: positive(4, 5) }], (g, x) => op(g, "Div", x)),
  );
  await t.step("Pow constant exponents 2, 3, 0.5, -1.5", async () => {
    for (const k of [2, 3, 0.5, -1.5]) {
      await check(
        `Pow^${k}`,
        [{ dims: [2, 5], data: positive(10, 3) }],
        (g, x) => op(g, "Pow", [x[0], fl(g, k)]),
      );
    }
  });
  await t.step("Pow with a differentiated exponent", () =>
    check(
      "PowBoth",
      [{ dims: [2, 5], data: positive(10, 4) }, { dims: [5], data: positive(5, 6, 0.5, 2) }],
      (g, x) => op(g, "Pow", x),
    ));
  await t.step("Where(cond, a, b) with broadcasting", () => {
    const cond = (g: Graph) =>
      g.setInitializer(
        new Tensor(g.uniqueName("cond"), 9, [3, 1], Uint8Array.from([1, 0, 1])),
      );
    return check("Where", [A, { dims: [4] }], (g, x) => op(g, "Where", [cond(g), x[0], x[1]]));
  });
  await t.step(
    "Sum of three with broadcasting",
    () => check("Sum", [A, { dims: [4] }, { dims: [3, 1] }], (g, x) => op(g, "Sum", x)),
  );
  await t.step(
    "Expand [3,1] -> [2,3,4]",
    () =>
      check("Expand", [{ dims: [3, 1] }], (g, x) => op(g, "Expand", [x[0], ints(g, [2, 3, 4])])),
  );
});

Deno.test("autodiff rules: elementwise unary ops", async (t) => {
  const D = [3, 5];
  const n = 15;
  const cases: [string, Float32Array | undefined][] = [
    ["Sqrt", positive(n, 1)],
    ["Erf", undefined],
    ["Tanh", undefined],
    ["Sigmoid", awayFrom(n, 2, -3, 3, [])],
    ["Exp", undefined],
    ["Log", positive(n, 3)],
    ["Neg", undefined],
    ["Reciprocal", positive(n, 4)],
    ["Abs", awayFrom(n, 5, -1, 1, [0])],
    ["Relu", awayFrom(n, 6, -1, 1, [0])],
    ["Identity", undefined],
  ];
  for (const [name, data] of cases) {
    await t.step(name, () => check(name, [{ dims: D, data }], (g, x) => op(g, name, x)));
  }
  await t.step(
    "Cast float to float",
    () => check("Cast", [{ dims: D }], (g, x) => op(g, "Cast", x, [makeAttr("to", 1)])),
  );
  await t.step("Gelu (com.microsoft) and Gelu (opset 20, exact and tanh)", async () => {
    await check(
      "GeluMs",
      [{ dims: D, data: awayFrom(n, 7, -3, 3, []) }],
      (g, x) => g.addNode("Gelu", x, { domain: "com.microsoft" }),
      { opset: 17 },
    );
    await check(
      "Gelu20",
      [{ dims: D, data: awayFrom(n, 8, -3, 3, []) }],
      (g, x) => op(g, "Gelu", x),
      { opset: 20 },
    );
    await check(
      "Gelu20tanh",
      [{ dims: D, data: awayFrom(n, 9, -3, 3, []) }],
      (g, x) => op(g, "Gelu", x, [makeAttr("approximate", "tanh")]),
      { opset: 20 },
    );
  });
  await t.step("exact GELU written out with Erf (torch.onnx form) as one op", async () => {
    // torch.onnx: ((x * (erf(x / √2) + 1)) * 0.5); HF style: (0.5 * x) * (1 + erf(x * (1/√2)))
    const torchGelu = (g: Graph, x: string) =>
      op(g, "Mul", [
        op(g, "Mul", [
          x,
          op(g, "Add", [op(g, "Erf", [op(g, "Div", [x, fl(g, Math.SQRT2)])]), fl(g, 1)]),
        ]),
        fl(g, 0.5),
      ]);
    const hfGelu = (g: Graph, x: string) =>
      op(g, "Mul", [
        op(g, "Mul", [fl(g, 0.5), x]),
        op(g, "Add", [fl(g, 1), op(g, "Erf", [op(g, "Mul", [x, fl(g, Math.SQRT1_2)])])]),
      ]);
    const data = awayFrom(n, 14, -3, 3, []);
    await check("ErfGeluTorch", [{ dims: D, data }], (g, x) => torchGelu(g, x[0]));
    await check("ErfGeluHf", [{ dims: D, data }], (g, x) => hfGelu(g, x[0]));
    // the erf output also used elsewhere: not matched, the five nodes are differentiated
    const shared = (g: Graph, x: string) => {
      const y = torchGelu(g, x);
      return op(g, "Add", [y, g.nodes.find((nd) => nd.opType === "Erf")!.outputs[0]]);
    };
    await check("ErfGeluShared", [{ dims: D, data }], (g, x) => shared(g, x[0]));
    // matched: the backward recomputes erf from x and has no node of the Div rule
    for (
      const [label, build, matched] of [
        ["torch", torchGelu, true],
        ["hf", hfGelu, true],
        ["shared", shared, false],
      ] as const
    ) {
      const g = await emptyGraph();
      addFloatInput(g, "x", D);
      const gg = buildGradientGraph(g, { loss: { kind: "sum", value: build(g, "x") }, wrt: ["x"] });
      const grad = gg.graph.nodes.filter((nd) => nd.name.startsWith("grad/"));
      assert.equal(grad.some((nd) => nd.opType === "Erf"), matched, `${label}: erf recomputed`);
      assert.equal(grad.some((nd) => nd.opType === "Div"), !matched, `${label}: Div rule`);
    }
  });
  await t.step(
    "Clip with constant bounds (inputs away from the bounds)",
    () =>
      check(
        "Clip",
        [{ dims: D, data: awayFrom(n, 10, -1, 1, [-0.4, 0.5]) }],
        (g, x) => op(g, "Clip", [x[0], fl(g, -0.4), fl(g, 0.5)]),
      ),
  );
  await t.step("Clip with differentiated bounds", () =>
    check(
      "ClipBounds",
      [
        { dims: D, data: awayFrom(n, 11, -1, 1, [-0.4, 0.5]) },
        { dims: [], data: Float32Array.of(-0.4) },
        { dims: [], data: Float32Array.of(0.5) },
      ],
      (g, x) => op(g, "Clip", x),
    ));
});

Deno.test("autodiff rules: Softmax, LogSoftmax, LayerNormalization, reductions", async (t) => {
  const A = { dims: [2, 3, 4] };
  await t.step("Softmax axis -1 and 1", async () => {
    await check("Softmax-1", [A], (g, x) => op(g, "Softmax", x, [makeAttr("axis", -1)]));
    await check("Softmax1", [A], (g, x) => op(g, "Softmax", x, [makeAttr("axis", 1)]));
  });
  await t.step(
    "LogSoftmax axis -1",
    () => check("LogSoftmax", [A], (g, x) => op(g, "LogSoftmax", x, [makeAttr("axis", -1)])),
  );
  await t.step("LayerNormalization with scale and bias, axis -1", () =>
    check(
      "LN",
      [{ dims: [2, 3, 8] }, { dims: [8], data: positive(8, 12) }, { dims: [8] }],
      (g, x) => op(g, "LayerNormalization", x, [makeAttr("epsilon", 1e-5, "float")]),
    ));
  await t.step("LayerNormalization over two axes (axis 1), no bias", () =>
    check(
      "LN2",
      [{ dims: [2, 3, 4] }, { dims: [3, 4], data: positive(12, 13) }],
      (g, x) => op(g, "LayerNormalization", x, [makeAttr("axis", 1)]),
    ));
  await t.step(
    "ReduceMean axes [-1] keepdims (opset 17: attribute)",
    () => check("ReduceMean", [A], (g, x) => op(g, "ReduceMean", x, [makeAttr("axes", [-1])])),
  );
  await t.step("ReduceMean axes input (opset 18)", () =>
    check(
      "ReduceMean18",
      [A],
      (g, x) => op(g, "ReduceMean", [x[0], ints(g, [0, 2])], [makeAttr("keepdims", 0)]),
      { opset: 18 },
    ));
  await t.step(
    "ReduceMean over all axes",
    () => check("ReduceMeanAll", [A], (g, x) => op(g, "ReduceMean", x, [makeAttr("keepdims", 0)])),
  );
  await t.step(
    "ReduceSum axes [1] keepdims 0",
    () =>
      check(
        "ReduceSum",
        [A],
        (g, x) => op(g, "ReduceSum", [x[0], ints(g, [1])], [makeAttr("keepdims", 0)]),
      ),
  );
  await t.step(
    "decomposed LayerNorm (opset-13 export pattern)",
    () =>
      check("LNdecomp", [{ dims: [2, 3, 8] }, { dims: [8] }, { dims: [8] }], (g, x) => {
        const mu = op(g, "ReduceMean", [x[0]], [makeAttr("axes", [-1])]);
        const d = op(g, "Sub", [x[0], mu]);
        const v = op(g, "ReduceMean", [op(g, "Pow", [d, fl(g, 2)])], [makeAttr("axes", [-1])]);
        const sd = op(g, "Sqrt", [op(g, "Add", [v, fl(g, 1e-5)])]);
        return op(g, "Add", [op(g, "Mul", [op(g, "Div", [d, sd]), x[1]]), x[2]]);
      }),
  );
});

Deno.test("autodiff rules: MatMul, Gemm, Conv", async (t) => {
  await t.step(
    "MatMul [2,3,4] @ [4,5] (linear layer)",
    () => check("MatMulW", [{ dims: [2, 3, 4] }, { dims: [4, 5] }], (g, x) => op(g, "MatMul", x)),
  );
  await t.step(
    "MatMul batched [2,3,4] @ [2,4,5]",
    () =>
      check("MatMulB", [{ dims: [2, 3, 4] }, { dims: [2, 4, 5] }], (g, x) => op(g, "MatMul", x)),
  );
  await t.step(
    "MatMul broadcast [2,1,3,4] @ [3,4,2]",
    () =>
      check(
        "MatMulBc",
        [{ dims: [2, 1, 3, 4] }, { dims: [3, 4, 2] }],
        (g, x) => op(g, "MatMul", x),
      ),
  );
  await t.step(
    "MatMul 2-D @ batched [3,4] @ [2,4,5]",
    () => check("MatMul2B", [{ dims: [3, 4] }, { dims: [2, 4, 5] }], (g, x) => op(g, "MatMul", x)),
  );
  await t.step("MatMul with 1-D operands", async () => {
    await check("MatMul1a", [{ dims: [4] }, { dims: [2, 4, 5] }], (g, x) => op(g, "MatMul", x));
    await check("MatMul1b", [{ dims: [2, 3, 4] }, { dims: [4] }], (g, x) => op(g, "MatMul", x));
    await check("MatMul11", [{ dims: [4] }, { dims: [4] }], (g, x) => op(g, "MatMul", x));
  });
  for (const [ta, tb] of [[0, 0], [1, 0], [0, 1], [1, 1]]) {
    await t.step(`Gemm transA=${ta} transB=${tb} alpha beta, C [5]`, () =>
      check(
        `Gemm${ta}${tb}`,
        [{ dims: ta ? [4, 3] : [3, 4] }, { dims: tb ? [5, 4] : [4, 5] }, { dims: [5] }],
        (g, x) =>
          op(g, "Gemm", x, [
            makeAttr("transA", ta),
            makeAttr("transB", tb),
            makeAttr("alpha", 0.7, "float"),
            makeAttr("beta", 1.3, "float"),
          ]),
      ));
  }
  await t.step(
    "Gemm with C [3,1]",
    () =>
      check(
        "GemmC",
        [{ dims: [3, 4] }, { dims: [4, 5] }, { dims: [3, 1] }],
        (g, x) => op(g, "Gemm", x),
      ),
  );
  await t.step("Conv patch embedding: stride = kernel 4, bias", () =>
    check(
      "ConvPatch",
      [{ dims: [2, 1, 8, 8] }, { dims: [3, 1, 4, 4] }, { dims: [3] }],
      (g, x) =>
        op(g, "Conv", x, [
          makeAttr("kernel_shape", [4, 4]),
          makeAttr("strides", [4, 4]),
        ]),
    ));
  await t.step("Conv stride 2, pads 1, kernel 3, odd input (dropped remainder)", () =>
    check(
      "ConvGeneral",
      [{ dims: [2, 2, 6, 7] }, { dims: [3, 2, 3, 3] }],
      (g, x) => op(g, "Conv", x, [makeAttr("strides", [2, 2]), makeAttr("pads", [1, 0, 1, 1])]),
    ));
  await t.step("Conv dilation 2", () =>
    check(
      "ConvDil",
      [{ dims: [1, 2, 7, 7] }, { dims: [2, 2, 2, 2] }, { dims: [2] }],
      (g, x) => op(g, "Conv", x, [makeAttr("dilations", [2, 2])]),
    ));
});

Deno.test("autodiff rules: shape and data movement ops", async (t) => {
  const A = { dims: [2, 3, 4] };
  await t.step(
    "Reshape via a Shape-computed target (no gradient into shapes)",
    () =>
      check("Reshape", [A], (g, x) => {
        const sh = op(g, "Shape", [x[0]]);
        const n = op(g, "Gather", [sh, ints(g, [0])], [makeAttr("axis", 0)]);
        const tgt = op(g, "Concat", [n, ints(g, [-1])], [makeAttr("axis", 0)]);
        return op(g, "Reshape", [x[0], tgt]);
      }),
  );
  await t.step(
    "Transpose [2,0,1]",
    () => check("Transpose", [A], (g, x) => op(g, "Transpose", x, [makeAttr("perm", [2, 0, 1])])),
  );
  await t.step(
    "Flatten axis 2",
    () => check("Flatten", [A], (g, x) => op(g, "Flatten", x, [makeAttr("axis", 2)])),
  );
  await t.step("Unsqueeze then Squeeze", () =>
    check("Unsqueeze", [A], (g, x) => {
      const u = op(g, "Unsqueeze", [x[0], ints(g, [1, -1])]);
      return op(g, "Squeeze", [op(g, "Mul", [u, u]), ints(g, [-1])]);
    }));
  await t.step(
    "Concat of three along axis 1",
    () =>
      check(
        "Concat",
        [{ dims: [2, 1, 4] }, A, { dims: [2, 2, 4] }],
        (g, x) => op(g, "Concat", x, [makeAttr("axis", 1)]),
      ),
  );
  await t.step(
    "Split with sizes, one output unused",
    () =>
      check("Split", [{ dims: [2, 6] }], (g, x) => {
        const [a, _b, c] = [0, 1, 2].map(() => g.uniqueName("s"));
        g.addNode("Split", [x[0], ints(g, [1, 2, 3])], {
          outputs: [a, _b, c],
          attributes: [makeAttr("axis", 1)],
        });
        return op(g, "Concat", [c, a], [makeAttr("axis", 1)]);
      }),
  );
  await t.step(
    "Slice with negative start, axes subset, open end",
    () =>
      check(
        "Slice",
        [{ dims: [3, 5, 4] }],
        (g, x) => op(g, "Slice", [x[0], ints(g, [-4, 1]), ints(g, [1000, 3]), ints(g, [1, 2])]),
      ),
  );
  await t.step(
    "Slice with step 2 (patch merging)",
    () =>
      check(
        "SliceStep",
        [{ dims: [2, 5, 6] }],
        (g, x) =>
          op(g, "Slice", [
            x[0],
            ints(g, [1, 0]),
            ints(g, [5, 6]),
            ints(g, [1, 2]),
            ints(g, [2, 3]),
          ]),
      ),
  );
  await t.step("Swin roll: Slice + Concat", () =>
    check("Roll", [{ dims: [2, 5, 3] }], (g, x) => {
      const a = op(g, "Slice", [x[0], ints(g, [-2]), ints(g, [1000]), ints(g, [1])]);
      const b = op(g, "Slice", [x[0], ints(g, [0]), ints(g, [-2]), ints(g, [1])]);
      return op(g, "Concat", [a, b], [makeAttr("axis", 1)]);
    }));
  await t.step("Gather scalar index on axis 0 and axis 1", async () => {
    await check(
      "Gather0",
      [A],
      (g, x) => op(g, "Gather", [x[0], ints(g, [1], [])], [makeAttr("axis", 0)]),
    );
    await check(
      "Gather1",
      [A],
      (g, x) => op(g, "Gather", [x[0], ints(g, [-1], [])], [makeAttr("axis", 1)]),
    );
  });
  await t.step(
    "Gather with repeated and negative indices [[0, 2], [0, -1]]",
    () =>
      check(
        "GatherDup",
        [A],
        (g, x) => op(g, "Gather", [x[0], ints(g, [0, 2, 0, -1], [2, 2])], [makeAttr("axis", 1)]),
      ),
  );
  await t.step(
    "Pad constant",
    () =>
      check(
        "Pad",
        [{ dims: [2, 3] }],
        (g, x) => op(g, "Pad", [x[0], ints(g, [1, 0, 0, 2]), fl(g, 0.5)]),
      ),
  );
  await t.step("Pad with run-time pads", () =>
    check("PadDyn", [{ dims: [2, 3] }], (g, x) => {
      const p = op(g, "Concat", [ints(g, [0, 1]), op(g, "Shape", [x[0]])], [makeAttr("axis", 0)]);
      return op(g, "Pad", [x[0], p]);
    }));
  await t.step("one value with several consumers", () =>
    check("Fanout", [A], (g, x) => {
      const a = op(g, "Tanh", x);
      const b = op(g, "Softmax", [x[0]], [makeAttr("axis", -1)]);
      return op(g, "Add", [op(g, "Mul", [a, b]), op(g, "ReduceSum", [x[0], ints(g, [2])])]);
    }));
});

Deno.test("autodiff losses: cross-entropy, KL (batchmean) and MSE against finite differences", async () => {
  const rt = await runtime();
  const g = await emptyGraph();
  addFloatInput(g, "logits", ["n", 5]);
  addFloatInput(g, "v", ["n", 3]);
  const loss: LossSpec = [
    { kind: "cross_entropy", logits: "logits", target: "p" },
    { kind: "kl", logits: "logits", target: "q", weight: 0.5 },
    { kind: "mse", value: "v", target: "t", weight: 2 },
  ];
  const gg = buildGradientGraph(g, { loss, wrt: ["logits", "v"] });
  assert.deepEqual(gg.extraInputs, ["p", "q", "t"]);
  const s = await rt.createSession(gg.graph);
  const n = 4;
  const logits = randomData(n * 5, 1, 2);
  const p = new Float32Array(n * 5);
  [1, 4, 0, 2].forEach((c, i) => (p[i * 5 + c] = 1));
  const q = positive(n * 5, 2, 0, 1);
  for (let i = 0; i < n; i++) {
    let z = 0;
    for (let c = 0; c < 5; c++) z += q[i * 5 + c];
    for (let c = 0; c < 5; c++) q[i * 5 + c] /= z;
  }
  q[3] = 0; // a zero probability: 0 log 0 = 0
  const v = randomData(n * 3, 3), t = randomData(n * 3, 4);
  const feeds = {
    logits: { data: logits, dims: [n, 5] },
    v: { data: v, dims: [n, 3] },
    p: { data: p, dims: [n, 5] },
    q: { data: q, dims: [n, 5] },
    t: { data: t, dims: [n, 3] },
  };
  const out = await s.run(feeds);
  // reference loss in float64
  let ce = 0, kl = 0, mse = 0;
  for (let i = 0; i < n; i++) {
    const row = Array.from(logits.slice(i * 5, i * 5 + 5));
    const m = Math.max(...row);
    const lse = m + Math.log(row.reduce((a, b) => a + Math.exp(b - m), 0));
    for (let c = 0; c < 5; c++) {
      const ls = row[c] - lse;
      ce -= p[i * 5 + c] * ls;
      const qq = q[i * 5 + c];
      if (qq > 0) kl += qq * (Math.log(qq) - ls);
    }
  }
  for (let i = 0; i < n * 3; i++) mse += (v[i] - t[i]) ** 2;
  const ref = ce / n + 0.5 * kl / n + 2 * mse / (n * 3);
  assert.ok(Math.abs(out[gg.lossName].data[0] - ref) < 1e-5 * Math.abs(ref), "loss value");
  for (const w of ["logits", "v"]) {
    const fd = await finiteDifferences(s, feeds, gg.lossName, w, H);
    const err = relError(out[gg.gradNames.get(w)!].data, fd);
    assert.ok(err < TOL, `${w}: rel error ${err}`);
  }
  await s.release();
});

Deno.test("autodiff: an op without a rule on the gradient path is refused by name", async () => {
  const g = await emptyGraph();
  addFloatInput(g, "x", [2, 3]);
  const a = g.addNode("Sin", ["x"], { name: "my_sin" });
  const y = g.addNode("Mul", [a, "x"]);
  assert.throws(
    () => buildGradientGraph(g, { loss: { kind: "sum", value: y }, wrt: ["x"] }),
    (e: unknown) => e instanceof VitqError && /Sin/.test(e.message) && /my_sin/.test(e.message),
  );
  // the same op off the path (its input does not depend on wrt) is fine
  const h = await emptyGraph();
  addFloatInput(h, "x", [2, 3]);
  addFloatInput(h, "c", [2, 3]);
  const y2 = h.addNode("Mul", [h.addNode("Sin", ["c"]), "x"]);
  buildGradientGraph(h, { loss: { kind: "sum", value: y2 }, wrt: ["x"] });
  // unsupported inputs of a supported op are refused too (Pad's constant value)
  const k = await emptyGraph();
  addFloatInput(k, "x", [2, 3]);
  addFloatInput(k, "v", []);
  const padded = k.addNode("Pad", ["x", ints(k, [1, 1, 1, 1]), "v"], { name: "my_pad" });
  assert.throws(
    () => buildGradientGraph(k, { loss: { kind: "sum", value: padded }, wrt: ["v"] }),
    (e: unknown) => e instanceof VitqError && /my_pad/.test(e.message),
  );
  // and so are unknown names and old opsets
  assert.throws(
    () => buildGradientGraph(h, { loss: { kind: "sum", value: y2 }, wrt: ["nope"] }),
    VitqError,
  );
  const old = await emptyGraph(11);
  addFloatInput(old, "x", [2]);
  assert.throws(
    () => buildGradientGraph(old, { loss: { kind: "sum", value: "x" }, wrt: ["x"] }),
    /opset 11/,
  );
});

Deno.test("autodiff: pruning, zero gradients and Round straight-through", async () => {
  const g = await emptyGraph();
  addFloatInput(g, "x", [2, 3]);
  addFloatInput(g, "u", [2, 3]);
  const y = g.addNode("Mul", [g.addNode("Round", ["x"]), fl(g, 3)]);
  g.addNode("Tanh", ["u"]); // dead branch: pruned
  const gg = buildGradientGraph(g, { loss: { kind: "sum", value: y }, wrt: ["x", "u"] });
  assert.ok(!gg.graph.nodes.some((n) => n.opType === "Tanh"), "unused nodes pruned");
  assert.deepEqual(gg.graph.outputNames, [
    gg.lossName,
    gg.gradNames.get("x"),
    gg.gradNames.get("u"),
  ]);
  const rt = await runtime();
  const s = await rt.createSession(gg.graph);
  const x = randomData(6, 9, 3);
  const out = await s.run({ x: { data: x, dims: [2, 3] }, u: { data: x, dims: [2, 3] } });
  assert.deepEqual(
    Array.from(out[gg.gradNames.get("x")!].data),
    Array(6).fill(3),
    "STE: d round = 1",
  );
  assert.deepEqual(Array.from(out[gg.gradNames.get("u")!].data), Array(6).fill(0), "u: no path");
  await s.release();
  const z = buildGradientGraph(g, { loss: { kind: "sum", value: y }, wrt: ["x"], round: "zero" });
  const sz = await rt.createSession(z.graph);
  const oz = await sz.run({ x: { data: x, dims: [2, 3] } });
  assert.ok(!sz.inputNames.includes("u"), "unused input pruned");
  assert.deepEqual(Array.from(oz[z.gradNames.get("x")!].data), Array(6).fill(0), "round: zero");
  await sz.release();
  assert.throws(
    () => buildGradientGraph(g, { loss: { kind: "sum", value: y }, wrt: ["x"], round: "error" }),
    /Round/,
  );
});

Deno.test("autodiff: one gradient value shared by several wrt values is output for each", async () => {
  // d(sum(2 (a + b)))/ds = da = db: one emitted value, renamed for the first
  // output and copied for the others
  const g = await emptyGraph();
  addFloatInput(g, "a", [2, 3]);
  addFloatInput(g, "b", [2, 3]);
  const s = g.addNode("Add", ["a", "b"]);
  const y = g.addNode("Mul", [s, fl(g, 2)]);
  const gg = buildGradientGraph(g, { loss: { kind: "sum", value: y }, wrt: [s, "a", "b"] });
  const names = [s, "a", "b"].map((v) => gg.gradNames.get(v)!);
  assert.equal(new Set(names).size, 3);
  const copies = gg.graph.nodes.filter((n) =>
    n.opType === "Identity" && names.includes(n.outputs[0])
  );
  assert.equal(copies.length, 2, "the first output is the emitted value itself");
  const rt = await runtime();
  const sess = await rt.createSession(gg.graph);
  const d = { data: randomData(6, 3), dims: [2, 3] };
  const out = await sess.run({ a: d, b: d });
  for (const n of names) assert.deepEqual(Array.from(out[n].data), Array(6).fill(2), n);
  await sess.release();
});
