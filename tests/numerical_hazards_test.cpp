// Numerical hazards. Every registered format (each family's example specs) quantizes
// degenerate matrices — all zeros, a zero row and a zero column, a constant, magnitudes of
// 1e-30 and 1e30, zero importance on half the columns — without throwing and decodes them
// to finite values (no 0/0, no overflow to Inf/NaN). Non-finite input weights stop
// `quantize` with a one-line error naming the tensor, unless --allow-nonfinite (zeros
// them and says so in the tensor's note).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "../fuzz/seed_models.h"
#include "formats_test_util.h"
#include "io/model_io.h"
#include "quantkit/format.h"
#include "test_util.h"

namespace {

using namespace quantkit;

struct Matrix {
  std::string name;
  std::vector<float> w;
  std::vector<float> importance;  // empty: none
};

// The smallest column count from a list of common widths that the format accepts.
int64_t columns_for(const Format& f, int64_t rows) {
  for (int64_t cols : {256, 512, 1024, 2048, 4096, 8192})
    if (f.check_shape(rows, cols).empty()) return cols;
  return 0;
}

std::vector<Matrix> hazards(int64_t rows, int64_t cols) {
  const size_t n = size_t(rows * cols);
  std::vector<Matrix> out;
  out.push_back({"zeros", std::vector<float>(n, 0.0f), {}});
  Matrix holes{"zero row and column", qk_test::gaussian(n, 3), {}};
  for (int64_t c = 0; c < cols; ++c) holes.w[size_t(c)] = 0.0f;                  // row 0
  for (int64_t r = 0; r < rows; ++r) holes.w[size_t(r * cols + 5)] = 0.0f;       // column 5
  out.push_back(holes);
  out.push_back({"constant", std::vector<float>(n, 0.37f), {}});
  out.push_back({"negative constant", std::vector<float>(n, -2.5f), {}});
  Matrix tiny{"tiny 1e-30", qk_test::gaussian(n, 4), {}};
  for (float& x : tiny.w) x *= 1e-30f;
  out.push_back(tiny);
  Matrix huge{"huge 1e30", qk_test::gaussian(n, 5), {}};
  for (float& x : huge.w) x *= 1e30f;
  out.push_back(huge);
  Matrix outlier{"one 1e30 outlier", qk_test::gaussian(n, 6), {}};
  outlier.w[n / 2] = 1e30f;
  out.push_back(outlier);
  Matrix half{"zero importance on half the columns", qk_test::gaussian(n, 7), std::vector<float>(size_t(cols), 1.0f)};
  for (int64_t c = 0; c < cols; c += 2) half.importance[size_t(c)] = 0.0f;
  out.push_back(half);
  Matrix none{"all-zero importance", qk_test::gaussian(n, 8), std::vector<float>(size_t(cols), 0.0f)};
  out.push_back(none);
  return out;
}

}  // namespace

TEST(NumericalHazards, EveryFormatStaysFinite) {
  constexpr int64_t rows = 4;
  int checked = 0;
  for (const FormatFamily& fam : format_families())
    for (const std::string& spec : fam.examples) {
      const std::unique_ptr<Format> f = make_format(spec);
      const int64_t cols = columns_for(*f, rows);
      if (cols == 0) {
        ADD_FAILURE() << spec << ": no test width fits";
        continue;
      }
      for (const Matrix& m : hazards(rows, cols)) {
        SCOPED_TRACE(spec + ", " + m.name);
        std::vector<float> out(m.w.size(), -1.0f);
        try {
          const Packed p = f->quantize(m.w.data(), rows, cols, m.importance.empty() ? nullptr : m.importance.data());
          f->dequantize(p, out.data());
        } catch (const std::exception& e) {
          ADD_FAILURE() << "threw: " << e.what();
          continue;
        }
        size_t bad = 0;
        while (bad < out.size() && std::isfinite(out[bad])) ++bad;
        EXPECT_EQ(bad, out.size()) << "decoded[" << bad << "] = " << (bad < out.size() ? out[bad] : 0.0f);
        if (m.name == "zeros") {
          bool all_zero = std::all_of(out.begin(), out.end(), [](float x) { return x == 0.0f; });
          EXPECT_TRUE(all_zero) << "zeros do not decode to zeros";
        }
        ++checked;
      }
    }
  EXPECT_GT(checked, 50);
}

namespace {

// The tiny model with one non-finite weight in blk.0.attn_q.weight, as a GGUF file.
std::string model_with(float bad, const std::string& name) {
  quantkit::ModelFile m = qk_seed::tiny_model();
  auto* w = const_cast<float*>(static_cast<const float*>(m.get("blk.0.attn_q.weight").data));
  w[3 * 16 + 5] = bad;
  const std::string p = qk_test::temp_dir("nonfinite_" + name) + "/model.gguf";
  save_gguf_model(m, p);
  return p;
}

std::string calibration_text() {
  const std::string p = qk_test::temp_dir("nonfinite_calib") + "/calib.txt";
  std::ofstream f(p);
  for (int i = 0; i < 200; ++i) f << "ab the ab \xc3\xa9 a b ab\n";
  return p;
}

}  // namespace

TEST(NonFinite, QuantizeNamesTheTensor) {
  const std::string calib = calibration_text();
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()})
    for (const std::string method : {"rtn", "gptq"}) {
      const std::string in = model_with(bad, method), out = in + ".qk";
      SCOPED_TRACE(method + " " + std::to_string(bad));
      const qk_test::RunResult r = qk_test::run_cli("quantize -m " + in + " -f int4:g8 --embedding-format int8:row --method " +
                                                    method + " --calib " + calib + " -o " + out);
      EXPECT_EQ(r.exit_code, 1) << r.err;
      EXPECT_EQ(qk_test::count_lines(r.err), 1) << r.err;
      EXPECT_NE(r.err.find(in), std::string::npos) << r.err;
      EXPECT_NE(r.err.find("blk.0.attn_q.weight"), std::string::npos) << r.err;
      EXPECT_NE(r.err.find("row 3, col 5"), std::string::npos) << r.err;
      EXPECT_FALSE(std::filesystem::exists(out));
    }
}

TEST(NonFinite, AllowNonfiniteZeroesAndCounts) {
  const std::string calib = calibration_text();
  for (const std::string method : {"rtn", "gptq"}) {
    const std::string in = model_with(-std::numeric_limits<float>::infinity(), "allow_" + method), out = in + ".qk";
    const qk_test::RunResult r =
        qk_test::run_cli("quantize -m " + in + " -f int4:g8 --embedding-format int8:row --allow-nonfinite --json --method " +
                         method + " --calib " + calib + " -o " + out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const nlohmann::json j = nlohmann::json::parse(r.out);
    for (const auto& t : j["tensors"]) {
      const std::string note = t["note"];
      const bool replaced = note.find("1 non-finite weights replaced by 0") != std::string::npos;
      EXPECT_EQ(replaced, t["name"] == "blk.0.attn_q.weight") << t["name"] << ": " << note;
    }
    const ModelFile q = load_model(out);
    const Tensor w = to_float(q.get("blk.0.attn_q.weight"));
    for (float x : w.data) EXPECT_TRUE(std::isfinite(x));
  }
}
