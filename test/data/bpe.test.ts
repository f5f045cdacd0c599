// The byte-level BPE trainer: merges learned as the `tokenizers` trainer learns them
// (most frequent pair, ties to lower ids, never across words), and the files it writes
// loaded by src/io/tokenizer.ts (@huggingface/tokenizers), which must split text into
// exactly the ids the merges give by rank and decode every text back unchanged.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import {
  BYTE_TO_CHAR, byteCharsToText, countWords, defaultSpecialTokens, encodeWord, mergeRanks, preTokenize, SPECIAL_TOKENS, trainBpe, writeTokenizer,
} from '../../src/data/bpe.js';
import { Tokenizer } from '../../src/io/tokenizer.js';
import { Rng } from '../../src/tensor/rng.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-bpe-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

const CORPUS = [
  'Revenue rose 12% to $4.5 billion in the third quarter, the company said on Tuesday.',
  "Operating profit fell to EUR 31.2 mn from EUR 40.8 mn a year earlier; the board didn't change its outlook.",
  'Net sales increased by 7.3 % , while operating margin was flat at 9 % .',
  'The lowest, lower and low estimates were revised; the newest and widest ranges were not.',
  'Shares of Acme Corp. declined 3.1 percent after the earnings call.\nAnalysts expect a recovery.',
];

function corpus(n: number): string[] {
  const rng = new Rng(11);
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(CORPUS[rng.int(CORPUS.length)]);
  return out;
}

test('the byte alphabet is GPT-2\'s: 256 distinct characters, space is Ġ, newline is Ċ', () => {
  assert.equal(new Set(BYTE_TO_CHAR).size, 256);
  assert.equal(BYTE_TO_CHAR[0x20], 'Ġ');
  assert.equal(BYTE_TO_CHAR[0x0a], 'Ċ');
  assert.equal(BYTE_TO_CHAR[0x41], 'A');
  assert.deepEqual(preTokenize("Don't sell 100 shares!!  now"), ['Don', "'t", 'Ġsell', 'Ġ100', 'Ġshares', '!!', 'Ġ', 'Ġnow']);
  assert.equal(byteCharsToText(preTokenize('€ 5 — ok\n').join('')), '€ 5 — ok\n');
});

test('merges: the most frequent pair first, ties to the lower ids, never across words', () => {
  // Sennrich et al.'s example: low ×5, lower ×2, newest ×6, widest ×3.
  const counts = new Map([['low', 5], ['lower', 2], ['newest', 6], ['widest', 3]]);
  const bpe = trainBpe(counts, { vocabSize: 256 + 4, specialTokens: [] });
  // e s: 9 (newest 6 + widest 3), s t: 9, then "es t": 9; l o: 7 ... "e s" has lower ids than "s t".
  assert.deepEqual(bpe.merges, [['e', 's'], ['es', 't'], ['l', 'o'], ['lo', 'w']]);
  assert.deepEqual(bpe.tokens.slice(256), ['es', 'est', 'lo', 'low']);
  // min_frequency stops the merges once no pair occurs often enough.
  const few = trainBpe(new Map([['ab', 1], ['cd', 1]]), { vocabSize: 300, specialTokens: [], minFrequency: 2 });
  assert.equal(few.merges.length, 0);
  // a pair split by a word boundary is never merged, however frequent
  const words = countWords(['a b a b a b a b'], []);
  const bpe2 = trainBpe(words, { vocabSize: 300, specialTokens: [] });
  assert.deepEqual(bpe2.merges, [['Ġ', 'b'], ['Ġ', 'a']]);
});

test('special tokens get the first ids and are cut out of the training text', () => {
  const specials = defaultSpecialTokens();
  assert.deepEqual(specials, ['<pad>', '<s>', '</s>', '[INST]', '[/INST]']);
  const counts = countWords(['[INST] x [/INST] [INST] x [/INST]'], specials);
  assert.equal([...counts.keys()].some((w) => w.includes('INST')), false);
  const bpe = trainBpe(counts, { vocabSize: 262, specialTokens: specials });
  assert.deepEqual(bpe.tokens.slice(0, 5), specials);
  assert.equal(bpe.tokens[5 + 0x41], 'A');
  assert.throws(() => trainBpe(counts, { vocabSize: 100, specialTokens: specials }), /vocab_size must be an integer of at least 261/);
});

test('the library loads the written tokenizer, applies the merges by rank, and round-trips varied text', async () => {
  const specials = defaultSpecialTokens();
  const bpe = trainBpe(countWords(corpus(200), specials), { vocabSize: 400, specialTokens: specials });
  assert.equal(bpe.tokens.length, 400, 'the corpus has enough pairs to fill the vocabulary');
  const dir = path.join(root, 'tok');
  writeTokenizer(dir, bpe, { modelMaxLength: 512 });
  const tok = await Tokenizer.fromDir(dir, { warn: (m) => assert.fail(m) });
  assert.equal(tok.vocabSize, 400);
  assert.equal(tok.padId, 0);
  assert.equal(tok.bosId, 1);
  assert.deepEqual(tok.eosIds, [2]);

  const ranks = mergeRanks(bpe);
  const idOf = new Map(bpe.tokens.map((t, i) => [t, i]));
  const expected = (text: string) => preTokenize(text).flatMap((w) => encodeWord(w, ranks).map((t) => idOf.get(t)!));
  const texts = [
    ...CORPUS,
    'lowest newest widest lower', 'Revenues rose; revenue rose; REVENUE ROSE', '  leading spaces and trailing   ', 'tabs\tand\r\nCRLF\n\n',
    'Überschuss 5 € — 10 ¥ · 3,5 Mrd.', '利润增长 12%', 'emoji 📈📉 and a ZWJ 👩‍💼', "it's they're we've I'm you'll he'd", '1234567890.55', 'a', '',
  ];
  for (const text of texts) {
    const ids = tok.encode(text, { addSpecialTokens: false });
    assert.deepEqual(ids, expected(text), `ids of ${JSON.stringify(text)}`);
    assert.equal(tok.decode(ids), text, `round trip of ${JSON.stringify(text)}`);
  }
  // The merges do real work: the corpus' common words are single tokens.
  assert.equal(tok.encode(' revenue', { addSpecialTokens: false }).length < ' revenue'.length, true);

  // BOS is prepended; the instruction markers are one id each and drop out when decoding without specials.
  const prompt = `${SPECIAL_TOKENS.instStart} Net sales increased ${SPECIAL_TOKENS.instEnd}`;
  const ids = tok.encode(prompt);
  assert.equal(ids[0], 1);
  assert.equal(ids[1], 3);
  assert.equal(ids[ids.length - 1], 4);
  assert.deepEqual(ids.slice(2, -1), expected(' Net sales increased '));
  assert.equal(tok.decode(ids), `<s>${prompt}`);
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }), ' Net sales increased ');

  // The chat template wraps user turns in the markers and ends assistant turns with </s>.
  const chat = tok.applyChatTemplate([{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Sentiment?' }, { role: 'assistant', content: 'positive' }]);
  assert.equal(chat, '<s>[INST] Be brief.\n\nSentiment? [/INST] positive</s>');
});
