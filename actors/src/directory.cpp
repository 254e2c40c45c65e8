// The directory actor: the deployment's membership (see actors.hpp).
#include "kvferry/actors/directory.hpp"

#include <algorithm>
#include <random>
#include <thread>

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <spdlog/spdlog.h>

#include "directory_state.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/runtime/tls.hpp"

namespace kvferry {

namespace {

using namespace directory_detail;
using entry = directory_state::entry;

// An empty configured secret accepts everyone (the directory warns at start).
// Otherwise compares in time independent of where the secrets differ, so the
// reply time does not leak a prefix of the secret (the length may leak).
bool secret_accepted(const std::string& expected, const std::string& given) {
  if (expected.empty())
    return true;
  if (expected.size() != given.size())
    return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < given.size(); ++i)
    diff |= static_cast<unsigned char>(given[i] ^ expected[i]);
  return diff == 0;
}

// Lease tokens authorise renew and leave, which carry no secret: they must
// not be guessable from another worker's token.
uint64_t new_token() {
  thread_local std::mt19937_64 engine{std::random_device{}()};
  uint64_t token = 0;
  while (token == 0)
    token = engine();
  return token;
}

std::string as_ms(caf::timespan t) {
  return std::to_string(
             std::chrono::duration_cast<std::chrono::milliseconds>(t).count()) +
         " ms";
}

caf::error validate(const worker_info& info) {
  if (info.name.empty())
    return make_error(ec::invalid_argument, "register: empty worker name");
  for (size_t i = 0; i < info.listen_handles.size(); ++i)
    if (info.listen_handles[i].size() != listen_handle_size)
      return make_error(
          ec::invalid_argument,
          "register '" + info.name + "': listen handle " + std::to_string(i) +
              " has " + std::to_string(info.listen_handles[i].size()) +
              " bytes, expected " + std::to_string(listen_handle_size));
  return caf::none;
}

// Sorted by name; each with its "lease_age_ms" (since its last renewal).
std::vector<worker_info> members(self_ptr self,
                                 const worker_role* role = nullptr) {
  auto& st = self->state;
  auto now = self->clock().now();
  std::vector<worker_info> result;
  result.reserve(st.workers.size());
  for (auto& [name, e] : st.workers)
    if (role == nullptr || e.info.role == *role) {
      result.push_back(e.info);
      result.back().attributes["lease_age_ms"] = std::to_string(
          std::chrono::duration_cast<std::chrono::milliseconds>(now - e.renewed)
              .count());
    }
  std::sort(result.begin(), result.end(),
            [](auto& a, auto& b) { return a.name < b.name; });
  return result;
}

// Watchers register as caf::actor (any actor type may watch); they promise
// the directory_watcher_actor interface.
directory_watcher_actor as_watcher(const caf::actor& watcher) {
  return caf::actor_cast<directory_watcher_actor>(watcher);
}

void notify_joined(self_ptr self, const worker_info& info) {
  for (auto& watcher : self->state.watchers)
    self->send(as_watcher(watcher), joined_atom::value, info);
}

// Removes a worker and tells every watcher why.
void drop(self_ptr self, const std::string& name, const caf::error& why) {
  auto i = self->state.workers.find(name);
  if (i == self->state.workers.end())
    return;
  spdlog::info("directory: worker '{}' left: {}", name, render(why));
  self->state.workers.erase(i);
  for (auto& watcher : self->state.watchers)
    self->send(as_watcher(watcher), left_atom::value, name, why);
}

void monitor_worker(self_ptr self, const worker_info& info) {
  if (info.app)
    self->monitor(info.app);
  if (info.transfer)
    self->monitor(info.transfer);
}

void schedule_expiry(self_ptr self, const std::string& name, uint64_t token,
                     caf::timespan after) {
  self->delayed_send(self, after, expire_atom::value, name, token);
}

// ---- the stall watchdog --------------------------------------------------
//
// A directory that was stopped (SIGSTOP) or starved of CPU finds, when it
// runs again, its lease timers due and the workers' renewals still queued
// behind them: judged naively, every worker "did not renew". Whether the
// directory itself stalled is plain from its own periodic tick arriving late.

caf::timespan tick_interval(const directory_options& options) {
  return std::max<caf::timespan>(options.stall_tolerance / 4,
                                 std::chrono::milliseconds(10));
}

void schedule_tick(self_ptr self) {
  self->delayed_send(self, tick_interval(self->state.options),
                     caf::tick_atom::value);
}

// Call before judging any worker: if the directory has not run for longer
// than the tolerance, every lease gets a full lease of grace from now.
void check_stall(self_ptr self) {
  auto& st = self->state;
  if (st.options.stall_tolerance <= caf::timespan{0})
    return;
  auto now = self->clock().now();
  auto gap = now - st.last_tick;
  st.last_tick = now;
  auto interval = tick_interval(st.options);
  if (gap <= interval + st.options.stall_tolerance)
    return;
  st.last_stall = gap - interval;
  st.resumed = now;
  for (auto& [name, e] : st.workers)
    e.deadline = std::max(e.deadline, now + st.options.lease);
  spdlog::warn("directory: this process did not run for {} (stopped, or "
               "starved of CPU): the directory's pause, not the workers'. "
               "Every lease ({} workers) runs for another {} so that they "
               "can renew",
               as_ms(st.last_stall), st.workers.size(),
               as_ms(st.options.lease));
}

// Why a worker whose actor went down is dropped, naming who is at fault: a
// connection that closed while (or right after) the directory stalled was
// most likely closed by the worker's side for the directory's silence.
caf::error down_reason(self_ptr self, const std::string& name,
                       const caf::error& reason) {
  auto& st = self->state;
  bool after_stall = st.last_stall > caf::timespan{0} &&
                     self->clock().now() - st.resumed <= st.options.lease;
  if (after_stall && reason == caf::exit_reason::remote_link_unreachable)
    return make_error(
        ec::peer_down,
        "worker '" + name + "' was disconnected while the directory did not " +
            "run for " + as_ms(st.last_stall) +
            " (the directory's pause, not the worker's fault; it registers "
            "again by itself)");
  return make_error(ec::peer_down,
                    "worker '" + name + "' is down: " + render(reason));
}

caf::result<lease> register_worker(self_ptr self, worker_info& info,
                                   const std::string& secret) {
  auto& st = self->state;
  if (!secret_accepted(st.options.secret, secret))
    return make_error(ec::unauthorized,
                      "register '" + info.name +
                          "': wrong deployment secret (check --secret or "
                          "KVFERRY_SECRET on the worker and the directory)");
  if (auto err = validate(info))
    return err;
  auto now = self->clock().now();
  if (auto i = st.workers.find(info.name); i != st.workers.end()) {
    // The same app actor registering again is an update (e.g. new regions);
    // a different live one holding the name is a configuration error.
    if (!info.app || i->second.info.app != info.app)
      return make_error(ec::duplicate,
                        "register '" + info.name +
                            "': the name is held by another live worker "
                            "(registered from " +
                            i->second.info.host + ")");
    i->second.info = std::move(info);
    i->second.deadline = now + st.options.lease;
    i->second.renewed = now;
    monitor_worker(self, i->second.info);
    notify_joined(self, i->second.info);
    return lease{i->second.token, st.options.lease};
  }
  auto token = new_token();
  auto name = info.name;
  spdlog::info("directory: worker '{}' ({}, host {}, gpu {}) joined", name,
               to_string(info.role), info.host, info.gpu);
  auto& e = st.workers[name];
  e.info = std::move(info);
  e.token = token;
  e.deadline = now + st.options.lease;
  e.renewed = now;
  monitor_worker(self, e.info);
  notify_joined(self, e.info);
  schedule_expiry(self, name, token, st.options.lease);
  return lease{token, st.options.lease};
}

// Finds (name, token) or says why not.
caf::expected<entry*> find_leased(self_ptr self, const char* call,
                                  const std::string& name, uint64_t token) {
  auto i = self->state.workers.find(name);
  if (i == self->state.workers.end())
    return make_error(ec::not_found, std::string{call} + " '" + name +
                                         "': no such worker (lease expired "
                                         "or never registered)");
  if (i->second.token != token)
    return make_error(ec::unauthorized,
                      std::string{call} + " '" + name + "': wrong lease token");
  return &i->second;
}

void on_expire(self_ptr self, const std::string& name, uint64_t token) {
  check_stall(self);
  auto i = self->state.workers.find(name);
  if (i == self->state.workers.end() || i->second.token != token)
    return; // gone or replaced since the timer was set
  auto now = self->clock().now();
  if (now < i->second.deadline) {
    // Renewed since: one timer per worker, re-armed for the remainder.
    schedule_expiry(self, name, token, i->second.deadline - now);
    return;
  }
  drop(self, name,
       make_error(ec::lease_expired, "worker '" + name +
                                         "' did not renew its lease of " +
                                         as_ms(self->state.options.lease)));
}

// A worker's app or transfer actor died, or a watcher did.
void on_down(self_ptr self, const caf::down_msg& msg) {
  check_stall(self);
  auto& st = self->state;
  st.watchers.erase(std::remove_if(st.watchers.begin(), st.watchers.end(),
                                   [&](const caf::actor& w) {
                                     return w.address() == msg.source;
                                   }),
                    st.watchers.end());
  std::vector<std::string> dead;
  for (auto& [name, e] : st.workers)
    if ((e.info.app && e.info.app.address() == msg.source) ||
        (e.info.transfer && e.info.transfer.address() == msg.source))
      dead.push_back(name);
  for (auto& name : dead)
    drop(self, name, down_reason(self, name, msg.reason));
}

directory_actor::behavior_type directory_impl(self_ptr self,
                                              directory_options options) {
  self->state.options = std::move(options);
  if (self->state.options.secret.empty())
    spdlog::warn("directory: no secret set: any process may register");
  self->set_down_handler(
      [self](const caf::down_msg& msg) { on_down(self, msg); });
  self->state.last_tick = self->clock().now();
  if (self->state.options.stall_tolerance > caf::timespan{0})
    schedule_tick(self);
  return {
      [self](register_atom, worker_info& info, const std::string& secret)
          -> caf::result<lease> { return register_worker(self, info, secret); },
      [self](renew_atom, const std::string& name,
             uint64_t token) -> caf::result<caf::ok_atom> {
        auto e = find_leased(self, "renew", name, token);
        if (!e)
          return e.error();
        (*e)->renewed = self->clock().now();
        (*e)->deadline = (*e)->renewed + self->state.options.lease;
        return caf::ok_atom::value;
      },
      [self](leave_atom, const std::string& name,
             uint64_t token) -> caf::result<caf::ok_atom> {
        auto e = find_leased(self, "leave", name, token);
        if (!e)
          return e.error();
        drop(self, name, caf::error{});
        return caf::ok_atom::value;
      },
      [self](lookup_atom, const std::string& name) -> caf::result<worker_info> {
        auto i = self->state.workers.find(name);
        if (i == self->state.workers.end())
          return make_error(ec::not_found,
                            "lookup '" + name + "': no such worker");
        return i->second.info;
      },
      [self](list_atom) -> std::vector<worker_info> { return members(self); },
      [self](list_atom, worker_role role) -> std::vector<worker_info> {
        return members(self, &role);
      },
      [self](watch_atom,
             caf::actor& watcher) -> caf::result<std::vector<worker_info>> {
        if (!watcher)
          return make_error(ec::invalid_argument, "watch: null watcher");
        auto& ws = self->state.watchers;
        if (std::find(ws.begin(), ws.end(), watcher) == ws.end()) {
          self->monitor(watcher);
          ws.push_back(watcher);
        }
        return members(self);
      },
      [self](unwatch_atom, const caf::actor& watcher) -> caf::ok_atom {
        auto& ws = self->state.watchers;
        ws.erase(std::remove(ws.begin(), ws.end(), watcher), ws.end());
        return caf::ok_atom::value;
      },
      [self](expire_atom, const std::string& name, uint64_t token) {
        on_expire(self, name, token);
      },
      [self](caf::tick_atom) {
        check_stall(self);
        schedule_tick(self);
      },
  };
}

} // namespace

directory_actor spawn_directory(caf::actor_system& system,
                                directory_options options) {
  return system.spawn(directory_impl, std::move(options));
}

caf::error parse_host_port(const std::string& text, std::string& host,
                           uint16_t& port) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    return make_error(ec::invalid_argument, "'" + text + "' is not HOST:PORT");
  try {
    size_t used = 0;
    auto value = std::stoul(text.substr(colon + 1), &used);
    if (used != text.size() - colon - 1 || value == 0 || value > 65535)
      throw std::out_of_range{"port"};
    port = static_cast<uint16_t>(value);
  } catch (const std::exception&) {
    return make_error(ec::invalid_argument,
                      "'" + text + "': port must be 1..65535");
  }
  host = text.substr(0, colon);
  return caf::none;
}

caf::expected<directory_actor> connect_directory(caf::actor_system& system,
                                                 const std::string& host,
                                                 uint16_t port,
                                                 caf::timespan timeout) {
  using clock = std::chrono::steady_clock;
  auto where = host + ":" + std::to_string(port);
  auto deadline = clock::now() + timeout;
  auto expected_ifs = system.message_types<directory_actor>();
  // TLS where the system has it (runtime::system_config::secure).
  auto mm = runtime::control_middleman(system);
  caf::scoped_actor self{system};
  caf::error last;
  for (;;) {
    auto left =
        std::chrono::duration_cast<caf::timespan>(deadline - clock::now());
    if (left <= caf::timespan{0})
      break;
    caf::strong_actor_ptr found;
    std::set<std::string> ifs;
    self->request(mm, left, caf::connect_atom::value, host, port)
        .receive(
            [&](caf::node_id&, caf::strong_actor_ptr& ptr,
                std::set<std::string>& remote_ifs) {
              found = std::move(ptr);
              ifs = std::move(remote_ifs);
            },
            [&](caf::error& err) { last = std::move(err); });
    if (found) {
      if (!std::includes(ifs.begin(), ifs.end(), expected_ifs.begin(),
                         expected_ifs.end()))
        return make_error(ec::mismatch,
                          "the actor at " + where +
                              " is not a kvferry directory of this version "
                              "(its message interface differs)");
      return caf::actor_cast<directory_actor>(std::move(found));
    }
    if (last == caf::sec::request_timeout)
      break;
    if (last == caf::sec::incompatible_application_ids) // another build
      return make_error(ec::mismatch,
                        "the directory at " + where + ": " + render(last));
    // Refused: the directory may still be starting; try again shortly.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return make_error(ec::unreachable,
                    "cannot reach the directory at " + where + " within " +
                        as_ms(timeout) + ": " +
                        (last ? render(last) : std::string{"timed out"}));
}

} // namespace kvferry
