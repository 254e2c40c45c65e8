// `kvferry demo --prefill-gpu 0 --decode-gpu 1` (issue #7): the prefill
// worker's KV pool on GPU 0, the decode worker's on GPU 1, every byte verified
// on GPU 1. Over CUDA IPC the producer's kernel on GPU 0 writes GPU 1's pool
// through peer access (push, layer by layer and pull); over --transport net
// kvsock stages GPU memory through host memory. Without peer access 0 -> 1
// the IPC cases check the demo's refusal instead. Below two GPUs it skips
// (77) saying how many there are (support/two_gpu_test_main.cpp).
#include <string>

#include <doctest/doctest.h>

#include "kvferry/transport/gpu_topology.hpp"
#include "run_kvferry.hpp"
#include "skip_case.hpp"

namespace {

using kvferry::test::run_result;

// The checks read the demo's full table (--breakdown: the memory column).
run_result run_kvferry(const std::string& args) {
  return kvferry::test::run_kvferry(args + " --breakdown", 150);
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

const std::string across = "demo --prefill-gpu 0 --decode-gpu 1 ";
const std::string small_run = "--requests 20 --max-tokens 512 --quiet ";

void check_demo_across(const std::string& extra, const std::string& memory) {
  auto r = run_kvferry(across + small_run + extra);
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(has(r.output, "every byte of 20 requests verified"));
  CHECK(has(r.output, "| " + memory + " | 20 | 0 |"));
}

bool peer_access_0_to_1() {
  return kvferry::transport::system_gpu_topology()->can_access_peer(0, 1);
}

void check_ipc_across(const std::string& extra) {
  if (peer_access_0_to_1()) {
    check_demo_across(extra, "prefill GPU 0 / decode GPU 1 memory, CUDA IPC");
    return;
  }
  auto r = run_kvferry(across + small_run + extra);
  INFO(r.output);
  CHECK(r.status == 2);
  CHECK(has(r.output, "GPU 0 cannot access GPU 1"));
  CHECK(has(r.output, "--transport net"));
  kvferry::test::skip_case("GPU 0 cannot access GPU 1: the demo's refusal was "
                           "checked, CUDA IPC across the GPUs was not");
}

} // namespace

TEST_CASE("demo across GPUs 0 and 1 over CUDA IPC: push") {
  check_ipc_across("");
}

TEST_CASE("demo across GPUs 0 and 1 over CUDA IPC: layer by layer") {
  check_ipc_across("--layerwise");
}

TEST_CASE("demo across GPUs 0 and 1 over CUDA IPC: pull") {
  check_ipc_across("--pull");
}

TEST_CASE("demo across GPUs 0 and 1 over kvsock with GPU memory") {
  check_demo_across("--transport net",
                    "prefill GPU 0 / decode GPU 1 memory, kvsock (GPU memory)");
}

TEST_CASE("demo names a GPU that this machine does not have") {
  const int count = kvferry::transport::system_gpu_topology()->device_count();
  auto r = run_kvferry("demo --prefill-gpu 0 --decode-gpu " +
                       std::to_string(count) + " --requests 1");
  INFO(r.output);
  CHECK(r.status == 2);
  CHECK(has(r.output, "--decode-gpu " + std::to_string(count) +
                          ": no such GPU; this machine has " +
                          std::to_string(count)));
}
