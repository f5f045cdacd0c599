// Tensor creation: from host data, constants, and seeded random values.
import type { Backend } from '../backend/backend.js';
import { defaultBackend, getBackend } from '../backend/registry.js';
import { kernel } from '../backend/backend.js';
import { type DType, encode } from '../tensor/dtype.js';
import { checkShape, formatShape, numel, type Shape } from '../tensor/shape.js';
import { empty, type Tensor } from '../tensor/tensor.js';
import { Rng } from '../tensor/rng.js';

export interface TensorOptions {
  dtype?: DType;
  /** A backend name ('cpu', 'reference', 'cuda') or instance; default: the default backend. */
  device?: string | Backend;
  requiresGrad?: boolean;
  name?: string;
}

export function resolveBackend(device: string | Backend | undefined): Backend {
  if (device === undefined) return defaultBackend();
  return typeof device === 'string' ? getBackend(device) : device;
}

function finish(t: Tensor, opts: TensorOptions): Tensor {
  if (opts.requiresGrad) t.requiresGrad = true;
  if (opts.name) t.name = opts.name;
  return t;
}

/** A tensor holding `data` (row-major) with the given shape. */
export function tensor(data: ArrayLike<number>, shape: Shape, opts: TensorOptions = {}): Tensor {
  checkShape(shape, 'tensor');
  const n = numel(shape);
  if (data.length !== n) throw new Error(`tensor: ${data.length} values do not fill shape ${formatShape(shape)} (${n} elements)`);
  const dtype = opts.dtype ?? 'f32';
  const backend = resolveBackend(opts.device);
  const t = empty(shape, dtype, backend);
  if (n > 0) backend.write(t.storage.buffer, 0, encode(dtype, data), dtype);
  return finish(t, opts);
}

/** A one-element tensor of shape []. */
export function scalar(value: number, opts: TensorOptions = {}): Tensor {
  return tensor([value], [], opts);
}

export function full(shape: Shape, value: number, opts: TensorOptions = {}): Tensor {
  checkShape(shape, 'full');
  const backend = resolveBackend(opts.device);
  const t = empty(shape, opts.dtype ?? 'f32', backend);
  if (t.size > 0) kernel(backend, 'fill')(t, value);
  return finish(t, opts);
}

export function zeros(shape: Shape, opts: TensorOptions = {}): Tensor {
  return full(shape, 0, opts);
}

export function ones(shape: Shape, opts: TensorOptions = {}): Tensor {
  return full(shape, 1, opts);
}

/** Normal(0, std) values from a seeded generator (the same values on every backend). */
export function randn(shape: Shape, rng: Rng, opts: TensorOptions & { std?: number } = {}): Tensor {
  const std = opts.std ?? 1;
  const data = new Float32Array(numel(shape));
  for (let i = 0; i < data.length; i++) data[i] = rng.normal() * std;
  return tensor(data, shape, opts);
}

/** Uniform(low, high) values from a seeded generator. */
export function uniform(shape: Shape, low: number, high: number, rng: Rng, opts: TensorOptions = {}): Tensor {
  const data = new Float32Array(numel(shape));
  for (let i = 0; i < data.length; i++) data[i] = low + (high - low) * rng.next();
  return tensor(data, shape, opts);
}
