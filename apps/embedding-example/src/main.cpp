// kvferry-embedding-example: a two-process miniature serving stack on
// kvferry::node (docs/embedding.md, "The example"):
//   kvferry-embedding-example prefill --port 7000
//   kvferry-embedding-example decode --peer 127.0.0.1:7000 --trace FILE
// Exit status: 0 when every request was verified; 1 when the run failed (the
// error names the request or peer at fault); 2 for a wrong command line.
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "server.hpp"

int main(int argc, char** argv) {
  const std::string role = argc > 1 ? argv[1] : "";
  if (role == "--help" || role == "-h" || role == "help") {
    std::printf("%s", example::usage().c_str());
    return 0;
  }
  try {
    if (role == "prefill")
      return example::run_prefill(example::parse_prefill(argc, argv));
    if (role == "decode")
      return example::run_decode(example::parse_decode(argc, argv));
    throw std::invalid_argument(role.empty() ? "say prefill or decode"
                                             : "unknown role '" + role + "'");
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "kvferry-embedding-example: %s\n\n%s", e.what(),
                 example::usage().c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvferry-embedding-example %s: error: %s\n",
                 role.c_str(), e.what());
    return 1;
  }
}
