// Text read from untrusted files (names, keys, JSON): checks and escaping shared by every
// parser, so each error message stays on one line and names the file.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace quantkit {

// Limits on JSON documents: far above any real config or header, far below what would let
// a hostile file exhaust memory or the stack of a recursive consumer.
inline constexpr int kMaxJsonDepth = 64;
inline constexpr uint64_t kMaxJsonFileBytes = uint64_t(256) << 20;

// Whether s is well-formed UTF-8 (no overlong forms, surrogates or code points > U+10FFFF).
bool valid_utf8(std::string_view s);

// s for an error message: control characters and bytes that are not valid UTF-8 become
// \xNN, and anything past max_len bytes is cut ("...").
std::string printable(std::string_view s, size_t max_len = 200);

// Parses JSON text from `file` strictly: a duplicated object key (nlohmann would silently
// keep the last one) or nesting deeper than kMaxJsonDepth is an error. Errors read
// "<file>: <what> ...", on one line.
nlohmann::json parse_json_strict(const std::string& file, std::string_view text, const char* what);

// Reads and parses a whole JSON file (at most kMaxJsonFileBytes), as parse_json_strict.
nlohmann::json read_json_file(const std::string& path, const char* what);

}  // namespace quantkit
