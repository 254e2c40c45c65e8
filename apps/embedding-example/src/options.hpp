// The command line of the two servers:
//   kvferry-embedding-example prefill [--port P] [--port-file F] ...
//   kvferry-embedding-example decode --peer HOST:P --trace FILE ...
// plus the KV geometry both must share. `--help` lists every option.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "paged_cache.hpp"

namespace example {

struct common_options {
  kv_geometry geometry;
  std::string gpu = "auto"; // auto | none | <device>
  std::string name;         // the node's name; default role-<pid>
  std::chrono::milliseconds timeout{10000};
};

struct prefill_options : common_options {
  std::string bind = "127.0.0.1";
  std::uint16_t port = 0;
  std::string port_file; // where to write the port once listening
  std::chrono::milliseconds accept_timeout{60000};
  /// The modelled model's prefill rate (tokens/s, all layers); 0: none.
  double prefill_tokens_per_s = 0;
};

struct decode_options : common_options {
  std::string peer_host;
  std::uint16_t peer_port = 0;
  std::string trace;
  std::uint64_t requests = 200;
  double time_scale = 0.1;
  std::uint64_t max_prompt_blocks = 0; // 0: a quarter of the cache
  std::chrono::microseconds decode_step{200};
  std::uint64_t max_decode_steps = 16;
};

/// Throws std::invalid_argument naming the option at fault. `argv[0]` is
/// the program, `argv[1]` the role.
prefill_options parse_prefill(int argc, char** argv);
decode_options parse_decode(int argc, char** argv);
std::string usage();

/// -1 for host memory, else the CUDA device: "auto" is GPU 0 when there
/// is one. Throws std::invalid_argument for a device that is not there.
int choose_gpu(const std::string& gpu);

} // namespace example
