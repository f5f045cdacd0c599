// The copy kernel over the layouts that take different paths in the cuda kernel
// (native/cuda/kernels/copy.cu), on every backend against the reference, bit for bit:
// dense buffers; rows of contiguous elements (transposed heads, slices, strided
// outputs, broadcast rows) with 16-byte steps where every row starts on 16 bytes and
// one element at a time where not, rows cut into pieces and rows of two elements; and
// one element per thread (a broadcast last axis, a true transpose). Each layout is
// copied between the dtype pairs that have their own row code (same dtype at 4, 2 and 1
// bytes, f32 <-> bf16) and one that goes through the generic conversions. The whole
// destination buffer is compared, so a write outside the view shows up too.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { kernel } from '../../src/backend/backend.js';
import { getBackend } from '../../src/backend/registry.js';
import { tensor } from '../../src/ops/creation.js';
import { bf16BitsToF32, type DType } from '../../src/tensor/dtype.js';
import { scope, type Tensor, view } from '../../src/tensor/tensor.js';
import { randomData, testBackends, values } from '../helpers.js';

/** A view into a fresh 1-D buffer of `size` elements. */
interface Side {
  size: number;
  strides: number[];
  offset: number;
}

interface Layout {
  name: string;
  shape: number[];
  src: Side;
  dst: Side;
}

const dense = (shape: number[]): Side => {
  const strides = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
  return { size: shape.reduce((a, b) => a * b, 1), strides, offset: 0 };
};

/** [B, T, H, D] storage read as [B, H, T, D]. */
const heads = (B: number, T: number, H: number, D: number): Side => ({ size: B * T * H * D, strides: [T * H * D, D, H * D, 1], offset: 0 });

const layouts: Layout[] = [
  { name: 'dense', shape: [3, 5, 67], src: dense([3, 5, 67]), dst: dense([3, 5, 67]) },
  // attention heads read out of [B, T, H, D] (D 24), and written back into it (D 64):
  // rows 16-byte aligned on both sides
  { name: 'heads D 24', shape: [2, 3, 5, 24], src: heads(2, 5, 3, 24), dst: dense([2, 3, 5, 24]) },
  { name: 'heads D 64 back', shape: [2, 5, 4, 64], src: dense([2, 5, 4, 64]), dst: { size: 2 * 5 * 4 * 64, strides: [4 * 5 * 64, 64, 5 * 64, 1], offset: 0 } },
  // odd head dim: rows of 13, no row after the first starts on 16 bytes
  { name: 'heads D 13', shape: [3, 5, 7, 13], src: heads(3, 7, 5, 13), dst: dense([3, 5, 7, 13]) },
  // a slice of the last axis: rows of 40 elements 50 apart, starting 3 in
  { name: 'last-axis slice', shape: [4, 37, 40], src: { size: 4 * 37 * 50, strides: [37 * 50, 50, 1], offset: 3 }, dst: dense([4, 37, 40]) },
  // into rows 2..6 of a [2, 9, 64] buffer: the inner axes merge into rows of 320 on the source side only
  { name: 'into a slice', shape: [2, 5, 64], src: dense([2, 5, 64]), dst: { size: 2 * 9 * 64, strides: [9 * 64, 64, 1], offset: 2 * 64 } },
  // rows longer than a piece (4096 elements at 8 per step), 16-byte aligned, a tail of 3
  { name: 'long rows', shape: [3, 9003], src: { size: 3 * 9024, strides: [9024, 1], offset: 0 }, dst: { size: 3 * 9024 + 8, strides: [9024, 1], offset: 8 } },
  // the same rows one element out of alignment on the source side
  { name: 'long rows, unaligned', shape: [3, 9003], src: { size: 3 * 9024 + 1, strides: [9024, 1], offset: 1 }, dst: dense([3, 9003]) },
  // a long dense 1-D copy into a buffer 5 elements in: one row of many pieces where the
  // dtypes have no flat kernel
  { name: '1-D', shape: [20011], src: dense([20011]), dst: { size: 20011 + 5, strides: [1], offset: 5 } },
  // rows of two elements, and axes of size 1 with strides that do not matter
  { name: 'pairs', shape: [6, 5, 2], src: { size: 60, strides: [2, 12, 1], offset: 0 }, dst: dense([6, 5, 2]) },
  { name: 'size-1 axes', shape: [4, 1, 33, 1], src: { size: 4 * 40, strides: [40, 999, 1, 7], offset: 0 }, dst: dense([4, 1, 33, 1]) },
  // broadcast rows (stride 0 outside the row), and a broadcast last axis
  { name: 'broadcast rows', shape: [6, 24], src: { size: 24, strides: [0, 1], offset: 0 }, dst: dense([6, 24]) },
  { name: 'broadcast last axis', shape: [5, 7], src: { size: 5, strides: [1, 0], offset: 0 }, dst: dense([5, 7]) },
  // a true transpose: no axis is contiguous on both sides
  { name: 'transpose', shape: [17, 13], src: { size: 13 * 17, strides: [1, 17], offset: 0 }, dst: dense([17, 13]) },
];

const pairs: [DType, DType][] = [
  ['f32', 'f32'],
  ['bf16', 'bf16'],
  ['int8', 'int8'],
  ['f32', 'bf16'],
  ['bf16', 'f32'],
  ['f32', 'f16'],
  ['int32', 'f32'],
];

/** Values for a source buffer: bf16 halfway cases, NaN, infinities and -0 among seeded ones. */
function sourceData(n: number, dtype: DType, seed: number): number[] {
  const special = [1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 3 * 2 ** -8), NaN, Infinity, -Infinity, -0, 3.4028235e38, bf16BitsToF32(0x7f7f), 2 ** -130];
  const r = randomData(n, seed, -100, 100);
  return Array.from(r, (x, i) => {
    if (dtype === 'int8') return Math.trunc(x);
    if (dtype === 'int32') return Math.trunc(x * 1000);
    return i % 7 === 3 ? special[(i / 7) % special.length | 0] : x;
  });
}

/** The destination buffer after copying the source view into the destination view on `device`. */
function copyOn(device: string, l: Layout, from: DType, to: DType, data: number[]): Float64Array {
  return scope(() => {
    const src = tensor(data, [l.src.size], { device, dtype: from });
    const dstBuf = tensor(new Array<number>(l.dst.size).fill(-3), [l.dst.size], { device, dtype: to });
    const x: Tensor = view(src, l.shape, l.src.strides, l.src.offset);
    const out: Tensor = view(dstBuf, l.shape, l.dst.strides, l.dst.offset);
    kernel(getBackend(device), 'copy')(x, out);
    return values(dstBuf);
  });
}

test('copy: views with rows, pieces, odd sizes, broadcasts and transposes match the reference bit for bit, for each dtype pair', () => {
  for (const [n, l] of layouts.entries()) {
    for (const [from, to] of pairs) {
      const data = sourceData(l.src.size, from, 100 + n);
      const want = copyOn('reference', l, from, to, data);
      for (const device of testBackends()) {
        const got = copyOn(device, l, from, to, data);
        // deepStrictEqual: NaN equals NaN, and -0 differs from 0
        assert.deepEqual(got, want, `${device}: ${l.name}, ${from} -> ${to}`);
      }
    }
  }
});

test('copy: every layout writes exactly the destination view (the rest of the buffer keeps its value)', () => {
  // Guards the test above: a layout whose view covers its whole buffer checks less.
  for (const l of layouts) {
    const got = copyOn('reference', l, 'f32', 'f32', Array.from({ length: l.src.size }, (_, i) => i + 1));
    const touched = got.reduce((k, v) => k + (v !== -3 ? 1 : 0), 0);
    assert.equal(touched, l.shape.reduce((a, b) => a * b, 1), `${l.name}: elements written`);
  }
});
