// Module: a named tree of parameters and sub-modules, as in PyTorch, so parameter
// names match Hugging Face checkpoints (model.layers.0.self_attn.q_proj.weight).
import { type KernelName, requireOps, type Backend } from '../backend/backend.js';
import { keep, type Tensor } from '../tensor/tensor.js';

export abstract class Module {
  private readonly params = new Map<string, Tensor>();
  private readonly children = new Map<string, Module>();
  training = true;

  /** Registers (and keeps alive outside any scope) a parameter or frozen weight. */
  protected registerParameter(name: string, t: Tensor): Tensor {
    keep(t);
    this.params.set(name, t);
    return t;
  }

  protected registerModule<M extends Module>(name: string, m: M): M {
    this.children.set(name, m);
    return m;
  }

  /** Takes a sub-module out of the tree (its parameters are the caller's to keep or dispose). */
  protected unregisterModule(name: string): void {
    if (!this.children.delete(name)) throw new Error(`no module '${name}'`);
  }

  /** Replaces a registered parameter (disposing the old one unless told not to). */
  protected replaceParameter(name: string, t: Tensor, disposeOld = true): void {
    const old = this.params.get(name);
    if (old === undefined) throw new Error(`no parameter '${name}'`);
    if (disposeOld && old !== t) old.dispose();
    this.registerParameter(name, t);
  }

  *namedParameters(prefix = ''): Generator<[string, Tensor]> {
    for (const [n, t] of this.params) yield [prefix + n, t];
    for (const [n, m] of this.children) yield* m.namedParameters(`${prefix}${n}.`);
  }

  *namedModules(prefix = ''): Generator<[string, Module]> {
    yield [prefix.replace(/\.$/, ''), this];
    for (const [n, m] of this.children) yield* m.namedModules(`${prefix}${n}.`);
  }

  parameters(): Tensor[] {
    return [...this.namedParameters()].map(([, t]) => t);
  }

  /** Parameters that train (requiresGrad). */
  trainableParameters(): Tensor[] {
    return this.parameters().filter((t) => t.requiresGrad);
  }

  train(mode = true): this {
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Kernels this module (and its children) need from a backend. */
  requiredOps(): KernelName[] {
    const ops = new Set<KernelName>(this.ownOps());
    for (const [, m] of this.children) for (const op of m.requiredOps()) ops.add(op);
    return [...ops];
  }

  /** Kernels this module's own forward and backward use. */
  protected ownOps(): KernelName[] {
    return [];
  }

  /** Fails at build time, naming the missing ops, when the backend cannot run this module. */
  checkBackend(backend: Backend, what = this.constructor.name): void {
    requireOps(backend, this.requiredOps(), what);
  }

  dispose(): void {
    for (const t of this.params.values()) t.dispose();
    for (const m of this.children.values()) m.dispose();
  }
}
