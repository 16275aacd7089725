import assert from "node:assert/strict";
import { fromRoot } from "../core/models.ts";
import { optionsError, optionsSchemaOf } from "../bench/manifest.ts";
import { METHODS } from "../methods/registry.ts";
import { generatedSchema } from "../tools/gen_schema.ts";

Deno.test("experiments/schema.json: method entries equal the ones generated from the registry", async () => {
  const committed = JSON.parse(await Deno.readTextFile(fromRoot("experiments/schema.json")));
  const items = committed.properties.methods.items.anyOf;
  assert.deepEqual(
    committed,
    generatedSchema(committed),
    "run: deno run -A tools/gen_schema.ts",
  );
  assert.deepEqual(items[0].enum, Object.keys(METHODS));
  assert.deepEqual(
    items.slice(1).map((x: { properties: { name: { const: string } } }) => x.properties.name.const),
    Object.keys(METHODS),
  );
});

for (const m of Object.values(METHODS)) {
  Deno.test(`${m.name}: one schema entry per option, and the defaults fit the schema`, () => {
    const optional = m.optional ?? [];
    assert.deepEqual(
      Object.keys(m.optionsSchema).sort(),
      [...Object.keys(m.defaults), ...optional].sort(),
      `${m.name}: optionsSchema names other options than the defaults and the optional ones`,
    );
    for (const k of optional) {
      assert.ok(!(k in m.defaults), `${m.name}.${k}: optional with a default`);
    }
    assert.equal(optionsError(m, { ...m.defaults }), undefined);
    assert.match(
      optionsError(m, { ...m.defaults, noSuchOption: 1 })!,
      /noSuchOption: unknown option/,
    );
    const schema = optionsSchemaOf(m) as { properties: Record<string, { description?: string }> };
    for (const [k, s] of Object.entries(schema.properties)) {
      assert.ok(s.description, `${m.name}.${k}: no description`);
    }
  });
}
