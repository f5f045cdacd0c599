// The N-API surface of the CUDA backend: the shared buffer, copy and kernel entry points
// of native/common/addon.h over device memory, plus sync(), the device's description and
// the launch profile (setProfiling, profileRead).
// Nothing else in native/cuda touches N-API.
//
// Ordering: every copy and launch goes to the backend's one stream (kernel.h), so
// work runs in the order JS issued it and a freed block handed to the next alloc()
// is only touched by work queued after everything that used it. write() returns once
// the host bytes are consumed (CUDA stages pageable sources before returning); read()
// and sync() wait for the stream, and report any error a queued kernel raised.
#include <node_api.h>

#include <string>
#include <vector>

#include "addon.h"
#include "kernel.h"

namespace {

using finlora::addon::throw_error;
using finlora::cuda::stream;
namespace profile = finlora::cuda::profile;

// Turns a CUDA error (a launch's, or one a queued kernel raised) into a JS exception.
napi_value throw_if_cuda_error(napi_env env, cudaError_t err, const char* where) {
  if (err == cudaSuccess) return nullptr;
  return throw_error(env, std::string("finlora cuda: ") + where + ": " + cudaGetErrorString(err));
}

// Device memory. cudaMalloc synchronises the device and costs tens of microseconds to
// milliseconds, hence the cache. Classes round up to 512 B below 1 MiB, 64 KiB below
// 64 MiB and 2 MiB above (at most ~3% waste past 64 MiB). Cached bytes are capped by
// FINLORA_CUDA_CACHE_MB (default: no cap).
struct CudaDevice {
  static constexpr const char* kName = "finlora cuda";
  static constexpr const char* kMemory = "GPU memory";
  static size_t class_unit(size_t n) { return n < (1u << 20) ? 512 : n < (64u << 20) ? (64u << 10) : (2u << 20); }
  static constexpr const char* kCacheEnv = "FINLORA_CUDA_CACHE_MB";
  static constexpr size_t kCacheDefault = static_cast<size_t>(-1);
  static void* allocate(size_t bytes) {
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      cudaGetLastError();  // clear the allocation error before a retry
      return nullptr;
    }
    return p;
  }
  static void deallocate(void* p) { cudaFree(p); }
  static void settle() { cudaStreamSynchronize(stream()); }
  static bool copy_in(napi_env env, void* dst, const void* src, size_t n) {
    if (n == 0) return true;
    // A pageable source is staged before cudaMemcpyAsync returns, so the JS array may
    // change afterwards; the copy itself is ordered on the stream after earlier kernels.
    profile::begin(profile::kCopyIn);
    cudaError_t err = cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, stream());
    profile::end();
    throw_if_cuda_error(env, err, "write");
    return err == cudaSuccess;
  }
  static bool copy_out(napi_env env, void* dst, const void* src, size_t n) {
    if (n == 0) return true;
    profile::begin(profile::kCopyOut);
    cudaError_t err = cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, stream());
    profile::end();
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream());
    throw_if_cuda_error(env, err, "read");
    return err == cudaSuccess;
  }
  // Launch errors (a bad configuration) show here; faults inside a kernel show at the
  // next read() or sync().
  static bool after_run(napi_env env, const char* kernel) {
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) throw_error(env, std::string(kernel) + ": " + cudaGetErrorString(err));
    return err == cudaSuccess;
  }
  // Brackets each run while profiling; the key is run()'s optional sixth argument (the
  // JS side's label index), else kUnlabelled - the kernel's id.
  static void profile_begin(napi_env env, napi_value key, int64_t id) {
    if (!profile::on()) return;
    napi_valuetype type = napi_undefined;
    if (key != nullptr) napi_typeof(env, key, &type);
    profile::begin(type == napi_number ? static_cast<int64_t>(finlora::addon::get_number(env, key)) : profile::kUnlabelled - id);
  }
  static void profile_end() { profile::end(); }
};
using Addon = finlora::addon::Addon<CudaDevice>;

#define CHECK(call) FINLORA_NAPI_CHECK(CudaDevice::kName, call)

napi_value Sync(napi_env env, napi_callback_info) {
  return throw_if_cuda_error(env, cudaStreamSynchronize(stream()), "sync");
}

// setProfiling(on): brackets every later launch and copy with events (see kernel.h).
napi_value SetProfiling(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  bool on = false;
  if (argc < 1 || napi_get_value_bool(env, argv[0], &on) != napi_ok) return throw_error(env, "setProfiling: expected a boolean");
  profile::set(on);
  return nullptr;
}

// profileRead() -> [key, calls, ms, key, calls, ms, ...]: GPU time per key since the last
// read (waits for the stream; a launch's key is what run() was given, see kernel.h).
napi_value ProfileRead(napi_env env, napi_callback_info) {
  std::vector<profile::Total> totals;
  const cudaError_t err = profile::read(&totals);
  if (err != cudaSuccess) return throw_if_cuda_error(env, err, "profileRead");
  napi_value arr;
  CHECK(napi_create_array_with_length(env, 3 * totals.size(), &arr));
  uint32_t i = 0;
  for (const profile::Total& t : totals) {
    CHECK(napi_set_element(env, arr, i++, Addon::number(env, static_cast<double>(t.key))));
    CHECK(napi_set_element(env, arr, i++, Addon::number(env, static_cast<double>(t.calls))));
    CHECK(napi_set_element(env, arr, i++, Addon::number(env, t.ms)));
  }
  return arr;
}

// deviceCount() -> number of visible GPUs (0 when there is none or no driver); never throws.
napi_value DeviceCount(napi_env env, napi_callback_info) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    n = 0;
  }
  return Addon::number(env, n);
}

// deviceInfo() -> { name, totalBytes, freeBytes, major, minor, multiprocessors }
napi_value DeviceInfo(napi_env env, napi_callback_info) {
  int dev = 0;
  cudaDeviceProp prop;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaGetDeviceProperties(&prop, dev);
  if (err != cudaSuccess) return throw_if_cuda_error(env, err, "deviceInfo");
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  napi_value obj, name;
  CHECK(napi_create_object(env, &obj));
  CHECK(napi_create_string_utf8(env, prop.name, NAPI_AUTO_LENGTH, &name));
  CHECK(napi_set_named_property(env, obj, "name", name));
  CHECK(napi_set_named_property(env, obj, "totalBytes", Addon::number(env, static_cast<double>(total_b))));
  CHECK(napi_set_named_property(env, obj, "freeBytes", Addon::number(env, static_cast<double>(free_b))));
  CHECK(napi_set_named_property(env, obj, "major", Addon::number(env, prop.major)));
  CHECK(napi_set_named_property(env, obj, "minor", Addon::number(env, prop.minor)));
  CHECK(napi_set_named_property(env, obj, "multiprocessors", Addon::number(env, prop.multiProcessorCount)));
  return obj;
}

napi_value Init(napi_env env, napi_value exports) {
  return Addon::define(env, exports, {
      {"sync", nullptr, Sync, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"deviceCount", nullptr, DeviceCount, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"deviceInfo", nullptr, DeviceInfo, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setProfiling", nullptr, SetProfiling, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"profileRead", nullptr, ProfileRead, nullptr, nullptr, nullptr, napi_default, nullptr},
  });
}

}  // namespace

NAPI_MODULE(finlora_cuda, Init)
