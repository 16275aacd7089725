/**
 * The HTML report: built by `bench` at the end of a run on the shipped models,
 * opened in headless Chromium (Debian's `chromium`; CI installs it) over the
 * DevTools protocol: every chart must have rendered data marks, the page must
 * log no error and request nothing from the network. A screenshot is written to
 * `$VITQ_SCREENSHOT` when set (CI: results/report/screenshot.png, shown in the
 * README), else to the test's temporary folder.
 *
 * @module
 */
import assert from "node:assert/strict";
import { cli, smallManifest, tmpDir, writeManifest } from "./helpers.ts";
import { findChromium, inspectPage } from "../tools/browser.ts";
import { gatherReport, markdownToHtml, renderSvg, reportCharts } from "../bench/report.ts";
import { Store } from "../bench/store.ts";

/** Two models, two methods, two bit settings, two calibration seeds: every chart has data. */
function reportManifest() {
  return smallManifest({
    name: "report",
    models: ["vit_fmnist", "deit_fmnist"],
    methods: [
      "minmax",
      { name: "percentile", label: "percentile-99.9", options: { percentile: 99.9 } },
    ],
    dataset: { name: "fashion-mnist", split: "test", subset: { rule: "first", perClass: 10 } },
    calibration: { size: 8, seeds: [0, 1], split: "train" },
    speed: { repetitions: 1, warmup: 1 },
  });
}

Deno.test("report: bench writes it; charts render in headless Chromium without errors", async () => {
  const chromium = findChromium();
  assert(chromium, "chromium is not installed (apt-get install chromium); CI installs it");
  const dir = await tmpDir();
  const m = await writeManifest(dir, reportManifest());
  const db = `${dir}/r.duckdb`;
  const r = await cli("bench", [
    m,
    "--db",
    db,
    "--tables",
    `${dir}/t`,
    "--report",
    `${dir}/report`,
    "--quiet",
  ]);
  assert.deepEqual(r.code, 0, r.stderr);
  assert.match(r.stdout, /report: .*report\/report\.html/);
  const html = `${dir}/report/report.html`;
  const text = await Deno.readTextFile(html);
  // self-contained: no script, stylesheet or image from elsewhere
  assert(
    !/<script|<link|src=|url\((?!#)/i.test(text),
    "the report references an external resource",
  );

  // what the charts are made of agrees with the database
  const store = await Store.open(db);
  let data;
  try {
    data = await gatherReport(store, "report");
  } finally {
    store.close();
  }
  assert.deepEqual(data.table.models, ["vit_fmnist", "deit_fmnist"]);
  assert.deepEqual(data.accuracy.length, 8);
  for (const p of data.accuracy) {
    assert.deepEqual(p.seeds, 2);
    assert(p.ciLo !== null && p.ciHi !== null && p.ciLo <= p.ciHi, `${p.label}: paired CI`);
    assert(p.seedLo <= p.top1 && p.top1 <= p.seedHi);
  }
  // FP32 twice, eight quantized entries, all timed, and the deploy graphs of methods that have one
  const deployed = data.table.entries.filter((e) => e.deploy && e.deploy.ips !== null).length;
  assert.deepEqual(data.speed.length, 10 + deployed);
  assert(data.layers.length > 0 && data.layers.every((l) => l.step > 0));
  assert.deepEqual(data.pairSetting, "W4A4");
  assert.deepEqual(data.pairs.length, 4); // two models x two ordered pairs
  assert.deepEqual(data.runs.length, 1);
  const charts = reportCharts(data).map((c) => c.id);
  assert.deepEqual(charts, ["accuracy", "speed", "layers", "pairs"]);

  const page = await inspectPage(html, { screenshot: true, until: "section.tables" });
  assert.deepEqual(page.title, "vitq report: report");
  assert.deepEqual(page.errors, []);
  assert.deepEqual(page.external, []);
  assert.deepEqual(page.charts.map((c) => c.id), charts);
  for (const c of page.charts) {
    assert(c.svgs >= 1, `${c.id}: no SVG`);
    assert(c.width > 100 && c.height > 100, `${c.id}: rendered ${c.width}x${c.height}`);
    assert(c.titles > 0, `${c.id}: no hover text`);
  }
  const marks = Object.fromEntries(page.charts.map((c) => [c.id, c.marks]));
  // at least one point per accuracy entry, per timed graph, per layer record, per pair
  assert(marks.accuracy >= data.accuracy.length, `accuracy: ${marks.accuracy} marks`);
  assert(marks.speed >= data.speed.length, `speed: ${marks.speed} marks`);
  assert(marks.layers >= data.layers.length, `layers: ${marks.layers} marks`);
  assert(marks.pairs >= data.pairs.length, `pairs: ${marks.pairs} marks`);
  assert(page.png && page.png.length > 10_000, "screenshot");
  // PNG signature
  assert.deepEqual([...page.png.slice(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
  // the CLI writes the same report from the database, here with another setting's matrix
  const again = await cli("report", ["report", "--db", db, "--out", `${dir}/cli`, "--bits", "8/8"]);
  assert.equal(again.code, 0, again.stderr);
  assert.match(await Deno.readTextFile(`${dir}/cli/report.html`), /Pairwise significance at W8A8/);

  const out = Deno.env.get("VITQ_SCREENSHOT") ?? `${dir}/screenshot.png`;
  if (out.includes("/")) await Deno.mkdir(out.slice(0, out.lastIndexOf("/")), { recursive: true });
  await Deno.writeFile(out, page.png);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("report: the browser check fails a chart without data marks and a page error", async () => {
  if (!findChromium()) throw new Error("chromium is not installed (apt-get install chromium)");
  const dir = await tmpDir();
  const empty = await renderSvg({
    data: { values: [] },
    mark: "point",
    encoding: { x: { field: "x", type: "quantitative" } },
  });
  await Deno.writeTextFile(
    `${dir}/bad.html`,
    `<!doctype html><title>bad</title><figure class="chart" data-chart="empty">${empty}</figure>
     <script>console.error("boom")</script>`,
  );
  const page = await inspectPage(`${dir}/bad.html`);
  assert.deepEqual(page.charts.map((c) => [c.id, c.marks]), [["empty", 0]]);
  assert.deepEqual(page.errors.length, 1);
  assert.match(page.errors[0], /boom/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("report: table Markdown to HTML", () => {
  // an escaped pipe stays in its cell
  assert.equal(
    markdownToHtml("| A | b\\|c |\n|---|---|\n| x\\|y | 1 |"),
    "<table><thead><tr><th>A</th><th>b|c</th></tr></thead><tbody><tr><td>x|y</td><td>1</td></tr></tbody></table>",
  );
  const html = markdownToHtml(
    "## W4A4: Top-1 (%)\n\n| Method | a<b |\n|---|---:|\n| x | **1.00** |\n\nlegend `code`",
  );
  assert.deepEqual(
    html,
    [
      "<h4>W4A4: Top-1 (%)</h4>",
      '<table><thead><tr><th>Method</th><th class="num">a&lt;b</th></tr></thead><tbody><tr><td>x</td><td class="num"><strong>1.00</strong></td></tr></tbody></table>',
      '<p class="legend">legend <code>code</code></p>',
    ].join("\n"),
  );
});

Deno.test("report: CLI errors are one line with exit 2", async () => {
  const dir = await tmpDir();
  const missing = await cli("report", ["--db", `${dir}/none.duckdb`]);
  assert.deepEqual(missing.code, 2);
  assert.match(missing.stderr, /^error: --db .*none\.duckdb: no such database/);
  const bits = await cli("report", ["--bits", "four"]);
  assert.deepEqual(bits.code, 2);
  assert.match(bits.stderr, /^error: --bits: expected W\/A/);
  await Deno.remove(dir, { recursive: true });
});
