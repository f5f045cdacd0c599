// matmul: batched single-precision GEMM, out[b] = alpha * op(A)[b] op(B)[b] (+ out[b]
// when accumulating). Transposition is folded into the element strides by the caller
// (src/backend/cpu/cpu.ts), so either stride of an operand may be the unit one, or
// neither; batch strides may be 0 (broadcast). A is f32; B is f32 or bf16 and is
// converted while it is packed. out is contiguous [batch, M, N].
//
// ints:   [batch, M, N, K, a_batch_stride, a_row_stride, a_col_stride,
//          b_batch_stride, b_row_stride, b_col_stride, accumulate, dtypeB]
// floats: [alpha]
// ptrs:   [a, b, out]
//
// Structure (Goto & van de Geijn 2008; BLIS's five loops): the output is cut into
// one rectangle per task, and each task runs the blocked loop nest on its rectangle
// with its own packing buffers, so threads never wait on each other:
//   jc over nc columns  -> pack a kc x nc block of B into nr-wide micro-panels (L3)
//   pc over kc depth
//   ic over mc rows     -> pack an mc x kc block of A into mr-high micro-panels (L2)
//   jr, ir              -> micro-kernel on one A and one B micro-panel (registers, L1)
// The micro-kernel (kernels/gemm/) is picked at run time from finlora::isa().
// Rectangles are split so that each task packs as little as possible: a short,
// wide product (M = 8 rows) is split along N, a LoRA-style skinny one (N = 8) along M.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "gemm/gemm.h"
#include "kernel.h"

namespace finlora {
namespace {

using gemm::MicroKernel;

// Packing buffers live as long as their thread (the pool's workers persist), so a
// GEMM in a training step does not page-fault fresh megabytes every call.
class PackBuffer {
 public:
  ~PackBuffer() { std::free(data_); }
  float* get(size_t floats) {
    if (floats > capacity_) {
      std::free(data_);
      const size_t bytes = (floats * sizeof(float) + 4095) / 4096 * 4096;
      data_ = static_cast<float*>(std::aligned_alloc(4096, bytes));
      capacity_ = data_ == nullptr ? 0 : bytes / sizeof(float);
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

thread_local PackBuffer t_pack_a;
thread_local PackBuffer t_pack_b;

inline float to_f32(float x) { return x; }
inline float to_f32(uint16_t x) { return bf16_to_f32(x); }

// op(A)[i, k] = a[i * rs + k * cs] for i < mc, k < kc into mr-high micro-panels.
void pack_a(const float* a, int64_t rs, int64_t cs, int64_t mc, int64_t kc, int mr, float* dst) {
  for (int64_t i0 = 0; i0 < mc; i0 += mr, dst += mr * kc) {
    const int rows = static_cast<int>(std::min<int64_t>(mr, mc - i0));
    const float* src = a + i0 * rs;
    if (rs == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        float* d = dst + k * mr;
        const float* s = src + k * cs;
        for (int i = 0; i < rows; ++i) d[i] = s[i];
        for (int i = rows; i < mr; ++i) d[i] = 0.0f;
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        float* d = dst + k * mr;
        const float* s = src + k * cs;
        for (int i = 0; i < rows; ++i) d[i] = s[i * rs];
        for (int i = rows; i < mr; ++i) d[i] = 0.0f;
      }
    }
  }
}

// op(B)[k, j] = b[k * rs + j * cs] for k < kc, j < nc into nr-wide micro-panels.
template <typename TB>
void pack_b(const TB* b, int64_t rs, int64_t cs, int64_t kc, int64_t nc, int nr, float* dst) {
  for (int64_t j0 = 0; j0 < nc; j0 += nr, dst += nr * kc) {
    const int cols = static_cast<int>(std::min<int64_t>(nr, nc - j0));
    const TB* src = b + j0 * cs;
    if (cs == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        float* d = dst + k * nr;
        const TB* s = src + k * rs;
        for (int j = 0; j < cols; ++j) d[j] = to_f32(s[j]);
        for (int j = cols; j < nr; ++j) d[j] = 0.0f;
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        float* d = dst + k * nr;
        const TB* s = src + k * rs;
        for (int j = 0; j < cols; ++j) d[j] = to_f32(s[j * cs]);
        for (int j = cols; j < nr; ++j) d[j] = 0.0f;
      }
    }
  }
}

struct Operands {
  int64_t M, N, K;
  int64_t ars, acs, brs, bcs;
  float alpha;
  bool accumulate;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Splits `total` into `parts` nearly equal pieces, each a multiple of `unit` (bar the last).
inline void split_range(int64_t total, int64_t unit, int64_t parts, int64_t index, int64_t& begin, int64_t& end) {
  const int64_t units = ceil_div(total, unit);
  begin = std::min(total, units * index / parts * unit);
  end = std::min(total, units * (index + 1) / parts * unit);
}

// The blocked loop nest over rows [m0, m1) and columns [n0, n1) of one product.
template <typename TB>
void gemm_rect(const MicroKernel& uk, const Operands& o, const float* a, const TB* b, float* c, int64_t m0,
               int64_t m1, int64_t n0, int64_t n1) {
  const int mr = uk.mr, nr = uk.nr;
  const int64_t rows = m1 - m0, cols = n1 - n0;
  if (rows <= 0 || cols <= 0) return;
  // Even blocks: K = 2100 with kc 256 runs 9 blocks of 234, not 8 of 256 and one of 52.
  const int64_t kblocks = ceil_div(o.K, uk.kc);
  const int64_t kc_max = ceil_div(o.K, kblocks);
  const int64_t mblocks = ceil_div(rows, uk.mc);
  const int64_t mc_max = ceil_div(ceil_div(rows, mblocks), mr) * mr;
  const int64_t nblocks = ceil_div(cols, uk.nc);
  const int64_t nc_max = ceil_div(ceil_div(cols, nblocks), nr) * nr;
  float* pa = t_pack_a.get(static_cast<size_t>(mc_max * kc_max));
  float* pb = t_pack_b.get(static_cast<size_t>(nc_max * kc_max));
  if (pa == nullptr || pb == nullptr) std::abort();
  for (int64_t jc = n0; jc < n1; jc += nc_max) {
    const int64_t nc = std::min(nc_max, n1 - jc);
    for (int64_t pc = 0; pc < o.K; pc += kc_max) {
      const int64_t kc = std::min(kc_max, o.K - pc);
      const bool add = pc > 0 || o.accumulate;
      const TB* bsrc = b + pc * o.brs + jc * o.bcs;
      for (int64_t ic = m0; ic < m1; ic += mc_max) {
        const int64_t mc = std::min(mc_max, m1 - ic);
        pack_a(a + ic * o.ars + pc * o.acs, o.ars, o.acs, mc, kc, mr, pa);
        for (int64_t jr = 0; jr < nc; jr += nr) {
          const int ncols = static_cast<int>(std::min<int64_t>(nr, nc - jr));
          float* bp = pb + jr * kc;
          // B's micro-panels are packed just before their first use, while the
          // micro-kernel's reads of them can still hit L1, instead of in one pass
          // over a block far larger than L2.
          if (ic == m0) pack_b(bsrc + jr * o.bcs, o.brs, o.bcs, kc, ncols, nr, bp);
          for (int64_t ir = 0; ir < mc; ir += mr) {
            const int nrows = static_cast<int>(std::min<int64_t>(mr, mc - ir));
            uk.run(kc, pa + ir * kc, bp, c + (ic + ir) * o.N + jc + jr, o.N, nrows, ncols, o.alpha, add);
          }
        }
      }
    }
  }
}

// Below this many flops per task, splitting costs more than the wake-up of a thread.
constexpr double kMinFlopsPerTask = 4.0e6;

struct Grid {
  int64_t tm = 1, tn = 1;
};

// Cuts one product into q = tm * tn rectangles, minimising the largest rectangle's
// estimated time: its micro-tile FMAs plus what it packs (its rows and columns of
// panels; the K factor is common and dropped).
Grid choose_grid(const MicroKernel& uk, int64_t M, int64_t N, int64_t q) {
  const int64_t pm = ceil_div(M, uk.mr), pn = ceil_div(N, uk.nr);
  Grid best;
  double best_cost = -1;
  for (int64_t tm = 1; tm <= q; ++tm) {
    if (q % tm != 0) continue;
    const int64_t tn = q / tm;
    if (tm > pm || tn > pn) continue;
    const double rows = static_cast<double>(ceil_div(pm, tm) * uk.mr);
    const double cols = static_cast<double>(ceil_div(pn, tn) * uk.nr);
    const double cost = rows * cols / 32.0 + (rows + cols) * 0.5;
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best = {tm, tn};
    }
  }
  return best;
}

const MicroKernel& pick_micro_kernel() {
  const MicroKernel* k = nullptr;
  if (isa() == Isa::Avx512) k = gemm::avx512_micro_kernel();
  if (k == nullptr && isa() >= Isa::Avx2) k = gemm::avx2_micro_kernel();
  if (k == nullptr) k = gemm::scalar_micro_kernel();
  return *k;
}

template <typename TB>
void run_batched(const KernelArgs& args, const Operands& o, int64_t batch, int64_t abs, int64_t bbs) {
  const float* a = static_cast<const float*>(args.ptrs[0]);
  const TB* b = static_cast<const TB*>(args.ptrs[1]);
  float* c = static_cast<float*>(args.ptrs[2]);
  const MicroKernel& uk = pick_micro_kernel();
  const double flops = 2.0 * static_cast<double>(o.M) * static_cast<double>(o.N) * static_cast<double>(o.K) *
                       static_cast<double>(batch);
  const int64_t threads = std::min<int64_t>(num_threads(), std::max<int64_t>(1, static_cast<int64_t>(flops / kMinFlopsPerTask)));
  // Rectangles per product: enough that batch * q spreads evenly over the threads.
  int64_t q = 1;
  if (threads > 1 && batch % threads != 0 && batch < 4 * threads) q = threads / std::gcd(batch, threads);
  Grid g = choose_grid(uk, o.M, o.N, q);
  while (g.tm * g.tn != q && q > 1) g = choose_grid(uk, o.M, o.N, --q);
  const int64_t per = g.tm * g.tn;
  auto task = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p = t / per, r = t % per;
      int64_t m0, m1, n0, n1;
      split_range(o.M, uk.mr, g.tm, r / g.tn, m0, m1);
      split_range(o.N, uk.nr, g.tn, r % g.tn, n0, n1);
      gemm_rect<TB>(uk, o, a + p * abs, b + p * bbs, c + p * o.M * o.N, m0, m1, n0, n1);
    }
  };
  const int64_t tasks = batch * per;
  if (threads <= 1) task(0, tasks);
  else parallel_for(tasks, 1, task);
}

void matmul_kernel(const KernelArgs& args) {
  if (args.ints.size() != 12 || args.floats.size() != 1 || args.ptrs.size() != 3) {
    args.error = "matmul: expected 12 ints, 1 float and 3 buffers";
    return;
  }
  const int64_t* v = args.ints.data();
  const int64_t batch = v[0], M = v[1], N = v[2], K = v[3];
  if (batch < 0 || M < 0 || N < 0 || K < 0) {
    args.error = "matmul: negative size";
    return;
  }
  const int64_t dtype_b = v[11];
  if (dtype_b != F32 && dtype_b != BF16) {
    args.error = "matmul: b must be f32 or bf16";
    return;
  }
  const Operands o{M, N, K, v[5], v[6], v[8], v[9], static_cast<float>(args.floats[0]), v[10] != 0};
  if (batch == 0 || M == 0 || N == 0) return;
  if (K == 0) {
    if (!o.accumulate) std::memset(args.ptrs[2], 0, static_cast<size_t>(batch * M * N) * sizeof(float));
    return;
  }
  if (dtype_b == F32) run_batched<float>(args, o, batch, v[4], v[7]);
  else run_batched<uint16_t>(args, o, batch, v[4], v[7]);
}

}  // namespace

FINLORA_KERNEL("matmul", matmul_kernel)

}  // namespace finlora
