// Native memory is released deterministically: a 1,000-step training loop on a small
// Llama keeps its native allocations exactly flat, and neither the memory resident
// outside the JS heap nor the live JS heap grows.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { backward, noGrad } from '../src/autograd/tape.js';
import { defaultBackend } from '../src/backend/registry.js';
import { causalLmLoss } from '../src/models/loss.js';
import { LlamaForCausalLM } from '../src/models/llama/model.js';
import { parseLlamaConfig } from '../src/models/llama/config.js';
import { sub, mul } from '../src/ops/binary.js';
import { randn, tensor } from '../src/ops/creation.js';
import { assign } from '../src/ops/inplace.js';
import { Rng } from '../src/tensor/rng.js';
import { scope } from '../src/tensor/tensor.js';

// Resident memory is measured after a full collection, so JS garbage that has not been
// collected yet does not count as growth.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

test('a 1,000-step training loop keeps native memory flat', () => {
  // The default device (FINLORA_DEVICE): its allocations are the native memory that must stay flat.
  const device = defaultBackend();
  const config = parseLlamaConfig({
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 32, intermediate_size: 64,
    num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 96,
    max_position_embeddings: 64, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: false,
  });
  const model = new LlamaForCausalLM(config, device);
  const rng = new Rng(7);
  for (const [name, p] of model.namedParameters()) {
    scope(() => assign(p, randn(p.shape, rng, { std: name.endsWith('norm.weight') ? 0 : 0.1 })));
    if (name.endsWith('norm.weight')) scope(() => assign(p, tensor(new Float32Array(p.size).fill(1), p.shape)));
    p.requiresGrad = true;
  }
  model.train();
  const params = model.trainableParameters();
  const ids = tensor(Int32Array.from({ length: 2 * 16 }, (_, i) => (i * 7) % 96), [2, 16], { dtype: 'int32' });

  const losses: number[] = [];
  const live: number[] = [];
  const nonHeap: number[] = [];
  const heapUsed: number[] = [];
  for (let step = 0; step < 1000; step++) {
    scope(() => {
      const loss = causalLmLoss(model.forward(ids), ids);
      backward(loss);
      if (step % 100 === 0) losses.push(loss.item());
      noGrad(() => {
        for (const p of params) {
          assign(p, sub(p, mul(p.grad!, 0.05)));
          p.grad!.dispose();
          p.grad = null;
        }
      });
    });
    if (step === 100 || step === 999) {
      gc();
      live.push(device.liveBytes());
      const m = process.memoryUsage();
      // V8 grows its young generation during warm-up (heapTotal); what is resident
      // besides the JS heap is native memory, and that must not grow.
      nonHeap.push(m.rss - m.heapTotal);
      heapUsed.push(m.heapUsed);
    }
  }
  assert.ok(losses[losses.length - 1] < losses[0] * 0.8, `the loop trains (loss ${losses[0]} -> ${losses[losses.length - 1]})`);
  assert.equal(live[1], live[0], 'native allocations are the same at step 100 and step 1000');
  const nativeGrowth = (nonHeap[1] - nonHeap[0]) / 2 ** 20;
  assert.ok(nativeGrowth < 8, `resident memory outside the JS heap grew ${nativeGrowth.toFixed(1)} MiB from step 100 to step 1000`);
  const heapGrowth = (heapUsed[1] - heapUsed[0]) / 2 ** 20;
  assert.ok(heapGrowth < 4, `live JS heap grew ${heapGrowth.toFixed(1)} MiB from step 100 to step 1000`);
  model.dispose();
  ids.dispose();
});
