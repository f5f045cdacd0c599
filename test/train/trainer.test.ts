// The training loop on a tiny random Llama: it trains (full-parameter on a few tensors,
// and with real DoRA adapters), logs metrics and draws the loss curve, checkpoints at
// epoch ends and every save_steps, resumes to bit-identical weights, stops on a NaN loss
// keeping its checkpoints, and refuses DoRA runs whose magnitudes do not train.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { type Features, IGNORE_INDEX } from '../../src/data/format.js';
import { tensor } from '../../src/ops/creation.js';
import { assign } from '../../src/ops/inplace.js';
import { Rng } from '../../src/tensor/rng.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { injectAdapters } from '../../src/train/adapters.js';
import { enableGradientCheckpointing } from '../../src/train/grad_checkpoint.js';
import { listCheckpoints } from '../../src/train/checkpoint.js';
import { DoraCheckError } from '../../src/train/monitor.js';
import { fullParameterTarget, type TrainTarget } from '../../src/train/target.js';
import { runTraining, stepCounts, type TrainerOptions, TrainingStopped, type TrainSettings } from '../../src/train/trainer.js';
import { tinyLlama, VOCAB } from './tiny.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-trainer-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
let dirs = 0;
function runDir(): string {
  const d = path.join(tmp, `run${dirs++}`);
  fs.mkdirSync(d);
  return d;
}

/** Sequences of 6..13 tokens whose last 3 tokens are targets, a fixed pattern to learn. */
function examples(n: number, seed: number): Features[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, (_, line) => {
    const len = 6 + rng.int(8);
    const ids = Array.from({ length: len }, () => 1 + rng.int(40));
    for (let i = len - 3; i < len; i++) ids[i] = (ids[i - 1] * 7 + 3) % 50;
    const inputIds = Int32Array.from(ids);
    const labels = Int32Array.from(ids, (id, i) => (i < len - 3 ? IGNORE_INDEX : id));
    return { inputIds, labels, line: line + 1 };
  });
}

const SETTINGS: TrainSettings = {
  name: 'tiny', learningRate: 5e-3, numEpochs: 2, batchSize: 3, gradientAccumulationSteps: 2, warmupSteps: 2, lrScheduler: 'cosine',
  weightDecay: 0, adamBeta1: 0.9, adamBeta2: 0.999, adamEpsilon: 1e-8, maxGradNorm: 1, evalsPerEpoch: 2, seed: 5, maxSteps: null,
  saveSteps: null, saveTotalLimit: 10,
};

const TRAIN = examples(17, 1);
const VAL = examples(4, 2);

function fullTarget(model: ReturnType<typeof tinyLlama>): TrainTarget {
  const names = new Set(['model.layers.0.self_attn.q_proj.weight', 'model.layers.1.mlp.down_proj.weight', 'lm_head.weight']);
  return fullParameterTarget([...model.namedParameters()].filter(([n]) => names.has(n)));
}

function options(dir: string, over: Partial<Omit<TrainerOptions, 'settings'>> & { settings?: Partial<TrainSettings> } = {}): { o: TrainerOptions; dispose: () => void } {
  const own = over.model === undefined ? tinyLlama() : null;
  const model = over.model ?? own!;
  const target = over.target ?? fullTarget(own!);
  const logs: string[] = [];
  const o: TrainerOptions = {
    model, target, train: TRAIN, val: VAL, padId: 0, runDir: dir, resume: false, fingerprint: 'f', log: (l) => logs.push(l), progress: null,
    ...over,
    settings: { ...SETTINGS, ...over.settings },
  };
  return { o, dispose: () => own?.dispose() };
}

function bytes(file: string): Buffer {
  return fs.readFileSync(file);
}

test('step counts: ceil(batches / accumulation) per epoch, epochs may be fractional, max_steps wins', () => {
  assert.deepEqual(stepCounts(17, { batchSize: 3, gradientAccumulationSteps: 2, numEpochs: 2, maxSteps: null }), { perEpoch: 3, total: 6 });
  assert.deepEqual(stepCounts(17, { batchSize: 3, gradientAccumulationSteps: 2, numEpochs: 0.5, maxSteps: null }), { perEpoch: 3, total: 2 });
  assert.deepEqual(stepCounts(16, { batchSize: 8, gradientAccumulationSteps: 1, numEpochs: 4, maxSteps: 3 }), { perEpoch: 2, total: 3 });
});

test('full-parameter training of a few tensors: loss falls, metrics, loss curve, checkpoints, trained weights', () => {
  const dir = runDir();
  const { o, dispose } = options(dir, { settings: { numEpochs: 6, saveSteps: 4, saveTotalLimit: 100, learningRate: 0.02 } });
  const up = (o.model as ReturnType<typeof tinyLlama>).model.layers.at(0).mlp.up_proj.weight;
  const frozenBefore = [...up.toArray()];
  const r = runTraining(o);
  assert.equal(r.steps, 18);
  assert.equal(r.totalSteps, 18);
  const records = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const train = records.filter((x) => x.type === 'train');
  assert.equal(train.length, 18);
  assert.deepEqual(train.map((x) => x.step), Array.from({ length: 18 }, (_, i) => i + 1));
  assert.equal(train[0].lr, 0, 'warmup starts at rate 0, as transformers');
  assert.equal(train[2].lr, 0.02);
  for (const x of train) for (const k of ['loss', 'lr', 'grad_norm', 'tokens', 'tokens_per_s', 'epoch']) assert.equal(typeof x[k], 'number', k);
  assert.ok(train[17].loss < train[0].loss * 0.8, `loss falls: ${train[0].loss} -> ${train[17].loss}`);
  const evals = records.filter((x) => x.type === 'eval');
  // every floor(3 / 2) = 1 step, and at the end
  assert.equal(evals.length, 18);
  assert.ok(evals.every((e) => Number.isFinite(e.val_loss) && e.val_tokens === 12));
  assert.match(fs.readFileSync(path.join(dir, 'loss.svg'), 'utf8'), /^<svg [^>]*>[\s\S]*<polyline[\s\S]*<\/svg>\n$/);
  // epoch ends (3, 6, ..., 18) and every 4 steps
  assert.deepEqual(listCheckpoints(dir).map((c) => c.step), [3, 4, 6, 8, 9, 12, 15, 16, 18]);
  assert.ok(fs.existsSync(path.join(dir, 'trained.safetensors')));
  assert.deepEqual([...up.toArray()], frozenBefore, 'frozen tensors do not change');
  dispose();
});

test('same seed, same machine: identical weights; a run stopped mid-way and resumed ends identical too', () => {
  const straight = runDir();
  const a = options(straight, { settings: { saveSteps: 1 } });
  runTraining(a.o);
  a.dispose();
  const again = runDir();
  const b = options(again, { settings: { saveSteps: 1 } });
  runTraining(b.o);
  b.dispose();
  assert.ok(bytes(path.join(straight, 'trained.safetensors')).equals(bytes(path.join(again, 'trained.safetensors'))));

  for (const stopAfter of [1, 3, 4]) {
    const dir = runDir();
    const first = options(dir, { settings: { saveSteps: 1 }, onStep: (s) => { if (s === stopAfter) throw new Error('killed'); } });
    assert.throws(() => runTraining(first.o), /killed/);
    first.dispose();
    // the step that "died" was checkpointed before onStep ran; drop it to resume from the one before, as a kill mid-step would
    if (stopAfter > 1) fs.rmSync(listCheckpoints(dir).at(-1)!.dir, { recursive: true });
    const second = options(dir, { resume: true, settings: { saveSteps: 1 } });
    const r = runTraining(second.o);
    second.dispose();
    assert.equal(r.resumedFrom, stopAfter > 1 ? stopAfter - 1 : 1);
    assert.ok(bytes(path.join(straight, 'trained.safetensors')).equals(bytes(path.join(dir, 'trained.safetensors'))), `resumed after step ${stopAfter}`);
    const steps = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((x) => x.type === 'train').map((x) => x.step);
    assert.deepEqual(steps, [1, 2, 3, 4, 5, 6], 'the metrics read as one run');
  }
});

test('a resume with other settings is refused, naming the checkpoint', () => {
  const dir = runDir();
  const a = options(dir, { settings: { maxSteps: 2 } });
  runTraining(a.o);
  a.dispose();
  const b = options(dir, { resume: true, fingerprint: 'other' });
  assert.throws(() => runTraining(b.o), (e: unknown) => e instanceof TrainingStopped && /checkpoint-2 was written by this run with other settings or data/.test(e.message));
  b.dispose();
});

test('a NaN loss stops the run with a message; the last good checkpoint stays and no weights are written', () => {
  const dir = runDir();
  let poison: Tensor | null = null;
  const { o, dispose } = options(dir, {
    settings: { saveSteps: 1 },
    onStep: (s) => {
      if (s === 2 && poison !== null) scope(() => assign(poison!, tensor(new Float32Array(poison!.size).fill(Number.NaN), poison!.shape)));
    },
  });
  poison = o.target.parameters.find(([n]) => n === "lm_head.weight")![1];
  assert.throws(() => runTraining(o), (e: unknown) => {
    assert.ok(e instanceof TrainingStopped);
    assert.match(e.message, /^the loss is NaN at step 3 \(epoch 1\); stopping before the weights are touched; the last good checkpoint, .*checkpoint-2, is kept/);
    return true;
  });
  assert.deepEqual(listCheckpoints(dir).map((c) => c.step), [1, 2]);
  assert.ok(!fs.existsSync(path.join(dir, 'trained.safetensors')));
  dispose();
});

test('DoRA adapters train: magnitudes and LoRA updates move, logged per module type; PEFT files written', () => {
  const dir = runDir();
  const model = tinyLlama();
  const { target } = injectAdapters(model, { r: 4, alpha: 8, dropout: 0.05, targetModules: ['q_proj', 'v_proj'], useDora: true, useRslora: false, baseModel: 'tiny', seed: 3 });
  const { o } = options(dir, { model, target, settings: { numEpochs: 1 } });
  const r = runTraining(o);
  assert.equal(r.steps, 3);
  const moves = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((x) => x.type === 'movement');
  assert.ok(moves.length >= 1);
  const last = moves.at(-1).modules;
  assert.deepEqual(Object.keys(last).sort(), ['q_proj', 'v_proj']);
  for (const m of Object.values(last) as { magnitude_change: number; update_ratio: number }[]) {
    assert.ok(m.magnitude_change > 0 && m.magnitude_change < 0.5, JSON.stringify(m));
    assert.ok(m.update_ratio > 0 && m.update_ratio < 1, JSON.stringify(m));
  }
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
  assert.equal(config.use_dora, true);
  assert.equal(config.r, 4);
  assert.ok(fs.existsSync(path.join(dir, 'adapter_model.safetensors')));
  model.dispose();
});

test('a DoRA run whose magnitudes are frozen, or get no gradient, fails at once', () => {
  const frozenModel = tinyLlama();
  const frozen = injectAdapters(frozenModel, { r: 2, alpha: 4, dropout: 0, targetModules: ['q_proj'], useDora: true, useRslora: false, baseModel: 'tiny', seed: 1 });
  const mags = frozen.target.modules.map((m) => m.magnitude!);
  for (const m of mags) m.requiresGrad = false;
  const { o: o1 } = options(runDir(), {
    model: frozenModel,
    target: { ...frozen.target, parameters: frozen.target.parameters.filter(([, t]) => !mags.includes(t)) },
  });
  assert.throws(() => runTraining(o1), (e: unknown) => e instanceof DoraCheckError && /DoRA magnitudes of 2 module\(s\) are frozen .*train as plain LoRA/.test(e.message));
  frozenModel.dispose();

  // magnitudes that are trainable but never reach the loss (a forward that ignores them)
  const model = tinyLlama();
  const plain = injectAdapters(model, { r: 2, alpha: 4, dropout: 0, targetModules: ['q_proj'], useDora: false, useRslora: false, baseModel: 'tiny', seed: 1 });
  const detached = plain.target.modules.map((m) => {
    const t = tensor(new Float32Array(m.loraB.shape[0]).fill(1), [m.loraB.shape[0]], { requiresGrad: true });
    return { ...m, magnitude: t };
  });
  const fake: TrainTarget = { ...plain.target, useDora: true, modules: detached, parameters: [...plain.target.parameters, ...detached.map((m, i) => [`m${i}`, m.magnitude] as const)] };
  const { o: o2 } = options(runDir(), { model, target: fake });
  assert.throws(() => runTraining(o2), (e: unknown) => e instanceof DoraCheckError && /DoRA magnitudes of 2 of 2 modules received no gradient in the first step/.test(e.message));
  model.dispose();
  void VOCAB;
});

test('native memory stays flat: what a run leaves allocated does not grow with its length', () => {
  const model = tinyLlama();
  const device = model.backend;
  const { target, lora } = injectAdapters(model, { r: 4, alpha: 8, dropout: 0.1, targetModules: ['q_proj', 'v_proj'], useDora: true, useRslora: false, baseModel: 'tiny', seed: 2 });
  enableGradientCheckpointing(model, lora.dropout);
  const base = device.liveBytes();
  const left = [2, 12].map((maxSteps) => {
    const { o } = options(runDir(), { model, target, settings: { maxSteps } });
    runTraining(o);
    return device.liveBytes() - base;
  });
  assert.equal(left[1], left[0]);
  // DoRA's cached eval-mode norms (one per output row of each adapted layer), nothing else
  assert.equal(left[0], 4 * 2 * (32 + 16));
  model.dispose();
});
