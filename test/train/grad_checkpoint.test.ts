// Gradient checkpointing per decoder layer: the same loss and bit-identical gradients
// as an ordinary backward (DoRA adapters with dropout, whose masks are replayed), fewer
// live bytes between forward and backward, and training that ends in the same weights.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backward } from '../../src/autograd/tape.js';
import { causalLmLoss } from '../../src/models/loss.js';
import { tensor } from '../../src/ops/creation.js';
import { scope } from '../../src/tensor/tensor.js';
import { injectAdapters } from '../../src/train/adapters.js';
import { enableGradientCheckpointing } from '../../src/train/grad_checkpoint.js';
import { tinyLlama } from './tiny.js';

function step(checkpointing: boolean, targetModules = ['q_proj', 'v_proj', 'down_proj']): { loss: number; grads: Map<string, number[]>; heldAfterForward: number; offset: number } {
  const model = tinyLlama();
  const { target, lora } = injectAdapters(model, { r: 4, alpha: 8, dropout: 0.1, targetModules, useDora: true, useRslora: false, baseModel: 't', seed: 2 });
  const undo = checkpointing ? enableGradientCheckpointing(model, lora.dropout) : () => {};
  model.train();
  const device = model.backend;
  const ids = tensor(Int32Array.from({ length: 3 * 24 }, (_, i) => (i * 37 + 11) % 250), [3, 24], { dtype: 'int32' });
  let held = 0;
  const loss = scope(() => {
    const before = device.liveBytes();
    const l = causalLmLoss(model.forward(ids), ids);
    held = device.liveBytes() - before;
    backward(l);
    return l.item();
  });
  const grads = new Map(target.parameters.map(([n, t]) => [n, [...t.grad!.toArray()]]));
  const offset = lora.dropout.offset;
  undo();
  model.dispose();
  ids.dispose();
  return { loss, grads, heldAfterForward: held, offset };
}

test('checkpointed layers give the same loss and bit-identical gradients, holding less between forward and backward', () => {
  const plain = step(false);
  const ckpt = step(true);
  assert.equal(ckpt.loss, plain.loss);
  assert.equal(ckpt.grads.size, 3 * 2 * 3);
  for (const [name, g] of plain.grads) assert.deepEqual(ckpt.grads.get(name), g, name);
  assert.ok(plain.grads.get('model.layers.0.self_attn.q_proj.lora_magnitude_vector.weight')!.some((v) => v !== 0));
  assert.equal(ckpt.offset, plain.offset, 'the dropout stream ends where it would have');
  assert.ok(ckpt.heldAfterForward < plain.heldAfterForward * 0.6, `held ${ckpt.heldAfterForward} vs ${plain.heldAfterForward} bytes`);
});

test('with a frozen down_proj, the recomputation stops before it and the gradients stay bit-identical', () => {
  // gate_proj adapted, down_proj plain: backward starts from the residual stream and down_proj's input.
  const targets = ['q_proj', 'k_proj', 'gate_proj'];
  const plain = step(false, targets);
  const ckpt = step(true, targets);
  assert.equal(ckpt.loss, plain.loss);
  assert.equal(ckpt.grads.size, 3 * 2 * 3);
  for (const [name, g] of plain.grads) assert.deepEqual(ckpt.grads.get(name), g, name);
  assert.ok(plain.grads.get('model.layers.0.mlp.gate_proj.lora_A.weight')!.some((v) => v !== 0) || plain.grads.get('model.layers.0.mlp.gate_proj.lora_B.weight')!.some((v) => v !== 0));
  assert.equal(ckpt.offset, plain.offset, 'the dropout stream ends where it would have');
});
