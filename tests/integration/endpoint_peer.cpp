// kvferry::endpoint (C++) as one side of the endpoint peer exchange
// (tests/integration/endpoint_peers.sh), the protocol of endpoint_peer.c:
//
//   endpoint_peer_cpp server DIR | client DIR
//
// Exit 0 when every byte matched.
#include <chrono>
#include <cstdint>
#include <cstdio>
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
  // The client may go (docs/engine-api.md, Limits: an endpoint destroyed
  // before the peer's receive finished fails that receive).
  std::vector<std::uint8_t> bye{'b', 'y', 'e'};
  must(ep.notify(conn, bye), "notify");
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
  std::vector<std::uint8_t> done{'d', 'o', 'n', 'e'};
  must(ep.notify(conn, done), "notify");
  auto bye = take(ep).bytes;
  if (std::string(bye.begin(), bye.end()) != "bye")
    die("client: expected the notification 'bye'");
  std::printf("client: wrote, read back and sent %zu + %zu bytes\n",
              write_bytes, send_bytes);
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 3 ||
      (std::string{argv[1]} != "server" && std::string{argv[1]} != "client")) {
    std::fprintf(stderr, "usage: %s server DIR | client DIR\n", argv[0]);
    return 2;
  }
  std::string meta = std::string{argv[2]} + "/meta";
  endpoint_options o;
  o.name = std::string{"cpp-"} + argv[1];
  auto ep = must(endpoint::create(o), "create");
  if (std::string{argv[1]} == "server") {
    auto blob = ep.metadata();
    {
      std::ofstream f(meta + ".tmp", std::ios::binary);
      f.write(reinterpret_cast<const char*>(blob.data()),
              static_cast<std::streamsize>(blob.size()));
    }
    std::rename((meta + ".tmp").c_str(), meta.c_str());
    serve(ep, must(ep.accept(limit), "accept"));
    return 0;
  }
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
  std::vector<std::uint8_t> blob((std::istreambuf_iterator<char>(f)),
                                 std::istreambuf_iterator<char>());
  visit(ep, must(ep.connect(blob), "connect"));
  return 0;
}
