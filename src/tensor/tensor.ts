// Tensor: a handle (shape, strides, offset, dtype) onto backend-owned storage.
// Views share storage; storage is reference counted and freed deterministically when
// the last tensor over it is disposed, by dispose() or by the scope() it was made in.
//
// Scopes know the autograd graph (as PyTorch frees what backward will not read): when
// a scope ends, a tensor it made that is not returned is freed at once unless a record
// reachable from a returned tensor saved it (its backward reads the data). A saved one
// is handed to the graph: it moves to the enclosing scope, marked graphHeld, and
// backward frees it as soon as the last record that saved it has run. One that is only
// an edge of the graph (gradients flow through it, nobody reads it) loses its data but
// keeps its record, so backward still routes through it; its handle moves to the
// enclosing scope as well, which disposes it.
import type { Backend, BackendBuffer } from '../backend/backend.js';
import { type DType, DTYPE_BYTES, decode, type HostArray } from './dtype.js';
import { contiguousStrides, formatShape, isContiguous, numel, type Shape } from './shape.js';

export class Storage {
  private refs = 0;
  constructor(readonly backend: Backend, readonly buffer: BackendBuffer) {}
  retain(): void {
    this.refs++;
  }
  release(): void {
    if (--this.refs === 0) this.backend.free(this.buffer);
  }
  get alive(): boolean {
    return this.refs > 0;
  }
  /** More than one tensor (a view) holds this storage. */
  get shared(): boolean {
    return this.refs > 1;
  }
}

/** The autograd record of the op that produced a tensor (see autograd/tape.ts). */
export interface GradFn {
  readonly name: string;
  /** The graph's edges: each gets the matching entry of backward's result. */
  readonly inputs: readonly Tensor[];
  /** The tensors whose data backward reads; the only ones a scope keeps for it. */
  readonly saved: readonly Tensor[];
  /**
   * Gradients for each input (null where the input needs none), given the output's
   * gradient. `into[k]`, when given and not null, is input k's pending gradient, which
   * backward may add its own into (+=) and return as input k's gradient instead of a new
   * tensor (a product written with accumulation saves the add; see autograd/tape.ts).
   * `owned` says that no one else holds or reads `grad`: backward may write into it,
   * or return it as an input's gradient.
   */
  backward(grad: Tensor, into?: readonly (Tensor | null)[], owned?: boolean): (Tensor | null)[];
}

let nextId = 1;

export class Tensor {
  readonly id = nextId++;
  readonly strides: readonly number[];
  requiresGrad = false;
  grad: Tensor | null = null;
  gradFn: GradFn | null = null;
  /** A name for messages and parameter tables. */
  name = '';
  /** How many live records (gradFn.saved) read this tensor's data in backward. */
  savedBy = 0;
  /** A scope gave this tensor up while a record still saved it: backward frees it after its last reader ran. */
  graphHeld = false;
  /** Passed to keep(): no scope disposes it (scopes skip it instead of searching their lists). */
  kept = false;
  /** The number of the last graph walk (autograd/tape.ts topoOrder) that reached this tensor. */
  visitMark = 0;
  /** The storage is released (the handle may still be a graph edge). */
  private freed = false;
  private disposed = false;

  constructor(
    readonly storage: Storage,
    readonly shape: Shape,
    readonly dtype: DType,
    strides?: readonly number[],
    readonly offset = 0,
  ) {
    this.strides = strides ?? contiguousStrides(shape);
    storage.retain();
    trackInScope(this);
  }

  get backend(): Backend {
    return this.storage.backend;
  }
  get rank(): number {
    return this.shape.length;
  }
  get size(): number {
    return numel(this.shape);
  }
  get isDisposed(): boolean {
    return this.freed;
  }
  isContiguous(): boolean {
    return isContiguous(this.shape, this.strides);
  }

  /** Byte offset of the first element within the storage buffer. */
  get byteOffset(): number {
    return this.offset * DTYPE_BYTES[this.dtype];
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.freeData();
    if (this.grad !== null) {
      this.grad.dispose();
      this.grad = null;
    }
    dropGradFn(this);
  }

  /**
   * Releases the storage but keeps the record: the tensor stays an edge that backward
   * routes gradients through (its shape and dtype), while reading its data throws.
   */
  freeData(): void {
    if (this.freed) return;
    this.freed = true;
    this.storage.release();
  }

  assertAlive(op: string): void {
    if (this.freed) throw new Error(`${op}: tensor${this.name ? ` '${this.name}'` : ''} ${formatShape(this.shape)} was disposed`);
  }

  /** Copies the values to the host (floats as Float32Array). Waits for queued work. */
  toArray(): HostArray {
    this.assertAlive('toArray');
    if (!this.isContiguous()) {
      // contiguous() lives in ops; a strided read goes through the copy kernel there.
      throw new Error('toArray: tensor is not contiguous; call contiguous(x) first');
    }
    const bytes = this.size * DTYPE_BYTES[this.dtype];
    return decode(this.dtype, this.backend.read(this.storage.buffer, this.byteOffset, bytes, this.dtype));
  }

  /** The single value of a one-element tensor. */
  item(): number {
    if (this.size !== 1) throw new Error(`item: tensor has ${this.size} elements, not 1`);
    return this.toArray()[0];
  }

  toString(): string {
    return `Tensor(${formatShape(this.shape)}, ${this.dtype}, ${this.backend.name})`;
  }
}

/**
 * Forgets t's record: its saved tensors lose a reader, and a graph-held one that has
 * none left loses its data at once (its handle stays with its scope, which disposes it).
 */
export function dropGradFn(t: Tensor): void {
  const fn = t.gradFn;
  if (fn === null) return;
  t.gradFn = null;
  for (const s of fn.saved) {
    s.savedBy--;
    if (s.savedBy === 0 && s.graphHeld) s.freeData();
  }
}

/** Allocates an uninitialised contiguous tensor. */
export function empty(shape: Shape, dtype: DType, backend: Backend): Tensor {
  const buf = backend.alloc(numel(shape) * DTYPE_BYTES[dtype]);
  return new Tensor(new Storage(backend, buf), [...shape], dtype);
}

/** A view over the same storage with another shape/strides/offset. */
export function view(x: Tensor, shape: Shape, strides: readonly number[], offset: number): Tensor {
  x.assertAlive('view');
  return new Tensor(x.storage, [...shape], x.dtype, [...strides], offset);
}

// ------------------------------------------------------------------ scopes

// Each open scope's tensors, in creation order. A tensor joins one list at a time (the
// innermost scope's, then the enclosing one's when it outlives that scope), so lists
// need no membership test; kept tensors are skipped when a scope ends.
const scopes: Tensor[][] = [];

function trackInScope(t: Tensor): void {
  const top = scopes[scopes.length - 1];
  if (top !== undefined) top.push(t);
}

function collectTensors(value: unknown, out: Set<Tensor>, seen: Set<unknown>): void {
  if (value instanceof Tensor) {
    out.add(value);
    return;
  }
  if (value === null || typeof value !== 'object' || seen.has(value)) return;
  seen.add(value);
  if (Array.isArray(value)) for (const v of value) collectTensors(v, out, seen);
  else if (value instanceof Map) for (const v of value.values()) collectTensors(v, out, seen);
  else if (Object.getPrototypeOf(value) === Object.prototype) for (const v of Object.values(value)) collectTensors(v, out, seen);
}

/**
 * The part of the graph made since tensor id `firstId` that the survivors reach
 * (tensors older than the scope were handled by their own scopes), and the tensors its
 * records saved.
 */
function reachedGraph(survivors: ReadonlySet<Tensor>, firstId: number): { reached: Set<Tensor>; saved: Set<Tensor> } {
  const reached = new Set<Tensor>();
  const saved = new Set<Tensor>();
  const stack = [...survivors];
  while (stack.length > 0) {
    const t = stack.pop()!;
    if (reached.has(t)) continue;
    reached.add(t);
    const fn = t.gradFn;
    if (fn === null) continue;
    for (const s of fn.saved) saved.add(s);
    for (const i of fn.inputs) if (i.id >= firstId && !reached.has(i)) stack.push(i);
  }
  return { reached, saved };
}

/**
 * Runs fn and disposes every tensor created inside it, except those it returns
 * (directly or in arrays/plain objects/maps) and those passed to keep(). Returned
 * tensors move to the enclosing scope. Scopes nest. A tensor that a record reachable
 * from a returned tensor saved moves to the enclosing scope too, graph-held, until
 * backward has read it; one the graph only passes through keeps its record but not
 * its data (see the file header).
 */
export function scope<T>(fn: () => T): T {
  const tracked: Tensor[] = [];
  const firstId = nextId;
  scopes.push(tracked);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    scopes.pop();
    for (const t of tracked) if (!t.kept) t.dispose();
    throw e;
  }
  scopes.pop();
  const survivors = new Set<Tensor>();
  // Most scopes return one tensor: no walk of the result, no set of visited containers.
  if (result instanceof Tensor) survivors.add(result);
  else collectTensors(result, survivors, new Set());
  const { reached, saved } = reachedGraph(survivors, firstId);
  // Unreached tensors go first: their records stop counting as readers of what they saved.
  const rest: Tensor[] = [];
  for (const t of tracked) {
    if (t.kept) continue;
    if (survivors.has(t) || reached.has(t) || saved.has(t)) rest.push(t);
    else t.dispose();
  }
  for (const t of rest) {
    if (survivors.has(t)) {
      trackInScope(t);
    } else if (saved.has(t)) {
      t.graphHeld = true;
      trackInScope(t);
    } else if (reached.has(t)) {
      // The handle stays with the enclosing scope, which drops its record (and a leaf's
      // gradient) when backward never ran.
      t.freeData();
      trackInScope(t);
    }
  }
  return result;
}

/** Removes a tensor from every open scope, so it outlives them (parameters, state). */
export function keep<T extends Tensor>(t: T): T {
  t.kept = true;
  return t;
}
