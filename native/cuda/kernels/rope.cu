// rope: rotary position embedding (Su et al. 2021) in Hugging Face's rotate_half
// layout, as native/cpu/kernels/rope.cc: element i of a head pairs with i + D/2,
//   out[i]       = x[i] * cos[i] - x[i + D/2] * sin[i]
//   out[i + D/2] = x[i + D/2] * cos[i] + x[i] * sin[i]
// inverse = 1 negates sin (the backward: a rotation's transpose is its inverse).
// x and out are T (f32 or bf16, computed in f32, a bf16 result rounded once); cos and
// sin are always f32.
//
// ints: [B, T, H, D, cos_batch_stride (0 when cos/sin are [1, T, D/2], else T * D/2), inverse, dtype T]
// ptrs: [x [B, T, H, D], cos, sin ([B or 1, T, D/2]), out [B, T, H, D]] (=)
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

// One thread per pair (i, i + D/2).
template <class S>
__global__ void rope_kernel(const S* x, const float* cosv, const float* sinv, S* out, int64_t B, int64_t T,
                            int64_t H, int64_t D, int64_t cbs, float sign) {
  const int64_t half = D / 2, total = B * T * H * half;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e % half, bth = e / half, bt = bth / H;
    const int64_t b = bt / T, t = bt % T;
    const float c = cosv[b * cbs + t * half + i], s = sign * sinv[b * cbs + t * half + i];
    const S* xh = x + bth * D;
    S* oh = out + bth * D;
    const float x1 = ld(xh, i), x2 = ld(xh, i + half);
    st(oh, i, x1 * c - x2 * s);
    st(oh, i + half, x2 * c + x1 * s);
  }
}

void rope(const KernelArgs& a) {
  const int64_t B = a.ints[0], T = a.ints[1], H = a.ints[2], D = a.ints[3], cbs = a.ints[4], dt = trailing_dtype(a, 6);
  if (!compute_dtype_ok(a, dt)) return;
  const float sign = a.ints[5] != 0 ? -1.0f : 1.0f;
  const int64_t total = B * T * H * (D / 2);
  if (total == 0) return;
  const float* cosv = static_cast<const float*>(a.ptrs[1]);
  const float* sinv = static_cast<const float*>(a.ptrs[2]);
  const unsigned grid = grid_for(total, 256);
  if (dt == BF16)
    rope_kernel<<<grid, 256, 0, stream()>>>(static_cast<const bf16*>(a.ptrs[0]), cosv, sinv, static_cast<bf16*>(a.ptrs[3]),
                                            B, T, H, D, cbs, sign);
  else
    rope_kernel<<<grid, 256, 0, stream()>>>(static_cast<const float*>(a.ptrs[0]), cosv, sinv, static_cast<float*>(a.ptrs[3]),
                                            B, T, H, D, cbs, sign);
}

}  // namespace

FINLORA_KERNEL("rope", rope)

}  // namespace cuda
}  // namespace finlora
