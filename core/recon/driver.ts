/**
 * The block-by-block reconstruction driver: walks the units of a graph (patch
 * embedding, per block the attention and the MLP module, Swin reductions, head;
 * see `units.ts`) in network order and hands each to the method with
 * everything reconstruction needs:
 *
 * - the unit's FP input, output and attention map over the calibration images
 *   ({@link FpCache}: captured for groups of consecutive units in one FP pass
 *   each, within a memory budget, so the FP model is not rerun per unit);
 * - the unit's input in the model quantized so far, computed from a
 *   {@link frontier}: the values the next unit's input still needs are carried
 *   from one unit to the next, and only the short segment between two unit
 *   inputs is run with the last unit's frozen quantizers (a full capture of the
 *   quantized prefix where no frontier exists);
 * - the unit graph cut from the FP graph (input, shape sources, outputs).
 *
 * The method decides the quantizers and how they are learned; it returns the
 * unit's frozen weights and activation quantizers, which the driver applies
 * to every later unit's input. ADFQ-ViT (methods/adfq.ts) is one such method.
 *
 * @module
 */
import { ancestors, dataValues, type Graph, type GraphIndex } from "../onnx/graph.ts";
import type { Site } from "../onnx/sites.ts";
import { BatchCollector, type Captured, captureValues } from "../runtime/capture.ts";
import { captureGraph, type ImageSource, type Runtime } from "../runtime/runtime.ts";
import { type ActState, quantizeGraph } from "./quantizers.ts";
import { shapeFeeds, type UnitTensors } from "./train.ts";
import { cutUnit, shapeSources, type Unit } from "./units.ts";

/**
 * Run `graph` over cached rows of its inputs (each holding a whole number of
 * rows per image) and collect `outputs`, concatenated along axis 0.
 */
export async function runRows(
  rt: Runtime,
  graph: Graph,
  inputs: Map<string, Captured>,
  nImages: number,
  imagesPerRun: number,
  outputs: string[],
  shapes?: UnitTensors,
): Promise<Map<string, Captured>> {
  outputs = [...new Set(outputs)];
  const session = await rt.createSession(captureGraph(graph, outputs), "unit capture graph");
  const parts = new BatchCollector(nImages);
  try {
    for (let s = 0; s < nImages; s += imagesPerRun) {
      const n = Math.min(imagesPerRun, nImages - s);
      const feeds = shapes ? shapeFeeds(shapes, n) : {};
      for (const [name, x] of inputs) {
        const rows = x.dims[0] / nImages, per = x.data.length / x.dims[0];
        feeds[name] = {
          data: x.data.subarray(s * rows * per, (s + n) * rows * per),
          dims: [n * rows, ...x.dims.slice(1)],
        };
      }
      const out = await session.run(feeds);
      for (const v of outputs) parts.push(v, out[v].data, out[v].dims, n);
    }
  } finally {
    await session.release();
  }
  return parts.finish();
}

/**
 * The frontier between unit inputs `a` and `b` (b later): data values
 * computed on the way to `a` that the rest of the way to `b` consumes
 * (shape computations on the way to `a` are redone from the data values they
 * measure). With them, `b` in the model quantized up to the unit of `a` is
 * computed by the short segment in between instead of the whole prefix.
 * Undefined when the segment needs a graph input.
 */
export function frontier(
  g: Graph,
  idx: GraphIndex,
  data: Set<string>,
  a: string,
  b: string,
): string[] | undefined {
  const before = ancestors(g, idx, [a]), upto = ancestors(g, idx, [b]);
  const inputs = new Set(g.inputNames);
  const seg = [...upto].filter((n) => !before.has(n));
  const inSeg = new Set(seg);
  const out = new Set<string>();
  for (let k = 0; k < seg.length; k++) {
    for (const v of g.nodes[seg[k]].inputs) {
      if (!v) continue;
      if (inputs.has(v)) return undefined;
      const p = idx.producer.get(v);
      if (p === undefined || inSeg.has(p)) continue;
      if (data.has(v)) out.add(v);
      else {
        inSeg.add(p);
        seg.push(p);
      }
    }
  }
  return [...out];
}

/** The first `n` images' rows of a captured tensor. */
export function firstImages(t: Captured, nImages: number, n: number): Captured {
  const rows = t.dims[0] / nImages, per = t.data.length / t.dims[0];
  const k = Math.min(n, nImages);
  return { data: t.data.subarray(0, k * rows * per), dims: [k * rows, ...t.dims.slice(1)] };
}

/** Bytes of FP values held at once by {@link FpCache}. */
export const FP_CACHE_BYTES = 384 * 2 ** 20;

/** What the driver runs on: the FP graph, the runtime and the calibration images. */
export interface ReconSource {
  graph: Graph;
  runtime: Runtime;
  calib: ImageSource;
  batchSize: number;
}

/**
 * FP values of the units over the calibration images, captured for groups of
 * consecutive units in one pass each (as many units as fit
 * {@link FP_CACHE_BYTES}), so the FP model is not rerun for every unit.
 */
export class FpCache {
  private groups: number[][] = [];
  private held = new Map<number, Map<string, Captured>>();

  /** `values[i]`: the FP values unit `i` needs. */
  constructor(private src: ReconSource, private values: string[][]) {}

  /** Measure the values' sizes on one image and group the units. */
  async plan(): Promise<void> {
    const calib = this.src.calib;
    const one: ImageSource = { length: 1, shape: calib.shape, slice: (a, b) => calib.slice(a, b) };
    const all = [...new Set(this.values.flat())];
    const probe = await captureValues(this.src.runtime, this.src.graph, all, one, 1);
    const bytes = (vs: string[]) =>
      vs.reduce((a, v) => a + probe.get(v)!.data.length * 4, 0) * calib.length;
    let cur: number[] = [], size = 0;
    this.values.forEach((vs, i) => {
      const b = bytes(vs);
      if (cur.length && size + b > FP_CACHE_BYTES) {
        this.groups.push(cur);
        cur = [];
        size = 0;
      }
      cur.push(i);
      size += b;
    });
    if (cur.length) this.groups.push(cur);
  }

  /** The FP values of unit `i` (captures its group when first asked). */
  async get(i: number): Promise<Map<string, Captured>> {
    if (!this.held.has(i)) {
      const group = this.groups.find((g) => g.includes(i))!;
      const vals = [...new Set(group.flatMap((u) => this.values[u]))];
      const { runtime, graph, calib, batchSize } = this.src;
      const cap = await captureValues(runtime, graph, vals, calib, batchSize);
      for (const u of group) {
        this.held.set(u, new Map(this.values[u].map((v) => [v, cap.get(v)!])));
      }
    }
    return this.held.get(i)!;
  }

  /** Forget unit `i`'s values. */
  drop(i: number): void {
    this.held.delete(i);
  }
}

/** A unit's frozen quantizers, as the method returns them. */
export interface FrozenUnit {
  /** Final (dequantized) weights of the unit's linear sites. */
  weights: { site: Site; data: Float32Array; dims: number[] }[];
  /** The unit's activation quantizers, with their parameters. */
  acts: ActState[];
}

/** What the method gets for one unit. */
export interface UnitInputs {
  /** Position of the unit in network order. */
  index: number;
  unit: Unit;
  /** The unit cut from the FP graph: inputs the unit input and `data.shapeInputs`, outputs {@link unitOutputs}. */
  graph: Graph;
  /** The unit's input in the model quantized so far and its FP input, output and attention map. */
  data: UnitTensors;
}

/** Outputs of a unit: its output, and the attention map of an attention unit. */
export function unitOutputs(u: Unit): string[] {
  return [u.output, ...(u.attn ? [u.attn] : [])];
}

/**
 * Reconstruct `units` one after the other: for each, gather its inputs (see
 * the module doc) and call `reconstruct`, whose frozen quantizers apply to
 * every later unit. Returns the frozen units in order.
 */
export async function reconstructUnits(
  src: ReconSource,
  units: Unit[],
  reconstruct: (u: UnitInputs) => Promise<FrozenUnit>,
): Promise<FrozenUnit[]> {
  const { graph, runtime: rt, calib, batchSize } = src;
  const nImages = calib.length;
  const extras = units.map((u) => shapeSources(graph, [u.input], unitOutputs(u)));
  const fpCache = new FpCache(src, units.map((u, i) => [u.input, ...unitOutputs(u), ...extras[i]]));
  const gidx = graph.index();
  const gdata = dataValues(graph);
  const fronts = units.map((u, i) =>
    i + 1 < units.length ? frontier(graph, gidx, gdata, u.input, units[i + 1].input) : undefined
  );
  const frozen: FrozenUnit[] = [];
  let carried: Map<string, Captured> | undefined;
  /** The wanted values from the segment after the last frozen unit, fed with the carried frontier. */
  const segmentCapture = async (
    last: FrozenUnit,
    from: Map<string, Captured>,
    want: string[],
  ): Promise<Map<string, Captured> | undefined> => {
    const g = quantizeGraph(graph, last.weights, last.acts);
    let seg: Graph;
    try {
      seg = cutUnit(
        g,
        [...from].map(([v, t], i) => ({ name: v, dims: [`rows${i}`, ...t.dims.slice(1)] })),
        want.filter((v) => !from.has(v)),
      );
    } catch {
      return undefined;
    }
    const out = await runRows(rt, seg, from, nImages, batchSize, want.filter((v) => !from.has(v)));
    for (const v of want) if (from.has(v)) out.set(v, from.get(v)!);
    return out;
  };
  await fpCache.plan();
  for (const [ui, unit] of units.entries()) {
    const extra = extras[ui];
    const fp = await fpCache.get(ui);
    // the unit's input in the model quantized so far, and the frontier to the next unit
    const want = [...new Set([unit.input, ...(fronts[ui] ?? [])])];
    let got: Map<string, Captured> | undefined;
    if (ui === 0) {
      got = fronts[0]?.length ? await captureValues(rt, graph, want, calib, batchSize) : fp;
    } else if (carried && fronts[ui - 1]) got = await segmentCapture(frozen[ui - 1], carried, want);
    if (!got) {
      const qg = quantizeGraph(
        graph,
        frozen.flatMap((f) => f.weights),
        frozen.flatMap((f) => f.acts),
      );
      got = await captureValues(rt, qg, want, calib, batchSize);
    }
    const qIn = got.get(unit.input)!;
    carried = fronts[ui] ? new Map(fronts[ui]!.map((v) => [v, got!.get(v)!])) : undefined;
    const unitGraph = cutUnit(
      graph,
      [
        { name: unit.input, dims: ["batch", ...qIn.dims.slice(1)] },
        ...extra.map((v, i) => ({ name: v, dims: [`batch_s${i}`, ...fp.get(v)!.dims.slice(1)] })),
      ],
      unitOutputs(unit),
    );
    const data: UnitTensors = {
      nImages,
      qIn,
      fpIn: fp.get(unit.input)!,
      fpOut: fp.get(unit.output)!,
      fpAttn: unit.attn ? fp.get(unit.attn) : undefined,
      shapeInputs: extra.map((v) => ({ name: v, dims: fp.get(v)!.dims })),
    };
    frozen.push(await reconstruct({ index: ui, unit, graph: unitGraph, data }));
    fpCache.drop(ui);
  }
  return frozen;
}
