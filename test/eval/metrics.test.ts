// FinLoRA's scoring: answer extraction, first-label matching, accuracy, and weighted F1
// equal to sklearn's f1_score(average='weighted') on hand-computed cases.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { accuracy, confusionMatrix, extractAnswer, firstLabel, scoreAnswers, weightedF1 } from '../../src/eval/metrics.js';
import { assertClose } from '../helpers.js';

test('the answer is the text after the last "Answer:", stripped', () => {
  assert.equal(extractAnswer('Instruction: ...\nInput: x\nAnswer:  positive\n'), 'positive');
  assert.equal(extractAnswer('Answer: a Answer: b '), 'b');
  assert.equal(extractAnswer('no delimiter here '), 'no delimiter here');
  assert.equal(extractAnswer('Input: y\nAnswer: '), '');
});

test('the prediction is the label occurring first in the lower-cased answer', () => {
  const labels = ['negative', 'neutral', 'positive'];
  assert.equal(firstLabel('Positive.', labels), 'positive');
  assert.equal(firstLabel('I think NEUTRAL, maybe positive', labels), 'neutral');
  assert.equal(firstLabel('positive or negative', labels), 'positive');
  assert.equal(firstLabel('none of them', labels), null);
  // nwgi's labels: the earliest occurrence wins, whichever label it is
  assert.equal(firstLabel('mildly positive', ['mildly positive', 'positive']), 'mildly positive');
  // a tie at one position (one label a prefix of the other): the longer one
  assert.equal(firstLabel('positive', ['pos', 'positive']), 'positive');
});

test("accuracy and weighted F1 as FinLoRA computes them (a wrong answer is its raw text)", () => {
  const outputs = ['Positive sentiment', 'negative', 'I think neutral or positive', 'nothing'];
  const targets = ['positive', 'positive', 'neutral', 'negative'];
  const scored = scoreAnswers(outputs, targets);
  assert.deepEqual(scored.map((s) => s.correct), [true, false, true, false]);
  assert.deepEqual(scored.map((s) => s.response), ['positive', 'negative', 'neutral', 'nothing']);
  assert.equal(accuracy(scored), 0.5);
  // sklearn: labels negative, neutral, nothing, positive; F1 0, 1, 0, 2/3 with support 1, 1, 0, 2
  const { f1, classes } = weightedF1(targets, scored.map((s) => s.response));
  assertClose([f1], [(0 * 1 + 1 * 1 + (2 / 3) * 2) / 4], { atol: 1e-15, rtol: 0 });
  const pos = classes.find((c) => c.label === 'positive')!;
  assert.deepEqual([pos.precision, pos.recall, pos.support], [1, 0.5, 2]);
});

test('weighted F1 on more hand-computed cases', () => {
  // labels sorted: "it is unclear", neg, neu, pos -> F1 0 (support 0), 1 (1), 4/5 (3), 1/2 (2)
  const yTrue = ['pos', 'pos', 'neg', 'neu', 'neu', 'neu'];
  const yPred = ['pos', 'it is unclear', 'neg', 'pos', 'neu', 'neu'];
  assertClose([weightedF1(yTrue, yPred).f1], [(1 * 1 + 0.8 * 3 + 0.5 * 2) / 6], { atol: 1e-15, rtol: 0 });
  assert.equal(weightedF1(['a', 'b'], ['x', 'y']).f1, 0);
  assert.equal(weightedF1(['a', 'b', 'b'], ['a', 'b', 'b']).f1, 1);
  // a class never predicted: precision 0 by sklearn's zero_division default, F1 0
  const r = weightedF1(['a', 'a', 'b'], ['a', 'a', 'a']);
  assertClose([r.f1], [((2 * 2) / (2 + 3)) * (2 / 3)], { atol: 1e-15, rtol: 0 });
  assert.equal(r.classes.find((c) => c.label === 'b')!.precision, 0);
  // labels sort by code point, as numpy sorts them ("B" before "a")
  assert.deepEqual(weightedF1(['a', 'B'], ['a', 'B']).classes.map((c) => c.label), ['B', 'a']);
});

test('confusion matrix: targets against the first label found, "(none)" when there is none', () => {
  const scored = scoreAnswers(['positive', 'negative', 'meh', 'neutral'], ['positive', 'positive', 'neutral', 'neutral']);
  const c = confusionMatrix(scored);
  assert.deepEqual(c.labels, ['neutral', 'positive']);
  assert.deepEqual(c.columns, ['neutral', 'positive', '(none)']);
  // "negative" is not in this file's label set, so it names no label
  assert.deepEqual(c.counts, [[1, 0, 1], [0, 1, 1]]);
});
