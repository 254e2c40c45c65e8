// `kvferry bench net`: a net plugin against a raw TCP socket, in the same
// run, between two processes on this machine. The parent sends; it starts
// itself again (fork + exec of /proc/self/exe) as the receiver, and the two
// talk over a socketpair for setup and pacing. Per size: GB/s and per-message
// latency percentiles through kvferry's channel wrapper, and GB/s over one
// loopback TCP connection (blocking writes/reads of whole messages); then an
// 8-byte ping-pong round trip over both. Buffers are registered once and
// reused; at most max(size, 256 MiB) of buffer per side.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvferry/transport/channel.hpp"

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
  long iters = 0;  // 0: per size, about 512 MiB or 20000 messages
  long rtt_iters = 2000;
  int repeat = 3;  // rounds per size; medians reported
  size_t chunk_bytes = size_t{4} << 20;
  std::string json_path;
  double timeout_s = 60;
  int serve_fd = -1;  // set in the receiver process only
};

constexpr size_t pool_cap = size_t{256} << 20;

[[noreturn]] void fail(const std::string& why) { throw std::runtime_error(why); }

// ---- sizes ----------------------------------------------------------------------------------

size_t parse_size(const std::string& text) {
  size_t pos = 0;
  double value = std::stod(text, &pos);
  std::string unit = text.substr(pos);
  double scale = 1;
  if (unit == "K" || unit == "KiB" || unit == "k") scale = 1024;
  else if (unit == "M" || unit == "MiB") scale = 1024.0 * 1024;
  else if (unit == "G" || unit == "GiB") scale = 1024.0 * 1024 * 1024;
  else if (!unit.empty() && unit != "B") fail("--sizes: unknown unit in '" + text + "'");
  return static_cast<size_t>(value * scale);
}

// "4K..256M" (factors of 4) or "4K,64K,1M".
std::vector<size_t> parse_sizes(const std::string& text) {
  std::vector<size_t> out;
  if (auto dots = text.find(".."); dots != std::string::npos) {
    size_t low = parse_size(text.substr(0, dots)), high = parse_size(text.substr(dots + 2));
    if (low == 0 || high < low) fail("--sizes: expected LOW..HIGH with 0 < LOW <= HIGH");
    for (size_t s = low; s <= high; s *= 4) out.push_back(s);
  } else {
    std::stringstream in(text);
    std::string item;
    while (std::getline(in, item, ','))
      if (!item.empty()) out.push_back(parse_size(item));
  }
  for (auto s : out)
    if (s == 0 || s > (size_t{1} << 30)) fail("--sizes: each size must be in 1 B..1 GiB");
  if (out.empty()) fail("--sizes: no sizes");
  return out;
}

std::string human(size_t bytes) {
  if (bytes >= (size_t{1} << 20) && bytes % (size_t{1} << 20) == 0)
    return fmt::format("{}M", bytes >> 20);
  if (bytes >= 1024 && bytes % 1024 == 0) return fmt::format("{}K", bytes >> 10);
  return fmt::format("{}", bytes);
}

long iterations_for(const bench_options& o, size_t size) {
  if (o.iters > 0) return o.iters;
  return std::clamp<long>(static_cast<long>((size_t{512} << 20) / size), 4, 20000);
}

// ---- the control line between the two processes --------------------------------------------

class control {
 public:
  explicit control(int fd, double timeout_s) : fd_(fd), timeout_s_(timeout_s) {}
  void send(const std::string& line) {
    std::string text = line + "\n";
    size_t done = 0;
    while (done < text.size()) {
      auto n = ::write(fd_, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail(fmt::format("bench net: the other process is gone ({})", std::strerror(errno)));
      done += static_cast<size_t>(n);
    }
  }
  std::string receive() {
    auto deadline = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                          std::chrono::duration<double>(timeout_s_));
    for (;;) {
      if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
        auto line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now()).count();
      if (left <= 0) fail(fmt::format("bench net: no word from the other process in {:.0f} s", timeout_s_));
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000))) <= 0) continue;
      char chunk[4096];
      auto n = ::read(fd_, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("bench net: the other process closed the control line (did it crash?)");
      buffer_.append(chunk, static_cast<size_t>(n));
    }
  }
  std::string expect(const std::string& word) {
    auto line = receive();
    if (line.rfind(word, 0) != 0)
      fail(fmt::format("bench net: expected '{}' from the other process, got '{}'", word, line));
    return line.size() > word.size() ? line.substr(word.size() + 1) : std::string();
  }

 private:
  int fd_;
  double timeout_s_;
  std::string buffer_;
};

std::string to_hex(const std::vector<tp::net_handle>& handles) {
  std::string out;
  for (auto& h : handles)
    for (char c : h) out += fmt::format("{:02x}", static_cast<unsigned char>(c));
  return out;
}
std::vector<tp::net_handle> from_hex(const std::string& hex) {
  std::vector<tp::net_handle> out(hex.size() / (2 * NCCL_NET_HANDLE_MAXSIZE));
  for (size_t i = 0; i < out.size(); ++i)
    for (size_t b = 0; b < NCCL_NET_HANDLE_MAXSIZE; ++b)
      out[i][b] = static_cast<char>(
        std::stoi(hex.substr((i * NCCL_NET_HANDLE_MAXSIZE + b) * 2, 2), nullptr, 16));
  return out;
}

// ---- TCP baseline sockets ------------------------------------------------------------------

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void write_all(int fd, const char* data, size_t bytes) {
  while (bytes) {
    auto n = ::send(fd, data, bytes, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(fmt::format("bench net: TCP baseline write failed: {}", std::strerror(errno)));
    data += n;
    bytes -= static_cast<size_t>(n);
  }
}
void read_all(int fd, char* data, size_t bytes) {
  while (bytes) {
    auto n = ::recv(fd, data, bytes, MSG_WAITALL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(fmt::format("bench net: TCP baseline read failed: {}", n == 0 ? "peer closed" : std::strerror(errno)));
    data += n;
    bytes -= static_cast<size_t>(n);
  }
}

// ---- both sides' plugin state -----------------------------------------------------------------

struct endpoint {
  std::vector<char> pool;          // data buffers (slots of `size` bytes)
  std::vector<char> small{std::vector<char>(64)};  // ping-pong buffer
  tp::send_channel* tx = nullptr;
  tp::recv_channel* rx = nullptr;
};

size_t pool_bytes(const std::vector<size_t>& sizes, int depth) {
  size_t largest = *std::max_element(sizes.begin(), sizes.end());
  size_t want = 0;
  for (auto s : sizes) want = std::max(want, std::min(s * static_cast<size_t>(depth), std::max(s, pool_cap)));
  return std::max(want, largest);
}
size_t slots_for(size_t pool, size_t size) { return std::max<size_t>(1, pool / size); }

char pattern_byte(size_t i) { return static_cast<char>((i * 7 + (i >> 12)) & 0xff); }
std::vector<char> pattern(size_t bytes) {
  std::vector<char> out(bytes);
  for (size_t i = 0; i < bytes; ++i) out[i] = pattern_byte(i);
  return out;
}
bool matches_pattern(const char* data, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i)
    if (data[i] != pattern_byte(i)) return false;
  return true;
}

template <class Channel>
void wait_one(Channel& ch, tp::op_id want, double timeout_s, const char* what) {
  auto deadline = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(timeout_s));
  bool done = false;
  while (!done) {
    ch.poll([&](const tp::completion& c) {
      if (!c.ok) fail(fmt::format("bench net: {} failed: {}", what, c.error));
      if (c.id == want) done = true;
    });
    if (!done && clock_type::now() > deadline) fail(fmt::format("bench net: {} not done in {:.0f} s", what, timeout_s));
  }
}

long peak_rss_kb(int who) {
  rusage usage{};
  ::getrusage(who, &usage);
  return usage.ru_maxrss;
}

// ---- the receiver (child process) ----------------------------------------------------------------

int serve(const bench_options& o) {
  control ctl(o.serve_fd, o.timeout_s);
  auto sizes = parse_sizes(o.sizes);
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
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener, 1) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    fail(fmt::format("bench net receiver: TCP listen on 127.0.0.1 failed: {}", std::strerror(errno)));
  ctl.send(fmt::format("hello {} {}", ntohs(addr.sin_port), to_hex(forward.handles())));
  auto back_handles = from_hex(ctl.expect("back"));
  tp::channel_options back_opt = copt;
  back_opt.comms = 1;
  tp::channel_connector backward(net, 0, back_handles, back_opt);
  bool accepted = false, connected = false;
  auto deadline = clock_type::now() + 30s;
  while (!(accepted && connected)) {
    if (!accepted) accepted = forward.try_accept();
    if (!connected) connected = backward.try_connect();
    if (clock_type::now() > deadline) fail("bench net receiver: plugin connect/accept not done in 30 s");
  }
  auto rx = forward.take();
  auto tx = backward.take();
  pollfd pl{listener, POLLIN, 0};
  if (::poll(&pl, 1, 30000) != 1) fail("bench net receiver: the TCP baseline connection did not come in 30 s");
  int tcp = ::accept(listener, nullptr, nullptr);
  ::close(listener);
  set_nodelay(tcp);

  std::vector<char> pool(pool_bytes(sizes, o.depth));
  std::vector<char> small(64);
  auto mr = rx.register_memory(pool.data(), pool.size());
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
      line >> size >> iters;
      size_t slots = slots_for(pool.size(), size);
      long posted = 0, received = 0;
      auto post_more = [&] {
        while (posted < iters && posted - received < o.depth) {
          rx.post_recv(pool.data() + (posted % slots) * size, size, mr);
          ++posted;
        }
      };
      post_more();
      ctl.send("ready");
      auto end = clock_type::now() + std::chrono::duration<double>(o.timeout_s);
      while (received < iters) {
        // Yield when idle: on a small machine the plugin's own threads need the core.
        if (!rx.poll([&](const tp::completion& c) {
              if (!c.ok) fail(fmt::format("bench net receiver: receive failed: {}", c.error));
              ++received;
            }))
          std::this_thread::yield();
        post_more();
        if (clock_type::now() > end) fail("bench net receiver: receives not done in time");
      }
      // Report the arrival before verifying: the sender stops its clock at
      // "arrived", so the check (~0.1 s at 256 MiB) is not counted as
      // transfer time (the TCP round verifies nothing).
      ctl.send("arrived");
      ctl.send(matches_pattern(pool.data(), size) ? "done ok" : "done corrupt");
    } else if (cmd == "tcp") {
      size_t size;
      long iters;
      line >> size >> iters;
      size_t slots = slots_for(pool.size(), size);
      ctl.send("ready");
      for (long i = 0; i < iters; ++i) read_all(tcp, pool.data() + (i % slots) * size, size);
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

// ---- the sender (parent) --------------------------------------------------------------------------

struct size_result {
  size_t size = 0;
  long iters = 0;
  double gbps = 0, baseline_gbps = 0, p50_us = 0, p99_us = 0;
  bool verified = false;
};

double percentile(std::vector<double>& values, double p) {
  if (values.empty()) return 0;
  auto at = static_cast<size_t>(p * static_cast<double>(values.size() - 1) + 0.5);
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(at), values.end());
  return values[at];
}

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

// The receiver: this binary again, exec'd with --serve-fd; killed if it lingers.
struct receiver_process {
  pid_t pid = -1;
  int fd = -1;
  int status = 0;

  void start(const bench_options& o, const std::string& plugin_path) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
      fail(fmt::format("bench net: socketpair failed: {}", std::strerror(errno)));
    std::fflush(nullptr);
    pid = ::fork();
    if (pid < 0) fail(fmt::format("bench net: fork failed: {}", std::strerror(errno)));
    if (pid == 0) {
      ::close(sv[0]);
      std::vector<std::string> args{"kvferry", "bench", "net", "--serve-fd", std::to_string(sv[1]),
                                    "--plugin", plugin_path, "--sizes", o.sizes,
                                    "--depth", std::to_string(o.depth), "--comms", std::to_string(o.comms),
                                    "--chunk-bytes", std::to_string(o.chunk_bytes),
                                    "--timeout-s", std::to_string(o.timeout_s)};
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      std::fprintf(stderr, "bench net: exec of /proc/self/exe failed: %s\n", std::strerror(errno));
      ::_exit(127);
    }
    ::close(sv[1]);
    fd = sv[0];
  }

  void finish() {
    if (pid <= 0) return;
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
    if (fd >= 0) ::close(fd);
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
};

class sender {
 public:
  explicit sender(bench_options o) : o_(std::move(o)), sizes_(parse_sizes(o_.sizes)) {}

  int run() {
    if (o_.depth < 1 || o_.comms < 1 || o_.repeat < 1)
      fail("bench net: --depth, --comms and --repeat must be >= 1");
    net_ = tp::plugin::load(o_.plugin_name);
    fmt::print("kvferry bench net: plugin {} ({}), depth {}, comms {}, chunk {}, {} rounds per size\n",
               net_->name(), net_->path(), o_.depth, o_.comms, human(o_.chunk_bytes), o_.repeat);
    child_.start(o_, net_->path());
    control ctl(child_.fd, o_.timeout_s);
    connect(ctl);
    std::vector<size_result> results;
    fmt::print("{:>6} {:>7} {:>10} {:>10} {:>7} {:>10} {:>10}\n", "size", "iters", "plugin GB/s",
               "tcp GB/s", "ratio", "p50 us", "p99 us");
    for (auto size : sizes_) {
      auto r = measure_size(ctl, size);
      fmt::print("{:>6} {:>7} {:>10.3f} {:>10.3f} {:>7.2f} {:>10.1f} {:>10.1f}{}\n", human(size),
                 r.iters, r.gbps, r.baseline_gbps, r.gbps / r.baseline_gbps, r.p50_us, r.p99_us,
                 r.verified ? "" : "  DATA CORRUPT");
      std::fflush(stdout);
      results.push_back(r);
    }
    auto rtt = round_trips(ctl);
    ctl.send("bye");
    long receiver_rss = std::stol(ctl.expect("rss"));
    child_.finish();
    long sender_rss = peak_rss_kb(RUSAGE_SELF);
    long children_rss = peak_rss_kb(RUSAGE_CHILDREN);
    fmt::print("8-byte round trip: plugin p50 {:.1f} us (mean {:.1f}), tcp p50 {:.1f} us (mean {:.1f}), ratio {:.2f}\n",
               rtt.plugin_p50, rtt.plugin_mean, rtt.tcp_p50, rtt.tcp_mean, rtt.plugin_p50 / rtt.tcp_p50);
    fmt::print("peak RSS: sender {:.1f} MiB, receiver {:.1f} MiB (RUSAGE_CHILDREN {:.1f} MiB)\n",
               sender_rss / 1024.0, receiver_rss / 1024.0, children_rss / 1024.0);
    if (!o_.json_path.empty()) write_json(results, rtt, sender_rss, receiver_rss);
    bool all_ok = true;
    for (auto& r : results) all_ok = all_ok && r.verified;
    return all_ok ? 0 : 1;
  }

 private:
  struct rtt_result {
    double plugin_p50 = 0, plugin_mean = 0, tcp_p50 = 0, tcp_mean = 0;
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
      if (!connected) connected = forward.try_connect();
      if (!accepted) accepted = backward.try_accept();
      if (clock_type::now() > deadline) fail("bench net: plugin connect/accept not done in 30 s");
    }
    tx_ = std::make_unique<tp::send_channel>(forward.take());
    rx_ = std::make_unique<tp::recv_channel>(backward.take());
    tcp_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(tcp_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      fail(fmt::format("bench net: TCP connect to 127.0.0.1:{} failed: {}", port, std::strerror(errno)));
    set_nodelay(tcp_);
    ctl.expect("connected");
    source_ = pattern(*std::max_element(sizes_.begin(), sizes_.end()));
    source_mr_ = tx_->register_memory(source_.data(), source_.size());
    small_.assign(64, 1);
    small_tx_ = tx_->register_memory(small_.data(), small_.size());
    small_rx_ = rx_->register_memory(small_.data(), small_.size());
  }

  // `repeat` rounds, each the plugin then TCP with the same messages; the
  // median of each side is reported, which tames a noisy shared machine.
  size_result measure_size(control& ctl, size_t size) {
    size_result r;
    r.size = size;
    r.iters = iterations_for(o_, size);
    r.verified = true;
    std::vector<double> latencies, plugin_gbps, tcp_gbps;
    latencies.reserve(static_cast<size_t>(r.iters * o_.repeat));
    for (int round = 0; round < o_.repeat; ++round) {
      plugin_gbps.push_back(plugin_round(ctl, size, r.iters, latencies, r.verified));
      tcp_gbps.push_back(tcp_round(ctl, size, r.iters));
    }
    r.gbps = percentile(plugin_gbps, 0.5);
    r.baseline_gbps = percentile(tcp_gbps, 0.5);
    r.p50_us = percentile(latencies, 0.50);
    r.p99_us = percentile(latencies, 0.99);
    return r;
  }

  // Every send from the same source buffer, `depth` in flight. GB/s counts
  // until the receiver reports the last arrival.
  double plugin_round(control& ctl, size_t size, long iters, std::vector<double>& latencies,
                      bool& verified) {
    std::vector<std::pair<tp::op_id, clock_type::time_point>> out(static_cast<size_t>(o_.depth));
    ctl.send(fmt::format("plugin {} {}", size, iters));
    ctl.expect("ready");
    auto start = clock_type::now();
    auto deadline = start + std::chrono::duration_cast<clock_type::duration>(
                              std::chrono::duration<double>(o_.timeout_s));
    long posted = 0, completed = 0;
    while (completed < iters) {
      while (posted < iters && posted - completed < o_.depth) {
        auto id = tx_->post_send(source_.data(), size, source_mr_);
        for (auto& slot : out)
          if (slot.first == 0) {
            slot = {id, clock_type::now()};
            break;
          }
        ++posted;
      }
      size_t finished = tx_->poll([&](const tp::completion& c) {
        if (!c.ok) fail(fmt::format("bench net: send failed: {}", c.error));
        auto now = clock_type::now();
        for (auto& slot : out)
          if (slot.first == c.id) {
            latencies.push_back(std::chrono::duration<double, std::micro>(now - slot.second).count());
            slot.first = 0;
            break;
          }
        ++completed;
      });
      // Yield when idle: on a small machine the plugin's own threads need the core.
      if (!finished) std::this_thread::yield();
      if (clock_type::now() > deadline)
        fail(fmt::format("bench net: {} sends not done in {:.0f} s", human(size), o_.timeout_s));
    }
    ctl.expect("arrived");
    double seconds = seconds_since(start);
    verified = (ctl.expect("done") == "ok") && verified;
    return static_cast<double>(size) * static_cast<double>(iters) / seconds / 1e9;
  }

  // The same messages as blocking writes on one loopback TCP connection.
  double tcp_round(control& ctl, size_t size, long iters) {
    ctl.send(fmt::format("tcp {} {}", size, iters));
    ctl.expect("ready");
    auto start = clock_type::now();
    for (long i = 0; i < iters; ++i) write_all(tcp_, source_.data(), size);
    ctl.expect("done");
    return static_cast<double>(size) * static_cast<double>(iters) / seconds_since(start) / 1e9;
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
      if (i >= warmup) plugin_us.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - t).count());
    }
    ctl.send(fmt::format("tcprtt {}", n));
    ctl.expect("ready");
    for (long i = 0; i < n; ++i) {
      auto t = clock_type::now();
      write_all(tcp_, small_.data(), 8);
      read_all(tcp_, small_.data() + 32, 8);
      if (i >= warmup) tcp_us.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - t).count());
    }
    auto mean = [](const std::vector<double>& v) {
      double sum = 0;
      for (double x : v) sum += x;
      return v.empty() ? 0 : sum / static_cast<double>(v.size());
    };
    out.plugin_mean = mean(plugin_us);
    out.tcp_mean = mean(tcp_us);
    out.plugin_p50 = percentile(plugin_us, 0.5);
    out.tcp_p50 = percentile(tcp_us, 0.5);
    return out;
  }

  void write_json(const std::vector<size_result>& results, const rtt_result& rtt, long sender_rss,
                  long receiver_rss) {
    nlohmann::json doc;
    doc["plugin"] = net_->name();
    doc["plugin_path"] = net_->path();
    doc["depth"] = o_.depth;
    doc["comms"] = o_.comms;
    doc["chunk_bytes"] = o_.chunk_bytes;
    doc["repeat"] = o_.repeat;
    doc["sizes"] = nlohmann::json::array();
    for (auto& r : results)
      doc["sizes"].push_back({{"size", r.size},
                              {"iters", r.iters},
                              {"gbps", r.gbps},
                              {"baseline_gbps", r.baseline_gbps},
                              {"ratio", r.gbps / r.baseline_gbps},
                              {"p50_us", r.p50_us},
                              {"p99_us", r.p99_us},
                              {"verified", r.verified},
                              {"rss_sender_kb", sender_rss},
                              {"rss_receiver_kb", receiver_rss}});
    doc["rtt_8b"] = {{"iters", rtt.iters},
                     {"plugin_p50_us", rtt.plugin_p50},
                     {"plugin_mean_us", rtt.plugin_mean},
                     {"baseline_p50_us", rtt.tcp_p50},
                     {"baseline_mean_us", rtt.tcp_mean},
                     {"ratio", rtt.plugin_p50 / rtt.tcp_p50}};
    doc["rss_kb"] = {{"sender", sender_rss}, {"receiver", receiver_rss}};
    std::ofstream file(o_.json_path);
    file << doc.dump(2) << "\n";
    if (!file) fail("bench net: cannot write " + o_.json_path);
    fmt::print("wrote {}\n", o_.json_path);
  }

  bench_options o_;
  std::vector<size_t> sizes_;
  std::shared_ptr<tp::plugin> net_;
  receiver_process child_;
  std::unique_ptr<tp::send_channel> tx_;
  std::unique_ptr<tp::recv_channel> rx_;
  std::vector<char> source_, small_;
  tp::registration source_mr_, small_tx_, small_rx_;
  int tcp_ = -1;

 public:
  ~sender() {
    // Registrations before channels (member order would do the reverse).
    source_mr_ = {};
    small_tx_ = {};
    small_rx_ = {};
    if (tcp_ >= 0) ::close(tcp_);
  }
};

}  // namespace

void add_bench_net(CLI::App& bench, int& exit_code) {
  auto o = std::make_shared<bench_options>();
  auto* cmd = bench.add_subcommand(
    "net", "Plugin bandwidth and latency between two local processes, against raw TCP in the same run");
  cmd->add_option("--plugin", o->plugin_name, "Plugin name or path (default $KVFERRY_NET_PLUGIN or kvsock)");
  cmd->add_option("--sizes", o->sizes, "LOW..HIGH (factors of 4) or a comma list; K/M/G suffixes")
    ->capture_default_str();
  cmd->add_option("--depth", o->depth, "Messages in flight")->capture_default_str();
  cmd->add_option("--comms", o->comms, "Comm pairs striped per channel")->capture_default_str();
  cmd->add_option("--iters", o->iters, "Messages per size (default: ~512 MiB or 20000 per size)");
  cmd->add_option("--repeat", o->repeat, "Rounds per size (plugin then TCP each); medians reported")
    ->capture_default_str();
  cmd->add_option("--rtt-iters", o->rtt_iters, "8-byte round trips")->capture_default_str();
  cmd->add_option("--chunk-bytes", o->chunk_bytes, "Wrapper chunk size")->capture_default_str();
  cmd->add_option("--json", o->json_path, "Write the results as JSON to FILE");
  cmd->add_option("--timeout-s", o->timeout_s, "Deadline of every wait")->capture_default_str();
  cmd->add_option("--serve-fd", o->serve_fd, "(internal: run as the receiver on this fd)")->group("");
  cmd->callback([o, &exit_code] {
    try {
      if (o->plugin_name.empty()) o->plugin_name = tp::default_plugin();
      exit_code = o->serve_fd >= 0 ? serve(*o) : sender(*o).run();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "kvferry bench net: %s\n", e.what());
      exit_code = 1;
    }
  });
}

}  // namespace kvferry::app
