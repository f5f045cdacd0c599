// Validation split, per-epoch shuffling and padded batches.
//
// - The validation split (axolotl's val_set_size) takes a fraction of the examples
//   (rounded up, as datasets' train_test_split rounds its test share) or a count, at
//   random positions drawn from the run's seed.
// - Each epoch visits the training examples in a fresh order (transformers' Trainer
//   uses a RandomSampler), drawn from one seeded Rng. Where a run stands in its data
//   is {epoch, batch, the Rng state at the start of the epoch}: enough to redraw the
//   epoch's order after a restart and skip the batches already seen.
// - A batch is right-padded to its longest sequence (pad_to_sequence_len false) with
//   labels -100 on the padding, so padding costs no loss. With right padding and a
//   causal model no real token attends to a pad (pads come after it), so batches need
//   no attention mask; positions are 0..T-1 as for unpadded rows.
import { Rng } from '../tensor/rng.js';
import { type Features, IGNORE_INDEX } from './format.js';

/** Indices of the validation examples and of the training ones, each in file order. */
export function splitValidation(n: number, valSetSize: number, seed: number): { train: number[]; val: number[] } {
  if (valSetSize <= 0) return { train: Array.from({ length: n }, (_, i) => i), val: [] };
  const nVal = valSetSize < 1 ? Math.ceil(valSetSize * n) : valSetSize;
  if (nVal >= n) {
    throw new Error(`val_set_size ${valSetSize} leaves no training examples out of ${n} (it takes ${nVal}); lower it or set it to 0`);
  }
  const order = shuffled(n, new Rng((seed ^ 0x5bd1e995) >>> 0));
  const isVal = new Uint8Array(n);
  for (let i = 0; i < nVal; i++) isVal[order[i]] = 1;
  const train: number[] = [];
  const val: number[] = [];
  for (let i = 0; i < n; i++) (isVal[i] ? val : train).push(i);
  return { train, val };
}

/** A permutation of 0..n-1 (Fisher-Yates). */
export function shuffled(n: number, rng: Rng): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
  return a;
}

/** Where a run stands in its data. */
export interface DataPosition {
  /** 0-based epoch. */
  epoch: number;
  /** Micro-batches of this epoch already consumed. */
  batch: number;
  /** The shuffling Rng's state when this epoch's order was drawn. */
  rngAtEpochStart: number[];
}

/** A padded micro-batch: ids and labels row-major [rows, length]. */
export interface Batch {
  readonly rows: number;
  readonly length: number;
  readonly inputIds: Int32Array;
  readonly labels: Int32Array;
  /** Real (non-pad) tokens. */
  readonly tokens: number;
  /** Labels scored by the causal-LM loss: not -100, at positions 1..length-1. */
  readonly targets: number;
}

/** Right-pads examples into one batch. */
export function collate(items: readonly Features[], padId: number): Batch {
  const rows = items.length;
  const length = Math.max(...items.map((f) => f.inputIds.length));
  const inputIds = new Int32Array(rows * length).fill(padId);
  const labels = new Int32Array(rows * length).fill(IGNORE_INDEX);
  let tokens = 0, targets = 0;
  items.forEach((f, r) => {
    inputIds.set(f.inputIds, r * length);
    labels.set(f.labels, r * length);
    tokens += f.inputIds.length;
    for (let i = 1; i < f.labels.length; i++) if (f.labels[i] !== IGNORE_INDEX) targets++;
  });
  return { rows, length, inputIds, labels, tokens, targets };
}

/**
 * Shuffled micro-batches of the training set, epoch after epoch, from a seeded Rng;
 * position() and the constructor's `at` checkpoint and restore where it stands.
 */
export class EpochBatcher {
  private readonly rng: Rng;
  private order: number[] = [];
  private pos: DataPosition;

  constructor(
    private readonly examples: readonly Features[],
    private readonly batchSize: number,
    private readonly padId: number,
    seed: number,
    at?: DataPosition,
  ) {
    if (examples.length === 0) throw new Error('EpochBatcher: no training examples');
    if (at === undefined) {
      this.rng = new Rng(seed);
      this.pos = { epoch: 0, batch: 0, rngAtEpochStart: this.rng.state() };
      this.order = shuffled(examples.length, this.rng);
    } else {
      if (at.rngAtEpochStart.length !== 4) throw new Error('EpochBatcher: the saved data position has no Rng state');
      this.rng = new Rng(at.rngAtEpochStart);
      this.pos = { ...at, rngAtEpochStart: [...at.rngAtEpochStart] };
      this.order = shuffled(examples.length, this.rng);
      if (at.batch > this.batchesPerEpoch) throw new Error(`EpochBatcher: saved position ${at.batch} is past the ${this.batchesPerEpoch} batches of an epoch`);
    }
  }

  /** Micro-batches in one epoch (the last may be smaller; none is dropped). */
  get batchesPerEpoch(): number {
    return Math.ceil(this.examples.length / this.batchSize);
  }

  position(): DataPosition {
    return { ...this.pos, rngAtEpochStart: [...this.pos.rngAtEpochStart] };
  }

  /** True when the current epoch has no batch left. */
  get epochDone(): boolean {
    return this.pos.batch >= this.batchesPerEpoch;
  }

  /** Starts the next epoch: a new order from the running Rng. */
  nextEpoch(): void {
    this.pos = { epoch: this.pos.epoch + 1, batch: 0, rngAtEpochStart: this.rng.state() };
    this.order = shuffled(this.examples.length, this.rng);
  }

  /** The next micro-batch of the current epoch. */
  next(): Batch {
    if (this.epochDone) throw new Error('EpochBatcher: the epoch is over; call nextEpoch()');
    const start = this.pos.batch * this.batchSize;
    const idx = this.order.slice(start, start + this.batchSize);
    this.pos.batch++;
    return collate(idx.map((i) => this.examples[i]), this.padId);
  }
}

/** Fixed batches in order (validation). */
export function sequentialBatches(examples: readonly Features[], batchSize: number, padId: number): Batch[] {
  const out: Batch[] = [];
  for (let i = 0; i < examples.length; i += batchSize) out.push(collate(examples.slice(i, i + batchSize), padId));
  return out;
}
