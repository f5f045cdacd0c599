// A byte-level BPE tokenizer trained from text, written as the tokenizer.json and
// tokenizer_config.json that Hugging Face tokenizers / transformers (and
// src/io/tokenizer.ts, through @huggingface/tokenizers) load.
//
// It is GPT-2's scheme (Radford et al. 2019, as the `tokenizers` library's
// ByteLevelBPETokenizer trains it):
//
// - Pre-tokenization: the ByteLevel pre-tokenizer's regex splits text into words
//   (letters, digits, punctuation runs, each with at most one leading space; runs of
//   whitespace), and every UTF-8 byte of a word becomes one printable character of the
//   byte-to-unicode table (0x20 ' ' is 'Ġ', 0x0A '\n' is 'Ċ'), so the 256-character
//   base alphabet covers any text and no <unk> is ever needed.
// - Training: start from the 256 byte characters and repeatedly merge the most frequent
//   adjacent pair (summed over words weighted by their counts; a tie goes to the pair of
//   lower ids, as the Rust trainer breaks it) until the vocabulary is full or no pair
//   occurs min_frequency times. Merges never cross word boundaries.
// - Encoding (what the library does with the merges): within a word, repeatedly apply
//   the merge of lowest rank present, leftmost first. encodeWord below is that rule,
//   written plainly, for tests.
//
// Special tokens are added tokens (matched in text before pre-tokenization, never
// merged into): <pad>, <s>, </s>, and [INST] / [/INST], the instruction markers of
// FinLoRA's training prompt, treated as control tokens (one id each, dropped by
// decode with skip_special_tokens) as Mistral's tokenizers do, so a prompt's markers
// cost two ids and never split into pieces that also occur in ordinary text.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../io/atomic.js';

/** The ByteLevel pre-tokenizer's split (the `tokenizers` library's, and GPT-2's). */
export const BYTE_LEVEL_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** GPT-2's byte-to-unicode table: printable Latin-1 bytes stand for themselves, the rest map above U+0100. */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const out: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) out.push(String.fromCharCode(printable(b) ? b : 256 + extra++));
  return out;
})();

const CHAR_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

/** The special tokens of a finlora tokenizer, in id order (ids 0..4). */
export const SPECIAL_TOKENS = { pad: '<pad>', bos: '<s>', eos: '</s>', instStart: '[INST]', instEnd: '[/INST]' } as const;

/**
 * A Llama-2-style chat template over the [INST] markers: an optional system message
 * opens the first user turn, each user turn is wrapped in [INST] ... [/INST], and each
 * assistant turn ends with </s>.
 */
export const CHAT_TEMPLATE =
  "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\\n\\n' %}" +
  "{% elif m['role'] == 'user' %}{{ '[INST] ' + ns.system + m['content'] + ' [/INST]' }}{% set ns.system = '' %}" +
  "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}";

export class BpeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BpeError';
  }
}

/** Splits text into byte-level words (each a string of byte characters). */
export function preTokenize(text: string): string[] {
  const encoder = new TextEncoder();
  const words: string[] = [];
  for (const m of text.matchAll(BYTE_LEVEL_PATTERN)) {
    let w = '';
    for (const b of encoder.encode(m[0])) w += BYTE_TO_CHAR[b];
    words.push(w);
  }
  return words;
}

/** Back from byte characters to text (the ByteLevel decoder). */
export function byteCharsToText(chars: string): string {
  const bytes: number[] = [];
  for (const c of chars) {
    const b = CHAR_TO_BYTE.get(c);
    if (b === undefined) throw new BpeError(`'${c}' is not a byte-level character`);
    bytes.push(b);
  }
  return new TextDecoder().decode(Uint8Array.from(bytes));
}

export interface BpeTrainOptions {
  /** Total ids: the special tokens, the 256 bytes and the merges. */
  vocabSize: number;
  /** Added tokens, given ids 0.. in order; split out of the text before training. */
  specialTokens: readonly string[];
  /** A pair must occur at least this often to be merged (default 2). */
  minFrequency?: number;
}

export interface TrainedBpe {
  /** Token strings by id: special tokens, byte characters, then one per merge. */
  readonly tokens: readonly string[];
  /** Merges in rank order, each a pair of token strings. */
  readonly merges: readonly (readonly [string, string])[];
  readonly specialTokens: readonly string[];
}

/** Counts of byte-level words in texts, with special-token strings cut out first. */
export function countWords(texts: Iterable<string>, specialTokens: readonly string[]): Map<string, number> {
  const counts = new Map<string, number>();
  const escaped = specialTokens.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  const splitter = escaped.length > 0 ? new RegExp(escaped.join('|'), 'g') : null;
  for (const text of texts) {
    const pieces = splitter === null ? [text] : text.split(splitter);
    for (const piece of pieces) for (const w of preTokenize(piece)) counts.set(w, (counts.get(w) ?? 0) + 1);
  }
  return counts;
}

/** A max-heap of (count, pair) with lazy deletion: stale entries are skipped when popped. */
class PairHeap {
  private readonly counts: number[] = [];
  private readonly pairs: number[] = [];

  get size(): number {
    return this.counts.length;
  }

  // Higher count first; on equal counts the lower pair key (lower ids) first.
  private above(i: number, j: number): boolean {
    return this.counts[i] > this.counts[j] || (this.counts[i] === this.counts[j] && this.pairs[i] < this.pairs[j]);
  }

  private swap(i: number, j: number): void {
    [this.counts[i], this.counts[j]] = [this.counts[j], this.counts[i]];
    [this.pairs[i], this.pairs[j]] = [this.pairs[j], this.pairs[i]];
  }

  push(count: number, pair: number): void {
    this.counts.push(count);
    this.pairs.push(pair);
    let i = this.counts.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.above(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }

  pop(): { count: number; pair: number } {
    const top = { count: this.counts[0], pair: this.pairs[0] };
    const lastCount = this.counts.pop()!;
    const lastPair = this.pairs.pop()!;
    if (this.counts.length > 0) {
      this.counts[0] = lastCount;
      this.pairs[0] = lastPair;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < this.counts.length && this.above(l, m)) m = l;
        if (r < this.counts.length && this.above(r, m)) m = r;
        if (m === i) break;
        this.swap(i, m);
        i = m;
      }
    }
    return top;
  }
}

// Pairs of ids are keyed as a·2^16 + b: vocabularies here stay far below 65,536 ids.
const PAIR_BASE = 65536;

/** Learns byte-level BPE merges from word counts (see the file header). */
export function trainBpe(wordCounts: ReadonlyMap<string, number>, opts: BpeTrainOptions): TrainedBpe {
  const minFrequency = opts.minFrequency ?? 2;
  const specials = [...opts.specialTokens];
  if (new Set(specials).size !== specials.length) throw new BpeError('special tokens must be distinct');
  const base = specials.length + 256;
  if (!Number.isInteger(opts.vocabSize) || opts.vocabSize < base) {
    throw new BpeError(`vocab_size must be an integer of at least ${base} (${specials.length} special tokens and 256 bytes), got ${opts.vocabSize}`);
  }
  if (opts.vocabSize > PAIR_BASE) throw new BpeError(`vocab_size must be at most ${PAIR_BASE}, got ${opts.vocabSize}`);

  const tokens: string[] = [...specials, ...BYTE_TO_CHAR];
  const idOf = new Map<string, number>(tokens.map((t, i) => [t, i]));
  // Words are arrays of ids; each unique word once, with its count.
  const words: number[][] = [];
  const freq: number[] = [];
  for (const [w, n] of wordCounts) {
    if (n <= 0) continue;
    words.push(Array.from(w, (c) => {
      const id = idOf.get(c);
      if (id === undefined || id < specials.length) throw new BpeError(`word ${JSON.stringify(w)} holds '${c}', which is not a byte-level character`);
      return id;
    }));
    freq.push(n);
  }

  const pairCount = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  const addPairs = (wi: number, sign: number) => {
    const w = words[wi];
    for (let i = 0; i + 1 < w.length; i++) {
      const key = w[i] * PAIR_BASE + w[i + 1];
      pairCount.set(key, (pairCount.get(key) ?? 0) + sign * freq[wi]);
      if (sign > 0) {
        let set = pairWords.get(key);
        if (set === undefined) pairWords.set(key, (set = new Set()));
        set.add(wi);
      }
    }
  };
  for (let wi = 0; wi < words.length; wi++) addPairs(wi, 1);
  const heap = new PairHeap();
  for (const [key, n] of pairCount) heap.push(n, key);

  const merges: [string, string][] = [];
  while (tokens.length < opts.vocabSize && heap.size > 0) {
    const top = heap.pop();
    const current = pairCount.get(top.pair) ?? 0;
    if (current !== top.count) {
      // Stale: the count changed since this entry was pushed; requeue the current one.
      if (current > 0) heap.push(current, top.pair);
      continue;
    }
    if (current < minFrequency) break;
    const a = Math.floor(top.pair / PAIR_BASE), b = top.pair % PAIR_BASE;
    const merged = tokens.length;
    tokens.push(tokens[a] + tokens[b]);
    merges.push([tokens[a], tokens[b]]);
    const touched = new Set<number>();
    for (const wi of pairWords.get(top.pair) ?? []) {
      const w = words[wi];
      let found = false;
      for (let i = 0; i + 1 < w.length; i++) if (w[i] === a && w[i + 1] === b) { found = true; break; }
      if (!found) continue;
      addPairs(wi, -1);
      const out: number[] = [];
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === a && w[i + 1] === b) {
          out.push(merged);
          i++;
        } else {
          out.push(w[i]);
        }
      }
      words[wi] = out;
      addPairs(wi, 1);
      for (let i = 0; i + 1 < out.length; i++) if (out[i] === merged || out[i + 1] === merged) touched.add(out[i] * PAIR_BASE + out[i + 1]);
    }
    pairCount.delete(top.pair);
    pairWords.delete(top.pair);
    for (const key of touched) heap.push(pairCount.get(key) ?? 0, key);
  }
  return { tokens, merges, specialTokens: specials };
}

/**
 * The library's BPE on one pre-tokenized word: while some adjacent pair has a merge,
 * apply the one of lowest rank (leftmost among equals). Returns the token strings.
 */
export function encodeWord(word: string, ranks: ReadonlyMap<string, number>): string[] {
  const parts = Array.from(word);
  for (;;) {
    let best = -1, bestRank = Infinity;
    for (let i = 0; i + 1 < parts.length; i++) {
      const r = ranks.get(`${parts[i]} ${parts[i + 1]}`);
      if (r !== undefined && r < bestRank) {
        bestRank = r;
        best = i;
      }
    }
    if (best < 0) return parts;
    parts.splice(best, 2, parts[best] + parts[best + 1]);
  }
}

/** Merge ranks keyed "a b", as tokenizer.json writes merges. */
export function mergeRanks(bpe: TrainedBpe): Map<string, number> {
  return new Map(bpe.merges.map(([a, b], i) => [`${a} ${b}`, i]));
}

export interface TokenizerFiles {
  readonly tokenizerJson: Record<string, unknown>;
  readonly tokenizerConfig: Record<string, unknown>;
}

/**
 * tokenizer.json (a BPE model behind the ByteLevel pre-tokenizer and decoder, the
 * special tokens as added tokens, BOS prepended by a TemplateProcessing post-processor
 * as Llama 3 does) and tokenizer_config.json (PreTrainedTokenizerFast, the special
 * tokens, the chat template).
 */
export function tokenizerFiles(bpe: TrainedBpe, opts: { modelMaxLength: number }): TokenizerFiles {
  const id = (t: string) => {
    const i = bpe.tokens.indexOf(t);
    if (i < 0 || i >= bpe.specialTokens.length) throw new BpeError(`the tokenizer has no special token ${t}`);
    return i;
  };
  const bos = SPECIAL_TOKENS.bos;
  const added = bpe.specialTokens.map((content, i) => ({ id: i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  const vocab: Record<string, number> = {};
  bpe.tokens.forEach((t, i) => {
    vocab[t] = i;
  });
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: bos, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { [bos]: { id: bos, ids: [id(bos)], tokens: [bos] } },
    },
    decoder: byteLevel,
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab,
      // "a b" strings: every tokenizers release reads them (byte-level tokens hold no spaces).
      merges: bpe.merges.map(([a, b]) => `${a} ${b}`),
    },
  };
  const others = bpe.specialTokens.filter((t) => t !== SPECIAL_TOKENS.bos && t !== SPECIAL_TOKENS.eos && t !== SPECIAL_TOKENS.pad);
  const tokenizerConfig = {
    tokenizer_class: 'PreTrainedTokenizerFast',
    bos_token: bos,
    eos_token: SPECIAL_TOKENS.eos,
    pad_token: SPECIAL_TOKENS.pad,
    unk_token: null,
    additional_special_tokens: others,
    added_tokens_decoder: Object.fromEntries(added.map(({ id: i, ...rest }) => [String(i), rest])),
    clean_up_tokenization_spaces: false,
    model_max_length: opts.modelMaxLength,
    model_input_names: ['input_ids', 'attention_mask'],
    chat_template: CHAT_TEMPLATE,
  };
  return { tokenizerJson, tokenizerConfig };
}

/** Writes tokenizer.json and tokenizer_config.json into dir (created if needed), each atomically. */
export function writeTokenizer(dir: string, bpe: TrainedBpe, opts: { modelMaxLength: number }): void {
  const files = tokenizerFiles(bpe, opts);
  fs.mkdirSync(dir, { recursive: true });
  writeFileAtomic(path.join(dir, 'tokenizer.json'), `${JSON.stringify(files.tokenizerJson, null, 1)}\n`);
  writeFileAtomic(path.join(dir, 'tokenizer_config.json'), `${JSON.stringify(files.tokenizerConfig, null, 2)}\n`);
}

/** The special tokens of a finlora tokenizer in id order. */
export function defaultSpecialTokens(): string[] {
  return [SPECIAL_TOKENS.pad, SPECIAL_TOKENS.bos, SPECIAL_TOKENS.eos, SPECIAL_TOKENS.instStart, SPECIAL_TOKENS.instEnd];
}
