#include "ipc_test_hold.hpp"

#include <chrono>
#include <cstdlib>
#include <sys/stat.h>
#include <thread>

#ifdef KVFERRY_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#include "kvferry/transport/gpu_memory.hpp"

namespace kvferry::detail {

std::string ipc_test_hold_file() {
  const char* file = std::getenv("KVFERRY_IPC_TEST_HOLD");
  return file == nullptr ? std::string{} : std::string{file};
}

#ifdef KVFERRY_HAVE_CUDA
namespace {

// Runs on CUDA's callback thread; blocks the stream while the file exists.
void CUDART_CB wait_while_file_exists(void* arg) {
  auto* file = static_cast<std::string*>(arg);
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(120);
  struct stat info {};
  while (::stat(file->c_str(), &info) == 0 &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  delete file;
}

} // namespace

void hold_stream_for_test(void* stream, const std::string& file) {
  auto* arg = new std::string(file);
  auto rc = cudaLaunchHostFunc(static_cast<cudaStream_t>(stream),
                               wait_while_file_exists, arg);
  if (rc != cudaSuccess) {
    delete arg;
    throw transport::gpu_error(std::string{"KVFERRY_IPC_TEST_HOLD: "} +
                               cudaGetErrorString(rc));
  }
}
#else
void hold_stream_for_test(void*, const std::string&) {
  throw transport::gpu_error("KVFERRY_IPC_TEST_HOLD: this build of kvferry "
                             "has no CUDA support");
}
#endif

} // namespace kvferry::detail
