import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { add, mul } from '../../src/ops/binary.js';
import { tensor } from '../../src/ops/creation.js';
import { sum } from '../../src/ops/reduce.js';
import { dropout, DropoutGenerator, dropoutMask, dropoutUniform } from '../../src/ops/dropout.js';
import { kernel } from '../../src/backend/backend.js';
import { getBackend } from '../../src/backend/registry.js';
import { empty, scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, gradcheck, randomData, testBackends, values } from '../helpers.js';
import { eachLevel, forEachIsa } from './isa_levels.js';

const devices = () => ['reference', ...testBackends()];

test('dropoutUniform: 24-bit values in [0, 1), spread evenly, different per seed and counter', () => {
  const n = 1 << 16;
  const buckets = new Array<number>(16).fill(0);
  let same = 0;
  for (let i = 0; i < n; i++) {
    const u = dropoutUniform(7, i);
    assert.ok(u >= 0 && u < 1 && Number.isInteger(u * 2 ** 24));
    buckets[Math.floor(u * 16)]++;
    if (u === dropoutUniform(8, i)) same++;
  }
  // each bucket expects 4096 with sd 62; 6 sd is a bug, not chance
  for (const b of buckets) assert.ok(Math.abs(b - n / 16) < 6 * 62, `bucket count ${b}`);
  assert.ok(same < 10, `seeds 7 and 8 agree on ${same} of ${n} draws`);
  // counters past 2^32 are distinct draws, not a wrap-around
  assert.notEqual(dropoutUniform(7, 2 ** 32 + 5), dropoutUniform(7, 5));
  assert.equal(dropoutUniform(7, 2 ** 40 + 3), dropoutUniform(7, 2 ** 40 + 3));
});

test('dropoutMask: every backend draws the TypeScript mask bit for bit', () => {
  for (const [seed, offset, p, n] of [
    [0, 0, 0.1, 1000],
    [123456789, 77, 0.5, 4099],
    [4294967295, 2 ** 32 - 100, 0.05, 300], // crosses the counter's 2^32 boundary
    [42, 2 ** 50 + 1, 0.9, 257],
    [9, 0, 1 - 2 ** -24, 64],
  ]) {
    const keep = Math.fround(1 / (1 - p));
    const expected = Array.from({ length: n }, (_, i) => (dropoutUniform(seed, offset + i) >= p ? keep : 0));
    for (const device of devices()) {
      scope(() => {
        const like = tensor([0], [1], { device });
        const m = values(dropoutMask([n], p, { seed, offset }, like));
        const got = Array.from(m, (x) => Math.fround(x));
        assert.deepEqual(got, expected, `${device}: seed ${seed} offset ${offset} p ${p}`);
      });
    }
  }
});

test('dropout: keeps about 1 - p of the elements and scales them by 1/(1 - p)', () => {
  for (const p of [0.05, 0.3, 0.75]) {
    scope(() => {
      const n = 40000;
      const x = tensor(randomData(n, 5, 0.5, 2), [200, 200]);
      const xs = values(x);
      const y = values(dropout(x, p, { seed: 11, offset: 0 }));
      let kept = 0;
      y.forEach((v, i) => {
        if (v === 0) return;
        kept++;
        assertClose([v], [Math.fround(xs[i] / (1 - p))], { atol: 0, rtol: 1e-6 });
      });
      const sd = Math.sqrt(n * p * (1 - p));
      assert.ok(Math.abs(kept - n * (1 - p)) < 5 * sd, `p ${p}: kept ${kept} of ${n}`);
    });
  }
});

test('dropout: matches the reference on strided input; p = 0 returns x', () => {
  checkAgainstReference((x) => dropout(x, 0.4, { seed: 3, offset: 10 }), [{ shape: [13, 7], strided: true }]);
  scope(() => {
    const x = tensor([1, 2, 3], [3]);
    assert.equal(dropout(x, 0, { seed: 1, offset: 0 }), x);
  });
});

test('dropout: backward multiplies by the same mask', () => {
  const fn = (x: Tensor) => dropout(x, 0.3, { seed: 77, offset: 5 });
  gradcheck(fn, [{ shape: [6, 9] }]);
  gradcheck(fn, [{ shape: [4, 5], strided: true }]);
  for (const device of devices()) {
    scope(() => {
      const x = tensor(new Float32Array(500).fill(1), [500], { device, requiresGrad: true });
      const y = values(dropout(x, 0.5, { seed: 1, offset: 0 }));
      const xr = tensor(new Float32Array(500).fill(1), [500], { device, requiresGrad: true });
      const out = dropout(xr, 0.5, { seed: 1, offset: 0 });
      backward(out, tensor(new Float32Array(500).fill(1), [500], { device }));
      assert.deepEqual(Array.from(values(xr.grad!)), Array.from(y), device);
    });
  }
});

test('DropoutGenerator: successive calls draw fresh masks; state round-trips', () => {
  scope(() => {
    const gen = new DropoutGenerator(2024);
    const x = tensor(new Float32Array(1000).fill(1), [1000]);
    const a = values(dropout(x, 0.5, gen));
    assert.equal(gen.offset, 1000);
    const saved = gen.state();
    const b = values(dropout(x, 0.5, gen));
    assert.notDeepEqual(Array.from(a), Array.from(b));
    // the second call is the continuation of one long stream
    const both = values(dropout(tensor(new Float32Array(2000).fill(1), [2000]), 0.5, { seed: 2024, offset: 0 }));
    assert.deepEqual(Array.from(both), [...a, ...b]);
    const resumed = DropoutGenerator.fromState(saved);
    assert.deepEqual(Array.from(values(dropout(x, 0.5, resumed))), Array.from(b));
    assert.deepEqual(resumed.state(), { seed: 2024, offset: 2000 });
  });
});

test('dropout: bad arguments give clear errors', () => {
  scope(() => {
    const x = tensor([1, 2], [2]);
    assert.throws(() => dropout(x, 1, { seed: 1, offset: 0 }), /dropout: p must be in \[0, 1\), got 1/);
    assert.throws(() => dropout(x, -0.1, { seed: 1, offset: 0 }), /dropout: p must be in \[0, 1\)/);
    assert.throws(() => dropout(x, 0.5, { seed: -1, offset: 0 }), /dropout: seed must be an integer in \[0, 2\^32\)/);
    assert.throws(() => dropout(x, 0.5, { seed: 1, offset: 1.5 }), /dropout: offset must be an integer/);
    assert.throws(() => new DropoutGenerator(2 ** 32), /DropoutGenerator: seed must be/);
  });
});

const KERNEL_CASES = [
  [0, 0, 0.1, 1000],
  [123456789, 77, 0.5, 40099],
  [4294967295, 2 ** 32 - 100, 0.05, 300],
  [42, 2 ** 50 + 1, 0.9, 257],
] as const;

const bits = (a: ArrayLike<number>) => Array.from(new Uint32Array(Float32Array.from(a).buffer));
// A GPU's arithmetic returns one canonical NaN whatever the operand's payload; NaN is still
// NaN at the same place, and every other value is compared bit for bit.
const bitsNanAsOne = (a: ArrayLike<number>) => Array.from(a, (v, i) => (Number.isNaN(v) ? 'NaN' : bits([a[i]])[0]));

/**
 * Checks a backend's fused dropout kernel against x times the mask dropoutMask writes on
 * that backend, bit for bit (NaN payloads aside where `anyNan`).
 */
function checkFusedDropout(device: string, anyNan = false): void {
  const backend = getBackend(device);
  const fused = backend.kernels.dropout;
  assert.ok(fused !== undefined, `the ${device} backend has the fused dropout kernel`);
  for (const [seed, offset, p, n] of KERNEL_CASES) {
    scope(() => {
      const data = randomData(n, seed % 1000, -4, 4);
      data[0] = Infinity;
      data[1] = NaN;
      const x = tensor(data, [n], { device });
      const mask = Float32Array.from(dropoutMask([n], p, { seed, offset }, x).toArray());
      const expected = new Float32Array(n).map((_, i) => data[i] * mask[i]);
      const out = empty([n], 'f32', backend);
      fused(x, out, p, seed, offset);
      const compare = anyNan ? bitsNanAsOne : bits;
      assert.deepEqual(compare(out.toArray()), compare(expected), `${device}: seed ${seed} offset ${offset} p ${p}`);
    });
  }
}

test('dropout kernel: x times the mask, bit for bit, at every SIMD level and across the 2^32 counter boundary', async (t) => {
  // The SIMD levels are the cpu backend's, so its tensors are made there whatever the default device.
  await eachLevel(t, () => checkFusedDropout('cpu'));
});

test('dropout kernel on cuda: x times the mask, bit for bit, across the 2^32 counter boundary', { skip: testBackends().includes('cuda') ? false : 'cuda is not under test (FINLORA_DEVICE=cuda)' }, () => {
  checkFusedDropout('cuda', true);
  // and the cuda mask is the cpu mask, so the product is the cpu kernel's too
  for (const [seed, offset, p, n] of KERNEL_CASES) {
    scope(() => {
      const data = randomData(n, seed % 1000, -4, 4);
      const onDevice = (device: string) => {
        const out = empty([n], 'f32', getBackend(device));
        kernel(getBackend(device), 'dropout')(tensor(data, [n], { device }), out, p, seed, offset);
        return bits(out.toArray());
      };
      assert.deepEqual(onDevice('cuda'), onDevice('cpu'), `seed ${seed} offset ${offset} p ${p}`);
    });
  }
});

test('dropoutAdd adds bit for bit what dropout writes, as binary add would (chunk edges, a counter crossing 2^32), at every SIMD level', () => {
  const cpu = getBackend('cpu');
  const add = cpu.kernels.dropoutAdd;
  assert.ok(add !== undefined, 'the cpu backend has dropoutAdd');
  forEachIsa(() => {
    for (const [n, offset] of [[1, 0], [1023, 5], [3000, 2 ** 32 - 1500], [70_000, 123]] as const) {
      scope(() => {
        const x = tensor(randomData(n, 31), [n], { device: cpu });
        const prev = randomData(n, 32);
        const fused = tensor(prev, [n], { device: cpu });
        add(x, fused, 0.3, 77, offset);
        const dropped = empty([n], 'f32', cpu);
        kernel(cpu, 'dropout')(x, dropped, 0.3, 77, offset);
        const sum = tensor(prev, [n], { device: cpu });
        kernel(cpu, 'binary')('add', sum, dropped, sum);
        assert.deepEqual(Array.from(fused.toArray()), Array.from(sum.toArray()), `n ${n}, offset ${offset}`);
      });
    }
  });
});

test('an input that feeds several dropped branches gets the sum of their gradients (added into its pending gradient)', () => {
  for (const device of testBackends()) {
    scope(() => {
      const xs = randomData(6 * 5, 41), c1 = randomData(6 * 5, 42), c2 = randomData(6 * 5, 43), c3 = randomData(6 * 5, 44);
      const x = tensor(xs, [6, 5], { device, requiresGrad: true });
      const gen = new DropoutGenerator(9);
      const d1 = dropout(x, 0.25, gen), d2 = dropout(x, 0.5, gen);
      backward(add(add(sum(mul(d1, tensor(c1, [6, 5], { device }))), sum(mul(d2, tensor(c2, [6, 5], { device })))), sum(mul(x, tensor(c3, [6, 5], { device })))));
      const m1 = values(dropoutMask([30], 0.25, { seed: 9, offset: 0 }, x)), m2 = values(dropoutMask([30], 0.5, { seed: 9, offset: 30 }, x));
      assertClose(x.grad!.toArray(), Array.from({ length: 30 }, (_, i) => c1[i] * m1[i] + c2[i] * m2[i] + c3[i]), { atol: 1e-6, rtol: 1e-6 });
    });
  }
});
