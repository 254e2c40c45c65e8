// Misbehaving v7 plugins for the loader's tests, one shared library per
// KVFERRY_BAD_PLUGIN_KIND (set at compile time by tests/transport.cmake):
//   1: init calls exit(1)    (as GPUDirect-TCPX does without CUDA)
//   2: init dereferences NULL (a crash)
//   3: exports only ncclNetPlugin_v8 (a newer ABI, no v7 table)
//   4: init never returns     (a hang the probe must time out)
#include <cstdlib>
#include <unistd.h>

#include "kvferry/transport/net_v7.h"

namespace {
#if KVFERRY_BAD_PLUGIN_KIND == 1
ncclResult_t bad_init(ncclDebugLogger_t) {
  std::exit(1);
}
#elif KVFERRY_BAD_PLUGIN_KIND == 2
volatile int* volatile nowhere = nullptr;
ncclResult_t bad_init(ncclDebugLogger_t) {
  *nowhere = 42;
  return ncclSuccess;
}
#else
ncclResult_t bad_init(ncclDebugLogger_t) {
  for (;;)
    ::pause();
}
#endif
ncclResult_t bad_devices(int* n) {
  *n = 1;
  return ncclSuccess;
}
} // namespace

#if KVFERRY_BAD_PLUGIN_KIND == 3
extern "C" __attribute__((visibility("default")))
const ncclNet_v7_t ncclNetPlugin_v8 = {
    "newer", bad_init, bad_devices, nullptr, nullptr, nullptr, nullptr,
    nullptr, nullptr,  nullptr,     nullptr, nullptr, nullptr, nullptr,
    nullptr, nullptr,  nullptr,     nullptr, nullptr};
#else
extern "C" __attribute__((visibility("default")))
const ncclNet_v7_t ncclNetPlugin_v7 = {
    "bad",   bad_init, bad_devices, nullptr, nullptr, nullptr, nullptr,
    nullptr, nullptr,  nullptr,     nullptr, nullptr, nullptr, nullptr,
    nullptr, nullptr,  nullptr,     nullptr, nullptr};
#endif
