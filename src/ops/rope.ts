// Rotary position embedding (Su et al. 2021, "RoFormer") as Hugging Face transformers'
// Llama applies it: the rotate_half layout (element i of a head pairs with i + D/2),
// inv_freq[i] = 1 / theta^(2i/D), and the rope_scaling variants "linear" and "llama3"
// (Llama 3.1's frequency-dependent scaling).
//
// Hugging Face computes inv_freq and position * inv_freq in f32; here both are
// computed in f64 on the host and only cos/sin are rounded to f32, which is at least
// as accurate (the f32 product loses about 5e-4 rad at position 8000).
import { kernel } from '../backend/backend.js';
import { record } from '../autograd/tape.js';
import { formatShape } from '../tensor/shape.js';
import { empty, type Tensor } from '../tensor/tensor.js';
import { resolveBackend, tensor, type TensorOptions } from './creation.js';
import { computeDtype, sameBackend, withContiguousAs, withF32Contiguous } from './util.js';

/** config.json's rope_scaling (Hugging Face names; "type" is the older key for "rope_type"). */
export interface RopeScaling {
  rope_type?: string;
  type?: string;
  factor?: number;
  low_freq_factor?: number;
  high_freq_factor?: number;
  original_max_position_embeddings?: number;
}

/** The config.json fields rotary embedding reads (Hugging Face names). */
export interface RopeConfig {
  rope_theta?: number;
  head_dim?: number;
  hidden_size?: number;
  num_attention_heads?: number;
  rope_scaling?: RopeScaling | null;
}

function need(value: number | undefined, what: string): number {
  if (value === undefined || !Number.isFinite(value)) throw new Error(`ropeInvFreq: rope_scaling needs a numeric ${what}`);
  return value;
}

/**
 * inv_freq [D/2] for a model config, in f64: 1/theta^(2i/D) (theta = rope_theta,
 * default 10000; D = head_dim, default hidden_size / num_attention_heads), then
 * scaled as rope_scaling says:
 *   - none / "default": unchanged;
 *   - "linear": divided by factor (position interpolation);
 *   - "llama3": with wavelen = 2π / inv_freq, low = original_max / low_freq_factor and
 *     high = original_max / high_freq_factor wavelengths: wavelen < high keeps the
 *     frequency, wavelen > low divides it by factor, and in between it is blended with
 *     smooth = (original_max / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor):
 *     (1 - smooth) * inv / factor + smooth * inv.
 */
export function ropeInvFreq(config: RopeConfig): Float64Array {
  const theta = config.rope_theta ?? 10000;
  const dim =
    config.head_dim ??
    (config.hidden_size !== undefined && config.num_attention_heads !== undefined ? config.hidden_size / config.num_attention_heads : NaN);
  if (!Number.isInteger(dim) || dim <= 0 || dim % 2 !== 0) {
    throw new Error(`ropeInvFreq: head dimension must be a positive even integer, got ${dim} (set head_dim or hidden_size and num_attention_heads)`);
  }
  if (!(theta > 0)) throw new Error(`ropeInvFreq: rope_theta must be positive, got ${theta}`);
  const inv = Float64Array.from({ length: dim / 2 }, (_, i) => 1 / theta ** ((2 * i) / dim));
  const scaling = config.rope_scaling ?? null;
  const type = scaling === null ? 'default' : (scaling.rope_type ?? scaling.type ?? 'default');
  if (scaling === null || type === 'default') return inv;
  if (type === 'linear') {
    const factor = need(scaling.factor, 'factor');
    return inv.map((f) => f / factor);
  }
  if (type === 'llama3') {
    const factor = need(scaling.factor, 'factor');
    const lowFactor = need(scaling.low_freq_factor, 'low_freq_factor');
    const highFactor = need(scaling.high_freq_factor, 'high_freq_factor');
    const original = need(scaling.original_max_position_embeddings, 'original_max_position_embeddings');
    const lowWavelen = original / lowFactor;
    const highWavelen = original / highFactor;
    return inv.map((f) => {
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highWavelen) return f;
      if (wavelen > lowWavelen) return f / factor;
      const smooth = (original / wavelen - lowFactor) / (highFactor - lowFactor);
      return ((1 - smooth) * f) / factor + smooth * f;
    });
  }
  throw new Error(`ropeInvFreq: rope_scaling type '${type}' is not supported (default, linear, llama3)`);
}

export interface RotaryTables {
  /** cos(position * inv_freq) * attentionScaling, f32 [B or 1, T, D/2]. */
  cos: Tensor;
  sin: Tensor;
}

/**
 * cos and sin tables for the given positions: an Int32Array is one row of positions
 * shared by the batch ([1, T, D/2]); number[][] gives one row per sequence ([B, T, D/2],
 * e.g. for left-padded batches). Computed in f64, stored as f32.
 */
export function rotaryTables(
  invFreq: ArrayLike<number>,
  positions: Int32Array | readonly (readonly number[])[],
  opts: TensorOptions & { attentionScaling?: number } = {},
): RotaryTables {
  const rows: ArrayLike<number>[] = positions instanceof Int32Array ? [positions] : [...positions];
  if (rows.length === 0) throw new Error('rotaryTables: no position rows');
  const T = rows[0].length;
  rows.forEach((r, b) => {
    if (r.length !== T) throw new Error(`rotaryTables: position row ${b} has ${r.length} entries, row 0 has ${T}`);
  });
  const half = invFreq.length;
  const scaling = opts.attentionScaling ?? 1;
  const cos = new Float32Array(rows.length * T * half);
  const sin = new Float32Array(rows.length * T * half);
  rows.forEach((r, b) => {
    for (let t = 0; t < T; t++) {
      const pos = r[t];
      if (!Number.isInteger(pos)) throw new Error(`rotaryTables: position ${pos} (row ${b}, index ${t}) is not an integer`);
      for (let i = 0; i < half; i++) {
        const angle = pos * invFreq[i];
        cos[(b * T + t) * half + i] = Math.cos(angle) * scaling;
        sin[(b * T + t) * half + i] = Math.sin(angle) * scaling;
      }
    }
  });
  const device = resolveBackend(opts.device);
  const shape = [rows.length, T, half];
  return { cos: tensor(cos, shape, { device }), sin: tensor(sin, shape, { device }) };
}

/** x rotated in its compute dtype (bf16 x stays bf16 where the backend computes in bf16); cos and sin are f32. */
function rotate(x: Tensor, cos: Tensor, sin: Tensor, inverse: boolean): Tensor {
  const dtype = computeDtype(x.backend, x);
  const out = empty(x.shape, dtype, x.backend);
  if (x.size > 0) {
    withContiguousAs(dtype, [x], (xc) => withF32Contiguous([cos, sin], (cc, sc) => kernel(x.backend, 'rope')(xc, cc, sc, out, inverse)));
  }
  return out;
}

/**
 * Applies the rotation to x [B, T, H, D] (Hugging Face's rotate_half layout) with cos,
 * sin [B or 1, T, D/2] from rotaryTables. Backward rotates the gradient back; cos and
 * sin get no gradient.
 */
export function rope(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  sameBackend('rope', x, cos, sin);
  if (x.rank !== 4) throw new Error(`rope: x must be [batch, seq, heads, head_dim], got ${formatShape(x.shape)}`);
  const [B, T, , D] = x.shape;
  if (D % 2 !== 0) throw new Error(`rope: head_dim must be even, got ${D}`);
  for (const [t, name] of [[cos, 'cos'], [sin, 'sin']] as const) {
    if (t.rank !== 3 || (t.shape[0] !== 1 && t.shape[0] !== B) || t.shape[1] !== T || t.shape[2] !== D / 2) {
      throw new Error(`rope: ${name} must be [${B} or 1, ${T}, ${D / 2}] for x ${formatShape(x.shape)}, got ${formatShape(t.shape)}`);
    }
  }
  if (cos.shape[0] !== sin.shape[0]) throw new Error(`rope: cos ${formatShape(cos.shape)} and sin ${formatShape(sin.shape)} differ`);
  const out = rotate(x, cos, sin, false);
  // The rotation tables are read back; they are shared by every layer, so saving them costs nothing.
  return record(out, 'rope', [x, cos, sin], (g) => [rotate(g, cos, sin, true), null, null], [cos, sin]);
}
