// Result documents and the HTML report (see include/quantkit/html_report.h).
#include "quantkit/html_report.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "quantkit/error.h"
#include "quantkit/mapped_file.h"
#include "quantkit/svg_plot.h"

namespace quantkit::report {
namespace {

using nlohmann::json;

// JSON has no infinity: a non-finite number is stored as null.
json number(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

// ---- reading a result: tolerant of missing fields (older or hand-made documents) ----

double get_num(const json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : NAN;
}

std::string get_str(const json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

const json& get_obj(const json& j, const char* key) {
  static const json empty = json::object();
  const auto it = j.find(key);
  return it != j.end() && it->is_object() ? *it : empty;
}

const json& get_arr(const json& j, const char* key) {
  static const json empty = json::array();
  const auto it = j.find(key);
  return it != j.end() && it->is_array() ? *it : empty;
}

// ---- HTML building blocks ---------------------------------------------------------------

std::string esc(std::string_view s) { return svg::escape_xml(s); }

std::string fixed(double v, int decimals) { return std::isfinite(v) ? fmt::format("{:.{}f}", v, decimals) : "–"; }
std::string sci(double v) { return std::isfinite(v) ? fmt::format("{:.3e}", v) : "–"; }
std::string megabytes(double bytes) { return std::isfinite(bytes) ? fmt::format("{:.3f} MB", bytes / 1e6) : "–"; }

// A table cell; `sort` orders numeric columns (absent: sorts first).
struct Cell {
  std::string html;
  std::optional<double> sort;
};
Cell text_cell(std::string_view s) { return {esc(s), std::nullopt}; }
Cell num_cell(double v, const std::string& shown) {
  if (std::isnan(v)) return {shown, std::nullopt};
  return {shown, v};
}

struct Column {
  std::string key, head;
  bool numeric = false;
};

// A table whose rows the reader can sort by clicking a header (see kScript).
std::string table(const std::string& id, const std::vector<Column>& cols, const std::vector<std::vector<Cell>>& rows) {
  std::string out = fmt::format("<table class=\"sortable\" id=\"{}\">\n<thead><tr>", esc(id));
  for (const Column& c : cols)
    out += fmt::format("<th data-key=\"{}\"{}>{}</th>", esc(c.key), c.numeric ? " data-type=\"num\" class=\"num\"" : "",
                       esc(c.head));
  out += "</tr></thead>\n<tbody>\n";
  for (const auto& row : rows) {
    out += "<tr>";
    for (size_t i = 0; i < row.size() && i < cols.size(); ++i) {
      const Cell& c = row[i];
      std::string attrs = cols[i].numeric ? " class=\"num\"" : "";
      // JS parseFloat reads "Infinity"; fmt prints "inf".
      if (c.sort) attrs += fmt::format(" data-v=\"{}\"", std::isinf(*c.sort) ? (*c.sort > 0 ? "Infinity" : "-Infinity")
                                                                             : fmt::format("{:.17g}", *c.sort));
      out += fmt::format("<td{}>{}</td>", attrs, c.html);
    }
    out += "</tr>\n";
  }
  return out + "</tbody></table>\n";
}

// Label / value pairs (the summary boxes).
using Facts = std::vector<std::pair<std::string, std::string>>;  // value is HTML

std::string facts(const std::string& title, const Facts& f) {
  std::string out = fmt::format("<div class=\"box\"><h3>{}</h3><dl>\n", esc(title));
  for (const auto& [k, v] : f) out += fmt::format("<dt>{}</dt><dd>{}</dd>\n", esc(k), v);
  return out + "</dl></div>\n";
}

// A chart inline in the page: without the XML declaration, with ids made unique (each
// standalone SVG calls its clip path "plot-area").
std::string inline_chart(const svg::Chart& chart, const std::string& id) {
  std::string doc = svg::render(chart);
  doc.erase(0, doc.find("<svg"));
  const std::string from = "plot-area", to = "plot-area-" + id;
  for (size_t pos = 0; (pos = doc.find(from, pos)) != std::string::npos; pos += to.size()) doc.replace(pos, from.size(), to);
  doc.insert(4, fmt::format(" id=\"{}\" class=\"chart\" role=\"img\"", esc(id)));
  return "<figure>" + doc + "</figure>\n";
}

bool has_point(const svg::Chart& c) {
  for (const auto& s : c.series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
      if (std::isfinite(s.x[i]) && std::isfinite(s.y[i]) && (!c.y.log10 || s.y[i] > 0)) return true;
  return false;
}

constexpr const char* kStyle = R"(
body{font-family:Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 12px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:14px;margin:0 0 8px 0;color:#555}.sub{color:#666;margin-top:0}
.boxes{display:flex;flex-wrap:wrap;gap:16px}.box{border:1px solid #ddd;border-radius:6px;padding:12px 16px;min-width:240px}
dl{display:grid;grid-template-columns:auto auto;gap:3px 16px;margin:0}dt{color:#666}dd{margin:0;font-variant-numeric:tabular-nums}
figure{margin:12px 0}svg.chart{max-width:100%;height:auto;border:1px solid #eee}
table{border-collapse:collapse;font-size:13px;margin-top:8px}th,td{padding:4px 8px;border-bottom:1px solid #eee;text-align:left}
th{background:#f4f4f4;cursor:pointer;user-select:none;white-space:nowrap}th[aria-sort=ascending]::after{content:" \25B2"}
th[aria-sort=descending]::after{content:" \25BC"}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:hover{background:#f8f8ff}.note{color:#666;font-size:13px}footer{margin-top:40px;color:#888;font-size:12px}
)";

// Click a header to sort by it (again: reverse). "#sort=KEY" / "#sort=-KEY" in the URL
// opens the page sorted, so a view can be linked.
constexpr const char* kScript = R"(
(function () {
  function value(td, numeric) {
    var v = td.getAttribute('data-v');
    if (!numeric) return td.textContent;
    return v === null ? -Infinity : parseFloat(v);
  }
  function sortTable(table, col, descending) {
    var th = table.tHead.rows[0].cells[col], numeric = th.getAttribute('data-type') === 'num';
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a.cells[col], numeric), y = value(b.cells[col], numeric);
      var c = numeric ? (x < y ? -1 : x > y ? 1 : 0) : String(x).localeCompare(String(y));
      return descending ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', descending ? 'descending' : 'ascending');
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.addEventListener('click', function () { sortTable(table, i, th.getAttribute('aria-sort') === 'ascending'); });
    });
  });
  var m = /sort=(-?)([\w.]+)/.exec(window.location.hash);
  if (m) document.querySelectorAll('table.sortable th[data-key="' + m[2] + '"]').forEach(function (th) {
    sortTable(th.closest('table'), th.cellIndex, m[1] === '-');
  });
})();
)";

std::string page(const std::string& title, const std::string& body, const std::string& source) {
  // The policy forbids every fetch: the page must work from a file, offline.
  return fmt::format(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
      "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
      "script-src 'unsafe-inline'\">\n"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{}</style>\n"
      "</head><body>\n{}<footer>quantkit report, made from {}</footer>\n<script>{}</script>\n</body></html>\n",
      esc(title), kStyle, body, esc(source), kScript);
}

// ---- the quantize report ------------------------------------------------------------------

std::string summary_section(const json& r) {
  const double in = get_num(r, "input_bytes"), out = get_num(r, "output_bytes");
  const json& calib = get_obj(r, "calibration");
  Facts run = {{"model", esc(get_str(r, "model"))},
               {"output", esc(get_str(r, "output"))},
               {"format", esc(get_str(r, "format"))},
               {"method", esc(get_str(r, "method"))},
               {"tensor data", megabytes(in) + " → " + megabytes(out)},
               {"compression", fixed(in / out, 2) + "×"},
               {"bits / weight", fixed(get_num(r, "bits_per_weight"), 4)},
               {"time", fixed(get_num(r, "seconds"), 2) + " s"}};
  if (get_num(calib, "windows") > 0)
    run.emplace_back("calibration", fmt::format("{} windows, {} tokens", get_num(calib, "windows"), get_num(calib, "tokens")));
  std::string out_html = "<div class=\"boxes\">\n" + facts("Run", run);
  const json& m = get_obj(r, "model_info");
  if (!m.empty()) {
    Facts model;
    for (const char* k : {"container", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "vocab_size", "context"}) {
      const auto it = m.find(k);
      if (it != m.end()) model.emplace_back(k, esc(it->is_string() ? it->get<std::string>() : it->dump()));
    }
    model.emplace_back("parameters", fmt::format("{:.0f}", get_num(m, "parameters")));
    out_html += facts("Model", model);
  }
  return out_html + "</div>\n";
}

std::string eval_section(const json& r) {
  const json& e = get_obj(r, "eval");
  if (e.empty()) return "";
  Facts ppl = {{"perplexity (llama.cpp)", fixed(get_num(e, "perplexity"), 4)},
               {"perplexity (all tokens)", fixed(get_num(e, "perplexity_all_tokens"), 4)}};
  const json& ci = get_arr(e, "perplexity_ci95");
  if (ci.size() == 2 && ci[0].is_number() && ci[1].is_number())
    ppl.emplace_back("95% interval", fmt::format("[{}, {}]", fixed(ci[0].get<double>(), 4), fixed(ci[1].get<double>(), 4)));
  ppl.emplace_back("text", esc(get_str(e, "text")));
  ppl.emplace_back("window", fmt::format("{:.0f} tokens", get_num(e, "ctx")));
  Facts kl = {{"KL mean", fixed(get_num(e, "kl_mean"), 6)},
              {"KL median", fixed(get_num(e, "kl_median"), 6)},
              {"KL p99", fixed(get_num(e, "kl_p99"), 6)},
              {"KL max", fixed(get_num(e, "kl_max"), 6)},
              {"top-1 agreement", fixed(100 * get_num(e, "top1_agreement"), 2) + " %"}};
  return "<h2 id=\"eval\">Evaluation against the input model</h2>\n<div class=\"boxes\">\n" + facts("Perplexity", ppl) +
         facts("KL(input || quantized)", kl) + "</div>\n";
}

std::string mixed_section(const json& r) {
  const json& m = get_obj(r, "mixed_precision");
  if (m.empty()) return "";
  std::string candidates;
  for (const auto& c : get_arr(m, "candidates")) candidates += (candidates.empty() ? "" : ", ") + esc(c.get<std::string>());
  Facts f = {{"budget", fixed(get_num(m, "budget_bits_per_weight"), 4) + " bits/weight"},
             {"achieved", fixed(get_num(m, "achieved_bits_per_weight"), 4) + " bits/weight"},
             {"damage estimate", esc(get_str(m, "damage_estimate"))},
             {"predicted damage", fixed(get_num(m, "predicted_damage"), 6)},
             {"candidates", candidates}};
  return "<h2 id=\"mixed\">Mixed precision</h2>\n<div class=\"boxes\">\n" + facts("Allocation", f) + "</div>\n";
}

// SQNR against bits/weight, one point per tensor, one series per stored format.
std::string rd_section(const json& r) {
  svg::Chart chart;
  chart.title = "Per-tensor rate–distortion";
  chart.x.label = "bits per weight (stored, padding included)";
  chart.y.label = "SQNR (dB)";
  std::map<std::string, svg::Series> by_format;
  const json& tensors = get_arr(r, "tensors");
  const bool label = tensors.size() <= 12;  // beyond that labels only overlap; the table names them
  for (const auto& t : tensors) {
    const double sqnr = get_num(t, "sqnr_db");
    if (!std::isfinite(sqnr)) continue;  // lossless (kept or f32): no point on a dB axis
    svg::Series& s = by_format[get_str(t, "format")];
    s.name = get_str(t, "format");
    s.x.push_back(get_num(t, "bits_per_weight"));
    s.y.push_back(sqnr);
    if (label) s.labels.push_back(get_str(t, "name"));
  }
  for (auto& [name, s] : by_format) chart.series.push_back(std::move(s));
  std::string out = "<h2 id=\"rd\">Rate–distortion</h2>\n";
  if (!has_point(chart)) return out + "<p class=\"note\">No lossy tensor: nothing to plot.</p>\n";
  return out + inline_chart(chart, "rd-chart") +
         "<p class=\"note\">Each point is one tensor: its exact stored bits per weight and the SQNR of its decoded "
         "weights, 10 log10(|W|² / |W − Q|²). Lossless tensors (kept, f32) are not shown.</p>\n";
}

std::string pareto_section(const json& r) {
  const json& points = get_arr(r, "pareto");
  if (points.empty()) return "";
  svg::Chart chart;
  chart.title = "Perplexity vs size: uniform formats and mixed precision";
  chart.x.label = "bits per weight (everything counted)";
  chart.y.label = "perplexity (llama.cpp convention)";
  chart.y.log10 = true;
  svg::Series uniform{"uniform formats", {}, {}, {}, true, false, ""}, mixed{"mixed precision", {}, {}, {}, true, true, ""};
  std::vector<std::vector<Cell>> rows;
  for (const auto& p : points) {
    const std::string label = get_str(p, "label");
    const double bpw = get_num(p, "bits_per_weight"), ppl = get_num(p, "perplexity"), kl = get_num(p, "kl_mean");
    svg::Series& s = label == "mixed" ? mixed : uniform;
    s.x.push_back(bpw), s.y.push_back(ppl);
    if (&s == &uniform) s.labels.push_back(label);
    rows.push_back({text_cell(label), num_cell(bpw, fixed(bpw, 4)), num_cell(ppl, fixed(ppl, 4)), num_cell(kl, fixed(kl, 6))});
  }
  chart.series = {uniform, mixed};
  const json& e = get_obj(r, "eval");
  if (!e.empty()) chart.series.push_back({"this model", {get_num(r, "bits_per_weight")}, {get_num(e, "perplexity")}, {}, true, false, "#000000"});
  std::string out = "<h2 id=\"pareto\">Pareto frontier</h2>\n";
  if (has_point(chart)) out += inline_chart(chart, "pareto-chart");
  return out + table("pareto-table", {{"label", "point"}, {"bits_per_weight", "bits/weight", true},
                                      {"perplexity", "perplexity", true}, {"kl_mean", "KL mean", true}}, rows);
}

std::string tensor_section(const json& r) {
  const std::vector<Column> cols = {{"name", "tensor"},
                                    {"format", "format"},
                                    {"requested", "requested"},
                                    {"shape", "shape"},
                                    {"params", "parameters", true},
                                    {"bits_per_weight", "bits/w", true},
                                    {"method", "method"},
                                    {"weighted_rel_error", "rel. error", true},
                                    {"sqnr_db", "SQNR dB", true},
                                    {"seconds", "seconds", true},
                                    {"note", "note"}};
  std::vector<std::vector<Cell>> rows;
  for (const auto& t : get_arr(r, "tensors")) {
    const json& shape = get_arr(t, "shape");
    double params = shape.empty() ? NAN : 1;
    std::string shape_text;
    for (const auto& d : shape) {
      params *= d.is_number() ? d.get<double>() : NAN;
      shape_text += (shape_text.empty() ? "" : "×") + d.dump();
    }
    const double bpw = get_num(t, "bits_per_weight"), err = get_num(t, "weighted_rel_error");
    const double secs = get_num(t, "seconds");
    // A null SQNR is an exact copy (infinite SQNR).
    const double sqnr = t.contains("sqnr_db") && t["sqnr_db"].is_null() ? INFINITY : get_num(t, "sqnr_db");
    std::string method = get_str(t, "method");
    if (t.value("calibrated", false)) method += " (calibrated)";
    rows.push_back({text_cell(get_str(t, "name")), text_cell(get_str(t, "format")), text_cell(get_str(t, "requested")),
                    text_cell(shape_text), num_cell(params, fixed(params, 0)), num_cell(bpw, fixed(bpw, 3)),
                    text_cell(method), num_cell(err, sci(err)), num_cell(sqnr, std::isinf(sqnr) ? "∞" : fixed(sqnr, 2)),
                    num_cell(secs, fixed(secs, 3)), text_cell(get_str(t, "note"))});
  }
  return "<h2 id=\"tensors\">Tensors</h2>\n<p class=\"note\">Click a column header to sort.</p>\n" +
         table("tensor-table", cols, rows);
}

std::string gptq_section(const json& r) {
  const json& g = get_obj(r, "gptq");
  if (g.empty()) return "";
  std::string out = fmt::format("<h2 id=\"gptq\">GPTQ checkpoint</h2>\n<p>{} bits, group size {}, {}: {} layer weights packed.</p>\n",
                                get_num(g, "bits"), get_num(g, "group_size"), g.value("sym", true) ? "symmetric" : "asymmetric",
                                get_arr(g, "packed").size());
  const json& deq = get_arr(g, "dequantized");
  if (deq.empty()) return out;
  out += "<ul class=\"note\">\n";
  for (const auto& d : deq)
    out += fmt::format("<li>{} ({}): {}</li>\n", esc(get_str(d, "name")), esc(get_str(d, "type")), esc(get_str(d, "reason")));
  return out + "</ul>\n";
}

std::string quantize_page(const json& r, const std::string& source) {
  const std::string title = fmt::format("quantkit report: {} → {}", get_str(r, "model"), get_str(r, "output"));
  std::string body = fmt::format("<h1>quantkit report</h1>\n<p class=\"sub\">{} → {} ({}, {})</p>\n", esc(get_str(r, "model")),
                                 esc(get_str(r, "output")), esc(get_str(r, "format")), esc(get_str(r, "method")));
  body += summary_section(r) + eval_section(r) + mixed_section(r) + rd_section(r) + pareto_section(r) +
          tensor_section(r) + gptq_section(r);
  return page(title, body, source);
}

// ---- the rd report ------------------------------------------------------------------------

std::string rd_page(const json& r, const std::string& source) {
  svg::Chart chart;
  chart.title = fmt::format("SQNR vs rate: {}", get_str(r, "source"));
  chart.x.label = "bits per weight";
  chart.y.label = "SQNR (dB)";
  chart.x.min = 0;
  svg::Series fixed_rate, coded;
  fixed_rate.name = "fixed rate";
  coded.name = "entropy-coded (rANS)";
  const json& results = get_arr(r, "results");
  const bool label = results.size() <= 30;
  bool gaussian = false;
  std::vector<std::vector<Cell>> rows;
  for (const auto& x : results) {
    const std::string spec = get_str(x, "spec");
    if (x.value("skipped", false)) {
      rows.push_back({text_cell(spec), {}, {}, {}, {}, {}, text_cell("skipped: " + get_str(x, "note"))});
      continue;
    }
    const double bpw = get_num(x, "bits_per_weight"), ec = get_num(x, "entropy_coded_bits_per_weight");
    const double sqnr = get_num(x, "sqnr_db"), mse = get_num(x, "mse"), gap = get_num(x, "gap_db");
    gaussian = gaussian || x.contains("shannon_bound_db");
    fixed_rate.x.push_back(bpw), fixed_rate.y.push_back(sqnr), coded.x.push_back(ec), coded.y.push_back(sqnr);
    if (label) fixed_rate.labels.push_back(spec);
    rows.push_back({text_cell(spec), num_cell(bpw, fixed(bpw, 4)), num_cell(ec, fixed(ec, 4)), num_cell(mse, sci(mse)),
                    num_cell(sqnr, fixed(sqnr, 3)), num_cell(gap, fixed(gap, 3)), text_cell(get_str(x, "note"))});
  }
  chart.series = {fixed_rate, coded};
  if (gaussian) chart.lines.push_back({"Shannon bound 6.02 dB/bit", rd::kDbPerBit, 0, "#888888", true});
  std::string body = fmt::format("<h1>quantkit rate–distortion report</h1>\n<p class=\"sub\">source {} ({} × {})</p>\n",
                                 esc(get_str(r, "source")), get_num(r, "rows"), get_num(r, "cols"));
  body += "<h2 id=\"rd\">Rate–distortion</h2>\n";
  if (has_point(chart)) body += inline_chart(chart, "rd-chart");
  body += "<h2 id=\"formats\">Formats</h2>\n" +
          table("rd-table", {{"spec", "spec"}, {"bits_per_weight", "bits/w", true}, {"entropy_coded_bits_per_weight", "ec bits/w", true},
                             {"mse", "MSE", true}, {"sqnr_db", "SQNR dB", true}, {"gap_db", "gap to bound dB", true}, {"note", "note"}},
                rows);
  return page("quantkit rate–distortion report: " + get_str(r, "source"), body, source);
}

}  // namespace

nlohmann::json quantize_json(const ModelFile& in, const QuantizeResult& r, const QuantizeRun& run) {
  int64_t n_params = 0, in_params = 0;
  for (const auto& t : r.tensors) n_params += t.rows * t.cols;
  for (const auto& t : in.tensors) in_params += t.numel();
  const LlamaConfig& c = in.config;
  json j = {{"model", run.model}, {"output", run.output}, {"format", run.format}, {"method", run.method},
            {"input_bytes", r.input_bytes}, {"output_bytes", r.output_bytes},
            {"bits_per_weight", 8.0 * double(r.output_bytes) / double(std::max<int64_t>(1, n_params))},
            {"seconds", r.seconds},
            {"calibration", {{"windows", r.calibration_windows}, {"tokens", r.calibration_tokens}}},
            {"model_info", {{"container", in.container}, {"dim", c.dim}, {"n_layers", c.n_layers}, {"n_heads", c.n_heads},
                            {"n_kv_heads", c.n_kv_heads}, {"hidden_dim", c.hidden_dim}, {"vocab_size", c.vocab_size},
                            {"context", c.max_seq_len}, {"parameters", in_params}}},
            {"tensors", json::array()}};
  for (const auto& t : r.tensors)
    j["tensors"].push_back({{"name", t.name}, {"requested", t.plan.requested}, {"format", t.plan.spec},
                            {"note", t.plan.note}, {"shape", {t.rows, t.cols}}, {"bits_per_weight", t.bits_per_weight},
                            {"method", t.method}, {"calibrated", t.calibrated},
                            {"weighted_rel_error", t.weighted_rel_error}, {"sqnr_db", number(t.sqnr_db)},
                            {"seconds", t.seconds}});
  return j;
}

nlohmann::json eval_json(const EvalResult& e, const std::string& text) {
  return {{"text", text}, {"ctx", e.ctx}, {"tokens", e.n_tokens}, {"windows", e.n_windows},
          {"scored_tokens", e.llamacpp.n_scored}, {"perplexity", number(e.llamacpp.ppl)},
          {"perplexity_ci95", {number(e.llamacpp.ppl_lo), number(e.llamacpp.ppl_hi)}},
          {"perplexity_all_tokens", number(e.all_tokens.ppl)}, {"kl_mean", e.kl.mean}, {"kl_median", e.kl.median},
          {"kl_p99", e.kl.p99}, {"kl_max", e.kl.max}, {"top1_agreement", e.kl.top1_agreement},
          {"mean_delta_logp", e.kl.mean_delta_logp}, {"seconds", e.seconds}};
}

nlohmann::json mixed_precision_json(const Sensitivity& s, const Allocation& a, uint64_t budget_bytes,
                                    DamageEstimate damage, const std::vector<std::string>& candidates) {
  json t = json::array();
  for (size_t i = 0; i < s.tensors.size(); ++i) {
    json opts = json::array();
    for (const auto& o : s.tensors[i].options)
      opts.push_back({{"spec", o.spec}, {"stored", o.stored}, {"bytes", o.bytes}, {"damage", o.damage}});
    t.push_back({{"name", s.tensors[i].name}, {"chosen", a.specs[i]}, {"options", opts}});
  }
  return {{"damage_estimate", damage_name(damage)},
          {"approximate", damage == DamageEstimate::DataFree},
          {"budget_bytes", budget_bytes},
          {"budget_bits_per_weight", 8.0 * double(budget_bytes) / double(s.params)},
          {"achieved_bytes", a.bytes},
          {"achieved_bits_per_weight", a.bits_per_weight(s)},
          {"predicted_damage", a.damage},
          {"candidates", candidates},
          {"tensors", t}};
}

nlohmann::json rd_json(const rd::Result& r) {
  json j = {{"spec", r.spec}, {"skipped", r.skipped}};
  if (!r.note.empty()) j["note"] = r.note;
  if (r.skipped) return j;
  json streams = json::array();
  for (const auto& s : r.streams)
    streams.push_back({{"name", s.name}, {"alphabet", s.alphabet}, {"symbols", s.n_symbols},
                       {"fixed_bits", s.fixed_bits}, {"coded_bits", s.coded_bits},
                       {"shannon_bits", s.shannon_bits}, {"coding", std::string(1, s.coded_mode)}});
  j.update({{"packed_bits", r.packed_bits}, {"side_bits", r.side_bits}, {"streams_separable", r.streams_separable},
            {"bits_per_weight", r.fixed_bpw}, {"entropy_coded_bits_per_weight", r.entropy_bpw},
            {"shannon_bits_per_weight", r.shannon_bpw}, {"streams", streams}, {"mse", r.mse},
            {"weighted_mse", r.weighted_mse}, {"sqnr_db", number(r.sqnr_db)},
            {"encode_mb_per_s", number(r.encode_mbps)}, {"decode_mb_per_s", number(r.decode_mbps)},
            {"encode_seconds", r.encode_seconds}, {"decode_seconds", r.decode_seconds}});
  if (r.has_bound)
    j.update({{"shannon_bound_db", r.bound_fixed_db}, {"shannon_bound_entropy_coded_db", r.bound_entropy_db},
              {"gap_db", number(r.gap_fixed_db)}, {"gap_entropy_coded_db", number(r.gap_entropy_db)}});
  return j;
}

std::string html(const nlohmann::json& result, const std::string& source) {
  if (result.is_object() && result.contains("tensors") && result["tensors"].is_array()) return quantize_page(result, source);
  if (result.is_object() && result.contains("results") && result["results"].is_array()) return rd_page(result, source);
  fail("{}: not a quantkit result (expected the JSON of `quantize --json` or `rd --json`)", source);
}

void write_html(const nlohmann::json& result, const std::string& source, const std::string& path) {
  const std::string doc = html(result, source);
  AtomicFile file(path);
  file.write(doc.data(), doc.size());
  file.commit();
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot open", path);
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::parse_error& e) {
    fail("{}: not valid JSON ({})", path, e.what());
  }
}

}  // namespace quantkit::report
