// `kvferry demo` end to end: a directory, a prefill and a decode worker
// (by default in the demo's own process, beside the router; --router
// separate: a process of its own), KV moved over kvsock and verified byte
// for byte.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <signal.h>
#include <string>

#include <doctest/doctest.h>

#include "kvferry_processes.hpp"
#include "run_kvferry.hpp"
#include "scoped_env.hpp"
#include "scratch_dir.hpp"
#include "slurp.hpp"

namespace {

using kvferry::test::run_result;

run_result run_kvferry(const std::string& args) {
  return kvferry::test::run_kvferry(args, 100);
}

run_result check_demo(const std::string& extra) {
  auto r = run_kvferry("demo --requests 20 --max-tokens 512 --quiet " + extra);
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("every byte of 20 requests verified") !=
        std::string::npos);
  CHECK(r.output.find("| 20 | 0 |") != std::string::npos);
  return r;
}

// The process among `parent`'s children whose command line holds `needle`,
// or -1.
pid_t child_with(pid_t parent, const std::string& needle) {
  for (const auto& entry : std::filesystem::directory_iterator{"/proc"}) {
    auto name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos)
      continue;
    auto stat = kvferry::test::slurp(entry.path() / "stat");
    auto after_comm = stat.rfind(')'); // "pid (comm) state ppid ..."
    if (after_comm == std::string::npos ||
        std::stoi(stat.substr(after_comm + 4)) != parent)
      continue;
    if (kvferry::test::slurp(entry.path() / "cmdline").find(needle) !=
        std::string::npos)
      return std::stoi(name);
  }
  return -1;
}

} // namespace

TEST_CASE("demo: push, whole requests") {
  check_demo("");
}

// The default: the router in the decode worker's process (the demo's), so a
// request crosses processes twice; the output says where the router ran.
TEST_CASE("demo: the router in the decode worker's process or its own") {
  auto r = check_demo("--pull --breakdown");
  CHECK(r.output.find("pull, router in the decode worker's process,") !=
        std::string::npos);
  r = check_demo("--pull --router separate");
  CHECK(r.output.find("pull, router in a process of its own,") !=
        std::string::npos);
  r = run_kvferry("demo --router nowhere");
  CHECK(r.status != 0);
  CHECK(r.output.find("--router: nowhere not in {decode,separate}") !=
        std::string::npos);
}

// With the router in the decode worker's process, the prefill worker is the
// only worker process: killed mid-run, it fails the requests in flight at
// once, naming it (the worker deadlines are 30 s), and the demo exits 1.
TEST_CASE("demo: a prefill worker killed mid-run fails the requests, naming "
          "it") {
  using namespace std::chrono;
  kvferry::test::child demo({"demo", "--pull", "--requests", "100000",
                             "--inflight", "4", "--max-tokens", "512",
                             "--timeout-ms", "30000"},
                            kvferry::test::kvferry_binary());
  INFO(demo.text);
  REQUIRE(demo.read_until_progress(seconds(60)));
  auto prefill = child_with(demo.pid, "demo-prefill-0");
  REQUIRE(prefill > 0);
  REQUIRE(kill(prefill, SIGKILL) == 0);
  auto killed_at = steady_clock::now();
  bool reported = demo.read_until("FAILED", seconds(25));
  auto took = duration_cast<milliseconds>(steady_clock::now() - killed_at);
  int status = demo.wait_exit(seconds(20));
  INFO(demo.text);
  INFO("the demo reported after " << took.count() << " ms");
  REQUIRE(reported);
  CHECK(status == 1);
  CHECK(took < seconds(5));
  CHECK(demo.text.find("demo-prefill-0") != std::string::npos);
  CHECK(demo.text.find("peer_down") != std::string::npos);
  CHECK(demo.text.find("router in the decode worker's process") !=
        std::string::npos);
}

TEST_CASE("demo: push, layer by layer") {
  check_demo("--layerwise");
}

TEST_CASE("demo: pull, with the breakdown's stages") {
  auto r = check_demo("--pull --breakdown");
  // Every answered request carries the producer's and the consumer's
  // timestamps: one row (p50, mean) per stage, from the router's send to the
  // producer, through the fill, to the consumer.
  INFO(r.output);
  CHECK(r.output.find("| stage | p50 us | mean us |") != std::string::npos);
  for (const char* stage :
       {"\n| to producer | ", "\n| fill | ", "\n| fill to hand-over | ",
        "\n| to consumer | ", "\n| to router | "})
    CHECK(r.output.find(stage) != std::string::npos);
  CHECK(r.output.find("stages of 20 requests") != std::string::npos);
  // Beside the run's rate, the rate while both requests were in flight:
  // answers 3 to 18 (the first and the last wave left out).
  CHECK(r.output.find("steady GB/s: ") != std::string::npos);
  CHECK(r.output.find("(requests 3-18 of 20 by answer, while 2 were in "
                      "flight all along") != std::string::npos);
}

// --verify sampled on host memory: the producer writes and the consumer
// checks one stamp per 4 KiB page (kv_stamp.hpp); the report says so.
TEST_CASE("demo: sampled verification, push by layer and pull") {
  for (const char* mode : {"--layerwise", "--pull --breakdown"}) {
    auto r = run_kvferry(
        std::string{"demo --gpu none --requests 20 --max-tokens 512 --quiet "
                    "--verify sampled "} +
        mode);
    INFO(r.output);
    CHECK(r.status == 0);
    CHECK(r.output.find("verify sampled; columns") != std::string::npos);
    CHECK(r.output.find("OK, 20 requests verified by sampling") !=
          std::string::npos);
  }
  auto r = run_kvferry("demo --verify most"); // refused by CLI11's check
  CHECK(r.status != 0);
  CHECK(r.output.find("--verify: most not in {full,sampled}") !=
        std::string::npos);
}

// The control-plane benchmark's shape (64 KiB requests, one in flight, so
// nearly every request rides on credit): checked for correctness only; its
// timing is measured by running the command, never asserted here.
TEST_CASE("demo: 64 KiB requests one at a time (the control run)") {
  auto r = run_kvferry("demo --requests 200 --min-tokens 16 --max-tokens 16 "
                       "--layers 1 --inflight 1 --quiet");
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("every byte of 200 requests verified") !=
        std::string::npos);
  CHECK(r.output.find("| 200 | 0 |") != std::string::npos);
}

// The consumer's xxhash check, end to end on CPU: kvsock flips one byte of
// the first send on the wire, the producer (host memory) sent the XXH3 of
// what it wrote, and the consumer must refuse the request naming both
// hashes. A consumer that skipped the hash (or fell back to the pattern
// compare) would pass or name the pattern instead.
TEST_CASE("demo: a byte corrupted on the wire fails the request, naming "
          "xxhash") {
  auto r = kvferry::test::run_kvferry(
      "demo --gpu none --requests 5 --max-tokens 256 --quiet", 100,
      "KVSOCK_FAULT_CORRUPT=1");
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(r.output.find("FAILED") != std::string::npos);
  CHECK(r.output.find("arrived with xxhash") != std::string::npos);
  CHECK(r.output.find("the producer sent") != std::string::npos);
  CHECK(r.output.find("differs from what the producer wrote") ==
        std::string::npos);
}

TEST_CASE("demo: bad options fail with a clear message") {
  auto r = run_kvferry("demo --dtype int3");
  CHECK(r.status == 2);
  CHECK(r.output.find("--dtype 'int3'") != std::string::npos);
}

TEST_CASE("demo --mps: a bad value exits 2 naming the option and the values") {
  auto r = run_kvferry("demo --mps bogus");
  CHECK(r.status == 2);
  CHECK(r.output.find("--mps 'bogus': expected auto, on or off") !=
        std::string::npos);
}

TEST_CASE("demo --mps on without nvidia-cuda-mps-control fails naming it") {
  // A PATH with nothing but `timeout` (which runs kvferry here): no MPS
  // control program, even on a GPU machine that has one.
  kvferry::test::scratch_dir bin{"kvferry-demo-test"};
  for (auto* timeout : {"/usr/bin/timeout", "/bin/timeout"})
    if (std::filesystem::exists(timeout)) {
      std::filesystem::create_symlink(timeout, bin.path / "timeout");
      break;
    }
  auto r = kvferry::test::run_kvferry("demo --mps on --requests 2 --quiet", 100,
                                      "PATH=" + bin.path.string());
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(r.output.find("--mps on: nvidia-cuda-mps-control is not on PATH") !=
        std::string::npos);
}

namespace {

// A fake nvidia-cuda-mps-control in a scratch folder, to put first on PATH:
// records each call (arguments, pipe directory, stdin), and `-d` creates
// the pipe the real daemon would.
struct fake_mps_control {
  kvferry::test::scratch_dir dir{"kvferry-demo-test"};
  std::filesystem::path record = dir.path / "record";

  fake_mps_control() {
    auto script = dir.path / "nvidia-cuda-mps-control";
    std::ofstream{script}
        << "#!/bin/sh\n"
        << "echo \"$* | $CUDA_MPS_PIPE_DIRECTORY | $(cat)\" >>" << record
        << "\n"
        << "[ \"$1\" = -d ] && : >\"$CUDA_MPS_PIPE_DIRECTORY/control\"\n"
        << "exit 0\n";
    std::filesystem::permissions(script, std::filesystem::perms::owner_all);
  }
  // The calls of a daemon started and quit with pipe directory `pipe`.
  static std::string started_and_quit(const std::string& pipe) {
    return "-d | " + pipe + " | \n | " + pipe + " | quit\n";
  }
  std::string calls() const { return kvferry::test::slurp(record); }
};

std::size_t count_of(const std::string& text, const std::string& part) {
  std::size_t n = 0;
  for (auto at = text.find(part); at != std::string::npos;
       at = text.find(part, at + 1))
    ++n;
  return n;
}

} // namespace

// --mps on starts a daemon even for host memory, which lets this machine
// (no GPU) run the demo's layout under a private daemon: the demo proper
// runs as a child process that is the daemon's client, so the router stays
// in the decode worker's process (the child's) and the parent's one line
// is the only word about the daemon.
TEST_CASE("demo --mps on runs the workers under a private daemon and stops "
          "it") {
  fake_mps_control fake;
  auto r = kvferry::test::run_kvferry(
      "demo --mps on --gpu none --requests 5 --max-tokens 256 --quiet", 100,
      "PATH=" + fake.dir.path.string() + ":$PATH");
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("every byte of 5 requests verified") !=
        std::string::npos);
  auto pipe = kvferry::test::private_mps_pipe(r.output, "the workers");
  CHECK(r.output.find("--mps off to run without") != std::string::npos);
  CHECK(fake.calls() == fake_mps_control::started_and_quit(pipe));
  CHECK_FALSE(std::filesystem::exists(pipe));
  CHECK(r.output.find("push, router in the decode worker's process,") !=
        std::string::npos);
  CHECK(count_of(r.output, "MPS daemon") == 1);
}

// A stop signal to the demo reaches the demo proper under the daemon (a
// child in a process group of its own), which stops its workers; then the
// daemon quits and the demo exits with the child's status.
TEST_CASE("demo --mps on: a stop signal stops the demo under the daemon, "
          "then the daemon") {
  using namespace std::chrono;
  fake_mps_control fake;
  kvferry::test::scoped_env path{"PATH", fake.dir.path.string() + ":" +
                                             std::getenv("PATH")};
  kvferry::test::child demo({"demo", "--mps", "on", "--gpu", "none",
                             "--requests", "100000", "--max-tokens", "256"},
                            kvferry::test::kvferry_binary());
  INFO(demo.text);
  REQUIRE(demo.read_until_progress(seconds(60)));
  auto under_daemon = child_with(demo.pid, "--requests");
  REQUIRE(under_daemon > 0);
  REQUIRE(kill(demo.pid, SIGINT) == 0);
  int status = demo.wait_exit(seconds(30));
  INFO(demo.text);
  CHECK(status == 128 + SIGINT);
  CHECK(demo.text.find("interrupted (Interrupt)") != std::string::npos);
  CHECK(kill(under_daemon, 0) != 0); // reaped
  auto pipe = kvferry::test::private_mps_pipe(demo.text, "the workers");
  CHECK(fake.calls() == fake_mps_control::started_and_quit(pipe));
  CHECK_FALSE(std::filesystem::exists(pipe));
}
