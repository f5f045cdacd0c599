// Downloads FinLoRA's public JSONL files (its repository's data/ directory, published
// on GitHub: https://github.com/Open-Finance-Lab/FinLoRA) into the same layout,
// <dir>/test/*.jsonl and <dir>/train/*.jsonl, which is where FinLoRA's configs
// ("../data/train/...") and `finlora eval` (data/test) look.
//
// Each file streams to a temporary name beside its destination and is renamed into
// place only once complete and checked (its first line is a {context, target} object;
// a Git LFS pointer or an HTML error page is refused), so an interrupted or failed
// download never leaves a partial file. Files already present are kept.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ByteProgress, type ProgressStream } from '../io/progress.js';

export const FINLORA_DATA_URL = 'https://raw.githubusercontent.com/Open-Finance-Lab/FinLoRA/main/data/';

/** FinLoRA's data files by set: the test sets its test script reads, the training sets its configs name. */
export const FINLORA_FILES: Readonly<Record<'test' | 'train', readonly string[]>> = {
  test: [
    'fpb_test.jsonl', 'fiqa_test.jsonl', 'tfns_test.jsonl', 'nwgi_test.jsonl', 'headline_test.jsonl', 'ner_test.jsonl',
    'financebench_test.jsonl', 'xbrl_term_test.jsonl', 'formula_test.jsonl',
  ],
  train: [
    'finlora_sentiment_train.jsonl', 'headline_train.jsonl', 'ner_train.jsonl', 'finer_train_batched.jsonl', 'financebench_train.jsonl',
    'formula_train.jsonl', 'xbrl_term_train.jsonl',
  ],
};

export class FetchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FetchError';
  }
}

export interface FetchOptions {
  /** Where the files go (test/ and train/ under it). */
  dir: string;
  /** Base URL of the data directory (ends with "/"); default FINLORA_DATA_URL. */
  baseUrl?: string;
  /** Which sets (default both). */
  sets?: readonly ('test' | 'train')[];
  /** Only these file names (with or without .jsonl). */
  only?: readonly string[];
  /** Download again even when the file is there. */
  force?: boolean;
  progress?: ProgressStream | null;
  /** Give up on a download that receives nothing for this long (default 60 s). */
  idleTimeoutMs?: number;
}

export interface FetchedFile {
  readonly file: string;
  readonly url: string;
  readonly bytes: number;
  readonly status: 'downloaded' | 'present';
}

/** The files a fetch covers, as [set, file name]. */
export function plannedFiles(opts: Pick<FetchOptions, 'sets' | 'only'>): ['test' | 'train', string][] {
  const sets = opts.sets ?? ['test', 'train'];
  const all = sets.flatMap((s) => FINLORA_FILES[s].map((f) => [s, f] as ['test' | 'train', string]));
  if (opts.only === undefined) return all;
  const wanted = opts.only.map((n) => (n.endsWith('.jsonl') ? n : `${n}.jsonl`));
  const known = new Set(all.map(([, f]) => f));
  const unknown = wanted.filter((w) => !known.has(w));
  if (unknown.length > 0) throw new FetchError(`unknown file${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}; FinLoRA's files: ${all.map(([, f]) => f.replace(/\.jsonl$/, '')).join(', ')}`);
  return all.filter(([, f]) => wanted.includes(f));
}

function describeCause(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const cause = (e as Error & { cause?: unknown }).cause;
  if (cause instanceof Error) {
    const code = (cause as NodeJS.ErrnoException).code;
    return code ? `${code} (${cause.message})` : cause.message;
  }
  return e.message;
}

/** Checks that downloaded bytes are FinLoRA JSONL and not something else served in its place. */
function checkContent(head: string, url: string): void {
  if (head.startsWith('version https://git-lfs.github.com/spec/')) {
    throw new FetchError(`${url} is a Git LFS pointer, not the data: this file is stored in Git LFS; download it from the repository's web page`);
  }
  const first = head.split('\n').find((l) => l.trim() !== '');
  let ok = false;
  if (first !== undefined) {
    try {
      const v = JSON.parse(first) as unknown;
      ok = typeof v === 'object' && v !== null && 'context' in v && 'target' in v;
    } catch {
      ok = false;
    }
  }
  if (!ok) throw new FetchError(`${url} did not return FinLoRA JSONL (its first line is not a {"context", "target"} object: ${JSON.stringify((first ?? '').slice(0, 60))})`);
}

async function download(url: string, dest: string, opts: FetchOptions): Promise<number> {
  const idle = opts.idleTimeoutMs ?? 60_000;
  const controller = new AbortController();
  let timer = setTimeout(() => controller.abort(), idle);
  const bump = () => {
    clearTimeout(timer);
    timer = setTimeout(() => controller.abort(), idle);
  };
  const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.${process.pid}.download`);
  let progress: ByteProgress | null = null;
  let fd: number | null = null;
  try {
    let res: Response;
    try {
      res = await fetch(url, { signal: controller.signal, redirect: 'follow' });
    } catch (e) {
      throw new FetchError(`cannot reach ${url}: ${controller.signal.aborted ? `no response in ${idle / 1000} s` : describeCause(e)}`);
    }
    if (!res.ok || res.body === null) throw new FetchError(`${url}: HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}`);
    const lengthHeader = res.headers.get('content-length');
    const total = lengthHeader !== null && /^\d+$/.test(lengthHeader) ? Number(lengthHeader) : null;
    progress = new ByteProgress(opts.progress ?? null, path.basename(dest), total);
    fd = fs.openSync(tmp, 'w', 0o644);
    let bytes = 0;
    let head = '';
    const reader = res.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        bump();
        if (head.length < 4096) head += new TextDecoder().decode(value.subarray(0, 4096));
        fs.writeSync(fd, value);
        bytes += value.length;
        progress.update(bytes);
      }
    } catch (e) {
      throw new FetchError(`${url}: the download broke off after ${bytes} bytes: ${controller.signal.aborted ? `nothing received for ${idle / 1000} s` : describeCause(e)}`);
    }
    if (total !== null && bytes !== total) throw new FetchError(`${url}: received ${bytes} bytes, the server announced ${total}`);
    checkContent(head, url);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(tmp, dest);
    progress.done();
    return bytes;
  } catch (e) {
    progress?.fail();
    throw e;
  } finally {
    clearTimeout(timer);
    if (fd !== null) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
  }
}

/** Downloads the planned files; stops at the first failure (files fetched before it stay, each complete). */
export async function fetchFinloraData(opts: FetchOptions): Promise<FetchedFile[]> {
  const base = opts.baseUrl ?? FINLORA_DATA_URL;
  let baseUrl: URL;
  try {
    baseUrl = new URL(base.endsWith('/') ? base : `${base}/`);
  } catch {
    throw new FetchError(`--base-url ${JSON.stringify(base)} is not a URL`);
  }
  const planned = plannedFiles(opts);
  const out: FetchedFile[] = [];
  for (const [set, name] of planned) {
    const dir = path.join(opts.dir, set);
    fs.mkdirSync(dir, { recursive: true });
    const dest = path.join(dir, name);
    const url = new URL(`${set}/${name}`, baseUrl).toString();
    if (!opts.force && fs.existsSync(dest) && fs.statSync(dest).size > 0) {
      out.push({ file: dest, url, bytes: fs.statSync(dest).size, status: 'present' });
      continue;
    }
    const bytes = await download(url, dest, opts);
    out.push({ file: dest, url, bytes, status: 'downloaded' });
  }
  return out;
}
