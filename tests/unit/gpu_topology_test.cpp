// GPU choice without GPUs: ordinal validation, the copy ceiling bench ipc
// measures against, and the peer-access matrix `kvferry info` prints, all on a
// fake topology (CI has no GPU, let alone two with NVLink).
#include <functional>
#include <set>
#include <string>
#include <utility>

#include <doctest/doctest.h>

#include "kvferry/transport/gpu_topology.hpp"

using namespace kvferry::transport;

namespace {

class fake_topology final : public gpu_topology {
public:
  fake_topology(int count, std::set<std::pair<int, int>> peers,
                std::string why = {})
      : count_(count), peers_(std::move(peers)), why_(std::move(why)) {}
  int device_count() const override { return count_; }
  std::string why_none() const override { return why_; }
  bool can_access_peer(int from, int to) const override {
    return peers_.count({from, to}) > 0;
  }
  void enable_peer_access(int from, int to) override {
    enabled.insert({from, to});
  }
  std::set<std::pair<int, int>> enabled;

private:
  int count_;
  std::set<std::pair<int, int>> peers_;
  std::string why_;
};

std::string message_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

} // namespace

TEST_CASE("an existing ordinal passes; a missing one names the option, the "
          "ordinal and the count") {
  fake_topology two(2, {});
  CHECK_NOTHROW(check_gpu_ordinal(two, 0, "--gpu"));
  CHECK_NOTHROW(check_gpu_ordinal(two, 1, "--gpu"));
  CHECK_THROWS_AS(check_gpu_ordinal(two, 2, "--gpu"), std::invalid_argument);
  CHECK(message_of([&] { check_gpu_ordinal(two, 2, "--gpu"); }) ==
        "--gpu 2: no such GPU; this machine has 2 (0..1)");
  CHECK(message_of([&] { check_gpu_ordinal(two, -1, "--src-gpu"); }) ==
        "--src-gpu -1: no such GPU; this machine has 2 (0..1)");
}

TEST_CASE("without any GPU the error says why there is none") {
  fake_topology none(0, {}, "this build has no CUDA support");
  CHECK(message_of([&] { check_gpu_ordinal(none, 0, "--gpu"); }) ==
        "--gpu 0: no such GPU; this machine has none (this build has no CUDA "
        "support)");
}

TEST_CASE("one GPU for both ends is measured against a same-device copy") {
  fake_topology one(1, {});
  auto pair = plan_gpu_pair(one, 0, 0);
  CHECK(pair.same_device());
  CHECK(pair.ceiling == copy_ceiling::same_device_memcpy);
  CHECK(std::string{describe(pair.ceiling)}.find("cudaMemcpyAsync") !=
        std::string::npos);
}

TEST_CASE("two GPUs with peer access are measured against cudaMemcpyPeer") {
  fake_topology nvlink(2, {{0, 1}, {1, 0}});
  auto pair = plan_gpu_pair(nvlink, 0, 1);
  CHECK_FALSE(pair.same_device());
  CHECK(pair.src == 0);
  CHECK(pair.dst == 1);
  CHECK(pair.ceiling == copy_ceiling::peer_memcpy);
  CHECK(std::string{describe(pair.ceiling)}.find("cudaMemcpyPeer") !=
        std::string::npos);
}

TEST_CASE("the destination must reach the source: the kernels run on the "
          "destination") {
  // Only 1 -> 0 is possible: copying from 0 to 1 works, from 1 to 0 does not.
  fake_topology one_way(2, {{1, 0}});
  CHECK(plan_gpu_pair(one_way, 0, 1).ceiling == copy_ceiling::peer_memcpy);
  CHECK_THROWS_AS(plan_gpu_pair(one_way, 1, 0), no_peer_access);
  auto why = message_of([&] { plan_gpu_pair(one_way, 1, 0); });
  CHECK(why.find("GPU 0 cannot access GPU 1") != std::string::npos);
  CHECK(why.find("--src-gpu 1 --dst-gpu 0") != std::string::npos);
}

TEST_CASE("CUDA IPC between two workers needs peer access from the sender "
          "to the receiver") {
  // Only 0 -> 1 is possible: the sender's kernel on 0 may write GPU 1.
  fake_topology one_way(2, {{0, 1}});
  CHECK_NOTHROW(check_ipc_peer_access(one_way, 0, 1));
  CHECK_NOTHROW(check_ipc_peer_access(one_way, 1, 1));
  CHECK_THROWS_AS(check_ipc_peer_access(one_way, 1, 0), no_peer_access);
  auto why = message_of([&] { check_ipc_peer_access(one_way, 1, 0); });
  CHECK(why.find("GPU 1 cannot access GPU 0") != std::string::npos);
  CHECK(why.find("--transport net") != std::string::npos);
  CHECK(one_way.enabled.empty()); // a check, not a side effect
}

TEST_CASE("a pair with a missing GPU names which end is wrong") {
  fake_topology one(1, {});
  CHECK(message_of([&] { plan_gpu_pair(one, 0, 1); }) ==
        "--dst-gpu 1: no such GPU; this machine has 1 (0..0)");
  CHECK(message_of([&] { plan_gpu_pair(one, 3, 0); }) ==
        "--src-gpu 3: no such GPU; this machine has 1 (0..0)");
}

TEST_CASE(
    "the peer-access matrix has one row per GPU and is empty below two GPUs") {
  CHECK(format_peer_matrix(fake_topology(0, {})).empty());
  CHECK(format_peer_matrix(fake_topology(1, {})).empty());
  auto lines = format_peer_matrix(fake_topology(3, {{0, 1}, {1, 0}, {2, 0}}));
  REQUIRE(lines.size() == 4);
  CHECK(lines[0] == "from\\to    0    1    2");
  CHECK(lines[1] == "      0    -  yes   no");
  CHECK(lines[2] == "      1  yes    -   no");
  CHECK(lines[3] == "      2  yes   no    -");
}
