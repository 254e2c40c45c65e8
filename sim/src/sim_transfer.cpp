// The simulated transfer actor (sim_transfer.hpp).
#include "kvferry/sim/sim_transfer.hpp"

#include <algorithm>
#include <chrono>
#include <optional>
#include <utility>
#include <vector>

#include <caf/all.hpp>

namespace kvferry::sim {

namespace {

struct sim_transfer_state {
  proto::endpoint self;
  std::shared_ptr<sim_network> network;
  // Send orders in flight, in the order they came: answered when due.
  struct send {
    std::uint64_t id;
    std::string receiver;
    caf::actor receiver_actor; // poked when the bytes land
    std::uint64_t bytes;
    std::int64_t start_ns, due_ns;
    caf::typed_response_promise<std::uint64_t> reply;
  };
  std::vector<send> sends;
  // Recv orders whose transfer has not landed yet.
  struct recv {
    std::uint64_t id;
    std::string sender;
    std::int64_t known_ns;
    caf::typed_response_promise<proto::recv_report> reply;
  };
  std::vector<recv> recvs;
  static inline const char* name = "kvferry.sim_transfer";
};

using self_ptr = transfer_actor::stateful_pointer<sim_transfer_state>;

std::int64_t now_ns(self_ptr self) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             self->clock().now().time_since_epoch())
      .count();
}

std::uint64_t bytes_of(const proto::send_order& o) {
  std::uint64_t n = 0;
  for (const auto& e : o.extents)
    n += e.length;
  return n;
}

// The recv order's answer, once its transfer has landed (taken from the
// network: each transfer is received once).
std::optional<proto::recv_report> claim(self_ptr self,
                                        const std::string& sender,
                                        std::uint64_t id,
                                        std::int64_t known_ns) {
  auto& landed = self->state.network->landed;
  auto it = landed.find({sender, self->state.self.name, id});
  if (it == landed.end())
    return std::nullopt;
  proto::recv_report r;
  r.bytes = it->second.bytes;
  r.first_known_ns = std::min(known_ns, it->second.start_ns);
  r.landed_ns = it->second.landed_ns;
  landed.erase(it);
  return r;
}

// Answers the sends whose bytes have landed (and tells their receivers) and
// the recv orders whose transfers have, in the order they came.
void sweep(self_ptr self) {
  auto& st = self->state;
  auto now = now_ns(self);
  std::vector<sim_transfer_state::send> waiting;
  for (auto& s : st.sends) {
    if (s.due_ns > now) {
      waiting.push_back(std::move(s));
      continue;
    }
    st.network->landed[{st.self.name, s.receiver, s.id}] = {s.bytes, s.start_ns,
                                                            s.due_ns};
    s.reply.deliver(s.bytes);
    self->send(caf::actor_cast<transfer_actor>(s.receiver_actor),
               proto::sweep_atom::value);
  }
  st.sends = std::move(waiting);
  std::vector<sim_transfer_state::recv> open;
  for (auto& r : st.recvs) {
    if (auto report = claim(self, r.sender, r.id, r.known_ns))
      r.reply.deliver(*report);
    else
      open.push_back(std::move(r));
  }
  st.recvs = std::move(open);
}

transfer_actor::behavior_type sim_transfer(self_ptr self, std::string name,
                                           std::uint64_t region_bytes,
                                           std::shared_ptr<sim_network> net) {
  auto& st = self->state;
  st.self.name = std::move(name);
  st.self.transfer = caf::actor_cast<caf::actor>(self);
  st.self.plugin = "sim";
  st.self.listen_handle.assign(128, 0);
  st.self.region_bytes = region_bytes;
  st.network = std::move(net);
  return {
      [self](proto::endpoint_atom) { return self->state.self; },
      [self](proto::send_atom, proto::send_order& o) {
        auto& st = self->state;
        auto bytes = bytes_of(o);
        auto start = now_ns(self);
        auto took = st.network->duration(st.self.name, o.peer.name, bytes);
        auto rp = self->make_response_promise<std::uint64_t>();
        st.sends.push_back({o.transfer_id, o.peer.name, o.peer.transfer, bytes,
                            start, start + took.count(), rp});
        self->delayed_send(self, took, proto::sweep_atom::value);
        return rp;
      },
      [self](proto::recv_atom,
             proto::recv_order& o) -> caf::result<proto::recv_report> {
        auto known = now_ns(self);
        if (auto report = claim(self, o.peer_name, o.transfer_id, known))
          return *report;
        auto rp = self->make_response_promise<proto::recv_report>();
        self->state.recvs.push_back({o.transfer_id, o.peer_name, known, rp});
        return rp;
      },
      // Channels, announcements, CUDA IPC: nothing to do without bytes.
      [](proto::open_atom, const std::string&, std::uint32_t, std::uint64_t) {
        return std::vector<char>(128, 0);
      },
      [](proto::announce_atom, const proto::announcement&) {},
      [](proto::closed_atom, const std::string&, std::uint64_t,
         const caf::error&) {},
      [](proto::landed_atom, const proto::landed&) {},
      [](proto::stats_atom) { return proto::transfer_stats{}; },
      [](proto::ipc_hello_atom, const std::string&) {},
      [](proto::ipc_status_atom, const std::string&, std::uint64_t) {
        return caf::ok_atom::value;
      },
      [](proto::settle_atom, const std::string&, std::uint64_t) {
        return caf::ok_atom::value;
      },
      [](joined_atom, const worker_info&) {},
      [](left_atom, const std::string&, const caf::error&) {},
      [](proto::progress_atom, std::uint64_t) {},
      [self](proto::sweep_atom) { sweep(self); },
      // Models no CUDA IPC reads and no runtime regions (kvferry::endpoint).
      [](proto::read_atom,
         proto::read_order&) -> caf::result<proto::recv_report> {
        return make_error(ec::invalid_argument, "sim transfer: no reads");
      },
      [](proto::region_add_atom, std::uint64_t, std::uint64_t,
         std::int32_t) -> caf::result<std::uint64_t> {
        return make_error(ec::invalid_argument, "sim transfer: no regions");
      },
      [](proto::region_remove_atom,
         std::uint64_t) -> caf::result<caf::ok_atom> {
        return make_error(ec::not_found, "sim transfer: no regions");
      },
  };
}

} // namespace

transfer_actor spawn_sim_transfer(caf::actor_system& sys, std::string name,
                                  std::uint64_t region_bytes,
                                  std::shared_ptr<sim_network> network) {
  return sys.spawn(sim_transfer, std::move(name), region_bytes,
                   std::move(network));
}

} // namespace kvferry::sim
