// Key/value cache for incremental decoding: per layer, keys and values of every position
// seen so far, in preallocated buffers [B, H_kv, capacity, D] (the layout attention
// reads) of the model's activation dtype (f32 or bf16), so a decoding step writes only
// its new positions. A forward pass appends to
// every layer at the same offset and then advances the cache by its length.
import type { Backend } from '../backend/backend.js';
import { kernel } from '../backend/backend.js';
import { formatShape } from '../tensor/shape.js';
import { empty, keep, type Tensor, view } from '../tensor/tensor.js';

export class KVCache {
  private readonly keys: Tensor[] = [];
  private readonly values: Tensor[] = [];
  private filled = 0;

  constructor(
    readonly numLayers: number,
    readonly batch: number,
    readonly numKvHeads: number,
    readonly headDim: number,
    /** Positions the cache can hold. */
    readonly capacity: number,
    backend: Backend,
    /** The dtype keys and values are stored (and attended) in. */
    readonly dtype: 'f32' | 'bf16' = 'f32',
  ) {
    for (let i = 0; i < numLayers; i++) {
      this.keys.push(keep(empty([batch, numKvHeads, capacity, headDim], dtype, backend)));
      this.values.push(keep(empty([batch, numKvHeads, capacity, headDim], dtype, backend)));
    }
  }

  /** Positions stored (and the offset the next forward pass writes at). */
  get length(): number {
    return this.filled;
  }

  /**
   * Writes layer `layer`'s new keys and values k, v [B, H_kv, T, D] at the current
   * offset and returns views of everything stored for that layer, [B, H_kv, length + T, D].
   */
  append(layer: number, k: Tensor, v: Tensor): [Tensor, Tensor] {
    const T = k.shape[2];
    const want = [this.batch, this.numKvHeads, T, this.headDim];
    for (const t of [k, v]) {
      if (t.rank !== 4 || t.shape.some((d, i) => d !== want[i])) throw new Error(`KVCache: expected ${formatShape(want)}, got ${formatShape(t.shape)}`);
    }
    if (this.filled + T > this.capacity) throw new Error(`KVCache: ${this.filled} + ${T} positions exceed the capacity ${this.capacity}`);
    const out: Tensor[] = [];
    for (const [buf, src] of [[this.keys[layer], k], [this.values[layer], v]] as const) {
      const dst = view(buf, want, buf.strides, this.filled * buf.strides[2]);
      kernel(buf.backend, 'copy')(src, dst);
      dst.dispose();
      out.push(view(buf, [this.batch, this.numKvHeads, this.filled + T, this.headDim], buf.strides, 0));
    }
    return [out[0], out[1]];
  }

  /** Called once per forward pass, after every layer has appended T positions. */
  advance(T: number): void {
    this.filled += T;
  }

  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t.dispose();
  }
}
