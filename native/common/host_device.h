// FINLORA_HD marks a function of native/common/ that both addons compile: a host and
// device function under nvcc, a plain inline function under node-gyp.
#pragma once

#ifdef __CUDACC__
#define FINLORA_HD __host__ __device__
#else
#define FINLORA_HD
#endif
