// `finlora eval`: FinLoRA's test script for a base model, with or without a PEFT
// adapter, on one of its test sets (fpb, fiqa, tfns, nwgi, ...) or any JSONL file of
// {context, target}: batched greedy answers (eval/evaluate.ts) scored as FinLoRA scores
// them (eval/metrics.ts: accuracy, weighted F1), plus a confusion matrix and the time
// per question; a table on stdout and everything, per question too, in a JSON file.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AdapterError, loadPeftAdapter } from '../../adapters/peft.js';
import { LoraConfigError } from '../../adapters/lora/config.js';
import { DataError, readJsonl } from '../../data/jsonl.js';
import { resolveDataset, DATASETS } from '../../eval/datasets.js';
import { generateAnswers } from '../../eval/evaluate.js';
import { accuracy, confusionMatrix, scoreAnswers, weightedF1 } from '../../eval/metrics.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { HubError, resolveModel } from '../../io/hub.js';
import { SafetensorsError } from '../../io/safetensors.js';
import { Tokenizer } from '../../io/tokenizer.js';
import { CheckpointError } from '../../models/checkpoint.js';
import { ConfigError } from '../../models/llama/config.js';
import { LlamaForCausalLM } from '../../models/llama/model.js';
import { quantizeBase, quantLoadOption } from '../../train/quantize.js';
import type { Command } from '../command.js';
import { defaultWeightDtype, deviceHelp, DEVICE_OPTION, resolveDevice } from '../device.js';
import { parseCommandArgs, UsageError, UserError } from '../errors.js';

const HELP = `finlora eval — FinLoRA's accuracy and weighted F1 of a model (and adapter) on a test set

Usage:
  finlora eval --model M [--adapter DIR] --dataset fpb|fiqa|tfns|nwgi|FILE.jsonl [options]

Options:
  --model M             a model directory or Hugging Face id (as base_model in a run)
  --adapter DIR         a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)
  --dataset D           ${DATASETS.map((d) => d.name).join(', ')} (FinLoRA's test sets, looked up
                        in --data-dir), or a JSONL file of {"context", "target"} lines
  --data-dir DIR        where the named test sets are (default: data/test, where
                        'finlora data fetch' puts them)
  --batch-size N        questions per batch (default 8, FinLoRA's)
  --limit N             only the first N questions
  --max-new-tokens N    answer length (default: FinLoRA's per test set, 10 for sentiment;
                        30 for other files)
  --quant-bits 8|4      quantize the base as FinLoRA's test script does with --quant_bits
                        (default: unquantized)
  --dtype f32|bf16      storage dtype of the base weights (default: bf16 on a device
                        that computes in bf16, such as cuda, so the model computes in
                        bf16; else f32)
${deviceHelp(24)}
  --out FILE.json       where the JSON results go (default results/<dataset>_<model>[_<adapter>].json)
  -h, --help            this text

Scoring follows FinLoRA's test script: each context is the prompt as it is (left
padding, at most 512 tokens), greedy decoding, the decoded text split at "Answer:" (last
part, stripped); the label set is the set of targets in the file; a prediction is the
first label occurring in the lower-cased answer; accuracy, and weighted F1 (sklearn's
average='weighted') in which a wrong answer counts as its raw text.

Exit codes: 0 success, 1 bad input, 2 bad usage.
`;

const OPTIONS = {
  model: { type: 'string' },
  adapter: { type: 'string' },
  dataset: { type: 'string' },
  'data-dir': { type: 'string' },
  'batch-size': { type: 'string' },
  limit: { type: 'string' },
  'max-new-tokens': { type: 'string' },
  'quant-bits': { type: 'string' },
  dtype: { type: 'string' },
  out: { type: 'string' },
  ...DEVICE_OPTION,
} as const;

function positiveInt(name: string, value: string | undefined, fallback: number | null): number | null {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`--${name} must be a positive integer, got '${value}'`);
  return n;
}

function pad(s: string, n: number, right = false): string {
  return right ? s.padStart(n) : s.padEnd(n);
}

/** The readable report: headline numbers, then the confusion matrix. */
export function formatReport(r: { name: string; count: number; accuracy: number; correct: number; f1: number; secondsPerQuestion: number; batchSize: number; maxNewTokens: number; confusion: ReturnType<typeof confusionMatrix> }): string {
  const lines = [
    `${r.name}: ${r.count} questions, batch size ${r.batchSize}, at most ${r.maxNewTokens} new tokens`,
    `accuracy   ${(r.accuracy * 100).toFixed(3)}% (${r.correct}/${r.count})`,
    `weighted F1 ${r.f1.toFixed(3)}`,
    `time       ${r.secondsPerQuestion.toFixed(3)} s per question`,
    '',
    'confusion matrix (rows: target, columns: first label in the answer)',
  ];
  const c = r.confusion;
  const w0 = Math.max(6, ...c.labels.map((l) => l.length));
  const widths = c.columns.map((col) => Math.max(col.length, ...c.counts.map((row) => String(row[c.columns.indexOf(col)]).length)));
  lines.push(`${pad('', w0)}  ${c.columns.map((col, j) => pad(col, widths[j], true)).join('  ')}`);
  c.labels.forEach((label, i) => lines.push(`${pad(label, w0)}  ${c.counts[i].map((n, j) => pad(String(n), widths[j], true)).join('  ')}`));
  return `${lines.join('\n')}\n`;
}

export const command: Command = {
  name: 'eval',
  help: HELP,
  async run(argv, out) {
    const { values } = parseCommandArgs('eval', { args: [...argv], options: OPTIONS, allowPositionals: false });
    if (values.model === undefined) throw new UsageError('--model is required');
    if (values.dataset === undefined) throw new UsageError(`--dataset is required (${DATASETS.map((d) => d.name).join(', ')}, or a .jsonl file)`);
    const batchSize = positiveInt('batch-size', values['batch-size'], 8)!;
    const limit = positiveInt('limit', values.limit, null);
    const quantRaw = values['quant-bits'];
    if (quantRaw !== undefined && quantRaw !== '8' && quantRaw !== '4') throw new UsageError(`--quant-bits must be 8 or 4, got '${quantRaw}'`);
    const quantBits = quantRaw === undefined ? null : quantRaw === '8' ? 8 : 4;
    const device = resolveDevice(values.device);
    const dtype = values.dtype ?? defaultWeightDtype(device);
    if (dtype !== 'f32' && dtype !== 'bf16') throw new UsageError(`--dtype must be f32 or bf16, got '${dtype}'`);
    const isFile = values.dataset.endsWith('.jsonl') || values.dataset.includes('/');
    const dataDir = values['data-dir'] ?? path.join('data', 'test');
    const ds = resolveDataset(values.dataset, dataDir);
    if (!isFile && ds.named === null) {
      throw new UsageError(`--dataset '${values.dataset}' is neither one of FinLoRA's test sets (${DATASETS.map((d) => d.name).join(', ')}) nor a .jsonl file`);
    }
    const maxNewTokens = positiveInt('max-new-tokens', values['max-new-tokens'], ds.maxNewTokens)!;

    // Input first: the test set, the model's files, the adapter's.
    let data;
    try {
      data = readJsonl(ds.file, { what: 'test set' });
    } catch (e) {
      if (e instanceof DataError && !isFile && !fs.existsSync(ds.file)) {
        throw new UserError(
          `${ds.named!.file} (FinLoRA's ${ds.named!.description} test set) is not in ${path.resolve(dataDir)}; download FinLoRA's test sets with 'finlora data fetch', or point --data-dir at the directory that holds it`,
        );
      }
      if (e instanceof DataError) throw new UserError(e.message);
      throw e;
    }
    const examples = limit === null ? data.examples : data.examples.slice(0, limit);
    if (values.adapter !== undefined) {
      for (const f of ['adapter_config.json', 'adapter_model.safetensors']) {
        if (!fs.existsSync(path.join(values.adapter, f))) throw new UserError(`--adapter ${values.adapter}: no ${f} (a PEFT adapter directory holds adapter_config.json and adapter_model.safetensors)`);
      }
    }
    let dir: string;
    let tokenizer: Tokenizer;
    try {
      dir = (await resolveModel(values.model)).dir;
      tokenizer = await Tokenizer.fromDir(dir, { warn: (m) => process.stderr.write(`${m}\n`) });
    } catch (e) {
      if (e instanceof HubError) throw new UserError(`--model ${values.model}: ${e.message}`);
      if (e instanceof Error) throw new UserError(e.message);
      throw e;
    }

    let model: LlamaForCausalLM;
    try {
      model = LlamaForCausalLM.fromPretrained(dir, { dtype, device, ...quantLoadOption(quantBits) });
    } catch (e) {
      if (e instanceof ConfigError || e instanceof CheckpointError || e instanceof SafetensorsError) throw new UserError(e.message);
      throw e;
    }
    const quant = quantBits === null ? null : quantizeBase(model, quantBits);
    try {
      if (values.adapter !== undefined) {
        try {
          loadPeftAdapter(values.adapter, model, quant !== null ? { frozenWeight: quant.frozenWeight } : {});
        } catch (e) {
          if (e instanceof AdapterError || e instanceof LoraConfigError || e instanceof SafetensorsError) throw new UserError(e.message);
          throw e;
        }
      }
      const targets = examples.map((e) => e.target);
      const gen = generateAnswers(model, tokenizer, examples.map((e) => e.context), {
        batchSize, maxNewTokens, progress: process.stderr, label: ds.name,
      });
      const scored = scoreAnswers(gen.answers, targets);
      const acc = accuracy(scored);
      const f1 = weightedF1(targets, scored.map((s) => s.response));
      const confusion = confusionMatrix(scored);
      const perQuestion = gen.seconds / Math.max(1, examples.length);
      const outFile = values.out ?? path.join('results', `${ds.name}_${values.model}${values.adapter !== undefined ? `_${values.adapter}` : ''}.json`.replace(/[/\\]/g, '-').replace(/^-+/, ''));
      const report = {
        task: ds.name, dataset_file: ds.file, model: values.model, adapter: values.adapter ?? null, quant_bits: quantBits,
        count: examples.length, accuracy: acc, f1: f1.f1, time_per_question: perQuestion, batch_size: batchSize, max_new_tokens: maxNewTokens,
        truncated_prompts: gen.truncatedPrompts, classes: f1.classes.filter((c) => c.support > 0), confusion,
        answers: scored.map((s, i) => ({ line: examples[i].line, target: s.target, answer: s.output, prediction: s.prediction, correct: s.correct })),
      };
      fs.mkdirSync(path.dirname(path.resolve(outFile)), { recursive: true });
      writeFileAtomic(outFile, `${JSON.stringify(report, null, 2)}\n`);
      out(formatReport({ name: ds.name, count: examples.length, accuracy: acc, correct: scored.filter((s) => s.correct).length, f1: f1.f1, secondsPerQuestion: perQuestion, batchSize, maxNewTokens, confusion }));
      out(`results: ${outFile}\n`);
      if (gen.truncatedPrompts > 0) process.stderr.write(`${gen.truncatedPrompts} prompt(s) were longer than 512 tokens and were cut to 512, as FinLoRA's test script cuts them\n`);
      return 0;
    } finally {
      quant?.dispose();
      model.dispose();
    }
  },
};
