import assert from "node:assert/strict";
import { Graph } from "../core/onnx/graph.ts";
import { findSites } from "../core/onnx/sites.ts";
import { applyPlan } from "../core/quant/apply.ts";
import { activationTargets } from "../core/quant/scope.ts";
import { symmetric } from "../core/quant/uniform.ts";
import { standardActSlots } from "../methods/baselines.ts";
import { FIXTURES } from "./helpers.ts";

const readers = (g: Graph, v: string) => g.nodes.filter((n) => n.inputs.includes(v));

Deno.test("value-form activation plan: one quantizer, exactly the named consumers", async () => {
  const g = await Graph.load(`${FIXTURES}tiny_vit_op17.onnx`);
  const sites = findSites(g);
  const ln = sites.find((s) => s.id === "b0.norm2")!;
  const before = readers(g, ln.input!);
  assert.ok(
    before.length >= 2,
    "the residual stream feeds the LayerNorm and the next residual add",
  );
  const q = symmetric(8, 0.05);
  // only the LayerNorm reads the quantized value
  const only = applyPlan(g, [], [{ value: ln.input!, consumers: [ln.node], q }]).graph;
  const lnNode = only.nodes.find((n) => n.name === ln.node)!;
  assert.notEqual(lnNode.inputs[0], ln.input);
  const mul = only.nodes.find((n) => n.outputs[0] === lnNode.inputs[0])!;
  assert.equal(mul.opType, "Mul");
  for (const n of readers(only, ln.input!)) {
    assert.ok(n.name !== ln.node, "the LayerNorm reads the quantized value");
  }
  assert.ok(readers(only, ln.input!).some((n) => n.opType === "Add"), "the skip path stays FP");
  // default: every consumer reads the (single) quantized value
  const all = applyPlan(g, [], [{ value: ln.input!, q }]).graph;
  const divs = all.nodes.filter((n) => n.opType === "Div" && n.inputs[0] === ln.input);
  assert.equal(divs.length, 1, "one quantizer per value");
  const qv = all.nodes.filter((n) => n.opType === "Mul" && n.inputs[0] !== ln.input).find((n) =>
    before.every((b) => all.nodes.find((m) => m.name === b.name)!.inputs.includes(n.outputs[0]))
  );
  assert.ok(qv, "all former consumers read the quantized value");
  // a slot quantized by a value plan and a slot plan is refused; unknown consumers too
  const fc2 = sites.find((s) => s.id === "b0.fc2")!;
  assert.throws(
    () => applyPlan(g, [], [{ value: fc2.input!, q }, { site: fc2, slot: 0, q }]),
    /quantized by two plans/,
  );
  assert.throws(
    () => applyPlan(g, [], [{ value: ln.input!, consumers: ["nope"], q }]),
    /does not read/,
  );
});

Deno.test("scope: linear is the old slot list; full adds every LayerNorm input", async () => {
  for (const f of ["tiny_vit_op17.onnx", "tiny_swin_op17.onnx", "tiny_deit_op13.onnx"]) {
    const g = await Graph.load(`${FIXTURES}${f}`);
    const sites = findSites(g);
    const lin = activationTargets(g, sites, "linear");
    const old = standardActSlots(sites);
    assert.deepEqual(
      lin.map((t) => [t.site.id, t.slot, t.value, t.tensor]),
      old.map((s) => [s.site.id, s.slot, s.value, s.tensor]),
      f,
    );
    const full = activationTargets(g, sites, "full");
    const lns = sites.filter((s) => s.kind === "ln");
    const lnT = full.filter((t) => t.role === "ln_in");
    assert.deepEqual(lnT.map((t) => t.site.id), lns.map((s) => s.id), f);
    for (const t of lnT) {
      const real = readers(g, t.value).filter((n) => n.opType !== "Shape");
      assert.deepEqual(new Set(t.consumers), new Set(real.map((n) => n.name)), `${f} ${t.site.id}`);
    }
    // softmax / GELU outputs feed A·V and fc2 directly here: their slot targets serve both scopes
    assert.equal(full.length, lin.length + lns.length, f);
    const lnOnly = activationTargets(g, sites, "full", { lnConsumers: "ln" });
    for (const t of lnOnly.filter((t) => t.role === "ln_in")) {
      assert.ok(t.consumers!.every((c) => g.nodes.find((n) => n.name === c)!.opType !== "Add"));
    }
    // the full plan applies (no slot claimed twice) and keeps one quantizer per LN input
    const plans = full.map((t) =>
      t.slot !== undefined
        ? { site: t.site, slot: t.slot, q: symmetric(8, 0.1) }
        : { value: t.value, consumers: t.consumers, q: symmetric(8, 0.1) }
    );
    applyPlan(g, [], plans);
  }
});
