import assert from "node:assert/strict";
import type { Graph } from "../core/onnx/graph.ts";
import { optionsError } from "../bench/manifest.ts";
import { baseptq, gridSearch, ptq4vit } from "../methods/ptq4vit.ts";
import { fixtureContext, randomData, runtime } from "./helpers.ts";
import { CandidateScorer, type Metric } from "../core/quant/search.ts";
import { fakeQuant } from "../core/quant/uniform.ts";
import { captureValues } from "../core/runtime/capture.ts";
import type { QuantContext } from "../methods/types.ts";

async function ctx(
  fixture: string,
  options: Record<string, unknown>,
  bits = { w: 8, a: 8 },
): Promise<QuantContext> {
  return await fixtureContext(fixture, { calibSize: 8, bits, options, batchSize: 8 });
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
  assert.equal(optionsError(ptq4vit, { ...ptq4vit.defaults }), undefined);
  assert.match(optionsError(ptq4vit, { ...ptq4vit.defaults, metric: "l1" })!, /metric/);
  assert.match(optionsError(ptq4vit, { ...ptq4vit.defaults, alpha: 2 })!, /alpha/);
});

/** Direct per-head scores of Ô = A·B for [B, H, N, K] x [B, H, K, M] operands: K-candidate rows of H values. */
function perHeadDirect(
  a: Float32Array,
  b: Float32Array,
  dims: [number, number, number, number, number],
  o: Float32Array,
  g: Float32Array,
  metric: Metric,
): Float64Array {
  const [bs, h, n, k, m] = dims;
  const out = new Float64Array(h);
  for (let hh = 0; hh < h; hh++) {
    let tot = 0, cos = 0;
    for (let bb = 0; bb < bs; bb++) {
      for (let i = 0; i < n; i++) {
        let dot = 0, ny = 0, no = 0;
        for (let j = 0; j < m; j++) {
          let y = 0;
          for (let t = 0; t < k; t++) {
            y += a[((bb * h + hh) * n + i) * k + t] * b[((bb * h + hh) * k + t) * m + j];
          }
          const oi = ((bb * h + hh) * n + i) * m + j;
          const d = y - o[oi];
          tot += metric === "hessian" ? (d * g[oi]) ** 2 : d * d;
          dot += y * o[oi];
          ny += y * y;
          no += o[oi] * o[oi];
        }
        cos += dot / Math.sqrt(ny * no);
      }
    }
    out[hh] = metric === "cosine" ? -cos / (bs * n) : tot;
  }
  return out;
}

Deno.test("per-head candidate scores (one step per head on axis 1) equal a direct computation", async () => {
  const dims: [number, number, number, number, number] = [2, 3, 5, 4, 6];
  const [bs, h, n, k, m] = dims;
  const a = randomData(bs * h * n * k, 11, 1.5);
  const b = randomData(bs * h * k * m, 12, 1);
  const o = randomData(bs * h * n * m, 13, 2);
  const g = randomData(bs * h * n * m, 14, 1);
  const cands = [[0.1, 0.2, 0.3], [0.25, 0.05, 0.4]];
  for (const metric of ["hessian", "mse", "cosine"] as Metric[]) {
    const sc = await CandidateScorer.create(await runtime(), {
      vary: "a",
      aDims: [bs, h, n, k],
      bDims: [bs, h, k, m],
      oDims: [bs, h, n, m],
      metric,
      keepAxis: 1,
      quant: { kind: "uniform", bits: 4, columns: h, axis: 1 },
    });
    const got = await sc.scoreQuantized(cands.length, (i) => cands[i], a, b, o, g);
    await sc.release();
    cands.forEach((c, i) => {
      const aq = fakeQuant(a, [bs, h, n, k], {
        bits: 4,
        signed: true,
        scale: Float32Array.from(c),
        zeroPoint: new Float32Array(h),
        axis: 1,
      });
      const want = perHeadDirect(aq, b, dims, o, g, metric);
      assert.equal(got[i].length, h);
      for (let j = 0; j < h; j++) {
        assert.ok(
          Math.abs(got[i][j] - want[j]) <= 1e-4 * Math.abs(want[j]) + 1e-6,
          `${metric} cand ${i} head ${j}: ${got[i][j]} vs ${want[j]}`,
        );
      }
    });
  }
});

Deno.test("per-group cosine scores each qkv third by the cosine over its own columns", async () => {
  const rows = 7, cin = 5, cout = 9;
  const x = randomData(rows * cin, 21, 1);
  const w = randomData(cin * cout, 22, 0.5);
  const o = randomData(rows * cout, 23, 1);
  const sc = await CandidateScorer.create(await runtime(), {
    vary: "b",
    aDims: [rows, cin],
    bDims: [cin, cout],
    oDims: [rows, cout],
    metric: "cosine",
    cosineGroups: 3,
  });
  const got = await sc.score(1, () => w, x, o);
  await sc.release();
  for (let gi = 0; gi < 3; gi++) {
    let cos = 0;
    for (let i = 0; i < rows; i++) {
      let dot = 0, ny = 0, no = 0;
      for (let j = gi * 3; j < gi * 3 + 3; j++) {
        let y = 0;
        for (let t = 0; t < cin; t++) y += x[i * cin + t] * w[t * cout + j];
        dot += y * o[i * cout + j];
        ny += y * y;
        no += o[i * cout + j] ** 2;
      }
      cos += dot / Math.sqrt(ny * no);
    }
    assert.ok(
      Math.abs(got[0][gi] + cos / rows) < 1e-5,
      `group ${gi}: ${got[0][gi]} vs ${-cos / rows}`,
    );
  }
});

Deno.test("per-head matmul steps: one record per head, emitted per head (bit-exact), per-tensor as an option", async () => {
  const bits = { w: 4, a: 4 };
  const c = await ctx("tiny_vit_op17.onnx", { ...baseptq.defaults, n: 10 }, bits);
  const q = await baseptq.quantize(c);
  const site = c.sites.find((s) => s.id === "b0.qk")!;
  const heads = q.layers.filter((l) => l.site === "b0.qk" && l.tensor.startsWith("a["));
  assert.ok(heads.length > 1, "one record per head");
  assert.deepEqual(heads.map((l) => l.tensor), heads.map((_, i) => `a[h${i}]`));
  assert.ok(heads.every((l) => l.quantizer === "per-head sym"));
  // in the quantized graph, the matmul reads per-head fake quantization of its Q operand
  const node = q.graph.nodes.find((n) => n.name === site.node)!;
  const qv = await captureValues(
    c.runtime,
    q.graph,
    [site.operands![0], node.inputs[0]],
    c.calib,
    8,
  );
  const x = qv.get(site.operands![0])!;
  assert.equal(x.dims[1], heads.length, "heads from the operand's axis 1");
  const want = fakeQuant(x.data, x.dims, {
    bits: 4,
    signed: true,
    scale: Float32Array.from(heads, (l) => l.scale),
    zeroPoint: new Float32Array(heads.length),
    axis: 1,
  });
  assert.deepEqual(qv.get(node.inputs[0])!.data, want);
  // per-tensor: one record per operand
  const t = await baseptq.quantize({
    ...c,
    options: { ...baseptq.defaults, n: 10, matmulGranularity: "tensor" },
  });
  assert.deepEqual(
    t.layers.filter((l) => l.site === "b0.qk").map((l) => [l.tensor, l.quantizer]),
    [["a", "per-tensor sym"], ["b", "per-tensor sym"]],
  );
  assert.match(
    optionsError(baseptq, { ...baseptq.defaults, matmulGranularity: "row" })!,
    /matmulGranularity/,
  );
});

Deno.test({
  name:
    "PTQ4ViT calibration past the capture budget spills to files, loads one block at a time and chooses the same steps",
  sanitizeResources: false,
  fn: async () => {
    const opts = { ...ptq4vit.defaults, n: 10, rounds: 1 };
    const inMemory = await ptq4vit.quantize(await ctx("tiny_vit_op17.onnx", opts));
    const spilledCtx = { ...(await ctx("tiny_vit_op17.onnx", opts)), calibHash: "spill-test" };
    const before = [...Deno.readDirSync(Deno.env.get("TMPDIR") ?? "/tmp")]
      .filter((e) => e.name.startsWith("vitq-capture-")).length;
    const previous = Deno.env.get("VITQ_CAPTURE_BUDGET_MIB");
    Deno.env.set("VITQ_CAPTURE_BUDGET_MIB", "0.01");
    const blocks: string[] = [];
    let spilled;
    try {
      spilled = await ptq4vit.quantize({ ...spilledCtx, log: (m: string) => blocks.push(m) });
      const during = [...Deno.readDirSync(Deno.env.get("TMPDIR") ?? "/tmp")]
        .filter((e) => e.name.startsWith("vitq-capture-")).length;
      assert.ok(during > before, "the capture was spilled to a temporary directory");
    } finally {
      if (previous === undefined) Deno.env.delete("VITQ_CAPTURE_BUDGET_MIB");
      else Deno.env.set("VITQ_CAPTURE_BUDGET_MIB", previous);
    }
    assert.ok(blocks.some((m) => /searching/.test(m)));
    assert.deepEqual(spilled.layers, inMemory.layers);
    assert.deepEqual(spilled.graph.toBytes(), inMemory.graph.toBytes());
  },
});

Deno.test("gridSearch: stride 1 is the full grid's first-minimum argmin; coarse-to-fine scores fewer points and finds unimodal minima per group", async () => {
  const n = 100;
  // per group: a unimodal score with its minimum at `at[g]`, flat ties to the right of group 2's minimum
  const at = [0, 37, 99, 61];
  const f = (g: number, i: number) => g === 2 ? Math.max(0, 99 - i) : (i - at[g]) ** 2 + 0.5 * g;
  let scored = 0;
  const score = (idx: number[][]) => {
    scored += idx.length;
    return Promise.resolve(idx.map((row) => row.map((i, g) => f(g, i))));
  };
  const full = await gridSearch(n, 4, 1, score);
  assert.deepEqual(full.best, at);
  assert.deepEqual(full.score, at.map((i, g) => f(g, i)));
  assert.equal(scored, n);
  for (const s of [2, 5, 7, 10]) {
    scored = 0;
    const c = await gridSearch(n, 4, s, score);
    assert.deepEqual(c.best, at, `stride ${s}`);
    assert.ok(scored <= Math.ceil(n / s) + 1 + 2 * (s - 1), `stride ${s}: ${scored} scored`);
  }
  // ties go to the lower index, as the full grid's first minimum
  const flat = await gridSearch(10, 1, 3, (idx) => Promise.resolve(idx.map(() => [1])));
  assert.deepEqual(flat.best, [0]);
  // a narrow valley between two coarse points is missed: the approximation the option states
  const narrow = (i: number) => (i === 52 ? -1 : Math.abs(i - 20));
  const miss = await gridSearch(n, 1, 5, (idx) => Promise.resolve(idx.map((r) => [narrow(r[0])])));
  assert.deepEqual(miss.best, [20]);
  const hit = await gridSearch(n, 1, 1, (idx) => Promise.resolve(idx.map((r) => [narrow(r[0])])));
  assert.deepEqual(hit.best, [52]);
});

Deno.test("PTQ4ViT coarse-to-fine search (option coarse): runs, says it approximates, keeps W8A8 logits close", async () => {
  const c = await ctx("tiny_vit_op17.onnx", { ...ptq4vit.defaults, n: 40, rounds: 1, coarse: 5 });
  const q = await ptq4vit.quantize(c);
  assert.match(q.notes ?? "", /coarse-to-fine \(stride 5: approximation/);
  assert.ok(await maxLogitError(c.graph, q.graph, c) < 0.1);
  assert.equal(optionsError(ptq4vit, { ...ptq4vit.defaults, coarse: 0 }) !== undefined, true);
  const full = await ptq4vit.quantize(
    await ctx("tiny_vit_op17.onnx", { ...ptq4vit.defaults, n: 40, rounds: 1 }),
  );
  assert.doesNotMatch(full.notes ?? "", /coarse/);
});
