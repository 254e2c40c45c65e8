// kvferry::node (node.hpp): a thin facade over the node's actors. It owns
// an actor system, a transfer actor over the caller's cache and the node
// actor (actors.hpp, node_actor), and talks to them as any CAF caller would:
// a "bridge" actor sends each request and finishes its completion with the
// reply; blocking calls (connect, layer_ready, notify) use a scoped actor
// with a deadline.
#include "kvferry/node.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kvferry/actors/memory_region.hpp"
#include "kvferry/actors/node_actor.hpp"
#include "kvferry/actors/transfer.hpp"
#include "kvferry/actors/worker.hpp"
#include "kvferry/node_actors.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/runtime/tls.hpp"
#include "node_directory.hpp"

namespace kvferry {

using clock_type = std::chrono::steady_clock;
using done_fn = std::function<void(const result<request_stats>&)>;
using note_fn =
    std::function<void(const std::string& from, const std::string& payload)>;

namespace detail {

/// What a completion handle shares with the node that finishes it.
struct completion_state {
  explicit completion_state(std::uint64_t request) : id(request) {}
  const std::uint64_t id;
  const clock_type::time_point start = clock_type::now();
  std::mutex mtx;
  std::condition_variable cv;
  std::optional<result<request_stats>> outcome;
  done_fn callback;

  /// Records the outcome (the first one wins) and runs the callback.
  void finish(result<request_stats> r) {
    done_fn f;
    {
      std::lock_guard<std::mutex> guard{mtx};
      if (outcome)
        return;
      outcome.emplace(std::move(r));
      f = std::move(callback);
    }
    cv.notify_all();
    if (f)
      f(*outcome); // outcome is never written again
  }
};

/// The requests in flight (by ticket) and the notification callback: what
/// the bridge actor and the caller's threads share.
struct node_shared {
  std::mutex mtx;
  std::uint64_t next_ticket = 0;
  std::unordered_map<std::uint64_t, std::shared_ptr<completion_state>> open;
  note_fn on_note;
  bool listening = false;

  std::uint64_t add(std::shared_ptr<completion_state> state) {
    std::lock_guard<std::mutex> guard{mtx};
    open.emplace(++next_ticket, std::move(state));
    return next_ticket;
  }
  std::shared_ptr<completion_state> take(std::uint64_t ticket) {
    std::lock_guard<std::mutex> guard{mtx};
    auto i = open.find(ticket);
    if (i == open.end())
      return nullptr;
    auto state = std::move(i->second);
    open.erase(i);
    return state;
  }
  std::vector<std::shared_ptr<completion_state>> take_all() {
    std::lock_guard<std::mutex> guard{mtx};
    std::vector<std::shared_ptr<completion_state>> all;
    for (auto& [ticket, state] : open)
      all.push_back(std::move(state));
    open.clear();
    return all;
  }
};

/// The request's stats from the node actor's report.
request_stats stats_of(const completion_state& state,
                       const proto::node_report& rep) {
  request_stats s;
  s.id = rep.id;
  s.bytes = rep.bytes;
  s.total = clock_type::now() - state.start;
  if (rep.data_end_ns > rep.data_start_ns && rep.data_start_ns > 0)
    s.data = std::chrono::nanoseconds{rep.data_end_ns - rep.data_start_ns};
  s.data = std::min(s.data, s.total);
  s.control = s.total - s.data;
  s.ipc = rep.ipc;
  return s;
}

// The bridge: sends each request (atom, request, ticket) to the node actor
// and finishes the ticket's completion with the reply; delivers
// notifications to the caller's callback. Callbacks run here, one at a time.
// Pulls go where node_handles::pulls_via_transfer says.
caf::behavior bridge_impl(caf::event_based_actor* self, node_handles h,
                          std::shared_ptr<node_shared> shared) {
  auto forward = [self, shared](const auto& to, auto atom,
                                proto::node_request& req,
                                std::uint64_t ticket) {
    self->request(to, caf::infinite, atom, std::move(req))
        .then(
            [shared, ticket](const proto::node_report& rep) {
              if (auto state = shared->take(ticket))
                state->finish(stats_of(*state, rep));
            },
            [shared, ticket](const caf::error& err) {
              if (auto state = shared->take(ticket))
                state->finish(to_status(err));
            });
  };
  auto node = h.node;
  return {
      [forward, node](proto::node_send_atom a, proto::node_request& r,
                      std::uint64_t t) { forward(node, a, r, t); },
      [forward, node](proto::node_advertise_atom a, proto::node_request& r,
                      std::uint64_t t) { forward(node, a, r, t); },
      [forward, node](proto::node_receive_atom a, proto::node_request& r,
                      std::uint64_t t) { forward(node, a, r, t); },
      [forward, h](proto::node_pull_atom a, proto::node_request& r,
                   std::uint64_t t) {
        if (h.pulls_via_transfer)
          forward(h.transfer, a, r, t);
        else
          forward(h.node, a, r, t);
      },
      // Through here, so that they reach the node actor after the requests
      // the caller made before (advertise, then layer_ready).
      [self, node](proto::node_layer_atom a, std::uint64_t id,
                   std::uint32_t layer, std::uint64_t event) {
        return self->delegate(node, a, id, layer, event);
      },
      [self, node](proto::node_notify_atom a, std::string& to,
                   std::string& payload) {
        return self->delegate(node, a, std::move(to), std::move(payload));
      },
      [shared](proto::node_note_atom, const std::string& from,
               const std::string& payload) {
        note_fn f;
        {
          std::lock_guard<std::mutex> guard{shared->mtx};
          f = shared->on_note;
        }
        if (f)
          f(from, payload);
      },
  };
}

class node_impl {
public:
  std::string name;
  std::chrono::milliseconds timeout{10000};
  std::uint16_t port = 0;
  std::shared_ptr<node_shared> shared = std::make_shared<node_shared>();
  // Declared in the order they are built; destroyed in reverse.
  std::unique_ptr<runtime::system_config> cfg;
  std::unique_ptr<caf::actor_system> sys;
  transfer_actor transfer;
  node_actor actor;
  membership_actor keeper; // directory mode only
  caf::actor bridge;
  std::atomic<bool> stopped{false};

  ~node_impl() {
    shutdown();
    // Handles first: the actor system waits for its actors as it goes.
    bridge = nullptr;
    keeper = nullptr;
    actor = nullptr;
    transfer = nullptr;
    close_system();
  }

  void close_system();

  void shutdown();
  void stop(caf::scoped_actor& self, const caf::actor_addr& who,
            const char* what);
};

// Stops the bridge (open requests fail, naming this node), the node actor
// and the transfer actor, each waited for (bounded): once this returns the
// caller's cache is not touched again.
void node_impl::shutdown() {
  if (stopped || !sys)
    return;
  stopped = true;
  caf::scoped_actor self{*sys};
  // The bridge first: what the caller is still waiting for fails here,
  // saying so, not with whatever a request to a stopped actor says.
  if (bridge)
    stop(self, bridge.address(), "bridge");
  for (auto& state : shared->take_all())
    state->finish(status{ec::peer_down, "node '" + name + "' stopped"});
  // Leave the directory before the actors go, so that the other nodes hear
  // `left` (bounded by the keeper's leave timeout); the keeper then ends
  // with the node actor.
  if (keeper)
    self->request(keeper, std::chrono::seconds(1), leave_atom::value)
        .receive([](caf::ok_atom) {}, [](const caf::error&) {});
  if (actor && port != 0)
    runtime::unpublish_control(*sys, actor.address(), port);
  stop(self, actor.address(), "node actor");
  stop(self, transfer.address(), "transfer actor");
}

// Destroys the actor system, bounded (runtime::close_actor_system says why).
void node_impl::close_system() {
  runtime::close_actor_system(std::move(sys), std::move(cfg),
                              runtime::system_close_limit, "node " + name);
}

// Stops one of the node's actors, bounded (runtime::stop_actor).
void node_impl::stop(caf::scoped_actor& self, const caf::actor_addr& who,
                     const char* what) {
  runtime::stop_actor(self, who, runtime::actor_stop_limit,
                      fmt::format("node {}: {}", name, what));
}

} // namespace detail

namespace {

status invalid(const std::string& what) {
  return {ec::invalid_argument, what};
}

completion failed(std::uint64_t id, status why) {
  auto state = std::make_shared<detail::completion_state>(id);
  state->finish(std::move(why));
  return completion{std::move(state)};
}

// The caller's cache as a region table, one region per layout region.
result<std::vector<std::shared_ptr<memory_region>>>
wrap_cache(const node_options& opts) {
  const auto& c = opts.cache;
  if (c.layout.layers() == 0)
    return invalid("node " + opts.name + ": the cache has no layout");
  if (c.bases.size() != c.layout.region_count())
    return invalid(fmt::format("node {}: layout {} has {} regions, but {} "
                               "bases were given",
                               opts.name, c.layout.name(),
                               c.layout.region_count(), c.bases.size()));
  std::vector<std::shared_ptr<memory_region>> regions;
  try {
    for (std::size_t i = 0; i < c.bases.size(); ++i)
      regions.push_back(memory_region::wrap(
          c.bases[i], c.layout.region_bytes(),
          c.gpu < 0 ? memory_kind::host : memory_kind::cuda, c.gpu,
          fmt::format("{}/kv region {}", opts.name, i)));
  } catch (const std::exception& e) {
    return invalid(fmt::format("node {}: {}", opts.name, e.what()));
  }
  return regions;
}

worker_options worker_options_of(const node_options& opts) {
  worker_options w;
  w.name = opts.name;
  w.gpu = opts.cache.gpu;
  w.plugin = opts.plugin;
  w.devices = opts.devices;
  w.use_ipc = opts.use_ipc;
  w.bind = opts.bind;
  w.timeout_ms = static_cast<std::uint32_t>(opts.timeout.count());
  return w;
}

// A request of the caller's thread to an actor, waited for at most `limit`.
template<class Result, class Handle, class... Ts>
result<Result> ask(caf::actor_system& sys, const Handle& whom,
                   std::chrono::milliseconds limit, Ts&&... xs) {
  std::optional<result<Result>> out;
  caf::scoped_actor self{sys};
  self->request(whom, limit, std::forward<Ts>(xs)...)
      .receive([&](Result& r) { out.emplace(std::move(r)); },
               [&](const caf::error& err) { out.emplace(to_status(err)); });
  return std::move(*out);
}

} // namespace

// ---- completion
// --------------------------------------------------------------

completion::completion()
    : state_(std::make_shared<detail::completion_state>(0)) {
  state_->finish(status{ec::invalid_argument, "a completion of no request"});
}

completion::completion(std::shared_ptr<detail::completion_state> state)
    : state_(std::move(state)) {
}

std::uint64_t completion::id() const {
  return state_->id;
}

bool completion::ready() const {
  std::lock_guard<std::mutex> guard{state_->mtx};
  return state_->outcome.has_value();
}

result<request_stats> completion::wait(std::chrono::milliseconds limit) const {
  std::unique_lock<std::mutex> lock{state_->mtx};
  if (!state_->cv.wait_for(lock, limit,
                           [this] { return state_->outcome.has_value(); }))
    return status{ec::timeout, "request " + std::to_string(state_->id) +
                                   " still running after " +
                                   std::to_string(limit.count()) + " ms"};
  return *state_->outcome;
}

void completion::on_done(done_fn f) {
  std::unique_lock<std::mutex> lock{state_->mtx};
  if (!state_->outcome) {
    state_->callback = std::move(f);
    return;
  }
  lock.unlock();
  f(*state_->outcome);
}

// ---- node
// --------------------------------------------------------------------

caf::expected<node_handles> spawn_node(caf::actor_system& sys,
                                       const node_options& opts) {
  if (opts.name.empty())
    return make_error(ec::invalid_argument, "a node needs a name");
  auto regions = wrap_cache(opts);
  if (!regions.ok())
    return make_error(regions.error().code(), regions.error().reason());
  auto tc = worker_transfer_config(worker_options_of(opts), *regions);
  if (!tc)
    return std::move(tc.error());
  node_handles h;
  h.transfer = spawn_transfer(sys, std::move(*tc));
  caf::error failure;
  node_actor_config nc;
  caf::scoped_actor self{sys};
  self->request(h.transfer, opts.timeout, proto::endpoint_atom::value)
      .receive([&](proto::endpoint& ep) { nc.self = std::move(ep); },
               [&](caf::error& err) { failure = std::move(err); });
  if (failure) {
    self->send_exit(h.transfer, caf::exit_reason::user_shutdown);
    return failure;
  }
  h.pulls_via_transfer = pulls_via_transfer(nc.self);
  nc.name = opts.name;
  nc.transfer = h.transfer;
  nc.layout = opts.cache.layout;
  nc.timeout_ms = static_cast<std::uint32_t>(opts.timeout.count());
  h.node = spawn_node_actor(sys, std::move(nc));
  auto port = runtime::publish_control(h.node, opts.port, opts.bind);
  if (!port) {
    self->send_exit(h.node, caf::exit_reason::user_shutdown);
    self->send_exit(h.transfer, caf::exit_reason::user_shutdown);
    return make_error(ec::unreachable,
                      fmt::format("node {}: cannot listen on {}:{}: {}",
                                  opts.name, opts.bind, opts.port,
                                  render(port.error())));
  }
  h.port = *port;
  if (!opts.directory.empty()) {
    auto keeper = detail::join_directory(sys, opts, h);
    if (!keeper) {
      self->send_exit(h.node, caf::exit_reason::user_shutdown);
      self->send_exit(h.transfer, caf::exit_reason::user_shutdown);
      return std::move(keeper.error());
    }
    h.keeper = std::move(*keeper);
  }
  return h;
}

result<node> node::start(node_options opts) {
  auto impl = std::make_unique<detail::node_impl>();
  impl->name = opts.name;
  impl->timeout = opts.timeout;
  runtime::runtime_options ro;
  ro.threads = 2; // bookkeeping only: the transfer actor has its own thread
  impl->cfg = std::make_unique<runtime::system_config>(ro);
  impl->sys = std::make_unique<caf::actor_system>(*impl->cfg);
  auto h = spawn_node(*impl->sys, opts);
  if (!h)
    return to_status(h.error());
  impl->bridge = impl->sys->spawn(detail::bridge_impl, *h, impl->shared);
  impl->transfer = std::move(h->transfer);
  impl->actor = std::move(h->node);
  impl->port = h->port;
  impl->keeper = std::move(h->keeper);
  return node{std::move(impl)};
}

node::node(std::unique_ptr<detail::node_impl> impl) : impl_(std::move(impl)) {
}
node::node(node&&) noexcept = default;
node& node::operator=(node&&) noexcept = default;
node::~node() = default; // node_impl's destructor stops

void node::stop() {
  if (impl_)
    impl_->shutdown();
}

const std::string& node::name() const {
  return impl_->name;
}

std::uint16_t node::port() const {
  return impl_->port;
}

result<std::string> node::connect(const std::string& host, std::uint16_t port) {
  auto& sys = *impl_->sys;
  caf::strong_actor_ptr peer;
  status why;
  caf::scoped_actor self{sys};
  self->request(runtime::control_middleman(sys), impl_->timeout,
                caf::connect_atom::value, host, port)
      .receive([&](const caf::node_id&, caf::strong_actor_ptr& ptr,
                   const std::set<std::string>&) { peer = std::move(ptr); },
               [&](const caf::error& err) { why = to_status(err); });
  if (!peer)
    return status{
        ec::unreachable,
        fmt::format("node {}: cannot reach a node at {}:{}: {}", impl_->name,
                    host, port,
                    why.ok() ? "nothing published there" : why.message())};
  return ask<std::string>(sys, impl_->actor, impl_->timeout,
                          proto::node_connect_atom::value,
                          caf::actor_cast<caf::actor>(peer));
}

std::vector<std::string> node::peers() const {
  auto names = ask<std::vector<std::string>>(
      *impl_->sys, impl_->actor, impl_->timeout, proto::node_peers_atom::value);
  return names.ok() ? std::move(*names) : std::vector<std::string>{};
}

namespace {

// Hands request `req` to the bridge under a new ticket.
template<class Atom>
completion submit(detail::node_impl& impl, Atom atom, proto::node_request req) {
  auto state = std::make_shared<detail::completion_state>(req.id);
  if (impl.stopped) {
    state->finish(status{ec::peer_down, "node '" + impl.name + "' stopped"});
    return completion{std::move(state)};
  }
  auto ticket = impl.shared->add(state);
  caf::anon_send(impl.bridge, atom, std::move(req), ticket);
  return completion{std::move(state)};
}

} // namespace

completion node::send(std::uint64_t id, const std::string& to,
                      const std::vector<std::uint64_t>& src_blocks,
                      const std::vector<std::uint64_t>& dst_blocks) {
  if (src_blocks.size() != dst_blocks.size())
    return failed(
        id, invalid(fmt::format("node {}: request {}: {} source blocks but {} "
                                "destination blocks",
                                impl_->name, id, src_blocks.size(),
                                dst_blocks.size())));
  return submit(*impl_, proto::node_send_atom::value,
                {id, to, src_blocks, dst_blocks, false});
}

completion node::advertise(std::uint64_t id, const std::string& to,
                           const std::vector<std::uint64_t>& src_blocks,
                           bool layerwise) {
  return submit(*impl_, proto::node_advertise_atom::value,
                {id, to, src_blocks, {}, layerwise});
}

status node::layer_ready(std::uint64_t id, std::uint32_t layer,
                         void* cuda_event) {
  // The layer's send order carries the event: the copy waits for it (on the
  // GPU over CUDA IPC; over a plugin the transfer actor polls it).
  auto event = reinterpret_cast<std::uintptr_t>(cuda_event);
  auto ok = ask<caf::ok_atom>(*impl_->sys, impl_->bridge, impl_->timeout,
                              proto::node_layer_atom::value, id, layer,
                              std::uint64_t{event});
  return ok.ok() ? status{} : ok.error();
}

completion node::receive(std::uint64_t id, const std::string& from,
                         const std::vector<std::uint64_t>& dst_blocks) {
  return submit(*impl_, proto::node_receive_atom::value,
                {id, from, dst_blocks, {}, false});
}

completion node::pull(std::uint64_t id, const std::string& from,
                      const std::vector<std::uint64_t>& dst_blocks) {
  return submit(*impl_, proto::node_pull_atom::value,
                {id, from, dst_blocks, {}, false});
}

status node::notify(const std::string& to, std::string payload) {
  constexpr std::size_t max_payload = 64 << 10;
  if (payload.size() > max_payload)
    return invalid(fmt::format("node {}: a notification of {} bytes for '{}' "
                               "(at most {})",
                               impl_->name, payload.size(), to, max_payload));
  auto ok =
      ask<caf::ok_atom>(*impl_->sys, impl_->bridge, impl_->timeout,
                        proto::node_notify_atom::value, to, std::move(payload));
  return ok.ok() ? status{} : ok.error();
}

void node::on_notification(note_fn f) {
  bool first = false;
  {
    std::lock_guard<std::mutex> guard{impl_->shared->mtx};
    impl_->shared->on_note = std::move(f);
    first = !std::exchange(impl_->shared->listening, true);
  }
  if (first)
    caf::anon_send(impl_->actor, proto::node_listen_atom::value, impl_->bridge);
}

} // namespace kvferry
