// What the CPU benchmarks share (and the tests that reuse them): a Llama checkpoint's
// tensor layout, random operands, the check of a product against f64
// dot products at sampled entries, the best / median summary of repeated timings, the
// printed table, and the python child process that answers one JSON line per request line (numpy for
// bench/gemm.ts, the torch twin for bench/train_cpu.ts).
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { createInterface, type Interface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import type { Rng } from '../src/tensor/rng.js';

/** A Llama's sizes, as its config.json gives them. */
export interface LlamaShape {
  readonly hidden: number;
  readonly intermediate: number;
  readonly layers: number;
  readonly heads: number;
  readonly kvHeads: number;
  readonly vocab: number;
}

/** Hugging Face tensor names and shapes of a Llama checkpoint; lm_head.weight unless the embeddings are tied. */
export function llamaLayout(s: LlamaShape, tied = false): [string, number[]][] {
  const H = s.hidden, I = s.intermediate, kv = (s.kvHeads * s.hidden) / s.heads;
  const out: [string, number[]][] = [['model.embed_tokens.weight', [s.vocab, H]], ['model.norm.weight', [H]]];
  if (!tied) out.push(['lm_head.weight', [s.vocab, H]]);
  for (let l = 0; l < s.layers; l++) {
    const p = `model.layers.${l}`;
    out.push(
      [`${p}.input_layernorm.weight`, [H]], [`${p}.post_attention_layernorm.weight`, [H]],
      [`${p}.self_attn.q_proj.weight`, [H, H]], [`${p}.self_attn.k_proj.weight`, [kv, H]],
      [`${p}.self_attn.v_proj.weight`, [kv, H]], [`${p}.self_attn.o_proj.weight`, [H, H]],
      [`${p}.mlp.gate_proj.weight`, [I, H]], [`${p}.mlp.up_proj.weight`, [I, H]], [`${p}.mlp.down_proj.weight`, [H, I]],
    );
  }
  return out;
}

/** n values uniform in [-scale / 2, scale / 2). */
export function randomMatrix(n: number, rng: Rng, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (rng.next() - 0.5) * scale;
  return out;
}

/**
 * The largest error of out = a · op(b) (a [M, K] and out [M, N] row-major; b [N, K]
 * when transB, else [K, N]) at `samples` entries against f64 dot products, relative to
 * the sum of |terms| (a float32 accumulation's error scale).
 */
export function sampledProductError(
  a: Float32Array,
  b: Float32Array,
  out: Float32Array,
  M: number,
  K: number,
  N: number,
  transB: boolean,
  samples: number,
  rng: Rng,
): number {
  let worst = 0;
  for (let s = 0; s < samples; s++) {
    const i = Math.floor(rng.next() * M), j = Math.floor(rng.next() * N);
    let acc = 0, mag = 0;
    for (let k = 0; k < K; k++) {
      const t = a[i * K + k] * (transB ? b[j * K + k] : b[k * N + j]);
      acc += t;
      mag += Math.abs(t);
    }
    worst = Math.max(worst, Math.abs(out[i * N + j] - acc) / mag);
  }
  return worst;
}

export interface Timing {
  readonly bestS: number;
  readonly medianS: number;
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.floor(s.length / 2)];
}

export function summarize(times: readonly number[]): Timing {
  const s = [...times].sort((x, y) => x - y);
  return { bestS: s[0], medianS: s[Math.floor(s.length / 2)] };
}

/** Seconds fn takes. */
export function timeOnce(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/**
 * Prints a table after a blank line: the header, a rule under it, the rows; the first
 * `leftColumns` columns aligned left, the others right.
 */
export function printTable(header: readonly string[], rows: readonly (readonly string[])[], leftColumns: number, log: (s: string) => void): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const fmt = (cells: readonly string[]) => cells.map((s, i) => (i < leftColumns ? s.padEnd(widths[i]) : s.padStart(widths[i]))).join('  ');
  log('');
  log(fmt(header));
  log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const row of rows) log(fmt(row));
}

/**
 * A child process that first prints one JSON line describing itself (or {"error": ...}
 * when it cannot run), then answers each request line with one JSON line.
 */
export class JsonLineWorker {
  private constructor(
    private readonly child: ChildProcessByStdio<Writable, Readable, Readable | null>,
    private readonly lines: AsyncIterator<string>,
    private readonly rl: Interface,
    private readonly name: string,
  ) {}

  /**
   * Starts `command args` and reads its first line; returns the worker and that line
   * parsed, or why it cannot run. `name` names it in errors.
   */
  static async start<Hello extends { error?: string }>(
    name: string,
    command: string,
    args: readonly string[],
    env: NodeJS.ProcessEnv,
    stderr: 'pipe' | 'inherit',
  ): Promise<{ worker: JsonLineWorker; hello: Hello } | string> {
    const child: ChildProcessByStdio<Writable, Readable, Readable | null> =
      stderr === 'pipe' ? spawn(command, args, { env, stdio: ['pipe', 'pipe', 'pipe'] }) : spawn(command, args, { env, stdio: ['pipe', 'pipe', 'inherit'] });
    const failed = new Promise<string>((resolve) => child.once('error', (e) => resolve(`${command} could not be started (${e.message})`)));
    const rl = createInterface({ input: child.stdout });
    const lines = rl[Symbol.asyncIterator]();
    const first = await Promise.race([lines.next().then((r) => (r.done ? `${command} exited without output` : r.value)), failed]);
    let hello: Hello;
    try {
      hello = JSON.parse(first) as Hello;
    } catch {
      rl.close();
      child.kill();
      return first;
    }
    if (hello.error !== undefined) {
      rl.close();
      child.kill();
      return hello.error;
    }
    return { worker: new JsonLineWorker(child, lines, rl, name), hello };
  }

  /** Sends one request line; returns the answer line parsed. */
  async ask<Answer>(line: string): Promise<Answer> {
    this.child.stdin.write(`${line}\n`);
    const r = await this.lines.next();
    if (r.done) throw new Error(`${this.name} exited`);
    return JSON.parse(r.value) as Answer;
  }

  close(): void {
    this.rl.close();
    this.child.stdin.end();
  }
}
