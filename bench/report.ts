/**
 * The HTML report of a manifest's results: one self-contained file (inline SVG
 * charts, inline CSS, no script, no external resource) with
 *
 * - Top-1 against bits for every method and model, with the calibration-seed
 *   spread and the paired-bootstrap interval against FP32 as error bars;
 * - Top-1 drop against measured speed (FP32, fake-quant, integer-only graphs);
 * - per-layer steps and weight SQNR of one chosen cell as heat maps;
 * - the pairwise significance matrix of one bit setting;
 * - the run's tables and a provenance footer (commit, versions, CPU, manifest hash).
 *
 * Charts are Vega-Lite specifications ({@link reportCharts}) rendered to SVG by
 * Vega's headless renderer ({@link renderSvg}); the notebook draws the same specs.
 *
 * @module
 */
import * as vega from "vega";
import { compile, type TopLevelSpec, version as vegaLiteVersion } from "vega-lite";
import { listValue } from "@duckdb/node-api";
import { VitqError } from "../core/errors.ts";
import type { Store } from "./store.ts";
import {
  BOOTSTRAP,
  gatherTable,
  pairRows,
  renderMarkdown,
  renderSpeedMarkdown,
  type TableData,
  type TableEntry,
} from "./tables.ts";
import { pairedBootstrap } from "./stats.ts";
import type { Bits } from "../methods/types.ts";

/** Where reports are written by default. */
export const REPORT_DIR = "results/report";

/** What to report on. */
export interface ReportOptions {
  /** Restrict to these cells (a bench run's), else every ok cell stored under the manifest name. */
  cellIds?: string[];
  /** Cell id (or unique prefix) whose layers the heat maps show; default: see {@link gatherReport}. */
  cell?: string;
  /** Bit setting of the significance matrix; default the lowest of the run. */
  bits?: Bits;
}

/** One method x model x bits point of the accuracy chart. */
export interface AccuracyPoint {
  /** Hover text of the mark (an SVG `<title>` in the report). */
  tip: string;
  label: string;
  model: string;
  setting: string;
  /** Position of the setting on the x axis (0 = fewest bits). */
  x: number;
  /** x with a small offset per label so error bars do not overlap. */
  xj: number;
  top1: number;
  seeds: number;
  /** Mean ± one standard deviation over calibration seeds (equal to top1 with one seed). */
  seedLo: number;
  seedHi: number;
  /** Paired-bootstrap interval of Top-1 against FP32 on the same images, as Top-1 values. */
  ciLo: number | null;
  ciHi: number | null;
  fp: number | null;
}

/** One timed graph of the speed chart. */
export interface SpeedPoint {
  /** Hover text of the mark (an SVG `<title>` in the report). */
  tip: string;
  label: string;
  model: string;
  setting: string;
  graph: "FP32" | "fake-quant" | "deploy" | "integer-only";
  ips: number;
  latMs: number | null;
  /** FP32 Top-1 minus this entry's Top-1, in points (0 for FP32). */
  drop: number;
}

/** One quantized tensor of the heat-map cell. */
export interface LayerPoint {
  /** Hover text of the mark (an SVG `<title>` in the report). */
  tip: string;
  site: string;
  /** Column of the heat map: `b3`, or the site id for sites outside blocks. */
  col: string;
  /** Order of the column. */
  order: number;
  /** Row of the heat map: role and tensor, e.g. `fc2 input`. */
  row: string;
  tensor: string;
  step: number;
  log2Step: number;
  sqnr: number | null;
  quantizer: string;
}

/** One ordered pair of the significance matrix. */
export interface PairPoint {
  /** Hover text of the mark (an SVG `<title>` in the report). */
  tip: string;
  model: string;
  a: string;
  b: string;
  diff: number;
  lo: number;
  hi: number;
  p: number | null;
  different: boolean;
  text: string;
}

/** Everything the report and its charts are made from. */
export interface ReportData {
  name: string;
  table: TableData;
  settings: string[];
  accuracy: AccuracyPoint[];
  speed: SpeedPoint[];
  layerCell: {
    id: string;
    label: string;
    model: string;
    setting: string;
    seed: number;
    top1: number;
  } | null;
  layers: LayerPoint[];
  pairSetting: string | null;
  pairs: PairPoint[];
  /** Rows of the `runs` table that stored the report's cells. */
  runs: Record<string, unknown>[];
}

const setting = (w: number, a: number) => `W${w}A${a}`;

/**
 * Gather a manifest's report data. The heat-map cell defaults to the first
 * calibration seed of the best entry of the first model at the lowest bit
 * setting; the significance matrix to the lowest bit setting.
 */
export async function gatherReport(
  store: Store,
  name: string,
  opts: ReportOptions = {},
): Promise<ReportData> {
  const table = await gatherTable(store, name, opts.cellIds);
  const asc = [...table.bits].sort((x, y) => x.w - y.w || x.a - y.a);
  const settings = asc.map((b) => setting(b.w, b.a));
  const cellIds = table.entries.flatMap((e) => e.cells.map((c) => c.id));

  // FP32 per-image correctness per model, for the paired interval against FP32
  const fpCells = cellIds.length
    ? await store.query(
      `select distinct model, fp_cell from results where cell_id in (select unnest($1::varchar[]))`,
      [listValue(cellIds)],
    )
    : [];
  const fpCorrect = await store.correctness(fpCells.map((r) => r.fp_cell as string));
  const fpByModel = new Map<string, Uint8Array>();
  for (const r of fpCells) {
    const c = fpCorrect.get(r.fp_cell as string);
    if (c) fpByModel.set(r.model as string, c);
  }

  const labels = table.labels;
  const accuracy: AccuracyPoint[] = [];
  for (const e of table.entries) {
    const x = settings.indexOf(setting(e.w, e.a));
    const li = labels.indexOf(e.label);
    const fp = table.fp.find((f) => f.model === e.model)?.top1 ?? null;
    let ciLo: number | null = null, ciHi: number | null = null;
    const fc = fpByModel.get(e.model);
    if (fp !== null && fc && e.correct && e.correct.length === fc.length) {
      const ci = pairedBootstrap(e.correct, fc, BOOTSTRAP);
      ciLo = fp + ci.lo;
      ciHi = fp + ci.hi;
    }
    accuracy.push({
      label: e.label,
      model: e.model,
      setting: setting(e.w, e.a),
      x,
      xj: x + (labels.length > 1 ? (li / (labels.length - 1) - 0.5) * 0.3 : 0),
      top1: e.top1Mean,
      seeds: e.seeds,
      seedLo: e.top1Mean - e.top1Std,
      seedHi: e.top1Mean + e.top1Std,
      ciLo,
      ciHi,
      fp,
      tip: `${e.label}, ${e.model} ${setting(e.w, e.a)}: Top-1 ${e.top1Mean.toFixed(2)}${
        e.seeds > 1 ? ` ± ${e.top1Std.toFixed(2)} over ${e.seeds} seeds` : ""
      }${
        ciLo !== null && ciHi !== null
          ? `; ${BOOTSTRAP.level * 100}% paired interval vs FP32 [${ciLo.toFixed(2)}, ${
            ciHi.toFixed(2)
          }]`
          : ""
      }`,
    });
  }
  const speedTip = (p: Omit<SpeedPoint, "tip">): SpeedPoint => ({
    ...p,
    tip: `${p.label}, ${p.model}${p.graph === "FP32" ? "" : ` ${p.setting}`} (${p.graph}): ${
      p.ips.toFixed(0)
    } images/s${p.latMs !== null ? `, batch-1 ${p.latMs.toFixed(2)} ms` : ""}; Top-1 drop ${
      p.drop.toFixed(2)
    }`,
  });

  const speed: SpeedPoint[] = [];
  for (const f of table.fp) {
    if (f.ips !== null) {
      speed.push(speedTip({
        label: "FP32",
        model: f.model,
        setting: "FP32",
        graph: "FP32",
        ips: f.ips,
        latMs: f.latMs,
        drop: 0,
      }));
    }
  }
  for (const e of table.entries) {
    const fp = table.fp.find((f) => f.model === e.model);
    if (e.simIps === null || !fp) continue;
    speed.push(speedTip({
      label: e.label,
      model: e.model,
      setting: setting(e.w, e.a),
      graph: e.timedGraph.startsWith("integer") ? "integer-only" : "fake-quant",
      ips: e.simIps,
      latMs: e.simLatMs,
      drop: fp.top1 - e.top1Mean,
    }));
    // the same quantizers as a deployed integer (QDQ) graph, with its own Top-1
    if (e.deploy && e.deploy.ips !== null) {
      speed.push(speedTip({
        label: e.label,
        model: e.model,
        setting: setting(e.w, e.a),
        graph: "deploy",
        ips: e.deploy.ips,
        latMs: e.deploy.latMs,
        drop: fp.top1 - e.deploy.top1,
      }));
    }
  }

  const layerCell = pickLayerCell(table, settings, opts.cell);
  const layers = layerCell ? await layerPoints(store, layerCell.id) : [];

  if (opts.bits && !table.bits.some((b) => b.w === opts.bits!.w && b.a === opts.bits!.a)) {
    throw new VitqError(
      `--bits ${opts.bits.w}/${opts.bits.a}: not a bit setting of ${name} (has ${
        settings.join(", ") || "none"
      })`,
    );
  }
  const pb = opts.bits ?? asc[0];
  const pairSetting = pb && table.bits.some((b) => b.w === pb.w && b.a === pb.a)
    ? setting(pb.w, pb.a)
    : null;
  const pairs: PairPoint[] = [];
  if (pb && pairSetting) {
    for (const model of table.models) {
      for (const r of pairRows(table, pb.w, pb.a, model)) {
        for (const [a, b, s] of [[r.a, r.b, 1], [r.b, r.a, -1]] as const) {
          const diff = s * r.diff;
          pairs.push({
            model,
            a,
            b,
            diff,
            lo: s > 0 ? r.lo : -r.hi,
            hi: s > 0 ? r.hi : -r.lo,
            p: r.p,
            different: r.different,
            text: `${diff > 0 ? "+" : ""}${diff.toFixed(1)}${r.different ? "" : " †"}`,
            tip: `${a} - ${b}, ${model} ${pairSetting}: ${diff.toFixed(2)} points, ${
              BOOTSTRAP.level * 100
            }% CI [${(s > 0 ? r.lo : -r.hi).toFixed(2)}, ${(s > 0 ? r.hi : -r.lo).toFixed(2)}]${
              r.p !== null ? `, McNemar p ${r.p.toPrecision(2)}` : ""
            }${r.different ? "" : " (tied)"}`,
          });
        }
      }
    }
  }

  const runs = cellIds.length
    ? await store.query(
      `select * from runs where run_id in
         (select distinct run_id from results where cell_id in (select unnest($1::varchar[])))
       order by started_at`,
      [listValue(cellIds)],
    )
    : [];
  return { name, table, settings, accuracy, speed, layerCell, layers, pairSetting, pairs, runs };
}

function pickLayerCell(
  table: TableData,
  settings: string[],
  want: string | undefined,
): ReportData["layerCell"] {
  const describe = (e: TableEntry, c: { id: string; seed: number }) => ({
    id: c.id,
    label: e.label,
    model: e.model,
    setting: setting(e.w, e.a),
    seed: c.seed,
    top1: e.top1Mean,
  });
  if (want) {
    const hits = table.entries.flatMap((e) =>
      e.cells.filter((c) => c.id.startsWith(want)).map((c) => describe(e, c))
    );
    if (hits.length !== 1) {
      throw new VitqError(
        `--cell: ${want} matches ${hits.length} cells of ${table.manifest} (expected one)`,
      );
    }
    return hits[0];
  }
  const model = table.models[0];
  for (const s of settings) {
    const es = table.entries.filter((e) => e.model === model && setting(e.w, e.a) === s);
    if (es.length === 0) continue;
    const best = es.reduce((x, y) => (y.top1Mean > x.top1Mean ? y : x));
    return describe(best, best.cells[0]);
  }
  return null;
}

async function layerPoints(store: Store, cellId: string): Promise<LayerPoint[]> {
  const rows = await store.query(
    `select site, role, block, tensor, bits, scale, quantizer, sqnr_db from layers where cell_id = $1`,
    [cellId],
  );
  const out: LayerPoint[] = [];
  const maxBlock = Math.max(-1, ...rows.map((r) => r.block as number));
  for (const r of rows) {
    const block = r.block as number;
    const site = r.site as string;
    const inBlock = block >= 0 && /^b\d+\./.test(site);
    const step = r.scale as number;
    if (!(step > 0)) continue;
    const role = inBlock ? site.slice(site.indexOf(".") + 1) : (r.role as string || site);
    const sqnr = typeof r.sqnr_db === "number" && isFinite(r.sqnr_db) ? r.sqnr_db : null;
    out.push({
      site,
      col: inBlock ? `b${block}` : site,
      order: inBlock ? block : site.startsWith("head") ? maxBlock + 1 : -1,
      row: `${role} ${r.tensor}`,
      tensor: r.tensor as string,
      step,
      log2Step: Math.log2(step),
      sqnr,
      quantizer: r.quantizer as string,
      tip: `${site} ${r.tensor}: step ${step.toPrecision(4)} (${r.quantizer}, ${r.bits} bits)${
        sqnr !== null ? `, weight SQNR ${sqnr.toFixed(1)} dB` : ""
      }`,
    });
  }
  return out;
}

/** A chart of the report: an id, a title, a caption and its Vega-Lite spec. */
export interface Chart {
  id: string;
  title: string;
  caption: string;
  spec: TopLevelSpec;
}

const PALETTE = [
  "#4c78a8",
  "#f58518",
  "#54a24b",
  "#e45756",
  "#72b7b2",
  "#b279a2",
  "#eeca3b",
  "#9d755d",
  "#ff9da6",
  "#bab0ac",
];

function colorScale(labels: string[]) {
  return {
    domain: [...labels, "FP32"],
    range: [...labels.map((_, i) => PALETTE[i % PALETTE.length]), "#222222"],
  };
}

const CONFIG = {
  font: "Helvetica, Arial, sans-serif",
  view: { stroke: "#ddd" },
  axis: { labelFontSize: 11, titleFontSize: 12, gridColor: "#eee" },
  header: { labelFontSize: 13, labelFontWeight: "bold", title: null },
  legend: {
    orient: "bottom",
    labelFontSize: 11,
    titleFontSize: 11,
    columns: 5,
    symbolOpacity: 1,
    symbolType: "circle",
  },
};

/** The Vega-Lite specs of a report's charts (charts without data are left out). */
export function reportCharts(d: ReportData): Chart[] {
  const charts: Chart[] = [];
  const color = colorScale(d.table.labels);
  const width = Math.max(
    170,
    Math.min(330, Math.floor(960 / Math.max(1, d.table.models.length)) - 70),
  );
  const nSeeds = Math.max(0, ...d.accuracy.map((p) => p.seeds));
  if (d.accuracy.length) {
    const xAxis = {
      values: d.settings.map((_, i) => i),
      labelExpr: `${JSON.stringify(d.settings)}[datum.value]`,
      title: "bits (weights / activations)",
      grid: false,
    };
    // one bit setting (a headline manifest): one column per method instead of a bits axis
    const single = d.settings.length === 1;
    const x = single
      ? {
        field: "label",
        type: "nominal",
        sort: d.table.labels,
        axis: { title: `method (${d.settings[0]})`, labelAngle: -30, grid: false },
      }
      : {
        field: "xj",
        type: "quantitative",
        axis: xAxis,
        scale: { domain: [-0.5, d.settings.length - 0.5] },
      };
    const y = {
      field: "top1",
      type: "quantitative",
      title: "Top-1 (%)",
      scale: { zero: false },
      axis: { format: "~g" },
    };
    charts.push({
      id: "accuracy",
      title: single ? `Top-1 at ${d.settings[0]}` : "Top-1 against bits",
      caption: `Mean Top-1 over calibration seeds (points${
        single ? "" : " and lines"
      }). Thick translucent bars: ± one standard deviation over ${nSeeds} calibration seed${
        nSeeds === 1 ? "" : "s"
      }${nSeeds < 2 ? " (none drawn with one seed)" : ""}. Thin bars with ticks: ${
        BOOTSTRAP.level * 100
      }% paired-bootstrap interval of the difference to FP32 over the same images (${BOOTSTRAP.resamples} resamples), drawn around FP32 + difference. Dashed line: FP32.`,
      spec: {
        $schema: "https://vega.github.io/schema/vega-lite/v6.json",
        data: { values: d.accuracy },
        facet: { column: { field: "model", type: "nominal", sort: d.table.models } },
        spec: {
          width,
          height: 240,
          layer: [
            {
              mark: { type: "rule", strokeDash: [5, 4], color: "#666", aria: false },
              encoding: { y: { aggregate: "max", field: "fp", type: "quantitative" } },
            },
            {
              transform: [{ filter: "datum.seeds > 1" }],
              mark: { type: "rule", strokeWidth: 7, opacity: 0.3, aria: false },
              encoding: {
                x,
                y: { field: "seedLo", type: "quantitative" },
                y2: { field: "seedHi" },
                color: { field: "label", type: "nominal", scale: color, title: "method" },
              },
            },
            {
              transform: [{ filter: "datum.ciLo != null" }],
              mark: { type: "errorbar", ticks: { size: 5 }, thickness: 1.2, aria: false },
              encoding: {
                x,
                y: { field: "ciLo", type: "quantitative", title: "Top-1 (%)" },
                y2: { field: "ciHi" },
                color: { field: "label", type: "nominal", scale: color, title: "method" },
              },
            },
            ...(single ? [] : [{
              mark: { type: "line", strokeWidth: 1.5, opacity: 0.8, aria: false },
              encoding: {
                x,
                y,
                color: { field: "label", type: "nominal", scale: color, title: "method" },
                order: { field: "x" },
              },
            }]),
            {
              mark: { type: "point", filled: true, size: 45 },
              encoding: {
                x,
                y,
                color: { field: "label", type: "nominal", scale: color, title: "method" },
                description: { field: "tip" },
              },
            },
          ],
        },
        config: CONFIG,
      } as unknown as TopLevelSpec,
    });
  }
  if (d.speed.length) {
    charts.push({
      id: "speed",
      title: "Top-1 drop against measured speed",
      caption:
        "Images per second at the manifest's batch size on this machine (x, log scale) against the Top-1 lost to FP32 (y, points; lower is better). Circles: fake-quant graphs (quantize-dequantize in float32, which simulate quantization and are not faster than FP32); triangles: the same quantizers deployed as a QDQ graph that ONNX Runtime runs with integer kernels (its own Top-1); squares: I-ViT's integer-only graph; cross: FP32. Labels give the bit setting.",
      spec: {
        $schema: "https://vega.github.io/schema/vega-lite/v6.json",
        data: { values: d.speed },
        facet: { column: { field: "model", type: "nominal", sort: d.table.models } },
        spec: {
          width,
          height: 240,
          encoding: {
            x: {
              field: "ips",
              type: "quantitative",
              title: "images / s",
              scale: { type: "log", nice: false, padding: 12 },
              axis: { tickCount: 4, format: "~s" },
            },
            y: {
              field: "drop",
              type: "quantitative",
              title: "Top-1 drop vs FP32 (points)",
              scale: { padding: 10 },
              axis: { format: "~g" },
            },
          },
          layer: [
            {
              mark: { type: "point", filled: true, size: 70, opacity: 0.85 },
              encoding: {
                color: { field: "label", type: "nominal", scale: color, title: "method" },
                shape: {
                  field: "graph",
                  type: "nominal",
                  title: "timed graph",
                  scale: {
                    domain: ["FP32", "fake-quant", "deploy", "integer-only"],
                    range: ["cross", "circle", "triangle-up", "square"],
                  },
                },
                description: { field: "tip" },
              },
            },
            {
              transform: [{ filter: "datum.graph != 'FP32'" }],
              mark: { type: "text", dx: 7, align: "left", fontSize: 9, color: "#555" },
              encoding: { text: { field: "setting" } },
            },
          ],
        },
        config: CONFIG,
      } as unknown as TopLevelSpec,
    });
  }
  if (d.layers.length && d.layerCell) {
    const cols = [...new Map(d.layers.map((l) => [l.col, l.order])).entries()]
      .sort((a, b) => a[1] - b[1]).map(([c]) => c);
    // rows in forward order through a block, tensors weight before input
    const ROLES = ["patch_embed", "qkv", "qk", "av", "proj", "fc1", "fc2", "reduction", "head"];
    const roleRank = (r: string) => {
      const i = ROLES.findIndex((x) => r.startsWith(x));
      return i < 0 ? ROLES.length : i;
    };
    // per-head records (`a[h3]`) after their operand's per-tensor row, heads in order
    const rowOrder = (t: string) => {
      const m = t.match(/^(\w+)(?:\[h(\d+)\])?$/);
      const base = ["weight", "input", "a", "b"].indexOf(m?.[1] ?? t);
      return (base < 0 ? 4 : base) * 10_000 + (m?.[2] !== undefined ? 1 + Number(m[2]) : 0);
    };
    const rows = [...new Map(d.layers.map((l) => [l.row, l])).values()]
      .sort((a, b) => {
        const ra = a.row.slice(0, a.row.lastIndexOf(" ")),
          rb = b.row.slice(0, b.row.lastIndexOf(" "));
        return roleRank(ra) - roleRank(rb) || ra.localeCompare(rb) ||
          rowOrder(a.tensor) - rowOrder(b.tensor);
      }).map((l) => l.row);
    const cellW = Math.max(14, Math.min(34, Math.floor(380 / Math.max(1, cols.length))));
    const heat = (field: string, title: string, scheme: string, filter?: string) => ({
      ...(filter ? { transform: [{ filter }] } : {}),
      width: cellW * cols.length,
      height: { step: 16 },
      mark: { type: "rect", stroke: "#fff", strokeWidth: 0.5 },
      encoding: {
        x: { field: "col", type: "ordinal", sort: cols, title: "block", axis: { labelAngle: -45 } },
        y: { field: "row", type: "ordinal", sort: rows, title: null },
        color: {
          field,
          type: "quantitative",
          title,
          scale: { scheme },
          legend: { orient: "right", direction: "vertical", gradientLength: 120 },
        },
        description: { field: "tip" },
      },
    });
    const hasSqnr = d.layers.some((l) => l.sqnr !== null);
    const c = d.layerCell;
    charts.push({
      id: "layers",
      title: `Per-layer steps of ${c.label}, ${c.model} ${c.setting}, seed ${c.seed}`,
      caption: `Cell ${c.id} (Top-1 ${
        c.top1.toFixed(2)
      }). Left: log2 of the quantization step of every quantized tensor (first channel's for per-channel quantizers; for twin quantizers the stored step). ${
        hasSqnr ? "Right: weight SQNR (dB) against FP32." : ""
      } Choose another cell with --cell.`,
      spec: {
        $schema: "https://vega.github.io/schema/vega-lite/v6.json",
        data: { values: d.layers },
        hconcat: [
          heat("log2Step", "log2 step", "viridis"),
          ...(hasSqnr ? [heat("sqnr", "SQNR dB", "blues", "datum.sqnr != null")] : []),
        ],
        resolve: { scale: { color: "independent" } },
        config: CONFIG,
      } as unknown as TopLevelSpec,
    });
  }
  if (d.pairs.length && d.pairSetting) {
    const maxAbs = Math.max(0.5, ...d.pairs.map((p) => Math.abs(p.diff)));
    const order = d.table.labels.filter((l) => d.pairs.some((p) => p.a === l));
    charts.push({
      id: "pairs",
      title: `Pairwise significance at ${d.pairSetting}`,
      caption: `Row minus column, Top-1 points on the same images (seed-averaged). Coloured: the ${
        BOOTSTRAP.level * 100
      }% paired-bootstrap interval excludes 0 (different); grey with †: tied.`,
      spec: {
        $schema: "https://vega.github.io/schema/vega-lite/v6.json",
        data: { values: d.pairs },
        facet: { column: { field: "model", type: "nominal", sort: d.table.models } },
        spec: {
          width: { step: 46 },
          height: { step: 26 },
          encoding: {
            x: { field: "b", type: "nominal", sort: order, title: null, axis: { labelAngle: -35 } },
            y: { field: "a", type: "nominal", sort: order, title: null },
          },
          layer: [
            {
              mark: { type: "rect", stroke: "#fff" },
              encoding: {
                color: {
                  condition: {
                    test: "datum.different",
                    field: "diff",
                    type: "quantitative",
                    title: "row - column",
                    scale: { scheme: "redblue", domain: [-maxAbs, maxAbs] },
                    legend: { orient: "right", direction: "vertical", gradientLength: 100 },
                  },
                  value: "#e6e6e6",
                },
                description: { field: "tip" },
              },
            },
            {
              mark: { type: "text", fontSize: 10 },
              encoding: {
                text: { field: "text" },
                color: {
                  condition: {
                    test: `datum.different && abs(datum.diff) > ${maxAbs * 0.6}`,
                    value: "white",
                  },
                  value: "#222",
                },
              },
            },
          ],
        },
        config: CONFIG,
      } as unknown as TopLevelSpec,
    });
  }
  return charts;
}

/** Render a Vega-Lite spec to an SVG string with Vega's headless renderer (no browser). */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const vg = compile(spec).spec;
  const view = new vega.View(vega.parse(vg), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/**
 * Give every mark that carries a description (its hover text) an SVG `<title>`,
 * which browsers show on hover: tooltips without a script. Vega writes the
 * description as the mark's `aria-label`.
 */
export function svgTooltips(svg: string): string {
  return svg.replace(
    /<path([^>]*?) aria-label="([^"]*)"([^>]*?)\/>/g,
    (_, a, label, b) => `<path${a} aria-label="${label}"${b}><title>${label}</title></path>`,
  );
}

function esc(s: unknown): string {
  return String(s ?? "").replace(
    /[&<>"]/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!,
  );
}

function inline(s: string): string {
  return esc(s).replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>").replace(
    /`([^`]+)`/g,
    "<code>$1</code>",
  );
}

/** Convert the table Markdown this project writes (headings, paragraphs, pipe tables) to HTML. */
export function markdownToHtml(md: string): string {
  const out: string[] = [];
  const lines = md.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const h = line.match(/^(#{1,4}) (.*)$/);
    if (h) {
      const level = Math.min(4, h[1].length + 2);
      out.push(`<h${level}>${inline(h[2])}</h${level}>`);
    } else if (line.startsWith("|")) {
      const rows: string[][] = [];
      let align: string[] = [];
      for (; i < lines.length && lines[i].startsWith("|"); i++) {
        // cells split on unescaped pipes (the tables escape `|` in names as `\|`)
        const cells = lines[i].trim().replace(/^\||(?<!\\)\|$/g, "").split(/(?<!\\)\|/)
          .map((c) => c.trim().replace(/\\\|/g, "|"));
        if (cells.every((c) => /^:?-+:?$/.test(c))) {
          align = cells.map((c) => (c.endsWith(":") ? "right" : "left"));
        } else rows.push(cells);
      }
      i--;
      const [head, ...body] = rows;
      const td = (tag: string, c: string, j: number) =>
        `<${tag}${align[j] === "right" ? ' class="num"' : ""}>${inline(c)}</${tag}>`;
      out.push(
        `<table><thead><tr>${head.map((c, j) => td("th", c, j)).join("")}</tr></thead><tbody>${
          body.map((r) => `<tr>${r.map((c, j) => td("td", c, j)).join("")}</tr>`).join("")
        }</tbody></table>`,
      );
    } else if (line.trim()) {
      out.push(`<p class="legend">${inline(line)}</p>`);
    }
  }
  return out.join("\n");
}

const CSS = `
body{font:14px/1.45 Helvetica,Arial,sans-serif;color:#222;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 8px}
header h1{font-size:24px;margin:0 0 4px}
header p{margin:2px 0;color:#555}
section{background:#fff;border:1px solid #e3e5e8;border-radius:8px;padding:14px 18px;margin:18px 0}
section h2{font-size:17px;margin:0 0 8px}
figure{margin:0;overflow-x:auto}
figure svg{max-width:none;display:block}
figcaption{color:#555;font-size:12.5px;margin-top:6px;max-width:1000px}
.note{color:#777;font-style:italic}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border-bottom:1px solid #e6e6e6;padding:3px 10px;text-align:left}
th{background:#f2f3f5}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
p.legend{color:#666;font-size:12px;max-width:1000px}
.tables h3{font-size:15px;margin:14px 0 4px}
.tables h4{font-size:14px;margin:12px 0 4px}
footer{max-width:1180px;margin:0 auto 30px;padding:0 28px;color:#555;font-size:12px}
footer table{font-size:12px}
footer td{vertical-align:top;word-break:break-word;max-width:640px}
code{font-size:12px;background:#f2f3f5;padding:0 3px;border-radius:3px}
`;

function provenance(runs: Record<string, unknown>[]): string {
  if (runs.length === 0) return `<p class="note">No run rows found for these cells.</p>`;
  const fields: [string, string][] = [
    ["run", "run_id"],
    ["started", "started_at"],
    ["finished", "finished_at"],
    ["manifest", "manifest_path"],
    ["manifest SHA-256", "manifest_hash"],
    ["git commit", "git_commit"],
    ["vitq", "vitq_version"],
    ["Deno", "deno_version"],
    ["ONNX Runtime", "ort_version"],
    ["DuckDB", "duckdb_version"],
    ["backend", "backend"],
    ["CPU", "cpu"],
    ["CPU flags", "cpu_flags"],
    ["cores / threads", "cores"],
    ["cells run / stored / failed", "cells_run"],
  ];
  const val = (r: Record<string, unknown>, k: string) => {
    const v = r[k];
    if (k === "cores") return `${v ?? "?"} / ${r.threads ?? "?"}`;
    if (k === "cells_run") {
      return `${v ?? "?"} / ${r.cells_skipped ?? "?"} / ${r.cells_failed ?? "?"}`;
    }
    if (v instanceof Date) return v.toISOString();
    return v === null || v === undefined ? "–" : String(v);
  };
  return `<table><thead><tr><th></th>${
    runs.map((_, i) => `<th>run ${i + 1}</th>`).join("")
  }</tr></thead><tbody>${
    fields.map(([name, k]) =>
      `<tr><th>${esc(name)}</th>${runs.map((r) => `<td>${esc(val(r, k))}</td>`).join("")}</tr>`
    ).join("")
  }</tbody></table>`;
}

/** Render the report of `d` as one self-contained HTML document. */
export async function renderReport(d: ReportData): Promise<string> {
  const charts = reportCharts(d);
  const figs: string[] = [];
  for (const c of charts) {
    const svg = svgTooltips(await renderSvg(c.spec));
    figs.push(
      `<section><h2>${
        esc(c.title)
      }</h2><figure class="chart" data-chart="${c.id}">${svg}<figcaption>${
        esc(c.caption)
      }</figcaption></figure></section>`,
    );
  }
  const missing: string[] = [];
  if (!d.speed.length) missing.push("speed (the manifest disabled speed measurement)");
  if (!d.layers.length) missing.push("per-layer steps (no layer records)");
  if (!d.pairs.length) missing.push("pairwise significance (fewer than two methods per setting)");
  const nCells = d.table.entries.reduce((s, e) => s + e.cells.length, 0);
  const md = renderMarkdown(d.table).split("\n").slice(1).join("\n");
  const speedMd = d.speed.length ? renderSpeedMarkdown(d.table).join("\n") : "";
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vitq report: ${esc(d.name)}</title>
<style>${CSS}</style></head>
<body><main>
<header><h1>vitq report: ${esc(d.name)}</h1>
<p>${esc(d.table.caption)}.</p>
<p>${nCells} cells; ${d.table.models.length} model${
    d.table.models.length === 1 ? "" : "s"
  }; ${d.table.labels.length} method entr${d.table.labels.length === 1 ? "y" : "ies"}; ${
    esc(d.settings.join(", "))
  }.</p></header>
${figs.join("\n")}
${missing.length ? `<p class="note">Not drawn for this run: ${esc(missing.join("; "))}.</p>` : ""}
<section class="tables"><h2>Tables</h2>
${markdownToHtml(md)}
${markdownToHtml(speedMd)}
</section>
</main>
<footer><h2>Provenance</h2>
${provenance(d.runs)}
<p>Report generated ${
    esc(new Date().toISOString())
  } by vitq (deno task report); charts: Vega-Lite ${esc(vegaLiteVersion)} rendered to SVG by Vega ${
    esc(vega.version)
  }.</p>
</footer>
</body></html>
`;
}

/**
 * Gather, render and write `dir/<name>.html`; returns its path.
 * Throws VitqError when the manifest has no ok cells.
 */
export async function writeReport(
  store: Store,
  name: string,
  dir = REPORT_DIR,
  opts: ReportOptions = {},
): Promise<string> {
  const d = await gatherReport(store, name, opts);
  if (d.table.entries.length === 0) {
    throw new VitqError(`report: manifest ${name} has no stored ok cells`);
  }
  const html = await renderReport(d);
  await Deno.mkdir(dir, { recursive: true });
  const path = `${dir}/${name}.html`;
  await Deno.writeTextFile(path, html);
  return path;
}
