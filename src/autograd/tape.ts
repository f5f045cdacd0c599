// Reverse-mode autograd. Each op that produces a tensor from inputs that need
// gradients records a GradFn on its output (the tape is the graph of these records);
// backward() walks it in reverse topological order. Leaves (parameters) accumulate
// their gradient in .grad (+=); frozen tensors (requiresGrad false) are never visited
// and cost no gradient memory. Backward closures are built from ops, so every backend
// gets every gradient. A tensor's gradient has its activation dtype (gradDtype: bf16 for
// a bf16 tensor on a backend that computes in bf16, else f32); a gradient an op returns
// in another dtype (a cast's, or a widened product's) is converted on arrival.
//
// A record names its graph edges (inputs) apart from the tensors its backward reads
// (saved): scopes free everything else during the forward (tensor.ts), and backward
// drops each record once it has run, which frees a graph-held saved tensor as soon as
// its last reader is done.
import { dropGradFn, empty, keep, type Tensor } from '../tensor/tensor.js';
import { formatShape, sameShape } from '../tensor/shape.js';
import { kernel } from '../backend/backend.js';
import { gradDtype } from '../ops/util.js';

let disabled = 0;

export function isGradEnabled(): boolean {
  return disabled === 0;
}

/** Runs fn without recording gradients (inference, optimizer updates). */
export function noGrad<T>(fn: () => T): T {
  disabled++;
  try {
    return fn();
  } finally {
    disabled--;
  }
}

/**
 * Runs fn with gradients recorded even inside noGrad or a backward pass: gradient
 * checkpointing recomputes a segment's forward during backward and differentiates it.
 */
export function enableGrad<T>(fn: () => T): T {
  const saved = disabled;
  disabled = 0;
  try {
    return fn();
  } finally {
    disabled = saved;
  }
}

/**
 * Records the op that made `out` when gradients are on and any input needs one.
 * `saved` lists every tensor whose data backward reads (inputs, out itself, or
 * tensors the op made for backward such as a softmax's log-sum-exp); an input left
 * out may be freed before backward runs. Without it, the inputs and out are saved.
 */
export function record(
  out: Tensor,
  name: string,
  inputs: readonly Tensor[],
  backward: (grad: Tensor, into?: readonly (Tensor | null)[], owned?: boolean) => (Tensor | null)[],
  saved?: readonly Tensor[],
): Tensor {
  if (disabled > 0 || !inputs.some((t) => t.requiresGrad)) return out;
  out.requiresGrad = true;
  const reads = saved ?? [...inputs, out];
  for (const t of reads) t.savedBy++;
  out.gradFn = { name, inputs, saved: reads, backward };
  return out;
}

let walks = 0;

function topoOrder(roots: readonly Tensor[]): Tensor[] {
  // Iterative post-order; a tensor is pushed twice (once to expand, once to emit) as
  // two parallel stacks, not tuples, since this runs over every record of a step.
  // Post-orders from several roots, one after the other, are one topological order.
  // A tensor is visited when its mark holds this walk's number: no Set to hash into
  // (walks do not nest: a walk finishes before any backward closure runs).
  const mark = ++walks;
  const order: Tensor[] = [];
  const stack: Tensor[] = [];
  const expanded: boolean[] = [];
  for (let r = roots.length - 1; r >= 0; r--) {
    stack.push(roots[r]);
    expanded.push(false);
  }
  while (stack.length > 0) {
    const t = stack.pop()!;
    if (expanded.pop()!) {
      order.push(t);
      continue;
    }
    if (t.visitMark === mark) continue;
    t.visitMark = mark;
    stack.push(t);
    expanded.push(true);
    const fn = t.gradFn;
    if (fn === null) continue;
    for (const i of fn.inputs) {
      if (i.requiresGrad && i.visitMark !== mark) {
        stack.push(i);
        expanded.push(false);
      }
    }
  }
  return order;
}

/** A fresh gradient for `like`, in its gradient dtype. */
function make(like: Tensor): Tensor {
  return empty(like.shape, gradDtype(like), like.backend);
}

/** g converted to the gradient dtype of t (g itself when it has it already). */
function asGradOf(t: Tensor, g: Tensor): Tensor {
  if (g.dtype === gradDtype(t)) return g;
  const c = make(t);
  kernel(t.backend, 'copy')(g, c);
  return c;
}

/** out = a + b (both in one dtype) into a fresh tensor, or into `into` (in place) when given. */
function addGrads(a: Tensor, b: Tensor, into: Tensor | null): Tensor {
  const out = into ?? empty(a.shape, a.dtype, a.backend);
  kernel(a.backend, 'binary')('add', a, b, out);
  return out;
}

/**
 * Whether a leaf can take gradient g as its .grad without a copy: g is not the caller's
 * root gradient, no pending entry holds it, no other tensor views its storage, no record
 * reads it, no scope keeps it, and it has the leaf's gradient dtype and a contiguous
 * layout from the start of its storage (what a copy into a fresh tensor would give).
 */
function adoptable(g: Tensor, leaf: Tensor, rootGrads: readonly Tensor[]): boolean {
  return !rootGrads.includes(g) && exclusive(g) && g.offset === 0 && g.dtype === gradDtype(leaf) && g.isContiguous();
}

/** No scope keeps g, no record reads it, no other tensor views its storage, and it has no record of its own. */
function exclusive(g: Tensor): boolean {
  return !g.kept && g.savedBy === 0 && g.gradFn === null && !g.storage.shared;
}

/**
 * Back-propagates from `root` (a one-element tensor unless `grad` is given). Frees
 * the graph afterwards: a second backward needs a second forward.
 */
export function backward(root: Tensor, grad?: Tensor): void {
  if (!root.requiresGrad) throw new Error('backward: the tensor does not require grad (no parameter reaches it)');
  if (grad === undefined) {
    if (root.size !== 1) throw new Error(`backward: root has shape ${formatShape(root.shape)}; pass the output gradient`);
    const one = make(root);
    kernel(root.backend, 'fill')(one, 1);
    run([root], [one]);
    return;
  }
  run([root], [grad]);
}

/**
 * Back-propagates from several tensors at once, each with its gradient: the gradients
 * of a function with several outputs, or of one output given partly by hand (a
 * checkpointed layer's last frozen product). A root gradient is the caller's, never
 * freed or written here, unless `owned` marks it as handed over (no one else holds or
 * reads it): then it is used as any gradient backward made itself (added into, passed
 * on, taken as a leaf's .grad or freed).
 */
export function backwardFrom(roots: readonly Tensor[], rootGrads: readonly Tensor[], owned?: readonly boolean[]): void {
  if (roots.length !== rootGrads.length || roots.length === 0) throw new Error(`backwardFrom: ${roots.length} roots and ${rootGrads.length} gradients`);
  for (let i = 0; i < roots.length; i++) {
    if (!roots[i].requiresGrad) throw new Error(`backwardFrom: root ${i} does not require grad (no parameter reaches it)`);
    if (!sameShape(roots[i].shape, rootGrads[i].shape)) throw new Error(`backwardFrom: gradient ${formatShape(rootGrads[i].shape)} for root ${i} ${formatShape(roots[i].shape)}`);
    if (roots.indexOf(roots[i]) !== i) throw new Error(`backwardFrom: root ${i} is listed twice`);
  }
  run(roots, rootGrads, owned === undefined ? rootGrads : rootGrads.filter((_, i) => !owned[i]));
}

/** Back-propagates from `roots` with `rootGrads`; those in `kept` are the caller's (never freed, written or adopted). */
function run(roots: readonly Tensor[], rootGrads: readonly Tensor[], kept: readonly Tensor[] = rootGrads): void {
  const order = topoOrder(roots);
  const grads = new Map<number, Tensor>();
  // How many entries of `grads` hold each tensor (one gradient may reach several
  // inputs, e.g. both operands of an add): a tensor is freed once none does, without
  // scanning every pending gradient.
  const holders = new Map<Tensor, number>();
  const hold = (t: Tensor) => holders.set(t, (holders.get(t) ?? 0) + 1);
  const letGo = (t: Tensor) => {
    const n = holders.get(t)! - 1;
    if (n === 0) holders.delete(t);
    else holders.set(t, n);
  };
  const inUse = (t: Tensor) => holders.has(t);
  // The caller's gradients: never freed, written into or adopted here.
  const isRootGrad = (t: Tensor) => (kept.length === 1 ? kept[0] === t : kept.includes(t));
  for (let i = 0; i < roots.length; i++) {
    grads.set(roots[i].id, rootGrads[i]);
    hold(rootGrads[i]);
  }
  // Per input of a record, its pending gradient when backward may add into it: held by
  // that entry alone (no other entry, view, record or scope), not the caller's root
  // gradient nor the gradient backward reads, contiguous in the input's gradient dtype.
  // An input listed twice gets none (its two gradients would land in one tensor).
  const pendingInto = (inputs: readonly Tensor[], reading: Tensor): (Tensor | null)[] | undefined => {
    let into: (Tensor | null)[] | undefined;
    for (let k = 0; k < inputs.length; k++) {
      const input = inputs[k];
      if (!input.requiresGrad) continue;
      const prev = grads.get(input.id);
      if (prev === undefined || prev === reading || isRootGrad(prev) || holders.get(prev) !== 1) continue;
      if (prev.kept || prev.savedBy !== 0 || prev.gradFn !== null || prev.storage.shared || !prev.isContiguous() || prev.dtype !== gradDtype(input)) continue;
      if (inputs.indexOf(input) !== k || inputs.lastIndexOf(input) !== k) continue;
      (into ??= new Array<Tensor | null>(inputs.length).fill(null))[k] = prev;
    }
    return into;
  };
  noGrad(() => {
    for (let i = order.length - 1; i >= 0; i--) {
      const node = order[i];
      const g = grads.get(node.id);
      if (g === undefined) continue;
      grads.delete(node.id);
      letGo(g);
      const fn = node.gradFn;
      if (fn === null) {
        // A leaf: accumulate into .grad, which outlives every scope.
        if (!sameShape(g.shape, node.shape)) {
          throw new Error(`backward: gradient ${formatShape(g.shape)} does not match ${node.name || 'leaf'} ${formatShape(node.shape)}`);
        }
        if (node.grad === null) {
          if (!inUse(g) && adoptable(g, node, kept)) {
            // The gradient is a fresh tensor no one else holds or reads: it becomes .grad as it is.
            node.grad = keep(g);
            continue;
          }
          node.grad = keep(make(node));
          kernel(node.backend, 'copy')(g, node.grad);
        } else {
          addGrads(node.grad, g, node.grad);
        }
      } else {
        // A backward that takes `into` (a second parameter) may add an input's gradient
        // into that input's pending one instead of returning a new tensor to be added.
        const into = fn.backward.length >= 2 ? pendingInto(fn.inputs, g) : undefined;
        // A backward that takes `owned` (a third parameter) is told when g is its alone.
        const owned = fn.backward.length >= 3 && !isRootGrad(g) && !inUse(g) && exclusive(g);
        const inputGrads = fn.backward(g, into, owned);
        // Gradients given in another dtype than their input's: freed once converted.
        let converted: Tensor[] | null = null;
        for (let k = 0; k < fn.inputs.length; k++) {
          const input = fn.inputs[k];
          const given = inputGrads[k];
          if (given === null || given === undefined || !input.requiresGrad) continue;
          if (!sameShape(given.shape, input.shape)) {
            throw new Error(`backward: ${fn.name} gave a gradient ${formatShape(given.shape)} for an input ${formatShape(input.shape)}`);
          }
          const prev = grads.get(input.id);
          // Added into the pending gradient already.
          if (given === prev && into?.[k] === prev) continue;
          const gi = asGradOf(input, given);
          if (gi !== given) (converted ??= []).push(given);
          if (prev === undefined) {
            grads.set(input.id, gi);
            hold(gi);
          } else {
            const sum = addGrads(prev, gi, null);
            grads.set(input.id, sum);
            letGo(prev);
            hold(sum);
            if (!inUse(prev) && !isRootGrad(prev)) prev.dispose();
            if (!inUse(gi) && gi !== g) gi.dispose();
          }
        }
        if (converted !== null) for (const t of converted) if (t !== g && !inUse(t)) t.dispose();
        dropGradFn(node);
      }
      if (!isRootGrad(g) && !inUse(g)) g.dispose();
    }
  });
}
