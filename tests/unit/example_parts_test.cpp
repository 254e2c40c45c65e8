// The embedding example's own serving-stack parts (apps/embedding-example,
// issue #15), on the CPU: the block manager a scheduler admits against, the
// model step's content and the decode side's every-byte verifier, the trace
// plan and the report's TTFT split.
#include <cstring>
#include <fstream>
#include <set>
#include <stdexcept>

#include <doctest/doctest.h>

#include "content.hpp"
#include "options.hpp"
#include "paged_cache.hpp"
#include "protocol.hpp"
#include "report.hpp"
#include "scratch_dir.hpp"
#include "trace_plan.hpp"

using namespace example;

namespace {

kv_geometry small_geometry() {
  kv_geometry g;
  g.layers = 3;
  g.blocks = 16;
  g.block_tokens = 4;
  g.token_bytes = 16; // 64-byte block halves: 8 words
  return g;
}

// What kvferry does between the two caches: each (layer, half, block) of
// the source copied to the destination's block at the same position.
void copy_request(const paged_cache& from,
                  const std::vector<std::uint64_t>& src, paged_cache& to,
                  const std::vector<std::uint64_t>& dst) {
  const auto& a = from.layout();
  const auto& b = to.layout();
  for (std::uint32_t l = 0; l < a.layers(); ++l)
    for (auto h : {kvferry::kv_half::k, kvferry::kv_half::v})
      for (std::size_t i = 0; i < src.size(); ++i) {
        auto s = a.locate(l, h, src[i]);
        auto d = b.locate(l, h, dst[i]);
        std::memcpy(static_cast<char*>(to.bases()[d.region]) + d.offset,
                    static_cast<const char*>(from.bases()[s.region]) + s.offset,
                    s.bytes);
      }
}

void write_all_layers(const paged_cache& cache, std::uint64_t request,
                      const std::vector<std::uint64_t>& blocks) {
  for (std::uint32_t l = 0; l < cache.layout().layers(); ++l)
    write_layer_host(cache.layout(), cache.bases(), request, l, blocks);
}

} // namespace

TEST_CASE("the block manager hands out distinct blocks, all or nothing") {
  block_manager m(10);
  auto a = m.allocate(4);
  REQUIRE(a);
  auto b = m.allocate(6);
  REQUIRE(b);
  CHECK(m.free_blocks() == 0);
  std::set<std::uint64_t> ids(a->begin(), a->end());
  ids.insert(b->begin(), b->end());
  CHECK(ids.size() == 10);
  CHECK(*ids.rbegin() == 9);
  // A request that does not fit waits (nothing taken) until blocks return.
  CHECK_FALSE(m.allocate(3));
  CHECK(m.free_blocks() == 0);
  m.release(*a);
  CHECK(m.free_blocks() == 4);
  CHECK_FALSE(m.allocate(5));
  auto c = m.allocate(4);
  REQUIRE(c);
  CHECK(std::set<std::uint64_t>(c->begin(), c->end()) ==
        std::set<std::uint64_t>(a->begin(), a->end()));
  CHECK(m.allocate(0)->empty());
}

TEST_CASE("the block manager refuses a double free and a foreign block") {
  block_manager m(4);
  auto a = *m.allocate(2);
  m.release(a);
  CHECK_THROWS_WITH_AS(m.release({a[0]}),
                       doctest::Contains("released while free"),
                       std::logic_error);
  auto b = *m.allocate(2);
  CHECK_THROWS_WITH_AS(m.release({b[0], 7}),
                       doctest::Contains("block 7 released, but the cache "
                                         "has 4 blocks"),
                       std::logic_error);
  CHECK_THROWS_WITH_AS(m.release({b[0], b[0]}),
                       doctest::Contains("twice in one release"),
                       std::logic_error);
  CHECK(m.free_blocks() == 2); // the refused releases changed nothing
  m.release(b);
  CHECK(m.free_blocks() == 4);
}

TEST_CASE("the host cache has one zeroed allocation per layer") {
  auto g = small_geometry();
  paged_cache cache(g, -1);
  CHECK(cache.gpu() == -1);
  REQUIRE(cache.bases().size() == g.layers);
  CHECK(cache.layout().name() == "vllm_per_layer");
  CHECK(cache.layout().region_bytes() == 2 * g.blocks * g.block_bytes());
  CHECK(g.blocks_for(9) == 3);
  CHECK(g.blocks_for(8) == 2);
}

TEST_CASE("KV written by the model step verifies after a copy to other "
          "block ids, and not otherwise") {
  auto g = small_geometry();
  paged_cache prefill(g, -1), decode(g, -1);
  const std::vector<std::uint64_t> src{5, 9, 2, 3}, dst{0, 1, 7, 15};
  write_all_layers(prefill, 42, src);
  CHECK(verify_request_host(prefill.layout(), prefill.bases(), 42, src) == "");
  // Before the copy the decode cache holds zeros: the first word differs.
  CHECK(verify_request_host(decode.layout(), decode.bases(), 42, dst)
            .find("request 42 layer 0 K block #0 (id 0) word 0") == 0);
  copy_request(prefill, src, decode, dst);
  CHECK(verify_request_host(decode.layout(), decode.bases(), 42, dst) == "");
  // Content depends on the request: another id's check fails.
  CHECK(verify_request_host(decode.layout(), decode.bases(), 43, dst) != "");
  // One flipped byte anywhere is found and named: layer 2, V, block #3.
  auto at = decode.layout().locate(2, kvferry::kv_half::v, dst[3]);
  static_cast<std::uint8_t*>(decode.bases()[at.region])[at.offset + 61] ^= 1;
  CHECK(verify_request_host(decode.layout(), decode.bases(), 42, dst)
            .find("request 42 layer 2 V block #3 (id 15) word 7: ") == 0);
}

TEST_CASE("K and V, layers and block positions get different content") {
  std::set<std::uint64_t> seeds;
  for (std::uint64_t r : {1, 2})
    for (std::uint32_t l = 0; l < 4; ++l)
      for (std::uint64_t i = 0; i < 8; ++i)
        for (int h = 0; h < 2; ++h)
          seeds.insert(half_seed(r, l, i, h));
  CHECK(seeds.size() == 2 * 4 * 8 * 2);
  CHECK(kv_word(7, 0) != kv_word(7, 1));
  CHECK(whole_words(64));
  CHECK_FALSE(whole_words(60));
  CHECK_FALSE(whole_words(0));
}

TEST_CASE("the trace plan scales arrivals and caps prompts to the cache") {
  kvferry::test::scratch_dir dir("kvferry-example-trace");
  const auto path = (dir.path / "t.jsonl").string();
  std::ofstream(path)
      << "{\"timestamp\": 1000, \"input_length\": 40, \"output_length\": 3, "
         "\"hash_ids\": [0]}\n"
         "{\"timestamp\": 1500, \"input_length\": 500, \"output_length\": 5, "
         "\"hash_ids\": []}\n"
         "{\"timestamp\": 3000, \"input_length\": 7, \"output_length\": 1, "
         "\"hash_ids\": []}\n";
  auto plan = load_trace(path, 2, 0.1, 64);
  CHECK(plan.format == "mooncake-jsonl");
  REQUIRE(plan.requests.size() == 2);
  CHECK(plan.requests[0].arrival_ns == 0);
  CHECK(plan.requests[1].arrival_ns == 50'000'000); // 500 ms x 0.1
  CHECK(plan.requests[0].tokens == 40);
  CHECK(plan.requests[1].tokens == 64);
  CHECK(plan.requests[1].trace_tokens == 500);
  CHECK(plan.requests[1].output_tokens == 5);
  CHECK(plan.capped == 1);
  CHECK(load_trace(path, 10, 1, 64).requests.size() == 3);

  const auto azure = (dir.path / "a.csv").string();
  std::ofstream(azure) << "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                          "2023-11-16 18:17:03.9799600,4808,10\n"
                          "2023-11-16 18:17:04.0319600,3180,8\n";
  auto a = load_trace(azure, 5, 1, 10000);
  CHECK(a.format == "azure-csv");
  REQUIRE(a.requests.size() == 2);
  CHECK(a.requests[1].arrival_ns == 52'000'000);

  CHECK_THROWS_WITH_AS(load_trace((dir.path / "none").string(), 1, 1, 1),
                       doctest::Contains("none"), std::runtime_error);
  std::ofstream(dir.path / "empty.jsonl") << "";
  CHECK_THROWS_AS(load_trace((dir.path / "empty.jsonl").string(), 1, 1, 1),
                  std::runtime_error);
}

TEST_CASE("the TTFT split adds up, and percentiles are nearest-rank") {
  request_record r;
  r.arrival_ns = 1'000;
  r.admitted_ns = 3'000;    // waited 2 us for decode blocks
  r.prefill_queue_ns = 500; // and 0.5 us for prefill blocks
  r.prefill_ns = 4'000;
  r.kv_ready_ns = 9'000; // 6 us after admission: 1.5 us left for transfer
  r.first_token_ns = 9'700;
  auto s = split(r);
  CHECK(s.total == 8'700);
  CHECK(s.wait == 2'500);
  CHECK(s.prefill == 4'000);
  CHECK(s.transfer == 1'500);
  CHECK(s.decode == 700);
  CHECK(s.wait + s.prefill + s.transfer + s.decode == s.total);

  std::vector<std::int64_t> v;
  for (int i = 100; i >= 1; --i)
    v.push_back(i);
  CHECK(percentile(v, 50) == 50);
  CHECK(percentile(v, 99) == 99);
  CHECK(percentile(v, 100) == 100);
  CHECK(percentile({}, 50) == 0);
  CHECK(percentile({7}, 99) == 7);

  run_report rep;
  rep.title = "title";
  rep.wall_s = 2;
  rep.done = {r, r};
  rep.done[0].bytes = rep.done[1].bytes = 1 << 20;
  rep.done[0].data_ns = rep.done[1].data_ns = 1'000'000;
  auto text = format_report(rep);
  CHECK(text.find("2 verified (every byte), 0 failed") != std::string::npos);
  CHECK(text.find("1.0 requests/s") != std::string::npos);
  CHECK(text.find("transfer GB/s     p50 1.049 per request") !=
        std::string::npos);
  CHECK(text.find("0.001 over the run") != std::string::npos);
  CHECK(text.find("peak RSS") != std::string::npos);
}

TEST_CASE("the servers' notifications read back as written") {
  auto line = format_message("prefilled", {7, 1500, 250000});
  CHECK(line == "prefilled 7 1500 250000");
  auto m = parse_message(line);
  REQUIRE(m);
  CHECK(m->verb == "prefilled");
  CHECK(m->numbers == std::vector<std::uint64_t>{7, 1500, 250000});
  CHECK(m->text.empty());
  m = parse_message(format_message("failed", {9}, "kvferry.timeout: 10 s"));
  REQUIRE(m);
  CHECK(m->numbers == std::vector<std::uint64_t>{9});
  CHECK(m->text == "kvferry.timeout: 10 s");
  CHECK_FALSE(parse_message(""));
  CHECK(parse_message("bye")->verb == "bye");

  auto g = small_geometry();
  auto h = parse_message(hello(g));
  REQUIRE(h);
  CHECK(hello_mismatch(*h, g) == "");
  auto bigger = g;
  bigger.blocks *= 2; // another cache size is fine
  CHECK(hello_mismatch(*h, bigger) == "");
  auto other = g;
  other.layers = 5;
  CHECK(hello_mismatch(*h, other) ==
        "KV geometry differs: decode 3 layers x 16 blocks x 4 tokens x 16 B, "
        "prefill 5 layers x 16 blocks x 4 tokens x 16 B");
  CHECK(hello_mismatch(*parse_message("hello 1 2"), g).find("without the 4") !=
        std::string::npos);
}

namespace {

// parse_* on a command line written as one string.
template<class F>
auto parse_line(F parse, std::string line) {
  std::vector<std::string> words{"kvferry-embedding-example"};
  for (std::size_t at = 0; at < line.size();) {
    auto end = line.find(' ', at);
    words.push_back(line.substr(at, end - at));
    at = end == std::string::npos ? line.size() : end + 1;
  }
  std::vector<char*> argv;
  for (auto& w : words)
    argv.push_back(w.data());
  return parse(static_cast<int>(argv.size()), argv.data());
}

} // namespace

TEST_CASE("the command line: defaults, and errors that name the option") {
  auto d = parse_line(parse_decode, "decode --peer 10.0.0.5:7000 --trace t "
                                    "--blocks 400 --requests 50");
  CHECK(d.peer_host == "10.0.0.5");
  CHECK(d.peer_port == 7000);
  CHECK(d.requests == 50);
  CHECK(d.max_prompt_blocks == 100); // a quarter of the cache
  CHECK(d.geometry.block_bytes() == 16 * 512);
  auto p = parse_line(parse_prefill, "prefill --port 7000 --layers 2");
  CHECK(p.port == 7000);
  CHECK(p.geometry.layers == 2);
  CHECK(p.prefill_tokens_per_s == 0);

  auto refused = [](auto parse, const char* line, const char* why) {
    CAPTURE(line);
    CHECK_THROWS_WITH_AS(parse_line(parse, line), doctest::Contains(why),
                         std::invalid_argument);
  };
  refused(parse_decode, "decode --trace t", "decode needs --peer");
  refused(parse_decode, "decode --peer h:1", "decode needs --trace");
  refused(parse_decode, "decode --peer h --trace t", "expected HOST:PORT");
  refused(parse_decode, "decode --peer h:70000 --trace t", "not a port");
  refused(parse_decode, "decode --peer h:1 --trace t --max-prompt-blocks 9999",
          "more than the cache's --blocks 2048");
  refused(parse_decode, "decode --peer h:1 --trace t --time-scale 0",
          "--time-scale 0: expected a positive number");
  refused(parse_prefill, "prefill --port", "--port needs a value");
  refused(parse_prefill, "prefill --wat 1", "unknown option --wat");
  refused(parse_prefill, "prefill --layers x", "--layers x: expected a whole");
  refused(parse_prefill, "prefill --block-tokens 3 --token-bytes 2",
          "multiple of 8 bytes");
  CHECK(choose_gpu("none") == -1);
  CHECK_THROWS_WITH_AS(choose_gpu("99"), doctest::Contains("--gpu 99"),
                       std::invalid_argument);
}
