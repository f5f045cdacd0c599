// quant_bits applied to a loaded model: the decoder layers' Linears compute through
// int8 / NF4 weights (logits near the float model's, not equal), lm_head stays float,
// and DoRA's initial magnitudes are the row norms of the dequantized weights.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { noGrad } from '../../src/autograd/tape.js';
import { defaultBackend } from '../../src/backend/registry.js';
import { tensor } from '../../src/ops/creation.js';
import { rowNorm } from '../../src/ops/norm.js';
import { dequantize } from '../../src/quant/ops.js';
import { scope } from '../../src/tensor/tensor.js';
import { injectAdapters } from '../../src/train/adapters.js';
import { quantizeBase } from '../../src/train/quantize.js';
import { assertClose } from '../helpers.js';
import { tinyLlama } from './tiny.js';

function logits(model: ReturnType<typeof tinyLlama>): Float32Array {
  return noGrad(() => scope(() => Float32Array.from(model.forward(tensor(Int32Array.from([5, 77, 3, 190, 42, 8]), [1, 6], { dtype: 'int32' })).toArray())));
}

// The model lives on the default device (FINLORA_DEVICE); a backend without the quantized kernels skips.
const device = defaultBackend();
const missing = (['quantizeInt8', 'quantizeBlockwise', 'quantizedMatmul', 'dequantize'] as const).filter((op) => device.kernels[op] === undefined);
const skip = missing.length > 0 ? `backend '${device.name}' has no ${missing.join(', ')}` : false;

for (const bits of [8, 4] as const) {
  test(`quant_bits ${bits}: quantized decoder Linears, float lm_head, DoRA magnitudes from the dequantized weights`, { skip }, () => {
    const float = tinyLlama();
    const ref = logits(float);
    const floatNorms = scope(() => Float32Array.from(rowNorm(float.model.layers.at(0).self_attn.q_proj.weight).toArray()));
    float.dispose();
    const model = tinyLlama();
    const q = quantizeBase(model, bits);
    assert.equal(q.count, 2 * 7);
    const got = logits(model);
    const maxDiff = got.reduce((m, v, i) => Math.max(m, Math.abs(v - ref[i])), 0);
    assert.ok(maxDiff > 0, 'the quantized base is not the float one');
    assert.ok(maxDiff < (bits === 8 ? 0.05 : 0.5), `logits within the format's error: ${maxDiff}`);
    assert.equal(q.frozenWeight('lm_head', model.lm_head!), undefined);
    const q0 = model.model.layers.at(0).self_attn.q_proj;
    const { target } = injectAdapters(model, { r: 2, alpha: 4, dropout: 0, targetModules: ['q_proj'], useDora: true, useRslora: false, baseModel: 't', seed: 1, frozenWeight: q.frozenWeight });
    const m0 = target.modules[0].magnitude!;
    // quantizeBase freed the dense weight: the layer holds only its quantized form.
    const held = q0.quantized;
    assert.ok(held !== null, 'q_proj holds a quantized weight');
    assert.equal(held.format, bits === 8 ? 'int8' : 'nf4');
    const expected = scope(() => Float32Array.from(rowNorm(dequantize(held)).toArray()));
    assertClose(m0.toArray(), expected, { atol: 1e-6, rtol: 1e-6 }, 'magnitudes');
    assert.ok(floatNorms.some((v, i) => v !== expected[i]), 'and not the float weights');
    q.dispose();
    model.dispose();
  });
}
