/**
 * TypeScript execution of an {@link IntProgram}: the reference the integer
 * ONNX graph is tested against, bit for bit. Kernels come from
 * `core/ivit/reference.ts` where its semantics fit int32 (`shiftmax`,
 * `shiftGelu`) and from `kernels.ts` otherwise (dyadic requantization with a
 * 15-bit multiplier, I-LayerNorm with the Σy² prescale); integer matmul,
 * convolution and the token sum are exact integer sums; data movement
 * (including Pad) runs through `nd.ts`.
 *
 * @module
 */
import { DataType } from "../onnx/graph.ts";
import { VitqError } from "../errors.ts";
import { shiftGelu, shiftmax } from "./reference.ts";
import { roundHalfEven } from "../quant/uniform.ts";
import { iLayerNormInt32, requantValue } from "./kernels.ts";
import { binary, evalNode, fromTensor, type NDArray, sizeOf, stridesOf } from "./nd.ts";
import { type IntProgram, type IntType, onnxType, stepInputs, stepOutputs } from "./program.ts";

/** Codes minus a zero point (the value the codes stand for). */
function centered(a: NDArray, zp: number): NDArray {
  if (!zp) return a;
  const d = new Int32Array(a.data.length);
  for (let i = 0; i < d.length; i++) d[i] = a.data[i] - zp;
  return { dims: a.dims, data: d, type: DataType.INT32 };
}

function ints(t: IntType, data: ArrayLike<number>, dims: number[]): NDArray {
  const a = Int32Array.from(data);
  const [lo, hi] = t === "int8"
    ? [-128, 127]
    : t === "uint8"
    ? [0, 255]
    : t === "int16"
    ? [-32768, 32767]
    : [-(2 ** 31), 2 ** 31 - 1];
  for (let i = 0; i < a.length; i++) {
    if (a[i] < lo || a[i] > hi) throw new VitqError(`simulation: ${a[i]} does not fit ${t}`);
  }
  return { dims, data: a, type: onnxType(t) };
}

/** out[oo + i·N + n] = Σ_k A[ao + i·K + k]·B[bo + k·N + n] (exact; |sum| < 2^31 by the caller). */
function mmKernel(
  A: Int32Array,
  ao: number,
  B: Int32Array,
  bo: number,
  out: Int32Array,
  oo: number,
  M: number,
  K: number,
  N: number,
): void {
  const acc = new Float64Array(N);
  for (let i = 0; i < M; i++) {
    const arow = ao + i * K;
    acc.fill(0);
    for (let k = 0; k < K; k++) {
      const av = A[arow + k];
      if (av === 0) continue;
      const brow = bo + k * N;
      for (let n = 0; n < N; n++) acc[n] += av * B[brow + n];
    }
    out.set(acc, oo + i * N);
  }
}

function asInt32(a: NDArray): Int32Array {
  return a.data instanceof Int32Array ? a.data : Int32Array.from(a.data);
}

/** Integer matmul with numpy batch broadcasting: [..., M, K] @ [..., K, N] → int32. */
export function matmulInt(a: NDArray, b: NDArray): NDArray {
  const M = a.dims.at(-2) ?? 1, K = a.dims.at(-1)!;
  const N = b.dims.at(-1)!;
  if ((b.dims.at(-2) ?? 1) !== K) throw new VitqError(`matmul [${a.dims}] @ [${b.dims}]`);
  const r = Math.max(a.dims.length, b.dims.length) - 2;
  const full = (d: number[]) => [...new Array(r - (d.length - 2)).fill(1), ...d.slice(0, -2)];
  const ab = full(a.dims), bb = full(b.dims);
  const batch = ab.map((x, i) => Math.max(x, bb[i]));
  const nb = sizeOf(batch);
  const out = new Int32Array(nb * M * N);
  const sa = ab.map((_, i) => sizeOf(ab.slice(i + 1)));
  const sb = bb.map((_, i) => sizeOf(bb.slice(i + 1)));
  const A = asInt32(a), B = asInt32(b);
  for (let t = 0; t < nb; t++) {
    let rem = t, ia = 0, ib = 0;
    for (let d = 0; d < r; d++) {
      const span = sizeOf(batch.slice(d + 1));
      const c = Math.floor(rem / span);
      rem -= c * span;
      if (ab[d] !== 1) ia += c * sa[d];
      if (bb[d] !== 1) ib += c * sb[d];
    }
    mmKernel(A, ia * M * K, B, ib * K * N, out, t * M * N, M, K, N);
  }
  return { dims: [...batch, M, N], data: out, type: DataType.INT32 };
}

function convInt(
  x: NDArray,
  w: NDArray,
  strides: number[],
  pads: number[],
  dilations: number[],
): NDArray {
  const [Nb, C, H, W] = x.dims;
  const [O, , kh, kw] = w.dims;
  const [sh, sw] = strides, [dh, dw] = dilations;
  const [pt, pl, pb, pr] = pads;
  const Ho = Math.floor((H + pt + pb - dh * (kh - 1) - 1) / sh) + 1;
  const Wo = Math.floor((W + pl + pr - dw * (kw - 1) - 1) / sw) + 1;
  const out = new Int32Array(Nb * O * Ho * Wo);
  for (let n = 0; n < Nb; n++) {
    for (let o = 0; o < O; o++) {
      for (let i = 0; i < Ho; i++) {
        for (let j = 0; j < Wo; j++) {
          let s = 0;
          for (let c = 0; c < C; c++) {
            for (let u = 0; u < kh; u++) {
              const yy = i * sh - pt + u * dh;
              if (yy < 0 || yy >= H) continue;
              for (let v = 0; v < kw; v++) {
                const xx = j * sw - pl + v * dw;
                if (xx < 0 || xx >= W) continue;
                s += x.data[((n * C + c) * H + yy) * W + xx] *
                  w.data[((o * C + c) * kh + u) * kw + v];
              }
            }
          }
          out[((n * O + o) * Ho + i) * Wo + j] = s;
        }
      }
    }
  }
  return { dims: [Nb, O, Ho, Wo], data: out, type: DataType.INT32 };
}

/** Sum of int32 `x` over `axes` (exact: |sum| < 2^31 by the lowering). */
function reduceSumInt(x: NDArray, axes: number[], keepdims: boolean): NDArray {
  const red = new Set(axes);
  const kept = x.dims.map((d, i) => (red.has(i) ? 1 : d));
  const out = new Int32Array(sizeOf(kept));
  const is = stridesOf(x.dims), os = stridesOf(kept);
  const n = x.data.length;
  const sums = new Float64Array(out.length);
  for (let i = 0; i < n; i++) {
    let rem = i, o = 0;
    for (let d = 0; d < x.dims.length; d++) {
      const c = Math.floor(rem / is[d]);
      rem -= c * is[d];
      if (!red.has(d)) o += c * os[d];
    }
    sums[o] += x.data[i];
  }
  out.set(sums);
  const dims = keepdims ? kept : x.dims.filter((_, i) => !red.has(i));
  return { dims, data: out, type: DataType.INT32 };
}

/** Options of {@link simulateProgram}. */
export interface SimulateOptions {
  /** Also return these intermediate values (program value names), or every value with "all". */
  keep?: string[] | "all";
}

/**
 * Run the integer program on a batch of float images (`dims` = [N, C, H, W]).
 * Returns the output codes keyed by `ProgramOutput.value`, plus kept values.
 */
export function simulateProgram(
  p: IntProgram,
  images: Float32Array | Int32Array,
  dims: number[],
  opts: SimulateOptions = {},
): Map<string, NDArray> {
  const env = new Map<string, NDArray>();
  for (const [k, t] of p.initializers) env.set(k, fromTensor(t));
  env.set(p.input.name, {
    dims,
    data: images,
    type: images instanceof Int32Array ? DataType.INT32 : DataType.FLOAT,
  });
  // liveness: only the steps the outputs (and kept values) need
  const want = new Set<string>(p.outputs.map((o) => o.value));
  if (Array.isArray(opts.keep)) { for (const v of opts.keep) want.add(v); }
  const live = new Array<boolean>(p.steps.length).fill(false);
  for (let i = p.steps.length - 1; i >= 0; i--) {
    const s = p.steps[i];
    if (opts.keep === "all" || stepOutputs(s).some((o) => want.has(o))) {
      live[i] = true;
      for (const v of stepInputs(s)) want.add(v);
    }
  }
  const get = (v: string): NDArray => {
    const t = env.get(v);
    if (!t) throw new VitqError(`simulation: value ${v} is not computed`);
    return t;
  };
  p.steps.forEach((s, i) => {
    if (!live[i]) return;
    switch (s.kind) {
      case "quantize": {
        const x = get(s.x);
        const sc = Math.fround(s.scale);
        const lo = -(2 ** (s.bits - 1)), hi = 2 ** (s.bits - 1) - 1;
        const q = new Int32Array(x.data.length);
        for (let j = 0; j < q.length; j++) {
          const v = roundHalfEven(Math.fround(x.data[j] / sc));
          q[j] = (v < lo ? lo : v > hi ? hi : v) + s.zp;
        }
        env.set(s.out, { dims: [...x.dims], data: q, type: DataType.UINT8 });
        break;
      }
      case "matmul":
        env.set(s.out, matmulInt(centered(get(s.a), s.aZp), centered(get(s.b), s.bZp)));
        break;
      case "conv":
        env.set(
          s.out,
          convInt(centered(get(s.x), s.xZp), get(s.w), s.strides, s.pads, s.dilations),
        );
        break;
      case "requant": {
        const x = get(s.x);
        const { consts } = s.plan;
        const inner = s.axis < 0 ? 1 : sizeOf(x.dims.slice(s.axis + 1));
        const C = consts.length;
        const out = new Int32Array(x.data.length);
        // float64 fast path where every term is exact, else the BigInt reference
        const fast = consts.map((c) =>
          c.cl < 2n ** 52n && c.ch < 2n ** 52n && c.ch > -(2n ** 52n) && c.m <= 2 ** 15
        );
        const ms = consts.map((c) => c.m), cls = consts.map((c) => Number(c.cl));
        const chs = consts.map((c) => Number(c.ch)), pk = consts.map((c) => 2 ** c.k);
        const lo = s.bits === null ? -Infinity : -(2 ** (s.bits - 1));
        const hi = s.bits === null ? Infinity : 2 ** (s.bits - 1) - 1;
        const data = x.data;
        for (let j = 0; j < out.length; j++) {
          const c = C === 1 ? 0 : Math.floor(j / inner) % C;
          const z = data[j];
          if (fast[c] && Math.abs(z) < 2 ** 36) {
            const q = Math.floor((z * ms[c] + cls[c]) / pk[c]) + chs[c];
            out[j] = (q < lo ? lo : q > hi ? hi : q) + s.outZp;
          } else out[j] = requantValue(z, consts[c], s.bits) + s.outZp;
        }
        env.set(s.out, ints(s.outType, out, [...x.dims]));
        break;
      }
      case "add": {
        const lo = -(2 ** (s.bits - 1)), hi = 2 ** (s.bits - 1) - 1;
        const r = binary(get(s.a), get(s.b), (a, b) => {
          const v = a + b;
          return v < lo ? lo : v > hi ? hi : v;
        }, DataType.INT32);
        env.set(s.out, ints(s.outType, r.data, r.dims));
        break;
      }
      case "reducesum":
        env.set(s.out, reduceSumInt(centered(get(s.x), s.xZp), s.axes, s.keepdims));
        break;
      case "shiftmax": {
        const x = get(s.x);
        const r = shiftmax(x.data, s.rowLength, s.scale, { bits: s.bits, n: s.n });
        env.set(s.out, ints(s.outType, r.values, [...x.dims]));
        break;
      }
      case "shiftgelu": {
        const x = centered(get(s.x), s.xZp);
        const r = shiftGelu(x.data, s.rowLength, s.scale, { bits: s.bits, n: s.n });
        env.set(s.out, ints("int32", r.values, [...x.dims]));
        break;
      }
      case "layernorm": {
        const x = get(s.x);
        const y = iLayerNormInt32(x.data, s.channels, s.prescale, s.k0, s.steps, s.sign);
        env.set(s.out, { dims: [...x.dims], data: y, type: DataType.INT32 });
        break;
      }
      case "bias": {
        const x = get(s.x);
        const y = new Int32Array(x.data.length);
        for (let j = 0; j < y.length; j++) y[j] = x.data[j] + s.add[j % s.add.length];
        env.set(s.out, { dims: [...x.dims], data: y, type: DataType.INT32 });
        break;
      }
      case "node": {
        const outs = evalNode(s.node, s.node.inputs.map((v) => (v ? get(v) : undefined)));
        s.node.outputs.forEach((o, j) => env.set(o, outs[j]));
        break;
      }
    }
  });
  if (opts.keep === "all") return env;
  const res = new Map<string, NDArray>();
  for (const v of want) if (env.has(v) && !p.initializers.has(v)) res.set(v, env.get(v)!);
  return res;
}

/**
 * Dequantized logits of the simulation, computed as the float wrapper does
 * (float32 cast of the code times the float32 scale), and the arg-max
 * prediction per image (first maximum on ties, as `evaluate` does).
 */
export function simulatedPredictions(
  p: IntProgram,
  outputs: Map<string, NDArray>,
): { logits: Float32Array; preds: Int32Array } {
  const o = p.outputs[0];
  const codes = outputs.get(o.value)!;
  const k = codes.dims.at(-1)!;
  const n = codes.data.length / k;
  const logits = new Float32Array(codes.data.length);
  for (let i = 0; i < logits.length; i++) {
    const sc = Math.fround(o.scale.length === 1 ? o.scale[0] : o.scale[i % k]);
    logits[i] = Math.fround(Math.fround(codes.data[i]) * sc);
  }
  const preds = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let j = 1; j < k; j++) if (logits[i * k + j] > logits[i * k + best]) best = j;
    preds[i] = best;
  }
  return { logits, preds };
}
