// Answers to test questions as FinLoRA's test script produces them (test/inference.py,
// local model path):
//
//   tokens = tokenizer(contexts, padding=True, max_length=512)   left padding, BOS added,
//                                                               right truncation to 512
//   out = model.generate(**tokens, max_new_tokens=N, eos_token_id=tokenizer.eos_token_id)
//   text = tokenizer.decode(row, skip_special_tokens=True)       prompt and answer together
//   answer = text.split("Answer:")[-1].strip()
//
// The raw context is the prompt (no [INST] template, unlike training), decoding is
// greedy (FinLoRA passes temperature 1e-5), and questions go through in file order,
// batch_size at a time.
import type { ProgressStream } from '../io/progress.js';
import { formatDuration } from '../io/progress.js';
import type { Tokenizer } from '../io/tokenizer.js';
import { greedyGenerate } from '../models/generate.js';
import type { LlamaForCausalLM } from '../models/llama/model.js';
import { encodeTruncated, eosTokenId } from '../data/format.js';
import { extractAnswer } from './metrics.js';

export interface AnswerOptions {
  batchSize: number;
  maxNewTokens: number;
  /** Prompt tokens kept (FinLoRA's max_length 512). */
  maxPromptTokens?: number;
  delimiter?: string;
  progress?: ProgressStream | null;
  label?: string;
  now?: () => number;
}

export interface Answers {
  /** The text after the delimiter, stripped: what gets scored. */
  readonly answers: string[];
  /** The whole decoded sequence of each question. */
  readonly decoded: string[];
  /** Prompts cut to maxPromptTokens. */
  readonly truncatedPrompts: number;
  readonly seconds: number;
}

export function generateAnswers(model: LlamaForCausalLM, tok: Tokenizer, contexts: readonly string[], o: AnswerOptions): Answers {
  const now = o.now ?? Date.now;
  const maxPrompt = o.maxPromptTokens ?? 512;
  const eos = eosTokenId(tok);
  const pad = tok.padId ?? eos;
  const answers: string[] = [];
  const decoded: string[] = [];
  let truncatedPrompts = 0;
  const start = now();
  let lastReport = -Infinity;
  model.eval();
  for (let at = 0; at < contexts.length; at += o.batchSize) {
    const batch = contexts.slice(at, at + o.batchSize);
    const ids = batch.map((c) => {
      const full = tok.encode(c);
      if (full.length > maxPrompt) truncatedPrompts++;
      return full.length > maxPrompt ? encodeTruncated(tok, c, maxPrompt) : full;
    });
    const T = Math.max(...ids.map((r) => r.length));
    const padded = ids.map((r) => [...new Array<number>(T - r.length).fill(pad), ...r]);
    const mask = ids.map((r) => [...new Array<number>(T - r.length).fill(0), ...new Array<number>(r.length).fill(1)]);
    const rows = greedyGenerate(model, padded, { maxNewTokens: o.maxNewTokens, attentionMask: mask, eosTokenIds: [eos], padTokenId: pad });
    for (const row of rows) {
      const text = tok.decode(row, { skipSpecialTokens: true });
      decoded.push(text);
      answers.push(extractAnswer(text, o.delimiter ?? 'Answer:'));
    }
    const t = now();
    const done = Math.min(contexts.length, at + o.batchSize);
    const stream = o.progress ?? null;
    if (stream !== null && (stream.isTTY || t - lastReport >= 15_000 || done === contexts.length)) {
      lastReport = t;
      const per = (t - start) / 1000 / done;
      const line = `${o.label ?? 'eval'}: ${done}/${contexts.length} questions, ${per.toFixed(2)} s per question, ETA ${formatDuration(per * (contexts.length - done))}`;
      stream.write(stream.isTTY ? `\r${line}\x1b[K${done === contexts.length ? '\n' : ''}` : `${line}\n`);
    }
  }
  return { answers, decoded, truncatedPrompts, seconds: (now() - start) / 1000 };
}
