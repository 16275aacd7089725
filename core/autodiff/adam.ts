/**
 * Adam with cosine learning-rate decay over parameters held in TypeScript, and
 * a loop that feeds them to a gradient graph's session every step. The
 * parameters are graph inputs of that graph, so one session serves all steps:
 * nothing is rebuilt between steps.
 *
 * @module
 */
import type { Session, TensorData } from "../runtime/runtime.ts";
import { VitqError } from "../errors.ts";

/** A learnable float32 tensor (updated in place). */
export interface Param {
  /** Values, row-major. */
  data: Float32Array;
  /** Shape, as fed to the session. */
  dims: number[];
}

/** Adam hyper-parameters and schedule. */
export interface AdamOptions {
  /** Peak learning rate. */
  lr: number;
  /** Total number of steps of the cosine schedule. */
  steps: number;
  /** Learning rate at the end of the schedule (default 0). */
  minLr?: number;
  /** Linear warm-up steps from 0 to `lr` (default 0). */
  warmup?: number;
  /** Decay of the first moment (default 0.9). */
  beta1?: number;
  /** Decay of the second moment (default 0.999). */
  beta2?: number;
  /** Denominator guard (default 1e-8). */
  eps?: number;
  /** Decoupled weight decay (AdamW), default 0. */
  weightDecay?: number;
  /** Per-parameter learning-rate multipliers. */
  lrScale?: Record<string, number>;
}

/**
 * Learning rate at step `t` (0-based): linear warm-up, then cosine decay from
 * `lr` to `minLr` over the remaining steps.
 */
export function cosineLr(t: number, o: AdamOptions): number {
  const warm = o.warmup ?? 0, minLr = o.minLr ?? 0;
  if (t < warm) return o.lr * (t + 1) / warm;
  const span = Math.max(o.steps - warm, 1);
  const p = Math.min(Math.max((t - warm) / span, 0), 1);
  return minLr + 0.5 * (o.lr - minLr) * (1 + Math.cos(Math.PI * p));
}

/** Adam (Kingma & Ba) with bias correction, over named Float32Array parameters. */
export class Adam {
  /** Steps taken so far. */
  t = 0;
  private m = new Map<string, Float64Array>();
  private v = new Map<string, Float64Array>();

  /**
   * Create an optimizer over `params` (moments start at zero).
   *
   * @param params parameters to update in place
   * @param opts hyper-parameters and schedule
   */
  constructor(readonly params: Map<string, Param>, readonly opts: AdamOptions) {
    if (!(opts.lr > 0) || !(opts.steps > 0)) {
      throw new VitqError(`adam: lr and steps must be positive (got ${opts.lr}, ${opts.steps})`);
    }
    for (const [k, p] of params) {
      this.m.set(k, new Float64Array(p.data.length));
      this.v.set(k, new Float64Array(p.data.length));
    }
  }

  /** Apply one update from gradients by parameter name; returns the learning rate used. */
  step(grads: Map<string, Float32Array> | Record<string, Float32Array>): number {
    const get = (k: string) => grads instanceof Map ? grads.get(k) : grads[k];
    const b1 = this.opts.beta1 ?? 0.9, b2 = this.opts.beta2 ?? 0.999;
    const eps = this.opts.eps ?? 1e-8, wd = this.opts.weightDecay ?? 0;
    const lr = cosineLr(this.t, this.opts);
    this.t++;
    const c1 = 1 - b1 ** this.t, c2 = 1 - b2 ** this.t;
    for (const [k, p] of this.params) {
      const g = get(k);
      if (!g) throw new VitqError(`adam: no gradient for parameter ${k}`);
      if (g.length !== p.data.length) {
        throw new VitqError(
          `adam: gradient of ${k} has ${g.length} values, expected ${p.data.length}`,
        );
      }
      const m = this.m.get(k)!, v = this.v.get(k)!;
      const a = lr * (this.opts.lrScale?.[k] ?? 1);
      for (let i = 0; i < g.length; i++) {
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        const upd = (m[i] / c1) / (Math.sqrt(v[i] / c2) + eps);
        p.data[i] = p.data[i] - a * (upd + wd * p.data[i]);
      }
    }
    return lr;
  }
}

/** What {@link minimize} needs besides the optimizer settings. */
export interface MinimizeOptions extends AdamOptions {
  /** Loss output of the gradient graph. */
  lossName: string;
  /** Gradient output for each parameter (from `buildGradientGraph`). */
  gradNames: Map<string, string>;
  /** Other feeds of each step (data batch, targets...), fixed or per step. */
  feeds?:
    | Record<string, TensorData>
    | ((t: number) => Record<string, TensorData> | Promise<Record<string, TensorData>>);
  /** Called after each update (e.g. to keep a step size positive). */
  afterStep?: (t: number, loss: number, params: Map<string, Param>) => void;
}

/**
 * Minimize the loss of a gradient-graph session over `params` (graph inputs of
 * that graph) with Adam and cosine decay; the parameters are updated in place.
 * Returns the loss before each step.
 */
export async function minimize(
  session: Session,
  params: Map<string, Param>,
  opts: MinimizeOptions,
): Promise<number[]> {
  const adam = new Adam(params, opts);
  const losses: number[] = [];
  for (const k of params.keys()) {
    if (!opts.gradNames.has(k)) throw new VitqError(`minimize: no gradient output for ${k}`);
  }
  for (let t = 0; t < opts.steps; t++) {
    const base = typeof opts.feeds === "function" ? await opts.feeds(t) : opts.feeds ?? {};
    const feeds: Record<string, TensorData> = { ...base };
    for (const [k, p] of params) feeds[k] = { data: p.data, dims: p.dims };
    const out = await session.run(feeds);
    const loss = out[opts.lossName].data[0];
    losses.push(loss);
    const grads = new Map<string, Float32Array>();
    for (const k of params.keys()) grads.set(k, out[opts.gradNames.get(k)!].data);
    adam.step(grads);
    opts.afterStep?.(t, loss, params);
  }
  return losses;
}
