/**
 * RepQ-ViT's reparameterization of the log-√2 quantizer to a log2 quantizer
 * for inference. A log-√2 code q dequantizes to
 *
 *   δ·2^(-q/2) = δ·2^(-⌈q/2⌉) · (1 + [q odd]·(√2 - 1)),
 *
 * so the post-softmax operand splits into P = δ·2^(-⌈q/2⌉), a value on the
 * log2 grid (a bit shift in integer hardware), and O = [q odd]·P; then
 *
 *   A·V = P·V + (√2 - 1)·(O·V),
 *
 * two log2-operand matrix products and one scalar multiply on the output.
 * {@link log2Parts} is the TypeScript reference of the split (P·√2 for odd
 * codes equals the log-√2 level bit for bit), {@link emitLog2SplitMatMul} the
 * emission that replaces an A·V MatMul with the split form (equal to the
 * log-√2 graph up to float32 rounding of the products).
 *
 * @module
 */
import type { Graph } from "../onnx/graph.ts";
import {
  emitLogGridWith,
  logCode,
  logGridTableValues,
  type LogSqrt2Quantizer,
  logThresholds,
} from "./log.ts";

const SQRT2_F32 = Math.fround(Math.SQRT2);

/** The factor √2 - 1 applied to the odd-code product (float32). */
export const SQRT2_MINUS_1: number = Math.fround(Math.SQRT2 - 1);

/**
 * Level tables of the split: `p[q] = δ·2^(-⌈q/2⌉)` and `o[q] = [q odd]·p[q]`
 * for codes q < 2^k, and 0 for the code 2^k ("quantizes to 0").
 */
export function log2SplitLevels(q: LogSqrt2Quantizer): { p: Float32Array; o: Float32Array } {
  const n = 2 ** q.bits;
  const d = Math.fround(q.scale);
  const p = new Float32Array(n + 1), o = new Float32Array(n + 1);
  for (let c = 0; c < n; c++) {
    p[c] = Math.fround(2 ** -Math.ceil(c / 2) * d);
    o[c] = c % 2 === 1 ? p[c] : 0;
  }
  return { p, o };
}

/** TypeScript reference: the log2 parts P and O of `x` under the log-√2 quantizer `q`. */
export function log2Parts(
  x: Float32Array,
  q: LogSqrt2Quantizer,
): { p: Float32Array; o: Float32Array; codes: Int32Array } {
  const t = logThresholds(q.bits, q.scale, 2);
  const lv = log2SplitLevels(q);
  const p = new Float32Array(x.length), o = new Float32Array(x.length);
  const codes = new Int32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const c = logCode(x[i], t);
    codes[i] = c;
    p[i] = lv.p[c];
    o[i] = lv.o[c];
  }
  return { p, o, codes };
}

/** Recombine the parts into the log-√2 values: P·√2 where O ≠ 0, else P (bit-exact). */
export function recombineLog2(p: Float32Array, o: Float32Array): Float32Array {
  return p.map((v, i) => (o[i] !== 0 ? Math.fround(v * SQRT2_F32) : v));
}

/**
 * Replace the MatMul node `node` (A·V, A = input 0) of `g` with the split
 * form: P and O from A's log-√2 codes (the same float32 thresholds as
 * `emitLogSqrt2Quant`), `MatMul(P, V) + (√2 - 1)·MatMul(O, V)` writing the
 * node's original output. V is whatever the node reads at input 1 (already
 * quantized by the caller's plan).
 */
export function emitLog2SplitMatMul(
  g: Graph,
  node: string,
  q: LogSqrt2Quantizer,
  prefix: string,
): void {
  const n = g.nodes.find((x) => x.name === node);
  if (!n || n.opType !== "MatMul") throw new Error(`log2 split: ${node} is not a MatMul`);
  const [a, v] = n.inputs;
  const tv = logGridTableValues(q.bits, q.scale, 2);
  const lv = log2SplitLevels(q);
  const thresholds = g.constFloat(`${prefix}_thresholds`, tv.thresholds);
  const lnScale = g.constFloat(`${prefix}_lnscale`, tv.lnScale[0]);
  const pOut = emitLogGridWith(
    g,
    a,
    { thresholds, levels: g.constFloat(`${prefix}_p_levels`, lv.p), lnScale },
    q.bits,
    2,
    `${prefix}_p`,
  );
  const oOut = emitLogGridWith(
    g,
    a,
    { thresholds, levels: g.constFloat(`${prefix}_o_levels`, lv.o), lnScale },
    q.bits,
    2,
    `${prefix}_o`,
  );
  const out = n.outputs[0];
  const main = g.uniqueName(`${prefix}_pv`);
  n.inputs = [pOut, v];
  n.outputs = [main];
  const odd = g.addNode("MatMul", [oOut, v]);
  const scaled = g.addNode("Mul", [odd, g.constFloat(`${prefix}_sqrt2m1`, SQRT2_MINUS_1)]);
  g.addNode("Add", [main, scaled], { outputs: [out] });
}
