// The CUDA backend's runtime pieces that kernels share: the kernel registry, the one
// stream every launch goes to, the cuBLAS and cuBLASLt handles and the GEMM
// workspace, the index check that gather and crossEntropy run before they write, and
// the launch profile's event brackets.
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>

#include "kernel.h"

namespace finlora {

std::vector<KernelEntry>& kernel_registry() {
  static std::vector<KernelEntry> reg;
  return reg;
}

namespace cuda {

cudaStream_t stream() {
  // Non-blocking: the legacy default stream would serialise against other libraries'
  // work in the process for no gain.
  static cudaStream_t s = [] {
    cudaStream_t st = nullptr;
    cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
    return st;
  }();
  return s;
}

cublasHandle_t cublas() {
  static cublasHandle_t h = [] {
    cublasHandle_t handle = nullptr;
    if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
      std::fprintf(stderr, "finlora cuda: cublasCreate failed\n");
      std::abort();
    }
    cublasSetStream(handle, stream());
    // f32 GEMMs stay f32 (no TF32) so results match the CPU within f32 rounding;
    // the bf16 paths opt into tensor cores per call.
    cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH);
    cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST);
    return handle;
  }();
  return h;
}

cublasLtHandle_t cublas_lt() {
  static cublasLtHandle_t h = [] {
    cublasLtHandle_t handle = nullptr;
    if (cublasLtCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
      std::fprintf(stderr, "finlora cuda: cublasLtCreate failed\n");
      std::abort();
    }
    return handle;
  }();
  return h;
}

void* gemm_workspace(size_t* bytes) {
  // 32 MiB: what cuBLASLt's Hopper kernels ask for at most on large shapes (split-K
  // and stream-K partials); allocated once, never grown.
  static size_t size = 0;
  static void* buf = [] {
    void* p = nullptr;
    const size_t want = size_t{32} << 20;
    if (cudaMalloc(&p, want) != cudaSuccess) {
      cudaGetLastError();
      return static_cast<void*>(nullptr);
    }
    size = want;
    return p;
  }();
  *bytes = size;
  return buf;
}

namespace {

__global__ void first_bad_kernel(const int32_t* ids, int64_t n, int64_t lo, int64_t hi, int64_t skip,
                                 unsigned long long* first) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t v = ids[i];
    if (v != skip && (v < lo || v >= hi)) atomicMin(first, static_cast<unsigned long long>(i));
  }
}

}  // namespace

int64_t first_bad_index(const int32_t* ids, int64_t n, int64_t lo, int64_t hi, int64_t skip) {
  static unsigned long long* dev = nullptr;
  static unsigned long long* host = nullptr;
  if (dev == nullptr) {
    cudaMalloc(&dev, sizeof(unsigned long long));
    cudaMallocHost(&host, sizeof(unsigned long long));
  }
  if (n <= 0) return -1;
  const unsigned long long none = ~0ull;
  cudaMemcpyAsync(dev, &none, sizeof none, cudaMemcpyHostToDevice, stream());
  first_bad_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(ids, n, lo, hi, skip, dev);
  cudaMemcpyAsync(host, dev, sizeof none, cudaMemcpyDeviceToHost, stream());
  cudaStreamSynchronize(stream());
  return *host == none ? -1 : static_cast<int64_t>(*host);
}

namespace profile {
namespace {

struct Bracket {
  int64_t key;
  cudaEvent_t start, stop;
};

struct State {
  bool on = false;
  bool open = false;
  Bracket current{};
  std::deque<Bracket> pending;      // recorded, not yet folded into totals
  std::vector<cudaEvent_t> pool;    // events free for reuse
  std::map<int64_t, Total> totals;  // ordered: read() lists keys in a stable order
};

State& state() {
  static State s;
  return s;
}

cudaEvent_t take_event() {
  State& s = state();
  if (!s.pool.empty()) {
    cudaEvent_t e = s.pool.back();
    s.pool.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  cudaEventCreate(&e);
  return e;
}

void fold(const Bracket& b) {
  State& s = state();
  float ms = 0;
  if (cudaEventElapsedTime(&ms, b.start, b.stop) != cudaSuccess) {
    cudaGetLastError();
    ms = 0;
  }
  Total& t = s.totals.try_emplace(b.key, Total{b.key, 0, 0.0}).first->second;
  t.calls += 1;
  t.ms += ms;
  s.pool.push_back(b.start);
  s.pool.push_back(b.stop);
}

// A long profile would otherwise hold two events per launch until read(): past this
// many brackets, the oldest ones the GPU has finished are folded as launches go by,
// with a query that does not wait.
constexpr size_t kFoldAfter = 4096;

void fold_finished() {
  State& s = state();
  if (s.pending.size() < kFoldAfter) return;
  // A not-ready query must not pass for a launch error at the next check, and must not
  // hide one that is already pending.
  const bool clean = cudaPeekAtLastError() == cudaSuccess;
  while (!s.pending.empty()) {
    const cudaError_t q = cudaEventQuery(s.pending.front().stop);
    if (q != cudaSuccess) {
      if (clean) cudaGetLastError();
      return;
    }
    fold(s.pending.front());
    s.pending.pop_front();
  }
}

}  // namespace

bool on() { return state().on; }

void set(bool on) { state().on = on; }

void begin(int64_t key) {
  State& s = state();
  if (!s.on) return;
  fold_finished();
  s.current = Bracket{key, take_event(), take_event()};
  s.open = true;
  cudaEventRecord(s.current.start, stream());
}

void end() {
  State& s = state();
  if (!s.open) return;
  cudaEventRecord(s.current.stop, stream());
  s.pending.push_back(s.current);
  s.open = false;
}

cudaError_t read(std::vector<Total>* out) {
  State& s = state();
  const cudaError_t err = cudaStreamSynchronize(stream());
  if (err != cudaSuccess) return err;
  for (const Bracket& b : s.pending) fold(b);
  s.pending.clear();
  out->clear();
  for (const auto& [key, t] : s.totals) out->push_back(t);
  s.totals.clear();
  return cudaSuccess;
}

}  // namespace profile

}  // namespace cuda
}  // namespace finlora
