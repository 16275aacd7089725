/**
 * The method interface: every quantization method, baselines included, takes a
 * {@link QuantContext} and returns a {@link QuantizedModel}.
 *
 * Adding a method is one file plus one registry line:
 *
 * 1. In `methods/<name>.ts`, declare the options type and export the method
 *    through {@link defineMethod}, so `ctx.options` arrives typed:
 *
 *    ```ts
 *    interface MyOptions { clip: number; scope: "linear" | "full" }
 *    export const mine = defineMethod<MyOptions>({
 *      name: "mine", paper: "...", description: "...", approximations: "none",
 *      defaults: { clip: 99.9, scope: "linear" },
 *      optionsSchema: {
 *        clip: { type: "number", exclusiveMinimum: 50, maximum: 100, description: "..." },
 *        scope: { enum: ["linear", "full"], description: "..." },
 *      },
 *      async quantize(ctx) { ... ctx.options.clip ...; return { graph, layers }; },
 *    });
 *    ```
 *
 *    `optionsSchema` is a JSON Schema fragment per option (the type checker
 *    insists on one entry per option of `MyOptions`). The manifest loader
 *    (bench/manifest.ts) checks the defaults merged with the manifest's options
 *    against it with the same ajv instance that validates the manifest; an
 *    unknown option or a bad value is a one-line error naming the manifest file,
 *    the method and the option. Relations between options use ajv's `$data`
 *    references (e.g. `beta: { exclusiveMinimum: { $data: "1/alpha" } }`). There is
 *    no hand-written option check.
 * 2. List it in `methods/registry.ts`, then run `deno run -A tools/gen_schema.ts`
 *    so `experiments/schema.json` offers the method and its options to editors
 *    (a test fails until the committed schema is regenerated).
 *
 * Build layer records with `LayerRecorder` (methods/layers.ts); share calibration
 * data between cells through `CellCache` (methods/cache.ts), keyed by the hashes
 * on the context.
 *
 * @module
 */
import type { Graph } from "../core/onnx/graph.ts";
import type { Site } from "../core/onnx/sites.ts";
import type { ImageSource, Runtime } from "../core/runtime/runtime.ts";

/** Weight and activation bit-widths of a cell. */
export interface Bits {
  /** Weight bits, or the target size-weighted average weight bits when `mixed` is set. */
  w: number;
  /** Activation bits, or the target size-weighted average activation bits when `mixed` is set. */
  a: number;
  /**
   * Mixed precision: candidate bit-widths per quantized tensor; the method chooses
   * each tensor's bits so that the size-weighted averages reach `w` and `a`.
   * Absent: single precision (every weight at `w`, every activation at `a`).
   */
  mixed?: number[];
}

/** Everything a method may use to quantize one model (`O`: its options type). */
export interface QuantContext<O extends object = Record<string, unknown>> {
  /** The FP32 graph (do not mutate: clone it). */
  graph: Graph;
  /** Quantization sites found in `graph`. */
  sites: Site[];
  /** Calibration images, preprocessed for this model. */
  calib: ImageSource;
  bits: Bits;
  runtime: Runtime;
  /** Method options after merging manifest values over the method's defaults (schema-checked). */
  options: O;
  /** Batch size for calibration runs. */
  batchSize: number;
  seed: number;
  /**
   * SHA-256 of the model file (the runner's `model_sha`): with `calibHash`, the
   * explicit key of calibration data a method shares between cells (see
   * `CellCache`, methods/cache.ts). A hand-built context gives any string that
   * differs between different models.
   */
  modelHash: string;
  /** Hash of the calibration image ids (the runner's `calib_hash`); differs between calibration sets. */
  calibHash: string;
  log: (msg: string) => void;
  /**
   * Show the current step of a long method (e.g. `b7.fc1 round 2/3`) on the
   * progress line; transient, not logged. Absent outside a bench run.
   */
  step?: (msg: string) => void;
}

/** One quantized tensor of one site: what was quantized and how well. */
export interface LayerRecord {
  /** Site id, e.g. `b3.fc2`. */
  site: string;
  kind: string;
  role: string;
  block: number;
  /** Which tensor of the site: `weight`, `input` (linear input), `a` / `b` (matmul operands). */
  tensor: string;
  bits: number;
  /** Step size (first channel's for per-channel quantizers). */
  scale: number;
  /** Quantizer granularity and type, e.g. `per-tensor sym`. */
  quantizer: string;
  /** SQNR (dB) of the quantized tensor against FP where it was measured (weights), else null. */
  sqnrDb: number | null;
  /**
   * Element count of the quantized tensor: a weight's size, an activation's
   * elements per image. Build records with `LayerRecorder` (methods/layers.ts),
   * which fills it.
   */
  elements: number;
}

/** What a method returns. */
export interface QuantizedModel {
  /** The fake-quant graph (simulated quantization in float). */
  graph: Graph;
  layers: LayerRecord[];
  /** Free-text notes for the result row (what was approximated, settings). */
  notes?: string;
  /**
   * What `graph` computes, as stored in the result row and the speed table:
   * default "fake-quant (simulated quantization in float32)"; an integer-only
   * method says so, since its graph is the deployable one.
   */
  graphKind?: string;
  /**
   * A deployable graph beside the fake-quant `graph`, when the method can emit
   * one: real low-bit storage and integer kernels (QuantizeLinear / MatMulInteger /
   * ConvInteger / DequantizeLinear, packed weights), computing what `graph`
   * simulates. Optional; `graph` stays the one the runner evaluates for Top-1.
   * A method whose `graph` already is deployable (I-ViT) leaves this out and says
   * so in `graphKind`.
   */
  deployable?: {
    /** The deployable ONNX graph. */
    graph: Graph;
    /** What it computes and stores, e.g. `int8 weights, QDQ activations`. */
    kind: string;
  };
}

/**
 * JSON Schema (draft-07 keywords, as ajv checks them) of one option: `type`,
 * `enum`, `minimum` / `exclusiveMinimum` / `maximum`, `multipleOf`, ... and a
 * `description`, which editors show. The default comes from the method's
 * `defaults` (the schema generator adds it).
 */
export type OptionSchema = Record<string, unknown>;

/** One {@link OptionSchema} per option of `O`, no more and no fewer. */
export type OptionsSchema<O extends object> = { [K in keyof O]-?: OptionSchema };

/** A quantization method behind the common interface (`O`: its options type). */
export interface QuantMethod<O extends object = object> {
  /** Registry key, e.g. "minmax". */
  name: string;
  /** Citation or "baseline". */
  paper: string;
  /** One-line description of what is quantized and how. */
  description: string;
  /** What the implementation approximates of its paper, stated in result rows. */
  approximations: string;
  /** Whether the method accepts mixed-precision bit entries (`bits.mixed`). */
  mixedPrecision?: boolean;
  /**
   * Options with a schema entry but no default: absent unless a manifest sets
   * them. A cell id hashes the options with their defaults filled in, so an
   * option added this way keeps the ids (and stored results) of existing cells.
   */
  optional?: readonly string[];
  /** Default options; the manifest overrides them. */
  defaults: O;
  /** JSON Schema fragment of each option; the manifest loader validates options with it. */
  optionsSchema: OptionsSchema<O>;
  quantize(ctx: QuantContext<O>): Promise<QuantizedModel>;
}

/**
 * Declare a method with typed options and erase the type for the registry (the
 * manifest loader guarantees `ctx.options` matches `optionsSchema`, hence `O`).
 */
export function defineMethod<O extends object>(m: QuantMethod<O>): QuantMethod {
  return m as unknown as QuantMethod;
}
