// The N-API surface of the CPU backend: buffers (aligned native memory named by
// numeric handles, freed deterministically by free()), host<->native
// copies, and one generic entry point that runs a registered kernel by id.
// Nothing else in native/ touches N-API.
#include <node_api.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernel.h"

namespace {

using finlora::KernelArgs;

std::atomic<int64_t> g_live_bytes{0};
// The high-water mark of g_live_bytes since the last resetPeak(): what a step or a load
// needed at its worst, which sampling liveBytes() between calls would miss.
std::atomic<int64_t> g_peak_bytes{0};

// Buffers are named by numeric handles (slot index + generation * 2^24), not by
// JS externals: an external carries a GC finalizer that Node runs only when the event
// loop turns, so a synchronous training loop would pile up pending finalizers. With
// handles, free() releases everything at once; the JS side registers a
// FinalizationRegistry entry as the safety net for buffers never freed.
struct Slot {
  void* data = nullptr;
  size_t bytes = 0;
  uint32_t generation = 0;
};
std::vector<Slot> g_slots;
std::vector<uint32_t> g_free_slots;
constexpr double kGenerationUnit = 16777216.0;  // 2^24 slots

// A caching allocator: freed blocks wait in per-size-class lists and serve the next
// allocation of that class. A training step allocates the same sizes every time, and a
// fresh block costs a page fault per 4 KiB on first touch (measured here: ~130 ms for
// 16 MB, against ~2 ms for the kernel that fills it). Classes round up to 64 B below
// 64 KiB, 4 KiB below 4 MiB and 64 KiB above; cached bytes are capped
// (FINLORA_CPU_CACHE_MB, default 4096) and emptyCache() returns them all.
std::unordered_map<size_t, std::vector<void*>> g_cache;
size_t g_cached_bytes = 0;

size_t size_class(size_t n) {
  size_t unit = n < (64u << 10) ? 64 : n < (4u << 20) ? (4u << 10) : (64u << 10);
  return ((n == 0 ? 1 : n) + unit - 1) / unit * unit;
}

size_t cache_limit() {
  static size_t limit = [] {
    const char* env = std::getenv("FINLORA_CPU_CACHE_MB");
    double mb = env != nullptr ? std::atof(env) : 4096.0;
    return static_cast<size_t>(mb < 0 ? 0 : mb * 1048576.0);
  }();
  return limit;
}

void* take_block(size_t cls) {
  auto it = g_cache.find(cls);
  if (it != g_cache.end() && !it->second.empty()) {
    void* p = it->second.back();
    it->second.pop_back();
    g_cached_bytes -= cls;
    return p;
  }
  void* p = std::aligned_alloc(64, cls);
  if (p == nullptr && g_cached_bytes > 0) {  // memory is tight: give the cache back and retry
    for (auto& [c, blocks] : g_cache)
      for (void* b : blocks) std::free(b);
    g_cache.clear();
    g_cached_bytes = 0;
    p = std::aligned_alloc(64, cls);
  }
  return p;
}

void return_block(void* p, size_t cls) {
  if (g_cached_bytes + cls > cache_limit()) {
    std::free(p);
    return;
  }
  g_cache[cls].push_back(p);
  g_cached_bytes += cls;
}

#define CHECK(call)                                                      \
  do {                                                                   \
    if ((call) != napi_ok) {                                             \
      napi_throw_error(env, nullptr, "finlora native: N-API call failed"); \
      return nullptr;                                                    \
    }                                                                    \
  } while (0)

napi_value throw_error(napi_env env, const std::string& msg) {
  napi_throw_error(env, nullptr, msg.c_str());
  return nullptr;
}

double get_number(napi_env env, napi_value v) {
  double d = 0;
  napi_get_value_double(env, v, &d);
  return d;
}

// The live slot a handle names, or nullptr when it was freed (or never existed).
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

// alloc(bytes) -> handle
napi_value Alloc(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  double bytes = get_number(env, argv[0]);
  if (!(bytes >= 0)) return throw_error(env, "alloc: invalid size");
  size_t n = static_cast<size_t>(bytes);
  void* data = take_block(size_class(n));
  if (data == nullptr) return throw_error(env, "alloc: out of memory allocating " + std::to_string(n) + " bytes");
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
  const int64_t live = g_live_bytes += static_cast<int64_t>(n);
  if (live > g_peak_bytes.load()) g_peak_bytes = live;  // buffers are allocated on the JS thread only
  napi_value handle;
  CHECK(napi_create_double(env, static_cast<double>(s.generation) * kGenerationUnit + index, &handle));
  return handle;
}

// free(handle): idempotent; a stale handle is ignored.
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
  std::memcpy(static_cast<char*>(b->data) + offset, data, n);
  return nullptr;
}

// read(handle, byteOffset, byteLength) -> ArrayBuffer (a copy)
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
  std::memcpy(out, static_cast<char*>(b->data) + offset, n);
  return ab;
}

// kernelNames() -> string[]; kernel ids are indices into this list
napi_value KernelNames(napi_env env, napi_callback_info) {
  auto& reg = finlora::kernel_registry();
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
  auto& reg = finlora::kernel_registry();
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
  return nullptr;
}

napi_value CachedBytes(napi_env env, napi_callback_info) {
  napi_value v;
  CHECK(napi_create_double(env, static_cast<double>(g_cached_bytes), &v));
  return v;
}

napi_value EmptyCache(napi_env, napi_callback_info) {
  for (auto& [c, blocks] : g_cache)
    for (void* b : blocks) std::free(b);
  g_cache.clear();
  g_cached_bytes = 0;
  return nullptr;
}

napi_value LiveBytes(napi_env env, napi_callback_info) {
  napi_value v;
  CHECK(napi_create_double(env, static_cast<double>(g_live_bytes.load()), &v));
  return v;
}

napi_value PeakBytes(napi_env env, napi_callback_info) {
  napi_value v;
  CHECK(napi_create_double(env, static_cast<double>(g_peak_bytes.load()), &v));
  return v;
}

// resetPeak(): the high-water mark starts again from the bytes live now.
napi_value ResetPeak(napi_env, napi_callback_info) {
  g_peak_bytes = g_live_bytes.load();
  return nullptr;
}

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
  napi_property_descriptor props[] = {
      {"alloc", nullptr, Alloc, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"free", nullptr, Free, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"write", nullptr, Write, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"read", nullptr, Read, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"kernelNames", nullptr, KernelNames, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"run", nullptr, Run, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"liveBytes", nullptr, LiveBytes, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"peakBytes", nullptr, PeakBytes, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"resetPeak", nullptr, ResetPeak, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"cachedBytes", nullptr, CachedBytes, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"emptyCache", nullptr, EmptyCache, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"isa", nullptr, GetIsa, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setIsa", nullptr, SetIsa, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"numThreads", nullptr, NumThreads, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setNumThreads", nullptr, SetNumThreads, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
