#include "quantkit/convert.h"

#include <cstring>
#include <memory>
#include <vector>

#include "quantkit/error.h"
#include "quantkit/fp16.h"

namespace quantkit {

ModelFile convert_tensor_types(const ModelFile& m, DType type) {
  if (type != DType::F32 && type != DType::F16 && type != DType::BF16)
    fail("convert: output type must be f32, f16 or bf16, not {}", dtype_name(type));
  ModelFile out = m;  // shares the input's storage, views stay valid
  for (TensorView& t : out.tensors) {
    const DType target = t.shape.size() >= 2 ? type : DType::F32;
    if (t.type == target) continue;
    Tensor f = to_float(t);
    auto bytes = std::make_shared<std::vector<uint8_t>>(size_t(f.numel()) * dtype_traits(target).type_size);
    if (target == DType::F32) {
      std::memcpy(bytes->data(), f.data.data(), bytes->size());
    } else {
      auto* dst = reinterpret_cast<uint16_t*>(bytes->data());
      for (size_t i = 0; i < f.data.size(); ++i)
        dst[i] = target == DType::F16 ? f32_to_f16(f.data[i]) : f32_to_bf16(f.data[i]);
    }
    t.type = target;
    t.data = bytes->data();
    t.nbytes = bytes->size();
    out.storage.push_back(bytes);
  }
  return out;
}

}  // namespace quantkit
