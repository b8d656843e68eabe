// Python bindings of formats, packed matrices, GPTQ and rate-distortion measurement.
#include <memory>

#include "bindings.h"
#include "quantkit/error.h"
#include "quantkit/format.h"
#include "quantkit/gptq.h"
#include "quantkit/html_report.h"
#include "quantkit/rd.h"

namespace quantkit::python {
namespace {

using FormatPtr = std::shared_ptr<const Format>;

// A quantized matrix together with the format that decodes it.
struct PyPacked {
  Packed packed;
  FormatPtr format;
};

FormatPtr format_of(const std::string& spec) { return make_format(spec); }

// W as float32 rows x cols, checked against the format.
FloatArray weights_for(const Format& f, const py::array& w_in) {
  FloatArray w = FloatArray::ensure(w_in);
  if (!w) fail("W: expected a float matrix");
  require_matrix(w, "W");
  const std::string why = f.check_shape(w.shape(0), w.shape(1));
  if (!why.empty()) fail("{}: {}", f.spec(), why);
  return w;
}

PyPacked quantize(const FormatPtr& f, const py::array& w_in, const std::optional<py::array>& importance_in) {
  const FloatArray w = weights_for(*f, w_in);
  const int64_t rows = w.shape(0), cols = w.shape(1);
  FloatArray imp;
  if (importance_in) {
    imp = FloatArray::ensure(*importance_in);
    if (!imp || imp.ndim() != 1 || imp.shape(0) != cols)
      fail("importance: expected {} values (one per column of W)", cols);
  }
  const float* imp_data = importance_in ? imp.data() : nullptr;
  PyPacked out{{}, f};
  Unlocked unlocked;
  out.packed = f->quantize(w.data(), rows, cols, imp_data);
  return out;
}

py::array_t<float> dequantize(const PyPacked& p) {
  py::array_t<float> out({p.packed.rows, p.packed.cols});
  float* data = out.mutable_data();
  Unlocked unlocked;
  p.format->dequantize(p.packed, data);
  return out;
}

PyPacked gptq(const py::array& w_in, const py::array& h_in, const std::string& spec, double damp, bool act_order,
              int64_t block) {
  const FormatPtr f = format_of(spec);
  const FloatArray w = weights_for(*f, w_in);
  const DoubleArray h = DoubleArray::ensure(h_in);
  const int64_t rows = w.shape(0), cols = w.shape(1);
  if (!h || h.ndim() != 2 || h.shape(0) != cols || h.shape(1) != cols)
    fail("H: expected the {} x {} input Hessian (sum of x x^T over inputs)", cols, cols);
  if (block < 1) fail("block: must be >= 1, got {}", block);
  GptqOptions opt;
  opt.damp = damp;
  opt.act_order = act_order;
  opt.batch = block;
  PyPacked out{{}, f};
  Unlocked unlocked;
  out.packed = gptq_quantize(*f, w.data(), rows, cols, h.data(), opt).packed;
  return out;
}

double objective(const py::array& w_in, const py::array& q_in, const py::array& h_in) {
  const FloatArray w = FloatArray::ensure(w_in), q = FloatArray::ensure(q_in);
  const DoubleArray h = DoubleArray::ensure(h_in);
  require_matrix(w, "W");
  const int64_t rows = w.shape(0), cols = w.shape(1);
  if (q.ndim() != 2 || q.shape(0) != rows || q.shape(1) != cols) fail("Q: expected the shape of W ({} x {})", rows, cols);
  if (h.ndim() != 2 || h.shape(0) != cols || h.shape(1) != cols) fail("H: expected {} x {}", cols, cols);
  Unlocked unlocked;
  return hessian_objective(w.data(), q.data(), rows, cols, h.data());
}

std::vector<std::string> specs_of(const py::object& specs) {
  if (py::isinstance<py::str>(specs)) return rd::expand_formats(specs.cast<std::string>());
  std::vector<std::string> out = specs.cast<std::vector<std::string>>();
  for (const auto& s : out) make_format(s);  // a bad spec fails before any work
  return out;
}

py::list rate_distortion(const py::object& source, const py::object& specs, int64_t n, uint64_t seed, int64_t cols,
                         const std::optional<py::array>& importance_in) {
  rd::SourceData data;
  if (py::isinstance<py::str>(source)) {
    data = rd::make_source(source.cast<std::string>(), n, seed, cols);
  } else {
    const FloatArray w = FloatArray::ensure(source);
    if (!w) fail("source: expected a source name or a float matrix");
    require_matrix(w, "source");
    data.source = data.kind = "array";
    data.rows = w.shape(0), data.cols = w.shape(1);
    data.w.assign(w.data(), w.data() + w.size());
  }
  std::vector<float> importance;
  if (importance_in) {
    const FloatArray imp = FloatArray::ensure(*importance_in);
    if (!imp || imp.ndim() != 1 || imp.shape(0) != data.cols)
      fail("importance: expected {} values (one per column)", data.cols);
    importance.assign(imp.data(), imp.data() + imp.size());
  }
  std::vector<nlohmann::json> rows;
  for (const std::string& spec : specs_of(specs)) {
    const FormatPtr f = format_of(spec);
    Unlocked unlocked;
    rows.push_back(report::rd_json(rd::measure(*f, data, importance.empty() ? nullptr : importance.data())));
  }
  py::list out;
  for (const auto& r : rows) out.append(to_python(r));
  return out;
}

py::list families() {
  py::list out;
  for (const FormatFamily& f : format_families())
    out.append(py::dict(py::arg("name") = f.name, py::arg("grammar") = f.grammar, py::arg("summary") = f.summary,
                        py::arg("examples") = f.examples));
  return out;
}

}  // namespace

void bind_formats(py::module_& m) {
  m.def("formats", [] { return rd::expand_formats("all"); },
        "Canonical example spec of every registered format (what `quantkit rd --formats all` measures).");
  m.def("format_families", &families, "One dict per format family: name, grammar, summary, examples.");

  py::class_<Format, std::shared_ptr<Format>>(m, "Format", "A quantization format made from a spec string.")
      .def(py::init([](const std::string& spec) { return std::shared_ptr<Format>(make_format(spec)); }), py::arg("spec"))
      .def_property_readonly("spec", &Format::spec)
      .def("describe", &Format::describe)
      .def("check_shape", &Format::check_shape, py::arg("rows"), py::arg("cols"),
           "Empty when a rows x cols matrix can be stored, else the reason.")
      .def("storage_bits", &Format::storage_bits, py::arg("rows"), py::arg("cols"))
      .def("bits_per_weight", &Format::bits_per_weight, py::arg("rows"), py::arg("cols"))
      .def("quantize", [](const std::shared_ptr<Format>& f, const py::array& w, const std::optional<py::array>& imp) {
        return quantize(f, w, imp);
      }, py::arg("W"), py::arg("importance") = py::none(),
           "Quantizes the 2-D matrix W [out, in]; importance: one weight per column (e.g. diag of the input Hessian).")
      .def("__repr__", [](const Format& f) { return "Format('" + f.spec() + "')"; });

  py::class_<PyPacked>(m, "Packed", "A quantized matrix: the exact packed bits and the format that decodes them.")
      .def("dequantize", &dequantize, "The decoded matrix (float32, rows x cols).")
      .def_property_readonly("spec", [](const PyPacked& p) { return p.format->spec(); })
      .def_property_readonly("shape", [](const PyPacked& p) { return py::make_tuple(p.packed.rows, p.packed.cols); })
      .def_property_readonly("bits", [](const PyPacked& p) { return p.packed.bits; })
      .def_property_readonly("bits_per_weight", [](const PyPacked& p) { return p.packed.bits_per_weight(); })
      .def_property_readonly("nbytes", [](const PyPacked& p) { return p.packed.bytes.size(); })
      .def_property_readonly("data", [](const py::object& self) {
        const PyPacked& p = self.cast<const PyPacked&>();
        py::array_t<uint8_t> view({py::ssize_t(p.packed.bytes.size())}, p.packed.bytes.data(), self);
        view.attr("flags").attr("writeable") = false;
        return view;
      }, "The packed bytes: a read-only uint8 view (no copy).")
      .def("__repr__", [](const PyPacked& p) {
        return fmt::format("Packed(spec='{}', shape=({}, {}), bits_per_weight={:.4f})", p.format->spec(), p.packed.rows,
                           p.packed.cols, p.packed.bits_per_weight());
      })
      .def(py::pickle(
          [](const PyPacked& p) {
            return py::make_tuple(p.format->spec(), p.packed.rows, p.packed.cols, p.packed.bits,
                                  py::bytes(reinterpret_cast<const char*>(p.packed.bytes.data()), p.packed.bytes.size()));
          },
          [](const py::tuple& t) {
            if (t.size() != 5) fail("Packed: bad pickle state");
            PyPacked p{{}, format_of(t[0].cast<std::string>())};
            p.packed.rows = t[1].cast<int64_t>(), p.packed.cols = t[2].cast<int64_t>(), p.packed.bits = t[3].cast<uint64_t>();
            const std::string bytes = t[4].cast<std::string>();
            if (p.packed.bits != p.format->storage_bits(p.packed.rows, p.packed.cols) || bytes.size() != (p.packed.bits + 7) / 8)
              fail("Packed: pickled bytes do not match {} at {} x {}", p.format->spec(), p.packed.rows, p.packed.cols);
            p.packed.bytes.assign(bytes.begin(), bytes.end());
            return p;
          }));

  m.def("gptq", &gptq, py::arg("W"), py::arg("H"), py::arg("spec"), py::arg("damp") = 0.01, py::arg("act_order") = true,
        py::arg("block") = 128,
        "GPTQ: quantizes W [out, in] in format spec, feeding rounding errors forward through the input Hessian H [in, in].");
  m.def("hessian_objective", &objective, py::arg("W"), py::arg("Q"), py::arg("H"),
        "tr((W - Q) H (W - Q)^T): the layer-output error GPTQ minimises.");
  m.def("rd", &rate_distortion, py::arg("source"), py::arg("specs"), py::arg("n") = int64_t(1) << 20,
        py::arg("seed") = 0, py::arg("cols") = 1024, py::arg("importance") = py::none(),
        "Rate-distortion of formats on a source ('gaussian', 'laplace', 'student-t:NU', 'tensor:MODEL:NAME') or a "
        "2-D array; specs: list of specs, comma-separated string or 'all'. One dict per spec (as `rd --json`).");
}

}  // namespace quantkit::python
