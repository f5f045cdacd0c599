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

// The same rotation eight pairs at a time, for heads whose halves may be read 16 bytes at
// a time (D/2 a multiple of 8, every operand 16-byte aligned): a block row (threadIdx.y)
// takes one position (b, t), whose cos/sin row all its heads share, and a thread one run
// of eight i of one head. The roundings are spelled out (the _rn intrinsics: the first
// output's products rounded apart, the second's x1 * s fused into its sum, as nvcc's
// front end compiles rope_kernel), so the bits do not hang on what the compiler fuses;
// rope_kernel's first output may be fused further by nvcc, so the two paths can differ
// in the last bit (on an H200, about one f32 value in eight, eight bf16 in a million).
template <class S>
__global__ void rope_vec(const S* x, const float* cosv, const float* sinv, S* out, int64_t BT, int64_t T, int H,
                         int half, int64_t cbs, float sign) {
  const int runs = half / 8, items = H * runs;
  for (int64_t bt = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; bt < BT;
       bt += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t b = bt / T, t = bt - b * T;
    const float* cr = cosv + b * cbs + t * half;
    const float* sr = sinv + b * cbs + t * half;
    for (int j = threadIdx.x; j < items; j += blockDim.x) {
      const int h = j / runs, i = (j - h * runs) * 8;
      const int64_t head = (bt * H + h) * (2 * static_cast<int64_t>(half));
      float x1[8], x2[8], c[8], sn[8], o1[8], o2[8];
      ld8(x + head + i, x1);
      ld8(x + head + half + i, x2);
      ld8(cr + i, c);
      ld8(sr + i, sn);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float se = __fmul_rn(sign, sn[e]);
        o1[e] = __fsub_rn(__fmul_rn(x1[e], c[e]), __fmul_rn(x2[e], se));
        o2[e] = __fmaf_rn(x1[e], se, __fmul_rn(x2[e], c[e]));
      }
      st8(out + head + i, o1);
      st8(out + head + half + i, o2);
    }
  }
}

template <class S>
void launch(const KernelArgs& a, int64_t B, int64_t T, int64_t H, int64_t D, int64_t cbs, float sign) {
  const S* x = static_cast<const S*>(a.ptrs[0]);
  const float* cosv = static_cast<const float*>(a.ptrs[1]);
  const float* sinv = static_cast<const float*>(a.ptrs[2]);
  S* out = static_cast<S*>(a.ptrs[3]);
  const int64_t half = D / 2, items = H * (half / 8);
  if (half % 8 == 0 && items <= 0x7fffffffLL && cbs % 4 == 0 && aligned16(x) && aligned16(out) && aligned16(cosv) && aligned16(sinv)) {
    // Threads of a row: a multiple of 32 up to 256 covering the row's runs; rows fill the block to 256.
    const int tx = items >= 256 ? 256 : static_cast<int>((items + 31) / 32 * 32), ty = 256 / tx;
    const int64_t BT = B * T;
    const unsigned grid = grid_for(BT, ty);
    rope_vec<S><<<grid, dim3(tx, ty), 0, stream()>>>(x, cosv, sinv, out, BT, T, static_cast<int>(H), static_cast<int>(half), cbs, sign);
    return;
  }
  rope_kernel<<<grid_for(B * T * H * half, 256), 256, 0, stream()>>>(x, cosv, sinv, out, B, T, H, D, cbs, sign);
}

void rope(const KernelArgs& a) {
  const int64_t B = a.ints[0], T = a.ints[1], H = a.ints[2], D = a.ints[3], cbs = a.ints[4], dt = trailing_dtype(a, 6);
  if (!compute_dtype_ok(a, dt)) return;
  const float sign = a.ints[5] != 0 ? -1.0f : 1.0f;
  const int64_t total = B * T * H * (D / 2);
  if (total == 0) return;
  if (dt == BF16) launch<bf16>(a, B, T, H, D, cbs, sign);
  else launch<float>(a, B, T, H, D, cbs, sign);
}

}  // namespace

FINLORA_KERNEL("rope", rope)

}  // namespace cuda
}  // namespace finlora
