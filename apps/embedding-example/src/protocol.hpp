// The few notifications the two servers exchange over kvferry::node's
// notify() (small, ordered per peer), as one line of text each:
//   decode -> prefill   hello <layers> <blocks> <block_tokens> <token_bytes>
//   prefill -> decode   hello-ok | hello-refused <why>
//   decode -> prefill   prefill <id> <tokens> <blocks>
//   prefill -> decode   prefilled <id> <queue_ns> <compute_ns>
//                       failed <id> <why>
//   decode -> prefill   bye
// The bytes never travel here: the decode side pulls them (node::pull).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace example {

struct kv_geometry;

struct message {
  std::string verb;
  std::vector<std::uint64_t> numbers; // the leading numeric fields
  std::string text;                   // the rest of the line (a reason)
};

/// "verb n1 n2 ... text".
std::string format_message(const std::string& verb,
                           const std::vector<std::uint64_t>& numbers,
                           const std::string& text = {});
/// Nothing when the line is empty.
std::optional<message> parse_message(const std::string& line);

std::string hello(const kv_geometry& g);
/// "" when the hello's geometry equals `mine`, else what differs.
std::string hello_mismatch(const message& hello, const kv_geometry& mine);

} // namespace example
