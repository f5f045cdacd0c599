// A fine-tuning run's held-out evaluation, before and after training: the questions
// of a test file (eval_dataset_path in the run) answered and scored exactly as
// `finlora eval` and FinLoRA's test script do (src/eval: raw context, left padding,
// greedy decoding, the answer after the last "Answer:", the first label found),
// so the two numbers a run prints are the ones `finlora eval` would give the base
// model and the adapter.
import * as path from 'node:path';
import { generateAnswers } from '../eval/evaluate.js';
import { DEFAULT_MAX_NEW_TOKENS, DATASETS } from '../eval/datasets.js';
import { accuracy, scoreAnswers, weightedF1 } from '../eval/metrics.js';
import type { ProgressStream } from '../io/progress.js';
import type { Tokenizer } from '../io/tokenizer.js';
import type { LlamaForCausalLM } from '../models/llama/model.js';
import type { Example } from '../data/jsonl.js';

export interface HeldOutScore {
  readonly count: number;
  readonly correct: number;
  readonly accuracy: number;
  readonly f1: number;
  readonly seconds: number;
  /** The first few answers, for the log. */
  readonly sample: readonly { target: string; answer: string }[];
}

/** FinLoRA's answer length for a test file: its named set's (10 for sentiment), else 30. */
export function maxNewTokensFor(file: string): number {
  return DATASETS.find((d) => d.file === path.basename(file))?.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS;
}

/** Answers and scores the examples with the model as it is now (base, or base + adapters). */
export function scoreHeldOut(
  model: LlamaForCausalLM,
  tok: Tokenizer,
  examples: readonly Example[],
  o: { maxNewTokens: number; batchSize?: number; progress?: ProgressStream | null; label?: string },
): HeldOutScore {
  const wasTraining = model.training;
  try {
    const gen = generateAnswers(model, tok, examples.map((e) => e.context), {
      batchSize: o.batchSize ?? 8, maxNewTokens: o.maxNewTokens, progress: o.progress ?? null, label: o.label ?? 'eval',
    });
    const targets = examples.map((e) => e.target);
    const scored = scoreAnswers(gen.answers, targets);
    return {
      count: examples.length,
      correct: scored.filter((s) => s.correct).length,
      accuracy: accuracy(scored),
      f1: weightedF1(targets, scored.map((s) => s.response)).f1,
      seconds: gen.seconds,
      sample: scored.slice(0, 3).map((s) => ({ target: s.target, answer: s.output })),
    };
  } finally {
    model.train(wasTraining);
  }
}

/** "accuracy 33.3% (100/300), weighted F1 0.167". */
export function describeScore(s: HeldOutScore): string {
  return `accuracy ${(s.accuracy * 100).toFixed(1)}% (${s.correct}/${s.count}), weighted F1 ${s.f1.toFixed(3)}`;
}
