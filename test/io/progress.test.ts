// Download progress output on a terminal and in logs, driven by a fake clock.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ByteProgress, formatBytes, formatDuration } from '../../src/io/progress.js';

function sink(isTTY: boolean) {
  const writes: string[] = [];
  return { writes, stream: { isTTY, columns: 100, write: (s: string) => writes.push(s) > 0 } };
}

test('sizes and durations format as a person reads them', () => {
  assert.equal(formatBytes(999), '999 B');
  assert.equal(formatBytes(1500), '1.50 kB');
  assert.equal(formatBytes(85_300_000), '85.3 MB');
  assert.equal(formatBytes(4_976_698_672), '4.98 GB');
  assert.equal(formatDuration(43), '0:43');
  assert.equal(formatDuration(3725), '1:02:05');
  assert.equal(formatDuration(Infinity), '--:--');
});

test('on a terminal one line is redrawn with bar, bytes, rate and ETA, at most every 100 ms', () => {
  let now = 0;
  const { writes, stream } = sink(true);
  const bar = new ByteProgress(stream, 'model-00001-of-00002.safetensors', 1_000_000_000, 0, () => now);
  now = 10_000;
  bar.update(250_000_000);
  now = 10_050;
  bar.update(260_000_000);
  assert.equal(writes.length, 1);
  assert.ok(writes[0]!.startsWith('\rmodel-00001-of-00002.safetensors |'), writes[0]);
  assert.match(writes[0]!, / 25% 250 MB\/1.00 GB 25.0 MB\/s ETA 0:30\x1b\[K$/);
  now = 40_000;
  bar.update(1_000_000_000);
  bar.done();
  assert.match(writes.at(-1)!, /100% 1.00 GB\/1.00 GB .*\n$/);
});

test('in logs: a line when a large file starts, every 15 s, and when it ends; a resumed download counts its rate from the resume', () => {
  let now = 0;
  const { writes, stream } = sink(false);
  const bar = new ByteProgress(stream, 'model.safetensors', 2_000_000_000, 500_000_000, () => now);
  now = 5_000;
  bar.update(600_000_000);
  now = 15_000;
  bar.update(800_000_000);
  now = 20_000;
  bar.update(900_000_000);
  now = 30_000;
  bar.update(1_100_000_000);
  bar.done();
  assert.deepEqual(writes, [
    'downloading model.safetensors (2.00 GB, resuming at 500 MB)\n',
    'model.safetensors: 40% 800 MB/2.00 GB, 20.0 MB/s, ETA 1:00\n',
    'model.safetensors: 55% 1.10 GB/2.00 GB, 20.0 MB/s, ETA 0:45\n',
    'downloaded model.safetensors (1.10 GB in 0:30, 20.0 MB/s)\n',
  ]);
  const small = sink(false);
  const smallBar = new ByteProgress(small.stream, 'config.json', 700, 0, () => 0);
  smallBar.update(700);
  smallBar.done();
  assert.deepEqual(small.writes, ['downloaded config.json (700 B in 0:00)\n']);
});
