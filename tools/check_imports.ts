/**
 * The layering check: every relative import in the project's TypeScript runs
 * down the layers, and there are no import cycles.
 *
 * Layers, top to bottom (a file may import its own layer and any layer below):
 *
 * | layer      | folders            |
 * | ---------- | ------------------ |
 * | entry      | `cli/`, `tools/`, `tests/`, `mod.ts` |
 * | bench      | `bench/`           |
 * | methods    | `methods/`         |
 * | datasets   | `datasets/`        |
 * | core       | `core/`            |
 *
 * `methods/` and `datasets/` never import each other (a method sees images
 * only through the runtime's `ImageSource`). Run: `deno task imports`; exits 1
 * listing every violation.
 *
 * @module
 */
import { dirname, join, normalize, relative } from "node:path";
import { fileURLToPath } from "node:url";

/** Rank of each top-level folder; a file may import ranks <= its own. */
const RANK: Record<string, number> = {
  core: 0,
  datasets: 1,
  methods: 1,
  bench: 2,
  cli: 3,
  tools: 3,
  tests: 3,
  "mod.ts": 3,
};

/** One import edge that breaks the layering. */
export interface Violation {
  from: string;
  to: string;
  why: string;
}

const IMPORT =
  /(?:^|\n)\s*(?:import|export)[^"';]*?from\s*["'](\.{1,2}\/[^"']+)["']|import\(\s*["'](\.{1,2}\/[^"']+)["']\s*\)/g;

function topOf(path: string): string {
  return path.split("/")[0];
}

async function walk(root: string, dir: string, out: string[]): Promise<void> {
  for await (const e of Deno.readDir(join(root, dir))) {
    const p = dir ? `${dir}/${e.name}` : e.name;
    if (e.isDirectory) {
      if (["node_modules", ".git", "results"].includes(e.name) || e.name.startsWith(".")) continue;
      await walk(root, p, out);
    } else if (e.isFile && p.endsWith(".ts") && !p.split("/").pop()!.startsWith("_")) out.push(p);
  }
}

/** Check every `.ts` file under `root`; returns the violations (empty when clean). */
export async function checkImports(
  root: string,
): Promise<{ files: number; violations: Violation[] }> {
  const files: string[] = [];
  await walk(root, "", files);
  files.sort();
  const edges = new Map<string, string[]>();
  const violations: Violation[] = [];
  for (const f of files) {
    const text = await Deno.readTextFile(join(root, f));
    const targets: string[] = [];
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[1] ?? m[2];
      const to = relative(root, normalize(join(root, dirname(f), spec)));
      targets.push(to);
      const a = topOf(f).endsWith(".ts") ? f : topOf(f);
      const b = topOf(to).endsWith(".ts") ? to : topOf(to);
      const ra = RANK[a];
      const rb = RANK[b];
      if (ra === undefined || rb === undefined) {
        violations.push({ from: f, to, why: `folder outside the layer table` });
      } else if (rb > ra) violations.push({ from: f, to, why: `${a} imports ${b} (upward)` });
      else if (rb === ra && a !== b && ra < 3) {
        violations.push({ from: f, to, why: `${a} imports ${b} (sibling layers)` });
      }
    }
    edges.set(f, targets);
  }
  // Cycles: depth-first search with colours.
  const colour = new Map<string, number>();
  const stack: string[] = [];
  const visit = (f: string): void => {
    colour.set(f, 1);
    stack.push(f);
    for (const t of edges.get(f) ?? []) {
      const c = colour.get(t) ?? 0;
      if (c === 1) {
        const cyc = stack.slice(stack.indexOf(t)).concat(t);
        violations.push({ from: f, to: t, why: `cycle ${cyc.join(" -> ")}` });
      } else if (c === 0 && edges.has(t)) visit(t);
    }
    stack.pop();
    colour.set(f, 2);
  };
  for (const f of files) if (!colour.get(f)) visit(f);
  return { files: files.length, violations };
}

if (import.meta.main) {
  const root = join(dirname(fileURLToPath(import.meta.url)), "..");
  const { files, violations } = await checkImports(root);
  for (const v of violations) console.log(`${v.from} -> ${v.to}: ${v.why}`);
  console.log(`${files} files, ${violations.length} layering violations`);
  if (violations.length) Deno.exit(1);
}
