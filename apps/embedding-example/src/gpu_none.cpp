// A kvferry built without CUDA: the stack runs on host memory only.
#include <stdexcept>

#include "gpu.hpp"

namespace example {

namespace {
[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "this build has no CUDA (kvferry was built without it)");
}
} // namespace

int gpu_count() {
  return 0;
}
void* gpu_alloc(int, std::size_t) {
  return nullptr;
}
void gpu_free(int, void*) noexcept {
}

struct gpu_model::request_state {};
gpu_model::gpu_model(int gpu, gpu_cache_view cache)
    : gpu_(gpu), cache_(std::move(cache)) {
  no_cuda();
}
gpu_model::~gpu_model() = default;
void gpu_model::begin(std::uint64_t, const std::vector<std::uint64_t>&) {
  no_cuda();
}
void* gpu_model::write_layer(std::uint64_t, std::uint32_t) {
  no_cuda();
}
std::int64_t gpu_model::end(std::uint64_t) {
  no_cuda();
}
std::string gpu_model::verify(std::uint64_t, const std::vector<std::uint64_t>&,
                              std::chrono::milliseconds) {
  no_cuda();
}

} // namespace example
