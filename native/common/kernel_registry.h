// The contract between a native addon's binding (the only file of the addon that
// touches N-API, through native/common/addon.h) and its kernels, the same for the CPU
// and the CUDA addon: a kernel is a plain host function that registers itself by name
// with FINLORA_KERNEL, so adding a kernel never edits a binding.
//
// Calling convention (KernelArgs):
//   ptrs   - one pointer per buffer operand (device pointers in the CUDA addon),
//            already advanced by the view's offset
//   ints   - shapes, strides (in elements), dtype codes, flags; the layout of each
//            kernel is documented at its registration and defined once for both
//            addons in src/backend/native_kernels.ts
//   floats - scalar attributes (eps, scale, alpha, ...)
// Accumulation rule: parameter-gradient kernels say so when they accumulate (+=);
// every other kernel overwrites its output (=).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace finlora {

struct KernelArgs {
  std::vector<void*> ptrs;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  // A kernel that meets bad data (an id out of range, say) sets this instead of
  // crashing or launching; the binding turns it into a JS exception naming the kernel.
  mutable std::string error;
};

using KernelFn = void (*)(const KernelArgs&);

struct KernelEntry {
  const char* name;
  KernelFn fn;
};

// The addon's kernels, in registration order (each addon's runtime defines it).
std::vector<KernelEntry>& kernel_registry();

struct RegisterKernel {
  RegisterKernel(const char* name, KernelFn fn) { kernel_registry().push_back({name, fn}); }
};

#define FINLORA_CONCAT_INNER(a, b) a##b
#define FINLORA_CONCAT(a, b) FINLORA_CONCAT_INNER(a, b)
#define FINLORA_KERNEL(name, fn) \
  static ::finlora::RegisterKernel FINLORA_CONCAT(finlora_reg_, __LINE__)(name, fn);

// dtype codes, shared with src/tensor/dtype.ts
enum DType : int64_t { F32 = 0, BF16 = 1, F16 = 2, I8 = 3, U8 = 4, I32 = 5 };

}  // namespace finlora
