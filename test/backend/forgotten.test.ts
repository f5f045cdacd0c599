// The safety net behind explicit disposal: a buffer a program forgets is freed once it
// is garbage collected, whether it was dropped while still on the short list of new
// buffers or after being registered; a buffer freed explicitly is never freed twice.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { BATCH, ForgottenBuffers, type TrackedBuffer } from '../../src/backend/forgotten.js';
import { defaultBackend } from '../../src/backend/registry.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Collects until the registry's callbacks have run (they are queued after a collection). */
async function collect(done: () => boolean): Promise<void> {
  for (let i = 0; i < 50 && !done(); i++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

test('ForgottenBuffers frees forgotten buffers and never an explicitly freed one', async () => {
  const freed: number[] = [];
  const tracker = new ForgottenBuffers<number>((h) => freed.push(h));
  const make = (): TrackedBuffer => ({ tracking: 'new' });
  // Dropped while new: held on the lists until the second one fills, then registered and collected.
  (() => tracker.add(make(), 1))();
  // Freed explicitly while new, and freed explicitly after being registered.
  const early = make();
  tracker.add(early, 2);
  tracker.remove(early);
  const late = make();
  tracker.add(late, 3);
  const keep: TrackedBuffer[] = [];
  for (let i = 0; i < 2 * BATCH + 100; i++) {
    const b = make();
    tracker.add(b, 100 + i);
    keep.push(b);
  }
  assert.equal(late.tracking, 'registered');
  tracker.remove(late);
  await collect(() => freed.includes(1));
  assert.deepEqual(freed, [1], 'only the forgotten buffer is freed');
  assert.equal(keep.length, 2 * BATCH + 100);
});

test('a forgotten tensor buffer on the default device is returned', async () => {
  const device = defaultBackend();
  const before = device.liveBytes();
  (() => device.alloc(1 << 20))();
  assert.equal(device.liveBytes(), before + (1 << 20));
  // Enough short-lived buffers to fill the list of new ones.
  for (let i = 0; i < 2 * BATCH + 100; i++) device.free(device.alloc(64));
  await collect(() => device.liveBytes() === before);
  assert.equal(device.liveBytes(), before);
});
