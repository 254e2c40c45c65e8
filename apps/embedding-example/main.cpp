// Embedding kvferry in your own C++ serving stack: link kvferry::kvferry.
#include <cstdio>

#include "kvferry/runtime/version.hpp"
#include "kvferry/transport/gpu_info.hpp"

int main() {
  auto gpus = kvferry::transport::list_gpus();
  std::printf("embedded kvferry %s; %zu CUDA device(s)\n", kvferry::version,
              gpus.devices.size());
  return 0;
}
