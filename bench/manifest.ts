/**
 * Experiment manifests: JSON validated against `experiments/schema.json`,
 * normalized (defaults filled in) and expanded into cells.
 *
 * @module
 */
import Ajv from "ajv";
import { VitqError } from "../core/errors.ts";
import { fromRoot } from "../core/models.ts";
import type { SubsetRule } from "../datasets/subset.ts";
import { METHODS } from "../methods/registry.ts";
import type { Bits, QuantMethod } from "../methods/types.ts";
import type { Backend } from "../core/runtime/runtime.ts";

/** A method entry after normalization. */
export interface MethodSpec {
  name: string;
  label: string;
  options: Record<string, unknown>;
}

/** A normalized manifest. */
export interface Manifest {
  name: string;
  description: string;
  models: string[];
  methods: MethodSpec[];
  bits: Bits[];
  dataset: {
    name: "fashion-mnist" | "imagenet";
    path?: string;
    split: "test" | "train" | "val";
    subset: SubsetRule;
  };
  calibration: { size: number; seeds: number[]; split: "train" | "test" | "val" };
  batchSize: number;
  threads: number;
  backend: Backend;
  speed: { repetitions: number; warmup: number; enabled: boolean };
}

/** A compiled ajv validator. */
type Validator = ((x: unknown) => boolean) & { errors?: unknown[] | null };

// deno-lint-ignore no-explicit-any
const AjvCtor = (Ajv as any).default ?? Ajv;
/** The one ajv instance: manifests and every method's options (`$data` for relations between options). */
const ajv = new AjvCtor({ allErrors: false, strict: false, $data: true, verbose: true });
let validator: Validator | undefined;
const optionValidators = new Map<string, Validator>();

/**
 * A method entry as the validator checks it: a name, or an object whose options
 * each method's own schema checks afterwards (so errors name method and option).
 * The committed `experiments/schema.json` carries {@link methodItemsSchema}
 * instead, for editors.
 */
const METHOD_ITEM_SCHEMA = {
  oneOf: [
    { type: "string", minLength: 1, maxLength: 64 },
    {
      type: "object",
      additionalProperties: false,
      required: ["name"],
      properties: {
        name: { type: "string", minLength: 1, maxLength: 64 },
        label: {
          type: "string",
          minLength: 1,
          maxLength: 64,
          pattern: "^[^|\\u0000-\\u001f\\u007f]+$",
          description:
            "Row name in tables; defaults to the method name. No '|' or control characters (they would break the Markdown tables).",
        },
        options: { type: "object" },
      },
    },
  ],
};

// deno-lint-ignore no-explicit-any
let manifestSchema: any;

async function getValidator(): Promise<Validator> {
  if (!validator) {
    manifestSchema = JSON.parse(await Deno.readTextFile(fromRoot("experiments/schema.json")));
    manifestSchema.properties.methods.items = METHOD_ITEM_SCHEMA;
    validator = ajv.compile(manifestSchema) as Validator;
  }
  return validator;
}

/**
 * The schema's default of a manifest field (`["speed", "warmup"]`): defaults
 * live in `experiments/schema.json` only, where editors show them.
 */
function schemaDefault(path: string[]): unknown {
  // deno-lint-ignore no-explicit-any
  let node: any = manifestSchema;
  for (const k of path) node = node.properties[k];
  if (node.default === undefined) throw new Error(`schema: no default for /${path.join("/")}`);
  return structuredClone(node.default);
}

/** Drop keywords whose value is an ajv `$data` reference (editors do not know them). */
function withoutData(x: unknown): unknown {
  if (Array.isArray(x)) return x.map(withoutData);
  if (!x || typeof x !== "object") return x;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(x)) {
    if (v && typeof v === "object" && "$data" in v) continue;
    out[k] = withoutData(v);
  }
  return out;
}

/**
 * The JSON Schema of a method's options: its `optionsSchema` entries, each with
 * the method's default, and no other option. `forEditors` drops `$data` relations.
 */
export function optionsSchemaOf(method: QuantMethod, forEditors = false): Record<string, unknown> {
  const defaults = method.defaults as Record<string, unknown>;
  const properties: Record<string, unknown> = {};
  for (const [k, s] of Object.entries(method.optionsSchema as Record<string, object>)) {
    const p = { ...s, ...(Object.hasOwn(defaults, k) ? { default: defaults[k] } : {}) };
    properties[k] = forEditors ? withoutData(p) : p;
  }
  return { type: "object", additionalProperties: false, properties };
}

/**
 * `methods.items` of the committed manifest schema: a method name, or an entry
 * per registered method with its own options schema (completion in editors).
 * `tools/gen_schema.ts` writes it into `experiments/schema.json`.
 */
export function methodItemsSchema(methods: Record<string, QuantMethod>): Record<string, unknown> {
  const [name, obj] = METHOD_ITEM_SCHEMA.oneOf;
  const names = Object.keys(methods);
  return {
    anyOf: [
      { ...name, enum: names },
      ...names.map((n) => ({
        ...obj,
        description: methods[n].description,
        properties: {
          ...obj.properties,
          name: { const: n },
          options: optionsSchemaOf(methods[n], true),
        },
      })),
    ],
  };
}

/**
 * Check a method's options (defaults merged with the manifest's) against its
 * schema: undefined when they fit, else `/option: what is wrong`.
 */
export function optionsError(method: QuantMethod, options: unknown): string | undefined {
  let v = optionValidators.get(method.name);
  if (!v) {
    v = ajv.compile(optionsSchemaOf(method)) as Validator;
    optionValidators.set(method.name, v);
  }
  if (v(options)) return undefined;
  // deno-lint-ignore no-explicit-any
  const e = (v.errors ?? [])[0] as any;
  if (e?.params?.additionalProperty) return `/${e.params.additionalProperty}: unknown option`;
  let msg = e?.message ?? "invalid";
  if (e?.params?.allowedValues) msg += ` (${e.params.allowedValues.join(", ")})`;
  // a relation to another option: name it (`{ $data: "1/alpha" }` -> "alpha")
  if (e?.schema?.$data) msg += ` (${String(e.schema.$data).replace(/^\d+\//, "")})`;
  return `${e?.instancePath || ""}: ${msg}`;
}

/** Validate and normalize a parsed manifest; `file` names it in errors. */
export async function normalizeManifest(raw: unknown, file: string): Promise<Manifest> {
  const validate = await getValidator();
  if (!validate(raw)) {
    // deno-lint-ignore no-explicit-any
    const errs = (validate.errors ?? []) as any[];
    // prefer the most specific error (deepest path)
    const e = errs.sort((a, b) => b.instancePath.length - a.instancePath.length)[0];
    const where = e?.instancePath || "/";
    let msg = e?.message ?? "invalid";
    if (e?.params?.additionalProperty) msg += ` "${e.params.additionalProperty}"`;
    if (e?.params?.allowedValues) msg += ` (${e.params.allowedValues.join(", ")})`;
    throw new VitqError(`${file}: ${where}: ${msg}`);
  }
  // deno-lint-ignore no-explicit-any
  const m = raw as any;
  const methods: MethodSpec[] = m.methods.map((x: unknown, i: number) => {
    const spec = typeof x === "string"
      ? { name: x }
      : x as { name: string; label?: string; options?: Record<string, unknown> };
    // own properties only: "constructor" or "__proto__" are not methods
    const method = Object.hasOwn(METHODS, spec.name) ? METHODS[spec.name] : undefined;
    if (!method) {
      throw new VitqError(
        `${file}: /methods/${i}/name: unknown method "${spec.name}" (known: ${
          Object.keys(METHODS).join(", ")
        })`,
      );
    }
    const options = { ...method.defaults, ...(spec.options ?? {}) } as Record<string, unknown>;
    const bad = optionsError(method, options);
    if (bad) {
      throw new VitqError(`${file}: /methods/${i}/options${bad} (method ${spec.name})`);
    }
    return { name: spec.name, label: spec.label ?? spec.name, options };
  });
  const labels = methods.map((x) => x.label);
  const dup = labels.find((l, i) => labels.indexOf(l) !== i);
  if (dup) {
    throw new VitqError(`${file}: /methods: label "${dup}" is used twice; give each entry a label`);
  }
  checkMixed(m.bits, methods, file);
  return {
    name: m.name,
    description: m.description ?? "",
    models: m.models,
    methods,
    bits: m.bits,
    dataset: {
      name: m.dataset.name,
      path: m.dataset.path,
      split: m.dataset.split ?? (m.dataset.name === "imagenet" ? "val" : "test"),
      subset: m.dataset.subset ?? schemaDefault(["dataset", "subset"]),
    },
    calibration: {
      size: m.calibration.size,
      seeds: m.calibration.seeds ?? schemaDefault(["calibration", "seeds"]),
      split: m.calibration.split ?? schemaDefault(["calibration", "split"]),
    },
    batchSize: m.batchSize ?? schemaDefault(["batchSize"]),
    threads: m.threads ?? schemaDefault(["threads"]),
    backend: m.backend ?? schemaDefault(["backend"]),
    speed: {
      repetitions: m.speed?.repetitions ?? schemaDefault(["speed", "repetitions"]),
      warmup: m.speed?.warmup ?? schemaDefault(["speed", "warmup"]),
      enabled: m.speed?.enabled ?? schemaDefault(["speed", "enabled"]),
    },
  };
}

/**
 * Mixed-precision bit entries: each target must lie within the candidate bit-widths,
 * and some method of the manifest must support mixed precision (the others get no
 * cell for that entry).
 */
function checkMixed(
  bits: Bits[],
  methods: MethodSpec[],
  file: string,
): void {
  bits.forEach((b, i) => {
    if (!b.mixed) return;
    const lo = Math.min(...b.mixed), hi = Math.max(...b.mixed);
    for (const k of ["w", "a"] as const) {
      if (b[k] < lo || b[k] > hi) {
        throw new VitqError(
          `${file}: /bits/${i}/${k}: target ${b[k]} is outside the mixed candidates ${lo}..${hi}`,
        );
      }
    }
    if (!methods.some((x) => METHODS[x.name].mixedPrecision)) {
      throw new VitqError(
        `${file}: /bits/${i}/mixed: no method of this manifest supports mixed precision (${
          Object.values(METHODS).filter((x) => x.mixedPrecision).map((x) => x.name).join(", ")
        } do)`,
      );
    }
  });
}

/** Largest manifest file read (bytes). */
export const MAX_MANIFEST_BYTES = 1 << 20;

/** Read, parse, validate and normalize a manifest file. */
export async function loadManifest(path: string): Promise<{ manifest: Manifest; text: string }> {
  let text: string;
  try {
    // a fifo or a device would never end: only regular files of sane size are read
    const st = await Deno.stat(path);
    if (!st.isFile) throw new VitqError(`${path}: cannot read manifest (not a regular file)`);
    if (st.size > MAX_MANIFEST_BYTES) {
      throw new VitqError(
        `${path}: cannot read manifest (${st.size} bytes; at most ${MAX_MANIFEST_BYTES})`,
      );
    }
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof VitqError) throw e;
    throw new VitqError(`${path}: cannot read manifest (${(e as Error).name})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new VitqError(`${path}: malformed JSON (${(e as Error).message})`);
  }
  return { manifest: await normalizeManifest(raw, path), text };
}
