import assert from "node:assert/strict";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { loadFashionMnist, SHIPPED_FMNIST } from "../datasets/fashion_mnist.ts";
import { makeSource } from "../datasets/source.ts";
import { baseptq, ptq4vit } from "../methods/ptq4vit.ts";
import { contextKeys, FIXTURE_CARD as card, FIXTURES, runtime } from "./helpers.ts";
import type { QuantContext } from "../methods/types.ts";

async function ctx(
  fixture: string,
  options: Record<string, unknown>,
  bits = { w: 8, a: 8 },
): Promise<QuantContext> {
  const graph = await Graph.load(`${FIXTURES}${fixture}`);
  const train = await loadFashionMnist(SHIPPED_FMNIST, "train");
  return {
    graph,
    sites: findSites(graph),
    calib: makeSource(train, Array.from({ length: 8 }, (_, i) => i), card),
    bits,
    runtime: await runtime(),
    options,
    batchSize: 8,
    ...(await contextKeys(graph, "train 0..7")),
    seed: 0,
    log: () => {},
  };
}

async function maxLogitError(fp: Graph, q: Graph, c: QuantContext): Promise<number> {
  const rt = await runtime();
  const x = await c.calib.slice(0, 8);
  const run = async (g: Graph) => {
    const s = await rt.createSession(g);
    const out = await s.run({ input: { data: x, dims: [8, 1, 28, 28] } });
    await s.release();
    return out[s.outputNames[0]].data;
  };
  const a = await run(fp), b = await run(q);
  let m = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    m = Math.max(m, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(a[i]));
  }
  return m / scale;
}

Deno.test("PTQ4ViT at W8A8 keeps logits close and uses twin quantizers where the reference does", async () => {
  const c = await ctx("tiny_vit_op17.onnx", { ...ptq4vit.defaults, n: 20, rounds: 1 });
  const q = await ptq4vit.quantize(c);
  const err = await maxLogitError(c.graph, q.graph, c);
  assert.ok(err < 0.1, `relative logit error ${err}`);
  const fc2in = q.layers.find((l) => l.site === "b0.fc2" && l.tensor === "input")!;
  assert.equal(fc2in.quantizer, "twin-gelu");
  const soft = q.layers.find((l) => l.site === "b1.av" && l.tensor === "a")!;
  assert.equal(soft.quantizer, "twin-softmax");
  assert.ok([...Array(20).keys()].some((i) => soft.scale === 2 ** -i), `split ${soft.scale}`);
  // qkv has three weight groups, the patch embedding one step per output channel
  assert.match(
    q.layers.find((l) => l.site === "b0.qkv" && l.tensor === "weight")!.quantizer,
    /3 groups/,
  );
  assert.match(
    q.layers.find((l) => l.site === "patch_embed" && l.tensor === "weight")!.quantizer,
    /16 groups/,
  );
  assert.equal(q.layers.find((l) => l.site === "patch_embed" && l.tensor === "input"), undefined);
});

Deno.test("BasePTQ and the metric ablation run on a Swin graph", async () => {
  for (
    const [m, opts] of [[baseptq, { n: 10 }], [ptq4vit, {
      metric: "mse",
      n: 10,
      rounds: 1,
    }]] as const
  ) {
    const c = await ctx("tiny_swin_op17.onnx", { ...m.defaults, ...opts }, { w: 6, a: 6 });
    const q = await m.quantize(c);
    assert.ok((await maxLogitError(c.graph, q.graph, c)) < 0.2, m.name);
    assert.ok(q.layers.some((l) => l.role === "reduction"));
  }
});

Deno.test("PTQ4ViT options are validated", () => {
  assert.equal(ptq4vit.checkOptions!({ ...ptq4vit.defaults }), undefined);
  assert.match(ptq4vit.checkOptions!({ ...ptq4vit.defaults, metric: "l1" })!, /metric/);
  assert.match(ptq4vit.checkOptions!({ ...ptq4vit.defaults, alpha: 2 })!, /alpha/);
});
