// The metrics registry and the Prometheus text rendering. The exporter (the
// HTTP side) is in metrics_http.cpp.
#include "kvferry/runtime/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace kvferry::metrics {

// ---- histogram

histogram::histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)),
      buckets_(new std::atomic<std::uint64_t>[bounds_.size() + 1]) {
  for (std::size_t i = 0; i <= bounds_.size(); ++i)
    buckets_[i].store(0);
}

void histogram::observe(double value) noexcept {
  // Few buckets: a linear scan beats a binary search's branches.
  std::size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i])
    ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  auto old_bits = sum_bits_.load(std::memory_order_relaxed);
  for (;;) {
    double old_sum;
    std::memcpy(&old_sum, &old_bits, sizeof old_sum);
    double new_sum = old_sum + value;
    std::uint64_t new_bits;
    std::memcpy(&new_bits, &new_sum, sizeof new_bits);
    if (sum_bits_.compare_exchange_weak(old_bits, new_bits,
                                        std::memory_order_relaxed))
      break;
  }
}

histogram::snapshot histogram::read() const {
  snapshot s;
  s.upper_bounds = bounds_;
  std::uint64_t running = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative.push_back(running);
  }
  // The +Inf bucket and _count must agree for a scraper; use the bucket sum
  // for both rather than count_, which may be one observation ahead.
  s.count = running;
  auto bits = sum_bits_.load(std::memory_order_relaxed);
  std::memcpy(&s.sum, &bits, sizeof s.sum);
  return s;
}

const std::vector<double>& duration_buckets() {
  static const std::vector<double> buckets{
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
      0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
  return buckets;
}

// ---- names and formatting

namespace {

enum metric_type { counter_type = 0, gauge_type = 1, histogram_type = 2 };

const char* type_name(int type) {
  switch (type) {
  case counter_type:
    return "counter";
  case gauge_type:
    return "gauge";
  default:
    return "histogram";
  }
}

bool valid_metric_name(const std::string& name) {
  if (name.empty())
    return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
              c == ':' || (i > 0 && c >= '0' && c <= '9');
    if (!ok)
      return false;
  }
  return true;
}

bool valid_label_name(const std::string& name) {
  if (name.empty() || name.rfind("__", 0) == 0 || name == "le")
    return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
              (i > 0 && c >= '0' && c <= '9');
    if (!ok)
      return false;
  }
  return true;
}

std::string escape_help(const std::string& help) {
  std::string out;
  for (char c : help) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

// Go's strconv formatting, which Prometheus uses: +Inf, -Inf, NaN, and the
// shortest decimal that reads back to the same double.
std::string format_double(double v) {
  if (std::isnan(v))
    return "NaN";
  if (std::isinf(v))
    return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

void append_labels(std::string& out, const labels& label_set,
                   const char* extra_name = nullptr,
                   const std::string& extra_value = {}) {
  if (label_set.empty() && extra_name == nullptr)
    return;
  out += '{';
  bool first = true;
  for (auto& [name, value] : label_set) {
    if (!first)
      out += ',';
    first = false;
    out += name;
    out += "=\"";
    out += escape_label_value(value);
    out += '"';
  }
  if (extra_name != nullptr) {
    if (!first)
      out += ',';
    out += extra_name;
    out += "=\"";
    out += extra_value;
    out += '"';
  }
  out += '}';
}

} // namespace

std::string escape_label_value(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

// ---- registry

struct registry::family {
  std::string name;
  std::string help;
  int type = counter_type;
  std::vector<double> bounds;
  std::vector<std::string> label_names; // fixed by the first series
  std::map<labels, std::unique_ptr<counter>> counters;
  std::map<labels, std::unique_ptr<gauge>> gauges;
  std::map<labels, std::unique_ptr<histogram>> histograms;
  std::size_t series_count() const {
    return counters.size() + gauges.size() + histograms.size();
  }
};

registry::registry() {
  auto& f = family_for(
      "kvferry_metrics_series_dropped_total",
      "Label sets folded into label value _other because a family reached "
      "its series limit",
      counter_type, nullptr);
  dropped_series_ = static_cast<counter*>(series_for(f, {}));
}

registry::~registry() = default;

registry& registry::global() {
  static registry instance;
  return instance;
}

registry::family& registry::family_for(const std::string& name,
                                       const std::string& help, int type,
                                       const std::vector<double>* bounds) {
  if (!valid_metric_name(name))
    throw std::invalid_argument(
        fmt::format("metrics: invalid metric name '{}'", name));
  auto it = families_.find(name);
  if (it == families_.end()) {
    auto f = std::make_unique<family>();
    f->name = name;
    f->help = help;
    f->type = type;
    if (bounds != nullptr) {
      if (!std::is_sorted(bounds->begin(), bounds->end()) ||
          std::adjacent_find(bounds->begin(), bounds->end()) != bounds->end())
        throw std::invalid_argument(fmt::format(
            "metrics: histogram '{}' needs strictly ascending buckets", name));
      f->bounds = *bounds;
    }
    it = families_.emplace(name, std::move(f)).first;
  }
  auto& f = *it->second;
  if (f.type != type || (bounds != nullptr && f.bounds != *bounds))
    throw std::invalid_argument(fmt::format(
        "metrics: '{}' is already registered as a {} with other settings", name,
        type_name(f.type)));
  return f;
}

void* registry::series_for(family& f, const labels& label_set) {
  std::vector<std::string> names;
  for (auto& [name, value] : label_set) {
    if (!valid_label_name(name))
      throw std::invalid_argument(fmt::format(
          "metrics: invalid label name '{}' on '{}'", name, f.name));
    names.push_back(name);
  }
  if (f.series_count() == 0)
    f.label_names = names;
  else if (f.label_names != names)
    throw std::invalid_argument(
        fmt::format("metrics: '{}' has labels ({}), not ({})", f.name,
                    fmt::join(f.label_names, ","), fmt::join(names, ",")));
  const labels* key = &label_set;
  labels folded;
  auto exists = [&](const labels& k) {
    return f.counters.count(k) || f.gauges.count(k) || f.histograms.count(k);
  };
  if (!exists(label_set) && f.series_count() >= max_series_per_family) {
    for (auto& [name, value] : label_set)
      folded.emplace_back(name, "_other");
    key = &folded;
    if (dropped_series_ != nullptr)
      dropped_series_->inc();
  }
  switch (f.type) {
  case counter_type: {
    auto& slot = f.counters[*key];
    if (!slot)
      slot = std::make_unique<counter>();
    return slot.get();
  }
  case gauge_type: {
    auto& slot = f.gauges[*key];
    if (!slot)
      slot = std::make_unique<gauge>();
    return slot.get();
  }
  default: {
    auto& slot = f.histograms[*key];
    if (!slot)
      slot = std::make_unique<histogram>(f.bounds);
    return slot.get();
  }
  }
}

counter& registry::get_counter(const std::string& name, const std::string& help,
                               const labels& label_set) {
  std::lock_guard<std::mutex> guard(mutex_);
  return *static_cast<counter*>(
      series_for(family_for(name, help, counter_type, nullptr), label_set));
}

gauge& registry::get_gauge(const std::string& name, const std::string& help,
                           const labels& label_set) {
  std::lock_guard<std::mutex> guard(mutex_);
  return *static_cast<gauge*>(
      series_for(family_for(name, help, gauge_type, nullptr), label_set));
}

histogram& registry::get_histogram(const std::string& name,
                                   const std::string& help,
                                   const std::vector<double>& upper_bounds,
                                   const labels& label_set) {
  std::lock_guard<std::mutex> guard(mutex_);
  return *static_cast<histogram*>(series_for(
      family_for(name, help, histogram_type, &upper_bounds), label_set));
}

std::string registry::render() const {
  std::lock_guard<std::mutex> guard(mutex_);
  std::string out;
  for (auto& [name, f] : families_) {
    if (f->series_count() == 0)
      continue;
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name,
                       escape_help(f->help), name, type_name(f->type));
    for (auto& [label_set, c] : f->counters) {
      out += name;
      append_labels(out, label_set);
      out += fmt::format(" {}\n", c->value());
    }
    for (auto& [label_set, g] : f->gauges) {
      out += name;
      append_labels(out, label_set);
      out += fmt::format(" {}\n", g->value());
    }
    for (auto& [label_set, h] : f->histograms) {
      auto s = h->read();
      for (std::size_t i = 0; i <= s.upper_bounds.size(); ++i) {
        out += name + "_bucket";
        append_labels(out, label_set, "le",
                      i < s.upper_bounds.size()
                          ? format_double(s.upper_bounds[i])
                          : "+Inf");
        out += fmt::format(" {}\n", s.cumulative[i]);
      }
      out += name + "_sum";
      append_labels(out, label_set);
      out += " " + format_double(s.sum) + "\n";
      out += name + "_count";
      append_labels(out, label_set);
      out += fmt::format(" {}\n", s.count);
    }
  }
  return out;
}

// ---- the transfer metric set

transfer_metrics::transfer_metrics(registry& reg)
    : regions(reg.get_gauge(
          "kvferry_registered_regions",
          "Memory regions registered with the network plugin or CUDA IPC")),
      registered_bytes(reg.get_gauge("kvferry_registered_bytes",
                                     "Bytes in registered memory regions")),
      in_flight(reg.get_gauge("kvferry_transfers_in_flight",
                              "KV transfers started and not yet finished")),
      registry_(reg) {
}

transfer_metrics::peer_series& transfer_metrics::peer(const std::string& name) {
  std::lock_guard<std::mutex> guard(mutex_);
  auto& slot = peers_[name];
  if (slot)
    return *slot;
  auto direction = [&](const char* dir) {
    labels l{{"peer", name}, {"direction", dir}};
    return direction_series{
        &registry_.get_counter("kvferry_transfers_total",
                               "KV transfers completed", l),
        &registry_.get_counter("kvferry_transfer_bytes_total",
                               "KV cache bytes transferred", l),
        &registry_.get_histogram(
            "kvferry_transfer_duration_seconds",
            "Time from a transfer's first send/receive to its completion",
            duration_buckets(), l)};
  };
  slot = std::make_unique<peer_series>(
      peer_series{direction("send"), direction("recv"),
                  &registry_.get_gauge("kvferry_comms",
                                       "Network plugin comms open to a peer",
                                       {{"peer", name}})});
  return *slot;
}

void transfer_metrics::count_error(const std::string& peer,
                                   const std::string& reason) {
  registry_
      .get_counter("kvferry_transfer_errors_total",
                   "KV transfers failed, by peer and reason",
                   {{"peer", peer}, {"reason", reason}})
      .inc();
}

void transfer_metrics::record(const std::string& peer_name, bool sent,
                              std::uint64_t bytes, double seconds) {
  auto& series = peer(peer_name);
  auto& d = sent ? series.send : series.recv;
  d.transfers->inc();
  d.bytes->inc(bytes);
  d.seconds->observe(seconds);
}

} // namespace kvferry::metrics
