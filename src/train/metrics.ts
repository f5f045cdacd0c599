// The run's metrics: one JSON object per line in metrics.jsonl beside the adapter, and
// a loss curve drawn as a self-contained SVG (no fonts or scripts fetched).
//
// Records:
//   {"type":"train","step":12,"epoch":0.48,"loss":1.93,"lr":0.0001,"grad_norm":0.8,"tokens":1710,"tokens_per_s":412.5}
//   {"type":"eval","step":25,"epoch":1.0,"val_loss":1.41,"val_tokens":96}
//   {"type":"movement","step":25,"modules":{"q_proj":{"magnitude_change":0.0012,"update_ratio":0.0004}, ...}}
// step counts optimizer steps (1-based once taken); epoch is fractional (steps done /
// steps per epoch). A resumed run first drops the records after its checkpoint, so the
// file reads as one uninterrupted run.
import * as fs from 'node:fs';
import { writeFileAtomic } from '../io/atomic.js';

export interface TrainRecord {
  type: 'train';
  step: number;
  epoch: number;
  loss: number;
  lr: number;
  grad_norm: number;
  tokens: number;
  tokens_per_s: number;
}

export interface EvalRecord {
  type: 'eval';
  step: number;
  epoch: number;
  val_loss: number;
  val_tokens: number;
}

export interface ModuleMovement {
  /** mean over modules of mean_i |m_i − m0_i| / |m0_i| (DoRA only). */
  magnitude_change?: number;
  /** mean over modules of ‖s·B·A‖_F / ‖W‖_F. */
  update_ratio: number;
}

export interface MovementRecord {
  type: 'movement';
  step: number;
  modules: Record<string, ModuleMovement>;
}

export type MetricRecord = TrainRecord | EvalRecord | MovementRecord;

export class MetricsLog {
  readonly records: MetricRecord[] = [];

  /** Opens `file`; with keepUpToStep, keeps the records up to that step and drops the rest (resume), else starts empty. */
  constructor(readonly file: string, keepUpToStep: number | null) {
    if (keepUpToStep !== null && fs.existsSync(file)) {
      for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
        if (line.trim() === '') continue;
        let r: MetricRecord;
        try {
          r = JSON.parse(line) as MetricRecord;
        } catch {
          // a line cut by a kill: everything after the checkpoint is rewritten anyway
          continue;
        }
        if (typeof r.step === 'number' && r.step <= keepUpToStep) this.records.push(r);
      }
    }
    writeFileAtomic(file, this.records.map((r) => `${JSON.stringify(r)}\n`).join(''));
  }

  add(r: MetricRecord): void {
    this.records.push(r);
    fs.appendFileSync(this.file, `${JSON.stringify(r)}\n`);
  }

  trainPoints(): { step: number; loss: number }[] {
    return this.records.filter((r): r is TrainRecord => r.type === 'train').map((r) => ({ step: r.step, loss: r.loss }));
  }

  evalPoints(): { step: number; loss: number }[] {
    return this.records.filter((r): r is EvalRecord => r.type === 'eval').map((r) => ({ step: r.step, loss: r.val_loss }));
  }
}

/** Round tick values covering [lo, hi] (1, 2 or 5 times a power of ten apart). */
export function niceTicks(lo: number, hi: number, target = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / target;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) ?? 10 * p;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function escapeXml(s: string): string {
  return s.replace(/[<>&"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c] ?? c);
}

function fmt(v: number): string {
  return Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.01) ? v.toExponential(1) : String(Number(v.toPrecision(4)));
}

/** An SVG line chart of training loss (and validation loss points) against optimizer step. */
export function lossCurveSvg(train: readonly { step: number; loss: number }[], val: readonly { step: number; loss: number }[], title: string): string {
  const W = 760, H = 420, L = 64, R = 20, T = 40, B = 52;
  const finite = [...train, ...val].filter((p) => Number.isFinite(p.loss));
  const steps = finite.map((p) => p.step);
  const losses = finite.map((p) => p.loss);
  const x0 = steps.length ? Math.min(0, ...steps) : 0, x1 = steps.length ? Math.max(1, ...steps) : 1;
  let y0 = losses.length ? Math.min(...losses) : 0, y1 = losses.length ? Math.max(...losses) : 1;
  if (y1 - y0 < 1e-9) {
    y0 -= 0.5;
    y1 += 0.5;
  }
  const pad = (y1 - y0) * 0.05;
  y0 = Math.max(0, y0 - pad);
  y1 += pad;
  const sx = (s: number) => L + ((s - x0) / (x1 - x0)) * (W - L - R);
  const sy = (v: number) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${W / 2}" y="22" text-anchor="middle" font-size="14">${escapeXml(title)}</text>`);
  for (const t of niceTicks(y0, y1)) {
    const y = sy(t).toFixed(1);
    out.push(`<line x1="${L}" x2="${W - R}" y1="${y}" y2="${y}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${L - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${fmt(t)}</text>`);
  }
  for (const t of niceTicks(x0, x1).filter((v) => Number.isInteger(v))) {
    const x = sx(t).toFixed(1);
    out.push(`<line x1="${x}" x2="${x}" y1="${H - B}" y2="${H - B + 4}" stroke="#333"/>`);
    out.push(`<text x="${x}" y="${H - B + 18}" text-anchor="middle">${t}</text>`);
  }
  out.push(`<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#333"/>`);
  out.push(`<line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#333"/>`);
  out.push(`<text x="${(L + W - R) / 2}" y="${H - 12}" text-anchor="middle">optimizer step</text>`);
  out.push(`<text x="16" y="${(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 16 ${(T + H - B) / 2})">loss</text>`);
  const line = (pts: readonly { step: number; loss: number }[]) =>
    pts.filter((p) => Number.isFinite(p.loss)).map((p) => `${sx(p.step).toFixed(1)},${sy(p.loss).toFixed(1)}`).join(' ');
  if (train.length > 0) out.push(`<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="${line(train)}"/>`);
  if (val.length > 0) {
    out.push(`<polyline fill="none" stroke="#d62728" stroke-width="1.5" stroke-dasharray="4 3" points="${line(val)}"/>`);
    for (const p of val) if (Number.isFinite(p.loss)) out.push(`<circle cx="${sx(p.step).toFixed(1)}" cy="${sy(p.loss).toFixed(1)}" r="3" fill="#d62728"/>`);
  }
  out.push(`<line x1="${W - R - 150}" x2="${W - R - 130}" y1="${T + 6}" y2="${T + 6}" stroke="#1f77b4" stroke-width="2"/><text x="${W - R - 125}" y="${T + 10}">train loss</text>`);
  if (val.length > 0) out.push(`<line x1="${W - R - 150}" x2="${W - R - 130}" y1="${T + 24}" y2="${T + 24}" stroke="#d62728" stroke-width="2" stroke-dasharray="4 3"/><text x="${W - R - 125}" y="${T + 28}">validation loss</text>`);
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
