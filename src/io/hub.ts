// Resolves a run's base_model to a model directory: a local Hugging Face model
// directory as it is, or a hub id ("org/name" or "org/name@revision") through the
// Hugging Face cache, downloading what is missing into it.
//
// The cache layout and protocol follow huggingface_hub, so Python and finlora share
// one cache:
//   $HF_HUB_CACHE (else $HF_HOME/hub, else ~/.cache/huggingface/hub)/models--{org}--{name}/
//     refs/{revision}              the commit hash that revision pointed to
//     blobs/{etag}                 file contents, named by etag (sha256 for LFS files)
//     snapshots/{commit}/{file}    relative symlinks into blobs/
//     .no_exist/{commit}/{file}    markers for optional files the repo does not have
// A file's metadata comes from a HEAD of {endpoint}/{repo}/resolve/{revision}/{file}
// following only relative redirects: X-Repo-Commit, X-Linked-Etag (else ETag),
// X-Linked-Size (else Content-Length), and for large files an absolute Location. Only that commit is
// downloaded after the first file, so a branch that moves mid-download cannot mix
// two snapshots. Bytes go to blobs/{etag}.incomplete, resumed with a Range request on
// a rerun, checked against the size (and the sha256 that an LFS etag is), then renamed.
//
// Environment: HF_HUB_CACHE, HF_HOME, HF_ENDPOINT, HF_HUB_OFFLINE, HF_TOKEN (else the
// token file that `huggingface-cli login` writes, $HF_TOKEN_PATH or $HF_HOME/token).
import { createHash, type Hash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ByteProgress, type ProgressStream } from './progress.js';

export interface ResolveOptions {
  /** Default process.env. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Where download progress goes; default process.stderr; null for none. */
  progress?: ProgressStream | null;
  /** A download that receives no bytes for this long is abandoned (resumable). Default 60 s. */
  idleTimeoutMs?: number;
}

export interface ResolvedModel {
  /** A directory holding config.json, the tokenizer files and the weights. */
  dir: string;
  source: 'local' | 'cache' | 'download';
  repoId: string | null;
  revision: string | null;
  commit: string | null;
}

export class HubError extends Error {
  constructor(
    message: string,
    readonly status: number | null = null,
    readonly url: string | null = null,
  ) {
    super(message);
    this.name = 'HubError';
  }
}

const REQUIRED_FILES = ['config.json', 'tokenizer.json', 'tokenizer_config.json'];
const OPTIONAL_FILES = ['generation_config.json', 'special_tokens_map.json', 'chat_template.jinja'];
const INDEX_FILE = 'model.safetensors.index.json';
const SINGLE_WEIGHTS = 'model.safetensors';
const COMMIT_RE = /^[0-9a-f]{40}$/;
const SHA256_RE = /^[0-9a-f]{64}$/;
// huggingface_hub's rule for repo names, less the length limit.
const ID_RE = /^([A-Za-z0-9][A-Za-z0-9_.-]*)\/([A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(.+))?$/;

function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') ? path.join(os.homedir(), p.slice(1)) : p;
}

function truthy(value: string | undefined): boolean {
  return value !== undefined && ['1', 'on', 'yes', 'true'].includes(value.trim().toLowerCase());
}

type Env = Readonly<Record<string, string | undefined>>;

function hfHome(env: Env): string {
  if (env.HF_HOME) return expandHome(env.HF_HOME);
  const xdg = env.XDG_CACHE_HOME ? expandHome(env.XDG_CACHE_HOME) : path.join(os.homedir(), '.cache');
  return path.join(xdg, 'huggingface');
}

/** The hub cache directory huggingface_hub would use with this environment. */
export function hubCacheDir(env: Env = process.env): string {
  const explicit = env.HF_HUB_CACHE ?? env.HUGGINGFACE_HUB_CACHE;
  return explicit ? expandHome(explicit) : path.join(hfHome(env), 'hub');
}

function hubToken(env: Env): string | null {
  const fromEnv = (env.HF_TOKEN ?? env.HUGGING_FACE_HUB_TOKEN)?.trim();
  if (fromEnv) return fromEnv;
  const file = env.HF_TOKEN_PATH ? expandHome(env.HF_TOKEN_PATH) : path.join(hfHome(env), 'token');
  try {
    return fs.readFileSync(file, 'utf8').trim() || null;
  } catch {
    return null;
  }
}

export interface HubId {
  repoId: string;
  org: string;
  name: string;
  revision: string;
}

/** "org/name" or "org/name@revision"; null when `value` is not shaped like a hub id. */
export function parseHubId(value: string): HubId | null {
  const m = ID_RE.exec(value);
  if (m === null) return null;
  const org = m[1]!;
  const name = m[2]!;
  const revision = m[3];
  if (org.includes('--') || name.includes('--') || org.includes('..') || name.includes('..')) return null;
  // The revision names a file under refs/: it must stay there.
  if (revision !== undefined && !safeRelative(revision)) return null;
  return { repoId: `${org}/${name}`, org, name, revision: revision ?? 'main' };
}

/** Files missing from a snapshot directory for it to be a loadable model. */
export function missingModelFiles(dir: string): string[] {
  const missing = REQUIRED_FILES.filter((f) => !fs.existsSync(path.join(dir, f)));
  const index = path.join(dir, INDEX_FILE);
  if (fs.existsSync(index)) {
    let shards: string[];
    try {
      shards = shardNames(fs.readFileSync(index, 'utf8'), index);
    } catch {
      return [...missing, INDEX_FILE];
    }
    missing.push(...shards.filter((f) => !fs.existsSync(path.join(dir, f))));
  } else if (!fs.existsSync(path.join(dir, SINGLE_WEIGHTS))) {
    missing.push(`${SINGLE_WEIGHTS} (or ${INDEX_FILE})`);
  }
  return missing;
}

function shardNames(indexText: string, where: string): string[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(indexText);
  } catch (err) {
    throw new HubError(`${where} is not valid JSON: ${(err as Error).message}`);
  }
  const weightMap = typeof parsed === 'object' && parsed !== null ? (parsed as { weight_map?: unknown }).weight_map : undefined;
  if (typeof weightMap !== 'object' || weightMap === null) throw new HubError(`${where} has no weight_map`);
  const names = new Set<string>();
  for (const value of Object.values(weightMap)) {
    if (typeof value !== 'string' || !safeRelative(value)) throw new HubError(`${where} lists an invalid shard name ${JSON.stringify(value)}`);
    names.add(value);
  }
  return [...names].sort();
}

// A shard name from a downloaded index becomes a path in the cache: refuse any that
// could leave the snapshot directory.
function safeRelative(name: string): boolean {
  return name.length > 0 && !path.isAbsolute(name) && !name.includes('\\') && name.split('/').every((s) => s !== '' && s !== '.' && s !== '..');
}

/**
 * Resolves `baseModel` (a local directory or a hub id) to a model directory, from the
 * cache when it holds a complete snapshot, else by downloading (unless HF_HUB_OFFLINE).
 */
export async function resolveModel(baseModel: string, options: ResolveOptions = {}): Promise<ResolvedModel> {
  const env = options.env ?? process.env;
  const local = path.resolve(expandHome(baseModel));
  if (fs.existsSync(local)) {
    if (!fs.statSync(local).isDirectory()) throw new HubError(`base_model ${baseModel} is a file; expected a model directory or a hub id`);
    if (!fs.existsSync(path.join(local, 'config.json'))) {
      throw new HubError(`${local} has no config.json: not a Hugging Face model directory`);
    }
    return { dir: local, source: 'local', repoId: null, revision: null, commit: null };
  }
  const looksLikePath = /^(\/|\.{1,2}\/|~)/.test(baseModel) || baseModel.includes('\\');
  const id = looksLikePath ? null : parseHubId(baseModel);
  if (id === null) {
    throw new HubError(
      looksLikePath
        ? `model directory ${local} does not exist`
        : `base_model ${JSON.stringify(baseModel)} is neither an existing directory nor a Hugging Face model id (org/name or org/name@revision)`,
    );
  }

  const repoDir = path.join(hubCacheDir(env), `models--${id.org}--${id.name}`);
  const commit = COMMIT_RE.test(id.revision) ? id.revision : readRef(repoDir, id.revision);
  let missing: string[] = [`refs/${id.revision}`];
  if (commit !== null) {
    const dir = path.join(repoDir, 'snapshots', commit);
    missing = missingModelFiles(dir);
    if (missing.length === 0) return { dir, source: 'cache', repoId: id.repoId, revision: id.revision, commit };
  }
  if (truthy(env.HF_HUB_OFFLINE)) {
    throw new HubError(
      `${id.repoId}@${id.revision} is not in the Hugging Face cache and HF_HUB_OFFLINE is set, so it cannot be downloaded. ` +
        `Looked in ${repoDir} (missing: ${missing.join(', ')}). Download it once online, or point HF_HUB_CACHE / HF_HOME at a cache that has it.`,
    );
  }
  const downloader = new Downloader(id, repoDir, env, options);
  const downloaded = await downloader.run();
  return { dir: path.join(repoDir, 'snapshots', downloaded), source: 'download', repoId: id.repoId, revision: id.revision, commit: downloaded };
}

function readRef(repoDir: string, revision: string): string | null {
  try {
    const commit = fs.readFileSync(path.join(repoDir, 'refs', revision), 'utf8').trim();
    return COMMIT_RE.test(commit) ? commit : null;
  } catch {
    return null;
  }
}

function writeAtomic(file: string, text: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
}

// huggingface_hub strips the weak-validator prefix and the quotes.
function normalizeEtag(value: string | null): string | null {
  if (value === null) return null;
  const etag = value.replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
  return etag === '' ? null : etag;
}

interface FileMeta {
  commit: string;
  etag: string;
  size: number | null;
  downloadUrl: string;
}

function describeCause(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = (err as Error & { cause?: unknown }).cause;
  if (cause instanceof Error) {
    const code = (cause as NodeJS.ErrnoException).code;
    return code ? `${code} (${cause.message})` : cause.message;
  }
  return err.message;
}

class Downloader {
  private readonly endpoint: string;
  private readonly token: string | null;
  private readonly progress: ProgressStream | null;
  private readonly idleTimeoutMs: number;

  constructor(
    private readonly id: HubId,
    private readonly repoDir: string,
    env: Env,
    options: ResolveOptions,
  ) {
    this.endpoint = (env.HF_ENDPOINT || 'https://huggingface.co').replace(/\/+$/, '');
    this.token = hubToken(env);
    this.progress = options.progress === undefined ? process.stderr : options.progress;
    this.idleTimeoutMs = options.idleTimeoutMs ?? 60_000;
  }

  /** Downloads what the snapshot lacks; returns the commit. */
  async run(): Promise<string> {
    const first = await this.metadata(this.id.revision, 'config.json', true);
    const commit = first.commit;
    if (commit !== this.id.revision) writeAtomic(path.join(this.repoDir, 'refs', this.id.revision), commit);
    const snapshot = path.join(this.repoDir, 'snapshots', commit);
    await this.fetchFile(snapshot, 'config.json', first);
    for (const file of REQUIRED_FILES.slice(1)) {
      if (!fs.existsSync(path.join(snapshot, file))) await this.fetchFile(snapshot, file, await this.metadata(commit, file, true));
    }
    for (const file of OPTIONAL_FILES) {
      if (fs.existsSync(path.join(snapshot, file))) continue;
      const meta = await this.metadata(commit, file, false);
      if (meta === null) this.markMissing(commit, file);
      else await this.fetchFile(snapshot, file, meta);
    }
    const index = fs.existsSync(path.join(snapshot, INDEX_FILE)) ? null : await this.metadata(commit, INDEX_FILE, false);
    if (index !== null) await this.fetchFile(snapshot, INDEX_FILE, index);
    if (fs.existsSync(path.join(snapshot, INDEX_FILE))) {
      const indexPath = path.join(snapshot, INDEX_FILE);
      for (const shard of shardNames(fs.readFileSync(indexPath, 'utf8'), indexPath)) {
        if (!fs.existsSync(path.join(snapshot, shard))) await this.fetchFile(snapshot, shard, await this.metadata(commit, shard, true));
      }
    } else if (!fs.existsSync(path.join(snapshot, SINGLE_WEIGHTS))) {
      const weights = await this.metadata(commit, SINGLE_WEIGHTS, false);
      if (weights === null) {
        throw new HubError(`${this.id.repoId} has neither ${INDEX_FILE} nor ${SINGLE_WEIGHTS} at revision ${this.id.revision}: finlora loads safetensors weights only`, 404);
      }
      await this.fetchFile(snapshot, SINGLE_WEIGHTS, weights);
    }
    return commit;
  }

  private resolveUrl(revision: string, file: string): string {
    const encodedFile = file.split('/').map(encodeURIComponent).join('/');
    return `${this.endpoint}/${this.id.repoId}/resolve/${encodeURIComponent(revision)}/${encodedFile}`;
  }

  private headers(url: string, extra: Record<string, string> = {}): Record<string, string> {
    // Compressed transfer would make byte counts disagree with the sizes the hub reports.
    const headers: Record<string, string> = { 'Accept-Encoding': 'identity', 'User-Agent': 'finlora', ...extra };
    // The token goes to the hub only, never to the CDN that large files redirect to.
    if (this.token !== null && new URL(url).origin === new URL(this.endpoint).origin) headers.Authorization = `Bearer ${this.token}`;
    return headers;
  }

  private async request(url: string, init: { method: string; headers: Record<string, string>; redirect: 'manual' | 'follow'; signal?: AbortSignal }): Promise<Response> {
    try {
      return await fetch(url, init);
    } catch (err) {
      throw new HubError(`cannot reach ${url}: ${describeCause(err)}`, null, url);
    }
  }

  private async metadata(revision: string, file: string, required: true): Promise<FileMeta>;
  private async metadata(revision: string, file: string, required: boolean): Promise<FileMeta | null>;
  private async metadata(revision: string, file: string, required: boolean): Promise<FileMeta | null> {
    let url = this.resolveUrl(revision, file);
    for (let hop = 0; hop < 5; hop++) {
      const res = await this.request(url, { method: 'HEAD', headers: this.headers(url), redirect: 'manual' });
      const location = res.headers.get('location');
      if (res.status >= 300 && res.status < 400 && location !== null) {
        const target = new URL(location, url).toString();
        // As huggingface_hub: a relative Location is a renamed repo, followed; an
        // absolute one is where an LFS file's bytes are, and the metadata is here.
        if (!/^[a-z][a-z0-9+.-]*:/i.test(location) && !location.startsWith('//')) {
          url = target;
          continue;
        }
        return this.meta(res, file, url, target);
      }
      if (res.ok) return this.meta(res, file, url, url);
      if (res.status === 404 && !required && res.headers.get('x-error-code') !== 'RepoNotFound' && res.headers.get('x-error-code') !== 'RevisionNotFound') {
        return null;
      }
      throw this.statusError(res, url, file);
    }
    throw new HubError(`too many redirects resolving ${file} in ${this.id.repoId} (last: ${url})`, null, url);
  }

  private meta(res: Response, file: string, url: string, downloadUrl: string): FileMeta {
    const commit = res.headers.get('x-repo-commit');
    const etag = normalizeEtag(res.headers.get('x-linked-etag') ?? res.headers.get('etag'));
    if (commit === null || !COMMIT_RE.test(commit) || etag === null) {
      throw new HubError(`${url} did not send X-Repo-Commit and ETag headers for ${file}: is HF_ENDPOINT (${this.endpoint}) a Hugging Face hub?`, res.status, url);
    }
    if (!/^[A-Za-z0-9._-]+$/.test(etag)) throw new HubError(`${url} sent an unusable ETag ${JSON.stringify(etag)} for ${file}`, res.status, url);
    const sizeHeader = res.headers.get('x-linked-size') ?? res.headers.get('content-length');
    const size = sizeHeader !== null && /^\d+$/.test(sizeHeader) ? Number(sizeHeader) : null;
    return { commit, etag, size, downloadUrl };
  }

  private statusError(res: Response, url: string, file: string): HubError {
    const code = res.headers.get('x-error-code');
    const where = `${this.id.repoId}@${this.id.revision}`;
    if (res.status === 401 || res.status === 403) {
      const hint =
        this.token === null
          ? 'The model may be gated or private: accept its license on its hub page and set HF_TOKEN to an access token.'
          : 'A token (HF_TOKEN) was sent but does not grant access: accept the model\'s license on its hub page, or check the token.';
      const notFound = code === 'RepoNotFound' ? ' (or the repository does not exist)' : '';
      return new HubError(`access to ${where} was refused (HTTP ${res.status})${notFound} while fetching ${file} from ${url}. ${hint}`, res.status, url);
    }
    if (res.status === 404) {
      if (code === 'RepoNotFound') return new HubError(`repository ${this.id.repoId} not found at ${this.endpoint} (HTTP 404); if it is private, set HF_TOKEN`, 404, url);
      if (code === 'RevisionNotFound') return new HubError(`revision ${this.id.revision} not found in ${this.id.repoId} (HTTP 404)`, 404, url);
      return new HubError(`${file} not found in ${where} (HTTP 404 from ${url})`, 404, url);
    }
    return new HubError(`${url} answered HTTP ${res.status} ${res.statusText} while fetching ${file} of ${where}`, res.status, url);
  }

  private markMissing(commit: string, file: string): void {
    const marker = path.join(this.repoDir, '.no_exist', commit, file);
    fs.mkdirSync(path.dirname(marker), { recursive: true });
    fs.writeFileSync(marker, '');
  }

  private async fetchFile(snapshot: string, file: string, meta: FileMeta): Promise<void> {
    const blob = path.join(this.repoDir, 'blobs', meta.etag);
    if (!fs.existsSync(blob)) await this.download(file, meta, blob);
    const link = path.join(snapshot, file);
    fs.mkdirSync(path.dirname(link), { recursive: true });
    try {
      fs.unlinkSync(link);
    } catch {
      // Nothing there yet.
    }
    try {
      fs.symlinkSync(path.relative(path.dirname(link), blob), link);
    } catch (err) {
      // Where symlinks are not allowed, huggingface_hub copies; so does this.
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EPERM' && code !== 'EACCES' && code !== 'ENOTSUP') throw err;
      fs.copyFileSync(blob, link);
    }
  }

  private async download(file: string, meta: FileMeta, blob: string): Promise<void> {
    fs.mkdirSync(path.dirname(blob), { recursive: true });
    const partial = `${blob}.incomplete`;
    const checkSha = SHA256_RE.test(meta.etag);
    let have = fs.existsSync(partial) ? fs.statSync(partial).size : 0;
    if (meta.size !== null && have > meta.size) {
      fs.rmSync(partial);
      have = 0;
    }

    const url = meta.downloadUrl;
    const controller = new AbortController();
    let idle: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(idle);
      idle = setTimeout(() => controller.abort(new Error(`no data for ${this.idleTimeoutMs / 1000} s`)), this.idleTimeoutMs);
    };
    arm();
    const range = have > 0 ? { Range: `bytes=${have}-` } : undefined;
    let res: Response;
    try {
      res = await this.request(url, { method: 'GET', headers: this.headers(url, range), redirect: 'follow', signal: controller.signal });
    } catch (err) {
      clearTimeout(idle);
      throw err;
    }
    if (res.status === 416 && have > 0) {
      // The partial file does not fit what the server has: start over.
      clearTimeout(idle);
      await res.body?.cancel();
      fs.rmSync(partial);
      return this.download(file, meta, blob);
    }
    if (!res.ok) {
      clearTimeout(idle);
      await res.body?.cancel();
      throw this.statusError(res, url, file);
    }
    const resumed = res.status === 206 && have > 0 && (res.headers.get('content-range') ?? '').startsWith(`bytes ${have}-`);
    if (res.status === 206 && !resumed) {
      clearTimeout(idle);
      await res.body?.cancel();
      fs.rmSync(partial, { force: true });
      throw new HubError(`${url} answered a range request for ${file} with Content-Range ${JSON.stringify(res.headers.get('content-range'))}; removed the partial file, run again to restart`, 206, url);
    }
    if (!resumed) have = 0;

    const hash: Hash | null = checkSha ? createHash('sha256') : null;
    if (hash !== null && have > 0) {
      for await (const chunk of fs.createReadStream(partial, { end: have - 1 })) hash.update(chunk as Buffer);
    }
    const out = await fs.promises.open(partial, resumed ? 'a' : 'w');
    const bar = new ByteProgress(this.progress, file, meta.size, have);
    let received = have;
    try {
      if (res.body === null) throw new Error('empty response body');
      for await (const chunk of res.body) {
        arm();
        await out.write(chunk);
        hash?.update(chunk);
        received += chunk.byteLength;
        bar.update(received);
      }
    } catch (err) {
      bar.fail();
      const reason = controller.signal.aborted ? describeCause(controller.signal.reason) : describeCause(err);
      throw new HubError(
        `download of ${file} from ${url} was interrupted after ${received}${meta.size === null ? '' : ` of ${meta.size}`} bytes: ${reason}. ` +
          `The partial file ${partial} is kept; run again to resume.`,
        null,
        url,
      );
    } finally {
      clearTimeout(idle);
      await out.close();
    }
    if (meta.size !== null && received !== meta.size) {
      bar.fail();
      throw new HubError(`download of ${file} from ${url} ended after ${received} of ${meta.size} bytes; the partial file ${partial} is kept: run again to resume`, null, url);
    }
    if (hash !== null) {
      const digest = hash.digest('hex');
      if (digest !== meta.etag) {
        bar.fail();
        fs.rmSync(partial);
        throw new HubError(`download of ${file} from ${url} is corrupt: sha256 ${digest}, expected ${meta.etag}; removed it, run again to retry`, null, url);
      }
    }
    fs.renameSync(partial, blob);
    bar.done();
  }
}
