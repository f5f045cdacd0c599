// reduce: sum or max over the middle axis of x viewed as [outer, n, inner] into
// out [outer, inner]. Sums accumulate in f64 so long reductions (norms, losses,
// gradient sums over a batch) keep full f32 accuracy; max propagates NaN.
//
// ints: [op (0 sum, 1 max), outer, n, inner]; ptrs: [x, out]
#include <cmath>
#include <vector>

#include "kernel.h"

namespace finlora {
namespace {

void reduce_kernel(const KernelArgs& a) {
  const int64_t op = a.ints[0], outer = a.ints[1], n = a.ints[2], inner = a.ints[3];
  const float* x = static_cast<const float*>(a.ptrs[0]);
  float* out = static_cast<float*>(a.ptrs[1]);
  parallel_for(outer * inner, 1 + (1 << 14) / (n + 1), [&](int64_t b, int64_t e) {
    if (inner == 1) {
      for (int64_t o = b; o < e; ++o) {
        const float* row = x + o * n;
        if (op == 0) {
          double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
          int64_t i = 0;
          for (; i + 4 <= n; i += 4) {
            s0 += row[i];
            s1 += row[i + 1];
            s2 += row[i + 2];
            s3 += row[i + 3];
          }
          for (; i < n; ++i) s0 += row[i];
          out[o] = static_cast<float>((s0 + s1) + (s2 + s3));
        } else {
          float m = -INFINITY;
          for (int64_t i = 0; i < n; ++i) m = (row[i] > m || std::isnan(row[i])) ? row[i] : m;
          out[o] = m;
        }
      }
      return;
    }
    for (int64_t idx = b; idx < e; ++idx) {
      const int64_t o = idx / inner, j = idx % inner;
      const float* col = x + o * n * inner + j;
      if (op == 0) {
        double s = 0;
        for (int64_t i = 0; i < n; ++i) s += col[i * inner];
        out[idx] = static_cast<float>(s);
      } else {
        float m = -INFINITY;
        for (int64_t i = 0; i < n; ++i) {
          const float v = col[i * inner];
          m = (v > m || std::isnan(v)) ? v : m;
        }
        out[idx] = m;
      }
    }
  });
}

}  // namespace

FINLORA_KERNEL("reduce", reduce_kernel)

}  // namespace finlora
