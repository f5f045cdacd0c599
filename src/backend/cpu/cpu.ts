// The CPU backend: native buffers and the C++ kernels of native/cpu, called through
// one generic entry point with the argument layouts of src/backend/native_kernels.ts.
import { Backend, BackendBuffer } from '../backend.js';
import type { Kernels } from '../kernels.js';
import { builtKernels, nativeKernels, type NativeRun } from '../native_kernels.js';
import { ForgottenBuffers, type TrackedBuffer } from '../forgotten.js';
import { type BufferHandle, runOperands } from '../native_addon.js';
import type { Tensor } from '../../tensor/tensor.js';
import { type CpuAddon, loadCpuAddon } from './addon.js';

export class CpuBuffer extends BackendBuffer implements TrackedBuffer {
  tracking: TrackedBuffer['tracking'] = 'new';
  constructor(readonly native: BufferHandle, bytes: number) {
    super(bytes);
  }
}

function nativeOf(t: Tensor): BufferHandle {
  const b = t.storage.buffer;
  if (!(b instanceof CpuBuffer)) throw new Error(`cpu backend: ${t} does not live on the cpu backend`);
  t.assertAlive('cpu kernel');
  return b.native;
}

/** Time spent in one kernel (or kernel variant, e.g. binary:mul) since the profile was last reset. */
export interface KernelTime {
  readonly name: string;
  readonly calls: number;
  readonly seconds: number;
}

export class CpuBackend implements Backend {
  readonly name = 'cpu';
  readonly kernels: Partial<Kernels>;
  readonly stridedAttention = true;
  private readonly ids = new Map<string, number>();
  // Per-kernel wall time, kept only while profiling (FINLORA_PROFILE=1 or setProfiling):
  // reading the clock twice per call costs ~0.1 µs, nothing next to a kernel, but the
  // default path does not pay even that.
  private profiling = process.env.FINLORA_PROFILE === '1';
  private readonly times = new Map<string, { calls: number; ns: bigint }>();

  constructor(private readonly addon: CpuAddon = loadCpuAddon()) {
    addon.kernelNames().forEach((n, i) => this.ids.set(n, i));
    this.kernels = this.buildKernels();
  }

  // Buffers are freed explicitly (Tensor.dispose, scope); this frees the ones a program
  // forgets, once their CpuBuffer object is garbage collected.
  private readonly forgotten = new ForgottenBuffers<BufferHandle>((handle) => this.addon.free(handle));

  alloc(bytes: number): BackendBuffer {
    const buf = new CpuBuffer(this.addon.alloc(bytes), bytes);
    this.forgotten.add(buf, buf.native);
    return buf;
  }
  free(buf: BackendBuffer): void {
    if (!(buf instanceof CpuBuffer)) return;
    this.forgotten.remove(buf);
    this.addon.free(buf.native);
  }
  write(buf: BackendBuffer, byteOffset: number, data: Uint8Array): void {
    if (!(buf instanceof CpuBuffer)) throw new Error('cpu backend: foreign buffer');
    this.addon.write(buf.native, byteOffset, data);
  }
  read(buf: BackendBuffer, byteOffset: number, bytes: number): Uint8Array {
    if (!(buf instanceof CpuBuffer)) throw new Error('cpu backend: foreign buffer');
    return new Uint8Array(this.addon.read(buf.native, byteOffset, bytes));
  }
  async sync(): Promise<void> {}
  liveBytes(): number {
    return this.addon.liveBytes();
  }
  /** Freed bytes the caching allocator keeps for reuse. */
  cachedBytes(): number {
    return this.addon.cachedBytes();
  }
  /** Returns cached blocks to the system (e.g. before measuring memory). */
  emptyCache(): void {
    this.addon.emptyCache();
  }
  /** The SIMD level kernels use; tests lower it to cover every code path. */
  get isa(): { current: string; best: string } {
    return this.addon.isa();
  }
  setIsa(isa: 'avx512' | 'avx2' | 'scalar'): void {
    this.addon.setIsa(isa);
  }
  get numThreads(): number {
    return this.addon.numThreads();
  }
  setNumThreads(n: number): void {
    this.addon.setNumThreads(n);
  }

  /** Turns the per-kernel profile on or off (FINLORA_PROFILE=1 turns it on at start). */
  setProfiling(on: boolean): void {
    this.profiling = on;
  }

  /** Kernel times accumulated since the last reset, the most expensive first. */
  profile(): KernelTime[] {
    return [...this.times].map(([name, t]) => ({ name, calls: t.calls, seconds: Number(t.ns) / 1e9 })).sort((a, b) => b.seconds - a.seconds);
  }

  resetProfile(): void {
    this.times.clear();
  }

  private run(name: string, tensors: Tensor[], ints: number[], floats: number[] = [], variant?: string | (() => string)): void {
    const id = this.ids.get(name);
    if (id === undefined) throw new Error(`cpu backend: kernel '${name}' is not built`);
    const [buffers, offsets] = runOperands(tensors, nativeOf);
    if (!this.profiling) {
      this.addon.run(id, buffers, offsets, ints, floats);
      return;
    }
    const t0 = process.hrtime.bigint();
    this.addon.run(id, buffers, offsets, ints, floats);
    const label = typeof variant === 'function' ? variant() : variant;
    const key = label === undefined ? name : `${name}:${label}`;
    const entry = this.times.get(key) ?? { calls: 0, ns: 0n };
    entry.calls++;
    entry.ns += process.hrtime.bigint() - t0;
    this.times.set(key, entry);
  }

  private buildKernels(): Partial<Kernels> {
    const run: NativeRun = (name, tensors, ints, floats = [], label) => this.run(name, tensors, ints, floats, label);
    return builtKernels(nativeKernels(run, { stridedAttention: this.stridedAttention }), (name) => this.ids.has(name));
  }
}
