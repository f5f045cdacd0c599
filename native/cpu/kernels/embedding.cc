// embedding: gather rows of a table by id (forward) and scatter-add rows back into a
// table-shaped gradient (backward), as torch.nn.Embedding does.
//
// gather ints: [V, D, N, table_dtype]; ptrs: [table [V, D] (f32/bf16/f16), ids int32 [N], out f32 [N, D]]
//   out = table[ids] (=), converted to f32.
// scatterAdd ints: [V, D, N]; ptrs: [src f32 [N, D], ids int32 [N], out f32 [V, D]]
//   out[ids[i], :] += src[i, :] (+=): repeated ids accumulate.
// Both check every id before writing anything, so a bad id leaves out untouched.
#include <string>

#include "kernel.h"

namespace finlora {
namespace {

bool check_ids(const KernelArgs& a, const int32_t* ids, int64_t n, int64_t V) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= V) {
      a.error = "embedding id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                " is out of range for a table of " + std::to_string(V) + " rows";
      return false;
    }
  }
  return true;
}

void gather_kernel(const KernelArgs& a) {
  const int64_t V = a.ints[0], D = a.ints[1], N = a.ints[2], dt = a.ints[3];
  const int32_t* ids = static_cast<const int32_t*>(a.ptrs[1]);
  float* out = static_cast<float*>(a.ptrs[2]);
  if (!check_ids(a, ids, N, V)) return;
  if (dt != F32 && dt != BF16 && dt != F16) {
    a.error = "embedding table must be f32, bf16 or f16";
    return;
  }
  parallel_for(N, 1 + (1 << 14) / (D + 1), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* o = out + r * D;
      const int64_t row = static_cast<int64_t>(ids[r]) * D;
      if (dt == F32) {
        const float* t = static_cast<const float*>(a.ptrs[0]) + row;
        for (int64_t c = 0; c < D; ++c) o[c] = t[c];
      } else if (dt == BF16) {
        const uint16_t* t = static_cast<const uint16_t*>(a.ptrs[0]) + row;
        for (int64_t c = 0; c < D; ++c) o[c] = bf16_to_f32(t[c]);
      } else {
        const uint16_t* t = static_cast<const uint16_t*>(a.ptrs[0]) + row;
        for (int64_t c = 0; c < D; ++c) o[c] = f16_to_f32(t[c]);
      }
    }
  });
}

// Threads own column blocks of the table, so repeated ids never race and the sum
// order (ascending position) does not depend on the thread count.
void scatter_add_kernel(const KernelArgs& a) {
  const int64_t V = a.ints[0], D = a.ints[1], N = a.ints[2];
  const float* src = static_cast<const float*>(a.ptrs[0]);
  const int32_t* ids = static_cast<const int32_t*>(a.ptrs[1]);
  float* out = static_cast<float*>(a.ptrs[2]);
  if (!check_ids(a, ids, N, V)) return;
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (D + kBlock - 1) / kBlock;
  parallel_for(blocks, 1 + (1 << 12) / (N + 1), [&](int64_t b0, int64_t b1) {
    const int64_t c0 = b0 * kBlock, c1 = b1 * kBlock < D ? b1 * kBlock : D;
    for (int64_t i = 0; i < N; ++i) {
      const float* s = src + i * D;
      float* o = out + static_cast<int64_t>(ids[i]) * D;
      for (int64_t c = c0; c < c1; ++c) o[c] += s[c];
    }
  });
}

}  // namespace

FINLORA_KERNEL("gather", gather_kernel)
FINLORA_KERNEL("scatterAdd", scatter_add_kernel)

}  // namespace finlora
