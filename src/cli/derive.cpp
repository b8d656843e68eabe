// quantkit derive: Double Rounding bit switching at the model level. From one stored model
// whose matrices are int<B> (e.g. `quantize -f int8:g128`), write the b-bit model obtained by
// re-rounding the stored integers (shift by B-b with rounding, scale reused): no access to
// the original weights, no calibration, one pass over the packed bits.
#include <cstdio>

#include "cli/command.h"
#include "cli/common.h"
#include "formats/int_uniform.h"
#include "io/model_io.h"
#include "quantkit/error.h"
#include "quantkit/packed_tensor.h"

namespace quantkit::cli {
namespace {

struct DeriveArgs {
  ModelArgs model;
  int bits = 4;
  std::string out;
  bool json = false;
};

int run_derive(const DeriveArgs& a) {
  const ModelFile in = a.model.load();
  ModelFile out = in;
  int derived = 0;
  uint64_t bytes_in = 0, bytes_out = 0;
  nlohmann::json tensors = nlohmann::json::array();
  for (TensorView& t : out.tensors) {
    bytes_in += t.nbytes;
    std::optional<formats::IntParams> master;
    if (t.type == DType::QK) master = formats::int_params_of(t.format);
    if (master && master->master_bits == 0) {
      if (a.bits >= master->bits)
        fail("{}: tensor '{}' is {}: cannot derive {} bits from {}", in.path, t.name, t.format, a.bits, master->bits);
      formats::IntParams low = *master;
      low.bits = a.bits;
      low.master_bits = master->bits;
      const std::string spec = formats::make_int_format(low)->spec();
      auto bytes = std::make_shared<std::vector<uint8_t>>(
          formats::derive_lower_bits(packed_of(t), *master, a.bits).bytes);
      tensors.push_back({{"name", t.name}, {"from", t.format}, {"to", spec}});
      t.format = spec;
      t.data = bytes->data();
      t.nbytes = bytes->size();
      out.storage.push_back(bytes);
      ++derived;
    }
    bytes_out += t.nbytes;
  }
  if (derived == 0)
    fail("{}: no tensor is stored in a plain int<B> format (quantize with e.g. -f int8:g128 first)", in.path);
  save_gguf_model(out, a.out);
  if (a.json) {
    print_json({{"model", a.model.model}, {"output", a.out}, {"bits", a.bits}, {"derived_tensors", derived},
                {"input_bytes", bytes_in}, {"output_bytes", bytes_out}, {"tensors", tensors}});
    return 0;
  }
  std::printf("%s -> %s: %d tensors re-rounded to %d bits (Double Rounding), %.3f MB -> %.3f MB\n",
              a.model.model.c_str(), a.out.c_str(), derived, a.bits, bytes_in / 1e6, bytes_out / 1e6);
  return 0;
}

Register reg({"derive", "derive a lower-bit model from a stored int<B> model (Double Rounding)", [](CLI::App& app) {
  auto a = std::make_shared<DeriveArgs>();
  a->model.add(app);
  app.add_option("-b,--bits", a->bits, "target bits b (< the stored B)")->required()->check(CLI::Range(1, 7));
  app.add_option("-o,--output", a->out, "output .qk / .gguf")->required();
  app.add_flag("--json", a->json, "machine-readable result on stdout");
  return [a] { return run_derive(*a); };
}});

}  // namespace
}  // namespace quantkit::cli
