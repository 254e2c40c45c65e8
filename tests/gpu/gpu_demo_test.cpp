// `kvferry demo` on a GPU (issue #5): directory, prefill and decode worker as
// three processes, both workers' KV pools on GPU 0, KV moved by the transfer
// actors over CUDA IPC (or kvsock with --transport net) and verified on the
// GPU by the consumer. Finds the kvferry binary next to this test
// (build/tests -> build/bin, or .bundle/tests -> .bundle/bin).
#include <filesystem>
#include <string>

#include <doctest/doctest.h>

#include "run_kvferry.hpp"
#include "skip_case.hpp"

namespace {

using kvferry::test::run_result;

// The checks read the demo's full table (--breakdown: the memory column and
// the GPU copy columns).
run_result run_kvferry(const std::string& args, const std::string& env = "") {
  return kvferry::test::run_kvferry(args + " --breakdown", 150, env);
}

// The table row of a run with both workers on GPU 0: its memory column ends
// in ", MPS on" or ", MPS off" (--mps auto: on where this machine's MPS
// daemon works, off where nvidia-cuda-mps-control is missing or failed).
bool has_row(const std::string& output, const std::string& memory,
             int requests) {
  auto rest = " | " + std::to_string(requests) + " | 0 |";
  for (auto* mps : {", MPS on", ", MPS off"})
    if (output.find("| " + memory + mps + rest) != std::string::npos)
      return true;
  return false;
}

// Over CUDA IPC the copy kernels are timed on the GPU, so the table's "GPU
// copy GB/s", "launch to kernel" and "after kernel" columns have numbers;
// over a plugin they read "-".
void check_gpu_demo(const std::string& extra, const std::string& memory,
                    const std::string& env = "") {
  auto r = run_kvferry(
      "demo --gpu 0 --requests 20 --max-tokens 512 --quiet " + extra, env);
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("every byte of 20 requests verified") !=
        std::string::npos);
  CHECK(has_row(r.output, memory, 20));
  const bool ipc = memory.find("CUDA IPC") != std::string::npos;
  CHECK((r.output.find(" | - | - | - | ") == std::string::npos) == ipc);
}

} // namespace

TEST_CASE("GPU demo over CUDA IPC: push") {
  check_gpu_demo("", "GPU 0 memory, CUDA IPC");
}

// --verify sampled: stamps only, written and checked by the GPU kernels.
TEST_CASE("GPU demo over CUDA IPC: pull, sampled verification") {
  auto r = run_kvferry("demo --gpu 0 --requests 20 --max-tokens 512 --quiet "
                       "--pull --inflight 8 --verify sampled");
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("verify sampled; columns") != std::string::npos);
  CHECK(r.output.find("OK, 20 requests verified by sampling") !=
        std::string::npos);
  CHECK(has_row(r.output, "GPU 0 memory, CUDA IPC", 20));
}

TEST_CASE("GPU demo over CUDA IPC: layer by layer") {
  check_gpu_demo("--layerwise", "GPU 0 memory, CUDA IPC");
}

TEST_CASE("GPU demo over CUDA IPC: pull") {
  check_gpu_demo("--pull", "GPU 0 memory, CUDA IPC");
}

TEST_CASE("GPU demo over CUDA IPC: every GPU scheduling knob set") {
  // The knobs of docs/gpu.md ("Contention in the demo") change timing only:
  // every byte still arrives and verifies.
  check_gpu_demo("", "GPU 0 memory, CUDA IPC",
                 "KVFERRY_GPU_STREAM_PRIORITIES=1 KVFERRY_FILL_GRID=66 "
                 "KVFERRY_IPC_SPIN=0");
}

TEST_CASE("GPU demo: a bad KVFERRY_FILL_GRID fails naming it") {
  auto r = run_kvferry("demo --gpu 0 --requests 2 --max-tokens 64 --quiet",
                       "KVFERRY_FILL_GRID=lots");
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(r.output.find("KVFERRY_FILL_GRID=lots") != std::string::npos);
}

TEST_CASE("GPU demo over kvsock with GPU memory (--transport net)") {
  check_gpu_demo("--transport net", "GPU 0 memory, kvsock (GPU memory)");
}

TEST_CASE("GPU demo over kvsock forced host-only (channel staging)") {
  // KVSOCK_PTR_SUPPORT=host: kvsock declares no NCCL_PTR_CUDA, so the
  // workers' channel wrappers copy the GPU pools through pinned bounce slots.
  auto r = run_kvferry("demo --gpu 0 --transport net --requests 20 "
                       "--max-tokens 512 --quiet",
                       "KVSOCK_PTR_SUPPORT=host");
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("every byte of 20 requests verified") !=
        std::string::npos);
  CHECK(has_row(r.output, "GPU 0 memory, kvsock (GPU memory)", 20));
}

TEST_CASE("GPU demo: a byte corrupted in flight is caught on the GPU") {
  // kvsock flips one byte of the first send of each comm (sender side); the
  // producer is on a GPU so it sends no XXH3, and the consumer regenerates
  // the pattern and compares on its GPU.
  auto r = run_kvferry(
      "demo --gpu 0 --transport net --requests 5 --max-tokens 256 --quiet",
      "KVSOCK_FAULT_CORRUPT=1");
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(r.output.find("FAILED") != std::string::npos);
  CHECK(r.output.find("differs from what the producer wrote") !=
        std::string::npos);
  CHECK(r.output.find("in GPU 0 memory") != std::string::npos);
}

TEST_CASE("demo --gpu auto picks GPU 0") {
  auto r = run_kvferry("demo --requests 5 --max-tokens 256 --quiet");
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("--gpu auto: using GPU 0") != std::string::npos);
  CHECK(has_row(r.output, "GPU 0 memory, CUDA IPC", 5));
}

TEST_CASE("demo --mps off: the shared GPU time-slices, and the demo says so") {
  auto r = run_kvferry("demo --gpu 0 --mps off --requests 5 --max-tokens 256 "
                       "--quiet");
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("both workers share GPU 0 and --mps off") !=
        std::string::npos);
  CHECK(r.output.find("started a private MPS daemon") == std::string::npos);
  CHECK(r.output.find("| GPU 0 memory, CUDA IPC, MPS off | 5 | 0 |") !=
        std::string::npos);
}

// --mps off: no private MPS daemon, so the router runs in the decode
// worker's process (the demo's), which maps the prefill's pool over CUDA
// IPC and verifies every request on the GPU.
TEST_CASE("GPU demo: the router in the decode worker's process, pull") {
  auto r = run_kvferry("demo --gpu 0 --mps off --pull --inflight 8 "
                       "--requests 20 --max-tokens 512 --quiet --verify "
                       "sampled");
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("pull, router in the decode worker's process,") !=
        std::string::npos);
  CHECK(r.output.find("OK, 20 requests verified by sampling") !=
        std::string::npos);
  CHECK(r.output.find("| GPU 0 memory, CUDA IPC, MPS off | 20 | 0 |") !=
        std::string::npos);
}

TEST_CASE("demo --mps on: the workers run under a private MPS daemon, which "
          "is gone afterwards") {
  auto r = run_kvferry("demo --gpu 0 --mps on --requests 20 --max-tokens 512 "
                       "--quiet");
  INFO(r.output);
  if (r.output.find("nvidia-cuda-mps-control is not on PATH") !=
      std::string::npos) {
    CHECK(r.status == 1); // the refusal is all this machine can show
    return kvferry::test::skip_case(
        "nvidia-cuda-mps-control is not on PATH: the demo's refusal was "
        "checked, MPS itself was not");
  }
  CHECK(r.status == 0);
  CHECK(r.output.find("every byte of 20 requests verified") !=
        std::string::npos);
  CHECK(r.output.find("| GPU 0 memory, CUDA IPC, MPS on | 20 | 0 |") !=
        std::string::npos);
  auto pipe = kvferry::test::private_mps_pipe(r.output, "GPU 0");
  CHECK_FALSE(std::filesystem::exists(pipe));
  // The demo proper ran as the daemon's client in a child process: the
  // router in the decode worker's process, and one word on the daemon.
  CHECK(r.output.find(", router in the decode worker's process,") !=
        std::string::npos);
  CHECK(r.output.find("MPS daemon") == r.output.rfind("MPS daemon"));
}

// The layout of issue #18's GPU target: the default on one GPU (--gpu auto,
// --mps auto) starts a private MPS daemon where nvidia-cuda-mps-control
// works, and the demo proper, a child process that is the daemon's client,
// runs the router in the decode worker's process; the parent process quits
// the daemon.
TEST_CASE("GPU demo, the default on one GPU: the router in the decode "
          "worker's process under the private MPS daemon, pull, 8 in "
          "flight") {
  auto r = run_kvferry("demo --pull --inflight 8 --requests 40 --max-tokens "
                       "512 --quiet");
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("every byte of 40 requests verified") !=
        std::string::npos);
  CHECK(r.output.find("pull, router in the decode worker's process,") !=
        std::string::npos);
  if (r.output.find("started a private MPS daemon") == std::string::npos)
    return kvferry::test::skip_case(
        "no private MPS daemon started here (its output says why): the "
        "router's place was checked without MPS");
  CHECK(r.output.find("| GPU 0 memory, CUDA IPC, MPS on | 40 | 0 |") !=
        std::string::npos);
  // Said once, by the parent: the child resolves auto again silently.
  const std::string chose = "--gpu auto: using GPU 0";
  CHECK(r.output.find(chose) != std::string::npos);
  CHECK(r.output.find(chose) == r.output.rfind(chose));
  auto pipe = kvferry::test::private_mps_pipe(r.output, "GPU 0");
  CHECK_FALSE(std::filesystem::exists(pipe));
}
