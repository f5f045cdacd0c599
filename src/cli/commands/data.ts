// `finlora data fetch`: downloads FinLoRA's public JSONL files (data/fetch.ts) into
// <dir>/test and <dir>/train, FinLoRA's layout, with a progress bar on a terminal. The
// files are FinLoRA's and their sources' (see FinLoRA's data/README.md for licences).
import { FetchError, fetchFinloraData, FINLORA_DATA_URL, FINLORA_FILES } from '../../data/fetch.js';
import { formatBytes } from '../../io/progress.js';
import type { Command } from '../command.js';
import { parseCommandArgs, UsageError, UserError } from '../errors.js';

const HELP = `finlora data — FinLoRA's data files

Usage:
  finlora data fetch [--dir DIR] [--set test|train] [--only NAME,...] [--base-url URL] [--force]

fetch downloads FinLoRA's public JSONL files into DIR/test/ and DIR/train/ (FinLoRA's
layout; default DIR: ./data, where FinLoRA's configs ("../data/train/...") and
'finlora eval' (data/test) look). Files already there are kept unless --force. Each
file is written under a temporary name and renamed when complete and checked.

Options:
  --dir DIR         destination (default ./data)
  --set SET         only the test sets or only the training sets
  --only NAMES      only these files, e.g. fpb_test,tfns_test
  --base-url URL    where the data directory is served (default
                    ${FINLORA_DATA_URL})
  --force           download files that are already there again
  -h, --help        this text

Test sets:     ${FINLORA_FILES.test.map((f) => f.replace(/\.jsonl$/, '')).join(', ')}
Training sets: ${FINLORA_FILES.train.map((f) => f.replace(/\.jsonl$/, '')).join(', ')}
`;

const OPTIONS = {
  dir: { type: 'string' },
  set: { type: 'string' },
  only: { type: 'string' },
  'base-url': { type: 'string' },
  force: { type: 'boolean' },
} as const;

export const command: Command = {
  name: 'data',
  help: HELP,
  async run(argv, out) {
    const { values, positionals } = parseCommandArgs('data', { args: [...argv], options: OPTIONS, allowPositionals: true });
    if (positionals[0] !== 'fetch' || positionals.length > 1) {
      throw new UsageError(positionals.length === 0 ? "a subcommand is required: finlora data fetch (see finlora data --help)" : `unknown subcommand '${positionals.join(' ')}' (finlora data fetch)`);
    }
    if (values.set !== undefined && values.set !== 'test' && values.set !== 'train') throw new UsageError(`--set must be test or train, got '${values.set}'`);
    const sets = values.set === undefined ? undefined : [values.set as 'test' | 'train'];
    try {
      const files = await fetchFinloraData({
        dir: values.dir ?? 'data',
        ...(values['base-url'] !== undefined ? { baseUrl: values['base-url'] } : {}),
        ...(sets !== undefined ? { sets } : {}),
        ...(values.only !== undefined ? { only: values.only.split(',').map((s) => s.trim()).filter((s) => s !== '') } : {}),
        force: values.force === true,
        progress: process.stderr,
      });
      for (const f of files) out(`${f.status === 'present' ? 'already there' : 'downloaded  '} ${f.file} (${formatBytes(f.bytes)})\n`);
      return 0;
    } catch (e) {
      if (e instanceof FetchError) throw new UserError(e.message);
      throw e;
    }
  },
};
