// `finlora pretrain` as a user runs it (the built CLI in a child process): a new tiny
// Llama with a tokenizer trained on the data learns a small corpus (validation loss
// falls far below its start), and the directory it writes loads again — config.json
// through the model config parser, bf16 model.safetensors into LlamaForCausalLM, the
// tokenizer through @huggingface/tokenizers — and continues training from there
// (base_model). Flags override the config file; bad input gives one line, exit 1 and
// no output directory.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { defaultBackend } from '../../src/backend/registry.js';
import { withSafetensors } from '../../src/io/safetensors.js';
import { Tokenizer } from '../../src/io/tokenizer.js';
import { readLlamaConfig } from '../../src/models/llama/config.js';
import { LlamaForCausalLM } from '../../src/models/llama/model.js';

const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-pretrain-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

// A corpus with structure to learn: company reports built from a few patterns.
const companies = ['Northwind', 'Kestrel', 'Bluefjord', 'Aldermoor', 'Corvida', 'Lumenta'];
const metrics = ['revenue', 'operating profit', 'net sales', 'order intake'];
const verbs = ['rose', 'fell', 'was unchanged'];
const paragraphs: string[] = [];
for (let i = 0; i < 240; i++) {
  const c = companies[i % companies.length], m = metrics[(i >> 1) % metrics.length], v = verbs[(i >> 2) % verbs.length];
  paragraphs.push(`${c} said its ${m} ${v} in the quarter.\n${c} will report again next quarter.`);
}
fs.writeFileSync(path.join(root, 'reports.txt'), paragraphs.join('\n\n'));
fs.writeFileSync(path.join(root, 'finlora.jsonl'), `${JSON.stringify({ context: 'Explain EBITDA. Answer:', target: ' Earnings before interest.' })}\n${JSON.stringify({ text: 'Net debt fell.' })}\n`);
// Training runs on the default device (FINLORA_DEVICE; the config's own default is cpu).
const DEVICE = defaultBackend().name;
const CONFIG = {
  device: DEVICE, output_dir: 'out/tiny', data: ['reports.txt', 'finlora.jsonl'], vocab_size: 300, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
  num_attention_heads: 4, num_key_value_heads: 2, sequence_len: 32, batch_size: 4, learning_rate: 0.01, warmup_steps: 5, max_steps: 60,
  val_set_size: 8, evals_per_epoch: 0, seed: 3,
};
fs.writeFileSync(path.join(root, 'pretrain.json'), JSON.stringify(CONFIG));

interface Result { status: number | null; stdout: string; stderr: string }

function finlora(args: string[], cwd = root): Result {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8', env: { ...process.env, FINLORA_DEBUG: '', HF_HUB_OFFLINE: '1' }, timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function evalLosses(dir: string): number[] {
  return fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; val_loss?: number })
    .filter((r) => r.type === 'eval').map((r) => r.val_loss!);
}

test('a new model learns the corpus and its directory loads as a Hugging Face model', async () => {
  const r = finlora(['pretrain', '--config', 'pretrain.json']);
  assert.equal(r.status, 0, r.stderr);
  const dir = path.join(root, 'out', 'tiny');
  assert.match(r.stdout, /^trained 60 steps in .* final loss \d+\.\d+, validation loss (\d+\.\d+) \(perplexity \d+\.\d+\)\nmodel: .*out\/tiny \(config\.json, generation_config\.json, model\.safetensors, tokenizer\.json, tokenizer_config\.json\)\n$/);
  assert.match(r.stderr, /reports\.txt: 240 documents/);
  assert.match(r.stderr, /finlora\.jsonl: 2 documents/);
  assert.match(r.stderr, /trained a byte-level BPE tokenizer: 300 ids \(39 merges\)/);
  assert.match(r.stderr, /new LlamaForCausalLM: hidden 32, 2 layers, 4 heads \(2 key\/value\), MLP 64, vocabulary 300, tied embeddings: 28,192 parameters/);

  // The validation loss at the end is far below the untrained model's ln(300) = 5.7.
  const valLoss = Number(/validation loss (\d+\.\d+)/.exec(r.stdout)![1]);
  assert.ok(valLoss < 2.5, `validation loss ${valLoss}`);

  const config = readLlamaConfig(dir);
  assert.equal(config.architecture, 'LlamaForCausalLM');
  assert.equal(config.vocabSize, 300);
  assert.equal(config.tieWordEmbeddings, true);
  assert.equal(config.dtype, 'bf16');
  assert.deepEqual(config.eosTokenIds, [2]);
  withSafetensors(path.join(dir, 'model.safetensors'), (f) => {
    assert.equal(f.info('model.embed_tokens.weight').dtype, 'bf16');
    assert.deepEqual(f.info('model.layers.1.self_attn.k_proj.weight').shape, [16, 32]);
    assert.equal(f.has('lm_head.weight'), false);
  });
  const tok = await Tokenizer.fromDir(dir, { warn: (m) => assert.fail(m) });
  assert.equal(tok.vocabSize, 300);
  assert.equal(tok.decode(tok.encode('Kestrel said its revenue rose.'), { skipSpecialTokens: true }), 'Kestrel said its revenue rose.');
  assert.deepEqual(JSON.parse(fs.readFileSync(path.join(dir, 'generation_config.json'), 'utf8')), { bos_token_id: 1, eos_token_id: 2, pad_token_id: 0 });
  const model = LlamaForCausalLM.fromPretrained(dir, { dtype: 'bf16' });
  model.dispose();

  // Continuing from the written directory starts where it ended.
  const clash = finlora(['pretrain', '--config', 'pretrain.json', '--base-model', './out/tiny', '--output-dir', 'out/more']);
  assert.equal(clash.status, 1, 'architecture keys of the config file clash with base_model');
  assert.match(clash.stderr, /^finlora pretrain: pretrain\.json: hidden_size cannot be set with base_model, which gives the architecture and tokenizer/);
  fs.writeFileSync(path.join(root, 'continue.json'), JSON.stringify({ device: DEVICE, data: 'reports.txt', base_model: './out/tiny', output_dir: 'out/more', sequence_len: 32, max_steps: 5, val_set_size: 8, evals_per_epoch: 0, warmup_steps: 0, learning_rate: 1e-4, dtype: 'f32' }));
  const cont = finlora(['pretrain', '--config', 'continue.json']);
  assert.equal(cont.status, 0, cont.stderr);
  assert.match(cont.stderr, /continuing .*out\/tiny: hidden 32/);
  const first = evalLosses(path.join(root, 'out', 'more'))[0];
  assert.ok(first < 2.6, `continued validation loss ${first} starts near where pretraining ended (${valLoss})`);
  withSafetensors(path.join(root, 'out', 'more', 'model.safetensors'), (f) => assert.equal(f.info('model.norm.weight').dtype, 'f32'));
});

test('flags override the config file, and an existing output directory needs --resume or --overwrite', () => {
  const r = finlora(['pretrain', '--config', 'pretrain.json', '--output-dir', 'out/flags', '--max-steps', '3', '--hidden-size', '48', '--num-attention-heads', '6', '--num-key-value-heads', '3']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^trained 3 steps/);
  assert.match(r.stderr, /hidden 48, 2 layers, 6 heads \(3 key\/value\)/);
  const again = finlora(['pretrain', '--config', 'pretrain.json', '--output-dir', 'out/flags', '--max-steps', '3']);
  assert.equal(again.status, 1);
  assert.match(again.stderr, /^finlora pretrain: .*out\/flags holds checkpoints of an earlier run; pass --resume to continue it, or --overwrite to start over\n$/);
  const resumed = finlora(['pretrain', '--config', 'pretrain.json', '--output-dir', 'out/flags', '--max-steps', '3', '--hidden-size', '48', '--num-attention-heads', '6', '--num-key-value-heads', '3', '--resume']);
  assert.equal(resumed.status, 0, resumed.stderr);
  assert.match(resumed.stderr, /using the tokenizer this run trained before/);
  assert.match(resumed.stdout, /^resumed at step 3; trained 3 steps/);
});

test('bad input: one line, exit 1 (2 for usage), no output directory', () => {
  fs.writeFileSync(path.join(root, 'empty.txt'), '\n\n');
  const cases: [string[], RegExp, number][] = [
    [[], /give --config FILE, or --data FILE and --output-dir DIR/, 2],
    [['--data', 'reports.txt'], /output_dir is required/, 1],
    [['--data', 'missing.txt', '--output-dir', 'out/bad'], /data file .*missing\.txt does not exist/, 1],
    [['--data', 'empty.txt', '--output-dir', 'out/bad'], /data file .*empty\.txt holds no text/, 1],
    [['--config', 'pretrain.json', '--output-dir', 'out/bad', '--hidden-size', '30'], /hidden_size \(30\) must be a multiple of num_attention_heads \(4\)/, 1],
    [['--config', 'pretrain.json', '--output-dir', 'out/bad', '--learning-rate', 'fast'], /learning_rate must be a number, got "fast"/, 1],
    [['--config', 'pretrain.json', '--output-dir', 'out/bad', '--dtype', 'f16'], /dtype must be one of "bf16", "f32", got "f16"/, 1],
    [['--config', 'pretrain.json', '--output-dir', 'out/bad', '--vocab-size', '100'], /vocab_size must be at least 262, got 100/, 1],
    [['--config', 'absent.json'], /config file absent\.json does not exist/, 1],
  ];
  for (const [args, pattern, code] of cases) {
    const r = finlora(['pretrain', ...args]);
    assert.equal(r.status, code, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, pattern);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.equal(r.stdout, '');
  }
  fs.writeFileSync(path.join(root, 'typo.json'), JSON.stringify({ ...CONFIG, output_dir: 'out/bad', hiden_size: 64 }));
  const typo = finlora(['pretrain', '--config', 'typo.json']);
  assert.equal(typo.status, 1);
  assert.match(typo.stderr, /typo\.json: unknown key 'hiden_size'/);
  assert.equal(fs.existsSync(path.join(root, 'out', 'bad')), false);
});
