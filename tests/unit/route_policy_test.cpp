// The routing policies (actors/route_policy.hpp), shared by the router actor
// and the simulator: who gets the next request under round-robin,
// least-loaded and prefix-aware routing, that ties go to the first worker,
// that dead workers are never picked, and that the same calls give the same
// choices.
#include <algorithm>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "kvferry/actors/route_policy.hpp"

using namespace kvferry;

namespace {

using ids = std::vector<std::uint64_t>;

// (prefill, decode) of the next request.
std::pair<std::uint32_t, std::uint32_t> next(route_policy& p, double cost = 1,
                                             std::int64_t load = 1,
                                             const ids& prefix = {}) {
  auto c = p.pick(cost, load, prefix);
  REQUIRE(c.has_value());
  return {c->prefill, c->decode};
}

using pair = std::pair<std::uint32_t, std::uint32_t>;

} // namespace

TEST_CASE("routing names parse, long and short") {
  CHECK(parse_routing("round-robin") == routing::round_robin);
  CHECK(parse_routing("rr") == routing::round_robin);
  CHECK(parse_routing("least-loaded") == routing::least_loaded);
  CHECK(parse_routing("ll") == routing::least_loaded);
  CHECK(parse_routing("prefix-aware") == routing::prefix_aware);
  CHECK(parse_routing("prefix") == routing::prefix_aware);
  CHECK_FALSE(parse_routing("random").has_value());
}

TEST_CASE("round-robin: each role's workers in turn, skipping dead ones") {
  route_policy p{routing::round_robin, 2, {0, 0, 0}};
  CHECK(next(p) == pair{0, 0});
  CHECK(next(p) == pair{1, 1});
  CHECK(next(p) == pair{0, 2});
  CHECK(next(p) == pair{1, 0});
  p.decode_down(1);
  CHECK(next(p) == pair{0, 2}); // decode 1 is skipped
  CHECK(next(p) == pair{1, 0});
  CHECK(next(p) == pair{0, 2});
  p.prefill_down(0);
  CHECK(next(p) == pair{1, 0});
  CHECK(next(p) == pair{1, 2});
}

TEST_CASE("least-loaded: the least routed and not done; ties to the first") {
  route_policy p{routing::least_loaded, 3, {0, 0}};
  CHECK(next(p, 10, 100) == pair{0, 0}); // all idle: the first
  CHECK(next(p, 5, 50) == pair{1, 1});
  CHECK(next(p, 7, 70) == pair{2, 1}); // prefill 2 idle; decode 1 has 50
  // prefill: 10, 5, 7; decode: 100, 120.
  CHECK(next(p, 1, 1) == pair{1, 0});
  p.prefill_done(0, 10); // prefill 0 is idle again
  p.decode_done(1, 120); // decode 1 too
  CHECK(next(p, 1, 1) == pair{0, 1});
  p.prefill_down(0);
  p.prefill_done(1, 6);
  CHECK(next(p, 1, 1) == pair{1, 1}); // prefill 1 at 0, 0 dead
}

TEST_CASE("prefix-aware: the longest leading run of ids wins, load breaks "
          "ties; the prefill worker is least-loaded") {
  route_policy p{routing::prefix_aware, 2, {8, 8, 8}};
  p.landed(1, {10, 11, 12});
  p.landed(2, {10, 20});
  CHECK(next(p, 1, 1, {10, 11, 99}) == pair{0, 1}); // 2 leading ids at 1
  CHECK(next(p, 1, 1, {10, 20, 11}) == pair{1, 2}); // 2 leading at 2
  CHECK(next(p, 1, 1, {30, 10}) == pair{0, 0});     // none leads: least load
  CHECK(next(p, 1, 1, {}) == pair{1, 0});           // all at load 1: the first
  CHECK(next(p, 1, 1, {10}) == pair{0, 1}); // 1 and 2 hold it; 1 is first
  p.decode_down(1);
  CHECK(next(p, 1, 1, {10, 11, 12}) == pair{1, 2}); // 1 is dead
}

TEST_CASE("a prefix cache forgets the least recently used ids first") {
  prefix_cache c{3};
  c.touch({1, 2, 3});
  CHECK(c.leading({1, 2, 3}) == 3);
  c.touch({1}); // 2 is now the oldest
  c.touch({4}); // evicts 2
  CHECK(c.leading({1, 2}) == 1);
  CHECK(c.leading({3, 4, 1}) == 3);
  prefix_cache none{0};
  none.touch({1});
  CHECK(none.leading({1}) == 0);
}

TEST_CASE("a prefix cache agrees with a plain LRU list over many touches") {
  // The reference: most recent first, at most `capacity` ids.
  struct reference {
    std::size_t capacity;
    std::vector<std::uint64_t> order;
    void touch(const ids& xs) {
      for (auto x : xs) {
        auto it = std::find(order.begin(), order.end(), x);
        if (it != order.end())
          order.erase(it);
        else if (order.size() == capacity)
          order.pop_back();
        order.insert(order.begin(), x);
      }
    }
    std::size_t leading(const ids& xs) const {
      std::size_t n = 0;
      while (n < xs.size() &&
             std::find(order.begin(), order.end(), xs[n]) != order.end())
        ++n;
      return n;
    }
  };
  for (std::size_t capacity : {1, 7, 40}) {
    prefix_cache cache{capacity};
    reference ref{capacity, {}};
    std::mt19937_64 rng{capacity};
    for (int step = 0; step < 5000; ++step) {
      ids xs(1 + rng() % 4);
      for (auto& x : xs)
        x = rng() % 100; // ids repeat: hits, misses and evictions
      REQUIRE(cache.leading(xs) == ref.leading(xs));
      cache.touch(xs);
      ref.touch(xs);
    }
  }
}

TEST_CASE("no live worker of a role: no route") {
  route_policy p{routing::least_loaded, 1, {0}};
  p.decode_down(0);
  CHECK_FALSE(p.pick(1, 1, {}).has_value());
}

TEST_CASE("the same calls give the same choices") {
  auto run = [] {
    route_policy p{routing::prefix_aware, 4, {16, 16, 16}};
    std::vector<pair> got;
    for (std::uint64_t i = 0; i < 200; ++i) {
      ids prefix{i % 7, i % 5};
      got.push_back(next(p, double(i % 13), std::int64_t(i % 11), prefix));
      if (i % 3 == 0)
        p.landed(got.back().second, prefix);
      if (i % 4 == 0)
        p.prefill_done(got.back().first, double(i % 13));
      if (i == 100)
        p.decode_down(2);
    }
    return got;
  };
  CHECK(run() == run());
}
