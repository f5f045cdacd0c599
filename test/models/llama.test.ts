// Llama-family models against transformers: each fixture in test/fixtures/models (made
// by scripts/make_model_fixtures.py) holds a model directory and what transformers 5.17
// computed for it in f32. finlora must give the same logits (1e-4 absolute), the same
// shifted loss, and the same greedy tokens, alone and in a left-padded batch; bf16 and
// f16 storage within stated tolerances. Then the loader's bad-input cases: each names
// the file and tensor and leaves nothing allocated.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { backward, noGrad } from '../../src/autograd/tape.js';
import type { Backend } from '../../src/backend/backend.js';
import { defaultBackend, getBackend } from '../../src/backend/registry.js';
import { SafetensorsError, withSafetensors, writeSafetensors } from '../../src/io/safetensors.js';
import { CheckpointError } from '../../src/models/checkpoint.js';
import { ConfigError } from '../../src/models/llama/config.js';
import { LlamaForCausalLM, type LoadOptions } from '../../src/models/llama/model.js';
import { causalLmLoss } from '../../src/models/loss.js';
import { greedyGenerate } from '../../src/models/generate.js';
import { resolveBackend, tensor } from '../../src/ops/creation.js';
import { assign } from '../../src/ops/inplace.js';
import { cast } from '../../src/ops/view.js';
import { scope, type Tensor } from '../../src/tensor/tensor.js';
import { assertClose } from '../helpers.js';

const FIXTURES = new URL('../../../test/fixtures/models/', import.meta.url).pathname;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-llama-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
// Models run on the default device (FINLORA_DEVICE, else cpu); files are rewritten through cpu tensors.
const device = defaultBackend();
const cpu = getBackend('cpu');

interface Reference {
  inputIds: number[][];
  logits: Float32Array;
  loss: number;
  paddedIds: number[][];
  paddedMask: number[][];
  paddedPositions: number[][];
  paddedLogits: Float32Array;
  promptIds: number[][];
  greedyIds: number[][];
  batchPromptIds: number[][];
  batchPromptMask: number[][];
  batchGreedyIds: number[][];
}

function rows(data: ArrayLike<number>, shape: readonly number[]): number[][] {
  const [B, T] = shape;
  return Array.from({ length: B }, (_, b) => Array.from({ length: T }, (_, t) => data[b * T + t]));
}

function reference(name: string): Reference {
  return withSafetensors(path.join(FIXTURES, name, 'reference.safetensors'), (f) => {
    const ids = (n: string) => rows(f.read(n), f.info(n).shape);
    const floats = (n: string) => Float32Array.from(f.read(n));
    return {
      inputIds: ids('input_ids'),
      logits: floats('logits'),
      loss: f.read('loss')[0],
      paddedIds: ids('padded_ids'),
      paddedMask: ids('padded_mask'),
      paddedPositions: ids('padded_positions'),
      paddedLogits: floats('padded_logits'),
      promptIds: ids('prompt_ids'),
      greedyIds: ids('greedy_ids'),
      batchPromptIds: ids('batch_prompt_ids'),
      batchPromptMask: ids('batch_prompt_mask'),
      batchGreedyIds: ids('batch_greedy_ids'),
    };
  });
}

function idTensor(ids: number[][]): Tensor {
  return tensor(ids.flat(), [ids.length, ids[0].length], { dtype: 'int32' });
}

function logitsOf(model: LlamaForCausalLM, ids: number[][], opts: { positions?: number[][]; mask?: number[][] } = {}): Float32Array {
  return noGrad(() =>
    scope(() => {
      const keyMask = opts.mask === undefined ? undefined : tensor(opts.mask.flat(), [opts.mask.length, opts.mask[0].length]);
      const out = model.forward(idTensor(ids), { positions: opts.positions, keyMask }).toArray();
      return Float32Array.from(out);
    }),
  );
}

/** The entries of [B, T, V] logits at positions where mask is 1. */
function unmasked(logits: Float32Array, mask: number[][], V: number): Float32Array {
  const out: number[] = [];
  mask.forEach((row, b) => row.forEach((m, t) => {
    if (m === 1) for (let v = 0; v < V; v++) out.push(logits[(b * row.length + t) * V + v]);
  }));
  return Float32Array.from(out);
}

function load(name: string, opts: LoadOptions = {}): LlamaForCausalLM {
  return LlamaForCausalLM.fromPretrained(path.join(FIXTURES, name), { device, ...opts });
}

const FIXTURE_NAMES = ['llama3_gqa', 'mistral_sharded', 'qwen2_bias_tied', 'llama_tied_bf16'];

for (const name of FIXTURE_NAMES) {
  describe(`${name} against transformers`, () => {
    const ref = reference(name);
    const model = load(name);
    after(() => model.dispose());
    const V = model.config.vocabSize;

    test('f32 logits within 1e-4', () => {
      assertClose(logitsOf(model, ref.inputIds), ref.logits, { atol: 1e-4, rtol: 0 }, 'logits');
    });

    test('left-padded batch with explicit positions and a key mask: unpadded logits within 1e-4', () => {
      const got = logitsOf(model, ref.paddedIds, { positions: ref.paddedPositions, mask: ref.paddedMask });
      assertClose(unmasked(got, ref.paddedMask, V), unmasked(ref.paddedLogits, ref.paddedMask, V), { atol: 1e-4, rtol: 0 }, 'padded logits');
    });

    test('shifted next-token loss', () => {
      const loss = noGrad(() => scope(() => {
        const ids = idTensor(ref.inputIds);
        return causalLmLoss(model.forward(ids), ids).item();
      }));
      assert.ok(Math.abs(loss - ref.loss) <= 1e-5, `loss ${loss}, transformers ${ref.loss}`);
    });

    test('greedy decoding with the KV cache gives the same 8 tokens', () => {
      assert.deepEqual(greedyGenerate(model, ref.promptIds, { maxNewTokens: 8 }), ref.greedyIds);
    });

    test('greedy decoding of a left-padded batch gives the same tokens', () => {
      assert.deepEqual(greedyGenerate(model, ref.batchPromptIds, { maxNewTokens: 8, attentionMask: ref.batchPromptMask, padTokenId: 0 }), ref.batchGreedyIds);
    });
  });
}

test('parameter names are the checkpoint names; lm_head is absent when tied; Qwen2 has q/k/v biases only', () => {
  const names = (n: string) => {
    const m = load(n);
    const out = [...m.namedParameters()].map(([k]) => k).sort();
    m.dispose();
    return out;
  };
  const llama = names('llama3_gqa');
  const stored = withSafetensors(path.join(FIXTURES, 'llama3_gqa', 'model.safetensors'), (f) => f.names());
  assert.deepEqual(llama, stored);
  assert.ok(llama.includes('lm_head.weight'));
  assert.ok(llama.includes('model.layers.1.self_attn.k_proj.weight'));
  const qwen = names('qwen2_bias_tied');
  assert.ok(!qwen.includes('lm_head.weight'));
  assert.deepEqual(qwen.filter((n) => n.endsWith('.bias')), [
    'model.layers.0.self_attn.k_proj.bias', 'model.layers.0.self_attn.q_proj.bias', 'model.layers.0.self_attn.v_proj.bias',
    'model.layers.1.self_attn.k_proj.bias', 'model.layers.1.self_attn.q_proj.bias', 'model.layers.1.self_attn.v_proj.bias',
  ]);
});

test('prefill then cached single steps give the logits of one full pass', () => {
  const model = load('mistral_sharded');
  const ref = reference('mistral_sharded');
  const ids = ref.inputIds;
  const T = ids[0].length;
  const full = logitsOf(model, ids);
  const V = model.config.vocabSize;
  const cache = model.createCache(ids.length, T);
  const stepped = new Float32Array(full.length);
  noGrad(() => {
    const put = (logits: ArrayLike<number>, t0: number, n: number) => {
      for (let b = 0; b < ids.length; b++) for (let t = 0; t < n; t++) for (let v = 0; v < V; v++) stepped[(b * T + t0 + t) * V + v] = logits[(b * n + t) * V + v];
    };
    put(scope(() => model.forward(idTensor(ids.map((r) => r.slice(0, 5))), { cache }).toArray()), 0, 5);
    for (let t = 5; t < T; t++) put(scope(() => model.forward(idTensor(ids.map((r) => [r[t]])), { cache }).toArray()), t, 1);
  });
  cache.dispose();
  model.dispose();
  assertClose(stepped, full, { atol: 1e-5, rtol: 0 }, 'cached logits');
});

// bf16 keeps 8 significant bits: each weight moves by up to 2^-9 of itself. On this
// model (logits within ±4.6) the largest logit error is about 0.03; 0.1 leaves room for
// a different summation order while still catching a wrongly converted tensor.
const BF16_ATOL = 0.1;

test(`bf16 storage of an f32 checkpoint: logits within ${BF16_ATOL} of transformers' f32, same greedy tokens`, () => {
  const ref = reference('llama3_gqa');
  // Storage is what this tests: activations stay f32 where bf16 weights would compute in bf16 by default (cuda).
  const model = load('llama3_gqa', { dtype: 'bf16', computeDtype: 'f32' });
  for (const [, t] of model.namedParameters()) assert.equal(t.dtype, 'bf16');
  const got = logitsOf(model, ref.inputIds);
  assertClose(got, ref.logits, { atol: BF16_ATOL, rtol: 0 }, 'bf16 logits');
  let worst = 0;
  for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - ref.logits[i]));
  assert.ok(worst > 1e-5, 'bf16 storage changed nothing: the weights were not rounded');
  assert.deepEqual(greedyGenerate(model, ref.promptIds, { maxNewTokens: 8 }), ref.greedyIds);
  model.dispose();
});

test('a bf16 checkpoint stored as bf16 computes exactly what transformers computes from its weights in f32', () => {
  const ref = reference('llama_tied_bf16');
  const model = load('llama_tied_bf16', { dtype: 'bf16', computeDtype: 'f32' });
  assertClose(logitsOf(model, ref.inputIds), ref.logits, { atol: 1e-4, rtol: 0 }, 'logits');
  model.dispose();
});

/** Merges keys into a directory's config.json. */
function editConfig(dir: string, patch: Record<string, unknown>): void {
  const file = path.join(dir, 'config.json');
  const cfg: unknown = JSON.parse(fs.readFileSync(file, 'utf8'));
  assert.ok(typeof cfg === 'object' && cfg !== null);
  fs.writeFileSync(file, JSON.stringify({ ...cfg, ...patch }));
}

function copyFixture(name: string, as: string): string {
  const dst = path.join(tmp, as);
  fs.cpSync(path.join(FIXTURES, name), dst, { recursive: true });
  return dst;
}

/** Rewrites a directory's model.safetensors through fn(name, tensor) -> tensors to write. */
function rewriteWeights(dir: string, fn: (tensors: Map<string, Tensor>) => Record<string, Tensor>): void {
  const file = path.join(dir, 'model.safetensors');
  scope(() => {
    const tensors = withSafetensors(file, (f) => new Map(f.names().map((n) => [n, f.tensor(n, { device: cpu })])));
    writeSafetensors(file, fn(tensors));
  });
}

test('an F16 checkpoint loads (converted on load)', () => {
  const dir = copyFixture('llama3_gqa', 'f16');
  rewriteWeights(dir, (ts) => Object.fromEntries([...ts].map(([n, t]) => [n, cast(t, 'f16')])));
  const ref = reference('llama3_gqa');
  const model = LlamaForCausalLM.fromPretrained(dir, { device });
  for (const [, t] of model.namedParameters()) assert.equal(t.dtype, 'f32');
  assertClose(logitsOf(model, ref.inputIds), ref.logits, { atol: 0.02, rtol: 0 }, 'f16 logits');
  model.dispose();
});

/** Loading fails with an error of `type` whose message matches every pattern, and leaves nothing allocated. */
function failsToLoad(dir: string, type: new (...a: never[]) => Error, patterns: RegExp[], opts: LoadOptions = {}): void {
  const on = resolveBackend(opts.device ?? device);
  const before = on.liveBytes();
  assert.throws(() => LlamaForCausalLM.fromPretrained(dir, { device, ...opts }), (e: unknown) => {
    assert.ok(e instanceof type, `expected ${type.name}, got ${String(e)}`);
    for (const p of patterns) assert.match(e.message, p);
    return true;
  });
  assert.equal(on.liveBytes(), before, 'a failed load left memory allocated');
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('bad model directories', () => {
  test('missing config.json', () => {
    const dir = copyFixture('llama3_gqa', 'no-config');
    fs.rmSync(path.join(dir, 'config.json'));
    failsToLoad(dir, ConfigError, [new RegExp(`^${esc(path.join(dir, 'config.json'))}: missing`)]);
  });

  test('missing weights; a PyTorch .bin is named as unsupported', () => {
    const dir = copyFixture('llama3_gqa', 'no-weights');
    fs.rmSync(path.join(dir, 'model.safetensors'));
    failsToLoad(dir, CheckpointError, [new RegExp(`^${esc(dir)}: no model.safetensors or model.safetensors.index.json$`)]);
    fs.writeFileSync(path.join(dir, 'pytorch_model.bin'), 'x');
    failsToLoad(dir, CheckpointError, [/found pytorch_model\.bin: only safetensors weights are supported/]);
  });

  test('unsupported architecture is named', () => {
    const dir = copyFixture('llama3_gqa', 'mixtral');
    editConfig(dir, { architectures: ['MixtralForCausalLM'] });
    failsToLoad(dir, ConfigError, [/config\.json: unsupported architecture 'MixtralForCausalLM'/]);
  });

  test('a missing tensor is named', () => {
    const dir = copyFixture('llama3_gqa', 'missing-tensor');
    rewriteWeights(dir, (ts) => Object.fromEntries([...ts].filter(([n]) => n !== 'model.layers.1.mlp.up_proj.weight')));
    failsToLoad(dir, CheckpointError, [new RegExp(esc(path.join(dir, 'model.safetensors'))), /missing tensor "model\.layers\.1\.mlp\.up_proj\.weight"/]);
  });

  test('a shape that does not match config.json names the file, tensor and both shapes', () => {
    const dir = copyFixture('llama3_gqa', 'bad-shape');
    editConfig(dir, { intermediate_size: 128 });
    failsToLoad(dir, SafetensorsError, [/model\.safetensors: tensor "model\.layers\.0\.mlp\.gate_proj\.weight": shape \[96, 64\] does not match \[128, 64\]/]);
  });

  test('an unexpected tensor is named (e.g. a bias the config does not declare)', () => {
    const dir = copyFixture('llama3_gqa', 'extra');
    rewriteWeights(dir, (ts) => ({ ...Object.fromEntries(ts), 'model.layers.0.self_attn.o_proj.bias': tensor(new Float32Array(64), [64], { device: cpu }) }));
    failsToLoad(dir, CheckpointError, [/unexpected tensor "model\.layers\.0\.self_attn\.o_proj\.bias"/]);
  });

  test('a truncated shard is named', () => {
    const dir = copyFixture('mistral_sharded', 'truncated');
    const shard = path.join(dir, 'model-00003-of-00004.safetensors');
    fs.truncateSync(shard, fs.statSync(shard).size - 100);
    failsToLoad(dir, SafetensorsError, [new RegExp(`^${esc(shard)}: `), /run past the end of the file/]);
  });

  test('a shard the index names is missing', () => {
    const dir = copyFixture('mistral_sharded', 'missing-shard');
    fs.rmSync(path.join(dir, 'model-00002-of-00004.safetensors'));
    failsToLoad(dir, CheckpointError, [/model\.safetensors\.index\.json: shard model-00002-of-00004\.safetensors \(holding "model\.layers\.0\.[a-z_.]+"\) is missing/]);
  });

  test('an index that places a tensor in the wrong shard, or outside the directory', () => {
    const dir = copyFixture('mistral_sharded', 'bad-index');
    const indexFile = path.join(dir, 'model.safetensors.index.json');
    const index = JSON.parse(fs.readFileSync(indexFile, 'utf8')) as { weight_map: Record<string, string> };
    fs.writeFileSync(indexFile, JSON.stringify({ weight_map: { ...index.weight_map, 'model.norm.weight': 'model-00001-of-00004.safetensors' } }));
    failsToLoad(dir, SafetensorsError, [/model-00001-of-00004\.safetensors: the index model\.safetensors\.index\.json places tensor "model\.norm\.weight" here, but the file does not hold it/]);
    fs.writeFileSync(indexFile, JSON.stringify({ weight_map: { ...index.weight_map, 'model.norm.weight': '../model.safetensors' } }));
    failsToLoad(dir, CheckpointError, [/"weight_map" entry for "model\.norm\.weight" is not a file name in the model directory/]);
    fs.writeFileSync(indexFile, '{"weight_map": ');
    failsToLoad(dir, CheckpointError, [/model\.safetensors\.index\.json: cannot read the shard index/]);
  });

  test('a backend without an op the model needs is refused before any weight is read', () => {
    const partial: Backend = {
      name: 'partial', kernels: { ...cpu.kernels, attention: undefined },
      alloc: cpu.alloc.bind(cpu), free: cpu.free.bind(cpu), write: () => assert.fail('a weight was written'),
      read: cpu.read.bind(cpu), sync: cpu.sync.bind(cpu), liveBytes: cpu.liveBytes.bind(cpu),
    };
    failsToLoad(path.join(FIXTURES, 'llama3_gqa'), Error, [/LlamaForCausalLM cannot run on backend 'partial': missing op attention$/], { device: partial });
  });
});

test('forward refuses sequences longer than a sliding window, and malformed inputs', () => {
  const dir = copyFixture('mistral_sharded', 'window');
  editConfig(dir, { sliding_window: 6 });
  const model = LlamaForCausalLM.fromPretrained(dir, { device });
  const ids = reference('mistral_sharded').inputIds;
  assert.doesNotThrow(() => logitsOf(model, ids.map((r) => r.slice(0, 6))));
  assert.throws(() => logitsOf(model, ids), /MistralForCausalLM: 8 positions exceed the sliding_window of 6 in config\.json/);
  noGrad(() => scope(() => {
    assert.throws(() => model.forward(tensor([1, 2, 3], [1, 3])), /input ids must be int32 \[batch, seq\]/);
    assert.throws(() => model.forward(idTensor([[1, 2]]), { keyMask: tensor([1, 1, 1], [1, 3]) }), /keyMask must be \[1, 2\]/);
  }));
  model.dispose();
});

test('gradients flow through the model: a norm weight and a projection weight match central differences of the loss', () => {
  const model = load('llama3_gqa');
  const ids = reference('llama3_gqa').inputIds;
  const layer = model.model.layers.at(1);
  const targets: [Tensor, number[]][] = [[layer.input_layernorm.weight, [0, 17, 63]], [model.model.layers.at(0).self_attn.k_proj.weight, [5, 700, 2047]]];
  const loss = () => scope(() => {
    const t = idTensor(ids);
    return causalLmLoss(model.forward(t), t).item();
  });
  for (const [w] of targets) w.requiresGrad = true;
  scope(() => {
    const t = idTensor(ids);
    backward(causalLmLoss(model.forward(t), t));
  });
  for (const [w, entries] of targets) {
    const grad = w.grad;
    assert.ok(grad !== null, 'no gradient reached the weight');
    const g = grad.toArray();
    const values = Float32Array.from(w.toArray());
    for (const i of entries) {
      const h = 1e-2;
      const at = (x: number) => {
        const v = Float32Array.from(values);
        v[i] = x;
        assign(w, tensor(v, w.shape, { device: w.backend }));
        return noGrad(loss);
      };
      const fd = (at(values[i] + h) - at(values[i] - h)) / (2 * h);
      assert.ok(Math.abs(g[i] - fd) <= 2e-4 + 1e-2 * Math.abs(fd), `d loss / d ${w.name}[${i}]: backward ${g[i]}, central difference ${fd}`);
    }
    assign(w, tensor(values, w.shape, { device: w.backend }));
  }
  model.dispose();
});
