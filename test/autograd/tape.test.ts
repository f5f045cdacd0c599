import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward, backwardFrom, noGrad, record } from '../../src/autograd/tape.js';
import { requireOps, type Backend } from '../../src/backend/backend.js';
import { defaultBackend, getBackend } from '../../src/backend/registry.js';
import { add, mul, sub } from '../../src/ops/binary.js';
import { tensor } from '../../src/ops/creation.js';
import { linear, matmul } from '../../src/ops/matmul.js';
import { sum } from '../../src/ops/reduce.js';
import { clone, reshape, slice, transpose } from '../../src/ops/view.js';
import { keep, scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, randomData } from '../helpers.js';

test('gradients accumulate into parameters across backward calls', () => {
  const w = keep(tensor([1, 2, 3], [3], { requiresGrad: true }));
  for (let i = 0; i < 2; i++) {
    scope(() => {
      const x = tensor([4, 5, 6], [3]);
      backward(sum(mul(w, x)));
    });
  }
  assertClose(w.grad!.toArray(), [8, 10, 12]);
  w.dispose();
});

test('a tensor used twice gets the sum of both paths', () => {
  scope(() => {
    const x = tensor([1, -2], [2], { requiresGrad: true });
    // y = x*x + 3x  =>  dy/dx = 2x + 3
    backward(sum(add(mul(x, x), mul(x, 3))));
    assertClose(x.grad!.toArray(), [5, -1]);
  });
});

test('frozen tensors get no gradient and noGrad records nothing', () => {
  scope(() => {
    const frozen = tensor([1, 2], [2]);
    const p = tensor([3, 4], [2], { requiresGrad: true });
    const y = sum(mul(frozen, p));
    backward(y);
    assert.equal(frozen.grad, null);
    assertClose(p.grad!.toArray(), [1, 2]);
    const z = noGrad(() => mul(p, 2));
    assert.equal(z.requiresGrad, false);
    assert.equal(z.gradFn, null);
    assert.throws(() => backward(sum(frozen)), /does not require grad/);
  });
});

test('gradients flow through views (transpose, slice, reshape)', () => {
  scope(() => {
    const x = tensor([1, 2, 3, 4, 5, 6], [2, 3], { requiresGrad: true });
    const y = sum(mul(slice(transpose(x), 0, 1), reshape(tensor([10, 20], [2]), [1, 2])));
    backward(y);
    // slice rows 1..3 of x^T = columns 1..2 of x, weighted by 10 and 20 per row of x
    assertClose(x.grad!.toArray(), [0, 10, 10, 0, 20, 20]);
  });
});

test('scope frees intermediates and keeps what it returns', () => {
  // The tensors go to the default device (FINLORA_DEVICE), so that is whose memory is counted.
  const device = defaultBackend();
  const before = device.liveBytes();
  const kept = scope(() => {
    const a = tensor(new Float32Array(1000), [1000]);
    const b = add(a, 1);
    sub(b, 2);
    return b;
  });
  assert.equal(device.liveBytes() - before, 4000, 'only the returned tensor survives');
  assertClose(kept.toArray().slice(0, 2), [1, 1]);
  kept.dispose();
  assert.equal(device.liveBytes(), before);
  assert.throws(() => kept.toArray(), /was disposed/);
});

test('views keep storage alive until the last one is disposed', () => {
  const device = defaultBackend();
  const before = device.liveBytes();
  const x = tensor([1, 2, 3, 4], [2, 2]);
  const v = transpose(x);
  x.dispose();
  assert.equal(device.liveBytes() - before, 16);
  v.dispose();
  assert.equal(device.liveBytes(), before);
});

test('a backend without an op is refused with the op named', () => {
  const cpu = getBackend('cpu');
  const partial: Backend = { ...cpu, name: 'partial', kernels: { copy: cpu.kernels.copy }, alloc: cpu.alloc.bind(cpu), free: cpu.free.bind(cpu), write: cpu.write.bind(cpu), read: cpu.read.bind(cpu), sync: cpu.sync.bind(cpu), liveBytes: cpu.liveBytes.bind(cpu) };
  assert.throws(() => requireOps(partial, ['copy', 'binary', 'attention'], 'llama'), /llama cannot run on backend 'partial': missing ops binary, attention/);
  const x = tensor([1, 2], [2], { device: partial });
  assert.throws(() => add(x, x), /backend 'partial' does not support op 'binary'/);
  x.dispose();
});

/** x unchanged, with a backward that calls `seen` before passing the gradient on (it reads nothing). */
function probe(x: Tensor, seen: () => void): Tensor {
  const out = noGrad(() => clone(x));
  return record(out, 'probe', [x], (g) => {
    seen();
    return [g];
  }, []);
}

test('a scope frees what backward does not read during the forward; a saved tensor lives until its reader ran', () => {
  const device = defaultBackend();
  scope(() => {
    const p = tensor([1, 2, 3], [3], { requiresGrad: true });
    const inner: Tensor[] = [];
    let aliveBeforeMul = false, freedAfterMul = false;
    const y = scope(() => {
      const a = add(p, 1); // nobody reads it: add's backward passes g on
      const b = add(probe(a, () => (freedAfterMul = b.isDisposed)), 2); // mul's backward reads b (p's gradient is g·b)
      const c = mul(b, p);
      inner.push(a, b, c);
      return sum(probe(c, () => (aliveBeforeMul = !b.isDisposed)));
    });
    const [a, b, c] = inner;
    assert.ok(a.isDisposed, 'an edge nobody reads is freed when the scope ends');
    assert.ok(c.isDisposed, 'so is an output that only passes the gradient on');
    assert.ok(!b.isDisposed && b.graphHeld, 'a saved tensor is handed to the graph');
    assert.deepEqual([...b.toArray()], [4, 5, 6]);
    const held = device.liveBytes();
    backward(y);
    assert.ok(aliveBeforeMul, 'b is alive until the record that saved it has run');
    assert.ok(freedAfterMul, 'and freed right after it, before backward goes on');
    assert.ok(b.isDisposed);
    assert.ok(device.liveBytes() < held + 3 * 4 * 2, 'backward frees what it no longer needs');
    // d(b·p)/dp = b + p (b = p + 3): the freed edges still route the gradient.
    assertClose(p.grad!.toArray(), [5, 7, 9]);
    assert.ok(!p.isDisposed, 'a tensor the caller holds is never freed by backward');
  });
});

test('graph-held tensors that backward never reaches are freed with the enclosing scope', () => {
  const device = defaultBackend();
  const p = keep(tensor(new Float32Array(256).fill(2), [256], { requiresGrad: true }));
  const before = device.liveBytes();
  scope(() => {
    const y = scope(() => sum(mul(add(p, 1), p))); // add(p, 1) is saved by mul
    assert.ok(device.liveBytes() > before + 256 * 4, 'the saved operand outlives its scope');
    assert.equal(y.item(), 256 * 6);
  });
  assert.equal(device.liveBytes(), before, 'nothing leaks without a backward');
  p.dispose();
});

test('backward that reads a tensor its record did not save finds it disposed', () => {
  scope(() => {
    const p = tensor([1, 2], [2], { requiresGrad: true });
    const y = scope(() => {
      const x = add(p, 1);
      const out = noGrad(() => clone(x));
      // A record that under-declares what it reads: x is freed when the scope ends.
      return sum(record(out, 'bad', [x], (g) => [mul(g, x)], []));
    });
    assert.throws(() => backward(y), /was disposed/);
  });
});

test('a trainable leaf made inside a scope that only the graph reaches is disposed with its gradient by the enclosing scope', () => {
  const device = defaultBackend();
  const before = device.liveBytes();
  scope(() => {
    const leaves: Tensor[] = [];
    const y = scope(() => {
      const leaf = tensor(new Float32Array(64).fill(1), [64], { requiresGrad: true });
      leaves.push(leaf);
      return sum(add(leaf, 1));
    });
    backward(y);
    assert.deepEqual([...leaves[0].grad!.toArray()], new Array(64).fill(1));
  });
  assert.equal(device.liveBytes(), before, 'the leaf and its gradient are freed');
});

test('a leaf takes a fresh gradient as its .grad, and one gradient reaching two leaves is not shared by them', () => {
  scope(() => {
    const x = tensor([1, 2, 3], [3], { requiresGrad: true });
    const y = tensor([4, 5, 6], [3], { requiresGrad: true });
    // d/dx and d/dy of sum((x + y) * c) are both c: add's backward hands one tensor to both leaves.
    const c = tensor([0.5, -1, 2], [3]);
    backward(sum(mul(add(x, y), c)));
    assertClose(x.grad!.toArray(), [0.5, -1, 2]);
    assertClose(y.grad!.toArray(), [0.5, -1, 2]);
    assert.notEqual(x.grad!.storage, y.grad!.storage);
    // A second backward adds into each .grad on its own.
    backward(sum(mul(x, c)));
    assertClose(x.grad!.toArray(), [1, -2, 4]);
    assertClose(y.grad!.toArray(), [0.5, -1, 2]);
  });
});

test('a leaf never takes the caller\'s root gradient or a view of a gradient as its .grad', () => {
  scope(() => {
    const x = tensor([1, 2, 3, 4], [2, 2], { requiresGrad: true });
    const g = tensor([1, 2, 3, 4], [2, 2]);
    // The root is x itself viewed: backward through the view gives a view of g.
    backward(reshape(x, [4]), reshape(g, [4]));
    assertClose(x.grad!.toArray(), [1, 2, 3, 4]);
    assert.notEqual(x.grad!.storage, g.storage);
    const t = transpose(x);
    backward(t, g);
    assertClose(x.grad!.toArray(), [2, 5, 5, 8]);
    assertClose(g.toArray(), [1, 2, 3, 4]);
  });
});

test('an input used by several products gets the sum of their gradients (products add into its pending gradient)', () => {
  scope(() => {
    const xs = randomData(5 * 7, 1), w1 = randomData(3 * 7, 2), w2 = randomData(4 * 7, 3);
    const a = randomData(5 * 3, 4), b = randomData(5 * 4, 5), c = randomData(5 * 7, 6);
    const x = tensor(xs, [5, 7], { requiresGrad: true });
    const W1 = tensor(w1, [3, 7]), W2 = tensor(w2, [4, 7]);
    // x feeds two linears and an elementwise product, as a layer input feeds q, k, v.
    const y = add(add(sum(mul(linear(x, W1), tensor(a, [5, 3]))), sum(mul(matmul(x, W2, { transB: true }), tensor(b, [5, 4])))), sum(mul(x, tensor(c, [5, 7]))));
    backward(y);
    const want = new Float64Array(5 * 7);
    for (let i = 0; i < 5; i++) {
      for (let j = 0; j < 7; j++) {
        let s = c[i * 7 + j];
        for (let o = 0; o < 3; o++) s += a[i * 3 + o] * w1[o * 7 + j];
        for (let o = 0; o < 4; o++) s += b[i * 4 + o] * w2[o * 7 + j];
        want[i * 7 + j] = s;
      }
    }
    assertClose(x.grad!.toArray(), want, { atol: 1e-5, rtol: 1e-5 });
  });
});

test('a product never adds into the gradient it reads (x + linear(x, W): both get the same upstream tensor)', () => {
  scope(() => {
    const xs = randomData(4 * 6, 7), w = randomData(6 * 6, 8), c = randomData(4 * 6, 9);
    const x = tensor(xs, [4, 6], { requiresGrad: true });
    const W = tensor(w, [6, 6]);
    backward(sum(mul(add(x, linear(x, W)), tensor(c, [4, 6]))));
    const want = new Float64Array(4 * 6);
    for (let i = 0; i < 4; i++) {
      for (let j = 0; j < 6; j++) {
        let s = c[i * 6 + j];
        for (let o = 0; o < 6; o++) s += c[i * 6 + o] * w[o * 6 + j];
        want[i * 6 + j] = s;
      }
    }
    assertClose(x.grad!.toArray(), want, { atol: 1e-5, rtol: 1e-5 });
  });
});

test('backwardFrom: several roots with their gradients give the sum over both, and leave the given gradients alone', () => {
  scope(() => {
    const x = tensor([1, 2, 3], [3], { requiresGrad: true });
    const c = tensor([2, -1, 0.5], [3]);
    // a = x * c, b = a * a: d/dx of (a·ga + b·gb) = c·ga + 2·a·c·gb.
    const a = mul(x, c);
    const b = mul(a, a);
    const ga = tensor([1, 1, 1], [3]), gb = tensor([0.5, 2, -1], [3]);
    backwardFrom([a, b], [ga, gb]);
    const av = [2, -2, 1.5];
    assertClose(x.grad!.toArray(), [0, 1, 2].map((i) => [2, -1, 0.5][i] * (1 + 2 * av[i] * [0.5, 2, -1][i])));
    assertClose(ga.toArray(), [1, 1, 1]);
    assertClose(gb.toArray(), [0.5, 2, -1]);
    assert.throws(() => backwardFrom([x], []), /1 roots and 0 gradients/);
  });
});

test('backwardFrom with a root gradient handed over gives the same gradients (it may be added into and become a leaf\'s .grad)', () => {
  scope(() => {
    const xs = randomData(4 * 6, 17), w = randomData(6 * 6, 18), c = randomData(4 * 6, 19);
    const grads = [false, true].map((handed) => {
      const x = tensor(xs, [4, 6], { requiresGrad: true });
      // x + linear(x, W): the root gradient reaches x directly and through the product.
      const y = add(x, linear(x, tensor(w, [6, 6])));
      backwardFrom([y], [tensor(c, [4, 6])], [handed]);
      return Array.from(x.grad!.toArray());
    });
    assert.deepEqual(grads[1], grads[0]);
  });
});
