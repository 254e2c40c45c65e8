// kvferry::node (node.hpp): the facade over the node's actors.
#include "kvferry/node.hpp"

#include <condition_variable>
#include <mutex>
#include <optional>
#include <utility>

namespace kvferry {

namespace detail {

/// What a completion handle shares with the node that finishes it.
struct completion_state {
  explicit completion_state(std::uint64_t request) : id(request) {}
  const std::uint64_t id;
  std::mutex mtx;
  std::condition_variable cv;
  std::optional<result<request_stats>> outcome;
  std::function<void(const result<request_stats>&)> callback;

  /// Records the outcome (the first one wins) and runs the callback.
  void finish(result<request_stats> r) {
    std::function<void(const result<request_stats>&)> f;
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

class node_impl {
public:
  std::string name;
};

} // namespace detail

namespace {

status not_yet(const char* what) {
  return {ec::internal,
          std::string{"kvferry::node::"} + what + ": not implemented yet"};
}

completion failed(std::uint64_t id, status why) {
  auto state = std::make_shared<detail::completion_state>(id);
  state->finish(std::move(why));
  return completion{std::move(state)};
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

void completion::on_done(std::function<void(const result<request_stats>&)> f) {
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

result<node> node::start(node_options opts) {
  (void)opts;
  return not_yet("start");
}

node::node(std::unique_ptr<detail::node_impl> impl) : impl_(std::move(impl)) {
}
node::node(node&&) noexcept = default;
node& node::operator=(node&&) noexcept = default;
node::~node() {
  stop();
}

void node::stop() {
}

const std::string& node::name() const {
  return impl_->name;
}

std::uint16_t node::port() const {
  return 0;
}

result<std::string> node::connect(const std::string&, std::uint16_t) {
  return not_yet("connect");
}

std::vector<std::string> node::peers() const {
  return {};
}

completion node::send(std::uint64_t id, const std::string&,
                      const std::vector<std::uint64_t>&,
                      const std::vector<std::uint64_t>&) {
  return failed(id, not_yet("send"));
}

completion node::advertise(std::uint64_t id, const std::string&,
                           const std::vector<std::uint64_t>&, bool) {
  return failed(id, not_yet("advertise"));
}

status node::layer_ready(std::uint64_t, std::uint32_t, void*) {
  return not_yet("layer_ready");
}

completion node::receive(std::uint64_t id, const std::string&,
                         const std::vector<std::uint64_t>&) {
  return failed(id, not_yet("receive"));
}

completion node::pull(std::uint64_t id, const std::string&,
                      const std::vector<std::uint64_t>&) {
  return failed(id, not_yet("pull"));
}

status node::notify(const std::string&, std::string) {
  return not_yet("notify");
}

void node::on_notification(
    std::function<void(const std::string&, const std::string&)>) {
}

} // namespace kvferry
