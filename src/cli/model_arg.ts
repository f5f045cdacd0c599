// What the commands' --model names: a local Hugging Face model directory, or a hub id
// (org/name or org/name@revision) that io/hub.ts resolves through the Hugging Face cache
// (HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_TOKEN), downloading what is missing with
// progress on stderr. An existing path always wins, as in transformers' from_pretrained.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HubError, parseHubId, resolveModel } from '../io/hub.js';
import { UserError } from './errors.js';

/** The model directory `value` names; hub problems become one-line user errors. */
export async function modelDir(value: string): Promise<string> {
  const local = path.resolve(value === '~' || value.startsWith('~/') ? path.join(os.homedir(), value.slice(1)) : value);
  if (fs.existsSync(local)) {
    if (!fs.statSync(local).isDirectory()) throw new UserError(`${value}: not a directory (--model takes a model directory or a hub id)`);
    return local;
  }
  const looksLikePath = /^(\/|\.{1,2}(\/|$)|~)/.test(value) || value.includes('\\');
  if (looksLikePath) throw new UserError(`${value}: no such directory`);
  if (parseHubId(value) === null) throw new UserError(`${value}: no such directory, and not a hub id (org/name or org/name@revision)`);
  try {
    return (await resolveModel(value, { progress: process.stderr })).dir;
  } catch (e) {
    if (e instanceof HubError) throw new UserError(`${e.message} (there is no local directory ${value} either)`);
    throw e;
  }
}
