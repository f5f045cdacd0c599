// Byte progress for downloads: on a terminal, one line redrawn in place with a bar,
// bytes, rate and ETA (at most ten times a second); elsewhere (CI logs, pipes) a line
// when a large file starts, one every 15 seconds, and one when it ends.

export interface ProgressStream {
  write(chunk: string): boolean;
  isTTY?: boolean;
  columns?: number;
}

const REDRAW_MS = 100;
const LOG_EVERY_MS = 15_000;
const LOG_START_BYTES = 10_000_000;

/** Decimal units, as the hub's web pages and huggingface_hub's progress bars show sizes. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(value >= 100 ? 0 : value >= 10 ? 1 : 2)} ${units[unit]}`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n: number) => String(n).padStart(2, '0');
  return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

export class ByteProgress {
  private readonly startedAt: number;
  private lastDraw = -Infinity;
  private lastLog: number;
  private bytes: number;
  private finished = false;

  /**
   * `initial` bytes are already there (a resumed download): they count toward the
   * total but not toward the rate.
   */
  constructor(
    private readonly stream: ProgressStream | null,
    private readonly label: string,
    private readonly total: number | null,
    private readonly initial = 0,
    private readonly now: () => number = Date.now,
  ) {
    this.startedAt = now();
    this.lastLog = this.startedAt;
    this.bytes = initial;
    if (stream !== null && !stream.isTTY && (total === null || total >= LOG_START_BYTES)) {
      const resumed = initial > 0 ? `, resuming at ${formatBytes(initial)}` : '';
      stream.write(`downloading ${label} (${total === null ? 'size unknown' : formatBytes(total)}${resumed})\n`);
    }
  }

  /** `bytes`: the count so far, including `initial`. */
  update(bytes: number): void {
    this.bytes = bytes;
    if (this.stream === null || this.finished) return;
    const t = this.now();
    if (this.stream.isTTY) {
      if (t - this.lastDraw >= REDRAW_MS) {
        this.lastDraw = t;
        this.stream.write(`\r${this.line(t, true)}\x1b[K`);
      }
    } else if (t - this.lastLog >= LOG_EVERY_MS) {
      this.lastLog = t;
      this.stream.write(`${this.line(t, false)}\n`);
    }
  }

  done(): void {
    if (this.stream === null || this.finished) return;
    this.finished = true;
    const t = this.now();
    const seconds = (t - this.startedAt) / 1000;
    const rate = seconds > 0 ? `, ${formatBytes((this.bytes - this.initial) / seconds)}/s` : '';
    if (this.stream.isTTY) this.stream.write(`\r${this.line(t, true)}\x1b[K\n`);
    else this.stream.write(`downloaded ${this.label} (${formatBytes(this.bytes)} in ${formatDuration(seconds)}${rate})\n`);
  }

  /** Ends a redrawn line so that an error message starts on a fresh one. */
  fail(): void {
    if (this.stream === null || this.finished) return;
    this.finished = true;
    if (this.stream.isTTY) this.stream.write('\n');
  }

  private line(t: number, withBar: boolean): string {
    const seconds = (t - this.startedAt) / 1000;
    const rate = seconds > 0 ? (this.bytes - this.initial) / seconds : 0;
    const size = this.total === null ? formatBytes(this.bytes) : `${formatBytes(this.bytes)}/${formatBytes(this.total)}`;
    const speed = `${formatBytes(rate)}/s`;
    if (this.total === null || this.total === 0) return `${this.label} ${size} ${speed}`;
    const fraction = Math.min(1, this.bytes / this.total);
    const eta = rate > 0 ? formatDuration((this.total - this.bytes) / rate) : '--:--';
    const percent = `${Math.floor(fraction * 100)}%`;
    if (!withBar) return `${this.label}: ${percent} ${size}, ${speed}, ETA ${eta}`;
    const tail = ` ${percent.padStart(4)} ${size} ${speed} ETA ${eta}`;
    const width = Math.max(10, Math.min(30, (this.stream?.columns ?? 80) - this.label.length - tail.length - 4));
    const filled = Math.round(fraction * width);
    return `${this.label} |${'█'.repeat(filled)}${' '.repeat(width - filled)}|${tail}`;
  }
}
