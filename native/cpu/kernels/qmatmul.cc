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
// Structure: the blocked loop nest and column slabs of kernels/matmul.cc (gemm/blocked.h:
// Goto & van de Geijn; BLIS's five loops; column slabs sharing one packing of A) around
// the same register micro-kernels and A packers (gemm/gemm.h), with B's panels packed from
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

#include "gemm/blocked.h"
#include "kernel.h"
#include "quant/quant.h"

namespace finlora {
namespace {

using namespace gemm;
using quant::parse_weight;
using quant::QuantIsa;
using quant::QWeight;

thread_local PackBuffer t_scratch;

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

// blocked.h's pack_a and pack_b for this product; B's panels decode through scratch
// sized for depth blocks of at most kc_max.
auto a_packer(const MicroKernel& uk, const Problem& p) {
  return [&uk, &p](int64_t ic, int64_t mc, int64_t pc, int64_t kc, float* dst) { pack_a_block(uk, p, ic, mc, pc, kc, dst); };
}
auto b_packer(const MicroKernel& uk, const Problem& p, int64_t kc_max) {
  float* scratch = t_scratch.get(static_cast<size_t>(uk.nr * ((kc_max + 15) / 16 * 16)));
  return [&uk, &p, scratch](int64_t pc, int64_t kc, int64_t n0, int ncols, float* dst) {
    pack_b(p, pc, kc, n0, ncols, uk.nr, dst, scratch);
  };
}

// Rows [m0, m1) and columns [n0, n1) of the output, with its own packing of A: one
// thread's whole product, or a row slab of a narrow one.
void product_rect(const MicroKernel& uk, const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t kc_max = ceil_div(p.K, ceil_div(p.K, uk.kc));  // gemm_rect's depth blocks
  gemm_rect(uk, p.K, p.c, p.N, 1.0f, p.accumulate, m0, m1, n0, n1, a_packer(uk, p), b_packer(uk, p, kc_max));
}

thread_local PackBuffer t_shared_a;

// The threading of kernels/matmul.cc's parallel_product, with the same constants:
// column slabs of at most kMaxSlab columns (kTasksPerThread per thread) taken from a
// counter, all sharing one packing of A per row band. Each slab's columns of W are
// decoded once, by the thread that takes it, so no weight is decoded twice.
void run_blocked(const Problem& p) {
  const MicroKernel& uk = pick_micro_kernel();
  const double flops = 2.0 * static_cast<double>(p.M) * static_cast<double>(p.N) * static_cast<double>(p.K);
  const int64_t threads = threads_for(flops);
  if (threads <= 1) return product_rect(uk, p, 0, p.M, 0, p.N);
  const int64_t pm = ceil_div(p.M, uk.mr), pn = ceil_div(p.N, uk.nr);
  const int64_t want = kTasksPerThread * threads;
  std::atomic<int64_t> next{0};
  if (pn < 2 * threads && pn < pm) {
    // Narrow output: row slabs, each packing its own rows of A and decoding the small W.
    const int64_t h = ceil_div(pm, want) * uk.mr;
    const int64_t tasks = ceil_div(p.M, h);
    parallel_for(threads, 1, [&](int64_t, int64_t) {
      for (int64_t t; (t = next.fetch_add(1)) < tasks;) product_rect(uk, p, t * h, std::min(p.M, (t + 1) * h), 0, p.N);
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
    const SharedA sa{data, fresh_states(nstates), 0, kblocks, mblocks, kc_max, mc_max};
    next.store(0);
    parallel_for(threads, 1, [&](int64_t, int64_t) {
      const auto pack_a_block = a_packer(uk, p);
      const auto pack_b_panel = b_packer(uk, p, kc_max);
      for (int64_t t; (t = next.fetch_add(1)) < tasks;) {
        column_slab(uk, p.K, p.c, p.N, 1.0f, p.accumulate, sa, m0, m1, t * w, std::min(p.N, (t + 1) * w), pack_a_block,
                    pack_b_panel);
      }
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
  const int64_t threads = threads_for(flops);
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
  const int64_t threads = threads_for(flops);
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
