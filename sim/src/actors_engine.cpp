// `kvferry sim --engine actors` (docs/sim.md, "The actors engine"): the
// trace through kvferry's real directory, router, producer and consumer
// actors under CAF's test coordinator, in virtual time, with the model
// engine's models behind the seams:
//
// - the network: each send order is a flow of the engine's flow_network
//   (per-host NIC pipes shared max-min fairly, CUDA IPC ports on one host),
//   after the engine's fixed costs (latency, per message, per block);
// - prefill: a relay in front of each producer puts each request on its
//   worker's modelled GPU (FIFO, `prefill_ms`) as it delivers it, and the
//   network holds the worker's send orders until the GPU finished the
//   request's prefill (layer-wise: layer l at (l + 1) / L of it);
// - CAF hops: those relays (one in front of each producer and consumer)
//   hold every message `hop_us` before passing it on; replies go straight
//   back (one hop per request-reply pair, where the model engine charges
//   allocate and grant one each);
// - decode: once a request's last byte landed at its consumer (its recv
//   orders answered) it joins the engine's continuous-batching model; the
//   consumer keeps its blocks (keep_blocks_until_decoded) until the model
//   says it left decode (`decoded_atom`), so admission waits as in the
//   model engine.
//
// The trace streams through: the router pulls each request from the trace
// reader as it sends it (router_config::source), and a request's state lives
// from then until its row is written (in trace order), so memory follows the
// requests in flight, not the trace. The decode pools' figures are the real
// consumers' (their stats reply), read at the end of each virtual instant
// in which a consumer may have changed them.
//
// Two event queues, one loop: the models keep their own (earliest first,
// ties in the order scheduled; void flow ends dropped), the actors' timers
// are in the test coordinator's clock, and the engine's loop (next_event)
// moves virtual time to the earlier of the two. Deterministic.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <stdexcept>
#include <unordered_map>

#include <caf/all.hpp>
#include <caf/scheduler/test_coordinator.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "decode_batch.hpp"
#include "flow_network.hpp"
#include "kvferry/actors/app.hpp"
#include "kvferry/actors/directory.hpp"
#include "kvferry/actors/node_actor.hpp"
#include "kvferry/actors/router.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/sim/answered_timeouts.hpp"
#include "kvferry/sim/sim.hpp"
#include "kvferry/sim/sim_transfer.hpp"
#include "request_rows.hpp"
#include "transfer_costs.hpp"

namespace kvferry::sim {

namespace {

using ns_t = std::int64_t;
using namespace std::chrono;

constexpr std::uint64_t first_request_id = 1;
// Deadlines far beyond any wait a trace can cause: the model engine lets a
// request wait however long it takes (docs/sim.md, "Not yet").
constexpr std::uint32_t patient_ms = 100'000'000; // 27.8 hours

ns_t from_ms(double ms) {
  return static_cast<ns_t>(std::llround(ms * 1e6));
}
ns_t from_us(double us) {
  return static_cast<ns_t>(std::llround(us * 1e3));
}

struct sim_system_config : runtime::system_config {
  sim_system_config() { use_test_coordinator(); }
};

// What the models learn of one trace request.
struct request_state {
  trace_request trace;                   // its hash_ids went to the router
  std::uint32_t prefill = 0, decode = 0; // worker indexes
  ns_t prefill_ns = 0;
  double factor = 1; // its transfer_factor (transfer_costs.hpp), drawn once
  ns_t at_producer = -1, prefill_start = -1, prefill_end = -1;
  ns_t first_order = -1; // its first send order: the grant has come
  // Its last byte landed: the consumer's recv orders are answered, its KV
  // is complete (the engine's transfer_done).
  ns_t landed = -1;
  double bytes = 0;
  bool ipc = false, routed = false;
  // The router's answer came (`ok`: the KV is in place), and whether a GPU
  // queue or a decode batch still holds it: until the three say it is over,
  // the models may still write here (models::complete).
  bool answered = false, ok = false;
  bool queued = false, decoding = false;
  std::vector<std::uint32_t> held; // send orders waiting for the prefill
  std::uint32_t parts_landed = 0;
  ns_t first_token = -1, last_token = -1;
};

// A decode worker's pool as its consumer reports it (consumer_stats), over
// time: the summary's pool_use.
struct pool_seen {
  std::uint64_t capacity = 0, used = 0, peak = 0, waited = 0, waiting = 0;
  double used_integral = 0; // block-ns
  ns_t since = 0;           // `used` holds from then on
  bool dirty = false;       // a message reached the consumer since
};

struct worker_model {
  std::string name;
  bool prefill = false;
  std::uint32_t host = 0, ipc_link = 0; // ipc-out (prefill) or ipc-in
  std::deque<std::uint32_t> queue;      // prefill: requests for its GPU
  bool busy = false, dead = false;
  ns_t died = -1;
  // Decode: the consumer to tell, requests whose KV is complete, the batch
  // (by the step giving their last token), those whose first token ends
  // this step.
  caf::actor app;
  decode_batch batch; // requests (indexes) whose KV is complete
  pool_seen pool;     // decode
};

// The models the actors meet: timers, the GPUs, the network.
class models : public sim_network {
public:
  models(const topology::deployment& topo, caf::actor_system& sys)
      : topo_(topo), sim_(topo.sim), sys_(sys),
        // The NICs, then the queues for a prefill GPU and for pool blocks.
        rates_(2 * topo.hosts.size() + 2),
        net_([this](ns_t at, std::uint32_t id,
                    std::uint32_t version) { on_flow_at(at, id, version); },
             &rates_, std::uint32_t(2 * topo.hosts.size())) {
    lbb_ = double(topo.model.block_bytes_per_layer());
  }

  std::vector<worker_model> workers;
  std::unordered_map<std::string, std::uint32_t> by_name;
  std::map<caf::actor_addr, std::uint32_t> consumer_of_relay;

  void build() {
    std::unordered_map<std::string, std::uint32_t> host_index;
    double nic = sim_.nic_gbit_per_s * sim_.nics_per_host / 8.0;
    for (auto& host : topo_.hosts) {
      host_index[host.name] = std::uint32_t(host_index.size());
      net_.add_link("nic-out " + host.name, nic);
      net_.add_link("nic-in " + host.name, nic);
    }
    for (auto& w : topo_.workers) {
      worker_model m;
      m.name = w.name;
      m.prefill = w.role == topology::worker_role::prefill;
      m.host = host_index.at(w.host);
      m.ipc_link = net_.add_link((m.prefill ? "ipc-out " : "ipc-in ") + w.name,
                                 sim_.ipc_gbyte_per_s);
      by_name[w.name] = std::uint32_t(workers.size());
      workers.push_back(std::move(m));
    }
  }

  ns_t now() const {
    return duration_cast<nanoseconds>(sys_.clock().now().time_since_epoch())
        .count();
  }

  // ---- the models' own event queue
  //
  // Earliest first, ties in the order scheduled; the engine's loop runs it
  // beside CAF's clock (actors_engine::next_event). Not a CAF timer per
  // event: a re-share on a busy link gives each of its flows a new
  // projected end, and as CAF timers each of them, void or not, stayed in
  // CAF's clock until its time (the slowed NIC of docs/sim.md's "Faults"
  // example: thousands of flows, re-shared at each start and end). Here a
  // void flow end is dropped when it comes up, and the queue is compacted
  // whenever it doubled.

  // Runs `f` at virtual time `t` (now, if `t` has passed).
  void at(ns_t t, std::function<void()> f) {
    std::uint32_t key;
    if (free_timers_.empty()) {
      key = std::uint32_t(timers_.size());
      timers_.push_back(std::move(f));
    } else {
      key = free_timers_.back();
      free_timers_.pop_back();
      timers_[key] = std::move(f);
    }
    push({t, 0, key, 0, false});
  }

  /// The time of the earliest event (none: the queue is empty).
  std::optional<ns_t> next_event() const {
    if (events_.empty())
      return std::nullopt;
    return events_.front().at;
  }

  /// Runs every event due now (the engine moved the clock to the earliest).
  void run_due() {
    auto t = now();
    while (!events_.empty() && events_.front().at <= t) {
      std::pop_heap(events_.begin(), events_.end(), later{});
      auto e = events_.back();
      events_.pop_back();
      run(e);
    }
  }

  /// The events queued, live or void (summary::peak_model_events).
  std::size_t queued_events() const { return events_.size(); }

  // ---- the requests between the trace and their rows

  // ---- the requests between the trace and their rows

  // A request read from the trace (it is the next index).
  void add(request_state r) { window_.push_back(std::move(r)); }

  // Request `index` (trace order) or, when its row is written, none.
  request_state* find(std::uint64_t index) {
    return index >= base_ && index - base_ < window_.size()
               ? &window_[index - base_]
               : nullptr;
  }
  request_state* find_id(std::uint64_t request_id) {
    return find(request_id - first_request_id);
  }

  // Over: the router answered it, and nothing holds it any more (a GPU
  // queue, a decode batch), or it decoded its last token, or its decode
  // worker died with it.
  bool complete(const request_state& r) const {
    if (!r.answered || r.queued || r.decoding)
      return false;
    return !r.ok || r.last_token >= 0 || workers[r.decode].dead;
  }

  // Hands the requests that are over to `report`, in trace order, and
  // forgets them; with `all`, every one read (the run has ended).
  template<class Report>
  void settle(Report report, bool all = false) {
    while (!window_.empty() && (all || complete(window_.front()))) {
      report(window_.front());
      window_.pop_front();
      ++base_;
    }
  }

  // The relay delivers a prefill request to its producer: onto the GPU's
  // queue (not for a dead worker: the router failed it already).
  void prefill_arrives(std::uint32_t producer, std::uint64_t request_id,
                       const caf::actor& consumer_relay) {
    auto* found = find_id(request_id);
    if (found == nullptr)
      return; // failed and reported already (a worker of it died)
    auto index = std::uint32_t(request_id - first_request_id);
    auto& r = *found;
    r.routed = true;
    r.prefill = producer;
    r.decode = consumer_of_relay.at(consumer_relay.address());
    r.ipc = workers[producer].host == workers[r.decode].host;
    r.at_producer = now();
    if (workers[producer].dead || workers[r.decode].dead)
      return;
    auto& gpu = workers[producer];
    gpu.queue.push_back(index);
    r.queued = true;
    if (!gpu.busy)
      start_prefill(producer);
  }

  // A send order: held until its layers are computed, then the fixed
  // costs, then a flow through the links (or nothing, for no bytes).
  void start(order o) override {
    auto* found = find_id(o.transfer_id >> 12);
    if (found == nullptr)
      return; // its request failed and was reported: it moves nothing
    auto& r = *found;
    if (r.first_order < 0)
      r.first_order = now();
    auto slot = take_slot(std::move(o));
    if (r.prefill_start < 0)
      r.held.push_back(slot); // released when its prefill starts
    else
      release(slot);
  }

  // A worker dies (a fault): its actors go (the directory sees them go and
  // tells the router, which fails their requests), the flows to and from it
  // leave the links, its GPU's queue empties; requests bound for a dead
  // decode worker leave the other GPUs' queues.
  void kill(std::uint32_t worker, const std::vector<caf::actor>& actors) {
    auto& w = workers[worker];
    w.dead = true;
    w.died = now();
    decoding_ -= w.batch.size();
    w.batch.clear();
    for (auto& r : window_)
      if (r.decode == worker)
        r.decoding = false;
    for (auto& a : actors)
      caf::anon_send_exit(a, caf::exit_reason::kill);
    for (std::uint32_t slot = 0; slot < orders_.size(); ++slot) {
      auto& o = orders_[slot];
      if (o.live && (o.sender == w.name || o.receiver == w.name))
        drop(slot);
    }
    for (auto& gpu : workers) {
      auto& q = gpu.queue;
      q.erase(std::remove_if(q.begin(), q.end(),
                             [&](std::uint32_t i) {
                               auto& r = *find(i);
                               r.queued =
                                   r.prefill != worker && r.decode != worker;
                               return !r.queued;
                             }),
              q.end());
    }
    // The consumers' pools: a producer's death frees blocks at each.
    for (auto& d : workers)
      d.pool.dirty = !d.prefill && !d.dead;
  }

  // A host's NICs run at `gbit_per_s` from now on (a fault).
  void slow(std::uint32_t host, double gbit_per_s) {
    for (auto link : {2 * host, 2 * host + 1})
      net_.set_capacity(now(), link, gbit_per_s / 8.0);
  }

  /// Requests in a live decode worker's batch or waiting for it: the run
  /// goes on until they leave, after the router has its answers.
  std::uint64_t decoding() const { return decoding_; }

  // ---- the decode pools, as the consumers report them

  // A message reached decode worker `worker`'s consumer: its pool may have
  // changed (read at the end of the instant: read_pools).
  void touch_pool(std::uint32_t worker) {
    auto& w = workers[worker];
    w.pool.dirty = !w.prefill && !w.dead;
  }
  bool pools_dirty() const {
    return std::any_of(workers.begin(), workers.end(),
                       [](const worker_model& w) { return w.pool.dirty; });
  }
  // What the consumer of `worker` says now.
  void pool_now(std::uint32_t worker, const proto::consumer_stats& s) {
    auto& p = workers[worker].pool;
    pool_until(p, now());
    p.capacity = s.pool_blocks;
    p.used = s.pool_blocks - s.free_blocks;
    p.peak = std::max(p.peak, p.used);
    p.waited = s.waited;
    waiting_ += std::int64_t(s.waiting) - std::int64_t(p.waiting);
    p.waiting = s.waiting;
  }
  // Brings the pools' use and the queue for blocks up to `t`.
  void pool_until(pool_seen& p, ns_t t) {
    auto series = 2 * topo_.hosts.size() + 1;
    if (t > waiting_since_) {
      rates_.add(series, waiting_since_, t, double(waiting_));
      waiting_since_ = t;
    }
    p.used_integral += double(p.used) * double(t - p.since);
    p.since = t;
  }

  // The link figures for the summary.
  const flow_network& network() const { return net_; }
  timeline& rates() { return rates_; }

private:
  // One prefill at a time, first come first served; a prefill that started
  // runs to its end even if its request failed meanwhile.
  void start_prefill(std::uint32_t producer) {
    auto& gpu = workers[producer];
    gpu.busy = !gpu.queue.empty() && !gpu.dead;
    if (!gpu.busy)
      return;
    auto& r = *find(gpu.queue.front());
    gpu.queue.pop_front();
    r.queued = false;
    // Waiting for a prefill GPU: from reaching the producer until now.
    rates_.add(2 * topo_.hosts.size(), r.at_producer, now(), 1.0);
    r.prefill_start = now();
    r.prefill_end = now() + r.prefill_ns;
    for (auto slot : r.held)
      release(slot);
    r.held.clear();
    at(r.prefill_end, [this, producer] { start_prefill(producer); });
  }

  // A send order of a request whose prefill has started: its part (a layer,
  // or the whole) is computed at its share of the prefill; then the fixed
  // costs.
  void release(std::uint32_t slot) {
    auto& o = orders_[slot];
    auto& r = *find_id(o.transfer_id >> 12); // holds the order
    auto part = o.transfer_id & (max_parts - 1);
    std::uint32_t parts = topo_.transfer.layerwise ? topo_.model.layers : 1;
    ns_t ready = r.prefill_start + r.prefill_ns * ns_t(part + 1) / ns_t(parts);
    double bytes = double(o.bytes);
    // The model engine's costs (transfer_costs.hpp), per part.
    o.factor = r.factor;
    double fixed_us =
        ((r.ipc ? 0 : sim_.latency_us) +
         part_fixed_us(sim_, r.ipc, bytes, double(topo_.transfer.chunk_bytes),
                       lbb_)) *
        o.factor;
    auto go = std::max(now(), ready) + from_us(fixed_us);
    at(go, [this, slot, gen = o.gen] {
      if (orders_[slot].live && orders_[slot].gen == gen)
        start_flow(slot);
    });
  }

  // An order whose sender or receiver died: off the links, forgotten.
  void drop(std::uint32_t slot) {
    auto& o = orders_[slot];
    if (o.flow >= 0)
      net_.remove(now(), std::uint32_t(o.flow));
    free_order(slot);
  }

  void free_order(std::uint32_t slot) {
    auto gen = orders_[slot].gen + 1;
    orders_[slot] = live_order{};
    orders_[slot].gen = gen;
    free_orders_.push_back(slot);
  }

  std::uint32_t take_slot(order o) {
    std::uint32_t slot;
    if (!free_orders_.empty()) {
      slot = free_orders_.back();
      free_orders_.pop_back();
    } else {
      slot = std::uint32_t(orders_.size());
      orders_.emplace_back();
    }
    static_cast<order&>(orders_[slot]) = std::move(o);
    orders_[slot].live = true;
    orders_[slot].flow = -1;
    return slot;
  }

  void start_flow(std::uint32_t slot) {
    auto& o = orders_[slot];
    if (o.bytes == 0)
      return landed(slot);
    auto& from = workers[by_name.at(o.sender)];
    auto& to = workers[by_name.at(o.receiver)];
    bool ipc = from.host == to.host;
    auto a = ipc ? from.ipc_link : 2 * from.host;
    auto b = ipc ? to.ipc_link : 2 * to.host + 1;
    o.flow = std::int64_t(net_.start(now(), slot, a, b, double(o.bytes),
                                     flow_network::unlimited, o.factor));
  }

  void on_flow_at(ns_t t, std::uint32_t id, std::uint32_t version) {
    push({t, 0, id, version, true});
  }

  void landed(std::uint32_t slot) {
    auto& o = orders_[slot];
    auto index = (o.transfer_id >> 12) - first_request_id;
    auto bytes = double(o.bytes);
    land(o, now());
    free_order(slot);
    auto* r = find(index);
    if (r == nullptr)
      return; // failed and reported (a fault)
    r->landed = std::max(r->landed, now());
    r->bytes += bytes;
    std::uint32_t parts = topo_.transfer.layerwise ? topo_.model.layers : 1;
    if (++r->parts_landed == parts)
      join_decode(std::uint32_t(index));
  }

  // ---- decode: the model engine's continuous batching (engine.cpp,
  // start_step / on_step_done); a request that leaves frees its blocks at
  // the consumer (`decoded`, keep_blocks_until_decoded).

  void join_decode(std::uint32_t index) {
    auto& r = *find(index);
    auto& d = workers[r.decode];
    if (d.dead)
      return;
    d.batch.ready.push_back(index);
    r.decoding = true;
    ++decoding_;
    if (!d.batch.stepping)
      start_step(r.decode);
  }

  void start_step(std::uint32_t worker) {
    auto size = workers[worker].batch.start(
        sim_.decode_max_batch, [this](std::uint32_t index) {
          return find(index)->trace.output_tokens;
        });
    if (size > 0)
      at(now() + from_ms(interpolate(sim_.decode_step_ms, double(size))),
         [this, worker] { step_done(worker); });
  }

  void step_done(std::uint32_t worker) {
    auto& d = workers[worker];
    if (d.dead)
      return;
    d.batch.step_done(
        [this](std::uint32_t index) { find(index)->first_token = now(); },
        [&](std::uint32_t index) {
          auto& r = *find(index);
          r.last_token = now();
          r.decoding = false;
          --decoding_;
          caf::anon_send(d.app, proto::decoded_atom::value,
                         first_request_id + index);
          touch_pool(worker);
        });
    start_step(worker);
  }

  struct event {
    ns_t at;
    std::uint64_t seq;
    std::uint32_t key;     // timers_' slot, or a flow's id
    std::uint32_t version; // a flow end: the flow's version then
    bool flow;             // a flow's projected end (flow_network)
  };
  struct later {
    bool operator()(const event& x, const event& y) const {
      return x.at != y.at ? x.at > y.at : x.seq > y.seq;
    }
  };

  void push(event e) {
    e.seq = seq_++;
    events_.push_back(e);
    std::push_heap(events_.begin(), events_.end(), later{});
    if (events_.size() > compact_at_)
      compact();
  }

  void run(const event& e) {
    if (e.flow) {
      if (auto slot = net_.on_event(now(), e.key, e.version))
        landed(*slot);
      return;
    }
    auto f = std::move(timers_[e.key]);
    free_timers_.push_back(e.key); // before f: it may set a timer
    f();
  }

  // Drops the void flow ends (their flow ended or was re-shared since):
  // amortised O(1) per event, as the queue doubled since the last time.
  void compact() {
    events_.erase(std::remove_if(events_.begin(), events_.end(),
                                 [this](const event& e) {
                                   return e.flow &&
                                          !net_.pending(e.key, e.version);
                                 }),
                  events_.end());
    std::make_heap(events_.begin(), events_.end(), later{});
    compact_at_ = std::max<std::size_t>(4096, 2 * events_.size());
  }

  const topology::deployment& topo_;
  const topology::sim_spec& sim_;
  caf::actor_system& sys_;
  timeline rates_;
  flow_network net_;
  double lbb_ = 0;
  // The event queue (a heap: `later`), the closures of its events by key
  // (a slot, reused once it ran).
  std::vector<event> events_;
  std::uint64_t seq_ = 0;
  std::size_t compact_at_ = 4096;
  std::vector<std::function<void()>> timers_;
  std::vector<std::uint32_t> free_timers_;
  std::uint64_t decoding_ = 0;
  // The requests read and not yet reported, in trace order: request `i` at
  // window_[i - base_].
  std::deque<request_state> window_;
  std::uint64_t base_ = 0;
  // Requests waiting for pool blocks at all consumers, since when.
  std::int64_t waiting_ = 0;
  ns_t waiting_since_ = 0;
  // Send orders by slot (the flows' tags); `gen` voids a dropped order's
  // timer.
  struct live_order : order {
    bool live = false;
    double factor = 1; // its request's transfer_factor
    std::int64_t flow = -1;
    std::uint32_t gen = 0;
  };
  std::vector<live_order> orders_;
  std::vector<std::uint32_t> free_orders_;
};

// A CAF hop between processes: holds each message `hop` before passing it
// on (replies go straight back to the sender). In front of a producer it
// puts each prefill request on the worker's GPU as it delivers it.
caf::behavior relay(caf::event_based_actor* self, caf::actor target,
                    caf::timespan hop, models* m, std::uint32_t worker) {
  struct held {
    caf::message msg;
    caf::response_promise reply;
  };
  auto pending = std::make_shared<std::map<std::uint64_t, held>>();
  auto next = std::make_shared<std::uint64_t>(0);
  self->set_default_handler(
      [=](caf::scheduled_actor*,
          caf::message_view& x) -> caf::result<caf::message> {
        auto key = (*next)++;
        pending->emplace(key, held{x.move_content_to_message(),
                                   self->make_response_promise()});
        self->delayed_send(self, hop, proto::sweep_atom::value, key);
        return caf::message{};
      });
  return {[=](proto::sweep_atom, std::uint64_t key) {
    auto i = pending->find(key);
    auto h = std::move(i->second);
    pending->erase(i);
    if (h.msg.match_elements<proto::prefill_atom, proto::prefill_request>()) {
      auto& req = h.msg.get_as<proto::prefill_request>(1);
      m->prefill_arrives(worker, req.request_id, req.consumer);
    }
    if (h.reply.async())
      self->send(target, std::move(h.msg));
    else
      h.reply.delegate(target, std::move(h.msg));
    m->touch_pool(worker);
  }};
}

// Reads the pools of the consumers whose pool may have changed (their stats
// reply), once the instant's other messages are done: it perturbs nothing.
caf::behavior pool_reader(caf::event_based_actor* self, models* m) {
  return {[=](proto::sweep_atom) {
    for (std::uint32_t w = 0; w < m->workers.size(); ++w) {
      auto& worker = m->workers[w];
      if (!worker.pool.dirty)
        continue;
      worker.pool.dirty = false;
      self->request(worker.app, caf::infinite, proto::stats_atom::value)
          .then([m, w](const proto::consumer_stats& s) { m->pool_now(w, s); },
                [](caf::error&) {}); // it died meanwhile: its pool is gone
    }
  }};
}

// Registers the workers with the directory (replies ignored: a refusal
// would show as a worker the router never hears of).
caf::behavior enrol(caf::event_based_actor* self, directory_actor dir,
                    std::vector<worker_info> infos) {
  for (auto& info : infos)
    self->request(dir, caf::infinite, register_atom::value, info,
                  std::string{"sim"})
        .then([](lease&) {}, [](caf::error&) {});
  return {[](proto::sweep_atom) {}};
}

class actors_engine {
public:
  actors_engine(trace_reader& trace, const topology::deployment& topo,
                const run_options& options)
      : trace_(trace), topo_(topo), options_(options), sys_(config_),
        sched_(
            dynamic_cast<caf::scheduler::test_coordinator&>(sys_.scheduler())),
        models_(topo, sys_) {
    faults_ = checked_faults(topo, options);
    geometry_.layers = topo.model.layers;
    geometry_.kv_heads = topo.model.kv_heads;
    geometry_.head_dim = topo.model.head_dim;
    geometry_.dtype = parse_dtype(topo.model.dtype).value_or(kv_dtype::fp16);
    geometry_.block_tokens = topo.model.block_tokens;
  }

  ~actors_engine() {
    for (auto& a : spawned_)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    sched_.run();
  }

  summary run() {
    // The actors' own log (workers joining, ...) is not the report.
    auto level = spdlog::get_level();
    spdlog::set_level(spdlog::level::warn);
    struct restore {
      spdlog::level::level_enum level;
      ~restore() { spdlog::set_level(level); }
    } restore_level{level};
    pool_reader_ = sys_.spawn(pool_reader, &models_);
    spawned_.push_back(pool_reader_);
    models_.build();
    start_workers();
    schedule_faults();
    for (auto& f : faults_)
      out_.faults.push_back({f.text, 0});
    csv_.emplace(options_.out_dir);
    auto run = std::make_shared<router_run>();
    auto router = spawn_router(sys_, router_config_(), run);
    spawned_.push_back(caf::actor_cast<caf::actor>(router));
    drive(*run);
    return finish();
  }

private:
  // The router's source: the next trace request, its state kept from now
  // until its row is written. A bad line ends the requests here and is
  // thrown when the run is over (not through the router's handler).
  bool next_request(router_input& in) {
    if (bad_trace_)
      return false;
    request_state r;
    try {
      if (!trace_.next(r.trace))
        return false;
    } catch (...) {
      bad_trace_ = std::current_exception();
      return false;
    }
    ++read_;
    r.prefill_ns =
        from_ms(interpolate(topo_.sim.prefill_ms, r.trace.input_tokens));
    r.factor = transfer_factor(topo_.sim, r.trace.index);
    in.tokens = r.trace.input_tokens;
    // The router takes it up `router_us` after its arrival (the row's
    // times count from the arrival).
    in.arrival =
        caf::timespan{r.trace.arrival_ns + from_us(topo_.sim.router_us)};
    if (topo_.sim.routing == routing::prefix_aware)
      in.prefix_ids = std::move(r.trace.hash_ids);
    r.trace.hash_ids = {}; // the row does not need them
    models_.add(std::move(r));
    return true;
  }

  // The router's row of a request: where it went and whether its KV is in
  // place.
  void answered(const router_request& row) {
    auto& r = *models_.find(row.index);
    r.answered = true;
    r.ok = row.ok;
    // Where the router sent it (a request may fail before any relay saw
    // it).
    r.routed = true;
    r.prefill = producer_worker_[row.producer];
    r.decode = consumer_worker_[row.consumer];
    r.ipc = models_.workers[r.prefill].host == models_.workers[r.decode].host;
  }

  app_config app(const topology::worker_spec& w, std::uint64_t blocks) {
    app_config a;
    a.name = w.name;
    a.geometry = geometry_;
    auto bytes = blocks * geometry_.layer_block_bytes();
    a.region = memory_region::model_only(bytes, w.name);
    // The shared_ptr is the models themselves (not owned: they outlive the
    // actors).
    std::shared_ptr<sim_network> net(std::shared_ptr<sim_network>{}, &models_);
    a.transfer = spawn_sim_transfer(sys_, w.name, bytes, net);
    spawned_.push_back(caf::actor_cast<caf::actor>(a.transfer));
    a.self = sim_endpoint(w.name, bytes, a.transfer);
    // The worker's node actor moves its bytes, as in a real worker (linked
    // to the app: a killed worker's node dies with it).
    a.node = spawn_node_actor(
        sys_, {w.name, a.transfer, a.self, node_layout(bytes), patient_ms});
    a.timeout_ms = patient_ms;
    a.queue_wait_ms = patient_ms;
    a.queue_limit = std::numeric_limits<std::uint32_t>::max();
    a.layerwise = topo_.transfer.layerwise;
    // The model engine negotiates every request (allocate/grant): no credit.
    a.credit_blocks = 0;
    a.lend_percent = 0;
    // The decode model says when a request leaves decode and its blocks
    // are free, as the model engine holds them.
    a.keep_blocks_until_decoded = true;
    return a;
  }

  // The real pool's blocks (pool_layout's: block ids of all layers) laid
  // out layer-major: a send order's extents then run over consecutive
  // blocks (one per run per layer and half) where block-major gives one per
  // block and layer. The simulated transfer actor counts only their bytes,
  // which are the same: no output changes, the nodes plan and the orders
  // carry far fewer extents (docs/sim.md, "Performance").
  kv_layout node_layout(std::uint64_t bytes) const {
    auto pool = pool_layout(geometry_, bytes);
    return kv_layout::layer_major(pool.layers(), pool.num_blocks(),
                                  pool.block_bytes());
  }

  caf::actor add_relay(const caf::actor& target, std::uint32_t worker) {
    auto r = sys_.spawn(relay, target, caf::timespan{from_us(topo_.sim.hop_us)},
                        &models_, worker);
    spawned_.push_back(r);
    return r;
  }

  void start_workers() {
    directory_options d;
    d.secret = "sim";
    d.lease = hours(24 * 365);
    d.stall_tolerance = caf::timespan{0};
    dir_ = spawn_directory(sys_, d);
    spawned_.push_back(caf::actor_cast<caf::actor>(dir_));
    // The model engine does not model the prefill workers' pools; the real
    // producer takes a request's source blocks when the request comes, so
    // its queue holds blocks: give each room for four of the largest decode
    // pools (a bit per block), beyond which a request would wait for source
    // blocks here and not in the model engine.
    std::uint64_t decode_blocks = 0;
    for (auto& w : topo_.workers)
      if (w.role != topology::worker_role::prefill)
        decode_blocks =
            std::max<std::uint64_t>(decode_blocks, 4 * w.pool_blocks);
    std::vector<worker_info> infos;
    std::uint32_t index = 0;
    for (auto& w : topo_.workers) {
      bool prefill = w.role == topology::worker_role::prefill;
      auto a =
          app(w, prefill ? std::max<std::uint64_t>(w.pool_blocks, decode_blocks)
                         : w.pool_blocks);
      worker_info info;
      info.name = w.name;
      info.role = prefill ? worker_role::prefill : worker_role::decode;
      info.listen_handles = {std::vector<char>(128, 0)};
      info.transfer = caf::actor_cast<caf::actor>(a.transfer);
      caf::actor target;
      if (prefill)
        target = caf::actor_cast<caf::actor>(spawn_producer(sys_, a));
      else
        target = caf::actor_cast<caf::actor>(spawn_consumer(sys_, a));
      spawned_.push_back(target);
      models_.workers[index].app = target;
      info.app = target;
      infos.push_back(std::move(info));
      auto r = add_relay(target, index);
      worker_actors_.push_back(
          {target, r, caf::actor_cast<caf::actor>(a.transfer)});
      (prefill ? producer_worker_ : consumer_worker_).push_back(index);
      if (prefill) {
        producers_.push_back({w.name, caf::actor_cast<producer_actor>(r)});
      } else {
        models_.consumer_of_relay[r.address()] = index;
        consumers_.push_back({w.name, r});
      }
      ++index;
    }
    spawned_.push_back(sys_.spawn(enrol, dir_, std::move(infos)));
    sched_.run();
  }

  // At its virtual time each fault happens to the models and the actors.
  void schedule_faults() {
    for (auto& f : faults_) {
      auto at = from_ms(f.at_s * 1e3);
      if (f.what == fault::kind::link_slow) {
        for (std::uint32_t h = 0; h < topo_.hosts.size(); ++h)
          if (topo_.hosts[h].name == f.target)
            models_.at(
                at, [this, h, rate = f.gbit_per_s] { models_.slow(h, rate); });
      } else {
        auto w = models_.by_name.at(f.target);
        models_.at(at, [this, w] { models_.kill(w, worker_actors_[w]); });
      }
    }
  }

  router_config router_config_() {
    router_config c;
    c.first_request_id = first_request_id;
    c.producers = producers_;
    c.consumers = consumers_;
    c.routing_policy = topo_.sim.routing;
    c.directory = dir_;
    c.directory_name = "simulated";
    c.layerwise = topo_.transfer.layerwise;
    c.inflight = std::numeric_limits<std::uint32_t>::max();
    c.timeout_ms = patient_ms;
    c.go_on_after_failure = true;
    // The router remembers as many prefix ids per decode worker as the
    // largest pool holds 512-token blocks (the model engine: each its own).
    std::size_t capacity = 0;
    for (auto& w : topo_.workers)
      if (w.role != topology::worker_role::prefill)
        capacity = std::max<std::size_t>(
            capacity, std::uint64_t(w.pool_blocks) / topo_.model.layers *
                          topo_.model.block_tokens / hash_block_tokens);
    c.prefix_capacity = capacity;
    c.source = [this](router_input& in) { return next_request(in); };
    c.on_request = [this](const router_request& row) { answered(row); };
    return c;
  }

  // The event loop: run every message due, read the pools that changed,
  // report the requests that are over, then jump to the next event.
  void drive(const router_run& run) {
    instant();
    std::uint64_t timers = 0;
    while ((!run.finished() || models_.decoding() > 0) && next_event()) {
      instant();
      if (options_.progress && (++timers & 0xffff) == 0)
        options_.progress(trace_.total_bytes()
                              ? double(trace_.bytes_read()) /
                                    double(trace_.total_bytes())
                              : 0,
                          reported_);
    }
    // Not finished: faults left no prefill or no decode worker, and the
    // router cannot route the rest (row(): unroutable).
  }

  // Moves virtual time to the earliest of the models' events and CAF's
  // timers (the actors' hops and timeouts) and starts what is due then: all
  // the models' events of that instant, or one CAF timer. At equal times the
  // models' go first. Two queues, so that a model event is no CAF timer (a
  // message, an entry in CAF's clock) and a void one costs nothing there.
  // False when neither holds anything.
  bool next_event() {
    auto& clock = sched_.clock();
    auto model = models_.next_event();
    if (!model)
      return sched_.trigger_timeout();
    auto& caf_timers = clock.schedule();
    if (!caf_timers.empty() &&
        caf_timers.begin()->first.time_since_epoch() < nanoseconds(*model))
      return sched_.trigger_timeout();
    auto at = caf::actor_clock::time_point{nanoseconds(*model)};
    clock.current_time = std::max(clock.current_time, at);
    models_.run_due();
    return true;
  }

  void instant() {
    sched_.run();
    if (models_.pools_dirty()) {
      caf::anon_send(pool_reader_, proto::sweep_atom::value);
      sched_.run();
    }
    models_.settle([this](request_state& r) { row(r); });
    // Each time the clock's schedule doubled: amortised O(1) per entry.
    auto& clock = sched_.clock();
    out_.peak_clock_entries = std::max<std::uint64_t>(out_.peak_clock_entries,
                                                      clock.schedule().size());
    out_.peak_model_events = std::max<std::uint64_t>(out_.peak_model_events,
                                                     models_.queued_events());
    if (clock.schedule().size() > sweep_at_) {
      drop_answered_timeouts(clock);
      sweep_at_ = std::max<std::size_t>(4096, 2 * clock.schedule().size());
    }
  }

  summary finish() {
    // What is left never finished: failed, or never routed (unroutable).
    models_.settle([this](request_state& r) { row(r); }, true);
    if (bad_trace_)
      std::rethrow_exception(bad_trace_);
    request_state r;
    while (trace_.next(r.trace)) {
      ++read_;
      row(r);
    }
    csv_->close();
    return report();
  }

  // Request `r`'s row of requests.csv and its share of the summary, in
  // trace order (the model engine's rows are in the order they end).
  void row(request_state& r) {
    ++reported_;
    auto& s = out_;
    request_row row;
    row.trace = &r.trace;
    row.arrival = r.trace.arrival_ns;
    row.ipc = r.ipc;
    if (r.routed) {
      row.prefill = models_.workers[r.prefill].name;
      row.decode = models_.workers[r.decode].name;
    }
    if (!r.ok && larger_than_pool(r)) {
      row.what = request_row::status::rejected; // the consumer refused it
      ++s.rejected;
    } else if (!r.ok || decoding_when_died(r) || r.last_token < 0) {
      row.what = count_failure(s, r) ? request_row::status::failed
                                     : request_row::status::unfinished;
    } else {
      // The grant reached the producer when it ordered the first send.
      auto grant = r.first_order;
      auto ready = std::max(r.prefill_end, grant);
      row.parts[0] = r.prefill_start - r.trace.arrival_ns;
      row.parts[1] = r.prefill_ns;
      row.parts[2] = std::max<ns_t>(0, grant - r.prefill_end);
      row.parts[3] = r.landed - ready;
      row.parts[4] = r.first_token - r.landed;
      row.ttft = r.first_token - r.trace.arrival_ns;
      // Layer-wise from when the grant is in and the prefill has begun
      // (the model engine asks for the grant as the prefill begins; the
      // real producer as the request comes), else from when both the
      // prefill and the grant are done.
      row.transfer_total =
          r.landed -
          (topo_.transfer.layerwise ? std::max(grant, r.prefill_start) : ready);
      row.e2e = r.last_token - r.trace.arrival_ns;
      row.bytes = r.bytes;
      record(s, row, options_.ttft_slo_ms);
      end_ = std::max(end_, r.last_token);
    }
    csv_->row(row);
  }

  summary report() {
    auto& s = out_;
    s.engine = "actors";
    s.trace = trace_.path();
    s.trace_format = to_string(trace_.format());
    s.topology = topo_.source_file;
    s.routing = topology::to_string(topo_.sim.routing);
    s.layerwise = topo_.transfer.layerwise;
    s.prefix_reuse = false; // the consumer keeps no prefix cache
    for (auto& w : models_.workers)
      ++(w.prefill ? s.prefill_workers : s.decode_workers);
    s.hosts = topo_.hosts.size();
    s.requests = read_;
    s.completed = read_ - s.failed - s.rejected - s.unfinished;
    s.span_s = double(end_) / 1e9;
    s.ttft_slo_ms = options_.ttft_slo_ms;
    links(s, end_);
    pools(s, end_);
    return std::move(s);
  }

  // More layer-blocks than its decode worker's whole pool: the consumer
  // refuses it at once (waiting cannot help); the model engine calls it
  // rejected.
  bool larger_than_pool(const request_state& r) const {
    if (!r.routed)
      return false;
    auto bt = topo_.model.block_tokens;
    std::uint64_t blocks = (r.trace.input_tokens + bt - 1) / bt;
    return blocks * topo_.model.layers > topo_.workers[r.decode].pool_blocks;
  }

  // A request answered before its decode worker died, whose last token
  // had not come: the model engine fails it too (its KV is gone).
  bool decoding_when_died(const request_state& r) const {
    auto& d = models_.workers[r.decode];
    return r.routed && d.dead && (r.last_token < 0 || r.last_token > d.died);
  }

  // A request that did not complete: failed by a fault (the death of its
  // prefill or decode worker, or, never routed, of every prefill or every
  // decode worker: unroutable), counted as such; else false, counted as
  // unfinished: nothing failed it, yet it never finished (its patient
  // deadline ran out, or the run ended with it open), a hang.
  bool count_failure(summary& s, const request_state& r) {
    if (!r.routed && no_live_worker_of_a_role()) {
      ++s.failed;
      ++s.unroutable;
      return true;
    }
    for (std::size_t i = 0; r.routed && i < faults_.size(); ++i) {
      auto& f = faults_[i];
      auto died = [&](std::uint32_t w) {
        return models_.workers[w].dead && f.target == models_.workers[w].name;
      };
      if (f.what == fault::kind::worker_down &&
          (died(r.prefill) || died(r.decode))) {
        ++s.failed;
        ++s.faults[i].failed;
        return true;
      }
    }
    ++s.unfinished;
    return false;
  }

  // Faults killed every prefill or every decode worker: the router cannot
  // route a request.
  bool no_live_worker_of_a_role() const {
    bool prefill = false, decode = false;
    for (auto& w : models_.workers)
      (w.prefill ? prefill : decode) |= !w.dead;
    return !prefill || !decode;
  }

  void links(summary& s, ns_t end) {
    auto& net = models_.network();
    double span = double(std::max<ns_t>(1, end));
    for (std::uint32_t i = 0; i < net.links(); ++i) {
      auto& l = net.at(i);
      s.links.push_back(
          {l.name, l.nominal, l.bytes, l.bytes / (l.nominal * span)});
    }
    auto& rates = models_.rates();
    auto queue = 2 * topo_.hosts.size(); // then the queue for pool blocks
    s.bucket_s = double(rates.width_ns()) / 1e9;
    auto buckets = std::size_t((end + rates.width_ns() - 1) / rates.width_ns());
    for (std::uint32_t r = 0; r < 2 * topo_.hosts.size(); ++r) {
      if (net.at(r).bytes <= 0)
        continue;
      std::vector<double> v(buckets);
      for (std::size_t b = 0; b < buckets; ++b)
        v[b] = rates.mean(r, b) * 100 / net.at(r).nominal;
      s.link_busy.push_back({net.at(r).name, std::move(v)});
    }
    s.prefill_queue.name = "waiting for a prefill GPU";
    s.pool_queue.name = "waiting for KV-pool blocks";
    for (std::size_t b = 0; b < buckets; ++b) {
      s.prefill_queue.values.push_back(rates.mean(queue, b));
      s.pool_queue.values.push_back(rates.mean(queue + 1, b));
    }
  }

  // Each decode pool as its consumer reported it, up to `end`.
  void pools(summary& s, ns_t end) {
    double span = double(std::max<ns_t>(1, end));
    for (auto& w : models_.workers) {
      if (w.prefill)
        continue;
      auto& p = w.pool;
      models_.pool_until(p, std::max(p.since, end));
      auto capacity = double(std::max<std::uint64_t>(1, p.capacity));
      s.pools.push_back({w.name, p.capacity,
                         p.used_integral / (capacity * span), p.peak,
                         p.waited});
    }
  }

  trace_reader& trace_;
  const topology::deployment& topo_;
  const run_options& options_;
  kv_geometry geometry_;
  sim_system_config config_;
  caf::actor_system sys_;
  caf::scheduler::test_coordinator& sched_;
  models models_;
  caf::actor pool_reader_;
  directory_actor dir_;
  std::vector<router_worker<producer_actor>> producers_;
  std::vector<router_worker<caf::actor>> consumers_;
  std::vector<caf::actor> spawned_;
  std::vector<fault> faults_;
  // The router's producers and consumers: their worker indexes.
  std::vector<std::uint32_t> producer_worker_, consumer_worker_;
  // Per worker: its app actor, its relay, its transfer actor.
  std::vector<std::vector<caf::actor>> worker_actors_;
  // The report so far: requests read from the trace and reported (rows
  // written), the last token's time, the CSV.
  summary out_;
  std::uint64_t read_ = 0, reported_ = 0;
  // The clock's schedule size at which answered requests' timeouts go next
  // (answered_timeouts.hpp).
  std::size_t sweep_at_ = 4096;
  ns_t end_ = 0;
  std::optional<request_csv> csv_;
  std::exception_ptr bad_trace_; // thrown by the trace, rethrown at the end
};

} // namespace

summary run_actors(trace_reader& trace, const topology::deployment& topology,
                   const run_options& options) {
  return actors_engine(trace, topology, options).run();
}

} // namespace kvferry::sim
