// `finlora merge` with a quantized base, as users run it (the built CLI in a child
// process) on the PEFT adapter fixtures: with --quant-bits over a float base, and over a
// checkpoint saved by bitsandbytes. The merged weights must be the LoRA / DoRA formulas
// applied to the dequantized W (computed here in f64 from the adapter file and the
// quantized weights), the written model must compute what the quantized base with the
// adapter computes (not the float base with it), and stderr must warn about the rounding
// with the measured logit difference.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { loadPeftAdapter } from '../../src/adapters/peft.js';
import { noGrad } from '../../src/autograd/tape.js';
import { withSafetensors } from '../../src/io/safetensors.js';
import { LlamaForCausalLM } from '../../src/models/llama/model.js';
import { Linear } from '../../src/nn/linear.js';
import { tensor } from '../../src/ops/creation.js';
import { dequantize } from '../../src/quant/ops.js';
import type { QuantFormat } from '../../src/quant/weight.js';
import { scope } from '../../src/tensor/tensor.js';
import { values } from '../helpers.js';
import { writeBnbModel } from './model_dirs.js';

const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const ADAPTERS = fileURLToPath(new URL('../../../test/fixtures/adapters/', import.meta.url));
const FIXTURE = fileURLToPath(new URL('../../../test/fixtures/models/llama3_gqa/', import.meta.url));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-quant-merge-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const PROBE = [3, 141, 59, 26, 53, 58, 97, 93, 238, 46, 2, 64, 33, 83, 27, 95];

function finlora(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, FINLORA_DEBUG: '' }, timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function logitsOf(model: LlamaForCausalLM): Float32Array {
  return noGrad(() => scope(() => Float32Array.from(values(model.forward(tensor(PROBE, [1, PROBE.length], { dtype: 'int32', device: model.backend }))))));
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** The merged model directory's tensors, by name, in f32. */
function mergedTensors(dir: string): Map<string, Float32Array> {
  const index = JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
  return new Map(Object.entries(index.weight_map).map(([n, shard]) => [n, withSafetensors(path.join(dir, shard), (f) => Float32Array.from(f.read(n)))]));
}

/** The base's weights as the quantized model holds them: dequantized projections, the rest as loaded. */
function quantizedBaseWeights(dir: string, quant?: QuantFormat): Map<string, Float32Array> {
  const model = LlamaForCausalLM.fromPretrained(dir, quant === undefined ? {} : { quant });
  try {
    const out = new Map<string, Float32Array>();
    const modules = new Map([...model.namedModules()].filter((e): e is [string, Linear] => e[1] instanceof Linear));
    for (const [name, t] of model.namedParameters()) {
      const q = modules.get(name.replace(/\.weight$/, ''))?.quantized ?? null;
      out.set(name, q === null ? Float32Array.from(values(t)) : scope(() => Float32Array.from(values(dequantize(q)))));
    }
    return out;
  } finally {
    model.dispose();
  }
}

/** W' by PEFT's formulas in f64 from W [out, in] and the adapter file: W + s·B·A, or DoRA's m/‖W + s·B·A‖ ⊙ (W + s·B·A). */
function expectedMerge(w: Float32Array, adapter: string, module: string): Float64Array {
  const cfg = JSON.parse(fs.readFileSync(path.join(adapter, 'adapter_config.json'), 'utf8')) as { r: number; lora_alpha: number; use_dora: boolean };
  const key = `base_model.model.${module}`;
  return withSafetensors(path.join(adapter, 'adapter_model.safetensors'), (f) => {
    const A = f.read(`${key}.lora_A.weight`), B = f.read(`${key}.lora_B.weight`);
    const [r, inF] = f.info(`${key}.lora_A.weight`).shape;
    const out = w.length / inF;
    const s = cfg.lora_alpha / cfg.r;
    assert.equal(r, cfg.r);
    const merged = new Float64Array(w.length);
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inF; i++) {
        let ba = 0;
        for (let k = 0; k < r; k++) ba += B[o * r + k] * A[k * inF + i];
        merged[o * inF + i] = w[o * inF + i] + s * ba;
      }
    }
    if (!cfg.use_dora) return merged;
    const m = f.read(`${key}.lora_magnitude_vector`);
    for (let o = 0; o < out; o++) {
      let n = 0;
      for (let i = 0; i < inF; i++) n += merged[o * inF + i] ** 2;
      const g = m[o] / Math.sqrt(n);
      for (let i = 0; i < inF; i++) merged[o * inF + i] *= g;
    }
    return merged;
  });
}

function warning(stderr: string, format: QuantFormat): number {
  const m = new RegExp(`^warning: the base is quantized \\(${format}, 14 Linear layers\\): the merged weights are its dequantized values plus the adapter, so they carry the quantization's rounding and differ from the original float base plus the adapter; largest logit difference against the quantized base with the adapter unmerged: (\\S+)\\n$`).exec(stderr);
  assert.ok(m !== null, `no warning in: ${stderr}`);
  return Number(m[1]);
}

/** Checks a merged directory against the formulas on the dequantized base, and its logits against the quantized model with the adapter. */
function checkMerged(out: string, adapterName: string, base: Map<string, Float32Array>, quantized: () => LlamaForCausalLM, reported: number): void {
  const adapter = path.join(ADAPTERS, adapterName, 'adapter');
  const targets = (JSON.parse(fs.readFileSync(path.join(adapter, 'adapter_config.json'), 'utf8')) as { target_modules: string[] }).target_modules;
  const merged = mergedTensors(out);
  assert.deepEqual([...merged.keys()].sort(), [...base.keys()].sort());
  for (const [name, w] of base) {
    const got = merged.get(name)!;
    const module = name.replace(/\.weight$/, '');
    if (!targets.some((t) => module.endsWith(`.${t}`))) {
      assert.deepEqual(got, w, `${name}: not adapted, written as the quantized base holds it`);
      continue;
    }
    const want = expectedMerge(w, adapter, module);
    const scale = Math.max(...Array.from(want, Math.abs));
    assert.ok(maxAbsDiff(got, want) <= 2e-6 * scale, `${name}: merged weight off by ${maxAbsDiff(got, want)}`);
  }
  const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
  assert.ok(!('quantization_config' in config), 'the merged model is not quantized');
  // The written model computes what the quantized base with the adapter computes.
  const q = quantized();
  const written = LlamaForCausalLM.fromPretrained(out);
  try {
    // The point is the merge arithmetic: both models compute in f32 (a quantized base would
    // default to bf16 activations on a GPU, whose rounding, ~0.03 here, would hide it).
    q.setComputeDtype('f32');
    assert.equal(written.computeDtype, 'f32');
    loadPeftAdapter(adapter, q);
    const want = logitsOf(q);
    const got = logitsOf(written);
    const d = maxAbsDiff(got, want);
    assert.ok(d < 1e-4, `merged vs quantized base + adapter: ${d}`);
    assert.ok(Math.abs(d - reported) <= 1e-6, `reported ${reported}, measured ${d}`);
  } finally {
    q.dispose();
    written.dispose();
  }
}

test('finlora merge --quant-bits 8 / 4: DoRA and LoRA merged into the dequantized base, a warning with the logit difference', () => {
  for (const [adapterName, bits] of [['dora_qkv', '8'], ['dora_qkv', '4'], ['lora_plain', '4']] as const) {
    const format: QuantFormat = bits === '8' ? 'int8' : 'nf4';
    const out = path.join(tmp, `${adapterName}-q${bits}`);
    const r = finlora('merge', '--model', FIXTURE, '--adapter', path.join(ADAPTERS, adapterName, 'adapter'), '--out', out, '--quant-bits', bits);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^merged ${adapterName.startsWith('dora') ? 'DoRA' : 'LoRA'} adapter \\(\\d+ layers\\) into .*: 1 shard, .* of f32 weights\\n`));
    const reported = warning(r.stderr, format);
    assert.ok(r.stdout.includes(`merged vs unmerged, on a 16-token probe: ${reported.toExponential(3)}`));
    checkMerged(out, adapterName, quantizedBaseWeights(FIXTURE, format), () => LlamaForCausalLM.fromPretrained(FIXTURE, { quant: format }), reported);
    // ... which is not the float base with the adapter: the quantization's rounding shows.
    const written = LlamaForCausalLM.fromPretrained(out);
    const adapted = LlamaForCausalLM.fromPretrained(FIXTURE);
    try {
      loadPeftAdapter(path.join(ADAPTERS, adapterName, 'adapter'), adapted);
      assert.ok(maxAbsDiff(logitsOf(written), logitsOf(adapted)) > 100 * reported, `${adapterName} ${format}: the merge carries the rounding`);
    } finally {
      written.dispose();
      adapted.dispose();
    }
  }
});

test('finlora merge over a checkpoint saved by bitsandbytes: merged without --quant-bits, written in bf16, config without quantization_config', () => {
  const bnb = path.join(tmp, 'bnb-nf4');
  const q = LlamaForCausalLM.fromPretrained(FIXTURE, { quant: 'nf4' });
  try {
    writeBnbModel(bnb, q, FIXTURE, 'nf4');
  } finally {
    q.dispose();
  }
  const out = path.join(tmp, 'bnb-merged');
  const r = finlora('merge', '--model', bnb, '--adapter', path.join(ADAPTERS, 'dora_qkv', 'adapter'), '--out', out);
  assert.equal(r.status, 0, r.stderr);
  checkMerged(out, 'dora_qkv', quantizedBaseWeights(bnb), () => LlamaForCausalLM.fromPretrained(bnb), warning(r.stderr, 'nf4'));

  const out16 = path.join(tmp, 'bnb-merged-bf16');
  const r16 = finlora('merge', '--model', bnb, '--adapter', path.join(ADAPTERS, 'dora_qkv', 'adapter'), '--out', out16, '--dtype', 'bf16');
  assert.equal(r16.status, 0, r16.stderr);
  const config = JSON.parse(fs.readFileSync(path.join(out16, 'config.json'), 'utf8')) as Record<string, unknown>;
  assert.equal(config.dtype, 'bfloat16');
  assert.ok(!('quantization_config' in config));
  const shard = fs.readdirSync(out16).find((f) => f.endsWith('.safetensors'))!;
  withSafetensors(path.join(out16, shard), (f) => assert.ok(f.names().every((n) => f.info(n).format === 'BF16')));
  // bf16 rounding of W' adds to the difference, and the warning reports it.
  const d16 = warning(r16.stderr, 'nf4');
  assert.ok(d16 > 1e-4 && d16 < 0.1, `bf16 merge: ${d16}`);
});

test('finlora merge with a quantized base: bad input is one line, nothing written', () => {
  const adapter = path.join(ADAPTERS, 'dora_qkv', 'adapter');
  const usage = finlora('merge', '--model', FIXTURE, '--adapter', adapter, '--out', path.join(tmp, 'never'), '--quant-bits', '3');
  assert.equal(usage.status, 2);
  assert.match(usage.stderr, /--quant-bits must be 8 or 4, not '3'/);

  const bnb = path.join(tmp, 'bnb-int8');
  const q = LlamaForCausalLM.fromPretrained(FIXTURE, { quant: 'int8' });
  try {
    writeBnbModel(bnb, q, FIXTURE, 'int8', { edit: (e) => delete e['model.layers.1.self_attn.k_proj.SCB'] });
  } finally {
    q.dispose();
  }
  for (const [args, pattern] of [
    [['--quant-bits', '4'], /bnb-int8\/model\.safetensors: tensor "model\.layers\.0\.self_attn\.q_proj\.weight": is saved by bitsandbytes as int8, but nf4 was asked for/],
    [[], /bnb-int8\/model\.safetensors: tensor "model\.layers\.1\.self_attn\.k_proj\.SCB": missing/],
  ] as const) {
    const out = path.join(tmp, 'never');
    const r = finlora('merge', '--model', bnb, '--adapter', adapter, '--out', out, ...args);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, pattern);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.ok(!fs.existsSync(out));
  }
});
