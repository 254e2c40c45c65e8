// The host staging copier: memcpy at start(), so done() is always true. It
// carries the staging state machine through CI without a GPU; tests wrap it
// to complete copies late and out of order.
#include "kvferry/transport/staging.hpp"

#include <cstdlib>
#include <cstring>
#include <new>

namespace kvferry::transport {
namespace {

class host_staging_copier final : public staging_copier {
public:
  void open(int, const void*) override {}
  void* allocate_host(size_t bytes) override {
    void* memory = std::malloc(bytes);
    if (!memory)
      throw std::bad_alloc();
    return memory;
  }
  void free_host(void* memory) noexcept override { std::free(memory); }
  void start(int, void* destination, const void* source,
             size_t bytes) override {
    std::memcpy(destination, source, bytes);
  }
  bool done(int) override { return true; }
  void wait_all() noexcept override {}
};

} // namespace

std::unique_ptr<staging_copier> make_host_staging_copier() {
  return std::make_unique<host_staging_copier>();
}

} // namespace kvferry::transport
