#!/usr/bin/env bash
# Builds the CUDA backend's addon, build/Release/finlora_cuda.node, with nvcc: every
# kernels/*.cu plus runtime.cu and the N-API binding, linked against cuBLAS, cuBLASLt and the
# static CUDA runtime. Run through `npm run build:cuda` on a machine with nvcc and the
# cuBLAS headers; `npm install` never calls it, so machines without CUDA are unaffected.
#
# Environment:
#   NVCC                  the compiler (default: nvcc on PATH, else $CUDA_HOME/bin/nvcc)
#   CUDA_HOME             toolkit root (default: the directory above nvcc's bin/)
#   FINLORA_CUDA_ARCH     compute capability to build machine code for (default 90, the
#                         H100/H200); PTX for it is embedded too, so newer GPUs JIT it
#   FINLORA_NODE_INCLUDE  directory holding node_api.h (default: found beside node, in
#                         node-gyp's cache or in /usr/include/node)
#   FINLORA_CUDA_JOBS     parallel compiles (default: the number of cores)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

nvcc_bin="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$nvcc_bin" && -n "${CUDA_HOME:-}" ]]; then nvcc_bin="$CUDA_HOME/bin/nvcc"; fi
if [[ -z "$nvcc_bin" || ! -x "$nvcc_bin" ]]; then
  echo "build:cuda: nvcc not found (set NVCC or CUDA_HOME); the CUDA backend needs the CUDA toolkit" >&2
  exit 1
fi
cuda_home="${CUDA_HOME:-$(cd "$(dirname "$(readlink -f "$nvcc_bin")")/.." && pwd)}"

# cuBLAS: the toolkit's own headers, else the pip wheel's (nvidia-cublas).
cublas_inc="" cublas_lib=""
for d in "$cuda_home/include" "$cuda_home/targets/x86_64-linux/include" /usr/include; do
  if [[ -f "$d/cublas_v2.h" ]]; then cublas_inc="$d"; break; fi
done
if [[ -z "$cublas_inc" ]] && command -v python3 >/dev/null; then
  wheel="$(python3 -c 'import nvidia.cublas, os; print(os.path.dirname(nvidia.cublas.__file__))' 2>/dev/null || true)"
  if [[ -n "$wheel" && -f "$wheel/include/cublas_v2.h" ]]; then cublas_inc="$wheel/include"; cublas_lib="$wheel/lib"; fi
fi
if [[ -z "$cublas_inc" ]]; then
  echo "build:cuda: cublas_v2.h not found under $cuda_home/include (install cuBLAS's development files)" >&2
  exit 1
fi

node_inc="${FINLORA_NODE_INCLUDE:-}"
if [[ -z "$node_inc" ]]; then
  candidates=()
  if command -v node >/dev/null; then
    candidates+=("$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")/include/node")
    candidates+=("$HOME/.cache/node-gyp/$(node -p 'process.versions.node')/include/node")
  fi
  candidates+=(/usr/include/node /usr/local/include/node)
  for d in "${candidates[@]}"; do
    if [[ -f "$d/node_api.h" ]]; then node_inc="$d"; break; fi
  done
fi
if [[ -z "$node_inc" || ! -f "$node_inc/node_api.h" ]]; then
  echo "build:cuda: node_api.h not found (set FINLORA_NODE_INCLUDE)" >&2
  exit 1
fi

arch="${FINLORA_CUDA_ARCH:-90}"
jobs="${FINLORA_CUDA_JOBS:-$(nproc)}"
obj="build/cuda-obj"
mkdir -p "$obj" build/Release

flags=(-std=c++17 -O3 -Xcompiler -fPIC -Xcompiler -Wall -Inative/cuda -Inative/common -I"$cublas_inc" -I"$node_inc"
       -DNAPI_VERSION=8 --expt-relaxed-constexpr
       "-gencode=arch=compute_$arch,code=sm_$arch" "-gencode=arch=compute_$arch,code=compute_$arch")

sources=(native/cuda/binding.cc native/cuda/runtime.cu $(find native/cuda/kernels -name '*.cu' | sort))
printf '%s\n' "${sources[@]}" | xargs -P "$jobs" -I{} sh -c \
  'src="$1"; shift; out="'"$obj"'/$(echo "$src" | tr / _).o"; echo "nvcc $src"; "$@" -c "$src" -o "$out"' _ {} "$nvcc_bin" "${flags[@]}"

objects=()
for s in "${sources[@]}"; do objects+=("$obj/$(echo "$s" | tr / _).o"); done
libdirs=(-L"$cuda_home/lib64" -L"$cuda_home/targets/x86_64-linux/lib")
rpath=()
if [[ -n "$cublas_lib" ]]; then libdirs+=(-L"$cublas_lib"); rpath=(-Xlinker -rpath -Xlinker "$cublas_lib"); fi
"$nvcc_bin" -shared "-gencode=arch=compute_$arch,code=sm_$arch" -o build/Release/finlora_cuda.node "${objects[@]}" \
  "${libdirs[@]}" "${rpath[@]}" -lcublasLt -lcublas -cudart static
echo "build:cuda: built build/Release/finlora_cuda.node (sm_$arch + PTX)"
