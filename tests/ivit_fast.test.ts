/**
 * The fast forms of the I-ViT integer graph (core/ivit/emit.ts `fast`, the
 * default): ShiftExp and ShiftGELU by lookup table (core/ivit/tables.ts),
 * a requantization folded into the ShiftGELU table, clamped requantizations
 * by truncating division, I-LayerNorm with its requantization computed from
 * y'·f. Each program runs through ONNX Runtime in both the fast and the
 * plain emission and must equal its TypeScript simulation bit for bit.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Rng } from "../core/rng.ts";
import {
  createRawSession,
  dyadic15,
  emitIntegerGraph,
  integerOnlyViolations,
  type IntProgram,
  type IntType,
  layerNormPrescale,
  layerNormStart,
  planRequant,
  planTruncRequant,
  requantValue,
  simulateProgram,
  type Step,
} from "../core/ivit/mod.ts";
import { shiftExpTable, shiftGeluTable } from "../core/ivit/tables.ts";
import { uint8Tensor } from "../core/ivit/program.ts";
import { shiftExp, shiftGelu } from "../core/ivit/reference.ts";

/** A program on an int32 input [rows, cols]: the steps, then `out` as the output. */
function program(
  cols: number,
  steps: Step[],
  out: string,
  types: [string, IntType][],
): IntProgram {
  return {
    opset: 17,
    input: { name: "z", dims: ["N", cols], type: "int32" },
    outputs: [{ name: "y", value: out, scale: [1] }],
    initializers: new Map(),
    steps,
    types: new Map([["z", "int32"], ...types]),
    records: [],
    facts: [],
  };
}

/** Output codes of the fast graph, the plain graph and the simulation. */
async function runAll(p: IntProgram, x: Int32Array, dims: number[]) {
  const v = p.outputs[0].value;
  const res: number[][] = [];
  const ops: string[][] = [];
  for (const fast of [true, false]) {
    const g = emitIntegerGraph(p, { fast });
    // (the int32 input of a kernel program is consumed directly, not by a quantizer)
    assert.deepEqual(integerOnlyViolations(g).filter((v) => !v.startsWith("image ")), []);
    ops.push(g.nodes.map((n) => n.opType));
    const s = await createRawSession(g, 1, "fast kernel graph");
    try {
      res.push(Array.from((await s.run(x, dims))[v].data, Number));
    } finally {
      await s.release();
    }
  }
  const sim = Array.from(simulateProgram(p, x, dims).get(v)!.data);
  return { fast: res[0], plain: res[1], sim, fastOps: ops[0], plainOps: ops[1] };
}

/** A per-tensor requantization step of `x` by ratio r into `bits` (null: unclamped). */
function requant(
  x: string,
  out: string,
  r: number,
  bits: number | null,
  outType: IntType,
  outZp: number,
  lo: number,
  hi: number,
): Step {
  return {
    kind: "requant",
    x,
    out,
    xType: "int32",
    axis: -1,
    rank: 2,
    plan: planRequant([dyadic15(r)], null, bits, lo, hi, "test"),
    bits,
    outType,
    outZp,
  };
}

Deno.test("ivit fast: ShiftExp table is shiftExp on [dMin, 0] and constant below dMin", () => {
  for (const [s, n] of [[0.0068, 15], [0.05, 15], [5e-4, 15], [0.02, 23]] as const) {
    const t = shiftExpTable(s, n);
    const d = Array.from({ length: 40 }, (_, i) => t.dMin - 300 + i * 17).filter((v) => v <= 0);
    const ref = shiftExp(d, s, n).values;
    d.forEach((v, i) => assert.equal(t.values[Math.max(v, t.dMin) - t.dMin], ref[i], `d ${v}`));
    assert.equal(t.values.at(-1), shiftExp([0], s, n).values[0]);
  }
  // a range that ends above the clamp: the table stops at the range
  assert.equal(shiftExpTable(5e-4, 15, -255).dMin, -255);
});

Deno.test("ivit fast: ShiftGELU table entry (m, x) is shiftGelu of a row with that maximum", () => {
  const rng = new Rng(3);
  const spec = { lo: -128, hi: 127, xZp: 0, scale: 0.031, n: 20, bits: 8, requant: null };
  const t = shiftGeluTable(spec);
  for (let i = 0; i < 200; i++) {
    const row = Array.from({ length: 9 }, () => Math.floor(rng.next() * 256) - 128);
    const m = Math.max(...row);
    const ref = shiftGelu(row, 9, spec.scale, { bits: 8, n: 20 }).values;
    row.forEach((x, j) => assert.equal(t[(m + 128) * 256 + x + 128], ref[j]));
  }
});

Deno.test("ivit fast: a clamped requantization by truncating division equals requantValue", async () => {
  const rng = new Rng(17);
  let tested = 0, clipped = 0, unclamped = 0;
  for (let t = 0; t < 30; t++) {
    const C = t % 2 ? 4 : 1;
    const bits = t % 3 === 0 ? 16 : 8;
    // the lift to a range starting at 0 takes 2^(bits−1)·2^k: k ≤ 23 for 8 bits, 15 for 16
    const r = Array.from(
      { length: C },
      () => 2 ** (bits === 16 ? rng.next() - 1 : -9 + rng.next() * 8),
    );
    const span = 2 ** (8 + Math.floor(rng.next() * 22));
    const [lo, hi] = [-span, span - 1];
    const plan = planRequant(r.map(dyadic15), null, bits, lo, hi, "test");
    const [outType, outZp]: [IntType, number] = t % 4 === 1
      ? ["uint8", 128]
      : bits === 16
      ? ["int16", 0]
      : ["int32", 0];
    if (bits === 16 && outType === "uint8") continue;
    const trunc = planTruncRequant(plan, bits, outZp);
    if (!trunc) continue;
    if (trunc.clip) clipped++;
    if (!trunc.clamp) unclamped++;
    const step: Step = {
      kind: "requant",
      x: "z",
      out: "q",
      xType: "int32",
      axis: C === 1 ? -1 : 1,
      rank: 2,
      plan,
      bits,
      outType,
      outZp,
    };
    const rows = 50;
    const z = new Int32Array(rows * C);
    for (let i = 0; i < z.length; i++) {
      z[i] = i < 2 * C ? (i < C ? lo : hi) : Math.round(lo + rng.next() * (hi - lo));
    }
    const { fast, plain, sim, fastOps } = await runAll(
      program(C, [step], "q", [["q", outType]]),
      z,
      [rows, C],
    );
    // the quotient's clamp is emitted only where the plan needs it
    const clips = fastOps.filter((o) => o === "Clip").length;
    assert.equal(
      clips,
      (trunc.clip && !Array.isArray(trunc.clip.lo) ? 1 : 0) + (trunc.clamp ? 1 : 0),
    );
    const ref = Array.from(z, (v, i) => requantValue(v, plan.consts[i % C], bits) + outZp);
    assert.deepEqual(sim, ref);
    assert.deepEqual(fast, ref, `case ${t}`);
    assert.deepEqual(plain, ref, `case ${t} plain`);
    tested++;
  }
  assert.ok(
    tested >= 20 && clipped > 0 && unclamped > 0 && unclamped < tested,
    `${tested} cases, ${clipped} clipped, ${unclamped} unclamped`,
  );
});

Deno.test("ivit fast: a clamped per-tensor requantization with m split (lift beyond int32) equals requantValue", async () => {
  const rng = new Rng(23);
  let tested = 0;
  for (let t = 0; t < 40; t++) {
    const bits = t % 4 === 3 ? 16 : 8;
    // small ratios (large k): the lifted dividend z·m + A spans more than int32
    const r = 2 ** (-10 - rng.next() * 6) * (t % 5 === 4 ? 16 : 1);
    const span = 2 ** (20 + Math.floor(rng.next() * 10));
    const [lo, hi] = [-span, span - 1];
    const plan = planRequant([dyadic15(r)], null, bits, lo, hi, "test");
    if (planTruncRequant(plan, bits, 128)) continue;
    const [outType, outZp]: [IntType, number] = bits === 16
      ? ["int16", 0]
      : (["uint8", "int8", "int32"] as IntType[])[t % 3] === "uint8"
      ? ["uint8", 128]
      : [(["uint8", "int8", "int32"] as IntType[])[t % 3], 0];
    const step: Step = {
      kind: "requant",
      x: "z",
      out: "q",
      xType: "int32",
      axis: -1,
      rank: 2,
      plan,
      bits,
      outType,
      outZp,
    };
    const C = 16, rows = 64;
    const z = new Int32Array(rows * C);
    const sat = (2 ** (bits - 1) + 2) / r;
    for (let i = 0; i < z.length; i++) {
      // around the saturation bounds, near 0, and anywhere in the range
      const u = rng.next();
      z[i] = i < 4 ? [lo, hi, 0, -1][i] : Math.round(
        u < 0.4
          ? (rng.next() - 0.5) * 2 * Math.min(sat, span)
          : u < 0.7
          ? (rng.next() - 0.5) * 2 * Math.min(4 / r, span)
          : lo + rng.next() * (hi - lo),
      );
    }
    const p = program(C, [step], "q", [["q", outType]]);
    const { fast, plain, sim, fastOps } = await runAll(p, z, [rows, C]);
    const ref = Array.from(z, (v) => requantValue(v, plan.consts[0], bits) + outZp);
    assert.deepEqual(sim, ref);
    assert.deepEqual(plain, ref, `case ${t} plain`);
    assert.deepEqual(fast, ref, `case ${t}`);
    // m split where it fits: no split of z (its Mod or Sub), one Div of the product's low part
    // and one of the sum
    if (fastOps.includes("Mod") || fastOps.includes("Sub")) continue;
    assert.ok(fastOps.filter((o) => o === "Div").length <= 2, `case ${t}: ${fastOps}`);
    // ratio ≤ 1: z clipped to its saturation bounds needs no clamp of the quotient
    assert.equal(fastOps.filter((o) => o === "Clip").length, 1);
    tested++;
  }
  assert.ok(tested >= 8, `${tested} cases with m split`);
});

Deno.test("ivit fast: Shiftmax by table on 8-bit codes and on int32 scores equals the plain graph and the simulation", async () => {
  const rng = new Rng(8);
  const rows = 16, N = 40;
  for (const s of [0.05, 0.004]) {
    // 8-bit codes from a clamped requantization (offset skipped: Shiftmax cancels it)
    const z = Int32Array.from({ length: rows * N }, () => Math.floor((rng.next() - 0.5) * 2e6));
    const x0 = Math.floor(-1 / s);
    const sm = (x: string): Step => ({
      kind: "shiftmax",
      x,
      out: "sm",
      scale: s,
      x0,
      n: 15,
      bits: 16,
      outType: "int32",
      rowLength: N,
      splitSum: N * -x0 * 2 ** 15 > 2 ** 31 - 1,
    });
    // rows of one clipped value and rows at the clip bounds
    for (let i = 0; i < N; i++) z[i] = 1e6, z[N + i] = i % 2 ? 1e6 : -1e6, z[2 * N + i] = -1e6;
    // 3e-4: the lift to [0, 255] leaves int32 (split form); 6e-3: truncating form, its lift
    // skipped (Shiftmax cancels it)
    for (const r of [3e-4, 6e-3]) {
      const p8 = program(N, [requant("z", "c", r, 8, "int32", 0, -1e6, 1e6), sm("c")], "sm", [
        ["c", "int32"],
        ["sm", "int32"],
      ]);
      const a = await runAll(p8, z, [rows, N]);
      assert.deepEqual(a.fast, a.sim);
      assert.deepEqual(a.plain, a.sim);
      assert.ok(a.fastOps.includes("GatherElements") && !a.plainOps.includes("GatherElements"));
    }
    // int32 scores of any range: d is clipped to the table's dMin first
    const wide = Int32Array.from({ length: rows * N }, () => Math.floor((rng.next() - 0.5) * 4e5));
    const b = await runAll(program(N, [sm("z")], "sm", [["sm", "int32"]]), wide, [rows, N]);
    assert.deepEqual(b.fast, b.sim);
    assert.deepEqual(b.plain, b.sim);
  }
});

Deno.test("ivit fast: ShiftGELU with its requantization folded into one table equals the simulation", async () => {
  const rng = new Rng(9);
  const rows = 24, N = 48;
  const z = new Int32Array(rows * N);
  for (let i = 0; i < z.length; i++) {
    // some rows entirely negative (saturated e_m), some flat
    const r = Math.floor(i / N);
    z[i] = r % 5 === 2 ? 5000 : Math.floor((rng.next() - (r % 4 === 0 ? 0.9 : 0.5)) * 8e4);
  }
  for (const s of [0.04, 0.009]) {
    const gx0 = Math.floor(-1 / (1.702 * s));
    let n = 23;
    while (-gx0 * 2 ** n > 2 ** 31 - 1) n--;
    const gelu: Step = {
      kind: "shiftgelu",
      x: "c",
      out: "g",
      scale: s,
      x0: gx0,
      xZp: 0,
      n,
      bits: 8,
      rowLength: N,
    };
    const steps = [
      requant("z", "c", 2e-3, 8, "int32", 0, -1e5, 1e5),
      gelu,
      requant("g", "q", 0.02, 8, "uint8", 128, -(2 ** 16), 2 ** 16),
    ];
    const p = program(N, steps, "q", [["c", "int32"], ["g", "int32"], ["q", "uint8"]]);
    const a = await runAll(p, z, [rows, N]);
    assert.deepEqual(a.fast, a.sim, `s ${s}`);
    assert.deepEqual(a.plain, a.sim, `s ${s} plain`);
    // one lookup, no ShiftExp chain (BitShift) and no requantization Div after it
    assert.equal(a.fastOps.filter((o) => o === "GatherElements").length, 1);
    assert.ok(!a.fastOps.includes("BitShift") && a.plainOps.includes("BitShift"));
    // unfolded: the int32 ShiftGELU output itself
    const g = await runAll(
      program(N, steps.slice(0, 2), "g", [["c", "int32"], ["g", "int32"]]),
      z,
      [
        rows,
        N,
      ],
    );
    assert.deepEqual(g.fast, g.sim);
  }
});

Deno.test("ivit fast: I-LayerNorm with its per-channel requantization from y'·f equals the simulation", async () => {
  const rng = new Rng(21);
  const rows = 12;
  const cases = [[96, 65535, false, 2e8], [64, 255, true, 2e8], [48, 65535, true, 2e8]] as const;
  // a large folded β moves ch far out: H is clipped to the saturation range first
  for (const [C, yMax, sign, bias] of [...cases, [64, 65535, false, 4e10] as const]) {
    const a = layerNormPrescale(C, yMax);
    const ln: Step = {
      kind: "layernorm",
      x: "z",
      out: "ln",
      channels: C,
      prescale: a,
      yMax,
      k0: layerNormStart(a, C, yMax),
      steps: 10,
      sign: sign ? Array.from({ length: C }, (_, i) => (i % 3 === 1 ? -1 : 1)) : null,
    };
    const r = Array.from({ length: C }, () => 2 ** (-22 + rng.next() * 2));
    const add = Array.from({ length: C }, () => BigInt(Math.round((rng.next() - 0.5) * bias)));
    const plan = planRequant(r.map(dyadic15), add, 8, -(2 ** 30), 2 ** 30 - 1, "test");
    const rq: Step = {
      kind: "requant",
      x: "ln",
      out: "q",
      xType: "int32",
      axis: 1,
      rank: 2,
      plan,
      bits: 8,
      outType: "uint8",
      outZp: 128,
    };
    const half = Math.floor(yMax / 2);
    const z = new Int32Array(rows * C);
    for (let i = 0; i < z.length; i++) {
      // one row nearly flat, one with a single outlier
      const row = Math.floor(i / C);
      z[i] = row === 3 ? 7 + (i % 2) : row === 5 && i % C === 4 ? half : Math.floor(
        (rng.next() - 0.5) * (row % 2 ? yMax : 40),
      );
    }
    const both = program(C, [ln, rq], "q", [["ln", "int32"], ["q", "uint8"]]);
    const res = await runAll(both, z, [rows, C]);
    assert.deepEqual(res.fast, res.sim, `C ${C}`);
    assert.deepEqual(res.plain, res.sim, `C ${C} plain`);
    // fused: the only Mods left are the two of the row mean
    assert.equal(res.fastOps.filter((o) => o === "Mod").length, 2, `C ${C} bias ${bias} not fused`);
    // the large β: H is clipped per channel (Max/Min) before the division
    assert.equal(res.fastOps.includes("Min"), bias > 1e9, `C ${C} bias ${bias}`);
    // the LayerNorm output alone (⌊y'·f/2⌋ as y'·⌊f/2⌋ + (f mod 2)·⌊y'/2⌋, no Mod of P)
    const only = await runAll(program(C, [ln], "ln", [["ln", "int32"]]), z, [rows, C]);
    assert.deepEqual(only.fast, only.sim, `C ${C} ln`);
    assert.equal(only.fastOps.filter((o) => o === "Mod").length, 2, `C ${C} ln`);
  }
});

Deno.test("ivit fast: residual adds fold their operands' constants and pass an offset stream to I-LayerNorm and the next requantization", async () => {
  const rng = new Rng(33);
  const rows = 10, C = 48;
  const span = 2 ** 22;
  // a 16-bit clamped requantization (shift −32768 skipped) read by a no-clamp one
  const q16 = (x: string, out: string, r: number): Step =>
    requant(x, out, r, 16, "int16", 0, -span, span);
  const rq = (x: string, out: string, r: number, xType: IntType, lo: number, hi: number): Step =>
    Object.assign(requant(x, out, r, null, "int32", 0, lo, hi), { xType });
  const a = layerNormPrescale(C, 65535);
  const ln = (x: string, out: string): Step => ({
    kind: "layernorm",
    x,
    out,
    channels: C,
    prescale: a,
    yMax: 65535,
    k0: layerNormStart(a, C, 65535),
    steps: 10,
    sign: null,
  });
  const lnq = (x: string, out: string): Step => ({
    kind: "requant",
    x,
    out,
    xType: "int32",
    axis: 1,
    rank: 2,
    plan: planRequant(
      Array.from({ length: C }, () => dyadic15(2 ** (-22 + rng.next()))),
      Array.from({ length: C }, () => BigInt(Math.round((rng.next() - 0.5) * 1e8))),
      8,
      -(2 ** 30),
      2 ** 30 - 1,
      "test",
    ),
    bits: 8,
    outType: "uint8",
    outZp: 128,
  });
  const add = (x: string, y: string, out: string): Step => ({
    kind: "add",
    a: x,
    b: y,
    out,
    bits: 16,
    outType: "int16",
  });
  const I16: [number, number] = [-32768, 32767];
  const steps: Step[] = [
    q16("z", "s16", 2 ** -8.3),
    q16("z", "b16", 2 ** -7.6),
    rq("s16", "sr", 0.71, "int16", ...I16),
    rq("b16", "br", 0.45, "int16", ...I16),
    add("sr", "br", "x1"),
    ln("x1", "l1"),
    lnq("l1", "o1"),
    rq("x1", "xr", 0.83, "int16", ...I16),
    q16("z", "c16", 2 ** -8.9),
    rq("c16", "cr", 0.62, "int16", ...I16),
    add("xr", "cr", "x2"),
    ln("x2", "l2"),
    lnq("l2", "o2"),
  ];
  const types: [string, IntType][] = [
    ["s16", "int16"],
    ["b16", "int16"],
    ["c16", "int16"],
    ["sr", "int32"],
    ["br", "int32"],
    ["xr", "int32"],
    ["cr", "int32"],
    ["x1", "int16"],
    ["x2", "int16"],
    ["l1", "int32"],
    ["l2", "int32"],
    ["o1", "uint8"],
    ["o2", "uint8"],
  ];
  const p = program(C, steps, "o2", types);
  p.outputs.push({ name: "y1", value: "o1", scale: [1] });
  const z = new Int32Array(rows * C);
  for (let i = 0; i < z.length; i++) {
    // rows that saturate the 16-bit codes, flat rows, wide rows
    const r = Math.floor(i / C);
    z[i] = r === 2
      ? span - 1
      : r === 3
      ? -span
      : r === 4
      ? 1234
      : Math.round((rng.next() - 0.5) * 2 * span * (r % 2 ? 1 : 0.05));
  }
  const sim = simulateProgram(p, z, [rows, C]);
  const shift = (g: ReturnType<typeof emitIntegerGraph>) =>
    g.nodes.filter((n) =>
      n.opType === "Add" && n.inputs.some((v) => g.initializers.get(v)?.numbers()[0] === -32768)
    ).length;
  for (const fast of [true, false]) {
    const g = emitIntegerGraph(p, { fast });
    assert.deepEqual(integerOnlyViolations(g).filter((v) => !v.startsWith("image ")), []);
    if (fast) {
      assert.equal(shift(g), 0, "the 16-bit shift is folded into its reader");
      // both I-LayerNorms read an offset stream: their row sums get the offset back
      // (row sums: an int32 MatMul by a column of ones)
      const sums = new Set(
        g.nodes.filter((n) => n.opType === "MatMul").map((n) => n.outputs[0]),
      );
      // (a constant: an initializer expanded to the row sums' shape)
      const expanded = new Set(
        g.nodes.filter((n) => n.opType === "Expand" && g.initializers.has(n.inputs[0]))
          .map((n) => n.outputs[0]),
      );
      const fixed = g.nodes.filter((n) =>
        n.opType === "Add" && sums.has(n.inputs[0]) && expanded.has(n.inputs[1])
      );
      assert.equal(fixed.length, 2);
    }
    const s = await createRawSession(g, 1, "residual graph");
    try {
      const out = await s.run(z, [rows, C]);
      for (const v of ["o1", "o2"]) {
        assert.deepEqual(
          Array.from(out[v].data, Number),
          Array.from(sim.get(v)!.data),
          `${v} fast ${fast}`,
        );
      }
    } finally {
      await s.release();
    }
  }
});

Deno.test("ivit fast: a 16-bit operand's two byte products run as one stacked MatMulInteger and equal the simulation", async () => {
  const rng = new Rng(41);
  for (const [batch, M, K, N] of [[1, 7, 10, 5], [3, 9, 16, 4]]) {
    const p = program(
      K,
      [{
        kind: "matmul",
        a: "z",
        b: "w",
        out: "y",
        aType: "int32",
        bType: "uint8",
        aZp: 0,
        bZp: 128,
        mode: "split16",
      }],
      "y",
      [["y", "int32"]],
    );
    p.input.dims = batch === 1 ? [M, K] : [batch, M, K];
    const w = Array.from({ length: K * N }, () => Math.floor(rng.next() * 256));
    p.initializers.set("w", uint8Tensor("w", [K, N], w));
    p.types.set("w", "uint8");
    // non-negative 15-bit codes, with both bytes at their extremes
    const dims = p.input.dims as number[];
    const x = Int32Array.from(
      { length: dims.reduce((a, b) => a * b, 1) },
      (_, i) => (i < 2 ? [32767, 255][i] : Math.floor(rng.next() * 32768)),
    );
    const { fast, plain, sim, fastOps, plainOps } = await runAll(p, x, dims);
    assert.deepEqual(fast, sim, `${dims}`);
    assert.deepEqual(plain, sim, `${dims} plain`);
    assert.equal(fastOps.filter((o) => o === "MatMulInteger").length, 1);
    assert.equal(plainOps.filter((o) => o === "MatMulInteger").length, 2);
  }
});
