/**
 * The part every graph emitter shares (the gradient builder's and the I-ViT
 * integer graph's): nodes named through the emitter's own fresh names, and
 * constants created once per content key and reused. Each emitter keeps its
 * naming scheme ({@link GraphEmitter.fresh}): the gradient builder reserves
 * every name of the forward graph it extends, the I-ViT emitter starts from an
 * empty graph.
 *
 * @module
 */
import type { Graph, Tensor } from "./graph.ts";

// deno-lint-ignore no-explicit-any
type Proto = any;

/** Emits nodes and cached constants into one graph. */
export abstract class GraphEmitter {
  private readonly consts = new Map<string, string>();

  /** @param g the graph emitted into */
  constructor(readonly g: Graph) {}

  /** A value or node name derived from `prefix` that the emitter has not handed out. */
  abstract fresh(prefix: string): string;

  /**
   * Append a node named `name` computing `outputs` from `inputs`. The caller
   * names the outputs first, then the node, so fresh names count in that order.
   */
  protected emitNode(
    opType: string,
    inputs: string[],
    outputs: string[],
    attributes: Proto[],
    name: string,
    domain = "",
  ): void {
    this.g.addNode(opType, inputs, { outputs, attributes, name, domain });
  }

  /**
   * The constant cached under `key`; the first request names it
   * `fresh(prefix)`, adds `make(name)` as an initializer and calls `created`.
   */
  protected cachedConstant(
    key: string,
    prefix: string,
    make: (name: string) => Tensor,
    created?: (name: string) => void,
  ): string {
    const hit = this.consts.get(key);
    if (hit) return hit;
    const name = this.fresh(prefix);
    this.g.setInitializer(make(name));
    created?.(name);
    this.consts.set(key, name);
    return name;
  }
}
