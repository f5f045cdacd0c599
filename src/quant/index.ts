// Quantized frozen base weights in bitsandbytes' formats: int8 rows (quant_bits 8) and
// NF4 blocks with double quantization (quant_bits 4).
export * from './int8.js';
export * from './nf4.js';
export * from './weight.js';
export * from './ops.js';
export * from './checkpoint.js';
export * from './model.js';
export * from './load.js';
