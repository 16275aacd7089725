/**
 * The state of one I-ViT lowering and the steps every op family shares: the
 * integer form ({@link IVal}) of each float value, fresh names, the program
 * being built, I-ViT's QuantAct (calibrated step, requantization, the integer
 * form a consumer needs), weight records, copied nodes and replayed constant
 * chains.
 *
 * @module
 */
import type { Graph, Node, Tensor } from "../../onnx/graph.ts";
import type { Site } from "../../onnx/sites.ts";
import { VitqError } from "../../errors.ts";
import { ivitSymmetricStep } from "../reference.ts";
import { dyadic15, dyadicBits, planRequant } from "../kernels.ts";
import type { IntProgram, IntType, QuantRecord, Step } from "../program.ts";
import { checkLowerable, Classifier } from "./classify.ts";
import { type ConstChain, traceConstChain } from "./graph.ts";

/** What the lowering needs to know about the float graph's values. */
export interface LowerEnv {
  /** Dims of a float data value for one image (batch 1). */
  dims(value: string): number[];
  /** Calibrated range of a float data value (running min/max). */
  range(value: string): { min: number; max: number };
}

/** Bit-width variant: `reference` follows the PyTorch code, `paper` is 8-bit throughout. */
export type IvitVariant = "reference" | "paper";

/** Options of the lowering. */
export interface LowerOptions {
  /** Bit-width variant. */
  variant: IvitVariant;
  /** Weight bits (2..8). */
  wBits: number;
  /** Activation bits of the 8-bit quantizers (2..8). */
  aBits: number;
  /** Name of the model in error messages. */
  source?: string;
}

/** An integer data value: the integer tensor that stands for a float value. */
export interface IVal {
  name: string;
  type: IntType;
  lo: number;
  hi: number;
  /** Real value = (code + add_c)·scale_c; one entry per tensor or one per channel. */
  scale: number[];
  /** Channel axis (non-negative) for per-channel scales, −1 per tensor. */
  axis: number;
  rank: number;
  add: bigint[] | null;
  /** Zero point of the stored codes: value = code − zp (128 for uint8 activations). */
  zp: number;
  /** Softmax output: non-negative, accepted as the left operand of the attention matmul. */
  nonneg?: boolean;
  /**
   * Attention scores plus an additive constant (relative position bias,
   * shifted-window mask) at the scores' step, unclamped int32: accepted as
   * the Shiftmax input and moved by data-movement nodes as is.
   */
  wide?: boolean;
}

/** Signed integer type holding `bits`-bit codes. */
export function typeOfBits(bits: number): IntType {
  return bits <= 8 ? "int8" : bits <= 16 ? "int16" : "int32";
}

/** Range of signed `bits`-bit codes. */
export function typeRange(bits: number): [number, number] {
  return [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1];
}

/**
 * One lowering in progress: the classified float graph, the integer form of
 * every lowered float value, and the program being built. The op families
 * (`linear.ts`, `layernorm.ts`, `softmax.ts`, `gelu.ts`, `sum.ts`,
 * `movement.ts`) lower one node each through it.
 */
export class LowerState {
  /** Roles of the data nodes. */
  readonly cls: Classifier;
  /** The float graph (a topologically sorted clone). */
  readonly g: Graph;
  /** Name of the model in error messages. */
  readonly source: string;
  /** Activation bits of the 8-bit QuantActs. */
  readonly A: number;
  /** Bits of the residual stream (proj/fc2 outputs, adds, LayerNorm inputs). */
  readonly R: number;
  /** Bits of the Shiftmax output. */
  readonly SM: number;
  /** Bits of ShiftGELU's sigmoid. */
  readonly SIGMA = 8;
  /** The program being built. */
  readonly prog: IntProgram;
  private readonly vals = new Map<string, IVal>();
  private readonly memo = new Map<string, IVal>();
  private readonly recorded = new Set<string>();
  private counter = 0;

  constructor(
    graph: Graph,
    sites: Site[],
    readonly env: LowerEnv,
    readonly opts: LowerOptions,
  ) {
    this.source = opts.source ?? "<graph>";
    checkLowerable(graph, sites, this.source);
    this.cls = new Classifier(graph, sites, this.source);
    this.g = this.cls.g;
    this.A = opts.aBits;
    this.R = opts.variant === "reference" ? 16 : opts.aBits;
    this.SM = opts.variant === "reference" ? 16 : opts.aBits;
    const input = graph.inputs.find((v) => v.name === graph.inputNames[0]);
    const dims = (input?.type?.tensorType?.shape?.dim ?? []).map((d: Record<string, unknown>) =>
      d.dimValue !== undefined && d.dimValue !== null && Number(d.dimValue) > 0
        ? Number(d.dimValue)
        : String(d.dimParam ?? "N")
    );
    this.prog = {
      opset: graph.opset,
      input: { name: graph.inputNames[0], dims },
      outputs: [],
      initializers: new Map(),
      steps: [],
      types: new Map(),
      records: [],
      facts: [],
    };
  }

  /** A fresh integer value or node name derived from `base`. */
  fresh(base: string): string {
    return `${base}__i${this.counter++}`;
  }

  /** Append a step to the program. */
  push(step: Step): void {
    this.prog.steps.push(step);
  }

  /** Add an integer initializer; returns its name. */
  init(t: Tensor): string {
    this.prog.initializers.set(t.name, t);
    return t.name;
  }

  /** Float value `fp` is now stood for by integer value `v`. */
  setVal(fp: string, v: IVal): void {
    this.vals.set(fp, v);
    this.prog.types.set(v.name, v.type);
  }

  /** The integer form of float value `fp` (throws when it has none). */
  get(fp: string): IVal {
    const v = this.vals.get(fp);
    if (!v) throw new VitqError(`${this.source}: I-ViT: value ${fp} has no integer form`);
    return v;
  }

  /** Rank of float value `fp`. */
  rank(fp: string): number {
    return this.env.dims(fp).length;
  }

  /** I-ViT QuantAct step of a float value at `bits` from its calibrated range. */
  actStep(fp: string, bits: number): number {
    const r = this.env.range(fp);
    const s = ivitSymmetricStep(Math.max(Math.abs(r.min), Math.abs(r.max)), bits);
    const key = `${fp}|${bits}`;
    if (!this.recorded.has(key)) {
      this.recorded.add(key);
      this.prog.records.push({
        value: fp,
        tensor: "activation",
        bits,
        scale: s,
        quantizer: "per-tensor sym, running min/max (EMA 0.95)",
        sqnrDb: null,
      });
    }
    return s;
  }

  /**
   * Requantize `iv` to one scale `sOut` (clamped to `bits` unless null). The
   * result is stored as `form`: `signed` (int8/int16 by bits), `u8` (uint8
   * codes with zero point 128, the MatMulInteger operand form, bits ≤ 8) or
   * `int32` (for int32 consumers: Shiftmax, ShiftGELU).
   */
  requant(
    iv: IVal,
    sOut: number,
    bits: number | null,
    where: string,
    form: "signed" | "u8" | "int32" = "signed",
  ): IVal {
    const dy = iv.scale.map((s) => dyadic15(s / sOut));
    // the plan sees the stored codes: z = value + zp, so the zero point joins the folded add
    const zlo = iv.lo + iv.zp, zhi = iv.hi + iv.zp;
    const add = iv.zp === 0
      ? iv.add
      : iv.scale.map((_, c) => (iv.add ? iv.add[c % iv.add.length] : 0n) - BigInt(iv.zp));
    let plan = planRequant(dy, add, bits, zlo, zhi, where);
    if (bits !== null && plan.split.some((v) => v > 0)) {
      // a 12..14-bit multiplier may let z·m of a saturating requantization fit
      // int32 without splitting z (relative error of the ratio ≤ 2^-12)
      for (const mb of [14, 13, 12]) {
        const dyb = iv.scale.map((s) => dyadicBits(s / sOut, mb));
        const pb = planRequant(dyb, add, bits, zlo, zhi, where);
        if (pb.split.every((v) => v === 0) && pb.offsets) {
          plan = pb;
          break;
        }
      }
    }
    const asU8 = form === "u8" && bits !== null && bits <= 8;
    const outType = bits === null || form === "int32" ? "int32" : asU8 ? "uint8" : typeOfBits(bits);
    const out = this.fresh(iv.name.replace(/__i\d+$/, "") + (bits === null ? "_rq" : `_q${bits}`));
    this.push({
      kind: "requant",
      x: iv.name,
      out,
      xType: iv.type,
      axis: iv.scale.length === 1 ? -1 : iv.axis,
      rank: iv.rank,
      plan,
      bits,
      outType,
      outZp: asU8 ? 128 : 0,
    });
    this.prog.types.set(out, outType);
    return {
      name: out,
      type: outType,
      lo: plan.outLo,
      hi: plan.outHi,
      scale: [sOut],
      axis: -1,
      rank: iv.rank,
      add: null,
      zp: asU8 ? 128 : 0,
    };
  }

  /**
   * The integer form of float value `fp` as a consumer needs it: `act8` (per
   * tensor, uint8 codes with zero point 128 holding aBits values, no folded
   * bias: the operand form of MatMulInteger), `val8` (per tensor, aBits
   * values in any integer type: Shiftmax and ShiftGELU inputs, requantized
   * straight to int32) or `small` (per tensor, 8- or 16-bit codes).
   * Otherwise inserts a QuantAct (requantization at the value's calibrated
   * scale with `bits`).
   */
  need(fp: string, kind: "act8" | "val8" | "small", bits = this.A): IVal {
    const iv = this.get(fp);
    const [lo, hi] = typeRange(this.A);
    const plain = iv.axis === -1 && iv.scale.length === 1 && !iv.add;
    const in8 = iv.lo >= lo && iv.hi <= hi;
    if (kind === "act8" && plain && iv.type === "uint8" && iv.zp === 128 && in8) return iv;
    if (kind === "val8" && plain && in8) return iv;
    if (kind === "small" && plain && iv.type !== "int32") return iv;
    const b = kind === "small" ? bits : this.A;
    const form = kind === "val8" ? "int32" : b <= 8 ? "u8" : "signed";
    const key = `${fp}|${b}|${form}`;
    const hit = this.memo.get(key);
    if (hit) return hit;
    const out = this.requant(iv, this.actStep(fp, b), b, `value ${fp}`, form);
    this.memo.set(key, out);
    this.prog.types.set(out.name, out.type);
    return out;
  }

  /** Copy a shape/constant node (inputs that are data are renamed to their integer tensors). */
  copyNode(n: Node): void {
    const inputs = n.inputs.map((v) => (v && this.cls.data.has(v) ? this.get(v).name : v));
    this.copyInitializers(inputs);
    this.push({ kind: "node", node: { ...n, inputs } });
  }

  /** Copy the float graph's initializers among `names` (constant operands of copied nodes). */
  copyInitializers(names: string[]): void {
    for (const v of names) {
      const t = v ? this.g.initializers.get(v) : undefined;
      if (t) this.prog.initializers.set(v, t);
    }
  }

  /** Float value `out` is float value `fp` times a positive `factor` (folded into the scale). */
  rescale(out: string, fp: string, factor: number): void {
    const iv = this.get(fp);
    this.vals.set(out, { ...iv, scale: iv.scale.map((s) => s * factor) });
  }

  /** Record a quantized constant: its codes against the float values, the SQNR. */
  weightRecord(
    name: string,
    w: ArrayLike<number>,
    codes: number[],
    steps: number[],
    bits = this.opts.wBits,
    quantizer?: string,
  ): void {
    const per = w.length / steps.length;
    let sig = 0, err = 0;
    for (let i = 0; i < w.length; i++) {
      const d = w[i] - codes[i] * steps[Math.floor(i / per)];
      sig += w[i] * w[i];
      err += d * d;
    }
    const rec: QuantRecord = {
      value: name,
      tensor: "weight",
      bits,
      scale: steps[0],
      quantizer: quantizer ?? (steps.length > 1 ? "per-channel sym" : "per-tensor sym"),
      sqnrDb: err > 0 ? 10 * Math.log10(sig / err) : null,
    };
    this.prog.records.push(rec);
  }

  /** Trace a non-data operand to a constant through data-movement nodes. */
  traceConst(v: string): ConstChain {
    const t = traceConstChain(this.g, this.cls.idx, v);
    if (!t) throw new VitqError(`${this.source}: I-ViT: cannot quantize the constant operand ${v}`);
    return t;
  }

  /** Replay the data-movement `chain` of a traced constant on its integer codes `name`. */
  replayChain(name: string, chain: Node[], type: IntType): string {
    for (const c of chain) {
      const out = this.fresh(c.outputs[0]);
      this.copyInitializers(c.inputs.slice(1));
      this.push({
        kind: "node",
        node: {
          ...c,
          name: this.fresh(c.name),
          inputs: [name, ...c.inputs.slice(1)],
          outputs: [out],
        },
      });
      this.prog.types.set(out, type);
      name = out;
    }
    return name;
  }
}
