// Reference kernels for matrix products.
import type { Kernels } from '../kernels.js';
import { read, write } from './reference.js';

export function linalgKernels(): Partial<Kernels> {
  return {
    matmul: (a, b, out, { transA, transB, alpha, accumulate }) => {
      const va = read(a), vb = read(b);
      const batch = out.rank === 3 ? out.shape[0] : 1;
      const M = out.shape[out.rank - 2], N = out.shape[out.rank - 1];
      const K = transA ? a.shape[a.rank - 2] : a.shape[a.rank - 1];
      const aBatch = a.rank === 3 && a.shape[0] === batch ? M * K : 0;
      const bBatch = b.rank === 3 && b.shape[0] === batch ? K * N : 0;
      const prev = accumulate ? read(out) : new Float64Array(batch * M * N);
      const r = new Float64Array(batch * M * N);
      for (let p = 0; p < batch; p++) {
        for (let i = 0; i < M; i++) {
          for (let j = 0; j < N; j++) {
            let acc = 0;
            for (let k = 0; k < K; k++) {
              const x = va[p * aBatch + (transA ? k * M + i : i * K + k)];
              const y = vb[p * bBatch + (transB ? j * K + k : k * N + j)];
              acc += x * y;
            }
            const o = (p * M + i) * N + j;
            r[o] = alpha * acc + prev[o];
          }
        }
      }
      write(out, r);
    },
  };
}
