// The N-API surface of the CPU backend: the shared buffer, copy and kernel entry points
// of native/common/addon.h over aligned host memory, plus the SIMD level and thread
// count. Nothing else in native/ touches N-API.
#include <node_api.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "addon.h"
#include "kernel.h"

namespace {

using finlora::addon::get_number;
using finlora::addon::throw_error;

// Host memory. A fresh block costs a page fault per 4 KiB on first touch (measured here:
// ~130 ms for 16 MB, against ~2 ms for the kernel that fills it), hence the cache.
// Classes round up to 64 B below 64 KiB, 4 KiB below 4 MiB and 64 KiB above; cached bytes
// are capped (FINLORA_CPU_CACHE_MB, default 4096).
struct CpuDevice {
  static constexpr const char* kName = "finlora native";
  static constexpr const char* kMemory = "memory";
  static size_t class_unit(size_t n) { return n < (64u << 10) ? 64 : n < (4u << 20) ? (4u << 10) : (64u << 10); }
  static constexpr const char* kCacheEnv = "FINLORA_CPU_CACHE_MB";
  static constexpr size_t kCacheDefault = size_t{4096} << 20;
  static void* allocate(size_t bytes) { return std::aligned_alloc(64, bytes); }
  static void deallocate(void* p) { std::free(p); }
  static void settle() {}  // kernels run before run() returns
  static bool copy_in(napi_env, void* dst, const void* src, size_t n) {
    std::memcpy(dst, src, n);
    return true;
  }
  static bool copy_out(napi_env, void* dst, const void* src, size_t n) {
    std::memcpy(dst, src, n);
    return true;
  }
  static bool after_run(napi_env, const char*) { return true; }
};
using Addon = finlora::addon::Addon<CpuDevice>;

#define CHECK(call) FINLORA_NAPI_CHECK(CpuDevice::kName, call)

const char* isa_name(finlora::Isa i) {
  switch (i) {
    case finlora::Isa::Avx512: return "avx512";
    case finlora::Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

// isa() -> {current, best}; setIsa(name)
napi_value GetIsa(napi_env env, napi_callback_info) {
  napi_value obj, cur, best;
  CHECK(napi_create_object(env, &obj));
  CHECK(napi_create_string_utf8(env, isa_name(finlora::isa()), NAPI_AUTO_LENGTH, &cur));
  CHECK(napi_create_string_utf8(env, isa_name(finlora::best_isa()), NAPI_AUTO_LENGTH, &best));
  CHECK(napi_set_named_property(env, obj, "current", cur));
  CHECK(napi_set_named_property(env, obj, "best", best));
  return obj;
}

napi_value SetIsa(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  char buf[16] = {0};
  size_t len;
  CHECK(napi_get_value_string_utf8(env, argv[0], buf, sizeof buf, &len));
  std::string s(buf);
  if (s == "avx512") finlora::set_isa(finlora::Isa::Avx512);
  else if (s == "avx2") finlora::set_isa(finlora::Isa::Avx2);
  else if (s == "scalar") finlora::set_isa(finlora::Isa::Scalar);
  else return throw_error(env, "setIsa: expected avx512, avx2 or scalar");
  return nullptr;
}

napi_value NumThreads(napi_env env, napi_callback_info) {
  napi_value v;
  CHECK(napi_create_int32(env, finlora::num_threads(), &v));
  return v;
}

napi_value SetNumThreads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  finlora::set_num_threads(static_cast<int>(get_number(env, argv[0])));
  return nullptr;
}

napi_value Init(napi_env env, napi_value exports) {
  return Addon::define(env, exports, {
      {"isa", nullptr, GetIsa, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setIsa", nullptr, SetIsa, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"numThreads", nullptr, NumThreads, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setNumThreads", nullptr, SetNumThreads, nullptr, nullptr, nullptr, napi_default, nullptr},
  });
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
