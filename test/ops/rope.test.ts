import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tensor } from '../../src/ops/creation.js';
import { rope, ropeInvFreq, rotaryTables } from '../../src/ops/rope.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, checkAgainstReference, gradcheck, randomData, testBackends, values } from '../helpers.js';
import { forEachIsa } from './isa_levels.js';

const rot = (x: Tensor, c: Tensor, s: Tensor) => rope(x, c, s);

test('rope: matches the reference on odd shapes, strided x and per-sequence tables, at every SIMD level', () => {
  forEachIsa(() => {
    checkAgainstReference(rot, [{ shape: [2, 5, 3, 8] }, { shape: [1, 5, 4] }, { shape: [1, 5, 4] }]);
    checkAgainstReference(rot, [{ shape: [3, 4, 5, 6], strided: true }, { shape: [3, 4, 3] }, { shape: [3, 4, 3] }]);
    checkAgainstReference(rot, [{ shape: [2, 3, 2, 130] }, { shape: [2, 3, 65], strided: true }, { shape: [2, 3, 65] }]);
    checkAgainstReference(rot, [{ shape: [1, 1, 7, 64] }, { shape: [1, 1, 32] }, { shape: [1, 1, 32] }]);
  });
});

test('rope: heads whose halves are multiples of 8 (read 16 bytes at a time on the GPU) match the reference in f32 and bf16, with shared and per-sequence tables', () => {
  checkAgainstReference(rot, [{ shape: [2, 3, 40, 128] }, { shape: [1, 3, 64] }, { shape: [1, 3, 64] }]);
  checkAgainstReference(rot, [{ shape: [3, 4, 5, 32], dtype: 'bf16' }, { shape: [3, 4, 16] }, { shape: [3, 4, 16] }]);
  checkAgainstReference(rot, [{ shape: [2, 5, 3, 48], dtype: 'bf16' }, { shape: [1, 5, 24] }, { shape: [1, 5, 24] }]);
});

test("rope: follows Hugging Face's rotate_half with cos/sin of position * inv_freq", () => {
  const B = 2, T = 3, H = 2, D = 8;
  const inv = ropeInvFreq({ rope_theta: 10000, head_dim: D });
  const positions = [[0, 1, 2], [5, 6, 7]];
  const x = randomData(B * T * H * D, 4);
  const expected = new Float64Array(x.length);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++)
      for (let h = 0; h < H; h++) {
        const o = ((b * T + t) * H + h) * D;
        // q * cos + rotate_half(q) * sin over the full head, cos/sin repeated across halves
        for (let i = 0; i < D; i++) {
          const f = inv[i % (D / 2)] * positions[b][t];
          const rotated = i < D / 2 ? -x[o + i + D / 2] : x[o + i - D / 2];
          expected[o + i] = x[o + i] * Math.cos(f) + rotated * Math.sin(f);
        }
      }
  for (const device of ['reference', ...testBackends()]) {
    scope(() => {
      const { cos, sin } = rotaryTables(inv, positions, { device });
      assert.deepEqual(cos.shape, [2, 3, 4]);
      const out = rope(tensor(x, [B, T, H, D], { device }), cos, sin);
      assertClose(values(out), expected, { atol: 1e-6, rtol: 1e-6 }, device);
    });
  }
});

test('rope: gradient (the inverse rotation) matches finite differences', () => {
  gradcheck(rot, [{ shape: [2, 3, 2, 6] }, { shape: [1, 3, 3], noGrad: true }, { shape: [1, 3, 3], noGrad: true }]);
  gradcheck(rot, [{ shape: [1, 2, 3, 4], strided: true }, { shape: [1, 2, 2], noGrad: true }, { shape: [1, 2, 2], noGrad: true }]);
});

test('rope: rotating by real angles then by the inverse gives x back', () => {
  scope(() => {
    const { cos, sin } = rotaryTables(ropeInvFreq({ head_dim: 16 }), Int32Array.from([0, 3, 900, 4095]));
    const x = tensor(randomData(2 * 4 * 3 * 16, 8), [2, 4, 3, 16], { requiresGrad: true });
    const y = rope(x, cos, sin);
    // backward of y with gradient y is R^T R x = x
    y.gradFn!.backward(y).forEach((g, i) => {
      if (i === 0) assertClose(values(g!), values(x), { atol: 1e-6 });
    });
  });
});

test('ropeInvFreq: default and linear scaling', () => {
  const inv = ropeInvFreq({ hidden_size: 256, num_attention_heads: 4 });
  assert.equal(inv.length, 32);
  assertClose(inv, Array.from({ length: 32 }, (_, i) => 10000 ** (-i / 32)), { atol: 0, rtol: 1e-15 });
  const lin = ropeInvFreq({ head_dim: 64, rope_theta: 500000, rope_scaling: { type: 'linear', factor: 4 } });
  assertClose(lin, Array.from({ length: 32 }, (_, i) => 500000 ** (-i / 32) / 4), { atol: 0, rtol: 1e-15 });
  assert.deepEqual(ropeInvFreq({ head_dim: 8, rope_scaling: { rope_type: 'default' } }), ropeInvFreq({ head_dim: 8 }));
});

test("ropeInvFreq: llama3 scaling with Llama-3.1's settings hits all three regions", () => {
  const scaling = { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
  const inv = ropeInvFreq({ head_dim: 128, rope_theta: 500000, rope_scaling: scaling });
  assert.equal(inv.length, 64);
  // Written in terms of frequencies rather than wavelengths: a frequency above
  // 2π·4/8192 rotates more than 4 times in 8192 positions (kept); one below 2π/8192
  // rotates less than once (divided by 8); between, the blend is linear in 8192·f/2π.
  const keepAbove = (2 * Math.PI * 4) / 8192, divideBelow = (2 * Math.PI) / 8192;
  const regions = [0, 0, 0];
  for (let i = 0; i < 64; i++) {
    const f = 1 / 500000 ** ((2 * i) / 128);
    let expected: number;
    if (f > keepAbove) {
      expected = f;
      regions[0]++;
    } else if (f < divideBelow) {
      expected = f / 8;
      regions[2]++;
    } else {
      const rotations = (8192 * f) / (2 * Math.PI); // between 1 and 4
      const w = (rotations - 1) / 3;
      expected = f * (w + (1 - w) / 8);
      regions[1]++;
    }
    assertClose([inv[i]], [expected], { atol: 0, rtol: 1e-12 }, `inv_freq[${i}]`);
  }
  // worked out by hand: 500000^(i/64) crosses 2048/2π at i = 28.2 and 8192/2π at i = 35.0
  assert.deepEqual(regions, [29, 6, 29]);
  assert.equal(inv[0], 1);
  assertClose([inv[63]], [500000 ** (-126 / 128) / 8], { atol: 0, rtol: 1e-12 });
});

test('rope and its tables: clear errors', () => {
  assert.throws(() => ropeInvFreq({ head_dim: 7 }), /ropeInvFreq: head dimension must be a positive even integer, got 7/);
  assert.throws(() => ropeInvFreq({ head_dim: 8, rope_scaling: { rope_type: 'yarn', factor: 2 } }), /rope_scaling type 'yarn' is not supported/);
  assert.throws(() => ropeInvFreq({ head_dim: 8, rope_scaling: { rope_type: 'llama3', factor: 8 } }), /needs a numeric low_freq_factor/);
  assert.throws(() => rotaryTables([1], [[0, 1], [2]]), /position row 1 has 1 entries, row 0 has 2/);
  scope(() => {
    const x = tensor(new Float32Array(2 * 3 * 1 * 4), [2, 3, 1, 4]);
    const c = tensor(new Float32Array(3 * 2), [1, 3, 2]);
    assert.throws(() => rope(x, tensor(new Float32Array(6), [1, 2, 3]), c), /rope: cos must be \[2 or 1, 3, 2\] for x \[2, 3, 1, 4\], got \[1, 2, 3\]/);
    assert.throws(() => rope(tensor(new Float32Array(12), [3, 4]), c, c), /rope: x must be \[batch, seq, heads, head_dim\], got \[3, 4\]/);
    assert.throws(() => rope(tensor(new Float32Array(9), [1, 3, 1, 3]), c, c), /rope: head_dim must be even, got 3/);
  });
});
