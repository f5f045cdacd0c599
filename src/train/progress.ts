// Training progress on stderr: on a terminal, one line redrawn in place (a bar, the
// step, loss, tokens/s and ETA, at most ten times a second); elsewhere (logs, pipes,
// CI) a plain line for the first step, then at most one every 15 seconds, and one for
// the last step. Messages (evaluations, checkpoints) print on their own lines without
// breaking the bar. Shares its stream contract and time format with the download
// progress of src/io/progress.ts.
import { formatDuration, type ProgressStream } from '../io/progress.js';

export interface StepStatus {
  step: number;
  totalSteps: number;
  epoch: number;
  loss: number;
  lr: number;
  gradNorm: number;
  tokensPerSecond: number;
  /** Seconds left, or NaN when unknown. */
  eta: number;
}

const REDRAW_MS = 100;
const LOG_EVERY_MS = 15_000;

export class TrainProgress {
  private lastDraw = -Infinity;
  private lastLog = -Infinity;
  private drawn = false;

  constructor(
    private readonly stream: ProgressStream | null,
    private readonly now: () => number = Date.now,
  ) {}

  update(s: StepStatus): void {
    if (this.stream === null) return;
    const t = this.now();
    const last = s.step >= s.totalSteps;
    if (this.stream.isTTY) {
      if (t - this.lastDraw >= REDRAW_MS || last) {
        this.lastDraw = t;
        this.stream.write(`\r${this.bar(s)}\x1b[K${last ? '\n' : ''}`);
        this.drawn = !last;
      }
    } else if (t - this.lastLog >= LOG_EVERY_MS || last) {
      this.lastLog = t;
      this.stream.write(`${this.plain(s)}\n`);
    }
  }

  /** Prints a line of its own (the bar, if any, is redrawn by the next update). */
  message(line: string): void {
    if (this.stream === null) return;
    if (this.stream.isTTY && this.drawn) this.stream.write('\r\x1b[K');
    this.stream.write(`${line}\n`);
    this.drawn = false;
    this.lastDraw = -Infinity;
  }

  /** Ends a redrawn line, so that what follows starts on a fresh one. */
  end(): void {
    if (this.stream?.isTTY && this.drawn) this.stream.write('\n');
    this.drawn = false;
  }

  private fields(s: StepStatus): string {
    return `loss ${s.loss.toFixed(4)}, lr ${s.lr.toExponential(2)}, ${Math.round(s.tokensPerSecond)} tok/s, ETA ${formatDuration(s.eta)}`;
  }

  private plain(s: StepStatus): string {
    return `step ${s.step}/${s.totalSteps} (epoch ${s.epoch.toFixed(2)}): ${this.fields(s)}, grad norm ${s.gradNorm.toFixed(3)}`;
  }

  private bar(s: StepStatus): string {
    const head = `step ${s.step}/${s.totalSteps}`;
    const tail = ` ${this.fields(s)}`;
    const width = Math.max(10, Math.min(30, (this.stream?.columns ?? 80) - head.length - tail.length - 4));
    const filled = Math.round(Math.min(1, s.step / Math.max(1, s.totalSteps)) * width);
    return `${head} |${'█'.repeat(filled)}${' '.repeat(width - filled)}|${tail}`;
  }
}
