#include <fstream>
#include <sstream>

#include "quantkit/error.h"
#include "quantkit/eval.h"

namespace quantkit {

std::string read_text(const std::string& path, const std::string& separator) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot open text file", path);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  if (separator.empty()) return text;
  const std::string from = "\n" + separator + "\n";
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = text.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(text, pos, hit - pos);
    out += '\n';
  }
  out.append(text, pos);
  return out;
}

}  // namespace quantkit
