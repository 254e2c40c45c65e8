// The transfer actor's CUDA IPC path (transfer_state.hpp): copies to
// same-host GPU peers, and the quarantine of timed-out copies.
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
#include <cstring>
#include <exception>
#include <stdexcept>
#include <thread>

#include <caf/all.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kvferry/runtime/error.hpp"
#include "kvferry/transport/extent_lists.hpp"
#include "kvferry/transport/gpu_event.hpp"
#include "kvferry/transport/gpu_topology.hpp"
#include "kvferry/transport/plan_crew.hpp"
#include "transfer_state.hpp"

namespace kvferry::transfer_detail {

using namespace std::chrono;

namespace {

std::uint64_t address_of(const void* p) {
  return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(p));
}

// Why this table cannot take CUDA IPC at all (empty: it can): every region
// must be GPU memory on region 0's GPU, where this actor's kernel runs.
std::string why_not_ipc(const transfer_state& st) {
  const int gpu = st.cfg.region->gpu();
  for (std::size_t i = 0; i < st.regions.size(); ++i) {
    if (!st.regions[i])
      continue; // removed (transfer_table.cpp)
    const auto& r = *st.regions[i];
    if (r.kind() != memory_kind::cuda)
      return fmt::format("region {} ('{}') is host memory", i, r.name());
    if (r.gpu() != gpu)
      return fmt::format("region {} ('{}') is on GPU {}, region 0 on GPU {}", i,
                         r.name(), r.gpu(), gpu);
  }
  return {};
}

// Each region's export, regions of one allocation sharing its handle (a
// peer opens each allocation once). Throws gpu_error naming the region
// that cannot be exported.
std::vector<transport::ipc_region> export_table(const transfer_state& st) {
  std::vector<transport::ipc_region> table;
  for (std::size_t i = 0; i < st.regions.size(); ++i) {
    if (!st.regions[i]) { // removed: an entry of no bytes keeps the indexes
      auto gone = table.front();
      gone.offset = 0;
      gone.bytes = 0;
      table.push_back(gone);
      continue;
    }
    try {
      auto r = transport::export_ipc_region(st.regions[i]->view());
      for (const auto& earlier : table)
        if (earlier.allocation == r.allocation)
          r.handle = earlier.handle;
      table.push_back(r);
    } catch (const transport::gpu_error& e) {
      throw transport::gpu_error(fmt::format("region {} ('{}'): {}", i,
                                             st.regions[i]->name(), e.what()));
    }
  }
  return table;
}

} // namespace

// Our table's addresses, and its IPC export for the endpoint when every
// region can be shared: kvferry's own pool, or the caller's cudaMalloc'd
// memory wrapped in place (a region may lie inside a larger allocation).
// One log line says why a GPU table cannot (peers then use the plugin).
// Again whenever the table changes at runtime (an endpoint's reg/dereg): a
// removed region is an entry of no bytes.
void advertise_ipc_handle(transfer_state& st) {
  st.local_addresses = {};
  st.ipc_handle.clear();
  for (const auto& r : st.regions) {
    st.local_addresses.bases.push_back(r ? address_of(r->data()) : 0);
    st.local_addresses.sizes.push_back(r ? r->size() : 0);
  }
  const auto why = why_not_ipc(st);
  st.ipc_kind = why.empty() ? memory_kind::cuda : memory_kind::host;
  if (!st.cfg.use_ipc || st.ipc_kind != memory_kind::cuda) {
    if (st.cfg.use_ipc && st.cfg.region->kind() == memory_kind::cuda)
      spdlog::warn("transfer {}: its table cannot take CUDA IPC ({}); peers "
                   "and this worker use the plugin",
                   st.cfg.name, why);
    return;
  }
  try {
    st.ipc_handle = transport::ipc_table_to_text(export_table(st));
  } catch (const std::exception& e) {
    spdlog::warn("transfer {}: its table cannot be shared over CUDA IPC, "
                 "peers will use the plugin to write it: {}",
                 st.cfg.name, e.what());
  }
}

// ---- sending over CUDA IPC

namespace {

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
  // The kernel chosen for this GPU model (docs/gpu.md, "Kernel choice per
  // GPU"): cached, overridden, or tuned now, once per GPU model and driver.
  st.engine = std::make_unique<transport::gpu_copy_engine>(
      gpu, transport::chosen_copy_bands(gpu, tuning));
  st.engine->set_plan_threads(
      transport::plan_threads(std::thread::hardware_concurrency()));
}

// Maps the peer's region table on first use: each allocation once (the
// cache; one mapped ahead when its worker joined is found there), each
// region at its offset in its allocation.
void map_peer_region(transfer_state& st, peer_out& p) {
  if (p.mapped)
    return;
  ensure_ipc_engine(st);
  const auto exported = transport::ipc_table_from_text(p.ep.ipc_handle);
  const auto sizes = proto::region_sizes_of(p.ep);
  if (exported.size() != sizes.size())
    throw std::invalid_argument(
        fmt::format("the IPC table of '{}' has {} regions, its endpoint {}",
                    p.ep.name, exported.size(), sizes.size()));
  address_table t;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const auto& r = exported[i];
    if (sizes[i] == 0) { // a removed region: nothing to open
      t.bases.push_back(0);
      t.sizes.push_back(0);
      continue;
    }
    if (r.bytes < sizes[i])
      throw std::invalid_argument(
          fmt::format("the IPC handle of region {} of '{}' maps {} bytes, "
                      "its endpoint says {}",
                      i, p.ep.name, r.bytes, sizes[i]));
    enable_access_to_peer_gpu(st.cfg.region->gpu(), r.handle.device);
    t.bases.push_back(address_of(st.ipc_regions->open(r.handle).base) +
                      r.offset);
    t.sizes.push_back(sizes[i]);
  }
  p.mapped = std::move(t);
}

} // namespace

void adopt_peer(self_ptr self, peer_out& p, const proto::endpoint& ep) {
  if (!p.ep.transfer) {
    p.ep = ep;
    self->monitor(p.ep.transfer);
    return;
  }
  if (ep.transfer != p.ep.transfer) // a later actor of that name: as before
    return;
  if (ep.ipc_handle != p.ep.ipc_handle ||
      ep.region_bytes != p.ep.region_bytes ||
      ep.more_region_sizes != p.ep.more_region_sizes) {
    p.ep = ep;
    p.mapped.reset(); // its allocations stay open in the cache
  }
}

// A same-host decode worker's pool, opened as soon as the directory says it
// joined (cfg.map_peers_ahead): cudaIpcOpenMemHandle and enabling peer
// access take milliseconds (tens of them across GPUs), which the first
// request to that worker would otherwise wait for. A failure here costs
// nothing: the first transfer maps again and fails with the reason.
void map_ahead(transfer_state& st, const worker_info& w) {
  auto& cfg = st.cfg;
  if (!maps_ahead(cfg, st.ipc_kind, w))
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

namespace {

std::byte* pointer_at(std::uint64_t address) {
  return reinterpret_cast<std::byte*>(static_cast<std::uintptr_t>(address));
}

// One kernel for the whole transfer, whatever the regions: the extents'
// virtual offsets become offsets from one origin per side (ipc_table.hpp)
// while the engine packs them, one pass that also checks them against both
// tables before anything launches (the orders are not checked before: an
// extent out of its region fails the transfer here, as invalid_extent,
// naming the extent and the region, and no byte moves) and counts the
// bytes the transfer reports. A push copies our table into the
// peer's, a read the peer's into ours. The copy stream waits for
// `wait_event` first (on the GPU). The data window starts right before the
// launch call (after the plan is packed and its upload queued): the GPU can
// start the kernel before that call returns.
void launch_ipc_copy(transfer_state& st, peer_out& p, peer_out::waiting_send& w,
                     bool read) {
  auto& engine = *st.engine;
  const auto& src = read ? *p.mapped : st.local_addresses;
  const auto& dst = read ? st.local_addresses : *p.mapped;
  const auto prepared = engine.prepare(w.chunks, layout_of(src, st.src_layout),
                                       layout_of(dst, st.dst_layout));
  const auto launched = steady_clock::now();
  transport::copy_ticket ticket;
  try {
    if (w.wait_event != 0)
      engine.wait_event(w.wait_event);
    if (!st.ipc_test_hold.empty()) // a hung GPU, for the quarantine's test
      detail::hold_stream_for_test(engine.native_stream(), st.ipc_test_hold);
    ticket = engine.launch(prepared, pointer_at(src.origin()),
                           pointer_at(dst.origin()));
  } catch (...) {
    engine.release(prepared);
    throw;
  }
  const auto copied = engine.copied_bytes(prepared);
  engine.release(prepared); // stream order keeps its buffers for this launch
  // The plan is packed: the list goes back for the next vector call.
  transport::extent_lists::give(std::move(w.chunks));
  p.copies.push_back({ticket, w.id, launched});
  ++st.ipc_in_flight;
  auto& t = p.transfers[w.id];
  t.posted = true;
  t.expected = copied;
}

caf::error ipc_failure(const transfer_state& st, const std::string& peer,
                       int peer_gpu, std::uint64_t id, const std::exception& e,
                       bool read = false) {
  auto code = dynamic_cast<const transport::gpu_error*>(&e) != nullptr
                  ? ec::cuda_error
              : dynamic_cast<const transport::extent_error*>(&e) != nullptr
                  ? ec::invalid_extent
                  : ec::invalid_argument;
  return make_error(
      code, fmt::format("{} {} {} '{}' over CUDA IPC (GPU {} {} its pool on "
                        "GPU {}): {}",
                        read ? "read" : "transfer", id, read ? "from" : "to",
                        peer, st.cfg.region->gpu(), read ? "from" : "to",
                        peer_gpu, e.what()));
}

} // namespace

namespace {

// Starts (or queues, when max_ipc_copies are running) one IPC copy of `p`
// (a push to it, or a read from it); a failure to map or launch fails that
// transfer only.
void start_ipc_copy(transfer_state& st, peer_out& p, peer_out::waiting_send w,
                    bool read) {
  try {
    map_peer_region(st, p);
    if (st.ipc_in_flight >= max_ipc_copies || !p.ipc_waiting.empty()) {
      p.ipc_waiting.push_back(std::move(w));
      return;
    }
    launch_ipc_copy(st, p, w, read);
  } catch (const std::exception& e) {
    auto t = p.transfers.find(w.id);
    fail(t->second, st, ipc_failure(st, p.ep.name, p.ep.gpu, w.id, e, read),
         p.ep.name);
    p.transfers.erase(t);
  }
}

} // namespace

void start_ipc_send(self_ptr self, peer_out& p, std::uint64_t id,
                    std::vector<extent> extents, std::uint64_t wait_event) {
  auto& st = self->state;
  try {
    map_peer_region(st, p);
  } catch (const std::exception&) {
    // start_ipc_copy maps again and fails the transfer with the reason
  }
  if (p.mapped && !p.said_hello) { // before the first copy: so that it can
    p.said_hello = true;           // ask us when a transfer times out
    self->send(caf::actor_cast<transfer_actor>(p.ep.transfer),
               proto::ipc_hello_atom::value, st.cfg.name);
  }
  start_ipc_copy(st, p, {id, std::move(extents), wait_event}, false);
}

namespace {

// From the kernel's CUDA events: launch to kernel start, and the kernel's GPU
// time (0 and 0 when the engine has no timing; its events are reused only
// 64 launches later, so it has one here).
std::pair<std::int64_t, std::int64_t>
gpu_times(transfer_state& st, const peer_out::ipc_copy& copy) {
  if (const auto timing = st.engine->timing_of(copy.ticket))
    return {duration_cast<nanoseconds>(timing->started - copy.launched).count(),
            timing->gpu_time.count()};
  return {0, 0};
}

// Tells the receiver that a finished copy landed: the window (launch to
// completion seen) and the kernel's times.
void send_landed(self_ptr self, peer_out& p, const peer_out::ipc_copy& copy,
                 std::uint64_t bytes) {
  auto& st = self->state;
  const auto copied = steady_clock::now();
  const auto [queued_ns, gpu_ns] = gpu_times(st, copy);
  self->send(
      caf::actor_cast<transfer_actor>(p.ep.transfer), proto::landed_atom::value,
      proto::landed{st.cfg.name, copy.id, bytes, steady_ns(copy.launched),
                    steady_ns(copied), queued_ns, gpu_ns});
}

// A read's kernel finished: its reply is the report a recv order gets, the
// window from the launch to the completion seen.
void finish_read(transfer_state& st, const std::string& name, transfer_entry& t,
                 const peer_out::ipc_copy& copy) {
  t.bytes = t.expected;
  t.started = copy.launched;
  std::tie(t.gpu_queued_ns, t.gpu_copy_ns) = gpu_times(st, copy);
  finish(t, st, true, name);
}

} // namespace

// Completes the transfers whose kernels finished (a push tells its receiver,
// a read replies to its order) and launches waiting ones.
bool progress_ipc(self_ptr self, const std::string& name, peer_out& p,
                  bool read) {
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
      failure = ipc_failure(st, name, p.ep.gpu, copy.id, e, read);
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
    } else if (read) {
      finish_read(st, name, t->second, copy);
    } else {
      t->second.bytes = t->second.expected;
      // An endpoint's write (answer_to): the kernel's completion is its
      // landing, which our settlement tells the writer; nobody at the
      // receiver claims it, so the receiver is not told.
      if (!t->second.answer_to)
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
      launch_ipc_copy(st, p, w, read);
    } catch (const std::exception& e) {
      auto t = p.transfers.find(w.id);
      fail(t->second, st, ipc_failure(st, name, p.ep.gpu, w.id, e, read), name);
      p.transfers.erase(t);
    }
    progressed = true;
  }
  return progressed;
}

// ---- CUDA IPC quarantine, sending side

namespace {

// Whether a kernel of push `id` to `peer` (or of read `id` from it) may
// still run.
bool copy_running(const transfer_state& st, const std::string& peer,
                  std::uint64_t id, bool read = false) {
  const auto& peers = read ? st.reads : st.out;
  if (auto p = peers.find(peer); p != peers.end())
    for (const auto& c : p->second.copies)
      if (c.id == id)
        return true;
  for (const auto& o : st.ipc_orphans)
    if (o.read == read && o.peer == peer && o.copy.id == id)
      return true;
  return false;
}

// Plugin path: the entry of transfer `id` from `peer`; nullptr if none.
transfer_entry* find_recv(transfer_state& st, const std::string& peer,
                          std::uint64_t id) {
  auto p = st.in.find(peer);
  if (p == st.in.end())
    return nullptr;
  auto t = p->second.transfers.find(id);
  return t == p->second.transfers.end() ? nullptr : &t->second;
}

// Plugin path: receives are posted for it on the channel (announced, not
// ended): its bytes may still land.
bool recv_posted(transfer_state& st, const std::string& peer,
                 std::uint64_t id) {
  const auto* t = find_recv(st, peer, id);
  return t != nullptr && t->posted && !t->done && !t->failure;
}

// Plugin path: a recv order whose transfer was not announced yet is given
// up, as at its deadline (a later announcement tears the channel down, so
// no byte of it lands).
void give_up_unannounced(self_ptr self, const std::string& peer,
                         std::uint64_t id) {
  auto& st = self->state;
  auto* t = find_recv(st, peer, id);
  if (t == nullptr || !t->waiter || t->posted || t->done || t->failure)
    return;
  fail(*t, st,
       make_error(ec::not_found,
                  fmt::format("transfer {} from '{}' was given up by its "
                              "receiver before it was announced",
                              id, peer)),
       peer);
  t->cancelled = true;
}

} // namespace

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
        "transfer {}: the copy kernel of given-up {} {} {} "
        "'{}' has ended ({:.1f} s after its launch)",
        st.cfg.name, o.read ? "read" : "transfer", o.copy.id,
        o.read ? "from" : "to", o.peer,
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
    if (copy_running(st, w.peer, w.id, w.read) ||
        (w.read && recv_posted(st, w.peer, w.id))) {
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

namespace {

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

} // namespace

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

// Copies of `p` (all, or those of transfer `id`) whose transfer is gone
// while their kernels may still run: polled on as orphans (progress_orphans)
// so that a receiver asking about them is answered only when they end, and
// their event slots stay counted in ipc_in_flight meanwhile.
void orphan_copies(transfer_state& st, const std::string& peer, peer_out& p,
                   std::optional<std::uint64_t> id, bool read) {
  for (std::size_t k = 0; k < p.copies.size();) {
    if (id && p.copies[k].id != *id) {
      ++k;
      continue;
    }
    st.ipc_orphans.push_back({peer, p.copies[k], read});
    p.copies[k] = p.copies.back();
    p.copies.pop_back();
  }
}

// ---- receiving over CUDA IPC

// The sender's kernel wrote transfer `id` into our region.
void handle_landed(self_ptr self, const proto::landed& l) {
  auto& st = self->state;
  const auto& sender = l.sender;
  const auto id = l.transfer_id;
  const auto bytes = l.bytes;
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
  auto launched = steady_clock::time_point{nanoseconds{l.launched_ns}};
  t.started = launched;
  t.gpu_queued_ns = l.gpu_queued_ns;
  t.gpu_copy_ns = l.gpu_copy_ns;
  bool claimed = t.waiter.has_value();
  finish(t, st, true, sender,
         steady_clock::time_point{nanoseconds{l.copied_ns}});
  if (claimed)
    p.transfers.erase(id);
  else // kept for its recv order; forgotten if nobody claims it
    arm_deadline(self, milliseconds(30000), t.deadline);
}

// ---- CUDA IPC quarantine, receiving side

// Any transfer from a sender may be a CUDA IPC copy when we advertise an
// IPC handle: the sender chooses the path, and no announcement precedes a
// copy.
bool quarantines(const transfer_state& st) {
  return st.cfg.force_ipc_quarantine || !st.ipc_handle.empty();
}

namespace {

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

} // namespace

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
                           const std::string& why, bool unasked_only) {
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

namespace {

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

} // namespace

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

// Answered once the destination of transfer `id` from `peer` is safe: no
// quarantined push of the sender's, no kernel of a failed read of ours
// (its reply came at its deadline; the kernel may run on), and on the
// plugin path no receive posted for it (a recv order not announced yet is
// given up).
caf::result<caf::ok_atom> handle_settle(self_ptr self, const std::string& peer,
                                        std::uint64_t id) {
  auto& st = self->state;
  give_up_unannounced(self, peer, id);
  if (copy_running(st, peer, id, true) || recv_posted(st, peer, id)) {
    auto promise = self->make_response_promise<caf::ok_atom>();
    st.status_waiters.push_back({peer, id, promise, true});
    ensure_progress(self);
    return promise;
  }
  auto& q = st.quarantine;
  if (!q.holds(peer, id))
    return caf::ok_atom::value;
  auto promise = self->make_response_promise<caf::ok_atom>();
  q.when_settled(peer, id,
                 [promise]() mutable { promise.deliver(caf::ok_atom::value); });
  return promise;
}

void settle_answer(self_ptr self, const std::string& peer, std::uint64_t id,
                   caf::error& why) {
  if (fail_offer(self->state, peer, id, why))
    return; // not pulled yet: the pull gets `why`
  auto* t = find_recv(self->state, peer, id);
  if (t == nullptr || !t->waiter)
    return; // answered already: the node hears of it
  auto* caller = std::get_if<answer_waiter>(&*t->waiter);
  if (caller == nullptr)
    return;
  caller->failure = std::move(why);
  give_up_unannounced(self, peer, id);
  settle_short(self, peer, id);
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

// ---- one-sided reads over CUDA IPC

namespace {

// Why `peer`'s table cannot be read over CUDA IPC from here (empty: it can).
std::string why_no_read(const transfer_state& st, const proto::endpoint& peer) {
  if (!st.cfg.use_ipc)
    return "this transfer actor does not take CUDA IPC";
  if (st.ipc_kind != memory_kind::cuda)
    return "its own table is not GPU memory on one GPU (" + why_not_ipc(st) +
           ")";
  if (st.cfg.host_id.empty() || st.cfg.host_id != peer.host_id)
    return fmt::format("'{}' is not on this host (host id '{}', ours '{}')",
                       peer.name, peer.host_id, st.cfg.host_id);
  if (peer.ipc_handle.empty())
    return fmt::format("'{}' exports no CUDA IPC handles (host memory, "
                       "memory CUDA IPC cannot share, or it does not take "
                       "CUDA IPC)",
                       peer.name);
  return {};
}

} // namespace

bool from_remote_sender(self_ptr self) {
  const auto& sender = self->current_sender();
  return sender && sender->node() != self->node();
}

caf::error refuse_remote_event(self_ptr self, std::uint64_t wait_event,
                               const char* what, std::uint64_t id) {
  if (wait_event == 0 || !from_remote_sender(self))
    return {};
  return make_error(
      ec::invalid_argument,
      fmt::format("transfer {}: {} {} carries a wait_event from another "
                  "process; a CUDA event is meaningful only in the process "
                  "that made it",
                  self->state.cfg.name, what, id));
}

caf::result<proto::recv_report> handle_read(self_ptr self,
                                            proto::read_order& o) {
  auto& st = self->state;
  const auto& peer = o.peer.name;
  auto refuse = [&](ec code, const std::string& why) {
    return make_error(code, fmt::format("transfer {}: read {} from '{}': {}",
                                        st.cfg.name, o.transfer_id, peer, why));
  };
  if (!o.peer.transfer || peer.empty() || peer == st.cfg.name)
    return refuse(ec::invalid_argument,
                  "the order names no peer transfer actor but this one's");
  if (auto err =
          refuse_remote_event(self, o.wait_event, "read order", o.transfer_id))
    return err;
  if (auto why = why_no_read(st, o.peer); !why.empty())
    return refuse(ec::unreachable, why + "; use the push path");
  // The extents are checked against both tables, and their bytes counted,
  // where the copy engine packs the plan (launch_ipc_copy): one pass.
  auto& p = st.reads[peer]; // its death or departure drops the entry
  adopt_peer(self, p, o.peer);
  if (p.transfers.count(o.transfer_id) != 0)
    return refuse(ec::duplicate, "a read with this id is in flight");
  auto promise = self->make_response_promise<proto::recv_report>();
  auto& t = p.transfers[o.transfer_id];
  t.waiter = waiter_promise{promise};
  arm_deadline(self, milliseconds(o.timeout_ms), t.deadline);
  start_ipc_copy(st, p, {o.transfer_id, std::move(o.extents), o.wait_event},
                 true);
  ensure_progress(self);
  return promise;
}

// A read's deadline: it fails now; a kernel already launched cannot be
// recalled and may still write our destination, so it is watched on as an
// orphan and a settle for it waits until it ended.
void expire_read(self_ptr self, const std::string& peer, std::uint64_t id,
                 std::uint64_t generation) {
  auto& st = self->state;
  auto p = st.reads.find(peer);
  if (p == st.reads.end())
    return;
  auto t = p->second.transfers.find(id);
  if (t == p->second.transfers.end() || t->second.done ||
      t->second.generation != generation)
    return;
  fail(t->second, st,
       make_error(ec::timeout,
                  fmt::format("read {} from '{}' did not complete in time; "
                              "its destination is safe to reuse once settle "
                              "answers",
                              id, peer)),
       peer);
  p->second.transfers.erase(t);
  orphan_copies(st, peer, p->second, id, true);
  forget_waiting_ipc(p->second, id);
}

// Fails the reads from `peer` (it died or left) and forgets its mapping.
void drop_reads(self_ptr self, const std::string& peer, const caf::error& err) {
  auto& st = self->state;
  auto i = st.reads.find(peer);
  if (i == st.reads.end())
    return;
  for (auto& [id, t] : i->second.transfers)
    if (!t.done)
      fail(t, st, err, peer);
  orphan_copies(st, peer, i->second, std::nullopt, true);
  st.reads.erase(i);
}

bool progress_reads(self_ptr self) {
  bool progressed = false;
  for (auto& [name, p] : self->state.reads)
    if (!p.copies.empty() || !p.ipc_waiting.empty())
      progressed |= progress_ipc(self, name, p, true);
  return progressed;
}

// ---- plugin sends that wait for a CUDA event

// Posts the plugin sends whose event completed (polled, never waited for);
// a failed event fails its transfer, a transfer gone (timed out, peer
// dropped) drops its wait.
bool progress_event_waits(self_ptr self) {
  auto& st = self->state;
  bool progressed = false;
  for (std::size_t k = 0; k < st.event_waits.size();) {
    auto& w = st.event_waits[k];
    auto p = st.out.find(w.peer);
    transfer_entry* t = nullptr;
    if (p != st.out.end())
      if (auto i = p->second.transfers.find(w.id);
          i != p->second.transfers.end() && !i->second.done &&
          !i->second.failure)
        t = &i->second;
    bool ready = t != nullptr;
    if (ready) {
      try {
        if (!transport::gpu_event_done(w.event)) {
          ++k;
          continue;
        }
      } catch (const std::exception& e) {
        fail(*t, st,
             make_error(ec::cuda_error,
                        fmt::format("transfer {} to '{}': its wait_event: {}",
                                    w.id, w.peer, e.what())),
             w.peer);
        p->second.transfers.erase(w.id);
        ready = false;
      }
    }
    auto done = std::move(w);
    st.event_waits[k] = std::move(st.event_waits.back());
    st.event_waits.pop_back();
    progressed = true;
    if (ready)
      start_plugin_send(self, done.peer, p->second, done.id,
                        std::move(done.extents));
  }
  return progressed;
}

bool ipc_has_work(const transfer_state& st) {
  for (const auto& [name, p] : st.reads)
    if (!p.copies.empty() || !p.ipc_waiting.empty())
      return true;
  return !st.event_waits.empty();
}

} // namespace kvferry::transfer_detail
