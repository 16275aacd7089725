/**
 * I-ViT (Li & Gu, ICCV 2023) as calibration-only PTQ, executed as a real
 * integer-only ONNX graph.
 *
 * Weights: per-channel symmetric (`quantizeWeightsPerChannel`). Activations:
 * I-ViT's QuantAct with running min/max of the FP32 model's activations over
 * the calibration set (first batch, then EMA 0.95), frozen. The whole graph
 * after the input quantizer runs in integer arithmetic in ONNX Runtime:
 * MatMulInteger/ConvInteger, dyadic requantization as integer multiply and
 * shift, Shiftmax, ShiftGELU and I-LayerNorm as int32 operators (see
 * core/ivit/). ViT, DeiT and Swin graphs lower; Swin's extra operators stay
 * integer too: the image Pad runs on the codes (pad value at the zero
 * point), the cyclic shift (Slice + Concat), window partition/reverse
 * (Reshape/Transpose) and PatchMerging's strided slices move codes, the
 * relative position bias and shifted-window mask are quantized at the
 * attention scores' 8-bit step and added in int32 before Shiftmax, the
 * PatchMerging LayerNorm (4C channels) and bias-free reduction are ordinary
 * I-LayerNorm and integer linear layers, and the mean over tokens is an
 * integer ReduceSum whose 1/T the head's input requantization folds into
 * its dyadic multiplier. `quantize` returns the float-in/float-out wrapper (input
 * quantizer → integer graph → output dequantizer), so the runner's Top-1 is
 * the Top-1 of the integer graph; the integer graph itself and a TypeScript
 * simulation come with it.
 *
 * Variants (`options.variant`): `reference` keeps the PyTorch code's 16-bit
 * residual stream (embedding sum, proj and fc2 outputs, residual adds) and
 * 16-bit Shiftmax output; `paper` uses `bits.a` everywhere except int32
 * accumulators.
 *
 * @module
 */
import type { Graph } from "../core/onnx/graph.ts";
import { VitqError } from "../core/errors.ts";
import { buildIntegerProgram } from "../core/ivit/build.ts";
import { emitFloatWrapper, emitIntegerGraph } from "../core/ivit/emit.ts";
import { batchChunkFor, CHUNK_BYTES } from "../core/onnx/chunk.ts";
import type { IvitVariant } from "../core/ivit/lower.ts";
import type { NDArray } from "../core/ivit/nd.ts";
import type { IntProgram } from "../core/ivit/program.ts";
import { simulatedPredictions, simulateProgram } from "../core/ivit/simulate.ts";
import { defineMethod, type QuantContext, type QuantizedModel, type QuantMethod } from "./types.ts";
import { LayerRecorder } from "./layers.ts";

/** TypeScript simulation of the integer graph on a batch of images. */
export interface IvitSimulation {
  /** Integer output codes, keyed by the integer graph's output names. */
  codes: Map<string, NDArray>;
  /** Dequantized first output, as the float wrapper computes it. */
  logits: Float32Array;
  /** Arg-max class per image. */
  preds: Int32Array;
}

/** What {@link quantizeIvit} returns: the runner's model plus the integer artefacts. */
export interface IvitQuantizedModel extends QuantizedModel {
  /** Float image in, int32 codes out (QuantizeLinear → integer operators). */
  integerGraph: Graph;
  /** The integer program both graphs and the simulation come from. */
  program: IntProgram;
  /** Run the TypeScript simulation on images `dims` = [N, C, H, W]. */
  simulate(images: Float32Array, dims: number[]): IvitSimulation;
}

function variantOf(o: Record<string, unknown>): IvitVariant {
  const v = o.variant ?? "reference";
  if (v !== "reference" && v !== "paper") {
    throw new VitqError(
      `options.variant: must be "reference" or "paper", got ${JSON.stringify(v)}`,
    );
  }
  return v;
}

/** Quantize with I-ViT and lower to an integer-only graph (see the module doc). */
export async function quantizeIvit(ctx: QuantContext): Promise<IvitQuantizedModel> {
  const variant = variantOf(ctx.options);
  const { w, a } = ctx.bits;
  if (!(Number.isInteger(w) && w >= 2 && w <= 8 && Number.isInteger(a) && a >= 2 && a <= 8)) {
    throw new VitqError(
      `bits: I-ViT's integer graph needs 2 ≤ W ≤ 8 and 2 ≤ A ≤ 8, got W${w}A${a}`,
    );
  }
  const built = await buildIntegerProgram(
    {
      runtime: ctx.runtime,
      graph: ctx.graph,
      sites: ctx.sites,
      calib: ctx.calib,
      batchSize: ctx.batchSize,
    },
    { variant, wBits: w, aBits: a, source: "model" },
  );
  const program = built.program;
  const batchChunk = batchChunkFor(built.dims.values());
  const graph = emitFloatWrapper(program, { batchChunk });
  // (emitFloatWrapper leaves programs below opset 11 unchunked: no tensor sequences there)
  const chunked = graph.nodes.some((n) => n.opType === "Loop");
  const integerGraph = emitIntegerGraph(program);
  const rec = new LayerRecorder(ctx);
  for (const r of program.records) {
    const site = ctx.sites.find((s) =>
      r.tensor === "weight"
        ? s.weight === r.value
        : s.input === r.value || s.output === r.value || s.operands?.includes(r.value)
    );
    rec.add(
      {
        id: site?.id ?? r.value,
        kind: site?.kind ?? (r.tensor === "weight" ? "constant" : "activation"),
        role: site?.role ?? r.tensor,
        block: site?.block ?? -1,
      },
      r.tensor === "weight" ? "weight" : site?.input === r.value ? "input" : "output",
      r.value,
      { bits: r.bits, scale: r.scale, quantizer: r.quantizer, sqnrDb: r.sqnrDb },
    );
  }
  const layers = await rec.records();
  const ops = new Map<string, number>();
  for (const n of integerGraph.nodes) ops.set(n.opType, (ops.get(n.opType) ?? 0) + 1);
  const notes = [
    `I-ViT integer-only graph (${variant}): W${w} per-channel, activations ${a}-bit` +
    (variant === "reference" ? ", residual stream and Shiftmax output 16-bit" : ""),
    `${integerGraph.nodes.length} ONNX nodes (${ops.get("MatMulInteger") ?? 0} MatMulInteger, ${
      ops.get("ConvInteger") ?? 0
    } ConvInteger, ${ops.get("MatMul") ?? 0} int32 MatMul, ${
      ops.get("Gather") ?? 0
    } Gather, incl. the ShiftExp/ShiftGELU lookup tables); no float between QuantizeLinear and the output Cast`,
    ...(chunked
      ? [
        `the deployed graph runs the batch ${batchChunk} images at a time (ONNX Loop; the same outputs bit for bit, each chunk's int32 activations within ${
          CHUNK_BYTES / 2 ** 20
        } MiB)`,
      ]
      : []),
    ...program.facts,
  ].join("; ");
  ctx.log(notes);
  return {
    graph,
    layers,
    notes,
    graphKind: "integer-only (deployable: int8/int16/int32 ops in ONNX Runtime)",
    integerGraph,
    program,
    simulate(images, dims) {
      const codes = simulateProgram(program, images, dims);
      const { logits, preds } = simulatedPredictions(program, codes);
      return { codes, logits, preds };
    },
  };
}

/** Options of `ivit`. */
export type IvitOptions = { variant: "reference" | "paper" };

/** I-ViT behind the common method interface (not registered here; see methods/registry.ts). */
export const ivit: QuantMethod = defineMethod<IvitOptions>({
  name: "ivit",
  paper:
    "Li & Gu, I-ViT: Integer-only Quantization for Efficient Vision Transformer Inference, ICCV 2023",
  description:
    "integer-only ViT: per-channel sym int8 weights, 8-bit QuantAct activations (16-bit residual stream and softmax in the reference variant), dyadic requantization, Shiftmax, ShiftGELU, I-LayerNorm; evaluated as a real integer ONNX graph",
  approximations:
    "calibration-only PTQ of a QAT method (the paper fine-tunes with quantization-aware training; here nothing is trained): activation scales are running min/max (first batch, then EMA 0.95) of the FP32 model's activations, frozen; " +
    "dyadic requantization uses a 15-bit multiplier (12-14 bits where that avoids splitting z) and rounds half up (the reference: 31-bit, half to even), because z·m must stay in int32; " +
    "I-LayerNorm's Σy² over 16-bit inputs is taken after a static right shift of y (sqrt started at 2^(16−shift)), and γ's sign is applied before its last floor; " +
    "the Newton sqrt starts at the smallest power of two ≥ √C·max|y| (at least 2^10) when that is below 2^16 (I-ViT: always 2^16, whose 10 steps do not converge for 8-bit inputs over few channels); " +
    "Swin: the relative position bias and shifted-window mask, which the exporter folds into one constant, are quantized together at the attention scores' 8-bit step and added in int32 (I-ViT quantizes the bias table to 8 bits and requantizes the sum, then adds the float mask); " +
    "ShiftGELU's n drops below 23 where |x0|·2^n would overflow int32; LayerNorm eps is ignored (as in I-ViT)",
  defaults: { variant: "reference" },
  optionsSchema: {
    variant: {
      enum: ["reference", "paper"],
      description:
        "reference: 16-bit residual stream and Shiftmax output as I-ViT's code; paper: 8-bit activations throughout",
    },
  },
  quantize: quantizeIvit,
});
