// FinLoRA's test sets by name, as its test script maps them (test/test_dataset.py):
// the file under data/test and the max_new_tokens of generation. The sentiment sets
// come from FinLoRA's repository: fpb (Financial PhraseBank), fiqa (FiQA SA), tfns
// (Twitter Financial News Sentiment) and nwgi (News With GPT Instruction); FinLoRA's
// data/test holds them all, including tfns_test.jsonl, which `finlora data fetch`
// downloads with the rest.
import * as path from 'node:path';

export interface NamedDataset {
  readonly name: string;
  readonly file: string;
  readonly maxNewTokens: number;
  readonly description: string;
}

export const DATASETS: readonly NamedDataset[] = [
  { name: 'fpb', file: 'fpb_test.jsonl', maxNewTokens: 10, description: 'Financial PhraseBank sentiment' },
  { name: 'fiqa', file: 'fiqa_test.jsonl', maxNewTokens: 10, description: 'FiQA sentiment' },
  { name: 'tfns', file: 'tfns_test.jsonl', maxNewTokens: 10, description: 'Twitter Financial News Sentiment' },
  { name: 'nwgi', file: 'nwgi_test.jsonl', maxNewTokens: 10, description: 'News With GPT Instruction sentiment' },
  { name: 'headline', file: 'headline_test.jsonl', maxNewTokens: 10, description: 'headline classification' },
  { name: 'ner', file: 'ner_test.jsonl', maxNewTokens: 10, description: 'named-entity classification' },
  { name: 'financebench', file: 'financebench_test.jsonl', maxNewTokens: 50, description: 'FinanceBench questions' },
  { name: 'xbrl_term', file: 'xbrl_term_test.jsonl', maxNewTokens: 50, description: 'XBRL terminology' },
  { name: 'formula', file: 'formula_test.jsonl', maxNewTokens: 50, description: 'financial formulas' },
];

/** FinLoRA's max_new_token_dict.get(name, 30). */
export const DEFAULT_MAX_NEW_TOKENS = 30;

export function namedDataset(name: string): NamedDataset | undefined {
  return DATASETS.find((d) => d.name === name);
}

/**
 * A --dataset value: a name (looked up in dataDir) or a .jsonl path. A file named like
 * one of FinLoRA's (fpb_test.jsonl) takes that set's max_new_tokens.
 */
export function resolveDataset(value: string, dataDir: string): { name: string; file: string; maxNewTokens: number; named: NamedDataset | null } {
  const named = namedDataset(value);
  if (named !== undefined) return { name: named.name, file: path.resolve(dataDir, named.file), maxNewTokens: named.maxNewTokens, named };
  const byFile = DATASETS.find((d) => d.file === path.basename(value)) ?? null;
  return {
    name: byFile?.name ?? path.basename(value).replace(/\.jsonl$/, ''),
    file: path.resolve(value),
    maxNewTokens: byFile?.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS,
    named: byFile,
  };
}
