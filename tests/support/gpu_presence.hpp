// Whether a GPU test may skip (issue #19): only when this machine has no
// CUDA device at all. A GPU host whose driver is broken must fail its GPU
// tests, not report them skipped and pass.
//
// From cudaGetDeviceCount:
//   success, count > 0              -> run
//   success, count == 0             -> skip: no device
//   cudaErrorNoDevice               -> skip: no device (also what
//                                      CUDA_VISIBLE_DEVICES="" gives: the
//                                      user hid every device on purpose)
//   cudaErrorInsufficientDriver     -> skip only when no driver library
//                                      (libcuda.so.1) can be loaded at all,
//                                      i.e. a machine without the NVIDIA
//                                      driver; the same code with a driver
//                                      present means the driver is too old
//                                      for this runtime: fail
//   anything else                   -> fail, naming the CUDA error, e.g.
//                                      cudaErrorStubLibrary (the toolkit's
//                                      stub libcuda shadows the driver),
//                                      cudaErrorInitializationError,
//                                      cudaErrorDevicesUnavailable,
//                                      cudaErrorSystemDriverMismatch
// A build without CUDA skips: it cannot run a GPU test anywhere.
#pragma once

#include <cstdio>
#include <string>

#ifdef KVFERRY_HAVE_CUDA
#include <dlfcn.h>

#include <cuda_runtime_api.h>
#endif

namespace kvferry::test {

struct gpu_presence {
  enum class verdict { run, skip, fail };
  verdict what = verdict::skip;
  int devices = 0;
  std::string why; // for skip and fail
};

inline gpu_presence probe_gpus() {
  gpu_presence p;
#ifdef KVFERRY_HAVE_CUDA
  using verdict = gpu_presence::verdict;
  int count = 0;
  const auto err = cudaGetDeviceCount(&count);
  const std::string cuda = std::string{"cudaGetDeviceCount: "} +
                           cudaGetErrorName(err) + " (" +
                           cudaGetErrorString(err) + ")";
  if (err == cudaSuccess) {
    p.devices = count;
    p.what = count > 0 ? verdict::run : verdict::skip;
    p.why = count > 0 ? "" : "CUDA sees no devices";
  } else if (err == cudaErrorNoDevice) {
    p.why = "no CUDA device: " + cuda;
  } else if (err == cudaErrorInsufficientDriver &&
             ::dlopen("libcuda.so.1", RTLD_LAZY) == nullptr) {
    p.why = "no NVIDIA driver installed (libcuda.so.1 not found): " + cuda;
  } else {
    p.what = verdict::fail;
    p.why = "CUDA is present but broken: " + cuda;
  }
#else
  p.why = "this build has no CUDA support (no nvcc at configure time)";
#endif
  return p;
}

/// Exit status for a test main that cannot run: 77 (ctest: skipped) with
/// "SKIPPED: <reason>" on stdout, or 1 with "FAILED: <reason>" on stderr.
inline int skip_or_fail(const gpu_presence& p, const std::string& needs) {
  if (p.what == gpu_presence::verdict::fail) {
    std::fprintf(stderr, "FAILED: %s; %s\n", needs.c_str(), p.why.c_str());
    return 1;
  }
  std::printf("SKIPPED: %s: %s\n", needs.c_str(), p.why.c_str());
  return 77;
}

} // namespace kvferry::test
