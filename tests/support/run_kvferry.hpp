// Runs the kvferry binary the way a user does, for the end-to-end tests:
// under a hard deadline (coreutils `timeout`, so nothing can hang a test),
// with stdout and stderr captured together.
#pragma once

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>
#include <sys/wait.h>

#include <doctest/doctest.h>

namespace kvferry::test {

struct run_result {
  int status = -1; // the exit code; -1 when killed by a signal
  std::string output;
};

/// bin/kvferry next to this test's folder: build/tests -> build/bin in the
/// build tree, .bundle/tests -> .bundle/bin in the device bundle; else the
/// build tree this test was configured in.
inline std::string kvferry_binary() {
  auto here = std::filesystem::read_symlink("/proc/self/exe").parent_path();
  auto sibling = here.parent_path() / "bin" / "kvferry";
  if (std::filesystem::exists(sibling))
    return sibling.string();
  return KVFERRY_BINARY_DIR "/bin/kvferry";
}

/// `env` (e.g. "KVSOCK_FAULT_CORRUPT=1") reaches kvferry and every process
/// it starts.
inline run_result run_kvferry(const std::string& args, int timeout_s,
                              const std::string& env = "") {
  auto command = "env " + env + " timeout -k 5 " + std::to_string(timeout_s) +
                 " " + kvferry_binary() + " " + args + " 2>&1";
  run_result r;
  FILE* pipe = ::popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::array<char, 4096> buf;
  while (auto n = std::fread(buf.data(), 1, buf.size(), pipe))
    r.output.append(buf.data(), n);
  int raw = ::pclose(pipe);
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return r;
}

/// The pipe directory that `kvferry demo` printed for its private MPS daemon
/// ("started a private MPS daemon for <who> (pipe directory <dir>); ..."),
/// requiring that line.
inline std::string private_mps_pipe(const std::string& output,
                                    const std::string& who) {
  const std::string started =
      "started a private MPS daemon for " + who + " (pipe directory ";
  auto at = output.find(started);
  REQUIRE(at != std::string::npos);
  auto begin = at + started.size();
  return output.substr(begin, output.find(')', begin) - begin);
}

} // namespace kvferry::test
