#include "options.hpp"

#include <cstdlib>
#include <functional>
#include <map>
#include <stdexcept>

#include "content.hpp"
#include "gpu.hpp"

namespace example {

namespace {

using setter = std::function<void(const std::string&)>;

std::uint64_t number(const std::string& option, const std::string& text) {
  char* end = nullptr;
  auto v = std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || text[0] == '-')
    throw std::invalid_argument(option + " " + text +
                                ": expected a whole number");
  return v;
}

double positive(const std::string& option, const std::string& text) {
  char* end = nullptr;
  auto v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(v > 0))
    throw std::invalid_argument(option + " " + text +
                                ": expected a positive number");
  return v;
}

std::map<std::string, setter> common_setters(common_options& o) {
  auto& g = o.geometry;
  return {
      {"--layers",
       [&](auto& v) {
         g.layers = static_cast<std::uint32_t>(number("--layers", v));
       }},
      {"--blocks", [&](auto& v) { g.blocks = number("--blocks", v); }},
      {"--block-tokens",
       [&](auto& v) {
         g.block_tokens =
             static_cast<std::uint32_t>(number("--block-tokens", v));
       }},
      {"--token-bytes",
       [&](auto& v) { g.token_bytes = number("--token-bytes", v); }},
      {"--gpu", [&](auto& v) { o.gpu = v; }},
      {"--name", [&](auto& v) { o.name = v; }},
      {"--timeout-ms",
       [&](auto& v) {
         o.timeout = std::chrono::milliseconds(number("--timeout-ms", v));
       }},
  };
}

void parse(int argc, char** argv, std::map<std::string, setter> setters) {
  for (int i = 2; i < argc; i += 2) {
    std::string option = argv[i];
    auto it = setters.find(option);
    if (it == setters.end())
      throw std::invalid_argument("unknown option " + option + " for " +
                                  argv[1]);
    if (i + 1 >= argc)
      throw std::invalid_argument(option + " needs a value");
    it->second(argv[i + 1]);
  }
}

void check_geometry(const common_options& o) {
  const auto& g = o.geometry;
  if (g.layers == 0 || g.blocks == 0 || g.block_tokens == 0)
    throw std::invalid_argument(
        "--layers, --blocks and --block-tokens must be positive");
  if (!whole_words(g.block_bytes()))
    throw std::invalid_argument(
        "--block-tokens x --token-bytes must be a multiple of 8 bytes (the "
        "model step writes 8-byte words), not " +
        std::to_string(g.block_bytes()));
}

} // namespace

prefill_options parse_prefill(int argc, char** argv) {
  prefill_options o;
  auto setters = common_setters(o);
  setters["--bind"] = [&](auto& v) { o.bind = v; };
  setters["--port"] = [&](auto& v) {
    auto p = number("--port", v);
    if (p > 65535)
      throw std::invalid_argument("--port " + v + ": not a port");
    o.port = static_cast<std::uint16_t>(p);
  };
  setters["--port-file"] = [&](auto& v) { o.port_file = v; };
  setters["--accept-timeout-ms"] = [&](auto& v) {
    o.accept_timeout =
        std::chrono::milliseconds(number("--accept-timeout-ms", v));
  };
  setters["--prefill-tokens-per-s"] = [&](auto& v) {
    o.prefill_tokens_per_s =
        v == "0" ? 0 : positive("--prefill-tokens-per-s", v);
  };
  parse(argc, argv, setters);
  check_geometry(o);
  return o;
}

decode_options parse_decode(int argc, char** argv) {
  decode_options o;
  auto setters = common_setters(o);
  setters["--peer"] = [&](auto& v) {
    auto colon = v.rfind(':');
    if (colon == std::string::npos || colon == 0)
      throw std::invalid_argument("--peer " + v + ": expected HOST:PORT");
    o.peer_host = v.substr(0, colon);
    auto p = number("--peer", v.substr(colon + 1));
    if (p == 0 || p > 65535)
      throw std::invalid_argument("--peer " + v + ": not a port");
    o.peer_port = static_cast<std::uint16_t>(p);
  };
  setters["--trace"] = [&](auto& v) { o.trace = v; };
  setters["--requests"] = [&](auto& v) {
    o.requests = number("--requests", v);
  };
  setters["--time-scale"] = [&](auto& v) {
    o.time_scale = positive("--time-scale", v);
  };
  setters["--max-prompt-blocks"] = [&](auto& v) {
    o.max_prompt_blocks = number("--max-prompt-blocks", v);
  };
  setters["--decode-step-us"] = [&](auto& v) {
    o.decode_step = std::chrono::microseconds(number("--decode-step-us", v));
  };
  setters["--max-decode-steps"] = [&](auto& v) {
    o.max_decode_steps = number("--max-decode-steps", v);
  };
  parse(argc, argv, setters);
  check_geometry(o);
  if (o.peer_host.empty())
    throw std::invalid_argument("decode needs --peer HOST:PORT (the prefill "
                                "server)");
  if (o.trace.empty())
    throw std::invalid_argument("decode needs --trace FILE (Mooncake JSONL "
                                "or Azure CSV)");
  if (o.max_prompt_blocks == 0)
    o.max_prompt_blocks = std::max<std::uint64_t>(1, o.geometry.blocks / 4);
  if (o.max_prompt_blocks > o.geometry.blocks)
    throw std::invalid_argument("--max-prompt-blocks " +
                                std::to_string(o.max_prompt_blocks) +
                                " is more than the cache's --blocks " +
                                std::to_string(o.geometry.blocks));
  return o;
}

std::string usage() {
  return R"(kvferry-embedding-example: a miniature disaggregated serving stack
on kvferry::node (docs/embedding.md, "The example").

  kvferry-embedding-example prefill [--port P] [--port-file F] [--bind ADDR]
      [--accept-timeout-ms MS] [--prefill-tokens-per-s R]
  kvferry-embedding-example decode --peer HOST:PORT --trace FILE
      [--requests N] [--time-scale X] [--max-prompt-blocks B]
      [--decode-step-us US] [--max-decode-steps S]

Both: [--layers 8] [--blocks 2048] [--block-tokens 16] [--token-bytes 512]
      (the KV of one token of one layer, K or V: kv_heads x head_dim x dtype)
      [--gpu auto|none|N] [--name NAME] [--timeout-ms 10000]

The prefill server serves one decode run and exits when it says bye.
--prefill-tokens-per-s models the prefill's compute: one request at a time,
each layer taking tokens / R / layers (default 0: only the stand-in's writes).
)";
}

int choose_gpu(const std::string& gpu) {
  if (gpu == "none")
    return -1;
  const int count = gpu_count();
  if (gpu == "auto")
    return count > 0 ? 0 : -1;
  auto n = number("--gpu", gpu);
  if (n >= static_cast<std::uint64_t>(count))
    throw std::invalid_argument("--gpu " + gpu + ": this machine has " +
                                std::to_string(count) + " CUDA device(s)");
  return static_cast<int>(n);
}

} // namespace example
