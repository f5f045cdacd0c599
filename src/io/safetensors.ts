// safetensors reading and writing, following the format of huggingface/safetensors:
//
//   [8 bytes: N, little-endian u64] [N bytes: UTF-8 JSON header] [data section]
//
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]},
// offsets relative to the start of the data section; the optional "__metadata__" key
// maps strings to strings. All values are little-endian, row-major.
//
// The reader validates the whole header when a file is opened and then reads each
// tensor by offset, so a many-GB checkpoint is never held in memory at once. It is as
// strict as the reference implementation: the tensors' byte ranges must tile the data
// section exactly, from 0 to the end of the file. Holes, overlaps and trailing bytes
// are errors, because a file with them was not written by a conforming writer and is
// more likely truncated, concatenated or corrupted than intentionally sparse.
//
// The writer follows the reference writer's layout: the header padded with spaces to a
// multiple of 8 bytes, and the data laid out by element size (largest first) and then
// by name, so every tensor starts aligned to its element size for readers that map
// the file. Header keys are sorted. Writes are atomic (temporary file, fsync, rename).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Backend } from '../backend/backend.js';
import { resolveBackend } from '../ops/creation.js';
import { cast, contiguous } from '../ops/view.js';
import { type DType, DTYPE_BYTES, decode, encode, type HostArray } from '../tensor/dtype.js';
import { formatShape, numel, type Shape } from '../tensor/shape.js';
import { empty, Tensor } from '../tensor/tensor.js';
import { writeAtomic } from './atomic.js';

/** The reference implementation's limit on the header length. */
export const MAX_HEADER_BYTES = 100_000_000;

/** Element types of the format; `bits` per element (sub-byte types pack). */
const FORMAT_DTYPES = {
  BOOL: 8, U8: 8, I8: 8, F8_E5M2: 8, F8_E4M3: 8, F8_E8M0: 8, I16: 16, U16: 16, F16: 16, BF16: 16,
  I32: 32, U32: 32, F32: 32, F64: 64, I64: 64, U64: 64, C64: 64, F4: 4, F6_E2M3: 6, F6_E3M2: 6,
} as const;

export type SafetensorsDType = keyof typeof FORMAT_DTYPES;

const TO_FINLORA: Partial<Record<SafetensorsDType, DType>> = { F32: 'f32', BF16: 'bf16', F16: 'f16', I8: 'int8', U8: 'uint8', I32: 'int32' };
const FROM_FINLORA: Readonly<Record<DType, SafetensorsDType>> = { f32: 'F32', bf16: 'BF16', f16: 'F16', int8: 'I8', uint8: 'U8', int32: 'I32' };

function isFormatDType(s: string): s is SafetensorsDType {
  return Object.prototype.hasOwnProperty.call(FORMAT_DTYPES, s);
}

/** An invalid or unreadable safetensors file; the message names the file (and tensor). */
export class SafetensorsError extends Error {
  constructor(readonly file: string, message: string, readonly tensor?: string) {
    super(`${file}: ${tensor === undefined ? '' : `tensor ${quote(tensor)}: `}${message}`);
    this.name = 'SafetensorsError';
  }
}

/** Quotes a name for a one-line message (escapes control characters, caps the length). */
function quote(name: string): string {
  const s = JSON.stringify(name);
  return s.length > 120 ? `${s.slice(0, 100)}…"` : s;
}

export interface TensorInfo {
  readonly name: string;
  /** The element type as the file spells it. */
  readonly format: SafetensorsDType;
  /** The finlora dtype it loads as, or null when finlora cannot hold it (F64, I64, BOOL, …). */
  readonly dtype: DType | null;
  readonly shape: readonly number[];
  /** Absolute position of the first byte in the file. */
  readonly fileOffset: number;
  readonly byteLength: number;
}

export interface LoadOptions {
  device?: string | Backend;
  /** Convert to this dtype after loading (floats round to nearest even). */
  dtype?: DType;
}

const CHUNK = 1 << 30;

/** An open safetensors file. Close it (or let the process end) to release the descriptor. */
export class SafetensorsFile {
  private fd: number | null;

  private constructor(
    readonly path: string,
    fd: number,
    readonly metadata: Readonly<Record<string, string>>,
    private readonly entries: ReadonlyMap<string, TensorInfo>,
  ) {
    this.fd = fd;
  }

  /** Opens a file and validates its header; throws SafetensorsError naming the problem. */
  static open(file: string): SafetensorsFile {
    if (os.endianness() !== 'LE') throw new SafetensorsError(file, 'reading safetensors needs a little-endian host');
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (e) {
      throw new SafetensorsError(file, `cannot open: ${errorText(e)}`);
    }
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw new SafetensorsError(file, 'not a regular file');
      const { metadata, entries } = parseHeader(file, fd, st.size);
      return new SafetensorsFile(file, fd, metadata, entries);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** Tensor names, sorted. */
  names(): string[] {
    return [...this.entries.keys()].sort(compareNames);
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  info(name: string): TensorInfo {
    const info = this.entries.get(name);
    if (info === undefined) {
      const names = this.names();
      const shown = names.slice(0, 5).map(quote).join(', ');
      const more = names.length > 5 ? ` and ${names.length - 5} more` : '';
      throw new SafetensorsError(this.path, `no tensor ${quote(name)} (${names.length === 0 ? 'the file holds no tensors' : `available: ${shown}${more}`})`);
    }
    return info;
  }

  /** The tensor's raw little-endian bytes, whatever its dtype. */
  readBytes(name: string): Uint8Array {
    const info = this.info(name);
    if (this.fd === null) throw new SafetensorsError(this.path, 'file is closed', name);
    const out = new Uint8Array(info.byteLength);
    let done = 0;
    while (done < out.length) {
      let n: number;
      try {
        n = fs.readSync(this.fd, out, done, Math.min(CHUNK, out.length - done), info.fileOffset + done);
      } catch (e) {
        throw new SafetensorsError(this.path, `read failed: ${errorText(e)}`, name);
      }
      if (n === 0) throw new SafetensorsError(this.path, `file ended after ${done} of ${info.byteLength} bytes (was it truncated after opening?)`, name);
      done += n;
    }
    return out;
  }

  /** The values on the host: floats as Float32Array, integers in their own array type. */
  read(name: string): HostArray {
    return decode(this.loadable(name).dtype, this.readBytes(name));
  }

  /** Loads a tensor onto a backend (default: the default backend), in its own dtype unless `dtype` says otherwise. */
  tensor(name: string, opts: LoadOptions = {}): Tensor {
    const { dtype, shape } = this.loadable(name);
    const bytes = this.readBytes(name);
    const backend = resolveBackend(opts.device);
    const t = empty(shape, dtype, backend);
    if (bytes.length > 0) backend.write(t.storage.buffer, 0, bytes, dtype);
    t.name = name;
    if (opts.dtype === undefined || opts.dtype === dtype) return t;
    const converted = cast(t, opts.dtype);
    t.dispose();
    converted.name = name;
    return converted;
  }

  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }

  private loadable(name: string): TensorInfo & { dtype: DType } {
    const info = this.info(name);
    const dtype = info.dtype;
    if (dtype === null) {
      throw new SafetensorsError(this.path, `dtype ${info.format} is not supported (finlora loads F32, BF16, F16, I8, U8, I32)`, name);
    }
    return { ...info, dtype };
  }
}

/** Opens a file, runs fn, and closes it whatever happens. */
export function withSafetensors<T>(file: string, fn: (f: SafetensorsFile) => T): T {
  const f = SafetensorsFile.open(file);
  try {
    return fn(f);
  } finally {
    f.close();
  }
}

function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function readExactly(file: string, fd: number, length: number, position: number, what: string): Uint8Array {
  const buf = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, buf, done, length - done, position + done);
    if (n === 0) throw new SafetensorsError(file, `file ended while reading the ${what}`);
    done += n;
  }
  return buf;
}

function parseHeader(file: string, fd: number, fileSize: number): { metadata: Record<string, string>; entries: Map<string, TensorInfo> } {
  if (fileSize < 8) throw new SafetensorsError(file, `not a safetensors file: ${fileSize} bytes, too short for the 8-byte header length`);
  const lenBytes = readExactly(file, fd, 8, 0, 'header length');
  const declared = new DataView(lenBytes.buffer).getBigUint64(0, true);
  if (declared > BigInt(fileSize - 8)) {
    throw new SafetensorsError(file, `not a safetensors file: header length ${declared} exceeds the ${fileSize - 8} bytes after it`);
  }
  if (declared > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsError(file, `header length ${declared} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  }
  const headerLen = Number(declared);
  if (headerLen < 2) throw new SafetensorsError(file, `not a safetensors file: header length ${headerLen} is too short for a JSON object`);
  const headerBytes = readExactly(file, fd, headerLen, 8, 'header');

  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    throw new SafetensorsError(file, 'not a safetensors file: the header is not valid UTF-8');
  }
  // The reference parser rejects a header that does not start with '{'; so do we, which
  // also turns most non-safetensors files into a clear message instead of a JSON error.
  if (!text.startsWith('{')) throw new SafetensorsError(file, 'not a safetensors file: the header does not start with a JSON object');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new SafetensorsError(file, `the header is not valid JSON (${errorText(e).replace(/\s+/g, ' ')})`);
  }
  if (!isPlainObject(parsed)) throw new SafetensorsError(file, 'the header is not a JSON object');

  // Object.fromEntries keeps a key like "__proto__" as data instead of a prototype.
  let metadata: Record<string, string> = {};
  const entries = new Map<string, TensorInfo>();
  const dataStart = 8 + headerLen;
  const dataSize = fileSize - dataStart;
  for (const [name, raw] of Object.entries(parsed)) {
    if (name === '__metadata__') {
      if (!isPlainObject(raw)) throw new SafetensorsError(file, '"__metadata__" must be an object of strings');
      const pairs: [string, string][] = [];
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== 'string') throw new SafetensorsError(file, `"__metadata__" value for ${quote(k)} is not a string`);
        pairs.push([k, v]);
      }
      metadata = Object.fromEntries(pairs);
      continue;
    }
    entries.set(name, parseEntry(file, name, raw, dataStart));
  }
  checkTiling(file, [...entries.values()], dataStart, dataSize);
  return { metadata, entries };
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseEntry(file: string, name: string, raw: unknown, dataStart: number): TensorInfo {
  const fail = (msg: string) => new SafetensorsError(file, msg, name);
  if (!isPlainObject(raw)) throw fail('entry is not an object');
  const { dtype, shape, data_offsets: offsets } = raw;
  if (dtype === undefined) throw fail('missing "dtype"');
  if (shape === undefined) throw fail('missing "shape"');
  if (offsets === undefined) throw fail('missing "data_offsets"');
  if (typeof dtype !== 'string') throw fail('"dtype" is not a string');
  if (!isFormatDType(dtype)) throw fail(`unknown dtype ${quote(dtype)}`);
  if (!Array.isArray(shape)) throw fail('"shape" is not an array');
  const dims: number[] = [];
  for (const d of shape) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) throw fail(`"shape" ${JSON.stringify(shape).slice(0, 80)} has a dimension that is not a non-negative integer`);
    dims.push(d);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2) throw fail('"data_offsets" is not an array of two offsets');
  const [begin, end] = offsets;
  if (typeof begin !== 'number' || typeof end !== 'number' || !Number.isSafeInteger(begin) || !Number.isSafeInteger(end) || begin < 0 || end < 0) {
    throw fail('"data_offsets" are not non-negative integers');
  }
  if (end < begin) throw fail(`"data_offsets" [${begin}, ${end}] end before they begin`);
  const bits = FORMAT_DTYPES[dtype];
  let count = 1;
  for (const d of dims) {
    count *= d;
    if (!Number.isSafeInteger(count * bits)) throw fail(`shape ${formatShape(dims)} is too large`);
  }
  if ((count * bits) % 8 !== 0) throw fail(`shape ${formatShape(dims)} of ${dtype} does not fill whole bytes`);
  const expected = (count * bits) / 8;
  if (end - begin !== expected) {
    throw fail(`"data_offsets" [${begin}, ${end}] hold ${end - begin} bytes, but shape ${formatShape(dims)} of ${dtype} needs ${expected}`);
  }
  return { name, format: dtype, dtype: TO_FINLORA[dtype] ?? null, shape: dims, fileOffset: dataStart + begin, byteLength: expected };
}

/** The byte ranges must cover [0, dataSize) exactly: no overlap, no hole, nothing after. */
function checkTiling(file: string, entries: TensorInfo[], dataStart: number, dataSize: number): void {
  const ranges = entries
    .map((e) => ({ name: e.name, begin: e.fileOffset - dataStart, end: e.fileOffset - dataStart + e.byteLength }))
    .sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  let prev: string | null = null;
  for (const r of ranges) {
    if (r.end > dataSize) {
      throw new SafetensorsError(file, `"data_offsets" [${r.begin}, ${r.end}] run past the end of the file (the data section holds ${dataSize} bytes; truncated?)`, r.name);
    }
    if (r.begin < pos) throw new SafetensorsError(file, `bytes [${r.begin}, ${r.end}) overlap tensor ${quote(prev ?? '')}`, r.name);
    if (r.begin > pos) throw new SafetensorsError(file, `bytes [${pos}, ${r.begin}) of the data section belong to no tensor`, r.name);
    pos = r.end;
    prev = r.name;
  }
  if (pos !== dataSize) {
    throw new SafetensorsError(file, `${dataSize - pos} bytes after the last tensor's data belong to no tensor`);
  }
}

// ------------------------------------------------------------------ writing

/** Values held on the host, to write without making a tensor first. */
export interface HostTensor {
  readonly dtype: DType;
  readonly shape: Shape;
  readonly data: ArrayLike<number>;
}

interface Planned {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly byteLength: number;
  readonly bytes: () => Uint8Array;
}

function plan(file: string, name: string, value: Tensor | HostTensor): Planned {
  const fail = (msg: string) => new SafetensorsError(file, msg, name);
  if (name === '__metadata__') throw fail('"__metadata__" is reserved for the metadata map');
  const shape = [...value.shape];
  for (const d of shape) if (!Number.isSafeInteger(d) || d < 0) throw fail(`invalid shape ${formatShape(shape)}`);
  const byteLength = numel(shape) * DTYPE_BYTES[value.dtype];
  if (value instanceof Tensor) {
    if (value.isDisposed) throw fail('tensor was disposed');
    const t = value;
    return {
      name, dtype: t.dtype, shape, byteLength,
      bytes: () => {
        const c = contiguous(t);
        try {
          return c.backend.read(c.storage.buffer, c.byteOffset, byteLength, c.dtype);
        } finally {
          if (c !== t) c.dispose();
        }
      },
    };
  }
  if (value.data.length !== numel(shape)) throw fail(`${value.data.length} values do not fill shape ${formatShape(shape)}`);
  return { name, dtype: value.dtype, shape, byteLength, bytes: () => encode(value.dtype, value.data) };
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) done += fs.writeSync(fd, bytes, done, Math.min(CHUNK, bytes.length - done));
}

/**
 * Writes tensors (and optional string metadata) as a safetensors file, atomically: the
 * bytes go to a temporary file in the same directory, which is fsynced and renamed over
 * `file` only when complete. On failure the temporary is removed and an existing file
 * at `file` is left as it was.
 */
export function writeSafetensors(file: string, tensors: Readonly<Record<string, Tensor | HostTensor>>, metadata?: Readonly<Record<string, string>>): void {
  const items = Object.entries(tensors).map(([name, v]) => plan(file, name, v));
  // Largest elements first, then by name: each tensor starts aligned to its element size.
  const layout = [...items].sort((a, b) => DTYPE_BYTES[b.dtype] - DTYPE_BYTES[a.dtype] || compareNames(a.name, b.name));
  const offsets = new Map<string, [number, number]>();
  let pos = 0;
  for (const it of layout) {
    offsets.set(it.name, [pos, pos + it.byteLength]);
    pos += it.byteLength;
  }
  // Object.fromEntries keeps a name like "__proto__" as an ordinary key.
  const header: [string, unknown][] = [];
  if (metadata !== undefined) {
    const meta: [string, string][] = [];
    for (const k of Object.keys(metadata).sort(compareNames)) {
      const v = metadata[k];
      if (typeof v !== 'string') throw new SafetensorsError(file, `metadata value for ${quote(k)} is not a string`);
      meta.push([k, v]);
    }
    header.push(['__metadata__', Object.fromEntries(meta)]);
  }
  for (const it of [...items].sort((a, b) => compareNames(a.name, b.name))) {
    header.push([it.name, { dtype: FROM_FINLORA[it.dtype], shape: it.shape, data_offsets: offsets.get(it.name) }]);
  }
  const json = new TextEncoder().encode(JSON.stringify(Object.fromEntries(header)));
  const padded = Math.ceil(json.length / 8) * 8;
  const head = new Uint8Array(8 + padded).fill(0x20);
  new DataView(head.buffer).setBigUint64(0, BigInt(padded), true);
  head.set(json, 8);

  try {
    writeAtomic(file, (fd) => {
      writeAll(fd, head);
      for (const it of layout) {
        const bytes = it.bytes();
        if (bytes.length !== it.byteLength) throw new SafetensorsError(file, `produced ${bytes.length} bytes, expected ${it.byteLength}`, it.name);
        writeAll(fd, bytes);
      }
    });
  } catch (e) {
    if (e instanceof SafetensorsError) throw e;
    throw new SafetensorsError(file, `cannot write: ${errorText(e)}`);
  }
}
