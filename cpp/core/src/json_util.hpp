// Internal helpers shared by the file formats (profile_format.cpp,
// plan_format.cpp): typed access to JSON fields that throws FormatError
// naming the field, the quantizer and table encodings, and hashing.
// Defined in json_io.cpp; not installed, not part of the public API.
#pragma once
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "empas/space.hpp"

namespace empas::json_util {

using json = nlohmann::json;

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// Throws FormatError(msg).
[[noreturn]] void fail(const std::string& msg);

/// j[key], which must exist (j must be an object); `where` names j in errors.
const json& need(const json& j, const char* key, const std::string& where);
std::string need_string(const json& j, const char* key, const std::string& where);
/// A finite number.
double as_number(const json& v, const std::string& where);
/// An integer (an integral float is accepted) that fits int64.
int64_t as_int(const json& v, const std::string& where);
/// An integer that must fit an int (bit widths, byte counts of scales).
int as_small_int(const json& v, const std::string& where);
/// j[key] if it is an object, {} if absent or null; anything else throws.
json object_or_empty(const json& j, const char* key, const std::string& where);

/// "[2, 4, 16]".
std::string bits_list(const std::vector<int>& b);

Quantizer quantizer_from_json(const json& j, const std::string& where);
json quantizer_to_json(const Quantizer& q);

/// Reads an n_units x n_choices table of numbers (null -> NaN).
std::vector<double> read_table(const json& j, int nu, int nc, const std::string& name,
                               const std::vector<Unit>& units, const std::vector<int>& choices);
/// Writes an nu x nc table (non-finite -> null).
json table_to_json(const std::vector<double>& t, int nu, int nc);

/// Numeric suffix of names like "layer_12" or "12" (-1 if none).
long name_index(const std::string& s);

/// 64-bit FNV-1a of s.
uint64_t fnv(const std::string& s);
/// 16 lowercase hex digits.
std::string hex(uint64_t h);

}  // namespace empas::json_util
