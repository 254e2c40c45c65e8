// main() for CPU tests: doctest, plus skip_case.hpp's accounting of cases
// that skip themselves at run time (exit 77 when every case that ran did).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "skip_case.hpp"

REGISTER_LISTENER("kvferry_cases", 1, kvferry::test::case_counter);

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  return kvferry::test::finish_run(context.run());
}
