/**
 * `deno task eval FILE.onnx [--dataset fashion-mnist|imagenet] [--path DIR] [--split S]
 * [--first N] [--batch N] [--backend node|wasm]`
 *
 * Evaluates any ONNX model with a model card beside it (`FILE.json`), for
 * example one saved by `deno task bench ... --save`: by default on the
 * evaluation set the card records (`quantized.dataset`), where it compares the
 * Top-1 with the stored one and exits 1 if they differ. `--dataset`, `--path`,
 * `--split` and `--first N` (N images per class) choose another set.
 *
 * @module
 */
import { runCli, VitqError } from "../core/errors.ts";
import { parseCli } from "./args.ts";
import { createRuntime } from "../core/runtime/runtime.ts";
import { checkCard } from "../bench/prepare.ts";
import { normalizeManifest } from "../bench/manifest.ts";
import { fromRoot, resolveModel } from "../core/models.ts";
import { openDataset } from "../datasets/dataset.ts";
import { selectSubset } from "../datasets/subset.ts";
import { evaluate } from "../bench/evaluate.ts";
import type { SavedCard } from "../bench/deploy.ts";

const USAGE =
  "usage: deno task eval FILE.onnx [--dataset fashion-mnist|imagenet] [--path DIR] [--split test|val|train] [--first N] [--batch N] [--backend node|wasm]";

await runCli(async () => {
  const parsed = parseCli(USAGE, {
    dataset: { type: "string" },
    path: { type: "string" },
    split: { type: "string" },
    first: { type: "string" },
    batch: { type: "string", default: "100" },
    backend: { type: "string", default: "node" },
  });
  if (!parsed) return;
  const { values, positionals } = parsed;
  if (positionals.length !== 1 || !positionals[0].endsWith(".onnx")) throw new VitqError(USAGE);
  const file = positionals[0];
  const cardPath = file.replace(/\.onnx$/, ".json");
  let card: Partial<SavedCard>;
  try {
    card = JSON.parse(await Deno.readTextFile(cardPath));
  } catch (e) {
    throw new VitqError(
      `${cardPath}: cannot read the model card (${(e as Error).message.split("\n")[0]})`,
    );
  }
  const q = card.quantized;
  const override = values.dataset !== undefined || values.path !== undefined ||
    values.split !== undefined || values.first !== undefined;
  const dataset: Record<string, unknown> = override || !q
    ? {
      name: values.dataset ?? (q?.dataset?.name as string) ?? card.dataset ?? "fashion-mnist",
      ...(values.path ? { path: values.path } : {}),
      split: values.split ?? "test",
      subset: values.first ? { rule: "first", perClass: Number(values.first) } : { rule: "all" },
    }
    : q.dataset;
  const calibration = q?.calibration
    ? { ...q.calibration, size: 1, seeds: [q.calib_seed] }
    : { size: 1, seeds: [0], split: dataset.name === "imagenet" ? "val" : "train" };
  const manifest = {
    name: "eval",
    models: [await Deno.realPath(file)],
    methods: ["minmax"],
    bits: [{ w: 8, a: 8 }],
    dataset,
    calibration,
    batchSize: Number(values.batch),
    threads: 2,
    speed: { enabled: false },
  };
  // the dataset as a manifest would name it (validated the same way); no site finding:
  // a saved deploy graph need not look like an FP transformer
  const m = await normalizeManifest(manifest, `${cardPath}: quantized`);
  const { data, evalIndices } = await openDataset(
    { ...m.dataset, path: m.dataset.path ? fromRoot(m.dataset.path) : undefined },
    m.calibration,
    (labels) => selectSubset(labels, m.dataset.subset),
    cardPath,
  );
  const model = await resolveModel(await Deno.realPath(file), USAGE);
  checkCard(model.card, cardPath);
  data.evalSplit.checkModel(model.card, model.name);
  const bytes = await Deno.readFile(model.path);
  {
    const backend = values.backend === "wasm" ? "wasm" : "node";
    const src = await data.evalSplit.source(evalIndices, model.card);
    const runtime = await createRuntime(backend, m.threads);
    const ev = await evaluate(runtime, bytes, src, m.batchSize);
    console.log(
      `${file}: Top-1 ${ev.top1.toFixed(2)} (${ev.correct}/${ev.n}), Top-5 ${ev.top5.toFixed(2)}`,
    );
    if (q && !override) {
      const stored = q.deploy_top1 ?? q.top1;
      const same = Math.abs(stored - ev.top1) < 1e-9;
      console.log(
        `stored Top-1 of cell ${q.cell_id} (${q.label} W${q.bits.w}A${q.bits.a}, ${q.manifest}): ${
          stored.toFixed(2)
        }: ${same ? "reproduced" : "DIFFERS"}`,
      );
      if (!same) Deno.exitCode = 1;
    }
  }
});
