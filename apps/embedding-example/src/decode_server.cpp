// The decode server and its scheduler: admits the trace's requests at their
// (scaled) arrival times, in order, as soon as its cache has their blocks;
// asks the prefill server to prefill each (notify) and pulls its KV into
// those blocks layer by layer (node::pull); verifies every byte when the
// pull completes, "decodes" (a modelled step per output token, at most
// --max-decode-steps), frees the blocks, and prints the report.
#include <cstdio>
#include <deque>
#include <map>

#include "content.hpp"
#include "gpu.hpp"
#include "report.hpp"
#include "server.hpp"
#include "trace_plan.hpp"

namespace example {

namespace {

class decode_server : public server {
public:
  explicit decode_server(const decode_options& o)
      : server(o, "decode"), o_(o),
        plan_(load_trace(o.trace, o.requests, o.time_scale,
                         o.max_prompt_blocks * o.geometry.block_tokens)) {}

  int run();

private:
  struct open_request {
    planned_request q;
    std::vector<std::uint64_t> blocks;
    request_record rec;
    bool pulled = false, reported = false;
    std::int64_t decode_due = 0; // the last decode step ends
  };

  std::int64_t now() const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() -
                                                                t0_)
        .count();
  }
  void on_message(const std::string& from, const message& m) override;
  void connect();
  void admit();
  void pulled(std::uint64_t id,
              const kvferry::result<kvferry::request_stats>& r);
  void finish_decoded();
  void check_deadlines();
  clock::time_point next_wakeup() const;
  bool finished() const {
    return next_ == plan_.requests.size() && waiting_.empty() && open_.empty();
  }
  void say_goodbye(const std::string& verb);

  decode_options o_;
  trace_plan plan_;
  std::string prefill_;
  bool hello_ok_ = false, bye_ok_ = false;
  clock::time_point t0_;
  std::size_t next_ = 0;                // next request of the plan to arrive
  std::deque<planned_request> waiting_; // arrived, short of blocks
  std::map<std::uint64_t, open_request> open_;
  std::vector<request_record> done_;
  std::string fatal_;
};

void decode_server::connect() {
  start_node({});
  auto peer = node_->connect(o_.peer_host, o_.peer_port);
  if (!peer.ok())
    throw fatal("cannot reach the prefill server at " + o_.peer_host + ":" +
                std::to_string(o_.peer_port) + ": " + peer.error().message());
  prefill_ = *peer;
  send(prefill_, hello(options_.geometry));
  const auto until = clock::now() + options_.timeout;
  while (!hello_ok_ && fatal_.empty() && clock::now() < until)
    box_.run_until(until);
  if (!fatal_.empty())
    throw fatal(fatal_);
  if (!hello_ok_)
    throw fatal("prefill server '" + prefill_ + "' did not answer hello in " +
                std::to_string(options_.timeout.count()) + " ms");
}

int decode_server::run() {
  connect();
  std::printf("decode server '%s': %s, %s; prefill server '%s' at %s:%u; "
              "%zu requests of %s (%s, time x%g)\n",
              options_.name.c_str(), memory().c_str(),
              options_.geometry.describe().c_str(), prefill_.c_str(),
              o_.peer_host.c_str(), o_.peer_port, plan_.requests.size(),
              o_.trace.c_str(), plan_.format.c_str(), o_.time_scale);
  std::fflush(stdout);
  t0_ = clock::now();
  try {
    while (!finished() && fatal_.empty()) {
      admit();
      finish_decoded();
      check_deadlines();
      if (fatal_.empty() && !finished())
        box_.run_until(next_wakeup());
    }
  } catch (const std::exception& e) {
    fatal_ = e.what();
  }
  const double wall_s = static_cast<double>(now()) / 1e9;
  if (!fatal_.empty()) {
    say_goodbye("abort " + fatal_);
    throw fatal(fatal_ + " (" + std::to_string(done_.size()) + " of " +
                std::to_string(plan_.requests.size()) + " requests were done)");
  }
  say_goodbye("bye");
  run_report rep;
  rep.title = "kvferry embedding example: " + std::to_string(done_.size()) +
              " requests of " + o_.trace + " (" + plan_.format + ", time x" +
              std::to_string(o_.time_scale).substr(0, 5) + "), " + memory() +
              ", " + options_.geometry.describe();
  rep.wall_s = wall_s;
  rep.done = done_;
  rep.capped = plan_.capped;
  std::printf("%s", format_report(rep).c_str());
  return 0;
}

void decode_server::say_goodbye(const std::string& line) {
  if (prefill_.empty() || peer_gone(prefill_))
    return;
  if (!node_->notify(prefill_, line).ok())
    return;
  // The prefill answers, then waits for this node to go: both exit clean.
  const auto until = clock::now() + std::chrono::seconds(2);
  while (!bye_ok_ && clock::now() < until)
    box_.run_until(until);
}

void decode_server::on_message(const std::string& from, const message& m) {
  if (from != prefill_)
    return;
  if (m.verb == "hello-ok") {
    hello_ok_ = true;
  } else if (m.verb == "hello-refused") {
    fatal_ = "prefill server '" + from + "' refused: " + m.text;
  } else if (m.verb == "bye-ok") {
    bye_ok_ = true;
  } else if (m.verb == "prefilled" && m.numbers.size() == 3) {
    auto it = open_.find(m.numbers[0]);
    if (it == open_.end())
      return;
    it->second.rec.prefill_queue_ns = static_cast<std::int64_t>(m.numbers[1]);
    it->second.rec.prefill_ns = static_cast<std::int64_t>(m.numbers[2]);
    it->second.reported = true;
  } else if (m.verb == "failed") {
    fatal_ = "prefill server '" + from + "' failed request" +
             (m.numbers.empty() ? "" : " " + std::to_string(m.numbers[0])) +
             ": " + m.text;
  }
}

// Arrivals join the queue; the queue's head is admitted once the cache has
// its blocks (in order: a long prompt is not overtaken forever).
void decode_server::admit() {
  const auto t = now();
  while (next_ < plan_.requests.size() && plan_.requests[next_].arrival_ns <= t)
    waiting_.push_back(plan_.requests[next_++]);
  while (!waiting_.empty()) {
    const auto& q = waiting_.front();
    const auto n = options_.geometry.blocks_for(q.tokens);
    auto blocks = blocks_.allocate(n);
    if (!blocks)
      return;
    const std::uint64_t id = q.index + 1;
    auto& r = open_[id];
    r.q = q;
    r.blocks = std::move(*blocks);
    r.rec.id = id;
    r.rec.tokens = q.tokens;
    r.rec.arrival_ns = q.arrival_ns;
    r.rec.admitted_ns = now();
    waiting_.pop_front();
    send(prefill_, format_message("prefill", {id, r.q.tokens, n}));
    auto done = node_->pull(id, prefill_, r.blocks);
    done.on_done([this, id](const auto& result) {
      box_.post([this, id, result] { pulled(id, result); });
    });
  }
}

void decode_server::pulled(std::uint64_t id,
                           const kvferry::result<kvferry::request_stats>& res) {
  auto& r = open_.at(id);
  if (!res.ok()) {
    fatal_ = "request " + std::to_string(id) + " (trace request " +
             std::to_string(r.q.index) + ") from prefill server '" + prefill_ +
             "': " + res.error().message();
    return;
  }
  r.pulled = true;
  r.rec.kv_ready_ns = now();
  r.rec.bytes = res->bytes;
  r.rec.data_ns = res->data.count();
  r.rec.ipc = res->ipc;
  auto bad = model_ ? model_->verify(id, r.blocks, options_.timeout)
                    : verify_request_host(cache_.layout(), cache_.bases(), id,
                                          r.blocks);
  if (!bad.empty()) {
    fatal_ = "the KV that arrived differs from what the prefill wrote: " + bad;
    return;
  }
  // The modelled decode: the first step gives the first token.
  const auto step = std::chrono::nanoseconds(o_.decode_step).count();
  const auto steps = static_cast<std::int64_t>(std::clamp<std::uint64_t>(
      r.q.output_tokens, 1, std::max<std::uint64_t>(1, o_.max_decode_steps)));
  r.rec.first_token_ns = now() + step;
  r.decode_due = r.rec.first_token_ns + (steps - 1) * step;
}

void decode_server::finish_decoded() {
  const auto t = now();
  for (auto it = open_.begin(); it != open_.end();) {
    auto& r = it->second;
    if (!r.pulled || !r.reported || t < r.decode_due) {
      ++it;
      continue;
    }
    blocks_.release(r.blocks);
    done_.push_back(r.rec);
    it = open_.erase(it);
  }
}

// Every wait is bounded: a request whose KV or prefill report does not come
// ends the run naming it; so does the prefill server's disappearance.
void decode_server::check_deadlines() {
  const auto limit = std::chrono::nanoseconds(3 * options_.timeout).count();
  const auto t = now();
  for (const auto& [id, r] : open_) {
    if (!r.pulled && t - r.rec.admitted_ns > limit)
      fatal_ = "request " + std::to_string(id) + ": no KV " +
               std::to_string(limit / 1000000) +
               " ms after it was admitted (kvferry's pull still open)";
    else if (r.pulled && !r.reported && t - r.rec.kv_ready_ns > limit)
      fatal_ = "request " + std::to_string(id) + ": prefill server '" +
               prefill_ + "' never reported its prefill";
  }
  if (peer_gone(prefill_))
    fatal_ = "prefill server '" + prefill_ + "' is gone (" +
             std::to_string(open_.size()) + " requests open)";
}

clock::time_point decode_server::next_wakeup() const {
  auto t =
      now() + std::chrono::nanoseconds(std::chrono::milliseconds(100)).count();
  if (next_ < plan_.requests.size())
    t = std::min(t, plan_.requests[next_].arrival_ns);
  for (const auto& [id, r] : open_)
    if (r.pulled && r.reported)
      t = std::min(t, r.decode_due);
  return t0_ + std::chrono::nanoseconds(t);
}

} // namespace

int run_decode(const decode_options& o) {
  return decode_server(o).run();
}

} // namespace example
