/**
 * A function-preserving outlier transform: give a few channels of every
 * LayerNorm that feeds only linear layers the large ranges that post-LayerNorm
 * activations of ImageNet-pretrained ViTs have, without changing what the FP
 * graph computes.
 *
 * For a LayerNorm y = γ ⊙ x̂ + β whose output reaches only linear layers
 * (through reshapes, transposes, slices, the shifted-window roll, token gathers
 * or a token mean), scaling channel c's γ_c and β_c by f multiplies y_c by f,
 * and dividing input row c of every consuming weight by f gives back the same
 * product: W[c, :] (MatMul, weight [in, out]) or W[:, c] (Gemm with transB,
 * weight [out, in]). Only rounding changes (float32 products and quotients).
 *
 * Channels (2 to 4 per LayerNorm by default) and target ratios (20 to 60 by
 * default) are drawn from a seeded generator; the factor of channel c is chosen
 * so that its range on the measured images becomes `ratio` times the median
 * channel range of the transformed LayerNorm output.
 *
 * @module
 */
import { type Graph, type Node, Tensor } from "./graph.ts";
import type { Site } from "./sites.ts";
import { Rng } from "../rng.ts";
import { VitqError } from "../errors.ts";
import type { ImageSource, Runtime } from "../runtime/runtime.ts";
import { channelRanges, collectChannelStats, median } from "../runtime/channel_stats.ts";

/** Ops a LayerNorm output may pass through on its way to linear layers: they move or select values but keep each value in its channel (checked numerically by the callers). */
const CARRY = new Set([
  "Reshape",
  "Transpose",
  "Gather",
  "Slice",
  "Split",
  "Squeeze",
  "Unsqueeze",
  "Flatten",
  "Identity",
  "Concat",
  "Pad",
  "ReduceMean",
  "Expand",
]);

/** Ops that read only a value's shape (scaling it changes nothing). */
const SHAPE_ONLY = new Set(["Shape", "Size"]);

/** A linear layer consuming a LayerNorm output. */
export interface OutlierConsumer {
  /** The linear site. */
  site: Site;
  /** Weight axis indexing input channels (0 for MatMul [in, out], 1 for Gemm transB [out, in]). */
  inAxis: number;
}

/** A LayerNorm the transform can act on. */
export interface OutlierTarget {
  /** The LayerNorm site. */
  ln: Site;
  /** Initializer holding γ. */
  gamma: string;
  /** Initializer holding β (absent: β = 0). */
  beta?: string;
  /** Every linear layer the LayerNorm output reaches. */
  consumers: OutlierConsumer[];
}

/** A LayerNorm the transform leaves alone, and why. */
export interface OutlierSkip {
  site: string;
  reason: string;
}

/**
 * The LayerNorms whose output reaches only linear layers (every one of them
 * with an initializer weight of rank 2 whose input axis has the LayerNorm's
 * channel count), with those layers; the others, with the reason.
 */
export function outlierTargets(
  g: Graph,
  sites: Site[],
): { targets: OutlierTarget[]; skipped: OutlierSkip[] } {
  const idx = g.index();
  const byNode = new Map(sites.filter((s) => s.kind === "linear").map((s) => [s.node, s]));
  const targets: OutlierTarget[] = [];
  const skipped: OutlierSkip[] = [];
  for (const ln of sites.filter((s) => s.kind === "ln")) {
    const skip = (reason: string) => skipped.push({ site: ln.id, reason });
    const gamma = ln.gamma && g.initializers.has(ln.gamma) ? ln.gamma : undefined;
    if (!gamma) {
      skip("γ is not an initializer");
      continue;
    }
    if (ln.beta && !g.initializers.has(ln.beta)) {
      skip("β is not an initializer");
      continue;
    }
    const channels = g.initializers.get(gamma)!.size;
    const consumers: OutlierConsumer[] = [];
    let bad: string | undefined;
    const seen = new Set<string>();
    const queue = [ln.output];
    while (queue.length && !bad) {
      const v = queue.shift()!;
      if (seen.has(v)) continue;
      seen.add(v);
      for (const use of idx.consumers.get(v) ?? []) {
        const n: Node = g.nodes[use.node];
        const lin = byNode.get(n.name);
        if (lin && use.slot === 0 && n.opType !== "Conv") {
          const w = g.initializers.get(lin.weight!);
          const inAxis = 1 - (lin.weightOutAxis ?? 1);
          if (!w || w.dims.length !== 2 || w.dims[inAxis] !== channels) {
            bad = `consumer ${lin.id} has no rank-2 weight with ${channels} input channels`;
            break;
          }
          if (!consumers.some((c) => c.site === lin)) consumers.push({ site: lin, inAxis });
        } else if (SHAPE_ONLY.has(n.opType)) {
          continue;
        } else if (CARRY.has(n.opType) && use.slot === 0) {
          queue.push(...n.outputs);
        } else if (n.opType === "Concat") {
          queue.push(...n.outputs);
        } else {
          bad = `output reaches ${n.opType} node ${n.name} (not a linear layer)`;
          break;
        }
      }
    }
    if (!bad && consumers.length === 0) bad = "output reaches no linear layer";
    if (bad) skip(bad);
    else targets.push({ ln, gamma, beta: ln.beta, consumers });
  }
  return { targets, skipped };
}

/** Options of the outlier transform. */
export interface OutlierOptions {
  /** Seed of the channel and ratio draws. */
  seed: number;
  /** Fewest and most channels per LayerNorm (the count is drawn uniformly). */
  channels: [number, number];
  /** Range of the target ratio (channel range / median channel range), drawn uniformly. */
  ratio: [number, number];
  /**
   * Channels whose measured range is below this share of the median range are
   * never chosen (their factor would be huge and their weight rows vanish).
   */
  minRangeShare: number;
}

/** Defaults: 2-4 channels per LayerNorm, ratios 20-60x, seed 0. */
export const OUTLIER_DEFAULTS: OutlierOptions = {
  seed: 0,
  channels: [2, 4],
  ratio: [20, 60],
  minRangeShare: 0.1,
};

/** What the transform did to one LayerNorm. */
export interface LnOutliers {
  /** LayerNorm site id. */
  site: string;
  /** Linear sites whose weight rows were divided. */
  consumers: string[];
  /** Median channel range before the transform. */
  medianBefore: number;
  /** Median channel range after it (the chosen channels counted as the largest). */
  medianAfter: number;
  /** Chosen channels (ascending). */
  channels: number[];
  /** Measured range of each chosen channel before the transform. */
  rangesBefore: number[];
  /** Target ratio of each chosen channel's range to `medianAfter`. */
  ratios: number[];
  /** Factor each chosen channel's γ and β were multiplied by (float32). */
  factors: number[];
}

function checkOptions(o: OutlierOptions): void {
  const [c0, c1] = o.channels, [r0, r1] = o.ratio;
  if (!(Number.isInteger(c0) && Number.isInteger(c1) && c0 >= 1 && c1 >= c0)) {
    throw new VitqError(`outliers: channels must be integers 1 <= min <= max, got ${c0}-${c1}`);
  }
  if (!(r0 > 1 && r1 >= r0)) {
    throw new VitqError(`outliers: ratio must satisfy 1 < min <= max, got ${r0}-${r1}`);
  }
}

/**
 * Draw channels, ratios and factors for every target from its measured channel
 * ranges (`ranges`: LayerNorm output value -> range per channel). Deterministic
 * in `opts.seed` and the targets' order.
 */
export function chooseOutliers(
  targets: OutlierTarget[],
  ranges: Map<string, ArrayLike<number>>,
  opts: OutlierOptions = OUTLIER_DEFAULTS,
): LnOutliers[] {
  checkOptions(opts);
  const rng = new Rng(opts.seed);
  return targets.map((t) => {
    const r = ranges.get(t.ln.output);
    if (!r) throw new VitqError(`outliers: no channel ranges measured for ${t.ln.id}`);
    const med = medianOf(Array.from(r));
    const pool = Array.from(r, (_, c) => c).filter((c) => r[c] >= opts.minRangeShare * med);
    const [c0, c1] = opts.channels;
    const k = Math.min(c0 + rng.int(c1 - c0 + 1), pool.length);
    if (2 * k >= r.length) {
      throw new VitqError(
        `outliers: ${t.ln.id}: ${k} outlier channels of ${r.length} would move the median`,
      );
    }
    const channels = rng.shuffle(pool).slice(0, k).sort((a, b) => a - b);
    const [q0, q1] = opts.ratio;
    const ratios = channels.map(() => q0 + rng.next() * (q1 - q0));
    const after = Array.from(r);
    for (const c of channels) after[c] = Infinity;
    const medAfter = medianOf(after);
    const factors = channels.map((c, i) => Math.fround((ratios[i] * medAfter) / r[c]));
    return {
      site: t.ln.id,
      consumers: t.consumers.map((c) => c.site.id),
      medianBefore: med,
      medianAfter: medAfter,
      channels,
      rangesBefore: channels.map((c) => r[c]),
      ratios,
      factors,
    };
  });
}

function medianOf(xs: number[]): number {
  const a = [...xs].sort((x, y) => x - y);
  const h = a.length >> 1;
  return a.length % 2 ? a[h] : (a[h - 1] + a[h]) / 2;
}

function scaled(g: Graph, name: string, f: (data: Float32Array) => void): void {
  const t = g.initializers.get(name)!;
  const data = t.float32().slice();
  f(data);
  g.setInitializer(Tensor.fromFloat32(name, t.dims, data));
}

/**
 * A copy of `g` with each chosen channel's γ and β multiplied by its factor
 * and the matching input rows of every consuming weight divided by it.
 */
export function applyOutliers(g: Graph, targets: OutlierTarget[], choices: LnOutliers[]): Graph {
  const out = g.clone();
  const touched = new Set<string>();
  for (const ch of choices) {
    const t = targets.find((x) => x.ln.id === ch.site);
    if (!t) throw new VitqError(`outliers: ${ch.site} is not a target LayerNorm`);
    const names = [t.gamma, ...(t.beta ? [t.beta] : []), ...t.consumers.map((c) => c.site.weight!)];
    for (const n of names) {
      if (touched.has(n)) throw new VitqError(`outliers: initializer ${n} is shared`);
      touched.add(n);
    }
    const scaleVec = (d: Float32Array) => {
      ch.channels.forEach((c, i) => (d[c] = d[c] * ch.factors[i]));
    };
    scaled(out, t.gamma, scaleVec);
    if (t.beta) scaled(out, t.beta, scaleVec);
    for (const c of t.consumers) {
      const w = out.initializers.get(c.site.weight!)!;
      const [rows, cols] = w.dims;
      scaled(out, c.site.weight!, (d) => {
        ch.channels.forEach((k, i) => {
          const f = ch.factors[i];
          if (c.inAxis === 0) {
            for (let j = 0; j < cols; j++) d[k * cols + j] = d[k * cols + j] / f;
          } else for (let j = 0; j < rows; j++) d[j * cols + k] = d[j * cols + k] / f;
        });
      });
    }
  }
  return out;
}

/** Result of {@link makeOutliers}. */
export interface OutlierModel {
  /** The transformed graph. */
  graph: Graph;
  /** What was done to each LayerNorm. */
  layerNorms: LnOutliers[];
  /** LayerNorms left alone, with the reason. */
  skipped: OutlierSkip[];
  /** Measured range ratio (channel range / median channel range) of each chosen channel after the transform, per LayerNorm site. */
  measuredRatios: Map<string, number[]>;
}

/**
 * Measure the channel ranges of every target LayerNorm on `images`, draw the
 * outlier channels and factors, and transform the graph; then measure the
 * chosen channels' ratios on the same images in the transformed graph.
 */
export async function makeOutliers(
  runtime: Runtime,
  g: Graph,
  sites: Site[],
  images: ImageSource,
  batchSize: number,
  opts: OutlierOptions = OUTLIER_DEFAULTS,
): Promise<OutlierModel> {
  const { targets, skipped } = outlierTargets(g, sites);
  if (targets.length === 0) {
    throw new VitqError(`outliers: no LayerNorm feeds only linear layers`);
  }
  const values = targets.map((t) => t.ln.output);
  const before = await collectChannelStats(runtime, g, values, images, batchSize);
  const ranges = new Map([...before].map(([v, s]) => [v, channelRanges(s)]));
  const layerNorms = chooseOutliers(targets, ranges, opts);
  const graph = applyOutliers(g, targets, layerNorms);
  const after = await collectChannelStats(runtime, graph, values, images, batchSize);
  const measuredRatios = new Map<string, number[]>();
  targets.forEach((t, i) => {
    const r = channelRanges(after.get(t.ln.output)!);
    const m = median(r);
    measuredRatios.set(t.ln.id, layerNorms[i].channels.map((c) => r[c] / m));
  });
  return { graph, layerNorms, skipped, measuredRatios };
}

/** How far two graphs' logits are apart on a set of images. */
export interface LogitComparison {
  /** Images compared. */
  n: number;
  /** Largest over images of max |a - b| / max |a| (the image's largest logit magnitude). */
  maxRelative: number;
  /** Images whose Top-1 class differs. */
  top1Differs: number;
}

/** Run two graphs with the same input on `images` and compare their first outputs. */
export async function compareLogits(
  runtime: Runtime,
  a: Graph | Uint8Array,
  b: Graph | Uint8Array,
  images: ImageSource,
  batchSize: number,
): Promise<LogitComparison> {
  const sa = await runtime.createSession(a, "reference graph");
  const sb = await runtime.createSession(b, "transformed graph");
  let maxRelative = 0, top1Differs = 0;
  try {
    const input = sa.inputNames[0];
    for (let start = 0; start < images.length; start += batchSize) {
      const n = Math.min(batchSize, images.length - start);
      const feed = {
        [input]: { data: await images.slice(start, start + n), dims: [n, ...images.shape] },
      };
      const la = (await sa.run(feed))[sa.outputNames[0]].data;
      const lb = (await sb.run(feed))[sb.outputNames[0]].data;
      const k = la.length / n;
      for (let i = 0; i < n; i++) {
        let mx = 0, diff = 0, ba = 0, bb = 0;
        for (let j = 0; j < k; j++) {
          const x = la[i * k + j], y = lb[i * k + j];
          mx = Math.max(mx, Math.abs(x));
          diff = Math.max(diff, Math.abs(x - y));
          if (x > la[i * k + ba]) ba = j;
          if (y > lb[i * k + bb]) bb = j;
        }
        maxRelative = Math.max(maxRelative, diff / mx);
        if (ba !== bb) top1Differs++;
      }
    }
  } finally {
    await sa.release();
    await sb.release();
  }
  return { n: images.length, maxRelative, top1Differs };
}

/** Outlier statistics of one linear layer's input over a set of images. */
export interface SiteOutlierStats {
  /** Linear site id (`b0.qkv`, `head`, ...). */
  site: string;
  /** Its role (`qkv`, `proj`, `fc1`, `fc2`, `reduction`, `head`). */
  role: string;
  /** Its block (-1 outside blocks). */
  block: number;
  /** The input value measured. */
  value: string;
  /** Channels (last axis). */
  channels: number;
  /** Largest channel range (max - min). */
  maxRange: number;
  /** The channel holding it. */
  maxChannel: number;
  /** Median channel range. */
  medianRange: number;
  /** maxRange / medianRange. */
  ratio: number;
  /** Largest |x|. */
  absMax: number;
  /** Threshold τ. */
  tau: number;
  /** Values with |x| > τ. */
  above: number;
  /** Values seen. */
  count: number;
}

/**
 * Per linear layer input (every linear site but the patch embedding, whose
 * input is the image): the ratio of the largest channel range to the median
 * channel range and the share of values above `tau`, over `images`.
 */
export async function siteOutlierStats(
  runtime: Runtime,
  g: Graph,
  sites: Site[],
  images: ImageSource,
  batchSize: number,
  tau: number,
): Promise<SiteOutlierStats[]> {
  const lin = sites.filter((s) => s.kind === "linear" && s.role !== "patch_embed" && s.input);
  const stats = await collectChannelStats(
    runtime,
    g,
    lin.map((s) => s.input!),
    images,
    batchSize,
    tau,
  );
  return lin.map((s) => {
    const st = stats.get(s.input!)!;
    const r = channelRanges(st);
    let maxChannel = 0;
    for (let c = 1; c < r.length; c++) if (r[c] > r[maxChannel]) maxChannel = c;
    const medianRange = median(r);
    let absMax = 0;
    for (let c = 0; c < r.length; c++) {
      absMax = Math.max(absMax, Math.abs(st.min[c]), Math.abs(st.max[c]));
    }
    return {
      site: s.id,
      role: s.role,
      block: s.block,
      value: s.input!,
      channels: st.channels,
      maxRange: r[maxChannel],
      maxChannel,
      medianRange,
      ratio: r[maxChannel] / medianRange,
      absMax,
      tau,
      above: st.above,
      count: st.count,
    };
  });
}
