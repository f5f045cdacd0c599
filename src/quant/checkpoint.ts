// Linear weights saved quantized by bitsandbytes (a transformers model loaded in 8 or
// 4 bits and saved with save_pretrained): reading them into a QuantizedWeight, and the
// same state-dict layout for writing one back.
//
// Key names and contents follow bitsandbytes' public source (nn/modules.py
// Linear8bitLt._save_to_state_dict, Linear4bit._save_to_state_dict; functional.py
// QuantState.as_dict(packed=True); utils.py pack_dict_to_tensor), for a module `m`:
//
//   int8   m.weight         int8 [out, in]   CB
//          m.SCB            f32 [out]        row absmax
//          m.weight_format  uint8 scalar     0 = row-major; older col32 / col_turing /
//                                            col_ampere layouts (1, 2, 3) are refused,
//                                            as bitsandbytes itself now refuses them
//   4-bit  m.weight                               packed codes [ceil(n/2), 1], uint8 (or
//                                                 another quant_storage dtype: read as bytes)
//          m.weight.absmax                        f32 [blocks], or uint8 when nested
//          m.weight.quant_map                     f32 [16]
//          m.weight.nested_absmax                 f32 [ceil(blocks / nested_blocksize)]
//          m.weight.nested_quant_map              f32 [256]
//          m.weight.quant_state.bitsandbytes__nf4 uint8: UTF-8 JSON of json.dumps({quant_type,
//                                                 blocksize, dtype, shape, nested_blocksize,
//                                                 nested_dtype, nested_offset}); dtype strings
//                                                 are torch names without "torch."
//
// Every inconsistency (a missing scale tensor, a wrong size or dtype, a block size that
// does not match the absmax count, an unsupported quant type or layout) throws a
// QuantizedCheckpointError naming the tensor.
import type { Backend } from '../backend/backend.js';
import { type HostTensor, SafetensorsFile, type TensorInfo } from '../io/safetensors.js';
import { CheckpointError } from '../models/checkpoint.js';
import { resolveBackend } from '../ops/creation.js';
import { type DType } from '../tensor/dtype.js';
import { formatShape, numel } from '../tensor/shape.js';
import type { Tensor } from '../tensor/tensor.js';
import { BNB_4BIT_BLOCKSIZES, NF4_CODE } from './nf4.js';
import { Int8Weight, Nf4Weight, type QuantFormat, type QuantizedWeight, tensorFromBytes } from './weight.js';

/** Where tensors come from: a SafetensorsFile, or anything that answers the same three calls. */
export interface TensorSource {
  has(name: string): boolean;
  info(name: string): TensorInfo;
  readBytes(name: string): Uint8Array;
}

/**
 * A TensorSource over a checkpoint that knows which file holds each tensor (a sharded
 * models/checkpoint.ts Checkpoint, say): files are opened on first use and kept open
 * until close().
 */
export function checkpointSource(ckpt: { has(name: string): boolean; info(name: string): TensorInfo; fileOf(name: string): string }): TensorSource & { close(): void } {
  const open = new Map<string, SafetensorsFile>();
  return {
    has: (name) => ckpt.has(name),
    info: (name) => ckpt.info(name),
    readBytes: (name) => {
      const file = ckpt.fileOf(name);
      let f = open.get(file);
      if (f === undefined) {
        f = SafetensorsFile.open(file);
        open.set(file, f);
      }
      return f.readBytes(name);
    },
    close: () => {
      for (const f of open.values()) f.close();
      open.clear();
    },
  };
}

/**
 * A quantized weight that cannot be read. It names the tensor, and the file when the
 * reader knows it (the model loader adds it); as a CheckpointError, the CLI commands
 * report it as one line.
 */
export class QuantizedCheckpointError extends CheckpointError {
  constructor(readonly tensor: string, readonly detail: string, file = '') {
    super(file, `tensor ${JSON.stringify(tensor)}: ${detail}`);
    if (file === '') this.message = `tensor ${JSON.stringify(tensor)}: ${detail}`;
    this.name = 'QuantizedCheckpointError';
  }

  /** The same error, naming the file that holds (or should hold) the tensor. */
  inFile(file: string): QuantizedCheckpointError {
    return new QuantizedCheckpointError(this.tensor, this.detail, file);
  }
}

/** bitsandbytes' 4-bit quant types; only nf4 is supported here. */
const BNB_4BIT_TYPES = ['nf4', 'fp4'] as const;

const TORCH_DTYPES: Readonly<Record<string, DType>> = { bfloat16: 'bf16', float16: 'f16', float32: 'f32' };
const TORCH_NAMES: Readonly<Record<string, string>> = { bf16: 'bfloat16', f16: 'float16', f32: 'float32' };

const INT8_LAYOUTS = ['row', 'col32', 'col_turing', 'col_ampere'];

/** The bitsandbytes format a module's weight is saved in, or null for a plain float weight. */
export function quantizedFormatOf(src: TensorSource, module: string): QuantFormat | null {
  const w = `${module}.weight`;
  if (BNB_4BIT_TYPES.some((t) => src.has(`${w}.quant_state.bitsandbytes__${t}`)) || src.has(`${w}.absmax`)) return 'nf4';
  if (src.has(`${module}.SCB`) || (src.has(w) && src.info(w).format === 'I8')) return 'int8';
  return null;
}

export interface ReadQuantizedOptions {
  device?: string | Backend;
  /** The [out, in] shape the model expects; checked. */
  shape?: readonly [number, number];
}

/**
 * A module's bitsandbytes-quantized weight, checked and ready to read: every tensor's
 * presence, dtype and size and the quant state are validated (small scale tensors are
 * read for that) before read() moves the codes to the device. A model loader checks
 * every module this way before it reads any weight.
 */
export interface QuantizedWeightPlan {
  readonly module: string;
  readonly format: QuantFormat;
  readonly shape: readonly [number, number];
  /** The checkpoint tensors the weight is read from. */
  readonly tensors: readonly string[];
  read(): QuantizedWeight;
}

/** Checks a module's bitsandbytes-quantized weight; null when it is saved unquantized. */
export function planQuantizedWeight(src: TensorSource, module: string, opts: ReadQuantizedOptions = {}): QuantizedWeightPlan | null {
  const format = quantizedFormatOf(src, module);
  if (format === null) return null;
  return format === 'int8' ? planInt8(src, module, opts) : plan4bit(src, module, opts);
}

/** Reads a module's bitsandbytes-quantized weight, or returns null when it is saved unquantized. */
export function readQuantizedWeight(src: TensorSource, module: string, opts: ReadQuantizedOptions = {}): QuantizedWeight | null {
  return planQuantizedWeight(src, module, opts)?.read() ?? null;
}

function need(src: TensorSource, name: string, why: string): TensorInfo {
  if (!src.has(name)) throw new QuantizedCheckpointError(name, `missing (${why})`);
  return src.info(name);
}

function checkInfo(info: TensorInfo, format: string, count: number | null, what: string): void {
  if (info.format !== format) throw new QuantizedCheckpointError(info.name, `${what} must be ${format}, got ${info.format}`);
  if (count !== null && numel(info.shape) !== count) {
    throw new QuantizedCheckpointError(info.name, `${what} must hold ${count} values, got shape ${formatShape(info.shape)}`);
  }
}

function checkExpectedShape(name: string, shape: readonly number[], opts: ReadQuantizedOptions): void {
  if (opts.shape !== undefined && (shape[0] !== opts.shape[0] || shape[1] !== opts.shape[1])) {
    throw new QuantizedCheckpointError(name, `shape ${formatShape(shape)} does not match ${formatShape(opts.shape)} expected from the model config`);
  }
}

function f32Values(src: TensorSource, name: string): Float32Array {
  const b = src.readBytes(name);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

/** Uploads tensors, disposing those already made when a later one fails. */
function uploadAll<T>(fn: (upload: (name: string, shape: readonly number[], dtype: DType) => Tensor) => T, src: TensorSource, backend: Backend): T {
  const made: Tensor[] = [];
  try {
    return fn((name, shape, dtype) => {
      const t = tensorFromBytes(src.readBytes(name), shape, dtype, backend);
      made.push(t);
      return t;
    });
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
}

function planInt8(src: TensorSource, module: string, opts: ReadQuantizedOptions): QuantizedWeightPlan {
  const wName = `${module}.weight`, sName = `${module}.SCB`, fName = `${module}.weight_format`;
  const wi = need(src, wName, 'an int8 module needs its weight');
  if (wi.format !== 'I8' || wi.shape.length !== 2) {
    throw new QuantizedCheckpointError(wName, `an int8 weight (SCB is present) must be I8 [out, in], got ${wi.format} ${formatShape(wi.shape)}`);
  }
  const [rows, cols] = wi.shape;
  checkExpectedShape(wName, wi.shape, opts);
  const si = need(src, sName, `the row scales of int8 weight ${JSON.stringify(wName)}`);
  checkInfo(si, 'F32', rows, `the row absmax of a [${rows}, ${cols}] weight`);
  if (src.has(fName)) {
    const fi = src.info(fName);
    if (!['U8', 'I8', 'I32', 'I64'].includes(fi.format) || numel(fi.shape) !== 1) {
      throw new QuantizedCheckpointError(fName, `must be one integer, got ${fi.format} ${formatShape(fi.shape)}`);
    }
    const layout = src.readBytes(fName)[0];
    if (layout !== 0) {
      throw new QuantizedCheckpointError(fName, `layout ${layout} (${INT8_LAYOUTS[layout] ?? 'unknown'}) is not supported: only row-major (0) int8 weights can be read`);
    }
  }
  const scb = f32Values(src, sName);
  const bad = scb.findIndex((v) => !(Number.isFinite(v) && v >= 0));
  if (bad >= 0) throw new QuantizedCheckpointError(sName, `row ${bad} has absmax ${scb[bad]}; row absmaxes must be finite and >= 0`);
  const backend = resolveBackend(opts.device);
  return {
    module, format: 'int8', shape: [rows, cols],
    tensors: src.has(fName) ? [wName, sName, fName] : [wName, sName],
    read: (): Int8Weight => uploadAll((up) => new Int8Weight(up(wName, [rows, cols], 'int8'), up(sName, [rows], 'f32'), 'f16'), src, backend),
  };
}

interface QuantStateJson {
  quantType: string;
  blocksize: number;
  dtype: DType;
  shape: [number, number];
  nested: { blocksize: number; offset: number } | null;
}

function parseQuantState(src: TensorSource, name: string): QuantStateJson {
  const info = src.info(name);
  if (info.format !== 'U8') throw new QuantizedCheckpointError(name, `the packed quant state must be U8 (UTF-8 JSON), got ${info.format}`);
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(src.readBytes(name)));
  } catch (e) {
    throw new QuantizedCheckpointError(name, `the packed quant state is not UTF-8 JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new QuantizedCheckpointError(name, 'the packed quant state is not a JSON object');
  const o = new Map(Object.entries(raw));
  const fail = (msg: string) => new QuantizedCheckpointError(name, msg);
  const quantType = o.get('quant_type');
  if (typeof quantType !== 'string') throw fail('"quant_type" is missing or not a string');
  if (quantType !== 'nf4') {
    throw fail(`quant_type ${JSON.stringify(quantType)} is not supported (${quantType === 'fp4' ? 'FP4 is a bitsandbytes type finlora does not implement; ' : ''}only "nf4")`);
  }
  const blocksize = o.get('blocksize');
  if (typeof blocksize !== 'number' || !BNB_4BIT_BLOCKSIZES.includes(blocksize)) {
    throw fail(`blocksize ${JSON.stringify(blocksize)} is not one of bitsandbytes' 4-bit block sizes (${BNB_4BIT_BLOCKSIZES.join(', ')})`);
  }
  const dtypeName = o.get('dtype');
  const dtype = typeof dtypeName === 'string' ? TORCH_DTYPES[dtypeName] : undefined;
  if (dtype === undefined) throw fail(`dtype ${JSON.stringify(dtypeName)} is not bfloat16, float16 or float32`);
  const shape = o.get('shape');
  if (!Array.isArray(shape) || shape.length !== 2 || !shape.every((d): d is number => Number.isSafeInteger(d) && d >= 0)) {
    throw fail(`shape ${JSON.stringify(shape)} is not the [out, in] shape of a Linear weight`);
  }
  let nested: QuantStateJson['nested'] = null;
  const hasNested = ['nested_blocksize', 'nested_offset', 'nested_dtype'].filter((k) => o.has(k));
  if (hasNested.length > 0) {
    const nb = o.get('nested_blocksize');
    if (typeof nb !== 'number' || !Number.isSafeInteger(nb) || nb <= 0) throw fail(`nested_blocksize ${JSON.stringify(nb)} is not a positive integer`);
    const offset = o.get('nested_offset');
    if (typeof offset !== 'number' || !Number.isFinite(offset)) throw fail(`nested_offset ${JSON.stringify(offset)} is not a finite number`);
    const nd = o.get('nested_dtype');
    if (nd !== undefined && nd !== 'float32') throw fail(`nested_dtype ${JSON.stringify(nd)} is not float32`);
    nested = { blocksize: nb, offset: Math.fround(offset) };
  }
  return { quantType, blocksize, dtype, shape: [shape[0], shape[1]], nested };
}

function plan4bit(src: TensorSource, module: string, opts: ReadQuantizedOptions): QuantizedWeightPlan {
  const w = `${module}.weight`;
  const fp4 = `${w}.quant_state.bitsandbytes__fp4`;
  if (src.has(fp4)) throw new QuantizedCheckpointError(fp4, 'quant_type "fp4" is not supported (only "nf4")');
  const stateName = `${w}.quant_state.bitsandbytes__nf4`;
  need(src, stateName, `the quant state of 4-bit weight ${JSON.stringify(w)}`);
  const qs = parseQuantState(src, stateName);
  const [rows, cols] = qs.shape;
  checkExpectedShape(stateName, qs.shape, opts);
  const n = rows * cols;
  const blocks = Math.ceil(n / qs.blocksize);

  const wi = need(src, w, 'the packed 4-bit codes');
  if (wi.byteLength !== Math.ceil(n / 2)) {
    throw new QuantizedCheckpointError(w, `holds ${wi.byteLength} bytes, but a ${formatShape(qs.shape)} weight packs into ${Math.ceil(n / 2)} (two 4-bit codes per byte)`);
  }
  const absName = `${w}.absmax`, mapName = `${w}.quant_map`;
  const nestedAbsName = `${w}.nested_absmax`, nestedMapName = `${w}.nested_quant_map`;
  const ai = need(src, absName, 'the block scales');
  const mi = need(src, mapName, 'the 4-bit code table');
  checkInfo(mi, 'F32', 16, 'the 4-bit code table');
  const map = f32Values(src, mapName);
  const off = map.findIndex((v, i) => !(Math.abs(v - NF4_CODE[i]) <= 1e-6));
  if (off >= 0) throw new QuantizedCheckpointError(mapName, `entry ${off} is ${map[off]}, but NF4's is ${NF4_CODE[off]}: this is not the NF4 table`);

  const nested = qs.nested;
  const hasNestedTensors = src.has(nestedAbsName) || src.has(nestedMapName);
  if (nested === null && hasNestedTensors) {
    throw new QuantizedCheckpointError(stateName, `has no nested_blocksize / nested_offset, but ${src.has(nestedAbsName) ? nestedAbsName : nestedMapName} is present`);
  }
  const absFormat = nested === null ? 'F32' : 'U8';
  if (ai.format !== absFormat) {
    throw new QuantizedCheckpointError(absName, `must be ${absFormat} ${nested === null ? '(no double quantization in the quant state)' : '(double-quantized codes)'}, got ${ai.format}`);
  }
  if (numel(ai.shape) !== blocks) {
    throw new QuantizedCheckpointError(absName, `holds ${numel(ai.shape)} scales, but blocksize ${qs.blocksize} cuts the ${n} values of ${formatShape(qs.shape)} into ${blocks} blocks`);
  }
  let blocks2 = 0;
  if (nested !== null) {
    const nai = need(src, nestedAbsName, 'the scales of the double-quantized block absmaxes');
    const nmi = need(src, nestedMapName, 'the 8-bit code of the double-quantized block absmaxes');
    checkInfo(nmi, 'F32', 256, 'the nested 8-bit code');
    blocks2 = Math.ceil(blocks / nested.blocksize);
    checkInfo(nai, 'F32', null, 'the nested absmax');
    if (numel(nai.shape) !== blocks2) {
      throw new QuantizedCheckpointError(nestedAbsName, `holds ${numel(nai.shape)} scales, but nested_blocksize ${nested.blocksize} cuts ${blocks} block absmaxes into ${blocks2} blocks`);
    }
  } else {
    const a = f32Values(src, absName);
    const bad = a.findIndex((v) => !(Number.isFinite(v) && v >= 0));
    if (bad >= 0) throw new QuantizedCheckpointError(absName, `block ${bad} has absmax ${a[bad]}; block absmaxes must be finite and >= 0`);
  }
  const backend = resolveBackend(opts.device);
  const read = (): Nf4Weight => uploadAll((up) => {
    const packed = up(w, [Math.ceil(n / 2)], 'uint8');
    const code = up(mapName, [16], 'f32');
    const absmax = up(absName, [blocks], nested === null ? 'f32' : 'uint8');
    const nestedT = nested === null ? null : {
      absmax: up(nestedAbsName, [blocks2], 'f32'),
      code: up(nestedMapName, [256], 'f32'),
      blocksize: nested.blocksize,
      offset: nested.offset,
    };
    return new Nf4Weight(rows, cols, qs.blocksize, packed, code, absmax, nestedT, qs.dtype);
  }, src, backend);
  const tensors = [w, absName, mapName, stateName, ...(nested === null ? [] : [nestedAbsName, nestedMapName])];
  return { module, format: 'nf4', shape: [rows, cols], tensors, read };
}

/** Python's json.dumps number formatting for the values bitsandbytes writes (ints as ints, floats with a decimal point). */
function pyNumber(x: number, isFloat: boolean): string {
  if (!isFloat) return String(x);
  return Number.isInteger(x) && Math.abs(x) < 1e16 ? x.toFixed(1) : String(x);
}

function hostValues(t: Tensor): ArrayLike<number> {
  return t.toArray();
}

/**
 * The tensors bitsandbytes' state dict holds for module `m` with this weight (keys in
 * the module comment), ready for writeSafetensors. A module's bias is not included.
 */
export function bnbStateDict(module: string, w: QuantizedWeight): Record<string, HostTensor> {
  if (w.format === 'int8') {
    return {
      [`${module}.weight`]: { dtype: 'int8', shape: w.shape, data: hostValues(w.cb) },
      [`${module}.SCB`]: { dtype: 'f32', shape: [w.rows], data: hostValues(w.scb) },
      [`${module}.weight_format`]: { dtype: 'uint8', shape: [], data: [0] },
    };
  }
  const m = `${module}.weight`;
  const n = w.nested;
  // json.dumps of as_dict's non-tensor entries, in as_dict's order, with Python's separators.
  const fields: [string, string][] = [
    ['quant_type', '"nf4"'],
    ['blocksize', pyNumber(w.blocksize, false)],
    ['dtype', `"${TORCH_NAMES[w.dtype]}"`],
    ['shape', `[${w.rows}, ${w.cols}]`],
  ];
  if (n !== null) fields.push(['nested_blocksize', pyNumber(n.blocksize, false)], ['nested_dtype', '"float32"'], ['nested_offset', pyNumber(n.offset, true)]);
  const json = new TextEncoder().encode(`{${fields.map(([k, v]) => `"${k}": ${v}`).join(', ')}}`);
  const out: Record<string, HostTensor> = {
    [m]: { dtype: 'uint8', shape: [w.packed.size, 1], data: hostValues(w.packed) },
    [`${m}.absmax`]: { dtype: n === null ? 'f32' : 'uint8', shape: [w.absmax.size], data: hostValues(w.absmax) },
    [`${m}.quant_map`]: { dtype: 'f32', shape: [16], data: hostValues(w.code) },
    [`${m}.quant_state.bitsandbytes__nf4`]: { dtype: 'uint8', shape: [json.length], data: json },
  };
  if (n !== null) {
    out[`${m}.nested_absmax`] = { dtype: 'f32', shape: [n.absmax.size], data: hostValues(n.absmax) };
    out[`${m}.nested_quant_map`] = { dtype: 'f32', shape: [256], data: hostValues(n.code) };
  }
  return out;
}
