// The CLI's error policy, shared by every command: an error prints ONE line,
// `finlora <command>: <what is wrong>`, on stderr and sets the exit code. Expected
// errors (bad input, a missing file, a malformed tensor) are UserErrors and exit 1;
// usage errors (unknown option, missing argument) exit 2. Anything else is a bug: it
// also prints one line and exits 1, with the stack only when FINLORA_DEBUG=1.
import { parseArgs, type ParseArgsConfig } from 'node:util';

/** An expected failure caused by the user's input; its message is shown as is. */
export class UserError extends Error {
  readonly exitCode: number = 1;
  constructor(message: string) {
    super(message);
    this.name = 'UserError';
  }
}

/** A malformed command line (exit code 2). */
export class UsageError extends UserError {
  override readonly exitCode: number = 2;
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Collapses a message onto one line (file contents and tensor names can hold newlines). */
export function oneLine(text: string): string {
  return text.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

function errorCode(e: unknown): string | undefined {
  if (typeof e !== 'object' || e === null || !('code' in e)) return undefined;
  return typeof e.code === 'string' ? e.code : undefined;
}

/**
 * node:util parseArgs in strict mode, with its errors turned into UsageErrors that
 * point at the command's --help.
 */
export function parseCommandArgs<T extends ParseArgsConfig>(command: string, config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (e) {
    const code = errorCode(e);
    if (code !== undefined && code.startsWith('ERR_PARSE_ARGS') && e instanceof Error) {
      const first = e.message.split('\n').slice(0, 2).join(' ');
      throw new UsageError(`${oneLine(first)} (see finlora ${command} --help)`);
    }
    throw e;
  }
}

/** Prints the one-line report for an error and returns the exit code. */
export function reportError(prefix: string, e: unknown, write: (line: string) => void = (l) => process.stderr.write(l)): number {
  if (e instanceof UserError) {
    write(`${prefix}: ${oneLine(e.message)}\n`);
    return e.exitCode;
  }
  const message = e instanceof Error ? e.message : String(e);
  write(`${prefix}: internal error: ${oneLine(message)}${process.env.FINLORA_DEBUG === '1' ? '' : ' (set FINLORA_DEBUG=1 for the stack trace)'}\n`);
  if (process.env.FINLORA_DEBUG === '1' && e instanceof Error && e.stack !== undefined) write(`${e.stack}\n`);
  return 1;
}
