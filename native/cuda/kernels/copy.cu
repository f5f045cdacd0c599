// copy: strided gather/scatter with dtype conversion, the one kernel behind
// contiguous(), cast(), concat() and slice assignment. Same contract and layout as
// native/cpu/kernels/copy.cc: integer targets truncate toward zero and saturate, NaN
// becomes 0; same-dtype copies move raw bits (int32 exactly, bf16 NaN payloads kept).
//
// ints: [ndim, dtype_in, dtype_out, shape[ndim], in_strides[ndim], out_strides[ndim]]
// ptrs: [in, out]; strides in elements, may be 0 (broadcast) on the input.
//
// Three paths, each moving the same values: dense buffers (one memcpy, or a flat
// f32 <-> bf16 cast); rows, where after dropping axes of size 1 and merging axes that run
// into each other on both sides the innermost axis has unit stride on both sides (a
// transposed or sliced view of rows: attention heads, KV-cache slices, a cast of a
// view), walked a row piece at a time with the row's offsets computed once and 16-byte
// loads and stores where every row starts on 16 bytes; and one element per thread,
// unravelling its index over every axis, for the rest (broadcasts, true transposes).
#include <algorithm>

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

// A copy of `rows` rows of `len` contiguous elements: row r of the outer axes (nd of
// them, innermost last) starts at sum(index_d * stride_d) on each side. A row is cut
// into `pieces` pieces of at most `piece` elements; a group of `lanes` threads (a power
// of two up to 32, so a group never spans two warps) takes one piece at a time.
struct RowWalk {
  int nd;
  int64_t shape[kMaxRank];
  int64_t sin[kMaxRank];
  int64_t sout[kMaxRank];
  int64_t len, rows, pieces, piece;
  int lanes;
};

constexpr int kRowBlock = 256;

// Element moves of the row kernel, one class per pair of storage types: CH elements per
// 16-byte-aligned vector step, and one element at a time (the same conversion).
template <class T>
struct RawMove {  // same dtype: the bits
  using In = T;
  using Out = T;
  static constexpr int CH = 16 / sizeof(T);
  __device__ __forceinline__ static void chunk(const T* in, T* out) {
    *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(in);
  }
  __device__ __forceinline__ static void one(const T* in, T* out) { *out = *in; }
};
struct F32ToBf16 {
  using In = float;
  using Out = uint16_t;
  static constexpr int CH = 8;
  __device__ __forceinline__ static void chunk(const float* in, uint16_t* out) {
    const float4 a = reinterpret_cast<const float4*>(in)[0], b = reinterpret_cast<const float4*>(in)[1];
    // f32_to_bf16_bits, not the hardware conversion: it keeps a NaN's payload as store() does.
    *reinterpret_cast<uint4*>(out) =
        make_uint4(f32_to_bf16_bits(a.x) | static_cast<uint32_t>(f32_to_bf16_bits(a.y)) << 16,
                   f32_to_bf16_bits(a.z) | static_cast<uint32_t>(f32_to_bf16_bits(a.w)) << 16,
                   f32_to_bf16_bits(b.x) | static_cast<uint32_t>(f32_to_bf16_bits(b.y)) << 16,
                   f32_to_bf16_bits(b.z) | static_cast<uint32_t>(f32_to_bf16_bits(b.w)) << 16);
  }
  __device__ __forceinline__ static void one(const float* in, uint16_t* out) { *out = f32_to_bf16_bits(*in); }
};
struct Bf16ToF32 {
  using In = uint16_t;
  using Out = float;
  static constexpr int CH = 8;
  __device__ __forceinline__ static void chunk(const uint16_t* in, float* out) {
    const uint4 u = *reinterpret_cast<const uint4*>(in);
    reinterpret_cast<float4*>(out)[0] =
        make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                    __uint_as_float(u.y & 0xffff0000u));
    reinterpret_cast<float4*>(out)[1] =
        make_float4(__uint_as_float(u.z << 16), __uint_as_float(u.z & 0xffff0000u), __uint_as_float(u.w << 16),
                    __uint_as_float(u.w & 0xffff0000u));
  }
  __device__ __forceinline__ static void one(const uint16_t* in, float* out) { *out = __uint_as_float(static_cast<uint32_t>(*in) << 16); }
};

// The row and piece of work item `item`, and where that piece starts on each side.
__device__ __forceinline__ void piece_at(const RowWalk& W, int64_t item, int64_t& ii, int64_t& oi, int64_t& start,
                                         int64_t& end) {
  int64_t row = item / W.pieces;
  start = (item - row * W.pieces) * W.piece;
  end = min(start + W.piece, W.len);
  ii = 0;
  oi = 0;
  for (int d = W.nd - 1; d >= 0; --d) {
    const int64_t idx = row % W.shape[d];
    row /= W.shape[d];
    ii += idx * W.sin[d];
    oi += idx * W.sout[d];
  }
}

// VEC: every piece starts on 16 bytes on both sides (checked on the host), so steps of
// CH elements from it are aligned; a row's last partial step goes one element at a time.
template <class M, bool VEC>
__global__ void __launch_bounds__(kRowBlock) copy_rows(const typename M::In* in, typename M::Out* out, RowWalk W) {
  const int lane = threadIdx.x & (W.lanes - 1);
  const int64_t groups = kRowBlock / W.lanes, items = W.rows * W.pieces;
  for (int64_t item = blockIdx.x * groups + threadIdx.x / W.lanes; item < items; item += gridDim.x * groups) {
    int64_t ii, oi, start, end;
    piece_at(W, item, ii, oi, start, end);
    const typename M::In* src = in + ii;
    typename M::Out* dst = out + oi;
    if (VEC) {
      for (int64_t e = start + static_cast<int64_t>(lane) * M::CH; e < end; e += static_cast<int64_t>(W.lanes) * M::CH) {
        if (e + M::CH <= end) {
          M::chunk(src + e, dst + e);
        } else {
          for (int64_t x = e; x < end; ++x) M::one(src + x, dst + x);
        }
      }
    } else {
      for (int64_t e = start + lane; e < end; e += W.lanes) M::one(src + e, dst + e);
    }
  }
}

// Rows between any other pair of dtypes: the generic kernel's load and store, one
// element at a time.
__global__ void __launch_bounds__(kRowBlock) copy_rows_any(const void* in, void* out, RowWalk W, int din, int dout) {
  const int lane = threadIdx.x & (W.lanes - 1);
  const int64_t groups = kRowBlock / W.lanes, items = W.rows * W.pieces;
  for (int64_t item = blockIdx.x * groups + threadIdx.x / W.lanes; item < items; item += gridDim.x * groups) {
    int64_t ii, oi, start, end;
    piece_at(W, item, ii, oi, start, end);
    for (int64_t e = start + lane; e < end; e += W.lanes) store(out, dout, oi + e, load(in, din, ii + e));
  }
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

// L as rows (see RowWalk), or false when its innermost axis is not contiguous on both
// sides once axes of size 1 are dropped and axes that run into each other are merged.
bool as_rows(const Layout& L, RowWalk& W) {
  int m = 0;
  for (int d = 0; d < L.nd; ++d) {
    if (L.shape[d] == 1) continue;
    if (m > 0 && W.sin[m - 1] == L.sin[d] * L.shape[d] && W.sout[m - 1] == L.sout[d] * L.shape[d]) {
      W.shape[m - 1] *= L.shape[d];
      W.sin[m - 1] = L.sin[d];
      W.sout[m - 1] = L.sout[d];
      continue;
    }
    W.shape[m] = L.shape[d];
    W.sin[m] = L.sin[d];
    W.sout[m] = L.sout[d];
    ++m;
  }
  if (m == 0 || W.sin[m - 1] != 1 || W.sout[m - 1] != 1) return false;
  W.nd = m - 1;
  W.len = W.shape[m - 1];
  W.rows = 1;
  for (int d = 0; d < W.nd; ++d) W.rows *= W.shape[d];
  return true;
}

// Whether every row piece starts on 16 bytes on both sides: aligned bases and outer
// strides (pieces are a multiple of 16 elements).
bool rows_aligned(const RowWalk& W, const void* in, const void* out, int size_in, int size_out) {
  if (!aligned16(in) || !aligned16(out)) return false;
  for (int d = 0; d < W.nd; ++d)
    if ((W.sin[d] * size_in) % 16 != 0 || (W.sout[d] * size_out) % 16 != 0) return false;
  return true;
}

// Cuts the rows into pieces and picks the lanes per piece for steps of `step` elements;
// returns the grid. A piece is at most 32 lanes x 16 steps (a multiple of 16 elements),
// so a long row spreads over many groups; a short one takes the fewest lanes that
// cover it, several rows to a warp.
unsigned size_rows(RowWalk& W, int step) {
  W.piece = 32 * 16 * static_cast<int64_t>(step);
  W.pieces = (W.len + W.piece - 1) / W.piece;
  const int64_t steps = (std::min(W.len, W.piece) + step - 1) / step;
  W.lanes = 1;
  while (W.lanes < 32 && W.lanes < steps) W.lanes *= 2;
  return grid_for(W.rows * W.pieces * W.lanes, kRowBlock);
}

template <class M>
void launch_rows(const void* in, void* out, RowWalk W, int size_in, int size_out) {
  const bool vec = rows_aligned(W, in, out, size_in, size_out);
  const unsigned grid = size_rows(W, vec ? M::CH : 1);
  const auto* src = static_cast<const typename M::In*>(in);
  auto* dst = static_cast<typename M::Out*>(out);
  if (vec)
    copy_rows<M, true><<<grid, kRowBlock, 0, stream()>>>(src, dst, W);
  else
    copy_rows<M, false><<<grid, kRowBlock, 0, stream()>>>(src, dst, W);
}

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
  RowWalk W{};
  if (as_rows(L, W)) {
    const int si = dtype_size(din), so = dtype_size(dout);
    if (din == dout && si == 4) return launch_rows<RawMove<uint32_t>>(a.ptrs[0], a.ptrs[1], W, si, so);
    if (din == dout && si == 2) return launch_rows<RawMove<uint16_t>>(a.ptrs[0], a.ptrs[1], W, si, so);
    if (din == dout) return launch_rows<RawMove<uint8_t>>(a.ptrs[0], a.ptrs[1], W, si, so);
    if (din == F32 && dout == BF16) return launch_rows<F32ToBf16>(a.ptrs[0], a.ptrs[1], W, si, so);
    if (din == BF16 && dout == F32) return launch_rows<Bf16ToF32>(a.ptrs[0], a.ptrs[1], W, si, so);
    const unsigned grid = size_rows(W, 1);
    copy_rows_any<<<grid, kRowBlock, 0, stream()>>>(a.ptrs[0], a.ptrs[1], W, static_cast<int>(din), static_cast<int>(dout));
    return;
  }
  const int raw = din == dout ? dtype_size(din) : 0;
  copy_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(a.ptrs[0], a.ptrs[1], L, n, static_cast<int>(din),
                                                      static_cast<int>(dout), raw);
}

}  // namespace

FINLORA_KERNEL("copy", copy)

}  // namespace cuda
}  // namespace finlora
