#include "gpu_option.hpp"

#include <cctype>
#include <iostream>

#include <fmt/format.h>

#include "kvferry/transport/gpu_info.hpp"

namespace kvferry::app {
namespace {

bool is_ordinal(const std::string& value) {
  if (value.empty() || value.size() > 4)
    return false;
  for (char c : value)
    if (!std::isdigit(static_cast<unsigned char>(c)))
      return false;
  return true;
}

} // namespace

std::string check_gpu_option(const std::string& option,
                             const std::string& value) {
  if (value == "none" || value == "auto")
    return {};
  if (!is_ordinal(value))
    return fmt::format("{} '{}': expected a CUDA device ordinal, auto or none",
                       option, value);
#ifndef KVFERRY_HAVE_CUDA
  return fmt::format("{} {}: this build of kvferry has no CUDA support (built "
                     "without nvcc or with -DKVFERRY_CUDA=OFF); use {} none",
                     option, value, option);
#else
  return {};
#endif
}

int resolve_gpu(const std::string& value, const std::string& who) {
  if (value == "none")
    return -1;
  if (value != "auto")
    return std::stoi(value);
  auto inventory = transport::list_gpus();
  if (inventory.devices.empty()) {
    if (!who.empty())
      std::cerr << who << ": --gpu auto: no GPU (" << inventory.why_none
                << "), using host memory\n";
    return -1;
  }
  auto& first = inventory.devices.front();
  if (!who.empty())
    std::cerr << who << ": --gpu auto: using GPU " << first.index << " ("
              << first.name << ")\n";
  return first.index;
}

} // namespace kvferry::app
