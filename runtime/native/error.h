// One exception type for every user-facing error (the C++ twin of msf_train.errors.MsfError):
// main() turns it into "Error: <message>" on one stderr line and a non-zero exit.
#pragma once

#include <stdexcept>
#include <string>

namespace msf {

class MsfError : public std::runtime_error {
 public:
  explicit MsfError(const std::string& message, int exit_code = 1)
      : std::runtime_error(message), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;  // 1 for bad input or artifacts, 2 for bad command lines (as click)
};

// A command-line mistake (unknown flag, missing value): exit code 2, as click's usage errors.
inline MsfError UsageError(const std::string& message) { return MsfError(message, 2); }

}  // namespace msf
