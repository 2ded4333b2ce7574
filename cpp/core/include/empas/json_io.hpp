// JSON text and file I/O shared by every EMPAS file format.
#pragma once
#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>

namespace empas {

/// Deepest array/object nesting parse_json accepts (the formats use < 10).
inline constexpr size_t kMaxJsonDepth = 256;

/// Parses JSON text; throws FormatError with the parser's position on failure,
/// and for text nested deeper than kMaxJsonDepth.
nlohmann::json parse_json(const std::string& text, const std::string& what);
/// Writes text to path atomically: a temp file in the same directory, fsync,
/// rename over path, fsync of the directory. Throws ValueError on failure.
void write_file_atomic(const std::string& path, const std::string& text);
std::string read_file(const std::string& path);

}  // namespace empas
