// matmul: batched single-precision GEMM, out[b] = alpha * op(A)[b] op(B)[b] (+ out[b]
// when accumulating). Transposition is folded into the element strides by the caller
// (src/backend/cpu/cpu.ts), so either stride of an operand may be the unit one, or
// neither; batch strides may be 0 (broadcast). A is f32; B is f32 or bf16 and is
// converted while it is packed. out is contiguous [batch, M, N].
//
// ints:   [batch, M, N, K, a_batch_stride, a_row_stride, a_col_stride,
//          b_batch_stride, b_row_stride, b_col_stride, accumulate, dtypeB, dtypeA]
//          (dtypeA, the activation dtype, is always f32 here: src/backend/native_kernels.ts)
// floats: [alpha]
// ptrs:   [a, b, out]
//
// Structure (Goto & van de Geijn 2008; BLIS's five loops):
//   jc over nc columns  -> B's kc x nc block, packed into nr-wide micro-panels just
//   pc over kc depth       before their first use
//   ic over mc rows     -> an mc x kc block of A packed into mr-high micro-panels (L2)
//   jr, ir              -> micro-kernel on one A and one B micro-panel (registers, L1)
// The micro-kernel and its blocking (kernels/gemm/) are picked at run time from
// finlora::isa(); the loop nest and the column slabs are gemm/blocked.h's, shared with
// the quantized product (qmatmul.cc).
//
// Threads (one fork per product, or per band of a very large one, and no barrier
// inside): a product wider than tall is cut into column slabs that share one packing
// of A, packed block by block by whichever thread needs a block first (the others
// work on blocks that are ready meanwhile); a taller one into row slabs that share one
// packing of B, panel by panel in the same way; a large batch into whole products. Slabs are taken from a shared counter, so a thread that
// loses its core to another process for a while simply takes fewer of them. Every
// output element is summed in the same order whatever the thread count, so results
// do not depend on it.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "gemm/blocked.h"
#include "kernel.h"

namespace finlora {
namespace {

using namespace gemm;

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

// op(B)[k, j] = b[k * rs + j * cs] for k < kc, j < cols into one nr-wide micro-panel.
template <typename TB>
void pack_b(const TB* b, int64_t rs, int64_t cs, int64_t kc, int cols, int nr, float* dst) {
  for (int64_t k = 0; k < kc; ++k) {
    float* d = dst + k * nr;
    const TB* s = b + k * rs;
    if (cs == 1) {
      __builtin_prefetch(s + nr);  // the next micro-panel's row (see the AVX-512 packer)
      for (int j = 0; j < cols; ++j) d[j] = to_f32(s[j]);
    } else {
      for (int j = 0; j < cols; ++j) d[j] = to_f32(s[j * cs]);
    }
    for (int j = cols; j < nr; ++j) d[j] = 0.0f;
  }
}

inline bool fast_pack_b(const MicroKernel& uk, const float* b, int64_t rs, int64_t cs, int64_t kc, int cols, float* dst) {
  return uk.pack_b_f32 != nullptr && uk.pack_b_f32(b, rs, cs, kc, cols, dst);
}
inline bool fast_pack_b(const MicroKernel& uk, const uint16_t* b, int64_t rs, int64_t cs, int64_t kc, int cols, float* dst) {
  return uk.pack_b_bf16 != nullptr && uk.pack_b_bf16(b, rs, cs, kc, cols, dst);
}

struct Operands {
  int64_t M, N, K;
  int64_t ars, acs, brs, bcs;
  float alpha;
  bool accumulate;
};

// blocked.h's pack_a and pack_b for one product: the micro-kernel's own packers where
// they handle the layout, the portable loops above otherwise.
auto a_packer(const MicroKernel& uk, const Operands& o, const float* a) {
  return [&uk, &o, a](int64_t ic, int64_t mc, int64_t pc, int64_t kc, float* dst) {
    const float* src = a + ic * o.ars + pc * o.acs;
    if (uk.pack_a == nullptr || !uk.pack_a(src, o.ars, o.acs, mc, kc, dst)) pack_a(src, o.ars, o.acs, mc, kc, uk.mr, dst);
  };
}
template <typename TB>
auto b_packer(const MicroKernel& uk, const Operands& o, const TB* b) {
  return [&uk, &o, b](int64_t pc, int64_t kc, int64_t jc, int ncols, float* dst) {
    const TB* src = b + pc * o.brs + jc * o.bcs;
    if (!fast_pack_b(uk, src, o.brs, o.bcs, kc, ncols, dst)) pack_b(src, o.brs, o.bcs, kc, ncols, uk.nr, dst);
  };
}

// One whole product on this thread.
template <typename TB>
void whole_product(const MicroKernel& uk, const Operands& o, const float* a, const TB* b, float* c) {
  gemm_rect(uk, o.K, c, o.N, o.alpha, o.accumulate, 0, o.M, 0, o.N, a_packer(uk, o, a), b_packer(uk, o, b));
}

// The micro-panels of B for one band of depth, packed once and read by every thread:
// panel (p, j) holds columns j * nr ... of depth k0 + p * kc_max ... . States as in
// SharedA; whichever thread first needs a panel packs it.
struct SharedB {
  float* data;
  std::atomic<int>* state;
  int64_t k0;
  int64_t kblocks, panels, kc_max, nr;
  float* panel(int64_t p, int64_t j) const { return data + (p * panels + j) * kc_max * nr; }
};

// Rows [m0, m1) of the product, all columns, with B from `sb`: for each depth block the
// slab packs its own rows of A (mc at a time, L2-sized) and runs them against B's
// panels in whatever order they become ready.
template <typename TB>
void row_slab(const MicroKernel& uk, const Operands& o, const float* a, const TB* b, float* c, const SharedB& sb,
              int64_t m0, int64_t m1) {
  const int mr = uk.mr, nr = uk.nr;
  const int64_t rows = m1 - m0;
  const int64_t mblocks = ceil_div(rows, uk.mc);
  const int64_t mc_max = ceil_div(ceil_div(rows, mblocks), mr) * mr;
  float* pa = pack_a_buffer().get(static_cast<size_t>(mc_max * sb.kc_max));
  const auto pack_a_block = a_packer(uk, o, a);
  const auto pack_b_panel = b_packer(uk, o, b);
  std::array<bool, kMaxBandBlocks> done;
  for (int64_t p = 0; p < sb.kblocks; ++p) {
    const int64_t pc = sb.k0 + p * sb.kc_max, kc = std::min(sb.kc_max, o.K - pc);
    const bool add = pc > 0 || o.accumulate;
    for (int64_t ic = m0; ic < m1; ic += mc_max) {
      const int64_t mc = std::min(mc_max, m1 - ic);
      pack_a_block(ic, mc, pc, kc, pa);
      done.fill(false);
      int64_t remaining = sb.panels;
      int spins = 0;
      while (remaining > 0) {
        bool progressed = false;
        for (int64_t j = 0; j < sb.panels; ++j) {
          if (done[j]) continue;
          const int64_t jc = j * nr;
          const int ncols = static_cast<int>(std::min<int64_t>(nr, o.N - jc));
          float* bp = sb.panel(p, j);
          if (!claim(sb.state[p * sb.panels + j], [&] { pack_b_panel(pc, kc, jc, ncols, bp); })) continue;
          run_panel(uk, mc, kc, pa, bp, ncols, c + ic * o.N + jc, o.N, o.alpha, add);
          done[j] = true;
          --remaining;
          progressed = true;
        }
        if (!progressed) wait_a_little(spins);
      }
    }
  }
}

// Storage for SharedA or SharedB, owned by the calling thread and reused across calls.
thread_local PackBuffer t_shared_a;

// One product over `threads` threads, cut into slabs that share one packing of the
// operand they all read: when the product is taller than it is wide (the lm_head's
// dX = dlogits · W, 1024 x 32000 x 256), slabs of rows that share packed B, each slab
// reading B once (K x N) and its own rows of A once; otherwise slabs of columns that
// share packed A, each reading A once (M x K). Slabs are taken from a shared counter,
// so a thread that falls behind does fewer of them.
template <typename TB>
void parallel_product(const MicroKernel& uk, const Operands& o, const float* a, const TB* b, float* c, int64_t threads) {
  const int64_t pm = ceil_div(o.M, uk.mr), pn = ceil_div(o.N, uk.nr);
  const int64_t want = kTasksPerThread * threads;
  const int64_t kc_max = ceil_div(o.K, ceil_div(o.K, uk.kc));
  std::atomic<int64_t> next{0};
  if (o.N < o.M && pn <= kMaxBandBlocks) {
    // Slab t holds micro-panels [t pm / tasks, (t + 1) pm / tasks): even slabs. Cut by
    // a fixed height instead, 1024 rows made seven slabs of 140 and one of 44, and the
    // two threads' shares differed by a sixth.
    const int64_t tasks = std::min(pm, want);
    const auto row_of = [&](int64_t t) { return std::min(o.M, t * pm / tasks * uk.mr); };
    // Shared B stays within the shared budget: bands of whole kc blocks, one fork each.
    const int64_t kband = std::max<int64_t>(1, kSharedAFloats / (pn * uk.nr) / kc_max) * kc_max;
    for (int64_t k0 = 0; k0 < o.K; k0 += kband) {
      const int64_t kblocks = ceil_div(std::min(kband, o.K - k0), kc_max);
      const int64_t nstates = kblocks * pn;
      float* data = t_shared_a.get(static_cast<size_t>(nstates * uk.nr * kc_max));
      const SharedB sb{data, fresh_states(nstates), k0, kblocks, pn, kc_max, uk.nr};
      next.store(0);
      parallel_for(threads, 1, [&](int64_t, int64_t) {
        for (int64_t t; (t = next.fetch_add(1)) < tasks;) row_slab<TB>(uk, o, a, b, c, sb, row_of(t), row_of(t + 1));
      });
    }
    return;
  }
  // Even slabs of whole micro-panels, at most kMaxSlab columns each.
  const int64_t tasks = std::max(std::min(pn, want), ceil_div(pn * uk.nr, kMaxSlab));
  const auto col_of = [&](int64_t t) { return std::min(o.N, t * pn / tasks * uk.nr); };
  // Shared A stays within its budget: row bands of at most kMaxBandBlocks blocks, then
  // depth bands of whole kc blocks (at least one); each band pair is one fork.
  const int64_t band = std::min({o.M, kMaxBandBlocks * uk.mc, std::max(uk.mc, kSharedAFloats / kc_max / uk.mc * uk.mc)});
  for (int64_t m0 = 0; m0 < o.M; m0 += band) {
    const int64_t m1 = std::min(o.M, m0 + band), rows = m1 - m0;
    const int64_t mblocks = ceil_div(rows, uk.mc);
    const int64_t mc_max = ceil_div(ceil_div(rows, mblocks), uk.mr) * uk.mr;
    const int64_t kband = std::max<int64_t>(1, kSharedAFloats / (mblocks * mc_max) / kc_max) * kc_max;
    for (int64_t k0 = 0; k0 < o.K; k0 += kband) {
      const int64_t kblocks = ceil_div(std::min(kband, o.K - k0), kc_max);
      const int64_t nstates = kblocks * mblocks;
      float* data = t_shared_a.get(static_cast<size_t>(nstates * mc_max * kc_max));
      const SharedA sa{data, fresh_states(nstates), k0, kblocks, mblocks, kc_max, mc_max};
      next.store(0);
      parallel_for(threads, 1, [&](int64_t, int64_t) {
        for (int64_t t; (t = next.fetch_add(1)) < tasks;) {
          column_slab(uk, o.K, c, o.N, o.alpha, o.accumulate, sa, m0, m1, col_of(t), col_of(t + 1), a_packer(uk, o, a),
                      b_packer(uk, o, b));
        }
      });
    }
  }
}

thread_local PackBuffer t_narrow;

// Products with a narrow side (gemm.h's NarrowFn) go to the micro-kernel set's
// dot-product routine when it has one: LoRA's x @ Aᵀ and dY @ B (N = r), and a few
// rows against a Linear weight (M <= 16, weight [out, in], f32 or bf16). The wide
// operand is read once, in place; the narrow one is packed as rows along K only when
// it is not laid out so already. Threads take slabs of the wide side's rows. Returns
// false when the product does not qualify; the choice never depends on the thread
// count, so neither do results.
template <typename TB>
bool run_narrow(const MicroKernel& uk, const Operands& o, const float* a, const TB* b, float* c, int64_t batch,
                int64_t abs, int64_t bbs, int64_t threads) {
  if (uk.narrow == nullptr || o.K < 64) return false;
  const bool by_n = o.N <= gemm::kNarrowMaxN && o.acs == 1;  // x = A's rows, y = op(B)ᵀ
  const bool by_m = !by_n && o.M <= gemm::kNarrowMaxN && o.brs == 1;  // x = op(B)ᵀ's rows, y = A
  if (!by_n && !by_m) return false;
  const int64_t n = by_n ? o.N : o.M, rows = by_n ? o.M : o.N;
  // y: n rows along K, in place when they already are (and f32).
  const float* y_in_place = nullptr;
  int64_t ldy = o.K, y_batch = 0;
  if (by_m && o.acs == 1) {
    y_in_place = a;
    ldy = o.ars;
    y_batch = abs;
  }
  if constexpr (std::is_same_v<TB, float>) {
    if (by_n && o.brs == 1) {
      y_in_place = b;
      ldy = o.bcs;
      y_batch = bbs;
    }
  }
  if (y_in_place == nullptr) {
    const int64_t src_batch = by_n ? bbs : abs;
    const int64_t copies = src_batch == 0 ? 1 : batch;
    if (copies * n * o.K > kSharedAFloats) return false;
    float* buf = t_narrow.get(static_cast<size_t>(copies * n * o.K));
    for (int64_t q = 0; q < copies; ++q) {
      for (int64_t j = 0; j < n; ++j) {
        float* dst = buf + (q * n + j) * o.K;
        if (by_n) {
          const TB* src = b + q * bbs + j * o.bcs;
          for (int64_t k = 0; k < o.K; ++k) dst[k] = to_f32(src[k * o.brs]);
        } else {
          const float* src = a + q * abs + j * o.ars;
          for (int64_t k = 0; k < o.K; ++k) dst[k] = src[k * o.acs];
        }
      }
    }
    y_in_place = buf;
    y_batch = src_batch == 0 ? 0 : n * o.K;
  }
  const int64_t c_rs = by_n ? o.N : 1, c_cs = by_n ? 1 : o.N;
  const int64_t ldx = by_n ? o.ars : o.bcs;
  const bool x_bf16 = by_m && std::is_same_v<TB, uint16_t>;
  const int64_t per_product = std::max<int64_t>(1, ceil_div(kTasksPerThread * threads, batch));
  const int64_t h = ceil_div(ceil_div(rows, per_product), 3) * 3;
  const int64_t slabs = ceil_div(rows, h), tasks = batch * slabs;
  auto task = [&](int64_t t) {
    const int64_t p = t / slabs, r0 = (t % slabs) * h, r1 = std::min(rows, r0 + h);
    const void* x = by_n ? static_cast<const void*>(a + p * abs + r0 * ldx) : static_cast<const void*>(b + p * bbs + r0 * ldx);
    uk.narrow(x, x_bf16, ldx, y_in_place + p * y_batch, ldy, o.K, n, c + p * o.M * o.N + r0 * c_rs, c_rs, c_cs, r1 - r0,
              o.alpha, o.accumulate);
  };
  if (threads <= 1) {
    for (int64_t t = 0; t < tasks; ++t) task(t);
  } else {
    std::atomic<int64_t> next{0};
    parallel_for(threads, 1, [&](int64_t, int64_t) {
      for (int64_t t; (t = next.fetch_add(1)) < tasks;) task(t);
    });
  }
  return true;
}

template <typename TB>
void run_batched(const KernelArgs& args, const Operands& o, int64_t batch, int64_t abs, int64_t bbs) {
  const float* a = static_cast<const float*>(args.ptrs[0]);
  const TB* b = static_cast<const TB*>(args.ptrs[1]);
  float* c = static_cast<float*>(args.ptrs[2]);
  const MicroKernel& uk = pick_micro_kernel();
  const double flops = 2.0 * static_cast<double>(o.M) * static_cast<double>(o.N) * static_cast<double>(o.K) *
                       static_cast<double>(batch);
  const int64_t threads = threads_for(flops);
  if (run_narrow<TB>(uk, o, a, b, c, batch, abs, bbs, threads)) return;
  if (threads <= 1) {
    for (int64_t p = 0; p < batch; ++p) whole_product<TB>(uk, o, a + p * abs, b + p * bbs, c + p * o.M * o.N);
  } else if (batch >= 2 * threads) {
    // Many products: one thread each, taken from a shared counter.
    std::atomic<int64_t> next{0};
    parallel_for(threads, 1, [&](int64_t, int64_t) {
      for (int64_t p; (p = next.fetch_add(1)) < batch;) {
        whole_product<TB>(uk, o, a + p * abs, b + p * bbs, c + p * o.M * o.N);
      }
    });
  } else {
    for (int64_t p = 0; p < batch; ++p) parallel_product<TB>(uk, o, a + p * abs, b + p * bbs, c + p * o.M * o.N, threads);
  }
}

void matmul_kernel(const KernelArgs& args) {
  if (args.ints.size() != 13 || args.floats.size() != 1 || args.ptrs.size() != 3) {
    args.error = "matmul: expected 13 ints, 1 float and 3 buffers";
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
