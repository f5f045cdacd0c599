// The CPU backend: native buffers and the C++ kernels of native/cpu, called through
// one generic entry point. This file only marshals arguments; the integer layout of
// each kernel is documented beside its C++ registration.
import { Backend, BackendBuffer } from '../backend.js';
import { BINARY_OPS, type Kernels, type QuantizedOperand, REDUCE_OPS, UNARY_OPS } from '../kernels.js';
import { DTYPE_CODE } from '../../tensor/dtype.js';
import type { Tensor } from '../../tensor/tensor.js';
import { type CpuAddon, loadCpuAddon, type NativeBuffer } from './addon.js';

export class CpuBuffer extends BackendBuffer {
  constructor(readonly native: NativeBuffer, bytes: number) {
    super(bytes);
  }
}

/**
 * The weight buffers and the [format, rows, cols, blocksize, nested, nestedBlocksize]
 * attributes the quantized kernels take (native/cpu/kernels/qmatmul.cc); `filler`
 * stands in for buffers a format does not use.
 */
function quantizedOperands(w: QuantizedOperand, filler: Tensor): { tensors: Tensor[]; ints: number[]; offset: number } {
  if (w.format === 'int8') return { tensors: [w.cb, w.scb, filler, filler, filler], ints: [0, w.rows, w.cols, 0, 0, 0], offset: 0 };
  const n = w.nested;
  return {
    tensors: [w.packed, w.code, w.absmax, n?.absmax ?? filler, n?.code ?? filler],
    ints: [1, w.rows, w.cols, w.blocksize, n ? 1 : 0, n?.blocksize ?? 0],
    offset: n?.offset ?? 0,
  };
}

/** The (batch, head, row) strides of [B, H, T, D] operands, in order (the last axis has unit stride). */
function headStrides(...ts: Tensor[]): number[] {
  return ts.flatMap((t) => {
    if (t.strides[3] !== 1 && t.shape[3] !== 1) throw new Error(`cpu attention: ${t} needs a unit stride on its last axis`);
    return [t.strides[0], t.strides[1], t.strides[2]];
  });
}

function nativeOf(t: Tensor): NativeBuffer {
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

  // Buffers are freed explicitly (Tensor.dispose, scope); this registry frees the
  // ones a program forgets, once their CpuBuffer object is garbage collected.
  private readonly finalizer = new FinalizationRegistry<NativeBuffer>((handle) => this.addon.free(handle));

  alloc(bytes: number): BackendBuffer {
    const buf = new CpuBuffer(this.addon.alloc(bytes), bytes);
    this.finalizer.register(buf, buf.native, buf);
    return buf;
  }
  free(buf: BackendBuffer): void {
    if (!(buf instanceof CpuBuffer)) return;
    this.finalizer.unregister(buf);
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

  private run(name: string, tensors: Tensor[], ints: number[], floats: number[] = [], variant?: string): void {
    const id = this.ids.get(name);
    if (id === undefined) throw new Error(`cpu backend: kernel '${name}' is not built`);
    if (!this.profiling) {
      this.addon.run(id, tensors.map(nativeOf), tensors.map((t) => t.byteOffset), ints, floats);
      return;
    }
    const t0 = process.hrtime.bigint();
    this.addon.run(id, tensors.map(nativeOf), tensors.map((t) => t.byteOffset), ints, floats);
    const key = variant === undefined ? name : `${name}:${variant}`;
    const entry = this.times.get(key) ?? { calls: 0, ns: 0n };
    entry.calls++;
    entry.ns += process.hrtime.bigint() - t0;
    this.times.set(key, entry);
  }

  private buildKernels(): Partial<Kernels> {
    const all: Kernels = {
      copy: (x, out) =>
        this.run('copy', [x, out], [x.rank, DTYPE_CODE[x.dtype], DTYPE_CODE[out.dtype], ...x.shape, ...x.strides, ...out.strides]),
      fill: (out, value) => this.run('fill', [out], [DTYPE_CODE[out.dtype], out.size], [value]),
      binary: (op, a, b, out) =>
        this.run('binary', [a, b, out], [BINARY_OPS.indexOf(op), out.rank, ...out.shape, ...a.strides, ...b.strides], [], op),
      unary: (op, x, out) => this.run('unary', [x, out], [UNARY_OPS.indexOf(op), x.size], [], op),
      reduce: (op, x, out, { outer, n, inner }) => this.run('reduce', [x, out], [REDUCE_OPS.indexOf(op), outer, n, inner], [], op),
      softmax: (x, out, log) => {
        const cols = x.shape[x.rank - 1] ?? 1;
        this.run('softmax', [x, out], [x.size / Math.max(cols, 1), cols, log ? 1 : 0]);
      },
      matmul: (a, b, out, { transA, transB, alpha, accumulate }) => {
        // Fold transposition into strides: op(a) is [M, K] with strides (ars, acs), op(b) [K, N] with (brs, bcs).
        const ra = a.rank, rb = b.rank;
        const M = out.shape[out.rank - 2], N = out.shape[out.rank - 1];
        const K = transA ? a.shape[ra - 2] : a.shape[ra - 1];
        const batch = out.rank === 3 ? out.shape[0] : 1;
        // A batch of one broadcasts (as in the reference), whatever its stride says.
        const abs = a.rank === 3 && a.shape[0] !== 1 ? a.strides[0] : 0, bbs = b.rank === 3 && b.shape[0] !== 1 ? b.strides[0] : 0;
        const [ars, acs] = transA ? [a.strides[ra - 1], a.strides[ra - 2]] : [a.strides[ra - 2], a.strides[ra - 1]];
        const [brs, bcs] = transB ? [b.strides[rb - 1], b.strides[rb - 2]] : [b.strides[rb - 2], b.strides[rb - 1]];
        const shape = this.profiling ? `${batch > 1 ? `${batch}x` : ''}${M}x${N}x${K}` : undefined;
        this.run('matmul', [a, b, out], [batch, M, N, K, abs, ars, acs, bbs, brs, bcs, accumulate ? 1 : 0, DTYPE_CODE[b.dtype]], [alpha], shape);
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
        const dims = [B, Hq, Hkv, T, S, D, causal ? 1 : 0, keyMask ? 1 : 0];
        this.run('attention', [q, k, v, keyMask ?? q, out, lse], [...dims, ...headStrides(q, k, v, out)], [scale]);
      },
      attentionBackward: (q, k, v, keyMask, out, lse, dout, dq, dk, dv, { scale, causal }) => {
        const [B, Hq, T, D] = q.shape;
        const [, Hkv, S] = k.shape;
        const dims = [B, Hq, Hkv, T, S, D, causal ? 1 : 0, keyMask ? 1 : 0];
        this.run(
          'attentionBackward',
          [q, k, v, keyMask ?? q, out, lse, dout, dq, dk, dv],
          [...dims, ...headStrides(q, k, v, out, dout, dq, dk, dv)],
          [scale],
        );
      },
      crossEntropy: (logits, targets, loss, lse, ignoreIndex) =>
        this.run('crossEntropy', [logits, targets, loss, lse], [logits.shape[0], logits.shape[1], ignoreIndex]),
      crossEntropyBackward: (logits, targets, lse, dloss, dlogits, ignoreIndex) =>
        this.run('crossEntropyBackward', [logits, targets, lse, dloss, dlogits], [logits.shape[0], logits.shape[1], ignoreIndex]),
      dropoutMask: (out, p, seed, offset) => this.run('dropoutMask', [out], [out.size, seed, offset], [p]),
      dropout: (x, out, p, seed, offset) => this.run('dropout', [x, out], [out.size, seed, offset], [p]),
      adamw: (operands, a) =>
        this.run(
          'adamw',
          operands.flatMap((o) => [o.param, o.grad, o.expAvg, o.expAvgSq]),
          [operands.length, ...operands.map((o) => o.param.size)],
          [a.lr, a.beta1, a.beta2, a.eps, a.weightDecay, a.biasCorrection1, a.biasCorrection2, a.gradScale],
        ),
      siluMul: (gate, up, out) => this.run('siluMul', [gate, up, out], [out.size]),
      siluMulBackward: (gate, up, dout, dgate, dup) => this.run('siluMulBackward', [gate, up, dout, dgate, dup], [dgate.size]),
      doraScale: (base, lora, g, out, s) => this.run('doraScale', [base, lora, g, out], [out.size / g.size, g.size], [s]),
      doraScaleBackward: (base, lora, g, dout, dbase, dlora, dg, s) =>
        this.run('doraScaleBackward', [base, lora, g, dout, dbase, dlora, dg], [dbase.size / g.size, g.size], [s]),
      quantizedMatmul: (a, w, out, { transW, accumulate }) => {
        const { tensors, ints, offset } = quantizedOperands(w, out);
        const [format, rows, cols, blocksize, nested, nestedBlocksize] = ints;
        this.run('quantizedMatmul', [a, ...tensors, out], [format, a.shape[0], rows, cols, transW ? 1 : 0, accumulate ? 1 : 0, blocksize, nested, nestedBlocksize], [offset]);
      },
      dequantize: (w, out) => {
        const { tensors, ints, offset } = quantizedOperands(w, out);
        this.run('dequantize', [...tensors, out], ints, [offset]);
      },
      quantizeInt8: (w, cb, scb) => this.run('quantizeInt8', [w, cb, scb], [w.shape[0], w.shape[1], DTYPE_CODE[w.dtype]]),
      quantizeBlockwise: (x, code, q, absmax, blocksize, pack4) =>
        this.run('quantizeBlockwise', [x, code, q, absmax], [x.size, DTYPE_CODE[x.dtype], code.size, blocksize, pack4 ? 1 : 0]),
    };
    const built: Partial<Kernels> = {};
    for (const key of Object.keys(all) as (keyof Kernels)[]) {
      if (this.ids.has(key)) Object.assign(built, { [key]: all[key] });
    }
    return built;
  }
}
