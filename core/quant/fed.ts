/**
 * Fake-quant emitters whose parameters are graph inputs, each with an on/off
 * input, for calibrations that initialize quantizers one after another on
 * the partly quantized model (RepQ-ViT's sequential calibration): one session
 * serves every pass, the parameters change between runs instead of the graph.
 *
 * Switched on, the uniform emission computes exactly what
 * {@link emitFakeQuant} computes with a zero point (Div, Round, Add, Clip,
 * Sub, Mul), and the log emission what {@link emitLogSqrt2Quant} computes;
 * switched off, the input passes unchanged (Where).
 *
 * @module
 */
import { DataType, type Graph, makeAttr } from "../onnx/graph.ts";
import { emitLogGridWith, logGridTableValues } from "./log.ts";
import { qRange } from "./uniform.ts";
import type { TensorData } from "../runtime/runtime.ts";

/** The inputs of one fed quantizer and how to fill them. */
export interface FedQuantizer {
  /** Output value of the emission. */
  output: string;
  /** Feeds that switch it off (parameters are placeholders). */
  off(): Record<string, TensorData>;
}

/** A fed uniform quantizer: per tensor, or per channel along the last axis. */
export interface FedUniform extends FedQuantizer {
  /** Feeds that switch it on with steps `scale` and zero points `zeroPoint` (length 1 or `channels`). */
  on(scale: Float32Array, zeroPoint: Float32Array): Record<string, TensorData>;
}

/** A fed log-√2 quantizer. */
export interface FedLog extends FedQuantizer {
  /** Feeds that switch it on with scale δ. */
  on(scale: number): Record<string, TensorData>;
}

function onOff(g: Graph, prefix: string, input: string, q: string): {
  name: string;
  out: string;
} {
  const name = g.uniqueName(`${prefix}_on`);
  g.addInput(name, []);
  const flag = g.addNode("Cast", [name], { attributes: [makeAttr("to", DataType.BOOL)] });
  return { name, out: g.addNode("Where", [flag, q, input]) };
}

const flag = (v: number): TensorData => ({ data: Float32Array.of(v), dims: [] });

/**
 * Emit an asymmetric uniform fake-quant of `input` with `channels` steps and
 * zero points (1: per tensor; else along the last axis) fed as graph inputs.
 */
export function emitFedUniform(
  g: Graph,
  input: string,
  bits: number,
  channels: number,
  prefix: string,
): FedUniform {
  const { qmin, qmax } = qRange(bits, false);
  const dims = channels === 1 ? [] : [channels];
  const s = g.uniqueName(`${prefix}_scale`), z = g.uniqueName(`${prefix}_zp`);
  g.addInput(s, dims);
  g.addInput(z, dims);
  let v = g.addNode("Div", [input, s]);
  v = g.addNode("Round", [v]);
  v = g.addNode("Add", [v, z]);
  v = g.addNode("Clip", [
    v,
    g.constFloat(`${prefix}_qmin`, qmin),
    g.constFloat(`${prefix}_qmax`, qmax),
  ]);
  v = g.addNode("Sub", [v, z]);
  v = g.addNode("Mul", [v, s]);
  const sw = onOff(g, prefix, input, v);
  const feeds = (sc: Float32Array, zp: Float32Array, on: number) => {
    if (sc.length !== channels || zp.length !== channels) {
      throw new Error(`fed quantizer ${prefix}: expected ${channels} steps and zero points`);
    }
    return {
      [s]: { data: sc, dims },
      [z]: { data: zp, dims },
      [sw.name]: flag(on),
    };
  };
  return {
    output: sw.out,
    on: (sc, zp) => feeds(sc, zp, 1),
    off: () => feeds(new Float32Array(channels).fill(1), new Float32Array(channels), 0),
  };
}

/** Emit a log-√2 fake-quant of `input` whose scale δ is fed (as its tables). */
export function emitFedLogSqrt2(g: Graph, input: string, bits: number, prefix: string): FedLog {
  const n = 2 ** bits;
  const t = {
    thresholds: g.uniqueName(`${prefix}_thresholds`),
    levels: g.uniqueName(`${prefix}_levels`),
    lnScale: g.uniqueName(`${prefix}_lnscale`),
  };
  g.addInput(t.thresholds, [n + 2]);
  g.addInput(t.levels, [n + 1]);
  g.addInput(t.lnScale, []);
  const q = emitLogGridWith(g, input, t, bits, 2, prefix);
  const sw = onOff(g, prefix, input, q);
  const feeds = (scale: number, on: number) => {
    const v = logGridTableValues(bits, scale, 2);
    return {
      [t.thresholds]: { data: v.thresholds, dims: [n + 2] },
      [t.levels]: { data: v.levels, dims: [n + 1] },
      [t.lnScale]: { data: v.lnScale, dims: [] },
      [sw.name]: flag(on),
    };
  };
  return { output: sw.out, on: (scale) => feeds(scale, 1), off: () => feeds(1, 0) };
}
