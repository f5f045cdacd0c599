// The CUDA backend: device buffers and the kernels of native/cuda, called through one
// generic entry point, the same shape as the CPU backend (src/backend/cpu/cpu.ts). This
// file only marshals arguments; each kernel's integer layout is the CPU kernel's and is
// documented beside its registration in native/cuda/kernels/.
//
// Kernels are queued on one CUDA stream and return at once; read() and sync() wait.
// The backend lists only the kernels the addon registers, so a model that needs a
// missing one is refused before it starts (requireOps), naming the ops.
import { type Backend, BackendBuffer } from '../backend.js';
import { BINARY_OPS, type Kernels, REDUCE_OPS, UNARY_OPS } from '../kernels.js';
import { DTYPE_CODE } from '../../tensor/dtype.js';
import type { Tensor } from '../../tensor/tensor.js';
import { type CudaAddon, type CudaBufferHandle, type CudaDeviceInfo, loadCudaAddon } from './addon.js';

export class CudaBuffer extends BackendBuffer {
  constructor(readonly handle: CudaBufferHandle, bytes: number) {
    super(bytes);
  }
}

function handleOf(t: Tensor): CudaBufferHandle {
  const b = t.storage.buffer;
  if (!(b instanceof CudaBuffer)) throw new Error(`cuda backend: ${t} does not live on the cuda backend`);
  t.assertAlive('cuda kernel');
  return b.handle;
}

export class CudaBackend implements Backend {
  readonly name = 'cuda';
  readonly kernels: Partial<Kernels>;
  private readonly ids = new Map<string, number>();

  constructor(private readonly addon: CudaAddon = loadCudaAddon()) {
    if (addon.deviceCount() === 0) throw new Error('finlora: the CUDA backend is built but no GPU is visible on this machine');
    addon.kernelNames().forEach((n, i) => this.ids.set(n, i));
    this.kernels = this.buildKernels();
  }

  // Buffers are freed explicitly (Tensor.dispose, scope); this registry frees the
  // ones a program forgets, once their CudaBuffer object is garbage collected.
  private readonly finalizer = new FinalizationRegistry<CudaBufferHandle>((handle) => this.addon.free(handle));

  alloc(bytes: number): BackendBuffer {
    const buf = new CudaBuffer(this.addon.alloc(bytes), bytes);
    this.finalizer.register(buf, buf.handle, buf);
    return buf;
  }
  free(buf: BackendBuffer): void {
    if (!(buf instanceof CudaBuffer)) return;
    this.finalizer.unregister(buf);
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
    const all: Partial<Kernels> = {
      copy: (x, out) =>
        this.run('copy', [x, out], [x.rank, DTYPE_CODE[x.dtype], DTYPE_CODE[out.dtype], ...x.shape, ...x.strides, ...out.strides]),
      fill: (out, value) => this.run('fill', [out], [DTYPE_CODE[out.dtype], out.size], [value]),
      binary: (op, a, b, out) =>
        this.run('binary', [a, b, out], [BINARY_OPS.indexOf(op), out.rank, ...out.shape, ...a.strides, ...b.strides]),
      unary: (op, x, out) => this.run('unary', [x, out], [UNARY_OPS.indexOf(op), x.size]),
      reduce: (op, x, out, { outer, n, inner }) => this.run('reduce', [x, out], [REDUCE_OPS.indexOf(op), outer, n, inner]),
      softmax: (x, out, log) => {
        const cols = x.shape[x.rank - 1] ?? 1;
        this.run('softmax', [x, out], [x.size / Math.max(cols, 1), cols, log ? 1 : 0]);
      },
      matmul: (a, b, out, { transA, transB, alpha, accumulate }) => {
        // Transposition folded into strides: op(a) is [M, K] with strides (ars, acs), op(b) [K, N] with (brs, bcs).
        const ra = a.rank, rb = b.rank;
        const M = out.shape[out.rank - 2], N = out.shape[out.rank - 1];
        const K = transA ? a.shape[ra - 2] : a.shape[ra - 1];
        const batch = out.rank === 3 ? out.shape[0] : 1;
        // A batch of one broadcasts (as in the reference), whatever its stride says.
        const abs = a.rank === 3 && a.shape[0] !== 1 ? a.strides[0] : 0, bbs = b.rank === 3 && b.shape[0] !== 1 ? b.strides[0] : 0;
        const [ars, acs] = transA ? [a.strides[ra - 1], a.strides[ra - 2]] : [a.strides[ra - 2], a.strides[ra - 1]];
        const [brs, bcs] = transB ? [b.strides[rb - 1], b.strides[rb - 2]] : [b.strides[rb - 2], b.strides[rb - 1]];
        this.run('matmul', [a, b, out], [batch, M, N, K, abs, ars, acs, bbs, brs, bcs, accumulate ? 1 : 0, DTYPE_CODE[b.dtype]], [alpha]);
      },
      gather: (table, ids, out) =>
        this.run('gather', [table, ids, out], [table.shape[0], table.shape[1], ids.size, DTYPE_CODE[table.dtype]]),
      scatterAdd: (src, ids, out) => this.run('scatterAdd', [src, ids, out], [out.shape[0], out.shape[1], ids.size]),
      rmsnorm: (x, weight, out, rstd, eps) => {
        const D = x.shape[x.rank - 1];
        this.run('rmsnorm', [x, weight, out, rstd], [x.size / D, D], [eps]);
      },
      rmsnormBackward: (x, weight, rstd, dy, dx, dweight) => {
        const D = x.shape[x.rank - 1];
        this.run('rmsnormBackward', [x, weight, rstd, dy, dx, dweight], [x.size / D, D]);
      },
      rope: (x, cos, sin, out, inverse) => {
        const [B, T, H, D] = x.shape;
        this.run('rope', [x, cos, sin, out], [B, T, H, D, cos.shape[0] === 1 ? 0 : T * (D / 2), inverse ? 1 : 0]);
      },
      attention: (q, k, v, keyMask, out, lse, { scale, causal }) => {
        const [B, Hq, T, D] = q.shape;
        const [, Hkv, S] = k.shape;
        this.run('attention', [q, k, v, keyMask ?? q, out, lse], [B, Hq, Hkv, T, S, D, causal ? 1 : 0, keyMask ? 1 : 0], [scale]);
      },
      attentionBackward: (q, k, v, keyMask, out, lse, dout, dq, dk, dv, { scale, causal }) => {
        const [B, Hq, T, D] = q.shape;
        const [, Hkv, S] = k.shape;
        this.run(
          'attentionBackward',
          [q, k, v, keyMask ?? q, out, lse, dout, dq, dk, dv],
          [B, Hq, Hkv, T, S, D, causal ? 1 : 0, keyMask ? 1 : 0],
          [scale],
        );
      },
      crossEntropy: (logits, targets, loss, lse, ignoreIndex) =>
        this.run('crossEntropy', [logits, targets, loss, lse], [logits.shape[0], logits.shape[1], ignoreIndex]),
      crossEntropyBackward: (logits, targets, lse, dloss, dlogits, ignoreIndex) =>
        this.run('crossEntropyBackward', [logits, targets, lse, dloss, dlogits], [logits.shape[0], logits.shape[1], ignoreIndex]),
      dropoutMask: (out, p, seed, offset) => this.run('dropoutMask', [out], [out.size, seed, offset], [p]),
      adamw: (operands, a) =>
        this.run(
          'adamw',
          operands.flatMap((o) => [o.param, o.grad, o.expAvg, o.expAvgSq]),
          [operands.length, ...operands.map((o) => o.param.size)],
          [a.lr, a.beta1, a.beta2, a.eps, a.weightDecay, a.biasCorrection1, a.biasCorrection2, a.gradScale],
        ),
    };
    const built: Partial<Kernels> = {};
    for (const key of Object.keys(all) as (keyof Kernels)[]) {
      if (this.ids.has(key)) Object.assign(built, { [key]: all[key] });
    }
    return built;
  }
}
