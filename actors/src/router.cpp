// The router (router.hpp): request planning, in-flight tracking, per-request
// failure naming, deadlines.
#include "kvferry/actors/router.hpp"

#include <algorithm>
#include <tuple>

#include <caf/all.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "router_state.hpp"

namespace kvferry {

namespace {

using self_ptr = router_actor::stateful_pointer<router_state>;

// Adds request `id`'s row to the per-request report (warm-up requests have
// none): its route and times, and what the consumer reported (zeros when it
// failed).
void add_row(self_ptr self, const router_state::route& route,
             const proto::ready_report* report) {
  const auto& st = self->state;
  if (route.index == router_state::warm_up)
    return;
  router_request row;
  row.index = route.index;
  row.producer = route.producer;
  row.consumer = route.consumer;
  row.due = route.due;
  row.sent = route.sent - st.start;
  row.answered = self->clock().now() - st.start;
  row.ok = report != nullptr;
  if (report)
    row.report = *report;
  if (st.cfg.on_request)
    st.cfg.on_request(row);
  else
    st.run->update([&](router_results& r) { r.requests.push_back(row); });
}

// Records a failed request (the run has failed: no new request starts),
// naming the decode worker it was bound for: the producer may not know it.
void record_failure(self_ptr self, std::uint64_t id,
                    const router_state::route& route, const caf::error& err,
                    const char* what = "request") {
  add_row(self, route, nullptr);
  auto consumer = route.consumer;
  const auto& name = self->state.cfg.consumers[consumer].name;
  // CAF's own word for a request whose receiver was already gone (the
  // producer, or the consumer it delegated to) names no party: say who.
  auto why = err == caf::sec::request_receiver_down
                 ? make_error(ec::peer_down,
                              fmt::format("a worker on the request's path (its "
                                          "prefill worker, or decode worker "
                                          "'{}') was gone before it answered",
                                          name))
                 : err;
  self->state.run->update([&](router_results& r) {
    ++r.done;
    ++r.failed;
    r.errors.push_back(fmt::format("{} {} (to decode worker '{}'): {}", what,
                                   id, name, render(why)));
  });
}

void record_success(self_ptr self, const router_state::route& route,
                    const proto::ready_report& r) {
  using namespace std::chrono;
  add_row(self, route, &r);
  auto& st = self->state;
  if (route.index != router_state::warm_up)
    st.policy->landed(std::uint32_t(route.consumer), route.prefix_ids);
  auto consumer = route.consumer;
  auto t0 = route.sent;
  auto us = duration<double, std::micro>(self->clock().now() - t0).count();
  bool samples = !st.cfg.on_request; // kept per request
  self->state.run->update([&](router_results& out) {
    ++out.done;
    out.bytes += r.bytes;
    if (r.gpu_copy_ns > 0) {
      out.gpu_copy_ns += r.gpu_copy_ns;
      out.gpu_copy_bytes += r.bytes;
    }
    if (!samples)
      return;
    out.latency_us.push_back(us);
    if (r.transfer_ns > 0)
      out.data_windows.push_back(
          {consumer, r.data_start_ns, r.data_start_ns + r.transfer_ns});
    if (r.gpu_copy_ns > 0) {
      out.gpu_queued_us.push_back(static_cast<double>(r.gpu_queued_ns) / 1e3);
      out.after_kernel_us.push_back(
          static_cast<double>(r.transfer_ns - r.gpu_queued_ns - r.gpu_copy_ns) /
          1e3);
    }
    out.control_us.push_back(
        us - static_cast<double>(r.transfer_ns + r.compute_ns) / 1e3);
    out.compute_us.push_back(static_cast<double>(r.compute_ns) / 1e3);
  });
}

// Sends request `id` (`tokens` tokens) along `route` (its producer and
// consumer: indices into the config), in flight until a handler forgets it
// (a worker that leaves fails what it still finds there); the caller
// attaches the handlers. `route.load`: what the routing policy counted
// against the two workers (given back when the request leaves).
auto send_prefill(self_ptr self, std::uint64_t id, std::uint32_t tokens,
                  router_state::route route) {
  const auto& cfg = self->state.cfg;
  auto producer = route.producer;
  proto::prefill_request req;
  req.request_id = id;
  req.prompt_tokens = tokens;
  req.pattern_seed = cfg.seed;
  req.sampled_verify = cfg.sampled_verify;
  req.consumer = cfg.consumers[route.consumer].app;
  req.layerwise = cfg.layerwise;
  req.pull = cfg.pull;
  route.sent = self->clock().now();
  self->state.routes.emplace(id, std::move(route));
  // Generous: the producer's own deadlines fire first and name the cause.
  return self->request(cfg.producers[producer].app,
                       std::chrono::milliseconds(3 * cfg.timeout_ms + 5000),
                       proto::prefill_atom::value, std::move(req));
}

// Reads the next request (st.next_input) unless it is read already: from
// the source, or the config's vectors. False when there is none.
bool read_next(router_state& st) {
  if (st.has_next || st.drained)
    return st.has_next;
  auto& in = st.next_input;
  const auto& cfg = st.cfg;
  if (cfg.source) {
    in.prefix_ids.clear();
    st.has_next = cfg.source(in);
  } else if (auto i = st.next; i < cfg.tokens.size()) {
    in.tokens = cfg.tokens[i];
    in.arrival = i < cfg.arrivals.size() ? cfg.arrivals[i] : caf::timespan{};
    in.prefix_ids = i < cfg.prefix_ids.size() ? cfg.prefix_ids[i]
                                              : std::vector<std::uint64_t>{};
    st.has_next = true;
  }
  st.drained = !st.has_next;
  return st.has_next;
}

// Ends the run once nothing is in flight and nothing more will start.
void maybe_finish(self_ptr self) {
  auto& st = self->state;
  if (!st.routes.empty())
    return;
  if (st.stopped || (!st.warming && !read_next(st))) {
    st.run->finish(self->clock().now());
    self->quit();
  }
}

// Whether the next request has arrived; if not, sets the timer (one at a
// time: arrivals do not decrease, so the next request's time is the
// earliest).
bool arrived(self_ptr self) {
  auto& st = self->state;
  auto wait = st.start + st.next_input.arrival - self->clock().now();
  if (wait <= caf::timespan{0})
    return true;
  if (!st.timer_set) {
    st.timer_set = true;
    self->delayed_send(self, wait, proto::sweep_atom::value);
  }
  return false;
}

// Starts requests that have arrived while fewer than `inflight` are open.
void issue(self_ptr self) {
  auto& st = self->state;
  while (!st.warming && !st.stopped && st.routes.size() < st.cfg.inflight &&
         read_next(st) && arrived(self)) {
    auto i = st.next++;
    st.has_next = false;
    auto id = st.cfg.first_request_id + i;
    auto& in = st.next_input;
    auto tokens = in.tokens;
    auto to = st.policy->pick(tokens, tokens, in.prefix_ids);
    // No live worker of a role: only faults do that, and the first one
    // already stopped the run.
    if (!to)
      break;
    router_state::route route{to->prefill, to->decode, tokens};
    route.index = i;
    route.due = in.arrival;
    route.prefix_ids = std::move(in.prefix_ids);
    send_prefill(self, id, tokens, std::move(route))
        .then(
            [=](proto::ready_report& r) {
              auto route = self->state.take(id);
              if (!route)
                return; // already failed (a worker of it went down)
              record_success(self, *route, r);
              issue(self);
            },
            [=](caf::error& err) {
              auto route = self->state.take(id);
              if (!route)
                return;
              self->state.stopped = !self->state.cfg.go_on_after_failure;
              record_failure(self, id, *route, err);
              issue(self);
            });
  }
  maybe_finish(self);
}

// Before the clock starts, one small request per producer/consumer pair
// (ids after the run's): the first request to a worker pays one-time set-up
// (the first credit reserve, opening a channel, mapping a peer's GPU pool:
// 147 ms across two H100s), which the run's percentiles should not mix with
// steady-state requests. They are in flight like any other, so a consumer
// that leaves fails them at once; a failure stops the run.
void warm_up(self_ptr self) {
  auto& st = self->state;
  st.warming = true;
  st.warm_up_start = self->clock().now();
  // After the measured ids (a source's count is not known: 2^32 on).
  auto id = st.cfg.first_request_id +
            (st.cfg.source ? std::uint64_t{1} << 32 : st.cfg.tokens.size());
  for (std::size_t producer = 0; producer < st.cfg.producers.size(); ++producer)
    for (std::size_t consumer = 0; consumer < st.cfg.consumers.size();
         ++consumer) {
      auto this_id = id++;
      auto finish = [=](const caf::error& err) {
        auto& st = self->state;
        if (!st.forget(this_id))
          return; // already failed (a worker of it went down)
        if (err) {
          st.stopped = true;
          record_failure(self, this_id, {producer, consumer}, err,
                         "warm-up request");
        }
        if (!st.routes.empty())
          return;
        st.warming = false;
        if (!st.stopped) {
          auto now = self->clock().now();
          if (st.cfg.on_warm_up)
            st.cfg.on_warm_up(st.cfg.producers.size() * st.cfg.consumers.size(),
                              now - st.warm_up_start);
          st.start = now;
          st.run->update([&](router_results& r) { r.start = now; });
        }
        issue(self);
      };
      send_prefill(self, this_id, st.cfg.warm_up_tokens, {producer, consumer})
          .then([=](proto::ready_report&) { finish(caf::error{}); },
                [=](caf::error& err) { finish(err); });
    }
}

// Fails every request in flight whose route `hit` matches, in id order, with
// `err`; the run has failed, so no new request starts.
template<class Predicate>
void fail_routes(self_ptr self, Predicate hit, const caf::error& err) {
  auto& st = self->state;
  std::vector<std::uint64_t> lost;
  for (auto& [id, route] : st.routes)
    if (hit(route))
      lost.push_back(id);
  std::sort(lost.begin(), lost.end());
  for (auto id : lost)
    record_failure(self, id, *st.take(id), err);
  st.stopped = !st.cfg.go_on_after_failure;
  issue(self);
}

// A worker that is gone fails its requests at once, naming it. The
// directory says so (`left`): it holds a connection to every worker and
// sees a process die at once. (A monitor on a worker is no substitute: this
// process may reach it through the directory's node at first, and CAF 0.17
// can report such a proxy down, remote_link_unreachable, while the worker
// is alive; the demo tests caught that.)
void worker_left(self_ptr self, const std::string& name,
                 const std::string& why) {
  const auto& cfg = self->state.cfg;
  auto gone = [&](const char* role) {
    return make_error(ec::peer_down, fmt::format("{} worker '{}' is gone: {}",
                                                 role, name, why));
  };
  for (std::size_t k = 0; k < cfg.consumers.size(); ++k)
    if (cfg.consumers[k].name == name) {
      self->state.policy->decode_down(std::uint32_t(k));
      fail_routes(
          self, [k](const router_state::route& r) { return r.consumer == k; },
          gone("decode"));
    }
  for (std::size_t k = 0; k < cfg.producers.size(); ++k)
    if (cfg.producers[k].name == name) {
      self->state.policy->prefill_down(std::uint32_t(k));
      fail_routes(
          self, [k](const router_state::route& r) { return r.producer == k; },
          gone("prefill"));
    }
}

// Without the directory no worker's death can reach us any more: stop now
// (every request in flight fails, saying why) rather than run on blind
// until the deadlines.
void watch_directory(self_ptr self) {
  auto dir = self->state.cfg.directory;
  if (!dir)
    return;
  self->monitor(dir);
  self->set_down_handler([self, dir](caf::down_msg& dm) {
    if (dm.source != dir.address())
      return;
    auto why = fmt::format("the directory at {} is gone ({}): stopping, since "
                           "worker failures can no longer be seen",
                           self->state.cfg.directory_name, render(dm.reason));
    self->state.run->update(
        [&](router_results& r) { r.stopped_because = why; });
    fail_routes(
        self, [](const router_state::route&) { return true; },
        make_error(ec::peer_down, why));
  });
  self->request(dir, std::chrono::seconds(10), watch_atom::value,
                caf::actor_cast<caf::actor>(self))
      .then([](std::vector<worker_info>&) {},
            [](caf::error& err) {
              spdlog::warn("router: watching the directory failed: {}",
                           render(err));
            });
}

router_actor::behavior_type router(self_ptr self, router_config cfg,
                                   std::shared_ptr<router_run> run) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.cfg.inflight = std::max<std::uint32_t>(1, st.cfg.inflight);
  st.run = std::move(run);
  st.policy.emplace(st.cfg.routing_policy, st.cfg.producers.size(),
                    std::vector<std::size_t>(st.cfg.consumers.size(),
                                             st.cfg.prefix_capacity));
  watch_directory(self);
  st.start = self->clock().now();
  st.run->update([&](router_results& r) { r.start = self->state.start; });
  if (st.cfg.producers.empty() || st.cfg.consumers.empty()) {
    st.run->update([](router_results& r) {
      r.stopped_because = "the router has no prefill or no decode worker";
    });
    st.stopped = true;
  }
  if (!st.stopped && st.cfg.warm_up_tokens > 0)
    warm_up(self);
  else
    issue(self);
  return {
      [](joined_atom, const worker_info&) {},
      [self](proto::sweep_atom) {
        self->state.timer_set = false;
        issue(self);
      },
      [self](left_atom, const std::string& name, const caf::error& why) {
        worker_left(self, name, "it left the directory: " + render(why));
      },
  };
}

} // namespace

double data_rate_gbps(const router_results& r) {
  auto w = r.data_windows;
  std::sort(w.begin(), w.end(), [](const auto& a, const auto& b) {
    return std::tie(a.consumer, a.start) < std::tie(b.consumer, b.start);
  });
  std::int64_t busy_ns = 0;
  for (std::size_t i = 0; i < w.size();) {
    auto start = w[i].start, end = w[i].end;
    for (++i; i < w.size() && w[i].consumer == w[i - 1].consumer &&
              w[i].start <= end;
         ++i)
      end = std::max(end, w[i].end);
    busy_ns += end - start;
  }
  return busy_ns > 0 ? static_cast<double>(r.bytes) / busy_ns : 0.0;
}

router_results router_run::snapshot() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return results_;
}

bool router_run::finished() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return finished_;
}

bool router_run::wait_finished(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> guard{mtx_};
  return cv_.wait_for(guard, timeout, [this] { return finished_; });
}

void router_run::finish(caf::actor_clock::time_point end) {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    results_.end = end;
    finished_ = true;
  }
  cv_.notify_all();
}

router_actor spawn_router(caf::actor_system& sys, router_config cfg,
                          std::shared_ptr<router_run> run) {
  return sys.spawn(router, std::move(cfg), std::move(run));
}

} // namespace kvferry
