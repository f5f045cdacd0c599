// Training progress: a bar redrawn in place on a terminal, plain lines (first, every
// 15 s, last) elsewhere; messages do not break the bar. The loss curve SVG and tick
// choice; metrics.jsonl keeps only the records up to a resumed checkpoint.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { lossCurveSvg, MetricsLog, niceTicks } from '../../src/train/metrics.js';
import { type StepStatus, TrainProgress } from '../../src/train/progress.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-progress-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function stream(isTTY: boolean) {
  const chunks: string[] = [];
  return { chunks, s: { isTTY, columns: 100, write: (c: string) => (chunks.push(c), true) } };
}
const status = (step: number): StepStatus => ({ step, totalSteps: 10, epoch: step / 5, loss: 1.5, lr: 1e-4, gradNorm: 0.5, tokensPerSecond: 420.4, eta: 65 });

test('plain lines: the first step, then one per 15 s, and the last step', () => {
  let t = 0;
  const { chunks, s } = stream(false);
  const p = new TrainProgress(s, () => t);
  for (let step = 1; step <= 10; step++) {
    p.update(status(step));
    t += 4000;
  }
  assert.deepEqual(chunks.map((c) => c.split(' ')[1]), ['1/10', '5/10', '9/10', '10/10']);
  assert.equal(chunks[0], 'step 1/10 (epoch 0.20): loss 1.5000, lr 1.00e-4, 420 tok/s, ETA 1:05, grad norm 0.500\n');
});

test('on a terminal: one line redrawn, messages above it, a newline at the end', () => {
  let t = 0;
  const { chunks, s } = stream(true);
  const p = new TrainProgress(s, () => t);
  p.update(status(1));
  t += 50;
  p.update(status(2)); // within 100 ms: not redrawn
  t += 100;
  p.update(status(5));
  p.message('step 5/10: validation loss 1.2');
  t += 200;
  p.update(status(10));
  assert.equal(chunks.length, 5);
  assert.match(chunks[0], /^\rstep 1\/10 \|█*\s*\| loss 1\.5000, lr 1\.00e-4, 420 tok\/s, ETA 1:05\x1b\[K$/);
  assert.match(chunks[1], /^\rstep 5\/10 \|/);
  assert.equal(chunks[2], '\r\x1b[K');
  assert.equal(chunks[3], 'step 5/10: validation loss 1.2\n');
  assert.match(chunks[4], /^\rstep 10\/10 \|█+\| .*\x1b\[K\n$/);
});

test('loss curve: an SVG with both series; round ticks', () => {
  assert.deepEqual(niceTicks(0, 1), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(1.23, 4.9), [2, 3, 4]);
  assert.deepEqual(niceTicks(0, 37), [0, 10, 20, 30]);
  const svg = lossCurveSvg([{ step: 1, loss: 3 }, { step: 2, loss: 2.5 }, { step: 3, loss: Number.NaN }], [{ step: 2, loss: 2.7 }], 'run <x>: loss');
  assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  assert.match(svg, /run &lt;x&gt;: loss/);
  assert.equal((svg.match(/<polyline/g) ?? []).length, 2);
  assert.equal((svg.match(/<circle/g) ?? []).length, 1);
  assert.ok(!svg.includes('NaN'));
});

test('metrics.jsonl: a resumed run keeps the records up to its checkpoint', () => {
  const file = path.join(tmp, 'metrics.jsonl');
  const log = new MetricsLog(file, null);
  for (let step = 1; step <= 4; step++) log.add({ type: 'train', step, epoch: step / 4, loss: 5 - step, lr: 0.1, grad_norm: 1, tokens: 10, tokens_per_s: 5 });
  log.add({ type: 'eval', step: 4, epoch: 1, val_loss: 1.5, val_tokens: 3 });
  fs.appendFileSync(file, '{"type":"train","step":5,"lo'); // cut by a kill
  const resumed = new MetricsLog(file, 2);
  assert.deepEqual(resumed.trainPoints(), [{ step: 1, loss: 4 }, { step: 2, loss: 3 }]);
  assert.equal(fs.readFileSync(file, 'utf8').trim().split('\n').length, 2);
  assert.equal(new MetricsLog(file, null).records.length, 0);
});
