/**
 * `deno task outliers [MODEL ...] [--db FILE] [--calib-size 32] [--seed 0] [--tau 5]
 *   [--out results/tables/outliers] [--threads 1]`
 *
 * Outlier statistics of models on their calibration images: for every linear
 * layer's input (qkv, proj, fc1, fc2, reduction, head; the patch embedding's
 * input is the image), the ratio of the largest channel range to the median
 * channel range and the share of values above ADFQ-ViT's outlier threshold τ
 * (its default, 5, for the qkv and fc1 inputs). The calibration images are
 * the bench's: `--calib-size` images of the train split drawn with `--seed`, so
 * the stored rows join `results` on `model_sha` and `calib_hash`.
 *
 * Models: registry names or `.onnx` paths with a card beside them (default: the
 * shipped Fashion-MNIST models and their stress variants). Rows go to the
 * `outlier_stats` table of `--db` and a summary to `<out>/stats.md` / `.csv`.
 *
 * @module
 */
import { runCli, VitqError } from "../core/errors.ts";
import { parseCli } from "./args.ts";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { siteOutlierStats } from "../core/onnx/outliers.ts";
import { createRuntime } from "../core/runtime/runtime.ts";
import { resolveModel } from "../core/models.ts";
import { sha256Hex } from "../core/hash.ts";
import { openDataset } from "../datasets/dataset.ts";
import { drawCalibration, hashIds } from "../datasets/subset.ts";
import { DEFAULT_DB, type OutlierStatsRow, Store } from "../bench/store.ts";
import { ADFQ_DEFAULTS } from "../methods/adfq.ts";

const USAGE =
  "usage: deno task outliers [MODEL ...] [--db FILE] [--calib-size 32] [--seed 0] [--tau 5] [--out results/tables/outliers] [--threads 1]";

/** Models measured when none is named. */
const DEFAULT_MODELS = [
  "vit_fmnist",
  "deit_fmnist",
  "swin_fmnist",
  "vit_fmnist_ol",
  "deit_fmnist_ol",
  "swin_fmnist_ol",
];

function num(v: string, flag: string, check: (x: number) => boolean, what: string): number {
  const x = Number(v);
  if (v.trim() === "" || !check(x)) throw new VitqError(`--${flag}: expected ${what}, got "${v}"`);
  return x;
}

function fmt(x: number, d: number): string {
  return x.toFixed(d);
}

await runCli(async () => {
  const parsed = parseCli(USAGE, {
    db: { type: "string", default: DEFAULT_DB },
    "calib-size": { type: "string", default: "32" },
    seed: { type: "string", default: "0" },
    tau: { type: "string", default: String(ADFQ_DEFAULTS.outlierFc1) },
    out: { type: "string", default: "results/tables/outliers" },
    threads: { type: "string", default: "1" },
  });
  if (!parsed) return;
  const { values, positionals } = parsed;
  const size = num(
    values["calib-size"]!,
    "calib-size",
    (x) => Number.isInteger(x) && x > 0,
    "a positive integer",
  );
  const seed = num(values.seed!, "seed", Number.isInteger, "an integer");
  const tau = num(values.tau!, "tau", (x) => Number.isFinite(x) && x >= 0, "a number >= 0");
  const threads = num(
    values.threads!,
    "threads",
    (x) => Number.isInteger(x) && x > 0,
    "a positive integer",
  );
  const names = positionals.length ? positionals : DEFAULT_MODELS;

  // everything is loaded and checked before anything runs
  const models = [];
  for (const [i, name] of names.entries()) {
    const m = await resolveModel(name, `MODEL ${i + 1}`);
    if (m.card.dataset !== "fashion-mnist") {
      throw new VitqError(
        `MODEL ${name}: a ${m.card.dataset} model; outlier statistics run on the shipped Fashion-MNIST calibration images`,
      );
    }
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(m.path);
    } catch (e) {
      throw new VitqError(`${m.path}: cannot read model file for ${name} (${(e as Error).name})`);
    }
    const graph = Graph.fromBytes(bytes, m.path);
    models.push({ m, graph, sites: findSites(graph, m.path), sha: await sha256Hex(bytes) });
  }
  const { data } = await openDataset(
    { name: "fashion-mnist", split: "test" },
    { split: "train", size },
    () => [],
    "outliers",
  );
  const calibIndices = drawCalibration(data.calibPool, size, seed);
  const calibHash = await hashIds(calibIndices.map((i) => data.calibSplit.ids[i]));
  const runtime = await createRuntime("node", threads);

  const rows: OutlierStatsRow[] = [];
  for (const { m, graph, sites, sha } of models) {
    const calib = await data.calibSplit.source(calibIndices, m.card);
    const stats = await siteOutlierStats(runtime, graph, sites, calib, 32, tau);
    for (const s of stats) {
      rows.push({
        model: m.name,
        model_sha: sha,
        dataset: "fashion-mnist",
        calib_hash: calibHash,
        calib_size: size,
        calib_seed: seed,
        calib_split: data.calibSource,
        site: s.site,
        role: s.role,
        block: s.block,
        value: s.value,
        channels: s.channels,
        max_range: s.maxRange,
        max_channel: s.maxChannel,
        median_range: s.medianRange,
        range_ratio: s.ratio,
        abs_max: s.absMax,
        tau: s.tau,
        above: s.above,
        n: s.count,
        share_above: s.above / s.count,
      });
    }
  }

  const store = await Store.open(values.db!);
  try {
    await store.putOutlierStats(rows);
  } finally {
    store.close();
  }

  // summary: per model and role, the largest ratio and share above τ over blocks
  const roles = ["qkv", "proj", "fc1", "fc2", "reduction", "head"];
  const header =
    `Outlier statistics of linear-layer inputs on ${size} calibration images (train split, seed ${seed}); ` +
    `per role, the median over blocks of (largest channel range / median channel range), ` +
    `its maximum in brackets, and the share of values with |x| > τ = ${tau} (ADFQ-ViT's threshold; ` +
    `its outlier branch acts on the qkv and fc1 inputs). Per-site rows: table outlier_stats of the database.`;
  const lines = [
    `# outliers`,
    "",
    header,
    "",
    `| model | ${roles.map((r) => `${r} ratio | ${r} > τ`).join(" | ")} |`,
    `|---|${roles.map(() => "---:|---:").join("|")}|`,
  ];
  const csv = ["model,role,sites,median_ratio,max_ratio,share_above,tau"];
  for (const { m } of models) {
    const cells: string[] = [];
    for (const role of roles) {
      const rs = rows.filter((r) => r.model === m.name && r.role === role);
      if (rs.length === 0) {
        cells.push("", "");
        continue;
      }
      const ratios = rs.map((r) => r.range_ratio).sort((a, b) => a - b);
      const h = ratios.length >> 1;
      const med = ratios.length % 2 ? ratios[h] : (ratios[h - 1] + ratios[h]) / 2;
      const mx = ratios[ratios.length - 1];
      const share = rs.reduce((a, r) => a + r.above, 0) / rs.reduce((a, r) => a + r.n, 0);
      cells.push(`${fmt(med, 1)} [${fmt(mx, 1)}]`, `${fmt(100 * share, 3)} %`);
      csv.push([m.name, role, rs.length, med, mx, share, tau].join(","));
    }
    lines.push(`| ${m.name} | ${cells.join(" | ")} |`);
  }
  const md = lines.join("\n") + "\n";
  await Deno.mkdir(values.out!, { recursive: true });
  await Deno.writeTextFile(`${values.out}/stats.md`, md);
  await Deno.writeTextFile(`${values.out}/stats.csv`, csv.join("\n") + "\n");
  console.log(md);
  console.log(
    `${rows.length} rows stored in ${values.db} (table outlier_stats); summary in ${values.out}/stats.md`,
  );
});
