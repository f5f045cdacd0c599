// bitsandbytes' storage formats and their arithmetic, written once for both addons: the
// CPU's (kernels/quant/, kernels/qmatmul.cc, kernels/quantize.cc) and the GPU's
// (kernels/quant_matmul.cu, kernels/quantize.cu), so the two decode and quantize to the
// same bits. The formats follow bitsandbytes' public source (bitsandbytes/functional.py
// and backends/default/ops.py; nn/modules.py: Int8Params._quantize):
//
//   int8  W [rows, cols] row-major int8 CB with one f32 absmax per row (SCB):
//         W[r, c] = CB[r, c] · (SCB[r] · (1/127))                 (int8_vectorwise_dequant)
//         CB = round_half_even(W · (127 / SCB[r])) clamped to ±127 (int8_vectorwise_quant)
//   nf4   the row-major flattening of W cut into blocks of `blocksize` values; value f
//         is code[nibble f] · absmax[f / blocksize], nibble f lives in byte f / 2, the
//         HIGH nibble for even f and the low one for odd f     (quantize_4bit: q[::2] << 4 | q[1::2])
//         With double quantization (compress_statistics) absmax itself is stored as
//         uint8 codes into a 256-entry map, in blocks of nested_blocksize, plus one
//         offset (the mean that was subtracted before quantizing):
//         absmax[b] = nested_code[q[b]] · nested_absmax[b / nested_blocksize] + offset,
//         the product rounded to f32 before the offset is added (bitsandbytes' order).
//
// Blocks run along the flattened weight, so when cols is not a multiple of blocksize a
// block straddles two rows; every routine here works from flat indices.
//
// Every product, quotient and sum below is one IEEE f32 operation on both sides: the
// device code says so with the _rn intrinsics (nvcc would otherwise be free to fuse a
// product into a following add), the host code keeps the one product that a sum
// follows opaque to the compiler (block_scale).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "host_device.h"
#include "kernel_registry.h"

namespace finlora {
namespace quant {

FINLORA_HD inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

FINLORA_HD inline float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

FINLORA_HD inline float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// std::max(a, b) and std::min(a, b) as the C++ library defines them: a NaN never wins
// a max, and the order of the operands decides the rest.
FINLORA_HD inline float std_max(float a, float b) { return a < b ? b : a; }
FINLORA_HD inline float std_min(float a, float b) { return b < a ? b : a; }

enum Format : int64_t { kInt8 = 0, kNf4 = 1 };

struct QWeight {
  Format format;
  int64_t rows, cols;
  // int8
  const int8_t* cb;
  const float* scb;
  // nf4
  const uint8_t* packed;
  const float* code;  // 16 entries
  int64_t blocksize;
  const float* absmax;     // f32 per block when !nested
  const uint8_t* qabsmax;  // uint8 per block when nested
  const float* nested_absmax;
  const float* nested_code;  // 256 entries
  int64_t nested_blocksize;
  float offset;
  bool nested;

  // int8: the factor of row r's codes.
  FINLORA_HD float row_scale(int64_t r) const { return mul_rn(scb[r], 1.0f / 127.0f); }

  // nf4: the code index of flat element f.
  FINLORA_HD unsigned nibble(int64_t f) const {
    const uint8_t byte = packed[f >> 1];
    return (f & 1) ? (byte & 15u) : (byte >> 4);
  }

  // nf4: the absmax of block b. NOTE: GCC contracts a * b + c into an FMA in C++ by
  // default (one rounding instead of two, 1 ulp off bitsandbytes); on the host the empty
  // asm makes the product opaque.
  FINLORA_HD float block_scale(int64_t b) const {
    if (!nested) return absmax[b];
#ifdef __CUDA_ARCH__
    return add_rn(mul_rn(nested_code[qabsmax[b]], nested_absmax[b / nested_blocksize]), offset);
#else
    float s = nested_code[qabsmax[b]] * nested_absmax[b / nested_blocksize];
#if defined(__x86_64__)
    asm("" : "+x"(s));
#endif
    return s + offset;
#endif
  }

  // W[r, c], one element at a time (the vectorised decoders give the same values).
  FINLORA_HD float at(int64_t r, int64_t c) const {
    if (format == kInt8) return mul_rn(static_cast<float>(cb[r * cols + c]), row_scale(r));
    const int64_t f = r * cols + c;
    return mul_rn(code[nibble(f)], block_scale(f / blocksize));
  }
};

// Reads the weight operands of a quantized kernel: ptrs[p0 .. p0 + 4] are, for int8,
// cb (int8 [rows, cols]), scb (f32 [rows]) and three unused; for nf4, packed (uint8),
// code (f32 [16]), absmax (f32 per block, or uint8 when nested), nested absmax (f32) and
// nested code (f32 [256]), the last two unused when not nested; floats[0] is the nested
// offset. Sets args.error and returns false on a bad size or format.
template <class Args>
bool parse_weight(const Args& args, size_t p0, int64_t format, int64_t rows, int64_t cols, int64_t blocksize, int64_t nested,
                  int64_t nested_blocksize, QWeight& w) {
  w = QWeight{};
  w.rows = rows;
  w.cols = cols;
  if (rows < 0 || cols < 0) {
    args.error = "negative weight size";
    return false;
  }
  if (format == kInt8) {
    w.format = kInt8;
    w.cb = static_cast<const int8_t*>(args.ptrs[p0]);
    w.scb = static_cast<const float*>(args.ptrs[p0 + 1]);
    return true;
  }
  if (format != kNf4) {
    args.error = "unknown quantized format code " + std::to_string(format);
    return false;
  }
  if (blocksize <= 0 || (nested != 0 && nested_blocksize <= 0)) {
    args.error = "block sizes must be positive";
    return false;
  }
  w.format = kNf4;
  w.packed = static_cast<const uint8_t*>(args.ptrs[p0]);
  w.code = static_cast<const float*>(args.ptrs[p0 + 1]);
  w.blocksize = blocksize;
  w.nested = nested != 0;
  if (w.nested) {
    w.qabsmax = static_cast<const uint8_t*>(args.ptrs[p0 + 2]);
    w.nested_absmax = static_cast<const float*>(args.ptrs[p0 + 3]);
    w.nested_code = static_cast<const float*>(args.ptrs[p0 + 4]);
    w.nested_blocksize = nested_blocksize;
    w.offset = static_cast<float>(args.floats[0]);
  } else {
    w.absmax = static_cast<const float*>(args.ptrs[p0 + 2]);
  }
  return true;
}

// --- Quantizing (load time) ---

// int8: the factor from a row's values to codes (absmax > 0).
FINLORA_HD inline float int8_scale(float absmax) { return div_rn(127.0f, absmax); }

// int8: the code of value h (already rounded to f16, as Int8Params does); round half to
// even, and a NaN clamps to -127.
FINLORA_HD inline int8_t int8_code(float h, float scale) {
  const float p = mul_rn(h, scale);
#ifdef __CUDA_ARCH__
  const float v = rintf(p);
#else
  const float v = std::nearbyint(p);
#endif
  return static_cast<int8_t>(std_min(127.0f, std_max(-127.0f, v)));
}

// Blockwise: the bucket boundary between code[i] and code[i + 1] (the code is sorted).
FINLORA_HD inline float code_midpoint(const float* code, int i) { return div_rn(add_rn(code[i], code[i + 1]), 2.0f); }

// torch.bucketize(x, bounds, right=False): the number of bounds strictly below x, so a
// value halfway between two codes goes to the lower one.
FINLORA_HD inline int bucket(const float* bounds, int nb, float x) {
  int lo = 0, hi = nb;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (bounds[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Blockwise: value v of a block scaled into [-1, 1]. clamped = max(absmax, 1e-38) and
// inv = 1 / clamped; a partial last block divides by clamped instead (bitsandbytes).
FINLORA_HD inline float block_scaled(float v, float clamped, float inv, bool partial) {
  const float s = partial ? div_rn(v, clamped) : mul_rn(v, inv);
  return std_min(1.0f, std_max(-1.0f, s));
}

// Whether quantizeBlockwise's sizes are ones it handles: a code of 2 to 256 entries
// (at most 16 packed two to a byte, in blocks of an even size).
inline bool blockwise_sizes_ok(int64_t n, int64_t code_size, int64_t blocksize, bool pack4) {
  return n >= 0 && code_size >= 2 && code_size <= 256 && blocksize > 0 && !(pack4 && (code_size > 16 || blocksize % 2 != 0));
}

// The weight dtypes the quantizers read (bitsandbytes takes f32, bf16 and f16).
inline bool quantizable_dtype(int64_t d) { return d == F32 || d == BF16 || d == F16; }

// quantizeInt8's attributes: ints [rows, cols, dtype of w]; ptrs [w, cb, scb]. Sets
// args.error and returns false when the call does not have that shape.
struct Int8Job {
  int64_t rows, cols, dtype;
};
inline bool parse_quantize_int8(const KernelArgs& args, Int8Job& job) {
  if (args.ints.size() != 3 || args.ptrs.size() != 3) {
    args.error = "quantizeInt8: expected 3 ints and 3 buffers";
    return false;
  }
  job = Int8Job{args.ints[0], args.ints[1], args.ints[2]};
  if (job.rows < 0 || job.cols < 0 || !quantizable_dtype(job.dtype)) {
    args.error = "quantizeInt8: bad size or dtype";
    return false;
  }
  return true;
}

// quantizeBlockwise's attributes: ints [n, dtype of x, code size, blocksize, pack4];
// ptrs [x, code, q, absmax]. Sets args.error and returns false when they are not usable.
struct BlockwiseJob {
  int64_t n, dtype, code_size, blocksize;
  bool pack4;
};
inline bool parse_quantize_blockwise(const KernelArgs& args, BlockwiseJob& job) {
  if (args.ints.size() != 5 || args.ptrs.size() != 4) {
    args.error = "quantizeBlockwise: expected 5 ints and 4 buffers";
    return false;
  }
  job = BlockwiseJob{args.ints[0], args.ints[1], args.ints[2], args.ints[3], args.ints[4] != 0};
  if (!quantizable_dtype(job.dtype) || !blockwise_sizes_ok(job.n, job.code_size, job.blocksize, job.pack4)) {
    args.error = "quantizeBlockwise: bad size, dtype, code size or block size";
    return false;
  }
  return true;
}

}  // namespace quant
}  // namespace finlora
