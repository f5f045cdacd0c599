// crossEntropy and its backward, as native/cpu/kernels/crossentropy.cc
// (torch.nn.functional.cross_entropy, reduction='none'): loss = lse - logit[target],
// lse = log(sum(exp(logits))) accumulated in f64 around the row maximum; rows whose
// target is ignore_index get loss 0. Nothing N x V is allocated: lse is saved and the
// backward recomputes the softmax from it. Targets outside [0, V) other than
// ignore_index are an error reported before any write (checked on the device first).
//
// logits and dlogits are T (f32 or bf16: read widened, dlogits computed in f32 and
// rounded once); loss, lse and dloss are always f32.
//
// crossEntropy ints: [N, V, ignore_index, dtype T]; ptrs: [logits [N, V], targets int32 [N], loss [N] (=), lse [N] (=)]
// crossEntropyBackward ints: the same; ptrs: [logits, targets, lse, dloss [N], dlogits [N, V] (=)]
//   dlogits = dloss * (softmax(logits) - onehot(target)), zero rows where ignored.
#include "kernel.h"

namespace finlora {
namespace cuda {
namespace {

template <class T>
__global__ void ce_forward(const T* logits, const int32_t* targets, float* loss, float* lse_out, int64_t V,
                           int64_t ignore) {
  const T* x = logits + blockIdx.x * V;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) m = NanMaxOp()(m, ld(x, i));
  m = block_reduce(m, NanMaxOp());
  double s = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) s += exp(static_cast<double>(ld(x, i)) - m);
  s = block_reduce(s, SumOp());
  if (threadIdx.x == 0) {
    const double lse = static_cast<double>(m) + log(s);
    lse_out[blockIdx.x] = static_cast<float>(lse);
    const int32_t t = targets[blockIdx.x];
    loss[blockIdx.x] = t == ignore ? 0.f : static_cast<float>(lse - ld(x, t));
  }
}

template <class T>
__global__ void ce_backward(const T* logits, const int32_t* targets, const float* lse, const float* dloss,
                            T* dlogits, int64_t V, int64_t ignore) {
  const T* x = logits + blockIdx.x * V;
  T* dx = dlogits + blockIdx.x * V;
  const int32_t t = targets[blockIdx.x];
  if (t == ignore) {
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) st(dx, i, 0.f);
    return;
  }
  const float d = dloss[blockIdx.x], l = lse[blockIdx.x];
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float p = d * expf(ld(x, i) - l);
    st(dx, i, i == t ? p - d : p);
  }
}

bool check_targets(const KernelArgs& a, const int32_t* targets, int64_t N, int64_t V, int64_t ignore) {
  const int64_t bad = first_bad_index(targets, N, 0, V, ignore);
  if (bad < 0) return true;
  int32_t t = 0;
  cudaMemcpy(&t, targets + bad, sizeof t, cudaMemcpyDeviceToHost);
  a.error = "target " + std::to_string(t) + " at row " + std::to_string(bad) + " is out of range for " + std::to_string(V) +
            " classes (ignore_index " + std::to_string(ignore) + ")";
  return false;
}

int block_for(int64_t V) { return V >= 4096 ? 1024 : V >= 256 ? 256 : 64; }

void cross_entropy(const KernelArgs& a) {
  const int64_t N = a.ints[0], V = a.ints[1], ignore = a.ints[2], dt = trailing_dtype(a, 3);
  if (!compute_dtype_ok(a, dt)) return;
  const int32_t* targets = static_cast<const int32_t*>(a.ptrs[1]);
  if (!check_targets(a, targets, N, V, ignore) || N == 0) return;
  float* loss = static_cast<float*>(a.ptrs[2]);
  float* lse = static_cast<float*>(a.ptrs[3]);
  if (dt == BF16)
    ce_forward<<<static_cast<unsigned>(N), block_for(V), 0, stream()>>>(static_cast<const bf16*>(a.ptrs[0]), targets, loss,
                                                                         lse, V, ignore);
  else
    ce_forward<<<static_cast<unsigned>(N), block_for(V), 0, stream()>>>(static_cast<const float*>(a.ptrs[0]), targets, loss,
                                                                         lse, V, ignore);
}

void cross_entropy_backward(const KernelArgs& a) {
  const int64_t N = a.ints[0], V = a.ints[1], ignore = a.ints[2], dt = trailing_dtype(a, 3);
  if (!compute_dtype_ok(a, dt)) return;
  const int32_t* targets = static_cast<const int32_t*>(a.ptrs[1]);
  if (!check_targets(a, targets, N, V, ignore) || N == 0) return;
  const float* lse = static_cast<const float*>(a.ptrs[2]);
  const float* dloss = static_cast<const float*>(a.ptrs[3]);
  if (dt == BF16)
    ce_backward<<<static_cast<unsigned>(N), block_for(V), 0, stream()>>>(static_cast<const bf16*>(a.ptrs[0]), targets, lse,
                                                                          dloss, static_cast<bf16*>(a.ptrs[4]), V, ignore);
  else
    ce_backward<<<static_cast<unsigned>(N), block_for(V), 0, stream()>>>(static_cast<const float*>(a.ptrs[0]), targets, lse,
                                                                          dloss, static_cast<float*>(a.ptrs[4]), V, ignore);
}

}  // namespace

FINLORA_KERNEL("crossEntropy", cross_entropy)
FINLORA_KERNEL("crossEntropyBackward", cross_entropy_backward)

}  // namespace cuda
}  // namespace finlora
