/**
 * The registered methods on reduced-depth, random-weight timm 1.x exports at 224x224
 * (tests/fixtures/timm/: ViT-S, DeiT-T, DeiT-S distilled, Swin-T; fused and explicit
 * attention; opsets 13, 14, 17): each cell quantizes at W8A8 with tiny settings on 4
 * synthetic images and checks the fake-quant logits on 2 others against FP (cosine
 * >= 0.99 for the uniform methods, >= 0.95 for the others). minmax, percentile and I-ViT
 * run on every fixture; each slower method on two or three (see PLAN; VITQ_TIMM_ALL=1 runs
 * all, VITQ_TIMM_METHODS=a,b only those, known failures included). Known failures are
 * ignored tests with their reason (KNOWN).
 */
import assert from "node:assert/strict";
import { Graph } from "../core/onnx/graph.ts";
import type { ImageSource } from "../core/runtime/runtime.ts";
import { METHODS } from "../methods/registry.ts";
import { FIXTURES, quantContext, randomData, runtime } from "./helpers.ts";

/** The committed timm exports (see tests/fixtures/timm/README.md). */
export const TIMM_FIXTURES = [
  "vit_s_fused",
  "vit_s_explicit",
  "deit_t_fused_op14",
  "deit_s_dist_fused",
  "swin_t_fused",
  "swin_t_explicit_op13",
];

/** Tiny settings per method: few grid points, one round, few ADFQ steps. */
const TINY: Record<string, Record<string, unknown>> = {
  minmax: {},
  percentile: {},
  baseptq: { n: 8, rounds: 1, gradBatch: 2 },
  ptq4vit: { n: 8, rounds: 1, gradBatch: 2 },
  adfq: { iters: 2, batch: 2, initSamples: 2 },
  ivit: {},
  tsptq: { n: 8, rounds: 1, gradBatch: 2 },
  mptq: { n: 8, rounds: 1, optmN: 4, optmMaxM: 3, mpN: 4, gradBatch: 2 },
  repq: {},
};

/**
 * Methods whose W8A8 graph quantizes every tensor with uniform (or PTQ4ViT's twin uniform)
 * quantizers: cosine >= 0.99. The others use non-uniform or integer-only approximations
 * (ADFQ-ViT's and RepQ-ViT's log2/log√2 softmax quantizers, TSPTQ-ViT's and MPTQ-ViT's
 * two-scaled / mixed choices, I-ViT's Shiftmax, ShiftGELU and I-LayerNorm): cosine >= 0.95.
 */
const UNIFORM = new Set(["minmax", "percentile", "baseptq", "ptq4vit"]);

/**
 * Methods whose deploy graph is checked here against their fake-quant graph (logit cosine
 * >= 0.999: the same quantizers, integer kernels; RepQ-ViT's rounds its reparameterized
 * zero points, which only moves saturated values).
 */
const DEPLOY_CHECKED = new Set(["repq", "tsptq", "adfq"]);

const N = 4;
const SHAPE = [3, 224, 224];

/** `n` synthetic normalized images: smooth gradients plus noise, roughly unit scale. */
function images(n: number, seed: number): ImageSource {
  const per = SHAPE[0] * SHAPE[1] * SHAPE[2];
  const all = randomData(n * per, seed, 1.5);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < 224; y++) {
        for (let x = 0; x < 224; x++) {
          const k = i * per + (c * 224 + y) * 224 + x;
          all[k] = 0.5 * all[k] + Math.sin((x + 7 * i + 13 * c) / 17) + Math.cos(y / 23 + i);
        }
      }
    }
  }
  return {
    length: n,
    shape: SHAPE,
    slice: (s, e) => Promise.resolve(all.slice(s * per, e * per)),
  };
}

async function logits(g: Graph, src: ImageSource): Promise<Float32Array> {
  const s = await (await runtime()).createSession(g);
  try {
    const data = await src.slice(0, src.length);
    const out = await s.run({ [g.inputNames[0]]: { data, dims: [src.length, ...SHAPE] } });
    return out[g.outputNames[0]].data;
  } finally {
    await s.release();
  }
}

function cosine(a: Float32Array, b: Float32Array): number {
  let ab = 0, aa = 0, bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / Math.sqrt(aa * bb);
}

const calib = images(N, 1);
const evalSet = images(2, 2);
const only = Deno.env.get("VITQ_TIMM_METHODS")?.split(",");

/**
 * Which methods run on which fixture (the test's time budget): the fast ones everywhere,
 * each slower one on two fixtures (TSPTQ-ViT's also on Swin; RepQ-ViT's also on both Swin
 * exports, for its fold through the window Pad); the full matrix with VITQ_TIMM_ALL=1.
 * Set VITQ_TIMM_ALL=1 to run every method on every fixture.
 */
const PLAN: Record<string, string[]> = {
  vit_s_fused: ["ptq4vit", "adfq"],
  vit_s_explicit: ["baseptq", "repq", "mptq"],
  deit_t_fused_op14: ["tsptq", "ptq4vit", "mptq"],
  deit_s_dist_fused: ["baseptq", "adfq", "repq"],
  swin_t_fused: ["tsptq", "repq"],
  swin_t_explicit_op13: ["repq"],
};
const FAST = ["minmax", "percentile", "ivit"];
/** Known failures on these exports (reported, not hidden): ignored tests with the reason. */
const KNOWN: Record<string, string> = {};
const all = Deno.env.get("VITQ_TIMM_ALL") === "1";

for (const fixture of TIMM_FIXTURES) {
  for (const name of Object.keys(METHODS)) {
    if (
      only ? !only.includes(name) : !all && !FAST.includes(name) && !PLAN[fixture].includes(name) &&
        !KNOWN[`${fixture} ${name}`]
    ) continue;
    Deno.test({
      name: `timm ${fixture} ${name}: runs at W8A8, logits close to FP`,
      ignore: !only && KNOWN[`${fixture} ${name}`] !== undefined,
      fn: async () => {
        const method = METHODS[name];
        const graph = await Graph.load(`${FIXTURES}timm/${fixture}.onnx`);
        const fp = await logits(graph, evalSet);
        assert.equal(fp.length, 2 * 1000);
        const ctx = await quantContext({
          graph,
          calib,
          calibLabel: `synthetic ${N}`,
          bits: { w: 8, a: 8 },
          options: { ...(method.defaults as Record<string, unknown>), ...TINY[name] },
          batchSize: 4,
        });
        const q = await method.quantize(ctx);
        const fake = await logits(q.graph, evalSet);
        const cos = cosine(fp, fake);
        if (DEPLOY_CHECKED.has(name)) {
          assert.ok(q.deployable, `${fixture} ${name}: no deploy graph`);
          const dep = cosine(fake, await logits(q.deployable.graph, evalSet));
          assert.ok(dep >= 0.999, `${fixture} ${name}: deploy vs fake-quant cosine ${dep}`);
        }
        assert.ok(q.layers.length > 0, `${fixture} ${name}: no layer records`);
        if (name === "repq") {
          // every post-LayerNorm quantizer reparameterized (Swin: through the window Pad)
          assert.doesNotMatch(q.notes ?? "", /not reparameterized/);
          assert.ok(q.layers.every((l) => !/not reparameterized/.test(l.quantizer)));
        }
        const floor = UNIFORM.has(name) ? 0.99 : 0.95;
        assert.ok(cos >= floor, `${fixture} ${name}: cosine ${cos} < ${floor}`);
      },
    });
  }
}
