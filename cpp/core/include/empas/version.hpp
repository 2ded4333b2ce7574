// The library version and every file-format identifier, in one place.
//
// The version is written once, in pyproject.toml ([project] version): the
// top-level CMakeLists.txt reads it from there (or from scikit-build-core's
// SKBUILD_PROJECT_VERSION_FULL) and compiles every target that links
// empas_core with EMPAS_VERSION="<version>".
//
// A format identifier names a JSON document type and its schema version
// ("empas.<kind>/<N>"); a reader refuses every other N. Bump N here when a
// file written by this version could not be read by the previous one.
#pragma once

#ifndef EMPAS_VERSION
#define EMPAS_VERSION "0.0.0"
#endif

namespace empas {

/// Library version (pyproject.toml's, through CMake).
inline constexpr const char* kVersion = EMPAS_VERSION;

/// Sensitivity profiles (Profile::to_json / from_json).
inline constexpr const char* kProfileFormat = "empas.sensitivity/1";
/// Bit-allocation plans (Plan::to_json / from_json).
inline constexpr const char* kPlanFormat = "empas.plan/1";
/// NSGA-II search checkpoints (NSGA2Config::checkpoint_path).
inline constexpr const char* kNsga2CheckpointFormat = "empas.nsga2-checkpoint/1";

/// A format identifier with a short name, for listings (e.g. the Python
/// module's `formats` dict).
struct FormatId {
  const char* name;
  const char* id;
};

/// Every format identifier above.
inline constexpr FormatId kFormats[] = {
    {"profile", kProfileFormat},
    {"plan", kPlanFormat},
    {"nsga2_checkpoint", kNsga2CheckpointFormat},
};

}  // namespace empas
