// `finlora decompose`: DoRA's decomposition of one matrix, as in FinLoRA's DoRA docs
// (m = ‖W‖_c, V̂ = W/‖W‖_c), optionally recomposed with a LoRA update
// (W' = m · (W + s·B·A)/‖W + s·B·A‖_c). The matrix comes from JSON or from a tensor in
// a safetensors file. All input is checked before anything is computed or written;
// --out is written atomically, so a failure never leaves a partial file.
import * as fs from 'node:fs';
import { decompose, DORA_LAYOUTS, DoraError, type DoraLayout, recompose } from '../../dora/decompose.js';
import { SafetensorsError, SafetensorsFile, writeSafetensors } from '../../io/safetensors.js';
import { tensor } from '../../ops/creation.js';
import { contiguous } from '../../ops/view.js';
import { formatShape } from '../../tensor/shape.js';
import { scope, type Tensor } from '../../tensor/tensor.js';
import type { Command } from '../command.js';
import { parseCommandArgs, UsageError, UserError } from '../errors.js';

const HELP = `finlora decompose — DoRA's magnitude / direction decomposition of a weight matrix

Usage:
  finlora decompose --matrix '[[1,7,2,8,5],[2,10,4,12,10],[3,15,12,18,27],[4,12,16,16,36]]'
  finlora decompose --file W.json [--layout linear]
  finlora decompose --safetensors model.safetensors --tensor model.layers.0.self_attn.q_proj.weight

Input (exactly one):
  --matrix JSON          the matrix as a JSON array of rows
  --file PATH            a JSON file holding such an array
  --safetensors PATH     a safetensors file, with --tensor NAME naming a 2-D tensor in it

Options:
  --layout dxk|linear    dxk: W is d×k as in the DoRA docs; m holds one norm per COLUMN
                         and V̂ has unit columns. linear: W is a Linear weight
                         [out_features, in_features]; m holds one norm per ROW (PEFT's
                         lora_magnitude_vector) and V̂ has unit rows.
                         Default: dxk for --matrix/--file (as in the docs), linear for
                         --safetensors (checkpoint tensors are Linear weights).
  --lora-a A --lora-b B  also print W' = m · (W + s·B·A) / ‖W + s·B·A‖ (norms per column
                         for dxk, per row for linear). A and B are JSON matrices, or
                         tensor names in the --safetensors file. dxk: B is d×r, A is r×k;
                         linear: B is PEFT's lora_B [out, r], A its lora_A [r, in].
  --scale S              s in the formula above (default 1; PEFT uses lora_alpha / r)
  --out PATH             also write the tensors magnitude, direction (and recomposed)
                         to a safetensors file (f32), atomically
  --json                 print one JSON object instead of text (all values, full f32
                         precision)
  -h, --help             this text

Text output prints values with 6 decimals and shows at most 10 rows and columns of
a large matrix (--json and --out hold everything), then checks that every column (dxk)
or row (linear) of V̂ has unit length. Computation is in f32. Indices in messages
count from 0. Exit codes: 0 success, 1 bad input, 2 bad usage.
`;

const OPTIONS = {
  matrix: { type: 'string' },
  file: { type: 'string' },
  safetensors: { type: 'string' },
  tensor: { type: 'string' },
  layout: { type: 'string' },
  'lora-a': { type: 'string' },
  'lora-b': { type: 'string' },
  scale: { type: 'string' },
  out: { type: 'string' },
  json: { type: 'boolean' },
} as const;

const F32_MAX = 3.4028234663852886e38;
/** Text output shows whole matrices up to this many rows/columns, else the edges. */
const SHOW = 10;
const EDGE = 4;
/** Largest |‖v‖ − 1| accepted by the unit-length check (f32 rounding of a long row). */
const UNIT_TOL = 1e-5;

interface Matrix {
  readonly rows: number;
  readonly cols: number;
  /** Row-major. */
  readonly data: Float64Array;
}

/** Reads a JSON array of equal-length rows of finite numbers; `source` names it in errors. */
function parseMatrix(text: string, source: string): Matrix {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${source}: not valid JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  if (!Array.isArray(value)) throw new UserError(`${source}: expected a JSON array of rows, like [[1, 2], [3, 4]]`);
  if (value.length === 0) throw new UserError(`${source}: the matrix is empty`);
  const rows = value.length;
  let cols = -1;
  const data: number[] = [];
  value.forEach((row: unknown, i) => {
    if (!Array.isArray(row)) throw new UserError(`${source}: row ${i} is ${describe(row)}, not an array of numbers`);
    if (row.length === 0) throw new UserError(`${source}: row ${i} is empty`);
    if (cols < 0) cols = row.length;
    else if (row.length !== cols) throw new UserError(`${source}: ragged matrix: row ${i} has ${entries(row.length)}, row 0 has ${entries(cols)}`);
    row.forEach((x: unknown, j) => {
      if (typeof x !== 'number' || !Number.isFinite(x)) throw new UserError(`${source}: row ${i}, column ${j} is ${describe(x)}, not a number`);
      if (Math.abs(x) > F32_MAX) throw new UserError(`${source}: row ${i}, column ${j} is ${x}, too large for f32`);
      data.push(x);
    });
  });
  return { rows, cols, data: Float64Array.from(data) };
}

function entries(n: number): string {
  return n === 1 ? '1 entry' : `${n} entries`;
}

function describe(x: unknown): string {
  const s = JSON.stringify(x) ?? String(x);
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

function parseLayout(value: string | undefined, fallback: DoraLayout): DoraLayout {
  if (value === undefined) return fallback;
  const found = DORA_LAYOUTS.find((l) => l === value);
  if (found === undefined) throw new UsageError(`--layout must be dxk or linear, not '${value}'`);
  return found;
}

function parseScale(value: string | undefined): number {
  if (value === undefined) return 1;
  const s = Number(value);
  if (value.trim() === '' || !Number.isFinite(s)) throw new UsageError(`--scale must be a finite number, not '${value}'`);
  if (Math.abs(s) > F32_MAX) throw new UsageError(`--scale ${value} is too large for f32`);
  return s;
}

interface Inputs {
  readonly W: Tensor;
  readonly A: Tensor | null;
  readonly B: Tensor | null;
  readonly layout: DoraLayout;
  readonly source: string;
}

function matrixTensor(m: Matrix): Tensor {
  return tensor(m.data, [m.rows, m.cols]);
}

function readTextFile(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = typeof e === 'object' && e !== null && 'code' in e ? e.code : undefined;
    throw new UserError(`${file}: ${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory' : `cannot read (${e instanceof Error ? e.message : String(e)})`}`);
  }
}

/** Loads a tensor from the open file, checking that it is a non-empty matrix. */
function fileMatrix(st: SafetensorsFile, name: string, flag: string): Tensor {
  const info = st.info(name);
  if (info.shape.length !== 2) {
    throw new UserError(`${st.path}: tensor ${JSON.stringify(name)} (${flag}) has shape ${formatShape(info.shape)}; a 2-D matrix is needed`);
  }
  if (info.shape[0] === 0 || info.shape[1] === 0) throw new UserError(`${st.path}: tensor ${JSON.stringify(name)} (${flag}) has shape ${formatShape(info.shape)}, which is empty`);
  return st.tensor(name, { dtype: 'f32' });
}

interface Values {
  matrix?: string;
  file?: string;
  safetensors?: string;
  tensor?: string;
  layout?: string;
  'lora-a'?: string;
  'lora-b'?: string;
  scale?: string;
  out?: string;
  json?: boolean;
}

function loadInputs(v: Values): Inputs {
  const sources = (['matrix', 'file', 'safetensors'] as const).filter((k) => v[k] !== undefined);
  if (sources.length === 0) throw new UsageError('no matrix given: use --matrix JSON, --file PATH or --safetensors PATH --tensor NAME');
  if (sources.length > 1) throw new UsageError(`give one input, not ${sources.map((s) => `--${s}`).join(' and ')}`);
  if (v.tensor !== undefined && v.safetensors === undefined) throw new UsageError('--tensor names a tensor in a --safetensors file, and none was given');
  if ((v['lora-a'] === undefined) !== (v['lora-b'] === undefined)) throw new UsageError('--lora-a and --lora-b go together');
  if (v.scale !== undefined && v['lora-a'] === undefined) throw new UsageError('--scale applies to the recomposition: give --lora-a and --lora-b too');

  if (v.safetensors !== undefined) {
    const file = v.safetensors;
    const layout = parseLayout(v.layout, 'linear');
    const st = SafetensorsFile.open(file);
    try {
      const name = v.tensor;
      if (name === undefined) {
        const matrices = st.names().filter((n) => st.info(n).shape.length === 2);
        const list = matrices.slice(0, 5).map((n) => JSON.stringify(n)).join(', ') + (matrices.length > 5 ? ` and ${matrices.length - 5} more` : '');
        throw new UsageError(`--safetensors needs --tensor NAME (${matrices.length === 0 ? 'the file holds no 2-D tensors' : `2-D tensors in ${file}: ${list}`})`);
      }
      const W = fileMatrix(st, name, '--tensor');
      const side = (flag: '--lora-a' | '--lora-b', value: string | undefined): Tensor | null => {
        if (value === undefined) return null;
        // A value that looks like JSON is a matrix; anything else is a tensor name in the file.
        return value.trimStart().startsWith('[') ? matrixTensor(parseMatrix(value, flag)) : fileMatrix(st, value, flag);
      };
      return { W, A: side('--lora-a', v['lora-a']), B: side('--lora-b', v['lora-b']), layout, source: `${file}: ${JSON.stringify(name)}` };
    } finally {
      st.close();
    }
  }
  const layout = parseLayout(v.layout, 'dxk');
  const source = v.matrix !== undefined ? '--matrix' : (v.file ?? '');
  const text = v.matrix !== undefined ? v.matrix : readTextFile(source);
  const W = matrixTensor(parseMatrix(text, source));
  const side = (flag: '--lora-a' | '--lora-b', value: string | undefined): Tensor | null => {
    if (value === undefined) return null;
    if (!value.trimStart().startsWith('[')) throw new UsageError(`${flag} ${describe(value)} is not a JSON matrix (tensor names need --safetensors)`);
    return matrixTensor(parseMatrix(value, flag));
  };
  return { W, A: side('--lora-a', v['lora-a']), B: side('--lora-b', v['lora-b']), layout, source };
}

/** B must be [rows of W, r] and A [r, cols of W]; the message names the flag. */
function checkLoraShapes(W: Tensor, A: Tensor, B: Tensor, layout: DoraLayout): void {
  const [R, C] = W.shape;
  const rowsName = layout === 'dxk' ? 'd' : 'out';
  const colsName = layout === 'dxk' ? 'k' : 'in';
  if (B.shape[0] !== R) {
    throw new UserError(`--lora-b has shape ${formatShape(B.shape)}, but W is ${formatShape(W.shape)}: B must be [${R}, r] (${rowsName} × r)`);
  }
  const r = B.shape[1];
  if (A.shape[0] !== r || A.shape[1] !== C) {
    throw new UserError(`--lora-a has shape ${formatShape(A.shape)}, but B is ${formatShape(B.shape)} and W is ${formatShape(W.shape)}: A must be [${r}, ${C}] (r × ${colsName})`);
  }
}

function fixed(x: number): string {
  const s = x.toFixed(6);
  return s === '-0.000000' ? '0.000000' : s;
}

/** Which indices to show along an axis of length n: all, or the edges around a gap (-1). */
function shown(n: number): number[] {
  if (n <= SHOW) return Array.from({ length: n }, (_, i) => i);
  return [...Array.from({ length: EDGE }, (_, i) => i), -1, ...Array.from({ length: EDGE }, (_, i) => n - EDGE + i)];
}

function formatVector(v: ArrayLike<number>): string {
  return `[${shown(v.length).map((i) => (i < 0 ? '...' : fixed(v[i]))).join(', ')}]`;
}

function formatMatrix(data: ArrayLike<number>, rows: number, cols: number): string {
  const rowIdx = shown(rows);
  const colIdx = shown(cols);
  const cells = rowIdx.map((i) => colIdx.map((j) => (i < 0 ? '...' : j < 0 ? '...' : fixed(data[i * cols + j]))));
  const widths = colIdx.map((_, c) => Math.max(...cells.map((row) => row[c].length)));
  const lines = cells.map((row, r) => {
    if (rowIdx[r] < 0) return ' ...';
    return ` [${row.map((cell, c) => cell.padStart(widths[c])).join(', ')}]`;
  });
  return `[${lines.join(',\n').slice(1)}]`;
}

function rowsOf(data: ArrayLike<number>, rows: number, cols: number): number[][] {
  return Array.from({ length: rows }, (_, i) => Array.from({ length: cols }, (_, j) => data[i * cols + j]));
}

/** Largest |‖v‖ − 1| over the columns ('dxk') or rows ('linear'), in f64. */
function unitDeviation(data: ArrayLike<number>, rows: number, cols: number, layout: DoraLayout): number {
  const n = layout === 'dxk' ? cols : rows;
  const sums = new Float64Array(n);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) sums[layout === 'dxk' ? j : i] += data[i * cols + j] ** 2;
  let worst = 0;
  for (const s of sums) worst = Math.max(worst, Math.abs(Math.sqrt(s) - 1));
  return worst;
}

function hostValues(t: Tensor, what: string): Float32Array {
  const v = contiguous(t).toArray();
  const out = Float32Array.from(v);
  // decompose/recompose reject zero and non-finite norms, so this is a bug if it fires
  if (out.some((x) => !Number.isFinite(x))) throw new Error(`${what} holds a non-finite value`);
  return out;
}

function run(argv: readonly string[], out: (text: string) => void): number {
  const { values: v }: { values: Values } = parseCommandArgs('decompose', { args: [...argv], options: OPTIONS, strict: true, allowPositionals: false });
  const scale = parseScale(v.scale);
  const result = scope(() => {
    let inputs: Inputs;
    try {
      inputs = loadInputs(v);
    } catch (e) {
      if (e instanceof SafetensorsError) throw new UserError(e.message);
      throw e;
    }
    const { W, A, B, layout } = inputs;
    if (A !== null && B !== null) checkLoraShapes(W, A, B, layout);
    try {
      const { magnitude, direction } = decompose(W, layout);
      const recomposed = A !== null && B !== null ? recompose({ magnitude, weight: W, loraA: A, loraB: B, scale, layout }) : null;
      return {
        layout, source: inputs.source, rows: W.shape[0], cols: W.shape[1],
        magnitude: hostValues(magnitude, 'magnitude'),
        direction: hostValues(direction, 'direction'),
        recomposed: recomposed === null ? null : hostValues(recomposed, 'recomposed'),
      };
    } catch (e) {
      if (e instanceof DoraError) throw new UserError(`${inputs.source}: ${e.message.replace(/^(de|re)compose: /, '')}`);
      throw e;
    }
  });
  const { layout, rows, cols, magnitude, direction, recomposed } = result;
  const deviation = unitDeviation(direction, rows, cols, layout);
  if (!(deviation <= UNIT_TOL)) throw new Error(`direction is not unit-norm (largest deviation ${deviation})`);

  if (v.out !== undefined) {
    const tensors = {
      magnitude: { dtype: 'f32' as const, shape: [magnitude.length], data: magnitude },
      direction: { dtype: 'f32' as const, shape: [rows, cols], data: direction },
      ...(recomposed === null ? {} : { recomposed: { dtype: 'f32' as const, shape: [rows, cols], data: recomposed } }),
    };
    const metadata: Record<string, string> = { producer: 'finlora decompose', layout, source: result.source };
    if (recomposed !== null) metadata.scale = String(scale);
    try {
      writeSafetensors(v.out, tensors, metadata);
    } catch (e) {
      if (e instanceof SafetensorsError) throw new UserError(e.message);
      throw e;
    }
  }

  const per = layout === 'dxk' ? 'column' : 'row';
  if (v.json === true) {
    out(`${JSON.stringify({
      layout,
      shape: [rows, cols],
      magnitude: Array.from(magnitude),
      direction: rowsOf(direction, rows, cols),
      unitLength: { per, maxDeviation: deviation },
      ...(recomposed === null ? {} : { scale, recomposed: rowsOf(recomposed, rows, cols) }),
      ...(v.out === undefined ? {} : { out: v.out }),
    })}\n`);
    return 0;
  }
  const dims = `${rows}×${cols}`;
  const lines = [
    layout === 'dxk'
      ? `W: ${dims}, layout dxk (d×k as in the DoRA docs): one magnitude per column`
      : `W: ${dims}, layout linear ([out_features, in_features]): one magnitude per row`,
    layout === 'dxk' ? `magnitude m = ‖W‖_c (1×${cols}):` : `magnitude m = ‖W‖ per row (${rows}):`,
    formatVector(magnitude),
    layout === 'dxk' ? `direction V̂ = W / ‖W‖_c (${dims}), unit columns:` : `direction V̂ = W / m[:, None] (${dims}), unit rows:`,
    formatMatrix(direction, rows, cols),
    `check: all ${layout === 'dxk' ? cols : rows} ${per}s of V̂ have unit length (largest |‖v‖ − 1| = ${deviation.toExponential(1)})`,
  ];
  if (recomposed !== null) {
    lines.push(`recomposed W' = m · (W + s·B·A) / ‖W + s·B·A‖ per ${per}, s = ${scale} (${dims}):`, formatMatrix(recomposed, rows, cols));
  }
  if (v.out !== undefined) lines.push(`wrote ${v.out}`);
  out(`${lines.join('\n')}\n`);
  return 0;
}

export const command: Command = { name: 'decompose', help: HELP, run };
