// File formats: sensitivity profiles (empas/profile.hpp), plans
// (empas/plan.hpp), the JSON and file helpers they share (empas/json_io.hpp),
// and the format identifiers and version (empas/version.hpp).
// Umbrella header: include the specific header where one is enough.
#pragma once
#include "empas/json_io.hpp"
#include "empas/plan.hpp"
#include "empas/profile.hpp"
#include "empas/version.hpp"
