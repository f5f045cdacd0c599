// The CUDA backend: device buffers and the kernels of native/cuda, called through one
// generic entry point, the same shape as the CPU backend (src/backend/cpu/cpu.ts). Argument
// layouts come from src/backend/native_kernels.ts, shared with the CPU backend.
//
// Kernels are queued on one CUDA stream and return at once; read() and sync() wait.
// The backend lists only the kernels the addon registers, so a model that needs a
// missing one is refused before it starts (requireOps), naming the ops.
//
// The per-kernel profile (FINLORA_PROFILE=1 or setProfiling) has the cpu backend's
// shape (KernelTime by label: binary:mul, a matmul's shape), timed on the GPU: the addon
// brackets each launch and copy with CUDA events on the stream and profile() waits once
// to read them. Off, run() passes no key and the addon records nothing.
import { type Backend, BackendBuffer } from '../backend.js';
import { type BufferHandle, runOperands } from '../native_addon.js';
import type { Kernels } from '../kernels.js';
import { builtKernels, nativeKernels, type NativeRun } from '../native_kernels.js';
import { ForgottenBuffers, type TrackedBuffer } from '../forgotten.js';
import { DTYPE_CODE, type DType } from '../../tensor/dtype.js';
import type { Tensor } from '../../tensor/tensor.js';
import type { KernelTime } from '../cpu/cpu.js';
import { type CudaAddon, type CudaDeviceInfo, loadCudaAddon, PROFILE_COPY_IN, PROFILE_COPY_OUT, PROFILE_UNLABELLED } from './addon.js';

/** KernelTime on the GPU: `seconds` is GPU time, between the events around each call. */
export interface CudaKernelTime extends KernelTime {
  /**
   * Host seconds spent in the addon's call: marshalling, cuBLAS's planning, the launch, and
   * any wait for the GPU inside it (a read, the index checks of gather, scatterAdd, crossEntropy).
   */
  readonly hostSeconds: number;
  /** Floating-point operations of the calls (a GEMM's 2·batch·M·N·K); absent where not counted. */
  readonly flops?: number;
}

const DTYPE_BY_CODE = new Map<number, DType>(Object.entries(DTYPE_CODE).map(([d, c]) => [c, d as DType]));
const dtypeName = (c: number): string => DTYPE_BY_CODE.get(c) ?? `dtype ${c}`;

/**
 * The label a profile keeps a launch under: the cpu's (kernel, or kernel:variant), and for
 * the kernels whose calls differ most in cost, what tells them apart. A GEMM adds its
 * transposes and dtypes (the same shape is a forward product or a weight gradient); a
 * copy (contiguous(), cast(), concat()) its dtypes, shape and whether it reads with
 * strides. Reads the argument layouts of native_kernels.ts.
 */
export function profileLabel(name: string, ints: readonly number[], variant?: string): string {
  const base = variant === undefined ? name : `${name}:${variant}`;
  if (name === 'matmul') {
    // [batch, M, N, K, abs, ars, acs, bbs, brs, bcs, accumulate, dtype(b), dtype(a)]
    const op = (rs: number, cs: number): string => (cs === 1 ? 'N' : rs === 1 ? 'T' : 'S');
    return `${base} ${op(ints[5], ints[6])}${op(ints[8], ints[9])} ${dtypeName(ints[12])}·${dtypeName(ints[11])}${ints[10] === 1 ? ' +=' : ''}`;
  }
  if (name === 'copy') {
    // [rank, dtype in, dtype out, shape[rank], in strides[rank], out strides[rank]]
    const rank = ints[0];
    const shape = ints.slice(3, 3 + rank), strides = ints.slice(3 + rank, 3 + 2 * rank);
    let dense = true;
    for (let i = rank - 1, step = 1; i >= 0; step *= shape[i], i--) if (shape[i] !== 1 && strides[i] !== step) dense = false;
    return `${base}:${dtypeName(ints[1])}→${dtypeName(ints[2])} [${shape.join(',')}]${dense ? '' : ' strided'}`;
  }
  return base;
}

const matmulFlops = (ints: readonly number[]): number => 2 * ints[0] * ints[1] * ints[2] * ints[3];

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
  // Heads go to the attention kernels as views of the [B, T, H, D] projections (no copies).
  readonly stridedAttention = true;
  // bf16 activations run on the tensor cores (f32 accumulation), as a bf16 PyTorch model does.
  readonly computeDtypes = ['f32', 'bf16'] as const;
  private readonly ids = new Map<string, number>();
  private readonly kernelNames: readonly string[];
  // The profile's state on the addon's side is one per process, shared by every
  // CudaBackend on that addon.
  private profiling = false;
  // A label's key is its index here; the addon sums GPU time per key.
  private readonly labelKeys = new Map<string, number>();
  private readonly labels: string[] = [];
  private readonly hostTimes = new Map<number, { calls: number; ns: bigint; flops: number }>();
  private readonly gpuTimes = new Map<number, { calls: number; ms: number }>();

  constructor(private readonly addon: CudaAddon = loadCudaAddon()) {
    if (addon.deviceCount() === 0) throw new Error('finlora: the CUDA backend is built but no GPU is visible on this machine');
    this.kernelNames = addon.kernelNames();
    this.kernelNames.forEach((n, i) => this.ids.set(n, i));
    this.kernels = this.buildKernels();
    if (process.env.FINLORA_PROFILE === '1') this.setProfiling(true);
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
    if (!this.profiling) {
      this.addon.write(buf.handle, byteOffset, data);
      return;
    }
    const t0 = process.hrtime.bigint();
    this.addon.write(buf.handle, byteOffset, data);
    this.addHost(PROFILE_COPY_IN, process.hrtime.bigint() - t0, 0);
  }
  read(buf: BackendBuffer, byteOffset: number, bytes: number): Uint8Array {
    if (!(buf instanceof CudaBuffer)) throw new Error('cuda backend: foreign buffer');
    if (!this.profiling) return new Uint8Array(this.addon.read(buf.handle, byteOffset, bytes));
    const t0 = process.hrtime.bigint();
    const out = new Uint8Array(this.addon.read(buf.handle, byteOffset, bytes));
    this.addHost(PROFILE_COPY_OUT, process.hrtime.bigint() - t0, 0);
    return out;
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

  /** Turns the per-kernel profile on or off (FINLORA_PROFILE=1 turns it on at start). */
  setProfiling(on: boolean): void {
    this.profiling = on;
    this.addon.setProfiling(on);
  }

  /**
   * GPU time per kernel label (and per host copy direction: memcpy:h2d, memcpy:d2h) since the last
   * reset, the most expensive first. Waits for the queued work once.
   */
  profile(): CudaKernelTime[] {
    this.collect();
    const keys = new Set([...this.gpuTimes.keys(), ...this.hostTimes.keys()]);
    return [...keys]
      .map((key): CudaKernelTime => {
        const gpu = this.gpuTimes.get(key), host = this.hostTimes.get(key);
        const flops = host?.flops ?? 0;
        return {
          name: this.profileName(key),
          calls: gpu?.calls ?? host?.calls ?? 0,
          seconds: (gpu?.ms ?? 0) / 1e3,
          hostSeconds: Number(host?.ns ?? 0n) / 1e9,
          ...(flops > 0 ? { flops } : {}),
        };
      })
      .sort((a, b) => b.seconds - a.seconds);
  }

  /** Drops what the profile holds (waits for queued work, whose brackets it discards). */
  resetProfile(): void {
    this.addon.profileRead();
    this.gpuTimes.clear();
    this.hostTimes.clear();
  }

  private profileName(key: number): string {
    if (key === PROFILE_COPY_IN) return 'memcpy:h2d';
    if (key === PROFILE_COPY_OUT) return 'memcpy:d2h';
    // Another CudaBackend on the same addon may have launched without a label.
    if (key <= PROFILE_UNLABELLED) return this.kernelNames[PROFILE_UNLABELLED - key] ?? `kernel #${PROFILE_UNLABELLED - key}`;
    return this.labels[key] ?? `label #${key}`;
  }

  private collect(): void {
    const flat = this.addon.profileRead();
    for (let i = 0; i + 2 < flat.length; i += 3) {
      const t = this.gpuTimes.get(flat[i]) ?? { calls: 0, ms: 0 };
      t.calls += flat[i + 1];
      t.ms += flat[i + 2];
      this.gpuTimes.set(flat[i], t);
    }
  }

  private addHost(key: number, ns: bigint, flops: number): void {
    const t = this.hostTimes.get(key) ?? { calls: 0, ns: 0n, flops: 0 };
    t.calls++;
    t.ns += ns;
    t.flops += flops;
    this.hostTimes.set(key, t);
  }

  private run(name: string, tensors: Tensor[], ints: number[], floats: number[] = [], variant?: string | (() => string)): void {
    const id = this.ids.get(name);
    if (id === undefined) throw new Error(`cuda backend: kernel '${name}' is not built`);
    const [buffers, offsets] = runOperands(tensors, handleOf);
    if (!this.profiling) {
      this.addon.run(id, buffers, offsets, ints, floats);
      return;
    }
    const label = profileLabel(name, ints, typeof variant === 'function' ? variant() : variant);
    let key = this.labelKeys.get(label);
    if (key === undefined) {
      key = this.labels.push(label) - 1;
      this.labelKeys.set(label, key);
    }
    const t0 = process.hrtime.bigint();
    this.addon.run(id, buffers, offsets, ints, floats, key);
    this.addHost(key, process.hrtime.bigint() - t0, name === 'matmul' ? matmulFlops(ints) : 0);
  }

  private buildKernels(): Partial<Kernels> {
    const run: NativeRun = (name, tensors, ints, floats = [], label) => this.run(name, tensors, ints, floats, label);
    return builtKernels(nativeKernels(run, { stridedAttention: this.stridedAttention }), (name) => this.ids.has(name));
  }
}
