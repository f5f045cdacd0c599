// Checkpoints are whole or absent: a save that fails part-way (a disposed tensor here,
// a full disk in life) leaves the earlier checkpoints as they were and no partial
// directory; old ones beyond save_total_limit go; a checkpoint restores exactly.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { tensor } from '../../src/ops/creation.js';
import { keep } from '../../src/tensor/tensor.js';
import { AdamW } from '../../src/train/adamw.js';
import { listCheckpoints, readTrainerState, removeStaleTemporaries, restoreCheckpoint, saveCheckpoint, type TrainerState } from '../../src/train/checkpoint.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-ckpt-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function state(step: number): TrainerState {
  return { format: 'finlora-trainer-state', version: 1, run: 'r', fingerprint: 'f', step, totalSteps: 10, data: { epoch: 0, batch: step, rngAtEpochStart: [1, 2, 3, 4] }, dropout: { seed: 5, offset: 77 * step }, tokens: 100 * step, seconds: step };
}

test('save, prune to save_total_limit, restore exactly', () => {
  const runDir = path.join(tmp, 'a');
  fs.mkdirSync(runDir);
  const p = keep(tensor([1, 2, 3], [3], { requiresGrad: true }));
  const q = keep(tensor([4, 5], [1, 2], { requiresGrad: true }));
  const opt = new AdamW([p, q], { lr: 0.1, weightDecay: 0 });
  for (let step = 1; step <= 4; step++) {
    p.grad = keep(tensor([step, -1, 0.5], [3]));
    q.grad = keep(tensor([0.25, step], [1, 2]));
    opt.step();
    p.grad.dispose();
    q.grad.dispose();
    p.grad = q.grad = null;
    saveCheckpoint({ runDir, params: [['p', p], ['q', q]], optimizer: opt, state: state(step), keep: 2 });
  }
  assert.deepEqual(listCheckpoints(runDir).map((c) => c.step), [3, 4]);
  const saved = { p: [...p.toArray()], q: [...q.toArray()], m: [...opt.stateOf(0).expAvg.toArray()], v: [...opt.stateOf(1).expAvgSq.toArray()] };
  const p2 = keep(tensor([0, 0, 0], [3], { requiresGrad: true }));
  const q2 = keep(tensor([0, 0], [1, 2], { requiresGrad: true }));
  const opt2 = new AdamW([p2, q2], { lr: 0.1, weightDecay: 0 });
  const dir = listCheckpoints(runDir).at(-1)!.dir;
  const s = readTrainerState(dir);
  assert.deepEqual(s, state(4));
  restoreCheckpoint(dir, [['p', p2], ['q', q2]], opt2, s);
  assert.deepEqual({ p: [...p2.toArray()], q: [...q2.toArray()], m: [...opt2.stateOf(0).expAvg.toArray()], v: [...opt2.stateOf(1).expAvgSq.toArray()] }, saved);
  assert.equal(opt2.stepCount, 4);
  // a checkpoint for other tensors is refused, naming the tensor
  const r = keep(tensor([0, 0, 0], [3], { requiresGrad: true }));
  assert.throws(() => restoreCheckpoint(dir, [['r', r]], new AdamW([r], { lr: 1 }), s), /holds 'p', which this run does not train/);
  const wrong = keep(tensor([0, 0], [2], { requiresGrad: true }));
  assert.throws(() => restoreCheckpoint(dir, [['p', p2], ['q', wrong]], new AdamW([p2, wrong], { lr: 1 }), s), /'q' is \[1, 2\], the run has \[2\]/);
});

test('a save that fails part-way leaves no checkpoint directory and the earlier ones intact', () => {
  const runDir = path.join(tmp, 'b');
  fs.mkdirSync(runDir);
  const p = keep(tensor([1, 2], [2], { requiresGrad: true }));
  const opt = new AdamW([p], { lr: 0.1 });
  saveCheckpoint({ runDir, params: [['p', p]], optimizer: opt, state: state(1), keep: 5 });
  const before = fs.readFileSync(path.join(listCheckpoints(runDir)[0].dir, 'params.safetensors'));
  // params.safetensors is written, then the optimizer state fails
  opt.stateOf(0).expAvg.dispose();
  assert.throws(() => saveCheckpoint({ runDir, params: [['p', p]], optimizer: opt, state: state(2), keep: 5 }), /disposed/);
  assert.deepEqual(listCheckpoints(runDir).map((c) => c.step), [1]);
  assert.deepEqual(fs.readdirSync(path.join(runDir, 'checkpoints')), ['checkpoint-1']);
  assert.ok(fs.readFileSync(path.join(listCheckpoints(runDir)[0].dir, 'params.safetensors')).equals(before));
  // temporaries left by a killed save are cleared on resume
  fs.mkdirSync(path.join(runDir, 'checkpoints', '.checkpoint-2.123.abc.tmp'));
  removeStaleTemporaries(runDir);
  assert.deepEqual(fs.readdirSync(path.join(runDir, 'checkpoints')), ['checkpoint-1']);
  // a damaged state file is named
  fs.writeFileSync(path.join(listCheckpoints(runDir)[0].dir, 'trainer_state.json'), '{"format": "other"}');
  assert.throws(() => readTrainerState(listCheckpoints(runDir)[0].dir), /trainer_state\.json is not a finlora trainer state/);
});
