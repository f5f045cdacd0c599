// finlora's public API.
export { Tensor, scope, keep, empty } from './tensor/tensor.js';
export type { DType } from './tensor/dtype.js';
export { Rng } from './tensor/rng.js';
export { backward, noGrad, isGradEnabled } from './autograd/tape.js';
export { getBackend, defaultBackend, setDefaultBackend } from './backend/registry.js';
export { requireOps } from './backend/backend.js';
export * from './ops/index.js';
export { Module } from './nn/module.js';
export { Linear } from './nn/linear.js';
export { LlamaForCausalLM, type LoadOptions, type ForwardOptions, type WeightDType } from './models/llama/model.js';
export { readLlamaConfig, parseLlamaConfig, ConfigError, type LlamaConfig } from './models/llama/config.js';
export { Checkpoint, CheckpointError } from './models/checkpoint.js';
export { KVCache } from './models/kv_cache.js';
export { generate, greedyGenerate, leftPad, samplingCandidates, drawToken, type GreedyOptions, type GenerateOptions, type GenerateResult, type SamplingOptions, type FinishReason, type Candidates } from './models/generate.js';
export { causalLmLoss } from './models/loss.js';
