// LlamaForCausalLM — also MistralForCausalLM and Qwen2ForCausalLM, which share its
// layout — as transformers defines it, with the module tree and parameter names of a
// Hugging Face checkpoint:
//
//   model.embed_tokens                       Embedding [vocab, hidden]
//   model.layers.N.input_layernorm           RMSNorm
//   model.layers.N.self_attn.{q,k,v,o}_proj  Linear (q/k/v bias for Qwen2)
//   model.layers.N.post_attention_layernorm  RMSNorm
//   model.layers.N.mlp.{gate,up,down}_proj   Linear, down(silu(gate(x)) * up(x))
//   model.norm                               RMSNorm
//   lm_head                                  Linear [vocab, hidden]; absent when the
//                                            embeddings are tied (embed_tokens is used)
//
// A decoder layer is pre-norm: h += o_proj(attn(rope(q), rope(k), v)), then
// h += mlp(post_attention_layernorm(h)). Attention is causal with grouped-query heads.
// Weights are frozen and stored in f32 or bf16, or (fromPretrained's `quant`, and
// checkpoints saved by bitsandbytes) the Linear projections in int8 / NF4 (src/quant/).
// Activations and logits are in the model's computeDtype: bf16 by default on a backend
// that computes in bf16 (cuda) when the weights are bf16 or quantized, as a bf16 PyTorch
// model runs; f32 otherwise. The embedding output is made in that dtype and every op
// after it follows its inputs (src/ops/util.ts computeDtype); RMSNorm weights, rope
// tables, attention's lse and the loss stay f32.
import type { Backend, KernelName } from '../../backend/backend.js';
import { backwardFrom, isGradEnabled, noGrad } from '../../autograd/tape.js';
import { attention } from '../../ops/attention.js';
import { add } from '../../ops/binary.js';
import { indexSelect } from '../../ops/concat.js';
import { resolveBackend } from '../../ops/creation.js';
import { type ComputeDType, computesBf16 } from '../../ops/util.js';
import { linear, linearGrads } from '../../ops/matmul.js';
import { rope, ropeInvFreq, rotaryTables, type RopeConfig } from '../../ops/rope.js';
import { siluMul } from '../../ops/swiglu.js';
import { cast, reshape, slice, transpose } from '../../ops/view.js';
import { Embedding } from '../../nn/embedding.js';
import { Linear, quantizedPlaceholder } from '../../nn/linear.js';
import { Module } from '../../nn/module.js';
import { ModuleList } from '../../nn/module_list.js';
import { RMSNorm } from '../../nn/rms_norm.js';
import { QuantizedLoading } from '../../quant/load.js';
import type { QuantFormat } from '../../quant/weight.js';
import { formatShape } from '../../tensor/shape.js';
import { empty, scope, type Tensor } from '../../tensor/tensor.js';
import { Checkpoint, CheckpointError } from '../checkpoint.js';
import { KVCache } from '../kv_cache.js';
import { type LlamaConfig, readLlamaConfig } from './config.js';

/** Storage formats for the frozen base weights. */
export type WeightDType = 'f32' | 'bf16';

export interface LoadOptions {
  /** Storage dtype of the weights (default f32); checkpoint tensors are converted to it. */
  dtype?: WeightDType;
  device?: string | Backend;
  /**
   * Hold every Linear weight but lm_head in a bitsandbytes format (int8 rows, or NF4
   * with double quantization), quantized as it is read: the dense model is never built.
   * A checkpoint saved quantized by bitsandbytes is read as saved, with or without this
   * option (and must be in this format when it is given). See src/quant/load.ts.
   */
  quant?: QuantFormat;
  /**
   * The activation dtype (default: bf16 on a backend that computes in bf16 when the
   * weights are bf16 or quantized, else f32). bf16 on a backend without bf16 compute is
   * an error.
   */
  computeDtype?: ComputeDType;
}

export interface ForwardOptions {
  /**
   * Position of each token, int32-valued [B][T] (one row per sequence) or one row shared
   * by the batch; default: cache.length, cache.length + 1, ... (left-padded batches pass
   * per-row positions, as transformers' generate does).
   */
  positions?: Int32Array | readonly (readonly number[])[];
  /** Keys to attend, f32 [B, S] (1 attend, 0 padding) over all S = cache.length + T keys. */
  keyMask?: Tensor;
  /** Appends this pass's keys and values and attends to everything stored. */
  cache?: KVCache;
  /** Compute logits for the last position only ([B, 1, V]): what decoding needs. */
  lastPositionOnly?: boolean;
  /**
   * Compute logits only at these positions of the flattened [B·T] sequence, as
   * [rows.length, V]: a loss that scores a few positions (the target tokens of a
   * fine-tuning example) need not pay the lm_head for the others.
   */
  rows?: readonly number[];
}

/**
 * Allocates a model's parameters (uninitialised) before the checkpoint fills them, by
 * name relative to the module that asks; `linear` marks a Linear's weight, which may be
 * a placeholder for a weight loaded quantized.
 */
type Alloc = (shape: readonly number[], name: string, linear?: 'linear') => Tensor;

/** The allocator of a sub-module: names prefixed with its own. */
function under(alloc: Alloc, prefix: string): Alloc {
  return (shape, name, linear) => alloc(shape, `${prefix}.${name}`, linear);
}

/** A Linear [out, in] named `name` (with a bias [out] when asked). */
function linearLayer(alloc: Alloc, name: string, out: number, inp: number, bias: boolean): Linear {
  return new Linear(alloc([out, inp], `${name}.weight`, 'linear'), bias ? alloc([out], `${name}.bias`) : null);
}

class LlamaAttention extends Module {
  readonly q_proj: Linear;
  readonly k_proj: Linear;
  readonly v_proj: Linear;
  readonly o_proj: Linear;

  constructor(private readonly config: LlamaConfig, alloc: Alloc) {
    super();
    const { hiddenSize: H, numAttentionHeads: Hq, numKeyValueHeads: Hkv, headDim: D } = config;
    this.q_proj = this.registerModule('q_proj', linearLayer(alloc, 'q_proj', Hq * D, H, config.qkvBias));
    this.k_proj = this.registerModule('k_proj', linearLayer(alloc, 'k_proj', Hkv * D, H, config.qkvBias));
    this.v_proj = this.registerModule('v_proj', linearLayer(alloc, 'v_proj', Hkv * D, H, config.qkvBias));
    this.o_proj = this.registerModule('o_proj', linearLayer(alloc, 'o_proj', H, Hq * D, config.oBias));
  }

  /** x [B, T, hidden] -> [B, T, hidden]. */
  forward(x: Tensor, cos: Tensor, sin: Tensor, keyMask: Tensor | null, cache: KVCache | null, layer: number): Tensor {
    const [B, T] = x.shape;
    const { numAttentionHeads: Hq, numKeyValueHeads: Hkv, headDim: D } = this.config;
    // Heads are laid out [B, T, H, D] for rope, then [B, H, T, D] for attention.
    const q = transpose(rope(reshape(this.q_proj.forward(x), [B, T, Hq, D]), cos, sin), 1, 2);
    let k = transpose(rope(reshape(this.k_proj.forward(x), [B, T, Hkv, D]), cos, sin), 1, 2);
    let v = transpose(reshape(this.v_proj.forward(x), [B, T, Hkv, D]), 1, 2);
    if (cache !== null) [k, v] = cache.append(layer, k, v);
    const o = attention(q, k, v, { causal: true, keyMask: keyMask ?? undefined });
    return this.o_proj.forward(reshape(transpose(o, 1, 2), [B, T, Hq * D]));
  }

  protected override ownOps(): KernelName[] {
    return ['rope', 'attention', 'attentionBackward', 'copy'];
  }
}

class LlamaMLP extends Module {
  readonly gate_proj: Linear;
  readonly up_proj: Linear;
  readonly down_proj: Linear;

  constructor(config: LlamaConfig, alloc: Alloc) {
    super();
    const { hiddenSize: H, intermediateSize: I, mlpBias } = config;
    this.gate_proj = this.registerModule('gate_proj', linearLayer(alloc, 'gate_proj', I, H, mlpBias));
    this.up_proj = this.registerModule('up_proj', linearLayer(alloc, 'up_proj', I, H, mlpBias));
    this.down_proj = this.registerModule('down_proj', linearLayer(alloc, 'down_proj', H, I, mlpBias));
  }

  forward(x: Tensor): Tensor {
    return this.down_proj.forward(this.gated(x));
  }

  /** silu(gate_proj(x)) ⊙ up_proj(x): down_proj's input. */
  gated(x: Tensor): Tensor {
    return siluMul(this.gate_proj.forward(x), this.up_proj.forward(x));
  }

  protected override ownOps(): KernelName[] {
    return ['unary', 'binary'];
  }
}

class LlamaDecoderLayer extends Module {
  readonly self_attn: LlamaAttention;
  readonly mlp: LlamaMLP;
  readonly input_layernorm: RMSNorm;
  readonly post_attention_layernorm: RMSNorm;

  constructor(config: LlamaConfig, alloc: Alloc, private readonly index: number) {
    super();
    this.self_attn = this.registerModule('self_attn', new LlamaAttention(config, under(alloc, 'self_attn')));
    this.mlp = this.registerModule('mlp', new LlamaMLP(config, under(alloc, 'mlp')));
    this.input_layernorm = this.registerModule('input_layernorm', new RMSNorm(alloc([config.hiddenSize], 'input_layernorm.weight'), config.rmsNormEps));
    this.post_attention_layernorm = this.registerModule('post_attention_layernorm', new RMSNorm(alloc([config.hiddenSize], 'post_attention_layernorm.weight'), config.rmsNormEps));
  }

  /**
   * Each block runs in a scope: while training, what its backward does not read (the
   * normed input of frozen projections, the block's output before the residual add, ...)
   * is freed as soon as the block returns; the rest stays with the autograd graph.
   */
  forward(h: Tensor, cos: Tensor, sin: Tensor, keyMask: Tensor | null, cache: KVCache | null): Tensor {
    const a = scope(() => add(h, this.self_attn.forward(this.input_layernorm.forward(h), cos, sin, keyMask, cache, this.index)));
    return scope(() => add(a, this.mlp.forward(this.post_attention_layernorm.forward(a))));
  }

  /**
   * For gradient checkpointing: back-propagates g, the gradient of forward(h, ...)'s
   * output, through a recomputation of the layer that stops before down_proj when that
   * is a plain frozen dense Linear. Its backward reads only its weight, and the residual
   * add's none, so the layer's last product and add need not be recomputed: backward
   * starts from the residual stream a (gradient g) and down_proj's input m (gradient
   * g·W, the product down_proj's backward would make). The same kernels, in the same
   * order, as backward through the whole recomputed layer, less those two. Returns false,
   * having done nothing, when down_proj is adapted, quantized or trainable. `owned`: g is
   * handed over (backwardFrom) and may be added into.
   */
  backwardFromOutput(h: Tensor, g: Tensor, cos: Tensor, sin: Tensor, keyMask: Tensor | null, owned = false): boolean {
    const down = this.mlp.down_proj;
    if (!down.isPlainFrozen()) return false;
    const a = scope(() => add(h, this.self_attn.forward(this.input_layernorm.forward(h), cos, sin, keyMask, null, this.index)));
    const m = scope(() => this.mlp.gated(this.post_attention_layernorm.forward(a)));
    // A root that nothing trainable reaches (an attention block without adapters) is left out.
    const dm = m.requiresGrad ? noGrad(() => linearGrads(g, m, down.weight, true, false)[0]) : null;
    try {
      const roots: Tensor[] = [], grads: Tensor[] = [];
      if (a.requiresGrad) {
        roots.push(a);
        grads.push(g);
      }
      if (dm !== null) {
        roots.push(m);
        grads.push(dm);
      }
      // g may be handed over; dm stays ours (freed below).
      if (roots.length > 0) backwardFrom(roots, grads, roots.map((r) => r === a && owned));
    } finally {
      dm?.dispose();
    }
    return true;
  }

  protected override ownOps(): KernelName[] {
    return ['binary'];
  }
}

class LlamaModel extends Module {
  readonly embed_tokens: Embedding;
  readonly layers: ModuleList<LlamaDecoderLayer>;
  readonly norm: RMSNorm;

  constructor(config: LlamaConfig, alloc: Alloc) {
    super();
    this.embed_tokens = this.registerModule('embed_tokens', new Embedding(alloc([config.vocabSize, config.hiddenSize], 'embed_tokens.weight')));
    this.layers = this.registerModule('layers', new ModuleList<LlamaDecoderLayer>());
    for (let i = 0; i < config.numHiddenLayers; i++) this.layers.push(new LlamaDecoderLayer(config, under(alloc, `layers.${i}`), i));
    this.norm = this.registerModule('norm', new RMSNorm(alloc([config.hiddenSize], 'norm.weight'), config.rmsNormEps));
  }
}

/** Tensors a checkpoint may hold that the model does not use. */
function ignorable(name: string, config: LlamaConfig): boolean {
  // Old Llama conversions saved the rotary buffer; tied checkpoints may still carry lm_head.
  return /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/.test(name) || (config.tieWordEmbeddings && name === 'lm_head.weight');
}

/** The activation dtype a model on `backend` with these weights computes in unless told otherwise. */
export function defaultComputeDtype(backend: Backend, dtype: WeightDType, quantized: boolean): ComputeDType {
  return computesBf16(backend) && (dtype === 'bf16' || quantized) ? 'bf16' : 'f32';
}

export class LlamaForCausalLM extends Module {
  readonly model: LlamaModel;
  readonly lm_head: Linear | null;
  readonly invFreq: Float64Array;
  /** The activation dtype set by LoadOptions.computeDtype or setComputeDtype; null follows the default. */
  private chosenDtype: ComputeDType | null = null;

  /**
   * Builds the module tree with uninitialised weights of the given dtype (see
   * fromPretrained). The Linear modules that `quantized` names get a placeholder weight
   * instead, for a quantized one to be set (Linear.setQuantizedWeight).
   */
  constructor(readonly config: LlamaConfig, readonly backend: Backend, readonly dtype: WeightDType = 'f32', quantized?: (module: string) => boolean) {
    super();
    const alloc: Alloc = (shape, name, linear) =>
      linear !== undefined && quantized?.(name.slice(0, -'.weight'.length)) ? quantizedPlaceholder(shape, backend) : empty(shape, dtype, backend);
    this.model = this.registerModule('model', new LlamaModel(config, under(alloc, 'model')));
    this.lm_head = config.tieWordEmbeddings ? null : this.registerModule('lm_head', linearLayer(alloc, 'lm_head', config.vocabSize, config.hiddenSize, false));
    this.invFreq = ropeInvFreq(ropeConfig(config));
    this.eval();
  }

  /**
   * The dtype of activations and logits (see the file header): the one chosen, else the
   * default for the weights as they are held now (quantizing a dense model in place
   * makes it bf16 on a backend that computes in bf16).
   */
  get computeDtype(): ComputeDType {
    if (this.chosenDtype !== null) return this.chosenDtype;
    // Quantized weights only matter for f32 weights on a backend that computes in bf16;
    // every forward asks, so the module-tree walk is left for that case.
    if (this.dtype === 'bf16' || !computesBf16(this.backend)) return defaultComputeDtype(this.backend, this.dtype, false);
    let quantized = false;
    for (const [, m] of this.namedModules()) {
      if (m instanceof Linear && m.quantized !== null) {
        quantized = true;
        break;
      }
    }
    return defaultComputeDtype(this.backend, this.dtype, quantized);
  }

  /** Computes in `d` from the next forward on; throws when the backend cannot. */
  setComputeDtype(d: ComputeDType): void {
    if (d !== 'f32' && d !== 'bf16') throw new Error(`${this.config.architecture}: computeDtype must be f32 or bf16, got ${String(d)}`);
    if (d === 'bf16' && !computesBf16(this.backend)) {
      throw new Error(`${this.config.architecture}: computeDtype bf16 is not supported on backend '${this.backend.name}' (it computes in ${(this.backend.computeDtypes ?? ['f32']).join(', ')})`);
    }
    this.chosenDtype = d;
  }

  /**
   * Loads a Hugging Face model directory: config.json, then model.safetensors or a
   * sharded index. Every file header, tensor name, shape and dtype (and every quantized
   * weight's scales and quant state) is checked before any weight is read; on any error
   * nothing is left allocated.
   */
  static fromPretrained(dir: string, opts: LoadOptions = {}): LlamaForCausalLM {
    const dtype = opts.dtype ?? 'f32';
    if (dtype !== 'f32' && dtype !== 'bf16') throw new Error(`fromPretrained: weight dtype must be f32 or bf16, got ${String(dtype)}`);
    if (opts.quant !== undefined && opts.quant !== 'int8' && opts.quant !== 'nf4') throw new Error(`fromPretrained: quant must be int8 or nf4, got ${String(opts.quant)}`);
    const config = readLlamaConfig(dir);
    const backend = resolveBackend(opts.device);
    if (opts.computeDtype === 'bf16' && !computesBf16(backend)) {
      throw new Error(`fromPretrained: computeDtype bf16 is not supported on backend '${backend.name}' (it computes in ${(backend.computeDtypes ?? ['f32']).join(', ')})`);
    }
    if (opts.computeDtype !== undefined && opts.computeDtype !== 'f32' && opts.computeDtype !== 'bf16') {
      throw new Error(`fromPretrained: computeDtype must be f32 or bf16, got ${String(opts.computeDtype)}`);
    }
    const ckpt = Checkpoint.open(dir);
    const quant = new QuantizedLoading(ckpt, opts.quant);
    let model: LlamaForCausalLM | null = null;
    try {
      model = new LlamaForCausalLM(config, backend, dtype, (m) => quant.holdsQuantized(m));
      model.checkBackend(backend, config.architecture);
      // Linear modules loaded quantized, by the name of their weight.
      const quantized = new Map<string, [string, Linear]>();
      for (const [name, m] of model.namedModules()) if (m instanceof Linear && quant.holdsQuantized(name)) quantized.set(`${name}.weight`, [name, m]);
      const params = [...model.namedParameters()];
      const wanted = new Set<string>();
      for (const [name, t] of params) {
        const q = quantized.get(name);
        if (q === undefined) {
          ckpt.check(name, t.shape);
          wanted.add(name);
        } else {
          for (const n of quant.check(q[0], [t.shape[0], t.shape[1]], backend)) wanted.add(n);
        }
      }
      const extra = ckpt.names().filter((n) => !wanted.has(n) && !ignorable(n, config));
      if (extra.length > 0) {
        const shown = extra.slice(0, 4).map((n) => JSON.stringify(n)).join(', ');
        throw new CheckpointError(ckpt.source, `unexpected tensor${extra.length > 1 ? 's' : ''} ${shown}${extra.length > 4 ? ` and ${extra.length - 4} more` : ''} for ${config.architecture} as config.json describes it`);
      }
      for (const [name, t] of params) {
        const q = quantized.get(name);
        if (q === undefined) {
          ckpt.readInto(name, t);
          t.name = name;
          continue;
        }
        const [module, linear] = q;
        t.name = name;
        const w = quant.read(module, [t.shape[0], t.shape[1]], dtype, backend);
        try {
          linear.setQuantizedWeight(w);
        } catch (e) {
          w.dispose();
          throw e;
        }
      }
      if (opts.computeDtype !== undefined) model.setComputeDtype(opts.computeDtype);
      const loaded = model;
      model = null;
      return loaded;
    } finally {
      model?.dispose();
      quant.close();
      ckpt.close();
    }
  }

  /** A cache for `batch` sequences of up to `capacity` positions. */
  createCache(batch: number, capacity: number): KVCache {
    const c = this.config;
    return new KVCache(c.numHiddenLayers, batch, c.numKeyValueHeads, c.headDim, capacity, this.backend, this.computeDtype);
  }

  /** ids int32 [B, T] -> logits [B, T, vocab] in computeDtype (or [B, 1, vocab] with lastPositionOnly). */
  forward(ids: Tensor, opts: ForwardOptions = {}): Tensor {
    if (ids.dtype !== 'int32' || ids.rank !== 2 || ids.shape[1] === 0) {
      throw new Error(`${this.config.architecture}: input ids must be int32 [batch, seq] with seq >= 1, got ${ids.dtype} ${formatShape(ids.shape)}`);
    }
    const [B, T] = ids.shape;
    const cache = opts.cache ?? null;
    if (cache !== null && cache.batch !== B) throw new Error(`${this.config.architecture}: the cache holds ${cache.batch} sequences, the input ${B}`);
    const past = cache?.length ?? 0;
    const S = past + T;
    const window = this.config.slidingWindow;
    if (window !== null && S > window) {
      throw new Error(`${this.config.architecture}: ${S} positions exceed the sliding_window of ${window} in config.json; sliding-window attention is not implemented`);
    }
    const keyMask = opts.keyMask ?? null;
    if (keyMask !== null && (keyMask.rank !== 2 || keyMask.shape[0] !== B || keyMask.shape[1] !== S)) {
      throw new Error(`${this.config.architecture}: keyMask must be [${B}, ${S}] (batch, cached + new positions), got ${formatShape(keyMask.shape)}`);
    }
    if (opts.rows !== undefined && opts.lastPositionOnly) throw new Error(`${this.config.architecture}: rows and lastPositionOnly cannot be combined`);
    const positions = opts.positions ?? Int32Array.from({ length: T }, (_, i) => past + i);
    const computeDtype = this.computeDtype;
    // Training keeps what backward reads (each layer's scopes free the rest, the caller's
    // scope what is left); inference frees each layer's as soon as the layer returns.
    const training = isGradEnabled();
    const run = (): Tensor => {
      const { cos, sin } = rotaryTables(this.invFreq, positions, { device: this.backend });
      const mask = keyMask === null ? null : cast(keyMask, 'f32');
      let h = this.model.embed_tokens.forward(ids, computeDtype);
      for (const layer of this.model.layers) {
        const input = h;
        h = training ? layer.forward(input, cos, sin, mask, cache) : scope(() => layer.forward(input, cos, sin, mask, cache));
        if (!training) input.dispose();
      }
      if (opts.lastPositionOnly) h = slice(h, 1, T - 1, T);
      // RMSNorm is per position, so selecting before it is the same as after.
      if (opts.rows !== undefined) h = indexSelect(reshape(h, [B * T, h.shape[2]]), 0, opts.rows);
      const x = this.model.norm.forward(h);
      const logits = this.lm_head !== null ? this.lm_head.forward(x) : linear(x, this.model.embed_tokens.weight);
      // An f32 head (a quantized base keeps lm_head dense in its storage dtype) widens the product; logits are T all the same.
      return cast(logits, computeDtype);
    };
    const logits = training ? run() : scope(run);
    cache?.advance(T);
    return logits;
  }

  protected override ownOps(): KernelName[] {
    return ['matmul', 'copy'];
  }
}

/** The rotary-embedding fields of config.json, in the names ops/rope.ts reads. */
function ropeConfig(config: LlamaConfig): RopeConfig {
  const s = config.ropeScaling;
  const base = { rope_theta: config.ropeTheta, head_dim: config.headDim };
  switch (s.type) {
    case 'default':
      return base;
    case 'linear':
      return { ...base, rope_scaling: { rope_type: 'linear', factor: s.factor } };
    case 'llama3':
      return {
        ...base,
        rope_scaling: {
          rope_type: 'llama3',
          factor: s.factor,
          low_freq_factor: s.lowFreqFactor,
          high_freq_factor: s.highFreqFactor,
          original_max_position_embeddings: s.originalMaxPositionEmbeddings,
        },
      };
  }
}
