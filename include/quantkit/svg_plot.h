// A small dependency-free SVG chart writer: x/y axes with "nice" ticks, grid, title, axis
// labels, a legend, several series (markers and/or a polyline, optional per-point labels)
// and straight reference lines (e.g. the Shannon bound, y = 6.02 x). Linear or log10 axes.
// Used by `quantkit rd --plot` (SQNR vs bits/weight) and the Pareto-frontier plots.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace quantkit::svg {

struct Series {
  std::string name;                 // legend entry (empty: not in the legend)
  std::vector<double> x, y;         // same length; non-finite points are skipped
  std::vector<std::string> labels;  // optional, one per point, drawn beside the marker
  bool markers = true;
  bool line = false;                // polyline through the points in the given order
  std::string color;                // CSS colour; empty: the next palette colour
};

// y = slope * x + intercept across the plot (in data coordinates; on log axes it is
// sampled, so it shows as the curve it is).
struct ReferenceLine {
  std::string name;
  double slope = 0, intercept = 0;
  std::string color = "#888888";
  bool dashed = true;
};

struct Axis {
  std::string label;
  bool log10 = false;                 // logarithmic axis (non-positive values are skipped)
  std::optional<double> min, max;     // default: the data range with a margin
};

struct Chart {
  std::string title;
  Axis x, y;
  std::vector<Series> series;
  std::vector<ReferenceLine> lines;
  int width = 900, height = 560;  // pixels
};

// The chart as a standalone SVG document. Throws Error when there is nothing to draw
// (no finite point and no explicit axis range).
std::string render(const Chart& chart);

// render() written atomically to `path`.
void write(const Chart& chart, const std::string& path);

// Text safe inside SVG/XML character data and attribute values (& < > " ').
std::string escape_xml(std::string_view text);

// About `target` round tick values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int target = 6);

}  // namespace quantkit::svg
