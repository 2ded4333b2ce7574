// Error types of the EMPAS core. Every failure a user can cause is one of
// these; the Python bindings translate them into Python exceptions.
#pragma once
#include <stdexcept>
#include <string>

namespace empas {

/// Invalid argument or configuration (maps to Python ValueError).
struct ValueError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// Malformed, mismatched or unsupported file contents (a ValueError subclass in Python).
struct FormatError : ValueError {
  using ValueError::ValueError;
};

/// A budget no plan can meet (a ValueError subclass in Python).
struct InfeasibleError : ValueError {
  using ValueError::ValueError;
};

}  // namespace empas
