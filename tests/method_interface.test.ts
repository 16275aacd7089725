import assert from "node:assert/strict";
import { CellCache } from "../methods/cache.ts";
import { defineMethod } from "../methods/types.ts";
import { LayerRecorder } from "../methods/layers.ts";
import { METHODS } from "../methods/registry.ts";
import { activationTargets, targetPlan } from "../core/quant/scope.ts";
import { applyPlan, siteWeight, type WeightPlan } from "../core/quant/apply.ts";
import { absMax, symmetric, symmetricScale } from "../core/quant/uniform.ts";
import { collectStats } from "../core/runtime/capture.ts";
import { VitqError } from "../core/errors.ts";
import { loadManifest } from "../bench/manifest.ts";
import { planBench, runPlan } from "../bench/runner.ts";
import { Store } from "../bench/store.ts";
import { smallManifest, tmpDir, writeManifest } from "./helpers.ts";

Deno.test("CellCache: keyed by model hash, calibration hash, image count and dependencies", async () => {
  const cache = new CellCache<number>();
  let computed = 0;
  const calib = { length: 8, shape: [1, 28, 28], slice: () => Promise.resolve(new Float32Array()) };
  const get = (modelHash: string, calibHash: string, dep: unknown, length = 8) =>
    cache.get({ modelHash, calibHash, calib: { ...calib, length } }, dep, () => {
      computed++;
      return Promise.resolve(computed);
    });
  assert.equal(await get("m1", "c1", ["hessian"]), 1);
  assert.equal(await get("m1", "c1", ["hessian"]), 1); // hit
  assert.equal(await get("m2", "c1", ["hessian"]), 2); // other model
  assert.equal(await get("m2", "c2", ["hessian"]), 3); // other calibration set
  assert.equal(await get("m2", "c2", ["none"]), 4); // other dependency
  assert.equal(await get("m2", "c2", ["none"], 4), 5); // other image count
  assert.equal(await get("m2", "c2", ["none"], 4), 5);
  // a failed computation is not kept
  await assert.rejects(() =>
    cache.get({ modelHash: "x", calibHash: "y", calib }, 0, () => Promise.reject(new Error("boom")))
  );
  assert.equal(await get("x", "y", 0), 6);
});

// ---- "adding a uniform-quantizer method is one file plus one registry line" ----
// Everything from here to `clipped` is what the method's file would hold
// (methods/clipped.ts); the registry line is `[clipped.name]: clipped`.

/** Options of the test method. */
type ClippedOptions = {
  /** Activation bound as a fraction of the calibrated max |x|. */
  clip: number;
  scope: "linear" | "full";
};

/** A uniform-quantizer method: per-tensor symmetric, activations clipped at clip * max|x|. */
const clipped = defineMethod<ClippedOptions>({
  name: "test_clipped",
  paper: "baseline (test)",
  description: "per-tensor symmetric; activation bound = clip x calibrated max|x|",
  approximations: "none",
  defaults: { clip: 1, scope: "linear" },
  optionsSchema: {
    clip: {
      type: "number",
      exclusiveMinimum: 0,
      maximum: 1,
      description: "activation bound as a fraction of max|x|",
    },
    scope: { enum: ["linear", "full"], description: "which activations are quantized" },
  },
  async quantize(ctx) {
    const { bits } = ctx;
    const targets = activationTargets(ctx.graph, ctx.sites, ctx.options.scope);
    const stats = await collectStats(
      ctx.runtime,
      ctx.graph,
      targets.map((t) => t.value),
      ctx.calib,
      ctx.batchSize,
    );
    const weights: WeightPlan[] = ctx.sites.filter((s) => s.kind === "linear").map((site) => ({
      site,
      q: symmetric(bits.w, symmetricScale(absMax(siteWeight(ctx.graph, site).data), bits.w)),
    }));
    const bound = (v: string) => ctx.options.clip * stats.get(v)!.absMax;
    const acts = targets.map((t) =>
      targetPlan(t, { q: symmetric(bits.a, symmetricScale(bound(t.value), bits.a)) })
    );
    const { graph, weights: applied } = applyPlan(ctx.graph, weights, acts);
    const rec = new LayerRecorder(ctx);
    applied.forEach((w, i) =>
      rec.add(w.site, "weight", w.site.weight!, {
        bits: bits.w,
        scale: weights[i].q.scale[0],
        quantizer: "per-tensor sym",
        sqnrDb: w.sqnrDb,
      })
    );
    targets.forEach((t, i) =>
      rec.add(t.site, t.tensor, t.value, {
        bits: bits.a,
        scale: acts[i].q!.scale[0],
        quantizer: `per-tensor sym, clip ${ctx.options.clip}`,
      })
    );
    return { graph, layers: await rec.records() };
  },
});

Deno.test("a method defined in this file registers, validates its options by schema and runs a cell", async () => {
  METHODS[clipped.name] = clipped; // the registry line
  const dir = await tmpDir();
  try {
    const manifest = (options: Record<string, unknown>) =>
      smallManifest({
        name: "clipped",
        methods: ["minmax", { name: "test_clipped", label: "clipped", options }],
        bits: [{ w: 8, a: 8 }],
        speed: { enabled: false },
      });
    // bad options: named by manifest file, method and option
    for (
      const [opts, want] of [
        [{ clip: 0 }, /\/methods\/1\/options\/clip: must be > 0 \(method test_clipped\)/],
        [{ clip: "1" }, /\/methods\/1\/options\/clip: must be number/],
        [{ scope: "all" }, /\/methods\/1\/options\/scope: .*\(linear, full\)/],
        [{ clipp: 0.5 }, /\/methods\/1\/options\/clipp: unknown option/],
      ] as const
    ) {
      const file = await writeManifest(dir, manifest(opts));
      await assert.rejects(
        () => loadManifest(file),
        (e: unknown) =>
          e instanceof VitqError && e.message.startsWith(file) && want.test(e.message),
      );
    }
    // good options arrive merged over the defaults, typed
    const file = await writeManifest(dir, manifest({ clip: 0.9 }));
    const { manifest: m, text } = await loadManifest(file);
    assert.deepEqual(m.methods[1].options, { clip: 0.9, scope: "linear" });
    // one cell on the shipped ViT
    const plan = await planBench(m, file);
    const db = `${dir}/r.duckdb`;
    const store = await Store.open(db);
    try {
      const sum = await runPlan(plan, store, {
        manifestPath: file,
        manifestText: text,
        quiet: true,
      });
      assert.equal(sum.failed, 0);
      const rows = await store.query(
        "select label, top1, status from results order by label",
      );
      assert.deepEqual(rows.map((r) => [r.label, r.status]), [["clipped", "ok"], ["minmax", "ok"]]);
      const top1 = Object.fromEntries(rows.map((r) => [r.label, r.top1 as number]));
      assert.ok(top1.clipped > 50, `clipped top-1 ${top1.clipped}`);
      const layers = await store.query(
        `select count(*)::int as n, min(elements)::int as lo from layers l
          join results r using (cell_id) where r.label = 'clipped'`,
      );
      assert.equal(layers[0].n, 26 + 25 + 24); // weights, linear inputs, matmul operands
      assert.ok((layers[0].lo as number) > 0);
    } finally {
      store.close();
    }
  } finally {
    delete METHODS[clipped.name];
    await Deno.remove(dir, { recursive: true });
  }
});
