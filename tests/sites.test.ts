import assert from "node:assert/strict";
import { Graph } from "../core/onnx/graph.ts";
import { countSites, findSites } from "../core/onnx/sites.ts";
import { FIXTURES, SHIPPED_MODEL } from "./helpers.ts";
import { VitqError } from "../core/errors.ts";

Deno.test("site counts on the shipped ViT", async () => {
  const g = await Graph.load(SHIPPED_MODEL);
  const sites = findSites(g);
  // patch embed + 6 blocks x (qkv, proj, fc1, fc2) + head
  assert.deepEqual(countSites(sites), {
    linear: 26,
    matmul: 12,
    softmax_out: 6,
    gelu_out: 6,
    ln: 13,
    residual: 12,
  });
  for (let b = 0; b < 6; b++) {
    for (
      const r of ["qkv", "proj", "fc1", "fc2", "qk", "av", "softmax", "gelu", "norm1", "norm2"]
    ) {
      assert.ok(sites.find((s) => s.id === `b${b}.${r}` && s.block === b), `b${b}.${r}`);
    }
    assert.ok(sites.find((s) => s.id === `b${b}.res_attn`));
    assert.ok(sites.find((s) => s.id === `b${b}.res_mlp`));
  }
  const head = sites.find((s) => s.role === "head")!;
  assert.equal(head.block, -1);
  assert.ok(sites.find((s) => s.role === "patch_embed" && s.weightOutAxis === 0));
  assert.ok(sites.find((s) => s.id === "final.ln"));
  // every linear weight is an initializer with an output axis
  for (const s of sites.filter((x) => x.kind === "linear")) {
    assert.ok(g.initializers.has(s.weight!), s.id);
  }
});

Deno.test("site finder handles LayerNormalization and its decomposed form alike", async () => {
  for (const arch of ["vit", "deit", "swin"]) {
    const a = findSites(await Graph.load(`${FIXTURES}tiny_${arch}_op17.onnx`));
    const b = findSites(await Graph.load(`${FIXTURES}tiny_${arch}_op13.onnx`));
    assert.deepEqual(countSites(a), countSites(b), arch);
    assert.deepEqual(a.map((s) => s.id).sort(), b.map((s) => s.id).sort(), arch);
  }
});

Deno.test("LayerNorm sites carry γ, β and ε in both forms, with the same values", async () => {
  for (const arch of ["vit", "deit", "swin"]) {
    const ga = await Graph.load(`${FIXTURES}tiny_${arch}_op17.onnx`);
    const gb = await Graph.load(`${FIXTURES}tiny_${arch}_op13.onnx`);
    const lnsA = findSites(ga).filter((s) => s.kind === "ln");
    const lnsB = new Map(findSites(gb).filter((s) => s.kind === "ln").map((s) => [s.id, s]));
    assert.ok(lnsA.length > 0, arch);
    for (const a of lnsA) {
      const b = lnsB.get(a.id)!;
      for (const [s, g] of [[a, ga], [b, gb]] as const) {
        assert.ok(s.gamma && s.beta, `${arch} ${s.id}: γ/β named`);
        assert.ok(s.epsilon !== undefined && s.epsilon > 0 && s.epsilon < 1e-3, `${arch} ε`);
        const idx = g.index();
        assert.equal(g.constant(s.gamma, idx)?.size, g.constant(s.beta, idx)?.size);
      }
      const vals = (s: typeof a, g: Graph) => [...g.constant(s.gamma!)!.numbers()];
      assert.deepEqual(vals(a, ga), vals(b, gb), `${arch} ${a.id} γ`);
      assert.ok(Math.abs(a.epsilon! - b.epsilon!) < 1e-9, `${arch} ${a.id} ε`);
    }
  }
  // sites of other kinds carry none
  const sites = findSites(await Graph.load(SHIPPED_MODEL));
  assert.ok(sites.filter((s) => s.kind !== "ln").every((s) => s.gamma === undefined));
});

Deno.test("site finder: DeiT has two heads, Swin has reduction and merge norms", async () => {
  const deit = findSites(await Graph.load(`${FIXTURES}tiny_deit_op17.onnx`));
  assert.equal(deit.filter((s) => s.role === "head").length, 2);
  assert.deepEqual(countSites(deit).linear, 1 + 2 * 4 + 2);
  const swin = findSites(await Graph.load(`${FIXTURES}tiny_swin_op13.onnx`));
  const red = swin.filter((s) => s.role === "reduction");
  assert.equal(red.length, 1);
  assert.equal(red[0].block, 1); // after the two blocks of stage 1
  assert.ok(swin.find((s) => s.kind === "ln" && s.role === "merge"));
  assert.ok(swin.find((s) => s.kind === "ln" && s.role === "embed"));
  assert.equal(countSites(swin).softmax_out, 4);
});

Deno.test("a graph without transformer blocks is refused by name", async () => {
  const g = await Graph.load(`${FIXTURES}tiny_vit_op17.onnx`);
  // drop every Softmax: no attention left
  g.nodes = g.nodes.map((n) => (n.opType === "Softmax" ? { ...n, opType: "Identity" } : n));
  assert.throws(
    () => findSites(g, "noattn.onnx"),
    (e: Error) => e instanceof VitqError && /noattn\.onnx: no transformer block/.test(e.message),
  );
});
