// The simulated transfer actor (sim_transfer.hpp).
#include "kvferry/sim/sim_transfer.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <utility>
#include <vector>

#include <caf/all.hpp>

namespace kvferry::sim {

namespace {

std::int64_t ns_of(caf::actor_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             t.time_since_epoch())
      .count();
}

struct sim_transfer_state {
  proto::endpoint self;
  std::shared_ptr<sim_network> network;
  // Send orders whose bytes have not landed yet, by transfer id.
  std::map<std::uint64_t, caf::typed_response_promise<std::uint64_t>> sends;
  // Recv orders whose transfer has not landed yet, and landed transfers no
  // recv order claimed yet, by (sender, transfer id).
  using key = std::pair<std::string, std::uint64_t>;
  struct recv {
    std::int64_t known_ns;
    caf::typed_response_promise<proto::recv_report> reply;
  };
  std::map<key, recv> recvs;
  std::map<key, proto::landed> landed;
  static inline const char* name = "kvferry.sim_transfer";
};

using self_ptr = transfer_actor::stateful_pointer<sim_transfer_state>;

proto::recv_report report_of(const proto::landed& l, std::int64_t known_ns) {
  proto::recv_report r;
  r.bytes = l.bytes;
  r.first_known_ns = std::min(known_ns, l.launched_ns);
  r.landed_ns = l.copied_ns;
  return r;
}

// The network says a transfer landed: ours (answer the send order) or one
// to us (answer its recv order, or keep it for the order to come).
void on_landed(self_ptr self, proto::landed& l) {
  auto& st = self->state;
  if (l.sender == st.self.name) {
    auto i = st.sends.find(l.transfer_id);
    if (i != st.sends.end()) {
      i->second.deliver(l.bytes);
      st.sends.erase(i);
    }
    return;
  }
  sim_transfer_state::key k{l.sender, l.transfer_id};
  auto i = st.recvs.find(k);
  if (i == st.recvs.end()) {
    st.landed.emplace(std::move(k), std::move(l));
    return;
  }
  i->second.reply.deliver(report_of(l, i->second.known_ns));
  st.recvs.erase(i);
}

transfer_actor::behavior_type sim_transfer(self_ptr self, std::string name,
                                           std::uint64_t region_bytes,
                                           std::shared_ptr<sim_network> net) {
  auto& st = self->state;
  st.self =
      sim_endpoint(name, region_bytes, caf::actor_cast<transfer_actor>(self));
  st.network = std::move(net);
  return {
      [self](proto::endpoint_atom) { return self->state.self; },
      [self](proto::send_atom, proto::send_order& o) {
        auto& st = self->state;
        std::uint64_t bytes = 0;
        for (const auto& e : o.extents)
          bytes += e.length;
        auto rp = self->make_response_promise<std::uint64_t>();
        st.sends.emplace(o.transfer_id, rp);
        st.network->start({st.self.name, o.peer.name, o.transfer_id, bytes,
                           caf::actor_cast<transfer_actor>(self),
                           caf::actor_cast<transfer_actor>(o.peer.transfer),
                           ns_of(self->clock().now())});
        return rp;
      },
      [self](proto::recv_atom,
             proto::recv_order& o) -> caf::result<proto::recv_report> {
        auto& st = self->state;
        auto known = ns_of(self->clock().now());
        sim_transfer_state::key k{o.peer_name, o.transfer_id};
        if (auto i = st.landed.find(k); i != st.landed.end()) {
          auto r = report_of(i->second, known);
          st.landed.erase(i);
          return r;
        }
        auto rp = self->make_response_promise<proto::recv_report>();
        st.recvs.emplace(std::move(k), sim_transfer_state::recv{known, rp});
        return rp;
      },
      [self](proto::landed_atom, proto::landed& l) { on_landed(self, l); },
      // Channels, announcements, CUDA IPC: nothing to do without bytes.
      [](proto::open_atom, const std::string&, std::uint32_t, std::uint64_t) {
        return std::vector<char>(128, 0);
      },
      [](proto::announce_atom, const proto::announcement&) {},
      [](proto::closed_atom, const std::string&, std::uint64_t,
         const caf::error&) {},
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
      [](proto::sweep_atom) {},
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

namespace {

// What both ends hear when `o`'s bytes landed at `landed_ns`.
proto::landed landed_of(const sim_network::order& o, std::int64_t landed_ns) {
  proto::landed l;
  l.sender = o.sender;
  l.transfer_id = o.transfer_id;
  l.bytes = o.bytes;
  l.launched_ns = o.ordered_ns;
  l.copied_ns = landed_ns;
  return l;
}

} // namespace

void sim_network::land(const order& o, std::int64_t landed_ns) {
  auto l = landed_of(o, landed_ns);
  caf::anon_send(o.to, proto::landed_atom::value, l);
  caf::anon_send(o.from, proto::landed_atom::value, std::move(l));
}

void fixed_network::start(order o) {
  auto took = model_(o.sender, o.receiver, o.bytes);
  auto l = landed_of(o, o.ordered_ns + took.count());
  caf::delayed_anon_send(o.to, took, proto::landed_atom::value, l);
  caf::delayed_anon_send(o.from, took, proto::landed_atom::value, std::move(l));
}

proto::endpoint sim_endpoint(const std::string& name,
                             std::uint64_t region_bytes,
                             const transfer_actor& transfer) {
  proto::endpoint e;
  e.name = name;
  e.transfer = caf::actor_cast<caf::actor>(transfer);
  e.plugin = "sim";
  e.listen_handle.assign(128, 0);
  e.region_bytes = region_bytes;
  return e;
}

transfer_actor spawn_sim_transfer(caf::actor_system& sys, std::string name,
                                  std::uint64_t region_bytes,
                                  std::shared_ptr<sim_network> network) {
  return sys.spawn(sim_transfer, std::move(name), region_bytes,
                   std::move(network));
}

} // namespace kvferry::sim
