// The generated sentiment data: FinLoRA's context shape, balanced labels, seeded
// output, splits that share no sentence, and labels that follow from what a sentence
// says (recomputed here from its metric, direction and negation).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { extraTraining, generateSentences, sentenceKey, sentimentContext, sentimentSplits, toJsonl } from '../../src/data/synthetic_sentiment.js';

const GOOD = ['net sales', 'revenue', 'operating profit', 'net profit', 'earnings per share', 'order intake', 'order backlog', 'operating margin', 'gross margin', 'ebitda', 'cash flow from operations', 'market share', 'comparable sales', 'pre-tax profit', 'passenger numbers'];
const BAD = ['operating costs', 'net loss', 'operating loss', 'net debt', 'raw material costs', 'restructuring charges', 'credit losses', 'customer churn', 'personnel expenses', 'impairment charges', 'pre-tax loss', 'inventory write-downs'];
const UP = /\b(rose|rise|increased|increase|grew|grow|climbed|climb|jumped|jump|went up|go up|surged|surge)\b/;
const DOWN = /\b(fell|fall|decreased|decrease|declined|decline|dropped|drop|slipped|slip|went down|go down|shrank|shrink)\b/;

/** The label a reader gives a sentence about one metric moving, or null for other sentences. */
function expectedLabel(sentence: string): string | null {
  const s = sentence.toLowerCase();
  const good = GOOD.filter((m) => s.includes(m));
  const bad = BAD.filter((m) => s.includes(m));
  const up = UP.test(s), down = DOWN.test(s);
  if (good.length + bad.length !== 1 || up === down || /shares|contract/.test(s)) return null;
  const negated = /did not|failed to/.test(s);
  return (up !== negated) === (good.length === 1) ? 'positive' : 'negative';
}

test('labels follow the metric, the direction and any negation', () => {
  const examples = generateSentences(3000, 5);
  let checked = 0, negations = 0, badMetrics = 0;
  for (const ex of examples) {
    const want = expectedLabel(ex.sentence);
    if (want === null) continue;
    assert.equal(ex.label, want, ex.sentence);
    checked++;
    if (/did not|failed to/.test(ex.sentence)) negations++;
    if (BAD.some((m) => ex.sentence.toLowerCase().includes(m))) badMetrics++;
  }
  assert.ok(checked > 1000, `${checked} movement sentences checked`);
  assert.ok(negations > 150 && badMetrics > 300, `negations ${negations}, bad-news metrics ${badMetrics}`);
  // Neutral sentences state no movement.
  for (const ex of examples.filter((e) => e.label === 'neutral')) assert.equal(UP.test(ex.sentence) || DOWN.test(ex.sentence), false, ex.sentence);
});

test('splits are balanced, seeded, and share no sentence', () => {
  const a = sentimentSplits(600, 90, 7);
  const b = sentimentSplits(600, 90, 7);
  assert.deepEqual(a, b);
  assert.notDeepEqual(sentimentSplits(600, 90, 8).test, a.test);
  assert.equal(a.train.length, 600);
  assert.equal(a.test.length, 90);
  for (const set of [a.train, a.test]) {
    const counts = new Map<string, number>();
    for (const x of set) counts.set(x.label, (counts.get(x.label) ?? 0) + 1);
    assert.deepEqual([...counts.keys()].sort(), ['negative', 'neutral', 'positive']);
    for (const n of counts.values()) assert.equal(n, set.length / 3);
  }
  const trainKeys = new Set(a.train.map((x) => sentenceKey(x.sentence)));
  assert.equal(trainKeys.size, a.train.length);
  assert.equal(a.test.filter((x) => trainKeys.has(sentenceKey(x.sentence))).length, 0);
  // Excluded keys (the test set, for pretraining text) never come back.
  const held = new Set(a.test.map((x) => sentenceKey(x.sentence)));
  assert.equal(generateSentences(2000, 7, held).filter((x) => held.has(sentenceKey(x.sentence))).length, 0);
  // Extra training sentences are new to both splits.
  const extra = extraTraining(a, 300, 9);
  assert.equal(extra.length, 300);
  assert.equal(extra.filter((x) => held.has(sentenceKey(x.sentence)) || trainKeys.has(sentenceKey(x.sentence))).length, 0);
});

test("JSONL lines have FinLoRA's sentiment context and a label target", () => {
  const lines = toJsonl(sentimentSplits(30, 9, 1).test, 3).trim().split('\n').map((l) => JSON.parse(l) as { context: string; target: string });
  assert.equal(lines.length, 9);
  for (const { context, target } of lines) {
    assert.match(context, /^Instruction: What is the sentiment of this (news|tweet|headline)\? Please choose an answer from \{negative\/neutral\/positive\}\.\nInput: [A-Z].*[.]\nAnswer: $/);
    assert.ok(['negative', 'neutral', 'positive'].includes(target));
  }
  assert.equal(sentimentContext('Sales rose.'), 'Instruction: What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}.\nInput: Sales rose.\nAnswer: ');
});
