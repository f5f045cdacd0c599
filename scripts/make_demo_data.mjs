#!/usr/bin/env node
// Writes the demo's sentiment data (src/data/synthetic_sentiment.ts), seeded, so the
// committed files can be made again byte for byte:
//
//   demo/data/train.jsonl   fine-tuning examples in FinLoRA's {context, target} format: the
//                           split's training sentences, then --extra-train new ones that
//                           are in neither split (so the test set stays the same)
//   demo/data/test.jsonl    held-out examples: no sentence of train.jsonl, and none of
//                           the pretraining sentences either
//
// With --pretrain-text FILE it also writes unlabelled sentences from the same generator
// (another seed, the test sentences excluded), one per line, as pretraining text.
//
// Usage (after npm run build):
//   node scripts/make_demo_data.mjs [--out demo/data] [--train 1500] [--test 300] [--extra-train 0] [--seed 2024]
//                                   [--pretrain-text FILE --pretrain-sentences 40000]
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { extraTraining, generateSentences, sentenceKey, sentimentSplits, toJsonl } from '../dist/src/data/synthetic_sentiment.js';

const { values } = parseArgs({
  options: {
    out: { type: 'string', default: 'demo/data' },
    train: { type: 'string', default: '1500' },
    test: { type: 'string', default: '300' },
    'extra-train': { type: 'string', default: '0' },
    seed: { type: 'string', default: '2024' },
    'pretrain-text': { type: 'string' },
    'pretrain-sentences': { type: 'string', default: '40000' },
  },
});
const seed = Number(values.seed);
const splits = sentimentSplits(Number(values.train), Number(values.test), seed);
const { test } = splits;
const train = [...splits.train, ...extraTraining(splits, Number(values['extra-train']), seed + 200)];
fs.mkdirSync(values.out, { recursive: true });
fs.writeFileSync(path.join(values.out, 'train.jsonl'), toJsonl(train, seed + 1));
fs.writeFileSync(path.join(values.out, 'test.jsonl'), toJsonl(test, seed + 2));
const count = (xs) => Object.entries(xs.reduce((m, x) => ({ ...m, [x.label]: (m[x.label] ?? 0) + 1 }), {})).map(([k, v]) => `${k} ${v}`).join(', ');
console.log(`${path.join(values.out, 'train.jsonl')}: ${train.length} examples (${count(train)})`);
console.log(`${path.join(values.out, 'test.jsonl')}: ${test.length} examples (${count(test)})`);

if (values['pretrain-text'] !== undefined) {
  const held = new Set(test.map((x) => sentenceKey(x.sentence)));
  const sentences = generateSentences(Number(values['pretrain-sentences']), seed + 100, held);
  fs.writeFileSync(values['pretrain-text'], sentences.map((x) => `${x.sentence}\n`).join(''));
  console.log(`${values['pretrain-text']}: ${sentences.length} unlabelled sentences (none of the test set)`);
}
