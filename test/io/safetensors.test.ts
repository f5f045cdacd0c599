// safetensors: round trips for every dtype, a file assembled byte by byte, header
// validation (hand-made lying headers and a fuzz of flipped/truncated bytes), and the
// writer's atomicity.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { type HostTensor, SafetensorsError, SafetensorsFile, withSafetensors, writeSafetensors } from '../../src/io/safetensors.js';
import { tensor } from '../../src/ops/creation.js';
import { transpose } from '../../src/ops/view.js';
import { DTYPES, roundTo } from '../../src/tensor/dtype.js';
import { Rng } from '../../src/tensor/rng.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, randomData } from '../helpers.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-st-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Builds a file from a header object (serialised as given) and a data section. */
function handMade(name: string, header: unknown, data: Uint8Array | number[], headerText?: string): string {
  const json = Buffer.from(headerText ?? JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const file = path.join(dir, name);
  fs.writeFileSync(file, Buffer.concat([len, json, Buffer.from(data)]));
  return file;
}

/** Opens the file and reads every tensor it lists. */
function readAll(file: string): void {
  withSafetensors(file, (f) => {
    for (const n of f.names()) if (f.info(n).dtype !== null) f.read(n);
  });
}

function throwsNaming(fn: () => void, file: string, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof SafetensorsError, `expected a SafetensorsError, got ${String(e)}`);
    assert.ok(e.message.includes(file), `message does not name the file: ${e.message}`);
    assert.match(e.message, pattern);
    assert.ok(!e.message.includes('\n'), 'message spans lines');
    return true;
  });
}

test('every dtype round-trips through writer and reader, from tensors and from host data', () => {
  scope(() => {
    const file = path.join(dir, 'roundtrip.safetensors');
    const values: Record<string, number[]> = {};
    const tensors: Record<string, Tensor | HostTensor> = {};
    DTYPES.forEach((dtype, i) => {
      const raw = Array.from(randomData(7 * 3, 10 + i, -300, 300));
      const v = raw.map((x) => roundTo(dtype, x));
      values[`t_${dtype}`] = v;
      values[`h_${dtype}`] = v;
      tensors[`t_${dtype}`] = tensor(v, [7, 3], { dtype });
      tensors[`h_${dtype}`] = { dtype, shape: [7, 3], data: v };
    });
    // a strided view and empty / scalar tensors
    values.strided = [1, 4, 2, 5, 3, 6];
    tensors.strided = transpose(tensor([1, 2, 3, 4, 5, 6], [2, 3]));
    values.empty = [];
    tensors.empty = { dtype: 'bf16', shape: [0, 4], data: [] };
    values.scalar = [2.5];
    tensors.scalar = tensor([2.5], []);
    writeSafetensors(file, tensors, { format: 'pt', note: 'ünïcode ✓' });

    withSafetensors(file, (f) => {
      assert.deepEqual(f.names(), Object.keys(tensors).sort());
      assert.deepEqual({ ...f.metadata }, { format: 'pt', note: 'ünïcode ✓' });
      for (const dtype of DTYPES) {
        for (const prefix of ['t_', 'h_']) {
          const name = prefix + dtype;
          const info = f.info(name);
          assert.equal(info.dtype, dtype);
          assert.deepEqual(info.shape, [7, 3]);
          assert.deepEqual(Array.from(f.read(name)), values[name], name);
          const t = f.tensor(name, { device: 'cpu' });
          assert.equal(t.dtype, dtype);
          assert.deepEqual(Array.from(t.toArray()), values[name], `${name} as a tensor`);
        }
      }
      assert.deepEqual(Array.from(f.read('strided')), values.strided);
      assert.deepEqual(f.info('empty').shape, [0, 4]);
      assert.equal(f.read('empty').length, 0);
      assert.deepEqual(f.info('scalar').shape, []);
      assert.deepEqual(Array.from(f.read('scalar')), [2.5]);
      // loading with a dtype converts
      const asF32 = f.tensor('t_bf16', { dtype: 'f32', device: 'reference' });
      assert.equal(asF32.dtype, 'f32');
      assertClose(asF32.toArray(), values.t_bf16);
    });
  });
});

test('the writer pads the header with spaces to 8 bytes and aligns every tensor', () => {
  const file = path.join(dir, 'layout.safetensors');
  writeSafetensors(file, {
    b: { dtype: 'uint8', shape: [3], data: [1, 2, 3] },
    a: { dtype: 'bf16', shape: [3], data: [1, 2, 3] },
    c: { dtype: 'f32', shape: [2], data: [1, 2] },
  });
  const bytes = fs.readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  assert.equal(n % 8, 0);
  const text = bytes.subarray(8, 8 + n).toString('utf8');
  assert.match(text, /^\{.*\} *$/);
  const header = JSON.parse(text);
  assert.deepEqual(Object.keys(header), ['a', 'b', 'c']);
  // f32 first, then bf16, then u8: each offset is a multiple of its element size
  assert.deepEqual(header.c.data_offsets, [0, 8]);
  assert.deepEqual(header.a.data_offsets, [8, 14]);
  assert.deepEqual(header.b.data_offsets, [14, 17]);
  assert.equal(bytes.length, 8 + n + 17);
});

test('reads a file assembled byte by byte', () => {
  // f32 [2]: 1.0, -2.0; BF16 [3]: 1.0, -0.5, 3.0; I32 [1]: -7; U8 [2]: 200, 1; F64 [1]: 1.5
  const data = [
    0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0, // f32
    0x80, 0x3f, 0x00, 0xbf, 0x40, 0x40, // bf16
    0xf9, 0xff, 0xff, 0xff, // i32 -7
    0xc8, 0x01, // u8
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf8, 0x3f, // f64 1.5
    0x00, 0x3c, // f16 1.0
    0xff, // i8 -1
  ];
  const header =
    '{"__metadata__":{"format":"pt"},' +
    '"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
    '"h":{"dtype":"BF16","shape":[1,3],"data_offsets":[8,14]},' +
    '"i":{"dtype":"I32","shape":[],"data_offsets":[14,18]},' +
    '"u":{"dtype":"U8","shape":[2],"data_offsets":[18,20]},' +
    '"d":{"dtype":"F64","shape":[1],"data_offsets":[20,28]},' +
    '"f":{"dtype":"F16","shape":[1],"data_offsets":[28,30]},' +
    '"s":{"dtype":"I8","shape":[1],"data_offsets":[30,31]}}   ';
  const file = handMade('hand.safetensors', null, data, header);
  withSafetensors(file, (f) => {
    assert.deepEqual(f.names(), ['d', 'f', 'h', 'i', 's', 'u', 'w']);
    assert.deepEqual({ ...f.metadata }, { format: 'pt' });
    assert.deepEqual(Array.from(f.read('w')), [1, -2]);
    assert.deepEqual(Array.from(f.read('h')), [1, -0.5, 3]);
    assert.deepEqual(f.info('h').shape, [1, 3]);
    assert.deepEqual(Array.from(f.read('i')), [-7]);
    assert.deepEqual(Array.from(f.read('u')), [200, 1]);
    assert.deepEqual(Array.from(f.read('f')), [1]);
    assert.deepEqual(Array.from(f.read('s')), [-1]);
    const d = f.info('d');
    assert.equal(d.format, 'F64');
    assert.equal(d.dtype, null);
    assert.equal(new DataView(f.readBytes('d').buffer).getFloat64(0, true), 1.5);
    throwsNaming(() => f.read('d'), file, /tensor "d": dtype F64 is not supported/);
    throwsNaming(() => f.tensor('d'), file, /tensor "d": dtype F64/);
    throwsNaming(() => f.read('missing'), file, /no tensor "missing" \(available: "d", "f", "h", "i", "s" and 2 more\)/);
  });
});

const goodEntry = { dtype: 'F32', shape: [2], data_offsets: [0, 8] };
const eight = [0, 0, 128, 63, 0, 0, 0, 64];

test('lying and malformed headers fail with a message naming the file and the tensor', () => {
  const cases: [string, unknown, number[], RegExp, string?][] = [
    ['past-end', { w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, eight, /tensor "w": "data_offsets" \[0, 16\] run past the end of the file/],
    ['overlap', { a: goodEntry, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, eight, /tensor "b": bytes \[4, 8\) overlap tensor "a"/],
    ['hole', { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'U8', shape: [2], data_offsets: [6, 8] } }, eight, /tensor "b": bytes \[4, 6\) of the data section belong to no tensor/],
    ['trailing', { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, eight, /4 bytes after the last tensor's data belong to no tensor/],
    ['size-mismatch', { w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, eight, /tensor "w": "data_offsets" \[0, 8\] hold 8 bytes, but shape \[3\] of F32 needs 12/],
    ['bf16-size', { w: { dtype: 'BF16', shape: [2], data_offsets: [0, 8] } }, eight, /needs 4/],
    ['unknown-dtype', { w: { dtype: 'F31', shape: [2], data_offsets: [0, 8] } }, eight, /tensor "w": unknown dtype "F31"/],
    ['no-dtype', { w: { shape: [2], data_offsets: [0, 8] } }, eight, /tensor "w": missing "dtype"/],
    ['no-shape', { w: { dtype: 'F32', data_offsets: [0, 8] } }, eight, /tensor "w": missing "shape"/],
    ['no-offsets', { w: { dtype: 'F32', shape: [2] } }, eight, /tensor "w": missing "data_offsets"/],
    ['dtype-type', { w: { dtype: 4, shape: [2], data_offsets: [0, 8] } }, eight, /"dtype" is not a string/],
    ['shape-type', { w: { dtype: 'F32', shape: '2', data_offsets: [0, 8] } }, eight, /"shape" is not an array/],
    ['negative-dim', { w: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }, eight, /tensor "w": "shape" \[-2\] has a dimension that is not a non-negative integer/],
    ['fractional-dim', { w: { dtype: 'F32', shape: [1.5], data_offsets: [0, 8] } }, eight, /not a non-negative integer/],
    ['string-dim', { w: { dtype: 'F32', shape: ['2'], data_offsets: [0, 8] } }, eight, /not a non-negative integer/],
    ['offsets-type', { w: { dtype: 'F32', shape: [2], data_offsets: '0,8' } }, eight, /"data_offsets" is not an array of two offsets/],
    ['offsets-len', { w: { dtype: 'F32', shape: [2], data_offsets: [0, 4, 8] } }, eight, /not an array of two offsets/],
    ['offsets-negative', { w: { dtype: 'F32', shape: [2], data_offsets: [-8, 0] } }, eight, /are not non-negative integers/],
    ['offsets-backwards', { w: { dtype: 'F32', shape: [0], data_offsets: [8, 0] } }, eight, /end before they begin/],
    ['huge-shape', { w: { dtype: 'F32', shape: [1e9, 1e9], data_offsets: [0, 8] } }, eight, /shape \[1000000000, 1000000000\] is too large/],
    ['entry-type', { w: [1, 2] }, eight, /tensor "w": entry is not an object/],
    ['metadata-type', { __metadata__: 'x', w: goodEntry }, eight, /"__metadata__" must be an object of strings/],
    ['metadata-value', { __metadata__: { a: 1 }, w: goodEntry }, eight, /"__metadata__" value for "a" is not a string/],
    ['not-object', null, eight, /the header does not start with a JSON object/, '[1, 2, 3]'],
    ['not-json', null, eight, /the header is not valid JSON/, '{"w": '],
    ['newline-name', { 'a\nb': { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, eight, /tensor "a\\nb"/],
  ];
  for (const [name, header, data, pattern, text] of cases) {
    const file = handMade(`${name}.safetensors`, header, data, text);
    throwsNaming(() => SafetensorsFile.open(file), file, pattern);
  }
});

test('absurd header lengths, short files and non-safetensors files are rejected', () => {
  const write = (name: string, bytes: Buffer) => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, bytes);
    return file;
  };
  const huge = Buffer.alloc(16);
  huge.writeBigUInt64LE(0xffffffffffffffffn);
  let file = write('huge-len.safetensors', huge);
  throwsNaming(() => SafetensorsFile.open(file), file, /header length 18446744073709551615 exceeds the 8 bytes after it/);

  // a header length within the file but above the reference's 100 MB cap (sparse file)
  file = path.join(dir, 'capped.safetensors');
  const fd = fs.openSync(file, 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(100_000_001n);
  fs.writeSync(fd, len);
  fs.ftruncateSync(fd, 8 + 100_000_008);
  fs.closeSync(fd);
  throwsNaming(() => SafetensorsFile.open(file), file, /header length 100000001 exceeds the 100000000-byte limit/);
  fs.rmSync(file);

  file = write('short.safetensors', Buffer.from([1, 2, 3]));
  throwsNaming(() => SafetensorsFile.open(file), file, /too short for the 8-byte header length/);
  file = write('text.json', Buffer.from('{"hello": "this is JSON, not safetensors"}\n'));
  throwsNaming(() => SafetensorsFile.open(file), file, /not a safetensors file/);
  file = path.join(dir, 'does-not-exist.safetensors');
  throwsNaming(() => SafetensorsFile.open(file), file, /cannot open/);
  throwsNaming(() => SafetensorsFile.open(dir), dir, /not a regular file|cannot open/);
});

test('a file truncated after opening fails on read, naming the file and tensor', () => {
  const file = path.join(dir, 'shrinks.safetensors');
  writeSafetensors(file, { w: { dtype: 'f32', shape: [64], data: randomData(64, 5) } });
  const f = SafetensorsFile.open(file);
  try {
    fs.truncateSync(file, fs.statSync(file).size - 10);
    throwsNaming(() => f.read('w'), file, /tensor "w": file ended after/);
  } finally {
    f.close();
  }
});

test('fuzz: flipped bytes and truncations either read or throw an Error naming the file', () => {
  const base = path.join(dir, 'fuzz-base.safetensors');
  writeSafetensors(
    base,
    {
      'model.layers.0.q_proj.weight': { dtype: 'bf16', shape: [3, 4], data: randomData(12, 1) },
      'model.norm.weight': { dtype: 'f32', shape: [4], data: randomData(4, 2) },
      ids: { dtype: 'int32', shape: [2, 2], data: [1, 2, 3, 4] },
      mask: { dtype: 'uint8', shape: [5], data: [1, 0, 1, 1, 0] },
    },
    { format: 'pt' },
  );
  const good = fs.readFileSync(base);
  const headerEnd = 8 + Number(good.readBigUInt64LE(0));
  const rng = new Rng(2024);
  const pick = (n: number) => Math.floor(rng.next() * n);
  let readOk = 0;
  let rejected = 0;
  let n = 0;
  const check = (bytes: Buffer, what: string) => {
    // a fresh file per case: rewriting one in place (truncation) is slow on some filesystems
    const target = path.join(dir, `fuzz-${n++}.safetensors`);
    fs.writeFileSync(target, bytes);
    try {
      readAll(target);
      readOk++;
    } catch (e) {
      assert.ok(e instanceof Error, `${what}: threw a non-Error ${String(e)}`);
      assert.ok(e.message.includes(target), `${what}: message does not name the file: ${e.message}`);
      rejected++;
    }
    fs.unlinkSync(target);
  };
  for (let i = 0; i < 600; i++) {
    const bytes = Buffer.from(good);
    const flips = 1 + pick(3);
    for (let k = 0; k < flips; k++) {
      // most flips land in the header, where parsing is exercised
      const at = rng.next() < 0.85 ? pick(headerEnd) : pick(bytes.length);
      bytes[at] = rng.next() < 0.5 ? bytes[at] ^ (1 << pick(8)) : pick(256);
    }
    check(bytes, `flip case ${i}`);
  }
  for (let cut = 0; cut < good.length; cut += 1 + pick(4)) check(good.subarray(0, cut), `truncated to ${cut}`);
  // digits in the header replaced: offsets, shapes and the length lie in every way
  const text = good.subarray(8, headerEnd).toString('latin1');
  const digits = [...text.matchAll(/\d/g)].map((m) => m.index ?? 0);
  for (let i = 0; i < 200; i++) {
    const bytes = Buffer.from(good);
    bytes[8 + digits[pick(digits.length)]] = 0x30 + pick(10);
    check(bytes, `digit case ${i}`);
  }
  assert.ok(rejected > 100 && readOk > 10, `fuzz cases should both pass and fail (read ${readOk}, rejected ${rejected})`);
});

test('the writer is atomic: failures leave no temporary file and the old file intact', () => {
  const sub = fs.mkdtempSync(path.join(dir, 'atomic-'));
  const file = path.join(sub, 'out.safetensors');
  writeSafetensors(file, { w: { dtype: 'f32', shape: [2], data: [1, 2] } });
  const before = fs.readFileSync(file);

  // a value that fails while the data is being written (after the header is out)
  const failing: ArrayLike<number> = {
    length: 3,
    0: 1,
    1: 2,
    get 2(): number {
      throw new Error('source went away');
    },
  };
  assert.throws(
    () => writeSafetensors(file, { a: { dtype: 'f32', shape: [2], data: [5, 6] }, b: { dtype: 'f32', shape: [3], data: failing } }),
    /source went away/,
  );
  assert.deepEqual(fs.readdirSync(sub), ['out.safetensors']);
  assert.deepEqual(fs.readFileSync(file), before);

  // the rename fails: the destination is a non-empty directory
  const blocked = path.join(sub, 'blocked');
  fs.mkdirSync(blocked);
  fs.writeFileSync(path.join(blocked, 'keep'), 'x');
  throwsNaming(() => writeSafetensors(blocked, { w: { dtype: 'f32', shape: [1], data: [1] } }), blocked, /cannot write/);
  assert.deepEqual(fs.readdirSync(sub).sort(), ['blocked', 'out.safetensors']);
  assert.deepEqual(fs.readdirSync(blocked), ['keep']);

  // invalid input is refused before anything is written
  throwsNaming(() => writeSafetensors(file, { w: { dtype: 'f32', shape: [3], data: [1, 2] } }), file, /tensor "w": 2 values do not fill shape \[3\]/);
  throwsNaming(() => writeSafetensors(file, { __metadata__: { dtype: 'f32', shape: [1], data: [1] } }), file, /reserved/);
  assert.deepEqual(fs.readFileSync(file), before);
  assert.deepEqual(fs.readdirSync(sub).sort(), ['blocked', 'out.safetensors']);
});
