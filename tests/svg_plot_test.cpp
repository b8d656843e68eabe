// SVG chart writer: well-formed XML, escaped text, every series drawn, nice ticks.
#include <gtest/gtest.h>

#include <cmath>
#include <regex>

#include "quantkit/error.h"
#include "quantkit/svg_plot.h"
#include "test_util.h"

namespace svg = quantkit::svg;

namespace {

// A tiny XML well-formedness check: one root element, balanced and properly nested tags,
// quoted attributes, no raw '<' in text or attribute values, '&' only in known entities.
// Returns an empty string when well-formed, else the first problem.
std::string xml_problem(const std::string& doc) {
  auto entity_ok = [&](size_t amp) {
    static const std::regex entity("^&(amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);");
    return std::regex_search(doc.substr(amp, 12), entity);
  };
  std::vector<std::string> open;
  int roots = 0;
  size_t i = 0;
  if (doc.compare(0, 5, "<?xml") == 0) i = doc.find("?>") + 2;
  while (i < doc.size()) {
    if (doc[i] != '<') {
      if (doc[i] == '&' && !entity_ok(i)) return "bad entity at " + std::to_string(i);
      if (doc[i] == '>') return "raw '>' in text at " + std::to_string(i);
      if (open.empty() && !std::isspace(static_cast<unsigned char>(doc[i]))) return "text outside the root";
      ++i;
      continue;
    }
    const bool closing = doc[i + 1] == '/';
    size_t j = i + 1 + closing;
    const size_t name_start = j;
    while (j < doc.size() && (std::isalnum(static_cast<unsigned char>(doc[j])) || doc[j] == '-' || doc[j] == ':')) ++j;
    const std::string name = doc.substr(name_start, j - name_start);
    if (name.empty()) return "tag without a name at " + std::to_string(i);
    bool self_closing = false;
    for (;;) {  // attributes
      while (j < doc.size() && std::isspace(static_cast<unsigned char>(doc[j]))) ++j;
      if (j >= doc.size()) return "unterminated tag " + name;
      if (doc[j] == '>') break;
      if (doc[j] == '/' && doc[j + 1] == '>' && !closing) {
        self_closing = true;
        ++j;
        break;
      }
      if (closing) return "attributes in a closing tag";
      const size_t eq = doc.find('=', j);
      if (eq == std::string::npos || doc[eq + 1] != '"') return "unquoted attribute in " + name;
      const size_t end = doc.find('"', eq + 2);
      if (end == std::string::npos) return "unterminated attribute in " + name;
      for (size_t k = eq + 2; k < end; ++k) {
        if (doc[k] == '<') return "raw '<' in an attribute of " + name;
        if (doc[k] == '&' && !entity_ok(k)) return "bad entity in an attribute of " + name;
      }
      j = end + 1;
    }
    if (closing) {
      if (open.empty() || open.back() != name) return "mismatched </" + name + ">";
      open.pop_back();
    } else if (!self_closing) {
      if (open.empty()) ++roots;
      open.push_back(name);
    } else if (open.empty()) {
      ++roots;
    }
    i = j + 1;
  }
  if (!open.empty()) return "unclosed <" + open.back() + ">";
  if (roots != 1) return std::to_string(roots) + " root elements";
  return "";
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

svg::Chart sample_chart() {
  svg::Chart c;
  c.title = "SQNR <vs> rate & \"friends\" 'quoted'";
  c.x.label = "bits per weight";
  c.y.label = "SQNR (dB)";
  svg::Series a;
  a.name = "int<b>";
  a.x = {2, 3, 4};
  a.y = {9.25, 14.3, 20.2};
  a.labels = {"int2", "int3", "int4&more"};
  a.line = true;
  svg::Series b;
  b.name = "lloyd";
  b.x = {2, 3, NAN, 4};
  b.y = {9.30, 14.62, 1.0, INFINITY};
  c.series = {a, b};
  svg::ReferenceLine shannon;
  shannon.name = "Shannon 6.02 dB/bit";
  shannon.slope = 6.02;
  c.lines = {shannon};
  return c;
}

}  // namespace

TEST(SvgPlot, CheckerRejectsBrokenDocuments) {
  EXPECT_EQ(xml_problem("<svg><g></g></svg>"), "");
  EXPECT_NE(xml_problem("<svg><g></svg>"), "");
  EXPECT_NE(xml_problem("<svg><text>a < b</text></svg>"), "");
  EXPECT_NE(xml_problem("<svg><text>a & b</text></svg>"), "");
  EXPECT_NE(xml_problem("<svg x=1></svg>"), "");
  EXPECT_NE(xml_problem("<svg></svg><svg></svg>"), "");
}

TEST(SvgPlot, RendersWellFormedChartWithEverySeries) {
  const std::string doc = svg::render(sample_chart());
  EXPECT_EQ(xml_problem(doc), "") << doc;
  EXPECT_NE(doc.find("SQNR &lt;vs&gt; rate &amp; &quot;friends&quot; &apos;quoted&apos;"), std::string::npos);
  EXPECT_NE(doc.find(">int&lt;b&gt;</text>"), std::string::npos);  // legend entries
  EXPECT_NE(doc.find(">lloyd</text>"), std::string::npos);
  EXPECT_NE(doc.find(">Shannon 6.02 dB/bit</text>"), std::string::npos);
  EXPECT_NE(doc.find(">int4&amp;more</text>"), std::string::npos);  // point label
  // Markers: 3 + 2 finite points (NaN and inf skipped) + 2 legend markers.
  EXPECT_EQ(count(doc, "<circle"), 7u);
  // The series line, the reference line, and nothing non-finite leaked into coordinates.
  EXPECT_GE(count(doc, "<polyline"), 2u);
  EXPECT_EQ(doc.find("nan"), std::string::npos);
  EXPECT_EQ(doc.find("inf\""), std::string::npos);
  EXPECT_NE(doc.find("bits per weight"), std::string::npos);
}

TEST(SvgPlot, LogAxesAndExplicitRanges) {
  svg::Chart c;
  c.title = "perplexity";
  c.y.log10 = true;
  c.y.label = "PPL";
  c.x.min = 0;
  c.x.max = 8;
  svg::Series s;
  s.name = "model";
  s.x = {1, 2, 4, 8, 3};
  s.y = {3000, 150, 12, 10.1, -5};  // the non-positive value cannot be shown on a log axis
  c.series = {s};
  const std::string doc = svg::render(c);
  EXPECT_EQ(xml_problem(doc), "");
  EXPECT_EQ(count(doc, "<circle"), 4u + 1u);
  for (const char* tick : {">10</text>", ">100</text>", ">1000</text>", ">0</text>", ">8</text>"})
    EXPECT_NE(doc.find(tick), std::string::npos) << tick;
}

TEST(SvgPlot, SinglePointAndNothingToDraw) {
  svg::Chart c;
  svg::Series s;
  s.x = {1};
  s.y = {1};
  c.series = {s};
  EXPECT_EQ(xml_problem(svg::render(c)), "");
  c.series[0].y = {NAN};
  EXPECT_THROW(svg::render(c), quantkit::Error);
}

TEST(SvgPlot, NiceTicksAndEscaping) {
  EXPECT_EQ(svg::nice_ticks(0, 10, 5), (std::vector<double>{0, 2, 4, 6, 8, 10}));
  const std::vector<double> tenths = svg::nice_ticks(0.13, 0.87, 4), want = {0.2, 0.4, 0.6, 0.8};
  ASSERT_EQ(tenths.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(tenths[i], want[i], 1e-12);
  EXPECT_EQ(svg::nice_ticks(-3, 7, 4), (std::vector<double>{-2.5, 0, 2.5, 5}));
  EXPECT_EQ(svg::nice_ticks(5, 5, 4), (std::vector<double>{5}));
  EXPECT_EQ(svg::escape_xml("a<b>&\"c'\x01"), "a&lt;b&gt;&amp;&quot;c&apos;?");
}

TEST(SvgPlot, WritesTheFileAtomically) {
  const std::string path = qk_test::temp_dir("svg") + "/chart.svg";
  svg::write(sample_chart(), path);
  EXPECT_EQ(qk_test::read_file(path), svg::render(sample_chart()));
  EXPECT_THROW(svg::write(sample_chart(), "/nonexistent-dir/x.svg"), quantkit::Error);
}
