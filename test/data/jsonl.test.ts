// JSONL data files: FinLoRA's files load; a malformed line stops loading with file:line
// and why, unless skipping is asked for, which counts the skipped lines.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { DataError, readJsonl } from '../../src/data/jsonl.js';

function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!fs.existsSync(path.join(dir, 'package.json'))) dir = path.dirname(dir);
  return dir;
}
const SHARED = path.resolve(repoRoot(), '../shared/finlora-data');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-jsonl-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
let n = 0;
function file(text: string): string {
  const f = path.join(tmp, `d${n++}.jsonl`);
  fs.writeFileSync(f, text);
  return f;
}

test("FinLoRA's files load: every line an example, extra keys ignored", () => {
  const fpb = readJsonl(path.join(SHARED, 'test/fpb_test.jsonl'));
  assert.equal(fpb.examples.length, 1212);
  assert.equal(fpb.examples[0].target, 'neutral');
  assert.match(fpb.examples[0].context, /^Instruction: What is the sentiment of this news\?.*\nAnswer: $/s);
  assert.equal(fpb.examples[1211].line, 1212);
  const fb = readJsonl(path.join(SHARED, 'train/financebench_train.jsonl'));
  assert.equal(fb.examples.length, 86);
});

test('blank lines, CRLF and a BOM are tolerated; line numbers count every line', () => {
  const f = file('\ufeff{"context": "a", "target": "x"}\r\n\r\n  \n{"context": "b", "target": "y", "url": "u"}\n');
  const d = readJsonl(f);
  assert.deepEqual(d.examples, [{ context: 'a', target: 'x', line: 1 }, { context: 'b', target: 'y', line: 4 }]);
});

test('a malformed line stops loading with file:line and what is wrong', () => {
  const good = '{"context": "c", "target": "t"}';
  const cases: [string, RegExp][] = [
    ['{"context": "c", "target": "t"', /:2: not valid JSON: unexpected end of input \(expected ',' or '\}'\) at column 31/],
    ['["c", "t"]', /:2: expected a JSON object with "context" and "target", got an array/],
    ['{"context": "c"}', /:2: has no "target" \(keys: "context"\)/],
    ['{"context": "c", "target": 1}', /:2: "target" must be a string, got a number \(1\)/],
    ['{"context": null, "target": "t"}', /:2: "context" must be a string, got null/],
  ];
  for (const [line, pattern] of cases) {
    const f = file(`${good}\n${line}\n${good}\n`);
    assert.throws(() => readJsonl(f), (e: unknown) => {
      assert.ok(e instanceof DataError);
      assert.ok(e.message.startsWith(`${f}:2: `), e.message);
      assert.match(e.message, pattern);
      assert.match(e.message, /--skip-malformed/);
      return true;
    });
  }
});

test('with skipMalformed, bad lines are skipped and counted', () => {
  const f = file('{"context": "a", "target": "x"}\nnot json\n{"context": "b"}\n{"context": "c", "target": "z"}\n');
  const d = readJsonl(f, { skipMalformed: true });
  assert.deepEqual(d.examples.map((e) => e.line), [1, 4]);
  assert.deepEqual(d.skipped.map((s) => s.line), [2, 3]);
  assert.match(d.skipped[1].reason, /has no "target"/);
});

test('a missing, empty or all-malformed file, or a directory, is an error naming it', () => {
  assert.throws(() => readJsonl(path.join(tmp, 'nope.jsonl')), /dataset .*nope\.jsonl does not exist/);
  assert.throws(() => readJsonl(file('')), /dataset .*\.jsonl is empty: it holds no examples/);
  assert.throws(() => readJsonl(file('\n\n')), /is empty: it holds no examples/);
  assert.throws(() => readJsonl(file('x\ny\n'), { skipMalformed: true }), /is empty: all 2 non-blank lines are malformed \(first, line 1: not valid JSON/);
  assert.throws(() => readJsonl(tmp, { what: 'test set' }), /test set .* is a directory, not a JSONL file/);
});
