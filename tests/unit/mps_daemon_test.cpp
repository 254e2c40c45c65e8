// `kvferry demo --mps` (apps/kvferry/mps_daemon.*): when the demo starts a
// private MPS daemon, and that daemon's start and stop, run against a fake
// nvidia-cuda-mps-control that each test puts first on PATH (CI has no GPU
// and no MPS).
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <sys/wait.h>

#include <doctest/doctest.h>

#include "demo_private_mps.hpp"
#include "mps_daemon.hpp"
#include "scoped_env.hpp"
#include "scratch_dir.hpp"

namespace fs = std::filesystem;
using namespace kvferry::app;
using namespace std::chrono;

namespace {

using kvferry::test::scoped_env;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A scratch folder: bin/ holds the fake control program (a shell script
// whose body is `body`, with $record naming a file it may write), put first
// on PATH; tmp/ is TMPDIR, where the daemon makes its directories.
class fake_control {
public:
  explicit fake_control(const std::string& body) : root_(scratch_.path) {
    fs::create_directories(root_ / "bin");
    fs::create_directories(tmp());
    auto script = root_ / "bin" / mps_daemon::control_program;
    std::ofstream{script} << "#!/bin/sh\nrecord=" << (root_ / "record").string()
                          << "\n"
                          << body;
    fs::permissions(script, fs::perms::owner_all);
    const char* path = std::getenv("PATH");
    path_.emplace("PATH", (root_ / "bin").string() + ":" + (path ? path : ""));
    tmpdir_.emplace("TMPDIR", tmp().string());
  }
  fs::path tmp() const { return root_ / "tmp"; }
  bool tmp_is_empty() const { return fs::is_empty(tmp()); }
  std::string record() const {
    std::ifstream in{root_ / "record"};
    return {std::istreambuf_iterator<char>{in}, {}};
  }

private:
  kvferry::test::scratch_dir scratch_{"kvferry-mps-test"};
  fs::path root_;
  std::optional<scoped_env> path_, tmpdir_;
};

// Records its argv, the two variables and its stdin.
constexpr const char* record_call = R"sh(
{ echo "argv: $*"
  echo "pipe: $CUDA_MPS_PIPE_DIRECTORY"
  echo "log: $CUDA_MPS_LOG_DIRECTORY"
  echo "stdin: $(cat)"; } >>"$record"
)sh";

// What the real daemon does that the class relies on: `-d` creates its
// pipes in the pipe directory.
constexpr const char* make_pipes =
    "[ \"$1\" = -d ] && : >\"$CUDA_MPS_PIPE_DIRECTORY/control\"\n";

std::string record_of(const std::string& argv, const std::string& pipe,
                      const std::string& log, const std::string& input) {
  return "argv: " + argv + "\npipe: " + pipe + "\nlog: " + log +
         "\nstdin: " + input + "\n";
}

std::string start_error(mps_daemon& daemon) {
  try {
    daemon.start();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  FAIL("start() did not throw");
  return {};
}

mps_facts shared_gpu_0(mps_mode mode) {
  mps_facts f;
  f.mode = mode;
  f.shared_gpu = 0;
  f.control_found = true;
  return f;
}

} // namespace

TEST_CASE("--mps takes auto, on or off") {
  CHECK(parse_mps_mode("auto") == mps_mode::automatic);
  CHECK(parse_mps_mode("on") == mps_mode::on);
  CHECK(parse_mps_mode("off") == mps_mode::off);
  CHECK_FALSE(parse_mps_mode("bogus").has_value());
  CHECK_FALSE(parse_mps_mode("").has_value());
}

TEST_CASE("--mps auto starts a daemon only for two workers the demo starts "
          "on one GPU") {
  auto f = shared_gpu_0(mps_mode::automatic);
  auto c = choose_mps(f);
  CHECK(c.start);
  CHECK_FALSE(c.callers_daemon);
  CHECK(c.exit_code == 0);
  CHECK(c.why.empty());

  SUBCASE("no binary: runs without, saying why") {
    f.control_found = false;
    c = choose_mps(f);
    CHECK_FALSE(c.start);
    CHECK(c.exit_code == 0);
    CHECK(c.why == "both workers share GPU 0 and nvidia-cuda-mps-control is "
                   "not on PATH: their kernels will time-slice (docs/gpu.md, "
                   "'Contention in the demo')");
  }
  SUBCASE("the caller's daemon: used, none started") {
    f.callers_pipe_directory = "/run/mps";
    c = choose_mps(f);
    CHECK_FALSE(c.start);
    CHECK(c.callers_daemon);
    CHECK(contains(c.why, "CUDA_MPS_PIPE_DIRECTORY=/run/mps"));
  }
  SUBCASE("workers on two GPUs or in host memory: nothing to share") {
    f.shared_gpu = -1;
    c = choose_mps(f);
    CHECK_FALSE(c.start);
    CHECK(c.why.empty());
  }
  SUBCASE("--directory: the demo starts no workers") {
    f.starts_workers = false;
    c = choose_mps(f);
    CHECK_FALSE(c.start);
    CHECK(c.exit_code == 0);
    CHECK(c.why.empty());
  }
}

TEST_CASE("--mps on starts a daemon for any placement, or fails naming why") {
  auto f = shared_gpu_0(mps_mode::on);
  f.shared_gpu = -1;
  CHECK(choose_mps(f).start);

  SUBCASE("no binary: exit 1 naming it") {
    f.control_found = false;
    auto c = choose_mps(f);
    CHECK_FALSE(c.start);
    CHECK(c.exit_code == 1);
    CHECK(c.why == "--mps on: nvidia-cuda-mps-control is not on PATH");
  }
  SUBCASE("--directory: exit 2") {
    f.starts_workers = false;
    auto c = choose_mps(f);
    CHECK_FALSE(c.start);
    CHECK(c.exit_code == 2);
    CHECK(contains(c.why, "--mps on"));
    CHECK(contains(c.why, "--directory"));
  }
  SUBCASE("the caller's daemon: used, none started") {
    f.callers_pipe_directory = "/run/mps";
    auto c = choose_mps(f);
    CHECK_FALSE(c.start);
    CHECK(c.callers_daemon);
    CHECK(c.exit_code == 0);
  }
}

TEST_CASE("--mps off never starts one, and says when a shared GPU "
          "time-slices") {
  auto f = shared_gpu_0(mps_mode::off);
  auto c = choose_mps(f);
  CHECK_FALSE(c.start);
  CHECK(c.exit_code == 0);
  CHECK(contains(c.why, "both workers share GPU 0 and --mps off: their "
                        "kernels will time-slice"));

  SUBCASE("the workers still inherit the caller's daemon") {
    f.callers_pipe_directory = "/run/mps";
    c = choose_mps(f);
    CHECK_FALSE(c.start);
    CHECK(c.callers_daemon);
    CHECK(contains(c.why, "inherit CUDA_MPS_PIPE_DIRECTORY=/run/mps"));
  }
  SUBCASE("nothing shared: nothing to say") {
    f.shared_gpu = -1;
    CHECK(choose_mps(f).why.empty());
  }
}

TEST_CASE("environment_with replaces and adds variables") {
  scoped_env a{"KVFERRY_MPS_TEST_A", "old"};
  auto env = environment_with(
      {{"KVFERRY_MPS_TEST_A", "new"}, {"KVFERRY_MPS_TEST_B", "added"}});
  int a_count = 0;
  bool b_added = false;
  for (auto& e : env) {
    if (e.rfind("KVFERRY_MPS_TEST_A=", 0) == 0) {
      ++a_count;
      CHECK(e == "KVFERRY_MPS_TEST_A=new");
    }
    b_added = b_added || e == "KVFERRY_MPS_TEST_B=added";
  }
  CHECK(a_count == 1);
  CHECK(b_added);
}

TEST_CASE("the daemon starts with -d in private directories and quits with "
          "the same ones, which are then removed") {
  fake_control fake{std::string{record_call} + make_pipes + "exit 0\n"};
  mps_daemon daemon;
  auto env = daemon.start();
  auto pipe = daemon.pipe_directory();
  auto log = daemon.log_directory();
  REQUIRE(env.size() == 2);
  CHECK(env[0] ==
        std::pair<std::string, std::string>{"CUDA_MPS_PIPE_DIRECTORY", pipe});
  CHECK(env[1] ==
        std::pair<std::string, std::string>{"CUDA_MPS_LOG_DIRECTORY", log});
  // Private: fresh, under TMPDIR, one for pipes and one for logs.
  CHECK(pipe.rfind(fake.tmp().string() + "/kvferry-mps-", 0) == 0);
  CHECK(fs::is_directory(pipe));
  CHECK(fs::is_directory(log));
  CHECK(pipe != log);
  CHECK(fake.record() == record_of("-d", pipe, log, ""));

  CHECK(daemon.stop().empty());
  CHECK(fake.record() ==
        record_of("-d", pipe, log, "") + record_of("", pipe, log, "quit"));
  CHECK_FALSE(daemon.running());
  CHECK(fake.tmp_is_empty());
  CHECK(daemon.stop().empty()); // once only
}

TEST_CASE("the destructor stops a running daemon") {
  fake_control fake{std::string{record_call} + make_pipes + "exit 0\n"};
  std::string pipe;
  {
    mps_daemon daemon;
    daemon.start();
    pipe = daemon.pipe_directory();
  }
  CHECK(contains(fake.record(), "stdin: quit"));
  CHECK_FALSE(fs::exists(pipe));
  CHECK(fake.tmp_is_empty());
}

TEST_CASE("a failing -d names the program, its exit status and output, and "
          "leaves nothing behind") {
  fake_control fake{"echo 'An instance of this daemon is already running' "
                    ">&2\nexit 1\n"};
  mps_daemon daemon;
  auto err = start_error(daemon);
  CHECK(contains(err,
                 "`nvidia-cuda-mps-control -d` failed: exited with status 1"));
  CHECK(contains(err, "An instance of this daemon is already running"));
  CHECK_FALSE(daemon.running());
  CHECK(fake.tmp_is_empty());
}

TEST_CASE("a -d that hangs is killed after the timeout") {
  fake_control fake{"sleep 30\n"};
  mps_daemon daemon{milliseconds(300)};
  auto t0 = steady_clock::now();
  auto err = start_error(daemon);
  // Killed, not waited for: far below the fake's 30 s, with room for a
  // loaded, sanitized run.
  CHECK(steady_clock::now() - t0 < seconds(15));
  CHECK(contains(err, "`nvidia-cuda-mps-control -d` did not finish within "
                      "300 ms (killed)"));
  CHECK(fake.tmp_is_empty());
}

TEST_CASE("a -d that exits 0 but never makes its pipes is a failure, and "
          "gets a quit") {
  fake_control fake{std::string{record_call} + "exit 0\n"};
  // The quit runs under the same limit: room for a loaded machine to start
  // the fake (a shell script) and let it record.
  mps_daemon daemon{milliseconds(1500)};
  auto err = start_error(daemon);
  CHECK(contains(err, "`nvidia-cuda-mps-control -d` exited 0 but created "
                      "nothing in"));
  CHECK(contains(fake.record(), "stdin: quit"));
  CHECK(fake.tmp_is_empty());
}

TEST_CASE("a failing quit is reported with how to stop the daemon by hand; "
          "its directories stay") {
  fake_control fake{std::string{make_pipes} +
                    "[ \"$1\" = -d ] && exit 0\nexit 3\n"};
  mps_daemon daemon;
  daemon.start();
  auto pipe = daemon.pipe_directory();
  auto err = daemon.stop();
  CHECK(contains(err, "`echo quit | nvidia-cuda-mps-control` failed: exited "
                      "with status 3"));
  CHECK(contains(err, "CUDA_MPS_PIPE_DIRECTORY=" + pipe));
  CHECK(fs::is_directory(pipe));
  CHECK_FALSE(daemon.running());
}

TEST_CASE("without the program on PATH, start fails naming it") {
  fake_control fake{"exit 0\n"};
  scoped_env empty_path{"PATH", fake.tmp().string()};
  CHECK(find_on_path(mps_daemon::control_program).empty());
  mps_daemon daemon;
  CHECK(start_error(daemon) == "nvidia-cuda-mps-control is not on PATH");
  CHECK(fake.tmp_is_empty());
}

TEST_CASE("launch: the GPU two workers of a host share") {
  CHECK(shared_gpu_of({0, 1}) == -1);
  CHECK(shared_gpu_of({std::nullopt, std::nullopt}) == -1);
  CHECK(shared_gpu_of({1, std::nullopt, 0, 1}) == 1);
  CHECK(shared_gpu_of({}) == -1);
}

TEST_CASE("launch: set_up_mps starts a daemon for a shared GPU, hands out "
          "its variables, and the daemon stops with its holder") {
  fake_control fake{std::string{record_call} + make_pipes + "exit 0\n"};
  std::string pipe;
  {
    std::optional<mps_daemon> daemon;
    auto setup = set_up_mps(shared_gpu_0(mps_mode::automatic), daemon);
    CHECK(setup.exit_code == 0);
    REQUIRE(daemon);
    pipe = daemon->pipe_directory();
    REQUIRE(setup.env.size() == 2);
    CHECK(setup.env[0].second == pipe);
    REQUIRE(setup.lines.size() == 1);
    CHECK(contains(setup.lines[0],
                   "started a private MPS daemon for GPU 0 (pipe directory " +
                       pipe));
    CHECK(contains(fake.record(), "argv: -d"));
  }
  CHECK(contains(fake.record(), "stdin: quit"));
  CHECK_FALSE(fs::exists(pipe));
}

TEST_CASE("launch: set_up_mps without a shared GPU, with --mps off, or with "
          "the caller's daemon starts nothing") {
  fake_control fake{std::string{record_call} + make_pipes + "exit 0\n"};
  std::optional<mps_daemon> daemon;
  auto f = shared_gpu_0(mps_mode::automatic);
  f.shared_gpu = -1;
  auto setup = set_up_mps(f, daemon);
  CHECK_FALSE(daemon);
  CHECK(setup.env.empty());
  CHECK(setup.lines.empty());
  setup = set_up_mps(shared_gpu_0(mps_mode::off), daemon);
  CHECK_FALSE(daemon);
  CHECK(setup.env.empty());
  REQUIRE(setup.lines.size() == 1);
  CHECK(contains(setup.lines[0], "time-slice"));
  f = shared_gpu_0(mps_mode::automatic);
  f.callers_pipe_directory = "/run/mps";
  setup = set_up_mps(f, daemon);
  CHECK_FALSE(daemon);
  CHECK(setup.env.empty()); // the workers inherit the caller's variable
  CHECK(fake.record().empty());
}

TEST_CASE("launch: a daemon that fails to start leaves the workers without "
          "MPS with --mps auto, and stops launch with --mps on") {
  fake_control fake{"echo 'no GPU here' >&2; exit 1\n"};
  std::optional<mps_daemon> daemon;
  auto setup = set_up_mps(shared_gpu_0(mps_mode::automatic), daemon);
  CHECK(setup.exit_code == 0);
  CHECK_FALSE(daemon);
  CHECK(setup.env.empty());
  REQUIRE(setup.lines.size() == 1);
  CHECK(contains(setup.lines[0], "could not start a private MPS daemon"));
  CHECK(contains(setup.lines[0], "no GPU here"));
  setup = set_up_mps(shared_gpu_0(mps_mode::on), daemon);
  CHECK(setup.exit_code == 1);
  CHECK_FALSE(daemon);
  CHECK(contains(setup.lines.back(), "--mps on: "));
  CHECK(fake.tmp_is_empty());
}

TEST_CASE("demo: a daemon of the parent demo's is used without a word") {
  for (auto mode : {mps_mode::automatic, mps_mode::on, mps_mode::off}) {
    auto f = shared_gpu_0(mode);
    f.callers_pipe_directory = "/tmp/kvferry-mps-x/pipe";
    f.parent_demos_daemon = true;
    auto c = choose_mps(f);
    CHECK_FALSE(c.start);
    CHECK(c.callers_daemon);
    CHECK(c.exit_code == 0);
    CHECK(c.why.empty());
  }
}

TEST_CASE("demo: it runs again as a child under its private daemon only "
          "when the router shares the decode worker's process") {
  mps_choice starts;
  starts.start = true;
  CHECK(rerun_under_private_daemon(true, starts));
  CHECK_FALSE(rerun_under_private_daemon(false, starts)); // --router separate
  mps_choice callers;
  callers.callers_daemon = true; // already a client where CUDA initialises
  CHECK_FALSE(rerun_under_private_daemon(true, callers));
  CHECK_FALSE(rerun_under_private_daemon(true, mps_choice{}));
}

TEST_CASE("demo: the child under the daemon is this binary with the same "
          "arguments and the daemon's variables") {
  env_pairs daemon_env{{"CUDA_MPS_PIPE_DIRECTORY", "/tmp/m/pipe"},
                       {"CUDA_MPS_LOG_DIRECTORY", "/tmp/m/log"}};
  auto spec =
      private_daemon_child({"kvferry", "demo", "--gpu", "0"}, daemon_env);
  CHECK(spec.program == "/proc/self/exe");
  CHECK(spec.argv == std::vector<std::string>{"kvferry", "demo", "--gpu", "0"});
  CHECK(spec.env == env_pairs{{"CUDA_MPS_PIPE_DIRECTORY", "/tmp/m/pipe"},
                              {"CUDA_MPS_LOG_DIRECTORY", "/tmp/m/log"},
                              {"KVFERRY_DEMO_PRIVATE_MPS", "1"}});
  // Shared with the parent: the child's output is the demo's.
  CHECK(spec.stdin_fd == -1);
  CHECK(spec.stdout_fd == -1);
  CHECK(spec.stderr_fd == -1);
}

TEST_CASE("demo: its own arguments, and whether it is the child") {
  auto args = own_arguments();
  REQUIRE_FALSE(args.empty());
  CHECK(contains(args.front(), "test_mps_daemon"));
  {
    scoped_env marker{demo_private_mps_variable, "1"};
    CHECK(under_parents_private_daemon());
  }
  scoped_env unset{demo_private_mps_variable, nullptr};
  CHECK_FALSE(under_parents_private_daemon());
}

TEST_CASE("demo: the parent exits with the child's status, or 128 + its "
          "signal") {
  auto status_of = [](const char* script) {
    subprocess child{spawn_spec{"/bin/sh", {"sh", "-c", script}, {}}};
    REQUIRE(child.wait(seconds(10)));
    return *child.exit_status();
  };
  CHECK(exit_code_of(status_of("exit 0")) == 0);
  CHECK(exit_code_of(status_of("exit 75")) == demo_mps_failed_exit);
  CHECK(exit_code_of(status_of("kill -INT $$")) == 128 + SIGINT);
}
