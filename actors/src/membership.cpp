// The lease keeper: a worker's registration with the directory, healed after
// every loss (see membership.hpp for the rules).
#include "kvferry/actors/membership.hpp"

#include <algorithm>
#include <random>

#include <caf/all.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "membership_state.hpp"

namespace kvferry {

namespace {

using namespace membership_detail;
using kind = membership_state_kind;

std::string as_text(caf::timespan t) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t).count();
  return ms < 10000 ? fmt::format("{} ms", ms)
                    : fmt::format("{:.1f} s", static_cast<double>(ms) / 1000);
}

const std::string& who(self_ptr self) {
  return self->state.cfg.info.name;
}

// splitmix64: a few bits of jitter need no more than this.
std::uint64_t next_random(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Doubling from retry_min, capped at retry_max, drawn from [d/2, d].
caf::timespan next_backoff(membership_state& st) {
  auto d = st.cfg.retry_min;
  for (std::uint32_t i = 1; i < st.failures && d < st.cfg.retry_max; ++i)
    d *= 2;
  d = std::min(d, st.cfg.retry_max);
  auto half = d.count() / 2;
  auto spread = static_cast<std::uint64_t>(d.count() - half) + 1;
  return caf::timespan{half + static_cast<caf::timespan::rep>(
                                  next_random(st.rng_state) % spread)};
}

// A new state: older timers and replies no longer apply.
void enter(self_ptr self, kind k) {
  self->state.kind = k;
  ++self->state.epoch;
}

// Logs a problem when it starts (or changes kind), not on every attempt.
void report(self_ptr self, const std::string& problem,
            const std::string& text) {
  auto& st = self->state;
  st.last_error = text;
  if (st.problem == problem)
    return;
  if (st.problem.empty())
    st.trouble_since = self->clock().now();
  st.problem = problem;
  spdlog::warn("worker {}: {}", who(self), text);
}

void deliver_waiting(self_ptr self, const caf::error& err) {
  auto waiting = std::move(self->state.waiting);
  self->state.waiting.clear();
  for (auto& rp : waiting)
    if (err)
      rp.deliver(err);
    else
      rp.deliver(caf::ok_atom::value);
}

void after(self_ptr self, caf::timespan delay) {
  self->delayed_send(self, delay, caf::tick_atom::value, self->state.epoch);
}

void dial(self_ptr self);
void register_now(self_ptr self);

void retry_later(self_ptr self, kind k) {
  enter(self, k);
  ++self->state.failures;
  after(self, next_backoff(self->state));
}

// Errors retrying cannot fix until someone changes a configuration or a
// build (a directory of another kvferry build: mismatch). Still retried, in
// case someone does; those waiting for the registration hear of it now. (A
// duplicate name may be this worker's previous process, which the directory
// drops once its connection closes or its lease runs out: retried.)
bool refused(const caf::error& err) {
  return is(err, ec::unauthorized) || is(err, ec::invalid_argument) ||
         is(err, ec::mismatch);
}

void dial(self_ptr self) {
  enter(self, kind::dialing);
  auto epoch = self->state.epoch;
  self->request(self->state.cfg.dialer, self->state.cfg.request_timeout,
                caf::connect_atom::value)
      .then(
          [self, epoch](caf::actor& found) {
            if (epoch != self->state.epoch)
              return;
            self->state.directory =
                caf::actor_cast<directory_actor>(std::move(found));
            self->monitor(self->state.directory);
            register_now(self);
          },
          [self, epoch](caf::error& err) {
            if (epoch != self->state.epoch)
              return;
            report(self, refused(err) ? "refused" : "unreachable",
                   fmt::format("cannot reach the directory at {}: {}; "
                               "retrying (backoff up to {})",
                               self->state.cfg.directory_name, render(err),
                               as_text(self->state.cfg.retry_max)));
            if (refused(err)) { // a directory of another build
              self->state.refusal = err;
              deliver_waiting(self, err);
            }
            retry_later(self, kind::dialing);
          });
}

// Tells each watcher who is there now: it hears only of later joins.
void watch_all(self_ptr self) {
  auto& st = self->state;
  for (auto& w : st.cfg.watchers)
    self->request(st.directory, st.cfg.request_timeout, watch_atom::value, w)
        .then(
            [self, w](std::vector<worker_info>& members) {
              for (auto& m : members)
                self->send(caf::actor_cast<directory_watcher_actor>(w),
                           joined_atom::value, std::move(m));
            },
            [self](caf::error& err) {
              // Peers still reach us; only our view of joins and leaves is
              // stale until the next registration.
              spdlog::warn("worker {}: watching the directory at {} failed: {}",
                           who(self), self->state.cfg.directory_name,
                           render(err));
            });
}

void renew_soon(self_ptr self) {
  auto every = std::max<caf::timespan>(self->state.granted.duration / 3,
                                       std::chrono::milliseconds(50));
  after(self, every);
}

void on_registered(self_ptr self, lease& granted) {
  auto& st = self->state;
  enter(self, kind::registered);
  st.granted = granted;
  st.failures = 0;
  st.silent = false;
  if (!st.ever_registered)
    spdlog::info("worker {}: registered with the directory at {} (lease {})",
                 who(self), st.cfg.directory_name, as_text(granted.duration));
  else
    spdlog::info("worker {}: registered again with the directory at {}{}",
                 who(self), st.cfg.directory_name,
                 st.problem.empty() ? std::string{}
                                    : fmt::format(" after {} (it began: {})",
                                                  as_text(self->clock().now() -
                                                          st.trouble_since),
                                                  st.problem));
  st.ever_registered = true;
  st.problem.clear();
  st.last_error.clear();
  st.refusal = caf::error{};
  deliver_waiting(self, caf::none);
  watch_all(self);
  renew_soon(self);
}

void register_now(self_ptr self) {
  enter(self, kind::registering);
  auto epoch = self->state.epoch;
  auto& st = self->state;
  self->request(st.directory, st.cfg.request_timeout, register_atom::value,
                st.cfg.info, st.cfg.secret)
      .then(
          [self, epoch](lease& granted) {
            if (epoch == self->state.epoch)
              on_registered(self, granted);
          },
          [self, epoch](caf::error& err) {
            if (epoch != self->state.epoch)
              return;
            report(self, refused(err) ? "refused" : "unregistered",
                   fmt::format("the directory at {} did not register this "
                               "worker: {}; retrying",
                               self->state.cfg.directory_name, render(err)));
            if (refused(err)) {
              self->state.refusal = err;
              deliver_waiting(self, err);
            }
            retry_later(self, kind::registering);
          });
}

void renew(self_ptr self) {
  auto& st = self->state;
  auto epoch = st.epoch;
  auto every = std::max<caf::timespan>(st.granted.duration / 3,
                                       std::chrono::milliseconds(50));
  self->request(st.directory, every, renew_atom::value, st.cfg.info.name,
                st.granted.token)
      .then(
          [self, epoch](caf::ok_atom) {
            if (epoch != self->state.epoch)
              return;
            if (self->state.silent) {
              spdlog::info(
                  "worker {}: the directory at {} answers again "
                  "after {}; lease kept",
                  who(self), self->state.cfg.directory_name,
                  as_text(self->clock().now() - self->state.trouble_since));
              self->state.silent = false;
              self->state.problem.clear();
            }
            renew_soon(self);
          },
          [self, epoch](caf::error& err) {
            if (epoch != self->state.epoch)
              return;
            if (is(err, ec::not_found) || is(err, ec::unauthorized)) {
              // The directory dropped us (we were stopped past the lease, or
              // it restarted behind the same connection): the same actors
              // register again at once.
              self->state.silent = false;
              report(self, "lease lost",
                     fmt::format("the directory at {} no longer holds this "
                                 "worker's lease ({}); registering again",
                                 self->state.cfg.directory_name, render(err)));
              register_now(self);
              return;
            }
            if (err == caf::sec::request_receiver_down)
              return; // the down handler redials
            // Unanswered: the directory (or the path to it) is stalled, not
            // this worker. Keep renewing; the lease may still be held, and
            // the directory grants grace after a pause of its own.
            if (!self->state.silent) {
              self->state.silent = true;
              report(self, "silent",
                     fmt::format("the directory at {} did not answer a lease "
                                 "renewal ({}): it is stalled or "
                                 "unreachable; still renewing",
                                 self->state.cfg.directory_name, render(err)));
            }
            renew(self);
          });
}

void on_tick(self_ptr self, std::uint64_t epoch) {
  auto& st = self->state;
  if (epoch != st.epoch)
    return;
  switch (st.kind) {
  case kind::dialing:
    dial(self);
    break;
  case kind::registering:
    if (st.directory)
      register_now(self);
    else
      dial(self);
    break;
  case kind::registered:
    renew(self);
    break;
  case kind::left:
    break;
  }
}

void on_down(self_ptr self, const caf::down_msg& msg) {
  auto& st = self->state;
  if (!st.directory || msg.source != st.directory.address() ||
      st.kind == kind::left)
    return;
  st.directory = nullptr;
  st.silent = false;
  report(self, "disconnected",
         fmt::format("lost the directory at {} ({}); reconnecting",
                     st.cfg.directory_name, render(msg.reason)));
  st.failures = 0;
  dial(self);
}

caf::result<caf::ok_atom> on_leave(self_ptr self) {
  auto& st = self->state;
  bool registered = st.kind == kind::registered;
  enter(self, kind::left);
  deliver_waiting(self, make_error(ec::peer_down, "the worker is stopping"));
  if (!registered || !st.directory)
    return caf::ok_atom::value;
  auto rp = self->make_response_promise<caf::ok_atom>();
  self->request(st.directory, st.cfg.leave_timeout, leave_atom::value,
                st.cfg.info.name, st.granted.token)
      .then([rp](caf::ok_atom) mutable { rp.deliver(caf::ok_atom::value); },
            [self, rp](caf::error& err) mutable {
              // Not fatal: the lease runs out, or the connection closes.
              spdlog::info("worker {}: leaving the directory at {}: {}",
                           who(self), self->state.cfg.directory_name,
                           render(err));
              rp.deliver(caf::ok_atom::value);
            });
  return rp;
}

// The state as the keeper reports and logs it.
const char* to_string(membership_state_kind k) {
  switch (k) {
  case kind::dialing:
    return "dialing";
  case kind::registering:
    return "registering";
  case kind::registered:
    return "registered";
  case kind::left:
    return "left";
  }
  return "?";
}

membership_actor::behavior_type membership_impl(self_ptr self,
                                                membership_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.rng_state = st.cfg.seed != 0 ? st.cfg.seed : std::random_device{}();
  self->set_down_handler(
      [self](const caf::down_msg& msg) { on_down(self, msg); });
  dial(self);
  return {
      [self](caf::wait_for_atom) -> caf::result<caf::ok_atom> {
        auto& st = self->state;
        if (st.kind == kind::registered)
          return caf::ok_atom::value;
        if (st.kind == kind::left)
          return make_error(ec::peer_down, "the worker is stopping");
        if (st.refusal)
          return st.refusal;
        st.waiting.push_back(self->make_response_promise<caf::ok_atom>());
        return st.waiting.back();
      },
      [self](caf::get_atom) -> std::string {
        auto& st = self->state;
        auto line = fmt::format("{} (directory {})", to_string(st.kind),
                                st.cfg.directory_name);
        if (!st.last_error.empty())
          line += ": " + st.last_error;
        return line;
      },
      [self](leave_atom) { return on_leave(self); },
      [self](caf::tick_atom, std::uint64_t epoch) { on_tick(self, epoch); },
  };
}

// Blocks its own (detached) thread while it dials, never a scheduler's.
dialer_actor::behavior_type dialer(dialer_actor::pointer,
                                   directory_connect connect) {
  return {[connect](caf::connect_atom) -> caf::result<caf::actor> {
    auto found = connect();
    if (!found)
      return found.error();
    return caf::actor_cast<caf::actor>(std::move(*found));
  }};
}

} // namespace

membership_actor spawn_membership(caf::actor_system& sys,
                                  membership_config cfg) {
  return sys.spawn(membership_impl, std::move(cfg));
}

dialer_actor spawn_dialer(caf::actor_system& sys, directory_connect connect) {
  return sys.spawn<caf::detached>(dialer, std::move(connect));
}

} // namespace kvferry
