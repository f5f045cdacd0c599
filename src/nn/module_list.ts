// An indexed list of modules, as PyTorch's nn.ModuleList: children are named 0, 1, ...
// so parameter names read model.layers.3.self_attn.q_proj.weight.
import { Module } from './module.js';

export class ModuleList<M extends Module> extends Module {
  private readonly items: M[] = [];

  constructor(items: Iterable<M> = []) {
    super();
    for (const m of items) this.push(m);
  }

  push(m: M): void {
    this.registerModule(String(this.items.length), m);
    this.items.push(m);
  }

  get length(): number {
    return this.items.length;
  }

  at(i: number): M {
    const m = this.items[i];
    if (m === undefined) throw new Error(`ModuleList: no item ${i} (length ${this.items.length})`);
    return m;
  }

  [Symbol.iterator](): Iterator<M> {
    return this.items[Symbol.iterator]();
  }
}
