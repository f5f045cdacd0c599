// Text generation with a KV cache for decoder-only models, following transformers'
// generate() (GenerationMixin._sample):
//   - a batch is left-padded; padding is masked out of attention and positions count
//     only real tokens (cumsum(mask) - 1, padding at position 1, as transformers sets it);
//   - the prompt is run once, then one token per step reads the cache;
//   - greedy decoding takes the first index of the largest logit (torch.argmax);
//   - sampling applies transformers' warpers in their order — temperature
//     (TemperatureLogitsWarper), top-k (TopKLogitsWarper: ties with the k-th largest
//     stay), top-p (TopPLogitsWarper: the smallest set of most probable tokens whose
//     cumulative probability reaches top_p, never fewer than one) — then draws from the
//     softmax of what is left;
//   - a row finishes on any EOS id or when the decoded text of its new tokens contains a
//     stop string; its later tokens are the pad id, and decoding stops when every row
//     is finished or maxNewTokens were produced.
// Random draws come from the project's Rng: row b of a batch draws from its own stream,
// derived from the seed and b alone, so the same seed gives the same tokens.
import { randomInt } from 'node:crypto';
import { noGrad } from '../autograd/tape.js';
import { tensor } from '../ops/creation.js';
import { Rng } from '../tensor/rng.js';
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

export interface SamplingOptions {
  /** Divides the logits before the softmax; 0 takes the argmax (greedy). Default 1. */
  temperature?: number;
  /** Nucleus sampling: keep the most probable tokens up to this cumulative probability, in (0, 1]. Default 1 (off). */
  topP?: number;
  /** Keep only the k largest logits (and ties with the k-th); 0 is off. Default 0. */
  topK?: number;
  /** Seed of the draws, an integer in [0, 2^32); default a random one (reported in the result). */
  seed?: number;
}

export type FinishReason = 'eos' | 'stop' | 'length';

export interface GenerateOptions extends GreedyOptions {
  /** Sample with these settings; absent: greedy decoding. */
  sampling?: SamplingOptions;
  /** Strings that finish a row when they appear in its decoded new text (needs `decode`). */
  stopStrings?: readonly string[];
  /** Token ids to text, for stop strings, streaming and `texts`. */
  decode?: (ids: readonly number[]) => string;
  /**
   * Streaming: new text of row `row`, as soon as it is settled — text that could still
   * change is held back (an incomplete UTF-8 sequence, trailing white space that a
   * tokenizer's clean-up may remove, the start of a stop string). Needs `decode`. The
   * pieces of a row join to its entry in `texts`.
   */
  onText?: (row: number, text: string) => void;
  /** Called once per row when it finishes, after its last onText. */
  onFinish?: (row: number, reason: FinishReason) => void;
}

export interface GenerateResult {
  /**
   * Each row's prompt (as given, padding included) followed by its new tokens; a
   * finished row is filled with the pad id, so rows have one length, as transformers
   * returns them.
   */
  sequences: number[][];
  /** Each row's own new tokens: up to the EOS that ended it (included) or the token that completed a stop string. */
  tokens: number[][];
  /** Each row's decoded new text without the EOS and with the stop string cut off; null without `decode`. */
  texts: string[] | null;
  finishReasons: FinishReason[];
  /** The seed the draws came from; null for greedy decoding. */
  seed: number | null;
  /** Milliseconds spent on the prompt pass and on the decoding steps after it. */
  timings: { promptMs: number; decodeMs: number };
}

/** One row's sampling distribution: the token ids left after the warpers (ascending) and their probabilities. */
export interface Candidates {
  ids: Int32Array;
  probs: Float64Array;
}

interface Sampler {
  temperature: number;
  topP: number;
  topK: number;
}

function checkSampling(s: SamplingOptions): Sampler & { seed: number | undefined } {
  const temperature = s.temperature ?? 1;
  const topP = s.topP ?? 1;
  const topK = s.topK ?? 0;
  if (!Number.isFinite(temperature) || temperature < 0) throw new RangeError(`temperature must be a finite number >= 0, got ${temperature}`);
  if (!(topP > 0 && topP <= 1)) throw new RangeError(`topP must be in (0, 1], got ${topP}`);
  if (!Number.isSafeInteger(topK) || topK < 0) throw new RangeError(`topK must be a non-negative integer, got ${topK}`);
  if (s.seed !== undefined && (!Number.isInteger(s.seed) || s.seed < 0 || s.seed >= 2 ** 32)) {
    throw new RangeError(`seed must be an integer in [0, 2^32), got ${s.seed}`);
  }
  return { temperature, topP, topK, seed: s.seed };
}

/** Index of the first largest value of logits[offset .. offset + V) (torch.argmax). */
function argmax(logits: ArrayLike<number>, offset: number, V: number): number {
  let best = 0;
  for (let v = 1; v < V; v++) if (logits[offset + v] > logits[offset + best]) best = v;
  return best;
}

/**
 * The distribution sampling draws from for one row of logits, after temperature,
 * top-k and top-p. Temperature 0 leaves the argmax alone. Among tokens of equal
 * probability at the top-p boundary, the lower id is kept first.
 */
export function samplingCandidates(logits: ArrayLike<number>, opts: SamplingOptions = {}, offset = 0, length = logits.length - offset): Candidates {
  const { temperature, topP, topK } = checkSampling(opts);
  const V = length;
  if (V <= 0) throw new RangeError('samplingCandidates: no logits');
  if (temperature === 0) return { ids: Int32Array.of(argmax(logits, offset, V)), probs: Float64Array.of(1) };
  const scaled = new Float64Array(V);
  let max = -Infinity;
  for (let v = 0; v < V; v++) {
    const x = logits[offset + v];
    if (Number.isNaN(x)) throw new RangeError(`logit ${v} is NaN`);
    scaled[v] = x / temperature;
    if (scaled[v] > max) max = scaled[v];
  }
  if (max === -Infinity) throw new RangeError('every logit is -inf');

  // Top-k: the threshold is the k-th largest value; ties with it stay, as in transformers.
  let floor = -Infinity;
  if (topK > 0 && topK < V) floor = kthLargest(scaled, topK);
  // Unnormalised probabilities of the tokens still in.
  const weight = new Float64Array(V);
  let total = 0;
  for (let v = 0; v < V; v++) {
    if (scaled[v] >= floor) {
      weight[v] = Math.exp(scaled[v] - max);
      total += weight[v];
    }
  }

  if (topP < 1) {
    // Walk tokens from the most probable and keep each while the ones before it sum to
    // less than top_p: transformers' rule (drop a token when the ascending cumulative
    // sum up to it is <= 1 - top_p) put in descending order. Only tokens above a
    // cut-off need sorting when those alone already reach top_p; else sort them all.
    const need = topP * total;
    let order = sortedAbove(weight, weight.reduce((m, w) => Math.max(m, w), 0) * 1e-4);
    if (order.sum < need) order = sortedAbove(weight, 0);
    const keep = new Uint8Array(V);
    let before = 0;
    for (const v of order.ids) {
      if (before >= need) break;
      keep[v] = 1;
      before += weight[v];
    }
    total = 0;
    for (let v = 0; v < V; v++) {
      if (keep[v] === 0) weight[v] = 0;
      total += weight[v];
    }
  }

  let n = 0;
  for (let v = 0; v < V; v++) if (weight[v] > 0) n++;
  const ids = new Int32Array(n);
  const probs = new Float64Array(n);
  n = 0;
  for (let v = 0; v < V; v++) {
    if (weight[v] > 0) {
      ids[n] = v;
      probs[n++] = weight[v] / total;
    }
  }
  return { ids, probs };
}

/** Ids with weight > cut, most probable first (ties: lower id first), and their summed weight. */
function sortedAbove(weight: Float64Array, cut: number): { ids: number[]; sum: number } {
  const ids: number[] = [];
  let sum = 0;
  for (let v = 0; v < weight.length; v++) {
    if (weight[v] > cut) {
      ids.push(v);
      sum += weight[v];
    }
  }
  ids.sort((a, b) => weight[b] - weight[a] || a - b);
  return { ids, sum };
}

function kthLargest(values: Float64Array, k: number): number {
  const sorted = Float64Array.from(values).sort();
  return sorted[sorted.length - k];
}

/** A uniform draw in [0, 1) with 53 random bits. */
function uniform(rng: Rng): number {
  const hi = rng.nextU32() >>> 5;
  const lo = rng.nextU32() >>> 6;
  return (hi * 67108864 + lo) / 9007199254740992;
}

/** Draws one token from a row's candidates (inverse CDF in id order). */
export function drawToken(c: Candidates, rng: Rng): number {
  const u = uniform(rng);
  let acc = 0;
  for (let i = 0; i < c.ids.length; i++) {
    acc += c.probs[i];
    if (u < acc) return c.ids[i];
  }
  // u fell beyond a sum that rounded below 1: the last candidate.
  return c.ids[c.ids.length - 1];
}

/** Row b's generator: the 4b-th to (4b+3)-th words of the seed's stream, so it depends on the seed and b only. */
function rowRngs(seed: number, B: number): Rng[] {
  const master = new Rng(seed | 0);
  return Array.from({ length: B }, () => new Rng([master.nextU32(), master.nextU32(), master.nextU32(), master.nextU32()]));
}

/** Left-pads prompts of different lengths to one length; mask 0 marks the padding. */
export function leftPad(prompts: readonly (readonly number[])[], padTokenId: number): { ids: number[][]; attentionMask: number[][] } {
  const T = Math.max(0, ...prompts.map((p) => p.length));
  return {
    ids: prompts.map((p) => [...new Array<number>(T - p.length).fill(padTokenId), ...p]),
    attentionMask: prompts.map((p) => [...new Array<number>(T - p.length).fill(0), ...new Array<number>(p.length).fill(1)]),
  };
}

/**
 * Where settled text ends: before trailing replacement characters and white space, and
 * then before the start of a stop string that the held-back tail may complete.
 */
function settledLength(text: string, stops: readonly string[]): number {
  let end = text.length;
  while (end > 0 && (text[end - 1] === '\uFFFD' || /\s/.test(text[end - 1]))) end--;
  const settled = text.slice(0, end);
  let cut = end;
  for (const stop of stops) {
    for (let k = Math.min(stop.length - 1, end); k > 0; k--) {
      if (settled.endsWith(stop.slice(0, k))) {
        cut = Math.min(cut, end - k);
        break;
      }
    }
  }
  return cut;
}

/** The earliest occurrence of any stop string in text, or -1. */
function findStop(text: string, stops: readonly string[]): number {
  let at = -1;
  for (const stop of stops) {
    const i = text.indexOf(stop);
    if (i >= 0 && (at < 0 || i < at)) at = i;
  }
  return at;
}

/**
 * Continues equal-length (left-padded) prompts, greedily or by sampling, until every
 * row hit an EOS id or a stop string, or maxNewTokens were produced.
 */
export function generate(model: LlamaForCausalLM, prompts: readonly (readonly number[])[], opts: GenerateOptions): GenerateResult {
  const B = prompts.length;
  if (B === 0) throw new Error('generate: no prompts');
  const T0 = prompts[0].length;
  if (T0 === 0) throw new Error('generate: empty prompt');
  prompts.forEach((p, b) => {
    if (p.length !== T0) throw new Error(`generate: prompt ${b} has ${p.length} tokens, prompt 0 has ${T0} (left-pad to one length and pass attentionMask)`);
  });
  if (!Number.isInteger(opts.maxNewTokens) || opts.maxNewTokens < 0) throw new Error(`generate: maxNewTokens must be a non-negative integer, got ${opts.maxNewTokens}`);
  const mask = (opts.attentionMask ?? prompts.map((p) => p.map(() => 1))).map((row) => [...row]);
  if (mask.length !== B || mask.some((row) => row.length !== T0 || row.some((m) => m !== 0 && m !== 1))) {
    throw new Error(`generate: attentionMask must be ${B} rows of ${T0} zeros and ones`);
  }
  const stops = (opts.stopStrings ?? []).filter((s) => s !== '');
  const decode = opts.decode;
  if (decode === undefined && (stops.length > 0 || opts.onText !== undefined)) throw new Error('generate: stop strings and onText need a decode function');
  const sampler = opts.sampling === undefined ? null : checkSampling(opts.sampling);
  const seed = sampler === null ? null : (sampler.seed ?? randomInt(2 ** 32));
  const rngs = seed === null ? [] : rowRngs(seed, B);
  const eos = new Set(opts.eosTokenIds ?? model.config.eosTokenIds);
  const pad = opts.padTokenId ?? model.config.padTokenId ?? [...eos][0] ?? 0;
  const padded = mask.some((row) => row.includes(0));

  const sequences = prompts.map((p) => [...p]);
  const tokens = prompts.map((): number[] => []);
  const reasons = new Array<FinishReason | null>(B).fill(null);
  const texts = new Array<string>(B).fill('');
  const emitted = new Array<number>(B).fill(0);
  const timings = { promptMs: 0, decodeMs: 0 };

  // The text of a row's new tokens, less a final EOS, cut at a stop string.
  const finish = (b: number, reason: FinishReason, text: string | null) => {
    reasons[b] = reason;
    if (decode !== undefined) {
      texts[b] = text ?? decode(reason === 'eos' ? tokens[b].slice(0, -1) : tokens[b]);
      if (opts.onText !== undefined && texts[b].length > emitted[b]) opts.onText(b, texts[b].slice(emitted[b]));
    }
    opts.onFinish?.(b, reason);
  };

  const next = mask.map((row) => row.reduce((a, m) => a + m, 0));
  // transformers: position_ids = cumsum(mask) - 1, with 1 where the mask is 0.
  let positions = mask.map((row) => {
    let seen = 0;
    return row.map((m) => (m === 0 ? 1 : seen++));
  });
  const cache = opts.maxNewTokens === 0 ? null : model.createCache(B, T0 + opts.maxNewTokens);
  try {
    let input = prompts.map((p) => [...p]);
    for (let step = 0; step < opts.maxNewTokens; step++) {
      const started = performance.now();
      const T = input[0].length;
      const logits = noGrad(() =>
        scope(() => {
          const ids = tensor(input.flat(), [B, T], { dtype: 'int32', device: model.backend });
          const keyMask = padded ? tensor(mask.flat(), [B, mask[0].length], { device: model.backend }) : undefined;
          return model.forward(ids, { positions, keyMask, cache: cache ?? undefined, lastPositionOnly: true }).toArray();
        }),
      );
      const V = logits.length / B;
      const chosen = new Array<number>(B);
      for (let b = 0; b < B; b++) {
        if (reasons[b] !== null) {
          chosen[b] = pad;
          sequences[b].push(pad);
          continue;
        }
        const token = sampler === null ? argmax(logits, b * V, V) : drawToken(samplingCandidates(logits, sampler, b * V, V), rngs[b]);
        chosen[b] = token;
        sequences[b].push(token);
        tokens[b].push(token);
        if (eos.has(token)) {
          finish(b, 'eos', null);
          continue;
        }
        if (decode === undefined || (stops.length === 0 && opts.onText === undefined)) continue;
        const text = decode(tokens[b]);
        const at = findStop(text, stops);
        if (at >= 0) {
          finish(b, 'stop', text.slice(0, at));
        } else if (opts.onText !== undefined) {
          const end = settledLength(text, stops);
          if (end > emitted[b]) {
            opts.onText(b, text.slice(emitted[b], end));
            emitted[b] = end;
          }
        }
      }
      timings[step === 0 ? 'promptMs' : 'decodeMs'] += performance.now() - started;
      if (reasons.every((r) => r !== null)) break;
      input = chosen.map((t) => [t]);
      positions = next.map((p) => [p + step]);
      for (const row of mask) row.push(1);
    }
  } finally {
    cache?.dispose();
  }
  for (let b = 0; b < B; b++) if (reasons[b] === null) finish(b, 'length', null);
  return {
    sequences,
    tokens,
    texts: decode === undefined ? null : texts,
    finishReasons: reasons.map((r) => r ?? 'length'),
    seed,
    timings,
  };
}

/**
 * Greedy continuation of equal-length (left-padded) prompts. Returns each row's prompt
 * followed by its new tokens; rows stop together, so all rows have the same length.
 */
export function greedyGenerate(model: LlamaForCausalLM, prompts: readonly (readonly number[])[], opts: GreedyOptions): number[][] {
  return generate(model, prompts, opts).sequences;
}
