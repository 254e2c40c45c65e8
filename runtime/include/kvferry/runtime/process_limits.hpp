// Limits of the process itself that kvferry raises at start.
#pragma once

#include <cstdint>
#include <string>

namespace kvferry::runtime {

// Raises the open-files soft limit (RLIMIT_NOFILE) to the hard limit, as the
// directory and every worker do at start: each peer, client and half-open
// connection is a descriptor, and at a soft limit of 1024 (or 256) a few
// hundred stray connections make a CAF listener stop accepting
// (docs/deploy.md, "Open files"). Logs the change at info, as `who`.
// Returns the soft limit in force afterwards.
std::uint64_t raise_open_files_limit(const std::string& who);

} // namespace kvferry::runtime
