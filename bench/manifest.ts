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
  bits: { w: number; a: number }[];
  dataset: {
    name: "fashion-mnist" | "imagenet";
    path?: string;
    split: "test" | "train" | "val";
    subset: SubsetRule;
  };
  calibration: { size: number; seeds: number[]; split: "train" | "test" | "val" };
  batchSize: number;
  threads: number;
  backend: "node" | "wasm";
  speed: { repetitions: number; warmup: number; enabled: boolean };
}

let validator: ((x: unknown) => boolean) & { errors?: unknown[] | null } | undefined;

async function getValidator() {
  if (!validator) {
    const schema = JSON.parse(await Deno.readTextFile(fromRoot("experiments/schema.json")));
    // deno-lint-ignore no-explicit-any
    const AjvCtor = (Ajv as any).default ?? Ajv;
    const ajv = new AjvCtor({ allErrors: false, strict: false });
    validator = ajv.compile(schema);
  }
  return validator!;
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
    for (const k of Object.keys(spec.options ?? {})) {
      if (!Object.hasOwn(method.defaults, k)) {
        throw new VitqError(
          `${file}: /methods/${i}/options/${k}: unknown option of method ${spec.name}`,
        );
      }
    }
    const options = { ...method.defaults, ...(spec.options ?? {}) };
    const bad = method.checkOptions?.(options);
    if (bad) throw new VitqError(`${file}: /methods/${i}/options: ${bad}`);
    return { name: spec.name, label: spec.label ?? spec.name, options };
  });
  const labels = methods.map((x) => x.label);
  const dup = labels.find((l, i) => labels.indexOf(l) !== i);
  if (dup) {
    throw new VitqError(`${file}: /methods: label "${dup}" is used twice; give each entry a label`);
  }
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
      subset: m.dataset.subset ?? { rule: "all" },
    },
    calibration: {
      size: m.calibration.size,
      seeds: m.calibration.seeds ?? [0],
      split: m.calibration.split ?? "train",
    },
    batchSize: m.batchSize ?? 100,
    threads: m.threads ?? 2,
    backend: m.backend ?? "node",
    speed: {
      repetitions: m.speed?.repetitions ?? 10,
      warmup: m.speed?.warmup ?? 3,
      enabled: m.speed?.enabled ?? true,
    },
  };
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
