// Which pattern worker takes a fill or check (job_counts in
// actors/src/kv_pattern_workers.hpp): the one with the fewest jobs
// outstanding, idle ones in turn, so that a request never waits behind
// another's job while a worker idles.
#include <doctest/doctest.h>

#include "kv_pattern_workers.hpp"

using kvferry::pattern_detail::job_counts;

TEST_CASE("idle workers take jobs in turn") {
  job_counts jobs{3};
  for (std::size_t round = 0; round < 4; ++round) {
    auto a = jobs.take(), b = jobs.take(), c = jobs.take();
    CHECK(a == 0);
    CHECK(b == 1);
    CHECK(c == 2);
    jobs.done(a);
    jobs.done(b);
    jobs.done(c);
  }
}

TEST_CASE("a job goes to an idle worker, not to the busy one in turn") {
  job_counts jobs{2};
  auto slow = jobs.take(); // worker 0 busy (a long check)
  CHECK(slow == 0);
  auto quick = jobs.take();
  CHECK(quick == 1);
  jobs.done(quick);
  // Round-robin would now pick worker 0, behind the slow job.
  CHECK(jobs.take() == 1);
  CHECK(jobs.outstanding(0) == 1);
  CHECK(jobs.outstanding(1) == 1);
  jobs.done(slow);
  CHECK(jobs.take() == 0);
}

TEST_CASE("with every worker busy, the least loaded queues the job") {
  job_counts jobs{2};
  for (int k = 0; k < 5; ++k)
    jobs.take();
  CHECK(jobs.outstanding(0) == 3); // evenly, within one
  CHECK(jobs.outstanding(1) == 2);
  jobs.done(1);
  jobs.done(1);
  CHECK(jobs.take() == 1);
}

TEST_CASE("one worker takes every job") {
  job_counts jobs{1};
  CHECK(jobs.take() == 0);
  CHECK(jobs.take() == 0);
  CHECK(jobs.outstanding(0) == 2);
}
