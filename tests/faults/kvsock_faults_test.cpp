// kvsock's fault switches: each one produces an error or a visible effect,
// never a hang. And strangers on a listener (junk, 4 GiB length prefixes,
// silent connections): bounded time, memory and log lines.
#include <arpa/inet.h>
#include <unistd.h>

#include "kvsock_harness.hpp"

using namespace kvsock_test;

namespace {
// What one send/receive of `size` bytes gave each end, and how long it took:
// each fault is judged by both results and, for some, by the time.
struct transfer_outcome {
  ncclResult_t send_result, recv_result;
  Clock::duration took;
};

transfer_outcome timed_transfer(Pair& p, Buffer& src, Buffer& dst, int size) {
  transfer_outcome out{};
  int received = -1;
  auto start = Clock::now();
  transfer(p, src, size, dst, size, &received, &out.send_result,
           &out.recv_result);
  out.took = Clock::now() - start;
  return out;
}
} // namespace

TEST_CASE(
    "KVSOCK_FAULT_DROP_AFTER closes the connection: both ends fail promptly") {
  for (int size :
       {100000, 4 << 20}) { // inline-sized... and split across data sockets
    CAPTURE(size);
    EnvGuard drop("KVSOCK_FAULT_DROP_AFTER", "50000");
    EnvGuard small_inline("KVSOCK_INLINE_MAX",
                          size > 200000 ? "65536" : "1048576");
    Pair p;
    Buffer src(p.net, p.send, static_cast<size_t>(size), 1);
    Buffer dst(p.net, p.recv, static_cast<size_t>(size));
    auto r = timed_transfer(p, src, dst, size);
    CHECK(r.send_result == ncclSystemError);
    CHECK(r.recv_result == ncclRemoteError);
    CHECK(r.took < std::chrono::seconds(3));
    CHECK(warned("KVSOCK_FAULT_DROP_AFTER"));
    // The failed comm refuses new work with the same error.
    void* again = nullptr;
    CHECK(p.net->isend(p.send, src.data(), 10, 0, src.mhandle, &again) ==
          ncclSystemError);
    CHECK(again == nullptr);
  }
}

TEST_CASE("KVSOCK_FAULT_CORRUPT flips exactly one byte of the Nth send") {
  for (int size : {1000, 2 << 20}) {
    CAPTURE(size);
    EnvGuard corrupt("KVSOCK_FAULT_CORRUPT", "2");
    Pair p;
    Buffer src(p.net, p.send, static_cast<size_t>(size), 7);
    Buffer dst(p.net, p.recv, static_cast<size_t>(size));
    for (int n = 1; n <= 3; ++n) {
      CAPTURE(n);
      std::fill(dst.bytes.begin(), dst.bytes.end(), 0);
      auto r = timed_transfer(p, src, dst, size);
      REQUIRE(r.send_result == ncclSuccess);
      REQUIRE(r.recv_result == ncclSuccess);
      int differing = 0;
      for (int k = 0; k < size; ++k)
        differing += src.bytes[static_cast<size_t>(k)] !=
                     dst.bytes[static_cast<size_t>(k)];
      CHECK(differing == (n == 2 ? 1 : 0));
    }
  }
}

TEST_CASE("KVSOCK_FAULT_DELAY_US delays every send, data intact") {
  EnvGuard delay("KVSOCK_FAULT_DELAY_US", "100000");
  Pair p;
  for (int size : {64, 1 << 20}) {
    CAPTURE(size);
    Buffer src(p.net, p.send, static_cast<size_t>(size), 9);
    Buffer dst(p.net, p.recv, static_cast<size_t>(size));
    auto r = timed_transfer(p, src, dst, size);
    CHECK(r.took >= std::chrono::milliseconds(100));
    CHECK(r.send_result == ncclSuccess);
    CHECK(r.recv_result == ncclSuccess);
    CHECK(dst.matches(9, static_cast<size_t>(size)));
  }
}

// ---- strangers on a listener: bounded time, memory and log lines

namespace {

// A listener, and raw TCP clients that dial it the way a stranger would.
struct Listener {
  ncclNet_v7_t* net = plugin();
  void* listen = nullptr;
  char handle[NCCL_NET_HANDLE_MAXSIZE] = {};
  Listener() { REQUIRE(net->listen(0, handle, &listen) == ncclSuccess); }
  ~Listener() { net->closeListen(listen); }

  sockaddr_in address() const {
    sockaddr_in a{};
    std::memcpy(&a, handle + 8, sizeof a); // Handle::address
    return a;
  }
  std::string name() const { // as kvsock's messages write it
    auto a = address();
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &a.sin_addr, ip, sizeof ip);
    return std::string(ip) + ":" + std::to_string(ntohs(a.sin_port));
  }
  // One accept() call: the listener's work for whatever has arrived.
  void poll_once() {
    void* recv = nullptr;
    REQUIRE(net->accept(listen, &recv, nullptr) == ncclSuccess);
    REQUIRE(recv == nullptr);
  }
  int dial() const {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    auto a = address();
    REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    return fd;
  }
  // Polls accept() until every fd has been closed by the listener.
  bool accept_until_closed(std::vector<int>& fds, std::chrono::seconds limit) {
    auto deadline = Clock::now() + limit;
    size_t closed = 0;
    while (closed < fds.size() && Clock::now() < deadline) {
      poll_once();
      closed = 0;
      for (int fd : fds) {
        char byte;
        closed += recv_nonblocking_eof(fd, &byte);
      }
    }
    return closed == fds.size();
  }
  // A real comm through this listener, and one message over it.
  void check_still_serves() {
    void *send = nullptr, *recv = nullptr;
    auto deadline = Clock::now() + kDeadline;
    while ((send == nullptr || recv == nullptr) && Clock::now() < deadline) {
      if (send == nullptr)
        REQUIRE(net->connect(0, handle, &send, nullptr) == ncclSuccess);
      if (recv == nullptr)
        REQUIRE(net->accept(listen, &recv, nullptr) == ncclSuccess);
    }
    REQUIRE_MESSAGE(send != nullptr, "a real connect completes in 10 s");
    REQUIRE_MESSAGE(recv != nullptr, "a real accept completes in 10 s");
    {
      Buffer src(net, send, 4096, 3), dst(net, recv, 4096);
      void *sreq = nullptr, *rreq = nullptr;
      void* rdata = dst.data();
      int size = 4096, tag = 0, received = 0, sdone = 0, rdone = 0;
      REQUIRE(net->isend(send, src.data(), size, tag, src.mhandle, &sreq) ==
              ncclSuccess);
      REQUIRE(net->irecv(recv, 1, &rdata, &size, &tag, &dst.mhandle, &rreq) ==
              ncclSuccess);
      deadline = Clock::now() + kDeadline;
      while ((!sdone || !rdone) && Clock::now() < deadline) {
        if (!sdone)
          REQUIRE(net->test(sreq, &sdone, nullptr) == ncclSuccess);
        if (!rdone)
          REQUIRE(net->test(rreq, &rdone, &received) == ncclSuccess);
      }
      CHECK(received == 4096);
      CHECK(dst.matches(3, 4096));
    }
    net->closeSend(send);
    net->closeRecv(recv);
  }
};

size_t resident_bytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  unsigned long size = 0, resident = 0;
  if (f != nullptr) {
    if (std::fscanf(f, "%lu %lu", &size, &resident) != 2)
      resident = 0;
    std::fclose(f);
  }
  return resident * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

size_t warnings_with(const std::string& a, const std::string& b) {
  std::lock_guard<std::mutex> lock(log_mutex());
  size_t n = 0;
  for (const auto& w : warnings())
    n += w.find(a) != std::string::npos && w.find(b) != std::string::npos;
  return n;
}

// 32 bytes as a stranger might send them: length fields announcing 4 GiB in
// a frame that is not a kvsock hello, and a hello-shaped one whose socket
// count (which sizes the accepting comm) is absurd.
std::vector<unsigned char> junk_prefix(int kind) {
  std::vector<unsigned char> bytes(32, 0);
  if (kind == 0) { // a big-endian 64-bit length of 4 GiB, as CAF's BASP
    bytes[3] = 0x01;
  } else if (kind == 1) { // kvsock's message header, size 0xFFFFFFFF
    uint32_t header[6] = {0x4b564d31u, 0, 0xFFFFFFFFu, 0, 0xFFFFFFFFu, 0};
    std::memcpy(bytes.data(), header, sizeof header);
  } else { // a hello for 65535 sockets
    uint32_t magic = 0x4b564831u;
    uint16_t version = 1, index = 0, sockets = 65535;
    std::memcpy(bytes.data(), &magic, 4);
    std::memcpy(bytes.data() + 4, &version, 2);
    std::memcpy(bytes.data() + 6, &index, 2);
    std::memcpy(bytes.data() + 8, &sockets, 2);
  }
  return bytes;
}

} // namespace

TEST_CASE("junk and 4-GiB length prefixes cost a listener bounded time, "
          "memory and log lines, and it keeps serving") {
  EnvGuard period("KVSOCK_REJECT_LOG_MS", "300");
  Listener l;
  constexpr int kJunk = 60;
  auto rss_before = resident_bytes();
  auto started = Clock::now();
  std::vector<int> fds;
  for (int i = 0; i < kJunk; ++i) {
    fds.push_back(l.dial());
    auto bytes = junk_prefix(i % 3);
    REQUIRE(send(fds.back(), bytes.data(), bytes.size(), MSG_NOSIGNAL) == 32);
  }
  // Each is refused at its 32nd byte, not at a timeout.
  CHECK(l.accept_until_closed(fds, std::chrono::seconds(5)));
  auto took = Clock::now() - started;
  CHECK(took < std::chrono::seconds(5));
  // Nothing was sized by the peer: no 4 GiB, not even a few MiB.
  CHECK(resident_bytes() < rss_before + (16u << 20));
  for (int fd : fds)
    ::close(fd);

  // One warning names the first peer; the rest are summed up, not one line
  // each: at most one summary per 300 ms period of the burst.
  auto listener = "listener " + l.name();
  CHECK(warnings_with(listener, "rejected a connection from ") == 1);
  auto periods =
      std::chrono::duration_cast<std::chrono::milliseconds>(took).count() / 300;
  CHECK(warnings_with(listener, "more connection(s)") <= size_t(periods) + 1);
  // The last summary comes once its period has passed, on the next accept().
  auto deadline = Clock::now() + std::chrono::seconds(5);
  auto total = "(" + std::to_string(kJunk) + " in all)";
  while (warnings_with(listener, total) == 0 && Clock::now() < deadline)
    l.poll_once();
  CHECK(warnings_with(listener, total) == 1);
  l.check_still_serves();
}

TEST_CASE("silent connections: closed at the hello timeout, and a real comm "
          "gets through while the listener is full of them") {
  EnvGuard timeout("KVSOCK_HELLO_TIMEOUT_MS", "1000");
  Listener l;
  std::vector<int> silent;
  for (int i = 0; i < 300; ++i) { // more than the 256 a listener keeps
    silent.push_back(l.dial());
    l.poll_once(); // as a worker does; keeps the kernel's backlog short
  }
  l.check_still_serves(); // the oldest silent ones give way
  CHECK(l.accept_until_closed(silent, std::chrono::seconds(10)));
  CHECK(warnings_with("listener " + l.name(), "no hello") >= 1);
  for (int fd : silent)
    ::close(fd);
}
