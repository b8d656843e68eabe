#include "io/untrusted.h"

#include <algorithm>
#include <set>
#include <vector>

#include "quantkit/error.h"
#include "quantkit/mapped_file.h"

namespace quantkit {
namespace {

// Length of the well-formed UTF-8 sequence starting at s[i], 0 if there is none.
size_t utf8_sequence(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  if (c < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the second byte
  if (c >= 0xc2 && c <= 0xdf) n = 2;
  else if (c == 0xe0) n = 3, lo = 0xa0;
  else if (c == 0xed) n = 3, hi = 0x9f;  // no surrogates
  else if (c >= 0xe1 && c <= 0xef) n = 3;
  else if (c == 0xf0) n = 4, lo = 0x90;
  else if (c == 0xf4) n = 4, hi = 0x8f;  // <= U+10FFFF
  else if (c >= 0xf1 && c <= 0xf3) n = 4;
  else return 0;
  if (s.size() - i < n) return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k)
    if (byte(i + k) < 0x80 || byte(i + k) > 0xbf) return 0;
  return n;
}

std::string one_line(std::string s) {
  std::replace_if(s.begin(), s.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
  return s;
}

}  // namespace

bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_sequence(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string printable(std::string_view s, size_t max_len) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (i >= max_len) {
      out += "...";
      break;
    }
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = utf8_sequence(s, i);
    if (n == 0 || c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}


nlohmann::json parse_json_strict(const std::string& file, std::string_view text, const char* what) {
  using json = nlohmann::json;
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  bool too_deep = false;
  auto on_event = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (depth > kMaxJsonDepth) too_deep = true;
    if (ev == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (ev == json::parse_event_t::key && !open_objects.empty()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(k).second && duplicate.empty()) duplicate = k;
    }
    // Stop building once the document is known to be rejected.
    return !too_deep;
  };
  json j;
  try {
    j = json::parse(text.begin(), text.end(), on_event);
  } catch (const json::exception& e) {
    if (!too_deep) fail("{}: {} is not valid JSON: {}", file, what, printable(one_line(e.what())));
  }
  if (too_deep) fail("{}: {} nests deeper than {} levels", file, what, kMaxJsonDepth);
  if (!duplicate.empty()) fail("{}: {} has the key '{}' twice", file, what, printable(duplicate));
  return j;
}

nlohmann::json read_json_file(const std::string& path, const char* what) {
  MappedFile f(path);
  if (f.size() > kMaxJsonFileBytes)
    fail("{}: {} of {} bytes exceeds the limit of {} MiB", path, what, f.size(), kMaxJsonFileBytes >> 20);
  const char* text = reinterpret_cast<const char*>(f.data());
  return parse_json_strict(path, std::string_view(text ? text : "", f.size()), what);
}

}  // namespace quantkit
