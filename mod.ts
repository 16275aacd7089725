/**
 * vitq: a reproducible benchmark and experiment framework for post-training
 * quantization of vision transformers, on ONNX graphs run by ONNX Runtime.
 *
 * The public API: the graph IR and site finder, the runtime, quantizer
 * primitives, the method interface and registry, datasets, the runner, the
 * result store and the tables.
 *
 * @module
 */
export { attr, DataType, Graph, makeAttr, Tensor } from "./core/onnx/graph.ts";
export type { GraphIndex, Node, Use, ValueInfo } from "./core/onnx/graph.ts";
export { countSites, findSites } from "./core/onnx/sites.ts";
export type { LinearRole, Site, SiteKind } from "./core/onnx/sites.ts";
export { captureGraph, createRuntime, runBatches } from "./core/runtime/runtime.ts";
export type { Backend, ImageSource, Runtime, Session, TensorData } from "./core/runtime/runtime.ts";
export {
  absMax,
  absMaxPerChannel,
  emitFakeQuant,
  fakeQuant,
  fakeQuantValue,
  qRange,
  roundHalfEven,
  sqnrDb,
  symmetric,
  symmetricScale,
} from "./core/quant/uniform.ts";
export type { UniformQuantizer } from "./core/quant/uniform.ts";
export { applyPlan, siteWeight } from "./core/quant/apply.ts";
export type { ActPlan, WeightPlan } from "./core/quant/apply.ts";
export { collectStats } from "./core/runtime/capture.ts";
export type { ValueStats } from "./core/runtime/capture.ts";
export { evaluate } from "./bench/evaluate.ts";
export type { EvalResult } from "./bench/evaluate.ts";
export { measureSpeed, quantile } from "./bench/speed.ts";
export type { Speed } from "./bench/speed.ts";
export { loadManifest, normalizeManifest } from "./bench/manifest.ts";
export type { Manifest, MethodSpec } from "./bench/manifest.ts";
export { planBench, runPlan } from "./bench/runner.ts";
export type { BenchOptions, BenchSummary, Cell, Plan } from "./bench/runner.ts";
export { DEFAULT_DB, Store } from "./bench/store.ts";
export type { FpRow, ResultRow } from "./bench/store.ts";
export {
  gatherTable,
  renderCsv,
  renderLatex,
  renderMarkdown,
  writeTables,
} from "./bench/tables.ts";
export type { TableData, TableEntry } from "./bench/tables.ts";
export {
  gatherReport,
  markdownToHtml,
  renderReport,
  renderSvg,
  reportCharts,
  writeReport,
} from "./bench/report.ts";
export type { Chart, ReportData, ReportOptions } from "./bench/report.ts";
export { VitqError } from "./core/errors.ts";
export { Rng } from "./core/rng.ts";
export {
  flipRate,
  isDifferent,
  mcnemarExact,
  pairedBootstrap,
  pairedCounts,
} from "./bench/stats.ts";
export { loadFashionMnist, SHIPPED_FMNIST } from "./datasets/fashion_mnist.ts";
export type { ImageSplit } from "./datasets/fashion_mnist.ts";
export { decodeIdx, encodeIdx, readIdx } from "./datasets/idx.ts";
export { describeRule, drawCalibration, hashIds, selectSubset } from "./datasets/subset.ts";
export type { SubsetRule } from "./datasets/subset.ts";
export { makeSource } from "./datasets/source.ts";
export { loadRegistry, resolveModel } from "./core/models.ts";
export type { ModelCard, ResolvedModel } from "./core/models.ts";
export { METHODS } from "./methods/registry.ts";
export type {
  Bits,
  LayerRecord,
  QuantContext,
  QuantizedModel,
  QuantMethod,
} from "./methods/types.ts";
