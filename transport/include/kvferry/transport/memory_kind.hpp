// Where a region's bytes live: one enum for the transport (regions, the copy
// engine), the actors and the directory's metadata, which carries it between
// processes as its one-byte value (so: append only).
#pragma once

#include <cstdint>

namespace kvferry::transport {

enum class memory_kind : std::uint8_t { host = 0, cuda = 1 };

/// "host" or "cuda".
inline const char* to_string(memory_kind kind) {
  return kind == memory_kind::cuda ? "cuda" : "host";
}

} // namespace kvferry::transport
