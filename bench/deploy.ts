/**
 * The deploy stage of a cell: when a method returns a deployable graph beside
 * its fake-quant graph, evaluate it on the same images (its Top-1 is stored
 * beside the fake-quant Top-1, so agreement is checked, not assumed), find which
 * sites run integer kernels and their share of the multiply-accumulates, list
 * the fused integer operators ONNX Runtime actually ran, and time FP32,
 * fake-quant and deploy graphs interleaved in one loop. Optionally save the
 * deploy graph (or the fake-quant one where none exists) with a model card.
 *
 * Where a model's activations outgrow the cache (ViT-S-sized and larger: the
 * rule of `batchChunkFor`, core/onnx/chunk.ts, that I-ViT's integer graph
 * uses too), the deploy graph runs the batch a few images at a time (an ONNX
 * `Loop` over chunks): its many elementwise passes (QuantizeLinear, Clip,
 * DequantizeLinear) then stay in cache. The chunked graph is what is
 * evaluated, timed and saved; its outputs are checked against the unchunked
 * graph's on the first images before it replaces it (else the unchunked
 * graph is kept), and `deploy_kind` says so. The FP32 and fake-quant graphs
 * are timed as given.
 *
 * @module
 */
import type { Graph } from "../core/onnx/graph.ts";
import { batchChunkFor, CHUNK_BYTES, chunkBatch } from "../core/onnx/chunk.ts";
import type { Site } from "../core/onnx/sites.ts";
import type { ImageSource, Runtime } from "../core/runtime/runtime.ts";
import { coverageShapes, integerCoverage } from "../core/quant/deploy.ts";
import type { ModelCard } from "../core/models.ts";
import type { LabelledSource } from "../datasets/source.ts";
import type { Bits, QuantizedModel } from "../methods/types.ts";
import { type EvalResult, evaluate } from "./evaluate.ts";
import { fusedOps, integerKernels, measureInterleaved, type Speed } from "./speed.ts";

/** Result columns the deploy stage fills (see `bench/store.ts`). */
export interface DeployFields {
  deploy_top1: number | null;
  deploy_correct: number | null;
  deploy_kind: string | null;
  deploy_bytes: number | null;
  deploy_ips: number | null;
  deploy_lat_med_ms: number | null;
  deploy_lat_p90_ms: number | null;
  int_sites: string | null;
  int_mac_share: number | null;
  fused_ops: string | null;
  saved_path: string | null;
}

/** Speeds of one cell's graphs, timed side by side. */
export interface CellSpeeds {
  fp: Speed;
  fake: Speed;
  deploy?: Speed;
}

/** Value shapes per FP model, keyed by the model's SHA-256 (shapes do not depend on anything else). */
const shapeCache = new Map<string, Map<string, number[]>>();

/** Shapes of the values the coverage needs (`coverageShapes`), cached per model. */
async function coverageDims(
  runtime: Runtime,
  sha: string,
  fp: Graph,
  sites: Site[],
  src: LabelledSource,
): Promise<Map<string, number[]>> {
  let dims = shapeCache.get(sha);
  if (!dims) shapeCache.set(sha, dims = await coverageShapes(runtime, fp, sites, src));
  return dims;
}

/** Everything the deploy stage needs of a cell. */
export interface DeployInput {
  runtime: Runtime;
  fp: { graph: Graph; bytes: Uint8Array; sites: Site[]; sha: string };
  q: QuantizedModel;
  fakeBytes: Uint8Array;
  evalSrc: LabelledSource;
  batchSize: number;
  /** Speed settings; absent: no timing. */
  speed?: { batch: number; repetitions: number; warmup: number };
  /** Cache budget of the batch chunking (bytes; default `CHUNK_BYTES`); 0: never chunk. */
  chunkBytes?: number;
}

/**
 * Largest difference between the first output of two graphs on the first
 * `n` images of `src`, relative to the largest magnitude of the first's
 * (0 when they agree bit for bit).
 */
async function outputDifference(
  runtime: Runtime,
  a: Graph,
  b: Graph,
  src: ImageSource,
  n: number,
): Promise<number> {
  const count = Math.min(n, src.length);
  const x = await src.slice(0, count);
  const outs: Float32Array[] = [];
  for (const g of [a, b]) {
    const s = await runtime.createSession(g, "deploy graph (chunking check)");
    try {
      const y = await s.run({ [s.inputNames[0]]: { data: x, dims: [count, ...src.shape] } });
      outs.push(y[s.outputNames[0]].data as Float32Array);
    } finally {
      await s.release();
    }
  }
  const [ya, yb] = outs;
  if (ya.length !== yb.length) return Infinity;
  let diff = 0, scale = 0;
  for (let i = 0; i < ya.length; i++) {
    if (Number.isFinite(ya[i])) scale = Math.max(scale, Math.abs(ya[i]));
    // equal values (infinities included) and NaN in both agree; otherwise measure the gap
    if (ya[i] === yb[i] || (Number.isNaN(ya[i]) && Number.isNaN(yb[i]))) continue;
    if (!Number.isFinite(ya[i]) || !Number.isFinite(yb[i])) return Infinity;
    diff = Math.max(diff, Math.abs(ya[i] - yb[i]));
  }
  return diff === 0 ? 0 : diff / Math.max(scale, 1e-30);
}

/** Relative output difference up to which a chunked deploy graph counts as the same graph. */
const CHUNK_TOLERANCE = 1e-5;

/**
 * The deploy graph as it is evaluated, timed and saved: run in batch chunks
 * where `batchChunkFor` asks for them (module doc) and the chunked graph's
 * outputs match, else `graph` itself. `note` is added to the deploy kind.
 */
export async function chunkedDeploy(
  runtime: Runtime,
  graph: Graph,
  dims: Map<string, number[]>,
  src: ImageSource,
  budget = CHUNK_BYTES,
): Promise<{ graph: Graph; chunk?: number; note?: string }> {
  // chunking slices the one (image) input: graphs with more inputs run whole
  const chunk = budget > 0 && graph.opset >= 11 && graph.inputNames.length === 1
    ? batchChunkFor(dims.values(), budget)
    : undefined;
  if (!chunk) return { graph };
  let chunked: Graph, d: number;
  try {
    chunked = chunkBatch(graph, chunk);
    // two chunks and a partial third: the slicing and the concatenation are exercised
    d = await outputDifference(runtime, graph, chunked, src, 2 * chunk + 1);
  } catch (e) {
    return { graph, note: `not run in batch chunks (${(e as Error).message.split("\n")[0]})` };
  }
  if (!(d <= CHUNK_TOLERANCE)) {
    return {
      graph,
      note: `not run in batch chunks (the chunked graph's outputs differed by ${
        d.toExponential(2)
      } relative)`,
    };
  }
  return {
    graph: chunked,
    chunk,
    note: `runs the batch ${chunk} images at a time (ONNX Loop, core/onnx/chunk.ts; outputs ${
      d === 0 ? "bit for bit" : `within ${d.toExponential(1)} relative of`
    } the unchunked graph's on the first ${Math.min(2 * chunk + 1, src.length)} images)`,
  };
}

/** Evaluate, inspect and time the deployable graph of a cell; `bytes` is its encoding. */
export async function deployStage(
  inp: DeployInput,
): Promise<
  { fields: DeployFields; eval?: EvalResult; speeds?: CellSpeeds; bytes?: Uint8Array }
> {
  const fields: DeployFields = {
    deploy_top1: null,
    deploy_correct: null,
    deploy_kind: null,
    deploy_bytes: null,
    deploy_ips: null,
    deploy_lat_med_ms: null,
    deploy_lat_p90_ms: null,
    int_sites: null,
    int_mac_share: null,
    fused_ops: null,
    saved_path: null,
  };
  const d = inp.q.deployable;
  let depBytes: Uint8Array | undefined;
  let ev: EvalResult | undefined;
  if (d) {
    const dims = await coverageDims(
      inp.runtime,
      inp.fp.sha,
      inp.fp.graph,
      inp.fp.sites,
      inp.evalSrc,
    );
    const run = await chunkedDeploy(inp.runtime, d.graph, dims, inp.evalSrc, inp.chunkBytes);
    depBytes = run.graph.toBytes();
    ev = await evaluate(inp.runtime, depBytes, inp.evalSrc, inp.batchSize);
    // coverage from the plain graph (a chunked graph holds the same nodes inside its Loop)
    const cov = integerCoverage(inp.fp.graph, d.graph, inp.fp.sites, dims);
    Object.assign(fields, {
      deploy_top1: ev.top1,
      deploy_correct: ev.correct,
      deploy_kind: run.note ? `${d.kind}; ${run.note}` : d.kind,
      deploy_bytes: depBytes.length,
      int_sites: cov.integerSites.join(","),
      int_mac_share: cov.totalMacs > 0 ? cov.integerMacs / cov.totalMacs : null,
      fused_ops: integerKernels(await fusedOps(inp.runtime, depBytes)) || "none",
    });
  } else if (inp.q.graphKind?.startsWith("integer")) {
    // an integer-only graph (I-ViT) is its own deploy graph: record the integer kernels it runs
    fields.fused_ops = integerKernels(await fusedOps(inp.runtime, inp.fakeBytes)) || "none";
  }
  let speeds: CellSpeeds | undefined;
  if (inp.speed) {
    const graphs = [inp.fp.bytes, inp.fakeBytes, ...(depBytes ? [depBytes] : [])];
    const [fp, fake, deploy] = await measureInterleaved(
      inp.runtime,
      graphs,
      inp.evalSrc.shape,
      inp.speed,
    );
    speeds = { fp, fake, deploy };
    if (deploy) {
      fields.deploy_ips = deploy.ips;
      fields.deploy_lat_med_ms = deploy.latMedMs;
      fields.deploy_lat_p90_ms = deploy.latP90Ms;
    }
  }
  return { fields, eval: ev, speeds, bytes: depBytes };
}

/** What a saved model's card adds to the FP model's card. */
export interface SavedCard extends ModelCard {
  quantized: {
    cell_id: string;
    manifest: string;
    method: string;
    label: string;
    options: Record<string, unknown>;
    bits: Bits;
    calib_seed: number;
    calib_hash: string;
    eval_hash: string;
    dataset: Record<string, unknown>;
    calibration: Record<string, unknown>;
    graph: string;
    top1: number;
    deploy_top1: number | null;
    source_model: string;
    source_sha256: string;
  };
}

/**
 * Save a cell's model under `dir`: the deploy graph where one exists, else the
 * fake-quant graph, as `<cell id>.onnx` with `<cell id>.json` (the FP model's
 * card plus a `quantized` section). Returns the ONNX path and its size.
 */
export async function saveCellModel(
  dir: string,
  bytes: Uint8Array,
  card: ModelCard,
  quantized: SavedCard["quantized"],
): Promise<{ path: string; bytes: number }> {
  await Deno.mkdir(dir, { recursive: true });
  const base = `${dir}/${quantized.cell_id}`;
  const saved: SavedCard = {
    ...card,
    name:
      `${card.name}-${quantized.label}-w${quantized.bits.w}a${quantized.bits.a}-s${quantized.calib_seed}`,
    file: `${quantized.cell_id}.onnx`,
    quantized,
  };
  // write both under temporary names, then rename: a reader never sees half a model
  await Deno.writeFile(`${base}.onnx.tmp`, bytes);
  await Deno.writeTextFile(`${base}.json.tmp`, JSON.stringify(saved, null, 2) + "\n");
  await Deno.rename(`${base}.onnx.tmp`, `${base}.onnx`);
  await Deno.rename(`${base}.json.tmp`, `${base}.json`);
  return { path: `${base}.onnx`, bytes: bytes.length };
}
