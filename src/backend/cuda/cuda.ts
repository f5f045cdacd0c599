// The CUDA backend: device buffers and the kernels of native/cuda, called through one
// generic entry point, the same shape as the CPU backend (src/backend/cpu/cpu.ts). Argument
// layouts come from src/backend/native_kernels.ts, shared with the CPU backend.
//
// Kernels are queued on one CUDA stream and return at once; read() and sync() wait.
// The backend lists only the kernels the addon registers, so a model that needs a
// missing one is refused before it starts (requireOps), naming the ops.
import { type Backend, BackendBuffer } from '../backend.js';
import type { BufferHandle } from '../native_addon.js';
import type { Kernels } from '../kernels.js';
import { builtKernels, nativeKernels, type NativeRun } from '../native_kernels.js';
import { ForgottenBuffers, type TrackedBuffer } from '../forgotten.js';
import type { Tensor } from '../../tensor/tensor.js';
import { type CudaAddon, type CudaDeviceInfo, loadCudaAddon } from './addon.js';

export class CudaBuffer extends BackendBuffer implements TrackedBuffer {
  tracking: TrackedBuffer['tracking'] = 'new';
  constructor(readonly handle: BufferHandle, bytes: number) {
    super(bytes);
  }
}

function handleOf(t: Tensor): BufferHandle {
  const b = t.storage.buffer;
  if (!(b instanceof CudaBuffer)) throw new Error(`cuda backend: ${t} does not live on the cuda backend`);
  t.assertAlive('cuda kernel');
  return b.handle;
}

export class CudaBackend implements Backend {
  readonly name = 'cuda';
  readonly kernels: Partial<Kernels>;
  // bf16 activations run on the tensor cores (f32 accumulation), as a bf16 PyTorch model does.
  readonly computeDtypes = ['f32', 'bf16'] as const;
  private readonly ids = new Map<string, number>();

  constructor(private readonly addon: CudaAddon = loadCudaAddon()) {
    if (addon.deviceCount() === 0) throw new Error('finlora: the CUDA backend is built but no GPU is visible on this machine');
    addon.kernelNames().forEach((n, i) => this.ids.set(n, i));
    this.kernels = this.buildKernels();
  }

  // Buffers are freed explicitly (Tensor.dispose, scope); this frees the ones a program
  // forgets, once their CudaBuffer object is garbage collected.
  private readonly forgotten = new ForgottenBuffers<BufferHandle>((handle) => this.addon.free(handle));

  alloc(bytes: number): BackendBuffer {
    const buf = new CudaBuffer(this.addon.alloc(bytes), bytes);
    this.forgotten.add(buf, buf.handle);
    return buf;
  }
  free(buf: BackendBuffer): void {
    if (!(buf instanceof CudaBuffer)) return;
    this.forgotten.remove(buf);
    this.addon.free(buf.handle);
  }
  write(buf: BackendBuffer, byteOffset: number, data: Uint8Array): void {
    if (!(buf instanceof CudaBuffer)) throw new Error('cuda backend: foreign buffer');
    this.addon.write(buf.handle, byteOffset, data);
  }
  read(buf: BackendBuffer, byteOffset: number, bytes: number): Uint8Array {
    if (!(buf instanceof CudaBuffer)) throw new Error('cuda backend: foreign buffer');
    return new Uint8Array(this.addon.read(buf.handle, byteOffset, bytes));
  }
  async sync(): Promise<void> {
    this.addon.sync();
  }
  /** Waits for queued work without a promise (benchmarks, tests). */
  syncNow(): void {
    this.addon.sync();
  }
  liveBytes(): number {
    return this.addon.liveBytes();
  }
  /** The most bytes live at once since resetPeak() (or since the addon loaded). */
  peakBytes(): number {
    return this.addon.peakBytes();
  }
  resetPeak(): void {
    this.addon.resetPeak();
  }
  /** Freed bytes the caching allocator keeps for reuse. */
  cachedBytes(): number {
    return this.addon.cachedBytes();
  }
  /** Returns cached blocks to the device (e.g. before measuring memory). */
  emptyCache(): void {
    this.addon.emptyCache();
  }
  get device(): CudaDeviceInfo {
    return this.addon.deviceInfo();
  }

  private run(name: string, tensors: Tensor[], ints: number[], floats: number[] = []): void {
    const id = this.ids.get(name);
    if (id === undefined) throw new Error(`cuda backend: kernel '${name}' is not built`);
    this.addon.run(id, tensors.map(handleOf), tensors.map((t) => t.byteOffset), ints, floats);
  }

  private buildKernels(): Partial<Kernels> {
    // Heads go to the CUDA kernels contiguous: no stridedAttention.
    const run: NativeRun = (name, tensors, ints, floats = []) => this.run(name, tensors, ints, floats);
    return builtKernels(nativeKernels(run, { stridedAttention: false }), (name) => this.ids.has(name));
  }
}
