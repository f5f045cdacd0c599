// copy: strided gather/scatter with dtype conversion, the one kernel behind
// contiguous(), cast(), concat() and slice assignment; fill: set every element.
//
// copy ints: [ndim, dtype_in, dtype_out, shape[ndim], in_strides[ndim], out_strides[ndim]]
//   ptrs: [in, out]; strides in elements, may be 0 (broadcast) on the input.
// fill ints: [dtype, n]; floats: [value]; ptrs: [out] (contiguous)
#include <cmath>
#include <cstring>

#include "kernel.h"

namespace finlora {
namespace {

// Integer targets truncate toward zero and saturate, as a cast to int does in
// PyTorch for in-range values; NaN becomes 0.
template <typename T>
inline T to_int(float v, float lo, float hi) {
  if (std::isnan(v)) return 0;
  if (v < lo) v = lo;
  if (v > hi) v = hi;
  return static_cast<T>(v);
}

// int32 saturates at INT32_MAX, which f32 cannot hold: clamping in f32 would stop at
// 2147483520, so the comparison is against 2^31 and the limit is stored directly.
// Doubles (fill's value) take the same rule.
inline int32_t to_i32(double v) {
  if (std::isnan(v)) return 0;
  if (v >= 2147483648.0) return INT32_MAX;
  if (v <= -2147483648.0) return INT32_MIN;
  return static_cast<int32_t>(v);
}

inline void store(void* p, int64_t dt, int64_t i, float v) {
  switch (dt) {
    case F32: static_cast<float*>(p)[i] = v; break;
    case BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(v); break;
    case F16: static_cast<uint16_t*>(p)[i] = f32_to_f16(v); break;
    case I8: static_cast<int8_t*>(p)[i] = to_int<int8_t>(v, -128.f, 127.f); break;
    case U8: static_cast<uint8_t*>(p)[i] = to_int<uint8_t>(v, 0.f, 255.f); break;
    default: static_cast<int32_t*>(p)[i] = to_i32(v); break;
  }
}

int64_t dtype_size(int64_t dt) {
  switch (dt) {
    case F32: case I32: return 4;
    case BF16: case F16: return 2;
    default: return 1;
  }
}

void copy_kernel(const KernelArgs& a) {
  const int64_t nd = a.ints[0], din = a.ints[1], dout = a.ints[2];
  const int64_t* shape = &a.ints[3];
  const int64_t* sin = shape + nd;
  const int64_t* sout = sin + nd;
  const void* in = a.ptrs[0];
  void* out = a.ptrs[1];
  if (nd == 0) {
    if (din == dout && din == I32) static_cast<int32_t*>(out)[0] = static_cast<const int32_t*>(in)[0];
    else store(out, dout, 0, load_as_f32(in, din, 0));
    return;
  }
  const int64_t rows = leading_rows(shape, nd);
  const int64_t cols = shape[nd - 1], si = sin[nd - 1], so = sout[nd - 1];
  const bool same = din == dout;
  const int64_t esz = dtype_size(din);
  parallel_for(rows, (1 << 14) / (cols + 1) + 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t ii, oi;
      row_offsets(shape, nd, r, sin, sout, ii, oi);
      if (same && si == 1 && so == 1) {
        std::memcpy(static_cast<char*>(out) + oi * esz, static_cast<const char*>(in) + ii * esz, cols * esz);
      } else if (same && din == I32) {  // int32 through f32 would lose bits
        const int32_t* src = static_cast<const int32_t*>(in) + ii;
        int32_t* dst = static_cast<int32_t*>(out) + oi;
        for (int64_t c = 0; c < cols; ++c) dst[c * so] = src[c * si];
      } else if (din == F32 && dout == F32) {
        const float* src = static_cast<const float*>(in) + ii;
        float* dst = static_cast<float*>(out) + oi;
        for (int64_t c = 0; c < cols; ++c) dst[c * so] = src[c * si];
      } else {
        for (int64_t c = 0; c < cols; ++c) store(out, dout, oi + c * so, load_as_f32(in, din, ii + c * si));
      }
    }
  });
}

void fill_kernel(const KernelArgs& a) {
  const int64_t dt = a.ints[0], n = a.ints[1];
  const float v = static_cast<float>(a.floats[0]);
  void* out = a.ptrs[0];
  if (dt == F32) {
    float* o = static_cast<float*>(out);
    for (int64_t i = 0; i < n; ++i) o[i] = v;
    return;
  }
  if (dt == I32) {
    int32_t* o = static_cast<int32_t*>(out);
    const int32_t iv = to_i32(a.floats[0]);
    for (int64_t i = 0; i < n; ++i) o[i] = iv;
    return;
  }
  for (int64_t i = 0; i < n; ++i) store(out, dt, i, v);
}

}  // namespace

FINLORA_KERNEL("copy", copy_kernel)
FINLORA_KERNEL("fill", fill_kernel)

}  // namespace finlora
