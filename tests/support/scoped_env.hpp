// An environment variable set (or unset) for one scope, restored when the
// scope ends.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>

namespace kvferry::test {

class scoped_env {
public:
  /// `value` null: the variable is unset for the scope.
  scoped_env(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name))
      old_ = old;
    if (value)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  scoped_env(const char* name, const std::string& value)
      : scoped_env(name, value.c_str()) {}
  scoped_env(const scoped_env&) = delete;
  scoped_env& operator=(const scoped_env&) = delete;
  ~scoped_env() {
    if (old_)
      setenv(name_, old_->c_str(), 1);
    else
      unsetenv(name_);
  }

private:
  const char* name_;
  std::optional<std::string> old_;
};

} // namespace kvferry::test
