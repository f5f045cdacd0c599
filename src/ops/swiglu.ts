// The gated activation of Llama's MLP: silu(gate) ⊙ up (Shazeer 2020, "GLU Variants
// Improve Transformer"; transformers' LlamaMLP: down_proj(act_fn(gate_proj(x)) * up_proj(x))).
//
// A backend with the fused kernels (siluMul, siluMulBackward) makes one pass forward
// and one backward; elsewhere the op is composed from silu and mul, which computes the
// same function with the same gradient.
import { kernel } from '../backend/backend.js';
import { record } from '../autograd/tape.js';
import { formatShape, sameShape } from '../tensor/shape.js';
import { empty, type Tensor } from '../tensor/tensor.js';
import { mul } from './binary.js';
import { silu } from './unary.js';
import { computeDtype, sameBackend, withContiguousAs } from './util.js';

/** silu(gate) ⊙ up for gate and up of one shape, in their compute dtype (bf16 for two bf16 inputs where the backend computes in bf16). */
export function siluMul(gate: Tensor, up: Tensor): Tensor {
  sameBackend('siluMul', gate, up);
  if (!sameShape(gate.shape, up.shape)) throw new Error(`siluMul: gate ${formatShape(gate.shape)} and up ${formatShape(up.shape)} differ`);
  const backend = gate.backend;
  const fused = backend.kernels.siluMul !== undefined && backend.kernels.siluMulBackward !== undefined;
  if (!fused) return mul(silu(gate), up);
  const dtype = computeDtype(backend, gate, up);
  const out = empty(gate.shape, dtype, backend);
  if (out.size > 0) withContiguousAs(dtype, [gate, up], (g, u) => kernel(backend, 'siluMul')(g, u, out));
  return record(out, 'siluMul', [gate, up], (dout) => {
    const dgate = empty(gate.shape, dtype, backend);
    const dup = empty(up.shape, dtype, backend);
    if (out.size > 0) withContiguousAs(dtype, [gate, up, dout], (g, u, d) => kernel(backend, 'siluMulBackward')(g, u, d, dgate, dup));
    const grads: (Tensor | null)[] = [dgate, dup];
    // Both come out of one pass; drop the one nobody needs.
    [gate, up].forEach((t, i) => {
      if (!t.requiresGrad) {
        grads[i]!.dispose();
        grads[i] = null;
      }
    });
    return grads;
  }, [gate, up]);
}
