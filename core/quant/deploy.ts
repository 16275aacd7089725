/**
 * Deployable graphs: the same quantization plan as the fake-quant graph, written
 * as standard ONNX QDQ (QuantizeLinear / DequantizeLinear) that ONNX Runtime
 * fuses into integer kernels (MatMulIntegerToFloat, QLinearMatMul, QGemm,
 * QLinearConv, ...).
 *
 * - A uniform weight quantizer becomes an int8 (signed) or uint8 (unsigned)
 *   initializer of its integer codes ({@link quantCodes}) and a
 *   DequantizeLinear with the step(s) and zero point(s), per tensor or along
 *   the quantizer's axis. Codes of at most 4 bits are packed two per byte as
 *   `int4`/`uint4` when the deploy graph is raised to opset 21
 *   (`applyPlan` does so when a weight has at most 4 bits and the graph can be
 *   converted: `core/onnx/opset.ts`); otherwise they live in 8-bit containers.
 * - A uniform activation quantizer becomes QuantizeLinear -> DequantizeLinear;
 *   when its integer range is narrower than the container (k < 8 bits, or a
 *   zero point that shifts it), the input is first clipped to the range's float
 *   bounds `(qmin - z)·Δ .. (qmax - z)·Δ`, which gives the same codes as
 *   clipping after rounding.
 * - A per-tensor unsigned quantizer with a fractional zero point (RepQ-ViT's z̄)
 *   becomes two integer parts ({@link fractionalZpParts}), exact.
 * - Per-head attention operands become MatMulInteger with the steps applied to the int32
 *   sums ({@link integerMatMuls}, {@link stepsAsDequantize}); q, k and v split off one
 *   linear output are quantized once before the split ({@link hoistHeadCodes}).
 * - Twin quantizers become one integer product per part ({@link DeployPart}); a GELU
 *   negative part needs no clip ({@link negatedPart}).
 * - Any other quantizer (twin uniform, log2 / log-√2, per-patch outlier,
 *   two-scaled, ...) keeps its float fake-quant emission: the deploy graph then
 *   computes that site in float, with the weight stored float
 *   ({@link floatWeightsBesideFloatInputs}: no MatMulNBits). {@link integerCoverage}
 *   says which sites ONNX Runtime runs as integer kernels ({@link integerSite}) and
 *   their share of the multiply-accumulates.
 *
 * @module
 */
import { attr, DataType, type Graph, makeAttr, type Node, Tensor } from "../onnx/graph.ts";
import type { Site } from "../onnx/sites.ts";
import { captureGraph, type ImageSource, type Runtime } from "../runtime/runtime.ts";
import { qRange, quantCodes, stepDims, type UniformQuantizer } from "./uniform.ts";

/** What a deploy graph built by `applyPlan(..., { deploy: true })` computes and stores. */
export const QDQ_KIND =
  "QDQ: uniform quantizers as int8/uint8 codes with QuantizeLinear/DequantizeLinear (ONNX Runtime fuses them into integer kernels); other quantizers as float fake-quant";

/**
 * Can `q` be written as QuantizeLinear/DequantizeLinear with an 8-bit container? It needs
 * 2-8 bits and integer zero points that fit the container (uint8 for an unsigned
 * quantizer, int8 for a signed one): ONNX stores the zero point in the codes' type, so an
 * asymmetric quantizer whose calibrated range excludes 0 (`z < 0` or `z > 255`) has no
 * QDQ form and stays float fake-quant. (A per-tensor unsigned quantizer with a fractional
 * zero point has an exact two-part form instead: {@link fractionalZpParts}.)
 */
export function qdqable(q: UniformQuantizer): boolean {
  const c = container(q);
  return q.bits >= 2 && q.bits <= 8 &&
    q.zeroPoint.every((z) => Number.isInteger(z) && z >= c.lo && z <= c.hi);
}

function container(q: UniformQuantizer): { type: number; lo: number; hi: number } {
  return q.signed
    ? { type: DataType.INT8, lo: -128, hi: 127 }
    : { type: DataType.UINT8, lo: 0, hi: 255 };
}

function codesTensor(name: string, dims: number[], codes: ArrayLike<number>, type: number): Tensor {
  if (type === DataType.INT4 || type === DataType.UINT4) {
    // two codes per byte, the first in the low nibble (ONNX's packing)
    const bytes = new Uint8Array(Math.ceil(codes.length / 2));
    for (let i = 0; i < codes.length; i++) bytes[i >> 1] |= (codes[i] & 0xf) << ((i & 1) * 4);
    return new Tensor(name, type, dims, bytes);
  }
  const bytes = type === DataType.INT8
    ? new Uint8Array(Int8Array.from(codes).buffer)
    : Uint8Array.from(codes);
  return new Tensor(name, type, dims, bytes);
}

/** The 4-bit container of a quantizer with at most 4 bits, when the graph allows it (opset >= 21). */
function container4(q: UniformQuantizer, opset: number): number | undefined {
  if (q.bits > 4 || opset < 21) return undefined;
  // the zero points are stored in the codes' type too
  const [lo, hi] = q.signed ? [-8, 7] : [0, 15];
  if (!q.zeroPoint.every((z) => z >= lo && z <= hi)) return undefined;
  return q.signed ? DataType.INT4 : DataType.UINT4;
}

function zeroPoints(g: Graph, prefix: string, q: UniformQuantizer, type: number): string {
  const dims = q.zeroPoint.length > 1 ? [q.zeroPoint.length] : [];
  return g.setInitializer(
    codesTensor(g.uniqueName(`${prefix}_zp`), dims, Array.from(q.zeroPoint), type),
  );
}

function axisAttr(q: UniformQuantizer) {
  return q.axis !== undefined && q.scale.length > 1 ? [makeAttr("axis", q.axis)] : [];
}

/**
 * Replace the float weight `x` (shape `dims`) by int8/uint8 codes and a
 * DequantizeLinear; returns the dequantized value's name.
 */
export function emitQdqWeight(
  g: Graph,
  x: Float32Array,
  dims: number[],
  q: UniformQuantizer,
  prefix: string,
): string {
  // 2-4-bit codes packed two per byte where the graph's opset has int4 (see `opset.ts`)
  const type = container4(q, g.opset) ?? container(q).type;
  const codes = g.setInitializer(
    codesTensor(g.uniqueName(`${prefix}_codes`), dims, quantCodes(x, dims, q), type),
  );
  const scaleDims = q.scale.length > 1 ? [q.scale.length] : [];
  const s = g.constFloat(`${prefix}_scale`, q.scale, scaleDims);
  return g.addNode("DequantizeLinear", [codes, s, zeroPoints(g, prefix, q, type)], {
    attributes: axisAttr(q),
  });
}

/**
 * Emit QuantizeLinear -> DequantizeLinear for activation `input` (rank `rank`
 * for per-channel quantizers); returns the dequantized value's name. The values
 * equal {@link emitFakeQuant}'s (tested on the shipped models).
 */
export function emitQdqActivation(
  g: Graph,
  input: string,
  q: UniformQuantizer,
  prefix: string,
  rank?: number,
): string {
  const c = container(q);
  const { qmin, qmax } = qRange(q.bits, q.signed);
  const perChannel = q.axis !== undefined && q.scale.length > 1;
  const scaleDims = perChannel ? [q.scale.length] : [];
  const s = g.constFloat(`${prefix}_scale`, q.scale, scaleDims);
  const zp = zeroPoints(g, prefix, q, c.type);
  let x = input;
  // codes are clamped to [qmin, qmax] after adding z, QuantizeLinear saturates to the container
  if (qmin !== c.lo || qmax !== c.hi) {
    const lo = q.scale.map((s, i) => Math.fround((qmin - q.zeroPoint[i]) * s));
    const hi = q.scale.map((s, i) => Math.fround((qmax - q.zeroPoint[i]) * s));
    if (!perChannel) {
      x = g.addNode("Clip", [
        x,
        g.constFloat(`${prefix}_lo`, lo[0]),
        g.constFloat(`${prefix}_hi`, hi[0]),
      ]);
    } else {
      const bd = stepDims(q, rank, `emitQdqActivation ${prefix}`);
      x = g.addNode("Max", [x, g.constFloat(`${prefix}_lo`, lo, bd)]);
      x = g.addNode("Min", [x, g.constFloat(`${prefix}_hi`, hi, bd)]);
    }
  }
  const attrs = axisAttr(q);
  const codes = g.addNode("QuantizeLinear", [x, s, zp], { attributes: attrs });
  return g.addNode("DequantizeLinear", [codes, s, zp], { attributes: attrs });
}

/**
 * One uniform part of a quantizer that is a sum of uniform quantizers on
 * clipped inputs (PTQ4ViT's twin quantizers): the quantized value is
 * `Σ fakeQuant(clip(x, lo, hi), q)` over the parts. A deploy graph quantizes
 * each part as integer codes and, when the value feeds a MatMul or Gemm,
 * computes one integer product per part and adds the products.
 */
export interface DeployPart {
  q: UniformQuantizer;
  /** Lower clip bound applied to `x` before the part's quantizer (none: the code range's). */
  lo?: number;
  /** Upper clip bound. */
  hi?: number;
  /**
   * The smallest value the input can take (GELU's minimum for the post-GELU twin
   * quantizer's negative part), when known: lets a non-positive part (`hi: 0`) drop its
   * clip ({@link negatedPart}).
   */
  min?: number;
}

/**
 * A non-positive part (`hi: 0`, no `lo`) of a symmetric per-tensor quantizer whose input
 * never goes below `min`, where `min/Δ > qmin - 1/2` (its codes never saturate low and fit
 * uint8 once negated): quantized as uint8 codes `u = clamp(round(x/(-Δ)), 0, 255)` with
 * step `-Δ` and no clip. For `x ≤ 0`, `u = -round(x/Δ)` (round half to even is odd-symmetric)
 * and the dequantized value `u·(-Δ)` equals the part's `round(x/Δ)·Δ`; for `x > 0` both are
 * 0 (uint8 saturation does the clip to 0). Returns the uint8 step, or undefined.
 */
export function negatedPart(p: DeployPart): number | undefined {
  const q = p.q;
  if (p.hi !== 0 || p.lo !== undefined || p.min === undefined || !q.signed) return undefined;
  if (q.scale.length !== 1 || q.zeroPoint[0] !== 0 || q.bits < 2 || q.bits > 8) return undefined;
  const { qmin } = qRange(q.bits, true);
  // a quarter code of margin for float rounding of x/Δ near the minimum
  return Math.fround(p.min / q.scale[0]) >= qmin - 0.25 ? -q.scale[0] : undefined;
}

/**
 * Emit one part: clip to [lo, hi] (when given), then QuantizeLinear/DequantizeLinear. A
 * per-tensor quantizer whose code range is narrower than its container gets one Clip to
 * the intersection of [lo, hi] and the code range's float bounds (as
 * {@link emitQdqActivation} clips), not two; a non-positive part with a known input
 * minimum gets none ({@link negatedPart}).
 */
export function emitQdqPart(g: Graph, input: string, p: DeployPart, prefix: string): string {
  const negStep = negatedPart(p);
  if (negStep !== undefined) {
    const s = g.constFloat(`${prefix}_negscale`, negStep);
    const zp = g.setInitializer(
      new Tensor(g.uniqueName(`${prefix}_zp`), DataType.UINT8, [], Uint8Array.of(0)),
    );
    return g.addNode("DequantizeLinear", [g.addNode("QuantizeLinear", [input, s, zp]), s, zp]);
  }
  const q = p.q, c = container(q);
  const { qmin, qmax } = qRange(q.bits, q.signed);
  if (q.scale.length === 1 && (p.lo !== undefined || p.hi !== undefined)) {
    let lo = p.lo ?? -3.4e38, hi = p.hi ?? 3.4e38;
    if (qmin !== c.lo || qmax !== c.hi) {
      lo = Math.max(lo, Math.fround((qmin - q.zeroPoint[0]) * q.scale[0]));
      hi = Math.min(hi, Math.fround((qmax - q.zeroPoint[0]) * q.scale[0]));
    }
    // disjoint ranges: two clips (Clip's result for lo > hi is not the composition)
    if (lo <= hi) {
      const x = g.addNode("Clip", [
        input,
        g.constFloat(`${prefix}_plo`, lo),
        g.constFloat(`${prefix}_phi`, hi),
      ]);
      const s = g.constFloat(`${prefix}_scale`, q.scale[0]);
      const zp = zeroPoints(g, prefix, q, c.type);
      return g.addNode("DequantizeLinear", [g.addNode("QuantizeLinear", [x, s, zp]), s, zp]);
    }
  }
  let x = input;
  if (p.lo !== undefined || p.hi !== undefined) {
    const lo = g.constFloat(`${prefix}_plo`, p.lo ?? -3.4e38);
    const hi = g.constFloat(`${prefix}_phi`, p.hi ?? 3.4e38);
    x = g.addNode("Clip", [x, lo, hi]);
  }
  return emitQdqActivation(g, x, p.q, prefix);
}

/**
 * The integer zero point below `q`'s fractional one, when {@link fractionalZpParts}
 * applies: a per-tensor unsigned quantizer of 2-8 bits whose zero point `z̄` is not an
 * integer and whose `⌊z̄⌋ + 1` fits uint8 (`undefined` otherwise).
 */
export function fractionalZpFloor(q: UniformQuantizer): number | undefined {
  if (q.signed || q.bits < 2 || q.bits > 8 || q.scale.length !== 1) return undefined;
  const z = q.zeroPoint[0];
  if (Number.isInteger(z)) return undefined;
  const n = Math.floor(z);
  return n >= 0 && n + 1 <= 255 ? n : undefined;
}

/**
 * A uniform quantizer with a fractional zero point `z̄ = n + f` (`n = ⌊z̄⌋`; RepQ-ViT's
 * reparameterized post-LayerNorm quantizer keeps the mean of integer zero points) as two
 * integer parts whose sum equals its fake-quant value up to float rounding.
 *
 * Its value `(clamp(round(x/Δ) + z̄, 0, qmax) - z̄)·Δ` is `r·Δ` for `r = round(x/Δ)` in
 * `[-n, qmax-n-1]`, and `(-n-f)·Δ` or `(qmax-n-f)·Δ` where it saturates: `qmax + 2` levels
 * with two fractional gaps, which no 8-bit code with one step holds. So:
 * - part 1: the integer-zero-point quantizer `(clamp(r + n, 0, qmax) - n)·Δ` (codes `c1`,
 *   QuantizeLinear/DequantizeLinear as {@link emitQdqActivation});
 * - part 2: `-f·Δ` where the quantizer saturates, 0 elsewhere: uint8 codes `keep ∈ {0, 1}`
 *   (1 inside the range) with a DequantizeLinear of step `f·Δ` and zero point 1. The low
 *   end is `c0 = 0` for the codes `c0` of the same step with zero point `n + 1`
 *   (`r ≤ -n-1`), the high end `c1 = qmax` (`r ≥ qmax-n`): `keep = clip(c0, 0, 1) -
 *   clip(c1 - (qmax-1), 0, 1)`, computed in float.
 *
 * Both parts are codes times a step, so a MatMul/Gemm reading their sum is split into two
 * integer products ({@link distributeParts}). Returns the sum's name and the parts.
 * Throws when {@link fractionalZpFloor} does not apply.
 */
export function fractionalZpParts(
  g: Graph,
  input: string,
  q: UniformQuantizer,
  prefix: string,
): { sum: string; parts: string[] } {
  const n = fractionalZpFloor(q);
  if (n === undefined) throw new Error(`fractionalZpParts ${prefix}: no two-part form`);
  const s = q.scale[0], f = q.zeroPoint[0] - n;
  const { qmax } = qRange(q.bits, false);
  const p1 = emitQdqActivation(g, input, { ...q, zeroPoint: Float32Array.of(n) }, prefix);
  const c1 = g.nodes.find((x) => x.outputs[0] === p1)!.inputs[0];
  const c0 = g.addNode("QuantizeLinear", [
    input,
    g.constFloat(`${prefix}_lo_scale`, s),
    g.setInitializer(
      new Tensor(g.uniqueName(`${prefix}_lo_zp`), DataType.UINT8, [], Uint8Array.of(n + 1)),
    ),
  ]);
  const asFloat = (v: string) =>
    g.addNode("Cast", [v], { attributes: [makeAttr("to", DataType.FLOAT)] });
  const zero = g.constFloat(`${prefix}_zero`, 0), one = g.constFloat(`${prefix}_one`, 1);
  const notLow = g.addNode("Clip", [asFloat(c0), zero, one]);
  const high = g.addNode("Clip", [
    g.addNode("Sub", [asFloat(c1), g.constFloat(`${prefix}_top`, qmax - 1)]),
    zero,
    one,
  ]);
  const keep = g.addNode("Cast", [g.addNode("Sub", [notLow, high])], {
    attributes: [makeAttr("to", DataType.UINT8)],
  });
  const p2 = g.addNode("DequantizeLinear", [
    keep,
    g.constFloat(`${prefix}_frac_scale`, Math.fround(f * s)),
    g.setInitializer(
      new Tensor(g.uniqueName(`${prefix}_frac_zp`), DataType.UINT8, [], Uint8Array.of(1)),
    ),
  ]);
  return { sum: g.addNode("Add", [p1, p2]), parts: [p1, p2] };
}

/**
 * Distribute MatMul/Gemm nodes over sums of parts: every node whose input slot
 * reads a value listed in `sums` (the Add of its parts' dequantized values) is
 * copied once per part, each copy reading one part (so each product runs as an
 * integer kernel), and the copies' outputs are added under the node's output
 * name. A Gemm's bias goes to the first copy only. Other consumers keep the
 * summed value. Returns the number of nodes distributed.
 */
export function distributeParts(g: Graph, sums: Map<string, string[]>): number {
  let count = 0;
  const nodes = [...g.nodes];
  for (const n of nodes) {
    if (n.opType !== "MatMul" && n.opType !== "Gemm") continue;
    const slot = n.inputs.findIndex((v, i) => i < 2 && sums.has(v));
    if (slot < 0) continue;
    const parts = sums.get(n.inputs[slot])!;
    const out = n.outputs[0];
    const partial: string[] = [];
    parts.forEach((p, k) => {
      const inputs = [...n.inputs];
      inputs[slot] = p;
      if (k > 0 && n.opType === "Gemm") inputs.length = 2;
      if (k === 0) {
        n.inputs = inputs;
        n.outputs = [g.uniqueName(`${out}_part`)];
        partial.push(n.outputs[0]);
      } else {
        partial.push(
          g.addNode(n.opType, inputs, { attributes: n.attributes, domain: n.domain }),
        );
      }
    });
    let acc = partial[0];
    for (let k = 1; k < partial.length; k++) {
      acc = g.addNode("Add", [acc, partial[k]], k === partial.length - 1 ? { outputs: [out] } : {});
    }
    count++;
  }
  return count;
}

/**
 * Rewrite `DequantizeLinear(a) · DequantizeLinear(b)` MatMuls whose steps are
 * per channel along axes ONNX Runtime's fused integer matmuls do not take (the
 * per-head steps of attention-matmul operands) into
 * `MatMulInteger(codes_a, codes_b)` (int32 accumulation) followed by one float
 * multiplication with the outer product of the two operands' steps. Exact up
 * to float rounding: `Σ (qa·sa)(qb·sb) = sa·sb·Σ qa·qb` when `sa` varies only
 * along batch or row axes of `a` and `sb` along batch or column axes of `b`.
 * Zero points must be 0 (symmetric codes). `ranks` gives the rank of each
 * per-channel dequantized activation (by value name). Returns the names of the
 * step-multiplication nodes (one per rewritten MatMul, named like it).
 */
export function integerMatMuls(g: Graph, ranks: Map<string, number>): string[] {
  const producer = g.producers();
  const rewritten: string[] = [];
  for (const n of [...g.nodes]) {
    if (n.opType !== "MatMul" || n.domain) continue;
    const [da, db] = [producer.get(n.inputs[0]), producer.get(n.inputs[1])];
    if (da?.opType !== "DequantizeLinear" || db?.opType !== "DequantizeLinear") continue;
    const axA = dqAxis(da), axB = dqAxis(db);
    if (axA === undefined && axB === undefined) continue; // ORT fuses these itself
    const pa = dqParams(g, da, ranks.get(n.inputs[0])),
      pb = dqParams(g, db, ranks.get(n.inputs[1]));
    if (!pa || !pb) continue;
    // a per-tensor operand's rank does not matter (one step)
    if (pa.scale.length === 1) pa.rank ??= pb.rank;
    if (pb.scale.length === 1) pb.rank ??= pa.rank;
    if (pa.rank === undefined || pb.rank === undefined) continue;
    const rank = Math.max(pa.rank, pb.rank);
    const at = (p: typeof pa, ax: number | undefined) =>
      ax === undefined || p.scale.length === 1 ? undefined : ax + (rank - p.rank!);
    const ia = at(pa, axA), ib = at(pb, axB);
    // a's steps may vary along batch axes or rows (rank-2), b's along batch axes or columns (rank-1)
    if (ia !== undefined && (ia === rank - 1)) continue;
    if (ib !== undefined && (ib === rank - 2)) continue;
    const dims = new Array<number>(rank).fill(1);
    if (ia !== undefined) dims[ia] = pa.scale.length;
    if (ib !== undefined) dims[ib] = pb.scale.length;
    const total = dims.reduce((x, y) => x * y, 1);
    const prod = new Float32Array(total);
    const strides = dims.map((_, i) => dims.slice(i + 1).reduce((x, y) => x * y, 1));
    for (let k = 0; k < total; k++) {
      const ca = ia === undefined ? 0 : Math.floor(k / strides[ia]) % dims[ia];
      const cb = ib === undefined ? 0 : Math.floor(k / strides[ib]) % dims[ib];
      prod[k] = Math.fround(pa.scale[ca] * pb.scale[cb]);
    }
    const a = unsignedCodes(g, producer, da);
    const acc = g.addNode("MatMulInteger", [a.codes, db.inputs[0], ...(a.zp ? [a.zp] : [])]);
    const f = g.addNode("Cast", [acc], { attributes: [makeAttr("to", DataType.FLOAT)] });
    const s = g.constFloat(`${n.name}_steps`, prod, dims);
    const out = n.outputs[0];
    g.nodes.splice(g.nodes.indexOf(n), 1);
    g.addNode("Mul", [f, s], { outputs: [out], name: n.name });
    rewritten.push(n.name);
  }
  return rewritten;
}

/**
 * Quantize per-head attention operands where the heads are split off a linear output
 * (Reshape -> Transpose -> Gather, as after a fused qkv linear), so integer codes move
 * through the layout ops. Per-head operands rewritten by {@link integerMatMuls} read
 * `QuantizeLinear(operand, per-head steps)`. Where every such operand traces back through
 * Transposes and Gathers (constant scalar indices) to one Reshape output `r`, the operands
 * together cover every index their Gathers take, and they agree on which axes of `r` the
 * steps vary along, `r` is divided once by a step tensor that broadcasts over it (operand
 * `k`'s head `h` step where the Gathers pick `k` and the head axis is `h`) and quantized
 * with step 1 as uint8 with zero point 128; the layout ops are replayed on the codes, and
 * each MatMulInteger reads those codes with zero point 128 in place of its operand's own
 * QuantizeLinear.
 *
 * Same codes: every operand element is `r`'s element divided by the same step (the Div the
 * fake-quant graph computes too), and `clamp(round(v) + 128, 0, 255) = clamp(round(v), -128,
 * 127) + 128` (8-bit full-range quantizers only: a narrower range's clip sits between the
 * operand and its QuantizeLinear and stops the trace). A step tensor that does not fit
 * `r`'s shape fails to broadcast (an error, never other codes). No Reshape shape is read,
 * so computed shapes (torch exports) work too. A second operand is then converted to int8
 * codes (`Cast(Sub(u, 128), int8)`, both on bytes; opset 14 and later): ONNX Runtime's
 * uint8 x uint8 MatMulInteger takes a 16-bit path, 1.5x (Q·Kᵀ) to 3x (attn·V) slower than
 * uint8 x int8 at ViT-S attention shapes, batch 32, on this project's AVX-512 VNNI machine
 * (ONNX Runtime 1.30, 2 threads). Without this, ONNX Runtime's QDQ
 * propagation re-quantizes each float operand before its head transpose (Q -> DQ ->
 * Transpose -> Q), and per-axis QuantizeLinear runs on one thread. Returns the number of
 * operands rewritten.
 */
export function hoistHeadCodes(g: Graph): number {
  const producer = g.producers();
  interface Operand {
    mm: Node;
    slot: number;
    value: string;
    rank: number;
    head: number;
    fixed: Map<number, number>;
    steps: Float32Array;
  }
  const byR = new Map<string, Operand[]>();
  const u8Scalar = (v: string | undefined) => {
    const t = v ? g.initializers.get(v) : undefined;
    return t !== undefined && t.dataType === DataType.UINT8 && t.size === 1;
  };
  for (const n of g.nodes) {
    if (n.opType !== "MatMulInteger" || n.domain) continue;
    for (const slot of [0, 1]) {
      // the second operand becomes uint8 only beside a uint8 first operand
      if (slot === 1 && !u8Scalar(n.inputs[2])) continue;
      const q = producer.get(n.inputs[slot]);
      if (q?.opType !== "QuantizeLinear" || q.domain) continue;
      const s = g.initializers.get(q.inputs[1]);
      const z = q.inputs[2] ? g.initializers.get(q.inputs[2]) : undefined;
      if (!s || s.dataType !== DataType.FLOAT || s.size < 2 || !z) continue;
      const zps = z.dataType === DataType.INT8 ? 0 : z.dataType === DataType.UINT8 ? 128 : -1;
      if (!z.raw.every((b) => b === zps)) continue;
      const mz = n.inputs[2 + slot] ? g.initializers.get(n.inputs[2 + slot]) : undefined;
      if (!(zps === 0 ? !mz || mz.raw.every((b) => b === 0) : u8Scalar(n.inputs[2 + slot]))) {
        continue;
      }
      const t = traceHeads(g, producer, q.inputs[0]);
      if (!t) continue;
      let axis = Number(attr(q, "axis") ?? 1);
      if (axis < 0) axis += t.desc.length;
      const head = t.desc[axis];
      if (head === undefined || t.fixed.has(head)) continue;
      const op = { mm: n, slot, value: q.inputs[0], ...t, head, steps: s.float32() };
      byR.set(t.r, [...(byR.get(t.r) ?? []), op]);
    }
  }
  let count = 0;
  for (const [r, ops] of byR) {
    // one layout: the same rank, head axis and gathered axes for every operand of r
    const { rank, head } = ops[0];
    const gathered = [...ops[0].fixed.keys()].sort();
    const same = ops.every((o) =>
      o.rank === rank && o.head === head && o.steps.length === ops[0].steps.length &&
      [...o.fixed.keys()].sort().join() === gathered.join()
    );
    if (!same) continue;
    const dims = new Array<number>(rank).fill(1);
    dims[head] = ops[0].steps.length;
    for (const a of gathered) dims[a] = Math.max(...ops.map((o) => o.fixed.get(a)!)) + 1;
    const strides = dims.map((_, i) => dims.slice(i + 1).reduce((x, y) => x * y, 1));
    const steps = new Float32Array(dims.reduce((x, y) => x * y, 1)).fill(NaN);
    let ok = true;
    for (const o of ops) {
      const base = gathered.reduce((acc, a) => acc + o.fixed.get(a)! * strides[a], 0);
      o.steps.forEach((v, h) => {
        const at = base + h * strides[head];
        if (!Number.isNaN(steps[at]) && steps[at] !== v) ok = false;
        steps[at] = v;
      });
    }
    // every index the Gathers take covered, each with one step per head, and the Reshape
    // gives each gathered axis exactly that many entries (a constant in its shape)
    if (!ok || steps.some(Number.isNaN)) continue;
    const shape = producer.get(r)!.inputs[1];
    if (!gathered.every((a) => shapeEntry(g, producer, shape, a) === dims[a])) continue;
    const prefix = r.replace(/[^A-Za-z0-9_.]+/g, "_");
    const zp = g.setInitializer(
      new Tensor(g.uniqueName(`${prefix}_zp128`), DataType.UINT8, [], Uint8Array.of(128)),
    );
    const scaled = g.addNode("Div", [r, g.constFloat(`${prefix}_steps`, steps, dims)]);
    const qr = g.addNode("QuantizeLinear", [scaled, g.constFloat(`${prefix}_one`, 1), zp]);
    // the layout ops replayed on the codes, each once
    const codes = new Map<string, string>([[r, qr]]);
    const codesOf = (v: string): string => {
      let c = codes.get(v);
      if (c === undefined) {
        const p = producer.get(v)!;
        c = g.addNode(p.opType, [codesOf(p.inputs[0]), ...p.inputs.slice(1)], {
          attributes: p.attributes,
        });
        codes.set(v, c);
      }
      return c;
    };
    // a second operand as int8 (uint8 Sub and Cast wrap modulo 2^8: code u becomes u − 128)
    const signed = new Map<string, string>();
    let zp0: string | undefined;
    for (const o of ops) {
      const c = codesOf(o.value);
      if (o.slot === 1 && g.opset >= 14) {
        let sc = signed.get(c);
        if (sc === undefined) {
          sc = g.addNode("Cast", [g.addNode("Sub", [c, zp])], {
            attributes: [makeAttr("to", DataType.INT8)],
          });
          signed.set(c, sc);
        }
        o.mm.inputs[1] = sc;
        o.mm.inputs[3] = zp0 ??= g.setInitializer(
          new Tensor(g.uniqueName(`${prefix}_zp0`), DataType.INT8, [], Uint8Array.of(0)),
        );
      } else {
        o.mm.inputs[o.slot] = c;
        o.mm.inputs[2 + o.slot] = zp;
      }
      count++;
    }
  }
  return count;
}

/**
 * Undo {@link hoistHeadCodes} for the operands of MatMulInteger `n` (for a method that
 * rewrites the matmul again): an operand read from codes of a divided-and-quantized value
 * `r` gets its own per-head QuantizeLinear again (int8, zero point 0, the steps the step
 * tensor holds for it) on the layout ops replayed on `r`. Returns the number of operands
 * restored.
 */
export function unhoistHeadCodes(g: Graph, n: Node): number {
  const producer = g.producers();
  let count = 0;
  for (const slot of [0, 1]) {
    const chain: Node[] = [];
    let p = producer.get(n.inputs[slot]);
    // the int8 form of hoisted uint8 codes: Cast(Sub(codes, uint8 128), int8)
    const sub = p?.opType === "Cast" && !p.domain && attr(p, "to") === DataType.INT8
      ? producer.get(p.inputs[0])
      : undefined;
    const k = sub?.opType === "Sub" && !sub.domain ? g.initializers.get(sub.inputs[1]) : undefined;
    if (k?.dataType === DataType.UINT8 && k.size === 1 && k.raw[0] === 128) {
      p = producer.get(sub!.inputs[0]);
    }
    while (p && !p.domain && (p.opType === "Transpose" || p.opType === "Gather")) {
      chain.unshift(p);
      p = producer.get(p.inputs[0]);
    }
    const div = p?.opType === "QuantizeLinear" ? producer.get(p.inputs[0]) : undefined;
    const stepT = div?.opType === "Div" ? g.initializers.get(div.inputs[1]) : undefined;
    if (!div || !stepT || stepT.dataType !== DataType.FLOAT) continue;
    const r = div.inputs[0];
    // the rank of r and where its axes went, as traceHeads computes them
    const first = chain.findIndex((c) => c.opType === "Transpose");
    const perm0 = first < 0 ? undefined : attr(chain[first], "perm") as number[] | undefined;
    if (!perm0 || perm0.length + first !== stepT.dims.length) continue;
    let desc = Array.from({ length: stepT.dims.length }, (_, i) => i);
    const fixed = new Map<number, number>();
    for (const c of chain) {
      if (c.opType === "Transpose") desc = (attr(c, "perm") as number[]).map((i) => desc[i]);
      else {
        let axis = Number(attr(c, "axis") ?? 0);
        if (axis < 0) axis += desc.length;
        fixed.set(desc[axis], g.constant(c.inputs[1])!.numbers()[0]);
        desc.splice(axis, 1);
      }
    }
    const head = stepT.dims.findIndex((d, i) => d > 1 && !fixed.has(i));
    if (head < 0) continue;
    const strides = stepT.dims.map((_, i) => stepT.dims.slice(i + 1).reduce((x, y) => x * y, 1));
    const base = [...fixed].reduce(
      (acc, [a, i]) => acc + (stepT.dims[a] > 1 ? i : 0) * strides[a],
      0,
    );
    const all = stepT.float32();
    const steps = Array.from({ length: stepT.dims[head] }, (_, h) => all[base + h * strides[head]]);
    let v = r;
    for (const c of chain) {
      v = g.addNode(c.opType, [v, ...c.inputs.slice(1)], { attributes: c.attributes });
    }
    const prefix = `${n.name}_in${slot}`;
    const zp = g.setInitializer(
      new Tensor(
        g.uniqueName(`${prefix}_zp`),
        DataType.INT8,
        [steps.length],
        new Uint8Array(steps.length),
      ),
    );
    n.inputs[slot] = g.addNode("QuantizeLinear", [v, g.constFloat(`${prefix}_scale`, steps), zp], {
      attributes: [makeAttr("axis", desc.indexOf(head))],
    });
    n.inputs[2 + slot] = g.setInitializer(
      new Tensor(g.uniqueName(`${prefix}_zp0`), DataType.INT8, [], Uint8Array.of(0)),
    );
    count++;
  }
  return count;
}

/**
 * Entry `i` of a Reshape's target shape when it is a positive constant: from a constant
 * shape, or a Concat of one-element pieces (a torch export's computed shape) whose piece
 * `i` is a constant. Undefined otherwise (0 and -1 take their value from the input).
 */
function shapeEntry(
  g: Graph,
  producer: Map<string, Node>,
  shape: string,
  i: number,
): number | undefined {
  const whole = g.constant(shape);
  let v: number | undefined;
  if (whole) v = whole.numbers()[i];
  else {
    const cat = producer.get(shape);
    if (cat?.opType !== "Concat" || cat.domain) return undefined;
    const piece = g.constant(cat.inputs[i] ?? "");
    if (!piece || piece.size !== 1 || cat.inputs.length <= i) return undefined;
    // every piece one entry, so piece i is entry i
    if (
      !cat.inputs.every((x) => g.constant(x)?.size === 1 || producer.get(x)?.opType === "Unsqueeze")
    ) {
      return undefined;
    }
    v = piece.numbers()[0];
  }
  return v !== undefined && v > 0 ? v : undefined;
}

/**
 * Trace `v` back through Transpose and Gather (constant scalar index) nodes to a Reshape
 * output `r`: `r`'s rank (from a Transpose's permutation: at least one is needed), the
 * axis of `r` each axis of `v` comes from (`desc`), and the index each Gather fixed on an
 * axis of `r`.
 */
function traceHeads(
  g: Graph,
  producer: Map<string, Node>,
  v: string,
): { r: string; rank: number; desc: number[]; fixed: Map<number, number> } | undefined {
  const chain: Node[] = [];
  let p = producer.get(v);
  for (; p && !p.domain && (p.opType === "Transpose" || p.opType === "Gather");) {
    chain.unshift(p);
    p = producer.get(p.inputs[0]);
  }
  if (p?.opType !== "Reshape" || p.domain) return undefined;
  const first = chain.findIndex((n) => n.opType === "Transpose");
  const perm0 = first < 0 ? undefined : attr(chain[first], "perm") as number[] | undefined;
  if (!perm0) return undefined;
  // scalar Gathers before the first Transpose each removed one axis
  const rank = perm0.length + first;
  let desc = Array.from({ length: rank }, (_, i) => i);
  const fixed = new Map<number, number>();
  for (const n of chain) {
    if (n.opType === "Transpose") {
      const perm = attr(n, "perm") as number[] | undefined;
      if (!perm || perm.length !== desc.length) return undefined;
      desc = perm.map((i) => desc[i]);
    } else {
      const idx = g.constant(n.inputs[1]);
      let axis = Number(attr(n, "axis") ?? 0);
      if (axis < 0) axis += desc.length;
      const i = idx && idx.dims.length === 0 ? idx.numbers()[0] : -1;
      if (i < 0 || axis < 0 || axis >= desc.length) return undefined;
      fixed.set(desc[axis], i);
      desc.splice(axis, 1);
    }
  }
  return { r: p.outputs[0], rank, desc, fixed };
}

/**
 * Store as float the integer weights that a MatMul or Gemm multiplies with a float
 * operand: the DequantizeLinear of constant codes, read next to an operand that is not a
 * DequantizeLinear output, is replaced (for that reader) by an initializer holding its
 * dequantized values `(code - z)·Δ` (the same float32 values the DequantizeLinear
 * computes). ONNX Runtime would otherwise fuse the float MatMul and the 8-bit weight into
 * MatMulNBits, which at its default accuracy level quantizes the float operand on the fly
 * (on the shipped ViT: qkv outputs off by up to 0.4% of their range, Top-1 0.4 points
 * off), so the deploy graph would no longer compute the fake-quant graph's values.
 * Returns the number of operands replaced.
 */
export function floatWeightsBesideFloatInputs(g: Graph): number {
  const producer = g.producers();
  const isDq = (v: string) => producer.get(v)?.opType === "DequantizeLinear";
  const floats = new Map<string, string>();
  let count = 0;
  for (const n of g.nodes) {
    if ((n.opType !== "MatMul" && n.opType !== "Gemm") || n.domain) continue;
    for (const slot of [0, 1]) {
      const dq = producer.get(n.inputs[slot]);
      if (dq?.opType !== "DequantizeLinear" || isDq(n.inputs[1 - slot])) continue;
      if (!dq.inputs.every((v) => !v || g.initializers.has(v))) continue;
      let name = floats.get(dq.outputs[0]);
      if (name === undefined) {
        const codes = g.initializers.get(dq.inputs[0])!;
        name = g.setInitializer(
          Tensor.fromFloat32(
            g.uniqueName(`${dq.inputs[0]}_float`),
            codes.dims,
            dequantized(g, dq),
          ),
        );
        floats.set(dq.outputs[0], name);
      }
      n.inputs[slot] = name;
      count++;
    }
  }
  return count;
}

/** Integer values of an 8- or 4-bit codes tensor (4-bit: two per byte, low nibble first). */
function codeValues(t: Tensor): Int32Array {
  const count = t.dims.reduce((a, b) => a * b, 1);
  const out = new Int32Array(count);
  for (let i = 0; i < count; i++) {
    switch (t.dataType) {
      case DataType.INT8:
        out[i] = (t.raw[i] << 24) >> 24;
        break;
      case DataType.UINT8:
        out[i] = t.raw[i];
        break;
      case DataType.INT4:
        out[i] = (((t.raw[i >> 1] >> ((i & 1) * 4)) & 0xf) << 28) >> 28;
        break;
      case DataType.UINT4:
        out[i] = (t.raw[i >> 1] >> ((i & 1) * 4)) & 0xf;
        break;
      default:
        throw new Error(
          `DequantizeLinear codes ${t.name}: data type ${t.dataType} not 8 or 4 bits`,
        );
    }
  }
  return out;
}

/** The float32 values a DequantizeLinear of constant codes computes. */
function dequantized(g: Graph, dq: Node): Float32Array {
  const t = g.initializers.get(dq.inputs[0])!;
  const codes = codeValues(t);
  const scale = g.initializers.get(dq.inputs[1])!.float32();
  const zt = dq.inputs[2] ? g.initializers.get(dq.inputs[2]) : undefined;
  const zp = zt ? codeValues(zt) : new Int32Array(scale.length);
  let axis = dqAxis(dq) ?? 1;
  if (axis < 0) axis += t.dims.length;
  const inner = scale.length > 1 ? t.dims.slice(axis + 1).reduce((a, b) => a * b, 1) : codes.length;
  const out = new Float32Array(codes.length);
  for (let i = 0; i < codes.length; i++) {
    const c = scale.length > 1 ? Math.floor(i / inner) % scale.length : 0;
    out[i] = (codes[i] - zp[c]) * scale[c];
  }
  return out;
}

/**
 * The first operand of a MatMulInteger as uint8 codes and their zero point.
 * ONNX Runtime's fast integer GEMMs take an unsigned first operand (u8 x s8);
 * signed x signed runs a slow path (4x slower on an AVX-512 VNNI CPU, measured
 * on ViT-S attention matmuls). When the int8 codes come from a QuantizeLinear
 * with zero point 0, the same value is quantized again as uint8 with zero point
 * 128: `clamp(round(x/s) + 128, 0, 255) = clamp(round(x/s), -128, 127) + 128`,
 * so the product minus the zero point is exact. Otherwise the codes stay.
 */
function unsignedCodes(
  g: Graph,
  producer: Map<string, Node>,
  dq: Node,
): { codes: string; zp?: string } {
  const codes = dq.inputs[0];
  const q = producer.get(codes);
  const z = q?.inputs[2] ? g.initializers.get(q.inputs[2]) : undefined;
  if (q?.opType !== "QuantizeLinear" || !z || z.dataType !== DataType.INT8) return { codes };
  if (z.raw.some((b) => b !== 0)) return { codes };
  const zp = g.setInitializer(
    new Tensor(g.uniqueName(`${codes}_zp128`), DataType.UINT8, z.dims, z.raw.map(() => 128)),
  );
  const u8 = g.addNode("QuantizeLinear", [q.inputs[0], q.inputs[1], zp], {
    attributes: q.attributes,
  });
  const zs = g.setInitializer(
    new Tensor(g.uniqueName(`${codes}_zp128s`), DataType.UINT8, [], Uint8Array.of(128)),
  );
  return { codes: u8, zp: zs };
}

/**
 * Fold `Mul(Mul(x, c1), c2)` into `Mul(x, c1·c2)` where the inner Mul is one of
 * `names` (by node name), `c1` is an initializer,
 * `c2` a one-element initializer and the inner product has no other reader (the
 * attention scale after {@link integerMatMuls}' step product: one float pass
 * over the attention scores fewer). Equal up to float rounding. Returns the
 * number folded.
 */
export function foldConstantMuls(g: Graph, names: Iterable<string>): number {
  const only = new Set(names);
  const readers = new Map<string, Node[]>();
  for (const n of g.nodes) for (const v of n.inputs) readers.set(v, [...(readers.get(v) ?? []), n]);
  let count = 0;
  for (const inner of [...g.nodes]) {
    if (inner.opType !== "Mul" || inner.domain || !only.has(inner.name)) continue;
    const c1 = g.initializers.get(inner.inputs[1]);
    const rs = readers.get(inner.outputs[0]) ?? [];
    if (!c1 || c1.dataType !== DataType.FLOAT || rs.length !== 1) continue;
    if (g.outputNames.includes(inner.outputs[0])) continue;
    const outer = rs[0];
    if (outer.opType !== "Mul" || outer.domain) continue;
    const other = outer.inputs[0] === inner.outputs[0] ? outer.inputs[1] : outer.inputs[0];
    const c2 = g.initializers.get(other);
    if (!c2 || c2.dataType !== DataType.FLOAT || c2.float32().length !== 1) continue;
    const k = c2.float32()[0];
    const name = g.setInitializer(
      Tensor.fromFloat32(
        g.uniqueName(`${inner.inputs[1]}_folded`),
        c1.dims,
        c1.float32().map((v) => v * k),
      ),
    );
    g.nodes.splice(g.nodes.indexOf(inner), 1);
    outer.inputs = [inner.inputs[0], name];
    count++;
  }
  return count;
}

/**
 * Replace the step multiplications of {@link integerMatMuls} (`Mul(Cast(MatMulInteger),
 * steps)`, also after {@link foldConstantMuls}) whose steps vary along at most one axis by
 * `DequantizeLinear(int32 accumulator, steps, 0, axis)`: the same `float(acc)·step` in one
 * pass instead of two (ONNX Runtime's Cast runs on one thread), where the product is read
 * by Softmax, Add or Mul only (the attention scores, or their scaling; the parts of a twin
 * operand). The DequantizeLinear keeps the Mul's name. Returns the number replaced.
 */
export function stepsAsDequantize(g: Graph): number {
  const { producer, readers } = deployIndex(g);
  let count = 0;
  for (const m of g.nodes) {
    if (m.opType !== "Mul" || m.domain) continue;
    const cast = producer.get(m.inputs[0]);
    const c = g.initializers.get(m.inputs[1]);
    if (cast?.opType !== "Cast" || producer.get(cast.inputs[0])?.opType !== "MatMulInteger") {
      continue;
    }
    if (readers.get(cast.outputs[0])?.length !== 1 || c?.dataType !== DataType.FLOAT) continue;
    // only where ONNX Runtime leaves the DequantizeLinear alone: its QDQ propagation moves a
    // DequantizeLinear past a Transpose or Reshape as a QuantizeLinear/DequantizeLinear pair
    // with the same zero point, and an int32 QuantizeLinear is no valid graph
    const rs = readers.get(m.outputs[0]) ?? [];
    if (
      g.outputNames.includes(m.outputs[0]) || !rs.every((r) => /^(Softmax|Add|Mul)$/.test(r.opType))
    ) {
      continue;
    }
    const varying = c.dims.flatMap((d, i) => (d > 1 ? [i] : []));
    if (varying.length > 1) continue;
    // the step tensor broadcasts from the right: its axis counts from the accumulator's end
    const axis = varying.length ? varying[0] - c.dims.length : undefined;
    const steps = c.float32();
    const n = steps.length;
    const zp = g.setInitializer(
      new Tensor(
        g.uniqueName(`${m.name}_zp`),
        DataType.INT32,
        n > 1 ? [n] : [],
        new Uint8Array(4 * n),
      ),
    );
    const s = g.constFloat(`${m.name}_dqsteps`, steps, n > 1 ? [n] : []);
    m.opType = "DequantizeLinear";
    m.inputs = [cast.inputs[0], s, zp];
    m.attributes = axis === undefined ? [] : [makeAttr("axis", axis)];
    count++;
  }
  return count;
}

function dqAxis(n: Node): number | undefined {
  const a = n.attributes.find((x) => x.name === "axis");
  return a === undefined ? undefined : Number(a.i);
}

/** Steps of a DequantizeLinear whose zero points are 0 (int8), with the rank of its value. */
function dqParams(
  g: Graph,
  dq: Node,
  rank: number | undefined,
): { scale: Float32Array; rank?: number } | undefined {
  const s = g.initializers.get(dq.inputs[1]);
  const z = dq.inputs[2] ? g.initializers.get(dq.inputs[2]) : undefined;
  if (!s || (z && z.raw.some((b) => b !== 0))) return undefined;
  if (z && z.dataType !== DataType.INT8) return undefined;
  return { scale: s.float32(), rank };
}

/** Which quantized sites of a deploy graph run integer kernels, and their share of the MACs. */
export interface IntegerCoverage {
  /** Site ids whose matmul/conv ONNX Runtime runs as an integer kernel ({@link integerSite}). */
  integerSites: string[];
  /** Linear and matmul site ids that compute in float in the deploy graph. */
  floatSites: string[];
  /** Multiply-accumulates per image of the integer sites and of all linear/matmul sites. */
  integerMacs: number;
  totalMacs: number;
}

/** The values whose shapes {@link integerCoverage} needs: each linear/matmul node's output and second operand. */
export function coverageValues(fp: Graph, sites: Site[]): string[] {
  const byName = new Map(fp.nodes.map((n) => [n.name, n]));
  const out = new Set<string>();
  for (const site of sites) {
    if (site.kind !== "linear" && site.kind !== "matmul") continue;
    const n = byName.get(site.node);
    if (!n) continue;
    out.add(n.outputs[0]);
    if (!fp.initializers.has(n.inputs[1])) out.add(n.inputs[1]);
  }
  return [...out];
}

/**
 * Shapes of {@link coverageValues} on the first image of `src`, from one capture run
 * of the FP graph (what {@link integerCoverage} needs).
 */
export async function coverageShapes(
  runtime: Runtime,
  fp: Graph,
  sites: Site[],
  src: ImageSource,
): Promise<Map<string, number[]>> {
  const s = await runtime.createSession(captureGraph(fp, coverageValues(fp, sites)), "capture");
  try {
    const x = await src.slice(0, 1);
    const out = await s.run({ [s.inputNames[0]]: { data: x, dims: [1, ...src.shape] } });
    return new Map(Object.entries(out).map(([k, v]) => [k, v.dims]));
  } finally {
    await s.release();
  }
}

/**
 * Does ONNX Runtime (CPU, default optimizations) run deploy-graph node `n` as an integer
 * kernel? Its QDQ fusions, as measured with onnxruntime-node 1.30 and checked against
 * its optimized graph on the shipped models' deploy graphs (`tests/deploy.test.ts`):
 * - MatMul with both operands DequantizeLinear outputs of 8-bit codes:
 *   MatMulIntegerToFloat (or QLinearMatMul before a QuantizeLinear); an int4/uint4
 *   operand (4-bit weights packed at opset 21) is dequantized and multiplied in float;
 * - Gemm with both operands dequantized: QGemm, but only when its bias (if any) is a
 *   DequantizeLinear output too or its output's only reader is a QuantizeLinear; with a
 *   float bias and a float output it stays a float Gemm (a classifier head);
 * - Conv with both inputs dequantized: QLinearConv only when its output's only reader is
 *   a QuantizeLinear (a patch embedding whose output is not quantized stays a float Conv);
 * - the step multiplication of {@link integerMatMuls} (a Mul of a Cast of MatMulInteger, or
 *   the DequantizeLinear of its int32 accumulator: {@link stepsAsDequantize}).
 */
export function integerSite(g: Graph, n: Node, index = deployIndex(g)): boolean {
  const { producer, readers } = index;
  const op = (v: string | undefined) => (v ? producer.get(v)?.opType : undefined);
  // a DequantizeLinear of 8-bit codes (the codes' type: its zero point's, or its constant codes')
  const dq = (slot: number) => {
    const d = n.inputs[slot] ? producer.get(n.inputs[slot]) : undefined;
    if (d?.opType !== "DequantizeLinear") return false;
    const t = g.initializers.get(d.inputs[2] ?? "") ?? g.initializers.get(d.inputs[0]);
    return !t || t.dataType === DataType.INT8 || t.dataType === DataType.UINT8;
  };
  const quantizedOutput = () => {
    const rs = readers.get(n.outputs[0]) ?? [];
    return !g.outputNames.includes(n.outputs[0]) && rs.length === 1 &&
      rs[0].opType === "QuantizeLinear";
  };
  if (n.domain) return false;
  switch (n.opType) {
    case "DequantizeLinear":
      // an int32 accumulator's steps (`stepsAsDequantize`)
      return op(n.inputs[0]) === "MatMulInteger";
    case "Mul": {
      const cast = producer.get(n.inputs[0]);
      return cast?.opType === "Cast" && op(cast.inputs[0]) === "MatMulInteger";
    }
    case "MatMul":
      return dq(0) && dq(1);
    case "Gemm":
      return dq(0) && dq(1) && (!n.inputs[2] || dq(2) || quantizedOutput());
    case "Conv":
      return dq(0) && dq(1) && quantizedOutput();
    default:
      return false;
  }
}

/** Producers and readers of a graph's values (what {@link integerSite} looks up). */
export interface DeployIndex {
  producer: Map<string, Node>;
  readers: Map<string, Node[]>;
}

/** Build the {@link DeployIndex} of `g`. */
export function deployIndex(g: Graph): DeployIndex {
  const producer = new Map<string, Node>();
  const readers = new Map<string, Node[]>();
  for (const n of g.nodes) {
    for (const o of n.outputs) producer.set(o, n);
    for (const v of new Set(n.inputs)) {
      if (v) readers.set(v, [...(readers.get(v) ?? []), n]);
    }
  }
  return { producer, readers };
}

/**
 * Integer coverage of a deploy graph: which linear/matmul sites ONNX Runtime runs as
 * integer kernels ({@link integerSite}) and their share of the MACs. `dims` gives the
 * shapes of {@link coverageValues} on one image (from a capture run of the FP graph).
 */
export function integerCoverage(
  fp: Graph,
  deploy: Graph,
  sites: Site[],
  dims: Map<string, number[]>,
): IntegerCoverage {
  const index = deployIndex(deploy);
  const fpNodes = new Map(fp.nodes.map((n) => [n.name, n]));
  const depNodes = new Map(deploy.nodes.map((n) => [n.name, n]));
  const out: IntegerCoverage = { integerSites: [], floatSites: [], integerMacs: 0, totalMacs: 0 };
  for (const site of sites) {
    if (site.kind !== "linear" && site.kind !== "matmul") continue;
    const f = fpNodes.get(site.node), n = depNodes.get(site.node);
    if (!f || !n) continue;
    const transB = f.attributes.find((x) => x.name === "transB")?.i;
    const macs = siteMacs(
      f.opType,
      dims.get(f.outputs[0]),
      fp.initializers.get(f.inputs[1])?.dims ?? dims.get(f.inputs[1]),
      Number(transB ?? 0) === 1,
    );
    out.totalMacs += macs;
    if (integerSite(deploy, n, index)) {
      out.integerSites.push(site.id);
      out.integerMacs += macs;
    } else out.floatSites.push(site.id);
  }
  return out;
}

/** MACs of one MatMul/Gemm/Conv from its output shape and its second operand's shape. */
function siteMacs(
  op: string,
  outDims: number[] | undefined,
  wDims: number[] | undefined,
  transB: boolean,
): number {
  if (!outDims || !wDims) return 0;
  const outN = outDims.reduce((x, y) => x * y, 1);
  if (op === "Conv") return outN * wDims.slice(1).reduce((x, y) => x * y, 1);
  // MatMul [.., M, K] x [.., K, N]; Gemm B is [K, N], or [N, K] with transB
  const k = op === "Gemm" && transB ? wDims[1] : wDims[wDims.length - 2];
  return outN * k;
}
