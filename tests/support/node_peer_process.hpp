// Two-process kvferry::node tests: the test binary runs itself again as the
// peer process (its "node peer process" case, chosen by KVFERRY_NODE_PEER),
// which prints its port and then takes "VERB ID" orders as notifications
// from whoever sends them; the parent connects to it and hears its answers.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "kvferry/node.hpp"
#include "kvferry_processes.hpp"

namespace kvferry::test {

struct node_order {
  std::string from; // the node that sent it
  std::string verb;
  std::uint64_t id = 0;
};

/// The peer process's loop: prints "port P", then runs `obey` for each
/// order of `n` until "quit" or 120 s passed.
template<class Obey>
void serve_orders(node& n, Obey obey) {
  std::mutex mtx;
  std::condition_variable cv;
  std::deque<std::pair<std::string, std::string>> orders;
  n.on_notification([&](const std::string& from, const std::string& p) {
    std::lock_guard<std::mutex> guard{mtx};
    orders.emplace_back(from, p);
    cv.notify_all();
  });
  std::printf("port %u\n", static_cast<unsigned>(n.port()));
  std::fflush(stdout);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    std::unique_lock<std::mutex> lock{mtx};
    if (!cv.wait_until(lock, deadline, [&] { return !orders.empty(); }))
      break;
    node_order o;
    o.from = orders.front().first;
    std::istringstream in{orders.front().second};
    orders.pop_front();
    lock.unlock();
    in >> o.verb >> o.id;
    if (o.verb == "quit")
      break;
    obey(o);
  }
  n.on_notification({}); // the queue above ends here
}

/// The parent's log of the notifications its node received.
struct note_log {
  std::mutex mtx;
  std::condition_variable cv;
  std::vector<std::string> notes;

  void listen(node& n) {
    n.on_notification([this](const std::string&, const std::string& p) {
      std::lock_guard<std::mutex> guard{mtx};
      notes.push_back(p);
      cv.notify_all();
    });
  }
  bool heard(const std::string& note, std::chrono::milliseconds patience) {
    std::unique_lock<std::mutex> lock{mtx};
    return cv.wait_for(lock, patience, [&] {
      return std::find(notes.begin(), notes.end(), note) != notes.end();
    });
  }
};

/// Starts this binary as the peer process named `name` and connects `to`
/// to it.
inline std::unique_ptr<child>
spawn_peer_process(node& to, const std::string& name,
                   std::chrono::milliseconds patience) {
  auto c = std::make_unique<child>(
      std::vector<std::string>{"-tc=node peer process*"}, "/proc/self/exe",
      std::vector<std::string>{"KVFERRY_NODE_PEER=" + name});
  auto line = c->wait_for_line("port ", patience);
  REQUIRE_MESSAGE(!line.empty(), c->text);
  auto port = static_cast<std::uint16_t>(std::stoi(line.substr(5)));
  auto peer = to.connect("127.0.0.1", port);
  REQUIRE_MESSAGE(peer.ok(), peer.error().message());
  CHECK(*peer == name);
  return c;
}

} // namespace kvferry::test
