// Every op, one module each.
export * from './creation.js';
export * from './view.js';
export * from './binary.js';
export * from './reduce.js';
export * from './matmul.js';
export * from './inplace.js';
export * from './embedding.js';
export * from './dropout.js';
export * from './rmsnorm.js';
export * from './unary.js';
export * from './norm.js';
export * from './rope.js';
export * from './softmax.js';
export * from './concat.js';
export * from './attention.js';
export * from './crossentropy.js';
