// CUDA kernel smoke benchmark: each case first checks the cuda result against the cpu
// backend on the same inputs (max |diff|), then times the cuda kernel (warm-up, then
// the median of several synchronised runs) and reports GFLOP/s or GB/s. The reference
// ceilings on an H200 are ~67 TFLOP/s plain f32 and ~4.3 TB/s copy bandwidth
// (../shared/DESIGN.md, the device notes); f32 GEMMs here leave TF32 off.
//
// node dist/bench/gpu/kernels.js   (needs the CUDA addon: npm run build:cuda)
import { getBackend } from '../../src/backend/registry.js';
import { CudaBackend } from '../../src/backend/cuda/cuda.js';
import { attention } from '../../src/ops/attention.js';
import { tensor } from '../../src/ops/creation.js';
import { matmul } from '../../src/ops/matmul.js';
import { rmsNorm } from '../../src/ops/rmsnorm.js';
import { softmax } from '../../src/ops/softmax.js';
import { Rng } from '../../src/tensor/rng.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';

interface Case {
  readonly name: string;
  /** Inputs' shapes and dtypes. */
  readonly inputs: readonly { shape: number[]; dtype?: 'f32' | 'bf16' }[];
  readonly fn: (...xs: Tensor[]) => Tensor;
  /** Work per run: flops (GFLOP/s) or bytes moved (GB/s). */
  readonly work: number;
  readonly unit: 'GFLOP/s' | 'GB/s';
  /** Skip the cpu check (too slow there). */
  readonly noCheck?: boolean;
}

function data(n: number, seed: number): Float32Array {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => r.next() * 2 - 1);
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const cases: Case[] = [
  { name: 'matmul f32 4096x4096x4096', inputs: [{ shape: [4096, 4096] }, { shape: [4096, 4096] }], fn: (a, b) => matmul(a, b), work: 2 * 4096 ** 3, unit: 'GFLOP/s', noCheck: true },
  { name: 'matmul f32 512x1024x768 (checked)', inputs: [{ shape: [512, 1024] }, { shape: [1024, 768] }], fn: (a, b) => matmul(a, b), work: 2 * 512 * 1024 * 768, unit: 'GFLOP/s' },
  { name: 'linear bf16 W 4096x4096, 4096 tokens', inputs: [{ shape: [4096, 4096] }, { shape: [4096, 4096], dtype: 'bf16' }], fn: (a, b) => matmul(a, b, { transB: true }), work: 2 * 4096 ** 3, unit: 'GFLOP/s', noCheck: true },
  { name: 'rmsnorm 4096x4096', inputs: [{ shape: [4096, 4096] }, { shape: [4096] }], fn: (x, w) => rmsNorm(x, w, 1e-5), work: 3 * 4 * 4096 * 4096, unit: 'GB/s', noCheck: true },
  { name: 'softmax 1024x32000', inputs: [{ shape: [1024, 32000] }], fn: (x) => softmax(x), work: 2 * 4 * 1024 * 32000, unit: 'GB/s', noCheck: true },
  { name: 'attention causal 1x8x256x64 (checked)', inputs: [{ shape: [1, 8, 256, 64] }, { shape: [1, 8, 256, 64] }, { shape: [1, 8, 256, 64] }], fn: (q, k, v) => attention(q, k, v, { causal: true }), work: 2 * 2 * 8 * 256 * 256 * 64 / 2, unit: 'GFLOP/s' },
  { name: 'attention causal 8x32x512x64', inputs: [{ shape: [8, 32, 512, 64] }, { shape: [8, 8, 512, 64] }, { shape: [8, 8, 512, 64] }], fn: (q, k, v) => attention(q, k, v, { causal: true }), work: 2 * 2 * 8 * 32 * 512 * 512 * 64 / 2, unit: 'GFLOP/s', noCheck: true },
];

function main(): void {
  const be = getBackend('cuda');
  if (!(be instanceof CudaBackend)) throw new Error('expected the cuda backend');
  console.log(`device: ${be.device.name}, ${(be.device.totalBytes / 2 ** 30).toFixed(0)} GiB, ${be.device.multiprocessors} SMs`);
  for (const c of cases) {
    scope(() => {
      const host = c.inputs.map((s, i) => data(s.shape.reduce((a, b) => a * b, 1), 11 + i));
      const make = (device: string) => c.inputs.map((s, i) => tensor(host[i], s.shape, { device, dtype: s.dtype ?? 'f32' }));
      const xs = make('cuda');
      let check = 'unchecked';
      if (!c.noCheck) {
        const got = scope(() => c.fn(...xs).toArray());
        const want = scope(() => c.fn(...make('cpu')).toArray());
        check = `max |cuda - cpu| ${maxDiff(got, want).toExponential(2)}`;
      }
      for (let i = 0; i < 2; i++) scope(() => void c.fn(...xs));
      be.syncNow();
      const times: number[] = [];
      for (let i = 0; i < 5; i++) {
        const t0 = process.hrtime.bigint();
        scope(() => void c.fn(...xs));
        be.syncNow();
        times.push(Number(process.hrtime.bigint() - t0) / 1e9);
      }
      times.sort((a, b) => a - b);
      const med = times[Math.floor(times.length / 2)];
      const rate = c.work / med / 1e9;
      console.log(`${c.name.padEnd(42)} ${(med * 1e3).toFixed(3).padStart(10)} ms  ${rate.toFixed(1).padStart(9)} ${c.unit}  ${check}`);
    });
  }
}

main();
