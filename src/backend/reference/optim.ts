// Reference optimizer kernels: AdamW (torch.optim.AdamW's update, see kernels.ts) in
// plain f64, element by element, for tests to hold the fast kernels against.
import type { Kernels } from '../kernels.js';
import { read, write } from './reference.js';

export function optimKernels(): Partial<Kernels> {
  return {
    adamw: (operands, a) => {
      const stepSize = a.lr / a.biasCorrection1;
      const bc2Sqrt = Math.sqrt(a.biasCorrection2);
      for (const { param, grad, expAvg, expAvgSq } of operands) {
        const p = read(param), g = read(grad), m = read(expAvg), v = read(expAvgSq);
        for (let i = 0; i < p.length; i++) {
          const gi = g[i] * a.gradScale;
          p[i] *= 1 - a.lr * a.weightDecay;
          m[i] += (1 - a.beta1) * (gi - m[i]);
          v[i] = a.beta2 * v[i] + (1 - a.beta2) * gi * gi;
          p[i] -= stepSize * (m[i] / (Math.sqrt(v[i]) / bc2Sqrt + a.eps));
        }
        write(param, p);
        write(expAvg, m);
        write(expAvgSq, v);
      }
    },
  };
}
