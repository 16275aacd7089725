import assert from "node:assert/strict";
import {
  dyadicParams,
  dyadicRound,
  fixedpointAdd,
  fixedpointMul,
  frexp,
  iLayerNorm,
  INT31_MAX,
  iSqrtNewton,
  ivitSymmetricStep,
  QuantActObserver,
  quantizeSymmetric,
  quantizeWeightsPerChannel,
  shiftExp,
  shiftGelu,
  shiftmax,
} from "../core/ivit/reference.ts";
import { Rng } from "../core/rng.ts";

// ------------------------------------------------------------------ oracles

/** erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7). */
function erf(x: number): number {
  const t = 1 / (1 + 0.3275911 * Math.abs(x));
  const poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t +
    0.254829592) * t;
  const y = 1 - poly * Math.exp(-x * x);
  return x < 0 ? -y : y;
}

function gelu(x: number): number {
  return 0.5 * x * (1 + erf(x / Math.SQRT2));
}

/** floor(a / b) for BigInt, b > 0. */
function floorDivBig(a: bigint, b: bigint): bigint {
  const q = a / b;
  return q * b > a ? q - 1n : q;
}

/** Exact round-half-even of z·m / 2^shift (shift ≥ 1) as a rational, in BigInt. */
function dyadicOracle(z: number, m: number, shift: number): number {
  const num = BigInt(z) * BigInt(m);
  const den = 1n << BigInt(shift);
  const up = floorDivBig(2n * num + den, 2n * den); // round half up
  const tie = (2n * num + den) % (2n * den) === 0n;
  return Number(tie && (up & 1n) === 1n ? up - 1n : up) + 0;
}

/** I-LayerNorm of one row in BigInt throughout (γ = 1, β = 0); also returns V. */
function layerNormOracle(row: number[]): { values: number[]; v: bigint } {
  const C = BigInt(row.length);
  const xs = row.map(BigInt);
  const sum = xs.reduce((a, b) => a + b, 0n);
  // round(sum / C) half to even, via round-half-up then a tie fix
  let mean = floorDivBig(2n * sum + C, 2n * C);
  if ((2n * sum + C) % (2n * C) === 0n && (mean & 1n) === 1n) mean -= 1n;
  const ys = xs.map((x) => x - mean);
  const v = ys.reduce((a, y) => a + y * y, 0n);
  let k = 65536n;
  for (let i = 0; i < 10; i++) k = (k + v / k) / 2n;
  const factor = 2147483647n / k;
  return { values: ys.map((y) => Number(floorDivBig(y * factor, 2n)) + 0), v };
}

function softmax(row: number[]): number[] {
  const m = Math.max(...row);
  const e = row.map((v) => Math.exp(v - m));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / z);
}

// ----------------------------------------------------------- requantization

Deno.test("frexp: mantissa in [0.5, 1) reconstructs x, incl. subnormals and negatives", () => {
  assert.deepEqual(frexp(0), { mantissa: 0, exponent: 0 });
  assert.deepEqual(frexp(1), { mantissa: 0.5, exponent: 1 });
  assert.deepEqual(frexp(0.5), { mantissa: 0.5, exponent: 0 });
  assert.deepEqual(frexp(-3), { mantissa: -0.75, exponent: 2 });
  assert.deepEqual(frexp(0.0123), { mantissa: 0.0123 * 64, exponent: -6 });
  assert.deepEqual(frexp(5e-324), { mantissa: 0.5, exponent: -1073 });
  assert.deepEqual(frexp(Number.MAX_VALUE), { mantissa: 1 - 2 ** -53, exponent: 1024 });
  const rng = new Rng(11);
  for (let i = 0; i < 2000; i++) {
    const x = (rng.next() - 0.5) * 2 ** Math.floor(rng.next() * 2100 - 1080);
    if (x === 0) continue;
    const { mantissa, exponent } = frexp(x);
    assert.ok(Math.abs(mantissa) >= 0.5 && Math.abs(mantissa) < 1, `${x}`);
    // split the power so neither factor over/underflows
    const h = Math.trunc(exponent / 2);
    assert.equal(mantissa * 2 ** h * 2 ** (exponent - h), x);
  }
  assert.throws(() => frexp(Infinity), RangeError);
  assert.throws(() => frexp(NaN), RangeError);
});

Deno.test("requant vector: z = 1000, r = 0.0123", () => {
  assert.deepEqual(dyadicParams(0.0123), { mInt: 1690499128, shift: 37 });
  assert.equal(dyadicRound(1000, 1690499128, 37), 12);
  assert.deepEqual(fixedpointMul([1000], 0.0123, 1), [12]);
  assert.deepEqual(fixedpointMul(Int32Array.of(1000), 0.123, 10, 32), [12]);
});

Deno.test("requant vector: z = -517, r = 0.002/0.031", () => {
  assert.deepEqual(dyadicParams(0.002 / 0.031), { mInt: 1108378657, shift: 34 });
  assert.deepEqual(fixedpointMul([-517], 0.002, 0.031), [-33]);
});

Deno.test("requant: ties round half to even, in the float and BigInt paths", () => {
  assert.deepEqual(dyadicParams(0.5), { mInt: 2 ** 30, shift: 31 });
  // small z: float path
  assert.deepEqual(fixedpointMul([1, 3, 5, -1, -3, -5, 0], 0.5, 1), [0, 2, 2, 0, -2, -2, 0]);
  // |z·mInt| > 2^53: BigInt path
  const big = 2 ** 52 + 1; // odd, so big/2 is a tie
  assert.deepEqual(fixedpointMul([big, -big], 0.5, 1, 53), [2 ** 51, -(2 ** 51)]);
  assert.deepEqual(fixedpointMul([big + 2], 0.5, 1, 53), [2 ** 51 + 2]);
  // r ≥ 2^31: negative shift
  assert.deepEqual(dyadicParams(2 ** 32), { mInt: 2 ** 30, shift: -2 });
  assert.equal(dyadicRound(3, 2 ** 30, -2), 3 * 2 ** 32);
});

Deno.test("requant: clamps to the b-bit signed range, per-channel scales", () => {
  assert.deepEqual(fixedpointMul([1000, -1000, 50], 1, 1), [127, -128, 50]);
  assert.deepEqual(fixedpointMul([1000, -1000], 1, 1, 4), [7, -8]);
  assert.deepEqual(fixedpointMul([10, 10, 30, 30], [0.1, 0.2], 1), [1, 2, 3, 6]);
  assert.throws(() => fixedpointMul([1.5], 1, 1), RangeError);
  assert.throws(() => fixedpointMul([1], 0, 1), RangeError);
});

Deno.test("requant property: exact vs BigInt rational, within 1 of float round(z·r)", () => {
  const rng = new Rng(3);
  let bigPath = 0;
  for (let i = 0; i < 4000; i++) {
    const r = Math.exp(Math.log(1e-6) + rng.next() * Math.log(1e7)); // 1e-6 .. 10
    const mag = 2 ** (1 + Math.floor(rng.next() * 31)); // both paths: |z| up to 2^31
    const z = Math.floor((rng.next() * 2 - 1) * mag);
    const { mInt, shift } = dyadicParams(r);
    if (Math.abs(z * mInt) >= 2 ** 53) bigPath++;
    const out = fixedpointMul([z], r, 1, 53)[0];
    assert.equal(out, dyadicOracle(z, mInt, shift), `z=${z} r=${r}`);
    // mInt carries 31 bits, so |z·r − z·mInt/2^shift| ≤ |z·r|·2^-31: within 1 below 2^30
    if (Math.abs(z * r) <= 2 ** 30) {
      assert.ok(Math.abs(out - Math.round(z * r)) <= 1, `z=${z} r=${r} out=${out}`);
    }
  }
  assert.ok(bigPath > 500, `BigInt path taken ${bigPath} times`);
});

Deno.test("residual add: each branch rounded on its own, then added and clamped", () => {
  // 100·0.02/0.1 = 20, −50·0.05/0.1 = −25
  assert.deepEqual(fixedpointAdd([100], 0.02, [-50], 0.05, 0.1), [-5]);
  // 0.5 + 0.5: each rounds (half to even) to 0, so the sum is 0, not 1
  assert.deepEqual(fixedpointAdd([1], 0.5, [1], 0.5, 1), [0]);
  assert.deepEqual(fixedpointAdd([3], 0.5, [3], 0.5, 1), [4]);
  assert.deepEqual(fixedpointAdd([100, -100], 1, [100, -100], 1, 1), [127, -128]);
  const rng = new Rng(5);
  for (let i = 0; i < 500; i++) {
    const a = rng.int(2001) - 1000;
    const b = rng.int(2001) - 1000;
    const sa = 0.001 + rng.next() * 0.05;
    const sb = 0.001 + rng.next() * 0.05;
    const so = 0.05 + rng.next() * 0.1;
    const got = fixedpointAdd([a], sa, [b], sb, so, 16)[0];
    const want = fixedpointMul([a], sa, so, 16)[0] + fixedpointMul([b], sb, so, 16)[0];
    assert.equal(got, want);
    assert.ok(Math.abs(got - (a * sa + b * sb) / so) <= 1.5);
  }
  assert.throws(() => fixedpointAdd([1, 2], 1, [1], 1, 1), RangeError);
});

// ------------------------------------------------------------------- ShiftExp

Deno.test("shiftExp: exp(0) is one at scale s/2^n; floor at n·x0; exact r/2", () => {
  const s = 0.05; // x0 = −20
  const zero = shiftExp([0], s, 15);
  assert.deepEqual(zero.values, [20 * 2 ** 15]);
  assert.equal(zero.scale, s / 2 ** 15);
  assert.ok(Math.abs(zero.values[0] * zero.scale - 1) < 1e-12);
  // far below n·x0: q = n, r = 0, e = −x0
  assert.deepEqual(shiftExp([-100000], s, 15).values, [20]);
  // x = −1: v = −1 − 1 + 1 = −1, q = 0, r = −1, e = (−1/2 + 20)·2^15 (exact, not floored)
  assert.deepEqual(shiftExp([-1], s, 15).values, [19.5 * 2 ** 15]);
  // approximates exp within ~12% at s = 0.05 (step 1's 1.4375 and floors, step 5's linear
  // 2^-f interpolation)
  const xs = Array.from({ length: 200 }, (_, i) => -i);
  const out = shiftExp(xs, s, 15);
  for (let i = 0; i < xs.length; i++) {
    const want = Math.exp(xs[i] * s);
    if (want < 1e-3) continue;
    assert.ok(Math.abs(out.values[i] * out.scale / want - 1) < 0.12, `x=${xs[i]}`);
  }
  assert.throws(() => shiftExp([1e6], s, 23), RangeError); // result past 2^53
  assert.throws(() => shiftExp([0.5], s, 15), RangeError);
});

// ------------------------------------------------------------------- Shiftmax

Deno.test("shiftmax vector: b = 8, n = 15, s = 0.05, x_int = [20, 10, -40, 0]", () => {
  const out = shiftmax([20, 10, -40, 0], 4, 0.05);
  assert.deepEqual(out.values, [60, 39, 3, 24]);
  assert.equal(out.scale, 1 / 128);
  assert.deepEqual(shiftmax(Int32Array.of(20, 10, -40, 0), 4, 0.05, { bits: 8, n: 15 }).values, [
    60,
    39,
    3,
    24,
  ]);
  // rows are independent and shift-invariant
  assert.deepEqual(shiftmax([20, 10, -40, 0, 120, 110, 60, 100], 4, 0.05).values, [
    60,
    39,
    3,
    24,
    60,
    39,
    3,
    24,
  ]);
  assert.throws(() => shiftmax([1, 2, 3], 2, 0.05), RangeError);
});

Deno.test("shiftmax property: row sums bounded near 2^(b-1); close to float softmax", () => {
  const rng = new Rng(21);
  for (const bits of [8, 16]) {
    for (const L of [4, 16, 64]) {
      for (const s of [0.02, 0.05, 0.1]) {
        for (let t = 0; t < 20; t++) {
          const xi = Array.from({ length: L }, () => Math.round((rng.next() * 2 - 1) * 8 / s));
          const out = shiftmax(xi, L, s, { bits });
          const m = Math.max(...xi);
          const S = Math.min(
            shiftExp(xi.map((v) => v - m), s, 15).values.reduce((a, b) => a + b, 0),
            INT31_MAX,
          );
          const sum = out.values.reduce((a, b) => a + b, 0);
          const one = 2 ** (bits - 1);
          assert.ok(sum <= one - 1, `sum ${sum}`);
          assert.ok(sum >= one * (1 - (S + 1) / 2 ** 31) - L, `sum ${sum} S ${S}`);
          if (bits === 16) assert.ok(Math.abs(sum / one - 1) < 0.01, `sum ${sum}`);
          const p = softmax(xi.map((v) => v * s));
          let tv = 0;
          for (let j = 0; j < L; j++) {
            const d = Math.abs(out.values[j] * out.scale - p[j]);
            assert.ok(d < 0.05, `b=${bits} L=${L} s=${s} j=${j} d=${d}`);
            tv += d / 2;
          }
          if (bits === 16) assert.ok(tv < 0.05, `tv ${tv}`);
        }
      }
    }
  }
});

// ------------------------------------------------------------------ ShiftGELU

Deno.test("shiftGelu vector: s = 0.05, x_int = [-60, -20, -10, 0, 10, 20, 60]", () => {
  const out = shiftGelu([-60, -20, -10, 0, 10, 20, 60], 7, 0.05);
  assert.deepEqual(out.values, [0, -400, -390, 0, 890, 2160, 7560]);
  assert.equal(out.scale, 0.05 / 128);
  const real = out.values.map((v) => Math.round(v * out.scale * 1000) / 1000);
  assert.deepEqual(real, [0, -0.156, -0.152, 0, 0.348, 0.844, 2.953]);
  assert.deepEqual(
    shiftGelu(Int32Array.of(-60, -20, -10, 0, 10, 20, 60), 7, 0.05, {
      bits: 8,
      n: 23,
      sigmoidScale: "float",
    }).values,
    [0, -400, -390, 0, 890, 2160, 7560],
  );
  // n = 23 is pinned: n = 15 changes the last entry
  assert.equal(shiftGelu([-60, -20, -10, 0, 10, 20, 60], 7, 0.05, { n: 15 }).values[6], 7620);
});

Deno.test("shiftGelu shift variant: 1.702x as x + (x>>1) + (x>>3) + (x>>4)", () => {
  const out = shiftGelu([-60, -20, -10, 0, 10, 20, 60], 7, 0.05, { sigmoidScale: "shift" });
  assert.deepEqual(out.values, [0, -380, -370, 0, 870, 2140, 7200]);
  assert.equal(out.scale, 0.05 / 128);
  assert.throws(
    () => shiftGelu([0], 1, 0.05, { sigmoidScale: "x" as unknown as "float" }),
    RangeError,
  );
});

Deno.test("shiftGelu property: close to GELU on [-3, 3]", () => {
  const grid = (s: number) => {
    const xs: number[] = [];
    for (let v = Math.ceil(-3 / s); v <= Math.floor(3 / s); v++) xs.push(v);
    return xs;
  };
  const errors = (xs: number[], s: number, opts: Parameters<typeof shiftGelu>[3]) => {
    const out = shiftGelu(xs, xs.length, s, opts);
    const d = xs.map((v, j) => Math.abs(out.values[j] * out.scale - gelu(v * s)));
    return { max: Math.max(...d), mean: d.reduce((a, b) => a + b, 0) / d.length };
  };
  // with n = 15 the integer divisor floor((2^31−1)/S) is fine-grained: within 0.05 everywhere
  for (const s of [0.01, 0.025, 0.05, 3 / 127]) {
    for (const sigmoidScale of ["float", "shift"] as const) {
      const e = errors(grid(s), s, { n: 15, sigmoidScale });
      assert.ok(e.max < 0.05, `s=${s} ${sigmoidScale} max ${e.max}`);
    }
  }
  // the default n = 23 at s = 0.05: within 0.05 at the vector's points and on average,
  // ≤ 0.11 at worst (the divisor is 21, see shiftGelu's JSDoc)
  const e = errors(grid(0.05), 0.05, {});
  assert.ok(e.max < 0.11 && e.mean < 0.025, `max ${e.max} mean ${e.mean}`);
  const pts = [-60, -20, -10, 0, 10, 20, 60];
  assert.ok(errors(pts, 0.05, {}).max < 0.05);
});

Deno.test("shiftGelu: rows with a very negative maximum keep the reference's clamp", () => {
  // max = −400 (real −20): e_m = ShiftExp(400) = 23·2^70 (past 2^53), the sum clamps to
  // 2^31 − 1, the factor is 1, and σ at the maximum is floor(12·2^23 / 2^24) = 6, not ≈ 0
  const out = shiftGelu([-400, -500], 2, 0.05);
  assert.deepEqual(out.values, [-400 * 6, 0]);
});

// ---------------------------------------------------------------- I-LayerNorm

Deno.test("iLayerNorm vector: C = 8, gamma = 1, beta = 0", () => {
  const out = iLayerNorm([30, -120, 250, 0, 410, -70, 110, -220], 8);
  assert.equal(out.scale, Math.sqrt(8) / 2 ** 30);
  assert.deepEqual(out.biasInt, new Array(8).fill(0));
  const real = out.values.map((v, i) => Number((v * out.channelScale[i]).toFixed(4)));
  assert.deepEqual(real, [-0.0995, -0.8852, 1.0528, -0.2567, 1.8909, -0.6233, 0.3195, -1.409]);
  // mean = round(48.75) = 49, V = 292288, k = 540, factor = 3976821
  assert.equal(out.values[0], Math.floor(-19 * 3976821 / 2));
});

Deno.test("iLayerNorm: mean rounds half to even", () => {
  // Σx/C = 0.5 → mean 0; 1.5 → mean 2 (visible through y = x − mean)
  const a = iLayerNorm([0, 1], 2).values;
  const b = iLayerNorm([1, 0], 2).values;
  assert.deepEqual(a, [0, Math.floor(Math.floor(INT31_MAX / 64) / 2)]);
  assert.deepEqual(b, [a[1], a[0]]);
  const c = iLayerNorm([1, 2], 2).values; // mean 2: y = [−1, 0]
  assert.deepEqual(c, [Math.floor(-Math.floor(INT31_MAX / 64) / 2), 0]);
});

Deno.test("iSqrtNewton: exact in BigInt past 2^53 where float sqrt is off", () => {
  assert.equal(iSqrtNewton(292288n), 540n);
  assert.equal(iSqrtNewton(0n), 64n); // 10 halvings from 2^16
  const v = (2n ** 30n + 1n) ** 2n - 2n; // 2^60 + 2^31 − 1, not a float64
  assert.equal(Math.floor(Math.sqrt(Number(v))), 2 ** 30 + 1); // float gets it wrong
  assert.equal(iSqrtNewton(v, 60), 2n ** 30n);
});

Deno.test("iLayerNorm property: bit-exact vs a BigInt oracle; V well above 2^31", () => {
  const rng = new Rng(31);
  let maxV = 0n;
  for (const C of [64, 768]) {
    for (let t = 0; t < 8; t++) {
      const offset = (t % 4) * 4000 - 6000;
      const row = Array.from({ length: C }, () => rng.int(65536) - 32768 + offset);
      const out = iLayerNorm(Int32Array.from(row), C);
      const want = layerNormOracle(row);
      assert.deepEqual(out.values, want.values);
      if (want.v > maxV) maxV = want.v;
    }
  }
  assert.ok(maxV > 2n ** 37n, `max V ${maxV}`);
  // huge inputs take the BigInt path (C·max|y|² > 2^53)
  const huge = [2 ** 40 + 3, -(2 ** 40), 12345678901, -7];
  assert.deepEqual(iLayerNorm(huge, 4).values, layerNormOracle(huge).values);
});

Deno.test("iLayerNorm property: within 0.01 of float LayerNorm (C = 64, 768; 16-bit)", () => {
  const rng = new Rng(41);
  for (const C of [64, 768]) {
    const rows = 6;
    const x = Array.from({ length: rows * C }, () => rng.int(65536) - 32768);
    const gamma = Array.from({ length: C }, () => 0.5 + rng.next() * 1.5);
    const beta = Array.from({ length: C }, () => rng.next() * 2 - 1);
    const out = iLayerNorm(x, C, { gamma, beta });
    for (let r = 0; r < rows; r++) {
      const row = x.slice(r * C, (r + 1) * C);
      const mu = row.reduce((a, b) => a + b, 0) / C;
      const sd = Math.sqrt(row.reduce((a, b) => a + (b - mu) ** 2, 0) / C);
      for (let j = 0; j < C; j++) {
        const got = out.values[r * C + j] * out.channelScale[j];
        const want = gamma[j] * (row[j] - mu) / sd + beta[j];
        assert.ok(Math.abs(got - want) < 0.01, `C=${C} r=${r} j=${j}: ${got} vs ${want}`);
      }
    }
  }
});

Deno.test("iLayerNorm: beta/gamma folding and bad parameters", () => {
  const sLn = Math.sqrt(4) / 2 ** 30;
  const out = iLayerNorm([10, 20, 30, 40], 4, { gamma: [2, 1, 1, 0.5], beta: 0.25 });
  assert.deepEqual(out.biasInt, [
    Math.floor(0.125 / sLn),
    Math.floor(0.25 / sLn),
    Math.floor(0.25 / sLn),
    Math.floor(0.5 / sLn),
  ]);
  assert.deepEqual(out.channelScale, [2 * sLn, sLn, sLn, 0.5 * sLn]);
  assert.throws(() => iLayerNorm([1, 2], 2, { gamma: [1, 0] }), RangeError);
  assert.throws(() => iLayerNorm([1, 2], 2, { gamma: [1, 1, 1] }), RangeError);
  assert.throws(() => iLayerNorm([1, 2, 3], 2), RangeError);
});

// ----------------------------------------------------------------- quantizers

Deno.test("quantizeSymmetric: round half to even, clamp to [-2^(b-1), 2^(b-1)-1]", () => {
  assert.deepEqual(
    quantizeSymmetric([0.5, 1.5, 2.5, -0.5, -2.5, 200, -200, 0.49], 1),
    [0, 2, 2, 0, -2, 127, -128, 0],
  );
  assert.deepEqual(quantizeSymmetric([100, -100], 1, 4), [7, -8]);
  assert.equal(ivitSymmetricStep(127, 8), 1);
  assert.equal(ivitSymmetricStep(0, 8), 1e-8 / 127);
});

Deno.test("quantizeWeightsPerChannel: Δ_c = max(|min_c|, |max_c|)/127", () => {
  const w = [0.5, -1.27, 0.3, 0, 0, 0, 2.54, 1, 0.02];
  const q = quantizeWeightsPerChannel(Float32Array.from(w), 3);
  const f = Array.from(Float32Array.from(w));
  const steps = [Math.max(-f[1], f[0]) / 127, 1e-8 / 127, f[6] / 127];
  assert.deepEqual(q.steps, steps);
  for (let i = 0; i < w.length; i++) {
    assert.equal(q.values[i], Math.round(f[i] / steps[Math.floor(i / 3)]) + 0);
  }
  assert.equal(q.values[1], -127);
  assert.equal(q.values[6], 127);
  assert.throws(() => quantizeWeightsPerChannel(w, 2), RangeError);
});

Deno.test("QuantActObserver: first batch sets the range, then EMA with momentum 0.95", () => {
  const q = new QuantActObserver();
  q.observe([-1, 0.5, 2]);
  assert.equal(q.min, -1);
  assert.equal(q.max, 2);
  assert.equal(q.step(), 2 / 127);
  q.observe([-3, 1]);
  assert.equal(q.min, 0.95 * -1 + 0.05 * -3);
  assert.equal(q.max, 0.95 * 2 + 0.05 * 1);
  const step = Math.max(Math.abs(q.min), Math.abs(q.max)) / 127;
  assert.equal(q.step(), step);
  assert.deepEqual(q.quantize([0, step * 100, -10]), [0, 100, -128]);
  // integer-only path: requantize codes at another scale to this step
  assert.deepEqual(q.requantize([100], 0.01), fixedpointMul([100], 0.01, step, 8));
  const q4 = new QuantActObserver(4);
  q4.observe([-7, 7]);
  assert.equal(q4.step(), 1);
  assert.deepEqual(q4.quantize([9, -9, 2.5, 3.5, -2.5]), [7, -8, 2, 4, -2]);
});
