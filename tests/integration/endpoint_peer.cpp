// kvferry::endpoint (C++) as one side of the endpoint peer exchange
// (tests/integration/endpoint_peers.sh), the protocol of endpoint_peer.c:
//
//   endpoint_peer_cpp server DIR | client DIR
//
// and the teardown exchange (docs/engine-api.md, "Semantics": an endpoint
// may go as soon as its sends completed):
//
//   endpoint_peer_cpp teardown-server DIR N | teardown-client DIR N
//
// where the client, N times, creates an endpoint, connects, sends, waits and
// destroys it at once (no goodbye), and the server receives every send.
//
// Exit 0 when every byte matched.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "kvferry/endpoint.hpp"

using namespace kvferry;

namespace {

constexpr std::size_t write_bytes = 1u << 20;
constexpr std::size_t send_bytes = 256u << 10;
constexpr auto limit = std::chrono::milliseconds(20000);

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "%s\n", what.c_str());
  std::exit(1);
}

template<class T>
T must(result<T> r, const char* what) {
  if (!r.ok())
    die(std::string{what} + ": " + r.error().message());
  return std::move(r).value();
}

void must(const status& s, const char* what) {
  if (!s.ok())
    die(std::string{what} + ": " + s.message());
}

std::vector<std::uint8_t> pattern(std::size_t n, unsigned seed) {
  std::vector<std::uint8_t> out(n);
  for (std::size_t i = 0; i < n; ++i)
    out[i] = static_cast<std::uint8_t>(i * 7u + seed * 31u + i / 4093u);
  return out;
}

notification take(endpoint& ep) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    auto notes = ep.take_notifications();
    if (!notes.empty())
      return notes.front();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  die("no notification in time");
}

void serve(endpoint& ep, conn_id conn) {
  std::vector<std::uint8_t> target(write_bytes), inbox(send_bytes);
  auto tr = must(ep.reg(target.data(), target.size()), "reg");
  auto ir = must(ep.reg(inbox.data(), inbox.size()), "reg");
  auto recv_id = must(ep.recv(conn, {{ir, 0, send_bytes}}), "recv");
  auto desc = must(ep.advertise(tr, 0, write_bytes), "advertise").to_bytes();
  must(ep.notify(conn, {desc.data(), desc.size()}), "notify");
  if (must(ep.wait(recv_id, limit), "wait recv") != send_bytes ||
      inbox != pattern(send_bytes, 2))
    die("server: the two-sided bytes differ");
  auto done = take(ep).bytes;
  if (std::string(done.begin(), done.end()) != "done")
    die("server: expected the notification 'done'");
  if (target != pattern(write_bytes, 1))
    die("server: the one-sided bytes differ");
  std::printf("server: verified %zu + %zu bytes\n", write_bytes, send_bytes);
}

void visit(endpoint& ep, conn_id conn) {
  auto mine = pattern(write_bytes, 1), out = pattern(send_bytes, 2);
  std::vector<std::uint8_t> back(write_bytes);
  auto blob = take(ep).bytes;
  auto desc = must(descriptor::parse(blob.data(), blob.size()), "descriptor");
  auto mr = must(ep.reg(mine.data(), mine.size()), "reg");
  auto br = must(ep.reg(back.data(), back.size()), "reg");
  auto orr = must(ep.reg(out.data(), out.size()), "reg");
  must(ep.wait(must(ep.write(conn, {{mr, 0, write_bytes}}, desc), "write"),
               limit),
       "wait write");
  must(
      ep.wait(must(ep.read(conn, {{br, 0, write_bytes}}, desc), "read"), limit),
      "wait read");
  if (back != mine)
    die("client: the bytes read back differ");
  must(ep.wait(must(ep.send(conn, {{orr, 0, send_bytes}}), "send"), limit),
       "wait send");
  // No goodbye: the send is done once it landed, so the client may go.
  std::vector<std::uint8_t> done{'d', 'o', 'n', 'e'};
  must(ep.notify(conn, done), "notify");
  std::printf("client: wrote, read back and sent %zu + %zu bytes\n",
              write_bytes, send_bytes);
}

void publish(const endpoint& ep, const std::string& meta) {
  auto blob = ep.metadata();
  {
    std::ofstream f(meta + ".tmp", std::ios::binary);
    f.write(reinterpret_cast<const char*>(blob.data()),
            static_cast<std::streamsize>(blob.size()));
  }
  std::rename((meta + ".tmp").c_str(), meta.c_str());
}

std::vector<std::uint8_t> wait_for_metadata(const std::string& meta) {
  auto until = std::chrono::steady_clock::now() + limit;
  std::ifstream f;
  while (std::chrono::steady_clock::now() < until) {
    f.open(meta, std::ios::binary);
    if (f)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (!f)
    die("client: no " + meta + " in time");
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// Round r's send: its size and bytes vary with r.
std::size_t teardown_bytes(int r) {
  return (std::size_t{64} << 10) + static_cast<std::size_t>(r) * 4099u;
}

void teardown_server(endpoint& ep, int rounds) {
  std::vector<std::uint8_t> inbox(teardown_bytes(rounds));
  auto ir = must(ep.reg(inbox.data(), inbox.size()), "reg");
  for (int r = 0; r < rounds; ++r) {
    auto conn = must(ep.accept(limit), "accept");
    auto n = must(
        ep.wait(must(ep.recv(conn, {{ir, 0, inbox.size()}}), "recv"), limit),
        "wait recv");
    auto want = pattern(teardown_bytes(r), static_cast<unsigned>(r));
    if (n != want.size() ||
        !std::equal(want.begin(), want.end(), inbox.begin()))
      die("server: round " + std::to_string(r) + ": the bytes differ");
  }
  std::printf("server: verified %d sends from endpoints destroyed at once\n",
              rounds);
}

void teardown_client(const std::vector<std::uint8_t>& meta, int rounds) {
  for (int r = 0; r < rounds; ++r) {
    endpoint_options o;
    o.name = "cpp-teardown-client-" + std::to_string(r);
    auto ep = must(endpoint::create(o), "create");
    auto conn = must(ep.connect(meta), "connect");
    auto out = pattern(teardown_bytes(r), static_cast<unsigned>(r));
    auto orr = must(ep.reg(out.data(), out.size()), "reg");
    must(ep.wait(must(ep.send(conn, {{orr, 0, out.size()}}), "send"), limit),
         "wait send");
  } // destroyed right after its send completed
  std::printf("client: sent %d rounds, each endpoint destroyed at once\n",
              rounds);
}

} // namespace

int main(int argc, char** argv) {
  std::string role = argc > 1 ? argv[1] : "";
  bool teardown = role.rfind("teardown-", 0) == 0;
  if (argc != (teardown ? 4 : 3) ||
      (role != "server" && role != "client" && role != "teardown-server" &&
       role != "teardown-client")) {
    std::fprintf(stderr,
                 "usage: %s server DIR | client DIR | teardown-server DIR N "
                 "| teardown-client DIR N\n",
                 argv[0]);
    return 2;
  }
  std::string meta = std::string{argv[2]} + "/meta";
  int rounds = teardown ? std::atoi(argv[3]) : 0;
  if (role == "teardown-client") {
    teardown_client(wait_for_metadata(meta), rounds);
    return 0;
  }
  endpoint_options o;
  o.name = "cpp-" + role;
  auto ep = must(endpoint::create(o), "create");
  if (role == "server" || role == "teardown-server") {
    publish(ep, meta);
    if (teardown)
      teardown_server(ep, rounds);
    else
      serve(ep, must(ep.accept(limit), "accept"));
    return 0;
  }
  visit(ep, must(ep.connect(wait_for_metadata(meta)), "connect"));
  return 0;
}
