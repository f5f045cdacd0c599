// scatterAdd: out[ids[i], :] += src[i, :] (+=), the embedding's weight gradient:
// src T [N, D] (f32 or bf16, widened exactly), ids int32 [N], out f32 [V, D]. Repeated ids accumulate through
// atomicAdd, so their order of addition (and the last bits of such rows) may vary
// from run to run. Ids are checked before anything is written, as in gather.
//
// ints: [V, D, N, dtype T of src]; ptrs: [src, ids, out]
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

template <class T>
__global__ void scatter_add_kernel(const T* src, const int32_t* ids, float* out, int64_t V, int64_t N, int64_t D) {
  const int64_t total = N * D;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / D, d = e % D;
    const int64_t row = ids[i];
    if (row >= 0 && row < V) atomicAdd(out + row * D + d, ld(src, e));
  }
}

void scatter_add(const KernelArgs& a) {
  const int64_t V = a.ints[0], D = a.ints[1], N = a.ints[2], dt = trailing_dtype(a, 3);
  if (!compute_dtype_ok(a, dt)) return;
  const int32_t* ids = static_cast<const int32_t*>(a.ptrs[1]);
  const int64_t bad = first_bad_index(ids, N, 0, V, kNoSkip);
  if (bad >= 0) {  // as on the CPU: a bad id leaves out untouched
    int32_t id = 0;
    cudaMemcpy(&id, ids + bad, sizeof id, cudaMemcpyDeviceToHost);
    a.error = "embedding id " + std::to_string(id) + " at position " + std::to_string(bad) +
              " is out of range for a table of " + std::to_string(V) + " rows";
    return;
  }
  if (N * D == 0) return;
  float* out = static_cast<float*>(a.ptrs[2]);
  if (dt == BF16)
    scatter_add_kernel<<<grid_for(N * D, 256), 256, 0, stream()>>>(static_cast<const bf16*>(a.ptrs[0]), ids, out, V, N, D);
  else
    scatter_add_kernel<<<grid_for(N * D, 256), 256, 0, stream()>>>(static_cast<const float*>(a.ptrs[0]), ids, out, V, N, D);
}

}  // namespace

FINLORA_KERNEL("scatterAdd", scatter_add)

}  // namespace cuda
}  // namespace finlora
