// JSON text and file I/O shared by every EMPAS file format.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace empas {

/// Parses JSON text; throws FormatError with the parser's position on failure.
nlohmann::json parse_json(const std::string& text, const std::string& what);
/// Writes text to path atomically (temp file in the same directory + rename).
void write_file_atomic(const std::string& path, const std::string& text);
std::string read_file(const std::string& path);

}  // namespace empas
