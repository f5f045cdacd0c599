#!/usr/bin/env node
// Summarises a `finlora pretrain` run for the model directory it wrote: the run's
// stderr log (what was read, the tokenizer, the model) and its metrics.jsonl reduced to
// a table of training loss (mean over each stretch of steps), learning rate, validation
// loss and throughput. Writes markdown to stdout.
//
// Usage: node scripts/pretrain_summary.mjs MODEL_DIR STDERR_LOG STDOUT_LOG [ROWS]
import * as fs from 'node:fs';
import * as path from 'node:path';

const [dir, errLog, outLog, rowsArg] = process.argv.slice(2);
if (!dir || !errLog || !outLog) throw new Error('usage: node scripts/pretrain_summary.mjs MODEL_DIR STDERR_LOG STDOUT_LOG [ROWS]');
const rows = Number(rowsArg ?? 12);
const records = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const train = records.filter((r) => r.type === 'train');
const evals = new Map(records.filter((r) => r.type === 'eval').map((r) => [r.step, r.val_loss]));
// The log's lines before training (per-step and validation lines are in the table below).
const header = fs.readFileSync(errLog, 'utf8').split('\n').filter((l) => !/^step \d+\/\d+/.test(l) && l.trim() !== '');
const config = JSON.parse(fs.readFileSync(path.join(dir, 'pretrain_config.json'), 'utf8'));

const lines = [];
lines.push('# How this model was trained', '');
lines.push('With `finlora pretrain --config demo/pretrain_config.json` (finlora\'s own full-parameter trainer, from random', 'initialisation, on this 2-core CPU machine, niced beside other work):', '');
lines.push('```', ...header.map((l) => l.replace(/^(\/\S+?):/, (_, file) => `${path.relative(process.cwd(), file)}:`)), '```', '');
lines.push('Result (stdout):', '', '```', ...fs.readFileSync(outLog, 'utf8').trim().split('\n').map((l) => l.replace(/\/tmp\/\S+/, 'demo/model')), '```', '');
lines.push(`Settings: learning rate ${config.learningRate} (${config.lrScheduler}, ${config.warmupSteps} warmup steps), AdamW betas ${config.adamBeta1}/${config.adamBeta2}, weight decay ${config.weightDecay}, clipping ${config.maxGradNorm}, batch ${config.batchSize} × ${config.sequenceLen} tokens, seed ${config.seed}; weights written as ${config.dtype}.`, '');
lines.push('| steps | mean training loss | learning rate at end | validation loss | tokens/s |', '|---|---|---|---|---|');
const per = Math.ceil(train.length / rows);
for (let i = 0; i < train.length; i += per) {
  const chunk = train.slice(i, i + per);
  const last = chunk[chunk.length - 1];
  const mean = chunk.reduce((s, r) => s + r.loss, 0) / chunk.length;
  const tps = chunk.reduce((s, r) => s + r.tokens, 0) / chunk.reduce((s, r) => s + r.tokens / Math.max(1e-9, r.tokens_per_s), 0);
  const val = [...evals].filter(([s]) => s > chunk[0].step - 1 && s <= last.step).map(([, v]) => v.toFixed(4)).join(', ');
  lines.push(`| ${chunk[0].step}–${last.step} | ${mean.toFixed(4)} | ${last.lr.toExponential(2)} | ${val || '—'} | ${Math.round(tps)} |`);
}
lines.push('', 'The loss curve is `loss.svg`.', '');
process.stdout.write(`${lines.join('\n')}\n`);
