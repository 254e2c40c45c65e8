// `kvferry bench node` end to end, tiny: it reports a 1-block pull beside
// the CAF round trip and exits. Its two nodes' actor systems know each
// other's actors, and CAF 0.17's teardown could then wait forever (about
// one run in seven on the 2-core machine before the bench bounded it), so
// it runs several times under a deadline. (Times are not asserted: a
// benchmark is not a timed test.)
#include <string>

#include <doctest/doctest.h>

#include "run_kvferry.hpp"

TEST_CASE("bench node reports a 1-block pull and always exits") {
  for (int run = 0; run < 5; ++run) {
    CAPTURE(run);
    const auto r =
        kvferry::test::run_kvferry("bench node --blocks 1 --repeats 20", 40);
    INFO(r.output);
    REQUIRE(r.status == 0);
    CHECK(r.output.find("ctl/RTT") != std::string::npos);
    CHECK(r.output.find("plugin") != std::string::npos); // the path column
  }
}
