// Byte sizes on the command line ("4K", "256M", "1.5G", "512B"; lists
// "4K,16K,64K"), shared by the benchmarks that take block sizes and totals.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvferry::app {

inline std::uint64_t parse_size(const std::string& text) {
  std::size_t used = 0;
  const double number = std::stod(text, &used);
  const std::string unit = text.substr(used);
  std::uint64_t scale = 1;
  if (unit == "K" || unit == "KiB" || unit == "k")
    scale = 1ull << 10;
  else if (unit == "M" || unit == "MiB")
    scale = 1ull << 20;
  else if (unit == "G" || unit == "GiB")
    scale = 1ull << 30;
  else if (!unit.empty() && unit != "B")
    throw std::invalid_argument("unknown size unit in '" + text + "'");
  return static_cast<std::uint64_t>(number * static_cast<double>(scale));
}

inline std::vector<std::uint64_t> parse_sizes(const std::string& list) {
  std::vector<std::uint64_t> sizes;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty())
      sizes.push_back(parse_size(item));
  return sizes;
}

} // namespace kvferry::app
