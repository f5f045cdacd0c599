// The CLI's error policy: one line per error, exit 1 for bad input, 2 for usage, and
// the stack of an unexpected error only with FINLORA_DEBUG=1.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseCommandArgs, reportError, UsageError, UserError } from '../../src/cli/errors.js';

function report(e: unknown, debug: boolean): { code: number; text: string } {
  const saved = process.env.FINLORA_DEBUG;
  process.env.FINLORA_DEBUG = debug ? '1' : '';
  try {
    let text = '';
    const code = reportError('finlora demo', e, (l) => (text += l));
    return { code, text };
  } finally {
    if (saved === undefined) delete process.env.FINLORA_DEBUG;
    else process.env.FINLORA_DEBUG = saved;
  }
}

test('expected errors print their message on one line with exit 1 (usage: 2)', () => {
  assert.deepEqual(report(new UserError('w.json: row 2 is empty'), false), { code: 1, text: 'finlora demo: w.json: row 2 is empty\n' });
  assert.deepEqual(report(new UserError('bad name "a\nb"\n  second line'), true), { code: 1, text: 'finlora demo: bad name "a b" second line\n' });
  assert.deepEqual(report(new UsageError('--layout must be dxk or linear'), false), { code: 2, text: 'finlora demo: --layout must be dxk or linear\n' });
});

test('unexpected errors print one line, and the stack only with FINLORA_DEBUG=1', () => {
  const e = new TypeError('cannot read x\nof undefined');
  const quiet = report(e, false);
  assert.equal(quiet.code, 1);
  assert.equal(quiet.text, 'finlora demo: internal error: cannot read x of undefined (set FINLORA_DEBUG=1 for the stack trace)\n');
  const loud = report(e, true);
  assert.equal(loud.code, 1);
  const [first, ...rest] = loud.text.split('\n');
  assert.equal(first, 'finlora demo: internal error: cannot read x of undefined');
  assert.match(rest.join('\n'), /TypeError: cannot read x[\s\S]*at /);
  assert.deepEqual(report('a string', false), { code: 1, text: 'finlora demo: internal error: a string (set FINLORA_DEBUG=1 for the stack trace)\n' });
});

test('parseArgs errors become usage errors that point at --help', () => {
  const options = { scale: { type: 'string' }, json: { type: 'boolean' } } as const;
  assert.deepEqual({ ...parseCommandArgs('demo', { args: ['--scale', '2', '--json'], options, strict: true }).values }, { scale: '2', json: true });
  for (const [args, pattern] of [
    [['--bogus'], /^Unknown option '--bogus' \(see finlora demo --help\)$/],
    [['--scale'], /^Option '--scale <value>' argument missing \(see finlora demo --help\)$/],
    [['--scale', '-1'], /^Option '--scale' argument is ambiguous\. Did you forget .* \(see finlora demo --help\)$/],
  ] as const) {
    assert.throws(() => parseCommandArgs('demo', { args: [...args], options, strict: true }), (e: unknown) => e instanceof UsageError && e.exitCode === 2 && pattern.test(e.message));
  }
});
