// Greedy decoding with a KV cache, following transformers' generate(do_sample=False)
// for decoder-only models:
//   - a batch is left-padded; padding is masked out of attention and positions count
//     only real tokens (cumsum(mask) - 1, padding at position 1, as transformers sets it);
//   - the prompt is run once, then one token per step reads the cache;
//   - a row that produced an EOS token is finished: its later tokens are the pad id, and
//     decoding stops when every row is finished or maxNewTokens were produced.
import { noGrad } from '../autograd/tape.js';
import { tensor } from '../ops/creation.js';
import { scope } from '../tensor/tensor.js';
import type { LlamaForCausalLM } from './llama/model.js';

export interface GreedyOptions {
  maxNewTokens: number;
  /** 1 for a real token, 0 for left padding, per prompt position; default all ones. */
  attentionMask?: readonly (readonly number[])[];
  /** Tokens that finish a row (default: the config's eos ids). */
  eosTokenIds?: readonly number[];
  /** Written after a row finished (default: the config's pad id, else the first EOS id, else 0). */
  padTokenId?: number;
}

/**
 * Greedy continuation of equal-length (left-padded) prompts. Returns each row's prompt
 * followed by its new tokens; rows stop together, so all rows have the same length.
 */
export function greedyGenerate(model: LlamaForCausalLM, prompts: readonly (readonly number[])[], opts: GreedyOptions): number[][] {
  const B = prompts.length;
  if (B === 0) throw new Error('greedyGenerate: no prompts');
  const T0 = prompts[0].length;
  if (T0 === 0) throw new Error('greedyGenerate: empty prompt');
  prompts.forEach((p, b) => {
    if (p.length !== T0) throw new Error(`greedyGenerate: prompt ${b} has ${p.length} tokens, prompt 0 has ${T0} (left-pad to one length and pass attentionMask)`);
  });
  if (!Number.isInteger(opts.maxNewTokens) || opts.maxNewTokens < 0) throw new Error(`greedyGenerate: maxNewTokens must be a non-negative integer, got ${opts.maxNewTokens}`);
  const mask = (opts.attentionMask ?? prompts.map((p) => p.map(() => 1))).map((row) => [...row]);
  if (mask.length !== B || mask.some((row) => row.length !== T0 || row.some((m) => m !== 0 && m !== 1))) {
    throw new Error(`greedyGenerate: attentionMask must be ${B} rows of ${T0} zeros and ones`);
  }
  const eos = new Set(opts.eosTokenIds ?? model.config.eosTokenIds);
  const pad = opts.padTokenId ?? model.config.padTokenId ?? [...eos][0] ?? 0;
  const padded = mask.some((row) => row.includes(0));
  const sequences = prompts.map((p) => [...p]);
  if (opts.maxNewTokens === 0) return sequences;

  // transformers: position_ids = cumsum(mask) - 1, with 1 where the mask is 0.
  const next = mask.map((row) => row.reduce((a, m) => a + m, 0));
  let positions = mask.map((row) => {
    let seen = 0;
    return row.map((m) => (m === 0 ? 1 : seen++));
  });
  const finished = new Array<boolean>(B).fill(false);
  const cache = model.createCache(B, T0 + opts.maxNewTokens);
  try {
    let input = prompts.map((p) => [...p]);
    for (let step = 0; step < opts.maxNewTokens; step++) {
      const T = input[0].length;
      const logits = noGrad(() =>
        scope(() => {
          const ids = tensor(input.flat(), [B, T], { dtype: 'int32', device: model.backend });
          const keyMask = padded ? tensor(mask.flat(), [B, mask[0].length], { device: model.backend }) : undefined;
          return model.forward(ids, { positions, keyMask, cache, lastPositionOnly: true }).toArray();
        }),
      );
      const V = logits.length / B;
      const chosen = new Array<number>(B);
      for (let b = 0; b < B; b++) {
        let best = 0;
        for (let v = 1; v < V; v++) if (logits[b * V + v] > logits[b * V + best]) best = v;
        chosen[b] = finished[b] ? pad : best;
        sequences[b].push(chosen[b]);
        if (eos.has(best)) finished[b] = true;
      }
      if (finished.every((f) => f)) break;
      input = chosen.map((t) => [t]);
      positions = next.map((p) => [p + step]);
      for (const row of mask) row.push(1);
    }
  } finally {
    cache.dispose();
  }
  return sequences;
}
