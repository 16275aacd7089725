import assert from "node:assert/strict";
import { attr, DataType, Graph } from "../core/onnx/graph.ts";
import {
  emitTwinGelu,
  emitTwinSoftmax,
  twinGelu,
  type TwinGeluQuantizer,
  twinGeluSteps,
  twinSoftmax,
  type TwinSoftmaxQuantizer,
  twinSoftmaxSteps,
} from "../core/quant/twin.ts";
import {
  calibrateShift,
  emitLogSqrt2Quant,
  emitShiftLog2Quant,
  logCode,
  logLevels,
  logSqrt2Quant,
  type LogSqrt2Quantizer,
  logThresholds,
  SHIFT_EPS,
  shiftLog2Quant,
  type ShiftLog2Quantizer,
} from "../core/quant/log.ts";
import {
  emitPerPatchQuant,
  initPerPatch,
  PERCENTILE_CANDIDATES,
  perPatchQuant,
  type PerPatchQuantizer,
  quantileLinear,
} from "../core/quant/outlier.ts";
import { roundHalfEven } from "../core/quant/uniform.ts";
import { FIXTURES, randomData, runtime } from "./helpers.ts";

// ---------------------------------------------------------------- helpers

const f = Math.fround;

/** The float32 right above / below a finite float32 (by bit pattern, any sign). */
function nextAfter(x: number, up: boolean): number {
  const a = Float32Array.of(x);
  const u = new Uint32Array(a.buffer);
  if (x === 0) {
    u[0] = up ? 1 : 0x80000001;
    return a[0];
  }
  const away = (x > 0) === up;
  u[0] += away ? 1 : -1;
  return a[0];
}

function assertClose(actual: ArrayLike<number>, expected: number[], tol: number, label: string) {
  assert.equal(actual.length, expected.length, `${label}: length`);
  for (let i = 0; i < expected.length; i++) {
    assert.ok(
      Math.abs(actual[i] - expected[i]) <= tol,
      `${label}[${i}]: got ${actual[i]}, expected ${expected[i]} (tolerance ${tol})`,
    );
  }
}

/** A number as text, showing the sign of zero. */
function show(v: number): string {
  return Object.is(v, -0) ? "-0" : String(v);
}

/** Assert two float32 arrays are identical bit for bit (sign of zero included). */
function assertSameBits(
  actual: Float32Array,
  expected: Float32Array,
  x: Float32Array,
  label: string,
) {
  assert.equal(actual.length, expected.length, `${label}: length`);
  const a = new Uint32Array(Float32Array.from(actual).buffer);
  const e = new Uint32Array(Float32Array.from(expected).buffer);
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== e[i]) {
      assert.fail(
        `${label}: element ${i} (x = ${show(x[i])}): ONNX Runtime gave ${show(actual[i])}, ` +
          `reference ${show(expected[i])}`,
      );
    }
  }
}

/** Build a graph that is only the emitted subgraph on input "x" and run it with ONNX Runtime. */
async function runEmitted(
  x: Float32Array,
  dims: number[],
  emit: (g: Graph, input: string) => string,
  fixture = "tiny_vit_op17.onnx",
): Promise<Float32Array> {
  const g = await Graph.load(`${FIXTURES}${fixture}`);
  g.nodes = [];
  g.initializers.clear();
  g.valueInfo = [];
  g.inputs = [{
    name: "x",
    type: { tensorType: { elemType: 1, shape: { dim: dims.map((d) => ({ dimValue: d })) } } },
  }];
  const y = emit(g, "x");
  g.outputs = [{ name: y, type: { tensorType: { elemType: 1 } } }];
  const rt = await runtime();
  const s = await rt.createSession(g);
  try {
    const out = await s.run({ x: { data: x, dims } });
    return Float32Array.from(out[y].data);
  } finally {
    await s.release();
  }
}

const FIXTURE_OPSETS = ["tiny_vit_op17.onnx", "tiny_vit_op13.onnx"];

// ---------------------------------------------------------------- twin uniform

Deno.test("twin softmax quantizer: paper and reference test vectors (8 bits, split 2^-8)", () => {
  const x = Float32Array.from([0, 0.001, 0.003, 0.0039, 0.004, 0.05, 0.5, 1]);
  const paper = twinSoftmax(x, { bits: 8, split: 2 ** -8, variant: "paper" });
  assertClose(
    paper,
    [0, 0.001015, 0.003014, 0.003906, 0.007874, 0.047244, 0.503937, 1],
    1e-6,
    "paper",
  );
  const ref = twinSoftmax(x, { bits: 8, split: 2 ** -8, variant: "reference" });
  assertClose(
    ref,
    [0, 0.001015, 0.003014, 0.003906, 0.01178, 0.05115, 0.507843, 1.003906],
    1e-6,
    "reference",
  );
});

Deno.test("twin softmax quantizer: reference variant semantics with a large split", () => {
  // 4 bits: qmax 7; split 0.5: round(0.5 * 7) = 4 (half to even), so every x < split
  // gets 4/7 from the large branch, and every x >= split gets exactly split from the small one
  const q: TwinSoftmaxQuantizer = { bits: 4, split: 0.5, variant: "reference" };
  const { small } = twinSoftmaxSteps(4, 0.5);
  const x = Float32Array.from([0, 0.1, 0.49, 0.5, 0.9, 1, 1.5, -0.2]);
  const y = twinSoftmax(x, q);
  const hiSplit = 4 / 7;
  assertClose(
    y,
    [
      hiSplit,
      hiSplit + 1 * small,
      hiSplit + 7 * small,
      hiSplit + 0.5,
      6 / 7 + 0.5,
      1 + 0.5,
      1 + 0.5,
      hiSplit,
    ],
    1e-6,
    "reference split 0.5",
  );
  const p = twinSoftmax(x, { ...q, variant: "paper" });
  assertClose(p, [0, 1 * small, 7 * small, 4 / 7, 6 / 7, 1, 1, 0], 1e-6, "paper split 0.5");
});

Deno.test("twin GELU quantizer: test vector (6 bits, positive step 0.1)", () => {
  const x = Float32Array.from([-0.17, -0.1, -0.02, 0, 0.05, 0.3, 1.2, 4.0]);
  const y = twinGelu(x, { bits: 6, posScale: 0.1 });
  assertClose(y, [-0.16997, -0.10092, -0.021246, 0, 0, 0.3, 1.2, 3.1], 1e-5, "twin GELU");
  const s = twinGeluSteps(6, 0.1);
  assert.equal(s.neg, f(0.16997124254703522 / 32));
  assert.deepEqual([s.nmin, s.pmax], [-32, 31]);
});

/** Values around every decision point of a twin softmax quantizer, plus random ones. */
function twinSoftmaxProbe(bits: number, split: number): Float32Array {
  const { qmax, small } = twinSoftmaxSteps(bits, split);
  const v: number[] = [0, -0, -0.3, 1, 1.5, 2, split, 1e-30];
  v.push(nextAfter(f(split), true), nextAfter(f(split), false), nextAfter(1, true));
  for (let m = 0; m <= qmax; m++) {
    for (const c of [f((m + 0.5) * small), f((m + 0.5) / qmax), f(m * small), f(m / qmax)]) {
      v.push(c, nextAfter(c, true), nextAfter(c, false));
    }
  }
  for (const r of randomData(600, 7 + bits, 1)) v.push(Math.abs(r), Math.abs(r) * split * 2);
  for (const r of randomData(100, 3, 2)) v.push(r);
  return Float32Array.from(v);
}

Deno.test("twin softmax quantizer: emission equals reference bit for bit", async () => {
  for (const fixture of FIXTURE_OPSETS) {
    for (const [bits, split] of [[8, 2 ** -8], [4, 2 ** -3], [6, 0.5], [3, 1], [8, 2 ** -19]]) {
      const x = twinSoftmaxProbe(bits, split);
      for (const variant of ["paper", "reference"] as const) {
        const q: TwinSoftmaxQuantizer = { bits, split, variant };
        const ort = await runEmitted(
          x,
          [x.length],
          (g, i) => emitTwinSoftmax(g, i, q, "tw"),
          fixture,
        );
        assertSameBits(
          ort,
          twinSoftmax(x, q),
          x,
          `${fixture} ${variant} bits ${bits} split ${split}`,
        );
      }
    }
  }
});

Deno.test("twin GELU quantizer: emission equals reference bit for bit", async () => {
  for (const fixture of FIXTURE_OPSETS) {
    for (
      const q of [{ bits: 6, posScale: 0.1 }, { bits: 4, posScale: 0.37 }, {
        bits: 8,
        posScale: 2 ** -5,
      }] as TwinGeluQuantizer[]
    ) {
      const { neg, pos, nmin, pmax } = twinGeluSteps(q.bits, q.posScale);
      const v: number[] = [0, -0, -1, -0.2, 10, 1e-30, -1e-30];
      for (let m = nmin; m <= 0; m++) {
        const c = f((m - 0.5) * neg);
        v.push(c, nextAfter(c, true), nextAfter(c, false), f(m * neg));
      }
      for (let m = 0; m <= pmax + 1; m++) {
        const c = f((m + 0.5) * pos);
        v.push(c, nextAfter(c, true), nextAfter(c, false), f(m * pos));
      }
      for (const r of randomData(500, q.bits, 0.5)) v.push(r, r * 8);
      if (v.length % 2) v.push(0.5);
      const x = Float32Array.from(v);
      const ort = await runEmitted(
        x,
        [2, x.length / 2],
        (g, i) => emitTwinGelu(g, i, q, "tg"),
        fixture,
      );
      assertSameBits(ort, twinGelu(x, q), x, `${fixture} twin GELU bits ${q.bits}`);
    }
  }
});

// ---------------------------------------------------------------- log quantizers

Deno.test("log-sqrt2 quantizer: test vector (scale 1, 4 bits)", () => {
  const x = Float32Array.from([1, 0.8, 0.5, 0.3, 0.1, 0.01, 0.001, 0]);
  const t = logThresholds(4, 1, 2);
  assert.deepEqual(Array.from(x, (v) => logCode(v, t)), [0, 1, 2, 3, 7, 13, 16, 16]);
  const y = logSqrt2Quant(x, { bits: 4, scale: 1 });
  assertClose(y, [1, 0.7071, 0.5, 0.3536, 0.0884, 0.01105, 0, 0], 1e-4, "log-sqrt2");
  // larger than the scale: code 0; negative: zero
  assert.deepEqual(Array.from(logSqrt2Quant(Float32Array.of(3, -0.5), { bits: 4, scale: 1 })), [
    1,
    0,
  ]);
});

Deno.test("log grids: thresholds are the largest float32 below the exact half-way points", () => {
  for (const r of [1, 2] as const) {
    for (const scale of [1, 0.37, 2.5e-3, 7.25, 1e-20]) {
      const d = f(scale);
      const t = logThresholds(6, d, r);
      for (let j = 1; j <= t.length; j++) {
        const h = d * 2 ** (-(2 * j - 1) / (2 * r)); // float64 half-way point
        assert.ok(t[j - 1] < h * (1 + 1e-12), `r ${r} scale ${scale} j ${j}: threshold too large`);
        assert.ok(
          nextAfter(t[j - 1], true) > h * (1 - 1e-12),
          `r ${r} scale ${scale} j ${j}: threshold not the largest`,
        );
        if (j > 1) assert.ok(t[j - 1] <= t[j - 2], "non-increasing");
      }
    }
  }
});

Deno.test("log grids: codes equal round(-r*log2(x/scale)) away from half-way points", () => {
  for (const r of [1, 2] as const) {
    for (const [bits, scale] of [[4, 1], [8, 0.0371], [3, 5]]) {
      const t = logThresholds(bits, scale, r);
      const lv = logLevels(bits, scale, r);
      const n = 2 ** bits;
      const d = f(scale);
      for (const u of randomData(3000, 11 * bits + r, 1)) {
        const x = f(d * 2 ** ((u - 0.8) * 2 ** bits / r * 1.2));
        const exact = -r * Math.log2(x / d);
        if (Math.abs(exact - Math.floor(exact) - 0.5) < 1e-6) continue;
        const want = Math.min(Math.max(Math.round(exact), 0), n);
        assert.equal(logCode(x, t), want, `r ${r} bits ${bits} x ${x}`);
        const level = want === n ? 0 : d * 2 ** (-want / r);
        // (levels below the float32 normal range lose relative precision)
        if (level === 0 || level > 1e-37) {
          assert.ok(Math.abs(lv[want] - level) <= level * 1e-6, `level ${want}`);
        }
      }
    }
  }
});

/** Positive values around every threshold of a log grid, plus a wide random spread. */
function logProbe(bits: number, scale: number, r: 1 | 2, seed: number): Float32Array {
  const v: number[] = [0, -0, -1, -1e-30, 1e-40, 1e-45, 3.4e38, f(scale), f(scale) * 4];
  for (const c of logThresholds(bits, scale, r)) {
    v.push(c, nextAfter(c, true), nextAfter(c, false));
  }
  for (const u of randomData(1000, seed, 1)) v.push(f(scale * 2 ** ((u - 0.5) * 2 ** bits)));
  for (const u of randomData(200, seed + 1, 1)) v.push(f(scale * 2 ** (u * 60)));
  while (v.length % 4) v.push(0.5);
  return Float32Array.from(v);
}

Deno.test("log-sqrt2 quantizer: emission equals reference bit for bit (thresholds included)", async () => {
  for (const fixture of FIXTURE_OPSETS) {
    for (const [bits, scale] of [[4, 1], [8, 0.0371], [3, 5], [1, 0.25], [6, 1e-3]]) {
      const q: LogSqrt2Quantizer = { bits, scale };
      const x = logProbe(bits, scale, 2, bits * 13);
      const ort = await runEmitted(
        x,
        [4, x.length / 4],
        (g, i) => emitLogSqrt2Quant(g, i, q, "ls"),
        fixture,
      );
      assertSameBits(
        ort,
        logSqrt2Quant(x, q),
        x,
        `${fixture} log-sqrt2 bits ${bits} scale ${scale}`,
      );
      // the probe really sits on decision boundaries: a code read off a float32 logarithm
      // (here JS Math.log, rounded like the emission's first step) is wrong for some values,
      // which only the emission's threshold correction repairs
      const t = logThresholds(bits, scale, 2);
      const naiveWrong = Array.from(x).filter((v) => {
        if (!(v > 1e-37)) return false;
        const a = f(f(f(Math.log(v)) - f(Math.log(f(scale)))) * f(-2 / Math.LN2));
        const naive = Math.min(Math.max(roundHalfEven(a), 0), 2 ** bits);
        return naive !== logCode(v, t);
      }).length;
      assert.ok(naiveWrong > 0, `bits ${bits}: no boundary case in the probe`);
    }
  }
  // the lookups are GatherElements on int32 codes: ONNX Runtime's Gather copies element by
  // element, about four times slower (core/quant/log.ts)
  const g = Graph.create(17);
  const ops = (n: string) => g.nodes.filter((x) => x.opType === n).length;
  emitLogSqrt2Quant(g, "x", { bits: 4, scale: 1 }, "ls");
  assert.deepEqual([ops("Gather"), ops("GatherElements")], [0, 3]);
  const casts = g.nodes.filter((n) => n.opType === "Cast").map((n) => attr(n, "to"));
  assert.deepEqual(casts, [DataType.INT32, DataType.INT32, DataType.INT32]);
});

Deno.test("shift-log2 quantizer: hand-computed cases for both variants", () => {
  const x = Float32Array.from([-0.17, -0.05, 0, 0.3, 1.0, 2.5]);
  // reference: shift by -min(x) + 1e-6, log-sqrt2 grid with scale 2, 4 bits
  const xs = Array.from(x, (v) => v + 0.17 + 1e-6);
  const codes = [16, 8, 7, 4, 2, 0];
  assert.deepEqual(Array.from(xs, (v) => logCode(f(v), logThresholds(4, 2, 2))), codes);
  const ref = shiftLog2Quant(x, { variant: "reference", bits: 4, scale: 2 });
  const want = codes.map((c) => (c >= 16 ? 0 : 2 * 2 ** (-c / 2)) - 0.17 - 1e-6);
  assertClose(ref, want, 2e-6, "shift-log2 reference");
  // paper: static shift 0.2 added, true log2 grid, 4 bits, scale 2
  const paper = shiftLog2Quant(x, { variant: "paper", bits: 4, scale: 2, shift: 0.2 });
  assertClose(paper, [-0.16875, -0.075, 0.05, 0.3, 0.8, 1.8], 2e-6, "shift-log2 paper");
  // far below -shift: the code is >= 2^k, so the output is exactly -shift
  const low = shiftLog2Quant(Float32Array.of(-0.19999, -5), {
    variant: "paper",
    bits: 4,
    scale: 2,
    shift: 0.2,
  });
  assert.deepEqual(Array.from(low), [-f(0.2), -f(0.2)]);
  // the reference variant's shift is the current input's minimum
  const other = shiftLog2Quant(Float32Array.from([-0.05, 0, 0.3]), {
    variant: "reference",
    bits: 4,
    scale: 2,
  });
  assert.ok(Math.abs(other[0] - (-0.05 - 1e-6)) < 1e-6, "minimum maps to itself (code >= 2^k)");
  assert.equal(calibrateShift(x), f(SHIFT_EPS - f(-0.17)));
});

Deno.test("shift-log2 quantizer: emission equals reference bit for bit", async () => {
  for (const fixture of FIXTURE_OPSETS) {
    const cases: ShiftLog2Quantizer[] = [
      { variant: "reference", bits: 4, scale: 2 },
      { variant: "reference", bits: 8, scale: 0.75 },
      { variant: "paper", bits: 4, scale: 2, shift: 0.2 },
      { variant: "paper", bits: 3, scale: 6, shift: 0.17 },
      { variant: "paper", bits: 8, scale: 1.5, shift: calibrateShift(Float32Array.of(-0.16997)) },
    ];
    for (const q of cases) {
      const r = q.variant === "reference" ? 2 : 1;
      // GELU-like values, plus values that land exactly on (or next to) thresholds after the shift
      const base = Array.from(randomData(400, q.bits * 5 + r, 1), (u) => u < 0 ? u * 0.17 : u * 4);
      const shift = q.variant === "paper" ? f(q.shift) : f(0.17 + 1e-6);
      for (const c of logThresholds(q.bits, q.scale, r)) {
        for (const t of [c, nextAfter(c, true), nextAfter(c, false)]) base.push(f(t - shift));
      }
      base.push(-0.17, 0, -0);
      while (base.length % 3) base.push(0.25);
      const x = Float32Array.from(base);
      const ort = await runEmitted(
        x,
        [3, x.length / 3],
        (g, i) => emitShiftLog2Quant(g, i, q, "sl"),
        fixture,
      );
      assertSameBits(ort, shiftLog2Quant(x, q), x, `${fixture} shift-log2 ${q.variant} ${q.bits}`);
    }
  }
});

// ---------------------------------------------------------------- per-patch outlier-aware

Deno.test("per-patch outlier-aware quantizer: test vector (minmax init, 4 bits, tau 5)", () => {
  const x = Float32Array.from([0.2, -0.4, 6.5, 0.1, 1.0, -1.5, 0.3, -7.0]);
  const dims = [1, 2, 4];
  const q = initPerPatch(x, dims, 4, 5, "minmax");
  assertClose(q.scale, [0.6 / 15, 2.5 / 15], 1e-7, "scales");
  assert.deepEqual(Array.from(q.zeroPoint), [10, 9]);
  const y = perPatchQuant(x, dims, q);
  assertClose(y, [0.2, -0.4, 6.5, 0.08, 1.0, -1.5, 0.3333, -7.0], 1e-4, "per-patch");
  assert.equal(y[2], f(6.5));
  assert.equal(y[7], f(-7.0));
});

/** Independent, deliberately plain per-patch quantizer: loops over image, token, channel. */
function bruteForcePerPatch(
  x: Float32Array,
  dims: number[],
  scale: Float32Array,
  zero: Float32Array,
  bits: number,
  tau: number,
): Float32Array {
  const [B, N, C] = dims;
  const top = 2 ** bits - 1;
  const limit = f(tau);
  const out = new Float32Array(x.length);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < N; t++) {
      for (let c = 0; c < C; c++) {
        const k = (b * N + t) * C + c;
        const v = x[k];
        if (v > limit || v < -limit) {
          out[k] = v;
          continue;
        }
        const ratio = f(v / scale[t]);
        let r = Math.floor(ratio);
        const frac = ratio - r;
        if (frac > 0.5 || (frac === 0.5 && r % 2 !== 0)) r += 1;
        if (r === 0 && ratio < 0) r = -0; // round(-0.3) is -0 in IEEE
        let code = r + zero[t];
        if (code < 0) code = 0;
        if (code > top) code = top;
        out[k] = f((code - zero[t]) * scale[t]);
      }
    }
  }
  return out;
}

/** Random activations (B, N, C) with a few outliers and values exactly at ±tau. */
function tokenData(dims: number[], seed: number, tau: number): Float32Array {
  const x = randomData(dims[0] * dims[1] * dims[2], seed, 2);
  for (let i = 0; i < x.length; i += 17) x[i] *= 4 + (i % 5); // outliers beyond tau for most
  x[1] = f(tau);
  x[2] = -f(tau);
  x[3] = nextAfter(f(tau), true);
  x[4] = nextAfter(-f(tau), false);
  x[5] = nextAfter(f(tau), false);
  x[6] = -0;
  x[7] = 0;
  return x;
}

Deno.test("per-patch quantizer: reference equals an independent brute-force loop", () => {
  for (
    const [dims, bits, tau] of [[[2, 5, 8], 4, 3], [[3, 7, 16], 8, 2.5], [[1, 4, 3], 2, 1]] as [
      number[],
      number,
      number,
    ][]
  ) {
    const x = tokenData(dims, dims[2] + bits, tau);
    for (const method of ["minmax", "percentile"] as const) {
      const q = initPerPatch(x, dims, bits, tau, method);
      const want = bruteForcePerPatch(x, dims, q.scale, q.zeroPoint, bits, tau);
      assertSameBits(perPatchQuant(x, dims, q), want, x, `${method} bits ${bits}`);
    }
    // arbitrary parameters, including power-of-two steps that create exact half-way ties
    const n = dims[1];
    const scale = Float32Array.from(
      { length: n },
      (_, t) => (t % 2 ? 2 ** -(t % 4) : 0.013 * (t + 1)),
    );
    const zero = Float32Array.from({ length: n }, (_, t) => (t * 3) % 2 ** bits);
    const y = Float32Array.from(x, (v, i) => (i % 3 === 0 ? f(Math.round(v * 16) / 32) : v));
    assertSameBits(
      perPatchQuant(y, dims, { bits, tau, scale, zeroPoint: zero }),
      bruteForcePerPatch(y, dims, scale, zero, bits, tau),
      y,
      `fixed params bits ${bits}`,
    );
  }
});

Deno.test("per-patch quantizer: percentile init follows torch.quantile and picks the lowest MSE", () => {
  // torch.quantile(torch.tensor([1., 2., 3., 4.]), q) with linear interpolation
  const s = Float32Array.from([1, 2, 3, 4]);
  assert.equal(quantileLinear(s, 0.5), 2.5);
  assertClose(
    [quantileLinear(s, 0.999), quantileLinear(s, f(1 - 0.999))],
    [3.997, 1.003],
    1e-6,
    "q",
  );
  assert.equal(quantileLinear(s, 1), 4);
  assert.equal(quantileLinear(s, 0), 1);
  const dims = [4, 3, 500];
  const x = tokenData(dims, 5, 3);
  const bits = 4;
  const q = initPerPatch(x, dims, bits, 3, "percentile");
  const [B, N, C] = dims;
  for (let t = 0; t < N; t++) {
    const xt: number[] = [];
    for (let b = 0; b < B; b++) {
      for (let c = 0; c < C; c++) {
        const v = x[(b * N + t) * C + c];
        xt.push(Math.abs(v) > f(3) ? 0 : v);
      }
    }
    const sorted = Float32Array.from(xt).sort();
    let bestErr = Infinity, bestScale = 0;
    for (const p of PERCENTILE_CANDIDATES) {
      const hi = quantileLinear(sorted, p), lo = quantileLinear(sorted, 1 - p);
      const sc = f(f(hi - lo) / 15);
      const one: PerPatchQuantizer = {
        bits,
        tau: 1e30,
        scale: Float32Array.of(sc),
        zeroPoint: Float32Array.of(roundHalfEven(f(-lo / sc)) + 0),
      };
      const xq = perPatchQuant(Float32Array.from(xt), [1, 1, xt.length], one);
      const err = xt.reduce((a, v, i) => a + (v - xq[i]) ** 2, 0) / xt.length;
      if (err < bestErr) [bestErr, bestScale] = [err, sc];
    }
    assert.equal(q.scale[t], bestScale, `token ${t}`);
    // the chosen range lies within the min/max range
    const mm = initPerPatch(x, dims, bits, 3, "minmax");
    assert.ok(q.scale[t] <= mm.scale[t], `token ${t}: percentile range within min/max`);
  }
});

Deno.test("per-patch quantizer: emission equals reference bit for bit (outliers pass through)", async () => {
  for (const fixture of FIXTURE_OPSETS) {
    for (
      const [dims, bits, tau] of [[[2, 5, 8], 4, 3], [[3, 7, 16], 8, 2.5], [[2, 4, 6], 2, 1]] as [
        number[],
        number,
        number,
      ][]
    ) {
      const x = tokenData(dims, 100 + bits, tau);
      for (const method of ["minmax", "percentile"] as const) {
        const q = initPerPatch(x, dims, bits, tau, method);
        const ort = await runEmitted(x, dims, (g, i) => emitPerPatchQuant(g, i, q, "pp"), fixture);
        assertSameBits(ort, perPatchQuant(x, dims, q), x, `${fixture} ${method} bits ${bits}`);
        for (let i = 0; i < x.length; i++) {
          if (Math.abs(x[i]) > f(tau)) assert.equal(ort[i], x[i], "outliers pass through");
        }
      }
      // power-of-two steps make exact half-way ties
      const n = dims[1];
      const q: PerPatchQuantizer = {
        bits,
        tau,
        scale: Float32Array.from({ length: n }, (_, t) => 2 ** -(t % 4)),
        zeroPoint: Float32Array.from({ length: n }, (_, t) => (t * 3) % 2 ** bits),
      };
      const y = Float32Array.from(x, (v) => f(Math.round(v * 16) / 32));
      const ort = await runEmitted(y, dims, (g, i) => emitPerPatchQuant(g, i, q, "pp"), fixture);
      assertSameBits(ort, perPatchQuant(y, dims, q), y, `${fixture} ties bits ${bits}`);
    }
  }
});
