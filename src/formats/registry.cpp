#include <algorithm>

#include "quantkit/error.h"
#include "quantkit/format.h"

namespace quantkit {
namespace {

std::vector<FormatFamily>& families() {
  static std::vector<FormatFamily> f;
  return f;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == sep) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  return out;
}

std::string valid_forms() {
  std::string out;
  for (const auto& f : format_families()) out += (out.empty() ? "" : "; ") + f.grammar;
  return out;
}

}  // namespace

void register_format_family(FormatFamily f) {
  auto& all = families();
  for (const auto& g : all)
    if (g.name == f.name) throw Error("format family '" + f.name + "' registered twice");
  all.push_back(std::move(f));
  std::sort(all.begin(), all.end(), [](const FormatFamily& a, const FormatFamily& b) { return a.name < b.name; });
}

const std::vector<FormatFamily>& format_families() { return families(); }

std::unique_ptr<Format> make_format(const std::string& spec) {
  // Specs also come from model files: a control byte must not reach a message unescaped.
  for (size_t i = 0; i < spec.size(); ++i)
    if (spec[i] <= 0x20 || spec[i] >= 0x7f)
      fail("invalid format spec: byte {:#04x} at position {} is not printable ASCII (valid forms: {})",
           static_cast<unsigned char>(spec[i]), i, valid_forms());
  if (spec.empty() || spec.size() > 256) fail("invalid format spec '{}' (valid forms: {})", spec, valid_forms());
  const std::vector<std::string> tokens = split(spec, ':');
  for (const auto& t : tokens)
    if (t.empty()) fail("invalid format spec '{}': empty field (valid forms: {})", spec, valid_forms());
  for (const auto& fam : format_families()) {
    std::unique_ptr<Format> f;
    try {
      f = fam.parse(tokens);
    } catch (const Error& e) {
      fail("invalid format spec '{}': {} (form: {})", spec, e.what(), fam.grammar);
    }
    if (!f) continue;
    if (f->spec() != spec)
      fail("format spec '{}' is not in canonical form: write '{}'", spec, f->spec());
    return f;
  }
  fail("unknown format '{}' (valid forms: {})", spec, valid_forms());
}

}  // namespace quantkit
