/**
 * The setting the parity fixtures are written in (`tools/make_ptq4vit_steps.ts`,
 * `tools/make_repq_steps.ts`): the shipped ViT at W4A4 with the calibration
 * images of seed 0 (32 images drawn from the shipped train sample, as a manifest
 * with `"calibration": {"size": 32, "seeds": [0], "split": "train"}` draws them),
 * and the fixture file: a comment, the model, the bits, the calibration image ids,
 * then what the method chose.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { createRuntime } from "../core/runtime/runtime.ts";
import { resolveModel } from "../core/models.ts";
import { sha256Hex } from "../core/hash.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { drawCalibration, hashIds } from "../datasets/subset.ts";
import type { QuantContext } from "../methods/types.ts";

/** The model of the parity fixtures. */
const MODEL = "vit_fmnist";
/** Their bits. */
const BITS = { w: 4, a: 4 };

/** The parity setting, ready to build a context per method. */
export interface ParitySetting {
  /** Shipped train ids of the calibration images. */
  calibIds: string[];
  /** A context with `options` on the shipped model (one graph, shared by the contexts). */
  context<O extends object>(options: O, log?: (msg: string) => void): Promise<QuantContext<O>>;
}

/** The `--out` argument of a fixture writer, `defaultOut` when absent. */
export function fixtureOut(defaultOut: string): string {
  const { values } = parseArgs({
    args: Deno.args,
    options: { out: { type: "string", default: defaultOut } },
  });
  return values.out;
}

/** Load the shipped model, its train sample and the seed-0 calibration draw. */
export async function paritySetting(): Promise<ParitySetting> {
  const model = await resolveModel(MODEL, "model");
  const graph = await Graph.load(model.path);
  const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
  const indices = drawCalibration(train.ids.map((_, i) => i), 32, 0);
  const calibIds = indices.map((i) => train.ids[i]);
  const rt = await createRuntime("node", 2);
  return {
    calibIds,
    context: async (options, log = () => {}) => ({
      graph,
      sites: findSites(graph),
      calib: makeSource(train, indices, model.card),
      bits: { ...BITS },
      runtime: rt,
      options,
      batchSize: 100,
      seed: 0,
      modelHash: await sha256Hex(await Deno.readFile(model.path)),
      calibHash: await hashIds(calibIds),
      log,
    }),
  };
}

/** Write a fixture: `comment`, the model, bits and calibration ids, then `chosen`. */
export async function writeFixture(
  path: string,
  comment: string,
  s: ParitySetting,
  chosen: Record<string, unknown>,
): Promise<void> {
  const out = { _comment: comment, model: MODEL, bits: BITS, calibIds: s.calibIds, ...chosen };
  await Deno.writeTextFile(path, JSON.stringify(out, null, 1) + "\n");
  console.log(`wrote ${path}`);
}
