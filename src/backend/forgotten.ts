// The safety net behind explicit disposal (dispose(), scopes): frees the native buffer
// of a BackendBuffer that a program forgot, once the object is garbage collected.
//
// Registering an object with a FinalizationRegistry and unregistering it when it is
// freed cost about as much as a cached native allocation (~0.5 µs together), and most
// buffers of a training step are temporaries freed a few ops after they were made. So a
// new buffer waits in a list; when the list is full, the buffers still live on it wait
// once more in a second list, and those still live when the next list fills are
// registered: a buffer is registered only after it outlived at least BATCH allocations.
// A forgotten buffer is therefore freed by the first collection after at most 2 × BATCH
// further allocations, not the first after it was dropped.

/**
 * The length of each waiting list. Saved activations outlive hundreds of allocations
 * (the first layer's, a whole step's); registering the buffers still live at the end of
 * a single 2,048 list took 200 of a 16-layer DoRA step's 1,516 buffers.
 */
export const BATCH = 2048;

/** A backend buffer as the registry tracks it. */
export interface TrackedBuffer {
  /** 'new' until registered (or freed first); set only by ForgottenBuffers. */
  tracking: 'new' | 'registered' | 'freed';
}

export class ForgottenBuffers<H> {
  private readonly registry: FinalizationRegistry<H>;
  private fresh: TrackedBuffer[] = [];
  private freshHandles: H[] = [];
  /** The buffers still live when the previous list filled. */
  private older: TrackedBuffer[] = [];
  private olderHandles: H[] = [];

  constructor(free: (handle: H) => void) {
    this.registry = new FinalizationRegistry(free);
  }

  /** Tracks a buffer just allocated, whose native memory `handle` names. */
  add(buf: TrackedBuffer, handle: H): void {
    this.fresh.push(buf);
    this.freshHandles.push(handle);
    if (this.fresh.length < BATCH) return;
    for (let i = 0; i < this.older.length; i++) {
      const b = this.older[i];
      if (b.tracking !== 'new') continue;
      this.registry.register(b, this.olderHandles[i], b);
      b.tracking = 'registered';
    }
    const live: TrackedBuffer[] = [];
    const liveHandles: H[] = [];
    for (let i = 0; i < this.fresh.length; i++) {
      if (this.fresh[i].tracking !== 'new') continue;
      live.push(this.fresh[i]);
      liveHandles.push(this.freshHandles[i]);
    }
    this.older = live;
    this.olderHandles = liveHandles;
    this.fresh = [];
    this.freshHandles = [];
  }

  /** Stops tracking a buffer the program frees itself. */
  remove(buf: TrackedBuffer): void {
    if (buf.tracking === 'registered') this.registry.unregister(buf);
    buf.tracking = 'freed';
  }
}
