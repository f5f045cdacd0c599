// The blocked loop nest around the micro-kernels (gemm.h) and the pieces of its
// threading that the f32/bf16 GEMM (kernels/matmul.cc) and the quantized one
// (kernels/qmatmul.cc) share. The two differ only in how a block of A and a
// micro-panel of B get packed, which each passes in as a callable:
//   pack_a(ic, mc, pc, kc, dst): rows [ic, ic + mc), depth [pc, pc + kc) of op(A)
//                                 into ceil(mc / mr) micro-panels at dst
//   pack_b(pc, kc, jc, ncols, dst): depth [pc, pc + kc), columns [jc, jc + ncols)
//                                 of op(B) into one nr-wide micro-panel at dst
// Every element of C is summed in the same order however the work is split, so
// results do not depend on the thread count.
#pragma once
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <thread>

#include "gemm.h"
#include "kernel.h"

namespace finlora {
namespace gemm {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

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
      if (data_ == nullptr) std::abort();
      capacity_ = bytes / sizeof(float);
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

// Below this many flops per task, splitting costs more than waking a thread.
constexpr double kMinFlopsPerTask = 4.0e6;
// Tasks per thread when a product is split: enough that a thread slowed down (by
// another process on its core, say) leaves its remaining tasks to the others, few
// enough that each still amortises its packing.
constexpr int64_t kTasksPerThread = 4;
// The widest column slab one task takes: its packed B (kc x slab) and one packed A
// block (mc x kc) fit in L2 together.
constexpr int64_t kMaxSlab = 256;
// Packed A shared by the threads of one product stays under 16 MiB (an L3's worth);
// larger products run in bands of rows and depth of that size.
constexpr int64_t kSharedAFloats = int64_t{1} << 22;
constexpr int64_t kMaxBandBlocks = 64;

// The threads worth waking for `flops` of work.
inline int64_t threads_for(double flops) {
  return std::min<int64_t>(num_threads(), std::max<int64_t>(1, static_cast<int64_t>(flops / kMinFlopsPerTask)));
}

inline const MicroKernel& pick_micro_kernel() {
  const MicroKernel* k = nullptr;
  if (isa() == Isa::Avx512) k = avx512_micro_kernel();
  if (k == nullptr && isa() >= Isa::Avx2) k = avx2_micro_kernel();
  if (k == nullptr) k = scalar_micro_kernel();
  return *k;
}

// This thread's packing buffers for blocks of A and panels of B, used by whichever
// GEMM kernel runs on it (one at a time).
inline PackBuffer& pack_a_buffer() {
  thread_local PackBuffer buffer;
  return buffer;
}
inline PackBuffer& pack_b_buffer() {
  thread_local PackBuffer buffer;
  return buffer;
}

// A thread waiting for another to finish packing: pause briefly, then give up the core.
inline void wait_a_little(int& spins) {
  if (++spins < 64) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  } else {
    std::this_thread::yield();
  }
}

// The packing states of one band's shared blocks (0 not packed -> 1 being packed by
// some thread -> 2 ready), all 0; owned by the calling thread and reused across calls.
inline std::atomic<int>* fresh_states(int64_t n) {
  thread_local std::unique_ptr<std::atomic<int>[]> states;
  thread_local int64_t size = 0;
  if (n > size) {
    states.reset(new std::atomic<int>[static_cast<size_t>(n)]);
    size = n;
  }
  for (int64_t i = 0; i < n; ++i) states[i].store(0, std::memory_order_relaxed);
  return states.get();
}

// Claims a shared block: true when it is ready to read, packing it here first when no
// thread has started on it; false while another thread is packing it.
template <class Pack>
inline bool claim(std::atomic<int>& st, Pack pack) {
  int s = st.load(std::memory_order_acquire);
  if (s == 0 && st.compare_exchange_strong(s, 1, std::memory_order_acq_rel)) {
    pack();
    st.store(2, std::memory_order_release);
    s = 2;
  }
  return s == 2;
}

// The micro-kernel over one packed mc x kc block of A (pa) and one packed micro-panel
// of B (bp, ncols wide): C rows from c, leading dimension ldc.
inline void run_panel(const MicroKernel& uk, int64_t mc, int64_t kc, const float* pa, const float* bp, int ncols,
                      float* c, int64_t ldc, float alpha, bool add) {
  for (int64_t ir = 0; ir < mc; ir += uk.mr) {
    const int nrows = static_cast<int>(std::min<int64_t>(uk.mr, mc - ir));
    uk.run(kc, pa + ir * kc, bp, c + ir * ldc, ldc, nrows, ncols, alpha, add);
  }
}

// The blocked loop nest over rows [m0, m1) and columns [n0, n1) of C (row-major,
// leading dimension ldc) with depth K.
// C = alpha * op(A) op(B), + C when accumulate.
template <class PackA, class PackB>
void gemm_rect(const MicroKernel& uk, int64_t K, float* c, int64_t ldc, float alpha, bool accumulate, int64_t m0,
               int64_t m1, int64_t n0, int64_t n1, PackA pack_a, PackB pack_b) {
  const int mr = uk.mr, nr = uk.nr;
  const int64_t rows = m1 - m0, cols = n1 - n0;
  if (rows <= 0 || cols <= 0) return;
  // Even blocks: K = 2100 with kc 512 runs 5 blocks of 420, not 4 of 512 and one of 52.
  const int64_t kblocks = ceil_div(K, uk.kc);
  const int64_t kc_max = ceil_div(K, kblocks);
  const int64_t mblocks = ceil_div(rows, uk.mc);
  const int64_t mc_max = ceil_div(ceil_div(rows, mblocks), mr) * mr;
  const int64_t nblocks = ceil_div(cols, uk.nc);
  const int64_t nc_max = ceil_div(ceil_div(cols, nblocks), nr) * nr;
  float* pa = pack_a_buffer().get(static_cast<size_t>(mc_max * kc_max));
  float* pb = pack_b_buffer().get(static_cast<size_t>(nc_max * kc_max));
  for (int64_t jc = n0; jc < n1; jc += nc_max) {
    const int64_t nc = std::min(nc_max, n1 - jc);
    for (int64_t pc = 0; pc < K; pc += kc_max) {
      const int64_t kc = std::min(kc_max, K - pc);
      const bool add = pc > 0 || accumulate;
      for (int64_t ic = m0; ic < m1; ic += mc_max) {
        const int64_t mc = std::min(mc_max, m1 - ic);
        pack_a(ic, mc, pc, kc, pa);
        for (int64_t jr = 0; jr < nc; jr += nr) {
          const int ncols = static_cast<int>(std::min<int64_t>(nr, nc - jr));
          float* bp = pb + jr * kc;
          // B's micro-panels are packed just before their first use, while the
          // micro-kernel's reads of them can still hit L1, instead of in one pass
          // over a block far larger than L2.
          if (ic == m0) pack_b(pc, kc, jc + jr, ncols, bp);
          run_panel(uk, mc, kc, pa, bp, ncols, c + ic * ldc + jc + jr, ldc, alpha, add);
        }
      }
    }
  }
}

// The blocks of A for one band of rows and depth, packed once and read by every
// thread: block (p, i) holds rows i * mc_max ... of the band and depth
// k0 + p * kc_max ... ; whichever thread first needs a block packs it, so packing is
// spread over the threads too.
struct SharedA {
  float* data;
  std::atomic<int>* state;
  int64_t k0;  // depth of the band's first block
  int64_t kblocks, mblocks, kc_max, mc_max;
  float* block(int64_t p, int64_t i) const { return data + (p * mblocks + i) * mc_max * kc_max; }
};

// Columns [n0, n1) of rows [m0, m1) of C, with A from `sa`: for each depth block, this
// slab's B panels are packed once and run against the A blocks in whatever order they
// become ready.
template <class PackA, class PackB>
void column_slab(const MicroKernel& uk, int64_t K, float* c, int64_t ldc, float alpha, bool accumulate,
                 const SharedA& sa, int64_t m0, int64_t m1, int64_t n0, int64_t n1, PackA pack_a, PackB pack_b) {
  const int nr = uk.nr;
  const int64_t cols = n1 - n0;
  float* pb = pack_b_buffer().get(static_cast<size_t>(ceil_div(cols, nr) * nr * sa.kc_max));
  std::array<bool, kMaxBandBlocks> done;
  for (int64_t p = 0; p < sa.kblocks; ++p) {
    const int64_t pc = sa.k0 + p * sa.kc_max, kc = std::min(sa.kc_max, K - pc);
    const bool add = pc > 0 || accumulate;
    done.fill(false);
    int64_t remaining = sa.mblocks;
    bool b_packed = false;
    int spins = 0;
    while (remaining > 0) {
      bool progressed = false;
      for (int64_t i = 0; i < sa.mblocks; ++i) {
        if (done[i]) continue;
        const int64_t ic = m0 + i * sa.mc_max, mc = std::min(sa.mc_max, m1 - ic);
        const float* pa = sa.block(p, i);
        if (!claim(sa.state[p * sa.mblocks + i], [&] { pack_a(ic, mc, pc, kc, sa.block(p, i)); })) continue;
        for (int64_t jr = 0; jr < cols; jr += nr) {
          const int ncols = static_cast<int>(std::min<int64_t>(nr, cols - jr));
          float* bp = pb + jr * kc;
          if (!b_packed) pack_b(pc, kc, n0 + jr, ncols, bp);
          run_panel(uk, mc, kc, pa, bp, ncols, c + ic * ldc + n0 + jr, ldc, alpha, add);
        }
        b_packed = true;
        done[i] = true;
        --remaining;
        progressed = true;
      }
      if (!progressed) wait_a_little(spins);
    }
  }
}

}  // namespace gemm
}  // namespace finlora
