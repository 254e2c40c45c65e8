// The transfer actor: one per device, detached, the only caller of the plugin.
//
// Channels. A channel (transport/channel.hpp) is `comms_per_peer` comm pairs
// in one direction. The sender opens one lazily, the first time it sends to a
// peer: it asks the peer's transfer actor to listen (`open`), gets the 128-B
// listen handles back, and connects; both sides poll connect/accept from the
// progress loop, never blocking. Channels are cached per peer name and torn
// down when the peer dies (a down message), when a transfer on them times
// out, or when the plugin fails a request on them.
//
// Ordering. The plugin matches the k-th send with the k-th receive of a comm
// pair. The sender announces every transfer (its chunks, in posting order)
// to the receiver *before* posting the sends, over the same CAF connection
// that carries every other message between the two actors; CAF keeps
// messages between two actors in order, so the receiver posts its receives
// in exactly the order the sender posts its sends.
//
// Memory. One registration of the whole region per channel, made when the
// channel opens; a transfer in steady state registers and allocates nothing
// but its table entries. Bounds per channel: the wrapper's max_inflight
// requests per comm, plus the chunks callers posted faster than the plugin
// drains (bounded by the producer's and consumer's block pools). A GPU
// region goes to the plugin as NCCL_PTR_CUDA when the plugin takes it.
//
// Same-host GPU peers (choose_data_path): no channel. The sender maps the
// peer's region once (CUDA IPC, ipc_region_cache), runs one gather/scatter
// kernel per transfer on its gpu_copy_engine (source and destination bounds
// checked before it launches), polls the kernel's event from the progress
// loop and then tells the receiving transfer actor `landed`, which completes
// the recv order as a plugin completion would. Pull is the same: the
// producer's transfer actor copies. A peer pool on another GPU of this host
// is written over peer access (NVLink or PCIe) by the kernel on the sender's
// GPU; access is checked and enabled when the region is mapped. At most
// max_ipc_copies kernels are in flight (the engine's event slots bound them);
// later sends queue per peer.
//
// Timed-out IPC copies (docs/gpu.md). A kernel cannot be recalled, so a
// receiver whose transfer times out before anything announced it keeps the
// transfer in quarantine (ipc_quarantine): its consumer's settle request,
// which holds the destination blocks out of use, is answered only once the
// sender says no copy of that transfer can still write (ipc_status: at once
// when none runs, else when its kernel's event completed) or the sender is
// down (a sender never asked: also when it left the directory). The request
// itself fails at once.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>
#include <utility>
#include <variant>

#include <caf/all.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "gpu_knobs.hpp"
#include "ipc_test_hold.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/ipc_quarantine.hpp"
#include "kvferry/actors/plan.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/metrics.hpp"
#include "kvferry/transport/channel.hpp"
#include "kvferry/transport/gpu_copy.hpp"
#include "kvferry/transport/gpu_memory.hpp"
#include "kvferry/transport/gpu_topology.hpp"

namespace kvferry {
namespace {

using namespace std::chrono;
using transport::channel_connector;
using transport::channel_listener;
using transport::channel_options;
using transport::op_id;
using transport::recv_channel;
using transport::registration;
using transport::send_channel;

using byte_promise = caf::typed_response_promise<std::uint64_t>;
using report_promise = caf::typed_response_promise<proto::recv_report>;
// Who waits for a transfer: a send order (replies bytes) or a recv order
// (replies a recv_report).
using waiter_promise = std::variant<byte_promise, report_promise>;

std::int64_t clock_ns(steady_clock::time_point t) {
  return duration_cast<nanoseconds>(t.time_since_epoch()).count();
}

// Each transfer entry's own number: a deadline names the entry it was armed
// for, so a deadline left over from an earlier transfer under the same id
// (request ids repeat: every demo run starts at 0) cannot fail a new one.
std::uint64_t next_transfer_generation() {
  static std::atomic<std::uint64_t> next{0};
  return ++next;
}

struct transfer_entry {
  std::uint64_t generation = next_transfer_generation();
  std::uint64_t bytes = 0;    // done so far
  std::uint64_t expected = 0; // announced or ordered
  std::size_t ops_left = 0;
  bool posted = false; // plugin requests exist for it
  bool done = false;
  caf::error failure;     // set once failed (receiver side, unclaimed)
  bool cancelled = false; // receiver gave up; bytes must not land
  std::optional<waiter_promise> waiter;
  // When this actor first learned of the transfer (order or announcement)
  // and when it finished: the data window a recv_report gives.
  steady_clock::time_point started = steady_clock::now();
  steady_clock::time_point finished;
  // CUDA IPC: launch to kernel start, and the kernel's GPU time (0: unknown).
  std::int64_t gpu_queued_ns = 0;
  std::int64_t gpu_copy_ns = 0;
};

proto::recv_report report_of(const transfer_entry& t) {
  return {t.bytes, clock_ns(t.started), clock_ns(t.finished), t.gpu_copy_ns,
          t.gpu_queued_ns};
}

// Sending side of one peer.
struct peer_out {
  proto::endpoint ep;
  bool opening = false;
  steady_clock::time_point connect_deadline;
  std::unique_ptr<channel_connector> connector;
  std::optional<send_channel> channel;
  registration reg; // declared after channel: destroyed before it
  struct waiting_send {
    std::uint64_t id;
    std::vector<extent> chunks;
  };
  std::deque<waiting_send> waiting;
  std::unordered_map<op_id, std::uint64_t> ops;
  std::unordered_map<std::uint64_t, transfer_entry> transfers;
  std::uint32_t next_comm = 0;
  // CUDA IPC (same-host GPU peer): its region mapped here, the copies in
  // flight and the sends waiting for a free engine slot.
  std::optional<transport::memory_region> mapped;
  struct ipc_copy {
    transport::copy_ticket ticket;
    std::uint64_t id;
    steady_clock::time_point launched; // the receiver's data window starts
  };
  std::vector<ipc_copy> copies;
  std::deque<waiting_send> ipc_waiting;
  bool said_hello = false; // ipc_hello sent to the peer
};

// Receiving side of one peer.
struct peer_in {
  caf::actor_addr sender;
  steady_clock::time_point accept_deadline;
  std::unique_ptr<channel_listener> listener;
  std::optional<recv_channel> channel;
  registration reg;
  std::deque<proto::announcement> waiting;
  std::unordered_map<op_id, std::uint64_t> ops;
  std::unordered_map<std::uint64_t, transfer_entry> transfers;
};

struct transfer_state {
  transfer_config cfg;
  std::unordered_map<std::string, peer_out> out;
  std::unordered_map<std::string, peer_in> in;
  proto::transfer_stats stats;
  // Prometheus series (served when the process runs an exporter); per-peer
  // handles are looked up once and then updated lock-free.
  metrics::transfer_metrics metrics;
  bool progress_scheduled = false;
  // Each progress message carries the loop's generation. New work while a
  // backed-off (delayed) poll is pending starts a new generation with an
  // immediate poll; the delayed message, now stale, is ignored when it
  // fires, so there is never more than one loop.
  std::uint64_t progress_generation = 0;
  bool progress_delayed = false;
  unsigned idle_polls = 0;
  // Transfer deadlines: when, and ("<peer" or ">peer", transfer id, the
  // entry's generation), checked by one short periodic sweep (arm_deadline).
  struct deadline {
    std::string key;
    std::uint64_t id;
    std::uint64_t generation;
  };
  std::multimap<steady_clock::time_point, deadline> deadlines;
  bool sweep_scheduled = false;
  // CUDA IPC: made on the first same-host GPU send, used from this actor's
  // thread only. ipc_handle is our region's, advertised in the endpoint.
  std::string ipc_handle;
  std::unique_ptr<transport::ipc_region_cache> ipc_regions;
  std::unique_ptr<transport::gpu_copy_engine> engine;
  std::size_t ipc_in_flight = 0;
  bool spin_while_copying = detail::ipc_spin_while_copying();
  std::vector<transport::copy_extent> ipc_extents;          // reused per launch
  std::string ipc_test_hold = detail::ipc_test_hold_file(); // tests only
  // CUDA IPC quarantine, sending side: copies whose transfer is gone (timed
  // out here, or the peer was dropped) but whose kernel may still run, and
  // receivers' status questions waiting for such a kernel to end.
  struct orphan_copy {
    std::string peer;
    peer_out::ipc_copy copy;
  };
  std::vector<orphan_copy> ipc_orphans;
  struct status_waiter {
    std::string peer;
    std::uint64_t id;
    caf::typed_response_promise<caf::ok_atom> promise;
  };
  std::vector<status_waiter> status_waiters;
  // Transfers a receiver gave up on before their send order reached us
  // (peer -> (id, when)): a send order for one that comes later is stale
  // (e.g. its producer was stuck on a hung GPU) and is refused once, so that
  // it cannot write into blocks the receiver has reused.
  std::unordered_map<
      std::string,
      std::deque<std::pair<std::uint64_t, steady_clock::time_point>>>
      given_up;
  // Receiving side: timed-out transfers a sender's kernel may still write,
  // and the transfer actors of workers the directory announced (to ask them).
  ipc_quarantine quarantine;
  std::unordered_map<std::string, caf::actor_addr> known_transfers;
  // Holds whose sender was asked, and which actor: its down message ends
  // them (whatever became of the name meanwhile).
  struct asked_hold {
    caf::actor_addr sender;
    std::string peer;
    ipc_quarantine::hold_ref hold;
  };
  std::unordered_map<ipc_quarantine::token, asked_hold> asked;
  metrics::gauge* quarantine_gauge = &metrics::registry::global().get_gauge(
      "kvferry_ipc_quarantined_transfers",
      "Timed-out CUDA IPC transfers whose destination stays out of use until "
      "their sender confirms no copy kernel still writes it");
  std::int64_t quarantine_reported = 0; // our share of the gauge
  ~transfer_state() { quarantine_gauge->sub(quarantine_reported); }
  static inline const char* name = "kvferry.transfer";
};

// Below the engine's 64 event slots, so a launch never finds them all busy.
constexpr std::size_t max_ipc_copies = 48;

using self_ptr = transfer_actor::stateful_pointer<transfer_state>;

caf::error lost(const std::string& peer, const std::string& why) {
  return make_error(ec::peer_down,
                    fmt::format("lost peer '{}': {}", peer, why));
}

// New work: poll now. When the loop is backed off (its next poll is a
// delayed message up to 200 us away), that wait would land on the critical
// path of the transfer that just arrived, so an immediate poll goes too.
void ensure_progress(self_ptr self) {
  auto& st = self->state;
  st.idle_polls = 0;
  if (st.progress_scheduled && !st.progress_delayed)
    return;
  st.progress_scheduled = true;
  st.progress_delayed = false;
  self->send(self, proto::progress_atom::value, ++st.progress_generation);
}

// Deadlines are kept in the state and checked by one sweep message every
// 100 ms instead of one delayed message per transfer: CAF 0.17 keeps an actor
// alive until its pending delayed messages fire, so per-transfer timers of
// 10-30 s held a stopping worker's detached transfer thread that long.
constexpr auto sweep_period = milliseconds(100);

void arm_deadline(self_ptr self, milliseconds timeout, std::string key,
                  std::uint64_t id, const transfer_entry& t) {
  auto& st = self->state;
  st.deadlines.emplace(
      steady_clock::now() + timeout,
      transfer_state::deadline{std::move(key), id, t.generation});
  if (!st.sweep_scheduled) {
    st.sweep_scheduled = true;
    self->delayed_send(self, sweep_period, proto::sweep_atom::value);
  }
}

// `finished`: when the last byte moved, if known better than "now" (an IPC
// copy completes in the sender's process before we hear of it).
void finish(transfer_entry& t, transfer_state& st, bool incoming,
            const std::string& peer,
            std::optional<steady_clock::time_point> finished = std::nullopt) {
  t.done = true;
  t.finished = finished.value_or(steady_clock::now());
  st.metrics.record(peer, !incoming, t.bytes,
                    duration<double>(t.finished - t.started).count());
  ++st.stats.transfers_done;
  if (incoming)
    st.stats.bytes_received += t.bytes;
  else
    st.stats.bytes_sent += t.bytes;
  if (t.waiter) {
    if (auto* sender = std::get_if<byte_promise>(&*t.waiter))
      sender->deliver(t.bytes);
    else
      std::get<report_promise>(*t.waiter).deliver(report_of(t));
    t.waiter.reset();
  }
}

void fail(transfer_entry& t, transfer_state& st, const caf::error& err,
          const std::string& peer) {
  ++st.stats.transfers_failed;
  st.metrics.count_error(peer, err.category() == caf::atom("kvferry")
                                   ? to_string(static_cast<ec>(err.code()))
                                   : "other");
  t.failure = err;
  if (t.waiter) {
    std::visit([&](auto& promise) { promise.deliver(err); }, *t.waiter);
    t.waiter.reset();
  }
}

// Copies of `p` (all, or those of transfer `id`) whose transfer is gone
// while their kernels may still run: polled on as orphans (progress_orphans)
// so that a receiver asking about them is answered only when they end, and
// their event slots stay counted in ipc_in_flight meanwhile.
void orphan_copies(transfer_state& st, const std::string& peer, peer_out& p,
                   std::optional<std::uint64_t> id = std::nullopt) {
  for (std::size_t k = 0; k < p.copies.size();) {
    if (id && p.copies[k].id != *id) {
      ++k;
      continue;
    }
    st.ipc_orphans.push_back({peer, p.copies[k]});
    p.copies[k] = p.copies.back();
    p.copies.pop_back();
  }
}

// Fails everything sent to `name` and forgets its channel (the next send
// opens a fresh one).
void drop_peer_out(self_ptr self, const std::string& name,
                   const caf::error& err) {
  auto i = self->state.out.find(name);
  if (i == self->state.out.end())
    return;
  std::size_t failed = 0;
  for (auto& [id, t] : i->second.transfers)
    if (!t.done) {
      fail(t, self->state, err, name);
      ++failed;
    }
  // A peer that leaves while nothing is in flight is routine (shutdown).
  spdlog::log(failed > 0 ? spdlog::level::warn : spdlog::level::info,
              "transfer {}: dropping send channel to '{}' ({} transfers "
              "failed): {}",
              self->state.cfg.name, name, failed, render(err));
  self->state.metrics.peer(name).comms->set(0);
  // Copy kernels still running finish on their own; their mapping of the
  // peer's region stays open in the cache, so they never touch freed memory.
  orphan_copies(self->state, name, i->second);
  self->state.out.erase(i);
}

void drop_peer_in(self_ptr self, const std::string& name,
                  const caf::error& err) {
  auto i = self->state.in.find(name);
  if (i == self->state.in.end())
    return;
  std::size_t failed = 0;
  for (auto& [id, t] : i->second.transfers)
    if (!t.done && !t.failure) {
      fail(t, self->state, err, name);
      ++failed;
    }
  // Failed-but-unclaimed entries keep their error for a later recv order;
  // the channel and the bookkeeping of posted requests go.
  auto& p = i->second;
  spdlog::log(failed > 0 ? spdlog::level::warn : spdlog::level::info,
              "transfer {}: dropping receive channel from '{}' ({} transfers "
              "failed): {}",
              self->state.cfg.name, name, failed, render(err));
  self->state.metrics.peer(name).comms->set(0);
  p.ops.clear();
  p.waiting.clear();
  p.reg = registration{};
  p.channel.reset();
  p.listener.reset();
  p.sender = caf::actor_addr{};
  for (auto it = p.transfers.begin(); it != p.transfers.end();)
    it = it->second.waiter || it->second.failure ? std::next(it)
                                                 : p.transfers.erase(it);
}

channel_options options_for(const transfer_state& st, const std::string& peer,
                            std::uint32_t comms, std::uint64_t chunk) {
  channel_options o;
  o.comms = static_cast<int>(comms);
  o.chunk_bytes = chunk;
  o.peer = peer;
  o.staging_slots = static_cast<int>(st.cfg.staging_slots);
  return o;
}

// ---- sending
// -------------------------------------------------------------------

void post_sends(self_ptr self, peer_out& p, std::uint64_t id,
                const std::vector<extent>& chunks) {
  auto& t = p.transfers[id];
  auto* base = self->state.cfg.region->data();
  for (const auto& c : chunks) {
    auto op = p.channel->post_send(base + c.src_offset, c.length, p.reg);
    p.ops.emplace(op, id);
    ++t.ops_left;
  }
  t.posted = true;
  if (t.ops_left == 0)
    finish(t, self->state, false, p.ep.name);
}

// Announces, then posts: the announcement must reach the receiver before it
// could see any later transfer's announcement (CAF keeps order per pair).
void start_send(self_ptr self, peer_out& p, std::uint64_t id,
                std::vector<extent> chunks) {
  proto::announcement a;
  a.transfer_id = id;
  a.sender = self->state.cfg.name;
  a.comms = self->state.cfg.comms_per_peer;
  a.chunks = chunks;
  self->send(caf::actor_cast<transfer_actor>(p.ep.transfer),
             proto::announce_atom::value, std::move(a));
  post_sends(self, p, id, chunks);
}

void open_channel(self_ptr self, const std::string& name) {
  auto& p = self->state.out[name];
  p.opening = true;
  auto& cfg = self->state.cfg;
  self->request(caf::actor_cast<transfer_actor>(p.ep.transfer),
                milliseconds(cfg.open_timeout_ms), proto::open_atom::value,
                cfg.name, cfg.comms_per_peer, cfg.chunk_bytes)
      .then(
          [self, name](std::vector<char>& flat) {
            auto i = self->state.out.find(name);
            if (i == self->state.out.end())
              return;
            auto& cfg = self->state.cfg;
            std::vector<transport::net_handle> handles(flat.size() /
                                                       NCCL_NET_HANDLE_MAXSIZE);
            for (std::size_t k = 0; k < handles.size(); ++k)
              std::memcpy(handles[k].data(),
                          flat.data() + k * NCCL_NET_HANDLE_MAXSIZE,
                          NCCL_NET_HANDLE_MAXSIZE);
            try {
              i->second.connector = std::make_unique<channel_connector>(
                  cfg.net, cfg.device, std::move(handles),
                  options_for(self->state, name, cfg.comms_per_peer,
                              cfg.chunk_bytes));
            } catch (const std::exception& e) {
              drop_peer_out(self, name,
                            make_error(ec::plugin_error,
                                       fmt::format("connect to '{}': {}", name,
                                                   e.what())));
              return;
            }
            i->second.connect_deadline =
                steady_clock::now() + milliseconds(cfg.open_timeout_ms);
            ensure_progress(self);
          },
          [self, name](caf::error& err) {
            drop_peer_out(self, name,
                          lost(name, fmt::format("opening a channel failed: {}",
                                                 render(err))));
          });
}

// ---- sending over CUDA IPC
// -------------------------------------------------------

// A peer pool on another GPU of this host: our kernel (on our GPU) writes it
// directly, which needs peer access from our GPU to the peer's. The IPC open
// below (cudaIpcMemLazyEnablePeerAccess) would enable it too; enabling it
// here first, as NCCL does, fails with both GPUs named instead of an opaque
// IPC or launch error. Once per peer region (map_peer_region).
void enable_access_to_peer_gpu(int ours, int peers) {
  if (peers < 0 || peers == ours)
    return;
  auto gpus = transport::system_gpu_topology();
  transport::check_gpu_ordinal(*gpus, peers, "the peer's pool on GPU");
  transport::check_ipc_peer_access(*gpus, ours, peers);
  gpus->enable_peer_access(ours, peers);
}

// The copy engine and the cache of opened peer regions, made on first need.
void ensure_ipc_engine(transfer_state& st) {
  if (st.engine)
    return;
  auto gpu = st.cfg.region->gpu();
  st.ipc_regions = std::make_unique<transport::ipc_region_cache>(gpu);
  transport::copy_tuning tuning;
  tuning.high_priority_stream = detail::gpu_stream_priorities();
  st.engine = std::make_unique<transport::gpu_copy_engine>(gpu, tuning);
}

// Maps the peer's region on first use (once per peer region: the cache; a
// region mapped ahead when its worker joined is found there).
void map_peer_region(transfer_state& st, peer_out& p) {
  if (p.mapped)
    return;
  ensure_ipc_engine(st);
  auto handle = transport::ipc_handle::from_hex(p.ep.ipc_handle);
  enable_access_to_peer_gpu(st.cfg.region->gpu(), handle.device);
  auto mapped = st.ipc_regions->open(handle);
  if (mapped.bytes < p.ep.region_bytes)
    throw std::invalid_argument(fmt::format(
        "the IPC handle of '{}' maps {} bytes, its endpoint says {}", p.ep.name,
        mapped.bytes, p.ep.region_bytes));
  p.mapped = mapped;
}

// A same-host decode worker's pool, opened as soon as the directory says it
// joined (cfg.map_peers_ahead): cudaIpcOpenMemHandle and enabling peer
// access take milliseconds (tens of them across GPUs), which the first
// request to that worker would otherwise wait for. A failure here costs
// nothing: the first transfer maps again and fails with the reason.
void map_ahead(transfer_state& st, const worker_info& w) {
  auto& cfg = st.cfg;
  if (!maps_ahead(cfg, cfg.region->kind(), w))
    return;
  for (const auto& r : w.regions) {
    if (r.kind != memory_kind::cuda ||
        r.ipc_handle.size() != transport::ipc_handle{}.bytes.size())
      continue;
    transport::ipc_handle handle;
    std::memcpy(handle.bytes.data(), r.ipc_handle.data(), handle.bytes.size());
    handle.region_bytes = r.size;
    handle.device = r.gpu;
    try {
      ensure_ipc_engine(st);
      enable_access_to_peer_gpu(cfg.region->gpu(), handle.device);
      st.ipc_regions->open(handle);
      spdlog::debug("transfer {}: mapped the pool of '{}' (GPU {}) ahead",
                    cfg.name, w.name, r.gpu);
    } catch (const std::exception& e) {
      spdlog::debug("transfer {}: mapping the pool of '{}' ahead failed "
                    "(its first transfer will say why): {}",
                    cfg.name, w.name, e.what());
    }
  }
}

// One kernel for the whole transfer; the engine checks every extent against
// both regions before it launches. The data window starts right before the
// launch call (after the plan is packed and its upload queued): the GPU can
// start the kernel before that call returns.
void launch_ipc_copy(transfer_state& st, peer_out& p, std::uint64_t id,
                     const std::vector<extent>& extents) {
  st.ipc_extents.clear();
  for (const auto& e : extents)
    st.ipc_extents.push_back({e.src_offset, e.dst_offset, e.length});
  auto& engine = *st.engine;
  const auto& src = st.cfg.region->view();
  const auto plan = engine.prepare(st.ipc_extents, src.bytes, p.mapped->bytes);
  const auto launched = steady_clock::now();
  transport::copy_ticket ticket;
  try {
    if (!st.ipc_test_hold.empty()) // a hung GPU, for the quarantine's test
      detail::hold_stream_for_test(engine.native_stream(), st.ipc_test_hold);
    ticket = engine.launch(plan, src.base, p.mapped->base);
  } catch (...) {
    engine.release(plan);
    throw;
  }
  engine.release(plan); // stream order keeps its buffers for this launch
  p.copies.push_back({ticket, id, launched});
  ++st.ipc_in_flight;
  p.transfers[id].posted = true;
}

caf::error ipc_failure(const transfer_state& st, const std::string& peer,
                       int peer_gpu, std::uint64_t id,
                       const std::exception& e) {
  auto code = dynamic_cast<const transport::gpu_error*>(&e) != nullptr
                  ? ec::cuda_error
                  : ec::invalid_argument;
  return make_error(
      code, fmt::format("transfer {} to '{}' over CUDA IPC (GPU {} to "
                        "its pool on GPU {}): {}",
                        id, peer, st.cfg.region->gpu(), peer_gpu, e.what()));
}

// Starts (or queues, when max_ipc_copies are running) one IPC transfer; a
// failure to map or launch fails that transfer only.
void start_ipc_send(self_ptr self, peer_out& p, std::uint64_t id,
                    std::vector<extent> extents) {
  auto& st = self->state;
  try {
    map_peer_region(st, p);
    if (!p.said_hello) { // so that it can ask us if a transfer times out
      p.said_hello = true;
      self->send(caf::actor_cast<transfer_actor>(p.ep.transfer),
                 proto::ipc_hello_atom::value, st.cfg.name);
    }
    if (st.ipc_in_flight >= max_ipc_copies || !p.ipc_waiting.empty()) {
      p.ipc_waiting.push_back({id, std::move(extents)});
      return;
    }
    launch_ipc_copy(st, p, id, extents);
  } catch (const std::exception& e) {
    auto t = p.transfers.find(id);
    fail(t->second, st, ipc_failure(st, p.ep.name, p.ep.gpu, id, e), p.ep.name);
    p.transfers.erase(t);
  }
}

// Tells the receiver that a finished copy landed: the window (launch to
// completion seen) and, from the kernel's CUDA events, launch to kernel
// start and the kernel's GPU time (0 and 0 when the engine has no timing;
// its events are reused only 64 launches later, so it has one here).
void send_landed(self_ptr self, peer_out& p, const peer_out::ipc_copy& copy,
                 std::uint64_t bytes) {
  auto& st = self->state;
  const auto copied = steady_clock::now();
  std::int64_t queued_ns = 0, gpu_ns = 0;
  if (const auto timing = st.engine->timing_of(copy.ticket)) {
    queued_ns =
        duration_cast<nanoseconds>(timing->started - copy.launched).count();
    gpu_ns = timing->gpu_time.count();
  }
  self->send(caf::actor_cast<transfer_actor>(p.ep.transfer),
             proto::landed_atom::value, st.cfg.name, copy.id, bytes,
             clock_ns(copy.launched), clock_ns(copied), queued_ns, gpu_ns);
}

// Completes the transfers whose kernels finished and launches waiting ones.
bool progress_ipc(self_ptr self, const std::string& name, peer_out& p) {
  auto& st = self->state;
  bool progressed = false;
  for (std::size_t k = 0; k < p.copies.size();) {
    auto copy = p.copies[k];
    std::optional<caf::error> failure;
    try {
      if (!st.engine->done(copy.ticket)) {
        ++k;
        continue;
      }
    } catch (const std::exception& e) {
      failure = ipc_failure(st, name, p.ep.gpu, copy.id, e);
    }
    p.copies[k] = p.copies.back();
    p.copies.pop_back();
    --st.ipc_in_flight;
    progressed = true;
    auto t = p.transfers.find(copy.id);
    if (t == p.transfers.end()) // failed (timed out) while it ran
      continue;
    if (failure) {
      fail(t->second, st, *failure, name);
    } else {
      t->second.bytes = t->second.expected;
      send_landed(self, p, copy, t->second.bytes);
      finish(t->second, st, false, name);
    }
    p.transfers.erase(t);
  }
  while (!p.ipc_waiting.empty() && st.ipc_in_flight < max_ipc_copies) {
    auto w = std::move(p.ipc_waiting.front());
    p.ipc_waiting.pop_front();
    if (p.transfers.count(w.id) == 0) // timed out while waiting
      continue;
    try {
      launch_ipc_copy(st, p, w.id, w.chunks);
    } catch (const std::exception& e) {
      auto t = p.transfers.find(w.id);
      fail(t->second, st, ipc_failure(st, name, p.ep.gpu, w.id, e), name);
      p.transfers.erase(t);
    }
    progressed = true;
  }
  return progressed;
}

// ---- CUDA IPC quarantine, sending side
// --------------------------------------

bool copy_running(const transfer_state& st, const std::string& peer,
                  std::uint64_t id) {
  if (auto p = st.out.find(peer); p != st.out.end())
    for (const auto& c : p->second.copies)
      if (c.id == id)
        return true;
  for (const auto& o : st.ipc_orphans)
    if (o.peer == peer && o.copy.id == id)
      return true;
  return false;
}

// Polls the orphaned copies; true if one ended.
bool progress_orphans(self_ptr self) {
  auto& st = self->state;
  bool progressed = false;
  for (std::size_t k = 0; k < st.ipc_orphans.size();) {
    auto& o = st.ipc_orphans[k];
    bool ended = true;
    try {
      ended = st.engine->done(o.copy.ticket);
    } catch (const std::exception& e) {
      spdlog::warn("transfer {}: the copy kernel of transfer {} to '{}' "
                   "failed after its transfer was given up: {}",
                   st.cfg.name, o.copy.id, o.peer, e.what());
    }
    if (!ended) {
      ++k;
      continue;
    }
    spdlog::info(
        "transfer {}: the copy kernel of given-up transfer {} to "
        "'{}' has ended ({:.1f} s after its launch)",
        st.cfg.name, o.copy.id, o.peer,
        duration<double>(steady_clock::now() - o.copy.launched).count());
    st.ipc_orphans[k] = std::move(st.ipc_orphans.back());
    st.ipc_orphans.pop_back();
    --st.ipc_in_flight;
    progressed = true;
  }
  return progressed;
}

// Answers the receivers whose transfer's kernels have all ended.
void answer_status_waiters(transfer_state& st) {
  for (std::size_t k = 0; k < st.status_waiters.size();) {
    auto& w = st.status_waiters[k];
    if (copy_running(st, w.peer, w.id)) {
      ++k;
      continue;
    }
    w.promise.deliver(caf::ok_atom::value);
    st.status_waiters[k] = std::move(st.status_waiters.back());
    st.status_waiters.pop_back();
  }
}

// Drops the IPC sends of transfer `id` that wait for an engine slot (they
// must never launch now); returns how many there were.
std::size_t forget_waiting_ipc(peer_out& p, std::uint64_t id) {
  auto before = p.ipc_waiting.size();
  p.ipc_waiting.erase(std::remove_if(p.ipc_waiting.begin(), p.ipc_waiting.end(),
                                     [id](const peer_out::waiting_send& w) {
                                       return w.id == id;
                                     }),
                      p.ipc_waiting.end());
  return before - p.ipc_waiting.size();
}

// Bounds of transfer_state::given_up: per receiver, the most remembered and
// for how long (a send order later than that is no longer told from a new
// one with the same id).
constexpr std::size_t max_given_up = 1024;
constexpr auto given_up_for = minutes(10);

void remember_given_up(transfer_state& st, const std::string& peer,
                       std::uint64_t id) {
  auto& ids = st.given_up[peer];
  auto now = steady_clock::now();
  while (!ids.empty() && (ids.size() >= max_given_up ||
                          now - ids.front().second > given_up_for))
    ids.pop_front();
  ids.emplace_back(id, now);
}

// A send order for a transfer its receiver gave up on before the order came:
// the error that refuses it (once), or none.
caf::error refuse_if_given_up(transfer_state& st, const std::string& peer,
                              std::uint64_t id) {
  auto i = st.given_up.find(peer);
  if (i == st.given_up.end())
    return {};
  auto& ids = i->second;
  auto hit = std::find_if(ids.begin(), ids.end(),
                          [id](const auto& x) { return x.first == id; });
  if (hit == ids.end() || steady_clock::now() - hit->second > given_up_for)
    return {};
  auto ago = duration<double>(steady_clock::now() - hit->second).count();
  ids.erase(hit);
  return make_error(
      ec::timeout,
      fmt::format("transfer {} to '{}': the receiver gave up on it {:.1f} s "
                  "before this send order came; refused so that its CUDA IPC "
                  "copy cannot write into blocks the receiver may have reused",
                  id, peer, ago));
}

// Receiver `peer` gave up on transfer `id` and asks whether our copy can
// still write into its region. A copy not launched yet never will be (it
// fails here too); a running one is answered for when its kernel ends.
caf::result<caf::ok_atom>
handle_ipc_status(self_ptr self, const std::string& peer, std::uint64_t id) {
  auto& st = self->state;
  bool ordered = false; // its send order reached us
  if (auto p = st.out.find(peer); p != st.out.end()) {
    auto t = p->second.transfers.find(id);
    ordered = t != p->second.transfers.end();
    if (ordered && forget_waiting_ipc(p->second, id) > 0) {
      fail(t->second, st,
           make_error(ec::timeout,
                      fmt::format("transfer {} to '{}': the receiver gave up "
                                  "on it before its CUDA IPC copy started",
                                  id, peer)),
           peer);
      p->second.transfers.erase(t);
    }
  }
  if (!copy_running(st, peer, id)) {
    if (!ordered)
      remember_given_up(st, peer, id);
    return caf::ok_atom::value;
  }
  auto promise = self->make_response_promise<caf::ok_atom>();
  for (auto& w : st.status_waiters)
    if (w.peer == peer && w.id == id) { // asked again (30 s passed)
      w.promise = promise;
      return promise;
    }
  spdlog::warn("transfer {}: '{}' gave up on transfer {} while its CUDA IPC "
               "copy kernel still runs; it keeps the destination blocks out of "
               "use until the kernel ends",
               st.cfg.name, peer, id);
  st.status_waiters.push_back({peer, id, promise});
  ensure_progress(self);
  return promise;
}

caf::result<std::uint64_t> handle_send(self_ptr self, proto::send_order& o) {
  auto& st = self->state;
  const auto& peer = o.peer.name;
  if (!o.peer.transfer || peer.empty())
    return make_error(ec::invalid_argument,
                      fmt::format("transfer {}: send order {} names no peer "
                                  "transfer actor",
                                  st.cfg.name, o.transfer_id));
  if (peer == st.cfg.name)
    return make_error(ec::invalid_argument,
                      fmt::format("transfer {}: send order {} is addressed to "
                                  "itself",
                                  st.cfg.name, o.transfer_id));
  if (auto bad = check_extents(o.extents, extent_side::source,
                               st.cfg.region->size(), peer);
      !bad.empty())
    return make_error(ec::invalid_extent, "send order: " + bad);
  if (auto bad = check_extents(o.extents, extent_side::destination,
                               o.peer.region_bytes, peer);
      !bad.empty())
    return make_error(ec::invalid_extent, "send order: " + bad);
  auto& p = st.out[peer];
  if (!p.ep.transfer) {
    p.ep = o.peer;
    self->monitor(p.ep.transfer);
  }
  if (p.transfers.count(o.transfer_id) != 0)
    return make_error(ec::duplicate,
                      fmt::format("transfer {} to '{}' is already in flight",
                                  o.transfer_id, peer));
  const bool ipc =
      choose_data_path(st.cfg.use_ipc, st.cfg.region->kind(), st.cfg.host_id,
                       p.ep) == data_path::cuda_ipc;
  if (ipc)
    if (auto stale = refuse_if_given_up(st, peer, o.transfer_id))
      return stale;
  auto promise = self->make_response_promise<std::uint64_t>();
  auto& t = p.transfers[o.transfer_id];
  t.expected = plan_bytes(o.extents);
  t.waiter = waiter_promise{promise};
  arm_deadline(self, milliseconds(o.timeout_ms), ">" + peer, o.transfer_id, t);
  if (ipc) {
    start_ipc_send(self, p, o.transfer_id, std::move(o.extents));
    ensure_progress(self);
    return promise;
  }
  auto chunks = coalesce(o.extents);
  try {
    if (p.channel) {
      start_send(self, p, o.transfer_id, std::move(chunks));
    } else {
      p.waiting.push_back({o.transfer_id, std::move(chunks)});
      if (!p.opening)
        open_channel(self, peer);
    }
  } catch (const std::exception& e) {
    drop_peer_out(self, peer,
                  make_error(ec::plugin_error,
                             fmt::format("send to '{}': {}", peer, e.what())));
  }
  ensure_progress(self);
  return promise;
}

// ---- receiving
// -------------------------------------------------------------------

void post_recvs(self_ptr self, peer_in& p, const proto::announcement& a) {
  auto& st = self->state;
  auto& t = p.transfers[a.transfer_id];
  auto* base = st.cfg.region->data();
  for (const auto& c : a.chunks) {
    auto op = p.channel->post_recv(base + c.dst_offset, c.length, p.reg);
    p.ops.emplace(op, a.transfer_id);
    ++t.ops_left;
  }
  t.posted = true;
  if (t.ops_left == 0)
    finish(t, st, true, a.sender);
}

void handle_announce(self_ptr self, proto::announcement& a) {
  auto& st = self->state;
  auto& p = st.in[a.sender];
  auto& t = p.transfers[a.transfer_id];
  if (t.cancelled || t.failure) {
    // The receiver gave up on it; its sends are coming anyway, so the comm
    // order is broken: tear the channel down and let the sender fail.
    drop_peer_in(self, a.sender,
                 make_error(ec::timeout,
                            fmt::format("transfer {} from '{}' arrived after "
                                        "the receiver gave up on it",
                                        a.transfer_id, a.sender)));
    st.in[a.sender].transfers.erase(a.transfer_id);
    return;
  }
  if (auto bad = check_extents(a.chunks, extent_side::destination,
                               st.cfg.region->size(), a.sender);
      !bad.empty()) {
    drop_peer_in(self, a.sender, make_error(ec::invalid_extent, bad));
    return;
  }
  t.expected = plan_bytes(a.chunks);
  if (!t.waiter) // unclaimed transfers still get a deadline
    arm_deadline(self, milliseconds(30000), "<" + a.sender, a.transfer_id, t);
  try {
    if (p.channel)
      post_recvs(self, p, a);
    else
      p.waiting.push_back(std::move(a));
  } catch (const std::exception& e) {
    drop_peer_in(
        self, a.sender,
        make_error(ec::plugin_error,
                   fmt::format("receive from '{}': {}", a.sender, e.what())));
  }
  ensure_progress(self);
}

caf::result<proto::recv_report> handle_recv(self_ptr self,
                                            proto::recv_order& o) {
  auto& st = self->state;
  auto& p = st.in[o.peer_name];
  auto& t = p.transfers[o.transfer_id];
  if (t.done) {
    auto report = report_of(t);
    p.transfers.erase(o.transfer_id);
    return report;
  }
  if (t.failure) {
    auto err = t.failure;
    p.transfers.erase(o.transfer_id);
    return err;
  }
  auto promise = self->make_response_promise<proto::recv_report>();
  t.waiter = waiter_promise{promise};
  arm_deadline(self, milliseconds(o.timeout_ms), "<" + o.peer_name,
               o.transfer_id, t);
  return promise;
}

// CUDA IPC: the sender's kernel wrote transfer `id` into our region.
void handle_landed(self_ptr self, const std::string& sender, std::uint64_t id,
                   std::uint64_t bytes, std::int64_t launched_ns,
                   std::int64_t copied_ns, std::int64_t gpu_queued_ns,
                   std::int64_t gpu_copy_ns) {
  auto& st = self->state;
  auto& p = st.in[sender];
  if (!p.sender && self->current_sender()) {
    // No channel tells us who the peer is: watch it from its first copy on.
    p.sender = caf::actor_cast<caf::actor_addr>(self->current_sender());
    self->monitor(caf::actor_cast<caf::actor>(p.sender));
  }
  auto& t = p.transfers[id];
  if (t.cancelled || t.failure || t.done) {
    spdlog::warn("transfer {}: transfer {} from '{}' landed ({} bytes) after "
                 "the receiver {}; ignored",
                 st.cfg.name, id, sender, bytes,
                 t.done ? "had it already" : "gave up on it");
    if (!t.waiter && !t.done)
      p.transfers.erase(id);
    return;
  }
  t.expected = bytes;
  t.bytes = bytes;
  // The data window of an IPC copy is the time the bytes moved: from the
  // sender's kernel launch to the sender seeing it complete (one host, one
  // monotonic clock). Waiting for the sender before, and this `landed`
  // message after, are control, not data.
  auto launched = steady_clock::time_point{nanoseconds{launched_ns}};
  t.started = launched;
  t.gpu_queued_ns = gpu_queued_ns;
  t.gpu_copy_ns = gpu_copy_ns;
  bool claimed = t.waiter.has_value();
  finish(t, st, true, sender, steady_clock::time_point{nanoseconds{copied_ns}});
  if (claimed)
    p.transfers.erase(id);
  else // kept for its recv order; forgotten if nobody claims it
    arm_deadline(self, milliseconds(30000), "<" + sender, id, t);
}

// ---- CUDA IPC quarantine, receiving side
// ------------------------------------

// Any transfer from a sender may be a CUDA IPC copy when we advertise an
// IPC handle: the sender chooses the path, and no announcement precedes a
// copy.
bool quarantines(const transfer_state& st) {
  return st.cfg.force_ipc_quarantine || !st.ipc_handle.empty();
}

// Updates stats and our share of the process-wide gauge.
void note_quarantine(transfer_state& st) {
  auto n = static_cast<std::int64_t>(st.quarantine.size());
  st.quarantine_gauge->add(n - st.quarantine_reported);
  st.quarantine_reported = n;
  st.stats.ipc_quarantined = static_cast<std::uint64_t>(n);
}

// The transfer actor of sender `name`, when known: its hello, landed or
// open told us (peer_in::sender), or the directory did (then it is watched
// from now on, so that its death releases what it holds).
caf::actor sender_actor(self_ptr self, const std::string& name) {
  auto& st = self->state;
  auto& p = st.in[name];
  if (!p.sender)
    if (auto k = st.known_transfers.find(name); k != st.known_transfers.end()) {
      p.sender = k->second;
      if (auto a = caf::actor_cast<caf::actor>(p.sender))
        self->monitor(a);
    }
  return caf::actor_cast<caf::actor>(p.sender);
}

void end_hold(self_ptr self, const std::string& peer,
              const ipc_quarantine::hold_ref& h, const std::string& why) {
  auto& st = self->state;
  st.asked.erase(h.id);
  auto since = st.quarantine.since(h.id);
  if (!st.quarantine.release(h.id))
    return; // ended already (the sender was gone first)
  note_quarantine(st);
  spdlog::info("transfer {}: transfer {} from '{}' leaves quarantine after "
               "{:.1f} s: {}",
               st.cfg.name, h.transfer, peer,
               duration<double>(steady_clock::now() - since).count(), why);
}

// Ends the holds of `peer` (all, or only those nobody asked about).
void release_quarantine_of(self_ptr self, const std::string& peer,
                           const std::string& why, bool unasked_only = false) {
  auto& st = self->state;
  auto& q = st.quarantine;
  if (auto n = unasked_only ? q.release_unasked(peer) : q.release_peer(peer);
      n > 0) {
    for (auto i = st.asked.begin(); i != st.asked.end();)
      i = q.since(i->first) == steady_clock::time_point{} ? st.asked.erase(i)
                                                          : std::next(i);
    note_quarantine(st);
    spdlog::info("transfer {}: {} quarantined transfers from '{}' released: "
                 "{}",
                 st.cfg.name, n, peer, why);
  }
}

// How long one status question may go unanswered before it is asked again
// (a hung GPU keeps a kernel running indefinitely; each repeat logs it).
constexpr auto status_ask_timeout = seconds(30);

// Asks `sender` about hold `h` (again every status_ask_timeout while it
// neither answers nor dies: a hung GPU may never finish the kernel).
void ask(self_ptr self, const std::string& peer, const transfer_actor& sender,
         const ipc_quarantine::hold_ref& h) {
  self->state.asked[h.id] = {caf::actor_cast<caf::actor_addr>(sender), peer, h};
  self->request(sender, status_ask_timeout, proto::ipc_status_atom::value,
                self->state.cfg.name, h.transfer)
      .then(
          [self, peer, h](caf::ok_atom) {
            end_hold(self, peer, h, "its sender says no copy of it runs");
          },
          [self, peer, h, sender](caf::error& err) {
            if (err.category() == caf::atom("system") &&
                err.code() ==
                    static_cast<std::uint8_t>(caf::sec::request_timeout)) {
              if (self->state.quarantine.since(h.id) ==
                  steady_clock::time_point{})
                return; // ended meanwhile (the sender is gone)
              spdlog::warn("transfer {}: transfer {} from '{}' stays in "
                           "quarantine: its sender has not confirmed for {} s "
                           "that its copy ended; asking again",
                           self->state.cfg.name, h.transfer, peer,
                           status_ask_timeout.count());
              ask(self, peer, sender, h);
              return;
            }
            end_hold(self, peer, h,
                     "asking its sender failed (" + render(err) + ")");
          });
}

// Asks `peer` about each of its quarantined transfers not asked yet. An
// unknown sender is asked once it becomes known (hello, joined) or its
// transfers are released when it leaves.
void ask_sender(self_ptr self, const std::string& peer) {
  auto& q = self->state.quarantine;
  auto holds = q.take_unasked(peer);
  if (holds.empty())
    return;
  auto sender = caf::actor_cast<transfer_actor>(sender_actor(self, peer));
  for (const auto& h : holds)
    if (sender)
      ask(self, peer, sender, h);
    else
      q.ask_again(h.id);
}

// A transfer from `peer` timed out before anything announced it: the
// sender's CUDA IPC kernel may still be writing its destination.
void quarantine_transfer(self_ptr self, const std::string& peer,
                         std::uint64_t id) {
  auto& st = self->state;
  st.quarantine.hold(peer, id, steady_clock::now());
  note_quarantine(st);
  spdlog::warn("transfer {}: transfer {} from '{}' timed out; its destination "
               "stays in quarantine until '{}' confirms no CUDA IPC copy of "
               "it still writes (or is gone){}",
               st.cfg.name, id, peer, peer,
               sender_actor(self, peer) ? ""
                                        : "; its transfer actor is not known "
                                          "yet");
  ask_sender(self, peer);
}

// Answered once the destination of transfer `id` from `peer` is safe.
caf::result<caf::ok_atom> handle_settle(self_ptr self, const std::string& peer,
                                        std::uint64_t id) {
  auto& q = self->state.quarantine;
  if (!q.holds(peer, id))
    return caf::ok_atom::value;
  auto promise = self->make_response_promise<caf::ok_atom>();
  q.when_settled(peer, id,
                 [promise]() mutable { promise.deliver(caf::ok_atom::value); });
  return promise;
}

// Sender `name` writes into our region over CUDA IPC (it is the current
// sender: a restarted one replaces the old, whose asks then fail).
void handle_ipc_hello(self_ptr self, const std::string& name) {
  auto& p = self->state.in[name];
  auto addr = caf::actor_cast<caf::actor_addr>(self->current_sender());
  if (addr && p.sender != addr) {
    p.sender = addr;
    self->monitor(caf::actor_cast<caf::actor>(addr));
  }
  ask_sender(self, name);
}

// Announcements that wait for a channel while none is open or accepting
// belong to the sender's previous channel (it announces only on an open
// one, and CAF keeps order per pair): their bytes went there and will never
// come on the next. Posted on the next channel, they would take its bytes
// out of order, and each one's deadline would later tear that channel down
// too, failing the next run's transfers in turn (the soak found this
// cascade). They fail instead, naming why; recv orders not yet announced
// are untouched (they may be for the new channel).
void fail_stale_announcements(self_ptr self, peer_in& p,
                              const std::string& sender) {
  if (p.waiting.empty())
    return;
  auto err = lost(sender, "its transfer was announced on a channel that is "
                          "gone (its bytes will not come)");
  for (const auto& a : p.waiting)
    if (auto t = p.transfers.find(a.transfer_id);
        t != p.transfers.end() && !t->second.done && !t->second.failure)
      fail(t->second, self->state, err, sender);
  spdlog::warn("transfer {}: {} transfer(s) from '{}' announced on its "
               "previous channel failed: {}",
               self->state.cfg.name, p.waiting.size(), sender, render(err));
  p.waiting.clear();
}

std::vector<char> handle_open(self_ptr self, const std::string& sender,
                              std::uint32_t comms, std::uint64_t chunk) {
  auto& st = self->state;
  auto& p = st.in[sender];
  if (p.channel || p.listener)
    drop_peer_in(self, sender,
                 lost(sender, "it opened a new channel (restarted?)"));
  else
    fail_stale_announcements(self, p, sender);
  auto& q = st.in[sender];
  q.sender = self->current_sender()
                 ? caf::actor_cast<caf::actor_addr>(self->current_sender())
                 : caf::actor_addr{};
  if (q.sender)
    self->monitor(caf::actor_cast<caf::actor>(q.sender));
  q.listener = std::make_unique<channel_listener>(
      st.cfg.net, st.cfg.device, options_for(st, sender, comms, chunk));
  q.accept_deadline =
      steady_clock::now() + milliseconds(st.cfg.open_timeout_ms);
  std::vector<char> flat;
  for (const auto& h : q.listener->handles())
    flat.insert(flat.end(), h.begin(), h.end());
  ensure_progress(self);
  return flat;
}

// ---- the progress loop
// -----------------------------------------------------------

// The whole region, once per channel. GPU memory goes to the plugin as
// NCCL_PTR_CUDA where its ptrSupport has it; otherwise the channel stages it
// through pinned bounce buffers (docs/gpu.md, "Staging"): nothing to decide
// here.
registration register_region(transfer_state& st, transport::channel& channel) {
  auto& region = *st.cfg.region;
  return channel.register_memory(region.data(), region.size(),
                                 region.nccl_ptr_type());
}

template<class Peer>
bool poll_peer(self_ptr self, const std::string& name, Peer& p, bool incoming,
               std::optional<caf::error>& failure) {
  auto& st = self->state;
  bool progressed = false;
  p.channel->poll([&](const transport::completion& c) {
    progressed = true;
    auto op = p.ops.find(c.id);
    if (op == p.ops.end())
      return;
    auto id = op->second;
    p.ops.erase(op);
    if (!c.ok) {
      if (!failure)
        failure = lost(name, fmt::format("{} of transfer {} failed: {}",
                                         incoming ? "receive" : "send", id,
                                         c.error ? c.error : "?"));
      return;
    }
    auto t = p.transfers.find(id);
    if (t == p.transfers.end())
      return;
    t->second.bytes += c.bytes;
    if (--t->second.ops_left == 0) {
      // A receiver's entry outlives completion until a recv order claims it.
      bool claimed = t->second.waiter.has_value();
      finish(t->second, st, incoming, name);
      if (!incoming || claimed)
        p.transfers.erase(t);
    }
  });
  return progressed;
}

bool progress_out(self_ptr self) {
  auto& st = self->state;
  bool progressed = false;
  std::vector<std::pair<std::string, caf::error>> failed;
  for (auto& [name, p] : st.out) {
    try {
      if (p.connector) {
        if (p.connector->try_connect()) {
          p.channel.emplace(p.connector->take());
          p.connector.reset();
          p.reg = register_region(st, *p.channel);
          st.stats.comms_opened += st.cfg.comms_per_peer;
          st.metrics.peer(name).comms->set(st.cfg.comms_per_peer);
          ++st.stats.registrations;
          p.opening = false;
          progressed = true;
          while (!p.waiting.empty()) {
            auto w = std::move(p.waiting.front());
            p.waiting.pop_front();
            if (p.transfers.count(w.id) != 0)
              start_send(self, p, w.id, std::move(w.chunks));
          }
        } else if (steady_clock::now() > p.connect_deadline) {
          failed.emplace_back(
              name, make_error(ec::timeout,
                               fmt::format("connecting to '{}' took "
                                           "more than {} ms",
                                           name, st.cfg.open_timeout_ms)));
          continue;
        }
      }
      if (p.channel) {
        std::optional<caf::error> failure;
        progressed |= poll_peer(self, name, p, false, failure);
        if (failure)
          failed.emplace_back(name, *failure);
      }
      if (!p.copies.empty() || !p.ipc_waiting.empty())
        progressed |= progress_ipc(self, name, p);
    } catch (const std::exception& e) {
      failed.emplace_back(name, lost(name, e.what()));
    }
  }
  for (auto& [name, err] : failed)
    drop_peer_out(self, name, err);
  return progressed;
}

bool progress_in(self_ptr self) {
  auto& st = self->state;
  bool progressed = false;
  std::vector<std::pair<std::string, caf::error>> failed;
  for (auto& [name, p] : st.in) {
    try {
      if (p.listener) {
        if (p.listener->try_accept()) {
          p.channel.emplace(p.listener->take());
          p.listener.reset();
          st.metrics.peer(name).comms->set(p.channel->comm_count());
          p.reg = register_region(st, *p.channel);
          ++st.stats.registrations;
          progressed = true;
          while (!p.waiting.empty()) {
            auto a = std::move(p.waiting.front());
            p.waiting.pop_front();
            post_recvs(self, p, a);
          }
        } else if (steady_clock::now() > p.accept_deadline) {
          failed.emplace_back(
              name, make_error(ec::timeout,
                               fmt::format("'{}' did not connect within {} ms",
                                           name, st.cfg.open_timeout_ms)));
          continue;
        }
      }
      if (p.channel) {
        std::optional<caf::error> failure;
        progressed |= poll_peer(self, name, p, true, failure);
        if (failure)
          failed.emplace_back(name, *failure);
      }
    } catch (const std::exception& e) {
      failed.emplace_back(name, lost(name, e.what()));
    }
  }
  for (auto& [name, err] : failed)
    drop_peer_in(self, name, err);
  return progressed;
}

bool has_work(const transfer_state& st) {
  for (auto& [name, p] : st.out)
    if (p.connector || !p.ops.empty() || !p.waiting.empty() ||
        !p.copies.empty() || !p.ipc_waiting.empty())
      return true;
  for (auto& [name, p] : st.in)
    if (p.listener || !p.ops.empty())
      return true;
  return !st.ipc_orphans.empty();
}

// Transfers started and neither finished nor failed, for the in-flight gauge.
std::int64_t count_in_flight(const transfer_state& st) {
  std::int64_t n = 0;
  for (auto& [name, p] : st.out)
    for (auto& [id, t] : p.transfers)
      n += !t.done && !t.failure;
  for (auto& [name, p] : st.in)
    for (auto& [id, t] : p.transfers)
      n += !t.done && !t.failure;
  return n;
}

void on_progress(self_ptr self, std::uint64_t generation) {
  auto& st = self->state;
  if (generation != st.progress_generation)
    return; // superseded by an immediate poll (see ensure_progress)
  st.progress_scheduled = false;
  st.progress_delayed = false;
  bool progressed = progress_out(self);
  progressed |= progress_in(self);
  if (!st.ipc_orphans.empty())
    progressed |= progress_orphans(self);
  if (!st.status_waiters.empty())
    answer_status_waiters(st);
  if (progressed) // only then can the count have changed
    st.metrics.in_flight.set(count_in_flight(st));
  if (!has_work(st))
    return;
  st.progress_scheduled = true;
  if (progressed)
    st.idle_polls = 0;
  else
    ++st.idle_polls;
  // Spin while bytes flow (a completion found within ~a few hundred polls
  // keeps latency at the plugin's); back off up to 200 us when the plugin
  // has had nothing for a while, so a waiting worker does not burn a
  // shared core. Orphaned copies (their transfer given up, perhaps on a
  // hung GPU) are polled without spinning.
  constexpr unsigned spin_polls = 256;
  if (st.idle_polls < spin_polls ||
      (st.spin_while_copying && st.ipc_in_flight > st.ipc_orphans.size())) {
    self->send(self, proto::progress_atom::value, st.progress_generation);
  } else {
    auto delay =
        microseconds(std::min<unsigned>(200, 10 + st.idle_polls - spin_polls));
    st.progress_delayed = true;
    self->delayed_send(self, delay, proto::progress_atom::value,
                       st.progress_generation);
  }
}

void on_expire(self_ptr self, const std::string& key, std::uint64_t id,
               std::uint64_t generation) {
  auto& st = self->state;
  bool outgoing = key[0] == '>';
  auto name = key.substr(1);
  auto timeout = make_error(
      ec::timeout, fmt::format("transfer {} {} '{}' did not complete in time",
                               id, outgoing ? "to" : "from", name));
  if (outgoing) {
    auto p = st.out.find(name);
    if (p == st.out.end())
      return;
    auto t = p->second.transfers.find(id);
    if (t == p->second.transfers.end() || t->second.done ||
        t->second.generation != generation) // another transfer's deadline
      return;
    if (p->second.mapped) {
      // CUDA IPC: a running kernel cannot be recalled and the peer has no
      // channel to close; this transfer fails, the peer stays usable. Its
      // kernel, if launched, is watched on as an orphan (the receiver may
      // ask about it); if not launched yet, it never will be.
      fail(t->second, st, timeout, name);
      p->second.transfers.erase(t);
      orphan_copies(st, name, p->second, id);
      forget_waiting_ipc(p->second, id);
      return;
    }
    if (t->second.posted) {
      // Requests are out on the comms: only closing them makes the memory
      // safe to reuse, and the comm order is lost anyway. Dropping the peer
      // fails this transfer too (once, and counted in its log line).
      drop_peer_out(self, name, timeout);
    } else {
      fail(t->second, st, timeout, name);
      p->second.transfers.erase(t);
    }
    return;
  }
  auto p = st.in.find(name);
  if (p == st.in.end())
    return;
  auto t = p->second.transfers.find(id);
  if (t == p->second.transfers.end() || t->second.generation != generation)
    return; // gone, or another transfer under the same id
  if (t->second.failure) {
    if (!t->second.waiter) // a failure nobody claimed in time: forget it
      p->second.transfers.erase(t);
    return;
  }
  if (t->second.done) {
    if (!t->second.waiter) // nobody claimed it in time: forget it
      p->second.transfers.erase(t);
    return;
  }
  if (t->second.posted) {
    drop_peer_in(self, name, timeout); // fails this transfer too, counted
  } else {
    if (quarantines(st)) // before the failure reaches the consumer
      quarantine_transfer(self, name, id);
    fail(t->second, st, timeout, name);
    t->second.cancelled = true; // a later announcement must not land
  }
}

void on_sweep(self_ptr self) {
  auto& st = self->state;
  st.sweep_scheduled = false;
  auto now = steady_clock::now();
  while (!st.deadlines.empty() && st.deadlines.begin()->first <= now) {
    auto d = std::move(st.deadlines.begin()->second);
    st.deadlines.erase(st.deadlines.begin());
    on_expire(self, d.key, d.id, d.generation);
  }
  if (!st.deadlines.empty()) {
    st.sweep_scheduled = true;
    self->delayed_send(self, sweep_period, proto::sweep_atom::value);
  }
}

void advertise_ipc_handle(transfer_state& st) {
  auto& region = *st.cfg.region;
  if (!st.cfg.use_ipc || region.kind() != memory_kind::cuda)
    return;
  try {
    st.ipc_handle =
        transport::export_ipc_handle(region.device_allocation()).to_hex();
  } catch (const std::exception& e) {
    spdlog::warn("transfer {}: region '{}' cannot be shared over CUDA IPC, "
                 "peers will use the plugin: {}",
                 st.cfg.name, region.name(), e.what());
  }
}

// A peer that left the directory is gone for good, and a later process
// under its name reuses its transfer ids (the same request ids): none of
// the old one's failures may fail those. Its receivers heard of the failure
// already, or hear of the peer's death from the directory themselves.
void forget_failures_from(transfer_state& st, const std::string& name) {
  auto i = st.in.find(name);
  if (i == st.in.end())
    return;
  auto& transfers = i->second.transfers;
  for (auto it = transfers.begin(); it != transfers.end();)
    it = it->second.failure && !it->second.waiter ? transfers.erase(it)
                                                  : std::next(it);
}

void on_down(self_ptr self, const caf::down_msg& dm) {
  auto& st = self->state;
  std::vector<std::string> outs, ins;
  for (auto& [name, p] : st.out)
    if (p.ep.transfer && p.ep.transfer.address() == dm.source)
      outs.push_back(name);
  for (auto& [name, p] : st.in)
    if (p.sender && p.sender == dm.source)
      ins.push_back(name);
  auto why = fmt::format("its transfer actor is down ({})", render(dm.reason));
  for (auto& name : outs)
    drop_peer_out(self, name, lost(name, why));
  for (auto& name : ins) {
    drop_peer_in(self, name, lost(name, why));
    release_quarantine_of(self, name, why);
  }
  std::vector<transfer_state::asked_hold> gone;
  for (auto& [token, a] : st.asked)
    if (a.sender == dm.source)
      gone.push_back(a);
  for (auto& a : gone)
    end_hold(self, a.peer, a.hold, why);
}

transfer_actor::behavior_type transfer_impl(self_ptr self,
                                            transfer_config cfg) {
  self->state.cfg = std::move(cfg);
  self->state.metrics.regions.add(1);
  self->state.metrics.registered_bytes.add(
      static_cast<std::int64_t>(self->state.cfg.region->size()));
  advertise_ipc_handle(self->state);
  self->set_down_handler([self](caf::down_msg& dm) { on_down(self, dm); });
  return {
      [self](proto::endpoint_atom) {
        auto& cfg = self->state.cfg;
        proto::endpoint ep;
        ep.name = cfg.name;
        ep.transfer = caf::actor_cast<caf::actor>(self);
        ep.plugin = cfg.net ? cfg.net->name() : "";
        ep.region_bytes = cfg.region->size();
        ep.host_id = cfg.host_id;
        ep.gpu = cfg.region->gpu();
        ep.ipc_handle = self->state.ipc_handle;
        return ep;
      },
      [self](proto::send_atom, proto::send_order& o) {
        return handle_send(self, o);
      },
      [self](proto::recv_atom, proto::recv_order& o) {
        return handle_recv(self, o);
      },
      [self](proto::open_atom, const std::string& sender, std::uint32_t comms,
             std::uint64_t chunk) -> caf::result<std::vector<char>> {
        try {
          return handle_open(self, sender, comms, chunk);
        } catch (const std::exception& e) {
          return make_error(ec::plugin_error,
                            fmt::format("transfer {}: listening for '{}': {}",
                                        self->state.cfg.name, sender,
                                        e.what()));
        }
      },
      [self](proto::announce_atom, proto::announcement& a) {
        handle_announce(self, a);
      },
      [self](proto::landed_atom, const std::string& sender, std::uint64_t id,
             std::uint64_t bytes, std::int64_t launched_ns,
             std::int64_t copied_ns, std::int64_t gpu_queued_ns,
             std::int64_t gpu_copy_ns) {
        handle_landed(self, sender, id, bytes, launched_ns, copied_ns,
                      gpu_queued_ns, gpu_copy_ns);
      },
      [self](proto::stats_atom) { return self->state.stats; },
      [self](proto::ipc_hello_atom, const std::string& sender) {
        handle_ipc_hello(self, sender);
      },
      [self](proto::ipc_status_atom, const std::string& receiver,
             std::uint64_t id) {
        return handle_ipc_status(self, receiver, id);
      },
      [self](proto::settle_atom, const std::string& peer, std::uint64_t id) {
        return handle_settle(self, peer, id);
      },
      [self](joined_atom, const worker_info& w) {
        map_ahead(self->state, w);
        if (w.transfer && w.name != self->state.cfg.name) {
          self->state.known_transfers[w.name] = w.transfer.address();
          ask_sender(self, w.name);
        }
      },
      [self](left_atom, const std::string& name, const caf::error& why) {
        auto err = lost(name, "the directory reports it left: " + render(why));
        drop_peer_out(self, name, err);
        drop_peer_in(self, name, err);
        forget_failures_from(self->state, name);
        // Only what nobody could ask about: a sender that was asked may
        // have lost no more than its lease and still run the kernel; it
        // answers when that ended, and its death ends the holds too.
        self->state.known_transfers.erase(name);
        release_quarantine_of(
            self, name, "the directory reports it left: " + render(why), true);
      },
      [self](proto::progress_atom, std::uint64_t generation) {
        on_progress(self, generation);
      },
      [self](proto::sweep_atom) { on_sweep(self); },
  };
}

} // namespace

data_path choose_data_path(bool use_ipc, memory_kind local,
                           const std::string& host_id,
                           const proto::endpoint& peer) {
  bool same_host = !host_id.empty() && host_id == peer.host_id;
  return use_ipc && local == memory_kind::cuda && same_host &&
                 !peer.ipc_handle.empty()
             ? data_path::cuda_ipc
             : data_path::plugin;
}

bool maps_ahead(const transfer_config& cfg, memory_kind local,
                const worker_info& peer) {
  return cfg.map_peers_ahead && peer.role == worker_role::decode &&
         peer.name != cfg.name && cfg.use_ipc && local == memory_kind::cuda &&
         !cfg.host_id.empty() && peer.host_id == cfg.host_id;
}

transfer_actor spawn_transfer(caf::actor_system& sys, transfer_config cfg) {
  return sys.spawn<caf::detached>(transfer_impl, std::move(cfg));
}

} // namespace kvferry
