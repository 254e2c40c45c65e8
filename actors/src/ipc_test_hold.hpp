// A test hook for the CUDA IPC quarantine (tests/gpu/ipc_quarantine_test.cpp):
// with KVFERRY_IPC_TEST_HOLD=<file> in its environment, a sending transfer
// actor puts a host function in front of every IPC copy on its engine's
// stream that waits while <file> exists (at most 120 s). The copy kernel is
// then launched but held back, as on a hung GPU, until the test deletes the
// file. Unset (always, outside that test): nothing is added.
#pragma once

#include <string>

namespace kvferry::detail {

/// The hold file, or empty when the hook is off.
std::string ipc_test_hold_file();

/// Enqueues the wait on `stream` (a cudaStream_t). Throws gpu_error when
/// CUDA refuses, and in a build without CUDA.
void hold_stream_for_test(void* stream, const std::string& file);

} // namespace kvferry::detail
