// FinLoRA's data files: JSON Lines, one {"context": "...", "target": "..."} object per
// line (other keys, such as financebench's "pages" and "url", are allowed and
// ignored). Blank lines are skipped, as pandas' read_json(lines=True) skips them.
//
// A malformed line (not JSON, not an object, context or target missing or not a
// string) stops loading with its file:line and what is wrong, before any training
// starts; with skipMalformed the line is skipped and counted instead, and the first
// few reasons are kept for the log.
import * as fs from 'node:fs';
import { locateJsonError } from '../io/json_error.js';

export interface Example {
  readonly context: string;
  readonly target: string;
  /** 1-based line number in the file. */
  readonly line: number;
}

export interface SkippedLine {
  readonly line: number;
  readonly reason: string;
}

export interface JsonlData {
  readonly file: string;
  readonly examples: Example[];
  /** Lines skipped as malformed (only with skipMalformed). */
  readonly skipped: SkippedLine[];
}

/** A data file that cannot be used; the message names the file (and line). */
export class DataError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DataError';
  }
}

export interface ReadJsonlOptions {
  /** Skip and count malformed lines instead of failing (default false). */
  skipMalformed?: boolean;
  /** What the file is, for messages ("dataset", "test set"); default "dataset". */
  what?: string;
}

function kind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return 'a string';
  return `a ${typeof v} (${String(v)})`;
}

/** Why one line is not a usable example, or the example. */
function parseLine(text: string, line: number): Example | string {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    const at = locateJsonError(text);
    return `not valid JSON${at ? `: ${at.reason} at column ${at.column}` : ''}`;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return `expected a JSON object with "context" and "target", got ${kind(value)}`;
  const record = value as Record<string, unknown>;
  for (const key of ['context', 'target'] as const) {
    if (!(key in record)) return `has no "${key}" (keys: ${Object.keys(record).map((k) => JSON.stringify(k)).join(', ') || 'none'})`;
    if (typeof record[key] !== 'string') return `"${key}" must be a string, got ${kind(record[key])}`;
  }
  return { context: record.context as string, target: record.target as string, line };
}

/**
 * Reads a JSONL data file. Fails (DataError) when the file is missing, a directory,
 * empty, or holds a malformed line (unless skipMalformed).
 */
export function readJsonl(file: string, opts: ReadJsonlOptions = {}): JsonlData {
  const what = opts.what ?? 'dataset';
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new DataError(`${what} ${file} does not exist`);
    if (code === 'EISDIR') throw new DataError(`${what} ${file} is a directory, not a JSONL file`);
    throw new DataError(`cannot read ${what} ${file}: ${(e as Error).message}`);
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const examples: Example[] = [];
  const skipped: SkippedLine[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i].endsWith('\r') ? lines[i].slice(0, -1) : lines[i];
    if (raw.trim() === '') continue;
    const parsed = parseLine(raw, i + 1);
    if (typeof parsed === 'string') {
      if (!opts.skipMalformed) {
        throw new DataError(`${file}:${i + 1}: ${parsed} (fix the line, or skip malformed lines with --skip-malformed)`);
      }
      skipped.push({ line: i + 1, reason: parsed });
      continue;
    }
    examples.push(parsed);
  }
  if (examples.length === 0) {
    const why = skipped.length > 0 ? `all ${skipped.length} non-blank lines are malformed (first, line ${skipped[0].line}: ${skipped[0].reason})` : 'it holds no examples';
    throw new DataError(`${what} ${file} is empty: ${why}`);
  }
  return { file, examples, skipped };
}
