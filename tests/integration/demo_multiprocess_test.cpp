// `kvferry demo` end to end: a directory, a prefill and a decode worker as
// separate processes, KV moved over kvsock and verified byte for byte.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <doctest/doctest.h>

#include "run_kvferry.hpp"
#include "scratch_dir.hpp"

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

} // namespace

TEST_CASE("demo: push, whole requests") {
  check_demo("");
}

TEST_CASE("demo: push, layer by layer") {
  check_demo("--layerwise");
}

TEST_CASE("demo: pull, with the breakdown's stages") {
  auto r = check_demo("--pull --breakdown");
  // Every answered request carries the consumer's timestamps: one p50 /
  // mean pair per stage, the fill among them.
  INFO(r.output);
  CHECK(r.output.find("| us, p50 / mean | to consumer, less fill | fill |") !=
        std::string::npos);
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

TEST_CASE("demo --mps on runs the workers under a private daemon and stops "
          "it") {
  // A fake control program first on PATH: records each call, and `-d`
  // creates the pipe the real daemon would.
  kvferry::test::scratch_dir fake{"kvferry-demo-test"};
  auto record = fake.path / "record";
  auto script = fake.path / "nvidia-cuda-mps-control";
  std::ofstream{script}
      << "#!/bin/sh\n"
      << "echo \"$* | $CUDA_MPS_PIPE_DIRECTORY | $(cat)\" >>" << record << "\n"
      << "[ \"$1\" = -d ] && : >\"$CUDA_MPS_PIPE_DIRECTORY/control\"\n"
      << "exit 0\n";
  std::filesystem::permissions(script, std::filesystem::perms::owner_all);
  auto r = kvferry::test::run_kvferry(
      "demo --mps on --gpu none --requests 5 --max-tokens 256 --quiet", 100,
      "PATH=" + fake.path.string() + ":$PATH");
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("every byte of 5 requests verified") !=
        std::string::npos);
  auto pipe = kvferry::test::private_mps_pipe(r.output, "the workers");
  CHECK(r.output.find("--mps off to run without") != std::string::npos);
  std::ifstream in{record};
  std::string calls{std::istreambuf_iterator<char>{in}, {}};
  CHECK(calls == "-d | " + pipe + " | \n | " + pipe + " | quit\n");
  CHECK_FALSE(std::filesystem::exists(pipe));
}
