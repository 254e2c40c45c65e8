// The control plane refuses strangers at the TLS handshake (docs/security.md):
// a real `kvferry directory` and `kvferry worker` with their certificates,
// attacked on their control ports with the packets that take a plaintext CAF
// 0.17 down (a BASP client_handshake header announcing no payload: SIGSEGV;
// a header announcing 4 GiB: a 4 GiB allocation on the I/O thread). Each must
// end in a refused handshake, with the process alive and a client holding a
// certificate still served (its open connection answers, a demo verifies KV
// cache through both workers). Clients without a certificate of the deployment
// CA (a plain CAF client, another deployment's CA, `kvferry status` and
// `kvferry demo --directory` without files) are refused with a clear error;
// the plaintext opt-out is logged; every socket of the directory and the
// workers (CAF's, kvsock's) is bound where configured.
#include <arpa/inet.h>
#include <array>
#include <chrono>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <netinet/in.h>
#include <set>
#include <sstream>
#include <string>
#include <sys/socket.h>
#include <vector>

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <doctest/doctest.h>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/connect_peers.hpp"
#include "kvferry/actors/directory.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/runtime/tls.hpp"
#include "kvferry_processes.hpp"
#include "run_kvferry.hpp"
#include "scratch_dir.hpp"
#include "why.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using kvferry::test::child;

namespace {

// A BASP header (CAF 0.17: 32 bytes, network byte order): operation, two
// padding bytes, flags, payload length, operation data, source and
// destination actor.
std::array<unsigned char, 32> basp_header(unsigned char operation,
                                          uint32_t payload_len) {
  std::array<unsigned char, 32> h{};
  h[0] = operation;
  uint32_t len = htonl(payload_len);
  std::memcpy(&h[4], &len, sizeof len);
  return h;
}

struct probe_result {
  bool connected = false;
  bool closed = false;     // EOF or reset within the deadline
  std::string first_bytes; // what the server sent before closing
};

// Connects to 127.0.0.1:port, sends `junk`, and reads until the server
// closes (or 10 s pass).
probe_result send_junk(uint16_t port, const unsigned char* junk, size_t size) {
  probe_result r;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return r;
  }
  r.connected = true;
  (void)send(fd, junk, size, MSG_NOSIGNAL);
  char buf[512];
  for (;;) {
    auto n = recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      r.first_bytes.append(buf, static_cast<size_t>(n));
      continue;
    }
    r.closed = n == 0 || errno == ECONNRESET;
    break;
  }
  close(fd);
  return r;
}

// A plaintext CAF node greets with its BASP server_handshake (operation
// 0x00) before reading anything; a TLS server says nothing until a
// ClientHello and answers junk with at most an alert record (0x15).
void expect_refused_handshake(uint16_t port, const std::string& who) {
  auto client_handshake_no_payload = basp_header(0x01, 0);
  auto four_gib = basp_header(0x02, 0xFFFFFFFFu);
  for (auto* junk : {&client_handshake_no_payload, &four_gib}) {
    INFO(who << " port " << port << ", junk header op " << int((*junk)[0]));
    auto r = send_junk(port, junk->data(), junk->size());
    REQUIRE(r.connected);
    CHECK(r.closed);
    if (!r.first_bytes.empty())
      CHECK(static_cast<unsigned char>(r.first_bytes[0]) == 0x15);
  }
}

struct deployment_files {
  test::scratch_dir scratch{"kvferry-tls-test"};
  std::string pki = (scratch.path / "pki").string();
  std::string other_pki = (scratch.path / "other-pki").string();
  std::string empty = (scratch.path / "empty").string();
  deployment_files() {
    REQUIRE(!runtime::ensure_pki(
        pki, {"directory", "prefill-0", "decode-0", "client"}));
    REQUIRE(!runtime::ensure_pki(other_pki, {"client"}));
    std::filesystem::create_directory(empty);
  }
};

uint16_t port_of(const std::string& line) {
  REQUIRE_MESSAGE(!line.empty(), "no 'listening on' line in time");
  return static_cast<uint16_t>(std::stoi(line.substr(line.rfind(':') + 1)));
}

// A worker with a small model (the demo below uses the same geometry).
// clang-format off
std::vector<std::string> worker_args(const std::string& name,
                                     const std::string& role, uint16_t dir,
                                     const std::string& tls_dir) {
  return {"worker", "--name", name, "--role", role,
          "--directory", "127.0.0.1:" + std::to_string(dir),
          "--bind", "127.0.0.1",
          "--gpu", "none",
          "--pool-blocks", "512",
          "--layers", "2", "--kv-heads", "1", "--head-dim", "8",
          "--tls-dir", tls_dir,
          "--log-level", "warn"};
}
const std::string demo_geometry =
    " --layers 2 --kv-heads 1 --head-dim 8 --max-tokens 64 --inflight 1";
// clang-format on

// A client actor system presenting `name`'s certificate of `dir`.
struct tls_client {
  runtime::system_config cfg;
  std::optional<caf::actor_system> sys;
  tls_client(const std::string& dir, const std::string& name) {
    runtime::tls_options tls;
    tls.dir = dir;
    auto err = cfg.secure(tls, name);
    REQUIRE_MESSAGE(!err, render(err));
    sys.emplace(cfg);
  }
};

// The process's resident memory (VmRSS), in MiB.
long resident_mib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  long kib = 0;
  while (in >> key)
    if (key == "VmRSS:" && in >> kib)
      return kib / 1024;
  FAIL("no VmRSS for pid " << pid);
  return 0;
}

struct tcp_socket {
  std::string local; // "ADDR" (IPv6: "[ipv6 HEX]")
  bool listening = false;
};

// Every TCP socket the process `pid` owns (IPv4 and IPv6), read from /proc:
// the socket inodes among its fds, matched against the kernel's tables of
// its network namespace.
std::vector<tcp_socket> tcp_sockets(pid_t pid) {
  std::set<std::string> inodes;
  auto fd_dir = "/proc/" + std::to_string(pid) + "/fd";
  if (DIR* d = opendir(fd_dir.c_str())) {
    while (auto* e = readdir(d)) {
      char target[128] = {};
      auto path = fd_dir + "/" + e->d_name;
      auto n = readlink(path.c_str(), target, sizeof target - 1);
      std::string t(target, n > 0 ? static_cast<size_t>(n) : 0);
      if (t.rfind("socket:[", 0) == 0)
        inodes.insert(t.substr(8, t.size() - 9));
    }
    closedir(d);
  }
  std::vector<tcp_socket> found;
  for (const char* table : {"tcp", "tcp6"}) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + table);
    std::string line;
    std::getline(in, line); // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues, timer, retr, uid, timeout,
          inode;
      fields >> slot >> local >> remote >> state >> queues >> timer >> retr >>
          uid >> timeout >> inode;
      if (inodes.count(inode) == 0)
        continue;
      tcp_socket sock;
      sock.listening = state == "0A";
      auto hex = local.substr(0, local.find(':'));
      if (hex.size() == 8) {
        in_addr a{static_cast<in_addr_t>(std::stoul(hex, nullptr, 16))};
        char text[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &a, text, sizeof text);
        sock.local = text;
      } else {
        sock.local = "[ipv6 " + hex + "]";
      }
      found.push_back(sock);
    }
  }
  return found;
}

// Every socket of `who` is on the configured 127.0.0.1: its listeners, and
// the connections it accepted or made (an accepted socket's local address is
// where its listener was bound, e.g. kvsock's, which close once their peers
// are connected). Returns the number of listeners.
size_t check_all_on_loopback(pid_t pid, const std::string& who) {
  size_t listeners = 0;
  for (auto& sock : tcp_sockets(pid)) {
    std::string what = who + (sock.listening ? " listens" : " has a socket") +
                       " on " + sock.local;
    CHECK_MESSAGE(sock.local == "127.0.0.1", what);
    listeners += sock.listening ? 1 : 0;
  }
  return listeners;
}

std::string status_file(const test::scratch_dir& scratch, uint16_t port) {
  auto path = (scratch.path / "topo.yaml").string();
  std::ofstream out(path);
  out << "name: tls-test\ndirectory: {port: " << port
      << "}\nworkers:\n  - {name: prefill-0, role: prefill, gpu: none}\n"
         "  - {name: decode-0, role: decode, gpu: none}\n";
  return path;
}

} // namespace

TEST_CASE("control listeners refuse junk at the TLS handshake, and serve on") {
  deployment_files files;
  child dir{{"directory", "--bind", "127.0.0.1", "--port", "0", "--tls-dir",
             files.pki, "--log-level", "warn"}};
  auto dir_port = port_of(dir.wait_for_line("listening on", 20s));
  child prefill{worker_args("prefill-0", "prefill", dir_port, files.pki)};
  child decode{worker_args("decode-0", "decode", dir_port, files.pki)};
  REQUIRE_MESSAGE(!prefill.wait_for_line(" ready", 30s).empty(), prefill.text);
  REQUIRE_MESSAGE(!decode.wait_for_line(" ready", 30s).empty(), decode.text);

  tls_client client{files.pki, "client"};
  auto directory = connect_directory(*client.sys, "127.0.0.1", dir_port, 10s);
  REQUIRE_MESSAGE(directory, test::why(directory));
  caf::scoped_actor self{*client.sys};
  worker_info decode_info;
  self->request(*directory, 5s, lookup_atom::value, std::string{"decode-0"})
      .receive([&](worker_info& w) { decode_info = std::move(w); },
               [&](caf::error& err) { FAIL(render(err)); });
  auto control = decode_info.attributes.at(control_attribute);
  CHECK(control.rfind("127.0.0.1:", 0) == 0);
  auto worker_port = port_of(control);

  expect_refused_handshake(dir_port, "directory");
  expect_refused_handshake(worker_port, "worker decode-0");
  CHECK(dir.alive());
  CHECK(prefill.alive());
  CHECK(decode.alive());
  // Nothing allocated the 4 GiB the second header announced.
  CHECK(resident_mib(dir.pid) < 512);
  CHECK(resident_mib(decode.pid) < 512);

  // Still served: the directory answers the connection opened before the
  // junk, the worker's port takes a client, and a demo with the client
  // certificate moves and verifies KV cache through both workers.
  self->request(*directory, 5s, list_atom::value)
      .receive([&](std::vector<worker_info>& all) { CHECK(all.size() == 2); },
               [&](caf::error& err) { FAIL(render(err)); });
  CHECK(connect_peers(*client.sys, {decode_info}, 5s).empty());
  auto demo = test::run_kvferry(
      "demo --directory 127.0.0.1:" + std::to_string(dir_port) + " --tls-dir " +
          files.pki + " --requests 5 --quiet" + demo_geometry,
      120);
  CHECK_MESSAGE(demo.status == 0, demo.output);

  // Nothing listens or connects anywhere but the configured 127.0.0.1: no
  // plain listener for CAF's automatic connections, no kvsock socket on the
  // first non-loopback interface.
  CHECK(check_all_on_loopback(dir.pid, "the directory") == 1);
  CHECK(check_all_on_loopback(prefill.pid, "worker prefill-0") >= 1);
  CHECK(check_all_on_loopback(decode.pid, "worker decode-0") >= 1);
}

TEST_CASE("clients without a certificate of the deployment CA are refused") {
  deployment_files files;
  child dir{{"directory", "--bind", "127.0.0.1", "--port", "0", "--tls-dir",
             files.pki, "--log-level", "warn"}};
  auto port = port_of(dir.wait_for_line("listening on", 20s));
  auto where = "127.0.0.1:" + std::to_string(port);
  auto topo = status_file(files.scratch, port);

  SUBCASE("a plain CAF client") {
    runtime::system_config cfg;
    caf::actor_system sys{cfg};
    auto d = connect_directory(sys, "127.0.0.1", port, 2s);
    REQUIRE(!d);
    CHECK(is(d.error(), ec::unreachable));
  }
  SUBCASE("a client of another deployment's CA") {
    tls_client stranger{files.other_pki, "client"};
    auto d = connect_directory(*stranger.sys, "127.0.0.1", port, 2s);
    REQUIRE(!d);
    CHECK(is(d.error(), ec::unreachable));
  }
  SUBCASE("kvferry status") {
    auto none = test::run_kvferry("status " + topo + " --tls-dir " +
                                      files.empty + " --timeout-ms 2000",
                                  60);
    CHECK(none.status == 1);
    CHECK_MESSAGE(none.output.find("no TLS certificates") != std::string::npos,
                  none.output);
    auto stranger =
        test::run_kvferry("status " + topo + " --tls-dir " + files.other_pki +
                              " --timeout-ms 2000",
                          60);
    CHECK(stranger.status == 1);
    CHECK_MESSAGE(stranger.output.find("cannot reach the directory") !=
                      std::string::npos,
                  stranger.output);
    auto plain = test::run_kvferry(
        "status " + topo + " --insecure-plaintext --timeout-ms 2000", 60);
    CHECK(plain.status == 1);
    // With its certificate: answered (the worker is down: status 4).
    auto ok = test::run_kvferry("status " + topo + " --tls-dir " + files.pki +
                                    " --timeout-ms 5000",
                                60);
    CHECK_MESSAGE(ok.status == 4, ok.output);
    CHECK(ok.output.find("0 of 2 worker(s) up") != std::string::npos);
  }
  SUBCASE("kvferry demo --directory") {
    auto none = test::run_kvferry("demo --directory " + where +
                                      " --requests 1 --tls-dir " + files.empty,
                                  60);
    CHECK(none.status != 0);
    CHECK_MESSAGE(none.output.find("no TLS certificates") != std::string::npos,
                  none.output);
    auto plain = test::run_kvferry(
        "demo --directory " + where + " --requests 1 --insecure-plaintext", 60);
    CHECK(plain.status != 0);
    CHECK_MESSAGE(plain.output.find("cannot reach the directory") !=
                      std::string::npos,
                  plain.output);
  }
  CHECK(dir.alive());
}

TEST_CASE("a bad certificate file is named before anything starts") {
  deployment_files files;
  auto start_directory = [&] {
    return test::run_kvferry(
        "directory --bind 127.0.0.1 --port 0 --tls-dir " + files.pki, 60);
  };
  // Another deployment's CA does not verify this deployment's certificates.
  auto ca = files.pki + "/ca.crt";
  std::filesystem::rename(ca, ca + ".saved");
  std::filesystem::copy_file(files.other_pki + "/ca.crt", ca);
  auto foreign_ca = start_directory();
  CHECK(foreign_ca.status == 1);
  CHECK_MESSAGE(foreign_ca.output.find("does not verify against the CA") !=
                    std::string::npos,
                foreign_ca.output);
  std::filesystem::remove(ca);
  std::filesystem::rename(ca + ".saved", ca);
  // The worker's key does not belong to the directory's certificate.
  std::filesystem::copy_file(files.pki + "/decode-0.key",
                             files.pki + "/directory.key",
                             std::filesystem::copy_options::overwrite_existing);
  auto wrong_key = start_directory();
  CHECK(wrong_key.status == 1);
  CHECK_MESSAGE(wrong_key.output.find("directory.key does not belong to the "
                                      "certificate") != std::string::npos,
                wrong_key.output);
}

TEST_CASE("the plaintext opt-out is logged at warn") {
  child dir{{"directory", "--bind", "127.0.0.1", "--port", "0",
             "--insecure-plaintext", "--log-level", "info"}};
  REQUIRE(!dir.wait_for_line("listening on", 20s).empty());
  CHECK_MESSAGE(dir.text.find("TLS is OFF") != std::string::npos, dir.text);
}
