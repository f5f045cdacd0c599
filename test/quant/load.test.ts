// LlamaForCausalLM.fromPretrained(dir, { quant }): the Linear weights quantized as they
// are read give the model that loading densely and then quantizeModel gives, bit for
// bit; loading never holds the dense model (peak native bytes); checkpoints saved by
// bitsandbytes (written here in its layout) load straight into quantized weights; and
// bad quantized checkpoints fail through the loader with the reader's error, naming
// the tensor and the file, leaving nothing allocated.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { noGrad } from '../../src/autograd/tape.js';
import { loadCpuAddon } from '../../src/backend/cpu/addon.js';
import { CudaBackend } from '../../src/backend/cuda/cuda.js';
import { defaultBackend } from '../../src/backend/registry.js';
import type { HostTensor } from '../../src/io/safetensors.js';
import { CheckpointError } from '../../src/models/checkpoint.js';
import { LlamaForCausalLM, type WeightDType } from '../../src/models/llama/model.js';
import { Linear } from '../../src/nn/linear.js';
import { tensor } from '../../src/ops/creation.js';
import { QuantizedCheckpointError } from '../../src/quant/checkpoint.js';
import { quantizeModel } from '../../src/quant/model.js';
import type { QuantFormat } from '../../src/quant/weight.js';
import { quantizeBase, quantLoadOption } from '../../src/train/quantize.js';
import { Rng } from '../../src/tensor/rng.js';
import { scope } from '../../src/tensor/tensor.js';
import { values } from '../helpers.js';
import { type Entries, llamaLayout, type LlamaShape, writeBnbModel, writeRandomLlama } from './model_dirs.js';

const MODELS = new URL('../../../test/fixtures/models/', import.meta.url).pathname;
const FIXTURE = path.join(MODELS, 'llama3_gqa');
// The backend the models load on (the default device: cuda under FINLORA_DEVICE=cuda),
// whose live bytes these tests count; its addon's peak where the test measures one.
const device = defaultBackend();
const peakMeter = (): { peakBytes(): number; resetPeak(): void } => (device instanceof CudaBackend ? device : loadCpuAddon());
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-quant-load-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const IDS = (() => {
  const rng = new Rng(11);
  return Array.from({ length: 16 }, () => rng.int(256));
})();

function logits(model: LlamaForCausalLM): Float32Array {
  return noGrad(() => scope(() => Float32Array.from(values(model.forward(tensor(IDS, [2, 8], { dtype: 'int32', device: model.backend }))))));
}

function linears(model: LlamaForCausalLM): [string, Linear][] {
  return [...model.namedModules()].filter((e): e is [string, Linear] => e[1] instanceof Linear);
}

/** Every quantized tensor of every Linear, as host arrays, by module. */
function quantizedTensors(model: LlamaForCausalLM): Map<string, number[][]> {
  return new Map(linears(model).filter(([, m]) => m.quantized !== null).map(([n, m]) => [n, m.quantized!.tensors().map((t) => Array.from(t.toArray()))]));
}

function load(dir: string, opts: { quant?: QuantFormat; dtype?: WeightDType } = {}): LlamaForCausalLM {
  return LlamaForCausalLM.fromPretrained(dir, opts);
}

test('quant int8 / nf4 on load: the same model as loading densely then quantizeModel, bit for bit, on every fixture', () => {
  const cases: [string, WeightDType][] = [['llama3_gqa', 'f32'], ['llama3_gqa', 'bf16'], ['llama_tied_bf16', 'f32'], ['mistral_sharded', 'f32'], ['qwen2_bias_tied', 'f32']];
  for (const [fixture, dtype] of cases) {
    for (const format of ['int8', 'nf4'] as const) {
      const what = `${fixture} ${dtype} ${format}`;
      const dense = load(path.join(MODELS, fixture), { dtype });
      const direct = load(path.join(MODELS, fixture), { dtype, quant: format });
      try {
        const report = quantizeModel(dense, format);
        assert.equal(report.quantized.length, 14, what);
        const got = quantizedTensors(direct);
        assert.deepEqual([...got.keys()], report.quantized, `${what}: the same Linear modules are quantized (all but lm_head)`);
        const want = quantizedTensors(dense);
        for (const [name, ts] of want) assert.deepEqual(got.get(name), ts, `${what}: ${name}'s codes and scales`);
        for (const [name, m] of linears(direct)) {
          if (m.quantized === null) continue;
          assert.equal(m.quantized.dtype, dtype, `${what}: ${name} records the load dtype`);
          assert.equal(m.weight.name, `${name}.weight`);
        }
        if (direct.lm_head !== null) {
          assert.equal(direct.lm_head.quantized, null, `${what}: lm_head stays ${dtype}`);
          assert.equal(direct.lm_head.weight.dtype, dtype);
        }
        assert.equal(direct.model.embed_tokens.weight.dtype, dtype, `${what}: embeddings stay ${dtype}`);
        assert.deepEqual(logits(direct), logits(dense), `${what}: logits`);
      } finally {
        dense.dispose();
        direct.dispose();
      }
    }
  }
});

test('loading quantized never builds the dense model: the peak is the quantized model plus one projection', (t) => {
  // Projections of 256 x 768 (0.75 MiB in f32) against 6.8 MiB of projections in all;
  // an f32 checkpoint loaded in f32 needs no conversion chunk.
  const shape: LlamaShape = { hidden: 256, intermediate: 768, layers: 2, heads: 4, kvHeads: 2, vocab: 512 };
  const dir = path.join(tmp, 'random-f32');
  writeRandomLlama(dir, shape, 'f32');
  const denseBytes = llamaLayout(shape).reduce((s, [, sh]) => s + 4 * sh.reduce((a, b) => a * b, 1), 0);
  const largest = Math.max(...llamaLayout(shape).filter(([n]) => n.includes('_proj')).map(([, sh]) => 4 * sh[0] * sh[1]));
  const addon = peakMeter();
  for (const format of ['int8', 'nf4'] as const) {
    const before = device.liveBytes();
    addon.resetPeak();
    const model = load(dir, { quant: format });
    try {
      const held = device.liveBytes() - before;
      const peak = addon.peakBytes() - before;
      t.diagnostic(`${format}: dense model ${denseBytes} bytes; loaded ${held} bytes, peak while loading ${peak} bytes (largest projection ${largest} in f32)`);
      // Quantizing one projection briefly holds its block scales in f32 too (NF4: n/64 floats).
      assert.ok(peak <= held + largest + largest / 16, `${format}: peak ${peak} > ${held} held + ${largest} of one projection`);
      assert.ok(peak < 0.5 * denseBytes, `${format}: peak ${peak} is not far below the dense model's ${denseBytes}`);
    } finally {
      model.dispose();
    }
    assert.equal(device.liveBytes(), before, `${format}: dispose frees everything`);
  }
});

test('a checkpoint saved by bitsandbytes (int8; nf4 double quantized; sharded) loads straight into quantized weights', () => {
  for (const format of ['int8', 'nf4'] as const) {
    for (const sharded of [false, true]) {
      const what = `${format}${sharded ? ' sharded' : ''}`;
      const ref = load(FIXTURE, { quant: format });
      const dir = path.join(tmp, `bnb-${format}-${sharded ? 'sharded' : 'single'}`);
      try {
        writeBnbModel(dir, ref, FIXTURE, format, { sharded });
        const want = logits(ref);
        const codes = quantizedTensors(ref);
        for (const quant of [undefined, format]) {
          const m = load(dir, quant === undefined ? {} : { quant });
          try {
            assert.deepEqual(quantizedTensors(m), codes, `${what} (quant ${quant}): the saved codes and scales`);
            assert.equal(m.lm_head!.quantized, null);
            assert.deepEqual(logits(m), want, `${what} (quant ${quant}): logits`);
          } finally {
            m.dispose();
          }
        }
        const other = format === 'int8' ? 'nf4' : 'int8';
        assert.throws(() => load(dir, { quant: other }), (e: unknown) => {
          assert.ok(e instanceof QuantizedCheckpointError && e instanceof CheckpointError);
          assert.match(e.message, new RegExp(`^${dir}/model[-.].*safetensors: tensor "model\\.layers\\.0\\.self_attn\\.q_proj\\.weight": is saved by bitsandbytes as ${format}, but ${other} was asked for$`));
          return true;
        });
      } finally {
        ref.dispose();
      }
    }
  }
});

/** A damaged bitsandbytes checkpoint must fail through the loader with the reader's message, naming tensor and file. */
test('bad quantized checkpoints through the loader: the reader\'s error, naming the tensor and the file; nothing left allocated', () => {
  const M = 'model.layers.1.mlp.up_proj';
  const W = `${M}.weight`;
  const json = (s: string): HostTensor => ({ dtype: 'uint8', shape: [Buffer.byteLength(s)], data: Buffer.from(s) });
  const stateOf = (e: Entries): string => {
    const st = e[`${W}.quant_state.bitsandbytes__nf4`];
    assert.ok(st !== undefined && !('storage' in st));
    return Buffer.from(Uint8Array.from(st.data)).toString('utf8');
  };
  const cases: [string, 'int8' | 'nf4', (e: Entries) => void, string, RegExp][] = [
    ['missing SCB', 'int8', (e) => delete e[`${M}.SCB`], `${M}.SCB`, /missing \(the row scales of int8 weight/],
    ['SCB of the wrong length', 'int8', (e) => (e[`${M}.SCB`] = { dtype: 'f32', shape: [3], data: [1, 1, 1] }), `${M}.SCB`, /must hold 96 values, got shape \[3\]/],
    ['a column-major int8 layout', 'int8', (e) => (e[`${M}.weight_format`] = { dtype: 'uint8', shape: [], data: [1] }), `${M}.weight_format`, /layout 1 \(col32\) is not supported/],
    ['missing block absmax', 'nf4', (e) => delete e[`${W}.absmax`], `${W}.absmax`, /missing \(the block scales\)/],
    ['missing nested absmax', 'nf4', (e) => delete e[`${W}.nested_absmax`], `${W}.nested_absmax`, /missing/],
    ['a block size that does not divide the absmax count', 'nf4', (e) => (e[`${W}.quant_state.bitsandbytes__nf4`] = json(stateOf(e).replace('"blocksize": 64', '"blocksize": 128'))), `${W}.absmax`, /holds 96 scales, but blocksize 128 cuts the 6144 values of \[96, 64\] into 48 blocks/],
    ['a block size bitsandbytes does not have', 'nf4', (e) => (e[`${W}.quant_state.bitsandbytes__nf4`] = json(stateOf(e).replace('"blocksize": 64', '"blocksize": 100'))), `${W}.quant_state.bitsandbytes__nf4`, /blocksize 100 is not one of/],
    ['fp4', 'nf4', (e) => (e[`${W}.quant_state.bitsandbytes__nf4`] = json(stateOf(e).replace('"nf4"', '"fp4"'))), `${W}.quant_state.bitsandbytes__nf4`, /quant_type "fp4" is not supported/],
    ['a shape the config does not give', 'nf4', (e) => (e[`${W}.quant_state.bitsandbytes__nf4`] = json(stateOf(e).replace('[96, 64]', '[64, 96]'))), `${W}.quant_state.bitsandbytes__nf4`, /shape \[64, 96\] does not match \[96, 64\] expected from the model config/],
  ];
  for (const sharded of [false, true]) {
    for (const [what, format, edit, tensorName, pattern] of cases) {
      const ref = load(FIXTURE, { quant: format });
      const dir = path.join(tmp, `bad-${sharded ? 'sharded-' : ''}${what.replace(/\W+/g, '-')}`);
      try {
        writeBnbModel(dir, ref, FIXTURE, format, { edit, sharded });
      } finally {
        ref.dispose();
      }
      // The file the message names: the one holding the tensor, else the one holding the module's weight.
      const index = sharded ? (JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> }).weight_map : null;
      const file = index === null ? path.join(dir, 'model.safetensors') : path.join(dir, index[tensorName] ?? index[W]);
      const before = device.liveBytes();
      assert.throws(() => load(dir), (e: unknown) => {
        assert.ok(e instanceof QuantizedCheckpointError, `${what}: ${String(e)}`);
        assert.equal(e.tensor, tensorName, what);
        assert.ok(e.message.startsWith(`${file}: tensor ${JSON.stringify(tensorName)}: `), `${what}: "${e.message}" does not start with the file and the tensor`);
        assert.match(e.message, pattern, what);
        return true;
      });
      assert.equal(device.liveBytes(), before, `${what}: nothing left allocated`);
    }
  }
});

test('quantizing on load refuses a projection saved in a non-float dtype, naming tensor and file', () => {
  const dir = path.join(tmp, 'bad-float');
  const ref = load(FIXTURE);
  try {
    const entries: Entries = Object.fromEntries(ref.namedParameters());
    entries['model.layers.1.mlp.down_proj.weight'] = { dtype: 'int32', shape: [64, 96], data: new Int32Array(64 * 96) };
    writeBnbModel(dir, ref, FIXTURE, 'int8', { edit: (e) => Object.assign(e, entries) });
  } finally {
    ref.dispose();
  }
  const before = device.liveBytes();
  for (const quant of ['int8', 'nf4'] as const) {
    assert.throws(() => load(dir, { quant }), /model\.safetensors: tensor "model\.layers\.1\.mlp\.down_proj\.weight": dtype I32 cannot hold model weights/);
  }
  assert.equal(device.liveBytes(), before);
});

test("finetune's quant_bits: loaded quantized through quantLoadOption, quantizeBase counts the layers; a dense base is quantized in place, its dense weights freed", () => {
  for (const bits of [8, 4] as const) {
    const format = bits === 8 ? 'int8' : 'nf4';
    assert.deepEqual(quantLoadOption(bits), { quant: format });
    const loaded = load(FIXTURE, quantLoadOption(bits));
    const dense = load(FIXTURE);
    try {
      const codes = quantizedTensors(loaded);
      const q = quantizeBase(loaded, bits);
      assert.equal(q.count, 14);
      assert.deepEqual(quantizedTensors(loaded), codes, 'already quantized layers are left as loaded');
      const before = device.liveBytes();
      const d = quantizeBase(dense, bits);
      assert.equal(d.count, 14);
      const quantBytes = linears(dense).reduce((s, [, m]) => s + (m.quantized?.bytes ?? 0), 0);
      const projParams = linears(dense).reduce((s, [, m]) => s + (m.quantized?.parameters ?? 0), 0);
      assert.equal(before - device.liveBytes(), 4 * projParams - quantBytes - 14 * 4, 'the dense projections are freed (a 4-byte placeholder each stays)');
      assert.deepEqual(quantizedTensors(dense), codes);
      assert.deepEqual(logits(dense), logits(loaded));
      const [name, target] = linears(loaded)[0];
      assert.equal(q.frozenWeight(name, target)?.outFeatures, target.outFeatures);
      assert.equal(q.frozenWeight('lm_head', loaded.lm_head!), undefined);
      assert.throws(() => quantizeBase(loaded, bits === 8 ? 4 : 8), /model\.layers\.0\.self_attn\.q_proj: the base holds it as/);
    } finally {
      loaded.dispose();
      dense.dispose();
    }
  }
  assert.deepEqual(quantLoadOption(null), {});
});
