// Matrix products: matmul (NumPy-style batched, with transposition flags) and linear
// (Hugging Face / PyTorch layout: y = x @ weightᵀ + bias, weight [out, in]).
//
// Both end in the backend's single-batch-axis GEMM kernel (kernels.ts, `matmul`). This
// file decides how a product reaches it: a rank-2 b with batch dims on a that merge into
// the row axis becomes one large GEMM (the Linear layer case x[B, T, in] @ Wᵀ); other
// batch dims are broadcast by stride 0 and flattened onto the kernel's batch axis when
// the strides allow, else the product loops over the leading batch entries that do not
// flatten. Operands are passed as views: transposition costs no copy.
//
// Dtypes (the kernel takes a f32 with b f32 or bf16 into f32 out, or a, b and out all
// bf16 on a backend that computes in bf16 — tensor cores, f32 accumulation): a bf16 a
// with a bf16 b gives bf16 there; a bf16 a with an f32 b (a LoRA weight) is widened, and
// the product is f32, as everywhere on a backend without bf16 compute.
//
// Gradients (C = op(A) op(B), G = dC):
//   d op(A) = G op(B)ᵀ,  d op(B) = op(A)ᵀ G,
// summed over broadcast batch dims. When b has no batch of its own, d op(B) is one GEMM
// whose inner dimension runs over every row of every batch entry.
import { kernel } from '../backend/backend.js';
import { record } from '../autograd/tape.js';
import { broadcastShapes, contiguousStrides, formatShape, numel, sameShape, type Shape } from '../tensor/shape.js';
import { empty, type Tensor, view } from '../tensor/tensor.js';
import { reshape, sumTo, transpose } from './view.js';
import { computeDtype, computesBf16, sameBackend } from './util.js';

export interface MatmulOptions {
  /** a is given as [..., K, M] and used transposed. */
  readonly transA?: boolean;
  /** b is given as [..., N, K] and used transposed. */
  readonly transB?: boolean;
}

interface Dims {
  readonly M: number;
  readonly N: number;
  readonly K: number;
  /** Broadcast batch shape of the output. */
  readonly batch: number[];
}

function describe(x: Tensor, trans: boolean): string {
  return `${formatShape(x.shape)}${trans ? 'ᵀ' : ''}`;
}

function checkOperands(op: string, a: Tensor, b: Tensor, transA: boolean, transB: boolean): Dims {
  sameBackend(op, a, b);
  if (a.rank < 2 || b.rank < 2) {
    throw new Error(`${op}: operands must have rank >= 2, got a ${formatShape(a.shape)} and b ${formatShape(b.shape)}`);
  }
  if (a.dtype !== 'f32' && a.dtype !== 'bf16') throw new Error(`${op}: a must be f32 or bf16, got ${a.dtype} (a ${formatShape(a.shape)})`);
  if (b.dtype !== 'f32' && b.dtype !== 'bf16') throw new Error(`${op}: b must be f32 or bf16, got ${b.dtype} (b ${formatShape(b.shape)})`);
  const ra = a.rank, rb = b.rank;
  const M = transA ? a.shape[ra - 1] : a.shape[ra - 2];
  const Ka = transA ? a.shape[ra - 2] : a.shape[ra - 1];
  const Kb = transB ? b.shape[rb - 1] : b.shape[rb - 2];
  const N = transB ? b.shape[rb - 2] : b.shape[rb - 1];
  if (Ka !== Kb) {
    throw new Error(`${op}: inner dimensions differ: a ${describe(a, transA)} has K = ${Ka}, b ${describe(b, transB)} has K = ${Kb}`);
  }
  let batch: number[];
  try {
    batch = broadcastShapes(a.shape.slice(0, ra - 2), b.shape.slice(0, rb - 2), op);
  } catch {
    throw new Error(`${op}: batch dimensions of a ${formatShape(a.shape)} and b ${formatShape(b.shape)} cannot be broadcast`);
  }
  return { M, N, K: Ka, batch };
}

/**
 * The single stride that walks dims [from, to) of (shape, strides) as one flattened
 * axis, or null when they are not laid out evenly. Size-1 dims never matter.
 */
function mergedStride(shape: Shape, strides: readonly number[], from: number, to: number): number | null {
  let stride: number | null = null;
  let span = 1;
  for (let d = to - 1; d >= from; d--) {
    if (shape[d] === 1) continue;
    if (stride === null) stride = strides[d];
    else if (strides[d] !== stride * span) return null;
    span *= shape[d];
  }
  return stride ?? 0;
}

/** Whether one of x's last two axes has unit stride (the kernel contract). */
function hasUnitInner(x: Tensor): boolean {
  const r = x.rank;
  return x.strides[r - 1] === 1 || x.shape[r - 1] === 1 || x.strides[r - 2] === 1 || x.shape[r - 2] === 1;
}

/** x with a copy when neither of its last two axes has unit stride. */
function unitInner(x: Tensor, temps: Tensor[]): Tensor {
  if (hasUnitInner(x)) return x;
  const c = empty(x.shape, x.dtype, x.backend);
  kernel(x.backend, 'copy')(x, c);
  temps.push(c);
  return c;
}

/** Strides of x's batch dims broadcast to `batch` (0 where x has size 1 or no dim). */
function batchStrides(x: Tensor, batch: readonly number[]): number[] {
  const lead = batch.length - (x.rank - 2);
  return batch.map((d, i) => {
    const k = i - lead;
    if (k < 0 || x.shape[k] === 1) return 0;
    return x.strides[k];
  });
}

/**
 * out = alpha * op(a) op(b) (+ out when accumulate), out contiguous [...batch, M, N].
 * No autograd record.
 */
function gemmInto(a: Tensor, b: Tensor, out: Tensor, transA: boolean, transB: boolean, dims: Dims, accumulate: boolean): void {
  const { M, N, batch } = dims;
  const run = kernel(out.backend, 'matmul');
  const attrs = { transA, transB, alpha: 1, accumulate };
  // Two matrices the kernel takes as they are (most products of a backward pass): no
  // views, no temporaries.
  if (a.rank === 2 && b.rank === 2 && hasUnitInner(a) && hasUnitInner(b)) {
    if (M > 0 && N > 0) run(a, b, out, attrs);
    return;
  }
  const temps: Tensor[] = [];
  const views: Tensor[] = [];
  const mk = (x: Tensor, shape: number[], strides: number[], offset: number) => {
    // A rank-2 operand is its own single-matrix view (the weight of every linear).
    if (x.rank === 2 && offset === x.offset && sameShape(shape, x.shape) && strides[0] === x.strides[0] && strides[1] === x.strides[1]) return x;
    const v = view(x, shape, strides, offset);
    views.push(v);
    return v;
  };
  try {
    const A = unitInner(a, temps), B = unitInner(b, temps);
    const ra = A.rank, rb = B.rank;
    const aInner = A.shape.slice(ra - 2), aInnerStrides = A.strides.slice(ra - 2);
    const bInner = B.shape.slice(rb - 2), bInnerStrides = B.strides.slice(rb - 2);
    const P = numel(batch);
    if (P === 0 || M === 0 || N === 0) return;

    // b has no batch of its own: fold a's batch dims into the rows of one GEMM when its
    // layout allows (x[B, T, in] @ Wᵀ is one [B*T, in] x [in, out] product).
    const mAxis = transA ? ra - 1 : ra - 2;
    const foldStride = numel(B.shape.slice(0, rb - 2)) === 1 && !transA ? mergedStride(A.shape, A.strides, 0, mAxis + 1) : null;
    if (P > 1 && foldStride !== null && numel(A.shape.slice(0, ra - 2)) === P) {
      const a2 = mk(A, [P * M, aInner[1]], [foldStride, aInnerStrides[1]], A.offset);
      const b2 = mk(B, bInner, bInnerStrides, B.offset);
      const o2 = mk(out, [P * M, N], [N, 1], out.offset);
      run(a2, b2, o2, attrs);
      return;
    }
    if (batch.length === 0) {
      run(mk(A, aInner, aInnerStrides, A.offset), mk(B, bInner, bInnerStrides, B.offset), out, attrs);
      return;
    }
    // The longest suffix of batch dims that flattens to one stride for both operands
    // goes to the kernel's batch axis; the remaining leading dims are looped over.
    const as = batchStrides(A, batch), bs = batchStrides(B, batch);
    let split = 0;
    while (split < batch.length && (mergedStride(batch, as, split, batch.length) === null || mergedStride(batch, bs, split, batch.length) === null)) split++;
    const inner = numel(batch.slice(split));
    const asInner = mergedStride(batch, as, split, batch.length) ?? 0;
    const bsInner = mergedStride(batch, bs, split, batch.length) ?? 0;
    const outer = batch.slice(0, split);
    const outerCount = numel(outer);
    const counter = new Array<number>(split).fill(0);
    for (let i = 0; i < outerCount; i++) {
      let ao = A.offset, bo = B.offset, oo = out.offset;
      let ostride = inner * M * N;
      for (let d = split - 1; d >= 0; d--) {
        ao += counter[d] * as[d];
        bo += counter[d] * bs[d];
        oo += counter[d] * ostride;
        ostride *= batch[d];
      }
      const a3 = mk(A, [inner, ...aInner], [asInner, ...aInnerStrides], ao);
      const b3 = mk(B, [inner, ...bInner], [bsInner, ...bInnerStrides], bo);
      const o3 = mk(out, [inner, M, N], [M * N, N, 1], oo);
      run(a3, b3, o3, attrs);
      for (let d = split - 1; d >= 0; d--) {
        if (++counter[d] < batch[d]) break;
        counter[d] = 0;
      }
    }
  } finally {
    for (const v of views) v.dispose();
    for (const t of temps) t.dispose();
  }
}

/** The output dtype of op(a) op(b): bf16 for two bf16 operands where the backend computes in bf16, else f32. */
function productDtype(a: Tensor, b: Tensor): 'f32' | 'bf16' {
  return computeDtype(a.backend, a, b);
}

/** a as the kernel's a operand for an output of `dtype`: widened to f32 unless the product is bf16. */
function asOperandA(a: Tensor, dtype: 'f32' | 'bf16', temps: Tensor[]): Tensor {
  if (a.dtype === dtype) return a;
  const c = empty(a.shape, 'f32', a.backend);
  kernel(a.backend, 'copy')(a, c);
  temps.push(c);
  return c;
}

/**
 * op(a) op(b) into a new tensor, or added into `into` (+=, returned) when given and it
 * has the product's shape and dtype and a contiguous layout.
 */
function product(op: string, a: Tensor, b: Tensor, transA: boolean, transB: boolean, into: Tensor | null = null): Tensor {
  const dims = checkOperands(op, a, b, transA, transB);
  const dtype = productDtype(a, b);
  if (into !== null && into.dtype === dtype && into.rank === dims.batch.length + 2 && into.shape[into.rank - 2] === dims.M &&
    into.shape[into.rank - 1] === dims.N && dims.batch.every((d, i) => into.shape[i] === d) && into.isContiguous()) {
    const temps: Tensor[] = [];
    try {
      if (dims.K > 0) gemmInto(asOperandA(a, dtype, temps), b, into, transA, transB, dims, true);
    } finally {
      for (const t of temps) t.dispose();
    }
    return into;
  }
  const out = empty([...dims.batch, dims.M, dims.N], dtype, a.backend);
  const temps: Tensor[] = [];
  try {
    if (dims.K === 0) kernel(out.backend, 'fill')(out, 0);
    else gemmInto(asOperandA(a, dtype, temps), b, out, transA, transB, dims, false);
  } finally {
    for (const t of temps) t.dispose();
  }
  return out;
}

/** The op(A) shape of a: its own shape, last two axes swapped when transposed. */
function opShape(x: Tensor, trans: boolean): number[] {
  const s = [...x.shape];
  if (trans) [s[s.length - 2], s[s.length - 1]] = [s[s.length - 1], s[s.length - 2]];
  return s;
}

/**
 * d a for C = op(a) op(b) with output gradient g (no record); added into `into` (a's
 * pending gradient, returned) when the product has its shape.
 */
function gradA(g: Tensor, a: Tensor, b: Tensor, transA: boolean, transB: boolean, into: Tensor | null = null): Tensor {
  // b in the kernel's a slot is fine when it is f32, or bf16 with a bf16 product.
  if (transA && (b.dtype === 'f32' || (b.dtype === 'bf16' && g.dtype === 'bf16' && computesBf16(b.backend)))) {
    // d a = (G op(B)ᵀ)ᵀ = op(B) Gᵀ, computed in a's own layout.
    return reduceTo(product('matmul backward', b, g, transB, true, into), a.shape);
  }
  // A bf16 b with an f32 g goes in the kernel's b slot: d op(A), then a transposed view.
  const dop = reduceTo(product('matmul backward', g, b, false, !transB, transA ? null : into), opShape(a, transA));
  if (!transA) return dop;
  const d = transpose(dop);
  dop.dispose();
  return d;
}

/** sumTo that frees the unreduced gradient when it made a new one. */
function reduceTo(d: Tensor, shape: Shape): Tensor {
  const r = sumTo(d, shape);
  if (r !== d) d.dispose();
  return r;
}

/** x itself when it has the shape already (a rank-2 operand), else reshape(x, shape). */
function reshapedTo(x: Tensor, shape: Shape): Tensor {
  return sameShape(x.shape, shape) ? x : reshape(x, shape);
}

/** d b for C = op(a) op(b) with output gradient g (no record). */
function gradB(g: Tensor, a: Tensor, b: Tensor, transA: boolean, transB: boolean): Tensor {
  const ownBatch = numel(b.shape.slice(0, b.rank - 2));
  const M = transA ? a.shape[a.rank - 1] : a.shape[a.rank - 2];
  const rows = g.size / g.shape[g.rank - 1];
  if (ownBatch === 1 && rows > M) {
    // b is shared by every batch entry: one GEMM over all rows, no per-entry partials.
    const K = transA ? a.shape[a.rank - 2] : a.shape[a.rank - 1];
    const at = transA ? transpose(a) : a;
    const a2 = reshapedTo(at, [rows, K]);
    const g2 = reshapedTo(g, [rows, g.shape[g.rank - 1]]);
    const d2 = transB ? product('matmul backward', g2, a2, true, false) : product('matmul backward', a2, g2, true, false);
    const d = reshapedTo(d2, b.shape);
    for (const t of [at, a2, g2, d2]) if (t !== d && t !== a && t !== g) t.dispose();
    return d;
  }
  // d op(B) = op(A)ᵀ G; with transB, d b = Gᵀ op(A) directly in b's layout.
  const d = transB ? product('matmul backward', g, a, true, transA) : product('matmul backward', a, g, !transA, false);
  return reduceTo(d, b.shape);
}

/**
 * Batched matrix product with NumPy broadcasting of the batch dims:
 * a [..., M, K] (or [..., K, M] with transA) times b [..., K, N] (or [..., N, K] with
 * transB) gives [...batch, M, N]. a and b are f32 or bf16 (see the dtypes above).
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const transA = opts.transA ?? false, transB = opts.transB ?? false;
  const out = product('matmul', a, b, transA, transB);
  return record(
    out,
    'matmul',
    [a, b],
    (g, into) => [a.requiresGrad ? gradA(g, a, b, transA, transB, into?.[0] ?? null) : null, b.requiresGrad ? gradB(g, a, b, transA, transB) : null],
    // d a reads b, d b reads a.
    [...(b.requiresGrad ? [a] : []), ...(a.requiresGrad ? [b] : [])],
  );
}

/**
 * A Linear layer in Hugging Face / PyTorch layout: y = x @ weightᵀ + bias, with x
 * [..., in], weight [out, in] (f32 or bf16) and bias [out]. The bias is written into
 * the output first and the product accumulated onto it, so it costs no extra pass.
 * The output is bf16 for bf16 x and weight where the backend computes in bf16, else f32.
 */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  if (x.rank < 1) throw new Error(`linear: x must have rank >= 1, got ${formatShape(x.shape)}`);
  if (weight.rank !== 2) throw new Error(`linear: weight must be [out, in], got ${formatShape(weight.shape)}`);
  const [outF, inF] = weight.shape;
  if (x.shape[x.rank - 1] !== inF) {
    throw new Error(`linear: x ${formatShape(x.shape)} has ${x.shape[x.rank - 1]} features, weight ${formatShape(weight.shape)} expects ${inF}`);
  }
  const b = bias ?? null;
  if (b !== null) {
    sameBackend('linear', x, b);
    if (b.rank !== 1 || b.shape[0] !== outF) throw new Error(`linear: bias must be [${outF}], got ${formatShape(b.shape)}`);
  }
  const x2 = x.rank === 1 ? reshapeView(x, [1, inF]) : x;
  const dims = checkOperands('linear', x2, weight, false, true);
  const outShape = [...x.shape.slice(0, -1), outF];
  const dtype = productDtype(x2, weight);
  const out = empty([...dims.batch, dims.M, dims.N], dtype, x.backend);
  const temps: Tensor[] = [];
  if (b !== null) {
    const bb = view(b, out.shape, out.shape.map((_, i) => (i === out.rank - 1 ? b.strides[0] : 0)), b.offset);
    kernel(out.backend, 'copy')(bb, out);
    bb.dispose();
  } else if (dims.K === 0) {
    kernel(out.backend, 'fill')(out, 0);
  }
  if (dims.K > 0) gemmInto(asOperandA(x2, dtype, temps), weight, out, false, true, dims, b !== null);
  for (const t of temps) t.dispose();
  if (x2 !== x) x2.dispose();
  const y = x.rank === 1 ? reshapeView(out, outShape) : out;
  if (y !== out) out.dispose();
  const inputs = b !== null ? [x, weight, b] : [x, weight];
  // dx reads the weight, dW reads x (a rank-1 x is kept: backward views it for its shape).
  const saved = [...(weight.requiresGrad || x.rank === 1 ? [x] : []), ...(x.requiresGrad ? [weight] : [])];
  return record(y, 'linear', inputs, (g, into) => {
    const g2 = x.rank === 1 ? reshapeView(g, [1, outF]) : g;
    const xs = x.rank === 1 ? reshapeView(x, [1, inF]) : x;
    let dx = x.requiresGrad ? gradA(g2, xs, weight, false, true, x.rank === 1 ? null : (into?.[0] ?? null)) : null;
    const dw = weight.requiresGrad ? gradB(g2, xs, weight, false, true) : null;
    if (x.rank === 1) {
      if (dx !== null) {
        const flat = reshapeView(dx, x.shape);
        dx.dispose();
        dx = flat;
      }
      g2.dispose();
      xs.dispose();
    }
    const grads: (Tensor | null)[] = [dx, dw];
    if (b !== null) grads.push(b.requiresGrad ? sumTo(g, b.shape) : null);
    return grads;
  }, saved);
}

/**
 * The gradients linear(x, weight) (no bias, x of rank >= 2) gives x and weight for the
 * output gradient g, without recording: for ops that fuse a step around the product.
 * dx reads only x's shape; dW reads x.
 */
export function linearGrads(g: Tensor, x: Tensor, weight: Tensor, wantX: boolean, wantW: boolean): [Tensor | null, Tensor | null] {
  if (x.rank < 2) throw new Error(`linearGrads: x must have rank >= 2, got ${formatShape(x.shape)}`);
  return [wantX ? gradA(g, x, weight, false, true) : null, wantW ? gradB(g, x, weight, false, true) : null];
}

/** A contiguous-layout view of a contiguous tensor (no record; used for rank-1 x). */
function reshapeView(x: Tensor, shape: Shape): Tensor {
  if (!x.isContiguous()) return reshape(x, shape);
  return view(x, shape, contiguousStrides(shape), x.offset);
}
