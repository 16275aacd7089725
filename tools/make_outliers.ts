/**
 * `deno run -A tools/make_outliers.ts MODEL [--seed 0] [--channels 2-4] [--ratio 20-60]
 *   [--images 1024] [--out models/<MODEL>_ol] [--threads 1]`
 *
 * Make a stress variant of a model with the activation outliers ImageNet ViTs
 * have: for every LayerNorm feeding only linear layers, a few seeded channels
 * get γ and β multiplied by a factor that makes their range 20-60x the median
 * channel range (measured on the first `--images` images of the shipped
 * Fashion-MNIST train sample, the calibration pool), and the matching input
 * rows of every consuming weight are divided by it (`core/onnx/outliers.ts`).
 *
 * The tool checks that the FP graph computes the same function (logits within
 * 1e-4 relative, identical Top-1 on the measured images and the full test
 * split) and writes `<out>.onnx` and a model card `<out>.json` saying how the
 * model was made.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { runCli, VitqError } from "../core/errors.ts";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { compareLogits, makeOutliers, OUTLIER_DEFAULTS } from "../core/onnx/outliers.ts";
import { createRuntime } from "../core/runtime/runtime.ts";
import { fromRoot, resolveModel } from "../core/models.ts";
import { sha256Hex } from "../core/hash.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { evaluate } from "../bench/evaluate.ts";

const USAGE =
  "usage: deno run -A tools/make_outliers.ts MODEL [--seed 0] [--channels 2-4] [--ratio 20-60] [--images 1024] [--out models/MODEL_ol] [--threads 1]";

/** Largest relative logit difference the transform may cause. */
const TOLERANCE = 1e-4;

function pair(s: string, flag: string, int: boolean): [number, number] {
  const m = s.split("-").map(Number);
  const ok = m.length === 2 && m.every((x) => Number.isFinite(x) && (!int || Number.isInteger(x)));
  if (!ok) throw new VitqError(`--${flag}: expected MIN-MAX, got "${s}"`);
  return [m[0], m[1]];
}

function round(x: number, d = 4): number {
  return Number(x.toFixed(d));
}

await runCli(async () => {
  let parsed;
  try {
    parsed = parseArgs({
      args: Deno.args,
      allowPositionals: true,
      options: {
        seed: { type: "string", default: "0" },
        channels: { type: "string", default: OUTLIER_DEFAULTS.channels.join("-") },
        ratio: { type: "string", default: OUTLIER_DEFAULTS.ratio.join("-") },
        images: { type: "string", default: "1024" },
        out: { type: "string" },
        threads: { type: "string", default: "1" },
      },
    });
  } catch (e) {
    throw new VitqError(`${(e as Error).message}; ${USAGE}`);
  }
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw new VitqError(USAGE);
  const name = positionals[0];
  const seed = Number(values.seed);
  if (!Number.isInteger(seed)) {
    throw new VitqError(`--seed: expected an integer, got "${values.seed}"`);
  }
  const nImages = Number(values.images);
  if (!(Number.isInteger(nImages) && nImages > 0)) {
    throw new VitqError(`--images: expected a positive integer, got "${values.images}"`);
  }
  const opts = {
    ...OUTLIER_DEFAULTS,
    seed,
    channels: pair(values.channels!, "channels", true),
    ratio: pair(values.ratio!, "ratio", false),
  };
  const model = await resolveModel(name, "MODEL");
  if (model.card.dataset !== "fashion-mnist") {
    throw new VitqError(
      `MODEL: ${name} is a ${model.card.dataset} model; this tool measures ranges on the shipped Fashion-MNIST train sample`,
    );
  }
  const out = fromRoot(values.out ?? `models/${name}_ol`).replace(/\.(onnx|json)$/, "");
  const bytes = await Deno.readFile(model.path);
  const graph = Graph.fromBytes(bytes, model.path);
  const sites = findSites(graph, model.path);
  const runtime = await createRuntime("node", Number(values.threads));

  const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
  if (nImages > train.ids.length) {
    throw new VitqError(
      `--images: the train sample has ${train.ids.length} images, asked ${nImages}`,
    );
  }
  const calib = makeSource(train, Array.from({ length: nImages }, (_, i) => i), model.card);
  const t0 = performance.now();
  const res = await makeOutliers(runtime, graph, sites, calib, 64, opts);
  const newBytes = res.graph.toBytes();

  const onCalib = await compareLogits(runtime, bytes, newBytes, calib, 100);
  const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
  const testSrc = makeSource(
    test,
    Array.from({ length: test.ids.length }, (_, i) => i),
    model.card,
  );
  const onTest = await compareLogits(runtime, bytes, newBytes, testSrc, 100);
  for (const [what, c] of [["calibration images", onCalib], ["test split", onTest]] as const) {
    if (c.maxRelative > TOLERANCE || c.top1Differs > 0) {
      throw new VitqError(
        `${name}: the transform changed the FP function on the ${what} (max relative logit difference ${c.maxRelative}, ${c.top1Differs} Top-1 changes); nothing written`,
      );
    }
  }
  const fp = await evaluate(runtime, newBytes, testSrc, 100);
  const lowest = Math.min(...[...res.measuredRatios.values()].flat());

  const card = {
    ...model.card,
    name: out.split("/").pop()!,
    file: `${out.split("/").pop()!}.onnx`,
    fp32_top1: round(fp.top1, 2),
    fp32_top1_source: "onnxruntime-node, full 10,000-image test set, by tools/make_outliers.ts",
    outliers: {
      what:
        "Function-preserving stress variant with post-LayerNorm outlier channels: for every LayerNorm feeding only linear layers, the chosen channels' gamma and beta are multiplied by a factor and the matching input rows of every consuming linear weight are divided by it (core/onnx/outliers.ts)",
      command: `deno run -A tools/make_outliers.ts ${name} --seed ${seed} --channels ${
        opts.channels.join("-")
      } --ratio ${opts.ratio.join("-")} --images ${nImages}${
        values.out ? ` --out ${values.out}` : ""
      }`,
      source_model: name,
      source_sha256: await sha256Hex(bytes),
      seed,
      channels_per_layernorm: opts.channels,
      target_ratio: opts.ratio,
      ratio_definition:
        "range (max - min over all tokens of the measured images) of the channel / median channel range of the transformed LayerNorm output",
      measured_on:
        `first ${nImages} images of the shipped Fashion-MNIST train sample (datasets/fashion-mnist)`,
      lowest_measured_ratio: round(lowest, 2),
      check: {
        tolerance_relative: TOLERANCE,
        calibration_images: {
          n: onCalib.n,
          max_relative_logit_difference: onCalib.maxRelative,
          top1_changes: onCalib.top1Differs,
        },
        test_split: {
          n: onTest.n,
          max_relative_logit_difference: onTest.maxRelative,
          top1_changes: onTest.top1Differs,
        },
      },
      layernorms: res.layerNorms.map((l) => ({
        site: l.site,
        consumers: l.consumers,
        channels: l.channels,
        factors: l.factors,
        target_ratios: l.ratios.map((x) => round(x, 3)),
        measured_ratios: res.measuredRatios.get(l.site)!.map((x) => round(x, 3)),
        ranges_before: l.rangesBefore.map((x) => round(x, 4)),
        median_range_before: round(l.medianBefore, 4),
      })),
      skipped: res.skipped,
    },
  };
  await Deno.writeFile(`${out}.onnx`, newBytes);
  await Deno.writeTextFile(`${out}.json`, JSON.stringify(card, null, 2) + "\n");
  console.log(
    `${name} -> ${out}.onnx: ${res.layerNorms.length} LayerNorms, ${
      res.layerNorms.reduce((a, l) => a + l.channels.length, 0)
    } outlier channels, measured ratios >= ${lowest.toFixed(1)}x; skipped ${
      res.skipped.map((s) => `${s.site} (${s.reason})`).join(", ") || "none"
    }; max relative logit difference ${
      onTest.maxRelative.toExponential(2)
    } on ${onTest.n} test images, Top-1 ${fp.top1.toFixed(2)} (${
      ((performance.now() - t0) / 1000).toFixed(1)
    } s)`,
  );
});
