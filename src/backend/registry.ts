// Backend registry: backends by name, created on first use, and the default backend
// new tensors go to (FINLORA_DEVICE, else cpu). The cuda backend loads its addon only
// when first asked for, so machines without it never touch CUDA.
import type { Backend } from './backend.js';
import { CpuBackend } from './cpu/cpu.js';
import { CudaBackend } from './cuda/cuda.js';
import { ReferenceBackend } from './reference/reference.js';

export type BackendName = 'cpu' | 'reference' | 'cuda';

const factories: Record<BackendName, () => Backend> = {
  cpu: () => new CpuBackend(),
  reference: () => new ReferenceBackend(),
  cuda: () => new CudaBackend(),
};

const instances = new Map<BackendName, Backend>();

function isBackendName(name: string): name is BackendName {
  return Object.prototype.hasOwnProperty.call(factories, name);
}

export function getBackend(name: string): Backend {
  if (!isBackendName(name)) {
    throw new Error(`unknown device '${name}' (available: ${Object.keys(factories).join(', ')})`);
  }
  let b = instances.get(name);
  if (b === undefined) {
    b = factories[name]();
    instances.set(name, b);
  }
  return b;
}

let defaultName: string = process.env.FINLORA_DEVICE ?? 'cpu';

export function defaultBackend(): Backend {
  return getBackend(defaultName);
}

export function setDefaultBackend(name: string): void {
  getBackend(name);
  defaultName = name;
}
