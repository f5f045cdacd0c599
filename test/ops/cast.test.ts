// cast() and contiguous() through the copy kernel: every dtype pair against the
// reference, rounding (bf16/f16 round to nearest even, halfway cases and subnormals
// included), integer truncation and saturation, NaN, and copies from broadcast
// (stride 0) and strided views and into strided views.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { kernel } from '../../src/backend/backend.js';
import { getBackend } from '../../src/backend/registry.js';
import { full, tensor, zeros } from '../../src/ops/creation.js';
import { cast, contiguous, expand, slice, transpose } from '../../src/ops/view.js';
import { bf16BitsToF32, DTYPES, type DType, f16BitsToF32, isFloat } from '../../src/tensor/dtype.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { checkAgainstReference, values } from '../helpers.js';

const f32 = (bits: number) => new Float32Array(new Uint32Array([bits]).buffer)[0];

/** Values that probe every conversion: halfway cases, subnormals, range edges, specials. */
const PROBES = [
  0, -0, 1, -1, 1.5, -1.5, 2.5, -2.5, 0.99, -0.99, 127, 127.9, 128, -128, -128.5, -129, 255, 255.5, 256, 300, -300, 1e10, -1e10,
  NaN, Infinity, -Infinity,
  // bf16 (8 significant bits): 1 + 2^-8 is halfway between 1 and 1 + 2^-7, ties to 1; 1 + 3·2^-8 ties up to 1 + 2^-6
  1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 3 * 2 ** -8), 1 + 2 ** -8 + 2 ** -20,
  // f16 (11 significant bits): the same one step further, and the overflow edge 65520
  1 + 2 ** -11, 1 + 3 * 2 ** -11, 65504, 65519.99, 65520, -65520,
  // f16 subnormals: 2^-24 is the smallest, 2^-25 ties to 0, 3·2^-25 ties up to 2^-23
  2 ** -24, 2 ** -25, 3 * 2 ** -25, -(3 * 2 ** -25), 2 ** -14, 2 ** -14 - 2 ** -24,
  // f32 subnormals into bf16: 0x8000 ties to 0, 0x18000 ties up to 0x20000
  f32(0x00008000), f32(0x00018000), f32(0x00000001), f32(0x007fffff),
  // f32 max rounds to inf in bf16; the largest finite bf16
  3.4028235e38, bf16BitsToF32(0x7f7f),
];

/** The probes each source dtype can hold; int32 stays within 2^24 so f32 holds it exactly. */
function probesFor(dtype: DType): number[] {
  if (dtype === 'int32') return [0, 1, -1, 127, 128, -128, -129, 255, 256, -300, 65504, 65520, 16777216, -16777216, 70000];
  if (dtype === 'int8') return [0, 1, -1, 127, -128, 100, -100];
  if (dtype === 'uint8') return [0, 1, 127, 128, 200, 255];
  return PROBES;
}

test('cast: every dtype pair matches the reference exactly, NaN and signed zeros included', () => {
  for (const from of DTYPES) {
    for (const to of DTYPES) {
      const data = probesFor(from);
      const run = (device: string) => scope(() => values(cast(tensor(data, [data.length], { dtype: from, device }), to)));
      // the reference can hold -0 in an integer tensor; integers have one zero
      const want = run('reference').map((v) => (isFloat(to) ? v : v + 0));
      const got = run('cpu');
      for (let i = 0; i < data.length; i++) {
        assert.ok(Object.is(got[i], want[i]), `${from} -> ${to} of ${data[i]}: cpu ${got[i]}, reference ${want[i]}`);
      }
    }
  }
});

test('cast rounds bf16 and f16 to nearest even, with subnormals, as hand-computed', () => {
  const cases: [DType, number, number][] = [
    ['bf16', 1 + 2 ** -8, 1],
    ['bf16', 1 + 3 * 2 ** -8, 1 + 2 ** -6],
    ['bf16', 1 + 2 ** -8 + 2 ** -20, 1 + 2 ** -7],
    ['bf16', f32(0x00008000), 0],
    ['bf16', f32(0x00018000), f32(0x00020000)],
    ['bf16', 3.4028235e38, Infinity],
    ['f16', 1 + 2 ** -11, 1],
    ['f16', 1 + 3 * 2 ** -11, 1 + 2 ** -9],
    ['f16', 65519.99, 65504],
    ['f16', 65520, Infinity],
    ['f16', 2 ** -25, 0],
    ['f16', 3 * 2 ** -25, 2 ** -23],
    ['f16', -(3 * 2 ** -25), -(2 ** -23)],
    ['f16', 2 ** -14 - 2 ** -24, f16BitsToF32(0x03ff)],
    ['f16', f32(0x00000001), 0],
  ];
  scope(() => {
    for (const [dtype, x, want] of cases) {
      const got = cast(tensor([x], [1]), dtype).toArray()[0];
      assert.ok(Object.is(got, want), `f32 ${x} -> ${dtype}: ${got}, expected ${want}`);
    }
  });
});

test('cast to integers truncates toward zero, saturates, and maps NaN to 0', () => {
  const xs = [2.9, -2.9, 127.5, 128, -128.9, -129, 255.9, 256, -1, NaN, Infinity, -Infinity, 3e9, -3e9, 2147483520, -2147483648];
  const want: Record<'int8' | 'uint8' | 'int32', number[]> = {
    int8: [2, -2, 127, 127, -128, -128, 127, 127, -1, 0, 127, -128, 127, -128, 127, -128],
    uint8: [2, 0, 127, 128, 0, 0, 255, 255, 0, 0, 255, 0, 255, 0, 255, 0],
    int32: [2, -2, 127, 128, -128, -129, 255, 256, -1, 0, 2147483647, -2147483648, 2147483647, -2147483648, 2147483520, -2147483648],
  };
  for (const device of ['reference', 'cpu']) {
    scope(() => {
      for (const dtype of ['int8', 'uint8', 'int32'] as const) {
        assert.deepEqual(Array.from(cast(tensor(xs, [xs.length], { device }), dtype).toArray()), want[dtype], `${device} f32 -> ${dtype}`);
      }
    });
  }
});

test('int32 values beyond 2^24 round to nearest even in f32, and int32 copies keep every bit', () => {
  scope(() => {
    const big = [16777217, 16777219, 2147483647, -2147483647, -2147483648];
    assert.deepEqual(Array.from(cast(tensor(big, [5], { dtype: 'int32' }), 'f32').toArray()), [16777216, 16777220, 2147483648, -2147483648, -2147483648]);
    const ints = tensor(big, [5], { dtype: 'int32' });
    assert.deepEqual(Array.from(contiguous(slice(ints, 0, 0, 5, 2)).toArray()), [16777217, 2147483647, -2147483648]);
  });
});

test('fill saturates integer values like a cast does', () => {
  for (const device of ['reference', 'cpu']) {
    scope(() => {
      assert.deepEqual(Array.from(full([2], 3e9, { dtype: 'int32', device }).toArray()), [2147483647, 2147483647], device);
      assert.deepEqual(Array.from(full([2], -3e9, { dtype: 'int32', device }).toArray()), [-2147483648, -2147483648], device);
      assert.deepEqual(Array.from(full([2], 16777217, { dtype: 'int32', device }).toArray()), [16777217, 16777217], device);
      assert.deepEqual(Array.from(full([2], 300, { dtype: 'uint8', device }).toArray()), [255, 255], device);
    });
  }
});

test('copy reads broadcast (stride 0) and strided views, converting on the way', () => {
  for (const dtype of DTYPES) {
    const cp = (x: Tensor) => cast(contiguous(x), 'f32');
    const data = [1.5, -2, 3, 100];
    checkAgainstReference((x) => cp(expand(x, [3, 4])), [{ shape: [3, 1], data: data.slice(0, 3), dtype }]);
    checkAgainstReference((x) => cp(expand(x, [2, 3, 4])), [{ shape: [4], data, dtype }]);
    checkAgainstReference((x) => cp(expand(x, [2, 3])), [{ shape: [], data: [7], dtype }]);
    checkAgainstReference((x) => cast(x, 'bf16'), [{ shape: [3, 5], dtype, strided: true, data: Array.from({ length: 15 }, (_, i) => i * 7 - 50) }]);
    checkAgainstReference((x) => cast(slice(x, 1, 1, 7, 3), 'f16'), [{ shape: [4, 7], dtype, data: Array.from({ length: 28 }, (_, i) => i - 9) }]);
  }
  checkAgainstReference((x) => contiguous(transpose(x, 0, 2)), [{ shape: [3, 4, 5], strided: true }]);
});

test('copy writes through strided output views', () => {
  const run = (device: string) =>
    scope(() => {
      const out = zeros([4, 6], { device });
      const src = tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [4, 3], { device });
      // every other column of out, and the transpose of a [2, 4] block
      const cols = slice(out, 1, 1, 6, 2);
      kernel(getBackend(device), 'copy')(src, cols);
      const block = transpose(slice(out, 1, 0, 1));
      kernel(getBackend(device), 'copy')(tensor([-1, -2, -3, -4], [1, 4], { device, dtype: 'bf16' }), block);
      return Array.from(values(out));
    });
  const want = [-1, 1, 0, 2, 0, 3, -2, 4, 0, 5, 0, 6, -3, 7, 0, 8, 0, 9, -4, 10, 0, 11, 0, 12];
  assert.deepEqual(run('reference'), want);
  assert.deepEqual(run('cpu'), want);
});
