/**
 * Accuracy against achieved average bits for one model: every ok cell of the
 * result database on that model (uniform and mixed precision), one series per
 * label, as a Markdown table (`curve.md`), a CSV (`curve.csv`) and an SVG plot
 * (`curve.svg`, drawn directly: x = achieved size-weighted average activation
 * bits, y = Top-1).
 *
 * `deno run -A tools/mptq_curve.ts --db FILE --model vit_fmnist --labels "MPTQ-ViT,PTQ4ViT,minmax" --out results/tables/mptq-curve`
 *
 * @module
 */
import { parseArgs } from "node:util";
import { Store } from "../bench/store.ts";
import { VitqError } from "../core/errors.ts";

interface Point {
  series: string;
  target: string;
  w: number;
  a: number;
  top1: number;
}

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

/** The points of `model`, restricted to `labels` (each label's uniform and mixed cells). */
async function points(store: Store, model: string, labels: string[]): Promise<Point[]> {
  const rows = await store.query(
    `select label, w_bits, a_bits, mixed, w_bits_avg, a_bits_avg, top1 from results
      where status = 'ok' and model = $1 order by w_bits, a_bits`,
    [model],
  );
  return rows.filter((r) => labels.includes(r.label as string)).map((r) => ({
    series: r.mixed ? `${r.label} [mixed ${r.mixed}]` : `${r.label}`,
    target: `W${r.w_bits}A${r.a_bits}`,
    w: Number(r.w_bits_avg ?? r.w_bits),
    a: Number(r.a_bits_avg ?? r.a_bits),
    top1: r.top1 as number,
  }));
}

function svg(ps: Point[], model: string): string {
  const W = 640, H = 400, L = 60, R = 250, T = 30, B = 50;
  const xs = ps.map((p) => p.a), ys = ps.map((p) => p.top1);
  const x0 = Math.floor(Math.min(...xs)), x1 = Math.ceil(Math.max(...xs));
  const y0 = Math.floor(Math.min(...ys)), y1 = Math.ceil(Math.max(...ys));
  const sx = (x: number) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y: number) => H - B - ((y - y0) / (y1 - y0 || 1)) * (H - T - B);
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${L}" y="18">${model}: Top-1 (%) against achieved average activation bits</text>`,
    `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="black"/>`,
    `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="black"/>`,
  ];
  for (let x = x0; x <= x1; x++) {
    out.push(
      `<text x="${sx(x)}" y="${H - B + 16}" text-anchor="middle">${x}</text>`,
      `<line x1="${sx(x)}" y1="${H - B}" x2="${sx(x)}" y2="${H - B + 4}" stroke="black"/>`,
    );
  }
  const step = Math.max(1, Math.ceil((y1 - y0) / 8));
  for (let y = y0; y <= y1; y += step) {
    out.push(
      `<text x="${L - 6}" y="${sy(y) + 4}" text-anchor="end">${y}</text>`,
      `<line x1="${L}" y1="${sy(y)}" x2="${W - R}" y2="${sy(y)}" stroke="#ddd"/>`,
    );
  }
  out.push(`<text x="${(L + W - R) / 2}" y="${H - 12}" text-anchor="middle">average bits</text>`);
  const series = [...new Set(ps.map((p) => p.series))];
  series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length];
    const pts = ps.filter((p) => p.series === s).sort((a, b) => a.a - b.a);
    out.push(
      `<polyline fill="none" stroke="${c}" stroke-width="2" points="${
        pts.map((p) => `${sx(p.a).toFixed(1)},${sy(p.top1).toFixed(1)}`).join(" ")
      }"/>`,
    );
    for (const p of pts) {
      out.push(
        `<circle cx="${sx(p.a).toFixed(1)}" cy="${sy(p.top1).toFixed(1)}" r="3" fill="${c}"/>`,
      );
    }
    out.push(
      `<rect x="${W - R + 15}" y="${T + i * 18}" width="12" height="3" fill="${c}"/>`,
      `<text x="${W - R + 32}" y="${T + i * 18 + 5}">${s}</text>`,
    );
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}

if (import.meta.main) {
  try {
    const { values: a } = parseArgs({
      args: Deno.args,
      options: {
        db: { type: "string" },
        model: { type: "string" },
        labels: { type: "string" },
        out: { type: "string" },
      },
    });
    if (!a.db || !a.model || !a.labels || !a.out) {
      throw new VitqError(
        "usage: deno run -A tools/mptq_curve.ts --db FILE --model NAME --labels A,B,... --out DIR",
      );
    }
    const store = await Store.open(a.db, { readOnly: true });
    const ps = await points(store, a.model, a.labels.split(","));
    store.close();
    if (ps.length === 0) {
      throw new VitqError(`--db ${a.db}: no cells of ${a.model} with those labels`);
    }
    const series = [...new Set(ps.map((p) => p.series))];
    const targets = [...new Set(ps.map((p) => p.target))];
    const md = [
      `# ${a.model}: Top-1 (%) against average bits`,
      "",
      "Each cell: Top-1 (achieved size-weighted average weight / activation bits). Mixed-precision rows choose bits per tensor to meet the target in the column heading; uniform rows are single precision at it.",
      "",
      `| Method | ${targets.join(" | ")} |`,
      `|---|${targets.map(() => "---:").join("|")}|`,
      ...series.map((s) =>
        `| ${s} | ${
          targets.map((t) => {
            const p = ps.find((x) => x.series === s && x.target === t);
            return p ? `${p.top1.toFixed(2)} (${p.w.toFixed(2)} / ${p.a.toFixed(2)})` : "–";
          }).join(" | ")
        } |`
      ),
      "",
    ].join("\n");
    const csv = ["series,target,w_bits_avg,a_bits_avg,top1"].concat(
      ps.map((p) => [JSON.stringify(p.series), p.target, p.w, p.a, p.top1.toFixed(4)].join(",")),
    ).join("\n") + "\n";
    await Deno.mkdir(a.out, { recursive: true });
    await Deno.writeTextFile(`${a.out}/curve.md`, md);
    await Deno.writeTextFile(`${a.out}/curve.csv`, csv);
    await Deno.writeTextFile(`${a.out}/curve.svg`, svg(ps, a.model));
    console.log(md);
  } catch (e) {
    if (e instanceof VitqError) {
      console.error(`error: ${e.message}`);
      Deno.exit(2);
    }
    throw e;
  }
}
