// A Llama computing in bf16 (LlamaForCausalLM.computeDtype) against the same model in
// f32, on the reference backend (which rounds every bf16 store, so CI covers the bf16
// path without a GPU): a tiny GQA model with bf16 weights and DoRA on q/k/v. The bf16
// forward keeps bf16 activations and logits, the loss and the adapter's gradients (f32
// master weights) agree with the f32 computation within bf16 tolerance, and one AdamW
// step trains. With FINLORA_DEVICE=cuda the same model runs on the GPU against the
// reference's bf16 result.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LoraModel } from '../../src/adapters/lora/model.js';
import { backward } from '../../src/autograd/tape.js';
import type { Backend } from '../../src/backend/backend.js';
import { getBackend } from '../../src/backend/registry.js';
import { parseLlamaConfig } from '../../src/models/llama/config.js';
import { LlamaForCausalLM, type WeightDType } from '../../src/models/llama/model.js';
import { causalLmLoss } from '../../src/models/loss.js';
import { tensor } from '../../src/ops/creation.js';
import { assign } from '../../src/ops/inplace.js';
import { quantizeModel } from '../../src/quant/model.js';
import { AdamW } from '../../src/train/adamw.js';
import { Rng } from '../../src/tensor/rng.js';
import { noGrad } from '../../src/autograd/tape.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose, values } from '../helpers.js';

const FIXTURES = new URL('../../../test/fixtures/models/', import.meta.url).pathname;
const VOCAB = 128;
const B = 2, T = 6;

function configJson(): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2,
    num_attention_heads: 4, num_key_value_heads: 2, vocab_size: VOCAB, max_position_embeddings: 256, rms_norm_eps: 1e-5,
    rope_theta: 10000, tie_word_embeddings: false, torch_dtype: 'bfloat16',
  };
}

/** A tiny random Llama on `device`: norms near 1, the rest N(0, 0.08²), values drawn in f32 and stored as `dtype`. */
function tinyLlama(device: Backend, dtype: WeightDType, seed = 3): LlamaForCausalLM {
  const model = new LlamaForCausalLM(parseLlamaConfig(configJson()), device, dtype);
  const rng = new Rng(seed);
  for (const [name, p] of model.namedParameters()) {
    const data = Float32Array.from({ length: p.size }, () => (name.endsWith('norm.weight') ? 1 + 0.1 * rng.normal() : 0.08 * rng.normal()));
    scope(() => assign(p, tensor(data, p.shape, { device })));
    p.name = name;
  }
  return model;
}

/** DoRA r 4 on q/k/v with dropout, and lora_B made nonzero (so every adapter tensor gets a gradient). */
function withDora(model: LlamaForCausalLM, seed = 5): LoraModel {
  const lm = LoraModel.inject(model, { r: 4, lora_alpha: 8, use_dora: true, lora_dropout: 0.05, target_modules: ['q_proj', 'k_proj', 'v_proj'] }, { seed });
  const rng = new Rng(seed + 1);
  for (const layer of lm.layers.values()) {
    const b = layer.lora_B.weight;
    scope(() => assign(b, tensor(Float32Array.from({ length: b.size }, () => 0.05 * rng.normal()), b.shape, { device: b.backend })));
    layer.invalidate();
  }
  model.train();
  return lm;
}

function batch(device: Backend, seed = 11): { ids: Tensor; labels: Tensor } {
  const rng = new Rng(seed);
  const ids = Array.from({ length: B * T }, () => rng.int(VOCAB));
  // Prompt tokens are not scored: the first two labels of each row are ignored.
  const labels = ids.map((id, i) => (i % T < 2 ? -100 : id));
  return { ids: tensor(ids, [B, T], { dtype: 'int32', device }), labels: tensor(labels, [B, T], { dtype: 'int32', device }) };
}

interface StepResult {
  logitsDtype: string;
  lossDtype: string;
  logits: Float64Array;
  loss: number;
  grads: Map<string, { dtype: string; values: Float64Array }>;
}

/** One forward and backward with the dropout stream rewound to `offset`; gradients are read and cleared. */
function step(model: LlamaForCausalLM, lm: LoraModel, offset: number): StepResult {
  lm.dropout.seek(offset);
  const result = scope(() => {
    const { ids, labels } = batch(model.backend);
    const logits = model.forward(ids);
    const loss = causalLmLoss(logits, labels);
    backward(loss);
    return { logitsDtype: logits.dtype, lossDtype: loss.dtype, logits: values(logits), loss: loss.item() };
  });
  const grads = new Map<string, { dtype: string; values: Float64Array }>();
  for (const [name, p] of model.namedParameters()) {
    if (!p.requiresGrad) continue;
    assert.ok(p.grad !== null, `${name} has no gradient`);
    grads.set(name, { dtype: p.grad.dtype, values: values(p.grad) });
    p.grad.dispose();
    p.grad = null;
  }
  return { ...result, grads };
}

function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let ab = 0, aa = 0, bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / Math.sqrt(aa * bb);
}

test('bf16 compute: the default follows the backend and the weights; an unsupported choice names the backend', () => {
  const ref = getBackend('reference'), cpu = getBackend('cpu');
  const models = [tinyLlama(ref, 'bf16'), tinyLlama(ref, 'f32'), tinyLlama(cpu, 'bf16')];
  try {
    assert.deepEqual(models.map((m) => m.computeDtype), ['bf16', 'f32', 'f32']);
    assert.throws(() => models[2].setComputeDtype('bf16'), /computeDtype bf16 is not supported on backend 'cpu'/);
    models[1].setComputeDtype('bf16');
    assert.equal(models[1].computeDtype, 'bf16');
  } finally {
    for (const m of models) m.dispose();
  }
});

test('bf16 compute: fromPretrained picks bf16 for bf16 or quantized weights where the backend has it, and takes LoadOptions.computeDtype', () => {
  const dir = FIXTURES + 'llama3_gqa';
  const ids = (device: string) => tensor([1, 5, 9, 200, 3, 7], [1, 6], { dtype: 'int32', device });
  const logits = (m: LlamaForCausalLM) => noGrad(() => scope(() => {
    const l = m.forward(ids(m.backend.name));
    return { dtype: l.dtype, values: values(l) };
  }));
  const cases: [string, Parameters<typeof LlamaForCausalLM.fromPretrained>[1], string][] = [
    ['bf16 weights', { device: 'reference', dtype: 'bf16' }, 'bf16'],
    ['int8 base, f32 storage', { device: 'reference', quant: 'int8' }, 'bf16'],
    ['f32 weights', { device: 'reference' }, 'f32'],
    ['bf16 weights, f32 asked', { device: 'reference', dtype: 'bf16', computeDtype: 'f32' }, 'f32'],
    ['f32 weights, bf16 asked', { device: 'reference', computeDtype: 'bf16' }, 'bf16'],
    ['cpu, bf16 weights', { device: 'cpu', dtype: 'bf16' }, 'f32'],
  ];
  const got = new Map<string, { dtype: string; values: Float64Array }>();
  for (const [what, opts, want] of cases) {
    const m = LlamaForCausalLM.fromPretrained(dir, opts);
    try {
      assert.equal(m.computeDtype, want, what);
      const l = logits(m);
      assert.equal(l.dtype, want, `${what}: logits`);
      got.set(what, l);
    } finally {
      m.dispose();
    }
  }
  // The quantized base's products run in f32 (quantizedLinear) and round to bf16: close to the dense bf16 model's.
  const dense = got.get('f32 weights')!.values;
  assertClose(got.get('bf16 weights, f32 asked')!.values, got.get('cpu, bf16 weights')!.values, { atol: 1e-4, rtol: 1e-4 }, 'f32 compute of bf16 weights: reference vs cpu');
  assertClose(got.get('f32 weights, bf16 asked')!.values, dense, { atol: 0.05, rtol: 0.05 }, 'bf16 compute of f32 weights');
  assertClose(got.get('int8 base, f32 storage')!.values, dense, { atol: 0.1, rtol: 0.1 }, 'int8 base in bf16');
  assert.throws(() => LlamaForCausalLM.fromPretrained(dir, { device: 'cpu', computeDtype: 'bf16' }), /computeDtype bf16 is not supported on backend 'cpu'/);

  // The default follows the weights as they are held: quantized in place, the model computes in bf16; a choice sticks.
  const m = LlamaForCausalLM.fromPretrained(dir, { device: 'reference' });
  try {
    assert.equal(m.computeDtype, 'f32');
    quantizeModel(m, 'int8');
    assert.equal(m.computeDtype, 'bf16');
    assert.equal(logits(m).dtype, 'bf16');
    m.setComputeDtype('f32');
    assert.equal(logits(m).dtype, 'f32');
  } finally {
    m.dispose();
  }
});

test('bf16 compute: a DoRA Llama on the reference agrees with its f32 computation and trains', (t) => {
  const ref = getBackend('reference');
  const model = tinyLlama(ref, 'bf16');
  const lm = withDora(model);
  const offset = lm.dropout.offset;
  try {
    model.setComputeDtype('f32');
    const f32 = step(model, lm, offset);
    model.setComputeDtype('bf16');
    const bf16 = step(model, lm, offset);

    assert.equal(f32.logitsDtype, 'f32');
    assert.equal(bf16.logitsDtype, 'bf16');
    assert.equal(bf16.lossDtype, 'f32');
    // bf16 activations: each op rounds its output (relative error 2^-9), a dozen ops deep.
    assert.ok(Math.abs(bf16.loss - f32.loss) <= 1e-2 * Math.abs(f32.loss), `loss ${bf16.loss} vs f32 ${f32.loss}`);
    assertClose(bf16.logits, f32.logits, { atol: 0.03, rtol: 0.03 }, 'logits');
    assert.equal(bf16.grads.size, 3 * 2 * 3, 'A, B and m of q/k/v in two layers');
    let worst = 1;
    for (const [name, g] of bf16.grads) {
      const want = f32.grads.get(name);
      assert.ok(want !== undefined);
      assert.equal(g.dtype, 'f32', `${name}: adapter gradients stay f32`);
      assert.equal(want.dtype, 'f32');
      const c = cosine(g.values, want.values);
      assert.ok(c > 0.99, `${name}: cosine similarity ${c} with the f32 gradient`);
      worst = Math.min(worst, c);
    }
    t.diagnostic(`loss f32 ${f32.loss}, bf16 ${bf16.loss}; lowest gradient cosine similarity ${worst}`);

    // One AdamW step on the f32 master weights changes the bf16 model's loss.
    const params = lm.trainableParameters();
    assert.ok(params.every((p) => p.dtype === 'f32'));
    const before = step(model, lm, offset);
    for (const p of params) {
      const g = before.grads.get(p.name);
      assert.ok(g !== undefined, p.name);
      p.grad = tensor(g.values, p.shape, { device: ref });
    }
    const opt = new AdamW(params, { lr: 1e-2, weightDecay: 0 });
    opt.step();
    for (const p of params) {
      p.grad?.dispose();
      p.grad = null;
    }
    const after = step(model, lm, offset);
    assert.ok(after.loss < before.loss - 1e-3, `loss ${before.loss} -> ${after.loss} after one AdamW step`);
    t.diagnostic(`one AdamW step (lr 1e-2): loss ${before.loss} -> ${after.loss}`);
    opt.dispose();
  } finally {
    model.dispose();
  }
});

test('bf16 compute: with computeDtype f32 the reference computes what the cpu backend computes', () => {
  const ref = getBackend('reference'), cpu = getBackend('cpu');
  const a = tinyLlama(ref, 'bf16'), b = tinyLlama(cpu, 'bf16');
  try {
    a.setComputeDtype('f32');
    const la = withDora(a), lb = withDora(b);
    const ra = step(a, la, la.dropout.offset), rb = step(b, lb, lb.dropout.offset);
    assert.equal(rb.logitsDtype, 'f32');
    assertClose(rb.logits, ra.logits, { atol: 1e-4, rtol: 1e-4 }, 'cpu logits');
    assert.ok(Math.abs(ra.loss - rb.loss) < 1e-5, `loss ${rb.loss} vs reference ${ra.loss}`);
    for (const [name, g] of ra.grads) assertClose(rb.grads.get(name)?.values ?? [], g.values, { atol: 1e-5, rtol: 1e-3 }, name);
  } finally {
    a.dispose();
    b.dispose();
  }
});

test('bf16 compute: decoding with a KV cache keeps bf16 keys and values', () => {
  const ref = getBackend('reference');
  const model = tinyLlama(ref, 'bf16');
  try {
    scope(() => {
      const { ids } = batch(ref);
      const full = model.forward(ids);
      const cache = model.createCache(B, T);
      assert.equal(cache.dtype, 'bf16');
      const stepwise: Tensor[] = [];
      const rows = values(ids);
      for (let t = 0; t < T; t++) {
        const one = tensor([rows[t], rows[T + t]], [B, 1], { dtype: 'int32', device: ref });
        stepwise.push(model.forward(one, { cache }));
      }
      assert.ok(stepwise.every((l) => l.dtype === 'bf16'));
      const want = values(full);
      const V = VOCAB;
      const got = new Float64Array(B * T * V);
      stepwise.forEach((l, t) => {
        const v = values(l);
        for (let b = 0; b < B; b++) got.set(v.subarray(b * V, (b + 1) * V), (b * T + t) * V);
      });
      // The cached and full passes round the same values in a different grouping.
      assertClose(got, want, { atol: 0.03, rtol: 0.03 }, 'cached logits');
      cache.dispose();
    });
  } finally {
    model.dispose();
  }
});

test('bf16 compute: the same model on cuda agrees with the reference bf16 result', (t) => {
  if (process.env.FINLORA_DEVICE !== 'cuda') {
    t.skip('set FINLORA_DEVICE=cuda to run the bf16 model on the GPU');
    return;
  }
  const ref = getBackend('reference'), cuda = getBackend('cuda');
  const a = tinyLlama(ref, 'bf16'), b = tinyLlama(cuda, 'bf16');
  try {
    assert.equal(b.computeDtype, 'bf16');
    const la = withDora(a), lb = withDora(b);
    const ra = step(a, la, la.dropout.offset), rb = step(b, lb, lb.dropout.offset);
    assert.equal(rb.logitsDtype, 'bf16');
    assert.equal(rb.lossDtype, 'f32');
    assert.ok(Math.abs(ra.loss - rb.loss) <= 1e-2 * Math.abs(ra.loss), `cuda loss ${rb.loss} vs reference ${ra.loss}`);
    assertClose(rb.logits, ra.logits, { atol: 0.03, rtol: 0.03 }, 'cuda logits');
    let worst = 1;
    for (const [name, g] of ra.grads) {
      const c = cosine(rb.grads.get(name)?.values ?? [], g.values);
      assert.ok(c > 0.99, `${name}: cosine similarity ${c} with the reference gradient`);
      worst = Math.min(worst, c);
    }
    t.diagnostic(`cuda bf16 loss ${rb.loss}, reference bf16 ${ra.loss}; lowest gradient cosine similarity ${worst}`);
  } finally {
    a.dispose();
    b.dispose();
  }
});
