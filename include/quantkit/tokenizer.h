// SentencePiece-style BPE tokenizer (tokenizer.ggml.model = "llama", and llama2.c's):
// the text gets a dummy-prefix space, spaces become U+2581, UTF-8 characters are the
// initial symbols, and the adjacent pair whose concatenation is the highest-scoring
// token is merged until none is; leftovers fall back to byte tokens <0xNN>.
#pragma once
#include <string>
#include <unordered_map>
#include <vector>

#include "quantkit/model_file.h"

namespace quantkit {

class Tokenizer {
 public:
  explicit Tokenizer(Vocab vocab);

  std::vector<int> encode(const std::string& text, bool add_bos) const;
  // Text of a token sequence: control tokens are dropped, the dummy-prefix space of the
  // first piece is removed (as SentencePiece does), byte tokens become raw bytes.
  std::string decode(const std::vector<int>& ids) const;
  // Text of one token as it appears after `prev` (for streaming generation output).
  std::string piece(int id, int prev) const;

  int bos() const { return vocab_.bos_id; }
  int eos() const { return vocab_.eos_id; }
  int size() const { return int(vocab_.tokens.size()); }
  const Vocab& vocab() const { return vocab_; }

 private:
  std::string raw_piece(int id) const;  // byte tokens -> byte, U+2581 -> ' ', control -> ""

  Vocab vocab_;
  std::unordered_map<std::string, int> ids_;
  int byte_token_[256];
};

}  // namespace quantkit
