// Training features from {context, target} examples, as FinLoRA's axolotl config makes
// them. FinLoRA's lora/finetune.py gives axolotl a user-defined dataset type with
// field_instruction "context", field_output "target" and format
// "[INST] {instruction} [/INST]"; axolotl's instruction tokenizing strategy then
//
//   1. renders the prompt with the format and tokenizes it with the tokenizer's special
//      tokens (BOS for Llama), truncated to sequence_len, with no EOS;
//   2. tokenizes the target on its own (so no token spans the prompt/target boundary),
//      truncated to sequence_len, appends EOS when the result is shorter than
//      sequence_len and does not already end in EOS, and drops a leading BOS;
//   3. concatenates them; labels are -100 on the prompt (unless train_on_inputs) and
//      the target's ids (EOS included) on the rest.
//
// The template is configurable ("{context}" marks the context; axolotl's
// "{instruction}" is accepted too). A sequence still longer than sequence_len is
// truncated (or, with excess_length_strategy "drop", dropped as axolotl does by
// default); either way it is counted, and an example whose target tokens were all cut
// away is dropped and counted, since it would train nothing.
import type { Example } from './jsonl.js';

/** What formatting needs from a tokenizer (src/io/tokenizer.ts's Tokenizer has it). */
export interface TextTokenizer {
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  readonly bosId: number | null;
  readonly eosToken: string | null;
  readonly eosIds: readonly number[];
  tokenToId(token: string): number | undefined;
}

export interface FormatOptions {
  promptFormat: string;
  sequenceLen: number;
  trainOnInputs: boolean;
  excessLengthStrategy: 'truncate' | 'drop';
}

export interface Features {
  readonly inputIds: Int32Array;
  /** -100 where no loss is taken. */
  readonly labels: Int32Array;
  /** The example's line in its file. */
  readonly line: number;
}

export interface FormatReport {
  readonly features: Features[];
  /** Examples longer than sequence_len that were cut to it. */
  readonly truncated: number;
  /** Examples dropped for length (strategy "drop"). */
  readonly droppedTooLong: number;
  /** Examples dropped because no target token was left after truncation. */
  readonly droppedNoTarget: number;
  /** Longest sequence before it was cut to sequence_len, in tokens. */
  readonly longest: number;
  /** Line of the longest example. */
  readonly longestLine: number;
  /** Tokens kept, in total. */
  readonly tokens: number;
}

export const IGNORE_INDEX = -100;

/** The prompt for a context: the format with "{context}" (or "{instruction}") replaced. */
export function renderPrompt(format: string, context: string): string {
  // A function replacement keeps "$&" and friends in the context literal.
  return format.replace(/\{(context|instruction)\}/, () => context);
}

/** The id the tokenizer appends as end of sequence (transformers' tokenizer.eos_token_id). */
export function eosTokenId(tok: TextTokenizer): number {
  const id = tok.eosToken !== null ? tok.tokenToId(tok.eosToken) : undefined;
  const eos = id ?? tok.eosIds[0];
  if (eos === undefined) throw new Error('the tokenizer defines no end-of-sequence token, which training appends to every target');
  return eos;
}

/**
 * tokenizer(text, truncation=True, max_length=n): at most n ids, special tokens kept
 * (transformers truncates the text's own tokens and then adds the special ones).
 */
export function encodeTruncated(tok: TextTokenizer, text: string, maxLength: number): number[] {
  const ids = tok.encode(text, { addSpecialTokens: true });
  if (ids.length <= maxLength) return ids;
  const bare = tok.encode(text, { addSpecialTokens: false });
  const specials = ids.length - bare.length;
  // Find where the text's ids sit among the special ones (BOS before, EOS after).
  let prefix = 0;
  for (let k = 0; k <= specials; k++) {
    if (ids[k] === bare[0] && ids[k + bare.length - 1] === bare[bare.length - 1]) {
      prefix = k;
      break;
    }
  }
  const keep = Math.max(0, maxLength - specials);
  return [...ids.slice(0, prefix), ...bare.slice(0, keep), ...ids.slice(prefix + bare.length)].slice(0, maxLength);
}

/** Tokenizes examples into training features (see the file header for the rules). */
export function formatExamples(examples: readonly Example[], tok: TextTokenizer, opts: FormatOptions): FormatReport {
  const eos = eosTokenId(tok);
  const bos = tok.bosId;
  const L = opts.sequenceLen;
  const features: Features[] = [];
  let truncated = 0, droppedTooLong = 0, droppedNoTarget = 0, longest = 0, longestLine = 0, tokens = 0;
  for (const ex of examples) {
    const prompt = encodeTruncated(tok, renderPrompt(opts.promptFormat, ex.context), L);
    let response = encodeTruncated(tok, ex.target, L);
    if (response.length > 0 && response[response.length - 1] !== eos && response.length < L) response.push(eos);
    if (bos !== null && response[0] === bos) response = response.slice(1);
    const total = prompt.length + response.length;
    if (total > longest) {
      longest = total;
      longestLine = ex.line;
    }
    let n = total;
    if (total > L) {
      if (opts.excessLengthStrategy === 'drop') {
        droppedTooLong++;
        continue;
      }
      n = L;
    }
    const inputIds = new Int32Array(n);
    const labels = new Int32Array(n);
    let targets = 0;
    for (let i = 0; i < n; i++) {
      const inPrompt = i < prompt.length;
      const id = inPrompt ? prompt[i] : response[i - prompt.length];
      inputIds[i] = id;
      // The first position is never predicted (nothing precedes it), so it is not counted.
      const label = inPrompt && !opts.trainOnInputs ? IGNORE_INDEX : id;
      labels[i] = label;
      if (label !== IGNORE_INDEX && i > 0) targets++;
    }
    if (targets === 0) {
      droppedNoTarget++;
      continue;
    }
    if (n < total) truncated++;
    tokens += n;
    features.push({ inputIds, labels, line: ex.line });
  }
  return { features, truncated, droppedTooLong, droppedNoTarget, longest, longestLine, tokens };
}
