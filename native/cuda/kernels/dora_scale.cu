// doraScale: the output scaling of a DoRA layer (Liu et al. 2024, "DoRA: Weight-
// Decomposed Low-Rank Adaptation"; src/adapters/lora/dora.ts),
//
//   y = (base + s·lora) ⊙ g,   g = m / ‖W + s·B·A‖ per output feature,
//
// and its backward, as native/cpu/kernels/dora.cc: one pass forward; the backward one
// pass giving dbase and dlora plus per-column partial sums of g's gradient, and a
// small pass adding those partials in a fixed order.
//
// doraScale ints: [rows, cols, dtype T]; floats: [s]
//   ptrs: [base T [rows, cols], lora T [rows, cols], g f32 [cols], out T [rows, cols] (=)]
// doraScaleBackward ints: [rows, cols, dtype T]; floats: [s]
//   ptrs: [base, lora, g, dout T [rows, cols], dbase T (=), dlora T (=), dg f32 [cols] (=)]
//   dbase = dout ⊙ g, dlora = s · dbase, dg = Σ_rows dout ⊙ (base + s·lora) summed in f64.
//
// Arithmetic is f32 as on the CPU (a bf16 result rounded once). dg is deterministic:
// the rows are cut into chunks that depend only on the shape, each block sums its
// chunk's rows for 256 columns in f64 (8 row lanes, combined in lane order), writes
// one partial per (chunk, column), and the partials are added in chunk order. No
// atomics, so the same inputs give the same bits on every run.
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

constexpr int kLanes = 8;           // row lanes per block
constexpr int kColsPerBlock = 256;  // 32 threads x 8 columns each

// g's 8 values for columns c0..c0+7 (all inside the row when VEC).
template <bool VEC>
__device__ __forceinline__ void load_g(const float* g, int64_t c0, int64_t cols, float (&gv)[8]) {
  if (VEC) {
    ld8(g + c0, gv);
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) gv[j] = c0 + j < cols ? g[c0 + j] : 0.0f;
  }
}

template <class T, bool VEC>
__global__ void forward_kernel(const T* base, const T* lora, const float* g, T* out, int64_t rows, int64_t cols, float s) {
  // One thread per group of 8 columns of a row.
  const int64_t groups = (cols + 7) / 8, total = rows * groups;
  for (int64_t e = chunk_begin(); e < total; e += chunk_step()) {
    const int64_t r = e / groups, c0 = (e % groups) * 8, i = r * cols + c0;
    float gv[8];
    load_g<VEC>(g, c0, cols, gv);
    if (VEC) {
      float b[8], l[8];
      ld8(base + i, b);
      ld8(lora + i, l);
#pragma unroll
      for (int j = 0; j < 8; ++j) b[j] = (b[j] + l[j] * s) * gv[j];
      st8(out + i, b);
    } else {
      for (int j = 0; j < 8 && c0 + j < cols; ++j) st(out, i + j, (ld(base, i + j) + ld(lora, i + j) * s) * gv[j]);
    }
  }
}

// Grid (column blocks, row chunks), block (32, kLanes). Writes partial[chunk * cols + c].
template <class T, bool VEC>
__global__ void backward_kernel(const T* base, const T* lora, const float* g, const T* dout, T* dbase, T* dlora,
                                double* partial, int64_t rows, int64_t cols, int64_t rows_per_chunk, float s) {
  __shared__ double sums[kLanes][kColsPerBlock + 1];
  const int64_t c0 = (blockIdx.x * 32LL + threadIdx.x) * 8;
  const int64_t r0 = blockIdx.y * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (c0 < cols) {
    float gv[8];
    load_g<VEC>(g, c0, cols, gv);
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kLanes) {
      const int64_t i = r * cols + c0;
      if (VEC) {
        float b[8], l[8], d[8], db[8], dl[8];
        ld8(base + i, b);
        ld8(lora + i, l);
        ld8(dout + i, d);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          db[j] = d[j] * gv[j];
          dl[j] = db[j] * s;
          acc[j] += static_cast<double>(d[j] * (b[j] + l[j] * s));
        }
        st8(dbase + i, db);
        st8(dlora + i, dl);
      } else {
        for (int j = 0; j < 8 && c0 + j < cols; ++j) {
          const float d = ld(dout, i + j), db = d * gv[j];
          st(dbase, i + j, db);
          st(dlora, i + j, db * s);
          acc[j] += static_cast<double>(d * (ld(base, i + j) + ld(lora, i + j) * s));
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) sums[threadIdx.y][threadIdx.x * 8 + j] = acc[j];
  __syncthreads();
  // Lane 0's threads finish the 256 columns of the block, 8 each, in lane order.
  if (threadIdx.y == 0) {
    for (int j = 0; j < 8; ++j) {
      const int64_t c = c0 + j;
      if (c >= cols) break;
      double t = sums[0][threadIdx.x * 8 + j];
      for (int l = 1; l < kLanes; ++l) t += sums[l][threadIdx.x * 8 + j];
      partial[blockIdx.y * cols + c] = t;
    }
  }
}

__global__ void finish_dg(const double* partial, float* dg, int64_t chunks, int64_t cols) {
  for (int64_t c = chunk_begin(); c < cols; c += chunk_step()) {
    double t = 0;
    for (int64_t k = 0; k < chunks; ++k) t += partial[k * cols + c];
    dg[c] = static_cast<float>(t);
  }
}

// The partial sums' buffer; every use is ordered on the one stream, so one buffer
// serves every call. Growing it frees the old one (cudaFree waits for the device).
double* partials(size_t elems) {
  static double* buf = nullptr;
  static size_t cap = 0;
  if (elems > cap) {
    if (buf != nullptr) cudaFree(buf);
    buf = nullptr;
    cap = 0;
    if (cudaMalloc(&buf, elems * sizeof(double)) != cudaSuccess) {
      cudaGetLastError();
      buf = nullptr;
      return nullptr;
    }
    cap = elems;
  }
  return buf;
}

// 8-wide vectors when every row starts 16-byte aligned and holds whole groups of 8.
bool vector_ok(const KernelArgs& a, int64_t cols, size_t count) {
  if (cols % 8 != 0) return false;
  for (size_t i = 0; i < count; ++i)
    if (!aligned16(a.ptrs[i])) return false;
  return true;
}

template <class T>
void forward(const KernelArgs& a, int64_t rows, int64_t cols, float s) {
  const T* base = static_cast<const T*>(a.ptrs[0]);
  const T* lora = static_cast<const T*>(a.ptrs[1]);
  const float* g = static_cast<const float*>(a.ptrs[2]);
  T* out = static_cast<T*>(a.ptrs[3]);
  const unsigned grid = grid_for(rows * ((cols + 7) / 8), 256);
  if (vector_ok(a, cols, 4)) forward_kernel<T, true><<<grid, 256, 0, stream()>>>(base, lora, g, out, rows, cols, s);
  else forward_kernel<T, false><<<grid, 256, 0, stream()>>>(base, lora, g, out, rows, cols, s);
}

template <class T>
void backward(const KernelArgs& a, int64_t rows, int64_t cols, float s) {
  const T* base = static_cast<const T*>(a.ptrs[0]);
  const T* lora = static_cast<const T*>(a.ptrs[1]);
  const float* g = static_cast<const float*>(a.ptrs[2]);
  const T* dout = static_cast<const T*>(a.ptrs[3]);
  T* dbase = static_cast<T*>(a.ptrs[4]);
  T* dlora = static_cast<T*>(a.ptrs[5]);
  float* dg = static_cast<float*>(a.ptrs[6]);
  // About a thousand blocks fill the GPU; the chunking depends on the shape only.
  const int64_t col_blocks = (cols + kColsPerBlock - 1) / kColsPerBlock;
  int64_t chunks = (1024 + col_blocks - 1) / col_blocks;
  const int64_t max_chunks = (rows + kLanes - 1) / kLanes;
  if (chunks > max_chunks) chunks = max_chunks;
  if (chunks > 65535) chunks = 65535;
  if (chunks < 1) chunks = 1;
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  if (col_blocks > 0x7fffffff) {
    a.error = "too many columns";
    return;
  }
  double* partial = partials(static_cast<size_t>(chunks * cols));
  if (partial == nullptr) {
    a.error = "out of GPU memory for the partial sums of dg";
    return;
  }
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(chunks)), block(32, kLanes);
  if (vector_ok(a, cols, 7))
    backward_kernel<T, true><<<grid, block, 0, stream()>>>(base, lora, g, dout, dbase, dlora, partial, rows, cols, rows_per_chunk, s);
  else
    backward_kernel<T, false><<<grid, block, 0, stream()>>>(base, lora, g, dout, dbase, dlora, partial, rows, cols, rows_per_chunk, s);
  finish_dg<<<grid_for(cols, 256), 256, 0, stream()>>>(partial, dg, chunks, cols);
}

void dora_scale(const KernelArgs& a) {
  const int64_t rows = a.ints[0], cols = a.ints[1], dt = trailing_dtype(a, 2);
  if (!compute_dtype_ok(a, dt) || rows * cols == 0) return;
  const float s = static_cast<float>(a.floats[0]);
  if (dt == BF16) forward<bf16>(a, rows, cols, s);
  else forward<float>(a, rows, cols, s);
}

void dora_scale_backward(const KernelArgs& a) {
  const int64_t rows = a.ints[0], cols = a.ints[1], dt = trailing_dtype(a, 2);
  if (!compute_dtype_ok(a, dt) || cols == 0) return;
  if (rows == 0) {  // an empty sum
    cudaMemsetAsync(a.ptrs[6], 0, static_cast<size_t>(cols) * sizeof(float), stream());
    return;
  }
  const float s = static_cast<float>(a.floats[0]);
  if (dt == BF16) backward<bf16>(a, rows, cols, s);
  else backward<float>(a, rows, cols, s);
}

}  // namespace

FINLORA_KERNEL("doraScale", dora_scale)
FINLORA_KERNEL("doraScaleBackward", dora_scale_backward)

}  // namespace cuda
}  // namespace finlora
