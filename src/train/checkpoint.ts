// Training checkpoints: everything a run needs to continue exactly where it stood.
//
//   <run dir>/checkpoints/checkpoint-<step>/
//     params.safetensors      the trainable tensors, by name (f32)
//     optimizer.safetensors   AdamW's exp_avg and exp_avg_sq per tensor ("<name>.exp_avg", ...)
//     trainer_state.json      optimizer step, data position (epoch, batch, shuffling Rng
//                             state), the adapters' dropout stream, counters, and a
//                             fingerprint of the settings that shape training
//
// A checkpoint directory is written under a temporary name and renamed into place when
// complete (src/io/atomic.ts), so a kill or a full disk mid-save leaves the previous
// checkpoints as they were and no partial one: every checkpoint-<step> directory is
// whole. Temporaries left by a killed process are removed on the next resume.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isAtomicTemp, writeDirAtomic, writeFileAtomic } from '../io/atomic.js';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.js';
import { assign } from '../ops/inplace.js';
import type { DropoutState } from '../ops/dropout.js';
import { scope, type Tensor } from '../tensor/tensor.js';
import type { DataPosition } from '../data/batches.js';
import type { AdamW } from './adamw.js';

export const CHECKPOINTS_DIR = 'checkpoints';
const PREFIX = 'checkpoint-';

export interface TrainerState {
  readonly format: 'finlora-trainer-state';
  readonly version: 1;
  readonly run: string;
  /** Settings that shape the trajectory; a resume with other settings is refused. */
  readonly fingerprint: string;
  /** Optimizer steps done. */
  readonly step: number;
  readonly totalSteps: number;
  readonly data: DataPosition;
  readonly dropout: DropoutState | null;
  /** Real tokens trained on so far. */
  readonly tokens: number;
  /** Training seconds so far (for tokens/s and ETA after a resume). */
  readonly seconds: number;
}

export class CheckpointStateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CheckpointStateError';
  }
}

/** The checkpoint directories of a run, oldest first. */
export function listCheckpoints(runDir: string): { step: number; dir: string }[] {
  const root = path.join(runDir, CHECKPOINTS_DIR);
  if (!fs.existsSync(root)) return [];
  return fs
    .readdirSync(root)
    .filter((n) => n.startsWith(PREFIX) && /^\d+$/.test(n.slice(PREFIX.length)))
    .map((n) => ({ step: Number(n.slice(PREFIX.length)), dir: path.join(root, n) }))
    .sort((a, b) => a.step - b.step);
}

/** Removes temporaries a killed save left behind. */
export function removeStaleTemporaries(runDir: string): void {
  const root = path.join(runDir, CHECKPOINTS_DIR);
  if (!fs.existsSync(root)) return;
  for (const n of fs.readdirSync(root)) if (isAtomicTemp(n)) fs.rmSync(path.join(root, n), { recursive: true, force: true });
}

export interface SaveCheckpointArgs {
  runDir: string;
  params: readonly (readonly [string, Tensor])[];
  optimizer: AdamW;
  state: TrainerState;
  /** Keep at most this many checkpoints (the newest). */
  keep: number;
}

/** Writes checkpoint-<step> atomically, then removes the oldest beyond `keep`. Returns its directory. */
export function saveCheckpoint({ runDir, params, optimizer, state, keep }: SaveCheckpointArgs): string {
  const root = path.join(runDir, CHECKPOINTS_DIR);
  fs.mkdirSync(root, { recursive: true });
  const dir = path.join(root, `${PREFIX}${state.step}`);
  // A checkpoint of this step from an interrupted earlier attempt is replaced whole.
  if (fs.existsSync(dir)) fs.rmSync(dir, { recursive: true, force: true });
  writeDirAtomic(dir, (tmp) => {
    const named: Record<string, Tensor> = {};
    const moments: Record<string, Tensor> = {};
    params.forEach(([name, t], i) => {
      named[name] = t;
      const s = optimizer.stateOf(i);
      moments[`${name}.exp_avg`] = s.expAvg;
      moments[`${name}.exp_avg_sq`] = s.expAvgSq;
    });
    writeSafetensors(path.join(tmp, 'params.safetensors'), named);
    writeSafetensors(path.join(tmp, 'optimizer.safetensors'), moments, { step: String(optimizer.stepCount) });
    writeFileAtomic(path.join(tmp, 'trainer_state.json'), `${JSON.stringify(state, null, 2)}\n`);
  });
  const all = listCheckpoints(runDir);
  for (const old of all.slice(0, Math.max(0, all.length - keep))) fs.rmSync(old.dir, { recursive: true, force: true });
  return dir;
}

function isDataPosition(v: unknown): v is DataPosition {
  if (typeof v !== 'object' || v === null) return false;
  const d = v as Record<string, unknown>;
  return Number.isInteger(d.epoch) && Number.isInteger(d.batch) && Array.isArray(d.rngAtEpochStart) && d.rngAtEpochStart.length === 4 &&
    d.rngAtEpochStart.every((x) => Number.isInteger(x) && (x as number) >= 0 && (x as number) < 2 ** 32);
}

/** Reads and checks trainer_state.json of a checkpoint directory. */
export function readTrainerState(dir: string): TrainerState {
  const file = path.join(dir, 'trainer_state.json');
  let v: unknown;
  try {
    v = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new CheckpointStateError(`cannot read ${file}: ${(e as Error).message}`);
  }
  const s = v as Partial<TrainerState> | null;
  const ok = s !== null && typeof s === 'object' && s.format === 'finlora-trainer-state' && s.version === 1 && typeof s.run === 'string' &&
    typeof s.fingerprint === 'string' && Number.isInteger(s.step) && Number.isInteger(s.totalSteps) && isDataPosition(s.data) &&
    typeof s.tokens === 'number' && typeof s.seconds === 'number' &&
    (s.dropout === null || (typeof s.dropout === 'object' && Number.isInteger(s.dropout?.seed) && Number.isInteger(s.dropout?.offset)));
  if (!ok) throw new CheckpointStateError(`${file} is not a finlora trainer state (version 1)`);
  return s as TrainerState;
}

/** Loads a checkpoint's tensors into the parameters and the optimizer state. */
export function restoreCheckpoint(dir: string, params: readonly (readonly [string, Tensor])[], optimizer: AdamW, state: TrainerState): void {
  const load = (file: string, fn: (f: SafetensorsFile) => void) => {
    const f = SafetensorsFile.open(path.join(dir, file));
    try {
      fn(f);
    } finally {
      f.close();
    }
  };
  const copyInto = (f: SafetensorsFile, name: string, into: Tensor) => {
    if (!f.has(name)) throw new CheckpointStateError(`${path.join(dir, path.basename(f.path))} has no tensor '${name}': the checkpoint was written for other adapters`);
    const info = f.info(name);
    if (info.shape.length !== into.shape.length || info.shape.some((d, i) => d !== into.shape[i])) {
      throw new CheckpointStateError(`${f.path}: '${name}' is [${info.shape.join(', ')}], the run has [${into.shape.join(', ')}]`);
    }
    scope(() => assign(into, f.tensor(name, { device: into.backend })));
  };
  load('params.safetensors', (f) => {
    const expected = new Set(params.map(([n]) => n));
    const extra = f.names().filter((n) => !expected.has(n));
    if (extra.length > 0) throw new CheckpointStateError(`${f.path} holds '${extra[0]}', which this run does not train: the checkpoint was written for other adapters`);
    for (const [name, t] of params) copyInto(f, name, t);
  });
  load('optimizer.safetensors', (f) => {
    params.forEach(([name], i) => {
      const s = optimizer.stateOf(i);
      copyInto(f, `${name}.exp_avg`, s.expAvg);
      copyInto(f, `${name}.exp_avg_sq`, s.expAvgSq);
    });
  });
  optimizer.stepCount = state.step;
}
