// Embedding lookup, as torch.nn.functional.embedding: rows of a weight table picked by
// integer ids. The table may be f32, bf16 or f16 (a frozen base model's embed_tokens);
// the output is f32, or bf16 when asked on a backend that computes in bf16 (a model's
// activation dtype; the rows are converted as they are gathered). Backward scatter-adds
// the output gradient (in the output's dtype) into an f32 [V, D] gradient for the table
// (ids that repeat accumulate); ids get no gradient.
import { kernel } from '../backend/backend.js';
import { record } from '../autograd/tape.js';
import { formatShape } from '../tensor/shape.js';
import { empty, type Tensor } from '../tensor/tensor.js';
import { assertDtype, type ComputeDType, computesBf16, sameBackend, withContiguous, withContiguousAs } from './util.js';
import { withShapes } from './nn_util.js';

/**
 * weight[ids]: ids int32 [...], weight [V, D] (f32, bf16 or f16) -> [..., D] of `dtype`
 * (default f32; bf16 only on a backend that computes in bf16).
 */
export function embedding(ids: Tensor, weight: Tensor, dtype: ComputeDType = 'f32'): Tensor {
  sameBackend('embedding', ids, weight);
  if (dtype === 'bf16' && !computesBf16(weight.backend)) throw new Error(`embedding: backend '${weight.backend.name}' does not compute in bf16`);
  assertDtype('embedding', ids, ['int32'], 'ids');
  assertDtype('embedding', weight, ['f32', 'bf16', 'f16'], 'weight');
  if (weight.rank !== 2) throw new Error(`embedding: weight must be [num_embeddings, embedding_dim], got ${formatShape(weight.shape)}`);
  const [V, D] = weight.shape;
  const backend = weight.backend;
  const out = empty([...ids.shape, D], dtype, backend);
  const N = ids.size;
  try {
    withContiguous([[ids, null], [weight, null]], (idc, wc) =>
      withShapes([[idc, [N]], [out, [N, D]]], (idf, outf) => kernel(backend, 'gather')(wc, idf, outf)),
    );
  } catch (e) {
    out.dispose();
    throw e;
  }
  return record(out, 'embedding', [ids, weight], (g) => {
    const dw = empty([V, D], 'f32', backend);
    kernel(backend, 'fill')(dw, 0);
    withContiguous([[ids, null]], (idc) =>
      withContiguousAs(dtype, [g], (gc) => withShapes([[gc, [N, D]], [idc, [N]]], (gf, idf) => kernel(backend, 'scatterAdd')(gf, idf, dw))),
    );
    return [null, dw];
  }, [ids]);
}

