// Errors as values for the APIs that hide CAF (kvferry::node,
// kvferry::endpoint): a `status` is a code and a reason that names the
// peer, file or call at fault; a `result<T>` is a T or the status that says
// why there is none. Neither throws on failure; only reading the value of a
// failed result does (a programming error, reported with the reason).
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "kvferry/runtime/ec.hpp"

namespace kvferry {

class status {
public:
  /// Success.
  status() = default;
  status(ec code, std::string reason)
      : code_(code), reason_(std::move(reason)) {}

  bool ok() const noexcept { return code_ == ec::none; }
  ec code() const noexcept { return code_; }
  const std::string& reason() const noexcept { return reason_; }
  /// "ok", or "kvferry.timeout: <reason>" as render() writes a caf::error.
  std::string message() const {
    if (ok())
      return "ok";
    std::string text = std::string{"kvferry."} + to_string(code_);
    if (!reason_.empty())
      text += ": " + reason_;
    return text;
  }

private:
  ec code_ = ec::none;
  std::string reason_;
};

template<class T>
class result {
public:
  result(T value) : value_(std::move(value)) {}
  /// A failure; `why` must not be ok (an ok status becomes ec::internal).
  result(status why) : error_(std::move(why)) {
    if (error_.ok())
      error_ = status{ec::internal, "a result made from an ok status"};
  }

  bool ok() const noexcept { return value_.has_value(); }
  /// Ok when there is a value.
  const status& error() const noexcept { return error_; }

  T& value() & { return checked(); }
  const T& value() const& { return const_cast<result*>(this)->checked(); }
  T&& value() && { return std::move(checked()); }
  T* operator->() { return &checked(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return checked(); }
  const T& operator*() const& { return value(); }

private:
  T& checked() {
    if (!value_)
      throw std::logic_error("kvferry::result::value() of a failure: " +
                             error_.message());
    return *value_;
  }

  std::optional<T> value_;
  status error_;
};

} // namespace kvferry
