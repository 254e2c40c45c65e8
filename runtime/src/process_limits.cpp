#include "kvferry/runtime/process_limits.hpp"

#include <cerrno>
#include <cstring>
#include <sys/resource.h>

#include <spdlog/spdlog.h>

namespace kvferry::runtime {

std::uint64_t raise_open_files_limit(const std::string& who) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0)
    return 0;
  auto before = limit.rlim_cur;
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) {
      spdlog::warn("{}: cannot raise the open-files limit from {} to {}: {}",
                   who, before, limit.rlim_max, std::strerror(errno));
      return before;
    }
  }
  spdlog::info("{}: open-files limit {} (soft was {}, hard {})", who,
               limit.rlim_cur, before, limit.rlim_max);
  return limit.rlim_cur;
}

} // namespace kvferry::runtime
