// quantkit convert: model container conversion. OUT ending in .gguf writes GGUF (what
// llama.cpp loads); anything else writes a Hugging Face safetensors folder.
#include <cstdio>

#include "cli/command.h"
#include "cli/common.h"
#include "io/model_io.h"
#include "quantkit/convert.h"
#include "quantkit/error.h"

namespace quantkit::cli {
namespace {

struct ConvertArgs {
  ModelArgs model;
  std::string out, type = "f32";
  uint64_t shard_bytes = uint64_t(5) << 30;
};

int run_convert(const ConvertArgs& a) {
  ModelFile in = a.model.load();
  const DType type = dtype_from_name(a.type);
  const bool gguf = a.out.size() >= 5 && a.out.compare(a.out.size() - 5, 5, ".gguf") == 0;
  if (gguf) {
    save_gguf_model(convert_tensor_types(in, type), a.out);
  } else {
    std::string dir = a.out;
    if (dir.size() > 12 && dir.compare(dir.size() - 12, 12, ".safetensors") == 0)
      fail("{}: safetensors output is a folder (config.json + model.safetensors); give a folder path", dir);
    save_safetensors_model(in, dir, type, a.shard_bytes);
  }
  std::fprintf(stderr, "wrote %s (%s, %s)\n", a.out.c_str(), gguf ? "gguf" : "safetensors", a.type.c_str());
  return 0;
}

Register reg({"convert", "convert a model between llama2.c, safetensors and GGUF", [](CLI::App& app) {
  auto a = std::make_shared<ConvertArgs>();
  app.add_option("input", a->model.model, "input model")->required();
  app.add_option("output", a->out, "output: FILE.gguf, or a folder for safetensors")->required();
  app.add_option("--tokenizer", a->model.tokenizer, "tokenizer file (for llama2.c checkpoints)");
  app.add_option("--type", a->type, "tensor type of the weights: f32, f16, bf16")->check(CLI::IsMember({"f32", "f16", "bf16"}));
  app.add_option("--shard-bytes", a->shard_bytes, "safetensors shard size limit");
  app.add_option("-t,--threads", a->model.threads, "threads");
  return [a] { return run_convert(*a); };
}});

}  // namespace
}  // namespace quantkit::cli
