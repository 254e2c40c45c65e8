// `kvferry bench net`: a net plugin against a raw TCP socket, in the same
// run, between two processes on this machine. The parent sends; it starts
// itself again (fork + exec of /proc/self/exe) as the receiver, and the two
// talk over a socketpair for setup and pacing. Per size: GB/s and per-message
// latency percentiles through kvferry's channel wrapper, and GB/s over one
// loopback TCP connection (blocking writes/reads of whole messages); then an
// 8-byte ping-pong round trip over both. Buffers are registered once and
// reused; at most max(size, 256 MiB) of buffer per side and memory.
//
// --memory host|cuda|both: the plugin rounds read and write host memory, GPU
// memory (registered as NCCL_PTR_CUDA: kvsock stages it through pinned
// buffers) or both, side by side in the same run so that the cost of the GPU
// memory is the ratio of two columns measured together. The sender's GPU
// memory is on --gpu, the receiver's on --peer-gpu (default: the same GPU).
#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sstream>
#include <string>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "exec_vector.hpp"
#include "kvferry/transport/channel.hpp"
#include "kvferry/transport/gpu_copy.hpp"
#include "kvferry/transport/gpu_info.hpp"
#include "kvferry/transport/gpu_topology.hpp"
#include "percentile.hpp"
#include "size_list.hpp"

namespace kvferry::app {
namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;
namespace tp = transport;

struct bench_options {
  std::string plugin_name;
  std::string sizes = "4K..256M";
  int depth = 32;
  int comms = 1;
  long iters = 0; // 0: per size, about 512 MiB or 20000 messages
  long rtt_iters = 2000;
  int repeat = 3; // rounds per size; medians reported
  size_t chunk_bytes = size_t{4} << 20;
  std::string json_path;
  double timeout_s = 60;
  int tcp_depth = 8; // the TCP baseline's messages in flight
  // host, cuda or both; empty: both where a GPU exists, else host.
  std::string memory;
  int gpu = 0;
  int peer_gpu = -1; // the receiver's GPU; -1: --gpu
  int serve_fd = -1; // set in the receiver process only
};

constexpr size_t pool_cap = size_t{256} << 20;

[[noreturn]] void fail(const std::string& why) {
  throw std::runtime_error(why);
}

// ---- which memory the plugin rounds use ------------------------------------

enum class bench_memory { host, cuda };
const char* name_of(bench_memory m) {
  return m == bench_memory::host ? "host" : "cuda";
}

struct memory_choice {
  std::vector<bench_memory> memories;
  std::string note; // one line saying what was chosen and why
};

// An explicit --memory is obeyed or fails naming why; without it both
// memories are measured where a GPU exists, host memory otherwise.
memory_choice choose_memories(const std::string& requested,
                              const tp::gpu_topology& gpus, int gpu,
                              int peer_gpu) {
  if (requested == "host")
    return {{bench_memory::host}, "memory: host (as requested)"};
  if (requested != "" && requested != "cuda" && requested != "both")
    fail("--memory: expected host, cuda or both, got '" + requested + "'");
  if (requested.empty() && gpus.device_count() == 0)
    return {{bench_memory::host},
            "memory: host only (no CUDA GPU: " + gpus.why_none() +
                "; --memory cuda needs one)"};
  if (gpus.device_count() == 0)
    fail("--memory " + requested + " needs a CUDA GPU: " + gpus.why_none());
  tp::check_gpu_ordinal(gpus, gpu, "--gpu");
  if (peer_gpu != -1)
    tp::check_gpu_ordinal(gpus, peer_gpu, "--peer-gpu");
  const auto where =
      peer_gpu < 0 || peer_gpu == gpu
          ? fmt::format("GPU {}", gpu)
          : fmt::format("GPU {} (sender) and GPU {} (receiver)", gpu, peer_gpu);
  if (requested == "cuda")
    return {{bench_memory::cuda}, "memory: cuda on " + where};
  return {{bench_memory::host, bench_memory::cuda},
          fmt::format(
              "memory: host and cuda on {}, side by side{}", where,
              requested.empty()
                  ? " (default where a GPU exists; --memory host for host only)"
                  : "")};
}

std::string memory_option(const std::vector<bench_memory>& memories) {
  return memories.size() == 2 ? "both" : name_of(memories.front());
}

// ---- sizes

// "4K..256M" (factors of 4) or "4K,64K,1M"; each size as size_list.hpp
// parses it for every benchmark.
std::vector<size_t> bench_sizes(const std::string& text) {
  std::vector<size_t> out;
  try {
    if (auto dots = text.find(".."); dots != std::string::npos) {
      size_t low = parse_size(text.substr(0, dots)),
             high = parse_size(text.substr(dots + 2));
      if (low == 0 || high < low)
        fail("--sizes: expected LOW..HIGH with 0 < LOW <= HIGH");
      for (size_t s = low; s <= high; s *= 4)
        out.push_back(s);
    } else {
      out = parse_sizes(text);
    }
  } catch (const std::logic_error& e) { // std::stod's, or an unknown unit
    fail(std::string("--sizes: ") + e.what());
  }
  for (auto s : out)
    if (s == 0 || s > (size_t{1} << 30))
      fail("--sizes: each size must be in 1 B..1 GiB");
  if (out.empty())
    fail("--sizes: no sizes");
  return out;
}

std::string human(size_t bytes) {
  if (bytes >= (size_t{1} << 20) && bytes % (size_t{1} << 20) == 0)
    return fmt::format("{}M", bytes >> 20);
  if (bytes >= 1024 && bytes % 1024 == 0)
    return fmt::format("{}K", bytes >> 10);
  return fmt::format("{}", bytes);
}

long iterations_for(const bench_options& o, size_t size) {
  if (o.iters > 0)
    return o.iters;
  return std::clamp<long>(static_cast<long>((size_t{512} << 20) / size), 4,
                          20000);
}

// ---- the control line between the two processes

class control {
public:
  explicit control(int fd, double timeout_s) : fd_(fd), timeout_s_(timeout_s) {}
  void send(const std::string& line) {
    std::string text = line + "\n";
    size_t done = 0;
    while (done < text.size()) {
      auto n = ::write(fd_, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        fail(fmt::format("bench net: the other process is gone ({})",
                         std::strerror(errno)));
      done += static_cast<size_t>(n);
    }
  }
  std::string receive() {
    auto deadline =
        clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                std::chrono::duration<double>(timeout_s_));
    for (;;) {
      if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
        auto line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                      deadline - clock_type::now())
                      .count();
      if (left <= 0)
        fail(
            fmt::format("bench net: no word from the other process in {:.0f} s",
                        timeout_s_));
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000))) <= 0)
        continue;
      char chunk[4096];
      auto n = ::read(fd_, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        fail("bench net: the other process closed the control line (did it "
             "crash?)");
      buffer_.append(chunk, static_cast<size_t>(n));
    }
  }
  std::string expect(const std::string& word) {
    auto line = receive();
    if (line.rfind(word, 0) != 0)
      fail(fmt::format(
          "bench net: expected '{}' from the other process, got '{}'", word,
          line));
    return line.size() > word.size() ? line.substr(word.size() + 1)
                                     : std::string();
  }

private:
  int fd_;
  double timeout_s_;
  std::string buffer_;
};

std::string to_hex(const std::vector<tp::net_handle>& handles) {
  std::string out;
  for (auto& h : handles)
    for (char c : h)
      out += fmt::format("{:02x}", static_cast<unsigned char>(c));
  return out;
}
std::vector<tp::net_handle> from_hex(const std::string& hex) {
  std::vector<tp::net_handle> out(hex.size() / (2 * NCCL_NET_HANDLE_MAXSIZE));
  for (size_t i = 0; i < out.size(); ++i)
    for (size_t b = 0; b < NCCL_NET_HANDLE_MAXSIZE; ++b)
      out[i][b] = static_cast<char>(std::stoi(
          hex.substr((i * NCCL_NET_HANDLE_MAXSIZE + b) * 2, 2), nullptr, 16));
  return out;
}

// ---- TCP baseline sockets

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// The raw-TCP baseline's loop, either side: `iters` messages of `size` bytes
// over one stream, `depth` in flight. Each sendmsg/recvmsg (MSG_DONTWAIT)
// covers the rest of the current message and up to depth-1 more, message m
// at buffer(m); on EAGAIN it polls again, yielding the core as the plugin
// rounds' progress loops do. A blocking write of one whole message at a time
// understates TCP (issue #18): this is what a polling TCP transport does.
template<class Buffer>
void stream_messages(int fd, bool sending, size_t size, long iters, int depth,
                     double timeout_s, Buffer&& buffer) {
  std::vector<iovec> iov(static_cast<size_t>(std::max(depth, 1)));
  auto deadline =
      clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                              std::chrono::duration<double>(timeout_s));
  long message = 0;
  size_t offset = 0; // bytes of `message` already moved
  while (message < iters) {
    size_t count = 0;
    for (long m = message; m < iters && count < iov.size(); ++m, ++count) {
      size_t skip = m == message ? offset : 0;
      iov[count] = {buffer(m) + skip, size - skip};
    }
    msghdr msg{};
    msg.msg_iov = iov.data();
    msg.msg_iovlen = count;
    auto n = sending ? ::sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL)
                     : ::recvmsg(fd, &msg, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      if (clock_type::now() > deadline)
        fail(fmt::format("bench net: TCP baseline {} not done in {:.0f} s",
                         sending ? "sends" : "receives", timeout_s));
      std::this_thread::yield();
      continue;
    }
    if (n <= 0)
      fail(fmt::format("bench net: TCP baseline {} failed: {}",
                       sending ? "send" : "receive",
                       n == 0 ? "peer closed" : std::strerror(errno)));
    for (auto left = static_cast<size_t>(n); left > 0;) {
      size_t step = std::min(left, size - offset);
      offset += step;
      left -= step;
      if (offset == size) {
        ++message;
        offset = 0;
      }
    }
  }
}

void write_all(int fd, const char* data, size_t bytes) {
  while (bytes) {
    auto n = ::send(fd, data, bytes, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      fail(fmt::format("bench net: TCP baseline write failed: {}",
                       std::strerror(errno)));
    data += n;
    bytes -= static_cast<size_t>(n);
  }
}
void read_all(int fd, char* data, size_t bytes) {
  while (bytes) {
    auto n = ::recv(fd, data, bytes, MSG_WAITALL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      fail(fmt::format("bench net: TCP baseline read failed: {}",
                       n == 0 ? "peer closed" : std::strerror(errno)));
    data += n;
    bytes -= static_cast<size_t>(n);
  }
}

// ---- both sides' plugin state

size_t pool_bytes(const std::vector<size_t>& sizes, int depth) {
  size_t largest = *std::max_element(sizes.begin(), sizes.end());
  size_t want = 0;
  for (auto s : sizes)
    want = std::max(
        want, std::min(s * static_cast<size_t>(depth), std::max(s, pool_cap)));
  return std::max(want, largest);
}
size_t slots_for(size_t pool, size_t size) {
  return std::max<size_t>(1, pool / size);
}

char pattern_byte(size_t i) {
  return static_cast<char>((i * 7 + (i >> 12)) & 0xff);
}
std::vector<char> pattern(size_t bytes) {
  std::vector<char> out(bytes);
  for (size_t i = 0; i < bytes; ++i)
    out[i] = pattern_byte(i);
  return out;
}
bool matches_pattern(const char* data, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i)
    if (data[i] != pattern_byte(i))
      return false;
  return true;
}
// GPU buffers get gpu_fill_pattern's pattern (a prefix of a longer fill is the
// fill of the shorter length), so the receiver verifies on the GPU against a
// reference filled with the same seed.
constexpr std::uint64_t cuda_pattern_seed = 0x6b76'6665'7272;
constexpr std::uint64_t cuda_poison_seed = 0xdead'beef;

template<class Channel>
void wait_one(Channel& ch, tp::op_id want, double timeout_s, const char* what) {
  auto deadline =
      clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                              std::chrono::duration<double>(timeout_s));
  bool done = false;
  while (!done) {
    ch.poll([&](const tp::completion& c) {
      if (!c.ok)
        fail(fmt::format("bench net: {} failed: {}", what, c.error));
      if (c.id == want)
        done = true;
    });
    if (!done && clock_type::now() > deadline)
      fail(fmt::format("bench net: {} not done in {:.0f} s", what, timeout_s));
  }
}

long peak_rss_kb(int who) {
  rusage usage{};
  ::getrusage(who, &usage);
  return usage.ru_maxrss;
}

// The receiver's buffer for one memory: slots of the message size, registered
// once; GPU memory also keeps the pattern its data must match.
struct receive_pool {
  bench_memory memory = bench_memory::host;
  int gpu = -1;
  std::vector<char> host;
  tp::gpu_region device, reference;
  tp::registration mr; // last: deregistered before the memory is freed

  char* data() {
    return memory == bench_memory::host
               ? host.data()
               : reinterpret_cast<char*>(device.data());
  }
  size_t bytes() const {
    return memory == bench_memory::host ? host.size() : device.size();
  }

  // Slot 0 is overwritten before each round, so data left by an earlier round
  // cannot pass the check after this one.
  void poison(size_t size) {
    if (memory == bench_memory::host)
      std::memset(host.data(), 0x5a, size);
    else
      tp::gpu_fill_pattern(gpu, device.data(), size, cuda_poison_seed);
  }
  bool verify(size_t size) {
    if (memory == bench_memory::host)
      return matches_pattern(host.data(), size);
    return tp::gpu_count_mismatches(gpu, reference.data(), device.data(),
                                    {{0, 0, size}}) == 0;
  }
};

receive_pool make_receive_pool(bench_memory memory, int gpu, size_t bytes,
                               size_t largest, tp::recv_channel& rx) {
  receive_pool pool;
  pool.memory = memory;
  if (memory == bench_memory::host) {
    pool.host.resize(bytes);
    pool.mr = rx.register_memory(pool.host.data(), bytes, NCCL_PTR_HOST);
    return pool;
  }
  pool.gpu = gpu;
  pool.device = tp::gpu_region::allocate_device(gpu, bytes);
  pool.reference = tp::gpu_region::allocate_device(gpu, largest);
  tp::gpu_fill_pattern(gpu, pool.reference.data(), largest, cuda_pattern_seed);
  pool.mr = rx.register_memory(pool.device.data(), bytes, NCCL_PTR_CUDA);
  return pool;
}

receive_pool* find_pool(std::vector<receive_pool>& pools, bench_memory memory) {
  for (auto& p : pools)
    if (p.memory == memory)
      return &p;
  return nullptr;
}
receive_pool& pool_for(std::vector<receive_pool>& pools,
                       const std::string& memory) {
  for (auto& p : pools)
    if (memory == name_of(p.memory))
      return p;
  fail("bench net receiver: the sender asked for " + memory +
       " memory, which this receiver did not set up");
}

// ---- the receiver (child process)

int serve(const bench_options& o) {
  control ctl(o.serve_fd, o.timeout_s);
  auto sizes = bench_sizes(o.sizes);
  auto net = tp::plugin::load(o.plugin_name);
  tp::channel_options copt;
  copt.comms = o.comms;
  copt.chunk_bytes = o.chunk_bytes;
  copt.peer = "bench sender";
  tp::channel_listener forward(net, 0, copt);
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listener, 1) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    fail(fmt::format("bench net receiver: TCP listen on 127.0.0.1 failed: {}",
                     std::strerror(errno)));
  ctl.send(fmt::format("hello {} {}", ntohs(addr.sin_port),
                       to_hex(forward.handles())));
  auto back_handles = from_hex(ctl.expect("back"));
  tp::channel_options back_opt = copt;
  back_opt.comms = 1;
  tp::channel_connector backward(net, 0, back_handles, back_opt);
  bool accepted = false, connected = false;
  auto deadline = clock_type::now() + 30s;
  while (!(accepted && connected)) {
    if (!accepted)
      accepted = forward.try_accept();
    if (!connected)
      connected = backward.try_connect();
    if (clock_type::now() > deadline)
      fail("bench net receiver: plugin connect/accept not done in 30 s");
  }
  auto rx = forward.take();
  auto tx = backward.take();
  pollfd pl{listener, POLLIN, 0};
  if (::poll(&pl, 1, 30000) != 1)
    fail(
        "bench net receiver: the TCP baseline connection did not come in 30 s");
  int tcp = ::accept(listener, nullptr, nullptr);
  ::close(listener);
  set_nodelay(tcp);

  const size_t largest = *std::max_element(sizes.begin(), sizes.end());
  std::vector<receive_pool> pools;
  for (auto memory :
       choose_memories(o.memory, *tp::system_gpu_topology(), o.gpu, -1)
           .memories)
    pools.push_back(make_receive_pool(memory, o.gpu, pool_bytes(sizes, o.depth),
                                      largest, rx));
  // The TCP baseline reads into host memory: the host pool where there is one.
  std::vector<char> tcp_only;
  auto* host_pool = find_pool(pools, bench_memory::host);
  if (!host_pool)
    tcp_only.resize(pool_bytes(sizes, o.depth));
  std::vector<char>& tcp_pool = host_pool ? host_pool->host : tcp_only;
  std::vector<char> small(64);
  auto small_rx = rx.register_memory(small.data(), small.size());
  auto small_tx = tx.register_memory(small.data(), small.size());
  ctl.send("connected");
  for (;;) {
    std::stringstream line(ctl.receive());
    std::string cmd;
    line >> cmd;
    if (cmd == "plugin") {
      size_t size;
      long iters;
      std::string memory;
      line >> size >> iters >> memory;
      auto& pool = pool_for(pools, memory);
      pool.poison(size);
      size_t slots = slots_for(pool.bytes(), size);
      long posted = 0, received = 0;
      auto post_more = [&] {
        while (posted < iters && posted - received < o.depth) {
          rx.post_recv(pool.data() + (posted % slots) * size, size, pool.mr);
          ++posted;
        }
      };
      post_more();
      ctl.send("ready");
      auto end = clock_type::now() + std::chrono::duration<double>(o.timeout_s);
      while (received < iters) {
        // Yield when idle: on a small machine the plugin's own threads need the
        // core.
        if (!rx.poll([&](const tp::completion& c) {
              if (!c.ok)
                fail(fmt::format("bench net receiver: receive failed: {}",
                                 c.error));
              ++received;
            }))
          std::this_thread::yield();
        post_more();
        if (clock_type::now() > end)
          fail("bench net receiver: receives not done in time");
      }
      // Report the arrival before verifying: the sender stops its clock at
      // "arrived", so the check (~0.1 s at 256 MiB) is not counted as
      // transfer time (the TCP round verifies nothing).
      ctl.send("arrived");
      ctl.send(pool.verify(size) ? "done ok" : "done corrupt");
    } else if (cmd == "tcp") {
      size_t size;
      long iters;
      int depth;
      line >> size >> iters >> depth;
      size_t slots = slots_for(tcp_pool.size(), size);
      ctl.send("ready");
      stream_messages(tcp, false, size, iters, depth, o.timeout_s, [&](long m) {
        return tcp_pool.data() + (static_cast<size_t>(m) % slots) * size;
      });
      ctl.send("done ok");
    } else if (cmd == "rtt") {
      long n;
      line >> n;
      ctl.send("ready");
      for (long i = 0; i < n; ++i) {
        auto r = rx.post_recv(small.data(), 8, small_rx);
        wait_one(rx, r, o.timeout_s, "ping receive");
        auto s = tx.post_send(small.data(), 8, small_tx);
        wait_one(tx, s, o.timeout_s, "pong send");
      }
    } else if (cmd == "tcprtt") {
      long n;
      line >> n;
      ctl.send("ready");
      for (long i = 0; i < n; ++i) {
        read_all(tcp, small.data(), 8);
        write_all(tcp, small.data(), 8);
      }
    } else if (cmd == "bye") {
      ::close(tcp);
      ctl.send(fmt::format("rss {}", peak_rss_kb(RUSAGE_SELF)));
      return 0;
    } else {
      fail("bench net receiver: unknown command '" + cmd + "'");
    }
  }
}

// ---- the sender (parent)

struct memory_result {
  bench_memory memory = bench_memory::host;
  double gbps = 0, p50_us = 0, p99_us = 0;
  bool verified = true;
};

struct size_result {
  size_t size = 0;
  long iters = 0;
  double baseline_gbps = 0;
  std::vector<memory_result> memories; // in the run's order: host first

  bool verified() const {
    return std::all_of(memories.begin(), memories.end(),
                       [](auto& m) { return m.verified; });
  }
  const memory_result* find(bench_memory memory) const {
    for (auto& m : memories)
      if (m.memory == memory)
        return &m;
    return nullptr;
  }
  // cuda GB/s over host GB/s when both ran (the cost of GPU memory), else 0.
  double cuda_over_host() const {
    auto* host = find(bench_memory::host);
    auto* cuda = find(bench_memory::cuda);
    return host && cuda && host->gbps > 0 ? cuda->gbps / host->gbps : 0;
  }
};

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

// The receiver: this binary again, exec'd with --serve-fd; killed if it
// lingers.
struct receiver_process {
  pid_t pid = -1;
  int fd = -1;
  int status = 0;

  // The receiver's command line, serving on socket `fd`.
  static std::vector<std::string> receiver_args(const bench_options& o,
                                                const std::string& plugin_path,
                                                const std::string& memory,
                                                int fd) {
    std::vector<std::string> args{"kvferry", "bench", "net"};
    auto add = [&args](const char* flag, std::string value) {
      args.push_back(flag);
      args.push_back(std::move(value));
    };
    add("--serve-fd", std::to_string(fd));
    add("--plugin", plugin_path);
    add("--sizes", o.sizes);
    add("--depth", std::to_string(o.depth));
    add("--comms", std::to_string(o.comms));
    add("--chunk-bytes", std::to_string(o.chunk_bytes));
    add("--timeout-s", std::to_string(o.timeout_s));
    add("--memory", memory);
    add("--gpu", std::to_string(o.peer_gpu < 0 ? o.gpu : o.peer_gpu));
    return args;
  }

  void start(const bench_options& o, const std::string& plugin_path,
             const std::string& memory) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
      fail(fmt::format("bench net: socketpair failed: {}",
                       std::strerror(errno)));
    // Everything the child needs is built before fork: the caller may run
    // threads (bench endpoint's actors, the plugin's), and a child that
    // allocates before exec can wait forever on a lock one of them held.
    const auto args = receiver_args(o, plugin_path, memory, sv[1]);
    auto argv = exec_vector(args);
    static constexpr char exec_failed[] =
        "bench net: exec of /proc/self/exe failed\n";
    std::fflush(nullptr);
    pid = ::fork();
    if (pid < 0)
      fail(fmt::format("bench net: fork failed: {}", std::strerror(errno)));
    if (pid == 0) {
      ::close(sv[0]);
      ::execv("/proc/self/exe", argv.data());
      [[maybe_unused]] auto n =
          ::write(STDERR_FILENO, exec_failed, sizeof exec_failed - 1);
      ::_exit(127);
    }
    ::close(sv[1]);
    fd = sv[0];
  }

  void finish() {
    if (pid <= 0)
      return;
    for (int i = 0; i < 500; ++i) {
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        return;
      }
      ::usleep(10000);
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    pid = -1;
  }

  ~receiver_process() {
    if (fd >= 0)
      ::close(fd);
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
};

class sender {
public:
  explicit sender(bench_options o)
      : o_(std::move(o)), sizes_(bench_sizes(o_.sizes)) {}

  int run() {
    if (o_.depth < 1 || o_.comms < 1 || o_.repeat < 1)
      fail("bench net: --depth, --comms and --repeat must be >= 1");
    memories_ = choose_memories(o_.memory, *tp::system_gpu_topology(), o_.gpu,
                                o_.peer_gpu);
    net_ = tp::plugin::load(o_.plugin_name);
    fmt::print("kvferry bench net: plugin {} ({}), depth {}, comms {}, chunk "
               "{}, {} rounds per size\n",
               net_->name(), net_->path(), o_.depth, o_.comms,
               human(o_.chunk_bytes), o_.repeat);
    fmt::print("baseline: {}\n", baseline_name());
    fmt::print("{}\n", memories_.note);
    if (uses(bench_memory::cuda))
      fmt::print("cuda memory: {}\n", cuda_path());
    child_.start(o_, net_->path(), memory_option(memories_.memories));
    control ctl(child_.fd, o_.timeout_s);
    connect(ctl);
    std::vector<size_result> results;
    print_header();
    for (auto size : sizes_) {
      results.push_back(measure_size(ctl, size));
      print_row(results.back());
    }
    auto rtt = round_trips(ctl);
    ctl.send("bye");
    long receiver_rss = std::stol(ctl.expect("rss"));
    child_.finish();
    long sender_rss = peak_rss_kb(RUSAGE_SELF);
    long children_rss = peak_rss_kb(RUSAGE_CHILDREN);
    fmt::print("8-byte round trip (host memory): plugin p50 {:.1f} us (p99 "
               "{:.1f}, mean {:.1f}), tcp p50 {:.1f} us (p99 {:.1f}, mean "
               "{:.1f}), ratio {:.2f}\n",
               rtt.plugin_p50, rtt.plugin_p99, rtt.plugin_mean, rtt.tcp_p50,
               rtt.tcp_p99, rtt.tcp_mean, rtt.plugin_p50 / rtt.tcp_p50);
    fmt::print("peak RSS: sender {:.1f} MiB, receiver {:.1f} MiB "
               "(RUSAGE_CHILDREN {:.1f} MiB)\n",
               sender_rss / 1024.0, receiver_rss / 1024.0,
               children_rss / 1024.0);
    if (!o_.json_path.empty())
      write_json(results, rtt, sender_rss, receiver_rss);
    bool all_ok = std::all_of(results.begin(), results.end(),
                              [](auto& r) { return r.verified(); });
    return all_ok ? 0 : 1;
  }

private:
  struct rtt_result {
    double plugin_p50 = 0, plugin_mean = 0, tcp_p50 = 0, tcp_mean = 0;
    double plugin_p99 = 0, tcp_p99 = 0; // issue #18: p99 <= 2x p50
    long iters = 0;
  };

  void connect(control& ctl) {
    std::stringstream hello(ctl.expect("hello"));
    int port = 0;
    std::string hex;
    hello >> port >> hex;
    tp::channel_options back_opt;
    back_opt.peer = "bench receiver";
    back_opt.chunk_bytes = o_.chunk_bytes;
    tp::channel_listener backward(net_, 0, back_opt);
    ctl.send("back " + to_hex(backward.handles()));
    tp::channel_options copt = back_opt;
    copt.comms = o_.comms;
    tp::channel_connector forward(net_, 0, from_hex(hex), copt);
    bool connected = false, accepted = false;
    auto deadline = clock_type::now() + 30s;
    while (!(connected && accepted)) {
      if (!connected)
        connected = forward.try_connect();
      if (!accepted)
        accepted = backward.try_accept();
      if (clock_type::now() > deadline)
        fail("bench net: plugin connect/accept not done in 30 s");
    }
    tx_ = std::make_unique<tp::send_channel>(forward.take());
    rx_ = std::make_unique<tp::recv_channel>(backward.take());
    tcp_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(tcp_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      fail(fmt::format("bench net: TCP connect to 127.0.0.1:{} failed: {}",
                       port, std::strerror(errno)));
    set_nodelay(tcp_);
    ctl.expect("connected");
    const size_t largest = *std::max_element(sizes_.begin(), sizes_.end());
    source_ = pattern(largest);
    source_mr_ = tx_->register_memory(source_.data(), source_.size());
    if (uses(bench_memory::cuda)) {
      source_device_ = tp::gpu_region::allocate_device(o_.gpu, largest);
      tp::gpu_fill_pattern(o_.gpu, source_device_.data(), largest,
                           cuda_pattern_seed);
      source_device_mr_ =
          tx_->register_memory(source_device_.data(), largest, NCCL_PTR_CUDA);
    }
    small_.assign(64, 1);
    small_tx_ = tx_->register_memory(small_.data(), small_.size());
    small_rx_ = rx_->register_memory(small_.data(), small_.size());
  }

  // `repeat` rounds, each the plugin in every memory, then TCP, with the same
  // messages; the median of each column is reported. Interleaving the
  // columns gives them the same machine load, which tames a noisy machine.
  size_result measure_size(control& ctl, size_t size) {
    size_result r;
    r.size = size;
    r.iters = iterations_for(o_, size);
    const auto& memories = memories_.memories;
    std::vector<std::vector<double>> latencies(memories.size()),
        plugin_gbps(memories.size());
    std::vector<double> tcp_gbps;
    for (auto memory : memories)
      r.memories.push_back(memory_result{memory});
    for (auto& l : latencies)
      l.reserve(static_cast<size_t>(r.iters * o_.repeat));
    for (int round = 0; round < o_.repeat; ++round) {
      for (size_t m = 0; m < memories.size(); ++m)
        plugin_gbps[m].push_back(plugin_round(ctl, size, r.iters, memories[m],
                                              latencies[m],
                                              r.memories[m].verified));
      tcp_gbps.push_back(tcp_round(ctl, size, r.iters));
    }
    for (size_t m = 0; m < memories.size(); ++m) {
      r.memories[m].gbps = percentile(plugin_gbps[m], 0.5);
      r.memories[m].p50_us = percentile(latencies[m], 0.50);
      r.memories[m].p99_us = percentile(latencies[m], 0.99);
    }
    r.baseline_gbps = percentile(tcp_gbps, 0.5);
    return r;
  }

  // Who carries GPU memory: the plugin itself (ptrSupport has CUDA; kvsock
  // stages through its own pinned buffers) or the channel wrapper, which
  // stages it for plugins without CUDA support (e.g. kvsock run with
  // KVSOCK_PTR_SUPPORT=host).
  bool plugin_takes_cuda() const { return net_->device(0).supports_cuda(); }
  std::string cuda_path() const {
    return plugin_takes_cuda()
               ? "registered with the plugin as NCCL_PTR_CUDA (its ptrSupport "
                 "has CUDA)"
               : "the plugin's ptrSupport lacks NCCL_PTR_CUDA: the channel "
                 "wrapper stages it through pinned buffers";
  }

  bool uses(bench_memory memory) const {
    auto& m = memories_.memories;
    return std::find(m.begin(), m.end(), memory) != m.end();
  }

  // Columns: GB/s per memory (and cuda/host), TCP, each memory over TCP, then
  // per-message latency per memory.
  void print_header() const {
    std::string line = fmt::format("{:>6} {:>7}", "size", "iters");
    for (auto m : memories_.memories)
      line += fmt::format(" {:>10}", fmt::format("{} GB/s", name_of(m)));
    if (uses(bench_memory::host) && uses(bench_memory::cuda))
      line += fmt::format(" {:>9}", "cuda/host");
    line += fmt::format(" {:>10}", "tcp GB/s");
    for (auto m : memories_.memories)
      line += fmt::format(" {:>8}", fmt::format("{}/tcp", name_of(m)));
    for (auto m : memories_.memories)
      line +=
          fmt::format(" {:>12} {:>12}", fmt::format("{} p50 us", name_of(m)),
                      fmt::format("{} p99 us", name_of(m)));
    fmt::print("{}\n", line);
  }
  void print_row(const size_result& r) const {
    std::string line = fmt::format("{:>6} {:>7}", human(r.size), r.iters);
    for (auto& m : r.memories)
      line += fmt::format(" {:>10.3f}", m.gbps);
    if (r.memories.size() == 2)
      line += fmt::format(" {:>9.2f}", r.cuda_over_host());
    line += fmt::format(" {:>10.3f}", r.baseline_gbps);
    for (auto& m : r.memories)
      line += fmt::format(" {:>8.2f}", m.gbps / r.baseline_gbps);
    for (auto& m : r.memories)
      line += fmt::format(" {:>12.1f} {:>12.1f}", m.p50_us, m.p99_us);
    for (auto& m : r.memories)
      if (!m.verified)
        line += fmt::format("  DATA CORRUPT ({} memory)", name_of(m.memory));
    fmt::print("{}\n", line);
    std::fflush(stdout);
  }

  // Every send from the same source buffer, `depth` in flight. GB/s counts
  // until the receiver reports the last arrival.
  double plugin_round(control& ctl, size_t size, long iters,
                      bench_memory memory, std::vector<double>& latencies,
                      bool& verified) {
    std::vector<std::pair<tp::op_id, clock_type::time_point>> out(
        static_cast<size_t>(o_.depth));
    const bool host = memory == bench_memory::host;
    const void* source =
        host ? static_cast<const void*>(source_.data()) : source_device_.data();
    const tp::registration& source_mr = host ? source_mr_ : source_device_mr_;
    ctl.send(fmt::format("plugin {} {} {}", size, iters, name_of(memory)));
    ctl.expect("ready");
    auto start = clock_type::now();
    auto deadline = start + std::chrono::duration_cast<clock_type::duration>(
                                std::chrono::duration<double>(o_.timeout_s));
    long posted = 0, completed = 0;
    while (completed < iters) {
      while (posted < iters && posted - completed < o_.depth) {
        auto id = tx_->post_send(source, size, source_mr);
        for (auto& slot : out)
          if (slot.first == 0) {
            slot = {id, clock_type::now()};
            break;
          }
        ++posted;
      }
      size_t finished = tx_->poll([&](const tp::completion& c) {
        if (!c.ok)
          fail(fmt::format("bench net: send failed: {}", c.error));
        auto now = clock_type::now();
        for (auto& slot : out)
          if (slot.first == c.id) {
            latencies.push_back(
                std::chrono::duration<double, std::micro>(now - slot.second)
                    .count());
            slot.first = 0;
            break;
          }
        ++completed;
      });
      // Yield when idle: on a small machine the plugin's own threads need the
      // core.
      if (!finished)
        std::this_thread::yield();
      if (clock_type::now() > deadline)
        fail(fmt::format("bench net: {} sends not done in {:.0f} s",
                         human(size), o_.timeout_s));
    }
    ctl.expect("arrived");
    double seconds = seconds_since(start);
    verified = (ctl.expect("done") == "ok") && verified;
    return static_cast<double>(size) * static_cast<double>(iters) / seconds /
           1e9;
  }

  std::string baseline_name() const {
    return fmt::format("raw TCP, one loopback connection, {} messages in "
                       "flight, non-blocking and polling",
                       o_.tcp_depth);
  }

  // The same messages over one loopback TCP connection, --tcp-depth in
  // flight, polling (stream_messages).
  double tcp_round(control& ctl, size_t size, long iters) {
    ctl.send(fmt::format("tcp {} {} {}", size, iters, o_.tcp_depth));
    ctl.expect("ready");
    auto start = clock_type::now();
    stream_messages(tcp_, true, size, iters, o_.tcp_depth, o_.timeout_s,
                    [&](long) { return source_.data(); });
    ctl.expect("done");
    return static_cast<double>(size) * static_cast<double>(iters) /
           seconds_since(start) / 1e9;
  }

  rtt_result round_trips(control& ctl) {
    rtt_result out;
    out.iters = o_.rtt_iters;
    const long warmup = 100, n = o_.rtt_iters + warmup;
    std::vector<double> plugin_us, tcp_us;
    plugin_us.reserve(static_cast<size_t>(n));
    tcp_us.reserve(static_cast<size_t>(n));
    ctl.send(fmt::format("rtt {}", n));
    ctl.expect("ready");
    for (long i = 0; i < n; ++i) {
      auto t = clock_type::now();
      auto r = rx_->post_recv(small_.data() + 32, 8, small_rx_);
      auto s = tx_->post_send(small_.data(), 8, small_tx_);
      wait_one(*tx_, s, o_.timeout_s, "ping send");
      wait_one(*rx_, r, o_.timeout_s, "pong receive");
      if (i >= warmup)
        plugin_us.push_back(
            std::chrono::duration<double, std::micro>(clock_type::now() - t)
                .count());
    }
    ctl.send(fmt::format("tcprtt {}", n));
    ctl.expect("ready");
    for (long i = 0; i < n; ++i) {
      auto t = clock_type::now();
      write_all(tcp_, small_.data(), 8);
      read_all(tcp_, small_.data() + 32, 8);
      if (i >= warmup)
        tcp_us.push_back(
            std::chrono::duration<double, std::micro>(clock_type::now() - t)
                .count());
    }
    auto mean = [](const std::vector<double>& v) {
      double sum = 0;
      for (double x : v)
        sum += x;
      return v.empty() ? 0 : sum / static_cast<double>(v.size());
    };
    out.plugin_mean = mean(plugin_us);
    out.tcp_mean = mean(tcp_us);
    out.plugin_p50 = percentile(plugin_us, 0.5);
    out.tcp_p50 = percentile(tcp_us, 0.5);
    out.plugin_p99 = percentile(plugin_us, 0.99);
    out.tcp_p99 = percentile(tcp_us, 0.99);
    return out;
  }

  void write_json(const std::vector<size_result>& results,
                  const rtt_result& rtt, long sender_rss, long receiver_rss) {
    nlohmann::json doc;
    doc["plugin"] = net_->name();
    doc["plugin_path"] = net_->path();
    doc["depth"] = o_.depth;
    doc["baseline"] = baseline_name();
    doc["comms"] = o_.comms;
    doc["chunk_bytes"] = o_.chunk_bytes;
    doc["repeat"] = o_.repeat;
    doc["memories"] = nlohmann::json::array();
    for (auto m : memories_.memories)
      doc["memories"].push_back(name_of(m));
    if (uses(bench_memory::cuda)) {
      doc["cuda_path"] = plugin_takes_cuda() ? "plugin" : "wrapper-staged";
      const int peer_gpu = o_.peer_gpu < 0 ? o_.gpu : o_.peer_gpu;
      doc["gpu"] = o_.gpu;
      doc["peer_gpu"] = peer_gpu;
      auto inventory = tp::list_gpus();
      if (static_cast<size_t>(o_.gpu) < inventory.devices.size())
        doc["gpu_name"] = inventory.devices[static_cast<size_t>(o_.gpu)].name;
      if (static_cast<size_t>(peer_gpu) < inventory.devices.size())
        doc["peer_gpu_name"] =
            inventory.devices[static_cast<size_t>(peer_gpu)].name;
    }
    doc["sizes"] = nlohmann::json::array();
    for (auto& r : results) {
      nlohmann::json row = {{"size", r.size},
                            {"iters", r.iters},
                            {"baseline_gbps", r.baseline_gbps},
                            {"verified", r.verified()},
                            {"rss_sender_kb", sender_rss},
                            {"rss_receiver_kb", receiver_rss}};
      for (auto& m : r.memories)
        row[name_of(m.memory)] = {{"gbps", m.gbps},
                                  {"ratio", m.gbps / r.baseline_gbps},
                                  {"p50_us", m.p50_us},
                                  {"p99_us", m.p99_us},
                                  {"verified", m.verified}};
      if (r.memories.size() == 2)
        row["cuda_over_host"] = r.cuda_over_host();
      doc["sizes"].push_back(row);
    }
    doc["rtt_8b"] = {{"iters", rtt.iters},
                     {"plugin_p50_us", rtt.plugin_p50},
                     {"plugin_mean_us", rtt.plugin_mean},
                     {"baseline_p50_us", rtt.tcp_p50},
                     {"baseline_mean_us", rtt.tcp_mean},
                     {"plugin_p99_us", rtt.plugin_p99},
                     {"baseline_p99_us", rtt.tcp_p99},
                     {"ratio", rtt.plugin_p50 / rtt.tcp_p50}};
    doc["rss_kb"] = {{"sender", sender_rss}, {"receiver", receiver_rss}};
    std::ofstream file(o_.json_path);
    file << doc.dump(2) << "\n";
    if (!file)
      fail("bench net: cannot write " + o_.json_path);
    fmt::print("wrote {}\n", o_.json_path);
  }

  bench_options o_;
  std::vector<size_t> sizes_;
  std::shared_ptr<tp::plugin> net_;
  receiver_process child_;
  std::unique_ptr<tp::send_channel> tx_;
  std::unique_ptr<tp::recv_channel> rx_;
  memory_choice memories_;
  std::vector<char> source_, small_;
  tp::gpu_region source_device_;
  tp::registration source_mr_, source_device_mr_, small_tx_, small_rx_;
  int tcp_ = -1;

public:
  ~sender() {
    // Registrations before channels (member order would do the reverse).
    source_mr_ = {};
    source_device_mr_ = {};
    small_tx_ = {};
    small_rx_ = {};
    if (tcp_ >= 0)
      ::close(tcp_);
  }
};

} // namespace

void add_bench_net(CLI::App& bench, int& exit_code) {
  auto o = std::make_shared<bench_options>();
  auto* cmd = bench.add_subcommand(
      "net", "Plugin bandwidth and latency between two local processes, "
             "against raw TCP in the same run");
  cmd->add_option(
      "--plugin", o->plugin_name,
      "Plugin name or path (default $KVFERRY_NET_PLUGIN or kvsock)");
  cmd->add_option("--sizes", o->sizes,
                  "LOW..HIGH (factors of 4) or a comma list; K/M/G suffixes")
      ->capture_default_str();
  cmd->add_option("--depth", o->depth, "Messages in flight")
      ->capture_default_str();
  cmd->add_option("--comms", o->comms, "Comm pairs striped per channel")
      ->capture_default_str();
  cmd->add_option("--tcp-depth", o->tcp_depth,
                  "Messages in flight on the raw-TCP baseline's connection")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd->add_option("--iters", o->iters,
                  "Messages per size (default: ~512 MiB or 20000 per size)");
  cmd->add_option("--repeat", o->repeat,
                  "Rounds per size (plugin then TCP each); medians reported")
      ->capture_default_str();
  cmd->add_option("--rtt-iters", o->rtt_iters, "8-byte round trips")
      ->capture_default_str();
  cmd->add_option("--chunk-bytes", o->chunk_bytes, "Wrapper chunk size")
      ->capture_default_str();
  cmd->add_option("--json", o->json_path, "Write the results as JSON to FILE");
  cmd->add_option("--timeout-s", o->timeout_s, "Deadline of every wait")
      ->capture_default_str();
  cmd->add_option("--memory", o->memory,
                  "host, cuda (GPU memory, registered as NCCL_PTR_CUDA) or "
                  "both side by side "
                  "(default: both where a CUDA GPU exists, else host)")
      ->check(CLI::IsMember({"host", "cuda", "both"}));
  cmd->add_option("--gpu", o->gpu,
                  "CUDA device of the sender's GPU memory (and the "
                  "receiver's, without --peer-gpu)")
      ->capture_default_str();
  cmd->add_option("--peer-gpu", o->peer_gpu,
                  "CUDA device of the receiver's GPU memory (default: --gpu)");
  cmd->add_option("--serve-fd", o->serve_fd,
                  "(internal: run as the receiver on this fd)")
      ->group("");
  cmd->callback([o, &exit_code] {
    try {
      if (o->plugin_name.empty())
        o->plugin_name = tp::default_plugin();
      exit_code = o->serve_fd >= 0 ? serve(*o) : sender(*o).run();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "kvferry bench net: %s\n", e.what());
      exit_code = 1;
    }
  });
}

} // namespace kvferry::app
