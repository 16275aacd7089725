/**
 * The outlier stress variants: the transform keeps the FP function (logits
 * within 1e-4 relative, identical Top-1 on the full test split), the chosen
 * channels' ranges are at least 20x the median channel range on the images the
 * card names, the shipped variants are exactly what the tool makes from the
 * originals, and the statistics command stores its rows.
 */
import assert from "node:assert/strict";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import {
  applyOutliers,
  chooseOutliers,
  compareLogits,
  makeOutliers,
  OUTLIER_DEFAULTS,
  outlierTargets,
  siteOutlierStats,
} from "../core/onnx/outliers.ts";
import { channelRanges, collectChannelStats, median } from "../core/runtime/channel_stats.ts";
import { resolveModel } from "../core/models.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { Store } from "../bench/store.ts";
import { cli, runtime, tmpDir } from "./helpers.ts";

const MODELS = ["vit_fmnist", "deit_fmnist", "swin_fmnist"];

interface LnCard {
  site: string;
  consumers: string[];
  channels: number[];
  factors: number[];
}

async function load(name: string) {
  const m = await resolveModel(name, "test");
  const bytes = await Deno.readFile(m.path);
  const graph = Graph.fromBytes(bytes, m.path);
  return { m, bytes, graph, sites: findSites(graph, m.path) };
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

for (const name of MODELS) {
  Deno.test(`outliers: ${name}_ol computes the same function on the full test split and has >= 20x channels`, async () => {
    const rt = await runtime();
    const orig = await load(name);
    const ol = await load(`${name}_ol`);
    const test = await loadFashionMnist(SHIPPED_FMNIST, "test");
    const src = makeSource(test, range(test.ids.length), orig.m.card);
    const c = await compareLogits(rt, orig.bytes, ol.bytes, src, 250);
    assert.deepEqual(c.n, 10000);
    assert(c.maxRelative <= 1e-4, `max relative logit difference ${c.maxRelative}`);
    assert.deepEqual(c.top1Differs, 0);

    // ratios on the images the card names
    const card = ol.m.card.outliers as { layernorms: LnCard[]; measured_on: string };
    const n = Number(card.measured_on.match(/first (\d+) images/)![1]);
    const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
    const calib = makeSource(train, range(n), ol.m.card);
    const lnSites = ol.sites.filter((s) => s.kind === "ln");
    const byId = new Map(lnSites.map((s) => [s.id, s]));
    const stats = await collectChannelStats(
      rt,
      ol.graph,
      card.layernorms.map((l) => byId.get(l.site)!.output),
      calib,
      128,
    );
    let chosen = 0;
    for (const l of card.layernorms) {
      const r = channelRanges(stats.get(byId.get(l.site)!.output)!);
      const med = median(r);
      for (const ch of l.channels) {
        assert(r[ch] / med >= 20, `${name}_ol ${l.site} channel ${ch}: ratio ${r[ch] / med}`);
        chosen++;
      }
      assert(l.channels.length >= 2 && l.channels.length <= 4);
    }
    // every LayerNorm feeding only linear layers was transformed
    assert.deepEqual(card.layernorms.length, outlierTargets(orig.graph, orig.sites).targets.length);
    assert(chosen >= 2 * card.layernorms.length);
  });
}

Deno.test("outliers: targets follow each LayerNorm to every linear layer it feeds, with the weight's input axis", async () => {
  const vit = await load("vit_fmnist");
  const t = outlierTargets(vit.graph, vit.sites);
  assert.deepEqual(t.skipped, []);
  const qkv = t.targets.find((x) => x.ln.id === "b0.norm1")!;
  assert.deepEqual(qkv.consumers.map((c) => [c.site.id, c.inAxis]), [["b0.qkv", 0]]);

  const deit = await load("deit_fmnist");
  const final = outlierTargets(deit.graph, deit.sites).targets.find((x) => x.ln.id === "final.ln")!;
  // both heads after the final norm; Gemm transB weights are [out, in]
  assert.deepEqual(final.consumers.map((c) => [c.site.id, c.inAxis]).sort(), [["head", 1], [
    "head_1",
    1,
  ]]);

  const swin = await load("swin_fmnist");
  const ts = outlierTargets(swin.graph, swin.sites);
  // the embedding norm feeds a LayerNorm and the residual stream: left alone
  assert.deepEqual(ts.skipped.map((s) => s.site), ["embed.ln"]);
  const ids = ts.targets.map((x) => x.ln.id);
  assert(ids.includes("b3.merge") && ids.includes("final.ln"));
  const merge = ts.targets.find((x) => x.ln.id === "b3.merge")!;
  assert.deepEqual(merge.consumers.map((c) => c.site.id), ["b3.reduction"]);
});

Deno.test("outliers: the shipped ViT variant is what the transform makes from the card's seed; another seed differs", async () => {
  const rt = await runtime();
  const orig = await load("vit_fmnist");
  const ol = await load("vit_fmnist_ol");
  const card = ol.m.card.outliers as { seed: number; layernorms: LnCard[]; measured_on: string };
  const n = Number(card.measured_on.match(/first (\d+) images/)![1]);
  const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
  const calib = makeSource(train, range(n), orig.m.card);
  const made = await makeOutliers(rt, orig.graph, orig.sites, calib, 128, {
    ...OUTLIER_DEFAULTS,
    seed: card.seed,
  });
  assert.deepEqual(made.layerNorms.map((l) => l.channels), card.layernorms.map((l) => l.channels));
  assert.deepEqual(made.layerNorms.map((l) => l.factors), card.layernorms.map((l) => l.factors));
  for (const [k, t] of made.graph.initializers) {
    assert.deepEqual(t.raw, ol.graph.initializers.get(k)!.raw, `initializer ${k}`);
  }
  // another seed: other channels, from the same measured ranges
  const { targets } = outlierTargets(orig.graph, orig.sites);
  const ranges = new Map(made.layerNorms.map((l, i) => {
    const r = new Float64Array(64).fill(l.medianBefore);
    l.channels.forEach((c, j) => (r[c] = l.rangesBefore[j]));
    return [targets[i].ln.output, r];
  }));
  const other = chooseOutliers(targets, ranges, { ...OUTLIER_DEFAULTS, seed: card.seed + 1 });
  assert.notDeepEqual(other.map((l) => l.channels), made.layerNorms.map((l) => l.channels));
  // a factor scales gamma and beta and divides the consumer's weight rows
  const g2 = applyOutliers(orig.graph, targets, other);
  const l0 = other[0], t0 = targets[0];
  const c = l0.channels[0], f = l0.factors[0];
  const g = (gr: Graph, n: string) => gr.initializers.get(n)!.float32();
  assert.deepEqual(g(g2, t0.gamma)[c], Math.fround(g(orig.graph, t0.gamma)[c] * f));
  const w = t0.consumers[0].site.weight!, cols = orig.graph.initializers.get(w)!.dims[1];
  assert.deepEqual(g(g2, w)[c * cols + 5], Math.fround(g(orig.graph, w)[c * cols + 5] / f));
});

Deno.test("outliers: statistics see the outliers of the variant and none in the original", async () => {
  const rt = await runtime();
  const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
  const out: Record<string, Map<string, { ratio: number; share: number }>> = {};
  for (const name of ["vit_fmnist", "vit_fmnist_ol"]) {
    const { m, graph, sites } = await load(name);
    const s = await siteOutlierStats(rt, graph, sites, makeSource(train, range(32), m.card), 32, 5);
    out[name] = new Map(s.map((x) => [x.site, { ratio: x.ratio, share: x.above / x.count }]));
    assert.deepEqual(s.some((x) => x.site === "patch_embed"), false);
  }
  for (const site of ["b0.qkv", "b3.fc1", "head"]) {
    assert(out.vit_fmnist.get(site)!.ratio < 5);
    assert.deepEqual(out.vit_fmnist.get(site)!.share, 0);
    assert(out.vit_fmnist_ol.get(site)!.ratio >= 20);
    assert(out.vit_fmnist_ol.get(site)!.share > 0);
  }
  // inputs the transform does not touch keep their statistics
  const a = out.vit_fmnist.get("b2.fc2")!, b = out.vit_fmnist_ol.get("b2.fc2")!;
  assert(Math.abs(a.ratio - b.ratio) < 1e-3 * a.ratio);
});

Deno.test("outliers: the command stores per-site rows with the calibration hash and refuses bad input", async () => {
  const dir = await tmpDir();
  const db = `${dir}/o.duckdb`;
  const r = await cli("outliers", ["vit_fmnist_ol", "--db", db, "--out", `${dir}/t`]);
  assert.deepEqual(r.code, 0, r.stderr);
  const store = await Store.open(db);
  try {
    const rows = await store.query(
      `select site, range_ratio, share_above, calib_hash, calib_size from outlier_stats order by site`,
    );
    assert.deepEqual(rows.length, 6 * 4 + 1);
    assert(rows.every((x) => x.calib_size === 32 && (x.calib_hash as string).length === 64));
    assert((rows.find((x) => x.site === "b0.qkv")!.range_ratio as number) >= 20);
  } finally {
    store.close();
  }
  assert((await Deno.readTextFile(`${dir}/t/stats.md`)).includes("vit_fmnist_ol"));
  const bad = await cli("outliers", ["no_such_model", "--db", db]);
  assert.deepEqual(bad.code, 2);
  assert(bad.stderr.startsWith("error: MODEL 1: unknown model"), bad.stderr);
  const badTau = await cli("outliers", ["--tau", "x", "--db", db]);
  assert.deepEqual(badTau.code, 2);
  assert(badTau.stderr.includes("--tau"), badTau.stderr);
  await Deno.remove(dir, { recursive: true });
});
