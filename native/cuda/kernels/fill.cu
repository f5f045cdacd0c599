// fill: every element of a contiguous tensor of any dtype = value, converted as copy
// converts (native/cpu/kernels/copy.cc): ints truncate and saturate, NaN becomes 0.
//
// ints: [dtype, n]; floats: [value]; ptrs: [out]
#include <cmath>
#include <cstring>

#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

template <typename T>
__global__ void fill_kernel(T* out, int64_t n, T v) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = v;
}

template <typename T>
void launch(void* out, int64_t n, T v) {
  fill_kernel<T><<<grid_for(n, 256), 256, 0, stream()>>>(static_cast<T*>(out), n, v);
}

// Host-side bit patterns, the same rounding as the CPU's converters.
uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

template <typename T>
T saturate(double v, double lo, double hi) {
  if (std::isnan(v)) return 0;
  // The CPU rounds the value to f32 first, then clamps and truncates.
  const float f = static_cast<float>(v);
  if (f >= static_cast<float>(hi) && hi >= 2147483647.0) return static_cast<T>(2147483647);
  if (f <= static_cast<float>(lo) && lo <= -2147483648.0) return static_cast<T>(-2147483647 - 1);
  return static_cast<T>(std::fmin(std::fmax(f, static_cast<float>(lo)), static_cast<float>(hi)));
}

int32_t to_i32(double v) {
  if (std::isnan(v)) return 0;
  if (v >= 2147483648.0) return 2147483647;
  if (v <= -2147483648.0) return -2147483647 - 1;
  return static_cast<int32_t>(v);
}

void fill(const KernelArgs& a) {
  const int64_t dt = a.ints[0], n = a.ints[1];
  if (n <= 0) return;
  const double v = a.floats[0];
  void* out = a.ptrs[0];
  switch (dt) {
    case F32: launch<float>(out, n, static_cast<float>(v)); break;
    case BF16: launch<uint16_t>(out, n, to_bf16(static_cast<float>(v))); break;
    case F16: launch<uint16_t>(out, n, __half_as_ushort(__float2half_rn(static_cast<float>(v)))); break;
    case I8: launch<int8_t>(out, n, saturate<int8_t>(v, -128, 127)); break;
    case U8: launch<uint8_t>(out, n, saturate<uint8_t>(v, 0, 255)); break;
    default: launch<int32_t>(out, n, to_i32(v)); break;
  }
}

}  // namespace

FINLORA_KERNEL("fill", fill)

}  // namespace cuda
}  // namespace finlora
