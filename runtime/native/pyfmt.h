// Python's repr() of the few value types that appear in the runtime's error messages, so that
// msf-run-native words its one-line errors exactly as msf-run does (tests compare them).
#pragma once

#include <charconv>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

namespace msf::py {

// repr(str): single quotes unless the text holds a single quote and no double quote.
inline std::string repr(const std::string& s) {
  const char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string out(1, q);
  for (char c : s) {
    if (c == q || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + q;
}

// repr(float): the shortest text that reads back to the same double; "1.0", not "1".
inline std::string repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, res.ptr);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

// format(v, "g"): six significant digits, as f"{w:g}" in the timing lines.
inline std::string g(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// str(tuple of ints): "(12, 16)", "(32,)".
inline std::string tuple(const std::vector<int>& xs) {
  std::ostringstream o;
  o << '(';
  for (size_t i = 0; i < xs.size(); ++i) o << (i ? ", " : "") << xs[i];
  if (xs.size() == 1) o << ',';
  o << ')';
  return o.str();
}

// str(list of str): "['a', 'b']".
inline std::string list(const std::vector<std::string>& xs) {
  std::string o = "[";
  for (size_t i = 0; i < xs.size(); ++i) o += (i ? ", " : "") + repr(xs[i]);
  return o + "]";
}

template <class T>
std::string join(const std::vector<T>& xs, const std::string& sep) {
  std::ostringstream o;
  for (size_t i = 0; i < xs.size(); ++i) o << (i ? sep : "") << xs[i];
  return o.str();
}

}  // namespace msf::py
