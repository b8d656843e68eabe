// SVG chart writer (see include/quantkit/svg_plot.h).
#include "quantkit/svg_plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "quantkit/error.h"
#include "quantkit/mapped_file.h"

namespace quantkit::svg {
namespace {

constexpr const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"};
constexpr int kMarginLeft = 78, kMarginRight = 230, kMarginTop = 48, kMarginBottom = 58;

// A number as attribute text: short, locale-independent.
std::string num(double v) { return fmt::format("{:.2f}", v); }

// Maps data values of one axis to pixels; log axes work on log10 of the values.
class Scale {
 public:
  Scale(const Axis& axis, double lo, double hi, double pix_lo, double pix_hi)
      : log_(axis.log10), lo_(lo), hi_(hi), pix_lo_(pix_lo), pix_hi_(pix_hi) {}
  bool usable(double v) const { return std::isfinite(v) && (!log_ || v > 0); }
  double pixel(double v) const {
    const double t = (value_space(v) - lo_) / (hi_ - lo_);
    return pix_lo_ + t * (pix_hi_ - pix_lo_);
  }
  double value_space(double v) const { return log_ ? std::log10(v) : v; }
  double data_value(double s) const { return log_ ? std::pow(10.0, s) : s; }
  double lo() const { return lo_; }  // in value space
  double hi() const { return hi_; }
  bool log() const { return log_; }

 private:
  bool log_;
  double lo_, hi_, pix_lo_, pix_hi_;
};

// [lo, hi] of an axis in value space (log10 for log axes): explicit limits, else the
// usable data with a 5% margin; a single value is widened so the range is never empty.
std::pair<double, double> axis_range(const Axis& axis, const std::vector<double>& values) {
  auto space = [&](double v) { return axis.log10 ? std::log10(v) : v; };
  double lo = INFINITY, hi = -INFINITY;
  for (double v : values)
    if (std::isfinite(v) && (!axis.log10 || v > 0)) lo = std::min(lo, space(v)), hi = std::max(hi, space(v));
  if (axis.min && std::isfinite(space(*axis.min))) lo = space(*axis.min);
  if (axis.max && std::isfinite(space(*axis.max))) hi = space(*axis.max);
  if (!std::isfinite(lo) || !std::isfinite(hi)) fail("chart: the axis '{}' has no finite data to show", axis.label);
  if (lo > hi) std::swap(lo, hi);
  if (hi - lo < 1e-12 * std::max(1.0, std::abs(hi))) {
    const double pad = std::max(std::abs(hi) * 0.1, axis.log10 ? 0.5 : 1.0);
    lo -= pad, hi += pad;
  }
  const double margin = 0.05 * (hi - lo);
  if (!axis.min) lo -= margin;
  if (!axis.max) hi += margin;
  return {lo, hi};
}

std::string tick_text(double v, double step) {
  if (v == 0) return "0";
  const double mag = std::abs(v);
  if (mag >= 1e6 || mag < 1e-4) return fmt::format("{:g}", v);
  const int decimals = std::clamp(int(std::ceil(-std::log10(step) - 1e-9)), 0, 8);
  std::string s = fmt::format("{:.{}f}", v, decimals);
  if (s.find('.') != std::string::npos) {  // 2.50 -> 2.5
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
  }
  return s;
}

struct Tick {
  double pos;  // in value space
  std::string text;
};

std::vector<Tick> ticks_of(const Scale& s, int target) {
  std::vector<Tick> out;
  if (s.log() && s.hi() - s.lo() >= 1.5) {  // decades: 10^k, thinned to about `target`
    const int step = std::max(1, int(std::ceil((s.hi() - s.lo()) / target)));
    for (int k = int(std::ceil(s.lo())); k <= int(std::floor(s.hi())); ++k)
      if (k % step == 0) out.push_back({double(k), fmt::format("{:g}", std::pow(10.0, k))});
    return out;
  }
  const double lo = s.data_value(s.lo()), hi = s.data_value(s.hi());
  const std::vector<double> values = nice_ticks(lo, hi, target);
  const double step = values.size() > 1 ? values[1] - values[0] : std::max(std::abs(hi - lo), 1e-12);
  for (double v : values)
    if (s.usable(v)) out.push_back({s.value_space(v), tick_text(v, step)});
  return out;
}

class Svg {
 public:
  Svg(int w, int h) {
    out_ += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
    out_ += fmt::format(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
        "font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n",
        w, h);
    out_ += fmt::format("<rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"white\"/>\n", w, h);
  }
  void raw(const std::string& s) { out_ += s; }
  void text(double x, double y, std::string_view s, const std::string& attrs = "") {
    out_ += fmt::format("<text x=\"{}\" y=\"{}\"{}{}>{}</text>\n", num(x), num(y), attrs.empty() ? "" : " ", attrs,
                        escape_xml(s));
  }
  void line(double x1, double y1, double x2, double y2, const std::string& attrs) {
    out_ += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" {}/>\n", num(x1), num(y1), num(x2), num(y2), attrs);
  }
  void polyline(const std::vector<std::pair<double, double>>& pts, const std::string& attrs) {
    if (pts.size() < 2) return;
    std::string p;
    for (const auto& [x, y] : pts) p += (p.empty() ? "" : " ") + num(x) + "," + num(y);
    out_ += fmt::format("<polyline points=\"{}\" fill=\"none\" {}/>\n", p, attrs);
  }
  std::string finish() { return out_ + "</svg>\n"; }

 private:
  std::string out_;
};

struct Frame {
  double left, right, top, bottom;  // plot area in pixels
};

void draw_axes(Svg& svg, const Frame& f, const Scale& xs, const Scale& ys, const Chart& c) {
  for (const Tick& t : ticks_of(xs, 8)) {
    const double x = xs.pixel(xs.data_value(t.pos));
    svg.line(x, f.top, x, f.bottom, "stroke=\"#e6e6e6\"");
    svg.line(x, f.bottom, x, f.bottom + 5, "stroke=\"black\"");
    svg.text(x, f.bottom + 18, t.text, "text-anchor=\"middle\"");
  }
  for (const Tick& t : ticks_of(ys, 7)) {
    const double y = ys.pixel(ys.data_value(t.pos));
    svg.line(f.left, y, f.right, y, "stroke=\"#e6e6e6\"");
    svg.line(f.left - 5, y, f.left, y, "stroke=\"black\"");
    svg.text(f.left - 8, y + 4, t.text, "text-anchor=\"end\"");
  }
  svg.raw(fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n",
                      num(f.left), num(f.top), num(f.right - f.left), num(f.bottom - f.top)));
  svg.text((f.left + f.right) / 2, f.bottom + 42, c.x.label, "text-anchor=\"middle\" font-size=\"13\"");
  const double ymid = (f.top + f.bottom) / 2;
  svg.text(20, ymid, c.y.label,
           fmt::format("text-anchor=\"middle\" font-size=\"13\" transform=\"rotate(-90 20 {})\"", num(ymid)));
  svg.text((f.left + f.right) / 2, 28, c.title, "text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\"");
}

void draw_reference_line(Svg& svg, const ReferenceLine& r, const Scale& xs, const Scale& ys) {
  std::vector<std::pair<double, double>> pts;
  const int samples = xs.log() || ys.log() ? 200 : 1;
  for (int i = 0; i <= samples; ++i) {
    const double x = xs.data_value(xs.lo() + (xs.hi() - xs.lo()) * i / samples);
    const double y = r.slope * x + r.intercept;
    if (ys.usable(y)) pts.emplace_back(xs.pixel(x), ys.pixel(y));
  }
  svg.polyline(pts, fmt::format("stroke=\"{}\" stroke-width=\"1.5\"{}", escape_xml(r.color),
                                r.dashed ? " stroke-dasharray=\"6,4\"" : ""));
}

void draw_series(Svg& svg, const Series& s, const std::string& color, const Scale& xs, const Scale& ys) {
  std::vector<std::pair<double, double>> pts;
  std::vector<size_t> index;
  const size_t n = std::min(s.x.size(), s.y.size());
  for (size_t i = 0; i < n; ++i)
    if (xs.usable(s.x[i]) && ys.usable(s.y[i])) pts.emplace_back(xs.pixel(s.x[i]), ys.pixel(s.y[i])), index.push_back(i);
  if (s.line) svg.polyline(pts, fmt::format("stroke=\"{}\" stroke-width=\"1.8\"", escape_xml(color)));
  for (size_t k = 0; k < pts.size(); ++k) {
    if (s.markers)
      svg.raw(fmt::format("<circle cx=\"{}\" cy=\"{}\" r=\"3.5\" fill=\"{}\"/>\n", num(pts[k].first),
                          num(pts[k].second), escape_xml(color)));
    if (index[k] < s.labels.size() && !s.labels[index[k]].empty())
      svg.text(pts[k].first + 5, pts[k].second - 5, s.labels[index[k]], "font-size=\"9\" fill=\"#444444\"");
  }
}

void draw_legend(Svg& svg, const Frame& f, const Chart& c, const std::vector<std::string>& colors) {
  double y = f.top + 8;
  const double x = f.right + 16;
  for (size_t i = 0; i < c.series.size(); ++i) {
    const Series& s = c.series[i];
    if (s.name.empty()) continue;
    if (s.line) svg.line(x, y, x + 24, y, fmt::format("stroke=\"{}\" stroke-width=\"1.8\"", escape_xml(colors[i])));
    if (s.markers || !s.line)
      svg.raw(fmt::format("<circle cx=\"{}\" cy=\"{}\" r=\"3.5\" fill=\"{}\"/>\n", num(x + 12), num(y), escape_xml(colors[i])));
    svg.text(x + 32, y + 4, s.name);
    y += 18;
  }
  for (const ReferenceLine& r : c.lines) {
    if (r.name.empty()) continue;
    svg.line(x, y, x + 24, y, fmt::format("stroke=\"{}\" stroke-width=\"1.5\"{}", escape_xml(r.color),
                                          r.dashed ? " stroke-dasharray=\"6,4\"" : ""));
    svg.text(x + 32, y + 4, r.name);
    y += 18;
  }
}

}  // namespace

std::string escape_xml(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char ch : text) {
    switch (ch) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        // XML 1.0 forbids most control characters even when escaped.
        if (static_cast<unsigned char>(ch) < 0x20 && ch != '\t' && ch != '\n' && ch != '\r') out += '?';
        else out += ch;
    }
  }
  return out;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) return {};
  if (lo > hi) std::swap(lo, hi);
  if (hi == lo) return {lo};
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = 10 * mag;
  for (double m : {1.0, 2.0, 2.5, 5.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> out;
  for (double k = std::ceil(lo / step - 1e-9); k * step <= hi + 1e-9 * step; k += 1) {
    const double v = k * step;
    out.push_back(std::abs(v) < 1e-12 * step ? 0.0 : v);
  }
  return out;
}

std::string render(const Chart& c) {
  std::vector<double> xs_all, ys_all;
  for (const Series& s : c.series) {
    const size_t n = std::min(s.x.size(), s.y.size());
    for (size_t i = 0; i < n; ++i) {  // a point counts only if both coordinates can be drawn
      const bool x_ok = std::isfinite(s.x[i]) && (!c.x.log10 || s.x[i] > 0);
      const bool y_ok = std::isfinite(s.y[i]) && (!c.y.log10 || s.y[i] > 0);
      if (x_ok && y_ok) xs_all.push_back(s.x[i]), ys_all.push_back(s.y[i]);
    }
  }
  const auto [x_lo, x_hi] = axis_range(c.x, xs_all);
  const auto [y_lo, y_hi] = axis_range(c.y, ys_all);
  const int width = std::max(c.width, kMarginLeft + kMarginRight + 100);
  const int height = std::max(c.height, kMarginTop + kMarginBottom + 100);
  const Frame f{double(kMarginLeft), double(width - kMarginRight), double(kMarginTop), double(height - kMarginBottom)};
  const Scale xs(c.x, x_lo, x_hi, f.left, f.right);
  const Scale ys(c.y, y_lo, y_hi, f.bottom, f.top);  // pixel y grows downwards

  std::vector<std::string> colors;
  size_t next = 0;
  for (const Series& s : c.series) colors.push_back(s.color.empty() ? kPalette[next++ % std::size(kPalette)] : s.color);

  Svg svg(width, height);
  svg.raw(fmt::format("<defs><clipPath id=\"plot-area\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/></clipPath></defs>\n",
                      num(f.left), num(f.top), num(f.right - f.left), num(f.bottom - f.top)));
  draw_axes(svg, f, xs, ys, c);
  svg.raw("<g clip-path=\"url(#plot-area)\">\n");
  for (const ReferenceLine& r : c.lines) draw_reference_line(svg, r, xs, ys);
  for (size_t i = 0; i < c.series.size(); ++i) draw_series(svg, c.series[i], colors[i], xs, ys);
  svg.raw("</g>\n");
  draw_legend(svg, f, c, colors);
  return svg.finish();
}

void write(const Chart& chart, const std::string& path) {
  const std::string doc = render(chart);
  AtomicFile file(path);
  file.write(doc.data(), doc.size());
  file.commit();
}

}  // namespace quantkit::svg
