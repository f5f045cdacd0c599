// binary: elementwise add/sub/mul/div/maximum/eq over f32 with broadcasting, as
// native/cpu/kernels/binary.cc. out is contiguous; a and b are strided views already
// broadcast to out's shape (stride 0 on broadcast dimensions). maximum propagates NaN
// from either side.
//
// ints: [op, ndim, shape[ndim], a_strides[ndim], b_strides[ndim]]; ptrs: [a, b, out]
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

enum BinaryOp : int { Add = 0, Sub, Mul, Div, Maximum, Eq };
constexpr int kMaxRank = 8;

struct Layout {
  int nd;
  int64_t shape[kMaxRank];
  int64_t sa[kMaxRank];
  int64_t sb[kMaxRank];
};

template <int OP>
__device__ __forceinline__ float apply(float x, float y) {
  if (OP == Add) return x + y;
  if (OP == Sub) return x - y;
  if (OP == Mul) return x * y;
  if (OP == Div) return __fdiv_rn(x, y);
  if (OP == Maximum) return x > y || x != x ? x : y;
  return x == y ? 1.0f : 0.0f;
}

template <int OP>
__global__ void binary_strided(const float* a, const float* b, float* out, Layout L, int64_t n) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t rem = e, ia = 0, ib = 0;
    for (int d = L.nd - 1; d >= 0; --d) {
      const int64_t idx = rem % L.shape[d];
      rem /= L.shape[d];
      ia += idx * L.sa[d];
      ib += idx * L.sb[d];
    }
    out[e] = apply<OP>(a[ia], b[ib]);
  }
}

// Both inputs contiguous and unbroadcast: the common case, no index arithmetic.
template <int OP>
__global__ void binary_flat(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[e] = apply<OP>(a[e], b[e]);
}

template <int OP>
void launch(const float* a, const float* b, float* out, const Layout& L, int64_t n, bool flat) {
  if (flat) binary_flat<OP><<<grid_for(n, 256), 256, 0, stream()>>>(a, b, out, n);
  else binary_strided<OP><<<grid_for(n, 256), 256, 0, stream()>>>(a, b, out, L, n);
}

void binary(const KernelArgs& a) {
  const int64_t op = a.ints[0], nd = a.ints[1];
  if (nd > kMaxRank) {
    a.error = "rank " + std::to_string(nd) + " is above the supported " + std::to_string(kMaxRank);
    return;
  }
  Layout L{};
  L.nd = static_cast<int>(nd);
  int64_t n = 1;
  for (int64_t d = 0; d < nd; ++d) {
    L.shape[d] = a.ints[2 + d];
    L.sa[d] = a.ints[2 + nd + d];
    L.sb[d] = a.ints[2 + 2 * nd + d];
    n *= L.shape[d];
  }
  if (n == 0) return;
  // Contiguous when the strides are the row-major strides of the shape.
  bool flat = true;
  int64_t expect = 1;
  for (int64_t d = nd - 1; d >= 0; --d) {
    if (L.shape[d] != 1 && (L.sa[d] != expect || L.sb[d] != expect)) flat = false;
    expect *= L.shape[d];
  }
  const float* x = static_cast<const float*>(a.ptrs[0]);
  const float* y = static_cast<const float*>(a.ptrs[1]);
  float* out = static_cast<float*>(a.ptrs[2]);
  switch (op) {
    case Add: launch<Add>(x, y, out, L, n, flat); break;
    case Sub: launch<Sub>(x, y, out, L, n, flat); break;
    case Mul: launch<Mul>(x, y, out, L, n, flat); break;
    case Div: launch<Div>(x, y, out, L, n, flat); break;
    case Maximum: launch<Maximum>(x, y, out, L, n, flat); break;
    case Eq: launch<Eq>(x, y, out, L, n, flat); break;
    default: a.error = "unknown op " + std::to_string(op);
  }
}

}  // namespace

FINLORA_CUDA_KERNEL("binary", binary)

}  // namespace cuda
}  // namespace finlora
