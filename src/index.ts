// finlora's public API.
export { Tensor, scope, keep, empty } from './tensor/tensor.js';
export type { DType } from './tensor/dtype.js';
export { Rng } from './tensor/rng.js';
export { backward, noGrad, isGradEnabled } from './autograd/tape.js';
export { getBackend, defaultBackend, setDefaultBackend } from './backend/registry.js';
export { requireOps } from './backend/backend.js';
export * from './ops/index.js';
