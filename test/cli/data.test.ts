// `finlora data fetch` against a server on 127.0.0.1 standing in for FinLoRA's
// repository: files land in DIR/test and DIR/train whole and checked, files already
// there are kept, and a 404, a Git LFS pointer, an HTML page or a dropped connection
// gives one line, exit 1 and no file (not even a partial one).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-data-'));
const line = (i: number) => JSON.stringify({ context: `Instruction: What is the sentiment?\nInput: item ${i}\nAnswer: `, target: ['negative', 'neutral', 'positive'][i % 3] });
const FPB = `${Array.from({ length: 300 }, (_, i) => line(i)).join('\n')}\n`;
const FIQA = `${Array.from({ length: 7 }, (_, i) => line(i + 5)).join('\n')}\n`;
const TRAIN = `${Array.from({ length: 20 }, (_, i) => line(i + 9)).join('\n')}\n`;

let server: http.Server;
let base = '';
before(async () => {
  server = http.createServer((req, res) => {
    const url = req.url ?? '';
    const send = (body: string, type = 'text/plain') => {
      res.writeHead(200, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    if (url === '/finlora/data/test/fpb_test.jsonl') return send(FPB);
    if (url === '/finlora/data/test/fiqa_test.jsonl') return send(FIQA);
    if (url === '/finlora/data/train/xbrl_term_train.jsonl') return send(TRAIN);
    if (url === '/finlora/data/train/formula_train.jsonl') return send('version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12345\n');
    if (url === '/finlora/data/test/ner_test.jsonl') return send('<!DOCTYPE html><html>rate limited</html>', 'text/html');
    if (url === '/finlora/data/test/headline_test.jsonl') {
      // announces more than it sends, then drops the connection
      res.writeHead(200, { 'content-length': 100_000 });
      res.write(FIQA);
      setTimeout(() => res.destroy(), 20);
      return;
    }
    res.writeHead(404, 'Not Found');
    res.end('not found');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/finlora/data/`;
});
after(() => {
  server.close();
  fs.rmSync(root, { recursive: true, force: true });
});

function finlora(...args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'data', ...args], { cwd: root, env: { ...process.env, FINLORA_DEBUG: '' }, timeout: 60_000 }, (err, stdout, stderr) => {
      const status = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
      resolve({ status, stdout, stderr });
    });
  });
}

function leftovers(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { recursive: true }).map(String).filter((n) => path.basename(n).startsWith('.'));
}

test('fetch writes the files into DIR/test and DIR/train; a second fetch keeps them', async () => {
  const dir = path.join(root, 'd1');
  const r = await finlora('fetch', '--dir', dir, '--base-url', base, '--only', 'fpb_test,fiqa_test,xbrl_term_train');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(fs.readFileSync(path.join(dir, 'test', 'fpb_test.jsonl'), 'utf8'), FPB);
  assert.equal(fs.readFileSync(path.join(dir, 'test', 'fiqa_test.jsonl'), 'utf8'), FIQA);
  assert.equal(fs.readFileSync(path.join(dir, 'train', 'xbrl_term_train.jsonl'), 'utf8'), TRAIN);
  assert.match(r.stdout, /^downloaded   .*test\/fpb_test\.jsonl \(\d+(\.\d+)? kB\)\n/);
  assert.deepEqual(leftovers(dir), []);
  const again = await finlora('fetch', '--dir', dir, '--base-url', base, '--only', 'fpb_test');
  assert.equal(again.status, 0);
  assert.match(again.stdout, /^already there .*fpb_test\.jsonl/);
});

test('a 404, an LFS pointer, an HTML page or a dropped connection: one line, exit 1, no file', async () => {
  const dir = path.join(root, 'd2');
  const cases: [string, RegExp][] = [
    ['nwgi_test', /nwgi_test\.jsonl: HTTP 404 Not Found/],
    ['formula_train', /formula_train\.jsonl is a Git LFS pointer, not the data/],
    ['ner_test', /ner_test\.jsonl did not return FinLoRA JSONL \(its first line is not a \{"context", "target"\} object: "<!DOCTYPE html>/],
    ['headline_test', /headline_test\.jsonl: the download broke off after \d+ bytes|headline_test\.jsonl: received \d+ bytes, the server announced 100000/],
  ];
  for (const [name, pattern] of cases) {
    const r = await finlora('fetch', '--dir', dir, '--base-url', base, '--only', name);
    assert.equal(r.status, 1, `${name}: ${r.stderr}`);
    assert.match(r.stderr, /^finlora data: /m);
    assert.match(r.stderr, pattern);
    assert.equal(r.stderr.split('\n').filter((l) => l.startsWith('finlora data:')).length, 1, r.stderr);
    const set = name.endsWith('_train') ? 'train' : 'test';
    assert.ok(!fs.existsSync(path.join(dir, set, `${name}.jsonl`)), name);
  }
  assert.deepEqual(leftovers(dir), []);
});

test('bad usage', async () => {
  const u = await finlora('fetch', '--only', 'fpb');
  assert.equal(u.status, 1);
  assert.match(u.stderr, /unknown file fpb\.jsonl; FinLoRA's files: fpb_test, fiqa_test, tfns_test/);
  assert.equal((await finlora('pull')).status, 2);
  assert.equal((await finlora('fetch', '--set', 'dev')).status, 2);
  // a port that was free a moment ago: nothing listens there
  const probe = http.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = (probe.address() as AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const nohost = await finlora('fetch', '--dir', path.join(root, 'd3'), '--base-url', `http://127.0.0.1:${port}/x/`, '--only', 'fpb_test');
  assert.equal(nohost.status, 1);
  assert.match(nohost.stderr, new RegExp(`^finlora data: cannot reach http://127\\.0\\.0\\.1:${port}/x/test/fpb_test\\.jsonl: ECONNREFUSED`));
});
