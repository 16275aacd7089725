/**
 * Paper-style tables from the result database: one table per bit setting, rows
 * methods, columns models, FP32 first, best per column marked; mean ± std when a
 * manifest has several calibration seeds. Written as Markdown, LaTeX and CSV.
 *
 * @module
 */
import type { Store } from "./store.ts";
import { VitqError } from "../core/errors.ts";
import { faultPoint } from "../core/fault.ts";
import { isDifferent, mcnemarExact, pairedBootstrap, pairedCounts } from "./stats.ts";
import type { Bits } from "../methods/types.ts";
import { formatSpeedup, type Speedup } from "./speed.ts";

/** Bootstrap settings used for every interval in the tables (recorded in legends). */
export const BOOTSTRAP = { resamples: 1000, seed: 0, level: 0.95 };

/** Aggregated accuracy of one method on one model at one bit setting. */
export interface TableEntry {
  label: string;
  method: string;
  model: string;
  w: number;
  a: number;
  seeds: number;
  top1Mean: number;
  top1Std: number;
  simIps: number | null;
  simLatMs: number | null;
  subsetSize: number;
  approximations: string;
  /** Which graph was timed (fake-quant or integer-only). */
  timedGraph: string;
  /** FP32 images/s timed in the same interleaved loop as the cell's graphs (mean over seeds). */
  fpIps?: number | null;
  /** Largest 1-minute load average while its cells were timed (null: not recorded). */
  speedLoad?: number | null;
  /**
   * Speed-up of the timed graph over FP32 paired per interleaved round (`sim_ratio`): one
   * cell's median with its 95 % interval, or the mean of several seeds' medians (no
   * interval); null where the cells predate it (the ratio of throughputs is shown then).
   */
  simRatio?: Speedup | null;
  /** Deploy graph (QDQ, integer kernels) of the cell, when the method has one (means over seeds). */
  deploy?: {
    /** Paired speed-up over FP32, as `simRatio`. */
    ratio?: Speedup | null;
    ips: number | null;
    latMs: number | null;
    top1: number;
    bytes: number | null;
    intMacShare: number | null;
    fusedOps: string;
  };
  /** Integer kernels ONNX Runtime ran for an integer-only timed graph (`fused_ops`; I-ViT). */
  integerOps?: string;
  /** Cells behind the entry (one per calibration seed), in seed order. */
  cells: { id: string; seed: number }[];
  /** Per-image correctness averaged over the entry's seeds. */
  correct?: Float64Array;
  /** Difference to the best entry of its column, with a paired-bootstrap interval. */
  vsBest?: { diff: number; lo: number; hi: number };
  /** Indistinguishable from the best entry (the interval contains 0). */
  tied?: boolean;
  /** The best entry of its column. */
  best?: boolean;
  /** Achieved size-weighted average weight / activation bits (mean over seeds), when known. */
  wAvg?: number | null;
  aAvg?: number | null;
  /** Packed bytes of the quantized weights (mean over seeds), when known. */
  packedBytes?: number | null;
  /** Mixed-precision candidates (`4,5,6,8`), absent for single precision. */
  mixed?: string | null;
}

/** FP32 baseline per model. */
export interface FpEntry {
  model: string;
  top1: number;
  ips: number | null;
  latMs: number | null;
  n: number;
}

/** Everything needed to render the tables of one manifest. */
export interface TableData {
  manifest: string;
  entries: TableEntry[];
  fp: FpEntry[];
  models: string[];
  labels: string[];
  bits: Bits[];
  caption: string;
  /** Per-image 0/1 correctness of every cell. */
  perCell?: Map<string, Uint8Array>;
}

/** Mean of numeric values (DuckDB bigints included); null if any is missing. */
function meanOrNull(xs: unknown[]): number | null {
  const ns = xs.map((x) => (typeof x === "bigint" ? Number(x) : x));
  if (ns.length === 0 || ns.some((x) => typeof x !== "number" || isNaN(x))) return null;
  return (ns as number[]).reduce((a, b) => a + b, 0) / ns.length;
}

function meanStd(xs: number[]): [number, number] {
  const m = xs.reduce((a, b) => a + b, 0) / xs.length;
  if (xs.length < 2) return [m, 0];
  const v = xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1);
  return [m, Math.sqrt(v)];
}

/**
 * The paired speed-up stored for an entry's cells (`<prefix>_ratio`, `_lo`, `_hi`): one
 * cell's with its interval, several cells' mean without one; null when none has it.
 */
function speedupOf(g: Record<string, unknown>[], prefix: "sim" | "deploy"): Speedup | null {
  const num = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  const xs = g.map((r) => num(r[`${prefix}_ratio`])).filter((x): x is number => x !== null);
  if (xs.length === 0) return null;
  if (g.length === 1) {
    const lo = num(g[0][`${prefix}_ratio_lo`]), hi = num(g[0][`${prefix}_ratio_hi`]);
    return lo !== null && hi !== null ? { x: xs[0], lo, hi } : { x: xs[0] };
  }
  return { x: xs.reduce((a, b) => a + b, 0) / xs.length };
}

/**
 * Gather table data for a manifest name, restricted to `cellIds` when given
 * (so stale cells of an older version of the manifest are left out).
 */
export async function gatherTable(
  store: Store,
  manifest: string,
  cellIds?: string[],
): Promise<TableData> {
  // with explicit cells (a bench run), take exactly those, whichever manifest stored
  // them first (a resumed cell keeps the manifest name of the run that computed it)
  // columns added after a database was written read as null (tables open it read-only)
  const have = new Set(await store.columns("results"));
  const cols = [
    "cell_id, label, method, model, model_sha, w_bits, a_bits, calib_seed, top1, sim_ips",
    "sim_lat_med_ms, subset_size, eval_hash, backend, dataset, split, subset_rule",
    "calib_size, calib_split, approximations, timed_graph, created_at, mixed, w_bits_avg",
    "a_bits_avg, packed_bytes, fp_ips, deploy_ips, deploy_lat_med_ms, deploy_top1",
    "deploy_bytes, int_mac_share, fused_ops, speed_load, sim_ratio, sim_ratio_lo, sim_ratio_hi",
    "deploy_ratio, deploy_ratio_lo, deploy_ratio_hi",
  ].join(", ").split(", ").map((c) => (have.has(c) ? c : `null as ${c}`)).join(", ");
  let rows: Record<string, unknown>[];
  if (cellIds) {
    // in the order of `cellIds` (a plan's order), not of storage: a run merged from shards
    // stored its cells in another order and must give the same tables
    const keep = new Map(cellIds.map((id, i) => [id, i]));
    rows =
      (await store.query(`select ${cols} from results where status = 'ok' order by created_at`))
        .filter((r) => keep.has(r.cell_id as string))
        .sort((x, y) => keep.get(x.cell_id as string)! - keep.get(y.cell_id as string)!);
  } else {
    rows = await store.query(
      `select ${cols} from results where manifest_name = $1 and status = 'ok' order by created_at`,
      [manifest],
    );
  }
  const correctness = await store.correctness(rows.map((r) => r.cell_id as string));
  const groups = new Map<string, Record<string, unknown>[]>();
  // a mixed-precision cell is its own row: its label names the candidates
  for (const r of rows) if (r.mixed) r.label = `${r.label} [mixed ${r.mixed}]`;
  for (const r of rows) {
    const k = `${r.label}|${r.model}|${r.w_bits}|${r.a_bits}`;
    (groups.get(k) ?? groups.set(k, []).get(k)!).push(r);
  }
  const entries: TableEntry[] = [];
  for (const g of groups.values()) {
    const r0 = g[0];
    const [m, s] = meanStd(g.map((r) => r.top1 as number));
    g.sort((x, y) => (x.calib_seed as number) - (y.calib_seed as number));
    const cor = g.map((r) => correctness.get(r.cell_id as string)).filter((c): c is Uint8Array =>
      !!c
    );
    let correct: Float64Array | undefined;
    if (cor.length === g.length && cor.length > 0) {
      correct = new Float64Array(cor[0].length);
      for (const c of cor) for (let i = 0; i < c.length; i++) correct[i] += c[i] / cor.length;
    }
    const ips = g.map((r) => r.sim_ips as number | null).filter((x): x is number =>
      x !== null && !isNaN(x)
    );
    const lat = g.map((r) => r.sim_lat_med_ms as number | null).filter((x): x is number =>
      x !== null && !isNaN(x)
    );
    entries.push({
      label: r0.label as string,
      method: r0.method as string,
      model: r0.model as string,
      w: r0.w_bits as number,
      a: r0.a_bits as number,
      seeds: g.length,
      top1Mean: m,
      top1Std: s,
      simIps: ips.length ? meanStd(ips)[0] : null,
      simLatMs: lat.length ? meanStd(lat)[0] : null,
      subsetSize: r0.subset_size as number,
      approximations: r0.approximations as string,
      timedGraph: (r0.timed_graph as string) ?? "",
      cells: g.map((r) => ({ id: r.cell_id as string, seed: r.calib_seed as number })),
      correct,
      wAvg: meanOrNull(g.map((r) => r.w_bits_avg)),
      aAvg: meanOrNull(g.map((r) => r.a_bits_avg)),
      packedBytes: meanOrNull(g.map((r) => r.packed_bytes)),
      mixed: (r0.mixed as string | null) ?? null,
      fpIps: meanOrNull(g.map((r) => r.fp_ips)),
      speedLoad: g.reduce<number | null>(
        (m, r) => typeof r.speed_load === "number" ? Math.max(m ?? 0, r.speed_load) : m,
        null,
      ),
      simRatio: speedupOf(g, "sim"),
      ...(String(r0.timed_graph ?? "").startsWith("integer") && r0.fused_ops
        ? { integerOps: r0.fused_ops as string }
        : {}),
      deploy: r0.deploy_top1 === null || r0.deploy_top1 === undefined ? undefined : {
        ratio: speedupOf(g, "deploy"),
        ips: meanOrNull(g.map((r) => r.deploy_ips)),
        latMs: meanOrNull(g.map((r) => r.deploy_lat_med_ms)),
        top1: meanOrNull(g.map((r) => r.deploy_top1))!,
        bytes: meanOrNull(g.map((r) => r.deploy_bytes)),
        intMacShare: meanOrNull(g.map((r) => r.int_mac_share)),
        fusedOps: (r0.fused_ops as string | null) ?? "",
      },
    });
  }
  markTies(entries);
  const models = [...new Set(rows.map((r) => r.model as string))];
  const labels = [...new Set(rows.map((r) => r.label as string))];
  const bits = [
    ...new Map(
      rows.map((
        r,
      ) => [`${r.w_bits}/${r.a_bits}`, { w: r.w_bits as number, a: r.a_bits as number }]),
    ).values(),
  ]
    .sort((x, y) => y.w - x.w || y.a - x.a);
  const fp: FpEntry[] = [];
  for (const model of models) {
    const r = rows.find((x) => x.model === model)!;
    const f = await store.query(
      `select top1, ips, lat_med_ms, n from fp_baselines where model_sha = $1 and eval_hash = $2 and backend = $3`,
      [r.model_sha as string, r.eval_hash as string, r.backend as string],
    );
    if (f[0]) {
      const num = (x: unknown) => (typeof x === "number" && !isNaN(x) ? x : null);
      fp.push({
        model,
        top1: f[0].top1 as number,
        ips: num(f[0].ips),
        latMs: num(f[0].lat_med_ms),
        n: f[0].n as number,
      });
    }
  }
  const r0 = rows[0];
  const caption = r0
    ? `Top-1 (%) on ${r0.dataset} ${r0.split} (${r0.subset_rule}, ${r0.subset_size} images); calibration ${r0.calib_size} images from ${r0.calib_split}`
    : "no results";
  return { manifest, entries, fp, models, labels, bits, caption, perCell: correctness };
}

/** Best entry per (bits, model); mark entries whose CI of the difference to it contains 0. */
function markTies(entries: TableEntry[]): void {
  const cols = new Map<string, TableEntry[]>();
  for (const e of entries) {
    const k = `${e.w}/${e.a}/${e.model}`;
    (cols.get(k) ?? cols.set(k, []).get(k)!).push(e);
  }
  for (const col of cols.values()) {
    const best = col.reduce((a, b) => (b.top1Mean > a.top1Mean ? b : a));
    best.best = true;
    for (const e of col) {
      if (e === best || !e.correct || !best.correct || e.correct.length !== best.correct.length) {
        continue;
      }
      const ci = pairedBootstrap(e.correct, best.correct, BOOTSTRAP);
      e.vsBest = { diff: ci.diff, lo: ci.lo, hi: ci.hi };
      e.tied = !isDifferent(ci);
    }
  }
}

/** One row of the pairwise comparison table. */
export interface PairRow {
  a: string;
  b: string;
  diff: number;
  lo: number;
  hi: number;
  /** Exact McNemar p-value on the first calibration seed both entries share. */
  p: number | null;
  seed: number | null;
  different: boolean;
}

/** All pairwise comparisons of the entries of one bit setting and model. */
export function pairRows(d: TableData, w: number, a: number, model: string): PairRow[] {
  const es = d.entries.filter((e) => e.w === w && e.a === a && e.model === model && e.correct)
    .sort((x, y) => y.top1Mean - x.top1Mean);
  const out: PairRow[] = [];
  for (let i = 0; i < es.length; i++) {
    for (let j = i + 1; j < es.length; j++) {
      const A = es[i], B = es[j];
      const ci = pairedBootstrap(A.correct!, B.correct!, BOOTSTRAP);
      const seed = A.cells.map((c) => c.seed).find((s) => B.cells.some((c) => c.seed === s));
      let p: number | null = null;
      if (seed !== undefined && d.perCell) {
        const ca = d.perCell.get(A.cells.find((c) => c.seed === seed)!.id);
        const cb = d.perCell.get(B.cells.find((c) => c.seed === seed)!.id);
        if (ca && cb) {
          const k = pairedCounts(ca, cb);
          p = mcnemarExact(k.onlyA, k.onlyB);
        }
      }
      out.push({
        a: A.label,
        b: B.label,
        diff: ci.diff,
        lo: ci.lo,
        hi: ci.hi,
        p,
        seed: seed ?? null,
        different: isDifferent(ci),
      });
    }
  }
  return out;
}

/** Render the pairwise difference table of one bit setting and model as Markdown. */
export function renderPairs(d: TableData, w: number, a: number, model: string): string {
  const rows = pairRows(d, w, a, model);
  const out = [
    `## ${model} W${w}A${a}: pairwise Top-1 differences (A - B, points)`,
    "",
    `Paired over the same ${d.entries[0]?.subsetSize ?? 0} images. CI: ${
      BOOTSTRAP.level * 100
    }% paired bootstrap over images (${BOOTSTRAP.resamples} resamples, seed ${BOOTSTRAP.seed}) of the seed-averaged correctness; p: exact McNemar test on the first shared calibration seed.`,
    "",
    "| A | B | A - B | 95% CI | McNemar p | different? |",
    "|---|---|---:|---|---:|---|",
  ];
  for (const r of rows) {
    out.push(
      `| ${r.a} | ${r.b} | ${r.diff.toFixed(2)} | [${r.lo.toFixed(2)}, ${r.hi.toFixed(2)}] | ${
        r.p === null ? "–" : r.p < 1e-4 ? r.p.toExponential(1) : r.p.toFixed(4)
      } | ${r.different ? "yes" : "no (tied)"} |`,
    );
  }
  return out.join("\n");
}

const TIE_LEGEND =
  `**Bold**: best quantized entry per column. †: statistically tied with the best (the ${
    BOOTSTRAP.level * 100
  }% paired-bootstrap interval of the Top-1 difference over the same images contains 0; ${BOOTSTRAP.resamples} resamples, seed ${BOOTSTRAP.seed}). ± is the standard deviation over calibration seeds, a different source of spread than image sampling.`;

function fmt(e: TableEntry | undefined): string {
  if (!e) return "–";
  return e.seeds > 1 ? `${e.top1Mean.toFixed(2)} ± ${e.top1Std.toFixed(2)}` : e.top1Mean.toFixed(2);
}

function find(d: TableData, label: string, model: string, w: number, a: number) {
  return d.entries.find((e) => e.label === label && e.model === model && e.w === w && e.a === a);
}

/** Render Markdown: one Top-1 table per bit setting. */
export function renderMarkdown(d: TableData): string {
  const out: string[] = [`# ${d.manifest}`, "", d.caption + ".", ""];
  for (const { w, a } of d.bits) {
    out.push(`## W${w}A${a}: Top-1 (%)`, "");
    out.push(
      `| Method | ${d.models.map(mdText).join(" | ")} |`,
      `|---|${d.models.map(() => "---:").join("|")}|`,
    );
    out.push(
      `| FP32 | ${
        d.models.map((m) => d.fp.find((f) => f.model === m)?.top1.toFixed(2) ?? "–").join(" | ")
      } |`,
    );
    for (const label of d.labels) {
      const cells = d.models.map((m) => {
        const e = find(d, label, m, w, a);
        const s = fmt(e);
        if (e?.best) return `**${s}**`;
        return e?.tied ? `${s} †` : s;
      });
      if (cells.every((c) => c === "–")) continue;
      out.push(`| ${mdText(label)} | ${cells.join(" | ")} |`);
    }
    out.push("", TIE_LEGEND, "");
  }
  out.push(...renderAchievedMarkdown(d));
  return out.join("\n");
}

/**
 * Achieved size-weighted average bits (weights / activations) and packed weight
 * size per entry, as Markdown lines; shown only when some entry is mixed precision
 * or achieved something other than its nominal bits.
 */
export function renderAchievedMarkdown(d: TableData): string[] {
  const off = (e: TableEntry) =>
    !!e.mixed || (e.wAvg != null && Math.abs(e.wAvg - e.w) > 1e-9) ||
    (e.aAvg != null && Math.abs(e.aAvg - e.a) > 1e-9);
  if (!d.entries.some(off)) return [];
  const out = [
    "## Achieved bits: size-weighted average weight / activation bits (packed weight KiB)",
    "",
    "Weights are weighted by element count, activations by elements per image; the packed size counts the quantized weights at their bits (FP parameters and steps not counted). Mixed-precision rows name their candidate bit-widths; their W/A heading is the target.",
    "",
    `| Setting | Method | ${d.models.join(" | ")} |`,
    `|---|---|${d.models.map(() => "---:").join("|")}|`,
  ];
  for (const { w, a } of d.bits) {
    for (const label of d.labels) {
      const cells = d.models.map((m) => {
        const e = find(d, label, m, w, a);
        if (!e || e.wAvg == null || e.aAvg == null) return "–";
        const kib = e.packedBytes != null ? ` (${(e.packedBytes / 1024).toFixed(1)})` : "";
        return `${e.wAvg.toFixed(2)} / ${e.aAvg.toFixed(2)}${kib}`;
      });
      if (cells.every((c) => c === "–")) continue;
      out.push(`| W${w}A${a} | ${label} | ${cells.join(" | ")} |`);
    }
  }
  out.push("");
  return out;
}

/** Render the speed and deployment tables as Markdown lines. */
export function renderSpeedMarkdown(d: TableData): string[] {
  const out: string[] = [
    "## Speed: images/s at the manifest's batch size (batch-1 median latency, ms) and throughput relative to FP32",
    "",
    "Timed graphs: FP32 = the original graph; fake-quant = the method's quantize-dequantize graph in float32, which simulates quantization and is not faster than FP32; deploy = the same quantizers as a QDQ graph whose integer codes ONNX Runtime runs in fused integer kernels (quantizers that are not plain uniform stay float there); integer-only = I-ViT's integer graph. A cell's FP32, fake-quant and deploy graphs are timed in one interleaved loop (round-robin repetitions), and its ratios are to that FP32 timing: the median over rounds of FP32's batch time over the graph's in the same round, with its distribution-free 95 % interval in brackets where the cell ran 6 or more repetitions (several calibration seeds: the mean of their medians; cells stored before paired ratios: images/s over FP32's). The FP32 row is the baseline run's own timing. On models whose activations outgrow the cache (ViT-S-sized and larger; none of the shipped models) the deploy and integer-only graphs run the batch in chunks of a few images (an ONNX Loop; deploy_kind says so) while FP32 and fake-quant run as given: chunking speeds FP32 up too (1.17-1.23x on a ViT-S-sized graph), so compare against FP32 chunked alike with tools/bench_deploy.ts.",
    "",
    `| Graph | ${d.models.map(mdText).join(" | ")} |`,
    `|---|${d.models.map(() => "---:").join("|")}|`,
  ];
  const sp = (ips: number | null, lat: number | null) =>
    ips === null ? "–" : `${ips.toFixed(0)} (${lat?.toFixed(2) ?? "–"})`;
  out.push(`| FP32 | ${
    d.models.map((m) => {
      const f = d.fp.find((x) => x.model === m);
      return f ? sp(f.ips, f.latMs) : "–";
    }).join(" | ")
  } |`);
  const fpOf = (e: TableEntry) => e.fpIps ?? d.fp.find((x) => x.model === e.model)?.ips ?? null;
  // the stored paired speed-up (with its interval), else the ratio of throughputs
  const ratio = (ips: number | null, fp: number | null, paired?: Speedup | null) =>
    paired
      ? ` ${formatSpeedup(paired)}`
      : ips !== null && fp
      ? ` ${formatSpeedup({ x: ips / fp })}`
      : "";
  for (const { w, a } of d.bits) {
    for (const label of d.labels) {
      const es = d.models.map((m) => find(d, label, m, w, a));
      const fake = es.map((
        e,
      ) => (!e || e.simIps === null
        ? "–"
        : `${sp(e.simIps, e.simLatMs)}${ratio(e.simIps, fpOf(e), e.simRatio)}`)
      );
      if (fake.every((c) => c === "–")) continue;
      const kind = es.find((e) => e)?.timedGraph ?? "";
      out.push(
        `| ${mdText(label)} W${w}A${a} (${
          kind.startsWith("integer") ? "integer-only" : "fake-quant"
        }) | ${fake.join(" | ")} |`,
      );
      const dep = es.map((e) =>
        !e?.deploy || e.deploy.ips === null
          ? "–"
          : `${sp(e.deploy.ips, e.deploy.latMs)}${ratio(e.deploy.ips, fpOf(e), e.deploy.ratio)}`
      );
      if (!dep.every((c) => c === "–")) {
        out.push(`| ${label} W${w}A${a} (deploy) | ${dep.join(" | ")} |`);
      }
    }
  }
  const loads = d.entries.map((e) => e.speedLoad).filter((x): x is number => typeof x === "number");
  if (loads.length) {
    out.push(
      "",
      `Machine load while timing (1-minute load average, /proc/loadavg): ${
        Math.min(...loads).toFixed(2)
      } to ${
        Math.max(...loads).toFixed(2)
      }. A load near or above the number of threads means these figures were taken under load.`,
    );
  }
  out.push("");
  const deployed = d.entries.filter((e) => e.deploy);
  if (deployed.length) {
    out.push(
      "## Deploy graphs: Top-1 against the fake-quant graph, integer share, size, fused kernels",
      "",
      "Top-1 of the deploy graph is measured on the same images as the fake-quant graph. Integer MACs: share of the linear and attention-matmul multiply-accumulates whose operands are both integer codes. Size: the deploy graph's bytes (weights as 8-bit codes). Kernels: integer operators in ONNX Runtime's optimized deploy graph.",
      "",
      "| Cell | Model | fake-quant Top-1 | deploy Top-1 | integer MACs | bytes | fused integer kernels |",
      "|---|---|---:|---:|---:|---:|---|",
    );
    for (const e of deployed) {
      const dd = e.deploy!;
      out.push(
        `| ${e.label} W${e.w}A${e.a} | ${e.model} | ${e.top1Mean.toFixed(2)} | ${
          dd.top1.toFixed(2)
        } | ${dd.intMacShare === null ? "–" : `${(100 * dd.intMacShare).toFixed(1)} %`} | ${
          dd.bytes?.toFixed(0) ?? "–"
        } | ${dd.fusedOps || "none"} |`,
      );
    }
    out.push("");
  }
  const integerOnly = d.entries.filter((e) => e.integerOps);
  if (integerOnly.length) {
    out.push(
      "## Integer-only graphs: the integer kernels ONNX Runtime ran",
      "",
      "From ONNX Runtime's optimized graph (inside a batch-chunking Loop too); everything else in these graphs is integer elementwise arithmetic and table lookups.",
      "",
      "| Cell | Model | Top-1 | integer kernels |",
      "|---|---|---:|---|",
      ...integerOnly.map((e) =>
        `| ${e.label} W${e.w}A${e.a} | ${e.model} | ${e.top1Mean.toFixed(2)} | ${e.integerOps} |`
      ),
      "",
    );
  }
  return out;
}

/** A Markdown table cell: `|` escaped, line breaks and other control characters as spaces. */
export function mdText(s: string): string {
  // deno-lint-ignore no-control-regex
  return s.replace(/[\u0000-\u001f\u007f]+/g, " ").replaceAll("|", "\\|");
}

function texEscape(s: string): string {
  return s.replace(/([_%&#$])/g, "\\$1");
}

/** Render LaTeX (booktabs), one table per bit setting. */
export function renderLatex(d: TableData): string {
  const out: string[] = [`% ${d.manifest}: generated by vitq (deno task tables); do not edit`];
  for (const { w, a } of d.bits) {
    out.push(
      "\\begin{table}[t]",
      "\\centering",
      `\\caption{W${w}A${a}. ${
        texEscape(d.caption)
      }. Bold: best quantized entry per column; $\\dagger$: tied with the best (${
        BOOTSTRAP.level * 100
      }\\% paired-bootstrap interval of the difference contains 0).}`,
      `\\begin{tabular}{l${"r".repeat(d.models.length)}}`,
      "\\toprule",
      `Method & ${d.models.map(texEscape).join(" & ")} \\\\`,
      "\\midrule",
      `FP32 & ${
        d.models.map((m) => d.fp.find((f) => f.model === m)?.top1.toFixed(2) ?? "--").join(" & ")
      } \\\\`,
      "\\midrule",
    );
    for (const label of d.labels) {
      const cells = d.models.map((m) => {
        const e = find(d, label, m, w, a);
        if (!e) return "--";
        const s = fmt(e).replace("±", "$\\pm$");
        if (e.best) return `\\textbf{${s}}`;
        return e.tied ? `${s}$^\\dagger$` : s;
      });
      if (cells.every((c) => c === "--")) continue;
      out.push(`${texEscape(label)} & ${cells.join(" & ")} \\\\`);
    }
    out.push("\\bottomrule", "\\end{tabular}", "\\end{table}", "");
  }
  return out.join("\n");
}

/** Render the accuracy CSV (deterministic: no timings). */
export function renderCsv(d: TableData): string {
  const out = [
    "w_bits,a_bits,method,label,model,seeds,top1_mean,top1_std,fp_top1,subset_size,mark,diff_to_best,ci_lo,ci_hi",
  ];
  for (const { w, a } of d.bits) {
    for (const label of d.labels) {
      for (const m of d.models) {
        const e = find(d, label, m, w, a);
        if (!e) continue;
        const fp = d.fp.find((f) => f.model === m)?.top1;
        const mark = e.best ? "best" : e.tied ? "tied" : "";
        out.push(
          [
            w,
            a,
            e.method,
            JSON.stringify(label),
            m,
            e.seeds,
            e.top1Mean.toFixed(4),
            e.top1Std.toFixed(4),
            fp?.toFixed(4) ?? "",
            e.subsetSize,
            mark,
            e.vsBest?.diff.toFixed(4) ?? "",
            e.vsBest?.lo.toFixed(4) ?? "",
            e.vsBest?.hi.toFixed(4) ?? "",
          ].join(","),
        );
      }
    }
  }
  return out.join("\n") + "\n";
}

/** Render the speed CSV. */
export function renderSpeedCsv(d: TableData): string {
  const out = [
    "w_bits,a_bits,label,model,graph,images_per_s,lat_med_ms,fp32_images_per_s,top1,speedup,speedup_lo,speedup_hi",
  ];
  const su = (
    r: Speedup | null | undefined,
  ) => [r?.x.toFixed(3) ?? "", r?.lo?.toFixed(3) ?? "", r?.hi?.toFixed(3) ?? ""];
  for (const f of d.fp) {
    out.push(
      [
        "",
        "",
        "FP32",
        f.model,
        "fp32",
        f.ips?.toFixed(1) ?? "",
        f.latMs?.toFixed(3) ?? "",
        f.ips?.toFixed(1) ?? "",
        f.top1.toFixed(2),
        "",
        "",
        "",
      ].join(","),
    );
  }
  for (const e of d.entries) {
    out.push(
      [
        e.w,
        e.a,
        JSON.stringify(e.label),
        e.model,
        e.timedGraph.startsWith("integer") ? "integer-only" : "fake-quant",
        e.simIps?.toFixed(1) ?? "",
        e.simLatMs?.toFixed(3) ?? "",
        e.fpIps?.toFixed(1) ?? "",
        e.top1Mean.toFixed(2),
        ...su(e.simRatio),
      ].join(","),
    );
    if (e.deploy) {
      out.push(
        [
          e.w,
          e.a,
          JSON.stringify(e.label),
          e.model,
          "deploy",
          e.deploy.ips?.toFixed(1) ?? "",
          e.deploy.latMs?.toFixed(3) ?? "",
          e.fpIps?.toFixed(1) ?? "",
          e.deploy.top1.toFixed(2),
          ...su(e.deploy.ratio),
        ].join(","),
      );
    }
  }
  return out.join("\n") + "\n";
}

/** The files of one table set, in the order they are written. */
export const TABLE_FILES = ["top1.md", "speed.md", "top1.tex", "top1.csv", "speed.csv"];

function splitDir(dir: string): { parent: string; base: string; dir: string } {
  const d = dir.replace(/\/+$/, "");
  if (d.trim() === "" || /(^|\/)\.{1,2}$/.test(d)) {
    throw new VitqError(`tables folder "${dir}": name a folder such as results/tables/<name>`);
  }
  const i = d.lastIndexOf("/");
  return { parent: i < 0 ? "." : d.slice(0, i) || "/", base: d.slice(i + 1), dir: d };
}

async function exists(p: string): Promise<boolean> {
  try {
    await Deno.lstat(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Finish or undo an interrupted {@link writeTables} on `dir`: a complete new set
 * left beside a missing folder is moved into place; leftovers are removed.
 */
export async function recoverTables(dir: string): Promise<void> {
  const { parent, base, dir: d } = splitDir(dir);
  const fresh = `${parent}/.${base}.new`, old = `${parent}/.${base}.old`;
  if (!(await exists(d)) && (await exists(`${fresh}/.complete`))) {
    await Deno.rename(fresh, d);
  }
  for (const p of [fresh, old]) if (await exists(p)) await Deno.remove(p, { recursive: true });
  if (await exists(`${d}/.complete`)) await Deno.remove(`${d}/.complete`);
}

/**
 * Write top1.md, top1.tex, top1.csv (accuracy: deterministic) and speed.md,
 * speed.csv (timings of this machine) under `dir`; returns both Markdown texts.
 * The set is written to a sibling folder and swapped in by rename, so a reader
 * (or a kill at any point) sees the old set or the new one, never a mix; other
 * files in `dir` are carried over.
 */
export async function writeTables(d: TableData, dir: string): Promise<string> {
  const { parent, base, dir: target } = splitDir(dir);
  await Deno.mkdir(parent, { recursive: true });
  await recoverTables(target);
  const fresh = `${parent}/.${base}.new`, old = `${parent}/.${base}.old`;
  const md = renderMarkdown(d);
  const speed = renderSpeedMarkdown(d).join("\n");
  const texts: Record<string, string> = {
    "top1.md": md + "\n",
    "speed.md": speed + "\n",
    "top1.tex": renderLatex(d),
    "top1.csv": renderCsv(d),
    "speed.csv": renderSpeedCsv(d),
  };
  await Deno.mkdir(fresh);
  for (const f of TABLE_FILES) {
    await Deno.writeTextFile(`${fresh}/${f}`, texts[f]);
    faultPoint("tables-write");
  }
  const had = await exists(target);
  if (had) {
    for await (const e of Deno.readDir(target)) {
      if (!TABLE_FILES.includes(e.name) && e.isFile) {
        await Deno.copyFile(`${target}/${e.name}`, `${fresh}/${e.name}`);
      }
    }
  }
  await Deno.writeTextFile(`${fresh}/.complete`, "");
  if (had) await Deno.rename(target, old);
  faultPoint("tables-swap");
  await Deno.rename(fresh, target);
  await Deno.remove(`${target}/.complete`);
  if (had) await Deno.remove(old, { recursive: true });
  return `${md}\n${speed}`;
}
