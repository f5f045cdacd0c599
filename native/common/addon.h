// The N-API surface both native addons share: buffers named by numeric handles over a
// caching allocator, host<->buffer copies, the allocator's counters, and the one
// generic entry point that runs a kernel of kernel_registry.h by id. Each backend's
// binding.cc (the only file of its addon that touches N-API) supplies a Device policy
// and adds its own entry points (the CPU's isa/threads, the GPU's sync/deviceInfo):
//
//   struct Device {
//     static constexpr const char* kName;      // prefix of N-API failure messages
//     static constexpr const char* kMemory;    // what "alloc: out of <kMemory>" names
//     static size_t class_unit(size_t bytes);  // requests round up to a multiple of this
//     static constexpr const char* kCacheEnv;  // MiB the cache may keep (negative: none)
//     static constexpr size_t kCacheDefault;   // bytes it keeps when kCacheEnv is unset
//     static void* allocate(size_t bytes);     // a fresh block, nullptr when out of memory
//     static void deallocate(void* block);
//     static void settle();                    // no queued work can still use a freed block
//     static bool copy_in(napi_env, void* dst, const void* src, size_t n);   // false: threw
//     static bool copy_out(napi_env, void* dst, const void* src, size_t n);  // false: threw
//     static bool after_run(napi_env, const char* kernel);                   // false: threw
//   };
//
// Buffers are named by numeric handles (slot index + generation * 2^24), not by JS
// externals: an external carries a GC finalizer that Node runs only when the event
// loop turns, so a synchronous training loop would pile up pending finalizers. With
// handles, free() releases everything at once, and a stale handle (a buffer freed and
// its slot reused) is refused instead of touching another buffer; the JS side keeps a
// safety net for buffers never freed (src/backend/forgotten.ts).
//
// The caching allocator: a training step allocates the same sizes every step, and a
// fresh block is expensive (page faults on first touch on the CPU, a device
// synchronisation in cudaMalloc), so freed blocks wait in per-size-class lists and
// serve the next allocation of their class. Cached bytes are capped (cache_limit);
// when a fresh block cannot be had, the cache is given back and the allocation retried.
#pragma once
#include <node_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kernel_registry.h"

// Returns from an N-API callback with a JS error when an N-API call fails.
#define FINLORA_NAPI_CHECK(prefix, call)                                                  \
  do {                                                                                    \
    if ((call) != napi_ok) {                                                              \
      napi_throw_error(env, nullptr, (std::string(prefix) + ": N-API call failed").c_str()); \
      return nullptr;                                                                     \
    }                                                                                     \
  } while (0)

namespace finlora {
namespace addon {

inline napi_value throw_error(napi_env env, const std::string& msg) {
  napi_throw_error(env, nullptr, msg.c_str());
  return nullptr;
}

inline double get_number(napi_env env, napi_value v) {
  double d = 0;
  napi_get_value_double(env, v, &d);
  return d;
}

inline size_t typed_array_element_bytes(napi_typedarray_type type) {
  switch (type) {
    case napi_int16_array: case napi_uint16_array: return 2;
    case napi_int32_array: case napi_uint32_array: case napi_float32_array: return 4;
    case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: return 8;
    default: return 1;
  }
}

// A Device that profiles launches defines profile_begin(env, key, kernelId) and
// profile_end(), called around each kernel run; others (the CPU's) are left as they were.
template <class D, class = void>
struct profiles_launches : std::false_type {};
template <class D>
struct profiles_launches<D, std::void_t<decltype(&D::profile_begin), decltype(&D::profile_end)>> : std::true_type {};

template <class Device>
class Addon {
 public:
#define CHECK(call) FINLORA_NAPI_CHECK(Device::kName, call)

  // alloc(bytes) -> handle
  static napi_value Alloc(napi_env env, napi_callback_info info) {
    size_t argc = 1;
    napi_value argv[1];
    CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
    double bytes = get_number(env, argv[0]);
    if (!(bytes >= 0)) return throw_error(env, "alloc: invalid size");
    size_t n = static_cast<size_t>(bytes);
    void* data = take_block(size_class(n));
    if (data == nullptr) return throw_error(env, std::string("alloc: out of ") + Device::kMemory + " allocating " + std::to_string(n) + " bytes");
    uint32_t index;
    if (!free_slots().empty()) {
      index = free_slots().back();
      free_slots().pop_back();
    } else {
      if (slots().size() >= kSlots) {
        return_block(data, size_class(n));
        return throw_error(env, "alloc: too many live buffers");
      }
      index = static_cast<uint32_t>(slots().size());
      slots().emplace_back();
    }
    Slot& s = slots()[index];
    s.data = data;
    s.bytes = n;
    const int64_t live = live_bytes() += static_cast<int64_t>(n);
    if (live > peak_bytes().load()) peak_bytes() = live;  // buffers are allocated on the JS thread only
    napi_value handle;
    CHECK(napi_create_double(env, static_cast<double>(s.generation) * static_cast<double>(kSlots) + index, &handle));
    return handle;
  }

  // free(handle): idempotent; a stale handle is ignored.
  static napi_value Free(napi_env env, napi_callback_info info) {
    size_t argc = 1;
    napi_value argv[1];
    CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
    Slot* s = get_slot(env, argv[0]);
    if (s != nullptr) {
      return_block(s->data, size_class(s->bytes));
      live_bytes() -= static_cast<int64_t>(s->bytes);
      s->data = nullptr;
      s->bytes = 0;
      s->generation = (s->generation + 1) % (1u << 28);
      free_slots().push_back(static_cast<uint32_t>(s - slots().data()));
    }
    return nullptr;
  }

  // write(handle, byteOffset, typedArray)
  static napi_value Write(napi_env env, napi_callback_info info) {
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
    size_t n = length * typed_array_element_bytes(type);
    if (offset + n > b->bytes) return throw_error(env, "write: out of bounds");
    Device::copy_in(env, static_cast<char*>(b->data) + offset, data, n);
    return nullptr;
  }

  // read(handle, byteOffset, byteLength) -> ArrayBuffer (a copy, after queued work)
  static napi_value Read(napi_env env, napi_callback_info info) {
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
    if (!Device::copy_out(env, out, static_cast<char*>(b->data) + offset, n)) return nullptr;
    return ab;
  }

  // kernelNames() -> string[]; kernel ids are indices into this list
  static napi_value KernelNames(napi_env env, napi_callback_info) {
    auto& reg = kernel_registry();
    napi_value arr;
    CHECK(napi_create_array_with_length(env, reg.size(), &arr));
    for (size_t i = 0; i < reg.size(); ++i) {
      napi_value s;
      CHECK(napi_create_string_utf8(env, reg[i].name, NAPI_AUTO_LENGTH, &s));
      CHECK(napi_set_element(env, arr, static_cast<uint32_t>(i), s));
    }
    return arr;
  }

  // run(id, buffers: handle[], byteOffsets: number[], ints: number[], floats: number[][, profileKey])
  static napi_value Run(napi_env env, napi_callback_info info) {
    size_t argc = 6;
    napi_value argv[6];
    CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
    auto& reg = kernel_registry();
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
    if constexpr (profiles_launches<Device>::value) {
      Device::profile_begin(env, argc > 5 ? argv[5] : nullptr, id);
      reg[id].fn(args);
      Device::profile_end();
    } else {
      reg[id].fn(args);
    }
    if (!args.error.empty()) return throw_error(env, std::string(reg[id].name) + ": " + args.error);
    Device::after_run(env, reg[id].name);
    return nullptr;
  }

  static napi_value LiveBytes(napi_env env, napi_callback_info) { return number(env, static_cast<double>(live_bytes().load())); }
  static napi_value PeakBytes(napi_env env, napi_callback_info) { return number(env, static_cast<double>(peak_bytes().load())); }
  static napi_value CachedBytes(napi_env env, napi_callback_info) { return number(env, static_cast<double>(cached_bytes())); }

  // resetPeak(): the high-water mark starts again from the bytes live now.
  static napi_value ResetPeak(napi_env, napi_callback_info) {
    peak_bytes() = live_bytes().load();
    return nullptr;
  }

  static napi_value EmptyCache(napi_env, napi_callback_info) {
    release_cache();
    return nullptr;
  }

  // Defines the shared entry points and the addon's own (`extra`) on exports.
  static napi_value define(napi_env env, napi_value exports, std::vector<napi_property_descriptor> extra) {
    const std::pair<const char*, napi_callback> shared[] = {
        {"alloc", Alloc}, {"free", Free}, {"write", Write}, {"read", Read}, {"kernelNames", KernelNames}, {"run", Run},
        {"liveBytes", LiveBytes}, {"peakBytes", PeakBytes}, {"resetPeak", ResetPeak}, {"cachedBytes", CachedBytes},
        {"emptyCache", EmptyCache},
    };
    for (const auto& [name, fn] : shared) extra.push_back({name, nullptr, fn, nullptr, nullptr, nullptr, napi_default, nullptr});
    napi_define_properties(env, exports, extra.size(), extra.data());
    return exports;
  }

  static napi_value number(napi_env env, double x) {
    napi_value v;
    CHECK(napi_create_double(env, x, &v));
    return v;
  }

#undef CHECK

 private:
  // The block size a request is served from.
  static size_t size_class(size_t n) {
    const size_t unit = Device::class_unit(n);
    return ((n == 0 ? 1 : n) + unit - 1) / unit * unit;
  }

  static size_t cache_limit() {
    static const size_t limit = [] {
      const char* env = std::getenv(Device::kCacheEnv);
      if (env == nullptr) return Device::kCacheDefault;
      const double mb = std::atof(env);
      return static_cast<size_t>(mb < 0 ? 0 : mb * 1048576.0);
    }();
    return limit;
  }

  struct Slot {
    void* data = nullptr;
    size_t bytes = 0;
    uint32_t generation = 0;
  };
  static constexpr uint32_t kSlots = 16777216u;  // 2^24

  // Function-local statics: one instance per addon, defined in the header.
  static std::vector<Slot>& slots() { static std::vector<Slot> v; return v; }
  static std::vector<uint32_t>& free_slots() { static std::vector<uint32_t> v; return v; }
  static std::atomic<int64_t>& live_bytes() { static std::atomic<int64_t> v{0}; return v; }
  // The high-water mark of live_bytes since the last resetPeak(): what a step or a load
  // needed at its worst, which sampling liveBytes() between calls would miss.
  static std::atomic<int64_t>& peak_bytes() { static std::atomic<int64_t> v{0}; return v; }
  static std::unordered_map<size_t, std::vector<void*>>& cache() { static std::unordered_map<size_t, std::vector<void*>> m; return m; }
  static size_t& cached_bytes() { static size_t v = 0; return v; }

  // The live slot a handle names, or nullptr when it was freed (or never existed).
  static Slot* get_slot(napi_env env, napi_value v) {
    double h = get_number(env, v);
    if (!(h >= 0)) return nullptr;
    uint64_t handle = static_cast<uint64_t>(h);
    uint64_t index = handle % kSlots;
    uint64_t generation = handle / kSlots;
    if (index >= slots().size()) return nullptr;
    Slot& s = slots()[index];
    if (s.data == nullptr || s.generation != generation) return nullptr;
    return &s;
  }

  static void release_cache() {
    if (cache().empty()) return;
    Device::settle();
    for (auto& [c, blocks] : cache())
      for (void* b : blocks) Device::deallocate(b);
    cache().clear();
    cached_bytes() = 0;
  }

  static void* take_block(size_t cls) {
    auto it = cache().find(cls);
    if (it != cache().end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      cached_bytes() -= cls;
      return p;
    }
    void* p = Device::allocate(cls);
    if (p == nullptr && cached_bytes() > 0) {  // memory is tight: give the cache back and retry
      release_cache();
      p = Device::allocate(cls);
    }
    return p;
  }

  static void return_block(void* p, size_t cls) {
    if (cached_bytes() + cls > cache_limit()) {
      Device::settle();  // queued work may still use it
      Device::deallocate(p);
      return;
    }
    cache()[cls].push_back(p);
    cached_bytes() += cls;
  }
};

}  // namespace addon
}  // namespace finlora
