/**
 * Paper-style tables from the result database: one table per bit setting, rows
 * methods, columns models, FP32 first, best per column marked; mean ± std when a
 * manifest has several calibration seeds. Written as Markdown, LaTeX and CSV.
 *
 * @module
 */
import type { Store } from "./store.ts";

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
  bits: { w: number; a: number }[];
  caption: string;
}

function meanStd(xs: number[]): [number, number] {
  const m = xs.reduce((a, b) => a + b, 0) / xs.length;
  if (xs.length < 2) return [m, 0];
  const v = xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1);
  return [m, Math.sqrt(v)];
}

/**
 * Gather table data for a manifest name, restricted to `cellIds` when given
 * (so stale cells of an older version of the manifest are left out).
 */
export async function gatherTable(store: Store, manifest: string, cellIds?: string[]): Promise<TableData> {
  let rows = await store.query(
    `select cell_id, label, method, model, model_sha, w_bits, a_bits, calib_seed, top1, sim_ips,
            sim_lat_med_ms, subset_size, eval_hash, backend, dataset, split, subset_rule,
            calib_size, calib_split, approximations, created_at
       from results where manifest_name = $1 and status = 'ok' order by created_at`,
    [manifest],
  );
  if (cellIds) {
    const keep = new Set(cellIds);
    rows = rows.filter((r) => keep.has(r.cell_id as string));
  }
  const groups = new Map<string, Record<string, unknown>[]>();
  for (const r of rows) {
    const k = `${r.label}|${r.model}|${r.w_bits}|${r.a_bits}`;
    (groups.get(k) ?? groups.set(k, []).get(k)!).push(r);
  }
  const entries: TableEntry[] = [];
  for (const g of groups.values()) {
    const r0 = g[0];
    const [m, s] = meanStd(g.map((r) => r.top1 as number));
    const ips = g.map((r) => r.sim_ips as number | null).filter((x): x is number => x !== null && !isNaN(x));
    const lat = g.map((r) => r.sim_lat_med_ms as number | null).filter((x): x is number => x !== null && !isNaN(x));
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
    });
  }
  const models = [...new Set(rows.map((r) => r.model as string))];
  const labels = [...new Set(rows.map((r) => r.label as string))];
  const bits = [...new Map(rows.map((r) => [`${r.w_bits}/${r.a_bits}`, { w: r.w_bits as number, a: r.a_bits as number }])).values()]
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
      fp.push({ model, top1: f[0].top1 as number, ips: num(f[0].ips), latMs: num(f[0].lat_med_ms), n: f[0].n as number });
    }
  }
  const r0 = rows[0];
  const caption = r0
    ? `Top-1 (%) on ${r0.dataset} ${r0.split} (${r0.subset_rule}, ${r0.subset_size} images); calibration ${r0.calib_size} images from ${r0.calib_split}`
    : "no results";
  return { manifest, entries, fp, models, labels, bits, caption };
}

function fmt(e: TableEntry | undefined): string {
  if (!e) return "–";
  return e.seeds > 1 ? `${e.top1Mean.toFixed(2)} ± ${e.top1Std.toFixed(2)}` : e.top1Mean.toFixed(2);
}

function bestPerModel(d: TableData, w: number, a: number): Map<string, number> {
  const best = new Map<string, number>();
  for (const e of d.entries) {
    if (e.w !== w || e.a !== a) continue;
    if (!best.has(e.model) || e.top1Mean > best.get(e.model)!) best.set(e.model, e.top1Mean);
  }
  return best;
}

function find(d: TableData, label: string, model: string, w: number, a: number) {
  return d.entries.find((e) => e.label === label && e.model === model && e.w === w && e.a === a);
}

/** Render Markdown: one Top-1 table per bit setting. */
export function renderMarkdown(d: TableData): string {
  const out: string[] = [`# ${d.manifest}`, "", d.caption + ".", ""];
  for (const { w, a } of d.bits) {
    const best = bestPerModel(d, w, a);
    out.push(`## W${w}A${a}: Top-1 (%)`, "");
    out.push(`| Method | ${d.models.join(" | ")} |`, `|---|${d.models.map(() => "---:").join("|")}|`);
    out.push(`| FP32 | ${d.models.map((m) => d.fp.find((f) => f.model === m)?.top1.toFixed(2) ?? "–").join(" | ")} |`);
    for (const label of d.labels) {
      const cells = d.models.map((m) => {
        const e = find(d, label, m, w, a);
        const s = fmt(e);
        return e && e.top1Mean === best.get(m) ? `**${s}**` : s;
      });
      if (cells.every((c) => c === "–")) continue;
      out.push(`| ${label} | ${cells.join(" | ")} |`);
    }
    out.push("", "Bold: best quantized entry per column.", "");
  }
  return out.join("\n");
}

/** Render the speed table as Markdown lines. */
export function renderSpeedMarkdown(d: TableData): string[] {
  const out: string[] = [
    "## Speed: images/s at the manifest's batch size (batch-1 median latency, ms)",
    "",
    "Timed graphs: FP32 = the original graph; methods = their fake-quant graph (quantize-dequantize in float32), which simulates quantization and is not faster than FP32.",
    "",
    `| Graph | ${d.models.join(" | ")} |`,
    `|---|${d.models.map(() => "---:").join("|")}|`,
  ];
  const sp = (ips: number | null, lat: number | null) => ips === null ? "–" : `${ips.toFixed(0)} (${lat?.toFixed(2) ?? "–"})`;
  out.push(`| FP32 | ${d.models.map((m) => { const f = d.fp.find((x) => x.model === m); return f ? sp(f.ips, f.latMs) : "–"; }).join(" | ")} |`);
  for (const { w, a } of d.bits) {
    for (const label of d.labels) {
      const cells = d.models.map((m) => { const e = find(d, label, m, w, a); return e ? sp(e.simIps, e.simLatMs) : "–"; });
      if (cells.every((c) => c === "–")) continue;
      out.push(`| ${label} W${w}A${a} (fake-quant) | ${cells.join(" | ")} |`);
    }
  }
  out.push("");
  return out;
}

function texEscape(s: string): string {
  return s.replace(/([_%&#$])/g, "\\$1");
}

/** Render LaTeX (booktabs), one table per bit setting. */
export function renderLatex(d: TableData): string {
  const out: string[] = [`% ${d.manifest}: generated by vitq (deno task tables); do not edit`];
  for (const { w, a } of d.bits) {
    const best = bestPerModel(d, w, a);
    out.push(
      "\\begin{table}[t]",
      "\\centering",
      `\\caption{W${w}A${a}. ${texEscape(d.caption)}. Bold: best quantized entry per column.}`,
      `\\begin{tabular}{l${"r".repeat(d.models.length)}}`,
      "\\toprule",
      `Method & ${d.models.map(texEscape).join(" & ")} \\\\`,
      "\\midrule",
      `FP32 & ${d.models.map((m) => d.fp.find((f) => f.model === m)?.top1.toFixed(2) ?? "--").join(" & ")} \\\\`,
      "\\midrule",
    );
    for (const label of d.labels) {
      const cells = d.models.map((m) => {
        const e = find(d, label, m, w, a);
        if (!e) return "--";
        const s = fmt(e).replace("±", "$\\pm$");
        return e.top1Mean === best.get(m) ? `\\textbf{${s}}` : s;
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
  const out = ["w_bits,a_bits,method,label,model,seeds,top1_mean,top1_std,fp_top1,subset_size"];
  for (const { w, a } of d.bits) {
    for (const label of d.labels) {
      for (const m of d.models) {
        const e = find(d, label, m, w, a);
        if (!e) continue;
        const fp = d.fp.find((f) => f.model === m)?.top1;
        out.push(
          [w, a, e.method, JSON.stringify(label), m, e.seeds, e.top1Mean.toFixed(4), e.top1Std.toFixed(4), fp?.toFixed(4) ?? "", e.subsetSize].join(","),
        );
      }
    }
  }
  return out.join("\n") + "\n";
}

/** Render the speed CSV. */
export function renderSpeedCsv(d: TableData): string {
  const out = ["w_bits,a_bits,label,model,graph,images_per_s,lat_med_ms"];
  for (const f of d.fp) out.push(["", "", "FP32", f.model, "fp32", f.ips?.toFixed(1) ?? "", f.latMs?.toFixed(3) ?? ""].join(","));
  for (const e of d.entries) {
    out.push([e.w, e.a, JSON.stringify(e.label), e.model, "fake-quant", e.simIps?.toFixed(1) ?? "", e.simLatMs?.toFixed(3) ?? ""].join(","));
  }
  return out.join("\n") + "\n";
}

/**
 * Write top1.md, top1.tex, top1.csv (accuracy: deterministic) and speed.md,
 * speed.csv (timings of this machine) under `dir`; returns both Markdown texts.
 */
export async function writeTables(d: TableData, dir: string): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  const md = renderMarkdown(d);
  const speed = renderSpeedMarkdown(d).join("\n");
  await Deno.writeTextFile(`${dir}/top1.md`, md + "\n");
  await Deno.writeTextFile(`${dir}/speed.md`, speed + "\n");
  await Deno.writeTextFile(`${dir}/top1.tex`, renderLatex(d));
  await Deno.writeTextFile(`${dir}/top1.csv`, renderCsv(d));
  await Deno.writeTextFile(`${dir}/speed.csv`, renderSpeedCsv(d));
  return `${md}\n${speed}`;
}
