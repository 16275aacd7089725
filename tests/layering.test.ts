import assert from "node:assert/strict";
import { checkImports } from "../tools/check_imports.ts";

const ROOT = new URL("..", import.meta.url).pathname;

Deno.test("layering: no upward import and no cycle in the project", async () => {
  const { files, violations } = await checkImports(ROOT);
  assert.ok(files > 50, `only ${files} files found`);
  assert.deepEqual(violations.map((v) => `${v.from} -> ${v.to}: ${v.why}`), []);
});

Deno.test("layering: the check finds an upward import, a sibling import and a cycle", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const d of ["core", "methods", "datasets", "bench"]) await Deno.mkdir(`${dir}/${d}`);
    await Deno.writeTextFile(
      `${dir}/core/a.ts`,
      `import { b } from "./b.ts";\nexport const a = 1;`,
    );
    await Deno.writeTextFile(
      `${dir}/core/b.ts`,
      `import { a } from "./a.ts";\nimport { r } from "../bench/r.ts";\nexport const b = a;`,
    );
    await Deno.writeTextFile(`${dir}/bench/r.ts`, `export const r = 1;`);
    await Deno.writeTextFile(`${dir}/methods/m.ts`, `import { d } from "../datasets/d.ts";`);
    await Deno.writeTextFile(`${dir}/datasets/d.ts`, `export const d = 1;`);
    const { violations } = await checkImports(dir);
    const why = violations.map((v) => v.why).join("\n");
    assert.match(why, /core imports bench \(upward\)/);
    assert.match(why, /methods imports datasets \(sibling layers\)/);
    assert.match(why, /cycle core\/a\.ts -> core\/b\.ts -> core\/a\.ts/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
