// The reason a result failed, for an assertion's message:
//   REQUIRE_MESSAGE(got, test::why(got));
// doctest evaluates the messages of passing assertions too when it reports
// successes (`-s`), and error() of a result that holds a value is
// undefined; this renders the error only when there is one.
#pragma once

#include <string>

#include "kvferry/runtime/error.hpp"

namespace kvferry::test {

template<class Result>
std::string why(const Result& x) {
  return x ? std::string{} : render(x.error());
}

} // namespace kvferry::test
