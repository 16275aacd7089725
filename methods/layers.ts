/**
 * The one way a method builds its {@link LayerRecord}s: add one entry per
 * quantized tensor, then ask for the records. Each record carries the element
 * count of its tensor (a weight's size, an activation's elements per image), so
 * achieved average bits and model bytes are computed from the records rather
 * than assumed.
 *
 * @module
 */
import type { Site } from "../core/onnx/sites.ts";
import { captureGraph, runBatches } from "../core/runtime/runtime.ts";
import { VitqError } from "../core/errors.ts";
import type { LayerRecord, QuantContext } from "./types.ts";

/**
 * The site fields a record copies. An engine may quantize a value outside any
 * site: then `id` is the value name and `kind` says what it is (`constant`, `activation`).
 */
export interface RecordSite {
  id: string;
  kind: Site["kind"] | "constant" | "activation";
  role: string;
  block: number;
}

/** How one tensor was quantized. */
export interface TensorQuant {
  bits: number;
  /** Step size (first channel's for per-channel quantizers). */
  scale: number;
  /** Granularity and type, e.g. `per-tensor sym`. */
  quantizer: string;
  /** SQNR in dB where measured; non-finite values are stored as null. */
  sqnrDb?: number | null;
  /** Element count when the method already knows it; measured otherwise. */
  elements?: number;
}

interface Pending {
  site: RecordSite;
  tensor: string;
  value: string;
  q: TensorQuant;
}

/**
 * Collects the layer records of one quantized model.
 *
 * `add` takes the graph value the tensor is (a weight initializer, or the
 * activation value in the FP graph); `records` fills element counts: an
 * initializer's or constant's size, else the value's elements for one
 * calibration image, measured by running the FP graph once on that image.
 */
export class LayerRecorder {
  private pending: Pending[] = [];

  constructor(private readonly ctx: Pick<QuantContext, "graph" | "runtime" | "calib">) {}

  /** Record one quantized tensor of `site`: `tensor` names its role (`weight`, `input`, `a`, ...). */
  add(site: RecordSite, tensor: string, value: string, q: TensorQuant): void {
    this.pending.push({ site, tensor, value, q });
  }

  /** The records, in the order added, with their element counts. */
  async records(): Promise<LayerRecord[]> {
    const { graph } = this.ctx;
    const idx = graph.index();
    const known = new Map<string, number>();
    const measure = new Set<string>();
    const image = this.ctx.calib.shape.reduce((a, b) => a * b, 1);
    for (const p of this.pending) {
      if (p.q.elements !== undefined) continue;
      const c = graph.constant(p.value, idx);
      if (c) known.set(p.value, c.size);
      else if (graph.inputNames.includes(p.value)) known.set(p.value, image);
      else measure.add(p.value);
    }
    for (const [v, n] of await perImageElements(this.ctx, [...measure])) known.set(v, n);
    return this.pending.map(({ site, tensor, value, q }) => ({
      site: site.id,
      kind: site.kind,
      role: site.role,
      block: site.block,
      tensor,
      bits: q.bits,
      scale: q.scale,
      quantizer: q.quantizer,
      sqnrDb: q.sqnrDb !== undefined && q.sqnrDb !== null && Number.isFinite(q.sqnrDb)
        ? q.sqnrDb
        : null,
      elements: q.elements ?? known.get(value)!,
    }));
  }
}

/** Elements of each value for one image, from one run of the graph on the first calibration image. */
async function perImageElements(
  ctx: Pick<QuantContext, "graph" | "runtime" | "calib">,
  values: string[],
): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  if (values.length === 0) return out;
  const produced = new Set(ctx.graph.nodes.flatMap((n) => n.outputs));
  const missing = values.find((v) => !produced.has(v));
  if (missing) throw new VitqError(`layer record: value ${missing} is not in the FP graph`);
  if (ctx.calib.length === 0) throw new VitqError("layer record: no calibration image to measure");
  const one = { length: 1, shape: ctx.calib.shape, slice: () => ctx.calib.slice(0, 1) };
  const session = await ctx.runtime.createSession(captureGraph(ctx.graph, values), "shape graph");
  try {
    await runBatches(session, one, 1, (res) => {
      for (const v of values) out.set(v, res[v].data.length);
    });
  } finally {
    await session.release();
  }
  return out;
}
