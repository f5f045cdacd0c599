// Reference kernels for the neural-network ops: embedding, RMSNorm, rotary embedding,
// attention, cross-entropy, dropout.
import type { Kernels } from '../kernels.js';

export function nnKernels(): Partial<Kernels> {
  return {};
}
