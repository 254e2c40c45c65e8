// Trace input of `kvferry sim`: both formats read as a user's files are,
// detected from content; every malformed line named by file and line; the
// real sample traces in ../shared/traces (beside the repository, as CI
// clones it) read to the end.
#include <filesystem>
#include <fstream>
#include <string>

#include <doctest/doctest.h>

#include "kvferry/sim/trace.hpp"
#include "scratch_dir.hpp"
#include "skip_case.hpp"

namespace sim = kvferry::sim;
using kvferry::test::scratch_dir;

namespace {

std::string write(const scratch_dir& dir, const std::string& name,
                  const std::string& text) {
  auto path = (dir.path / name).string();
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

std::vector<sim::trace_request> read_all(const std::string& path) {
  sim::trace_reader reader(path);
  std::vector<sim::trace_request> out;
  sim::trace_request r;
  while (reader.next(r))
    out.push_back(r);
  return out;
}

// The message of the trace_error that reading `path` to the end throws.
std::string error_of(const std::string& path) {
  try {
    read_all(path);
  } catch (const sim::trace_error& e) {
    return e.what();
  }
  return "(no error)";
}

std::string shared_traces() {
  return KVFERRY_SOURCE_DIR "/../shared/traces";
}

} // namespace

TEST_CASE("a Mooncake JSONL trace: fields, arrival from the first line, "
          "hash ids") {
  scratch_dir dir("sim-trace");
  auto path = write(dir, "t.jsonl",
                    "{\"timestamp\": 1000, \"input_length\": 1100, "
                    "\"output_length\": 7, \"hash_ids\": [4, 5, 6]}\n"
                    "\n"
                    "{\"hash_ids\": [], \"output_length\": 0, \"timestamp\": "
                    "1250.5, \"input_length\": 16, \"note\": \"x\"}\n");
  sim::trace_reader reader(path);
  CHECK(reader.format() == sim::trace_format::mooncake);
  sim::trace_request r;
  REQUIRE(reader.next(r));
  CHECK(r.index == 0);
  CHECK(r.line == 1);
  CHECK(r.arrival_ns == 0);
  CHECK(r.input_tokens == 1100);
  CHECK(r.output_tokens == 7);
  CHECK(r.hash_ids == std::vector<std::uint64_t>{4, 5, 6});
  REQUIRE(reader.next(r));
  CHECK(r.index == 1);
  CHECK(r.line == 3); // the blank line is skipped but counted
  CHECK(r.arrival_ns == 250500000);
  CHECK(r.input_tokens == 16);
  CHECK(r.output_tokens == 0);
  CHECK(r.hash_ids.empty());
  CHECK_FALSE(reader.next(r));
  CHECK(reader.bytes_read() == reader.total_bytes());
}

TEST_CASE("an Azure CSV trace: wall-clock timestamps become arrival times, "
          "columns found by the header") {
  scratch_dir dir("sim-trace");
  auto path = write(dir, "t.csv",
                    "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
                    "2023-11-16 18:17:03.9799600,4808,10\r\n"
                    "2023-11-16 18:17:04.0319600,3180,8\r\n"
                    "2023-11-17 00:00:00,34,0"); // no newline at the end
  auto all = read_all(path);
  REQUIRE(all.size() == 3);
  CHECK(all[0].arrival_ns == 0);
  CHECK(all[0].input_tokens == 4808);
  CHECK(all[0].output_tokens == 10);
  CHECK(all[1].arrival_ns == 52000000);
  CHECK(all[1].line == 3);
  // Across midnight: 5 h 42 min 56.02004 s after the first.
  CHECK(all[2].arrival_ns ==
        ((5 * 60 + 42) * 60 + 56) * 1000000000LL + 20040000LL);
  CHECK(all[2].hash_ids.empty());

  auto reordered = write(dir, "r.csv",
                         "GeneratedTokens,Extra,TIMESTAMP,ContextTokens\n"
                         "3,x,2023-01-01 00:00:00.5,100\n");
  auto r = read_all(reordered);
  REQUIRE(r.size() == 1);
  CHECK(r[0].input_tokens == 100);
  CHECK(r[0].output_tokens == 3);
}

TEST_CASE("the format comes from the content, not the file name") {
  scratch_dir dir("sim-trace");
  auto jsonl_named_csv =
      write(dir, "trace.csv",
            "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1}\n");
  CHECK(sim::trace_reader(jsonl_named_csv).format() ==
        sim::trace_format::mooncake);
  auto csv_named_jsonl =
      write(dir, "trace.jsonl", "TIMESTAMP,ContextTokens,GeneratedTokens\n");
  CHECK(sim::trace_reader(csv_named_jsonl).format() ==
        sim::trace_format::azure);
}

TEST_CASE("a bad line is an error naming the file and the line") {
  scratch_dir dir("sim-trace");
  const std::string good =
      "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1}\n";
  struct bad_case {
    const char* line;
    const char* says;
  };
  for (auto c : {
           bad_case{"{\"timestamp\": 1, \"input_length\": 5", "expected"},
           bad_case{"{\"timestamp\": 1, \"output_length\": 1}",
                    "needs \"timestamp\", \"input_length\""},
           bad_case{"{\"timestamp\": 1, \"input_length\": 0, "
                    "\"output_length\": 1}",
                    "\"input_length\" must be a whole number"},
           bad_case{"{\"timestamp\": 1, \"input_length\": 2.5, "
                    "\"output_length\": 1}",
                    "\"input_length\" must be a whole number"},
           bad_case{"{\"timestamp\": 1, \"input_length\": 99999999, "
                    "\"output_length\": 1}",
                    "\"input_length\" must be a whole number"},
           bad_case{"{\"timestamp\": 1, \"input_length\": 5, "
                    "\"output_length\": 1, \"hash_ids\": [1, -2]}",
                    "array of non-negative integers"},
           bad_case{"[1, 2, 3]", "expected a JSON object"},
           bad_case{"{\"timestamp\": 1, \"input_length\": 5, "
                    "\"output_length\": 1} trailing",
                    "text after the closing"},
       }) {
    CAPTURE(c.line);
    auto path = write(dir, "bad.jsonl", good + good + c.line + "\n" + good);
    auto message = error_of(path);
    CHECK(message.find(path + ":3: ") == 0);
    CHECK(message.find(c.says) != std::string::npos);
  }

  auto backwards = write(dir, "back.jsonl",
                         "{\"timestamp\": 10, \"input_length\": 5, "
                         "\"output_length\": 1}\n{\"timestamp\": 9, "
                         "\"input_length\": 5, \"output_length\": 1}\n");
  CHECK(error_of(backwards).find(backwards + ":2: timestamp goes backwards") ==
        0);

  const std::string header = "TIMESTAMP,ContextTokens,GeneratedTokens\n";
  auto bad_time = write(dir, "t.csv",
                        header + "2023-11-16 18:17:03.1,1,1\n" +
                            "2023-11-16 25:00:00.0,1,1\n");
  CHECK(error_of(bad_time).find(bad_time + ":3: TIMESTAMP '2023-11-16 "
                                           "25:00:00.0' is not") == 0);
  auto columns = write(dir, "c.csv", header + "2023-11-16 18:17:03.1,1\n");
  CHECK(error_of(columns).find(columns + ":2: expected 3 columns") == 0);
  auto tokens = write(dir, "k.csv", header + "2023-11-16 18:17:03.1,x,1\n");
  CHECK(error_of(tokens).find(tokens + ":2: ContextTokens 'x'") == 0);
}

TEST_CASE("a file that is no trace is refused at line 1; an empty one too") {
  scratch_dir dir("sim-trace");
  auto other = write(dir, "x.txt", "\nhello,world\n");
  CHECK(error_of(other).find(other + ":2: not a trace") == 0);
  auto header = write(dir, "h.csv", "TIMESTAMP,Tokens\n");
  CHECK(error_of(header).find(header + ":1: the Azure CSV header needs") == 0);
  auto empty = write(dir, "e.jsonl", "\n\n");
  CHECK(error_of(empty) == empty + ": the trace is empty");
  CHECK(error_of((dir.path / "missing.jsonl").string())
            .find("cannot open the trace") != std::string::npos);
}

TEST_CASE("wall-clock timestamps") {
  std::int64_t ns = 0;
  REQUIRE(sim::parse_wall_clock("1970-01-01 00:00:01.5", ns));
  CHECK(ns == 1500000000);
  REQUIRE(sim::parse_wall_clock("2024-02-29T12:00:00", ns));
  CHECK(ns == 1709208000LL * 1000000000LL);
  CHECK_FALSE(sim::parse_wall_clock("2024-13-01 00:00:00", ns));
  CHECK_FALSE(sim::parse_wall_clock("2024-01-01 00:00:00.", ns));
  CHECK_FALSE(sim::parse_wall_clock("2024-01-01", ns));
  CHECK_FALSE(sim::parse_wall_clock("2024-01-01 00:00:00 UTC", ns));
}

TEST_CASE("the sample traces in ../shared/traces read to the end") {
  auto dir = shared_traces();
  if (!std::filesystem::exists(dir)) {
    kvferry::test::skip_case(
        dir + " is absent: clone the shared folder beside the repository");
    return;
  }
  auto mooncake = read_all(dir + "/mooncake_synthetic_trace.jsonl");
  REQUIRE(mooncake.size() == 3993);
  CHECK(mooncake.front().input_tokens == 40160);
  CHECK(mooncake.front().hash_ids.size() == 79);
  CHECK(mooncake.back().arrival_ns == 1022025LL * 1000000);
  auto azure = read_all(dir + "/AzureLLMInferenceTrace_code.csv");
  REQUIRE(azure.size() == 8819);
  CHECK(azure.front().input_tokens == 4808);
  CHECK(azure[1].arrival_ns == 52000000);
}
