// `finlora decompose` run as a user runs it: the built CLI in a child process. Checks
// the docs' example output, JSON output, recomposition, the safetensors path, and that
// every bad input gives a non-zero exit, one line on stderr naming the problem, no
// stack trace and no output file.
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { withSafetensors, writeSafetensors } from '../../src/io/safetensors.js';
import { assertClose } from '../helpers.js';

const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-cli-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function finlora(...args: string[]): Run {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, FINLORA_DEBUG: '' }, timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** The same as finlora(), in the background: the bad-input table runs its cases in parallel. */
function finloraAsync(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, FINLORA_DEBUG: '' }, timeout: 30_000 }, (err, stdout, stderr) => {
      const status = err === null ? 0 : typeof err.code === 'number' ? err.code : null;
      resolve({ status, stdout, stderr });
    });
  });
}

const W0 = [
  [1, 7, 2, 8, 5],
  [2, 10, 4, 12, 10],
  [3, 15, 12, 18, 27],
  [4, 12, 16, 16, 36],
];
const DOCS = JSON.stringify(W0);
const DOCS_M = [5.4772, 22.7596, 20.4939, 28.0713, 46.3681];
// V̂ rows exactly as the docs print them
const DOCS_VHAT_ROWS = [
  '0.182574, 0.307562, 0.097590, 0.284988, 0.107833',
  '0.365148, 0.439375, 0.195180, 0.427482, 0.215666',
  '0.547723, 0.659062, 0.585540, 0.641223, 0.582297',
  '0.730297, 0.527250, 0.780720, 0.569976, 0.776396',
];
const transposed = (m: number[][]) => m[0].map((_, j) => m.map((row) => row[j]));

test('the docs example prints the docs\' m and V̂ and the unit-length check', () => {
  const r = finlora('decompose', '--matrix', DOCS);
  assert.equal(r.stderr, '');
  assert.equal(r.status, 0);
  const lines = r.stdout.trimEnd().split('\n');
  const mLine = lines[lines.findIndex((l) => l.startsWith('magnitude')) + 1];
  const m = JSON.parse(mLine);
  assert.deepEqual(m.map((x: number) => x.toFixed(4)), DOCS_M.map((x) => x.toFixed(4)));
  for (const row of DOCS_VHAT_ROWS) assert.ok(lines.some((l) => l.includes(`[${row}]`)), `missing V̂ row [${row}] in:\n${r.stdout}`);
  assert.match(r.stdout, /check: all 5 columns of V̂ have unit length/);
  assert.doesNotMatch(r.stdout, /NaN/);
});

test('--json gives full-precision values; the transposed matrix in layout linear gives the same m', () => {
  const dxk = finlora('decompose', '--matrix', DOCS, '--json');
  assert.equal(dxk.status, 0, dxk.stderr);
  const a = JSON.parse(dxk.stdout);
  assert.equal(a.layout, 'dxk');
  assert.deepEqual(a.shape, [4, 5]);
  [30, 518, 420, 788, 2150].forEach((s, j) => assert.ok(Math.abs(a.magnitude[j] - Math.sqrt(s)) <= Math.sqrt(s) * 2 ** -24, `m[${j}]`));
  assertClose(a.direction.flat(), DOCS_VHAT_ROWS.join(', ').split(', ').map(Number), { atol: 6e-7, rtol: 0 });
  assert.ok(a.unitLength.maxDeviation < 1e-6);

  const lin = finlora('decompose', '--matrix', JSON.stringify(transposed(W0)), '--layout', 'linear', '--json');
  assert.equal(lin.status, 0, lin.stderr);
  const b = JSON.parse(lin.stdout);
  assert.equal(b.layout, 'linear');
  assert.deepEqual(b.magnitude, a.magnitude);
  assert.deepEqual(b.direction, transposed(a.direction));
});

test('--lora-a/--lora-b recompose W\' = m·(W + s·B·A)/‖W + s·B·A‖_c, matching f64', () => {
  const B = [[0.5], [-1], [0.25], [2]];
  const A = [[1, -2, 0.5, 3, -1]];
  const s = 0.5;
  const r = finlora('decompose', '--matrix', DOCS, '--lora-a', JSON.stringify(A), '--lora-b', JSON.stringify(B), '--scale', String(s), '--json');
  assert.equal(r.status, 0, r.stderr);
  const got = JSON.parse(r.stdout);
  const upd = W0.map((row, i) => row.map((w, j) => w + s * B[i][0] * A[0][j]));
  const expected = upd.map((row) =>
    row.map((x, j) => {
      const m = Math.sqrt(W0.reduce((acc, rr) => acc + rr[j] ** 2, 0));
      const n = Math.sqrt(upd.reduce((acc, rr) => acc + rr[j] ** 2, 0));
      return (m * x) / n;
    }),
  );
  assert.equal(got.scale, s);
  assertClose(got.recomposed.flat(), expected.flat(), { atol: 1e-5, rtol: 1e-5 });
  // text output shows it too
  const text = finlora('decompose', '--matrix', DOCS, '--lora-a', JSON.stringify(A), '--lora-b', JSON.stringify(B), '--scale', String(s));
  assert.equal(text.status, 0, text.stderr);
  const lines = text.stdout.split('\n');
  const heading = lines.findIndex((l) => /^recomposed W' = m · \(W \+ s·B·A\) \/ ‖W \+ s·B·A‖ per column, s = 0\.5 \(4×5\):$/.test(l));
  assert.ok(heading > 0, text.stdout);
  const printed: number[][] = JSON.parse(lines.slice(heading + 1, heading + 5).join(''));
  assertClose(printed.flat(), expected.flat(), { atol: 5e-7 + 1e-5, rtol: 0 }, 'printed W\'');
});

test('a safetensors Linear weight with lora tensors, written to --out', () => {
  const file = path.join(dir, 'adapter.safetensors');
  const A = [[0.1, 0.2, 0.3, 0.4], [0.5, -0.6, 0.7, 0.8]];
  const B = [[1, 0], [0, 1], [1, 1], [0, 0], [2, -2]];
  writeSafetensors(file, {
    'layers.0.q_proj.weight': { dtype: 'bf16', shape: [5, 4], data: transposed(W0).flat() },
    'layers.0.q_proj.lora_A.weight': { dtype: 'f32', shape: [2, 4], data: A.flat() },
    'layers.0.q_proj.lora_B.weight': { dtype: 'f32', shape: [5, 2], data: B.flat() },
    'layers.0.norm.weight': { dtype: 'f32', shape: [4], data: [1, 1, 1, 1] },
  });
  const out = path.join(dir, 'decomposed.safetensors');
  const r = finlora(
    'decompose', '--safetensors', file, '--tensor', 'layers.0.q_proj.weight',
    '--lora-a', 'layers.0.q_proj.lora_A.weight', '--lora-b', 'layers.0.q_proj.lora_B.weight', '--scale', '2', '--out', out,
  );
  assert.equal(r.stderr, '');
  assert.equal(r.status, 0);
  // the default layout for a checkpoint tensor is linear: one magnitude per row
  assert.match(r.stdout, /layout linear/);
  assert.match(r.stdout, /check: all 5 rows of V̂ have unit length/);
  assert.match(r.stdout, new RegExp(`wrote ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  withSafetensors(out, (f) => {
    assert.deepEqual(f.names(), ['direction', 'magnitude', 'recomposed']);
    assert.equal(f.metadata.layout, 'linear');
    const m = Array.from(f.read('magnitude'));
    [30, 518, 420, 788, 2150].forEach((s, j) => assert.ok(Math.abs(m[j] - Math.sqrt(s)) < 1e-5 * Math.sqrt(s), `m[${j}]`));
    const d = Array.from(f.read('direction'));
    for (let i = 0; i < 5; i++) assert.ok(Math.abs(Math.hypot(...d.slice(i * 4, i * 4 + 4)) - 1) < 1e-6);
    const W = transposed(W0);
    const upd = W.map((row, i) => row.map((w, j) => w + 2 * (B[i][0] * A[0][j] + B[i][1] * A[1][j])));
    const expected = upd.map((row, i) => row.map((x) => (Math.hypot(...W[i]) * x) / Math.hypot(...upd[i])));
    assertClose(Array.from(f.read('recomposed')), expected.flat(), { atol: 1e-5, rtol: 1e-5 });
  });
  // a tensor name that is not in the file lists what is
  const missing = finlora('decompose', '--safetensors', file, '--tensor', 'q_proj.weight');
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /no tensor "q_proj.weight" \(available: "layers.0.norm.weight", "layers.0.q_proj.lora_A.weight", .*\)/);
});

test('--help, --version and usage errors', () => {
  const top = finlora('--help');
  assert.equal(top.status, 0);
  assert.match(top.stdout, /decompose +Split a weight matrix/);
  const h = finlora('decompose', '--help');
  assert.equal(h.status, 0);
  assert.match(h.stdout, /Default: dxk for --matrix\/--file \(as in the docs\), linear for\s+--safetensors/);
  const pkg = JSON.parse(fs.readFileSync(fileURLToPath(new URL('../../../package.json', import.meta.url)), 'utf8'));
  const v = finlora('--version');
  assert.equal(v.status, 0);
  assert.equal(v.stdout.trim(), pkg.version);
});

const notSafetensors = path.join(dir, 'not.safetensors');
const vectorFile = path.join(dir, 'vector.safetensors');
const badJsonFile = path.join(dir, 'bad.json');

test('bad input: exit code, one line on stderr naming the problem, no stack, no output file', async () => {
  fs.writeFileSync(notSafetensors, 'this is plain text, long enough to have an 8-byte length prefix\n');
  writeSafetensors(vectorFile, { bias: { dtype: 'f32', shape: [3], data: [1, 2, 3] }, w: { dtype: 'f32', shape: [2, 2], data: [1, 0, 0, 1] } });
  fs.writeFileSync(badJsonFile, '[[1, 2], [3, 4], [5, true]]');
  const existing = path.join(dir, 'existing.safetensors');
  fs.writeFileSync(existing, 'keep me');
  const cases: [string[], number, RegExp][] = [
    [['--matrix', '[[1,2,3],[4,5]]'], 1, /--matrix: ragged matrix: row 1 has 2 entries, row 0 has 3/],
    [['--matrix', '[[1,2],[3,"x"]]'], 1, /--matrix: row 1, column 1 is "x", not a number/],
    [['--matrix', '[[1,2],[3,null]]'], 1, /row 1, column 1 is null, not a number/],
    [['--matrix', '[]'], 1, /--matrix: the matrix is empty/],
    [['--matrix', '[[]]'], 1, /--matrix: row 0 is empty/],
    [['--matrix', '[1,2,3]'], 1, /row 0 is 1, not an array of numbers/],
    [['--matrix', '[[1,2],[3'], 1, /--matrix: not valid JSON/],
    [['--matrix', '[[1e39, 1]]'], 1, /row 0, column 0 is 1e\+39, too large for f32/],
    [['--matrix', '[[1,0,2],[3,0,4]]'], 1, /column 1 \(0-based\) of W \[2, 3\] has norm 0/],
    [['--matrix', '[[1,2],[0,0]]', '--layout', 'linear'], 1, /row 1 \(0-based\) of W \[2, 2\] has norm 0/],
    [['--matrix', '[[1e30, 1e30]]'], 1, /column 0 \(0-based\) of W \[1, 2\] has norm Infinity/],
    [['--file', badJsonFile], 1, new RegExp(`${badJsonFile.replace(/[.\\]/g, '\\$&')}: row 2, column 1 is true, not a number`)],
    [['--file', path.join(dir, 'nope.json')], 1, /nope\.json: no such file/],
    [['--safetensors', notSafetensors, '--tensor', 'w'], 1, /not\.safetensors: not a safetensors file/],
    [['--safetensors', vectorFile, '--tensor', 'bias'], 1, /vector\.safetensors: tensor "bias" \(--tensor\) has shape \[3\]; a 2-D matrix is needed/],
    [['--safetensors', vectorFile, '--tensor', 'nope'], 1, /vector\.safetensors: no tensor "nope" \(available: "bias", "w"\)/],
    [['--safetensors', vectorFile], 2, /--safetensors needs --tensor NAME \(2-D tensors in .*vector\.safetensors: "w"\)/],
    [['--matrix', DOCS, '--lora-a', '[[1,2,3,4,5]]', '--lora-b', '[[1],[2],[3]]'], 1, /--lora-b has shape \[3, 1\], but W is \[4, 5\]: B must be \[4, r\]/],
    [['--matrix', DOCS, '--lora-a', '[[1,2,3,4]]', '--lora-b', '[[1],[2],[3],[4]]'], 1, /--lora-a has shape \[1, 4\], but B is \[4, 1\] and W is \[4, 5\]: A must be \[1, 5\]/],
    [['--matrix', DOCS, '--lora-a', '[[1,2,3,4,5]]', '--lora-b', '[[1],[2],[3],"x"]'], 1, /--lora-b: row 3 is "x", not an array of numbers/],
    [['--matrix', '[[1,2],[3,4]]', '--lora-a', '[[0,0]]', '--lora-b', '[[1],[1]]', '--scale', '1e39'], 2, /--scale 1e39 is too large for f32/],
    [['--matrix', DOCS, '--lora-a', '[[1,2,3,4,5]]'], 2, /--lora-a and --lora-b go together/],
    [['--matrix', DOCS, '--layout', 'columns'], 2, /--layout must be dxk or linear, not 'columns'/],
    [['--matrix', DOCS, '--frobnicate'], 2, /Unknown option '--frobnicate'/],
    [['--matrix', DOCS, '--file', badJsonFile], 2, /give one input, not --matrix and --file/],
    [[], 2, /no matrix given/],
  ];
  const out = path.join(dir, 'should-not-exist.safetensors');
  // alternately a new output path and an existing file that must stay as it was
  const runs: Run[] = [];
  for (let i = 0; i < cases.length; i += 4) {
    const batch = cases.slice(i, i + 4).map(([args], k) => finloraAsync('decompose', ...args, '--out', (i + k) % 2 === 0 ? out : existing));
    runs.push(...(await Promise.all(batch)));
  }
  cases.forEach(([args, code, pattern], i) => {
    const r = runs[i];
    const what = `finlora decompose ${args.join(' ')}`;
    assert.equal(r.status, code, `${what}: exit ${r.status}, stderr ${r.stderr}`);
    assert.equal(r.stdout, '', `${what}: printed ${r.stdout}`);
    const lines = r.stderr.split('\n');
    assert.equal(lines.length, 2, `${what}: stderr is not one line: ${r.stderr}`);
    assert.equal(lines[1], '');
    assert.ok(lines[0].startsWith('finlora decompose: '), `${what}: ${lines[0]}`);
    assert.match(lines[0], pattern, what);
    assert.doesNotMatch(r.stderr, /\bat .*\.js:\d+|internal error/, what);
    assert.equal(fs.existsSync(out), false, `${what}: wrote ${out}`);
    assert.equal(fs.readFileSync(existing, 'utf8'), 'keep me', `${what}: touched an existing output`);
  });
  assert.deepEqual(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp')), []);
});

test('unknown commands and options at the top level are usage errors', () => {
  for (const args of [[], ['frobnicate'], ['--frobnicate']]) {
    const r = finlora(...args);
    assert.equal(r.status, 2);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr.split('\n').length, 2, r.stderr);
    assert.match(r.stderr, /^finlora: (no command given|unknown (command|option) '(--)?frobnicate') .*see finlora --help/);
  }
});
