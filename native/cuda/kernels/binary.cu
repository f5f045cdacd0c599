// binary: elementwise add/sub/mul/div/maximum/eq over T (f32 or bf16: a, b and out
// all T, computed in f32, a bf16 result rounded once) with broadcasting, as
// native/cpu/kernels/binary.cc. out is contiguous; a and b are strided views already
// broadcast to out's shape (stride 0 on broadcast dimensions). maximum propagates NaN
// from either side.
//
// ints: [op, ndim, shape[ndim], a_strides[ndim], b_strides[ndim], dtype T]; ptrs: [a, b, out]
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

template <int OP, class T>
__global__ void binary_strided(const T* a, const T* b, T* out, Layout L, int64_t n) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t rem = e, ia = 0, ib = 0;
    for (int d = L.nd - 1; d >= 0; --d) {
      const int64_t idx = rem % L.shape[d];
      rem /= L.shape[d];
      ia += idx * L.sa[d];
      ib += idx * L.sb[d];
    }
    st(out, e, apply<OP>(ld(a, ia), ld(b, ib)));
  }
}

// Both inputs contiguous and unbroadcast: the common case, no index arithmetic.
template <int OP, class T, bool VEC>
__global__ void binary_flat(const T* a, const T* b, T* out, int64_t n) {
  for (int64_t i = chunk_begin() * 8; i < n; i += chunk_step() * 8) {
    if (VEC && i + 8 <= n) {
      float x[8], y[8];
      ld8(a + i, x);
      ld8(b + i, y);
#pragma unroll
      for (int j = 0; j < 8; ++j) x[j] = apply<OP>(x[j], y[j]);
      st8(out + i, x);
    } else {
      for (int64_t e = i; e < i + 8 && e < n; ++e) st(out, e, apply<OP>(ld(a, e), ld(b, e)));
    }
  }
}

template <int OP, class T>
void launch(const KernelArgs& g, const Layout& L, int64_t n, bool flat) {
  const T* a = static_cast<const T*>(g.ptrs[0]);
  const T* b = static_cast<const T*>(g.ptrs[1]);
  T* out = static_cast<T*>(g.ptrs[2]);
  if (!flat) {
    binary_strided<OP, T><<<grid_for(n, 256), 256, 0, stream()>>>(a, b, out, L, n);
    return;
  }
  const unsigned grid = grid_for((n + 7) / 8, 256);
  if (aligned16(a) && aligned16(b) && aligned16(out)) binary_flat<OP, T, true><<<grid, 256, 0, stream()>>>(a, b, out, n);
  else binary_flat<OP, T, false><<<grid, 256, 0, stream()>>>(a, b, out, n);
}

template <class T>
void dispatch(const KernelArgs& a, int64_t op, const Layout& L, int64_t n, bool flat) {
  switch (op) {
    case Add: launch<Add, T>(a, L, n, flat); break;
    case Sub: launch<Sub, T>(a, L, n, flat); break;
    case Mul: launch<Mul, T>(a, L, n, flat); break;
    case Div: launch<Div, T>(a, L, n, flat); break;
    case Maximum: launch<Maximum, T>(a, L, n, flat); break;
    case Eq: launch<Eq, T>(a, L, n, flat); break;
    default: a.error = "unknown op " + std::to_string(op);
  }
}

void binary(const KernelArgs& a) {
  const int64_t op = a.ints[0], nd = a.ints[1];
  if (nd > kMaxRank) {
    a.error = "rank " + std::to_string(nd) + " is above the supported " + std::to_string(kMaxRank);
    return;
  }
  const int64_t dt = trailing_dtype(a, static_cast<size_t>(2 + 3 * nd));
  if (!compute_dtype_ok(a, dt)) return;
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
  if (dt == BF16) dispatch<bf16>(a, op, L, n, flat);
  else dispatch<float>(a, op, L, n, flat);
}

}  // namespace

FINLORA_KERNEL("binary", binary)

}  // namespace cuda
}  // namespace finlora
