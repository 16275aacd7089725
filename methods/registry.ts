/**
 * The method registry: every method vitq can run, keyed by name.
 *
 * @module
 */
import { minmax, percentile } from "./baselines.ts";
import { baseptq, ptq4vit } from "./ptq4vit.ts";
import { ivit } from "./ivit.ts";
import { adfq } from "./adfq.ts";
import { tsptq } from "./tsptq.ts";
import { mptq } from "./mptq.ts";
import { repq } from "./repq.ts";
import type { QuantMethod } from "./types.ts";

/** All registered methods. Add a method by importing it and listing it here. */
export const METHODS: Record<string, QuantMethod> = {
  [minmax.name]: minmax,
  [percentile.name]: percentile,
  [baseptq.name]: baseptq,
  [ptq4vit.name]: ptq4vit,
  [ivit.name]: ivit,
  [adfq.name]: adfq,
  [tsptq.name]: tsptq,
  [mptq.name]: mptq,
  [repq.name]: repq,
};
