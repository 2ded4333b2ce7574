// JSON and file I/O: parse_json, read_file, write_file_atomic (public,
// empas/json_io.hpp) and the helpers the file formats share (json_util.hpp).
#include "empas/json_io.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "empas/error.hpp"
#include "json_util.hpp"

namespace empas {

namespace json_util {

[[noreturn]] void fail(const std::string& msg) { throw FormatError(msg); }

const json& need(const json& j, const char* key, const std::string& where) {
  if (!j.is_object()) fail(where + ": expected a JSON object");
  auto it = j.find(key);
  if (it == j.end()) fail(where + ": missing required field '" + key + "'");
  return *it;
}

std::string need_string(const json& j, const char* key, const std::string& where) {
  const json& v = need(j, key, where);
  if (!v.is_string()) fail(where + "." + key + " must be a string");
  return v.get<std::string>();
}

double as_number(const json& v, const std::string& where) {
  if (!v.is_number()) fail(where + " must be a number, got " + std::string(v.type_name()));
  const double d = v.get<double>();
  if (!std::isfinite(d)) fail(where + " is not finite");
  return d;
}

int64_t as_int(const json& v, const std::string& where) {
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::floor(d) != d || !std::isfinite(d)) fail(where + " must be an integer");
    if (!(d >= -0x1p63 && d < 0x1p63)) fail(where + " is out of range");
    return static_cast<int64_t>(d);
  }
  if (!v.is_number_integer()) fail(where + " must be an integer, got " + std::string(v.type_name()));
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    fail(where + " is out of range");
  return v.get<int64_t>();
}

// An integer that must fit an int (bit widths, byte counts of scales).
int as_small_int(const json& v, const std::string& where) {
  const int64_t i = as_int(v, where);
  if (i < INT_MIN || i > INT_MAX) fail(where + " is out of range");
  return static_cast<int>(i);
}

json object_or_empty(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return json::object();
  if (!it->is_object()) fail(where + "." + key + " must be an object");
  return *it;
}

std::string bits_list(const std::vector<int>& b) {
  std::string s = "[";
  for (size_t i = 0; i < b.size(); ++i) s += (i ? ", " : "") + std::to_string(b[i]);
  return s + "]";
}

Quantizer quantizer_from_json(const json& j, const std::string& where) {
  Quantizer q;
  if (j.is_null()) return q;
  if (!j.is_object()) fail(where + " must be an object");
  if (j.contains("scheme")) q.scheme = need_string(j, "scheme", where);
  if (j.contains("granularity")) q.granularity = need_string(j, "granularity", where);
  if (j.contains("group_size")) q.group_size = as_int(j["group_size"], where + ".group_size");
  if (j.contains("scale_bytes")) q.scale_bytes = as_small_int(j["scale_bytes"], where + ".scale_bytes");
  if (j.contains("zero_bytes")) q.zero_bytes = as_small_int(j["zero_bytes"], where + ".zero_bytes");
  if (j.contains("bytes_model")) q.bytes_model = need_string(j, "bytes_model", where);
  try {
    q.validate();
  } catch (const ValueError& e) {
    fail(where + ": " + e.what());
  }
  return q;
}

json quantizer_to_json(const Quantizer& q) {
  return {{"scheme", q.scheme},           {"granularity", q.granularity}, {"group_size", q.group_size},
          {"scale_bytes", q.scale_bytes}, {"zero_bytes", q.zero_bytes},   {"bytes_model", q.bytes_model}};
}

// Reads an n_units x n_choices table of numbers (null -> NaN).
std::vector<double> read_table(const json& j, int nu, int nc, const std::string& name,
                               const std::vector<Unit>& units, const std::vector<int>& choices) {
  if (!j.is_array()) fail("profile." + name + " must be an array of per-unit rows");
  if (static_cast<int>(j.size()) != nu)
    fail("profile." + name + " has " + std::to_string(j.size()) + " rows but there are " +
         std::to_string(nu) + " units (missing or extra units)");
  std::vector<double> t(static_cast<size_t>(nu) * nc, kNaN);
  for (int u = 0; u < nu; ++u) {
    const json& row = j[u];
    const std::string where =
        "profile." + name + "[" + std::to_string(u) + "] (unit '" + units[u].name + "')";
    if (!row.is_array() || static_cast<int>(row.size()) != nc)
      fail(where + " must be an array of " + std::to_string(nc) + " values, one per choice " +
           bits_list(choices));
    for (int c = 0; c < nc; ++c) {
      if (row[c].is_null()) continue;
      t[static_cast<size_t>(u) * nc + c] =
          as_number(row[c], where + " at " + std::to_string(choices[c]) + " bits");
    }
  }
  return t;
}

json table_to_json(const std::vector<double>& t, int nu, int nc) {
  json rows = json::array();
  for (int u = 0; u < nu; ++u) {
    json row = json::array();
    for (int c = 0; c < nc; ++c) {
      const double v = t[static_cast<size_t>(u) * nc + c];
      row.push_back(std::isfinite(v) ? json(v) : json(nullptr));
    }
    rows.push_back(row);
  }
  return rows;
}

// Numeric suffix of names like "layer_12" or "12" (-1 if none).
long name_index(const std::string& s) {
  size_t i = s.size();
  while (i > 0 && std::isdigit(static_cast<unsigned char>(s[i - 1]))) --i;
  if (i == s.size() || s.size() - i > 9) return -1;
  return std::stol(s.substr(i));
}

uint64_t fnv(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  return h;
}

std::string hex(uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace json_util

using json = nlohmann::json;
using json_util::fail;

// ---------------------------------------------------------------- I/O utils
namespace {
// Deepest nesting of arrays/objects outside strings. The formats need a
// handful of levels; a file nested thousands deep is hostile or broken, and
// would exhaust the stack of anything that walks it recursively.
size_t nesting_depth(const std::string& text) {
  size_t depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (const char ch : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (ch == '\\')
        escaped = true;
      else if (ch == '"')
        in_string = false;
    } else if (ch == '"') {
      in_string = true;
    } else if (ch == '[' || ch == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((ch == ']' || ch == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}
}  // namespace

json parse_json(const std::string& text, const std::string& what) {
  if (const size_t d = nesting_depth(text); d > kMaxJsonDepth)
    fail(what + ": JSON nested " + std::to_string(d) + " levels deep, more than the " +
         std::to_string(kMaxJsonDepth) + " allowed");
  try {
    return json::parse(text);
  } catch (const json::out_of_range& e) {
    fail(what + ": a number is not finite (it overflows a double): " + e.what());
  } catch (const json::exception& e) {
    std::string msg = what + " is not valid JSON: " + e.what();
    if (text.find("NaN") != std::string::npos || text.find("Infinity") != std::string::npos)
      msg +=
          " (JSON has no NaN/Infinity: every delta must be a finite number, or null for a "
          "choice the unit does not allow)";
    fail(msg);
  }
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw ValueError("cannot open '" + path + "' for reading");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file_atomic(const std::string& path, const std::string& text) {
  // A temp file in the same directory, written and fsync'ed, then renamed over
  // the target and the directory fsync'ed: after a crash or power loss the
  // path holds either the old or the new contents, never a torn file.
  const std::string tmp = path + ".tmp." + std::to_string(static_cast<long>(::getpid()));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw ValueError("cannot open '" + tmp + "' for writing: " + std::strerror(errno));
  const char* p = text.data();
  size_t left = text.size();
  bool ok = true;
  while (ok && left > 0) {
    const ssize_t w = ::write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    ok = w > 0;
    if (ok) {
      p += w;
      left -= static_cast<size_t>(w);
    }
  }
  const int err = errno;
  ok = ok && ::fsync(fd) == 0;
  ok = (::close(fd) == 0) && ok;
  if (!ok) {
    ::unlink(tmp.c_str());
    throw ValueError("failed writing '" + tmp + "': " + std::strerror(err ? err : errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw ValueError("cannot move '" + tmp + "' to '" + path + "': " + std::strerror(e));
  }
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // best effort: some filesystems refuse fsync on a directory
    ::close(dfd);
  }
}

}  // namespace empas
