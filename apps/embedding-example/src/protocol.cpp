#include "protocol.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "paged_cache.hpp"

namespace example {

std::string format_message(const std::string& verb,
                           const std::vector<std::uint64_t>& numbers,
                           const std::string& text) {
  std::string out = verb;
  for (auto n : numbers)
    out += " " + std::to_string(n);
  if (!text.empty())
    out += " " + text;
  return out;
}

std::optional<message> parse_message(const std::string& line) {
  message m;
  std::size_t at = 0;
  auto word = [&] {
    while (at < line.size() && line[at] == ' ')
      ++at;
    auto end = line.find(' ', at);
    return line.substr(at, end == std::string::npos ? end : end - at);
  };
  m.verb = word();
  if (m.verb.empty())
    return std::nullopt;
  at += m.verb.size();
  for (;;) {
    auto w = word();
    if (w.empty() || !std::all_of(w.begin(), w.end(), [](unsigned char c) {
          return std::isdigit(c);
        }))
      break;
    m.numbers.push_back(std::strtoull(w.c_str(), nullptr, 10));
    at += w.size();
  }
  m.text = at < line.size() ? line.substr(at) : std::string{};
  return m;
}

std::string hello(const kv_geometry& g) {
  return format_message("hello",
                        {g.layers, g.blocks, g.block_tokens, g.token_bytes});
}

std::string hello_mismatch(const message& m, const kv_geometry& mine) {
  if (m.numbers.size() != 4)
    return "a hello without the 4 numbers of a KV geometry: '" +
           format_message(m.verb, m.numbers, m.text) + "'";
  kv_geometry theirs;
  theirs.layers = static_cast<std::uint32_t>(m.numbers[0]);
  theirs.blocks = m.numbers[1];
  theirs.block_tokens = static_cast<std::uint32_t>(m.numbers[2]);
  theirs.token_bytes = m.numbers[3];
  // Cache sizes may differ; the shape of one block of one layer may not.
  if (theirs.layers == mine.layers &&
      theirs.block_tokens == mine.block_tokens &&
      theirs.token_bytes == mine.token_bytes)
    return {};
  return "KV geometry differs: decode " + theirs.describe() + ", prefill " +
         mine.describe();
}

} // namespace example
