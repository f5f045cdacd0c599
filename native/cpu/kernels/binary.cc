// binary: elementwise add/sub/mul/div/maximum/eq over f32 with broadcasting.
// The output is contiguous; the inputs are strided views already broadcast to the
// output's shape (stride 0 on broadcast dimensions).
//
// ints: [op, ndim, shape[ndim], a_strides[ndim], b_strides[ndim]]; ptrs: [a, b, out]
// op codes match BINARY_OPS in src/backend/kernels.ts.
// The contiguous same-shape and scalar-broadcast inner loops are simple enough for the
// compiler to vectorise; target_clones builds AVX-512, AVX2 and baseline versions and
// picks one at load time.
#include "kernel.h"

namespace finlora {
namespace {

enum BinaryOp : int64_t { Add = 0, Sub = 1, Mul = 2, Div = 3, Maximum = 4, Eq = 5 };

template <int OP>
inline float apply(float x, float y) {
  if (OP == Add) return x + y;
  if (OP == Sub) return x - y;
  if (OP == Mul) return x * y;
  if (OP == Div) return x / y;
  if (OP == Maximum) return x > y || x != x ? x : y;
  return x == y ? 1.0f : 0.0f;
}

template <int OP>
FINLORA_CLONES void row(const float* __restrict a, int64_t sa, const float* __restrict b, int64_t sb,
                        float* __restrict o, int64_t n) {
  if (sa == 1 && sb == 1) {
    for (int64_t i = 0; i < n; ++i) o[i] = apply<OP>(a[i], b[i]);
  } else if (sa == 1 && sb == 0) {
    const float y = b[0];
    for (int64_t i = 0; i < n; ++i) o[i] = apply<OP>(a[i], y);
  } else if (sa == 0 && sb == 1) {
    const float x = a[0];
    for (int64_t i = 0; i < n; ++i) o[i] = apply<OP>(x, b[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) o[i] = apply<OP>(a[i * sa], b[i * sb]);
  }
}

template <int OP>
void run(const KernelArgs& k) {
  const int64_t nd = k.ints[1];
  const int64_t* shape = &k.ints[2];
  const int64_t* sa = shape + nd;
  const int64_t* sb = sa + nd;
  const float* a = static_cast<const float*>(k.ptrs[0]);
  const float* b = static_cast<const float*>(k.ptrs[1]);
  float* o = static_cast<float*>(k.ptrs[2]);
  if (nd == 0) {
    o[0] = apply<OP>(a[0], b[0]);
    return;
  }
  const int64_t rows = leading_rows(shape, nd);
  const int64_t cols = shape[nd - 1];
  parallel_for(rows, (1 << 15) / (cols + 1) + 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t ia, ib;
      row_offsets(shape, nd, r, sa, sb, ia, ib);
      row<OP>(a + ia, sa[nd - 1], b + ib, sb[nd - 1], o + r * cols, cols);
    }
  });
}

void binary_kernel(const KernelArgs& k) {
  switch (k.ints[0]) {
    case Add: return run<Add>(k);
    case Sub: return run<Sub>(k);
    case Mul: return run<Mul>(k);
    case Div: return run<Div>(k);
    case Maximum: return run<Maximum>(k);
    default: return run<Eq>(k);
  }
}

}  // namespace

FINLORA_KERNEL("binary", binary_kernel)

}  // namespace finlora
