// The run configs finlora ships (demo/finetune_configs.json in the package: the `demo`
// run, a DoRA fine-tune of the small model in demo/model on demo/data) and the rule
// that picks the config file of `finlora finetune <run_name>`:
//
//   1. --config-json FILE, else ./finetune_configs.json, when it exists and defines the run;
//   2. otherwise the shipped file, when it defines the run (a note on stderr says so);
//   3. otherwise the user's file as before, so its errors (no such file, no such run,
//      a syntax error) are the ones reported.
//
// Shipped runs name their model and data relative to the shipped file, so they run from
// any working directory; their adapters go where every run's go (--output-dir).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { listRuns } from '../train/config.js';

/** The shipped finetune_configs.json (its path whether or not the package has it). */
export function shippedConfigFile(): string {
  // This file is dist/src/cli/shipped_configs.js in the package; demo/ sits beside dist/.
  return fileURLToPath(new URL('../../../demo/finetune_configs.json', import.meta.url));
}

function definesRun(file: string, run: string): boolean {
  try {
    return listRuns(file).includes(run);
  } catch {
    // An unreadable or malformed file: loadRun reports it if it is the one chosen.
    return false;
  }
}

/**
 * The config file to read `run` from (see the header), or null when the user named no
 * file, ./finetune_configs.json does not exist, and no shipped run has that name.
 */
export function chooseConfigFile(run: string, explicit: string | undefined, note: (line: string) => void, shipped = shippedConfigFile()): string | null {
  const user = explicit ?? 'finetune_configs.json';
  const userExists = fs.existsSync(path.resolve(user));
  if (userExists && definesRun(user, run)) return user;
  if (fs.existsSync(shipped) && definesRun(shipped, run)) {
    note(`run '${run}' is not in ${userExists ? user : `${path.resolve(user)} (no such file)`}; using the run finlora ships in ${shipped}`);
    return shipped;
  }
  return userExists || explicit !== undefined ? user : null;
}
