// bitsandbytes' formats: known values (the NF4 table against the normal quantiles it
// comes from, the 8-bit dynamic map against its defining formula, int8 and NF4 codes
// worked out by hand, double quantization), checkpoints built byte by byte in this file
// from the format definitions (not by finlora's writer) read back and dequantized, round
// trips through bitsandbytes' state-dict layout, and bad checkpoints failing with an
// error that names the tensor.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import { tensor } from '../../src/ops/creation.js';
import { Checkpoint } from '../../src/models/checkpoint.js';
import { bnbStateDict, checkpointSource, quantizedFormatOf, readQuantizedWeight, type TensorSource } from '../../src/quant/checkpoint.js';
import { dequantizeInt8Host, quantizeInt8Host, roundHalfEven } from '../../src/quant/int8.js';
import { blockScalesHost, dequantizeNf4Host, doubleQuantizeHost, dynamicMap, NF4_CODE, quantizeNf4Host } from '../../src/quant/nf4.js';
import { dequantize } from '../../src/quant/ops.js';
import { formatForBits, Int8Weight, Nf4Weight, quantizeInt8, quantizeNf4, type QuantizedWeight } from '../../src/quant/weight.js';
import { Rng } from '../../src/tensor/rng.js';
import { scope } from '../../src/tensor/tensor.js';
import { values } from '../helpers.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-quant-'));
process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));

const f = Math.fround;

// ------------------------------------------------------------ independent definitions

/** Acklam's rational approximation of the standard normal quantile (relative error < 1.2e-9). */
function normPpf(p: number): number {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const tail = (q: number) => (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  if (p < 0.02425) return tail(Math.sqrt(-2 * Math.log(p)));
  if (p > 1 - 0.02425) return -tail(Math.sqrt(-2 * Math.log(1 - p)));
  const q = p - 0.5, r = q * q;
  return ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q) / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

/** The dynamic map's 256 values from its definition: ±10^(i-6) · (0.1 + (k + ½)·0.9/2^i), k < 2^i, i < 7; and 0, 1. */
function dynamicMapByFormula(): number[] {
  const v: number[] = [0, 1];
  for (let i = 0; i < 7; i++) {
    for (let k = 0; k < 2 ** i; k++) {
      const m = 10 ** (i - 6) * (0.1 + ((k + 0.5) * 0.9) / 2 ** i);
      v.push(m, -m);
    }
  }
  return v.sort((x, y) => x - y);
}

// A safetensors file written here by hand: header JSON with offsets, then the raw bytes.
interface RawEntry {
  dtype: string;
  shape: number[];
  bytes: Uint8Array;
}

function writeRaw(name: string, entries: Record<string, RawEntry>): string {
  const header: Record<string, unknown> = {};
  let pos = 0;
  for (const [k, e] of Object.entries(entries)) {
    header[k] = { dtype: e.dtype, shape: e.shape, data_offsets: [pos, pos + e.bytes.length] };
    pos += e.bytes.length;
  }
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const file = path.join(dir, name);
  fs.writeFileSync(file, Buffer.concat([len, json, ...Object.values(entries).map((e) => Buffer.from(e.bytes))]));
  return file;
}

const f32Bytes = (v: number[]) => new Uint8Array(Float32Array.from(v).buffer);
const u8 = (v: ArrayLike<number>) => Uint8Array.from(v);
const i8 = (v: number[]) => new Uint8Array(Int8Array.from(v).buffer);
const utf8 = (s: string) => new TextEncoder().encode(s);

function withFile<T>(file: string, fn: (src: SafetensorsFile) => T): T {
  const src = SafetensorsFile.open(file);
  try {
    return fn(src);
  } finally {
    src.close();
  }
}

function read(file: string, module: string, device = 'cpu'): QuantizedWeight | null {
  return withFile(file, (src) => readQuantizedWeight(src, module, { device }));
}

function readInt8(file: string, module: string, device: string): Int8Weight {
  const w = read(file, module, device);
  assert.ok(w instanceof Int8Weight, `${module} did not read as int8`);
  return w;
}

function readNf4(file: string, module: string, device: string): Nf4Weight {
  const w = read(file, module, device);
  assert.ok(w instanceof Nf4Weight, `${module} did not read as nf4`);
  return w;
}

function dequantized(w: QuantizedWeight): number[] {
  return scope(() => Array.from(values(dequantize(w))));
}

// ------------------------------------------------------------ known values

test('the NF4 table is the QLoRA normal-quantile construction, normalised to [-1, 1]', () => {
  // create_normal_map(offset=0.9677083): ppf at 8 probabilities from offset towards 0.5
  // for the positive side, 7 for the negative side, and 0.
  const linspace = (a: number, b: number, n: number) => Array.from({ length: n }, (_, i) => f(a + ((b - a) * i) / (n - 1)));
  const pos = linspace(0.9677083, 0.5, 9).slice(0, -1).map(normPpf);
  const neg = linspace(0.9677083, 0.5, 8).slice(0, -1).map((p) => -normPpf(p));
  const v = [...pos, 0, ...neg].sort((x, y) => x - y);
  const max = Math.max(...v);
  assert.equal(NF4_CODE.length, 16);
  v.forEach((x, i) => assert.ok(Math.abs(x / max - NF4_CODE[i]) < 2e-6, `entry ${i}: ${NF4_CODE[i]} vs ${x / max}`));
  assert.equal(NF4_CODE[0], -1);
  assert.equal(NF4_CODE[7], 0);
  assert.equal(NF4_CODE[15], 1);
  assert.equal(NF4_CODE[8], f(0.07958029955625534));
});

test('the 8-bit dynamic map: 256 sorted values from -0.99296875 to 1, one zero, as its formula gives', () => {
  const map = dynamicMap();
  const formula = dynamicMapByFormula();
  assert.equal(map.length, 256);
  for (let i = 1; i < 256; i++) assert.ok(map[i] > map[i - 1], `not strictly increasing at ${i}`);
  formula.forEach((x, i) => assert.ok(Math.abs(map[i] - x) <= 1e-7 * Math.max(1, Math.abs(x)) + 1e-12, `entry ${i}: ${map[i]} vs ${x}`));
  assert.ok(Math.abs(map[0] + 0.99296875) < 1e-7);
  assert.equal(map[127], 0);
  assert.ok(Math.abs(map[128] - 5.5e-7) < 1e-12);
  assert.ok(Math.abs(map[254] - 0.99296875) < 1e-7);
  assert.equal(map[255], 1);
  assert.equal(map.filter((x) => x < 0).length, 127);
});

test('int8: codes worked out by hand (f16 rounding first, round half to even), and W ≈ CB·SCB/127', () => {
  // row 0: absmax 2, scale 63.5: 0.5 -> 31.75 -> 32; -1 -> -63.5 -> -64 (tie, even); 2 -> 127; 0.25 -> 15.875 -> 16
  // row 1: absmax 127, scale 1: 62.50001 rounds to 62.5 in f16, a tie -> 62 (63 without the f16 step);
  //        1.5 -> 2 (tie, even); -127 -> -127
  // row 2: all zero -> SCB 0, codes 0
  const w = [0.5, -1, 2, 0.25, 127, 62.50001, 1.5, -127, 0, 0, 0, 0];
  const expectedCb = [32, -64, 127, 16, 127, 62, 2, -127, 0, 0, 0, 0];
  const expectedScb = [2, 127, 0];
  const h = quantizeInt8Host(w, 3, 4);
  assert.deepEqual(Array.from(h.cb), expectedCb);
  assert.deepEqual(Array.from(h.scb), expectedScb);
  for (const device of ['cpu', 'reference']) {
    scope(() => {
      const q = quantizeInt8(tensor(w, [3, 4], { device }));
      assert.deepEqual(Array.from(values(q.cb)), expectedCb, device);
      assert.deepEqual(Array.from(values(q.scb)), expectedScb, device);
      const d = dequantized(q);
      expectedCb.forEach((c, i) => assert.ok(Math.abs(d[i] - (c * expectedScb[Math.floor(i / 4)]) / 127) < 1e-6, `${device} element ${i}`));
      q.dispose();
    });
  }
  assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5, 2.4, 2.6].map(roundHalfEven), [0, 2, 2, 0, -2, 2, 3]);
});

test('nf4: codes worked out by hand — table multiples, midpoint ties to the lower code, high nibble first, odd padding', () => {
  // One block, absmax 2 (the last value): scaled = x / 2 exactly.
  const mid78 = f(f(NF4_CODE[7] + NF4_CODE[8]) / 2); // the float32 bound bucketize uses
  const x = [NF4_CODE[3] * 2, NF4_CODE[12] * 2, mid78 * 2, Math.fround(mid78 * 2 + 1e-6), -2, 0.001, 2];
  const h = quantizeNf4Host(x, [1, 7], { doubleQuant: false });
  assert.deepEqual(Array.from(h.absmax), [2]);
  // codes 3, 12, 7 (tie goes down), 8, 0, 7, 15, padded with 7 (the code of 0)
  assert.deepEqual(Array.from(h.packed), [(3 << 4) | 12, (7 << 4) | 8, (0 << 4) | 7, (15 << 4) | 7]);
  const d = dequantizeNf4Host(h);
  assert.deepEqual(Array.from(d), [3, 12, 7, 8, 0, 7, 15].map((c) => f(NF4_CODE[c] * 2)));
  for (const device of ['cpu', 'reference']) {
    scope(() => {
      const q = quantizeNf4(tensor(x, [1, 7], { device }), { doubleQuant: false });
      assert.deepEqual(Array.from(values(q.packed)), Array.from(h.packed), device);
      q.dispose();
    });
  }
});

test('nf4 double quantization: offset = mean absmax, codes into the dynamic map in blocks of 256, scales undone exactly', () => {
  const absmax = Float32Array.from([1, 2, 3, 6]);
  const dq = doubleQuantizeHost(absmax);
  assert.equal(dq.nested.offset, 3);
  assert.equal(dq.nested.blocksize, 256);
  assert.deepEqual(Array.from(dq.nested.absmax), [3]); // max |absmax - 3|
  // centred / 3 = [-2/3, -1/3, 0, 1]: the nearest dynamic-map entries by the formula
  const formula = dynamicMapByFormula();
  const nearest = (v: number) => formula.reduce((best, m, i) => (Math.abs(m - v) < Math.abs(formula[best] - v) ? i : best), 0);
  assert.deepEqual(Array.from(dq.q), [-2 / 3, -1 / 3, 0, 1].map(nearest));
  assert.deepEqual([dq.q[2], dq.q[3]], [127, 255]);
  const scales = blockScalesHost({ absmax: dq.q, nested: dq.nested });
  [-2 / 3, -1 / 3, 0, 1].forEach((v, i) => assert.ok(Math.abs(scales[i] - (formula[nearest(v)] * 3 + 3)) < 1e-6, `block ${i}`));
  assert.equal(scales[3], 6);
  assert.equal(scales[2], 3);
});

// ------------------------------------------------------------ checkpoints built by hand

test('reads a hand-built int8 checkpoint (weight + SCB + weight_format) and dequantizes CB·SCB/127', () => {
  const cb = [127, -64, 0, 1, 5, -127, 127, 0, -1, 2, -3, 4];
  const scb = [0.5, 2, 0.25];
  const file = writeRaw('int8.safetensors', {
    'model.layers.0.self_attn.q_proj.weight': { dtype: 'I8', shape: [3, 4], bytes: i8(cb) },
    'model.layers.0.self_attn.q_proj.SCB': { dtype: 'F32', shape: [3], bytes: f32Bytes(scb) },
    'model.layers.0.self_attn.q_proj.weight_format': { dtype: 'U8', shape: [], bytes: u8([0]) },
    'model.layers.0.self_attn.k_proj.weight': { dtype: 'BF16', shape: [1, 2], bytes: u8([0, 0x3f, 0, 0x40]) },
  });
  withFile(file, (src) => {
    assert.equal(quantizedFormatOf(src, 'model.layers.0.self_attn.q_proj'), 'int8');
    assert.equal(quantizedFormatOf(src, 'model.layers.0.self_attn.k_proj'), null);
  });
  for (const device of ['cpu', 'reference']) {
    const w = readInt8(file, 'model.layers.0.self_attn.q_proj', device);
    assert.equal(w.format, 'int8');
    assert.deepEqual(w.shape, [3, 4]);
    const d = dequantized(w);
    cb.forEach((c, i) => assert.ok(Math.abs(d[i] - (c * scb[Math.floor(i / 4)]) / 127) < 1e-7, `${device} element ${i}`));
    w.dispose();
  }
  assert.equal(read(file, 'model.layers.0.self_attn.k_proj'), null);
});

const NESTED_STATE = '{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [2, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.25}';

function nestedEntries(): Record<string, RawEntry> {
  // Element i has code i mod 16 (high nibble first); block 0's absmax code 255 (the map's
  // 1.0), block 1's code 127 (its 0): absmax = [1·0.5 + 0.25, 0·0.5 + 0.25].
  const m = 'model.layers.1.mlp.up_proj.weight';
  return {
    [m]: { dtype: 'U8', shape: [64, 1], bytes: u8(Array.from({ length: 64 }, (_, j) => (((2 * j) % 16) << 4) | ((2 * j + 1) % 16))) },
    [`${m}.absmax`]: { dtype: 'U8', shape: [2], bytes: u8([255, 127]) },
    [`${m}.quant_map`]: { dtype: 'F32', shape: [16], bytes: f32Bytes(Array.from(NF4_CODE)) },
    [`${m}.nested_absmax`]: { dtype: 'F32', shape: [1], bytes: f32Bytes([0.5]) },
    [`${m}.nested_quant_map`]: { dtype: 'F32', shape: [256], bytes: f32Bytes(dynamicMapByFormula()) },
    [`${m}.quant_state.bitsandbytes__nf4`]: { dtype: 'U8', shape: [NESTED_STATE.length], bytes: utf8(NESTED_STATE) },
  };
}

test('reads a hand-built double-quantized NF4 checkpoint and dequantizes code[nibble] · (map[q]·absmax2 + offset)', () => {
  const file = writeRaw('nf4-nested.safetensors', nestedEntries());
  const expected = Array.from({ length: 128 }, (_, i) => f(NF4_CODE[i % 16] * (i < 64 ? 0.75 : 0.25)));
  for (const device of ['cpu', 'reference']) {
    const w = readNf4(file, 'model.layers.1.mlp.up_proj', device);
    assert.equal(w.format, 'nf4');
    assert.deepEqual(w.shape, [2, 64]);
    assert.equal(w.dtype, 'bf16');
    assert.equal(w.blocksize, 64);
    assert.equal(w.nested?.offset, 0.25);
    assert.deepEqual(dequantized(w), expected, device);
    w.dispose();
  }
});

test('reads quantized weights through a sharded checkpoint (models/checkpoint.ts) with checkpointSource', () => {
  const sub = fs.mkdtempSync(path.join(dir, 'sharded-'));
  const entries = nestedEntries();
  const names = Object.keys(entries);
  const half = Math.ceil(names.length / 2);
  const shards = [names.slice(0, half), names.slice(half)];
  const weightMap: Record<string, string> = {};
  shards.forEach((part, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    writeRaw(path.join(path.basename(sub), file), Object.fromEntries(part.map((n) => [n, entries[n]])));
    for (const n of part) weightMap[n] = file;
  });
  fs.writeFileSync(path.join(sub, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  const ckpt = Checkpoint.open(sub);
  const src = checkpointSource(ckpt);
  try {
    const w = readQuantizedWeight(src, 'model.layers.1.mlp.up_proj')!;
    assert.deepEqual(dequantized(w), Array.from({ length: 128 }, (_, i) => f(NF4_CODE[i % 16] * (i < 64 ? 0.75 : 0.25))));
    w.dispose();
  } finally {
    src.close();
    ckpt.close();
  }
});

test('reads a hand-built plain NF4 checkpoint with an odd shape, a partial block and bf16 quant_storage', () => {
  // [3, 5]: 15 codes in 8 bytes (the 16th nibble is padding), one partial block of absmax 2.
  const codes = [0, 15, 7, 8, 1, 14, 2, 13, 3, 12, 4, 11, 5, 10, 6];
  const packed = Array.from({ length: 8 }, (_, j) => (codes[2 * j] << 4) | (codes[2 * j + 1] ?? 7));
  const state = '{"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [3, 5]}';
  const m = 'lm_head.weight';
  const file = writeRaw('nf4-plain.safetensors', {
    [m]: { dtype: 'BF16', shape: [4, 1], bytes: u8(packed) },
    [`${m}.absmax`]: { dtype: 'F32', shape: [1], bytes: f32Bytes([2]) },
    [`${m}.quant_map`]: { dtype: 'F32', shape: [16], bytes: f32Bytes(Array.from(NF4_CODE)) },
    [`${m}.quant_state.bitsandbytes__nf4`]: { dtype: 'U8', shape: [state.length], bytes: utf8(state) },
  });
  for (const device of ['cpu', 'reference']) {
    const w = readNf4(file, 'lm_head', device);
    assert.equal(w.nested, null);
    assert.equal(w.dtype, 'f16');
    assert.deepEqual(dequantized(w), codes.map((c) => f(NF4_CODE[c] * 2)), device);
    w.dispose();
  }
});

// ------------------------------------------------------------ round trips

test('round trip: quantize, write in bitsandbytes layout, read back — identical bytes and values; the packed JSON is json.dumps-shaped', () => {
  const rng = new Rng(3);
  const data = Float32Array.from({ length: 40 * 72 }, () => rng.normal() * 0.02);
  scope(() => {
    const w = tensor(data, [40, 72], { dtype: 'bf16' });
    const k = quantizeNf4(w);
    const made: [string, QuantizedWeight][] = [
      ['a.q_proj', quantizeInt8(w)],
      ['a.k_proj', k],
      ['a.v_proj', quantizeNf4(w, { doubleQuant: false, blocksize: 128 })],
    ];
    const file = path.join(dir, 'roundtrip.safetensors');
    writeSafetensors(file, Object.assign({}, ...made.map(([m, q]) => bnbStateDict(m, q))));
    withFile(file, (src) => {
      const state = new TextDecoder().decode(src.readBytes('a.k_proj.weight.quant_state.bitsandbytes__nf4'));
      assert.equal(state, `{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [40, 72], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": ${k.nested!.offset}}`);
      assert.deepEqual(src.info('a.k_proj.weight').shape, [40 * 36, 1]);
      assert.equal(src.info('a.q_proj.weight_format').format, 'U8');
    });
    for (const [m, q] of made) {
      const back = read(file, m)!;
      assert.equal(back.format, q.format);
      assert.deepEqual(back.shape, q.shape);
      const a = q.tensors().map(values), b = back.tensors().map(values);
      assert.equal(a.length, b.length);
      a.forEach((x, i) => assert.deepEqual(Array.from(b[i]), Array.from(x), `${m} tensor ${i}`));
      assert.deepEqual(dequantized(back), dequantized(q));
      back.dispose();
      q.dispose();
    }
  });
});

test('round trip: host quantize then dequantize stays within half a quantization step', () => {
  const rng = new Rng(5);
  const rows = 9, cols = 130;
  const data = Float32Array.from({ length: rows * cols }, () => rng.normal());
  const h = quantizeInt8Host(data, rows, cols);
  const d8 = dequantizeInt8Host(h);
  for (let i = 0; i < data.length; i++) {
    const s = h.scb[Math.floor(i / cols)];
    // half a step (s/254) plus the f16 rounding done before quantizing
    assert.ok(Math.abs(d8[i] - data[i]) <= s / 254 + Math.abs(data[i]) * 2 ** -11 + 1e-7, `int8 element ${i}`);
  }
  const n = quantizeNf4Host(data, [rows, cols], { doubleQuant: false });
  const d4 = dequantizeNf4Host(n);
  const halfGap = Math.max(...Array.from({ length: 15 }, (_, i) => NF4_CODE[i + 1] - NF4_CODE[i])) / 2;
  for (let i = 0; i < data.length; i++) {
    const a = (n.absmax as Float32Array)[Math.floor(i / 64)];
    assert.ok(Math.abs(d4[i] - data[i]) <= halfGap * a * (1 + 1e-6), `nf4 element ${i}`);
  }
  assert.equal(formatForBits(8), 'int8');
  assert.equal(formatForBits(4), 'nf4');
  assert.throws(() => formatForBits(2), /quant_bits must be 8 or 4/);
});

// ------------------------------------------------------------ bad input

function throwsNaming(fn: () => unknown, tensorName: string, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof Error);
    assert.ok(e.message.includes(JSON.stringify(tensorName)), `"${e.message}" does not name ${tensorName}`);
    assert.match(e.message, pattern);
    return true;
  });
}

function withEntries(name: string, edit: (e: Record<string, RawEntry>) => void): SafetensorsFile {
  const e = nestedEntries();
  edit(e);
  return SafetensorsFile.open(writeRaw(name, e));
}

test('bad quantized checkpoints fail with an error naming the tensor', () => {
  const M = 'model.layers.1.mlp.up_proj';
  const W = `${M}.weight`;
  const state = (s: string): RawEntry => ({ dtype: 'U8', shape: [utf8(s).length], bytes: utf8(s) });
  const cases: [string, (e: Record<string, RawEntry>) => void, string, RegExp][] = [
    ['missing absmax', (e) => delete e[`${W}.absmax`], `${W}.absmax`, /missing/],
    ['missing nested absmax', (e) => delete e[`${W}.nested_absmax`], `${W}.nested_absmax`, /missing/],
    ['absmax count does not match the block size', (e) => (e[`${W}.absmax`] = { dtype: 'U8', shape: [3], bytes: u8([1, 2, 3]) }), `${W}.absmax`, /holds 3 scales.*blocksize 64.*2 blocks/],
    ['a block size bitsandbytes does not have', (e) => (e[`${W}.quant_state.bitsandbytes__nf4`] = state(NESTED_STATE.replace('"blocksize": 64', '"blocksize": 48'))), `${W}.quant_state.bitsandbytes__nf4`, /blocksize 48 is not one of/],
    ['fp4', (e) => (e[`${W}.quant_state.bitsandbytes__nf4`] = state(NESTED_STATE.replace('"nf4"', '"fp4"'))), `${W}.quant_state.bitsandbytes__nf4`, /quant_type "fp4" is not supported/],
    ['packed bytes do not fit the shape', (e) => (e[`${W}.quant_state.bitsandbytes__nf4`] = state(NESTED_STATE.replace('[2, 64]', '[2, 66]'))), W, /holds 64 bytes.*packs into 66/],
    ['not the NF4 table', (e) => (e[`${W}.quant_map`] = { dtype: 'F32', shape: [16], bytes: f32Bytes(Array.from({ length: 16 }, (_, i) => i / 15)) }), `${W}.quant_map`, /not the NF4 table/],
    ['nested absmax of the wrong size', (e) => (e[`${W}.nested_absmax`] = { dtype: 'F32', shape: [2], bytes: f32Bytes([1, 1]) }), `${W}.nested_absmax`, /holds 2 scales/],
    ['float absmax with a nested state', (e) => (e[`${W}.absmax`] = { dtype: 'F32', shape: [2], bytes: f32Bytes([1, 1]) }), `${W}.absmax`, /must be U8/],
    ['nested tensors without a nested state', (e) => (e[`${W}.quant_state.bitsandbytes__nf4`] = state('{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [2, 64]}')), `${W}.quant_state.bitsandbytes__nf4`, /nested_absmax is present/],
    ['a state that is not JSON', (e) => (e[`${W}.quant_state.bitsandbytes__nf4`] = state('{"quant_type": nf4')), `${W}.quant_state.bitsandbytes__nf4`, /not UTF-8 JSON/],
    ['a dtype torch does not name', (e) => (e[`${W}.quant_state.bitsandbytes__nf4`] = state(NESTED_STATE.replace('bfloat16', 'float8'))), `${W}.quant_state.bitsandbytes__nf4`, /dtype "float8"/],
    ['no quant state', (e) => delete e[`${W}.quant_state.bitsandbytes__nf4`], `${W}.quant_state.bitsandbytes__nf4`, /missing/],
  ];
  for (const [what, edit, tensorName, pattern] of cases) {
    const src = withEntries('bad.safetensors', edit);
    try {
      throwsNaming(() => readQuantizedWeight(src, M), tensorName, pattern);
    } catch (e) {
      throw new Error(`${what}: ${e instanceof Error ? e.message : String(e)}`);
    } finally {
      src.close();
    }
  }
  withFile(writeRaw('shape.safetensors', nestedEntries()), (src) =>
    throwsNaming(() => readQuantizedWeight(src, M, { shape: [64, 2] }), `${W}.quant_state.bitsandbytes__nf4`, /does not match \[64, 2\]/));

  const Q = 'q_proj';
  const int8Cases: [string, Record<string, RawEntry>, string, RegExp][] = [
    ['missing SCB', { [`${Q}.weight`]: { dtype: 'I8', shape: [2, 2], bytes: i8([1, 2, 3, 4]) }, [`${Q}.weight_format`]: { dtype: 'U8', shape: [], bytes: u8([0]) } }, `${Q}.SCB`, /missing/],
    ['SCB of the wrong size', { [`${Q}.weight`]: { dtype: 'I8', shape: [2, 2], bytes: i8([1, 2, 3, 4]) }, [`${Q}.SCB`]: { dtype: 'F32', shape: [3], bytes: f32Bytes([1, 1, 1]) } }, `${Q}.SCB`, /must hold 2 values/],
    ['a negative row absmax', { [`${Q}.weight`]: { dtype: 'I8', shape: [2, 2], bytes: i8([1, 2, 3, 4]) }, [`${Q}.SCB`]: { dtype: 'F32', shape: [2], bytes: f32Bytes([1, -1]) } }, `${Q}.SCB`, /row 1 has absmax -1/],
    ['a column layout', { [`${Q}.weight`]: { dtype: 'I8', shape: [2, 2], bytes: i8([1, 2, 3, 4]) }, [`${Q}.SCB`]: { dtype: 'F32', shape: [2], bytes: f32Bytes([1, 1]) }, [`${Q}.weight_format`]: { dtype: 'U8', shape: [], bytes: u8([2]) } }, `${Q}.weight_format`, /layout 2 \(col_turing\) is not supported/],
    ['SCB beside a float weight', { [`${Q}.weight`]: { dtype: 'F32', shape: [1, 2], bytes: f32Bytes([1, 2]) }, [`${Q}.SCB`]: { dtype: 'F32', shape: [1], bytes: f32Bytes([1]) } }, `${Q}.weight`, /must be I8/],
  ];
  for (const [what, entries, tensorName, pattern] of int8Cases) {
    withFile(writeRaw('bad8.safetensors', entries), (src: TensorSource) => {
      try {
        throwsNaming(() => readQuantizedWeight(src, Q), tensorName, pattern);
      } catch (e) {
        throw new Error(`${what}: ${e instanceof Error ? e.message : String(e)}`);
      }
    });
  }
});

test('quantizing refuses block sizes bitsandbytes does not have, non-float and non-matrix weights', () => {
  scope(() => {
    const w = tensor(new Float32Array(12), [3, 4]);
    assert.throws(() => quantizeNf4(w, { blocksize: 48 }), /block size 48 is not one of bitsandbytes' 4-bit block sizes/);
    assert.throws(() => quantizeInt8(tensor(new Int32Array(4), [2, 2], { dtype: 'int32' })), /can quantize f32, bf16 or f16, got int32/);
    assert.throws(() => quantizeNf4(tensor(new Float32Array(4), [4])), /a Linear weight is \[out, in\]/);
  });
});
