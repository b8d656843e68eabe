#include "dist/quantize_job.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>

#include "dist/stage_store.h"
#include "quantkit/error.h"
#include "quantkit/packed_tensor.h"

namespace quantkit {

std::string MemoryEstimate::describe() const {
  return fmt::format("{} ({} bytes: embeddings {} + activations {} + Hessians {} + layer {} + solve {} + output {}) at "
                     "stage {}",
                     format_bytes(total()), total(), format_bytes(embeddings), format_bytes(activations),
                     format_bytes(hessians), format_bytes(layer), format_bytes(solve), format_bytes(output), stage);
}

namespace dist {
namespace {

constexpr int kHead = 4;  // Item::input of the output head (after the four LinearInputs)

// The input each linear weight of a layer sees.
std::optional<LinearInput> input_of(const std::string& name) {
  static const std::pair<const char*, LinearInput> kInputs[] = {
      {".attn_q.weight", LinearInput::Attention},       {".attn_k.weight", LinearInput::Attention},
      {".attn_v.weight", LinearInput::Attention},       {".attn_output.weight", LinearInput::AttentionOutput},
      {".ffn_gate.weight", LinearInput::Ffn},           {".ffn_up.weight", LinearInput::Ffn},
      {".ffn_down.weight", LinearInput::FfnDown}};
  for (const auto& [suffix, which] : kInputs)
    if (name.ends_with(suffix)) return which;
  return std::nullopt;
}

// Puts w into the calibration model in place of the layer weight `name`.
void install(LlamaLayer& L, const std::string& name, std::unique_ptr<Linear> w) {
  std::unique_ptr<Linear>* slot = name.ends_with(".attn_q.weight")        ? &L.wq
                                  : name.ends_with(".attn_k.weight")      ? &L.wk
                                  : name.ends_with(".attn_v.weight")      ? &L.wv
                                  : name.ends_with(".attn_output.weight") ? &L.wo
                                  : name.ends_with(".ffn_gate.weight")    ? &L.w_gate
                                  : name.ends_with(".ffn_up.weight")      ? &L.w_up
                                  : name.ends_with(".ffn_down.weight")    ? &L.w_down
                                                                          : nullptr;
  if (slot) *slot = std::move(w);
}

// Layer weights stand in as 1x1 zeros while their layer is not being calibrated: the
// calibration model holds one layer at a time.
std::unique_ptr<Linear> placeholder() { return std::make_unique<DenseLinear>(Tensor({1, 1})); }

ModelFile skeleton_of(const ModelFile& src) {
  static const float kZero = 0.0f;
  ModelFile m = src;
  for (TensorView& t : m.tensors)
    if (input_of(t.name) || t.name == "output.weight") {
      t.type = DType::F32;
      t.shape = {1, 1};
      t.data = &kZero;
      t.nbytes = sizeof kZero;
      t.format.clear();
      t.stored_cols = 0;
    }
  return m;
}

// The weights a rank installs after a stage: decoded from the exchanged bytes with the
// format the plan names, so every rank gets the same floats.
Tensor decoded_weights(const TensorView& v, const TensorPlan& plan) {
  if (plan.kind != TensorPlan::Quantize) return to_float(v);
  const std::unique_ptr<Format> f = make_format(plan.spec);
  Packed p;
  p.rows = v.shape[0];
  p.cols = plan.stored_cols;
  p.bits = f->storage_bits(p.rows, p.cols);
  const auto* b = static_cast<const uint8_t*>(v.data);
  p.bytes.assign(b, b + v.nbytes);
  Tensor t(v.shape);
  dequantize_cropped(*f, p, v.shape[1], t.data.data());
  return t;
}

// Work of one rank: tensors solved together (those reading one Hessian), or one tensor.
struct Item {
  std::vector<size_t> tensors;
  int input = -1;  // LinearInput, kHead, or -1: uncalibrated
  double cost = 0;
  int owner = 0;
};

struct Stage {
  std::string name;
  int layer = -1;  // a layer stage
  bool head = false;
  std::vector<Item> items;
};

// Relative cost (flops) of quantizing t, for balancing: encoding ~ 64 per weight; with a
// Hessian, up to three candidates scored on <= 256 rows (4 n cols^2 each); GPTQ's feedback
// 2 rows cols^2 and factorisation cols^3 / 3.
double cost_of(const TensorView& t, QuantMethod m, bool calibrated) {
  const double rows = t.shape.size() == 2 ? double(t.shape[0]) : 1.0, cols = double(t.shape.back());
  double cost = 64 * rows * cols;
  if (!calibrated || m == QuantMethod::Rtn) return cost;
  cost += 3 * 4 * std::min(rows, 256.0) * cols * cols;
  if (m == QuantMethod::Gptq) cost += 2 * rows * cols * cols + cols * cols * cols / 3;
  return cost;
}

// Largest items first, each to the least loaded rank (ties: the lowest): the same owners on
// every rank.
void assign_owners(Stage& s, int ranks) {
  std::vector<size_t> order(s.items.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return s.items[a].cost > s.items[b].cost; });
  std::vector<double> load(static_cast<size_t>(ranks), 0.0);
  for (size_t i : order) {
    const size_t r = size_t(std::min_element(load.begin(), load.end()) - load.begin());
    s.items[i].owner = int(r);
    load[r] += s.items[i].cost;
  }
}

std::vector<Stage> plan_stages(const ModelFile& src, QuantMethod method, bool calibrate, int ranks) {
  std::vector<Stage> stages;
  std::vector<bool> taken(src.tensors.size(), false);
  auto item_of = [&](std::vector<size_t> tensors, int input) {
    Item it{std::move(tensors), input};
    for (size_t i : it.tensors) it.cost += cost_of(src.tensors[i], method, input >= 0);
    return it;
  };
  for (int l = 0; l < src.config.n_layers; ++l) {
    Stage s{"blk." + std::to_string(l), l, false, {}};
    const std::string prefix = "blk." + std::to_string(l) + ".";
    std::array<int, 4> group{-1, -1, -1, -1};  // item of each LinearInput
    for (size_t i = 0; i < src.tensors.size(); ++i) {
      if (!src.tensors[i].name.starts_with(prefix)) continue;
      taken[i] = true;
      const auto which = calibrate ? input_of(src.tensors[i].name) : std::nullopt;
      if (!which) {
        s.items.push_back(item_of({i}, -1));
        continue;
      }
      int& g = group[size_t(*which)];
      if (g < 0) g = int(s.items.size()), s.items.push_back(item_of({}, int(*which)));
      s.items[size_t(g)].tensors.push_back(i);
      s.items[size_t(g)].cost += cost_of(src.tensors[i], method, true);
    }
    stages.push_back(std::move(s));
  }
  if (calibrate && !src.config.tied_embeddings) {
    size_t i = 0;
    while (i < src.tensors.size() && src.tensors[i].name != "output.weight") ++i;
    if (i == src.tensors.size()) fail("{}: tensor 'output.weight' is missing", src.path);
    taken[i] = true;
    stages.push_back({"output", -1, true, {item_of({i}, kHead)}});
  }
  Stage rest{"rest", -1, false, {}};
  for (size_t i = 0; i < src.tensors.size(); ++i)
    if (!taken[i]) rest.items.push_back(item_of({i}, -1));
  stages.push_back(std::move(rest));
  for (Stage& s : stages) assign_owners(s, ranks);
  return stages;
}

// What the ranks agree on before any work: the job's identity for checkpoints.
std::string job_description(const JobInput& j, int windows) {
  const QuantizeOptions& o = j.opt;
  nlohmann::json d = {{"model", j.in.path}, {"format", o.format}, {"method", method_name(o.method)},
                      {"embedding_format", o.embedding_format}, {"allow_nonfinite", o.allow_nonfinite}};
  std::error_code ec;
  const auto abs = std::filesystem::absolute(j.in.path, ec);
  if (!ec && std::filesystem::is_regular_file(abs, ec)) {
    d["model"] = abs.string();
    d["model_bytes"] = std::filesystem::file_size(abs, ec);
    d["model_mtime"] = int64_t(std::filesystem::last_write_time(abs, ec).time_since_epoch().count());
  }
  for (const TensorRule& r : o.rules) d["rules"].push_back({r.pattern, r.spec});
  if (o.method != QuantMethod::Rtn) {
    uint64_t hash = 0xcbf29ce484222325ull;  // FNV-1a of the calibration tokens
    for (int t : *j.calib_tokens) hash = (hash ^ uint64_t(uint32_t(t))) * 0x100000001b3ull;
    d["calibration"] = {{"windows", windows}, {"ctx", o.calibration.ctx}, {"tokens", j.calib_tokens->size()},
                        {"hash", hash}, {"bos", j.bos}};
    d["gptq"] = {{"damp", o.gptq.damp}, {"batch", o.gptq.batch}, {"act_order", o.gptq.act_order}};
  }
  return d.dump();
}

int broadcast_int(Communicator& comm, int v) {
  std::vector<uint8_t> b(sizeof v);
  std::memcpy(b.data(), &v, sizeof v);
  comm.broadcast(b, 0);
  std::memcpy(&v, b.data(), sizeof v);
  return v;
}

// ---- memory -------------------------------------------------------------------------------

struct MemoryInputs {
  const ModelFile& src;
  const std::vector<TensorPlan>& plans;
  const std::vector<Stage>& stages;
  QuantMethod method;
  bool calibrate;
  int windows, ctx;
  bool output_in_memory;
};

// Hessian bytes of one calibrated stage on `rank`: the exact partial sums of every input
// (16-byte upper triangles) with the DSYRK scratch while capturing, and the finished FP64
// Hessians of the rank's groups.
struct HessianBytes {
  uint64_t partial = 0, scratch = 0, finished = 0;
};

HessianBytes hessian_bytes(const Stage& s, const LlamaConfig& c, int rank) {
  const std::vector<uint64_t> widths = s.head ? std::vector<uint64_t>{uint64_t(c.dim)}
                                              : std::vector<uint64_t>{uint64_t(c.dim), uint64_t(c.dim),
                                                                      uint64_t(c.dim), uint64_t(c.hidden_dim)};
  HessianBytes b;
  for (uint64_t w : widths) b.partial += 8 * w * (w + 1), b.scratch = std::max(b.scratch, 8 * w * w);
  for (const Item& it : s.items)
    if (it.owner == rank && it.input >= 0) {
      const uint64_t w = it.input == kHead ? widths[0] : widths[size_t(it.input)];
      b.finished += 8 * w * w;
    }
  return b;
}

MemoryEstimate estimate_memory(const MemoryInputs& m, int rank, int ranks) {
  const LlamaConfig& c = m.src.config;
  MemoryEstimate e;
  e.rank = rank, e.ranks = ranks;
  if (m.calibrate) {
    e.embeddings = 4ull * uint64_t(c.vocab_size) * uint64_t(c.dim) * (c.tied_embeddings ? 2 : 1) +
                   4ull * uint64_t(c.max_seq_len) * uint64_t(c.head_dim()) + 8ull * uint64_t(c.dim) * (c.n_layers + 1);
    const int64_t cw = chunk_windows(m.windows, m.ctx), chunks = (m.windows + cw - 1) / cw;
    const int64_t w0 = std::min<int64_t>(m.windows, chunks * rank / ranks * cw);
    const int64_t w1 = std::min<int64_t>(m.windows, chunks * (rank + 1) / ranks * cw);
    const uint64_t mine = uint64_t(w1 - w0), ctx = uint64_t(m.ctx), chunk_tokens = uint64_t(std::min<int64_t>(cw, m.windows)) * ctx;
    const uint64_t widths = 3ull * uint64_t(c.dim) + uint64_t(c.hidden_dim), wmax = uint64_t(std::max(c.dim, c.hidden_dim));
    e.activations = mine * ctx * (4ull * uint64_t(c.dim) + 4) +
                    (mine ? 4 * chunk_tokens * widths + 8 * chunk_tokens * wmax : 0) +
                    4 * ctx * (6ull * uint64_t(c.dim) + 2ull * uint64_t(c.hidden_dim)) + 8 * ctx * uint64_t(c.kv_dim());
  }
  uint64_t total_out = 0, worst = 0;
  for (const Stage& s : m.stages) {
    const bool calibrated = m.calibrate && (s.layer >= 0 || s.head);
    uint64_t stage_out = 0, mine_out = 0, solve = 0, weights = 0, largest = 0;
    for (const Item& it : s.items)
      for (size_t i : it.tensors) {
        const TensorView& t = m.src.tensors[i];
        const uint64_t out = stored_bytes(t, m.plans[i]);
        stage_out += out;
        if (calibrated && it.input >= 0 && it.input != kHead) {
          weights += 4 * uint64_t(t.numel());
          largest = std::max(largest, 4 * uint64_t(t.numel()));
        }
        if (it.owner != rank) continue;
        mine_out += out;
        solve = std::max(solve, quantize_working_bytes(t, m.plans[i], m.method, calibrated && it.input >= 0));
      }
    // The phases of a stage, each as (Hessians, layer, solve): capture (the FP32 layer, the
    // partial sums, the DSYRK scratch), reduce (partial and finished sums), solve (the finished
    // Hessians, quantizing the largest tensor, the rank's bytes), exchange (every rank's bytes
    // and, on rank 0, their concatenation; layer stages: the decoded layer installed).
    const HessianBytes h = calibrated ? hessian_bytes(s, c, rank) : HessianBytes{};
    const uint64_t gathered = calibrated && s.layer >= 0 ? 2 * stage_out : (rank == 0 ? 2 * stage_out : mine_out);
    const std::array<std::array<uint64_t, 3>, 4> phases = {{{h.partial + h.scratch, weights, 0},
                                                            {h.partial + h.finished, 0, 0},
                                                            {h.finished, 0, solve + mine_out},
                                                            {0, gathered + weights + largest, 0}}};
    for (const auto& p : phases)
      if (p[0] + p[1] + p[2] > worst || e.stage.empty()) {
        worst = p[0] + p[1] + p[2];
        e.stage = s.name, e.hessians = p[0], e.layer = p[1], e.solve = p[2];
      }
    total_out += stage_out;
  }
  e.output = m.output_in_memory && rank == 0 ? total_out : 0;
  return e;
}

// The smallest limit of any rank (machines differ), the same on every rank.
uint64_t agreed_limit(Communicator& comm, uint64_t limit) {
  uint64_t least = limit ? limit : UINT64_MAX;
  for (uint64_t v : gather_u64(comm, least)) least = std::min(least, v);
  std::vector<uint8_t> b(sizeof least);
  std::memcpy(b.data(), &least, sizeof least);
  comm.broadcast(b, 0);
  std::memcpy(&least, b.data(), sizeof least);
  return least == UINT64_MAX ? 0 : least;
}

// Every rank checks every rank's estimate against the same limit, so all refuse together
// (before anything is written).
MemoryEstimate check_memory(const MemoryInputs& m, const QuantizeOptions& opt, Communicator& comm) {
  MemoryEstimate mine, worst;
  for (int r = 0; r < comm.size(); ++r) {
    const MemoryEstimate e = estimate_memory(m, r, comm.size());
    if (r == comm.rank()) mine = e;
    if (r == 0 || e.total() > worst.total()) worst = e;
  }
  const uint64_t limit = agreed_limit(comm, opt.max_memory);
  if (limit && worst.total() > limit) {
    uint64_t model = 0;
    for (const TensorView& t : m.src.tensors) model += t.nbytes;
    throw CollectiveError(fmt::format(
        "--max-memory {} ({} bytes): rank {} of {} would need an estimated {}; the model's tensors take {} ({} "
        "bytes); more processes (mpirun -np N) share the calibration windows and the matrices of a layer",
        format_bytes(limit), limit, worst.rank, worst.ranks, worst.describe(), format_bytes(model),
        model));
  }
  return mine;
}

// ---- the job ------------------------------------------------------------------------------

class Job {
 public:
  Job(const JobInput& j, Communicator& comm) : j_(j), comm_(comm), src_(j.src) {
    calibrate_ = j.opt.method != QuantMethod::Rtn;
    if (calibrate_ && !j.calib_tokens) fail("method {} needs calibration text (--calib FILE)", method_name(j.opt.method));
    const int ctx = std::max(1, j.opt.calibration.ctx);
    windows_ = calibrate_ ? int(std::min<int64_t>(int64_t(j.calib_tokens->size()) / ctx, j.opt.calibration.windows)) : 0;
    stages_ = plan_stages(src_, j.opt.method, calibrate_, comm.size());
    for (size_t i = 0; i < src_.tensors.size(); ++i) index_[src_.tensors[i].name] = i;
    const bool in_memory = j.opt.resume_dir.empty() && j.opt.spill_dir.empty();
    memory_ = check_memory({src_, j.plans, stages_, j.opt.method, calibrate_, windows_, ctx, in_memory}, j.opt, comm);
  }

  QuantizeResult run() {
    if (!j_.opt.resume_dir.empty())
      checkpoint_ = std::make_unique<Checkpoint>(j_.opt.resume_dir, job_description(j_, windows_), comm_.root());
    else if (comm_.root())
      store_ = j_.opt.spill_dir.empty() ? memory_store() : spill_store(j_.opt.spill_dir);
    int first = checkpoint_ && comm_.root() ? checkpoint_->completed() : 0;
    first = broadcast_int(comm_, first);
    if (first < 0 || first > int(stages_.size()))
      fail("{}: the checkpoint says {} stages are done, the job has {}", j_.opt.resume_dir, first, stages_.size());
    for (int s = first; s < int(stages_.size()); ++s) {
      const Stage& st = stages_[size_t(s)];
      if (calibrate_ && !cal_ && (st.layer >= 0 || st.head)) start_calibration(first);
      run_stage(s);
    }
    QuantizeResult res = assemble();
    res.resumed_stages = first;
    return res;
  }

 private:
  StageStore& store() { return checkpoint_ ? *checkpoint_ : *store_; }

  void start_calibration(int first) {
    model_ = std::make_unique<LlamaModel>(skeleton_of(src_));
    model_->set_head(placeholder());
    cal_ = std::make_unique<Calibrator>(*model_, *j_.calib_tokens, j_.bos, j_.opt.calibration, comm_.rank(), comm_.size());
    const int last = std::min(first, src_.config.n_layers) - 1;  // the hidden states after it were saved
    if (last < 0) return;
    for (int ch = cal_->first_chunk(); ch < cal_->end_chunk(); ++ch) {
      std::vector<std::vector<float>*> windows;
      for (int w : chunk_windows_of(ch)) windows.push_back(&cal_->hidden(w));
      checkpoint_->get_activations(last, ch, windows);
    }
  }

  // Local indices of the windows of chunk ch.
  std::vector<int> chunk_windows_of(int ch) const {
    std::vector<int> out;
    const int w0 = ch * cal_->chunk_windows() - cal_->first_window();
    for (int w = w0; w < std::min(cal_->windows(), w0 + cal_->chunk_windows()); ++w) out.push_back(w);
    return out;
  }

  // The Hessians of the stage's inputs; each is complete only on the rank that solves with it.
  std::array<InputHessian, 5> hessians(const Stage& st) {
    std::array<InputHessian, 5> h;
    const int64_t tokens = int64_t(cal_->total_windows()) * cal_->ctx();
    auto reduce = [&](HessianSum& sum, const Item& it) {
      comm_.reduce_sum(sum.terms().data(), sum.terms().size(), it.owner);
      if (it.owner == comm_.rank()) h[size_t(it.input)] = sum.finish(tokens);
      sum = HessianSum();
    };
    if (st.head) {
      HessianSum sum = cal_->capture_head_sums();
      reduce(sum, st.items.at(0));
      return h;
    }
    LlamaLayer& L = model_->layers()[size_t(st.layer)];
    for (const Item& it : st.items)
      if (it.input >= 0)
        for (size_t i : it.tensors) install(L, src_.tensors[i].name, std::make_unique<DenseLinear>(to_float(src_.tensors[i])));
    LayerHessianSums sums = cal_->capture_sums(st.layer);
    release_layer(st);  // the FP32 weights are not needed again: memory for the solve
    for (const Item& it : st.items)
      if (it.input >= 0) reduce(sums.inputs[size_t(it.input)], it);
    return h;
  }

  void release_layer(const Stage& st) {
    LlamaLayer& L = model_->layers()[size_t(st.layer)];
    for (const Item& it : st.items)
      if (it.input >= 0)
        for (size_t i : it.tensors) install(L, src_.tensors[i].name, placeholder());
  }

  // Installs the quantized layer (decoded from every rank's bytes), runs the windows through
  // it, and puts the placeholders back.
  void advance(const Stage& st, const std::vector<std::vector<uint8_t>>& parts) {
    LlamaLayer& L = model_->layers()[size_t(st.layer)];
    for (size_t r = 0; r < parts.size(); ++r)
      for (const StoredTensor& t : parse_tensors(parts[r].data(), parts[r].size(), fmt::format("rank {}", r)))
        if (input_of(t.view.name))
          install(L, t.view.name, std::make_unique<DenseLinear>(decoded_weights(t.view, j_.plans[index_.at(t.view.name)])));
    cal_->advance(st.layer);
    release_layer(st);
  }

  void run_stage(int s) {
    const Stage& st = stages_[size_t(s)];
    const bool calibrated = cal_ && (st.layer >= 0 || st.head);
    const auto& progress = j_.progress;
    if (progress && calibrated) progress("layer", st.head ? src_.config.n_layers : st.layer, src_.config.n_layers, st.name);
    std::array<InputHessian, 5> h;
    if (calibrated) h = hessians(st);
    std::vector<uint8_t> mine;
    for (const Item& it : st.items) {
      if (it.owner != comm_.rank()) continue;
      for (size_t i : it.tensors) {
        if (progress && !calibrated) progress("tensor", int(i), int(src_.tensors.size()), src_.tensors[i].name);
        append_tensor(mine, j_.quantize(i, calibrated && it.input >= 0 ? &h[size_t(it.input)] : nullptr));
      }
    }
    h = {};
    const bool layer = calibrated && st.layer >= 0;  // every rank needs the quantized layer
    std::vector<std::vector<uint8_t>> parts = layer ? all_gather(comm_, mine) : comm_.gather(mine, 0);
    mine = {};
    if (layer) advance(st, parts);
    if (comm_.root()) {
      std::vector<uint8_t> blob;
      for (const auto& p : parts) blob.insert(blob.end(), p.begin(), p.end());
      parts = {};
      store().put(s, blob);
    }
    if (!checkpoint_) return;
    if (layer)
      for (int ch = cal_->first_chunk(); ch < cal_->end_chunk(); ++ch) {
        std::vector<const std::vector<float>*> windows;
        for (int w : chunk_windows_of(ch)) windows.push_back(&cal_->hidden(w));
        checkpoint_->put_activations(st.layer, ch, windows);
      }
    comm_.barrier();  // every rank's activations are on disk before the stage counts as done
    if (comm_.root()) {
      checkpoint_->mark_done(s);
      if (layer) checkpoint_->drop_activations(st.layer);
    }
  }

  QuantizeResult assemble() {
    QuantizeResult res;
    res.memory = memory_;
    res.stages = int(stages_.size());
    if (calibrate_) {
      res.calibration_windows = windows_;
      res.calibration_tokens = int64_t(windows_) * j_.opt.calibration.ctx;
    }
    if (!comm_.root()) return res;
    std::map<std::string, StoredTensor> done;
    res.model = src_;
    res.model.tensors.clear();
    for (int s = 0; s < int(stages_.size()); ++s) {
      const StageBytes b = store().get(s);
      res.model.storage.push_back(b.keep);
      for (StoredTensor& t : parse_tensors(b.bytes.data(), b.bytes.size(), fmt::format("stage {}", stages_[size_t(s)].name)))
        done[t.view.name] = std::move(t);
    }
    for (const TensorView& t : src_.tensors) {
      const auto it = done.find(t.name);
      if (it == done.end()) fail("{}: tensor '{}' is missing from the finished stages", j_.in.path, t.name);
      res.input_bytes += j_.in.find(t.name)->nbytes;
      res.output_bytes += it->second.view.nbytes;
      res.model.tensors.push_back(it->second.view);
      res.tensors.push_back(std::move(it->second.report));
    }
    if (checkpoint_) checkpoint_->drop_activations(INT_MAX);
    return res;
  }

  const JobInput& j_;
  Communicator& comm_;
  const ModelFile& src_;
  bool calibrate_ = false;
  int windows_ = 0;
  std::vector<Stage> stages_;
  std::map<std::string, size_t> index_;
  MemoryEstimate memory_;
  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<StageStore> store_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<Calibrator> cal_;
};

}  // namespace

QuantizeResult run_quantize_job(const JobInput& job) {
  std::unique_ptr<Communicator> alone;
  Communicator& comm = job.opt.comm ? *job.opt.comm : *(alone = local_communicator());
  return Job(job, comm).run();
}

}  // namespace dist
}  // namespace quantkit
