// The --gpu option of `kvferry worker` and `kvferry demo`: a CUDA device
// ordinal, auto or none, checked the same way by both.
#pragma once

#include <string>

namespace kvferry::app {

/// Empty when `value` is none, auto or an ordinal this build can use; else
/// the message naming `option` (an ordinal in a build without CUDA is an
/// error here, before anything starts).
std::string check_gpu_option(const std::string& option,
                             const std::string& value);

/// The device to allocate on: -1 for host memory. auto picks GPU 0 when CUDA
/// sees one and says which it chose (on stderr, prefixed with `who`; empty
/// `who`: says nothing, as a demo under its parent's daemon, which said it).
int resolve_gpu(const std::string& value, const std::string& who);

} // namespace kvferry::app
