// One end of a kvsock channel striped over the devices it is given, for
// nic_stripe_test.sh, which runs the two ends in two network namespaces:
//
//   nic_stripe_peer recv DEVICES COMMS BYTES HANDLE_FILE
//   nic_stripe_peer send DEVICES COMMS BYTES HANDLE_FILE
//
// DEVICES: plugin device indexes ("0" or "0,1"); kvsock's devices come from
// KVSOCK_IFADDR. The receiver listens, writes its handles to
// HANDLE_FILE (raw, 128 bytes per comm), accepts, takes a 1-byte warm-up
// message and then BYTES in one transfer, and prints "received BYTES bytes in S
// s: R MB/s". The sender waits for HANDLE_FILE (at most 20 s), connects, sends
// the warm-up, writes the time it posts the big send to HANDLE_FILE.start and
// sends it. S runs from that time to the receiver's last byte: both ends read
// the same monotonic clock (network namespaces do not change it), so a
// receiver descheduled at the start cannot shorten S and inflate the rate
// (timed from the warm-up's arrival, a one-device run once read 26.1 MB/s on
// a 25 MB/s link). Every wait has a deadline; any failure prints why and
// exits 1.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kvferry/transport/channel.hpp"
#include "kvferry/transport/device_choice.hpp"

namespace tp = kvferry::transport;
using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

constexpr auto kDeadline = 60s;

// Handles travel as raw bytes in a file (128 per comm).
std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             clock_type::now().time_since_epoch())
      .count();
}

void write_handles(const std::vector<tp::net_handle>& handles,
                   const std::string& file) {
  {
    std::ofstream out(file + ".tmp", std::ios::binary);
    for (const auto& h : handles)
      out.write(h.data(), static_cast<std::streamsize>(h.size()));
  }
  std::rename((file + ".tmp").c_str(), file.c_str()); // appears whole
}

std::vector<tp::net_handle> read_handles(const std::string& file) {
  std::vector<tp::net_handle> handles;
  auto deadline = clock_type::now() + 20s;
  for (;;) {
    std::ifstream in(file, std::ios::binary);
    tp::net_handle h;
    while (in.read(h.data(), static_cast<std::streamsize>(h.size())))
      handles.push_back(h);
    if (!handles.empty())
      return handles;
    if (clock_type::now() > deadline)
      throw std::runtime_error("no handles in " + file + " after 20 s");
    std::this_thread::sleep_for(10ms);
  }
}

// Polls until `want` operations completed; throws at the deadline.
void wait_done(tp::channel& ch, size_t want, const char* what) {
  size_t done = 0;
  auto deadline = clock_type::now() + kDeadline;
  while (done < want) {
    ch.poll([&](const tp::completion& c) {
      if (!c.ok)
        throw std::runtime_error(std::string(what) + ": " + c.error);
      ++done;
    });
    if (clock_type::now() > deadline)
      throw std::runtime_error(std::string(what) + ": not done within 60 s");
  }
}

std::vector<int> device_list(const std::string& text) {
  std::vector<int> devices;
  for (const auto& entry : tp::parse_device_list(text))
    devices.push_back(std::stoi(entry));
  return devices;
}

int receive(const std::shared_ptr<tp::plugin>& net, std::vector<int> devices,
            tp::channel_options options, size_t bytes,
            const std::string& handle_file) {
  tp::channel_listener listener(net, devices, options);
  write_handles(listener.handles(), handle_file);
  auto rx = listener.accept(kDeadline);
  std::vector<char> sink(bytes + 1);
  auto mr = rx.register_memory(sink.data(), sink.size());
  rx.post_recv(sink.data(), 1, mr);
  wait_done(rx, 1, "warm-up receive");
  rx.post_recv(sink.data(), bytes, mr);
  wait_done(rx, 1, "receive");
  auto end = now_ns();
  std::int64_t start = 0;
  if (!(std::ifstream(handle_file + ".start") >> start))
    throw std::runtime_error("no start time in " + handle_file + ".start");
  double seconds = static_cast<double>(end - start) / 1e9;
  for (size_t i = 0; i < bytes; i += 4096)
    if (sink[i] != static_cast<char>(i / 4096))
      throw std::runtime_error("received bytes differ from those sent");
  std::printf("received %zu bytes in %.3f s: %.1f MB/s\n", bytes, seconds,
              static_cast<double>(bytes) / seconds / 1e6);
  return 0;
}

int send(const std::shared_ptr<tp::plugin>& net, std::vector<int> devices,
         tp::channel_options options, size_t bytes,
         const std::string& handle_file) {
  tp::channel_connector connector(net, devices, read_handles(handle_file),
                                  options);
  auto tx = connector.connect(kDeadline);
  std::vector<char> source(bytes);
  for (size_t i = 0; i < bytes; i += 4096)
    source[i] = static_cast<char>(i / 4096);
  auto mr = tx.register_memory(source.data(), source.size());
  tx.post_send(source.data(), 1, mr);
  wait_done(tx, 1, "warm-up send");
  std::ofstream(handle_file + ".start") << now_ns() << '\n';
  tx.post_send(source.data(), bytes, mr);
  wait_done(tx, 1, "send");
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr,
                 "usage: %s recv|send DEVICES COMMS BYTES HANDLE_FILE\n",
                 argv[0]);
    return 2;
  }
  try {
    std::string role = argv[1];
    auto net = tp::plugin::load("kvsock");
    tp::channel_options options;
    options.comms = std::stoi(argv[3]);
    options.chunk_bytes = size_t{1} << 20;
    options.peer = role == "recv" ? "sender" : "receiver";
    size_t bytes = std::stoull(argv[4]);
    return role == "recv"
               ? receive(net, device_list(argv[2]), options, bytes, argv[5])
               : send(net, device_list(argv[2]), options, bytes, argv[5]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nic_stripe_peer %s: %s\n", argv[1], e.what());
    return 1;
  }
}
