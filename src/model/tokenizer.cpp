#include "quantkit/tokenizer.h"

#include <queue>

#include "quantkit/error.h"

namespace quantkit {
namespace {

const std::string kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space

size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xe) return 3;
  if ((c >> 3) == 0x1e) return 4;
  return 1;  // invalid lead byte: its own symbol, encoded by byte fallback
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "<0xNN>" -> NN, else -1 (vocabularies come from files: any text may carry the Byte type).
int hex_byte(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  const int hi = hex_digit(t[3]), lo = hex_digit(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

}  // namespace

Tokenizer::Tokenizer(Vocab vocab) : vocab_(std::move(vocab)) {
  if (vocab_.tokens.empty()) fail("tokenizer: empty vocabulary");
  if (vocab_.scores.size() != vocab_.tokens.size() || vocab_.types.size() != vocab_.tokens.size())
    fail("tokenizer: {} tokens but {} scores and {} types", vocab_.tokens.size(), vocab_.scores.size(),
         vocab_.types.size());
  std::fill(std::begin(byte_token_), std::end(byte_token_), -1);
  for (int i = 0; i < int(vocab_.tokens.size()); ++i) {
    const std::string& t = vocab_.tokens[i];
    if (vocab_.types[i] == TokenType::Byte) {
      int b = hex_byte(t);
      if (b >= 0) byte_token_[b] = i;
      continue;
    }
    // Control/unknown tokens never come out of plain text.
    if (vocab_.types[i] == TokenType::Control || vocab_.types[i] == TokenType::Unknown) continue;
    ids_.emplace(t, i);  // first occurrence wins, as in llama2.c's sorted lookup
  }
}

std::vector<int> Tokenizer::encode(const std::string& text, bool add_bos) const {
  std::vector<int> out;
  if (add_bos) out.push_back(vocab_.bos_id);
  if (text.empty()) return out;
  std::string s = vocab_.add_space_prefix ? kSpaceMark : "";
  for (char c : text) {
    if (c == ' ') s += kSpaceMark;
    else s += c;
  }
  // Symbols as a doubly linked list over byte ranges of s.
  struct Symbol {
    size_t start, len;
    int prev, next;
  };
  std::vector<Symbol> sym;
  for (size_t i = 0; i < s.size();) {
    size_t n = std::min(utf8_len(static_cast<unsigned char>(s[i])), s.size() - i);
    sym.push_back({i, n, int(sym.size()) - 1, int(sym.size()) + 1});
    i += n;
  }
  sym.back().next = -1;

  // Highest score first; ties go to the leftmost pair, as llama2.c's linear scan does.
  struct Candidate {
    float score;
    int left;
    size_t len;  // merged byte length, to detect stale entries
    bool operator<(const Candidate& o) const { return score != o.score ? score < o.score : left > o.left; }
  };
  std::priority_queue<Candidate> queue;
  auto try_pair = [&](int left) {
    if (left < 0 || sym[left].next < 0) return;
    const Symbol& a = sym[left];
    const Symbol& b = sym[a.next];
    auto it = ids_.find(s.substr(a.start, a.len + b.len));
    if (it != ids_.end()) queue.push({vocab_.scores[it->second], left, a.len + b.len});
  };
  for (int i = 0; i + 1 < int(sym.size()); ++i) try_pair(i);
  while (!queue.empty()) {
    Candidate c = queue.top();
    queue.pop();
    Symbol& a = sym[c.left];
    if (a.len == 0 || a.next < 0 || a.len + sym[a.next].len != c.len) continue;  // stale
    Symbol& b = sym[a.next];
    a.len += b.len;
    b.len = 0;
    a.next = b.next;
    if (a.next >= 0) sym[a.next].prev = c.left;
    try_pair(a.prev);
    try_pair(c.left);
  }
  for (int i = 0; i >= 0 && i < int(sym.size()); i = sym[i].next) {
    const std::string piece = s.substr(sym[i].start, sym[i].len);
    auto it = ids_.find(piece);
    if (it != ids_.end()) {
      out.push_back(it->second);
      continue;
    }
    for (unsigned char b : piece) {
      int id = byte_token_[b];
      out.push_back(id >= 0 ? id : vocab_.unk_id);
    }
  }
  return out;
}

std::string Tokenizer::raw_piece(int id) const {
  if (id < 0 || id >= int(vocab_.tokens.size())) fail("tokenizer: token id {} out of range", id);
  const std::string& t = vocab_.tokens[id];
  switch (vocab_.types[id]) {
    case TokenType::Control:
    case TokenType::Unknown:
    case TokenType::Unused:
      return "";
    case TokenType::Byte: {
      int b = hex_byte(t);
      return b >= 0 ? std::string(1, char(b)) : "";
    }
    default:
      break;
  }
  std::string out;
  for (size_t i = 0; i < t.size();) {
    if (t.compare(i, kSpaceMark.size(), kSpaceMark) == 0) {
      out += ' ';
      i += kSpaceMark.size();
    } else {
      out += t[i++];
    }
  }
  return out;
}

std::string Tokenizer::piece(int id, int prev) const {
  std::string p = raw_piece(id);
  // The dummy prefix added by encode() shows as a leading space on the first piece.
  if (vocab_.add_space_prefix && (prev < 0 || prev == vocab_.bos_id) && !p.empty() && p[0] == ' ') p.erase(0, 1);
  return p;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  std::string out;
  int prev = -1;
  for (int id : ids) {
    out += piece(id, prev);
    prev = id;
  }
  return out;
}

}  // namespace quantkit
