#include "quantkit/kv_cache.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>

#include "kernels/packed_codes.h"
#include "kernels/vec_ops.h"
#include "quantkit/error.h"
#include "quantkit/eval.h"
#include "quantkit/fp16.h"
#include "quantkit/tokenizer.h"
#include "test_util.h"

using namespace quantkit;

namespace {

std::vector<float> gaussian(size_t n, unsigned seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> x(n);
  for (float& v : x) v = d(rng);
  return x;
}

double mse(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i] - b[i]) * (a[i] - b[i]);
  return s / double(a.size());
}

struct Aidreams {
  ModelFile file = load_model(qk_test::model_path(), qk_test::tokenizer_path());
  Tokenizer tok{*file.vocab};
  LlamaModel model{file};
  std::vector<int> eval = tok.encode(read_text(qk_test::shared("data/aidreams-eval.txt"), "<|endoftext|>"), true);
};
Aidreams& aidreams() {
  static Aidreams a;
  return a;
}

// Logits of `tokens` from position 0, in one batch or token by token.
std::vector<float> run(const KVSpec& kv, const std::vector<int>& tokens, bool one_by_one) {
  auto& a = aidreams();
  const size_t vocab = size_t(a.model.config().vocab_size);
  KVCache cache = a.model.make_cache(int(tokens.size()), kv);
  std::vector<float> out(tokens.size() * vocab);
  if (!one_by_one) {
    a.model.forward(tokens.data(), int(tokens.size()), 0, cache, out.data());
    return out;
  }
  for (size_t t = 0; t < tokens.size(); ++t) a.model.forward(&tokens[t], 1, int(t), cache, &out[t * vocab]);
  return out;
}

}  // namespace

TEST(KVSpec, ParsesAndPrintsCanonically) {
  EXPECT_TRUE(parse_kv_spec("f32").is_f32());
  EXPECT_EQ(parse_kv_spec("f32,f32"), KVSpec{});
  EXPECT_EQ(parse_kv_spec("int4").str(), "int4,int4");
  EXPECT_EQ(parse_kv_spec("vidkv").str(), "vidkv,ternary");
  EXPECT_EQ(parse_kv_spec("int4:b64:r16").str(), "int4:b64:r16,int4:r16");
  EXPECT_EQ(parse_kv_spec("int2:b128,int8:g32:r4").str(), "int2:b128,int8:g32:r4");
  EXPECT_EQ(parse_kv_spec("vidkv:o0.25,ternary:g16").k.outliers, 0.25);
  EXPECT_EQ(parse_kv_spec("f16").str(), "f16,f16");
  EXPECT_TRUE(parse_kv_spec("f16").is_plain());
  EXPECT_TRUE(parse_kv_spec("f32,f16").is_plain());
  EXPECT_FALSE(parse_kv_spec("f16,int4").is_plain());
  EXPECT_EQ(kv_bits_per_element(parse_kv_spec("f16").k, true, 64, 16), 16.0);
  for (const char* s : {"f16,f32", "f16,int4", "int8,f16", "f32,int4", "int8:r32,f32", "vidkv:b64:o0.1,ternary:g32", "int2:b16:r8,int2:g8:r8",
                        "int4,ternary", "vidkv,int2"}) {
    const KVSpec k = parse_kv_spec(s);
    EXPECT_EQ(parse_kv_spec(k.str()), k) << s;
    EXPECT_EQ(k.str(), s);
  }
}

TEST(KVSpec, RejectsBadSpecsWithOneLine) {
  for (const char* s : {"", "int3", "ternary,int4", "int4,vidkv", "int4:b0", "int4:x5", "f32:r8", "int4,int4,int4",
                        "vidkv:o1.5", "int4:o0.1", "int4:g32,int4", "int4,int4:b32", "int4:bx"}) {
    try {
      parse_kv_spec(s);
      ADD_FAILURE() << "accepted " << s;
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
      EXPECT_NE(m.find(std::string("--kv ") + s), std::string::npos) << m;
    }
  }
}

TEST(KVCodec, IntKeysAndValuesStayWithinHalfAStep) {
  const int rows = 32, width = 32, head_dim = 8;
  const auto x = gaussian(size_t(rows) * width, 1, 2.0f);
  for (int bits : {8, 4, 2}) {
    KVSideSpec s;
    s.kind = KVKind::Int, s.bits = bits, s.block = rows;
    const int top = (1 << bits) - 1;
    // Keys: per channel over the block's tokens.
    size_t stored = 0;
    auto k = kv_roundtrip(s, true, x.data(), rows, width, head_dim, &stored);
    EXPECT_EQ(double(stored), kv_bits_per_element(s, true, width, head_dim) * rows * width);
    for (int c = 0; c < width; ++c) {
      float lo = INFINITY, hi = -INFINITY;
      for (int t = 0; t < rows; ++t) lo = std::min(lo, x[t * width + c]), hi = std::max(hi, x[t * width + c]);
      const float tol = 0.5f * (hi - lo) / top * 1.01f + 2e-3f * std::max(-lo, hi);
      for (int t = 0; t < rows; ++t) ASSERT_LE(std::fabs(k[t * width + c] - x[t * width + c]), tol) << bits;
    }
    // Values: per token, one group per head.
    auto v = kv_roundtrip(s, false, x.data(), rows, width, head_dim, &stored);
    EXPECT_EQ(double(stored), kv_bits_per_element(s, false, width, head_dim) * rows * width);
    for (int t = 0; t < rows; ++t)
      for (int g = 0; g < width; g += head_dim) {
        const float* xg = &x[t * width + g];
        const float lo = *std::min_element(xg, xg + head_dim), hi = *std::max_element(xg, xg + head_dim);
        const float tol = 0.5f * (hi - lo) / top * 1.01f + 2e-3f * std::max(-lo, hi);
        for (int i = 0; i < head_dim; ++i) ASSERT_LE(std::fabs(v[t * width + g + i] - xg[i]), tol) << bits;
      }
  }
}

TEST(KVCodec, ExactBitsPerElement) {
  auto bits = [](const char* spec, bool key) {
    const KVSpec s = parse_kv_spec(spec);
    return kv_bits_per_element(key ? s.k : s.v, key, 32, 8);
  };
  EXPECT_EQ(bits("f32", true), 32);
  EXPECT_EQ(bits("int8", true), 8 + 1.0);  // 32 bits of FP16 offset+step per channel per 32 tokens
  EXPECT_EQ(bits("int4:b64", true), 4.5);
  EXPECT_EQ(bits("int2", false), 2 + 4.0);  // offset+step per 8-channel head
  EXPECT_EQ(bits("int4:g32", false), 5.0);
  // vidkv, 32 channels, 6 at 2 bits: mask 32 + params 32*32 + 32 tokens * (12 + 26) bits.
  EXPECT_DOUBLE_EQ(bits("vidkv", true), (32.0 + 1024 + 32 * 38) / 1024);
  // ternary: 4 FP16 absmeans + 7 bytes of trits for 32 values.
  EXPECT_DOUBLE_EQ(bits("vidkv", false), (64.0 + 56) / 32);
}

TEST(KVCodec, VidKVAndTernaryBeatZeroAndRankBelowInt2) {
  const int rows = 64, width = 32, head_dim = 8;
  auto x = gaussian(size_t(rows) * width, 2);
  for (int t = 0; t < rows; ++t) x[t * width + 5] = 8.0f + x[t * width + 5] * 4;  // an outlier channel
  const std::vector<float> zero(x.size(), 0.0f);
  const KVSpec vid = parse_kv_spec("vidkv:b64"), i2 = parse_kv_spec("int2:b64");
  const double e_vid = mse(kv_roundtrip(vid.k, true, x.data(), rows, width, head_dim), x);
  const double e_i2 = mse(kv_roundtrip(i2.k, true, x.data(), rows, width, head_dim), x);
  EXPECT_LT(e_vid, 0.5 * mse(zero, x));
  EXPECT_GT(e_vid, e_i2);
  const auto tern = kv_roundtrip(vid.v, false, x.data(), rows, width, head_dim);
  EXPECT_LT(mse(tern, x), mse(zero, x));
  EXPECT_GT(mse(tern, x), mse(kv_roundtrip(i2.v, false, x.data(), rows, width, head_dim), x));
  // Ternary decodes to {-s, 0, s} per group.
  for (int t = 0; t < rows; ++t)
    for (int g = 0; g < width; g += head_dim) {
      float s = 0;
      for (int i = 0; i < head_dim; ++i) s = std::max(s, std::fabs(tern[t * width + g + i]));
      for (int i = 0; i < head_dim; ++i) {
        const float a = std::fabs(tern[t * width + g + i]);
        ASSERT_TRUE(a == 0 || a == s);
      }
    }
}

TEST(KVCache, F32SpecIsBitIdenticalAndUnquantizedWindowToo) {
  auto& a = aidreams();
  std::vector<int> toks(a.eval.begin(), a.eval.begin() + 48);
  const auto ref = run(KVSpec{}, toks, false);
  EXPECT_EQ(run(parse_kv_spec("f32,f32"), toks, false), ref);
  // A residual window longer than the text: the quantized store never quantizes.
  EXPECT_EQ(run(parse_kv_spec("int2:r64"), toks, false), ref);
  EXPECT_EQ(run(parse_kv_spec("int2:r64"), toks, true), run(KVSpec{}, toks, true));
}

TEST(KVCache, BatchMatchesTokenByToken) {
  // A batch sees, for each query, exactly what generation would have cached by then.
  auto& a = aidreams();
  std::vector<int> toks(a.eval.begin(), a.eval.begin() + 40);
  for (const char* s : {"int4:b8:r4,int4:r4", "vidkv:b16", "int2:b8,f32"}) {
    const KVSpec kv = parse_kv_spec(s);
    const auto batch = run(kv, toks, false), seq = run(kv, toks, true), fp = run(KVSpec{}, toks, false);
    double diff = 0, moved = 0;
    for (size_t i = 0; i < batch.size(); ++i)
      diff = std::max(diff, double(std::fabs(batch[i] - seq[i]))), moved = std::max(moved, double(std::fabs(batch[i] - fp[i])));
    EXPECT_LT(diff, 1e-3) << s;
    EXPECT_GT(moved, 1e-3) << s;  // and the cache really was quantized
  }
}

TEST(KVCache, RewindOnlyWithinTheFp32Tail) {
  auto& a = aidreams();
  KVCache c = a.model.make_cache(64, parse_kv_spec("int4:b8:r4"));
  std::vector<float> logits(size_t(20) * a.model.config().vocab_size);
  std::vector<int> toks(a.eval.begin(), a.eval.begin() + 20);
  a.model.forward(toks.data(), 20, 0, c, logits.data());
  a.model.forward(toks.data(), 1, 17, c, logits.data());  // keys and values 16..19 are the FP32 tail
  EXPECT_THROW(a.model.forward(toks.data(), 1, 10, c, logits.data()), Error);
  EXPECT_THROW(a.model.forward(toks.data(), 1, 30, c, logits.data()), Error);
}

TEST(KVCache, HoldsPackedBlocksAndAnFp32Tail) {
  auto& a = aidreams();
  const KVSpec kv = parse_kv_spec("int4:b8");
  KVCache c = a.model.make_cache(64, kv);
  EXPECT_TRUE(c.k.empty());
  std::vector<float> logits(size_t(20) * a.model.config().vocab_size);
  std::vector<int> toks(a.eval.begin(), a.eval.begin() + 20);
  a.model.forward(toks.data(), 20, 0, c, logits.data());
  const int kv_dim = a.model.config().kv_dim(), hd = a.model.config().head_dim();
  // Keys: blocks 0..15 packed, 16..19 FP32; values: all 20 rows packed.
  const double per_layer = (kv_bits_per_element(kv.k, true, kv_dim, hd) * 16 * kv_dim +
                            kv_bits_per_element(kv.v, false, kv_dim, hd) * 20 * kv_dim) / 8 + 4.0 * 4 * kv_dim;
  EXPECT_EQ(double(c.quant->bytes()), per_layer * a.model.config().n_layers);
}

TEST(KVCache, PerplexityAndKLOrderOnAidreams) {
  auto& a = aidreams();
  EvalOptions eo;
  eo.ctx = 128;
  const double p_fp = evaluate(a.model, nullptr, a.eval, a.tok.bos(), eo).llamacpp.ppl;
  const int kv_dim = a.model.config().kv_dim(), hd = a.model.config().head_dim();
  std::printf("| KV (K,V) | K bits | V bits | PPL | dPPL | KL mean | top-1 |\n|---|---|---|---|---|---|---|\n");
  std::printf("| f32,f32 | 32 | 32 | %.4f | | | |\n", p_fp);
  std::map<std::string, double> kl;
  // The full table of the report: set QK_KV_TABLE=1 (about a minute more).
  std::vector<std::string> specs = {"f16", "int8", "int4", "int2", "int2:r32", "vidkv"};
  if (std::getenv("QK_KV_TABLE"))
    specs.insert(specs.end(), {"int4:r32", "vidkv:b64", "vidkv:r32", "int8,f32", "f32,int8", "int4,f32", "f32,int4",
                               "int2,f32", "f32,int2", "vidkv,f32", "f32,ternary", "f32,ternary:g64",
                               "int4:b64,int4:g32", "int2:b64,int2:g32", "vidkv:b64,ternary:g64"});
  for (const std::string& s : specs) {
    eo.kv = parse_kv_spec(s);
    const EvalResult r = evaluate(a.model, &a.model, a.eval, a.tok.bos(), eo);
    kl[s] = r.kl.mean;
    std::printf("| %s | %.3f | %.3f | %.4f | %+.3f%% | %.6f | %.2f%% |\n", eo.kv.str().c_str(),
                kv_bits_per_element(eo.kv.k, true, kv_dim, hd), kv_bits_per_element(eo.kv.v, false, kv_dim, hd),
                r.llamacpp.ppl, 100 * (r.llamacpp.ppl / p_fp - 1), r.kl.mean, 100 * r.kl.top1_agreement);
    if (s == "int8") {
      EXPECT_LT(std::abs(r.llamacpp.ppl / p_fp - 1), 0.005);
    }
  }
  EXPECT_LT(kl["f16"], 1e-5);
  EXPECT_LE(kl["f16"], kl["int8"]);
  EXPECT_LE(kl["int8"], kl["int4"]);
  EXPECT_LE(kl["int4"], kl["int2"]);
  EXPECT_LE(kl["int2:r32"], kl["int2"]);
}

TEST(KVCache, Fp16RowKernelsEqualTheFp32KernelsOnWidenedRows) {
  for (int n : {16, 64, 80, 128}) {
    for (int count : {1, 7, 8, 37, 300}) {
      const long stride = 3 * n;  // rows of one head inside wider rows
      const std::vector<float> q = gaussian(size_t(n), 1), src = gaussian(size_t(count) * stride, 2);
      std::vector<uint16_t> h(src.size());
      std::vector<float> wide(src.size());
      for (size_t i = 0; i < src.size(); ++i) h[i] = f32_to_f16(src[i]), wide[i] = f16_to_f32(h[i]);
      std::vector<float> s16(static_cast<size_t>(count)), s32(s16.size());
      kernels::dot_rows_f16(q.data(), h.data(), stride, count, n, 0.125f, s16.data());
      kernels::dot_rows_f32(q.data(), wide.data(), stride, count, n, 0.125f, s32.data());
      for (int j = 0; j < count; ++j) ASSERT_EQ(s16[j], s32[j]) << "n " << n << " count " << count << " pos " << j;
      std::vector<float> w = gaussian(size_t(count), 3), y16 = gaussian(size_t(n), 4), y32 = y16;
      for (float& x : w) x = std::fabs(x);
      kernels::mix_rows_f16(w.data(), 1.7f, h.data(), stride, count, y16.data(), n);
      kernels::mix_rows_f32(w.data(), 1.7f, wide.data(), stride, count, y32.data(), n);
      for (int i = 0; i < n; ++i) ASSERT_EQ(y16[i], y32[i]) << "n " << n << " count " << count << " dim " << i;
    }
  }
  std::vector<uint16_t> h = {0x0000, 0x8000, 0x0001, 0x03ff, 0x3c00, 0x7bff, 0xfbff, 0x7c00, 0xfc00, 0x3555};
  std::vector<float> out(h.size());
  kernels::f16_to_f32_row(h.data(), out.data(), int(h.size()));  // 8 vector + 2 scalar
  for (size_t i = 0; i < h.size(); ++i) EXPECT_EQ(std::bit_cast<uint32_t>(out[i]), std::bit_cast<uint32_t>(f16_to_f32(h[i]))) << i;
}

TEST(KVCache, Fp16CacheHoldsHalfTheBytesAndStaysCloseToFp32) {
  auto& a = aidreams();
  const KVSpec f16 = parse_kv_spec("f16");
  KVCache c = a.model.make_cache(64, f16);
  EXPECT_TRUE(c.k.empty() && c.v.empty() && !c.quant);
  ASSERT_EQ(c.k16.size(), size_t(a.model.config().n_layers));
  EXPECT_EQ(c.k16[0].size(), size_t(64) * a.model.config().kv_dim());
  const std::vector<int> toks(a.eval.begin(), a.eval.begin() + 48);
  const std::vector<float> ref = run(KVSpec{}, toks, false), half = run(f16, toks, false);
  const std::vector<float> half_steps = run(f16, toks, true);
  EXPECT_GT(mse(ref, half), 0.0);       // the rounding is real
  EXPECT_LT(mse(ref, half), 1e-6);      // and small: FP16 keeps 11 significant bits
  EXPECT_LT(mse(half, half_steps), 2e-8);  // batch vs token by token: kernel rounding only
  std::printf("f16 vs f32 cache: logits MSE %.3g (batch), %.3g (token by token)\n", mse(ref, half),
              mse(run(KVSpec{}, toks, true), half_steps));
  // Mixed sides: FP16 keys with FP32 values in the plain cache; FP16 with a quantized side
  // through QuantizedKV.
  EXPECT_LT(mse(ref, run(parse_kv_spec("f16,f32"), toks, true)), 1e-5);
  EXPECT_LT(mse(run(parse_kv_spec("f32,int8"), toks, false), run(parse_kv_spec("f16,int8"), toks, false)), 1e-5);
}

TEST(KVCache, AttentionOnPackedUnitsEqualsDecodedRows) {
  // key_scores / mix_values read the packed units in place; the reference decodes the same
  // rows (kv_roundtrip) and takes dot products. Odd block sizes put records off byte
  // boundaries (the unpacking path), groups smaller than a head split a head's slice.
  const int kv_dim = 64, hd = 16, len = 70;
  std::vector<float> k = gaussian(size_t(len) * kv_dim, 11), v = gaussian(size_t(len) * kv_dim, 12);
  for (int t = 0; t < len; ++t) k[size_t(t) * kv_dim + 5] *= 8.0f;  // an outlier key channel
  for (const char* s : {"int8", "int4", "int2", "vidkv", "int4:b8,int4:g8", "int2:b5,int8:g32", "int4:b3,int2",
                        "vidkv:b7:o0.3,ternary:g8", "vidkv:b40", "f16,int8", "int8,f16", "vidkv,ternary:g32", "int4,ternary:g4"}) {
    const KVSpec spec = parse_kv_spec(s);
    QuantizedKV cache(spec, 1, kv_dim, hd, 128);
    KVRows rows;
    cache.append(0, 0, len, k.data(), v.data(), rows);
    const int kcut = cache.quantized_keys(len), vcut = cache.quantized_values(len), B = spec.k.block;
    ASSERT_GT(kcut, 0) << s;
    ASSERT_GT(vcut, 0) << s;
    std::vector<float> kdec, vdec = kv_roundtrip(spec.v, false, v.data(), vcut, kv_dim, hd);
    for (int u = 0; u * B < kcut; ++u) {
      const std::vector<float> blk = kv_roundtrip(spec.k, true, k.data() + size_t(u) * B * kv_dim, B, kv_dim, hd);
      kdec.insert(kdec.end(), blk.begin(), blk.end());
    }
    const std::vector<float> q = gaussian(size_t(hd), 13), w = gaussian(size_t(vcut), 14);
    for (int h = 0; h < kv_dim / hd; ++h) {
      std::vector<float> scores(static_cast<size_t>(kcut));
      cache.key_scores(0, h, q.data(), 0.25f, kcut, scores.data());
      for (int j = 0; j < kcut; ++j) {
        double ref = 0;
        for (int i = 0; i < hd; ++i) ref += double(q[size_t(i)]) * kdec[size_t(j) * kv_dim + h * hd + i];
        ASSERT_NEAR(scores[size_t(j)], 0.25 * ref, 1e-4 * (1 + std::fabs(ref))) << s << " head " << h << " pos " << j;
      }
      std::vector<float> mixed(size_t(hd), 1.0f);
      cache.mix_values(0, h, w.data(), 2.0f, vcut, mixed.data());
      for (int i = 0; i < hd; ++i) {
        double ref = 1.0;
        for (int j = 0; j < vcut; ++j) ref += double(w[size_t(j)]) / 2.0 * vdec[size_t(j) * kv_dim + h * hd + i];
        ASSERT_NEAR(mixed[size_t(i)], ref, 1e-4 * (1 + std::fabs(ref))) << s << " head " << h << " dim " << i;
      }
    }
  }
}

TEST(KVCache, PackedCodeKernelsMatchScalarSums) {
  // Every code width, lengths around the 8-lane step, against a plain loop.
  std::mt19937 rng(5);
  for (int bits : {1, 2, 4, 8})
    for (int n : {1, 7, 8, 9, 31, 32, 33, 64, 128}) {
      std::vector<uint8_t> p(size_t((n * bits + 7) / 8));
      for (auto& b : p) b = uint8_t(rng());
      std::vector<float> acc(size_t(n), 0.5f), ref = acc;
      kernels::affine_codes_acc(bits, -0.75f, 0.125f, p.data(), n, acc.data());
      for (int j = 0; j < n; ++j) {
        const int per = 8 / bits, code = p[size_t(j / per)] >> (j % per * bits) & ((1 << bits) - 1);
        ref[size_t(j)] += -0.75f + 0.125f * float(code);
      }
      for (int j = 0; j < n; ++j) ASSERT_FLOAT_EQ(acc[size_t(j)], ref[size_t(j)]) << bits << " bits, n " << n << ", " << j;
      if (bits != 1) continue;
      std::vector<float> sel(size_t(n), 0.0f);
      kernels::select_codes_acc(-1.5f, 2.5f, p.data(), n, sel.data());
      for (int j = 0; j < n; ++j) ASSERT_EQ(sel[size_t(j)], (p[size_t(j / 8)] >> (j % 8) & 1) ? 2.5f : -1.5f) << n << ", " << j;
    }
}

TEST(KVCache, PackedRecordKernelMatchesPerChannelSums) {
  // affine_records_acc (a key block's head slice in one pass) against affine_codes_acc per
  // record: token counts around the 32-token step, every width.
  std::mt19937 rng(9);
  for (int bits : {1, 2, 4, 8})
    for (int n : {8, 24, 32, 40, 64, 72}) {
      const int channels = 5;
      const size_t rb = 4 + size_t(n * bits / 8);
      std::vector<uint8_t> recs(rb * channels);
      for (auto& b : recs) b = uint8_t(rng());
      for (int c = 0; c < channels; ++c) {  // finite FP16 off / step
        const uint16_t off = f32_to_f16(0.1f * float(c) - 0.2f), step = f32_to_f16(0.03f * float(c + 1));
        std::memcpy(&recs[c * rb], &off, 2);
        std::memcpy(&recs[c * rb + 2], &step, 2);
      }
      const std::vector<float> w = gaussian(size_t(channels), 10);
      std::vector<float> acc(size_t(n), 0.25f), ref = acc;
      kernels::affine_records_acc(bits, w.data(), recs.data(), rb, channels, n, acc.data());
      for (int c = 0; c < channels; ++c) {
        const float off = f16_to_f32(f32_to_f16(0.1f * float(c) - 0.2f)), step = f16_to_f32(f32_to_f16(0.03f * float(c + 1)));
        kernels::affine_codes_acc(bits, w[size_t(c)] * off, w[size_t(c)] * step, &recs[c * rb + 4], n, ref.data());
      }
      for (int j = 0; j < n; ++j) ASSERT_FLOAT_EQ(acc[size_t(j)], ref[size_t(j)]) << bits << " bits, n " << n << ", " << j;
    }
}
