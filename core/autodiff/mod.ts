/**
 * Gradients through ONNX graphs, run by ONNX Runtime: the backward-graph
 * builder, quantizer gradient helpers, Adam with cosine decay, and
 * finite-difference checks.
 *
 * @module
 */
export { addFloatInput, buildGradientGraph, initializersToInputs } from "./backward.ts";
export type {
  CrossEntropyTerm,
  GradientGraph,
  GradientSpec,
  KlTerm,
  LossSpec,
  LossTerm,
  MseTerm,
  ReduceTerm,
} from "./backward.ts";
export { type RoundGradient, supportedOps } from "./rules.ts";
export {
  emitAdaRoundHard,
  emitAdaRoundWeight,
  emitClamp,
  emitLsqQuant,
  emitRectifiedSigmoid,
  emitRoundingRegularizer,
  emitSteRound,
  lsqGradients,
} from "./quant_grads.ts";
export type { Operand, QuantGrid } from "./quant_grads.ts";
export { Adam, cosineLr, minimize } from "./adam.ts";
export type { AdamOptions, MinimizeOptions, Param } from "./adam.ts";
export { directionalDifference, dot, finiteDifferences, lossAt, relError } from "./gradcheck.ts";
export type { Feeds } from "./gradcheck.ts";
