// quantizedMatmul and dequantize: products with a frozen weight W [rows, cols] stored
// in bitsandbytes' int8 or NF4 format (quant/quant.h), dequantized on the fly. No f32
// copy of W is ever made: each piece of W is decoded into a packing buffer of at most
// kc x nc floats just before the micro-kernel uses it, and dropped after.
//
//   quantizedMatmul: out (+)= a · op(W), a [M, K] and out [M, N] contiguous f32;
//     transW = 1: op(W) = Wᵀ, K = cols, N = rows (a Linear's forward, y = x Wᵀ)
//     transW = 0: op(W) = W,  K = rows, N = cols (its input gradient, dx = dy W)
//   ints:   [format, M, rows, cols, transW, accumulate, blocksize, nested, nestedBlocksize, dtypeA]
//           (dtypeA, the activation dtype, is always f32 here)
//   floats: [offset]
//   ptrs:   [a, q0, q1, q2, q3, q4, out]
//
//   dequantize: out [rows, cols] = W in f32.
//   ints:   [format, rows, cols, blocksize, nested, nestedBlocksize]
//   floats: [offset]
//   ptrs:   [q0, q1, q2, q3, q4, out]
//
// Weight operands q0..q4: those of quant::parse_weight (native/common/quant_format.h).
//
// Structure: the blocked loop nest and thread scheduling of kernels/matmul.cc (Goto &
// van de Geijn; BLIS's five loops; column slabs sharing one packing of A) around the
// same register micro-kernels and A packers (gemm/gemm.h), with B's panels packed from
// the quantized weight instead of copied from f32. For a Linear's forward
// a panel holds nr rows of W laid across, so each row stretch is decoded with SIMD and
// then transposed into the panel; for the input gradient the rows of W are the rows of
// the panel and decode straight into it. Products with few rows (decoding, short
// batches) skip the packing: they stream W once, decoding four rows (forward) or a
// column stretch of four rows (gradient) into L1 and taking dot products / axpys
// against every row of a, so each weight byte is read once whatever M is.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>

#include "gemm/gemm.h"
#include "kernel.h"
#include "quant/quant.h"

namespace finlora {
namespace {

using gemm::MicroKernel;
using quant::parse_weight;
using quant::QuantIsa;
using quant::QWeight;

class Buffer {
 public:
  ~Buffer() { std::free(data_); }
  float* get(size_t floats) {
    if (floats > capacity_) {
      std::free(data_);
      const size_t bytes = (floats * sizeof(float) + 4095) / 4096 * 4096;
      data_ = static_cast<float*>(std::aligned_alloc(4096, bytes));
      if (data_ == nullptr) std::abort();
      capacity_ = bytes / sizeof(float);
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

thread_local Buffer t_pack_a;
thread_local Buffer t_pack_b;
thread_local Buffer t_scratch;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

const MicroKernel& pick_micro_kernel() {
  const MicroKernel* k = nullptr;
  if (isa() == Isa::Avx512) k = gemm::avx512_micro_kernel();
  if (k == nullptr && isa() >= Isa::Avx2) k = gemm::avx2_micro_kernel();
  if (k == nullptr) k = gemm::scalar_micro_kernel();
  return *k;
}

struct Problem {
  const float* a;
  float* c;
  int64_t M, N, K;
  bool trans_w, accumulate;
  const QWeight* w;
  const QuantIsa* qi;
};

// a[i, k] for rows [i0, i0 + mc), depth [pc, pc + kc) into mr-high micro-panels (gemm.h).
void pack_a(const Problem& p, int64_t i0, int64_t mc, int64_t pc, int64_t kc, int mr, float* dst) {
  for (int64_t ib = 0; ib < mc; ib += mr, dst += mr * kc) {
    const int rows = static_cast<int>(std::min<int64_t>(mr, mc - ib));
    const float* src = p.a + (i0 + ib) * p.K + pc;
    for (int i = 0; i < rows; ++i) {
      const float* s = src + i * p.K;
      for (int64_t k = 0; k < kc; ++k) dst[k * mr + i] = s[k];
    }
    for (int i = rows; i < mr; ++i)
      for (int64_t k = 0; k < kc; ++k) dst[k * mr + i] = 0.0f;
  }
}

// op(W)[pc + k, n0 + j] for k < kc, j < ncols into one nr-wide micro-panel (gemm.h).
void pack_b(const Problem& p, int64_t pc, int64_t kc, int64_t n0, int ncols, int nr, float* dst, float* scratch) {
  const QWeight& w = *p.w;
  if (p.trans_w) {
    // Columns of the panel are rows of W: decode each row stretch, then lay it across.
    p.qi->pack_transposed(w, n0, ncols, pc, kc, nr, dst, scratch);
  } else {
    p.qi->pack_rows(w, pc, kc, n0, ncols, nr, dst);
  }
}

// An mc x kc block of a, rows from ic and depth from pc, into micro-panels: the
// micro-kernel's own packer (a SIMD transpose) where it has one.
void pack_a_block(const MicroKernel& uk, const Problem& p, int64_t ic, int64_t mc, int64_t pc, int64_t kc, float* dst) {
  const float* src = p.a + ic * p.K + pc;
  if (uk.pack_a == nullptr || !uk.pack_a(src, p.K, 1, mc, kc, dst)) pack_a(p, ic, mc, pc, kc, uk.mr, dst);
}

// The blocked loop nest over rows [m0, m1) and columns [n0, n1) of the output, with
// its own packing of A: one thread's whole product, or a row slab of a narrow one.
void gemm_rect(const MicroKernel& uk, const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int mr = uk.mr, nr = uk.nr;
  const int64_t rows = m1 - m0, cols = n1 - n0;
  if (rows <= 0 || cols <= 0) return;
  const int64_t kblocks = ceil_div(p.K, uk.kc);
  const int64_t kc_max = ceil_div(p.K, kblocks);
  const int64_t mblocks = ceil_div(rows, uk.mc);
  const int64_t mc_max = ceil_div(ceil_div(rows, mblocks), mr) * mr;
  const int64_t nblocks = ceil_div(cols, uk.nc);
  const int64_t nc_max = ceil_div(ceil_div(cols, nblocks), nr) * nr;
  float* pa = t_pack_a.get(static_cast<size_t>(mc_max * kc_max));
  float* pb = t_pack_b.get(static_cast<size_t>(nc_max * kc_max));
  float* scratch = t_scratch.get(static_cast<size_t>(nr * ((kc_max + 15) / 16 * 16)));
  for (int64_t jc = n0; jc < n1; jc += nc_max) {
    const int64_t nc = std::min(nc_max, n1 - jc);
    for (int64_t pc = 0; pc < p.K; pc += kc_max) {
      const int64_t kc = std::min(kc_max, p.K - pc);
      const bool add = pc > 0 || p.accumulate;
      for (int64_t ic = m0; ic < m1; ic += mc_max) {
        const int64_t mc = std::min(mc_max, m1 - ic);
        pack_a_block(uk, p, ic, mc, pc, kc, pa);
        for (int64_t jr = 0; jr < nc; jr += nr) {
          const int ncols = static_cast<int>(std::min<int64_t>(nr, nc - jr));
          float* bp = pb + jr * kc;
          // Decoded just before first use, while its lines are still in L1/L2.
          if (ic == m0) pack_b(p, pc, kc, jc + jr, ncols, nr, bp, scratch);
          for (int64_t ir = 0; ir < mc; ir += mr) {
            const int nrows = static_cast<int>(std::min<int64_t>(mr, mc - ir));
            uk.run(kc, pa + ir * kc, bp, p.c + (ic + ir) * p.N + jc + jr, p.N, nrows, ncols, 1.0f, add);
          }
        }
      }
    }
  }
}

constexpr double kMinFlopsPerTask = 4.0e6;
// The threading of kernels/matmul.cc's parallel_product, with the same constants:
// column slabs of at most kMaxSlab columns (kTasksPerThread per thread) taken from a
// counter, all sharing one packing of A per row band. Each slab's columns of W are
// decoded once, by the thread that takes it, so no weight is decoded twice.
constexpr int64_t kTasksPerThread = 4;
constexpr int64_t kMaxSlab = 256;
constexpr int64_t kSharedAFloats = int64_t{1} << 22;
constexpr int64_t kMaxBandBlocks = 64;

inline void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

// Blocks of A for one row band, packed once by whichever thread first needs each
// (state 0 -> 1 packing -> 2 ready) and read by all.
struct SharedA {
  float* data;
  std::atomic<int>* state;
  int64_t kblocks, mblocks, kc_max, mc_max;
  float* block(int64_t p, int64_t i) const { return data + (p * mblocks + i) * mc_max * kc_max; }
};

// Columns [n0, n1) of rows [m0, m1): per depth block, decode this slab of W, then run
// it against the A blocks in whatever order they become ready.
void column_slab(const MicroKernel& uk, const Problem& p, const SharedA& sa, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int mr = uk.mr, nr = uk.nr;
  const int64_t cols = n1 - n0;
  float* pb = t_pack_b.get(static_cast<size_t>(ceil_div(cols, nr) * nr * sa.kc_max));
  float* scratch = t_scratch.get(static_cast<size_t>(nr * ((sa.kc_max + 15) / 16 * 16)));
  bool done[kMaxBandBlocks];
  for (int64_t pb_i = 0; pb_i < sa.kblocks; ++pb_i) {
    const int64_t pc = pb_i * sa.kc_max, kc = std::min(sa.kc_max, p.K - pc);
    const bool add = pc > 0 || p.accumulate;
    for (int64_t i = 0; i < sa.mblocks && i < kMaxBandBlocks; ++i) done[i] = false;
    int64_t remaining = sa.mblocks;
    bool b_packed = false;
    int spins = 0;
    while (remaining > 0) {
      bool progressed = false;
      for (int64_t i = 0; i < sa.mblocks; ++i) {
        if (done[i]) continue;
        const int64_t ic = m0 + i * sa.mc_max, mc = std::min(sa.mc_max, m1 - ic);
        std::atomic<int>& st = sa.state[pb_i * sa.mblocks + i];
        int s = st.load(std::memory_order_acquire);
        if (s == 0 && st.compare_exchange_strong(s, 1, std::memory_order_acq_rel)) {
          pack_a_block(uk, p, ic, mc, pc, kc, sa.block(pb_i, i));
          st.store(2, std::memory_order_release);
          s = 2;
        }
        if (s != 2) continue;  // another thread is packing it: come back later
        const float* pa = sa.block(pb_i, i);
        for (int64_t jr = 0; jr < cols; jr += nr) {
          const int ncols = static_cast<int>(std::min<int64_t>(nr, cols - jr));
          float* bp = pb + jr * kc;
          if (!b_packed) pack_b(p, pc, kc, n0 + jr, ncols, nr, bp, scratch);
          for (int64_t ir = 0; ir < mc; ir += mr) {
            const int nrows = static_cast<int>(std::min<int64_t>(mr, mc - ir));
            uk.run(kc, pa + ir * kc, bp, p.c + (ic + ir) * p.N + n0 + jr, p.N, nrows, ncols, 1.0f, add);
          }
        }
        b_packed = true;
        done[i] = true;
        --remaining;
        progressed = true;
      }
      if (!progressed) {
        if (++spins < 64) cpu_relax();
        else std::this_thread::yield();
      }
    }
  }
}

thread_local Buffer t_shared_a;
thread_local std::unique_ptr<std::atomic<int>[]> t_states;
thread_local int64_t t_states_size = 0;

void run_blocked(const Problem& p) {
  const MicroKernel& uk = pick_micro_kernel();
  const double flops = 2.0 * static_cast<double>(p.M) * static_cast<double>(p.N) * static_cast<double>(p.K);
  const int64_t threads = std::min<int64_t>(num_threads(), std::max<int64_t>(1, static_cast<int64_t>(flops / kMinFlopsPerTask)));
  if (threads <= 1) return gemm_rect(uk, p, 0, p.M, 0, p.N);
  const int64_t pm = ceil_div(p.M, uk.mr), pn = ceil_div(p.N, uk.nr);
  const int64_t want = kTasksPerThread * threads;
  std::atomic<int64_t> next{0};
  if (pn < 2 * threads && pn < pm) {
    // Narrow output: row slabs, each packing its own rows of A and decoding the small W.
    const int64_t h = ceil_div(pm, want) * uk.mr;
    const int64_t tasks = ceil_div(p.M, h);
    parallel_for(threads, 1, [&](int64_t, int64_t) {
      for (int64_t t; (t = next.fetch_add(1)) < tasks;) gemm_rect(uk, p, t * h, std::min(p.M, (t + 1) * h), 0, p.N);
    });
    return;
  }
  const int64_t w = std::min(kMaxSlab, ceil_div(pn, want) * uk.nr);
  const int64_t tasks = ceil_div(p.N, w);
  const int64_t kblocks = ceil_div(p.K, uk.kc), kc_max = ceil_div(p.K, kblocks);
  int64_t band = std::max<int64_t>(uk.mc, kSharedAFloats / std::max<int64_t>(p.K, 1) / uk.mr * uk.mr);
  band = std::min(band, kMaxBandBlocks * uk.mc);
  for (int64_t m0 = 0; m0 < p.M; m0 += band) {
    const int64_t m1 = std::min(p.M, m0 + band), rows = m1 - m0;
    const int64_t mblocks = ceil_div(rows, uk.mc);
    const int64_t mc_max = ceil_div(ceil_div(rows, mblocks), uk.mr) * uk.mr;
    const int64_t nstates = kblocks * mblocks;
    float* data = t_shared_a.get(static_cast<size_t>(nstates * mc_max * kc_max));
    if (nstates > t_states_size) {
      t_states.reset(new std::atomic<int>[static_cast<size_t>(nstates)]);
      t_states_size = nstates;
    }
    for (int64_t i = 0; i < nstates; ++i) t_states[i].store(0, std::memory_order_relaxed);
    const SharedA sa{data, t_states.get(), kblocks, mblocks, kc_max, mc_max};
    next.store(0);
    parallel_for(threads, 1, [&](int64_t, int64_t) {
      for (int64_t t; (t = next.fetch_add(1)) < tasks;) column_slab(uk, p, sa, m0, m1, t * w, std::min(p.N, (t + 1) * w));
    });
  }
}

// Up to this many rows of a, streaming W (no packing) beats the blocked path: measured
// on an AVX-512 machine, dot products stay ahead of packed GEMM to about 32 rows,
// axpys to about 16.
constexpr int64_t kSmallForward = 32;
constexpr int64_t kSmallBackward = 16;
constexpr int64_t kSmallM = kSmallForward > kSmallBackward ? kSmallForward : kSmallBackward;
constexpr int64_t kStretch = 1024;  // weight values decoded per row at a time, per L1 buffer

// Forward, few rows: out[m, n] = sum_k a[m, k] W[n, k], four rows of W at a time.
void run_small_forward(const Problem& p) {
  const int64_t groups = ceil_div(p.N, 4);
  const double flops = 2.0 * static_cast<double>(p.M + 1) * static_cast<double>(p.N) * static_cast<double>(p.K);
  const int64_t threads = std::min<int64_t>(num_threads(), std::max<int64_t>(1, static_cast<int64_t>(flops / kMinFlopsPerTask)));
  auto body = [&](int64_t g0, int64_t g1) {
    float* buf = t_scratch.get(4 * kStretch);
    float acc[kSmallM * 4];
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n = g * 4;
      const int rows = static_cast<int>(std::min<int64_t>(4, p.N - n));
      const float* w4[4];
      for (int j = 0; j < 4; ++j) w4[j] = buf + (j < rows ? j : 0) * kStretch;
      std::fill(acc, acc + p.M * 4, 0.0f);
      for (int64_t k0 = 0; k0 < p.K; k0 += kStretch) {
        const int64_t len = std::min(kStretch, p.K - k0);
        for (int j = 0; j < rows; ++j) p.qi->dequant_row(*p.w, n + j, k0, len, buf + j * kStretch);
        p.qi->dot4(p.a + k0, p.K, p.M, w4, len, acc);
      }
      for (int64_t m = 0; m < p.M; ++m)
        for (int j = 0; j < rows; ++j) {
          float* o = p.c + m * p.N + n + j;
          *o = (p.accumulate ? *o : 0.0f) + acc[m * 4 + j];
        }
    }
  };
  if (threads <= 1) body(0, groups);
  else parallel_for(groups, ceil_div(groups, threads), body);
}

// Input gradient, few rows: out[m, c] = sum_r a[m, r] W[r, c], by column stretches: one
// stretch per thread where they fit, so each thread reads long runs of every row of W.
void run_small_backward(const Problem& p) {
  const double flops = 2.0 * static_cast<double>(p.M + 1) * static_cast<double>(p.N) * static_cast<double>(p.K);
  const int64_t threads = std::min<int64_t>(num_threads(), std::max<int64_t>(1, static_cast<int64_t>(flops / kMinFlopsPerTask)));
  const int64_t S = std::min<int64_t>(2 * kStretch, std::max<int64_t>(256, ceil_div(ceil_div(p.N, threads), 16) * 16));
  const int64_t chunks = ceil_div(p.N, S);
  auto body = [&](int64_t c0i, int64_t c1i) {
    float* buf = t_scratch.get(static_cast<size_t>(5 * S + kSmallM * S));
    float* zero = buf + 4 * S;
    float* obuf = buf + 5 * S;
    std::fill(zero, zero + S, 0.0f);
    float coef[kSmallM * 4];
    for (int64_t ci = c0i; ci < c1i; ++ci) {
      const int64_t c0 = ci * S;
      const int64_t len = std::min(S, p.N - c0);
      std::fill(obuf, obuf + p.M * S, 0.0f);
      for (int64_t r = 0; r < p.K; r += 4) {
        const int rows = static_cast<int>(std::min<int64_t>(4, p.K - r));
        const float* w4[4];
        for (int j = 0; j < 4; ++j) {
          if (j < rows) p.qi->dequant_row(*p.w, r + j, c0, len, buf + j * S);
          w4[j] = j < rows ? buf + j * S : zero;
          for (int64_t m = 0; m < p.M; ++m) coef[m * 4 + j] = j < rows ? p.a[m * p.K + r + j] : 0.0f;
        }
        p.qi->axpy4(coef, p.M, w4, len, obuf, S);
      }
      for (int64_t m = 0; m < p.M; ++m) {
        float* o = p.c + m * p.N + c0;
        const float* s = obuf + m * S;
        if (p.accumulate) for (int64_t i = 0; i < len; ++i) o[i] += s[i];
        else std::memcpy(o, s, static_cast<size_t>(len) * sizeof(float));
      }
    }
  };
  if (threads <= 1 || chunks <= 1) body(0, chunks);
  else parallel_for(chunks, 1, body);
}

void quantized_matmul_kernel(const KernelArgs& args) {
  if (args.ints.size() != 10 || args.floats.size() != 1 || args.ptrs.size() != 7) {
    args.error = "quantizedMatmul: expected 10 ints, 1 float and 7 buffers";
    return;
  }
  const int64_t* v = args.ints.data();
  const int64_t M = v[1], rows = v[2], cols = v[3];
  const bool trans_w = v[4] != 0, accumulate = v[5] != 0;
  QWeight w;
  if (!parse_weight(args, 1, v[0], rows, cols, v[6], v[7], v[8], w)) {
    args.error = "quantizedMatmul: " + args.error;
    return;
  }
  if (M < 0) {
    args.error = "quantizedMatmul: negative size";
    return;
  }
  Problem p{static_cast<const float*>(args.ptrs[0]), static_cast<float*>(args.ptrs[6]), M,
            trans_w ? rows : cols, trans_w ? cols : rows, trans_w, accumulate, &w, &quant::pick_quant_isa()};
  if (p.M == 0 || p.N == 0) return;
  if (p.K == 0) {
    if (!accumulate) std::memset(p.c, 0, static_cast<size_t>(p.M * p.N) * sizeof(float));
    return;
  }
  if (trans_w && p.M <= kSmallForward) return run_small_forward(p);
  if (!trans_w && p.M <= kSmallBackward) return run_small_backward(p);
  run_blocked(p);
}

void dequantize_kernel(const KernelArgs& args) {
  if (args.ints.size() != 6 || args.floats.size() != 1 || args.ptrs.size() != 6) {
    args.error = "dequantize: expected 6 ints, 1 float and 6 buffers";
    return;
  }
  const int64_t* v = args.ints.data();
  QWeight w;
  if (!parse_weight(args, 0, v[0], v[1], v[2], v[3], v[4], v[5], w)) {
    args.error = "dequantize: " + args.error;
    return;
  }
  float* out = static_cast<float*>(args.ptrs[5]);
  const QuantIsa& qi = quant::pick_quant_isa();
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, w.cols));
  parallel_for(w.rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) qi.dequant_row(w, r, 0, w.cols, out + r * w.cols);
  });
}

}  // namespace

FINLORA_KERNEL("quantizedMatmul", quantized_matmul_kernel)
FINLORA_KERNEL("dequantize", dequantize_kernel)

}  // namespace finlora
