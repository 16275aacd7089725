import assert from "node:assert/strict";
import {
  flipRate,
  isDifferent,
  mcnemarExact,
  pairedBootstrap,
  pairedCounts,
} from "../bench/stats.ts";
import { pairedRatio, pairedSpeedup } from "../bench/speed.ts";
import { medianInterval } from "../core/quantile.ts";

/** num / den as a double, exact to rounding even when both are huge BigInts. */
function bigRatio(num: bigint, den: bigint): number {
  if (num === 0n) return 0;
  const shift = den.toString(2).length - num.toString(2).length + 64;
  const q = shift >= 0 ? (num << BigInt(shift)) / den : num / (den << BigInt(-shift));
  let x = Number(q);
  for (let s = shift; s > 0; s -= 512) x /= 2 ** Math.min(s, 512);
  for (let s = shift; s < 0; s += 512) x *= 2 ** Math.min(-s, 512);
  return x;
}

/** Exact two-sided McNemar p by direct summation of BigInt binomial coefficients. */
function mcnemarBig(b: number, c: number): number {
  const n = b + c;
  if (n === 0) return 1;
  const k = Math.min(b, c);
  let coef = 1n;
  let tail = 0n;
  for (let i = 0; i <= k; i++) {
    tail += coef;
    coef = (coef * BigInt(n - i)) / BigInt(i + 1);
  }
  return Math.min(1, bigRatio(2n * tail, 1n << BigInt(n)));
}

function assertClose(actual: number, expected: number, rel: number, msg?: string): void {
  const err = Math.abs(actual - expected);
  assert.ok(
    err <= rel * Math.abs(expected) || (expected === 0 && err === 0),
    `${msg ?? ""} expected ${expected}, got ${actual} (rel err ${err / Math.abs(expected)})`,
  );
}

/** n images; A correct on the first `aRight`, B on the first `bRight` (a subset). */
function nested(n: number, aRight: number, bRight: number): [Uint8Array, Uint8Array] {
  const a = new Uint8Array(n);
  const b = new Uint8Array(n);
  a.fill(1, 0, aRight);
  b.fill(1, 0, bRight);
  return [a, b];
}

Deno.test("pairedCounts: hand-made 2x2 table", () => {
  const a = Uint8Array.from([1, 1, 0, 0, 1, 0, 1, 1]);
  const b = Uint8Array.from([1, 0, 1, 0, 1, 0, 0, 1]);
  assert.deepEqual(pairedCounts(a, b), { n: 8, both: 3, onlyA: 2, onlyB: 1, neither: 2 });
  assert.deepEqual(pairedCounts([true, false, true], [false, false, true]), {
    n: 3,
    both: 1,
    onlyA: 1,
    onlyB: 0,
    neither: 1,
  });
  assert.deepEqual(pairedCounts([], []), { n: 0, both: 0, onlyA: 0, onlyB: 0, neither: 0 });
  assert.throws(() => pairedCounts([1, 0], [1]), /length mismatch/);
});

Deno.test("mcnemarExact: textbook value b=1, c=9", () => {
  assertClose(mcnemarExact(1, 9), 0.021484375, 1e-13);
  assertClose(mcnemarExact(9, 1), 0.021484375, 1e-13);
});

Deno.test("mcnemarExact: matches exact BigInt summation", () => {
  const cases: [number, number][] = [
    [0, 5],
    [1, 9],
    [3, 10],
    [10, 10],
    [25, 12],
    [0, 1],
    [1, 2],
    [4, 5],
    [7, 30],
    [0, 60],
    [40, 60],
    [123, 177],
    [450, 520],
    [1000, 1100],
  ];
  for (const [b, c] of cases) {
    assertClose(mcnemarExact(b, c), mcnemarBig(b, c), 1e-11, `(${b}, ${c})`);
    assert.equal(mcnemarExact(b, c), mcnemarExact(c, b), `symmetry (${b}, ${c})`);
  }
  assert.equal(mcnemarExact(0, 0), 1);
  assert.equal(mcnemarExact(10, 10), 1);
  assert.equal(mcnemarExact(4, 5), 1);
});

Deno.test("mcnemarExact: stable for large discordant counts", () => {
  const p = mcnemarExact(50000, 50400);
  assert.ok(Number.isFinite(p) && p > 0 && p <= 1, `p = ${p}`);
  // Normal approximation with continuity correction: z = 399 / sqrt(100400) ~ 1.259.
  assert.ok(p > 0.18 && p < 0.24, `p = ${p}`);
  const tiny = mcnemarExact(0, 2000);
  assert.ok(Number.isFinite(tiny) && tiny >= 0 && tiny < 1e-300, `p = ${tiny}`);
  const mid = mcnemarExact(49000, 51000);
  assert.ok(Number.isFinite(mid) && mid > 0 && mid < 1e-8, `p = ${mid}`);
  assert.equal(mcnemarExact(100000, 100000), 1);
  assert.throws(() => mcnemarExact(-1, 3));
  assert.throws(() => mcnemarExact(1.5, 3));
});

Deno.test("pairedBootstrap: identical arrays give a zero interval", () => {
  const a = Uint8Array.from({ length: 500 }, (_, i) => (i % 3 === 0 ? 0 : 1));
  const r = pairedBootstrap(a, a.slice(), { resamples: 200, seed: 7 });
  assert.deepEqual(r, { diff: 0, lo: 0, hi: 0, resamples: 200, seed: 7 });
  assert.equal(isDifferent(r), false);
});

Deno.test("pairedBootstrap: large gap excludes 0 and covers the true diff", () => {
  const [a, b] = nested(2000, 1800, 1200);
  const r = pairedBootstrap(a, b, { resamples: 1000, seed: 1 });
  assert.equal(r.diff, 30);
  assert.ok(r.lo < 30 && 30 < r.hi, `[${r.lo}, ${r.hi}]`);
  assert.ok(r.lo > 0, `[${r.lo}, ${r.hi}]`);
  // SE = 100 * sqrt(0.3 * 0.7 / 2000) ~ 1.02 points, so the 95% interval is ~ 30 +- 2.
  assert.ok(r.lo > 27 && r.hi < 33, `[${r.lo}, ${r.hi}]`);
  assert.equal(isDifferent(r), true);
  const rev = pairedBootstrap(b, a, { resamples: 1000, seed: 1 });
  assert.equal(rev.diff, -30);
  assert.ok(rev.hi < 0 && isDifferent(rev));
});

Deno.test("pairedBootstrap: seeded and deterministic", () => {
  const a = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7919) % 10 < 8 ? 1 : 0);
  const b = Uint8Array.from({ length: 1000 }, (_, i) => (i * 104729) % 10 < 7 ? 1 : 0);
  const r1 = pairedBootstrap(a, b, { resamples: 300, seed: 42 });
  const r2 = pairedBootstrap(a, b, { resamples: 300, seed: 42 });
  assert.deepEqual(r1, r2);
  const r3 = pairedBootstrap(a, b, { resamples: 300, seed: 43 });
  assert.equal(r3.diff, r1.diff);
  assert.ok(r3.lo !== r1.lo || r3.hi !== r1.hi, "different seeds gave the same interval");
  const wide = pairedBootstrap(a, b, { resamples: 300, seed: 42, level: 0.99 });
  assert.ok(wide.lo <= r1.lo && wide.hi >= r1.hi);
});

Deno.test("pairedBootstrap: diff equals the exact Top-1 difference", () => {
  const n = 777;
  const a = Uint8Array.from({ length: n }, (_, i) => (i % 5 === 0 ? 0 : 1));
  const b = Uint8Array.from({ length: n }, (_, i) => (i % 4 === 0 ? 0 : 1));
  const top1 = (x: Uint8Array) => (100 * x.reduce((s, v) => s + v, 0)) / n;
  const r = pairedBootstrap(a, b, { resamples: 50, seed: 3 });
  assertClose(r.diff, top1(a) - top1(b), 1e-12);
  assert.ok(r.lo <= r.hi);
});

Deno.test("pairedBootstrap: rejects bad input", () => {
  const a = new Uint8Array(10);
  assert.throws(() => pairedBootstrap(a, new Uint8Array(9), { resamples: 10, seed: 1 }));
  assert.throws(() => pairedBootstrap([], [], { resamples: 10, seed: 1 }));
  assert.throws(() => pairedBootstrap(a, a, { resamples: 0, seed: 1 }));
  assert.throws(() => pairedBootstrap(a, a, { resamples: 10, seed: 1, level: 1 }));
});

Deno.test("pairedBootstrap: 50,000 images x 1,000 resamples", () => {
  const [a, b] = nested(50000, 40500, 40000);
  const t0 = performance.now();
  const r = pairedBootstrap(a, b, { resamples: 1000, seed: 2024 });
  const ms = performance.now() - t0;
  console.log(`pairedBootstrap 50k x 1000: ${ms.toFixed(0)} ms`);
  assert.equal(r.diff, 1);
  assert.ok(r.lo > 0.8 && r.lo < 1 && r.hi > 1 && r.hi < 1.2, `[${r.lo}, ${r.hi}]`);
});

Deno.test("flipRate: hand-made predictions", () => {
  const pa = Int32Array.from([0, 1, 2, 3, 4, 5, 6, 7]);
  const pb = Int32Array.from([0, 1, 9, 3, 4, 0, 6, 1]);
  assert.equal(flipRate(pa, pb), 3 / 8);
  assert.equal(flipRate(pa, pa), 0);
  assert.throws(() => flipRate(pa, pb.subarray(1)), /length mismatch/);
  assert.throws(() => flipRate([], []));
});

Deno.test("isDifferent: interval excludes 0", () => {
  assert.equal(isDifferent({ lo: 0.1, hi: 2 }), true);
  assert.equal(isDifferent({ lo: -2, hi: -0.1 }), true);
  assert.equal(isDifferent({ lo: -0.5, hi: 0.5 }), false);
  assert.equal(isDifferent({ lo: 0, hi: 1 }), false);
  assert.equal(isDifferent({ lo: -1, hi: 0 }), false);
});

Deno.test("medianInterval: sign-test order statistics and their exact coverage", () => {
  const ranks = (n: number) => Array.from({ length: n }, (_, i) => n - i); // descending input
  assert.equal(medianInterval(ranks(5)), undefined, "[min, max] of 5 covers only 93.75 %");
  // n = 6: [x(1), x(6)], 1 - 2/64; n = 10: [x(2), x(9)]; n = 12: [x(3), x(10)]; n = 20: [x(6), x(15)]
  for (
    const [n, k, cover] of [[6, 1, 62 / 64], [10, 2, 1 - 2 * 11 / 1024], [12, 3, 1 - 2 * 79 / 4096]]
  ) {
    const r = medianInterval(ranks(n))!;
    assert.deepEqual([r.lo, r.hi], [k, n - k + 1], `n = ${n}`);
    assert.ok(Math.abs(r.level - cover) < 1e-12, `n = ${n}: ${r.level}`);
    assert.equal(r.median, (n + 1) / 2);
  }
  assert.deepEqual(
    [medianInterval(ranks(20))!.lo, medianInterval(ranks(20))!.hi],
    [6, 15],
  );
  // a lower level narrows it: n = 12 at 0.8 is [x(4), x(9)] (coverage 0.854)
  assert.deepEqual([medianInterval(ranks(12), 0.8)!.lo, medianInterval(ranks(12), 0.8)!.hi], [
    4,
    9,
  ]);
  assert.equal(medianInterval([], 0.95), undefined);
  // large n (2^-n underflows): the normal approximation's ranks, 1000.5 ± 1.96·√2000/2
  const big = medianInterval(ranks(2000))!;
  assert.deepEqual([big.lo, big.hi], [956, 1045]);
  assert.ok(big.level >= 0.95 && big.level < 0.96, `${big.level}`);
});

Deno.test("pairedRatio: median and interval of the per-round ratios, round by round", () => {
  const speed = (ms: number[]) => ({
    ips: 1000 / ms[0],
    batchMs: ms,
    latMedMs: 0,
    latP90Ms: 0,
    batch: 1,
    repetitions: ms.length,
    warmup: 0,
  });
  // the machine slows down round by round; x is 1.5x faster in every round
  const ref = [10, 10.5, 11, 30, 32, 34, 36, 38];
  const p = pairedRatio(speed(ref), speed(ref.map((t) => t / 1.5)))!;
  for (const v of [p.median, p.lo, p.hi]) assert.ok(Math.abs(v - 1.5) < 1e-12, JSON.stringify(p));
  // per-round ratios 1.2, 1.5, 2, 1, 3, 2: median 1.75, n = 6 gives [min, max]
  const q = pairedRatio(speed([12, 12, 12, 12, 12, 12]), speed([10, 8, 6, 12, 4, 6]))!;
  assert.deepEqual([q.median, q.lo, q.hi], [1.75, 1, 3]);
  // a slow round for ref alone moves that round's ratio (3 -> 4 at the top), not the median
  const r = pairedRatio(speed([12, 12, 12, 12, 12, 24]), speed([10, 8, 6, 12, 4, 6]))!;
  assert.deepEqual([r.median, r.lo, r.hi], [1.75, 1, 4]);
  assert.equal(pairedRatio(speed(ref), { ...speed(ref), batchMs: undefined }), undefined);
  assert.equal(pairedRatio(speed(ref), speed(ref.slice(1))), undefined, "rounds must match");
  assert.equal(pairedRatio(speed(ref.slice(0, 5)), speed(ref.slice(0, 5))), undefined, "n < 6");
  // pairedSpeedup (what the bench stores): the interval from 6 rounds, the paired median alone
  // below, the ratio of throughputs without per-round times
  assert.deepEqual(pairedSpeedup(speed([12, 12, 12, 12, 12, 24]), speed([10, 8, 6, 12, 4, 6])), {
    x: 1.75,
    lo: 1,
    hi: 4,
  });
  assert.deepEqual(pairedSpeedup(speed([12, 12, 24]), speed([10, 8, 6])), { x: 1.5 });
  assert.deepEqual(pairedSpeedup(speed([12, 12]), speed([6, 8])), { x: 1.75 });
  const unpaired = { ...speed([10, 10]), ips: 300, batchMs: undefined };
  assert.deepEqual(pairedSpeedup(speed([10, 20]), unpaired), { x: 300 / 100 });
});
