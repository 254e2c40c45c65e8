// Percentiles in flat memory: a log-linear histogram of non-negative integer
// values (nanoseconds here), 128 sub-buckets per power of two, so that a
// quantile is within 1/128 (0.8 %) of the exact one however many values were
// recorded. Deterministic: the same values give the same answers.
#pragma once

#include <array>
#include <cstdint>

namespace kvferry::sim {

class histogram {
public:
  static constexpr int sub_bits = 7; // 128 sub-buckets per octave
  static constexpr int octaves = 64 - sub_bits + 1;

  void add(std::uint64_t value) {
    ++counts_[index(value)];
    ++count_;
    sum_ += static_cast<double>(value);
    if (value > max_)
      max_ = value;
  }
  std::uint64_t count() const { return count_; }
  double mean() const { return count_ ? sum_ / double(count_) : 0; }
  std::uint64_t max() const { return max_; }

  /// The smallest recorded value v such that at least p (0..1) of the
  /// values are <= v, to the bucket's resolution (its lowest value, or the
  /// exact maximum for the top one); 0 when empty.
  std::uint64_t quantile(double p) const {
    if (count_ == 0)
      return 0;
    auto rank = static_cast<std::uint64_t>(p * double(count_ - 1)) + 1;
    if (rank >= count_)
      return max_;
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < counts_.size(); ++i) {
      seen += counts_[i];
      if (seen >= rank) {
        auto low = lowest(i);
        return low > max_ ? max_ : low;
      }
    }
    return max_;
  }

private:
  static constexpr std::uint64_t sub = std::uint64_t{1} << sub_bits;
  static std::size_t index(std::uint64_t v) {
    if (v < sub)
      return static_cast<std::size_t>(v);
    int octave = 63 - __builtin_clzll(v) - sub_bits + 1; // >= 1
    auto mantissa = (v >> (octave - 1)) - sub;           // 0..127 below 2*sub
    return static_cast<std::size_t>(octave) * sub +
           static_cast<std::size_t>(mantissa & (sub - 1));
  }
  static std::uint64_t lowest(std::size_t i) {
    auto octave = i / sub, mantissa = i % sub;
    if (octave == 0)
      return mantissa;
    return (sub + mantissa) << (octave - 1);
  }

  std::array<std::uint64_t, octaves * sub> counts_{};
  std::uint64_t count_ = 0;
  double sum_ = 0;
  std::uint64_t max_ = 0;
};

} // namespace kvferry::sim
