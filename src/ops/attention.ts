// Scaled dot-product attention, as torch.nn.functional.scaled_dot_product_attention with
// grouped-query heads (Ainslie et al. 2023; Hugging Face's repeat_kv): query head h
// reads kv head h / (Hq / Hkv). With causal, the T queries are the last T of the S
// key positions (query t sees key s when s <= t + S - T), which is what a KV-cached
// decode step needs. An optional key padding mask [B, S] (nonzero = attend) hides
// keys, e.g. left padding. A query row that sees no key at all gives zeros (PyTorch
// would give NaN) and passes no gradient.
//
// Backends compute it flash-style (no T x S matrix) and save only the per-row
// log-sum-exp; backward recomputes the probabilities from it.
//
// q, k, v, the output and the gradients are in the op's compute dtype T: bf16 when q, k
// and v are all bf16 on a backend that computes in bf16, else f32 (others are widened);
// lse and the key mask are always f32.
//
// On a backend with stridedAttention, q, k, v and the output gradient go to the kernels
// as they are when they are of dtype T with a contiguous last axis (a model's heads are
// transposed views of its [B, T, H, D] projections), and the output and the input
// gradients are made in the memory order of q, k and v, so a model's transposes around
// attention cost no copies either way. Other backends get contiguous tensors.
import { kernel } from '../backend/backend.js';
import { record } from '../autograd/tape.js';
import { contiguousStrides, formatShape } from '../tensor/shape.js';
import { empty, type Tensor, view } from '../tensor/tensor.js';
import { assertDtype, type ComputeDType, computeDtype, sameBackend, withF32Contiguous } from './util.js';

/** x itself when the kernels can read it (dtype T; contiguous, or a unit stride on the last axis where strides are taken), else a contiguous copy in T. */
function readable(x: Tensor, dtype: ComputeDType, temps: Tensor[]): Tensor {
  const strided = x.backend.stridedAttention === true;
  if (x.dtype === dtype && (x.isContiguous() || (strided && (x.strides[3] === 1 || x.shape[3] === 1)))) return x;
  const c = empty(x.shape, dtype, x.backend);
  kernel(x.backend, 'copy')(x, c);
  temps.push(c);
  return c;
}

/**
 * A fresh [B, H, T, D] tensor of dtype T laid out in like's memory order (its first
 * three axes by decreasing stride, D innermost): for a transposed view of [B, T, H, D],
 * a transposed view of a fresh [B, T, H, D] buffer. Contiguous where strides are not taken.
 */
function emptyInLayoutOf(like: Tensor, dtype: ComputeDType): Tensor {
  if (like.backend.stridedAttention !== true) return empty(like.shape, dtype, like.backend);
  const order = [0, 1, 2].sort((a, b) => like.strides[b] - like.strides[a] || a - b);
  const dense = [...order.map((a) => like.shape[a]), like.shape[3]];
  const denseStrides = contiguousStrides(dense);
  const strides = [0, 0, 0, 1];
  order.forEach((axis, k) => (strides[axis] = denseStrides[k]));
  const buffer = empty(dense, dtype, like.backend);
  const out = view(buffer, like.shape, strides, 0);
  buffer.dispose();
  return out;
}

/** Runs fn with q, k, v (and more) as the kernels read them; copies made for it are freed after. */
function withReadable<T>(dtype: ComputeDType, xs: Tensor[], fn: (...ys: Tensor[]) => T): T {
  const temps: Tensor[] = [];
  try {
    return fn(...xs.map((x) => readable(x, dtype, temps)));
  } finally {
    for (const t of temps) t.dispose();
  }
}

export interface AttentionOptions {
  /** Causal masking with the queries at the end of the key sequence. */
  causal: boolean;
  /** Softmax scale; default 1/sqrt(head_dim). */
  scale?: number;
  /** [B, S], nonzero where a key may be attended (an attention_mask); any dtype. */
  keyMask?: Tensor | null;
}

/**
 * softmax(q kᵀ * scale + mask) v for q [B, Hq, T, D], k and v [B, Hkv, S, D]; the
 * output is [B, Hq, T, D] in the compute dtype of q, k and v.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Tensor {
  const keyMask = opts.keyMask ?? null;
  sameBackend('attention', q, k, v, ...(keyMask ? [keyMask] : []));
  for (const [t, name] of [[q, 'q'], [k, 'k'], [v, 'v']] as const) {
    if (t.rank !== 4) throw new Error(`attention: ${name} must be [batch, heads, seq, head_dim], got ${formatShape(t.shape)}`);
    assertDtype('attention', t, ['f32', 'bf16', 'f16'], name);
  }
  const [B, Hq, T, D] = q.shape;
  const [Bk, Hkv, S, Dk] = k.shape;
  if (Bk !== B || Dk !== D || v.shape.some((d, i) => d !== k.shape[i])) {
    throw new Error(`attention: q ${formatShape(q.shape)}, k ${formatShape(k.shape)} and v ${formatShape(v.shape)} do not agree on batch, heads or head_dim`);
  }
  if (Hkv === 0 || Hq % Hkv !== 0) throw new Error(`attention: query heads (${Hq}) must be a multiple of kv heads (${Hkv})`);
  if (keyMask && (keyMask.rank !== 2 || keyMask.shape[0] !== B || keyMask.shape[1] !== S)) {
    throw new Error(`attention: keyMask must be [${B}, ${S}], got ${formatShape(keyMask.shape)}`);
  }
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  if (!Number.isFinite(scale)) throw new Error(`attention: scale must be finite, got ${scale}`);
  const attrs = { scale, causal: opts.causal };
  const backend = q.backend;
  const dtype = computeDtype(backend, q, k, v);
  const out = emptyInLayoutOf(q, dtype);
  const lse = empty([B, Hq, T], 'f32', backend);
  const masks = keyMask ? [keyMask] : [];
  if (out.size > 0) {
    withF32Contiguous(masks, (mc) =>
      withReadable(dtype, [q, k, v], (qc, kc, vc) => kernel(backend, 'attention')(qc, kc, vc, mc ?? null, out, lse, attrs)),
    );
  } else if (lse.size > 0) {
    kernel(backend, 'fill')(lse, -Infinity);
  }
  const y = record(out, 'attention', [q, k, v], (g) => {
    const dq = emptyInLayoutOf(q, dtype), dk = emptyInLayoutOf(k, dtype), dv = emptyInLayoutOf(v, dtype);
    if (out.size > 0) {
      withF32Contiguous(masks, (mc) =>
        withReadable(dtype, [q, k, v, g], (qc, kc, vc, gc) =>
          kernel(backend, 'attentionBackward')(qc, kc, vc, mc ?? null, out, lse, gc, dq, dk, dv, attrs),
        ),
      );
    } else {
      for (const t of [dq, dk, dv]) if (t.size > 0) kernel(backend, 'fill')(t, 0);
    }
    return [dq, dk, dv].map((t, i) => {
      if ([q, k, v][i].requiresGrad) return t;
      t.dispose();
      return null;
    });
  }, [q, k, v, out, lse, ...masks]);
  // lse is only needed by backward
  if (y.gradFn === null) lse.dispose();
  return y;
}
