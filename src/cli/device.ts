// The --device option of the commands that load a model (eval, generate, forward,
// merge): the backend to compute on, by name, defaulting to FINLORA_DEVICE and else
// cpu, as the default backend does (src/backend/registry.ts). An unknown or unavailable
// device (the CUDA addon not built, no GPU visible) is a one-line user error naming it,
// raised before any file is read. finetune takes its device from the run instead.
import type { Backend } from '../backend/backend.js';
import { getBackend } from '../backend/registry.js';
import type { WeightDType } from '../models/llama/model.js';
import { computesBf16 } from '../ops/util.js';
import { UserError } from './errors.js';

/** The parseArgs entry of --device. */
export const DEVICE_OPTION = { device: { type: 'string' } } as const;

/** The help text's lines for --device, its description starting at `column` as the command's other options do. */
export function deviceHelp(column: number): string {
  const flag = '  --device NAME'.padEnd(column);
  return `${flag}the backend to compute on: cpu or cuda (default: FINLORA_DEVICE,\n${' '.repeat(column)}else cpu)`;
}

/** The device --device names (or FINLORA_DEVICE, else cpu), created now so a missing one fails first. */
export function resolveDevice(flag: string | undefined): Backend {
  const name = flag ?? process.env.FINLORA_DEVICE ?? 'cpu';
  const from = flag !== undefined ? '--device' : process.env.FINLORA_DEVICE !== undefined ? 'FINLORA_DEVICE' : 'the default device';
  try {
    return getBackend(name);
  } catch (e) {
    throw new UserError(`device '${name}' (${from}) is not available: ${(e instanceof Error ? e.message : String(e)).replace(/^finlora: /, '')}`);
  }
}

/**
 * The storage dtype of the dense weights when --dtype is not given, for a command that
 * computes in the device's fastest dtype (eval, generate): bf16 where the device
 * computes in bf16 (the model then computes in bf16, as a bf16 PyTorch model on a GPU
 * does), else f32.
 */
export function defaultWeightDtype(device: Backend): WeightDType {
  return computesBf16(device) ? 'bf16' : 'f32';
}
