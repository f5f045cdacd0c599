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
import { kernel } from '../backend/backend.js';
import { record } from '../autograd/tape.js';
import { formatShape } from '../tensor/shape.js';
import { empty, type Tensor } from '../tensor/tensor.js';
import { assertDtype, sameBackend, withF32Contiguous } from './util.js';

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
 * output is f32 [B, Hq, T, D].
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
  const out = empty(q.shape, 'f32', backend);
  const lse = empty([B, Hq, T], 'f32', backend);
  const masks = keyMask ? [keyMask] : [];
  if (out.size > 0) {
    withF32Contiguous([q, k, v, ...masks], (qc, kc, vc, mc) =>
      kernel(backend, 'attention')(qc, kc, vc, mc ?? null, out, lse, attrs),
    );
  } else if (lse.size > 0) {
    kernel(backend, 'fill')(lse, -Infinity);
  }
  const y = record(out, 'attention', [q, k, v], (g) => {
    const dq = empty(q.shape, 'f32', backend), dk = empty(k.shape, 'f32', backend), dv = empty(v.shape, 'f32', backend);
    if (out.size > 0) {
      withF32Contiguous([q, k, v, g, ...masks], (qc, kc, vc, gc, mc) =>
        kernel(backend, 'attentionBackward')(qc, kc, vc, mc ?? null, out, lse, gc, dq, dk, dv, attrs),
      );
    } else {
      for (const t of [dq, dk, dv]) if (t.size > 0) kernel(backend, 'fill')(t, 0);
    }
    return [dq, dk, dv].map((t, i) => {
      if ([q, k, v][i].requiresGrad) return t;
      t.dispose();
      return null;
    });
  });
  // lse is only needed by backward
  if (y.gradFn === null) lse.dispose();
  return y;
}
