// The Python module `quantkit`: formats, GPTQ, rate-distortion, models, whole-model
// quantization and the HTML report, NumPy in and out. quantkit::Error becomes
// quantkit.Error (a ValueError) carrying the library's one-line message.
#include <filesystem>

#include "bindings.h"
#include "quantkit/error.h"
#include "quantkit/html_report.h"
#include "quantkit/thread_pool.h"

namespace quantkit::python {

std::mutex& Unlocked::library_mutex() {
  static std::mutex m;
  return m;
}

void require_matrix(const py::array& a, const char* what) {
  if (a.ndim() != 2) fail("{}: expected a 2-D matrix [rows, cols], got {} dimension(s)", what, a.ndim());
  if (a.shape(0) == 0 || a.shape(1) == 0) fail("{}: empty matrix ({} x {})", what, a.shape(0), a.shape(1));
}

py::object to_python(const nlohmann::json& j) { return py::module_::import("json").attr("loads")(j.dump()); }

nlohmann::json from_python(const py::handle& obj) {
  const std::string text = py::str(py::module_::import("json").attr("dumps")(obj));
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail("result: not a JSON document ({})", e.what());
  }
}

namespace {

// A result dict, or the path of a result JSON file.
nlohmann::json result_of(const py::object& result, std::string* source) {
  if (py::isinstance<py::str>(result) || py::isinstance(result, py::module_::import("os").attr("PathLike"))) {
    *source = py::str(py::module_::import("os").attr("fspath")(result));
    return report::read_json(*source);
  }
  *source = "Python result";
  return from_python(result);
}

void bind_report(py::module_& m) {
  m.def("report_html", [](const py::object& result) {
    std::string source;
    const nlohmann::json j = result_of(result, &source);
    return report::html(j, source);
  }, py::arg("result"), "The self-contained HTML report of a result (dict from quantize_model, or a JSON file path).");
  m.def("write_report", [](const py::object& result, const std::string& path) {
    std::string source;
    const nlohmann::json j = result_of(result, &source);
    report::write_html(j, source, path);
  }, py::arg("result"), py::arg("path"), "Writes the HTML report of a result to path (atomically).");
}

}  // namespace
}  // namespace quantkit::python

PYBIND11_MODULE(quantkit, m) {
  using namespace quantkit::python;
  m.doc() = "quantkit: quantize neural networks and measure what it costs";
  m.attr("__version__") = QK_VERSION;
  py::register_exception<quantkit::Error>(m, "Error", PyExc_ValueError);
  m.def("set_num_threads", [](int n) {
    Unlocked unlocked;  // not while another thread's call uses the pool
    quantkit::set_num_threads(n);
  }, py::arg("n"), "Worker threads (n <= 0: all cores).");
  m.def("num_threads", &quantkit::num_threads);
  bind_formats(m);
  bind_models(m);
  bind_report(m);
}
