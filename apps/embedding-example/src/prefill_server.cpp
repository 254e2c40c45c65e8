// The prefill server: asked by the decode server to prefill request r, it
// takes blocks of its own cache (waiting, in order, while there are too
// few), offers them to the decode side with node::advertise (layer by
// layer), runs the model step one layer at a time marking each layer ready,
// and frees the blocks when kvferry says the pull is over.
#include <algorithm>
#include <cstdio>
#include <deque>
#include <fstream>
#include <map>

#include "content.hpp"
#include "gpu.hpp"
#include "report.hpp"
#include "server.hpp"

namespace example {

namespace {

std::int64_t since(clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - t)
      .count();
}

class prefill_server : public server {
public:
  explicit prefill_server(const prefill_options& o)
      : server(o, "prefill"), o_(o) {}

  int run();

private:
  struct waiting {
    std::uint64_t id, tokens, blocks;
    clock::time_point since;
  };
  struct open_request {
    std::vector<std::uint64_t> blocks;
    std::int64_t queue_ns = 0, compute_ns = 0;
    std::uint32_t next_layer = 0;       // the next layer the model writes
    clock::time_point start, layer_due; // its slot on the model
    clock::duration per_layer{0};       // modelled time of one layer
  };

  void on_message(const std::string& from, const message& m) override;
  void start_waiting();
  void prefill(const waiting& w, std::vector<std::uint64_t> blocks);
  void run_model();
  void write_layer(std::uint64_t id, open_request& r);
  clock::time_point next_layer_due() const;
  void freed(std::uint64_t id,
             const kvferry::result<kvferry::request_stats>& r);

  prefill_options o_;
  std::string decode_;        // who said hello
  std::deque<waiting> queue_; // short of blocks, in arrival order
  std::map<std::uint64_t, open_request> open_;
  std::string fatal_;
  bool bye_ = false;
  std::uint64_t served_ = 0, bytes_ = 0;
  clock::time_point model_free_; // the modelled model is busy until then
};

int prefill_server::run() {
  kvferry::node_options no;
  no.bind = o_.bind;
  no.port = o_.port;
  start_node(std::move(no));
  std::printf("prefill server '%s': %s, %s; listening on %s:%u\n",
              options_.name.c_str(), memory().c_str(),
              options_.geometry.describe().c_str(), o_.bind.c_str(),
              node_->port());
  std::fflush(stdout);
  if (!o_.port_file.empty() &&
      !(std::ofstream(o_.port_file) << node_->port() << "\n"))
    throw fatal("cannot write --port-file " + o_.port_file);

  const auto started = clock::now();
  while (!bye_ && fatal_.empty()) {
    box_.run_until(next_layer_due());
    run_model();
    if (decode_.empty() && clock::now() - started > o_.accept_timeout)
      fatal_ = "no decode server said hello within " +
               std::to_string(o_.accept_timeout.count()) + " ms";
    else if (!decode_.empty() && peer_gone(decode_))
      fatal_ = "decode server '" + decode_ + "' is gone (" +
               std::to_string(open_.size()) + " requests open, " +
               std::to_string(queue_.size()) + " waiting for blocks)";
  }
  if (!fatal_.empty())
    throw fatal(fatal_);
  // Let the goodbye reach the decode server before this node stops.
  send(decode_, "bye-ok");
  const auto until = clock::now() + std::chrono::seconds(2);
  while (clock::now() < until && !peer_gone(decode_))
    box_.run_until(clock::now() + std::chrono::milliseconds(20));
  std::printf("prefill server '%s': %llu requests prefilled, %.1f MiB "
              "pulled by '%s'; peak RSS %.0f MiB\n",
              options_.name.c_str(), static_cast<unsigned long long>(served_),
              static_cast<double>(bytes_) / (1 << 20), decode_.c_str(),
              peak_rss_mib());
  return 0;
}

void prefill_server::on_message(const std::string& from, const message& m) {
  if (m.verb == "hello") {
    auto why = hello_mismatch(m, options_.geometry);
    send(from, why.empty() ? "hello-ok" : "hello-refused " + why);
    if (!why.empty())
      fatal_ = "refused decode server '" + from + "': " + why;
    decode_ = from;
  } else if (from != decode_) {
    std::fprintf(stderr, "prefill: ignoring '%s' from '%s' (no hello)\n",
                 m.verb.c_str(), from.c_str());
  } else if (m.verb == "prefill" && m.numbers.size() == 3) {
    if (m.numbers[2] > options_.geometry.blocks)
      fatal_ = "request " + std::to_string(m.numbers[0]) + " needs " +
               std::to_string(m.numbers[2]) + " blocks, the cache has " +
               std::to_string(options_.geometry.blocks);
    queue_.push_back({m.numbers[0], m.numbers[1], m.numbers[2], clock::now()});
    start_waiting();
  } else if (m.verb == "bye") {
    bye_ = true;
  } else if (m.verb == "abort") {
    send(from, "bye-ok");
    fatal_ = "decode server '" + from + "' gave up: " + m.text;
  }
}

void prefill_server::start_waiting() {
  while (!queue_.empty() && fatal_.empty()) {
    auto blocks = blocks_.allocate(queue_.front().blocks);
    if (!blocks)
      return; // freed() calls again
    auto w = queue_.front();
    queue_.pop_front();
    prefill(w, std::move(*blocks));
  }
}

void prefill_server::prefill(const waiting& w,
                             std::vector<std::uint64_t> blocks) {
  auto& r = open_[w.id];
  r.blocks = std::move(blocks);
  // The model computes one request at a time, layer after layer: this one
  // gets the model once it is free (--prefill-tokens-per-s; 0: no modelled
  // time, each layer as fast as the stand-in writes it).
  const auto layers = options_.geometry.layers;
  if (o_.prefill_tokens_per_s > 0)
    r.per_layer = std::chrono::duration_cast<clock::duration>(
        std::chrono::duration<double>(static_cast<double>(w.tokens) /
                                      o_.prefill_tokens_per_s / layers));
  r.start = std::max(clock::now(), model_free_);
  r.layer_due = r.start + r.per_layer;
  model_free_ = r.start + r.per_layer * layers;
  r.queue_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(r.start - w.since)
          .count();
  auto done = node_->advertise(w.id, decode_, r.blocks, /*layerwise=*/true);
  done.on_done([this, id = w.id](const auto& result) {
    box_.post([this, id, result] { freed(id, result); });
  });
  if (model_)
    model_->begin(w.id, r.blocks);
  run_model();
}

// The stand-in model: every layer whose slot has come is written and marked
// ready at once (on a GPU: queued, with the event kvferry's copy waits
// for), so the first layers move while the last are computed.
void prefill_server::run_model() {
  const auto now = clock::now();
  for (auto& [id, r] : open_)
    while (r.next_layer < options_.geometry.layers && r.layer_due <= now) {
      write_layer(id, r);
      r.layer_due += r.per_layer;
    }
}

void prefill_server::write_layer(std::uint64_t id, open_request& r) {
  const auto l = r.next_layer++;
  void* event = nullptr;
  if (model_)
    event = model_->write_layer(id, l);
  else
    write_layer_host(cache_.layout(), cache_.bases(), id, l, r.blocks);
  auto ready = node_->layer_ready(id, l, event);
  if (!ready.ok())
    throw fatal("request " + std::to_string(id) + ": layer_ready(" +
                std::to_string(l) + "): " + ready.message());
  if (r.next_layer == options_.geometry.layers)
    r.compute_ns = since(r.start); // a GPU's own time comes at the end
}

clock::time_point prefill_server::next_layer_due() const {
  auto t = clock::now() + std::chrono::milliseconds(200);
  for (const auto& [id, r] : open_)
    if (r.next_layer < options_.geometry.layers)
      t = std::min(t, r.layer_due);
  return t;
}

void prefill_server::freed(
    std::uint64_t id, const kvferry::result<kvferry::request_stats>& result) {
  auto it = open_.find(id);
  if (it == open_.end())
    return;
  auto r = std::move(it->second);
  open_.erase(it);
  if (model_) // the kernels' time, unless the modelled time is longer
    r.compute_ns = std::max(r.compute_ns, model_->end(id));
  blocks_.release(r.blocks);
  if (!result.ok()) {
    fatal_ = "request " + std::to_string(id) + " for '" + decode_ +
             "': " + result.error().message();
    return;
  }
  ++served_;
  bytes_ += result->bytes;
  send(decode_,
       format_message("prefilled", {id, static_cast<std::uint64_t>(r.queue_ns),
                                    static_cast<std::uint64_t>(r.compute_ns)}));
  start_waiting();
}

} // namespace

int run_prefill(const prefill_options& o) {
  return prefill_server(o).run();
}

} // namespace example
