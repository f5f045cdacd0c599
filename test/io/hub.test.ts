// Hub resolution against a fake Hugging Face hub on 127.0.0.1: a "hub" server that
// answers /{repo}/resolve/{revision}/{file} as huggingface.co does (X-Repo-Commit,
// ETag = git blob sha1 for small files; a 302 to an absolute CDN URL with
// X-Linked-Etag = sha256 and X-Linked-Size for LFS files; X-Error-Code on errors), and
// a "CDN" server on another port that serves LFS bytes with Range support and can
// drop a connection mid-file or send corrupt bytes. Both count what they receive.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { HubError, hubCacheDir, parseHubId, resolveModel } from '../../src/io/hub.js';

interface Seen {
  method: string;
  path: string;
  authorization: string | undefined;
  range: string | undefined;
}

interface Repo {
  commit: string;
  files: Map<string, Buffer>;
  /** When set, the repo is gated: only this bearer token is let in. */
  token?: string;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const gitSha1 = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
const isLfs = (file: string) => file.endsWith('.safetensors');

const repos = new Map<string, Repo>();
const hubSeen: Seen[] = [];
const cdnSeen: Seen[] = [];
/** sha256 → what the CDN does on the next GET of that blob. */
const sabotage = new Map<string, 'drop' | 'corrupt'>();
let hubUrl = '';
let cdnUrl = '';

function record(list: Seen[], req: http.IncomingMessage): void {
  list.push({ method: req.method ?? '', path: req.url ?? '', authorization: req.headers.authorization, range: req.headers.range });
}

const hub = http.createServer((req, res) => {
  record(hubSeen, req);
  const m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(req.url ?? '');
  const repo = m ? repos.get(m[1]!) : undefined;
  const fail = (status: number, code: string) => {
    res.writeHead(status, { 'X-Error-Code': code, 'Content-Type': 'text/plain' });
    res.end(req.method === 'HEAD' ? undefined : code);
  };
  if (!m || !repo) return fail(404, 'RepoNotFound');
  if (repo.token !== undefined && req.headers.authorization !== `Bearer ${repo.token}`) return fail(401, 'GatedRepo');
  const revision = decodeURIComponent(m[2]!);
  if (revision !== 'main' && revision !== repo.commit) return fail(404, 'RevisionNotFound');
  const file = m[3]!.split('/').map(decodeURIComponent).join('/');
  const content = repo.files.get(file);
  if (content === undefined) return fail(404, 'EntryNotFound');
  if (isLfs(file)) {
    res.writeHead(302, {
      Location: `${cdnUrl}/lfs/${sha256(content)}`,
      'X-Repo-Commit': repo.commit,
      'X-Linked-Etag': `"${sha256(content)}"`,
      'X-Linked-Size': String(content.length),
      'Content-Length': '0',
    });
    return res.end();
  }
  res.writeHead(200, { 'X-Repo-Commit': repo.commit, ETag: `"${gitSha1(content)}"`, 'Content-Length': String(content.length) });
  res.end(req.method === 'HEAD' ? undefined : content);
});

const cdn = http.createServer((req, res) => {
  record(cdnSeen, req);
  const sha = /^\/lfs\/([0-9a-f]{64})$/.exec(req.url ?? '')?.[1];
  const content = [...repos.values()].flatMap((r) => [...r.files.values()]).find((b) => sha256(b) === sha);
  if (sha === undefined || content === undefined) {
    res.writeHead(404);
    return res.end();
  }
  const action = sabotage.get(sha);
  sabotage.delete(sha);
  const start = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
  const body = content.subarray(start);
  const headers: http.OutgoingHttpHeaders = { 'Content-Length': String(body.length), 'Accept-Ranges': 'bytes' };
  if (start > 0) headers['Content-Range'] = `bytes ${start}-${content.length - 1}/${content.length}`;
  res.writeHead(start > 0 ? 206 : 200, headers);
  if (action === 'drop') {
    res.write(body.subarray(0, body.length >> 1), () => setTimeout(() => res.socket?.destroy(), 20));
  } else if (action === 'corrupt') {
    const bad = Buffer.from(body);
    bad[bad.length - 1]! ^= 0xff;
    res.end(bad);
  } else {
    res.end(body);
  }
});

async function listen(server: http.Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-hub-'));
let homes = 0;
const freshHome = () => fs.mkdtempSync(path.join(tmpRoot, `home${homes++}-`));

before(async () => {
  hubUrl = await listen(hub);
  cdnUrl = await listen(cdn);
});
after(() => {
  for (const server of [hub, cdn]) {
    server.closeAllConnections();
    server.close();
  }
  fs.rmSync(tmpRoot, { recursive: true, force: true });
});

function makeRepo(id: string, options: { token?: string; withTokenizer?: boolean } = {}): Repo {
  const json = (value: unknown) => Buffer.from(JSON.stringify(value, null, 2));
  const shard1 = randomBytes(96 * 1024);
  const shard2 = randomBytes(80 * 1024);
  const files = new Map<string, Buffer>([
    ['config.json', json({ architectures: ['LlamaForCausalLM'], hidden_size: 16, num_hidden_layers: 2, vocab_size: 32 })],
    ['tokenizer_config.json', json({ bos_token: '<s>', eos_token: '</s>', tokenizer_class: 'LlamaTokenizer' })],
    ['generation_config.json', json({ bos_token_id: 1, eos_token_id: 2 })],
    ['model.safetensors.index.json', json({
      metadata: { total_size: shard1.length + shard2.length },
      weight_map: {
        'model.embed_tokens.weight': 'model-00001-of-00002.safetensors',
        'model.layers.0.self_attn.q_proj.weight': 'model-00001-of-00002.safetensors',
        'model.norm.weight': 'model-00002-of-00002.safetensors',
        'lm_head.weight': 'model-00002-of-00002.safetensors',
      },
    })],
    ['model-00001-of-00002.safetensors', shard1],
    ['model-00002-of-00002.safetensors', shard2],
  ]);
  if (options.withTokenizer !== false) files.set('tokenizer.json', json({ version: '1.0', added_tokens: [], model: { type: 'BPE', vocab: { a: 0 }, merges: [] } }));
  const repo: Repo = { commit: createHash('sha1').update(id).digest('hex'), files, ...(options.token === undefined ? {} : { token: options.token }) };
  repos.set(id, repo);
  return repo;
}

const quiet = { progress: null };
const envFor = (home: string, extra: Record<string, string> = {}) => ({ HF_HOME: home, HF_ENDPOINT: hubUrl, ...extra });
const requestCount = () => hubSeen.length + cdnSeen.length;

function listTree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const entry of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, entry.name);
      if (entry.isDirectory()) walk(p);
      else out.push(path.relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

test('first resolve downloads into the Hugging Face cache layout; the second makes no request', { timeout: 20_000 }, async () => {
  const repo = makeRepo('acme/tiny-llama');
  const home = freshHome();
  const before = requestCount();
  const first = await resolveModel('acme/tiny-llama', { env: envFor(home), ...quiet });
  assert.equal(first.source, 'download');
  assert.equal(first.commit, repo.commit);
  assert.ok(requestCount() > before);

  const repoDir = path.join(home, 'hub', 'models--acme--tiny-llama');
  assert.equal(first.dir, path.join(repoDir, 'snapshots', repo.commit));
  assert.equal(fs.readFileSync(path.join(repoDir, 'refs', 'main'), 'utf8'), repo.commit);
  const blobName = (file: string, b: Buffer) => (isLfs(file) ? sha256(b) : gitSha1(b));
  const expectedBlobs = [...repo.files].map(([file, b]) => `blobs/${blobName(file, b)}`);
  const expectedLinks = [...repo.files.keys()].map((f) => `snapshots/${repo.commit}/${f}`);
  const noExist = ['chat_template.jinja', 'special_tokens_map.json'].map((f) => `.no_exist/${repo.commit}/${f}`);
  assert.deepEqual(listTree(repoDir), [...noExist, ...expectedBlobs, 'refs/main', ...expectedLinks].sort());
  for (const [file, content] of repo.files) {
    const link = path.join(first.dir, file);
    assert.ok(fs.lstatSync(link).isSymbolicLink(), file);
    assert.equal(fs.readlinkSync(link), path.join('..', '..', 'blobs', blobName(file, content)));
    assert.deepEqual(fs.readFileSync(link), content);
  }

  const count = requestCount();
  const second = await resolveModel('acme/tiny-llama', { env: envFor(home), ...quiet });
  assert.equal(requestCount(), count);
  assert.deepEqual(second, { ...first, source: 'cache' });
  // HF_HUB_CACHE names the hub folder itself and wins over HF_HOME.
  const viaCache = await resolveModel('acme/tiny-llama', { env: { HF_HUB_CACHE: path.join(home, 'hub'), HF_HOME: freshHome(), HF_ENDPOINT: hubUrl }, ...quiet });
  assert.equal(viaCache.dir, first.dir);
  assert.equal(requestCount(), count);

  // Offline with the cache filled: no request, same snapshot.
  const offline = await resolveModel('acme/tiny-llama', { env: envFor(home, { HF_HUB_OFFLINE: '1' }), ...quiet });
  assert.equal(offline.dir, first.dir);
  const pinned = await resolveModel(`acme/tiny-llama@${repo.commit}`, { env: envFor(home, { HF_HUB_OFFLINE: '1' }), ...quiet });
  assert.equal(pinned.dir, first.dir);
  assert.equal(requestCount(), count);
});

test('HF_HUB_OFFLINE=1 with an empty cache says the model is not cached and where it looked', async () => {
  makeRepo('acme/offline-model');
  const home = freshHome();
  const count = requestCount();
  await assert.rejects(resolveModel('acme/offline-model', { env: envFor(home, { HF_HUB_OFFLINE: '1' }), ...quiet }), (err: Error) => {
    assert.match(err.message, /acme\/offline-model@main is not in the Hugging Face cache and HF_HUB_OFFLINE is set/);
    assert.ok(err.message.includes(path.join(home, 'hub', 'models--acme--offline-model')), err.message);
    return true;
  });
  assert.equal(requestCount(), count);
});

test('a gated model: 401 without a token names HF_TOKEN; the token goes to the hub as a Bearer header, not to the CDN', { timeout: 20_000 }, async () => {
  makeRepo('meta-llama/Gated-1B', { token: 'hf_secret' });
  const home = freshHome();
  await assert.rejects(resolveModel('meta-llama/Gated-1B', { env: envFor(home), ...quiet }), (err: Error) => {
    assert.ok(err instanceof HubError && err.status === 401);
    assert.match(err.message, /refused \(HTTP 401\).*gated or private.*HF_TOKEN/);
    return true;
  });
  await assert.rejects(resolveModel('meta-llama/Gated-1B', { env: envFor(home, { HF_TOKEN: 'hf_wrong' }), ...quiet }), /token \(HF_TOKEN\) was sent but does not grant access/);

  const hubStart = hubSeen.length;
  const cdnStart = cdnSeen.length;
  const resolved = await resolveModel('meta-llama/Gated-1B', { env: envFor(home, { HF_TOKEN: 'hf_secret' }), ...quiet });
  assert.equal(resolved.source, 'download');
  const hubRequests = hubSeen.slice(hubStart);
  assert.ok(hubRequests.length >= 6);
  for (const r of hubRequests) assert.equal(r.authorization, 'Bearer hf_secret', r.path);
  const cdnRequests = cdnSeen.slice(cdnStart);
  assert.equal(cdnRequests.length, 2);
  for (const r of cdnRequests) assert.equal(r.authorization, undefined, r.path);

  // The token file written by `huggingface-cli login` is used when HF_TOKEN is unset.
  const other = freshHome();
  fs.writeFileSync(path.join(other, 'token'), 'hf_secret\n');
  assert.equal((await resolveModel('meta-llama/Gated-1B', { env: envFor(other), ...quiet })).source, 'download');
});

test('a connection dropped mid-file leaves no blob or snapshot file behind; a rerun resumes with a Range request', { timeout: 20_000 }, async () => {
  const repo = makeRepo('acme/flaky');
  const shard = repo.files.get('model-00002-of-00002.safetensors')!;
  const sha = sha256(shard);
  sabotage.set(sha, 'drop');
  const home = freshHome();
  const repoDir = path.join(home, 'hub', 'models--acme--flaky');
  await assert.rejects(resolveModel('acme/flaky', { env: envFor(home), ...quiet }), (err: Error) => {
    assert.match(err.message, /download of model-00002-of-00002\.safetensors from http:\/\/127\.0\.0\.1:\d+\/lfs\/[0-9a-f]{64} was interrupted/);
    assert.match(err.message, /run again to resume/);
    return true;
  });
  assert.equal(fs.existsSync(path.join(repoDir, 'blobs', sha)), false);
  assert.equal(fs.existsSync(path.join(repoDir, 'snapshots', repo.commit, 'model-00002-of-00002.safetensors')), false);
  const partial = path.join(repoDir, 'blobs', `${sha}.incomplete`);
  const kept = fs.statSync(partial).size;
  assert.ok(kept > 0 && kept < shard.length);
  // Offline, the half-downloaded snapshot is not mistaken for a model.
  await assert.rejects(resolveModel('acme/flaky', { env: envFor(home, { HF_HUB_OFFLINE: 'true' }), ...quiet }), /missing: model-00002-of-00002\.safetensors/);

  const cdnStart = cdnSeen.length;
  const resolved = await resolveModel('acme/flaky', { env: envFor(home), ...quiet });
  assert.deepEqual(cdnSeen.slice(cdnStart).map((r) => r.range), [`bytes=${kept}-`]);
  assert.deepEqual(fs.readFileSync(path.join(resolved.dir, 'model-00002-of-00002.safetensors')), shard);
  assert.equal(fs.existsSync(partial), false);
});

test('bytes that do not match the LFS sha256 are discarded, not kept under the blob name', { timeout: 20_000 }, async () => {
  const repo = makeRepo('acme/corrupt');
  const sha = sha256(repo.files.get('model-00001-of-00002.safetensors')!);
  sabotage.set(sha, 'corrupt');
  const home = freshHome();
  await assert.rejects(resolveModel('acme/corrupt', { env: envFor(home), ...quiet }), /model-00001-of-00002\.safetensors .* is corrupt: sha256 [0-9a-f]{64}, expected/);
  const blobs = fs.readdirSync(path.join(home, 'hub', 'models--acme--corrupt', 'blobs'));
  assert.ok(!blobs.includes(sha) && !blobs.includes(`${sha}.incomplete`), blobs.join());
  assert.equal((await resolveModel('acme/corrupt', { env: envFor(home), ...quiet })).source, 'download');
});

test('missing repositories, revisions and files, and unreachable endpoints give errors that name them', async () => {
  const home = freshHome();
  await assert.rejects(resolveModel('acme/does-not-exist', { env: envFor(home), ...quiet }), /repository acme\/does-not-exist not found at http:\/\/127\.0\.0\.1:\d+ \(HTTP 404\)/);
  makeRepo('acme/revisions');
  await assert.rejects(resolveModel('acme/revisions@v9', { env: envFor(home), ...quiet }), /revision v9 not found in acme\/revisions/);
  makeRepo('acme/no-tokenizer', { withTokenizer: false });
  await assert.rejects(resolveModel('acme/no-tokenizer', { env: envFor(home), ...quiet }), /tokenizer\.json not found in acme\/no-tokenizer@main \(HTTP 404/);

  const closed = http.createServer();
  const closedUrl = await listen(closed);
  await new Promise<void>((resolve) => closed.close(() => resolve()));
  await assert.rejects(resolveModel('acme/revisions', { env: { HF_HOME: home, HF_ENDPOINT: closedUrl }, ...quiet }), (err: Error) => {
    assert.ok(err.message.startsWith(`cannot reach ${closedUrl}/acme/revisions/resolve/main/config.json: ECONNREFUSED`), err.message);
    return true;
  });
});

test('local directories resolve to themselves and must hold config.json', async () => {
  const dir = fs.mkdtempSync(path.join(tmpRoot, 'local-'));
  await assert.rejects(resolveModel(dir, quiet), new RegExp(`${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} has no config.json`));
  fs.writeFileSync(path.join(dir, 'config.json'), '{}');
  assert.deepEqual(await resolveModel(dir, quiet), { dir, source: 'local', repoId: null, revision: null, commit: null });
  await assert.rejects(resolveModel(path.join(dir, 'nope'), quiet), /model directory .*nope does not exist/);
  await assert.rejects(resolveModel('not a model id', quiet), /neither an existing directory nor a Hugging Face model id/);
});

test('hub ids and cache locations follow huggingface_hub', () => {
  assert.deepEqual(parseHubId('meta-llama/Llama-3.1-8B-Instruct'), { repoId: 'meta-llama/Llama-3.1-8B-Instruct', org: 'meta-llama', name: 'Llama-3.1-8B-Instruct', revision: 'main' });
  assert.equal(parseHubId('Qwen/Qwen2.5-0.5B@refs/pr/1')?.revision, 'refs/pr/1');
  assert.equal(parseHubId('a--b/c'), null);
  assert.equal(parseHubId('a/../b'), null);
  assert.equal(parseHubId('a/b@../../etc'), null);
  assert.equal(parseHubId('just-a-name'), null);
  assert.equal(hubCacheDir({ HF_HOME: '/x/hf' }), '/x/hf/hub');
  assert.equal(hubCacheDir({ HF_HOME: '/x/hf', HF_HUB_CACHE: '/y/cache' }), '/y/cache');
  assert.equal(hubCacheDir({ XDG_CACHE_HOME: '/z' }), '/z/huggingface/hub');
  assert.equal(hubCacheDir({}), path.join(os.homedir(), '.cache', 'huggingface', 'hub'));
});
