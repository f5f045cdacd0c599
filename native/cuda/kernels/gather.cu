// gather: embedding lookup, table [V, D] (contiguous f32, bf16 or f16), ids int32 [N]
// -> out T [N, D] (f32 or bf16; a value the table holds exactly is copied exactly, an
// f32 or f16 entry going to bf16 is rounded to nearest even). Ids out of range are an error reported before anything is
// written (the contract), so the ids are checked on the device first and the host
// waits for that one answer: a sync per lookup, cheap next to a forward pass.
//
// ints: [V, D, N, dtype_table, dtype T of out]; ptrs: [table, ids, out]
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

template <int DT, class T>
__global__ void gather_kernel(const void* table, const int32_t* ids, T* out, int64_t N, int64_t D) {
  const int64_t total = N * D;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / D, d = e % D;
    const int64_t src = static_cast<int64_t>(ids[i]) * D + d;
    if (DT == F32) st(out, e, static_cast<const float*>(table)[src]);
    else if (DT == BF16) st(out, e, bf16_load(static_cast<const uint16_t*>(table), src));
    else st(out, e, f16_load(static_cast<const uint16_t*>(table), src));
  }
}

template <class T>
void launch(const void* table, const int32_t* ids, void* outp, int64_t dt, int64_t N, int64_t D) {
  T* out = static_cast<T*>(outp);
  const unsigned grid = grid_for(N * D, 256);
  if (dt == F32) gather_kernel<F32><<<grid, 256, 0, stream()>>>(table, ids, out, N, D);
  else if (dt == BF16) gather_kernel<BF16><<<grid, 256, 0, stream()>>>(table, ids, out, N, D);
  else gather_kernel<F16><<<grid, 256, 0, stream()>>>(table, ids, out, N, D);
}

void gather(const KernelArgs& a) {
  const int64_t V = a.ints[0], D = a.ints[1], N = a.ints[2], dt = a.ints[3], dt_out = trailing_dtype(a, 4);
  if (!compute_dtype_ok(a, dt_out)) return;
  if (dt != F32 && dt != BF16 && dt != F16) {
    a.error = "embedding table must be f32, bf16 or f16";
    return;
  }
  const int32_t* ids = static_cast<const int32_t*>(a.ptrs[1]);
  const int64_t bad = first_bad_index(ids, N, 0, V, kNoSkip);
  if (bad >= 0) {
    int32_t id = 0;
    cudaMemcpy(&id, ids + bad, sizeof id, cudaMemcpyDeviceToHost);
    a.error = "embedding id " + std::to_string(id) + " at position " + std::to_string(bad) +
              " is out of range for a table of " + std::to_string(V) + " rows";
    return;
  }
  if (N * D == 0) return;
  if (dt_out == BF16) launch<bf16>(a.ptrs[0], ids, a.ptrs[2], dt, N, D);
  else launch<float>(a.ptrs[0], ids, a.ptrs[2], dt, N, D);
}

}  // namespace

FINLORA_KERNEL("gather", gather)

}  // namespace cuda
}  // namespace finlora
