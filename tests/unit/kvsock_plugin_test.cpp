// kvsock, driven through the v7 table exactly as NCCL or kvferry would.
#include <algorithm>
#include <arpa/inet.h>
#include <chrono>
#include <cstring>
#include <deque>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>

#include "kvsock/unpack_host.hpp"
#include "kvsock_harness.hpp"

using namespace kvsock_test;

TEST_CASE("the table names kvsock and describes one host device") {
  ncclNet_v7_t* net = plugin();
  CHECK(std::string(net->name) == "kvsock");
  int ndev = 0;
  REQUIRE(net->devices(&ndev) == ncclSuccess);
  CHECK(ndev == 1); // neither KVSOCK_IFADDR nor NCCL_SOCKET_IFNAME: one NIC
  ncclNetProperties_v7_t props{};
  REQUIRE(net->getProperties(0, &props) == ncclSuccess);
  CHECK(std::string(props.name) != ""); // the interface, e.g. eth0 or lo
  CHECK((props.ptrSupport & NCCL_PTR_HOST) != 0);
  CHECK(props.maxRecvs == 8);
  CHECK(props.netDeviceType == NCCL_NET_DEVICE_HOST);
  CHECK(net->getProperties(1, &props) == ncclInvalidArgument);
  CHECK((net->iflush != nullptr));
  CHECK((net->irecvConsumed != nullptr));
}

TEST_CASE("connect and accept complete by polling, never blocking") {
  Pair p;
  CHECK(p.send != nullptr);
  CHECK(p.recv != nullptr);
  // The listener's handle is unchanged by the peer's connect (the connect
  // state lives in the peer's copy).
  char copy[NCCL_NET_HANDLE_MAXSIZE];
  std::memcpy(copy, p.handle, sizeof copy);
  CHECK(std::memcmp(copy, p.handle, sizeof copy) == 0);
}

TEST_CASE("a connection with the wrong nonce is rejected and closed") {
  ncclNet_v7_t* net = plugin();
  char handle[NCCL_NET_HANDLE_MAXSIZE];
  void* listen = nullptr;
  REQUIRE(net->listen(0, handle, &listen) == ncclSuccess);

  // A raw TCP client that speaks the hello with a forged nonce.
  sockaddr_in address{};
  std::memcpy(&address, handle + 8, sizeof address); // Handle::address
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) ==
          0);
  struct {
    uint32_t magic;
    uint16_t version, index, sockets, reserved;
    uint32_t reserved2;
    uint64_t comm_id, nonce;
  } hello{0x4b564831u, 1, 0, 2, 0, 0, 42, 0};
  uint64_t real_nonce;
  std::memcpy(&real_nonce, handle + 24, sizeof real_nonce); // Handle::nonce
  hello.nonce = real_nonce ^ 1;
  REQUIRE(send(fd, &hello, sizeof hello, 0) ==
          static_cast<ssize_t>(sizeof hello));

  void* recv = nullptr;
  auto deadline = Clock::now() + std::chrono::seconds(5);
  bool closed = false;
  while (!closed && Clock::now() < deadline) {
    REQUIRE(net->accept(listen, &recv, nullptr) == ncclSuccess);
    CHECK(recv == nullptr);
    char byte;
    closed = recv_nonblocking_eof(fd, &byte);
  }
  CHECK_MESSAGE(closed, "the listener closes the forged connection");
  CHECK(warned("wrong nonce"));
  ::close(fd);

  // The real handle still works on the same listener.
  void* send_comm = nullptr;
  deadline = Clock::now() + kDeadline;
  while ((send_comm == nullptr || recv == nullptr) && Clock::now() < deadline) {
    if (send_comm == nullptr)
      REQUIRE(net->connect(0, handle, &send_comm, nullptr) == ncclSuccess);
    if (recv == nullptr)
      REQUIRE(net->accept(listen, &recv, nullptr) == ncclSuccess);
  }
  CHECK(send_comm != nullptr);
  CHECK(recv != nullptr);
  if (send_comm)
    net->closeSend(send_comm);
  if (recv)
    net->closeRecv(recv);
  net->closeListen(listen);
}

namespace {
// Size of send #i in the ordering test: tiny, inline-sized and split sizes.
int order_size(int i) {
  static const int sizes[] = {1,     8,      100,     4096, 65536,
                              65537, 300000, 1 << 20, 0,    17};
  return sizes[i % 10];
}
} // namespace

TEST_CASE("sends match receives in posting order with 32+ in flight and "
          "NULL-request retry") {
  Pair p;
  constexpr int kMessages = 300;
  constexpr int kMax = 1 << 20;
  // One registered arena per side; message i uses slot i % 64.
  constexpr int kSlots = 64;
  Buffer src(p.net, p.send, static_cast<size_t>(kSlots) * kMax);
  Buffer dst(p.net, p.recv, static_cast<size_t>(kSlots) * kMax);
  auto pattern = [](int i, size_t k) {
    return static_cast<unsigned char>((i * 131 + k * 7 + (k >> 9)) & 0xff);
  };

  std::deque<std::pair<int, void*>> sends, recvs;
  int next_send = 0, next_recv = 0, sent = 0, received = 0;
  int max_sends_in_flight = 0, max_recvs_in_flight = 0;
  bool saw_send_null = false, saw_recv_null = false;
  auto deadline = Clock::now() + std::chrono::seconds(30);
  while ((sent < kMessages || received < kMessages) &&
         Clock::now() < deadline) {
    // Post sends until the plugin says "not now" (a NULL request) or the
    // slot we would reuse is still in flight.
    while (next_send < kMessages && next_send - sent < kSlots) {
      int i = next_send;
      unsigned char* base = static_cast<unsigned char*>(src.data()) +
                            static_cast<size_t>(i % kSlots) * kMax;
      for (int k = 0; k < order_size(i); ++k)
        base[k] = pattern(i, static_cast<size_t>(k));
      void* request = nullptr;
      REQUIRE(p.net->isend(p.send, base, order_size(i), 0, src.mhandle,
                           &request) == ncclSuccess);
      if (request == nullptr) {
        saw_send_null = true;
        break;
      }
      sends.emplace_back(i, request);
      ++next_send;
    }
    max_sends_in_flight =
        std::max(max_sends_in_flight, static_cast<int>(sends.size()));
    while (next_recv < kMessages && next_recv - received < kSlots) {
      void* data = static_cast<char*>(dst.data()) +
                   static_cast<size_t>(next_recv % kSlots) * kMax;
      int size = kMax;
      int tag = 0;
      void* request = nullptr;
      REQUIRE(p.net->irecv(p.recv, 1, &data, &size, &tag, &dst.mhandle,
                           &request) == ncclSuccess);
      if (request == nullptr) {
        saw_recv_null = true;
        break;
      }
      recvs.emplace_back(next_recv, request);
      ++next_recv;
    }
    max_recvs_in_flight =
        std::max(max_recvs_in_flight, static_cast<int>(recvs.size()));
    // Test the oldest of each (completion is in order on one comm anyway).
    if (!sends.empty()) {
      int done = 0;
      REQUIRE(p.net->test(sends.front().second, &done, nullptr) == ncclSuccess);
      if (done) {
        sends.pop_front();
        ++sent;
      }
    }
    if (!recvs.empty()) {
      int done = 0, size = -1;
      REQUIRE(p.net->test(recvs.front().second, &done, &size) == ncclSuccess);
      if (done) {
        int i = recvs.front().first;
        REQUIRE(size == order_size(i));
        const unsigned char* got = static_cast<unsigned char*>(dst.data()) +
                                   static_cast<size_t>(i % kSlots) * kMax;
        bool same = true;
        for (int k = 0; k < size && same; ++k)
          same = got[k] == pattern(i, static_cast<size_t>(k));
        REQUIRE_MESSAGE(same, "message "
                                  << i << " (" << size
                                  << " bytes) arrives intact and in order");
        recvs.pop_front();
        ++received;
      }
    }
  }
  CHECK(sent == kMessages);
  CHECK(received == kMessages);
  CHECK(max_recvs_in_flight >= 32);
  CHECK(max_sends_in_flight >= 32);
  CHECK(saw_recv_null); // 32 receives in flight is the declared limit
  (void)saw_send_null;
}

namespace {
// Size of send #i in the gathered-burst tests: all inline on a small host,
// some larger than the tiny socket buffers, so one gathered sendmsg stops
// mid-message; 200,000 and 300,000 bytes are past the gathering limit (written
// at once, behind what waits) and past the inline limit of a big host.
int burst_size(int i) {
  static const int sizes[] = {2048, 0, 1,     100,    30000,
                              2048, 7, 65536, 200000, 300000};
  return sizes[i % 10];
}

// Posts 40 sends before any test (as a transfer posts its extents), then
// receives them all, checking every byte.
void check_burst_arrives(const char* gather) {
  CAPTURE(gather);
  EnvGuard batch("KVSOCK_GATHER", gather);
  EnvGuard tiny("KVSOCK_SOCKBUF", "4096"); // forces short writes mid-batch
  Pair p;
  constexpr int kSends = 40; // more than one batch of 16
  constexpr int kMax = 300000;
  Buffer src(p.net, p.send, static_cast<size_t>(kSends) * kMax, 7);
  Buffer dst(p.net, p.recv, static_cast<size_t>(kSends) * kMax);
  auto at = [](Buffer& b, int i) {
    return static_cast<char*>(b.data()) + static_cast<size_t>(i) * kMax;
  };
  std::deque<void*> sends;
  for (int i = 0; i < kSends; ++i) {
    void* request = nullptr;
    REQUIRE(p.net->isend(p.send, at(src, i), burst_size(i), i % 3, src.mhandle,
                         &request) == ncclSuccess);
    REQUIRE(request != nullptr);
    sends.push_back(request);
  }
  std::deque<std::pair<int, void*>> recvs;
  int next_recv = 0, received = 0;
  auto deadline = Clock::now() + std::chrono::seconds(30);
  while ((!sends.empty() || received < kSends) && Clock::now() < deadline) {
    while (next_recv < kSends) {
      void* data = at(dst, next_recv);
      int size = kMax, tag = 0;
      void* request = nullptr;
      REQUIRE(p.net->irecv(p.recv, 1, &data, &size, &tag, &dst.mhandle,
                           &request) == ncclSuccess);
      if (request == nullptr)
        break; // 32 in flight
      recvs.emplace_back(next_recv++, request);
    }
    int done = 0;
    if (!sends.empty()) {
      REQUIRE(p.net->test(sends.front(), &done, nullptr) == ncclSuccess);
      if (done)
        sends.pop_front();
    }
    if (!recvs.empty()) {
      int size = -1;
      REQUIRE(p.net->test(recvs.front().second, &done, &size) == ncclSuccess);
      if (done) {
        int i = recvs.front().first;
        REQUIRE(size == burst_size(i));
        REQUIRE_MESSAGE(
            std::memcmp(at(dst, i), at(src, i), static_cast<size_t>(size)) == 0,
            "send " << i << " (" << size
                    << " bytes) lands intact, in its own receive");
        recvs.pop_front();
        ++received;
      }
    }
  }
  CHECK(sends.empty());
  CHECK(received == kSends);
}
} // namespace

TEST_CASE("a burst of small sends posted without a test arrives intact and in "
          "order, across partial gathered writes") {
  check_burst_arrives("16"); // the default: 16 sends in one sendmsg
  check_burst_arrives("1");  // each written at its isend, as before
}

TEST_CASE("a peer that closes during a gathered burst fails the sends that "
          "did not leave, in order, without hanging") {
  EnvGuard tiny("KVSOCK_SOCKBUF", "4096");
  Pair p;
  constexpr int kSends = 40;
  constexpr int kSize = 65536; // 2.5 MiB in all: far beyond the buffers
  Buffer src(p.net, p.send, static_cast<size_t>(kSends) * kSize, 3);
  std::vector<void*> sends;
  for (int i = 0; i < kSends; ++i) {
    void* request = nullptr;
    REQUIRE(p.net->isend(p.send,
                         static_cast<char*>(src.data()) +
                             static_cast<size_t>(i) * kSize,
                         kSize, 0, src.mhandle, &request) == ncclSuccess);
    REQUIRE(request != nullptr);
    sends.push_back(request);
  }
  REQUIRE(p.net->closeRecv(p.recv) == ncclSuccess);
  p.recv = nullptr;
  // Each send ends, done or failed; once one failed, none after it is done
  // (its bytes cannot have left after an earlier send's did not).
  int ok = 0, failed = 0;
  auto start = Clock::now();
  for (void* request : sends) {
    int done = 0;
    ncclResult_t result = wait(p.net, request, nullptr, &done);
    REQUIRE_MESSAGE((result != ncclSuccess || done),
                    "a send to a closed peer ends within 10 s");
    if (result == ncclSuccess) {
      CHECK(failed == 0);
      ++ok;
    } else {
      CHECK((result == ncclRemoteError || result == ncclSystemError));
      ++failed;
    }
  }
  CHECK(failed > 0);
  CHECK(ok + failed == kSends);
  CHECK(Clock::now() - start < std::chrono::seconds(5));
}

TEST_CASE("a grouped receive puts each send into the buffer with its tag") {
  Pair p;
  Buffer a(p.net, p.send, 100, 1), b(p.net, p.send, 200000, 2),
      c(p.net, p.send, 3000, 3);
  Buffer r0(p.net, p.recv, 5000), r1(p.net, p.recv, 300000),
      r2(p.net, p.recv, 1000);
  void* data[3] = {r0.data(), r1.data(), r2.data()};
  int sizes[3] = {5000, 300000, 1000};
  int tags[3] = {30, 20, 10};
  void* mh[3] = {r0.mhandle, r1.mhandle, r2.mhandle};
  void* rreq = nullptr;
  REQUIRE(p.net->irecv(p.recv, 3, data, sizes, tags, mh, &rreq) == ncclSuccess);
  REQUIRE(rreq != nullptr);
  void* s[3] = {};
  REQUIRE(p.net->isend(p.send, b.data(), 200000, 20, b.mhandle, &s[0]) ==
          ncclSuccess);
  REQUIRE(p.net->isend(p.send, a.data(), 100, 10, a.mhandle, &s[1]) ==
          ncclSuccess);
  REQUIRE(p.net->isend(p.send, c.data(), 3000, 30, c.mhandle, &s[2]) ==
          ncclSuccess);
  int got[3] = {-1, -1, -1};
  int rdone = 0;
  int sdone[3] = {};
  auto deadline = Clock::now() + kDeadline;
  while (!(rdone && sdone[0] && sdone[1] && sdone[2]) &&
         Clock::now() < deadline) {
    for (int i = 0; i < 3; ++i) {
      if (!sdone[i])
        REQUIRE(p.net->test(s[i], &sdone[i], nullptr) == ncclSuccess);
    }
    if (!rdone)
      REQUIRE(p.net->test(rreq, &rdone, got) == ncclSuccess);
  }
  REQUIRE(rdone);
  CHECK(got[0] == 3000);
  CHECK(got[1] == 200000);
  CHECK(got[2] == 100);
  CHECK(r0.matches(3, 3000));
  CHECK(r1.matches(2, 200000));
  CHECK(r2.matches(1, 100));
}

TEST_CASE("a receive larger than its send reports the true size") {
  Pair p;
  for (int send_size : {1000, 300000}) {
    CAPTURE(send_size);
    Buffer src(p.net, p.send, static_cast<size_t>(send_size), 5);
    Buffer dst(p.net, p.recv, 1 << 20);
    int got = -1;
    ncclResult_t sr, rr;
    transfer(p, src, send_size, dst, 1 << 20, &got, &sr, &rr);
    CHECK(sr == ncclSuccess);
    CHECK(rr == ncclSuccess);
    CHECK(got == send_size);
    CHECK(dst.matches(5, static_cast<size_t>(send_size)));
  }
}

TEST_CASE(
    "a receive smaller than its send fails cleanly and the comm goes on") {
  Pair p;
  for (int send_size : {2000, 600000}) {
    CAPTURE(send_size);
    Buffer src(p.net, p.send, static_cast<size_t>(send_size), 6);
    Buffer dst(p.net, p.recv, static_cast<size_t>(send_size));
    std::fill(dst.bytes.begin(), dst.bytes.end(), 0xee);
    int got = -1;
    ncclResult_t sr, rr;
    transfer(p, src, send_size, dst, send_size / 2, &got, &sr, &rr);
    CHECK(sr == ncclSuccess);
    CHECK(rr == ncclInternalError);
    CHECK(warned("truncated"));
    // Nothing was written past the receive buffer (nor into it).
    CHECK(dst.bytes[static_cast<size_t>(send_size / 2)] == 0xee);
    // The bytes were drained: the next transfer on the same comm is intact.
    transfer(p, src, send_size, dst, send_size, &got, &sr, &rr);
    CHECK(sr == ncclSuccess);
    CHECK(rr == ncclSuccess);
    CHECK(got == send_size);
    CHECK(dst.matches(6, static_cast<size_t>(send_size)));
  }
}

TEST_CASE("buffers must be registered on the comm that uses them") {
  Pair p;
  std::vector<char> unregistered(100);
  void* request = nullptr;
  CHECK(p.net->isend(p.send, unregistered.data(), 100, 0, nullptr, &request) ==
        ncclInvalidArgument);
  Buffer other(p.net, p.recv, 100);
  CHECK(p.net->isend(p.send, other.data(), 100, 0, other.mhandle, &request) ==
        ncclInvalidArgument);
  CHECK(request == nullptr);
}

TEST_CASE("UNPACK mode: records in the meta ring reproduce the data") {
  EnvGuard unpack("KVSOCK_UNPACK", "1");
  ncclNet_v7_t* net = plugin();
  ncclNetProperties_v7_t props{};
  REQUIRE(net->getProperties(0, &props) == ncclSuccess);
  CHECK(props.netDeviceType == NCCL_NET_DEVICE_UNPACK);
  CHECK(props.netDeviceVersion == 7);
  CHECK(props.maxRecvs == 1);

  Pair p(true);
  REQUIRE(p.dev.handle != nullptr);
  CHECK(p.dev.size == sizeof(ncclNetUnpackHandle));
  const auto* handle = static_cast<const ncclNetUnpackHandle*>(p.dev.handle);
  REQUIRE(handle->meta != nullptr);
  REQUIRE(handle->bounce_buf != nullptr);

  constexpr int kMax = 4 << 20;
  Buffer src(p.net, p.send, kMax);
  Buffer dst(p.net, p.recv,
             kMax + 4096); // the "GPU" destination: the plugin never writes it
  std::vector<unsigned char> out(kMax);
  const int sizes[] = {10, 5000, 70000, 1 << 20, kMax, 0, 4096, 123457};
  bool saw_scatter = false;
  for (int round = 0; round < 18; ++round) { // wraps the 16-slot ring
    int size = sizes[round % 8];
    CAPTURE(size);
    src.fill(round);
    std::fill(dst.bytes.begin(), dst.bytes.end(), 0);
    int got = -1;
    ncclResult_t sr, rr;
    void* sreq = nullptr;
    void* rreq = nullptr;
    void* rdata = dst.data();
    int rsize = kMax, tag = 0;
    REQUIRE(p.net->isend(p.send, src.data(), size, 0, src.mhandle, &sreq) ==
            ncclSuccess);
    REQUIRE(p.net->irecv(p.recv, 1, &rdata, &rsize, &tag, &dst.mhandle,
                         &rreq) == ncclSuccess);
    REQUIRE(rreq != nullptr);
    int sdone = 0, rdone = 0;
    auto deadline = Clock::now() + kDeadline;
    while (!(sdone && rdone) && Clock::now() < deadline) {
      if (!sdone)
        REQUIRE((sr = p.net->test(sreq, &sdone, nullptr)) == ncclSuccess);
      if (!rdone)
        REQUIRE((rr = p.net->test(rreq, &rdone, &got)) == ncclSuccess);
    }
    REQUIRE(rdone);
    CHECK(got == size);
    bool untouched = true; // the plugin writes only the bounce buffer
    for (size_t k = 0; k < dst.bytes.size(); k += 512)
      untouched = untouched && dst.bytes[k] == 0;
    CHECK(untouched);
    int slot = round % NCCL_NET_UNPACK_SLOTS;
    CHECK(handle->meta->count[slot] ==
          static_cast<uint64_t>((size + 4095) / 4096));
    CHECK(handle->head == static_cast<uint64_t>(round + 1));
    for (uint64_t i = 1; i < handle->meta->count[slot]; ++i) {
      if (handle->meta->records[slot][i].src_off !=
          handle->meta->records[slot][i - 1].src_off + 4096)
        saw_scatter = true;
    }
    std::fill(out.begin(), out.end(), 0);
    CHECK(kvsock::kvsock_unpack_on_host(*handle, slot, out.data()) ==
          static_cast<size_t>(size));
    CHECK(std::memcmp(out.data(), src.data(), static_cast<size_t>(size)) == 0);
    CHECK(p.net->irecvConsumed(p.recv, 1, rreq) == ncclSuccess);
  }
  CHECK(saw_scatter);

  // Without irecvConsumed the 16 slots run out and irecv says "not now".
  int posted = 0;
  std::vector<void*> held;
  for (int i = 0; i < 17; ++i) {
    void* rreq = nullptr;
    void* rdata = dst.data();
    int rsize = 100, tag = 0;
    REQUIRE(p.net->irecv(p.recv, 1, &rdata, &rsize, &tag, &dst.mhandle,
                         &rreq) == ncclSuccess);
    if (rreq != nullptr)
      ++posted;
  }
  CHECK(posted == 16);
  // More than 4 MiB, or a grouped receive, is refused in UNPACK mode.
  void* rdata[2] = {dst.data(), dst.data()};
  int big = kMax + 1, two[2] = {10, 10}, tags[2] = {0, 1};
  void* mh[2] = {dst.mhandle, dst.mhandle};
  void* rreq = nullptr;
  CHECK(p.net->irecv(p.recv, 1, rdata, &big, tags, mh, &rreq) ==
        ncclInvalidUsage);
  CHECK(p.net->irecv(p.recv, 2, rdata, two, tags, mh, &rreq) ==
        ncclInvalidUsage);
}

TEST_CASE("a peer that closes makes pending tests fail promptly") {
  Pair p;
  Buffer dst(p.net, p.recv, 1 << 20);
  void* rreq = nullptr;
  void* data = dst.data();
  int size = 1 << 20, tag = 0;
  REQUIRE(p.net->irecv(p.recv, 1, &data, &size, &tag, &dst.mhandle, &rreq) ==
          ncclSuccess);
  REQUIRE(p.net->closeSend(p.send) == ncclSuccess);
  p.send = nullptr;
  int done = 0;
  auto start = Clock::now();
  ncclResult_t result =
      wait(p.net, rreq, nullptr, &done, std::chrono::seconds(5));
  CHECK(result == ncclRemoteError);
  CHECK(Clock::now() - start < std::chrono::seconds(2));
  // New receives on the dead comm fail too.
  void* again = nullptr;
  ncclResult_t posted =
      p.net->irecv(p.recv, 1, &data, &size, &tag, &dst.mhandle, &again);
  if (posted == ncclSuccess && again != nullptr)
    posted = wait(p.net, again, nullptr, &done);
  CHECK(posted == ncclRemoteError);
}

TEST_CASE("comms close in any order with requests in flight, without hangs") {
  for (int order = 0; order < 3; ++order) {
    CAPTURE(order);
    auto start = Clock::now();
    {
      Pair p;
      Buffer src(p.net, p.send, 8 << 20, 1);
      Buffer dst(p.net, p.recv, 1 << 20);
      void* sreq = nullptr;
      void* rreq = nullptr;
      REQUIRE(p.net->isend(p.send, src.data(), 8 << 20, 0, src.mhandle,
                           &sreq) == ncclSuccess);
      void* data = dst.data();
      int size = 1 << 20, tag = 0;
      REQUIRE(p.net->irecv(p.recv, 1, &data, &size, &tag, &dst.mhandle,
                           &rreq) == ncclSuccess);
      if (order == 0) {
        REQUIRE(p.net->closeListen(p.listen) == ncclSuccess);
        p.listen = nullptr;
      } else if (order == 1) {
        REQUIRE(p.net->closeRecv(p.recv) == ncclSuccess);
        p.recv = nullptr;
        // The send either finished into the socket buffers or fails; it never
        // hangs.
        int done = 0;
        ncclResult_t result =
            wait(p.net, sreq, nullptr, &done, std::chrono::seconds(5));
        CHECK((result != ncclSuccess || done == 1));
      } else {
        REQUIRE(p.net->closeSend(p.send) == ncclSuccess);
        p.send = nullptr;
      }
      // Close what is left while the requests are still in flight (closing
      // frees the comm's registrations), before the buffers go away.
      if (p.send != nullptr)
        REQUIRE(p.net->closeSend(p.send) == ncclSuccess);
      if (p.recv != nullptr)
        REQUIRE(p.net->closeRecv(p.recv) == ncclSuccess);
      p.send = p.recv = nullptr;
      src.mhandle = dst.mhandle = nullptr;
    }
    CHECK(Clock::now() - start < std::chrono::seconds(5));
  }
}

TEST_CASE("connect to a listener that is gone fails within its deadline") {
  EnvGuard timeout("KVSOCK_CONNECT_TIMEOUT_MS", "300");
  ncclNet_v7_t* net = plugin();
  char handle[NCCL_NET_HANDLE_MAXSIZE];
  void* listen = nullptr;
  REQUIRE(net->listen(0, handle, &listen) == ncclSuccess);
  REQUIRE(net->closeListen(listen) == ncclSuccess);
  void* send = nullptr;
  ncclResult_t result = ncclSuccess;
  auto start = Clock::now();
  while (result == ncclSuccess && send == nullptr &&
         Clock::now() - start < std::chrono::seconds(5)) {
    result = net->connect(0, handle, &send, nullptr);
  }
  CHECK(send == nullptr);
  CHECK(result != ncclSuccess);
  CHECK(Clock::now() - start < std::chrono::seconds(2));
}

namespace {
// The address `p` listened on (network order).
in_addr_t listened_address(const Pair& p) {
  sockaddr_in listened{};
  std::memcpy(&listened, p.handle + 8, sizeof listened); // Handle::address
  return listened.sin_addr.s_addr;
}

// `size` bytes of pattern `seed` go from p.send to p.recv intact.
void check_moves(Pair& p, int size, int seed) {
  Buffer src(p.net, p.send, static_cast<size_t>(size), seed);
  Buffer dst(p.net, p.recv, static_cast<size_t>(size));
  int got = -1;
  ncclResult_t sr, rr;
  transfer(p, src, size, dst, size, &got, &sr, &rr);
  CHECK(sr == ncclSuccess);
  CHECK(rr == ncclSuccess);
  CHECK(got == size);
  CHECK(dst.matches(seed, static_cast<size_t>(size)));
}
} // namespace

TEST_CASE("KVSOCK_IFADDR chooses the listen address; KVSOCK_NSOCKS the data "
          "sockets") {
  EnvGuard address("KVSOCK_IFADDR", "127.0.0.1");
  for (const char* sockets : {"1", "4"}) {
    CAPTURE(sockets);
    EnvGuard nsocks("KVSOCK_NSOCKS", sockets);
    Pair p;
    CHECK(listened_address(p) == htonl(INADDR_LOOPBACK));
    check_moves(p, 3 << 20, 11);
  }
}

TEST_CASE("KVSOCK_IFADDR lists one device per entry, each listening on its "
          "own address") {
  ncclNet_v7_t* net = plugin();
  EnvGuard address("KVSOCK_IFADDR", "127.0.0.1,no-such-if0,lo,127.0.0.2");
  int ndev = 0;
  REQUIRE(net->devices(&ndev) == ncclSuccess);
  CHECK(ndev == 3); // the entry that is neither address nor interface skipped
  CHECK(warned("no-such-if0"));
  ncclNetProperties_v7_t props[3] = {};
  for (int d = 0; d < 3; ++d)
    REQUIRE(net->getProperties(d, &props[d]) == ncclSuccess);
  CHECK(std::string(props[0].name) == "lo"); // the interface of 127.0.0.1
  CHECK(std::string(props[1].name) == "lo");
  CHECK(std::string(props[2].name) == "127.0.0.2"); // no interface holds it
  CHECK(props[0].pciPath == nullptr);               // lo is virtual
  CHECK(props[0].guid != props[2].guid);
  ncclNetProperties_v7_t beyond{};
  CHECK(net->getProperties(3, &beyond) == ncclInvalidArgument);
  char handle[NCCL_NET_HANDLE_MAXSIZE];
  void* listen = nullptr;
  CHECK(net->listen(3, handle, &listen) == ncclInvalidArgument);

  // A comm on device 2 listens on 127.0.0.2 and carries bytes.
  Pair p(false, 2);
  CHECK(listened_address(p) == htonl(INADDR_LOOPBACK + 1));
  check_moves(p, 1 << 20, 17);
}

TEST_CASE("NCCL_SOCKET_IFNAME makes one device per matching interface") {
  ncclNet_v7_t* net = plugin();
  EnvGuard names("NCCL_SOCKET_IFNAME", "=lo");
  int ndev = 0;
  REQUIRE(net->devices(&ndev) == ncclSuccess);
  CHECK(ndev == 1);
  ncclNetProperties_v7_t props{};
  REQUIRE(net->getProperties(0, &props) == ncclSuccess);
  CHECK(std::string(props.name) == "lo");
}

TEST_CASE("KVSOCK_WAIT_US=0: pure polling moves the same bytes") {
  EnvGuard no_wait("KVSOCK_WAIT_US", "0");
  Pair p;
  for (int size : {8, 70000, 2 << 20}) {
    CAPTURE(size);
    check_moves(p, size, 13);
  }
}

// Median time of `calls` test() calls on a receive nothing will match.
double median_idle_test_us(Pair& p, int calls) {
  Buffer dst(p.net, p.recv, 64);
  void* data = dst.data();
  int size = 64, tag = 0;
  void* request = nullptr;
  REQUIRE(p.net->irecv(p.recv, 1, &data, &size, &tag, &dst.mhandle, &request) ==
          ncclSuccess);
  REQUIRE(request != nullptr);
  std::vector<double> took;
  for (int i = 0; i < calls; ++i) {
    int done = 0;
    auto t0 = Clock::now();
    REQUIRE(p.net->test(request, &done, nullptr) == ncclSuccess);
    took.push_back(
        std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    REQUIRE(done == 0);
  }
  std::sort(took.begin(), took.end());
  // Let it match before the buffer goes: one send, tested to the end.
  Buffer src(p.net, p.send, 64, 1);
  int received = 0, done = 0;
  void* sreq = nullptr;
  REQUIRE(p.net->isend(p.send, src.data(), 64, 0, src.mhandle, &sreq) ==
          ncclSuccess);
  REQUIRE(wait(p.net, sreq, nullptr, &done) == ncclSuccess);
  REQUIRE(wait(p.net, request, &received, &done) == ncclSuccess);
  CHECK(done == 1);
  return took[took.size() / 2];
}

TEST_CASE("kvferry's extension: a comm whose caller polls never sleeps in "
          "test()") {
  const kvferryNetExt_v1_t* ext = extension();
  REQUIRE_MESSAGE(ext != nullptr, "kvsock exports " KVFERRY_NET_EXT_V1_SYMBOL);
  CHECK(std::string(ext->name) == "kvsock");
  REQUIRE(bool(ext->setCallerPolls));
  CHECK(ext->setCallerPolls(nullptr) == ncclInvalidArgument);
  // By default an idle comm sleeps in test() (KVSOCK_WAIT_US, here 2 ms per
  // call) once it has been idle for KVSOCK_SPIN_US; told that its caller
  // polls, every call returns at once. No spin window here: on a fast core
  // all 40 calls fit in the default 10 us one, and none would sleep.
  EnvGuard wait_us("KVSOCK_WAIT_US", "2000");
  EnvGuard spin_us("KVSOCK_SPIN_US", "0");
  Pair sleepy;
  CHECK(median_idle_test_us(sleepy, 40) > 1000);
  Pair polled;
  REQUIRE(ext->setCallerPolls(polled.recv) == ncclSuccess);
  REQUIRE(ext->setCallerPolls(polled.send) == ncclSuccess);
  CHECK(median_idle_test_us(polled, 40) < 1000);
  check_moves(polled, 8, 5); // and it still moves bytes
  check_moves(polled, 2 << 20, 6);
}

namespace {
bool readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN) != 0;
}
} // namespace

TEST_CASE("kvferry's extension v2: a polled comm's wait descriptor is "
          "readable exactly while test() has news") {
  const auto* ext = extension<kvferryNetExt_v2_t>(KVFERRY_NET_EXT_V2_SYMBOL);
  REQUIRE_MESSAGE(ext != nullptr, "kvsock exports " KVFERRY_NET_EXT_V2_SYMBOL);
  REQUIRE(bool(ext->getWaitFd));
  int fd = -1;
  CHECK(ext->getWaitFd(nullptr, &fd) == ncclInvalidArgument);
  Pair p;
  REQUIRE(ext->setCallerPolls(p.recv) == ncclSuccess);
  REQUIRE(ext->setCallerPolls(p.send) == ncclSuccess);
  int recv_fd = -1, send_fd = -1, again = -1;
  REQUIRE(ext->getWaitFd(p.recv, &recv_fd) == ncclSuccess);
  REQUIRE(ext->getWaitFd(p.send, &send_fd) == ncclSuccess);
  REQUIRE(ext->getWaitFd(p.recv, &again) == ncclSuccess);
  CHECK(again == recv_fd); // one per comm, kept
  // Inline (control socket) and split over the data sockets (their threads
  // signal the descriptor).
  for (int size : {64, 3 << 20}) {
    CAPTURE(size);
    Buffer src(p.net, p.send, static_cast<size_t>(size), size % 251);
    Buffer dst(p.net, p.recv, static_cast<size_t>(size));
    void* rreq = post_recv(p.net, p.recv, dst, size);
    REQUIRE(rreq != nullptr);
    int done = 0, got = 0;
    REQUIRE(p.net->test(rreq, &done, &got) == ncclSuccess);
    REQUIRE(done == 0);
    // Nothing sent: quiet (the test drained what the last message left).
    CHECK_FALSE(readable(recv_fd, 0));
    CHECK_FALSE(readable(send_fd, 0)); // no control bytes wait for room
    ncclResult_t sent = ncclInternalError;
    std::thread sender([&] {
      void* sreq = nullptr;
      int sdone = 0;
      sent = p.net->isend(p.send, src.data(), size, 0, src.mhandle, &sreq);
      if (sent == ncclSuccess)
        sent = wait(p.net, sreq, nullptr, &sdone);
      if (sent == ncclSuccess && sdone == 0)
        sent = ncclInternalError; // not done within wait's limit
    });
    // Sleeping on the descriptor between tests must never miss news.
    while (done == 0) {
      REQUIRE(readable(recv_fd, 5000));
      REQUIRE(p.net->test(rreq, &done, &got) == ncclSuccess);
    }
    sender.join();
    CHECK(sent == ncclSuccess);
    CHECK(got == size);
    CHECK(dst.matches(size % 251, static_cast<size_t>(size)));
  }
}

TEST_CASE("kvferry's extension v2: a send that waits to be gathered makes its "
          "comm's wait descriptor readable until a test() writes it") {
  const auto* ext = extension<kvferryNetExt_v2_t>(KVFERRY_NET_EXT_V2_SYMBOL);
  REQUIRE(ext != nullptr);
  Pair p;
  REQUIRE(ext->setCallerPolls(p.send) == ncclSuccess);
  int send_fd = -1;
  REQUIRE(ext->getWaitFd(p.send, &send_fd) == ncclSuccess);
  CHECK_FALSE(readable(send_fd, 0));
  for (int size : {64, 65536}) { // both wait for the caller's test()
    CAPTURE(size);
    Buffer src(p.net, p.send, static_cast<size_t>(size), 3);
    Buffer dst(p.net, p.recv, static_cast<size_t>(size));
    void* sreq = nullptr;
    REQUIRE(p.net->isend(p.send, src.data(), size, 0, src.mhandle, &sreq) ==
            ncclSuccess);
    // A caller asleep on the descriptor would otherwise never write it.
    CHECK(readable(send_fd, 0));
    int done = 0;
    REQUIRE(p.net->test(sreq, &done, nullptr) == ncclSuccess);
    CHECK(done == 1); // written whole: the socket had room
    CHECK_FALSE(readable(send_fd, 0));
    void* rreq = post_recv(p.net, p.recv, dst, size);
    REQUIRE(rreq != nullptr);
    int got = 0;
    REQUIRE(wait(p.net, rreq, &got, &done) == ncclSuccess);
    CHECK(done == 1);
    CHECK(dst.matches(3, static_cast<size_t>(size)));
  }
}

TEST_CASE("kvferry's extension v2: a send the socket could not take whole "
          "at isend makes its comm's wait descriptor readable") {
  const auto* ext = extension<kvferryNetExt_v2_t>(KVFERRY_NET_EXT_V2_SYMBOL);
  REQUIRE(ext != nullptr);
  EnvGuard inline_all("KVSOCK_INLINE_MAX", "1048576"); // inline on any host
  EnvGuard tiny("KVSOCK_SOCKBUF", "4096");
  Pair p;
  REQUIRE(ext->setCallerPolls(p.send) == ncclSuccess);
  int send_fd = -1;
  REQUIRE(ext->getWaitFd(p.send, &send_fd) == ncclSuccess);
  constexpr int kSize = 200000; // past the gathering limit: written at isend
  Buffer src(p.net, p.send, kSize, 5);
  Buffer dst(p.net, p.recv, kSize);
  void* sreq = nullptr;
  REQUIRE(p.net->isend(p.send, src.data(), kSize, 0, src.mhandle, &sreq) ==
          ncclSuccess);
  // The socket took a few KiB; the rest waits for a test() the caller
  // makes only once the descriptor says so.
  CHECK(readable(send_fd, 0));
  void* rreq = post_recv(p.net, p.recv, dst, kSize);
  REQUIRE(rreq != nullptr);
  int sdone = 0, rdone = 0, got = 0;
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while ((!sdone || !rdone) && Clock::now() < deadline) {
    if (!sdone)
      REQUIRE(p.net->test(sreq, &sdone, nullptr) == ncclSuccess);
    if (!rdone)
      REQUIRE(p.net->test(rreq, &rdone, &got) == ncclSuccess);
  }
  CHECK(sdone == 1);
  CHECK(rdone == 1);
  CHECK(got == kSize);
  CHECK(dst.matches(5, kSize));
}
