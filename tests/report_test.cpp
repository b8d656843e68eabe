// The HTML report: page structure from hand-made results (escaping, unique chart ids, no
// network references), and, the way a user sees it, reports of real quantize runs on
// aidreams260K rendered in headless Chromium (screenshot, DOM after the scripts ran,
// console messages).
#include "quantkit/html_report.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "quantkit/error.h"
#include "test_util.h"

using namespace quantkit;
using nlohmann::json;

namespace {

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t pos = 0; (pos = s.find(what, pos)) != std::string::npos; pos += what.size()) ++n;
  return n;
}

json tensor_row(const std::string& name, const std::string& format, double bpw, double sqnr) {
  return {{"name", name}, {"format", format}, {"requested", format}, {"note", ""}, {"shape", {64, 64}},
          {"bits_per_weight", bpw}, {"method", "rtn"}, {"calibrated", false}, {"weighted_rel_error", 0.01},
          {"sqnr_db", std::isfinite(sqnr) ? json(sqnr) : json(nullptr)}, {"seconds", 0.001}};
}

json small_result() {
  return {{"model", "in.bin"}, {"output", "out.qk"}, {"format", "int4:g32"}, {"method", "rtn"},
          {"input_bytes", 1000}, {"output_bytes", 200}, {"bits_per_weight", 5.1}, {"seconds", 0.5},
          {"tensors", {tensor_row("blk.0.attn_q.weight", "int4:g32", 5.0, 20.5),
                       tensor_row("<script>alert(1)</script>", "q8_0", 8.5, 40.0),
                       tensor_row("blk.0.attn_norm.weight", "f32", 32, INFINITY)}},
          {"pareto", {{{"label", "int4:g32"}, {"bits_per_weight", 5.1}, {"perplexity", 10.3}, {"kl_mean", 0.03}},
                      {{"label", "mixed"}, {"bits_per_weight", 4.0}, {"perplexity", 10.5}, {"kl_mean", 0.05}},
                      {{"label", "mixed"}, {"bits_per_weight", 5.0}, {"perplexity", 10.2}, {"kl_mean", 0.02}}}},
          {"eval", {{"text", "eval.txt"}, {"ctx", 128}, {"perplexity", 10.3}, {"perplexity_all_tokens", 11.0},
                    {"kl_mean", 0.03}, {"kl_p99", 0.2}, {"top1_agreement", 0.95}}}};
}

// ---- headless Chromium --------------------------------------------------------------------

std::string chromium() {
  for (const char* p : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"})
    if (std::filesystem::exists(p)) return p;
  return "";
}

struct Rendered {
  std::string dom;       // the document after its scripts ran
  std::string console;   // console messages (errors, uncaught exceptions), one per line
  std::string png;       // the screenshot file's bytes
};

// Two runs (a screenshot, then the DOM); each Chromium gets its own profile so parallel
// tests do not fight over one.
Rendered render(const std::string& html, const std::string& dir, const std::string& fragment = "") {
  const std::string base = chromium() + " --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir=" + dir +
                           "/profile --window-size=1200,2000 --enable-logging=stderr --v=0 ";
  const std::string url = "'file://" + std::filesystem::absolute(html).string() + fragment + "'";
  const std::string shot = dir + "/shot.png";
  std::system(("timeout 60 " + base + "--screenshot=" + shot + " " + url + " >" + dir + "/shot.out 2>" + dir + "/shot.err").c_str());
  std::system(("timeout 60 " + base + "--dump-dom " + url + " >" + dir + "/dom.html 2>" + dir + "/dom.err").c_str());
  Rendered r{qk_test::read_file(dir + "/dom.html"), "", qk_test::read_file(shot)};
  for (const std::string& log : {qk_test::read_file(dir + "/shot.err"), qk_test::read_file(dir + "/dom.err")}) {
    std::istringstream lines(log);
    for (std::string line; std::getline(lines, line);)
      if (line.find(":CONSOLE") != std::string::npos || line.find("Uncaught") != std::string::npos) r.console += line + "\n";
  }
  return r;
}

uint32_t be32(const std::string& s, size_t at) {
  return uint32_t(uint8_t(s[at])) << 24 | uint32_t(uint8_t(s[at + 1])) << 16 | uint32_t(uint8_t(s[at + 2])) << 8 |
         uint32_t(uint8_t(s[at + 3]));
}

// A real PNG of the window size with more than a blank page's worth of content.
void expect_screenshot(const std::string& png) {
  ASSERT_GT(png.size(), 24u) << "no screenshot";
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(be32(png, 16), 1200u);
  EXPECT_EQ(be32(png, 20), 2000u);
  EXPECT_GT(png.size(), 40000u) << "screenshot looks blank";
}

// The first lines (about `chars` characters) of the evaluation text: a few windows of 128
// tokens keep the runs that evaluate many models at a few seconds.
std::string short_eval_text(const std::string& dir, size_t chars) {
  const std::string text = qk_test::read_file(qk_test::shared("data/aidreams-eval.txt"));
  const std::string path = dir + "/eval-short.txt";
  std::ofstream(path, std::ios::binary) << text.substr(0, text.find('\n', chars) + 1);
  return path;
}

// The <tbody> rows of the table with this id in a rendered DOM.
std::vector<std::string> table_rows(const std::string& dom, const std::string& id) {
  const size_t start = dom.find("id=\"" + id + "\"");
  if (start == std::string::npos) return {};
  const size_t body = dom.find("<tbody>", start), end = dom.find("</tbody>", start);
  std::vector<std::string> rows;
  for (size_t pos = body; (pos = dom.find("<tr>", pos)) != std::string::npos && pos < end; ++pos)
    rows.push_back(dom.substr(pos, dom.find("</tr>", pos) - pos));
  return rows;
}

}  // namespace

TEST(HtmlReport, PageHoldsSummaryChartsAndEscapedSortableTable) {
  const std::string page = report::html(small_result(), "result.json");
  EXPECT_NE(page.find("<table class=\"sortable\" id=\"tensor-table\">"), std::string::npos);
  EXPECT_NE(page.find("id=\"rd-chart\""), std::string::npos);
  EXPECT_NE(page.find("id=\"pareto-chart\""), std::string::npos);
  EXPECT_NE(page.find("10.3000"), std::string::npos);  // the perplexity
  // Tensor names are text, never markup; the only script is the page's own.
  EXPECT_NE(page.find("&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_EQ(count(page, "<script"), 1);
  // Each inline chart has its own clip path id.
  EXPECT_EQ(count(page, "id=\"plot-area-rd-chart\""), 1);
  EXPECT_EQ(count(page, "id=\"plot-area-pareto-chart\""), 1);
  EXPECT_EQ(count(page, "\"plot-area\""), 0);
  // Self-contained: no fetches (the SVG namespace URI is a name, not a request).
  EXPECT_EQ(count(page, "src="), 0);
  EXPECT_EQ(count(page, "href="), 0);
  EXPECT_EQ(count(page, "http://") + count(page, "https://"), count(page, "http://www.w3.org/2000/svg"));
  // Lossless tensors sort above every finite SQNR and show as infinite.
  EXPECT_NE(page.find("data-v=\"Infinity\">∞</td>"), std::string::npos);
}

TEST(HtmlReport, RateDistortionResultsGetTheirOwnPage) {
  const json rd = {{"source", "gaussian"}, {"rows", 64}, {"cols", 1024},
                   {"results", {{{"spec", "int4:g128"}, {"skipped", false}, {"bits_per_weight", 4.125},
                                 {"entropy_coded_bits_per_weight", 3.79}, {"mse", 0.0093}, {"sqnr_db", 20.29},
                                 {"shannon_bound_db", 24.8}, {"gap_db", 4.5}},
                                {{"spec", "q4_0"}, {"skipped", true}, {"note", "cols not a multiple of 32"}}}}};
  const std::string page = report::html(rd, "rd.json");
  EXPECT_NE(page.find("id=\"rd-table\""), std::string::npos);
  EXPECT_NE(page.find("Shannon bound"), std::string::npos);
  EXPECT_NE(page.find("skipped: cols not a multiple of 32"), std::string::npos);
}

TEST(HtmlReport, OtherDocumentsAreRejectedNamingTheSource) {
  try {
    report::html(json{{"hello", 1}}, "notes.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("notes.json: not a quantkit result"), std::string::npos) << e.what();
  }
  const std::string dir = qk_test::temp_dir("report_bad");
  std::ofstream(dir + "/broken.json") << "{\"tensors\": [";
  const auto r = qk_test::run_cli("report " + dir + "/broken.json -o " + dir + "/r.html");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("broken.json: not valid JSON"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir + "/r.html"));
}

TEST(HtmlReport, QuantizeReportRendersInChromium) {
  const std::string dir = qk_test::temp_dir("report_quantize");
  const std::string eval = short_eval_text(dir, 16000);
  const auto q = qk_test::run_cli("quantize -m " + qk_test::model_path() + " --tokenizer " + qk_test::tokenizer_path() +
                                  " -f int4:g32 -o " + dir + "/m.qk --eval " + eval +
                                  " --doc-separator '<|endoftext|>' --json --report " + dir + "/direct.html");
  ASSERT_EQ(q.exit_code, 0) << q.err;
  const json result = json::parse(q.out);
  ASSERT_TRUE(result.contains("eval"));
  EXPECT_EQ(result["model_info"]["dim"], 64);
  std::ofstream(dir + "/result.json") << q.out;
  const auto r = qk_test::run_cli("report " + dir + "/result.json -o " + dir + "/report.html");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // `quantize --report` and `report` make the same page (only the footer's source differs).
  const std::string direct = qk_test::read_file(dir + "/direct.html"), page = qk_test::read_file(dir + "/report.html");
  EXPECT_EQ(direct.substr(0, direct.find("<footer>")), page.substr(0, page.find("<footer>")));
  if (chromium().empty()) GTEST_SKIP() << "chromium not installed (Debian package chromium): page not rendered";

  const Rendered shown = render(dir + "/report.html", dir);
  EXPECT_EQ(shown.console, "") << "console messages while rendering";
  expect_screenshot(shown.png);
  EXPECT_NE(shown.dom.find("id=\"rd-chart\""), std::string::npos);
  EXPECT_GE(count(shown.dom, "<circle"), 20);  // one marker per lossy tensor, legend included
  const std::vector<std::string> rows = table_rows(shown.dom, "tensor-table");
  EXPECT_EQ(rows.size(), result["tensors"].size());
  EXPECT_NE(shown.dom.find("Evaluation against the input model"), std::string::npos);

  // The page's script ran: "#sort=-bits_per_weight" opens it sorted, f32 norms first.
  const Rendered sorted = render(dir + "/report.html", dir, "#sort=-bits_per_weight");
  EXPECT_EQ(sorted.console, "");
  EXPECT_NE(sorted.dom.find("data-key=\"bits_per_weight\" data-type=\"num\" class=\"num\" aria-sort=\"descending\""),
            std::string::npos);
  const std::vector<std::string> by_bits = table_rows(sorted.dom, "tensor-table");
  ASSERT_FALSE(by_bits.empty());
  EXPECT_NE(by_bits.front().find("data-v=\"32\""), std::string::npos) << by_bits.front();
  EXPECT_EQ(rows.front().find("data-v=\"32\""), std::string::npos) << "file order should not start with a norm";
}

TEST(HtmlReport, MixedPrecisionReportShowsTheParetoFrontier) {
  const std::string dir = qk_test::temp_dir("report_mixed");
  const std::string eval = short_eval_text(dir, 5000);
  const auto q = qk_test::run_cli("quantize -m " + qk_test::model_path() + " --tokenizer " + qk_test::tokenizer_path() +
                                  " --target-bpw 4 --candidates int2:g32,q8_0 -o " + dir + "/m.qk --eval " +
                                  eval + " --doc-separator '<|endoftext|>' --pareto " + dir + "/p.svg --json --report " +
                                  dir + "/mixed.html");
  ASSERT_EQ(q.exit_code, 0) << q.err;
  const json result = json::parse(q.out);
  ASSERT_TRUE(result.contains("pareto"));
  const std::string page = qk_test::read_file(dir + "/mixed.html");
  EXPECT_NE(page.find("id=\"pareto-chart\""), std::string::npos);
  EXPECT_NE(page.find("Mixed precision"), std::string::npos);
  if (chromium().empty()) GTEST_SKIP() << "chromium not installed (Debian package chromium): page not rendered";
  const Rendered shown = render(dir + "/mixed.html", dir);
  EXPECT_EQ(shown.console, "");
  expect_screenshot(shown.png);
  EXPECT_EQ(count(shown.dom, "<svg"), 2);  // rate-distortion and Pareto
  EXPECT_EQ(table_rows(shown.dom, "pareto-table").size(), result["pareto"].size());
}
