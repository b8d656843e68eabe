// Shared pieces of the Python module: NumPy <-> C++ conversion, JSON <-> Python objects,
// and the two halves of the bindings (formats and models).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <nlohmann/json.hpp>
#include <mutex>
#include <string>
#include <vector>

namespace quantkit::python {

namespace py = pybind11;

// float32 / float64 C-contiguous views: the array itself when it already is one (zero
// copy), else a converted copy.
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

// Held while the library works: the GIL is released (other Python threads run) and the
// library's lock is taken, because the process-wide thread pool runs one job at a time.
// Declaration order matters: the GIL goes first and comes back last.
class Unlocked {
 public:
  Unlocked() : lock_(library_mutex()) {}

 private:
  static std::mutex& library_mutex();
  py::gil_scoped_release gil_;
  std::lock_guard<std::mutex> lock_;
};

// Checks that `a` is a 2-D matrix; `what` names the argument in the error.
void require_matrix(const py::array& a, const char* what);

// A NumPy array that takes ownership of `v` (no copy).
template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* owned = new std::vector<T>(std::move(v));
  py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(std::move(shape), owned->data(), owner);
}

// JSON documents cross the boundary through Python's json module (plain dicts and lists).
py::object to_python(const nlohmann::json& j);
nlohmann::json from_python(const py::handle& obj);

void bind_formats(py::module_& m);
void bind_models(py::module_& m);

}  // namespace quantkit::python
