// The training loop, following transformers' Trainer as axolotl drives it for FinLoRA:
//
// - An optimizer step consumes gradient_accumulation_steps micro-batches of batch_size
//   sequences; an epoch's last step takes what is left, so an epoch is
//   ceil(batches / accumulation) steps and no example is dropped. The run is
//   max_steps steps, else ceil(num_epochs × steps per epoch).
// - The loss of a step is the mean over every target token of all its micro-batches
//   (transformers ≥ 4.46 divides each micro-batch's summed loss by the step's token
//   count, num_items_in_batch), so long and short micro-batches weigh by their tokens.
// - Gradients are clipped to max_grad_norm (global L2 norm), then AdamW steps with the
//   scheduled rate; the rate of step k is base · λ(k) (schedule.ts).
// - Validation loss (the mean over the validation set's target tokens) every
//   max(1, floor(steps per epoch / evals_per_epoch)) steps and at the end, as axolotl
//   sets eval_steps from evals_per_epoch.
// - Checkpoints (checkpoint.ts) at each epoch end and every save_steps; --resume
//   continues from the newest and ends with the same weights, bit for bit, as a run
//   that was never stopped: the data order, the dropout stream, the optimizer moments
//   and the step all come back, and nothing else feeds the computation.
// - A loss or gradient norm that is NaN or infinite stops the run before the optimizer
//   touches the weights; the checkpoints written so far stay.
//
// The model and what trains are given (target.ts); this file knows nothing of adapters.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { backward, noGrad } from '../autograd/tape.js';
import type { ProgressStream } from '../io/progress.js';
import { writeFileAtomic } from '../io/atomic.js';
import { causalLmLossAt } from '../models/loss.js';
import { mul } from '../ops/binary.js';
import { tensor } from '../ops/creation.js';
import { scope, type Tensor } from '../tensor/tensor.js';
import { type Batch, EpochBatcher, sequentialBatches } from '../data/batches.js';
import type { Features } from '../data/format.js';
import { AdamW, clipCoefficient, gradNorm as globalGradNorm } from './adamw.js';
import { listCheckpoints, readTrainerState, removeStaleTemporaries, restoreCheckpoint, saveCheckpoint, type TrainerState } from './checkpoint.js';
import type { RunConfig } from './config.js';
import { lossCurveSvg, MetricsLog } from './metrics.js';
import { MovementMonitor } from './monitor.js';
import { TrainProgress } from './progress.js';
import { LrSchedule } from './schedule.js';
import type { CausalLM, TrainTarget } from './target.js';

/** The settings of a run the trainer reads, with the meanings RunConfig documents (a RunConfig is one). */
export type TrainSettings = Pick<
  RunConfig,
  | 'name' | 'learningRate' | 'numEpochs' | 'batchSize' | 'gradientAccumulationSteps' | 'warmupSteps' | 'lrScheduler'
  | 'weightDecay' | 'adamBeta1' | 'adamBeta2' | 'adamEpsilon' | 'maxGradNorm' | 'evalsPerEpoch' | 'seed' | 'maxSteps'
  | 'saveSteps' | 'saveTotalLimit'
>;

export interface TrainerOptions {
  settings: TrainSettings;
  model: CausalLM;
  target: TrainTarget;
  train: readonly Features[];
  val: readonly Features[];
  /** Fills the padding of right-padded batches (masked out of the loss). */
  padId: number;
  /** Where checkpoints, metrics.jsonl, loss.svg and the final weights go; must exist. */
  runDir: string;
  /** Continue from the newest checkpoint in runDir (start afresh when there is none). */
  resume: boolean;
  /** Identifies the settings and data; a checkpoint with another one is not resumed. */
  fingerprint: string;
  /** Messages for the user (one line each). */
  log: (line: string) => void;
  /** Progress display (stderr); null for none. */
  progress: ProgressStream | null;
  now?: () => number;
  /** Called after every optimizer step (tests). */
  onStep?: (step: number) => void;
}

export interface TrainResult {
  readonly steps: number;
  readonly totalSteps: number;
  readonly loss: number;
  readonly valLoss: number | null;
  readonly tokens: number;
  readonly seconds: number;
  readonly resumedFrom: number | null;
}

/** A run stopped on purpose (non-finite loss, an unusable checkpoint); the message says why and what is kept. */
export class TrainingStopped extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TrainingStopped';
  }
}

/** Steps in one epoch and in the whole run. */
export function stepCounts(nTrain: number, s: Pick<TrainSettings, 'batchSize' | 'gradientAccumulationSteps' | 'numEpochs' | 'maxSteps'>): { perEpoch: number; total: number } {
  const batches = Math.ceil(nTrain / s.batchSize);
  const perEpoch = Math.ceil(batches / s.gradientAccumulationSteps);
  return { perEpoch, total: s.maxSteps ?? Math.max(1, Math.ceil(s.numEpochs * perEpoch - 1e-9)) };
}

/** A batch's mean causal-LM loss, with logits computed only where a label counts. */
function batchLoss(b: Batch, model: CausalLM): Tensor {
  const ids = tensor(b.inputIds, [b.rows, b.length], { dtype: 'int32', device: model.backend });
  return causalLmLossAt((rows) => model.forward(ids, { rows }), b.labels, b.rows, b.length);
}

/** Mean loss over the target tokens of a set of examples, without gradients or dropout. */
export function evaluateLoss(model: CausalLM, examples: readonly Features[], batchSize: number, padId: number): { loss: number; tokens: number } {
  let total = 0, tokens = 0;
  model.train(false);
  try {
    noGrad(() => {
      for (const b of sequentialBatches(examples, batchSize, padId)) {
        if (b.targets === 0 || b.length < 2) continue;
        const l = scope(() => {
          return batchLoss(b, model).item();
        });
        total += l * b.targets;
        tokens += b.targets;
      }
    });
  } finally {
    model.train(true);
  }
  return { loss: tokens > 0 ? total / tokens : NaN, tokens };
}

function zeroGrads(params: readonly Tensor[]): void {
  for (const p of params) {
    p.grad?.dispose();
    p.grad = null;
  }
}

/** Trains to the end (or throws TrainingStopped / a DoraCheckError) and saves the final weights into runDir. */
export function runTraining(o: TrainerOptions): TrainResult {
  const s = o.settings;
  const now = o.now ?? (() => performance.now());
  const params = o.target.parameters.map(([, t]) => t);
  if (params.length === 0) throw new Error('runTraining: nothing to train (the target has no parameters)');
  for (const [name, t] of o.target.parameters) {
    if (!t.requiresGrad) throw new Error(`runTraining: '${name}' is listed as trainable but does not require grad`);
  }
  const { perEpoch, total } = stepCounts(o.train.length, s);
  const schedule = new LrSchedule(s.lrScheduler, s.learningRate, s.warmupSteps, total);
  const optimizer = new AdamW(params, { lr: s.learningRate, beta1: s.adamBeta1, beta2: s.adamBeta2, eps: s.adamEpsilon, weightDecay: s.weightDecay });
  // m0 must be the initial magnitudes, so the monitor looks before a checkpoint loads.
  const monitor = new MovementMonitor(o.target.modules, o.target.useDora);
  const evalEvery = s.evalsPerEpoch > 0 && o.val.length > 0 ? Math.max(1, Math.floor(perEpoch / s.evalsPerEpoch)) : 0;

  let step = 0, tokens = 0, seconds = 0;
  let batcher: EpochBatcher;
  let resumedFrom: number | null = null;
  const metricsFile = path.join(o.runDir, 'metrics.jsonl');
  let metrics: MetricsLog;
  try {
    removeStaleTemporaries(o.runDir);
    for (const n of fs.readdirSync(o.runDir)) if (n.startsWith('.final-')) fs.rmSync(path.join(o.runDir, n), { recursive: true, force: true });
    const latest = o.resume ? listCheckpoints(o.runDir).at(-1) : undefined;
    if (latest !== undefined) {
      const state = readTrainerState(latest.dir);
      if (state.run !== s.name || state.fingerprint !== o.fingerprint) {
        throw new TrainingStopped(
          `${latest.dir} was written by ${state.run !== s.name ? `run '${state.run}'` : 'this run with other settings or data'}; ` +
            'it cannot be resumed with these (restore them, or start over without --resume in a fresh output directory)',
        );
      }
      restoreCheckpoint(latest.dir, o.target.parameters, optimizer, state);
      o.target.restoreRngState(state.dropout);
      batcher = new EpochBatcher(o.train, s.batchSize, o.padId, s.seed, state.data);
      step = state.step;
      tokens = state.tokens;
      seconds = state.seconds;
      resumedFrom = step;
      metrics = new MetricsLog(metricsFile, step);
      o.log(`resuming from ${path.relative(process.cwd(), latest.dir) || latest.dir}: step ${step} of ${total} (epoch ${state.data.epoch + 1}, batch ${state.data.batch})`);
    } else {
      if (o.resume) o.log(`nothing to resume in ${o.runDir} (no checkpoint); starting from the beginning`);
      batcher = new EpochBatcher(o.train, s.batchSize, o.padId, s.seed);
      metrics = new MetricsLog(metricsFile, null);
    }
  } catch (e) {
    optimizer.dispose();
    throw e;
  }

  const progress = new TrainProgress(o.progress);
  const save = (): string => {
    const state: TrainerState = {
      format: 'finlora-trainer-state', version: 1, run: s.name, fingerprint: o.fingerprint, step, totalSteps: total,
      data: batcher.position(), dropout: o.target.rngState(), tokens, seconds,
    };
    return saveCheckpoint({ runDir: o.runDir, params: o.target.parameters, optimizer, state, keep: s.saveTotalLimit });
  };
  const lastCheckpoint = (): string => {
    const c = listCheckpoints(o.runDir).at(-1);
    return c === undefined ? 'no checkpoint was written yet' : `the last good checkpoint, ${c.dir}, is kept (resume from it with --resume, after lowering learning_rate, say)`;
  };

  let lastLoss = NaN;
  let valLoss: number | null = null;
  o.model.train(true);
  try {
    while (step < total) {
      if (batcher.epochDone) batcher.nextEpoch();
      const group: Batch[] = [];
      while (group.length < s.gradientAccumulationSteps && !batcher.epochDone) group.push(batcher.next());
      const targets = group.reduce((n, b) => n + b.targets, 0);
      const t0 = now();
      let loss = 0;
      for (const b of group) {
        if (b.targets === 0) continue;
        const value = scope(() => {
          const l = batchLoss(b, o.model);
          // Each micro-batch's mean times its share of the step's tokens: the step's gradient is that of the token mean.
          backward(mul(l, b.targets / targets));
          return l.item();
        });
        if (!Number.isFinite(value)) {
          throw new TrainingStopped(`the loss is ${value} at step ${step + 1} (epoch ${batcher.position().epoch + 1}); stopping before the weights are touched; ${lastCheckpoint()}`);
        }
        loss += (value * b.targets) / targets;
        monitor.checkGradients();
      }
      const gradNorm = globalGradNorm(params);
      if (!Number.isFinite(gradNorm)) {
        throw new TrainingStopped(`the gradient norm is ${gradNorm} at step ${step + 1}; stopping before the weights are touched; ${lastCheckpoint()}`);
      }
      const lr = schedule.at(step);
      optimizer.lr = lr;
      noGrad(() => optimizer.step(clipCoefficient(gradNorm, s.maxGradNorm)));
      zeroGrads(params);
      step++;
      monitor.checkMoved(lr);

      const stepTokens = group.reduce((n, b) => n + b.tokens, 0);
      const dt = (now() - t0) / 1000;
      tokens += stepTokens;
      seconds += dt;
      lastLoss = loss;
      const epoch = step / perEpoch;
      const tokensPerSecond = dt > 0 ? stepTokens / dt : 0;
      metrics.add({ type: 'train', step, epoch: round(epoch), loss, lr, grad_norm: gradNorm, tokens: stepTokens, tokens_per_s: round(tokensPerSecond) });
      const avgStep = seconds / Math.max(1, step - (resumedFrom ?? 0));
      progress.update({ step, totalSteps: total, epoch, loss, lr, gradNorm, tokensPerSecond, eta: avgStep * (total - step) });

      const epochEnd = batcher.epochDone;
      if ((evalEvery > 0 && step % evalEvery === 0) || (step === total && o.val.length > 0)) {
        const v = evaluateLoss(o.model, o.val, s.batchSize, o.padId);
        valLoss = v.loss;
        metrics.add({ type: 'eval', step, epoch: round(epoch), val_loss: v.loss, val_tokens: v.tokens });
        const movement = monitor.measure();
        if (Object.keys(movement).length > 0) metrics.add({ type: 'movement', step, modules: movement });
        progress.message(`step ${step}/${total}: validation loss ${v.loss.toFixed(4)} (train loss ${loss.toFixed(4)})${Object.keys(movement).length > 0 ? `; moved: ${MovementMonitor.describe(movement)}` : ''}`);
      } else if (step === total || epochEnd) {
        const movement = monitor.measure();
        if (Object.keys(movement).length > 0) {
          metrics.add({ type: 'movement', step, modules: movement });
          progress.message(`step ${step}/${total}: moved: ${MovementMonitor.describe(movement)}`);
        }
      }
      if (epochEnd || step === total || (s.saveSteps !== null && step % s.saveSteps === 0)) {
        const dir = save();
        progress.message(`step ${step}/${total}: checkpoint ${path.relative(o.runDir, dir)}${epochEnd ? ` (end of epoch ${batcher.position().epoch + 1})` : ''}`);
      }
      o.onStep?.(step);
    }
  } finally {
    progress.end();
    zeroGrads(params);
    optimizer.dispose();
  }

  writeFileAtomic(path.join(o.runDir, 'loss.svg'), lossCurveSvg(metrics.trainPoints(), metrics.evalPoints(), `${s.name}: loss by optimizer step`));
  saveFinal(o.target, o.runDir);
  return { steps: step, totalSteps: total, loss: lastLoss, valLoss, tokens, seconds, resumedFrom };
}

function round(x: number): number {
  return Number(x.toPrecision(6));
}

/**
 * Writes the final weights: the target saves into a temporary directory beside the run's
 * files, and each file is renamed into place only when all are written, so a failure
 * (a full disk, say) never leaves a partial adapter.
 */
export function saveFinal(target: TrainTarget, runDir: string): string[] {
  const tmp = fs.mkdtempSync(path.join(runDir, '.final-'));
  try {
    const out = path.join(tmp, 'out');
    target.save(out);
    const names = fs.readdirSync(out);
    for (const n of names) fs.renameSync(path.join(out, n), path.join(runDir, n));
    return names;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
