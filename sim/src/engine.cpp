// The discrete-event core of `kvferry sim` (docs/sim.md, "How it works").
//
// Virtual time is integer nanoseconds; events with equal times run in the
// order they were scheduled (a sequence number), so a run is deterministic.
// A request's path mirrors the real push protocol (docs/architecture.md):
// router -> producer (one CAF hop); the producer prefills in FIFO order and,
// as it starts, asks the consumer to allocate (one hop); the consumer grants
// when its pool has the blocks (FIFO, one hop back); the bytes move as a
// flow through the links they cross, whole after prefill or layer by layer
// during it; the consumer's decode worker takes the request into its next
// continuous-batching step, and the request leaves after its output tokens,
// freeing its blocks.
//
// The parts are plain classes driven by events (router policy, producer,
// consumer, network); docs/sim.md says how the real actors replace them.
#include <algorithm>
#include <cmath>
#include <deque>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <queue>
#include <stdexcept>
#include <tuple>
#include <unordered_map>

#include <fmt/format.h>

#include "decode_batch.hpp"
#include "flow_network.hpp"
#include "kvferry/actors/route_policy.hpp"
#include "kvferry/sim/sim.hpp"
#include "request_rows.hpp"
#include "transfer_costs.hpp"

namespace kvferry::sim {

double interpolate(const std::vector<topology::sim_point>& table, double x) {
  if (table.empty())
    return 0;
  if (table.size() == 1)
    return table.front().ms * (x / table.front().x); // proportional
  std::size_t i = 1;
  while (i + 1 < table.size() && x > table[i].x)
    ++i;
  auto& a = table[i - 1];
  auto& b = table[i];
  double y = a.ms + (b.ms - a.ms) * (x - a.x) / (b.x - a.x);
  return y < 0 ? 0 : y;
}

namespace {

using ns_t = std::int64_t;

ns_t from_us(double us) {
  return static_cast<ns_t>(std::llround(us * 1e3));
}
ns_t from_ms(double ms) {
  return static_cast<ns_t>(std::llround(ms * 1e6));
}

enum class ev : std::uint8_t {
  arrival,       // the next trace request arrives at the router
  at_producer,   // a request reaches its prefill worker
  prefill_done,  // a (prefill worker)'s current prefill ends
  allocate,      // the consumer receives `allocate`
  grant,         // the producer receives `grant`
  flow_start,    // a transfer's first byte may go
  network,       // flow a may have finished (if still at version gen)
  transfer_done, // the KV cache is complete at the consumer
  step_done,     // a decode worker's batch step ends
  fault,         // run_options::faults[a] happens
};

struct event {
  ns_t at;
  std::uint64_t seq;
  ev kind;
  std::uint32_t a;   // request slot, worker index or network generation
  std::uint32_t gen; // for a slot: its occupant (request::gen) when scheduled
};

struct later {
  bool operator()(const event& x, const event& y) const {
    return x.at != y.at ? x.at > y.at : x.seq > y.seq;
  }
};

struct request {
  trace_request trace;
  std::uint32_t prefill = 0, decode = 0;
  ns_t arrival = 0, prefill_start = -1, prefill_end = -1, grant = -1;
  ns_t transfer_start = -1, transfer_done = -1, first_token = -1;
  ns_t prefill_ns = 0, tail_ns = 0;
  std::uint64_t blocks = 0; // layer-blocks held at the consumer
  double bytes = 0, saved = 0;
  double factor = 1; // its transfer_factor (transfer_costs.hpp)
  // Bumped when the slot is freed, so that the events of a request that
  // failed (a fault) do not reach the slot's next occupant.
  std::uint32_t gen = 0;
  bool ipc = false, rejected = false, flow_ended = false;
  bool live = false, holds_blocks = false, waiting = false;
  std::int64_t flow = -1; // its flow in the network, while there is one
};

// prefill_worker::current when no request is being prefilled, and when the
// GPU is still busy with one that failed (its compute runs to the end).
constexpr std::int64_t idle = -1, busy_failed = -2;

struct prefill_worker {
  std::string name;
  std::uint32_t host = 0, ipc_out = 0;
  std::deque<std::uint32_t> queue;
  std::int64_t current = -1; // slot, idle, or busy_failed
  bool dead = false;
};

struct decode_worker {
  std::string name;
  std::uint32_t host = 0, ipc_in = 0;
  std::uint64_t capacity = 0, used = 0, peak = 0, waited = 0;
  std::deque<std::uint32_t> waiting;
  decode_batch batch; // requests (slots) whose KV is complete
  bool dead = false;
  prefix_cache cache;       // the blocks it holds (prefix reuse)
  double used_integral = 0; // block-ns
  ns_t last_change = 0;
  explicit decode_worker(std::size_t cache_blocks) : cache(cache_blocks) {}
};

class engine {
public:
  engine(trace_reader& trace, const topology::deployment& topo,
         const run_options& options)
      : trace_(trace), topo_(topo), sim_(topo.sim), options_(options),
        timeline_(2 * topo.hosts.size() + 2),
        nics_(std::uint32_t(2 * topo.hosts.size())),
        net_(
            [this](ns_t at, std::uint32_t id, std::uint32_t version) {
              schedule(at, ev::network, id, version);
            },
            &timeline_, nics_),
        csv_(options.out_dir) {
    lbb_ = double(topo.model.block_bytes_per_layer());
    build_workers();
    build_router();
    check_faults();
  }

  summary run() {
    for (std::uint32_t i = 0; i < faults_.size(); ++i)
      schedule(from_ms(faults_[i].at_s * 1e3), ev::fault, i);
    if (read_next())
      schedule(routed_at(pending_), ev::arrival, 0);
    while (!events_.empty()) {
      auto e = events_.top();
      events_.pop();
      now_ = e.at;
      dispatch(e);
    }
    return finish();
  }

private:
  // ---- setup ---------------------------------------------------------------

  void build_workers() {
    std::unordered_map<std::string, std::uint32_t> host_index;
    double nic = sim_.nic_gbit_per_s * sim_.nics_per_host / 8.0;
    for (auto& host : topo_.hosts) {
      host_index[host.name] = std::uint32_t(host_index.size());
      add_resource("nic-out " + host.name, nic);
      add_resource("nic-in " + host.name, nic);
    }
    for (auto& w : topo_.workers) {
      auto host = host_index.at(w.host);
      if (w.role == topology::worker_role::prefill) {
        prefill_worker p;
        p.name = w.name;
        p.host = host;
        p.ipc_out = add_resource("ipc-out " + w.name, sim_.ipc_gbyte_per_s);
        prefills_.push_back(std::move(p));
      } else {
        decode_worker d(prefix_blocks(w));
        d.name = w.name;
        d.host = host;
        d.capacity = w.pool_blocks;
        d.ipc_in = add_resource("ipc-in " + w.name, sim_.ipc_gbyte_per_s);
        decodes_.push_back(std::move(d));
      }
    }
  }

  // A decode worker remembers as many prefix blocks as its pool holds.
  std::uint64_t prefix_blocks(const topology::worker_spec& w) const {
    std::uint64_t tokens = std::uint64_t(w.pool_blocks) / topo_.model.layers *
                           topo_.model.block_tokens;
    return tokens / hash_block_tokens;
  }

  // The router's policy; for prefix-aware routing it remembers what landed
  // at each decode worker (the same blocks as the worker's own cache here:
  // both learn of them when a transfer completes).
  void build_router() {
    std::vector<std::size_t> remembered;
    for (auto& w : topo_.workers)
      if (w.role != topology::worker_role::prefill)
        remembered.push_back(
            sim_.routing == routing::prefix_aware ? prefix_blocks(w) : 0);
    router_.emplace(sim_.routing, prefills_.size(), remembered);
  }

  std::uint32_t add_resource(std::string name, double capacity) {
    return net_.add_link(std::move(name), capacity);
  }

  void check_faults() {
    faults_ = checked_faults(topo_, options_);
    for (auto& f : faults_)
      out_.faults.push_back({f.text, 0});
  }

  // ---- events --------------------------------------------------------------

  void schedule(ns_t at, ev kind, std::uint32_t a, std::uint32_t gen = 0) {
    events_.push({at, seq_++, kind, a, gen});
  }
  // An event for the request in `slot`, dropped if it fails meanwhile.
  void schedule_slot(ns_t at, ev kind, std::uint32_t slot) {
    events_.push({at, seq_++, kind, slot, slots_[slot].gen});
  }
  bool for_slot(ev kind) const {
    return kind == ev::at_producer || kind == ev::allocate ||
           kind == ev::grant || kind == ev::flow_start ||
           kind == ev::transfer_done;
  }

  void dispatch(const event& e) {
    if (for_slot(e.kind) && slots_[e.a].gen != e.gen)
      return; // its request failed (a fault)
    switch (e.kind) {
    case ev::arrival:
      return on_arrival();
    case ev::at_producer:
      return on_at_producer(e.a);
    case ev::prefill_done:
      return on_prefill_done(e.a);
    case ev::allocate:
      return on_allocate(e.a);
    case ev::grant:
      return on_grant(e.a);
    case ev::flow_start:
      return on_flow_start(e.a);
    case ev::network:
      return on_network(e.a, e.gen);
    case ev::transfer_done:
      return on_transfer_done(e.a);
    case ev::step_done:
      return on_step_done(e.a);
    case ev::fault:
      return on_fault(e.a);
    }
  }

  bool read_next() {
    if (!trace_.next(pending_))
      return false;
    ++read_;
    if (options_.progress && (read_ & 0xffff) == 0)
      options_.progress(trace_.total_bytes()
                            ? double(trace_.bytes_read()) / trace_.total_bytes()
                            : 0,
                        done_);
    return true;
  }

  std::uint32_t new_slot() {
    if (!free_.empty()) {
      auto slot = free_.back();
      free_.pop_back();
      return slot;
    }
    slots_.emplace_back();
    return std::uint32_t(slots_.size() - 1);
  }

  void on_arrival() {
    auto slot = new_slot();
    auto& r = slots_[slot];
    auto gen = r.gen;
    r = request{};
    r.gen = gen;
    r.live = true;
    std::swap(r.trace, pending_);
    r.arrival = r.trace.arrival_ns;
    r.prefill_ns = from_ms(interpolate(sim_.prefill_ms, r.trace.input_tokens));
    r.blocks =
        std::uint64_t(blocks_of(r.trace.input_tokens)) * topo_.model.layers;
    if (route(r))
      schedule_slot(now_ + from_us(sim_.hop_us), ev::at_producer, slot);
    else
      fail_unroutable(slot);
    if (read_next())
      schedule(routed_at(pending_), ev::arrival, 0);
  }

  // When the router takes a request up: `router_us` after its arrival.
  ns_t routed_at(const trace_request& t) const {
    return t.arrival_ns + from_us(sim_.router_us);
  }

  std::uint64_t blocks_of(std::uint64_t tokens) const {
    auto bt = topo_.model.block_tokens;
    return (tokens + bt - 1) / bt;
  }

  // ---- the router ----------------------------------------------------------

  // The router's policy (actors/route_policy.hpp, the real router's) picks
  // live workers only: the real router hears of a worker's death from the
  // directory (`left`) and routes around it. Its loads: prefill ms routed
  // and not done, decode layer-blocks routed and not freed. False when
  // faults left no prefill or no decode worker.
  bool route(request& r) {
    auto to = router_->pick(prefill_load(r), std::int64_t(r.blocks),
                            r.trace.hash_ids);
    if (!to)
      return false;
    r.prefill = to->prefill;
    r.decode = to->decode;
    r.ipc = prefills_[r.prefill].host == decodes_[r.decode].host;
    return true;
  }
  static double prefill_load(const request& r) {
    return double(r.prefill_ns) / 1e6;
  }

  // ---- the producer (prefill worker) ---------------------------------------

  void on_at_producer(std::uint32_t slot) {
    auto& p = prefills_[slots_[slot].prefill];
    p.queue.push_back(slot);
    count_queued(prefill_queue, 1);
    if (p.current == idle)
      start_prefill(slots_[slot].prefill);
  }

  void start_prefill(std::uint32_t worker) {
    auto& p = prefills_[worker];
    if (p.queue.empty())
      return;
    auto slot = p.queue.front();
    p.queue.pop_front();
    count_queued(prefill_queue, -1);
    p.current = slot;
    auto& r = slots_[slot];
    r.prefill_start = now_;
    schedule(now_ + r.prefill_ns, ev::prefill_done, worker);
    schedule_slot(now_ + from_us(sim_.hop_us), ev::allocate, slot);
  }

  void on_prefill_done(std::uint32_t worker) {
    auto& p = prefills_[worker];
    if (p.dead)
      return;
    if (p.current == busy_failed) {
      p.current = idle;
      return start_prefill(worker);
    }
    auto slot = std::uint32_t(p.current);
    p.current = idle;
    auto& r = slots_[slot];
    r.prefill_end = now_;
    router_->prefill_done(worker, prefill_load(r));
    start_prefill(worker);
    if (r.rejected)
      return finalize(slot);
    if (r.grant < 0)
      return; // the grant starts the transfer
    if (!topo_.transfer.layerwise)
      return start_transfer(slot);
    if (r.flow_ended) // streamed as fast as produced: the last layer's tail
      return schedule_slot(now_ + r.tail_ns, ev::transfer_done, slot);
    lift_cap(slot);
  }

  void on_grant(std::uint32_t slot) {
    auto& r = slots_[slot];
    r.grant = now_;
    if (topo_.transfer.layerwise || r.prefill_end >= 0)
      start_transfer(slot);
  }

  // ---- the transfer: fixed costs, then a flow through the links -----------

  void start_transfer(std::uint32_t slot) {
    auto& r = slots_[slot];
    r.transfer_start = now_;
    auto& t = topo_.transfer;
    auto layers = topo_.model.layers;
    // Each part's fixed costs are the sender's (transfer_costs.hpp): serial
    // before the flow for a whole request; for layer-wise, all but the last
    // layer's share hide under prefill.
    double parts = t.layerwise ? layers : 1;
    double overhead_us = parts * part_fixed_us(sim_, r.ipc, r.bytes / parts,
                                               double(t.chunk_bytes), lbb_);
    double setup_us = r.ipc ? 0 : sim_.latency_us;
    r.factor = transfer_factor(sim_, r.trace.index);
    overhead_us *= r.factor;
    setup_us *= r.factor;
    if (t.layerwise) {
      r.tail_ns = from_us(overhead_us / layers);
    } else {
      setup_us += overhead_us;
      r.tail_ns = 0;
    }
    if (r.bytes <= 0) {
      r.flow_ended = true;
      if (r.prefill_end >= 0)
        schedule_slot(now_ + from_us(setup_us) + r.tail_ns, ev::transfer_done,
                      slot);
      return;
    }
    schedule_slot(now_ + from_us(setup_us), ev::flow_start, slot);
  }

  void on_flow_start(std::uint32_t slot) {
    auto& r = slots_[slot];
    auto& p = prefills_[r.prefill];
    auto& d = decodes_[r.decode];
    auto a = r.ipc ? p.ipc_out : 2 * p.host;
    auto b = r.ipc ? d.ipc_in : 2 * d.host + 1;
    // Layer-wise during prefill: no faster than the layers are produced.
    double cap = r.prefill_end < 0 ? r.bytes / double(r.prefill_ns)
                                   : flow_network::unlimited;
    r.flow = std::int64_t(net_.start(now_, slot, a, b, r.bytes, cap, r.factor));
  }

  void lift_cap(std::uint32_t slot) {
    auto id = slots_[slot].flow;
    if (id >= 0)
      net_.lift_cap(now_, std::uint32_t(id));
  }

  // A flow's projected end (flow_network::on_event).
  void on_network(std::uint32_t id, std::uint32_t version) {
    auto done = net_.on_event(now_, id, version);
    if (!done)
      return;
    auto slot = *done;
    auto& r = slots_[slot];
    r.flow = -1;
    r.flow_ended = true;
    if (r.prefill_end >= 0)
      schedule_slot(now_ + r.tail_ns, ev::transfer_done, slot);
  }

  // ---- the consumer (decode worker) ----------------------------------------

  void on_allocate(std::uint32_t slot) {
    auto& r = slots_[slot];
    auto& d = decodes_[r.decode];
    auto layers = topo_.model.layers;
    std::uint64_t reused_blocks = 0;
    if (sim_.prefix_reuse) {
      std::uint64_t tokens = std::min<std::uint64_t>(
          d.cache.leading(r.trace.hash_ids) * std::uint64_t(hash_block_tokens),
          r.trace.input_tokens);
      reused_blocks = tokens / topo_.model.block_tokens * layers;
    }
    r.bytes = double(r.blocks - reused_blocks) * lbb_;
    r.saved = double(reused_blocks) * lbb_;
    if (r.blocks > d.capacity) {
      r.rejected = true; // waiting cannot help (architecture.md)
      if (r.prefill_end >= 0)
        finalize(slot);
      return;
    }
    if (d.waiting.empty() && d.used + r.blocks <= d.capacity)
      return grant(slot);
    ++d.waited;
    r.waiting = true;
    d.waiting.push_back(slot);
    count_queued(pool_queue, 1);
  }

  void grant(std::uint32_t slot) {
    auto& r = slots_[slot];
    r.waiting = false;
    r.holds_blocks = true;
    set_used(decodes_[r.decode], decodes_[r.decode].used + r.blocks);
    schedule_slot(now_ + from_us(sim_.hop_us), ev::grant, slot);
  }

  void set_used(decode_worker& d, std::uint64_t used) {
    d.used_integral += double(d.used) * double(now_ - d.last_change);
    d.last_change = now_;
    d.used = used;
    d.peak = std::max(d.peak, used);
  }

  void on_transfer_done(std::uint32_t slot) {
    auto& r = slots_[slot];
    r.transfer_done = now_;
    auto& d = decodes_[r.decode];
    if (sim_.prefix_reuse)
      d.cache.touch(r.trace.hash_ids);
    router_->landed(r.decode, r.trace.hash_ids);
    d.batch.ready.push_back(slot);
    if (!d.batch.stepping)
      start_step(r.decode);
  }

  void start_step(std::uint32_t worker) {
    auto size = decodes_[worker].batch.start(
        sim_.decode_max_batch, [this](std::uint32_t slot) {
          return slots_[slot].trace.output_tokens;
        });
    if (size > 0)
      schedule(now_ + from_ms(interpolate(sim_.decode_step_ms, double(size))),
               ev::step_done, worker);
  }

  void on_step_done(std::uint32_t worker) {
    auto& d = decodes_[worker];
    std::uint64_t freed = 0;
    d.batch.step_done(
        [this](std::uint32_t slot) { slots_[slot].first_token = now_; },
        [&](std::uint32_t slot) {
          freed += slots_[slot].blocks;
          router_->decode_done(worker, std::int64_t(slots_[slot].blocks));
          finalize(slot);
        });
    if (freed > 0)
      release(d, freed);
    start_step(worker);
  }

  // Blocks freed: requests waiting for them are granted, in arrival order.
  void release(decode_worker& d, std::uint64_t blocks) {
    set_used(d, d.used - blocks);
    while (!d.waiting.empty() &&
           d.used + slots_[d.waiting.front()].blocks <= d.capacity) {
      auto next = d.waiting.front();
      d.waiting.pop_front();
      count_queued(pool_queue, -1);
      grant(next);
    }
  }

  // ---- faults
  // ---------------------------------------------------------------- As the
  // real actors do (docs/sim.md, "Faults"): the directory sees a worker's
  // process die at once and tells the router (`left`), which fails every
  // request routed through that worker (peer_down, naming it), routes no more
  // to it, and retries nothing; a consumer frees the blocks of a dead
  // producer's requests, a producer drops its requests for a dead consumer. A
  // slower link only slows the flows crossing it.

  void on_fault(std::uint32_t index) {
    auto& f = faults_[index];
    if (f.what == fault::kind::link_slow)
      slow_host(f);
    else
      kill_worker(f.target, index);
  }

  void slow_host(const fault& f) {
    for (std::uint32_t h = 0; h < topo_.hosts.size(); ++h)
      if (topo_.hosts[h].name == f.target)
        for (auto r : {2 * h, 2 * h + 1}) { // its nic-out and nic-in
          net_.set_capacity(now_, r, f.gbit_per_s / 8.0);
        }
  }

  void kill_worker(const std::string& name, std::uint32_t fault) {
    for (std::uint32_t i = 0; i < prefills_.size(); ++i) {
      auto& p = prefills_[i];
      if (p.name != name || p.dead)
        continue;
      router_->prefill_down(i);
      p.dead = true;
      count_queued(prefill_queue, -std::int64_t(p.queue.size()));
      p.queue.clear();
      p.current = idle;
      // Requests whose KV had not all landed lose their producer.
      for (std::uint32_t slot = 0; slot < slots_.size(); ++slot)
        if (slots_[slot].live && slots_[slot].prefill == i &&
            slots_[slot].transfer_done < 0)
          fail(slot, fault);
    }
    for (std::uint32_t i = 0; i < decodes_.size(); ++i) {
      auto& d = decodes_[i];
      if (d.name != name || d.dead)
        continue;
      router_->decode_down(i);
      d.dead = true;
      for (std::uint32_t slot = 0; slot < slots_.size(); ++slot)
        if (slots_[slot].live && slots_[slot].decode == i)
          fail(slot, fault);
      count_queued(pool_queue, -std::int64_t(d.waiting.size()));
      d.waiting.clear();
      d.batch.clear();
      set_used(d, 0);
    }
  }

  // Fails a request routed through a worker that died: out of its prefill
  // queue, its flow off the links, its decode
  // blocks back to a live pool.
  void fail(std::uint32_t slot, std::uint32_t fault) {
    auto& r = slots_[slot];
    auto& p = prefills_[r.prefill];
    auto& d = decodes_[r.decode];
    if (r.prefill_end < 0) {
      router_->prefill_done(r.prefill, prefill_load(r));
      if (p.current == std::int64_t(slot))
        p.current = busy_failed; // the GPU finishes what it started
      else
        count_queued(prefill_queue, -erase(p.queue, slot));
    }
    if (r.flow >= 0)
      net_.remove(now_, std::uint32_t(r.flow));
    r.flow = -1;
    if (r.waiting)
      count_queued(pool_queue, -erase(d.waiting, slot));
    if (r.holds_blocks && !d.dead)
      release(d, r.blocks);
    router_->decode_done(r.decode, std::int64_t(r.blocks));
    ++out_.faults[fault].failed;
    ++failed_;
    ++done_;
    last_event_ = std::max(last_event_, now_);
    csv_row(r, p.name, d.name, nullptr);
    free_slot(slot);
  }

  // How many it removed (0 or 1).
  static std::int64_t erase(std::deque<std::uint32_t>& queue,
                            std::uint32_t slot) {
    auto size = queue.size();
    queue.erase(std::remove(queue.begin(), queue.end(), slot), queue.end());
    return std::int64_t(size - queue.size());
  }

  // Arrived after faults killed every prefill or every decode worker.
  void fail_unroutable(std::uint32_t slot) {
    ++unroutable_;
    ++failed_;
    ++done_;
    last_event_ = std::max(last_event_, now_);
    csv_row(slots_[slot], "", "", nullptr);
    free_slot(slot);
  }

  // ---- results -------------------------------------------------------------

  // The queue lengths over time (the plots): `which` is prefill_queue or
  // pool_queue.
  void count_queued(std::size_t which, std::int64_t delta) {
    timeline_.add(nics_ + which, queued_since_[which], now_,
                  double(queued_[which]));
    queued_since_[which] = now_;
    queued_[which] += delta;
  }

  void fill_over_time(summary& s) {
    for (std::size_t q : {prefill_queue, pool_queue})
      count_queued(q, 0); // up to the end
    s.bucket_s = double(timeline_.width_ns()) / 1e9;
    auto buckets = std::size_t((last_event_ + timeline_.width_ns() - 1) /
                               timeline_.width_ns());
    auto values = [&](std::size_t series, double scale) {
      std::vector<double> v(buckets);
      for (std::size_t b = 0; b < buckets; ++b)
        v[b] = timeline_.mean(series, b) * scale;
      return v;
    };
    for (std::uint32_t r = 0; r < nics_; ++r)
      if (net_.at(r).bytes > 0)
        s.link_busy.push_back(
            {net_.at(r).name, values(r, 100 / net_.at(r).nominal)});
    s.prefill_queue = {"waiting for a prefill GPU", values(nics_, 1)};
    s.pool_queue = {"waiting for KV-pool blocks", values(nics_ + 1, 1)};
  }

  void finalize(std::uint32_t slot) {
    auto& r = slots_[slot];
    ++done_;
    last_event_ = std::max(last_event_, now_);
    auto& p = prefills_[r.prefill];
    auto& d = decodes_[r.decode];
    if (r.rejected) {
      ++rejected_;
      router_->decode_done(r.decode, std::int64_t(r.blocks));
      csv_row(r, p.name, d.name, nullptr);
    } else {
      ns_t parts[5] = {r.prefill_start - r.arrival,
                       r.prefill_end - r.prefill_start,
                       std::max<ns_t>(0, r.grant - r.prefill_end),
                       r.transfer_done - std::max(r.prefill_end, r.grant),
                       r.first_token - r.transfer_done};
      csv_row(r, p.name, d.name, parts);
    }
    free_slot(slot);
  }

  void free_slot(std::uint32_t slot) {
    auto& r = slots_[slot];
    r.trace.hash_ids.clear(); // keeps its capacity for the next request
    r.live = false;
    ++r.gen; // its pending events, if any, are void
    free_.push_back(slot);
  }

  // The request's row of requests.csv; with `parts` (ok) its figures too.
  void csv_row(const request& r, const std::string& p, const std::string& d,
               const ns_t* parts) {
    request_row row;
    row.trace = &r.trace;
    row.arrival = r.arrival;
    row.prefill = p;
    row.decode = d;
    row.ipc = r.ipc;
    if (parts == nullptr) {
      row.what = r.rejected ? request_row::status::rejected
                            : request_row::status::failed;
    } else {
      std::copy(parts, parts + 5, row.parts);
      row.ttft = r.first_token - r.arrival;
      row.transfer_total = r.transfer_done - r.transfer_start;
      row.e2e = now_ - r.arrival;
      row.bytes = r.bytes;
      row.saved = r.saved;
      record(out_, row, options_.ttft_slo_ms);
    }
    csv_.row(row);
  }

  // Requests still held when no event is left: nothing will move them (a
  // hang, which the summary counts and the CLI reports as an error).
  void report_unfinished() {
    std::vector<std::uint32_t> open;
    for (std::uint32_t slot = 0; slot < slots_.size(); ++slot)
      if (slots_[slot].live)
        open.push_back(slot);
    std::sort(open.begin(), open.end(), [this](auto a, auto b) {
      return slots_[a].trace.index < slots_[b].trace.index;
    });
    for (auto slot : open) {
      auto& r = slots_[slot];
      request_row row;
      row.trace = &r.trace;
      row.arrival = r.arrival;
      row.prefill = prefills_[r.prefill].name;
      row.decode = decodes_[r.decode].name;
      row.ipc = r.ipc;
      row.what = request_row::status::unfinished;
      csv_.row(row);
      ++out_.unfinished;
    }
  }

  summary finish() {
    report_unfinished();
    csv_.close();
    auto& s = out_;
    s.trace = trace_.path();
    s.trace_format = to_string(trace_.format());
    s.topology = topo_.source_file;
    s.routing = topology::to_string(sim_.routing);
    s.layerwise = topo_.transfer.layerwise;
    s.prefix_reuse = sim_.prefix_reuse;
    s.prefill_workers = prefills_.size();
    s.decode_workers = decodes_.size();
    s.hosts = topo_.hosts.size();
    s.requests = read_;
    s.completed = done_ - rejected_ - failed_;
    s.rejected = rejected_;
    s.failed = failed_;
    s.unroutable = unroutable_;
    s.span_s = double(last_event_) / 1e9;
    s.ttft_slo_ms = options_.ttft_slo_ms;
    fill_over_time(s);
    double span = double(std::max<ns_t>(1, last_event_));
    for (std::uint32_t i = 0; i < net_.links(); ++i) {
      auto& res = net_.at(i);
      s.links.push_back(
          {res.name, res.nominal, res.bytes, res.bytes / (res.nominal * span)});
    }
    for (auto& d : decodes_) {
      now_ = last_event_;
      set_used(d, d.used);
      s.pools.push_back({d.name, d.capacity,
                         d.used_integral / (double(d.capacity) * span), d.peak,
                         d.waited});
    }
    return std::move(out_);
  }

  trace_reader& trace_;
  const topology::deployment& topo_;
  const topology::sim_spec& sim_;
  const run_options& options_;
  std::vector<fault> faults_; // check_faults()
  double lbb_ = 0;            // bytes of one layer-block

  std::priority_queue<event, std::vector<event>, later> events_;
  std::uint64_t seq_ = 0;
  ns_t now_ = 0, last_event_ = 0;

  trace_request pending_; // the next request, read ahead by one
  std::uint64_t read_ = 0, done_ = 0, rejected_ = 0, failed_ = 0,
                unroutable_ = 0;
  std::vector<request> slots_;
  std::vector<std::uint32_t> free_;

  std::vector<prefill_worker> prefills_;
  std::vector<decode_worker> decodes_;
  std::optional<route_policy> router_;

  timeline timeline_;  // the NICs' rates, then the two queues
  std::uint32_t nics_; // the network's first links: 2 per host
  flow_network net_;
  static constexpr std::size_t prefill_queue = 0, pool_queue = 1;
  std::int64_t queued_[2] = {0, 0};
  ns_t queued_since_[2] = {0, 0};

  request_csv csv_;
  summary out_;
};

} // namespace

summary run(trace_reader& trace, const topology::deployment& topology,
            const run_options& options) {
  return engine(trace, topology, options).run();
}

} // namespace kvferry::sim
