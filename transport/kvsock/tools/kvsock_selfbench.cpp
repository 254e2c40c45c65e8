// kvsock_selfbench: kvsock against a raw TCP socket pair on loopback, in one
// process (two threads), for tuning the plugin. Not a test and not the
// project's benchmark tool (`kvferry bench net`); built on request only:
//   cmake --build <build> --target kvsock_selfbench
//   KVSOCK_IFADDR=127.0.0.1 <build>/bin/kvsock_selfbench
//   <build>/lib/libnccl-net-kvsock.so [all|rtt|bw4m|bw64k] [reps]
// rtt: 8-byte ping-pong (raw: blocking send/recv, and busy-polling recv).
// bw4m: 2 GiB in 4 MiB messages, 8 in flight; bw64k: 1 GiB in 64 KiB messages,
// 32 in flight. Raw baseline: one blocking writer thread, one blocking reader
// thread.
#include <algorithm>
#include <arpa/inet.h>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string>
#include <sys/resource.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "kvferry/transport/net_v7.h"

using Clock = std::chrono::steady_clock;
static ncclNet_v7_t* net;

static void die(const char* m) {
  fprintf(stderr, "kvsock_selfbench: %s failed\n", m);
  exit(1);
}

struct Pair {
  void* l = nullptr;
  void* s = nullptr;
  void* r = nullptr;
};
static Pair make_pair() {
  Pair p;
  char h[128];
  if (net->listen(0, h, &p.l))
    die("listen");
  while (!p.s || !p.r) {
    if (!p.s && net->connect(0, h, &p.s, nullptr))
      die("connect");
    if (!p.r && net->accept(p.l, &p.r, nullptr))
      die("accept");
  }
  return p;
}

static void raw_pair(int* a, int* b) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(l, (sockaddr*)&addr, sizeof addr);
  listen(l, 1);
  socklen_t len = sizeof addr;
  getsockname(l, (sockaddr*)&addr, &len);
  *a = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(*a, (sockaddr*)&addr, sizeof addr))
    die("raw connect");
  *b = accept(l, nullptr, nullptr);
  close(l);
  int one = 1;
  setsockopt(*a, IPPROTO_TCP, TCP_NODELAY, &one, 4);
  setsockopt(*b, IPPROTO_TCP, TCP_NODELAY, &one, 4);
}
static void wr(int fd, const char* p, size_t n) {
  while (n) {
    ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k <= 0)
      die("send");
    p += k;
    n -= k;
  }
}
static void rd(int fd, char* p, size_t n, bool spin) {
  while (n) {
    ssize_t k = recv(fd, p, n, spin ? MSG_DONTWAIT : 0);
    if (k < 0 && errno == EAGAIN)
      continue;
    if (k <= 0)
      die("recv");
    p += k;
    n -= k;
  }
}

static double raw_rtt(int iters, bool spin) {
  int a, b;
  raw_pair(&a, &b);
  std::thread echo([&] {
    char buf[8];
    for (int i = 0; i < iters; ++i) {
      rd(b, buf, 8, spin);
      wr(b, buf, 8);
    }
  });
  char buf[8] = {};
  auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) {
    wr(a, buf, 8);
    rd(a, buf, 8, spin);
  }
  double us =
      std::chrono::duration<double, std::micro>(Clock::now() - t0).count() /
      iters;
  echo.join();
  close(a);
  close(b);
  return us;
}

static void wait_req(void* req) {
  int done = 0;
  while (!done)
    if (net->test(req, &done, nullptr))
      die("test");
}

static double kv_rtt(int iters) {
  Pair ab = make_pair(), ba = make_pair();
  std::vector<char> b1(64), b2(64), b3(64), b4(64);
  void *m1, *m2, *m3, *m4;
  net->regMr(ab.s, b1.data(), 64, NCCL_PTR_HOST, &m1);
  net->regMr(ba.r, b2.data(), 64, NCCL_PTR_HOST, &m2);
  net->regMr(ab.r, b3.data(), 64, NCCL_PTR_HOST, &m3);
  net->regMr(ba.s, b4.data(), 64, NCCL_PTR_HOST, &m4);
  std::thread echo([&] {
    for (int i = 0; i < iters; ++i) {
      void* r = nullptr;
      void* d = b3.data();
      int sz = 64, tag = 0;
      while (!r)
        net->irecv(ab.r, 1, &d, &sz, &tag, &m3, &r);
      wait_req(r);
      void* s = nullptr;
      while (!s)
        net->isend(ba.s, b4.data(), 8, 0, m4, &s);
      wait_req(s);
    }
  });
  auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) {
    void* r = nullptr;
    void* d = b2.data();
    int sz = 64, tag = 0;
    while (!r)
      net->irecv(ba.r, 1, &d, &sz, &tag, &m2, &r);
    void* s = nullptr;
    while (!s)
      net->isend(ab.s, b1.data(), 8, 0, m1, &s);
    wait_req(s);
    wait_req(r);
  }
  double us =
      std::chrono::duration<double, std::micro>(Clock::now() - t0).count() /
      iters;
  echo.join();
  net->deregMr(ab.s, m1);
  net->deregMr(ba.r, m2);
  net->deregMr(ab.r, m3);
  net->deregMr(ba.s, m4);
  net->closeSend(ab.s);
  net->closeRecv(ab.r);
  net->closeListen(ab.l);
  net->closeSend(ba.s);
  net->closeRecv(ba.r);
  net->closeListen(ba.l);
  return us;
}

static double raw_bw(size_t msg, size_t total) {
  int a, b;
  raw_pair(&a, &b);
  std::vector<char> src(msg, 1), dst(msg);
  size_t n = total / msg;
  auto t0 = Clock::now();
  std::thread rx([&] {
    for (size_t i = 0; i < n; ++i)
      rd(b, dst.data(), msg, false);
  });
  for (size_t i = 0; i < n; ++i)
    wr(a, src.data(), msg);
  rx.join();
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  close(a);
  close(b);
  return n * msg / s / 1e9;
}

static double kv_bw(size_t msg, size_t total, int window) {
  Pair p = make_pair();
  size_t slots = window;
  std::vector<char> src(msg * slots, 1), dst(msg * slots);
  void *ms, *mr;
  net->regMr(p.s, src.data(), (int)src.size(), NCCL_PTR_HOST, &ms);
  net->regMr(p.r, dst.data(), (int)dst.size(), NCCL_PTR_HOST, &mr);
  size_t n = total / msg;
  auto t0 = Clock::now();
  std::thread rx([&] {
    std::deque<void*> q;
    size_t posted = 0, done_n = 0;
    while (done_n < n) {
      while (posted < n && q.size() < (size_t)window) {
        void* r = nullptr;
        void* d = dst.data() + (posted % slots) * msg;
        int sz = (int)msg, tag = 0;
        net->irecv(p.r, 1, &d, &sz, &tag, &mr, &r);
        if (!r)
          break;
        q.push_back(r);
        ++posted;
      }
      int done = 0;
      if (net->test(q.front(), &done, nullptr))
        die("rtest");
      if (done) {
        q.pop_front();
        ++done_n;
      }
    }
  });
  std::deque<void*> q;
  size_t posted = 0, done_n = 0;
  while (done_n < n) {
    while (posted < n && q.size() < (size_t)window) {
      void* s = nullptr;
      net->isend(p.s, src.data() + (posted % slots) * msg, (int)msg, 0, ms, &s);
      if (!s)
        break;
      q.push_back(s);
      ++posted;
    }
    int done = 0;
    if (net->test(q.front(), &done, nullptr))
      die("stest");
    if (done) {
      q.pop_front();
      ++done_n;
    }
  }
  rx.join();
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  net->deregMr(p.s, ms);
  net->deregMr(p.r, mr);
  net->closeSend(p.s);
  net->closeRecv(p.r);
  net->closeListen(p.l);
  return n * msg / s / 1e9;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr,
            "usage: %s <libnccl-net-kvsock.so> [all|rtt|bw4m|bw64k] [reps]\n",
            argv[0]);
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW);
  if (!lib) {
    fprintf(stderr, "%s\n", dlerror());
    return 1;
  }
  net = (ncclNet_v7_t*)dlsym(lib, "ncclNetPlugin_v7");
  if (!net || net->init(nullptr))
    die("loading ncclNetPlugin_v7");
  std::string mode = argc > 2 ? argv[2] : "all";
  int reps = argc > 3 ? atoi(argv[3]) : 3;
  for (int r = 0; r < reps; ++r) {
    if (mode == "kvrtt") { // kvsock only, for profiling
      printf("rtt8: kvsock %.2f us\n", kv_rtt(20000));
    }
    if (mode == "all" || mode == "rtt") {
      double a = raw_rtt(20000, false), s = raw_rtt(20000, true),
             k = kv_rtt(20000);
      printf("rtt8: raw_blocking %.2f us raw_spin %.2f us kvsock %.2f us "
             "ratio(kv/raw_blocking) %.2f\n",
             a, s, k, k / a);
    }
    if (mode == "all" || mode == "bw4m") {
      double a = raw_bw(4 << 20, 2ull << 30), k = kv_bw(4 << 20, 2ull << 30, 8);
      printf("bw 4MiB: raw %.2f GB/s kvsock %.2f GB/s ratio %.2f\n", a, k,
             k / a);
    }
    if (mode == "all" || mode == "bw64k") {
      double a = raw_bw(64 << 10, 1ull << 30),
             k = kv_bw(64 << 10, 1ull << 30, 32);
      printf("bw 64KiB x32: raw %.2f GB/s kvsock %.2f GB/s ratio %.2f\n", a, k,
             k / a);
    }
    fflush(stdout);
  }
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("peak RSS %ld KiB\n", ru.ru_maxrss);
}
