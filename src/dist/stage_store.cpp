#include "dist/stage_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "quantkit/error.h"
#include "quantkit/mapped_file.h"

namespace quantkit::dist {
namespace fs = std::filesystem;
namespace {

constexpr char kTensorMagic[4] = {'Q', 'K', 'T', '1'};
constexpr char kActivationMagic[4] = {'Q', 'K', 'A', '1'};
constexpr size_t kAlign = 64;

void pad_to(std::vector<uint8_t>& b, size_t align) { b.resize((b.size() + align - 1) / align * align, 0); }

template <typename T>
void append_pod(std::vector<uint8_t>& b, const T& v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  b.insert(b.end(), p, p + sizeof(T));
}

nlohmann::json plan_json(const TensorPlan& p) {
  return {{"kind", int(p.kind)}, {"requested", p.requested}, {"spec", p.spec}, {"stored_cols", p.stored_cols},
          {"note", p.note}};
}

TensorPlan plan_of(const nlohmann::json& j) {
  TensorPlan p;
  p.kind = TensorPlan::Kind(j.at("kind").get<int>());
  p.requested = j.at("requested");
  p.spec = j.at("spec");
  p.stored_cols = j.at("stored_cols");
  p.note = j.at("note");
  return p;
}

// Infinity (a lossless tensor's SQNR) is not JSON: null.
nlohmann::json number(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }
double number_of(const nlohmann::json& j) { return j.is_null() ? INFINITY : j.get<double>(); }

nlohmann::json report_json(const TensorReport& r) {
  return {{"plan", plan_json(r.plan)},        {"rows", r.rows},
          {"cols", r.cols},                   {"bits_per_weight", number(r.bits_per_weight)},
          {"weighted_rel_error", number(r.weighted_rel_error)}, {"sqnr_db", number(r.sqnr_db)},
          {"calibrated", r.calibrated},       {"method", r.method},
          {"seconds", r.seconds}};
}

TensorReport report_of(const std::string& name, const nlohmann::json& j) {
  TensorReport r;
  r.name = name;
  r.plan = plan_of(j.at("plan"));
  r.rows = j.at("rows");
  r.cols = j.at("cols");
  r.bits_per_weight = number_of(j.at("bits_per_weight"));
  r.weighted_rel_error = number_of(j.at("weighted_rel_error"));
  r.sqnr_db = number_of(j.at("sqnr_db"));
  r.calibrated = j.at("calibrated");
  r.method = j.at("method");
  r.seconds = j.at("seconds");
  return r;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const void* data, size_t n) {
  AtomicFile f(path);
  f.write(data, n);
  f.commit();
}

class MemoryStore : public StageStore {
 public:
  void put(int stage, const std::vector<uint8_t>& blob) override {
    if (size_t(stage) >= stages_.size()) stages_.resize(size_t(stage) + 1);
    stages_[size_t(stage)] = std::make_shared<std::vector<uint8_t>>(blob);
  }
  StageBytes get(int stage) override {
    const auto& b = stages_.at(size_t(stage));
    return {b, {b->data(), b->size()}};
  }

 private:
  std::vector<std::shared_ptr<std::vector<uint8_t>>> stages_;
};

class SpillStore : public StageStore {
 public:
  explicit SpillStore(const std::string& dir) : dir_(dir) {
    fd_ = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd_ < 0) {  // file systems without O_TMPFILE: create, then unlink at once
      std::string tmpl = (fs::path(dir) / ".quantkit-spill.XXXXXX").string();
      fd_ = ::mkstemp(tmpl.data());
      if (fd_ >= 0) ::unlink(tmpl.c_str());
    }
    if (fd_ < 0) fail("{}: cannot create a temporary file for quantized layers: {}", dir, std::strerror(errno));
  }
  ~SpillStore() override { ::close(fd_); }

  void put(int stage, const std::vector<uint8_t>& blob) override {
    if (size_t(stage) >= spans_.size()) spans_.resize(size_t(stage) + 1);
    spans_[size_t(stage)] = {end_, blob.size()};
    for (size_t done = 0; done < blob.size();) {
      const ssize_t w = ::pwrite(fd_, blob.data() + done, blob.size() - done, off_t(end_ + done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) fail("{}: cannot write the temporary file of quantized layers: {}", dir_, std::strerror(errno));
      done += size_t(w);
    }
    end_ = (end_ + blob.size() + kAlign - 1) / kAlign * kAlign;
  }

  StageBytes get(int stage) override {
    if (!map_ && end_) {
      void* p = ::mmap(nullptr, end_, PROT_READ, MAP_SHARED, fd_, 0);
      if (p == MAP_FAILED) fail("{}: cannot map the temporary file of quantized layers: {}", dir_, std::strerror(errno));
      const size_t n = end_;
      map_ = std::shared_ptr<const void>(p, [n](const void* q) { ::munmap(const_cast<void*>(q), n); });
    }
    const auto [at, n] = spans_.at(size_t(stage));
    return {map_, {static_cast<const uint8_t*>(map_.get()) + at, n}};
  }

 private:
  std::string dir_;
  int fd_ = -1;
  size_t end_ = 0;
  std::vector<std::pair<size_t, size_t>> spans_;
  std::shared_ptr<const void> map_;
};

}  // namespace

void append_tensor(std::vector<uint8_t>& blob, const QuantizedTensor& q) {
  const TensorView& v = q.view;
  nlohmann::json h = {{"name", v.name},     {"type", uint32_t(v.type)},       {"shape", v.shape},
                      {"format", v.format}, {"stored_cols", v.stored_cols}, {"nbytes", v.nbytes},
                      {"report", report_json(q.report)}};
  const std::string text = h.dump();
  pad_to(blob, kAlign);
  blob.insert(blob.end(), kTensorMagic, kTensorMagic + 4);
  append_pod(blob, uint32_t(text.size()));
  blob.insert(blob.end(), text.begin(), text.end());
  pad_to(blob, kAlign);
  const auto* p = static_cast<const uint8_t*>(v.data);
  blob.insert(blob.end(), p, p + v.nbytes);
  pad_to(blob, kAlign);
}

std::vector<StoredTensor> parse_tensors(const uint8_t* data, size_t n, const std::string& what) {
  std::vector<StoredTensor> out;
  size_t at = 0;
  while (at < n) {
    if (n - at < 8 || std::memcmp(data + at, kTensorMagic, 4) != 0)
      fail("{}: bad quantized-tensor record at byte {}", what, at);
    uint32_t len = 0;
    std::memcpy(&len, data + at + 4, 4);
    if (len > n - at - 8) fail("{}: quantized-tensor record at byte {} overruns the data", what, at);
    StoredTensor t;
    try {
      const nlohmann::json h = nlohmann::json::parse(data + at + 8, data + at + 8 + len);
      t.view.name = h.at("name");
      t.view.type = DType(h.at("type").get<uint32_t>());
      t.view.shape = h.at("shape").get<std::vector<int64_t>>();
      t.view.format = h.at("format");
      t.view.stored_cols = h.at("stored_cols");
      t.view.nbytes = h.at("nbytes");
      t.report = report_of(t.view.name, h.at("report"));
    } catch (const nlohmann::json::exception& e) {
      fail("{}: bad quantized-tensor header at byte {}: {}", what, at, e.what());
    }
    at = (at + 8 + len + kAlign - 1) / kAlign * kAlign;
    if (t.view.nbytes > n - at) fail("{}: tensor '{}' needs {} bytes, {} left", what, t.view.name, t.view.nbytes, n - at);
    t.view.data = data + at;
    at = (at + t.view.nbytes + kAlign - 1) / kAlign * kAlign;
    out.push_back(std::move(t));
  }
  return out;
}

std::unique_ptr<StageStore> memory_store() { return std::make_unique<MemoryStore>(); }
std::unique_ptr<StageStore> spill_store(const std::string& dir) { return std::make_unique<SpillStore>(dir); }

// ---- checkpoint folder --------------------------------------------------------------------

Checkpoint::Checkpoint(const std::string& dir, const std::string& job, bool root) : dir_(dir), job_(job) {
  if (!root) return;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir)) fail("{}: cannot create the checkpoint folder: {}", dir, ec.message());
  const std::string manifest = path("manifest.json");
  if (!fs::exists(manifest)) {
    mark_done(-1);
    return;
  }
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(read_all(manifest));
    if (m.at("job").get<std::string>() != job)
      fail("{}: checkpoint of another job ({}); this job is {}: use another --resume folder or empty it", dir,
           m.at("job").get<std::string>(), job);
    completed_ = m.at("completed");
  } catch (const nlohmann::json::exception& e) {
    fail("{}: unreadable checkpoint manifest: {}", manifest, e.what());
  }
}

std::string Checkpoint::path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

std::string Checkpoint::activations_name(int layer, int chunk) const {
  return fmt::format("act-L{:04d}-c{:05d}.f32", layer, chunk);
}

void Checkpoint::put(int stage, const std::vector<uint8_t>& blob) {
  write_file(path(fmt::format("stage-{:04d}.qkt", stage)), blob.data(), blob.size());
}

StageBytes Checkpoint::get(int stage) {
  auto map = std::make_shared<MappedFile>(path(fmt::format("stage-{:04d}.qkt", stage)));
  return {map, {map->data(), map->size()}};
}

void Checkpoint::mark_done(int stage) {
  const std::string text = nlohmann::json{{"job", job_}, {"completed", stage + 1}}.dump(2) + "\n";
  write_file(path("manifest.json"), text.data(), text.size());
  completed_ = stage + 1;
}

void Checkpoint::put_activations(int layer, int chunk, const std::vector<const std::vector<float>*>& windows) {
  std::vector<uint8_t> b(kActivationMagic, kActivationMagic + 4);
  append_pod(b, uint32_t(windows.size()));
  append_pod(b, uint64_t(windows.empty() ? 0 : windows[0]->size()));
  for (const auto* w : windows)
    b.insert(b.end(), reinterpret_cast<const uint8_t*>(w->data()), reinterpret_cast<const uint8_t*>(w->data() + w->size()));
  write_file(path(activations_name(layer, chunk)), b.data(), b.size());
}

void Checkpoint::get_activations(int layer, int chunk, std::vector<std::vector<float>*>& windows) const {
  const std::string file = path(activations_name(layer, chunk));
  MappedFile m(file);
  const size_t floats = windows.empty() ? 0 : windows[0]->size();
  uint32_t count = 0;
  uint64_t per = 0;
  if (m.size() >= 16) {
    std::memcpy(&count, m.data() + 4, 4);
    std::memcpy(&per, m.data() + 8, 8);
  }
  if (m.size() < 16 || std::memcmp(m.data(), kActivationMagic, 4) != 0 || count != windows.size() || per != floats ||
      m.size() != 16 + size_t(count) * floats * 4)
    fail("{}: activations of {} windows x {} floats expected, the file does not hold them", file, windows.size(), floats);
  for (size_t w = 0; w < windows.size(); ++w) std::memcpy(windows[w]->data(), m.data() + 16 + w * floats * 4, floats * 4);
}

void Checkpoint::drop_activations(int keep_layer) const {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with("act-L") && name.size() > 9 && std::atoi(name.c_str() + 5) < keep_layer)
      fs::remove(e.path(), ec);
  }
}

}  // namespace quantkit::dist
