// Skipping one test case at run time, saying why (issue #19). doctest 2.4
// has no run-time skip, and a case that just `return`s on a machine where it
// does not apply (a GPU, no peer access, no MPS) passes with nothing tested.
// Such a case calls skip_case("reason") and returns:
//   - "SKIPPED: <case>: <reason>" goes to stdout at once;
//   - the executable's main (doctest_main.cpp, gpu_test_main.cpp,
//     two_gpu_test_main.cpp) ends through finish_run(), which lists the
//     skipped cases again after doctest's summary and exits 77 (ctest:
//     "skipped") when every case that ran was skipped, so an executable that
//     tested nothing never reads as passed. A partly skipped executable
//     passes, and scripts/device-run.sh counts its SKIPPED lines in its row.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include <doctest/doctest.h>

namespace kvferry::test {

namespace detail {
inline std::vector<std::string>& skipped_cases() {
  static std::vector<std::string> cases;
  return cases;
}
inline int& cases_started() {
  static int n = 0;
  return n;
}
inline std::string& current_case() {
  static std::string name = "?";
  return name;
}
} // namespace detail

/// Marks the running test case skipped (call it, then return).
inline void skip_case(const std::string& reason) {
  auto entry = detail::current_case() + ": " + reason;
  std::printf("SKIPPED: %s\n", entry.c_str());
  std::fflush(stdout);
  detail::skipped_cases().push_back(std::move(entry));
}

/// Counts the cases that start and remembers the running one's name; each
/// main registers it once: REGISTER_LISTENER("kvferry_cases", 1,
/// kvferry::test::case_counter).
struct case_counter : doctest::IReporter {
  explicit case_counter(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData& data) override {
    ++detail::cases_started();
    detail::current_case() = data.m_name;
  }
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

/// The exit status of a test executable after `doctest_rc`: 77 when it
/// passed but every case that ran skipped itself.
inline int finish_run(int doctest_rc) {
  const auto& skipped = detail::skipped_cases();
  if (skipped.empty())
    return doctest_rc;
  std::printf("%zu of %d test case(s) skipped on this machine:\n",
              skipped.size(), detail::cases_started());
  for (const auto& s : skipped)
    std::printf("  %s\n", s.c_str());
  if (doctest_rc == 0 &&
      static_cast<int>(skipped.size()) == detail::cases_started()) {
    std::printf("SKIPPED: every test case that ran was skipped\n");
    return 77;
  }
  return doctest_rc;
}

} // namespace kvferry::test
