// Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
// Cost"), applied per decoder layer as transformers' gradient_checkpointing_enable()
// applies it to Llama: a layer's forward keeps none of its intermediate activations,
// only its input; backward recomputes the layer from that input and differentiates the
// recomputation. Activation memory drops from every layer's intermediates to one
// layer's plus each layer's input, for about one extra forward of compute.
//
// Recomputation reproduces the forward exactly: the kernels are deterministic and the
// dropout stream (counter based) is moved back to where the layer drew its masks, so
// the gradients are bit for bit those of an ordinary backward.
import { RecomputeMemo, withRecomputeMemo } from '../autograd/recompute.js';
import { backwardFrom, enableGrad, isGradEnabled, noGrad, record } from '../autograd/tape.js';
import { type DropoutGenerator, keepingDroppedInputs } from '../ops/dropout.js';
import type { LlamaForCausalLM } from '../models/llama/model.js';
import { scope, type Tensor, view } from '../tensor/tensor.js';

/**
 * Back-propagates g (the gradient of fn(x)) through a recomputation of fn from x, itself,
 * when it can do so with less recomputation; returns false, having done nothing, when it
 * cannot (the recomputation then runs fn whole).
 */
export type BackwardThrough = (x: Tensor, g: Tensor, owned: boolean) => boolean;

/**
 * fn(x) without keeping fn's intermediates; its backward recomputes fn from x (with
 * gradients to x and, accumulated into their .grad, to the trainable tensors in
 * `params`). `rng` is the dropout stream fn draws from, replayed for the recomputation.
 * `through`, when given, is tried before recomputing fn whole.
 */
export function checkpointed(fn: (x: Tensor) => Tensor, x: Tensor, params: readonly Tensor[], rng: DropoutGenerator | null, through?: BackwardThrough): Tensor {
  if (!isGradEnabled()) return fn(x);
  const trainable = params.filter((p) => p.requiresGrad);
  if (!x.requiresGrad && trainable.length === 0) return fn(x);
  const start = rng?.offset ?? 0;
  // Values the recomputation would compute again unchanged (DoRA's weight norms) are kept from this forward.
  const memo = new RecomputeMemo();
  const out = noGrad(() => scope(() => withRecomputeMemo(memo, false, () => fn(x))));
  // The recomputation reads x alone (the parameters are held by the model anyway).
  // `owned`: the tape hands g over (no one else holds it), so the recomputed backward
  // may add into it (the residual stream's gradient then flows through every layer in one
  // buffer) and return it as x's gradient.
  return record(out, 'checkpoint', [x, ...trainable], (g, _into, owned) => {
    const resume = rng?.offset ?? 0;
    rng?.seek(start);
    try {
      const gx = scope(() =>
        enableGrad(() => {
          // A fresh leaf over x's storage, so the recomputed graph ends here.
          const leaf = view(x, x.shape, x.strides, x.offset);
          leaf.requiresGrad = x.requiresGrad;
          // The recomputed layer's backward runs at once: its dropout products keep their
          // dropped inputs instead of redrawing the masks (the same values, fewer kernels).
          const handed = owned === true;
          keepingDroppedInputs(() =>
            withRecomputeMemo(memo, true, () => {
              if (through === undefined || !through(leaf, g, handed)) backwardFrom([fn(leaf)], [g], [handed]);
            }),
          );
          const grad = leaf.grad;
          leaf.grad = null;
          // No longer a leaf's .grad: an ordinary gradient, which the enclosing backward may add into or pass on.
          if (grad !== null) grad.kept = false;
          return grad;
        }),
      );
      return [gx, ...trainable.map(() => null)];
    } finally {
      memo.dispose();
      rng?.seek(resume);
    }
  }, [x]);
}

/** Checkpoints every decoder layer of `model` while training; returns a function that undoes it. */
export function enableGradientCheckpointing(model: LlamaForCausalLM, rng: DropoutGenerator | null): () => void {
  const undo: (() => void)[] = [];
  for (const layer of model.model.layers) {
    const original = layer.forward;
    layer.forward = (h, cos, sin, keyMask, cache) => {
      // Parameters are listed at call time (adapters may have been added after this), and
      // only when the input needs no gradient: they decide then whether the layer is
      // recorded at all. An input that needs one is recorded anyway, and the recomputed
      // backward reaches the parameters whether they are listed or not.
      const params = h.requiresGrad || !isGradEnabled() ? [] : [...layer.namedParameters()].map(([, t]) => t);
      // Without a cache (training), backward need not recompute the layer's last frozen product.
      const through: BackwardThrough | undefined = cache === null ? (x, g, owned) => layer.backwardFromOutput(x, g, cos, sin, keyMask, owned) : undefined;
      return checkpointed((x) => original.call(layer, x, cos, sin, keyMask, cache), h, params, rng, through);
    };
    undo.push(() => {
      layer.forward = original;
    });
  }
  return () => undo.forEach((u) => u());
}
