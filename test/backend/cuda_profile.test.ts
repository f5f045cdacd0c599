// The per-kernel profile (setProfiling / profile / resetProfile, FINLORA_PROFILE=1) on
// the cuda backend, GPU time per label from CUDA events around each launch and copy,
// and on the cpu backend, whose shape (KernelTime by label) it shares: the labels and
// call counts of known ops, positive times, results unchanged by profiling, nothing
// recorded while off. The cuda part runs with FINLORA_DEVICE=cuda on a machine with a
// GPU and the addon, and skips saying why elsewhere; the cpu part runs everywhere.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend, type KernelTime } from '../../src/backend/cpu/cpu.js';
import { CudaBackend, type CudaKernelTime, profileLabel } from '../../src/backend/cuda/cuda.js';
import { nativeKernels } from '../../src/backend/native_kernels.js';
import { getBackend } from '../../src/backend/registry.js';
import { add, mul } from '../../src/ops/binary.js';
import { tensor, zeros } from '../../src/ops/creation.js';
import { matmul } from '../../src/ops/matmul.js';
import { fill } from '../../src/ops/inplace.js';
import { transpose } from '../../src/ops/view.js';
import { scope } from '../../src/tensor/tensor.js';
import { assertClose, cudaUnavailable, randomData } from '../helpers.js';

function cudaSkip(): string | false {
  if (process.env.FINLORA_DEVICE !== 'cuda') return 'runs with FINLORA_DEVICE=cuda';
  return cudaUnavailable();
}

type Profiled = CpuBackend | CudaBackend;

function backendNamed(device: 'cpu' | 'cuda'): Profiled {
  const b = getBackend(device);
  assert.ok(b instanceof CpuBackend || b instanceof CudaBackend, `${device} is a profiling backend`);
  return b;
}

function entry(rows: readonly KernelTime[], name: string): KernelTime {
  const row = rows.find((r) => r.name === name);
  assert.ok(row !== undefined, `profile has '${name}' (it has: ${rows.map((r) => r.name).join(', ')})`);
  return row;
}

const M = 5, K = 3, N = 7;

interface Results {
  readonly sum: ArrayLike<number>;
  readonly product: ArrayLike<number>;
}

// A few ops of known kernel counts on `device`, the profile reset just before them:
// three adds, one mul, two products a·bᵀ and their sum; both results read back.
function run(device: 'cpu' | 'cuda'): Results {
  return scope(() => {
    const x = tensor(randomData(64, 1), [64], { device });
    const y = tensor(randomData(64, 2), [64], { device });
    const a = tensor(randomData(M * K, 3), [M, K], { device });
    const b = tensor(randomData(N * K, 4), [N, K], { device });
    const be = backendNamed(device);
    be.resetProfile();
    const s = mul(add(add(add(x, y), y), y), x);
    const p = add(matmul(a, b, { transB: true }), matmul(a, b, { transB: true }));
    return { sum: s.toArray(), product: p.toArray() };
  });
}

function expected(): Results {
  const x = randomData(64, 1), y = randomData(64, 2), a = randomData(M * K, 3), b = randomData(N * K, 4);
  const sum = x.map((v, i) => (v + 3 * y[i]) * v);
  const product = new Float32Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let acc = 0;
      for (let k = 0; k < K; k++) acc += a[i * K + k] * b[j * K + k];
      product[i * N + j] = 2 * acc;
    }
  }
  return { sum, product };
}

function checkProfile(device: 'cpu' | 'cuda'): void {
  const be = backendNamed(device);
  be.setProfiling(true);
  let got: Results;
  let rows: KernelTime[];
  try {
    got = run(device);
    rows = be.profile();
  } finally {
    be.setProfiling(false);
  }
  const want = expected();
  assertClose(got.sum, want.sum, { atol: 1e-5, rtol: 1e-5 }, `${device} profiled sum`);
  assertClose(got.product, want.product, { atol: 1e-5, rtol: 1e-5 }, `${device} profiled product`);

  // 3 adds of the chain plus the add of the two products; one mul.
  assert.equal(entry(rows, 'binary:add').calls, 4);
  assert.equal(entry(rows, 'binary:mul').calls, 1);
  const gemm = entry(rows, device === 'cuda' ? `matmul:${M}x${N}x${K} NT f32·f32` : `matmul:${M}x${N}x${K}`);
  assert.equal(gemm.calls, 2);
  for (const r of rows) assert.ok(r.seconds > 0 && Number.isFinite(r.seconds), `${device} ${r.name}: time ${r.seconds} s`);
  for (let i = 1; i < rows.length; i++) assert.ok(rows[i - 1].seconds >= rows[i].seconds, `${device}: the most expensive first`);
  if (be instanceof CudaBackend) {
    const cudaRows = rows.filter((r): r is CudaKernelTime => 'hostSeconds' in r);
    assert.equal(cudaRows.length, rows.length);
    const g = cudaRows.find((r) => r.name === gemm.name);
    assert.equal(g?.flops, 2 * 2 * M * N * K, 'a GEMM counts 2·M·N·K per call');
    assert.ok(cudaRows.every((r) => r.hostSeconds > 0), 'each label has host time');
    // The two results read back, each its own device-to-host copy.
    assert.equal(entry(rows, 'memcpy:d2h').calls, 2);
  }
  // profile() does not clear; resetProfile() does.
  assert.equal(be.profile().length, rows.length);
  be.resetProfile();
  assert.deepEqual(be.profile(), []);
}

function checkOff(device: 'cpu' | 'cuda'): void {
  const be = backendNamed(device);
  be.setProfiling(false);
  const got = run(device);
  assertClose(got.sum, expected().sum, { atol: 1e-5, rtol: 1e-5 }, `${device} sum`);
  assert.deepEqual(be.profile(), [], 'nothing is recorded while profiling is off');
}

// A backend made while FINLORA_PROFILE=1 profiles from the start; its kernels run on
// buffers of the registry's backend of the same device (one addon).
function checkEnvironment(device: 'cpu' | 'cuda'): void {
  const saved = process.env.FINLORA_PROFILE;
  process.env.FINLORA_PROFILE = '1';
  let be: Profiled;
  try {
    be = device === 'cuda' ? new CudaBackend() : new CpuBackend();
  } finally {
    if (saved === undefined) delete process.env.FINLORA_PROFILE;
    else process.env.FINLORA_PROFILE = saved;
  }
  try {
    be.resetProfile();
    scope(() => {
      const t = tensor(randomData(10, 5), [10], { device });
      const fillKernel = be.kernels.fill;
      assert.ok(fillKernel !== undefined);
      fillKernel(t, 2);
      assert.deepEqual([...t.toArray()], new Array<number>(10).fill(2));
    });
    assert.equal(entry(be.profile(), 'fill').calls, 1);
  } finally {
    be.setProfiling(false);
    be.resetProfile();
  }
}

// The cuda labels from the argument layouts native_kernels.ts builds, on cpu tensors (no GPU needed).
test('cuda profile labels: a GEMM by its transposes and dtypes, a copy by its dtypes, shape and layout', () => {
  const labels: string[] = [];
  const k = nativeKernels((name, _t, ints, _f, variant) => labels.push(profileLabel(name, ints, typeof variant === 'function' ? variant() : variant)), {
    stridedAttention: false,
  });
  scope(() => {
    const a = tensor(randomData(6, 1), [2, 3]), b = tensor(randomData(12, 2), [4, 3]), c = tensor(randomData(8, 3), [2, 4]);
    k.matmul(a, b, zeros([2, 4]), { transA: false, transB: true, alpha: 1, accumulate: true });
    k.matmul(a, c, zeros([3, 4]), { transA: true, transB: false, alpha: 1, accumulate: false });
    k.copy(transpose(a), zeros([3, 2]));
    k.copy(a, zeros([2, 3], { dtype: 'bf16' }));
    k.binary('mul', a, a, zeros([2, 3]));
  });
  assert.deepEqual(labels, ['matmul:2x4x3 NT f32·f32 +=', 'matmul:3x4x2 TN f32·f32', 'copy:f32→f32 [3,2] strided', 'copy:f32→bf16 [2,3]', 'binary:mul']);
});

test('cpu profile: labels, call counts and times of known ops; results unchanged', () => checkProfile('cpu'));
test('cpu profile: off records nothing', () => checkOff('cpu'));
test('cpu profile: FINLORA_PROFILE=1 turns it on', () => checkEnvironment('cpu'));

const skip = cudaSkip();
test('cuda profile: labels, call counts, GPU times, GEMM flops and copies of known ops; results unchanged', { skip }, () => checkProfile('cuda'));
test('cuda profile: off records nothing', { skip }, () => checkOff('cuda'));
test('cuda profile: FINLORA_PROFILE=1 turns it on', { skip }, () => checkEnvironment('cuda'));

test('cuda profile: a long profile folds finished brackets as it goes and loses none', { skip }, () => {
  const be = backendNamed('cuda');
  be.resetProfile();
  be.setProfiling(true);
  const n = 10000;
  try {
    scope(() => {
      const t = tensor(new Float32Array(256), [256], { device: 'cuda' });
      for (let i = 0; i < n; i++) fill(t, i);
      assert.equal(t.toArray()[0], n - 1);
    });
  } finally {
    be.setProfiling(false);
  }
  assert.equal(entry(be.profile(), 'fill').calls, n);
  be.resetProfile();
});
