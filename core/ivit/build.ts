/**
 * From a float graph and calibration images to an integer program: static
 * pre-check, shape probe, the list of activations to observe (a dry lowering
 * with placeholder ranges), running min/max over the calibration set, and the
 * final lowering with the frozen ranges.
 *
 * @module
 */
import type { Graph } from "../onnx/graph.ts";
import type { Site } from "../onnx/sites.ts";
import type { ImageSource, Runtime } from "../runtime/runtime.ts";
import { VitqError } from "../errors.ts";
import { observeRanges, probeDims, type Range } from "./calibrate.ts";
import { checkLowerable, lowerIvit, type LowerOptions } from "./lower.ts";
import type { IntProgram } from "./program.ts";

/** Inputs of {@link buildIntegerProgram}. */
export interface BuildInputs {
  /** Runtime that runs the float graph for shapes and calibration. */
  runtime: Runtime;
  /** The float graph (not modified). */
  graph: Graph;
  /** Its quantization sites (core/onnx/sites.ts). */
  sites: Site[];
  /** Calibration images. */
  calib: ImageSource;
  /** Calibration batch size (the EMA updates once per batch). */
  batchSize: number;
}

/** An integer program and the calibration it was built from. */
export interface BuiltProgram {
  /** The lowered program. */
  program: IntProgram;
  /** Calibrated ranges of the observed float values. */
  ranges: Map<string, Range>;
  /** Dims (batch 1) of the float graph's data values. */
  dims: Map<string, number[]>;
}

/** Calibrate and lower (see the module doc). Throws VitqError for unsupported graphs before any run. */
export async function buildIntegerProgram(
  inp: BuildInputs,
  opts: LowerOptions,
): Promise<BuiltProgram> {
  const source = opts.source ?? "<graph>";
  checkLowerable(inp.graph, inp.sites, source);
  const dims = await probeDims(inp.runtime, inp.graph, inp.calib);
  const dimsOf = (v: string) => {
    const d = dims.get(v);
    if (!d) throw new VitqError(`${source}: I-ViT: no shape for value ${v}`);
    return d;
  };
  const wanted = new Set<string>();
  lowerIvit(inp.graph, inp.sites, {
    dims: dimsOf,
    range: (v) => {
      wanted.add(v);
      return { min: -1, max: 1 };
    },
  }, opts);
  const ranges = await observeRanges(
    inp.runtime,
    inp.graph,
    [...wanted],
    inp.calib,
    inp.batchSize,
  );
  const program = lowerIvit(inp.graph, inp.sites, {
    dims: dimsOf,
    range: (v) => {
      const r = ranges.get(v);
      if (!r) throw new VitqError(`${source}: I-ViT: value ${v} was not calibrated`);
      return r;
    },
  }, opts);
  return { program, ranges, dims };
}
