// kvferry::endpoint (endpoint.hpp): the calling threads' side. Checks every
// argument here, where the error can name it, enters each operation as
// pending in the shared state and hands it to the control actor
// (endpoint_control.cpp); poll and wait read the shared state.
#include "kvferry/endpoint.hpp"

#include <atomic>
#include <exception>
#include <random>
#include <set>
#include <thread>
#include <unistd.h>

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <fmt/format.h>

#include "endpoint_state.hpp"
#include "kvferry/actors/memory_region.hpp"
#include "kvferry/actors/plan.hpp"
#include "kvferry/actors/transfer.hpp"
#include "kvferry/one_sided_plan.hpp"
#include "kvferry/runtime/directory_types.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/runtime/tls.hpp"
#include "kvferry/transport/extent_lists.hpp"
#include "kvferry/transport/plan_crew.hpp"
#include "kvferry/transport/plugin.hpp"

namespace kvferry {

using namespace engine_detail;

namespace {

// The endpoint's actor system: its scheduler threads run the control actor
// and the transfer actor (not detached: transfer_config::detached). Every
// transfer hands orders and replies between the caller's thread and these
// two actors, and each hand-over to an idle system would wake its sleeping
// thread: the hot window keeps that thread looking for 200 us after its
// last job (runtime/hot_sharing.hpp), so a caller's next call, or the
// plugin's news, finds it awake. On the 2-core dev machine that doubled a
// 64 KiB write at depth 1 and made one at depth 16 1.3-2.1x as fast, for
// the same CPU per 64 KiB write (up to 40 % more per 1 MiB write one at a
// time; docs/benchmarks.md, 2026-12-07, session 22).
// $KVFERRY_SCHED_HOT_US overrides it (0: off).
runtime::runtime_options runtime_of(const endpoint_options& options) {
  runtime::runtime_options ro;
  ro.threads = options.threads;
  ro.scheduler_hot_window = std::chrono::microseconds(200);
  return ro;
}

// Messages an actor handles before its thread turns to the next ready
// actor (CAF's default: no limit). The transfer actor's progress loop polls
// by sending itself messages: unbounded, it would hold a one-thread system
// from the control actor's orders while bytes flow.
constexpr std::size_t max_throughput = 32;

} // namespace

struct endpoint::impl {
  explicit impl(const endpoint_options& o)
      : options(o),
        cfg(std::make_unique<runtime::system_config>(runtime_of(o))) {
    cfg->set("scheduler.max-throughput", max_throughput);
  }

  endpoint_options options;
  // Owned apart from the system: a system that will not close goes on a
  // thread of its own with its config (runtime::close_actor_system).
  std::unique_ptr<runtime::system_config> cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::shared_ptr<transport::plugin> net;
  transfer_actor transfer;
  caf::actor control;
  std::shared_ptr<shared_state> shared = std::make_shared<shared_state>();
  endpoint_metadata meta;
  std::atomic<std::uint64_t> next_op{1};

  // The control actor first (its state holds the transfer actor's handle),
  // then the transfer actor, then the system: each bounded, so that a
  // destructor never hangs on CAF 0.17's teardown (runtime::stop_actor and
  // close_actor_system say why).
  ~impl() {
    if (!sys)
      return;
    const auto who = fmt::format("endpoint '{}'", meta.name);
    {
      caf::scoped_actor self{*sys};
      if (control && meta.port != 0)
        runtime::unpublish_control(*sys, control.address(), meta.port);
      runtime::stop_actor(self, control.address(), runtime::actor_stop_limit,
                          who + ": control actor");
      runtime::stop_actor(self, transfer.address(), runtime::actor_stop_limit,
                          who + ": transfer actor");
    }
    control = nullptr;
    transfer = nullptr;
    runtime::close_actor_system(std::move(sys), std::move(cfg),
                                runtime::system_close_limit, who);
  }

  caf::timespan limit() const { return options.connect_timeout; }

  // One request from this (non-actor) thread, answered within limit().
  template<class Reply, class Handle, class... Ts>
  result<Reply> ask(const Handle& whom, Ts&&... xs) {
    caf::scoped_actor self{*sys};
    std::optional<result<Reply>> out;
    self->request(whom, limit(), std::forward<Ts>(xs)...)
        .receive([&](Reply& r) { out.emplace(std::move(r)); },
                 [&](caf::error& err) { out.emplace(to_status(err)); });
    return std::move(*out);
  }

  // The connection's peer, or why it cannot be used.
  result<conn_entry> peer_of(conn_id conn) {
    std::lock_guard<std::mutex> lock(shared->mu);
    auto i = shared->conns.find(conn);
    if (i == shared->conns.end())
      return status{
          ec::not_found,
          fmt::format("endpoint '{}': no connection {}", meta.name, conn)};
    if (!i->second.down.ok())
      return i->second.down;
    return i->second;
  }

  // Large one-sided calls cut their pass into parts on this crew
  // (one_sided_plan.hpp), one calling thread at a time.
  std::mutex crew_mu;
  transport::plan_crew crew{
      transport::plan_threads(std::thread::hardware_concurrency()) - 1};
  std::vector<one_sided_part> crew_parts{crew.size()};

  // Where local slice `s` (number `index` of the call) lies in the region
  // table, or why it does not.
  result<std::uint64_t> local_offset(const slice& s, std::size_t index) {
    std::lock_guard<std::mutex> lock(shared->mu);
    return offset_in(shared->region_sizes, s, index);
  }

  // The local region table now, copied into `into` (a vector of many KV
  // blocks reads it once, not once per block). Callers pass their thread's
  // copy (this_thread_table): assigned over, it allocates nothing once it
  // has room, where a fresh copy per call was an allocation.
  void copy_region_sizes(std::vector<std::uint64_t>& into) {
    std::lock_guard<std::mutex> lock(shared->mu);
    into = shared->region_sizes;
  }
  static std::vector<std::uint64_t>& this_thread_table() {
    thread_local std::vector<std::uint64_t> table;
    return table;
  }

  // Where local slice `s` lies in a copy of the region table.
  static result<std::uint64_t>
  offset_in(const std::vector<std::uint64_t>& sizes, const slice& s,
            std::size_t index) {
    if (auto why = slice_misfit(sizes, s, index); !why.ok())
      return why;
    return table_offset(s.region, s.offset);
  }

  // Enters the operation as pending and hands it to the control actor.
  xfer_id start(proto::endpoint_op op, conn_id conn,
                std::vector<extent> extents, std::uint64_t bytes,
                std::vector<std::uint64_t> dst_sizes = {},
                std::vector<std::uint64_t> src_sizes = {}) {
    auto id = next_op.fetch_add(1);
    {
      std::lock_guard<std::mutex> lock(shared->mu);
      shared->op_nodes.emplace(shared->ops, id);
    }
    proto::endpoint_order o;
    o.op = static_cast<std::uint8_t>(op);
    o.id = id;
    o.conn = conn;
    o.extents = std::move(extents);
    o.dst_sizes = std::move(dst_sizes);
    o.src_sizes = std::move(src_sizes);
    o.bytes = bytes;
    caf::anon_send(control, proto::ep_order_atom::value, std::move(o));
    return id;
  }

  // After reg/dereg: the control actor and, through it, every peer learn
  // the table (a peer maps new regions over CUDA IPC from it). Sent before
  // this thread's later orders and notifications, so those follow it.
  status announce_table() {
    auto ep = ask<proto::endpoint>(transfer, proto::endpoint_atom::value);
    if (!ep.ok())
      return ep.error();
    caf::anon_send(control, proto::ep_hello_atom::value, std::move(*ep));
    return {};
  }

  result<xfer_id> one_sided(proto::endpoint_op op, conn_id conn,
                            items<slice> local, items<descriptor> remote);
  result<xfer_id> two_sided(proto::endpoint_op op, conn_id conn,
                            items<slice> local);
};

namespace {

std::string default_name() {
  static std::atomic<unsigned> n{0};
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return fmt::format("ep-{}-{}-{}", host, ::getpid(), n++);
}

std::uint64_t random_instance() {
  std::random_device rd;
  std::uint64_t x = (std::uint64_t{rd()} << 32) ^ rd();
  return x == 0 ? 1 : x;
}

status invalid(std::string why) {
  return status{ec::invalid_argument, std::move(why)};
}

} // namespace

// ---- life

endpoint::endpoint(std::unique_ptr<impl> p) : impl_(std::move(p)) {
}
endpoint::endpoint(endpoint&&) noexcept = default;
endpoint& endpoint::operator=(endpoint&&) noexcept = default;
endpoint::~endpoint() = default;

result<endpoint> endpoint::create(const endpoint_options& options) {
  auto p = std::make_unique<impl>(options);
  auto& m = p->meta;
  m.name = options.name.empty() ? default_name() : options.name;
  m.instance = random_instance();
  m.address = options.address;
  m.gpu = options.gpu;
  m.host_id = local_host_id();
  if (options.transfer_timeout.count() <= 0 ||
      options.transfer_timeout.count() > 3600 * 1000)
    return invalid(fmt::format("endpoint '{}': transfer_timeout {} ms must "
                               "lie in (0, 1 h]",
                               m.name, options.transfer_timeout.count()));
  try {
    p->net = transport::plugin::load(options.plugin);
  } catch (const std::exception& e) {
    return status{ec::plugin_error,
                  fmt::format("endpoint '{}': {}", m.name, e.what())};
  }
  m.plugin = p->net->name();
  if (!options.tls_dir.empty()) {
    runtime::tls_options tls;
    tls.dir = options.tls_dir;
    const auto& who = options.tls_name.empty() ? m.name : options.tls_name;
    if (auto err = p->cfg->secure(tls, who)) {
      auto why = to_status(err);
      return status{why.code(), fmt::format("endpoint '{}': TLS: {}", m.name,
                                            why.reason())};
    }
  }
  p->sys = std::make_unique<caf::actor_system>(*p->cfg);
  transfer_config tc;
  tc.name = m.name;
  tc.net = p->net;
  // Region 0 of the table is a placeholder; reg() appends the caller's. On
  // a GPU endpoint it is GPU memory of that device: a table of GPU memory
  // only is what CUDA IPC takes (transfer_ipc.cpp, why_not_ipc), and
  // region 0's device is where the copy kernels run.
  try {
    tc.region =
        options.gpu >= 0
            ? memory_region::allocate_cuda(options.gpu, 4096,
                                           m.name + " placeholder")
            : memory_region::allocate_host(4096, m.name + " placeholder");
  } catch (const std::exception& e) {
    return status{ec::cuda_error, fmt::format("endpoint '{}' on GPU {}: {}",
                                              m.name, options.gpu, e.what())};
  }
  tc.host_id = m.host_id;
  tc.detached = false; // see transfer_config::detached
  tc.open_timeout_ms =
      static_cast<std::uint32_t>(options.connect_timeout.count());
  p->transfer = spawn_transfer(*p->sys, std::move(tc));
  auto self_ep =
      p->ask<proto::endpoint>(p->transfer, proto::endpoint_atom::value);
  if (!self_ep.ok())
    return self_ep.error();
  p->shared->region_sizes = {self_ep->region_bytes};
  control_config cc;
  cc.name = m.name;
  cc.instance = m.instance;
  cc.transfer = p->transfer;
  cc.self_ep = *self_ep;
  cc.timeout_ms = static_cast<std::uint32_t>(options.transfer_timeout.count());
  cc.shared = p->shared;
  p->control = spawn_control(*p->sys, std::move(cc));
  auto port = runtime::publish_control(p->control, options.port, m.address);
  if (!port)
    return status{ec::unreachable,
                  fmt::format("endpoint '{}': cannot listen on {}:{}: {}",
                              m.name, m.address, options.port,
                              render(port.error()))};
  m.port = *port;
  return endpoint{std::move(p)};
}

std::vector<std::uint8_t> endpoint::metadata() const {
  return impl_->meta.to_bytes();
}

const endpoint_metadata& endpoint::info() const {
  return impl_->meta;
}

// ---- connections

result<conn_id> endpoint::connect(items<std::uint8_t> metadata) {
  auto& p = *impl_;
  auto peer = endpoint_metadata::parse(metadata.begin(), metadata.size());
  if (!peer.ok())
    return peer.error();
  auto where =
      fmt::format("'{}' at {}:{}", peer->name, peer->address, peer->port);
  if (peer->plugin != p.meta.plugin)
    return status{ec::mismatch,
                  fmt::format("connect to {}: it moves bytes with plugin "
                              "'{}', this endpoint with '{}'",
                              where, peer->plugin, p.meta.plugin)};
  if (peer->name == p.meta.name)
    return invalid(fmt::format("connect to {}: that is this endpoint's own "
                               "name",
                               where));
  caf::scoped_actor self{*p.sys};
  caf::actor other;
  caf::error err;
  self->request(runtime::control_middleman(*p.sys), p.limit(),
                caf::connect_atom::value, peer->address, peer->port)
      .receive(
          [&](caf::node_id&, caf::strong_actor_ptr& ptr,
              std::set<std::string>&) {
            other = caf::actor_cast<caf::actor>(std::move(ptr));
          },
          [&](caf::error& e) { err = std::move(e); });
  if (!other)
    return status{ec::unreachable,
                  fmt::format("connect to {}: {}", where,
                              err ? render(err) : "no actor published there")};
  auto conn = p.ask<conn_id>(p.control, proto::ep_connect_atom::value, other);
  if (!conn.ok())
    return status{conn.error().code(), fmt::format("connect to {}: {}", where,
                                                   conn.error().reason())};
  return conn;
}

result<conn_id> endpoint::accept(std::chrono::milliseconds timeout) {
  auto& s = *impl_->shared;
  std::unique_lock<std::mutex> lock(s.mu);
  if (!s.changed.wait_for(lock, timeout, [&] { return !s.accepted.empty(); }))
    return status{ec::timeout,
                  fmt::format("endpoint '{}': no peer connected within {} ms",
                              impl_->meta.name, timeout.count())};
  auto conn = s.accepted.front();
  s.accepted.pop_front();
  return conn;
}

// ---- memory

result<region_id> endpoint::reg(void* ptr, std::size_t size) {
  return reg(ptr, size, impl_->options.gpu);
}

result<region_id> endpoint::reg(void* ptr, std::size_t size, int gpu) {
  auto& p = *impl_;
  if (ptr == nullptr || size == 0)
    return invalid(fmt::format("reg: {} bytes at {} (need a non-null pointer "
                               "and a positive size)",
                               size, ptr));
  auto index = p.ask<std::uint64_t>(
      p.transfer, proto::region_add_atom::value,
      static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(ptr)),
      static_cast<std::uint64_t>(size), static_cast<std::int32_t>(gpu));
  if (!index.ok())
    return index.error();
  {
    std::lock_guard<std::mutex> lock(p.shared->mu);
    auto& sizes = p.shared->region_sizes;
    if (sizes.size() <= *index)
      sizes.resize(*index + 1, 0);
    sizes[*index] = size;
  }
  if (auto told = p.announce_table(); !told.ok())
    return told;
  return *index;
}

status endpoint::dereg(region_id region) {
  auto& p = *impl_;
  {
    std::lock_guard<std::mutex> lock(p.shared->mu);
    auto& sizes = p.shared->region_sizes;
    if (region == 0 || region >= sizes.size() || sizes[region] == 0)
      return status{ec::not_found,
                    fmt::format("dereg: no registered region {}", region)};
    sizes[region] = 0; // refused here from now on
  }
  auto done = p.ask<caf::ok_atom>(p.transfer, proto::region_remove_atom::value,
                                  static_cast<std::uint64_t>(region));
  return done.ok() ? p.announce_table() : done.error();
}

result<descriptor> endpoint::advertise(region_id region, std::uint64_t offset,
                                       std::uint64_t size) const {
  auto where = impl_->local_offset(slice{region, offset, size}, 0);
  if (!where.ok())
    return status{where.error().code(), "advertise: " + where.error().reason()};
  descriptor d;
  d.owner = impl_->meta.instance;
  d.region = region;
  {
    std::lock_guard<std::mutex> lock(impl_->shared->mu);
    d.region_bytes = impl_->shared->region_sizes[region];
  }
  d.offset = offset;
  d.size = size;
  return d;
}

// ---- transfers

result<xfer_id> endpoint::impl::one_sided(proto::endpoint_op op, conn_id conn,
                                          items<slice> local,
                                          items<descriptor> remote) {
  const char* what = op == proto::endpoint_op::write ? "write" : "read";
  auto peer = peer_of(conn);
  if (!peer.ok())
    return peer.error();
  if (local.size() != remote.size() || local.empty())
    return invalid(fmt::format("{}: {} local slices and {} descriptors (need "
                               "as many of each, at least one)",
                               what, local.size(), remote.size()));
  one_sided_call call;
  call.write = op == proto::endpoint_op::write;
  call.peer_instance = peer->instance;
  call.conn = conn;
  call.peer_name = peer->peer;
  call.local = std::move(this_thread_table()); // given back below
  copy_region_sizes(call.local);
  // A recycled list: a fresh one of tens of thousands of extents would be
  // page-faulted in on every call (extent_lists.hpp).
  one_sided_plan plan;
  plan.extents = transport::extent_lists::take_sized(local.size());
  status checked;
  if (local.size() >= min_crew_pairs) {
    std::lock_guard<std::mutex> lock(crew_mu);
    checked =
        plan_one_sided(call, local, remote, plan, &crew, crew_parts.data());
  } else {
    // A small call: no crew, nothing shared; the thread's own scratch,
    // reused (plan_part empties it).
    thread_local one_sided_part part;
    checked = plan_one_sided(call, local, remote, plan, nullptr, &part);
  }
  // A read's order names the local table too (its dst_sizes): a copy of
  // its own, so that the thread keeps its table.
  std::vector<std::uint64_t> read_table;
  if (!call.write && checked.ok())
    read_table = call.local;
  this_thread_table() = std::move(call.local);
  if (!checked.ok()) {
    transport::extent_lists::give(std::move(plan.extents));
    return checked;
  }
  if (call.write)
    return start(op, conn, std::move(plan.extents), plan.bytes,
                 std::move(plan.remote_sizes));
  return start(op, conn, std::move(plan.extents), plan.bytes,
               std::move(read_table), std::move(plan.remote_sizes));
}

result<xfer_id> endpoint::impl::two_sided(proto::endpoint_op op, conn_id conn,
                                          items<slice> local) {
  const char* what = op == proto::endpoint_op::send ? "send" : "recv";
  auto peer = peer_of(conn);
  if (!peer.ok())
    return peer.error();
  if (local.empty())
    return invalid(fmt::format("{}: no local slices", what));
  std::vector<extent> ranges;
  ranges.reserve(local.size());
  auto& sizes = this_thread_table();
  copy_region_sizes(sizes);
  std::uint64_t bytes = 0;
  for (std::size_t i = 0; i < local.size(); ++i) {
    auto here = offset_in(sizes, local[i], i);
    if (!here.ok())
      return status{here.error().code(),
                    fmt::format("{}: {}", what, here.error().reason())};
    if (op == proto::endpoint_op::send)
      ranges.push_back({*here, 0, local[i].size});
    else
      ranges.push_back({0, *here, local[i].size});
    bytes += local[i].size;
  }
  return start(op, conn, std::move(ranges), bytes);
}

result<xfer_id> endpoint::write(conn_id conn, items<slice> local,
                                items<descriptor> remote) {
  return impl_->one_sided(proto::endpoint_op::write, conn, local, remote);
}

result<xfer_id> endpoint::read(conn_id conn, items<slice> local,
                               items<descriptor> remote) {
  return impl_->one_sided(proto::endpoint_op::read, conn, local, remote);
}

result<xfer_id> endpoint::send(conn_id conn, items<slice> local) {
  return impl_->two_sided(proto::endpoint_op::send, conn, local);
}

result<xfer_id> endpoint::recv(conn_id conn, items<slice> local) {
  return impl_->two_sided(proto::endpoint_op::recv, conn, local);
}

result<std::optional<std::uint64_t>> endpoint::poll(xfer_id id) {
  auto& s = *impl_->shared;
  std::lock_guard<std::mutex> lock(s.mu);
  auto i = s.ops.find(id);
  if (i == s.ops.end())
    return status{ec::not_found, fmt::format("no transfer {} (finished "
                                             "transfers are forgotten once "
                                             "reported)",
                                             id)};
  if (!i->second.error.ok()) {
    auto why = i->second.error;
    s.op_nodes.erase(s.ops, i);
    return why;
  }
  if (!i->second.done)
    return std::optional<std::uint64_t>{};
  auto bytes = i->second.bytes;
  s.op_nodes.erase(s.ops, i);
  return std::optional<std::uint64_t>{bytes};
}

result<std::uint64_t> endpoint::wait(xfer_id id,
                                     std::chrono::milliseconds timeout) {
  auto& s = *impl_->shared;
  {
    std::unique_lock<std::mutex> lock(s.mu);
    auto settled = [&] {
      auto i = s.ops.find(id);
      return i == s.ops.end() || i->second.done || !i->second.error.ok();
    };
    if (!s.changed.wait_for(lock, timeout, settled))
      return status{ec::timeout,
                    fmt::format("transfer {} still in flight after {} ms "
                                "(wait again, or poll)",
                                id, timeout.count())};
  }
  auto r = poll(id);
  if (!r.ok())
    return r.error();
  return **r;
}

result<std::optional<transfer_path>> endpoint::path(xfer_id id) const {
  auto& s = *impl_->shared;
  std::lock_guard<std::mutex> lock(s.mu);
  auto i = s.ops.find(id);
  if (i == s.ops.end())
    return status{ec::not_found,
                  fmt::format("no transfer {} (finished transfers are "
                              "forgotten once reported)",
                              id)};
  return i->second.path;
}

endpoint_stats endpoint::stats() const {
  auto& s = *impl_->shared;
  std::lock_guard<std::mutex> lock(s.mu);
  return s.stats;
}

const char* to_string(transfer_path path) {
  return path == transfer_path::cuda_ipc ? "cuda_ipc" : "plugin";
}

// ---- notifications

status endpoint::notify(conn_id conn, items<std::uint8_t> bytes) {
  auto& p = *impl_;
  auto peer = p.peer_of(conn);
  if (!peer.ok())
    return peer.error();
  if (bytes.size() > max_notification_bytes)
    return invalid(fmt::format("notify: {} bytes, at most {}", bytes.size(),
                               max_notification_bytes));
  caf::anon_send(p.control, proto::ep_notify_atom::value, conn,
                 std::vector<char>(bytes.begin(), bytes.end()));
  return {};
}

std::vector<notification> endpoint::take_notifications() {
  auto& s = *impl_->shared;
  std::lock_guard<std::mutex> lock(s.mu);
  std::vector<notification> out;
  out.swap(s.notes);
  return out;
}

} // namespace kvferry
