// kvsock's fault switches: each one produces an error or a visible effect,
// never a hang.
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
    // Promptly: from the closed connection, not from a timeout (kvsock has
    // none on a blocked receive); generous for a loaded, sanitized run.
    CHECK(r.took < std::chrono::seconds(10));
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
