// copy: strided gather/scatter with dtype conversion, the one kernel behind
// contiguous(), cast(), concat() and slice assignment. Same contract and layout as
// native/cpu/kernels/copy.cc: integer targets truncate toward zero and saturate, NaN
// becomes 0; same-dtype copies move raw bits (int32 exactly, bf16 NaN payloads kept).
//
// ints: [ndim, dtype_in, dtype_out, shape[ndim], in_strides[ndim], out_strides[ndim]]
// ptrs: [in, out]; strides in elements, may be 0 (broadcast) on the input.
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

constexpr int kMaxRank = 8;

struct Layout {
  int nd;
  int64_t shape[kMaxRank];
  int64_t sin[kMaxRank];
  int64_t sout[kMaxRank];
};

__device__ __forceinline__ float load(const void* p, int dt, int64_t i) {
  switch (dt) {
    case F32: return static_cast<const float*>(p)[i];
    case BF16: return bf16_load(static_cast<const uint16_t*>(p), i);
    case F16: return f16_load(static_cast<const uint16_t*>(p), i);
    case I8: return static_cast<float>(static_cast<const int8_t*>(p)[i]);
    case U8: return static_cast<float>(static_cast<const uint8_t*>(p)[i]);
    default: return static_cast<float>(static_cast<const int32_t*>(p)[i]);
  }
}

template <typename T>
__device__ __forceinline__ T to_int(float v, float lo, float hi) {
  if (isnan(v)) return 0;
  return static_cast<T>(fminf(fmaxf(v, lo), hi));
}

// int32 saturates at INT32_MAX, which f32 cannot hold: compare against 2^31.
__device__ __forceinline__ int32_t to_i32(float v) {
  if (isnan(v)) return 0;
  if (v >= 2147483648.0f) return 2147483647;
  if (v <= -2147483648.0f) return -2147483647 - 1;
  return static_cast<int32_t>(v);
}

__device__ __forceinline__ void store(void* p, int dt, int64_t i, float v) {
  switch (dt) {
    case F32: static_cast<float*>(p)[i] = v; break;
    case BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16_bits(v); break;
    case F16: static_cast<uint16_t*>(p)[i] = __half_as_ushort(__float2half_rn(v)); break;
    case I8: static_cast<int8_t*>(p)[i] = to_int<int8_t>(v, -128.f, 127.f); break;
    case U8: static_cast<uint8_t*>(p)[i] = to_int<uint8_t>(v, 0.f, 255.f); break;
    default: static_cast<int32_t*>(p)[i] = to_i32(v); break;
  }
}

__device__ __forceinline__ void copy_raw(const void* in, void* out, int size, int64_t ii, int64_t oi) {
  if (size == 4) static_cast<uint32_t*>(out)[oi] = static_cast<const uint32_t*>(in)[ii];
  else if (size == 2) static_cast<uint16_t*>(out)[oi] = static_cast<const uint16_t*>(in)[ii];
  else static_cast<uint8_t*>(out)[oi] = static_cast<const uint8_t*>(in)[ii];
}

__global__ void copy_kernel(const void* in, void* out, Layout L, int64_t n, int din, int dout, int raw_size) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t rem = e, ii = 0, oi = 0;
    for (int d = L.nd - 1; d >= 0; --d) {
      const int64_t idx = rem % L.shape[d];
      rem /= L.shape[d];
      ii += idx * L.sin[d];
      oi += idx * L.sout[d];
    }
    if (raw_size > 0) copy_raw(in, out, raw_size, ii, oi);
    else store(out, dout, oi, load(in, din, ii));
  }
}

// f32 <-> bf16 between contiguous buffers (a model's casts at the bf16 boundary:
// the embedding output, the LoRA branch), eight elements per thread; the same
// conversions as load/store above.
__device__ __forceinline__ float ld_any(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ld_any(const uint16_t* p, int64_t i) { return bf16_load(p, i); }
__device__ __forceinline__ void st_any(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st_any(uint16_t* p, int64_t i, float v) { p[i] = f32_to_bf16_bits(v); }

template <class TI, class TO, bool VEC>
__global__ void cast_flat(const TI* in, TO* out, int64_t n) {
  for (int64_t i = chunk_begin() * 8; i < n; i += chunk_step() * 8) {
    if (VEC && i + 8 <= n) {
      float v[8];
      if constexpr (sizeof(TI) == 4) {
        ld8(in + i, v);
      } else {
        ld8(reinterpret_cast<const bf16*>(in + i), v);
      }
      if constexpr (sizeof(TO) == 4) {
        st8(out + i, v);
      } else {
        const uint4 u = make_uint4(f32_to_bf16_bits(v[0]) | static_cast<uint32_t>(f32_to_bf16_bits(v[1])) << 16,
                                   f32_to_bf16_bits(v[2]) | static_cast<uint32_t>(f32_to_bf16_bits(v[3])) << 16,
                                   f32_to_bf16_bits(v[4]) | static_cast<uint32_t>(f32_to_bf16_bits(v[5])) << 16,
                                   f32_to_bf16_bits(v[6]) | static_cast<uint32_t>(f32_to_bf16_bits(v[7])) << 16);
        *reinterpret_cast<uint4*>(out + i) = u;
      }
    } else {
      for (int64_t e = i; e < i + 8 && e < n; ++e) st_any(out, e, ld_any(in, e));
    }
  }
}

template <class TI, class TO>
void launch_cast(const void* in, void* out, int64_t n) {
  const unsigned grid = grid_for((n + 7) / 8, 256);
  if (aligned16(in) && aligned16(out))
    cast_flat<TI, TO, true><<<grid, 256, 0, stream()>>>(static_cast<const TI*>(in), static_cast<TO*>(out), n);
  else
    cast_flat<TI, TO, false><<<grid, 256, 0, stream()>>>(static_cast<const TI*>(in), static_cast<TO*>(out), n);
}

// Row-major contiguous: every non-unit dimension has the stride the shape implies.
bool contiguous(const Layout& L, bool out) {
  int64_t expect = 1;
  for (int d = L.nd - 1; d >= 0; --d) {
    const int64_t stride = out ? L.sout[d] : L.sin[d];
    if (L.shape[d] != 1 && stride != expect) return false;
    expect *= L.shape[d];
  }
  return true;
}

int dtype_size(int64_t dt) { return dt == F32 || dt == I32 ? 4 : dt == BF16 || dt == F16 ? 2 : 1; }

void copy(const KernelArgs& a) {
  const int64_t nd = a.ints[0], din = a.ints[1], dout = a.ints[2];
  if (nd > kMaxRank) {
    a.error = "rank " + std::to_string(nd) + " is above the supported " + std::to_string(kMaxRank);
    return;
  }
  Layout L{};
  L.nd = static_cast<int>(nd);
  int64_t n = 1;
  for (int64_t d = 0; d < nd; ++d) {
    L.shape[d] = a.ints[3 + d];
    L.sin[d] = a.ints[3 + nd + d];
    L.sout[d] = a.ints[3 + 2 * nd + d];
    n *= L.shape[d];
  }
  if (n == 0) return;
  if (contiguous(L, false) && contiguous(L, true)) {
    if (din == dout) {
      cudaMemcpyAsync(a.ptrs[1], a.ptrs[0], static_cast<size_t>(n) * dtype_size(din), cudaMemcpyDeviceToDevice, stream());
      return;
    }
    if (din == F32 && dout == BF16) return launch_cast<float, uint16_t>(a.ptrs[0], a.ptrs[1], n);
    if (din == BF16 && dout == F32) return launch_cast<uint16_t, float>(a.ptrs[0], a.ptrs[1], n);
  }
  const int raw = din == dout ? dtype_size(din) : 0;
  copy_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(a.ptrs[0], a.ptrs[1], L, n, static_cast<int>(din),
                                                      static_cast<int>(dout), raw);
}

}  // namespace

FINLORA_KERNEL("copy", copy)

}  // namespace cuda
}  // namespace finlora
