#!/usr/bin/env node
// The `finlora` command: dispatches `finlora <command> [options]` to one file per
// command under commands/, and answers --help and --version itself. Errors follow
// errors.ts: one line on stderr, exit 1 for bad input, 2 for bad usage.
import { readFileSync } from 'node:fs';
import type { Command } from './command.js';
import { reportError, UsageError } from './errors.js';

interface Entry {
  readonly summary: string;
  load(): Promise<Command>;
}

// Loaded on demand: `finlora --help` should not load the native backend.
const COMMANDS = new Map<string, Entry>([
  ['data', { summary: "Download FinLoRA's public JSONL data files (data fetch)", load: async () => (await import('./commands/data.js')).command }],
  ['decompose', { summary: "Split a weight matrix into DoRA's magnitude vector and unit-norm direction matrix", load: async () => (await import('./commands/decompose.js')).command }],
  ['eval', { summary: "Score a model (and adapter) on a FinLoRA test set: accuracy, weighted F1, confusion matrix", load: async () => (await import('./commands/eval.js')).command }],
  ['finetune', { summary: "Fine-tune a run of FinLoRA's finetune_configs.json with LoRA or DoRA", load: async () => (await import('./commands/finetune.js')).command }],
  ['forward', { summary: 'Run a model on token ids and save its logits (and loss) to safetensors', load: async () => (await import('./commands/forward.js')).command }],
  ['generate', { summary: 'Continue a prompt with a model (greedy or sampled), streaming the text', load: async () => (await import('./commands/generate.js')).command }],
  ['merge', { summary: 'Fold a LoRA / DoRA adapter into its base model and write a model directory', load: async () => (await import('./commands/merge.js')).command }],
  ['pretrain', { summary: 'Train every weight of a Llama-architecture model on text (causal LM), from scratch or from a model', load: async () => (await import('./commands/pretrain.js')).command }],
]);

function version(): string {
  const pkg: unknown = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8'));
  return typeof pkg === 'object' && pkg !== null && 'version' in pkg && typeof pkg.version === 'string' ? pkg.version : 'unknown';
}

function help(): string {
  const width = Math.max(...[...COMMANDS.keys()].map((n) => n.length));
  const list = [...COMMANDS].map(([name, e]) => `  ${name.padEnd(width)}  ${e.summary}`).join('\n');
  return `finlora — fine-tune Llama-family models with DoRA and LoRA

Usage:
  finlora <command> [options]
  finlora <command> --help     options and examples of one command
  finlora --version

Commands:
${list}

Environment:
  FINLORA_DEVICE   backend to compute on (default cpu)
  FINLORA_DEBUG=1  print the stack trace of an unexpected error

Exit codes: 0 success, 1 bad input or failure, 2 bad usage.
`;
}

export async function main(argv: readonly string[], out: (text: string) => void = (t) => process.stdout.write(t)): Promise<number> {
  const [first, ...rest] = argv;
  try {
    if (first === undefined) throw new UsageError('no command given (see finlora --help)');
    if (first === '--help' || first === '-h' || first === 'help') {
      if (first === 'help' && rest[0] !== undefined) return await main([rest[0], '--help'], out);
      out(help());
      return 0;
    }
    if (first === '--version' || first === '-V') {
      out(`${version()}\n`);
      return 0;
    }
    const entry = COMMANDS.get(first);
    if (entry === undefined) {
      const what = first.startsWith('-') ? `unknown option '${first}'` : `unknown command '${first}'`;
      throw new UsageError(`${what} (commands: ${[...COMMANDS.keys()].join(', ')}; see finlora --help)`);
    }
    const command = await entry.load();
    if (rest.includes('--help') || rest.includes('-h')) {
      out(command.help);
      return 0;
    }
    try {
      return await command.run(rest, out);
    } catch (e) {
      return reportError(`finlora ${first}`, e);
    }
  } catch (e) {
    return reportError('finlora', e);
  }
}

// A reader that stops early (`finlora ... | head`) is not an error.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
});

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.exitCode = reportError('finlora', e);
  },
);
