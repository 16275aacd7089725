/**
 * ONNX emission of an {@link IntProgram}: every integer kernel becomes ONNX
 * operators that ONNX Runtime's CPU provider runs on integers
 * (MatMulInteger, ConvInteger, MatMul on int32, Add/Sub/Mul/Div/Mod, Max/Min,
 * Clip, BitShift on uint32, ReduceSum/ReduceMax, Gather from integer tables,
 * Cast between integer types; copied data movement such as Slice/Concat/Pad on
 * integer codes). Division is ONNX integer Div, which truncates toward zero;
 * wherever the dividend can be negative, floor division is written as
 * `(x − Mod(x, d)) / d` (ONNX Mod with fmod = 0 takes the divisor's sign, so
 * the subtraction lands on a multiple of d), or shifted to a non-negative
 * dividend. No bool tensor carries data: comparisons are `Clip(x, 0, 1)` on
 * integers.
 *
 * **Fast forms** (`fast`, the default; `fast: false` emits the plain op
 * chains, with the same results). ONNX Runtime runs each integer op as its
 * own pass over memory (no fusion, scalar int32 division), so the fast forms
 * cut passes, each exact (tests/ivit_fast.test.ts checks fast = plain =
 * simulation per kernel):
 * - ShiftExp by one lookup in a table of d ≤ 0 (`tables.ts`); ShiftGELU of
 *   b-bit codes by one lookup in a table indexed by the code and its row's
 *   maximum, with the per-tensor requantization that alone reads it folded in
 *   (the table holds the uint8 codes of the next MatMulInteger); a lookup is
 *   GatherElements along the last axis (ONNX Runtime's Gather is 4 to 6
 *   times slower per element), on indices in K rows with the table repeated
 *   K times (the op runs rows in parallel), or, for ShiftGELU, with each
 *   row's slice of the table gathered first (no per-element index Add);
 * - a clamped requantization as Clip (one range, or per channel), Mul, Add,
 *   a truncating Div and Clip: the addend lifts the result's range to start at
 *   0, where truncation and floor clamp alike (`TruncPlan` of kernels.ts; the
 *   last Clip only where the clipped input can leave the output range); the
 *   lift is skipped where the only reader cancels it (Shiftmax) or folds it
 *   (the ShiftGELU table index);
 * - a clamped per-tensor requantization whose lifted dividend would leave
 *   int32 (Shiftmax@V) with m split instead of z: z clipped, offset to be
 *   non-negative, w·mh + ⌊w·ml/2^s⌋ + constant, one truncating Div
 *   (`requantSplitM`);
 * - I-LayerNorm's output requantization computed from P = y'·f, an int32
 *   after one Newton step (|y'| ≤ ⌊√V⌋ ≤ k), split at 2^16 with a Cast to
 *   uint16, without materializing ⌊P/2⌋; Σy'² by one ReduceSumSquare;
 * - the two byte products of a 16-bit matmul operand (`split16`) as one
 *   MatMulInteger on the bytes stacked along the rows, split after;
 * - a patch embedding (kernel = stride) as MatMulInteger on the patches
 *   (ONNX Runtime's ConvInteger is far slower than its u8 x s8 matmul);
 * - 8- and 16-bit values keep their int32 source as a twin, so readers skip
 *   the Cast back to int32.
 *
 * The float image enters through `QuantizeLinear` (int8); the integer graph's
 * outputs are int32 codes. {@link emitFloatWrapper} adds the output
 * dequantizer (`Cast` to float, `Mul` by the scale) so that the graph is
 * float in, float out.
 *
 * @module
 */
import { DataType, Graph, makeAttr, Tensor } from "../onnx/graph.ts";
import { GraphEmitter } from "../onnx/emitter.ts";
import { chunkBatch } from "../onnx/chunk.ts";
import { INT31_MAX } from "./reference.ts";
import { floorDivBig, planTruncRequant, saturation } from "./kernels.ts";
import { MAX_TABLE, shiftExpTable, shiftGeluTable } from "./tables.ts";
import {
  type ConvStep,
  int32Tensor,
  int8Tensor,
  type IntProgram,
  type IntType,
  type LayerNormStep,
  onnxType,
  type RequantStep,
  type ShiftGeluStep,
  type ShiftmaxStep,
  type Step,
  stepInputs,
  stepOutputs,
  uint8Tensor,
} from "./program.ts";

/** Options of {@link emitIntegerGraph}. */
export interface EmitOptions {
  /** Append the output dequantizer (float outputs named as in the original graph). */
  dequantize?: boolean;
  /** Integer values of the program to expose as extra graph outputs (for tests). */
  extraOutputs?: string[];
  /**
   * Use the fast forms (default true): lookup tables for ShiftExp and
   * ShiftGELU (tables.ts), requantization by truncating division, patch
   * embedding as MatMulInteger. False emits every kernel as its plain op
   * chain (the same results, for tests and speed comparisons).
   */
  fast?: boolean;
}

class Emitter extends GraphEmitter {
  private n = 0;
  /** The step that writes each value. */
  private readonly producer = new Map<string, Step>();
  /** How many steps read each value, plus one per graph output it is. */
  private readonly uses = new Map<string, number>();
  /** Steps already emitted as part of an earlier one (a requantization folded into a table). */
  private readonly folded = new Set<Step>();
  /** The int32 form of an 8- or 16-bit value, where one exists (its clamped source or one shared Cast). */
  private readonly wide = new Map<string, string>();
  /**
   * Values emitted as (codes − offset): the requantization skipped its final
   * shift because its only reader cancels or folds it (Shiftmax, table ShiftGELU).
   */
  private readonly offset = new Map<string, number>();
  /** int8 forms of uint8 matmul operands with zero point 128 ({@link signedB}). */
  private readonly signed = new Map<string, string>();

  constructor(readonly p: IntProgram, kept: string[], readonly fast = true) {
    super(Graph.create(p.opset, "vitq_ivit"));
    const use = (v: string) => this.uses.set(v, (this.uses.get(v) ?? 0) + 1);
    for (const s of p.steps) {
      for (const o of stepOutputs(s)) this.producer.set(o, s);
      stepInputs(s).forEach(use);
    }
    for (const o of p.outputs) use(o.value);
    kept.forEach(use);
  }

  /**
   * Lowest and highest code a value can hold where the program bounds it: an
   * 8-bit type, or the clamped output of a requantization; else undefined.
   */
  codeRange(v: string): [number, number] | undefined {
    const t = this.p.types.get(v);
    if (t === "uint8") return [0, 255];
    if (t === "int8") return [-128, 127];
    const s = this.producer.get(v);
    if (s?.kind === "requant" && s.bits !== null) {
      return [s.outZp - 2 ** (s.bits - 1), s.outZp + 2 ** (s.bits - 1) - 1];
    }
    return undefined;
  }

  /** The only step that reads `v` (and `v` is no graph output), if any. */
  soleReader(v: string): Step | undefined {
    if (this.uses.get(v) !== 1) return undefined;
    return this.p.steps.find((s) => stepInputs(s).includes(v));
  }

  /** The per-tensor clamped requantization that is the only reader of `v`, if any. */
  soleRequant(v: string): RequantStep | undefined {
    const r = this.soleReader(v);
    return r?.kind === "requant" && r.plan.consts.length === 1 ? r : undefined;
  }

  /** Whether the only reader of `v` is indifferent to a constant offset of its codes. */
  offsetTolerant(v: string): boolean {
    if (!this.fast) return false;
    const r = this.soleReader(v);
    if (r?.kind === "shiftmax") return true;
    if (r?.kind !== "shiftgelu") return false;
    const range = this.codeRange(v);
    return !!range && (range[1] - range[0] + 1) ** 2 <= MAX_TABLE;
  }

  /**
   * The constants of a no-clamp requantization in the offsets form (every
   * dividend non-negative) with its input emitted as (codes − off): the clip
   * bounds, z's offsets and the addends absorb `off`, so every intermediate
   * value is the same; undefined when one leaves int32.
   */
  offsetFold(
    s: RequantStep,
    off: number,
  ): { lo?: number[]; hi?: number[]; oz: number[]; k2: number[] } | undefined {
    const { plan } = s;
    if (s.bits !== null || !plan.offsets) return undefined;
    const fits = (v: number) => Number.isSafeInteger(v) && v >= -(2 ** 31) && v < 2 ** 31;
    const S = plan.split;
    const m = plan.consts.map((c) => c.m);
    const clh = plan.consts.map((c, i) => Number(c.cl >> BigInt(S[i])));
    const { z: oz, h: oh } = plan.offsets;
    const k2 = clh.map((v, i) => v - (oz[i] / 2 ** S[i]) * m[i] + oh[i]);
    const res = {
      lo: plan.clip?.lo.map((v) => v - off),
      hi: plan.clip?.hi.map((v) => v - off),
      oz: oz.map((v, i) => (S[i] > 0 ? v + off : v)),
      k2: k2.map((v, i) => (S[i] > 0 ? v : v + off * m[i])),
    };
    const all = [...(res.lo ?? []), ...(res.hi ?? []), ...res.oz, ...res.k2];
    return all.every(fits) ? res : undefined;
  }

  /**
   * Whether every reader of `v` takes it as (codes − off) (fast forms only):
   * I-LayerNorm (its row mean moves by off) and no-clamp requantizations in
   * the offsets form that absorb off (see {@link offsetFold}); `v` is no
   * graph output. Both read the int32 form (an 8- or 16-bit value offset so
   * is emitted only as its int32 twin: no Cast of shifted codes exists).
   */
  offsetAware(v: string, off: number): boolean {
    if (!this.fast || !Number.isSafeInteger(off) || Math.abs(off) >= 2 ** 24) return false;
    const readers = this.p.steps.filter((t) => stepInputs(t).includes(v));
    if (!readers.length || readers.length !== this.uses.get(v)) return false;
    return readers.every((t) =>
      (t.kind === "layernorm" && t.x === v) ||
      (t.kind === "requant" && t.x === v && !!this.offsetFold(t, off))
    );
  }

  /** A fresh name (the graph starts empty: a counter suffices). */
  override fresh(base: string): string {
    return `ivit${this.n++}_${base}`;
  }

  /** Add a node; returns its (single) output. */
  op(
    opType: string,
    inputs: string[],
    attributes: unknown[] = [],
    out?: string,
  ): string {
    const o = out ?? this.fresh(opType.toLowerCase());
    this.emitNode(opType, inputs, [o], attributes, this.fresh(opType));
    return o;
  }

  /** int32 constant: scalar (dims []) or a vector shaped `dims`. */
  i32(values: number[] | number, dims: number[] = []): string {
    const arr = typeof values === "number" ? [values] : values;
    return this.cachedConstant(
      `i32|${dims}|${arr.join(",")}`,
      "c",
      (n) => int32Tensor(n, dims, arr),
    );
  }

  /** Per-channel int32 constant broadcasting along `axis` of a rank-`rank` tensor. */
  chan(values: number[], axis: number, rank: number): string {
    if (axis < 0 || values.every((v) => v === values[0])) return this.i32(values[0]);
    return this.i32(values, [values.length, ...new Array(rank - 1 - axis).fill(1)]);
  }

  /** 1-D int64 constant (axes). */
  i64(values: number[]): string {
    return this.cachedConstant(
      `i64|${values.join(",")}`,
      "axes",
      (n) => Tensor.fromInt64(n, [values.length], values),
    );
  }

  /** A scalar zero-point initializer of an 8-bit type. */
  zp(v: number, type: IntType): string {
    return type === "int8" ? this.i8(v) : this.u8(v);
  }

  /** Scalar uint8 constant. */
  u8(v: number): string {
    return this.cachedConstant(`u8|${v}`, "u8", (n) => uint8Tensor(n, [], [v]));
  }

  /** Scalar int8 constant. */
  i8(v: number): string {
    return this.cachedConstant(`i8|${v}`, "i8", (n) => int8Tensor(n, [], [v]));
  }

  /**
   * The right operand of a MatMulInteger as int8 where it is uint8 codes with
   * zero point 128 (fast forms): `Cast(Sub(b, 128), int8)`, both passes on
   * bytes (uint8 subtraction and the Cast wrap modulo 2^8, so code c becomes
   * c − 128 exactly). ONNX Runtime multiplies uint8 by int8 with the VNNI
   * kernels; uint8 by uint8 takes a 16-bit path: at ViT-S attention shapes
   * (8 images, 6 heads, 197 tokens) Q·Kᵀ ran 1.9x and attn·V 1.75x faster as
   * uint8 by int8 (ONNX Runtime 1.30 CPU, 2 threads, Zen 5). Returns the operand and its
   * zero-point initializer (undefined: none needed); one conversion per value.
   * Opsets below 14 (no uint8 Sub) keep uint8.
   */
  signedB(b: string, type: IntType, zp: number): [string, string | undefined] {
    // (uint8 Sub from opset 14)
    if (!this.fast || type !== "uint8" || zp !== 128 || this.p.opset < 14) {
      return [b, zp ? this.zp(zp, type) : undefined];
    }
    let s = this.signed.get(b);
    if (!s) this.signed.set(b, s = this.cast(this.op("Sub", [b, this.u8(128)]), "int8"));
    return [s, undefined];
  }

  /** x − zp as int32. */
  centered(x: string, type: IntType, zp: number): string {
    const x32 = this.toInt32(x, type);
    return zp ? this.op("Sub", [x32, this.i32(zp)]) : x32;
  }

  cast(x: string, to: IntType | "uint16" | "uint32" | "float", out?: string): string {
    const t = to === "float"
      ? DataType.FLOAT
      : to === "uint32"
      ? DataType.UINT32
      : to === "uint16"
      ? DataType.UINT16
      : onnxType(to);
    return this.op("Cast", [x], [makeAttr("to", t)], out);
  }

  toInt32(x: string, type: IntType): string {
    if (type === "int32") return x;
    let w = this.wide.get(x);
    if (!w) this.wide.set(x, w = this.cast(x, "int32"));
    return w;
  }

  reduceMax(x: string): string {
    if (this.p.opset >= 18) {
      return this.op("ReduceMax", [x, this.i64([-1])], [makeAttr("keepdims", 1)]);
    }
    return this.op("ReduceMax", [x], [makeAttr("axes", [-1]), makeAttr("keepdims", 1)]);
  }

  reduceSum(x: string): string {
    return this.op("ReduceSum", [x, this.i64([-1])], [makeAttr("keepdims", 1)]);
  }

  /**
   * Sum over the last axis (length `n`), kept as a size-1 axis. Fast forms: an
   * int32 MatMul by a column of ones (ONNX Runtime's int32 ReduceSum over the
   * last axis takes twice as long; the sums are the same integers, and int32
   * as ever: the program keeps them below 2^31).
   */
  rowSum(x: string, n: number): string {
    if (!this.fast) return this.reduceSum(x);
    const ones = this.cachedConstant(
      `ones|${n}`,
      "ones",
      (name) => int32Tensor(name, [n, 1], new Array(n).fill(1)),
    );
    return this.op("MatMul", [x, ones]);
  }

  /** floor(x / d) for d > 0 and any sign of x: (x − Mod(x, d)) / d. */
  floorDiv(x: string, d: string): string {
    return this.op("Div", [this.op("Sub", [x, this.op("Mod", [x, d])]), d]);
  }

  clip(x: string, lo: number, hi: number): string {
    return this.op("Clip", [x, this.i32(lo), this.i32(hi)]);
  }

  /**
   * ShiftExp of d ≤ 0 (int32), output e = floor((r − 2·x0)·2^(n−1−q)):
   * v = d + floor(d/2) − floor(d/16) (floors of non-positive numbers as
   * trunc((d − (D−1))/D)), v = max(v, n·x0), q = v / x0 (both ≤ 0: exact
   * floor), r = v − x0·q, e = (r − 2x0)·2^(n−1) / 2^q with 2^q from a table.
   */
  shiftExpNonPositive(d: string, x0: number, n: number): string {
    const h2 = this.op("Div", [this.op("Sub", [d, this.i32(1)]), this.i32(2)]);
    const h16 = this.op("Div", [this.op("Sub", [d, this.i32(15)]), this.i32(16)]);
    let v = this.op("Sub", [this.op("Add", [d, h2]), h16]);
    v = this.op("Max", [v, this.i32(n * x0)]);
    const q = this.op("Div", [v, this.i32(x0)]);
    const r = this.op("Sub", [v, this.op("Mul", [q, this.i32(x0)])]);
    const num = this.op("Sub", [r, this.i32(2 * x0)]);
    // num·2^(n−1) > 0 and 0 ≤ q ≤ n < 32: the floor division by 2^q is a
    // logical right shift (BitShift is defined on unsigned types only)
    const shifted = this.op("BitShift", [
      this.cast(this.op("Mul", [num, this.i32(2 ** (n - 1))]), "uint32"),
      this.cast(q, "uint32"),
    ], [makeAttr("direction", "RIGHT")]);
    return this.cast(shifted, "int32");
  }

  /**
   * ShiftExp of any-sign w, saturated at 2^31 − 1: as above with floors by
   * Mod, q = floor(−v / −x0), and the final power 2^(n−1−q) from tables of
   * multipliers, divisors and overflow limits indexed by min(n−1−q, 31) + 1.
   */
  shiftExpSaturated(w: string, x0: number, n: number): string {
    const f2 = this.floorDiv(w, this.i32(2));
    const f16 = this.floorDiv(w, this.i32(16));
    let v = this.op("Sub", [this.op("Add", [w, f2]), f16]);
    v = this.op("Max", [v, this.i32(n * x0)]);
    const q = this.floorDiv(this.op("Neg", [v]), this.i32(-x0));
    const r = this.op("Sub", [v, this.op("Mul", [q, this.i32(x0)])]);
    const num = this.op("Sub", [r, this.i32(2 * x0)]);
    const t = this.op("Sub", [this.i32(n - 1), q]);
    const idx = this.op("Add", [this.op("Min", [t, this.i32(31)]), this.i32(1)]);
    const mulT: number[] = [], divT: number[] = [], limT: number[] = [];
    for (let i = 0; i <= 32; i++) {
      if (i === 0) {
        mulT.push(1), divT.push(2), limT.push(INT31_MAX);
      } else if (i <= 31) {
        mulT.push(2 ** (i - 1)), divT.push(1), limT.push(Math.floor(INT31_MAX / 2 ** (i - 1)));
      } else {
        mulT.push(0), divT.push(1), limT.push(0);
      }
    }
    const mul = this.op("Gather", [this.i32(mulT, [33]), idx]);
    const div = this.op("Gather", [this.i32(divT, [33]), idx]);
    const lim = this.op("Gather", [this.i32(limT, [33]), idx]);
    const prod = this.op("Div", [this.op("Mul", [this.op("Min", [num, lim]), mul]), div]);
    const sat = this.clip(this.op("Sub", [num, lim]), 0, 1);
    return this.op("Max", [prod, this.op("Mul", [sat, this.i32(INT31_MAX)])]);
  }

  /**
   * A clamped requantization as Clip, Mul, Add, truncating Div, Clip (see
   * `TruncPlan` of kernels.ts); false when it does not fit int32.
   */
  requantTrunc(s: RequantStep): boolean {
    if (s.bits === null || !this.fast || this.offset.has(s.x)) return false;
    const t = planTruncRequant(s.plan, s.bits, s.outZp);
    if (!t) return false;
    const ch = (vals: number[]) => this.chan(vals, s.axis, s.rank);
    let z = this.toInt32(s.x, s.xType);
    if (t.clip && typeof t.clip.lo === "number") {
      z = this.clip(z, t.clip.lo, t.clip.hi as number);
    } else if (t.clip) {
      z = this.op("Min", [
        this.op("Max", [z, ch(t.clip.lo as number[])]),
        ch(t.clip.hi as number[]),
      ]);
    }
    if (t.m.some((v) => v !== 1)) z = this.op("Mul", [z, ch(t.m)]);
    if (t.add.some((v) => v !== 0)) z = this.op("Add", [z, ch(t.add)]);
    if (t.div.some((v) => v !== 1)) z = this.op("Div", [z, ch(t.div)]);
    if (t.clamp) z = this.clip(z, 0, t.hi);
    this.shiftedOutput(s, z, t.shift);
    return true;
  }

  /**
   * The end of a truncating requantization: its result `z` is the output minus
   * `shift`; the shift becomes an offset where every reader takes one (else an
   * Add), then the output is stored in its type (the int32 kept as its twin).
   */
  private shiftedOutput(s: RequantStep, z: string, shift: number): void {
    if (
      shift &&
      ((s.outType === "int32" && this.offsetTolerant(s.out)) || this.offsetAware(s.out, shift))
    ) {
      this.offset.set(s.out, shift);
    } else if (shift) z = this.op("Add", [z, this.i32(shift)]);
    if (s.outType === "int32") this.op("Identity", [z], [], s.out);
    else if (this.offset.has(s.out)) this.wide.set(s.out, z);
    else {
      this.cast(z, s.outType, s.out);
      this.wide.set(s.out, z);
    }
  }

  /**
   * A clamped per-tensor requantization whose lifted dividend z·m + A spans
   * more than int32 (a large k: e.g. Shiftmax@V, 16-bit probabilities times
   * 8-bit values), with m split instead of z: z clipped to its saturation
   * bounds [lo, hi], w = zc + c0 ≥ 0, m = mh·2^s + ml (0 ≤ ml < 2^s), and
   * with E = cl + (ch + outZp − base)·2^k − c0·m a multiple of 2^s (c0
   * chosen so, else its remainder El is added), the code is
   * ⌊(w·mh + ⌊(w·ml + El)/2^s⌋ + ⌊E/2^s⌋)/2^(k−s)⌋ + base, every dividend
   * non-negative (truncation is floor) where zc maps into the output range
   * (ratio m/2^k ≤ 1; else false). Clip, Add, Mul, Div, Mul, Add, Add, Div
   * (then the shift and Cast where needed; fewer where ml or a constant is
   * 0), against the split of z's 13; false (nothing emitted) when a term
   * leaves int32.
   */
  requantSplitM(s: RequantStep): boolean {
    if (!this.fast || s.bits === null || s.plan.consts.length !== 1) return false;
    if (this.offset.has(s.x)) return false;
    const c = s.plan.consts[0];
    const bits = s.bits;
    if (c.m <= 0 || c.k < 2 || c.k > 62) return false;
    const qmin = -(2n ** BigInt(bits - 1)), qmax = 2n ** BigInt(bits - 1) - 1n;
    const base = qmin + BigInt(s.outZp) < 0n ? qmin + BigInt(s.outZp) : 0n;
    const sat = saturation(c, bits);
    const zlo = BigInt(s.plan.zlo), zhi = BigInt(s.plan.zhi);
    const lo = sat.zLo > zlo ? sat.zLo : zlo, hi = sat.zHi < zhi ? sat.zHi : zhi;
    if (lo > hi) return false;
    const M = BigInt(c.m), P = 1n << BigInt(c.k);
    const q = (z: bigint) => floorDivBig(z * M + c.cl, P) + c.ch;
    // only where the clipped z maps into the output range (ratio m/2^k ≤ 1): no quotient clamp
    if (q(lo) < qmin || q(hi) > qmax) return false;
    const fits = (v: bigint) => v >= -(2n ** 31n) && v < 2n ** 31n;
    const E0 = c.cl + (c.ch + BigInt(s.outZp) - base) * P;
    for (let sh = 1; sh < Math.min(c.k, 16); sh++) {
      const S = 1n << BigInt(sh);
      const mh = M / S, ml = M % S;
      // c0 ≥ −lo with E ≡ 0 (mod 2^s) where one exists among 2^s candidates
      let c0 = -lo;
      for (let j = 0n; j < S; j++) {
        if ((((E0 - (c0 + j) * M) % S) + S) % S === 0n) {
          c0 += j;
          break;
        }
      }
      const E = E0 - c0 * M;
      const el = ((E % S) + S) % S, eh = (E - el) / S;
      const W = hi + c0;
      const inner = W * ml + el;
      const top = W * mh + inner / S + eh, bottom = (lo + c0) * mh + eh;
      const terms = [c0, lo, hi, W, inner, W * mh, W * mh + inner / S, W * mh + eh, top, bottom];
      if (!terms.every(fits)) continue;
      const n = (v: bigint) => this.i32(Number(v));
      let w = this.clip(this.toInt32(s.x, s.xType), Number(lo), Number(hi));
      if (c0 !== 0n) w = this.op("Add", [w, n(c0)]);
      let low = ml === 0n ? undefined : this.op("Mul", [w, n(ml)]);
      if (low && el !== 0n) low = this.op("Add", [low, n(el)]);
      let h = mh === 1n ? w : this.op("Mul", [w, n(mh)]);
      if (low) h = this.op("Add", [h, this.op("Div", [low, n(S)])]);
      if (eh !== 0n) h = this.op("Add", [h, n(eh)]);
      const z = this.op("Div", [h, n(1n << BigInt(c.k - sh))]);
      this.shiftedOutput(s, z, Number(base));
      return true;
    }
    return false;
  }

  requant(s: RequantStep): void {
    if (this.requantTrunc(s) || this.requantSplitM(s)) return;
    const { plan, axis, rank } = s;
    let z = this.toInt32(s.x, s.xType);
    const ch = (vals: number[]) => this.chan(vals, axis, rank);
    const addC = (x: string, vals: number[]) =>
      vals.some((v) => v !== 0) ? this.op("Add", [x, ch(vals)]) : x;
    // an input emitted as (codes − off): absorbed by the constants, or added back
    const off = this.offset.get(s.x) ?? 0;
    const fold = off ? this.offsetFold(s, off) : undefined;
    if (off && !fold) z = this.op("Add", [z, this.i32(off)]);
    if (plan.clip) {
      const [lo, hi] = fold ? [fold.lo!, fold.hi!] : [plan.clip.lo, plan.clip.hi];
      z = this.op("Min", [this.op("Max", [z, ch(lo)]), ch(hi)]);
    }
    const m = plan.consts.map((c) => c.m);
    const S = plan.split;
    const dv = plan.consts.map((c, i) => 2 ** (c.k - S[i]));
    const cll = plan.consts.map((c, i) => Number(c.cl % (1n << BigInt(S[i]))));
    const clh = plan.consts.map((c, i) => Number(c.cl >> BigInt(S[i])));
    const split = S.some((v) => v > 0);
    let f: string;
    if (plan.offsets) {
      // every dividend is non-negative: Div is floor division
      const { h: oh } = plan.offsets;
      let oz = plan.offsets.z;
      let hp: string;
      let k2 = clh.map((v, i) => v - (oz[i] / 2 ** S[i]) * m[i] + oh[i]);
      if (fold) [oz, k2] = [fold.oz, fold.k2];
      if (split) {
        const p2s = ch(S.map((v) => 2 ** v));
        const zo = addC(z, oz);
        const zh = this.op("Div", [zo, p2s]);
        const zl = this.op("Sub", [zo, this.op("Mul", [zh, p2s])]);
        const q = addC(this.op("Mul", [zl, ch(m)]), cll);
        hp = this.op("Add", [this.op("Mul", [zh, ch(m)]), this.op("Div", [q, p2s])]);
        hp = addC(hp, k2);
      } else {
        hp = addC(this.op("Mul", [z, ch(m)]), k2);
      }
      f = dv.every((v) => v === 1) ? hp : this.op("Div", [hp, ch(dv)]);
      const fc = plan.chClamped.map((c, i) => c - oh[i] / dv[i] + s.outZp);
      // the only reader is a clamped add: it takes the constant with the other operand's
      const rd = this.soleReader(s.out);
      if (
        this.fast && s.bits === null && s.outType === "int32" && rd?.kind === "add" &&
        rd.bits < 32 && fc.every((v) => v === fc[0]) && fc[0] !== 0
      ) {
        this.offset.set(s.out, fc[0]);
      } else f = addC(f, fc);
    } else {
      let h: string;
      if (split) {
        const p2s = ch(S.map((v) => 2 ** v));
        const zl = this.op("Mod", [z, p2s]);
        const zh = this.op("Div", [this.op("Sub", [z, zl]), p2s]);
        const q = addC(this.op("Mul", [zl, ch(m)]), cll);
        h = addC(this.op("Add", [this.op("Mul", [zh, ch(m)]), this.op("Div", [q, p2s])]), clh);
      } else {
        h = addC(this.op("Mul", [z, ch(m)]), clh);
      }
      f = dv.every((v) => v === 1) ? h : this.floorDiv(h, ch(dv));
      f = addC(f, plan.chClamped.map((c) => c + s.outZp));
    }
    if (s.bits !== null && plan.finalClamp) {
      f = this.clip(f, s.outZp - 2 ** (s.bits - 1), s.outZp + 2 ** (s.bits - 1) - 1);
    }
    if (s.outType === "int32") this.op("Identity", [f], [], s.out);
    else {
      this.cast(f, s.outType, s.out);
      // clamped to bits: the int32 value is the same codes
      if (s.bits !== null) this.wide.set(s.out, f);
    }
  }

  /**
   * `table[idx]` for a 1-D table and indices of any shape (negative indices
   * count from the end): GatherElements along the last axis of the indices
   * reshaped to K rows, the table repeated K times (one copy per row; the
   * file holds it once, Expand repeats it), then
   * reshaped back. ONNX Runtime's Gather copies each element with its own
   * memcpy (several ns per element); GatherElements of equal-rank operands is
   * a plain indexed loop, 4 to 6 times faster, and it splits its work across
   * threads by rows only (one row runs on one thread). K divides `rowLength`
   * (the indices' last dimension), so it divides the element count.
   */
  lookup(values: number[], idx: string, rowLength: number, out?: string): string {
    const T = values.length;
    let K = 1;
    for (let d = 16; d <= rowLength; d++) {
      if (rowLength % d === 0) {
        if (d * T <= 2 ** 20) K = d;
        break;
      }
    }
    // stored once, repeated by an Expand of constants (ONNX Runtime folds it at session load)
    let table = this.i32(values, [1, T]);
    if (K > 1) table = this.op("Expand", [table, this.i64([K, T])]);
    const flat = this.op("Reshape", [idx, this.i64([K, -1])]);
    const g = this.op("GatherElements", [table, flat], [makeAttr("axis", 1)]);
    return this.op("Reshape", [g, this.op("Shape", [idx])], [], out);
  }

  /**
   * ShiftExp of d ≤ 0 by table (tables.ts): d clipped to the table's dMin
   * (unless the codes' range keeps it there), then one Gather with negative
   * indices (index −j is entry T − j); undefined when the table would be too large.
   */
  shiftExpByTable(
    d: string,
    scale: number,
    n: number,
    rowLength: number,
    width?: number,
  ): string | undefined {
    if (!this.fast) return undefined;
    let t;
    try {
      t = shiftExpTable(scale, n);
    } catch {
      return undefined;
    }
    // values[i] = e(dMin + i); Gather index d ∈ [dMin, 0] reads entry (d mod T)
    const T = t.values.length;
    const table = [t.values[T - 1], ...t.values.slice(0, T - 1)];
    const dc = width !== undefined && width - 1 <= -t.dMin ? d : this.clip(d, t.dMin, 0);
    return this.lookup(table, dc, rowLength);
  }

  shiftmax(s: ShiftmaxStep): void {
    const type = this.p.types.get(s.x) ?? "int32";
    const range = this.codeRange(s.x);
    const x = this.toInt32(s.x, type);
    const d = this.op("Sub", [x, this.reduceMax(x)]);
    const e =
      this.shiftExpByTable(d, s.scale, s.n, s.rowLength, range && range[1] - range[0] + 1) ??
        this.shiftExpNonPositive(d, s.x0, s.n);
    let sum: string;
    if (!s.splitSum) sum = this.rowSum(e, s.rowLength);
    else {
      const base = this.i32(65536);
      const eh = this.op("Div", [e, base]);
      const el = this.op("Sub", [e, this.op("Mul", [eh, base])]);
      const sl = this.rowSum(el, s.rowLength);
      const hi = this.op("Add", [this.rowSum(eh, s.rowLength), this.op("Div", [sl, base])]);
      const lo = this.op("Mod", [sl, base]);
      const raw = this.op("Add", [
        this.op("Mul", [this.op("Min", [hi, this.i32(32767)]), base]),
        lo,
      ]);
      const sat = this.clip(this.op("Sub", [hi, this.i32(32767)]), 0, 1);
      sum = this.op("Max", [raw, this.op("Mul", [sat, this.i32(INT31_MAX)])]);
    }
    // (fast forms: the numerator as a per-row tensor, as in layerNorm)
    const num = this.fast
      ? this.op("Expand", [this.i32(INT31_MAX), this.op("Shape", [sum])])
      : this.i32(INT31_MAX);
    const f = this.op("Div", [num, sum]);
    const out = this.op("Div", [this.op("Mul", [e, f]), this.i32(2 ** (32 - s.bits))]);
    if (s.outType === "int32") this.op("Identity", [out], [], s.out);
    else this.cast(out, s.outType, s.out);
  }

  /**
   * ShiftGELU by table (tables.ts), with the per-tensor requantization that
   * alone reads its output folded in: the w×w table's row (row max − lo) per
   * row by Gather, then each code's entry (code − lo) in its row by
   * GatherElements. False when the codes' range is unknown or the table too
   * large.
   */
  shiftGeluByTable(s: ShiftGeluStep): boolean {
    if (!this.fast) return false;
    const range = this.codeRange(s.x);
    if (!range) return false;
    const [lo, hi] = range;
    const w = hi - lo + 1;
    const rq = this.soleRequant(s.out);
    const rqOut = rq && rq.bits !== null ? rq : undefined;
    let values: number[];
    try {
      values = shiftGeluTable({
        lo,
        hi,
        xZp: s.xZp,
        scale: s.scale,
        n: s.n,
        bits: s.bits,
        requant: rqOut ? { c: rqOut.plan.consts[0], bits: rqOut.bits, outZp: rqOut.outZp } : null,
      });
    } catch {
      return false;
    }
    const outType: IntType = rqOut ? rqOut.outType : "int32";
    const table = this.cachedConstant(
      `gelu|${w}|${values.join(",")}|${outType}`,
      "gelu_table",
      (nm) =>
        outType === "uint8"
          ? uint8Tensor(nm, [w, w], values)
          : outType === "int8"
          ? int8Tensor(nm, [w, w], values)
          : outType === "int16"
          ? new Tensor(
            nm,
            DataType.INT16,
            [w, w],
            new Uint8Array(Int16Array.from(values).buffer),
          )
          : int32Tensor(nm, [w, w], values),
    );
    const x = this.toInt32(s.x, this.p.types.get(s.x) ?? "int32");
    // emitted codes are (code − off); the table as w rows of w, row max − lo, column code − lo:
    // each row of x gathers its row of the table (Gather), then looks its codes up in that row
    // (GatherElements along the last axis: no per-element index Add, and rows run in parallel)
    const off = this.offset.get(s.x) ?? 0;
    const shift = (v: string) => (off !== lo ? this.op("Add", [v, this.i32(off - lo)]) : v);
    const mx = shift(this.op("Reshape", [this.reduceMax(x), this.i64([-1])]));
    const rows = this.op("Gather", [table, mx], [makeAttr("axis", 0)]);
    const flat = this.op("Reshape", [shift(x), this.i64([-1, s.rowLength])]);
    const g = this.op("GatherElements", [rows, flat], [makeAttr("axis", 1)]);
    if (rqOut) this.folded.add(rqOut);
    this.op("Reshape", [g, this.op("Shape", [x])], [], rqOut ? rqOut.out : s.out);
    return true;
  }

  shiftGelu(s: ShiftGeluStep): void {
    if (this.shiftGeluByTable(s)) return;
    const x = this.centered(s.x, this.p.types.get(s.x) ?? "uint8", s.xZp);
    const mx = this.reduceMax(x);
    const e = this.shiftExpNonPositive(this.op("Sub", [x, mx]), s.x0, s.n);
    const em = this.shiftExpSaturated(this.op("Neg", [mx]), s.x0, s.n);
    const room = this.op("Sub", [this.i32(INT31_MAX), e]);
    const sum = this.op("Add", [e, this.op("Min", [em, room])]);
    const f = this.op("Div", [this.i32(INT31_MAX), sum]);
    const sigma = this.op("Div", [this.op("Mul", [e, f]), this.i32(2 ** (32 - s.bits))]);
    this.op("Mul", [x, sigma], [], s.out);
  }

  /**
   * The clamped requantization of z = ⌊P/2⌋ (I-LayerNorm's output, from the
   * int32 product P = y'·f) emitted from P, without z: split at 2^16,
   * zh = ⌊P/2^16⌋ = ⌊z/2^15⌋ and zl = ⌊(P mod 2^16)/2⌋ = z mod 2^15; then
   * H = zh·m + ⌊(zl·m + cl mod 2^15)/2^15⌋ + ⌊cl/2^15⌋ and
   * q = clamp(ch + ⌊H/2^(k−15)⌋), evaluated as a truncating Div of H plus
   * an addend that lifts the result's range to start at 0 (see `TruncPlan`
   * of kernels.ts); ch is moved toward the range where that cannot change the
   * clamped result. False (nothing emitted) when a term leaves int32.
   */
  layerNormRequant(P: string, r: RequantStep): boolean {
    if (r.bits === null || r.plan.consts.some((c) => c.k < 16 || c.k > 45)) return false;
    const qmin = -(2n ** BigInt(r.bits - 1)), qmax = 2n ** BigInt(r.bits - 1) - 1n;
    const base = Math.min(0, Number(qmin) + r.outZp);
    const hiOut = Number(qmax) + r.outZp - base;
    const fits = (v: bigint) => v >= -(2n ** 31n) && v < 2n ** 31n;
    const zhLo = -32768n, zhHi = 32767n, zlHi = 32767n;
    const m: number[] = [], cll: number[] = [], add: bigint[] = [], div: number[] = [];
    // per channel: range of H0 = zh·m + ⌊(zl·m + lo15)/2^15⌋, and the H0 beyond which q saturates
    const h0: [bigint, bigint][] = [], sat: [bigint, bigint][] = [];
    for (const c of r.plan.consts) {
      const M = BigInt(c.m), d = BigInt(c.k - 15);
      const lo15 = c.cl % 32768n, hi15 = c.cl / 32768n;
      const qMax = zlHi * M + lo15;
      const hLo = zhLo * M, hHi = zhHi * M + qMax / 32768n;
      if (!fits(qMax) || !fits(hLo) || !fits(hHi)) return false;
      const fLo = floorDivBig(hLo + hi15, 1n << d), fHi = floorDivBig(hHi + hi15, 1n << d);
      let ch = c.ch;
      if (ch > qmax - fLo) ch = qmax - fLo;
      if (ch < qmin - fHi) ch = qmin - fHi;
      const A = (ch + BigInt(r.outZp - base)) * (1n << d) + hi15;
      if (!fits(A)) return false;
      h0.push([hLo, hHi]);
      // q = qmin for H0 ≤ (qmin − ch)·2^d − hi15, q = qmax for H0 ≥ (qmax − ch)·2^d − hi15
      sat.push([(qmin - ch) * (1n << d) - hi15, (qmax - ch) * (1n << d) - hi15]);
      m.push(c.m), cll.push(Number(lo15)), add.push(A), div.push(2 ** (c.k - 15));
    }
    const all = (lo: bigint, hi: bigint) => add.every((A) => fits(lo + A) && fits(hi + A));
    const lo0 = h0.reduce((a, v) => (v[0] < a ? v[0] : a), h0[0][0]);
    const hi0 = h0.reduce((a, v) => (v[1] > a ? v[1] : a), h0[0][1]);
    // without a clip, or with H0 clipped to one range that keeps every channel's saturation
    // (or, failing that, to each channel's own saturation range)
    let clipH: [number, number] | [number[], number[]] | null = null;
    if (!all(lo0, hi0)) {
      const sLo = sat.reduce((a, v) => (v[0] < a ? v[0] : a), sat[0][0]);
      const sHi = sat.reduce((a, v) => (v[1] > a ? v[1] : a), sat[0][1]);
      const cLo = sLo > lo0 ? sLo : lo0, cHi = sHi < hi0 ? sHi : hi0;
      if (cLo <= cHi && all(cLo, cHi)) clipH = [Number(cLo), Number(cHi)];
      else if (
        sat.every(([l, h], i) => fits(l) && fits(h) && fits(l + add[i]) && fits(h + add[i]))
      ) {
        clipH = [sat.map((v) => Number(v[0])), sat.map((v) => Number(v[1]))];
      } else return false;
    }
    const ch = (vals: number[]) => this.chan(vals, r.axis, r.rank);
    // P mod 2^16 by two Casts (integer casts wrap; ONNX Runtime's int32 Mod is slow)
    const rem = this.cast(this.cast(P, "uint16"), "int32");
    const zh = this.op("Div", [this.op("Sub", [P, rem]), this.i32(65536)]);
    const zl = this.op("Div", [rem, this.i32(2)]);
    let q = this.op("Mul", [zl, ch(m)]);
    if (cll.some((v) => v !== 0)) q = this.op("Add", [q, ch(cll)]);
    let h = this.op("Add", [this.op("Mul", [zh, ch(m)]), this.op("Div", [q, this.i32(32768)])]);
    if (clipH && typeof clipH[0] === "number") h = this.clip(h, clipH[0], clipH[1] as number);
    else if (clipH) {
      h = this.op("Min", [this.op("Max", [h, ch(clipH[0] as number[])]), ch(clipH[1] as number[])]);
    }
    let z = this.op("Div", [this.op("Add", [h, ch(add.map(Number))]), ch(div)]);
    z = this.clip(z, 0, hiOut);
    if (base) z = this.op("Add", [z, this.i32(base)]);
    if (r.outType === "int32") this.op("Identity", [z], [], r.out);
    else {
      this.cast(z, r.outType, r.out);
      this.wide.set(r.out, z);
    }
    return true;
  }

  layerNorm(s: LayerNormStep, xType: IntType, yMax: number): void {
    const x = this.toInt32(s.x, xType);
    // x emitted as (codes − off): the row sum and mean move by off (added back per row)
    const xOff = this.offset.get(s.x) ?? 0;
    let sum = this.rowSum(x, s.channels);
    // fast forms: the per-row arithmetic's constants as per-row tensors (Expand to the shape of
    // the row sums): ONNX Runtime runs an op on a small tensor and a scalar several times slower
    // than on two tensors of one shape
    const rowShape = this.fast ? this.op("Shape", [sum]) : "";
    const consts = new Map<number, string>();
    const row = (c: number) => {
      if (!this.fast) return this.i32(c);
      let r = consts.get(c);
      if (!r) consts.set(c, r = this.op("Expand", [this.i32(c), rowShape]));
      return r;
    };
    const C = row(s.channels);
    if (xOff) sum = this.op("Add", [sum, row(xOff * s.channels)]);
    const rem = this.op("Mod", [sum, C]);
    const qf = this.op("Div", [this.op("Sub", [sum, rem]), C]);
    // round half to even: up = clip(2·rem − C + (qf mod 2), 0, 1)
    const t = this.op("Sub", [this.op("Mul", [rem, row(2)]), C]);
    const up = this.clip(this.op("Add", [t, this.op("Mod", [qf, row(2)])]), 0, 1);
    const mean = this.op("Add", [qf, up]);
    let yp: string;
    if (s.prescale > 0) {
      // floor(y / 2^a) = (y + off) / 2^a − off / 2^a with off ≥ |y| a multiple of 2^a
      const p = 2 ** s.prescale;
      const off = Math.ceil(yMax / p) * p;
      const yo = this.op("Sub", [x, this.op("Sub", [mean, row(off + xOff)])]);
      yp = this.op("Sub", [this.op("Div", [yo, this.i32(p)]), this.i32(off / p)]);
    } else yp = this.op("Sub", [x, xOff ? this.op("Sub", [mean, row(xOff)]) : mean]);
    if (s.sign) yp = this.op("Mul", [yp, this.i32(s.sign, [s.channels])]);
    // Σy'² in one pass (fast forms): ReduceSumSquare, exact on int32 below 2^31
    const v = !this.fast
      ? this.reduceSum(this.op("Mul", [yp, yp]))
      : this.p.opset >= 18
      ? this.op("ReduceSumSquare", [yp, this.i64([-1])], [makeAttr("keepdims", 1)])
      : this.op("ReduceSumSquare", [yp], [makeAttr("axes", [-1]), makeAttr("keepdims", 1)]);
    let k = row(s.k0);
    for (let i = 0; i < s.steps; i++) {
      k = this.op("Div", [this.op("Add", [k, this.op("Div", [v, k])]), row(2)]);
    }
    const f = this.op("Div", [row(INT31_MAX), k]);
    if (this.fast && s.steps >= 1) {
      // after a Newton step from above k ≥ ⌊√V⌋ ≥ |y'|, so P = y'·f = y'·⌊(2^31−1)/k⌋ is an int32
      const P = this.op("Mul", [yp, f]);
      // readers other than Shape/Size (which only need the dims: they get P, of the same shape)
      const readers = this.p.steps.filter((t) => stepInputs(t).includes(s.out));
      const shapeOnly = (t: Step) =>
        t.kind === "node" && (t.node.opType === "Shape" || t.node.opType === "Size");
      const valueReaders = readers.filter((t) => !shapeOnly(t));
      const rq = valueReaders[0];
      const kept = (this.uses.get(s.out) ?? 0) - readers.length;
      if (
        valueReaders.length === 1 && kept === 0 && rq.kind === "requant" &&
        this.layerNormRequant(P, rq)
      ) {
        this.folded.add(rq);
        if (readers.length > 1) this.op("Identity", [P], [], s.out);
        return;
      }
      // else ⌊P/2⌋ as below (P is pruned): ONNX Runtime's int32 Mod, for (P − (P mod 2))/2,
      // costs as much as twenty other passes
    }
    // floor(y'·f/2) = y'·floor(f/2) + (f mod 2)·floor(y'/2), |y'| < 2^16
    const fh = this.op("Div", [f, this.i32(2)]);
    const fl = this.op("Sub", [f, this.op("Mul", [fh, this.i32(2)])]);
    const half = this.op("Div", [this.op("Add", [yp, this.i32(65536)]), this.i32(2)]);
    const lowTerm = this.op("Mul", [half, fl]);
    const sum2 = this.op("Add", [this.op("Mul", [yp, fh]), lowTerm]);
    this.op("Sub", [sum2, this.op("Mul", [fl, this.i32(32768)])], [], s.out);
  }

  /**
   * A patch embedding (kernel = stride, no padding, dilation 1, one group, on
   * the quantized image of known size) as MatMulInteger on the patches:
   * Reshape/Transpose of the uint8 codes to [N, P, C·kh·kw], the weight as
   * [C·kh·kw, O], the int32 product transposed back to [N, O, H', W'].
   * ONNX Runtime's ConvInteger is far slower than its u8×s8 matmul. False
   * when the conv is not of that form.
   */
  patchConv(s: ConvStep): boolean {
    if (!this.fast) return false;
    const src = this.producer.get(s.x);
    const w = this.p.initializers.get(s.w)!;
    const [O, C, kh, kw] = w.dims;
    const dims = this.p.input.dims;
    if (src?.kind !== "quantize" || dims.length !== 4) return false;
    const [, c, H, W] = dims;
    if (
      c !== C || typeof H !== "number" || typeof W !== "number" || H % kh || W % kw ||
      s.strides[0] !== kh || s.strides[1] !== kw || s.pads.some((v) => v !== 0) ||
      s.dilations.some((v) => v !== 1) || s.group !== 1 || w.dataType !== DataType.INT8
    ) return false;
    const hp = H / kh, wp = W / kw, K = C * kh * kw;
    const wv = w.numbers();
    const wt = new Array<number>(K * O);
    for (let o = 0; o < O; o++) for (let k = 0; k < K; k++) wt[k * O + o] = wv[o * K + k];
    const wName = this.fresh("patch_w");
    this.g.setInitializer(int8Tensor(wName, [K, O], wt));
    const shape = (v: number[]) =>
      this.cachedConstant(`shape|${v}`, "shape", (n) => Tensor.fromInt64(n, [v.length], v));
    const x6 = this.op("Reshape", [s.x, shape([0, C, hp, kh, wp, kw])]);
    const xt = this.op("Transpose", [x6], [makeAttr("perm", [0, 2, 4, 1, 3, 5])]);
    const xp = this.op("Reshape", [xt, shape([0, hp * wp, K])]);
    const zps = s.xZp ? [this.zp(s.xZp, this.p.types.get(s.x) ?? "uint8")] : [];
    const acc = this.op("MatMulInteger", [xp, wName, ...zps]);
    const at = this.op("Transpose", [acc], [makeAttr("perm", [0, 2, 1])]);
    this.op("Reshape", [at, shape([0, O, hp, wp])], [], s.out);
    return true;
  }

  step(s: Step): void {
    if (this.folded.has(s)) return;
    const types = this.p.types;
    switch (s.kind) {
      case "quantize": {
        const sc = this.fresh("scale");
        this.g.setInitializer(Tensor.fromFloat32(sc, [], [s.scale]));
        const zp = this.u8(s.zp);
        if (s.bits >= 8) this.op("QuantizeLinear", [s.x, sc, zp], [], s.out);
        else {
          const q = this.op("QuantizeLinear", [s.x, sc, zp]);
          const lo = this.u8(s.zp - 2 ** (s.bits - 1)), hi = this.u8(s.zp + 2 ** (s.bits - 1) - 1);
          this.op("Clip", [q, lo, hi], [], s.out);
        }
        break;
      }
      case "matmul":
        if (s.mode === "integer") {
          const [b, bZp] = this.signedB(s.b, s.bType, s.bZp);
          const zps = bZp ? [this.zp(s.aZp, s.aType), bZp] : s.aZp ? [this.zp(s.aZp, s.aType)] : [];
          this.op("MatMulInteger", [s.a, b, ...zps], [], s.out);
        } else if (s.mode === "split16") {
          // a = 256·hi + lo, hi in [0, 127], lo in [0, 255]: two uint8 MatMulIntegers
          // the low byte is the Cast to uint8 (integer casts wrap modulo 2^8)
          const a = this.toInt32(s.a, s.aType);
          const hi = this.op("Div", [a, this.i32(256)]);
          const [b, bZp] = this.signedB(s.b, s.bType, s.bZp);
          const zps = bZp ? [this.u8(0), bZp] : [];
          if (this.fast) {
            // one MatMulInteger on both bytes stacked along the rows (b is packed once), split after
            const cat = this.op("Concat", [this.cast(hi, "uint8"), this.cast(a, "uint8")], [
              makeAttr("axis", -2),
            ]);
            const mm = this.op("MatMulInteger", [cat, b, ...zps]);
            const mHi = this.fresh("mhi"), mLo = this.fresh("mlo");
            const halves = this.p.opset >= 18 ? [makeAttr("num_outputs", 2)] : [];
            this.emitNode(
              "Split",
              [mm],
              [mHi, mLo],
              [makeAttr("axis", -2), ...halves],
              this.fresh("Split"),
            );
            this.op("Add", [this.op("Mul", [mHi, this.i32(256)]), mLo], [], s.out);
            break;
          }
          const mHi = this.op("MatMulInteger", [this.cast(hi, "uint8"), b, ...zps]);
          const mLo = this.op("MatMulInteger", [this.cast(a, "uint8"), b, ...zps]);
          this.op("Add", [this.op("Mul", [mHi, this.i32(256)]), mLo], [], s.out);
        } else {
          const a = this.centered(s.a, s.aType, s.aZp), b = this.centered(s.b, s.bType, s.bZp);
          this.op("MatMul", [a, b], [], s.out);
        }
        break;
      case "conv": {
        if (this.patchConv(s)) break;
        const w = this.p.initializers.get(s.w)!;
        const zps = s.xZp ? [this.zp(s.xZp, this.p.types.get(s.x) ?? "uint8")] : [];
        this.op("ConvInteger", [s.x, s.w, ...zps], [
          makeAttr("kernel_shape", w.dims.slice(2)),
          makeAttr("strides", s.strides),
          makeAttr("pads", s.pads),
          makeAttr("dilations", s.dilations),
          makeAttr("group", s.group),
        ], s.out);
        break;
      }
      case "requant":
        this.requant(s);
        break;
      case "add": {
        if (s.bits >= 32) {
          this.op("Add", [s.a, s.b], [], s.out);
          break;
        }
        // operands emitted as (codes − offset): the clamp bounds move by their sum
        const off = (this.offset.get(s.a) ?? 0) + (this.offset.get(s.b) ?? 0);
        const sum = this.op("Add", [s.a, s.b]);
        let c = this.clip(sum, -(2 ** (s.bits - 1)) - off, 2 ** (s.bits - 1) - 1 - off);
        if (off && this.offsetAware(s.out, off)) this.offset.set(s.out, off);
        else if (off) c = this.op("Add", [c, this.i32(off)]);
        if (s.outType === "int32") this.op("Identity", [c], [], s.out);
        else if (this.offset.has(s.out)) this.wide.set(s.out, c);
        else {
          this.cast(c, s.outType, s.out);
          this.wide.set(s.out, c);
        }
        break;
      }
      case "reducesum":
        this.op("ReduceSum", [this.centered(s.x, s.xType, s.xZp), this.i64(s.axes)], [
          makeAttr("keepdims", s.keepdims ? 1 : 0),
        ], s.out);
        break;
      case "shiftmax":
        this.shiftmax(s);
        break;
      case "shiftgelu":
        this.shiftGelu(s);
        break;
      case "layernorm":
        this.layerNorm(s, types.get(s.x) ?? "int32", s.yMax);
        break;
      case "bias": {
        const add = s.add.length === 1 ? this.i32(s.add[0]) : this.i32(s.add, [s.add.length]);
        this.op("Add", [this.toInt32(s.x, s.xType), add], [], s.out);
        break;
      }
      case "node":
        this.g.nodes.push({
          ...s.node,
          inputs: [...s.node.inputs],
          outputs: [...s.node.outputs],
          attributes: [...s.node.attributes],
        });
        break;
    }
  }
}

/**
 * The integer ONNX graph of a program: float image in (QuantizeLinear), int32
 * codes out (`ProgramOutput.value`), or, with `dequantize`, float outputs
 * named as in the original graph.
 */
export function emitIntegerGraph(p: IntProgram, opts: EmitOptions = {}): Graph {
  const e = new Emitter(p, opts.extraOutputs ?? [], opts.fast ?? true);
  const g = e.g;
  g.addInput(
    p.input.name,
    p.input.dims,
    p.input.type === "int32" ? DataType.INT32 : DataType.FLOAT,
  );
  for (const t of p.initializers.values()) g.setInitializer(t);
  for (const s of p.steps) e.step(s);
  if (opts.dequantize) {
    for (const o of p.outputs) {
      const f = e.cast(o.value, "float");
      const sc = e.fresh("dq_scale");
      g.setInitializer(
        o.scale.length === 1
          ? Tensor.fromFloat32(sc, [], [o.scale[0]])
          : Tensor.fromFloat32(sc, [o.scale.length], o.scale),
      );
      e.op("Mul", [f, sc], [], o.name);
      g.addOutput(o.name, DataType.FLOAT);
    }
  } else {
    for (const o of p.outputs) g.addOutput(o.value, onnxType(p.types.get(o.value) ?? "int32"));
  }
  for (const v of opts.extraOutputs ?? []) {
    g.addOutput(v, onnxType(p.types.get(v) ?? "int32"));
  }
  g.prune();
  return g;
}

/**
 * The float-in/float-out graph: the integer graph plus the output dequantizer;
 * with `batchChunk`, run over the batch that many images at a time (an ONNX
 * Loop, core/onnx/chunk.ts: the same outputs bit for bit, each chunk's int32
 * passes in cache; `batchChunkFor` picks the size from the activation dims;
 * programs below opset 11, which has no tensor sequences, are not chunked).
 */
export function emitFloatWrapper(p: IntProgram, opts: { batchChunk?: number } = {}): Graph {
  const g = emitIntegerGraph(p, { dequantize: true });
  return opts.batchChunk && p.opset >= 11 ? chunkBatch(g, opts.batchChunk) : g;
}
