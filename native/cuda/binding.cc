// The N-API surface of the CUDA backend, shaped like the CPU addon's: device buffers
// named by numeric handles and freed deterministically by free(), host<->device
// copies, one generic run(kernelId, buffers, offsets, ints, floats), sync(), and the
// allocator's counters. Nothing else in native/cuda touches N-API.
//
// Ordering: every copy and launch goes to the backend's one stream (kernel.h), so
// work runs in the order JS issued it and a freed block handed to the next alloc()
// is only touched by work queued after everything that used it. write() returns once
// the host bytes are consumed (CUDA stages pageable sources before returning); read()
// and sync() wait for the stream, and report any error a queued kernel raised.
#include <node_api.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernel.h"

namespace {

using finlora::cuda::KernelArgs;
using finlora::cuda::stream;

int64_t g_live_bytes = 0;
int64_t g_peak_bytes = 0;

// Handles as in the CPU binding: slot index + generation * 2^24, so a stale handle
// (a buffer freed and its slot reused) is refused instead of touching another buffer.
struct Slot {
  void* data = nullptr;
  size_t bytes = 0;
  uint32_t generation = 0;
};
std::vector<Slot> g_slots;
std::vector<uint32_t> g_free_slots;
constexpr double kGenerationUnit = 16777216.0;

// The caching allocator: cudaMalloc synchronises the device and costs tens of
// microseconds to milliseconds, and a training step allocates the same sizes every
// step, so freed blocks wait in per-size-class lists and serve the next allocation
// of their class; cudaMalloc runs only on a miss. Classes round up to 512 B below
// 1 MiB, 64 KiB below 64 MiB and 2 MiB above (at most ~3% waste past 64 MiB). Cached
// bytes are capped by FINLORA_CUDA_CACHE_MB (default: no cap); when cudaMalloc fails
// the cache is returned to the device and the allocation retried.
std::unordered_map<size_t, std::vector<void*>> g_cache;
size_t g_cached_bytes = 0;

size_t size_class(size_t n) {
  size_t unit = n < (1u << 20) ? 512 : n < (64u << 20) ? (64u << 10) : (2u << 20);
  return ((n == 0 ? 1 : n) + unit - 1) / unit * unit;
}

size_t cache_limit() {
  static size_t limit = [] {
    const char* env = std::getenv("FINLORA_CUDA_CACHE_MB");
    if (env == nullptr) return static_cast<size_t>(-1);
    double mb = std::atof(env);
    return static_cast<size_t>(mb < 0 ? 0 : mb * 1048576.0);
  }();
  return limit;
}

void release_cache() {
  if (g_cache.empty()) return;
  cudaStreamSynchronize(stream());
  for (auto& [c, blocks] : g_cache)
    for (void* b : blocks) cudaFree(b);
  g_cache.clear();
  g_cached_bytes = 0;
}

void* take_block(size_t cls) {
  auto it = g_cache.find(cls);
  if (it != g_cache.end() && !it->second.empty()) {
    void* p = it->second.back();
    it->second.pop_back();
    g_cached_bytes -= cls;
    return p;
  }
  void* p = nullptr;
  if (cudaMalloc(&p, cls) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free allocation error before retrying
    p = nullptr;
    if (g_cached_bytes > 0) {
      release_cache();
      if (cudaMalloc(&p, cls) != cudaSuccess) {
        cudaGetLastError();
        p = nullptr;
      }
    }
  }
  return p;
}

void return_block(void* p, size_t cls) {
  if (g_cached_bytes + cls > cache_limit()) {
    cudaStreamSynchronize(stream());  // queued work may still use it
    cudaFree(p);
    return;
  }
  g_cache[cls].push_back(p);
  g_cached_bytes += cls;
}

#define CHECK(call)                                                        \
  do {                                                                     \
    if ((call) != napi_ok) {                                               \
      napi_throw_error(env, nullptr, "finlora cuda: N-API call failed");   \
      return nullptr;                                                      \
    }                                                                      \
  } while (0)

napi_value throw_error(napi_env env, const std::string& msg) {
  napi_throw_error(env, nullptr, msg.c_str());
  return nullptr;
}

// Turns a CUDA error (a launch's, or one a queued kernel raised) into a JS exception.
napi_value throw_if_cuda_error(napi_env env, cudaError_t err, const char* where) {
  if (err == cudaSuccess) return nullptr;
  return throw_error(env, std::string("finlora cuda: ") + where + ": " + cudaGetErrorString(err));
}

double get_number(napi_env env, napi_value v) {
  double d = 0;
  napi_get_value_double(env, v, &d);
  return d;
}

Slot* get_slot(napi_env env, napi_value v) {
  double h = get_number(env, v);
  if (!(h >= 0)) return nullptr;
  uint64_t handle = static_cast<uint64_t>(h);
  uint64_t index = handle % 16777216u;
  uint64_t generation = handle / 16777216u;
  if (index >= g_slots.size()) return nullptr;
  Slot& s = g_slots[index];
  if (s.data == nullptr || s.generation != generation) return nullptr;
  return &s;
}

napi_value Alloc(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  double bytes = get_number(env, argv[0]);
  if (!(bytes >= 0)) return throw_error(env, "alloc: invalid size");
  size_t n = static_cast<size_t>(bytes);
  void* data = take_block(size_class(n));
  if (data == nullptr) return throw_error(env, "alloc: out of GPU memory allocating " + std::to_string(n) + " bytes");
  uint32_t index;
  if (!g_free_slots.empty()) {
    index = g_free_slots.back();
    g_free_slots.pop_back();
  } else {
    if (g_slots.size() >= 16777216u) {
      return_block(data, size_class(n));
      return throw_error(env, "alloc: too many live buffers");
    }
    index = static_cast<uint32_t>(g_slots.size());
    g_slots.emplace_back();
  }
  Slot& s = g_slots[index];
  s.data = data;
  s.bytes = n;
  g_live_bytes += static_cast<int64_t>(n);
  if (g_live_bytes > g_peak_bytes) g_peak_bytes = g_live_bytes;
  napi_value handle;
  CHECK(napi_create_double(env, static_cast<double>(s.generation) * kGenerationUnit + index, &handle));
  return handle;
}

napi_value Free(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  Slot* s = get_slot(env, argv[0]);
  if (s != nullptr) {
    return_block(s->data, size_class(s->bytes));
    g_live_bytes -= static_cast<int64_t>(s->bytes);
    s->data = nullptr;
    s->bytes = 0;
    s->generation = (s->generation + 1) % (1u << 28);
    g_free_slots.push_back(static_cast<uint32_t>(s - g_slots.data()));
  }
  return nullptr;
}

// write(handle, byteOffset, typedArray)
napi_value Write(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  Slot* b = get_slot(env, argv[0]);
  if (b == nullptr) return throw_error(env, "write: buffer was freed");
  size_t offset = static_cast<size_t>(get_number(env, argv[1]));
  napi_typedarray_type type;
  size_t length, byte_offset;
  void* data;
  napi_value ab;
  CHECK(napi_get_typedarray_info(env, argv[2], &type, &length, &data, &ab, &byte_offset));
  size_t elem = 1;
  switch (type) {
    case napi_int16_array: case napi_uint16_array: elem = 2; break;
    case napi_int32_array: case napi_uint32_array: case napi_float32_array: elem = 4; break;
    case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: elem = 8; break;
    default: elem = 1;
  }
  size_t n = length * elem;
  if (offset + n > b->bytes) return throw_error(env, "write: out of bounds");
  if (n == 0) return nullptr;
  // A pageable source is staged before cudaMemcpyAsync returns, so the JS array may
  // change afterwards; the copy itself is ordered on the stream after earlier kernels.
  cudaError_t err = cudaMemcpyAsync(static_cast<char*>(b->data) + offset, data, n, cudaMemcpyHostToDevice, stream());
  return throw_if_cuda_error(env, err, "write");
}

// read(handle, byteOffset, byteLength) -> ArrayBuffer (a copy, after queued work)
napi_value Read(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  Slot* b = get_slot(env, argv[0]);
  if (b == nullptr) return throw_error(env, "read: buffer was freed");
  size_t offset = static_cast<size_t>(get_number(env, argv[1]));
  size_t n = static_cast<size_t>(get_number(env, argv[2]));
  if (offset + n > b->bytes) return throw_error(env, "read: out of bounds");
  void* out;
  napi_value ab;
  CHECK(napi_create_arraybuffer(env, n, &out, &ab));
  if (n > 0) {
    cudaError_t err = cudaMemcpyAsync(out, static_cast<char*>(b->data) + offset, n, cudaMemcpyDeviceToHost, stream());
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream());
    if (err != cudaSuccess) return throw_if_cuda_error(env, err, "read");
  }
  return ab;
}

napi_value KernelNames(napi_env env, napi_callback_info) {
  auto& reg = finlora::cuda::kernel_registry();
  napi_value arr;
  CHECK(napi_create_array_with_length(env, reg.size(), &arr));
  for (size_t i = 0; i < reg.size(); ++i) {
    napi_value s;
    CHECK(napi_create_string_utf8(env, reg[i].name, NAPI_AUTO_LENGTH, &s));
    CHECK(napi_set_element(env, arr, static_cast<uint32_t>(i), s));
  }
  return arr;
}

// run(id, buffers: handle[], byteOffsets: number[], ints: number[], floats: number[])
napi_value Run(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  auto& reg = finlora::cuda::kernel_registry();
  int64_t id = static_cast<int64_t>(get_number(env, argv[0]));
  if (id < 0 || id >= static_cast<int64_t>(reg.size())) return throw_error(env, "run: unknown kernel id");
  KernelArgs args;
  uint32_t n;
  CHECK(napi_get_array_length(env, argv[1], &n));
  args.ptrs.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    napi_value v, o;
    CHECK(napi_get_element(env, argv[1], i, &v));
    CHECK(napi_get_element(env, argv[2], i, &o));
    Slot* b = get_slot(env, v);
    if (b == nullptr) return throw_error(env, std::string(reg[id].name) + ": operand " + std::to_string(i) + " was freed");
    if (get_number(env, o) > static_cast<double>(b->bytes))
      return throw_error(env, std::string(reg[id].name) + ": operand " + std::to_string(i) + " offset is out of bounds");
    args.ptrs[i] = static_cast<char*>(b->data) + static_cast<size_t>(get_number(env, o));
  }
  CHECK(napi_get_array_length(env, argv[3], &n));
  args.ints.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    napi_value v;
    CHECK(napi_get_element(env, argv[3], i, &v));
    args.ints[i] = static_cast<int64_t>(get_number(env, v));
  }
  CHECK(napi_get_array_length(env, argv[4], &n));
  args.floats.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    napi_value v;
    CHECK(napi_get_element(env, argv[4], i, &v));
    args.floats[i] = get_number(env, v);
  }
  reg[id].fn(args);
  if (!args.error.empty()) return throw_error(env, std::string(reg[id].name) + ": " + args.error);
  // Launch errors (a bad configuration) show here; faults inside a kernel show at the
  // next read() or sync().
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return throw_error(env, std::string(reg[id].name) + ": " + cudaGetErrorString(err));
  return nullptr;
}

napi_value Sync(napi_env env, napi_callback_info) {
  return throw_if_cuda_error(env, cudaStreamSynchronize(stream()), "sync");
}

napi_value Number(napi_env env, double x) {
  napi_value v;
  CHECK(napi_create_double(env, x, &v));
  return v;
}

napi_value LiveBytes(napi_env env, napi_callback_info) { return Number(env, static_cast<double>(g_live_bytes)); }
napi_value PeakBytes(napi_env env, napi_callback_info) { return Number(env, static_cast<double>(g_peak_bytes)); }
napi_value CachedBytes(napi_env env, napi_callback_info) { return Number(env, static_cast<double>(g_cached_bytes)); }

napi_value ResetPeak(napi_env, napi_callback_info) {
  g_peak_bytes = g_live_bytes;
  return nullptr;
}

napi_value EmptyCache(napi_env, napi_callback_info) {
  release_cache();
  return nullptr;
}

// deviceCount() -> number of visible GPUs (0 when there is none or no driver); never throws.
napi_value DeviceCount(napi_env env, napi_callback_info) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    n = 0;
  }
  return Number(env, n);
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
  CHECK(napi_set_named_property(env, obj, "totalBytes", Number(env, static_cast<double>(total_b))));
  CHECK(napi_set_named_property(env, obj, "freeBytes", Number(env, static_cast<double>(free_b))));
  CHECK(napi_set_named_property(env, obj, "major", Number(env, prop.major)));
  CHECK(napi_set_named_property(env, obj, "minor", Number(env, prop.minor)));
  CHECK(napi_set_named_property(env, obj, "multiprocessors", Number(env, prop.multiProcessorCount)));
  return obj;
}

napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"alloc", nullptr, Alloc, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"free", nullptr, Free, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"write", nullptr, Write, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"read", nullptr, Read, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"kernelNames", nullptr, KernelNames, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"run", nullptr, Run, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"sync", nullptr, Sync, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"liveBytes", nullptr, LiveBytes, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"peakBytes", nullptr, PeakBytes, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"resetPeak", nullptr, ResetPeak, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"cachedBytes", nullptr, CachedBytes, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"emptyCache", nullptr, EmptyCache, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"deviceCount", nullptr, DeviceCount, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"deviceInfo", nullptr, DeviceInfo, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

}  // namespace

NAPI_MODULE(finlora_cuda, Init)
