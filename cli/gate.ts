/**
 * `deno task gate [manifest.json] [--expected results/tables/<name>/top1.csv] [--keep FILE]`
 *
 * The reproducibility gate: runs a manifest from scratch into a temporary
 * database and fails, naming the cell, when any Top-1 differs from the committed
 * table by more than one evaluation image. `--keep FILE` keeps that database
 * (CI keeps results/ci.duckdb for the notebook, notebooks/explore.ipynb).
 *
 * @module
 */
import { runCli, VitqError } from "../core/errors.ts";
import { parseCli } from "./args.ts";
import { prepareBench } from "../bench/prepare.ts";
import { runPlan } from "../bench/runner.ts";
import { Store } from "../bench/store.ts";
import { gatherTable, renderCsv } from "../bench/tables.ts";

const USAGE = "usage: deno task gate [manifest.json] [--expected FILE] [--write] [--keep FILE]";

/** Parse a top1.csv into rows keyed by bits, label and model. */
export function parseTop1Csv(text: string): Map<string, { top1: number; n: number }> {
  const [head, ...lines] = text.trim().split("\n");
  const cols = head.split(",");
  const at = (name: string) => cols.indexOf(name);
  const out = new Map<string, { top1: number; n: number }>();
  for (const line of lines) {
    // labels are JSON-quoted and may contain commas
    const parts = line.match(/("([^"\\]|\\.)*"|[^,]*)(,|$)/g)!.map((p) => p.replace(/,$/, ""));
    const key = `W${parts[at("w_bits")]}A${parts[at("a_bits")]} ${JSON.parse(parts[at("label")])} ${
      parts[at("model")]
    }`;
    out.set(key, { top1: Number(parts[at("top1_mean")]), n: Number(parts[at("subset_size")]) });
  }
  return out;
}

await runCli(async () => {
  const parsed = parseCli(USAGE, {
    expected: { type: "string" },
    write: { type: "boolean", default: false },
    keep: { type: "string" },
  }, { help: false });
  const { values, positionals } = parsed;
  const path = positionals[0] ?? "experiments/ci.json";
  // the same checks as deno task bench, before anything runs
  const { manifest, text, plan } = await prepareBench(path);
  const expectedPath = values.expected ?? `results/tables/${manifest.name}/top1.csv`;
  const dir = await Deno.makeTempDir({ prefix: "vitq-gate-" });
  const store = await Store.open(`${dir}/gate.duckdb`);
  let csv: string;
  let ran = false;
  try {
    const s = await runPlan(plan, store, {
      manifestPath: path,
      manifestText: text,
      quiet: true,
    });
    if (s.failed) throw new VitqError(`gate: ${s.failed} cells of ${path} failed`, 1);
    csv = renderCsv(await gatherTable(store, manifest.name, s.cells.map((c) => c.id)));
    ran = true;
  } finally {
    store.close();
    if (ran && values.keep) {
      const keep = values.keep;
      if (keep.includes("/")) {
        await Deno.mkdir(keep.slice(0, keep.lastIndexOf("/")), { recursive: true });
      }
      await Deno.copyFile(`${dir}/gate.duckdb`, keep);
      await Deno.remove(`${keep}.wal`).catch(() => {});
      console.log(`gate: database kept in ${keep}`);
    }
    await Deno.remove(dir, { recursive: true });
  }
  if (values.write) {
    await Deno.mkdir(expectedPath.slice(0, expectedPath.lastIndexOf("/")) || ".", {
      recursive: true,
    });
    await Deno.writeTextFile(expectedPath, csv);
    console.log(`gate: wrote ${expectedPath}`);
    return;
  }
  let expectedText: string;
  try {
    expectedText = await Deno.readTextFile(expectedPath);
  } catch {
    throw new VitqError(
      `${expectedPath}: no committed table to compare with (run deno task gate --write)`,
    );
  }
  const want = parseTop1Csv(expectedText), got = parseTop1Csv(csv);
  const bad: string[] = [];
  for (const [key, w] of want) {
    const g = got.get(key);
    if (!g) bad.push(`cell ${key}: missing from the regenerated table`);
    else if (Math.abs(g.top1 - w.top1) > 100 / w.n + 1e-9) {
      bad.push(
        `cell ${key}: top-1 ${g.top1.toFixed(2)} vs committed ${
          w.top1.toFixed(2)
        } (more than one image of ${w.n})`,
      );
    }
  }
  for (const key of got.keys()) {
    if (!want.has(key)) bad.push(`cell ${key}: not in the committed table`);
  }
  if (bad.length) {
    for (const b of bad) console.error(`gate: ${b}`);
    throw new VitqError(`gate: ${bad.length} cells differ from ${expectedPath}`, 1);
  }
  console.log(`gate: ${want.size} cells match ${expectedPath} within one evaluation image`);
});
