/**
 * Model registry and model cards. `models/registry.json` maps short names
 * (`vit_fmnist`, `deit_s`, ...) to an ONNX file and a card describing input size,
 * normalization and provenance.
 *
 * @module
 */
import { VitqError } from "./errors.ts";

/** A model card (written by the training or export script). */
export interface ModelCard {
  name: string;
  arch?: string;
  file: string;
  input: { name: string; channels: number; height: number; width: number };
  normalization: { mean: number[]; std: number[] };
  classes: number;
  dataset: string;
  parameters?: number;
  fp32_top1?: number;
  [key: string]: unknown;
}

/** One registry entry. */
export interface RegistryEntry {
  file: string;
  card: string;
  dataset: string;
  description?: string;
}

/** A resolved model: name, ONNX path, card. */
export interface ResolvedModel {
  name: string;
  path: string;
  card: ModelCard;
}

/** Repository root (folder above `core/`). */
export const ROOT: string = new URL("../", import.meta.url).pathname;

/** Resolve a path relative to the repository root (absolute paths pass through). */
export function fromRoot(p: string): string {
  return p.startsWith("/") ? p : `${ROOT}${p}`;
}

/**
 * Read a small text file (a card, the registry), refusing anything that is not a
 * regular file (a fifo or a device would never end) or larger than 16 MiB.
 */
export async function readRegularText(path: string): Promise<string> {
  const st = await Deno.stat(path);
  if (!st.isFile) throw new Error("not a regular file");
  if (st.size > 16 << 20) throw new Error(`${st.size} bytes is too large`);
  return await Deno.readTextFile(path);
}

/** Read `models/registry.json`. */
export async function loadRegistry(): Promise<Record<string, RegistryEntry>> {
  const path = fromRoot("models/registry.json");
  const text = await Deno.readTextFile(path);
  const reg = JSON.parse(text);
  return reg.models ?? reg;
}

/**
 * Resolve a registry name, or a path ending in `.onnx` whose card is the `.json`
 * file beside it, to its files; `where` names the manifest field in errors.
 */
export async function resolveModel(name: string, where: string): Promise<ResolvedModel> {
  if (name.endsWith(".onnx")) {
    const path = fromRoot(name);
    const cardPath = path.replace(/\.onnx$/, ".json");
    let card: ModelCard;
    try {
      card = JSON.parse(await readRegularText(cardPath));
      if (!card || typeof card !== "object" || Array.isArray(card)) {
        throw new Error("not a JSON object");
      }
    } catch (err) {
      throw new VitqError(
        `${where}: cannot read model card ${cardPath} (${(err as Error).message})`,
      );
    }
    return { name: card.name ?? name, path, card };
  }
  const reg = await loadRegistry();
  const e = Object.hasOwn(reg, name) ? reg[name] : undefined;
  if (!e) {
    throw new VitqError(
      `${where}: unknown model "${name}" (known: ${Object.keys(reg).join(", ")})`,
    );
  }
  const cardPath = fromRoot(e.card);
  let card: ModelCard;
  try {
    card = JSON.parse(await readRegularText(cardPath));
    if (!card || typeof card !== "object" || Array.isArray(card)) {
      throw new Error("not a JSON object");
    }
  } catch (err) {
    throw new VitqError(
      `${cardPath}: cannot read model card for ${name} (${(err as Error).message})`,
    );
  }
  return { name, path: fromRoot(e.file), card };
}
