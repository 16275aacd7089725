/**
 * Regenerate the method entries of `experiments/schema.json` from the method
 * registry: each method's name, label and options (its `optionsSchema` with the
 * defaults), so editors complete and check a manifest's options per method. The
 * rest of the schema is written by hand and kept as it is.
 *
 * Usage: deno run -A tools/gen_schema.ts [--check]
 * (--check: exit 1 when the committed schema differs from the generated one).
 *
 * @module
 */
import { fromRoot } from "../core/models.ts";
import { methodItemsSchema } from "../bench/manifest.ts";
import { METHODS } from "../methods/registry.ts";

/** The manifest schema with its method entries generated from the registry. */
export function generatedSchema(committed: Record<string, unknown>): Record<string, unknown> {
  const out = structuredClone(committed) as {
    properties: { methods: { items: unknown } };
  };
  out.properties.methods.items = methodItemsSchema(METHODS);
  return out as unknown as Record<string, unknown>;
}

if (import.meta.main) {
  const path = fromRoot("experiments/schema.json");
  const committed = JSON.parse(await Deno.readTextFile(path));
  const text = JSON.stringify(generatedSchema(committed), null, 2) + "\n";
  if (Deno.args.includes("--check")) {
    if (JSON.stringify(committed) !== JSON.stringify(JSON.parse(text))) {
      console.error(`${path}: method entries differ from the registry; run tools/gen_schema.ts`);
      Deno.exit(1);
    }
  } else {
    await Deno.writeTextFile(path, text);
    console.log(`wrote ${path}`);
  }
}
