// The CUDA backend's own behaviour, beyond the per-op comparisons every op test runs
// with FINLORA_DEVICE=cuda: the caching allocator, reads that wait for queued kernels,
// errors raised before a kernel writes, a dropout mask identical to the CPU's bit for
// bit, and large products against the CPU. Skipped, saying why, where the addon is not
// built or no GPU is visible; the not-built error is checked everywhere.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type Backend, requireOps } from '../../src/backend/backend.js';
import type { Kernels } from '../../src/backend/kernels.js';
import { cudaAddonBuilt } from '../../src/backend/cuda/addon.js';
import { CudaBackend } from '../../src/backend/cuda/cuda.js';
import { getBackend } from '../../src/backend/registry.js';
import { add } from '../../src/ops/binary.js';
import { tensor } from '../../src/ops/creation.js';
import { dropoutMask } from '../../src/ops/dropout.js';
import { embedding } from '../../src/ops/embedding.js';
import { matmul } from '../../src/ops/matmul.js';
import { scope } from '../../src/tensor/tensor.js';
import { assertClose, cudaUnavailable, randomData } from '../helpers.js';

const skip = cudaUnavailable();
const cuda = (): CudaBackend => {
  const b = getBackend('cuda');
  assert.ok(b instanceof CudaBackend);
  return b;
};

test('getBackend("cuda") without the addon says how to build it', { skip: cudaAddonBuilt() ? 'the CUDA addon is built here' : false }, () => {
  assert.throws(() => getBackend('cuda'), /the CUDA backend is not built: run npm run build:cuda on a machine with nvcc and cuBLAS/);
});

test('cuda: the caching allocator reuses freed blocks of a size class', { skip }, () => {
  const be = cuda();
  be.syncNow();
  const live0 = be.liveBytes();
  const a = be.alloc(3 << 20);
  assert.equal(be.liveBytes(), live0 + (3 << 20));
  const cached0 = be.cachedBytes();
  be.free(a);
  assert.equal(be.liveBytes(), live0);
  assert.ok(be.cachedBytes() >= cached0 + (3 << 20), 'a freed block goes to the cache');
  const cachedAfterFree = be.cachedBytes();
  // same class (64 KiB granularity below 64 MiB): served from the cache, no cudaMalloc
  const b = be.alloc((3 << 20) - 1000);
  assert.ok(be.cachedBytes() < cachedAfterFree, 'an allocation of the same class takes the cached block');
  be.free(b);
  be.emptyCache();
  assert.equal(be.cachedBytes(), 0);
});

test('cuda: reads wait for queued kernels; writes are ordered with them', { skip }, () => {
  scope(() => {
    const n = 1 << 22;
    let x = tensor(new Float32Array(n), [n], { device: 'cuda' });
    const one = tensor([1], [1], { device: 'cuda' });
    for (let i = 0; i < 100; i++) x = add(x, one);
    const got = x.toArray();
    assert.equal(got[0], 100);
    assert.equal(got[n - 1], 100);
    // a write right after queued kernels lands after them
    const y = add(x, one);
    y.backend.write(y.storage.buffer, 0, new Uint8Array(new Float32Array([7]).buffer), 'f32');
    const yv = y.toArray();
    assert.equal(yv[0], 7);
    assert.equal(yv[1], 101);
  });
});

test('cuda: a bad id throws before anything is written, and the backend keeps working', { skip }, () => {
  scope(() => {
    const w = tensor(randomData(12, 1), [4, 3], { device: 'cuda' });
    assert.throws(() => embedding(tensor([1, 4], [2], { device: 'cuda', dtype: 'int32' }), w), /embedding id 4 at position 1 is out of range for a table of 4 rows/);
    const ok = embedding(tensor([3, 0], [2], { device: 'cuda', dtype: 'int32' }), w).toArray();
    const wv = w.toArray();
    assert.deepEqual(Array.from(ok), [...Array.from(wv.slice(9, 12)), ...Array.from(wv.slice(0, 3))]);
  });
});

test('cuda: the dropout mask equals the cpu mask bit for bit', { skip }, () => {
  for (const [seed, offset, p] of [[7, 0, 0.05], [4294967295, 2 ** 32 - 12345, 0.1], [3, 2 ** 45 + 17, 0.5]]) {
    scope(() => {
      const n = (1 << 20) + 3;
      const like = (device: string) => tensor([0], [1], { device });
      const onCpu = dropoutMask([n], p, { seed, offset }, like('cpu')).toArray();
      const onGpu = dropoutMask([n], p, { seed, offset }, like('cuda')).toArray();
      assert.deepEqual(new Uint8Array(onGpu.buffer, onGpu.byteOffset, onGpu.byteLength), new Uint8Array(onCpu.buffer, onCpu.byteOffset, onCpu.byteLength));
    });
  }
});

test('cuda: large products agree with the cpu (f32 and bf16 weights, transposed)', { skip }, () => {
  for (const [M, K, N, dtype] of [[257, 1024, 384, 'f32'], [64, 2048, 512, 'bf16']] as const) {
    scope(() => {
      const a = randomData(M * K, 1), b = randomData(N * K, 2);
      const run = (device: string) =>
        matmul(tensor(a, [M, K], { device }), tensor(b, [N, K], { device, dtype }), { transB: true }).toArray();
      assertClose(run('cuda'), run('cpu'), { atol: 1e-4, rtol: 1e-4 }, `${M}x${K}x${N} ${dtype}`);
    });
  }
});

test('cuda: the backend lists its kernels, and a model needing an absent one is refused by name', { skip }, () => {
  const be = cuda();
  for (const op of ['copy', 'fill', 'binary', 'unary', 'reduce', 'softmax', 'matmul', 'gather', 'scatterAdd', 'rmsnorm', 'rope', 'crossEntropy', 'dropoutMask', 'attention', 'adamw'] as const) {
    assert.ok(be.kernels[op] !== undefined, `kernel ${op}`);
  }
  // Every kernel the models use is built, so the absence is made: the same backend seen
  // through an object whose kernel list lacks quantizedMatmul (a build without it).
  assert.ok(be.kernels.quantizedMatmul !== undefined, 'kernel quantizedMatmul');
  requireOps(be, ['matmul', 'quantizedMatmul']);
  const whole: Backend = be;
  const kernels: Partial<Kernels> = { ...be.kernels };
  delete kernels.quantizedMatmul;
  const lacking: Backend = {
    name: be.name,
    kernels,
    computeDtypes: be.computeDtypes,
    alloc: (bytes) => whole.alloc(bytes),
    free: (buf) => whole.free(buf),
    write: (buf, byteOffset, data, dtype) => whole.write(buf, byteOffset, data, dtype),
    read: (buf, byteOffset, bytes, dtype) => whole.read(buf, byteOffset, bytes, dtype),
    sync: () => whole.sync(),
    liveBytes: () => whole.liveBytes(),
  };
  requireOps(lacking, ['matmul']);
  assert.throws(() => requireOps(lacking, ['matmul', 'quantizedMatmul']), /cannot run on backend 'cuda': missing op quantizedMatmul$/);
});
