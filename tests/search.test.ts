import assert from "node:assert/strict";
import {
  type CandidateQuantizer,
  CandidateScorer,
  type Metric,
  type ScoreProblem,
  tileCount,
  tileRows,
} from "../core/quant/search.ts";
import { fakeQuant, symmetric } from "../core/quant/uniform.ts";
import { twinGelu, twinSoftmax, type TwinVariant } from "../core/quant/twin.ts";
import { randomData, runtime } from "./helpers.ts";

/** Direct TypeScript scoring of Ô = A·B (+bias) against O, for cross-checking the ORT graph. */
function direct(
  a: Float32Array,
  b: Float32Array,
  m: number,
  k: number,
  n: number,
  o: Float32Array,
  g: Float32Array,
  metric: Metric,
): number {
  let total = 0, cosSum = 0;
  for (let i = 0; i < m; i++) {
    let dot = 0, ny = 0, no = 0;
    for (let j = 0; j < n; j++) {
      let y = 0;
      for (let t = 0; t < k; t++) y += a[i * k + t] * b[t * n + j];
      const d = y - o[i * n + j];
      total += metric === "hessian" ? (d * g[i * n + j]) ** 2 : d * d;
      dot += y * o[i * n + j];
      ny += y * y;
      no += o[i * n + j] ** 2;
    }
    cosSum += dot / Math.sqrt(ny * no);
  }
  return metric === "cosine" ? -cosSum / m : total;
}

Deno.test("batched candidate scoring equals a direct computation, for every metric", async () => {
  const m = 40, k = 12, n = 9;
  const x = randomData(m * k, 1, 2);
  const w = randomData(k * n, 2, 0.5);
  const o = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let y = 0;
      for (let t = 0; t < k; t++) y += x[i * k + t] * w[t * n + j];
      o[i * n + j] = y;
    }
  }
  const g = randomData(m * n, 3, 1);
  const steps = [0.05, 0.1, 0.2, 0.4, 0.8];
  for (const metric of ["hessian", "mse", "cosine"] as Metric[]) {
    const rt = await runtime();
    const sc = await CandidateScorer.create(rt, {
      vary: "a",
      aDims: [m, k],
      bDims: [k, n],
      oDims: [m, n],
      metric,
    });
    const cands = steps.map((s) => fakeQuant(x, [m, k], symmetric(4, s)));
    const got = await sc.score(cands.length, (i) => cands[i], w, o, g);
    await sc.release();
    const want = cands.map((c) => direct(c, w, m, k, n, o, g, metric));
    for (let i = 0; i < steps.length; i++) {
      assert.ok(
        Math.abs(got[i][0] - want[i]) <= 1e-4 * Math.max(1, Math.abs(want[i])),
        `${metric} ${i}: ${got[i][0]} vs ${want[i]}`,
      );
    }
  }
});

Deno.test("the search picks the known optimum of a synthetic layer", async () => {
  // O is produced by an input already on a 4-bit grid of step 0.25: that step
  // (factor 1 of the grid) reproduces O exactly, so it must win.
  const m = 64, k = 16, n = 8;
  const x = fakeQuant(randomData(m * k, 4, 1.5), [m * k], symmetric(4, 0.25));
  const w = randomData(k * n, 5, 1);
  const o = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      for (let t = 0; t < k; t++) o[i * n + j] += x[i * k + t] * w[t * n + j];
    }
  }
  const factors = Array.from({ length: 40 }, (_, i) => 0.5 + i * 0.025); // includes exactly 1.0 at i = 20
  const rt = await runtime();
  const sc = await CandidateScorer.create(rt, {
    vary: "a",
    aDims: [m, k],
    bDims: [k, n],
    oDims: [m, n],
    metric: "mse",
  }, 4096);
  const scores = await sc.score(
    factors.length,
    (i) => fakeQuant(x, [m, k], symmetric(4, 0.25 * factors[i])),
    w,
    o,
  );
  await sc.release();
  const best = scores.reduce((bi, s, i) => (s[0] < scores[bi][0] ? i : bi), 0);
  assert.equal(factors[best], 1);
  assert.ok(scores[best][0] < 1e-6);
});

Deno.test("in-graph candidate quantization scores exactly like TypeScript-quantized candidates", async () => {
  // Same problem scored twice: candidates fake-quantized by the TypeScript
  // references and fed as tensors, and candidates quantized inside the scoring
  // graph from the raw operand. Equal quantized candidates give equal scores.
  const m = 30, k = 10, n = 7, bits = 4;
  const rt = await runtime();
  const softmaxLike = randomData(m * k, 11, 1).map((v) => Math.abs(v) / 3);
  const geluLike = randomData(m * k, 12, 2).map((v) => (v < -0.17 ? -0.17 : v));
  const w = randomData(k * n, 13, 0.5);
  const o = randomData(m * n, 14, 1);
  const g = randomData(m * n, 15, 1);
  const cases: {
    quant: CandidateQuantizer;
    x: Float32Array;
    vary: "a" | "b";
    params: number[][];
    ts: (x: Float32Array, p: number[]) => Float32Array;
  }[] = [
    {
      quant: { kind: "uniform", bits },
      x: randomData(m * k, 16, 2),
      vary: "a",
      params: [[0.05], [0.1], [0.3]],
      ts: (x, p) => fakeQuant(x, [m, k], symmetric(bits, p[0])),
    },
    {
      quant: { kind: "uniform", bits, columns: n },
      x: w,
      vary: "b",
      params: [0.02, 0.05, 0.1].map((s) => Array.from({ length: n }, (_, j) => s * (1 + j / 4))),
      ts: (x, p) =>
        fakeQuant(x, [k, n], {
          bits,
          signed: true,
          scale: Float32Array.from(p),
          zeroPoint: new Float32Array(n),
          axis: 1,
        }),
    },
    ...(["paper", "reference"] as TwinVariant[]).map((variant) => ({
      quant: { kind: "twin-softmax", bits, variant } as CandidateQuantizer,
      x: softmaxLike,
      vary: "a" as const,
      params: [[1], [2 ** -2], [2 ** -5]],
      ts: (x: Float32Array, p: number[]) => twinSoftmax(x, { bits, split: p[0], variant }),
    })),
    {
      quant: { kind: "twin-gelu", bits },
      x: geluLike,
      vary: "a",
      params: [[0.1], [0.25], [0.5]],
      ts: (x, p) => twinGelu(x, { bits, posScale: p[0] }),
    },
  ];
  for (const c of cases) {
    const problem = {
      vary: c.vary,
      aDims: [m, k],
      bDims: [k, n],
      oDims: [m, n],
      metric: "hessian" as Metric,
      perColumn: true,
    };
    const fixed = c.vary === "a" ? w : randomData(m * k, 17, 1);
    const plain = await CandidateScorer.create(rt, problem);
    const inGraph = await CandidateScorer.create(rt, { ...problem, quant: c.quant });
    const want = await plain.score(c.params.length, (i) => c.ts(c.x, c.params[i]), fixed, o, g);
    const got = await inGraph.scoreQuantized(c.params.length, (i) => c.params[i], c.x, fixed, o, g);
    await plain.release();
    await inGraph.release();
    assert.deepEqual(got, want, `${c.quant.kind} ${JSON.stringify(c.quant)}`);
  }
});

Deno.test("tiled scoring (rows / batch split into tiles) equals untiled scoring up to summation order, and picks its tile count by size", async () => {
  const rt = await runtime();
  const close = (got: Float64Array[], want: Float64Array[], what: string) => {
    assert.equal(got.length, want.length, what);
    got.forEach((row, i) =>
      row.forEach((v, j) => {
        const w = want[i][j];
        assert.ok(Math.abs(v - w) <= 1e-5 * Math.abs(w) + 1e-12, `${what}: ${v} vs ${w}`);
      })
    );
  };
  const linear = (vary: "a" | "b") => ({
    vary,
    aDims: [23, 6],
    bDims: [6, 5],
    oDims: [23, 5],
    metric: "hessian" as Metric,
  });
  const B = 5, H = 2, N = 7, d = 3;
  const heads = (vary: "a" | "b") => ({
    vary,
    aDims: [B, H, N, d],
    bDims: [B, H, d, N],
    oDims: [B, H, N, N],
    metric: "hessian" as Metric,
    keepAxis: 1,
    quant: { kind: "uniform", bits: 4, columns: H, axis: 1 } as CandidateQuantizer,
  });
  const cases: (ScoreProblem & { quant: CandidateQuantizer })[] = [
    { ...linear("b"), perColumn: true, quant: { kind: "uniform", bits: 4, columns: 5 } },
    { ...linear("a"), quant: { kind: "twin-gelu", bits: 4 } },
    { ...linear("a"), metric: "mse", quant: { kind: "uniform", bits: 3 } },
    heads("a"),
    heads("b"),
  ];
  for (const [ci, c] of cases.entries()) {
    const size = (dims: readonly number[]) => dims.reduce((a, b) => a * b, 1);
    const varDims = c.vary === "a" ? c.aDims : c.bDims,
      fixDims = c.vary === "a" ? c.bDims : c.aDims;
    const raw = randomData(size(varDims), 40 + ci, 1);
    const fixed = randomData(size(fixDims), 50 + ci, 1);
    const o = randomData(size(c.oDims), 60 + ci, 1), g = randomData(size(c.oDims), 70 + ci, 1);
    const width = c.quant.kind === "uniform" ? c.quant.columns ?? 1 : 1;
    const params = [0.05, 0.2, 0.6].map((s) =>
      new Array(width).fill(s).map((v, i) => v * (1 + i / 4))
    );
    const plain = await CandidateScorer.create(rt, { ...c, tiles: 1 });
    const want = await plain.scoreQuantized(3, (k) => params[k], raw, fixed, o, g);
    await plain.release();
    for (const tiles of [2, 3, c.oDims[0]]) {
      const sc = await CandidateScorer.create(rt, { ...c, tiles });
      close(
        await sc.scoreQuantized(3, (k) => params[k], raw, fixed, o, g),
        want,
        `case ${ci} tiles ${tiles}`,
      );
      await sc.release();
    }
  }
  // the tile count: output (and split operands) per tile within the byte budget
  const big = { ...linear("b"), aDims: [6304, 192], bDims: [192, 768], oDims: [6304, 768] };
  assert.equal(tileCount({ ...big, quant: { kind: "uniform", bits: 8 } }), 10);
  assert.equal(tileCount({ ...big, quant: { kind: "uniform", bits: 8 } }, 2 ** 30), 1);
  assert.equal(tileCount(big), 1, "candidates fed as tensors are not tiled");
  assert.equal(tileCount({ ...big, metric: "cosine", quant: { kind: "uniform", bits: 8 } }), 1);
  assert.deepEqual(tileRows(10, 3), [4, 3, 3]);
  assert.deepEqual(tileRows(2, 5), [1, 1]);
});

Deno.test("integer scoring (MatMulIntegerToFloat on the codes) equals the float path up to rounding, for A and B searches, tiled or not", async () => {
  const rt = await runtime();
  const m = 37, k = 16, n = 6;
  const x = randomData(m * k, 81, 1), w = randomData(k * n, 82, 0.3);
  const o = randomData(m * n, 83, 1), g = randomData(m * n, 84, 1);
  const colSteps = Array.from({ length: n }, (_, j) => 0.004 * (1 + j / 3));
  const wq = new Float32Array(w.length);
  for (let i = 0; i < w.length; i++) {
    const c = Math.max(-8, Math.min(7, Math.round(w[i] / colSteps[i % n])));
    wq[i] = Math.fround(c * Math.fround(colSteps[i % n]));
  }
  const xq = fakeQuant(x, [m, k], symmetric(8, 0.02));
  // GELU outputs: down to about -0.17, with ties and zeros
  const geluX = x.map((v, i) => (i % 7 === 0 ? 0 : v < 0 ? -0.17 * Math.tanh(-v) : v));
  const base = { aDims: [m, k], bDims: [k, n], oDims: [m, n], metric: "hessian" as Metric };
  const cases: {
    p: ScoreProblem;
    raw: Float32Array;
    fixed: Float32Array;
    fs: number[];
    params: number[][];
  }[] = [
    {
      p: { ...base, vary: "a", quant: { kind: "uniform", bits: 8 } },
      raw: x,
      fixed: wq,
      fs: colSteps,
      params: [[0.01], [0.02], [0.05]],
    },
    {
      p: { ...base, vary: "a", metric: "mse", quant: { kind: "uniform", bits: 4 } },
      raw: x,
      fixed: wq,
      fs: colSteps,
      params: [[0.1], [0.3]],
    },
    {
      p: { ...base, vary: "b", perColumn: true, quant: { kind: "uniform", bits: 4, columns: n } },
      raw: w,
      fixed: xq,
      fs: [0.02],
      params: [colSteps, colSteps.map((s) => 2 * s)],
    },
    {
      p: { ...base, vary: "a", quant: { kind: "twin-gelu", bits: 4 } },
      raw: geluX,
      fixed: wq,
      fs: colSteps,
      params: [[0.05], [0.2], [0.7]],
    },
    {
      p: {
        ...base,
        vary: "b",
        perColumn: true,
        fixedA: { kind: "twin-gelu", bits: 6 },
        quant: { kind: "uniform", bits: 8, columns: n },
      },
      raw: w,
      fixed: twinGelu(geluX, { bits: 6, posScale: 0.1 }),
      fs: [0.1],
      params: [colSteps, colSteps.map((s) => 3 * s)],
    },
    {
      p: { ...base, vary: "b", quant: { kind: "uniform", bits: 8 } },
      raw: w,
      fixed: xq,
      fs: [0.02],
      params: [[0.003], [0.01]],
    },
  ];
  for (const [ci, c] of cases.entries()) {
    const float = await CandidateScorer.create(rt, { ...c.p, tiles: 1 });
    const want = await float.scoreQuantized(
      c.params.length,
      (i) => c.params[i],
      c.raw,
      c.fixed,
      o,
      g,
    );
    await float.release();
    for (const tiles of [1, 3]) {
      const int = await CandidateScorer.create(rt, { ...c.p, tiles, integer: true });
      const got = await int.scoreQuantized(
        c.params.length,
        (i) => c.params[i],
        c.raw,
        c.fixed,
        o,
        g,
        c.fs,
      );
      await int.release();
      got.forEach((row, i) =>
        row.forEach((v, j) => {
          const wv = want[i][j];
          assert.ok(
            Math.abs(v - wv) <= 1e-4 * Math.abs(wv) + 1e-9,
            `case ${ci} tiles ${tiles}: ${v} vs ${wv}`,
          );
        })
      );
    }
  }
  // a small problem keeps the float path unless its tiles are set
  const small = await CandidateScorer.create(rt, { ...cases[0].p, integer: true });
  const same = await small.scoreQuantized(1, () => [0.02], x, wq, o, g, colSteps);
  await small.release();
  const plain = await CandidateScorer.create(rt, cases[0].p);
  assert.deepEqual(same, await plain.scoreQuantized(1, () => [0.02], x, wq, o, g));
  await plain.release();
  // a problem the integer path cannot take is refused, not approximated
  await assert.rejects(
    CandidateScorer.create(rt, {
      ...base,
      vary: "a",
      integer: true,
      tiles: 1,
      quant: { kind: "twin-softmax", bits: 8, variant: "reference" },
    }),
    /integer scoring/,
  );
});
