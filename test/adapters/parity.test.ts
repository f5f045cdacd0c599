// LoRA and DoRA against PEFT 0.21: each fixture in test/fixtures/adapters (made by
// scripts/make_adapter_fixtures.py) holds an adapter as PEFT saved it — non-zero lora_B,
// perturbed magnitudes — for a committed random-weight base model, and what PEFT
// computed with it in f32: logits, loss, the gradient of every lora_A, lora_B and
// lora_magnitude_vector, the merged weights and the merged model's logits. finlora
// loads the adapter and must match each within 1e-5 relative (to the largest value of
// the tensor compared), print PEFT's trainable-parameter line, and unmerge back.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { loadPeftAdapter } from '../../src/adapters/peft.js';
import { backward, noGrad } from '../../src/autograd/tape.js';
import { withSafetensors } from '../../src/io/safetensors.js';
import { LlamaForCausalLM } from '../../src/models/llama/model.js';
import { causalLmLoss } from '../../src/models/loss.js';
import { tensor } from '../../src/ops/creation.js';
import { scope } from '../../src/tensor/tensor.js';
import { assertClose, values } from '../helpers.js';

const ADAPTERS = new URL('../../../test/fixtures/adapters/', import.meta.url).pathname;
const MODELS = new URL('../../../test/fixtures/models/', import.meta.url).pathname;

/** The line PEFT's print_trainable_parameters printed when the fixture was made. */
const PEFT_SUMMARY: Readonly<Record<string, string>> = {
  dora_qkv: 'trainable params: 5,376 || all params: 99,904 || trainable%: 5.3812',
  dora_all_rslora: 'trainable params: 14,464 || all params: 108,992 || trainable%: 13.2707',
  lora_plain: 'trainable params: 4,096 || all params: 98,624 || trainable%: 4.1531',
  dora_qkv_bias: 'trainable params: 5,376 || all params: 83,776 || trainable%: 6.4171',
};

interface Reference {
  readonly base: string;
  readonly gradMode: string;
  readonly ids: number[][];
  readonly tensors: Map<string, Float32Array>;
}

function reference(name: string): Reference {
  return withSafetensors(`${ADAPTERS}${name}/reference.safetensors`, (f) => {
    const ids = Array.from(f.read('input_ids'));
    const tensors = new Map<string, Float32Array>();
    for (const n of f.names()) if (n !== 'input_ids') tensors.set(n, Float32Array.from(f.read(n)));
    return { base: f.metadata.base, gradMode: f.metadata.grad_mode, ids: [ids.slice(0, 8), ids.slice(8, 16)], tensors };
  });
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** Within 1e-5 of the largest |value| of the expected tensor (and 1e-5 relative per element). */
function assertRel(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string, rel = 1e-5): void {
  assertClose(actual, expected, { atol: rel * maxAbs(expected), rtol: rel }, what);
}

for (const name of Object.keys(PEFT_SUMMARY)) {
  describe(name, () => {
    const ref = reference(name);
    const get = (k: string) => {
      const v = ref.tensors.get(k);
      assert.ok(v !== undefined, `fixture has no ${k}`);
      return v;
    };
    const model = LlamaForCausalLM.fromPretrained(`${MODELS}${ref.base}`);
    const lm = loadPeftAdapter(`${ADAPTERS}${name}/adapter`, model);
    const ids = tensor(ref.ids.flat(), [2, 8], { dtype: 'int32', device: model.backend });

    test("PEFT's trainable-parameter summary", () => {
      assert.equal(lm.summary(), PEFT_SUMMARY[name]);
    });

    test('logits and loss in eval mode', () => {
      model.eval();
      const [logits, loss] = noGrad(() =>
        scope(() => {
          const l = model.forward(ids);
          return [values(l), causalLmLoss(l, ids).item()];
        }),
      );
      assertRel(logits, get('logits'), 'logits');
      assertRel([loss], get('loss'), 'loss');
    });

    test('gradients of every lora_A, lora_B and lora_magnitude_vector', () => {
      model.train(ref.gradMode === 'train');
      const params = [...lm.namedTensors()];
      for (const [, t] of params) {
        t.grad?.dispose();
        t.grad = null;
      }
      scope(() => backward(causalLmLoss(model.forward(ids), ids)));
      let checked = 0;
      for (const [n, t] of params) {
        const key = n.endsWith('lora_magnitude_vector.weight') ? n.slice(0, -'.weight'.length) : n;
        assert.ok(t.grad !== null, `${n} got no gradient`);
        assertRel(values(t.grad), get(`grad.${key}`), `grad ${key}`);
        checked++;
      }
      assert.equal(checked, [...ref.tensors.keys()].filter((k) => k.startsWith('grad.')).length);
      model.eval();
    });

    test('merge: weights and logits as merge_and_unload; unmerge restores the base', () => {
      const original = new Map([...lm.layers].map(([n, l]) => [n, values(l.target.weight)]));
      lm.merge();
      for (const [n, l] of lm.layers) assertRel(values(l.target.weight), get(`merged.${n}.weight`), `merged ${n}`);
      const merged = noGrad(() => scope(() => values(model.forward(ids))));
      assertRel(merged, get('merged_logits'), 'merged logits');
      lm.unmerge();
      for (const [n, l] of lm.layers) assertClose(values(l.target.weight), original.get(n)!, { atol: 1e-6, rtol: 1e-5 }, `unmerged ${n}`);
      const again = noGrad(() => scope(() => values(model.forward(ids))));
      assertRel(again, get('logits'), 'logits after unmerge');
    });
  });
}
