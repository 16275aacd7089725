import { Graph, attr } from "../core/onnx/graph.ts";
const g = await Graph.load(Deno.args[0]);
for (const n of g.nodes) {
  if (n.opType === "Constant") { const v = attr(n, "value"); console.log(`${n.outputs} = Constant ${v instanceof Object && "dims" in v ? `dt${(v as any).dataType} [${(v as any).dims}] ${(v as any).size < 10 ? (v as any).numbers() : ""}` : ""}`); continue; }
  const a = n.attributes.map((x: any) => `${x.name}=${JSON.stringify(attr(n, x.name))}`).join(" ");
  console.log(`${n.outputs.join(",")} = ${n.opType}(${n.inputs.join(", ")}) ${a}`);
}
for (const [k, t] of g.initializers) console.log("init", k, t.dataType, t.dims);
