// `finlora eval` as a user runs it, on a tiny random Llama model directory: FinLoRA's
// named test sets resolve to its file names in --data-dir (fpb -> fpb_test.jsonl, 10 new
// tokens), the JSON file agrees with the table and with FinLoRA's scoring of the recorded
// answers, left padding does not change greedy answers, an adapter changes them, and a
// missing test set (tfns is not in the shared data) or bad input gives one line.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { accuracy, scoreAnswers, weightedF1 } from '../../src/eval/metrics.js';
import { tensor } from '../../src/ops/creation.js';
import { assign } from '../../src/ops/inplace.js';
import { LlamaForCausalLM } from '../../src/models/llama/model.js';
import { scope } from '../../src/tensor/tensor.js';
import { injectAdapters } from '../../src/train/adapters.js';
import { sentimentLines, writeTinyModelDir } from '../train/tiny.js';

const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
let repo = path.dirname(fileURLToPath(import.meta.url));
while (!fs.existsSync(path.join(repo, 'package.json'))) repo = path.dirname(repo);
const SHARED_TEST = path.resolve(repo, '../shared/finlora-data/test');
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-eval-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

const MODEL = path.join(root, 'tiny');
writeTinyModelDir(MODEL);
const TESTSET = path.join(root, 'sent_test.jsonl');
fs.writeFileSync(TESTSET, `${sentimentLines(7, 21).join('\n')}\n`);

// An adapter with a non-zero update, saved in PEFT's format.
const ADAPTER = path.join(root, 'adapter');
{
  const model = LlamaForCausalLM.fromPretrained(MODEL);
  const { target } = injectAdapters(model, { r: 2, alpha: 16, dropout: 0, targetModules: ['q_proj', 'v_proj'], useDora: true, useRslora: false, baseModel: MODEL, seed: 1 });
  for (const m of target.modules) scope(() => assign(m.loraB, tensor(Float32Array.from({ length: m.loraB.size }, (_, i) => Math.sin(i) * 0.5), m.loraB.shape)));
  target.save(ADAPTER);
  model.dispose();
}

interface Result { status: number | null; stdout: string; stderr: string }
function finlora(...args: string[]): Result {
  const r = spawnSync(process.execPath, [CLI, 'eval', ...args], { cwd: root, encoding: 'utf8', env: { ...process.env, FINLORA_DEBUG: '', HF_HUB_OFFLINE: '1' }, timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface Report {
  task: string; count: number; accuracy: number; f1: number; max_new_tokens: number; batch_size: number; time_per_question: number;
  answers: { line: number; target: string; answer: string; prediction: string | null; correct: boolean }[];
  confusion: { labels: string[]; columns: string[]; counts: number[][] };
}
const read = (file: string): Report => JSON.parse(fs.readFileSync(file, 'utf8')) as Report;

test('a named test set: fpb is fpb_test.jsonl in --data-dir, 10 new tokens; table and JSON agree with FinLoRA scoring', () => {
  const out = path.join(root, 'fpb.json');
  const r = finlora('--model', MODEL, '--dataset', 'fpb', '--data-dir', SHARED_TEST, '--limit', '5', '--batch-size', '2', '--out', out);
  assert.equal(r.status, 0, r.stderr);
  const rep = read(out);
  assert.equal(rep.task, 'fpb');
  assert.equal(rep.count, 5);
  assert.equal(rep.max_new_tokens, 10);
  assert.equal(rep.batch_size, 2);
  assert.deepEqual(rep.answers.map((a) => a.line), [1, 2, 3, 4, 5]);
  assert.deepEqual(rep.answers.map((a) => a.target), ['neutral', 'negative', 'neutral', 'positive', 'neutral']);
  const scored = scoreAnswers(rep.answers.map((a) => a.answer), rep.answers.map((a) => a.target));
  assert.equal(rep.accuracy, accuracy(scored));
  assert.equal(rep.f1, weightedF1(rep.answers.map((a) => a.target), scored.map((s) => s.response)).f1);
  assert.match(r.stdout, /^fpb: 5 questions, batch size 2, at most 10 new tokens\naccuracy   \d+\.\d{3}% \(\d\/5\)\nweighted F1 \d\.\d{3}\ntime       \d+\.\d{3} s per question\n\nconfusion matrix \(rows: target, columns: first label in the answer\)\n/);
  assert.match(r.stdout, new RegExp(`results: ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\n$`));
  assert.equal(rep.confusion.counts.flat().reduce((a, b) => a + b, 0), 5);
});

test('left padding does not change greedy answers; an adapter does', () => {
  const one = path.join(root, 'b1.json'), four = path.join(root, 'b4.json'), adapted = path.join(root, 'ad.json');
  // f32 weights and compute on every device: the point is the padding, and on a GPU the
  // bf16 default could flip a near-tie of this random model between batch shapes.
  const f32 = ['--dtype', 'f32'];
  assert.equal(finlora('--model', MODEL, '--dataset', TESTSET, '--batch-size', '1', '--max-new-tokens', '6', ...f32, '--out', one).status, 0);
  assert.equal(finlora('--model', MODEL, '--dataset', TESTSET, '--batch-size', '4', '--max-new-tokens', '6', ...f32, '--out', four).status, 0);
  assert.deepEqual(read(four).answers.map((a) => a.answer), read(one).answers.map((a) => a.answer));
  const r = finlora('--model', MODEL, '--adapter', ADAPTER, '--dataset', TESTSET, '--batch-size', '4', '--max-new-tokens', '6', ...f32, '--out', adapted);
  assert.equal(r.status, 0, r.stderr);
  assert.notDeepEqual(read(adapted).answers.map((a) => a.answer), read(one).answers.map((a) => a.answer));
  assert.equal(read(adapted).max_new_tokens, 6);
  // a file named like no FinLoRA set takes FinLoRA's default of 30 new tokens
  const d = path.join(root, 'd.json');
  assert.equal(finlora('--model', MODEL, '--dataset', TESTSET, '--limit', '1', '--out', d).status, 0);
  assert.equal(read(d).max_new_tokens, 30);
});

test('a missing test set and bad input: one line, non-zero exit', () => {
  const cases: [string[], number, RegExp][] = [
    [['--dataset', 'tfns', '--data-dir', SHARED_TEST], 1, /tfns_test\.jsonl \(FinLoRA's Twitter Financial News Sentiment test set\) is not in .*finlora-data\/test; download FinLoRA's test sets with 'finlora data fetch'/],
    [['--dataset', 'sentiment'], 2, /--dataset 'sentiment' is neither one of FinLoRA's test sets \(fpb, fiqa, tfns, nwgi/],
    [['--dataset', path.join(root, 'none.jsonl')], 1, /test set .*none\.jsonl does not exist/],
    [['--dataset', TESTSET, '--batch-size', '0'], 2, /--batch-size must be a positive integer, got '0'/],
    [['--dataset', TESTSET, '--adapter', root], 1, /--adapter .*: no adapter_config\.json/],
    [['--dataset', TESTSET, '--quant-bits', '3'], 2, /--quant-bits must be 8 or 4, got '3'/],
    [['--dataset', TESTSET, '--dtype', 'f16'], 2, /--dtype must be f32 or bf16, got 'f16'/],
    [['--dataset', TESTSET, '--device', 'tpu'], 1, /device 'tpu' \(--device\) is not available: unknown device 'tpu'/],
  ];
  for (const [args, status, pattern] of cases) {
    const r = finlora('--model', MODEL, ...args);
    assert.equal(r.status, status, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /^finlora eval: /m);
    assert.match(r.stderr, pattern);
    assert.equal(r.stderr.trim().split('\n').filter((l) => l.startsWith('finlora eval')).length, 1, r.stderr);
  }
  const noModel = finlora('--model', path.join(root, 'absent'), '--dataset', TESTSET);
  assert.equal(noModel.status, 1);
  assert.match(noModel.stderr, /^finlora eval: --model .*absent: model directory .*absent does not exist\n$/);
});
