/**
 * I-ViT integer-only inference on ONNX graphs: lowering of a float
 * ViT/DeiT/Swin graph to an integer program (`lower.ts`), its ONNX emission (`emit.ts`),
 * its TypeScript simulation (`simulate.ts`), the int32 kernel semantics
 * (`kernels.ts`), the integer-only checks (`check.ts`), calibration
 * (`calibrate.ts`, `build.ts`) and a ViT-S sized test graph (`vits.ts`).
 *
 * @module
 */
export * from "./program.ts";
export * from "./kernels.ts";
export {
  checkLowerable,
  constTensor,
  type IvitVariant,
  type LowerEnv,
  lowerIvit,
  type LowerOptions,
} from "./lower.ts";
export { emitFloatWrapper, emitIntegerGraph, type EmitOptions } from "./emit.ts";
export {
  matmulInt,
  simulatedPredictions,
  type SimulateOptions,
  simulateProgram,
} from "./simulate.ts";
export { inferTypes, INTEGER_DATA_TYPES, integerOnlyViolations, ortTypeName } from "./check.ts";
export { observeRanges, probeDims, type Range } from "./calibrate.ts";
export { type BuildInputs, buildIntegerProgram, type BuiltProgram } from "./build.ts";
export { createRawSession, type RawSession, type RawTensor } from "./session.ts";
export type { NDArray } from "./nd.ts";
