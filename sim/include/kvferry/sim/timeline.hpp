// Quantities over the run for the plots (link utilisation, queue lengths):
// the integral of each series over equal time buckets, in flat memory. The
// buckets start 1 ms wide and double (pairs merge) whenever the run outgrows
// `max_buckets` of them, so a run of any length ends with between
// max_buckets / 2 and max_buckets buckets. Deterministic.
#pragma once

#include <cstdint>
#include <vector>

namespace kvferry::sim {

class timeline {
public:
  static constexpr std::size_t max_buckets = 512;

  explicit timeline(std::size_t series) : sums_(series) {}

  /// Adds `value` held over [t0, t1) ns to series `s`.
  void add(std::size_t s, std::int64_t t0, std::int64_t t1, double value) {
    if (t1 <= t0 || value == 0)
      return;
    while (t1 > width_ * std::int64_t(max_buckets))
      widen();
    auto& sum = sums_[s];
    auto last = std::size_t((t1 - 1) / width_);
    if (sum.size() <= last)
      sum.resize(last + 1, 0.0);
    for (auto b = std::size_t(t0 / width_); b <= last; ++b) {
      auto lo = std::max<std::int64_t>(t0, std::int64_t(b) * width_);
      auto hi = std::min<std::int64_t>(t1, std::int64_t(b + 1) * width_);
      sum[b] += value * double(hi - lo);
    }
  }

  std::int64_t width_ns() const { return width_; }
  std::size_t series() const { return sums_.size(); }
  /// The mean of series `s` over bucket `b` (0 past its last value).
  double mean(std::size_t s, std::size_t b) const {
    return b < sums_[s].size() ? sums_[s][b] / double(width_) : 0.0;
  }

private:
  void widen() {
    for (auto& sum : sums_) {
      for (std::size_t i = 0; i < sum.size(); i += 2)
        sum[i / 2] = sum[i] + (i + 1 < sum.size() ? sum[i + 1] : 0.0);
      sum.resize((sum.size() + 1) / 2);
    }
    width_ *= 2;
  }

  std::int64_t width_ = 1'000'000; // ns
  std::vector<std::vector<double>> sums_;
};

} // namespace kvferry::sim
