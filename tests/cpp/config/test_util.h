// Helpers shared by the config tests: load YAML text and capture the error message.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "switchyard/common/error.h"
#include "switchyard/config/config.h"

namespace switchyard::config::testing {

// The message of the switchyard::Error that `f` throws; fails the test if it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const switchyard::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a switchyard::Error, but nothing was thrown";
  return "";
}

// Loads `yaml` as if from a file named "t.yaml" and returns the error message.
inline std::string load_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return error_of([&] { load_config_string(yaml, "t.yaml", overrides); });
}

inline Config load(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return load_config_string(yaml, "t.yaml", overrides);
}

}  // namespace switchyard::config::testing

#define EXPECT_CONTAINS(haystack, needle)                                                  \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos)                         \
      << "expected to find: " << (needle) << "\n                in: " << (haystack)
