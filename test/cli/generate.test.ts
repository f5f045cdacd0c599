// `finlora generate` run as a user runs it (the built CLI in a child process) on the
// llama3_gqa transformers fixture, given a byte-fallback tokenizer that covers its 256
// ids (byte_tokenizer.ts): stdout is exactly the text that the library's generate()
// decodes for the same settings (greedy, sampled with a seed, a batch with stop strings,
// --chat, --adapter with a PEFT fixture), streamed in pieces; bad input gives one line on stderr, the right exit code
// and nothing on stdout. Then hub ids: a 127.0.0.1 server serves the model as a hub
// repository, `--model org/tiny` downloads it into HF_HOME and generates the same text
// as the local directory, and works with HF_HUB_OFFLINE=1 afterwards, as does
// `finlora forward --model org/tiny`.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { loadPeftAdapter } from '../../src/adapters/peft.js';
import { defaultBackend, getBackend } from '../../src/backend/registry.js';
import { command } from '../../src/cli/commands/generate.js';
import { Tokenizer } from '../../src/io/tokenizer.js';
import { generate, leftPad, type SamplingOptions } from '../../src/models/generate.js';
import { LlamaForCausalLM } from '../../src/models/llama/model.js';
import { computesBf16 } from '../../src/ops/util.js';
import { writeByteTokenizer } from './byte_tokenizer.js';

const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const FIXTURE = fileURLToPath(new URL('../../../test/fixtures/models/llama3_gqa', import.meta.url));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-generate-'));

/** A model directory: the fixture's config and weights with a tokenizer. */
function modelDir(name: string, tokenizer: 'bytes' | 'bytes-no-chat' | 'none' = 'bytes'): string {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir);
  for (const f of ['config.json', 'model.safetensors']) fs.copyFileSync(path.join(FIXTURE, f), path.join(dir, f));
  if (tokenizer !== 'none') writeByteTokenizer(dir, { chatTemplate: tokenizer === 'bytes' });
  return dir;
}
const MODEL = modelDir('tiny');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

// Asynchronous, so that a server in this process can answer the child.
function finlora(args: readonly string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, FINLORA_DEBUG: '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const timer = setTimeout(() => child.kill(), 60_000);
    child.on('error', reject);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

const tokenizer = await Tokenizer.fromDir(MODEL, { warn: () => {} });
// The expected text comes from the default device (FINLORA_DEVICE), which the command uses as well,
// with the weights as the command holds them there: bf16 on a device that computes in bf16 (cuda).
const DTYPE = computesBf16(defaultBackend()) ? 'bf16' : 'f32';
const model = LlamaForCausalLM.fromPretrained(MODEL, { device: defaultBackend(), dtype: DTYPE });
after(() => {
  model.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

interface Settings {
  maxNewTokens: number;
  sampling?: SamplingOptions;
  stops?: string[];
  chat?: { system?: string };
}

/** What the library generates for these prompts: the texts, and stdout as the CLI should print it. */
function expected(prompts: string[], s: Settings, lm: LlamaForCausalLM = model): { texts: string[]; stdout: string; tokens: number[][] } {
  const ids = prompts.map((p) => {
    if (s.chat === undefined) return tokenizer.encode(p);
    const system = s.chat.system === undefined ? [] : [{ role: 'system', content: s.chat.system }];
    return tokenizer.encode(tokenizer.applyChatTemplate([...system, { role: 'user', content: p }], { addGenerationPrompt: true }), { addSpecialTokens: false });
  });
  const batch = leftPad(ids, tokenizer.padId!);
  const r = generate(lm, batch.ids, {
    maxNewTokens: s.maxNewTokens,
    attentionMask: batch.attentionMask,
    eosTokenIds: tokenizer.eosIds,
    padTokenId: tokenizer.padId!,
    ...(s.sampling === undefined ? {} : { sampling: s.sampling }),
    stopStrings: s.stops ?? [],
    decode: (t) => tokenizer.decode(t, { skipSpecialTokens: true }),
  });
  return { texts: r.texts!, stdout: r.texts!.map((t) => `${t}\n`).join(''), tokens: r.tokens };
}

const STATS = /^finlora generate: loaded in \d+\.\d\d s; prompt .* tokens in \d+\.\d\d s; \d+ new tokens in \d+\.\d\d s/;

test('greedy: stdout is exactly the decoded continuation; timings go to stderr', async () => {
  const want = expected(['Revenue rose'], { maxNewTokens: 12 });
  assert.ok(want.texts[0].length > 0, 'the fixture continues this prompt with no text: pick another');
  const r = await finlora(['generate', '--model', MODEL, '--prompt', 'Revenue rose', '--max-new-tokens', '12']);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, want.stdout);
  assert.match(r.stderr, STATS);
  assert.match(r.stderr, /; greedy\n$/);
  assert.equal(r.stderr.split('\n').length, 2, r.stderr);
  // --temperature 0 is greedy too.
  assert.equal((await finlora(['generate', '--model', MODEL, '--prompt', 'Revenue rose', '--max-new-tokens', '12', '--temperature', '0'])).stdout, want.stdout);
});

test('sampling: a batch is printed row by row; the seed reproduces it, another seed changes it; --stop cuts a row', async () => {
  const prompts = ['Revenue rose', 'Net loss widened to'];
  const sampling = { temperature: 0.9, topP: 0.95, seed: 42 };
  const args = ['generate', '--model', MODEL, '--prompt', prompts[0], '--prompt', prompts[1], '--max-new-tokens', '16', '--temperature', '0.9', '--top-p', '0.95'];
  const want = expected(prompts, { maxNewTokens: 16, sampling });
  const r = await finlora([...args, '--seed', '42']);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, want.stdout);
  assert.match(r.stderr, /; seed 42\n$/);
  assert.equal((await finlora([...args, '--seed', '42'])).stdout, r.stdout);
  const other = await finlora([...args, '--seed', '43']);
  assert.equal(other.status, 0, other.stderr);
  assert.notEqual(other.stdout, r.stdout);
  assert.equal(other.stdout, expected(prompts, { maxNewTokens: 16, sampling: { ...sampling, seed: 43 } }).stdout);

  // A stop string from the middle of row 1's text: row 1 ends before it, row 0 is unchanged.
  // It must be complete before the row's last token, or stopping there would not shorten the row.
  const text = tokenizer.decode(want.tokens[1].slice(0, -1), { skipSpecialTokens: true });
  // Two characters where the text has them, else one (a random model's bf16 text can be mostly
  // replacement characters and spaces).
  const usable = (s: string) => /^[^\uFFFD\s]+$/u.test(s) && want.texts[1].indexOf(s) === want.texts[1].lastIndexOf(s) && !want.texts[0].includes(s);
  const candidates = [2, 1].flatMap((n) => Array.from({ length: Math.max(0, text.length - n - 1) }, (_, i) => text.slice(i + 2, i + 2 + n)));
  const stop = candidates.find(usable);
  assert.ok(stop !== undefined, `no usable stop string in ${JSON.stringify(text)}`);
  const cut = await finlora([...args, '--seed', '42', '--stop', stop, '--stop', 'never there']);
  assert.equal(cut.status, 0, cut.stderr);
  const wantCut = expected(prompts, { maxNewTokens: 16, sampling, stops: [stop, 'never there'] });
  assert.equal(cut.stdout, wantCut.stdout);
  assert.equal(wantCut.texts[0], want.texts[0]);
  assert.ok(wantCut.tokens[1].length < want.tokens[1].length && !wantCut.texts[1].includes(stop), JSON.stringify(wantCut.texts[1]));
});

test('--chat renders the chat template (with --system) and opens the assistant turn', async () => {
  const want = expected(['What is EBITDA?'], { maxNewTokens: 10, chat: { system: 'Be brief.' } });
  const r = await finlora(['generate', '--model', MODEL, '--chat', '--system', 'Be brief.', '--prompt', 'What is EBITDA?', '--max-new-tokens', '10']);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, want.stdout);
  assert.notEqual(r.stdout, expected(['What is EBITDA?'], { maxNewTokens: 10 }).stdout);
  // The prompt the model saw: BOS is not added twice, the template's tokens are there.
  const prompt = tokenizer.applyChatTemplate([{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'What is EBITDA?' }], { addGenerationPrompt: true });
  assert.equal(prompt, '<|system|>Be brief.\n<|user|>What is EBITDA?\n<|assistant|>');
  assert.match(r.stderr, new RegExp(`prompt ${tokenizer.encode(prompt, { addSpecialTokens: false }).length} tokens`));
});

test('--adapter applies a PEFT adapter: the text of the adapted model', async () => {
  const adapter = fileURLToPath(new URL('../../../test/fixtures/adapters/dora_qkv/adapter', import.meta.url));
  const args = ['generate', '--model', MODEL, '--prompt', 'Revenue rose', '--max-new-tokens', '12'];
  const adapted = LlamaForCausalLM.fromPretrained(MODEL, { device: defaultBackend(), dtype: DTYPE });
  loadPeftAdapter(adapter, adapted);
  const want = expected(['Revenue rose'], { maxNewTokens: 12 }, adapted);
  adapted.dispose();
  const r = await finlora([...args, '--adapter', adapter]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, want.stdout);
  assert.notEqual(r.stdout, expected(['Revenue rose'], { maxNewTokens: 12 }).stdout);
});

test('the text streams in pieces as it is decoded, rows in order', async () => {
  const pieces: string[] = [];
  const args = ['--model', MODEL, '--prompt', 'Revenue rose', '--prompt', 'Net', '--max-new-tokens', '16', '--seed', '9'];
  const status = await command.run(args, (t) => pieces.push(t));
  assert.equal(status, 0);
  const want = expected(['Revenue rose', 'Net'], { maxNewTokens: 16, sampling: { seed: 9 } });
  assert.equal(pieces.join(''), want.stdout);
  assert.ok(pieces.length >= 6, `${pieces.length} pieces: ${JSON.stringify(pieces)}`);
});

test('bad input: one line naming the problem, the right exit code, nothing on stdout', async () => {
  const noTokenizer = modelDir('no-tokenizer', 'none');
  const noChat = modelDir('no-chat', 'bytes-no-chat');
  const brokenTokenizer = modelDir('broken-tokenizer');
  fs.writeFileSync(path.join(brokenTokenizer, 'tokenizer.json'), '{"version": "1.0", "model": ');
  const p = ['--prompt', 'hello'];
  const cases: [string[], number, RegExp][] = [
    [['--model', path.join(tmp, 'nope'), ...p], 1, /nope: no such directory$/],
    [['--model', 'not a model', ...p], 1, /not a model: no such directory, and not a hub id/],
    [p, 2, /--model .* is required/],
    [['--model', MODEL], 2, /--prompt TEXT is required/],
    [['--model', MODEL, ...p, '--top-p', '0'], 2, /--top-p must be a number in \(0, 1\], not '0'/],
    [['--model', MODEL, ...p, '--top-p', '1.5'], 2, /--top-p must be a number in \(0, 1\], not '1.5'/],
    [['--model', MODEL, ...p, '--top-p', 'high'], 2, /--top-p must be a number in \(0, 1\], not 'high'/],
    [['--model', MODEL, ...p, '--temperature=-0.5'], 2, /--temperature must be a number >= 0, not '-0.5'/],
    [['--model', MODEL, ...p, '--top-k', '2.5'], 2, /--top-k must be a non-negative integer/],
    [['--model', MODEL, ...p, '--seed', '4294967296'], 2, /--seed must be an integer in \[0, 2\^32\)/],
    [['--model', MODEL, ...p, '--max-new-tokens', '0'], 2, /--max-new-tokens must be a positive integer, not '0'/],
    [['--model', MODEL, ...p, '--dtype', 'f16'], 2, /--dtype must be f32 or bf16/],
    [['--model', MODEL, ...p, '--stop', ''], 2, /--stop needs a non-empty string/],
    [['--model', MODEL, ...p, '--system', 'x'], 2, /--system needs --chat/],
    [['--model', MODEL, ...p, '--bogus'], 2, /Unknown option '--bogus'.*see finlora generate --help/],
    [['--model', MODEL, ...p, 'stray'], 2, /Unexpected argument 'stray'/],
    [['--model', MODEL, ...p, '--adapter', path.join(tmp, 'adapter')], 1, /adapter\/adapter_config\.json: missing/],
    [['--model', noTokenizer, ...p], 1, /no tokenizer\.json in .*no-tokenizer/],
    [['--model', brokenTokenizer, ...p], 1, /broken-tokenizer\/tokenizer\.json is not valid JSON/],
    [['--model', noChat, ...p, '--chat'], 1, /no-chat has no chat template/],
    [['--model', MODEL, ...p, '--device', 'tpu'], 1, /device 'tpu' \(--device\) is not available: unknown device 'tpu'/],
  ];
  for (const [args, status, pattern] of cases) {
    const r = await finlora(['generate', ...args]);
    assert.equal(r.status, status, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /^finlora generate: /);
    assert.match(r.stderr.trimEnd(), pattern);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.equal(r.stdout, '', args.join(' '));
  }
});

test('--device cpu --dtype f32: the text of the f32 model on the cpu, whatever the default device', async () => {
  const cpuModel = LlamaForCausalLM.fromPretrained(MODEL, { device: 'cpu', dtype: 'f32' });
  const want = expected(['Revenue rose'], { maxNewTokens: 12 }, cpuModel);
  cpuModel.dispose();
  const r = await finlora(['generate', '--model', MODEL, '--prompt', 'Revenue rose', '--max-new-tokens', '12', '--device', 'cpu', '--dtype', 'f32']);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, want.stdout);
});

test('--device cuda where cuda is not available: one line naming the device, exit 1', { skip: cudaAvailable() ? 'cuda is available here' : false }, async () => {
  const r = await finlora(['generate', '--model', MODEL, '--prompt', 'hello', '--device', 'cuda']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^finlora generate: device 'cuda' \(--device\) is not available: .+\n$/);
  assert.equal(r.stdout, '');
});

function cudaAvailable(): boolean {
  try {
    getBackend('cuda');
    return true;
  } catch {
    return false;
  }
}

describe('hub ids', () => {
  // One repository, org/tiny, served as huggingface.co serves one: small files with
  // X-Repo-Commit and a git-sha1 ETag, the safetensors file as an LFS redirect.
  const commit = createHash('sha1').update('org/tiny').digest('hex');
  const files = new Map(['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'].map((f) => [f, fs.readFileSync(path.join(MODEL, f))]));
  const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  const requests: string[] = [];
  let url = '';
  const server = http.createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const lfs = /^\/lfs\/([0-9a-f]{64})$/.exec(req.url ?? '');
    if (lfs !== null) {
      const body = [...files.values()].find((b) => sha256(b) === lfs[1]);
      res.writeHead(body === undefined ? 404 : 200, { 'Content-Length': String(body?.length ?? 0) });
      return res.end(body);
    }
    const m = /^\/org\/tiny\/resolve\/([^/]+)\/(.+)$/.exec(req.url ?? '');
    if (m === null) {
      res.writeHead(404, { 'X-Error-Code': 'RepoNotFound' });
      return res.end();
    }
    const body = files.get(decodeURIComponent(m[2]!));
    if (body === undefined) {
      res.writeHead(404, { 'X-Error-Code': 'EntryNotFound', 'X-Repo-Commit': commit });
      return res.end();
    }
    if (m[2]!.endsWith('.safetensors')) {
      res.writeHead(302, { Location: `${url}/lfs/${sha256(body)}`, 'X-Repo-Commit': commit, 'X-Linked-Etag': `"${sha256(body)}"`, 'X-Linked-Size': String(body.length), 'Content-Length': '0' });
      return res.end();
    }
    const etag = createHash('sha1').update(`blob ${body.length}\0`).update(body).digest('hex');
    res.writeHead(200, { 'X-Repo-Commit': commit, ETag: `"${etag}"`, 'Content-Length': String(body.length) });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  before(async () => {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => {
    server.closeAllConnections();
    server.close();
  });

  test('generate --model org/tiny downloads into HF_HOME, generates what the local directory does, then works offline', async () => {
    const home = fs.mkdtempSync(path.join(tmp, 'hf-'));
    const args = ['--prompt', 'Revenue rose', '--max-new-tokens', '12', '--seed', '5'];
    const local = await finlora(['generate', '--model', MODEL, ...args]);
    assert.equal(local.status, 0, local.stderr);

    const online = await finlora(['generate', '--model', 'org/tiny', ...args], { HF_HOME: home, HF_ENDPOINT: url });
    assert.equal(online.status, 0, online.stderr);
    assert.equal(online.stdout, local.stdout);
    assert.ok(requests.some((r) => r.startsWith('GET /lfs/')), 'the weights were not downloaded');
    const snapshot = path.join(home, 'hub', 'models--org--tiny', 'snapshots', commit);
    for (const f of files.keys()) assert.ok(fs.lstatSync(path.join(snapshot, f)).isSymbolicLink(), f);
    assert.deepEqual(fs.readFileSync(path.join(snapshot, 'model.safetensors')), files.get('model.safetensors'));

    requests.length = 0;
    const offline = await finlora(['generate', '--model', 'org/tiny', ...args], { HF_HOME: home, HF_ENDPOINT: url, HF_HUB_OFFLINE: '1' });
    assert.equal(offline.status, 0, offline.stderr);
    assert.equal(offline.stdout, local.stdout);
    // HF_HUB_CACHE names the hub folder itself; a revision pinned by commit.
    const pinned = await finlora(['generate', '--model', `org/tiny@${commit}`, ...args], { HF_HUB_CACHE: path.join(home, 'hub'), HF_ENDPOINT: url });
    assert.equal(pinned.stdout, local.stdout, pinned.stderr);
    assert.deepEqual(requests, []);

    // forward takes the hub id too.
    const ids = JSON.stringify([[1, 75, 108, 35, 198]]);
    const outLocal = path.join(tmp, 'local.safetensors');
    const outHub = path.join(tmp, 'hub.safetensors');
    assert.equal((await finlora(['forward', '--model', MODEL, '--input-ids', ids, '--out', outLocal])).status, 0);
    const fwd = await finlora(['forward', '--model', 'org/tiny', '--input-ids', ids, '--out', outHub], { HF_HOME: home, HF_HUB_OFFLINE: '1' });
    assert.equal(fwd.status, 0, fwd.stderr);
    assert.deepEqual(fs.readFileSync(outHub), fs.readFileSync(outLocal));
  });

  test('offline with an empty cache, or a repository that does not exist: one line, exit 1', async () => {
    const home = fs.mkdtempSync(path.join(tmp, 'hf-'));
    const offline = await finlora(['generate', '--model', 'org/tiny', '--prompt', 'x'], { HF_HOME: home, HF_ENDPOINT: url, HF_HUB_OFFLINE: '1' });
    assert.equal(offline.status, 1);
    assert.match(offline.stderr, /^finlora generate: org\/tiny@main is not in the Hugging Face cache and HF_HUB_OFFLINE is set.*\n$/);
    const missing = await finlora(['forward', '--model', 'org/other', '--input-ids', '[[1, 2]]', '--out', path.join(tmp, 'never.safetensors')], { HF_HOME: home, HF_ENDPOINT: url });
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /^finlora forward: repository org\/other not found at http:\/\/127\.0\.0\.1:\d+ .*no local directory org\/other either\)\n$/);
    assert.ok(!fs.existsSync(path.join(tmp, 'never.safetensors')));
  });
});
