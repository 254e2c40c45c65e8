// KVFERRY_HOST_DEVICE marks the inline functions that a CUDA kernel and the
// host share (a copy plan's item lookup, the demo's stamp): nvcc compiles
// them for both; a plain C++ compiler sees ordinary inline functions.
#pragma once

#if defined(__CUDACC__)
#define KVFERRY_HOST_DEVICE __host__ __device__
#else
#define KVFERRY_HOST_DEVICE
#endif
