// core/error.h - the one exception type lokal throws for bad input and failed operations.
#pragma once
#include <stdexcept>
#include <string>

namespace lokal {

// Thrown for any user-facing failure (bad file, unsupported type, bad option).
// what() is a complete, single-line message meant to be shown to the user as-is.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

}  // namespace lokal
