// Plain text for causal-LM pretraining, read from files and packed into fixed-length
// blocks as transformers' run_clm.py packs it (group_texts): every document is
// tokenized with the tokenizer's special tokens (BOS for Llama), followed by EOS, the
// documents are concatenated in file order, and the stream is cut into blocks of
// sequence_len tokens; the last, shorter block is kept when it has at least two tokens
// (one prediction). Every token is a target: labels equal the inputs (the loss shifts
// them), and no block needs padding except the last.
//
// Documents:
// - .jsonl: one per line: the "text" field, or FinLoRA's "context" followed by its
//   "target" (so FinLoRA's data files are usable as they are). A line without either
//   stops reading with its file:line, as the fine-tuning data does.
// - anything else: UTF-8 text whose documents are separated by blank lines.
import * as fs from 'node:fs';
import type { TextTokenizer } from './format.js';
import { eosTokenId, type Features } from './format.js';
import { DataError } from './jsonl.js';

export interface CorpusFile {
  readonly file: string;
  readonly documents: string[];
  readonly characters: number;
}

/** Reads the documents of one file (see the header for the formats). */
export function readDocuments(file: string): CorpusFile {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new DataError(`data file ${file} does not exist`);
    if (code === 'EISDIR') throw new DataError(`data file ${file} is a directory`);
    throw new DataError(`cannot read data file ${file}: ${(e as Error).message}`);
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const documents: string[] = [];
  if (file.endsWith('.jsonl')) {
    const lines = text.split('\n');
    for (let i = 0; i < lines.length; i++) {
      const raw = lines[i].trim();
      if (raw === '') continue;
      let v: unknown;
      try {
        v = JSON.parse(raw);
      } catch {
        throw new DataError(`${file}:${i + 1}: not valid JSON`);
      }
      const doc = documentOf(v);
      if (doc === null) throw new DataError(`${file}:${i + 1}: expected an object with a "text" string, or "context" and "target" strings`);
      if (doc.trim() !== '') documents.push(doc);
    }
  } else {
    for (const part of text.split(/\r?\n(?:[ \t]*\r?\n)+/)) if (part.trim() !== '') documents.push(part.replace(/\r\n/g, '\n').trim());
  }
  if (documents.length === 0) throw new DataError(`data file ${file} holds no text`);
  return { file, documents, characters: documents.reduce((n, d) => n + d.length, 0) };
}

function documentOf(v: unknown): string | null {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const r = v as Record<string, unknown>;
  if (typeof r.text === 'string') return r.text;
  if (typeof r.context === 'string' && typeof r.target === 'string') return r.context + r.target;
  return null;
}

export interface PackedCorpus {
  readonly blocks: Features[];
  /** Tokens in the stream (BOS and EOS included). */
  readonly tokens: number;
  readonly documents: number;
}

/** Tokenizes documents and packs them into blocks of `blockSize` tokens (see the header). */
export function packDocuments(documents: Iterable<string>, tok: TextTokenizer, blockSize: number): PackedCorpus {
  if (!Number.isInteger(blockSize) || blockSize < 2) throw new Error(`packDocuments: the block size must be an integer of at least 2, got ${blockSize}`);
  const eos = eosTokenId(tok);
  const blocks: Features[] = [];
  let buffer = new Int32Array(blockSize);
  let fill = 0, tokens = 0, count = 0;
  const flush = () => {
    const ids = buffer.slice(0, fill);
    blocks.push({ inputIds: ids, labels: ids.slice(), line: blocks.length + 1 });
    buffer = new Int32Array(blockSize);
    fill = 0;
  };
  for (const doc of documents) {
    const ids = tok.encode(doc, { addSpecialTokens: true });
    ids.push(eos);
    count++;
    tokens += ids.length;
    for (const id of ids) {
      buffer[fill++] = id;
      if (fill === blockSize) flush();
    }
  }
  if (fill >= 2) flush();
  return { blocks, tokens, documents: count };
}
