// Thread pool, instruction-set detection and half-precision conversions for the CPU
// backend (see kernel.h).
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "kernel.h"

namespace finlora {

std::vector<KernelEntry>& kernel_registry() {
  static std::vector<KernelEntry> registry;
  return registry;
}

// ---------------------------------------------------------------- instruction set

Isa best_isa() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Scalar;
}

static Isa initial_isa() {
  Isa best = best_isa();
  const char* env = std::getenv("FINLORA_CPU_ISA");
  if (env == nullptr) return best;
  Isa want = best;
  if (std::strcmp(env, "scalar") == 0) want = Isa::Scalar;
  if (std::strcmp(env, "avx2") == 0) want = Isa::Avx2;
  if (std::strcmp(env, "avx512") == 0) want = Isa::Avx512;
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

static std::atomic<int> g_isa{static_cast<int>(initial_isa())};

Isa isa() { return static_cast<Isa>(g_isa.load(std::memory_order_relaxed)); }

void set_isa(Isa level) {
  Isa best = best_isa();
  if (static_cast<int>(level) > static_cast<int>(best)) level = best;
  g_isa.store(static_cast<int>(level));
}

// ---------------------------------------------------------------- thread pool

namespace {

class ThreadPool {
 public:
  explicit ThreadPool(int n) { resize(n); }
  ~ThreadPool() { stop_workers(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int n) {
    if (n < 1) n = 1;
    stop_workers();
    stopping_ = false;
    for (int i = 0; i < n - 1; ++i) workers_.emplace_back([this, i] { worker_loop(i + 1); });
  }

  // Runs task(chunk) for chunk in [0, chunks) across the workers and this thread.
  void run(int chunks, const std::function<void(int)>& task) {
    std::unique_lock<std::mutex> lock(mu_);
    task_ = &task;
    chunks_ = chunks;
    next_.store(0);
    pending_ = chunks;
    ++generation_;
    lock.unlock();
    cv_.notify_all();
    drain();
    lock.lock();
    done_cv_.wait(lock, [this] { return pending_ == 0; });
    task_ = nullptr;
  }

 private:
  void drain() {
    for (;;) {
      int c = next_.fetch_add(1);
      if (c >= chunks_) return;
      (*task_)(c);
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_cv_.notify_all();
    }
  }

  void worker_loop(int) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      drain();
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* task_ = nullptr;
  int chunks_ = 0;
  std::atomic<int> next_{0};
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
};

int default_threads() {
  const char* env = std::getenv("FINLORA_NUM_THREADS");
  if (env != nullptr && std::atoi(env) > 0) return std::atoi(env);
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

ThreadPool& pool() {
  static ThreadPool p(default_threads());
  return p;
}

thread_local bool t_in_parallel = false;
std::mutex g_run_mu;  // one parallel region at a time

}  // namespace

int num_threads() { return pool().size(); }

void set_num_threads(int n) { pool().resize(n); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  int64_t max_chunks = (n + grain - 1) / grain;
  int threads = num_threads();
  int chunks = static_cast<int>(max_chunks < threads ? max_chunks : threads);
  if (chunks <= 1 || t_in_parallel) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> guard(g_run_mu);
  int64_t per = n / chunks, rem = n % chunks;
  pool().run(chunks, [&](int c) {
    int64_t begin = c * per + (c < rem ? c : rem);
    int64_t end = begin + per + (c < rem ? 1 : 0);
    bool was = t_in_parallel;
    t_in_parallel = true;
    fn(begin, end);
    t_in_parallel = was;
  });
}

// ---------------------------------------------------------------- f16

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      u = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {  // subnormal or zero in f16
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    uint32_t exp = abs >> 23;
    uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp;  // value = mant * 2^(exp-150); f16 subnormal unit is 2^-24
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  uint32_t half = r >> 13;
  uint32_t rem = r & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;
  return static_cast<uint16_t>(sign | half);
}

}  // namespace finlora
