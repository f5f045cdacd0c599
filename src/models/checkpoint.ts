// The weights of a Hugging Face model directory: model.safetensors, or the shards named
// by model.safetensors.index.json ({"metadata": {...}, "weight_map": {tensor: shard}}),
// looked up in that order as transformers does.
//
// Every shard's header is read and validated when the checkpoint is opened (a truncated
// shard fails there, see io/safetensors.ts), before any tensor data is read. Tensors are
// then copied into already-allocated model parameters in chunks of a few MiB, through
// the backend's copy kernel when the dtype changes, so loading never holds more than one
// chunk beyond the model's own memory.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type Backend, kernel } from '../backend/backend.js';
import { SafetensorsError, SafetensorsFile, type TensorInfo } from '../io/safetensors.js';
import { DTYPE_BYTES, type DType } from '../tensor/dtype.js';
import { formatShape, sameShape } from '../tensor/shape.js';
import { empty, keep, type Tensor, view } from '../tensor/tensor.js';

export const WEIGHTS_NAME = 'model.safetensors';
export const WEIGHTS_INDEX_NAME = 'model.safetensors.index.json';

/** Float formats a checkpoint tensor may be stored in. */
const FLOAT_DTYPES: readonly DType[] = ['f32', 'bf16', 'f16'];

/** A model directory or file that cannot be loaded; the message names the file. */
export class CheckpointError extends Error {
  constructor(readonly file: string, message: string) {
    super(`${file}: ${message}`);
    this.name = 'CheckpointError';
  }
}

const CHUNK_BYTES = 8 << 20;

interface Shard {
  readonly file: SafetensorsFile;
  readonly fd: number;
}

export class Checkpoint {
  /** One staging buffer per (backend, source dtype), reused by every converting read. */
  private readonly staging = new Map<string, Tensor>();
  /** The host side of every read: one chunk, reused. */
  private host: Uint8Array | null = null;

  private constructor(
    readonly dir: string,
    /** The file that lists the weights: model.safetensors or the index. */
    readonly source: string,
    private readonly shards: ReadonlyMap<string, Shard>,
    private readonly where: ReadonlyMap<string, string>,
  ) {}

  /** Finds and opens the weights of a model directory, validating every shard's header. */
  static open(dir: string): Checkpoint {
    const single = path.join(dir, WEIGHTS_NAME);
    const index = path.join(dir, WEIGHTS_INDEX_NAME);
    if (fs.existsSync(single)) {
      const shard = openShard(single);
      const where = new Map(shard.file.names().map((n) => [n, single]));
      return new Checkpoint(dir, single, new Map([[single, shard]]), where);
    }
    if (fs.existsSync(index)) return Checkpoint.openIndex(dir, index);
    let listing: string[] = [];
    try {
      listing = fs.readdirSync(dir);
    } catch (e) {
      throw new CheckpointError(dir, `cannot read the model directory: ${e instanceof Error ? e.message : String(e)}`);
    }
    const other = listing.find((f) => f.endsWith('.bin') || f.endsWith('.pt') || f.endsWith('.gguf'));
    throw new CheckpointError(dir, `no ${WEIGHTS_NAME} or ${WEIGHTS_INDEX_NAME}${other ? ` (found ${other}: only safetensors weights are supported)` : ''}`);
  }

  private static openIndex(dir: string, index: string): Checkpoint {
    let raw: unknown;
    try {
      raw = JSON.parse(fs.readFileSync(index, 'utf8'));
    } catch (e) {
      throw new CheckpointError(index, `cannot read the shard index: ${e instanceof Error ? e.message : String(e)}`);
    }
    const map = typeof raw === 'object' && raw !== null && 'weight_map' in raw ? raw.weight_map : undefined;
    if (typeof map !== 'object' || map === null || Array.isArray(map)) throw new CheckpointError(index, '"weight_map" is missing or not an object');
    const where = new Map<string, string>();
    const shards = new Map<string, Shard>();
    try {
      for (const [name, shardName] of Object.entries(map)) {
        if (typeof shardName !== 'string' || shardName === '' || shardName !== path.basename(shardName) || shardName === '..' || shardName === '.') {
          throw new CheckpointError(index, `"weight_map" entry for ${JSON.stringify(name)} is not a file name in the model directory: ${JSON.stringify(shardName)}`);
        }
        const file = path.join(dir, shardName);
        if (!shards.has(file)) {
          if (!fs.existsSync(file)) throw new CheckpointError(index, `shard ${shardName} (holding ${JSON.stringify(name)}) is missing`);
          shards.set(file, openShard(file));
        }
        if (!shards.get(file)!.file.has(name)) {
          throw new SafetensorsError(file, `the index ${WEIGHTS_INDEX_NAME} places tensor ${JSON.stringify(name)} here, but the file does not hold it`);
        }
        where.set(name, file);
      }
    } catch (e) {
      for (const s of shards.values()) closeShard(s);
      throw e;
    }
    if (where.size === 0) throw new CheckpointError(index, '"weight_map" lists no tensors');
    return new Checkpoint(dir, index, shards, where);
  }

  /** Tensor names, sorted. */
  names(): string[] {
    return [...this.where.keys()].sort();
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  /** The file holding a tensor. */
  fileOf(name: string): string {
    const file = this.where.get(name);
    if (file === undefined) throw new CheckpointError(this.source, `no tensor ${JSON.stringify(name)}`);
    return file;
  }

  info(name: string): TensorInfo {
    return this.shard(name).file.info(name);
  }

  /**
   * Checks that a tensor can fill a parameter of the given shape: present, same shape,
   * a float format. Throws naming the file and the tensor.
   */
  check(name: string, shape: readonly number[]): void {
    if (!this.has(name)) {
      throw new CheckpointError(this.source, `missing tensor ${JSON.stringify(name)} (the config asks for it; ${this.where.size} tensors in the checkpoint)`);
    }
    const info = this.info(name);
    const file = this.fileOf(name);
    if (!sameShape(info.shape, shape)) {
      throw new SafetensorsError(file, `shape ${formatShape(info.shape)} does not match ${formatShape(shape)} expected from config.json`, name);
    }
    if (info.dtype === null || !FLOAT_DTYPES.includes(info.dtype)) {
      throw new SafetensorsError(file, `dtype ${info.format} cannot hold model weights (F32, BF16 or F16)`, name);
    }
  }

  /** Copies a tensor into `dst` (contiguous, same shape; dtype converted). Call check() first. */
  readInto(name: string, dst: Tensor): void {
    this.check(name, dst.shape);
    if (!dst.isContiguous()) throw new Error(`readInto: destination for ${name} is not contiguous`);
    const shard = this.shard(name);
    const info = shard.file.info(name);
    const src = info.dtype!;
    const elemBytes = DTYPE_BYTES[src];
    const backend = dst.backend;
    const chunkElems = Math.max(1, Math.floor(CHUNK_BYTES / elemBytes));
    this.host ??= new Uint8Array(CHUNK_BYTES);
    const host = this.host;
    const staging = src === dst.dtype ? null : this.stagingFor(backend, src, chunkElems);
    let done = 0;
    while (done < info.byteLength) {
      const want = Math.min(host.length, info.byteLength - done);
      readFully(shard, name, host, want, info.fileOffset + done, done, info.byteLength);
      const bytes = host.subarray(0, want);
      if (staging === null) {
        backend.write(dst.storage.buffer, dst.byteOffset + done, bytes, src);
      } else {
        const n = want / elemBytes;
        backend.write(staging.storage.buffer, 0, bytes, src);
        const from = view(staging, [n], [1], 0);
        const to = view(dst, [n], [1], dst.offset + done / elemBytes);
        try {
          kernel(backend, 'copy')(from, to);
        } finally {
          from.dispose();
          to.dispose();
        }
      }
      done += want;
    }
  }

  private stagingFor(backend: Backend, dtype: DType, elems: number): Tensor {
    const key = `${backend.name}:${dtype}`;
    let t = this.staging.get(key);
    if (t === undefined || t.backend !== backend) {
      t?.dispose();
      t = keep(empty([elems], dtype, backend));
      this.staging.set(key, t);
    }
    return t;
  }

  close(): void {
    for (const s of this.shards.values()) closeShard(s);
    for (const t of this.staging.values()) t.dispose();
    this.staging.clear();
    this.host = null;
  }

  private shard(name: string): Shard {
    return this.shards.get(this.fileOf(name))!;
  }
}

function openShard(file: string): Shard {
  const st = SafetensorsFile.open(file);
  try {
    return { file: st, fd: fs.openSync(file, 'r') };
  } catch (e) {
    st.close();
    throw new SafetensorsError(file, `cannot open: ${e instanceof Error ? e.message : String(e)}`);
  }
}

function closeShard(s: Shard): void {
  s.file.close();
  fs.closeSync(s.fd);
}

function readFully(shard: Shard, name: string, buf: Uint8Array, length: number, position: number, before: number, total: number): void {
  let got = 0;
  while (got < length) {
    let n: number;
    try {
      n = fs.readSync(shard.fd, buf, got, length - got, position + got);
    } catch (e) {
      throw new SafetensorsError(shard.file.path, `read failed: ${e instanceof Error ? e.message : String(e)}`, name);
    }
    if (n === 0) throw new SafetensorsError(shard.file.path, `file ended after ${before + got} of ${total} bytes (truncated while loading?)`, name);
    got += n;
  }
}
